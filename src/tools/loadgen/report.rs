//! The load generator's summary: a table for people, JSON for scripts (through serde), `.hlog`
//! for HdrHistogram tools.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::Ordering;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use serde::Serialize;

use super::errors::{ErrorCounts, ErrorKind};
use super::{
    FeedChecker, HoldCounts, LoadConfig, RequestCounts, Samples, Scenario, Shared, ThreadResult,
    WireCounts, hist, usage,
};
use crate::time::{Clock, Timestamp};

/// Percentiles reported, as fractions.
pub const QUANTILES: [(&str, f64); 5] =
    [("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99_9", 0.999), ("p99_99", 0.9999)];

/// The result of a run.
pub struct Report {
    /// Scenario.
    pub scenario: Scenario,
    /// Devices simulated.
    pub devices: usize,
    /// Measured seconds: the hold (idle), the storm from its first request to its last logon
    /// (storm), the measured window (others).
    pub seconds: f64,
    /// Echo requests sent while measuring.
    pub sent: u64,
    /// Echo replies received.
    pub received: u64,
    /// Logons completed.
    pub logons: u64,
    /// Errors by kind ([`ErrorKind::name`]).
    pub errors: BTreeMap<String, u64>,
    /// Echo latency from the intended send time (ns).
    pub latency: Histogram<u64>,
    /// Connect (first request of the attempt) to LogonResponse (ns).
    pub handshake: Histogram<u64>,
    /// Send lateness: actual send time minus intended (ns), echo requests only.
    pub lateness: Histogram<u64>,
    /// Feed events over all devices (resend scenario).
    pub feed: FeedChecker,
    /// Devices whose feed was exact / devices that received feed events.
    pub feed_exact: (u64, u64),
    /// Device retransmissions of sequenced messages.
    pub retransmits: u64,
    /// ResendRequests sent.
    pub resend_requests: u64,
    /// Share of message-level errors above which the run fails.
    pub max_error_share: f64,
    /// The forced resume, if one was asked for.
    pub forced: Option<super::Forced>,
    /// Errors by kind, as counted.
    pub error_counts: ErrorCounts,
    /// LoggedOut texts seen where a session ended unexpectedly, with counts.
    pub logged_out_reasons: BTreeMap<String, u64>,
    /// Storm steps (one for the echo scenarios).
    pub steps: Vec<StepReport>,
    /// The held fleet's heartbeats (storm, idle) or the measured window's (others).
    pub hold: HoldReport,
    /// Datagrams, system calls and input the generator could not place.
    pub wire: WireCounts,
    /// The generator's own cost.
    pub generator: GeneratorReport,
    /// The gateway's cost, when its pid was given.
    pub gateway: Option<GatewayReport>,
    /// Sent to a plain echo server, without sessions (`raw_echo`).
    pub raw_echo: bool,
    /// The generator busy-polled between sends (`spin`).
    pub spin: bool,
    /// One request in flight, latency from the actual send (`ping_pong`).
    pub ping_pong: bool,
    /// Sessions logged on when the scenario ended.
    pub active_at_end: u64,
    /// Echo requests without a reply where that is by design (churn).
    pub unanswered: u64,
    /// Most echo requests in flight at once in one generator thread.
    pub in_flight_max: u64,
    /// With a server list: moves, time back, per-gateway counts.
    pub fleet: Option<super::fleet::FleetReport>,
}

