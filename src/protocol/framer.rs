//! Splitting byte streams (TCP) and datagrams (UDP) into frames.

use super::codec::{DecodeError, align8};
use super::header::{HEADER_LEN, PROTOCOL_ID};
use super::message::split_frame;

/// Length of the `sessionId` prefix of every UDP datagram (DESIGN.md §1.5).
pub const DATAGRAM_PREFIX_LEN: usize = 8;

/// A UDP datagram: the `sessionId` prefix and the messages after it.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    /// The `sessionId` prefix (0 for handshake messages 50–55).
    pub session_id: u64,
    /// The bytes after the prefix.
    pub payload: &'a [u8],
}

impl<'a> Datagram<'a> {
    /// Splits the prefix off. Fails if the datagram is shorter than prefix plus one header.
    pub fn parse(buf: &'a [u8]) -> Result<Self, DecodeError> {
        if buf.len() < DATAGRAM_PREFIX_LEN + HEADER_LEN {
            return Err(DecodeError::Truncated { needed: DATAGRAM_PREFIX_LEN + HEADER_LEN });
        }
        let (prefix, payload) = buf.split_at(DATAGRAM_PREFIX_LEN);
        let mut id = [0u8; 8];
        id.copy_from_slice(prefix);
        Ok(Self { session_id: u64::from_le_bytes(id), payload })
    }

    /// Iterates over the frames (each exactly `messageLength` bytes). After the first error the
    /// iterator ends: the rest of the datagram cannot be framed.
    pub fn frames(&self) -> Frames<'a> {
        Frames { rest: self.payload, failed: false }
    }
}

/// Writes the `sessionId` prefix into the first 8 bytes of `buf`; returns 8, or 0 if `buf` is
/// too short.
pub fn write_prefix(buf: &mut [u8], session_id: u64) -> usize {
    match buf.get_mut(..DATAGRAM_PREFIX_LEN) {
        Some(dst) => {
            dst.copy_from_slice(&session_id.to_le_bytes());
            DATAGRAM_PREFIX_LEN
        }
        None => 0,
    }
}

/// Iterator over the frames of a datagram payload.
#[derive(Clone, Debug)]
pub struct Frames<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<&'a [u8], DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        if self.rest.len() < HEADER_LEN {
            self.failed = true;
            return Some(Err(DecodeError::TrailingBytes(self.rest.len())));
        }
        match split_frame(self.rest) {
            Ok((frame, padded)) => {
                self.rest = &self.rest[padded..];
                Some(Ok(frame))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// A stream deframer over a fixed buffer (one per TCP connection, allocated up front).
///
/// Read from the socket into [`Deframer::spare`], report the count with [`Deframer::filled`],
/// then call [`Deframer::next_frame`] until it returns `Ok(None)`. Partial frames stay in the
/// buffer; back-to-back frames come out one by one. A frame longer than the buffer is an error
/// ([`DecodeError::TooLong`]): the connection must be closed, the buffer never grows.
#[derive(Debug)]
pub struct Deframer {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Deframer {
    /// A deframer whose largest padded frame is `capacity` bytes (rounded up to 8).
    pub fn new(capacity: usize) -> Self {
        let capacity = align8(capacity.max(HEADER_LEN));
        Self { buf: vec![0; capacity].into_boxed_slice(), start: 0, end: 0 }
    }

    /// Forgets any buffered bytes (for reuse by a new connection).
    pub fn reset(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Bytes buffered and not yet returned as frames.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Appends `bytes` (for callers that already hold the data, such as a handoff). Returns how
    /// many bytes fit.
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        let spare = self.spare();
        let n = bytes.len().min(spare.len());
        spare[..n].copy_from_slice(&bytes[..n]);
        self.filled(n);
        n
    }

    /// Free space to read into. Moves a partial frame to the front first when that gains room.
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into [`Deframer::spare`].
    pub fn filled(&mut self, n: usize) {
        debug_assert!(self.end + n <= self.buf.len());
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next whole frame (exactly `messageLength` bytes), `Ok(None)` if more bytes are
    /// needed, or the framing error. Body contents are not checked here.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, DecodeError> {
        let avail = &self.buf[self.start..self.end];
        if avail.is_empty() {
            return Ok(None);
        }
        if avail[0] != PROTOCOL_ID {
            return Err(DecodeError::InvalidProtocolId(avail[0]));
        }
        if avail.len() >= 4 {
            let declared = u16::from_le_bytes([avail[2], avail[3]]);
            if align8(usize::from(declared)) > self.buf.len() {
                return Err(DecodeError::TooLong { declared, max: self.buf.len() });
            }
        }
        match split_frame(avail) {
            Ok((_, padded)) => {
                let frame_start = self.start;
                let len = u16::from_le_bytes([avail[2], avail[3]]);
                self.start += padded;
                Ok(Some(&self.buf[frame_start..frame_start + usize::from(len)]))
            }
            Err(DecodeError::Truncated { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
