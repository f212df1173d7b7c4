//! The echo floor: bare batched echo servers with no session logic, and a client that drives
//! them, as the reference the gateway's cost and latency are compared with
//! (`scripts/bench-compare.sh`). One core running one of these loops is the most a shard core
//! could do.
//!
//! Servers (`serve`), each on one thread, pinned with `--cpu`:
//!
//! - `udp-mmsg`: `recvmmsg` a batch, `sendmmsg` it back in place (`fleetgate::io::floor::Mmsg`);
//!   blocking (`MSG_WAITFORONE`) or `--busy-poll`.
//! - `udp-uring`: io_uring, one multishot `RECVMSG` over a provided-buffer ring and one
//!   `SENDMSG` per datagram straight from the buffer it arrived in, all of a pass submitted
//!   together (`fleetgate::io::floor::UringUdpEcho`).
//! - `tcp-epoll`: level-triggered epoll over many connections; each read chunk is written back.
//!
//! At exit a server prints one JSON line: datagrams (or TCP chunks) received and echoed, bytes,
//! and the CPU time of its echo thread (`/proc/thread-self/schedstat`, nanosecond exact) and of
//! the whole process (`/proc/self/stat`), with the CPU per echo.
//!
//! The client (`client`) sends fixed-size messages carrying a sequence number and their intended
//! and actual send times over `--flows` UDP sockets or TCP connections: open loop at `--rate`
//! per second (latency from the intended send time, as `fleetgate load` measures it, and from
//! the actual send time, as sockperf does, plus its own send lateness), or closed loop with
//! `--window` messages in flight when `--rate 0` (saturation). It prints one JSON line.
//!
//! ```text
//! cargo bench --bench echo_floor -- serve --mode udp-mmsg --addr 127.0.0.1:7000 --cpu 0 --secs 30
//! cargo bench --bench echo_floor -- client --mode udp --addr 127.0.0.1:7000 --cpu 1 --rate 60000 --secs 10
//! cargo bench --bench echo_floor -- client --mode udp --addr 127.0.0.1:7000 --cpu 1 --rate 0 --window 256 --flows 4
//! ```
//!
//! Without a `serve` or `client` subcommand (as `cargo test --all-targets` and `cargo bench` run
//! it) it tests itself: each server on an ephemeral loopback port in a thread, a few hundred
//! messages through it, every echo checked, in well under two seconds.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use fleetgate::io::floor::{
    CLOSED, Epoll, Mmsg, READABLE, UringUdpEcho, WRITABLE, set_timer_slack,
};
use fleetgate::tools::hist::{Interval, write_log};
use hdrhistogram::Histogram;

#[derive(Parser, Debug)]
#[command(about = "Bare echo servers and their client: the floor fleetgate is measured against")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run an echo server until --secs have passed (or --idle-exit), then print a JSON line.
    Serve(ServeArgs),
    /// Drive an echo server; print a JSON line.
    Client(ClientArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ServerMode {
    UdpMmsg,
    UdpUring,
    TcpEpoll,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ClientMode {
    Udp,
    Tcp,
}

#[derive(clap::Args, Debug, Clone)]
struct ServeArgs {
    #[arg(long, value_enum)]
    mode: ServerMode,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Core to pin the echo thread to.
    #[arg(long)]
    cpu: Option<usize>,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 30.0)]
    secs: f64,
    /// Stop once no input came for this many seconds after the first input (0 = never).
    #[arg(long, default_value_t = 0.0)]
    idle_exit: f64,
    /// Never block: spin on non-blocking receives (or a zero-timeout io_uring_enter/epoll_wait).
    #[arg(long)]
    busy_poll: bool,
    /// Datagrams per recvmmsg (udp-mmsg); provided buffers (udp-uring, rounded to a power of 2).
    #[arg(long, default_value_t = 64)]
    batch: usize,
}

