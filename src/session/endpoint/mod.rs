//! One shard's gateway sessions (quinn's `Endpoint`). See the module docs of [`super`] for the
//! call order.
//!
//! This file routes input to sessions and applies what they decide; the rest is split by job:
//! - [`slab`]: the session slots and their generation-checked handles;
//! - [`index`]: sessions by id, deviceUid and username, with one insert and one remove path;
//! - [`flow`]: output: pacing, TCP flow control (parking, stall) and the slow reader's last
//!   word;
//! - [`app`]: application dispatch and device groups;
//! - credentials and the failed-logon limiter are [`super::auth`]'s.

use core::time::Duration;
use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use super::SessionConfig;
use super::auth::{Authenticator, LogonCheck, LogonLimits};
use super::error::{LocalClose, Violation};
use super::gateway::{Deliver, GatewaySession, count_decode_error};
use super::handshake::{CookieError, CookieInput, CookieKeys, verify_cookie};
use super::pending::{PendingAttach, PendingLogon};
use super::state::{CloseReason, State, Transport};
use crate::counters::{Counter, Counters};
use crate::ids::{ConnId, SessionHandle};
use crate::protocol::{
    Body, Datagram, DecodeError, DeviceUid, Header, Message, RegistrationRejectReason, Username,
    write_prefix,
};
use crate::time::Timestamp;

mod app;
mod configs;
mod drain;
mod flow;
mod index;
mod slab;
mod wheel;

pub use app::{AppMessage, Application, GroupPolicy, GroupSettings, Outbox};
use configs::{ConfigRef, Configs};
use index::{Index, Key};
use slab::{NIL, Sessions};
use wheel::Wheel;

/// Where a session's output goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// Nothing attached.
    None,
    /// A UDP peer address (sent from the shard's session port).
    Udp(SocketAddr),
    /// A TCP connection.
    Tcp(ConnId),
}

/// One buffer to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct Transmit {
    /// Destination.
    pub dest: Link,
    /// Bytes written at the start of the caller's buffer.
    pub len: usize,
    /// The connection's last message (the LoggedOut to a slow reader): the driver queues it in
    /// the room its send queue keeps for it and closes the connection after it.
    pub last: bool,
}

/// Upper bound of a padded session (non-journaled) message: LoggedOut and Reject carry at most
/// 64 bytes of text (`ReasonBuf`), 33 + 64 bytes framed and padded to 104.
const MAX_SESSION_MESSAGE: usize = 128;

/// Something the driver must do besides sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointEvent {
    /// Close this TCP connection once the bytes already handed over are written.
    CloseConnection(ConnId),
    /// A session logged on.
    LoggedOn(SessionHandle),
    /// A session ended and its slot was released.
    Ended(SessionHandle, CloseReason),
    /// A session finished serving a ResendRequest; how long it took.
    ResendServed(Duration),
    /// This connection's reader is too slow: its session says LoggedOut("send queue full")
    /// next ([`Transmit::last`]) and is kept detached for resume.
    SlowReader(ConnId),
}

/// Limits of one endpoint (one shard).
#[derive(Clone, Copy, Debug)]
pub struct EndpointConfig {
    /// Per-session settings.
    pub session: SessionConfig,
    /// Sessions per shard, detached ones included (`gateway.max_sessions_per_shard`, default 4096).
    pub max_sessions: usize,
    /// TCP connection ids are below this (`tcp.max_connections_per_shard`, default 4096).
    pub max_connections: usize,
    /// Newer UDP attaches held pending beside their session at once (DESIGN.md §2 rule 9; a
    /// side table, 424 bytes a place; default 4096, at most `max_sessions`). When all are
    /// taken a further one is dropped unanswered and counted; the device repeats its request.
    pub max_pending_attaches: usize,
    /// Bytes of device config strings kept per session on average, reserved for the shard
    /// (`gateway.device_config_bytes`, default 128; the seed's example config is 116 bytes).
    /// A string that finds no room is not kept, and counted.
    pub device_config_bytes: usize,
    /// This shard's index (bound into cookies).
    pub shard: u16,
    /// Stateless replies waiting to be sent (`gateway.reply_queue`, default 1024).
    pub reply_queue: usize,
    /// Buffers one session may produce before others get a turn (`session.burst`, 8):
    /// paces large resends so one session cannot starve the rest.
    pub session_burst: u32,
    /// Failed logons from one source (IPv4 address, IPv6 /64) before it is refused
    /// (`auth.max_failures`, 5).
    pub max_logon_failures: u32,
    /// Failed logons from one IPv4 /24 before all of it is refused
    /// (`auth.max_network_failures`, 20; above `max_logon_failures`).
    pub max_network_failures: u32,
    /// Failed logons at one username before sources that have failed are refused for it
    /// (`auth.max_username_failures`, 10).
    pub max_username_failures: u32,
    /// Window over which failed logons are counted, and every limit holds once hit
    /// (`auth.failure_window_s`, 60 s).
    pub logon_failure_window: Duration,
    /// Entries in each failed-logon limiter table (sources, networks, usernames; 4096).
    pub limiter_entries: usize,
}

