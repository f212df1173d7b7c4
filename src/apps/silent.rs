//! `none`: an application that never answers (sessions only heartbeat).
#![forbid(unsafe_code)]

use crate::session::{AppMessage, Application, Outbox};
use crate::time::Timestamp;

/// Ignores everything (sessions only heartbeat).
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Application for Silent {
    fn on_message(&mut self, _: Timestamp, _: AppMessage<'_>, _: &mut Outbox<'_>) {}
}
