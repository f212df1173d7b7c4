//! `fleetgate load`: an open-loop load generator for fleets of up to a million devices, driving
//! the same device-side state machine ([`Device`](crate::session::Device)) the simulations
//! test, over real sockets.
//!
//! # Engine (one per thread, [`engine`])
//!
//! - **Threads own disjoint fleets.** Device `i` belongs to thread `i % threads`; each thread has
//!   its own sockets, epoll set, deadline heap, histograms and counters, merged at the end. The
//!   threads share only a few atomics (progress, step barriers, the hold window).
//! - **Many devices share a socket.** UDP devices are spread over `sockets` sockets bound to
//!   `source_ips` loopback addresses (127.0.0.1 upwards, .0 and .255 skipped), so a million
//!   devices need a few thousand descriptors, far under the 20,000 open-files limit. Replies are
//!   demultiplexed by the datagram's `sessionId` (a map from id to device). Handshake replies
//!   (prefix 0) carry no session id, and only ConnectionAccept carries something of the device's
//!   (its nonce): RegistrationAccept, RegistrationReject and ConnectionReject name nobody. So a
//!   socket carries **at most one handshake at a time**: the reply's destination address names
//!   the device unambiguously, and the nonce is checked on top. Devices wait their turn in a
//!   per-socket queue; the sockets in all threads bound how many handshakes are in flight (the
//!   report says how many). A late duplicate RegistrationAccept (the answer to a retried
//!   request) whose session id already belongs to another device is recognised and dropped.
//!   A TCP client needs its own connection, so the TCP fleet is bounded by the open-files limit.
//! - **Work per wake-up follows events, never the fleet.** One binary heap of each device's next
//!   deadline ([`schedule`]: the device's `poll_timeout()` or the generator's own retry time), a
//!   dirty list of devices with output, a list of logged-on devices for the open-loop sender.
//!   Devices are walked only at start-up, when a step times out, and for the final report.
//! - **Batched I/O.** `recvmmsg` per readable socket, `sendmmsg` per socket for the output of
//!   a pass ([`crate::io::mmsg`]).
//! - **Lean devices.** Storm and idle devices get a 4-message × 64-byte retransmit buffer and a
//!   small event queue ([`Profile`]); the report states the generator's RSS per device and CPU.
//!
//! # Measuring
//!
//! - Open loop: echo requests are scheduled at fixed intended times (`rate` per second over all
//!   sessions); latency is measured from the *intended* send time, so a stalled gateway shows up
//!   as latency instead of silently lowering the offered load (no coordinated omission, as in
//!   wrk2). The generator's own lateness (actual send time minus intended) is reported beside it
//!   so that its share can be told apart; `raw_echo` measures its floor against a bare echo
//!   server ([`raw`]).
//! - Storms: the rate until 99% of each step's devices are logged on and until the last logon,
//!   both from the step's first request, with the handshake (first request → LogonResponse)
//!   percentiles and the retransmissions beside them.
//! - Every device that did not complete what its scenario asked is an error by kind
//!   ([`ErrorKind`]); a run that loses a device fails.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::journal::JournalConfig;
use crate::time::{Clock, Timestamp};

pub mod burst;
pub mod check;
mod engine;
pub mod errors;
pub mod fleet;
mod raw;
pub mod report;
pub mod schedule;
pub mod usage;

pub use check::FeedChecker;
pub use errors::{ErrorCounts, ErrorKind};
pub use report::Report;

/// What the devices do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Handshake + config + logon as fast as possible (or at `rate` per second), in `steps`;
    /// then the fleet is held idle for `duration`. Reports the logon rate and handshake
    /// latency per step.
    Storm,
    /// Open loop echo at a constant aggregate `rate`.
    Steady,
    /// Sessions that only heartbeat: logons at `rate` per second (0 = all at once), then held
    /// for `duration`; reports heartbeats per second.
    Idle,
    /// Drops a share of received datagrams and reconnects + resumes periodically; verifies that
    /// every `feed` event arrives exactly once and in order.
    Resend,
    /// Sessions arrive and leave continually.
    Churn,
}

