//! One shard's gateway sessions (quinn's `Endpoint`). See the module docs of [`super`] for the
//! call order.

use core::cmp::Reverse;
use core::time::Duration;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

use super::SessionConfig;
use super::auth::Authenticator;
use super::gateway::{Deliver, GatewaySession, SendError, count_decode_error};
use super::handshake::{CookieError, CookieInput, CookieKeys, verify_cookie};
use super::state::{CloseReason, State};
use crate::counters::{Counter, Counters};
use crate::ids::{ConnId, SessionHandle};
use crate::protocol::{
    Body, DATAGRAM_PREFIX_LEN, Datagram, DecodeError, DeviceUid, Header, Message,
    RegistrationRejectReason, Username, write_prefix,
};
use crate::time::Timestamp;

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

/// An application behind the gateway (DESIGN.md §1.4): gets the application messages of every
/// session of the shard and sends through an [`Outbox`].
pub trait Application {
    /// An application message arrived in order on `session`.
    fn on_message(
        &mut self,
        now: Timestamp,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
        out: &mut Outbox<'_>,
    );

    /// A session logged on (or resumed).
    fn on_logon(&mut self, _now: Timestamp, _session: SessionHandle, _out: &mut Outbox<'_>) {}

    /// The application's next deadline, if any.
    fn poll_timeout(&self) -> Option<Timestamp> {
        None
    }

    /// Called when `now` reaches [`Application::poll_timeout`].
    fn handle_timeout(&mut self, _now: Timestamp, _out: &mut Outbox<'_>) {}
}

/// Lets an [`Application`] send.
pub struct Outbox<'a> {
    now: Timestamp,
    sessions: &'a mut Sessions,
    /// The application this outbox serves: `broadcast` reaches only its sessions.
    app: u8,
}

impl Outbox<'_> {
    /// Sends an application message on `session`; returns its sequence number.
    pub fn send(
        &mut self,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
    ) -> Result<i64, SendError> {
        let Sessions { slots, counters, .. } = &mut *self.sessions;
        let Some(slot) = slots
            .get_mut(session.index() as usize)
            .filter(|s| s.in_use && s.generation == session.generation())
        else {
            return Err(SendError::NotActive);
        };
        let r = slot.session.send_app(self.now, type_id, body, counters);
        self.sessions.mark_dirty(session.index());
        r
    }

    /// Sends to every session that takes application messages (logged on, or away with a stream
    /// to resume); returns how many accepted it.
    pub fn broadcast(&mut self, type_id: u16, body: &[u8]) -> usize {
        let mut n = 0;
        for i in 0..self.sessions.slots.len() {
            let slot = &mut self.sessions.slots[i];
            if slot.in_use && slot.session.accepts_app() && slot.session.app() == self.app {
                if slot
                    .session
                    .send_app(self.now, type_id, body, &mut self.sessions.counters)
                    .is_ok()
                {
                    n += 1;
                }
                self.sessions.mark_dirty(i as u32);
            }
        }
        n
    }

    /// Logged-on sessions.
    pub fn active_sessions(&self) -> usize {
        self.sessions.slots.iter().filter(|s| s.in_use && s.session.state().is_active()).count()
    }
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
    /// This shard's index (bound into cookies).
    pub shard: u16,
    /// Stateless replies waiting to be sent (`gateway.reply_queue`, default 1024).
    pub reply_queue: usize,
    /// Buffers one session may produce before others get a turn (`session.burst`, 8):
    /// paces large resends so one session cannot starve the rest.
    pub session_burst: u32,
    /// Failed logons from one address before it is refused (`auth.max_failures`, 5).
    pub max_logon_failures: u32,
    /// Window over which failed logons are counted (`auth.failure_window_s`, 60 s).
    pub logon_failure_window: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        Self {
            session: SessionConfig::default(),
            max_sessions: 4096,
            max_connections: 4096,
            shard: 0,
            reply_queue: 1024,
            session_burst: 8,
            max_logon_failures: 5,
            logon_failure_window: Duration::from_secs(60),
        }
    }
}

/// What a device group sets for its sessions (`None`: the endpoint's default).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupSettings {
    /// Heartbeat interval announced in LogonResponse.
    pub heartbeat: Option<Duration>,
    /// Application messages the journal keeps (at most the reserved ring).
    pub journal_depth: Option<usize>,
    /// Which application serves the group (an index from [`Endpoint::add_app`]).
    pub app: Option<u8>,
}

