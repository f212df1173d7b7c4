//! Bounds-checked cursors over byte slices and the codec error types.
//!
//! Every read checks the remaining length first and returns [`DecodeError::Truncated`] instead of
//! panicking; every write goes through [`Writer`], which records an overflow instead of panicking,
//! so the encoder never indexes out of bounds even when handed a short buffer.

use core::fmt;

use super::RejectReason;

/// Why a frame could not be decoded. Small and `Copy`: decoding never allocates.
///
/// Each variant maps onto a wire [`RejectReason`] through [`DecodeError::reject_reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the header or `messageLength` (plus padding) require. On a stream this
    /// means "read more"; in a datagram it is fatal for the datagram.
    Truncated {
        /// Bytes needed to make progress, counted from the start of the frame.
        needed: usize,
    },
    /// `protocolId` is not `0xDB`.
    InvalidProtocolId(u8),
    /// `version` is not 1.
    UnsupportedVersion(u16),
    /// A flag bit other than bit 0 (resend) is set.
    InvalidFlags(u8),
    /// `messageLength` is below the 32-byte header.
    LengthBelowHeader(u16),
    /// `messageTypeId` is neither a session, handshake nor application type.
    UnknownMessageType(u16),
    /// `messageLength` does not match what the type's body requires.
    LengthMismatch {
        /// The message type.
        type_id: u16,
        /// The `messageLength` on the wire.
        declared: u16,
        /// The length the body rules require.
        expected: usize,
    },
    /// A `char` field holds a byte outside 0x20..=0x7E, or a non-NUL byte after the first NUL.
    InvalidChars(Field),
    /// A field holds a value outside its documented range (flags, booleans, reserved bytes,
    /// negative sequence numbers, handshake messages with a sequence number).
    InvalidFieldValue(Field),
    /// A byte of the alignment padding after `messageLength` is not zero.
    NonZeroPadding,
    /// Bytes left at the end of a datagram that do not form a whole message.
    TrailingBytes(usize),
    /// A message is larger than the receiver's configured maximum.
    TooLong {
        /// The `messageLength` on the wire.
        declared: u16,
        /// The configured maximum.
        max: usize,
    },
}

impl DecodeError {
    /// The `Reject.reason` the gateway answers this error with (DESIGN.md §1.2).
    pub fn reject_reason(self) -> RejectReason {
        match self {
            Self::InvalidProtocolId(_) | Self::UnsupportedVersion(_) => {
                RejectReason::InvalidProtocol
            }
            Self::UnknownMessageType(_) => RejectReason::UnknownMessageType,
            Self::Truncated { .. }
            | Self::LengthBelowHeader(_)
            | Self::LengthMismatch { .. }
            | Self::NonZeroPadding
            | Self::TrailingBytes(_)
            | Self::TooLong { .. } => RejectReason::InvalidLength,
            Self::InvalidFlags(_) | Self::InvalidChars(_) | Self::InvalidFieldValue(_) => {
                RejectReason::InvalidFieldValue
            }
        }
    }

    /// A short, static, lowercase description for counters and Reject details.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated { .. } => "truncated",
            Self::InvalidProtocolId(_) => "invalid protocol id",
            Self::UnsupportedVersion(_) => "unsupported version",
            Self::InvalidFlags(_) => "invalid flags",
            Self::LengthBelowHeader(_) => "length below header",
            Self::UnknownMessageType(_) => "unknown message type",
            Self::LengthMismatch { .. } => "length mismatch",
            Self::InvalidChars(_) => "invalid characters",
            Self::InvalidFieldValue(_) => "invalid field value",
            Self::NonZeroPadding => "non-zero padding",
            Self::TrailingBytes(_) => "trailing bytes",
            Self::TooLong { .. } => "message too long",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { needed } => write!(f, "truncated: {needed} bytes needed"),
            Self::InvalidProtocolId(p) => write!(f, "invalid protocol id 0x{p:02x}"),
            Self::UnsupportedVersion(v) => write!(f, "unsupported version {v}"),
            Self::InvalidFlags(x) => write!(f, "invalid flags 0x{x:02x}"),
            Self::LengthBelowHeader(l) => write!(f, "message length {l} below header"),
            Self::UnknownMessageType(t) => write!(f, "unknown message type {t}"),
            Self::LengthMismatch { type_id, declared, expected } => {
                write!(f, "type {type_id}: message length {declared}, expected {expected}")
            }
            Self::InvalidChars(field) => write!(f, "invalid characters in {field:?}"),
            Self::InvalidFieldValue(field) => write!(f, "invalid value in {field:?}"),
            Self::NonZeroPadding => f.write_str("non-zero padding"),
            Self::TrailingBytes(n) => write!(f, "{n} trailing bytes"),
            Self::TooLong { declared, max } => write!(f, "message length {declared} over {max}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Names the field a [`DecodeError`] or [`EncodeError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Field {
    /// Header `flags`.
    Flags,
    /// Header `sequenceNum`.
    SequenceNum,
    /// Header `lastProcessedSeqNum`.
    LastProcessedSeqNum,
    /// LogonRequest `username`.
    Username,
    /// LogonRequest `password`.
    Password,
    /// LogonRequest `resetSeqNum`.
    ResetSeqNum,
    /// LogoutRequest / LoggedOut `reason`.
    Reason,
    /// Reject, ConnectionReject, RegistrationReject `details`.
    Details,
    /// ConnectionRequest / RegistrationRequest `deviceUid`.
    DeviceUid,
    /// A reserved area that must be zero.
    Reserved,
    /// RegistrationAccept `resumed`.
    Resumed,
    /// DeviceConfig `config`.
    Config,
    /// Header `messageTypeId` (an application body with a type below 100).
    TypeId,
    /// HostStatus `state` (DESIGN.md §1.6).
    HostState,
    /// HostData body (at least one byte, DESIGN.md §1.6).
    HostData,
}

/// Why a message could not be encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer is shorter than the padded message.
    BufferTooSmall {
        /// Bytes the padded message needs.
        needed: usize,
    },
    /// A string field is too long or holds a byte outside printable ASCII.
    InvalidField(Field),
    /// Application body too long for a `u16` message length.
    BodyTooLong,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => write!(f, "buffer too small: {needed} bytes needed"),
            Self::InvalidField(field) => write!(f, "invalid value for {field:?}"),
            Self::BodyTooLong => f.write_str("body too long"),
        }
    }
}