impl Scenario {
    /// True for the scenarios that connect the fleet, then hold it (storm, idle).
    pub fn holds_fleet(self) -> bool {
        matches!(self, Self::Storm | Self::Idle)
    }
}

/// Settings of a run.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Scenario.
    pub scenario: Scenario,
    /// Gateway UDP handshake address.
    pub handshake: SocketAddr,
    /// Gateway TCP address.
    pub tcp: SocketAddr,
    /// UDP devices.
    pub udp_devices: usize,
    /// TCP clients.
    pub tcp_devices: usize,
    /// steady/resend/churn: echo requests per second over all sessions; storm/idle: logons
    /// started per second (0 = all at once).
    pub rate: f64,
    /// steady/resend/churn: time to connect and settle before measuring (not measured);
    /// storm/idle: settling time between the last logon and the measured hold.
    pub warmup: Duration,
    /// steady/resend/churn: measured time; storm/idle: how long the fleet is held (measured).
    pub duration: Duration,
    /// Seed for nonces, jitter and drops.
    pub seed: u64,
    /// Generator threads.
    pub threads: usize,
    /// resend: share of received datagrams dropped inside the generator, whatever they carry:
    /// a dropped handshake reply costs a retry, a dropped GetDeviceConfig waits for the
    /// gateway's re-send.
    pub drop_share: f64,
    /// resend: reconnect + resume this often per device; churn: session lifetime.
    pub reconnect_every: Duration,
    /// Loopback source addresses used: 127.0.0.1 upwards (skipping .0 and .255).
    pub source_ips: u32,
    /// UDP sockets over all threads (0: one per device up to 1,024); each carries one handshake
    /// at a time, so this bounds the handshakes in flight. TCP clients connecting at once are
    /// bounded by the same number.
    pub sockets: usize,
    /// storm/idle: connect the fleet in this many equal steps, one after the other (earlier
    /// steps stay logged on); each is reported on its own.
    pub steps: usize,
    /// storm/idle: a step still unresolved this long after its last connect started is cut
    /// short; its devices that have not logged on are errors.
    pub step_timeout: Duration,
    /// Connect attempts per device (a handshake or logon timeout starts another, up to this
    /// many; rate-limited attempts do not count).
    pub attempts: u32,
    /// A device gives up a handshake or logon attempt after this ("host timeout", 5 s).
    pub handshake_timeout: Duration,
    /// Username prefix (username = prefix + index) and password.
    pub user_prefix: String,
    /// Password.
    pub password: String,
    /// Echo body size in bytes (≥ 8).
    pub body_bytes: usize,
    /// Share of message-level errors over attempts above which the run fails (device-level
    /// errors fail it whatever their share, churn aside).
    pub max_error_share: f64,
    /// Print a progress line every second.
    pub progress: bool,
    /// Force one resume: device index, when (from the start of measuring) and how long its
    /// inbound traffic is blackholed before it reconnects (UDP: from another socket) and
    /// resumes.
    pub forced_resume: Option<(usize, Duration, Duration)>,
    /// Device memory (`None`: the scenario's [`Profile`]).
    pub device_buffer: Option<JournalConfig>,
    /// Device event queue bytes (`None`: the scenario's [`Profile`]).
    pub device_event_bytes: Option<usize>,
    /// steady: send the same datagrams to this plain UDP echo server instead (no sessions),
    /// measuring the generator's own floor.
    pub raw_echo: Option<SocketAddr>,
    /// Busy-poll between sends (epoll with a zero timeout) instead of sleeping until the next
    /// send or reply: the generator then takes its whole core, as sockperf's client does, and
    /// no wake-up of an idle core is charged to the gateway. Off by default.
    pub spin: bool,
    /// steady: at most one echo request in flight over the whole fleet, as sockperf's
    /// ping-pong: a request due while a reply is owed waits for it, and its latency is taken
    /// from its actual send (not the intended time). For comparing with sockperf by its own
    /// method; the open loop (off) stays the headline.
    pub ping_pong: bool,
    /// The gateway's pid: its RSS per session and CPU over the hold are reported.
    pub gateway_pid: Option<u32>,
    /// Log every session out at the end (bounded wait).
    pub logout_at_end: bool,
    /// Stop the scenario after this long whatever its state, and report (default: the
    /// scenario's own bound, from its durations and `step_timeout`).
    pub time_limit: Option<Duration>,
    /// A server list (DESIGN.md §4; [`fleet`]): each device starts at the entry its deviceUid
    /// hashes to and moves along the list; a session that ends comes back. Empty: the one
    /// gateway at `handshake` and `tcp`.
    pub servers: Vec<fleet::Server>,
}

