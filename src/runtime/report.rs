//! What the runtime publishes for the operator side (`ops`) to read, never the other way round:
//! each shard's once-a-second [`Snapshot`] over an SPSC queue (its buffer recycled), the
//! acceptor's [`AcceptorReport`], and the protocol trace queues. [`Published`] bundles the
//! reading ends a started gateway hands over.

use std::sync::{Arc, Mutex};

use hdrhistogram::Histogram;

use crate::counters::{Counter, Counters};
use crate::runtime::shard::tap::TraceRecord;
use crate::session::SessionInfo;
use crate::time::{Clock, Timestamp};

/// The reading ends of everything a started gateway publishes.
pub struct Published {
    /// One per shard: its snapshot queue and the way back for the buffers.
    pub shards: Vec<ShardLink>,
    /// One per traced shard: its protocol tap's records.
    pub traces: Vec<rtrb::Consumer<TraceRecord>>,
    /// The acceptor's counters, updated about every 200 ms.
    pub acceptor: Arc<Mutex<AcceptorReport>>,
    /// The time base the shards stamp snapshots with.
    pub clock: Clock,
}

/// Shard-side ends of the snapshot queues.
pub struct ShardLink {
    /// Filled snapshots from the shard.
    pub snapshots: rtrb::Consumer<Box<Snapshot>>,
    /// Empty snapshots back to the shard.
    pub recycle: rtrb::Producer<Box<Snapshot>>,
}

/// What the acceptor last published (behind a mutex the acceptor holds only to copy into).
#[derive(Clone, Copy, Debug, Default)]
pub struct AcceptorReport {
    /// The acceptor's counters (handshakes by outcome).
    pub counters: AcceptorCounters,
    /// The acceptor's driver: "io_uring" or "poll" ("" until it runs).
    pub backend: &'static str,
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

/// What a shard publishes once a second.
#[derive(Debug)]
pub struct Snapshot {
    /// Shard index.
    pub shard: usize,
    /// Backend name.
    pub backend: &'static str,
    /// Counters since start.
    pub counters: Counters,
    /// Extra shard counters since start.
    pub shard_counters: ShardCounters,
    /// The connections list.
    pub sessions: Vec<SessionInfo>,
    /// Time from reading a datagram or TCP chunk to handing its answers to the kernel, this
    /// interval (ns).
    pub service_ns: Histogram<u64>,
    /// Loop pass time, this interval (ns).
    pub cycle_ns: Histogram<u64>,
    /// TCP accept to LogonResponse handed to the kernel, this interval (ns).
    pub handshake_ns: Histogram<u64>,
    /// ResendRequest to its last message handed to the transport, this interval (ns).
    pub resend_ns: Histogram<u64>,
    /// Taken at.
    pub at: Timestamp,
}

impl Snapshot {
    /// An empty snapshot with room for `max_sessions` rows.
    pub fn new(max_sessions: usize, latency_ns_max: u64) -> Self {
        let h = || {
            Histogram::new_with_bounds(1, latency_ns_max.max(2), 3).expect("valid histogram bounds")
        };
        Self {
            shard: 0,
            backend: "",
            counters: Counters::default(),
            shard_counters: ShardCounters::default(),
            sessions: Vec::with_capacity(max_sessions),
            service_ns: h(),
            cycle_ns: h(),
            handshake_ns: h(),
            resend_ns: h(),
            at: Timestamp::ZERO,
        }
    }
}

/// Counters kept by the shard loop itself.
#[derive(Clone, Copy, Debug, Default)]
pub struct ShardCounters {
    /// Handoffs taken.
    pub handoffs: u64,
    /// Handoffs whose connection could not be adopted (no slot).
    pub handoff_rejected: u64,
    /// Datagrams the kernel refused (socket buffer full).
    pub udp_send_dropped: u64,
    /// TCP connections whose send queue filled (slow readers): told LoggedOut and closed.
    pub tcp_slow_closed: u64,
    /// Of those, connections aborted because the reader did not take the LoggedOut in
    /// `tcp.close_linger_ms`.
    pub tcp_slow_aborted: u64,
    /// Connections the shard closed that were aborted after `tcp.close_linger_ms` (the peer
    /// neither read everything nor closed its end); slow readers included.
    pub tcp_close_aborted: u64,
    /// Histogram values above the bound (saturated).
    pub histogram_saturated: u64,
    /// Longest loop pass (ns).
    pub cycle_ns_max: u64,
    /// Loop passes over 1 ms.
    pub cycles_over_1ms: u64,
    /// Trace records dropped because the writer fell behind.
    pub trace_dropped: u64,
}

/// Counter totals by name, for logs.
pub fn summary(c: &Counters) -> String {
    let pick = [
        Counter::LogonsAccepted,
        Counter::MessagesReceived,
        Counter::MessagesSent,
        Counter::MessagesResent,
        Counter::SessionsDetached,
    ];
    pick.iter().map(|&k| format!("{}={}", k.name(), c.get(k))).collect::<Vec<_>>().join(" ")
}
