//! One shard's gateway (`session::Endpoint`) driven the way the shard loop drives it, by an
//! arbitrary sequence of operations: UDP datagrams (raw, or well-formed messages built from
//! fuzzed fields, with valid cookies made as the handshake port makes them), TCP connections
//! (bytes split by a `Deframer`, the first frame to `handle_tcp_logon`), closes, send-queue room,
//! application sends and time steps.
//!
//! After every step it checks what the simulator checks:
//! - nothing panics, and `handle_timeout` leaves no deadline in the past;
//! - bounded memory: no allocation at all inside the endpoint after start-up (counting
//!   allocator), sessions ≤ `max_sessions`, a bounded number of transmits and events per pass;
//! - every transmit decodes, UDP ones fit `max_datagram`, TCP ones fit the room the driver gave
//!   (except the slow reader's last LoggedOut), and nothing goes to a closed connection;
//! - per stream (see `fleetgate_fuzz::Stream`): first sends numbered strictly one after
//!   another, resends answering a request and never leaving a silent gap.
#![no_main]

use core::time::Duration;
use std::collections::HashMap;
use std::net::SocketAddr;

use arbitrary::{Arbitrary, Unstructured};
use fleetgate::apps;
use fleetgate::protocol::{
    Body, DATAGRAM_PREFIX_LEN, Datagram, Deframer, Message, MessageType, write_prefix,
};
use fleetgate::session::handshake::{CookieInput, CookieKey, CookieKeys, make_cookie};
use fleetgate::session::{
    AppMessage, Application, Authenticator, ConnId, Endpoint, EndpointConfig, EndpointEvent,
    GroupSettings, Link, Outbox, SessionHandle,
};
use fleetgate::time::Timestamp;
use fleetgate_fuzz::endpoint::{Cookie, Frame, FrameBody, Input, Op, Prefix, WrongBody};
use fleetgate_fuzz::{
    Armed, Counting, Kind, PASSWORD, Seq, Stream, USERS, frames_of, header, logon, push_message,
    uid, user,
};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

const MAX_SESSIONS: usize = 4;
const MAX_CONNECTIONS: usize = 4;
/// Connection ids the fuzzer uses: some at or above `max_connections`.
const CONN_IDS: usize = 6;
const COOKIE_TTL: Duration = Duration::from_secs(5);
/// Transmits or events in one pass beyond which output is taken as unbounded.
const PASS_LIMIT: usize = 4096;
const DEFRAMER_BYTES: usize = 4096;

fn addr(i: u8) -> SocketAddr {
    match i % 5 {
        0 => SocketAddr::from(([10, 0, 0, 1], 4000)),
        1 => SocketAddr::from(([10, 0, 0, 2], 4000)),
        2 => SocketAddr::from(([10, 0, 0, 1], 4001)),
        3 => SocketAddr::from(([10, 0, 1, 1], 4000)),
        _ => "[2001:db8::1]:4000".parse().expect("literal"),
    }
}

/// The built-in `echo` (types 100..=198 as T + 100), but 199 broadcasts to the application's
/// sessions.
struct Echo;

impl Application for Echo {
    fn on_message(&mut self, now: Timestamp, msg: AppMessage<'_>, out: &mut Outbox<'_>) {
        if msg.type_id == 199 {
            out.broadcast(300, msg.body);
        } else {
            apps::Echo.on_message(now, msg, out);
        }
    }
}

struct Users;

impl Authenticator for Users {
    fn check(&self, username: &[u8], password: &[u8]) -> bool {
        USERS.contains(&username) && password == PASSWORD
    }
}

struct Conn {
    peer: SocketAddr,
    deframer: Deframer,
    started: bool,
    stream: usize,
    room: usize,
}