impl Default for LoadConfig {
    fn default() -> Self {
        Self {
            scenario: Scenario::Steady,
            handshake: SocketAddr::from(([127, 0, 0, 1], 3006)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 4210)),
            udp_devices: 100,
            tcp_devices: 0,
            rate: 1000.0,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(10),
            seed: 1,
            threads: 1,
            drop_share: 0.05,
            reconnect_every: Duration::from_secs(3),
            source_ips: 200,
            sockets: 0,
            steps: 1,
            step_timeout: Duration::from_secs(120),
            attempts: 3,
            handshake_timeout: Duration::from_secs(5),
            user_prefix: "dev".into(),
            password: "pw".into(),
            body_bytes: 16,
            max_error_share: 0.001,
            progress: false,
            forced_resume: None,
            device_buffer: None,
            device_event_bytes: None,
            raw_echo: None,
            spin: false,
            ping_pong: false,
            gateway_pid: None,
            logout_at_end: true,
            time_limit: None,
            servers: Vec::new(),
        }
    }
}

impl LoadConfig {
    /// Devices in all.
    pub fn devices(&self) -> usize {
        self.udp_devices + self.tcp_devices
    }

    /// UDP sockets in all (see [`LoadConfig::sockets`]).
    pub fn socket_count(&self) -> usize {
        let n = if self.raw_echo.is_some() { self.udp_devices.max(1) } else { self.udp_devices };
        match self.sockets {
            0 => n.min(DEFAULT_SOCKETS),
            s => s.min(n.max(1)),
        }
    }

    /// Threads actually used.
    pub fn thread_count(&self) -> usize {
        self.threads.clamp(1, self.devices().max(1))
    }

    /// The memory profile of each device.
    pub fn profile(&self) -> Profile {
        let mut p = Profile::for_scenario(self.scenario, self.body_bytes);
        if let Some(b) = self.device_buffer {
            p.buffer = b;
        }
        if let Some(e) = self.device_event_bytes {
            p.event_bytes = e;
        }
        p
    }
}

/// How much memory each simulated device gets: its retransmit buffer (messages it sent and the
/// gateway has not acknowledged yet) and its event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Retransmit buffer.
    pub buffer: JournalConfig,
    /// Application bytes one input may bring (`DeviceConfig::event_bytes`).
    pub event_bytes: usize,
}

impl Profile {
    /// Storm and idle devices send only session messages (logon, heartbeats, a logout), each
    /// at most 48 bytes, acknowledged within `udp.ack_delay_ms`: 4 slots of 64 bytes and room
    /// for one small application message keep a device under 2 KiB. Echo scenarios keep 64
    /// messages (1,024 for resend, which drops datagrams and so holds requests for up to the
    /// 2 s retransmit ceiling) of a size that fits the echo body, and a full datagram of
    /// events.
    pub fn for_scenario(scenario: Scenario, body_bytes: usize) -> Self {
        let slot = crate::protocol::align8(crate::protocol::HEADER_LEN + body_bytes).max(64);
        match scenario {
            Scenario::Storm | Scenario::Idle => Self {
                buffer: JournalConfig { messages_per_session: 4, slot_bytes: 64 },
                event_bytes: 64,
            },
            Scenario::Steady | Scenario::Churn => Self {
                buffer: JournalConfig { messages_per_session: 64, slot_bytes: slot.max(256) },
                event_bytes: 1400,
            },
            Scenario::Resend => Self {
                buffer: JournalConfig { messages_per_session: 1024, slot_bytes: slot.max(256) },
                event_bytes: 1400,
            },
        }
    }
}

