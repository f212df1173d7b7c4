//! `fleetgate load`: an open-loop load generator driving the same device-side state machine
//! ([`Device`]) the simulations test, over real sockets.
//!
//! - Thread per core: devices are split over `threads` threads; each owns its devices' sockets,
//!   an epoll set, a deadline heap and its own histograms, merged at the end.
//! - Open loop: echo requests are scheduled at fixed intended times (`rate` per second over
//!   all sessions); latency is measured from the *intended* send time, so a stalled gateway
//!   shows up as latency instead of silently lowering the offered load (no coordinated
//!   omission, as in wrk2).
//! - Large fleets spread over many loopback source addresses (127.0.0.1 .. 127.0.0.N), each
//!   UDP device on its own socket.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;
use rustix::buffer::spare_capacity;
use rustix::event::{Timespec, epoll};

use crate::protocol::Deframer;
use crate::rng::Rng;
use crate::session::{
    Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, EndReason, Transport,
};
use crate::time::Clock;
use crate::time::Timestamp;

pub mod check;
pub mod report;

pub use check::FeedChecker;
pub use report::Report;

/// What the devices do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Handshake + config + logon as fast as possible (or at `rate` per second); reports
    /// completions per second and handshake latency.
    Storm,
    /// Open loop echo at a constant aggregate `rate`.
    Steady,
    /// Sessions that only heartbeat.
    Idle,
    /// Drops a share of received datagrams and reconnects + resumes periodically; verifies that
    /// every `feed` event arrives exactly once and in order.
    Resend,
    /// Sessions arrive and leave continually.
    Churn,
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
    /// steady/resend: echo requests per second over all sessions; storm: logons started per
    /// second (0 = all at once).
    pub rate: f64,
    /// Not measured: time to connect and settle before measuring.
    pub warmup: Duration,
    /// Measured time.
    pub duration: Duration,
    /// Seed for nonces, jitter and drops.
    pub seed: u64,
    /// Generator threads.
    pub threads: usize,
    /// resend: share of received datagrams dropped inside the generator.
    pub drop_share: f64,
    /// resend: reconnect + resume this often per device; churn: session lifetime.
    pub reconnect_every: Duration,
    /// Source addresses used: 127.0.0.1 ..= 127.0.0.N.
    pub source_ips: u32,
    /// Username prefix (username = prefix + index) and password.
    pub user_prefix: String,
    /// Password.
    pub password: String,
    /// Echo body size in bytes (≥ 8).
    pub body_bytes: usize,
    /// Share of errors over attempts above which the run fails.
    pub max_error_share: f64,
    /// Print a progress line every second.
    pub progress: bool,
    /// Force one resume: device index, when (from the start of measuring) and how long its
    /// inbound traffic is blackholed before it reconnects (UDP: from a new socket) and resumes.
    pub forced_resume: Option<(usize, Duration, Duration)>,
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
            user_prefix: "dev".into(),
            password: "pw".into(),
            body_bytes: 16,
            max_error_share: 0.001,
            progress: false,
            forced_resume: None,
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

