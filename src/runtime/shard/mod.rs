//! A shard: one pinned thread that owns an [`Endpoint`], an I/O backend, its TCP connections
//! ([`conn`]), counters and histograms (DESIGN.md §3). Nothing here is shared: input arrives
//! from the acceptor over an SPSC queue, snapshots leave for housekeeping over another, and the
//! buffers of both are recycled so the loop does not allocate once warm.
//!
//! [`Shard::do_work`] is one bounded pass of the duty cycle (STYLE rule 15, Aeron's
//! `do_work`): take at most `gateway.handoffs_per_pass` handoffs, poll the backend without
//! waiting (it reports at most a few batches), fire due timers, abort connections whose linger
//! ran out, drain output within each connection's room, flush, and publish a snapshot every
//! `gateway.snapshot_interval_ms`. It returns how much it did; after a pass with nothing done,
//! the [`IdleStrategy`] ([`idle`]) decides how long the next pass's input step may wait in the
//! kernel (until input or the next deadline), or spins first: one poll per pass. [`run`] is that loop on a shard thread; the simulator
//! drives the same [`Shard`] over an in-memory backend in virtual time (`sim::MemBackend`).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::apps::host::{HostApp, HostBridge, HostIo, SessionSink};
use crate::config::Config;
use crate::counters::{Counter, Counters};
use crate::io::{Backend, BackendSpec, ConnectOpts, IoEvent, SendError};
use crate::protocol::{Body, Message};
use crate::runtime::control::{Answer, COMMANDS_PER_PASS, Command, ShardControl};
use crate::runtime::handoff::Handoff;
use crate::runtime::report::{SESSION_ROWS, SESSION_SLOTS_PER_SNAPSHOT, Snapshot};
use crate::session::handshake::{CookieKeys, cookie_keys};
use crate::session::{Authenticator, ConnId, Endpoint, EndpointEvent, Link};
use crate::time::{Clock, Timestamp};

mod conn;
pub mod idle;
pub mod tap;

use conn::{Conn, Linger};
pub use idle::IdleStrategy;
use tap::{Seen, Tap, TraceFilter, TraceRecord};

/// A pass whose output reaches this many bytes hands them to the kernel before building more
/// (once per pass): the first messages of a large output such as a 10,000-message resend leave
/// after 16 KiB is built rather than all of it (first resent message at the device: see
/// `fleetgate load resend-burst`). Echo passes stay far below it (one flush per pass).
const EARLY_FLUSH_BYTES: usize = 16 * 1024;

/// Everything a shard thread needs: plain data and queue ends, `Send`, so the thread builds its
/// backend and endpoint itself.
pub struct ShardSpec {
    /// Index.
    pub index: usize,
    /// The configuration (limits, application, groups).
    pub config: Arc<Config>,
    /// What to build the backend from (on the shard thread).
    pub backend: BackendSpec,
    /// Handoffs from the acceptor.
    pub handoffs: rtrb::Consumer<Handoff>,
    /// Snapshots to housekeeping, and the empty ones coming back.
    pub publish: Publish,
    /// Credentials.
    pub auth: Arc<dyn Authenticator + Send + Sync>,
    /// Start-up secret for cookies and session ids.
    pub master: [u8; 32],
    /// Time base.
    pub clock: Clock,
    /// Set by the signal handler.
    pub shutdown: Arc<AtomicBool>,
    /// Core to pin to.
    pub core: Option<core_affinity::CoreId>,
    /// Protocol trace: which devices, and the queue to the writer.
    pub trace: Option<(TraceFilter, rtrb::Producer<TraceRecord>)>,
    /// Operator commands (drain, undrain, disconnect) and their answers.
    pub control: ShardControl,
    /// Told once the backend is built (its name) or could not be (why).
    pub ready: std::sync::mpsc::SyncSender<Result<&'static str, String>>,
}

/// The two ends of a shard's snapshot queues.
pub struct Publish {
    /// Filled snapshots to housekeeping.
    pub snapshots: rtrb::Producer<Box<Snapshot>>,
    /// Empty snapshots back from housekeeping.
    pub recycled: rtrb::Consumer<Box<Snapshot>>,
}

/// The shard's settings, from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// Largest inbound TCP message (`tcp.max_message_bytes`).
    pub max_message_bytes: usize,
    /// TCP connection slots (`tcp.max_connections_per_shard`).
    pub max_connections: usize,
    /// Handoffs taken per pass (`gateway.handoffs_per_pass`).
    pub handoffs_per_pass: usize,
    /// How long a connection the shard closes has to read what is queued and close its end
    /// (`tcp.close_linger_ms`).
    pub close_linger: Duration,
    /// How long to wait for LoggedOut to go out on shutdown (`gateway.drain_timeout_ms`).
    pub drain_timeout: Duration,
    /// Snapshot period (`gateway.snapshot_interval_ms`).
    pub snapshot_interval: Duration,
    /// Cookie key rotation period (`udp.cookie_rotate_s`).
    pub cookie_rotate: Duration,
    /// Histogram upper bound (`observability.latency_ns_max`).
    pub latency_ns_max: u64,
    /// Sessions logged out per second after a drain's deadline (`gateway.drain_logouts_per_s`).
    pub drain_logouts_per_s: u32,
    /// Bytes read from a host at a time (`host_limits.read_bytes`).
    pub host_read_bytes: usize,
}