/// Live totals shared with the progress printer.
#[derive(Debug, Default)]
pub struct Live {
    /// Sessions logged on now.
    pub active: AtomicU64,
    /// Logons completed.
    pub logons: AtomicU64,
    /// Requests sent.
    pub sent: AtomicU64,
    /// Replies received.
    pub received: AtomicU64,
    /// Errors.
    pub errors: AtomicU64,
}

/// One generator thread's place in the run: the config, its index among `threads`, the run's
/// clock and what the threads share.
#[derive(Clone, Copy)]
struct Part<'a> {
    cfg: &'a LoadConfig,
    thread: usize,
    threads: usize,
    clock: Clock,
    shared: &'a Shared,
}

/// What the threads share: progress, the stop flag, step barriers and the hold window.
pub(crate) struct Shared {
    pub(crate) live: Live,
    pub(crate) stop: AtomicBool,
    pub(crate) steps: Vec<StepShared>,
    /// When the measured hold starts (ns on the run's clock + 1; 0 = not yet decided).
    pub(crate) hold_start: AtomicU64,
}

/// One step's fleet-wide figures.
pub(crate) struct StepShared {
    /// Logons needed for 99% (ceiling).
    pub(crate) target99: u64,
    /// Logons so far.
    pub(crate) logons: AtomicU64,
    /// When the 99th-percentile logon happened (ns + 1; 0 = not reached).
    pub(crate) t99: AtomicU64,
    /// Threads done with the step.
    pub(crate) done: AtomicUsize,
}

impl Shared {
    fn new(cfg: &LoadConfig) -> Self {
        let n = cfg.devices();
        let steps = step_count(cfg);
        Self {
            live: Live::default(),
            stop: AtomicBool::new(false),
            steps: (0..steps)
                .map(|s| {
                    let (lo, hi) = step_range(n, steps, s);
                    let devices = (hi - lo) as u64;
                    StepShared {
                        target99: (devices * 99).div_ceil(100),
                        logons: AtomicU64::new(0),
                        t99: AtomicU64::new(0),
                        done: AtomicUsize::new(0),
                    }
                })
                .collect(),
            hold_start: AtomicU64::new(0),
        }
    }

    /// The hold's start, once decided.
    pub(crate) fn hold_start(&self) -> Option<Timestamp> {
        match self.hold_start.load(Ordering::Acquire) {
            0 => None,
            t => Some(Timestamp::from_nanos(t - 1)),
        }
    }
}

/// Steps of the run (1 for the echo scenarios).
pub(crate) fn step_count(cfg: &LoadConfig) -> usize {
    if cfg.scenario.holds_fleet() { cfg.steps.clamp(1, cfg.devices().max(1)) } else { 1 }
}

/// Global device indices `[lo, hi)` of step `s` of `steps` over `n` devices.
pub(crate) fn step_range(n: usize, steps: usize, s: usize) -> (usize, usize) {
    (s * n / steps, (s + 1) * n / steps)
}

/// Source address number `k` (0-based): 127.0.0.1 upwards through 127.0.0.0/8, skipping host
/// parts .0 and .255 (network and broadcast-looking addresses some tools refuse).
pub fn source_ip(k: u32) -> Ipv4Addr {
    // 254 usable last octets per /24.
    let (hi, lo) = (k / 254, k % 254);
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 0)) + (hi << 8) + lo + 1)
}

