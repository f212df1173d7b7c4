//! One or more named, deterministic tests per rule of DESIGN.md §2 (several where a rule has
//! several clauses), each driven through the simulated network [`Net`] and asserting what can be
//! observed: messages on the wire (captured deliveries, byte for byte where the rule says so),
//! device events, gateway counters and session state.
//!
//! Devices are either the real device state machine ([`Device`]) or "raw" clients that write
//! hand-built frames ([`RawTcp`], [`RawUdp`]) for what a well-behaved device never sends.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::counters::Counter;
use crate::protocol::{
    Body, DeviceUid, FLAG_RESEND, Header, Message, MessageType, Password, Username,
};
use crate::session::{Authenticator, DeviceState, EndReason, SessionHandle, State};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

const LOGON_REQUEST: u16 = MessageType::LogonRequest as u16;
const LOGON_RESPONSE: u16 = MessageType::LogonResponse as u16;
const LOGOUT_REQUEST: u16 = MessageType::LogoutRequest as u16;
const LOGGED_OUT: u16 = MessageType::LoggedOut as u16;
const HEARTBEAT: u16 = MessageType::Heartbeat as u16;
const TEST_REQUEST: u16 = MessageType::TestRequest as u16;
const RESEND_REQUEST: u16 = MessageType::ResendRequest as u16;
const GAP_FILL: u16 = MessageType::GapFill as u16;
const REJECT: u16 = MessageType::Reject as u16;
const CONNECTION_REQUEST: u16 = MessageType::ConnectionRequest as u16;
const CONNECTION_ACCEPT: u16 = MessageType::ConnectionAccept as u16;
const CONNECTION_REJECT: u16 = MessageType::ConnectionReject as u16;
const REGISTRATION_REQUEST: u16 = MessageType::RegistrationRequest as u16;
const REGISTRATION_ACCEPT: u16 = MessageType::RegistrationAccept as u16;
const REGISTRATION_REJECT: u16 = MessageType::RegistrationReject as u16;
const GET_DEVICE_CONFIG: u16 = MessageType::GetDeviceConfig as u16;
const DEVICE_CONFIG: u16 = MessageType::DeviceConfig as u16;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn udp_cfg(i: usize) -> DeviceConfig {
    let uid = format!("RUDP{i:05}");
    DeviceConfig::new(Transport::Udp, uid.as_bytes(), format!("ruser{i}").as_bytes(), b"pw")
}

fn tcp_cfg(i: usize) -> DeviceConfig {
    let uid = format!("RTCP{i:05}");
    DeviceConfig::new(Transport::Tcp, uid.as_bytes(), format!("tuser{i}").as_bytes(), b"pw")
}

/// A network with capture on.
fn cap_net(cfg: EndpointConfig) -> Net {
    let mut net = Net::new(1, cfg);
    net.capture = true;
    net
}

/// Adds a device, connects it (new session) and runs until it is logged on.
fn start(net: &mut Net, cfg: DeviceConfig) -> usize {
    let d = net.add_device(cfg);
    net.connect(d, true);
    net.run_for(ms(500));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active, "device {d} did not log on");
    d
}

/// One captured frame.
#[derive(Clone, Debug)]
struct Wire {
    at: Timestamp,
    up: bool,
    path: Path,
    prefix: Option<u64>,
    /// Length of the whole datagram (or TCP chunk) that carried it.
    dgram_len: usize,
    frame: Vec<u8>,
}

impl Wire {
    fn msg(&self) -> Message<'_> {
        Message::decode_frame(&self.frame).expect("captured frame decodes")
    }
    fn ty(&self) -> u16 {
        u16::from_le_bytes([self.frame[4], self.frame[5]])
    }
    fn seq(&self) -> i64 {
        self.msg().header.seq
    }
    fn lp(&self) -> i64 {
        self.msg().header.last_processed
    }
    fn resent(&self) -> bool {
        self.frame[1] & FLAG_RESEND != 0
    }
    /// The reason of a LoggedOut.
    fn logged_out(&self) -> Option<String> {
        match self.msg().body {
            Body::LoggedOut { reason } => Some(String::from_utf8_lossy(reason).into_owned()),
            _ => None,
        }
    }
}

fn wires(net: &Net, pred: impl Fn(&Captured) -> bool) -> Vec<Wire> {
    let mut out = Vec::new();
    for c in net.captured.iter().filter(|c| pred(c)) {
        for frame in c.frames() {
            out.push(Wire {
                at: c.at,
                up: c.up,
                path: c.path,
                prefix: c.prefix(),
                dgram_len: c.data.len(),
                frame,
            });
        }
    }
    out
}

/// Frames delivered to device `i`.
fn down(net: &Net, i: usize) -> Vec<Wire> {
    wires(net, |c| c.dev == Some(i) && !c.up && !c.dropped)
}

/// Frames delivered from device `i` to the gateway.
fn up(net: &Net, i: usize) -> Vec<Wire> {
    wires(net, |c| c.dev == Some(i) && c.up && !c.dropped)
}

/// Datagrams delivered to `addr` (raw clients).
fn to_addr(net: &Net, addr: SocketAddr) -> Vec<Wire> {
    wires(net, |c| matches!(c.path, Path::Udp { to, .. } if to == addr) && !c.dropped)
}

fn of_type(w: &[Wire], ty: u16) -> Vec<Wire> {
    w.iter().filter(|w| w.ty() == ty).cloned().collect()
}

fn logged_out_texts(w: &[Wire]) -> Vec<String> {
    w.iter().filter_map(Wire::logged_out).collect()
}

/// The message types in a datagram (for drop rules).
fn datagram_types(data: &[u8]) -> Vec<u16> {
    let Ok(dg) = Datagram::parse(data) else { return Vec::new() };
    dg.frames().filter_map(Result::ok).map(|f| u16::from_le_bytes([f[4], f[5]])).collect()
}

/// True if the datagram carries an application message with exactly this body.
fn datagram_has_body(data: &[u8], ty: u16, body: &[u8]) -> bool {
    let Ok(dg) = Datagram::parse(data) else { return false };
    dg.frames().filter_map(Result::ok).any(|f| {
        matches!(Message::decode_frame(f), Ok(Message { body: Body::App { type_id, body: b }, .. })
            if type_id == ty && b == body)
    })
}

/// Encodes one message (padded).
fn frame(seq: i64, flags: u8, body: Body<'_>) -> Vec<u8> {
    let msg = Message { header: Header { seq, flags, ..Header::default() }, body };
    let mut buf = vec![0; msg.encoded_len()];
    msg.encode(&mut buf).expect("test frame encodes");
    buf
}

/// A datagram: prefix then padded frames.
fn dgram(prefix: u64, frames: &[&[u8]]) -> Vec<u8> {
    let mut out = prefix.to_le_bytes().to_vec();
    for f in frames {
        out.extend_from_slice(f);
    }
    out
}

fn uid(s: &[u8]) -> DeviceUid {
    DeviceUid::new(s).unwrap()
}

fn conn_request(device_uid: &[u8], nonce: u64, version: u16) -> Vec<u8> {
    let body = Body::ConnectionRequest {
        device_uid: uid(device_uid),
        client_nonce: nonce,
        client_version: version,
    };
    dgram(0, &[&frame(0, 0, body)])
}

fn logon(user: &[u8], pw: &[u8], reset: bool) -> Body<'static> {
    Body::LogonRequest {
        username: Username::new(user).unwrap(),
        password: Password::new(pw).unwrap(),
        reset_seq_num: reset,
    }
}

fn handle_of(net: &Net, id: u64) -> SessionHandle {
    net.gateway.handle_by_id(id).expect("session exists")
}

fn state_of(net: &Net, id: u64) -> Option<State> {
    net.session_info(id).map(|s| s.state)
}

fn raw_addr(n: u8) -> SocketAddr {
    SocketAddr::from(([192, 168, 77, n], 40_000))
}

/// A TCP client writing hand-built frames on a connection of a never-started device.
struct RawTcp {
    dev: usize,
    next: i64,
}

impl RawTcp {
    fn open(net: &mut Net, i: usize) -> Self {
        let dev = net.add_device(tcp_cfg(1000 + i));
        net.open_tcp(dev);
        Self { dev, next: 1 }
    }

    /// A new connection from the same address.
    fn reopen(&mut self, net: &mut Net) {
        net.open_tcp(self.dev);
        self.next = 1;
    }

    fn send(&mut self, net: &mut Net, body: Body<'_>) -> i64 {
        let seq = self.next;
        self.next += 1;
        net.inject_tcp(self.dev, &frame(seq, 0, body));
        seq
    }

    fn logon(&mut self, net: &mut Net, user: &[u8], pw: &[u8]) {
        self.send(net, logon(user, pw, true));
        net.run_for(ms(10));
    }

    fn down(&self, net: &Net) -> Vec<Wire> {
        down(net, self.dev)
    }

    fn closed(&self, net: &Net) -> bool {
        net.devices[self.dev].conn.is_none()
    }
}

/// A UDP client writing hand-built datagrams from an address no simulated device uses.
struct RawUdp {
    addr: SocketAddr,
    uid: Vec<u8>,
    nonce: u64,
    cookie: [u8; 32],
    id: u64,
    next: i64,
}

impl RawUdp {
    fn new(n: u8, uid: &[u8], nonce: u64) -> Self {
        Self { addr: raw_addr(n), uid: uid.to_vec(), nonce, cookie: [0; 32], id: 0, next: 1 }
    }

    fn received(&self, net: &Net) -> Vec<Wire> {
        to_addr(net, self.addr)
    }

    /// ConnectionRequest → ConnectionAccept; keeps the cookie.
    fn connect(&mut self, net: &mut Net) {
        net.inject_udp(self.addr, HANDSHAKE, &conn_request(&self.uid, self.nonce, 1));
        net.run_for(ms(5));
        let accept = of_type(&self.received(net), CONNECTION_ACCEPT);
        let Body::ConnectionAccept { cookie, .. } = accept.last().expect("accept").msg().body
        else {
            unreachable!()
        };
        self.cookie = cookie;
    }

    fn registration(&self) -> Vec<u8> {
        let body = Body::RegistrationRequest {
            device_uid: uid(&self.uid),
            client_nonce: self.nonce,
            cookie: self.cookie,
        };
        dgram(0, &[&frame(0, 0, body)])
    }

    /// RegistrationRequest → RegistrationAccept; keeps the session id.
    fn register(&mut self, net: &mut Net) {
        net.inject_udp(self.addr, SESSION, &self.registration());
        net.run_for(ms(5));
        let acc = of_type(&self.received(net), REGISTRATION_ACCEPT);
        let Body::RegistrationAccept { session_id, .. } = acc.last().expect("accept").msg().body
        else {
            unreachable!()
        };
        self.id = session_id;
    }

    /// Answers the last GetDeviceConfig, then logs on (seq 1, reset).
    fn config_and_logon(&mut self, net: &mut Net) {
        let get = of_type(&self.received(net), GET_DEVICE_CONFIG);
        let Body::GetDeviceConfig { correlation_id } = get.last().expect("get config").msg().body
        else {
            unreachable!()
        };
        let cfg = Body::DeviceConfig { correlation_id, config: SIM_DEVICE_CONFIG };
        net.inject_udp(self.addr, SESSION, &dgram(self.id, &[&frame(0, 0, cfg)]));
        net.run_for(ms(5));
        self.send(net, logon(&self.uid, b"pw", true));
        net.run_for(ms(5));
    }

    fn send(&mut self, net: &mut Net, body: Body<'_>) -> i64 {
        let seq = self.next;
        self.next += 1;
        net.inject_udp(self.addr, SESSION, &dgram(self.id, &[&frame(seq, 0, body)]));
        seq
    }
}

// ---------------------------------------------------------------------------------------------
// Rule 1: UDP flow, GetDeviceConfig every 1 s, eSP0008 after 10 s.
// ---------------------------------------------------------------------------------------------

/// The whole UDP flow, in order, with every field that ties one step to the next.
#[test]
fn rule01_udp_flow_handshake_registration_config_logon_in_order() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let all = wires(&net, |c| c.dev == Some(d) && !c.dropped);
    let steps: Vec<(bool, u16)> = all.iter().take(8).map(|w| (w.up, w.ty())).collect();
    assert_eq!(
        steps,
        vec![
            (true, CONNECTION_REQUEST),
            (false, CONNECTION_ACCEPT),
            (true, REGISTRATION_REQUEST),
            (false, REGISTRATION_ACCEPT),
            (false, GET_DEVICE_CONFIG),
            (true, DEVICE_CONFIG),
            (true, LOGON_REQUEST),
            (false, LOGON_RESPONSE),
        ]
    );
    // ConnectionRequest: 128 bytes after a zero prefix, to the handshake port.
    assert_eq!(all[0].dgram_len, 8 + 128);
    assert_eq!(all[0].prefix, Some(0));
    assert!(matches!(all[0].path, Path::Udp { to, .. } if to == HANDSHAKE));
    let Body::ConnectionRequest { client_nonce, client_version, .. } = all[0].msg().body else {
        unreachable!()
    };
    assert_eq!(client_version, 1);
    // ConnectionAccept names the shard's session port and echoes the nonce.
    let Body::ConnectionAccept { session_port, client_nonce: n1, cookie, .. } = all[1].msg().body
    else {
        unreachable!()
    };
    assert_eq!((session_port, n1, all[1].prefix), (SESSION_PORT, client_nonce, Some(0)));
    // RegistrationRequest goes to that port and echoes the cookie.
    assert!(matches!(all[2].path, Path::Udp { to, .. } if to == SESSION));
    let Body::RegistrationRequest { cookie: c2, client_nonce: n2, .. } = all[2].msg().body else {
        unreachable!()
    };
    assert_eq!((c2, n2, all[2].prefix), (cookie, client_nonce, Some(0)));
    // RegistrationAccept: a random non-zero session id, not resumed, prefix 0.
    let Body::RegistrationAccept { session_id, resumed } = all[3].msg().body else {
        unreachable!()
    };
    assert!(session_id != 0 && !resumed);
    assert_eq!(all[3].prefix, Some(0));
    assert_eq!(net.devices[d].dev.session_id(), session_id);
    // From here on every datagram carries the session id.
    assert!(all[4..].iter().all(|w| w.prefix == Some(session_id)));
    let Body::GetDeviceConfig { correlation_id } = all[4].msg().body else { unreachable!() };
    let Body::DeviceConfig { correlation_id: c5, config } = all[5].msg().body else {
        unreachable!()
    };
    assert_eq!((c5, config), (correlation_id, SIM_DEVICE_CONFIG));
    // LogonRequest is client seq 1, LogonResponse server seq 1 acknowledging it.
    assert_eq!(all[6].seq(), 1);
    let Body::LogonResponse { heartbeat_interval_s } = all[7].msg().body else { unreachable!() };
    assert_eq!((all[7].seq(), all[7].lp(), heartbeat_interval_s), (1, 1, 5));
    // The gateway kept the config and is logged on.
    let h = handle_of(&net, session_id);
    assert_eq!(net.gateway.device_config(h), Some(SIM_DEVICE_CONFIG));
    let s = net.gateway.session(h).unwrap();
    assert_eq!(s.state(), State::Active);
    assert_eq!(net.count(Counter::HandshakesRegistered), 1);
    assert_eq!(net.count(Counter::LogonsAccepted), 1);
    // And it carries traffic.
    net.devices[d].dev.send_app(net.now, 101, b"ping", true).unwrap();
    net.run_for(ms(50));
    assert_eq!(net.device_app(d), vec![(2, 201, b"ping".to_vec())]);
}

