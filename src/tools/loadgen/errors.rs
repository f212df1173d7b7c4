//! What went wrong, by kind: every device that did not complete what its scenario asked for is
//! one device error, and message-level failures (a lost reply, a refused send) are counted
//! beside them. Counted per thread in a fixed array, merged into the report by name.

use crate::protocol::{ConnectionRejectReason, RegistrationRejectReason};
use crate::session::EndReason;

/// One kind of error. Device-level kinds ([`ErrorKind::is_device`]) are counted at most once
/// per device and incident; the run fails on any of them (churn aside, where sessions end by
/// design and the share rule applies). Message-level kinds fail the run above
/// `max_error_share` of the attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// No ConnectionAccept or RegistrationAccept within the handshake timeout, after every
    /// attempt.
    HandshakeTimeout,
    /// Registered, but no GetDeviceConfig or LogonResponse within the timeout (TCP: no
    /// LogonResponse).
    LogonTimeout,
    /// ConnectionReject(SERVER_FULL).
    ConnectionRejectedServerFull,
    /// ConnectionReject(UNSUPPORTED_VERSION).
    ConnectionRejectedUnsupportedVersion,
    /// ConnectionReject(DRAINING).
    ConnectionRejectedDraining,
    /// ConnectionReject(RATE_LIMITED) until the step's deadline.
    ConnectionRejectedRateLimited,
    /// ConnectionReject(MALFORMED).
    ConnectionRejectedMalformed,
    /// ConnectionReject with an unknown reason.
    ConnectionRejectedOther,
    /// RegistrationReject(SERVER_FULL).
    RegistrationRejectedServerFull,
    /// RegistrationReject(DRAINING).
    RegistrationRejectedDraining,
    /// RegistrationReject with another reason.
    RegistrationRejectedOther,
    /// LoggedOut before the logon completed (bad credentials, eSP0008, draining, ...).
    LogonRefused,
    /// The TCP connection could not be opened.
    TcpConnectFailed,
    /// LoggedOut while logged on, not asked for.
    LoggedOutUnexpectedly,
    /// The gateway went silent (TestRequest unanswered).
    SessionLost,
    /// The TCP connection closed under a logged-on client.
    ConnectionClosed,
    /// With a server list (`--servers`): logged on once, its session ended (its gateway was
    /// drained, killed or went silent), and not logged on again anywhere by the end.
    NeverBack,
    /// Never logged on by the end, with no other failure seen (still queued or connecting).
    NeverLoggedOn,
    /// Echo requests whose reply never came (after the drain at the end).
    LostReplies,
    /// A datagram or stream write the kernel refused.
    SendFailed,
    /// `send_app` refused: the device's retransmit buffer was full.
    SendBackpressure,
    /// A Reject for one of the device's messages.
    MessageRejected,
    /// An echo request fell due while no session of its thread was logged on and was still
    /// waiting for one at the end of the measured window (one that waited and went out shows
    /// the wait in its latency instead).
    NoActiveSession,
    /// Feed events missing or duplicated (resend scenario).
    FeedNotExactlyOnce,
}

impl ErrorKind {
    /// Every kind, in report order.
    pub const ALL: [Self; 24] = [
        Self::HandshakeTimeout,
        Self::LogonTimeout,
        Self::ConnectionRejectedServerFull,
        Self::ConnectionRejectedUnsupportedVersion,
        Self::ConnectionRejectedDraining,
        Self::ConnectionRejectedRateLimited,
        Self::ConnectionRejectedMalformed,
        Self::ConnectionRejectedOther,
        Self::RegistrationRejectedServerFull,
        Self::RegistrationRejectedDraining,
        Self::RegistrationRejectedOther,
        Self::LogonRefused,
        Self::TcpConnectFailed,
        Self::LoggedOutUnexpectedly,
        Self::SessionLost,
        Self::ConnectionClosed,
        Self::NeverBack,
        Self::NeverLoggedOn,
        Self::LostReplies,
        Self::SendFailed,
        Self::SendBackpressure,
        Self::MessageRejected,
        Self::NoActiveSession,
        Self::FeedNotExactlyOnce,
    ];

