//! `fleetgate load --servers LIST`: every device carries the same list of gateways and follows
//! DESIGN.md §4 with [`ServerCursor`] (start at the hash of its deviceUid, or its username for
//! a TCP client; resume at the gateway holding its session; move on host timeout, SERVER_FULL,
//! DRAINING, a refused TCP connection, LoggedOut("draining" / "gateway draining")). A logged-on
//! device whose session ends comes back (to its holder, or the next entry) instead of counting
//! as lost; one that is not logged on again by the end is an error (`never_back`).
//!
//! What the report adds ([`FleetReport`]): moves by reason, the time from a session's end to
//! the device's next logon (p50, p99, max), sessions ended per gateway, and per gateway the
//! devices that first logged on there, how many ended there, and how many of those were never
//! disturbed (no session end, no ResendRequest): with a gateway that stays up, its share of the
//! fleet must be untouched.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::hist;
use super::report::Latency;
use crate::session::{MoveReason, ServerCursor};
use crate::time::Timestamp;

/// Default ports of an entry given as a bare host (DESIGN.md §2: 3006 and 4210).
const UDP_PORT: u16 = 3006;
const TCP_PORT: u16 = 4210;

/// One gateway of the list: its UDP handshake address and its TCP address (same host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Server {
    /// UDP handshake port.
    pub handshake: SocketAddr,
    /// TCP port.
    pub tcp: SocketAddr,
}

impl std::fmt::Display for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.handshake, self.tcp.port())
    }
}

/// Parses one entry: `HOST`, `HOST:UDP_PORT` or `HOST:UDP_PORT/TCP_PORT` (IPv6 in brackets:
/// `[::1]:3006/4210`); missing ports are 3006 and 4210.
pub fn parse_server(s: &str) -> Result<Server, String> {
    let (udp, tcp) = match s.split_once('/') {
        Some((u, t)) => {
            (u, Some(t.parse::<u16>().map_err(|_| format!("{s}: bad TCP port {t:?}"))?))
        }
        None => (s, None),
    };
    let handshake = match udp.parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let host = udp.trim_start_matches('[').trim_end_matches(']');
            let ip: IpAddr = host.parse().map_err(|_| {
                format!("{s}: expected HOST, HOST:UDP_PORT or HOST:UDP_PORT/TCP_PORT")
            })?;
            SocketAddr::new(ip, UDP_PORT)
        }
    };
    let tcp = SocketAddr::new(handshake.ip(), tcp.unwrap_or(TCP_PORT));
    Ok(Server { handshake, tcp })
}

/// Parses a list: entries separated by commas (the option may also be repeated).
pub fn parse_servers(lists: &[String]) -> Result<Vec<Server>, String> {
    let out: Vec<Server> = lists
        .iter()
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(parse_server)
        .collect::<Result<_, _>>()?;
    if out.len() > usize::from(u16::MAX - 1) {
        return Err("at most 65,534 servers".into());
    }
    Ok(out)
}

/// A device's place in the list, kept beside it when a list is given.
#[derive(Clone, Copy, Debug)]
pub(super) struct FleetDev {
    pub(super) cursor: ServerCursor,
    /// When its last session ended (`ZERO`: none since its last logon).
    pub(super) ended_at: Timestamp,
    /// The entry of its first logon (`u16::MAX`: not yet).
    pub(super) first: u16,
    /// Sessions of it that ended.
    pub(super) ends: u16,
}

impl FleetDev {
    pub(super) fn new(key: &[u8], n: usize) -> Self {
        Self {
            cursor: ServerCursor::new(key, n),
            ended_at: Timestamp::ZERO,
            first: u16::MAX,
            ends: 0,
        }
    }
}

