//! The acceptor thread (DESIGN.md §3): the stateless UDP handshake port and the TCP listener.
//!
//! - UDP: each ConnectionRequest is answered by [`answer_connection_request`] (a cookie naming
//!   the shard's session port), after a per-source token bucket; nothing is stored.
//! - TCP: a connection must deliver its LogonRequest within `tcp.logon_timeout_ms`; the
//!   acceptor reads that first frame, picks the shard by hash of the username (so a resume finds
//!   the same shard) and hands the socket and the bytes to that shard over its SPSC queue, then
//!   wakes it through its eventfd.
//!
//! What to answer is decided by [`Core`], which does no I/O. Two drivers run it, chosen like the
//! shards' backend (`gateway.io`, `FLEETGATE_IO`):
//!
//! - io_uring ([`crate::io::uring::accept`]): one multishot `RECVMSG` over a provided-buffer
//!   ring on the handshake port, `SENDMSG` replies from a fixed pool, one multishot `ACCEPT` on
//!   the listener, and one `RECV` per pending connection into its own fixed buffer;
//! - portable: `poll(2)` over non-blocking sockets ([`run_poll`]), also the fallback when the
//!   ring cannot be set up.
//!
//! The driver in use is logged and shown in `/metrics` as `fleetgate_acceptor_info{backend}`.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::protocol::{Body, ConnectionRejectReason, DecodeError, Header, Message, split_frame};
use crate::session::handshake::{
    CookieKey, HandshakeConfig, HandshakeOutcome, answer_connection_request, shard_for,
};
use crate::shard::{HANDOFF_BYTES, Handoff, cookie_keys};
use crate::time::Clock;
use crate::time::Timestamp;

/// Everything the acceptor needs.
pub struct AcceptorSpec {
    /// The handshake port socket.
    pub udp: UdpSocket,
    /// The TCP listener.
    pub tcp: TcpListener,
    /// Use io_uring (else `poll(2)`); falls back to `poll(2)` if the ring cannot be set up.
    pub uring: bool,
    /// Handshake settings (shards, session ports, cookie TTL).
    pub handshake: HandshakeConfig,
    /// Start-up secret for cookies.
    pub master: [u8; 32],
    /// Cookie rotation period.
    pub cookie_rotate: Duration,
    /// Time base.
    pub clock: Clock,
    /// Set by the signal handler.
    pub shutdown: Arc<AtomicBool>,
    /// One queue per shard.
    pub handoffs: Vec<rtrb::Producer<Handoff>>,
    /// One eventfd per shard.
    pub wakes: Vec<RawFd>,
    /// LogonRequest deadline.
    pub logon_timeout: Duration,
    /// ConnectionRequests per second per source address.
    pub rate_per_s: u32,
    /// Token bucket depth.
    pub burst: u32,
    /// Connections waiting for their LogonRequest.
    pub max_pending: usize,
    /// Where the counters are published for /metrics (about every 200 ms).
    pub view: Arc<std::sync::Mutex<crate::housekeeping::View>>,
}

/// What the acceptor counted.
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptorCounters {
    /// ConnectionAccepts sent.
    pub accepted: u64,
    /// ConnectionRejects sent, by any reason.
    pub rejected: u64,
    /// ConnectionRejects for rate limiting.
    pub rate_limited: u64,
    /// Datagrams dropped unanswered (short, malformed).
    pub dropped: u64,
    /// Answers not sent: the kernel refused them or (io_uring) no send slot was free.
    pub replies_dropped: u64,
    /// TCP connections handed to shards.
    pub handoffs: u64,
    /// TCP connections closed: no LogonRequest in time.
    pub logon_timeouts: u64,
    /// TCP connections refused: pending table or handoff queue full.
    pub tcp_refused: u64,
    /// TCP connections closed for a framing error in the first message.
    pub tcp_malformed: u64,
}

/// What to do with a pending connection after its latest bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Its first frame is not complete yet: read more.
    NeedMore,
    /// Its first frame is complete: hand it to this shard.
    HandOff(usize),
    /// Close it with LoggedOut(reason) (counted).
    Refuse(&'static str),
}

/// The acceptor's decisions, without I/O: answers to datagrams, the fate of pending TCP
/// connections, handoffs, counters.
pub struct Core {
    handshake: HandshakeConfig,
    master: [u8; 32],
    cookie_rotate: Duration,
    /// The time base.
    pub clock: Clock,
    /// Set by the signal handler.
    pub shutdown: Arc<AtomicBool>,
    handoffs: Vec<rtrb::Producer<Handoff>>,
    wakes: Vec<RawFd>,
    /// LogonRequest deadline after accept.
    pub logon_timeout: Duration,
    rate_per_s: u32,
    burst: u32,
    /// Connections waiting for their LogonRequest, at most.
    pub max_pending: usize,
    view: Arc<std::sync::Mutex<crate::housekeeping::View>>,
    buckets: Vec<Bucket>,
    key: (Timestamp, CookieKey),
    tx: [u8; 2048],
    published: Timestamp,
    /// The counters.
    pub counters: AcceptorCounters,
}

