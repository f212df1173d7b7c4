//! The sans-IO session layer (DESIGN.md §2): no syscalls, no clock reads, no threads. Every entry
//! point takes `now`; output goes into caller-owned buffers.
//!
//! - [`Endpoint`]: one shard's worth of gateway sessions (quinn's `Endpoint`): UDP
//!   registration with stateless cookies, TCP logon, a deadline heap (`endpoint/mod.rs`); the
//!   session slab (`endpoint/slab.rs`); indexes by session id, deviceUid and username
//!   (`endpoint/index.rs`); output pacing and TCP flow control (`endpoint/flow.rs`); the
//!   applications and device groups (`endpoint/app.rs`).
//! - [`GatewaySession`]: one session on the gateway side.
//! - [`Device`]: the device side, used by the load generator and the simulations.
//! - [`handshake`]: the stateless handshake port (cookies and their keys, ConnectionAccept).
//! - [`error`]: [`CloseReason`] and [`SendError`], sorted by who is at fault (peer closed,
//!   peer misbehaved, peer incompatible, timeout, local close, backpressure; API misuse).
//! - [`auth`]: the [`Authenticator`] the endpoint asks, the credentials format (pure: the
//!   file is read and written by the caller), and [`auth::LogonCheck`], the check behind the
//!   failed-logon limiter.
//! - [`limit`]: the one set-associative table of every limiter (failed logons per source,
//!   network and username; the acceptor's handshake token bucket).
//! - [`ConnId`] and [`SessionHandle`] are the leaf handles of `crate::ids`, re-exported.
//!
//! # Driving an [`Endpoint`]
//!
//! In each loop pass, in this order:
//! 1. feed input: [`Endpoint::handle_datagram`], [`Endpoint::handle_tcp_logon`],
//!    [`Endpoint::handle_tcp_frame`], [`Endpoint::handle_tcp_error`],
//!    [`Endpoint::handle_tcp_closed`];
//! 2. [`Endpoint::handle_timeout`] once `now` reaches [`Endpoint::poll_timeout`];
//! 3. [`Endpoint::poll_transmit`] until it returns `None`, sending each buffer to its
//!    destination;
//! 4. [`Endpoint::poll_event`] until `None` (close TCP connections after their last bytes).
//!
//! # Decisions where DESIGN.md is silent
//!
//! - A repeated LogonRequest (resend flag) after logon is answered by re-sending the
//!   LogonResponse with the resend flag and its original number: otherwise a lost LogonResponse
//!   could only be recovered as a GapFill and the device would never learn the heartbeat
//!   interval. The device retries its LogonRequest on its own timer rather than through the
//!   retransmit queue, because on a resume that request is not counted.
//! - The gateway acknowledges within `ack_delay` on TCP as well as UDP, so a device's retransmit
//!   buffer drains even when it only sends.
//! - A new ResendRequest replaces one still under way (the device asks again only when it lost
//!   part of the answer).
//! - Messages numbered but not yet sent when a transport is lost, displaced or re-attached are
//!   treated as sent: the device recovers them with a ResendRequest, as after any other loss.
//! - On UDP, a datagram whose source address differs from the session's is dropped and counted:
//!   the session id alone does not authenticate a roaming device, which handshakes again.
//! - A new UDP handshake (new clientNonce) from the very address a session is attached to is the
//!   same device starting over, not a second device: it resumes without a "displaced"
//!   LoggedOut, which would reach the new attach and end it.
//! - Rule 9 (displacement only after logon): a UDP handshake for a deviceUid whose session is
//!   attached at another address, or detached with a stream to resume, becomes a *pending
//!   attach* (`pending.rs`) held beside the session, which it does not touch. It shares the
//!   session's id: its RegistrationAccept says that id with resumed = 1 (rule 8: a roaming
//!   device must get the same id to resume), and its datagrams, which carry that id, are told
//!   apart from the live transport's by their source address (bound by its cookie). It gets
//!   GetDeviceConfig every second and must answer within `udp.device_config_timeout_ms`, then
//!   log on within `tcp.logon_timeout_ms`. Only a LogonRequest that passes the credentials
//!   check, the failure limits and the session's own logon rules (rule 4) lets it take over:
//!   the older transport gets LoggedOut("displaced by a new connection") and the session
//!   resumes (or resets) on the new address exactly as rule 8 says, its device group taken from
//!   the new attach's DeviceConfig. Anything else ends the pending attach alone with its own
//!   LoggedOut (numbered 1, like a refused TCP logon). One pending attach per session: a newer
//!   one replaces it (so a device retrying from its new address is never stuck behind an
//!   attacker's attach; an attacker who keeps registering can delay a roam, never disturb the
//!   attached transport). A TCP LogonRequest is checked the same way before it displaces an
//!   older connection. The session id is therefore not a secret from whoever knows the
//!   deviceUid; a session's datagrams are accepted only from its own address.
//! - A newer attach that arrives while the older one's LoggedOut is queued but not yet sent (same
//!   input batch) first completes that logout: the LoggedOut goes to the old transport, then the
//!   session is released (the newer attach gets a new session) or detached (it resumes).
//! - The failed logon that reaches `auth.max_failures` still gets "invalid credentials"; only
//!   logons refused without a password check get "too many failed logons".
//! - Logon with resetSeqNum = 0 when there is nothing to resume is a new session if its number
//!   is 1, else LoggedOut("nothing to resume") and close.
//! - On TCP, a message that frames correctly but whose body is bad gets Reject and the session
//!   continues; a framing error (protocol id, version, length, padding) gets LoggedOut and close.
//!   On UDP, bad input is dropped and counted, never answered; a datagram larger than
//!   `udp.max_datagram` or with any malformed message in it is dropped whole (rule 12).
//! - A device takes an acknowledgement only up to the highest number it has sent: acknowledging
//!   more must not release messages numbered but not yet sent (they would never be sent).
//! - A device drops a message numbered i64::MAX as malformed: that number has no successor.
#![forbid(unsafe_code)]

