//! `fleetgate load --spin` against a plain echo thread: the generator busy-polls between sends
//! and still measures every echo. Its own test binary, so that the process CPU it reports is
//! this run's and no other test's.

use std::net::UdpSocket;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleetgate::tools::loadgen::{self, LoadConfig, Scenario};

fn num(json: &str, path: &[&str]) -> f64 {
    let v: serde_json::Value = serde_json::from_str(json).expect("the summary is JSON");
    let mut at = &v;
    for p in path {
        at = at.get(p).unwrap_or_else(|| panic!("no {p} in {json}"));
    }
    at.as_f64().unwrap_or_else(|| panic!("{path:?} is not a number in {json}"))
}

/// `spin`: the generator busy-polls between sends instead of sleeping, and measures the same
/// way: every echo at the rate, lateness and latency counted; it burns its core doing so (more
/// CPU than the sleeping generator over the same run).
#[test]
fn a_spinning_generator_busy_polls_and_measures_the_same() {
    let echo = UdpSocket::bind("127.0.0.1:0").unwrap();
    echo.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let addr = echo.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let halt = stop.clone();
    let server = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !halt.load(Ordering::Relaxed) {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    let run = |spin: bool| {
        let cfg = LoadConfig {
            scenario: Scenario::Steady,
            udp_devices: 20,
            rate: 1000.0,
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(1000),
            source_ips: 4,
            raw_echo: Some(addr),
            spin,
            ..LoadConfig::default()
        };
        let report = loadgen::run(&cfg).expect("raw run");
        assert!(!report.failed(), "{}", report.table());
        report.json()
    };
    let (slept, spun) = (run(false), run(true));
    stop.store(true, Ordering::Relaxed);
    server.join().unwrap();
    for (json, spin) in [(&slept, false), (&spun, true)] {
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["spin"], spin, "{json}");
        let sent = num(json, &["sent"]);
        assert!((900.0..=1100.0).contains(&sent), "1,000/s for 1 s: {json}");
        assert_eq!(num(json, &["received"]), sent, "{json}");
        assert_eq!(num(json, &["latency_ns", "count"]), sent, "{json}");
        assert_eq!(num(json, &["lateness_ns", "count"]), sent, "{json}");
    }
    let cpu = |json: &str| {
        num(json, &["generator", "cpu_user_s"]) + num(json, &["generator", "cpu_sys_s"])
    };
    assert!(cpu(&spun) > 2.0 * cpu(&slept), "spinning {spun}\nsleeping {slept}");
}