/// Issue 11: a UDP logon is 3 datagrams from the device and 4 to it, the fewest DESIGN.md
/// allows. DeviceConfig and LogonRequest share one datagram (§1.5), which the gateway takes in
/// order: config first, then the logon (were the logon taken first it would be refused as not
/// allowed before the config). RegistrationAccept cannot share one with GetDeviceConfig: the
/// first carries prefix 0, the second the session id (§1.5). Nothing else follows (the
/// LogonResponse acknowledges the LogonRequest, so no acknowledging Heartbeat), and a logout is
/// one more each way.
#[test]
fn rule01_udp_logon_is_three_datagrams_up_and_four_down() {
    let mut net = cap_net(sim_config());
    for f in [&mut net.faults_up, &mut net.faults_down] {
        f.delay_min = ms(5);
    }
    let d = start(&mut net, udp_cfg(0));
    // Longer than `udp.ack_delay_ms` and the retransmit time, shorter than H (5 s).
    net.run_for(ms(1_000));
    let datagrams = |net: &Net, up: bool| -> Vec<Vec<u16>> {
        net.captured
            .iter()
            .filter(|c| c.dev == Some(d) && c.up == up && !c.dropped)
            .map(|c| c.frames().iter().map(|f| u16::from_le_bytes([f[4], f[5]])).collect())
            .collect()
    };
    let up_logon: [&[u16]; 3] =
        [&[CONNECTION_REQUEST], &[REGISTRATION_REQUEST], &[DEVICE_CONFIG, LOGON_REQUEST]];
    let down_logon: [&[u16]; 4] =
        [&[CONNECTION_ACCEPT], &[REGISTRATION_ACCEPT], &[GET_DEVICE_CONFIG], &[LOGON_RESPONSE]];
    assert_eq!(datagrams(&net, true), up_logon);
    assert_eq!(datagrams(&net, false), down_logon);
    // The gateway took the config, then the logon, from the one datagram.
    let id = net.devices[d].dev.session_id();
    assert_eq!(net.gateway.device_config(handle_of(&net, id)), Some(SIM_DEVICE_CONFIG));
    assert_eq!(state_of(&net, id), Some(State::Active));
    assert_eq!(net.count(Counter::LogonsAccepted), 1);
    assert_eq!(net.count(Counter::DropNotAllowed), 0);
    assert_eq!(net.devices[d].dev.stats().retransmits, 0);

    net.devices[d].dev.logout(net.now);
    net.run_for(ms(500));
    assert_eq!(datagrams(&net, true)[3..], [[LOGOUT_REQUEST]]);
    assert_eq!(datagrams(&net, false)[4..], [[LOGGED_OUT]]);
    assert_eq!(net.devices[d].dev.state(), DeviceState::Ended(EndReason::LoggedOut));
}

/// While the DeviceConfig is withheld, GetDeviceConfig comes again every second with the same
/// correlation id; the first answer that gets through moves the session on to logon.
#[test]
fn rule01_get_device_config_resent_every_second_while_withheld() {
    let mut net = cap_net(sim_config());
    let withhold = Rc::new(Cell::new(true));
    let w = withhold.clone();
    net.drop_rule = Some(Box::new(move |up, _, data| {
        up && w.get() && datagram_types(data).contains(&DEVICE_CONFIG)
    }));
    let mut cfg = udp_cfg(0);
    cfg.handshake_timeout = secs(60);
    let d = net.add_device(cfg);
    net.connect(d, true);
    net.run_for(ms(3_500));
    let gets = of_type(&down(&net, d), GET_DEVICE_CONFIG);
    assert_eq!(gets.len(), 4, "GetDeviceConfig at +0, +1, +2, +3 s");
    for pair in gets.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(gap >= ms(999) && gap <= ms(1_001), "re-sent every 1 s, got {gap:?}");
        assert_eq!(pair[0].msg().body, pair[1].msg().body, "same correlation id");
    }
    let id = net.devices[d].dev.session_id();
    assert_eq!(state_of(&net, id), Some(State::AwaitingConfig));
    let answered = wires(&net, |c| c.dev == Some(d) && c.up && c.dropped);
    assert_eq!(of_type(&answered, DEVICE_CONFIG).len(), 4, "the device answered every one");
    // LogonRequests that arrive before the config are not allowed yet (dropped, counted).
    assert!(net.count(Counter::DropNotAllowed) > 0);
    assert_eq!(net.count(Counter::LogonsAccepted), 0);

    withhold.set(false);
    net.run_for(ms(1_000));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    assert_eq!(net.count(Counter::DeviceConfigRequestsSent), 5);
    assert_eq!(state_of(&net, id), Some(State::Active));
    let resp = of_type(&down(&net, d), LOGON_RESPONSE);
    assert_eq!(resp.len(), 1);
    assert_eq!(resp[0].seq(), 1);
}

/// eSP0008: a device whose DeviceConfig never arrives gets LoggedOut 10 s after
/// RegistrationAccept, and the gateway session is released.
#[test]
fn rule01_esp0008_no_device_config_within_10s_logs_out_and_releases() {
    let mut net = cap_net(sim_config());
    net.drop_rule =
        Some(Box::new(|up, _, data| up && datagram_types(data).contains(&DEVICE_CONFIG)));
    let mut cfg = udp_cfg(0);
    cfg.handshake_timeout = secs(60); // the device waits; the gateway's limit is what is tested
    let d = net.add_device(cfg);
    net.connect(d, true);
    net.run_for(ms(100));
    let accepted = of_type(&down(&net, d), REGISTRATION_ACCEPT)[0].at;
    let id = net.devices[d].dev.session_id();
    net.run_until(accepted + ms(9_900));
    assert_eq!(state_of(&net, id), Some(State::AwaitingConfig), "still waiting at 9.9 s");
    assert!(logged_out_texts(&down(&net, d)).is_empty());
    net.run_until(accepted + ms(10_100));
    let outs: Vec<Wire> = down(&net, d).into_iter().filter(|w| w.ty() == LOGGED_OUT).collect();
    assert_eq!(outs.len(), 1);
    assert_eq!(outs[0].logged_out().as_deref(), Some("eSP0008 could not get device config"));
    let after = outs[0].at - accepted;
    assert!(after >= secs(10) && after <= ms(10_001), "LoggedOut {after:?} after accept");
    assert_eq!(
        net.device_ended(d).as_deref(),
        Some("eSP0008 could not get device config"),
        "the device saw it"
    );
    assert_eq!(net.devices[d].dev.state(), DeviceState::Ended(EndReason::LoggedOut));
    assert_eq!(net.gateway.session_count(), 0, "session released");
    assert_eq!(net.count(Counter::DeviceConfigTimeouts), 1);
    assert_eq!(net.count(Counter::DeviceConfigRequestsSent), 10, "at 0, 1, ..., 9 s");
}

/// The same limit for a raw client that registers and then never answers anything.
#[test]
fn rule01_esp0008_raw_registration_that_never_answers() {
    let mut net = cap_net(sim_config());
    let mut raw = RawUdp::new(1, b"SILENT01", 7);
    raw.connect(&mut net);
    raw.register(&mut net);
    assert_eq!(net.gateway.session_count(), 1);
    net.run_for(ms(10_100));
    let got = raw.received(&net);
    let gets = of_type(&got, GET_DEVICE_CONFIG);
    assert_eq!(gets.len(), 10);
    let outs = logged_out_texts(&got);
    assert_eq!(outs, vec!["eSP0008 could not get device config".to_string()]);
    let out = got.iter().find(|w| w.ty() == LOGGED_OUT).unwrap();
    assert_eq!(out.prefix, Some(raw.id));
    assert_eq!(net.gateway.session_count(), 0);
    assert_eq!(net.count(Counter::DeviceConfigTimeouts), 1);
}

// ---------------------------------------------------------------------------------------------
// Rule 2: stateless cookies, idempotent answers, no amplification.
// ---------------------------------------------------------------------------------------------

/// The handshake port answers a repeated ConnectionRequest with the very same bytes.
#[test]
fn rule02_repeated_connection_request_gets_byte_identical_answer() {
    let mut net = cap_net(sim_config());
    let a = raw_addr(1);
    let req = conn_request(b"IDEM0001", 42, 1);
    net.inject_udp(a, HANDSHAKE, &req);
    net.run_for(ms(200));
    net.inject_udp(a, HANDSHAKE, &req);
    net.run_for(ms(200));
    let replies: Vec<&Captured> =
        net.captured.iter().filter(|c| matches!(c.path, Path::Udp { to, .. } if to == a)).collect();
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].data, replies[1].data, "byte-identical answers");
    assert_eq!(replies[0].frames().len(), 1);
    assert!(replies[0].data.len() <= req.len());
    assert_eq!(of_type(&to_addr(&net, a), CONNECTION_ACCEPT).len(), 2);
    assert_eq!(net.gateway.session_count(), 0, "the handshake port keeps no state");
}

/// A repeated RegistrationRequest with the same nonce gets the same session id, and leaves the
/// session as it was (both while registering and once logged on).
#[test]
fn rule02_repeated_registration_same_nonce_same_session_id_state_untouched() {
    let mut net = cap_net(sim_config());
    let mut raw = RawUdp::new(1, b"IDEM0002", 9);
    raw.connect(&mut net);
    raw.register(&mut net);
    let first_get = of_type(&raw.received(&net), GET_DEVICE_CONFIG)[0].clone();
    let corr_before = first_get.msg().body;
    for _ in 0..2 {
        net.inject_udp(raw.addr, SESSION, &raw.registration());
        net.run_for(ms(5));
    }
    let accepts = of_type(&raw.received(&net), REGISTRATION_ACCEPT);
    assert_eq!(accepts.len(), 3);
    for a in &accepts {
        assert_eq!(a.msg().body, Body::RegistrationAccept { session_id: raw.id, resumed: false });
    }
    assert_eq!(net.gateway.session_count(), 1);
    assert_eq!(net.count(Counter::HandshakesRegistered), 1);
    assert_eq!(net.count(Counter::HandshakesRepeated), 2);
    net.run_for(ms(1_000));
    let gets = of_type(&raw.received(&net), GET_DEVICE_CONFIG);
    assert!(gets.len() >= 2);
    assert!(gets.iter().all(|g| g.msg().body == corr_before), "same config request");

    // Once logged on: a replayed RegistrationRequest from the device changes nothing.
    let d = start(&mut net, udp_cfg(0));
    let reg = net
        .captured
        .iter()
        .find(|c| c.dev == Some(d) && c.up && datagram_types(&c.data) == [REGISTRATION_REQUEST])
        .unwrap()
        .data
        .clone();
    net.devices[d].dev.send_app(net.now, 101, b"one", true).unwrap();
    net.run_for(ms(50));
    let id = net.devices[d].dev.session_id();
    let before = net.session_info(id).unwrap();
    let addr = net.devices[d].addr;
    net.inject_udp(addr, SESSION, &reg);
    net.run_for(ms(1));
    let after = net.session_info(id).unwrap();
    assert_eq!(
        (after.state, after.expected_in, after.next_out, after.link),
        (before.state, before.expected_in, before.next_out, before.link)
    );
    let acc = of_type(&down(&net, d), REGISTRATION_ACCEPT);
    assert_eq!(acc.len(), 2);
    assert_eq!(acc[1].msg().body, Body::RegistrationAccept { session_id: id, resumed: false });
    assert_eq!(net.count(Counter::HandshakesRepeated), 3);
    assert_eq!(net.count(Counter::SessionsResumed), 0);
    net.devices[d].dev.send_app(net.now, 101, b"two", true).unwrap();
    net.run_for(ms(50));
    let bodies: Vec<Vec<u8>> = net.device_app(d).into_iter().map(|m| m.2).collect();
    assert_eq!(bodies, vec![b"one".to_vec(), b"two".to_vec()]);
}

/// A cookie that was tampered with, or replayed with any bound input changed, is refused with
/// RegistrationReject(BAD_COOKIE) and allocates nothing.
#[test]
fn rule02_forged_cookie_gets_bad_cookie() {
    let mut net = cap_net(sim_config());
    let mut raw = RawUdp::new(1, b"FORGE001", 5);
    raw.connect(&mut net);
    let good = raw.cookie;
    let reg = |device_uid: &[u8], nonce: u64, cookie: [u8; 32]| {
        let body =
            Body::RegistrationRequest { device_uid: uid(device_uid), client_nonce: nonce, cookie };
        dgram(0, &[&frame(0, 0, body)])
    };
    let mut tag_flipped = good;
    tag_flipped[20] ^= 0x40;
    let mut expiry_moved = good;
    expiry_moved[1] ^= 0x01;
    let cases: Vec<(SocketAddr, Vec<u8>)> = vec![
        (raw.addr, reg(b"FORGE001", 5, tag_flipped)),
        (raw.addr, reg(b"FORGE001", 5, expiry_moved)),
        (raw.addr, reg(b"FORGE001", 6, good)),    // other nonce
        (raw.addr, reg(b"FORGE002", 5, good)),    // other deviceUid
        (raw_addr(2), reg(b"FORGE001", 5, good)), // other address
    ];
    for (from, data) in &cases {
        net.inject_udp(*from, SESSION, data);
        net.run_for(ms(5));
        let got = to_addr(&net, *from);
        let last = got.last().expect("answered");
        assert_eq!(last.ty(), REGISTRATION_REJECT);
        let Body::RegistrationReject { reason, .. } = last.msg().body else { unreachable!() };
        assert_eq!(reason, 1, "BAD_COOKIE");
        assert!(last.dgram_len <= data.len(), "no amplification");
    }
    assert_eq!(net.count(Counter::HandshakesBadCookie), 5);
    assert_eq!(net.gateway.session_count(), 0);
    // The untouched cookie still works.
    raw.register(&mut net);
    assert_eq!(net.gateway.session_count(), 1);
}

/// A genuine cookie used after its expiry gets RegistrationReject(COOKIE_EXPIRED).
#[test]
fn rule02_expired_cookie_gets_cookie_expired() {
    let mut net = cap_net(sim_config());
    let mut late = RawUdp::new(1, b"LATE0001", 1);
    let mut prompt = RawUdp::new(2, b"PROMPT01", 2);
    late.connect(&mut net);
    prompt.connect(&mut net);
    net.run_for(ms(4_500));
    prompt.register(&mut net); // within the 5 s ttl
    assert_eq!(net.gateway.session_count(), 1);
    net.run_for(ms(2_000)); // now past ttl + the rounding to the next whole second
    net.inject_udp(late.addr, SESSION, &late.registration());
    net.run_for(ms(5));
    let got = late.received(&net);
    let last = got.last().unwrap();
    let Body::RegistrationReject { reason, details } = last.msg().body else {
        panic!("expected a RegistrationReject, got {:?}", last.msg())
    };
    assert_eq!((reason, details), (2, &b"cookie expired"[..]));
    assert_eq!(net.count(Counter::HandshakesCookieExpired), 1);
    assert_eq!(net.gateway.session_count(), 1);
}

/// ConnectionRequests shorter than 128 bytes (truncated datagrams, or a frame that declares a
/// shorter length) are dropped without an answer.
#[test]
fn rule02_short_connection_request_is_not_answered() {
    let mut net = cap_net(sim_config());
    let full = conn_request(b"SHORT001", 3, 1);
    let mut n = 1;
    for len in [0usize, 1, 8, 39, 40, 100, 135] {
        net.inject_udp(raw_addr(n), HANDSHAKE, &full[..len]);
        n += 1;
    }
    // A well-formed frame whose messageLength says 120 (body 88 instead of 96).
    let mut short = full[..8 + 120].to_vec();
    short[8 + 2..8 + 4].copy_from_slice(&120u16.to_le_bytes());
    net.inject_udp(raw_addr(n), HANDSHAKE, &short);
    net.run_for(ms(100));
    let answers = net.captured.iter().filter(|c| !c.up).count();
    assert_eq!(answers, 0, "never answered");
    assert_eq!(net.captured.iter().filter(|c| c.up).count(), n as usize, "all were delivered");
    assert_eq!(net.gateway.session_count(), 0);
}