use core::time::Duration;

pub mod auth;
mod control;
mod device;
mod endpoint;
pub mod error;
mod gateway;
pub mod handshake;
pub mod limit;
mod pending;
mod state;
mod timer;

pub use auth::{Authenticator, Credentials, OpenLogon};
pub use control::ReasonBuf;
pub use device::servers::{self, MoveReason, ServerCursor};
pub use device::{
    Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceInput, DeviceState, DeviceStats,
    DeviceTransmit, EndReason,
};
pub use endpoint::{
    AppMessage, Application, Endpoint, EndpointConfig, EndpointEvent, GroupPolicy, GroupSettings,
    Link, Outbox, SessionInfo, StateCounts, Transmit,
};
pub use error::{CloseReason, SendError};
pub use gateway::GatewaySession;
pub use state::{AfterLogout, Event, InvalidTransition, State, Transport};
pub use timer::{Timer, TimerTable};

pub use crate::ids::{ConnId, SessionHandle};

use crate::journal::JournalConfig;

/// Per-session limits and timers (gateway side). Every value has a unit and a default.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// H: heartbeat interval announced in LogonResponse (`session.heartbeat_interval_s`, 5 s).
    pub heartbeat_interval: Duration,
    /// LogonRequest must arrive within this: on TCP of the connection, on UDP of DeviceConfig
    /// (`tcp.logon_timeout_ms`, 2 × 5 s = 10 s).
    pub logon_timeout: Duration,
    /// UDP: DeviceConfig must arrive within this of RegistrationAccept
    /// (`udp.device_config_timeout_ms`, 10 s; eSP0008 after).
    pub device_config_timeout: Duration,
    /// UDP: GetDeviceConfig re-send period (`udp.device_config_retry_ms`, 1 s).
    pub device_config_retry: Duration,
    /// Acknowledge processed input within this (`udp.ack_delay_ms`, 20 ms).
    pub ack_delay: Duration,
    /// Keep a detached session this long (`session.detached_ttl_s`, 300 s).
    pub detached_ttl: Duration,
    /// Largest UDP datagram sent, prefix included (`udp.max_datagram`, 1400 bytes).
    pub max_datagram: usize,
    /// Largest TCP transmit (messages are coalesced up to this): it must fit the connection's
    /// send queue outside the room kept for a last LoggedOut (`tcp.send_queue_bytes` − 128,
    /// at most 64 KiB).
    pub max_tcp_write: usize,
    /// Journal sizing (`journal.messages_per_session`, 64; `journal.slot_bytes`, 256).
    pub journal: JournalConfig,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(5),
            logon_timeout: Duration::from_secs(10),
            device_config_timeout: Duration::from_secs(10),
            device_config_retry: Duration::from_secs(1),
            ack_delay: Duration::from_millis(20),
            detached_ttl: Duration::from_secs(300),
            max_datagram: 1400,
            max_tcp_write: 64 * 1024,
            journal: JournalConfig::default(),
        }
    }
}