impl Settings {
    /// From the configuration.
    pub fn new(cfg: &Config) -> Self {
        Self {
            max_message_bytes: cfg.tcp.max_message_bytes,
            max_connections: cfg.connection_ids_per_shard(),
            handoffs_per_pass: cfg.gateway.handoffs_per_pass,
            close_linger: Duration::from_millis(cfg.tcp.close_linger_ms),
            drain_timeout: Duration::from_millis(cfg.gateway.drain_timeout_ms),
            snapshot_interval: Duration::from_millis(cfg.gateway.snapshot_interval_ms),
            cookie_rotate: Duration::from_secs(cfg.udp.cookie_rotate_s.max(1)),
            latency_ns_max: cfg.observability.latency_ns_max,
            drain_logouts_per_s: cfg.gateway.drain_logouts_per_s.max(1),
            host_read_bytes: cfg.host_limits.read_bytes,
        }
    }
}

/// One shard: an endpoint driven over a backend (see the module docs).
pub struct Shard<B: Backend> {
    index: usize,
    endpoint: Endpoint,
    backend: B,
    conns: Vec<Conn>,
    /// Closing connections in the order their lingers started, which is deadline order (every
    /// linger is `close_linger` long): an index into `conns`, so the next deadline is the front.
    lingering: std::collections::VecDeque<(ConnId, Timestamp)>,
    /// Connections adopted and not yet reported closed.
    open: usize,
    tap: Tap,
    counters: Counters,
    /// This interval's histograms (merged into a recycled snapshot when published).
    local: Snapshot,
    handoffs: Option<rtrb::Consumer<Handoff>>,
    publish: Option<Publish>,
    settings: Settings,
    master: [u8; 32],
    keys: CookieKeys,
    next_snapshot: Timestamp,
    /// Where the next snapshot's page of the connections list starts.
    sessions_cursor: u32,
    drain_deadline: Option<Timestamp>,
    /// An operator drain under way (its deadline and logouts).
    operator_drain: Option<OperatorDrain>,
    /// Operator commands, if connected.
    control: Option<ShardControl>,
    finished: bool,
    /// Transmit buffer (64 KiB: the largest TCP write, `SessionConfig::max_tcp_write`).
    buf: Vec<u8>,
    /// One TCP frame, copied out of its deframer.
    frame: Vec<u8>,
    /// When this pass's first input arrived.
    first_input: Option<Instant>,
    /// What to do after a pass with nothing done.
    idle: IdleStrategy,
    /// When the current run of idle passes began.
    idle_since: Option<Instant>,
    /// How long the next pass's input step may wait.
    wait: Duration,
    /// Stamps input after a wait (`None`: the simulator's virtual time).
    clock: Option<Clock>,
    /// Host connections (DESIGN.md §1.6), shared with the endpoint's host applications.
    hosts: Option<Rc<RefCell<HostBridge>>>,
}

impl<B: Backend> Shard<B> {
    /// A shard over `backend`, with `endpoint` built for it (cookie keys from `master` at
    /// `now`).
    pub fn new(
        index: usize,
        endpoint: Endpoint,
        backend: B,
        settings: Settings,
        (master, now): ([u8; 32], Timestamp),
        tap: Tap,
    ) -> Self {
        let keys = cookie_keys(&master, now, settings.cookie_rotate);
        let mut endpoint = endpoint;
        endpoint.rotate_keys(keys);
        Self {
            index,
            endpoint,
            backend,
            conns: (0..settings.max_connections)
                .map(|_| Conn::new(settings.max_message_bytes))
                .collect(),
            lingering: std::collections::VecDeque::with_capacity(settings.max_connections),
            open: 0,
            tap,
            counters: Counters::default(),
            local: Snapshot::new(0, settings.latency_ns_max),
            handoffs: None,
            publish: None,
            settings,
            master,
            keys,
            next_snapshot: now + settings.snapshot_interval,
            sessions_cursor: 0,
            drain_deadline: None,
            operator_drain: None,
            control: None,
            finished: false,
            buf: vec![0u8; 64 * 1024],
            frame: vec![0u8; settings.max_message_bytes.max(64)],
            first_input: None,
            idle: IdleStrategy::Park,
            idle_since: None,
            wait: Duration::ZERO,
            clock: None,
            hosts: None,
        }
    }

    /// Bridges host groups' sessions to their hosts with `bridge` (whose [`HostApp`]s the
    /// endpoint holds: see [`attach_hosts`]).
    pub fn set_hosts(&mut self, bridge: Rc<RefCell<HostBridge>>) {
        self.hosts = Some(bridge);
    }

    /// The host bridge, if any (for tests and the simulator).
    pub fn hosts(&self) -> Option<&Rc<RefCell<HostBridge>>> {
        self.hosts.as_ref()
    }

    /// Takes handoffs from `rx` and publishes snapshots to `publish` (the runtime; a simulation
    /// does neither).
    pub fn connect(&mut self, rx: rtrb::Consumer<Handoff>, publish: Publish) {
        self.handoffs = Some(rx);
        self.publish = Some(publish);
    }

    /// Takes operator commands from `control` and answers there (the runtime; see
    /// [`crate::runtime::control`]).
    pub fn set_control(&mut self, control: ShardControl) {
        self.control = Some(control);
    }

