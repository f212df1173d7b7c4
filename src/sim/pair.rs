//! [`Pair`]: one gateway [`Endpoint`] and a few [`Device`]s (each over UDP, after the full
//! handshake, or TCP), wired together through buffers allocated up front (quinn-proto's
//! `tests/util.rs` `Pair`). Virtual time; no network model, no sockets, and no allocation once
//! warm, so the no-allocation proof (`tests/no_alloc.rs`) and the benches drive it.
//!
//! The handshake port is answered inline with `answer_connection_request`. Faults are explicit
//! drops ([`Peer::drop_up`], [`Peer::drop_down`]) and connection cuts ([`Pair::cut`]); for
//! seeded loss, duplication, reordering and delay use [`super::Net`], which copies every packet.

use std::net::SocketAddr;
use std::time::Duration;

use crate::apps::Echo;
use crate::protocol::{Body, Deframer, Header, Message, write_prefix};
use crate::session::handshake::{
    CookieKey, CookieKeys, HandshakeConfig, HandshakeOutcome, answer_connection_request,
};
use crate::session::{
    Application, ConnId, Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, Endpoint,
    EndpointConfig, EndpointEvent, Link, OpenLogon, SessionHandle, Transport,
};
use crate::time::Timestamp;

/// Splits `bytes` into frames through `d`, calling `on_frame` for each whole one (a stream
/// chunk may end inside a frame; the rest waits in `d`).
pub fn feed(d: &mut Deframer, mut bytes: &[u8], mut on_frame: impl FnMut(&[u8])) {
    loop {
        let n = d.push(bytes);
        bytes = &bytes[n..];
        let mut frames = 0;
        while let Some(frame) = d.next_frame().expect("stream framing") {
            on_frame(frame);
            frames += 1;
        }
        if bytes.is_empty() {
            return;
        }
        assert!(n > 0 || frames > 0, "deframer stuck");
    }
}

/// Sees every event of one device as it happens (checks that must not allocate or panic go
/// here).
pub trait Watch {
    /// One device event.
    fn on_event(&mut self, e: DeviceEvent<'_>);
}

impl Watch for () {
    fn on_event(&mut self, _: DeviceEvent<'_>) {}
}

/// One device of a [`Pair`] and what the pair does with its traffic.
pub struct Peer<W> {
    /// The device state machine.
    pub dev: Device,
    /// Its observer.
    pub watch: W,
    /// Its session on the gateway, once logged on.
    pub handle: Option<SessionHandle>,
    /// Its address (10.0.0.n:3771).
    pub addr: SocketAddr,
    /// Application messages it received.
    pub received: u64,
    /// Drop every gateway output to it (UDP datagrams; TCP bytes, lost with the connection).
    pub drop_down: bool,
    /// Drop every datagram it sends to the session port (UDP only).
    pub drop_up: bool,
    transport: Transport,
    conn: ConnId,
    /// Gateway side of the stream.
    gw_deframer: Deframer,
    /// The LogonRequest (first frame) has been handed to `handle_tcp_logon`.
    gw_started: bool,
    /// Device side of the stream.
    dev_deframer: Deframer,
}

impl<W: Watch> Peer<W> {
    /// Hands the device's pending events to the watch, counting application messages.
    fn see_all(dev: &mut Device, received: &mut u64, watch: &mut W) {
        while let Some(e) = dev.poll_event() {
            if let DeviceEvent::App { .. } = e {
                *received += 1;
            }
            watch.on_event(e);
        }
    }

