//! Hosts (DESIGN.md §1.6, issue 10) over real sockets on 127.0.0.1: a gateway in this process,
//! devices driven by the device-side state machine, and a scripted line host in a thread of
//! this test (a counter shell, or one that refuses, closes, floods or stays silent). The telnet
//! server of `telnetlib3` is in `tests/telnet.rs`. Each body runs on both backends, as in
//! `tests/gateway.rs`.

#[allow(dead_code)]
#[macro_use]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use fleetgate::ops::Server;
use fleetgate::protocol::{
    HOST_DATA_FROM_HOST, HOST_DATA_TO_HOST, HOST_STATUS, HostMessage, HostState,
};
use fleetgate::session::DeviceState;

const SECOND: Duration = Duration::from_secs(1);
const SEED_CONFIG: &[u8] = b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~";

backends! {
    counter_host_keeps_its_state_across_a_roam => epoll_counter_host_roam, uring_counter_host_roam;
    unreachable_host => epoll_unreachable_host, uring_unreachable_host;
    host_closes => epoll_host_closes, uring_host_closes;
    flooding_host_is_bounded_and_exact => epoll_flooding_host, uring_flooding_host;
    silent_host_hits_the_inactivity_timeout => epoll_silent_host, uring_silent_host;
    device_logout_closes_the_host => epoll_device_logout_closes_host, uring_device_logout_closes_host;
    out_of_file_descriptors => epoll_out_of_file_descriptors, uring_out_of_file_descriptors;
    load_host_streams_are_exact_across_roams => epoll_load_host, uring_load_host;
}

/// How the scripted host behaves on each connection.
#[derive(Clone, Copy, Debug)]
enum Script {
    /// "ready\r\n", then "n=<count> <line>\r\n" for each line: state that must survive a roam.
    Counter,
    /// "bye\r\n" and close.
    Close,
    /// `n` bytes of a pattern as fast as TCP takes them, then stay open reading.
    Flood(usize),
    /// Reads and never writes; reports what it read when the gateway closes.
    Silent,
    /// Echoes every byte.
    Echo,
}

/// A scripted host on an ephemeral port; what each connection read when it ended comes back on
/// `ended`.
struct LineHost {
    addr: SocketAddr,
    ended: mpsc::Receiver<Vec<u8>>,
    accepted: mpsc::Receiver<()>,
}

impl LineHost {
    fn start(script: Script) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, ended) = mpsc::channel();
        let (acc_tx, accepted) = mpsc::channel();
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(s) = s else { return };
                let tx = tx.clone();
                let _ = acc_tx.send(());
                std::thread::spawn(move || serve(s, script, &tx));
            }
        });
        Self { addr, ended, accepted }
    }

    fn accepted_within(&self, d: Duration) -> bool {
        self.accepted.recv_timeout(d).is_ok()
    }
}

