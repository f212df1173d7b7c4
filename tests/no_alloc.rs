//! The hot path allocates nothing (DESIGN.md §3: "everything on the hot path is allocated at
//! start-up"; "appending and resending allocate nothing").
//!
//! The counting `#[global_allocator]` ([`CountingAlloc`], `fleetgate::sim::alloc`) forwards to
//! the system allocator and counts `alloc`, `alloc_zeroed` and `realloc` calls made by this
//! thread while it is armed. The test drives one gateway `Endpoint` (with an echo
//! [`Application`]) and two `Device`s, one over UDP and one over TCP (stream bytes split by
//! `Deframer`s on both ends), through [`Pair`], the simulator's in-memory harness: buffers
//! allocated up front, no network model, no sockets, virtual time from [`Timestamp`].
//!
//! 1. Warm-up: UDP handshake (`answer_connection_request`, RegistrationRequest,
//!    GetDeviceConfig, DeviceConfig, logon) and TCP logon; then every phase below at a smaller
//!    scale, long enough for the gateway journals (16384 slots) and the device retransmit
//!    buffers to wrap. Allocations here are counted and printed but not asserted (growing at
//!    start-up or on first use would be allowed).
//! 2. Armed: 100,000 application messages each way per device (device type 101, gateway echo
//!    type 201, plus gateway-originated type 300 pushed with [`Endpoint::send`]), with idle
//!    stretches in which both sides heartbeat; 100 lost UDP datagrams device → gateway (the
//!    gateway drops what arrives beyond the gap, the device retransmits and sends TestRequest
//!    for its overdue replies); then a 10,000-message resend on each device:
//!    - UDP: the driver drops 10,000 gateway messages; the next one reveals the gap, the device
//!      sends ResendRequest and the gateway serves the range from the journal;
//!    - TCP: 10,000 gateway messages are lost with the connection; the device reconnects,
//!      resumes (resetSeqNum = 0), sees the gap in the LogonResponse and asks for a resend;
//!
//!    then more live traffic.
//! 3. Disarmed: the allocation count must be exactly zero, and the traffic must have happened
//!    (gateway counters, and every device saw every message in order, the resent ones included,
//!    each taken from its device's preallocated event queue with `Device::poll_event`).
//!
//! To see where an allocation comes from, run with `NO_ALLOC_BACKTRACES=5` (a debug build gives
//! the best backtraces): the allocator prints a backtrace for each of the first 5 armed
//! allocations (they are still counted).
//!
//! ```text
//! cargo test --release --test no_alloc -- --nocapture
//! NO_ALLOC_BACKTRACES=5 cargo test --test no_alloc -- --nocapture
//! ```

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use fleetgate::counters::{Counter, Counters};
use fleetgate::session::{
    AppMessage, Application, DeviceConfig, DeviceEvent, DeviceState, EndpointConfig, Outbox,
    SessionHandle, State, Transport,
};
use fleetgate::sim::alloc::{self, CountingAlloc};
use fleetgate::sim::{Pair, SIM_DEVICE_CONFIG, Watch};
use fleetgate::time::Timestamp;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

// ---------------------------------------------------------------------------------------------
// Sizes
// ---------------------------------------------------------------------------------------------

/// Virtual time between traffic rounds.
const ROUND_STEP: Duration = Duration::from_micros(50);
/// Virtual time step while idle (heartbeats).
const IDLE_STEP: Duration = Duration::from_millis(100);
/// Gateway journal: keeps at least this many application messages per session.
const JOURNAL_MESSAGES: usize = 16_384;

const WARMUP_MESSAGES: u64 = 20_000;
const WARMUP_RESEND: u64 = 1_000;
const MEASURED_MESSAGES: u64 = 100_000;
const MEASURED_RESEND: u64 = 10_000;
const AFTER_RESEND_MESSAGES: u64 = 5_000;
/// Device → gateway datagram losses (UDP) in the measured section.
const UPSTREAM_LOSSES: u64 = 100;
/// An idle stretch (both sides heartbeat) after every this many messages.
const IDLE_EVERY: u64 = 25_000;
/// The gateway pushes one type-300 message every this many rounds.
const PUSH_EVERY_ROUNDS: u64 = 2;

/// The devices' indexes in the pair.
const UDP: usize = 0;
const TCP: usize = 1;

/// Largest application body used (8..=88 bytes, so a few dozen messages per datagram).
const BODY_MAX: usize = 88;