#[derive(clap::Args, Debug, Clone)]
struct ClientArgs {
    #[arg(long, value_enum)]
    mode: ClientMode,
    /// Server address.
    #[arg(long, default_value = "127.0.0.1:7000")]
    addr: SocketAddr,
    /// Core to pin the client thread to.
    #[arg(long)]
    cpu: Option<usize>,
    /// Messages per second over all flows (open loop); 0 = closed loop with --window in flight.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Closed loop: messages in flight over all flows.
    #[arg(long, default_value_t = 64)]
    window: usize,
    /// UDP sockets or TCP connections (sources seen by the server).
    #[arg(long, default_value_t = 100)]
    flows: usize,
    /// Message size in bytes (24..=1400).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Warm-up seconds (sent, not measured).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 10.0)]
    secs: f64,
    /// Spin instead of waiting in epoll.
    #[arg(long)]
    busy_poll: bool,
    /// Open loop at --rate, but with one message in flight at most, as sockperf's ping-pong:
    /// a message due while the last one's reply is owed waits for it (and is then sent at
    /// once). Its stalls then delay one sample, not every message due meanwhile; read
    /// `latency_from_send_ns`, which is what sockperf reports.
    #[arg(long)]
    ping_pong: bool,
    /// Write the latency (from the intended send time) as an HdrHistogram log, tag `floor`.
    #[arg(long)]
    hlog: Option<std::path::PathBuf>,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let sub = args.get(1).map(String::as_str);
    if !matches!(sub, Some("serve" | "client" | "help" | "--help" | "-h")) {
        // `cargo test --all-targets` runs a harness=false bench with the test filters (often
        // none), `cargo bench` with `--bench`: test ourselves.
        return self_test();
    }
    // `cargo bench -- serve ...` appends `--bench` after the arguments.
    let r = match Cli::parse_from(args.iter().filter(|a| *a != "--bench")).command {
        Command::Serve(a) => serve_main(&a),
        Command::Client(a) => client_main(&a),
    };
    match r {
        Ok(json) => {
            println!("{json}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("echo_floor: {e}");
            ExitCode::from(2)
        }
    }
}

fn pin(cpu: Option<usize>) -> Result<(), String> {
    if let Some(id) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id }) {
            return Err(format!("cannot pin to core {id}"));
        }
    }
    Ok(())
}

/// CPU time of the calling thread, exact (the scheduler's own account).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// CPU time of the whole process (utime + stime from /proc/self/stat, 10 ms ticks).
fn process_cpu() -> Duration {
    let ticks = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        let f: Vec<u64> = s
            .rsplit_once(") ")?
            .1
            .split_whitespace()
            .skip(11)
            .take(2)
            .filter_map(|x| x.parse().ok())
            .collect();
        Some(f.iter().sum::<u64>())
    });
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

// ------------------------------------------------------------------------------------- server

#[derive(Debug, Default)]
struct ServerReport {
    received: u64,
    echoed: u64,
    bytes: u64,
    dropped: u64,
    wakeups: u64,
    connections: u64,
    cpu: Duration,
    wall: Duration,
    note: String,
}

enum Bound {
    Udp(UdpSocket),
    Tcp(TcpListener),
}

fn bind(mode: ServerMode, addr: SocketAddr) -> std::io::Result<Bound> {
    Ok(match mode {
        ServerMode::UdpMmsg | ServerMode::UdpUring => {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::DGRAM,
                None,
            )?;
            // Large buffers so that a burst is not dropped before the loop sees it.
            let _ = s.set_recv_buffer_size(4 << 20);
            let _ = s.set_send_buffer_size(4 << 20);
            s.bind(&addr.into())?;
            Bound::Udp(s.into())
        }
        ServerMode::TcpEpoll => {
            let s = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(4096)?;
            Bound::Tcp(s.into())
        }
    })
}

fn local_addr(b: &Bound) -> std::io::Result<SocketAddr> {
    match b {
        Bound::Udp(s) => s.local_addr(),
        Bound::Tcp(l) => l.local_addr(),
    }
}

/// When to stop: `stop` set, `deadline` passed, or idle for `idle_exit` after some input.
struct Until<'a> {
    stop: &'a AtomicBool,
    deadline: Instant,
    idle_exit: Option<Duration>,
    last_input: Option<Instant>,
}

impl Until<'_> {
    fn done(&mut self, input: bool) -> bool {
        let now = Instant::now();
        if input {
            self.last_input = Some(now);
        }
        self.stop.load(Ordering::Relaxed)
            || now >= self.deadline
            || matches!((self.idle_exit, self.last_input), (Some(i), Some(t)) if now - t >= i)
    }
}

