//! One generator thread: its devices, sockets, deadline heap, dirty list and counters. See the
//! parent module's docs for the design; this file is the loop.
//!
//! Each pass of [`Engine::run`]: read the clock once, advance the scenario (connects due, echo
//! requests due, phase changes), fire due deadlines, flush the output of every device touched
//! (sorted by socket, one `sendmmsg` per socket), then wait in epoll until the next deadline and
//! read what arrived (`recvmmsg` per readable socket). Nothing in the pass walks the fleet.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{ErrorKind as IoErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::buffer::spare_capacity;
use rustix::event::{Timespec, epoll};

use super::errors::ErrorKind;
use super::{
    FeedChecker, Forced, LoadConfig, Part, Scenario, Shared, ThreadResult, source_ip, step_count,
    step_range,
};
use crate::io::mmsg::{RecvBatch, SendBatch};
use crate::protocol::{
    Body, DATAGRAM_PREFIX_LEN, Datagram, Deframer, FLAG_RESEND, HEADER_LEN, Message, MessageType,
    split_frame,
};
use crate::rng::Rng;
use crate::session::{Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, EndReason};
use crate::session::{MoveReason, SendError, Transport};
use crate::time::{Clock, Timestamp};

/// No device / no socket.
const NONE: u32 = u32::MAX;
/// epoll tokens: UDP socket `j` is `j`; TCP link `l` is `TCP_TOKEN | l`.
const TCP_TOKEN: u64 = 1 << 40;
/// Datagrams per `recvmmsg` / `sendmmsg`.
const BATCH: usize = 64;
/// Bytes per batch entry (the gateway sends at most `udp.max_datagram`, 1,400 by default).
const SLOT: usize = 2048;
/// Connects started per pass at most, so that input keeps flowing during an all-at-once storm.
const CONNECTS_PER_PASS: usize = 2048;
/// Echo requests sent per pass at most (the rest follow in the next pass, still measured from
/// their intended times).
const SENDS_PER_PASS: usize = 10_000;
/// Longest wait in epoll: the threads' shared state (steps, hold, stop) is looked at this often.
const MAX_WAIT: Duration = Duration::from_millis(10);
/// How long the end waits for outstanding echo replies, then for LoggedOut.
const END_WAIT: Duration = Duration::from_secs(2);
/// The longest the end waits for echo replies while they keep coming: a device recovering
/// from dropped datagrams (resend scenario) gets its last replies after backed-off retries.
const DRAIN_MAX: Duration = Duration::from_secs(10);
/// Largest send queue of a TCP client before its writes count as failed.
const TCP_OUT_MAX: usize = 256 * 1024;
/// Read buffer of a TCP client (the gateway's frames are far smaller).
const TCP_READ: usize = 8 * 1024;
/// Largest echo latency recorded (the histograms' bound).
const LATENCY_MAX_NS: u64 = 60_000_000_000;

// Device flags.
const DIRTY: u16 = 1 << 0;
/// Holds its socket's handshake slot.
const SLOT_HELD: u16 = 1 << 1;
/// Waiting in its socket's queue for the slot.
const QUEUED: u16 = 1 << 2;
/// The pending connect discards old state (resetSeqNum = 1).
const RESET: u16 = 1 << 3;
/// The UDP handshake of this attempt is done (or TCP: nothing to register).
const REGISTERED: u16 = 1 << 4;
/// We sent LogoutRequest.
const LEAVING: u16 = 1 << 5;
/// Resolved for its step: logged on, or given up.
const DONE: u16 = 1 << 6;
/// Given up: never reconnected.
const ABANDONED: u16 = 1 << 7;
/// Its device error is counted (storm, idle, steady: at most one per device).
const COUNTED: u16 = 1 << 8;
/// Forced blackout: its input is dropped.
const DARK: u16 = 1 << 9;
/// Logged on now (set on LogonResponse, cleared when the session ends or restarts).
const ON: u16 = 1 << 10;
/// Logged on at least once.
const EVER_ON: u16 = 1 << 11;
/// TCP client.
const IS_TCP: u16 = 1 << 12;
/// This attempt has sent its ConnectionRequest / RegistrationRequest / LogonRequest: any more
/// are retransmissions.
const SENT_CR: u16 = 1 << 13;
const SENT_RR: u16 = 1 << 14;
const SENT_LOGON: u16 = 1 << 15;

/// What a device's own generator deadline (`wake_at`) is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    None,
    /// Connect again after a failed attempt.
    Retry,
    /// resend: reconnect and resume; churn: log out (then come back).
    Cycle,
    /// churn: come back after leaving.
    Return,
    /// The forced blackout is over: reconnect from another socket and resume.
    DarkEnd,
}

/// One simulated device (about 40 bytes besides the [`Device`]).
struct Dev {
    dev: Device,
    /// Start of the current attempt (first ConnectionRequest or TCP connect).
    started: Timestamp,
    /// The generator's own deadline for it ([`Action`]).
    wake_at: Timestamp,
    /// UDP socket (index into `socks`) or TCP link (index into `tcp`).
    link: u32,
    /// Position in the logged-on list (`NONE` if not in it).
    active_pos: u32,
    /// Echo requests sent and replies received (forced-resume bookkeeping).
    sent: u32,
    replies: u32,
    step: u16,
    flags: u16,
    attempts: u8,
    /// Last failure ([`ErrorKind::code`]; 0 = none).
    fail: u8,
    action: Action,
}

/// A UDP socket shared by many devices; it carries one handshake at a time.
struct Sock {
    udp: UdpSocket,
    /// The device whose handshake holds the socket (`NONE`: free).
    owner: u32,
    /// Devices waiting for it, in order (entries whose `QUEUED` flag is gone are skipped).
    waiting: VecDeque<u32>,
}

/// A TCP client's connection.
struct TcpLink {
    stream: Option<TcpStream>,
    deframer: Deframer,
    out: Vec<u8>,
    connecting: bool,
    out_armed: bool,
    device: u32,
}

/// Where the thread is in its scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// storm/idle: connecting step `s`.
    Connect(usize),
    /// storm/idle: this thread's part of step `s` is resolved; waiting for the others.
    StepWait(usize),
    /// storm/idle: the fleet is complete; the hold starts at the shared hold start.
    Settle,
    /// storm/idle: measured hold.
    Hold,
    /// steady/resend/churn: ramp during warm-up, then measured open-loop traffic.
    Run,
    /// Waiting for outstanding echo replies: until END_WAIT passes with none arriving, and
    /// never past `drain_cap`.
    Drain(Timestamp),
    /// Waiting (bounded) for LoggedOut after logging everyone out.
    Leaving(Timestamp),
    Done,
}

/// Runs one thread's share of the fleet.
pub(super) fn thread_main(part: Part<'_>) -> Result<ThreadResult, String> {
    let Part { cfg, thread, threads, clock, shared } = part;
    let mut e = Engine::new(cfg, thread, threads, clock, shared)?;
    let mut rx = RecvBatch::new(BATCH, SLOT);
    e.run(&mut rx)?;
    Ok(e.finish())
}

struct Engine<'a> {
    cfg: &'a LoadConfig,
    shared: &'a Shared,
    clock: Clock,
    thread: usize,
    threads: usize,
    devs: Vec<Dev>,
    socks: Vec<Sock>,
    tcp: Vec<TcpLink>,
    /// TCP connects that may be in flight (connect to LogonResponse), like the UDP sockets'
    /// one handshake each; and the TCP clients waiting for one.
    tcp_free: usize,
    tcp_waiting: VecDeque<u32>,
    sched: super::schedule::Schedule,
    dirty: Vec<u32>,
    dirty_next: Vec<u32>,
    active: Vec<u32>,
    by_id: HashMap<u64, u32>,
    ep: OwnedFd,
    events: Vec<epoll::Event>,
    tx: SendBatch,
    tx_sock: u32,
    tcp_buf: Vec<u8>,
    body: Vec<u8>,
    rng: Rng,
    st: ThreadResult,
    feed: Vec<FeedChecker>,
    phase: Phase,
    /// Counting heartbeats and echo traffic (the hold, or the measured window).
    counting: bool,
    /// Local device range of each step.
    step_ranges: Vec<(usize, usize)>,
    /// Devices resolved per step (this thread).
    resolved: Vec<u64>,
    /// When the current step last started a connect (its timeout runs from there).
    step_started: Timestamp,
    cursor: usize,
    cursor_end: usize,
    connect_interval: Duration,
    next_connect: Timestamp,
    /// steady family: measured window, echo schedule.
    warm_end: Timestamp,
    end: Timestamp,
    /// Drain: the hard end of the wait, and the replies counted when it last moved on.
    drain_cap: Timestamp,
    drain_seen: u64,
    /// The last due echo request found no active session of this thread (it waits).
    starved: bool,
    send_interval: Option<Duration>,
    next_send: Timestamp,
    rr: usize,
    leaving: u64,
    forced: Option<ForcedState>,
    logged_out_reasons: BTreeMap<String, u64>,
    /// With a server list: each device's place in it (empty without one).
    fleet: Vec<super::fleet::FleetDev>,
}

