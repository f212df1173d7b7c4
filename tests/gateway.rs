//! Real sockets on 127.0.0.1: a whole gateway in this process (or the real binary, for SIGTERM),
//! devices driven by the same device-side state machine the load generator uses, and raw peers
//! that build datagrams and frames by hand. Every wait is bounded.
//!
//! Each test body is written once as `fn name(io: &str)` and instantiated per I/O backend:
//! `epoll_name` always runs; `uring_name` runs when `fleetgate::io::uring::probe()` succeeds and
//! otherwise prints why it was skipped, or fails under `FLEETGATE_REQUIRE_URING=1`
//! (`fleetgate::sim::uring_available`).

#[allow(dead_code)]
#[macro_use]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use fleetgate::counters::Counter;
use fleetgate::protocol::{Body, Password, Username};
use fleetgate::session::{Device, DeviceState, EndReason};
use fleetgate::tools::loadgen::FeedChecker;
use fleetgate::tools::passwd::{add_user, load};

const SECOND: Duration = Duration::from_secs(1);

backends! {
    udp_flow => epoll_udp_flow, uring_udp_flow;
    udp_logon_datagrams_each_way => epoll_udp_logon_datagrams_each_way,
        uring_udp_logon_datagrams_each_way;
    tcp_flow => epoll_tcp_flow, uring_tcp_flow;
    metrics_sessions_and_shutdown => epoll_metrics_sessions_and_shutdown,
        uring_metrics_sessions_and_shutdown;
    device_config_timeout_esp0008 => epoll_device_config_timeout_esp0008,
        uring_device_config_timeout_esp0008;
    heartbeat_loss_detaches => epoll_heartbeat_loss_detaches, uring_heartbeat_loss_detaches;
    feed_resume_after_detach_is_contiguous => epoll_feed_resume_after_detach_is_contiguous,
        uring_feed_resume_after_detach_is_contiguous;
    udp_resume_recovers_missed_replies => epoll_udp_resume_recovers_missed_replies,
        uring_udp_resume_recovers_missed_replies;
    tcp_resume => epoll_tcp_resume, uring_tcp_resume;
    displacement_udp_and_tcp => epoll_displacement_udp_and_tcp, uring_displacement_udp_and_tcp;
    tcp_connection_churn => epoll_tcp_connection_churn, uring_tcp_connection_churn;
    bad_credentials => epoll_bad_credentials, uring_bad_credentials;
    malformed_datagrams_dropped_and_counted => epoll_malformed_datagrams_dropped_and_counted,
        uring_malformed_datagrams_dropped_and_counted;
    malformed_tcp_reject_or_logout => epoll_malformed_tcp_reject_or_logout,
        uring_malformed_tcp_reject_or_logout;
    slow_tcp_reader_logged_out_then_resumes => epoll_slow_tcp_reader_logged_out_then_resumes,
        uring_slow_tcp_reader_logged_out_then_resumes;
    slow_tcp_reader_that_never_reads_is_aborted =>
        epoll_slow_tcp_reader_that_never_reads_is_aborted,
        uring_slow_tcp_reader_that_never_reads_is_aborted;
    forged_and_expired_cookies => epoll_forged_and_expired_cookies,
        uring_forged_and_expired_cookies;
    connection_request_size_and_version => epoll_connection_request_size_and_version,
        uring_connection_request_size_and_version;
    server_full => epoll_server_full, uring_server_full;
    tcp_logon_deadline_and_split_first_frame => epoll_tcp_logon_deadline_and_split_first_frame,
        uring_tcp_logon_deadline_and_split_first_frame;
    sigterm_logs_out_and_exits_0 => epoll_sigterm_logs_out_and_exits_0,
        uring_sigterm_logs_out_and_exits_0;
}

const SEED_CONFIG: &[u8] = b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~";

fn udp_flow(io: &str) {
    let gw = start(io, &[]);
    let mut d = Udp::new(&gw, "RT-UDP-1");
    d.dev.set_device_config(SEED_CONFIG);
    d.log_on(77);
    d.echo(&bodies(0..50));
    for (k, a) in d.seen.app.iter().enumerate() {
        assert_eq!(a.type_id, 250);
        assert_eq!(a.body, (k as u32).to_le_bytes());
    }
    d.log_out();
    assert!(matches!(d.dev.state(), DeviceState::Ended(_)), "{:?}", d.dev.state());
    let totals = gw.stop();
    assert_eq!(totals.acceptor.get(Counter::ConnectionRequestsAccepted), 1);
    assert_eq!(totals.counters.get(Counter::LogonsAccepted), 1);
    assert_eq!(totals.counters.get(Counter::AppMessagesReceived), 50);
}

/// Issue 11: one UDP logon through real sockets is 3 datagrams from the device and 4 to it:
/// the device's DeviceConfig and LogonRequest share one (DESIGN.md §1.5), and the gateway takes
/// the config, then the logon, from it (a logon taken first would have been dropped as not
/// allowed). Nothing follows within the acknowledgement and retransmit times; a logout is one
/// more each way. (`sim::rules::rule01_udp_logon_is_three_datagrams_up_and_four_down` says why
/// this is the fewest.)
fn udp_logon_datagrams_each_way(io: &str) {
    // Retries slower than a loaded machine's stalls, so that every datagram counted is needed.
    let gw = start(io, &["udp.device_config_retry_ms=4000"]);
    let mut d = Udp::new(&gw, "RT-UDP-DG");
    let mut cfg = *d.dev.config();
    (cfg.retransmit_min, cfg.handshake_retry) = (4 * SECOND, 4 * SECOND);
    d.dev = Device::new(cfg);
    d.dev.set_device_config(SEED_CONFIG);
    d.log_on(91);
    // Longer than the gateway's `udp.ack_delay_ms` (20 ms), shorter than H (5 s).
    d.run_for(Duration::from_millis(500));
    let up: [&[u16]; 3] = [&[50], &[53], &[57, 1]];
    let down: [&[u16]; 4] = [&[51], &[54], &[56], &[2]];
    assert_eq!(
        d.datagrams(true),
        up,
        "ConnectionRequest, RegistrationRequest, DeviceConfig + LogonRequest"
    );
    assert_eq!(
        d.datagrams(false),
        down,
        "ConnectionAccept, RegistrationAccept, GetDeviceConfig, LogonResponse"
    );
    d.log_out();
    assert_eq!(d.datagrams(true)[3..], [[4]], "LogoutRequest");
    assert_eq!(d.datagrams(false)[4..], [[5]], "LoggedOut");
    assert_eq!(d.dev.stats().retransmits, 0);
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::DeviceConfigRequestsSent), 1);
    assert_eq!(totals.counters.get(Counter::LogonsAccepted), 1);
    assert_eq!(totals.counters.get(Counter::DropNotAllowed), 0);
}

fn tcp_flow(io: &str) {
    let gw = start(io, &[]);
    let mut d = Tcp::new(&gw, "rt-tcp-1");
    d.log_on();
    d.echo(&bodies(0..50));
    assert!(
        d.seen
            .app
            .iter()
            .enumerate()
            .all(|(k, a)| a.type_id == 220 && a.body == (k as u32).to_le_bytes())
    );
    d.log_out();
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::AppMessagesReceived), 50);
}

