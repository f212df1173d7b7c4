//! The operator side of a running gateway, over real sockets on 127.0.0.1: `/metrics` read by an
//! independent parser. Each test body is written once as `fn name(io: &str)` and instantiated
//! per I/O backend, as in `tests/gateway.rs`.

// Shared with tests/gateway.rs, which uses all of it.
#[allow(dead_code)]
mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

const SECOND: Duration = Duration::from_secs(1);

macro_rules! backends {
    ($($body:ident => $epoll:ident, $uring:ident;)*) => {$(
        #[test]
        fn $epoll() {
            $body("epoll");
        }

        #[test]
        fn $uring() {
            if fleetgate::sim::uring_available(stringify!($uring)) {
                $body("uring");
            }
        }
    )*};
}

backends! {
    metrics_parse_with_an_independent_parser => epoll_metrics_parse_with_an_independent_parser,
        uring_metrics_parse_with_an_independent_parser;
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
    let have = Command::new("python3")
        .args(["-c", "import prometheus_client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        let note = "`python3 -c 'import prometheus_client'` failed: pip install prometheus-client";
        assert!(std::env::var_os("CI").is_none(), "{note}");
        eprintln!("independent /metrics check SKIPPED: {note}");
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
