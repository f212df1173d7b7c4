//! The load generator's summary: a table for people, JSON for scripts, `.hlog` for HdrHistogram
//! tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use serde::Serialize;

use super::{FeedChecker, LoadConfig, Scenario, ThreadResult};

/// Percentiles reported, as fractions.
pub const QUANTILES: [(&str, f64); 5] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999), ("p99_99", 0.9999)];

/// The result of a run.
pub struct Report {
    /// Scenario.
    pub scenario: Scenario,
    /// Devices simulated.
    pub devices: usize,
    /// Measured seconds.
    pub seconds: f64,
    /// Echo requests sent while measuring.
    pub sent: u64,
    /// Echo replies received while measuring.
    pub received: u64,
    /// Logons completed while measuring.
    pub logons: u64,
    /// Errors by kind.
    pub errors: BTreeMap<String, u64>,
    /// Echo latency from the intended send time (ns).
    pub latency: Histogram<u64>,
    /// Connect (handshake or TCP connect) to LogonResponse (ns).
    pub handshake: Histogram<u64>,
    /// Feed events over all devices (resend scenario).
    pub feed: FeedChecker,
    /// Devices whose feed was exact / devices that received feed events.
    pub feed_exact: (u64, u64),
    /// Device retransmissions.
    pub retransmits: u64,
    /// ResendRequests sent.
    pub resend_requests: u64,
    /// Share of errors above which the run fails.
    pub max_error_share: f64,
    /// The forced resume, if one was asked for.
    pub forced: Option<super::Forced>,
}

