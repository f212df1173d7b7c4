//! Set-up shared by the `session` and `journal` benches: one gateway [`Endpoint`] with an echo
//! application and one logged-on [`Device`] (UDP after the full handshake, or TCP), wired
//! together through buffers allocated up front. Virtual time; nothing here touches a socket.

use std::net::SocketAddr;
use std::time::Duration;

use fleetgate::apps::Echo;
use fleetgate::protocol::{Body, Deframer, Header, Message, write_prefix};
use fleetgate::session::handshake::{
    CookieKey, CookieKeys, HandshakeConfig, HandshakeOutcome, answer_connection_request,
};
use fleetgate::session::{
    ConnId, Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, Endpoint, EndpointConfig,
    EndpointEvent, Link, OpenLogon, SessionHandle, Transport,
};
use fleetgate::time::Timestamp;

/// The device's address.
pub(crate) const PEER: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1)), 3771);
const SESSION_PORT: u16 = 5000;
const DEVICE_CONFIG: &[u8] = b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~";

/// Feeds `bytes` through `d`, calling `on_frame` for every whole frame.
fn feed(d: &mut Deframer, mut bytes: &[u8], mut on_frame: impl FnMut(&[u8])) {
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

/// A gateway endpoint and one logged-on device.
pub(crate) struct Pair {
    /// Virtual time.
    pub(crate) now: Timestamp,
    /// The gateway.
    pub(crate) ep: Endpoint,
    /// The device.
    pub(crate) dev: Device,
    handle: Option<SessionHandle>,
    transport: Transport,
    conn: ConnId,
    gw_deframer: Deframer,
    gw_started: bool,
    dev_deframer: Deframer,
    gw_buf: Box<[u8]>,
    dev_buf: Box<[u8]>,
    /// Application messages the device received.
    pub(crate) received: u64,
    /// Gateway output handed to nobody (see [`Pair::drain_gateway`]).
    pub(crate) discarded_bytes: u64,
}

impl Pair {
    /// Logs a device on over `transport` (UDP: ConnectionRequest through
    /// `answer_connection_request`, registration, config, logon). The gateway journal keeps
    /// `journal_messages` application messages per session.
    pub(crate) fn new(transport: Transport, journal_messages: usize) -> Self {
        let mut cfg =
            EndpointConfig { max_sessions: 4, max_connections: 16, ..EndpointConfig::default() };
        cfg.session.journal.messages_per_session = journal_messages;
        cfg.session.validate().expect("session config");
        let key = CookieKey([0x5a; 32]);
        let keys = CookieKeys { current: key, previous: None };
        let ep = Endpoint::new(cfg, keys, [9; 32], Box::new(OpenLogon), Box::new(Echo));
        let mut dev =
            Device::new(DeviceConfig::new(transport, b"PDT9090-0001", b"bench-device", b"secret"));
        dev.set_device_config(DEVICE_CONFIG);
        let mut pair = Self {
            now: Timestamp::from_nanos(1_000_000_000),
            ep,
            dev,
            handle: None,
            transport,
            conn: ConnId(0),
            gw_deframer: Deframer::new(64 * 1024),
            gw_started: false,
            dev_deframer: Deframer::new(64 * 1024),
            gw_buf: vec![0; 16 * 1024].into_boxed_slice(),
            dev_buf: vec![0; 16 * 1024].into_boxed_slice(),
            received: 0,
            discarded_bytes: 0,
        };
        pair.dev.connect(pair.now, 7, true);
        let hs = HandshakeConfig {
            shards: 1,
            session_port_base: SESSION_PORT,
            cookie_ttl: Duration::from_secs(5),
        };
        let mut hs_buf = [0u8; 256];
        for _ in 0..100 {
            if pair.dev.state() == DeviceState::Active && pair.handle.is_some() {
                break;
            }
            let now = pair.now;
            // The handshake port is not part of the endpoint: answer it here.
            while let Some(t) = pair.dev.poll_transmit(now, &mut pair.dev_buf) {
                if t.dest != DeviceDest::Handshake {
                    pair.deliver_up(t.len);
                    continue;
                }
                let out = answer_connection_request(
                    &hs,
                    &key,
                    now,
                    PEER,
                    &pair.dev_buf[..t.len],
                    None,
                    &mut hs_buf,
                );
                let HandshakeOutcome::Accepted { len, .. } = out else {
                    panic!("handshake: {out:?}");
                };
                pair.dev.handle_datagram(now, &hs_buf[..len], &mut |_| {});
            }
            pair.drain_gateway(true);
            while let Some(ev) = pair.ep.poll_event() {
                if let EndpointEvent::LoggedOn(h) = ev {
                    pair.handle = Some(h);
                }
            }
            pair.advance(Duration::from_millis(1));
        }
        assert_eq!(pair.dev.state(), DeviceState::Active, "device logged on");
        assert!(pair.handle.is_some(), "LoggedOn event");
        pair
    }

    /// The device's session on the gateway.
    pub(crate) fn handle(&self) -> SessionHandle {
        self.handle.expect("logged on")
    }

    /// Hands `self.dev_buf[..len]`, produced by the device, to the gateway.
    fn deliver_up(&mut self, len: usize) {
        let now = self.now;
        match self.transport {
            Transport::Udp => self.ep.handle_datagram(now, PEER, &self.dev_buf[..len]),
            Transport::Tcp => {
                let (ep, started, conn) = (&mut self.ep, &mut self.gw_started, self.conn);
                feed(&mut self.gw_deframer, &self.dev_buf[..len], |frame| {
                    if *started {
                        ep.handle_tcp_frame(now, conn, frame);
                    } else {
                        *started = true;
                        ep.handle_tcp_logon(now, conn, PEER, frame);
                    }
                });
            }
        }
    }

    /// Polls the gateway until it has nothing to send; hands the output to the device if
    /// `deliver`, else discards it (counting its bytes). Returns the buffers sent.
    pub(crate) fn drain_gateway(&mut self, deliver: bool) -> usize {
        let now = self.now;
        let mut n = 0;
        while let Some(t) = self.ep.poll_transmit(now, &mut self.gw_buf) {
            n += 1;
            let data = &self.gw_buf[..t.len];
            if !deliver {
                self.discarded_bytes += t.len as u64;
                continue;
            }
            let (dev, received) = (&mut self.dev, &mut self.received);
            let mut on_event = |e: DeviceEvent<'_>| {
                if let DeviceEvent::App { .. } = e {
                    *received += 1;
                }
            };
            match t.dest {
                Link::Udp(_) => dev.handle_datagram(now, data, &mut on_event),
                Link::Tcp(_) => feed(&mut self.dev_deframer, data, |frame| {
                    dev.handle_frame(now, frame, &mut on_event);
                }),
                Link::None => {}
            }
        }
        n
    }

    /// Sends everything the device has to send to the gateway.
    pub(crate) fn drain_device(&mut self) {
        while let Some(t) = self.dev.poll_transmit(self.now, &mut self.dev_buf) {
            self.deliver_up(t.len);
        }
    }

    /// Fires the gateway's and the device's timers if due.
    pub(crate) fn fire_timers(&mut self) {
        let now = self.now;
        if self.ep.poll_timeout().is_some_and(|t| t <= now) {
            self.ep.handle_timeout(now);
        }
        if self.dev.poll_timeout().is_some_and(|t| t <= now) {
            let received = &mut self.received;
            self.dev.handle_timeout(now, &mut |e| {
                if let DeviceEvent::App { .. } = e {
                    *received += 1;
                }
            });
        }
    }

    /// Moves time on by `d`, fires due timers and lets both sides send everything.
    pub(crate) fn advance(&mut self, d: Duration) {
        self.now = self.now + d;
        self.fire_timers();
        for _ in 0..1000 {
            let before = self.dev.next_out();
            self.drain_device();
            let sent = self.drain_gateway(true);
            if sent == 0 && self.dev.next_out() == before {
                return;
            }
        }
    }

    /// One application round trip: the device sends type 101, its datagram (or stream chunk)
    /// goes to the gateway, the echo application answers 201, the gateway's output goes to the
    /// device. Time moves on by `step` first, and due timers fire.
    #[inline]
    pub(crate) fn round_trip(&mut self, step: Duration, body: &[u8]) {
        self.now = self.now + step;
        self.fire_timers();
        self.dev.send_app(self.now, 101, body, false).expect("device send");
        self.drain_device();
        self.drain_gateway(true);
    }

    /// The device's session id (UDP datagram prefix).
    pub(crate) fn session_id(&self) -> u64 {
        self.dev.session_id()
    }

    /// Encodes a sequenced message from the device's side, numbered `seq`, into `out` (with
    /// the session id prefix on UDP); returns its length. For benches that stand in for the
    /// device after set-up.
    pub(crate) fn encode_up(&self, seq: i64, body: Body<'_>, out: &mut [u8]) -> usize {
        let start = match self.transport {
            Transport::Udp => write_prefix(out, self.session_id()),
            Transport::Tcp => 0,
        };
        let msg = Message {
            header: Header {
                seq,
                last_processed: self.dev.expected_in() - 1,
                send_time: self.now.as_nanos() as i64,
                ..Header::default()
            },
            body,
        };
        start + msg.encode(&mut out[start..]).expect("encode")
    }

    /// Hands bytes made by [`Pair::encode_up`] to the gateway (a datagram, or one TCP frame).
    pub(crate) fn gateway_input(&mut self, bytes: &[u8]) {
        match self.transport {
            Transport::Udp => self.ep.handle_datagram(self.now, PEER, bytes),
            Transport::Tcp => self.ep.handle_tcp_frame(self.now, self.conn, bytes),
        }
    }
}
