//! Real sockets on 127.0.0.1: a whole gateway in this process, devices driven by the same
//! device-side state machine the load generator uses. Every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate::config::Config;
use fleetgate::protocol::Deframer;
use fleetgate::serve::Gateway;
use fleetgate::session::{
    Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, OpenLogon, Transport,
};
use fleetgate::shard::Clock;

fn start(io: &str, extra: &[&str]) -> Gateway {
    let pid = std::process::id();
    for attempt in 0..20u32 {
        let base = 20_000 + ((pid.wrapping_mul(7919).wrapping_add(attempt * 131)) % 30_000) as u16;
        let mut set = vec![
            format!("gateway.io=\"{io}\""),
            "gateway.shards=2".into(),
            "gateway.handshake_addr=\"127.0.0.1:0\"".into(),
            "gateway.tcp_addr=\"127.0.0.1:0\"".into(),
            format!("gateway.session_port_base={base}"),
            "gateway.max_sessions_per_shard=256".into(),
            "tcp.max_connections_per_shard=256".into(),
            "observability.metrics_addr=\"127.0.0.1:0\"".into(),
        ];
        set.extend(extra.iter().map(|s| s.to_string()));
        let cfg = Config::load(None, &set).expect("config");
        match Gateway::start(&cfg, Arc::new(OpenLogon)) {
            Ok(g) => return g,
            Err(e) if e.contains("session port") => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free session ports");
}

struct Udp {
    sock: UdpSocket,
    dev: Device,
    clock: Clock,
    gw: Vec<SocketAddr>,
    events: Vec<String>,
    app: Vec<(u16, Vec<u8>)>,
}

impl Udp {
    fn new(gw: &Gateway, uid: &str) -> Self {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        let dev = Device::new(DeviceConfig::new(Transport::Udp, uid.as_bytes(), b"user", b"pw"));
        let mut gwaddrs = vec![gw.handshake_addr];
        gwaddrs.extend(gw.session_ports.iter().map(|&p| SocketAddr::from(([127, 0, 0, 1], p))));
        Self { sock, dev, clock: Clock::new(), gw: gwaddrs, events: Vec::new(), app: Vec::new() }
    }

    fn step(&mut self) {
        let mut buf = [0u8; 2048];
        let now = self.clock.now();
        let (events, app) = (&mut self.events, &mut self.app);
        let mut on = |e: DeviceEvent<'_>| match e {
            DeviceEvent::App { type_id, body, .. } => app.push((type_id, body.to_vec())),
            other => events.push(format!("{other:?}")),
        };
        self.dev.handle_timeout(now, &mut on);
        while let Some(t) = self.dev.poll_transmit(now, &mut buf) {
            let to = match t.dest {
                DeviceDest::Handshake => self.gw[0],
                DeviceDest::SessionPort(p) => SocketAddr::from(([127, 0, 0, 1], p)),
                DeviceDest::Stream => unreachable!(),
            };
            self.sock.send_to(&buf[..t.len], to).unwrap();
        }
        if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
            self.dev.handle_datagram(self.clock.now(), &buf[..n], &mut on);
        }
    }

    fn run_until(&mut self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let t0 = Instant::now();
        while !done(self) {
            assert!(
                t0.elapsed() < limit,
                "timed out waiting for {what}: state {:?}, events {:?}",
                self.dev.state(),
                self.events
            );
            self.step();
        }
    }
}

struct Tcp {
    stream: TcpStream,
    dev: Device,
    clock: Clock,
    deframer: Deframer,
    app: Vec<(u16, Vec<u8>)>,
    ended: Option<String>,
}

impl Tcp {
    fn new(gw: &Gateway, user: &str) -> Self {
        let stream = TcpStream::connect(gw.tcp_addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(2))).unwrap();
        let mut dev = Device::new(DeviceConfig::new(Transport::Tcp, b"", user.as_bytes(), b"pw"));
        let clock = Clock::new();
        dev.connect(clock.now(), 1, true);
        Self {
            stream,
            dev,
            clock,
            deframer: Deframer::new(64 * 1024),
            app: Vec::new(),
            ended: None,
        }
    }

    fn step(&mut self) {
        let mut buf = [0u8; 4096];
        let now = self.clock.now();
        let (app, ended) = (&mut self.app, &mut self.ended);
        let mut on = |e: DeviceEvent<'_>| match e {
            DeviceEvent::App { type_id, body, .. } => app.push((type_id, body.to_vec())),
            DeviceEvent::Ended { text, .. } => *ended = Some(String::from_utf8_lossy(text).into()),
            _ => {}
        };
        self.dev.handle_timeout(now, &mut on);
        while let Some(t) = self.dev.poll_transmit(now, &mut buf) {
            self.stream.write_all(&buf[..t.len]).unwrap();
        }
        match self.stream.read(&mut buf) {
            Ok(0) => {
                if ended.is_none() {
                    *ended = Some("closed".into());
                }
            }
            Ok(n) => {
                self.deframer.push(&buf[..n]);
                while let Ok(Some(f)) = self.deframer.next_frame() {
                    self.dev.handle_frame(self.clock.now(), f, &mut on);
                }
            }
            Err(_) => {}
        }
    }

    fn run_until(&mut self, what: &str, limit: Duration, done: impl Fn(&Self) -> bool) {
        let t0 = Instant::now();
        while !done(self) {
            assert!(
                t0.elapsed() < limit,
                "timed out waiting for {what}: state {:?}",
                self.dev.state()
            );
            self.step();
        }
    }
}