    /// Applies one operator command at `now` (what the command queue delivers; public for
    /// tests and the simulator).
    pub fn command(&mut self, now: Timestamp, cmd: Command) -> Answer {
        self.counters.incr(Counter::OperatorCommands);
        match cmd {
            Command::Drain { deadline } => {
                self.endpoint.set_draining(true);
                self.operator_drain =
                    Some(OperatorDrain { deadline: now + deadline, logged_out: 0, walked: false });
                tracing::info!(shard = self.index, ?deadline, "draining");
                Answer::Done
            }
            Command::Undrain => {
                self.endpoint.set_draining(false);
                self.operator_drain = None;
                tracing::info!(shard = self.index, "undrained");
                Answer::Done
            }
            Command::Disconnect { key, len } => {
                let key = &key[..usize::from(len).min(key.len())];
                Answer::Disconnected(self.endpoint.disconnect(now, key))
            }
        }
    }

    /// Takes at most [`COMMANDS_PER_PASS`] operator commands and answers them.
    fn take_commands(&mut self, now: Timestamp) -> usize {
        let mut n = 0;
        while n < COMMANDS_PER_PASS {
            let Some(cmd) = self.control.as_mut().and_then(|c| c.commands.pop().ok()) else {
                break;
            };
            n += 1;
            let answer = self.command(now, cmd);
            if let Some(c) = self.control.as_mut() {
                // The queue holds as many answers as commands: never full for a prompt reader;
                // a reader that gave up discards what is left before its next command.
                let _ = c.answers.push(answer);
            }
        }
        n
    }

    /// After a drain's deadline: logs out as many sessions as the pace allows by `now`
    /// (`drain_logouts_per_s` from the deadline; at most 1,024 per pass).
    fn drain_logouts(&mut self, now: Timestamp) -> usize {
        let rate = u64::from(self.settings.drain_logouts_per_s);
        let Some(d) = self.operator_drain.as_mut() else { return 0 };
        if d.walked || now < d.deadline {
            return 0;
        }
        let due = now.saturating_since(d.deadline).as_nanos() as u64 * rate / 1_000_000_000 + 1;
        let budget = due.saturating_sub(d.logged_out).min(1024) as usize;
        let (ended, walked) = self.endpoint.drain_logouts(now, budget);
        d.logged_out += ended as u64;
        d.walked = walked;
        if walked {
            tracing::info!(shard = self.index, sessions = d.logged_out, "drain deadline done");
        }
        ended + usize::from(walked)
    }

    /// When the operator drain next has something to do.
    fn drain_due(&self) -> Option<Timestamp> {
        let d = self.operator_drain.as_ref().filter(|d| !d.walked)?;
        let rate = u64::from(self.settings.drain_logouts_per_s);
        let next = Duration::from_nanos(d.logged_out.saturating_mul(1_000_000_000) / rate);
        Some(d.deadline + next)
    }

