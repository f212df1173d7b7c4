//! The operator side of a running gateway, over real sockets on 127.0.0.1: `/metrics` read by an
//! independent parser. Each test body is written once as `fn name(io: &str)` and instantiated
//! per I/O backend, as in `tests/gateway.rs`.

// Shared with tests/gateway.rs, which uses all of it.
#[allow(dead_code)]
#[macro_use]
mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use fleetgate::counters::Counter;
use fleetgate::protocol::{Body, Header, Password, Username};

const SECOND: Duration = Duration::from_secs(1);

backends! {
    metrics_parse_with_an_independent_parser => epoll_metrics_parse_with_an_independent_parser,
        uring_metrics_parse_with_an_independent_parser;
    idle_connections_cannot_lock_out_a_prompt_logon =>
        epoll_idle_connections_cannot_lock_out_a_prompt_logon,
        uring_idle_connections_cannot_lock_out_a_prompt_logon;
    impossible_first_frame_is_refused_at_once => epoll_impossible_first_frame_is_refused_at_once,
        uring_impossible_first_frame_is_refused_at_once;
    restart_right_after_sigkill_binds_the_same_ports =>
        epoll_restart_right_after_sigkill_binds_the_same_ports,
        uring_restart_right_after_sigkill_binds_the_same_ports;
    a_panicking_shard_aborts_the_process => epoll_a_panicking_shard_aborts_the_process,
        uring_a_panicking_shard_aborts_the_process;
}

/// `/metrics` of a running gateway, read by the Python `prometheus_client` parser (not the
/// crate that wrote it): every family parses, and a logon shows in `fleetgate_logons_accepted`,
/// the session in `fleetgate_sessions{state="active"}` and the handshake in the acceptor's
/// `fleetgate_connection_requests{outcome="accepted"}`.
fn metrics_parse_with_an_independent_parser(io: &str) {
    let gw = start(io, &[]);
    let addr = gw.metrics_addr.expect("metrics enabled");
    let mut d = Udp::new(&gw, "RT-PROM-1");
    d.log_on(9);
    wait_metric(addr, "logons_accepted_total", 1, 5 * SECOND, || d.step());
    // Both shards have published (once a second each) and housekeeping has merged an interval.
    let mut body = String::new();
    until("both shards and a histogram interval in /metrics", 5 * SECOND, || {
        body = http_get(addr, "/metrics");
        d.step();
        body.contains("fleetgate_shard_info{shard=\"1\"")
            && !body.contains("fleetgate_service_ns_count 0")
    });
    let text = body.split_once("\r\n\r\n").map_or(body.as_str(), |(_, b)| b);
    let Some(families) = parse_with_python(text) else { return };
    let family = |name: &str| {
        families
            .get(name)
            .unwrap_or_else(|| panic!("no family {name} in the parsed exposition:\n{text}"))
    };
    let sum = |name: &str, sample: &str, label: Option<(&str, &str)>| -> f64 {
        family(name)["samples"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s[0] == sample)
            .filter(|s| label.is_none_or(|(k, v)| s[1][k] == v))
            .map(|s| s[2].as_f64().unwrap())
            .sum()
    };
    assert_eq!(family("fleetgate_logons_accepted")["type"], "counter");
    assert_eq!(sum("fleetgate_logons_accepted", "fleetgate_logons_accepted_total", None), 1.0);
    assert_eq!(family("fleetgate_sessions")["type"], "gauge");
    assert_eq!(sum("fleetgate_sessions", "fleetgate_sessions", Some(("state", "active"))), 1.0);
    assert_eq!(
        sum(
            "fleetgate_connection_requests",
            "fleetgate_connection_requests_total",
            Some(("outcome", "accepted"))
        ),
        1.0
    );
    assert_eq!(family("fleetgate_service_ns")["type"], "histogram");
    assert!(sum("fleetgate_service_ns", "fleetgate_service_ns_count", None) >= 1.0);
    let backend = if io == "uring" { "io_uring" } else { "epoll" };
    let info = family("fleetgate_shard_info")["samples"].as_array().unwrap().clone();
    assert_eq!(info.len(), 2, "{info:?}");
    assert!(info.iter().all(|s| s[1]["backend"] == backend), "{info:?}");
    gw.stop();
}