#[derive(Clone, Copy)]
struct Bucket {
    ip: Option<std::net::IpAddr>,
    tokens: f64,
    at: Timestamp,
}

impl Core {
    /// The core of `spec` (its sockets are left to the driver).
    fn new(spec: AcceptorSpec) -> (Self, UdpSocket, TcpListener, bool) {
        let key = cookie_keys(&spec.master, spec.clock.now(), spec.cookie_rotate).current;
        let core = Self {
            handshake: spec.handshake,
            master: spec.master,
            cookie_rotate: spec.cookie_rotate,
            clock: spec.clock,
            shutdown: spec.shutdown,
            handoffs: spec.handoffs,
            wakes: spec.wakes,
            logon_timeout: spec.logon_timeout,
            rate_per_s: spec.rate_per_s,
            burst: spec.burst,
            max_pending: spec.max_pending,
            view: spec.view,
            buckets: vec![Bucket { ip: None, tokens: 0.0, at: Timestamp::ZERO }; 4096],
            key: (Timestamp::ZERO, key),
            tx: [0; 2048],
            published: Timestamp::ZERO,
            counters: AcceptorCounters::default(),
        };
        (core, spec.udp, spec.tcp, spec.uring)
    }

    /// True once shutdown is asked for.
    pub fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::Relaxed)
    }

    /// The answer to a datagram on the handshake port, if any (bytes to send back to `from`).
    pub fn datagram(&mut self, now: Timestamp, from: SocketAddr, data: &[u8]) -> Option<&[u8]> {
        if now.saturating_since(self.key.0) >= Duration::from_millis(100) {
            self.key = (now, cookie_keys(&self.master, now, self.cookie_rotate).current);
        }
        let refuse = limit(&mut self.buckets, from.ip(), now, self.rate_per_s, self.burst)
            .then_some(ConnectionRejectReason::RateLimited);
        let c = &mut self.counters;
        match answer_connection_request(
            &self.handshake,
            &self.key.1,
            now,
            from,
            data,
            refuse,
            &mut self.tx,
        ) {
            HandshakeOutcome::Accepted { len, .. } => {
                c.accepted += 1;
                Some(&self.tx[..len])
            }
            HandshakeOutcome::Rejected { len, reason } => {
                c.rejected += 1;
                if reason == ConnectionRejectReason::RateLimited {
                    c.rate_limited += 1;
                }
                Some(&self.tx[..len])
            }
            HandshakeOutcome::Dropped(_) => {
                c.dropped += 1;
                None
            }
        }
    }

    /// What to do with a pending connection holding `bytes`, accepted with `deadline` for its
    /// first frame. Counts refusals.
    pub fn first_frame(&mut self, now: Timestamp, bytes: &[u8], deadline: Timestamp) -> Step {
        match split_frame(bytes) {
            Ok((frame, _)) => Step::HandOff(match Message::decode_frame(frame) {
                Ok(Message { body: Body::LogonRequest { username, .. }, .. }) => {
                    shard_for(username.as_bytes(), self.handoffs.len())
                }
                // Let the shard answer anything else with the right LoggedOut.
                _ => 0,
            }),
            Err(DecodeError::Truncated { .. }) if now >= deadline => {
                self.counters.logon_timeouts += 1;
                Step::Refuse("logon timeout")
            }
            Err(DecodeError::Truncated { .. }) if bytes.len() < HANDOFF_BYTES => Step::NeedMore,
            Err(e) => {
                self.counters.tcp_malformed += 1;
                Step::Refuse(e.as_str())
            }
        }
    }

    /// A pending connection whose deadline passed (counted).
    pub fn timed_out(&mut self) -> &'static str {
        self.counters.logon_timeouts += 1;
        "logon timeout"
    }

    /// A connection refused because the pending table is full (counted).
    pub fn busy(&mut self) -> &'static str {
        self.counters.tcp_refused += 1;
        "server busy"
    }

    /// Hands a connection to `shard` and wakes it; refuses it if that queue is full.
    pub fn hand_off(&mut self, shard: usize, h: Handoff) {
        match self.handoffs[shard].push(h) {
            Ok(()) => {
                self.counters.handoffs += 1;
                crate::io::wake(self.wakes[shard]);
            }
            Err(rtrb::PushError::Full(h)) => {
                let why = self.busy();
                refuse(h.stream, why);
            }
        }
    }

    /// Publishes the counters for /metrics, at most every 200 ms unless `now` is `None`.
    pub fn publish(&mut self, now: Option<Timestamp>, backend: &'static str) {
        if let Some(now) = now {
            if now.saturating_since(self.published) < Duration::from_millis(200) {
                return;
            }
            self.published = now;
        }
        let mut v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        v.acceptor = self.counters;
        v.acceptor_backend = backend;
    }
}

