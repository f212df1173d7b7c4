//! `fleetgate load resend-burst`: how fast the gateway serves a large ResendRequest over the
//! wire, measured at the device (issue 12, deliverable 5).
//!
//! Per repeat and per transport (one UDP device, one TCP client), on a fresh session:
//!
//! 1. Log on (handshake first for UDP), then send `messages` echo requests with at most
//!    `window` in flight and receive every reply: the gateway's **live send rate** (replies per
//!    second, from the first request to the last reply).
//! 2. Once the gateway has acknowledged everything, write one ResendRequest(from = first reply,
//!    to = last reply) and read the stream that answers it. Timed at the device from just
//!    before the write: the first resent message, the last, and the resent messages per second.
//! 3. Every message of the answer is checked against DESIGN.md §2 rule 7: in sequence order
//!    with nothing missing, each with the resend flag; each echo reply equal to the original
//!    (type and body); each non-journaled run (a gateway Heartbeat between the replies) one
//!    GapFill carrying the run's first number and `newSeqNum` = the number after it. Anything
//!    else (a LoggedOut such as "resend window exceeded", a Reject, a live message before the
//!    resend ends, a time-out) is an error of that run, never a silent pass.
//!
//! The run is one thread of blocking-free sockets polled in a loop (the device side spins, so
//! the first-message time is not a wake-up time). The gateway needs a journal of at least
//! `messages` per session (`--set journal.messages_per_session=16384`). The report gives each
//! run and the medians per transport; it fails if any run had an error.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use crate::protocol::{
    Body, Datagram, Deframer, FLAG_RESEND, HEADER_LEN, Header, Message, write_prefix,
};
use crate::session::{Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, Transport};
use crate::time::Clock;

/// Echo request type (the `echo` app answers with type + 100).
const REQUEST_TYPE: u16 = 100;
/// Echo reply type.
const REPLY_TYPE: u16 = 200;
/// The UDP device's receive buffer asked for (bytes).
const UDP_RCVBUF: usize = 16 << 20;

/// Settings of a resend-burst run.
#[derive(Clone, Debug)]
pub struct BurstConfig {
    /// Gateway UDP handshake address.
    pub handshake: SocketAddr,
    /// Gateway TCP address.
    pub tcp: SocketAddr,
    /// Echo requests per repeat (the size of the resend), per transport.
    pub messages: usize,
    /// Echo requests in flight at most.
    pub window: usize,
    /// Repeats per transport (each on a fresh session).
    pub repeat: usize,
    /// Run the UDP device.
    pub udp: bool,
    /// Run the TCP client.
    pub tcp_client: bool,
    /// Echo body bytes (≥ 8).
    pub body_bytes: usize,
    /// Username prefix and password.
    pub user_prefix: String,
    /// Password.
    pub password: String,
    /// Seed for nonces and device ids (runs with different seeds never share a session).
    pub seed: u64,
    /// Bound on each phase (logon, echo, resend) of a run.
    pub phase_timeout: Duration,
}

impl Default for BurstConfig {
    fn default() -> Self {
        Self {
            handshake: SocketAddr::from(([127, 0, 0, 1], 3006)),
            tcp: SocketAddr::from(([127, 0, 0, 1], 4210)),
            messages: 10_000,
            window: 256,
            repeat: 3,
            udp: true,
            tcp_client: true,
            body_bytes: 16,
            user_prefix: "burst".into(),
            password: "pw".into(),
            seed: 1,
            phase_timeout: Duration::from_secs(20),
        }
    }
}

/// One repeat on one transport.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BurstRun {
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// Repeat index.
    pub repeat: usize,
    /// Echo replies received live.
    pub replies: usize,
    /// Live replies per second (first request to last reply).
    pub live_per_s: f64,
    /// ResendRequest range.
    pub from: i64,
    /// ResendRequest range end.
    pub to: i64,
    /// Application messages resent (checked equal to the originals).
    pub resent: usize,
    /// GapFills in the answer.
    pub gap_fills: usize,
    /// Datagrams (UDP) or reads (TCP) that carried the answer.
    pub reads: usize,
    /// The UDP socket's receive buffer as the kernel granted it (a smaller
    /// `net.core.rmem_max` than the burst needs loses datagrams: an error of the run).
    pub udp_rcvbuf_bytes: usize,
    /// From writing the ResendRequest to the first resent message (µs).
    pub first_us: f64,
    /// ... to the last one (µs).
    pub last_us: f64,
    /// Resent messages per second (resent / last).
    pub resent_per_s: f64,
    /// Resent rate over live rate.
    pub resend_vs_live: f64,
    /// What went wrong (`None`: the run checked out).
    pub error: Option<String>,
}

