//! The gateway session's states and every allowed transition, in one place (s2n-quic-core
//! `state.rs`). A test prints the whole (state × event) table and compares it with
//! `src/session/snapshots/gateway_transitions.txt`.

use core::fmt;

pub(crate) use super::error::CloseReason;

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
    /// A released slot becomes a new session, with no transport until its first attach.
    Open,
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
            (Self::Closed(_), E::Open) => Self::Detached,
            (current, event) => return Err(InvalidTransition { current, event }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::error::{Deadline, LocalClose};

    const SHUTDOWN: CloseReason = CloseReason::LocalClose(LocalClose::Shutdown);
    const EXPIRED: CloseReason = CloseReason::Timeout(Deadline::Detached);

    const STATES: &[State] = &[
        State::AwaitingConfig,
        State::AwaitingLogon,
        State::Active,
        State::LoggingOut(CloseReason::LOGOUT, AfterLogout::Release),
        State::LoggingOut(SHUTDOWN, AfterLogout::Detach),
        State::Detached,
        State::Closed(CloseReason::LOGOUT),
    ];

    const EVENTS: &[Event] = &[
        Event::Open,
        Event::Attach(Transport::Udp),
        Event::Attach(Transport::Tcp),
        Event::ConfigReceived,
        Event::LogonAccepted,
        Event::Close(CloseReason::LOGOUT, AfterLogout::Release),
        Event::Close(SHUTDOWN, AfterLogout::Detach),
        Event::Flushed,
        Event::TransportLost,
        Event::Release(EXPIRED),
    ];

    /// Every transition is listed in a checked-in snapshot; a change to the table shows up as a
    /// diff. Regenerate with `UPDATE_SNAPSHOTS=1 cargo test transition_table`.
    #[test]
    fn transition_table_matches_snapshot() {
        crate::session::check_transition_table(
            "gateway_transitions.txt",
            STATES,
            EVENTS,
            |s, e| s.on(e),
        );
    }
}