impl EndpointConfig {
    /// The failed-logon limits.
    pub fn logon_limits(&self) -> LogonLimits {
        LogonLimits {
            per_source: self.max_logon_failures,
            per_network: self.max_network_failures,
            per_username: self.max_username_failures,
            window: self.logon_failure_window,
            entries: self.limiter_entries,
        }
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            max_sessions: 4096,
            max_connections: 4096,
            max_pending_attaches: 4096,
            device_config_bytes: 128,
            shard: 0,
            reply_queue: 1024,
            session_burst: 8,
            max_logon_failures: 5,
            max_network_failures: 20,
            max_username_failures: 10,
            logon_failure_window: Duration::from_secs(60),
            limiter_entries: crate::session::auth::LIMITER_ENTRIES,
        }
    }
}

/// A row of the connections list.
#[derive(Clone, Copy, Debug)]
pub struct SessionInfo {
    /// Handle.
    pub handle: SessionHandle,
    /// Session id.
    pub id: u64,
    /// deviceUid (UDP).
    pub device_uid: DeviceUid,
    /// Username of the last logon.
    pub username: Username,
    /// Where it is attached.
    pub link: Link,
    /// State.
    pub state: State,
    /// Next inbound number expected.
    pub expected_in: i64,
    /// Next outbound number.
    pub next_out: i64,
    /// Last time anything was heard.
    pub last_heard: Timestamp,
}

/// Sessions in use by state ([`Endpoint::state_counts`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StateCounts {
    /// UDP, waiting for DeviceConfig.
    pub awaiting_config: u32,
    /// Waiting for LogonRequest.
    pub awaiting_logon: u32,
    /// Logged on.
    pub active: u32,
    /// A LoggedOut queued.
    pub logging_out: u32,
    /// Kept for resume.
    pub detached: u32,
}

/// A stateless reply (registration rejects, refused TCP logons, a displaced transport's
/// LoggedOut), sent before any session output.
struct Reply {
    dest: Link,
    len: u16,
    buf: [u8; 128],
}

/// One shard's gateway: the session slab and everything that is not a single session.
pub struct Endpoint {
    cfg: EndpointConfig,
    sessions: Sessions,
    index: Index,
    /// The session of each TCP connection id.
    conns: Vec<Option<u32>>,
    /// Each session's next deadline.
    wheel: Wheel,
    /// The device config strings.
    configs: Configs,
    replies: VecDeque<Reply>,
    /// Sessions parked for want of room on their connection (see [`flow`]).
    blocked: Vec<u32>,
    events: VecDeque<EndpointEvent>,
    /// Connections with a `CloseConnection` queued and no `handle_tcp_closed` or new logon
    /// since: one close per connection, however many frames arrive after it (each pushed one,
    /// and the event queue grew past its start-up capacity).
    closing: Vec<bool>,
    logons: LogonCheck,
    keys: CookieKeys,
    apps: Vec<Box<dyn Application>>,
    groups: Option<GroupPolicy>,
    draining: bool,
    /// An operator drain (DESIGN.md §4; [`drain`]).
    drain: drain::Drain,
    wall_offset_ns: i64,
    /// Per session slot, the device's last `lastProcessedSeqNum`: kept beside the slab, and
    /// only when [`Endpoint::track_acks`] asked for it (hosts).
    peer_acked: Vec<i64>,
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("shard", &self.cfg.shard)
            .field("sessions", &self.index.len())
            .finish()
    }
}

impl Endpoint {
    /// Allocates everything the shard will use: `max_sessions` sessions with their journals,
    /// indexes, queues. `id_key` seeds session ids (random in the runtime, fixed in simulations).
    pub fn new(
        cfg: EndpointConfig,
        keys: CookieKeys,
        id_key: [u8; 32],
        auth: Box<dyn Authenticator>,
        app: Box<dyn Application>,
    ) -> Self {
        let n = cfg.max_sessions;
        Self {
            cfg,
            sessions: Sessions::new(n, cfg.max_pending_attaches.min(n), cfg.session),
            index: Index::new(n, id_key, cfg.shard),
            conns: vec![None; cfg.max_connections],
            wheel: Wheel::new(n),
            configs: Configs::new(n.saturating_mul(cfg.device_config_bytes)),
            replies: VecDeque::with_capacity(cfg.reply_queue),
            blocked: Vec::with_capacity(n),
            events: VecDeque::with_capacity(4 * n + cfg.max_connections + 16),
            closing: vec![false; cfg.max_connections],
            logons: LogonCheck::new(auth, cfg.logon_limits(), limiter_seed(&id_key)),
            keys,
            apps: vec![app],
            groups: None,
            draining: false,
            drain: drain::Drain::default(),
            wall_offset_ns: 0,
            peer_acked: Vec::new(),
        }
    }

    /// Keeps each session's acknowledgement from its device, for [`Endpoint::app_window`]
    /// (host bridging; 8 bytes per session slot, beside the slab).
    pub fn track_acks(&mut self) {
        self.peer_acked = vec![0; self.cfg.max_sessions];
    }

