//! Each load scenario, briefly, against a real in-process gateway on loopback; the JSON summary
//! is checked: completions above zero, zero errors, percentiles present and ordered. Then the
//! runs that must fail: a gateway that refuses some devices (SERVER_FULL) and one behind a proxy
//! that drops some devices' handshakes; each lost device is an error of the right kind, and the
//! command exits with failure. And the generator's floor against a plain echo server.

#[allow(dead_code)]
mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fleetgate::session::handshake::shard_for;
use fleetgate::tools::loadgen::{self, LoadConfig, Scenario};

fn run(scenario: Scenario, extra: &[&str], tweak: impl FnOnce(&mut LoadConfig)) -> String {
    let gw = common::start("epoll", extra);
    let mut cfg = LoadConfig {
        scenario,
        handshake: gw.gateway.handshake_addr,
        tcp: gw.gateway.tcp_addr,
        udp_devices: 40,
        tcp_devices: 4,
        rate: 400.0,
        warmup: Duration::from_millis(800),
        duration: Duration::from_millis(1500),
        threads: 2,
        source_ips: 8,
        reconnect_every: Duration::from_millis(600),
        ..LoadConfig::default()
    };
    tweak(&mut cfg);
    let report = loadgen::run(&cfg).expect("load run");
    drop(gw);
    let json = report.json();
    assert!(!report.failed(), "{scenario:?} failed:\n{}\n{json}", report.table());
    json
}

/// A storm of `udp` + `tcp` devices at a gateway with room for them all: no warm-up and no
/// request traffic; `tweak` sets the rest.
fn storm(udp: usize, tcp: usize, tweak: impl FnOnce(&mut LoadConfig)) -> String {
    run(Scenario::Storm, &["gateway.max_sessions_per_shard=256"], |c| {
        c.udp_devices = udp;
        c.tcp_devices = tcp;
        c.warmup = Duration::ZERO;
        c.rate = 0.0;
        tweak(c);
    })
}

use common::json_num as num;

fn check_common(json: &str, latency: &str) {
    assert!(num(json, &["completions"]) > 0.0, "{json}");
    assert_eq!(num(json, &["errors_total"]), 0.0, "{json}");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(v["failed"], false, "{json}");
    let q: Vec<f64> = ["p50", "p90", "p99", "p99_9", "p99_99", "max"]
        .iter()
        .map(|k| num(json, &[latency, k]))
        .collect();
    assert!(q[0] > 0.0, "{latency} p50 missing in {json}");
    assert!(q.windows(2).all(|w| w[0] <= w[1]), "{latency} percentiles out of order: {q:?}");
}

#[test]
fn steady_scenario() {
    let json = run(Scenario::Steady, &[], |_| {});
    check_common(&json, "latency_ns");
    assert!(num(&json, &["received"]) >= 0.9 * num(&json, &["sent"]), "{json}");
    // The generator calibrates itself: its send lateness beside the latency.
    assert!(num(&json, &["lateness_ns", "count"]) >= 0.9 * num(&json, &["sent"]), "{json}");
    assert!(num(&json, &["lateness_ns", "p50"]) > 0.0, "{json}");
    assert!(num(&json, &["generator", "cpu_user_s"]) > 0.0, "{json}");
    assert!(num(&json, &["generator", "rss_end_bytes"]) > 0.0, "{json}");
}

/// `ping_pong`: one echo request in flight at a time (per generator thread), as sockperf's
/// ping-pong, even when the rate asks for more than round trips can carry; every request is
/// answered and timed.
#[test]
fn steady_ping_pong_keeps_one_request_in_flight() {
    let json = run(Scenario::Steady, &[], |c| {
        c.threads = 1;
        c.tcp_devices = 0;
        c.rate = 50_000.0;
        c.ping_pong = true;
    });
    check_common(&json, "latency_ns");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["ping_pong"], true, "{json}");
    assert_eq!(num(&json, &["in_flight_max"]), 1.0, "{json}");
    let sent = num(&json, &["sent"]);
    assert!(sent >= 100.0, "{json}");
    // Replies of the last request may still be owed when sending stops.
    assert!(num(&json, &["received"]) >= sent - 1.0, "{json}");
    assert!(num(&json, &["latency_ns", "count"]) >= sent - 1.0, "{json}");
}

