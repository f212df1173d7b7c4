//! `fleetgate load host`: N UDP devices bridged to a host through the gateway (DESIGN.md §1.6),
//! typing keystrokes at a constant aggregate rate (open loop) to a host that echoes them, and
//! the same schedule sent straight to that host over TCP for comparison, in the same run.
//!
//! - Each keystroke is 8 bytes: the device's own keystroke counter (u64, little-endian). The
//!   echo each device sees must be exactly the concatenation of what it typed: no loss, no
//!   duplication, in order (`stream_errors` otherwise).
//! - Latency is from the keystroke's intended time (its slot in the schedule), to the echo's
//!   arrival: a keystroke held back (a device roaming) counts its wait.
//! - Roams: every `roam_every`, the next device moves to a new socket (a new source port),
//!   handshakes again and resumes; the host connection must survive (the echo stream goes on,
//!   and the resumed session has the same id).
//! - The host: `--echo-host ADDR` makes the generator serve a byte echo there itself (the
//!   gateway's `[[hosts]]` entry names it); otherwise `--host ADDR` is an echo host already
//!   running.
//!
//! One thread drives everything (device state machines over non-blocking sockets): meant for
//! tens to a few hundred devices, where it measures the bridge, not the generator.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::protocol::{HOST_DATA_TO_HOST, HostMessage};
use crate::session::{Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, Transport};
use crate::time::{Clock, Timestamp};

/// What to run.
#[derive(Clone, Debug)]
pub struct HostLoadConfig {
    /// The gateway's UDP handshake address.
    pub handshake: SocketAddr,
    /// The echo host (served by the generator with `serve_echo`).
    pub host: SocketAddr,
    /// Serve a byte echo at `host` (in this process).
    pub serve_echo: bool,
    /// Devices (and direct connections).
    pub devices: usize,
    /// Keystrokes per second over all devices.
    pub rate: f64,
    /// Measured seconds, each phase.
    pub duration: Duration,
    /// One device roams this often (zero: never).
    pub roam_every: Duration,
    /// The device config string (its group must name the host).
    pub device_config: String,
    /// deviceUid prefix.
    pub uid_prefix: String,
    /// Username and password.
    pub user: String,
    /// Password.
    pub password: String,
}

/// What a run measured.
#[derive(Debug)]
pub struct HostLoadReport {
    /// Keystroke to echo through the gateway and host (ns).
    pub via_gateway: Histogram<u64>,
    /// Keystroke to echo straight to the host (ns).
    pub direct: Histogram<u64>,
    /// Keystrokes typed through the gateway.
    pub typed: u64,
    /// Echoes received through the gateway.
    pub echoed: u64,
    /// Keystrokes typed straight to the host.
    pub typed_direct: u64,
    /// Echoes received straight from the host.
    pub echoed_direct: u64,
    /// Roams done, and roams that resumed the same session.
    pub roams: u64,
    /// Roams whose resume got the same session id.
    pub resumed: u64,
    /// Echo streams that were not exactly what was typed (loss, duplication, order).
    pub stream_errors: u64,
    /// Devices not logged on at the end, or whose session ended.
    pub lost_devices: u64,
}

impl HostLoadReport {
    /// True if anything was lost, duplicated, out of order, or not answered.
    pub fn failed(&self) -> bool {
        self.stream_errors > 0
            || self.lost_devices > 0
            || self.echoed < self.typed
            || self.echoed_direct < self.typed_direct
            || self.resumed < self.roams
    }

    /// A table for people.
    pub fn table(&self) -> String {
        let us = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
        let mut s = String::new();
        s += "path            keystrokes  echoed     p50 µs    p99 µs    max µs\n";
        for (name, h, t, e) in [
            ("via gateway", &self.via_gateway, self.typed, self.echoed),
            ("direct", &self.direct, self.typed_direct, self.echoed_direct),
        ] {
            s += &format!(
                "{name:<15} {t:>10}  {e:>6} {:>10.1} {:>9.1} {:>9.1}\n",
                us(h, 0.5),
                us(h, 0.99),
                h.max() as f64 / 1000.0
            );
        }
        let ratio = |q| us(&self.via_gateway, q) / us(&self.direct, q).max(0.001);
        s += &format!(
            "via/direct: p50 {:.2}x, p99 {:.2}x; roams {} (resumed {}), stream errors {}, lost devices {}\n",
            ratio(0.5),
            ratio(0.99),
            self.roams,
            self.resumed,
            self.stream_errors,
            self.lost_devices
        );
        s += if self.failed() { "FAILED\n" } else { "ok\n" };
        s
    }

