//! Hosts (DESIGN.md §1.6): each logged-on session of a device group that names a `[[hosts]]`
//! entry gets its own TCP connection to that host, bridged with HostData (400 in, 401 out) and
//! HostStatus (402), and kept through detach and resume until the session ends.
//!
//! Sans-IO like the session core: [`HostBridge`] makes no syscalls and reads no clock. It takes
//! HostData from sessions (through [`HostApp`], the [`Application`] a host's device group
//! selects) and host events from the shard ([`HostBridge::connected`],
//! [`HostBridge::from_host`], [`HostBridge::host_closed`], ...), sends to sessions through a
//! closure the caller gives (an application's `Outbox` or the endpoint), and asks the shard for
//! I/O with [`HostIo`] requests (connect, send, close, pause or resume reading, log a session
//! out), which the shard carries out on its own backend.
//!
//! The per-session state lives in a side table, a pool of `host_limits.max_sessions_per_shard`
//! slots preallocated at start-up (with their buffers) and found by the session's slot index
//! or the connection id: the session record carries nothing for hosts.
//!
//! Flow control: host bytes are read `host_limits.read_bytes` at a time into the slot and cut
//! into 401 messages no larger than a journal slot. When the session refuses one (its journal
//! holds nothing but unsent messages), the rest waits in the slot and reading stops until the
//! session has room again: the host meets TCP flow control, the shard never waits. While the
//! device is away the session journals everything (the ring keeps the newest
//! `journal.messages_per_session`), and a resume that finds its missed messages evicted gets the
//! usual LoggedOut("resend window exceeded"), never a silent gap.
#![forbid(unsafe_code)]

use core::cmp::Reverse;
use core::time::Duration;
use std::cell::RefCell;
use std::collections::{BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::rc::Rc;

use crate::ids::{ConnId, SessionHandle};
use crate::protocol::{
    HEADER_LEN, HOST_DATA_FROM_HOST, HOST_STATUS, HostMessage, HostState, StatusBuf,
};
use crate::session::{AppMessage, Application, Outbox, SendError};
use crate::time::Timestamp;

/// One `[[hosts]]` entry, as the shards use it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostSpec {
    /// Its name (the `host` label on `/metrics`).
    pub name: String,
    /// Where to connect.
    pub addr: SocketAddr,
    /// Not connected by then: UNREACHABLE.
    pub connect_timeout: Duration,
    /// TCP keepalive idle time.
    pub keepalive: Option<Duration>,
    /// Nothing either way this long: IDLE_TIMEOUT.
    pub idle_timeout: Option<Duration>,
    /// Sent to the host before closing on inactivity.
    pub idle_message: Vec<u8>,
}

/// Sizes of a shard's bridge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BridgeLimits {
    /// Host connections at once (`host_limits.max_sessions_per_shard`).
    pub max_hosts: usize,
    /// Sessions of the shard (`gateway.max_sessions_per_shard`): the index by session.
    pub max_sessions: usize,
    /// Connection ids of the shard (device connections and hosts together).
    pub max_conn_ids: usize,
    /// Bytes read from a host at a time (`host_limits.read_bytes`); each slot holds two reads.
    pub read_bytes: usize,
    /// Device bytes held for a host that does not read (`host_limits.to_host_bytes`).
    pub to_host_bytes: usize,
    /// Largest 401 body: a journal slot less the header.
    pub max_chunk: usize,
}

impl BridgeLimits {
    /// The largest HostData body a journal slot of `slot_bytes` (padded) holds.
    pub fn chunk_for_slot(slot_bytes: usize) -> usize {
        (slot_bytes & !7).saturating_sub(HEADER_LEN).max(1)
    }
}

