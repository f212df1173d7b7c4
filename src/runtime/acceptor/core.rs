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
use crate::session::limit::{LimitTable, Source, TokenBucket};
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
    /// ConnectionRequest token buckets per source (IPv4 address, IPv6 /64).
    buckets: LimitTable<Source, TokenBucket>,
    key: (Timestamp, CookieKey),
    tx: [u8; 2048],
    published: Timestamp,
    /// The counters.
    pub counters: Counters,
    /// Set while an operator drain refuses new sessions.
    draining: Arc<AtomicBool>,
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
            buckets: LimitTable::new(BUCKETS, bucket_seed(&spec.master)),
            key: (Timestamp::ZERO, key),
            tx: [0; 2048],
            published: Timestamp::ZERO,
            counters: Counters::default(),
            draining: spec.draining,
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
        let (rate, burst) = (self.rate_per_s, self.burst);
        let draining = self.draining.load(Ordering::Relaxed);
        let allowed = draining
            || match self
                .buckets
                .entry(Source::of(from.ip()), now, || TokenBucket::full(now, burst))
            {
                Some(b) => b.take(now, rate, burst),
                None => {
                    // Its set is full of empty buckets: it cannot be tracked, so it is limited.
                    self.counters.incr(Counter::ConnectionRequestsUntracked);
                    false
                }
            };
        let refuse = if draining {
            Some(ConnectionRejectReason::Draining)
        } else {
            (!allowed).then_some(ConnectionRejectReason::RateLimited)
        };
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
                c.incr(match reason {
                    ConnectionRejectReason::RateLimited => Counter::ConnectionRequestsRateLimited,
                    ConnectionRejectReason::Draining => Counter::ConnectionRequestsDraining,
                    _ => Counter::ConnectionRequestsRejected,
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
            Ok(_) if self.draining.load(Ordering::Relaxed) => {
                // DESIGN.md §4: a new TCP logon while draining.
                self.counters.incr(Counter::TcpDraining);
                Step::Refuse("draining")
            }
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

/// Sources whose ConnectionRequest bucket is tracked (one table, `session::limit`).
const BUCKETS: usize = 4096;

/// The bucket table's hash key, derived from the cookie master secret.
fn bucket_seed(master: &[u8; 32]) -> [u8; 16] {
    let mut seed = [0u8; 16];
    seed.copy_from_slice(
        &blake3::keyed_hash(master, b"fleetgate handshake buckets").as_bytes()[..16],
    );
    seed
}

/// A LogonRequest's `messageLength`: the header, username (16), password (32), resetSeqNum (1).
const LOGON_REQUEST_LEN: usize = HEADER_LEN + 49;
