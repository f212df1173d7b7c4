//! The device's event queue: what [`super::Device::poll_event`] hands out. Preallocated and
//! bounded: a fixed number of events, and the bodies they carry (application messages, the
//! LoggedOut text) copied into one fixed byte buffer, so no event allocates.
//!
//! Sizing: one input (a datagram of at most `max_datagram` bytes, one TCP frame, or one
//! `handle_timeout`) always fits in an empty queue. Every message takes at least 32 bytes, so a
//! datagram carries at most `max_datagram / 32` messages, and its bodies fit in `max_datagram`
//! bytes; a few more events (registered, stream reset, logged on, ended) and the longest
//! LoggedOut text (255 bytes) are kept in reserve for the events that are not messages.
//!
//! When full: the caller must drain the queue after each `handle_*` call (asserted in debug
//! builds). If it does not, an application message (or a Reject) that finds no room is not
//! consumed: the device treats it as not received, counts it (`DeviceStats::event_queue_full`)
//! and asks for it again with a ResendRequest, so it is delayed, never lost. An event that is
//! not a message (only possible when the reserve too is used up) is dropped and counted.

use std::collections::VecDeque;

use super::DeviceEvent;
use super::state::EndReason;

/// Event places kept for events that are not messages (registered, stream reset, logged on,
/// ended: at most these four come out of one input).
const RESERVE_EVENTS: usize = 4;
/// Body bytes kept for the one LoggedOut text an input can end with.
const RESERVE_BYTES: usize = 255;

/// One queued event; bodies are ranges of [`EventQueue::bytes`], as `u16` (the buffer is at
/// most [`MAX_BYTES`] long), which keeps an event at 24 bytes: every device of a million-device
/// load generator carries a queue.
#[derive(Clone, Copy, Debug)]
enum Queued {
    Registered { session_id: u64, resumed: bool },
    LoggedOn { heartbeat_interval_s: i32, last_processed: i64 },
    StreamReset { unacked_dropped: usize },
    App { seq: i64, type_id: u16, start: u16, len: u16, send_time: i64, resent: bool },
    Rejected { ref_seq_num: i64, reason: u8 },
    Ended { reason: EndReason, start: u16, len: u16 },
}

/// Largest body buffer: ranges are `u16`. A frame is at most 65,535 bytes (`messageLength` is
/// a `u16`), so an input larger than this cannot be one message anyway.
const MAX_BYTES: usize = u16::MAX as usize;

/// The bounded queue (see the module docs).
#[derive(Debug)]
pub(super) struct EventQueue {
    events: VecDeque<Queued>,
    cap: usize,
    bytes: Box<[u8]>,
    /// Body bytes in use, from 0; back to 0 whenever the queue empties.
    used: usize,
}

