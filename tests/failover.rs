//! Several gateways (DESIGN.md §4) on real sockets on 127.0.0.1: the operator channel
//! (`gateway.admin_socket`, `fleetgate ctl`) listing, showing and disconnecting sessions and
//! draining a gateway; and a fleet with a server list over three gateway processes, one drained
//! and one killed with SIGKILL, every device ending on a live gateway. Every wait is bounded.

#[allow(dead_code)]
#[macro_use]
mod common;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use common::*;
use fleetgate::protocol::MessageType;
use fleetgate::session::{DeviceState, EndReason};
use serde_json::Value;

const SECOND: Duration = Duration::from_secs(1);

backends! {
    operator_channel => epoll_operator_channel, uring_operator_channel;
}

fn ctl(path: &Path, request: &str) -> Value {
    fleetgate::tools::ctl::call(path, request).unwrap_or_else(|e| panic!("{request}: {e}"))
}

/// Steps every device for `d` (they keep heartbeating and answering).
fn step_all(udp: &mut [Udp], tcp: &mut [Tcp], d: Duration) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < d {
        for u in udp.iter_mut() {
            u.step();
        }
        for t in tcp.iter_mut() {
            t.step();
        }
    }
}

/// One gateway with its operator channel: sessions paged, show, disconnect, drain (new
/// sessions refused with the §4 answers, existing ones kept until the deadline, then
/// LoggedOut("gateway draining")), the draining gauge, undrain.
fn operator_channel(io: &str) {
    let dir = TempDir::new(&format!("admin-{io}"));
    let sock = dir.0.join("admin.sock");
    let gw = start(
        io,
        &[
            &format!("gateway.admin_socket=\"{}\"", sock.display()),
            "gateway.snapshot_interval_ms=100",
        ],
    );
    let meta = std::fs::symlink_metadata(&sock).expect("the socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode 0600");
    let addr = gw.metrics_addr.expect("metrics enabled");

    let mut udp: Vec<Udp> = (0..3).map(|i| Udp::new(&gw, &format!("ADM-{i}"))).collect();
    for (i, u) in udp.iter_mut().enumerate() {
        u.log_on(i as u64 + 1);
    }
    let mut tcp = vec![Tcp::new(&gw, "tcpuser")];
    tcp[0].log_on();

    // The connections list, a page at a time.
    let mut total = 0;
    until("4 sessions listed", 5 * SECOND, || {
        step_all(&mut udp, &mut tcp, Duration::from_millis(20));
        total = ctl(&sock, "sessions --limit 1000")["total"].as_u64().unwrap_or(0);
        total == 4
    });
    let first = ctl(&sock, "sessions --limit 3");
    assert_eq!(first["sessions"].as_array().unwrap().len(), 3, "{first}");
    assert_eq!(first["next"], 3);
    let last = ctl(&sock, "sessions --from 3 --limit 3");
    assert_eq!(last["sessions"].as_array().unwrap().len(), 1, "{last}");
    assert_eq!(last["next"], Value::Null);
    let shown = ctl(&sock, "show ADM-1");
    assert_eq!(shown["session"]["state"], "active", "{shown}");
    assert_eq!(ctl(&sock, "show tcpuser")["session"]["username"], "tcpuser");
    assert_eq!(ctl(&sock, "show NOBODY")["ok"], false);
    assert_eq!(ctl(&sock, "frobnicate")["ok"], false);

    // Disconnect one.
    assert_eq!(ctl(&sock, "disconnect ADM-0")["disconnected"], true);
    udp[0].run_until("LoggedOut", 3 * SECOND, |d| d.seen.ended.is_some());
    assert_eq!(udp[0].seen.logged_out(), Some("disconnected by operator"));
    assert_eq!(ctl(&sock, "disconnect ADM-0")["disconnected"], false, "already gone");
    let status = ctl(&sock, "status");
    assert_eq!(status["draining"], false, "{status}");

    // Drain with a 4 s deadline: the existing sessions keep working until the deadline...
    let drained = ctl(&sock, "drain --deadline 4");
    assert_eq!(drained["draining"], true, "{drained}");
    udp[1].echo(&bodies(0..3));
    tcp[0].echo(&bodies(0..3));
    let status = ctl(&sock, "status");
    assert_eq!(status["draining"], true, "{status}");
    assert!(status["deadline_in_s"].as_f64().unwrap() > 0.0, "{status}");
    // ...and new sessions are refused (before the deadline and after it).
    let mut late = Udp::new(&gw, "ADM-LATE");
    late.connect(77, true);
    late.run_until("ConnectionReject", 3 * SECOND, |d| d.seen.ended.is_some());
    assert_eq!(late.seen.ended.as_ref().map(|e| e.0), Some(EndReason::ConnectionRejected(3)));
    let mut late_tcp = Tcp::new(&gw, "latetcp");
    late_tcp.run_until("LoggedOut", 3 * SECOND, |d| d.seen.ended.is_some());
    assert_eq!(late_tcp.seen.logged_out(), Some("draining"));
    wait_metric(addr, "draining", 2, 3 * SECOND, || {});
    // ...then get LoggedOut("gateway draining").
    until("every session logged out", 10 * SECOND, || {
        step_all(&mut udp[1..], &mut tcp, Duration::from_millis(20));
        udp[1..].iter().all(|u| u.seen.ended.is_some()) && tcp[0].seen.ended.is_some()
    });
    for u in &udp[1..] {
        assert_eq!(u.seen.logged_out(), Some("gateway draining"), "{:?}", u.seen.events);
    }
    assert_eq!(tcp[0].seen.logged_out(), Some("gateway draining"));
    wait_metric(addr, "drain_logouts_total", 3, 3 * SECOND, || {});
    // The acceptor counted both refusals (it publishes every 200 ms): each ConnectionRequest
    // the late device sent (it re-sends after 500 ms without an answer, which a stalled
    // acceptor on a loaded machine can cause) and the one TCP connection.
    let request = MessageType::ConnectionRequest as u16;
    let requests = late.datagrams(true).iter().filter(|t| t.first() == Some(&request)).count();
    assert!(requests >= 1, "{:?}", late.wire);
    let udp_line =
        format!("fleetgate_connection_requests_total{{outcome=\"draining\"}} {requests}");
    until("the acceptor's drain counters", 3 * SECOND, || {
        let body = http_get(addr, "/metrics");
        body.contains(&udp_line)
            && body.contains("fleetgate_tcp_accepts_total{outcome=\"draining\"} 1")
    });

    // Undrain: new sessions are welcome again.
    assert_eq!(ctl(&sock, "undrain")["draining"], false);
    let mut back = Udp::new(&gw, "ADM-BACK");
    back.log_on(99);
    assert_eq!(back.dev.state(), DeviceState::Active);
    drop(gw);
    assert!(!sock.exists(), "the socket is removed at shutdown");
}