/// The exposition parsed by Python's `prometheus_client.parser`, as
/// `{family: {"type": .., "samples": [[name, labels, value], ..]}}`. `None` (with a loud note)
/// when the parser is not installed, except under CI, where that fails.
fn parse_with_python(text: &str) -> Option<serde_json::Map<String, serde_json::Value>> {
    const SCRIPT: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    out[f.name] = {"type": f.type, "samples": [[s.name, s.labels, s.value] for s in f.samples]}
print(json.dumps(out))
"#;
    if !python_has("prometheus_client", "prometheus-client", "independent /metrics check") {
        return None;
    }
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parser refused /metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).expect("parser output is JSON"))
}

/// Raises this process's soft open-files limit to its hard limit (the tests hold thousands of
/// sockets, both ends in this process).
fn raise_open_files() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    l.current = l.maximum;
    let _ = setrlimit(Resource::Nofile, l);
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// Issue 9, found flaw 1 (DESIGN.md §2 rule 12). 2,000 connections that never send a byte,
/// against a table of 512 pending logons: the oldest are closed ("server busy") to make room,
/// and a client that logs on promptly gets in within 1 s.
fn idle_connections_cannot_lock_out_a_prompt_logon(io: &str) {
    let limit = raise_open_files();
    assert!(limit >= 6000, "open files limit {limit}: the test needs about 4,100");
    let gw = start(
        io,
        &["tcp.max_pending_logons=512", "tcp.logon_timeout_ms=60000", "gateway.shards=1"],
    );
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(gw.gateway.tcp_addr).expect("connect an idle client"))
        .collect();
    // The acceptor has taken them all in (a few hundred ms at most).
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    let mut d = Tcp::new(&gw, "rt-prompt-1");
    d.run_until("a prompt logon past 2,000 idle connections", SECOND, |c| {
        c.dev.state() == fleetgate::session::DeviceState::Active
    });
    let took = t0.elapsed();
    assert!(took < SECOND, "logon took {took:?}");
    d.echo(&bodies(0..2));
    // Every idle connection is taken in by now or soon, each beyond the 512th closing the
    // oldest.
    let addr = gw.metrics_addr.expect("metrics enabled");
    let evicted = "fleetgate_tcp_accepts_total{outcome=\"evicted\"} ";
    let mut seen = 0;
    let mut body = String::new();
    let t = Instant::now();
    while t.elapsed() < 5 * SECOND && seen < 2000 + 1 - 512 {
        body = http_get(addr, "/metrics");
        seen = body
            .lines()
            .find_map(|l| l.strip_prefix(evicted).and_then(|v| v.parse::<u64>().ok()))
            .unwrap_or(0);
        std::thread::sleep(Duration::from_millis(50));
    }
    let accepts: Vec<&str> = body.lines().filter(|l| l.contains("tcp_")).collect();
    assert!(seen > 2000 - 512, "the idle connections beyond 512 not closed: {accepts:#?}");
    drop(idle);
    let totals = gw.stop();
    assert!(totals.acceptor.get(Counter::TcpEvicted) >= 2000 + 1 - 512, "{seen}");
    assert_eq!(totals.acceptor.get(Counter::TcpHandedOff), 1);
}

/// Issue 9, found flaw 1: a first frame whose header declares 65,535 bytes (the limit is 1,024)
/// is refused at once with LoggedOut, not held until the logon deadline.
fn impossible_first_frame_is_refused_at_once(io: &str) {
    let gw = start(io, &["tcp.logon_timeout_ms=10000"]);
    let logon = Body::LogonRequest {
        username: Username::new(b"rt-huge-1").unwrap(),
        password: Password::new(b"pw").unwrap(),
        reset_seq_num: true,
    };
    let mut first = encode(msg(1, logon));
    first[2..4].copy_from_slice(&65_535u16.to_le_bytes());
    assert!(Header::decode(&first).is_ok(), "only the length is impossible");
    let mut c = RawTcp::connect(gw.gateway.tcp_addr);
    let t0 = Instant::now();
    c.send(&first[..32]);
    let f = c.recv(5 * SECOND).expect("LoggedOut");
    assert_eq!(decode(&f).body, Body::LoggedOut { reason: b"message too long" });
    assert!(c.wait_closed(2 * SECOND), "left open after an impossible first frame");
    assert!(t0.elapsed() < SECOND, "refused after {:?}", t0.elapsed());
    let totals = gw.stop();
    assert_eq!(totals.acceptor.get(Counter::TcpMalformed), 1);
    assert_eq!(totals.acceptor.get(Counter::TcpLogonTimeouts), 0);
}

