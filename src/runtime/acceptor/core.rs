//! The acceptor's decisions: answers to datagrams on the handshake port (after a per-source
//! token bucket), the fate of pending TCP connections, handoffs, counters. The drivers
//! ([`super::run_poll`], [`super::uring`]) do the socket I/O around it.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{AcceptorSpec, refuse};
use crate::protocol::{Body, ConnectionRejectReason, DecodeError, Message, split_frame};
use crate::runtime::handoff::{HANDOFF_BYTES, Handoff};
use crate::runtime::report::{AcceptorCounters, AcceptorReport};
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
    wakes: Vec<RawFd>,
    /// LogonRequest deadline after accept.
    pub logon_timeout: Duration,
    rate_per_s: u32,
    burst: u32,
    /// Connections waiting for their LogonRequest, at most.
    pub max_pending: usize,
    report: Arc<Mutex<AcceptorReport>>,
    /// ConnectionRequest token buckets per source (IPv4 address, IPv6 /64).
    buckets: LimitTable<Source, TokenBucket>,
    key: (Timestamp, CookieKey),
    tx: [u8; 2048],
    published: Timestamp,
    /// The counters.
    pub counters: AcceptorCounters,
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
            max_pending: spec.max_pending,
            report: spec.report,
            buckets: LimitTable::new(BUCKETS, bucket_seed(&spec.master)),
            key: (Timestamp::ZERO, key),
            tx: [0; 2048],
            published: Timestamp::ZERO,
            counters: AcceptorCounters::default(),
        };
        (core, spec.udp, spec.tcp, spec.uring)
    }

    /// Sources the ConnectionRequest limiter could not track (their set was full of empty
    /// buckets): they were rate limited, and are counted in `rate_limited` too.
    pub fn untracked_sources(&self) -> u64 {
        self.buckets.untracked()
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
        // A source whose set is full of empty buckets cannot be tracked: rate limited too.
        let allowed = self
            .buckets
            .entry(Source::of(from.ip()), now, || TokenBucket::full(now, burst))
            .is_some_and(|b| b.take(now, rate, burst));
        let refuse = (!allowed).then_some(ConnectionRejectReason::RateLimited);
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
        let mut r = self.report.lock().unwrap_or_else(|e| e.into_inner());
        r.counters = self.counters;
        r.backend = backend;
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
