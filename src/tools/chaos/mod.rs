//! `fleetgate chaos` (hidden): floods and faults against a real gateway process, from outside,
//! with two canary sessions (one UDP, one TCP) echoing every 100 ms throughout
//! (`scripts/chaos.sh` runs it; README.md, "Hostile networks").
//!
//! It starts the release binary itself (`serve` with a credentials file it writes), so that it
//! can send SIGTERM and SIGKILL and start the gateway again. Every case is bounded in time and
//! count, and all traffic stays on 127.0.0.0/8 (attackers bind their own source addresses in
//! it). Per case it reports the canaries' worst gap between echo replies, the gateway's RSS and
//! fd count before and after, the largest reply/request byte ratio an attacker saw on the
//! stateless paths, the counters that case moves, and a verdict with the rule it checks. The
//! table goes to stdout, and everything as JSON to `<out>/chaos.json`.
//!
//! `fleetgate chaos-hold` (hidden) is the slowloris worker: a process of its own, so that the
//! idle connections use its open-files allowance, not the canaries'.

mod fleet;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fleet::{Dev, Target, drive_until, rand_u32, tcp_from, udp_from};

use crate::protocol::{Body, DeviceUid, Header, Message, Password, Username, write_prefix};
use crate::session::{DeviceState, EndReason};
use crate::time::Clock;

/// The canaries' and the fleets' password.
const PW: &str = "chaos-pw";
/// The brute-force victims' real password (never guessed).
const VICTIM_PW: &str = "victim-pw-not-guessed";

/// What `fleetgate chaos` is told.
#[derive(Clone, Debug)]
pub struct Options {
    /// The gateway binary to start (`serve`).
    pub bin: PathBuf,
    /// A TOML profile for the gateway (`--config`), if any.
    pub config: Option<PathBuf>,
    /// Results folder (created).
    pub out: PathBuf,
    /// A few seconds per case (CI).
    pub short: bool,
    /// First of the ports used: handshake = base, TCP = base + 1, session port = base + 2,
    /// HTTP = base + 9.
    pub base_port: u16,
    /// Only these cases (all when empty).
    pub cases: Vec<String>,
    /// I/O backend for the gateway (auto, uring, epoll).
    pub io: String,
    /// The canaries' worst gap that still passes (ms).
    pub max_gap_ms: u64,
    /// Most idle connections the slowloris case holds (0 = up to the gateway's open-files
    /// limit, less a margin).
    pub slowloris: usize,
}

/// One case's outcome.
#[derive(Debug, Default)]
struct CaseResult {
    name: &'static str,
    rule: &'static str,
    seconds: f64,
    gap_udp_ms: f64,
    gap_tcp_ms: f64,
    canary_events: Vec<String>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    fds_before: u64,
    fds_after: u64,
    requests: u64,
    max_ratio: Option<f64>,
    counters: Vec<(String, f64)>,
    pass: bool,
    detail: String,
}

// ------------------------------------------------------------------------------------------
// The gateway process.

struct Gateway {
    child: Child,
    pid: u32,
}

struct Ctx {
    opts: Options,
    creds: PathBuf,
    target: Target,
    session_port: u16,
    http: SocketAddr,
    gw: Option<Gateway>,
    starts: u32,
    canary: Arc<Mutex<CanaryShared>>,
    stop: Arc<AtomicBool>,
}

impl Ctx {
    fn gateway_args(&self) -> Vec<String> {
        let p = self.opts.base_port;
        let mut a = vec!["serve".to_string()];
        if let Some(c) = &self.opts.config {
            a.extend(["--config".into(), c.display().to_string()]);
        }
        a.extend([
            "--shards".into(),
            "1".into(),
            "--io".into(),
            self.opts.io.clone(),
            "--handshake-addr".into(),
            format!("127.0.0.1:{p}"),
            "--tcp-addr".into(),
            format!("127.0.0.1:{}", p + 1),
            "--session-port-base".into(),
            (p + 2).to_string(),
            "--metrics-addr".into(),
            format!("127.0.0.1:{}", p + 9),
            "--credentials".into(),
            self.creds.display().to_string(),
            "--set".into(),
            "gateway.max_sessions_per_shard=8192".into(),
            "--set".into(),
            "tcp.max_connections_per_shard=8192".into(),
        ]);
        a
    }

    /// Starts the gateway (no wait for readiness); its log goes to `gateway-<n>.log`.
    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.opts.out.join(format!("gateway-{}.log", self.starts));
        let f = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let f2 = f.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&self.opts.bin)
            .args(self.gateway_args())
            .stdin(Stdio::null())
            .stdout(f)
            .stderr(f2)
            .spawn()
            .map_err(|e| format!("{}: {e}", self.opts.bin.display()))?;
        self.gw = Some(Gateway { pid: child.id(), child });
        Ok(())
    }

    /// Waits until /healthz answers (true) or the process exits or `limit` passes (false).
    fn ready(&mut self, limit: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(g) = &mut self.gw {
                if let Ok(Some(_)) = g.child.try_wait() {
                    return false;
                }
            }
            if http_get(self.http, "/healthz", Duration::from_millis(500))
                .is_ok_and(|(s, _)| s == 200)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn start(&mut self) -> Result<(), String> {
        self.spawn()?;
        if self.ready(Duration::from_secs(10)) {
            Ok(())
        } else {
            Err(format!("the gateway did not come up (log: gateway-{}.log)", self.starts))
        }
    }

    fn pid(&self) -> u32 {
        self.gw.as_ref().map_or(0, |g| g.pid)
    }

    fn alive(&mut self) -> bool {
        self.gw.as_mut().is_some_and(|g| matches!(g.child.try_wait(), Ok(None)))
    }

    fn signal(&self, sig: i32) {
        if let Some(g) = &self.gw {
            // The pid is our own child's, not reaped yet.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(g.pid as i32).expect("a child's pid"),
                rustix::process::Signal::from_named_raw(sig).expect("a signal"),
            );
        }
    }

    /// Waits up to `limit` for the gateway to exit; its status.
    fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let t0 = Instant::now();
        let g = self.gw.as_mut()?;
        loop {
            if let Ok(Some(s)) = g.child.try_wait() {
                self.gw = None;
                return Some(s);
            }
            if t0.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn metrics(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        if let Ok((200, body)) = http_get(self.http, "/metrics", Duration::from_secs(3)) {
            for l in body.lines().filter(|l| !l.starts_with('#')) {
                if let Some((k, v)) = l.rsplit_once(' ') {
                    if let Ok(v) = v.parse::<f64>() {
                        m.insert(k.to_string(), v);
                    }
                }
            }
        }
        m
    }
}

/// `fleetgate_<name>` summed over its labels.
fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    let full = format!("fleetgate_{name}");
    m.iter()
        .filter(|(k, _)| {
            k.strip_prefix(&full).is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
        })
        .map(|(_, v)| v)
        .sum()
}

/// The `field`th word of the first line of `/proc/PID/FILE` that starts with `key`.
fn proc_field<T: std::str::FromStr>(pid: u32, file: &str, key: &str, field: usize) -> Option<T> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).ok()?;
    s.lines().find(|l| l.starts_with(key))?.split_whitespace().nth(field)?.parse().ok()
}

fn proc_rss_kib(pid: u32) -> u64 {
    proc_field(pid, "status", "VmRSS:", 1).unwrap_or(0)
}

