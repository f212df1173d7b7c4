//! The device state machine (`session::Device`, used by the load generator and the
//! simulations) driven by arbitrary gateway-side datagrams or stream bytes (raw, or messages
//! built from fuzzed fields relative to what the device expects), its own API calls and time
//! steps. After every step it checks:
//! - nothing panics, and `handle_timeout` leaves no deadline in the past;
//! - no allocation inside the device, at most `buffer` unacknowledged messages, a bounded
//!   number of transmits per pass, and none after the session ended;
//! - every transmit decodes (UDP: fits `max_datagram`, handshake messages alone with prefix 0,
//!   the rest with the session id);
//! - first sends are numbered strictly one after another (a reset logon starts again at 1),
//!   re-sends repeat numbers already sent, and application messages are delivered in order,
//!   each once.
#![no_main]

use core::time::Duration;

use arbitrary::{Arbitrary, Unstructured};
use fleetgate::protocol::{
    Body, DATAGRAM_PREFIX_LEN, Datagram, Deframer, HEADER_LEN, Message, MessageType, write_prefix,
};
use fleetgate::session::{Device, DeviceConfig, DeviceDest, DeviceEvent, DeviceState, Transport};
use fleetgate::time::Timestamp;
use fleetgate_fuzz::device::{Ack, Frame, GwBody, Input, Op, Prefix};
use fleetgate_fuzz::{Armed, Counting, Seq, frames_of, header, logon, push_message, user};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

const PASS_LIMIT: usize = 4096;

struct Harness {
    dev: Device,
    cfg: DeviceConfig,
    now: Timestamp,
    deframer: Deframer,
    /// Highest number sent for the first time.
    live_last: i64,
    /// The nonce of the last `connect` (a well-formed ConnectionAccept echoes it).
    nonce: u64,
    buf: Vec<u8>,
    data: Vec<u8>,
}

/// What the events show: application messages in order, each once.
#[derive(Default)]
struct Seen {
    last_app: i64,
    ended: bool,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let mut h = Harness::new(&input);
    let mut seen = Seen::default();
    for op in &input.ops {
        if trace() {
            eprintln!("{:?} {:?} op {op:?}", h.now, h.dev.state());
        }
        h.apply(op, &mut seen);
        h.pass(&mut seen);
    }
});

impl Harness {
    fn new(input: &Input) -> Self {
        let transport = if input.tcp { Transport::Tcp } else { Transport::Udp };
        let mut cfg = DeviceConfig::new(transport, b"DEV0", b"user0", b"pw");
        cfg.buffer.messages_per_session = 1 << (input.buffer % 6);
        let mut dev = Device::new(cfg);
        dev.set_device_config(b"AB~001~19");
        Self {
            dev,
            cfg,
            now: Timestamp::from_nanos(1_000_000_000),
            deframer: Deframer::new(4096),
            live_last: 0,
            nonce: 0,
            buf: vec![0; 70_000],
            data: Vec::with_capacity(4096),
        }
    }

    fn apply(&mut self, op: &Op, seen: &mut Seen) {
        let now = self.now;
        match op {
            Op::Connect { nonce, reset } => {
                seen.ended = false;
                self.nonce = u64::from(*nonce);
                self.deframer.reset();
                let a = Armed::new();
                self.dev.connect(now, u64::from(*nonce), *reset);
                no_alloc(a, "connect");
            }
            Op::TransportLost => {
                let a = Armed::new();
                self.dev.transport_lost();
                no_alloc(a, "transport_lost");
            }
            Op::Logout => {
                let a = Armed::new();
                self.dev.logout(now);
                no_alloc(a, "logout");
            }
            Op::Send { type_id, len, expect_reply } => {
                let body = [0x5a; 255];
                let a = Armed::new();
                let r = self.dev.send_app(
                    now,
                    100 + u16::from(*type_id),
                    &body[..usize::from(*len)],
                    *expect_reply,
                );
                no_alloc(a, "send_app");
                if r.is_ok() {
                    assert_eq!(
                        self.dev.state(),
                        DeviceState::Active,
                        "sent while {:?}",
                        self.dev.state()
                    );
                }
            }
            Op::Gateway { prefix, frames, tail } => {
                let mut data = std::mem::take(&mut self.data);
                data.clear();
                if self.cfg.transport == Transport::Udp {
                    data.resize(DATAGRAM_PREFIX_LEN, 0);
                    let id = match *prefix {
                        Prefix::Session => self.dev.session_id(),
                        Prefix::Zero => 0,
                        Prefix::Raw(id) => id,
                    };
                    write_prefix(&mut data, id);
                }
                self.build(&mut data, frames);
                data.extend_from_slice(tail);
                self.deliver(&data, seen);
                self.data = data;
            }
            Op::Raw(bytes) => self.deliver(bytes, seen),
            Op::Wait { ms } => self.now = self.now + Duration::from_millis(u64::from(*ms)),
            Op::WaitForTimer => {
                if let Some(t) = self.dev.poll_timeout() {
                    self.now = self.now.max(t);
                }
            }
        }
    }

