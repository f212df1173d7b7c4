//! The housekeeping thread (DESIGN.md §3), never on the hot path: collects each shard's
//! once-a-second [`Snapshot`], returns the buffer for reuse, merges counters and histograms,
//! writes HdrHistogram interval logs, and serves `/metrics` (Prometheus text), `/sessions`
//! (JSON connections list) and `/healthz` over HTTP on loopback.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

use crate::counters::{Counter, Counters};
use crate::session::{Link, State};
use crate::shard::Snapshot;
use crate::time::Clock;

/// Shard-side ends of the snapshot queues.
pub struct ShardLink {
    /// Filled snapshots from the shard.
    pub snapshots: rtrb::Consumer<Box<Snapshot>>,
    /// Empty snapshots back to the shard.
    pub recycle: rtrb::Producer<Box<Snapshot>>,
}

/// The merged view the HTTP endpoints read.
#[derive(Default)]
pub struct View {
    /// Latest snapshot per shard.
    pub shards: Vec<Option<ShardView>>,
    /// Histograms since start, merged over shards.
    pub service_ns: Option<Histogram<u64>>,
    /// Loop cycle time since start.
    pub cycle_ns: Option<Histogram<u64>>,
    /// TCP handshake time since start.
    pub handshake_ns: Option<Histogram<u64>>,
    /// Resend service time since start.
    pub resend_ns: Option<Histogram<u64>>,
    /// The acceptor's counters (handshakes by outcome).
    pub acceptor: crate::acceptor::AcceptorCounters,
    /// The acceptor's driver: "io_uring" or "poll" ("" until it runs).
    pub acceptor_backend: &'static str,
}

/// One shard's latest numbers.
pub struct ShardView {
    /// Backend name.
    pub backend: &'static str,
    /// Counters.
    pub counters: Counters,
    /// Shard loop counters.
    pub shard: crate::shard::ShardCounters,
    /// JSON rows of the connections list.
    pub sessions_json: String,
    /// Sessions by state.
    pub by_state: [u64; 6],
}

/// A shard-loop metric: name, Prometheus type, and how to read it.
type ShardMetric = (&'static str, &'static str, fn(&crate::shard::ShardCounters) -> u64);

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

/// Runs until `stop`: collects snapshots every 100 ms, writes the interval log each second.
pub fn run(
    mut links: Vec<ShardLink>,
    view: Arc<Mutex<View>>,
    hist_log: Option<std::path::PathBuf>,
    clock: Clock,
    stop: Arc<AtomicBool>,
    latency_ns_max: u64,
    (mut traces, trace_dir): (Vec<rtrb::Consumer<crate::trace::TraceRecord>>, std::path::PathBuf),
) {
    let mut trace_writer = crate::trace::TraceWriter::new(trace_dir);
    let mut log_file = hist_log.and_then(|p| match std::fs::File::create(&p) {
        Ok(f) => Some(std::io::BufWriter::new(f)),
        Err(e) => {
            eprintln!("fleetgate: cannot create histogram log {}: {e}", p.display());
            None
        }
    });
    let mut serializer = V2DeflateSerializer::new();
    let start = std::time::SystemTime::now();
    let mut writer = log_file.as_mut().and_then(|f| {
        IntervalLogWriterBuilder::new()
            .add_comment("fleetgate gateway histograms (ns): service, cycle, handshake, resend")
            .with_start_time(start)
            .with_base_time(start)
            .with_max_value_divisor(1.0)
            .begin_log_with(f, &mut serializer)
            .ok()
    });
    let h =
        || Histogram::<u64>::new_with_bounds(1, latency_ns_max.max(2), 3).expect("valid bounds");
    let (mut i_service, mut i_cycle, mut i_handshake, mut i_resend) = (h(), h(), h(), h());
    let mut interval_start = clock.now();
    {
        let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
        v.shards = (0..links.len()).map(|_| None).collect();
        v.service_ns = Some(h());
        v.cycle_ns = Some(h());
        v.handshake_ns = Some(h());
        v.resend_ns = Some(h());
    }
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        for t in &mut traces {
            while let Ok(r) = t.pop() {
                trace_writer.write(&r);
            }
        }
        trace_writer.flush();
        for link in &mut links {
            while let Ok(snap) = link.snapshots.pop() {
                let _ = i_service.add(&snap.service_ns);
                let _ = i_cycle.add(&snap.cycle_ns);
                let _ = i_handshake.add(&snap.handshake_ns);
                let _ = i_resend.add(&snap.resend_ns);
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
                let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = v.shards.get_mut(snap.shard) {
                    *slot = Some(ShardView {
                        backend: snap.backend,
                        counters: snap.counters.clone(),
                        shard: snap.shard_counters,
                        sessions_json: json,
                        by_state,
                    });
                }
                drop(v);
                let _ = link.recycle.push(snap);
            }
        }
        let now = clock.now();
        if now.saturating_since(interval_start) >= Duration::from_secs(1) || stopping {
            let begin = interval_start.saturating_since(crate::time::Timestamp::ZERO);
            let len = now.saturating_since(interval_start);
            if let Some(w) = writer.as_mut() {
                let tags = [
                    ("service", &i_service),
                    ("cycle", &i_cycle),
                    ("handshake", &i_handshake),
                    ("resend", &i_resend),
                ];
                for (tag, hist) in tags {
                    let _ = w.write_histogram(hist, begin, len, Tag::new(tag));
                }
            }
            let mut guard = view.lock().unwrap_or_else(|e| e.into_inner());
            let v = &mut *guard;
            for (dst, src) in [
                (&mut v.service_ns, &i_service),
                (&mut v.cycle_ns, &i_cycle),
                (&mut v.handshake_ns, &i_handshake),
                (&mut v.resend_ns, &i_resend),
            ] {
                if let Some(d) = dst.as_mut() {
                    let _ = d.add(src);
                }
            }
            drop(guard);
            i_service.reset();
            i_cycle.reset();
            i_handshake.reset();
            i_resend.reset();
            interval_start = now;
        }
        if stopping {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(writer);
    if let Some(mut f) = log_file {
        let _ = f.flush();
    }
}

/// Serves `/metrics`, `/sessions` and `/healthz` until `stop`.
pub fn serve_http(listener: TcpListener, view: Arc<Mutex<View>>, stop: Arc<AtomicBool>) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                handle(stream, &view);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn handle(stream: std::net::TcpStream, view: &Mutex<View>) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers.
    let mut h = String::new();
    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, body) = match path {
        "/metrics" => (
            "200 OK",
            "text/plain; version=0.0.4",
            metrics(&view.lock().unwrap_or_else(|e| e.into_inner())),
        ),
        "/sessions" => (
            "200 OK",
            "application/json",
            sessions(&view.lock().unwrap_or_else(|e| e.into_inner())),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        _ => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /sessions or /healthz\n".to_string(),
        ),
    };
    let mut out = &stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// Prometheus text for the view.
pub fn metrics(v: &View) -> String {
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
    let a = &v.acceptor;
    if !v.acceptor_backend.is_empty() {
        let _ = writeln!(out, "# TYPE fleetgate_acceptor_info gauge");
        let _ = writeln!(out, "fleetgate_acceptor_info{{backend=\"{}\"}} 1", v.acceptor_backend);
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