#[test]
fn storm_scenario() {
    // The gateway runs in this process: its CPU figures are the whole process's.
    let json = storm(200, 10, |c| {
        c.source_ips = 50;
        c.gateway_pid = Some(std::process::id());
    });
    check_common(&json, "handshake_ns");
    assert_eq!(num(&json, &["logons"]), 210.0, "{json}");
    // CPU per logon, from the start of the run until the fleet was on.
    assert!(num(&json, &["generator", "cpu_per_logon_us"]) > 0.0, "{json}");
    assert!(num(&json, &["gateway", "cpu_per_logon_us"]) > 0.0, "{json}");
    assert!(num(&json, &["gateway", "storm_cpu_s"]) > 0.0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["scenario"], "storm", "{json}");
    let step = &v["steps"][0];
    assert_eq!(step["logged_on"], 210, "{json}");
    assert!(step["rate_99_per_s"].as_f64().unwrap() > 0.0, "{json}");
    assert!(step["rate_all_per_s"].as_f64().unwrap() > 0.0, "{json}");
    assert!(step["t99_s"].as_f64().unwrap() <= step["t_last_s"].as_f64().unwrap(), "{json}");
    assert_eq!(step["retransmissions"]["connection_requests"], 200, "every UDP device: {json}");
    assert_eq!(num(&json, &["active_at_end"]), 210.0, "{json}");
    // Datagrams per UDP logon (issue 11): 3 from the device (ConnectionRequest,
    // RegistrationRequest, DeviceConfig + LogonRequest) and 4 to it; beyond that, only what
    // retries and their answers add (a retry, or a repeated GetDeviceConfig answered, sends one
    // more and is answered by at most one more).
    assert_eq!(num(&json, &["wire", "udp_logons"]), 200.0, "{json}");
    let sent = num(&json, &["wire", "logon_datagrams_sent"]);
    let received = num(&json, &["wire", "logon_datagrams_received"]);
    let retries = step["retransmissions"]["total"].as_f64().unwrap();
    assert!(received >= 800.0, "{json}");
    assert!(sent >= 600.0 && sent - 600.0 <= retries + (received - 800.0), "{json}");
}

/// A storm in steps: each step reported on its own, earlier steps still logged on at the end.
#[test]
fn storm_in_steps() {
    let json = storm(300, 0, |c| {
        c.steps = 3;
        c.duration = Duration::from_millis(500);
        c.source_ips = 20;
        c.sockets = 30;
    });
    check_common(&json, "handshake_ns");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 3, "{json}");
    let mut last_first = -1.0;
    for st in steps {
        assert_eq!(st["devices"], 100, "{json}");
        assert_eq!(st["logged_on"], 100, "{json}");
        assert!(st["handshake_ns"]["count"].as_u64().unwrap() == 100, "{json}");
        let first = st["first_request_s"].as_f64().unwrap();
        assert!(first > last_first, "steps run one after the other: {json}");
        last_first = first;
    }
    assert_eq!(num(&json, &["active_at_end"]), 300.0, "{json}");
    assert_eq!(num(&json, &["generator", "sockets"]), 30.0, "{json}");
}

#[test]
fn idle_scenario() {
    let json = run(Scenario::Idle, &["session.heartbeat_interval_s=1"], |c| {
        c.duration = Duration::from_millis(2500);
    });
    check_common(&json, "handshake_ns");
    assert_eq!(num(&json, &["sent"]), 0.0, "idle sessions send no requests: {json}");
    // 44 devices heartbeating every second for 2.5 s.
    assert!(num(&json, &["hold", "heartbeats_sent"]) >= 44.0, "{json}");
    assert!(num(&json, &["hold", "heartbeats_sent_per_s"]) > 10.0, "{json}");
    assert_eq!(num(&json, &["active_at_end"]), 44.0, "{json}");
}