/// What the shard must do for the bridge, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostIo {
    /// Open a connection for `slot` ([`HostBridge::connect_started`] with the outcome).
    Connect {
        /// The bridge slot.
        slot: u32,
        /// The host.
        addr: SocketAddr,
        /// Keepalive idle time.
        keepalive: Option<Duration>,
    },
    /// Hand `slot`'s waiting device bytes to its connection ([`HostBridge::flush_to_host`]).
    Send {
        /// The bridge slot.
        slot: u32,
    },
    /// Close the connection gracefully (what is queued, then FIN).
    Close {
        /// The connection.
        conn: ConnId,
    },
    /// Stop (`false`) or resume reading the connection.
    Read {
        /// The connection.
        conn: ConnId,
        /// Resume.
        on: bool,
    },
    /// End the session with LoggedOut(`why`). A session away from its device cannot be told
    /// now: it is told when it resumes (the request comes again from [`HostBridge::logon`]).
    Logout {
        /// The session.
        session: SessionHandle,
        /// The LoggedOut reason.
        why: &'static str,
    },
}

counts! {
    /// Per-host figures: gauges and counters, for `/metrics`; `merge` sums shards' figures,
    /// gauges and counters alike.
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct HostStats {
        /// Connections up now.
        pub connected: u64,
        /// Connections being opened now.
        pub connecting: u64,
        /// Bytes read from the host.
        pub bytes_in: u64,
        /// Bytes written to the host.
        pub bytes_out: u64,
        /// Sessions ended because the host could not be reached (refused, timed out, no
        /// descriptors, no room).
        pub unreachable: u64,
        /// Sessions ended because the host closed.
        pub closed_by_host: u64,
        /// Sessions ended by the host's inactivity timeout.
        pub idle_timeout: u64,
        /// Connects refused for want of file descriptors (also in `unreachable`).
        pub no_fds: u64,
        /// Sessions ended because the host did not read what the device sent.
        pub not_reading: u64,
    }
}

