//! The exposition of what housekeeping merged: `/metrics` (Prometheus text format 0.0.4,
//! written by the `prometheus-client` crate) and `/sessions` (the JSON connections list, written
//! by `serde_json`).
//!
//! `/metrics` is the declared counter table ([`Counter`]) as it is: one family per name, the
//! shard entries with a `shard` label, the acceptor's without, then the latency histograms.

use hdrhistogram::Histogram;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use serde::Serialize;

use super::housekeeping::View;
use crate::apps::HostStats;
use crate::counters::{Counter, Counters, Kind, Scope};
use crate::runtime::report::Snapshot;
use crate::session::{Link, State};

/// The `Content-Type` of [`metrics`]' output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Prometheus text for the view.
pub fn metrics(v: &View) -> String {
    let scrape = Scrape::of(v);
    let mut registry = Registry::with_prefix("fleetgate");
    registry.register_collector(Box::new(scrape));
    let mut out = String::new();
    // Writing into a String cannot fail; an encoder error would leave a partial body, which
    // the scraper rejects.
    let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry);
    out
}

/// The JSON connections list.
pub fn sessions(v: &View) -> String {
    let rows: Vec<&str> = v
        .shards
        .iter()
        .flatten()
        .map(|s| s.sessions_json.as_str())
        .filter(|s| !s.is_empty())
        .collect();
    format!("[{}]\n", rows.join(","))
}

/// The JSON rows of a snapshot's connections list (comma-separated objects, no brackets).
pub(crate) fn session_rows(snap: &Snapshot) -> String {
    let rows: Vec<SessionRow<'_>> = snap
        .sessions
        .iter()
        .map(|s| SessionRow {
            id: format!("{:016x}", s.id),
            device_uid: s.device_uid.as_str(),
            username: s.username.as_str(),
            link: match s.link {
                Link::Udp(a) => Some(format!("udp:{a}")),
                Link::Tcp(c) => Some(format!("tcp:conn{}", c.0)),
                Link::None => None,
            },
            shard: snap.shard,
            state: state_name(s.state),
            expected_in: s.expected_in,
            next_out: s.next_out,
            last_heard_ms_ago: snap.at.saturating_since(s.last_heard).as_millis() as u64,
        })
        .collect();
    let json = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
    // The view concatenates shards' rows into one array.
    json[1..json.len() - 1].to_string()
}

/// One row of `/sessions`.
#[derive(Serialize)]
struct SessionRow<'a> {
    id: String,
    device_uid: &'a str,
    username: &'a str,
    link: Option<String>,
    shard: usize,
    state: &'static str,
    expected_in: i64,
    next_out: i64,
    last_heard_ms_ago: u64,
}

fn state_name(s: State) -> &'static str {
    match s {
        State::AwaitingConfig => "awaiting_config",
        State::AwaitingLogon => "awaiting_logon",
        State::Active => "active",
        State::LoggingOut(..) => "logging_out",
        State::Detached => "detached",
        State::Closed(_) => "closed",
    }
}

/// What one scrape exports, copied out of the view (so the lock is not held while encoding).
#[derive(Debug)]
struct Scrape {
    /// `(shard, backend, counters)` of each shard that has published.
    shards: Vec<(usize, &'static str, Counters)>,
    /// The acceptor's driver and counters, once it has published.
    acceptor: Option<(&'static str, Counters)>,
    histograms: Vec<(&'static str, &'static str, Buckets)>,
    /// Per-host figures summed over shards, in `[[hosts]]` order.
    hosts: Vec<(String, HostStats)>,
}

/// A per-host family: name, help, type and how to read it from [`HostStats`].
type HostFamily = (&'static str, &'static str, MetricType, fn(&HostStats) -> u64);

/// A histogram in Prometheus' shape: the count in each bucket (the encoder makes them
/// cumulative), sum and count.
#[derive(Debug)]
struct Buckets {
    le: Vec<(f64, u64)>,
    sum: f64,
    count: u64,
}

impl Scrape {
    fn of(v: &View) -> Self {
        let shards = v
            .shards
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s.backend, s.counters.clone())))
            .collect();
        let acceptor = v.acceptor.as_ref().map(|a| (a.backend, a.counters.clone()));
        let histograms = [
            (
                "service_ns",
                "Datagram or TCP chunk read to its answers handed to the kernel (ns).",
                &v.latency.service,
            ),
            ("cycle_ns", "Shard loop passes with work (ns).", &v.latency.cycle),
            (
                "handshake_ns",
                "TCP accept to LogonResponse handed to the kernel (ns).",
                &v.latency.handshake,
            ),
            (
                "resend_ns",
                "ResendRequest to its last message handed to the transport (ns).",
                &v.latency.resend,
            ),
        ]
        .into_iter()
        .filter_map(|(name, help, h)| h.as_ref().map(|h| (name, help, Buckets::of(h))))
        .collect();
        let mut hosts: Vec<(String, HostStats)> = Vec::new();
        for (name, st) in v.shards.iter().flatten().flat_map(|s| s.hosts.iter()) {
            match hosts.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => sum.merge(st),
                None => hosts.push((name.clone(), *st)),
            }
        }
        Self { shards, acceptor, histograms, hosts }
    }
}