/// One thread's counts (merged into [`FleetReport`]).
#[derive(Debug)]
pub(crate) struct FleetResult {
    /// Moves by [`MoveReason`] (in `MoveReason::ALL` order).
    pub(crate) moves: [u64; MoveReason::ALL.len()],
    /// Session end → next logon (ns).
    pub(super) back: Histogram<u64>,
    /// Resumes at the holder after a lost session.
    pub(super) resumed_at_holder: u64,
    /// The latest logon that followed a session's end (ns since the Unix epoch; 0: none).
    pub(super) last_back_unix_ns: u64,
    /// Counts per entry.
    pub(super) per_gateway: PerGateway,
}

/// Counts per entry of the list, in list order (`*_by_gateway` in the JSON summary).
#[derive(Clone, Debug, Serialize)]
pub struct PerGateway {
    /// Sessions that ended there while logged on.
    #[serde(rename = "sessions_ended_by_gateway")]
    pub sessions_ended: Vec<u64>,
    /// Devices logged on there at the end.
    #[serde(rename = "at_end_by_gateway")]
    pub at_end: Vec<u64>,
    /// Devices whose first logon was there.
    #[serde(rename = "first_by_gateway")]
    pub first: Vec<u64>,
    /// Of those, the ones still there at the end with no session end and no ResendRequest in
    /// the whole run.
    #[serde(rename = "undisturbed_by_gateway")]
    pub undisturbed: Vec<u64>,
}

impl PerGateway {
    fn new(n: usize) -> Self {
        Self {
            sessions_ended: vec![0; n],
            at_end: vec![0; n],
            first: vec![0; n],
            undisturbed: vec![0; n],
        }
    }

    fn merge(&mut self, o: &Self) {
        for (a, b) in [
            (&mut self.sessions_ended, &o.sessions_ended),
            (&mut self.at_end, &o.at_end),
            (&mut self.first, &o.first),
            (&mut self.undisturbed, &o.undisturbed),
        ] {
            for (x, y) in a.iter_mut().zip(b) {
                *x += y;
            }
        }
    }
}

impl FleetResult {
    pub(super) fn new(n: usize) -> Self {
        Self {
            moves: [0; MoveReason::ALL.len()],
            back: hist(),
            resumed_at_holder: 0,
            last_back_unix_ns: 0,
            per_gateway: PerGateway::new(n),
        }
    }

    pub(super) fn moved(&mut self, why: MoveReason) {
        if let Some(i) = MoveReason::ALL.iter().position(|&m| m == why) {
            self.moves[i] += 1;
        }
    }

    pub(super) fn merge(&mut self, o: &Self) {
        for (a, b) in self.moves.iter_mut().zip(o.moves) {
            *a += b;
        }
        let _ = self.back.add(&o.back);
        self.resumed_at_holder += o.resumed_at_holder;
        self.last_back_unix_ns = self.last_back_unix_ns.max(o.last_back_unix_ns);
        self.per_gateway.merge(&o.per_gateway);
    }
}

/// The fleet part of the report (`fleet` in the JSON summary).
#[derive(Clone, Debug, Serialize)]
pub struct FleetReport {
    /// The list, in order (`HANDSHAKE_ADDR/TCP_PORT`).
    pub servers: Vec<String>,
    /// Moves to the next entry, by reason.
    pub moves: BTreeMap<String, u64>,
    /// Sessions resumed at the gateway holding them after a loss.
    pub resumed_at_holder: u64,
    /// A session's end (LoggedOut, loss, closed connection) to the device's next logon (ns).
    pub back_ns: Latency,
    /// When the last device came back: the latest logon that followed a session's end (s since
    /// the Unix epoch; null: none), to compare with when a gateway was drained or killed.
    pub last_back_unix_s: Option<f64>,
    /// Counts per entry.
    #[serde(flatten)]
    pub per_gateway: PerGateway,
}