fn proc_fds(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn proc_nofile(pid: u32) -> usize {
    proc_field(pid, "limits", "Max open files", 3).unwrap_or(1024)
}

/// A plain HTTP/1.1 GET with a close: (status, body).
fn http_get(addr: SocketAddr, path: &str, limit: Duration) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

// ------------------------------------------------------------------------------------------
// Canaries.

#[derive(Debug)]
struct CanaryShared {
    window: Instant,
    last: [Option<Instant>; 2],
    worst: [Duration; 2],
    /// What happened to the canaries, and how often.
    events: Vec<(String, u32)>,
}

impl CanaryShared {
    fn reset(&mut self) {
        self.window = Instant::now();
        self.worst = [Duration::ZERO; 2];
        self.events.clear();
    }

    /// Worst gap per canary since the reset, a gap still open included.
    fn read(&self) -> [Duration; 2] {
        let now = Instant::now();
        let mut w = self.worst;
        for (w, last) in w.iter_mut().zip(self.last) {
            let from = last.map_or(self.window, |l| l.max(self.window));
            *w = (*w).max(now.saturating_duration_since(from));
        }
        w
    }
}

fn canary_thread(target: Target, shared: Arc<Mutex<CanaryShared>>, stop: Arc<AtomicBool>) {
    let clock = Clock::new();
    let make = |k: usize| {
        if k == 0 {
            Dev::udp(&clock, target, Ipv4Addr::new(127, 0, 0, 2), "CANARY-UDP", "canary-udp", PW)
        } else {
            Dev::tcp(&clock, target, Ipv4Addr::new(127, 0, 0, 3), "canary-tcp", PW)
        }
    };
    let mut devs = [make(0), make(1)];
    let mut born = [Instant::now(); 2];
    let mut next_echo = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        for k in 0..2 {
            let before = devs[k].replies;
            devs[k].step(&clock);
            if devs[k].replies > before {
                let t = devs[k].last_reply.unwrap_or_else(Instant::now);
                let mut s = shared.lock().expect("canary lock");
                let from = s.last[k].map_or(s.window, |l| l.max(s.window));
                let gap = t.saturating_duration_since(from);
                s.worst[k] = s.worst[k].max(gap);
                s.last[k] = Some(t);
            }
            // A canary that ended, never got on, or hears nothing for 3 s starts over.
            let d = &devs[k];
            let quiet_since = d.last_reply.or(d.logged_on).unwrap_or(born[k]);
            let why = if let Some((reason, text, _)) = &d.ended {
                Some(format!("ended: {reason:?} {text}"))
            } else if d.state() != DeviceState::Active && born[k].elapsed() > Duration::from_secs(6)
            {
                Some(format!("not logged on after 6 s ({:?})", d.state()))
            } else if d.state() == DeviceState::Active
                && quiet_since.elapsed() > Duration::from_secs(3)
            {
                Some("no echo reply for 3 s".to_string())
            } else {
                None
            };
            // At most one new attempt per 250 ms (a gateway being restarted refuses connects).
            if let Some(why) = why.filter(|_| born[k].elapsed() > Duration::from_millis(250)) {
                let name = if k == 0 { "udp" } else { "tcp" };
                let event = format!("{name} canary {why}");
                let mut s = shared.lock().expect("canary lock");
                match s.events.iter_mut().find(|(e, _)| *e == event) {
                    Some((_, n)) => *n += 1,
                    None => s.events.push((event, 1)),
                }
                drop(s);
                devs[k] = make(k);
                born[k] = Instant::now();
            }
        }
        if Instant::now() >= next_echo {
            for d in &mut devs {
                d.send_echo(&clock);
            }
            next_echo += Duration::from_millis(100);
            if next_echo < Instant::now() {
                next_echo = Instant::now() + Duration::from_millis(100);
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    for d in &mut devs {
        d.logout(&clock);
        d.step(&clock);
    }
}

// ------------------------------------------------------------------------------------------
// Wire helpers.

fn encode(seq: i64, body: Body<'_>) -> Vec<u8> {
    let m = Message { header: Header { seq, ..Header::default() }, body };
    let mut b = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut b).expect("encode");
    b.truncate(n);
    b
}

fn datagram(session_id: u64, msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    write_prefix(&mut b, session_id);
    for m in msgs {
        b.extend_from_slice(m);
    }
    b
}

fn connection_request(uid: &str, nonce: u64) -> Vec<u8> {
    let body = Body::ConnectionRequest {
        device_uid: DeviceUid::new(uid.as_bytes()).expect("uid"),
        client_nonce: nonce,
        client_version: 1,
    };
    datagram(0, &[encode(0, body)])
}

fn registration_request(uid: &str, nonce: u64, cookie: [u8; 32]) -> Vec<u8> {
    let body = Body::RegistrationRequest {
        device_uid: DeviceUid::new(uid.as_bytes()).expect("uid"),
        client_nonce: nonce,
        cookie,
    };
    datagram(0, &[encode(0, body)])
}

fn logon(user: &str, pw: &str) -> Vec<u8> {
    encode(
        1,
        Body::LogonRequest {
            username: Username::new(user.as_bytes()).expect("user"),
            password: Password::new(pw.as_bytes()).expect("password"),
            reset_seq_num: true,
        },
    )
}

/// A few random byte flips, insertions, truncations or extensions of `base`.
fn mutate(base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rand_u32() % 4 {
        let r = rand_u32();
        match r % 6 {
            0 | 1 if !v.is_empty() => {
                let i = (rand_u32() as usize) % v.len();
                v[i] = rand_u32() as u8;
            }
            2 if !v.is_empty() => {
                let i = (rand_u32() as usize) % v.len();
                v[i] ^= 1 << (r % 8);
            }
            3 => v.truncate((rand_u32() as usize) % (v.len() + 1)),
            4 => v.extend((0..rand_u32() % 64).map(|_| rand_u32() as u8)),
            _ => {
                let i = (rand_u32() as usize) % (v.len() + 1);
                v.insert(i, rand_u32() as u8);
            }
        }
    }
    v
}

fn random_bytes(max: usize) -> Vec<u8> {
    (0..(rand_u32() as usize) % (max + 1)).map(|_| rand_u32() as u8).collect()
}

/// The i-th attacker address: 127.<net>.<i / 250>.<i % 250 + 1>.
fn attacker_ip(net: u8, i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, net, (i / 250) as u8, (i % 250) as u8 + 1)
}

/// Stateless request/reply traffic from a pool of sockets. Socket `i` sends datagrams of one
/// length only, `lens[i]` (what `make` builds is cut or zero-padded to it), so every reply it
/// gets is measured against the exact size of the request that caused it. A socket sends its
/// next request when the last was answered or `patience` has passed.
struct Prober {
    socks: Vec<UdpSocket>,
    lens: Vec<usize>,
    patience: Duration,
    last: Vec<Option<Instant>>,
    sent: u64,
    sent_bytes: u64,
    replies: u64,
    reply_bytes: u64,
    max_ratio: f64,
}

impl Prober {
    /// `n` sockets on 127.<net>.x.y; with `fixed`, every request is exactly that long,
    /// otherwise lengths spread over 1..=1500: a quarter exactly `common`, a quarter within
    /// 100..=200.
    fn new(net: u8, n: usize, patience: Duration, fixed: Option<usize>, common: usize) -> Self {
        let socks: Vec<UdpSocket> =
            (0..n).map(|i| udp_from(attacker_ip(net, i)).expect("bind")).collect();
        let lens = (0..n)
            .map(|i| {
                fixed.unwrap_or(match i % 4 {
                    0 => 1 + (rand_u32() as usize) % 99,
                    1 => 201 + (rand_u32() as usize) % 1300,
                    2 => common,
                    _ => 100 + (rand_u32() as usize) % 101,
                })
            })
            .collect();
        Self {
            last: vec![None; socks.len()],
            socks,
            lens,
            patience,
            sent: 0,
            sent_bytes: 0,
            replies: 0,
            reply_bytes: 0,
            max_ratio: 0.0,
        }
    }

    /// Reads every reply there is, then sends `make(i)` from every socket `i` that may send.
    fn round(&mut self, to: SocketAddr, make: &mut dyn FnMut(usize) -> Vec<u8>) {
        let mut buf = [0u8; 4096];
        let now = Instant::now();
        for (i, s) in self.socks.iter().enumerate() {
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                self.replies += 1;
                self.reply_bytes += n as u64;
                self.max_ratio = self.max_ratio.max(n as f64 / self.lens[i] as f64);
                self.last[i] = None;
            }
            if self.last[i].is_none_or(|t| now.duration_since(t) > self.patience) {
                let mut d = make(i);
                d.resize(self.lens[i], 0);
                if s.send_to(&d, to).is_ok() {
                    self.last[i] = Some(now);
                    self.sent += 1;
                    self.sent_bytes += d.len() as u64;
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------------------
// The run.

/// Runs the cases; true when every verdict passed.
pub fn run(opts: Options) -> Result<bool, String> {
    std::fs::create_dir_all(&opts.out).map_err(|e| e.to_string())?;
    let creds = opts.out.join("credentials");
    let _ = std::fs::remove_file(&creds);
    let mut users: Vec<(String, &str)> = vec![
        ("canary-udp".into(), PW),
        ("canary-tcp".into(), PW),
        ("fleet".into(), PW),
        ("fresh".into(), PW),
        ("fuzzer".into(), PW),
        ("slowpoke".into(), PW),
        ("resender".into(), PW),
    ];
    for k in 1..=4 {
        users.push((format!("victim{k}"), VICTIM_PW));
    }
    for k in 0..200 {
        users.push((format!("fleet-t{k}"), PW));
    }
    for (u, p) in &users {
        crate::tools::passwd::add_user(&creds, u, p.as_bytes())?;
    }
    let p = opts.base_port;
    let target = Target {
        handshake: SocketAddr::from(([127, 0, 0, 1], p)),
        tcp: SocketAddr::from(([127, 0, 0, 1], p + 1)),
    };
    let canary = Arc::new(Mutex::new(CanaryShared {
        window: Instant::now(),
        last: [None; 2],
        worst: [Duration::ZERO; 2],
        events: Vec::new(),
    }));
    let mut ctx = Ctx {
        creds,
        target,
        session_port: p + 2,
        http: SocketAddr::from(([127, 0, 0, 1], p + 9)),
        gw: None,
        starts: 0,
        canary: canary.clone(),
        stop: Arc::new(AtomicBool::new(false)),
        opts,
    };
    ctx.start()?;
    let stop = ctx.stop.clone();
    let canaries = std::thread::Builder::new()
        .name("canaries".into())
        .spawn(move || canary_thread(target, canary, stop))
        .map_err(|e| e.to_string())?;
    // The canaries log on.
    let t0 = Instant::now();
    while ctx.canary.lock().expect("lock").last.iter().any(Option::is_none) {
        if t0.elapsed() > Duration::from_secs(15) {
            return Err(format!("the canaries did not log on: {:?}", ctx.canary.lock()));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    type CaseFn = fn(&mut Ctx, &mut CaseResult);
    let cases: [(&'static str, &'static str, CaseFn); 19] = [
        ("baseline", "canaries echo undisturbed", case_baseline),
        (
            "handshake_fuzz",
            "rule 2/12: garbage dropped, no reply larger than its request",
            case_handshake_fuzz,
        ),
        (
            "session_fuzz",
            "rule 12: garbage dropped whole and counted, sessions unharmed",
            case_session_fuzz,
        ),
        (
            "connreq_flood",
            "rule 2: stateless, rate-limited per source, no amplification",
            case_connreq_flood,
        ),
        ("forged_registration", "rule 2: a bad cookie allocates nothing", case_forged_registration),
        (
            "forged_attach",
            "rule 9: a known deviceUid without credentials displaces nobody",
            case_forged_attach,
        ),
        (
            "datagram_rule12",
            "rule 12: oversized or partly malformed datagrams dropped whole",
            case_datagram_rule12,
        ),
        (
            "slowloris",
            "rule 12: a prompt logon gets in within 1 s under idle connections",
            case_slowloris,
        ),
        (
            "slowloris_reconnect",
            "rule 12: a prompt logon gets in within 4 s under a connect storm",
            case_slowloris_reconnect,
        ),
        (
            "brute_one_address",
            "rule 11: an address is checked at most max_failures times",
            case_brute_one,
        ),
        (
            "brute_one_24",
            "rule 11: a /24 is checked at most max_network_failures times",
            case_brute_24,
        ),
        (
            "brute_many",
            "rule 11: one username slowed across networks, its owner not locked out",
            case_brute_many,
        ),
        (
            "brute_collision",
            "rule 11: a refused address stays refused after 300 others fail",
            case_brute_collision,
        ),
        (
            "slow_reader",
            "issue 3: a reader that stops is logged out, others unharmed",
            case_slow_reader,
        ),
        (
            "resend_abuse",
            "rule 7: bad ranges rejected, resends paced, others unharmed",
            case_resend_abuse,
        ),
        (
            "http_abuse",
            "ops: /metrics answers within 1 s under slow and huge headers",
            case_http_abuse,
        ),
        (
            "sigkill_restart",
            "issue 9.5: an immediate restart after SIGKILL binds and serves",
            case_sigkill,
        ),
        (
            "sigterm_under_load",
            "drain: every device gets LoggedOut within drain_timeout_ms",
            case_sigterm,
        ),
        ("final", "canaries back and echoing after everything", case_baseline),
    ];
    let mut results = Vec::new();
    for (name, rule, f) in cases {
        if !ctx.opts.cases.is_empty() && !ctx.opts.cases.iter().any(|c| c == name) {
            continue;
        }
        if !ctx.alive() {
            eprintln!("chaos: the gateway is down before {name}; starting it again");
            ctx.start()?;
        }
        let mut r = CaseResult { name, rule, ..CaseResult::default() };
        let before = ctx.metrics();
        r.rss_before_kib = proc_rss_kib(ctx.pid());
        r.fds_before = proc_fds(ctx.pid());
        ctx.canary.lock().expect("lock").reset();
        let t0 = Instant::now();
        eprintln!("chaos: {name} ...");
        f(&mut ctx, &mut r);
        r.seconds = t0.elapsed().as_secs_f64();
        {
            let c = ctx.canary.lock().expect("lock");
            let [u, t] = c.read();
            r.gap_udp_ms = u.as_secs_f64() * 1000.0;
            r.gap_tcp_ms = t.as_secs_f64() * 1000.0;
            r.canary_events = c.events.iter().map(|(e, n)| format!("{e} (x{n})")).collect();
        }
        let restart = matches!(name, "sigkill_restart" | "sigterm_under_load");
        if !ctx.alive() {
            r.pass = false;
            r.detail.push_str("; the gateway DIED");
        } else {
            // Snapshots are published once a second.
            std::thread::sleep(Duration::from_millis(1100));
        }
        let after = ctx.metrics();
        r.rss_after_kib = proc_rss_kib(ctx.pid());
        r.fds_after = proc_fds(ctx.pid());
        let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
        for k in keys {
            let d = after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
            let interesting = !k.contains("_ns")
                && !k.contains("bytes_")
                && !k.contains("datagrams_")
                && !k.contains("messages_")
                && !k.contains("heartbeats")
                && !k.contains("cycle")
                && !k.contains("_info");
            if d != 0.0 && interesting && !restart {
                r.counters.push((k.trim_start_matches("fleetgate_").to_string(), d));
            }
        }
        if !restart {
            let worst = r.gap_udp_ms.max(r.gap_tcp_ms);
            if worst > ctx.opts.max_gap_ms as f64 {
                r.pass = false;
                r.detail
                    .push_str(&format!("; canary gap {worst:.0} ms > {} ms", ctx.opts.max_gap_ms));
            }
            if !r.canary_events.is_empty() {
                r.pass = false;
                r.detail.push_str("; a canary lost its session");
            }
        }
        if r.max_ratio.is_some_and(|x| x > 1.0) {
            r.pass = false;
            r.detail.push_str("; a reply larger than its request");
        }
        eprintln!(
            "chaos: {name}: {} ({:.1} s) {}",
            if r.pass { "pass" } else { "FAIL" },
            r.seconds,
            r.detail
        );
        results.push(r);
    }
    ctx.stop.store(true, Ordering::Relaxed);
    let _ = canaries.join();
    if ctx.alive() {
        ctx.signal(libc::SIGTERM);
        if ctx.wait_exit(Duration::from_secs(5)).is_none() {
            ctx.signal(libc::SIGKILL);
            let _ = ctx.wait_exit(Duration::from_secs(5));
        }
    }
    print_table(&results, &ctx.opts);
    write_json(&results, &ctx.opts)?;
    Ok(results.iter().all(|r| r.pass))
}

fn print_table(results: &[CaseResult], opts: &Options) {
    println!();
    println!(
        "{:<20} {:>6} {:>9} {:>9} {:>15} {:>11} {:>9} {:>6}  rule / detail",
        "case", "secs", "gap udp", "gap tcp", "rss KiB", "fds", "requests", "ratio"
    );
    for r in results {
        println!(
            "{:<20} {:>6.1} {:>7.0}ms {:>7.0}ms {:>7}>{:<7} {:>5}>{:<5} {:>9} {:>6} {} {}\n{:<20} {}",
            r.name,
            r.seconds,
            r.gap_udp_ms,
            r.gap_tcp_ms,
            r.rss_before_kib,
            r.rss_after_kib,
            r.fds_before,
            r.fds_after,
            r.requests,
            r.max_ratio.map_or("-".to_string(), |x| format!("{x:.2}")),
            if r.pass { "PASS" } else { "FAIL" },
            r.rule,
            "",
            r.detail.trim_start_matches("; "),
        );
        if !r.counters.is_empty() {
            let c: Vec<String> = r.counters.iter().map(|(k, v)| format!("{k} +{v}")).collect();
            println!("{:<20} counters: {}", "", c.join(", "));
        }
        for e in &r.canary_events {
            println!("{:<20} canary: {e}", "");
        }
    }
    let failed = results.iter().filter(|r| !r.pass).count();
    println!(
        "chaos ({}): {} cases, {} failed; canary gap limit {} ms; results in {}",
        if opts.short { "short" } else { "full" },
        results.len(),
        failed,
        opts.max_gap_ms,
        opts.out.display()
    );
}

fn write_json(results: &[CaseResult], opts: &Options) -> Result<(), String> {
    let cases: Vec<serde_json::Value> = results
        .iter()
        .map(|r| {
            serde_json::json!({
                "case": r.name,
                "rule": r.rule,
                "pass": r.pass,
                "detail": r.detail.trim_start_matches("; "),
                "seconds": r.seconds,
                "canary_worst_gap_ms": {"udp": r.gap_udp_ms, "tcp": r.gap_tcp_ms},
                "canary_events": r.canary_events,
                "rss_kib": {"before": r.rss_before_kib, "after": r.rss_after_kib},
                "fds": {"before": r.fds_before, "after": r.fds_after},
                "requests": r.requests,
                "max_reply_request_ratio": r.max_ratio,
                "counters": r.counters.iter().cloned().collect::<BTreeMap<String, f64>>(),
            })
        })
        .collect();
    let doc = serde_json::json!({
        "short": opts.short,
        "io": opts.io,
        "max_gap_ms": opts.max_gap_ms,
        "host_cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "pass": results.iter().all(|r| r.pass),
        "cases": cases,
    });
    let path = opts.out.join("chaos.json");
    std::fs::write(&path, serde_json::to_string_pretty(&doc).expect("json"))
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// The case's length: `full` seconds, or `short` with `--short`.
fn secs(ctx: &Ctx, full: f64, short: f64) -> Duration {
    Duration::from_secs_f64(if ctx.opts.short { short } else { full })
}

fn fail(r: &mut CaseResult, why: impl Into<String>) {
    r.pass = false;
    r.detail.push_str("; ");
    r.detail.push_str(&why.into());
}

// ------------------------------------------------------------------------------------------
// Cases.

fn case_baseline(ctx: &mut Ctx, r: &mut CaseResult) {
    std::thread::sleep(secs(ctx, 5.0, 2.0));
    r.pass = true;
}

fn case_handshake_fuzz(ctx: &mut Ctx, r: &mut CaseResult) {
    let (limit, count) = (secs(ctx, 30.0, 4.0), if ctx.opts.short { 20_000 } else { 200_000 });
    let mut p = Prober::new(20, 1024, Duration::from_millis(50), None, 136);
    let valid = connection_request("FUZZ-HS", 7);
    let t0 = Instant::now();
    while t0.elapsed() < limit && p.sent < count {
        p.round(ctx.target.handshake, &mut |_| match rand_u32() % 4 {
            0 => random_bytes(1500),
            1 => {
                let mut d = random_bytes(200);
                d.splice(0..d.len().min(8), [0u8; 8]);
                d
            }
            _ => mutate(&valid),
        });
    }
    r.requests = p.sent;
    r.max_ratio = Some(p.max_ratio);
    r.pass = true;
    r.detail = format!(
        "{} sent ({} B), {} replies ({} B)",
        p.sent, p.sent_bytes, p.replies, p.reply_bytes
    );
}

fn case_session_fuzz(ctx: &mut Ctx, r: &mut CaseResult) {
    let (limit, count) = (secs(ctx, 30.0, 4.0), if ctx.opts.short { 10_000 } else { 100_000 });
    let to = SocketAddr::from(([127, 0, 0, 1], ctx.session_port));
    // A logged-on attacker whose own session's datagrams are mutated too.
    let clock = Clock::new();
    let Some(mut me) = udp_logged_on(ctx, &clock, attacker_ip(21, 0), "FUZZER") else {
        fail(r, "the fuzzing device did not log on");
        return;
    };
    let sid = me[0].session_id();
    let echo = datagram(sid, &[encode(2, Body::App { type_id: 150, body: b"0123456789abcdef" })]);
    let reg = registration_request("FUZZER-2", 9, [7; 32]);
    let own = udp_from(attacker_ip(21, 1)).expect("bind");
    let mut p = Prober::new(22, 512, Duration::from_millis(50), None, 96);
    let t0 = Instant::now();
    let mut own_sent = 0u64;
    while t0.elapsed() < limit && p.sent + own_sent < count {
        p.round(to, &mut |_| match rand_u32() % 3 {
            0 => random_bytes(1500),
            1 => {
                let mut d = random_bytes(300);
                let id = u64::from(rand_u32()) << 32 | u64::from(rand_u32());
                d.splice(0..d.len().min(8), id.to_le_bytes());
                d
            }
            _ => mutate(&reg),
        });
        // The session's own prefix, mutated, from another address and from its own.
        for _ in 0..4 {
            let _ = own.send_to(&mutate(&echo), to);
            own_sent += 1;
        }
        let mut b = [0u8; 2048];
        while own.recv_from(&mut b).is_ok() {}
        for d in &mut me {
            d.step(&clock);
        }
    }
    r.requests = p.sent + own_sent;
    r.max_ratio = Some(p.max_ratio);
    r.pass = true;
    r.detail = format!(
        "{} stateless-path datagrams ({} replies), {} mutated datagrams with a live session id",
        p.sent, p.replies, own_sent
    );
}

fn case_connreq_flood(ctx: &mut Ctx, r: &mut CaseResult) {
    let limit = secs(ctx, 10.0, 3.0);
    let mut p = Prober::new(23, 1000, Duration::from_millis(250), Some(136), 136);
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < limit && p.sent < 2_000_000 {
        p.round(ctx.target.handshake, &mut |i| {
            n += 1;
            connection_request(&format!("FLOOD-{i}"), n)
        });
    }
    r.requests = p.sent;
    r.max_ratio = Some(p.max_ratio);
    r.pass = true;
    let rate = p.sent as f64 / t0.elapsed().as_secs_f64();
    r.detail = format!(
        "{} ConnectionRequests from 1000 addresses ({rate:.0}/s), {} replies",
        p.sent, p.replies
    );
    let growth = r.rss_after_kib.saturating_sub(r.rss_before_kib);
    if growth > 32 * 1024 {
        fail(r, format!("RSS grew {growth} KiB"));
    }
}

fn case_forged_registration(ctx: &mut Ctx, r: &mut CaseResult) {
    let limit = secs(ctx, 10.0, 3.0);
    let to = SocketAddr::from(([127, 0, 0, 1], ctx.session_port));
    let before = ctx.metrics();
    let mut p = Prober::new(24, 1000, Duration::from_millis(250), Some(96), 96);
    let t0 = Instant::now();
    while t0.elapsed() < limit && p.sent < 2_000_000 {
        p.round(to, &mut |i| {
            let mut cookie = [0u8; 32];
            cookie.iter_mut().for_each(|b| *b = rand_u32() as u8);
            registration_request(&format!("FORGED-{i}"), u64::from(rand_u32()), cookie)
        });
    }
    r.requests = p.sent;
    r.max_ratio = Some(p.max_ratio);
    std::thread::sleep(Duration::from_millis(1100));
    let after = ctx.metrics();
    let sessions = |m: &BTreeMap<String, f64>| metric(m, "sessions");
    let registered = metric(&after, "handshakes_registered_total")
        - metric(&before, "handshakes_registered_total");
    r.pass = true;
    r.detail = format!(
        "{} forged RegistrationRequests, {} replies; sessions {} -> {}",
        p.sent,
        p.replies,
        sessions(&before),
        sessions(&after)
    );
    if registered > 0.0 {
        fail(r, format!("{registered} forged registrations accepted"));
    }
}

fn case_forged_attach(ctx: &mut Ctx, r: &mut CaseResult) {
    // The UDP canary's deviceUid, from another address, with no credentials: the handshake and
    // registration complete, and the attacker never logs on.
    let sock = udp_from(attacker_ip(26, 1)).expect("bind");
    let _ = sock.set_nonblocking(false);
    let _ = sock.set_read_timeout(Some(Duration::from_millis(500)));
    let nonce = u64::from(rand_u32());
    let mut got = Vec::new();
    let mut accept = None;
    let mut buf = [0u8; 2048];
    for _ in 0..6 {
        let _ = sock.send_to(&connection_request("CANARY-UDP", nonce), ctx.target.handshake);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Some(Body::ConnectionAccept { session_port, cookie, .. }) = first_body(&buf[..n])
            {
                accept = Some((session_port, cookie));
                break;
            }
        }
    }
    let Some((port, cookie)) = accept else {
        fail(r, "no ConnectionAccept for the forged attach");
        return;
    };
    let to = SocketAddr::from(([127, 0, 0, 1], port));
    let _ = sock.send_to(&registration_request("CANARY-UDP", nonce, cookie), to);
    let t0 = Instant::now();
    while t0.elapsed() < secs(ctx, 5.0, 3.0) {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            if let Some(t) = first_body(&buf[..n]).and_then(|b| b.message_type()) {
                got.push(format!("{t:?}"));
            }
        }
    }
    got.dedup();
    r.requests = 2;
    r.pass = true;
    r.detail = format!("the attacker registered as CANARY-UDP and got {got:?}, never logging on");
}

/// The first message of a datagram from the gateway.
fn first_body(dg: &[u8]) -> Option<Body<'_>> {
    let d = crate::protocol::Datagram::parse(dg).ok()?;
    let f = d.frames().next()?.ok()?;
    Some(Message::decode_frame(f).ok()?.body)
}

/// One UDP device (user "fuzzer") from `ip`, logged on within 10 s; `None` if it did not.
fn udp_logged_on(ctx: &Ctx, clock: &Clock, ip: Ipv4Addr, uid: &str) -> Option<Vec<Dev>> {
    let mut d = vec![Dev::udp(clock, ctx.target, ip, uid, "fuzzer", PW)];
    drive_until(&mut d, clock, Duration::from_secs(10), |d| d[0].state() == DeviceState::Active)
        .then_some(d)
}

fn case_datagram_rule12(ctx: &mut Ctx, r: &mut CaseResult) {
    let clock = Clock::new();
    let Some(mut d) = udp_logged_on(ctx, &clock, attacker_ip(25, 1), "RULE12") else {
        fail(r, "the device did not log on");
        return;
    };
    let to = SocketAddr::from(([127, 0, 0, 1], ctx.session_port));
    let (sid, seq) = (d[0].session_id(), d[0].next_out());
    // A valid echo request with 8 bytes of garbage after it.
    let mut tail = datagram(sid, &[encode(seq, Body::App { type_id: 150, body: b"rule12-a" })]);
    tail.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4]);
    // 30 valid echo requests: 1,688 bytes, over udp.max_datagram (1,400).
    let msgs: Vec<Vec<u8>> = (0..30)
        .map(|k| encode(seq + k, Body::App { type_id: 150, body: &[k as u8; 24] }))
        .collect();
    let big = datagram(sid, &msgs);
    let mut answered = Vec::new();
    for (what, dg) in [("garbage after a valid message", &tail), ("1,688-byte datagram", &big)] {
        let before = d[0].replies;
        d[0].send_raw(to, dg);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(1500) {
            d[0].step(&clock);
            std::thread::sleep(Duration::from_millis(2));
        }
        answered.push((what, d[0].replies - before));
    }
    r.requests = 2;
    r.pass = answered.iter().all(|(_, n)| *n == 0);
    r.detail = format!("echo replies to the datagrams that must be dropped whole: {answered:?}");
}

fn case_brute_collision(ctx: &mut Ctx, r: &mut CaseResult) {
    let a = Ipv4Addr::new(127, 44, 0, 1);
    let (checked, refused, _) = guesses(ctx, "victim4", &[a], 8);
    // 300 other addresses, each in its own /24, fail once each (unknown usernames).
    let others = if ctx.opts.short { 300 } else { 600 };
    let mut failed = 0;
    for i in 0..others {
        let ip = Ipv4Addr::new(127, 45 + (i / 250) as u8, (i % 250) as u8, 1);
        if one_logon(ctx.target.tcp, ip, &format!("nobody{i}"), "x").as_deref()
            == Some("invalid credentials")
        {
            failed += 1;
        }
    }
    // The refused address, now with the right password: still refused within the window.
    let again = one_logon(ctx.target.tcp, a, "victim4", VICTIM_PW);
    r.requests = (8 + others + 1) as u64;
    r.pass = again.as_deref() == Some("too many failed logons");
    r.detail = format!(
        "8 guesses from A: {checked} checked, {refused} refused; then {failed} of {others} other \
         addresses failed once; A with the right password: {again:?}"
    );
}

/// The gateway's open-files limit, and how many idle connections to open: `--slowloris`, or
/// 2,000 in the short run, or up to the limit less 1,000 (at most 19,000).
fn slowloris_size(ctx: &Ctx) -> (usize, usize) {
    let limit = proc_nofile(ctx.pid());
    let want = if ctx.opts.slowloris > 0 {
        ctx.opts.slowloris
    } else if ctx.opts.short {
        2_000
    } else {
        limit.saturating_sub(1_000).min(19_000)
    };
    (limit, want)
}

fn case_slowloris(ctx: &mut Ctx, r: &mut CaseResult) {
    let (limit, want) = slowloris_size(ctx);
    r.requests = want as u64;
    // The target: idle connections opened and held, a fresh logon within 1 s.
    let bound = Duration::from_secs(1);
    let p = slowloris_phase(ctx, want, false, bound);
    r.pass = p.ok == p.tries && p.held > 0;
    r.detail = p.describe(want, limit, bound);
}

fn case_slowloris_reconnect(ctx: &mut Ctx, r: &mut CaseResult) {
    let (limit, want) = slowloris_size(ctx);
    r.requests = want as u64;
    // The same attacker reopening every connection the gateway closes, as fast as it can: a
    // connect storm that fills the kernel's listen backlog. A SYN dropped there is retried after
    // 1 s and 3 s, so the bound is 4 s.
    let bound = Duration::from_secs(4);
    let p = slowloris_phase(ctx, want, true, bound);
    // The attack was in effect if connections were held or the gateway closed some that the
    // attacker then reopened: on a fast machine every connection can be evicted and reopened
    // between two of the worker's 250 ms samples, so that none is seen open at a sample.
    r.pass = p.ok == p.tries && (p.held > 0 || p.reopened > 0);
    r.detail = p.describe(want, limit, bound);
}

struct Phase {
    held: usize,
    /// Connections the gateway closed and the attacker reopened (reconnect mode).
    reopened: u64,
    fds: u64,
    ok: usize,
    tries: usize,
    worst: Duration,
    /// How the fresh logons that failed ended, and how often.
    failures: BTreeMap<String, u32>,
}

impl Phase {
    fn describe(&self, want: usize, limit: usize, bound: Duration) -> String {
        format!(
            "{} of {want} idle connections open at once, {} reopened (gateway nofile {limit}, \
             gateway fds {}); {}/{} fresh logons within {} s, slowest {:.0} ms; failures {:?}",
            self.held,
            self.reopened,
            self.fds,
            self.ok,
            self.tries,
            bound.as_secs(),
            self.worst.as_secs_f64() * 1000.0,
            self.failures
        )
    }
}

fn slowloris_phase(ctx: &mut Ctx, want: usize, reconnect: bool, bound: Duration) -> Phase {
    let hold = secs(ctx, 20.0, 5.0);
    let per = 5_000;
    let mut workers = Vec::new();
    let mut left = want;
    let mut k = 0u8;
    let base = if reconnect { 36 } else { 30 };
    while left > 0 {
        let n = left.min(per);
        // The worker is this binary (the gateway under test may be another one).
        let me = std::env::current_exe().unwrap_or_else(|_| ctx.opts.bin.clone());
        let child = Command::new(me)
            .args([
                "chaos-hold",
                "--tcp",
                &ctx.target.tcp.to_string(),
                "--conns",
                &n.to_string(),
                "--seconds",
                &format!("{}", hold.as_secs_f64() + 8.0),
                "--net",
                &(base + k).to_string(),
                "--reconnect",
                if reconnect { "true" } else { "false" },
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn();
        if let Ok(c) = child {
            workers.push(c);
        }
        left -= n;
        k += 1;
    }
    // Let them open their connections, then log on fresh clients while they are held.
    std::thread::sleep(secs(ctx, 6.0, 2.0));
    let fds = proc_fds(ctx.pid());
    let clock = Clock::new();
    let t0 = Instant::now();
    let mut p = Phase {
        held: 0,
        reopened: 0,
        fds,
        ok: 0,
        tries: 0,
        worst: Duration::ZERO,
        failures: BTreeMap::new(),
    };
    while t0.elapsed() < hold {
        p.tries += 1;
        let ts = Instant::now();
        let mut d = vec![Dev::tcp(&clock, ctx.target, Ipv4Addr::new(127, 0, 0, 9), "fresh", PW)];
        let on = drive_until(&mut d, &clock, Duration::from_secs(5), |d| {
            d[0].state() == DeviceState::Active || d[0].ended.is_some()
        }) && d[0].state() == DeviceState::Active;
        let took = ts.elapsed();
        p.worst = p.worst.max(took);
        if on && took <= bound {
            p.ok += 1;
        } else {
            let why = match &d[0].ended {
                Some((reason, text, _)) => format!("{reason:?} {text}"),
                None if on => "slow".to_string(),
                None => format!("{:?} after 5 s", d[0].state()),
            };
            *p.failures.entry(why).or_default() += 1;
        }
        d[0].logout(&clock);
        let _ = drive_until(&mut d, &clock, Duration::from_secs(1), |d| d[0].ended.is_some());
        std::thread::sleep(Duration::from_millis(300));
    }
    for mut w in workers {
        drop(w.stdin.take());
        let mut s = String::new();
        if let Some(mut o) = w.stdout.take() {
            let _ = o.read_to_string(&mut s);
        }
        let _ = w.wait();
        // The worker prints `peak N reopened M`.
        let field = |name: &str| {
            s.split_whitespace()
                .skip_while(|t| *t != name)
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
        };
        p.held += field("peak") as usize;
        p.reopened += field("reopened");
    }
    p
}

/// Wrong-password TCP logons at `user` from `sources` (each one guess per round, `rounds`
/// rounds): (checked = "invalid credentials", refused otherwise).
fn guesses(
    ctx: &Ctx,
    user: &str,
    sources: &[Ipv4Addr],
    rounds: usize,
) -> (usize, usize, Vec<String>) {
    let (mut checked, mut refused) = (0, 0);
    let mut texts = Vec::new();
    for _ in 0..rounds {
        for &ip in sources {
            match one_logon(ctx.target.tcp, ip, user, "wrong-guess") {
                Some(t) if t == "invalid credentials" => checked += 1,
                Some(t) => {
                    refused += 1;
                    if !texts.contains(&t) {
                        texts.push(t);
                    }
                }
                None => refused += 1,
            }
        }
    }
    (checked, refused, texts)
}

/// One TCP logon from `ip`: the LoggedOut text, or "logged on", or None (closed, no answer).
fn one_logon(tcp: SocketAddr, ip: Ipv4Addr, user: &str, pw: &str) -> Option<String> {
    let s = tcp_from(ip, tcp, false).ok()?;
    let mut s = TcpStream::from(s);
    s.set_nonblocking(false).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    s.write_all(&logon(user, pw)).ok()?;
    let mut d = crate::protocol::Deframer::new(4096);
    let mut buf = [0u8; 2048];
    loop {
        if let Ok(Some(f)) = d.next_frame() {
            return match Message::decode_frame(f).ok()?.body {
                Body::LoggedOut { reason } => Some(String::from_utf8_lossy(reason).into_owned()),
                Body::LogonResponse { .. } => Some("logged on".into()),
                _ => continue,
            };
        }
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => {
                d.push(&buf[..n]);
            }
        }
    }
}

fn case_brute_one(ctx: &mut Ctx, r: &mut CaseResult) {
    let n = if ctx.opts.short { 30 } else { 200 };
    let (checked, refused, texts) = guesses(ctx, "victim1", &[Ipv4Addr::new(127, 40, 0, 1)], n);
    r.requests = n as u64;
    r.pass = checked <= 5;
    r.detail =
        format!("{n} guesses from one address: {checked} checked, {refused} refused {texts:?}");
}

fn case_brute_24(ctx: &mut Ctx, r: &mut CaseResult) {
    let n = if ctx.opts.short { 60 } else { 250 };
    let ips: Vec<Ipv4Addr> =
        (0..n).map(|i| Ipv4Addr::new(127, 41, 0, (i % 250) as u8 + 1)).collect();
    let (checked, refused, texts) = guesses(ctx, "victim2", &ips, 1);
    r.requests = n as u64;
    r.pass = checked <= 20;
    r.detail = format!(
        "{n} guesses from {n} addresses of one /24: {checked} checked, {refused} refused {texts:?}"
    );
}

fn case_brute_many(ctx: &mut Ctx, r: &mut CaseResult) {
    let nets = if ctx.opts.short { 40 } else { 200 };
    // Two rounds from each of `nets` addresses, each in its own /24.
    let ips: Vec<Ipv4Addr> =
        (0..nets).map(|i| Ipv4Addr::new(127, 42 + (i / 250) as u8, (i % 250) as u8, 1)).collect();
    let (checked, refused, texts) = guesses(ctx, "victim3", &ips, 2);
    // The owner, from an address that never failed, still gets in.
    let owner = one_logon(ctx.target.tcp, Ipv4Addr::new(127, 43, 0, 7), "victim3", VICTIM_PW);
    r.requests = 2 * nets as u64;
    r.pass = checked <= nets + 10 && owner.as_deref() == Some("logged on");
    r.detail = format!(
        "{} guesses at one username from {nets} networks: {checked} checked, {refused} refused \
         {texts:?}; the owner from a clean address: {owner:?}",
        2 * nets
    );
}

fn case_slow_reader(ctx: &mut Ctx, r: &mut CaseResult) {
    let before = ctx.metrics();
    let Ok(s) = tcp_from(Ipv4Addr::new(127, 50, 0, 1), ctx.target.tcp, false) else {
        fail(r, "connect");
        return;
    };
    let _ = s.set_recv_buffer_size(4096);
    let mut s = TcpStream::from(s);
    let _ = s.set_nonblocking(false);
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    let _ = s.write_all(&logon("slowpoke", PW));
    let body = [0x42u8; 200];
    let mut sent = 0u64;
    let t0 = Instant::now();
    let limit = secs(ctx, 15.0, 6.0);
    let mut closed = 0.0;
    while t0.elapsed() < limit {
        let mut chunk = Vec::new();
        for k in 0..64 {
            chunk.extend(encode(2 + sent as i64 + k, Body::App { type_id: 120, body: &body }));
        }
        if s.write_all(&chunk).is_ok() {
            sent += 64;
        } else {
            std::thread::sleep(Duration::from_millis(50));
        }
        if sent % 4096 == 0 {
            let m = ctx.metrics();
            closed = metric(&m, "tcp_slow_reader_closed_total")
                - metric(&before, "tcp_slow_reader_closed_total");
            if closed > 0.0 {
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_millis(1100));
    let m = ctx.metrics();
    closed = closed.max(
        metric(&m, "tcp_slow_reader_closed_total")
            - metric(&before, "tcp_slow_reader_closed_total"),
    );
    r.requests = sent;
    r.pass = closed >= 1.0;
    r.detail = format!("{sent} echo requests without reading; slow-reader closes: {closed}");
}

fn case_resend_abuse(ctx: &mut Ctx, r: &mut CaseResult) {
    let Ok(s) = tcp_from(Ipv4Addr::new(127, 51, 0, 1), ctx.target.tcp, false) else {
        fail(r, "connect");
        return;
    };
    let mut s = TcpStream::from(s);
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = s.write_all(&logon("resender", PW));
    let mut seq = 2i64;
    let mut out = Vec::new();
    for k in 0..40u32 {
        out.extend(encode(seq, Body::App { type_id: 120, body: &k.to_le_bytes() }));
        seq += 1;
    }
    let _ = s.write_all(&out);
    let rounds = if ctx.opts.short { 200 } else { 2_000 };
    let mut sent_bytes = out.len();
    let mut recv_bytes = 0usize;
    let mut buf = vec![0u8; 65536];
    let t0 = Instant::now();
    let limit = secs(ctx, 20.0, 5.0);
    let mut gone = false;
    for i in 0..rounds {
        if t0.elapsed() > limit {
            break;
        }
        let (from, to) = match i % 4 {
            0 => (1, i64::MAX),     // huge
            1 => (30, 2),           // reversed
            2 => (1, 0),            // everything, repeated
            _ => (i64::MAX - 1, 0), // beyond what was sent
        };
        let m = encode(seq, Body::ResendRequest { from, to });
        seq += 1;
        sent_bytes += m.len();
        if s.write_all(&m).is_err() {
            gone = true;
            break;
        }
        if i % 16 == 0 {
            match s.read(&mut buf) {
                Ok(0) => {
                    gone = true;
                    break;
                }
                Ok(n) => recv_bytes += n,
                Err(_) => {}
            }
        }
    }
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        recv_bytes += n;
    }
    r.requests = rounds as u64;
    r.pass = true;
    r.detail = format!(
        "{rounds} ResendRequests (huge, reversed, repeated, beyond) after 40 echoes: {sent_bytes} B \
         sent, {recv_bytes} B received{}",
        if gone { ", then closed by the gateway" } else { "" }
    );
}

fn case_http_abuse(ctx: &mut Ctx, r: &mut CaseResult) {
    let slow_n = if ctx.opts.short { 50 } else { 200 };
    let many_n = if ctx.opts.short { 200 } else { 1000 };
    // Slow headers: a byte every 200 ms.
    let mut slow: Vec<TcpStream> = (0..slow_n)
        .filter_map(|i| {
            let s = tcp_from(attacker_ip(60, i), ctx.http, false).ok()?;
            let s = TcpStream::from(s);
            let mut s2 = s;
            let _ = s2.write_all(b"GET /metrics HTTP/1.1\r\n");
            Some(s2)
        })
        .collect();
    let mut worst = Duration::ZERO;
    let mut failures = 0;
    let t0 = Instant::now();
    let limit = secs(ctx, 12.0, 4.0);
    while t0.elapsed() < limit {
        for s in &mut slow {
            let _ = s.write_all(b"X");
        }
        let ts = Instant::now();
        match http_get(ctx.http, "/metrics", Duration::from_secs(5)) {
            Ok((200, _)) => {}
            _ => failures += 1,
        }
        worst = worst.max(ts.elapsed());
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(slow);
    // Many connections at once.
    let mut conns: Vec<TcpStream> = (0..many_n)
        .filter_map(|i| {
            let s = TcpStream::from(tcp_from(attacker_ip(61, i), ctx.http, false).ok()?);
            let mut s = s;
            let _ = s.set_nonblocking(false);
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
            Some(s)
        })
        .collect();
    let mut ok_many = 0;
    for s in &mut conns {
        let mut b = Vec::new();
        if s.read_to_end(&mut b).is_ok() && b.starts_with(b"HTTP/1.1 200") {
            ok_many += 1;
        }
    }
    drop(conns);
    // A huge header: refused, not buffered.
    let huge = (|| -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(&ctx.http, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_write_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nX-Huge: ")?;
        let chunk = vec![b'a'; 64 * 1024];
        for _ in 0..16 {
            if s.write_all(&chunk).is_err() {
                break;
            }
        }
        let mut b = Vec::new();
        let _ = s.read_to_end(&mut b);
        Ok(String::from_utf8_lossy(&b).lines().next().unwrap_or("(closed)").to_string())
    })()
    .unwrap_or_else(|e| format!("(error: {e})"));
    r.requests = (slow_n + many_n + 1) as u64;
    r.pass = worst <= Duration::from_secs(1) && failures == 0 && ok_many * 100 >= many_n * 99;
    r.detail = format!(
        "/metrics under {slow_n} slow-header clients: slowest {:.0} ms, {failures} failed; \
         {ok_many}/{many_n} concurrent GETs answered 200; 1 MiB header: {huge}",
        worst.as_secs_f64() * 1000.0
    );
}

fn case_sigterm(ctx: &mut Ctx, r: &mut CaseResult) {
    let (n_udp, n_tcp) = if ctx.opts.short { (100, 20) } else { (400, 100) };
    let clock = Clock::new();
    let mut devs: Vec<Dev> = (0..n_udp)
        .map(|i| {
            Dev::udp(
                &clock,
                ctx.target,
                attacker_ip(70, i % 100),
                &format!("TERM-{i}"),
                "fleet",
                PW,
            )
        })
        .collect();
    for i in 0..n_tcp {
        devs.push(Dev::tcp(&clock, ctx.target, attacker_ip(71, i), &format!("fleet-t{i}"), PW));
    }
    let on = drive_until(&mut devs, &clock, Duration::from_secs(30), |d| {
        d.iter().all(|d| d.state() == DeviceState::Active)
    });
    let active = devs.iter().filter(|d| d.state() == DeviceState::Active).count();
    if !on {
        fail(r, format!("only {active} of {} devices logged on", devs.len()));
    }
    // Keep them busy while the signal lands.
    for d in &mut devs {
        d.send_echo(&clock);
    }
    let t0 = Instant::now();
    ctx.signal(libc::SIGTERM);
    let _ = drive_until(&mut devs, &clock, Duration::from_secs(5), |d| {
        d.iter().all(|d| d.ended.is_some() || d.state() != DeviceState::Active)
    });
    let status = ctx.wait_exit(Duration::from_secs(10));
    let bound = Duration::from_millis(1500);
    let mut told = 0;
    let mut slowest = Duration::ZERO;
    for d in &devs {
        if let Some((EndReason::LoggedOut, text, at)) = &d.ended {
            if text == "gateway shutting down" {
                let took = at.saturating_duration_since(t0);
                slowest = slowest.max(took);
                if took <= bound {
                    told += 1;
                }
            }
        }
    }
    r.requests = devs.len() as u64;
    r.pass = told == active && active == devs.len() && status.is_some_and(|s| s.success());
    r.detail = format!(
        "{told} of {active} logged-on devices got LoggedOut(\"gateway shutting down\") within \
         1500 ms (slowest {:.0} ms); exit status {:?}",
        slowest.as_secs_f64() * 1000.0,
        status.map(|s| s.code())
    );
    if let Err(e) = ctx.start() {
        fail(r, format!("restart after SIGTERM: {e}"));
    }
    wait_canaries(ctx, r);
}

fn case_sigkill(ctx: &mut Ctx, r: &mut CaseResult) {
    let trials = 3;
    let mut ok = 0;
    let mut slowest = Duration::ZERO;
    for _ in 0..trials {
        ctx.signal(libc::SIGKILL);
        let _ = ctx.wait_exit(Duration::from_secs(5));
        let t0 = Instant::now();
        if ctx.spawn().is_ok() && ctx.ready(Duration::from_secs(5)) {
            ok += 1;
            slowest = slowest.max(t0.elapsed());
        }
        wait_canaries(ctx, r);
    }
    r.requests = trials;
    r.pass = ok == trials && r.detail.is_empty();
    r.detail = format!(
        "{ok}/{trials} immediate restarts after SIGKILL served /healthz (slowest {:.0} ms)",
        slowest.as_secs_f64() * 1000.0
    ) + &r.detail;
}

/// Waits until both canaries have echoed again (after a restart); notes it if they do not.
fn wait_canaries(ctx: &mut Ctx, r: &mut CaseResult) {
    let t0 = Instant::now();
    loop {
        let last = ctx.canary.lock().expect("lock").last;
        if last.iter().all(|l| l.is_some_and(|l| l > t0)) {
            return;
        }
        if t0.elapsed() > Duration::from_secs(15) {
            fail(r, "the canaries did not echo again within 15 s of the restart");
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------------------------------
// The slowloris worker.

/// `fleetgate chaos-hold`: opens `conns` TCP connections to `tcp` from 127.<net>.x.y, sends
/// nothing, holds them for `seconds` (or until stdin closes) and, with `reconnect`, reopens
/// those the gateway closes. Prints `peak N` (the most open at once, as this side sees them:
/// one the gateway closed counts until it is noticed) at the end.
pub fn hold(
    tcp: SocketAddr,
    conns: usize,
    seconds: f64,
    net: u8,
    reconnect: bool,
) -> Result<(), String> {
    let t0 = Instant::now();
    let limit = Duration::from_secs_f64(seconds);
    let stdin_closed = Arc::new(AtomicBool::new(false));
    {
        let flag = stdin_closed.clone();
        std::thread::spawn(move || {
            let mut b = [0u8; 16];
            while matches!(std::io::stdin().read(&mut b), Ok(n) if n > 0) {}
            flag.store(true, Ordering::Relaxed);
        });
    }
    let mut socks: Vec<Option<socket2::Socket>> = Vec::with_capacity(conns);
    let mut reopened = 0u64;
    for i in 0..conns {
        socks.push(tcp_from(attacker_ip(net, i % 60_000), tcp, true).ok());
        if i % 500 == 499 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let mut peak = 0;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 64];
    while t0.elapsed() < limit && !stdin_closed.load(Ordering::Relaxed) {
        let mut open = 0;
        for (i, s) in socks.iter_mut().enumerate() {
            let dead = match s {
                None => true,
                Some(sock) => match sock.recv(&mut buf) {
                    Ok(_) => true,
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                },
            };
            if dead && reconnect {
                *s = tcp_from(attacker_ip(net, i % 60_000), tcp, true).ok();
                reopened += 1;
            } else if dead {
                *s = None;
            } else {
                open += 1;
            }
        }
        peak = peak.max(open);
        std::thread::sleep(Duration::from_millis(250));
    }
    println!("peak {peak} reopened {reopened}");
    Ok(())
}