fn metrics_sessions_and_shutdown(io: &str) {
    let gw = start(io, &[]);
    let mut d = Udp::new(&gw, "RT-UDP-2");
    d.log_on(5);
    // Snapshots are published once a second.
    let addr = gw.metrics_addr.expect("metrics enabled");
    wait_metric(addr, "logons_accepted_total", 1, 5 * SECOND, || d.step());
    let body = http_get(addr, "/metrics");
    assert!(body.contains("fleetgate_sessions{shard="), "{body}");
    let sessions = http_get(addr, "/sessions");
    let row = session_row(&sessions, "RT-UDP-2").expect("the device in /sessions");
    assert_eq!(row["state"], "active", "{sessions}");
    assert!(http_get(addr, "/healthz").contains("ok"));
    // Shutdown logs the device out within the drain timeout.
    let flag = gw.shutdown_flag();
    flag.store(true, std::sync::atomic::Ordering::Relaxed);
    let t0 = Instant::now();
    d.run_until("LoggedOut on shutdown", 3 * SECOND, |d| d.seen.ended.is_some());
    assert_eq!(d.seen.logged_out(), Some("gateway shutting down"));
    drop(gw);
    assert!(t0.elapsed() < 3 * SECOND);
}

/// Issue 1. A device that completes the handshake but never answers GetDeviceConfig: the
/// gateway re-sends GetDeviceConfig every `udp.device_config_retry_ms`, then after
/// `udp.device_config_timeout_ms` sends LoggedOut("eSP0008 could not get device config") and
/// drops the session (its id is unknown afterwards).
///
/// The timeout leaves 1.3 s for re-sends after the first retry is due: a shard thread kept off
/// the CPU for longer than the old 400 ms window (0.6 to 2.3 s runnable but not running were
/// measured on a starved 2-core host) woke past the deadline, and rightly sent eSP0008 without
/// re-sending first.
fn device_config_timeout_esp0008(io: &str) {
    const TIMEOUT: Duration = Duration::from_millis(1500);
    let gw = start(io, &["udp.device_config_timeout_ms=1500", "udp.device_config_retry_ms=200"]);
    let raw = RawUdp::new();
    let uid = b"RT-ESP0008";
    let (port, cookie) = raw.handshake(gw.gateway.handshake_addr, uid, 11);
    let t0 = Instant::now();
    raw.send(local(port), &datagram(0, &[registration_request(uid, 11, cookie)]));
    let mut session_id = None;
    let mut get_config = Vec::new();
    let mut logged_out = None;
    while logged_out.is_none() {
        assert!(
            t0.elapsed() < TIMEOUT + Duration::from_millis(2400),
            "no LoggedOut {TIMEOUT:?} + 2.4 s after registering (GetDeviceConfig at {get_config:?})"
        );
        let Some(dg) = raw.recv(Duration::from_millis(100)) else { continue };
        let (sid, frames) = split(&dg);
        for f in &frames {
            match decode(f).body {
                Body::RegistrationAccept { session_id: id, resumed } => {
                    assert_eq!(sid, 0, "RegistrationAccept carries prefix 0");
                    assert!(!resumed);
                    session_id = Some(id);
                }
                Body::GetDeviceConfig { .. } => {
                    assert_eq!(Some(sid), session_id, "GetDeviceConfig carries the session id");
                    get_config.push(t0.elapsed());
                }
                Body::LoggedOut { reason } => {
                    assert_eq!(Some(sid), session_id, "LoggedOut carries the session id");
                    logged_out = Some((String::from_utf8_lossy(reason).into_owned(), t0.elapsed()));
                }
                // The answer to a ConnectionRequest `handshake` re-sent after 300 ms without a
                // reply, arriving after the first answer (a slow acceptor under load).
                Body::ConnectionAccept { client_nonce: 11, .. } if sid == 0 => {}
                other => panic!("unexpected {other:?} while awaiting the device config"),
            }
        }
    }
    let (reason, at) = logged_out.unwrap();
    assert_eq!(reason, "eSP0008 could not get device config");
    assert!(
        get_config.len() >= 2,
        "GetDeviceConfig not re-sent: {get_config:?}, eSP0008 at {at:?}"
    );
    assert!(
        at >= TIMEOUT - Duration::from_millis(50) && at < TIMEOUT + Duration::from_millis(1400),
        "eSP0008 after {at:?}, configured {TIMEOUT:?}"
    );
    // The session is gone: nothing more comes, and a late DeviceConfig is an unknown session.
    let sid = session_id.unwrap();
    let late = Body::DeviceConfig { correlation_id: 1, config: b"AB~001" };
    raw.send(local(port), &datagram(sid, &[msg(0, late)]));
    assert_eq!(raw.recv(Duration::from_millis(400)), None, "answer after eSP0008");
    let totals = gw.stop();
    let c = &totals.counters;
    assert_eq!(c.get(Counter::DeviceConfigTimeouts), 1);
    assert!(c.get(Counter::DeviceConfigRequestsSent) >= 2);
    assert_eq!(c.get(Counter::DropUnknownSession), 1);
    assert_eq!(c.get(Counter::LogonsAccepted), 0);
}