    /// The figures as JSON.
    pub fn json(&self) -> String {
        let h = |h: &Histogram<u64>| {
            serde_json::json!({
                "count": h.len(),
                "p50_ns": h.value_at_quantile(0.5),
                "p99_ns": h.value_at_quantile(0.99),
                "max_ns": h.max(),
            })
        };
        serde_json::json!({
            "scenario": "host",
            "via_gateway": h(&self.via_gateway),
            "direct": h(&self.direct),
            "typed": self.typed,
            "echoed": self.echoed,
            "typed_direct": self.typed_direct,
            "echoed_direct": self.echoed_direct,
            "roams": self.roams,
            "resumed": self.resumed,
            "stream_errors": self.stream_errors,
            "lost_devices": self.lost_devices,
            "failed": self.failed(),
        })
        .to_string()
    }
}

/// A byte echo host on `addr`, until `stop`.
fn serve_echo(addr: SocketAddr, stop: Arc<AtomicBool>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr).map_err(|e| format!("echo host on {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    listener.set_nonblocking(true).map_err(|e| e.to_string())?;
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_nodelay(true);
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 4096];
                        while let Ok(n @ 1..) = s.read(&mut buf) {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    Ok(local)
}

/// One path's bookkeeping for a device or connection: intended times of keystrokes not yet
/// echoed, and the echo bytes not yet whole.
#[derive(Default)]
struct Track {
    typed: u64,
    echoed: u64,
    intended: VecDeque<Timestamp>,
    rx: Vec<u8>,
    errors: u64,
}

impl Track {
    fn keystroke(&mut self, at: Timestamp) -> [u8; 8] {
        let k = self.typed;
        self.typed += 1;
        self.intended.push_back(at);
        k.to_le_bytes()
    }

    fn echo(&mut self, bytes: &[u8], now: Timestamp, h: &mut Histogram<u64>) {
        self.rx.extend_from_slice(bytes);
        let whole = self.rx.len() / 8 * 8;
        for c in self.rx[..whole].chunks_exact(8) {
            let k = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            match self.intended.pop_front() {
                Some(at) if k == self.echoed => {
                    let _ = h.record(now.saturating_since(at).as_nanos().max(1) as u64);
                    self.echoed += 1;
                }
                _ => self.errors += 1,
            }
        }
        self.rx.drain(..whole);
    }
}

struct Dev {
    dev: Device,
    sock: UdpSocket,
    track: Track,
    /// Keystrokes due while not logged on, sent once it is.
    held: VecDeque<[u8; 8]>,
    session_id: u64,
    roaming: bool,
    ended: bool,
}

/// A socket on the `d`-th loopback address (127.0.1.1 upwards: the acceptor limits
/// ConnectionRequests per source address, as for a real fleet).
fn udp_socket(d: usize) -> Result<UdpSocket, String> {
    let ip = std::net::Ipv4Addr::new(127, 0, 1 + (d / 250) as u8, 1 + (d % 250) as u8);
    let s = UdpSocket::bind((ip, 0)).map_err(|e| format!("bind {ip}: {e}"))?;
    s.set_nonblocking(true).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Runs the direct phase, then the gateway phase; see the module docs.
pub fn run(cfg: &HostLoadConfig) -> Result<HostLoadReport, String> {
    let stop = Arc::new(AtomicBool::new(false));
    let host = if cfg.serve_echo { serve_echo(cfg.host, stop.clone())? } else { cfg.host };
    let hist =
        || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).map_err(|e| e.to_string());
    let clock = Clock::new();
    let n = cfg.devices.max(1);
    let gap = Duration::from_secs_f64(1.0 / cfg.rate.max(1.0));
    let mut report = HostLoadReport {
        via_gateway: hist()?,
        direct: hist()?,
        typed: 0,
        echoed: 0,
        typed_direct: 0,
        echoed_direct: 0,
        roams: 0,
        resumed: 0,
        stream_errors: 0,
        lost_devices: 0,
    };

    // Direct: one TCP connection per device, the same schedule.
    let mut conns = Vec::with_capacity(n);
    for _ in 0..n {
        let s = TcpStream::connect(host).map_err(|e| format!("direct to {host}: {e}"))?;
        let _ = s.set_nodelay(true);
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        conns.push((s, Track::default()));
    }
    let t0 = clock.now();
    let end = t0 + cfg.duration;
    let mut next = t0;
    let mut i = 0usize;
    let mut buf = [0u8; 4096];
    let drain_until = end + Duration::from_secs(2);
    loop {
        let now = clock.now();
        while next <= now && next < end {
            let (s, t) = &mut conns[i % n];
            let k = t.keystroke(next);
            let _ = s.write_all(&k);
            i += 1;
            next = t0 + gap * i as u32;
        }
        for (s, t) in &mut conns {
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(k) => t.echo(&buf[..k], clock.now(), &mut report.direct),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(_) => break,
                }
            }
        }
        let done = conns.iter().all(|(_, t)| t.echoed + t.errors >= t.typed);
        if (now >= end && done) || now >= drain_until {
            break;
        }
        std::thread::yield_now();
    }
    for (_, t) in &conns {
        report.typed_direct += t.typed;
        report.echoed_direct += t.echoed;
        report.stream_errors += t.errors;
    }
    drop(conns);

    // Through the gateway: log the fleet on first (not measured).
    let mut devs = Vec::with_capacity(n);
    for d in 0..n {
        let uid = format!("{}{d}", cfg.uid_prefix);
        let mut dc = DeviceConfig::new(
            Transport::Udp,
            uid.as_bytes(),
            cfg.user.as_bytes(),
            cfg.password.as_bytes(),
        );
        dc.buffer.messages_per_session = 1024;
        let mut dev = Device::new(dc);
        dev.set_device_config(cfg.device_config.as_bytes());
        dev.connect(clock.now(), 1 + d as u64, true);
        devs.push(Dev {
            dev,
            sock: udp_socket(d)?,
            track: Track::default(),
            held: VecDeque::new(),
            session_id: 0,
            roaming: false,
            ended: false,
        });
    }
    let logon_by = clock.now() + Duration::from_secs(15);
    while devs.iter().any(|d| d.dev.state() != DeviceState::Active) {
        if clock.now() > logon_by {
            return Err(
                "devices did not log on within 15 s (does their group name the host?)".into()
            );
        }
        for (k, d) in devs.iter_mut().enumerate() {
            pump(d, &clock, cfg.handshake, &mut report.via_gateway, &mut buf);
            if matches!(d.dev.state(), DeviceState::Ended(_)) {
                // Refused (rate limited) or timed out: try again.
                d.ended = false;
                d.dev.connect(clock.now(), 10_000 + k as u64, true);
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    for d in &mut devs {
        d.session_id = d.dev.session_id();
    }
    let t0 = clock.now();
    let end = t0 + cfg.duration;
    let drain_until = end + Duration::from_secs(5);
    let mut next = t0;
    let mut i = 0usize;
    let mut next_roam = if cfg.roam_every.is_zero() { None } else { Some(t0 + cfg.roam_every) };
    let mut roam_i = 0usize;
    let mut nonce = 1_000_000u64;
    loop {
        let now = clock.now();
        while next <= now && next < end {
            let d = &mut devs[i % n];
            let k = d.track.keystroke(next);
            d.held.push_back(k);
            i += 1;
            next = t0 + gap * i as u32;
        }
        if let Some(r) = next_roam.filter(|&r| r <= now && now < end) {
            let d = &mut devs[roam_i % n];
            roam_i += 1;
            if d.dev.state() == DeviceState::Active {
                d.sock = udp_socket(roam_i + n)?;
                nonce += 1;
                d.dev.connect(now, nonce, false);
                d.roaming = true;
                report.roams += 1;
            }
            next_roam = Some(r + cfg.roam_every);
        }
        for d in &mut devs {
            if d.dev.state() == DeviceState::Active {
                while let Some(k) = d.held.front() {
                    if d.dev.send_app(now, HOST_DATA_TO_HOST, k, false).is_err() {
                        break;
                    }
                    d.held.pop_front();
                }
            }
            pump(d, &clock, cfg.handshake, &mut report.via_gateway, &mut buf);
            if d.roaming && d.dev.state() == DeviceState::Active {
                d.roaming = false;
                if d.dev.session_id() == d.session_id {
                    report.resumed += 1;
                }
            }
        }
        let done = devs.iter().all(|d| d.track.echoed + d.track.errors >= d.track.typed);
        if (now >= end && done) || now >= drain_until {
            break;
        }
        std::thread::yield_now();
    }
    for d in &mut devs {
        report.typed += d.track.typed;
        report.echoed += d.track.echoed;
        report.stream_errors += d.track.errors;
        if d.ended || d.dev.state() != DeviceState::Active {
            report.lost_devices += 1;
        }
        d.dev.logout(clock.now());
        pump(d, &clock, cfg.handshake, &mut report.via_gateway, &mut buf);
    }
    stop.store(true, Ordering::Relaxed);
    Ok(report)
}

/// One pass over a device: timers, output, every datagram waiting, its events.
fn pump(d: &mut Dev, clock: &Clock, handshake: SocketAddr, h: &mut Histogram<u64>, buf: &mut [u8]) {
    let now = clock.now();
    d.dev.handle_timeout(now);
    events(d, now, h);
    while let Some(t) = d.dev.poll_transmit(now, buf) {
        let to = match t.dest {
            DeviceDest::Handshake => handshake,
            DeviceDest::SessionPort(p) => SocketAddr::new(handshake.ip(), p),
            DeviceDest::Stream => continue,
        };
        let _ = d.sock.send_to(&buf[..t.len], to);
    }
    while let Ok((k, _)) = d.sock.recv_from(buf) {
        let now = clock.now();
        d.dev.handle_datagram(now, &buf[..k]);
        events(d, now, h);
    }
}

fn events(d: &mut Dev, now: Timestamp, h: &mut Histogram<u64>) {
    while let Some(e) = d.dev.poll_event() {
        match (e.host(), e) {
            (Some(HostMessage::FromHost(bytes)), _) => d.track.echo(bytes, now, h),
            (_, DeviceEvent::Ended { .. }) if !d.roaming => d.ended = true,
            _ => {}
        }
    }
}
