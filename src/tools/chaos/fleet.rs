//! Devices for the chaos run: the device state machine ([`Device`]) over real loopback sockets,
//! polled without blocking, so that one thread drives one canary or a few hundred devices.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::protocol::Deframer;
use crate::session::{
    Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, EndReason, Transport,
};
use crate::time::Clock;

/// Where the gateway listens.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Target {
    /// UDP handshake port.
    pub(crate) handshake: SocketAddr,
    /// TCP port.
    pub(crate) tcp: SocketAddr,
}

/// A UDP socket bound to `ip` (any 127.0.0.0/8 address) on an ephemeral port, non-blocking.
pub(crate) fn udp_from(ip: Ipv4Addr) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0))?;
    s.set_nonblocking(true)?;
    Ok(s)
}

/// A TCP socket bound to `ip`, connecting to `to`; non-blocking when `nonblocking` (the connect
/// then completes in the background).
pub(crate) fn tcp_from(ip: Ipv4Addr, to: SocketAddr, nonblocking: bool) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&SocketAddr::new(IpAddr::V4(ip), 0).into())?;
    if nonblocking {
        s.set_nonblocking(true)?;
        match s.connect(&to.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
    } else {
        // Long enough for two SYN retransmissions (after 1 s and 3 s) when a connect storm
        // fills the listen backlog.
        s.connect_timeout(&to.into(), Duration::from_secs(4))?;
        s.set_nonblocking(true)?;
    }
    s.set_nodelay(true)?;
    Ok(s)
}

enum Link {
    Udp(UdpSocket),
    Tcp { stream: Option<TcpStream>, deframer: Deframer },
}

/// One device: a state machine and its socket.
pub(crate) struct Dev {
    dev: Device,
    link: Link,
    target: Target,
    /// Echo replies received (type 250 on UDP, 220 on TCP).
    pub(crate) replies: u64,
    /// When the last echo reply arrived.
    pub(crate) last_reply: Option<Instant>,
    /// When it logged on.
    pub(crate) logged_on: Option<Instant>,
    /// How it ended, the LoggedOut text, and when.
    pub(crate) ended: Option<(EndReason, String, Instant)>,
    sent: u64,
}

impl Dev {
    /// A UDP device `uid` from `src`, connecting now (resetSeqNum = 1).
    pub(crate) fn udp(
        clock: &Clock,
        target: Target,
        src: Ipv4Addr,
        uid: &str,
        user: &str,
        pw: &str,
    ) -> Self {
        let sock = udp_from(src).expect("bind a UDP socket on loopback");
        Self::new(clock, target, Link::Udp(sock), Transport::Udp, uid, user, pw)
    }

    /// A TCP client `user` from `src`, connecting now (resetSeqNum = 1).
    pub(crate) fn tcp(clock: &Clock, target: Target, src: Ipv4Addr, user: &str, pw: &str) -> Self {
        let stream = tcp_from(src, target.tcp, false).ok().map(TcpStream::from);
        let link = Link::Tcp { stream, deframer: Deframer::new(64 * 1024) };
        Self::new(clock, target, link, Transport::Tcp, "", user, pw)
    }

    #[allow(clippy::too_many_arguments)]
    fn new(
        clock: &Clock,
        target: Target,
        link: Link,
        transport: Transport,
        uid: &str,
        user: &str,
        pw: &str,
    ) -> Self {
        let cfg = DeviceConfig::new(transport, uid.as_bytes(), user.as_bytes(), pw.as_bytes());
        let mut dev = Device::new(cfg);
        let nonce = u64::from(std::process::id()) << 32 | u64::from(rand_u32());
        dev.connect(clock.now(), nonce, true);
        let closed = matches!(&link, Link::Tcp { stream: None, .. });
        let mut d = Self {
            dev,
            link,
            target,
            replies: 0,
            last_reply: None,
            logged_on: None,
            ended: None,
            sent: 0,
        };
        if closed {
            d.dev.transport_lost();
            d.ended = Some((EndReason::TransportClosed, "connect failed".into(), Instant::now()));
        }
        d
    }

    /// The device's state.
    pub(crate) fn state(&self) -> DeviceState {
        self.dev.state()
    }