#[test]
fn resend_scenario_delivers_every_feed_event_exactly_once() {
    // The scenario drops 10% of what reaches the devices, GetDeviceConfig included, and the
    // gateway re-sends that every `device_config_retry_ms`. At the default 1 s a device gets 3
    // or 4 of them in this 3.3 s run, all dropped for about one device in 10^4 logons (each
    // resume asks for the config again): the test failed about 1 run in 80 with one device
    // `never_logged_on`. Every 200 ms gives each logon 5 chances a second.
    let extra = [
        "gateway.app=\"feed\"",
        "gateway.feed_interval_ms=50",
        "journal.messages_per_session=512",
        "udp.device_config_retry_ms=200",
    ];
    let json = run(Scenario::Resend, &extra, |c| {
        c.drop_share = 0.1;
        c.duration = Duration::from_millis(2500);
        c.max_error_share = 0.0;
    });
    check_common(&json, "latency_ns");
    assert!(num(&json, &["feed", "received"]) > 100.0, "{json}");
    assert_eq!(num(&json, &["feed", "missing"]), 0.0, "{json}");
    assert_eq!(num(&json, &["feed", "duplicates"]), 0.0, "{json}");
    assert!(num(&json, &["resend_requests"]) > 0.0, "the drops must have caused resends: {json}");
}

/// A gateway whose application never answers: every echo request of the steady run is a lost
/// reply, counted once the end has waited for them, and the run fails. The report's figures
/// add up: sent minus received is the number lost.
#[test]
fn unanswered_echo_requests_are_lost_replies() {
    let gw = common::start("epoll", &["gateway.app=\"none\""]);
    let cfg = LoadConfig {
        scenario: Scenario::Steady,
        handshake: gw.gateway.handshake_addr,
        tcp: gw.gateway.tcp_addr,
        udp_devices: 20,
        tcp_devices: 2,
        rate: 200.0,
        warmup: Duration::from_millis(500),
        duration: Duration::from_millis(500),
        threads: 2,
        source_ips: 4,
        ..LoadConfig::default()
    };
    let json = run_failing(&cfg);
    let sent = num(&json, &["sent"]);
    assert!(sent >= 50.0, "{json}");
    assert_eq!(num(&json, &["received"]), 0.0, "{json}");
    assert_eq!(num(&json, &["errors", "lost_replies"]), sent, "{json}");
}

/// Echo requests that come due while no device is logged on wait for one, and those still
/// waiting at the end are errors: here nothing answers the handshake, so every request of the
/// measured window (rate × duration) is `no_active_session`, beside the devices' own errors.
#[test]
fn requests_with_no_session_to_carry_them_are_errors() {
    let dead = UdpSocket::bind("127.0.0.1:0").unwrap();
    let cfg = LoadConfig {
        scenario: Scenario::Steady,
        handshake: dead.local_addr().unwrap(),
        udp_devices: 4,
        tcp_devices: 0,
        rate: 100.0,
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(1000),
        threads: 1,
        source_ips: 2,
        ..LoadConfig::default()
    };
    let json = run_failing(&cfg);
    let unsent = num(&json, &["errors", "no_active_session"]);
    assert!((99.0..=101.0).contains(&unsent), "{json}");
    assert_eq!(num(&json, &["sent"]), 0.0, "{json}");
}

#[test]
fn churn_scenario() {
    let json = run(Scenario::Churn, &[], |c| {
        c.duration = Duration::from_millis(2000);
        c.reconnect_every = Duration::from_millis(300);
        c.max_error_share = 0.01;
    });
    check_common(&json, "handshake_ns");
    assert!(num(&json, &["logons"]) > 44.0, "sessions must have come back: {json}");
}

/// TCP clients connect a few at a time (`sockets` bounds them as it bounds UDP handshakes):
/// all log on, through the waiting queue.
#[test]
fn tcp_clients_wait_their_turn_and_all_log_on() {
    let json = storm(0, 60, |c| {
        c.sockets = 4;
        c.duration = Duration::from_millis(300);
    });
    check_common(&json, "handshake_ns");
    assert_eq!(num(&json, &["logons"]), 60.0, "{json}");
    assert_eq!(num(&json, &["active_at_end"]), 60.0, "{json}");
    assert_eq!(num(&json, &["steps", "0", "connects"]), 60.0, "one attempt each: {json}");
}

