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
                    eprintln!("fleetgate: cannot open trace file {}: {e}", path.display());
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
    let secs = ns.div_euclid(1_000_000_000);
    let micros = ns.rem_euclid(1_000_000_000) / 1000;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{micros:06}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
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
