//! Cost per event against the size of the shard (issue 11; STYLE.md rules 3, 11, 12): one
//! logon and one heartbeat through the sans-IO [`Endpoint`], with 1,000 and with 1,000,000
//! sessions reserved, half of them logged on. A cost that grew with the slab (a scan, a heap
//! deeper by the fleet) shows as a ratio well above 1.
//!
//! - `scale/logon/<reserved>`: one UDP device's whole life: RegistrationRequest (with a fresh
//!   cookie) → RegistrationAccept and GetDeviceConfig → DeviceConfig → LogonRequest →
//!   LogonResponse → LogoutRequest → LoggedOut, the slot released. Every output is polled and
//!   decoded.
//! - `scale/heartbeat/<reserved>`: a logged-on device's Heartbeat datagram in, due timers run,
//!   output polled (the acknowledging Heartbeat every 20 ms of virtual time).
//!
//! Virtual time moves 100 ns per iteration, so the filler sessions' own timers (5 s) never come
//! due inside a measurement. After criterion's figures, a plain timed loop prints the two sizes
//! side by side and their ratio.
//!
//! ```text
//! cargo bench --bench scale
//! ```
//!
//! Under `cargo test --benches` (test mode) it runs with 1,000 and 100,000 reserved sessions,
//! once each, to stay quick.

use std::hint::black_box;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput};
use fleetgate::apps::Echo;
use fleetgate::journal::JournalConfig;
use fleetgate::protocol::{
    Body, DATAGRAM_PREFIX_LEN, Datagram, DeviceUid, Header, Message, Password, Username,
    write_prefix,
};
use fleetgate::session::handshake::{CookieInput, CookieKey, CookieKeys, make_cookie};
use fleetgate::session::{Endpoint, EndpointConfig, OpenLogon};
use fleetgate::time::Timestamp;

/// Virtual time per iteration.
const STEP: Duration = Duration::from_nanos(100);
const CONFIG: &[u8] = b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~";

/// One shard's endpoint with `reserved` sessions, half of them logged-on UDP devices.
struct Shard {
    ep: Endpoint,
    key: CookieKey,
    now: Timestamp,
    nonce: u64,
    buf: Box<[u8]>,
    out: Box<[u8]>,
    /// The heartbeat device: its address, session id and next sequence number.
    hb: (SocketAddr, u64, i64),
}

impl Shard {
    fn new(reserved: usize) -> Self {
        let mut cfg = EndpointConfig {
            max_sessions: reserved,
            max_connections: 16,
            max_pending_attaches: 16,
            ..EndpointConfig::default()
        };
        // The journal is not what is measured here: the smallest one.
        cfg.session.journal = JournalConfig { messages_per_session: 1, slot_bytes: 128 };
        let key = CookieKey([7; 32]);
        let keys = CookieKeys { current: key, previous: None };
        let ep = Endpoint::new(cfg, keys, [3; 32], Box::new(OpenLogon), Box::new(Echo));
        let mut s = Self {
            ep,
            key,
            now: Timestamp::from_nanos(1_000_000_000),
            nonce: 0,
            buf: vec![0; 2048].into_boxed_slice(),
            out: vec![0; 2048].into_boxed_slice(),
            hb: (addr(0), 0, 0),
        };
        for k in 1..=reserved / 2 {
            let id = s.log_on(addr(k as u32), uid(k as u32));
            if k == 1 {
                s.hb = (addr(1), id, 2);
            }
            s.now = s.now + STEP;
        }
        // Let the acknowledgements of the fill go out.
        s.now = s.now + Duration::from_millis(100);
        s.ep.handle_timeout(s.now);
        s.drain();
        assert_eq!(s.ep.session_count(), reserved / 2, "filled");
        s
    }

