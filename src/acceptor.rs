//! The acceptor thread (DESIGN.md §3): the stateless UDP handshake port and the TCP listener.
//!
//! - UDP: each ConnectionRequest is answered by [`answer_connection_request`] (a cookie naming
//!   the shard's session port), after a per-source token bucket; nothing is stored.
//! - TCP: a connection must deliver its LogonRequest within `tcp.logon_timeout_ms`; the
//!   acceptor reads that first frame, picks the shard by hash of the username (so a resume finds
//!   the same shard) and hands the socket and the bytes to that shard over its SPSC queue, then
//!   wakes it through its eventfd.
//!
//! The acceptor is not on the per-message path; it uses `poll(2)` over non-blocking sockets.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::protocol::{Body, ConnectionRejectReason, DecodeError, Header, Message, split_frame};
use crate::session::handshake::{
    HandshakeConfig, HandshakeOutcome, answer_connection_request, shard_for,
};
use crate::shard::{Clock, HANDOFF_BYTES, Handoff, cookie_keys};
use crate::time::Timestamp;

/// Everything the acceptor needs.
pub struct AcceptorSpec {
    /// The handshake port socket.
    pub udp: UdpSocket,
    /// The TCP listener.
    pub tcp: TcpListener,
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
    /// TCP connections handed to shards.
    pub handoffs: u64,
    /// TCP connections closed: no LogonRequest in time.
    pub logon_timeouts: u64,
    /// TCP connections refused: pending table or handoff queue full.
    pub tcp_refused: u64,
    /// TCP connections closed for a framing error in the first message.
    pub tcp_malformed: u64,
}

struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    buf: [u8; HANDOFF_BYTES],
    len: usize,
    deadline: Timestamp,
    accepted: Timestamp,
}

#[derive(Clone, Copy)]
struct Bucket {
    ip: Option<std::net::IpAddr>,
    tokens: f64,
    at: Timestamp,
}

/// Runs until shutdown. Returns the counters.
pub fn run(mut spec: AcceptorSpec) -> AcceptorCounters {
    let _ = spec.udp.set_nonblocking(true);
    let _ = spec.tcp.set_nonblocking(true);
    let mut c = AcceptorCounters::default();
    let mut pending: Vec<Pending> = Vec::with_capacity(spec.max_pending);
    let mut buckets = vec![Bucket { ip: None, tokens: 0.0, at: Timestamp::ZERO }; 4096];
    let mut rx = [0u8; 2048];
    let mut tx = [0u8; 2048];
    let mut fds: Vec<libc::pollfd> = Vec::with_capacity(spec.max_pending + 2);
    let mut published = spec.clock.now();
    while !spec.shutdown.load(Ordering::Relaxed) {
        let now = spec.clock.now();
        if now.saturating_since(published) >= Duration::from_millis(200) {
            published = now;
            spec.view.lock().unwrap_or_else(|e| e.into_inner()).acceptor = c;
        }
        fds.clear();
        fds.push(libc::pollfd { fd: spec.udp.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        fds.push(libc::pollfd { fd: spec.tcp.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        for p in &pending {
            fds.push(libc::pollfd { fd: p.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if n < 0 {
            continue;
        }
        let now = spec.clock.now();
        if fds[0].revents != 0 {
            let key = cookie_keys(&spec.master, now, spec.cookie_rotate).current;
            for _ in 0..256 {
                let Ok((len, from)) = spec.udp.recv_from(&mut rx) else { break };
                let refuse = limit(&mut buckets, from.ip(), now, spec.rate_per_s, spec.burst)
                    .then_some(ConnectionRejectReason::RateLimited);
                match answer_connection_request(
                    &spec.handshake,
                    &key,
                    now,
                    from,
                    &rx[..len],
                    refuse,
                    &mut tx,
                ) {
                    HandshakeOutcome::Accepted { len, .. } => {
                        c.accepted += 1;
                        let _ = spec.udp.send_to(&tx[..len], from);
                    }
                    HandshakeOutcome::Rejected { len, reason } => {
                        c.rejected += 1;
                        if reason == ConnectionRejectReason::RateLimited {
                            c.rate_limited += 1;
                        }
                        let _ = spec.udp.send_to(&tx[..len], from);
                    }
                    HandshakeOutcome::Dropped(_) => c.dropped += 1,
                }
            }
        }
        if fds[1].revents != 0 {
            for _ in 0..256 {
                let Ok((stream, peer)) = spec.tcp.accept() else { break };
                if pending.len() >= spec.max_pending {
                    c.tcp_refused += 1;
                    refuse(stream, b"server busy");
                    continue;
                }
                let _ = stream.set_nonblocking(true);
                pending.push(Pending {
                    stream,
                    peer,
                    buf: [0; HANDOFF_BYTES],
                    len: 0,
                    deadline: now + spec.logon_timeout,
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
            let readable = i < polled && fds[2 + i].revents != 0;
            let mut closed = false;
            if readable {
                let p = &mut pending[i];
                match p.stream.read(&mut p.buf[p.len..]) {
                    Ok(0) => closed = true,
                    Ok(n) => p.len += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => closed = true,
                }
            }
            if closed {
                pending.swap_remove(i);
                continue;
            }
            let p = &pending[i];
            match split_frame(&p.buf[..p.len]) {
                Ok((frame, _)) => {
                    let shard = match Message::decode_frame(frame) {
                        Ok(Message { body: Body::LogonRequest { username, .. }, .. }) => {
                            shard_for(username.as_bytes(), spec.handoffs.len())
                        }
                        // Let the shard answer anything else with the right LoggedOut.
                        _ => 0,
                    };
                    let p = pending.swap_remove(i);
                    let h = Handoff {
                        stream: p.stream,
                        peer: p.peer,
                        initial: p.buf,
                        len: p.len,
                        accepted: p.accepted,
                    };
                    match spec.handoffs[shard].push(h) {
                        Ok(()) => {
                            c.handoffs += 1;
                            crate::io::wake(spec.wakes[shard]);
                        }
                        Err(rtrb::PushError::Full(h)) => {
                            c.tcp_refused += 1;
                            refuse(h.stream, b"server busy");
                        }
                    }
                }
                Err(DecodeError::Truncated { .. }) if p.len < HANDOFF_BYTES && now < p.deadline => {
                }
                Err(DecodeError::Truncated { .. }) if now >= p.deadline => {
                    c.logon_timeouts += 1;
                    let p = pending.swap_remove(i);
                    refuse(p.stream, b"logon timeout");
                }
                Err(e) => {
                    c.tcp_malformed += 1;
                    let p = pending.swap_remove(i);
                    refuse(p.stream, e.as_str().as_bytes());
                }
            }
        }
    }
    spec.view.lock().unwrap_or_else(|e| e.into_inner()).acceptor = c;
    c
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
fn refuse(mut stream: TcpStream, why: &[u8]) {
    let mut out = [0u8; 128];
    let msg = Message {
        header: Header { seq: 1, ..Header::default() },
        body: Body::LoggedOut { reason: why },
    };
    if let Ok(n) = msg.encode(&mut out) {
        let _ = stream.write(&out[..n]);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