impl EventQueue {
    /// A queue for inputs of at most `max_input` bytes.
    pub(super) fn new(max_input: usize) -> Self {
        let max_input = max_input.min(MAX_BYTES - RESERVE_BYTES);
        let cap = max_input / 32 + RESERVE_EVENTS + 1;
        Self {
            events: VecDeque::with_capacity(cap),
            cap,
            bytes: vec![0; max_input + RESERVE_BYTES].into_boxed_slice(),
            used: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// Queues a message-carrying event (application message) outside the reserve; false if
    /// there is no room (the caller then does not consume the message).
    pub(super) fn push_app(
        &mut self,
        seq: i64,
        type_id: u16,
        body: &[u8],
        send_time: i64,
        resent: bool,
    ) -> bool {
        if self.events.len() + RESERVE_EVENTS >= self.cap
            || self.used + body.len() + RESERVE_BYTES > self.bytes.len()
        {
            return false;
        }
        let start = self.copy(body);
        // Both fit in u16: the buffer is at most MAX_BYTES long.
        let (start, len) = (start as u16, body.len() as u16);
        self.events.push_back(Queued::App { seq, type_id, start, len, send_time, resent });
        true
    }

    /// Queues a Reject event outside the reserve; false if there is no room.
    pub(super) fn push_rejected(&mut self, ref_seq_num: i64, reason: u8) -> bool {
        if self.events.len() + RESERVE_EVENTS >= self.cap {
            return false;
        }
        self.events.push_back(Queued::Rejected { ref_seq_num, reason });
        true
    }

    /// Queues an event that is not a message, from the reserve; false (dropped) only when the
    /// caller left earlier events undrained.
    pub(super) fn push(&mut self, e: &DeviceEvent<'_>) -> bool {
        if self.events.len() >= self.cap {
            return false;
        }
        let q = match *e {
            DeviceEvent::Registered { session_id, resumed } => {
                Queued::Registered { session_id, resumed }
            }
            DeviceEvent::LoggedOn { heartbeat_interval_s, last_processed } => {
                Queued::LoggedOn { heartbeat_interval_s, last_processed }
            }
            DeviceEvent::StreamReset { unacked_dropped } => Queued::StreamReset { unacked_dropped },
            DeviceEvent::Ended { reason, text } => {
                let text = &text[..text.len().min(self.bytes.len() - self.used)];
                let start = self.copy(text);
                // Both fit in u16: the buffer is at most MAX_BYTES long.
                Queued::Ended { reason, start: start as u16, len: text.len() as u16 }
            }
            DeviceEvent::App { seq, type_id, body, send_time, resent } => {
                return self.push_app(seq, type_id, body, send_time, resent);
            }
            DeviceEvent::Rejected { ref_seq_num, reason } => {
                return self.push_rejected(ref_seq_num, reason);
            }
        };
        self.events.push_back(q);
        true
    }

    /// The oldest event; its body borrows the queue until the next push.
    pub(super) fn pop(&mut self) -> Option<DeviceEvent<'_>> {
        let q = self.events.pop_front()?;
        if self.events.is_empty() {
            // The bytes stay as they are until the next push, which needs `&mut self` and so
            // waits for the returned borrow to end.
            self.used = 0;
        }
        let body = |start: u16, len: u16| {
            let start = usize::from(start);
            &self.bytes[start..start + usize::from(len)]
        };
        Some(match q {
            Queued::Registered { session_id, resumed } => {
                DeviceEvent::Registered { session_id, resumed }
            }
            Queued::LoggedOn { heartbeat_interval_s, last_processed } => {
                DeviceEvent::LoggedOn { heartbeat_interval_s, last_processed }
            }
            Queued::StreamReset { unacked_dropped } => DeviceEvent::StreamReset { unacked_dropped },
            Queued::App { seq, type_id, start, len, send_time, resent } => {
                DeviceEvent::App { seq, type_id, body: body(start, len), send_time, resent }
            }
            Queued::Rejected { ref_seq_num, reason } => {
                DeviceEvent::Rejected { ref_seq_num, reason }
            }
            Queued::Ended { reason, start, len } => {
                DeviceEvent::Ended { reason, text: body(start, len) }
            }
        })
    }

    /// Drops every queued event (a restart).
    pub(super) fn clear(&mut self) {
        self.events.clear();
        self.used = 0;
    }

    fn copy(&mut self, b: &[u8]) -> usize {
        let start = self.used;
        self.bytes[start..start + b.len()].copy_from_slice(b);
        self.used += b.len();
        start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A queue costs 24 bytes per event place (a million-device generator holds a million).
    #[test]
    fn an_event_place_takes_24_bytes() {
        assert!(core::mem::size_of::<Queued>() <= 24, "{}", core::mem::size_of::<Queued>());
    }

    #[test]
    fn a_full_datagram_of_empty_messages_and_its_control_events_fit() {
        let mut q = EventQueue::new(1400);
        for seq in 0..1400 / 32 {
            assert!(q.push_app(seq as i64, 100, b"", 0, false), "message {seq}");
        }
        let ended = DeviceEvent::Ended { reason: EndReason::LoggedOut, text: &[b'x'; 255] };
        assert!(q.push(&DeviceEvent::LoggedOn { heartbeat_interval_s: 5, last_processed: 0 }));
        assert!(q.push(&ended));
        let mut n = 0;
        while let Some(e) = q.pop() {
            n += 1;
            if let DeviceEvent::Ended { text, .. } = e {
                assert_eq!(text.len(), 255);
            }
        }
        assert_eq!(n, 1400 / 32 + 2);
    }

    #[test]
    fn bodies_fill_up_to_the_input_size_then_refuse_and_keep_the_reserve() {
        let mut q = EventQueue::new(1400);
        assert!(q.push_app(1, 100, &[1; 1000], 0, false));
        assert!(q.push_app(2, 100, &[2; 400], 0, false));
        assert!(!q.push_app(3, 100, &[3; 1], 0, false), "bodies beyond max_input refused");
        let ended = DeviceEvent::Ended { reason: EndReason::LoggedOut, text: &[b'x'; 255] };
        assert!(q.push(&ended), "the reserve still takes the end");
        let bodies: Vec<Vec<u8>> = std::iter::from_fn(|| match q.pop()? {
            DeviceEvent::App { body, .. } => Some(body.to_vec()),
            DeviceEvent::Ended { text, .. } => Some(text.to_vec()),
            _ => None,
        })
        .collect();
        assert_eq!(bodies, [vec![1; 1000], vec![2; 400], vec![b'x'; 255]]);
        // Empty again: the whole buffer is free.
        assert!(q.push_app(4, 100, &[4; 1400], 0, false));
    }
}