/// Issue 2. A logged-on UDP device goes silent (its socket is still read): after 1.5 × H the
/// gateway sends TestRequest, after a further H the session is lost and kept detached
/// (/sessions says "detached", /metrics counts the detach).
fn heartbeat_loss_detaches(io: &str) {
    let gw = start(io, &["session.heartbeat_interval_s=1"]);
    let addr = gw.metrics_addr.expect("metrics enabled");
    let mut d = Udp::new(&gw, "RT-HB-LOSS");
    d.log_on(7);
    assert_eq!(d.seen.logged_on[0].0, 1, "LogonResponse announces H = 1 s");
    let sid = d.dev.session_id();
    // Silence: the device is no longer driven; its socket is read raw.
    let t0 = Instant::now();
    let mut test_request = None;
    let mut logged_out = None;
    while t0.elapsed() < 5 * SECOND && logged_out.is_none() {
        let Some(dg) = recv_within(&d.sock, Duration::from_millis(50)) else { continue };
        let (prefix, frames) = split(&dg);
        assert_eq!(prefix, sid);
        for f in &frames {
            match decode(f).body {
                Body::TestRequest { .. } => {
                    test_request.get_or_insert(t0.elapsed());
                }
                Body::LoggedOut { reason } => {
                    logged_out = Some((String::from_utf8_lossy(reason).into_owned(), t0.elapsed()))
                }
                _ => {}
            }
        }
    }
    let tr = test_request.expect("no TestRequest within 5 s of silence");
    assert!(
        tr >= Duration::from_millis(1300) && tr <= Duration::from_millis(2500),
        "TestRequest after {tr:?} of silence, expected ~1.5 s"
    );
    // The LoggedOut is best effort; when it comes, it comes a further H after the TestRequest.
    if let Some((reason, at)) = &logged_out {
        assert!(*at >= tr + Duration::from_millis(800), "lost after {at:?}: {reason}");
    }
    wait_metric(addr, "sessions_detached_total", 1, 4 * SECOND, idle);
    let t1 = Instant::now();
    let row = loop {
        let json = http_get(addr, "/sessions");
        match session_row(&json, "RT-HB-LOSS") {
            Some(row) if row["state"] == "detached" => break row,
            other => assert!(t1.elapsed() < 3 * SECOND, "not detached: {other:?} in {json}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(row["id"], format!("{sid:016x}"), "{row}");
    assert!(row["link"].is_null(), "{row}");
    let body = http_get(addr, "/metrics");
    assert!(metric_in(&body, "test_requests_sent_total") >= 1, "{body}");
    assert_eq!(metric_in(&body, "sessions_lost_total"), 1, "{body}");
}

/// Issue 3. A feed subscriber goes dark until the gateway detaches its session, stays away a
/// little longer, then handshakes again from a new socket and resumes: same session id,
/// resumed = 1, and (DESIGN.md §2 rules 7-8) the feed counters it ends up with are contiguous
/// across the outage, recovered with ResendRequest.
fn feed_resume_after_detach_is_contiguous(io: &str) {
    let gw = start(
        io,
        &[
            "gateway.app=\"feed\"",
            "gateway.feed_interval_ms=50",
            "session.heartbeat_interval_s=1",
            "journal.messages_per_session=256",
        ],
    );
    let addr = gw.metrics_addr.expect("metrics enabled");
    let mut d = Udp::new(&gw, "RT-FEED-1");
    d.log_on(1);
    let sid = d.dev.session_id();
    d.run_until("5 feed events", 5 * SECOND, |d| d.seen.of_type(300).count() >= 5);
    // Dark: inbound is ignored and nothing is sent until the gateway has detached the session
    // (1 + 1.5 s of silence with H = 1 s), then for 300 ms more.
    wait_metric(addr, "sessions_detached_total", 1, 6 * SECOND, idle);
    std::thread::sleep(Duration::from_millis(300));
    let _old = d.replace_socket();
    d.connect(2, false);
    d.run_until("resumed logon", 5 * SECOND, |d| {
        d.dev.state() == DeviceState::Active && d.seen.logged_on.len() == 2
    });
    assert_eq!(d.seen.registered.last(), Some(&(sid, true)), "resumed with the same id");
    let before = d.seen.of_type(300).count();
    d.run_until("catch-up and live events", 5 * SECOND, |d| {
        d.seen.of_type(300).count() >= before + 60
    });
    let mut check = FeedChecker::default();
    for a in d.seen.of_type(300) {
        check.observe(u64::from_le_bytes(a.body[..8].try_into().unwrap()));
    }
    assert!(d.dev.stats().resend_requests >= 1, "no ResendRequest: {:?}", d.dev.stats());
    assert!(check.is_exact(), "feed not contiguous across the outage: {check:?}");
}

/// Resume on UDP (DESIGN.md §2 rules 4, 7, 8), deterministic: echo replies produced while the
/// device is dark are journaled; after a new handshake from a new socket (the old attach is
/// displaced) the device resumes with resumed = 1, LogonResponse.lastProcessedSeqNum = the last
/// request it sent, and recovers every missed reply, exactly once and in order, with the resend
/// flag.
fn udp_resume_recovers_missed_replies(io: &str) {
    let gw = start(io, &[]);
    let mut d = Udp::new(&gw, "RT-RESUME-1");
    d.log_on(1);
    let sid = d.dev.session_id();
    d.echo(&bodies(0..5));
    // 20 requests go out; the device goes dark before reading any reply.
    for b in bodies(5..25) {
        let now = d.clock.now();
        d.dev.send_app(now, 150, &b, false).unwrap();
    }
    d.flush();
    let sent_through = d.dev.next_out() - 1;
    let addr = gw.metrics_addr.expect("metrics enabled");
    wait_metric(addr, "app_messages_received_total", 25, 5 * SECOND, idle);
    let old = d.replace_socket();
    d.connect(2, false);
    d.run_until("resumed logon", 5 * SECOND, |d| {
        d.dev.state() == DeviceState::Active && d.seen.logged_on.len() == 2
    });
    assert_eq!(d.seen.registered.last(), Some(&(sid, true)), "resumed with the same id");
    assert_eq!(d.seen.logged_on[1].1, sent_through, "lastProcessedSeqNum on resume");
    d.run_until("missed replies", 5 * SECOND, |d| d.seen.of_type(250).count() >= 25);
    let replies: Vec<_> = d.seen.of_type(250).collect();
    assert_eq!(replies.len(), 25, "duplicates: {replies:?}");
    for (k, a) in replies.iter().enumerate() {
        assert_eq!(a.body, (k as u32).to_le_bytes(), "reply {k}");
    }
    assert!(replies[5..].iter().all(|a| a.resent), "recovered replies carry the resend flag");
    assert!(d.dev.stats().resend_requests >= 1);
    // The old attach was told it was displaced (after the replies it never read).
    let t0 = Instant::now();
    let farewell = loop {
        assert!(t0.elapsed() < 2 * SECOND, "no LoggedOut on the old socket");
        let Some(dg) = recv_within(&old, Duration::from_millis(100)) else { continue };
        let (_, frames) = split(&dg);
        if let Some(reason) = frames.iter().find_map(|f| match decode(f).body {
            Body::LoggedOut { reason } => Some(String::from_utf8_lossy(reason).into_owned()),
            _ => None,
        }) {
            break reason;
        }
    };
    assert_eq!(farewell, "displaced by a new connection");
    // Live traffic continues.
    d.echo(&bodies(25..30));
    let totals = gw.stop();
    let c = &totals.counters;
    assert_eq!(c.get(Counter::SessionsResumed), 1);
    assert!(c.get(Counter::MessagesResent) >= 20);
}

/// Issue 4. A TCP client's connection drops; it reconnects with the same username and
/// resetSeqNum = 0: the session resumes with lastProcessedSeqNum = what it had sent, and echo
/// continues on both sequences.
fn tcp_resume(io: &str) {
    let gw = start(io, &[]);
    let addr = gw.metrics_addr.expect("metrics enabled");
    let mut c = Tcp::new(&gw, "rt-tcp-resume");
    c.log_on();
    c.echo(&bodies(0..10));
    let sent = c.dev.next_out() - 1;
    c.stream.shutdown(std::net::Shutdown::Both).unwrap();
    c.dev.transport_lost();
    wait_metric(addr, "sessions_detached_total", 1, 4 * SECOND, idle);
    c.reconnect(gw.gateway.tcp_addr, 2, false);
    c.run_until("resumed logon", 5 * SECOND, |c| {
        c.dev.state() == DeviceState::Active && c.seen.logged_on.len() == 2
    });
    assert_eq!(c.seen.logged_on[1].1, sent, "lastProcessedSeqNum on resume");
    c.echo(&bodies(10..20));
    let replies: Vec<_> = c.seen.of_type(220).map(|a| a.body.clone()).collect();
    assert_eq!(replies, bodies(0..20));
    c.log_out();
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::SessionsResumed), 1);
    assert_eq!(totals.counters.get(Counter::LogonsAccepted), 2);
    assert_eq!(totals.counters.get(Counter::ProtocolViolations), 0);
}

/// Issue 5. One live session per deviceUid and per username: the newer attach displaces the
/// older, which gets LoggedOut("displaced by a new connection") (and, on TCP, a close).
fn displacement_udp_and_tcp(io: &str) {
    let gw = start(io, &[]);
    let mut a = Udp::new(&gw, "RT-DUP-1");
    a.log_on(1);
    let sid = a.dev.session_id();
    let mut b = Udp::new(&gw, "RT-DUP-1");
    b.connect(2, true);
    until("UDP displacement", 5 * SECOND, || {
        a.step();
        b.step();
        a.seen.ended.is_some() && b.dev.state() == DeviceState::Active
    });
    assert_eq!(a.seen.logged_out(), Some("displaced by a new connection"));
    assert_eq!(b.seen.registered, vec![(sid, true)], "same session id, resumed");
    b.echo(&bodies(0..3));
    // The displaced device hears nothing more.
    assert_eq!(recv_within(&a.sock, Duration::from_millis(200)), None);

    let mut c1 = Tcp::new(&gw, "rt-dup-user");
    c1.log_on();
    c1.echo(&bodies(0..2));
    let mut c2 = Tcp::new(&gw, "rt-dup-user");
    until("TCP displacement", 5 * SECOND, || {
        c1.step();
        c2.step();
        c1.closed && c2.dev.state() == DeviceState::Active
    });
    assert_eq!(c1.seen.logged_out(), Some("displaced by a new connection"));
    c2.echo(&bodies(0..3));
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::SessionsDisplaced), 2);
}

