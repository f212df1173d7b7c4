//! Non-journaled (session) messages waiting to be sent, and a fixed-size reason string.

use core::fmt::{self, Write};

/// A LoggedOut reason or Reject detail held inline (no allocation), at most 64 printable bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ReasonBuf {
    buf: [u8; 64],
    len: u8,
}

impl ReasonBuf {
    /// From bytes, truncated to 64 and with non-printable bytes replaced by `?`.
    pub fn new(s: &[u8]) -> Self {
        let mut r = Self { buf: [0; 64], len: 0 };
        r.push(s);
        r
    }

    /// Formats `args` (truncating at 64 bytes).
    pub fn format(args: fmt::Arguments<'_>) -> Self {
        let mut r = Self { buf: [0; 64], len: 0 };
        // Writing into a ReasonBuf never fails: it truncates.
        let _ = r.write_fmt(args);
        r
    }

    /// The reason bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The reason as text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    fn push(&mut self, s: &[u8]) {
        for &b in s {
            if usize::from(self.len) == self.buf.len() {
                break;
            }
            self.buf[usize::from(self.len)] =
                if crate::protocol::is_printable(b) { b } else { b'?' };
            self.len += 1;
        }
    }
}

impl Write for ReasonBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl fmt::Debug for ReasonBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// A session message the gateway has numbered but not yet sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Control {
    LogonResponse {
        heartbeat_interval_s: i32,
    },
    Heartbeat {
        correlation_id: i64,
    },
    TestRequest {
        correlation_id: i64,
    },
    /// The queue's last word; its reason is [`ControlQueue::farewell`] (one per session, not
    /// one per place).
    LoggedOut,
    /// `details` indexes [`DETAILS`]: 16 bytes a variant, not 32.
    Reject {
        ref_seq_num: i64,
        reason: u8,
        details: u8,
    },
}

/// A bounded FIFO of `(seq, Control)`; the last place is kept for a LoggedOut.
#[derive(Debug)]
pub(crate) struct ControlQueue {
    items: [(i64, Control); CONTROL_CAP],
    head: u8,
    len: u8,
    /// The reason of the queued LoggedOut.
    farewell: ReasonBuf,
}

/// Places in a [`ControlQueue`].
/// Sixteen: room for the Heartbeats that answer a device's TestRequests while a resend holds
/// live output back (eight seen in `rule08_udp_detach_then_rehandshake...`), and the Rejects of
/// one input batch. Each place is 24 bytes of every session's record (it was 32 places of 80
/// bytes: the LoggedOut reason is now kept once, in [`ControlQueue::farewell`]).
pub(crate) const CONTROL_CAP: usize = 16;

/// Reject details the gateway sends; [`Control::Reject`] keeps an index into this table.
const DETAILS: [&str; 16] = [
    "invalid message",
    "message not allowed",
    "invalid resend range",
    "handshake message on tcp",
    "truncated",
    "invalid protocol id",
    "unsupported version",
    "invalid flags",
    "length below header",
    "unknown message type",
    "length mismatch",
    "invalid characters",
    "invalid field value",
    "non-zero padding",
    "trailing bytes",
    "message too long",
];

/// The index of `details` in [`DETAILS`] (0, "invalid message", for a text not listed there:
/// a test keeps the table complete).
pub(crate) fn detail_code(details: &str) -> u8 {
    DETAILS.iter().position(|&d| d == details).unwrap_or(0) as u8
}

/// The text of a detail index.
pub(crate) fn detail_text(code: u8) -> &'static str {
    DETAILS.get(usize::from(code)).copied().unwrap_or(DETAILS[0])
}

impl ControlQueue {
    pub(crate) fn new() -> Self {
        Self {
            items: [(0, Control::Heartbeat { correlation_id: 0 }); CONTROL_CAP],
            head: 0,
            len: 0,
            farewell: ReasonBuf { buf: [0; 64], len: 0 },
        }
    }

    pub(crate) fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Pushes; a LoggedOut may take the reserved last place. Returns false when full.
    pub(crate) fn push(&mut self, seq: i64, c: Control) -> bool {
        let limit = if matches!(c, Control::LoggedOut) { CONTROL_CAP } else { CONTROL_CAP - 1 };
        if self.len() >= limit {
            return false;
        }
        self.items[(self.head() + self.len()) % CONTROL_CAP] = (seq, c);
        self.len += 1;
        true
    }

    /// Pushes a LoggedOut with its reason; false when full.
    pub(crate) fn push_logged_out(&mut self, seq: i64, reason: ReasonBuf) -> bool {
        let pushed = self.push(seq, Control::LoggedOut);
        if pushed {
            self.farewell = reason;
        }
        pushed
    }

    /// The reason of the queued LoggedOut.
    pub(crate) fn farewell(&self) -> &ReasonBuf {
        &self.farewell
    }

    pub(crate) fn front(&self) -> Option<(i64, Control)> {
        (self.len > 0).then(|| self.items[self.head()])
    }

    pub(crate) fn pop(&mut self) {
        if self.len > 0 {
            self.head = ((self.head() + 1) % CONTROL_CAP) as u8;
            self.len -= 1;
        }
    }

    fn head(&self) -> usize {
        usize::from(self.head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::DecodeError;
    use crate::protocol::Field;

    #[test]
    fn every_reject_detail_has_its_place_in_the_table() {
        let decode_errors = [
            DecodeError::Truncated { needed: 1 },
            DecodeError::InvalidProtocolId(0),
            DecodeError::UnsupportedVersion(2),
            DecodeError::InvalidFlags(2),
            DecodeError::LengthBelowHeader(1),
            DecodeError::UnknownMessageType(9),
            DecodeError::LengthMismatch { type_id: 1, declared: 1, expected: 2 },
            DecodeError::InvalidChars(Field::Flags),
            DecodeError::InvalidFieldValue(Field::Flags),
            DecodeError::NonZeroPadding,
            DecodeError::TrailingBytes(1),
            DecodeError::TooLong { declared: 1, max: 0 },
        ];
        let texts = decode_errors.iter().map(|e| e.as_str()).chain([
            "message not allowed",
            "invalid resend range",
            "handshake message on tcp",
        ]);
        for t in texts {
            let code = detail_code(t);
            assert_eq!(detail_text(code), t, "{t} is listed");
        }
        assert!(core::mem::size_of::<(i64, Control)>() <= 24);
    }
}
