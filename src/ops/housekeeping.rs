//! The housekeeping thread (DESIGN.md §3), never on the hot path: collects each shard's
//! once-a-second [`Snapshot`], returns the buffer for reuse, merges counters and histograms into
//! the [`View`] the HTTP endpoints read (`super::http`), writes HdrHistogram interval logs, and
//! drains the protocol trace queues into their files (`super::traces`).
//!
//! [`Snapshot`]: crate::runtime::report::Snapshot

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hdrhistogram::Histogram;
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};

use super::metrics::session_rows;
use super::traces::TraceWriter;
use crate::counters::Counters;
use crate::runtime::report::{AcceptorReport, LATENCY_NAMES, Latencies, Published};

/// The merged view the HTTP endpoints read.
#[derive(Default)]
pub struct View {
    /// Latest snapshot per shard.
    pub shards: Vec<Option<ShardView>>,
    /// The acceptor's latest report.
    pub acceptor: Option<AcceptorReport>,
    /// Latency histograms since start, merged over shards.
    pub latency: Latencies<Option<Histogram<u64>>>,
}

/// One shard's latest numbers.
pub struct ShardView {
    /// Backend name.
    pub backend: &'static str,
    /// Counters (the endpoint's and the loop's) and gauges.
    pub counters: Counters,
    /// JSON rows of the connections list.
    pub sessions_json: String,
    /// Per-host figures (DESIGN.md §1.6), by host name.
    pub hosts: Vec<(String, crate::apps::HostStats)>,
}

/// Runs until `stop`: collects snapshots every 100 ms, writes the interval log each second.
pub fn run(
    published: Published,
    view: Arc<Mutex<View>>,
    hist_log: Option<std::path::PathBuf>,
    trace_dir: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    latency_ns_max: u64,
) {
    let Published { shards: mut links, mut traces, mut acceptor, clock } = published;
    let mut trace_writer = TraceWriter::new(trace_dir);
    let mut log_file = hist_log.and_then(|p| match std::fs::File::create(&p) {
        Ok(f) => Some(std::io::BufWriter::new(f)),
        Err(e) => {
            tracing::error!(path = %p.display(), error = %e, "cannot create histogram log");
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
    // This interval's, merged over shards.
    let mut interval = Latencies::new(h);
    let mut interval_start = clock.now();
    {
        let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
        v.shards = (0..links.len()).map(|_| None).collect();
        v.latency = Latencies::new(|| Some(h()));
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
            while let Ok(mut snap) = link.snapshots.pop() {
                for (i, s) in interval.each_mut().into_iter().zip(snap.latency.each()) {
                    let _ = i.add(s);
                }
                let json = session_rows(&snap);
                let mut v = view.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(slot) = v.shards.get_mut(snap.shard) {
                    *slot = Some(ShardView {
                        backend: snap.backend,
                        counters: snap.counters.clone(),
                        sessions_json: json,
                        hosts: snap.hosts.clone(),
                    });
                }
                drop(v);
                // Emptied here, off the shard thread: the shard swaps them with its own.
                for h in snap.latency.each_mut() {
                    h.reset();
                }
                let _ = link.recycle.push(snap);
            }
        }
        let mut latest = None;
        while let Ok(r) = acceptor.pop() {
            latest = Some(r);
        }
        if latest.is_some() {
            view.lock().unwrap_or_else(|e| e.into_inner()).acceptor = latest;
        }
        let now = clock.now();
        if now.saturating_since(interval_start) >= Duration::from_secs(1) || stopping {
            let begin = interval_start.saturating_since(crate::time::Timestamp::ZERO);
            let len = now.saturating_since(interval_start);
            if let Some(w) = writer.as_mut() {
                for (tag, hist) in LATENCY_NAMES.into_iter().zip(interval.each()) {
                    let _ = w.write_histogram(hist, begin, len, Tag::new(tag));
                }
            }
            let mut guard = view.lock().unwrap_or_else(|e| e.into_inner());
            let v = &mut *guard;
            for (dst, src) in v.latency.each_mut().into_iter().zip(interval.each()) {
                if let Some(d) = dst.as_mut() {
                    let _ = d.add(src);
                }
            }
            drop(guard);
            for h in interval.each_mut() {
                h.reset();
            }
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