    /// Registration, device config and logon of the device at `from`; its session id.
    fn log_on(&mut self, from: SocketAddr, uid: DeviceUid) -> u64 {
        self.nonce += 1;
        let input =
            CookieInput { peer: from, device_uid: &uid, client_nonce: self.nonce, shard: 0 };
        let cookie = make_cookie(&self.key, self.now, Duration::from_secs(5), &input);
        let reg = Body::RegistrationRequest { device_uid: uid, client_nonce: self.nonce, cookie };
        self.send(from, 0, 0, reg);
        let (mut id, mut corr) = (0, 0);
        while let Some(t) = self.ep.poll_transmit(self.now, &mut self.out) {
            let dg = Datagram::parse(&self.out[..t.len]).expect("datagram");
            for frame in dg.frames() {
                match Message::decode_frame(frame.expect("frame")).expect("message").body {
                    Body::RegistrationAccept { session_id, .. } => id = session_id,
                    Body::GetDeviceConfig { correlation_id } => corr = correlation_id,
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(id != 0 && corr != 0, "registered");
        self.send(from, id, 0, Body::DeviceConfig { correlation_id: corr, config: CONFIG });
        let logon = Body::LogonRequest {
            username: Username::new(b"bench").expect("username"),
            password: Password::new(b"pw").expect("password"),
            reset_seq_num: true,
        };
        self.send(from, id, 1, logon);
        assert_eq!(self.drain(), 1, "LogonResponse");
        id
    }

    /// One device's whole life (see the module docs).
    fn logon_logout(&mut self) {
        let from = addr(u32::MAX);
        let id = self.log_on(from, uid(u32::MAX));
        self.send(from, id, 2, Body::LogoutRequest { reason: b"done" });
        assert_eq!(self.drain(), 1, "LoggedOut");
        while self.ep.poll_event().is_some() {}
        self.now = self.now + STEP;
    }

    /// One heartbeat of the heartbeat device (see the module docs).
    fn heartbeat(&mut self) {
        let (from, id, seq) = self.hb;
        self.send(from, id, seq, Body::Heartbeat { correlation_id: 0 });
        self.hb.2 += 1;
        self.now = self.now + STEP;
        self.ep.handle_timeout(self.now);
        self.drain();
    }

    fn send(&mut self, from: SocketAddr, id: u64, seq: i64, body: Body<'_>) {
        let n = write_prefix(&mut self.buf, id);
        let msg = Message { header: Header { seq, ..Header::default() }, body };
        let len = msg.encode(&mut self.buf[n..]).expect("encode");
        self.ep.handle_datagram(self.now, from, &self.buf[..DATAGRAM_PREFIX_LEN + len]);
    }

    /// Polls every output; how many buffers.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Some(t) = self.ep.poll_transmit(self.now, &mut self.out) {
            black_box(&self.out[..t.len]);
            n += 1;
        }
        while self.ep.poll_event().is_some() {}
        n
    }
}

fn addr(k: u32) -> SocketAddr {
    let [a, b, c, d] = k.to_be_bytes();
    SocketAddr::from((Ipv4Addr::new(10, a ^ b, c, d), 4000 + u16::from(b)))
}

fn uid(k: u32) -> DeviceUid {
    DeviceUid::new(format!("DEV{k:010}").as_bytes()).expect("uid")
}

/// ns per call of `f`, over `n` calls.
fn time(n: u32, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    for _ in 0..n {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let bench = std::env::args().any(|a| a == "--bench");
    let sizes: [usize; 2] = if bench { [1_000, 1_000_000] } else { [1_000, 100_000] };
    let mut c = Criterion::default().configure_from_args();
    let mut shards: Vec<(usize, Shard)> = sizes.iter().map(|&n| (n, Shard::new(n))).collect();
    {
        let mut g = c.benchmark_group("scale");
        g.throughput(Throughput::Elements(1));
        for (n, s) in &mut shards {
            g.bench_function(format!("logon/{n}"), |b| b.iter(|| s.logon_logout()));
            g.bench_function(format!("heartbeat/{n}"), |b| b.iter(|| s.heartbeat()));
        }
        g.finish();
    }
    let rounds = if bench { 200_000 } else { 1_000 };
    let mut rows = Vec::new();
    for (n, s) in &mut shards {
        // Warm, then best of three (the machine is shared).
        time(rounds / 10, || s.logon_logout());
        let logon = (0..3).map(|_| time(rounds, || s.logon_logout())).fold(f64::MAX, f64::min);
        time(rounds / 10, || s.heartbeat());
        let hb = (0..3).map(|_| time(rounds, || s.heartbeat())).fold(f64::MAX, f64::min);
        rows.push((*n, logon, hb));
    }
    let (small, large) = (rows[0], rows[1]);
    println!("scale: reserved sessions    logon ns   heartbeat ns");
    for (n, l, h) in &rows {
        println!("scale: {n:>17}   {l:>8.0}   {h:>12.0}");
    }
    println!(
        "scale: ratio {}/{}: logon {:.2}, heartbeat {:.2}",
        large.0,
        small.0,
        large.1 / small.1,
        large.2 / small.2
    );
    c.final_summary();
}