/// How long a blocking wait may last before the stop conditions are checked again.
const CHECK: Duration = Duration::from_millis(20);

fn serve_loop(
    mode: ServerMode,
    bound: Bound,
    a: &ServeArgs,
    stop: &AtomicBool,
) -> Result<ServerReport, String> {
    let t0 = Instant::now();
    let mut until = Until {
        stop,
        deadline: t0 + Duration::from_secs_f64(a.secs.max(0.0)),
        idle_exit: (a.idle_exit > 0.0).then(|| Duration::from_secs_f64(a.idle_exit)),
        last_input: None,
    };
    let cpu0 = thread_cpu();
    let mut r = ServerReport::default();
    match (mode, bound) {
        (ServerMode::UdpMmsg, Bound::Udp(sock)) => {
            if a.busy_poll {
                sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            } else {
                sock.set_read_timeout(Some(CHECK)).map_err(|e| e.to_string())?;
            }
            let mut m = Mmsg::new(a.batch, 2048);
            loop {
                let n = m.recv(&sock, !a.busy_poll).map_err(|e| format!("recvmmsg: {e}"))?;
                r.wakeups += 1;
                if n > 0 {
                    r.received += n as u64;
                    r.bytes += (0..n).map(|i| m.datagram(i).len() as u64).sum::<u64>();
                    r.echoed += m.echo(&sock, n).map_err(|e| format!("sendmmsg: {e}"))? as u64;
                }
                if until.done(n > 0) {
                    break;
                }
            }
        }
        (ServerMode::UdpUring, Bound::Udp(sock)) => {
            let count = u16::try_from(a.batch.next_power_of_two()).unwrap_or(4096);
            let mut u =
                UringUdpEcho::new(sock, count, 2048).map_err(|e| format!("io_uring: {e}"))?;
            r.note = format!("ring setup {}", u.setup());
            let wait = if a.busy_poll { Duration::ZERO } else { CHECK };
            loop {
                let before = u.counts.received;
                u.run_once(wait).map_err(|e| format!("io_uring_enter: {e}"))?;
                if until.done(u.counts.received > before) {
                    break;
                }
            }
            // Let the last sends complete.
            let end = Instant::now() + Duration::from_millis(50);
            while u.counts.echoed + u.counts.dropped < u.counts.received && Instant::now() < end {
                u.run_once(Duration::from_millis(1)).map_err(|e| e.to_string())?;
            }
            r.received = u.counts.received;
            r.echoed = u.counts.echoed;
            r.bytes = u.counts.bytes;
            r.dropped = u.counts.dropped;
            r.wakeups = u.counts.enters;
        }
        (ServerMode::TcpEpoll, Bound::Tcp(l)) => tcp_echo(l, a.busy_poll, &mut until, &mut r)?,
        _ => return Err("socket kind does not match the mode".into()),
    }
    r.cpu = thread_cpu().saturating_sub(cpu0);
    r.wall = t0.elapsed();
    Ok(r)
}

struct EchoConn {
    stream: TcpStream,
    /// Bytes read but not yet written back; while any, the connection is not read.
    pending: Vec<u8>,
}

const LISTENER: u64 = u64::MAX;

