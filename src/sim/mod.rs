//! Deterministic simulation: one gateway [`Endpoint`] and many [`Device`]s over a simulated
//! network with seeded loss, duplication, reordering, delay, corruption and blackholes
//! (quinn-proto `tests/util.rs`, TigerBeetle's packet simulator). Virtual time jumps to the next
//! delivery or deadline; nothing here reads a clock or touches a socket.
//!
//! UDP datagrams go through the faults. TCP is modelled as what TCP gives the application: an
//! in-order byte stream with delay, which a fault can only cut (both ends see the close).
//!
//! Also here, for the integration tests and the benches (the `sim` feature makes the module
//! public): [`Pair`], an allocation-free in-memory harness of one endpoint and a few devices,
//! and [`alloc`], the counting allocator of the no-allocation proofs.

#![allow(missing_docs, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::time::Duration;

use crate::counters::Counter;
use crate::protocol::Datagram;
use crate::protocol::Deframer;
use crate::session::handshake::{
    CookieKey, CookieKeys, HandshakeConfig, HandshakeOutcome, answer_connection_request,
};
use crate::session::{
    AppMessage, Application, Authenticator, ConnId, Device, DeviceConfig, DeviceDest, DeviceEvent,
    Endpoint, EndpointConfig, EndpointEvent, Link, OpenLogon, Outbox, SessionHandle, SessionInfo,
    Transport,
};
use crate::time::Timestamp;

pub mod alloc;
mod mem;
mod pair;
#[cfg(test)]
mod rules;
#[cfg(test)]
mod scenarios;

pub use crate::rng::Rng;
pub use mem::{MemBackend, Sent};
pub use pair::{Pair, Peer, Watch, feed};

/// Faults applied to each UDP datagram, per direction.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    pub loss: f64,
    pub duplicate: f64,
    pub corrupt: f64,
    pub delay_min: Duration,
    /// Extra uniform delay; a spread larger than the send interval reorders.
    pub jitter: Duration,
}

impl Faults {
    pub const NONE: Self = Self {
        loss: 0.0,
        duplicate: 0.0,
        corrupt: 0.0,
        delay_min: Duration::from_micros(100),
        jitter: Duration::ZERO,
    };

    pub fn lossy(loss: f64) -> Self {
        Self {
            loss,
            duplicate: 0.02,
            corrupt: 0.005,
            delay_min: Duration::from_micros(200),
            jitter: Duration::from_millis(5),
        }
    }
}

/// Whether the io_uring flavour of a test can run here. When `io::uring::probe()` fails it
/// prints why and returns false (the caller returns early), unless `FLEETGATE_REQUIRE_URING=1`
/// is set, as CI sets it on machines with io_uring: then it panics, so a refused io_uring fails
/// every io_uring test instead of letting them pass without running.
pub fn uring_available(test: &str) -> bool {
    match crate::io::uring::probe() {
        Ok(()) => true,
        Err(why) if std::env::var_os("FLEETGATE_REQUIRE_URING").is_some_and(|v| v == "1") => {
            panic!("{test}: io_uring required (FLEETGATE_REQUIRE_URING=1) but unusable: {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: io_uring unusable here: {why}");
            false
        }
    }
}

pub const HANDSHAKE: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), 3006);
pub const SESSION_PORT: u16 = 5000;
/// The device config every simulated device sends (the seed's example).
pub const SIM_DEVICE_CONFIG: &[u8] = b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~";
pub const SESSION: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1)), SESSION_PORT);

#[derive(Debug)]
enum Packet {
    /// A datagram from `from` to `to`.
    Udp { from: SocketAddr, to: SocketAddr, data: Vec<u8> },
    /// Stream bytes to the gateway on a connection.
    TcpToGateway { dev: usize, conn: ConnId, data: Vec<u8> },
    /// Stream bytes to a device.
    TcpToDevice { dev: usize, conn: ConnId, data: Vec<u8> },
}

/// Where a captured delivery travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// A UDP datagram (the bytes include the 8-byte session id prefix).
    Udp { from: SocketAddr, to: SocketAddr },
    /// TCP stream bytes on a connection (whole frames: the gateway writes whole messages).
    Tcp { conn: ConnId },
}