    fn build(&self, out: &mut Vec<u8>, frames: &[Frame]) {
        let mut next = self.dev.expected_in();
        let numbered = self.dev.next_out() - 1;
        let mut text = [0u8; 255];
        for f in frames {
            let handshake = matches!(
                f.body,
                GwBody::ConnectionAccept { .. }
                    | GwBody::ConnectionReject(..)
                    | GwBody::RegistrationAccept { .. }
                    | GwBody::RegistrationReject(_)
                    | GwBody::GetDeviceConfig(_)
            );
            let seq = match f.seq {
                Seq::Next if handshake => 0,
                Seq::Next => next,
                Seq::Delta(d) => next.saturating_add(i64::from(d)).max(0),
                Seq::Raw(v) => v,
            };
            let ack = match f.ack {
                Ack::All => numbered,
                Ack::Delta(d) => numbered.saturating_add(i64::from(d)),
                Ack::Raw(v) => v,
            };
            let body = match &f.body {
                GwBody::ConnectionAccept { right_nonce, nonce, port, cookie } => {
                    let mut c = [0u8; 32];
                    c[..4].copy_from_slice(cookie);
                    Body::ConnectionAccept {
                        session_port: *port,
                        cookie_ttl_ms: 5000,
                        client_nonce: if *right_nonce { self.nonce } else { *nonce },
                        cookie: c,
                    }
                }
                GwBody::ConnectionReject(r, t) => {
                    Body::ConnectionReject { reason: *r, details: t.bytes(&mut text) }
                }
                GwBody::RegistrationAccept { id, resumed } => {
                    Body::RegistrationAccept { session_id: *id, resumed: *resumed }
                }
                GwBody::RegistrationReject(r) => {
                    Body::RegistrationReject { reason: *r, details: b"no" }
                }
                GwBody::GetDeviceConfig(c) => Body::GetDeviceConfig { correlation_id: *c },
                GwBody::LogonResponse(h) => Body::LogonResponse { heartbeat_interval_s: *h },
                GwBody::Heartbeat(c) => Body::Heartbeat { correlation_id: *c },
                GwBody::TestRequest(c) => Body::TestRequest { correlation_id: *c },
                GwBody::GapFill { ahead } => {
                    Body::GapFill { new_seq_num: seq.saturating_add(i64::from(*ahead)) }
                }
                GwBody::GapFillRaw(n) => Body::GapFill { new_seq_num: *n },
                GwBody::Reject(r, reason) => {
                    Body::Reject { ref_seq_num: *r, reason: *reason, details: b"no" }
                }
                GwBody::LoggedOut(t) => Body::LoggedOut { reason: t.bytes(&mut text) },
                GwBody::App { type_id, len } => {
                    let n = usize::from(*len);
                    Body::App { type_id: 100 + u16::from(*type_id), body: &text[..n] }
                }
                GwBody::ResendRequest(from, to) => Body::ResendRequest { from: *from, to: *to },
                GwBody::Logon { reset } => logon(user(0), b"pw", *reset),
                GwBody::Raw(bytes) => {
                    out.extend_from_slice(bytes);
                    continue;
                }
            };
            let msg = Message { header: header(seq, f.resend, ack), body };
            if !push_message(out, &msg) {
                out.extend_from_slice(&[0u8; 8]);
            }
            if !handshake {
                next = match f.body {
                    GwBody::GapFill { ahead } if ahead > 0 => seq.saturating_add(i64::from(ahead)),
                    _ => seq.saturating_add(1),
                };
            }
        }
    }

    /// Hands gateway bytes to the device: a datagram, or stream bytes through the deframer.
    fn deliver(&mut self, data: &[u8], seen: &mut Seen) {
        if self.cfg.transport == Transport::Udp {
            let a = Armed::new();
            self.dev.handle_datagram(self.now, data);
            no_alloc(a, "handle_datagram");
            take_events(&mut self.dev, seen);
            return;
        }
        let mut rest = data;
        while !rest.is_empty() {
            let n = self.deframer.push(rest);
            rest = &rest[n..];
            loop {
                match self.deframer.next_frame() {
                    Ok(Some(frame)) => {
                        let a = Armed::new();
                        self.dev.handle_frame(self.now, frame);
                        no_alloc(a, "handle_frame");
                        take_events(&mut self.dev, seen);
                    }
                    Ok(None) => break,
                    Err(_) => {
                        // A driver closes the stream on a framing error.
                        self.deframer.reset();
                        let a = Armed::new();
                        self.dev.transport_lost();
                        no_alloc(a, "transport_lost");
                        return;
                    }
                }
            }
            if n == 0 {
                return;
            }
        }
    }