/// clientVersion other than 1 gets ConnectionReject(UNSUPPORTED_VERSION), no longer than the
/// request.
#[test]
fn rule02_client_version_2_rejected_without_amplification() {
    let mut net = cap_net(sim_config());
    for (n, version) in [(1u8, 2u16), (2, 0), (3, 0xffff)] {
        let req = conn_request(b"VERS0001", 11, version);
        net.inject_udp(raw_addr(n), HANDSHAKE, &req);
        net.run_for(ms(5));
        let got = to_addr(&net, raw_addr(n));
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].ty(), CONNECTION_REJECT);
        let Body::ConnectionReject { reason, .. } = got[0].msg().body else {
            panic!("expected ConnectionReject")
        };
        assert_eq!(reason, 2, "UNSUPPORTED_VERSION");
        assert!(got[0].dgram_len <= req.len(), "{} > {}", got[0].dgram_len, req.len());
    }
    assert_eq!(net.gateway.session_count(), 0);
}

/// Nothing is allocated for ConnectionRequests or bad RegistrationRequests: only a valid
/// RegistrationRequest creates a session.
#[test]
fn rule02_no_session_state_before_a_valid_registration() {
    let mut net = cap_net(sim_config());
    for n in 1..=200u8 {
        let uid = format!("FLOOD{n:03}");
        net.inject_udp(raw_addr(n), HANDSHAKE, &conn_request(uid.as_bytes(), u64::from(n), 1));
    }
    net.run_for(ms(10));
    assert_eq!(of_type(&wires(&net, |c| !c.up), CONNECTION_ACCEPT).len(), 200);
    for n in 1..=50u8 {
        let body = Body::RegistrationRequest {
            device_uid: uid(format!("FLOOD{n:03}").as_bytes()),
            client_nonce: u64::from(n),
            cookie: [n; 32],
        };
        net.inject_udp(raw_addr(n), SESSION, &dgram(0, &[&frame(0, 0, body)]));
    }
    net.run_for(ms(10));
    assert_eq!(net.gateway.session_count(), 0);
    assert_eq!(net.count(Counter::HandshakesBadCookie), 50);
    assert_eq!(net.count(Counter::HandshakesRegistered), 0);
    let mut ok = RawUdp::new(250, b"VALID001", 1);
    ok.connect(&mut net);
    ok.register(&mut net);
    assert_eq!(net.gateway.session_count(), 1);
}

/// The device retries each handshake step every 500 ms and gives up after 5 s ("host timeout");
/// the gateway answers every repeated RegistrationRequest with the same session id.
#[test]
fn rule02_device_retries_every_500ms_and_gives_up_after_5s() {
    // No answers at all: ten ConnectionRequests, then "host timeout".
    let mut net = cap_net(sim_config());
    net.drop_rule = Some(Box::new(|up, _, _| !up));
    let d = net.add_device(udp_cfg(0));
    let t0 = net.now;
    net.connect(d, true);
    net.run_for(ms(4_900));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Connecting);
    net.run_for(ms(200));
    let reqs = of_type(&up(&net, d), CONNECTION_REQUEST);
    assert_eq!(reqs.len(), 10);
    for (k, r) in reqs.iter().enumerate() {
        let due = t0 + ms(500 * k as u64);
        assert!(r.at >= due && r.at - due <= ms(1), "retry {k} at {:?}", r.at - t0);
        assert_eq!(r.frame, reqs[0].frame, "same nonce each time");
    }
    assert_eq!(net.devices[d].dev.state(), DeviceState::Ended(EndReason::HostTimeout));
    assert_eq!(net.device_ended(d).as_deref(), Some("host timeout"));

    // RegistrationAccepts lost: the RegistrationRequest is retried and answered idempotently.
    let mut net = cap_net(sim_config());
    net.drop_rule =
        Some(Box::new(|up, _, data| !up && datagram_types(data).contains(&REGISTRATION_ACCEPT)));
    let d = net.add_device(udp_cfg(1));
    net.connect(d, true);
    net.run_for(ms(5_100));
    let regs = of_type(&up(&net, d), REGISTRATION_REQUEST);
    assert_eq!(regs.len(), 10, "every 500 ms until the 5 s limit");
    assert!(regs.windows(2).all(|p| p[1].at - p[0].at == ms(500)));
    let sent = wires(&net, |c| c.dev == Some(d) && c.dropped);
    let ids: Vec<Body<'_>> =
        sent.iter().filter(|w| w.ty() == REGISTRATION_ACCEPT).map(|w| w.msg().body).collect();
    assert_eq!(ids.len(), 10);
    assert!(ids.windows(2).all(|p| p[0] == p[1]), "same session id every time");
    assert_eq!(net.count(Counter::HandshakesRegistered), 1);
    assert_eq!(net.count(Counter::HandshakesRepeated), 9);
    assert_eq!(net.device_ended(d).as_deref(), Some("host timeout"));
}

// ---------------------------------------------------------------------------------------------
// Rule 3: TCP flow, LogonRequest first and within 2 × H.
// ---------------------------------------------------------------------------------------------

#[test]
fn rule03_tcp_flow_logon_request_first_logon_response_seq_1() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, tcp_cfg(0));
    let ups = up(&net, d);
    assert_eq!(ups[0].ty(), LOGON_REQUEST);
    assert_eq!(ups[0].seq(), 1);
    assert!(matches!(ups[0].msg().body, Body::LogonRequest { reset_seq_num: true, .. }));
    let downs = down(&net, d);
    assert_eq!(downs[0].ty(), LOGON_RESPONSE);
    assert_eq!((downs[0].seq(), downs[0].lp()), (1, 1));
    assert_eq!(downs[0].msg().body, Body::LogonResponse { heartbeat_interval_s: 5 });
    assert!(matches!(downs[0].path, Path::Tcp { .. }));
    net.devices[d].dev.send_app(net.now, 150, b"tcp", true).unwrap();
    net.run_for(ms(50));
    assert_eq!(net.device_app(d), vec![(2, 250, b"tcp".to_vec())]);
    assert_eq!(net.count(Counter::LogonsAccepted), 1);
}

/// Anything but a LogonRequest first: LoggedOut and close, no session.
#[test]
fn rule03_tcp_first_message_not_logon_gets_logged_out_and_close() {
    let mut net = cap_net(sim_config());
    let cases: [(Body<'_>, &str); 3] = [
        (Body::Heartbeat { correlation_id: 0 }, "logon required"),
        (Body::App { type_id: 101, body: b"early" }, "logon required"),
        (Body::ResendRequest { from: 1, to: 0 }, "logon required"),
    ];
    for (i, (body, why)) in cases.into_iter().enumerate() {
        let mut raw = RawTcp::open(&mut net, i);
        raw.send(&mut net, body);
        net.run_for(ms(10));
        assert_eq!(logged_out_texts(&raw.down(&net)), vec![why.to_string()]);
        assert!(raw.closed(&net), "connection closed");
    }
    // A first frame that is not even a valid message.
    let mut raw = RawTcp::open(&mut net, 9);
    let mut bad = frame(1, 0, Body::Heartbeat { correlation_id: 0 });
    bad[4..6].copy_from_slice(&77u16.to_le_bytes());
    net.inject_tcp(raw.dev, &bad);
    raw.next += 1;
    net.run_for(ms(10));
    assert_eq!(logged_out_texts(&raw.down(&net)), vec!["unknown message type".to_string()]);
    assert!(raw.closed(&net));
    assert_eq!(net.gateway.session_count(), 0);
    assert_eq!(net.count(Counter::ProtocolViolations), 4);
}

// ---------------------------------------------------------------------------------------------
// Rule 4: sequence numbers.
// ---------------------------------------------------------------------------------------------

fn assert_numbering(net: &Net, d: usize) {
    // Up: LogonRequest is 1, every fresh sequenced message takes the next number.
    let ups: Vec<i64> = up(net, d)
        .iter()
        .filter(|w| !MessageType::from_u16(w.ty()).is_some_and(MessageType::is_handshake))
        .filter(|w| !w.resent())
        .map(Wire::seq)
        .collect();
    assert_eq!(ups, (1..=ups.len() as i64).collect::<Vec<_>>(), "device numbers");
    // Handshake messages use 0.
    assert!(
        wires(net, |c| c.dev == Some(d))
            .iter()
            .filter(|w| MessageType::from_u16(w.ty()).is_some_and(MessageType::is_handshake))
            .all(|w| w.seq() == 0)
    );
    // Down: LogonResponse is 1, then consecutive.
    let downs: Vec<i64> = down(net, d)
        .iter()
        .filter(|w| !MessageType::from_u16(w.ty()).is_some_and(MessageType::is_handshake))
        .map(Wire::seq)
        .collect();
    assert_eq!(downs, (1..=downs.len() as i64).collect::<Vec<_>>(), "gateway numbers");
}

#[test]
fn rule04_numbers_start_at_1_and_every_sequenced_message_takes_one() {
    for cfg in [udp_cfg(0), tcp_cfg(0)] {
        let mut net = cap_net(sim_config());
        let d = start(&mut net, cfg);
        for k in 0..3u8 {
            net.devices[d].dev.send_app(net.now, 101, &[k], true).unwrap();
            net.run_for(ms(30));
        }
        net.run_for(secs(12)); // heartbeats both ways
        let downs = down(&net, d);
        assert!(of_type(&downs, HEARTBEAT).len() >= 2);
        assert!(of_type(&up(&net, d), HEARTBEAT).len() >= 2);
        assert_numbering(&net, d);
        // lastProcessedSeqNum never acknowledges more than was delivered.
        let ups = up(&net, d);
        for w in &downs {
            let delivered = ups.iter().filter(|u| u.at <= w.at).map(Wire::seq).max().unwrap_or(0);
            assert!(w.lp() <= delivered, "ack {} beyond {delivered}", w.lp());
        }
    }
}

/// TCP resume: the LogonResponse says L, the client re-sends what it holds after L with the
/// resend flag and the original numbers, then continues at the next number.
#[test]
fn rule04_tcp_resume_continues_at_l_plus_1_resending_unacknowledged() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, tcp_cfg(0));
    for k in 0..5u8 {
        net.devices[d].dev.send_app(net.now, 250, &[k], false).unwrap(); // seqs 2..=6
    }
    net.flush(); // written to the stream...
    net.cut_tcp(d); // ...and lost with the connection
    net.run_for(ms(10));
    let id = net.session_id_of(d);
    assert_eq!(state_of(&net, id), Some(State::Detached));
    assert_eq!(net.session_info(id).unwrap().expected_in, 2, "L = 1");
    net.connect(d, false);
    net.run_for(ms(50));
    net.devices[d].dev.send_app(net.now, 250, b"new", false).unwrap();
    net.run_for(ms(50));
    let ups = up(&net, d);
    let logon_at = ups.iter().rposition(|w| w.ty() == LOGON_REQUEST).unwrap();
    let after = &ups[logon_at..];
    assert!(matches!(after[0].msg().body, Body::LogonRequest { reset_seq_num: false, .. }));
    assert_eq!(after[0].seq(), 7, "the resume LogonRequest carries the next number...");
    let resp = of_type(&down(&net, d), LOGON_RESPONSE);
    assert_eq!(resp.last().unwrap().lp(), 1, "L = 1");
    let apps: Vec<(i64, bool)> =
        after.iter().filter(|w| w.ty() == 250).map(|w| (w.seq(), w.resent())).collect();
    assert_eq!(
        apps,
        vec![(2, true), (3, true), (4, true), (5, true), (6, true), (7, false)],
        "re-sent with the flag and their numbers; the next new message takes 7 again: the \
         resume LogonRequest's number was not counted"
    );
    let mut want: Vec<Vec<u8>> = (0..5u8).map(|k| vec![k]).collect();
    want.push(b"new".to_vec());
    assert_eq!(net.gateway_app(d), want);
    assert!(net.devices[d].events.contains(&Ev::LoggedOn { last_processed: 1 }));
    assert_eq!(net.count(Counter::SessionsResumed), 1);
}

// ---------------------------------------------------------------------------------------------
// Rule 5: inbound sequence checks, UDP reliability, acknowledgement.
// ---------------------------------------------------------------------------------------------

#[test]
fn rule05_udp_duplicate_is_dropped_counted_and_reacknowledged() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let seq = net.devices[d].dev.send_app(net.now, 250, b"once", false).unwrap();
    net.run_for(ms(50));
    let copy = net
        .captured
        .iter()
        .find(|c| c.dev == Some(d) && c.up && datagram_has_body(&c.data, 250, b"once"))
        .unwrap()
        .data
        .clone();
    let t = net.now;
    let addr = net.devices[d].addr;
    net.inject_udp(addr, SESSION, &copy);
    net.run_for(ms(50));
    assert_eq!(net.count(Counter::DropDuplicate), 1);
    assert_eq!(net.gateway_app(d), vec![b"once".to_vec()], "delivered once");
    let acks: Vec<Wire> =
        of_type(&down(&net, d), HEARTBEAT).into_iter().filter(|w| w.at > t).collect();
    assert_eq!(acks.len(), 1, "the duplicate is acknowledged again");
    assert_eq!(acks[0].lp(), seq);
}

/// A message above the expected number is dropped; the device's retransmission (resend flag,
/// original numbers) fills the gap and everything is processed once, in order.
#[test]
fn rule05_udp_higher_than_expected_dropped_then_recovered_by_retransmission() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let dropped_once = Rc::new(Cell::new(false));
    let flag = dropped_once.clone();
    net.drop_rule = Some(Box::new(move |up, _, data| {
        let hit = up && !flag.get() && datagram_has_body(data, 250, b"a");
        if hit {
            flag.set(true);
        }
        hit
    }));
    let sa = net.devices[d].dev.send_app(net.now, 250, b"a", false).unwrap();
    net.run_for(ms(1));
    net.devices[d].dev.send_app(net.now, 250, b"b", false).unwrap();
    net.run_for(ms(1));
    net.devices[d].dev.send_app(net.now, 250, b"c", false).unwrap();
    net.run_for(ms(10));
    assert!(dropped_once.get());
    assert_eq!(net.count(Counter::DropOutOfOrder), 2, "b and c are ahead of a");
    assert!(net.gateway_app(d).is_empty());
    net.run_for(ms(500));
    assert_eq!(net.gateway_app(d), vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
    let rtx: Vec<(i64, bool)> =
        of_type(&up(&net, d), 250).iter().filter(|w| w.resent()).map(|w| (w.seq(), true)).collect();
    assert_eq!(rtx, vec![(sa, true), (sa + 1, true), (sa + 2, true)]);
    assert_eq!(net.devices[d].dev.unacked(), 0, "all acknowledged");
    assert!(net.devices[d].dev.stats().retransmits >= 3);
}

#[test]
fn rule05_tcp_lower_without_resend_flag_is_fatal() {
    let mut net = cap_net(sim_config());
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"lower", b"pw");
    raw.send(&mut net, Body::Heartbeat { correlation_id: 0 });
    raw.send(&mut net, Body::Heartbeat { correlation_id: 0 });
    net.run_for(ms(10));
    net.inject_tcp(raw.dev, &frame(2, 0, Body::Heartbeat { correlation_id: 0 }));
    net.run_for(ms(10));
    assert_eq!(
        logged_out_texts(&raw.down(&net)),
        vec!["sequence error: expected 4 got 2".to_string()]
    );
    assert!(raw.closed(&net));
    assert_eq!(net.count(Counter::ProtocolViolations), 1);
    assert_eq!(net.gateway.session_count(), 0);
}