/// One delivery the network made, recorded when `Net::capture` is on.
#[derive(Clone, Debug)]
pub struct Captured {
    /// When it was delivered.
    pub at: Timestamp,
    /// Toward the gateway (true) or away from it.
    pub up: bool,
    /// The simulated device at the other end, if any (None for injected raw traffic).
    pub dev: Option<usize>,
    pub path: Path,
    pub data: Vec<u8>,
    /// The network lost it (a drop rule, a blackhole or random loss): recorded when sent.
    pub dropped: bool,
}

impl Captured {
    /// The session id prefix (UDP only).
    pub fn prefix(&self) -> Option<u64> {
        match self.path {
            Path::Udp { .. } => Datagram::parse(&self.data).ok().map(|d| d.session_id),
            Path::Tcp { .. } => None,
        }
    }

    /// The frames carried (each exactly `messageLength` bytes), up to the first framing error.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let payload = match self.path {
            Path::Udp { .. } => match Datagram::parse(&self.data) {
                Ok(d) => d.payload,
                Err(_) => return Vec::new(),
            },
            Path::Tcp { .. } => &self.data[..],
        };
        let mut out = Vec::new();
        let mut rest = payload;
        while !rest.is_empty() {
            match crate::protocol::split_frame(rest) {
                Ok((frame, padded)) => {
                    out.push(frame.to_vec());
                    rest = &rest[padded..];
                }
                Err(_) => break,
            }
        }
        out
    }
}

/// A drop rule for UDP datagrams: `(up, device index, datagram bytes) -> drop?`, applied when a
/// datagram is sent, before the random faults.
pub type DropRule = Box<dyn FnMut(bool, Option<usize>, &[u8]) -> bool>;

/// What the gateway-side test application saw.
#[derive(Debug, Default)]
pub struct AppLog {
    /// Application bodies received per session id, in arrival order.
    pub received: HashMap<u64, Vec<Vec<u8>>>,
    /// Echo replies successfully queued per session id, in order.
    pub echoed: HashMap<u64, Vec<Vec<u8>>>,
    /// Echo replies refused (backpressure, not active).
    pub echo_failures: u64,
    pub logons: usize,
}

/// The gateway's application in simulations: records what arrives, echoes type T in 100..=199
/// as T + 100 (like the built-in `echo`), and optionally pushes type 300 to every session.
pub struct SimApp {
    pub log: std::rc::Rc<std::cell::RefCell<AppLog>>,
    pub ids: std::rc::Rc<std::cell::RefCell<HashMap<SessionHandle, u64>>>,
    pub feed_every: Option<Duration>,
    pub feed_next: Timestamp,
    pub feed_counter: u64,
}

impl Application for SimApp {
    fn on_message(&mut self, _now: Timestamp, msg: AppMessage<'_>, out: &mut Outbox<'_>) {
        let id = self.ids.borrow().get(&msg.session).copied().unwrap_or(0);
        self.log.borrow_mut().received.entry(id).or_default().push(msg.body.to_vec());
        let mut log = self.log.borrow_mut();
        match crate::apps::Echo::answer(msg, out) {
            Some(Ok(_)) => log.echoed.entry(id).or_default().push(msg.body.to_vec()),
            Some(Err(_)) => log.echo_failures += 1,
            None => {}
        }
    }

    fn on_logon(&mut self, _now: Timestamp, _s: SessionHandle, _out: &mut Outbox<'_>) {
        self.log.borrow_mut().logons += 1;
    }

    fn poll_timeout(&self) -> Option<Timestamp> {
        self.feed_every.map(|_| self.feed_next)
    }

    fn handle_timeout(&mut self, now: Timestamp, out: &mut Outbox<'_>) {
        if let Some(every) = self.feed_every {
            self.feed_counter += 1;
            let body = self.feed_counter.to_le_bytes();
            out.broadcast(300, &body);
            self.feed_next = now + every;
        }
    }
}

/// One simulated device and what it observed.
pub struct SimDevice {
    pub dev: Device,
    pub addr: SocketAddr,
    pub transport: Transport,
    pub conn: Option<ConnId>,
    pub deframer: Deframer,
    /// Events, as owned copies: (kind, seq, type_id, body).
    pub events: Vec<Ev>,
    pub nonce: u64,
}