fn tcp_echo(
    l: TcpListener,
    busy: bool,
    until: &mut Until<'_>,
    r: &mut ServerReport,
) -> Result<(), String> {
    let err = |e: std::io::Error| e.to_string();
    l.set_nonblocking(true).map_err(err)?;
    let mut ep = Epoll::new(256).map_err(err)?;
    ep.add(&l, LISTENER, READABLE).map_err(err)?;
    let mut conns: Vec<Option<EchoConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = ep.wait(if busy { Duration::ZERO } else { CHECK }).map_err(err)?;
        r.wakeups += 1;
        let mut input = false;
        for i in 0..n {
            let (token, events) = ep.event(i);
            if token == LISTENER {
                while let Ok((stream, _)) = l.accept() {
                    let _ = stream.set_nodelay(true);
                    stream.set_nonblocking(true).map_err(err)?;
                    let k = free.pop().unwrap_or_else(|| {
                        conns.push(None);
                        conns.len() - 1
                    });
                    ep.add(&stream, k as u64, READABLE).map_err(err)?;
                    conns[k] = Some(EchoConn { stream, pending: Vec::new() });
                    r.connections += 1;
                }
                continue;
            }
            let k = token as usize;
            let Some(c) = conns.get_mut(k).and_then(Option::as_mut) else { continue };
            let mut close = false;
            if events & WRITABLE != 0 && !c.pending.is_empty() {
                match c.stream.write(&c.pending) {
                    Ok(w) => {
                        c.pending.drain(..w);
                        if c.pending.is_empty() {
                            ep.modify(&c.stream, token, READABLE).map_err(err)?;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => close = true,
                }
            } else if events & (READABLE | CLOSED) != 0 && c.pending.is_empty() {
                // Read until drained (or until a write falls behind).
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            close = true;
                            break;
                        }
                        Ok(got) => {
                            input = true;
                            r.received += 1;
                            r.bytes += got as u64;
                            let w = match c.stream.write(&buf[..got]) {
                                Ok(w) => w,
                                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => 0,
                                Err(_) => {
                                    close = true;
                                    break;
                                }
                            };
                            r.echoed += 1;
                            if w < got {
                                c.pending.extend_from_slice(&buf[w..got]);
                                ep.modify(&c.stream, token, WRITABLE).map_err(err)?;
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => {
                            close = true;
                            break;
                        }
                    }
                }
            }
            if close {
                if let Some(c) = conns[k].take() {
                    let _ = ep.remove(&c.stream);
                }
                free.push(k);
            }
        }
        if until.done(input) {
            return Ok(());
        }
    }
}

fn server_json(mode: ServerMode, addr: SocketAddr, a: &ServeArgs, r: &ServerReport) -> String {
    let per = |n: u64| if n == 0 { 0.0 } else { r.cpu.as_secs_f64() * 1e6 / n as f64 };
    format!(
        "{{\"role\":\"server\",\"mode\":\"{}\",\"addr\":\"{addr}\",\"cpu\":{},\"busy_poll\":{},\"batch\":{},\"wall_s\":{:.3},\"received\":{},\"echoed\":{},\"bytes\":{},\"dropped\":{},\"wakeups\":{},\"connections\":{},\"cpu_us\":{:.0},\"process_cpu_us\":{:.0},\"cpu_us_per_echo\":{:.3},\"note\":\"{}\"}}",
        mode.to_possible_value().map(|v| v.get_name().to_string()).unwrap_or_default(),
        a.cpu.map_or("null".to_string(), |c| c.to_string()),
        a.busy_poll,
        a.batch,
        r.wall.as_secs_f64(),
        r.received,
        r.echoed,
        r.bytes,
        r.dropped,
        r.wakeups,
        r.connections,
        r.cpu.as_secs_f64() * 1e6,
        process_cpu().as_secs_f64() * 1e6,
        per(r.echoed),
        r.note
    )
}

fn serve_main(a: &ServeArgs) -> Result<String, String> {
    pin(a.cpu)?;
    let bound = bind(a.mode, a.addr).map_err(|e| format!("bind {}: {e}", a.addr))?;
    let addr = local_addr(&bound).map_err(|e| e.to_string())?;
    eprintln!("echo_floor: {:?} listening on {addr}", a.mode);
    let stop = AtomicBool::new(false);
    let r = serve_loop(a.mode, bound, a, &stop)?;
    Ok(server_json(a.mode, addr, a, &r))
}

// ------------------------------------------------------------------------------------- client

/// Message layout: sequence number, intended and actual send time (ns since the client's t0),
/// then padding up to the message size.
const HEAD: usize = 24;

enum Flow {
    Udp(UdpSocket),
    Tcp { stream: TcpStream, inbuf: Vec<u8>, have: usize, out: Vec<u8> },
}

/// Writes `data` on a non-blocking connection, queueing in `out` what does not fit (behind
/// anything already queued). False if the connection failed.
fn tcp_queue(stream: &mut TcpStream, out: &mut Vec<u8>, data: &[u8]) -> bool {
    if !out.is_empty() {
        out.extend_from_slice(data);
        return true;
    }
    match stream.write(data) {
        Ok(w) => {
            out.extend_from_slice(&data[w..]);
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            out.extend_from_slice(data);
            true
        }
        Err(_) => false,
    }
}