    fn take_events(&mut self) {
        Self::see_all(&mut self.dev, &mut self.received, &mut self.watch);
    }
}

/// A gateway endpoint and its devices (see the module docs).
pub struct Pair<W = ()> {
    /// Virtual time.
    pub now: Timestamp,
    /// The gateway.
    pub ep: Endpoint,
    /// The devices, in the order added.
    pub peers: Vec<Peer<W>>,
    /// Buffers dropped on purpose ([`Peer::drop_up`], [`Peer::drop_down`]).
    pub dropped: u64,
    /// What should not happen: gateway output with no device to go to, device output to a
    /// foreign port, `CloseConnection` and `Ended` events, logons of unknown users.
    pub surprises: u64,
    /// Gateway output discarded by [`Pair::drain_gateway`]`(false)`, in bytes.
    pub discarded_bytes: u64,
    hs: HandshakeConfig,
    key: CookieKey,
    next_nonce: u64,
    next_conn: u32,
    gw_buf: Box<[u8]>,
    dev_buf: Box<[u8]>,
    hs_buf: Box<[u8]>,
}

impl Pair<()> {
    /// An echo gateway with one device logged on over `transport`; the gateway journal keeps
    /// `journal_messages` application messages per session.
    pub fn logged_on(transport: Transport, journal_messages: usize) -> Self {
        let mut cfg =
            EndpointConfig { max_sessions: 4, max_connections: 16, ..EndpointConfig::default() };
        cfg.session.journal.messages_per_session = journal_messages;
        cfg.session.validate().expect("session config");
        let mut pair = Self::new(cfg, Box::new(Echo));
        pair.add(DeviceConfig::new(transport, b"PDT9090-0001", b"bench-device", b"secret"), ());
        pair.connect_all();
        pair
    }
}

impl<W: Watch> Pair<W> {
    /// A gateway with `cfg` and `app` (open logon), and no device yet.
    pub fn new(cfg: EndpointConfig, app: Box<dyn Application>) -> Self {
        let key = CookieKey([0x5a; 32]);
        let keys = CookieKeys { current: key, previous: None };
        Self {
            now: Timestamp::from_nanos(START_NS),
            ep: Endpoint::new(cfg, keys, [9; 32], Box::new(OpenLogon), app),
            peers: Vec::new(),
            dropped: 0,
            surprises: 0,
            discarded_bytes: 0,
            hs: HandshakeConfig {
                shards: 1,
                session_port_base: SESSION_PORT,
                cookie_ttl: Duration::from_secs(5),
            },
            key,
            next_nonce: 1,
            next_conn: 0,
            gw_buf: vec![0; 16 * 1024].into_boxed_slice(),
            dev_buf: vec![0; 16 * 1024].into_boxed_slice(),
            hs_buf: vec![0; 2048].into_boxed_slice(),
        }
    }

    /// Adds a device (not connected) at the next address; returns its index.
    pub fn add(&mut self, cfg: DeviceConfig, watch: W) -> usize {
        let i = self.peers.len();
        let mut dev = Device::new(cfg);
        dev.set_device_config(DEVICE_CONFIG);
        self.peers.push(Peer {
            dev,
            watch,
            handle: None,
            addr: SocketAddr::from(([10, 0, 0, i as u8 + 1], 3771)),
            received: 0,
            drop_down: false,
            drop_up: false,
            transport: cfg.transport,
            conn: ConnId(0),
            gw_deframer: Deframer::new(64 * 1024),
            gw_started: false,
            dev_deframer: Deframer::new(64 * 1024),
        });
        i
    }

    /// Connects every device with a fresh session and moves traffic until nobody has anything
    /// to send; every device must then be logged on.
    pub fn connect_all(&mut self) {
        for i in 0..self.peers.len() {
            self.connect(i, true);
        }
        self.pump();
        for (i, p) in self.peers.iter().enumerate() {
            assert_eq!(p.dev.state(), DeviceState::Active, "device {i} logged on");
            assert!(p.handle.is_some(), "device {i}: LoggedOn event");
        }
    }

    /// Starts device `i`'s session (`reset`: a new one; else a resume), over a new connection
    /// if it is a TCP device. Nothing moves until the next [`Pair::step`].
    pub fn connect(&mut self, i: usize, reset: bool) {
        self.next_nonce += 1;
        let (now, nonce) = (self.now, self.next_nonce);
        let p = &mut self.peers[i];
        if p.transport == Transport::Tcp {
            p.conn = ConnId(self.next_conn);
            self.next_conn += 1;
            p.gw_deframer.reset();
            p.gw_started = false;
            p.dev_deframer.reset();
        }
        p.dev.connect(now, nonce, reset);
    }

    /// Cuts TCP device `i`'s connection: both ends see it close.
    pub fn cut(&mut self, i: usize) {
        let p = &mut self.peers[i];
        self.ep.handle_tcp_closed(self.now, p.conn);
        p.dev.transport_lost();
    }

