//! The hot path allocates nothing (DESIGN.md §3: "everything on the hot path is allocated at
//! start-up"; "appending and resending allocate nothing").
//!
//! A counting `#[global_allocator]` wraps [`System`] and counts `alloc`, `alloc_zeroed` and
//! `realloc` calls made by this thread while a thread-local flag is armed. The test drives one
//! gateway [`Endpoint`] (with an echo [`Application`]) and two [`Device`]s, one over UDP and
//! one over TCP (stream bytes split by [`Deframer`]s on both ends), directly over buffers
//! allocated up front: no simulator, no sockets, virtual time from [`Timestamp::from_nanos`].
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
//!    (gateway counters, and every device saw every message in order, the resent ones included).
//!
//! To see where an allocation comes from, run with `NO_ALLOC_BACKTRACES=5` (a debug build gives
//! the best backtraces): the allocator prints a backtrace for each of the first 5 armed
//! allocations (they are still counted).
//!
//! ```text
//! cargo test --release --test no_alloc -- --nocapture
//! NO_ALLOC_BACKTRACES=5 cargo test --test no_alloc -- --nocapture
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetgate::counters::{Counter, Counters};
use fleetgate::protocol::Deframer;
use fleetgate::session::handshake::{
    CookieKey, CookieKeys, HandshakeConfig, HandshakeOutcome, answer_connection_request,
};
use fleetgate::session::{
    Application, ConnId, Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, Endpoint,
    EndpointConfig, EndpointEvent, Link, OpenLogon, Outbox, SessionHandle, State, Transport,
};
use fleetgate::time::Timestamp;

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

/// Forwards to [`System`]; counts calls made while [`ARMED`] is set on the calling thread.
struct CountingAlloc;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// `alloc` + `alloc_zeroed` calls while armed.
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// `realloc` calls while armed.
static REALLOCS: AtomicU64 = AtomicU64::new(0);
/// `dealloc` calls while armed (reported, not asserted: freeing is not growing).
static DEALLOCS: AtomicU64 = AtomicU64::new(0);
/// Backtraces still to print for armed allocations (`NO_ALLOC_BACKTRACES`).
static BACKTRACES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // `const` and no destructor: reading it never allocates, so the allocator may use it.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn armed() -> bool {
    ARMED.try_with(Cell::get).unwrap_or(false)
}

fn set_armed(on: bool) {
    ARMED.with(|a| a.set(on));
}