struct ClientReport {
    sent: u64,
    received: u64,
    measured: u64,
    corrupt: u64,
    send_errors: u64,
    /// Most messages ever in flight (sent, reply not yet in).
    in_flight_max: u64,
    lat: Histogram<u64>,
    lat_send: Histogram<u64>,
    lateness: Histogram<u64>,
    cpu: Duration,
    measured_secs: f64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("static bounds are valid")
}

fn connect(mode: ClientMode, addr: SocketAddr, flows: usize) -> Result<Vec<Flow>, String> {
    let mut v = Vec::with_capacity(flows);
    for _ in 0..flows.max(1) {
        let e = |e: std::io::Error| format!("connect {addr}: {e}");
        v.push(match mode {
            ClientMode::Udp => {
                let s = UdpSocket::bind(SocketAddr::new(addr.ip(), 0)).map_err(e)?;
                s.connect(addr).map_err(e)?;
                s.set_nonblocking(true).map_err(e)?;
                Flow::Udp(s)
            }
            ClientMode::Tcp => {
                let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(e)?;
                s.set_nodelay(true).map_err(e)?;
                s.set_nonblocking(true).map_err(e)?;
                Flow::Tcp { stream: s, inbuf: Vec::new(), have: 0, out: Vec::new() }
            }
        });
    }
    Ok(v)
}

struct Client<'a> {
    a: &'a ClientArgs,
    t0: Instant,
    measure_from: u64,
    measure_to: u64,
    msg: Vec<u8>,
    r: ClientReport,
}

impl Client<'_> {
    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    /// Writes message `seq` (intended at `intended` ns, sent now) into `msg` and counts it.
    fn stamp(&mut self, seq: u64, intended: u64) {
        let actual = self.now_ns();
        self.msg[0..8].copy_from_slice(&seq.to_le_bytes());
        self.msg[8..16].copy_from_slice(&intended.to_le_bytes());
        self.msg[16..24].copy_from_slice(&actual.to_le_bytes());
        self.r.sent += 1;
        let in_flight = self.r.sent - self.r.received - self.r.corrupt;
        self.r.in_flight_max = self.r.in_flight_max.max(in_flight);
        if self.a.rate > 0.0 && intended >= self.measure_from {
            let _ = self.r.lateness.record(actual.saturating_sub(intended).max(1));
        }
    }

    /// Sends message `seq` (intended at `intended` ns) on `flow`.
    fn send(&mut self, flow: &mut Flow, seq: u64, intended: u64) {
        self.stamp(seq, intended);
        let ok = match flow {
            Flow::Udp(s) => s.send(&self.msg).is_ok(),
            Flow::Tcp { stream, out, .. } => tcp_queue(stream, out, &self.msg),
        };
        if !ok {
            self.r.send_errors += 1;
        }
    }

    /// Closed loop: sends `k` new messages on `flow` in as few syscalls as possible (one
    /// `sendmmsg` per batch, one write for TCP).
    fn send_burst(&mut self, flow: &mut Flow, k: u64, tx: &mut Mmsg, out_buf: &mut Vec<u8>) {
        let mut left = k as usize;
        while left > 0 {
            let n = left.min(tx.batch());
            out_buf.clear();
            for i in 0..n {
                let seq = self.r.sent;
                let now = self.now_ns();
                self.stamp(seq, now);
                match flow {
                    Flow::Udp(_) => tx.fill(i, &self.msg),
                    Flow::Tcp { .. } => out_buf.extend_from_slice(&self.msg),
                }
            }
            let ok = match flow {
                Flow::Udp(s) => tx.send(s, n).is_ok(),
                Flow::Tcp { stream, out, .. } => tcp_queue(stream, out, out_buf),
            };
            if !ok {
                self.r.send_errors += n as u64;
            }
            left -= n;
        }
    }

    /// A reply arrived: check it and record its latency.
    fn on_reply(&mut self, m: &[u8]) {
        let now = self.now_ns();
        let field = |i: usize| {
            m.get(i * 8..i * 8 + 8)
                .and_then(|b| b.try_into().ok())
                .map_or(u64::MAX, u64::from_le_bytes)
        };
        let (seq, intended, actual) = (field(0), field(1), field(2));
        if m.len() != self.a.size || seq >= self.r.sent || actual > now || intended > actual {
            self.r.corrupt += 1;
            return;
        }
        self.r.received += 1;
        if intended >= self.measure_from && intended < self.measure_to {
            self.r.measured += 1;
            let _ = self.r.lat.record((now - intended).max(1));
            let _ = self.r.lat_send.record((now - actual).max(1));
        }
    }
}