/// Medians over one transport's runs that checked out.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BurstSummary {
    /// "udp" or "tcp".
    pub transport: &'static str,
    /// Runs that checked out.
    pub ok_runs: usize,
    /// Runs with an error.
    pub failed_runs: usize,
    /// Median live replies per second.
    pub median_live_per_s: f64,
    /// Median resent messages per second.
    pub median_resent_per_s: f64,
    /// Median time to the first resent message (µs).
    pub median_first_us: f64,
    /// Median time to the last resent message (µs).
    pub median_last_us: f64,
    /// Median resent / live ratio.
    pub median_resend_vs_live: f64,
}

/// The result of a resend-burst run.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BurstReport {
    /// Always "resend-burst".
    pub scenario: &'static str,
    /// Messages per repeat.
    pub messages: usize,
    /// Window.
    pub window: usize,
    /// Every run.
    pub runs: Vec<BurstRun>,
    /// Medians per transport.
    pub summary: Vec<BurstSummary>,
    /// Runs with an error, over all transports.
    pub errors_total: usize,
}

impl BurstReport {
    /// True if any run had an error (or nothing ran).
    pub fn failed(&self) -> bool {
        self.errors_total > 0 || self.runs.is_empty()
    }

    /// One JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A human-readable table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "resend-burst: {} messages per repeat, window {}\n\
             {:<4} {:>3} {:>12} {:>12} {:>10} {:>10} {:>8} {:>6}  error\n",
            self.messages,
            self.window,
            "tr",
            "rep",
            "live/s",
            "resent/s",
            "first µs",
            "last µs",
            "ratio",
            "gaps"
        );
        for r in &self.runs {
            s += &format!(
                "{:<4} {:>3} {:>12.0} {:>12.0} {:>10.0} {:>10.0} {:>8.2} {:>6}  {}\n",
                r.transport,
                r.repeat,
                r.live_per_s,
                r.resent_per_s,
                r.first_us,
                r.last_us,
                r.resend_vs_live,
                r.gap_fills,
                r.error.as_deref().unwrap_or("-")
            );
        }
        for m in &self.summary {
            s += &format!(
                "median {}: live {:.0}/s, resent {:.0}/s ({:.2}x live), first {:.0} µs, last {:.0} µs ({} ok, {} failed)\n",
                m.transport,
                m.median_live_per_s,
                m.median_resent_per_s,
                m.median_resend_vs_live,
                m.median_first_us,
                m.median_last_us,
                m.ok_runs,
                m.failed_runs
            );
        }
        s
    }
}

/// Runs every repeat on every transport asked for.
pub fn run(cfg: &BurstConfig) -> Result<BurstReport, String> {
    if cfg.messages == 0 || cfg.window == 0 || cfg.body_bytes < 8 {
        return Err("resend-burst needs --messages ≥ 1, --window ≥ 1 and --body-bytes ≥ 8".into());
    }
    let mut report = BurstReport {
        scenario: "resend-burst",
        messages: cfg.messages,
        window: cfg.window,
        ..BurstReport::default()
    };
    let mut transports = Vec::new();
    if cfg.udp {
        transports.push(Transport::Udp);
    }
    if cfg.tcp_client {
        transports.push(Transport::Tcp);
    }
    for &t in &transports {
        for rep in 0..cfg.repeat.max(1) {
            let mut r = BurstRun { transport: name(t), repeat: rep, ..BurstRun::default() };
            if let Err(e) = one_run(cfg, t, rep, &mut r) {
                r.error = Some(e);
            }
            report.runs.push(r);
        }
        let all: Vec<&BurstRun> = report.runs.iter().filter(|r| r.transport == name(t)).collect();
        let ok: Vec<&&BurstRun> = all.iter().filter(|r| r.error.is_none()).collect();
        let med = |f: fn(&BurstRun) -> f64| median(ok.iter().map(|r| f(r)).collect());
        report.summary.push(BurstSummary {
            transport: name(t),
            ok_runs: ok.len(),
            failed_runs: all.len() - ok.len(),
            median_live_per_s: med(|r| r.live_per_s),
            median_resent_per_s: med(|r| r.resent_per_s),
            median_first_us: med(|r| r.first_us),
            median_last_us: med(|r| r.last_us),
            median_resend_vs_live: med(|r| r.resend_vs_live),
        });
    }
    report.errors_total = report.runs.iter().filter(|r| r.error.is_some()).count();
    Ok(report)
}