impl std::error::Error for EncodeError {}

/// A forward-only reader over a borrowed slice (rustls `Reader`, quinn `Codec`).
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Reads `buf` from its start.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Takes the next `n` bytes.
    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(DecodeError::Truncated { needed: self.pos.saturating_add(n) });
        };
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// Takes the next `N` bytes as an array reference.
    pub fn take_array<const N: usize>(&mut self) -> Result<&'a [u8; N], DecodeError> {
        let bytes = self.take(N)?;
        // `take(N)` returned exactly N bytes, so the conversion cannot fail.
        bytes.try_into().map_err(|_| DecodeError::Truncated { needed: N })
    }

    /// Reads a `u8`.
    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take_array::<1>()?[0])
    }

    /// Reads a little-endian `u16`.
    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(*self.take_array()?))
    }

    /// Reads a little-endian `u32`.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(*self.take_array()?))
    }

    /// Reads a little-endian `i32`.
    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_le_bytes(*self.take_array()?))
    }

    /// Reads a little-endian `u64`.
    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(*self.take_array()?))
    }

    /// Reads a little-endian `i64`.
    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_le_bytes(*self.take_array()?))
    }

    /// Takes the rest of the input.
    pub fn rest(&mut self) -> &'a [u8] {
        let out = &self.buf[self.pos..];
        self.pos = self.buf.len();
        out
    }

    /// Fails with [`DecodeError::TrailingBytes`] unless everything was read.
    pub fn expect_empty(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

/// A forward-only writer into a caller-owned buffer. Writing past the end sets an overflow flag
/// instead of panicking; [`Writer::finish`] reports it.
#[derive(Debug)]
pub struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
    overflow: bool,
}

impl<'a> Writer<'a> {
    /// Writes into `buf` from its start.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0, overflow: false }
    }

    /// Bytes written so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Appends `bytes`.
    pub fn put(&mut self, bytes: &[u8]) {
        let end = self.pos + bytes.len();
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.pos = end;
            }
            None => self.overflow = true,
        }
    }

    /// Appends `n` zero bytes.
    pub fn zeros(&mut self, n: usize) {
        let end = self.pos + n;
        match self.buf.get_mut(self.pos..end) {
            Some(dst) => {
                dst.fill(0);
                self.pos = end;
            }
            None => self.overflow = true,
        }
    }

    /// Appends a `u8`.
    pub fn u8(&mut self, v: u8) {
        self.put(&[v]);
    }

    /// Appends a little-endian `u16`.
    pub fn u16(&mut self, v: u16) {
        self.put(&v.to_le_bytes());
    }

    /// Appends a little-endian `u32`.
    pub fn u32(&mut self, v: u32) {
        self.put(&v.to_le_bytes());
    }

    /// Appends a little-endian `i32`.
    pub fn i32(&mut self, v: i32) {
        self.put(&v.to_le_bytes());
    }

    /// Appends a little-endian `u64`.
    pub fn u64(&mut self, v: u64) {
        self.put(&v.to_le_bytes());
    }

    /// Appends a little-endian `i64`.
    pub fn i64(&mut self, v: i64) {
        self.put(&v.to_le_bytes());
    }

    /// Returns the bytes written, or the overflow.
    pub fn finish(self) -> Result<usize, EncodeError> {
        if self.overflow {
            Err(EncodeError::BufferTooSmall { needed: self.pos })
        } else {
            Ok(self.pos)
        }
    }
}

/// Rounds `len` up to the next multiple of 8 (DESIGN.md §1: every message is padded to 8).
pub const fn align8(len: usize) -> usize {
    (len + 7) & !7
}

/// True for the bytes a `char` field may hold: printable ASCII 0x20..=0x7E.
pub const fn is_printable(b: u8) -> bool {
    matches!(b, 0x20..=0x7e)
}

/// Validates a fixed `char[N]` field: printable ASCII, right-padded with NUL, nothing but NUL
/// after the first NUL. Returns the value (the bytes before the first NUL).
pub(super) fn fixed_chars(raw: &[u8], field: Field) -> Result<&[u8], DecodeError> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    let (value, pad) = raw.split_at(end);
    if !value.iter().all(|&b| is_printable(b)) || pad.iter().any(|&b| b != 0) {
        return Err(DecodeError::InvalidChars(field));
    }
    Ok(value)
}

/// Validates a variable `char[n]` field: every byte printable ASCII (no NUL: the length says
/// where it ends).
pub(super) fn var_chars(raw: &[u8], field: Field) -> Result<&[u8], DecodeError> {
    if raw.iter().all(|&b| is_printable(b)) {
        Ok(raw)
    } else {
        Err(DecodeError::InvalidChars(field))
    }
}