fn run_client(a: &ClientArgs) -> Result<ClientReport, String> {
    if !(HEAD..=1400).contains(&a.size) {
        return Err(format!("--size must be within {HEAD}..=1400"));
    }
    // Timed waits fire on time rather than up to 50 µs late (the default slack).
    set_timer_slack(Duration::from_nanos(1)).map_err(|e| format!("timer slack: {e}"))?;
    let mut flows = connect(a.mode, a.addr, a.flows)?;
    let nflows = flows.len();
    let err = |e: std::io::Error| e.to_string();
    let mut ep = Epoll::new(nflows.min(1024)).map_err(err)?;
    for (k, f) in flows.iter().enumerate() {
        match f {
            Flow::Udp(s) => ep.add(s, k as u64, READABLE),
            Flow::Tcp { stream, .. } => ep.add(stream, k as u64, READABLE),
        }
        .map_err(err)?;
    }
    for f in &mut flows {
        if let Flow::Tcp { inbuf, .. } = f {
            inbuf.resize(a.size * 64, 0);
        }
    }
    let cpu0 = thread_cpu();
    let t0 = Instant::now() + Duration::from_millis(5);
    while Instant::now() < t0 {}
    let warm = Duration::from_secs_f64(a.warmup.max(0.0));
    let secs = Duration::from_secs_f64(a.secs.max(0.01));
    let mut c = Client {
        a,
        t0,
        measure_from: warm.as_nanos() as u64,
        measure_to: (warm + secs).as_nanos() as u64,
        msg: vec![0xa5; a.size],
        r: ClientReport {
            sent: 0,
            received: 0,
            measured: 0,
            corrupt: 0,
            send_errors: 0,
            in_flight_max: 0,
            lat: hist(),
            lat_send: hist(),
            lateness: hist(),
            cpu: Duration::ZERO,
            measured_secs: secs.as_secs_f64(),
        },
    };
    let end_send = c.measure_to;
    // Replies still owed when sending stops are waited for this long.
    let drain = Duration::from_millis(300).as_nanos() as u64;
    let interval = if a.rate > 0.0 { 1e9 / a.rate } else { 0.0 };
    let mut mm = Mmsg::new(64, 2048);
    let (mut tx, mut out_buf) = (Mmsg::new(64, a.size), Vec::new());
    let mut rr = 0usize;
    // Closed loop: start the window, spread over the flows.
    if a.rate <= 0.0 {
        let w = a.window.max(1);
        for (k, f) in flows.iter_mut().enumerate() {
            let share = (w / nflows + usize::from(k < w % nflows)) as u64;
            c.send_burst(f, share, &mut tx, &mut out_buf);
        }
    }
    loop {
        let now = c.now_ns();
        let sending = now < end_send;
        if !sending && (c.r.received + c.r.corrupt >= c.r.sent || now >= end_send + drain) {
            break;
        }
        let mut wait = Duration::from_millis(1);
        if a.rate > 0.0 && sending {
            // Open loop: everything due by now, round robin over the flows.
            let mut due =
                ((now as f64 / interval) as u64 + 1).min((end_send as f64 / interval) as u64);
            if a.ping_pong {
                let idle = c.r.sent == c.r.received + c.r.corrupt;
                due = due.min(c.r.sent + u64::from(idle));
            }
            while c.r.sent < due {
                let seq = c.r.sent;
                let intended = (seq as f64 * interval) as u64;
                c.send(&mut flows[rr], seq, intended);
                rr = (rr + 1) % nflows;
            }
            // Ping-pong with a reply owed: wait for it (the next send follows it).
            if !a.ping_pong || c.r.sent == c.r.received + c.r.corrupt {
                let next = (c.r.sent as f64 * interval) as u64;
                wait = wait.min(Duration::from_nanos(next.saturating_sub(c.now_ns())));
            }
        }
        // TCP output that did not fit.
        for f in &mut flows {
            if let Flow::Tcp { stream, out, .. } = f {
                if !out.is_empty() {
                    if let Ok(w) = stream.write(out) {
                        out.drain(..w);
                    }
                }
            }
        }
        let n = ep.wait(if a.busy_poll { Duration::ZERO } else { wait }).map_err(err)?;
        for i in 0..n {
            let k = ep.event(i).0 as usize;
            let replies = read_flow(&mut c, &mut flows[k], &mut mm)?;
            // Closed loop: one new message per reply, on the same flow.
            if a.rate <= 0.0 && c.now_ns() < end_send {
                c.send_burst(&mut flows[k], replies, &mut tx, &mut out_buf);
            }
        }
    }
    c.r.cpu = thread_cpu().saturating_sub(cpu0);
    Ok(c.r)
}

