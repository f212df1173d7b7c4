//! The 32-byte message header (DESIGN.md §1.1).
//!
//! ```text
//!  off size field                 type  rule
//!    0    1 protocolId            u8    always 0xDB
//!    1    1 flags                 u8    bit 0 (0x01) = resend; other bits 0
//!    2    2 messageLength         u16   header + body, excluding padding
//!    4    2 messageTypeId         u16   see MessageType
//!    6    2 version               u16   1
//!    8    8 sequenceNum           i64   0 for unsequenced (handshake) messages
//!   16    8 lastProcessedSeqNum   i64   highest contiguous seq received from the peer
//!   24    8 sendTime              i64   nanoseconds since the Unix epoch
//! ```
//!
//! All integers are little-endian. The message is padded with zeros to a multiple of 8; the next
//! message starts at `align8(messageLength)`.

use super::codec::{DecodeError, Field, Reader, Writer};

/// `protocolId`: the first byte of every message.
pub const PROTOCOL_ID: u8 = 0xdb;
/// `version` of this wire format.
pub const PROTOCOL_VERSION: u16 = 0x0001;
/// Length of the header in bytes.
pub const HEADER_LEN: usize = 32;
/// `flags` bit 0: the message is a retransmission.
pub const FLAG_RESEND: u8 = 0x01;

const _: () = assert!(HEADER_LEN % 8 == 0);

/// A decoded header. `protocolId` and `version` are implied (they are checked on decode and
/// written on encode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `flags`: only [`FLAG_RESEND`] may be set.
    pub flags: u8,
    /// `messageLength`: header + body, without padding.
    pub length: u16,
    /// `messageTypeId`.
    pub type_id: u16,
    /// `sequenceNum` (never negative).
    pub seq: i64,
    /// `lastProcessedSeqNum` (never negative).
    pub last_processed: i64,
    /// `sendTime`, nanoseconds since the Unix epoch.
    pub send_time: i64,
}

impl Header {
    /// True if the resend flag is set.
    pub fn is_resend(&self) -> bool {
        self.flags & FLAG_RESEND != 0
    }

    /// Decodes and validates the 32 header bytes at the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(buf);
        let protocol_id = r.u8()?;
        if protocol_id != PROTOCOL_ID {
            return Err(DecodeError::InvalidProtocolId(protocol_id));
        }
        let flags = r.u8()?;
        let length = r.u16()?;
        let type_id = r.u16()?;
        let version = r.u16()?;
        let seq = r.i64()?;
        let last_processed = r.i64()?;
        let send_time = r.i64()?;
        if version != PROTOCOL_VERSION {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        if flags & !FLAG_RESEND != 0 {
            return Err(DecodeError::InvalidFlags(flags));
        }
        if usize::from(length) < HEADER_LEN {
            return Err(DecodeError::LengthBelowHeader(length));
        }
        if seq < 0 {
            return Err(DecodeError::InvalidFieldValue(Field::SequenceNum));
        }
        if last_processed < 0 {
            return Err(DecodeError::InvalidFieldValue(Field::LastProcessedSeqNum));
        }
        Ok(Self { flags, length, type_id, seq, last_processed, send_time })
    }

    /// Writes the 32 header bytes.
    pub fn encode(&self, w: &mut Writer<'_>) {
        w.u8(PROTOCOL_ID);
        w.u8(self.flags);
        w.u16(self.length);
        w.u16(self.type_id);
        w.u16(PROTOCOL_VERSION);
        w.i64(self.seq);
        w.i64(self.last_processed);
        w.i64(self.send_time);
    }
}

/// Byte offsets of header fields, for in-place patches of journaled messages.
pub mod offset {
    /// `flags`.
    pub const FLAGS: usize = 1;
    /// `messageLength`.
    pub const LENGTH: usize = 2;
    /// `messageTypeId`.
    pub const TYPE_ID: usize = 4;
    /// `sequenceNum`.
    pub const SEQ: usize = 8;
    /// `lastProcessedSeqNum`.
    pub const LAST_PROCESSED: usize = 16;
    /// `sendTime`.
    pub const SEND_TIME: usize = 24;
}