/// One storm step.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    /// Step number, from 0.
    pub step: usize,
    /// Devices in the step.
    pub devices: u64,
    /// Devices that logged on.
    pub logged_on: u64,
    /// Seconds from the start of the run to the step's first request.
    pub first_request_s: Option<f64>,
    /// Seconds from the first request until 99% of the step's devices were logged on.
    pub t99_s: Option<f64>,
    /// Seconds from the first request until the last logon.
    pub t_last_s: Option<f64>,
    /// Logons per second until 99% were logged on (99% of the devices / `t99_s`).
    pub rate_99_per_s: Option<f64>,
    /// Logons per second until the last (`logged_on` / `t_last_s`).
    pub rate_all_per_s: Option<f64>,
    /// First request of the attempt → LogonResponse (ns).
    pub handshake_ns: Latency,
    /// Attempts started.
    pub connects: u64,
    /// Requests sent and retransmitted.
    pub retransmissions: Retransmissions,
    #[serde(skip)]
    handshake: Histogram<u64>,
}

/// Requests sent during a step, and how many repeated one of the same attempt.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Retransmissions {
    /// The requests and their repeats, and the attempts tried again.
    #[serde(flatten)]
    pub requests: RequestCounts,
    /// All repeats: the three retry counts summed.
    pub total: u64,
}

/// Heartbeats over the measured window.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct HoldReport {
    /// Window length (s).
    pub seconds: f64,
    /// Counts.
    #[serde(flatten)]
    pub counts: HoldCounts,
    /// Heartbeats the devices sent per second.
    pub heartbeats_sent_per_s: f64,
    /// Heartbeats the devices received per second.
    pub heartbeats_received_per_s: f64,
}

/// The generator's own memory and CPU.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct GeneratorReport {
    /// Threads.
    pub threads: usize,
    /// UDP sockets (also the most handshakes in flight: one per socket).
    pub sockets: usize,
    /// Loopback source addresses.
    pub source_ips: u32,
    /// Retransmit buffer of each device: messages × slot bytes, and its event queue bytes.
    pub device_buffer_messages: usize,
    /// Slot size of that buffer.
    pub device_buffer_slot_bytes: usize,
    /// Event queue bytes of each device.
    pub device_event_bytes: usize,
    /// VmRSS before any device existed.
    pub rss_before_bytes: u64,
    /// VmRSS with the whole fleet logged on (at the start of the hold), if it got there.
    pub rss_fleet_bytes: Option<u64>,
    /// VmRSS at the end.
    pub rss_end_bytes: u64,
    /// VmHWM (peak) at the end.
    pub hwm_bytes: u64,
    /// (fleet RSS, else end RSS) − RSS before, per device.
    pub rss_per_device_bytes: f64,
    /// User CPU (getrusage).
    pub cpu_user_s: f64,
    /// System CPU (getrusage).
    pub cpu_sys_s: f64,
    /// Wall-clock length of the run.
    pub wall_s: f64,
    /// (user + system) / wall, in % of one core.
    pub cpu_percent: f64,
    /// CPU from the start of the run until the fleet was logged on (storm, idle).
    pub storm_cpu_s: Option<f64>,
    /// That per logon (µs): the generator's share of a logon's cost.
    pub cpu_per_logon_us: Option<f64>,
}

/// The gateway's memory and CPU (`gateway_pid`).
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct GatewayReport {
    /// Its pid.
    pub pid: u32,
    /// VmRSS before the run.
    pub rss_before_bytes: Option<u64>,
    /// VmRSS with the fleet logged on (start of the hold).
    pub rss_fleet_bytes: Option<u64>,
    /// (fleet − before) / sessions logged on then: what each session added.
    pub rss_per_session_bytes: Option<f64>,
    /// fleet / sessions: memory reserved at start-up included.
    pub rss_total_per_session_bytes: Option<f64>,
    /// VmRSS at the end of the run (whether or not the fleet was ever complete).
    pub rss_end_bytes: Option<u64>,
    /// (end − before) / sessions logged on at the end.
    pub rss_end_per_session_bytes: Option<f64>,
    /// CPU over the hold.
    pub hold_cpu_s: Option<f64>,
    /// The hold's wall-clock length.
    pub hold_wall_s: Option<f64>,
    /// CPU over the hold in % of one core.
    pub hold_cpu_percent: Option<f64>,
    /// CPU over the hold per heartbeat the devices sent in it (µs).
    pub cpu_per_heartbeat_us: Option<f64>,
    /// CPU from the start of the run until the fleet was logged on (storm, idle).
    pub storm_cpu_s: Option<f64>,
    /// That per logon (µs): the gateway's cost of a logon, whichever core bounds the rate.
    pub cpu_per_logon_us: Option<f64>,
    /// The process could not be read any more: it died during the run.
    pub gone: bool,
}