/// What one thread measured.
pub(crate) struct ThreadResult {
    pub(crate) latency: Histogram<u64>,
    pub(crate) handshake: Histogram<u64>,
    pub(crate) errors: BTreeMap<String, u64>,
    pub(crate) sent: u64,
    pub(crate) received: u64,
    pub(crate) logons: u64,
    pub(crate) feed: FeedChecker,
    pub(crate) feed_devices_exact: u64,
    pub(crate) feed_devices: u64,
    pub(crate) retransmits: u64,
    pub(crate) resend_requests: u64,
    pub(crate) forced: Option<Forced>,
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

enum Link {
    Udp(UdpSocket),
    Tcp(Option<TcpStream>, Deframer),
}

struct Dev {
    dev: Device,
    link: Link,
    index: usize,
    feed: FeedChecker,
    started: Option<Timestamp>,
    reconnect_at: Option<Timestamp>,
    scheduled: Option<Timestamp>,
    dirty: bool,
    active: bool,
    sent: u64,
    replies: u64,
    resent: u64,
    dark_until: Option<Timestamp>,
}

/// Runs a whole load test and returns its report.
pub fn run(cfg: &LoadConfig) -> Result<Report, String> {
    if cfg.body_bytes < 8 || cfg.body_bytes > 200 {
        return Err("body size must be within 8..=200 bytes".into());
    }
    let clock = Clock::new();
    let live = Arc::new(Live::default());
    let stop = Arc::new(AtomicBool::new(false));
    let total = cfg.udp_devices + cfg.tcp_devices;
    let threads = cfg.threads.clamp(1, total.max(1));
    let mut handles = Vec::new();
    for t in 0..threads {
        let mine: Vec<usize> = (0..total).filter(|i| i % threads == t).collect();
        let (cfg, live, stop) = (cfg.clone(), live.clone(), stop.clone());
        let h = std::thread::Builder::new()
            .name(format!("fleetgate-load-{t}"))
            .spawn(move || thread_main(&cfg, t, threads, &mine, clock, &live, &stop))
            .map_err(|e| e.to_string())?;
        handles.push(h);
    }
    let t0 = std::time::Instant::now();
    let total_time = cfg.warmup + cfg.duration;
    let tty = cfg.progress && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mut last_sent = 0;
    while t0.elapsed() < total_time + Duration::from_secs(3)
        && handles.iter().any(|h| !h.is_finished())
    {
        std::thread::sleep(Duration::from_millis(if tty { 1000 } else { 50 }));
        if tty {
            let sent = live.sent.load(Ordering::Relaxed);
            eprint!(
                "\r{:>5.1}s  active {:>6}  logons {:>6}  sent {:>9} ({:>7}/s)  replies {:>9}  errors {:>5}   ",
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
    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for h in handles {
        results.push(h.join().map_err(|_| "a generator thread panicked".to_string())??);
    }
    Ok(Report::merge(cfg, results))
}

fn source_ip(i: usize, n: u32) -> IpAddr {
    let k = (i as u32) % n.max(1);
    IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 0, 0, 1)) + k))
}