impl HostStats {
    /// A connection leaves `phase`: the connecting or connected gauge it counted in drops.
    fn leave(&mut self, phase: &Phase) {
        match phase {
            Phase::Connecting => self.connecting = self.connecting.saturating_sub(1),
            Phase::Connected => self.connected = self.connected.saturating_sub(1),
            _ => {}
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Free,
    /// Connect asked for; `conn` set once the shard started it.
    Connecting,
    Connected,
    /// The host side is over (closed, unreachable, idle) and the session was told; its
    /// LoggedOut waits for the device to come back (`why`).
    Ended(&'static str),
    /// The session is gone: waiting for the connection's close.
    Closing,
}

const NONE: u32 = u32::MAX;

struct Slot {
    phase: Phase,
    session: SessionHandle,
    host: u8,
    conn: Option<ConnId>,
    /// Bumped when the slot is freed: stale deadlines are recognised.
    generation: u32,
    last_activity: Timestamp,
    /// The deadline in the heap for this slot, if any.
    scheduled: Option<Timestamp>,
    /// Device bytes waiting for the host (capacity `to_host_bytes`).
    to_host: Vec<u8>,
    send_queued: bool,
    /// Host bytes the session could not take yet, from `from_off` (capacity 2 × `read_bytes`).
    from_host: Vec<u8>,
    from_off: usize,
    paused: bool,
}

/// Where the bridge sends to sessions: an application's `Outbox`, or the endpoint (the shard).
pub enum SessionSink<'a, 'b> {
    /// The outbox of an application call: only statuses are sent from one, never host bytes.
    App(&'a mut Outbox<'b>),
    /// The endpoint, at `now`.
    Endpoint {
        /// The endpoint.
        endpoint: &'a mut crate::session::Endpoint,
        /// The time.
        now: Timestamp,
    },
}

impl SessionSink<'_, '_> {
    /// The outbox to send through.
    pub fn outbox(&mut self) -> Outbox<'_> {
        match self {
            Self::App(out) => out.reborrow(),
            Self::Endpoint { endpoint, now } => endpoint.outbox(*now),
        }
    }

    /// Messages `session` takes before one would evict what its device has not acknowledged
    /// (`Endpoint::app_window`).
    pub fn window(&self, session: SessionHandle) -> usize {
        match self {
            Self::App(_) => usize::MAX,
            Self::Endpoint { endpoint, .. } => endpoint.app_window(session),
        }
    }
}

/// Queues bytes on a connection (the backend's `send_tcp`).
pub type SendTcp<'a> = dyn FnMut(ConnId, &[u8]) -> Result<(), crate::io::SendError> + 'a;

/// A shard's host connections (see the module docs).
pub struct HostBridge {
    specs: Vec<HostSpec>,
    limits: BridgeLimits,
    slots: Vec<Slot>,
    free: Vec<u32>,
    by_session: Vec<u32>,
    by_conn: Vec<u32>,
    io: VecDeque<HostIo>,
    /// Slots holding host bytes their session could not take yet.
    waiting: Vec<u32>,
    deadlines: BinaryHeap<Reverse<(Timestamp, u32, u32)>>,
    stats: Vec<HostStats>,
}

impl core::fmt::Debug for HostBridge {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HostBridge")
            .field("hosts", &self.specs.len())
            .field("in_use", &(self.slots.len() - self.free.len()))
            .finish()
    }
}

impl HostBridge {
    /// Allocates every slot and buffer up front.
    pub fn new(specs: Vec<HostSpec>, limits: BridgeLimits) -> Self {
        let n = limits.max_hosts;
        let slots = (0..n)
            .map(|_| Slot {
                phase: Phase::Free,
                session: SessionHandle::new(0, 0),
                host: 0,
                conn: None,
                generation: 0,
                last_activity: Timestamp::ZERO,
                scheduled: None,
                to_host: Vec::with_capacity(limits.to_host_bytes),
                send_queued: false,
                from_host: Vec::with_capacity(2 * limits.read_bytes),
                from_off: 0,
                paused: false,
            })
            .collect();
        let stats = vec![HostStats::default(); specs.len()];
        Self {
            specs,
            limits,
            slots,
            free: (0..n as u32).rev().collect(),
            by_session: vec![NONE; limits.max_sessions],
            by_conn: vec![NONE; limits.max_conn_ids],
            io: VecDeque::with_capacity(6 * n + 16),
            waiting: Vec::with_capacity(n),
            deadlines: BinaryHeap::with_capacity(4 * n + 16),
            stats,
        }
    }

    /// The hosts, in `[[hosts]]` order.
    pub fn specs(&self) -> &[HostSpec] {
        &self.specs
    }

    /// Per-host figures, in `[[hosts]]` order.
    pub fn stats(&self) -> &[HostStats] {
        &self.stats
    }

    /// Host connections in use (connecting, connected or closing).
    pub fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// The next I/O request for the shard.
    pub fn take_io(&mut self) -> Option<HostIo> {
        self.io.pop_front()
    }

    /// True while I/O requests wait.
    pub fn has_io(&self) -> bool {
        !self.io.is_empty()
    }

    /// True if `conn` is one of the bridge's host connections.
    pub fn owns(&self, conn: ConnId) -> bool {
        self.by_conn.get(conn.0 as usize).is_some_and(|&s| s != NONE)
    }

    fn slot_of(&self, session: SessionHandle) -> Option<u32> {
        let s = *self.by_session.get(session.index() as usize)?;
        (s != NONE && self.slots[s as usize].session == session).then_some(s)
    }

    fn status(
        send: &mut SessionSink<'_, '_>,
        session: SessionHandle,
        state: HostState,
        details: &[u8],
    ) {
        // A refused status (the session is ending, or its journal is full of unsent messages)
        // is not retried: the LoggedOut that follows says it.
        let _ = send.outbox().send(session, HOST_STATUS, StatusBuf::new(state, details).as_bytes());
    }

    fn schedule(&mut self, slot: u32, at: Timestamp) {
        let s = &mut self.slots[slot as usize];
        if s.scheduled.is_some_and(|t| t <= at) {
            return;
        }
        s.scheduled = Some(at);
        self.deadlines.push(Reverse((at, slot, s.generation)));
    }