    /// The endpoint (read-only: for tests and the simulator).
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The backend (for the simulator's in-memory one).
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// The loop's own counters (the endpoint's are in [`Shard::endpoint`]).
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// True once shutdown has drained the shard: the loop ends.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// One bounded pass of the duty cycle at `now` (see the module docs); returns the amount of
    /// work done (0: nothing to do, the idle strategy may park).
    pub fn do_work(&mut self, now: Timestamp) -> usize {
        let started = Instant::now();
        let mut work = self.take_handoffs(now);
        work += self.take_commands(now);
        // The input step waits as long as the idle strategy chose after the last pass (not at
        // all when there is work): one poll per pass, which is where the shard parks.
        let wait = if work > 0 { Duration::ZERO } else { self.wait };
        let before_poll = started.elapsed();
        let clock = self.clock;
        work += self.poll_input(wait, &|| clock.map_or(now, |c| c.now()));
        let after_poll = Instant::now();
        // After a wait, the rest of the pass runs at the time it ended.
        let now = match clock {
            Some(c) if !wait.is_zero() => c.now(),
            _ => now,
        };
        work += self.run_timers(now);
        work += self.drain_logouts(now);
        work += self.run_hosts(now);
        work += self.flush_output(now);
        if now >= self.next_snapshot {
            self.next_snapshot = now + self.settings.snapshot_interval;
            let keys = cookie_keys(&self.master, now, self.settings.cookie_rotate);
            if keys.current != self.keys.current {
                self.keys = keys;
                self.endpoint.rotate_keys(keys);
            }
            self.publish(now);
        }
        if let Some(d) = self.drain_deadline {
            let logging_out = self.endpoint.state_counts().logging_out > 0;
            if !logging_out || now >= d {
                let _ = self.backend.flush();
                self.publish(now);
                self.finished = true;
            }
        }
        if work > 0 {
            // Time waiting in the kernel is not part of the pass's work.
            let cycle = (before_poll + after_poll.elapsed()).as_nanos() as u64;
            self.counters.raise(Counter::CycleNsMax, cycle);
            if cycle > 1_000_000 {
                self.counters.incr(Counter::CyclesOver1ms);
            }
            record(&mut self.local.latency.cycle, cycle, &mut self.counters);
        }
        let until = self.until_deadline(now);
        self.wait = self.idle.park_for(work, &mut self.idle_since, until);
        work
    }

    /// Parks with `idle` after a pass with nothing done, stamping input with `clock` (the
    /// runtime; a simulation keeps the defaults: never waits, time is what `do_work` is given).
    pub fn set_idle(&mut self, idle: IdleStrategy, clock: Clock) {
        self.idle = idle;
        self.clock = Some(clock);
    }

    /// How long until the next deadline (a session timer, a linger, the next snapshot), from
    /// `now`.
    pub fn until_deadline(&self, now: Timestamp) -> Duration {
        let mut next = self.next_snapshot;
        if let Some(t) = self.endpoint.poll_timeout() {
            next = next.min(t);
        }
        if let Some(&(_, deadline)) = self.lingering.front() {
            next = next.min(deadline);
        }
        if let Some(t) = self.drain_due() {
            next = next.min(t);
        }
        if let Some(b) = self.hosts.as_ref().map(|b| b.borrow()) {
            if b.has_io() {
                return Duration::ZERO;
            }
            if let Some(t) = b.poll_timeout() {
                next = next.min(t);
            }
        }
        if self.drain_deadline.is_some() {
            return Duration::ZERO;
        }
        next.saturating_since(now)
    }

    /// Starts the shutdown drain: every session is logged out, and the shard finishes once the
    /// goodbyes are out or `gateway.drain_timeout_ms` has passed.
    pub fn shutdown(&mut self, now: Timestamp) {
        if self.drain_deadline.is_none() {
            self.endpoint.shutdown(now);
            self.drain_deadline = Some(now + self.settings.drain_timeout);
        }
    }

    /// Adopts a connection the backend registered as `conn`: `initial` holds what the acceptor
    /// read (starting with the LogonRequest), accepted at `accepted`.
    pub fn adopt(&mut self, now: Timestamp, conn: ConnId, h: Adopted<'_>) {
        let Some(c) = self.conns.get_mut(conn.0 as usize) else { return };
        c.open(h.peer, h.accepted);
        self.open += 1;
        c.deframer.push(h.initial);
        self.feed_tcp(now, conn);
    }

    fn take_handoffs(&mut self, now: Timestamp) -> usize {
        let mut n = 0;
        while n < self.settings.handoffs_per_pass {
            let Some(h) = self.handoffs.as_mut().and_then(|rx| rx.pop().ok()) else { break };
            n += 1;
            self.counters.incr(Counter::Handoffs);
            match self.backend.register_tcp(h.stream) {
                Ok(conn) => {
                    let initial = &h.initial[..h.len.min(h.initial.len())];
                    self.adopt(now, conn, Adopted { peer: h.peer, initial, accepted: h.accepted });
                }
                Err(_) => self.counters.incr(Counter::HandoffRejected),
            }
        }
        n
    }

    /// Polls the backend (waiting at most `timeout`) and feeds what it reports to the endpoint.
    fn poll_input(&mut self, timeout: Duration, clock: &dyn Fn() -> Timestamp) -> usize {
        let Self { backend, endpoint, conns, open, tap, frame, first_input, hosts, .. } = self;
        let hosts = hosts.as_deref();
        let mut input = Input { endpoint, conns, open, tap, frame, first_input, hosts };
        let polled = backend.poll(Some(timeout), &mut |ev| input.on_event(clock(), ev));
        match polled {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(shard = self.index, error = %e, "poll failed");
                0
            }
        }
    }

    /// Fires due session timers and aborts connections whose linger ran out.
    fn run_timers(&mut self, now: Timestamp) -> usize {
        let mut work = 0;
        if self.endpoint.poll_timeout().is_some_and(|t| t <= now) {
            self.endpoint.handle_timeout(now);
            work += 1;
        }
        while let Some(&(conn, deadline)) = self.lingering.front() {
            let c = &mut self.conns[conn.0 as usize];
            match c.linger {
                // Closed before its deadline (and perhaps reused since): a stale entry.
                Some(l) if l.deadline != deadline => {}
                None => {}
                Some(l) if l.deadline <= now => {
                    c.linger = None;
                    self.counters.incr(Counter::TcpCloseAborted);
                    if l.slow {
                        self.counters.incr(Counter::TcpSlowReaderAborted);
                    }
                    self.backend.abort_tcp(conn);
                    work += 1;
                }
                Some(_) => break,
            }
            self.lingering.pop_front();
        }
        work
    }

