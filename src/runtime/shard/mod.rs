//! A shard: one pinned thread that owns an [`Endpoint`], an I/O backend, its TCP connections'
//! deframers, counters and histograms (DESIGN.md §3). Nothing here is shared: input arrives
//! from the acceptor over an SPSC queue, snapshots leave for housekeeping over another, and the
//! buffers of both are recycled so the loop does not allocate once warm.
//!
//! The loop is a bounded duty cycle (Aeron's `do_work`): read the clock, take at most
//! [`MAX_HANDOFFS`] handoffs, poll the backend (it reports at most a few batches), fire due
//! timers, drain output, flush, and publish a snapshot once a second. The idle strategy parks in
//! the kernel with a timeout equal to the next session deadline, or spins first for
//! `gateway.spin_us` with `idle = "spin"`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::counters::{Counter, Counters};
use crate::io::{Backend, IoEvent, SendError};
use crate::protocol::{Body, Deframer, DeviceUid, Message};
use crate::runtime::handoff::Handoff;
use crate::runtime::report::Snapshot;
use crate::session::handshake::cookie_keys;
use crate::session::{Authenticator, ConnId, Endpoint, EndpointConfig, EndpointEvent, Link, State};
use crate::time::{Clock, Timestamp};

pub mod tap;

use tap::{TraceFilter, TraceRecord, trace_datagram, trace_frame, trace_then_send_tcp};

/// Handoffs taken per loop pass.
pub const MAX_HANDOFFS: usize = 64;

/// Everything a shard thread needs.
pub struct ShardSpec {
    /// Index.
    pub index: usize,
    /// Endpoint limits.
    pub endpoint: EndpointConfig,
    /// Largest inbound TCP message.
    pub max_message_bytes: usize,
    /// The backend, already built over the session socket and wake descriptor.
    pub backend: Box<dyn Backend + Send>,
    /// Handoffs from the acceptor.
    pub handoffs: rtrb::Consumer<Handoff>,
    /// Snapshots to housekeeping.
    pub snapshots: rtrb::Producer<Box<Snapshot>>,
    /// Empty snapshots back from housekeeping.
    pub recycled: rtrb::Consumer<Box<Snapshot>>,
    /// Credentials.
    pub auth: Arc<dyn Authenticator + Send + Sync>,
    /// The application, built on the shard thread.
    pub app: Box<dyn crate::session::Application + Send>,
    /// Start-up secret for cookies.
    pub master: [u8; 32],
    /// Cookie rotation period.
    pub cookie_rotate: Duration,
    /// Time base.
    pub clock: Clock,
    /// Set by the signal handler.
    pub shutdown: Arc<AtomicBool>,
    /// How long to wait for LoggedOut to go out on shutdown.
    pub drain_timeout: Duration,
    /// How long a connection the shard closes (after its LoggedOut) has to read what is queued
    /// and close its end before it is aborted (`tcp.close_linger_ms`).
    pub close_linger: Duration,
    /// Spin this long before parking (zero: park at once).
    pub spin: Duration,
    /// Core to pin to.
    pub core: Option<core_affinity::CoreId>,
    /// Device groups.
    pub groups: Option<crate::session::GroupPolicy>,
    /// Applications device groups select, in the order the policy numbers them (from 1).
    pub group_apps: Vec<Box<dyn crate::session::Application + Send>>,
    /// Protocol trace: which devices, and the queue to the writer.
    pub trace: Option<(TraceFilter, rtrb::Producer<TraceRecord>)>,
}

struct SharedAuth(Arc<dyn Authenticator + Send + Sync>);

impl Authenticator for SharedAuth {
    fn check(&self, username: &[u8], password: &[u8]) -> bool {
        self.0.check(username, password)
    }
}