    /// A session of `host` logged on or resumed (from [`HostApp::on_logon`]): a new session
    /// gets CONNECTING and a connect; a resumed one keeps its connection (or, if its host went
    /// away while it was away, now gets its LoggedOut).
    pub fn logon(
        &mut self,
        now: Timestamp,
        session: SessionHandle,
        host: u8,
        send: &mut SessionSink<'_, '_>,
    ) {
        if let Some(slot) = self.slot_of(session) {
            if let Phase::Ended(why) = self.slots[slot as usize].phase {
                self.io.push_back(HostIo::Logout { session, why });
            }
            return;
        }
        let Some(spec) = self.specs.get(usize::from(host)) else { return };
        let (addr, keepalive, timeout) = (spec.addr, spec.keepalive, spec.connect_timeout);
        let Some(slot) = self.free.pop() else {
            self.stats[usize::from(host)].unreachable += 1;
            Self::status(send, session, HostState::Unreachable, b"too many host sessions");
            self.io.push_back(HostIo::Logout { session, why: "host unreachable" });
            return;
        };
        let s = &mut self.slots[slot as usize];
        s.phase = Phase::Connecting;
        s.session = session;
        s.host = host;
        s.conn = None;
        s.last_activity = now;
        s.to_host.clear();
        s.send_queued = false;
        s.from_host.clear();
        s.from_off = 0;
        s.paused = false;
        self.by_session[session.index() as usize] = slot;
        self.stats[usize::from(host)].connecting += 1;
        let name = self.specs[usize::from(host)].name.as_bytes();
        Self::status(send, session, HostState::Connecting, name);
        self.io.push_back(HostIo::Connect { slot, addr, keepalive });
        self.schedule(slot, now + timeout);
    }

    /// The shard started the connect of `slot`: its connection id, or why it could not.
    pub fn connect_started(
        &mut self,
        now: Timestamp,
        slot: u32,
        result: std::io::Result<ConnId>,
        send: &mut SessionSink<'_, '_>,
    ) {
        let s = &mut self.slots[slot as usize];
        if s.phase != Phase::Connecting || s.conn.is_some() {
            // The session ended (or the connect timed out) before the connect was started.
            match result {
                Ok(conn) => {
                    s.conn = Some(conn);
                    self.by_conn[conn.0 as usize] = slot;
                    self.io.push_back(HostIo::Close { conn });
                }
                Err(_) if s.phase == Phase::Closing => self.release(slot),
                Err(_) => {}
            }
            return;
        }
        match result {
            Ok(conn) => {
                s.conn = Some(conn);
                self.by_conn[conn.0 as usize] = slot;
            }
            Err(e) => {
                let no_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                if no_fds {
                    self.stats[usize::from(s.host)].no_fds += 1;
                    self.unreachable(now, slot, b"no file descriptors", send);
                } else {
                    let details = format!("{e}");
                    self.unreachable(now, slot, details.as_bytes(), send);
                }
            }
        }
    }

    /// `conn`'s connect completed.
    pub fn connected(&mut self, now: Timestamp, conn: ConnId, send: &mut SessionSink<'_, '_>) {
        let Some(slot) = self.by_conn.get(conn.0 as usize).copied().filter(|&s| s != NONE) else {
            return;
        };
        let s = &mut self.slots[slot as usize];
        if s.phase != Phase::Connecting {
            return;
        }
        s.phase = Phase::Connected;
        s.last_activity = now;
        let (session, host) = (s.session, usize::from(s.host));
        let st = &mut self.stats[host];
        st.connecting = st.connecting.saturating_sub(1);
        st.connected += 1;
        Self::status(send, session, HostState::Connected, self.specs[host].name.as_bytes());
        if let Some(idle) = self.specs[host].idle_timeout {
            self.schedule(slot, now + idle);
        }
    }

