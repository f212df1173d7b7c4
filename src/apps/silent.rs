//! `none`: an application that never answers (sessions only heartbeat).
#![forbid(unsafe_code)]

use crate::session::{Application, Outbox, SessionHandle};
use crate::time::Timestamp;

/// Ignores everything (sessions only heartbeat).
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Application for Silent {
    fn on_message(&mut self, _: Timestamp, _: SessionHandle, _: u16, _: &[u8], _: &mut Outbox<'_>) {
    }
}