impl SimDevice {
    /// Records the device's pending events.
    fn take_events(&mut self) {
        while let Some(e) = self.dev.poll_event() {
            self.events.push(Ev::from(e));
        }
    }
}

/// An owned copy of a [`DeviceEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ev {
    Registered { session_id: u64, resumed: bool },
    LoggedOn { last_processed: i64 },
    StreamReset,
    App { seq: i64, type_id: u16, body: Vec<u8>, resent: bool },
    Rejected { ref_seq_num: i64, reason: u8 },
    Ended { text: String },
}

impl Ev {
    fn from(e: DeviceEvent<'_>) -> Self {
        match e {
            DeviceEvent::Registered { session_id, resumed } => {
                Self::Registered { session_id, resumed }
            }
            DeviceEvent::LoggedOn { last_processed, .. } => Self::LoggedOn { last_processed },
            DeviceEvent::StreamReset { .. } => Self::StreamReset,
            DeviceEvent::App { seq, type_id, body, resent, .. } => {
                Self::App { seq, type_id, body: body.to_vec(), resent }
            }
            DeviceEvent::Rejected { ref_seq_num, reason } => Self::Rejected { ref_seq_num, reason },
            DeviceEvent::Ended { text, .. } => {
                Self::Ended { text: String::from_utf8_lossy(text).into_owned() }
            }
        }
    }
}

/// A gateway, its handshake port and devices on one simulated network.
pub struct Net {
    pub now: Timestamp,
    pub rng: Rng,
    pub gateway: Endpoint,
    pub key: CookieKey,
    pub hs: HandshakeConfig,
    pub devices: Vec<SimDevice>,
    pub faults_up: Faults,
    pub faults_down: Faults,
    /// Blackhole windows: everything sent inside is lost (both directions, UDP).
    pub blackholes: Vec<(Timestamp, Timestamp)>,
    pub app_log: std::rc::Rc<std::cell::RefCell<AppLog>>,
    pub app_ids: std::rc::Rc<std::cell::RefCell<HashMap<SessionHandle, u64>>>,
    /// Record every delivery in `captured`.
    pub capture: bool,
    pub captured: Vec<Captured>,
    /// Targeted drops on top of the random faults (UDP only; TCP is reliable).
    pub drop_rule: Option<DropRule>,
    queue: BTreeMap<(Timestamp, u64), Packet>,
    packet_seq: u64,
    tcp_next: u32,
    tcp_owner: HashMap<u32, usize>,
    tcp_deframers: HashMap<u32, (Deframer, bool)>,
    tcp_last: HashMap<(u32, bool), Timestamp>,
    pub stats: NetStats,
    buf: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct NetStats {
    pub resends_served: u64,
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub corrupted: u64,
}

impl Net {
    pub fn new(seed: u64, cfg: EndpointConfig) -> Self {
        Self::with_app(seed, cfg, None)
    }

    pub fn with_app(seed: u64, cfg: EndpointConfig, feed_every: Option<Duration>) -> Self {
        Self::build(seed, cfg, feed_every, Box::new(OpenLogon))
    }

    /// A network whose gateway checks credentials with `auth`.
    pub fn with_auth(seed: u64, cfg: EndpointConfig, auth: Box<dyn Authenticator>) -> Self {
        Self::build(seed, cfg, None, auth)
    }