/// What one thread measured.
#[derive(Default)]
pub(crate) struct ThreadResult {
    pub(crate) latency: Hist,
    pub(crate) handshake: Hist,
    pub(crate) lateness: Hist,
    pub(crate) steps: Vec<StepResult>,
    pub(crate) errors: ErrorCounts,
    pub(crate) logged_out_reasons: BTreeMap<String, u64>,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) logons: u64,
    pub(crate) feed: FeedChecker,
    pub(crate) feed_devices_exact: u64,
    pub(crate) feed_devices: u64,
    pub(crate) retransmits: u64,
    pub(crate) resend_requests: u64,
    pub(crate) forced: Option<Forced>,
    pub(crate) hold: HoldCounts,
    pub(crate) wire: WireCounts,
    pub(crate) active_at_end: u64,
    pub(crate) unanswered: u64,
    /// Most echo requests in flight at once (sent, reply not yet in).
    pub(crate) in_flight_max: u64,
    /// With a server list.
    pub(crate) fleet: Option<fleet::FleetResult>,
}

impl ThreadResult {
    pub(crate) fn new(steps: usize) -> Self {
        Self { steps: (0..steps).map(|_| StepResult::default()).collect(), ..Self::default() }
    }
}

/// One step as one thread saw it.
#[derive(Clone, Debug, Default)]
pub(crate) struct StepResult {
    pub(crate) devices: u64,
    pub(crate) logged_on: u64,
    pub(crate) first_request: Option<Timestamp>,
    pub(crate) last_logon: Option<Timestamp>,
    pub(crate) handshake: Hist,
    /// Attempts started (UDP handshakes and TCP connects).
    pub(crate) connects: u64,
    /// UDP attempts started.
    pub(crate) udp_connects: u64,
    /// Its handshake requests and retries.
    pub(crate) requests: RequestCounts,
}

counts! {
    /// Handshake requests a step sent, how many repeated one of the same attempt, and the
    /// attempts tried again.
    #[derive(Clone, Copy, Debug, Default, serde::Serialize)]
    pub struct RequestCounts {
        /// ConnectionRequests sent.
        pub connection_requests: u64,
        /// ... of which repeats.
        pub connection_request_retries: u64,
        /// RegistrationRequests sent.
        pub registration_requests: u64,
        /// ... of which repeats.
        pub registration_request_retries: u64,
        /// LogonRequests sent.
        pub logon_requests: u64,
        /// ... of which repeats.
        pub logon_retries: u64,
        /// Attempts refused with RATE_LIMITED or shed by the gateway ("server busy") and tried
        /// again.
        pub rate_limited: u64,
        /// Attempts that timed out (or whose connection failed) and were tried again.
        pub timeouts_retried: u64,
    }
}

counts! {
    /// Heartbeat traffic while the fleet is held (storm, idle) or measured (others).
    #[derive(Clone, Copy, Debug, Default, serde::Serialize)]
    pub struct HoldCounts {
        /// Heartbeats the devices sent.
        pub heartbeats_sent: u64,
        /// Heartbeats the devices received.
        pub heartbeats_received: u64,
        /// TestRequests the devices sent.
        pub test_requests_sent: u64,
        /// TestRequests the devices received (the gateway found one silent).
        pub test_requests_received: u64,
    }
}