/// CPU per logon in µs, when there were logons.
fn per_logon(cpu: Option<std::time::Duration>, logons: u64) -> Option<f64> {
    cpu.filter(|_| logons > 0).map(|c| 1e6 * c.as_secs_f64() / logons as f64)
}

/// A latency histogram in the JSON summary: count, the [`QUANTILES`] by name, max (ns).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Percentiles by name.
    #[serde(flatten)]
    pub quantiles: BTreeMap<&'static str, u64>,
    /// Largest sample.
    pub max: u64,
}

impl Latency {
    /// The summary of `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        Self {
            count: h.len(),
            quantiles: QUANTILES
                .iter()
                .map(|&(name, q)| (name, if h.is_empty() { 0 } else { h.value_at_quantile(q) }))
                .collect(),
            max: h.max(),
        }
    }
}

impl Report {
    /// An empty report (nothing measured) for `scenario`.
    pub fn empty(scenario: Scenario) -> Self {
        Self {
            scenario,
            devices: 0,
            seconds: 0.0,
            sent: 0,
            received: 0,
            logons: 0,
            errors: BTreeMap::new(),
            latency: hist(),
            handshake: hist(),
            lateness: hist(),
            feed: FeedChecker::default(),
            feed_exact: (0, 0),
            retransmits: 0,
            resend_requests: 0,
            max_error_share: 0.001,
            forced: None,
            error_counts: ErrorCounts::default(),
            logged_out_reasons: BTreeMap::new(),
            steps: Vec::new(),
            hold: HoldReport::default(),
            wire: WireCounts::default(),
            generator: GeneratorReport::default(),
            gateway: None,
            raw_echo: false,
            spin: false,
            ping_pong: false,
            active_at_end: 0,
            unanswered: 0,
            in_flight_max: 0,
            fleet: None,
        }
    }