    fn build(
        seed: u64,
        cfg: EndpointConfig,
        feed_every: Option<Duration>,
        auth: Box<dyn Authenticator>,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let key = CookieKey(rng.next_u64().to_le_bytes().repeat(4).try_into().unwrap());
        let keys = CookieKeys { current: key, previous: None };
        let app_log = std::rc::Rc::new(std::cell::RefCell::new(AppLog::default()));
        let app_ids = std::rc::Rc::new(std::cell::RefCell::new(HashMap::new()));
        let app = SimApp {
            log: app_log.clone(),
            ids: app_ids.clone(),
            feed_every,
            feed_next: Timestamp::from_nanos(1_000_000_000),
            feed_counter: 0,
        };
        let gateway = Endpoint::new(cfg, keys, [9; 32], auth, Box::new(app));
        Self {
            now: Timestamp::from_nanos(1_000_000_000),
            rng,
            gateway,
            key,
            hs: HandshakeConfig {
                shards: 1,
                session_port_base: SESSION_PORT,
                cookie_ttl: Duration::from_secs(5),
            },
            devices: Vec::new(),
            faults_up: Faults::NONE,
            faults_down: Faults::NONE,
            blackholes: Vec::new(),
            app_log,
            app_ids,
            capture: false,
            captured: Vec::new(),
            drop_rule: None,
            queue: BTreeMap::new(),
            packet_seq: 0,
            tcp_next: 0,
            tcp_owner: HashMap::new(),
            tcp_deframers: HashMap::new(),
            tcp_last: HashMap::new(),
            stats: NetStats::default(),
            buf: vec![0; 65_536],
        }
    }

    /// Adds a device; returns its index.
    pub fn add_device(&mut self, cfg: DeviceConfig) -> usize {
        let i = self.devices.len();
        let addr = SocketAddr::from((
            [10, (i / 250 / 250) as u8, (i / 250 % 250) as u8, (i % 250 + 1) as u8],
            3771,
        ));
        let mut dev = Device::new(cfg);
        dev.set_device_config(SIM_DEVICE_CONFIG);
        self.devices.push(SimDevice {
            dev,
            addr,
            transport: cfg.transport,
            conn: None,
            deframer: Deframer::new(64 * 1024),
            events: Vec::new(),
            nonce: 0,
        });
        i
    }

    /// Starts (or restarts, keeping its state for a resume) device `i`'s session.
    pub fn connect(&mut self, i: usize, reset: bool) {
        let nonce = self.rng.next_u64();
        self.devices[i].nonce = nonce;
        if self.devices[i].transport == Transport::Tcp {
            self.open_tcp(i);
        }
        self.devices[i].dev.connect(self.now, nonce, reset);
    }

    /// Opens a new TCP connection for device `i` (dropping its previous one on the device side
    /// only) without starting the device: raw bytes can then be written with `inject_tcp`.
    pub fn open_tcp(&mut self, i: usize) -> ConnId {
        let d = &mut self.devices[i];
        if let Some(conn) = d.conn.take() {
            self.tcp_owner.remove(&conn.0);
        }
        let conn = ConnId(self.tcp_next);
        self.tcp_next += 1;
        self.tcp_owner.insert(conn.0, i);
        self.tcp_deframers.insert(conn.0, (Deframer::new(64 * 1024), false));
        d.deframer.reset();
        d.conn = Some(conn);
        conn
    }

    /// Writes raw bytes on device `i`'s TCP connection, in stream order after what it sent.
    pub fn inject_tcp(&mut self, i: usize, data: &[u8]) {
        let conn = self.devices[i].conn.expect("device has no TCP connection");
        self.send_tcp(i, conn, data, true);
    }

    /// Like [`Self::inject_tcp`], delivered at `at` (or later, to keep the stream in order):
    /// several connections' bytes can be made to arrive in the same input batch.
    pub fn inject_tcp_at(&mut self, i: usize, data: &[u8], at: Timestamp) {
        let conn = self.devices[i].conn.expect("device has no TCP connection");
        let last = self.tcp_last.get(&(conn.0, true)).copied().unwrap_or(Timestamp::ZERO);
        let at = at.max(last).max(self.now);
        self.tcp_last.insert((conn.0, true), at);
        self.enqueue(at, Packet::TcpToGateway { dev: i, conn, data: data.to_vec() });
    }

    /// Delivers a raw datagram from `from` to `to` after the minimum delay, bypassing every
    /// fault. The answers (if any) are captured with `dev` = the device at `from`, if one.
    pub fn inject_udp(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        let at = self.now + Faults::NONE.delay_min;
        self.enqueue(at, Packet::Udp { from, to, data: data.to_vec() });
    }

    /// A gateway counter.
    pub fn count(&self, c: Counter) -> u64 {
        self.gateway.counters().get(c)
    }

    /// The gateway's row for the session with this id.
    pub fn session_info(&self, id: u64) -> Option<SessionInfo> {
        self.gateway.sessions().find(|s| s.id == id)
    }

