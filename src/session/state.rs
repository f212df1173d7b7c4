//! The gateway session's states and every allowed transition, in one place (s2n-quic-core
//! `state.rs`). A test prints the whole (state × event) table and compares it with
//! `src/session/snapshots/gateway_transitions.txt`.

use core::fmt;

/// Why a session ended or is ending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The device sent LogoutRequest.
    Logout,
    /// DeviceConfig did not arrive in time (eSP0008).
    DeviceConfigTimeout,
    /// TCP LogonRequest did not arrive in time.
    LogonTimeout,
    /// Credentials refused.
    InvalidCredentials,
    /// Logon with resetSeqNum = 0 but nothing to resume and a first sequence number above 1.
    NothingToResume,
    /// A resend reached below the journal.
    ResendWindowExceeded,
    /// Sequence or framing violation (TCP).
    ProtocolViolation,
    /// The session's bounded output queue overflowed.
    OutputOverflow,
    /// Detached longer than `session.detached_ttl`.
    Expired,
    /// The gateway is shutting down.
    Shutdown,
    /// The transport closed before logon.
    TransportClosed,
}

impl CloseReason {
    /// Short lowercase label for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Logout => "logout",
            Self::DeviceConfigTimeout => "device config timeout",
            Self::LogonTimeout => "logon timeout",
            Self::InvalidCredentials => "invalid credentials",
            Self::NothingToResume => "nothing to resume",
            Self::ResendWindowExceeded => "resend window exceeded",
            Self::ProtocolViolation => "protocol violation",
            Self::OutputOverflow => "output overflow",
            Self::Expired => "expired",
            Self::Shutdown => "shutdown",
            Self::TransportClosed => "transport closed",
        }
    }
}

/// What happens once a LoggedOut has been sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterLogout {
    /// Release the session and its journal.
    Release,
    /// Keep the session detached for resume (liveness loss).
    Detach,
}

/// Which transport an attach is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// UDP: datagrams with a session id prefix, device config phase, receiver-driven resend.
    Udp,
    /// TCP: a stream, LogonRequest first, sequence errors are fatal.
    Tcp,
}

/// The gateway session's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// UDP, registered: GetDeviceConfig every 1 s until DeviceConfig or the 10 s limit.
    AwaitingConfig,
    /// Waiting for LogonRequest.
    AwaitingLogon,
    /// Logged on: heartbeats, sequenced traffic, resends.
    Active,
    /// A LoggedOut is queued; then the session is released or detached.
    LoggingOut(CloseReason, AfterLogout),
    /// Transport lost without logout; kept with its journal for `session.detached_ttl`.
    Detached,
    /// Ended; the slot can be reused.
    Closed(CloseReason),
}

/// An input to the state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A transport attaches (new, resume or displacement).
    Attach(Transport),
    /// DeviceConfig arrived.
    ConfigReceived,
    /// LogonRequest accepted.
    LogonAccepted,
    /// Queue a LoggedOut, then release or detach.
    Close(CloseReason, AfterLogout),
    /// The queued LoggedOut went out (or could not: the transport is gone).
    Flushed,
    /// The transport went away without a LoggedOut.
    TransportLost,
    /// End immediately without a LoggedOut (expiry, or a transport lost before logon).
    Release(CloseReason),
}

/// A transition that a table does not allow: the gateway's by default, the device's
/// (`InvalidTransition<DeviceState, DeviceInput>`) too.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidTransition<S = State, E = Event> {
    /// The state it was attempted from.
    pub current: S,
    /// The event.
    pub event: E,
}

impl<S: fmt::Debug, E: fmt::Debug> fmt::Display for InvalidTransition<S, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid transition: {:?} on {:?}", self.event, self.current)
    }
}

impl State {
    /// True while a transport is attached and the session is not ending.
    pub fn is_attached(&self) -> bool {
        matches!(self, Self::AwaitingConfig | Self::AwaitingLogon | Self::Active)
    }

    /// True once logged on.
    pub fn is_active(&self) -> bool {
        matches!(self, Self::Active)
    }

    /// True when detached.
    pub fn is_detached(&self) -> bool {
        matches!(self, Self::Detached)
    }

    /// True when ended.
    pub fn is_closed(&self) -> bool {
        matches!(self, Self::Closed(_))
    }

    /// The one place transitions are decided.
    pub fn on(self, event: Event) -> Result<Self, InvalidTransition> {
        use Event as E;
        let next = match (self, event) {
            (
                Self::AwaitingConfig | Self::AwaitingLogon | Self::Active | Self::Detached,
                E::Attach(t),
            ) => match t {
                Transport::Udp => Self::AwaitingConfig,
                Transport::Tcp => Self::AwaitingLogon,
            },
            (Self::AwaitingConfig, E::ConfigReceived) => Self::AwaitingLogon,
            (Self::AwaitingLogon, E::LogonAccepted) => Self::Active,
            (Self::AwaitingConfig | Self::AwaitingLogon | Self::Active, E::Close(r, a)) => {
                Self::LoggingOut(r, a)
            }
            (Self::LoggingOut(r, AfterLogout::Release), E::Flushed | E::TransportLost) => {
                Self::Closed(r)
            }
            (Self::LoggingOut(_, AfterLogout::Detach), E::Flushed | E::TransportLost) => {
                Self::Detached
            }
            (Self::Active, E::TransportLost) => Self::Detached,
            (Self::AwaitingLogon | Self::AwaitingConfig, E::TransportLost) => Self::Detached,
            (
                Self::AwaitingConfig | Self::AwaitingLogon | Self::Active | Self::Detached,
                E::Release(r),
            ) => Self::Closed(r),
            (Self::LoggingOut(..), E::Release(r)) => Self::Closed(r),
            (current, event) => return Err(InvalidTransition { current, event }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: &[State] = &[
        State::AwaitingConfig,
        State::AwaitingLogon,
        State::Active,
        State::LoggingOut(CloseReason::Logout, AfterLogout::Release),
        State::LoggingOut(CloseReason::Shutdown, AfterLogout::Detach),
        State::Detached,
        State::Closed(CloseReason::Logout),
    ];

    const EVENTS: &[Event] = &[
        Event::Attach(Transport::Udp),
        Event::Attach(Transport::Tcp),
        Event::ConfigReceived,
        Event::LogonAccepted,
        Event::Close(CloseReason::Logout, AfterLogout::Release),
        Event::Close(CloseReason::Shutdown, AfterLogout::Detach),
        Event::Flushed,
        Event::TransportLost,
        Event::Release(CloseReason::Expired),
    ];

    fn table() -> String {
        let mut out = String::new();
        for s in STATES {
            for e in EVENTS {
                let to = match s.on(*e) {
                    Ok(n) => format!("{n:?}"),
                    Err(_) => "-".to_string(),
                };
                out.push_str(&format!("{s:?} + {e:?} => {to}\n"));
            }
        }
        out
    }

    /// Every transition is listed in a checked-in snapshot; a change to the table shows up as a
    /// diff. Regenerate with `UPDATE_SNAPSHOTS=1 cargo test transition_table`.
    #[test]
    fn transition_table_matches_snapshot() {
        let path =
            concat!(env!("CARGO_MANIFEST_DIR"), "/src/session/snapshots/gateway_transitions.txt");
        let got = table();
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(path, &got).unwrap();
        }
        let want = std::fs::read_to_string(path).expect("snapshot file");
        assert_eq!(got, want, "transition table changed; review and UPDATE_SNAPSHOTS=1");
    }
}
