//! `echo`: answers every request type with its reply type.
#![forbid(unsafe_code)]

use crate::session::{AppMessage, Application, Outbox, SendError};
use crate::time::Timestamp;

/// Answers type T in 100..=199 with type T + 100 and the same body.
#[derive(Clone, Copy, Debug, Default)]
pub struct Echo;

impl Echo {
    /// The reply type to a request of `type_id`: T + 100 for T in 100..=199, `None` for any
    /// other type (not a request: no reply).
    pub fn reply_type(type_id: u16) -> Option<u16> {
        (100..=199).contains(&type_id).then_some(type_id + 100)
    }

    /// Echoes a request on its session: `None` when it is not a request type, else what the
    /// send returned (the reply's sequence number, or why it was refused). The applications
    /// that count their replies (the simulator's, the allocation tests') echo through this.
    pub fn answer(msg: AppMessage<'_>, out: &mut Outbox<'_>) -> Option<Result<i64, SendError>> {
        Self::reply_type(msg.type_id).map(|reply| out.send(msg.session, reply, msg.body))
    }
}

impl Application for Echo {
    fn on_message(&mut self, _now: Timestamp, msg: AppMessage<'_>, out: &mut Outbox<'_>) {
        // A refused send (backpressure) is counted by the session; the device sees no reply
        // and its lost-reply detection asks again.
        let _ = Self::answer(msg, out);
    }
}