    fn device_at(&self, addr: SocketAddr) -> Option<usize> {
        self.devices.iter().position(|d| d.addr == addr)
    }

    fn record(&mut self, up: bool, dev: Option<usize>, path: Path, data: &[u8], dropped: bool) {
        // An empty TCP chunk is the simulation's close marker, not data; an empty datagram is
        // a datagram.
        if self.capture && (!data.is_empty() || matches!(path, Path::Udp { .. })) {
            let at = self.now;
            self.captured.push(Captured { at, up, dev, path, data: data.to_vec(), dropped });
        }
    }

    /// Moves a UDP device to a new source port (roaming).
    pub fn roam(&mut self, i: usize) {
        let d = &mut self.devices[i];
        d.addr.set_port(d.addr.port().wrapping_add(1).max(1024));
    }

    /// Cuts device `i`'s TCP connection: both ends see the close.
    pub fn cut_tcp(&mut self, i: usize) {
        if let Some(conn) = self.devices[i].conn.take() {
            self.tcp_owner.remove(&conn.0);
            self.gateway.handle_tcp_closed(self.now, conn);
            self.devices[i].dev.transport_lost();
        }
    }

    fn in_blackhole(&self, t: Timestamp) -> bool {
        self.blackholes.iter().any(|&(a, b)| t >= a && t < b)
    }

    fn enqueue(&mut self, at: Timestamp, p: Packet) {
        self.packet_seq += 1;
        self.queue.insert((at, self.packet_seq), p);
    }

    fn send_udp(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8], up: bool) {
        self.stats.sent += 1;
        let f = if up { self.faults_up } else { self.faults_down };
        let dev = self.device_at(if up { from } else { to });
        let ruled = self.drop_rule.as_mut().is_some_and(|r| r(up, dev, data));
        if ruled || self.in_blackhole(self.now) || self.rng.chance(f.loss) {
            self.stats.lost += 1;
            self.record(up, dev, Path::Udp { from, to }, data, true);
            return;
        }
        let copies = if self.rng.chance(f.duplicate) { 2 } else { 1 };
        self.stats.duplicated += copies - 1;
        for _ in 0..copies {
            let mut data = data.to_vec();
            if self.rng.chance(f.corrupt) && !data.is_empty() {
                // Flip a bit of the session id prefix or the first protocol id: the wire format
                // has no checksum of its own (UDP's catches payload damage), so only damage it
                // is bound to notice is simulated; it exercises the drop-and-count paths.
                let at = self.rng.below(data.len().min(9) as u64) as usize;
                data[at] ^= 1 << self.rng.below(8);
                self.stats.corrupted += 1;
            }
            let jitter =
                if f.jitter.is_zero() { 0 } else { self.rng.below(f.jitter.as_nanos() as u64) };
            let at = self.now + f.delay_min + Duration::from_nanos(jitter);
            self.enqueue(at, Packet::Udp { from, to, data });
        }
    }

    fn send_tcp(&mut self, dev: usize, conn: ConnId, data: &[u8], up: bool) {
        // In order: never before the previous segment of the same direction.
        let delay = Duration::from_micros(100 + self.rng.below(400));
        let last = self.tcp_last.get(&(conn.0, up)).copied().unwrap_or(Timestamp::ZERO);
        let at = (self.now + delay).max(last);
        self.tcp_last.insert((conn.0, up), at);
        let data = data.to_vec();
        let p = if up {
            Packet::TcpToGateway { dev, conn, data }
        } else {
            Packet::TcpToDevice { dev, conn, data }
        };
        self.enqueue(at, p);
    }