/// Runs until shutdown on the chosen driver. Returns the counters.
pub fn run(spec: AcceptorSpec) -> AcceptorCounters {
    let (mut core, udp, tcp, uring) = Core::new(spec);
    if uring {
        match crate::io::uring::accept::run(&mut core, &udp, &tcp) {
            Ok(()) => {
                core.publish(None, "io_uring");
                return core.counters;
            }
            Err(e) => eprintln!("fleetgate: acceptor: io_uring unavailable ({e}), using poll(2)"),
        }
    }
    run_poll(&mut core, &udp, &tcp);
    core.publish(None, "poll");
    core.counters
}

struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    buf: [u8; HANDOFF_BYTES],
    len: usize,
    deadline: Timestamp,
    accepted: Timestamp,
}

/// The portable driver: `poll(2)` over non-blocking sockets.
pub fn run_poll(core: &mut Core, udp: &UdpSocket, tcp: &TcpListener) {
    eprintln!("fleetgate: acceptor running on poll(2)");
    let _ = udp.set_nonblocking(true);
    let _ = tcp.set_nonblocking(true);
    let mut pending: Vec<Pending> = Vec::with_capacity(core.max_pending);
    let mut rx = [0u8; 2048];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(core.max_pending + 2);
    while !core.stopping() {
        core.publish(Some(core.clock.now()), "poll");
        fds.clear();
        fds.push(libc::pollfd { fd: udp.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        fds.push(libc::pollfd { fd: tcp.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        for p in &pending {
            fds.push(libc::pollfd { fd: p.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        let n = crate::io::sys::poll(&mut fds, 50);
        if n < 0 {
            continue;
        }
        let now = core.clock.now();
        if fds[0].revents != 0 {
            for _ in 0..256 {
                let Ok((len, from)) = udp.recv_from(&mut rx) else { break };
                if let Some(reply) = core.datagram(now, from, &rx[..len]) {
                    if udp.send_to(reply, from).is_err() {
                        core.counters.replies_dropped += 1;
                    }
                }
            }
        }
        if fds[1].revents != 0 {
            for _ in 0..256 {
                let Ok((stream, peer)) = tcp.accept() else { break };
                if pending.len() >= core.max_pending {
                    let why = core.busy();
                    refuse(stream, why);
                    continue;
                }
                let _ = stream.set_nonblocking(true);
                pending.push(Pending {
                    stream,
                    peer,
                    buf: [0; HANDOFF_BYTES],
                    len: 0,
                    deadline: now + core.logon_timeout,
                    accepted: now,
                });
            }
        }
        // Pending connections: read, hand off, or time out. Iterate backwards so swap_remove is
        // safe; `fds[2 + i]` matches `pending[i]` as built above.
        let polled = fds.len() - 2;
        let mut i = pending.len();
        while i > 0 {
            i -= 1;
            if i < polled && fds[2 + i].revents != 0 {
                let p = &mut pending[i];
                let closed = match std::io::Read::read(&mut p.stream, &mut p.buf[p.len..]) {
                    Ok(0) => true,
                    Ok(n) => {
                        p.len += n;
                        false
                    }
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                if closed {
                    pending.swap_remove(i);
                    continue;
                }
            }
            let p = &pending[i];
            match core.first_frame(now, &p.buf[..p.len], p.deadline) {
                Step::NeedMore => {}
                Step::HandOff(shard) => {
                    let p = pending.swap_remove(i);
                    let h = Handoff {
                        stream: p.stream,
                        peer: p.peer,
                        initial: p.buf,
                        len: p.len,
                        accepted: p.accepted,
                    };
                    core.hand_off(shard, h);
                }
                Step::Refuse(why) => refuse(pending.swap_remove(i).stream, why),
            }
        }
    }
}

/// Token bucket per source address (direct-mapped; a collision simply shares a bucket).
fn limit(
    buckets: &mut [Bucket],
    ip: std::net::IpAddr,
    now: Timestamp,
    rate: u32,
    burst: u32,
) -> bool {
    let h = match ip {
        std::net::IpAddr::V4(v4) => u64::from(u32::from(v4)),
        std::net::IpAddr::V6(v6) => {
            u64::from_le_bytes(v6.octets()[8..].try_into().unwrap_or([0; 8]))
        }
    };
    let b = &mut buckets[(h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 52) as usize % 4096];
    if b.ip != Some(ip) {
        *b = Bucket { ip: Some(ip), tokens: f64::from(burst), at: now };
    }
    let dt = now.saturating_since(b.at).as_secs_f64();
    b.tokens = (b.tokens + dt * f64::from(rate)).min(f64::from(burst));
    b.at = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        false
    } else {
        true
    }
}

/// Best-effort LoggedOut(`why`), then close.
pub fn refuse(mut stream: TcpStream, why: &str) {
    let mut out = [0u8; 128];
    let msg = Message {
        header: Header { seq: 1, ..Header::default() },
        body: Body::LoggedOut { reason: why.as_bytes() },
    };
    if let Ok(n) = msg.encode(&mut out) {
        let _ = stream.write(&out[..n]);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