fn udp_flow(io: &str) {
    let gw = start(io, &[]);
    let mut d = Udp::new(&gw, "RT-UDP-1");
    d.dev.set_device_config(b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~");
    let now = d.clock.now();
    d.dev.connect(now, 77, true);
    d.run_until("logon", Duration::from_secs(5), |d| d.dev.state() == DeviceState::Active);
    for k in 0u32..50 {
        let now = d.clock.now();
        d.dev.send_app(now, 150, &k.to_le_bytes(), true).unwrap();
    }
    d.run_until("50 echo replies", Duration::from_secs(5), |d| d.app.len() == 50);
    for (k, (t, body)) in d.app.iter().enumerate() {
        assert_eq!(*t, 250);
        assert_eq!(body, &(k as u32).to_le_bytes());
    }
    let now = d.clock.now();
    d.dev.logout(now);
    d.run_until("LoggedOut", Duration::from_secs(5), |d| {
        matches!(d.dev.state(), DeviceState::Ended(_))
    });
    let totals = gw.stop();
    assert_eq!(totals.acceptor.accepted, 1);
    assert_eq!(totals.counters.get(fleetgate::stats::Counter::LogonsAccepted), 1);
    assert_eq!(totals.counters.get(fleetgate::stats::Counter::AppMessagesReceived), 50);
}

fn tcp_flow(io: &str) {
    let gw = start(io, &[]);
    let mut d = Tcp::new(&gw, "rt-tcp-1");
    d.run_until("logon", Duration::from_secs(5), |d| d.dev.state() == DeviceState::Active);
    for k in 0u32..50 {
        let now = d.clock.now();
        d.dev.send_app(now, 120, &k.to_le_bytes(), true).unwrap();
    }
    d.run_until("50 echo replies", Duration::from_secs(5), |d| d.app.len() == 50);
    assert!(
        d.app.iter().enumerate().all(|(k, (t, b))| *t == 220 && b == &(k as u32).to_le_bytes())
    );
    let now = d.clock.now();
    d.dev.logout(now);
    d.run_until("LoggedOut", Duration::from_secs(5), |d| d.ended.is_some());
    assert_eq!(d.ended.as_deref(), Some("logout"));
    let totals = gw.stop();
    assert_eq!(totals.counters.get(fleetgate::stats::Counter::AppMessagesReceived), 50);
}

fn metrics_and_shutdown(io: &str) {
    let gw = start(io, &[]);
    let mut d = Udp::new(&gw, "RT-UDP-2");
    let now = d.clock.now();
    d.dev.connect(now, 5, true);
    d.run_until("logon", Duration::from_secs(5), |d| d.dev.state() == DeviceState::Active);
    // Snapshots are published once a second.
    let addr = gw.metrics_addr.expect("metrics enabled");
    let t0 = Instant::now();
    let body = loop {
        d.step();
        let body = http_get(addr, "/metrics");
        if body.contains("fleetgate_logons_accepted_total{shard=") && body.contains("} 1\n") {
            break body;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "metrics never showed the logon:\n{body}");
    };
    assert!(body.contains("fleetgate_sessions{shard="));
    let sessions = http_get(addr, "/sessions");
    assert!(sessions.contains("\"device_uid\":\"RT-UDP-2\""), "{sessions}");
    assert!(http_get(addr, "/healthz").contains("ok"));
    // Shutdown logs the device out within the drain timeout.
    let flag = gw.shutdown_flag();
    flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    d.run_until("LoggedOut on shutdown", Duration::from_secs(3), |d| {
        matches!(d.dev.state(), DeviceState::Ended(_))
    });
    assert!(d.events.iter().any(|e| e.contains("Ended")), "{:?}", d.events);
    drop(gw);
    assert!(t0.elapsed() < Duration::from_secs(3));
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn epoll_udp_flow() {
    udp_flow("epoll");
}

#[test]
fn epoll_tcp_flow() {
    tcp_flow("epoll");
}

#[test]
fn epoll_metrics_sessions_and_shutdown() {
    metrics_and_shutdown("epoll");
}