    /// Application messages `session` takes now before one would push a message its device
    /// has not acknowledged out of its journal (or be refused); 0 for a gone session. Without
    /// [`Endpoint::track_acks`], every message counts as acknowledged (the journal's depth).
    pub fn app_window(&self, session: SessionHandle) -> usize {
        let Some(slot) = self.sessions.get(session) else { return 0 };
        let acked = match self.peer_acked.get(session.index() as usize) {
            Some(&a) => a,
            None => slot.session.next_out(),
        };
        slot.session.app_window(acked)
    }

    /// Bytes the session slab reserves (journals included), for the start-up report.
    pub fn reserved_bytes(cfg: &EndpointConfig) -> usize {
        Self::journal_bytes(cfg)
            + cfg.max_sessions * Self::RECORD_BYTES
            + cfg.max_sessions.saturating_mul(cfg.device_config_bytes)
    }

    /// Bytes the journals reserve (data and per-slot metadata), for the start-up report.
    pub fn journal_bytes(cfg: &EndpointConfig) -> usize {
        cfg.max_sessions * cfg.session.journal.bytes_per_session()
    }

    /// Bytes of each session's record besides its journal: its slot in the slab (the session
    /// and what the endpoint keeps about it) and its timer wheel entry.
    pub const RECORD_BYTES: usize = Sessions::SLOT_BYTES + Wheel::ENTRY_BYTES;

    /// Sets the offset from `now` to Unix-epoch nanoseconds, for `sendTime`.
    pub fn set_wall_offset(&mut self, ns: i64) {
        self.wall_offset_ns = ns;
    }

    /// Rotates the cookie secret: the old current key stays valid as the previous one.
    pub fn rotate_keys(&mut self, keys: CookieKeys) {
        self.keys = keys;
    }

    /// The shard's counters.
    pub fn counters(&self) -> &Counters {
        &self.sessions.counters
    }

    /// Sessions in use (attached, logging out or detached).
    pub fn session_count(&self) -> usize {
        self.sessions.in_use()
    }

