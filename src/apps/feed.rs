//! `feed`: a periodic event pushed to every session, on top of `echo`.
#![forbid(unsafe_code)]

use std::time::Duration;

use super::Echo;
use crate::session::{AppMessage, Application, Outbox};
use crate::time::Timestamp;

/// Pushes a type-300 event (body: a u64 event counter, little-endian) to every logged-on session
/// every `interval`, and echoes like [`Echo`].
#[derive(Clone, Copy, Debug)]
pub struct Feed {
    interval: Duration,
    next: Timestamp,
    counter: u64,
}

/// The feed event type.
pub const FEED_TYPE: u16 = 300;

impl Feed {
    /// A feed that starts at the first timeout.
    pub fn new(interval: Duration) -> Self {
        Self { interval, next: Timestamp::ZERO, counter: 0 }
    }
}

impl Application for Feed {
    fn on_message(&mut self, now: Timestamp, msg: AppMessage<'_>, out: &mut Outbox<'_>) {
        Echo.on_message(now, msg, out);
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        Some(self.next)
    }

    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<'_>) {
        if now < self.next {
            return;
        }
        self.counter += 1;
        out.broadcast(FEED_TYPE, &self.counter.to_le_bytes());
        self.next = now + self.interval;
    }
}
