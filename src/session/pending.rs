//! A pending attach (DESIGN.md §2 rule 9): a newer UDP handshake for a deviceUid whose session
//! is attached elsewhere, or detached with a stream to resume. It waits beside the session,
//! touching nothing of it, until it has logged on with valid credentials; only then does the
//! endpoint let it displace the older transport and take the session over
//! (`GatewaySession::adopt_udp`). Until then the attached transport keeps working, so knowing
//! a deviceUid is not enough to knock a device off (issue 9, found 3).
//!
//! It answers like any registration (rules 1, 2 and 8): RegistrationAccept with the session's
//! id and resumed = 1, GetDeviceConfig every second, DeviceConfig within 10 s. Its datagrams
//! carry the session's id and are told apart from the live transport's by their source address
//! (verified by the cookie). It ends with a LoggedOut of its own, numbered 1 like any refused
//! logon, when its credentials are refused, when DeviceConfig or the LogonRequest does not come
//! in time, or when the gateway shuts down; a newer pending attach replaces it silently.
//!
//! Everything here is bounded: one pending attach per session, its own two deadlines.

use core::time::Duration;

use super::SessionConfig;
use super::control::ReasonBuf;
use crate::counters::{Counter, Counters};
use crate::protocol::{Body, Header, Message, Password, Username, write_prefix};
use crate::time::Timestamp;

/// A pending attach's LogonRequest, for the endpoint to authenticate: if it is good, the attach
/// takes the session over.
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingLogon {
    pub(crate) seq: i64,
    pub(crate) username: Username,
    pub(crate) password: Password,
    pub(crate) reset: bool,
}

/// The Get Device Config exchange of the pending attach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    /// GetDeviceConfig to send (the first, or the re-send every second).
    Owed,
    /// Sent; waiting for DeviceConfig until the deadline.
    Sent,
    /// DeviceConfig arrived: waiting for LogonRequest until the deadline.
    Received,
}

/// The correlation id of a pending attach's GetDeviceConfig (its own address tells its
/// answers apart).
const CORRELATION_ID: i64 = 1;

/// One pending attach (see the module docs).
#[derive(Clone, Copy, Debug)]
pub(crate) struct PendingAttach {
    nonce: u64,
    accept_owed: bool,
    config: Config,
    device_config: [u8; 255],
    device_config_len: u8,
    retry_at: Option<Timestamp>,
    deadline: Timestamp,
    /// A LoggedOut is owed: once sent, the attach is over.
    farewell: Option<ReasonBuf>,
    done: bool,
    retry: Duration,
    logon_timeout: Duration,
}

impl PendingAttach {
    /// A pending attach registered now with `nonce`: RegistrationAccept and GetDeviceConfig
    /// are owed.
    pub(crate) fn new(now: Timestamp, nonce: u64, cfg: &SessionConfig) -> Self {
        Self {
            nonce,
            accept_owed: true,
            config: Config::Owed,
            device_config: [0; 255],
            device_config_len: 0,
            retry_at: Some(now + cfg.device_config_retry),
            deadline: now + cfg.device_config_timeout,
            farewell: None,
            done: false,
            retry: cfg.device_config_retry,
            logon_timeout: cfg.logon_timeout,
        }
    }

    /// The nonce of its RegistrationRequest.
    pub(crate) fn nonce(&self) -> u64 {
        self.nonce
    }

    /// A repeated RegistrationRequest (same nonce, same address): the same answer again.
    pub(crate) fn repeat_registration(&mut self) {
        if self.farewell.is_none() {
            self.accept_owed = true;
        }
    }

    /// The device config it sent, once received.
    pub(crate) fn device_config(&self) -> &[u8] {
        &self.device_config[..usize::from(self.device_config_len)]
    }

    /// True once its LoggedOut went out: the endpoint drops it.
    pub(crate) fn is_done(&self) -> bool {
        self.done
    }