    /// The connections list: every session in use, walking the whole slab. For tests and
    /// tools; the shard publishes [`Self::sessions_page`] instead.
    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        (0..self.sessions.slots.len() as u32).filter_map(|i| self.info(i))
    }

    /// One page of the connections list, bounded: the rows of the sessions in use among slots
    /// `from..`, at most `max_rows` of them and at most `max_slots` slots looked at, pushed
    /// onto `out` (within its capacity). Returns the slot to continue from (0 once past the
    /// end). The shard publishes one page per snapshot, so the list costs the same per cycle
    /// at any fleet size, and a full pass takes `max_sessions / max_slots` snapshots.
    pub fn sessions_page(
        &self,
        from: u32,
        max_rows: usize,
        max_slots: usize,
        out: &mut Vec<SessionInfo>,
    ) -> u32 {
        let n = self.sessions.slots.len() as u32;
        let mut i = from.min(n);
        let end = i.saturating_add(max_slots as u32).min(n);
        let mut rows = 0;
        while i < end && rows < max_rows && out.len() < out.capacity() {
            if let Some(info) = self.info(i) {
                out.push(info);
                rows += 1;
            }
            i += 1;
        }
        if i >= n { 0 } else { i }
    }

    /// The row of slot `i`, if in use.
    fn info(&self, i: u32) -> Option<SessionInfo> {
        let s = &self.sessions.slots[i as usize];
        s.in_use.then(|| SessionInfo {
            handle: SessionHandle::new(i, s.generation),
            id: s.session.id(),
            device_uid: *s.session.device_uid(),
            username: *s.session.username(),
            link: s.link,
            state: s.session.state(),
            expected_in: s.session.expected_in(),
            next_out: s.session.next_out(),
            last_heard: s.session.last_heard(),
        })
    }

    /// How many sessions in use are in each state, kept as they change (no walk).
    pub fn state_counts(&self) -> StateCounts {
        let g = self.sessions.gauges;
        StateCounts {
            awaiting_config: g[0],
            awaiting_logon: g[1],
            active: g[2],
            logging_out: g[3],
            detached: g[4],
        }
    }

    /// The device config string a session's device sent (empty if none, or not kept).
    pub fn device_config(&self, h: SessionHandle) -> Option<&[u8]> {
        self.sessions.get(h).map(|s| self.configs.get(s.config))
    }

    /// Where a session's output goes.
    pub fn link(&self, h: SessionHandle) -> Option<Link> {
        self.sessions.get(h).map(|s| s.link)
    }

    /// The session behind a handle.
    pub fn session(&self, h: SessionHandle) -> Option<&GatewaySession> {
        self.sessions.get(h).map(|s| &s.session)
    }

    /// Finds a session by id.
    pub fn handle_by_id(&self, id: u64) -> Option<SessionHandle> {
        self.index.by_id(id).map(|i| self.sessions.handle(i))
    }

    /// A datagram arrived on this shard's session port. DESIGN.md §2 rule 12: one larger than
    /// `udp.max_datagram` (the backend may deliver up to its buffer's size), or with any
    /// malformed message in it (garbage after valid messages included), is dropped whole, none
    /// of its messages acted on, and counted by reason.
    pub fn handle_datagram(&mut self, now: Timestamp, from: SocketAddr, data: &[u8]) {
        let c = &mut self.sessions.counters;
        c.incr(Counter::DatagramsReceived);
        if data.len() > self.cfg.session.max_datagram {
            c.add(Counter::BytesReceived, data.len() as u64);
            c.incr(Counter::DropOversized);
            return;
        }
        let dg = match Datagram::parse(data) {
            Ok(dg) => dg,
            Err(e) => {
                c.add(Counter::BytesReceived, data.len() as u64);
                count_decode_error(e, c);
                return;
            }
        };
        if dg.session_id == 0 {
            c.add(Counter::BytesReceived, data.len() as u64);
            self.handle_registration(now, from, dg);
            return;
        }
        let Some(index) = self.index.by_id(dg.session_id) else {
            c.incr(Counter::DropUnknownSession);
            return;
        };
        let pending = self.sessions.pending(index).is_some_and(|(addr, _)| *addr == from);
        let slot = &self.sessions.slots[index as usize];
        let live = slot.link == Link::Udp(from) && slot.session.transport() == Transport::Udp;
        let c = &mut self.sessions.counters;
        if !pending && !live {
            c.incr(Counter::DropWrongAddress);
            return;
        }
        c.add(Counter::BytesReceived, data.len() as u64);
        let msgs = match Decoded::new(dg) {
            Ok(msgs) => msgs,
            Err(e) => {
                count_decode_error(e, c);
                return;
            }
        };
        if pending {
            self.pending_datagram(now, index, from, &msgs);
            self.settle(now, index);
            return;
        }
        for msg in msgs.iter() {
            self.session_message(now, index, msg, from.ip());
            if !self.sessions.slots[index as usize].in_use {
                break;
            }
        }
        self.settle(now, index);
    }

    fn handle_registration(&mut self, now: Timestamp, from: SocketAddr, dg: Datagram<'_>) {
        let c = &mut self.sessions.counters;
        let mut frames = dg.frames();
        let (Some(Ok(frame)), None) = (frames.next(), frames.next()) else {
            c.incr(Counter::DropBadPrefix);
            return;
        };
        let msg = match Message::decode_frame(frame) {
            Ok(m) => m,
            Err(e) => {
                count_decode_error(e, c);
                return;
            }
        };
        let Body::RegistrationRequest { device_uid, client_nonce, cookie } = msg.body else {
            c.incr(Counter::DropBadPrefix);
            return;
        };
        let input = CookieInput {
            peer: from,
            device_uid: &device_uid,
            client_nonce,
            shard: self.cfg.shard,
        };
        match verify_cookie(&self.keys, now, &cookie, &input) {
            Ok(()) => {}
            Err(CookieError::Bad) => {
                c.incr(Counter::HandshakesBadCookie);
                self.registration_reject(from, RegistrationRejectReason::BadCookie, b"bad cookie");
                return;
            }
            Err(CookieError::Expired) => {
                c.incr(Counter::HandshakesCookieExpired);
                self.registration_reject(
                    from,
                    RegistrationRejectReason::CookieExpired,
                    b"cookie expired",
                );
                return;
            }
        }
        if self.draining || self.drain.on {
            c.incr(Counter::HandshakesDraining);
            self.registration_reject(from, RegistrationRejectReason::Draining, b"gateway draining");
            return;
        }
        if let Some(index) = self.index.by_uid(&device_uid) {
            self.finish_logout(now, index);
        }
        let c = &mut self.sessions.counters;
        let index = match self.index.by_uid(&device_uid) {
            Some(index) => {
                let slot = &mut self.sessions.slots[index as usize];
                let here = slot.session.state().is_attached() && slot.link == Link::Udp(from);
                if !here {
                    // Attached elsewhere, or detached with a stream to resume: the newer attach
                    // waits beside the session until it logs on (DESIGN.md §2 rule 9).
                    self.pend(now, index, from, client_nonce);
                    return;
                }
                if slot.session.reg_nonce() == Some(client_nonce) {
                    // Idempotent: same answer, same session id, state untouched.
                    c.incr(Counter::HandshakesRepeated);
                    slot.session.repeat_registration();
                    self.sessions.mark_dirty(index);
                    return;
                }
                // A new handshake from the very address the session is attached to is the same
                // device starting over (its earlier handshake or logon gave up; the cookie
                // proves the address): there is no older transport to say goodbye to, and a
                // LoggedOut sent to that address would reach the new attach and end it.
                c.incr(Counter::HandshakesResumed);
                c.incr(Counter::SessionsResumed);
                slot.session.attach_udp(now, device_uid, client_nonce, true);
                index
            }
            None => {
                let Some(index) = self.allocate() else {
                    self.sessions.counters.incr(Counter::HandshakesServerFull);
                    self.registration_reject(
                        from,
                        RegistrationRejectReason::ServerFull,
                        b"server full",
                    );
                    return;
                };
                self.index.insert(index, Key::Uid(device_uid));
                self.sessions.counters.incr(Counter::HandshakesRegistered);
                self.sessions.slots[index as usize].session.attach_udp(
                    now,
                    device_uid,
                    client_nonce,
                    false,
                );
                index
            }
        };
        self.sessions.slots[index as usize].link = Link::Udp(from);
        self.settle(now, index);
    }

    /// Holds a newer UDP attach from `from` beside the session in slot `index` (DESIGN.md §2
    /// rule 9): it gets its own RegistrationAccept (this session's id, resumed = 1) and
    /// GetDeviceConfig, and takes the session over only once it has logged on. A repeat (same
    /// nonce, same address) gets the same answer; any other newer attach replaces it.
    fn pend(&mut self, now: Timestamp, index: u32, from: SocketAddr, nonce: u64) {
        let fresh = (from, PendingAttach::new(now, nonce, &self.cfg.session));
        match self.sessions.pending_mut(index) {
            (Some((addr, p)), c) if *addr == from && p.nonce() == nonce => {
                c.incr(Counter::HandshakesRepeated);
                p.repeat_registration();
            }
            (Some(other), c) => {
                c.incr(Counter::AttachesPendingDropped);
                c.incr(Counter::AttachesPending);
                *other = fresh;
            }
            (None, _) => {
                if !self.sessions.set_pending(index, fresh) {
                    // The pool is full: dropped unanswered, the device repeats its request.
                    self.sessions.counters.incr(Counter::AttachesPendingFull);
                    return;
                }
                self.sessions.counters.incr(Counter::AttachesPending);
            }
        }
        self.settle(now, index);
    }

    /// A datagram from the address of slot `index`'s pending attach.
    fn pending_datagram(
        &mut self,
        now: Timestamp,
        index: u32,
        from: SocketAddr,
        msgs: &Decoded<'_>,
    ) {
        for msg in msgs.iter() {
            let (Some((_, p)), c) = self.sessions.pending_mut(index) else { return };
            if let Some(logon) = p.handle_message(now, msg, c) {
                self.pending_logon(now, index, from, logon);
                return;
            }
        }
    }

    /// The pending attach of slot `index` sent a LogonRequest. Refused (credentials, limits, or
    /// a logon the session cannot take): it gets its LoggedOut and the session is untouched.
    /// Accepted: now, and only now, it displaces the older transport and takes the session
    /// over (DESIGN.md §2 rule 9).
    fn pending_logon(&mut self, now: Timestamp, index: u32, from: SocketAddr, logon: PendingLogon) {
        let PendingLogon { seq, username, password, reset } = logon;
        let c = &mut self.sessions.counters;
        let checked = self.logons.check(now, from.ip(), &username, &password, c);
        let slot = &mut self.sessions.slots[index as usize];
        let refused = match checked {
            Err(refusal) => Some(refusal.text()),
            Ok(()) => slot.session.logon_refusal(seq, reset).map(|(_, why)| why),
        };
        if let Some(why) = refused {
            if let (Some((_, p)), _) = self.sessions.pending_mut(index) {
                p.refuse(why);
            }
            return;
        }
        // Logged on: a logout of the older transport still queued completes first.
        self.finish_logout(now, index);
        if !self.sessions.slots[index as usize].in_use {
            return; // that logout released the session (and dropped the attach)
        }
        let Some((addr, p)) = self.sessions.take_pending(index) else { return };
        if self.sessions.slots[index as usize].session.state().is_attached() {
            self.displace(now, index);
        }
        let c = &mut self.sessions.counters;
        c.incr(Counter::HandshakesResumed);
        c.incr(Counter::SessionsResumed);
        let slot = &mut self.sessions.slots[index as usize];
        slot.session.adopt_udp(now, p.nonce());
        slot.link = Link::Udp(addr);
        self.configured(index, p.device_config());
        let default = self.cfg.session.heartbeat_interval;
        let slot = &mut self.sessions.slots[index as usize];
        let hb = slot.session.heartbeat_for_logon(default);
        slot.session.accept_logon(now, seq, username, reset, hb, &mut self.sessions.counters);
        self.logged_on(now, index);
    }

    fn registration_reject(
        &mut self,
        to: SocketAddr,
        reason: RegistrationRejectReason,
        details: &[u8],
    ) {
        let body = Body::RegistrationReject { reason: reason as u8, details };
        self.push_reply(Link::Udp(to), 0, body);
    }

    /// Queues a stateless reply (prefix 0 on UDP).
    fn push_reply(&mut self, dest: Link, seq: i64, body: Body<'_>) {
        let mut r = Reply { dest, len: 0, buf: [0; 128] };
        let start = match dest {
            Link::Udp(_) => write_prefix(&mut r.buf, 0),
            _ => 0,
        };
        let msg = Message { header: Header { seq, ..Header::default() }, body };
        if let Ok(n) = msg.encode(&mut r.buf[start..]) {
            r.len = (start + n) as u16;
            self.queue_reply(r);
        }
    }

    /// Queues a reply made elsewhere (nothing when it is empty or has nowhere to go); counts a
    /// full queue.
    fn queue_reply(&mut self, r: Reply) {
        if r.len == 0 || r.dest == Link::None {
            return;
        }
        if self.replies.len() >= self.cfg.reply_queue {
            self.sessions.counters.incr(Counter::ReplyQueueFull);
            return;
        }
        self.replies.push_back(r);
    }

    /// Says goodbye to the transport a session is attached to, before a newer attach
    /// (DESIGN.md §2 rule 9).
    fn displace(&mut self, now: Timestamp, index: u32) {
        let slot = &mut self.sessions.slots[index as usize];
        let old = slot.link;
        let mut r = Reply { dest: old, len: 0, buf: [0; 128] };
        let n = slot.session.farewell(
            now,
            b"displaced by a new connection",
            &mut r.buf,
            &mut self.sessions.counters,
        );
        self.sessions.counters.incr(Counter::SessionsDisplaced);
        r.len = n as u16;
        self.queue_reply(r);
        self.unlink(index);
    }

    /// A newer attach arrived for a session whose LoggedOut is queued but not yet sent (both in
    /// the same input batch). Attaching to a session in that state is not a transition the
    /// table allows: the queued LoggedOut was dropped and the session stayed logging out for
    /// good, refusing every later attach for that deviceUid or username. Instead, send the
    /// LoggedOut to the old transport now and complete the logout (DESIGN.md §2 rules 9 and
    /// 10); the new attach then finds the session released (a new one is made) or detached
    /// (it resumes).
    fn finish_logout(&mut self, now: Timestamp, index: u32) {
        let slot = &mut self.sessions.slots[index as usize];
        if !matches!(slot.session.state(), State::LoggingOut(..)) {
            return;
        }
        let old = slot.link;
        let mut r = Reply { dest: old, len: 0, buf: [0; 128] };
        let n = slot.session.finish_logout(now, &mut r.buf, &mut self.sessions.counters);
        r.len = n as u16;
        self.queue_reply(r);
        self.settle(now, index);
    }

    /// Detaches slot `index` from its transport: a TCP connection is closed (once the bytes
    /// already handed over are written) and forgets the session. The one place a session lets
    /// go of its connection: displaced, detached, or released.
    fn unlink(&mut self, index: u32) {
        let slot = &mut self.sessions.slots[index as usize];
        if let Link::Tcp(conn) = slot.link {
            close_connection(&mut self.events, &mut self.closing, conn);
            if let Some(c) = self.conns.get_mut(conn.0 as usize) {
                *c = None;
            }
        }
        slot.link = Link::None;
    }

    /// The first frame of a TCP connection, read by the acceptor: it must be a LogonRequest.
    pub fn handle_tcp_logon(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        peer: SocketAddr,
        frame: &[u8],
    ) {
        self.sessions.counters.add(Counter::BytesReceived, frame.len() as u64);
        if conn.0 as usize >= self.conns.len() {
            close_connection(&mut self.events, &mut self.closing, conn);
            return;
        }
        self.closing[conn.0 as usize] = false;
        let msg = match Message::decode_frame(frame) {
            Ok(m) => m,
            Err(e) => {
                count_decode_error(e, &mut self.sessions.counters);
                self.sessions.counters.incr(Counter::ProtocolViolations);
                self.refuse_tcp(conn, e.as_str().as_bytes());
                return;
            }
        };
        let Body::LogonRequest { username, password, reset_seq_num } = msg.body else {
            self.sessions.counters.incr(Counter::ProtocolViolations);
            self.refuse_tcp(conn, b"logon required");
            return;
        };
        if self.draining {
            self.sessions.counters.incr(Counter::HandshakesDraining);
            self.refuse_tcp(conn, b"gateway shutting down");
            return;
        }
        if self.drain.on {
            self.sessions.counters.incr(Counter::HandshakesDraining);
            self.refuse_tcp(conn, drain::TCP_REFUSAL);
            return;
        }
        let c = &mut self.sessions.counters;
        if let Err(refusal) = self.logons.check(now, peer.ip(), &username, &password, c) {
            self.refuse_tcp(conn, refusal.text());
            return;
        }
        if let Some(index) = self.index.by_user(&username) {
            self.finish_logout(now, index);
        }
        let index = match self.index.by_user(&username) {
            Some(index) => {
                let session = &self.sessions.slots[index as usize].session;
                if let Some((_, why)) = session.logon_refusal(msg.header.seq, reset_seq_num) {
                    // Not logged on: it displaces nothing (DESIGN.md §2 rule 9).
                    self.sessions.counters.incr(Counter::ProtocolViolations);
                    self.refuse_tcp(conn, why);
                    return;
                }
                if session.state().is_attached() {
                    self.displace(now, index);
                } else {
                    self.sessions.counters.incr(Counter::SessionsResumed);
                }
                index
            }
            None => {
                let Some(index) = self.allocate() else {
                    self.sessions.counters.incr(Counter::HandshakesServerFull);
                    self.refuse_tcp(conn, b"server full");
                    return;
                };
                self.index.insert(index, Key::User(username));
                index
            }
        };
        self.conns[conn.0 as usize] = Some(index);
        let hb = self.cfg.session.heartbeat_interval;
        let slot = &mut self.sessions.slots[index as usize];
        slot.link = Link::Tcp(conn);
        slot.stalled = false;
        slot.session.attach_tcp(now);
        slot.session.accept_logon(
            now,
            msg.header.seq,
            username,
            reset_seq_num,
            hb,
            &mut self.sessions.counters,
        );
        self.logged_on(now, index);
        self.settle(now, index);
    }

    fn refuse_tcp(&mut self, conn: ConnId, why: &[u8]) {
        self.sessions.counters.incr(Counter::LoggedOutSent);
        self.push_reply(Link::Tcp(conn), 1, Body::LoggedOut { reason: why });
        close_connection(&mut self.events, &mut self.closing, conn);
    }

    /// A later frame on a TCP connection (split off the stream by the driver's deframer).
    pub fn handle_tcp_frame(&mut self, now: Timestamp, conn: ConnId, frame: &[u8]) {
        let Some(index) = self.conns.get(conn.0 as usize).copied().flatten() else {
            close_connection(&mut self.events, &mut self.closing, conn);
            return;
        };
        // A TCP session logs on with its first frame (`handle_tcp_logon`, which has the peer
        // address); no later frame reaches the credentials check.
        self.sessions.counters.add(Counter::BytesReceived, frame.len() as u64);
        match Message::decode_frame(frame) {
            Ok(msg) => self.session_message(now, index, msg, IpAddr::from([0, 0, 0, 0])),
            Err(e) => {
                let slot = &mut self.sessions.slots[index as usize];
                slot.session.handle_malformed(now, frame, e, &mut self.sessions.counters);
            }
        }
        self.settle(now, index);
    }

    /// The driver's deframer failed on this connection (framing error): LoggedOut and close.
    pub fn handle_tcp_error(&mut self, now: Timestamp, conn: ConnId, e: DecodeError) {
        count_decode_error(e, &mut self.sessions.counters);
        self.sessions.counters.incr(Counter::ProtocolViolations);
        let Some(index) = self.conns.get(conn.0 as usize).copied().flatten() else {
            close_connection(&mut self.events, &mut self.closing, conn);
            return;
        };
        let c = &mut self.sessions.counters;
        let reason = CloseReason::PeerMisbehaved(Violation::Malformed(e));
        self.sessions.slots[index as usize].session.close(now, reason, e.as_str().as_bytes(), c);
        self.settle(now, index);
    }

    /// The TCP connection closed (peer closed, error, or after our close).
    pub fn handle_tcp_closed(&mut self, now: Timestamp, conn: ConnId) {
        if let Some(c) = self.closing.get_mut(conn.0 as usize) {
            *c = false;
        }
        let Some(index) = self.conns.get_mut(conn.0 as usize).and_then(Option::take) else {
            return;
        };
        let slot = &mut self.sessions.slots[index as usize];
        if slot.link == Link::Tcp(conn) {
            slot.link = Link::None;
            slot.session.transport_lost(now);
            if slot.session.state().is_detached() {
                self.sessions.counters.incr(Counter::SessionsDetached);
            }
        }
        self.settle(now, index);
    }

    /// One message for the session in slot `index`, from `ip`.
    fn session_message(&mut self, now: Timestamp, index: u32, msg: Message<'_>, ip: IpAddr) {
        if let Some(a) = self.peer_acked.get_mut(index as usize) {
            *a = msg.header.last_processed;
        }
        let slot = &mut self.sessions.slots[index as usize];
        let Some(deliver) = slot.session.handle_message(now, msg, &mut self.sessions.counters)
        else {
            return;
        };
        match deliver {
            Deliver::App { type_id, body } => self.deliver_app(now, index, type_id, body),
            Deliver::Logon { seq, username, password, reset } => {
                let c = &mut self.sessions.counters;
                if let Err(refusal) = self.logons.check(now, ip, &username, &password, c) {
                    let reason = CloseReason::PeerIncompatible(refusal);
                    self.sessions.slots[index as usize].session.close(
                        now,
                        reason,
                        refusal.text(),
                        c,
                    );
                    return;
                }
                let default = self.cfg.session.heartbeat_interval;
                let hb = self.sessions.slots[index as usize].session.heartbeat_for_logon(default);
                let c = &mut self.sessions.counters;
                self.sessions.slots[index as usize]
                    .session
                    .accept_logon(now, seq, username, reset, hb, c);
                self.logged_on(now, index);
            }
            Deliver::Config { config } => self.configured(index, config),
        }
    }

    /// A free slot with a fresh session (no transport yet), entered under its new id.
    fn allocate(&mut self) -> Option<u32> {
        let id = self.index.new_id();
        let index = self.sessions.allocate(id, self.wall_offset_ns)?;
        if let Some(a) = self.peer_acked.get_mut(index as usize) {
            *a = 0;
        }
        self.index.insert(index, Key::Id(id));
        Some(index)
    }

    /// Applies the consequences of a session's state: release, detach, reschedule, mark dirty.
    fn settle(&mut self, now: Timestamp, index: u32) {
        let slot = &mut self.sessions.slots[index as usize];
        if !slot.in_use {
            return;
        }
        if self.check_stalled(now, index) {
            return; // `stall` has settled it
        }
        let slot = &mut self.sessions.slots[index as usize];
        if let Some(d) = slot.session.take_resend_done() {
            self.events.push_back(EndpointEvent::ResendServed(d));
        }
        match slot.session.state() {
            State::Closed(reason) => {
                self.unlink(index);
                self.wheel.remove(index);
                let slot = &mut self.sessions.slots[index as usize];
                let kept = core::mem::replace(&mut slot.config, ConfigRef::NONE);
                self.configs.remove(kept);
                let handle = self.sessions.release(index);
                self.index.remove(index);
                self.events.push_back(EndpointEvent::Ended(handle, reason));
                return;
            }
            State::Detached if slot.link != Link::None => {
                self.unlink(index);
                self.sessions.counters.incr(Counter::SessionsDetached);
            }
            _ => {}
        }
        if self.sessions.pending(index).is_some_and(|(_, p)| p.is_done()) {
            self.sessions.take_pending(index);
            self.sessions.counters.incr(Counter::AttachesPendingDropped);
        }
        match self.sessions.poll_timeout(index) {
            Some(t) => self.wheel.insert(index, t),
            None => self.wheel.remove(index),
        }
        self.sessions.recount(index);
        self.sessions.mark_dirty(index);
    }

    /// The earliest deadline of any session or of the application.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let s = self.wheel.next_deadline();
        let a = self.apps_poll_timeout();
        match (s, a) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every due session timer and the application's.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.apps_timeout(now);
        while let Some(index) = self.wheel.poll(now) {
            let slot = &mut self.sessions.slots[index as usize];
            if !slot.in_use {
                continue;
            }
            slot.session.handle_timeout(now, &mut self.sessions.counters);
            if let (Some((_, p)), c) = self.sessions.pending_mut(index) {
                p.handle_timeout(now, c);
            }
            self.settle(now, index);
        }
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// Stops accepting and logs every attached session out ("gateway shutting down"). Walks
    /// the sessions in use (the applications' lists), not the slab.
    pub fn shutdown(&mut self, now: Timestamp) {
        self.draining = true;
        for app in 0..self.apps.len() {
            let mut index = self.sessions.app_head(app as u8);
            while index != NIL {
                if let (Some((_, p)), _) = self.sessions.pending_mut(index) {
                    p.refuse(b"gateway shutting down");
                }
                let slot = &mut self.sessions.slots[index as usize];
                let next = slot.app_next;
                if slot.session.state().is_attached() {
                    slot.session.close(
                        now,
                        CloseReason::LocalClose(LocalClose::Shutdown),
                        b"gateway shutting down",
                        &mut self.sessions.counters,
                    );
                }
                self.settle(now, index);
                index = next;
            }
        }
    }

    /// Ends `session` with LoggedOut(`why`) for its host's sake (DESIGN.md §1.6): true if it
    /// was attached and told; false if it is away from its device (it is not ended: the caller
    /// tells it when it resumes) or gone.
    pub fn end_for_host(&mut self, now: Timestamp, session: SessionHandle, why: &[u8]) -> bool {
        if self.sessions.get(session).is_none() {
            return false;
        }
        let index = session.index();
        let slot = &mut self.sessions.slots[index as usize];
        if !slot.session.state().is_active() {
            return false;
        }
        let reason = CloseReason::LocalClose(LocalClose::Host);
        slot.session.close(now, reason, why, &mut self.sessions.counters);
        self.settle(now, index);
        true
    }

    /// True once [`Self::shutdown`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }
}