#[test]
fn rule05_tcp_lower_with_resend_flag_is_a_counted_duplicate() {
    let mut net = cap_net(sim_config());
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"lowerok", b"pw");
    raw.send(&mut net, Body::Heartbeat { correlation_id: 0 });
    net.run_for(ms(10));
    net.inject_tcp(raw.dev, &frame(2, FLAG_RESEND, Body::Heartbeat { correlation_id: 0 }));
    raw.send(&mut net, Body::TestRequest { correlation_id: 33 });
    net.run_for(ms(10));
    assert_eq!(net.count(Counter::DropDuplicate), 1);
    assert!(logged_out_texts(&raw.down(&net)).is_empty());
    assert!(!raw.closed(&net));
    let hb = of_type(&raw.down(&net), HEARTBEAT);
    assert!(hb.iter().any(|w| w.msg().body == Body::Heartbeat { correlation_id: 33 }));
}

#[test]
fn rule05_tcp_higher_is_fatal() {
    let mut net = cap_net(sim_config());
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"higher", b"pw");
    net.inject_tcp(raw.dev, &frame(9, 0, Body::Heartbeat { correlation_id: 0 }));
    net.run_for(ms(10));
    assert_eq!(
        logged_out_texts(&raw.down(&net)),
        vec!["sequence error: expected 2 got 9".to_string()]
    );
    assert!(raw.closed(&net));
    assert_eq!(net.count(Counter::ProtocolViolations), 1);
}

/// With nothing else going out, the gateway acknowledges within `ack_delay` (20 ms) with a
/// Heartbeat, on UDP and on TCP; the device then forgets the message.
#[test]
fn rule05_gateway_acknowledges_within_ack_delay_with_a_heartbeat() {
    for cfg in [udp_cfg(0), tcp_cfg(0)] {
        let mut net = cap_net(sim_config());
        let d = start(&mut net, cfg);
        net.run_for(ms(100));
        let seq = net.devices[d].dev.send_app(net.now, 250, b"ack me", false).unwrap();
        assert_eq!(net.devices[d].dev.unacked(), 1);
        net.run_for(ms(100));
        let arrived = of_type(&up(&net, d), 250)[0].at;
        let next: Vec<Wire> = down(&net, d).into_iter().filter(|w| w.at > arrived).collect();
        assert_eq!(next[0].msg().body, Body::Heartbeat { correlation_id: 0 });
        assert_eq!(next[0].lp(), seq);
        assert!(next[0].at - arrived <= ms(21), "acked after {:?}", next[0].at - arrived);
        assert_eq!(net.devices[d].dev.unacked(), 0);
    }
}

/// A reply that does not come within the retransmit time makes the device send TestRequest;
/// the answer reveals the lost tail, which the device recovers with a ResendRequest.
#[test]
fn rule05_lost_tail_revealed_by_test_request() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let once = Rc::new(Cell::new(false));
    let flag = once.clone();
    net.drop_rule = Some(Box::new(move |up, _, data| {
        let hit = !up && !flag.get() && datagram_has_body(data, 201, b"q");
        if hit {
            flag.set(true);
        }
        hit
    }));
    let t0 = net.now;
    net.devices[d].dev.send_app(net.now, 101, b"q", true).unwrap();
    net.run_for(ms(1_000));
    assert!(once.get(), "the reply was lost once");
    let lost = wires(&net, |c| c.dev == Some(d) && c.dropped);
    let lost_seq = of_type(&lost, 201)[0].seq();
    let tr = of_type(&up(&net, d), TEST_REQUEST);
    assert_eq!(tr.len(), 1);
    let waited = tr[0].at - t0;
    assert!(waited >= ms(200) && waited <= ms(202), "TestRequest after {waited:?}");
    let rr = of_type(&up(&net, d), RESEND_REQUEST);
    assert_eq!(rr.len(), 1);
    assert_eq!(rr[0].msg().body, Body::ResendRequest { from: lost_seq, to: 0 });
    let apps: Vec<&Ev> =
        net.devices[d].events.iter().filter(|e| matches!(e, Ev::App { .. })).collect();
    assert_eq!(
        apps,
        vec![&Ev::App { seq: lost_seq, type_id: 201, body: b"q".to_vec(), resent: true }]
    );
}

// ---------------------------------------------------------------------------------------------
// Rule 6: heartbeats and liveness.
// ---------------------------------------------------------------------------------------------

/// An idle session: each side sends Heartbeat(0) whenever it has sent nothing for H; the
/// gateway's only other heartbeats acknowledge the device's (rule 5), and nobody needs a
/// TestRequest.
#[test]
fn rule06_idle_session_exchanges_heartbeats_every_h() {
    for cfg in [udp_cfg(0), tcp_cfg(0)] {
        let mut net = cap_net(sim_config());
        let d = start(&mut net, cfg);
        net.run_for(secs(31));
        let ups = up(&net, d);
        let dev_hb = of_type(&ups, HEARTBEAT);
        assert_eq!(dev_hb.len(), 6, "device: one heartbeat per H");
        let logon = of_type(&ups, LOGON_REQUEST)[0].at;
        let mut last = logon;
        for h in &dev_hb {
            let gap = h.at - last;
            assert!(gap >= ms(4_999) && gap <= ms(5_002), "device heartbeat gap {gap:?}");
            assert_eq!(h.msg().body, Body::Heartbeat { correlation_id: 0 });
            last = h.at;
        }
        let downs: Vec<Wire> =
            down(&net, d).into_iter().skip_while(|w| w.ty() != LOGON_RESPONSE).collect();
        let mut idle = 0;
        for p in downs.windows(2) {
            let (prev, hb) = (&p[0], &p[1]);
            assert_eq!(hb.msg().body, Body::Heartbeat { correlation_id: 0 }, "only heartbeats");
            let gap = hb.at - prev.at;
            assert!(gap <= ms(5_002), "gateway silent for {gap:?}");
            if gap >= ms(4_998) {
                idle += 1;
            } else {
                assert!(hb.lp() > prev.lp(), "an early heartbeat must acknowledge something new");
            }
        }
        assert!(idle >= 1, "the gateway's own idle heartbeat");
        assert!(downs.len() - 1 <= 2 * dev_hb.len() + 1, "{} gateway heartbeats", downs.len() - 1);
        assert!(of_type(&ups, TEST_REQUEST).is_empty());
        assert_eq!(net.count(Counter::TestRequestsSent), 0);
        assert_eq!(state_of(&net, net.session_id_of(d)), Some(State::Active));
        assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    }
}

/// An idle session over a link with 5 ms each way: per idle interval the gateway sends one
/// datagram (its Heartbeat, which also acknowledges the device's), from the first interval on.
/// The device heartbeats H after its LogonRequest, its last send (rule 6), so its Heartbeat
/// reaches the gateway before the gateway's own is due H after the LogonResponse. It used to
/// count H from the LogonResponse's arrival, a round trip later: the gateway sent its own
/// Heartbeat, then acknowledged the device's with another, 1.5 datagrams per device heartbeat
/// over the 60 s hold of `scripts/load-million.sh` (issue 11).
#[test]
fn rule06_gateway_sends_one_datagram_per_idle_interval() {
    for cfg in [udp_cfg(0), tcp_cfg(0)] {
        let mut net = cap_net(sim_config());
        for f in [&mut net.faults_up, &mut net.faults_down] {
            f.delay_min = ms(5);
        }
        let d = start(&mut net, cfg);
        net.run_for(secs(61));
        let logon = of_type(&down(&net, d), LOGON_RESPONSE)[0].at;
        let dev_hb = of_type(&up(&net, d), HEARTBEAT);
        assert_eq!(dev_hb.len(), 12, "device: one heartbeat per H");
        // Captured datagrams (UDP) or stream chunks (TCP) from the gateway after its logon answer.
        let gw: Vec<Timestamp> = net
            .captured
            .iter()
            .filter(|c| c.dev == Some(d) && !c.up && !c.dropped && c.at > logon)
            .map(|c| c.at)
            .collect();
        assert_eq!(gw.len(), dev_hb.len(), "gateway sends for {} device heartbeats", dev_hb.len());
        for (g, h) in gw.iter().zip(&dev_hb) {
            let after = *g - h.at;
            assert!(after <= ms(26), "the gateway's heartbeat {after:?} after the device's");
        }
        for w in of_type(&down(&net, d), HEARTBEAT) {
            assert_eq!(w.msg().body, Body::Heartbeat { correlation_id: 0 });
        }
        assert_eq!(net.count(Counter::TestRequestsSent), 0);
        assert_eq!(net.count(Counter::DropDuplicate), 0, "every heartbeat acknowledged in time");
        assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    }
}

/// Regression: a device that has just sent application messages and then goes quiet must
/// still heartbeat H after its last send (it used to wait until the gateway's TestRequest).
#[test]
fn rule06_device_heartbeats_h_after_its_last_send() {
    for cfg in [udp_cfg(0), tcp_cfg(0)] {
        let mut net = cap_net(sim_config());
        let d = start(&mut net, cfg);
        net.run_for(ms(500));
        net.devices[d].dev.send_app(net.now, 101, b"x", true).unwrap();
        net.run_for(secs(12));
        let ups = up(&net, d);
        let sent = of_type(&ups, 101)[0].at;
        let hbs = of_type(&ups, HEARTBEAT);
        assert_eq!(hbs.len(), 2);
        assert!(hbs[0].at - sent >= ms(4_999) && hbs[0].at - sent <= ms(5_002));
        assert!(hbs[1].at - hbs[0].at >= ms(4_999) && hbs[1].at - hbs[0].at <= ms(5_002));
        assert!(of_type(&down(&net, d), TEST_REQUEST).is_empty(), "no probe needed");
        assert_eq!(net.count(Counter::TestRequestsSent), 0);
    }
}

/// UDP: the gateway hears nothing for 1.5 H → TestRequest; a further H → LoggedOut (best
/// effort) and the session is detached, not released.
#[test]
fn rule06_silent_udp_device_gets_test_request_then_is_detached() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    net.drop_rule = Some(Box::new(|up, _, _| up));
    let last_heard = up(&net, d).last().unwrap().at;
    net.run_for(secs(20));
    let downs: Vec<Wire> = down(&net, d).into_iter().filter(|w| w.at > last_heard).collect();
    let tr = of_type(&downs, TEST_REQUEST);
    assert_eq!(tr.len(), 1);
    let t = tr[0].at - last_heard;
    assert!(t >= ms(7_500) && t <= ms(7_501), "TestRequest after {t:?}");
    let out: Vec<&Wire> = downs.iter().filter(|w| w.ty() == LOGGED_OUT).collect();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].logged_out().as_deref(), Some("heartbeat timeout"));
    let t = out[0].at - last_heard;
    assert!(t >= ms(12_500) && t <= ms(12_501), "lost after {t:?}");
    let id = net.devices[d].dev.session_id();
    assert_eq!(state_of(&net, id), Some(State::Detached));
    assert_eq!(net.gateway.session_count(), 1, "kept for resume");
    assert_eq!(net.count(Counter::SessionsLost), 1);
    assert_eq!(net.count(Counter::SessionsDetached), 1);
    assert_eq!(net.count(Counter::TestRequestsSent), 1);
}

/// TCP: the same timing, then the connection is closed and the session detached.
#[test]
fn rule06_silent_tcp_client_is_lost_connection_closed_session_detached() {
    let mut net = cap_net(sim_config());
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"silent", b"pw");
    let logon_at = raw.down(&net)[0].at;
    net.run_for(secs(20));
    let downs = raw.down(&net);
    let kinds: Vec<u16> = downs.iter().map(Wire::ty).collect();
    assert_eq!(kinds, vec![LOGON_RESPONSE, HEARTBEAT, TEST_REQUEST, LOGGED_OUT]);
    // TCP segments take 0.1-0.5 ms each way in the simulation.
    let near = |w: &Wire, d: Duration| {
        w.at.as_nanos().abs_diff((logon_at + d).as_nanos()) <= ms(1).as_nanos() as u64
    };
    assert!(near(&downs[1], ms(5_000)), "heartbeat after H");
    assert!(near(&downs[2], ms(7_500)), "TestRequest after 1.5 H");
    assert!(near(&downs[3], ms(12_500)), "lost after 2.5 H");
    assert_eq!(downs[3].logged_out().as_deref(), Some("heartbeat timeout"));
    assert!(raw.closed(&net));
    let info = net.gateway.sessions().next().unwrap();
    assert_eq!(info.state, State::Detached);
    assert_eq!(info.link, Link::None);
    assert_eq!(net.count(Counter::SessionsLost), 1);
    assert_eq!(net.count(Counter::SessionsDetached), 1);
}

// ---------------------------------------------------------------------------------------------
// Rule 7: resend.
// ---------------------------------------------------------------------------------------------

/// Expected answer to a resend of `originals` (sorted by number): each application message byte
/// for byte with the resend flag, each maximal run of session messages one GapFill.
fn expected_resend(originals: &[Wire]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut run: Option<(i64, i64)> = None;
    let close_run = |run: &mut Option<(i64, i64)>, out: &mut Vec<Vec<u8>>| {
        if let Some((from, to)) = run.take() {
            out.push(frame(from, FLAG_RESEND, Body::GapFill { new_seq_num: to + 1 }));
        }
    };
    for w in originals {
        if w.ty() >= 100 {
            close_run(&mut run, &mut out);
            let mut bytes = w.frame.clone();
            bytes[1] |= FLAG_RESEND;
            out.push(bytes);
        } else {
            run = Some(match run {
                Some((from, _)) => (from, w.seq()),
                None => (w.seq(), w.seq()),
            });
        }
    }
    close_run(&mut run, &mut out);
    out
}

/// Strips what legitimately differs between an expected GapFill and the one sent: the ack and
/// the send time (a GapFill is a new message; only its number, flag and body are fixed).
fn gapfill_key(f: &[u8]) -> Vec<u8> {
    let mut k = f.to_vec();
    if u16::from_le_bytes([k[4], k[5]]) == GAP_FILL {
        k[16..32].fill(0);
    }
    k
}

#[test]
fn rule07_resend_app_byte_for_byte_and_one_gapfill_per_session_run() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let id = net.devices[d].dev.session_id();
    let h = handle_of(&net, id);
    let block = Rc::new(Cell::new(true));
    let b = block.clone();
    let dev = d;
    net.drop_rule = Some(Box::new(move |up, i, _| !up && i == Some(dev) && b.get()));
    let t_block = net.now;
    net.gateway.send(net.now, h, 300, b"A1").unwrap();
    net.run_for(ms(1));
    net.gateway.send(net.now, h, 300, b"A2").unwrap();
    net.run_for(ms(1));
    // Two device messages acknowledged by two Heartbeats: a run of two session messages.
    net.devices[d].dev.send_app(net.now, 250, b"u1", false).unwrap();
    net.run_for(ms(50));
    net.devices[d].dev.send_app(net.now, 250, b"u2", false).unwrap();
    net.run_for(ms(50));
    net.gateway.send(net.now, h, 300, b"A3").unwrap();
    net.run_for(ms(1));
    block.set(false);
    let originals: Vec<Wire> = {
        let mut v = wires(&net, |c| c.dev == Some(d) && !c.up && c.dropped && c.at >= t_block);
        v.sort_by_key(Wire::seq);
        v
    };
    let kinds: Vec<u16> = originals.iter().map(Wire::ty).collect();
    assert_eq!(kinds, vec![300, 300, HEARTBEAT, HEARTBEAT, 300], "what the device missed");
    let first_missing = originals[0].seq();
    let t_live = net.now;
    let a4 = net.gateway.send(net.now, h, 300, b"A4").unwrap();
    net.run_for(ms(500));

    let rr = of_type(&up(&net, d), RESEND_REQUEST);
    assert_eq!(rr.len(), 1, "one ResendRequest");
    assert_eq!(rr[0].msg().body, Body::ResendRequest { from: first_missing, to: 0 });
    let resent: Vec<Wire> =
        down(&net, d).into_iter().filter(|w| w.at > rr[0].at && w.resent()).collect();
    let a4_original: Vec<Wire> =
        down(&net, d).into_iter().filter(|w| w.at >= t_live && w.seq() == a4).collect();
    let mut all = originals.clone();
    all.push(a4_original[0].clone());
    let want: Vec<Vec<u8>> = expected_resend(&all).iter().map(|f| gapfill_key(f)).collect();
    let got: Vec<Vec<u8>> = resent.iter().map(|w| gapfill_key(&w.frame)).collect();
    assert_eq!(got, want, "application messages byte for byte, session runs as one GapFill");
    let gf = of_type(&resent, GAP_FILL);
    assert_eq!(gf.len(), 1);
    assert_eq!(gf[0].seq(), originals[2].seq());
    assert_eq!(gf[0].msg().body, Body::GapFill { new_seq_num: originals[3].seq() + 1 });
    // The device saw one ordered stream, each message once.
    let bodies: Vec<(Vec<u8>, bool)> = net.devices[d]
        .events
        .iter()
        .filter_map(|e| match e {
            Ev::App { type_id: 300, body, resent, .. } => Some((body.clone(), *resent)),
            _ => None,
        })
        .collect();
    assert_eq!(
        bodies,
        vec![
            (b"A1".to_vec(), true),
            (b"A2".to_vec(), true),
            (b"A3".to_vec(), true),
            (b"A4".to_vec(), true)
        ]
    );
    assert_eq!(net.count(Counter::ResendRequests), 1);
    assert_eq!(net.count(Counter::MessagesResent), 4);
    assert_eq!(net.count(Counter::GapFillsSent), 1);
}