    /// `conn`'s connect failed with `errno`; its close follows.
    pub fn connect_failed(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        errno: i32,
        send: &mut SessionSink<'_, '_>,
    ) {
        let Some(slot) = self.by_conn.get(conn.0 as usize).copied().filter(|&s| s != NONE) else {
            return;
        };
        if self.slots[slot as usize].phase == Phase::Connecting {
            let details = std::io::Error::from_raw_os_error(errno).to_string();
            self.unreachable(now, slot, details.as_bytes(), send);
        }
    }

    fn unreachable(
        &mut self,
        _now: Timestamp,
        slot: u32,
        details: &[u8],
        send: &mut SessionSink<'_, '_>,
    ) {
        let s = &self.slots[slot as usize];
        let (session, host) = (s.session, usize::from(s.host));
        self.stats[host].unreachable += 1;
        Self::status(send, session, HostState::Unreachable, details);
        self.host_over(slot, "host unreachable");
    }

    /// The host side of `slot` is over: close the connection (the shard skips a connection
    /// already gone), and log the session out.
    fn host_over(&mut self, slot: u32, why: &'static str) {
        let s = &mut self.slots[slot as usize];
        self.stats[usize::from(s.host)].leave(&s.phase);
        s.phase = Phase::Ended(why);
        if let Some(conn) = s.conn {
            // Still mapped: its close (`host_closed`) frees nothing until the session ends.
            self.io.push_back(HostIo::Close { conn });
        }
        let session = s.session;
        self.io.push_back(HostIo::Logout { session, why });
    }

    /// Application messages from a session of a host group (from [`HostApp::on_message`]):
    /// HostData goes to the host; anything else is ignored.
    pub fn from_device(
        &mut self,
        now: Timestamp,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
        _send: &mut SessionSink<'_, '_>,
    ) {
        let Ok(Some(HostMessage::ToHost(bytes))) = HostMessage::decode(type_id, body) else {
            return;
        };
        let Some(slot) = self.slot_of(session) else { return };
        let cap = self.limits.to_host_bytes;
        let s = &mut self.slots[slot as usize];
        if !matches!(s.phase, Phase::Connecting | Phase::Connected) {
            return;
        }
        s.last_activity = now;
        if s.to_host.len() + bytes.len() > cap {
            self.stats[usize::from(s.host)].not_reading += 1;
            self.host_over(slot, "host not reading");
            return;
        }
        s.to_host.extend_from_slice(bytes);
        if !s.send_queued {
            s.send_queued = true;
            self.io.push_back(HostIo::Send { slot });
        }
    }

    /// Hands `slot`'s waiting device bytes to `send_tcp` (the backend); if it is full they wait
    /// for the next pass.
    pub fn flush_to_host(&mut self, slot: u32, send_tcp: &mut SendTcp<'_>) {
        let s = &mut self.slots[slot as usize];
        s.send_queued = false;
        // An ended slot still sends what was queued before its close (the inactivity message).
        if s.to_host.is_empty() || matches!(s.phase, Phase::Free | Phase::Closing) {
            return;
        }
        let Some(conn) = s.conn else {
            // The connect has not started yet: try again after it.
            s.send_queued = true;
            self.io.push_back(HostIo::Send { slot });
            return;
        };
        match send_tcp(conn, &s.to_host) {
            Ok(()) => {
                self.stats[usize::from(s.host)].bytes_out += s.to_host.len() as u64;
                s.to_host.clear();
            }
            Err(crate::io::SendError::Full) => {
                s.send_queued = true;
                self.io.push_back(HostIo::Send { slot });
            }
            Err(crate::io::SendError::Closed) => s.to_host.clear(),
        }
    }