/// Counts one armed allocation; prints its backtrace while any are left to print.
fn record(counter: &AtomicU64, what: &str, size: usize) {
    if !armed() {
        return;
    }
    counter.fetch_add(1, Ordering::Relaxed);
    let print =
        BACKTRACES.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
    if print {
        // Disarmed while printing: the backtrace and the formatting allocate themselves.
        set_armed(false);
        let bt = std::backtrace::Backtrace::force_capture();
        eprintln!("armed {what} of {size} bytes:\n{bt}");
        set_armed(true);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counting touches only
// atomics and a const thread-local and never unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(&ALLOCS, "alloc", layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(&ALLOCS, "alloc_zeroed", layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract for `layout`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(&REALLOCS, "realloc", new_size);
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`, as
        // the caller guarantees; `new_size` is valid by the same contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if armed() {
            DEALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

// ---------------------------------------------------------------------------------------------
// Sizes and addresses
// ---------------------------------------------------------------------------------------------

const START_NS: u64 = 1_000_000_000;
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

const SESSION_PORT: u16 = 5000;
const UDP_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 3771);
const TCP_PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2)), 40_000);
const DEVICE_CONFIG: &[u8] = b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~";

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

/// Echoes type T in 100..=199 as T + 100 (like the built-in `echo` and the simulator's app).
struct Echo {
    echoed: Rc<Cell<u64>>,
    refused: Rc<Cell<u64>>,
}

impl Application for Echo {
    fn on_message(
        &mut self,
        _now: Timestamp,
        session: SessionHandle,
        type_id: u16,
        body: &[u8],
        out: &mut Outbox<'_>,
    ) {
        if (100..=199).contains(&type_id) {
            let counter = if out.send(session, type_id + 100, body).is_ok() {
                &self.echoed
            } else {
                &self.refused
            };
            counter.set(counter.get() + 1);
        }
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

impl Seen {
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

/// Splits `bytes` into frames through `d`, calling `on_frame` for each whole one.
fn feed(d: &mut Deframer, mut bytes: &[u8], mut on_frame: impl FnMut(&[u8])) {
    loop {
        let n = d.push(bytes);
        bytes = &bytes[n..];
        let mut frames = 0;
        while let Some(frame) = d.next_frame().expect("stream framing") {
            on_frame(frame);
            frames += 1;
        }
        if bytes.is_empty() {
            return;
        }
        assert!(n > 0 || frames > 0, "deframer stuck");
    }
}

/// One endpoint, one UDP device and one TCP device, wired together through preallocated buffers.
struct Harness {
    now: Timestamp,
    ep: Endpoint,
    hs: HandshakeConfig,
    key: CookieKey,
    next_nonce: u64,

    udp: Device,
    udp_seen: Seen,
    udp_handle: Option<SessionHandle>,
    /// Sent by the UDP device (type 101), i.e. the counter of its next message.
    udp_sent: u64,
    /// Pushed by the gateway to the UDP session (type 300).
    udp_pushed: u64,
    /// Drop every gateway datagram to the UDP device.
    drop_udp: bool,
    /// Drop every UDP device datagram to the session port.
    drop_udp_up: bool,

    tcp: Device,
    tcp_seen: Seen,
    tcp_handle: Option<SessionHandle>,
    tcp_sent: u64,
    tcp_pushed: u64,
    /// Drop every gateway chunk on the TCP connection (lost with the connection).
    drop_tcp: bool,
    conn: ConnId,
    /// Gateway side of the stream.
    gw_deframer: Deframer,
    /// The LogonRequest (first frame) has been handed to `handle_tcp_logon`.
    gw_started: bool,
    /// Device side of the stream.
    dev_deframer: Deframer,

    /// Gateway buffers dropped on purpose.
    dropped: u64,
    /// Gateway output with an unexpected destination, CloseConnection and Ended events.
    surprises: u64,
    rounds: u64,

    gw_buf: Box<[u8]>,
    dev_buf: Box<[u8]>,
    hs_buf: Box<[u8]>,
    scratch: [u8; BODY_MAX],
}

impl Harness {
    fn new(echoed: Rc<Cell<u64>>, refused: Rc<Cell<u64>>) -> Self {
        let mut cfg =
            EndpointConfig { max_sessions: 4, max_connections: 16, ..EndpointConfig::default() };
        cfg.session.journal.messages_per_session = JOURNAL_MESSAGES;
        cfg.session.validate().expect("session config");
        let key = CookieKey([0x5a; 32]);
        let keys = CookieKeys { current: key, previous: None };
        let app = Echo { echoed, refused };
        let ep = Endpoint::new(cfg, keys, [9; 32], Box::new(OpenLogon), Box::new(app));

        let mut udp = Device::new(DeviceConfig::new(
            Transport::Udp,
            b"PDT9090-0001",
            b"udp-device",
            b"secret",
        ));
        udp.set_device_config(DEVICE_CONFIG);
        let tcp = Device::new(DeviceConfig::new(Transport::Tcp, b"", b"tcp-device", b"secret"));
        Self {
            now: Timestamp::from_nanos(START_NS),
            ep,
            hs: HandshakeConfig {
                shards: 1,
                session_port_base: SESSION_PORT,
                cookie_ttl: Duration::from_secs(5),
            },
            key,
            next_nonce: 1,
            udp,
            udp_seen: Seen::default(),
            udp_handle: None,
            udp_sent: 0,
            udp_pushed: 0,
            drop_udp: false,
            drop_udp_up: false,
            tcp,
            tcp_seen: Seen::default(),
            tcp_handle: None,
            tcp_sent: 0,
            tcp_pushed: 0,
            drop_tcp: false,
            conn: ConnId(0),
            gw_deframer: Deframer::new(64 * 1024),
            gw_started: false,
            dev_deframer: Deframer::new(64 * 1024),
            dropped: 0,
            surprises: 0,
            rounds: 0,
            gw_buf: vec![0; 16 * 1024].into_boxed_slice(),
            dev_buf: vec![0; 16 * 1024].into_boxed_slice(),
            hs_buf: vec![0; 2048].into_boxed_slice(),
            scratch: [0; BODY_MAX],
        }
    }

    fn nonce(&mut self) -> u64 {
        self.next_nonce += 1;
        self.next_nonce
    }

    /// Handshake (UDP) and logon (both).
    fn connect(&mut self) {
        let (a, b) = (self.nonce(), self.nonce());
        self.udp.connect(self.now, a, true);
        self.tcp.connect(self.now, b, true);
        self.pump();
        assert_eq!(self.udp.state(), DeviceState::Active);
        assert_eq!(self.tcp.state(), DeviceState::Active);
        assert!(self.udp_handle.is_some() && self.tcp_handle.is_some());
        assert_eq!(self.udp_seen.registered, 1);
        let udp = self.ep.session(self.udp_handle.unwrap()).expect("udp session");
        assert_eq!(udp.device_config(), DEVICE_CONFIG);
    }

    /// Moves everything every party wants to send until nobody wants to send anything.
    fn pump(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn step(&mut self) -> bool {
        let now = self.now;
        let mut any = false;

        // UDP device → handshake port / session port.
        while let Some(t) = self.udp.poll_transmit(now, &mut self.dev_buf) {
            any = true;
            let data = &self.dev_buf[..t.len];
            match t.dest {
                DeviceDest::Handshake => {
                    let out = answer_connection_request(
                        &self.hs,
                        &self.key,
                        now,
                        UDP_PEER,
                        data,
                        None,
                        &mut self.hs_buf,
                    );
                    if let HandshakeOutcome::Accepted { len, .. }
                    | HandshakeOutcome::Rejected { len, .. } = out
                    {
                        let seen = &mut self.udp_seen;
                        self.udp
                            .handle_datagram(now, &self.hs_buf[..len], &mut |e| seen.on_event(e));
                    }
                }
                DeviceDest::SessionPort(SESSION_PORT) if self.drop_udp_up => self.dropped += 1,
                DeviceDest::SessionPort(SESSION_PORT) => {
                    self.ep.handle_datagram(now, UDP_PEER, data);
                }
                DeviceDest::SessionPort(_) | DeviceDest::Stream => self.surprises += 1,
            }
        }

        // TCP device → stream → gateway deframer → endpoint.
        while let Some(t) = self.tcp.poll_transmit(now, &mut self.dev_buf) {
            any = true;
            let (ep, started, conn) = (&mut self.ep, &mut self.gw_started, self.conn);
            feed(&mut self.gw_deframer, &self.dev_buf[..t.len], |frame| {
                if *started {
                    ep.handle_tcp_frame(now, conn, frame);
                } else {
                    *started = true;
                    ep.handle_tcp_logon(now, conn, TCP_PEER, frame);
                }
            });
        }

        // Gateway → devices.
        while let Some(t) = self.ep.poll_transmit(now, &mut self.gw_buf) {
            any = true;
            let data = &self.gw_buf[..t.len];
            match t.dest {
                Link::Udp(to) if to == UDP_PEER => {
                    if self.drop_udp {
                        self.dropped += 1;
                    } else {
                        let seen = &mut self.udp_seen;
                        self.udp.handle_datagram(now, data, &mut |e| seen.on_event(e));
                    }
                }
                Link::Tcp(c) if c == self.conn => {
                    if self.drop_tcp {
                        self.dropped += 1;
                    } else {
                        let (dev, seen) = (&mut self.tcp, &mut self.tcp_seen);
                        feed(&mut self.dev_deframer, data, |frame| {
                            dev.handle_frame(now, frame, &mut |e| seen.on_event(e));
                        });
                    }
                }
                _ => self.surprises += 1,
            }
        }

        while let Some(ev) = self.ep.poll_event() {
            match ev {
                EndpointEvent::LoggedOn(h) => match self.ep.session(h).map(|s| s.transport()) {
                    Some(Transport::Udp) => self.udp_handle = Some(h),
                    Some(Transport::Tcp) => self.tcp_handle = Some(h),
                    None => self.surprises += 1,
                },
                EndpointEvent::CloseConnection(_) | EndpointEvent::Ended(..) => {
                    self.surprises += 1;
                }
                EndpointEvent::ResendServed(_) | EndpointEvent::SlowReader(_) => {}
            }
        }
        any
    }

    /// Fires every due timer (gateway and devices).
    fn fire_timers(&mut self) {
        let now = self.now;
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
        if self.udp.poll_timeout().is_some_and(|t| t <= now) {
            let seen = &mut self.udp_seen;
            self.udp.handle_timeout(now, &mut |e| seen.on_event(e));
        }
        if self.tcp.poll_timeout().is_some_and(|t| t <= now) {
            let seen = &mut self.tcp_seen;
            self.tcp.handle_timeout(now, &mut |e| seen.on_event(e));
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.fire_timers();
        self.pump();
    }

    /// Nothing to send for `d`: only timers (heartbeats, acknowledgements) run.
    fn idle(&mut self, d: Duration) {
        let until = self.now + d;
        while self.now < until {
            self.advance(IDLE_STEP);
        }
    }

    /// Rounds of traffic until each device has sent `n` more messages: each round both devices
    /// queue 1..=8 messages (so datagrams and stream chunks carry several), the gateway echoes
    /// them and pushes one of its own every [`PUSH_EVERY_ROUNDS`] rounds.
    fn traffic(&mut self, n: u64) {
        let target = self.udp_sent + n;
        let mut since_idle = 0;
        while self.udp_sent < target {
            let k = (self.rounds % 8 + 1).min(target - self.udp_sent);
            self.udp_send(k, false);
            for _ in 0..k {
                let b = body(self.tcp_sent, &mut self.scratch);
                self.tcp.send_app(self.now, 101, b, false).expect("tcp device send");
                self.tcp_sent += 1;
            }
            if self.rounds % PUSH_EVERY_ROUNDS == 0 {
                self.push_udp();
                self.push_tcp();
            }
            self.rounds += 1;
            self.pump();
            self.advance(ROUND_STEP);
            since_idle += k;
            if since_idle >= IDLE_EVERY {
                since_idle = 0;
                // Longer than 1.5 × H: each side must heartbeat to keep the other content.
                self.idle(Duration::from_secs(12));
            }
        }
    }

    fn udp_send(&mut self, k: u64, expect_reply: bool) {
        for _ in 0..k {
            let b = body(self.udp_sent, &mut self.scratch);
            self.udp.send_app(self.now, 101, b, expect_reply).expect("udp device send");
            self.udp_sent += 1;
        }
    }

    /// UDP, device → gateway losses, `times` times: a datagram of 3 messages is lost, the next
    /// 2 arrive beyond the gap and are dropped by the gateway; the device retransmits
    /// everything unacknowledged after `udp.retransmit_ms` and, its replies overdue, sends a
    /// TestRequest.
    fn udp_upstream_loss(&mut self, times: u64) {
        for _ in 0..times {
            self.drop_udp_up = true;
            self.udp_send(3, true);
            self.pump();
            self.drop_udp_up = false;
            self.udp_send(2, true);
            self.pump();
            self.idle(Duration::from_millis(500));
        }
    }

    fn push_udp(&mut self) {
        let b = body(self.udp_pushed, &mut self.scratch);
        let h = self.udp_handle.expect("udp handle");
        self.ep.send(self.now, h, 300, b).expect("gateway push (udp)");
        self.udp_pushed += 1;
    }

    fn push_tcp(&mut self) {
        let b = body(self.tcp_pushed, &mut self.scratch);
        let h = self.tcp_handle.expect("tcp handle");
        self.ep.send(self.now, h, 300, b).expect("gateway push (tcp)");
        self.tcp_pushed += 1;
    }

    /// UDP: `lost` gateway messages never arrive; the next one reveals the gap and the device's
    /// ResendRequest is served from the journal.
    fn udp_resend(&mut self, lost: u64) {
        self.drop_udp = true;
        for i in 0..lost {
            self.push_udp();
            if i % 64 == 63 {
                self.pump();
            }
        }
        self.pump();
        self.drop_udp = false;
        let requests = self.udp.stats().resend_requests;
        self.advance(ROUND_STEP);
        self.push_udp();
        self.pump();
        assert_eq!(self.udp.stats().resend_requests, requests + 1, "udp device asked once");
        self.advance(ROUND_STEP);
    }

    /// TCP: `lost` gateway messages die with the connection; the device reconnects, resumes,
    /// and asks for what it missed.
    fn tcp_resend(&mut self, lost: u64) {
        self.drop_tcp = true;
        for i in 0..lost {
            self.push_tcp();
            if i % 64 == 63 {
                self.pump();
            }
        }
        self.pump();
        self.drop_tcp = false;
        self.advance(ROUND_STEP);

        self.ep.handle_tcp_closed(self.now, self.conn);
        self.tcp.transport_lost();
        self.pump();
        let h = self.tcp_handle.expect("tcp handle");
        assert_eq!(self.ep.session(h).map(|s| s.state()), Some(State::Detached));

        self.conn = ConnId(self.conn.0 + 1);
        self.gw_deframer.reset();
        self.gw_started = false;
        self.dev_deframer.reset();
        let requests = self.tcp.stats().resend_requests;
        let nonce = self.nonce();
        self.tcp.connect(self.now, nonce, false);
        self.pump();
        assert_eq!(self.tcp.state(), DeviceState::Active);
        assert_eq!(self.tcp.stats().resend_requests, requests + 1, "tcp device asked once");
        self.advance(ROUND_STEP);
    }

    /// Every message each device was sent arrived, in order, exactly once; nothing odd happened.
    fn check_delivery(&self) {
        for (name, seen, sent, pushed) in [
            ("udp", &self.udp_seen, self.udp_sent, self.udp_pushed),
            ("tcp", &self.tcp_seen, self.tcp_sent, self.tcp_pushed),
        ] {
            assert_eq!(seen.errors, 0, "{name}: unexpected events: {seen:?}");
            assert_eq!(seen.echo_next, sent, "{name}: echoes received");
            assert_eq!(seen.push_next, pushed, "{name}: pushes received");
            assert_eq!(seen.app, sent + pushed, "{name}: application messages received");
        }
        assert_eq!(self.surprises, 0, "unexpected destinations or endpoint events");
        assert_eq!(self.udp.unacked(), 0);
        assert_eq!(self.tcp.unacked(), 0);
    }
}

fn delta(after: &Counters, before: &Counters, c: Counter) -> u64 {
    after.get(c) - before.get(c)
}

#[test]
fn hot_path_allocates_nothing() {
    if let Some(n) = std::env::var("NO_ALLOC_BACKTRACES").ok().and_then(|v| v.parse().ok()) {
        BACKTRACES.store(n, Ordering::Relaxed);
    }
    let echoed = Rc::new(Cell::new(0u64));
    let refused = Rc::new(Cell::new(0u64));
    let mut h = Harness::new(echoed.clone(), refused.clone());

    // Connect, then every phase once at a smaller scale. Counted for the report, not asserted:
    // growing here (at start-up or on first use) would be allowed.
    set_armed(true);
    h.connect();
    h.traffic(WARMUP_MESSAGES);
    h.udp_upstream_loss(10);
    h.udp_resend(WARMUP_RESEND);
    h.tcp_resend(WARMUP_RESEND);
    h.traffic(1_000);
    set_armed(false);
    let warmup_allocs = ALLOCS.swap(0, Ordering::Relaxed) + REALLOCS.swap(0, Ordering::Relaxed);
    DEALLOCS.store(0, Ordering::Relaxed);
    h.check_delivery();
    let warm_udp_out = h.ep.session(h.udp_handle.unwrap()).unwrap().next_out();
    assert!(
        warm_udp_out > JOURNAL_MESSAGES as i64 + 1_000,
        "warm-up must wrap the gateway journal (next_out {warm_udp_out})"
    );

    let before = h.ep.counters().clone();
    let (udp0, tcp0) = (h.udp_seen.resent, h.tcp_seen.resent);
    let (udp_sent0, tcp_sent0) = (h.udp_sent, h.tcp_sent);
    let (udp_app0, tcp_app0) = (h.udp_seen.app, h.tcp_seen.app);
    let (udp_stats0, tcp_stats0) = (h.udp.stats(), h.tcp.stats());
    let dropped0 = h.dropped;
    let t0 = h.now;

    set_armed(true);
    h.traffic(MEASURED_MESSAGES);
    h.udp_upstream_loss(UPSTREAM_LOSSES);
    h.udp_resend(MEASURED_RESEND);
    h.tcp_resend(MEASURED_RESEND);
    h.traffic(AFTER_RESEND_MESSAGES);
    set_armed(false);

    let allocs = ALLOCS.load(Ordering::Relaxed);
    let reallocs = REALLOCS.load(Ordering::Relaxed);
    let deallocs = DEALLOCS.load(Ordering::Relaxed);
    let after = h.ep.counters().clone();
    let d = |c| delta(&after, &before, c);
    let udp_resent = h.udp_seen.resent - udp0;
    let tcp_resent = h.tcp_seen.resent - tcp0;
    let (udp_stats, tcp_stats) = (h.udp.stats(), h.tcp.stats());
    println!(
        "handshake, logons and warm-up (not asserted): {warmup_allocs} allocs + reallocs\n\
         armed section: {allocs} allocs, {reallocs} reallocs, {deallocs} deallocs; \
         {:.1} s virtual; {} rounds total\n\
         gateway: app received {}, app sent {}, messages sent {}, resent {}, gap fills {}, \
         resend requests {}, heartbeats {}, test requests {}, out-of-order drops {}, datagrams in {} / out {}, \
         sessions resumed {}\n\
         udp device: sent {}, received {} (resent {udp_resent}), retransmits {}, \
         resend requests {}, datagrams dropped by the driver (both ways) {}\n\
         tcp device: sent {}, received {} (resent {tcp_resent}), resend requests {}",
        h.now.saturating_since(t0).as_secs_f64(),
        h.rounds,
        d(Counter::AppMessagesReceived),
        d(Counter::AppMessagesSent),
        d(Counter::MessagesSent),
        d(Counter::MessagesResent),
        d(Counter::GapFillsSent),
        d(Counter::ResendRequests),
        d(Counter::HeartbeatsSent),
        d(Counter::TestRequestsSent),
        d(Counter::DropOutOfOrder),
        d(Counter::DatagramsReceived),
        d(Counter::DatagramsSent),
        d(Counter::SessionsResumed),
        h.udp_sent - udp_sent0,
        h.udp_seen.app - udp_app0,
        udp_stats.retransmits - udp_stats0.retransmits,
        udp_stats.resend_requests - udp_stats0.resend_requests,
        h.dropped - dropped0,
        h.tcp_sent - tcp_sent0,
        h.tcp_seen.app - tcp_app0,
        tcp_stats.resend_requests - tcp_stats0.resend_requests,
    );

    // The traffic really happened.
    h.check_delivery();
    let measured = MEASURED_MESSAGES + AFTER_RESEND_MESSAGES;
    assert_eq!(h.udp_sent - udp_sent0, measured + 5 * UPSTREAM_LOSSES);
    assert_eq!(h.tcp_sent - tcp_sent0, measured);
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
    assert!(h.udp_seen.app - udp_app0 >= measured + MEASURED_RESEND);
    assert!(h.tcp_seen.app - tcp_app0 >= measured + MEASURED_RESEND);
    assert!(d(Counter::MessagesResent) >= 2 * MEASURED_RESEND, "resent from the journal");
    assert!(udp_resent >= MEASURED_RESEND && tcp_resent >= MEASURED_RESEND);
    assert_eq!(d(Counter::ResendRequests), 2);
    assert_eq!(d(Counter::ResendWindowExceeded), 0);
    assert_eq!(d(Counter::SessionsResumed), 1, "tcp resume");
    assert_eq!(d(Counter::LogonsAccepted), 1, "tcp resume");
    assert_eq!(d(Counter::OutputOverflow) + d(Counter::SendBackpressure), 0);
    assert!(h.dropped - dropped0 > 0);

    // And allocated nothing doing it.
    assert_eq!(
        (allocs, reallocs),
        (0, 0),
        "the hot path allocated (rerun with NO_ALLOC_BACKTRACES=5 -- --nocapture to see where)"
    );
}