/// Empty, reversed and beyond-what-was-sent ranges get Reject(INVALID_FIELD_VALUE) naming the
/// request; the session goes on and a valid request is served.
#[test]
fn rule07_invalid_resend_ranges_are_rejected() {
    let mut net = cap_net(sim_config());
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"ranges", b"pw");
    let id = net.gateway.sessions().next().unwrap().id;
    let h = handle_of(&net, id);
    for k in 0..3u8 {
        net.gateway.send(net.now, h, 300, &[k]).unwrap(); // 2, 3, 4
        net.run_for(ms(1));
    }
    let mut requests = Vec::new();
    for (from, to) in [(0i64, 0i64), (0, 3), (4, 3), (1_000, 0), (2, 1_000), (-1, 0)] {
        let seq = if from < 0 {
            // A negative number does not even decode: it is a bad field, also rejected.
            let s = raw.next;
            raw.next += 1;
            let mut f = frame(s, 0, Body::ResendRequest { from: 1, to: 0 });
            f[32..40].copy_from_slice(&from.to_le_bytes());
            net.inject_tcp(raw.dev, &f);
            s
        } else {
            raw.send(&mut net, Body::ResendRequest { from, to })
        };
        requests.push(seq);
        net.run_for(ms(5));
    }
    let rejects: Vec<(i64, u8)> = of_type(&raw.down(&net), REJECT)
        .iter()
        .map(|w| match w.msg().body {
            Body::Reject { ref_seq_num, reason, .. } => (ref_seq_num, reason),
            _ => unreachable!(),
        })
        .collect();
    let want: Vec<(i64, u8)> = requests.iter().map(|&s| (s, 4)).collect();
    assert_eq!(rejects, want, "each request rejected with INVALID_FIELD_VALUE");
    assert!(logged_out_texts(&raw.down(&net)).is_empty());
    assert_eq!(net.count(Counter::ResendRequests), 0);
    // Still active: a valid range is answered.
    raw.send(&mut net, Body::ResendRequest { from: 2, to: 4 });
    net.run_for(ms(5));
    let resent: Vec<(i64, u16)> =
        raw.down(&net).iter().filter(|w| w.resent()).map(|w| (w.seq(), w.ty())).collect();
    assert_eq!(resent, vec![(2, 300), (3, 300), (4, 300)]);
    assert_eq!(state_of(&net, id), Some(State::Active));
}

/// A request reaching below what the journal retains: LoggedOut naming the oldest retained
/// number, and close — never a silent gap. At the edge of the window it is served.
#[test]
fn rule07_request_below_journal_window_logs_out_with_oldest_retained() {
    let mut cfg = sim_config();
    cfg.session.journal.messages_per_session = 4;
    let mut net = cap_net(cfg);
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"window", b"pw");
    let id = net.gateway.sessions().next().unwrap().id;
    let h = handle_of(&net, id);
    for k in 0..10u8 {
        net.gateway.send(net.now, h, 300, &[k]).unwrap(); // 2..=11
        net.run_for(ms(1));
    }
    // 8..=11 are retained.
    raw.send(&mut net, Body::ResendRequest { from: 8, to: 0 });
    net.run_for(ms(5));
    let resent: Vec<i64> = raw.down(&net).iter().filter(|w| w.resent()).map(Wire::seq).collect();
    assert_eq!(resent, vec![8, 9, 10, 11]);
    assert!(!raw.closed(&net));
    assert_eq!(net.stats.resends_served, 1, "the endpoint reports the served resend");
    raw.send(&mut net, Body::ResendRequest { from: 7, to: 9 });
    net.run_for(ms(5));
    assert_eq!(
        logged_out_texts(&raw.down(&net)),
        vec!["resend window exceeded: oldest retained 8".to_string()]
    );
    assert!(raw.closed(&net));
    assert_eq!(net.count(Counter::ResendWindowExceeded), 1);
    assert_eq!(net.gateway.session_count(), 0);
}

/// The same through a real UDP device after a long downlink blackhole: the device is told, it
/// never silently skips what it missed.
#[test]
fn rule07_udp_device_missing_more_than_the_journal_is_logged_out() {
    let mut cfg = sim_config();
    cfg.session.journal.messages_per_session = 4;
    let mut net = cap_net(cfg);
    let d = start(&mut net, udp_cfg(0));
    let h = handle_of(&net, net.devices[d].dev.session_id());
    let block = Rc::new(Cell::new(true));
    let b = block.clone();
    net.drop_rule = Some(Box::new(move |up, _, _| !up && b.get()));
    let first = net.gateway.send(net.now, h, 300, &[0]).unwrap();
    net.run_for(ms(1));
    for k in 1..10u8 {
        net.gateway.send(net.now, h, 300, &[k]).unwrap();
        net.run_for(ms(1));
    }
    block.set(false);
    net.gateway.send(net.now, h, 300, b"live").unwrap();
    net.run_for(ms(500));
    let rr = of_type(&up(&net, d), RESEND_REQUEST);
    assert_eq!(rr[0].msg().body, Body::ResendRequest { from: first, to: 0 });
    let oldest = first + 7; // 11 sent (10 blocked, 1 live); the journal keeps the last 4
    assert_eq!(
        net.device_ended(d),
        Some(format!("resend window exceeded: oldest retained {oldest}"))
    );
    assert!(net.device_app(d).is_empty(), "nothing delivered past the gap");
    assert_eq!(net.gateway.session_count(), 0);
}

/// Live messages produced while a resend is under way go out after it, so the device sees one
/// ordered stream.
#[test]
fn rule07_live_messages_during_a_resend_arrive_after_it_in_order() {
    let mut net = cap_net(sim_config());
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"during", b"pw");
    let id = net.gateway.sessions().next().unwrap().id;
    let h = handle_of(&net, id);
    for k in 0..5u8 {
        net.gateway.send(net.now, h, 300, &[k]).unwrap(); // 2..=6
        net.run_for(ms(1));
    }
    let t = net.now;
    // One chunk: the ResendRequest, then an echo request whose reply is produced while the
    // resend is under way.
    let r = frame(2, 0, Body::ResendRequest { from: 2, to: 0 });
    let e = frame(3, 0, Body::App { type_id: 101, body: b"live" });
    net.inject_tcp(raw.dev, &[r, e].concat());
    raw.next = 4;
    net.run_for(ms(10));
    let after: Vec<(i64, u16, bool)> = raw
        .down(&net)
        .iter()
        .filter(|w| w.at > t)
        .filter(|w| w.ty() != HEARTBEAT)
        .map(|w| (w.seq(), w.ty(), w.resent()))
        .collect();
    assert_eq!(
        after,
        vec![
            (2, 300, true),
            (3, 300, true),
            (4, 300, true),
            (5, 300, true),
            (6, 300, true),
            (7, 201, false)
        ]
    );
}

/// Waiting live output is bounded by the journal: a live message that would evict what the
/// resend under way still has to send is an overflow, answered with LoggedOut and close.
#[test]
fn rule07_live_output_overflowing_during_a_resend_is_a_logged_out() {
    let mut cfg = sim_config();
    cfg.session.journal.messages_per_session = 4;
    let mut net = cap_net(cfg);
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"overflow", b"pw");
    let id = net.gateway.sessions().next().unwrap().id;
    let h = handle_of(&net, id);
    for k in 0..4u8 {
        net.gateway.send(net.now, h, 300, &[k]).unwrap(); // 2..=5: the journal is full
        net.run_for(ms(1));
    }
    let r = frame(2, 0, Body::ResendRequest { from: 2, to: 0 });
    let e = frame(3, 0, Body::App { type_id: 101, body: b"live" });
    net.inject_tcp(raw.dev, &[r, e].concat());
    net.run_for(ms(10));
    assert_eq!(
        logged_out_texts(&raw.down(&net)),
        vec!["output queue overflow during resend".to_string()]
    );
    assert!(raw.closed(&net));
    assert_eq!(net.count(Counter::OutputOverflow), 1);
    assert_eq!(net.gateway.session_count(), 0);
}

/// Resend output is paced: a large resend for one session does not hold back another
/// session's reply until it is done.
#[test]
fn rule07_a_large_resend_does_not_starve_other_sessions() {
    let mut net = cap_net(sim_config());
    let mut a = RawUdp::new(1, b"BIGRESEND", 1);
    let mut b = RawUdp::new(2, b"OTHER001", 2);
    for r in [&mut a, &mut b] {
        r.connect(&mut net);
        r.register(&mut net);
        r.config_and_logon(&mut net);
    }
    let ha = handle_of(&net, a.id);
    let body = [7u8; 200];
    for _ in 0..300 {
        net.gateway.send(net.now, ha, 300, &body).unwrap();
        net.run_for(ms(1));
    }
    let t = net.now;
    a.send(&mut net, Body::ResendRequest { from: 2, to: 0 });
    b.send(&mut net, Body::App { type_id: 101, body: b"me too" });
    net.run_for(ms(10));
    let order: Vec<SocketAddr> = net
        .captured
        .iter()
        .filter(|c| !c.up && c.at > t)
        .filter_map(|c| match c.path {
            Path::Udp { to, .. } => Some(to),
            Path::Tcp { .. } => None,
        })
        .collect();
    let a_total = order.iter().filter(|&&x| x == a.addr).count();
    assert!(a_total >= 50, "the resend took {a_total} datagrams");
    let b_at = order.iter().position(|&x| x == b.addr).expect("B answered");
    assert_eq!(b_at, 8, "B's reply goes out after one burst of A's resend (session_burst 8)");
    let echoed = of_type(&b.received(&net), 201);
    assert_eq!(echoed.len(), 1);
}

// ---------------------------------------------------------------------------------------------
// Rule 8: detach and resume.
// ---------------------------------------------------------------------------------------------

/// UDP: the session detaches after silence; the device handshakes again from a new address and
/// gets the same session id with resumed = 1; everything missed both ways is recovered.
#[test]
fn rule08_udp_detach_then_rehandshake_from_new_address_resumes_everything() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let id = net.devices[d].dev.session_id();
    let h = handle_of(&net, id);
    for k in 0..2u8 {
        net.devices[d].dev.send_app(net.now, 101, &[k], true).unwrap();
        net.run_for(ms(20));
    }
    let cut = Rc::new(Cell::new(true));
    let c = cut.clone();
    net.drop_rule = Some(Box::new(move |_, _, _| c.get()));
    for k in 0..3u8 {
        net.gateway.send(net.now, h, 300, &[k]).unwrap();
    }
    for k in 2..4u8 {
        net.devices[d].dev.send_app(net.now, 101, &[k], true).unwrap();
    }
    net.run_for(secs(14));
    assert_eq!(state_of(&net, id), Some(State::Detached));
    assert_eq!(net.count(Counter::SessionsDetached), 1);
    assert!(matches!(net.devices[d].dev.state(), DeviceState::Ended(EndReason::Lost)));
    cut.set(false);
    net.roam(d);
    net.connect(d, false);
    net.run_for(secs(2));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    assert_eq!(net.devices[d].dev.session_id(), id, "same session id");
    let regs: Vec<&Ev> =
        net.devices[d].events.iter().filter(|e| matches!(e, Ev::Registered { .. })).collect();
    assert_eq!(regs.last().unwrap(), &&Ev::Registered { session_id: id, resumed: true });
    let acc = of_type(&down(&net, d), REGISTRATION_ACCEPT);
    assert_eq!(
        acc.last().unwrap().msg().body,
        Body::RegistrationAccept { session_id: id, resumed: true }
    );
    assert_eq!(net.session_info(id).unwrap().link, Link::Udp(net.devices[d].addr));
    // The device's four requests reached the application once each, in order...
    let sent: Vec<Vec<u8>> = (0..4u8).map(|k| vec![k]).collect();
    assert_eq!(net.gateway_app(d), sent);
    // ...and the device got the three pushes and four echoes once each, in order.
    let got: Vec<(u16, Vec<u8>)> = net.device_app(d).into_iter().map(|m| (m.1, m.2)).collect();
    let mut want = vec![(201, vec![0]), (201, vec![1])];
    want.extend((0..3u8).map(|k| (300, vec![k])));
    want.extend((2..4u8).map(|k| (201, vec![k])));
    assert_eq!(got, want);
    assert_eq!(net.count(Counter::HandshakesResumed), 1);
    assert_eq!(net.count(Counter::SessionsResumed), 1);
}

#[test]
fn rule08_tcp_reconnect_with_same_username_resumes() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, tcp_cfg(0));
    let id = net.session_id_of(d);
    net.devices[d].dev.send_app(net.now, 101, b"before", true).unwrap();
    net.run_for(ms(20));
    net.cut_tcp(d);
    net.run_for(ms(10));
    assert_eq!(state_of(&net, id), Some(State::Detached));
    assert_eq!(net.count(Counter::SessionsDetached), 1);
    let next_out = net.session_info(id).unwrap().next_out;
    net.connect(d, false);
    net.run_for(ms(50));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    assert_eq!(net.session_id_of(d), id, "same session");
    let resp = of_type(&down(&net, d), LOGON_RESPONSE);
    assert_eq!(resp.len(), 2);
    assert_eq!(resp[1].seq(), next_out, "the gateway's numbers continue");
    net.devices[d].dev.send_app(net.now, 101, b"after", true).unwrap();
    net.run_for(ms(20));
    assert_eq!(net.gateway_app(d), vec![b"before".to_vec(), b"after".to_vec()]);
    let replies: Vec<Vec<u8>> = net.device_app(d).into_iter().map(|m| m.2).collect();
    assert_eq!(replies, vec![b"before".to_vec(), b"after".to_vec()]);
    assert_eq!(net.count(Counter::SessionsResumed), 1);
}