impl Buckets {
    /// Upper bounds 1-2-5 per decade from 1 µs to 50 s (ns): fine enough for latencies from a
    /// loopback echo to a stalled shard.
    fn of(h: &Histogram<u64>) -> Self {
        let bounds: Vec<u64> = (3..=10).flat_map(|e| [1, 2, 5].map(|m| m * 10u64.pow(e))).collect();
        let mut le: Vec<(f64, u64)> = bounds.iter().map(|&b| (b as f64, 0)).collect();
        for v in h.iter_recorded() {
            let value = h.highest_equivalent(v.value_iterated_to());
            // Values above the last bound are counted only in `+Inf` (the count).
            if let Some((_, n)) = le.iter_mut().find(|(bound, _)| value as f64 <= *bound) {
                *n += v.count_at_value();
            }
        }
        let count = h.len();
        Self { le, sum: h.mean() * count as f64, count }
    }
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        if !self.shards.is_empty() {
            let mut m = encoder.encode_descriptor(
                "shard",
                "The I/O backend each shard runs.",
                None,
                MetricType::Info,
            )?;
            for (i, backend, _) in &self.shards {
                m.encode_info(&[("shard", i.to_string()), ("backend", backend.to_string())])?;
            }
        }
        if let Some((backend, _)) = self.acceptor {
            let mut m = encoder.encode_descriptor(
                "acceptor",
                "The acceptor's driver.",
                None,
                MetricType::Info,
            )?;
            m.encode_info(&[("backend", backend)])?;
        }
        let mut k = 0;
        while k < Counter::COUNT {
            let first = Counter::VALUES[k];
            let meta = first.meta();
            let family: Vec<Counter> = Counter::VALUES[k..]
                .iter()
                .copied()
                .take_while(|c| c.name() == meta.name)
                .collect();
            k += family.len();
            let (name, kind) = match meta.kind {
                // The encoder appends `_total` to counters.
                Kind::Counter => (meta.name.trim_end_matches("_total"), MetricType::Counter),
                Kind::Gauge | Kind::Max => (meta.name, MetricType::Gauge),
            };
            let sources: Vec<(Option<usize>, &Counters)> = match meta.scope {
                Scope::Shard => self.shards.iter().map(|(i, _, c)| (Some(*i), c)).collect(),
                Scope::Acceptor => self.acceptor.iter().map(|(_, c)| (None, c)).collect(),
            };
            if sources.is_empty() {
                continue;
            }
            let mut m = encoder.encode_descriptor(name, first.help(), None, kind)?;
            for c in &family {
                for (shard, counters) in &sources {
                    let mut labels: Vec<(&str, String)> = Vec::with_capacity(2);
                    if let Some(i) = shard {
                        labels.push(("shard", i.to_string()));
                    }
                    if let Some((key, value)) = c.meta().label {
                        labels.push((key, value.to_string()));
                    }
                    let value = counters.get(*c);
                    let mut sample = m.encode_family(&labels)?;
                    match kind {
                        MetricType::Counter => {
                            sample.encode_counter::<NoLabelSet, _, u64>(&value, None)?
                        }
                        _ => sample.encode_gauge(&value)?,
                    }
                }
            }
        }
        // Hosts: one series per `[[hosts]]` entry (a bounded label set, named in the config),
        // summed over shards. They are not in the counter table, whose labels are static.
        let host_families: [HostFamily; 9] = [
            ("host_connected", "Host connections up.", MetricType::Gauge, |s| s.connected),
            ("host_connecting", "Host connections being opened.", MetricType::Gauge, |s| {
                s.connecting
            }),
            ("host_bytes_in", "Bytes read from the host.", MetricType::Counter, |s| s.bytes_in),
            ("host_bytes_out", "Bytes written to the host.", MetricType::Counter, |s| s.bytes_out),
            (
                "host_unreachable",
                "Sessions ended with HostStatus(UNREACHABLE): refused, timed out, no descriptors, \
                 no room.",
                MetricType::Counter,
                |s| s.unreachable,
            ),
            (
                "host_closed_by_host",
                "Sessions ended with HostStatus(CLOSED_BY_HOST).",
                MetricType::Counter,
                |s| s.closed_by_host,
            ),
            (
                "host_idle_timeout",
                "Sessions ended with HostStatus(IDLE_TIMEOUT).",
                MetricType::Counter,
                |s| s.idle_timeout,
            ),
            (
                "host_no_fds",
                "Host connects refused for want of file descriptors (also in unreachable).",
                MetricType::Counter,
                |s| s.no_fds,
            ),
            (
                "host_not_reading",
                "Sessions ended because the host did not read what the device sent.",
                MetricType::Counter,
                |s| s.not_reading,
            ),
        ];
        if !self.hosts.is_empty() {
            for (name, help, kind, get) in host_families {
                let mut m = encoder.encode_descriptor(name, help, None, kind)?;
                for (host, st) in &self.hosts {
                    let labels = [("host", host.as_str())];
                    let mut sample = m.encode_family(&labels)?;
                    let value = get(st);
                    match kind {
                        MetricType::Counter => {
                            sample.encode_counter::<NoLabelSet, _, u64>(&value, None)?
                        }
                        _ => sample.encode_gauge(&value)?,
                    }
                }
            }
        }
        for (name, help, b) in &self.histograms {
            let mut m = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
            m.encode_histogram::<NoLabelSet>(b.sum, b.count, &b.le, None)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::report::{AcceptorReport, Latencies};

    #[test]
    fn every_family_has_its_type_line_directly_before_its_samples() {
        let mut c = Counters::default();
        c.add(Counter::LogonsAccepted, 3);
        c.set(Counter::StateActive, 2);
        c.raise(Counter::CycleNsMax, 1234);
        let mut a = Counters::default();
        a.add(Counter::TcpHandedOff, 5);
        a.add(Counter::ConnectionRequestsAccepted, 7);
        let mut h = Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        h.record(1_500).unwrap();
        h.record(40_000).unwrap();
        let v = View {
            shards: vec![
                Some(super::super::housekeeping::ShardView {
                    backend: "epoll",
                    counters: c.clone(),
                    sessions_json: String::new(),
                    hosts: vec![(
                        "wms".into(),
                        HostStats { connected: 2, bytes_in: 10, ..Default::default() },
                    )],
                }),
                Some(super::super::housekeeping::ShardView {
                    backend: "epoll",
                    counters: c,
                    sessions_json: String::new(),
                    hosts: vec![(
                        "wms".into(),
                        HostStats { connected: 1, bytes_in: 5, ..Default::default() },
                    )],
                }),
            ],
            acceptor: Some(AcceptorReport { counters: a, backend: "poll" }),
            latency: Latencies { service: Some(h), ..Latencies::default() },
        };
        let text = metrics(&v);
        // Hosts: summed over shards, one series per host.
        assert!(text.contains("fleetgate_host_connected{host=\"wms\"} 3\n"), "{text}");
        assert!(text.contains("fleetgate_host_bytes_in_total{host=\"wms\"} 15\n"), "{text}");
        assert!(text.contains("fleetgate_logons_accepted_total{shard=\"1\"} 3\n"), "{text}");
        assert!(text.contains("fleetgate_sessions{shard=\"0\",state=\"active\"} 2\n"), "{text}");
        assert!(text.contains("fleetgate_cycle_ns_max{shard=\"0\"} 1234\n"), "{text}");
        assert!(text.contains("fleetgate_tcp_accepts_total{outcome=\"handed_off\"} 5\n"), "{text}");
        assert!(text.contains("fleetgate_acceptor_info{backend=\"poll\"} 1\n"), "{text}");
        assert!(text.contains("fleetgate_service_ns_bucket{le=\"2000\"} 1\n"), "{text}");
        assert!(text.contains("fleetgate_service_ns_count 2\n"), "{text}");
        // Each sample follows its own family's TYPE line, with no other family in between.
        let mut family = String::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let base = name
                    .strip_suffix("_bucket")
                    .or_else(|| name.strip_suffix("_sum"))
                    .or_else(|| name.strip_suffix("_count"))
                    .filter(|b| *b == family)
                    .unwrap_or(name);
                assert_eq!(base, family, "{line} under # TYPE {family}");
            }
        }
    }
}
