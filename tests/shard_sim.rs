//! A runtime `Shard` (the shard thread's duty cycle, `do_work`) driven in virtual time over the
//! simulator's in-memory backend (`sim::MemBackend`): a UDP device and a TCP device, both the
//! device-side state machine, log on and echo through it. No socket, no clock: time is a number
//! the test advances.

use std::net::SocketAddr;
use std::time::Duration;

use fleetgate::config::Config;
use fleetgate::protocol::Deframer;
use fleetgate::runtime::shard::tap::Tap;
use fleetgate::runtime::shard::{Adopted, Settings, Shard, endpoint_for};
use fleetgate::session::handshake::{
    HandshakeConfig, HandshakeOutcome, answer_connection_request, cookie_keys,
};
use fleetgate::session::{
    ConnId, Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, OpenLogon, Transport,
};
use fleetgate::sim::{MemBackend, SIM_DEVICE_CONFIG, Sent, feed};
use fleetgate::time::Timestamp;

const MASTER: [u8; 32] = [7; 32];
const STEP: Duration = Duration::from_millis(1);

struct World {
    shard: Shard<MemBackend>,
    now: Timestamp,
    cfg: Config,
}

/// A device and what it has seen.
struct Dev {
    dev: Device,
    addr: SocketAddr,
    conn: Option<ConnId>,
    deframer: Deframer,
    echoes: Vec<Vec<u8>>,
}

impl Dev {
    fn new(transport: Transport, uid: &str, port: u16) -> Self {
        let mut dev = Device::new(DeviceConfig::new(transport, uid.as_bytes(), b"user", b"pw"));
        dev.set_device_config(SIM_DEVICE_CONFIG);
        Self {
            dev,
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            conn: None,
            deframer: Deframer::new(64 * 1024),
            echoes: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(e) = self.dev.poll_event() {
            if let DeviceEvent::App { type_id: 250 | 220, body, .. } = e {
                self.echoes.push(body.to_vec());
            }
        }
    }
}

impl World {
    fn new() -> Self {
        Self::with(&[])
    }

    /// With `--set` overrides.
    fn with(set: &[&str]) -> Self {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let mut cfg = Config::load(None, &set).unwrap();
        cfg.gateway.max_sessions_per_shard = 16;
        cfg.tcp.max_connections_per_shard = 16;
        let now = Timestamp::ZERO + Duration::from_secs(1);
        let endpoint = endpoint_for(&cfg, 0, &MASTER, Box::new(OpenLogon), now);
        let shard = Shard::new(
            0,
            endpoint,
            MemBackend::new(),
            Settings::new(&cfg),
            (MASTER, now),
            Tap::new(0, 0, None),
        );
        Self { shard, now, cfg }
    }

    /// The acceptor's answer to a datagram on the handshake port.
    fn handshake(&self, from: SocketAddr, data: &[u8]) -> Option<Vec<u8>> {
        let hs = HandshakeConfig {
            shards: 1,
            session_port_base: self.cfg.gateway.session_port_base,
            cookie_ttl: Duration::from_millis(self.cfg.udp.cookie_ttl_ms),
        };
        let rotate = Duration::from_secs(self.cfg.udp.cookie_rotate_s);
        let key = cookie_keys(&MASTER, self.now, rotate).current;
        let mut out = [0u8; 2048];
        match answer_connection_request(&hs, &key, self.now, from, data, None, &mut out) {
            HandshakeOutcome::Accepted { len, .. } => Some(out[..len].to_vec()),
            _ => None,
        }
    }