    /// Moves everything every party wants to send until nobody wants to send anything.
    pub fn pump(&mut self) {
        for _ in 0..100_000 {
            if !self.step() {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// One round: every device's output to the gateway, the gateway's output to the devices,
    /// the gateway's events. True if anything was sent.
    pub fn step(&mut self) -> bool {
        let any = self.drain_devices();
        let sent = self.drain_gateway(true);
        self.drain_events();
        any || sent > 0
    }

    /// Sends everything the devices have to send; true if there was anything.
    pub fn drain_devices(&mut self) -> bool {
        let now = self.now;
        let mut any = false;
        for p in &mut self.peers {
            while let Some(t) = p.dev.poll_transmit(now, &mut self.dev_buf) {
                any = true;
                let data = &self.dev_buf[..t.len];
                match t.dest {
                    DeviceDest::Handshake => {
                        let out = answer_connection_request(
                            &self.hs,
                            &self.key,
                            now,
                            p.addr,
                            data,
                            None,
                            &mut self.hs_buf,
                        );
                        if let HandshakeOutcome::Accepted { len, .. }
                        | HandshakeOutcome::Rejected { len, .. } = out
                        {
                            p.dev.handle_datagram(now, &self.hs_buf[..len]);
                            p.take_events();
                        }
                    }
                    DeviceDest::SessionPort(SESSION_PORT) if p.drop_up => self.dropped += 1,
                    DeviceDest::SessionPort(SESSION_PORT) => {
                        self.ep.handle_datagram(now, p.addr, data);
                    }
                    DeviceDest::Stream if p.transport == Transport::Tcp => {
                        let (ep, started, conn, addr) =
                            (&mut self.ep, &mut p.gw_started, p.conn, p.addr);
                        feed(&mut p.gw_deframer, data, |frame| {
                            if *started {
                                ep.handle_tcp_frame(now, conn, frame);
                            } else {
                                *started = true;
                                ep.handle_tcp_logon(now, conn, addr, frame);
                            }
                        });
                    }
                    DeviceDest::SessionPort(_) | DeviceDest::Stream => self.surprises += 1,
                }
            }
        }
        any
    }

    /// Polls the gateway until it has nothing to send; hands the output to its device if
    /// `deliver`, else discards it (counting its bytes). Returns the buffers sent.
    pub fn drain_gateway(&mut self, deliver: bool) -> usize {
        let now = self.now;
        let mut n = 0;
        while let Some(t) = self.ep.poll_transmit(now, &mut self.gw_buf) {
            n += 1;
            let data = &self.gw_buf[..t.len];
            if !deliver {
                self.discarded_bytes += t.len as u64;
                continue;
            }
            let to = self.peers.iter_mut().find(|p| match t.dest {
                Link::Udp(to) => p.transport == Transport::Udp && p.addr == to,
                Link::Tcp(c) => p.transport == Transport::Tcp && p.conn == c,
                Link::None => false,
            });
            let Some(p) = to else {
                self.surprises += 1;
                continue;
            };
            if p.drop_down {
                self.dropped += 1;
                continue;
            }
            match p.transport {
                Transport::Udp => {
                    p.dev.handle_datagram(now, data);
                    p.take_events();
                }
                Transport::Tcp => {
                    let (dev, received, watch) = (&mut p.dev, &mut p.received, &mut p.watch);
                    feed(&mut p.dev_deframer, data, |frame| {
                        dev.handle_frame(now, frame);
                        Peer::see_all(dev, received, watch);
                    });
                }
            }
        }
        n
    }

    /// Takes the gateway's events: a logon sets its device's [`Peer::handle`].
    pub fn drain_events(&mut self) {
        while let Some(ev) = self.ep.poll_event() {
            match ev {
                EndpointEvent::LoggedOn(h) => {
                    let user = self.ep.session(h).map(|s| *s.username());
                    let peer = self.peers.iter_mut().find(|p| {
                        user.is_some_and(|u| u.as_bytes() == p.dev.config().username.as_bytes())
                    });
                    match peer {
                        Some(p) => p.handle = Some(h),
                        None => self.surprises += 1,
                    }
                }
                EndpointEvent::CloseConnection(_) | EndpointEvent::Ended(..) => {
                    self.surprises += 1;
                }
                EndpointEvent::ResendServed(_) | EndpointEvent::SlowReader(_) => {}
            }
        }
    }

    /// Fires the gateway's and the devices' timers if due.
    pub fn fire_timers(&mut self) {
        let now = self.now;
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
        for p in &mut self.peers {
            if p.dev.poll_timeout().is_some_and(|t| t <= now) {
                p.dev.handle_timeout(now);
                p.take_events();
            }
        }
    }

    /// Moves time on by `d`, fires due timers and lets everyone send everything.
    pub fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.fire_timers();
        self.pump();
    }

    /// One application round trip of device 0: it sends type 101, its datagram (or stream
    /// chunk) goes to the gateway, the echo application answers 201, the gateway's output goes
    /// to the device. Time moves on by `step` first, and due timers fire.
    #[inline]
    pub fn round_trip(&mut self, step: Duration, body: &[u8]) {
        self.now = self.now + step;
        self.fire_timers();
        self.peers[0].dev.send_app(self.now, 101, body, false).expect("device send");
        self.drain_devices();
        self.drain_gateway(true);
    }

    /// Device 0's session on the gateway.
    pub fn handle(&self) -> SessionHandle {
        self.peers[0].handle.expect("logged on")
    }

    /// Device 0's state machine.
    pub fn dev(&self) -> &Device {
        &self.peers[0].dev
    }

    /// Application messages device 0 received.
    pub fn received(&self) -> u64 {
        self.peers[0].received
    }

    /// Encodes a sequenced message from device 0's side, numbered `seq`, into `out` (with the
    /// session id prefix on UDP); returns its length. For benches that stand in for the device
    /// after set-up.
    pub fn encode_up(&self, seq: i64, body: Body<'_>, out: &mut [u8]) -> usize {
        let p = &self.peers[0];
        let start = match p.transport {
            Transport::Udp => write_prefix(out, p.dev.session_id()),
            Transport::Tcp => 0,
        };
        let msg = Message {
            header: Header {
                seq,
                last_processed: p.dev.expected_in() - 1,
                send_time: self.now.as_nanos() as i64,
                ..Header::default()
            },
            body,
        };
        start + msg.encode(&mut out[start..]).expect("encode")
    }

    /// Hands bytes made by [`Pair::encode_up`] to the gateway (a datagram, or one TCP frame).
    pub fn gateway_input(&mut self, bytes: &[u8]) {
        let p = &self.peers[0];
        match p.transport {
            Transport::Udp => self.ep.handle_datagram(self.now, p.addr, bytes),
            Transport::Tcp => self.ep.handle_tcp_frame(self.now, p.conn, bytes),
        }
    }
}

/// Virtual start time: one second.
const START_NS: u64 = 1_000_000_000;
const SESSION_PORT: u16 = 5000;
/// The device config every device sends (the seed's example).
const DEVICE_CONFIG: &[u8] = super::SIM_DEVICE_CONFIG;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counters::Counter;

    #[test]
    fn both_transports_log_on_and_echo() {
        for transport in [Transport::Udp, Transport::Tcp] {
            let mut pair = Pair::logged_on(transport, 64);
            for i in 0..10u8 {
                pair.round_trip(Duration::from_millis(1), &[i; 16]);
            }
            assert_eq!(pair.received(), 10, "{transport:?}: echoes delivered");
            assert_eq!(pair.ep.counters().get(Counter::AppMessagesReceived), 10);
            assert_eq!((pair.surprises, pair.dropped), (0, 0));
        }
    }

    #[test]
    fn dropped_replies_come_back_by_resend() {
        let mut pair = Pair::logged_on(Transport::Udp, 64);
        pair.peers[0].drop_down = true;
        let h = pair.handle();
        for i in 0..5u8 {
            pair.ep.send(pair.now, h, 300, &[i; 8]).expect("send");
        }
        pair.pump();
        assert!(pair.dropped > 0);
        pair.peers[0].drop_down = false;
        pair.ep.send(pair.now, h, 300, b"reveals!").expect("send");
        pair.advance(Duration::from_millis(1));
        assert_eq!(pair.received(), 6, "the gap was served from the journal");
        assert_eq!(pair.ep.counters().get(Counter::ResendRequests), 1);
    }
}