fn thread_main(
    cfg: &LoadConfig,
    thread: usize,
    threads: usize,
    mine: &[usize],
    clock: Clock,
    live: &Live,
    stop: &AtomicBool,
) -> Result<ThreadResult, String> {
    let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
    let mut r = ThreadResult {
        latency: hist(),
        handshake: hist(),
        errors: BTreeMap::new(),
        sent: 0,
        received: 0,
        logons: 0,
        feed: FeedChecker::default(),
        feed_devices_exact: 0,
        feed_devices: 0,
        retransmits: 0,
        resend_requests: 0,
        forced: None,
    };
    let mut forced = cfg.forced_resume.and_then(|(dev, at, dark)| {
        mine.iter()
            .position(|&i| i == dev)
            .map(|k| (k, at, dark, Forced { device: dev, ..Forced::default() }))
    });
    let mut rng =
        Rng::new(cfg.seed.wrapping_add(thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let ep =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create1: {e}"))?;
    let mut devs: Vec<Dev> = Vec::with_capacity(mine.len());
    for (k, &i) in mine.iter().enumerate() {
        let udp = i < cfg.udp_devices;
        let user = format!("{}{i}", cfg.user_prefix);
        let uid = format!("{}-{i:06}", cfg.user_prefix.to_uppercase());
        let transport = if udp { Transport::Udp } else { Transport::Tcp };
        let mut dc =
            DeviceConfig::new(transport, uid.as_bytes(), user.as_bytes(), cfg.password.as_bytes());
        dc.buffer.messages_per_session = 1024;
        let mut dev = Device::new(dc);
        dev.set_wall_offset(clock.wall_offset_ns());
        dev.set_device_config(format!("AB~001~19~000~LOADGEN~16~26~09~01~0107~0000~000~{i:012X}~640~6006~1~20260101000000~S~Linux~2~01~0~").as_bytes());
        let link = if udp {
            let sock = UdpSocket::bind(SocketAddr::new(source_ip(i, cfg.source_ips), 0))
                .map_err(|e| format!("bind UDP device {i}: {e} (open files limit?)"))?;
            sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            add_fd(&ep, &sock, k)?;
            Link::Udp(sock)
        } else {
            Link::Tcp(None, Deframer::new(64 * 1024))
        };
        devs.push(Dev {
            dev,
            link,
            index: i,
            feed: FeedChecker::default(),
            started: None,
            reconnect_at: None,
            scheduled: None,
            dirty: false,
            active: false,
            sent: 0,
            replies: 0,
            resent: 0,
            dark_until: None,
        });
    }
    let start = clock.now();
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    // Logon schedule: storm at `rate` (or at once); others ramp over the first half of warm-up.
    let connect_interval = match cfg.scenario {
        Scenario::Storm if cfg.rate > 0.0 => Duration::from_secs_f64(threads as f64 / cfg.rate),
        Scenario::Storm => Duration::ZERO,
        _ => cfg.warmup.checked_div(2 * devs.len().max(1) as u32).unwrap_or_default(),
    };
    let mut next_connect = start;
    let mut connect_idx = 0usize;
    let send_interval = if cfg.rate > 0.0
        && matches!(cfg.scenario, Scenario::Steady | Scenario::Resend | Scenario::Churn)
    {
        Some(Duration::from_secs_f64(threads as f64 / cfg.rate))
    } else {
        None
    };
    let mut next_send = warm_end.min(start + cfg.warmup);
    let mut rr = 0usize;
    let mut heap: std::collections::BinaryHeap<std::cmp::Reverse<(Timestamp, usize)>> =
        std::collections::BinaryHeap::new();
    let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
    let mut buf = vec![0u8; 64 * 1024];
    let mut body = vec![0u8; cfg.body_bytes];
    let mut measuring = false;
    let mut stopping_at: Option<Timestamp> = None;
    loop {
        let now = clock.now();
        if !measuring && now >= warm_end {
            measuring = true;
            // Logons during warm-up still count (the fleet connects then); echo traffic and
            // errors are measured from here on.
            r.latency.reset();
            r.sent = 0;
            r.received = 0;
            r.errors.clear();
        }
        if stopping_at.is_none() && (now >= end || stop.load(Ordering::Relaxed)) {
            stopping_at = Some(now);
            for d in devs.iter_mut() {
                d.reconnect_at = None;
                if d.dev.state() == DeviceState::Active {
                    d.dev.logout(now);
                    d.dirty = true;
                }
            }
        }
        if let Some(s) = stopping_at {
            let all_done = devs
                .iter()
                .all(|d| !matches!(d.dev.state(), DeviceState::Active | DeviceState::LoggingOut));
            if all_done || now.saturating_since(s) > Duration::from_secs(1) {
                break;
            }
        }
        // The forced resume: go dark, then reconnect and resume.
        if let Some((k, at, dark, f)) = forced.as_mut() {
            if stopping_at.is_none()
                && devs[*k].dark_until.is_none()
                && !f.resumed
                && now >= warm_end + *at
            {
                devs[*k].dark_until = Some(now + *dark);
                f.owed_at_blackout = devs[*k].sent - devs[*k].replies;
            }
            if let Some(t) = devs[*k].dark_until.filter(|&t| now >= t) {
                devs[*k].dark_until = None;
                devs[*k].resent = 0;
                f.resumed = true;
                if let Link::Udp(old) = &devs[*k].link {
                    // Roam: a new socket, hence a new source address and port.
                    let ip =
                        old.local_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
                    let sock =
                        UdpSocket::bind(SocketAddr::new(ip, 0)).map_err(|e| e.to_string())?;
                    sock.set_nonblocking(true).map_err(|e| e.to_string())?;
                    add_fd(&ep, &sock, *k)?;
                    devs[*k].link = Link::Udp(sock);
                }
                let _ = t;
                connect(&mut devs[*k], cfg, &ep, *k, now, &mut rng, false)?;
            }
        }
        // Connect on schedule.
        while stopping_at.is_none() && connect_idx < devs.len() && now >= next_connect {
            let k = connect_idx;
            connect_idx += 1;
            next_connect = next_connect + connect_interval;
            connect(&mut devs[k], cfg, &ep, k, now, &mut rng, true)?;
        }
        // Reconnects (resend, churn). Indexed: `connect` needs the index as the epoll token.
        #[allow(clippy::needless_range_loop)]
        for k in 0..devs.len() {
            if stopping_at.is_none() && devs[k].reconnect_at.is_some_and(|t| t <= now) {
                devs[k].reconnect_at = None;
                if cfg.scenario == Scenario::Churn && devs[k].dev.state() == DeviceState::Active {
                    // Leave; the end of the session schedules the next arrival.
                    devs[k].dev.logout(now);
                    devs[k].dirty = true;
                } else {
                    let reset = cfg.scenario == Scenario::Churn;
                    connect(&mut devs[k], cfg, &ep, k, now, &mut rng, reset)?;
                }
            }
        }
        // Open-loop sends at their intended times.
        if let (Some(iv), None) = (send_interval, stopping_at) {
            let mut budget = devs.len().max(1) * 4;
            while next_send <= now && budget > 0 {
                budget -= 1;
                let intended = next_send;
                next_send = next_send + iv;
                let mut sent = false;
                for _ in 0..devs.len() {
                    rr = (rr + 1) % devs.len().max(1);
                    if devs[rr].dev.state() == DeviceState::Active {
                        body[..8].copy_from_slice(&intended.as_nanos().to_le_bytes());
                        match devs[rr].dev.send_app(now, 150, &body, true) {
                            Ok(_) => {
                                r.sent += 1;
                                devs[rr].sent += 1;
                                live.sent.fetch_add(1, Ordering::Relaxed);
                                devs[rr].dirty = true;
                                sent = true;
                            }
                            Err(e) => {
                                *r.errors
                                    .entry(format!("send_{e:?}").to_lowercase())
                                    .or_default() += 1;
                                live.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        break;
                    }
                }
                if !sent && devs.iter().all(|d| d.dev.state() != DeviceState::Active) {
                    if measuring {
                        *r.errors.entry("no_active_session".into()).or_default() += 1;
                    }
                    break;
                }
            }
        }
        // Timers.
        while let Some(&std::cmp::Reverse((t, k))) = heap.peek() {
            if t > now {
                break;
            }
            heap.pop();
            if devs[k].scheduled != Some(t) {
                continue;
            }
            devs[k].scheduled = None;
            handle_events(
                &mut devs[k],
                |d| d.handle_timeout(now),
                now,
                cfg,
                &mut r,
                live,
                measuring,
            );
            devs[k].dirty = true;
        }
        // Output.
        for (k, d) in devs.iter_mut().enumerate() {
            if !d.dirty {
                continue;
            }
            d.dirty = false;
            flush_dev(d, cfg, &mut buf, now, &mut r);
            if let Some(t) = d.dev.poll_timeout() {
                if d.scheduled.is_none_or(|s| t < s) {
                    d.scheduled = Some(t);
                    heap.push(std::cmp::Reverse((t, k)));
                }
            }
        }
        // Input.
        let mut wait = Duration::from_millis(1);
        if let Some(&std::cmp::Reverse((t, _))) = heap.peek() {
            wait = wait.min(t.saturating_since(now));
        }
        if send_interval.is_some() && stopping_at.is_none() {
            wait = wait.min(next_send.saturating_since(now));
        }
        // Microsecond timeouts (epoll_pwait2): a millisecond-granular wait would send late by up
        // to 1 ms and show up as latency from the intended send time.
        let ts =
            Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: i64::from(wait.subsec_nanos()) };
        events.clear();
        // EINTR and the like: nothing ready this time round.
        let _ = epoll::wait(&ep, spare_capacity(&mut events), Some(&ts));
        for e in &events {
            let k = e.data.u64() as usize;
            let now = clock.now();
            let mut pass = Pass { cfg, r: &mut r, live, measuring, rng: &mut rng };
            read_dev(k, &mut devs, &mut buf, now, &mut pass);
        }
    }
    if let Some((k, _, _, mut f)) = forced {
        f.resent_received = devs[k].resent;
        f.complete = devs[k].sent == devs[k].replies;
        f.feed = (devs[k].feed.received, devs[k].feed.is_exact());
        r.forced = Some(f);
    }
    for d in &devs {
        let s = d.dev.stats();
        r.retransmits += s.retransmits;
        r.resend_requests += s.resend_requests;
        if cfg.scenario == Scenario::Resend && d.feed.received > 0 {
            r.feed_devices += 1;
            if d.feed.is_exact() {
                r.feed_devices_exact += 1;
            }
            r.feed.received += d.feed.received;
            r.feed.missing += d.feed.missing;
            r.feed.duplicates += d.feed.duplicates;
        }
    }
    Ok(r)
}

fn add_fd(ep: &OwnedFd, fd: impl AsFd, token: usize) -> Result<(), String> {
    epoll::add(ep, fd, epoll::EventData::new_u64(token as u64), epoll::EventFlags::IN)
        .map_err(|e| format!("epoll_ctl: {e}"))
}

fn connect(
    d: &mut Dev,
    cfg: &LoadConfig,
    ep: &OwnedFd,
    k: usize,
    now: Timestamp,
    rng: &mut Rng,
    reset: bool,
) -> Result<(), String> {
    d.started = Some(now);
    if reset {
        d.feed.restart();
    }
    if let Link::Tcp(stream, deframer) = &mut d.link {
        // A new connection each time (the old one, if any, closes).
        let s = TcpStream::connect_timeout(&cfg.tcp, Duration::from_secs(2))
            .map_err(|e| format!("connect {}: {e}", cfg.tcp))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _ = s.set_nodelay(true);
        add_fd(ep, &s, k)?;
        *stream = Some(s);
        deframer.reset();
    }
    d.dev.connect(now, rng.next_u64(), reset);
    d.dirty = true;
    Ok(())
}

fn flush_dev(d: &mut Dev, cfg: &LoadConfig, buf: &mut [u8], now: Timestamp, r: &mut ThreadResult) {
    while let Some(t) = d.dev.poll_transmit(now, buf) {
        let ok = match (&mut d.link, t.dest) {
            (Link::Udp(s), DeviceDest::Handshake) => {
                s.send_to(&buf[..t.len], cfg.handshake).is_ok()
            }
            (Link::Udp(s), DeviceDest::SessionPort(p)) => {
                s.send_to(&buf[..t.len], SocketAddr::new(cfg.handshake.ip(), p)).is_ok()
            }
            (Link::Tcp(Some(s), _), DeviceDest::Stream) => s.write_all(&buf[..t.len]).is_ok(),
            _ => false,
        };
        if !ok {
            *r.errors.entry("send_failed".into()).or_default() += 1;
        }
    }
}

/// What reading a device's input needs besides the device, for one pass.
struct Pass<'a> {
    cfg: &'a LoadConfig,
    r: &'a mut ThreadResult,
    live: &'a Live,
    measuring: bool,
    rng: &'a mut Rng,
}

fn read_dev(k: usize, devs: &mut [Dev], buf: &mut [u8], now: Timestamp, pass: &mut Pass<'_>) {
    let Pass { cfg, r, live, measuring, rng } = pass;
    let (cfg, live, measuring) = (*cfg, *live, *measuring);
    let d = &mut devs[k];
    for _ in 0..64 {
        match &mut d.link {
            Link::Udp(s) => {
                let Ok(n) = s.recv(buf) else { break };
                if cfg.scenario == Scenario::Resend && rng.chance(cfg.drop_share) {
                    continue;
                }
                if d.dark_until.is_some() {
                    continue;
                }
                let data = &buf[..n];
                handle_events(
                    d,
                    |dev| dev.handle_datagram(now, data),
                    now,
                    cfg,
                    r,
                    live,
                    measuring,
                );
            }
            Link::Tcp(stream, deframer) => {
                let Some(s) = stream.as_mut() else { break };
                match s.read(deframer.spare()) {
                    Ok(0) => {
                        *stream = None;
                        d.dev.transport_lost();
                        if d.active {
                            d.active = false;
                            live.active.fetch_sub(1, Ordering::Relaxed);
                        }
                        break;
                    }
                    Ok(n) => {
                        deframer.filled(n);
                        let mut frames: Vec<Vec<u8>> = Vec::new();
                        while let Ok(Some(f)) = deframer.next_frame() {
                            frames.push(f.to_vec());
                        }
                        for f in frames {
                            handle_events(
                                d,
                                |dev| dev.handle_frame(now, &f),
                                now,
                                cfg,
                                r,
                                live,
                                measuring,
                            );
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    }
    d.dirty = true;
}

fn handle_events(
    d: &mut Dev,
    f: impl FnOnce(&mut Device),
    now: Timestamp,
    cfg: &LoadConfig,
    r: &mut ThreadResult,
    live: &Live,
    measuring: bool,
) {
    let mut ended: Option<(EndReason, String)> = None;
    let mut logged_on = false;
    let (mut d_replies, mut d_resent) = (0u64, 0u64);
    let feed = &mut d.feed;
    f(&mut d.dev);
    while let Some(e) = d.dev.poll_event() {
        match e {
            DeviceEvent::App { type_id: 250, body, resent, .. } if body.len() >= 8 => {
                d_replies += 1;
                d_resent += u64::from(resent);
                let intended = u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8]));
                let lat = now.as_nanos().saturating_sub(intended).max(1);
                if measuring {
                    let _ = r.latency.record(lat.min(60_000_000_000));
                    r.received += 1;
                }
                live.received.fetch_add(1, Ordering::Relaxed);
            }
            DeviceEvent::App { type_id: 300, body, resent, .. } if body.len() >= 8 => {
                d_resent += u64::from(resent);
                feed.observe(u64::from_le_bytes(body[..8].try_into().unwrap_or([0; 8])));
            }
            DeviceEvent::LoggedOn { .. } => logged_on = true,
            DeviceEvent::StreamReset { .. } => feed.restart(),
            DeviceEvent::Ended { reason, text } => {
                ended = Some((reason, String::from_utf8_lossy(text).into_owned()))
            }
            _ => {}
        }
    }
    d.replies += d_replies;
    d.resent += d_resent;
    if logged_on {
        if !d.active {
            d.active = true;
            live.active.fetch_add(1, Ordering::Relaxed);
        }
        live.logons.fetch_add(1, Ordering::Relaxed);
        if let Some(s) = d.started.take() {
            let _ = r.handshake.record(now.saturating_since(s).as_nanos().max(1) as u64);
            r.logons += 1;
        }
        if matches!(cfg.scenario, Scenario::Resend | Scenario::Churn) {
            let jitter = cfg.reconnect_every.mul_f64(0.5 + (d.index % 97) as f64 / 97.0);
            d.reconnect_at = Some(now + jitter);
        }
    }
    if let Some((reason, text)) = ended {
        if d.active {
            d.active = false;
            live.active.fetch_sub(1, Ordering::Relaxed);
        }
        let expected = text == "logout";
        if !expected {
            let kind = match reason {
                EndReason::LoggedOut => format!("logged_out: {text}"),
                other => format!("{other:?}").to_lowercase(),
            };
            *r.errors.entry(kind).or_default() += 1;
            live.errors.fetch_add(1, Ordering::Relaxed);
        }
        if cfg.scenario == Scenario::Churn && d.reconnect_at.is_none() {
            d.reconnect_at = Some(now + Duration::from_millis(100));
        }
    }
}