impl FleetReport {
    pub(super) fn of(servers: &[Server], r: &FleetResult) -> Self {
        Self {
            servers: servers.iter().map(ToString::to_string).collect(),
            moves: MoveReason::ALL
                .iter()
                .zip(r.moves)
                .filter(|(_, n)| *n > 0)
                .map(|(m, n)| (m.as_str().to_string(), n))
                .collect(),
            resumed_at_holder: r.resumed_at_holder,
            back_ns: Latency::of(&r.back),
            last_back_unix_s: (r.last_back_unix_ns > 0).then(|| r.last_back_unix_ns as f64 / 1e9),
            per_gateway: r.per_gateway.clone(),
        }
    }

    /// Lines for the summary table.
    pub fn table(&self) -> String {
        let moves: Vec<String> = self.moves.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let ms = |ns: u64| format!("{:.0} ms", ns as f64 / 1e6);
        let q = |name: &str| self.back_ns.quantiles.get(name).copied().unwrap_or(0);
        let mut s = format!(
            "  servers     {}\n  moves       {}   resumed at holder {}\n  back after a session end: {} samples, p50 {}, p99 {}, max {}\n",
            self.servers.join(" "),
            if moves.is_empty() { "none".into() } else { moves.join(" ") },
            self.resumed_at_holder,
            self.back_ns.count,
            ms(q("p50")),
            ms(q("p99")),
            ms(self.back_ns.max),
        );
        for (i, srv) in self.servers.iter().enumerate() {
            s.push_str(&format!(
                "  gateway {i} {srv}: first logons {}, undisturbed {}, sessions ended {}, logged on at end {}\n",
                self.per_gateway.first[i],
                self.per_gateway.undisturbed[i],
                self.per_gateway.sessions_ended[i],
                self.per_gateway.at_end[i],
            ));
        }
        s
    }
}

/// `127.0.0.1` with `port`, for tests.
pub fn loopback(udp: u16, tcp: u16) -> Server {
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    Server { handshake: SocketAddr::new(ip, udp), tcp: SocketAddr::new(ip, tcp) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_parse_with_default_ports() {
        assert_eq!(parse_server("127.0.0.1").unwrap(), loopback(3006, 4210));
        assert_eq!(parse_server("127.0.0.1:13006").unwrap(), loopback(13006, 4210));
        assert_eq!(parse_server("127.0.0.1:13006/14210").unwrap(), loopback(13006, 14210));
        let v6 = parse_server("[::1]:3007/4211").unwrap();
        assert_eq!(
            (v6.handshake.to_string(), v6.tcp.to_string()),
            ("[::1]:3007".into(), "[::1]:4211".into())
        );
        assert_eq!(parse_server("::1").unwrap().tcp.port(), 4210);
        assert!(parse_server("gateway-a").is_err());
        assert!(parse_server("127.0.0.1:1/x").is_err());
        let list = parse_servers(&["127.0.0.1:1/2, 127.0.0.1:3/4".into(), "127.0.0.2".into()]);
        assert_eq!(list.unwrap().len(), 3);
        assert_eq!(loopback(1, 2).to_string(), "127.0.0.1:1/2");
    }

    #[test]
    fn per_gateway_counts_keep_their_json_names() {
        let mut r = FleetResult::new(2);
        r.per_gateway.sessions_ended[0] = 1;
        r.per_gateway.at_end[1] = 2;
        r.per_gateway.first[0] = 3;
        r.per_gateway.undisturbed[1] = 4;
        let mut o = FleetResult::new(2);
        o.per_gateway.first[0] = 10;
        r.merge(&o);
        let v = serde_json::to_value(FleetReport::of(&[loopback(1, 2), loopback(3, 4)], &r))
            .expect("serializable");
        assert_eq!(v["sessions_ended_by_gateway"], serde_json::json!([1, 0]));
        assert_eq!(v["at_end_by_gateway"], serde_json::json!([0, 2]));
        assert_eq!(v["first_by_gateway"], serde_json::json!([13, 0]));
        assert_eq!(v["undisturbed_by_gateway"], serde_json::json!([0, 4]));
        assert!(v.get("per_gateway").is_none(), "flattened: {v}");
    }
}
