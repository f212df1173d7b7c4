//! No allocation on the hot path of the running gateway: a counting allocator counts every
//! allocation made on a shard thread (the OS thread name starts with "fleetgate-shard") while
//! armed, during steady echo traffic over real sockets after a warm-up, then while every device's
//! ResendRequest is served from the journals.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetgate::config::Config;
use fleetgate::counters::Counter;
use fleetgate::ops::Server;
use fleetgate::protocol::{Body, Header, Message, write_prefix};
use fleetgate::session::{
    Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, OpenLogon, Transport,
};
use fleetgate::sim::alloc::{self, CountingAlloc};
use fleetgate::time::Clock;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Messages each device asks for again at the end (the journal keeps 64 application messages).
const RESEND_BACK: i64 = 32;

/// Counts the allocations of the gateway's shard threads (named `fleetgate-shard-{i}`).
const SHARD_THREADS: &str = "fleetgate-shard";

fn start(io: &str) -> Server {
    let pid = std::process::id();
    for attempt in 0..20u32 {
        let base =
            20_000 + ((pid.wrapping_mul(104_729).wrapping_add(attempt * 97)) % 30_000) as u16;
        let set = vec![
            format!("gateway.io=\"{io}\""),
            "gateway.shards=1".into(),
            "gateway.handshake_addr=\"127.0.0.1:0\"".into(),
            "gateway.tcp_addr=\"127.0.0.1:0\"".into(),
            format!("gateway.session_port_base={base}"),
            "gateway.max_sessions_per_shard=64".into(),
            "tcp.max_connections_per_shard=64".into(),
            "observability.metrics_addr=\"\"".into(),
        ];
        let cfg = Config::load(None, &set).expect("config");
        match Server::start(&cfg, Arc::new(OpenLogon)) {
            Ok(g) => return g,
            Err(e) if e.contains("session port") => continue,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free session ports");
}

struct Dev {
    sock: UdpSocket,
    dev: Device,
    replies: u64,
}

impl Dev {
    /// Counts the echo replies among the device's pending events.
    fn take_events(&mut self) {
        while let Some(e) = self.dev.poll_event() {
            if let DeviceEvent::App { type_id: 250, .. } = e {
                self.replies += 1;
            }
        }
    }
}

fn pump(devs: &mut [Dev], clock: &Clock, hs: SocketAddr, send: bool) {
    let mut buf = [0u8; 2048];
    for d in devs.iter_mut() {
        let now = clock.now();
        d.dev.handle_timeout(now);
        d.take_events();
        if send && d.dev.state() == DeviceState::Active && d.dev.unacked() < 64 {
            let _ = d.dev.send_app(now, 150, &now.as_nanos().to_le_bytes(), true);
        }
        while let Some(t) = d.dev.poll_transmit(now, &mut buf) {
            let to = match t.dest {
                DeviceDest::Handshake => hs,
                DeviceDest::SessionPort(p) => SocketAddr::from(([127, 0, 0, 1], p)),
                DeviceDest::Stream => continue,
            };
            let _ = d.sock.send_to(&buf[..t.len], to);
        }
        while let Ok((n, _)) = d.sock.recv_from(&mut buf) {
            d.dev.handle_datagram(clock.now(), &buf[..n]);
            d.take_events();
        }
    }
}

/// The measured traffic must carry more echo round trips than this to prove anything.
const MIN_ROUND_TRIPS: u64 = 5_000;

/// Echo traffic for 2.5 s, and on until more than [`MIN_ROUND_TRIPS`] replies (60 s at most);
/// the number of replies.
fn echo_for_a_while(devs: &mut [Dev], clock: &Clock, hs: SocketAddr) -> u64 {
    let replies = |devs: &[Dev]| devs.iter().map(|d| d.replies).sum::<u64>();
    let before = replies(devs);
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500)
        || (replies(devs) - before <= MIN_ROUND_TRIPS && t0.elapsed() < Duration::from_secs(60))
    {
        pump(devs, clock, hs, true);
    }
    replies(devs) - before
}

/// The detector itself must see an allocation on a thread named like a shard, or a zero below
/// would prove nothing.
fn detector_sees_shard_allocations() {
    alloc::take();
    alloc::arm_threads_named(SHARD_THREADS);
    std::thread::Builder::new()
        .name("fleetgate-shard-probe".into())
        .spawn(|| std::hint::black_box(vec![1u8; 64]).len())
        .unwrap()
        .join()
        .unwrap();
    alloc::arm_threads_named("");
    assert!(alloc::take().growth() > 0, "the counting allocator does not see shard threads");
}

fn steady_echo_allocates_nothing(io: &str) {
    detector_sees_shard_allocations();
    let gw = start(io);
    let clock = Clock::new();
    let mut devs: Vec<Dev> = (0..16)
        .map(|i| {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            sock.set_nonblocking(true).unwrap();
            let cfg =
                DeviceConfig::new(Transport::Udp, format!("NOALLOC{i}").as_bytes(), b"u", b"p");
            let mut dev = Device::new(cfg);
            dev.connect(clock.now(), 1000 + i as u64, true);
            Dev { sock, dev, replies: 0 }
        })
        .collect();
    let t0 = Instant::now();
    while devs.iter().any(|d| d.dev.state() != DeviceState::Active) {
        assert!(t0.elapsed() < Duration::from_secs(5), "devices did not log on");
        pump(&mut devs, &clock, gw.gateway.handshake_addr, false);
        std::thread::sleep(Duration::from_micros(200));
    }
    // Warm-up: journals wrap, queues and histograms reach their working size. Then the
    // measured traffic, armed. Each lasts 2.5 s, and longer until it has carried more than
    // MIN_ROUND_TRIPS (a loaded machine carries fewer per second: 4,572 in 2.5 s were seen
    // beside two busy loops).
    echo_for_a_while(&mut devs, &clock, gw.gateway.handshake_addr);
    alloc::take();
    alloc::arm_threads_named(SHARD_THREADS);
    let during = echo_for_a_while(&mut devs, &clock, gw.gateway.handshake_addr);
    // Still armed: every device asks for its last RESEND_BACK messages again (a raw
    // ResendRequest numbered next, once its requests are all answered), and the shard serves
    // them from the journals.
    let t1 = Instant::now();
    while devs.iter().any(|d| d.dev.unacked() > 0) && t1.elapsed() < Duration::from_secs(2) {
        pump(&mut devs, &clock, gw.gateway.handshake_addr, false);
    }
    // The shard's resent messages as its snapshots publish them (each second).
    let published_resent = || {
        let view = gw.view.lock().unwrap();
        view.shards.iter().flatten().map(|s| s.counters.get(Counter::MessagesResent)).sum::<u64>()
    };
    let resent_before = published_resent();
    let asked = devs.len() as u64 * RESEND_BACK as u64 / 2;
    for d in &mut devs {
        let expected = d.dev.expected_in();
        let req = Message {
            header: Header {
                seq: d.dev.next_out(),
                last_processed: expected - 1,
                ..Header::default()
            },
            body: Body::ResendRequest { from: expected - RESEND_BACK, to: 0 },
        };
        let mut buf = [0u8; 64];
        let p = write_prefix(&mut buf, d.dev.session_id());
        let n = req.encode(&mut buf[p..]).unwrap();
        let to = SocketAddr::from(([127, 0, 0, 1], gw.gateway.session_ports[0]));
        d.sock.send_to(&buf[..p + n], to).unwrap();
    }
    // Armed until the shard has served them: at least 300 ms, and on until its snapshot shows
    // the resends (300 ms alone assumed the shard got a CPU within them), 10 s at most.
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_millis(300)
        || (published_resent() < resent_before + asked && t1.elapsed() < Duration::from_secs(10))
    {
        pump(&mut devs, &clock, gw.gateway.handshake_addr, false);
    }
    alloc::arm_threads_named("");
    let allocs = alloc::take().growth();
    let totals = gw.stop();
    assert!(during > MIN_ROUND_TRIPS, "too little traffic to prove anything: {during} replies");
    assert!(totals.counters.get(Counter::AppMessagesReceived) > during);
    let resent = totals.counters.get(Counter::MessagesResent);
    assert!(resent >= asked, "too few messages resent to prove anything: {resent}");
    assert_eq!(
        allocs, 0,
        "the shard allocated {allocs} times during {during} echo round trips and {resent} resent messages"
    );
    eprintln!(
        "{io}: {during} echo round trips through a real shard, {allocs} allocations on the shard thread"
    );
}

/// Both backends in one test: the allocation counter is process-wide, so the two runs must not
/// overlap.
#[test]
fn shard_steady_echo_allocates_nothing_on_both_backends() {
    steady_echo_allocates_nothing("epoll");
    if fleetgate::sim::uring_available("shard_steady_echo_allocates_nothing (uring)") {
        steady_echo_allocates_nothing("uring");
    }
}