    /// The host bridge's turn: its deadlines, host bytes waiting for room, then its I/O
    /// requests (connect, send, close, pause or resume reading, log a session out), each
    /// carried out on this shard's backend.
    fn run_hosts(&mut self, now: Timestamp) -> usize {
        let Some(bridge) = self.hosts.clone() else { return 0 };
        let mut b = bridge.borrow_mut();
        let mut work = 0;
        {
            let mut send = SessionSink::Endpoint { endpoint: &mut self.endpoint, now };
            if b.poll_timeout().is_some_and(|t| t <= now) {
                b.handle_timeout(now, &mut send);
                work += 1;
            }
            b.retry(&mut send);
        }
        // Requests queued while these run wait for the next pass (which does not wait).
        let mut budget = 4 * b.specs().len().max(1) + b.in_use() * 2 + 64;
        while budget > 0 {
            let Some(io) = b.take_io() else { break };
            budget -= 1;
            work += 1;
            match io {
                HostIo::Connect { slot, addr, keepalive } => {
                    let opts = ConnectOpts { keepalive, read_bytes: self.settings.host_read_bytes };
                    let r = self.backend.connect_tcp(addr, opts);
                    if let Err(e) = &r {
                        tracing::debug!(shard = self.index, %addr, error = %e, "host connect");
                    }
                    let mut send = SessionSink::Endpoint { endpoint: &mut self.endpoint, now };
                    b.connect_started(now, slot, r, &mut send);
                }
                HostIo::Send { slot } => {
                    let backend = &mut self.backend;
                    b.flush_to_host(slot, &mut |c, d| backend.send_tcp(c, d));
                }
                HostIo::Close { conn } if b.owns(conn) => {
                    self.backend.close_tcp(conn);
                    self.linger(conn, now, false);
                }
                HostIo::Read { conn, on } if b.owns(conn) => self.backend.set_tcp_reading(conn, on),
                HostIo::Close { .. } | HostIo::Read { .. } => {}
                HostIo::Logout { session, why } => {
                    // A session away from its device is told when it resumes.
                    self.endpoint.end_for_host(now, session, why.as_bytes());
                }
            }
        }
        work
    }

    /// Drains the endpoint's output within the room each connection's send queue has (sessions
    /// without room are parked until the next pass), then its events, then flushes.
    fn flush_output(&mut self, now: Timestamp) -> usize {
        let mut work = 0;
        // Bytes this pass has handed to the backend, until the early flush.
        let (mut built, mut flushed) = (0usize, false);
        self.endpoint.unblock(now);
        // Shutdown: the goodbyes of a whole slab come out in one pass (100,000 sessions take
        // about a second at the kernel's cost per datagram); `gateway.drain_timeout_ms` bounds
        // it: what is not out at the deadline stays unsent (those devices find the gateway
        // silent and move on as after a crash). Checked every 256 transmits: a clock read each.
        let stop_at = self.drain_deadline.zip(self.clock);
        while let Some(t) = {
            let backend = &self.backend;
            // Until the early flush, TCP output goes in pieces of at most that size too.
            let cap = if flushed { usize::MAX } else { EARLY_FLUSH_BYTES };
            self.endpoint
                .poll_transmit_within(now, &mut self.buf, &mut |c| backend.tcp_room(c).min(cap))
        } {
            work += 1;
            if let Some((d, clock)) = stop_at
                && work % 256 == 0
                && clock.now() >= d
            {
                break;
            }
            if !flushed {
                if built >= EARLY_FLUSH_BYTES {
                    // A large output (a resend burst): what is built leaves now, while the
                    // rest is built, instead of after all of it.
                    let _ = self.backend.flush();
                    flushed = true;
                }
                built += t.len;
            }
            let bytes = &self.buf[..t.len];
            match t.dest {
                Link::Udp(to) => {
                    let at = Seen { now, outbound: true, peer: to };
                    self.tap.datagram(&self.endpoint, at, bytes);
                    let _ = self.backend.send_to(to, bytes);
                }
                Link::Tcp(conn) => {
                    let Some(c) = self.conns.get(conn.0 as usize) else { continue };
                    self.tap.tcp_chunk(Seen { now, outbound: true, peer: c.peer }, &c.who, bytes);
                    let sent = if t.last {
                        self.backend.send_tcp_last(conn, bytes)
                    } else {
                        self.backend.send_tcp(conn, bytes)
                    };
                    match sent {
                        // A slow reader's LoggedOut is queued and the connection closing.
                        Ok(()) if t.last => self.linger(conn, now, true),
                        Ok(()) => {}
                        Err(SendError::Full) if !t.last => {
                            // Not session output (that stays within `tcp_room`): a reply. The
                            // session, if any, says LoggedOut next; else close at once.
                            if !self.endpoint.handle_tcp_stalled(now, conn) {
                                self.counters.incr(Counter::TcpSlowReaderClosed);
                                self.backend.abort_tcp(conn);
                                self.endpoint.handle_tcp_closed(now, conn);
                            }
                        }
                        Err(_) if t.last => self.backend.abort_tcp(conn),
                        Err(_) => {}
                    }
                }
                Link::None => {}
            }
        }
        while let Some(ev) = self.endpoint.poll_event() {
            match ev {
                EndpointEvent::CloseConnection(conn) => {
                    self.backend.close_tcp(conn);
                    self.linger(conn, now, false);
                }
                EndpointEvent::LoggedOn(h) => self.logged_on(now, h),
                EndpointEvent::Ended(h, _) => {
                    if let Some(b) = self.hosts.as_ref() {
                        b.borrow_mut().session_ended(h);
                    }
                }
                EndpointEvent::SlowReader(_) => self.counters.incr(Counter::TcpSlowReaderClosed),
                EndpointEvent::ResendServed(d) => {
                    record(&mut self.local.latency.resend, d.as_nanos() as u64, &mut self.counters);
                }
            }
        }
        if let Err(e) = self.backend.flush() {
            tracing::error!(shard = self.index, error = %e, "flush failed");
        }
        self.counters.set(Counter::UdpSendDropped, self.backend.dropped_sends());
        if let Some(t) = self.first_input.take() {
            // From the first input of this pass to its answers handed to the kernel.
            record(
                &mut self.local.latency.service,
                t.elapsed().as_nanos() as u64,
                &mut self.counters,
            );
        }
        work
    }