/// Runs a shard until shutdown has drained it. Returns the final counters.
pub fn run(mut spec: ShardSpec) -> Counters {
    if let Some(core) = spec.core {
        if !core_affinity::set_for_current(core) {
            tracing::warn!(shard = spec.index, core = core.id, "could not pin to core");
        }
    }
    let clock = spec.clock;
    let now = clock.now();
    let keys = cookie_keys(&spec.master, now, spec.cookie_rotate);
    let mut id_key = [0u8; 32];
    id_key.copy_from_slice(blake3::derive_key("fleetgate session ids v1", &spec.master).as_slice());
    id_key[0] ^= spec.index as u8;
    let mut endpoint = Endpoint::new(
        spec.endpoint,
        keys,
        id_key,
        Box::new(SharedAuth(spec.auth.clone())),
        spec.app,
    );
    endpoint.set_wall_offset(clock.wall_offset_ns());
    for app in spec.group_apps.drain(..) {
        endpoint.add_app(app);
    }
    if let Some(policy) = spec.groups.take() {
        endpoint.set_groups(policy);
    }
    let max_conns = spec.endpoint.max_connections;
    let mut deframers: Vec<Deframer> =
        (0..max_conns).map(|_| Deframer::new(spec.max_message_bytes)).collect();
    let mut started = vec![false; max_conns];
    let mut accepted_at = vec![Timestamp::ZERO; max_conns];
    let mut conn_peer = vec![SocketAddr::from(([0, 0, 0, 0], 0)); max_conns];
    let mut conn_who = vec![DeviceUid::default(); max_conns];
    // Every connection the shard closes is `lingering` (with its deadline, and whether it was a
    // slow reader) until it is closed.
    let mut lingering: Vec<Linger> = Vec::with_capacity(max_conns);
    let mut trace = spec.trace.take();
    let shard_no = spec.index as u16;
    let wall = clock.wall_offset_ns();
    let mut backend = spec.backend;
    let mut buf = vec![0u8; 64 * 1024];
    let mut frame = vec![0u8; spec.max_message_bytes.max(64)];
    let mut local = Snapshot::new(0, 60_000_000_000);
    let mut sc = Counters::default();
    let mut epoch_keys = keys;
    let mut next_snapshot = now + Duration::from_secs(1);
    let mut drain_deadline: Option<Timestamp> = None;
    let mut idle_since: Option<Instant> = None;
    tracing::info!(shard = spec.index, backend = backend.name(), "shard running");

    loop {
        let cycle_start = Instant::now();
        let now = clock.now();
        let mut work = 0usize;

        // 1. Handoffs (bounded).
        for _ in 0..MAX_HANDOFFS {
            let Ok(h) = spec.handoffs.pop() else { break };
            work += 1;
            sc.incr(Counter::Handoffs);
            match backend.register_tcp(h.stream) {
                Ok(conn) => {
                    let i = conn.0 as usize;
                    deframers[i].reset();
                    deframers[i].push(&h.initial[..h.len]);
                    started[i] = false;
                    accepted_at[i] = h.accepted;
                    conn_peer[i] = h.peer;
                    conn_who[i] = DeviceUid::default();
                    let who = &mut conn_who[i];
                    let mut on_frame = |f: &[u8]| {
                        if let Ok(Message { body: Body::LogonRequest { username, .. }, .. }) =
                            Message::decode_frame(f)
                        {
                            *who = username;
                        }
                        let w = *who;
                        trace_frame(
                            &mut trace, &mut sc, shard_no, wall, now, false, h.peer, 0, &w, f,
                        );
                    };
                    feed_tcp(
                        &mut endpoint,
                        &mut deframers[i],
                        &mut started[i],
                        &mut frame,
                        now,
                        conn,
                        h.peer,
                        &mut on_frame,
                    );
                }
                Err(_) => sc.incr(Counter::HandoffRejected),
            }
        }

        // 2. I/O, waiting only when there was nothing to do.
        let timeout = if work > 0 || drain_deadline.is_some() {
            Some(Duration::ZERO)
        } else {
            let until = endpoint
                .poll_timeout()
                .map_or(Duration::from_millis(100), |t| t.saturating_since(now));
            let until = lingering
                .iter()
                .map(|l| l.deadline.saturating_since(now))
                .fold(until.min(Duration::from_millis(100)), Duration::min);
            match idle_since {
                Some(s) if s.elapsed() < spec.spin => Some(Duration::ZERO),
                _ => Some(until),
            }
        };
        let before_poll = cycle_start.elapsed();
        let mut input = 0usize;
        let mut first_input: Option<Instant> = None;
        let polled = backend.poll(timeout, &mut |ev| {
            input += 1;
            first_input.get_or_insert_with(Instant::now);
            match ev {
                IoEvent::Datagram { from, data } => {
                    let now = clock.now();
                    if trace.is_some() {
                        trace_datagram(
                            &mut trace, &mut sc, &endpoint, shard_no, wall, now, false, from, data,
                        );
                    }
                    endpoint.handle_datagram(now, from, data);
                }
                IoEvent::TcpData { conn, data } => {
                    let i = conn.0 as usize;
                    let mut rest = data;
                    while !rest.is_empty() {
                        let n = deframers[i].push(rest);
                        rest = &rest[n..];
                        let (peer, now, who) = (conn_peer[i], clock.now(), conn_who[i]);
                        let mut on_frame = |f: &[u8]| {
                            trace_frame(
                                &mut trace, &mut sc, shard_no, wall, now, false, peer, 0, &who, f,
                            );
                        };
                        feed_tcp(
                            &mut endpoint,
                            &mut deframers[i],
                            &mut started[i],
                            &mut frame,
                            now,
                            conn,
                            peer,
                            &mut on_frame,
                        );
                        if n == 0 {
                            break;
                        }
                    }
                }
                IoEvent::TcpClosed { conn } => {
                    endpoint.handle_tcp_closed(clock.now(), conn);
                    deframers[conn.0 as usize].reset();
                    if let Some(k) = lingering.iter().position(|l| l.conn == conn) {
                        lingering.swap_remove(k);
                    }
                }
                IoEvent::Wake => {}
            }
        });
        // Time spent waiting in the kernel is not part of the pass's work.
        let after_poll = Instant::now();
        if let Err(e) = polled {
            tracing::error!(shard = spec.index, error = %e, "poll failed");
        }
        work += input;

        // 3. Timers.
        let now = clock.now();
        if endpoint.poll_timeout().is_some_and(|t| t <= now) {
            endpoint.handle_timeout(now);
            work += 1;
        }
        // Closing connections whose peer did not read the rest and close in time.
        let mut k = 0;
        while k < lingering.len() {
            let l = lingering[k];
            if l.deadline <= now {
                sc.incr(Counter::TcpCloseAborted);
                if l.slow {
                    sc.incr(Counter::TcpSlowReaderAborted);
                }
                backend.abort_tcp(l.conn);
                lingering.swap_remove(k);
                work += 1;
            } else {
                k += 1;
            }
        }

        // 4. Output, within the room each connection's send queue has (sessions without room
        // are parked until the next pass).
        endpoint.unblock(now);
        while let Some(t) =
            endpoint.poll_transmit_within(now, &mut buf, &mut |c| backend.tcp_room(c))
        {
            work += 1;
            match t.dest {
                Link::Udp(to) => {
                    if trace.is_some() {
                        trace_datagram(
                            &mut trace,
                            &mut sc,
                            &endpoint,
                            shard_no,
                            wall,
                            now,
                            true,
                            to,
                            &buf[..t.len],
                        );
                    }
                    let _ = backend.send_to(to, &buf[..t.len]);
                }
                Link::Tcp(conn) => {
                    let i = conn.0 as usize;
                    let last = t.last;
                    match trace_then_send_tcp(
                        &mut *backend,
                        &mut trace,
                        &mut sc,
                        (shard_no, wall, now, last),
                        conn,
                        conn_peer[i],
                        &conn_who[i],
                        &buf[..t.len],
                    ) {
                        Ok(()) if last => {
                            // A slow reader's LoggedOut is queued and the connection closing.
                            linger(&mut lingering, conn, now + spec.close_linger, true);
                        }
                        Ok(()) => {}
                        Err(SendError::Full) if !last => {
                            // Not session output (that stays within `tcp_room`): a reply. The
                            // session, if any, says LoggedOut next; else close at once.
                            if !endpoint.handle_tcp_stalled(now, conn) {
                                sc.incr(Counter::TcpSlowReaderClosed);
                                backend.abort_tcp(conn);
                                endpoint.handle_tcp_closed(now, conn);
                            }
                        }
                        Err(_) => {
                            if last {
                                backend.abort_tcp(conn);
                            }
                        }
                    }
                }
                Link::None => {}
            }
        }
        while let Some(ev) = endpoint.poll_event() {
            match ev {
                EndpointEvent::CloseConnection(conn) => {
                    backend.close_tcp(conn);
                    linger(&mut lingering, conn, now + spec.close_linger, false);
                }
                EndpointEvent::LoggedOn(h) => {
                    if let Some(Link::Tcp(conn)) =
                        endpoint.sessions().find(|s| s.handle == h).map(|s| s.link)
                    {
                        let at = accepted_at[conn.0 as usize];
                        if at != Timestamp::ZERO {
                            record(
                                &mut local.handshake_ns,
                                now.saturating_since(at).as_nanos() as u64,
                                &mut sc,
                            );
                            accepted_at[conn.0 as usize] = Timestamp::ZERO;
                        }
                    }
                }
                EndpointEvent::Ended(..) => {}
                EndpointEvent::SlowReader(_) => sc.incr(Counter::TcpSlowReaderClosed),
                EndpointEvent::ResendServed(d) => {
                    record(&mut local.resend_ns, d.as_nanos() as u64, &mut sc);
                }
            }
        }
        if let Err(e) = backend.flush() {
            tracing::error!(shard = spec.index, error = %e, "flush failed");
        }
        sc.set(Counter::UdpSendDropped, backend.dropped_sends());
        if let Some(t) = first_input {
            // From the first input of this pass to its answers handed to the kernel.
            record(&mut local.service_ns, t.elapsed().as_nanos() as u64, &mut sc);
        }

        // 5. Housekeeping, once a second.
        if now >= next_snapshot {
            next_snapshot = now + Duration::from_secs(1);
            let keys = cookie_keys(&spec.master, now, spec.cookie_rotate);
            if keys.current != epoch_keys.current {
                epoch_keys = keys;
                endpoint.rotate_keys(keys);
            }
            publish(
                &mut spec.snapshots,
                &mut spec.recycled,
                &endpoint,
                &mut local,
                &sc,
                spec.index,
                backend.name(),
                now,
            );
        }

        // 6. Shutdown: log everyone out, wait for the goodbyes to leave, stop.
        if spec.shutdown.load(Ordering::Relaxed) {
            match drain_deadline {
                None => {
                    endpoint.shutdown(now);
                    drain_deadline = Some(now + spec.drain_timeout);
                }
                Some(d) => {
                    let attached =
                        endpoint.sessions().any(|s| matches!(s.state, State::LoggingOut(..)));
                    if !attached || now >= d {
                        let _ = backend.flush();
                        publish(
                            &mut spec.snapshots,
                            &mut spec.recycled,
                            &endpoint,
                            &mut local,
                            &sc,
                            spec.index,
                            backend.name(),
                            now,
                        );
                        return endpoint.counters().clone();
                    }
                }
            }
        }

        let cycle = (before_poll + after_poll.elapsed()).as_nanos() as u64;
        if work > 0 {
            idle_since = None;
            sc.raise(Counter::CycleNsMax, cycle);
            if cycle > 1_000_000 {
                sc.incr(Counter::CyclesOver1ms);
            }
            record(&mut local.cycle_ns, cycle, &mut sc);
        } else if idle_since.is_none() {
            idle_since = Some(Instant::now());
        }
    }
}

