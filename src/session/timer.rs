//! Timers as data (quinn `connection/timer.rs`): one optional deadline per kind, the earliest is
//! what the driver waits for.

use crate::time::Timestamp;

/// The kinds of deadline a session keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Timer {
    /// Send Heartbeat(0) after sending nothing for H.
    Heartbeat,
    /// Send TestRequest after hearing nothing for 1.5 × H.
    TestRequest,
    /// Declare the peer lost after a further H of silence.
    Liveness,
    /// Acknowledge processed input (Heartbeat if nothing else goes out).
    Ack,
    /// Re-send GetDeviceConfig (every 1 s) / device: re-send handshake packets.
    Retry,
    /// DeviceConfig deadline (eSP0008) / TCP logon deadline / device: handshake give-up.
    Deadline,
    /// Release a detached session.
    DetachExpiry,
    /// Device: re-send unacknowledged messages.
    Retransmit,
    /// Device: re-issue a ResendRequest that made no progress.
    ResendRetry,
    /// Device: a reply is overdue, send TestRequest.
    ReplyWait,
}

impl Timer {
    /// Every timer, in index order.
    pub const VALUES: [Self; 10] = [
        Self::Heartbeat,
        Self::TestRequest,
        Self::Liveness,
        Self::Ack,
        Self::Retry,
        Self::Deadline,
        Self::DetachExpiry,
        Self::Retransmit,
        Self::ResendRetry,
        Self::ReplyWait,
    ];
}

/// One optional deadline per [`Timer`]: 8 bytes each, `Timestamp::MAX` standing for "not
/// armed" (no deadline is that far away), so the gateway's session record carries 80 bytes of
/// timers rather than 160.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerTable([Timestamp; Timer::VALUES.len()]);

impl Default for TimerTable {
    fn default() -> Self {
        Self([NONE; Timer::VALUES.len()])
    }
}

impl TimerTable {
    /// Arms `timer` for `at` (replacing any previous deadline).
    pub fn set(&mut self, timer: Timer, at: Timestamp) {
        debug_assert!(at != NONE, "a deadline at the end of time");
        self.0[timer as usize] = at;
    }

    /// Arms `timer` for `at` unless it is already armed earlier.
    pub fn set_earliest(&mut self, timer: Timer, at: Timestamp) {
        let slot = &mut self.0[timer as usize];
        if at < *slot {
            *slot = at;
        }
    }

    /// Disarms `timer`.
    pub fn stop(&mut self, timer: Timer) {
        self.0[timer as usize] = NONE;
    }

    /// Disarms every timer.
    pub fn stop_all(&mut self) {
        self.0 = [NONE; Timer::VALUES.len()];
    }

    /// The deadline of `timer`.
    pub fn get(&self, timer: Timer) -> Option<Timestamp> {
        Some(self.0[timer as usize]).filter(|&t| t != NONE)
    }

    /// True if `timer` is armed and due at `now`.
    pub fn is_expired(&self, timer: Timer, now: Timestamp) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// Disarms and returns true if `timer` is due at `now`.
    pub fn take_expired(&mut self, timer: Timer, now: Timestamp) -> bool {
        let due = self.is_expired(timer, now);
        if due {
            self.stop(timer);
        }
        due
    }

    /// The earliest armed deadline.
    pub fn next(&self) -> Option<Timestamp> {
        Some(self.0.iter().copied().min().unwrap_or(NONE)).filter(|&t| t != NONE)
    }
}

/// "Not armed".
const NONE: Timestamp = Timestamp::MAX;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_minimum_and_take_expired_is_noop_when_early() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(), None);
        t.set(Timer::Heartbeat, Timestamp::from_nanos(50));
        t.set(Timer::Ack, Timestamp::from_nanos(20));
        t.set_earliest(Timer::Ack, Timestamp::from_nanos(30));
        assert_eq!(t.next(), Some(Timestamp::from_nanos(20)));
        assert!(!t.take_expired(Timer::Ack, Timestamp::from_nanos(19)));
        assert!(t.take_expired(Timer::Ack, Timestamp::from_nanos(20)));
        assert_eq!(t.next(), Some(Timestamp::from_nanos(50)));
    }
}