/// Issue 9, found flaw 6. 200 clients that send half their request headers and stop do not keep
/// `/metrics` from answering a fresh client within 1 s; after the header timeout they are closed.
#[test]
fn http_serves_a_fresh_client_while_200_hold_half_sent_headers() {
    raise_open_files();
    let gw = start("epoll", &["observability.http_header_timeout_ms=1500"]);
    let addr = gw.metrics_addr.expect("metrics enabled");
    until("the shards' first snapshots", 5 * SECOND, || {
        http_get(addr, "/metrics").contains("fleetgate_logons_accepted_total")
    });
    let mut slow: Vec<TcpStream> = (0..200)
        .map(|_| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(100));
    let t0 = Instant::now();
    let body = http_get(addr, "/metrics");
    let took = t0.elapsed();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(body.contains("fleetgate_logons_accepted_total"), "{body}");
    assert!(took < SECOND, "/metrics answered after {took:?}");
    // The header timeout closes them: a read sees the end of the stream (or a reset).
    let t1 = Instant::now();
    for s in &mut slow {
        s.set_read_timeout(Some(5 * SECOND)).unwrap();
        let mut buf = [0u8; 512];
        let n = std::io::Read::read(s, &mut buf).unwrap_or(0);
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert!(t1.elapsed() < 4 * SECOND, "half-sent requests held for {:?}", t1.elapsed());
    gw.stop();
}

/// The real binary, `fleetgate serve` on fixed loopback ports; killed (SIGKILL) when dropped.
struct Serve {
    child: ChildGuard,
    log: std::path::PathBuf,
}

/// The ports a [`Serve`] binds: UDP handshake, TCP, first session port, HTTP.
#[derive(Clone, Copy)]
struct Ports {
    handshake: u16,
    tcp: u16,
    session_base: u16,
    http: u16,
}

impl Ports {
    /// Ports free right now that no other test takes meanwhile ([`fixed_port`]).
    fn free() -> Self {
        Self {
            handshake: fixed_port(),
            tcp: fixed_port(),
            session_base: fixed_port(),
            http: fixed_port(),
        }
    }
}

impl Serve {
    fn start(io: &str, ports: Ports, log: std::path::PathBuf, env: &[(&str, &str)]) -> Self {
        Self::start_with(io, ports, log, env, &[])
    }

    /// As [`Serve::start`], with more `serve` arguments after the others.
    fn start_with(
        io: &str,
        ports: Ports,
        log: std::path::PathBuf,
        env: &[(&str, &str)],
        extra: &[&str],
    ) -> Self {
        let child = Command::new(env!("CARGO_BIN_EXE_fleetgate"))
            .args(["serve", "--open-logon", "--shards", "1", "--io", io])
            .args(["--handshake-addr", &format!("127.0.0.1:{}", ports.handshake)])
            .args(["--tcp-addr", &format!("127.0.0.1:{}", ports.tcp)])
            .args(["--session-port-base", &ports.session_base.to_string()])
            .args(["--metrics-addr", &format!("127.0.0.1:{}", ports.http)])
            .args(["--set", "gateway.max_sessions_per_shard=16"])
            .args(extra)
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn fleetgate serve");
        Self { child: ChildGuard(child), log }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// True once `/healthz` answers `ok`.
    fn healthy(ports: Ports) -> bool {
        let addr = local(ports.http);
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = std::io::Read::read_to_string(&mut s, &mut out);
        out.starts_with("HTTP/1.1 200") && out.ends_with("ok\n")
    }
}

/// Issue 9, found flaw 5. A gateway killed with SIGKILL while it holds a TCP session is
/// restarted at once on the same ports: the new one binds (retrying while the old sockets are
/// being released) and serves a logon.
fn restart_right_after_sigkill_binds_the_same_ports(io: &str) {
    let dir = TempDir::new(&format!("sigkill-{io}"));
    let ports = Ports::free();
    let first = Serve::start(io, ports, dir.0.join("first.log"), &[]);
    until("the first gateway's /healthz", 5 * SECOND, || Serve::healthy(ports));
    let mut d = Tcp::with_password(local(ports.tcp), "rt-kill-1", b"pw");
    d.run_until("a logon on the first gateway", 5 * SECOND, |c| {
        c.dev.state() == fleetgate::session::DeviceState::Active
    });
    drop(first); // SIGKILL, reaped
    let mut second = Serve::start(io, ports, dir.0.join("second.log"), &[]);
    let t0 = Instant::now();
    until("the restarted gateway's /healthz", 5 * SECOND, || {
        if let Ok(Some(status)) = second.child.try_wait() {
            panic!("restart failed ({status}):\n{}", second.stderr());
        }
        Serve::healthy(ports)
    });
    let mut d = Tcp::with_password(local(ports.tcp), "rt-kill-2", b"pw");
    d.run_until("a logon on the restarted gateway", 5 * SECOND, |c| {
        c.dev.state() == fleetgate::session::DeviceState::Active
    });
    assert!(t0.elapsed() < 5 * SECOND);
    assert!(!second.stderr().contains("cannot bind"), "{}", second.stderr());
}

/// The panic policy (README "Operating it"): a panic on a shard thread (injected with the
/// test-only `FLEETGATE_TEST_PANIC_SHARD0_MS`, compiled in with the `sim` feature) aborts the
/// whole process at once, logging the thread; it never leaves a half-alive gateway answering
/// `/healthz`.
fn a_panicking_shard_aborts_the_process(io: &str) {
    use std::os::unix::process::ExitStatusExt;
    let dir = TempDir::new(&format!("panic-{io}"));
    let ports = Ports::free();
    let mut gw = Serve::start(
        io,
        ports,
        dir.0.join("serve.log"),
        &[("FLEETGATE_TEST_PANIC_SHARD0_MS", "1500")],
    );
    until("/healthz before the panic", 5 * SECOND, || Serve::healthy(ports));
    let t0 = Instant::now();
    let status = loop {
        if let Some(status) = gw.child.try_wait().unwrap() {
            break status;
        }
        assert!(t0.elapsed() < 5 * SECOND, "still running 5 s after the panic:\n{}", gw.stderr());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(6), "not aborted (SIGABRT): {status}\n{}", gw.stderr());
    let err = gw.stderr();
    assert!(err.contains("fleetgate-shard-0") && err.contains("injected"), "{err}");
    assert!(!Serve::healthy(ports), "/healthz answers after the abort");
}

/// Issue 12: `gateway.service_cpus` pins every thread but the shards (acceptor, housekeeping,
/// HTTP, operator channel, the main thread) to its list, and the shard to `gateway.cpus`, as
/// `/proc/<pid>/task/*/status` (Cpus_allowed_list) shows; the start-up log names each.
#[test]
fn service_threads_run_on_service_cpus() {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (shard_cpu, service_cpu) = (0, n - 1);
    let dir = TempDir::new("service-cpus");
    let ports = Ports::free();
    let admin = dir.0.join("admin.sock");
    let cpus = format!("gateway.cpus=[{shard_cpu}]");
    let service = format!("gateway.service_cpus=[{service_cpu}]");
    let admin_set = format!("gateway.admin_socket=\"{}\"", admin.display());
    let mut serve = Serve::start_with(
        "epoll",
        ports,
        dir.0.join("serve.log"),
        &[],
        &["--set", &cpus, "--set", &service, "--set", &admin_set],
    );
    until("/healthz", 5 * SECOND, || {
        if let Ok(Some(status)) = serve.child.try_wait() {
            panic!("serve exited ({status}):\n{}", serve.stderr());
        }
        Serve::healthy(ports)
    });
    let pid = serve.child.id();
    let placement = || {
        let mut seen = std::collections::BTreeMap::new();
        for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
            let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let field = |k: &str| {
                status.lines().find_map(|l| l.strip_prefix(k)).map(|v| v.trim().to_string())
            };
            if let (Some(name), Some(cpus)) = (field("Name:"), field("Cpus_allowed_list:")) {
                seen.insert(name, cpus);
            }
        }
        seen
    };
    let want_service = service_cpu.to_string();
    let service =
        ["fleetgate", "fleetgate-accep", "fleetgate-house", "fleetgate-http", "fleetgate-admin"];
    let placed = |seen: &std::collections::BTreeMap<String, String>| {
        service.iter().all(|n| seen.get(*n) == Some(&want_service))
            && seen.get("fleetgate-shard") == Some(&shard_cpu.to_string())
    };
    // Each thread pins itself as it starts: give them a moment (bounded), then check.
    let t0 = Instant::now();
    while !placed(&placement()) && t0.elapsed() < 5 * SECOND {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = placement();
    for name in service {
        assert_eq!(seen.get(name), Some(&want_service), "{name}: {seen:?}\n{}", serve.stderr());
    }
    assert_eq!(seen.get("fleetgate-shard"), Some(&shard_cpu.to_string()), "{seen:?}");
    // Each thread logs once it runs: wait for the lines (bounded).
    let names =
        ["fleetgate-acceptor", "fleetgate-housekeeping", "fleetgate-http", "fleetgate-admin"];
    let logged = |log: &str, name: &str| {
        log.lines().any(|l| l.contains("service thread pinned") && l.contains(name))
    };
    until("every service thread's start-up line", 5 * SECOND, || {
        let log = serve.stderr();
        names.iter().all(|n| logged(&log, n))
    });
}