/// resetSeqNum = 1 discards the old state: both sequences restart at 1.
#[test]
fn rule08_reset_seq_num_discards_old_state() {
    for cfg in [tcp_cfg(0), udp_cfg(0)] {
        let mut net = cap_net(sim_config());
        let d = start(&mut net, cfg);
        let id = net.session_id_of(d);
        for k in 0..3u8 {
            net.devices[d].dev.send_app(net.now, 101, &[k], true).unwrap();
            net.run_for(ms(20));
        }
        assert!(net.session_info(id).unwrap().next_out > 4);
        if cfg.transport == Transport::Tcp {
            net.cut_tcp(d);
        }
        net.run_for(ms(10));
        net.connect(d, true);
        net.run_for(ms(100));
        assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
        let logons = of_type(&up(&net, d), LOGON_REQUEST);
        let last = logons.last().unwrap();
        assert!(matches!(last.msg().body, Body::LogonRequest { reset_seq_num: true, .. }));
        assert_eq!(last.seq(), 1);
        let resp = of_type(&down(&net, d), LOGON_RESPONSE);
        assert_eq!((resp.last().unwrap().seq(), resp.last().unwrap().lp()), (1, 1));
        let info = net.session_info(net.session_id_of(d)).unwrap();
        assert_eq!((info.expected_in, info.next_out), (2, 2));
        net.devices[d].dev.send_app(net.now, 101, b"fresh", true).unwrap();
        net.run_for(ms(20));
        let last_app = net.device_app(d).pop().unwrap();
        assert_eq!(last_app, (2, 201, b"fresh".to_vec()), "numbers restart");
    }
}

/// A detached session is released after `session.detached_ttl`; a resume after that finds
/// nothing.
#[test]
fn rule08_detached_session_released_after_ttl() {
    let mut cfg = sim_config();
    cfg.session.detached_ttl = secs(30);
    let mut net = cap_net(cfg);
    let d = start(&mut net, tcp_cfg(0));
    let id = net.session_id_of(d);
    net.devices[d].dev.send_app(net.now, 101, b"x", true).unwrap();
    net.run_for(ms(20));
    net.cut_tcp(d);
    let t = net.now;
    net.run_until(t + ms(29_900));
    assert_eq!(state_of(&net, id), Some(State::Detached));
    net.run_until(t + ms(30_100));
    assert_eq!(net.gateway.session_count(), 0);
    assert_eq!(net.count(Counter::SessionsExpired), 1);
    // Resuming now: nothing to resume (module decision for resetSeqNum = 0 and seq > 1).
    net.connect(d, false);
    net.run_for(ms(50));
    assert_eq!(net.device_ended(d).as_deref(), Some("nothing to resume"));
    assert_eq!(net.gateway.session_count(), 0);

    // UDP: after expiry the same deviceUid gets a new session (resumed = 0) and the device
    // learns that its stream was reset.
    let mut cfg = sim_config();
    cfg.session.detached_ttl = secs(30);
    let mut net = cap_net(cfg);
    let d = start(&mut net, udp_cfg(0));
    let old = net.devices[d].dev.session_id();
    let cut = Rc::new(Cell::new(true));
    let c = cut.clone();
    net.drop_rule = Some(Box::new(move |_, _, _| c.get()));
    net.run_for(secs(14)); // detached after 12.5 s of silence
    assert_eq!(state_of(&net, old), Some(State::Detached));
    net.run_for(secs(30));
    assert_eq!(net.gateway.session_count(), 0);
    cut.set(false);
    net.connect(d, false);
    net.run_for(secs(1));
    let new = net.devices[d].dev.session_id();
    assert_ne!(new, old);
    assert!(net.devices[d].events.contains(&Ev::StreamReset));
    assert!(net.devices[d].events.contains(&Ev::Registered { session_id: new, resumed: false }));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
}

// ---------------------------------------------------------------------------------------------
// Rule 9: one live session per deviceUid / username.
// ---------------------------------------------------------------------------------------------

#[test]
fn rule09_udp_second_device_with_same_uid_displaces_the_first() {
    let mut net = cap_net(sim_config());
    let a = start(&mut net, udp_cfg(0));
    let id = net.devices[a].dev.session_id();
    let b = net.add_device(udp_cfg(0)); // same deviceUid, another address
    net.connect(b, true);
    net.run_for(ms(500));
    assert_eq!(net.device_ended(a).as_deref(), Some("displaced by a new connection"));
    assert_eq!(net.devices[a].dev.state(), DeviceState::Ended(EndReason::LoggedOut));
    assert_eq!(net.devices[b].dev.state(), DeviceState::Active);
    assert!(net.devices[b].events.contains(&Ev::Registered { session_id: id, resumed: true }));
    assert_eq!(net.gateway.session_count(), 1);
    assert_eq!(net.session_info(id).unwrap().link, Link::Udp(net.devices[b].addr));
    assert_eq!(net.count(Counter::SessionsDisplaced), 1);
    net.devices[b].dev.send_app(net.now, 101, b"b", true).unwrap();
    net.run_for(ms(20));
    assert_eq!(net.device_app(b).last().unwrap().2, b"b".to_vec());
}

#[test]
fn rule09_tcp_second_connection_with_same_username_displaces_the_first() {
    let mut net = cap_net(sim_config());
    let a = start(&mut net, tcp_cfg(0));
    let b = net.add_device(tcp_cfg(0)); // same username
    net.connect(b, true);
    net.run_for(ms(100));
    assert_eq!(net.device_ended(a).as_deref(), Some("displaced by a new connection"));
    assert!(net.devices[a].conn.is_none(), "the older connection is closed");
    assert_eq!(net.devices[b].dev.state(), DeviceState::Active);
    assert_eq!(net.gateway.session_count(), 1);
    assert_eq!(net.count(Counter::SessionsDisplaced), 1);
    net.devices[b].dev.send_app(net.now, 101, b"b", true).unwrap();
    net.run_for(ms(20));
    assert_eq!(net.device_app(b).last().unwrap().2, b"b".to_vec());
}

/// Regression (the 54 "displaced" logouts of the 1,000-seed run): a device that handshakes
/// again from the address its session is attached to (its earlier handshake or logon gave up)
/// is the same device starting over. It must not be sent LoggedOut("displaced ..."), which
/// would reach the new attach and end it; it resumes.
#[test]
fn rule09_rehandshake_from_the_attached_address_is_not_a_displacement() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let id = net.devices[d].dev.session_id();
    net.devices[d].dev.send_app(net.now, 101, b"1", true).unwrap();
    net.run_for(ms(20));
    assert_eq!(state_of(&net, id), Some(State::Active));
    net.connect(d, false); // new nonce, same address, while the gateway still has it attached
    net.run_for(ms(500));
    assert!(logged_out_texts(&down(&net, d)).is_empty(), "no LoggedOut to the new attach");
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    assert!(net.devices[d].events.contains(&Ev::Registered { session_id: id, resumed: true }));
    net.devices[d].dev.send_app(net.now, 101, b"2", true).unwrap();
    net.run_for(ms(20));
    assert_eq!(net.gateway_app(d), vec![b"1".to_vec(), b"2".to_vec()]);
    let replies: Vec<Vec<u8>> = net.device_app(d).into_iter().map(|m| m.2).collect();
    assert_eq!(replies, vec![b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(net.count(Counter::SessionsDisplaced), 0);
}

/// A newer attach that arrives in the same input batch as the older attach's LogoutRequest,
/// before the LoggedOut went out: the older device still gets its LoggedOut("logout"), the
/// session it ended is released, and the newer device gets a session of its own.
#[test]
fn rule09_udp_new_attach_while_the_old_one_is_logging_out() {
    let mut net = cap_net(sim_config());
    let a = start(&mut net, udp_cfg(0));
    let old = net.devices[a].dev.session_id();
    let b = net.add_device(udp_cfg(0)); // same deviceUid
    let hold = Rc::new(Cell::new(true));
    let h = hold.clone();
    net.drop_rule = Some(Box::new(move |up, _, data| {
        h.get() && up && datagram_types(data).contains(&REGISTRATION_REQUEST)
    }));
    net.connect(b, true);
    net.run_for(ms(10)); // B has its cookie; its RegistrationRequest is held back
    let reg = net
        .captured
        .iter()
        .find(|c| {
            c.dev == Some(b) && c.dropped && datagram_types(&c.data) == [REGISTRATION_REQUEST]
        })
        .map(|c| c.data.clone())
        .expect("B's RegistrationRequest was held back");
    hold.set(false);
    net.devices[a].dev.logout(net.now);
    net.flush(); // A's LogoutRequest is on its way...
    let b_addr = net.devices[b].addr;
    net.inject_udp(b_addr, SESSION, &reg); // ...and B's registration lands right behind it
    net.run_for(ms(500));
    assert_eq!(logged_out_texts(&down(&net, a)), vec!["logout".to_string()]);
    assert_eq!(net.device_ended(a).as_deref(), Some("logout"));
    assert_eq!(net.count(Counter::Logouts), 1);
    assert_eq!(net.devices[b].dev.state(), DeviceState::Active);
    let new = net.devices[b].dev.session_id();
    assert_ne!(new, old, "the logged-out session is not resumed");
    assert!(net.devices[b].events.contains(&Ev::Registered { session_id: new, resumed: false }));
    assert_eq!(net.gateway.session_count(), 1);
    assert!(net.session_info(old).is_none());
    net.devices[b].dev.send_app(net.now, 101, b"b", true).unwrap();
    net.run_for(ms(20));
    assert_eq!(net.device_app(b), vec![(2, 201, b"b".to_vec())]);
}

/// The same on TCP: a logon for a username whose session is logging out.
#[test]
fn rule09_tcp_new_logon_while_the_old_one_is_logging_out() {
    let mut net = cap_net(sim_config());
    let mut x = RawTcp::open(&mut net, 0);
    x.logon(&mut net, b"samename", b"pw");
    let mut y = RawTcp::open(&mut net, 1);
    // In one input batch: X's LogoutRequest, then Y's LogonRequest.
    let at = net.now + ms(1);
    let bye = frame(x.next, 0, Body::LogoutRequest { reason: b"bye" });
    x.next += 1;
    net.inject_tcp_at(x.dev, &bye, at);
    net.inject_tcp_at(y.dev, &frame(1, 0, logon(b"samename", b"pw", true)), at);
    y.next = 2;
    net.run_for(ms(20));
    assert_eq!(logged_out_texts(&x.down(&net)), vec!["logout".to_string()]);
    assert!(x.closed(&net));
    let resp = of_type(&y.down(&net), LOGON_RESPONSE);
    assert_eq!(resp.len(), 1);
    assert_eq!((resp[0].seq(), resp[0].lp()), (1, 1));
    assert!(!y.closed(&net));
    assert_eq!(net.gateway.session_count(), 1);
    let info = net.gateway.sessions().next().unwrap();
    assert_eq!(info.state, State::Active);
    y.send(&mut net, Body::TestRequest { correlation_id: 4 });
    net.run_for(ms(20));
    assert!(
        of_type(&y.down(&net), HEARTBEAT)
            .iter()
            .any(|w| w.msg().body == Body::Heartbeat { correlation_id: 4 })
    );
}

/// Echoes device `d` through the gateway every 100 ms for `dur`, checking each reply arrives;
/// returns how many round trips were made.
fn echo_through(net: &mut Net, d: usize, dur: Duration, tag: u8) -> usize {
    let rounds = (dur.as_millis() / 100) as usize;
    for k in 0..rounds {
        let body = [tag, k as u8, (k >> 8) as u8];
        net.devices[d].dev.send_app(net.now, 101, &body, true).unwrap();
        net.run_for(ms(100));
        let last = net.device_app(d).last().map(|m| m.2.clone());
        assert_eq!(last.as_deref(), Some(&body[..]), "echo {k} of tag {tag} arrived");
    }
    rounds
}

/// The device's view of its session is untouched: no end, no reset, no second registration
/// after `registrations`, every echo and push exactly once and in order.
fn assert_undisturbed(net: &Net, d: usize, registrations: usize) {
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    assert_eq!(net.device_ended(d), None, "no LoggedOut");
    let regs = net.devices[d].events.iter().filter(|e| matches!(e, Ev::Registered { .. }));
    assert_eq!(regs.count(), registrations, "no new registration");
    assert!(!net.devices[d].events.contains(&Ev::StreamReset));
    let seqs: Vec<i64> = net.device_app(d).iter().map(|m| m.0).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no duplicates: {seqs:?}");
    let sent: Vec<Vec<u8>> = net.gateway_app(d);
    let echoed: Vec<Vec<u8>> =
        net.device_app(d).into_iter().filter(|m| m.1 == 201).map(|m| m.2).collect();
    assert_eq!(echoed, sent, "every request echoed once, in order");
}

/// Rule 9, issue 9 found 3: an attacker who knows the deviceUid handshakes from its own address
/// (ConnectionRequest, RegistrationRequest, DeviceConfig) but has no credentials and never logs
/// on. It gets a pending attach of its own (same session id, resumed = 1, GetDeviceConfig) and,
/// in the end, LoggedOut("logon timeout"); the device never notices.
#[test]
fn rule09_forged_attach_without_credentials_is_never_noticed_by_the_device() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let id = net.devices[d].dev.session_id();
    let home = net.devices[d].addr;
    let h = handle_of(&net, id);
    echo_through(&mut net, d, ms(500), 0);
    let mut x = RawUdp::new(1, b"RUDP00000", 0xbad);
    x.connect(&mut net);
    x.register(&mut net);
    assert_eq!(x.id, id, "a resume gets the session's id (rule 8): not a secret from x");
    let acc = of_type(&x.received(&net), REGISTRATION_ACCEPT);
    assert_eq!(acc[0].msg().body, Body::RegistrationAccept { session_id: id, resumed: true });
    assert_eq!(net.count(Counter::AttachesPending), 1);
    // Its DeviceConfig, then session traffic it has no right to send: none of it reaches the
    // session, which keeps working throughout.
    let get = of_type(&x.received(&net), GET_DEVICE_CONFIG);
    let Body::GetDeviceConfig { correlation_id } = get[0].msg().body else { unreachable!() };
    let cfg = Body::DeviceConfig { correlation_id, config: b"EVIL~1~2~3~4~5" };
    net.inject_udp(x.addr, SESSION, &dgram(id, &[&frame(0, 0, cfg)]));
    for seq in 1..20 {
        net.inject_udp(
            x.addr,
            SESSION,
            &dgram(id, &[&frame(seq, 0, Body::LogoutRequest { reason: b"bye" })]),
        );
    }
    net.gateway.send(net.now, h, 300, b"push during").unwrap();
    echo_through(&mut net, d, secs(12), 1);
    assert_eq!(logged_out_texts(&x.received(&net)), vec!["logon timeout".to_string()]);
    assert_undisturbed(&net, d, 1);
    assert!(net.device_app(d).iter().any(|m| m.2 == b"push during"));
    let info = net.session_info(id).unwrap();
    assert_eq!((info.state, info.link), (State::Active, Link::Udp(home)));
    assert_eq!(net.gateway.device_config(h), Some(SIM_DEVICE_CONFIG));
    assert_eq!(net.count(Counter::SessionsDisplaced), 0);
    assert_eq!(net.count(Counter::Logouts), 0);
    assert_eq!(net.count(Counter::AttachesPendingDropped), 1);
    // Nothing the attacker sent after its registration was answered but its own LoggedOut.
    let after_config = of_type(&x.received(&net), GET_DEVICE_CONFIG).len();
    assert!(after_config >= 1);
    assert!(to_addr(&net, x.addr).iter().all(|w| matches!(
        w.ty(),
        CONNECTION_ACCEPT | REGISTRATION_ACCEPT | GET_DEVICE_CONFIG | LOGGED_OUT
    )));
}