struct Harness {
    ep: Endpoint,
    cfg: EndpointConfig,
    now: Timestamp,
    keys: CookieKeys,
    /// TCP connections the driver holds open.
    conns: Vec<Option<Conn>>,
    /// Every stream ever seen: TCP connections and UDP (session id, address) attaches.
    streams: Vec<Stream>,
    udp_streams: HashMap<(u64, SocketAddr), usize>,
    /// Session ids handed out (newest last) and the address each registered from.
    ids: Vec<(u64, SocketAddr)>,
    /// The correlation id of the last GetDeviceConfig per session id.
    corr: HashMap<u64, i64>,
    /// Logged-on sessions silent for 2.5 H, and since when.
    overdue: HashMap<SessionHandle, Timestamp>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = Input::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let mut h = Harness::new(&input);
    for op in &input.ops {
        if trace() {
            eprintln!("{:?} op {op:?}", h.now);
        }
        h.apply(op);
        h.pass();
    }
    h.finish();
});

impl Harness {
    fn new(input: &Input) -> Self {
        let mut cfg = EndpointConfig {
            max_sessions: MAX_SESSIONS,
            max_connections: MAX_CONNECTIONS,
            reply_queue: 4,
            session_burst: 1 + u32::from(input.burst % 4),
            max_logon_failures: 2,
            // Small tables: each input builds its own endpoint (4096 entries per table made
            // the setup cost most of an input: 2,000 executions/s), and collisions come sooner.
            limiter_entries: 16,
            ..EndpointConfig::default()
        };
        cfg.session.journal.messages_per_session = 1 << (input.journal % 5);
        let keys = CookieKeys { current: CookieKey([1; 32]), previous: None };
        let mut ep = Endpoint::new(cfg, keys, [2; 32], Box::new(Users), Box::new(Echo));
        let silent = ep.add_app(Box::new(apps::Silent));
        if input.groups {
            ep.set_groups(Box::new(move |config: &[u8]| match config.first() {
                Some(b'H') => GroupSettings {
                    heartbeat: Some(Duration::from_secs(1)),
                    ..GroupSettings::default()
                },
                Some(b'J') => GroupSettings { journal_depth: Some(2), ..GroupSettings::default() },
                Some(b'S') => GroupSettings { app: Some(silent), ..GroupSettings::default() },
                Some(b'X') => GroupSettings { app: Some(9), ..GroupSettings::default() },
                _ => GroupSettings::default(),
            }));
        }
        Self {
            ep,
            cfg,
            now: Timestamp::from_nanos(1_000_000_000),
            keys,
            conns: (0..CONN_IDS).map(|_| None).collect(),
            streams: Vec::new(),
            udp_streams: HashMap::new(),
            ids: Vec::new(),
            corr: HashMap::new(),
            overdue: HashMap::new(),
            buf: vec![0; 70_000],
            scratch: Vec::with_capacity(4096),
        }
    }

