//! The acceptor's decisions: answers to datagrams on the handshake port (after a per-source
//! token bucket), the fate of pending TCP connections, handoffs, counters. The drivers
//! ([`super::run_poll`], [`super::uring`]) do the socket I/O around it.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::{AcceptorSpec, refuse};
use crate::counters::{Counter, Counters};
use crate::protocol::{
    Body, ConnectionRejectReason, DecodeError, HEADER_LEN, Header, Message, MessageType,
    split_frame,
};
use crate::runtime::handoff::{HANDOFF_BYTES, Handoff};
use crate::runtime::report::AcceptorReport;
use crate::session::handshake::{
    CookieKey, HandshakeConfig, HandshakeOutcome, answer_connection_request, cookie_keys, shard_for,
};
use crate::time::{Clock, Timestamp};

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
    wakes: Vec<OwnedFd>,
    /// LogonRequest deadline after accept.
    pub logon_timeout: Duration,
    rate_per_s: u32,
    burst: u32,
    /// Connections waiting for their LogonRequest, at most (`tcp.max_pending_logons`); a new
    /// one beyond closes the oldest.
    pub max_pending: usize,
    /// Largest first frame (`tcp.max_message_bytes`, and at most the handoff buffer).
    max_first_frame: usize,
    report: rtrb::Producer<AcceptorReport>,
    buckets: Vec<Bucket>,
    key: (Timestamp, CookieKey),
    tx: [u8; 2048],
    published: Timestamp,
    /// The counters.
    pub counters: Counters,
}

#[derive(Clone, Copy)]
struct Bucket {
    ip: Option<std::net::IpAddr>,
    tokens: f64,
    at: Timestamp,
}

impl Core {
    /// The core of `spec` (its sockets are left to the driver).
    pub(super) fn new(spec: AcceptorSpec) -> (Self, UdpSocket, TcpListener, bool) {
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
            max_pending: spec.max_pending.max(1),
            max_first_frame: spec.max_message_bytes.min(HANDOFF_BYTES),
            report: spec.report,
            buckets: vec![Bucket { ip: None, tokens: 0.0, at: Timestamp::ZERO }; 4096],
            key: (Timestamp::ZERO, key),
            tx: [0; 2048],
            published: Timestamp::ZERO,
            counters: Counters::default(),
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
                c.incr(Counter::ConnectionRequestsAccepted);
                Some(&self.tx[..len])
            }
            HandshakeOutcome::Rejected { len, reason } => {
                c.incr(if reason == ConnectionRejectReason::RateLimited {
                    Counter::ConnectionRequestsRateLimited
                } else {
                    Counter::ConnectionRequestsRejected
                });
                Some(&self.tx[..len])
            }
            HandshakeOutcome::Dropped(_) => {
                c.incr(Counter::ConnectionRequestsDropped);
                None
            }
        }
    }

    /// What to do with a pending connection holding `bytes`, accepted with `deadline` for its
    /// first frame. Counts refusals. A first frame that cannot be a LogonRequest (bad header,
    /// another type, a length other than a LogonRequest's) is refused as soon as its header is
    /// in, not at the deadline (DESIGN.md §2 rule 12).
    pub fn first_frame(&mut self, now: Timestamp, bytes: &[u8], deadline: Timestamp) -> Step {
        if bytes.len() >= HEADER_LEN {
            let why = match Header::decode(bytes) {
                Err(e) => Some(e.as_str()),
                Ok(h) if h.type_id != MessageType::LogonRequest as u16 => Some("logon required"),
                Ok(h) if usize::from(h.length) > self.max_first_frame => Some("message too long"),
                Ok(h) if usize::from(h.length) != LOGON_REQUEST_LEN => Some("length mismatch"),
                Ok(_) => None,
            };
            if let Some(why) = why {
                self.counters.incr(Counter::TcpMalformed);
                return Step::Refuse(why);
            }
        }
        match split_frame(bytes) {
            Ok((frame, _)) => Step::HandOff(match Message::decode_frame(frame) {
                Ok(Message { body: Body::LogonRequest { username, .. }, .. }) => {
                    shard_for(username.as_bytes(), self.handoffs.len())
                }
                // A LogonRequest with a bad body: the shard answers it with the right LoggedOut.
                _ => 0,
            }),
            Err(DecodeError::Truncated { .. }) if now >= deadline => {
                self.counters.incr(Counter::TcpLogonTimeouts);
                Step::Refuse("logon timeout")
            }
            Err(DecodeError::Truncated { .. }) if bytes.len() < HANDOFF_BYTES => Step::NeedMore,
            Err(e) => {
                self.counters.incr(Counter::TcpMalformed);
                Step::Refuse(e.as_str())
            }
        }
    }

    /// A pending connection whose deadline passed (counted).
    pub fn timed_out(&mut self) -> &'static str {
        self.counters.incr(Counter::TcpLogonTimeouts);
        "logon timeout"
    }

    /// A connection refused at once: the handoff queue or the ring has no room (counted).
    pub fn busy(&mut self) -> &'static str {
        self.counters.incr(Counter::TcpRefused);
        "server busy"
    }

    /// The oldest pending connection, closed to make room for a new one (counted).
    pub fn evicted(&mut self) -> &'static str {
        self.counters.incr(Counter::TcpEvicted);
        "server busy"
    }

    /// A pending connection closed by its peer before its LogonRequest (counted).
    pub fn peer_closed(&mut self) {
        self.counters.incr(Counter::TcpPeerClosed);
    }

    /// Hands a connection to `shard` and wakes it; refuses it if that queue is full.
    pub fn hand_off(&mut self, shard: usize, h: Handoff) {
        match self.handoffs[shard].push(h) {
            Ok(()) => {
                self.counters.incr(Counter::TcpHandedOff);
                crate::io::wake(self.wakes[shard].as_fd());
            }
            Err(rtrb::PushError::Full(h)) => {
                let why = self.busy();
                refuse(h.stream, why);
            }
        }
    }

    /// Publishes the counters for /metrics, at most every 200 ms unless `now` is `None`.
    pub fn publish(&mut self, now: Option<Timestamp>, backend: &'static str, pending: usize) {
        if let Some(now) = now {
            if now.saturating_since(self.published) < Duration::from_millis(200) {
                return;
            }
            self.published = now;
        }
        self.counters.set(Counter::TcpPendingLogons, pending as u64);
        // Housekeeping keeps the latest; when it is behind, this one is simply not queued.
        let _ = self.report.push(AcceptorReport { counters: self.counters.clone(), backend });
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

/// A LogonRequest's `messageLength`: the header, username (16), password (32), resetSeqNum (1).
const LOGON_REQUEST_LEN: usize = HEADER_LEN + 49;