    /// The name in the report (`errors` in the JSON summary).
    pub fn name(self) -> &'static str {
        match self {
            Self::HandshakeTimeout => "handshake_timeout",
            Self::LogonTimeout => "logon_timeout",
            Self::ConnectionRejectedServerFull => "connection_rejected_server_full",
            Self::ConnectionRejectedUnsupportedVersion => "connection_rejected_unsupported_version",
            Self::ConnectionRejectedDraining => "connection_rejected_draining",
            Self::ConnectionRejectedRateLimited => "connection_rejected_rate_limited",
            Self::ConnectionRejectedMalformed => "connection_rejected_malformed",
            Self::ConnectionRejectedOther => "connection_rejected_other",
            Self::RegistrationRejectedServerFull => "registration_rejected_server_full",
            Self::RegistrationRejectedDraining => "registration_rejected_draining",
            Self::RegistrationRejectedOther => "registration_rejected_other",
            Self::LogonRefused => "logon_refused",
            Self::TcpConnectFailed => "tcp_connect_failed",
            Self::LoggedOutUnexpectedly => "logged_out_unexpectedly",
            Self::SessionLost => "session_lost",
            Self::ConnectionClosed => "connection_closed",
            Self::NeverBack => "never_back",
            Self::NeverLoggedOn => "never_logged_on",
            Self::LostReplies => "lost_replies",
            Self::SendFailed => "send_failed",
            Self::SendBackpressure => "send_backpressure",
            Self::MessageRejected => "message_rejected",
            Self::NoActiveSession => "no_active_session",
            Self::FeedNotExactlyOnce => "feed_not_exactly_once",
        }
    }

    /// True for the kinds that mean a device did not do what its scenario asked.
    pub fn is_device(self) -> bool {
        (self as usize) <= Self::NeverLoggedOn as usize
    }

    /// Index in [`ErrorCounts`].
    fn index(self) -> usize {
        self as usize
    }

    /// Stored in a device record (`0` = none).
    pub(super) fn code(self) -> u8 {
        self as u8 + 1
    }

    /// The kind stored with [`ErrorKind::code`].
    pub(super) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code.checked_sub(1)?)).copied()
    }

    /// The kind of a session that ended before logging on. `registered`: the UDP handshake had
    /// completed (or the transport is TCP), so a timeout is the logon's.
    pub fn of_failed_connect(reason: EndReason, registered: bool) -> Self {
        match reason {
            EndReason::HostTimeout if registered => Self::LogonTimeout,
            EndReason::HostTimeout => Self::HandshakeTimeout,
            EndReason::ConnectionRejected(r) => match r {
                x if x == ConnectionRejectReason::ServerFull as u8 => {
                    Self::ConnectionRejectedServerFull
                }
                x if x == ConnectionRejectReason::UnsupportedVersion as u8 => {
                    Self::ConnectionRejectedUnsupportedVersion
                }
                x if x == ConnectionRejectReason::Draining as u8 => {
                    Self::ConnectionRejectedDraining
                }
                x if x == ConnectionRejectReason::RateLimited as u8 => {
                    Self::ConnectionRejectedRateLimited
                }
                x if x == ConnectionRejectReason::Malformed as u8 => {
                    Self::ConnectionRejectedMalformed
                }
                _ => Self::ConnectionRejectedOther,
            },
            EndReason::RegistrationRejected(r) => match r {
                x if x == RegistrationRejectReason::ServerFull as u8 => {
                    Self::RegistrationRejectedServerFull
                }
                x if x == RegistrationRejectReason::Draining as u8 => {
                    Self::RegistrationRejectedDraining
                }
                _ => Self::RegistrationRejectedOther,
            },
            EndReason::LoggedOut => Self::LogonRefused,
            EndReason::Lost => Self::SessionLost,
            EndReason::TransportClosed => Self::ConnectionClosed,
        }
    }

    /// The kind of a logged-on session that ended without being asked to.
    pub fn of_lost_session(reason: EndReason) -> Self {
        match reason {
            EndReason::LoggedOut => Self::LoggedOutUnexpectedly,
            EndReason::TransportClosed => Self::ConnectionClosed,
            _ => Self::SessionLost,
        }
    }
}

/// Errors counted by kind (one thread's, or merged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts([u64; ErrorKind::ALL.len()]);

impl ErrorCounts {
    /// Counts `n` of `kind`.
    pub fn add(&mut self, kind: ErrorKind, n: u64) {
        self.0[kind.index()] += n;
    }

    /// The count of `kind`.
    pub fn get(&self, kind: ErrorKind) -> u64 {
        self.0[kind.index()]
    }

    /// Adds another thread's counts.
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// Device-level errors.
    pub fn devices(&self) -> u64 {
        ErrorKind::ALL.iter().filter(|k| k.is_device()).map(|&k| self.get(k)).sum()
    }

    /// Message-level errors.
    pub fn messages(&self) -> u64 {
        ErrorKind::ALL.iter().filter(|k| !k.is_device()).map(|&k| self.get(k)).sum()
    }

    /// Every error.
    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    /// The non-zero kinds, by name.
    pub fn by_name(&self) -> std::collections::BTreeMap<String, u64> {
        ErrorKind::ALL
            .iter()
            .filter(|&&k| self.get(k) > 0)
            .map(|&k| (k.name().to_string(), self.get(k)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_a_distinct_name_and_round_trips_its_code() {
        let names: std::collections::BTreeSet<_> =
            ErrorKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        for (i, k) in ErrorKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i, "ALL is in declaration order");
            assert_eq!(ErrorKind::from_code(k.code()), Some(*k));
        }
        assert_eq!(ErrorKind::from_code(0), None);
    }

    #[test]
    fn device_and_message_kinds_split_the_total() {
        let mut c = ErrorCounts::default();
        c.add(ErrorKind::RegistrationRejectedServerFull, 3);
        c.add(ErrorKind::NeverLoggedOn, 1);
        c.add(ErrorKind::LostReplies, 5);
        assert_eq!(c.devices(), 4);
        assert_eq!(c.messages(), 5);
        assert_eq!(c.total(), 9);
        let m = c.by_name();
        assert_eq!(m.len(), 3);
        assert_eq!(m["registration_rejected_server_full"], 3);
    }

    #[test]
    fn ends_map_to_kinds() {
        use ErrorKind as K;
        assert_eq!(K::of_failed_connect(EndReason::HostTimeout, false), K::HandshakeTimeout);
        assert_eq!(K::of_failed_connect(EndReason::HostTimeout, true), K::LogonTimeout);
        assert_eq!(
            K::of_failed_connect(EndReason::RegistrationRejected(3), false),
            K::RegistrationRejectedServerFull
        );
        assert_eq!(
            K::of_failed_connect(EndReason::ConnectionRejected(4), false),
            K::ConnectionRejectedRateLimited
        );
        assert_eq!(K::of_failed_connect(EndReason::LoggedOut, true), K::LogonRefused);
        assert_eq!(K::of_lost_session(EndReason::LoggedOut), K::LoggedOutUnexpectedly);
        assert_eq!(K::of_lost_session(EndReason::Lost), K::SessionLost);
    }
}