/// Maps a device config string to its group's settings.
pub type GroupPolicy = Box<dyn Fn(&[u8]) -> GroupSettings + Send>;

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

struct Slot {
    session: GatewaySession,
    generation: u32,
    in_use: bool,
    link: Link,
    dirty: bool,
    burst: u32,
    scheduled: Option<Timestamp>,
    /// Parked by [`Endpoint::poll_transmit_within`]: its TCP send queue had no room.
    blocked: bool,
    /// A slow reader: its next transmit is its LoggedOut, sent with [`Transmit::last`].
    stalled: bool,
}

struct Sessions {
    slots: Vec<Slot>,
    dirty: VecDeque<u32>,
    counters: Counters,
}

impl Sessions {
    fn mark_dirty(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        if !slot.dirty && slot.session.wants_transmit() {
            slot.dirty = true;
            self.dirty.push_back(index);
        }
    }
}

struct Reply {
    dest: Link,
    len: u16,
    buf: [u8; 128],
}

#[derive(Clone, Copy)]
struct Failures {
    ip: Option<IpAddr>,
    count: u32,
    since: Timestamp,
}

/// One shard's gateway: the session slab and everything that is not a single session.
pub struct Endpoint {
    cfg: EndpointConfig,
    sessions: Sessions,
    free: Vec<u32>,
    by_id: HashMap<u64, u32>,
    by_uid: HashMap<DeviceUid, u32>,
    by_user: HashMap<Username, u32>,
    conns: Vec<Option<u32>>,
    deadlines: BinaryHeap<Reverse<(Timestamp, u32)>>,
    replies: VecDeque<Reply>,
    /// Sessions parked for want of room on their connection (see `poll_transmit_within`).
    blocked: Vec<u32>,
    events: VecDeque<EndpointEvent>,
    failures: Box<[Failures]>,
    keys: CookieKeys,
    id_key: [u8; 32],
    id_counter: u64,
    auth: Box<dyn Authenticator>,
    apps: Vec<Box<dyn Application>>,
    groups: Option<GroupPolicy>,
    draining: bool,
    wall_offset_ns: i64,
}

