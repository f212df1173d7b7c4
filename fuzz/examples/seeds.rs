//! Writes the seed corpora under `fuzz/seeds/<target>/` from valid messages (the crate's
//! encoders) and from short scenarios written as values of the targets' input types. Run once
//! after changing an input type, from `fuzz/`:
//!
//! ```text
//! cargo +nightly run --example seeds
//! ```

use std::fs;
use std::path::Path;

use fleetgate::protocol::{Body, DeviceUid, Header, Message, Password, Username, write_prefix};
use fleetgate_fuzz::emit::{Emit, check};
use fleetgate_fuzz::{Seq, Text, device as dv, endpoint as ep, push_message};

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let _ = fs::remove_dir_all(&root);
    let mut total = 0;
    for (target, seeds) in [
        ("decode", decode()),
        ("deframer", deframer()),
        ("endpoint", endpoint()),
        ("device", device()),
    ] {
        let dir = root.join(target);
        fs::create_dir_all(&dir).expect("create seeds dir");
        for (name, bytes) in &seeds {
            fs::write(dir.join(name), bytes).expect("write seed");
        }
        println!("{target}: {} seeds", seeds.len());
        total += seeds.len();
    }
    println!("{total} seeds in {}", root.display());
}

/// One message of every type, as on the wire (padded).
fn messages() -> Vec<(&'static str, Vec<u8>)> {
    let uid = DeviceUid::new(b"PDT9090-0001").unwrap();
    let h =
        |seq: i64| Header { seq, last_processed: 3, send_time: 1_700_000_000, ..Header::default() };
    let bodies: Vec<(&str, i64, Body<'_>)> = vec![
        (
            "logon_request",
            1,
            Body::LogonRequest {
                username: Username::new(b"user0").unwrap(),
                password: Password::new(b"pw").unwrap(),
                reset_seq_num: true,
            },
        ),
        ("logon_response", 1, Body::LogonResponse { heartbeat_interval_s: 5 }),
        ("logout_request", 7, Body::LogoutRequest { reason: b"bye" }),
        ("logged_out", 9, Body::LoggedOut { reason: b"resend window exceeded: oldest retained 8" }),
        ("heartbeat", 4, Body::Heartbeat { correlation_id: 0 }),
        ("test_request", 5, Body::TestRequest { correlation_id: 2 }),
        ("resend_request", 6, Body::ResendRequest { from: 2, to: 0 }),
        ("gap_fill", 3, Body::GapFill { new_seq_num: 5 }),
        ("reject", 8, Body::Reject { ref_seq_num: 3, reason: 4, details: b"invalid resend range" }),
        (
            "connection_request",
            0,
            Body::ConnectionRequest { device_uid: uid, client_nonce: 7, client_version: 1 },
        ),
        (
            "connection_accept",
            0,
            Body::ConnectionAccept {
                session_port: 5000,
                cookie_ttl_ms: 5000,
                client_nonce: 7,
                cookie: [0x42; 32],
            },
        ),
        (
            "connection_reject",
            0,
            Body::ConnectionReject { reason: 2, details: b"client version must be 1" },
        ),
        (
            "registration_request",
            0,
            Body::RegistrationRequest { device_uid: uid, client_nonce: 7, cookie: [0x42; 32] },
        ),
        (
            "registration_accept",
            0,
            Body::RegistrationAccept { session_id: 0x1234_5678_9abc, resumed: true },
        ),
        ("registration_reject", 0, Body::RegistrationReject { reason: 1, details: b"bad cookie" }),
        ("get_device_config", 0, Body::GetDeviceConfig { correlation_id: 1 }),
        (
            "device_config",
            0,
            Body::DeviceConfig { correlation_id: 1, config: b"AB~001~19~000~PDT9090_E5~16" },
        ),
        ("app", 10, Body::App { type_id: 150, body: b"hello, gateway" }),
    ];
    bodies
        .into_iter()
        .map(|(name, seq, body)| {
            let mut out = Vec::new();
            assert!(push_message(&mut out, &Message { header: h(seq), body }), "{name}");
            (name, out)
        })
        .collect()
}

fn find<'a>(all: &'a [(&str, Vec<u8>)], name: &str) -> &'a [u8] {
    &all.iter().find(|(n, _)| *n == name).expect("message").1
}