/// Reads what `flow` has; returns the number of replies.
fn read_flow(c: &mut Client<'_>, flow: &mut Flow, mm: &mut Mmsg) -> Result<u64, String> {
    let mut replies = 0;
    match flow {
        Flow::Udp(s) => loop {
            let n = mm.recv(s, false).map_err(|e| format!("recvmmsg: {e}"))?;
            for i in 0..n {
                c.on_reply(mm.datagram(i));
                replies += 1;
            }
            if n < mm.batch() {
                break;
            }
        },
        Flow::Tcp { stream, inbuf, have, .. } => loop {
            match stream.read(&mut inbuf[*have..]) {
                Ok(0) => return Err("server closed a connection".into()),
                Ok(got) => {
                    *have += got;
                    let size = c.a.size;
                    let whole = *have / size * size;
                    for m in inbuf[..whole].chunks_exact(size) {
                        c.on_reply(m);
                        replies += 1;
                    }
                    inbuf.copy_within(whole..*have, 0);
                    *have -= whole;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("read: {e}")),
            }
        },
    }
    Ok(replies)
}

fn hist_json(h: &Histogram<u64>) -> String {
    let q = |x: f64| if h.is_empty() { 0 } else { h.value_at_quantile(x) };
    format!(
        "{{\"count\":{},\"p50\":{},\"p90\":{},\"p99\":{},\"p99_9\":{},\"p99_99\":{},\"max\":{}}}",
        h.len(),
        q(0.5),
        q(0.9),
        q(0.99),
        q(0.999),
        q(0.9999),
        h.max()
    )
}

fn write_hlog(path: &std::path::Path, h: &Histogram<u64>, secs: f64) -> Result<(), String> {
    let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let interval = Interval {
        tag: "floor",
        start: Duration::ZERO,
        len: Duration::from_secs_f64(secs),
        hist: h,
    };
    let comment = "echo_floor client: latency from the intended send time, ns";
    write_log(&mut f, comment, std::time::SystemTime::now(), [interval])
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn client_main(a: &ClientArgs) -> Result<String, String> {
    pin(a.cpu)?;
    let r = run_client(a)?;
    if let Some(p) = &a.hlog {
        write_hlog(p, &r.lat, r.measured_secs)?;
    }
    Ok(format!(
        "{{\"role\":\"client\",\"mode\":\"{}\",\"addr\":\"{}\",\"cpu\":{},\"rate\":{},\"window\":{},\"flows\":{},\"size\":{},\"seconds\":{},\"sent\":{},\"received\":{},\"measured\":{},\"lost\":{},\"corrupt\":{},\"send_errors\":{},\"ping_pong\":{},\"busy_poll\":{},\"in_flight_max\":{},\"rate_per_s\":{:.1},\"latency_ns\":{},\"latency_from_send_ns\":{},\"send_lateness_ns\":{},\"cpu_us\":{:.0}}}",
        if a.mode == ClientMode::Udp { "udp" } else { "tcp" },
        a.addr,
        a.cpu.map_or("null".to_string(), |c| c.to_string()),
        a.rate,
        a.window,
        a.flows,
        a.size,
        r.measured_secs,
        r.sent,
        r.received,
        r.measured,
        r.sent.saturating_sub(r.received + r.corrupt),
        r.corrupt,
        r.send_errors,
        a.ping_pong,
        a.busy_poll,
        r.in_flight_max,
        r.measured as f64 / r.measured_secs,
        hist_json(&r.lat),
        hist_json(&r.lat_send),
        hist_json(&r.lateness),
        r.cpu.as_secs_f64() * 1e6
    ))
}

// ---------------------------------------------------------------------------------- self-test

/// Runs each server on an ephemeral loopback port in a thread and pushes messages through it,
/// open loop and closed loop: every message must come back intact, and the server must count
/// what the client sent.
fn self_test() -> ExitCode {
    let t0 = Instant::now();
    let mut failed = false;
    for mode in [ServerMode::UdpMmsg, ServerMode::UdpUring, ServerMode::TcpEpoll] {
        match self_test_one(mode) {
            Ok(line) => println!("echo_floor self-test {mode:?}: ok ({line})"),
            Err(e) => {
                eprintln!("echo_floor self-test {mode:?}: FAILED: {e}");
                failed = true;
            }
        }
    }
    println!("echo_floor self-test: {:.2} s", t0.elapsed().as_secs_f64());
    if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS }
}