/// Queues `CloseConnection(conn)` unless one is already queued for it (see `Endpoint::closing`).
/// An id at or above `max_connections` (never given by the driver) is closed every time.
fn close_connection(events: &mut VecDeque<EndpointEvent>, closing: &mut [bool], conn: ConnId) {
    match closing.get_mut(conn.0 as usize) {
        Some(true) => {}
        Some(queued) => {
            *queued = true;
            events.push_back(EndpointEvent::CloseConnection(conn));
        }
        None => events.push_back(EndpointEvent::CloseConnection(conn)),
    }
}

/// The limiter tables' hash key, derived from the endpoint's secret (never the id key itself).
fn limiter_seed(id_key: &[u8; 32]) -> [u8; 16] {
    let mut seed = [0u8; 16];
    seed.copy_from_slice(&blake3::keyed_hash(id_key, b"fleetgate logon limiter").as_bytes()[..16]);
    seed
}

/// Messages of a datagram kept decoded; more are decoded again when acted on.
const DECODED: usize = 16;

/// The messages of a datagram, every one decoded before any is acted on (DESIGN.md §2 rule 12:
/// one malformed message drops the datagram whole). The first [`DECODED`] are kept so that
/// each is decoded once; more (only in datagrams of many small messages) are decoded again.
struct Decoded<'a> {
    dg: Datagram<'a>,
    first: [Option<Message<'a>>; DECODED],
}

impl<'a> Decoded<'a> {
    /// Decodes every message; the first malformed one's error if any.
    fn new(dg: Datagram<'a>) -> Result<Self, DecodeError> {
        let mut first = [None; DECODED];
        for (i, frame) in dg.frames().enumerate() {
            let msg = Message::decode_frame(frame?)?;
            if let Some(m) = first.get_mut(i) {
                *m = Some(msg);
            }
        }
        Ok(Self { dg, first })
    }

    /// The messages, in order.
    fn iter(&self) -> impl Iterator<Item = Message<'a>> + '_ {
        // Every frame decoded in `new`: the re-decode cannot fail.
        self.dg.frames().enumerate().filter_map(|(i, frame)| match self.first.get(i) {
            Some(m) => *m,
            None => frame.ok().and_then(|f| Message::decode_frame(f).ok()),
        })
    }
}

#[cfg(test)]
mod tests;
