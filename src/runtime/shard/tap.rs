//! The shard's protocol tap: for the deviceUids (or TCP usernames) and source address ranges an
//! operator names ([`TraceFilter`]), the shard pushes one fixed-size [`TraceRecord`] per packet
//! event over an SPSC queue to the writer in `ops::traces`. When the writer falls behind, the
//! record is dropped and counted (`fleetgate_trace_dropped_total`), never waited for.

use std::net::{IpAddr, SocketAddr};

use crate::protocol::{Body, Datagram, DeviceUid, Header, Message};
use crate::session::Endpoint;
use crate::time::Timestamp;

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

/// Where and when a packet event happened, for [`Tap`].
#[derive(Clone, Copy, Debug)]
pub struct Seen {
    /// When.
    pub now: Timestamp,
    /// True for output.
    pub outbound: bool,
    /// The device's address.
    pub peer: SocketAddr,
}

/// A shard's protocol tap: the filter, the queue to the writer, and what it dropped.
pub struct Tap {
    out: Option<(TraceFilter, rtrb::Producer<TraceRecord>)>,
    shard: u16,
    /// Offset from the shard clock to Unix-epoch nanoseconds.
    wall: i64,
    /// Records dropped because the writer fell behind.
    pub dropped: u64,
}

impl Tap {
    /// A tap for `shard` writing to `out` (`None`: nothing is traced).
    pub fn new(
        shard: u16,
        wall: i64,
        out: Option<(TraceFilter, rtrb::Producer<TraceRecord>)>,
    ) -> Self {
        Self { out, shard, wall, dropped: 0 }
    }

    /// True if anything may be traced (so callers skip the work otherwise).
    pub fn is_on(&self) -> bool {
        self.out.is_some()
    }

    /// Traces the messages of a datagram if its device is traced.
    pub fn datagram(&mut self, endpoint: &Endpoint, at: Seen, data: &[u8]) {
        if !self.is_on() {
            return;
        }
        let Ok(dg) = Datagram::parse(data) else { return };
        let lookup = |id: u64| {
            endpoint.handle_by_id(id).and_then(|h| endpoint.session(h)).map(|s| *s.device_uid())
        };
        let mut session_id = dg.session_id;
        let who = if session_id != 0 {
            lookup(session_id).unwrap_or_default()
        } else {
            match dg
                .frames()
                .next()
                .and_then(Result::ok)
                .and_then(|f| Message::decode_frame(f).ok())
                .map(|m| m.body)
            {
                Some(Body::RegistrationRequest { device_uid, .. }) => device_uid,
                Some(Body::RegistrationAccept { session_id: id, .. }) => {
                    session_id = id;
                    lookup(id).unwrap_or_default()
                }
                _ => DeviceUid::default(),
            }
        };
        for f in dg.frames().flatten() {
            self.frame(at, session_id, &who, f);
        }
    }

    /// Traces each frame of a TCP chunk if its device is traced.
    pub fn tcp_chunk(&mut self, at: Seen, who: &DeviceUid, bytes: &[u8]) {
        if !self.is_on() {
            return;
        }
        let mut rest = bytes;
        while let Ok((f, padded)) = crate::protocol::split_frame(rest) {
            self.frame(at, 0, who, f);
            rest = &rest[padded..];
        }
    }

    /// Pushes one trace record if the device is traced; drops and counts it if the writer is
    /// behind.
    pub fn frame(&mut self, at: Seen, session_id: u64, who: &DeviceUid, frame: &[u8]) {
        let Some((filter, tx)) = self.out.as_mut() else { return };
        if !filter.matches(who, at.peer.ip()) {
            return;
        }
        let Ok(header) = Header::decode(frame) else { return };
        let at_ns = (at.now.as_nanos() as i64).wrapping_add(self.wall);
        let r = TraceRecord {
            at_ns,
            shard: self.shard,
            outbound: at.outbound,
            peer: at.peer,
            session_id,
            who: *who,
            header,
        };
        if tx.push(r).is_err() {
            self.dropped += 1;
        }
    }
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
}