    /// Sends everything every party wants to send now.
    pub fn flush(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        for _ in 0..100_000 {
            let mut any = false;
            while let Some(t) = self.gateway.poll_transmit(self.now, &mut buf) {
                any = true;
                match t.dest {
                    Link::Udp(to) => self.send_udp(SESSION, to, &buf[..t.len], false),
                    Link::Tcp(conn) => {
                        if let Some(&dev) = self.tcp_owner.get(&conn.0) {
                            self.send_tcp(dev, conn, &buf[..t.len], false);
                        }
                    }
                    Link::None => {}
                }
            }
            while let Some(ev) = self.gateway.poll_event() {
                match ev {
                    EndpointEvent::CloseConnection(conn) => {
                        // Deliver what is in flight first, then close: queue a close marker.
                        if let Some(&dev) = self.tcp_owner.get(&conn.0) {
                            self.send_tcp(dev, conn, &[], false);
                        }
                    }
                    EndpointEvent::LoggedOn(h) => {
                        if let Some(s) = self.gateway.session(h) {
                            self.app_ids.borrow_mut().insert(h, s.id());
                        }
                    }
                    EndpointEvent::Ended(..) => {}
                    EndpointEvent::ResendServed(_) => self.stats.resends_served += 1,
                    // The simulated stream has unlimited room.
                    EndpointEvent::SlowReader(_) => {}
                }
            }
            for i in 0..self.devices.len() {
                loop {
                    let d = &mut self.devices[i];
                    let Some(t) = d.dev.poll_transmit(self.now, &mut buf) else { break };
                    any = true;
                    let from = d.addr;
                    match (t.dest, d.conn) {
                        (DeviceDest::Handshake, _) => {
                            self.send_udp(from, HANDSHAKE, &buf[..t.len], true)
                        }
                        (DeviceDest::SessionPort(p), _) => {
                            let to = SocketAddr::new(SESSION.ip(), p);
                            self.send_udp(from, to, &buf[..t.len], true);
                        }
                        (DeviceDest::Stream, Some(conn)) => {
                            self.send_tcp(i, conn, &buf[..t.len], true)
                        }
                        (DeviceDest::Stream, None) => {}
                    }
                }
            }
            if !any {
                break;
            }
        }
        self.buf = buf;
    }

    fn deliver(&mut self, p: Packet) {
        let mut buf = std::mem::take(&mut self.buf);
        match p {
            Packet::Udp { from, to, data } => {
                let up = to.ip() == SESSION.ip();
                let dev = self.device_at(if up { from } else { to });
                self.record(up, dev, Path::Udp { from, to }, &data, false);
                if to == HANDSHAKE {
                    let out = answer_connection_request(
                        &self.hs, &self.key, self.now, from, &data, None, &mut buf,
                    );
                    if let HandshakeOutcome::Accepted { len, .. }
                    | HandshakeOutcome::Rejected { len, .. } = out
                    {
                        let reply = buf[..len].to_vec();
                        self.send_udp(HANDSHAKE, from, &reply, false);
                    }
                } else if to.ip() == SESSION.ip() {
                    if to.port() == SESSION_PORT {
                        self.gateway.handle_datagram(self.now, from, &data);
                    }
                } else if let Some(i) = dev {
                    let d = &mut self.devices[i];
                    d.dev.handle_datagram(self.now, &data);
                    d.take_events();
                }
            }
            Packet::TcpToGateway { dev, conn, data } => {
                if self.tcp_owner.get(&conn.0) != Some(&dev) {
                    self.buf = buf;
                    return;
                }
                self.record(true, Some(dev), Path::Tcp { conn }, &data, false);
                if let Some((deframer, _)) = self.tcp_deframers.get_mut(&conn.0) {
                    deframer.push(&data);
                }
                while let Some((deframer, started)) = self.tcp_deframers.get_mut(&conn.0) {
                    let frame = match deframer.next_frame() {
                        Ok(Some(f)) => f.to_vec(),
                        Ok(None) => break,
                        Err(e) => {
                            self.gateway.handle_tcp_error(self.now, conn, e);
                            break;
                        }
                    };
                    let first = !*started;
                    *started = true;
                    if first {
                        self.gateway.handle_tcp_logon(
                            self.now,
                            conn,
                            self.devices[dev].addr,
                            &frame,
                        );
                    } else {
                        self.gateway.handle_tcp_frame(self.now, conn, &frame);
                    }
                    if !self.tcp_owner.contains_key(&conn.0) {
                        break;
                    }
                }
            }
            Packet::TcpToDevice { dev, conn, data } => {
                let d = &mut self.devices[dev];
                if d.conn != Some(conn) {
                    self.buf = buf;
                    return;
                }
                self.record(false, Some(dev), Path::Tcp { conn }, &data, false);
                let d = &mut self.devices[dev];
                if data.is_empty() {
                    // The gateway closed the connection.
                    d.conn = None;
                    d.dev.transport_lost();
                    self.tcp_owner.remove(&conn.0);
                    self.gateway.handle_tcp_closed(self.now, conn);
                } else {
                    d.deframer.push(&data);
                    while let Ok(Some(frame)) = d.deframer.next_frame() {
                        d.dev.handle_frame(self.now, frame);
                        while let Some(e) = d.dev.poll_event() {
                            d.events.push(Ev::from(e));
                        }
                    }
                }
            }
        }
        self.buf = buf;
    }

