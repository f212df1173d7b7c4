//! Helpers for the real-socket integration tests: an in-process gateway on 127.0.0.1, devices
//! driven by the device-side state machine (`Udp`, `Tcp`), raw peers that speak the wire format
//! by hand (`RawUdp`, `RawTcp`), and /metrics and /sessions scraping. Every wait is bounded.

/// `backends! { body => epoll_name, uring_name; ... }`: each body as two `#[test]`s, one per I/O
/// backend; the io_uring one runs where io_uring is usable (and fails under
/// `FLEETGATE_REQUIRE_URING=1` where it is not). Attributes before a line apply to both tests.
#[allow(unused_macros)]
macro_rules! backends {
    ($($(#[$attr:meta])* $body:ident => $epoll:ident, $uring:ident;)*) => {$(
        #[test]
        $(#[$attr])*
        fn $epoll() {
            $body("epoll");
        }

        #[test]
        $(#[$attr])*
        fn $uring() {
            if fleetgate::sim::uring_available(stringify!($uring)) {
                $body("uring");
            }
        }
    )*};
}

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use fleetgate::config::Config;
use fleetgate::ops::Server;
use fleetgate::protocol::{Body, Datagram, Deframer, DeviceUid, Header, Message, write_prefix};
use fleetgate::session::{
    Authenticator, Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, EndReason,
    OpenLogon, Transport,
};
use fleetgate::time::Clock;

/// A gateway with open logon (see [`start_with_auth`]).
pub(crate) fn start(io: &str, extra: &[&str]) -> Server {
    start_with_auth(io, extra, Arc::new(OpenLogon))
}

static NEXT_BASE: AtomicU32 = AtomicU32::new(0);

/// A gateway on 127.0.0.1 with two shards, ephemeral handshake, TCP and metrics ports, and a
/// session port range picked per call (retried when taken). `extra` overrides come last.
pub(crate) fn start_with_auth(
    io: &str,
    extra: &[&str],
    auth: Arc<dyn Authenticator + Send + Sync>,
) -> Server {
    let pid = std::process::id();
    for _ in 0..40 {
        let k = NEXT_BASE.fetch_add(1, Ordering::Relaxed);
        let base =
            20_000 + ((pid.wrapping_mul(7919).wrapping_add(k.wrapping_mul(131))) % 30_000) as u16;
        let mut set = vec![
            format!("gateway.io=\"{io}\""),
            "gateway.shards=2".into(),
            "gateway.handshake_addr=\"127.0.0.1:0\"".into(),
            "gateway.tcp_addr=\"127.0.0.1:0\"".into(),
            format!("gateway.session_port_base={base}"),
            "gateway.max_sessions_per_shard=64".into(),
            "tcp.max_connections_per_shard=64".into(),
            "observability.metrics_addr=\"127.0.0.1:0\"".into(),
        ];
        set.extend(extra.iter().map(|s| s.to_string()));
        let cfg = Config::load(None, &set).expect("config");
        match Server::start(&cfg, auth.clone()) {
            Ok(g) => return g,
            Err(e) if e.contains("session port") => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free session ports");
}

static NEXT_FIXED: AtomicU32 = AtomicU32::new(0);

/// A loopback port, free for both UDP and TCP right now, for a gateway process this test starts
/// to bind later. It lies below the kernel's ephemeral range (32768-60999), so no socket of
/// the tests running beside this one takes it in the meantime: a port bound to 0 and released
/// could be handed to any of their `bind(0)` or `connect()` calls (2,000 at once in
/// `tests/ops.rs`) before the gateway bound it. Session port ranges of [`start`] begin at
/// 20,000 and above; these come from 10,000..20,000, each at most once per process.
pub(crate) fn fixed_port() -> u16 {
    let pid = std::process::id();
    for _ in 0..10_000 {
        let k = NEXT_FIXED.fetch_add(1, Ordering::Relaxed);
        let port = 10_000 + ((pid.wrapping_mul(4099).wrapping_add(k)) % 10_000) as u16;
        let free = UdpSocket::bind(local(port)).is_ok()
            && std::net::TcpListener::bind(local(port)).is_ok();
        if free {
            return port;
        }
    }
    panic!("no free port in 10,000..20,000");
}

/// 127.0.0.1:`port`.
pub(crate) fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Calls `step` until `done` holds; fails after `limit`.
pub(crate) fn until(what: &str, limit: Duration, mut step: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !step() {
        assert!(t0.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
    }
}

/// A directory under the system temp dir, removed on drop (also when the test panics).
pub(crate) struct TempDir(pub(crate) std::path::PathBuf);

impl TempDir {
    /// A fresh, empty directory named after `what`, this process and this thread.
    pub(crate) fn new(what: &str) -> Self {
        let name =
            format!("fleetgate-it-{what}-{}-{:?}", std::process::id(), std::thread::current().id());
        let dir = std::env::temp_dir().join(name.replace(['(', ')'], ""));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create a temp dir");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A plain UDP echo thread on 127.0.0.1 (the load generator's `raw_echo` floor): every
/// datagram goes back to its sender until the echo is dropped (stopped and joined).
pub(crate) struct Echo {
    pub(crate) addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Echo {
    pub(crate) fn start() -> Self {
        let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
        echo.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        // Room for bursts while this thread waits for a CPU: the default receive buffer (a few
        // hundred small datagrams) overflowed at 2,000/s on a loaded host, and the load generator
        // counted the dropped requests as lost replies. The kernel caps it at net.core.rmem_max.
        let _ = socket2::SockRef::from(&echo).set_recv_buffer_size(8 << 20);
        let addr = echo.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !halt.load(Ordering::Relaxed) {
                if let Ok((n, from)) = echo.recv_from(&mut buf) {
                    let _ = echo.send_to(&buf[..n], from);
                }
            }
        });
        Self { addr, stop, thread: Some(thread) }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The number at `path` in the load generator's JSON summary (numbers index arrays).
pub(crate) fn json_num(json: &str, path: &[&str]) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("the summary is JSON");
    let mut at = &v;
    for p in path {
        // A number indexes an array ("steps", "0").
        let next = match p.parse::<usize>() {
            Ok(i) if at.is_array() => at.get(i),
            _ => at.get(p),
        };
        at = next.unwrap_or_else(|| panic!("no {p} in {json}"));
    }
    at.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {json}"))
}

/// A child process, killed (and reaped) on drop if it is still running, also when the test
/// panics.
pub(crate) struct ChildGuard(pub(crate) std::process::Child);

impl std::ops::Deref for ChildGuard {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for ChildGuard {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Whether `python3 -c 'import MODULE'` works. Where it does not: fails under CI (which
/// installs `pip_name`), else prints that `test` was skipped and returns false.
pub(crate) fn python_has(module: &str, pip_name: &str, test: &str) -> bool {
    let have = std::process::Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let note = format!("`python3 -c 'import {module}'` failed: pip install {pip_name}");
        assert!(std::env::var_os("CI").is_none(), "{note}");
        eprintln!("{test} SKIPPED: {note}");
    }
    have
}

/// Sleeps a little: the `tick` of waits that drive nothing.
pub(crate) fn idle() {
    std::thread::sleep(Duration::from_millis(5));
}

// ------------------------------------------------------------------------------------------
// Devices driven by the device-side state machine.

/// An application message a device received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AppMsg {
    /// Sequence number.
    pub(crate) seq: i64,
    /// `messageTypeId`.
    pub(crate) type_id: u16,
    /// Body.
    pub(crate) body: Vec<u8>,
    /// Resend flag.
    pub(crate) resent: bool,
}

/// Everything a device reported.
#[derive(Debug, Default)]
pub(crate) struct Seen {
    /// Non-application events, as debug strings (for failure messages).
    pub(crate) events: Vec<String>,
    /// Application messages, in delivery order.
    pub(crate) app: Vec<AppMsg>,
    /// RegistrationAccepts: (session id, resumed).
    pub(crate) registered: Vec<(u64, bool)>,
    /// LogonResponses: (heartbeat interval, lastProcessedSeqNum).
    pub(crate) logged_on: Vec<(i32, i64)>,
    /// Rejects: (refSeqNum, reason).
    pub(crate) rejected: Vec<(i64, u8)>,
    /// How the session ended and the LoggedOut text.
    pub(crate) ended: Option<(EndReason, String)>,
}

impl Seen {
    /// Records every event the device has pending.
    fn take(&mut self, dev: &mut Device) {
        while let Some(e) = dev.poll_event() {
            self.record(e);
        }
    }

    fn record(&mut self, e: DeviceEvent<'_>) {
        match e {
            DeviceEvent::App { seq, type_id, body, resent, .. } => {
                self.app.push(AppMsg { seq, type_id, body: body.to_vec(), resent });
                return;
            }
            DeviceEvent::Registered { session_id, resumed } => {
                self.registered.push((session_id, resumed))
            }
            DeviceEvent::LoggedOn { heartbeat_interval_s, last_processed } => {
                self.logged_on.push((heartbeat_interval_s, last_processed))
            }
            DeviceEvent::Rejected { ref_seq_num, reason } => {
                self.rejected.push((ref_seq_num, reason))
            }
            DeviceEvent::Ended { reason, text } => {
                self.ended = Some((reason, String::from_utf8_lossy(text).into_owned()))
            }
            DeviceEvent::StreamReset { .. } => {}
        }
        self.events.push(format!("{e:?}"));
    }

    /// The LoggedOut text, if the session ended with one.
    pub(crate) fn logged_out(&self) -> Option<&str> {
        match &self.ended {
            Some((EndReason::LoggedOut, text)) => Some(text),
            _ => None,
        }
    }

    /// Application messages of one type.
    pub(crate) fn of_type(&self, type_id: u16) -> impl Iterator<Item = &AppMsg> {
        self.app.iter().filter(move |a| a.type_id == type_id)
    }
}

/// Calls `step` on `driver` until `done`; fails after `limit`, naming `what` and `describe`'s
/// account of the driver.
fn drive<T>(
    driver: &mut T,
    what: &str,
    limit: Duration,
    done: impl Fn(&T) -> bool,
    step: fn(&mut T),
    describe: fn(&T) -> String,
) {
    let t0 = Instant::now();
    while !done(driver) {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}: {}", describe(driver));
        step(driver);
    }
}

/// A UDP device over a real socket.
pub(crate) struct Udp {
    /// Its socket (replace it to reconnect from another port).
    pub(crate) sock: UdpSocket,
    /// The state machine.
    pub(crate) dev: Device,
    /// Time base.
    pub(crate) clock: Clock,
    /// The gateway's handshake port.
    pub(crate) handshake: SocketAddr,
    /// The session port last sent to.
    pub(crate) session_port: Option<u16>,
    /// What it reported.
    pub(crate) seen: Seen,
    /// Every datagram it sent (true) or received (false), as the types of its messages.
    pub(crate) wire: Vec<(bool, Vec<u16>)>,
}

/// The message types of a datagram, in order (empty if it does not parse).
pub(crate) fn datagram_types(data: &[u8]) -> Vec<u16> {
    let Ok(dg) = Datagram::parse(data) else { return Vec::new() };
    dg.frames().filter_map(Result::ok).map(|f| u16::from_le_bytes([f[4], f[5]])).collect()
}

fn udp_socket() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind a UDP socket on 127.0.0.1")
}

impl Udp {
    /// A device `uid` logging on as user/pw.
    pub(crate) fn new(gw: &Server, uid: &str) -> Self {
        Self::at(gw.gateway.handshake_addr, uid, b"user", b"pw")
    }

    /// A device with its own username and password.
    pub(crate) fn with_login(gw: &Server, uid: &str, user: &[u8], password: &[u8]) -> Self {
        Self::at(gw.gateway.handshake_addr, uid, user, password)
    }

    /// A device for the gateway whose handshake port is `handshake`.
    pub(crate) fn at(handshake: SocketAddr, uid: &str, user: &[u8], password: &[u8]) -> Self {
        let dev = Device::new(DeviceConfig::new(Transport::Udp, uid.as_bytes(), user, password));
        Self {
            sock: udp_socket(),
            dev,
            clock: Clock::new(),
            handshake,
            session_port: None,
            seen: Seen::default(),
            wire: Vec::new(),
        }
    }

    /// Starts a handshake (`reset` = resetSeqNum in the coming logon).
    pub(crate) fn connect(&mut self, nonce: u64, reset: bool) {
        let now = self.clock.now();
        self.dev.connect(now, nonce, reset);
    }

    /// Moves the device to a new socket (a new source port); returns the old one.
    pub(crate) fn replace_socket(&mut self) -> UdpSocket {
        std::mem::replace(&mut self.sock, udp_socket())
    }

    /// Sends what the device has to send, without reading.
    pub(crate) fn flush(&mut self) {
        let mut buf = [0u8; 2048];
        let now = self.clock.now();
        while let Some(t) = self.dev.poll_transmit(now, &mut buf) {
            let to = match t.dest {
                DeviceDest::Handshake => self.handshake,
                DeviceDest::SessionPort(p) => {
                    self.session_port = Some(p);
                    local(p)
                }
                DeviceDest::Stream => unreachable!("UDP device"),
            };
            let _ = self.sock.send_to(&buf[..t.len], to);
            self.wire.push((true, datagram_types(&buf[..t.len])));
        }
    }

    /// One pass: timers, output, at most one datagram in (waiting up to 2 ms).
    pub(crate) fn step(&mut self) {
        self.dev.handle_timeout(self.clock.now());
        self.seen.take(&mut self.dev);
        self.flush();
        let mut buf = [0u8; 2048];
        let _ = self.sock.set_read_timeout(Some(Duration::from_millis(2)));
        if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            self.wire.push((false, datagram_types(&buf[..n])));
            self.dev.handle_datagram(self.clock.now(), &buf[..n]);
            self.seen.take(&mut self.dev);
        }
    }

    /// Steps until `done`; fails after `limit` with the device's state and events.
    pub(crate) fn run_until(&mut self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        drive(self, what, limit, done, Self::step, |d| {
            format!("state {:?}, events {:?}", d.dev.state(), d.seen.events)
        });
    }

    /// Steps for `d`.
    pub(crate) fn run_for(&mut self, d: Duration) {
        let t0 = Instant::now();
        while t0.elapsed() < d {
            self.step();
        }
    }

    /// Handshake and logon.
    pub(crate) fn log_on(&mut self, nonce: u64) {
        self.connect(nonce, true);
        self.run_until("logon", Duration::from_secs(5), |d| d.dev.state() == DeviceState::Active);
    }

    /// The datagrams it sent (`up`) or received, as the types of their messages.
    pub(crate) fn datagrams(&self, up: bool) -> Vec<Vec<u16>> {
        self.wire.iter().filter(|(u, _)| *u == up).map(|(_, t)| t.clone()).collect()
    }

    /// Logs out and waits for the gateway's LoggedOut("logout").
    pub(crate) fn log_out(&mut self) {
        let now = self.clock.now();
        self.dev.logout(now);
        self.run_until("LoggedOut", Duration::from_secs(5), |d| d.seen.ended.is_some());
        assert_eq!(self.seen.logged_out(), Some("logout"));
    }

    /// Queues an application message.
    pub(crate) fn send_app(&mut self, type_id: u16, body: &[u8]) -> i64 {
        let now = self.clock.now();
        self.dev.send_app(now, type_id, body, true).expect("send_app")
    }

    /// Sends `bodies` as echo requests (type 150) and waits for as many more type-250 replies.
    pub(crate) fn echo(&mut self, bodies: &[Vec<u8>]) {
        let want = self.seen.of_type(250).count() + bodies.len();
        for b in bodies {
            self.send_app(150, b);
        }
        self.run_until("echo replies", Duration::from_secs(5), |d| {
            d.seen.of_type(250).count() >= want
        });
    }
}

/// A TCP client over a real connection.
pub(crate) struct Tcp {
    /// The connection.
    pub(crate) stream: TcpStream,
    /// The state machine.
    pub(crate) dev: Device,
    /// Time base.
    pub(crate) clock: Clock,
    /// Stream deframer.
    pub(crate) deframer: Deframer,
    /// What it reported.
    pub(crate) seen: Seen,
    /// The gateway closed the connection (read returned 0).
    pub(crate) closed: bool,
    /// The read error that ended the connection, if it was not a clean end of stream.
    pub(crate) error: Option<String>,
}

impl Tcp {
    /// A client logging on as `user` with password "pw" (resetSeqNum = 1).
    pub(crate) fn new(gw: &Server, user: &str) -> Self {
        Self::with_password(gw.gateway.tcp_addr, user, b"pw")
    }

    /// A client logging on as `user` with `password`.
    pub(crate) fn with_password(addr: SocketAddr, user: &str, password: &[u8]) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        let mut dev =
            Device::new(DeviceConfig::new(Transport::Tcp, b"", user.as_bytes(), password));
        let clock = Clock::new();
        dev.connect(clock.now(), 1, true);
        Self {
            stream,
            dev,
            clock,
            deframer: Deframer::new(64 * 1024),
            seen: Seen::default(),
            closed: false,
            error: None,
        }
    }

    /// Opens a new connection and logs on again (`reset` = resetSeqNum).
    pub(crate) fn reconnect(&mut self, addr: SocketAddr, nonce: u64, reset: bool) {
        self.stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        self.deframer.reset();
        self.closed = false;
        self.error = None;
        let now = self.clock.now();
        self.dev.connect(now, nonce, reset);
    }

    /// One pass: timers, output, one read (waiting up to 2 ms).
    pub(crate) fn step(&mut self) {
        let mut buf = [0u8; 4096];
        let now = self.clock.now();
        self.dev.handle_timeout(now);
        self.seen.take(&mut self.dev);
        while let Some(t) = self.dev.poll_transmit(now, &mut buf) {
            if !self.closed {
                let _ = self.stream.write_all(&buf[..t.len]);
            }
        }
        if self.closed {
            std::thread::sleep(Duration::from_millis(2));
            return;
        }
        let _ = self.stream.set_read_timeout(Some(Duration::from_millis(2)));
        match self.stream.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => {
                self.deframer.push(&buf[..n]);
                while let Ok(Some(f)) = self.deframer.next_frame() {
                    self.dev.handle_frame(self.clock.now(), f);
                    self.seen.take(&mut self.dev);
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            // A read with a timeout is never restarted after a signal: not an end of stream.
            Err(e) if e.kind() == ErrorKind::Interrupted => {
                eprintln!("note: a TCP read was interrupted (EINTR); retrying");
            }
            Err(e) => {
                self.closed = true;
                self.error = Some(e.to_string());
            }
        }
    }

    /// Steps until `done`; fails after `limit`.
    pub(crate) fn run_until(&mut self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        drive(self, what, limit, done, Self::step, |d| {
            format!(
                "state {:?}, closed {} (read error {:?}), events {:?}",
                d.dev.state(),
                d.closed,
                d.error,
                d.seen.events
            )
        });
    }

    /// Logs out and waits for the gateway's LoggedOut("logout").
    pub(crate) fn log_out(&mut self) {
        let now = self.clock.now();
        self.dev.logout(now);
        self.run_until("LoggedOut", Duration::from_secs(5), |d| d.seen.ended.is_some());
        assert_eq!(self.seen.logged_out(), Some("logout"));
    }

    /// Waits for the logon.
    pub(crate) fn log_on(&mut self) {
        self.run_until("logon", Duration::from_secs(5), |d| d.dev.state() == DeviceState::Active);
    }

    /// Sends `bodies` as echo requests (type 120) and waits for as many more type-220 replies.
    pub(crate) fn echo(&mut self, bodies: &[Vec<u8>]) {
        let want = self.seen.of_type(220).count() + bodies.len();
        for b in bodies {
            let now = self.clock.now();
            self.dev.send_app(now, 120, b, true).expect("send_app");
        }
        self.run_until("echo replies", Duration::from_secs(5), |d| {
            d.seen.of_type(220).count() >= want
        });
    }
}

/// Bodies `k.to_le_bytes()` for `k` in `range`.
pub(crate) fn bodies(range: std::ops::Range<u32>) -> Vec<Vec<u8>> {
    range.map(|k| k.to_le_bytes().to_vec()).collect()
}

// ------------------------------------------------------------------------------------------
// Raw peers: the wire format by hand.

/// A message with sequence number `seq` and a default header otherwise.
pub(crate) fn msg(seq: i64, body: Body<'_>) -> Message<'_> {
    Message { header: Header { seq, ..Header::default() }, body }
}

/// One encoded, padded message.
pub(crate) fn encode(m: Message<'_>) -> Vec<u8> {
    let mut b = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut b).expect("encode");
    b.truncate(n);
    b
}

/// A datagram: the session id prefix, then the messages.
pub(crate) fn datagram(session_id: u64, msgs: &[Message<'_>]) -> Vec<u8> {
    let mut b = vec![0u8; 8];
    write_prefix(&mut b, session_id);
    for m in msgs {
        b.extend_from_slice(&encode(*m));
    }
    b
}

/// Splits a datagram from the gateway into its session id and frames.
pub(crate) fn split(dg: &[u8]) -> (u64, Vec<Vec<u8>>) {
    let d = Datagram::parse(dg).expect("a datagram from the gateway");
    let frames = d.frames().map(|f| f.expect("a well-formed frame").to_vec()).collect();
    (d.session_id, frames)
}

/// Decodes one frame.
pub(crate) fn decode(frame: &[u8]) -> Message<'_> {
    Message::decode_frame(frame).expect("a valid message from the gateway")
}

/// Receives one datagram within `within`.
pub(crate) fn recv_within(sock: &UdpSocket, within: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + within;
    let mut buf = [0u8; 2048];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        let _ = sock.set_read_timeout(Some(left.max(Duration::from_millis(1))));
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
}

/// A bare UDP socket.
pub(crate) struct RawUdp {
    /// The socket.
    pub(crate) sock: UdpSocket,
}

impl Default for RawUdp {
    fn default() -> Self {
        Self::new()
    }
}

impl RawUdp {
    /// Bound to 127.0.0.1 on an ephemeral port.
    pub(crate) fn new() -> Self {
        Self { sock: udp_socket() }
    }

    /// Sends one datagram.
    pub(crate) fn send(&self, to: SocketAddr, bytes: &[u8]) {
        self.sock.send_to(bytes, to).expect("send_to");
    }

    /// One datagram within `within`.
    pub(crate) fn recv(&self, within: Duration) -> Option<Vec<u8>> {
        recv_within(&self.sock, within)
    }

    /// ConnectionRequest (retried) until ConnectionAccept: returns the session port and cookie.
    pub(crate) fn handshake(&self, hs: SocketAddr, uid: &[u8], nonce: u64) -> (u16, [u8; 32]) {
        let req = datagram(0, &[connection_request(uid, nonce, 1)]);
        for _ in 0..10 {
            self.send(hs, &req);
            let Some(dg) = self.recv(Duration::from_millis(300)) else { continue };
            let (sid, frames) = split(&dg);
            assert_eq!(sid, 0, "handshake replies carry prefix 0");
            assert!(dg.len() <= req.len(), "reply larger than the request");
            match decode(&frames[0]).body {
                Body::ConnectionAccept { session_port, client_nonce, cookie, .. } => {
                    assert_eq!(client_nonce, nonce);
                    return (session_port, cookie);
                }
                other => panic!("expected ConnectionAccept, got {other:?}"),
            }
        }
        panic!("no ConnectionAccept from {hs}");
    }
}

/// A ConnectionRequest.
pub(crate) fn connection_request(uid: &[u8], nonce: u64, version: u16) -> Message<'static> {
    msg(
        0,
        Body::ConnectionRequest {
            device_uid: DeviceUid::new(uid).expect("uid"),
            client_nonce: nonce,
            client_version: version,
        },
    )
}

/// A RegistrationRequest.
pub(crate) fn registration_request(uid: &[u8], nonce: u64, cookie: [u8; 32]) -> Message<'static> {
    msg(
        0,
        Body::RegistrationRequest {
            device_uid: DeviceUid::new(uid).expect("uid"),
            client_nonce: nonce,
            cookie,
        },
    )
}

/// A bare TCP connection with a deframer.
pub(crate) struct RawTcp {
    /// The connection.
    pub(crate) stream: TcpStream,
    deframer: Deframer,
    /// The gateway closed the connection.
    pub(crate) closed: bool,
    /// The read error that ended it, if it was not a clean end of stream.
    pub(crate) error: Option<String>,
}

impl RawTcp {
    /// Connects.
    pub(crate) fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
        Self { stream, deframer: Deframer::new(64 * 1024), closed: false, error: None }
    }

    /// Writes bytes.
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    /// The next frame within `within`; `None` on timeout or close (then `closed` is set).
    pub(crate) fn recv(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 4096];
        loop {
            match self.deframer.next_frame() {
                Ok(Some(f)) => return Some(f.to_vec()),
                Ok(None) => {}
                Err(e) => panic!("bad frame from the gateway: {e}"),
            }
            if self.closed {
                return None;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let _ = self.stream.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            match self.stream.read(&mut buf) {
                Ok(0) => self.closed = true,
                Ok(n) => {
                    self.deframer.push(&buf[..n]);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    self.closed = true;
                    self.error = Some(e.to_string());
                }
            }
        }
    }

    /// The next frame that is not a Heartbeat, within `within`.
    pub(crate) fn recv_skip_heartbeats(&mut self, within: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = self.recv(left)?;
            if !matches!(decode(&f).body, Body::Heartbeat { .. }) {
                return Some(f);
            }
        }
    }

    /// Reads (discarding frames) until the gateway closes the connection; false on timeout.
    pub(crate) fn wait_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.closed {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            let _ = self.recv(left);
        }
        true
    }
}

// ------------------------------------------------------------------------------------------
// HTTP endpoints.

/// GET `path` from the gateway's HTTP endpoint (bounded by 2 s timeouts).
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// `fleetgate_<name>` summed over shards, in a /metrics body.
pub(crate) fn metric_in(body: &str, name: &str) -> u64 {
    let prefix = format!("fleetgate_{name}{{");
    body.lines()
        .filter(|l| l.starts_with(&prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Every `fleetgate_drop_*` counter summed over shards, in a /metrics body.
pub(crate) fn drops_in(body: &str) -> u64 {
    body.lines()
        .filter(|l| l.starts_with("fleetgate_drop_"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `fleetgate_<name>` now.
pub(crate) fn metric(addr: SocketAddr, name: &str) -> u64 {
    metric_in(&http_get(addr, "/metrics"), name)
}

/// Waits (calling `tick` meanwhile) until `fleetgate_<name>` reaches `at_least`; returns it.
/// Snapshots are published once a second.
pub(crate) fn wait_metric(
    addr: SocketAddr,
    name: &str,
    at_least: u64,
    limit: Duration,
    mut tick: impl FnMut(),
) -> u64 {
    let t0 = Instant::now();
    loop {
        let v = metric(addr, name);
        if v >= at_least {
            return v;
        }
        assert!(
            t0.elapsed() < limit,
            "fleetgate_{name} stayed at {v} (< {at_least}) for {limit:?}"
        );
        let t = Instant::now();
        while t.elapsed() < Duration::from_millis(100) {
            tick();
        }
    }
}

/// The /sessions row (a JSON object) of `device_uid`, if listed.
pub(crate) fn session_row(body: &str, device_uid: &str) -> Option<serde_json::Value> {
    let json = body.split_once("\r\n\r\n").map_or(body, |(_, b)| b);
    let rows: Vec<serde_json::Value> = serde_json::from_str(json)
        .unwrap_or_else(|e| panic!("/sessions is not a JSON array ({e}): {json}"));
    rows.into_iter().find(|r| r["device_uid"] == device_uid)
}