    /// One message from its address (the endpoint decoded the whole datagram first).
    pub(crate) fn handle_message(
        &mut self,
        now: Timestamp,
        msg: Message<'_>,
        c: &mut Counters,
    ) -> Option<PendingLogon> {
        if self.farewell.is_some() {
            c.incr(Counter::DropNotAllowed);
            return None;
        }
        match (self.config, msg.body) {
            (Config::Owed | Config::Sent, Body::DeviceConfig { correlation_id, config })
                if correlation_id == CORRELATION_ID =>
            {
                let n = config.len().min(self.device_config.len());
                self.device_config[..n].copy_from_slice(&config[..n]);
                self.device_config_len = n as u8;
                self.config = Config::Received;
                self.retry_at = None;
                self.deadline = now + self.logon_timeout;
                None
            }
            (Config::Received, Body::DeviceConfig { .. }) => {
                // A duplicate answer to a re-sent GetDeviceConfig.
                c.incr(Counter::DropDuplicate);
                None
            }
            (Config::Received, Body::LogonRequest { username, password, reset_seq_num }) => {
                Some(PendingLogon { seq: msg.header.seq, username, password, reset: reset_seq_num })
            }
            _ => {
                c.incr(Counter::DropNotAllowed);
                None
            }
        }
    }

    /// Ends it with LoggedOut(`why`) (refused credentials, a logon the session cannot take, the
    /// gateway shutting down).
    pub(crate) fn refuse(&mut self, why: &[u8]) {
        if self.farewell.is_none() {
            self.farewell = Some(ReasonBuf::new(why));
            self.accept_owed = false;
            self.retry_at = None;
        }
    }

    /// The earliest deadline.
    pub(crate) fn poll_timeout(&self) -> Option<Timestamp> {
        if self.farewell.is_some() {
            return None;
        }
        Some(self.retry_at.map_or(self.deadline, |r| r.min(self.deadline)))
    }

    /// Fires its deadlines; a no-op when called early.
    pub(crate) fn handle_timeout(&mut self, now: Timestamp, c: &mut Counters) {
        if self.farewell.is_some() {
            return;
        }
        if now >= self.deadline {
            match self.config {
                Config::Received => {
                    c.incr(Counter::LogonTimeouts);
                    self.refuse(b"logon timeout");
                }
                Config::Owed | Config::Sent => {
                    c.incr(Counter::DeviceConfigTimeouts);
                    self.refuse(b"eSP0008 could not get device config");
                }
            }
            return;
        }
        if self.retry_at.is_some_and(|r| now >= r) {
            self.config = Config::Owed;
            self.retry_at = Some(now + self.retry);
        }
    }

    /// True if [`Self::poll_transmit`] would produce something.
    pub(crate) fn wants_transmit(&self) -> bool {
        self.accept_owed || self.config == Config::Owed || self.farewell.is_some()
    }

    /// Writes its next datagram into `buf` (prefix included) for the session `session_id`;
    /// `None` if nothing is owed.
    pub(crate) fn poll_transmit(
        &mut self,
        now: Timestamp,
        session_id: u64,
        wall_offset_ns: i64,
        buf: &mut [u8],
        c: &mut Counters,
    ) -> Option<usize> {
        let send_time = (now.as_nanos() as i64).wrapping_add(wall_offset_ns);
        let encode = |buf: &mut [u8], prefix: u64, seq: i64, body: Body<'_>| {
            let start = write_prefix(buf, prefix);
            let header = Header { seq, send_time, ..Header::default() };
            Message { header, body }.encode(&mut buf[start..]).ok().map(|n| start + n)
        };
        let len = if self.accept_owed {
            // Messages 50-55 travel alone, with prefix 0 (DESIGN.md §1.5).
            let len = encode(buf, 0, 0, Body::RegistrationAccept { session_id, resumed: true })?;
            self.accept_owed = false;
            len
        } else if let Some(why) = self.farewell {
            let len = encode(buf, session_id, 1, Body::LoggedOut { reason: why.as_bytes() })?;
            self.done = true;
            c.incr(Counter::LoggedOutSent);
            len
        } else if self.config == Config::Owed {
            let body = Body::GetDeviceConfig { correlation_id: CORRELATION_ID };
            let len = encode(buf, session_id, 0, body)?;
            self.config = Config::Sent;
            c.incr(Counter::DeviceConfigRequestsSent);
            len
        } else {
            return None;
        };
        c.incr(Counter::DatagramsSent);
        c.add(Counter::BytesSent, len as u64);
        Some(len)
    }
}