    /// Records the handshake time of a TCP session that just logged on.
    fn logged_on(&mut self, now: Timestamp, h: crate::session::SessionHandle) {
        let Some(Link::Tcp(conn)) = self.endpoint.link(h) else { return };
        let Some(c) = self.conns.get_mut(conn.0 as usize) else { return };
        if c.accepted_at != Timestamp::ZERO {
            let ns = now.saturating_since(c.accepted_at).as_nanos() as u64;
            c.accepted_at = Timestamp::ZERO;
            record(&mut self.local.latency.handshake, ns, &mut self.counters);
        }
    }

    /// Starts the linger of a closing connection (once: the earliest close wins).
    fn linger(&mut self, conn: ConnId, now: Timestamp, slow: bool) {
        let Some(c) = self.conns.get_mut(conn.0 as usize) else { return };
        if c.linger.is_none() {
            let deadline = now + self.settings.close_linger;
            c.linger = Some(Linger { deadline, slow });
            // Bounded: at most one live entry per connection slot. Stale entries (closed early)
            // are dropped as the front passes them, or all at once in the rare case that they
            // fill the queue.
            if self.lingering.len() == self.lingering.capacity() {
                let conns = &self.conns;
                self.lingering
                    .retain(|&(c, d)| conns[c.0 as usize].linger.is_some_and(|l| l.deadline == d));
            }
            if self.lingering.len() < self.lingering.capacity() {
                self.lingering.push_back((conn, deadline));
            }
        }
    }

    /// Feeds the complete frames buffered on `conn` to the endpoint.
    fn feed_tcp(&mut self, now: Timestamp, conn: ConnId) {
        let Self { endpoint, conns, tap, frame, .. } = self;
        feed_frames(endpoint, &mut conns[conn.0 as usize], tap, frame, now, conn);
    }

    /// Fills a recycled snapshot with the counters, gauges, sessions and this interval's
    /// histograms, and sends it to housekeeping.
    fn publish(&mut self, now: Timestamp) {
        let Some(p) = self.publish.as_mut() else { return };
        // Only a recycled snapshot is filled: when housekeeping is behind, this interval is
        // merged into the next one instead (the histograms keep accumulating).
        let Ok(mut snap) = p.recycled.pop() else { return };
        self.counters.set(Counter::TraceDropped, self.tap.dropped);
        self.counters.set(Counter::TcpConnections, self.open as u64);
        self.counters.set(Counter::Draining, u64::from(self.endpoint.is_operator_draining()));
        snap.shard = self.index;
        snap.backend = self.backend.name();
        snap.at = now;
        snap.counters.clone_from(self.endpoint.counters());
        snap.counters.merge(&self.counters);
        if let Some(b) = self.hosts.as_ref().map(|b| b.borrow()) {
            // Names are copied once: later snapshots reuse the strings.
            snap.hosts.resize_with(b.specs().len(), Default::default);
            for ((name, stats), (spec, now)) in
                snap.hosts.iter_mut().zip(b.specs().iter().zip(b.stats()))
            {
                if name != &spec.name {
                    name.clone_from(&spec.name);
                }
                *stats = *now;
            }
        }
        let states = self.endpoint.state_counts();
        for (gauge, n) in [
            (Counter::StateAwaitingConfig, states.awaiting_config),
            (Counter::StateAwaitingLogon, states.awaiting_logon),
            (Counter::StateActive, states.active),
            (Counter::StateLoggingOut, states.logging_out),
            (Counter::StateDetached, states.detached),
        ] {
            snap.counters.add(gauge, u64::from(n));
        }
        snap.sessions.clear();
        self.sessions_cursor = self.endpoint.sessions_page(
            self.sessions_cursor,
            SESSION_ROWS,
            SESSION_SLOTS_PER_SNAPSHOT,
            &mut snap.sessions,
        );
        for (dst, src) in snap.latency.each_mut().into_iter().zip(self.local.latency.each_mut()) {
            // Housekeeping hands snapshots back with empty histograms: a swap, not a copy and
            // two clears of ~220 KB each (per histogram, once a second on the shard thread).
            debug_assert!(dst.is_empty());
            std::mem::swap(dst, src);
        }
        let _ = p.snapshots.push(snap);
    }
}

/// An operator drain on one shard: from its deadline, the remaining sessions are logged out at
/// `gateway.drain_logouts_per_s`.
#[derive(Clone, Copy, Debug)]
struct OperatorDrain {
    deadline: Timestamp,
    /// Sessions logged out (or released) since the deadline.
    logged_out: u64,
    /// The walk over the slab is complete.
    walked: bool,
}

/// A connection handed over, as [`Shard::adopt`] takes it.
#[derive(Clone, Copy, Debug)]
pub struct Adopted<'a> {
    /// The peer.
    pub peer: SocketAddr,
    /// What the acceptor read, starting with the LogonRequest.
    pub initial: &'a [u8],
    /// When the acceptor accepted it.
    pub accepted: Timestamp,
}