/// Connection churn on one shard: a connection whose first frame is not a LogonRequest is
/// refused (LoggedOut("logon required"), close), and a client connecting right after it must
/// still log on; so must one connecting right after a logout. The gateway never closes a
/// logged-on client's connection without a LoggedOut. (Regression test: a connection id was
/// once reused before the close of its previous connection reached the endpoint, and that stale
/// close detached the new client's session.)
fn tcp_connection_churn(io: &str) {
    let gw = start(io, &["gateway.shards=1", "gateway.cpus=[0]"]);
    // The clients run on the shard's core: the shard is preempted as soon as it closes a
    // connection, so the next client arrives while that close is still being processed.
    let clients = std::thread::scope(|s| {
        s.spawn(|| {
            let cores = core_affinity::get_core_ids().unwrap_or_default();
            if let Some(&core) = cores.iter().find(|c| c.id == 0) {
                core_affinity::set_for_current(core);
            }
            for k in 0..100u32 {
                let mut refused = RawTcp::connect(gw.gateway.tcp_addr);
                refused.send(&encode(msg(1, Body::Heartbeat { correlation_id: 0 })));
                let f = refused.recv(5 * SECOND).expect("LoggedOut");
                assert_eq!(decode(&f).body, Body::LoggedOut { reason: b"logon required" });
                assert!(refused.wait_closed(5 * SECOND), "refused connection left open");
                let mut c = Tcp::new(&gw, &format!("rt-churn-{k}"));
                c.run_until("logon", 5 * SECOND, |c| {
                    assert!(!c.closed, "client {k}: closed before logon: {:?}", c.seen.events);
                    c.dev.state() == DeviceState::Active
                });
                c.echo(&bodies(k..k + 1));
                let now = c.clock.now();
                c.dev.logout(now);
                c.run_until("LoggedOut and close", 5 * SECOND, |c| c.closed);
                assert_eq!(c.seen.logged_out(), Some("logout"), "client {k}");
            }
        })
        .join()
    });
    if let Err(panic) = clients {
        std::panic::resume_unwind(panic);
    }
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::LogonsAccepted), 100);
    assert_eq!(totals.counters.get(Counter::SessionsDetached), 0);
}

/// Issue 6. With a credentials file: a wrong password (or unknown user) gets
/// LoggedOut("invalid credentials") and the connection closes (UDP: the session ends); the right
/// password logs on; repeated failures from one address are refused without checking.
fn bad_credentials(io: &str) {
    let dir = TempDir::new(&format!("cred-{io}"));
    let path = dir.0.join("credentials");
    add_user(&path, "alice", b"right-password").unwrap();
    add_user(&path, "bob", b"bob-password").unwrap();
    let auth = Arc::new(load(&path).unwrap());
    let cred = format!("auth.credentials=\"{}\"", path.display());
    // One shard: the failure count per source address is kept per shard.
    let gw = start_with_auth(io, &[&cred, "gateway.shards=1"], auth);

    for (user, pw) in [("alice", &b"wrong"[..]), ("mallory", b"right-password")] {
        let mut bad = Tcp::with_password(gw.gateway.tcp_addr, user, pw);
        bad.run_until("refusal and close", 5 * SECOND, |c| c.closed);
        assert_eq!(
            bad.seen.logged_out(),
            Some("invalid credentials"),
            "{user}: read error {:?}, events {:?}",
            bad.error,
            bad.seen.events
        );
        assert_eq!(bad.dev.state(), DeviceState::Ended(EndReason::LoggedOut));
    }
    let mut good = Tcp::with_password(gw.gateway.tcp_addr, "alice", b"right-password");
    good.log_on();
    good.echo(&bodies(0..2));

    let mut u = Udp::with_login(&gw, "RT-CRED-1", b"bob", b"wrong");
    u.connect(1, true);
    u.run_until("refusal", 5 * SECOND, |d| d.seen.ended.is_some());
    assert_eq!(u.seen.logged_out(), Some("invalid credentials"));
    let mut u2 = Udp::with_login(&gw, "RT-CRED-2", b"bob", b"bob-password");
    u2.log_on(2);
    u2.echo(&bodies(0..2));

    // Failures 4 and 5 from 127.0.0.1 reach the limit (auth.max_failures = 5): then even the
    // right password is refused.
    for _ in 0..2 {
        let mut bad = Tcp::with_password(gw.gateway.tcp_addr, "alice", b"wrong");
        bad.run_until("refusal and close", 5 * SECOND, |c| c.closed);
        assert_eq!(bad.seen.logged_out(), Some("invalid credentials"));
    }
    let mut limited = Tcp::with_password(gw.gateway.tcp_addr, "alice", b"right-password");
    limited.run_until("refusal and close", 5 * SECOND, |c| c.closed);
    assert_eq!(limited.seen.logged_out(), Some("too many failed logons"));
    // The sessions already logged on are unaffected.
    good.echo(&bodies(2..4));
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::LogonsFailed), 5);
    assert_eq!(totals.counters.get(Counter::LogonsRateLimited), 1);
    assert_eq!(totals.counters.get(Counter::LogonsAccepted), 2);
}

