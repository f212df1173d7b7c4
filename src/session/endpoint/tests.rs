//! The endpoint's unit tests: flow control and the slow reader (`flow.rs`), and what fuzzing
//! found (connection closes, the username index, the deadline heap, late timer passes).

use std::net::SocketAddr;

use super::*;
use crate::apps::Echo;
use crate::protocol::Password;
use crate::session::OpenLogon;
use crate::session::handshake::{CookieKey, CookieKeys};

const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

/// One TCP session logged on (connection 0, journal of 8) and its LogonResponse taken.
fn logged_on() -> Endpoint {
    let mut cfg = EndpointConfig { max_sessions: 4, max_connections: 4, ..Default::default() };
    cfg.session.journal.messages_per_session = 8;
    let keys = CookieKeys { current: CookieKey([1; 32]), previous: None };
    let mut ep = Endpoint::new(cfg, keys, [2; 32], Box::new(OpenLogon), Box::new(Echo));
    let logon = Message {
        header: Header { seq: 1, ..Header::default() },
        body: Body::LogonRequest {
            username: Username::new(b"flow").unwrap(),
            password: Password::new(b"pw").unwrap(),
            reset_seq_num: true,
        },
    };
    let mut f = [0u8; 128];
    let n = logon.encode(&mut f).unwrap();
    let frame = crate::protocol::split_frame(&f[..n]).unwrap().0;
    ep.handle_tcp_logon(NOW, ConnId(0), SocketAddr::from(([127, 0, 0, 1], 9)), frame);
    let mut buf = [0u8; 4096];
    let t = ep.poll_transmit(NOW, &mut buf).expect("LogonResponse");
    let f = crate::protocol::split_frame(&buf[..t.len]).unwrap().0;
    assert_eq!(Header::decode(f).unwrap().type_id, 2, "{:?}", Message::decode_frame(f));
    ep
}

/// Echo request `k` (seq k + 2) into the session.
fn request(ep: &mut Endpoint, k: i64) {
    let m = Message {
        header: Header { seq: k + 2, ..Header::default() },
        body: Body::App { type_id: 150, body: &k.to_le_bytes() },
    };
    let mut f = [0u8; 128];
    let n = m.encode(&mut f).unwrap();
    ep.handle_tcp_frame(NOW, ConnId(0), crate::protocol::split_frame(&f[..n]).unwrap().0);
}

/// Message types in a TCP transmit.
fn types(bytes: &[u8]) -> Vec<u16> {
    let mut rest = bytes;
    let mut out = Vec::new();
    while let Ok((f, padded)) = crate::protocol::split_frame(rest) {
        out.push(Header::decode(f).unwrap().type_id);
        rest = &rest[padded..];
    }
    out
}

#[test]
fn tcp_output_waits_for_room_and_never_exceeds_it() {
    let mut ep = logged_on();
    for k in 0..3 {
        request(&mut ep, k);
    }
    let mut buf = [0u8; 4096];
    // No room: nothing goes out, the session is parked, its replies stay unsent.
    assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).is_none());
    // Parked until unblocked, even with room now.
    assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 4096).is_none());
    ep.unblock(NOW);
    // Room for two 40-byte replies at a time (and a whole journal slot).
    let room = 256;
    let mut got = Vec::new();
    loop {
        ep.unblock(NOW);
        let Some(t) = ep.poll_transmit_within(NOW, &mut buf, &mut |_| room) else { break };
        assert!(t.len <= room && !t.last, "{} bytes for {room} of room", t.len);
        got.extend(types(&buf[..t.len]));
    }
    assert_eq!(got, [250, 250, 250]);
    assert!(
        !std::iter::from_fn(|| ep.poll_event()).any(|e| matches!(e, EndpointEvent::SlowReader(_)))
    );
}

#[test]
fn parked_session_whose_journal_fills_says_logged_out_last_and_detaches() {
    let mut ep = logged_on();
    let mut buf = [0u8; 4096];
    let mut k = 0;
    // The reader takes nothing: replies pile up in the journal (8) until it holds nothing
    // but unsent ones; the next request is not processed.
    while k < 20 {
        request(&mut ep, k);
        k += 1;
        if ep.sessions().next().is_some_and(|s| !s.state.is_attached()) {
            break;
        }
        ep.unblock(NOW);
        assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).is_none());
    }
    assert_eq!(k, 8, "the slow reader is found when the journal is full of unsent replies");
    let events: Vec<_> = std::iter::from_fn(|| ep.poll_event()).collect();
    assert!(events.contains(&EndpointEvent::SlowReader(ConnId(0))), "{events:?}");
    assert_eq!(ep.counters().get(Counter::SendBackpressure), 0, "no reply was refused");
    // Its one last transmit, whatever the room: the LoggedOut, marked last.
    let t = ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).expect("LoggedOut");
    assert!(t.last);
    let m = Message::decode_frame(crate::protocol::split_frame(&buf[..t.len]).unwrap().0);
    let m = m.unwrap();
    assert_eq!(m.body, Body::LoggedOut { reason: b"send queue full" });
    assert_eq!(m.header.seq, 10, "after the LogonResponse and 8 replies");
    let events: Vec<_> = std::iter::from_fn(|| ep.poll_event()).collect();
    assert!(events.contains(&EndpointEvent::CloseConnection(ConnId(0))), "{events:?}");
    let s = ep.sessions().next().unwrap();
    assert_eq!(s.state, State::Detached, "kept for resume");
    assert_eq!(s.expected_in, 10, "requests 2..=9 processed, the ninth not");
}