/// What handling backend input needs: the shard's fields it touches, borrowed apart from the
/// backend that reports it.
struct Input<'a> {
    endpoint: &'a mut Endpoint,
    conns: &'a mut [Conn],
    open: &'a mut usize,
    tap: &'a mut Tap,
    frame: &'a mut [u8],
    first_input: &'a mut Option<Instant>,
    hosts: Option<&'a RefCell<HostBridge>>,
}

impl Input<'_> {
    fn on_event(&mut self, now: Timestamp, ev: IoEvent<'_>) {
        self.first_input.get_or_insert_with(Instant::now);
        match ev {
            IoEvent::Datagram { from, data } => {
                self.tap.datagram(self.endpoint, Seen { now, outbound: false, peer: from }, data);
                self.endpoint.handle_datagram(now, from, data);
            }
            IoEvent::TcpData { conn, data } if self.is_host(conn) => {
                let mut send = SessionSink::Endpoint { endpoint: &mut *self.endpoint, now };
                if let Some(b) = self.hosts {
                    b.borrow_mut().from_host(now, conn, data, &mut send);
                }
            }
            IoEvent::TcpClosed { conn } if self.is_host(conn) => {
                let mut send = SessionSink::Endpoint { endpoint: &mut *self.endpoint, now };
                if let Some(b) = self.hosts {
                    b.borrow_mut().host_closed(now, conn, &mut send);
                }
                if let Some(c) = self.conns.get_mut(conn.0 as usize) {
                    c.linger = None;
                }
            }
            IoEvent::TcpConnected { conn } => {
                let mut send = SessionSink::Endpoint { endpoint: &mut *self.endpoint, now };
                if let Some(b) = self.hosts {
                    b.borrow_mut().connected(now, conn, &mut send);
                }
            }
            IoEvent::TcpConnectFailed { conn, errno } => {
                let mut send = SessionSink::Endpoint { endpoint: &mut *self.endpoint, now };
                if let Some(b) = self.hosts {
                    b.borrow_mut().connect_failed(now, conn, errno, &mut send);
                }
            }
            IoEvent::TcpData { conn, data } => {
                let Some(c) = self.conns.get_mut(conn.0 as usize) else { return };
                let mut rest = data;
                while !rest.is_empty() {
                    let n = c.deframer.push(rest);
                    rest = &rest[n..];
                    feed_frames(self.endpoint, c, self.tap, self.frame, now, conn);
                    if n == 0 {
                        break;
                    }
                }
            }
            IoEvent::TcpClosed { conn } => {
                self.endpoint.handle_tcp_closed(now, conn);
                if let Some(c) = self.conns.get_mut(conn.0 as usize) {
                    c.deframer.reset();
                    // Its `lingering` entry, if any, is now stale and dropped in turn.
                    c.linger = None;
                    *self.open = self.open.saturating_sub(1);
                }
            }
            IoEvent::Wake => {}
        }
    }

    fn is_host(&self, conn: ConnId) -> bool {
        self.hosts.is_some_and(|b| b.borrow().owns(conn))
    }
}

/// Splits the bytes buffered on a connection into frames and feeds the endpoint: the first is
/// its logon, the rest its session's frames.
fn feed_frames(
    endpoint: &mut Endpoint,
    c: &mut Conn,
    tap: &mut Tap,
    frame: &mut [u8],
    now: Timestamp,
    conn: ConnId,
) {
    loop {
        let len = match c.deframer.next_frame() {
            Ok(Some(f)) => {
                let n = f.len().min(frame.len());
                frame[..n].copy_from_slice(&f[..n]);
                n
            }
            Ok(None) => return,
            Err(e) => {
                endpoint.handle_tcp_error(now, conn, e);
                c.deframer.reset();
                return;
            }
        };
        let f = &frame[..len];
        if c.started {
            tap.frame(Seen { now, outbound: false, peer: c.peer }, 0, &c.who, f);
            endpoint.handle_tcp_frame(now, conn, f);
        } else {
            c.started = true;
            if let Ok(Message { body: Body::LogonRequest { username, .. }, .. }) =
                Message::decode_frame(f)
            {
                c.who = username;
            }
            tap.frame(Seen { now, outbound: false, peer: c.peer }, 0, &c.who, f);
            endpoint.handle_tcp_logon(now, conn, c.peer, f);
        }
    }
}

fn record(h: &mut Histogram<u64>, v: u64, counters: &mut Counters) {
    if h.record(v.max(1)).is_err() {
        counters.incr(Counter::HistogramSaturated);
        h.saturating_record(v);
    }
}

/// Credentials shared by the shards (the endpoint owns a `Box<dyn Authenticator>`).
struct SharedAuth(Arc<dyn Authenticator + Send + Sync>);

impl Authenticator for SharedAuth {
    fn check(&self, username: &[u8], password: &[u8]) -> bool {
        self.0.check(username, password)
    }
}

