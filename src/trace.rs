//! Per-device protocol traces, in the spirit of the StayLinked handler log: for the deviceUids
//! (or TCP usernames) and source address ranges an operator names, one line per packet event,
//! written by the housekeeping thread to `{trace_dir}/fleetgate.{uid-or-address}.log`:
//!
//! ```text
//! 2026-11-21 06:15:22.123456 shard 0 in  127.0.0.1:3771 session 1a2b3c4d5e6f7081 DEV000001 LogonRequest seq 1 ack 0 len 81
//! ```
//!
//! Shards push fixed-size [`TraceRecord`]s over an SPSC queue; when the writer falls behind the
//! record is dropped and counted (`fleetgate_trace_dropped_total`), never waited for.

use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use crate::protocol::{DeviceUid, Header, MessageType};

/// One packet event.
#[derive(Clone, Copy, Debug)]
pub struct TraceRecord {
    /// Unix-epoch nanoseconds.
    pub at_ns: i64,
    /// Shard index.
    pub shard: u16,
    /// True for output.
    pub outbound: bool,
    /// The device's address.
    pub peer: SocketAddr,
    /// Session id (0 during the handshake).
    pub session_id: u64,
    /// deviceUid or TCP username.
    pub who: DeviceUid,
    /// The message header.
    pub header: Header,
}

/// Which devices to trace.
#[derive(Clone, Debug, Default)]
pub struct TraceFilter {
    names: Vec<DeviceUid>,
    nets: Vec<(IpAddr, u8)>,
}

impl TraceFilter {
    /// From `observability.trace_devices` and `observability.trace_addrs` (CIDR or single
    /// addresses). Returns an error naming a bad entry.
    pub fn new(devices: &[String], addrs: &[String]) -> Result<Self, String> {
        let mut f = Self::default();
        for d in devices {
            f.names.push(
                DeviceUid::new(d.as_bytes())
                    .ok_or_else(|| format!("trace device {d:?}: 1..=16 printable characters"))?,
            );
        }
        for a in addrs {
            let (ip, bits) = match a.split_once('/') {
                Some((ip, bits)) => (
                    ip,
                    bits.parse::<u8>()
                        .map_err(|_| format!("trace address {a:?}: bad prefix length"))?,
                ),
                None => (a.as_str(), if a.contains(':') { 128 } else { 32 }),
            };
            let ip: IpAddr = ip.parse().map_err(|_| format!("trace address {a:?}: bad address"))?;
            f.nets.push((ip, bits));
        }
        Ok(f)
    }

    /// True if nothing is traced.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.nets.is_empty()
    }

    /// True if the device `who` at `ip` is traced.
    pub fn matches(&self, who: &DeviceUid, ip: IpAddr) -> bool {
        (!who.is_empty() && self.names.iter().any(|n| n == who))
            || self.nets.iter().any(|&(net, bits)| in_net(ip, net, bits))
    }
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let bits = u32::from(bits.min(32));
            let mask = if bits == 0 { 0 } else { u32::MAX << (32 - bits) };
            u32::from(a) & mask == u32::from(b) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let bits = u32::from(bits.min(128));
            let mask = if bits == 0 { 0 } else { u128::MAX << (128 - bits) };
            u128::from(a) & mask == u128::from(b) & mask
        }
        _ => false,
    }
}

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

    #[test]
    fn filter_matches_names_and_ranges() {
        let f = TraceFilter::new(&["DEV1".into()], &["10.10.0.0/16".into(), "127.0.0.9".into()])
            .unwrap();
        let dev1 = DeviceUid::new(b"DEV1").unwrap();
        let dev2 = DeviceUid::new(b"DEV2").unwrap();
        assert!(f.matches(&dev1, "192.168.1.1".parse().unwrap()));
        assert!(f.matches(&dev2, "10.10.225.150".parse().unwrap()));
        assert!(f.matches(&dev2, "127.0.0.9".parse().unwrap()));
        assert!(!f.matches(&dev2, "127.0.0.8".parse().unwrap()));
        assert!(TraceFilter::new(&[], &["10.0.0.0/x".into()]).is_err());
    }

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