    /// True for a TCP client.
    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self.link, Link::Tcp { .. })
    }

    /// Queues one echo request (its body: a counter) if logged on.
    pub(crate) fn send_echo(&mut self, clock: &Clock) {
        if self.dev.state() != DeviceState::Active {
            return;
        }
        let t = if self.is_tcp() { 120 } else { 150 };
        self.sent += 1;
        let _ = self.dev.send_app(clock.now(), t, &self.sent.to_le_bytes(), true);
    }

    /// Sends a LogoutRequest.
    pub(crate) fn logout(&mut self, clock: &Clock) {
        self.dev.logout(clock.now());
    }

    /// One pass: timers, events, output, and every input already there (never waits).
    pub(crate) fn step(&mut self, clock: &Clock) {
        let now = clock.now();
        self.dev.handle_timeout(now);
        self.take_events();
        let mut buf = [0u8; 2048];
        while let Some(t) = self.dev.poll_transmit(clock.now(), &mut buf) {
            let failed = match (&mut self.link, t.dest) {
                (Link::Udp(s), DeviceDest::Handshake) => {
                    let _ = s.send_to(&buf[..t.len], self.target.handshake);
                    false
                }
                (Link::Udp(s), DeviceDest::SessionPort(p)) => {
                    let _ =
                        s.send_to(&buf[..t.len], SocketAddr::new(self.target.handshake.ip(), p));
                    false
                }
                (Link::Tcp { stream: Some(s), .. }, _) => s.write_all(&buf[..t.len]).is_err(),
                _ => false,
            };
            if failed {
                self.lose_tcp();
            }
        }
        let mut input = [0u8; 4096];
        loop {
            match &mut self.link {
                Link::Udp(s) => match s.recv_from(&mut input) {
                    Ok((n, _)) => self.dev.handle_datagram(clock.now(), &input[..n]),
                    Err(_) => break,
                },
                Link::Tcp { stream: Some(s), deframer } => match s.read(&mut input) {
                    Ok(0) => {
                        self.lose_tcp();
                        break;
                    }
                    Ok(n) => {
                        deframer.push(&input[..n]);
                        while let Ok(Some(f)) = deframer.next_frame() {
                            self.dev.handle_frame(clock.now(), f);
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.lose_tcp();
                        break;
                    }
                },
                Link::Tcp { stream: None, .. } => break,
            }
            self.take_events();
        }
        self.take_events();
    }

    fn lose_tcp(&mut self) {
        if let Link::Tcp { stream, .. } = &mut self.link {
            *stream = None;
        }
        if !matches!(self.dev.state(), DeviceState::Ended(_)) {
            self.dev.transport_lost();
        }
        if self.ended.is_none() {
            self.ended = Some((EndReason::TransportClosed, String::new(), Instant::now()));
        }
    }

    fn take_events(&mut self) {
        while let Some(e) = self.dev.poll_event() {
            match e {
                DeviceEvent::App { type_id: 220 | 250, .. } => {
                    self.replies += 1;
                    self.last_reply = Some(Instant::now());
                }
                DeviceEvent::LoggedOn { .. } => self.logged_on = Some(Instant::now()),
                DeviceEvent::Ended { reason, text } if self.ended.is_none() => {
                    let text = String::from_utf8_lossy(text).into_owned();
                    self.ended = Some((reason, text, Instant::now()));
                }
                _ => {}
            }
        }
    }

    /// Sends raw bytes from the device's own UDP socket (false for TCP or on error).
    pub(crate) fn send_raw(&self, to: SocketAddr, bytes: &[u8]) -> bool {
        match &self.link {
            Link::Udp(s) => s.send_to(bytes, to).is_ok(),
            Link::Tcp { .. } => false,
        }
    }

    /// The sequence number of the device's next message.
    pub(crate) fn next_out(&self) -> i64 {
        self.dev.next_out()
    }

    /// The session id (UDP), 0 before registration.
    pub(crate) fn session_id(&self) -> u64 {
        self.dev.session_id()
    }
}

/// A cheap, non-cryptographic random u32 (nonces and fuzz bytes; not for secrets).
pub(crate) fn rand_u32() -> u32 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let mut s = STATE.load(Ordering::Relaxed);
    if s == 0 {
        s = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
    }
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    STATE.store(s, Ordering::Relaxed);
    (s.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
}

/// Drives `devs` until `done` holds or `limit` passes; true if `done` held.
pub(crate) fn drive_until(
    devs: &mut [Dev],
    clock: &Clock,
    limit: Duration,
    mut done: impl FnMut(&[Dev]) -> bool,
) -> bool {
    let t0 = Instant::now();
    loop {
        for d in devs.iter_mut() {
            d.step(clock);
        }
        if done(devs) {
            return true;
        }
        if t0.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
}