/// Sends a LogonRequest as the first frame of TCP connection `conn`.
fn tcp_logon(ep: &mut Endpoint, conn: u32, user: &[u8], seq: i64, reset: bool) {
    let logon = Message {
        header: Header { seq, ..Header::default() },
        body: Body::LogonRequest {
            username: Username::new(user).unwrap(),
            password: Password::new(b"pw").unwrap(),
            reset_seq_num: reset,
        },
    };
    let mut f = [0u8; 128];
    let n = logon.encode(&mut f).unwrap();
    let frame = crate::protocol::split_frame(&f[..n]).unwrap().0;
    let peer = SocketAddr::from(([127, 0, 0, 1], 9000 + conn as u16));
    ep.handle_tcp_logon(NOW, ConnId(conn), peer, frame);
}

/// Every transmit (destination and message types) and event of one pass.
fn drain(ep: &mut Endpoint) -> (Vec<(Link, Vec<u16>)>, Vec<EndpointEvent>) {
    drain_at(ep, NOW)
}

fn drain_at(ep: &mut Endpoint, now: Timestamp) -> (Vec<(Link, Vec<u16>)>, Vec<EndpointEvent>) {
    let mut buf = [0u8; 4096];
    let mut sent = Vec::new();
    while let Some(t) = ep.poll_transmit(now, &mut buf) {
        sent.push((t.dest, types(&buf[..t.len])));
    }
    (sent, std::iter::from_fn(|| ep.poll_event()).collect())
}

/// Found by the `endpoint` fuzz target: a first logon refused by the session (resetSeqNum
/// = 1 with a number other than 1) left its username in the index after the session was
/// released. The freed slot went to the next logon (bob); alice's next logon then found
/// bob's session under her name, displaced bob and took over his session and journal.
#[test]
fn refused_first_logon_leaves_no_username_behind() {
    let cfg = EndpointConfig { max_sessions: 4, max_connections: 4, ..Default::default() };
    let keys = CookieKeys { current: CookieKey([1; 32]), previous: None };
    let mut ep = Endpoint::new(cfg, keys, [2; 32], Box::new(OpenLogon), Box::new(Echo));
    tcp_logon(&mut ep, 0, b"alice", 2, true);
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent, [(Link::Tcp(ConnId(0)), vec![5])], "LoggedOut");
    assert!(events.contains(&EndpointEvent::CloseConnection(ConnId(0))), "{events:?}");
    ep.handle_tcp_closed(NOW, ConnId(0));
    assert_eq!(ep.session_count(), 0);

    tcp_logon(&mut ep, 1, b"bob", 1, true);
    let (sent, _) = drain(&mut ep);
    assert_eq!(sent, [(Link::Tcp(ConnId(1)), vec![2])], "bob's LogonResponse");

    tcp_logon(&mut ep, 2, b"alice", 1, false);
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent, [(Link::Tcp(ConnId(2)), vec![2])], "alice's LogonResponse, no more");
    assert!(!events.contains(&EndpointEvent::CloseConnection(ConnId(1))), "{events:?}");
    let mut rows: Vec<(String, Link, State)> =
        ep.sessions().map(|s| (s.username.as_str().to_owned(), s.link, s.state)).collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        rows,
        [
            ("alice".to_owned(), Link::Tcp(ConnId(2)), State::Active),
            ("bob".to_owned(), Link::Tcp(ConnId(1)), State::Active),
        ]
    );
}

