//! Per-device protocol traces, in the spirit of the StayLinked handler log: the records the shards'
//! taps push (`runtime::shard::tap`) are written by the housekeeping thread, one line per
//! packet event, to `{trace_dir}/fleetgate.{uid-or-address}.log`:
//!
//! ```text
//! 2026-11-21 06:15:22.123456 shard 0 in  127.0.0.1:3771 session 1a2b3c4d5e6f7081 DEV000001 LogonRequest seq 1 ack 0 len 81
//! ```

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;

use crate::protocol::MessageType;
use crate::runtime::shard::tap::TraceRecord;

/// Writes trace records to one file per device, off the hot path.
pub struct TraceWriter {
    dir: PathBuf,
    files: HashMap<String, std::io::BufWriter<std::fs::File>>,
    /// Lines written.
    pub written: u64,
}

impl TraceWriter {
    /// Writes into `dir` (created if missing).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, files: HashMap::new(), written: 0 }
    }

    /// Appends one line for `r`.
    pub fn write(&mut self, r: &TraceRecord) {
        let key =
            if r.who.is_empty() { r.peer.ip().to_string() } else { r.who.as_str().to_string() };
        if !self.files.contains_key(&key) {
            let _ = std::fs::create_dir_all(&self.dir);
            let path = self.dir.join(format!("fleetgate.{}.log", key.replace(['/', ':'], "_")));
            match std::fs::OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    self.files.insert(key.clone(), std::io::BufWriter::new(f));
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot open trace file");
                    return;
                }
            }
        }
        let Some(f) = self.files.get_mut(&key) else { return };
        let h = r.header;
        let name = MessageType::from_u16(h.type_id)
            .map_or_else(|| format!("App({})", h.type_id), |t| format!("{t:?}"));
        let _ = writeln!(
            f,
            "{} shard {} {} {} session {:016x} {} {}{} seq {} ack {} len {}",
            format_time(r.at_ns),
            r.shard,
            if r.outbound { "out" } else { "in " },
            r.peer,
            r.session_id,
            if r.who.is_empty() { "-" } else { r.who.as_str() },
            name,
            if h.is_resend() { " (resend)" } else { "" },
            h.seq,
            h.last_processed,
            h.length,
        );
        self.written += 1;
    }

    /// Flushes every file.
    pub fn flush(&mut self) {
        for f in self.files.values_mut() {
            let _ = f.flush();
        }
    }
}

/// `YYYY-MM-DD HH:MM:SS.uuuuuu` (UTC) from Unix-epoch nanoseconds.
pub fn format_time(ns: i64) -> String {
    match jiff::Timestamp::from_nanosecond(i128::from(ns)) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S%.6f").to_string(),
        // Outside jiff's range (years -9999..=9999): cannot come from the process clock.
        Err(_) => format!("@{ns}ns"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DeviceUid, Header};

    #[test]
    fn time_format_is_civil_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00.000000");
        assert_eq!(format_time(1_264_408_182_549_000_000), "2010-01-25 08:29:42.549000");
    }

    #[test]
    fn writer_appends_one_line_per_event_to_a_real_file() {
        let dir = std::env::temp_dir().join(format!("fleetgate-trace-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut w = TraceWriter::new(dir.clone());
        let r = TraceRecord {
            at_ns: 1_264_408_182_549_000_000,
            shard: 0,
            outbound: false,
            peer: "10.10.225.150:3771".parse().unwrap(),
            session_id: 0xab,
            who: DeviceUid::new(b"PDT9090").unwrap(),
            header: Header { type_id: 1, seq: 1, length: 81, ..Header::default() },
        };
        w.write(&r);
        w.write(&TraceRecord {
            outbound: true,
            header: Header { type_id: 2, seq: 1, length: 36, ..Header::default() },
            ..r
        });
        w.flush();
        let text = std::fs::read_to_string(dir.join("fleetgate.PDT9090.log")).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("2010-01-25 08:29:42.549000 shard 0 in  10.10.225.150:3771 session 00000000000000ab PDT9090 LogonRequest seq 1"), "{}", lines[0]);
        assert!(lines[1].contains("out") && lines[1].contains("LogonResponse"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