/// xorshift64*, for reproducible garbage.
fn garbage(state: &mut u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *state ^= *state >> 12;
            *state ^= *state << 25;
            *state ^= *state >> 27;
            (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

/// Issue 7. Garbage on the session ports (random bytes, an unknown session id, a valid session
/// id from another source port, truncated messages) is never answered, is counted under
/// `fleetgate_drop_*`, and does not disturb a logged-on device.
fn malformed_datagrams_dropped_and_counted(io: &str) {
    let gw = start(io, &[]);
    let addr = gw.metrics_addr.expect("metrics enabled");
    let mut good = Udp::new(&gw, "RT-GOOD-1");
    good.log_on(1);
    good.echo(&bodies(0..5));
    let sid = good.dev.session_id();
    let port = good.session_port.expect("session port");
    wait_metric(addr, "logons_accepted_total", 1, 5 * SECOND, || good.step());
    let base = http_get(addr, "/metrics");
    let base_drops = drops_in(&base);

    let atk = RawUdp::new();
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut sent = 0u64;
    let to_ports = |bytes: &[u8], sent: &mut u64| {
        for &p in &gw.gateway.session_ports {
            atk.send(local(p), bytes);
            *sent += 1;
        }
    };
    // Random bytes of several sizes (a random prefix is an unknown session; short ones do not
    // even hold a header).
    for len in [1, 7, 13, 39, 40, 64, 200, 1400] {
        let mut g = garbage(&mut rng, len);
        if len >= 8 {
            g[0] |= 1; // a non-zero prefix
        }
        to_ports(&g, &mut sent);
    }
    // A valid Heartbeat under an unknown session id.
    let hb = Body::Heartbeat { correlation_id: 0 };
    to_ports(&datagram(sid ^ 0x5a5a_5a5a, &[msg(1, hb)]), &mut sent);
    // The logged-on device's session id, from another source port.
    atk.send(local(port), &datagram(sid, &[msg(good.dev.next_out(), hb)]));
    sent += 1;
    // Truncated messages: a RegistrationRequest cut short (prefix 0), and the device's id.
    let reg = datagram(0, &[registration_request(b"RT-GOOD-1", 9, [0; 32])]);
    to_ports(&reg[..reg.len() - 20], &mut sent);
    let app =
        datagram(sid, &[msg(good.dev.next_out(), Body::App { type_id: 150, body: &[1; 16] })]);
    atk.send(local(port), &app[..app.len() - 12]);
    sent += 1;
    // The same truncated message from the device's own socket: dropped too, the session goes on.
    good.sock.send_to(&app[..app.len() - 12], local(port)).unwrap();
    sent += 1;
    // Garbage on the handshake port is not answered either.
    atk.send(gw.gateway.handshake_addr, &garbage(&mut rng, 200));
    atk.send(gw.gateway.handshake_addr, &reg[..reg.len() - 20]);

    assert_eq!(atk.recv(Duration::from_millis(300)), None, "garbage was answered");
    good.echo(&bodies(5..25));
    let replies: Vec<_> = good.seen.of_type(250).map(|a| a.body.clone()).collect();
    assert_eq!(replies, bodies(0..25));
    assert!(good.seen.rejected.is_empty() && good.seen.ended.is_none(), "{:?}", good.seen.events);

    let t0 = Instant::now();
    let body = loop {
        let body = http_get(addr, "/metrics");
        if drops_in(&body) >= base_drops + sent {
            break body;
        }
        assert!(
            t0.elapsed() < 4 * SECOND,
            "drops {} → {}, {sent} datagrams of garbage:\n{body}",
            base_drops,
            drops_in(&body)
        );
        good.run_for(Duration::from_millis(100));
    };
    for (name, at_least) in [
        ("drop_unknown_session_total", 2 * 4 + 2),
        ("drop_wrong_address_total", 2),
        ("drop_invalid_length_total", 2 * 4 + 1),
    ] {
        let (was, now) = (metric_in(&base, name), metric_in(&body, name));
        assert!(now >= was + at_least, "fleetgate_{name}: {was} → {now}, expected +{at_least}");
    }
    assert_eq!(atk.recv(Duration::from_millis(50)), None, "garbage was answered");
}

/// A raw TCP client logged on as `user` (LogonRequest seq 1, resetSeqNum = 1).
fn raw_logon(gw: &fleetgate::ops::Server, user: &[u8]) -> RawTcp {
    let mut c = RawTcp::connect(gw.gateway.tcp_addr);
    let logon = Body::LogonRequest {
        username: Username::new(user).unwrap(),
        password: Password::new(b"pw").unwrap(),
        reset_seq_num: true,
    };
    c.send(&encode(msg(1, logon)));
    let t0 = Instant::now();
    let Some(f) = c.recv(5 * SECOND) else {
        panic!("no LogonResponse: closed {} ({:?}) after {:?}", c.closed, c.error, t0.elapsed())
    };
    let m = decode(&f);
    assert!(matches!(m.body, Body::LogonResponse { .. }), "{m:?}");
    assert_eq!(m.header.seq, 1);
    c
}

/// Issue 8. On TCP, a well-framed message of unknown type gets Reject(UNKNOWN_MESSAGE_TYPE) and
/// the session goes on; a framing error (protocolId 0x00) gets LoggedOut and a close, after logon
/// and as the very first frame; a third client is unaffected.
fn malformed_tcp_reject_or_logout(io: &str) {
    let gw = start(io, &[]);
    let mut bystander = Tcp::new(&gw, "rt-bystander");
    bystander.log_on();
    bystander.echo(&bodies(0..3));

    let mut c1 = raw_logon(&gw, b"rt-raw-1");
    let mut m99 = encode(msg(2, Body::App { type_id: 150, body: &[7; 8] }));
    m99[4..6].copy_from_slice(&99u16.to_le_bytes());
    c1.send(&m99);
    let f = c1.recv_skip_heartbeats(5 * SECOND).expect("Reject");
    let m = decode(&f);
    assert_eq!(m.header.type_id, 30, "{m:?}");
    match m.body {
        Body::Reject { ref_seq_num, reason, .. } => {
            assert_eq!((ref_seq_num, reason), (2, 2), "Reject(refSeqNum 2, UNKNOWN_MESSAGE_TYPE)")
        }
        other => panic!("expected Reject, got {other:?}"),
    }
    c1.send(&encode(msg(3, Body::App { type_id: 150, body: b"after-99" })));
    let f = c1.recv_skip_heartbeats(5 * SECOND).expect("echo reply after the Reject");
    assert_eq!(decode(&f).body, Body::App { type_id: 250, body: b"after-99" });

    let mut c2 = raw_logon(&gw, b"rt-raw-2");
    let mut bad = encode(msg(2, Body::App { type_id: 150, body: &[7; 8] }));
    bad[0] = 0x00;
    c2.send(&bad);
    let f = c2.recv_skip_heartbeats(5 * SECOND).expect("LoggedOut");
    assert!(matches!(decode(&f).body, Body::LoggedOut { .. }), "{:?}", decode(&f));
    assert!(c2.wait_closed(5 * SECOND), "connection left open after a framing error");

    let mut c4 = RawTcp::connect(gw.gateway.tcp_addr);
    let logon = Body::LogonRequest {
        username: Username::new(b"rt-raw-4").unwrap(),
        password: Password::new(b"pw").unwrap(),
        reset_seq_num: true,
    };
    let mut first = encode(msg(1, logon));
    first[0] = 0x00;
    c4.send(&first);
    let f = c4.recv(5 * SECOND).expect("LoggedOut before logon");
    assert!(matches!(decode(&f).body, Body::LoggedOut { .. }), "{:?}", decode(&f));
    assert!(c4.wait_closed(5 * SECOND), "connection left open after a bad first frame");

    bystander.echo(&bodies(3..6));
    c1.send(&encode(msg(4, Body::App { type_id: 150, body: b"still-on" })));
    let f = c1.recv_skip_heartbeats(5 * SECOND).expect("echo reply");
    assert_eq!(decode(&f).body, Body::App { type_id: 250, body: b"still-on" });
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::RejectsSent), 1);
    assert!(totals.counters.get(Counter::ProtocolViolations) >= 1);
}

/// Echo request `k` of the slow-reader tests: 200 bytes starting with `k` (a journal slot holds
/// the reply).
fn slow_body(k: u32) -> Vec<u8> {
    let mut b = vec![(k % 251) as u8; 200];
    b[..4].copy_from_slice(&k.to_le_bytes());
    b
}