/// Runs a load that must fail; its JSON summary.
fn run_failing(cfg: &LoadConfig) -> String {
    let report = loadgen::run(cfg).expect("load run");
    assert!(report.failed(), "{}", report.table());
    report.json()
}

/// `lost` of the `n` devices ended with error `kind` and nothing else went wrong; the others
/// logged on.
fn check_lost(json: &str, kind: &str, lost: usize, n: usize) {
    assert_eq!(num(json, &["errors", kind]), lost as f64, "{json}");
    assert_eq!(num(json, &["errors_total"]), lost as f64, "{json}");
    assert_eq!(num(json, &["logons"]), (n - lost) as f64, "{json}");
}

/// A short storm of `n` UDP devices from 4 source addresses, for the runs that must fail (their
/// own gateway or proxy in front).
fn udp_storm(handshake: SocketAddr, tcp: SocketAddr, n: usize) -> LoadConfig {
    LoadConfig {
        scenario: Scenario::Storm,
        handshake,
        tcp,
        udp_devices: n,
        tcp_devices: 0,
        rate: 0.0,
        warmup: Duration::ZERO,
        duration: Duration::from_millis(300),
        source_ips: 4,
        ..LoadConfig::default()
    }
}

/// Devices `0..n` as the generator names them (uid `DEV-000042` for prefix "dev"), counted per
/// shard the way the gateway places them.
fn per_shard(n: usize, shards: usize) -> Vec<usize> {
    let mut count = vec![0; shards];
    for i in 0..n {
        count[shard_for(format!("DEV-{i:06}").as_bytes(), shards)] += 1;
    }
    count
}

/// A gateway that holds fewer sessions than the fleet: the rest get RegistrationReject
/// (SERVER_FULL). Each of them is a device error of that kind, the sum is `errors_total`, the run
/// fails, and so does the command (exit status 1).
#[test]
fn a_full_gateway_loses_devices_and_the_run_says_so() {
    let cap = 16;
    let gw = common::start("epoll", &[&format!("gateway.max_sessions_per_shard={cap}")]);
    let n = 60;
    let refused: usize = per_shard(n, 2).iter().map(|&c| c.saturating_sub(cap)).sum();
    assert!(refused > 20, "the fleet must overflow the gateway ({refused})");
    let cfg =
        LoadConfig { sockets: 8, ..udp_storm(gw.gateway.handshake_addr, gw.gateway.tcp_addr, n) };
    let json = run_failing(&cfg);
    check_lost(&json, "registration_rejected_server_full", refused, n);
    assert_eq!(num(&json, &["device_errors"]), refused as f64, "{json}");
    assert_eq!(num(&json, &["steps", "0", "logged_on"]), (n - refused) as f64, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["failed"], true, "{json}");

    // The command line says the same with its exit status (a fresh gateway: the first one is
    // full of the sessions above).
    drop(gw);
    let gw = common::start("epoll", &[&format!("gateway.max_sessions_per_shard={cap}")]);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetgate"))
        .args(["load", "storm", "--json", "--rate", "0", "--warmup", "0", "--duration", "0.3"])
        .args(["--devices", &n.to_string(), "--source-ips", "4", "--sockets", "8"])
        .args(["--handshake", &gw.gateway.handshake_addr.to_string()])
        .output()
        .expect("run fleetgate load");
    let json = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(1), "exit status; stdout {json}");
    assert_eq!(
        num(&json, &["errors", "registration_rejected_server_full"]),
        refused as f64,
        "{json}"
    );
}