impl core::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Endpoint")
            .field("shard", &self.cfg.shard)
            .field("sessions", &self.by_id.len())
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
        let slots = (0..n)
            .map(|_| Slot {
                session: GatewaySession::new(cfg.session),
                generation: 0,
                in_use: false,
                link: Link::None,
                dirty: false,
                burst: 0,
                scheduled: None,
                blocked: false,
                stalled: false,
            })
            .collect();
        Self {
            cfg,
            sessions: Sessions {
                slots,
                dirty: VecDeque::with_capacity(n),
                counters: Counters::default(),
            },
            free: (0..n as u32).rev().collect(),
            // Twice the entries so that deletions never force a resize (hashbrown rehashes in
            // place while at most half full).
            by_id: HashMap::with_capacity(2 * n),
            by_uid: HashMap::with_capacity(2 * n),
            by_user: HashMap::with_capacity(2 * n),
            conns: vec![None; cfg.max_connections],
            deadlines: BinaryHeap::with_capacity(4 * n + 16),
            replies: VecDeque::with_capacity(cfg.reply_queue),
            blocked: Vec::with_capacity(n),
            events: VecDeque::with_capacity(4 * n + 16),
            failures: vec![Failures { ip: None, count: 0, since: Timestamp::ZERO }; 256]
                .into_boxed_slice(),
            keys,
            id_key,
            id_counter: 0,
            auth,
            apps: vec![app],
            groups: None,
            draining: false,
            wall_offset_ns: 0,
        }
    }

    /// Bytes the session slab reserves (journals included), for the start-up report.
    pub fn reserved_bytes(cfg: &EndpointConfig) -> usize {
        cfg.max_sessions * (cfg.session.journal.bytes_per_session() + core::mem::size_of::<Slot>())
    }

    /// Adds an application for device groups to select ([`GroupSettings::app`]); returns its
    /// index (the application given to [`Endpoint::new`] is 0). At most 255 more.
    pub fn add_app(&mut self, app: Box<dyn Application>) -> u8 {
        debug_assert!(self.apps.len() < 256);
        self.apps.push(app);
        (self.apps.len() - 1) as u8
    }

    /// Sets the device-group policy: called with each UDP device's config string when it
    /// arrives, its answer applies to that session (heartbeat interval announced at logon,
    /// journal depth within the reserved ring).
    pub fn set_groups(&mut self, policy: GroupPolicy) {
        self.groups = Some(policy);
    }

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
        self.sessions.slots.len() - self.free.len()
    }

    /// The connections list.
    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        self.sessions.slots.iter().enumerate().filter(|(_, s)| s.in_use).map(|(i, s)| SessionInfo {
            handle: SessionHandle::new(i as u32, s.generation),
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

    /// The session behind a handle.
    pub fn session(&self, h: SessionHandle) -> Option<&GatewaySession> {
        let s = self.sessions.slots.get(h.index() as usize)?;
        (s.in_use && s.generation == h.generation()).then_some(&s.session)
    }

    /// Finds a session by id.
    pub fn handle_by_id(&self, id: u64) -> Option<SessionHandle> {
        self.by_id.get(&id).map(|&i| self.handle(i))
    }

    fn handle(&self, index: u32) -> SessionHandle {
        SessionHandle::new(index, self.sessions.slots[index as usize].generation)
    }

    /// Sends an application message on `session` from outside the application (tests, tools).
    pub fn send(
        &mut self,
        now: Timestamp,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
    ) -> Result<i64, SendError> {
        Outbox { now, sessions: &mut self.sessions, app: 0 }.send(session, type_id, body)
    }

    /// A datagram arrived on this shard's session port.
    pub fn handle_datagram(&mut self, now: Timestamp, from: SocketAddr, data: &[u8]) {
        let c = &mut self.sessions.counters;
        c.incr(Counter::DatagramsReceived);
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
        let Some(&index) = self.by_id.get(&dg.session_id) else {
            c.incr(Counter::DropUnknownSession);
            return;
        };
        let slot = &self.sessions.slots[index as usize];
        if slot.link != Link::Udp(from) || slot.session.transport() != super::Transport::Udp {
            c.incr(Counter::DropWrongAddress);
            return;
        }
        c.add(Counter::BytesReceived, DATAGRAM_PREFIX_LEN as u64);
        for frame in dg.frames() {
            match frame {
                Ok(frame) => self.session_frame(now, index, frame, Some(from)),
                Err(e) => {
                    count_decode_error(e, &mut self.sessions.counters);
                    break;
                }
            }
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
        if self.draining {
            c.incr(Counter::HandshakesDraining);
            self.registration_reject(from, RegistrationRejectReason::Draining, b"gateway draining");
            return;
        }
        if let Some(index) = self.by_uid.get(&device_uid).copied() {
            self.finish_logout(now, index);
        }
        let c = &mut self.sessions.counters;
        let index = match self.by_uid.get(&device_uid).copied() {
            Some(index) => {
                let slot = &mut self.sessions.slots[index as usize];
                let attached = slot.session.state().is_attached();
                if attached && slot.session.reg_nonce() == client_nonce {
                    // Idempotent: same answer, same session id, state untouched.
                    c.incr(Counter::HandshakesRepeated);
                    slot.link = Link::Udp(from);
                    slot.session.repeat_registration();
                    self.sessions.mark_dirty(index);
                    return;
                }
                // A new handshake from the very address the session is attached to is the same
                // device starting over (its earlier handshake or logon gave up): there is no
                // older connection to say goodbye to, and a LoggedOut sent to that address
                // would reach the new attach and end it. Only another address is displaced.
                if attached && slot.link != Link::Udp(from) {
                    self.displace(now, index);
                }
                let c = &mut self.sessions.counters;
                c.incr(Counter::HandshakesResumed);
                c.incr(Counter::SessionsResumed);
                let slot = &mut self.sessions.slots[index as usize];
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
                self.by_uid.insert(device_uid, index);
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

    fn registration_reject(
        &mut self,
        to: SocketAddr,
        reason: RegistrationRejectReason,
        details: &[u8],
    ) {
        let body = Body::RegistrationReject { reason: reason as u8, details };
        self.push_reply(Link::Udp(to), 0, body);
    }

    /// Queues a stateless reply (prefix `session_id` on UDP).
    fn push_reply(&mut self, dest: Link, seq: i64, body: Body<'_>) {
        if self.replies.len() >= self.cfg.reply_queue {
            self.sessions.counters.incr(Counter::ReplyQueueFull);
            return;
        }
        let mut r = Reply { dest, len: 0, buf: [0; 128] };
        let start = match dest {
            Link::Udp(_) => write_prefix(&mut r.buf, 0),
            _ => 0,
        };
        let msg = Message { header: Header { seq, ..Header::default() }, body };
        if let Ok(n) = msg.encode(&mut r.buf[start..]) {
            r.len = (start + n) as u16;
            self.replies.push_back(r);
        }
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
        if n > 0 && old != Link::None && self.replies.len() < self.cfg.reply_queue {
            r.len = n as u16;
            self.replies.push_back(r);
        }
        if let Link::Tcp(conn) = old {
            self.events.push_back(EndpointEvent::CloseConnection(conn));
            if let Some(c) = self.conns.get_mut(conn.0 as usize) {
                *c = None;
            }
        }
        self.sessions.slots[index as usize].link = Link::None;
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
        if n > 0 && old != Link::None && self.replies.len() < self.cfg.reply_queue {
            r.len = n as u16;
            self.replies.push_back(r);
        }
        self.settle(now, index);
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
            self.events.push_back(EndpointEvent::CloseConnection(conn));
            return;
        }
        let msg = match Message::decode_frame(frame) {
            Ok(m) => m,
            Err(e) => {
                count_decode_error(e, &mut self.sessions.counters);
                self.sessions.counters.incr(Counter::ProtocolViolations);
                self.refuse_tcp(conn, e.as_str().as_bytes());
                return;
            }
        };
        let Body::LogonRequest { username, reset_seq_num, .. } = msg.body else {
            self.sessions.counters.incr(Counter::ProtocolViolations);
            self.refuse_tcp(conn, b"logon required");
            return;
        };
        if self.draining {
            self.sessions.counters.incr(Counter::HandshakesDraining);
            self.refuse_tcp(conn, b"gateway shutting down");
            return;
        }
        if let Err(why) = self.authenticate(now, peer.ip(), &username, &msg) {
            self.refuse_tcp(conn, why);
            return;
        }
        if let Some(index) = self.by_user.get(&username).copied() {
            self.finish_logout(now, index);
        }
        let index = match self.by_user.get(&username).copied() {
            Some(index) => {
                if self.sessions.slots[index as usize].session.state().is_attached() {
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
                self.by_user.insert(username, index);
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
        self.events.push_back(EndpointEvent::CloseConnection(conn));
    }

    /// Checks the rate limit and the credentials; records failures. On refusal, returns the
    /// LoggedOut reason: "too many failed logons" when the address was already limited (the
    /// password is not even checked), "invalid credentials" when the password was checked and
    /// is wrong, including the failure that reaches the limit (DESIGN.md §2 rule 11).
    fn authenticate(
        &mut self,
        now: Timestamp,
        ip: IpAddr,
        username: &Username,
        msg: &Message<'_>,
    ) -> Result<(), &'static [u8]> {
        if self.is_limited(now, ip) {
            self.sessions.counters.incr(Counter::LogonsRateLimited);
            return Err(b"too many failed logons");
        }
        let Body::LogonRequest { password, .. } = msg.body else {
            return Err(b"invalid credentials");
        };
        if self.auth.check(username.as_bytes(), password.as_bytes()) {
            return Ok(());
        }
        self.sessions.counters.incr(Counter::LogonsFailed);
        let window = self.cfg.logon_failure_window;
        let f = &mut self.failures[failure_slot(ip)];
        if f.ip != Some(ip) || now.saturating_since(f.since) > window {
            *f = Failures { ip: Some(ip), count: 0, since: now };
        }
        f.count += 1;
        Err(b"invalid credentials")
    }

    fn is_limited(&self, now: Timestamp, ip: IpAddr) -> bool {
        let f = &self.failures[failure_slot(ip)];
        f.ip == Some(ip)
            && f.count >= self.cfg.max_logon_failures
            && now.saturating_since(f.since) <= self.cfg.logon_failure_window
    }

    /// A later frame on a TCP connection (split off the stream by the driver's deframer).
    pub fn handle_tcp_frame(&mut self, now: Timestamp, conn: ConnId, frame: &[u8]) {
        let Some(index) = self.conns.get(conn.0 as usize).copied().flatten() else {
            self.events.push_back(EndpointEvent::CloseConnection(conn));
            return;
        };
        self.session_frame(now, index, frame, None);
        self.settle(now, index);
    }

    /// The driver's deframer failed on this connection (framing error): LoggedOut and close.
    pub fn handle_tcp_error(&mut self, now: Timestamp, conn: ConnId, e: DecodeError) {
        count_decode_error(e, &mut self.sessions.counters);
        self.sessions.counters.incr(Counter::ProtocolViolations);
        let Some(index) = self.conns.get(conn.0 as usize).copied().flatten() else {
            self.events.push_back(EndpointEvent::CloseConnection(conn));
            return;
        };
        let c = &mut self.sessions.counters;
        self.sessions.slots[index as usize].session.close(
            now,
            CloseReason::ProtocolViolation,
            e.as_str().as_bytes(),
            c,
        );
        self.settle(now, index);
    }

    /// The driver could not queue a transmit on this connection (its bounded send queue is full;
    /// with [`Endpoint::poll_transmit_within`] this does not happen for session output). The
    /// session is a slow reader: its next and last transmit is LoggedOut("send queue full")
    /// ([`Transmit::last`]); then it is detached for resume and a
    /// [`EndpointEvent::CloseConnection`] follows. Returns false when there is no such goodbye
    /// (no session on the connection, or it is already ending): the driver closes at once.
    pub fn handle_tcp_stalled(&mut self, now: Timestamp, conn: ConnId) -> bool {
        let Some(index) = self.conns.get(conn.0 as usize).copied().flatten() else {
            return false;
        };
        let slot = &self.sessions.slots[index as usize];
        if slot.link != Link::Tcp(conn) || slot.stalled {
            return false;
        }
        self.stall(now, index, conn)
    }

    /// The TCP connection closed (peer closed, error, or after our close).
    pub fn handle_tcp_closed(&mut self, now: Timestamp, conn: ConnId) {
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

    fn session_frame(
        &mut self,
        now: Timestamp,
        index: u32,
        frame: &[u8],
        peer: Option<SocketAddr>,
    ) {
        let slot = &mut self.sessions.slots[index as usize];
        let Some(deliver) = slot.session.handle_frame(now, frame, &mut self.sessions.counters)
        else {
            return;
        };
        match deliver {
            Deliver::App { type_id, body } => {
                let handle = self.handle(index);
                let app = self.sessions.slots[index as usize].session.app();
                let mut out = Outbox { now, sessions: &mut self.sessions, app };
                self.apps[usize::from(app)].on_message(now, handle, type_id, body, &mut out);
            }
            Deliver::Logon { seq, username, password, reset } => {
                let msg = Message {
                    header: Header { seq, ..Header::default() },
                    body: Body::LogonRequest { username, password, reset_seq_num: reset },
                };
                let ip = peer.map_or(IpAddr::from([0, 0, 0, 0]), |p| p.ip());
                if let Err(why) = self.authenticate(now, ip, &username, &msg) {
                    let c = &mut self.sessions.counters;
                    self.sessions.slots[index as usize].session.close(
                        now,
                        CloseReason::InvalidCredentials,
                        why,
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
            Deliver::Config => {
                if let Some(policy) = self.groups.as_ref() {
                    let session = &mut self.sessions.slots[index as usize].session;
                    let g = policy(session.device_config());
                    session.apply_group(g.heartbeat, g.journal_depth);
                    if let Some(app) = g.app.filter(|&a| usize::from(a) < self.apps.len()) {
                        session.set_app(app);
                    }
                }
            }
        }
    }

    fn logged_on(&mut self, now: Timestamp, index: u32) {
        if self.sessions.slots[index as usize].session.state().is_active() {
            let handle = self.handle(index);
            self.events.push_back(EndpointEvent::LoggedOn(handle));
            let app = self.sessions.slots[index as usize].session.app();
            let mut out = Outbox { now, sessions: &mut self.sessions, app };
            self.apps[usize::from(app)].on_logon(now, handle, &mut out);
        }
    }

    fn allocate(&mut self) -> Option<u32> {
        let index = self.free.pop()?;
        let id = loop {
            self.id_counter += 1;
            let mut h = blake3::Hasher::new_keyed(&self.id_key);
            h.update(&self.id_counter.to_le_bytes());
            h.update(&self.cfg.shard.to_le_bytes());
            let mut b = [0u8; 8];
            b.copy_from_slice(&h.finalize().as_bytes()[..8]);
            let id = u64::from_le_bytes(b);
            if id != 0 && !self.by_id.contains_key(&id) {
                break id;
            }
        };
        self.by_id.insert(id, index);
        let slot = &mut self.sessions.slots[index as usize];
        debug_assert!(!slot.in_use);
        slot.in_use = true;
        slot.link = Link::None;
        slot.burst = 0;
        slot.session.open(id, self.wall_offset_ns);
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
                if let Link::Tcp(conn) = slot.link {
                    self.events.push_back(EndpointEvent::CloseConnection(conn));
                    if let Some(c) = self.conns.get_mut(conn.0 as usize) {
                        *c = None;
                    }
                }
                let handle = SessionHandle::new(index, slot.generation);
                slot.link = Link::None;
                slot.in_use = false;
                slot.scheduled = None;
                slot.generation = slot.generation.wrapping_add(1);
                let id = slot.session.id();
                let uid = *slot.session.device_uid();
                let user = *slot.session.username();
                if self.by_id.get(&id) == Some(&index) {
                    self.by_id.remove(&id);
                }
                if self.by_uid.get(&uid) == Some(&index) {
                    self.by_uid.remove(&uid);
                }
                if self.by_user.get(&user) == Some(&index) {
                    self.by_user.remove(&user);
                }
                self.free.push(index);
                self.events.push_back(EndpointEvent::Ended(handle, reason));
                return;
            }
            State::Detached if slot.link != Link::None => {
                if let Link::Tcp(conn) = slot.link {
                    self.events.push_back(EndpointEvent::CloseConnection(conn));
                    if let Some(c) = self.conns.get_mut(conn.0 as usize) {
                        *c = None;
                    }
                }
                slot.link = Link::None;
                self.sessions.counters.incr(Counter::SessionsDetached);
            }
            _ => {}
        }
        let slot = &mut self.sessions.slots[index as usize];
        if let Some(t) = slot.session.poll_timeout() {
            if slot.scheduled.is_none_or(|s| t < s) {
                slot.scheduled = Some(t);
                if self.deadlines.len() == self.deadlines.capacity() {
                    // Drop stale entries in place rather than grow.
                    let slots = &self.sessions.slots;
                    self.deadlines
                        .retain(|Reverse((t, i))| slots[*i as usize].scheduled == Some(*t));
                }
                self.deadlines.push(Reverse((t, index)));
            }
        }
        self.sessions.mark_dirty(index);
    }

    /// The earliest deadline of any session or of the application.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let s = self.deadlines.peek().map(|Reverse((t, _))| *t);
        let a = self.apps.iter().filter_map(|a| a.poll_timeout()).min();
        match (s, a) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Fires every due session timer and the application's.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        for (i, app) in self.apps.iter_mut().enumerate() {
            if app.poll_timeout().is_some_and(|t| t <= now) {
                let mut out = Outbox { now, sessions: &mut self.sessions, app: i as u8 };
                app.handle_timeout(now, &mut out);
            }
        }
        while let Some(&Reverse((t, index))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let slot = &mut self.sessions.slots[index as usize];
            if !slot.in_use || slot.scheduled != Some(t) {
                continue;
            }
            slot.scheduled = None;
            slot.session.handle_timeout(now, &mut self.sessions.counters);
            self.settle(now, index);
        }
    }

    /// Writes the next buffer to send into `buf` (at least `max_datagram` bytes for UDP), as
    /// [`Endpoint::poll_transmit_within`] with unlimited room on every connection.
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut [u8]) -> Option<Transmit> {
        self.poll_transmit_within(now, buf, &mut |_| usize::MAX)
    }

    /// Writes the next buffer to send into `buf`, never more bytes for a TCP connection than
    /// `room` says its send queue takes now. A session whose connection has no room for a whole
    /// message is parked (its output stays in its journal) until [`Endpoint::unblock`]; a parked
    /// session whose journal fills with unsent messages is a slow reader: its next and last
    /// transmit is LoggedOut("send queue full") ([`Transmit::last`]), then it is kept detached
    /// for resume.
    pub fn poll_transmit_within(
        &mut self,
        now: Timestamp,
        buf: &mut [u8],
        room: &mut dyn FnMut(ConnId) -> usize,
    ) -> Option<Transmit> {
        if let Some(r) = self.replies.pop_front() {
            let len = usize::from(r.len).min(buf.len());
            buf[..len].copy_from_slice(&r.buf[..len]);
            return Some(Transmit { dest: r.dest, len, last: false });
        }
        // Any one message fits in this much: a journal slot, or a session message.
        let need = self.cfg.session.journal.slot_bytes.max(MAX_SESSION_MESSAGE);
        while let Some(&index) = self.sessions.dirty.front() {
            let slot = &mut self.sessions.slots[index as usize];
            let dest = slot.link;
            let last = slot.stalled;
            let mut limit = buf.len();
            if let (Link::Tcp(conn), false) = (dest, last) {
                let r = room(conn);
                if r < need {
                    slot.dirty = false;
                    slot.burst = 0;
                    self.sessions.dirty.pop_front();
                    if !slot.blocked {
                        slot.blocked = true;
                        self.blocked.push(index);
                    }
                    self.check_stalled(now, index);
                    continue;
                }
                limit = limit.min(r);
            }
            let sent = if slot.in_use && dest != Link::None {
                slot.session.poll_transmit(now, &mut buf[..limit], &mut self.sessions.counters)
            } else {
                None
            };
            match sent {
                Some(len) => {
                    slot.burst += 1;
                    if last {
                        slot.stalled = false;
                    }
                    if slot.burst >= self.cfg.session_burst {
                        // Pacing: give the other sessions a turn.
                        slot.burst = 0;
                        self.sessions.dirty.pop_front();
                        self.sessions.dirty.push_back(index);
                    }
                    self.settle(now, index);
                    return Some(Transmit { dest, len, last });
                }
                None => {
                    slot.dirty = false;
                    slot.burst = 0;
                    self.sessions.dirty.pop_front();
                    if slot.in_use && dest == Link::None && slot.session.state().is_attached() {
                        // Output for a session with nowhere to go is dropped as sent.
                        continue;
                    }
                }
            }
        }
        None
    }

    /// Gives every session parked by [`Endpoint::poll_transmit_within`] another try; the driver
    /// calls it once per pass, before its transmits.
    pub fn unblock(&mut self, now: Timestamp) {
        let mut blocked = core::mem::take(&mut self.blocked);
        for &index in &blocked {
            // Output pushed to it meanwhile (a broadcast) may have filled its journal.
            self.check_stalled(now, index);
            let slot = &mut self.sessions.slots[index as usize];
            slot.blocked = false;
            self.sessions.mark_dirty(index);
        }
        blocked.clear();
        self.blocked = blocked;
    }

    /// A parked session that cannot journal more output is a slow reader (see
    /// [`Endpoint::poll_transmit_within`]).
    /// True if it started the goodbye (and settled the session).
    fn check_stalled(&mut self, now: Timestamp, index: u32) -> bool {
        let slot = &self.sessions.slots[index as usize];
        match slot.link {
            Link::Tcp(conn) if slot.blocked && !slot.stalled && slot.session.output_full() => {
                self.stall(now, index, conn)
            }
            _ => false,
        }
    }

    /// Starts the slow-reader goodbye; false if the session is already ending.
    fn stall(&mut self, now: Timestamp, index: u32, conn: ConnId) -> bool {
        let slot = &mut self.sessions.slots[index as usize];
        if !slot.session.stalled(now, &mut self.sessions.counters) {
            return false;
        }
        slot.stalled = true;
        self.events.push_back(EndpointEvent::SlowReader(conn));
        self.settle(now, index);
        true
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<EndpointEvent> {
        self.events.pop_front()
    }

    /// Stops accepting and logs every attached session out ("gateway shutting down").
    pub fn shutdown(&mut self, now: Timestamp) {
        self.draining = true;
        for index in 0..self.sessions.slots.len() as u32 {
            let slot = &mut self.sessions.slots[index as usize];
            if slot.in_use && slot.session.state().is_attached() {
                slot.session.close(
                    now,
                    CloseReason::Shutdown,
                    b"gateway shutting down",
                    &mut self.sessions.counters,
                );
                self.settle(now, index);
            }
        }
    }

    /// True once [`Self::shutdown`] was called.
    pub fn is_draining(&self) -> bool {
        self.draining
    }
}

fn failure_slot(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(v4) => u32::from(v4) as u64,
        IpAddr::V6(v6) => {
            let o = v6.octets();
            u64::from_le_bytes([o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15]])
        }
    };
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::Echo;
    use crate::protocol::{Password, Username};
    use crate::session::OpenLogon;
    use crate::session::handshake::CookieKey;

    const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

    /// One TCP session logged on (connection 0, journal of 8) and its LogonResponse taken.
    fn logged_on() -> Endpoint {
        let mut cfg = EndpointConfig { max_sessions: 4, max_connections: 4, ..Default::default() };
        cfg.session.journal.messages_per_session = 8;
        let keys = CookieKeys { current: CookieKey([1; 32]), previous: None };
        let mut ep = Endpoint::new(cfg, keys, [2; 32], Box::new(OpenLogon), Box::new(Echo));
        let logon = Message {
            header: Header { seq: 1, ..Header::default() },
            body: Body::LogonRequest {
                username: Username::new(b"flow").unwrap(),
                password: Password::new(b"pw").unwrap(),
                reset_seq_num: true,
            },
        };
        let mut f = [0u8; 128];
        let n = logon.encode(&mut f).unwrap();
        let frame = crate::protocol::split_frame(&f[..n]).unwrap().0;
        ep.handle_tcp_logon(NOW, ConnId(0), SocketAddr::from(([127, 0, 0, 1], 9)), frame);
        let mut buf = [0u8; 4096];
        let t = ep.poll_transmit(NOW, &mut buf).expect("LogonResponse");
        let f = crate::protocol::split_frame(&buf[..t.len]).unwrap().0;
        assert_eq!(Header::decode(f).unwrap().type_id, 2, "{:?}", Message::decode_frame(f));
        ep
    }

    /// Echo request `k` (seq k + 2) into the session.
    fn request(ep: &mut Endpoint, k: i64) {
        let m = Message {
            header: Header { seq: k + 2, ..Header::default() },
            body: Body::App { type_id: 150, body: &k.to_le_bytes() },
        };
        let mut f = [0u8; 128];
        let n = m.encode(&mut f).unwrap();
        ep.handle_tcp_frame(NOW, ConnId(0), crate::protocol::split_frame(&f[..n]).unwrap().0);
    }

    /// Message types in a TCP transmit.
    fn types(bytes: &[u8]) -> Vec<u16> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while let Ok((f, padded)) = crate::protocol::split_frame(rest) {
            out.push(Header::decode(f).unwrap().type_id);
            rest = &rest[padded..];
        }
        out
    }

    #[test]
    fn tcp_output_waits_for_room_and_never_exceeds_it() {
        let mut ep = logged_on();
        for k in 0..3 {
            request(&mut ep, k);
        }
        let mut buf = [0u8; 4096];
        // No room: nothing goes out, the session is parked, its replies stay unsent.
        assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).is_none());
        // Parked until unblocked, even with room now.
        assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 4096).is_none());
        ep.unblock(NOW);
        // Room for two 40-byte replies at a time (and a whole journal slot).
        let room = 256;
        let mut got = Vec::new();
        loop {
            ep.unblock(NOW);
            let Some(t) = ep.poll_transmit_within(NOW, &mut buf, &mut |_| room) else { break };
            assert!(t.len <= room && !t.last, "{} bytes for {room} of room", t.len);
            got.extend(types(&buf[..t.len]));
        }
        assert_eq!(got, [250, 250, 250]);
        assert!(
            !std::iter::from_fn(|| ep.poll_event())
                .any(|e| matches!(e, EndpointEvent::SlowReader(_)))
        );
    }

    #[test]
    fn parked_session_whose_journal_fills_says_logged_out_last_and_detaches() {
        let mut ep = logged_on();
        let mut buf = [0u8; 4096];
        let mut k = 0;
        // The reader takes nothing: replies pile up in the journal (8) until it holds nothing
        // but unsent ones; the next request is not processed.
        while k < 20 {
            request(&mut ep, k);
            k += 1;
            if ep.sessions().next().is_some_and(|s| !s.state.is_attached()) {
                break;
            }
            ep.unblock(NOW);
            assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).is_none());
        }
        assert_eq!(k, 8, "the slow reader is found when the journal is full of unsent replies");
        let events: Vec<_> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(events.contains(&EndpointEvent::SlowReader(ConnId(0))), "{events:?}");
        assert_eq!(ep.counters().get(Counter::SendBackpressure), 0, "no reply was refused");
        // Its one last transmit, whatever the room: the LoggedOut, marked last.
        let t = ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).expect("LoggedOut");
        assert!(t.last);
        let m = Message::decode_frame(crate::protocol::split_frame(&buf[..t.len]).unwrap().0);
        let m = m.unwrap();
        assert_eq!(m.body, Body::LoggedOut { reason: b"send queue full" });
        assert_eq!(m.header.seq, 10, "after the LogonResponse and 8 replies");
        let events: Vec<_> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(events.contains(&EndpointEvent::CloseConnection(ConnId(0))), "{events:?}");
        let s = ep.sessions().next().unwrap();
        assert_eq!(s.state, State::Detached, "kept for resume");
        assert_eq!(s.expected_in, 10, "requests 2..=9 processed, the ninth not");
    }
}