/// Runs a shard thread: builds its backend and endpoint from `spec`, then runs the duty cycle
/// with the configured idle strategy until shutdown has drained it. Returns the final counters
/// (the endpoint's and the loop's).
pub fn run(spec: ShardSpec) -> Counters {
    let ShardSpec {
        index,
        config,
        backend,
        handoffs,
        publish,
        auth,
        master,
        clock,
        shutdown,
        core,
        trace,
        control,
        ready,
    } = spec;
    if let Some(core) = core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(shard = index, core = core.id, "could not pin to core");
        }
    }
    let backend = match backend.build() {
        Ok((b, note)) => {
            if let Some(note) = note {
                tracing::warn!(shard = index, "{note}");
            }
            let _ = ready.send(Ok(b.name()));
            b
        }
        Err(e) => {
            let _ = ready.send(Err(format!("shard {index}: backend: {e}")));
            return Counters::default();
        }
    };
    match core {
        Some(c) => {
            tracing::info!(shard = index, backend = backend.name(), core = c.id, "shard running")
        }
        None => tracing::info!(shard = index, backend = backend.name(), "shard running, unpinned"),
    }
    let now = clock.now();
    let mut endpoint = endpoint_for(&config, index, &master, Box::new(SharedAuth(auth)), now);
    endpoint.set_wall_offset(clock.wall_offset_ns());
    let hosts = attach_hosts(&config, &mut endpoint);
    let mut shard = Shard::new(
        index,
        endpoint,
        backend,
        Settings::new(&config),
        (master, now),
        Tap::new(index as u16, clock.wall_offset_ns(), trace),
    );
    shard.connect(handoffs, publish);
    shard.set_control(control);
    if let Some(b) = hosts {
        shard.set_hosts(b);
    }
    let spin = Duration::from_micros(config.gateway.spin_us);
    shard.set_idle(IdleStrategy::new(config.gateway.idle, spin), clock);
    // Test-only fault injection, compiled in with the `sim` feature (the test builds) and never
    // in a release binary: `FLEETGATE_TEST_PANIC_SHARD0_MS=N` makes shard 0 panic N ms after
    // start, to test the panic policy with a real process.
    #[cfg(feature = "sim")]
    let panic_at = std::env::var("FLEETGATE_TEST_PANIC_SHARD0_MS")
        .ok()
        .and_then(|ms| ms.parse::<u64>().ok())
        .filter(|_| index == 0)
        .map(|ms| clock.now() + Duration::from_millis(ms));
    let mut stopping: Option<Instant> = None;
    loop {
        let now = clock.now();
        #[cfg(feature = "sim")]
        if panic_at.is_some_and(|t| now >= t) {
            panic!("injected by FLEETGATE_TEST_PANIC_SHARD0_MS");
        }
        if shutdown.load(Ordering::Relaxed) && stopping.is_none() {
            let t = Instant::now();
            let sessions = shard.endpoint.session_count();
            shard.shutdown(now);
            tracing::info!(
                shard = index,
                sessions,
                took_ms = t.elapsed().as_millis() as u64,
                "shutdown: every session told to log out"
            );
            stopping = Some(t);
        }
        shard.do_work(now);
        if shard.is_finished() {
            let mut totals = shard.endpoint.counters().clone();
            totals.merge(&shard.counters);
            let t = Instant::now();
            let drained_ms = stopping.map_or(0, |s| s.elapsed().as_millis() as u64);
            let untold = shard.endpoint.state_counts().logging_out;
            drop(shard);
            let freed_ms = t.elapsed().as_millis() as u64;
            if untold > 0 {
                tracing::warn!(
                    shard = index,
                    drained_ms,
                    freed_ms,
                    untold,
                    "shard stopped: gateway.drain_timeout_ms passed before every LoggedOut was out"
                );
            } else {
                tracing::info!(shard = index, drained_ms, freed_ms, "shard stopped");
            }
            return totals;
        }
    }
}

/// The endpoint of shard `index` at `now`: its limits, keys, application and device groups.
pub fn endpoint_for(
    cfg: &Config,
    index: usize,
    master: &[u8; 32],
    auth: Box<dyn Authenticator>,
    now: Timestamp,
) -> Endpoint {
    let feed_every = Duration::from_millis(cfg.gateway.feed_interval_ms);
    let rotate = Duration::from_secs(cfg.udp.cookie_rotate_s.max(1));
    let keys = cookie_keys(master, now, rotate);
    let mut id_key = [0u8; 32];
    id_key.copy_from_slice(blake3::derive_key("fleetgate session ids v1", master).as_slice());
    id_key[0] ^= index as u8;
    let mut endpoint = Endpoint::new(
        cfg.endpoint_config(index as u16),
        keys,
        id_key,
        auth,
        crate::apps::builtin(cfg.gateway.app, feed_every),
    );
    for app in cfg.group_apps() {
        endpoint.add_app(crate::apps::builtin(app, feed_every));
    }
    if let Some(policy) = cfg.group_policy() {
        endpoint.set_groups(policy);
    }
    endpoint
}

/// With `[[hosts]]`, the shard's host bridge, and one [`HostApp`] per host added to `endpoint`
/// after its other applications (the indexes `Config::group_policy` gives host groups).
/// `None` without hosts.
pub fn attach_hosts(cfg: &Config, endpoint: &mut Endpoint) -> Option<Rc<RefCell<HostBridge>>> {
    if cfg.hosts.is_empty() {
        return None;
    }
    let bridge = Rc::new(RefCell::new(HostBridge::new(cfg.host_specs(), cfg.bridge_limits())));
    endpoint.track_acks();
    for i in 0..cfg.hosts.len() {
        endpoint.add_app(Box::new(HostApp::new(bridge.clone(), i as u8)));
    }
    Some(bridge)
}