    /// The next time anything happens.
    fn next_time(&self) -> Option<Timestamp> {
        let q = self.queue.keys().next().map(|&(t, _)| t);
        let g = self.gateway.poll_timeout();
        let d = self.devices.iter().filter_map(|d| d.dev.poll_timeout()).min();
        [q, g, d].into_iter().flatten().min()
    }

    /// Runs until `until` (virtual time).
    pub fn run_until(&mut self, until: Timestamp) {
        self.flush();
        let mut stuck = 0u32;
        while let Some(t) = self.next_time() {
            if t > until {
                break;
            }
            if t <= self.now {
                stuck += 1;
                assert!(
                    stuck < 10_000,
                    "simulation stuck at {:?}: gateway deadline {:?}, device deadlines {:?}",
                    self.now,
                    self.gateway.poll_timeout(),
                    self.devices
                        .iter()
                        .map(|d| (d.dev.state(), d.dev.poll_timeout()))
                        .collect::<Vec<_>>()
                );
            } else {
                stuck = 0;
            }
            self.now = self.now.max(t);
            while let Some(entry) = self.queue.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let p = entry.remove();
                self.deliver(p);
            }
            self.gateway.handle_timeout(self.now);
            for d in &mut self.devices {
                d.dev.handle_timeout(self.now);
                d.take_events();
            }
            self.flush();
        }
        self.now = self.now.max(until);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Application messages device `i` received, in order.
    pub fn device_app(&self, i: usize) -> Vec<(i64, u16, Vec<u8>)> {
        self.devices[i]
            .events
            .iter()
            .filter_map(|e| match e {
                Ev::App { seq, type_id, body, .. } => Some((*seq, *type_id, body.clone())),
                _ => None,
            })
            .collect()
    }

    /// Application bodies the gateway received from device `i`'s session.
    pub fn gateway_app(&self, i: usize) -> Vec<Vec<u8>> {
        let id = self.session_id_of(i);
        self.app_log.borrow().received.get(&id).cloned().unwrap_or_default()
    }

    /// Echo replies the gateway queued for device `i`'s session.
    pub fn gateway_echoed(&self, i: usize) -> Vec<Vec<u8>> {
        let id = self.session_id_of(i);
        self.app_log.borrow().echoed.get(&id).cloned().unwrap_or_default()
    }

    /// The gateway session id serving device `i` (UDP: from the handshake; TCP: by username).
    pub fn session_id_of(&self, i: usize) -> u64 {
        let id = self.devices[i].dev.session_id();
        if id != 0 { id } else { self.tcp_session_id(i) }
    }

    fn tcp_session_id(&self, i: usize) -> u64 {
        let user = self.devices[i].dev.config().username.as_bytes().to_vec();
        self.gateway.sessions().find(|s| s.username.as_bytes() == user).map_or(0, |s| s.id)
    }

    /// True if device `i` saw a LoggedOut or another end.
    pub fn device_ended(&self, i: usize) -> Option<String> {
        self.devices[i].events.iter().rev().find_map(|e| match e {
            Ev::Ended { text } => Some(text.clone()),
            _ => None,
        })
    }
}

/// Endpoint settings for simulations: small, with a journal large enough for the runs.
pub fn sim_config() -> EndpointConfig {
    let mut cfg =
        EndpointConfig { max_sessions: 64, max_connections: 256, ..EndpointConfig::default() };
    cfg.session.journal.messages_per_session = 512;
    cfg
}