#[test]
fn the_admin_socket_refuses_a_file_and_an_active_socket_and_replaces_a_stale_one() {
    let dir = TempDir::new("admin-path");
    let path = dir.0.join("admin.sock");
    let set = format!("gateway.admin_socket=\"{}\"", path.display());
    std::fs::write(&path, b"not a socket").unwrap();
    let cfg = fleetgate::config::Config::load(
        None,
        &[
            set.clone(),
            "gateway.shards=1".into(),
            "gateway.handshake_addr=\"127.0.0.1:0\"".into(),
            "gateway.tcp_addr=\"127.0.0.1:0\"".into(),
            "observability.metrics_addr=\"\"".into(),
        ],
    )
    .unwrap();
    let auth = std::sync::Arc::new(fleetgate::session::OpenLogon);
    let err = fleetgate::ops::Server::start(&cfg, auth.clone()).err().expect("refused");
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"not a socket", "left alone");
    // A stale socket (its listener gone) is replaced.
    std::fs::remove_file(&path).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let gw = start("epoll", &[&set]);
    assert_eq!(ctl(&path, "status")["ok"], true);
    // A socket some gateway answers on is not taken over.
    let err = fleetgate::ops::Server::start(&cfg, auth).err().expect("refused");
    assert!(err.contains("in use"), "{err}");
    assert_eq!(ctl(&path, "status")["ok"], true, "the first one still answers");
    drop(gw);
}

