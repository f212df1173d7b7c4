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
    LogonResponse { heartbeat_interval_s: i32 },
    Heartbeat { correlation_id: i64 },
    TestRequest { correlation_id: i64 },
    LoggedOut { reason: ReasonBuf },
    Reject { ref_seq_num: i64, reason: u8, details: &'static str },
}

/// A bounded FIFO of `(seq, Control)`; the last place is kept for a LoggedOut.
#[derive(Debug)]
pub(crate) struct ControlQueue {
    items: [(i64, Control); CONTROL_CAP],
    head: usize,
    len: usize,
}

/// Places in a [`ControlQueue`].
pub(crate) const CONTROL_CAP: usize = 32;

impl ControlQueue {
    pub(crate) fn new() -> Self {
        Self {
            items: [(0, Control::Heartbeat { correlation_id: 0 }); CONTROL_CAP],
            head: 0,
            len: 0,
        }
    }

    pub(crate) fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Pushes; a LoggedOut may take the reserved last place. Returns false when full.
    pub(crate) fn push(&mut self, seq: i64, c: Control) -> bool {
        let limit =
            if matches!(c, Control::LoggedOut { .. }) { CONTROL_CAP } else { CONTROL_CAP - 1 };
        if self.len >= limit {
            return false;
        }
        self.items[(self.head + self.len) % CONTROL_CAP] = (seq, c);
        self.len += 1;
        true
    }

    pub(crate) fn front(&self) -> Option<(i64, Control)> {
        (self.len > 0).then(|| self.items[self.head])
    }

    pub(crate) fn pop(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % CONTROL_CAP;
            self.len -= 1;
        }
    }
}