/// Rule 9 with wrong credentials: the forged attach logs on with a wrong password. It is
/// refused (LoggedOut "invalid credentials", counted as a failure from its address); the
/// logged-on device is not displaced and never notices.
#[test]
fn rule09_forged_attach_with_wrong_credentials_is_refused_and_the_device_unaffected() {
    let mut net = auth_net();
    let d = net.add_device(DeviceConfig::new(Transport::Udp, b"U1", b"alice", b"s3cret"));
    net.connect(d, true);
    net.run_for(ms(500));
    let id = net.devices[d].dev.session_id();
    echo_through(&mut net, d, ms(300), 0);
    let mut x = RawUdp::new(2, b"U1", 0xbad);
    x.connect(&mut net);
    x.register(&mut net);
    let get = of_type(&x.received(&net), GET_DEVICE_CONFIG);
    let Body::GetDeviceConfig { correlation_id } = get[0].msg().body else { unreachable!() };
    let cfg = Body::DeviceConfig { correlation_id, config: SIM_DEVICE_CONFIG };
    net.inject_udp(x.addr, SESSION, &dgram(id, &[&frame(0, 0, cfg)]));
    net.run_for(ms(5));
    x.send(&mut net, logon(b"alice", b"guess", false));
    echo_through(&mut net, d, secs(2), 1);
    assert_eq!(logged_out_texts(&x.received(&net)), vec!["invalid credentials".to_string()]);
    assert_eq!(net.count(Counter::LogonsFailed), 1);
    assert_eq!(net.count(Counter::SessionsDisplaced), 0);
    assert_undisturbed(&net, d, 1);
    assert_eq!(net.session_info(id).unwrap().link, Link::Udp(net.devices[d].addr));
    // A second try on the refused attach is not even looked at.
    x.send(&mut net, logon(b"alice", b"s3cret", false));
    net.run_for(ms(50));
    assert_eq!(net.count(Counter::SessionsDisplaced), 0);
    assert_undisturbed(&net, d, 1);
}

/// Rule 9 on TCP: a LogonRequest for a logged-on username with a wrong password, or with the
/// right one but a logon the session cannot take (resetSeqNum = 1 numbered 2), is refused on its
/// own connection and displaces nothing.
#[test]
fn rule09_tcp_refused_logon_for_a_logged_on_username_displaces_nothing() {
    let mut net = auth_net();
    let d = net.add_device(DeviceConfig::new(Transport::Tcp, b"T1", b"alice", b"s3cret"));
    net.connect(d, true);
    net.run_for(ms(100));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    echo_through(&mut net, d, ms(300), 0);
    let mut x = RawTcp::open(&mut net, 0);
    x.logon(&mut net, b"alice", b"guess");
    assert_eq!(logged_out_texts(&x.down(&net)), vec!["invalid credentials".to_string()]);
    assert!(x.closed(&net));
    x.reopen(&mut net);
    x.next = 2;
    x.send(&mut net, logon(b"alice", b"s3cret", true));
    net.run_for(ms(10));
    assert_eq!(
        logged_out_texts(&x.down(&net)).last().map(String::as_str),
        Some("first sequence number must be 1")
    );
    echo_through(&mut net, d, secs(1), 1);
    assert!(net.devices[d].conn.is_some(), "the device's connection stays open");
    assert_eq!(net.count(Counter::SessionsDisplaced), 0);
    assert_undisturbed(&net, d, 0);
}

/// A pending attach answers a repeated RegistrationRequest (same nonce, same address) with the
/// same RegistrationAccept (rule 2), and a newer attach from elsewhere replaces it.
#[test]
fn rule09_pending_attach_repeats_its_answer_and_the_newest_replaces_it() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let id = net.devices[d].dev.session_id();
    let mut x = RawUdp::new(3, b"RUDP00000", 7);
    x.connect(&mut net);
    x.register(&mut net);
    net.inject_udp(x.addr, SESSION, &x.registration());
    net.run_for(ms(5));
    let acc = of_type(&x.received(&net), REGISTRATION_ACCEPT);
    assert_eq!(acc.len(), 2);
    assert_eq!(acc[0].msg().body, acc[1].msg().body, "the same answer");
    assert_eq!(acc[1].msg().body, Body::RegistrationAccept { session_id: id, resumed: true });
    assert_eq!(net.count(Counter::HandshakesRepeated), 1);
    let mut y = RawUdp::new(4, b"RUDP00000", 8);
    y.connect(&mut net);
    y.register(&mut net);
    assert_eq!(y.id, id);
    assert_eq!(net.count(Counter::AttachesPending), 2);
    assert_eq!(net.count(Counter::AttachesPendingDropped), 1, "x's attach was replaced");
    // x's datagrams now reach nothing.
    let get = of_type(&x.received(&net), GET_DEVICE_CONFIG);
    let Body::GetDeviceConfig { correlation_id } = get[0].msg().body else { unreachable!() };
    let wrong = net.count(Counter::DropWrongAddress);
    let cfg = Body::DeviceConfig { correlation_id, config: SIM_DEVICE_CONFIG };
    net.inject_udp(x.addr, SESSION, &dgram(id, &[&frame(0, 0, cfg)]));
    net.run_for(ms(5));
    assert_eq!(net.count(Counter::DropWrongAddress), wrong + 1);
    echo_through(&mut net, d, ms(500), 0);
    assert_undisturbed(&net, d, 1);
}

/// Rule 9 and rule 8 together, the legitimate roam: the device moves to a new address while the
/// gateway still has it attached at the old one, and handshakes again (resume). Its newer attach
/// logs on, and only then displaces the old transport: one LoggedOut("displaced ...") to the
/// old address, which then hears nothing more. The session resumes with its id, and nothing is
/// lost either way, the pushes sent to the old address while the device was moving included.
#[test]
fn rule09_legitimate_roam_resumes_and_the_old_address_goes_silent() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let id = net.devices[d].dev.session_id();
    let h = handle_of(&net, id);
    echo_through(&mut net, d, ms(500), 0);
    let old = net.devices[d].addr;
    net.roam(d);
    // Pushed while the device is between addresses: they go to the old one and are lost there.
    for k in 0..3u8 {
        net.gateway.send(net.now, h, 300, &[b'p', k]).unwrap();
    }
    net.connect(d, false);
    net.run_for(ms(5));
    assert_eq!(net.count(Counter::AttachesPending), 1);
    net.run_for(secs(1));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    assert_eq!(net.devices[d].dev.session_id(), id, "same session id");
    assert!(net.devices[d].events.contains(&Ev::Registered { session_id: id, resumed: true }));
    assert_eq!(net.session_info(id).unwrap().link, Link::Udp(net.devices[d].addr));
    assert_eq!(net.count(Counter::SessionsDisplaced), 1);
    echo_through(&mut net, d, secs(1), 1);
    let to_old = to_addr(&net, old);
    let displaced = to_old
        .iter()
        .position(|w| w.logged_out().as_deref() == Some("displaced by a new connection"))
        .expect("the old address got its LoggedOut");
    assert_eq!(displaced, to_old.len() - 1, "and nothing after it");
    assert!(logged_out_texts(&down(&net, d)).is_empty(), "the device itself got no LoggedOut");
    let pushes: Vec<Vec<u8>> =
        net.device_app(d).into_iter().filter(|m| m.1 == 300).map(|m| m.2).collect();
    assert_eq!(pushes, (0..3u8).map(|k| vec![b'p', k]).collect::<Vec<_>>(), "recovered");
    assert_undisturbed(&net, d, 2);
    assert_eq!(net.count(Counter::SessionsResumed), 1);
}