counts! {
    /// Datagrams and system calls, and the input the demultiplexer could not place.
    #[derive(Clone, Copy, Debug, Default, serde::Serialize)]
    pub struct WireCounts {
        /// Datagrams handed to the kernel.
        pub datagrams_sent: u64,
        /// Datagrams received.
        pub datagrams_received: u64,
        /// Datagrams handed to the kernel whose first message is a handshake, config or logon
        /// message (ConnectionRequest, RegistrationRequest, DeviceConfig, LogonRequest), retries
        /// included: the device's side of its logons.
        pub logon_datagrams_sent: u64,
        /// Datagrams received whose first message is a handshake, config or logon answer
        /// (ConnectionAccept/Reject, RegistrationAccept/Reject, GetDeviceConfig, LogonResponse).
        pub logon_datagrams_received: u64,
        /// UDP logons completed: what the logon datagrams are counted per.
        pub udp_logons: u64,
        /// `sendmmsg` calls.
        pub send_calls: u64,
        /// `recvmmsg` calls that returned datagrams.
        pub recv_calls: u64,
        /// Datagrams the kernel refused.
        pub send_dropped: u64,
        /// Handshake replies (prefix 0) that reached a socket with no handshake under way, or a
        /// duplicate RegistrationAccept for a session id another device holds.
        pub stray_handshake_replies: u64,
        /// Datagrams for a session id no device has.
        pub unknown_session: u64,
        /// Datagrams for a device that has moved to another socket.
        pub wrong_socket: u64,
        /// Datagrams too short for a prefix, or truncated.
        pub malformed: u64,
        /// Datagrams dropped on purpose (resend scenario, forced blackout).
        pub dropped_on_purpose: u64,
    }
}

/// What the forced resume showed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Forced {
    /// Device index.
    pub device: usize,
    /// Application messages that arrived flagged as resent after the resume.
    pub resent_received: u64,
    /// Echo replies the device was owed when it went dark.
    pub owed_at_blackout: u64,
    /// True once the device was logged on again.
    pub resumed: bool,
    /// True if, at the end, every echo request it sent had its reply.
    pub complete: bool,
    /// Feed events it received, and whether they were exactly the gateway's sequence (none
    /// missing, none twice) across the outage.
    pub feed: (u64, bool),
}

/// Samples taken by the coordinating thread: the generator's and the gateway's memory and
/// CPU at the points the report compares.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Samples {
    pub(crate) own_before: usage::Memory,
    pub(crate) own_fleet: Option<usage::Memory>,
    pub(crate) gateway_before: Option<usage::Memory>,
    pub(crate) gateway_fleet: Option<usage::Memory>,
    pub(crate) gateway_end: Option<usage::Memory>,
    pub(crate) gateway_cpu_hold: Option<(Duration, Duration)>,
    /// The generator's and the gateway's CPU time at the start of the run.
    pub(crate) own_cpu_start: Option<Duration>,
    pub(crate) gateway_cpu_start: Option<Duration>,
    /// Their CPU from the start of the run until the fleet was complete (storm, idle).
    pub(crate) own_cpu_storm: Option<Duration>,
    pub(crate) gateway_cpu_storm: Option<Duration>,
    pub(crate) gateway_gone: bool,
    pub(crate) wall: Duration,
    pub(crate) hold: Option<Duration>,
}

/// Runs a whole load test and returns its report.
pub fn run(cfg: &LoadConfig) -> Result<Report, String> {
    if cfg.body_bytes < 8 || cfg.body_bytes > 200 {
        return Err("body size must be within 8..=200 bytes".into());
    }
    if cfg.raw_echo.is_some() && cfg.scenario != Scenario::Steady {
        return Err("--raw-echo goes with the steady scenario".into());
    }
    if cfg.ping_pong && (cfg.scenario != Scenario::Steady || cfg.raw_echo.is_some()) {
        return Err("--ping-pong goes with the steady scenario against a gateway (the bare \
                    loop's is `echo_floor client --ping-pong`)"
            .into());
    }
    // Sockets, TCP connections, epoll sets, and some to spare.
    usage::ensure_open_files((cfg.socket_count() + cfg.tcp_devices + 64) as u64)?;
    let clock = Clock::new();
    let wall0 = std::time::Instant::now();
    let mut samples = Samples {
        own_before: usage::memory(None).unwrap_or_default(),
        gateway_before: cfg.gateway_pid.and_then(|p| usage::memory(Some(p))),
        own_cpu_start: usage::cpu_time(std::process::id()),
        gateway_cpu_start: cfg.gateway_pid.and_then(usage::cpu_time),
        ..Samples::default()
    };
    let shared = Arc::new(Shared::new(cfg));
    let threads = cfg.thread_count();
    let mut handles = Vec::new();
    for t in 0..threads {
        let (cfg, shared) = (cfg.clone(), shared.clone());
        let h = std::thread::Builder::new()
            .name(format!("fleetgate-load-{t}"))
            .spawn(move || {
                // The default 50 µs timer slack would make every timed wait (the next send, the
                // next deadline) up to 50 µs late: measured, the median send lateness at 10k/s
                // fell from 72 µs.
                let _ = crate::io::floor::set_timer_slack(Duration::from_nanos(1));
                let part = Part { cfg: &cfg, thread: t, threads, clock, shared: &shared };
                match cfg.raw_echo {
                    Some(to) => raw::thread_main(part, to),
                    None => engine::thread_main(part),
                }
            })
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }
    coordinate(cfg, clock, &shared, &handles, &mut samples);
    let mut results = Vec::new();
    let mut failure = None;
    for h in handles {
        match h.join() {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => failure = Some(e),
            Err(_) => failure = Some("a generator thread panicked".to_string()),
        }
    }
    if let Some(e) = failure {
        return Err(e);
    }
    samples.wall = wall0.elapsed();
    samples.gateway_end = cfg.gateway_pid.and_then(|p| usage::memory(Some(p)));
    Ok(Report::merge(cfg, &shared, results, samples, clock))
}