/// A connection the shard is closing: aborted at `deadline` unless closed before.
#[derive(Clone, Copy)]
struct Linger {
    conn: ConnId,
    deadline: Timestamp,
    /// Closed as a slow reader (for the counters).
    slow: bool,
}

/// Starts the linger of a closing connection (once: the earliest close wins).
fn linger(lingering: &mut Vec<Linger>, conn: ConnId, deadline: Timestamp, slow: bool) {
    if lingering.iter().any(|l| l.conn == conn) {
        return;
    }
    // Bounded: one entry per open connection, within the capacity reserved at start-up.
    if lingering.len() < lingering.capacity() {
        lingering.push(Linger { conn, deadline, slow });
    }
}

fn record(h: &mut Histogram<u64>, v: u64, sc: &mut Counters) {
    if h.record(v.max(1)).is_err() {
        sc.incr(Counter::HistogramSaturated);
        h.saturating_record(v);
    }
}

/// Splits buffered bytes of a connection into frames and feeds the endpoint.
#[allow(clippy::too_many_arguments)]
fn feed_tcp(
    endpoint: &mut Endpoint,
    deframer: &mut Deframer,
    started: &mut bool,
    frame: &mut [u8],
    now: Timestamp,
    conn: ConnId,
    peer: SocketAddr,
    on_frame: &mut dyn FnMut(&[u8]),
) {
    loop {
        let len = match deframer.next_frame() {
            Ok(Some(f)) => {
                let n = f.len().min(frame.len());
                frame[..n].copy_from_slice(&f[..n]);
                n
            }
            Ok(None) => return,
            Err(e) => {
                endpoint.handle_tcp_error(now, conn, e);
                deframer.reset();
                return;
            }
        };
        on_frame(&frame[..len]);
        if *started {
            endpoint.handle_tcp_frame(now, conn, &frame[..len]);
        } else {
            *started = true;
            endpoint.handle_tcp_logon(now, conn, peer, &frame[..len]);
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn publish(
    out: &mut rtrb::Producer<Box<Snapshot>>,
    recycled: &mut rtrb::Consumer<Box<Snapshot>>,
    endpoint: &Endpoint,
    local: &mut Snapshot,
    sc: &Counters,
    shard: usize,
    backend: &'static str,
    now: Timestamp,
) {
    // Only a recycled snapshot is filled: when housekeeping is behind, this interval is merged
    // into the next one instead (the histograms keep accumulating).
    let Ok(mut snap) = recycled.pop() else { return };
    snap.shard = shard;
    snap.backend = backend;
    snap.at = now;
    snap.counters.clone_from(endpoint.counters());
    snap.counters.merge(sc);
    snap.sessions.clear();
    for s in endpoint.sessions() {
        let gauge = match s.state {
            State::AwaitingConfig => Counter::StateAwaitingConfig,
            State::AwaitingLogon => Counter::StateAwaitingLogon,
            State::Active => Counter::StateActive,
            State::LoggingOut(..) => Counter::StateLoggingOut,
            State::Detached => Counter::StateDetached,
            State::Closed(_) => continue,
        };
        snap.counters.incr(gauge);
        if snap.sessions.len() < snap.sessions.capacity() {
            snap.sessions.push(s);
        }
    }
    for (dst, src) in [
        (&mut snap.service_ns, &mut local.service_ns),
        (&mut snap.cycle_ns, &mut local.cycle_ns),
        (&mut snap.handshake_ns, &mut local.handshake_ns),
        (&mut snap.resend_ns, &mut local.resend_ns),
    ] {
        dst.reset();
        let _ = dst.add(&*src);
        src.reset();
    }
    let _ = out.push(snap);
}