    /// One millisecond: devices' timers and output, one shard pass, delivery back.
    fn step(&mut self, devs: &mut [&mut Dev]) -> usize {
        self.now = self.now + STEP;
        let mut buf = vec![0u8; 64 * 1024];
        for d in devs.iter_mut() {
            d.dev.handle_timeout(self.now);
            d.drain();
            while let Some(t) = d.dev.poll_transmit(self.now, &mut buf) {
                let bytes = &buf[..t.len];
                match t.dest {
                    DeviceDest::Handshake => {
                        if let Some(reply) = self.handshake(d.addr, bytes) {
                            d.dev.handle_datagram(self.now, &reply);
                            d.drain();
                        }
                    }
                    DeviceDest::SessionPort(_) => self.shard.backend_mut().deliver(d.addr, bytes),
                    DeviceDest::Stream => match d.conn {
                        Some(c) => self.shard.backend_mut().deliver_tcp(c, bytes),
                        None => {
                            // The acceptor read the LogonRequest and hands the connection over.
                            let c = self.shard.backend_mut().open_tcp();
                            d.conn = Some(c);
                            let h = Adopted { peer: d.addr, initial: bytes, accepted: self.now };
                            self.shard.adopt(self.now, c, h);
                        }
                    },
                }
            }
        }
        let work = self.shard.do_work(self.now);
        for s in self.shard.backend_mut().take_sent() {
            for d in devs.iter_mut() {
                match &s {
                    Sent::Datagram(to, data) if *to == d.addr => {
                        d.dev.handle_datagram(self.now, data);
                        d.drain();
                    }
                    Sent::Tcp(c, data) if Some(*c) == d.conn => {
                        let (dev, now) = (&mut d.dev, self.now);
                        let mut echoes = Vec::new();
                        feed(&mut d.deframer, data, |f| {
                            dev.handle_frame(now, f);
                            while let Some(e) = dev.poll_event() {
                                if let DeviceEvent::App { type_id: 220, body, .. } = e {
                                    echoes.push(body.to_vec());
                                }
                            }
                        });
                        d.echoes.extend(echoes);
                    }
                    _ => {}
                }
            }
        }
        work
    }
}

#[test]
fn a_udp_and_a_tcp_device_log_on_and_echo_through_a_shard_in_virtual_time() {
    let mut w = World::new();
    let mut udp = Dev::new(Transport::Udp, "SIM-UDP-1", 40_001);
    let mut tcp = Dev::new(Transport::Tcp, "sim-tcp-1", 40_002);
    udp.dev.connect(w.now, 1, true);
    tcp.dev.connect(w.now, 2, true);
    let t0 = w.now;
    let mut passes_with_work = 0;
    while udp.dev.state() != DeviceState::Active || tcp.dev.state() != DeviceState::Active {
        assert!(
            w.now.saturating_since(t0) < Duration::from_secs(5),
            "no logon in 5 s of virtual time: udp {:?}, tcp {:?}",
            udp.dev.state(),
            tcp.dev.state()
        );
        if w.step(&mut [&mut udp, &mut tcp]) > 0 {
            passes_with_work += 1;
        }
    }
    assert!(passes_with_work > 0);
    assert_eq!(w.shard.endpoint().session_count(), 2);
    for k in 0..10u8 {
        udp.dev.send_app(w.now, 150, &[k; 8], true).unwrap();
        tcp.dev.send_app(w.now, 120, &[k; 8], true).unwrap();
    }
    let t1 = w.now;
    while udp.echoes.len() < 10 || tcp.echoes.len() < 10 {
        assert!(
            w.now.saturating_since(t1) < Duration::from_secs(5),
            "echoes: udp {}, tcp {}",
            udp.echoes.len(),
            tcp.echoes.len()
        );
        w.step(&mut [&mut udp, &mut tcp]);
    }
    let want: Vec<Vec<u8>> = (0..10u8).map(|k| vec![k; 8]).collect();
    assert_eq!(udp.echoes, want);
    assert_eq!(tcp.echoes, want);
    // Idle: a pass with nothing to do reports no work, and the next deadline is in the future.
    for _ in 0..50 {
        w.step(&mut [&mut udp, &mut tcp]);
    }
    let idle = w.shard.do_work(w.now);
    assert_eq!(idle, 0, "a pass with nothing to do");
    assert!(w.shard.until_deadline(w.now) > Duration::ZERO);
    // Shutdown: both devices are logged out and the shard finishes.
    w.shard.shutdown(w.now);
    let t2 = w.now;
    while !w.shard.is_finished() {
        assert!(w.now.saturating_since(t2) < Duration::from_secs(3), "shard did not finish");
        w.step(&mut [&mut udp, &mut tcp]);
    }
    assert!(matches!(udp.dev.state(), DeviceState::Ended(_)), "{:?}", udp.dev.state());
    assert!(matches!(tcp.dev.state(), DeviceState::Ended(_)), "{:?}", tcp.dev.state());
}

/// An operator drain (DESIGN.md §4) taken from the command queue: nothing happens to the
/// sessions before the deadline, then they are logged out with "gateway draining" at
/// `gateway.drain_logouts_per_s` (here 4 per second), and the shard wakes for both.
#[test]
fn a_drain_logs_sessions_out_from_its_deadline_at_the_configured_pace() {
    use fleetgate::runtime::control::{Answer, Command};
    let mut w = World::with(&["gateway.drain_logouts_per_s=4"]);
    let mut devs: Vec<Dev> =
        (0..10).map(|i| Dev::new(Transport::Udp, &format!("SIM-DRAIN-{i}"), 41_000 + i)).collect();
    for (i, d) in devs.iter_mut().enumerate() {
        d.dev.connect(w.now, i as u64 + 1, true);
    }
    let t0 = w.now;
    while devs.iter().any(|d| d.dev.state() != DeviceState::Active) {
        assert!(w.now.saturating_since(t0) < Duration::from_secs(5), "no logon in 5 s");
        w.step(&mut devs.iter_mut().collect::<Vec<_>>());
    }
    let answer = w.shard.command(w.now, Command::Drain { deadline: Duration::from_secs(1) });
    assert_eq!(answer, Answer::Done);
    assert!(w.shard.until_deadline(w.now) <= Duration::from_secs(1), "wakes for the deadline");
    let deadline = w.now + Duration::from_secs(1);
    let mut ended_at = vec![None; devs.len()];
    while ended_at.iter().any(Option::is_none) {
        assert!(w.now.saturating_since(deadline) < Duration::from_secs(5), "{ended_at:?}");
        w.step(&mut devs.iter_mut().collect::<Vec<_>>());
        for (i, d) in devs.iter().enumerate() {
            if ended_at[i].is_none() && matches!(d.dev.state(), DeviceState::Ended(_)) {
                assert!(w.now >= deadline, "device {i} logged out before the deadline");
                ended_at[i] = Some(w.now.saturating_since(deadline));
            }
        }
    }
    let mut after: Vec<Duration> = ended_at.into_iter().flatten().collect();
    after.sort();
    assert!(after[0] < Duration::from_millis(50), "the first at the deadline: {after:?}");
    // Four per second: the k-th (from 0) no earlier than k / 4 s after the deadline.
    for (k, t) in after.iter().enumerate() {
        let earliest = Duration::from_millis(250 * k as u64);
        assert!(*t + Duration::from_millis(2) >= earliest, "logout {k} at {t:?}: {after:?}");
        assert!(*t <= earliest + Duration::from_millis(100), "logout {k} at {t:?}: {after:?}");
    }
    assert_eq!(w.shard.endpoint().session_count(), 0);
    assert_eq!(w.shard.endpoint().counters().get(fleetgate::counters::Counter::DrainLogouts), 10);
}