/// Logs `user` on, then sends echo requests (seq 2, 3, ...) without reading until the gateway
/// counts a slow reader (`tick` keeps other clients alive meanwhile). Returns the client and
/// how many requests it sent. The requests are paced (32 per millisecond at most), so the
/// replies of one gateway loop pass stay well under the send queue: what fills it is the
/// reader, not a burst. (A tiny SO_RCVBUF would be quicker, but on loopback, with its 64 KiB
/// segments, it makes the kernel drop and back off in both directions.)
fn stall_reader(gw: &fleetgate::ops::Server, user: &[u8], tick: &mut dyn FnMut()) -> (RawTcp, u32) {
    let addr = gw.metrics_addr.expect("metrics enabled");
    let mut c = raw_logon(gw, user);
    let mut n = 0u32;
    while metric(addr, "tcp_slow_reader_closed_total") == 0 {
        tick();
        // 2.3 MB of replies per round: soon more than the kernel buffers and the queue hold.
        'round: for _ in 0..10_000 / 32 {
            for _ in 0..32 {
                let body = slow_body(n);
                let m = encode(msg(2 + i64::from(n), Body::App { type_id: 150, body: &body }));
                if c.stream.write_all(&m).is_err() {
                    break 'round; // the gateway has already given up on us
                }
                n += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(n <= 100_000, "no slow reader counted after {n} unread echo requests");
        let t = Instant::now(); // snapshots are published each second
        while t.elapsed() < Duration::from_millis(1200) {
            tick();
        }
    }
    (c, n)
}

/// Issue 3, slow readers. A TCP client that stops reading while the gateway has replies for it
/// fills its bounded send queue (`tcp.send_queue_bytes`): the gateway queues
/// LoggedOut("send queue full") behind what is already queued and closes, and the shard never
/// stalls (a bystander keeps echoing). When the client reads again it gets an ordered prefix of
/// its replies, then the LoggedOut, then the end of the stream. Its session is kept: a resume
/// (resetSeqNum = 0) with ResendRequest recovers the reply to every processed request exactly
/// once and in order, and live traffic goes on.
fn slow_tcp_reader_logged_out_then_resumes(io: &str) {
    // The journal is deeper than the replies to one loop pass of pipelined requests, so the
    // echo application never has a reply refused for backpressure (it would drop it): every
    // processed request has its reply, and the slow reader is found when the journal holds
    // nothing but unsent replies.
    let gw = start(
        io,
        &[
            "tcp.send_queue_bytes=32768",
            "tcp.close_linger_ms=20000",
            "journal.messages_per_session=4096",
        ],
    );
    let addr = gw.metrics_addr.expect("metrics enabled");
    let mut bystander = Tcp::new(&gw, "rt-bystander");
    bystander.log_on();
    let (mut c, n) = stall_reader(&gw, b"rt-slow", &mut || bystander.step());
    bystander.echo(&bodies(0..5));

    // Read it all now: replies in order, then the LoggedOut, then the end.
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut last_seq = 1; // the LogonResponse
    let farewell = loop {
        let f = c.recv(10 * SECOND).expect("frames, then LoggedOut, before the end");
        let m = decode(&f);
        match m.body {
            Body::App { type_id: 250, body } => {
                assert_eq!(m.header.seq, last_seq + 1, "a gap before the LoggedOut");
                got.push(body.to_vec());
            }
            Body::Heartbeat { .. } => assert_eq!(m.header.seq, last_seq + 1),
            Body::LoggedOut { reason } => break (m.header.seq, reason.to_vec()),
            other => panic!("unexpected {other:?}"),
        }
        last_seq = m.header.seq;
    };
    assert_eq!(String::from_utf8_lossy(&farewell.1), "send queue full");
    assert!(farewell.0 > last_seq);
    assert!(c.wait_closed(5 * SECOND), "connection left open after the LoggedOut");
    assert!(
        !got.is_empty() && got.len() < n as usize,
        "{} of {n} replies before the stall",
        got.len()
    );
    for (k, b) in got.iter().enumerate() {
        assert_eq!(*b, slow_body(k as u32), "reply {k}");
    }
    wait_metric(addr, "sessions_detached_total", 1, 4 * SECOND, idle);

    // Resume. The LogonResponse's lastProcessedSeqNum = L says which requests the gateway
    // processed before it gave up on the connection (2..=L; those after were discarded). This
    // client does not re-send the rest: it continues at L + 1 with a ResendRequest for what it
    // missed, and accepts frames in sequence only, as a device does.
    let mut r = RawTcp::connect(gw.gateway.tcp_addr);
    let logon = Body::LogonRequest {
        username: Username::new(b"rt-slow").unwrap(),
        password: Password::new(b"pw").unwrap(),
        reset_seq_num: false,
    };
    r.send(&encode(msg(2 + i64::from(n), logon)));
    let f = r.recv(5 * SECOND).expect("LogonResponse");
    let m = decode(&f);
    assert!(matches!(m.body, Body::LogonResponse { .. }), "{m:?}");
    let processed = m.header.last_processed;
    assert!((2..=1 + i64::from(n)).contains(&processed), "lastProcessedSeqNum {processed}");
    let want = (processed - 1) as usize;
    assert!(got.len() <= want, "{} replies for {want} processed requests", got.len());
    let rr = Body::ResendRequest { from: last_seq + 1, to: 0 };
    r.send(&encode(msg(processed + 1, rr)));
    let mut expect = last_seq + 1;
    let next_reply = |r: &mut RawTcp, expect: &mut i64, got: usize| loop {
        let f = r.recv(10 * SECOND).unwrap_or_else(|| {
            panic!("{got} of {want} replies after the resume (expecting seq {expect})")
        });
        let m = decode(&f);
        if m.header.seq != *expect {
            assert!(m.header.seq > *expect, "seq {} again after {expect}", m.header.seq);
            continue; // ahead of a gap: the resend brings it again
        }
        match m.body {
            Body::App { type_id: 250, body } => {
                *expect += 1;
                return body.to_vec();
            }
            Body::GapFill { new_seq_num } => *expect = new_seq_num,
            Body::Heartbeat { .. } | Body::LogonResponse { .. } => *expect += 1,
            other => panic!("unexpected {other:?}"),
        }
    };
    while got.len() < want {
        let b = next_reply(&mut r, &mut expect, got.len());
        got.push(b);
    }
    // Live traffic goes on after the resend.
    let body = slow_body(want as u32);
    r.send(&encode(msg(processed + 2, Body::App { type_id: 150, body: &body })));
    got.push(next_reply(&mut r, &mut expect, got.len()));
    for (k, b) in got.iter().enumerate() {
        assert_eq!(*b, slow_body(k as u32), "reply {k} after the resume");
    }
    bystander.echo(&bodies(5..10));
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::SessionsResumed), 1);
    assert_eq!(totals.counters.get(Counter::ProtocolViolations), 0);
}

/// Issue 3, slow readers. A client that never reads again does not hold its connection: after
/// `tcp.close_linger_ms` the gateway aborts it (counted), and other sessions go on.
fn slow_tcp_reader_that_never_reads_is_aborted(io: &str) {
    let gw = start(io, &["tcp.send_queue_bytes=32768", "tcp.close_linger_ms=200"]);
    let addr = gw.metrics_addr.expect("metrics enabled");
    let mut bystander = Tcp::new(&gw, "rt-bystander-2");
    bystander.log_on();
    let (mut c, _) = stall_reader(&gw, b"rt-stuck", &mut || bystander.step());
    wait_metric(addr, "tcp_slow_reader_aborted_total", 1, 4 * SECOND, idle);
    bystander.echo(&bodies(0..5));
    // The connection is gone: reading drains what was in flight, then ends.
    assert!(c.wait_closed(10 * SECOND), "aborted connection still open");
    assert_eq!(metric(addr, "tcp_slow_reader_closed_total"), 1);
    wait_metric(addr, "sessions_detached_total", 1, 4 * SECOND, idle);
    gw.stop();
}

