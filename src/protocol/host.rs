//! Host data (DESIGN.md §1.6): the application messages that bridge a device and the TCP host
//! its device group names. They travel as ordinary application messages (types ≥ 100:
//! sequenced, journaled, resent), so [`super::Message`] decodes them as [`super::Body::App`];
//! this module gives their bodies a meaning.
//!
//! | id | name | dir | body | messageLength |
//! |---:|---|---|---|---:|
//! | 400 | HostData | C→S | bytes for the host, n ≥ 1 | 32+n |
//! | 401 | HostData | S→C | bytes from the host, n ≥ 1 | 32+n |
//! | 402 | HostStatus | S→C | 0: state u8; 1: detailsLength u8; 2: details char[n] | 34+n |

use super::codec::{DecodeError, EncodeError, Field, is_printable};
use super::header::HEADER_LEN;

/// HostData from the device to the host (C→S).
pub const HOST_DATA_TO_HOST: u16 = 400;
/// HostData from the host to the device (S→C).
pub const HOST_DATA_FROM_HOST: u16 = 401;
/// HostStatus (S→C).
pub const HOST_STATUS: u16 = 402;
/// Longest HostStatus `details` (its length is a u8).
pub const HOST_STATUS_DETAILS_MAX: usize = 255;

wire_enum! {
    /// `HostStatus.state`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum HostState: u8 {
        /// The host connection is up.
        Connected = 1,
        /// The gateway is connecting to the host.
        Connecting = 2,
        /// The host closed the connection (LoggedOut("host closed") follows).
        ClosedByHost = 3,
        /// The host could not be reached (refused, timed out, no descriptors).
        Unreachable = 4,
        /// Nothing crossed the connection for the host's inactivity timeout.
        IdleTimeout = 5,
    }

    /// Maps a wire value; `None` outside 1..=5.
    fn from_u8;
}

impl HostState {
    /// Short lowercase name, for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connected => "connected",
            Self::Connecting => "connecting",
            Self::ClosedByHost => "closed_by_host",
            Self::Unreachable => "unreachable",
            Self::IdleTimeout => "idle_timeout",
        }
    }
}

/// A host message body, borrowed from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostMessage<'a> {
    /// Type 400: bytes for the host.
    ToHost(&'a [u8]),
    /// Type 401: bytes from the host.
    FromHost(&'a [u8]),
    /// Type 402.
    Status {
        /// The state.
        state: HostState,
        /// Printable ASCII, at most 255 bytes.
        details: &'a [u8],
    },
}

impl<'a> HostMessage<'a> {
    /// Decodes the body of an application message of type `type_id`: `Ok(None)` for types other
    /// than 400–402, an error (with its Reject reason) for a malformed host body.
    pub fn decode(type_id: u16, body: &'a [u8]) -> Result<Option<Self>, DecodeError> {
        let declared = (HEADER_LEN + body.len()).min(usize::from(u16::MAX)) as u16;
        let mismatch =
            |expected: usize| DecodeError::LengthMismatch { type_id, declared, expected };
        Ok(Some(match type_id {
            HOST_DATA_TO_HOST | HOST_DATA_FROM_HOST => {
                if body.is_empty() {
                    return Err(mismatch(HEADER_LEN + 1));
                }
                if type_id == HOST_DATA_TO_HOST { Self::ToHost(body) } else { Self::FromHost(body) }
            }
            HOST_STATUS => {
                let (Some(&state), Some(&n)) = (body.first(), body.get(1)) else {
                    return Err(mismatch(HEADER_LEN + 2));
                };
                let n = usize::from(n);
                if body.len() != 2 + n {
                    return Err(mismatch(HEADER_LEN + 2 + n));
                }
                let Some(state) = HostState::from_u8(state) else {
                    return Err(DecodeError::InvalidFieldValue(Field::HostState));
                };
                let details = &body[2..];
                if !details.iter().all(|&b| is_printable(b)) {
                    return Err(DecodeError::InvalidChars(Field::Details));
                }
                Self::Status { state, details }
            }
            _ => return Ok(None),
        }))
    }

    /// The `messageTypeId`.
    pub fn type_id(&self) -> u16 {
        match self {
            Self::ToHost(_) => HOST_DATA_TO_HOST,
            Self::FromHost(_) => HOST_DATA_FROM_HOST,
            Self::Status { .. } => HOST_STATUS,
        }
    }

    /// Body length in bytes.
    pub fn len(&self) -> usize {
        match self {
            Self::ToHost(b) | Self::FromHost(b) => b.len(),
            Self::Status { details, .. } => 2 + details.len(),
        }
    }

    /// Never true for a valid message (HostData carries at least one byte).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Writes the body into `buf`; returns its length. Refuses what [`Self::decode`] refuses.
    pub fn encode_body(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let n = self.len();
        match self {
            Self::ToHost(b) | Self::FromHost(b) => {
                if b.is_empty() {
                    return Err(EncodeError::InvalidField(Field::HostData));
                }
                if buf.len() < n {
                    return Err(EncodeError::BufferTooSmall { needed: n });
                }
                buf[..n].copy_from_slice(b);
            }
            Self::Status { state, details } => {
                if details.len() > HOST_STATUS_DETAILS_MAX
                    || !details.iter().all(|&b| is_printable(b))
                {
                    return Err(EncodeError::InvalidField(Field::Details));
                }
                if buf.len() < n {
                    return Err(EncodeError::BufferTooSmall { needed: n });
                }
                buf[0] = *state as u8;
                buf[1] = details.len() as u8;
                buf[2..n].copy_from_slice(details);
            }
        }
        Ok(n)
    }
}

/// A HostStatus body built on the stack: details longer than 255 bytes are cut, bytes outside
/// printable ASCII become `?`.
#[derive(Clone, Copy)]
pub struct StatusBuf {
    buf: [u8; 2 + HOST_STATUS_DETAILS_MAX],
    len: usize,
}

impl StatusBuf {
    /// The body of HostStatus(`state`, `details`).
    pub fn new(state: HostState, details: &[u8]) -> Self {
        let mut buf = [0u8; 2 + HOST_STATUS_DETAILS_MAX];
        let n = details.len().min(HOST_STATUS_DETAILS_MAX);
        buf[0] = state as u8;
        buf[1] = n as u8;
        for (d, &s) in buf[2..2 + n].iter_mut().zip(details) {
            *d = if is_printable(s) { s } else { b'?' };
        }
        Self { buf, len: 2 + n }
    }

    /// The body bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl core::fmt::Debug for StatusBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_tuple("StatusBuf").field(&self.as_bytes()).finish()
    }
}