    fn apply(&mut self, op: &Op) {
        match op {
            Op::Register { from, uid: u, nonce, cookie } => {
                let from = addr(*from);
                let mut data = vec![0u8; DATAGRAM_PREFIX_LEN];
                let body = self.registration(from, *u, *nonce, *cookie);
                let msg = Message { header: header(0, false, 0), body };
                push_message(&mut data, &msg);
                self.datagram(from, &data);
            }
            Op::Udp { to, from, frames, tail } => {
                let id = match *to {
                    Prefix::Session(i) if !self.ids.is_empty() => {
                        self.ids[usize::from(i) % self.ids.len()].0
                    }
                    Prefix::Session(_) | Prefix::Zero => 0,
                    Prefix::Raw(id) => id,
                };
                let from = match from {
                    Some(a) => addr(*a),
                    None => self.ids.iter().rev().find(|x| x.0 == id).map_or(addr(0), |x| x.1),
                };
                let base = self.ep.handle_by_id(id).and_then(|h| self.expected_in(h)).unwrap_or(1);
                let stream = self.udp_streams.get(&(id, from)).copied();
                let mut data = vec![0u8; DATAGRAM_PREFIX_LEN];
                write_prefix(&mut data, id);
                self.build(&mut data, base, stream, Some((id, from)), frames);
                data.extend_from_slice(tail);
                self.datagram(from, &data);
            }
            Op::UdpRaw { from, data } => self.datagram(addr(*from), data),
            Op::Tcp { conn, from, frames, tail } => {
                let c = usize::from(*conn) % CONN_IDS;
                if self.conns[c].is_none() {
                    self.streams.push(Stream::default());
                    self.conns[c] = Some(Conn {
                        peer: addr(*from),
                        deframer: Deframer::new(DEFRAMER_BYTES),
                        started: false,
                        stream: self.streams.len() - 1,
                        room: usize::MAX,
                    });
                }
                let stream = self.conns[c].as_ref().map(|c| c.stream);
                let link = Link::Tcp(ConnId(c as u32));
                let base = self.ep.sessions().find(|s| s.link == link).map_or(1, |s| s.expected_in);
                let mut data = Vec::new();
                self.build(&mut data, base, stream, None, frames);
                data.extend_from_slice(tail);
                self.tcp_bytes(c, &data);
            }
            Op::TcpClose { conn } => self.close(usize::from(*conn) % CONN_IDS),
            Op::TcpStalled { conn } => {
                let c = usize::from(*conn) % CONN_IDS;
                if self.conns[c].is_some() {
                    let a = Armed::new();
                    let kept = self.ep.handle_tcp_stalled(self.now, ConnId(c as u32));
                    no_alloc(a, "handle_tcp_stalled");
                    if !kept {
                        self.close(c);
                    }
                }
            }
            Op::Room { conn, room } => {
                if let Some(c) = &mut self.conns[usize::from(*conn) % CONN_IDS] {
                    c.room = if *room == u16::MAX { usize::MAX } else { usize::from(*room) };
                }
            }
            Op::Push { session, type_id, len } => {
                let sessions: Vec<SessionHandle> = self.ep.sessions().map(|s| s.handle).collect();
                if let Some(&h) = sessions.get(usize::from(*session) % sessions.len().max(1)) {
                    let body = vec![0x5a; usize::from(*len)];
                    let a = Armed::new();
                    let _ = self.ep.send(self.now, h, 100 + u16::from(*type_id), &body);
                    no_alloc(a, "send");
                }
            }
            Op::Wait { ms } => self.now = self.now + Duration::from_millis(u64::from(*ms)),
            Op::WaitForTimer => {
                if let Some(t) = self.ep.poll_timeout() {
                    self.now = self.now.max(t);
                }
            }
            Op::RotateKeys => {
                let old = self.keys.current;
                let mut next = old.0;
                next[0] = next[0].wrapping_add(1);
                self.keys = CookieKeys { current: CookieKey(next), previous: Some(old) };
                self.ep.rotate_keys(self.keys);
            }
            Op::Shutdown => {
                let a = Armed::new();
                self.ep.shutdown(self.now);
                no_alloc(a, "shutdown");
            }
        }
    }

    fn expected_in(&self, h: SessionHandle) -> Option<i64> {
        self.ep.sessions().find(|s| s.handle == h).map(|s| s.expected_in)
    }