/// A UDP proxy between the generator and a real gateway, rewriting the session port that
/// ConnectionAccept names so that session traffic flows through it too (a NAT: one upstream
/// socket per generator socket). It drops the ConnectionRequests of every `drop_every`-th
/// device, forever.
struct DroppingProxy {
    handshake: SocketAddr,
    dropped_requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DroppingProxy {
    fn start(gw_handshake: SocketAddr, gw_sessions: &[u16], drop_every: usize) -> Self {
        let bind = || {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            s.set_nonblocking(true).unwrap();
            s
        };
        let hs = bind();
        let sessions: Vec<UdpSocket> = gw_sessions.iter().map(|_| bind()).collect();
        let handshake = hs.local_addr().unwrap();
        let dropped_requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (dropped, halt) = (dropped_requests.clone(), stop.clone());
        let gw_sessions = gw_sessions.to_vec();
        let thread = std::thread::spawn(move || {
            // Client address -> upstream socket index; upstream sockets with their client.
            let mut by_client: HashMap<SocketAddr, usize> = HashMap::new();
            let mut upstream: Vec<(UdpSocket, SocketAddr)> = Vec::new();
            let mut buf = [0u8; 2048];
            let fake_ports: Vec<u16> =
                sessions.iter().map(|s| s.local_addr().unwrap().port()).collect();
            while !halt.load(Ordering::Relaxed) {
                let mut busy = false;
                // From clients: the handshake port and the session ports.
                let inbound = std::iter::once((&hs, None))
                    .chain(sessions.iter().enumerate().map(|(k, s)| (s, Some(k))));
                for (sock, shard) in inbound {
                    while let Ok((n, from)) = sock.recv_from(&mut buf) {
                        busy = true;
                        let to = match shard {
                            None => {
                                // ConnectionRequest: deviceUid at 8 (prefix) + 32 (header).
                                let uid = String::from_utf8_lossy(&buf[40..56]);
                                let index: usize = uid
                                    .trim_end_matches('\0')
                                    .rsplit('-')
                                    .next()
                                    .and_then(|d| d.parse().ok())
                                    .unwrap_or(1);
                                if index % drop_every == 0 {
                                    dropped.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                gw_handshake
                            }
                            Some(k) => SocketAddr::from(([127, 0, 0, 1], gw_sessions[k])),
                        };
                        let u = *by_client.entry(from).or_insert_with(|| {
                            upstream.push((bind(), from));
                            upstream.len() - 1
                        });
                        let _ = upstream[u].0.send_to(&buf[..n], to);
                    }
                }
                // From the gateway, back to the client from the port it expects.
                for (up, client) in &upstream {
                    while let Ok((n, from)) = up.recv_from(&mut buf) {
                        busy = true;
                        if from == gw_handshake {
                            // ConnectionAccept (type 51): name our session port instead.
                            if n >= 42 && u16::from_le_bytes([buf[12], buf[13]]) == 51 {
                                let real = u16::from_le_bytes([buf[40], buf[41]]);
                                if let Some(k) = gw_sessions.iter().position(|&p| p == real) {
                                    buf[40..42].copy_from_slice(&fake_ports[k].to_le_bytes());
                                }
                            }
                            let _ = hs.send_to(&buf[..n], client);
                        } else if let Some(k) = gw_sessions.iter().position(|&p| p == from.port()) {
                            let _ = sessions[k].send_to(&buf[..n], client);
                        }
                    }
                }
                if !busy {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        Self { handshake, dropped_requests, stop, thread: Some(thread) }
    }
}

impl Drop for DroppingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A gateway that never sees some devices' handshakes: each of them is a `handshake_timeout`
/// after its attempts, the others log on through the proxy (replies to shared sockets routed by
/// session id), and the run fails.
#[test]
fn dropped_handshakes_are_handshake_timeouts() {
    let gw = common::start("epoll", &[]);
    let proxy = DroppingProxy::start(gw.gateway.handshake_addr, &gw.gateway.session_ports, 7);
    let n = 50;
    let lost = (0..n).filter(|i| i % 7 == 0).count();
    let t0 = Instant::now();
    let cfg = LoadConfig {
        sockets: 10,
        attempts: 2,
        handshake_timeout: Duration::from_millis(800),
        ..udp_storm(proxy.handshake, gw.gateway.tcp_addr, n)
    };
    let json = run_failing(&cfg);
    check_lost(&json, "handshake_timeout", lost, n);
    assert_eq!(num(&json, &["active_at_end"]), (n - lost) as f64, "{json}");
    // Two attempts each, every 500 ms a ConnectionRequest: at least 2 dropped per lost device.
    assert!(proxy.dropped_requests.load(Ordering::Relaxed) >= 2 * lost as u64, "{json}");
    assert!(num(&json, &["steps", "0", "retransmissions", "timeouts_retried"]) >= lost as f64);
    assert!(t0.elapsed() < Duration::from_secs(20));

    // Devices that would retry for a long time are cut at the step's timeout: still errors of
    // the kind they last saw, and the run ends on time.
    let t0 = Instant::now();
    let cfg = LoadConfig { attempts: 100, step_timeout: Duration::from_millis(2500), ..cfg };
    let json = run_failing(&cfg);
    check_lost(&json, "handshake_timeout", lost, n);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
}

/// The generator's floor: the steady scenario's datagrams against a plain echo thread, no
/// gateway. Latency and lateness are measured the same way; nothing is lost.
#[test]
fn raw_echo_measures_the_generators_floor() {
    let echo = common::Echo::start();
    let cfg = LoadConfig {
        scenario: Scenario::Steady,
        udp_devices: 20,
        rate: 2000.0,
        warmup: Duration::from_millis(200),
        duration: Duration::from_millis(1000),
        source_ips: 4,
        raw_echo: Some(echo.addr),
        ..LoadConfig::default()
    };
    let report = loadgen::run(&cfg).expect("raw run");
    drop(echo);
    let json = report.json();
    assert!(!report.failed(), "{}", report.table());
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["raw_echo"], true);
    let sent = num(&json, &["sent"]);
    assert!((1800.0..=2200.0).contains(&sent), "2,000/s for 1 s: {json}");
    assert_eq!(num(&json, &["received"]), sent, "{json}");
    assert_eq!(num(&json, &["latency_ns", "count"]), sent, "{json}");
    assert_eq!(num(&json, &["lateness_ns", "count"]), sent, "{json}");
    assert!(num(&json, &["latency_ns", "p50"]) >= num(&json, &["lateness_ns", "p50"]), "{json}");
    assert_eq!(num(&json, &["errors_total"]), 0.0, "{json}");
}

/// `load resend-burst` against a gateway whose journal holds the burst: every reply is resent,
/// checked and timed on both transports. Against one whose journal is smaller than the burst,
/// every run is an error naming the gateway's answer (LoggedOut "resend window exceeded"), and
/// the report fails.
#[test]
fn resend_burst_checks_every_resent_message() {
    use fleetgate::tools::loadgen::burst::{self, BurstConfig};
    let burst_cfg = |gw: &fleetgate::ops::Server, seed| BurstConfig {
        handshake: gw.gateway.handshake_addr,
        tcp: gw.gateway.tcp_addr,
        messages: 500,
        window: 64,
        repeat: 2,
        seed,
        phase_timeout: Duration::from_secs(10),
        ..BurstConfig::default()
    };
    let gw = common::start("epoll", &["journal.messages_per_session=1024"]);
    let report = burst::run(&burst_cfg(&gw, 1)).expect("burst run");
    drop(gw);
    assert!(!report.failed(), "{}", report.table());
    assert_eq!(report.runs.len(), 4, "{}", report.table());
    for r in &report.runs {
        assert_eq!((r.replies, r.resent), (500, 500), "{}", report.table());
        assert!(r.to - r.from + 1 >= 500, "the range covers every reply: {}", report.table());
        assert!(r.first_us > 0.0 && r.last_us >= r.first_us, "{}", report.table());
        assert!(r.resent_per_s > 0.0 && r.live_per_s > 0.0, "{}", report.table());
    }
    let v: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
    assert_eq!(v["scenario"], "resend-burst");
    assert_eq!(v["summary"].as_array().unwrap().len(), 2);
    assert_eq!(v["errors_total"], 0);

    let gw = common::start("epoll", &["journal.messages_per_session=64"]);
    let report = burst::run(&burst_cfg(&gw, 2)).expect("burst run");
    drop(gw);
    assert!(report.failed(), "{}", report.table());
    assert_eq!(report.errors_total, 4, "{}", report.table());
    for r in &report.runs {
        let e = r.error.as_deref().unwrap_or("");
        assert!(e.contains("resend window exceeded: oldest retained"), "{}", report.table());
    }
}
