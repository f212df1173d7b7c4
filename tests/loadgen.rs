//! Each load scenario, briefly, against a real in-process gateway on loopback; the JSON summary
//! is checked: completions above zero, zero errors, percentiles present and ordered.

#[allow(dead_code)]
mod common;

use std::time::Duration;

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

/// The number at `path` in the generator's JSON summary.
fn num(json: &str, path: &[&str]) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("the summary is JSON");
    let mut at = &v;
    for p in path {
        at = at.get(p).unwrap_or_else(|| panic!("no {p} in {json}"));
    }
    at.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {json}"))
}

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
}

#[test]
fn storm_scenario() {
    let json = run(Scenario::Storm, &["gateway.max_sessions_per_shard=256"], |c| {
        c.udp_devices = 200;
        c.tcp_devices = 10;
        c.warmup = Duration::ZERO;
        c.rate = 0.0;
        c.source_ips = 50;
    });
    check_common(&json, "handshake_ns");
    assert_eq!(num(&json, &["logons"]), 210.0, "{json}");
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["scenario"], "storm", "{json}");
}

#[test]
fn idle_scenario() {
    let json = run(Scenario::Idle, &["session.heartbeat_interval_s=1"], |c| {
        c.duration = Duration::from_millis(2500);
    });
    check_common(&json, "handshake_ns");
    assert_eq!(num(&json, &["sent"]), 0.0, "idle sessions send no requests: {json}");
}

#[test]
fn resend_scenario_delivers_every_feed_event_exactly_once() {
    let extra =
        ["gateway.app=\"feed\"", "gateway.feed_interval_ms=50", "journal.messages_per_session=512"];
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