    pub(crate) fn merge(
        cfg: &LoadConfig,
        shared: &Shared,
        parts: Vec<ThreadResult>,
        samples: Samples,
        clock: Clock,
    ) -> Self {
        let mut r = Self::empty(cfg.scenario);
        r.devices = cfg.devices();
        r.max_error_share = cfg.max_error_share;
        r.raw_echo = cfg.raw_echo.is_some();
        r.spin = cfg.spin;
        r.ping_pong = cfg.ping_pong;
        let steps = shared.steps.len();
        let mut step_parts: Vec<super::StepResult> =
            (0..steps).map(|_| super::StepResult::default()).collect();
        let mut fleet: Option<super::fleet::FleetResult> = None;
        for p in parts {
            if let Some(f) = &p.fleet {
                fleet
                    .get_or_insert_with(|| super::fleet::FleetResult::new(cfg.servers.len()))
                    .merge(f);
            }
            let _ = r.latency.add(&*p.latency);
            let _ = r.handshake.add(&*p.handshake);
            let _ = r.lateness.add(&*p.lateness);
            r.sent += p.sent;
            r.received += p.received;
            r.logons += p.logons;
            r.error_counts.merge(&p.errors);
            for (k, v) in p.logged_out_reasons {
                *r.logged_out_reasons.entry(k).or_default() += v;
            }
            r.feed.received += p.feed.received;
            r.feed.missing += p.feed.missing;
            r.feed.duplicates += p.feed.duplicates;
            r.feed_exact.0 += p.feed_devices_exact;
            r.feed_exact.1 += p.feed_devices;
            r.retransmits += p.retransmits;
            r.resend_requests += p.resend_requests;
            r.forced = r.forced.or(p.forced);
            r.hold.counts.merge(&p.hold);
            r.wire.merge(&p.wire);
            r.active_at_end += p.active_at_end;
            r.unanswered += p.unanswered;
            r.in_flight_max = r.in_flight_max.max(p.in_flight_max);
            for (m, s) in step_parts.iter_mut().zip(p.steps) {
                m.devices += s.devices;
                m.logged_on += s.logged_on;
                m.first_request = match (m.first_request, s.first_request) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                m.last_logon = m.last_logon.max(s.last_logon);
                let _ = m.handshake.add(&*s.handshake);
                m.connects += s.connects;
                m.udp_connects += s.udp_connects;
                m.requests.merge(&s.requests);
            }
        }
        if cfg.scenario == Scenario::Resend && !r.feed.is_exact() {
            r.error_counts.add(ErrorKind::FeedNotExactlyOnce, r.feed.missing + r.feed.duplicates);
        }
        r.errors = r.error_counts.by_name();
        r.fleet = fleet.map(|f| super::fleet::FleetReport::of(&cfg.servers, &f));
        let secs = |t: Timestamp| t.as_nanos() as f64 / 1e9;
        r.steps = step_parts
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let first = m.first_request;
                let t99 = match shared.steps[i].t99.load(Ordering::Acquire) {
                    0 => None,
                    t => Some(Timestamp::from_nanos(t - 1)),
                };
                let since = |t: Option<Timestamp>| Some(secs(t?) - secs(first?));
                let (t99_s, t_last_s) = (since(t99), since(m.last_logon));
                let per_s = |n: u64, t: Option<f64>| t.filter(|&t| t > 0.0).map(|t| n as f64 / t);
                let req = m.requests;
                let retransmissions = Retransmissions {
                    requests: req,
                    total: req.connection_request_retries
                        + req.registration_request_retries
                        + req.logon_retries,
                };
                StepReport {
                    step: i,
                    devices: m.devices,
                    logged_on: m.logged_on,
                    first_request_s: first.map(secs),
                    t99_s,
                    t_last_s,
                    rate_99_per_s: per_s(shared.steps[i].target99, t99_s),
                    rate_all_per_s: per_s(m.logged_on, t_last_s),
                    handshake_ns: Latency::of(&m.handshake),
                    connects: m.connects,
                    retransmissions,
                    handshake: m.handshake.0,
                }
            })
            .collect();
        r.seconds = match cfg.scenario {
            Scenario::Storm => {
                let first = r.steps.first().and_then(|s| s.first_request_s);
                let last = r
                    .steps
                    .iter()
                    .filter_map(|s| Some(s.first_request_s? + s.t_last_s?))
                    .fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.max(b))));
                match (first, last) {
                    (Some(f), Some(l)) if l > f => l - f,
                    _ => cfg.duration.as_secs_f64(),
                }
            }
            _ => cfg.duration.as_secs_f64(),
        };
        let hold_s = cfg.duration.as_secs_f64().max(1e-9);
        r.hold = HoldReport {
            seconds: cfg.duration.as_secs_f64(),
            counts: r.hold.counts,
            heartbeats_sent_per_s: r.hold.counts.heartbeats_sent as f64 / hold_s,
            heartbeats_received_per_s: r.hold.counts.heartbeats_received as f64 / hold_s,
        };
        let end = usage::memory(None).unwrap_or_default();
        let cpu = usage::own_cpu();
        let fleet_or_end = samples.own_fleet.unwrap_or(end).rss_bytes;
        let profile = cfg.profile();
        let wall = samples.wall.as_secs_f64().max(1e-9);
        r.generator = GeneratorReport {
            threads: cfg.thread_count(),
            sockets: cfg.socket_count(),
            source_ips: cfg.source_ips,
            device_buffer_messages: profile.buffer.slot_count(),
            device_buffer_slot_bytes: profile.buffer.slot_bytes,
            device_event_bytes: profile.event_bytes,
            rss_before_bytes: samples.own_before.rss_bytes,
            rss_fleet_bytes: samples.own_fleet.map(|m| m.rss_bytes),
            rss_end_bytes: end.rss_bytes,
            hwm_bytes: end.hwm_bytes.max(cpu.max_rss_bytes),
            rss_per_device_bytes: fleet_or_end.saturating_sub(samples.own_before.rss_bytes) as f64
                / r.devices.max(1) as f64,
            cpu_user_s: cpu.user.as_secs_f64(),
            cpu_sys_s: cpu.system.as_secs_f64(),
            wall_s: wall,
            cpu_percent: 100.0 * (cpu.user + cpu.system).as_secs_f64() / wall,
            storm_cpu_s: samples.own_cpu_storm.map(|c| c.as_secs_f64()),
            cpu_per_logon_us: per_logon(samples.own_cpu_storm, r.logons),
        };
        let _ = clock;
        if let Some(pid) = cfg.gateway_pid {
            let before = samples.gateway_before.map(|m| m.rss_bytes);
            let fleet = samples.gateway_fleet.map(|m| m.rss_bytes);
            let sessions = r.logons.min(r.devices as u64).max(1);
            let (cpu_s, wall_s) = samples
                .gateway_cpu_hold
                .map(|(c, w)| (Some(c.as_secs_f64()), Some(w.as_secs_f64())))
                .unwrap_or((None, None));
            let beats = r.hold.counts.heartbeats_sent;
            r.gateway = Some(GatewayReport {
                pid,
                rss_before_bytes: before,
                rss_fleet_bytes: fleet,
                rss_per_session_bytes: match (before, fleet) {
                    (Some(b), Some(f)) => Some(f.saturating_sub(b) as f64 / sessions as f64),
                    _ => None,
                },
                rss_total_per_session_bytes: fleet.map(|f| f as f64 / sessions as f64),
                rss_end_bytes: samples.gateway_end.map(|m| m.rss_bytes),
                rss_end_per_session_bytes: match (before, samples.gateway_end) {
                    (Some(b), Some(e)) if r.active_at_end > 0 => {
                        Some(e.rss_bytes.saturating_sub(b) as f64 / r.active_at_end as f64)
                    }
                    _ => None,
                },
                hold_cpu_s: cpu_s,
                hold_wall_s: wall_s,
                hold_cpu_percent: match (cpu_s, wall_s) {
                    (Some(c), Some(w)) if w > 0.0 => Some(100.0 * c / w),
                    _ => None,
                },
                cpu_per_heartbeat_us: cpu_s.filter(|_| beats > 0).map(|c| 1e6 * c / beats as f64),
                storm_cpu_s: samples.gateway_cpu_storm.map(|c| c.as_secs_f64()),
                cpu_per_logon_us: per_logon(samples.gateway_cpu_storm, r.logons),
                gone: samples.gateway_gone || usage::memory(Some(pid)).is_none(),
            });
        }
        r
    }

    /// Errors in total.
    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// Device-level errors (devices that did not do what the scenario asked).
    pub fn device_errors(&self) -> u64 {
        self.error_counts.devices()
    }

    /// The main completion count of the scenario.
    pub fn completions(&self) -> u64 {
        match self.scenario {
            Scenario::Storm | Scenario::Churn | Scenario::Idle => self.logons.max(self.received),
            Scenario::Steady | Scenario::Resend => self.received,
        }
    }

    /// True if the run failed: any device lost (any scenario but churn, where sessions end by
    /// design and device errors count toward the share), message-level errors above
    /// `max_error_share` of the attempts, an inexact feed, or a gateway that died.
    pub fn failed(&self) -> bool {
        let attempts = (self.sent + self.logons).max(1) as f64;
        let (devices, messages) = (self.error_counts.devices(), self.error_counts.messages());
        let counted = if self.scenario == Scenario::Churn { devices + messages } else { messages };
        (self.scenario != Scenario::Churn && devices > 0)
            || counted as f64 / attempts > self.max_error_share
            || (self.scenario == Scenario::Resend && !self.feed.is_exact())
            || self.gateway.is_some_and(|g| g.gone)
    }

    /// The summary table.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let rate = self.completions() as f64 / self.seconds.max(1e-9);
        let mode = if self.raw_echo { " (raw echo: no sessions)" } else { "" };
        let spin = match (self.spin, self.ping_pong) {
            (false, false) => "",
            (true, false) => " (generator busy-polling)",
            (false, true) => " (ping-pong: one in flight, from actual send)",
            (true, true) => " (generator busy-polling; ping-pong: one in flight, from actual send)",
        };
        let _ = writeln!(
            s,
            "scenario {:?}{mode}{spin}: {} devices, {:.1} s measured",
            self.scenario, self.devices, self.seconds
        );
        let _ = writeln!(
            s,
            "  completions {:>10}   rate {:>10.1}/s   sent {}   logons {}   logged on at end {}",
            self.completions(),
            rate,
            self.sent,
            self.logons,
            self.active_at_end
        );
        let _ = writeln!(
            s,
            "  errors      {:>10}   {}",
            self.error_count(),
            self.errors.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
        );
        if !self.logged_out_reasons.is_empty() {
            let _ = writeln!(
                s,
                "  logged out  {}",
                self.logged_out_reasons
                    .iter()
                    .map(|(k, v)| format!("{k:?}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        if let Some(f) = &self.fleet {
            s.push_str(&f.table());
        }
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
        if self.scenario.holds_fleet() {
            let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            let optf = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
            let _ = writeln!(
                s,
                "  {:<5} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8}",
                "step",
                "devices",
                "on",
                "rate99/s",
                "rate/s",
                "t99 s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "p99.9 ms",
                "max ms",
                "retries"
            );
            for st in &self.steps {
                let ms =
                    |k: &str| st.handshake_ns.quantiles.get(k).copied().unwrap_or(0) as f64 / 1e6;
                let _ = writeln!(
                    s,
                    "  {:<5} {:>8} {:>8} {:>9} {:>9} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8}",
                    st.step,
                    st.devices,
                    st.logged_on,
                    opt(st.rate_99_per_s),
                    opt(st.rate_all_per_s),
                    optf(st.t99_s),
                    ms("p50"),
                    ms("p90"),
                    ms("p99"),
                    ms("p99_9"),
                    st.handshake_ns.max as f64 / 1e6,
                    st.retransmissions.total
                );
            }
            if self.wire.udp_logons > 0 {
                let w = &self.wire;
                let per = |n: u64| n as f64 / w.udp_logons as f64;
                let _ = writeln!(
                    s,
                    "  datagrams per UDP logon: {:.2} sent, {:.2} received (handshake, config and logon; retries included); all datagrams: {} sent, {} received",
                    per(w.logon_datagrams_sent),
                    per(w.logon_datagrams_received),
                    w.datagrams_sent,
                    w.datagrams_received
                );
            }
            let h = &self.hold;
            let _ = writeln!(
                s,
                "  hold {:.0} s: heartbeats sent {} ({:.0}/s), received {} ({:.0}/s), test requests received {}",
                h.seconds,
                h.counts.heartbeats_sent,
                h.heartbeats_sent_per_s,
                h.counts.heartbeats_received,
                h.heartbeats_received_per_s,
                h.counts.test_requests_received
            );
        }
        let g = &self.generator;
        let _ = writeln!(
            s,
            "  generator: {} thread(s), {} sockets on {} addresses; RSS {:.1} MiB (peak {:.1} MiB), {:.0} B per device; CPU {:.2} s user + {:.2} s sys = {:.0}% of a core over {:.1} s",
            g.threads,
            g.sockets,
            g.source_ips,
            g.rss_fleet_bytes.unwrap_or(g.rss_end_bytes) as f64 / 1048576.0,
            g.hwm_bytes as f64 / 1048576.0,
            g.rss_per_device_bytes,
            g.cpu_user_s,
            g.cpu_sys_s,
            g.cpu_percent,
            g.wall_s
        );
        if let Some(us) = g.cpu_per_logon_us {
            let gw = self.gateway.as_ref().and_then(|gw| gw.cpu_per_logon_us);
            let _ = writeln!(
                s,
                "  CPU per logon until the fleet was on: generator {us:.1} µs, gateway {} (all its threads)",
                gw.map_or("-".into(), |v| format!("{v:.1} µs"))
            );
        }
        if let Some(gw) = &self.gateway {
            let _ = writeln!(
                s,
                "  gateway pid {}: RSS {:.1} → {:.1} MiB, {} B added per session ({} B with what was reserved); hold CPU {} ({}% of a core), {} µs per heartbeat{}",
                gw.pid,
                gw.rss_before_bytes.unwrap_or(0) as f64 / 1048576.0,
                gw.rss_fleet_bytes.unwrap_or(0) as f64 / 1048576.0,
                gw.rss_per_session_bytes.map_or("-".into(), |v| format!("{v:.0}")),
                gw.rss_total_per_session_bytes.map_or("-".into(), |v| format!("{v:.0}")),
                gw.hold_cpu_s.map_or("-".into(), |v| format!("{v:.2} s")),
                gw.hold_cpu_percent.map_or("-".into(), |v| format!("{v:.1}")),
                gw.cpu_per_heartbeat_us.map_or("-".into(), |v| format!("{v:.2}")),
                if gw.gone { "; THE GATEWAY PROCESS IS GONE" } else { "" }
            );
        }
        let _ = writeln!(
            s,
            "  {:<22} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
            "latency (µs)", "count", "p50", "p90", "p99", "p99.9", "p99.99", "max"
        );
        for (name, h) in [
            ("echo (from intended)", &self.latency),
            ("send lateness", &self.lateness),
            ("connect to logon", &self.handshake),
        ] {
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
            device_errors: self.error_counts.devices(),
            message_errors: self.error_counts.messages(),
            logged_out_reasons: &self.logged_out_reasons,
            latency_ns: Latency::of(&self.latency),
            handshake_ns: Latency::of(&self.handshake),
            lateness_ns: Latency::of(&self.lateness),
            feed: Feed {
                received: self.feed.received,
                missing: self.feed.missing,
                duplicates: self.feed.duplicates,
                exact_devices: self.feed_exact.0,
                devices: self.feed_exact.1,
            },
            retransmits: self.retransmits,
            resend_requests: self.resend_requests,
            raw_echo: self.raw_echo,
            spin: self.spin,
            ping_pong: self.ping_pong,
            active_at_end: self.active_at_end,
            unanswered: self.unanswered,
            in_flight_max: self.in_flight_max,
            steps: &self.steps,
            hold: &self.hold,
            wire: &self.wire,
            generator: &self.generator,
            gateway: self.gateway.as_ref(),
            fleet: self.fleet.as_ref(),
            failed: self.failed(),
        };
        // Plain data with string keys: serializing it cannot fail.
        serde_json::to_string(&summary).unwrap_or_default()
    }

    /// Writes the histograms as an HdrHistogram interval log (one interval; tags "echo",
    /// "lateness", "handshake", and "handshake_step<k>" per storm step when there are several),
    /// readable by other HdrHistogram tools.
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
        let len = std::time::Duration::from_secs_f64(self.seconds.max(0.001));
        let mut tagged: Vec<(String, &Histogram<u64>)> = vec![
            ("echo".into(), &self.latency),
            ("lateness".into(), &self.lateness),
            ("handshake".into(), &self.handshake),
        ];
        if self.steps.len() > 1 {
            for st in &self.steps {
                tagged.push((format!("handshake_step{}", st.step), &st.handshake));
            }
        }
        for (tag, h) in tagged {
            if !h.is_empty() {
                w.write_histogram(h, std::time::Duration::ZERO, len, Tag::new(&tag))
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
    device_errors: u64,
    message_errors: u64,
    logged_out_reasons: &'a BTreeMap<String, u64>,
    latency_ns: Latency,
    handshake_ns: Latency,
    lateness_ns: Latency,
    feed: Feed,
    retransmits: u64,
    resend_requests: u64,
    raw_echo: bool,
    spin: bool,
    ping_pong: bool,
    active_at_end: u64,
    unanswered: u64,
    in_flight_max: u64,
    steps: &'a [StepReport],
    hold: &'a HoldReport,
    wire: &'a WireCounts,
    generator: &'a GeneratorReport,
    gateway: Option<&'a GatewayReport>,
    fleet: Option<&'a super::fleet::FleetReport>,
    failed: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The step's `retransmissions` object keeps its flat keys, in order, with `total` last.
    #[test]
    fn retransmissions_serialize_flat_with_total_last() {
        let requests = RequestCounts {
            connection_requests: 1,
            connection_request_retries: 2,
            registration_requests: 3,
            registration_request_retries: 4,
            logon_requests: 5,
            logon_retries: 6,
            rate_limited: 7,
            timeouts_retried: 8,
        };
        let json = serde_json::to_string(&Retransmissions { requests, total: 12 }).unwrap();
        assert_eq!(
            json,
            "{\"connection_requests\":1,\"connection_request_retries\":2,\
             \"registration_requests\":3,\"registration_request_retries\":4,\
             \"logon_requests\":5,\"logon_retries\":6,\"rate_limited\":7,\
             \"timeouts_retried\":8,\"total\":12}"
        );
    }

    #[test]
    fn a_lost_device_fails_the_run_whatever_the_share() {
        let mut r = Report::empty(Scenario::Storm);
        r.logons = 1_000_000;
        r.max_error_share = 0.5;
        assert!(!r.failed());
        r.error_counts.add(ErrorKind::HandshakeTimeout, 1);
        r.errors = r.error_counts.by_name();
        assert!(r.failed(), "one lost device in a million fails a storm");
        assert_eq!(r.error_count(), 1);
        let v: serde_json::Value = serde_json::from_str(&r.json()).unwrap();
        assert_eq!(v["failed"], true);
        assert_eq!(v["errors_total"], 1);
        assert_eq!(v["device_errors"], 1);
        assert_eq!(v["errors"]["handshake_timeout"], 1);
    }

    #[test]
    fn message_errors_fail_above_the_share_only() {
        let mut r = Report::empty(Scenario::Steady);
        r.sent = 10_000;
        r.max_error_share = 0.001;
        r.error_counts.add(ErrorKind::LostReplies, 10);
        assert!(!r.failed());
        r.error_counts.add(ErrorKind::LostReplies, 1);
        assert!(r.failed());
        // Churn: sessions end by design; device errors count toward the share.
        let mut c = Report::empty(Scenario::Churn);
        c.logons = 1000;
        c.max_error_share = 0.01;
        c.error_counts.add(ErrorKind::SessionLost, 5);
        assert!(!c.failed());
        c.error_counts.add(ErrorKind::SessionLost, 6);
        assert!(c.failed());
    }

    #[test]
    fn a_gateway_that_died_fails_the_run() {
        let mut r = Report::empty(Scenario::Idle);
        r.gateway = Some(GatewayReport { gone: true, ..GatewayReport::default() });
        assert!(r.failed());
    }
}
