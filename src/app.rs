//! The built-in applications of DESIGN.md §1.4, behind the public [`Application`] trait.
#![forbid(unsafe_code)]

use std::time::Duration;

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
    fn on_message(
        &mut self,
        now: Timestamp,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
        out: &mut Outbox<'_>,
    ) {
        Echo.on_message(now, session, type_id, body, out);
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

/// Ignores everything (sessions only heartbeat).
#[derive(Clone, Copy, Debug, Default)]
pub struct Silent;

impl Application for Silent {
    fn on_message(&mut self, _: Timestamp, _: SessionHandle, _: u16, _: &[u8], _: &mut Outbox<'_>) {
    }
}

/// Builds the built-in application named by `gateway.app`.
pub fn builtin(name: &str, feed_interval: Duration) -> Option<Box<dyn Application + Send>> {
    match name {
        "echo" => Some(Box::new(Echo)),
        "feed" => Some(Box::new(Feed::new(feed_interval))),
        "none" => Some(Box::new(Silent)),
        _ => None,
    }
}
