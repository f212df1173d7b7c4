//! The exposition of what housekeeping merged: `/metrics` (Prometheus text) and `/sessions`
//! (the JSON connections list).

use std::fmt::Write as _;

use super::housekeeping::View;
use crate::counters::Counter;
use crate::runtime::report::{AcceptorReport, ShardCounters, Snapshot};
use crate::session::{Link, State};

/// Prometheus text for the view and the acceptor's report.
pub fn metrics(v: &View, acceptor: &AcceptorReport) -> String {
    let mut out = String::new();
    for &c in Counter::VALUES {
        let _ = writeln!(out, "# TYPE fleetgate_{} counter", c.name());
        for (i, s) in v.shards.iter().enumerate() {
            if let Some(s) = s {
                let _ =
                    writeln!(out, "fleetgate_{}{{shard=\"{i}\"}} {}", c.name(), s.counters.get(c));
            }
        }
    }
    let _ = writeln!(out, "# TYPE fleetgate_sessions gauge");
    for (i, s) in v.shards.iter().enumerate() {
        if let Some(s) = s {
            for (k, name) in STATES.iter().enumerate().take(5) {
                let _ = writeln!(
                    out,
                    "fleetgate_sessions{{shard=\"{i}\",state=\"{name}\"}} {}",
                    s.by_state[k]
                );
            }
        }
    }
    let shard_metrics: [ShardMetric; 10] = [
        ("handoffs_total", "counter", |s| s.handoffs),
        ("handoff_rejected_total", "counter", |s| s.handoff_rejected),
        ("udp_send_dropped_total", "counter", |s| s.udp_send_dropped),
        ("tcp_slow_reader_closed_total", "counter", |s| s.tcp_slow_closed),
        ("tcp_slow_reader_aborted_total", "counter", |s| s.tcp_slow_aborted),
        ("tcp_close_aborted_total", "counter", |s| s.tcp_close_aborted),
        ("histogram_saturated_total", "counter", |s| s.histogram_saturated),
        ("cycle_ns_max", "gauge", |s| s.cycle_ns_max),
        ("cycles_over_1ms_total", "counter", |s| s.cycles_over_1ms),
        ("trace_dropped_total", "counter", |s| s.trace_dropped),
    ];
    for (name, kind, f) in shard_metrics {
        let _ = writeln!(out, "# TYPE fleetgate_{name} {kind}");
        for (i, s) in v.shards.iter().enumerate() {
            if let Some(s) = s {
                let _ = writeln!(
                    out,
                    "fleetgate_{name}{{shard=\"{i}\",backend=\"{}\"}} {}",
                    s.backend,
                    f(&s.shard)
                );
            }
        }
    }
    let a = &acceptor.counters;
    if !acceptor.backend.is_empty() {
        let _ = writeln!(out, "# TYPE fleetgate_acceptor_info gauge");
        let _ = writeln!(out, "fleetgate_acceptor_info{{backend=\"{}\"}} 1", acceptor.backend);
    }
    let _ = writeln!(out, "# TYPE fleetgate_connection_requests_total counter");
    let outcomes = [
        ("accepted", a.accepted),
        ("rejected", a.rejected - a.rate_limited),
        ("rate_limited", a.rate_limited),
        ("dropped", a.dropped),
    ];
    let _ = writeln!(out, "# TYPE fleetgate_connection_replies_dropped_total counter");
    let _ = writeln!(out, "fleetgate_connection_replies_dropped_total {}", a.replies_dropped);
    for (outcome, n) in outcomes {
        let _ = writeln!(out, "fleetgate_connection_requests_total{{outcome=\"{outcome}\"}} {n}");
    }
    let _ = writeln!(out, "# TYPE fleetgate_tcp_accepts_total counter");
    let outcomes = [
        ("handed_off", a.handoffs),
        ("logon_timeout", a.logon_timeouts),
        ("refused", a.tcp_refused),
        ("malformed", a.tcp_malformed),
    ];
    for (outcome, n) in outcomes {
        let _ = writeln!(out, "fleetgate_tcp_accepts_total{{outcome=\"{outcome}\"}} {n}");
    }
    for (name, h) in [
        ("service_ns", &v.service_ns),
        ("cycle_ns", &v.cycle_ns),
        ("handshake_ns", &v.handshake_ns),
        ("resend_ns", &v.resend_ns),
    ] {
        if let Some(h) = h {
            let _ = writeln!(out, "# TYPE fleetgate_{name} summary");
            for q in [0.5, 0.9, 0.99, 0.999, 1.0] {
                let _ = writeln!(
                    out,
                    "fleetgate_{name}{{quantile=\"{q}\"}} {}",
                    h.value_at_quantile(q)
                );
            }
            let _ = writeln!(out, "fleetgate_{name}_count {}", h.len());
        }
    }
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

/// The JSON rows of a snapshot's connections list, and its sessions counted by state.
pub(crate) fn session_rows(snap: &Snapshot) -> (String, [u64; 6]) {
    let mut by_state = [0u64; 6];
    let mut json = String::new();
    for (k, s) in snap.sessions.iter().enumerate() {
        by_state[state_index(s.state)] += 1;
        if k > 0 {
            json.push(',');
        }
        let link = match s.link {
            Link::Udp(a) => format!("\"udp:{a}\""),
            Link::Tcp(c) => format!("\"tcp:conn{}\"", c.0),
            Link::None => "null".into(),
        };
        let _ = write!(
            json,
            "{{\"id\":\"{:016x}\",\"device_uid\":{:?},\"username\":{:?},\"link\":{link},\"shard\":{},\"state\":\"{}\",\"expected_in\":{},\"next_out\":{},\"last_heard_ms_ago\":{}}}",
            s.id,
            s.device_uid.as_str(),
            s.username.as_str(),
            snap.shard,
            STATES[state_index(s.state)],
            s.expected_in,
            s.next_out,
            snap.at.saturating_since(s.last_heard).as_millis(),
        );
    }
    (json, by_state)
}

/// A shard-loop metric: name, Prometheus type, and how to read it.
type ShardMetric = (&'static str, &'static str, fn(&ShardCounters) -> u64);

const STATES: [&str; 6] =
    ["awaiting_config", "awaiting_logon", "active", "logging_out", "detached", "closed"];

fn state_index(s: State) -> usize {
    match s {
        State::AwaitingConfig => 0,
        State::AwaitingLogon => 1,
        State::Active => 2,
        State::LoggingOut(..) => 3,
        State::Detached => 4,
        State::Closed(_) => 5,
    }
}