fn decode() -> Vec<(String, Vec<u8>)> {
    let all = messages();
    let mut seeds: Vec<(String, Vec<u8>)> =
        all.iter().map(|(n, b)| (format!("{n}.bin"), b.clone())).collect();
    // Datagrams: a ConnectionRequest as the handshake port gets it, and a session datagram of
    // several messages.
    let mut dg = vec![0u8; 8];
    dg.extend_from_slice(find(&all, "connection_request"));
    seeds.push(("datagram_connection_request.bin".into(), dg));
    let mut dg = vec![0u8; 8];
    write_prefix(&mut dg, 0x1234_5678_9abc);
    for n in ["app", "heartbeat", "resend_request"] {
        dg.extend_from_slice(find(&all, n));
    }
    seeds.push(("datagram_session.bin".into(), dg));
    seeds
}

fn deframer() -> Vec<(String, Vec<u8>)> {
    let all = messages();
    let mut stream = Vec::new();
    for n in ["logon_request", "app", "heartbeat", "resend_request", "app", "logout_request"] {
        stream.extend_from_slice(find(&all, n));
    }
    let cases: [(&str, u16, Vec<u16>, &[u8]); 4] = [
        ("whole_stream", 4096, vec![], &stream),
        ("byte_by_byte", 4096, vec![1], &stream),
        ("odd_chunks_via_spare", 256, vec![3, 0x8000 | 29, 100], &stream),
        ("frame_larger_than_buffer", 64, vec![7], find(&all, "logon_request")),
    ];
    cases
        .into_iter()
        .map(|(name, capacity, chunks, stream)| {
            let mut out = Vec::new();
            capacity.emit(&mut out);
            chunks.emit(&mut out);
            out.extend_from_slice(stream);
            (format!("{name}.bin"), out)
        })
        .collect()
}

fn frame(seq: Seq, body: ep::FrameBody) -> ep::Frame {
    ep::Frame { seq, resend: false, ack: 0, body }
}

