//! `fleetgate load --spin` against a plain echo thread: the generator busy-polls between sends
//! and still measures every echo. Its own test binary, so that the process CPU it reports is
//! this run's and no other test's.

#[allow(dead_code)]
mod common;

use std::time::Duration;

use common::json_num as num;
use fleetgate::tools::loadgen::{self, LoadConfig, Scenario};

/// `spin`: the generator busy-polls between sends instead of sleeping, and measures the same
/// way: every echo at the rate, lateness and latency counted; it burns its core doing so (more
/// CPU than the sleeping generator over the same run).
#[test]
fn a_spinning_generator_busy_polls_and_measures_the_same() {
    let echo = common::Echo::start();
    let run = |spin: bool| {
        let cfg = LoadConfig {
            scenario: Scenario::Steady,
            udp_devices: 20,
            rate: 1000.0,
            warmup: Duration::from_millis(200),
            duration: Duration::from_millis(1000),
            source_ips: 4,
            raw_echo: Some(echo.addr),
            spin,
            ..LoadConfig::default()
        };
        let report = loadgen::run(&cfg).expect("raw run");
        assert!(!report.failed(), "{}", report.table());
        report.json()
    };
    let (slept, spun) = (run(false), run(true));
    drop(echo);
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