/// Regression seeds: the property run for these seeds used to end sessions with a
/// self-displacement LoggedOut, which excluded them from the exactly-once check.
#[test]
fn regression_seeds_50_62_73_no_self_displacement() {
    for seed in [50, 62, 73] {
        let s = super::scenarios::property_run(seed, 0.2).unwrap();
        assert_eq!(s.explicit_logouts, 0, "seed {seed}: {s:?}");
        assert!(s.app_sent > 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Rule 10: logout.
// ---------------------------------------------------------------------------------------------

#[test]
fn rule10_logout_request_gets_logged_out_and_releases_the_session() {
    for cfg in [udp_cfg(0), tcp_cfg(0)] {
        let mut net = cap_net(sim_config());
        let d = start(&mut net, cfg);
        net.devices[d].dev.logout(net.now);
        net.run_for(ms(50));
        let ups = up(&net, d);
        let req = of_type(&ups, LOGOUT_REQUEST);
        assert_eq!(req.len(), 1);
        let outs = logged_out_texts(&down(&net, d));
        assert_eq!(outs, vec!["logout".to_string()]);
        assert_eq!(net.devices[d].dev.state(), DeviceState::Ended(EndReason::LoggedOut));
        assert_eq!(net.gateway.session_count(), 0, "released");
        assert_eq!(net.count(Counter::Logouts), 1);
        if cfg.transport == Transport::Tcp {
            assert!(net.devices[d].conn.is_none(), "closed");
        }
        // Nothing is kept: a new logon is a new session.
        net.connect(d, true);
        net.run_for(ms(500));
        assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
        assert_eq!(net.count(Counter::SessionsResumed), 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Rule 11: credentials.
// ---------------------------------------------------------------------------------------------

struct OnlyAlice;

impl Authenticator for OnlyAlice {
    fn check(&self, username: &[u8], password: &[u8]) -> bool {
        username == b"alice" && password == b"s3cret"
    }
}

fn auth_net() -> Net {
    let mut net = Net::with_auth(1, sim_config(), Box::new(OnlyAlice));
    net.capture = true;
    net
}

#[test]
fn rule11_wrong_password_tcp_gets_invalid_credentials_and_close() {
    let mut net = auth_net();
    let d = net.add_device(DeviceConfig::new(Transport::Tcp, b"T1", b"alice", b"guess"));
    net.connect(d, true);
    net.run_for(ms(100));
    assert_eq!(logged_out_texts(&down(&net, d)), vec!["invalid credentials".to_string()]);
    assert_eq!(net.device_ended(d).as_deref(), Some("invalid credentials"));
    assert!(net.devices[d].conn.is_none());
    assert_eq!(net.gateway.session_count(), 0);
    assert_eq!(net.count(Counter::LogonsFailed), 1);
    let ok = net.add_device(DeviceConfig::new(Transport::Tcp, b"T2", b"alice", b"s3cret"));
    net.connect(ok, true);
    net.run_for(ms(100));
    assert_eq!(net.devices[ok].dev.state(), DeviceState::Active);
}

#[test]
fn rule11_wrong_password_udp_gets_invalid_credentials_and_release() {
    let mut net = auth_net();
    let d = net.add_device(DeviceConfig::new(Transport::Udp, b"U1", b"alice", b"guess"));
    net.connect(d, true);
    net.run_for(ms(500));
    assert_eq!(net.device_ended(d).as_deref(), Some("invalid credentials"));
    assert_eq!(net.gateway.session_count(), 0);
    assert_eq!(net.count(Counter::LogonsFailed), 1);
}

/// After `max_logon_failures` failures from one address, logons from it are refused even with
/// the right password (until the window passes); other addresses are not affected.
#[test]
fn rule11_failures_are_rate_limited_per_source_address() {
    let mut net = auth_net();
    let mut x = RawTcp::open(&mut net, 0);
    let max = sim_config().max_logon_failures;
    for _ in 0..max {
        x.reopen(&mut net);
        x.logon(&mut net, b"alice", b"guess");
    }
    let texts = logged_out_texts(&x.down(&net));
    assert_eq!(texts, vec!["invalid credentials".to_string(); max as usize]);
    assert_eq!(net.count(Counter::LogonsFailed), u64::from(max));
    x.reopen(&mut net);
    x.logon(&mut net, b"alice", b"s3cret");
    assert_eq!(logged_out_texts(&x.down(&net)).last().unwrap(), "too many failed logons");
    assert!(x.closed(&net));
    assert_eq!(net.count(Counter::LogonsRateLimited), 1);
    assert_eq!(net.gateway.session_count(), 0);
    // Another address is not limited.
    let mut y = RawTcp::open(&mut net, 1);
    y.logon(&mut net, b"alice", b"s3cret");
    assert_eq!(of_type(&y.down(&net), LOGON_RESPONSE).len(), 1);
    // After the window, the limited address may try again.
    net.run_for(sim_config().logon_failure_window + secs(1));
    x.reopen(&mut net);
    let before = of_type(&x.down(&net), LOGON_RESPONSE).len();
    x.logon(&mut net, b"alice", b"s3cret");
    assert_eq!(of_type(&x.down(&net), LOGON_RESPONSE).len(), before + 1);
}

// ---------------------------------------------------------------------------------------------
// Rule 12: bad input.
// ---------------------------------------------------------------------------------------------

const DROP_COUNTERS: [Counter; 8] = [
    Counter::DropUnknownSession,
    Counter::DropBadPrefix,
    Counter::DropInvalidProtocol,
    Counter::DropUnknownType,
    Counter::DropInvalidLength,
    Counter::DropInvalidField,
    Counter::DropNotAllowed,
    Counter::DropWrongAddress,
];

fn drops(net: &Net) -> Vec<u64> {
    DROP_COUNTERS.iter().map(|&c| net.count(c)).collect()
}

/// UDP garbage of every kind is dropped, counted under its reason and never answered, and a
/// session on the same gateway keeps working meanwhile.
#[test]
fn rule12_udp_garbage_dropped_counted_by_reason_never_answered() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let id = net.devices[d].dev.session_id();
    let dev_addr = net.devices[d].addr;
    let hb = frame(50, 0, Body::Heartbeat { correlation_id: 0 });
    let mut unknown_type = hb.clone();
    unknown_type[4..6].copy_from_slice(&77u16.to_le_bytes());
    let mut bad_proto = hb.clone();
    bad_proto[0] = 0xaa;
    let mut bad_chars = frame(50, 0, Body::LogoutRequest { reason: b"bye" });
    bad_chars[33] = 0x01;
    let before = drops(&net);
    // (source, datagram, counter it must land in)
    let mut cases: Vec<(SocketAddr, Vec<u8>, Counter)> = vec![
        (raw_addr(1), dgram(0x1234_5678, &[&hb]), Counter::DropUnknownSession),
        (raw_addr(2), dgram(id, &[&hb]), Counter::DropWrongAddress),
        (raw_addr(3), dgram(0, &[&hb]), Counter::DropBadPrefix),
        (raw_addr(4), dgram(id, &[&hb])[..20].to_vec(), Counter::DropInvalidLength),
        (raw_addr(5), Vec::new(), Counter::DropInvalidLength),
        (dev_addr, dgram(id, &[&unknown_type]), Counter::DropUnknownType),
        (dev_addr, dgram(id, &[&bad_proto]), Counter::DropInvalidProtocol),
        (dev_addr, dgram(id, &[&bad_chars]), Counter::DropInvalidField),
        (dev_addr, dgram(id, &[&hb[..36]]), Counter::DropInvalidLength),
        (raw_addr(6), dgram(0, &[&unknown_type]), Counter::DropUnknownType),
    ];
    let mut rng = Rng::new(12);
    for k in 0..200 {
        let len = rng.below(300) as usize;
        let data: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        let counter =
            if len < 40 { Counter::DropInvalidLength } else { Counter::DropUnknownSession };
        cases.push((raw_addr(10 + (k % 200) as u8), data, counter));
    }
    let mut want = before.clone();
    for (from, data, counter) in &cases {
        want[DROP_COUNTERS.iter().position(|c| c == counter).unwrap()] += 1;
        net.inject_udp(*from, SESSION, data);
        // Keep the real session busy meanwhile.
        if net.rng.chance(0.1) {
            let _ = net.devices[d].dev.send_app(net.now, 101, b"busy", true);
        }
        net.run_for(ms(1));
    }
    net.run_for(ms(100));
    assert_eq!(drops(&net), want, "each datagram counted once, under its reason");
    let answered = net
        .captured
        .iter()
        .filter(|c| !c.up && matches!(c.path, Path::Udp { to, .. } if to != dev_addr))
        .count();
    assert_eq!(answered, 0, "garbage is never answered");
    assert_eq!(net.gateway.session_count(), 1);
    assert_eq!(state_of(&net, id), Some(State::Active));
    net.devices[d].dev.send_app(net.now, 101, b"still here", true).unwrap();
    net.run_for(ms(50));
    let sent = net.gateway_app(d);
    let replies: Vec<Vec<u8>> = net.device_app(d).into_iter().map(|m| m.2).collect();
    assert_eq!(replies, sent, "the session kept its exactly-once stream");
    assert_eq!(sent.last().unwrap(), b"still here");
}

/// A UDP attach that sends its DeviceConfig and never logs on does not hold its session slot
/// forever: it has `tcp.logon_timeout_ms` from its DeviceConfig (like a TCP connection from its
/// accept, and like a pending attach), then LoggedOut("logon timeout") and release.
#[test]
fn rule12_udp_attach_that_never_logs_on_is_timed_out() {
    let mut net = cap_net(sim_config());
    let mut x = RawUdp::new(9, b"NOLOGON", 9);
    x.connect(&mut net);
    x.register(&mut net);
    let get = of_type(&x.received(&net), GET_DEVICE_CONFIG);
    let Body::GetDeviceConfig { correlation_id } = get[0].msg().body else { unreachable!() };
    let cfg = Body::DeviceConfig { correlation_id, config: SIM_DEVICE_CONFIG };
    net.inject_udp(x.addr, SESSION, &dgram(x.id, &[&frame(0, 0, cfg)]));
    net.run_for(secs(9));
    assert_eq!(state_of(&net, x.id), Some(State::AwaitingLogon));
    net.run_for(secs(2));
    assert_eq!(logged_out_texts(&x.received(&net)), vec!["logon timeout".to_string()]);
    assert_eq!(net.gateway.session_count(), 0, "released");
    assert_eq!(net.count(Counter::LogonTimeouts), 1);
}

/// A raw UDP client logged on (open logon): its session id, next number 2.
fn raw_udp_session(net: &mut Net, n: u8) -> RawUdp {
    let mut x = RawUdp::new(n, format!("RAW{n}").as_bytes(), u64::from(n));
    x.connect(net);
    x.register(net);
    x.config_and_logon(net);
    assert_eq!(of_type(&x.received(net), LOGON_RESPONSE).len(), 1, "raw client logged on");
    x
}

fn expected_in(net: &Net, id: u64) -> i64 {
    net.session_info(id).unwrap().expected_in
}

/// Rule 12 (issue 9, found 4): a datagram larger than `udp.max_datagram` is dropped whole,
/// however good its messages, and counted; one of exactly `udp.max_datagram` bytes is taken.
#[test]
fn rule12_udp_datagram_larger_than_max_datagram_is_dropped_whole() {
    let mut net = cap_net(sim_config());
    let max = sim_config().session.max_datagram;
    let mut x = raw_udp_session(&mut net, 1);
    let next = expected_in(&net, x.id);
    // Eleven good messages in one 1,504-byte datagram.
    let frames: Vec<Vec<u8>> = (0..11)
        .map(|k| frame(next + k, 0, Body::App { type_id: 150, body: &[k as u8; 100] }))
        .collect();
    let refs: Vec<&[u8]> = frames.iter().map(Vec::as_slice).collect();
    let big = dgram(x.id, &refs);
    assert!(big.len() > max);
    net.inject_udp(x.addr, SESSION, &big);
    net.run_for(ms(5));
    assert_eq!(net.count(Counter::DropOversized), 1);
    assert_eq!(net.count(Counter::AppMessagesReceived), 0, "none of it acted on");
    assert_eq!(expected_in(&net, x.id), next);
    // At the limit exactly: taken. One byte of body more (8 padded): dropped.
    let body_at_limit = max - 8 - 32;
    let at_limit =
        dgram(x.id, &[&frame(next, 0, Body::App { type_id: 150, body: &vec![1; body_at_limit] })]);
    assert_eq!(at_limit.len(), max);
    let over = dgram(
        x.id,
        &[&frame(next, 0, Body::App { type_id: 150, body: &vec![1; body_at_limit + 1] })],
    );
    net.inject_udp(x.addr, SESSION, &over);
    net.run_for(ms(5));
    assert_eq!(net.count(Counter::DropOversized), 2);
    net.inject_udp(x.addr, SESSION, &at_limit);
    net.run_for(ms(5));
    assert_eq!(net.count(Counter::AppMessagesReceived), 1);
    assert_eq!(expected_in(&net, x.id), next + 1);
    x.next = next + 1;
    // The same messages, in datagrams within the limit, are all taken.
    for chunk in frames[1..].chunks(5) {
        let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
        net.inject_udp(x.addr, SESSION, &dgram(x.id, &refs));
    }
    net.run_for(ms(5));
    assert_eq!(net.count(Counter::AppMessagesReceived), 11);
}

/// Rule 12 (issue 9, found 4): a datagram with any malformed message in it, garbage after
/// valid messages included, is dropped whole: its valid front is not acted on either (here a
/// LogoutRequest), and it is counted under the malformed message's reason.
#[test]
fn rule12_udp_datagram_with_a_malformed_message_is_dropped_whole() {
    let mut net = cap_net(sim_config());
    let mut x = raw_udp_session(&mut net, 2);
    let next = expected_in(&net, x.id);
    let app = frame(next, 0, Body::App { type_id: 150, body: b"front" });
    let logout = frame(next + 1, 0, Body::LogoutRequest { reason: b"bye" });
    let mut bad_chars = frame(next + 2, 0, Body::LogoutRequest { reason: b"bye" });
    bad_chars[33] = 0x01;
    let mut unknown_type = frame(next + 2, 0, Body::Heartbeat { correlation_id: 0 });
    unknown_type[4..6].copy_from_slice(&77u16.to_le_bytes());
    let garbage = [0xaau8; 40];
    let cases: [(&[u8], Counter); 4] = [
        (&garbage, Counter::DropInvalidProtocol),
        (&garbage[..12], Counter::DropInvalidLength),
        (&bad_chars, Counter::DropInvalidField),
        (&unknown_type, Counter::DropUnknownType),
    ];
    for (tail, counter) in cases {
        let before = net.count(counter);
        net.inject_udp(x.addr, SESSION, &dgram(x.id, &[&app, &logout, tail]));
        net.run_for(ms(5));
        assert_eq!(net.count(counter), before + 1, "{counter:?}");
        assert_eq!(net.count(Counter::AppMessagesReceived), 0, "the valid front not acted on");
        assert_eq!(net.count(Counter::Logouts), 0);
        assert_eq!(expected_in(&net, x.id), next);
        assert!(logged_out_texts(&x.received(&net)).is_empty(), "never answered");
    }
    // The valid messages alone are acted on.
    net.inject_udp(x.addr, SESSION, &dgram(x.id, &[&app, &logout]));
    net.run_for(ms(5));
    assert_eq!(net.count(Counter::AppMessagesReceived), 1);
    assert_eq!(logged_out_texts(&x.received(&net)), vec!["logout".to_string()]);
    x.next = next + 2;
}

/// TCP: a frame that frames correctly but has a bad body gets Reject and the session goes on.
#[test]
fn rule12_tcp_malformed_body_gets_reject_and_the_session_continues() {
    let mut net = cap_net(sim_config());
    let mut raw = RawTcp::open(&mut net, 0);
    raw.logon(&mut net, b"malformed", b"pw");
    // Unknown message type, valid framing.
    let mut unknown = frame(2, 0, Body::Heartbeat { correlation_id: 0 });
    unknown[4..6].copy_from_slice(&77u16.to_le_bytes());
    // A Heartbeat 8 bytes too long (the length is a multiple of 8: framing is intact).
    let mut long = frame(3, 0, Body::ResendRequest { from: 1, to: 0 });
    long[4..6].copy_from_slice(&(HEARTBEAT).to_le_bytes());
    // A LogoutRequest whose reason holds a control character: not a logout.
    let mut chars = frame(4, 0, Body::LogoutRequest { reason: b"bye" });
    chars[33] = 0x01;
    // A server-to-client message from the client.
    let wrong_dir = frame(5, 0, Body::LogonResponse { heartbeat_interval_s: 5 });
    net.inject_tcp(raw.dev, &[unknown, long, chars, wrong_dir].concat());
    raw.next = 6;
    raw.send(&mut net, Body::TestRequest { correlation_id: 99 });
    net.run_for(ms(10));
    let downs = raw.down(&net);
    let rejects: Vec<(i64, u8)> = of_type(&downs, REJECT)
        .iter()
        .map(|w| match w.msg().body {
            Body::Reject { ref_seq_num, reason, .. } => (ref_seq_num, reason),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(rejects, vec![(2, 2), (3, 3), (4, 4), (5, 5)]);
    assert!(
        of_type(&downs, HEARTBEAT)
            .iter()
            .any(|w| w.msg().body == Body::Heartbeat { correlation_id: 99 })
    );
    assert!(logged_out_texts(&downs).is_empty());
    assert!(!raw.closed(&net));
    let info = net.gateway.sessions().next().unwrap();
    assert_eq!((info.state, info.expected_in), (State::Active, 7));
    assert_eq!(net.count(Counter::RejectsSent), 4);
}

/// TCP: a framing error gets LoggedOut and closes that connection only.
#[test]
fn rule12_tcp_framing_error_closes_only_that_connection() {
    let mut net = cap_net(sim_config());
    let mut x = RawTcp::open(&mut net, 0);
    let mut y = RawTcp::open(&mut net, 1);
    let mut v = RawTcp::open(&mut net, 2);
    x.logon(&mut net, b"xuser", b"pw");
    y.logon(&mut net, b"yuser", b"pw");
    v.logon(&mut net, b"vuser", b"pw");
    let mut bad = frame(2, 0, Body::Heartbeat { correlation_id: 0 });
    bad[0] = 0xaa;
    net.inject_tcp(x.dev, &bad);
    let mut bad_version = frame(2, 0, Body::Heartbeat { correlation_id: 0 });
    bad_version[6] = 2;
    net.inject_tcp(v.dev, &bad_version);
    net.run_for(ms(10));
    assert_eq!(logged_out_texts(&x.down(&net)), vec!["invalid protocol id".to_string()]);
    assert_eq!(logged_out_texts(&v.down(&net)), vec!["unsupported version".to_string()]);
    assert!(x.closed(&net) && v.closed(&net));
    assert!(!y.closed(&net));
    y.send(&mut net, Body::TestRequest { correlation_id: 5 });
    net.run_for(ms(10));
    assert!(
        of_type(&y.down(&net), HEARTBEAT)
            .iter()
            .any(|w| w.msg().body == Body::Heartbeat { correlation_id: 5 })
    );
    assert!(logged_out_texts(&y.down(&net)).is_empty());
    assert_eq!(net.gateway.session_count(), 1);
    assert_eq!(net.count(Counter::ProtocolViolations), 2);
}

/// Rule 8, pushed traffic: messages the application sends while the session is detached are
/// journaled and reach the device, in order and once, after it resumes.
#[test]
fn rule08_messages_sent_while_detached_arrive_after_resume() {
    let mut net = cap_net(sim_config());
    let d = start(&mut net, udp_cfg(0));
    let id = net.session_id_of(d);
    let h = handle_of(&net, id);
    net.gateway.send(net.now, h, 300, &[0]).unwrap();
    net.run_for(ms(20));
    let cut = Rc::new(Cell::new(true));
    let c = cut.clone();
    net.drop_rule = Some(Box::new(move |_, _, _| c.get()));
    net.run_for(secs(14));
    assert_eq!(state_of(&net, id), Some(State::Detached));
    // While detached: the pushes are taken and journaled.
    for k in 1..=5u8 {
        net.gateway.send(net.now, h, 300, &[k]).expect("a detached session journals");
    }
    cut.set(false);
    net.roam(d);
    net.connect(d, false);
    net.run_for(secs(2));
    assert_eq!(net.devices[d].dev.state(), DeviceState::Active);
    let got: Vec<Vec<u8>> =
        net.device_app(d).into_iter().filter(|m| m.1 == 300).map(|m| m.2).collect();
    assert_eq!(got, (0..=5u8).map(|k| vec![k]).collect::<Vec<_>>());
}

/// Device groups (issue: "match on device-config fields and set heartbeat interval and journal
/// depth per group"): a PDT9090_E5 device gets its group's heartbeat in LogonResponse and its
/// group's journal depth; the policy sees the config string the device sent.
#[test]
fn device_group_sets_heartbeat_and_journal_depth() {
    let mut net = cap_net(sim_config());
    net.gateway.set_groups(Box::new(|config: &[u8]| {
        let pdt = config.split(|&b| b == b'~').nth(4) == Some(&b"PDT9090_E5"[..]);
        crate::session::GroupSettings {
            heartbeat: pdt.then_some(Duration::from_secs(9)),
            journal_depth: pdt.then_some(4),
            app: None,
        }
    }));
    let d = start(&mut net, udp_cfg(0));
    let resp = of_type(&down(&net, d), LOGON_RESPONSE);
    assert_eq!(resp[0].msg().body, Body::LogonResponse { heartbeat_interval_s: 9 });
    // Journal depth 4: the device misses six pushes, so its resend reaches below the window.
    let h = handle_of(&net, net.devices[d].dev.session_id());
    let block = Rc::new(Cell::new(true));
    let b = block.clone();
    net.drop_rule = Some(Box::new(move |up, _, _| !up && b.get()));
    for k in 0..6u8 {
        // One at a time: four unsent messages already fill a 4-deep journal (backpressure).
        net.gateway.send(net.now, h, 300, &[k]).unwrap();
        net.run_for(ms(5));
    }
    block.set(false);
    net.gateway.send(net.now, h, 300, &[6]).unwrap();
    net.run_for(secs(1));
    let text = net.device_ended(d).expect("the device was told");
    assert!(text.starts_with("resend window exceeded: oldest retained"), "{text}");
    assert_eq!(net.count(Counter::ResendWindowExceeded), 1);
    // Without the group the same traffic fits the 512-deep journal of sim_config().
}

/// Device groups choose the application: the PDT group is served by a silent application (no
/// echo, no feed), other sessions by the default one (echo and the feed's broadcasts).
#[test]
fn device_group_selects_its_application() {
    let mut net = Net::with_app(1, sim_config(), Some(Duration::from_millis(100)));
    let silent = net.gateway.add_app(Box::new(crate::apps::Silent));
    assert_eq!(silent, 1);
    net.gateway.set_groups(Box::new(move |config: &[u8]| {
        let pdt = config.split(|&b| b == b'~').nth(4) == Some(&b"PDT9090_E5"[..]);
        crate::session::GroupSettings { app: pdt.then_some(silent), ..Default::default() }
    }));
    let grouped = start(&mut net, udp_cfg(0)); // sends the PDT9090_E5 config
    let plain = start(&mut net, tcp_cfg(1)); // TCP: no device config, default application
    for d in [grouped, plain] {
        net.devices[d].dev.send_app(net.now, 101, b"ping", false).unwrap();
    }
    net.run_for(secs(1));
    let types = |d: usize| net.device_app(d).into_iter().map(|m| m.1).collect::<Vec<_>>();
    assert!(types(grouped).is_empty(), "the silent application answered: {:?}", types(grouped));
    let plain_types = types(plain);
    assert!(plain_types.contains(&201), "no echo for the default group: {plain_types:?}");
    assert!(plain_types.iter().filter(|&&t| t == 300).count() >= 5, "{plain_types:?}");
    // The default application saw only the plain session's message.
    assert_eq!(net.gateway_app(plain), vec![b"ping".to_vec()]);
    assert!(net.gateway_app(grouped).is_empty());
}