fn self_test_one(mode: ServerMode) -> Result<String, String> {
    let sa = ServeArgs {
        mode,
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        cpu: None,
        secs: 10.0,
        idle_exit: 0.0,
        busy_poll: false,
        batch: 32,
    };
    let bound = bind(mode, sa.addr).map_err(|e| e.to_string())?;
    let addr = local_addr(&bound).map_err(|e| e.to_string())?;
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let (sa, stop) = (sa.clone(), stop.clone());
        std::thread::spawn(move || serve_loop(mode, bound, &sa, &stop))
    };
    let cmode = if mode == ServerMode::TcpEpoll { ClientMode::Tcp } else { ClientMode::Udp };
    let base = ClientArgs {
        mode: cmode,
        addr,
        cpu: None,
        rate: 2000.0,
        window: 16,
        flows: 8,
        size: 64,
        warmup: 0.02,
        secs: 0.1,
        busy_poll: false,
        ping_pong: false,
        hlog: None,
    };
    let open = run_client(&base);
    let closed = run_client(&ClientArgs { rate: 0.0, window: 16, secs: 0.05, ..base.clone() });
    // Ping-pong offered more than one round trip can carry (a send due every 5 µs): still one
    // message in flight at a time.
    let pp = run_client(&ClientArgs {
        ping_pong: true,
        busy_poll: true,
        rate: 200_000.0,
        ..base.clone()
    });
    stop.store(true, Ordering::Relaxed);
    let srv = server.join().map_err(|_| "server thread panicked".to_string())??;
    let (open, closed, pp) = (open?, closed?, pp?);
    if pp.in_flight_max != 1 {
        return Err(format!("ping-pong had {} messages in flight at once", pp.in_flight_max));
    }
    for (name, r) in [("open loop", &open), ("closed loop", &closed), ("ping-pong", &pp)] {
        if r.sent < 100 || r.received != r.sent || r.corrupt != 0 || r.send_errors != 0 {
            return Err(format!(
                "{name}: sent {} received {} corrupt {} send errors {}",
                r.sent, r.received, r.corrupt, r.send_errors
            ));
        }
    }
    if open.lat.is_empty() || open.lateness.is_empty() {
        return Err("open loop recorded no latency".into());
    }
    let sent = open.sent + closed.sent + pp.sent;
    let bytes = sent * base.size as u64;
    // UDP: one datagram per message; TCP: chunks, so compare bytes.
    if srv.bytes != bytes || (cmode == ClientMode::Udp && srv.echoed != sent) {
        return Err(format!(
            "server counted {} echoes / {} bytes for {sent} messages / {bytes} bytes",
            srv.echoed, srv.bytes
        ));
    }
    Ok(format!(
        "{sent} messages, open-loop p50 {:.1} µs, server {:.2} µs CPU per echo{}",
        open.lat.value_at_quantile(0.5) as f64 / 1e3,
        srv.cpu.as_secs_f64() * 1e6 / srv.echoed.max(1) as f64,
        if srv.note.is_empty() { String::new() } else { format!(", {}", srv.note) }
    ))
}
