//! The device's states and every allowed transition, in one place, like the gateway's
//! (`super::super::state`). A test prints the whole (state × input) table and compares it with
//! `src/session/snapshots/device_transitions.txt`.
//!
//! Inputs that come from the gateway (an accept, a reject, a LogonResponse) are only acted on
//! when the table allows them in the current state: anything else is a late or repeated answer
//! and is ignored. Inputs from the caller (`connect`, `logout`, `transport_lost`) and from the
//! device's own timers go through the same table.

use crate::session::state::{InvalidTransition, Transport};

/// Why a device session ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndReason {
    /// A handshake or logon step got no answer in time.
    HostTimeout,
    /// ConnectionReject with this reason.
    ConnectionRejected(u8),
    /// RegistrationReject with this reason (other than cookie problems, which restart).
    RegistrationRejected(u8),
    /// The gateway sent LoggedOut.
    LoggedOut,
    /// The gateway went silent (TestRequest unanswered).
    Lost,
    /// The transport was closed under us (TCP).
    TransportClosed,
}

/// The device's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceState {
    /// Not connected (initial, or between a lost transport and the next `connect`).
    Idle,
    /// ConnectionRequest sent.
    Connecting,
    /// RegistrationRequest sent.
    Registering,
    /// Registered, waiting for GetDeviceConfig.
    AwaitingConfig,
    /// LogonRequest sent.
    LoggingOn,
    /// Logged on.
    Active,
    /// LogoutRequest sent.
    LoggingOut,
    /// Ended.
    Ended(EndReason),
}

/// An input to the device's state machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceInput {
    /// The caller starts (or restarts) a session over this transport.
    Connect(Transport),
    /// ConnectionAccept for our nonce.
    ConnectionAccepted,
    /// RegistrationReject for a bad or expired cookie: the handshake starts again.
    CookieRefused,
    /// RegistrationAccept.
    Registered,
    /// GetDeviceConfig: answer it and log on.
    ConfigRequested,
    /// LogonResponse.
    LogonAccepted,
    /// The caller logs out (LogoutRequest queued).
    Logout,
    /// The transport went away; state is kept for a later `connect`.
    TransportLost,
    /// The session ends.
    End(EndReason),
}

impl DeviceState {
    /// True once logged on (logging out included): sequenced traffic flows.
    pub fn is_logged_on(&self) -> bool {
        matches!(self, Self::Active | Self::LoggingOut)
    }

    /// True while the handshake or the logon is under way.
    pub fn is_connecting(&self) -> bool {
        matches!(
            self,
            Self::Connecting | Self::Registering | Self::AwaitingConfig | Self::LoggingOn
        )
    }

    /// True when ended.
    pub fn is_ended(&self) -> bool {
        matches!(self, Self::Ended(_))
    }

    /// The one place transitions are decided.
    pub fn on(self, input: DeviceInput) -> Result<Self, InvalidTransition<Self, DeviceInput>> {
        use DeviceInput as I;
        let next = match (self, input) {
            // A (re)start is the caller's to make, from anywhere.
            (_, I::Connect(Transport::Udp)) => Self::Connecting,
            (_, I::Connect(Transport::Tcp)) => Self::LoggingOn,
            (Self::Connecting, I::ConnectionAccepted) => Self::Registering,
            (Self::Registering, I::CookieRefused) => Self::Connecting,
            (Self::Registering, I::Registered) => Self::AwaitingConfig,
            (Self::AwaitingConfig, I::ConfigRequested) => Self::LoggingOn,
            (Self::LoggingOn, I::LogonAccepted) => Self::Active,
            (Self::Active, I::Logout) => Self::LoggingOut,
            // An end is kept for the caller to see; a live session waits for `connect`.
            (Self::Ended(r), I::TransportLost) => Self::Ended(r),
            (_, I::TransportLost) => Self::Idle,
            (s, I::End(EndReason::HostTimeout)) if s.is_connecting() => {
                Self::Ended(EndReason::HostTimeout)
            }
            (Self::Connecting, I::End(r @ EndReason::ConnectionRejected(_))) => Self::Ended(r),
            (Self::Registering, I::End(r @ EndReason::RegistrationRejected(_))) => Self::Ended(r),
            (s, I::End(r @ (EndReason::LoggedOut | EndReason::TransportClosed)))
                if s.is_connecting() || s.is_logged_on() =>
            {
                Self::Ended(r)
            }
            (s, I::End(EndReason::Lost)) if s.is_logged_on() => Self::Ended(EndReason::Lost),
            (current, event) => return Err(InvalidTransition { current, event }),
        };
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATES: &[DeviceState] = &[
        DeviceState::Idle,
        DeviceState::Connecting,
        DeviceState::Registering,
        DeviceState::AwaitingConfig,
        DeviceState::LoggingOn,
        DeviceState::Active,
        DeviceState::LoggingOut,
        DeviceState::Ended(EndReason::LoggedOut),
    ];

    const INPUTS: &[DeviceInput] = &[
        DeviceInput::Connect(Transport::Udp),
        DeviceInput::Connect(Transport::Tcp),
        DeviceInput::ConnectionAccepted,
        DeviceInput::CookieRefused,
        DeviceInput::Registered,
        DeviceInput::ConfigRequested,
        DeviceInput::LogonAccepted,
        DeviceInput::Logout,
        DeviceInput::TransportLost,
        DeviceInput::End(EndReason::HostTimeout),
        DeviceInput::End(EndReason::ConnectionRejected(1)),
        DeviceInput::End(EndReason::RegistrationRejected(3)),
        DeviceInput::End(EndReason::LoggedOut),
        DeviceInput::End(EndReason::Lost),
        DeviceInput::End(EndReason::TransportClosed),
    ];

    /// Every transition is listed in a checked-in snapshot; a change to the table shows up as a
    /// diff. Regenerate with `UPDATE_SNAPSHOTS=1 cargo test device_transition_table`.
    #[test]
    fn device_transition_table_matches_snapshot() {
        crate::session::check_transition_table("device_transitions.txt", STATES, INPUTS, |s, i| {
            s.on(i)
        });
    }
}