    /// One pass of a driver: timers, then every transmit.
    fn pass(&mut self, seen: &mut Seen) {
        if self.dev.poll_timeout().is_some_and(|t| t <= self.now) {
            let a = Armed::new();
            self.dev.handle_timeout(self.now);
            no_alloc(a, "handle_timeout");
            take_events(&mut self.dev, seen);
            if let Some(t) = self.dev.poll_timeout() {
                assert!(t > self.now, "deadline {t:?} still due after handle_timeout");
            }
        }
        let capacity = self.cfg.buffer.slot_count();
        assert!(self.dev.unacked() <= capacity, "{} unacked of {capacity}", self.dev.unacked());
        let mut buf = std::mem::take(&mut self.buf);
        for k in 0.. {
            assert!(k < PASS_LIMIT, "output does not end");
            let a = Armed::new();
            let t = self.dev.poll_transmit(self.now, &mut buf);
            no_alloc(a, "poll_transmit");
            let Some(t) = t else { break };
            assert!(!seen.ended, "{:?} sent after its session ended", self.dev.state());
            self.transmit(t.dest, &buf[..t.len], seen);
        }
        self.buf = buf;
    }

    fn transmit(&mut self, dest: DeviceDest, bytes: &[u8], seen: &mut Seen) {
        let frames = match (self.cfg.transport, dest) {
            (Transport::Udp, DeviceDest::Handshake | DeviceDest::SessionPort(_)) => {
                assert!(bytes.len() <= self.cfg.max_datagram, "{} bytes", bytes.len());
                let dg = Datagram::parse(bytes).expect("a device datagram parses");
                let frames: Vec<&[u8]> =
                    dg.frames().map(|f| f.expect("a device datagram splits")).collect();
                let first = Message::decode_frame(frames[0]).expect("decodes");
                let hello = matches!(
                    first.body,
                    Body::ConnectionRequest { .. } | Body::RegistrationRequest { .. }
                );
                if hello {
                    assert_eq!(frames.len(), 1, "messages 50-55 travel alone");
                    assert_eq!(dg.session_id, 0);
                    assert_eq!(
                        matches!(first.body, Body::ConnectionRequest { .. }),
                        dest == DeviceDest::Handshake
                    );
                } else {
                    assert_eq!(dg.session_id, self.dev.session_id(), "prefix");
                    assert!(matches!(dest, DeviceDest::SessionPort(_)));
                }
                frames
            }
            (Transport::Tcp, DeviceDest::Stream) => {
                frames_of(bytes).expect("a device stream write is whole frames")
            }
            (t, d) => panic!("{t:?} device sent to {d:?}"),
        };
        for f in frames {
            let msg = Message::decode_frame(f).expect("a device frame decodes");
            if trace() {
                eprintln!("  -> {msg:?}");
            }
            let h = msg.header;
            if msg.body.message_type().is_some_and(MessageType::is_handshake) {
                assert_eq!(h.seq, 0);
                continue;
            }
            assert!(f.len() >= HEADER_LEN);
            match msg.body {
                Body::LogonRequest { reset_seq_num: true, .. } => {
                    assert_eq!(h.seq, 1, "a reset logon is number 1");
                    self.live_last = 1;
                    seen.last_app = 0;
                }
                Body::LogonRequest { .. } => {
                    // A resume's LogonRequest carries the next number without using it.
                    assert!(
                        h.seq > self.live_last,
                        "resume logon {} after {}",
                        h.seq,
                        self.live_last
                    );
                }
                _ if h.is_resend() => {
                    assert!(
                        h.seq <= self.live_last,
                        "re-sent {} never sent (last {})",
                        h.seq,
                        self.live_last
                    );
                }
                _ => {
                    assert_eq!(
                        h.seq,
                        self.live_last + 1,
                        "first send {} after {}",
                        h.seq,
                        self.live_last
                    );
                    self.live_last = h.seq;
                }
            }
        }
    }
}

/// Takes every event the device has queued (after each `handle_*` call, as the device asks);
/// taking one allocates nothing.
fn take_events(dev: &mut Device, seen: &mut Seen) {
    loop {
        let a = Armed::new();
        let e = dev.poll_event();
        no_alloc(a, "poll_event");
        let Some(e) = e else { break };
        event(seen, e);
    }
}

fn event(seen: &mut Seen, e: DeviceEvent<'_>) {
    if trace() {
        eprintln!("  event {e:?}");
    }
    match e {
        DeviceEvent::App { seq, .. } => {
            assert!(seq > seen.last_app, "application message {seq} after {}", seen.last_app);
            seen.last_app = seq;
        }
        DeviceEvent::Ended { .. } => seen.ended = true,
        _ => {}
    }
}

/// `FUZZ_TRACE=1`: print every operation, message and event (to read a crash).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

fn no_alloc(a: Armed, what: &str) {
    let (n, bytes) = a.finish();
    assert!(n == 0, "{what} allocated {n} times ({bytes} bytes)");
}