fn endpoint() -> Vec<(String, Vec<u8>)> {
    use ep::{Cookie, FrameBody as B, Op, Prefix};
    let logon = |user, reset| frame(Seq::Next, B::Logon { user, good: true, reset });
    let app = |n| frame(Seq::Next, B::App { type_id: n, len: 24 });
    let tcp = |conn, frames| Op::Tcp { conn, from: conn, frames, tail: vec![] };
    let udp = |frames| Op::Udp { to: Prefix::Session(7), from: None, frames, tail: vec![] };
    let register =
        |from, uid, nonce| Op::Register { from, uid, nonce, cookie: Cookie::Valid { age_s: 0 } };
    let config = |c| frame(Seq::Next, B::DeviceConfig { right: true, corr: 0, config: c });
    let resend = |back, len, all| frame(Seq::Next, B::Resend { back, len, all });
    let push = |n| Op::Push { session: 0, type_id: n, len: 40 };
    let udp_logged_on = |from, uid, nonce, user| {
        vec![
            register(from, uid, nonce),
            udp(vec![config(Text::Printable(30))]),
            udp(vec![logon(user, true)]),
        ]
    };
    let scenarios: Vec<(&str, ep::Input)> = vec![
        (
            "udp_flow_echo_resend",
            input(
                3,
                [
                    udp_logged_on(0, 0, 1, 0),
                    vec![
                        udp(vec![app(1), app(2), frame(Seq::Next, B::TestRequest(9))]),
                        Op::Wait { ms: 30 },
                        udp(vec![resend(3, 0, true)]),
                        Op::Wait { ms: 6_000 },
                        Op::WaitForTimer,
                        udp(vec![frame(Seq::Next, B::Heartbeat(0))]),
                    ],
                ]
                .concat(),
            ),
        ),
        (
            // As a device sends them: DeviceConfig and LogonRequest in one datagram (DESIGN.md
            // §1.5), taken in order; and the other order, whose LogonRequest comes too early.
            "udp_config_and_logon_in_one_datagram",
            input(
                3,
                vec![
                    register(0, 0, 1),
                    udp(vec![config(Text::Printable(30)), logon(0, true)]),
                    udp(vec![app(1)]),
                    Op::Wait { ms: 30 },
                    register(1, 1, 2),
                    Op::Udp {
                        to: Prefix::Session(1),
                        from: None,
                        frames: vec![logon(1, true), config(Text::Printable(12))],
                        tail: vec![],
                    },
                    Op::Wait { ms: 250 },
                    Op::WaitForTimer,
                ],
            ),
        ),
        (
            "udp_displaced_by_another_address",
            input(
                3,
                [
                    udp_logged_on(0, 1, 1, 0),
                    vec![push(1)],
                    udp_logged_on(1, 1, 2, 0),
                    vec![udp(vec![resend(5, 0, true)]), Op::Wait { ms: 25 }],
                ]
                .concat(),
            ),
        ),
        (
            "udp_config_timeout_and_groups",
            ep::Input {
                journal: 3,
                burst: 1,
                groups: true,
                ops: vec![
                    register(2, 2, 5),
                    udp(vec![config(Text::Raw(b"Hgroup".to_vec()))]),
                    udp(vec![logon(2, true)]),
                    register(3, 3, 6),
                    Op::Wait { ms: 11_000 },
                    Op::WaitForTimer,
                    Op::WaitForTimer,
                ],
            },
        ),
        (
            "udp_heartbeat_timeout_detach_resume",
            input(
                3,
                [
                    udp_logged_on(0, 0, 1, 0),
                    vec![Op::Wait { ms: 20_000 }, Op::WaitForTimer, Op::WaitForTimer, push(3)],
                    udp_logged_on(0, 0, 9, 0),
                ]
                .concat(),
            ),
        ),
        (
            "tcp_flow_echo_resend_logout",
            input(
                3,
                vec![
                    tcp(0, vec![logon(1, true), app(1), app(2)]),
                    push(3),
                    push(4),
                    tcp(0, vec![resend(3, 2, false), frame(Seq::Next, B::TestRequest(1))]),
                    tcp(0, vec![frame(Seq::Next, B::Logout(Text::Printable(3)))]),
                ],
            ),
        ),
        (
            // A ResendRequest that begins where the last one's answer ended (1..=3, then
            // 4..=4): two runs, not one that overran its request (found by CI's fuzz run).
            "tcp_resend_starts_where_last_ended",
            input(
                3,
                vec![
                    tcp(0, vec![logon(1, true), app(1), app(2)]),
                    push(4),
                    tcp(0, vec![resend(3, 2, false)]),
                    tcp(0, vec![resend(0, 0, false)]),
                ],
            ),
        ),
        (
            "tcp_resume_after_close",
            input(
                3,
                vec![
                    tcp(0, vec![logon(1, true), app(1)]),
                    push(2),
                    Op::TcpClose { conn: 0 },
                    push(3),
                    tcp(1, vec![logon(1, false), resend(4, 0, true)]),
                ],
            ),
        ),
        (
            "tcp_resend_window_exceeded",
            input(
                1,
                vec![
                    tcp(0, vec![logon(1, true)]),
                    push(1),
                    push(2),
                    push(3),
                    push(4),
                    push(5),
                    tcp(0, vec![resend(5, 0, true)]),
                ],
            ),
        ),
        (
            "tcp_slow_reader",
            input(
                2,
                vec![
                    tcp(0, vec![logon(2, true)]),
                    Op::Room { conn: 0, room: 0 },
                    tcp(0, vec![app(1), app(2), app(3), app(4), app(5), app(6)]),
                    Op::Room { conn: 0, room: u16::MAX },
                    Op::TcpStalled { conn: 0 },
                ],
            ),
        ),
        (
            "tcp_refused_logons",
            input(
                3,
                vec![
                    tcp(0, vec![frame(Seq::Raw(2), B::Logon { user: 0, good: true, reset: true })]),
                    tcp(1, vec![logon(1, true)]),
                    tcp(2, vec![logon(0, false)]),
                    tcp(3, vec![frame(Seq::Next, B::Logon { user: 3, good: false, reset: true })]),
                    tcp(3, vec![frame(Seq::Next, B::Logon { user: 3, good: false, reset: true })]),
                    tcp(3, vec![frame(Seq::Next, B::Logon { user: 3, good: false, reset: true })]),
                    tcp(0, vec![app(1)]),
                ],
            ),
        ),
        (
            "tcp_and_udp_shutdown",
            input(
                3,
                [
                    vec![tcp(0, vec![logon(0, true)])],
                    udp_logged_on(1, 1, 1, 1),
                    vec![Op::Shutdown, Op::Wait { ms: 10 }],
                ]
                .concat(),
            ),
        ),
    ];
    scenarios.into_iter().map(|(name, i)| (format!("{name}.bin"), check(&i))).collect()
}

fn input(journal: u8, ops: Vec<ep::Op>) -> ep::Input {
    ep::Input { journal, burst: 1, groups: false, ops }
}

