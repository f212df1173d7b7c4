//! `fleetgate demo`: a gateway and a simulated fleet in one process, no config needed.
//!
//! Starts a gateway on loopback (ephemeral ports, open logon, the `feed` application which also
//! echoes), then a fleet of UDP devices and TCP clients doing open-loop echo at a modest rate,
//! forces one device to go dark and resume (recovering what it missed by resend), and prints
//! the latency summary and where its files went.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::ops::Server;
use crate::session::OpenLogon;
use crate::tools::loadgen::{self, LoadConfig, Scenario};

/// Settings of the demo (flags of `fleetgate demo`).
#[derive(Clone, Debug)]
pub struct DemoConfig {
    /// UDP devices.
    pub udp_devices: usize,
    /// TCP clients.
    pub tcp_devices: usize,
    /// Echo requests per second over all sessions.
    pub rate: f64,
    /// Measured seconds.
    pub seconds: u64,
    /// Where results go (a timestamped folder is made inside).
    pub out: PathBuf,
    /// I/O backend.
    pub io: String,
    /// Shards.
    pub shards: usize,
}

/// Runs the demo; returns the report and the folder of its files.
pub fn run(d: &DemoConfig) -> Result<(loadgen::Report, PathBuf), String> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|t| t.as_secs())
        .unwrap_or(0);
    let dir = d.out.join(format!("demo-{stamp}"));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let hist_log = dir.join("gateway.hlog");
    let mut last_err = String::new();
    let mut gw = None;
    for base in [5000u16, 15000, 25000, 35000, 45000] {
        let set = vec![
            format!("gateway.io=\"{}\"", d.io),
            format!("gateway.shards={}", d.shards),
            "gateway.handshake_addr=\"127.0.0.1:0\"".into(),
            "gateway.tcp_addr=\"127.0.0.1:0\"".into(),
            format!("gateway.session_port_base={base}"),
            "gateway.app=\"feed\"".into(),
            "gateway.feed_interval_ms=500".into(),
            format!("gateway.max_sessions_per_shard={}", (d.udp_devices + d.tcp_devices).max(64)),
            "journal.messages_per_session=256".into(),
            "udp.handshake_rate_per_s=200".into(),
            "udp.handshake_burst=400".into(),
            "observability.metrics_addr=\"127.0.0.1:0\"".into(),
            format!("observability.hist_log={:?}", hist_log.display().to_string()),
        ];
        let cfg = Config::load(None, &set).map_err(|e| e.to_string())?;
        match Server::start(&cfg, Arc::new(OpenLogon)) {
            Ok(g) => {
                gw = Some(g);
                break;
            }
            Err(e) => last_err = e,
        }
    }
    let gw = gw.ok_or(last_err)?;
    tracing::info!(
        "demo: gateway on udp {} / tcp {} / session ports {:?}, backend {}, metrics http://{}/metrics",
        gw.gateway.handshake_addr,
        gw.gateway.tcp_addr,
        gw.gateway.session_ports,
        gw.gateway.backend,
        gw.metrics_addr.map_or("-".into(), |a| a.to_string())
    );
    tracing::info!(
        "demo: {} UDP devices + {} TCP clients, echo at {}/s for {} s (after 3 s of warm-up)",
        d.udp_devices,
        d.tcp_devices,
        d.rate,
        d.seconds
    );
    let lc = LoadConfig {
        scenario: Scenario::Steady,
        handshake: gw.gateway.handshake_addr,
        tcp: gw.gateway.tcp_addr,
        udp_devices: d.udp_devices,
        tcp_devices: d.tcp_devices,
        rate: d.rate,
        warmup: Duration::from_secs(3),
        duration: Duration::from_secs(d.seconds),
        seed: 7,
        threads: 1,
        source_ips: 64,
        user_prefix: "demo".into(),
        progress: true,
        forced_resume: Some((0, Duration::from_secs(d.seconds / 3), Duration::from_secs(1))),
        ..LoadConfig::default()
    };
    let report = loadgen::run(&lc)?;
    let totals = gw.stop();
    std::fs::write(dir.join("summary.json"), report.json() + "\n").map_err(|e| e.to_string())?;
    report.write_hlog(&dir.join("load.hlog"))?;
    tracing::info!("demo: gateway totals: {}", crate::runtime::report::summary(&totals.counters));
    Ok((report, dir))
}