fn name(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// The device's socket: a UDP socket (handshake and session port) or a TCP stream.
enum Link {
    Udp { sock: UdpSocket, handshake: SocketAddr, session_port: Option<u16> },
    Tcp { stream: TcpStream, deframer: Deframer },
}

/// A device and its socket.
struct Side {
    dev: Device,
    link: Link,
    clock: Clock,
    buf: Vec<u8>,
    /// Echo replies seen live: (seq, body).
    replies: Vec<(i64, Vec<u8>)>,
    ended: Option<String>,
}

impl Side {
    /// One pass: timers, output, every input waiting, events.
    fn pump(&mut self) -> Result<(), String> {
        let now = self.clock.now();
        self.dev.handle_timeout(now);
        self.events();
        while let Some(t) = self.dev.poll_transmit(now, &mut self.buf) {
            let bytes = &self.buf[..t.len];
            match (&mut self.link, t.dest) {
                (Link::Udp { sock, handshake, session_port }, DeviceDest::Handshake) => {
                    *session_port = None;
                    let _ = sock.send_to(bytes, *handshake);
                }
                (Link::Udp { sock, handshake, session_port }, DeviceDest::SessionPort(p)) => {
                    *session_port = Some(p);
                    let _ = sock.send_to(bytes, SocketAddr::new(handshake.ip(), p));
                }
                (Link::Tcp { stream, .. }, DeviceDest::Stream) => {
                    stream.write_all(bytes).map_err(|e| format!("tcp write: {e}"))?
                }
                _ => return Err("device chose a destination its transport lacks".into()),
            }
        }
        loop {
            match &mut self.link {
                Link::Udp { sock, .. } => match sock.recv(&mut self.buf) {
                    Ok(k) => {
                        let now = self.clock.now();
                        self.dev.handle_datagram(now, &self.buf[..k]);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("udp recv: {e}")),
                },
                Link::Tcp { stream, deframer } => {
                    match stream.read(deframer.spare()) {
                        Ok(0) => return Err("the gateway closed the connection".into()),
                        Ok(k) => deframer.filled(k),
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => return Err(format!("tcp read: {e}")),
                    }
                    let now = self.clock.now();
                    while let Some(f) = deframer.next_frame().map_err(|e| e.to_string())? {
                        self.dev.handle_frame(now, f);
                        // Events borrow the device: drain them between frames.
                        while let Some(e) = self.dev.poll_event() {
                            record(&mut self.replies, &mut self.ended, e);
                        }
                    }
                }
            }
            self.events();
        }
        Ok(())
    }

    fn events(&mut self) {
        while let Some(e) = self.dev.poll_event() {
            record(&mut self.replies, &mut self.ended, e);
        }
    }

    /// Sends raw bytes (one message) on the session: UDP with the session prefix.
    fn send_raw(&mut self, msg: &Message<'_>) -> Result<(), String> {
        let mut out = [0u8; 128];
        match &mut self.link {
            Link::Udp { sock, handshake, session_port } => {
                let p = write_prefix(&mut out, self.dev.session_id());
                let n = msg.encode(&mut out[p..]).map_err(|e| e.to_string())?;
                let port = session_port.ok_or("no session port")?;
                sock.send_to(&out[..p + n], SocketAddr::new(handshake.ip(), port))
                    .map_err(|e| format!("udp send: {e}"))?;
            }
            Link::Tcp { stream, .. } => {
                let n = msg.encode(&mut out).map_err(|e| e.to_string())?;
                stream.write_all(&out[..n]).map_err(|e| format!("tcp write: {e}"))?;
            }
        }
        Ok(())
    }
}

fn record(replies: &mut Vec<(i64, Vec<u8>)>, ended: &mut Option<String>, e: DeviceEvent<'_>) {
    match e {
        DeviceEvent::App { seq, type_id: REPLY_TYPE, body, .. } => {
            replies.push((seq, body.to_vec()))
        }
        DeviceEvent::Ended { reason, text } => {
            *ended = Some(format!("session ended: {reason:?} {}", String::from_utf8_lossy(text)));
        }
        _ => {}
    }
}

fn one_run(cfg: &BurstConfig, t: Transport, rep: usize, r: &mut BurstRun) -> Result<(), String> {
    let k = cfg.seed.wrapping_mul(1_000).wrapping_add(rep as u64);
    let uid = format!("RB{}{k}", if t == Transport::Udp { 'U' } else { 'T' });
    let user = format!("{}{}{k}", cfg.user_prefix, if t == Transport::Udp { 'u' } else { 't' });
    let mut dc = DeviceConfig::new(t, uid.as_bytes(), user.as_bytes(), cfg.password.as_bytes());
    dc.buffer.messages_per_session = cfg.window + 16;
    let clock = Clock::new();
    let mut dev = Device::new(dc);
    dev.set_wall_offset(clock.wall_offset_ns());
    let link = match t {
        Transport::Udp => {
            let sock =
                UdpSocket::bind((cfg.handshake.ip(), 0)).map_err(|e| format!("bind: {e}"))?;
            sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            // The burst arrives faster than one thread reads it: room for all of it, as far as
            // net.core.rmem_max allows (the kernel doubles the figure for its bookkeeping).
            let sr = socket2::SockRef::from(&sock);
            let _ = sr.set_recv_buffer_size(UDP_RCVBUF);
            r.udp_rcvbuf_bytes = sr.recv_buffer_size().unwrap_or(0);
            Link::Udp { sock, handshake: cfg.handshake, session_port: None }
        }
        Transport::Tcp => {
            let stream = TcpStream::connect_timeout(&cfg.tcp, Duration::from_secs(5))
                .map_err(|e| format!("connect {}: {e}", cfg.tcp))?;
            let _ = stream.set_nodelay(true);
            stream.set_nonblocking(true).map_err(|e| e.to_string())?;
            Link::Tcp { stream, deframer: Deframer::new(64 * 1024) }
        }
    };
    dev.connect(clock.now(), 0x5EED_0000 ^ k.wrapping_mul(0x9E37_79B9_7F4A_7C15), true);
    let mut s = Side {
        dev,
        link,
        clock,
        buf: vec![0u8; 64 * 1024],
        replies: Vec::with_capacity(cfg.messages),
        ended: None,
    };
    let ended = |s: &Side| s.ended.clone().map(Err).unwrap_or(Ok(()));

    // Logon.
    let until = Instant::now() + cfg.phase_timeout;
    while s.dev.state() != DeviceState::Active {
        s.pump()?;
        ended(&s)?;
        if Instant::now() > until {
            return Err(format!(
                "not logged on within {:?}: {:?}",
                cfg.phase_timeout,
                s.dev.state()
            ));
        }
    }

    // Live: N echo requests, at most W in flight.
    let mut body = vec![0u8; cfg.body_bytes];
    let t0 = Instant::now();
    let until = t0 + cfg.phase_timeout;
    let mut sent = 0usize;
    while s.replies.len() < cfg.messages {
        while sent < cfg.messages && sent - s.replies.len() < cfg.window {
            body[..8].copy_from_slice(&(sent as u64).to_le_bytes());
            body[8..].fill((sent % 251) as u8);
            if s.dev.send_app(s.clock.now(), REQUEST_TYPE, &body, false).is_err() {
                break;
            }
            sent += 1;
        }
        s.pump()?;
        ended(&s)?;
        if Instant::now() > until {
            return Err(format!(
                "echo phase: {} of {} replies within {:?}",
                s.replies.len(),
                cfg.messages,
                cfg.phase_timeout
            ));
        }
    }
    let live = t0.elapsed();
    r.replies = s.replies.len();
    r.live_per_s = r.replies as f64 / live.as_secs_f64();
    for (i, (_, b)) in s.replies.iter().enumerate() {
        if b.len() != cfg.body_bytes || b[..8] != (i as u64).to_le_bytes() {
            return Err(format!("echo reply {i} is not the echo of request {i}"));
        }
    }
    // Wait until the gateway has everything we numbered (nothing of ours still in flight), so
    // that the ResendRequest's number is the one it expects.
    while s.dev.unacked() > 0 {
        s.pump()?;
        ended(&s)?;
        if Instant::now() > until + cfg.phase_timeout {
            return Err("the gateway did not acknowledge the echo requests".into());
        }
    }

    // Resend: ask for the range of the replies.
    let from = s.replies[0].0;
    let to = s.replies[s.replies.len() - 1].0;
    r.from = from;
    r.to = to;
    let req = Message {
        header: Header {
            seq: s.dev.next_out(),
            last_processed: s.dev.expected_in() - 1,
            send_time: s.clock.now().as_nanos() as i64 + s.clock.wall_offset_ns(),
            ..Header::default()
        },
        body: Body::ResendRequest { from, to },
    };
    let replies = std::mem::take(&mut s.replies);
    let mut check = Checker::new(&replies, from, to);
    let t_req = Instant::now();
    s.send_raw(&req)?;
    let until = t_req + cfg.phase_timeout;
    let mut first = None;
    let mut last = None;
    let mut deframer = Deframer::new(64 * 1024);
    while last.is_none() {
        let got = match &mut s.link {
            Link::Udp { sock, .. } => match sock.recv(&mut s.buf) {
                Ok(k) => {
                    let now = Instant::now();
                    r.reads += 1;
                    let dg = Datagram::parse(&s.buf[..k]).map_err(|e| format!("datagram: {e}"))?;
                    for f in dg.frames() {
                        let f = f.map_err(|e| format!("frame: {e}"))?;
                        check.frame(f)?;
                    }
                    Some(now)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => return Err(format!("udp recv: {e}")),
            },
            Link::Tcp { stream, .. } => match stream.read(deframer.spare()) {
                Ok(0) => {
                    return Err(format!(
                        "connection closed during the resend ({})",
                        check.progress()
                    ));
                }
                Ok(k) => {
                    let now = Instant::now();
                    r.reads += 1;
                    deframer.filled(k);
                    while let Some(f) = deframer.next_frame().map_err(|e| e.to_string())? {
                        check.frame(f)?;
                    }
                    Some(now)
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => None,
                Err(e) => return Err(format!("tcp read: {e}")),
            },
        };
        if let Some(now) = got {
            if check.seen > 0 {
                first.get_or_insert(now);
            }
            if check.done() {
                last = Some(now);
            }
        } else if Instant::now() > until {
            return Err(format!(
                "resend not complete within {:?} ({})",
                cfg.phase_timeout,
                check.progress()
            ));
        }
    }
    let (first, last) = (first.unwrap_or(t_req), last.unwrap_or(t_req));
    r.resent = check.resent;
    r.gap_fills = check.gap_fills;
    r.first_us = (first - t_req).as_secs_f64() * 1e6;
    r.last_us = (last - t_req).as_secs_f64() * 1e6;
    r.resent_per_s = r.resent as f64 / (last - t_req).as_secs_f64().max(1e-9);
    r.resend_vs_live = r.resent_per_s / r.live_per_s;
    if r.resent != r.replies {
        return Err(format!("{} of {} replies resent", r.resent, r.replies));
    }

    // Log out (numbered after the ResendRequest); the gateway releases the session.
    let bye = Message {
        header: Header { seq: req.header.seq + 1, last_processed: to, ..Header::default() },
        body: Body::LogoutRequest { reason: b"bye" },
    };
    let _ = s.send_raw(&bye);
    Ok(())
}

/// Checks the answer to one ResendRequest(from, to), message by message.
struct Checker<'a> {
    /// The originals, in sequence order.
    originals: &'a [(i64, Vec<u8>)],
    /// Index of the next original expected.
    at: usize,
    /// The next sequence number expected.
    next: i64,
    to: i64,
    /// Messages of the answer seen.
    seen: usize,
    resent: usize,
    gap_fills: usize,
}

impl<'a> Checker<'a> {
    fn new(originals: &'a [(i64, Vec<u8>)], from: i64, to: i64) -> Self {
        Self { originals, at: 0, next: from, to, seen: 0, resent: 0, gap_fills: 0 }
    }

    fn done(&self) -> bool {
        self.next > self.to
    }

    fn progress(&self) -> String {
        format!(
            "next expected {} of {}..={}, {} resent, {} gap fills",
            self.next,
            self.originals.first().map_or(0, |o| o.0),
            self.to,
            self.resent,
            self.gap_fills
        )
    }

    /// One message from the gateway.
    fn frame(&mut self, f: &[u8]) -> Result<(), String> {
        let m = Message::decode_frame(f).map_err(|e| format!("undecodable message: {e}"))?;
        let h = m.header;
        if self.done() {
            // Live traffic after the resend: fine.
            return Ok(());
        }
        match m.body {
            Body::LoggedOut { reason } => {
                return Err(format!(
                    "LoggedOut(\"{}\") during the resend ({})",
                    String::from_utf8_lossy(reason),
                    self.progress()
                ));
            }
            Body::Reject { reason, details, .. } => {
                return Err(format!(
                    "Reject({reason}, \"{}\") to the ResendRequest",
                    String::from_utf8_lossy(details)
                ));
            }
            _ => {}
        }
        if h.seq == 0 {
            return Ok(());
        }
        if h.flags & FLAG_RESEND == 0 {
            return Err(format!(
                "live message {} (type {}) before the resend ended: messages lost ({}; on UDP, \
                 is the device's receive buffer, udp_rcvbuf_bytes, too small for the burst?)",
                h.seq,
                h.type_id,
                self.progress()
            ));
        }
        if h.seq != self.next {
            return Err(format!(
                "resent message {} out of order: {} missing ({}; on UDP, is the device's \
                 receive buffer, udp_rcvbuf_bytes, too small for the burst?)",
                h.seq,
                self.next,
                self.progress()
            ));
        }
        self.seen += 1;
        let orig = self.originals.get(self.at);
        match m.body {
            Body::GapFill { new_seq_num } => {
                if new_seq_num <= h.seq {
                    return Err(format!("GapFill {} with newSeqNum {new_seq_num}", h.seq));
                }
                if let Some((seq, _)) = orig.filter(|(seq, _)| *seq < new_seq_num) {
                    return Err(format!(
                        "GapFill {}..{new_seq_num} covers journaled reply {seq}",
                        h.seq
                    ));
                }
                self.gap_fills += 1;
                self.next = new_seq_num;
            }
            Body::App { type_id, body } => {
                let Some((seq, orig)) = orig.filter(|(seq, _)| *seq == h.seq) else {
                    return Err(format!("resent message {} is not one of the replies", h.seq));
                };
                if type_id != REPLY_TYPE || body != orig.as_slice() {
                    return Err(format!("resent message {seq} differs from the original"));
                }
                debug_assert!(HEADER_LEN + body.len() == f.len());
                self.at += 1;
                self.resent += 1;
                self.next += 1;
            }
            _ => {
                return Err(format!(
                    "resent message {} of type {} is neither a reply nor a GapFill",
                    h.seq, h.type_id
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(seq: i64, flags: u8, body: Body<'_>) -> Vec<u8> {
        let m = Message { header: Header { seq, flags, ..Header::default() }, body };
        let mut b = vec![0u8; 256];
        let n = m.encode(&mut b).unwrap();
        let (f, _) = crate::protocol::split_frame(&b[..n]).unwrap();
        f.to_vec()
    }

    fn app(seq: i64, flags: u8, body: &[u8]) -> Vec<u8> {
        frame(seq, flags, Body::App { type_id: REPLY_TYPE, body })
    }

    #[test]
    fn the_checker_accepts_a_complete_answer_and_names_every_fault() {
        // Replies 2, 3, 5 (4 was a heartbeat).
        let orig = vec![(2, vec![1u8; 8]), (3, vec![2u8; 8]), (5, vec![3u8; 8])];
        let good = [
            app(2, FLAG_RESEND, &[1; 8]),
            app(3, FLAG_RESEND, &[2; 8]),
            frame(4, FLAG_RESEND, Body::GapFill { new_seq_num: 5 }),
            app(5, FLAG_RESEND, &[3; 8]),
        ];
        let mut c = Checker::new(&orig, 2, 5);
        for f in &good {
            c.frame(f).unwrap();
        }
        assert!(c.done());
        assert_eq!((c.resent, c.gap_fills), (3, 1));

        let fails = |frames: &[Vec<u8>]| {
            let mut c = Checker::new(&orig, 2, 5);
            frames
                .iter()
                .find_map(|f| c.frame(f).err())
                .or_else(|| (!c.done()).then(|| format!("incomplete: {}", c.progress())))
        };
        // A message missing: out of order.
        assert!(fails(&[good[0].clone(), good[2].clone()]).unwrap().contains("out of order"));
        // No resend flag.
        assert!(fails(&[app(2, 0, &[1; 8])]).unwrap().contains("live message"));
        // A different body.
        assert!(fails(&[app(2, FLAG_RESEND, &[9; 8])]).unwrap().contains("differs"));
        // A GapFill over a journaled reply.
        let gf = frame(2, FLAG_RESEND, Body::GapFill { new_seq_num: 6 });
        assert!(fails(&[gf]).unwrap().contains("covers journaled reply"));
        // The window-exceeded LoggedOut.
        let lo =
            frame(6, 0, Body::LoggedOut { reason: b"resend window exceeded: oldest retained 3" });
        assert!(fails(&[lo]).unwrap().contains("resend window exceeded"));
        // Stopping short.
        assert!(fails(&good[..3]).unwrap().contains("incomplete"));
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