fn device() -> Vec<(String, Vec<u8>)> {
    use dv::{Ack, GwBody as G, Op, Prefix};
    let gw = |prefix, frames| Op::Gateway { prefix, frames, tail: vec![] };
    let f = |seq, body| dv::Frame { seq, resend: false, ack: Ack::All, body };
    let hs = |body| f(Seq::Next, body);
    let accept =
        |cookie| hs(G::ConnectionAccept { right_nonce: true, nonce: 0, port: 5000, cookie });
    let gap_fill = |ahead| dv::Frame {
        seq: Seq::Next,
        resend: true,
        ack: Ack::All,
        body: G::GapFill { ahead },
    };
    let udp_active = vec![
        Op::Connect { nonce: 7, reset: true },
        gw(Prefix::Zero, vec![accept([1; 4])]),
        gw(Prefix::Zero, vec![hs(G::RegistrationAccept { id: 77, resumed: false })]),
        gw(Prefix::Session, vec![hs(G::GetDeviceConfig(1))]),
        gw(Prefix::Session, vec![f(Seq::Next, G::LogonResponse(5))]),
    ];
    let tcp_active = vec![
        Op::Connect { nonce: 1, reset: true },
        gw(Prefix::Zero, vec![f(Seq::Next, G::LogonResponse(5))]),
    ];
    let app = |n| f(Seq::Next, G::App { type_id: n, len: 16 });
    let send = |n| Op::Send { type_id: n, len: 20, expect_reply: true };
    // A device logged on over UDP (or TCP) with a buffer of `buffer`, then `ops`.
    let on_udp = |buffer, ops: Vec<Op>| dv::Input {
        tcp: false,
        buffer,
        ops: [udp_active.clone(), ops].concat(),
    };
    let on_tcp = |buffer, ops: Vec<Op>| dv::Input {
        tcp: true,
        buffer,
        ops: [tcp_active.clone(), ops].concat(),
    };
    let scenarios: Vec<(&str, dv::Input)> = vec![
        (
            "udp_flow_gap_and_gapfill",
            on_udp(
                4,
                vec![
                    send(1),
                    gw(Prefix::Session, vec![app(101), f(Seq::Next, G::Heartbeat(0))]),
                    gw(Prefix::Session, vec![f(Seq::Delta(2), G::App { type_id: 3, len: 8 })]),
                    gw(Prefix::Session, vec![gap_fill(2)]),
                    Op::Wait { ms: 6_000 },
                    Op::WaitForTimer,
                ],
            ),
        ),
        (
            "udp_retransmit_then_logout",
            on_udp(
                2,
                vec![
                    send(1),
                    send(2),
                    Op::Wait { ms: 250 },
                    Op::WaitForTimer,
                    Op::Logout,
                    gw(Prefix::Session, vec![f(Seq::Next, G::LoggedOut(Text::Printable(6)))]),
                ],
            ),
        ),
        (
            "udp_rehandshake_stream_reset",
            on_udp(
                4,
                vec![
                    send(1),
                    Op::Connect { nonce: 8, reset: false },
                    gw(Prefix::Zero, vec![accept([2; 4])]),
                    gw(Prefix::Zero, vec![hs(G::RegistrationAccept { id: 78, resumed: false })]),
                    gw(Prefix::Session, vec![hs(G::GetDeviceConfig(2))]),
                ],
            ),
        ),
        (
            "tcp_flow_test_request_reject",
            on_tcp(
                3,
                vec![
                    send(1),
                    gw(
                        Prefix::Zero,
                        vec![
                            app(101),
                            f(Seq::Next, G::TestRequest(4)),
                            f(Seq::Next, G::Reject(2, 4)),
                        ],
                    ),
                    Op::Wait { ms: 5_000 },
                    Op::WaitForTimer,
                ],
            ),
        ),
        (
            "tcp_resume_with_gap",
            on_tcp(
                3,
                vec![
                    send(1),
                    Op::TransportLost,
                    Op::Connect { nonce: 2, reset: false },
                    gw(Prefix::Zero, vec![f(Seq::Delta(3), G::LogonResponse(5))]),
                    gw(Prefix::Zero, vec![gap_fill(3)]),
                ],
            ),
        ),
        (
            "tcp_silent_gateway",
            on_tcp(3, vec![Op::WaitForTimer, Op::WaitForTimer, Op::WaitForTimer, Op::WaitForTimer]),
        ),
    ];
    scenarios.into_iter().map(|(name, i)| (format!("{name}.bin"), check(&i))).collect()
}