/// The main thread while the generator threads run: the progress line, the samples of memory
/// and CPU at the start and end of the hold, and the overall time bound.
fn coordinate(
    cfg: &LoadConfig,
    clock: Clock,
    shared: &Shared,
    handles: &[std::thread::JoinHandle<Result<ThreadResult, String>>],
    samples: &mut Samples,
) {
    let steps = step_count(cfg) as u32;
    let bound = cfg.time_limit.unwrap_or(if cfg.scenario.holds_fleet() {
        cfg.step_timeout * steps + cfg.warmup + cfg.duration + Duration::from_secs(10)
    } else {
        cfg.warmup + cfg.duration + Duration::from_secs(10)
    });
    let t0 = std::time::Instant::now();
    let tty = cfg.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let live = &shared.live;
    let mut last_print = std::time::Instant::now();
    let mut last_sent = 0;
    let mut gw_cpu0 = None;
    let hold_len = if cfg.scenario.holds_fleet() { Some(cfg.duration) } else { None };
    while handles.iter().any(|h| !h.is_finished()) {
        std::thread::sleep(Duration::from_millis(20));
        let now = clock.now();
        if let (Some(len), Some(start)) = (hold_len, shared.hold_start()) {
            if samples.own_cpu_storm.is_none() {
                // The fleet has just become complete (the hold starts `warmup` later): what
                // the logons cost each side (within this loop's 20 ms).
                let since = |start: Option<Duration>, pid| {
                    Some(usage::cpu_time(pid)?.saturating_sub(start?))
                };
                samples.own_cpu_storm =
                    since(samples.own_cpu_start, std::process::id()).or(Some(Duration::ZERO));
                if let Some(pid) = cfg.gateway_pid {
                    samples.gateway_cpu_storm = since(samples.gateway_cpu_start, pid);
                }
            }
            if samples.own_fleet.is_none() && now >= start {
                // The fleet is complete: the memory it holds now is its idle footprint.
                samples.own_fleet = usage::memory(None);
                if let Some(pid) = cfg.gateway_pid {
                    samples.gateway_fleet = usage::memory(Some(pid));
                    gw_cpu0 = usage::cpu_time(pid).map(|c| (c, std::time::Instant::now()));
                    samples.gateway_gone |= samples.gateway_fleet.is_none();
                }
            }
            if samples.gateway_cpu_hold.is_none() && now >= start + len {
                if let (Some(pid), Some((c0, w0))) = (cfg.gateway_pid, gw_cpu0) {
                    match usage::cpu_time(pid) {
                        Some(c1) => {
                            samples.gateway_cpu_hold = Some((c1.saturating_sub(c0), w0.elapsed()))
                        }
                        None => samples.gateway_gone = true,
                    }
                }
                samples.hold = Some(len);
            }
        }
        if t0.elapsed() > bound {
            shared.stop.store(true, Ordering::Relaxed);
        }
        if tty && last_print.elapsed() >= Duration::from_secs(1) {
            last_print = std::time::Instant::now();
            let sent = live.sent.load(Ordering::Relaxed);
            eprint!(
                "\r{:>6.1}s  active {:>8}  logons {:>8}  sent {:>9} ({:>7}/s)  replies {:>9}  errors {:>6}   ",
                t0.elapsed().as_secs_f64(),
                live.active.load(Ordering::Relaxed),
                live.logons.load(Ordering::Relaxed),
                sent,
                sent - last_sent,
                live.received.load(Ordering::Relaxed),
                live.errors.load(Ordering::Relaxed),
            );
            last_sent = sent;
        }
    }
    if tty {
        eprintln!();
    }
}