    /// Bytes read from host connection `conn`: to its session as 401 messages; what does not
    /// fit waits and reading stops.
    pub fn from_host(
        &mut self,
        now: Timestamp,
        conn: ConnId,
        data: &[u8],
        send: &mut SessionSink<'_, '_>,
    ) {
        let Some(slot) = self.by_conn.get(conn.0 as usize).copied().filter(|&s| s != NONE) else {
            return;
        };
        let s = &mut self.slots[slot as usize];
        if s.phase != Phase::Connected {
            return;
        }
        s.last_activity = now;
        self.stats[usize::from(s.host)].bytes_in += data.len() as u64;
        if s.from_host.len() + data.len() > s.from_host.capacity() {
            // Reading stops as soon as bytes wait and resumes only once they are all sent; the
            // buffer holds two reads, for one the backend had already started when it stopped.
            // Bounded all the same.
            self.stats[usize::from(s.host)].not_reading += 1;
            self.host_over(slot, "host output overflow");
            return;
        }
        s.from_host.extend_from_slice(data);
        if !self.drain(slot, send) && !self.slots[slot as usize].paused {
            let s = &mut self.slots[slot as usize];
            s.paused = true;
            self.io.push_back(HostIo::Read { conn, on: false });
            self.waiting.push(slot);
        }
    }

    /// Sends what `slot` holds from its host, cut to journal slots; true when all went.
    fn drain(&mut self, slot: u32, send: &mut SessionSink<'_, '_>) -> bool {
        let max = self.limits.max_chunk;
        let s = &mut self.slots[slot as usize];
        let mut window = send.window(s.session);
        while s.from_off < s.from_host.len() {
            if window == 0 {
                // Its device has not acknowledged a journal's worth: wait for it.
                return false;
            }
            window -= 1;
            let end = (s.from_off + max).min(s.from_host.len());
            match send.outbox().send(s.session, HOST_DATA_FROM_HOST, &s.from_host[s.from_off..end])
            {
                Ok(_) => s.from_off = end,
                Err(SendError::Backpressure) => return false,
                // The session is ending or gone: nothing more reaches it.
                Err(_) => s.from_off = s.from_host.len(),
            }
        }
        s.from_host.clear();
        s.from_off = 0;
        true
    }

    /// Retries the slots whose sessions could not take their host's bytes; resumes reading
    /// those that could. Call once per pass, after output was drained.
    pub fn retry(&mut self, send: &mut SessionSink<'_, '_>) {
        let mut i = 0;
        while i < self.waiting.len() {
            let slot = self.waiting[i];
            let s = &self.slots[slot as usize];
            let live = s.phase == Phase::Connected && s.paused;
            if live && !self.drain(slot, send) {
                i += 1;
                continue;
            }
            let s = &mut self.slots[slot as usize];
            if live {
                s.paused = false;
                if let Some(conn) = s.conn {
                    self.io.push_back(HostIo::Read { conn, on: true });
                }
            }
            self.waiting.swap_remove(i);
        }
    }

    /// Host connection `conn` is closed (by the host, after a failed connect, or after the
    /// bridge asked): CLOSED_BY_HOST and LoggedOut if the host did it; its slot is freed once
    /// its session is gone too.
    pub fn host_closed(&mut self, now: Timestamp, conn: ConnId, send: &mut SessionSink<'_, '_>) {
        let Some(slot) = self.by_conn.get(conn.0 as usize).copied().filter(|&s| s != NONE) else {
            return;
        };
        self.by_conn[conn.0 as usize] = NONE;
        if self.slots[slot as usize].phase == Phase::Connected {
            // What the host said before closing goes first.
            self.drain(slot, send);
            let s = &self.slots[slot as usize];
            let (session, host) = (s.session, usize::from(s.host));
            self.stats[host].closed_by_host += 1;
            Self::status(send, session, HostState::ClosedByHost, b"");
            self.host_over(slot, "host closed");
        } else if self.slots[slot as usize].phase == Phase::Connecting {
            // Closed without a connect result: unreachable.
            self.unreachable(now, slot, b"connection closed", send);
        }
        let s = &mut self.slots[slot as usize];
        s.conn = None;
        if s.phase == Phase::Closing {
            self.release(slot);
        }
    }