fn serve(mut s: TcpStream, script: Script, ended: &mpsc::Sender<Vec<u8>>) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    match script {
        Script::Counter => {
            let _ = s.write_all(b"ready\r\n");
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut n = 0;
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|k| k > 0) {
                n += 1;
                let _ = write!(s, "n={n} {}\r\n", line.trim_end());
                line.clear();
            }
        }
        Script::Close => {
            let _ = s.write_all(b"bye\r\n");
        }
        Script::Flood(total) => {
            let data = pattern(total);
            let _ = s.write_all(&data);
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        }
        Script::Silent => {
            let mut got = Vec::new();
            let _ = s.read_to_end(&mut got);
            let _ = ended.send(got);
        }
        Script::Echo => {
            let _ = s.set_nodelay(true);
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = s.read(&mut buf) {
                if s.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A gateway whose devices with the seed's device type are bridged to `host` (named "line").
fn gateway(io: &str, host: SocketAddr, host_extra: &str, extra: &[&str]) -> Server {
    let hosts = format!("hosts=[{{name=\"line\", addr=\"{host}\"{host_extra}}}]");
    let groups = "groups=[{name=\"pdt\", device_type=\"PDT9090_E5\", host=\"line\"}]".to_string();
    let mut set = vec![hosts.as_str(), groups.as_str()];
    set.extend_from_slice(extra);
    start(io, &set)
}

fn device(gw: &Server, uid: &str) -> Udp {
    let mut d = Udp::new(gw, uid);
    d.dev.set_device_config(SEED_CONFIG);
    d
}

/// A line host playing `script`, a gateway bridged to it (`host_extra` added to the host's
/// entry), and a device of the bridged group logged on there as `uid`.
fn bridged(io: &str, script: Script, host_extra: &str, uid: &str) -> (LineHost, Server, Udp) {
    let host = LineHost::start(script);
    let gw = gateway(io, host.addr, host_extra, &[]);
    let mut d = device(&gw, uid);
    d.log_on(1);
    (host, gw, d)
}

/// Steps until the device got HostStatus(CONNECTED).
fn wait_connected(d: &mut Udp) {
    d.run_until("CONNECTED", 5 * SECOND, |d| {
        statuses(d).iter().any(|(s, _)| *s == HostState::Connected)
    });
}

/// The bytes of every HostData (401) the device got, in order.
fn host_bytes(d: &Udp) -> Vec<u8> {
    d.seen.of_type(HOST_DATA_FROM_HOST).flat_map(|a| a.body.clone()).collect()
}

/// Steps until the gateway's LoggedOut and checks its text.
#[track_caller]
fn logged_out_with(d: &mut Udp, limit: Duration, why: &str) {
    d.run_until("LoggedOut", limit, ended);
    assert_eq!(d.seen.logged_out(), Some(why));
}

/// The states of the HostStatus messages the device received, in order.
fn states(d: &Udp) -> Vec<HostState> {
    statuses(d).into_iter().map(|(s, _)| s).collect()
}

/// Every HostStatus the device got: state and details.
fn statuses(d: &Udp) -> Vec<(HostState, String)> {
    d.seen
        .of_type(HOST_STATUS)
        .map(|a| match HostMessage::decode(HOST_STATUS, &a.body) {
            Ok(Some(HostMessage::Status { state, details })) => {
                (state, String::from_utf8_lossy(details).into_owned())
            }
            other => panic!("not a HostStatus: {other:?}"),
        })
        .collect()
}

fn type_line(d: &mut Udp, line: &str) {
    d.send_app(HOST_DATA_TO_HOST, format!("{line}\r\n").as_bytes());
}

fn ended(d: &Udp) -> bool {
    matches!(d.dev.state(), DeviceState::Ended(_))
}

/// The counter host keeps one connection per session: a device types, roams to a new address
/// (missing a reply while away), resumes, and the count continues where it was; the missed
/// reply comes back by resend. Both the host's state and the connection survive the roam.
fn counter_host_keeps_its_state_across_a_roam(io: &str) {
    let (host, gw, mut d) = bridged(io, Script::Counter, "", "HOST-ROAM-1");
    wait_connected(&mut d);
    assert!(host.accepted_within(SECOND));
    assert_eq!(statuses(&d)[0], (HostState::Connecting, "line".into()));
    type_line(&mut d, "a");
    type_line(&mut d, "b");
    d.run_until("two answers", 5 * SECOND, |d| host_bytes(d).ends_with(b"n=2 b\r\n"));
    assert_eq!(host_bytes(&d), b"ready\r\nn=1 a\r\nn=2 b\r\n");
    let sid = d.dev.session_id();
    // The device types a line and goes dark before the answer arrives; then roams.
    type_line(&mut d, "c");
    d.flush();
    let _old = d.replace_socket();
    std::thread::sleep(Duration::from_millis(300));
    d.connect(2, false);
    d.run_until("resumed", 5 * SECOND, |d| {
        d.dev.state() == DeviceState::Active && d.seen.logged_on.len() == 2
    });
    assert_eq!(d.seen.registered.last(), Some(&(sid, true)), "same session, resumed");
    type_line(&mut d, "d");
    d.run_until("the count goes on", 5 * SECOND, |d| host_bytes(d).ends_with(b"n=4 d\r\n"));
    assert_eq!(host_bytes(&d), b"ready\r\nn=1 a\r\nn=2 b\r\nn=3 c\r\nn=4 d\r\n");
    assert!(
        d.seen.of_type(HOST_DATA_FROM_HOST).any(|a| a.resent),
        "the answer missed while away came back by resend"
    );
    assert!(!host.accepted_within(Duration::from_millis(100)), "the host saw one connection");
    wait_line_host(&gw, "connected", 1);
    wait_line_host(&gw, "bytes_in_total", 35);
    let _ = gw.stop();
}

/// Nothing listens: HostStatus(UNREACHABLE, the connect error), then LoggedOut.
fn unreachable_host(io: &str) {
    // A port no test beside this one binds or connects from meanwhile.
    let port = local(fixed_port());
    let gw = gateway(io, port, "", &[]);
    let mut d = device(&gw, "HOST-UNREACH-1");
    d.log_on(1);
    logged_out_with(&mut d, 5 * SECOND, "host unreachable");
    let st = statuses(&d);
    assert_eq!(st[0].0, HostState::Connecting);
    assert_eq!(st[1].0, HostState::Unreachable);
    assert!(st[1].1.contains("refused"), "{st:?}");
    wait_line_host(&gw, "unreachable_total", 1);
    let _ = gw.stop();
}

/// The host says goodbye and closes: the device gets its last words, CLOSED_BY_HOST, then
/// LoggedOut("host closed").
fn host_closes(io: &str) {
    let (_host, gw, mut d) = bridged(io, Script::Close, "", "HOST-CLOSE-1");
    logged_out_with(&mut d, 5 * SECOND, "host closed");
    assert_eq!(host_bytes(&d), b"bye\r\n");
    assert_eq!(states(&d), [HostState::Connecting, HostState::Connected, HostState::ClosedByHost]);
    // The status came before the farewell, in sequence.
    let closed = d.seen.of_type(HOST_STATUS).last().unwrap().seq;
    let data = d.seen.of_type(HOST_DATA_FROM_HOST).last().unwrap().seq;
    assert!(data < closed);
    wait_line_host(&gw, "closed_by_host_total", 1);
    let _ = gw.stop();
}

/// A host that writes 600 KB at once: the device receives every byte in order (the session's
/// journal and send queue bound it; reading the host pauses while the session is full), and a
/// device of another group on the same gateway keeps its echo going meanwhile.
fn flooding_host_is_bounded_and_exact(io: &str) {
    const TOTAL: usize = 600_000;
    let host = LineHost::start(Script::Flood(TOTAL));
    let gw = gateway(io, host.addr, "", &["gateway.shards=1"]);
    let mut other = Udp::new(&gw, "HOST-FLOOD-ECHO");
    other.log_on(9);
    let mut d = device(&gw, "HOST-FLOOD-1");
    d.log_on(1);
    let t0 = Instant::now();
    let mut echoes = 0;
    while host_bytes(&d).len() < TOTAL {
        assert!(
            t0.elapsed() < 30 * SECOND,
            "{} of {TOTAL} bytes; {:?} {:?} {:?}",
            host_bytes(&d).len(),
            d.dev.state(),
            d.seen.ended,
            d.dev.stats()
        );
        for _ in 0..20 {
            d.step();
        }
        if echoes < 20 {
            other.echo(&[vec![echoes as u8]]);
            echoes += 1;
        }
    }
    assert_eq!(host_bytes(&d), pattern(TOTAL), "every byte, in order, once");
    assert_eq!(echoes, 20, "the other device's echo went on");
    assert!(!ended(&d), "{:?}", d.seen.ended);
    let chunks = d.seen.of_type(HOST_DATA_FROM_HOST).count();
    assert!(chunks >= TOTAL / 224, "cut to journal slots: {chunks} messages");
    let _ = gw.stop();
}

/// A host that never writes: after the inactivity timeout it is sent the configured last
/// message and closed, and the device gets IDLE_TIMEOUT then LoggedOut.
fn silent_host_hits_the_inactivity_timeout(io: &str) {
    let extra = ", inactivity_timeout_s=1, inactivity_message=\"logoff\\r\\n\"";
    let (host, gw, mut d) = bridged(io, Script::Silent, extra, "HOST-IDLE-1");
    type_line(&mut d, "hello");
    let t0 = Instant::now();
    d.run_until("LoggedOut", 5 * SECOND, ended);
    assert!(t0.elapsed() >= Duration::from_millis(900), "not before the timeout");
    assert_eq!(d.seen.logged_out(), Some("host inactivity timeout"));
    assert_eq!(states(&d), [HostState::Connecting, HostState::Connected, HostState::IdleTimeout]);
    let got = host.ended.recv_timeout(5 * SECOND).expect("the host connection closed");
    assert_eq!(got, b"hello\r\nlogoff\r\n");
    wait_line_host(&gw, "idle_timeout_total", 1);
    let _ = gw.stop();
}

/// A device that logs out closes its host connection.
fn device_logout_closes_the_host(io: &str) {
    let (host, gw, mut d) = bridged(io, Script::Silent, "", "HOST-LOGOUT-1");
    wait_connected(&mut d);
    type_line(&mut d, "bye");
    let now = d.clock.now();
    d.dev.logout(now);
    logged_out_with(&mut d, 5 * SECOND, "logout");
    let got = host.ended.recv_timeout(5 * SECOND).expect("the host connection closed");
    assert_eq!(got, b"bye\r\n");
    let addr = gw.metrics_addr.unwrap();
    until("gauge back to 0", 5 * SECOND, || {
        idle();
        http_get(addr, "/metrics").contains("fleetgate_host_connected{host=\"line\"} 0")
    });
    let _ = gw.stop();
}

/// With the process out of file descriptors, a host session gets
/// HostStatus(UNREACHABLE, "no file descriptors"), LoggedOut, and a counter; the gateway goes on.
/// (The descriptors are used up by this test itself, under a lowered soft limit, in a child
/// process so that the other tests keep theirs.)
fn out_of_file_descriptors(io: &str) {
    if std::env::var_os("FLEETGATE_FD_CHILD").is_none() {
        let exe = std::env::current_exe().unwrap();
        let name = format!("{io}_out_of_file_descriptors");
        let out = std::process::Command::new(exe)
            .args([name.as_str(), "--exact", "--nocapture", "--test-threads=1"])
            .env("FLEETGATE_FD_CHILD", "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("1 passed"),
            "child: {text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    // A soft limit of 1,024 whatever the machine's (CI may allow a million).
    let mut l = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    l.current = Some(1024.min(l.maximum.unwrap_or(1024)));
    rustix::process::setrlimit(rustix::process::Resource::Nofile, l).unwrap();
    let host = LineHost::start(Script::Silent);
    let gw = gateway(io, host.addr, "", &[]);
    let mut d = device(&gw, "HOST-NOFD-1");
    d.connect(1, true);
    // Every gateway thread is up (the HTTP endpoint answers: it builds its runtime, which takes
    // descriptors, on its own thread) before the fill.
    let addr = gw.metrics_addr.unwrap();
    until("HTTP endpoint up", 5 * SECOND, || http_get(addr, "/healthz").contains("200"));
    // Hold every descriptor left, so the shard's socket() fails with EMFILE; and keep taking
    // any that another thread closes late (CI once saw the shard's connect succeed after the
    // fill) until none has come free for 300 ms.
    let mut hold = Vec::new();
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_millis(300) {
        let before = hold.len();
        while let Ok(f) = std::fs::File::open("/dev/null") {
            hold.push(f);
            assert!(hold.len() < 2048, "the soft limit of 1,024 did not hold");
        }
        if hold.len() > before {
            quiet_since = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // The device's own socket and the gateway's are already open; logon goes on.
    d.run_until("LoggedOut", 10 * SECOND, ended);
    drop(hold);
    assert_eq!(d.seen.logged_out(), Some("host unreachable"));
    let st = statuses(&d);
    assert_eq!(st.last().unwrap(), &(HostState::Unreachable, "no file descriptors".to_string()));
    wait_line_host(&gw, "no_fds_total", 1);
    // The gateway goes on: another device logs on and reaches the host.
    let mut e = device(&gw, "HOST-NOFD-2");
    e.log_on(2);
    wait_connected(&mut e);
    let _ = gw.stop();
}

/// `fleetgate load host` (the generator's host scenario) over a real gateway and echo host:
/// every keystroke echoed once and in order on both paths, every roam resumed its session, and
/// a host that echoes nothing would fail it.
fn load_host_streams_are_exact_across_roams(io: &str) {
    use fleetgate::tools::loadhost::{HostLoadConfig, run};
    let host = LineHost::start(Script::Echo);
    let gw = gateway(io, host.addr, "", &[]);
    let cfg = HostLoadConfig {
        handshake: gw.gateway.handshake_addr,
        host: host.addr,
        serve_echo: false,
        devices: 5,
        rate: 500.0,
        duration: 2 * SECOND,
        roam_every: Duration::from_millis(300),
        device_config: String::from_utf8(SEED_CONFIG.to_vec()).unwrap(),
        uid_prefix: "LH".into(),
        user: "user".into(),
        password: "pw".into(),
    };
    let r = run(&cfg).unwrap();
    assert!(!r.failed(), "{}", r.table());
    assert_eq!((r.typed, r.echoed), (1000, 1000), "{}", r.table());
    assert_eq!((r.typed_direct, r.echoed_direct), (1000, 1000));
    assert!(r.roams >= 4 && r.resumed == r.roams, "{}", r.table());
    assert_eq!(r.stream_errors, 0);
    let _ = gw.stop();
    // A host that answers nothing fails the run (the generator never hides a lost echo).
    let mute = LineHost::start(Script::Silent);
    let gw = gateway(io, mute.addr, "", &[]);
    let cfg = HostLoadConfig {
        handshake: gw.gateway.handshake_addr,
        host: mute.addr,
        duration: Duration::from_millis(300),
        roam_every: Duration::ZERO,
        ..cfg
    };
    let r = run(&cfg).unwrap();
    assert!(r.failed() && r.echoed == 0 && r.typed > 0, "{}", r.table());
    let _ = gw.stop();
}

/// Waits until `fleetgate_host_NAME{host="line"}` on `/metrics` reaches `at_least` (snapshots
/// are published every second).
fn wait_line_host(gw: &Server, name: &str, at_least: u64) {
    let addr = gw.metrics_addr.unwrap();
    let series = format!("fleetgate_host_{name}{{host=\"line\"}}");
    let t0 = Instant::now();
    loop {
        let body = http_get(addr, "/metrics");
        if metric_with(&body, &series) >= at_least {
            return;
        }
        assert!(t0.elapsed() < 5 * SECOND, "{series} below {at_least}:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the line starting with `series` (name and labels).
fn metric_with(body: &str, series: &str) -> u64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}