impl SessionConfig {
    /// Checks the relations between values; returns a description of the first problem.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.heartbeat_interval < Duration::from_secs(1) {
            return Err("session.heartbeat_interval_s must be at least 1");
        }
        if self.heartbeat_interval.as_secs() > i32::MAX as u64 {
            return Err("session.heartbeat_interval_s too large");
        }
        if self.max_datagram < 8 + 128 || self.max_datagram > 65_507 {
            return Err("udp.max_datagram must be within 136..=65507");
        }
        if self.journal.slot_bytes % 8 != 0 || self.journal.slot_bytes < 64 {
            return Err("journal.slot_bytes must be a multiple of 8, at least 64");
        }
        if self.journal.slot_bytes + crate::protocol::DATAGRAM_PREFIX_LEN > self.max_datagram {
            return Err("journal.slot_bytes must fit in udp.max_datagram minus the 8-byte prefix");
        }
        if self.journal.slot_bytes > self.max_tcp_write {
            return Err("tcp.send_queue_bytes must hold journal.slot_bytes plus 128");
        }
        Ok(())
    }
}

/// A message either side of a session sends now: it acknowledges the peer's stream up to
/// `expected_in - 1`, and its `sendTime` is `now` on the wall clock (`now` plus
/// `wall_offset_ns`). Length and type are taken from the body on encode.
fn outgoing<'a>(
    now: crate::time::Timestamp,
    wall_offset_ns: i64,
    expected_in: i64,
    seq: i64,
    flags: u8,
    body: crate::protocol::Body<'a>,
) -> crate::protocol::Message<'a> {
    let header = crate::protocol::Header {
        flags,
        seq,
        last_processed: expected_in - 1,
        send_time: (now.as_nanos() as i64).wrapping_add(wall_offset_ns),
        ..Default::default()
    };
    crate::protocol::Message { header, body }
}

/// Checks a state machine's whole transition table, `state + input => next` (or `-` where the
/// input is refused), against the checked-in snapshot `src/session/snapshots/{snapshot}`: a
/// change to the table shows up as a diff. `UPDATE_SNAPSHOTS=1` rewrites the snapshot.
#[cfg(test)]
fn check_transition_table<S, I, N, E>(
    snapshot: &str,
    states: &[S],
    inputs: &[I],
    on: impl Fn(S, I) -> Result<N, E>,
) where
    S: Copy + core::fmt::Debug,
    I: Copy + core::fmt::Debug,
    N: core::fmt::Debug,
{
    let mut got = String::new();
    for &s in states {
        for &i in inputs {
            let to = match on(s, i) {
                Ok(n) => format!("{n:?}"),
                Err(_) => "-".to_string(),
            };
            got.push_str(&format!("{s:?} + {i:?} => {to}\n"));
        }
    }
    let path = format!("{}/src/session/snapshots/{snapshot}", env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("snapshot file");
    assert_eq!(got, want, "transition table changed; review and UPDATE_SNAPSHOTS=1");
}