/// Writes a body carrying `counter` (little-endian, first 8 bytes) and a length that varies
/// with it.
fn body(counter: u64, buf: &mut [u8; BODY_MAX]) -> &[u8] {
    let len = 8 + (counter % 11) as usize * 8;
    buf[..8].copy_from_slice(&counter.to_le_bytes());
    buf[8..len].fill(counter as u8);
    &buf[..len]
}

fn counter_of(body: &[u8]) -> Option<u64> {
    let raw: [u8; 8] = body.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

// ---------------------------------------------------------------------------------------------
// The gateway's application and what the devices see
// ---------------------------------------------------------------------------------------------

/// The built-in `echo` (type T in 100..=199 as T + 100), counting the replies sent and refused.
struct Echo {
    echoed: Rc<Cell<u64>>,
    refused: Rc<Cell<u64>>,
}

impl Application for Echo {
    fn on_message(&mut self, _now: Timestamp, msg: AppMessage<'_>, out: &mut Outbox<'_>) {
        let counter = match fleetgate::apps::Echo::answer(msg, out) {
            Some(Ok(_)) => &self.echoed,
            Some(Err(_)) => &self.refused,
            None => return,
        };
        counter.set(counter.get() + 1);
    }
}

/// What one device saw, checked as it arrives (no allocation, no panic in the callback).
#[derive(Debug, Default)]
struct Seen {
    /// Counter expected in the next echo (type 201).
    echo_next: u64,
    /// Counter expected in the next gateway push (type 300).
    push_next: u64,
    /// Sequence number of the last application message.
    last_seq: i64,
    /// Application messages delivered.
    app: u64,
    /// Of which flagged as resent.
    resent: u64,
    registered: u64,
    logged_on: u64,
    /// Anything unexpected: out-of-order or unknown messages, rejects, ends, stream resets.
    errors: u64,
}

impl Watch for Seen {
    fn on_event(&mut self, e: DeviceEvent<'_>) {
        match e {
            DeviceEvent::App { seq, type_id, body, resent, .. } => {
                self.app += 1;
                self.resent += u64::from(resent);
                if seq <= self.last_seq {
                    self.errors += 1;
                }
                self.last_seq = seq;
                let next = match type_id {
                    201 => &mut self.echo_next,
                    300 => &mut self.push_next,
                    _ => {
                        self.errors += 1;
                        return;
                    }
                };
                if counter_of(body) == Some(*next) {
                    *next += 1;
                } else {
                    self.errors += 1;
                }
            }
            DeviceEvent::Registered { .. } => self.registered += 1,
            DeviceEvent::LoggedOn { .. } => self.logged_on += 1,
            DeviceEvent::StreamReset { .. }
            | DeviceEvent::Rejected { .. }
            | DeviceEvent::Ended { .. } => self.errors += 1,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The driver
// ---------------------------------------------------------------------------------------------

/// One endpoint, one UDP device and one TCP device ([`Pair`]), and the traffic each is sent.
struct Harness {
    pair: Pair<Seen>,
    /// Per device: sent by it (type 101), i.e. the counter of its next message.
    sent: [u64; 2],
    /// Per device: pushed by the gateway to its session (type 300).
    pushed: [u64; 2],
    rounds: u64,
    scratch: [u8; BODY_MAX],
}

impl Harness {
    fn new(echoed: Rc<Cell<u64>>, refused: Rc<Cell<u64>>) -> Self {
        let mut cfg =
            EndpointConfig { max_sessions: 4, max_connections: 16, ..EndpointConfig::default() };
        cfg.session.journal.messages_per_session = JOURNAL_MESSAGES;
        cfg.session.validate().expect("session config");
        let mut pair = Pair::new(cfg, Box::new(Echo { echoed, refused }));
        let udp = DeviceConfig::new(Transport::Udp, b"PDT9090-0001", b"udp-device", b"secret");
        assert_eq!(pair.add(udp, Seen::default()), UDP);
        let tcp = DeviceConfig::new(Transport::Tcp, b"", b"tcp-device", b"secret");
        assert_eq!(pair.add(tcp, Seen::default()), TCP);
        Self { pair, sent: [0; 2], pushed: [0; 2], rounds: 0, scratch: [0; BODY_MAX] }
    }

    fn udp_seen(&self) -> &Seen {
        &self.pair.peers[UDP].watch
    }

    fn tcp_seen(&self) -> &Seen {
        &self.pair.peers[TCP].watch
    }

    fn handle(&self, i: usize) -> SessionHandle {
        self.pair.peers[i].handle.expect("logged on")
    }

    /// Handshake (UDP) and logon (both).
    fn connect(&mut self) {
        self.pair.connect_all();
        assert_eq!(self.pair.peers[UDP].dev.state(), DeviceState::Active);
        assert_eq!(self.pair.peers[TCP].dev.state(), DeviceState::Active);
        assert_eq!(self.udp_seen().registered, 1);
        let config = self.pair.ep.device_config(self.handle(UDP)).expect("udp session");
        assert_eq!(config, SIM_DEVICE_CONFIG);
    }

    fn advance(&mut self, d: Duration) {
        self.pair.advance(d);
    }

    /// Nothing to send for `d`: only timers (heartbeats, acknowledgements) run.
    fn idle(&mut self, d: Duration) {
        let until = self.pair.now + d;
        while self.pair.now < until {
            self.advance(IDLE_STEP);
        }
    }

    /// Rounds of traffic until each device has sent `n` more messages: each round both devices
    /// queue 1..=8 messages (so datagrams and stream chunks carry several), the gateway echoes
    /// them and pushes one of its own every [`PUSH_EVERY_ROUNDS`] rounds.
    fn traffic(&mut self, n: u64) {
        let target = self.sent[UDP] + n;
        let mut since_idle = 0;
        while self.sent[UDP] < target {
            let k = (self.rounds % 8 + 1).min(target - self.sent[UDP]);
            self.send(UDP, k, false);
            self.send(TCP, k, false);
            if self.rounds % PUSH_EVERY_ROUNDS == 0 {
                self.push(UDP);
                self.push(TCP);
            }
            self.rounds += 1;
            self.pair.pump();
            self.advance(ROUND_STEP);
            since_idle += k;
            if since_idle >= IDLE_EVERY {
                since_idle = 0;
                // Longer than 1.5 × H: each side must heartbeat to keep the other content.
                self.idle(Duration::from_secs(12));
            }
        }
    }

    /// Device `i` sends `k` messages (type 101).
    fn send(&mut self, i: usize, k: u64, expect_reply: bool) {
        for _ in 0..k {
            let b = body(self.sent[i], &mut self.scratch);
            let now = self.pair.now;
            self.pair.peers[i].dev.send_app(now, 101, b, expect_reply).expect("device send");
            self.sent[i] += 1;
        }
    }

    /// UDP, device → gateway losses, `times` times: a datagram of 3 messages is lost, the next
    /// 2 arrive beyond the gap and are dropped by the gateway; the device retransmits
    /// everything unacknowledged after `udp.retransmit_ms` and, its replies overdue, sends a
    /// TestRequest.
    fn udp_upstream_loss(&mut self, times: u64) {
        for _ in 0..times {
            self.pair.peers[UDP].drop_up = true;
            self.send(UDP, 3, true);
            self.pair.pump();
            self.pair.peers[UDP].drop_up = false;
            self.send(UDP, 2, true);
            self.pair.pump();
            self.idle(Duration::from_millis(500));
        }
    }

    /// The gateway pushes one message (type 300) to device `i`'s session.
    fn push(&mut self, i: usize) {
        let h = self.handle(i);
        let b = body(self.pushed[i], &mut self.scratch);
        self.pair.ep.send(self.pair.now, h, 300, b).expect("gateway push");
        self.pushed[i] += 1;
    }

    /// The gateway pushes `lost` messages to device `i`, all dropped on the way.
    fn lose_pushes(&mut self, i: usize, lost: u64) {
        self.pair.peers[i].drop_down = true;
        for n in 0..lost {
            self.push(i);
            if n % 64 == 63 {
                self.pair.pump();
            }
        }
        self.pair.pump();
        self.pair.peers[i].drop_down = false;
    }

    /// UDP: `lost` gateway messages never arrive; the next one reveals the gap and the device's
    /// ResendRequest is served from the journal.
    fn udp_resend(&mut self, lost: u64) {
        self.lose_pushes(UDP, lost);
        let requests = self.pair.peers[UDP].dev.stats().resend_requests;
        self.advance(ROUND_STEP);
        self.push(UDP);
        self.pair.pump();
        let asked = self.pair.peers[UDP].dev.stats().resend_requests;
        assert_eq!(asked, requests + 1, "udp device asked once");
        self.advance(ROUND_STEP);
    }

    /// TCP: `lost` gateway messages die with the connection; the device reconnects, resumes,
    /// and asks for what it missed.
    fn tcp_resend(&mut self, lost: u64) {
        self.lose_pushes(TCP, lost);
        self.advance(ROUND_STEP);

        self.pair.cut(TCP);
        self.pair.pump();
        let h = self.handle(TCP);
        assert_eq!(self.pair.ep.session(h).map(|s| s.state()), Some(State::Detached));

        let requests = self.pair.peers[TCP].dev.stats().resend_requests;
        self.pair.connect(TCP, false);
        self.pair.pump();
        let tcp = &self.pair.peers[TCP].dev;
        assert_eq!(tcp.state(), DeviceState::Active);
        assert_eq!(tcp.stats().resend_requests, requests + 1, "tcp device asked once");
        self.advance(ROUND_STEP);
    }

    /// Every message each device was sent arrived, in order, exactly once; nothing odd happened.
    fn check_delivery(&self) {
        for (name, seen, sent, pushed) in [
            ("udp", self.udp_seen(), self.sent[UDP], self.pushed[UDP]),
            ("tcp", self.tcp_seen(), self.sent[TCP], self.pushed[TCP]),
        ] {
            assert_eq!(seen.errors, 0, "{name}: unexpected events: {seen:?}");
            assert_eq!(seen.echo_next, sent, "{name}: echoes received");
            assert_eq!(seen.push_next, pushed, "{name}: pushes received");
            assert_eq!(seen.app, sent + pushed, "{name}: application messages received");
        }
        assert_eq!(self.pair.surprises, 0, "unexpected destinations or endpoint events");
        assert_eq!(self.pair.peers[UDP].dev.unacked(), 0);
        assert_eq!(self.pair.peers[TCP].dev.unacked(), 0);
    }
}

fn delta(after: &Counters, before: &Counters, c: Counter) -> u64 {
    after.get(c) - before.get(c)
}

#[test]
fn hot_path_allocates_nothing() {
    if let Some(n) = std::env::var("NO_ALLOC_BACKTRACES").ok().and_then(|v| v.parse().ok()) {
        alloc::print_backtraces(n);
    }
    // The detector itself must see an allocation on this thread, or a zero below would prove
    // nothing.
    alloc::take();
    alloc::arm_this_thread(true);
    std::hint::black_box(vec![1u8; 64]);
    alloc::arm_this_thread(false);
    assert!(alloc::take().growth() > 0, "the counting allocator does not see this thread");

    let echoed = Rc::new(Cell::new(0u64));
    let refused = Rc::new(Cell::new(0u64));
    let mut h = Harness::new(echoed.clone(), refused.clone());

    // Connect, then every phase once at a smaller scale. Counted for the report, not asserted:
    // growing here (at start-up or on first use) would be allowed.
    alloc::arm_this_thread(true);
    h.connect();
    h.traffic(WARMUP_MESSAGES);
    h.udp_upstream_loss(10);
    h.udp_resend(WARMUP_RESEND);
    h.tcp_resend(WARMUP_RESEND);
    h.traffic(1_000);
    alloc::arm_this_thread(false);
    let warmup_allocs = alloc::take().growth();
    h.check_delivery();
    let warm_udp_out = h.pair.ep.session(h.handle(UDP)).unwrap().next_out();
    assert!(
        warm_udp_out > JOURNAL_MESSAGES as i64 + 1_000,
        "warm-up must wrap the gateway journal (next_out {warm_udp_out})"
    );

    let before = h.pair.ep.counters().clone();
    let (udp0, tcp0) = (h.udp_seen().resent, h.tcp_seen().resent);
    let (udp_sent0, tcp_sent0) = (h.sent[UDP], h.sent[TCP]);
    let (udp_app0, tcp_app0) = (h.udp_seen().app, h.tcp_seen().app);
    let (udp_stats0, tcp_stats0) = (h.pair.peers[UDP].dev.stats(), h.pair.peers[TCP].dev.stats());
    let dropped0 = h.pair.dropped;
    let t0 = h.pair.now;

    alloc::arm_this_thread(true);
    h.traffic(MEASURED_MESSAGES);
    h.udp_upstream_loss(UPSTREAM_LOSSES);
    h.udp_resend(MEASURED_RESEND);
    h.tcp_resend(MEASURED_RESEND);
    h.traffic(AFTER_RESEND_MESSAGES);
    alloc::arm_this_thread(false);

    let alloc::Counts { allocs, reallocs, deallocs } = alloc::counts();
    let after = h.pair.ep.counters().clone();
    let d = |c| delta(&after, &before, c);
    let udp_resent = h.udp_seen().resent - udp0;
    let tcp_resent = h.tcp_seen().resent - tcp0;
    let (udp_stats, tcp_stats) = (h.pair.peers[UDP].dev.stats(), h.pair.peers[TCP].dev.stats());
    // Every gateway counter and gauge that moved in the armed section, by name.
    let moved: Vec<String> = Counter::VALUES
        .iter()
        .filter(|&&c| after.get(c) != before.get(c))
        .map(|&c| {
            format!("{} {:+}", c.name(), i128::from(after.get(c)) - i128::from(before.get(c)))
        })
        .collect();
    println!(
        "handshake, logons and warm-up (not asserted): {warmup_allocs} allocs + reallocs\n\
         armed section: {allocs} allocs, {reallocs} reallocs, {deallocs} deallocs; \
         {:.1} s virtual; {} rounds total\n\
         gateway: {}\n\
         udp device: sent {}, received {} (resent {udp_resent}), retransmits {}, \
         resend requests {}, datagrams dropped by the driver (both ways) {}\n\
         tcp device: sent {}, received {} (resent {tcp_resent}), resend requests {}",
        h.pair.now.saturating_since(t0).as_secs_f64(),
        h.rounds,
        moved.join(", "),
        h.sent[UDP] - udp_sent0,
        h.udp_seen().app - udp_app0,
        udp_stats.retransmits - udp_stats0.retransmits,
        udp_stats.resend_requests - udp_stats0.resend_requests,
        h.pair.dropped - dropped0,
        h.sent[TCP] - tcp_sent0,
        h.tcp_seen().app - tcp_app0,
        tcp_stats.resend_requests - tcp_stats0.resend_requests,
    );

    // The traffic really happened.
    h.check_delivery();
    let measured = MEASURED_MESSAGES + AFTER_RESEND_MESSAGES;
    assert_eq!(h.sent[UDP] - udp_sent0, measured + 5 * UPSTREAM_LOSSES);
    assert_eq!(h.sent[TCP] - tcp_sent0, measured);
    assert_eq!(
        d(Counter::AppMessagesReceived),
        2 * measured + 5 * UPSTREAM_LOSSES,
        "device → gateway, each exactly once"
    );
    assert!(d(Counter::AppMessagesSent) >= 2 * measured + 2 * MEASURED_RESEND, "gateway → device");
    assert!(udp_stats.retransmits - udp_stats0.retransmits >= 5 * UPSTREAM_LOSSES);
    assert!(d(Counter::DropOutOfOrder) >= 2 * UPSTREAM_LOSSES, "beyond-the-gap drops");
    assert!(d(Counter::HeartbeatsSent) > 0, "idle stretches heartbeat");
    assert_eq!(refused.get(), 0, "echo refused");
    assert!(echoed.get() >= 2 * (WARMUP_MESSAGES + measured));
    assert!(h.udp_seen().app - udp_app0 >= measured + MEASURED_RESEND);
    assert!(h.tcp_seen().app - tcp_app0 >= measured + MEASURED_RESEND);
    assert!(d(Counter::MessagesResent) >= 2 * MEASURED_RESEND, "resent from the journal");
    assert!(udp_resent >= MEASURED_RESEND && tcp_resent >= MEASURED_RESEND);
    assert_eq!(d(Counter::ResendRequests), 2);
    assert_eq!(d(Counter::ResendWindowExceeded), 0);
    assert_eq!(d(Counter::SessionsResumed), 1, "tcp resume");
    assert_eq!(d(Counter::LogonsAccepted), 1, "tcp resume");
    assert_eq!(d(Counter::OutputOverflow) + d(Counter::SendBackpressure), 0);
    assert!(h.pair.dropped - dropped0 > 0);
    // Every device event went through its bounded queue, none refused for want of room.
    assert_eq!((udp_stats.event_queue_full, tcp_stats.event_queue_full), (0, 0));

    // And allocated nothing doing it.
    assert_eq!(
        (allocs, reallocs),
        (0, 0),
        "the hot path allocated (rerun with NO_ALLOC_BACKTRACES=5 -- --nocapture to see where)"
    );
}