    fn registration(&self, from: SocketAddr, u: u8, nonce: u8, cookie: Cookie) -> Body<'static> {
        let device_uid = uid(u);
        let client_nonce = u64::from(nonce);
        let mut input = CookieInput { peer: from, device_uid: &device_uid, client_nonce, shard: 0 };
        let cookie = match cookie {
            Cookie::Valid { age_s } => {
                let at = Timestamp::from_nanos(
                    self.now.as_nanos().saturating_sub(u64::from(age_s % 16) * 1_000_000_000),
                );
                make_cookie(&self.keys.current, at, COOKIE_TTL, &input)
            }
            Cookie::WrongPeer => {
                input.peer = addr(from.port() as u8 + 1);
                make_cookie(&self.keys.current, self.now, COOKIE_TTL, &input)
            }
            Cookie::Previous => {
                let key = self.keys.previous.unwrap_or(CookieKey([9; 32]));
                make_cookie(&key, self.now, COOKIE_TTL, &input)
            }
            Cookie::Garbage(c) => c,
        };
        Body::RegistrationRequest { device_uid, client_nonce, cookie }
    }

    /// Appends the frames to `out`: sequence numbers relative to `base` (the receiver's next
    /// expected number), resend ranges relative to what `stream` received live.
    fn build(
        &self,
        out: &mut Vec<u8>,
        base: i64,
        stream: Option<usize>,
        session: Option<(u64, SocketAddr)>,
        frames: &[Frame],
    ) {
        let live = stream.and_then(|s| self.streams[s].live_last()).unwrap_or(1);
        let mut next = base;
        let mut text = [0u8; 255];
        for f in frames {
            let handshake = matches!(
                f.body,
                FrameBody::DeviceConfig { .. }
                    | FrameBody::Registration { .. }
                    | FrameBody::Wrong(
                        WrongBody::ConnectionRequest(..)
                            | WrongBody::GetDeviceConfig(_)
                            | WrongBody::RegistrationAccept(..)
                    )
            );
            let mut seq = match f.seq {
                Seq::Next if handshake => 0,
                Seq::Next => next,
                Seq::Delta(d) => next.saturating_add(i64::from(d)).max(0),
                Seq::Raw(v) => v,
            };
            let body = match &f.body {
                FrameBody::Logon { user: u, good, reset } => {
                    let username = user(*u);
                    if matches!(f.seq, Seq::Next) {
                        seq = if *reset {
                            1
                        } else {
                            self.ep
                                .sessions()
                                .find(|s| s.username == username)
                                .map_or(1, |s| s.expected_in)
                        };
                    }
                    let pw: &[u8] = if *good { PASSWORD } else { b"wrong" };
                    logon(username, pw, *reset)
                }
                FrameBody::Heartbeat(c) => Body::Heartbeat { correlation_id: *c },
                FrameBody::TestRequest(c) => Body::TestRequest { correlation_id: *c },
                FrameBody::Resend { back, len, all } => {
                    let from = live.saturating_sub(i64::from(*back)).max(1);
                    let to = if *all { 0 } else { from.saturating_add(i64::from(*len)) };
                    Body::ResendRequest { from, to }
                }
                FrameBody::ResendRaw { from, to } => Body::ResendRequest { from: *from, to: *to },
                FrameBody::Logout(t) => Body::LogoutRequest { reason: t.bytes(&mut text) },
                FrameBody::App { type_id, len } => {
                    let n = usize::from(*len);
                    for (i, b) in text[..n].iter_mut().enumerate() {
                        *b = i as u8;
                    }
                    Body::App { type_id: 100 + u16::from(*type_id), body: &text[..n] }
                }
                FrameBody::DeviceConfig { right, corr, config } => {
                    let known = session.and_then(|(id, _)| self.corr.get(&id).copied());
                    let correlation_id = if *right { known.unwrap_or(*corr) } else { *corr };
                    Body::DeviceConfig { correlation_id, config: config.bytes(&mut text) }
                }
                FrameBody::Registration { uid: u, nonce, cookie } => {
                    let from = session.map_or(addr(0), |(_, a)| a);
                    self.registration(from, *u, *nonce, *cookie)
                }
                FrameBody::Wrong(w) => match *w {
                    WrongBody::LogonResponse(h) => Body::LogonResponse { heartbeat_interval_s: h },
                    WrongBody::GapFill(n) => Body::GapFill { new_seq_num: n },
                    WrongBody::Reject(r, reason) => {
                        Body::Reject { ref_seq_num: r, reason, details: b"no" }
                    }
                    WrongBody::LoggedOut => Body::LoggedOut { reason: b"bye" },
                    WrongBody::ConnectionRequest(u, v) => Body::ConnectionRequest {
                        device_uid: uid(u),
                        client_nonce: 1,
                        client_version: v,
                    },
                    WrongBody::GetDeviceConfig(c) => Body::GetDeviceConfig { correlation_id: c },
                    WrongBody::RegistrationAccept(id, r) => {
                        Body::RegistrationAccept { session_id: id, resumed: r }
                    }
                },
                FrameBody::Raw(bytes) => {
                    out.extend_from_slice(bytes);
                    continue;
                }
            };
            let msg = Message { header: header(seq, f.resend, i64::from(f.ack)), body };
            if !push_message(out, &msg) {
                // Refused by the encoder (a bad string): send its fields' worth of zeros, a
                // frame the decoder refuses as well.
                out.extend_from_slice(&[0u8; 8]);
            }
            if !handshake {
                next = if matches!(f.body, FrameBody::Logon { reset: true, .. }) {
                    2
                } else if matches!(f.body, FrameBody::Logon { .. }) {
                    seq
                } else {
                    seq.saturating_add(1)
                };
            }
        }
    }

    /// Records the ResendRequests in `frames` on `stream`: a resend must answer one of them.
    fn note_requests<'a>(&mut self, stream: usize, frames: impl Iterator<Item = &'a [u8]>) {
        for f in frames {
            if let Ok(Message { body: Body::ResendRequest { from, to }, .. }) =
                Message::decode_frame(f)
            {
                self.streams[stream].requested(from, to);
            }
        }
    }

    fn datagram(&mut self, from: SocketAddr, data: &[u8]) {
        if let Ok(dg) = Datagram::parse(data)
            && let Some(&s) = self.udp_streams.get(&(dg.session_id, from))
        {
            let frames: Vec<&[u8]> = dg.frames().map_while(Result::ok).collect();
            self.note_requests(s, frames.into_iter());
        }
        let a = Armed::new();
        self.ep.handle_datagram(self.now, from, data);
        no_alloc(a, "handle_datagram");
    }

    fn tcp_bytes(&mut self, c: usize, mut data: &[u8]) {
        let conn = ConnId(c as u32);
        while !data.is_empty() {
            let Some(st) = self.conns[c].as_mut() else { return };
            let n = st.deframer.push(data);
            data = &data[n..];
            loop {
                let Some(st) = self.conns[c].as_mut() else { return };
                let frame = match st.deframer.next_frame() {
                    Ok(Some(f)) => {
                        self.scratch.clear();
                        self.scratch.extend_from_slice(f);
                        std::mem::take(&mut self.scratch)
                    }
                    Ok(None) => break,
                    Err(e) => {
                        st.deframer.reset();
                        let a = Armed::new();
                        self.ep.handle_tcp_error(self.now, conn, e);
                        tcp_no_alloc(a, "handle_tcp_error", c);
                        return;
                    }
                };
                let first = !st.started;
                st.started = true;
                let (peer, stream) = (st.peer, st.stream);
                self.note_requests(stream, std::iter::once(&frame[..]));
                let a = Armed::new();
                if first {
                    self.ep.handle_tcp_logon(self.now, conn, peer, &frame);
                } else {
                    self.ep.handle_tcp_frame(self.now, conn, &frame);
                }
                tcp_no_alloc(a, "handle_tcp_*", c);
                self.scratch = frame;
            }
            if n == 0 {
                // The deframer is full without a whole frame: it said TooLong above.
                return;
            }
        }
    }

    fn close(&mut self, c: usize) {
        if let Some(st) = self.conns[c].take() {
            self.streams[st.stream].close();
            let a = Armed::new();
            self.ep.handle_tcp_closed(self.now, ConnId(c as u32));
            no_alloc(a, "handle_tcp_closed");
        }
    }

    /// One pass of the shard loop: timers, transmits within the room, events.
    fn pass(&mut self) {
        if self.ep.poll_timeout().is_some_and(|t| t <= self.now) {
            let a = Armed::new();
            self.ep.handle_timeout(self.now);
            no_alloc(a, "handle_timeout");
            if let Some(t) = self.ep.poll_timeout() {
                assert!(t > self.now, "deadline {t:?} still due after handle_timeout");
            }
        }
        let a = Armed::new();
        self.ep.unblock(self.now);
        no_alloc(a, "unblock");
        let mut buf = std::mem::take(&mut self.buf);
        for k in 0.. {
            assert!(k < PASS_LIMIT, "output does not end");
            let conns = &self.conns;
            let a = Armed::new();
            let t = self.ep.poll_transmit_within(self.now, &mut buf, &mut |c| {
                conns.get(c.0 as usize).and_then(Option::as_ref).map_or(usize::MAX, |c| c.room)
            });
            no_alloc(a, "poll_transmit_within");
            let Some(t) = t else { break };
            self.transmit(t.dest, t.last, &buf[..t.len]);
        }
        self.buf = buf;
        for k in 0.. {
            assert!(k < PASS_LIMIT, "events do not end");
            let a = Armed::new();
            let ev = self.ep.poll_event();
            no_alloc(a, "poll_event");
            match ev {
                None => break,
                Some(EndpointEvent::CloseConnection(c)) => self.close(c.0 as usize),
                Some(_) => {}
            }
        }
        assert!(self.ep.session_count() <= MAX_SESSIONS);
        // Liveness (DESIGN.md §2 rule 6): a logged-on session silent for 2.5 H is lost within
        // a further H, even when the timer pass came late (H is at most 5 s here).
        let h = Duration::from_secs(5);
        let now = self.now;
        let mut overdue = std::mem::take(&mut self.overdue);
        overdue.retain(|k, _| self.ep.sessions().any(|s| s.handle == *k && s.state.is_active()));
        for s in self.ep.sessions() {
            assert!(s.expected_in >= 1 && s.next_out >= 1, "{s:?}");
            if s.state.is_active() && now.saturating_since(s.last_heard) >= h.mul_f64(2.5) {
                let since = *overdue.entry(s.handle).or_insert(now);
                assert!(
                    now.saturating_since(since) <= h,
                    "session {:x} still active {:?} after it was due to be lost",
                    s.id,
                    now.saturating_since(since)
                );
            } else {
                overdue.remove(&s.handle);
            }
        }
        self.overdue = overdue;
    }

    fn transmit(&mut self, dest: Link, last: bool, bytes: &[u8]) {
        match dest {
            Link::Udp(to) => {
                assert!(bytes.len() <= self.cfg.session.max_datagram, "{} bytes", bytes.len());
                let dg = Datagram::parse(bytes).expect("a datagram the gateway sent parses");
                let frames: Vec<&[u8]> =
                    dg.frames().map(|f| f.expect("a datagram the gateway sent splits")).collect();
                assert!(!frames.is_empty());
                if dg.session_id == 0 {
                    assert_eq!(frames.len(), 1, "messages 50-55 travel alone");
                    let msg = Message::decode_frame(frames[0]).expect("reply decodes");
                    match msg.body {
                        Body::RegistrationAccept { session_id, .. } => {
                            // A new attach: a new stream.
                            self.streams.push(Stream::default());
                            self.udp_streams.insert((session_id, to), self.streams.len() - 1);
                            self.ids.retain(|x| x.0 != session_id);
                            self.ids.push((session_id, to));
                            if self.ids.len() > 8 {
                                self.ids.remove(0);
                            }
                        }
                        Body::RegistrationReject { .. } => {}
                        other => panic!("prefix 0 on {other:?}"),
                    }
                    return;
                }
                let s = match self.udp_streams.get(&(dg.session_id, to)) {
                    Some(&s) => s,
                    None => panic!("session {:x} sent to {to} before registering", dg.session_id),
                };
                for f in frames {
                    self.check(s, f, true, dg.session_id);
                }
            }
            Link::Tcp(conn) => {
                let c = conn.0 as usize;
                let Some(st) = self.conns.get_mut(c).and_then(Option::as_mut) else {
                    panic!("transmit to connection {c}, which is closed");
                };
                let s = st.stream;
                let frames = frames_of(bytes).expect("a TCP transmit is whole frames");
                assert!(!frames.is_empty());
                let only = |f: &[u8]| {
                    matches!(
                        Message::decode_frame(f),
                        Ok(Message { body: Body::LoggedOut { .. }, .. })
                    )
                };
                if last {
                    assert!(
                        frames.last().is_some_and(|f| only(f)),
                        "a slow reader's last transmit ends with LoggedOut"
                    );
                } else if bytes.len() > st.room {
                    // Session output stays within the room; a stateless reply (a refusal or a
                    // displaced session's goodbye: one LoggedOut) may not, and the driver's send
                    // fails with Full: as the shard does, it tells the endpoint, then aborts the
                    // connection unless a goodbye follows.
                    assert!(
                        frames.len() == 1 && only(frames[0]),
                        "{} bytes of session output for {} of room",
                        bytes.len(),
                        st.room
                    );
                    let a = Armed::new();
                    let kept = self.ep.handle_tcp_stalled(self.now, conn);
                    no_alloc(a, "handle_tcp_stalled");
                    if !kept {
                        self.close(c);
                    }
                    return;
                } else {
                    st.room -= bytes.len();
                }
                for f in frames {
                    self.check(s, f, false, 0);
                }
            }
            Link::None => panic!("transmit to nowhere"),
        }
    }

    fn check(&mut self, s: usize, frame: &[u8], udp: bool, id: u64) {
        let msg = Message::decode_frame(frame)
            .unwrap_or_else(|e| panic!("the gateway sent a frame that does not decode: {e}"));
        if trace() {
            match msg.body {
                Body::LoggedOut { reason } => eprintln!(
                    "  stream {s} <- {:?} LoggedOut {:?}",
                    msg.header,
                    String::from_utf8_lossy(reason)
                ),
                _ => eprintln!("  stream {s} <- {msg:?}"),
            }
        }
        let ty = msg.body.message_type();
        if ty.is_some_and(MessageType::is_handshake) {
            match msg.body {
                Body::GetDeviceConfig { correlation_id } if udp => {
                    self.corr.insert(id, correlation_id);
                }
                other => panic!("unexpected {other:?} on a session stream"),
            }
            return;
        }
        let kind = match msg.body {
            Body::GapFill { new_seq_num } => Kind::GapFill(new_seq_num),
            Body::LoggedOut { .. } => Kind::LoggedOut,
            Body::LogonResponse { .. } => Kind::LogonResponse,
            Body::App { .. } => Kind::App,
            _ => Kind::Other,
        };
        if let Err(why) = self.streams[s].message(msg.header.seq, msg.header.is_resend(), kind) {
            panic!("stream {s}: {why}");
        }
    }

    /// Everything flushed with unlimited room: no stream may be owed a resend.
    fn finish(&mut self) {
        for c in self.conns.iter_mut().flatten() {
            c.room = usize::MAX;
        }
        self.pass();
        for (i, s) in self.streams.iter().enumerate() {
            if let Err(why) = s.finish() {
                panic!("stream {i}: silent gap: {why}");
            }
        }
    }
}

/// `FUZZ_TRACE=1`: print every operation and every message sent (to read a crash).
fn trace() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// As [`no_alloc`], for a call about connection `c`: an id at or above `max_connections` (never
/// given by the driver) is refused with a close each time, which is not bounded.
fn tcp_no_alloc(a: Armed, what: &str, c: usize) {
    if c < MAX_CONNECTIONS {
        no_alloc(a, what);
    } else {
        let _ = a.finish();
    }
}

fn no_alloc(a: Armed, what: &str) {
    let (n, bytes) = a.finish();
    assert!(n == 0, "{what} allocated {n} times ({bytes} bytes) after start-up");
}