/// The forced resume of one device (the demo's).
struct ForcedState {
    k: u32,
    at: Duration,
    dark: Duration,
    started: bool,
    resent: u64,
    /// Its feed events (any scenario; resend checks every device's).
    feed: FeedChecker,
    report: Forced,
}

impl<'a> Engine<'a> {
    fn new(
        cfg: &'a LoadConfig,
        thread: usize,
        threads: usize,
        clock: Clock,
        shared: &'a Shared,
    ) -> Result<Self, String> {
        let n = cfg.devices();
        let profile = cfg.profile();
        let ep = epoll::create(epoll::CreateFlags::CLOEXEC)
            .map_err(|e| format!("epoll_create1: {e}"))?;
        let globals: Vec<usize> = (thread..n).step_by(threads).collect();
        let local_udp = globals.iter().filter(|&&i| i < cfg.udp_devices).count();
        // Sockets g with g % threads == thread, each on source address g % source_ips.
        let total = cfg.socket_count();
        let mut mine: Vec<usize> = (thread..total).step_by(threads).collect();
        if mine.is_empty() && local_udp > 0 {
            mine.push(thread);
        }
        let mut socks = Vec::with_capacity(mine.len());
        for (j, &g) in mine.iter().enumerate() {
            let ip = source_ip(g as u32 % cfg.source_ips.max(1));
            let udp = bind_udp(SocketAddr::new(IpAddr::V4(ip), 0))
                .map_err(|e| format!("bind UDP socket on {ip}: {e} (open files limit?)"))?;
            epoll::add(&ep, &udp, epoll::EventData::new_u64(j as u64), epoll::EventFlags::IN)
                .map_err(|e| format!("epoll_ctl: {e}"))?;
            socks.push(Sock { udp, owner: NONE, waiting: VecDeque::new() });
        }
        let steps = step_count(cfg);
        let step_ranges: Vec<(usize, usize)> = (0..steps)
            .map(|s| {
                let (lo, hi) = step_range(n, steps, s);
                (local_from(lo, thread, threads), local_from(hi, thread, threads))
            })
            .collect();
        let mut st = ThreadResult::new(steps);
        if !cfg.servers.is_empty() {
            st.fleet = Some(super::fleet::FleetResult::new(cfg.servers.len()));
        }
        for (s, &(lo, hi)) in step_ranges.iter().enumerate() {
            st.steps[s].devices = (hi - lo) as u64;
        }
        let mut devs = Vec::with_capacity(globals.len());
        let mut fleet = Vec::new();
        let mut tcp = Vec::new();
        let mut udp_ordinal = 0usize;
        for (k, &i) in globals.iter().enumerate() {
            let udp = i < cfg.udp_devices;
            let user = format!("{}{i}", cfg.user_prefix);
            let uid = format!("{}-{i:06}", cfg.user_prefix.to_uppercase());
            let transport = if udp { Transport::Udp } else { Transport::Tcp };
            let mut dc = DeviceConfig::new(
                transport,
                uid.as_bytes(),
                user.as_bytes(),
                cfg.password.as_bytes(),
            );
            dc.buffer = profile.buffer;
            dc.event_bytes = profile.event_bytes;
            dc.handshake_timeout = cfg.handshake_timeout;
            if !cfg.servers.is_empty() {
                // DESIGN.md §4: the deviceUid picks the first entry; a TCP client has none
                // and goes by its username.
                let key = if udp { uid.as_bytes() } else { user.as_bytes() };
                fleet.push(super::fleet::FleetDev::new(key, cfg.servers.len()));
            }
            let mut dev = Device::new(dc);
            dev.set_wall_offset(clock.wall_offset_ns());
            dev.set_device_config(
                format!(
                    "AB~001~19~000~LOADGEN~16~26~09~01~0107~0000~000~{i:012X}~640~6006~1~20260101000000~S~Linux~2~01~0~"
                )
                .as_bytes(),
            );
            let (link, flags) = if udp {
                let j = udp_ordinal % socks.len().max(1);
                udp_ordinal += 1;
                (j as u32, 0)
            } else {
                tcp.push(TcpLink {
                    stream: None,
                    deframer: Deframer::new(TCP_READ),
                    out: Vec::new(),
                    connecting: false,
                    out_armed: false,
                    device: k as u32,
                });
                ((tcp.len() - 1) as u32, IS_TCP)
            };
            let step = step_ranges.iter().position(|&(lo, hi)| k >= lo && k < hi).unwrap_or(0);
            devs.push(Dev {
                dev,
                started: Timestamp::ZERO,
                wake_at: Timestamp::MAX,
                link,
                active_pos: NONE,
                sent: 0,
                replies: 0,
                step: step as u16,
                flags,
                attempts: 0,
                fail: 0,
                action: Action::None,
            });
        }
        let forced = cfg.forced_resume.and_then(|(dev, at, dark)| {
            (dev % threads == thread && dev < n).then(|| ForcedState {
                k: (dev / threads) as u32,
                at,
                dark,
                started: false,
                resent: 0,
                feed: FeedChecker::default(),
                report: Forced { device: dev, ..Forced::default() },
            })
        });
        let feed = if cfg.scenario == Scenario::Resend {
            vec![FeedChecker::default(); devs.len()]
        } else {
            Vec::new()
        };
        let seed = cfg.seed.wrapping_add(thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        Ok(Self {
            cfg,
            shared,
            clock,
            thread,
            threads,
            sched: super::schedule::Schedule::new(devs.len()),
            dirty: Vec::with_capacity(1024),
            dirty_next: Vec::with_capacity(1024),
            active: Vec::with_capacity(devs.len()),
            by_id: HashMap::with_capacity(local_udp),
            devs,
            socks,
            tcp,
            tcp_free: (if cfg.sockets > 0 { cfg.sockets } else { super::DEFAULT_SOCKETS }
                / threads)
                .max(1),
            tcp_waiting: VecDeque::new(),
            ep,
            events: Vec::with_capacity(256),
            tx: SendBatch::new(BATCH, SLOT),
            tx_sock: NONE,
            tcp_buf: vec![0; 4096],
            body: vec![0; cfg.body_bytes],
            rng: Rng::new(seed),
            st,
            feed,
            phase: Phase::Done,
            counting: false,
            step_ranges,
            resolved: vec![0; steps],
            step_started: Timestamp::ZERO,
            cursor: 0,
            cursor_end: 0,
            connect_interval: Duration::ZERO,
            next_connect: Timestamp::ZERO,
            warm_end: Timestamp::ZERO,
            end: Timestamp::ZERO,
            drain_cap: Timestamp::ZERO,
            drain_seen: 0,
            starved: false,
            send_interval: None,
            next_send: Timestamp::ZERO,
            rr: 0,
            leaving: 0,
            forced,
            logged_out_reasons: BTreeMap::new(),
            fleet,
        })
    }

    fn run(&mut self, rx: &mut RecvBatch) -> Result<(), String> {
        let start = self.clock.now();
        if self.cfg.scenario.holds_fleet() {
            self.enter_step(0, start);
        } else {
            self.enter_run(start);
        }
        loop {
            let now = self.clock.now();
            self.tick(now);
            if self.phase == Phase::Done {
                break;
            }
            self.fire_deadlines(now);
            self.flush(now);
            let wait = self.wait_for(self.clock.now());
            self.poll_input(rx, wait);
        }
        Ok(())
    }

    // ------------------------------------------------------------------------------------
    // The scenario.

    fn enter_step(&mut self, s: usize, now: Timestamp) {
        self.phase = Phase::Connect(s);
        self.step_started = now;
        let (lo, hi) = self.step_ranges[s];
        self.cursor = lo;
        self.cursor_end = hi;
        self.next_connect = now;
        self.connect_interval = if self.cfg.rate > 0.0 {
            Duration::from_secs_f64(self.threads as f64 / self.cfg.rate)
        } else {
            Duration::ZERO
        };
    }

    fn enter_run(&mut self, now: Timestamp) {
        self.phase = Phase::Run;
        self.cursor = 0;
        self.cursor_end = self.devs.len();
        self.next_connect = now;
        // The fleet connects over the first half of the warm-up.
        self.connect_interval =
            self.cfg.warmup.checked_div(2 * self.devs.len().max(1) as u32).unwrap_or_default();
        self.warm_end = now + self.cfg.warmup;
        self.end = self.warm_end + self.cfg.duration;
        self.send_interval = (self.cfg.rate > 0.0)
            .then(|| Duration::from_secs_f64(self.threads as f64 / self.cfg.rate));
        self.next_send = self.warm_end;
    }

    fn tick(&mut self, now: Timestamp) {
        let stop = self.shared.stop.load(Ordering::Relaxed);
        match self.phase {
            Phase::Connect(s) => {
                self.connect_due(now);
                let resolved = self.resolved[s] == self.st.steps[s].devices;
                if stop {
                    self.end_run(now);
                } else if resolved && self.cursor >= self.cursor_end {
                    self.shared.steps[s].done.fetch_add(1, Ordering::AcqRel);
                    self.phase = Phase::StepWait(s);
                } else if now.saturating_since(self.step_started) > self.cfg.step_timeout {
                    self.cut_step(s);
                }
            }
            Phase::StepWait(s) => {
                if stop {
                    self.end_run(now);
                } else if self.shared.steps[s].done.load(Ordering::Acquire) >= self.threads {
                    if s + 1 < self.step_ranges.len() {
                        self.enter_step(s + 1, now);
                    } else {
                        // The first thread to see the fleet complete sets the hold for all.
                        let start = (now + self.cfg.warmup).as_nanos() + 1;
                        let _ = self.shared.hold_start.compare_exchange(
                            0,
                            start,
                            Ordering::AcqRel,
                            Ordering::Acquire,
                        );
                        self.phase = Phase::Settle;
                    }
                }
            }
            Phase::Settle => {
                if stop {
                    self.end_run(now);
                } else if self.shared.hold_start().is_some_and(|t| now >= t) {
                    self.counting = true;
                    self.phase = Phase::Hold;
                }
            }
            Phase::Hold => {
                let over = self.shared.hold_start().is_none_or(|t| now >= t + self.cfg.duration);
                if over || stop {
                    self.counting = false;
                    self.end_run(now);
                }
            }
            Phase::Run => {
                self.connect_due(now);
                self.counting = now >= self.warm_end;
                self.forced_tick(now);
                self.send_due(now);
                if now >= self.end || stop {
                    self.count_unsent();
                    self.counting = false;
                    self.phase = Phase::Drain(now + END_WAIT);
                    self.drain_cap = now + DRAIN_MAX;
                    self.drain_seen = self.st.received;
                }
            }
            Phase::Drain(mut deadline) => {
                // Replies still coming, or a device that owes some reconnecting to collect
                // them by resend: wait on, up to the cap.
                let extend = self.st.received > self.drain_seen
                    || (now >= deadline && now < self.drain_cap && self.owed_to_a_reconnect());
                if extend {
                    self.drain_seen = self.st.received;
                    deadline = (now + END_WAIT).min(self.drain_cap);
                    self.phase = Phase::Drain(deadline);
                }
                if self.st.received >= self.st.sent || now >= deadline || stop {
                    self.end_run(now);
                }
            }
            Phase::Leaving(deadline) => {
                if self.leaving == 0 || now >= deadline {
                    self.phase = Phase::Done;
                }
            }
            Phase::Done => {}
        }
    }

    /// Resend scenario: some device that owes echo replies is between sessions (a cycle's or a
    /// retry's handshake under way, or its retry due), and its resume will bring them back by
    /// resend. (Looked at once per END_WAIT at most.)
    fn owed_to_a_reconnect(&self) -> bool {
        self.cfg.scenario == Scenario::Resend
            && self.devs.iter().any(|d| {
                d.sent > d.replies
                    && d.flags & ABANDONED == 0
                    && d.dev.state() != DeviceState::Active
            })
    }

    /// Starts the connects that are due (bounded per pass).
    fn connect_due(&mut self, now: Timestamp) {
        let mut budget = CONNECTS_PER_PASS;
        while self.cursor < self.cursor_end && now >= self.next_connect && budget > 0 {
            let k = self.cursor as u32;
            self.cursor += 1;
            self.next_connect = self.next_connect + self.connect_interval;
            budget -= 1;
            // A step paced by `rate` may take long: its timeout runs from its last connect.
            self.step_started = now;
            self.begin_connect(k, now, true);
        }
    }

    /// A step still unresolved `step_timeout` after its last connect started: its unresolved
    /// devices are given up (their last failure, or `never_logged_on`). Walks the step once.
    fn cut_step(&mut self, s: usize) {
        let (lo, hi) = self.step_ranges[s];
        // Devices not started yet are never started.
        self.cursor = self.cursor_end;
        for k in lo..hi {
            let d = &mut self.devs[k];
            if d.flags & DONE != 0 {
                continue;
            }
            d.flags = (d.flags | DONE | ABANDONED) & !QUEUED;
            d.wake_at = Timestamp::MAX;
            self.resolved[s] += 1;
            let kind = ErrorKind::from_code(d.fail).unwrap_or(ErrorKind::NeverLoggedOn);
            self.count_error(k as u32, kind);
        }
    }

    /// Open-loop echo requests whose intended time has come (steady, resend, churn).
    fn send_due(&mut self, now: Timestamp) {
        let Some(iv) = self.send_interval else { return };
        if now < self.warm_end {
            return;
        }
        let mut budget = SENDS_PER_PASS;
        if self.cfg.ping_pong {
            if self.st.sent > self.st.received {
                return;
            }
            budget = 1;
        }
        while self.next_send <= now && budget > 0 {
            budget -= 1;
            let intended = self.next_send;
            self.next_send = self.next_send + iv;
            // Ping-pong: from the actual send, as sockperf measures.
            let stamp = if self.cfg.ping_pong { now } else { intended };
            self.body[..8].copy_from_slice(&stamp.as_nanos().to_le_bytes());
            let mut sent = false;
            while !self.active.is_empty() {
                self.rr = (self.rr + 1) % self.active.len();
                let k = self.active[self.rr];
                if self.devs[k as usize].dev.state() != DeviceState::Active {
                    self.set_active(k, false);
                    continue;
                }
                let d = &mut self.devs[k as usize];
                match d.dev.send_app(now, 150, &self.body, true) {
                    Ok(_) => {
                        d.sent = d.sent.saturating_add(1);
                        self.st.sent += 1;
                        let in_flight = self.st.sent.saturating_sub(self.st.received);
                        self.st.in_flight_max = self.st.in_flight_max.max(in_flight);
                        self.shared.live.sent.fetch_add(1, Ordering::Relaxed);
                        self.mark_dirty(k);
                    }
                    Err(SendError::Backpressure) => {
                        self.count_error(k, ErrorKind::SendBackpressure)
                    }
                    Err(_) => self.count_error(k, ErrorKind::SendFailed),
                }
                sent = true;
                break;
            }
            if !sent {
                // Every device of this thread is between sessions (churn, a reconnect): the
                // request stays due and goes out, stamped with its intended time, once one is
                // back, so the wait shows as latency; what is still due at the end is an error.
                self.next_send = intended;
                self.starved = true;
                break;
            }
            self.starved = false;
        }
    }

    /// At the end of the measured window: the requests that came due while no session of this
    /// thread was active and never went out.
    fn count_unsent(&mut self) {
        let Some(iv) = self.send_interval.filter(|iv| !iv.is_zero()) else { return };
        if !self.starved || self.next_send >= self.end {
            return;
        }
        let behind = self.end.saturating_since(self.next_send).as_nanos() / iv.as_nanos();
        let n = u64::try_from(behind).unwrap_or(u64::MAX).max(1);
        self.st.errors.add(ErrorKind::NoActiveSession, n);
        self.shared.live.errors.fetch_add(n, Ordering::Relaxed);
    }

    fn forced_tick(&mut self, now: Timestamp) {
        let Some(f) = self.forced.as_mut() else { return };
        if f.started || now < self.warm_end + f.at {
            return;
        }
        f.started = true;
        let k = f.k;
        let d = &mut self.devs[k as usize];
        d.flags |= DARK;
        f.report.owed_at_blackout = u64::from(d.sent.saturating_sub(d.replies));
        d.wake_at = now + f.dark;
        d.action = Action::DarkEnd;
        self.mark_dirty(k);
    }

    /// The end of the scenario: every device not logged on is classified, lost replies are
    /// counted, then (optionally) everyone logs out. Walks the fleet once.
    fn end_run(&mut self, now: Timestamp) {
        let cycles = matches!(self.cfg.scenario, Scenario::Resend | Scenario::Churn);
        for k in 0..self.devs.len() {
            let d = &self.devs[k];
            if d.dev.state() == DeviceState::Active {
                self.st.active_at_end += 1;
                continue;
            }
            if d.flags & COUNTED != 0 || (cycles && d.flags & EVER_ON != 0) {
                continue;
            }
            let kind = if !self.fleet.is_empty() && d.flags & EVER_ON != 0 {
                ErrorKind::NeverBack
            } else {
                ErrorKind::from_code(d.fail).unwrap_or(ErrorKind::NeverLoggedOn)
            };
            self.count_error(k as u32, kind);
        }
        self.fleet_end_counts();
        for (k, d) in self.devs.iter().enumerate() {
            let s = d.dev.stats();
            self.st.retransmits += s.retransmits;
            self.st.resend_requests += s.resend_requests;
            if let Some(f) = self.feed.get(k).filter(|f| f.received > 0) {
                self.st.feed_devices += 1;
                self.st.feed_devices_exact += u64::from(f.is_exact());
                self.st.feed.received += f.received;
                self.st.feed.missing += f.missing;
                self.st.feed.duplicates += f.duplicates;
            }
        }
        if let Some(f) = self.forced.as_mut() {
            let d = &self.devs[f.k as usize];
            f.report.resent_received = f.resent;
            f.report.complete = d.sent == d.replies;
            f.report.feed = (f.feed.received, f.feed.is_exact());
            self.st.forced = Some(f.report);
        }
        self.phase = Phase::Leaving(now + END_WAIT);
        if !self.cfg.logout_at_end {
            self.phase = Phase::Done;
            return;
        }
        for k in 0..self.devs.len() as u32 {
            let d = &mut self.devs[k as usize];
            d.wake_at = Timestamp::MAX;
            d.action = Action::None;
            d.flags |= ABANDONED;
            if d.dev.state() == DeviceState::Active {
                d.dev.logout(now);
                d.flags |= LEAVING;
                self.leaving += 1;
                self.mark_dirty(k);
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Connecting.

    /// Starts a session attempt for `k` (UDP: once its socket's handshake slot is free).
    fn begin_connect(&mut self, k: u32, now: Timestamp, reset: bool) {
        let d = &mut self.devs[k as usize];
        d.flags &= !(LEAVING | REGISTERED | QUEUED | RESET | ON);
        if reset {
            d.flags |= RESET;
        }
        d.wake_at = Timestamp::MAX;
        d.action = Action::None;
        // Datagrams for the old session id are not this attempt's (a resume registers it anew).
        let old = d.dev.session_id();
        if old != 0 && self.by_id.get(&old) == Some(&k) {
            self.by_id.remove(&old);
        }
        if d.flags & IS_TCP != 0 {
            if d.flags & SLOT_HELD != 0 {
                self.open_tcp(k, now);
            } else if self.tcp_free > 0 {
                self.tcp_free -= 1;
                d.flags |= SLOT_HELD;
                self.open_tcp(k, now);
            } else {
                d.flags |= QUEUED;
                self.tcp_waiting.push_back(k);
            }
            return;
        }
        let s = d.link as usize;
        if self.socks[s].owner == NONE {
            self.socks[s].owner = k;
            self.devs[k as usize].flags |= SLOT_HELD;
            self.start_attempt(k, now);
        } else {
            self.devs[k as usize].flags |= QUEUED;
            self.socks[s].waiting.push_back(k);
        }
    }

    fn start_attempt(&mut self, k: u32, now: Timestamp) {
        let nonce = self.rng.next_u64() | 1;
        let d = &mut self.devs[k as usize];
        d.attempts = d.attempts.saturating_add(1);
        d.started = now;
        d.flags &= !(SENT_CR | SENT_RR | SENT_LOGON);
        d.dev.connect(now, nonce, d.flags & RESET != 0);
        let step = &mut self.st.steps[usize::from(d.step)];
        step.connects += 1;
        if d.flags & IS_TCP == 0 {
            step.udp_connects += 1;
        }
        step.first_request = Some(step.first_request.map_or(now, |t| t.min(now)));
        self.mark_dirty(k);
    }

    /// Frees `k`'s socket (UDP) or connect slot (TCP) for the next device waiting for it.
    fn release_slot(&mut self, k: u32, now: Timestamp) {
        let d = &mut self.devs[k as usize];
        d.flags &= !SLOT_HELD;
        if d.flags & IS_TCP != 0 {
            self.tcp_free += 1;
            while let Some(j) = self.tcp_waiting.pop_front() {
                let dj = &mut self.devs[j as usize];
                if dj.flags & QUEUED == 0 {
                    continue;
                }
                dj.flags = (dj.flags & !QUEUED) | SLOT_HELD;
                self.tcp_free -= 1;
                self.open_tcp(j, now);
                break;
            }
            return;
        }
        let s = d.link as usize;
        if self.socks[s].owner != k {
            return;
        }
        self.socks[s].owner = NONE;
        while let Some(j) = self.socks[s].waiting.pop_front() {
            let dj = &mut self.devs[j as usize];
            if dj.flags & QUEUED == 0 || dj.link as usize != s {
                continue;
            }
            dj.flags = (dj.flags & !QUEUED) | SLOT_HELD;
            self.socks[s].owner = j;
            self.start_attempt(j, now);
            break;
        }
    }

    fn open_tcp(&mut self, k: u32, now: Timestamp) {
        let l = self.devs[k as usize].link as usize;
        // A new connection each time (the old one, if any, closes).
        if let Some(old) = self.tcp[l].stream.take() {
            let _ = epoll::delete(&self.ep, &old);
        }
        let src = source_ip(
            (self.thread as u32 + l as u32 * self.threads as u32) % self.cfg.source_ips.max(1),
        );
        match connect_tcp(self.tcp_addr(k), src) {
            Ok((stream, connecting)) => {
                let flags = epoll::EventFlags::IN | epoll::EventFlags::OUT;
                let data = epoll::EventData::new_u64(TCP_TOKEN | l as u64);
                if epoll::add(&self.ep, &stream, data, flags).is_err() {
                    self.on_end(k, EndReason::TransportClosed, b"", now);
                    return;
                }
                let link = &mut self.tcp[l];
                link.stream = Some(stream);
                link.connecting = connecting;
                link.out_armed = true;
                link.out.clear();
                link.deframer.reset();
                self.devs[k as usize].flags |= REGISTERED;
                self.start_attempt(k, now);
            }
            Err(_) if !self.fleet.is_empty() => {
                let why = self.fleet[k as usize].cursor.connect_refused();
                self.fleet_moved(k, why, now);
            }
            Err(_) => {
                let d = &mut self.devs[k as usize];
                d.attempts = d.attempts.saturating_add(1);
                d.fail = ErrorKind::TcpConnectFailed.code();
                self.failed_attempt(k, ErrorKind::TcpConnectFailed, false, now);
            }
        }
    }

    // ------------------------------------------------------------------------------------
    // Deadlines and output.

    fn fire_deadlines(&mut self, now: Timestamp) {
        while let Some(k) = self.sched.pop_due(now) {
            let d = &mut self.devs[k as usize];
            if d.wake_at <= now {
                let a = d.action;
                d.wake_at = Timestamp::MAX;
                d.action = Action::None;
                self.on_action(k, a, now);
            }
            self.devs[k as usize].dev.handle_timeout(now);
            self.drain(k, now);
            self.mark_dirty(k);
        }
    }

    fn on_action(&mut self, k: u32, a: Action, now: Timestamp) {
        let d = &mut self.devs[k as usize];
        let ending = match self.phase {
            Phase::Connect(_) | Phase::StepWait(_) | Phase::Settle | Phase::Hold | Phase::Run => {
                false
            }
            // While the end waits for replies, a resend-scenario device that owes some goes on
            // reconnecting (it resumes, and the resend brings them); no new cycle starts.
            Phase::Drain(_) => {
                self.cfg.scenario != Scenario::Resend
                    || d.sent <= d.replies
                    || !matches!(a, Action::Retry | Action::DarkEnd)
            }
            Phase::Leaving(_) | Phase::Done => true,
        };
        if ending || d.flags & ABANDONED != 0 {
            return;
        }
        let state = d.dev.state();
        match a {
            Action::None => {}
            Action::Retry => {
                let reset = match self.fleet.get(k as usize) {
                    // Resume only at the gateway that holds the session.
                    Some(f) => !f.cursor.can_resume(),
                    None => self.cfg.scenario != Scenario::Resend,
                };
                self.begin_connect(k, now, reset);
            }
            Action::Cycle if state == DeviceState::Active => {
                if self.cfg.scenario == Scenario::Churn {
                    d.dev.logout(now);
                    d.flags |= LEAVING;
                } else {
                    self.begin_connect(k, now, false);
                }
            }
            Action::Cycle => {}
            Action::Return => self.begin_connect(k, now, true),
            Action::DarkEnd => {
                d.flags &= !DARK;
                if let Some(f) = self.forced.as_mut() {
                    f.resent = 0;
                    f.report.resumed = true;
                }
                // Roam: another socket, hence another source address and port.
                if d.flags & IS_TCP == 0 && self.socks.len() > 1 {
                    let was = d.link;
                    if d.flags & SLOT_HELD != 0 {
                        self.release_slot(k, now);
                    }
                    self.devs[k as usize].link = (was + 1) % self.socks.len() as u32;
                }
                self.begin_connect(k, now, false);
            }
        }
    }

    fn mark_dirty(&mut self, k: u32) {
        let d = &mut self.devs[k as usize];
        if d.flags & DIRTY == 0 {
            d.flags |= DIRTY;
            self.dirty.push(k);
        }
    }

    /// Sends what every touched device has to send: UDP sorted by socket, one `sendmmsg` per
    /// socket; then arms each device's next deadline.
    fn flush(&mut self, now: Timestamp) {
        while !self.dirty.is_empty() {
            std::mem::swap(&mut self.dirty, &mut self.dirty_next);
            let mut list = std::mem::take(&mut self.dirty_next);
            list.sort_unstable_by_key(|&k| {
                let d = &self.devs[k as usize];
                (u64::from(d.flags & IS_TCP != 0) << 32) | u64::from(d.link)
            });
            for &k in &list {
                self.devs[k as usize].flags &= !DIRTY;
                self.reconcile(k, now);
                if self.devs[k as usize].flags & IS_TCP != 0 {
                    self.flush_tcp_device(k, now);
                } else {
                    self.flush_udp_device(k, now);
                }
                let d = &self.devs[k as usize];
                let at = d.dev.poll_timeout().unwrap_or(Timestamp::MAX).min(d.wake_at);
                if at != Timestamp::MAX {
                    self.sched.arm(k, at);
                }
            }
            list.clear();
            self.dirty_next = list;
        }
        self.send_tx();
    }

    /// Keeps the handshake slot and the logged-on list in step with the device's state.
    fn reconcile(&mut self, k: u32, now: Timestamp) {
        let d = &self.devs[k as usize];
        let state = d.dev.state();
        let connecting = if d.flags & IS_TCP != 0 {
            state == DeviceState::LoggingOn
        } else {
            matches!(state, DeviceState::Connecting | DeviceState::Registering)
        };
        if d.flags & SLOT_HELD != 0 && !connecting {
            self.release_slot(k, now);
        }
        let d = &self.devs[k as usize];
        let active = state == DeviceState::Active && d.flags & LEAVING == 0;
        if active != (d.active_pos != NONE) {
            self.set_active(k, active);
        }
    }

    fn set_active(&mut self, k: u32, on: bool) {
        let pos = self.devs[k as usize].active_pos;
        if on && pos == NONE {
            self.devs[k as usize].active_pos = self.active.len() as u32;
            self.active.push(k);
            self.shared.live.active.fetch_add(1, Ordering::Relaxed);
        } else if !on && pos != NONE {
            self.active.swap_remove(pos as usize);
            if let Some(&moved) = self.active.get(pos as usize) {
                self.devs[moved as usize].active_pos = pos;
            }
            self.devs[k as usize].active_pos = NONE;
            self.shared.live.active.fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn flush_udp_device(&mut self, k: u32, now: Timestamp) {
        let link = self.devs[k as usize].link;
        let handshake = self.handshake_addr(k);
        if self.tx_sock != link {
            self.send_tx();
            self.tx_sock = link;
        }
        loop {
            if self.tx.is_full() {
                self.send_tx();
                self.tx_sock = link;
            }
            let Some(slot) = self.tx.slot() else { return };
            let d = &mut self.devs[k as usize];
            let Some(t) = d.dev.poll_transmit(now, slot) else { return };
            let to = match t.dest {
                DeviceDest::Handshake => handshake,
                DeviceDest::SessionPort(p) => SocketAddr::new(handshake.ip(), p),
                DeviceDest::Stream => return,
            };
            let payload = &slot[DATAGRAM_PREFIX_LEN.min(t.len)..t.len];
            count_out(&mut self.st, usize::from(d.step), &mut d.flags, self.counting, payload);
            self.st.wire.logon_datagrams_sent += u64::from(is_logon(payload));
            self.tx.commit(t.len, to);
        }
    }

    /// Hands the batch to its socket, recording the send lateness of echo requests first.
    fn send_tx(&mut self) {
        if self.tx.is_empty() || self.tx_sock == NONE {
            return;
        }
        if self.counting && self.send_interval.is_some() {
            let now = self.clock.now();
            for i in 0..self.tx.len() {
                let dg = self.tx.queued(i);
                record_lateness(&mut self.st, now, &dg[DATAGRAM_PREFIX_LEN.min(dg.len())..]);
            }
        }
        let f = self.tx.flush(&self.socks[self.tx_sock as usize].udp);
        self.st.wire.send_calls += f.calls as u64;
        self.st.wire.datagrams_sent += f.sent as u64;
        self.st.wire.send_dropped += f.dropped as u64;
        if f.dropped > 0 {
            self.st.errors.add(ErrorKind::SendFailed, f.dropped as u64);
        }
    }

    fn flush_tcp_device(&mut self, k: u32, now: Timestamp) {
        let l = self.devs[k as usize].link as usize;
        let counting = self.counting;
        loop {
            let d = &mut self.devs[k as usize];
            let Some(t) = d.dev.poll_transmit(now, &mut self.tcp_buf) else { break };
            let bytes = &self.tcp_buf[..t.len];
            count_out(&mut self.st, usize::from(d.step), &mut d.flags, counting, bytes);
            if counting && self.send_interval.is_some() {
                record_lateness(&mut self.st, self.clock.now(), bytes);
            }
            let link = &mut self.tcp[l];
            if link.stream.is_none() || link.out.len() + bytes.len() > TCP_OUT_MAX {
                self.st.errors.add(ErrorKind::SendFailed, 1);
                continue;
            }
            link.out.extend_from_slice(bytes);
        }
        self.write_tcp(l);
    }

    fn write_tcp(&mut self, l: usize) {
        let link = &mut self.tcp[l];
        let Some(s) = link.stream.as_mut() else { return };
        if link.connecting {
            return;
        }
        while !link.out.is_empty() {
            match s.write(&link.out) {
                Ok(0) => break,
                Ok(n) => {
                    link.out.drain(..n);
                }
                Err(e) if e.kind() == IoErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let want = !link.out.is_empty();
        if want != link.out_armed {
            link.out_armed = want;
            let mut flags = epoll::EventFlags::IN;
            if want {
                flags |= epoll::EventFlags::OUT;
            }
            let _ = epoll::modify(
                &self.ep,
                &*s,
                epoll::EventData::new_u64(TCP_TOKEN | l as u64),
                flags,
            );
        }
    }

    // ------------------------------------------------------------------------------------
    // Input.

    fn wait_for(&self, now: Timestamp) -> Duration {
        let mut until = now + MAX_WAIT;
        if let Some(t) = self.sched.next() {
            until = until.min(t);
        }
        if self.cursor < self.cursor_end && matches!(self.phase, Phase::Connect(_) | Phase::Run) {
            until = until.min(self.next_connect);
        }
        // Ping-pong with a reply owed: the next send waits for it, not for its time.
        let owed = self.cfg.ping_pong && self.st.sent > self.st.received;
        if self.phase == Phase::Run && self.send_interval.is_some() && !owed {
            until = until.min(self.next_send.max(self.warm_end));
        }
        if !self.dirty.is_empty() {
            until = now;
        }
        until.saturating_since(now)
    }

    fn poll_input(&mut self, rx: &mut RecvBatch, wait: Duration) {
        // Microsecond timeouts (epoll_pwait2): a millisecond-granular wait would send late by up
        // to 1 ms and show up as latency from the intended send time.
        let wait = if self.cfg.spin { Duration::ZERO } else { wait };
        let ts =
            Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: i64::from(wait.subsec_nanos()) };
        self.events.clear();
        // EINTR and the like: nothing ready this time round.
        let _ = epoll::wait(&self.ep, spare_capacity(&mut self.events), Some(&ts));
        for i in 0..self.events.len() {
            let ev = self.events[i];
            let token = ev.data.u64();
            if token & TCP_TOKEN != 0 {
                self.tcp_ready((token & !TCP_TOKEN) as usize, ev.flags);
            } else {
                self.udp_ready(rx, token as usize);
            }
        }
    }

    fn udp_ready(&mut self, rx: &mut RecvBatch, j: usize) {
        // Bounded: at most 4 batches per wake-up, so one busy socket cannot starve the rest.
        for _ in 0..4 {
            let n = rx.recv(&self.socks[j].udp).unwrap_or(0);
            if n == 0 {
                return;
            }
            self.st.wire.recv_calls += 1;
            self.st.wire.datagrams_received += n as u64;
            let now = self.clock.now();
            for i in 0..n {
                let (data, truncated) = rx.datagram(i);
                self.on_datagram(j, data, truncated, now);
            }
            if n < BATCH {
                return;
            }
        }
    }

    /// Routes one datagram to its device: by session id, or (prefix 0) to the device whose
    /// handshake holds the socket.
    fn on_datagram(&mut self, j: usize, data: &[u8], truncated: bool, now: Timestamp) {
        let w = &mut self.st.wire;
        if truncated || data.len() < DATAGRAM_PREFIX_LEN + HEADER_LEN {
            w.malformed += 1;
            return;
        }
        if self.cfg.scenario == Scenario::Resend && self.rng.chance(self.cfg.drop_share) {
            w.dropped_on_purpose += 1;
            return;
        }
        let mut id = [0u8; 8];
        id.copy_from_slice(&data[..8]);
        let id = u64::from_le_bytes(id);
        let k = if id != 0 {
            let Some(&k) = self.by_id.get(&id) else {
                w.unknown_session += 1;
                return;
            };
            if self.devs[k as usize].link as usize != j {
                w.wrong_socket += 1;
                return;
            }
            k
        } else {
            let k = self.socks[j].owner;
            if k == NONE {
                w.stray_handshake_replies += 1;
                return;
            }
            // A duplicate RegistrationAccept (answer to a retried request) for a session id that
            // another device already holds is not this device's.
            if let Some(sid) = registration_accept_id(data) {
                if self.by_id.get(&sid).is_some_and(|&other| other != k) {
                    w.stray_handshake_replies += 1;
                    return;
                }
            }
            k
        };
        let d = &mut self.devs[k as usize];
        if d.flags & DARK != 0 {
            self.st.wire.dropped_on_purpose += 1;
            return;
        }
        count_in(&mut self.st, self.counting, &data[DATAGRAM_PREFIX_LEN..]);
        self.st.wire.logon_datagrams_received += u64::from(is_logon(&data[DATAGRAM_PREFIX_LEN..]));
        d.dev.handle_datagram(now, data);
        self.drain(k, now);
        self.mark_dirty(k);
    }

    fn tcp_ready(&mut self, l: usize, flags: epoll::EventFlags) {
        let now = self.clock.now();
        let k = self.tcp[l].device;
        let Some(stream) = self.tcp[l].stream.as_ref() else { return };
        if self.tcp[l].connecting {
            let failed = flags.intersects(epoll::EventFlags::ERR | epoll::EventFlags::HUP)
                || stream.take_error().ok().flatten().is_some()
                || stream.peer_addr().is_err();
            if failed {
                self.close_tcp(l);
                let d = &mut self.devs[k as usize];
                d.dev.transport_lost();
                if self.fleet.is_empty() {
                    d.fail = ErrorKind::TcpConnectFailed.code();
                    self.failed_attempt(k, ErrorKind::TcpConnectFailed, false, now);
                } else {
                    let why = self.fleet[k as usize].cursor.connect_refused();
                    self.fleet_moved(k, why, now);
                }
                self.mark_dirty(k);
                return;
            }
            if !flags.contains(epoll::EventFlags::OUT) {
                return;
            }
            self.tcp[l].connecting = false;
            let _ = self.tcp[l].stream.as_ref().map(|s| s.set_nodelay(true));
        }
        if flags.intersects(epoll::EventFlags::IN | epoll::EventFlags::HUP | epoll::EventFlags::ERR)
        {
            self.read_tcp(l, k, now);
        }
        if self.tcp[l].stream.is_some() {
            self.write_tcp(l);
        }
        self.mark_dirty(k);
    }

    fn read_tcp(&mut self, l: usize, k: u32, now: Timestamp) {
        // The deframer is taken out while its frames go to the device (which `drain` borrows
        // with the rest of the engine); an empty one stands in (no allocation).
        let mut df = std::mem::replace(&mut self.tcp[l].deframer, Deframer::new(0));
        let mut closed = false;
        for _ in 0..4 {
            let Some(s) = self.tcp[l].stream.as_mut() else { break };
            match s.read(df.spare()) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => {
                    df.filled(n);
                    loop {
                        match df.next_frame() {
                            Ok(Some(f)) => {
                                count_in(&mut self.st, self.counting, f);
                                self.devs[k as usize].dev.handle_frame(now, f);
                                self.drain(k, now);
                            }
                            Ok(None) => break,
                            Err(_) => {
                                self.st.wire.malformed += 1;
                                closed = true;
                                break;
                            }
                        }
                    }
                    if closed {
                        break;
                    }
                }
                Err(e) if e.kind() == IoErrorKind::WouldBlock => break,
                Err(e) if e.kind() == IoErrorKind::Interrupted => {}
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        self.tcp[l].deframer = df;
        if closed {
            self.close_tcp(l);
            let d = &mut self.devs[k as usize];
            let was_ended = d.dev.state().is_ended();
            d.dev.transport_lost();
            if !was_ended {
                self.on_end(k, EndReason::TransportClosed, b"", now);
            }
        }
    }

    fn close_tcp(&mut self, l: usize) {
        if let Some(s) = self.tcp[l].stream.take() {
            let _ = epoll::delete(&self.ep, &s);
        }
        self.tcp[l].out.clear();
        self.tcp[l].connecting = false;
    }

    // ------------------------------------------------------------------------------------
    // What the devices report.

    /// Takes every event the device has queued (after each input, as the device requires).
    fn drain(&mut self, k: u32, now: Timestamp) {
        let d = &mut self.devs[k as usize];
        let forced = self.forced.as_ref().is_some_and(|f| f.k == k);
        let mut registered = None;
        let mut logged_on = false;
        let mut ended = None;
        let mut text = [0u8; 96];
        let mut text_len = 0;
        let mut resent = 0;
        while let Some(e) = d.dev.poll_event() {
            match e {
                DeviceEvent::Registered { session_id, .. } => registered = Some(session_id),
                DeviceEvent::LoggedOn { .. } => logged_on = true,
                DeviceEvent::App { type_id: 250, body, resent: r, .. } if body.len() >= 8 => {
                    d.replies = d.replies.saturating_add(1);
                    resent += u64::from(r);
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&body[..8]);
                    let lat = now.as_nanos().saturating_sub(u64::from_le_bytes(b)).max(1);
                    let _ = self.st.latency.record(lat.min(LATENCY_MAX_NS));
                    self.st.received += 1;
                    self.shared.live.received.fetch_add(1, Ordering::Relaxed);
                }
                DeviceEvent::App { type_id: 300, body, resent: r, .. } if body.len() >= 8 => {
                    resent += u64::from(r);
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&body[..8]);
                    if let Some(f) = self.feed.get_mut(k as usize) {
                        f.observe(u64::from_le_bytes(b));
                    }
                    if let Some(f) = self.forced.as_mut().filter(|_| forced) {
                        f.feed.observe(u64::from_le_bytes(b));
                    }
                }
                DeviceEvent::App { resent: r, .. } => resent += u64::from(r),
                DeviceEvent::StreamReset { .. } => {
                    if let Some(f) = self.feed.get_mut(k as usize) {
                        f.restart();
                    }
                    if let Some(f) = self.forced.as_mut().filter(|_| forced) {
                        f.feed.restart();
                    }
                }
                DeviceEvent::Rejected { .. } => self.st.errors.add(ErrorKind::MessageRejected, 1),
                DeviceEvent::Ended { reason, text: t } => {
                    text_len = t.len().min(text.len());
                    text[..text_len].copy_from_slice(&t[..text_len]);
                    ended = Some(reason);
                }
            }
        }
        if forced {
            if let Some(f) = self.forced.as_mut() {
                f.resent += resent;
            }
        }
        if let Some(id) = registered {
            self.devs[k as usize].flags |= REGISTERED;
            self.by_id.insert(id, k);
        }
        if logged_on {
            self.on_logon(k, now);
        }
        if let Some(reason) = ended {
            self.on_end(k, reason, &text[..text_len], now);
        }
    }

    fn on_logon(&mut self, k: u32, now: Timestamp) {
        if let Some(f) = self.fleet.get_mut(k as usize) {
            let fr = self.st.fleet.as_mut();
            if let Some(fr) = fr {
                if f.ended_at != Timestamp::ZERO {
                    let back = now.saturating_since(f.ended_at).as_nanos().max(1) as u64;
                    let _ = fr.back.record(back.min(LATENCY_MAX_NS));
                    fr.resumed_at_holder += u64::from(f.cursor.can_resume());
                    let wall = (now.as_nanos() as i64).saturating_add(self.clock.wall_offset_ns());
                    fr.last_back_unix_ns = fr.last_back_unix_ns.max(wall.max(0) as u64);
                }
                let at = f.cursor.current();
                if f.first == u16::MAX {
                    f.first = at as u16;
                    fr.per_gateway.first[at] += 1;
                }
            }
            f.ended_at = Timestamp::ZERO;
            f.cursor.logged_on();
        }
        let d = &mut self.devs[k as usize];
        d.flags |= ON | EVER_ON;
        d.fail = 0;
        d.attempts = 0;
        let took = now.saturating_since(d.started).as_nanos().max(1) as u64;
        let _ = self.st.handshake.record(took.min(LATENCY_MAX_NS));
        self.st.logons += 1;
        self.st.wire.udp_logons += u64::from(d.dev.config().transport == Transport::Udp);
        self.shared.live.logons.fetch_add(1, Ordering::Relaxed);
        let s = usize::from(d.step);
        if d.flags & DONE == 0 {
            d.flags |= DONE;
            self.resolved[s] += 1;
            let step = &mut self.st.steps[s];
            step.logged_on += 1;
            let _ = step.handshake.record(took.min(LATENCY_MAX_NS));
            step.last_logon = Some(step.last_logon.map_or(now, |t| t.max(now)));
            let shared = &self.shared.steps[s];
            if shared.logons.fetch_add(1, Ordering::AcqRel) + 1 == shared.target99 {
                shared.t99.store(now.as_nanos() + 1, Ordering::Release);
            }
        }
        match self.cfg.scenario {
            Scenario::Resend | Scenario::Churn => {
                // Spread over [0.5, 1.5) × the period, differently per device.
                let spread = 0.5 + (self.rng.below(1000) as f64) / 1000.0;
                d.wake_at = now + self.cfg.reconnect_every.mul_f64(spread);
                d.action = Action::Cycle;
            }
            _ => {}
        }
    }

    fn on_end(&mut self, k: u32, reason: EndReason, text: &[u8], now: Timestamp) {
        let cycles = matches!(self.cfg.scenario, Scenario::Resend | Scenario::Churn);
        let d = &mut self.devs[k as usize];
        let was_on = d.flags & ON != 0;
        let leaving = d.flags & LEAVING != 0;
        d.flags &= !(ON | LEAVING);
        if leaving {
            // We asked for it (or the session went while we waited): the end we expected.
            if matches!(self.phase, Phase::Leaving(_)) {
                self.leaving = self.leaving.saturating_sub(1);
            } else if self.cfg.scenario == Scenario::Churn {
                d.wake_at = now + Duration::from_millis(100);
                d.action = Action::Return;
            }
            return;
        }
        if d.flags & ABANDONED != 0 {
            return;
        }
        if reason == EndReason::LoggedOut {
            let t = String::from_utf8_lossy(text).into_owned();
            *self.logged_out_reasons.entry(t).or_default() += 1;
        }
        if !self.fleet.is_empty() && self.fleet_end(k, reason, text, was_on, now) {
            return;
        }
        let d = &mut self.devs[k as usize];
        if was_on {
            self.count_error(k, ErrorKind::of_lost_session(reason));
            if cycles {
                let d = &mut self.devs[k as usize];
                d.wake_at = now + Duration::from_millis(100);
                d.action = Action::Retry;
            }
            return;
        }
        let registered = d.flags & (REGISTERED | IS_TCP) != 0;
        let kind = ErrorKind::of_failed_connect(reason, registered);
        d.fail = kind.code();
        // The acceptor sheds pending TCP logons under pressure: come back later, as for
        // RATE_LIMITED.
        let shed = reason == EndReason::LoggedOut && text == b"server busy";
        self.failed_attempt(k, kind, shed, now);
    }

    /// An attempt to log on failed with `kind`: try again (with a pause) or give up. `shed`: the
    /// gateway refused it to shed load ("server busy").
    fn failed_attempt(&mut self, k: u32, kind: ErrorKind, shed: bool, now: Timestamp) {
        let d = &mut self.devs[k as usize];
        let step = &mut self.st.steps[usize::from(d.step)];
        let retry = match kind {
            // The gateway asks us to slow down: that is no failure of the device. The step's
            // deadline bounds it.
            ErrorKind::ConnectionRejectedRateLimited => {
                step.requests.rate_limited += 1;
                true
            }
            ErrorKind::LogonRefused if shed => {
                step.requests.rate_limited += 1;
                true
            }
            ErrorKind::HandshakeTimeout
            | ErrorKind::LogonTimeout
            | ErrorKind::TcpConnectFailed
            | ErrorKind::ConnectionClosed => {
                let again = u32::from(d.attempts) < self.cfg.attempts;
                step.requests.timeouts_retried += u64::from(again);
                again
            }
            _ => false,
        };
        let cycles = matches!(self.cfg.scenario, Scenario::Resend | Scenario::Churn);
        // Whatever the outcome, the device's deadline may have changed.
        self.mark_dirty(k);
        let d = &mut self.devs[k as usize];
        if retry {
            let pause = 50 + self.rng.below(250);
            d.wake_at = now + Duration::from_millis(pause);
            d.action = Action::Retry;
            return;
        }
        self.count_error(k, kind);
        let d = &mut self.devs[k as usize];
        if cycles {
            d.wake_at = now + Duration::from_secs(1);
            d.action = Action::Retry;
            return;
        }
        if d.flags & DONE == 0 {
            d.flags |= DONE;
            self.resolved[usize::from(d.step)] += 1;
        }
        d.flags |= ABANDONED;
    }

    /// Counts one error. Device-level kinds count once per device (storm, idle, steady) or once
    /// per incident (resend, churn, whose sessions come and go by design). `k` = `NONE` for
    /// errors that belong to no device.
    fn count_error(&mut self, k: u32, kind: ErrorKind) {
        if kind.is_device() && k != NONE {
            let d = &mut self.devs[k as usize];
            let cycles = matches!(self.cfg.scenario, Scenario::Resend | Scenario::Churn);
            if d.flags & COUNTED != 0 && !cycles {
                return;
            }
            d.flags |= COUNTED;
            d.fail = kind.code();
        }
        self.st.errors.add(kind, 1);
        self.shared.live.errors.fetch_add(1, Ordering::Relaxed);
    }

    // ------------------------------------------------------------------------------------
    // The server list (DESIGN.md §4; `super::fleet`).

    /// Where `k` handshakes: its current entry, or the one gateway.
    fn handshake_addr(&self, k: u32) -> SocketAddr {
        match self.fleet.get(k as usize) {
            Some(f) => self.cfg.servers[f.cursor.current()].handshake,
            None => self.cfg.handshake,
        }
    }

    /// Where `k` connects over TCP: its current entry, or the one gateway.
    fn tcp_addr(&self, k: u32) -> SocketAddr {
        match self.fleet.get(k as usize) {
            Some(f) => self.cfg.servers[f.cursor.current()].tcp,
            None => self.cfg.tcp,
        }
    }

    /// A session or an attempt of `k` ended: moves along the list, or comes back to the
    /// holder after losing a logged-on session. False: handle it as with one gateway.
    fn fleet_end(
        &mut self,
        k: u32,
        reason: EndReason,
        text: &[u8],
        was_on: bool,
        now: Timestamp,
    ) -> bool {
        let f = &mut self.fleet[k as usize];
        if was_on {
            if let (Some(h), Some(fr)) = (f.cursor.holder(), self.st.fleet.as_mut()) {
                fr.per_gateway.sessions_ended[h] += 1;
            }
            f.ends = f.ends.saturating_add(1);
            f.ended_at = now;
        }
        if let Some(why) = f.cursor.on_end(reason, text) {
            self.fleet_moved(k, why, now);
            return true;
        }
        if was_on && matches!(reason, EndReason::Lost | EndReason::TransportClosed) {
            // Resume at the gateway that holds the session (only it has its journal).
            let pause = 100 + self.rng.below(400);
            let d = &mut self.devs[k as usize];
            d.fail = ErrorKind::NeverBack.code();
            d.wake_at = now + Duration::from_millis(pause);
            d.action = Action::Retry;
            self.mark_dirty(k);
            return true;
        }
        false
    }

    /// `k` moved to its next entry for `why`: counted, and it connects there after a pause (a
    /// longer one once the whole list has been tried since its last logon).
    fn fleet_moved(&mut self, k: u32, why: MoveReason, now: Timestamp) {
        if let Some(fr) = self.st.fleet.as_mut() {
            fr.moved(why);
        }
        let round = self.fleet[k as usize].cursor.moves_since_logon() >= self.cfg.servers.len();
        let pause = if round { 1000 + self.rng.below(1000) } else { 50 + self.rng.below(250) };
        let d = &mut self.devs[k as usize];
        if d.flags & EVER_ON != 0 {
            d.fail = ErrorKind::NeverBack.code();
        }
        d.wake_at = now + Duration::from_millis(pause);
        d.action = Action::Retry;
        self.mark_dirty(k);
    }

    /// The end of the run: where each device is, and who was never disturbed.
    fn fleet_end_counts(&mut self) {
        let Some(fr) = self.st.fleet.as_mut() else { return };
        for (d, f) in self.devs.iter().zip(&self.fleet) {
            if d.dev.state() != DeviceState::Active {
                continue;
            }
            let at = f.cursor.current();
            fr.per_gateway.at_end[at] += 1;
            if usize::from(f.first) == at && f.ends == 0 && d.dev.stats().resend_requests == 0 {
                fr.per_gateway.undisturbed[at] += 1;
            }
        }
    }

    fn finish(mut self) -> ThreadResult {
        // Counted at the very end, so that a reply that came while the fleet logged out is
        // received, not lost: the report's sent and received then add up to its lost replies.
        let unanswered = self.st.sent.saturating_sub(self.st.received);
        match self.cfg.scenario {
            Scenario::Steady | Scenario::Resend => {
                if unanswered > 0 {
                    self.st.errors.add(ErrorKind::LostReplies, unanswered);
                }
            }
            // Sessions that leave by design lose the replies still in flight.
            _ => self.st.unanswered = unanswered,
        }
        self.st.logged_out_reasons = std::mem::take(&mut self.logged_out_reasons);
        self.st
    }
}

/// Local index of the first device of this thread with a global index ≥ `global`.
fn local_from(global: usize, thread: usize, threads: usize) -> usize {
    (global + threads - 1).saturating_sub(thread) / threads
}

/// A UDP socket for many devices: non-blocking, with a receive buffer for bursts of replies.
fn bind_udp(at: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(at),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    // Best effort: the kernel caps it at net.core.rmem_max.
    let _ = s.set_recv_buffer_size(1 << 20);
    s.set_nonblocking(true)?;
    s.bind(&at.into())?;
    Ok(s.into())
}

/// A non-blocking TCP connection from `src`; `true` while the connect is in progress.
fn connect_tcp(to: SocketAddr, src: std::net::Ipv4Addr) -> std::io::Result<(TcpStream, bool)> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(to),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    s.set_nonblocking(true)?;
    if to.ip().is_loopback() && to.is_ipv4() {
        s.bind(&SocketAddr::new(IpAddr::V4(src), 0).into())?;
    }
    let connecting = match s.connect(&to.into()) {
        Ok(()) => false,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => true,
        Err(e) => return Err(e),
    };
    let stream: TcpStream = s.into();
    if !connecting {
        let _ = stream.set_nodelay(true);
    }
    Ok((stream, connecting))
}

/// The session id in a RegistrationAccept datagram, if it is one.
fn registration_accept_id(data: &[u8]) -> Option<u64> {
    let dg = Datagram::parse(data).ok()?;
    let frame = dg.frames().next()?.ok()?;
    match Message::decode_frame(frame).ok()?.body {
        Body::RegistrationAccept { session_id, .. } => Some(session_id),
        _ => None,
    }
}

/// Calls `f(type_id, flags, frame)` for each well-formed frame of `bytes` (a datagram without
/// its prefix, or TCP frames back to back).
fn each_frame(bytes: &[u8], mut f: impl FnMut(u16, u8, &[u8])) {
    let mut rest = bytes;
    while rest.len() >= HEADER_LEN {
        let Ok((frame, padded)) = split_frame(rest) else { return };
        f(u16::from_le_bytes([frame[4], frame[5]]), frame[1], frame);
        rest = &rest[padded..];
    }
}

/// Counts what a device sends: the handshake and logon packets of its step, the repeats within
/// one attempt being the retransmissions (`flags` remembers what this attempt has sent), and
/// heartbeats while counting.
fn count_out(st: &mut ThreadResult, step: usize, flags: &mut u16, counting: bool, payload: &[u8]) {
    each_frame(payload, |type_id, msg_flags, _| {
        let s = &mut st.steps[step].requests;
        let mut once = |bit: u16, total: &mut u64, retries: &mut u64| {
            *total += 1;
            *retries += u64::from(*flags & bit != 0);
            *flags |= bit;
        };
        match type_id {
            50 => once(SENT_CR, &mut s.connection_requests, &mut s.connection_request_retries),
            53 => once(SENT_RR, &mut s.registration_requests, &mut s.registration_request_retries),
            1 => {
                let before = s.logon_retries;
                once(SENT_LOGON, &mut s.logon_requests, &mut s.logon_retries);
                // A repeated LogonRequest carries the resend flag; count it once either way.
                if s.logon_retries == before && msg_flags & FLAG_RESEND != 0 {
                    s.logon_retries += 1;
                }
            }
            10 if counting => st.hold.heartbeats_sent += 1,
            11 if counting => st.hold.test_requests_sent += 1,
            _ => {}
        }
    });
}

/// Whether a datagram's payload (after the prefix) starts with a message of the logon: the
/// handshake (types 50-55), GetDeviceConfig and DeviceConfig (56, 57), LogonRequest and
/// LogonResponse (1, 2). A device's DeviceConfig carries its LogonRequest in the same datagram.
fn is_logon(payload: &[u8]) -> bool {
    payload.len() >= HEADER_LEN
        && MessageType::from_u16(u16::from_le_bytes([payload[4], payload[5]])).is_some_and(|t| {
            t.is_handshake() || matches!(t, MessageType::LogonRequest | MessageType::LogonResponse)
        })
}

/// Counts heartbeats and TestRequests from the gateway while counting.
fn count_in(st: &mut ThreadResult, counting: bool, payload: &[u8]) {
    if !counting {
        return;
    }
    each_frame(payload, |type_id, _, _| match type_id {
        10 => st.hold.heartbeats_received += 1,
        11 => st.hold.test_requests_received += 1,
        _ => {}
    });
}

/// Records `now` minus the intended time of every first-sent echo request in `payload`.
fn record_lateness(st: &mut ThreadResult, now: Timestamp, payload: &[u8]) {
    each_frame(payload, |type_id, flags, frame| {
        if type_id != 150 || flags & FLAG_RESEND != 0 || frame.len() < HEADER_LEN + 8 {
            return;
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&frame[HEADER_LEN..HEADER_LEN + 8]);
        let late = now.as_nanos().saturating_sub(u64::from_le_bytes(b)).max(1);
        let _ = st.lateness.record(late.min(LATENCY_MAX_NS));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_ranges_split_global_ranges_by_thread() {
        // Thread t owns globals t, t + T, ...: local k is global k * T + t.
        for threads in 1..5 {
            for thread in 0..threads {
                for global in 0..20 {
                    let k = local_from(global, thread, threads);
                    assert!(k * threads + thread >= global);
                    assert!(k == 0 || (k - 1) * threads + thread < global);
                }
            }
        }
    }

    #[test]
    fn frames_are_counted_by_type() {
        let mut st = ThreadResult::new(1);
        let hb = Message {
            header: crate::protocol::Header { seq: 3, ..Default::default() },
            body: Body::Heartbeat { correlation_id: 0 },
        };
        let mut buf = vec![0u8; 256];
        let n1 = hb.encode(&mut buf).unwrap();
        let logon = Message {
            header: crate::protocol::Header { seq: 1, flags: FLAG_RESEND, ..Default::default() },
            body: Body::LogonRequest {
                username: crate::protocol::Username::new(b"u").unwrap(),
                password: crate::protocol::Password::new(b"p").unwrap(),
                reset_seq_num: true,
            },
        };
        let n2 = logon.encode(&mut buf[n1..]).unwrap();
        let mut flags = 0;
        count_out(&mut st, 0, &mut flags, true, &buf[..n1 + n2]);
        assert_eq!(st.hold.heartbeats_sent, 1);
        assert_eq!(
            (st.steps[0].requests.logon_requests, st.steps[0].requests.logon_retries),
            (1, 1)
        );
        count_out(&mut st, 0, &mut flags, true, &buf[n1..n1 + n2]);
        assert_eq!(
            (st.steps[0].requests.logon_requests, st.steps[0].requests.logon_retries),
            (2, 2)
        );
        count_out(&mut st, 0, &mut flags, false, &buf[..n1]);
        assert_eq!(st.hold.heartbeats_sent, 1, "not counted outside the window");
        count_in(&mut st, true, &buf[..n1]);
        assert_eq!(st.hold.heartbeats_received, 1);
    }

    #[test]
    fn lateness_is_taken_from_first_sends_only() {
        let mut st = ThreadResult::new(1);
        let mut body = [0u8; 16];
        body[..8].copy_from_slice(&1_000u64.to_le_bytes());
        let mut buf = vec![0u8; 256];
        let mut at = 0;
        for flags in [0, FLAG_RESEND] {
            let m = Message {
                header: crate::protocol::Header { seq: 2, flags, ..Default::default() },
                body: Body::App { type_id: 150, body: &body },
            };
            at += m.encode(&mut buf[at..]).unwrap();
        }
        record_lateness(&mut st, Timestamp::from_nanos(251_000), &buf[..at]);
        assert_eq!(st.lateness.len(), 1);
        assert!(st.lateness.equivalent(st.lateness.max(), 250_000));
    }
}
