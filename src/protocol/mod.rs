//! The fleetgate wire format, version 1, as fixed by DESIGN.md §1.
//!
//! This module is pure: it makes no syscalls, reads no clock and never allocates while decoding.
//! Decoding borrows from the input and returns a typed [`DecodeError`]; encoding writes into a
//! caller-owned buffer.
//!
//! # Framing
//!
//! All integers are little-endian. Every message is a 32-byte [`Header`] followed by a body, then
//! zero bytes up to a multiple of 8. `messageLength` counts header + body and **not** the padding,
//! so the next message starts at `align8(messageLength)`. This holds in a TCP stream
//! ([`Deframer`]) and inside a UDP datagram ([`Datagram`]) alike. Non-zero padding is an error.
//!
//! # Header (32 bytes)
//!
//! | off | size | field | type | rule |
//! |---:|---:|---|---|---|
//! | 0 | 1 | protocolId | u8 | always `0xDB` |
//! | 1 | 1 | flags | u8 | bit 0 (`0x01`) = resend; other bits 0 |
//! | 2 | 2 | messageLength | u16 | header + body, excluding padding |
//! | 4 | 2 | messageTypeId | u16 | [`MessageType`], or ≥ 100 for application messages |
//! | 6 | 2 | version | u16 | 1 |
//! | 8 | 8 | sequenceNum | i64 | 0 for handshake messages; never negative |
//! | 16 | 8 | lastProcessedSeqNum | i64 | highest contiguous seq received from the peer |
//! | 24 | 8 | sendTime | i64 | nanoseconds since the Unix epoch |
//!
//! # Bodies
//!
//! | id | name | dir | body (offset: field) | messageLength |
//! |---:|---|---|---|---:|
//! | 1 | LogonRequest | C→S | 0: username char\[16\]; 16: password char\[32\]; 48: resetSeqNum i8 (0/1) | 81 |
//! | 2 | LogonResponse | S→C | 0: heartbeatIntervalSeconds i32 | 36 |
//! | 4 | LogoutRequest | C→S | 0: reasonLength u8; 1: reason char\[n\] | 33+n |
//! | 5 | LoggedOut | S→C | 0: reasonLength u8; 1: reason char\[n\] | 33+n |
//! | 10 | Heartbeat | both | 0: correlationId i64 | 40 |
//! | 11 | TestRequest | both | 0: correlationId i64 | 40 |
//! | 20 | ResendRequest | C→S | 0: fromSeqNum i64; 8: toSeqNum i64 (0 = all after from) | 48 |
//! | 21 | GapFill | S→C | 0: newSeqNum i64 | 40 |
//! | 30 | Reject | S→C | 0: refSeqNum i64; 8: reason u8; 9: detailsLength u8; 10: details | 42+n |
//! | 50 | ConnectionRequest | C→hs | 0: deviceUid char\[16\]; 16: clientNonce u64; 24: clientVersion u16; 26..96 zero | 128 |
//! | 51 | ConnectionAccept | hs→C | 0: sessionPort u16; 2: reserved u16 (0); 4: cookieTtlMs u32; 8: clientNonce u64; 16: cookie \[u8; 32\] | 80 |
//! | 52 | ConnectionReject | hs→C | 0: reason u8; 1: detailsLength u8; 2: details (n ≤ 90) | 34+n |
//! | 53 | RegistrationRequest | C→sp | 0: deviceUid char\[16\]; 16: clientNonce u64; 24: cookie \[u8; 32\] | 88 |
//! | 54 | RegistrationAccept | sp→C | 0: sessionId u64; 8: resumed u8 (0/1); 9..16 zero | 48 |
//! | 55 | RegistrationReject | sp→C | 0: reason u8; 1: detailsLength u8; 2: details (n ≤ 50) | 34+n |
//! | 56 | GetDeviceConfig | S→C | 0: correlationId i64 | 40 |
//! | 57 | DeviceConfig | C→S | 0: correlationId i64; 8: configLength u8; 9: config char\[n\] | 41+n |
//! | ≥100 | application | both | opaque | 32+n |
//!
//! # Field rules, as this implementation reads them
//!
//! - Fixed `char[N]` fields are printable ASCII (0x20–0x7E), right-padded with NUL; the value
//!   ends at the first NUL and every byte after it must be NUL ([`DecodeError::InvalidChars`]).
//! - Variable `char[n]` fields (reasons, details, the device config) are exactly `n` printable
//!   bytes; NUL is not allowed in them. (DESIGN.md does not say; we chose the stricter rule, which
//!   every encoder here obeys.)
//! - Boolean bytes (`resetSeqNum`, `resumed`) are 0 or 1; reserved bytes are 0; sequence numbers
//!   are never negative; handshake messages (50–57) carry `sequenceNum` 0
//!   ([`DecodeError::InvalidFieldValue`]).
//! - Unknown ids below 100 are [`DecodeError::UnknownMessageType`].
//!
//! # UDP datagrams
//!
//! Every datagram starts with an 8-byte little-endian `sessionId` ([`DATAGRAM_PREFIX_LEN`]), then
//! one or more padded messages back to back. The prefix is 0 for messages 50–55; every later
//! datagram carries the session's id. Bytes left over that do not form a whole message are
//! [`DecodeError::TrailingBytes`].
//!
//! # Errors and Reject reasons
//!
//! [`DecodeError::reject_reason`] maps each error onto the `Reject.reason` the gateway answers
//! with: protocol id or version → INVALID_PROTOCOL; unknown type → UNKNOWN_MESSAGE_TYPE; any
//! length, padding or truncation problem → INVALID_LENGTH; bad characters, flags or values →
//! INVALID_FIELD_VALUE.
#![forbid(unsafe_code)]

mod codec;
mod framer;
mod header;
mod host;
mod message;
#[cfg(any(test, feature = "arbitrary"))]
mod owned;

pub use codec::{DecodeError, EncodeError, Field, Reader, Writer, align8, is_printable};
pub use framer::{DATAGRAM_PREFIX_LEN, Datagram, Deframer, Frames, write_prefix};
pub use header::{FLAG_RESEND, HEADER_LEN, Header, PROTOCOL_ID, PROTOCOL_VERSION, offset};
pub use host::{
    HOST_DATA_FROM_HOST, HOST_DATA_TO_HOST, HOST_STATUS, HOST_STATUS_DETAILS_MAX, HostMessage,
    HostState, StatusBuf,
};
pub use message::{
    APP_TYPE_MIN, Body, CONNECTION_REJECT_DETAILS_MAX, CONNECTION_REQUEST_LEN,
    ConnectionRejectReason, DeviceUid, FixedStr, Message, MessageType, Password,
    REGISTRATION_REJECT_DETAILS_MAX, RegistrationRejectReason, RejectReason, Username, split_frame,
};

#[cfg(any(test, feature = "arbitrary"))]
pub use owned::OwnedBody;

#[cfg(test)]
mod tests;
