//! What the runtime publishes for the operator side (`ops`) to read, never the other way round:
//! each shard's once-a-second [`Snapshot`] over an SPSC queue (its buffer recycled), the
//! acceptor's [`AcceptorReport`] over another, and the protocol trace queues. [`Published`] bundles the
//! reading ends a started gateway hands over.

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
    /// The acceptor's reports, about every 200 ms.
    pub acceptor: rtrb::Consumer<AcceptorReport>,
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

/// What the acceptor publishes about every 200 ms over its SPSC queue (the latest one wins).
#[derive(Clone, Debug)]
pub struct AcceptorReport {
    /// The acceptor's counters (only [`Scope::Acceptor`] entries are used).
    ///
    /// [`Scope::Acceptor`]: crate::counters::Scope::Acceptor
    pub counters: Counters,
    /// The acceptor's driver: "io_uring" or "poll".
    pub backend: &'static str,
}

/// Rows of the connections list one snapshot carries per shard.
pub const SESSION_ROWS: usize = 1000;
/// Session slots one snapshot looks at per shard: the next snapshot continues where this one
/// stopped, so publishing costs the same per cycle at any fleet size.
pub const SESSION_SLOTS_PER_SNAPSHOT: usize = 65_536;

/// What a shard publishes once a second.
#[derive(Debug)]
pub struct Snapshot {
    /// Shard index.
    pub shard: usize,
    /// Backend name.
    pub backend: &'static str,
    /// The endpoint's and the loop's counters since start, and the gauges now.
    pub counters: Counters,
    /// One page of the connections list: at most [`SESSION_ROWS`] rows, from the slots the
    /// shard looked at this time (see `Endpoint::sessions_page`).
    pub sessions: Vec<SessionInfo>,
    /// The latency histograms of this interval.
    pub latency: Latencies<Histogram<u64>>,
    /// Taken at.
    pub at: Timestamp,
    /// Per-host figures of this shard (`[[hosts]]` order) and the hosts' names.
    pub hosts: Vec<(String, crate::apps::HostStats)>,
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
            sessions: Vec::with_capacity(max_sessions),
            latency: Latencies::new(h),
            at: Timestamp::ZERO,
            hosts: Vec::new(),
        }
    }
}

/// A shard's latency histograms (ns), one per thing timed: `H` is a histogram, or in the merged
/// view an `Option` of one.
#[derive(Clone, Debug, Default)]
pub struct Latencies<H> {
    /// Reading a datagram or TCP chunk to handing its answers to the kernel.
    pub service: H,
    /// A loop pass with work.
    pub cycle: H,
    /// TCP accept to LogonResponse handed to the kernel.
    pub handshake: H,
    /// ResendRequest to its last message handed to the transport.
    pub resend: H,
}

/// The names of [`Latencies`]' histograms in the order of [`Latencies::each`] (the histogram
/// log's tags).
pub const LATENCY_NAMES: [&str; 4] = ["service", "cycle", "handshake", "resend"];

impl<H> Latencies<H> {
    /// Each one made by `f`.
    pub fn new(mut f: impl FnMut() -> H) -> Self {
        Self { service: f(), cycle: f(), handshake: f(), resend: f() }
    }

    /// All four, in the order of [`LATENCY_NAMES`].
    pub fn each(&self) -> [&H; 4] {
        [&self.service, &self.cycle, &self.handshake, &self.resend]
    }

    /// All four, mutable, in the order of [`LATENCY_NAMES`].
    pub fn each_mut(&mut self) -> [&mut H; 4] {
        [&mut self.service, &mut self.cycle, &mut self.handshake, &mut self.resend]
    }
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