/// UDP sockets when none are asked for (at most one per device). Each carries one handshake at
/// a time, so this is also the most handshakes in flight: against a 2-shard gateway on this
/// 2-core VM, 1,000 in flight gave 12.9k logons/s with no retransmissions, 4,096 gave 4.2k/s
/// with 40,000 (20,000 devices, storm).
pub const DEFAULT_SOCKETS: usize = 1024;

/// A latency histogram: 1 ns to 60 s, 3 significant digits.
pub(crate) fn hist() -> Histogram<u64> {
    // Constant, valid bounds (low ≥ 1, high ≥ 2 × low, sigfig ≤ 5): cannot fail.
    Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("valid histogram bounds")
}

/// A [`hist`] that is its own `Default`, so that the result structs holding one derive theirs.
#[derive(Clone, Debug)]
pub(crate) struct Hist(pub(crate) Histogram<u64>);

impl Default for Hist {
    fn default() -> Self {
        Self(hist())
    }
}

impl std::ops::Deref for Hist {
    type Target = Histogram<u64>;
    fn deref(&self) -> &Histogram<u64> {
        &self.0
    }
}

impl std::ops::DerefMut for Hist {
    fn deref_mut(&mut self) -> &mut Histogram<u64> {
        &mut self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_addresses_skip_zero_and_255() {
        assert_eq!(source_ip(0), Ipv4Addr::new(127, 0, 0, 1));
        assert_eq!(source_ip(253), Ipv4Addr::new(127, 0, 0, 254));
        assert_eq!(source_ip(254), Ipv4Addr::new(127, 0, 1, 1));
        let all: std::collections::BTreeSet<_> = (0..10_000).map(source_ip).collect();
        assert_eq!(all.len(), 10_000);
        assert!(all.iter().all(|a| a.octets()[3] != 0 && a.octets()[3] != 255));
        assert!(all.iter().all(|a| a.octets()[0] == 127));
    }

    #[test]
    fn steps_cover_the_fleet_once() {
        for (n, s) in [(10, 3), (1_000_000, 10), (7, 7), (5, 1)] {
            let mut covered = 0;
            for k in 0..s {
                let (lo, hi) = step_range(n, s, k);
                assert_eq!(lo, covered);
                covered = hi;
            }
            assert_eq!(covered, n);
        }
    }

    #[test]
    fn lean_profiles_for_fleets_roomy_ones_for_echo() {
        let storm = Profile::for_scenario(Scenario::Storm, 16);
        assert_eq!(storm.buffer.bytes_per_session(), 4 * (64 + 16));
        let steady = Profile::for_scenario(Scenario::Steady, 200);
        assert!(steady.buffer.slot_bytes >= 232);
        let cfg = LoadConfig { sockets: 0, udp_devices: 1_000_000, ..LoadConfig::default() };
        assert_eq!(cfg.socket_count(), DEFAULT_SOCKETS);
        let cfg = LoadConfig { sockets: 0, udp_devices: 10, ..LoadConfig::default() };
        assert_eq!(cfg.socket_count(), 10);
    }
}