    /// The session ended (its slot released): close its host connection.
    pub fn session_ended(&mut self, session: SessionHandle) {
        let Some(slot) = self.slot_of(session) else { return };
        self.by_session[session.index() as usize] = NONE;
        let s = &mut self.slots[slot as usize];
        self.stats[usize::from(s.host)].leave(&s.phase);
        match s.conn {
            Some(conn) => {
                if !matches!(s.phase, Phase::Ended(_)) {
                    self.io.push_back(HostIo::Close { conn });
                }
                s.phase = Phase::Closing;
            }
            // A connect asked for and not started yet is closed when it starts.
            None if s.phase == Phase::Connecting => s.phase = Phase::Closing,
            None => self.release(slot),
        }
    }

    fn release(&mut self, slot: u32) {
        let s = &mut self.slots[slot as usize];
        s.phase = Phase::Free;
        s.conn = None;
        s.generation = s.generation.wrapping_add(1);
        s.scheduled = None;
        s.paused = false;
        s.from_host.clear();
        s.from_off = 0;
        s.to_host.clear();
        s.send_queued = false;
        self.free.push(slot);
    }

    /// The earliest deadline (connect or inactivity timeout).
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.deadlines.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Fires every due deadline: connect timeouts (UNREACHABLE) and inactivity (the last
    /// message to the host, IDLE_TIMEOUT, LoggedOut).
    pub fn handle_timeout(&mut self, now: Timestamp, send: &mut SessionSink<'_, '_>) {
        while let Some(&Reverse((t, slot, generation))) = self.deadlines.peek() {
            if t > now {
                break;
            }
            self.deadlines.pop();
            let s = &mut self.slots[slot as usize];
            if s.generation != generation || s.scheduled != Some(t) {
                continue;
            }
            s.scheduled = None;
            let host = usize::from(s.host);
            match s.phase {
                Phase::Connecting => {
                    self.unreachable(now, slot, b"connect timeout", send);
                }
                Phase::Connected => {
                    let Some(idle) = self.specs[host].idle_timeout else { continue };
                    let due = s.last_activity + idle;
                    if due > now {
                        self.schedule(slot, due);
                        continue;
                    }
                    let session = s.session;
                    let msg = &self.specs[host].idle_message;
                    if !msg.is_empty() && s.to_host.len() + msg.len() <= s.to_host.capacity() {
                        // Queued ahead of the close that `host_over` asks for.
                        s.to_host.extend_from_slice(msg);
                        if !s.send_queued {
                            s.send_queued = true;
                            self.io.push_back(HostIo::Send { slot });
                        }
                    }
                    self.stats[host].idle_timeout += 1;
                    Self::status(send, session, HostState::IdleTimeout, b"");
                    self.host_over(slot, "host inactivity timeout");
                }
                _ => {}
            }
        }
    }
}

/// The [`Application`] of a device group whose `host` names a `[[hosts]]` entry: one per
/// entry, all sharing the shard's [`HostBridge`].
pub struct HostApp {
    bridge: Rc<RefCell<HostBridge>>,
    host: u8,
}

impl HostApp {
    /// The application for host `host` (its index in `[[hosts]]`).
    pub fn new(bridge: Rc<RefCell<HostBridge>>, host: u8) -> Self {
        Self { bridge, host }
    }
}

impl Application for HostApp {
    fn on_message(&mut self, now: Timestamp, msg: AppMessage<'_>, out: &mut Outbox<'_>) {
        let AppMessage { session, type_id, body } = msg;
        self.bridge.borrow_mut().from_device(
            now,
            session,
            type_id,
            body,
            &mut SessionSink::App(out),
        );
    }

    fn on_logon(&mut self, now: Timestamp, session: SessionHandle, out: &mut Outbox<'_>) {
        self.bridge.borrow_mut().logon(now, session, self.host, &mut SessionSink::App(out));
    }
}