impl Report {
    pub(crate) fn merge(cfg: &LoadConfig, parts: Vec<ThreadResult>) -> Self {
        let mut it = parts.into_iter();
        let first = it.next();
        let hist = || Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).expect("bounds");
        let mut r = Self {
            scenario: cfg.scenario,
            devices: cfg.udp_devices + cfg.tcp_devices,
            seconds: cfg.duration.as_secs_f64(),
            sent: 0,
            received: 0,
            logons: 0,
            errors: BTreeMap::new(),
            latency: hist(),
            handshake: hist(),
            feed: FeedChecker::default(),
            feed_exact: (0, 0),
            retransmits: 0,
            resend_requests: 0,
            max_error_share: cfg.max_error_share,
            forced: None,
        };
        for p in first.into_iter().chain(it) {
            let _ = r.latency.add(&p.latency);
            let _ = r.handshake.add(&p.handshake);
            r.sent += p.sent;
            r.received += p.received;
            r.logons += p.logons;
            for (k, v) in p.errors {
                *r.errors.entry(k).or_default() += v;
            }
            r.feed.received += p.feed.received;
            r.feed.missing += p.feed.missing;
            r.feed.duplicates += p.feed.duplicates;
            r.feed_exact.0 += p.feed_devices_exact;
            r.feed_exact.1 += p.feed_devices;
            r.retransmits += p.retransmits;
            r.resend_requests += p.resend_requests;
            r.forced = r.forced.or(p.forced);
        }
        if cfg.scenario == Scenario::Resend && !r.feed.is_exact() {
            *r.errors.entry("feed_not_exactly_once".into()).or_default() +=
                r.feed.missing + r.feed.duplicates;
        }
        r
    }

    /// Errors in total.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The main completion count of the scenario.
    pub fn completions(&self) -> u64 {
        match self.scenario {
            Scenario::Storm | Scenario::Churn | Scenario::Idle => self.logons.max(self.received),
            Scenario::Steady | Scenario::Resend => self.received,
        }
    }

    /// True if errors exceed `max_error_share` of attempts (or nothing completed).
    pub fn failed(&self) -> bool {
        let attempts = (self.sent + self.logons).max(1) as f64;
        self.error_count() as f64 / attempts > self.max_error_share
            || (self.scenario == Scenario::Resend && !self.feed.is_exact())
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let rate = self.completions() as f64 / self.seconds.max(1e-9);
        let _ = writeln!(
            s,
            "scenario {:?}: {} devices, {:.1} s measured",
            self.scenario, self.devices, self.seconds
        );
        let _ = writeln!(
            s,
            "  completions {:>10}   rate {:>10.1}/s   sent {}   logons {}",
            self.completions(),
            rate,
            self.sent,
            self.logons
        );
        let _ = writeln!(
            s,
            "  errors      {:>10}   {}",
            self.error_count(),
            self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        );
        if self.scenario == Scenario::Resend {
            let _ = writeln!(
                s,
                "  feed events {:>10}   missing {}   duplicates {}   exact devices {}/{}   resend requests {}   retransmits {}",
                self.feed.received,
                self.feed.missing,
                self.feed.duplicates,
                self.feed_exact.0,
                self.feed_exact.1,
                self.resend_requests,
                self.retransmits
            );
        }
        if let Some(f) = self.forced {
            let _ = writeln!(
                s,
                "  forced resume: device {} went dark for a while owing {} replies; resumed {}; {} messages recovered by resend; all replies in: {}; {} feed events, exactly once in order: {}",
                f.device,
                f.owed_at_blackout,
                f.resumed,
                f.resent_received,
                f.complete,
                f.feed.0,
                f.feed.1
            );
        }
        let _ = writeln!(
            s,
            "  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        for (name, h) in
            [("echo (from intended)", &self.latency), ("connect to logon", &self.handshake)]
        {
            if h.is_empty() {
                continue;
            }
            let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            let _ = writeln!(
                s,
                "  {:<22} {:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
                name,
                h.len(),
                us(0.5),
                us(0.9),
                us(0.99),
                us(0.999),
                us(0.9999),
                h.max() as f64 / 1000.0
            );
        }
        s
    }

    /// The echo latency distribution as a text histogram (log-spaced buckets, one bar each).
    pub fn histogram_text(&self) -> String {
        let h = &self.latency;
        let mut s = String::new();
        if h.is_empty() {
            return s;
        }
        const EDGES_US: [u64; 14] = [
            25,
            50,
            100,
            200,
            500,
            1_000,
            2_000,
            5_000,
            10_000,
            20_000,
            50_000,
            100_000,
            500_000,
            u64::MAX,
        ];
        let mut counts = [0u64; EDGES_US.len()];
        for v in h.iter_recorded() {
            let us = v.value_iterated_to() / 1000;
            let i = EDGES_US.iter().position(|&e| us < e).unwrap_or(EDGES_US.len() - 1);
            counts[i] += v.count_at_value();
        }
        let max = counts.iter().copied().max().unwrap_or(1).max(1);
        let _ = writeln!(
            s,
            "  echo latency histogram (from the intended send time, {} samples)",
            h.len()
        );
        let mut lo = 0;
        for (i, &c) in counts.iter().enumerate() {
            let hi = EDGES_US[i];
            let label = if hi == u64::MAX {
                format!(">= {}", fmt_us(lo))
            } else {
                format!("{} - {}", fmt_us(lo), fmt_us(hi))
            };
            let bar = "#".repeat(((c as f64 / max as f64) * 50.0).ceil() as usize);
            let _ = writeln!(
                s,
                "  {label:>17} | {bar:<50} {c} ({:.2}%)",
                100.0 * c as f64 / h.len() as f64
            );
            lo = hi;
        }
        s
    }

    /// The summary as JSON (latencies in nanoseconds).
    pub fn json(&self) -> String {
        let hist = |h: &Histogram<u64>| Latency {
            count: h.len(),
            quantiles: QUANTILES
                .iter()
                .map(|&(name, q)| (name, if h.is_empty() { 0 } else { h.value_at_quantile(q) }))
                .collect(),
            max: h.max(),
        };
        let summary = Summary {
            scenario: self.scenario,
            devices: self.devices,
            seconds: self.seconds,
            completions: self.completions(),
            rate_per_s: self.completions() as f64 / self.seconds.max(1e-9),
            sent: self.sent,
            received: self.received,
            logons: self.logons,
            errors_total: self.error_count(),
            errors: &self.errors,
            latency_ns: hist(&self.latency),
            handshake_ns: hist(&self.handshake),
            feed: Feed {
                received: self.feed.received,
                missing: self.feed.missing,
                duplicates: self.feed.duplicates,
                exact_devices: self.feed_exact.0,
                devices: self.feed_exact.1,
            },
            retransmits: self.retransmits,
            resend_requests: self.resend_requests,
            failed: self.failed(),
        };
        // Plain data with string keys: serializing it cannot fail.
        serde_json::to_string(&summary).unwrap_or_default()
    }

    /// Writes the histograms as an HdrHistogram interval log (one interval, tags "echo" and
    /// "handshake"), readable by other HdrHistogram tools.
    pub fn write_hlog(&self, path: &Path) -> Result<(), String> {
        let mut f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut ser = V2DeflateSerializer::new();
        let now = std::time::SystemTime::now();
        let mut w = IntervalLogWriterBuilder::new()
            .add_comment("fleetgate load: latency in nanoseconds")
            .with_start_time(now)
            .with_base_time(now)
            .with_max_value_divisor(1.0)
            .begin_log_with(&mut f, &mut ser)
            .map_err(|e| e.to_string())?;
        let len = std::time::Duration::from_secs_f64(self.seconds);
        for (tag, h) in [("echo", &self.latency), ("handshake", &self.handshake)] {
            if !h.is_empty() {
                w.write_histogram(h, std::time::Duration::ZERO, len, Tag::new(tag))
                    .map_err(|e| format!("{e:?}"))?;
            }
        }
        Ok(())
    }
}

/// The JSON summary ([`Report::json`]).
#[derive(Serialize)]
struct Summary<'a> {
    scenario: Scenario,
    devices: usize,
    seconds: f64,
    completions: u64,
    rate_per_s: f64,
    sent: u64,
    received: u64,
    logons: u64,
    errors_total: u64,
    errors: &'a BTreeMap<String, u64>,
    latency_ns: Latency,
    handshake_ns: Latency,
    feed: Feed,
    retransmits: u64,
    resend_requests: u64,
    failed: bool,
}

/// A latency histogram in the JSON summary: count, the [`QUANTILES`] by name, max (ns).
#[derive(Serialize)]
struct Latency {
    count: u64,
    #[serde(flatten)]
    quantiles: BTreeMap<&'static str, u64>,
    max: u64,
}

/// Feed delivery in the JSON summary.
#[derive(Serialize)]
struct Feed {
    received: u64,
    missing: u64,
    duplicates: u64,
    exact_devices: u64,
    devices: u64,
}

fn fmt_us(us: u64) -> String {
    match us {
        0..=999 => format!("{us} µs"),
        1_000..=999_999 => format!("{} ms", us / 1000),
        _ => format!("{} s", us / 1_000_000),
    }
}
