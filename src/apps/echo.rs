//! `echo`: answers every request type with its reply type.
#![forbid(unsafe_code)]

use crate::session::{Application, Outbox, SessionHandle};
use crate::time::Timestamp;

/// Answers type T in 100..=199 with type T + 100 and the same body.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Application for Echo {
    fn on_message(
        &mut self,
        _now: Timestamp,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
        out: &mut Outbox<'_>,
    ) {
        if (100..=199).contains(&type_id) {
            // A refused send (backpressure) is counted by the session; the device sees no reply
            // and its lost-reply detection asks again.
            let _ = out.send(session, type_id + 100, body);
        }
    }
}
