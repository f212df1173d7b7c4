//! Why sessions end and why sends fail, sorted by who is at fault (STYLE.md rule 9, rustls
//! `error/mod.rs`): the peer closed, the peer misbehaved, the peer cannot be served as it asks,
//! a deadline passed, the gateway closed it, output could not keep up; and for sends, the
//! caller's misuse. Every type is `Copy` and allocation-free (they travel on the hot path).
//!
//! The LoggedOut texts on the wire are DESIGN.md's and are written where each close is decided;
//! these types only classify. [`CloseReason::as_str`] is a short label for logs.

use core::fmt;

use crate::protocol::DecodeError;

/// Why a session ended or is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The device ended it: no one's fault.
    PeerClosed(PeerClose),
    /// The device broke the protocol.
    PeerMisbehaved(Violation),
    /// The device cannot be served as it asks.
    PeerIncompatible(Refusal),
    /// A deadline passed.
    Timeout(Deadline),
    /// The gateway ended it.
    LocalClose(LocalClose),
    /// Output could not keep up: a bounded queue overflowed.
    Backpressure(Overflow),
}

/// The device ended the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerClose {
    /// LogoutRequest (DESIGN.md §2 rule 10).
    Logout,
    /// The transport closed before logon: nothing to keep.
    TransportClosed,
}

/// How the device broke the protocol (on TCP; UDP input is dropped and counted instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Violation {
    /// A sequence number other than the expected one (DESIGN.md §2 rule 5).
    Sequence,
    /// A frame that does not decode: framing on TCP, or anything before logon.
    Malformed(DecodeError),
    /// Something other than LogonRequest first (DESIGN.md §2 rule 3).
    LogonRequired,
    /// A new stream (resetSeqNum = 1) whose LogonRequest is not number 1 (rule 4).
    FirstSequence,
}

/// Why the device cannot be served as it asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Credentials refused (DESIGN.md §2 rule 11).
    InvalidCredentials,
    /// Logons refused without a check: too many failures from its address, network or at its
    /// username (rule 11).
    RateLimited,
    /// Logon with resetSeqNum = 0, nothing to resume, and a first number above 1.
    NothingToResume,
    /// A resend reaching below the journal (rule 7).
    ResendWindowExceeded,
}

impl Refusal {
    /// The LoggedOut text of a refused logon (DESIGN.md §2 rule 11; the first failure that
    /// reaches the limit still gets "invalid credentials", see the module docs of [`super`]).
    pub(crate) fn text(self) -> &'static [u8] {
        match self {
            Self::InvalidCredentials => b"invalid credentials",
            Self::RateLimited => b"too many failed logons",
            Self::NothingToResume => b"nothing to resume",
            // The fixed part: the LoggedOut adds ": oldest retained N".
            Self::ResendWindowExceeded => b"resend window exceeded",
        }
    }
}

/// Which deadline passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deadline {
    /// DeviceConfig did not arrive in time (eSP0008, rule 1).
    DeviceConfig,
    /// TCP LogonRequest did not arrive in time (rule 3).
    Logon,
    /// The device went silent (TestRequest unanswered, rule 6): detached.
    Heartbeat,
    /// Detached longer than `session.detached_ttl` (rule 8).
    Detached,
}

/// Why the gateway ended the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalClose {
    /// The gateway is shutting down.
    Shutdown,
    /// The session's host connection ended (closed, unreachable, inactive: DESIGN.md §1.6).
    Host,
}

/// Which bounded queue overflowed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overflow {
    /// The session's own output (control queue, or the journal during a resend).
    OutputQueue,
    /// The TCP connection's send queue: a reader too slow to keep up (detached).
    SendQueue,
}

impl CloseReason {
    /// The device sent LogoutRequest.
    pub const LOGOUT: Self = Self::PeerClosed(PeerClose::Logout);

    /// Short lowercase label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PeerClosed(PeerClose::Logout) => "logout",
            Self::PeerClosed(PeerClose::TransportClosed) => "transport closed",
            Self::PeerMisbehaved(_) => "protocol violation",
            Self::PeerIncompatible(Refusal::InvalidCredentials) => "invalid credentials",
            Self::PeerIncompatible(Refusal::RateLimited) => "too many failed logons",
            Self::PeerIncompatible(Refusal::NothingToResume) => "nothing to resume",
            Self::PeerIncompatible(Refusal::ResendWindowExceeded) => "resend window exceeded",
            Self::Timeout(Deadline::DeviceConfig) => "device config timeout",
            Self::Timeout(Deadline::Logon) => "logon timeout",
            Self::Timeout(Deadline::Heartbeat) => "heartbeat timeout",
            Self::Timeout(Deadline::Detached) => "expired",
            Self::LocalClose(LocalClose::Shutdown) => "shutdown",
            Self::LocalClose(LocalClose::Host) => "host",
            Self::Backpressure(Overflow::OutputQueue) => "output overflow",
            Self::Backpressure(Overflow::SendQueue) => "send queue full",
        }
    }

    /// The group: who is at fault.
    pub fn fault(self) -> &'static str {
        match self {
            Self::PeerClosed(_) => "peer closed",
            Self::PeerMisbehaved(_) => "peer misbehaved",
            Self::PeerIncompatible(_) => "peer incompatible",
            Self::Timeout(_) => "timeout",
            Self::LocalClose(_) => "local close",
            Self::Backpressure(_) => "backpressure",
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.fault(), self.as_str())
    }
}

/// Why an application message could not be queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The caller's mistake: the same call will always fail.
    ApiMisuse(Misuse),
    /// The session does not take application messages now: not logged on, ending, or gone
    /// (a stale handle).
    NotActive,
    /// Every journal slot holds a message not yet sent: try later.
    Backpressure,
}

/// A send that can never succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misuse {
    /// Type ids below 100 are not application messages.
    InvalidType,
    /// The padded message is larger than a journal slot.
    TooLarge,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ApiMisuse(Misuse::InvalidType) => {
                "type ids below 100 are not application messages"
            }
            Self::ApiMisuse(Misuse::TooLarge) => "message larger than a journal slot",
            Self::NotActive => "session not active",
            Self::Backpressure => "journal full of unsent messages",
        })
    }
}

impl std::error::Error for SendError {}