/// The acceptor (on io_uring with `io = "uring"`, on poll(2) with `"epoll"`, as /metrics says):
/// a connection that sends no LogonRequest within `tcp.logon_timeout_ms` gets
/// LoggedOut("logon timeout") and a close, counted; one whose LogonRequest arrives in two
/// pieces is logged on; both at once, without holding each other up.
fn tcp_logon_deadline_and_split_first_frame(io: &str) {
    let gw = start(io, &["tcp.logon_timeout_ms=400"]);
    let addr = gw.metrics_addr.expect("metrics enabled");
    let t0 = Instant::now();
    let mut silent = RawTcp::connect(gw.gateway.tcp_addr);
    let mut split = RawTcp::connect(gw.gateway.tcp_addr);
    let logon = encode(msg(
        1,
        Body::LogonRequest {
            username: Username::new(b"rt-split").unwrap(),
            password: Password::new(b"pw").unwrap(),
            reset_seq_num: true,
        },
    ));
    split.send(&logon[..10]);
    std::thread::sleep(Duration::from_millis(100));
    split.send(&logon[10..]);
    let f = split.recv(5 * SECOND).expect("LogonResponse after a split LogonRequest");
    assert!(matches!(decode(&f).body, Body::LogonResponse { .. }), "{:?}", decode(&f));
    assert!(t0.elapsed() < Duration::from_millis(400), "held up: {:?}", t0.elapsed());

    let f = silent.recv(5 * SECOND).expect("LoggedOut at the logon deadline");
    let waited = t0.elapsed();
    assert_eq!(decode(&f).body, Body::LoggedOut { reason: b"logon timeout" });
    assert!(waited >= Duration::from_millis(390), "early: {waited:?}");
    assert!(waited < 3 * SECOND, "late: {waited:?}");
    assert!(silent.wait_closed(5 * SECOND), "left open after the logon timeout");

    let driver = if io == "uring" { "io_uring" } else { "poll" };
    let want = [
        format!("fleetgate_acceptor_info{{backend=\"{driver}\"}} 1"),
        "fleetgate_tcp_accepts_total{outcome=\"logon_timeout\"} 1".to_string(),
        "fleetgate_tcp_accepts_total{outcome=\"handed_off\"} 1".to_string(),
    ];
    let t1 = Instant::now();
    loop {
        let body = http_get(addr, "/metrics");
        if want.iter().all(|w| body.contains(w.as_str())) {
            break;
        }
        assert!(t1.elapsed() < 3 * SECOND, "want {want:?} in:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let totals = gw.stop();
    assert_eq!(totals.acceptor.get(Counter::TcpLogonTimeouts), 1);
    assert_eq!(totals.acceptor.get(Counter::TcpHandedOff), 1);
}

/// A RegistrationRequest answered with a RegistrationReject: its reason (and the reply is no
/// larger than the request).
fn registration_reject(raw: &RawUdp, port: u16, req: &[u8]) -> u8 {
    raw.send(local(port), req);
    let dg = raw.recv(2 * SECOND).expect("an answer to the RegistrationRequest");
    assert!(dg.len() <= req.len(), "reply of {} bytes to {}", dg.len(), req.len());
    let (sid, frames) = split(&dg);
    assert_eq!(sid, 0);
    match decode(&frames[0]).body {
        Body::RegistrationReject { reason, .. } => reason,
        other => panic!("expected RegistrationReject, got {other:?}"),
    }
}

/// Issue 9. A forged cookie (tag or expiry altered, or replayed from another source port) gets
/// RegistrationReject BAD_COOKIE; a genuine cookie after its expiry gets COOKIE_EXPIRED.
fn forged_and_expired_cookies(io: &str) {
    let gw = start(io, &["udp.cookie_ttl_ms=100"]);
    let raw = RawUdp::new();
    let uid = b"RT-COOKIE-1";
    let (port, cookie) = raw.handshake(gw.gateway.handshake_addr, uid, 5);
    let mut tag = cookie;
    tag[20] ^= 0x01;
    let req = datagram(0, &[registration_request(uid, 5, tag)]);
    assert_eq!(registration_reject(&raw, port, &req), 1, "forged tag");
    let mut expiry = cookie;
    expiry[1] ^= 0x40;
    let req = datagram(0, &[registration_request(uid, 5, expiry)]);
    assert_eq!(registration_reject(&raw, port, &req), 1, "altered expiry");
    let genuine = datagram(0, &[registration_request(uid, 5, cookie)]);
    assert_eq!(registration_reject(&RawUdp::new(), port, &genuine), 1, "another source port");
    // Expiry is rounded up to a whole second: 100 ms + at most 1 s.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(registration_reject(&raw, port, &genuine), 2, "expired");
    let totals = gw.stop();
    let c = &totals.counters;
    assert_eq!(c.get(Counter::HandshakesBadCookie), 3);
    assert_eq!(c.get(Counter::HandshakesCookieExpired), 1);
    assert_eq!(c.get(Counter::HandshakesRegistered), 0);
}

/// Issue 10. A ConnectionRequest shorter than 128 bytes is dropped unanswered; clientVersion 2
/// gets ConnectionReject(UNSUPPORTED_VERSION) of no more bytes than the request.
fn connection_request_size_and_version(io: &str) {
    let gw = start(io, &[]);
    let raw = RawUdp::new();
    let full = datagram(0, &[connection_request(b"RT-SHORT-1", 3, 1)]);
    assert_eq!(full.len(), 8 + 128);
    for cut in [1, 8, 9, 40, 100, 120, 135] {
        raw.send(gw.gateway.handshake_addr, &full[..cut]);
    }
    // A whole datagram whose message claims 120 bytes.
    let mut short = full[..8 + 120].to_vec();
    short[8 + 2..8 + 4].copy_from_slice(&120u16.to_le_bytes());
    raw.send(gw.gateway.handshake_addr, &short);
    assert_eq!(raw.recv(Duration::from_millis(300)), None, "a short request was answered");

    let v2 = datagram(0, &[connection_request(b"RT-SHORT-1", 3, 2)]);
    raw.send(gw.gateway.handshake_addr, &v2);
    let dg = raw.recv(2 * SECOND).expect("ConnectionReject");
    assert!(dg.len() <= v2.len(), "reply of {} bytes to {}", dg.len(), v2.len());
    let (sid, frames) = split(&dg);
    assert_eq!(sid, 0);
    match decode(&frames[0]).body {
        Body::ConnectionReject { reason, .. } => assert_eq!(reason, 2, "UNSUPPORTED_VERSION"),
        other => panic!("expected ConnectionReject, got {other:?}"),
    }
    // The port still answers a proper request.
    let (port, _) = raw.handshake(gw.gateway.handshake_addr, b"RT-SHORT-1", 4);
    assert!(gw.gateway.session_ports.contains(&port));
    assert_eq!(raw.recv(Duration::from_millis(100)), None);
    let totals = gw.stop();
    assert_eq!(totals.acceptor.get(Counter::ConnectionRequestsRejected), 1);
    assert_eq!(totals.acceptor.get(Counter::ConnectionRequestsDropped), 8);
}

/// Issue 11. With room for two sessions, the third RegistrationRequest gets RegistrationReject
/// SERVER_FULL (and a TCP logon LoggedOut("server full")); a logout frees a place.
fn server_full(io: &str) {
    let gw = start(io, &["gateway.shards=1", "gateway.max_sessions_per_shard=2"]);
    let mut d1 = Udp::new(&gw, "RT-FULL-1");
    d1.log_on(1);
    let mut d2 = Udp::new(&gw, "RT-FULL-2");
    d2.log_on(2);
    let mut d3 = Udp::new(&gw, "RT-FULL-3");
    d3.connect(3, true);
    d3.run_until("refusal", 5 * SECOND, |d| d.seen.ended.is_some());
    assert_eq!(d3.dev.state(), DeviceState::Ended(EndReason::RegistrationRejected(3)));
    let mut t = Tcp::new(&gw, "rt-full-tcp");
    t.run_until("refusal", 5 * SECOND, |c| c.closed);
    assert_eq!(t.seen.logged_out(), Some("server full"));
    // A logout frees a place.
    let now = d1.clock.now();
    d1.dev.logout(now);
    d1.run_until("LoggedOut", 5 * SECOND, |d| d.seen.ended.is_some());
    d3.log_on(4);
    d3.echo(&bodies(0..2));
    d2.echo(&bodies(0..2));
    let totals = gw.stop();
    assert_eq!(totals.counters.get(Counter::HandshakesServerFull), 2);
}

fn free_udp_port() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// The real binary with one shard on the given ports, no metrics endpoint, `sets` as `--set`
/// overrides, its log in `log`.
fn serve_one_shard(
    io: &str,
    hs: u16,
    base: u16,
    sets: &[String],
    log: &std::path::Path,
) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetgate"));
    cmd.args(["serve", "--open-logon", "--shards", "1", "--io", io])
        .args(["--handshake-addr", &format!("127.0.0.1:{hs}")])
        .args(["--tcp-addr", "127.0.0.1:0"])
        .args(["--session-port-base", &base.to_string()])
        .args(["--metrics-addr", ""]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let log = std::fs::File::create(log).unwrap();
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn();
    ChildGuard(child.expect("spawn fleetgate serve"))
}

/// Sends SIGTERM to the gateway; when it was sent.
fn sigterm(child: &ChildGuard) -> Instant {
    let pid = child.0.id() as libc::pid_t;
    // SAFETY: sends a signal to our own child process, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    Instant::now()
}

/// The gateway exits with status 0 within `limit` of `since` (its log in `log`).
fn exits_0_within(child: &mut ChildGuard, since: Instant, limit: Duration, log: &std::path::Path) {
    let stderr = || std::fs::read_to_string(log).unwrap_or_default();
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(since.elapsed() < limit, "still running {limit:?} after SIGTERM:\n{}", stderr());
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(status.success(), "exit status {status}:\n{}", stderr());
}

/// Issue 12. The real binary: SIGTERM logs the device out ("gateway shutting down") and the
/// process exits with status 0 within 2 s.
fn sigterm_logs_out_and_exits_0(io: &str) {
    let dir = TempDir::new(&format!("sigterm-{io}"));
    for attempt in 0..5 {
        let (hs, base) = (free_udp_port(), free_udp_port());
        if hs == base {
            continue;
        }
        let log = dir.0.join(format!("serve-{attempt}.log"));
        let sets = ["gateway.max_sessions_per_shard=16".to_string()];
        let mut child = serve_one_shard(io, hs, base, &sets, &log);
        let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
        // The device retries its ConnectionRequest every 500 ms while the gateway starts.
        let mut d = Udp::at(local(hs), "RT-SIGTERM-1", b"user", b"pw");
        d.connect(1, true);
        let t0 = Instant::now();
        let exited = loop {
            if d.dev.state() == DeviceState::Active {
                break None;
            }
            if let Some(status) = child.0.try_wait().unwrap() {
                break Some(status);
            }
            assert!(
                t0.elapsed() < 5 * SECOND && d.seen.ended.is_none(),
                "no logon: {:?} {:?}\n{}",
                d.dev.state(),
                d.seen.events,
                stderr()
            );
            d.step();
        };
        if let Some(status) = exited {
            let err = stderr();
            assert!(err.contains("cannot bind"), "gateway exited with {status}:\n{err}");
            continue;
        }
        let t0 = sigterm(&child);
        d.run_until("LoggedOut after SIGTERM", 2 * SECOND, |d| d.seen.ended.is_some());
        assert_eq!(d.seen.logged_out(), Some("gateway shutting down"), "{:?}", d.seen.events);
        exits_0_within(&mut child, t0, 2 * SECOND, &log);
        return;
    }
    panic!("could not start the gateway on free ports");
}

/// SIGTERM with more goodbyes than `gateway.drain_timeout_ms` lets out (0 here, 2,000 sessions):
/// the drain stops at the deadline instead of sending the whole slab's LoggedOut first, the
/// process exits 0, and the log says how many sessions were not told.
#[test]
fn sigterm_drain_stops_at_drain_timeout() {
    use fleetgate::tools::loadgen::{self, LoadConfig, Scenario};
    let dir = TempDir::new("sigterm-deadline");
    let n = 2000;
    for attempt in 0..5 {
        let (hs, base) = (free_udp_port(), free_udp_port());
        if hs == base {
            continue;
        }
        let log = dir.0.join(format!("serve-{attempt}.log"));
        let sets = [
            format!("gateway.max_sessions_per_shard={}", n + 100),
            "gateway.drain_timeout_ms=0".into(),
        ];
        let mut child = serve_one_shard("auto", hs, base, &sets, &log);
        let stderr = || std::fs::read_to_string(&log).unwrap_or_default();
        let t0 = Instant::now();
        while !stderr().contains("serving:") {
            if let Some(status) = child.0.try_wait().unwrap() {
                assert!(stderr().contains("cannot bind"), "exited with {status}:\n{}", stderr());
                break;
            }
            assert!(t0.elapsed() < 10 * SECOND, "no start:\n{}", stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
        if child.0.try_wait().unwrap().is_some() {
            continue;
        }
        let cfg = LoadConfig {
            scenario: Scenario::Storm,
            handshake: local(hs),
            udp_devices: n,
            tcp_devices: 0,
            rate: 0.0,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(200),
            source_ips: 4,
            logout_at_end: false,
            ..LoadConfig::default()
        };
        let report = loadgen::run(&cfg).expect("load run");
        assert!(!report.failed(), "{}", report.table());
        let t0 = sigterm(&child);
        exits_0_within(&mut child, t0, 10 * SECOND, &log);
        let err = stderr();
        let line = err
            .lines()
            .find(|l| l.contains("drain_timeout_ms passed before every LoggedOut was out"))
            .unwrap_or_else(|| panic!("no warning about the untold sessions:\n{err}"));
        let untold: usize = line
            .split("untold=")
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no untold count in {line}"));
        assert!(untold > 0 && untold <= n, "{line}");
        return;
    }
    panic!("could not start the gateway on free ports");
}

/// A gateway that cannot bind its second shard's session port fails to start and leaves nothing
/// running: the first shard's port is free again afterwards.
#[test]
fn failed_start_releases_what_it_started() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let set = vec![
        "gateway.io=\"epoll\"".to_string(),
        "gateway.shards=2".into(),
        "gateway.handshake_addr=\"127.0.0.1:0\"".into(),
        "gateway.tcp_addr=\"127.0.0.1:0\"".into(),
        format!("gateway.session_port_base={}", port - 1),
        "observability.metrics_addr=\"\"".into(),
    ];
    let cfg = fleetgate::config::Config::load(None, &set).unwrap();
    let Err(e) = fleetgate::ops::Server::start(&cfg, Arc::new(fleetgate::session::OpenLogon))
    else {
        // The port below ours happened to be taken too: nothing to prove here.
        return;
    };
    assert!(e.contains("session port"), "{e}");
    // Shard 0's socket was closed when its thread was joined.
    std::net::UdpSocket::bind(("127.0.0.1", port - 1)).expect("shard 0's port is free again");
}