/// A `fleetgate serve` process (the real binary) on free loopback ports ([`fixed_port`]) with
/// its operator socket; killed (SIGKILL) when dropped.
struct Serve {
    child: ChildGuard,
    handshake: u16,
    tcp: u16,
    admin: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Serve {
    fn start(dir: &Path, name: &str, io: &str, extra: &[&str]) -> Self {
        let (handshake, tcp_port, session) = (fixed_port(), fixed_port(), fixed_port());
        let admin = dir.join(format!("{name}.sock"));
        let log = dir.join(format!("{name}.log"));
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .args(["serve", "--open-logon", "--shards", "1", "--io", io])
            .args(["--handshake-addr", &format!("127.0.0.1:{handshake}")])
            .args(["--tcp-addr", &format!("127.0.0.1:{tcp_port}")])
            .args(["--session-port-base", &session.to_string()])
            .args(["--metrics-addr", ""])
            .args(["--set", &format!("gateway.admin_socket=\"{}\"", admin.display())])
            .args(extra.iter().flat_map(|s| ["--set", s]))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn fleetgate serve");
        let s = Self { child: ChildGuard(child), handshake, tcp: tcp_port, admin, log };
        until(&format!("gateway {name} up"), 10 * SECOND, || {
            std::thread::sleep(Duration::from_millis(20));
            fleetgate::tools::ctl::call(&s.admin, "status").is_ok()
        });
        s
    }

    fn active(&self) -> u64 {
        ctl(&self.admin, "status")["sessions"]["active"].as_u64().unwrap_or(0)
    }

    fn server(&self) -> fleetgate::tools::loadgen::fleet::Server {
        fleetgate::tools::loadgen::fleet::loopback(self.handshake, self.tcp)
    }
}

/// DESIGN.md §4 with three gateway processes and 300 devices (270 UDP, 30 TCP) carrying the
/// list: gateway 1 is drained (1 s deadline) and gateway 2 killed with SIGKILL while the fleet
/// is held. Every device ends logged on to gateway 0 with none lost, and the devices that first
/// logged on to gateway 0 were never disturbed (no session end, no ResendRequest).
#[test]
fn a_fleet_with_a_server_list_survives_a_drain_and_a_sigkill() {
    use fleetgate::tools::loadgen::{LoadConfig, Scenario};
    let dir = TempDir::new("failover");
    let extra = ["session.heartbeat_interval_s=2", "gateway.max_sessions_per_shard=512"];
    let gws: Vec<Serve> =
        (0..3).map(|i| Serve::start(&dir.0, &format!("gw{i}"), "auto", &extra)).collect();
    let cfg = LoadConfig {
        scenario: Scenario::Idle,
        udp_devices: 270,
        tcp_devices: 30,
        rate: 0.0,
        warmup: SECOND,
        duration: 16 * SECOND,
        sockets: 270,
        source_ips: 30,
        handshake_timeout: 2 * SECOND,
        step_timeout: 20 * SECOND,
        servers: gws.iter().map(Serve::server).collect(),
        progress: false,
        ..LoadConfig::default()
    };
    let load = std::thread::spawn(move || fleetgate::tools::loadgen::run(&cfg));
    until("the fleet logged on", 20 * SECOND, || {
        std::thread::sleep(Duration::from_millis(100));
        gws.iter().map(Serve::active).sum::<u64>() == 300
    });
    let before: Vec<u64> = gws.iter().map(Serve::active).collect();
    assert!(before.iter().all(|&n| n > 50), "the hash spreads the fleet: {before:?}");
    let mut gws = gws;
    assert_eq!(ctl(&gws[1].admin, "drain --deadline 1")["draining"], true);
    std::thread::sleep(SECOND);
    let _ = gws[2].child.kill();
    let _ = gws[2].child.wait();
    // Gateway 0's own count (its status, published once a second) reaches the whole fleet
    // while the fleet is held: read while the run lasts, since the generator logs every
    // device out at its end.
    let mut held = 0;
    until("gateway 0 holding the whole fleet", 60 * SECOND, || {
        std::thread::sleep(Duration::from_millis(100));
        held = gws[0].active();
        held == 300 || load.is_finished()
    });
    let report = load.join().expect("the generator").expect("the run");
    let logs: Vec<String> =
        gws.iter().map(|g| std::fs::read_to_string(&g.log).unwrap_or_default()).collect();
    let f = report.fleet.clone().expect("a fleet report");
    let why = format!("{}\n{:?}\ngateway logs: {logs:?}", report.table(), report.errors);
    assert_eq!(report.error_count(), 0, "{why}");
    assert!(!report.failed(), "{why}");
    assert_eq!(f.per_gateway.at_end, [300, 0, 0], "{why}");
    assert_eq!(f.per_gateway.first, before, "{why}");
    assert_eq!(f.per_gateway.undisturbed[0], before[0], "gateway 0's devices untouched: {why}");
    assert_eq!(f.per_gateway.sessions_ended[0], 0, "{why}");
    // Gateway 1's devices moved on at its deadline; gateway 2's after SIGKILL.
    assert!(f.moves.get("drain_deadline").copied().unwrap_or(0) >= before[1], "{why}");
    assert!(f.back_ns.count >= before[1] + before[2], "{why}");
    assert_eq!(held, 300, "gateway 0's status while the fleet was held: {why}");
    let status = ctl(&gws[1].admin, "status");
    assert_eq!(status["draining"], true, "{status}");
    assert_eq!(status["sessions"]["total"], 0, "{status}");
}