/// Found by the `endpoint` fuzz target (its counting allocator): every frame that followed
/// a refused first frame in the same read queued another CloseConnection for the same
/// connection, so one read of small frames grew the event queue past its start-up capacity.
#[test]
fn frames_after_a_refused_logon_queue_one_close() {
    let cfg = EndpointConfig { max_sessions: 4, max_connections: 4, ..Default::default() };
    let keys = CookieKeys { current: CookieKey([1; 32]), previous: None };
    let mut ep = Endpoint::new(cfg, keys, [2; 32], Box::new(OpenLogon), Box::new(Echo));
    let m = Message {
        header: Header { seq: 1, ..Header::default() },
        body: Body::App { type_id: 150, body: b"" },
    };
    let mut f = [0u8; 64];
    let n = m.encode(&mut f).unwrap();
    let frame = crate::protocol::split_frame(&f[..n]).unwrap().0;
    let peer = SocketAddr::from(([127, 0, 0, 1], 9));
    // Not a LogonRequest: refused, then 500 more frames from the same read.
    ep.handle_tcp_logon(NOW, ConnId(3), peer, frame);
    for _ in 0..500 {
        ep.handle_tcp_frame(NOW, ConnId(3), frame);
        ep.handle_tcp_error(NOW, ConnId(3), crate::protocol::DecodeError::NonZeroPadding);
    }
    let (sent, events) = drain(&mut ep);
    assert_eq!(sent, [(Link::Tcp(ConnId(3)), vec![5])], "one LoggedOut");
    assert_eq!(events, [EndpointEvent::CloseConnection(ConnId(3))]);
    // Once closed, the id is a new connection: its own refusal is closed again.
    ep.handle_tcp_closed(NOW, ConnId(3));
    ep.handle_tcp_logon(NOW, ConnId(3), peer, frame);
    ep.handle_tcp_frame(NOW, ConnId(3), frame);
    let (_, events) = drain(&mut ep);
    assert_eq!(events, [EndpointEvent::CloseConnection(ConnId(3))]);
}

/// Found by the `endpoint` fuzz target: when the timer pass came late (here 20 s after the
/// last input, the shard stalled), the TestRequest armed its liveness deadline at
/// `last_heard + 2.5 H`, already past, and the stale-timer sweep disarmed it: the silent
/// session was never found lost and heartbeated forever. DESIGN.md §2 rule 6: lost after a
/// further H of silence after the TestRequest.
#[test]
fn late_timer_pass_still_finds_a_silent_session_lost() {
    let mut ep = logged_on();
    let late = NOW + Duration::from_secs(20);
    ep.handle_timeout(late);
    let (sent, _) = drain_at(&mut ep, late);
    assert!(sent.iter().any(|(_, t)| t.contains(&11)), "TestRequest: {sent:?}");
    let lost = late + Duration::from_secs(5);
    let mut logged_out = false;
    for _ in 0..100 {
        let Some(t) = ep.poll_timeout().filter(|&t| t <= lost) else { break };
        ep.handle_timeout(t);
        logged_out |= drain_at(&mut ep, t).0.iter().any(|(_, t)| t.contains(&5));
    }
    assert!(logged_out, "LoggedOut(heartbeat timeout) within H of the TestRequest");
    assert_eq!(ep.sessions().next().map(|s| s.state), Some(State::Detached));
}

/// Found by the `endpoint` fuzz target's counting allocator: a session slot released and
/// reused at the same instant (one shard pass) scheduled the same deadlines again, and the
/// deadline heap of the time grew past its start-up capacity. The timing wheel holds one
/// entry per slot by construction; the reused slot is still served.
#[test]
fn slot_reused_at_one_instant_keeps_its_one_timer_entry() {
    let cfg = EndpointConfig { max_sessions: 1, max_connections: 1, ..Default::default() };
    let keys = CookieKeys { current: CookieKey([1; 32]), previous: None };
    let mut ep = Endpoint::new(cfg, keys, [2; 32], Box::new(OpenLogon), Box::new(Echo));
    for _ in 0..100 {
        tcp_logon(&mut ep, 0, b"again", 1, true);
        assert_eq!(drain(&mut ep).0, [(Link::Tcp(ConnId(0)), vec![2])], "LogonResponse");
        let bad = crate::protocol::DecodeError::InvalidProtocolId(0);
        ep.handle_tcp_error(NOW, ConnId(0), bad);
        assert_eq!(drain(&mut ep).0, [(Link::Tcp(ConnId(0)), vec![5])], "LoggedOut");
        ep.handle_tcp_closed(NOW, ConnId(0));
    }
    assert!(!ep.wheel.is_scheduled(0), "released: no timer left behind");
    // The wheel still serves its session: a heartbeat 5 s after the next logon.
    tcp_logon(&mut ep, 0, b"again", 1, true);
    let _ = drain(&mut ep);
    // The wheel may wake the driver earlier (a slot of a higher level cascades), never later.
    let hb = NOW + Duration::from_secs(5);
    assert!(ep.poll_timeout().is_some_and(|t| t <= hb), "{:?}", ep.poll_timeout());
    let early = NOW + Duration::from_millis(4_999);
    ep.handle_timeout(early);
    assert_eq!(drain_at(&mut ep, early).0, [], "nothing early");
    ep.handle_timeout(hb);
    assert_eq!(drain_at(&mut ep, hb).0, [(Link::Tcp(ConnId(0)), vec![10])], "Heartbeat at 5 s");
}
