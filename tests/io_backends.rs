//! The I/O backend contract (`fleetgate::io` module docs) tested with real sockets on
//! 127.0.0.1 (ephemeral ports), the same test bodies once per backend:
//!
//! - `epoll::*`: the portable backend;
//! - `uring::*`: `io::build(Kind::Uring, ..)`, the best ring setup the kernel accepts;
//! - `uring_coop::*`, `uring_plain::*`: the fallback ring setups, forced with
//!   `Uring::with_setup`.
//!
//! The io_uring flavours are skipped, with a note on stderr, when `io::uring::probe()` fails
//! (no io_uring, or refused, as in many containers), unless `FLEETGATE_REQUIRE_URING=1` makes
//! that a failure (`fleetgate::sim::uring_available`); the fallback setups are also skipped when
//! the kernel refuses that setup. Every wait
//! has a deadline: `poll` is called with short timeouts until a condition holds or time is up.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsFd, OwnedFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use fleetgate::io::uring::{RingSetup, Uring};
use fleetgate::io::{self, Backend, BackendConfig, IoEvent, Kind, SendError};
use fleetgate::session::ConnId;

/// Every test body, once per backend flavour.
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod epoll { $( #[test] fn $name() { super::$name(super::Flavor::Epoll) } )* }
        mod uring { $( #[test] fn $name() { super::$name(super::Flavor::Uring) } )* }
        mod uring_coop { $( #[test] fn $name() { super::$name(super::Flavor::UringCoop) } )* }
        mod uring_plain { $( #[test] fn $name() { super::$name(super::Flavor::UringPlain) } )* }
    };
}

per_backend!(
    udp_datagrams_both_directions,
    udp_burst_of_1000_with_batched_flushes,
    tcp_read_write_then_peer_close,
    tcp_close_after_queued_data_delivers_everything,
    tcp_slow_reader_gets_full_without_blocking,
    tcp_abort_closes_a_slow_reader_at_once,
    tcp_last_word_after_full_then_graceful_close,
    wake_reports_one_event,
    poll_zero_returns_promptly,
    conn_id_reuse_delivers_no_stale_events,
    runs_on_the_thread_that_built_it,
    tcp_connect_refused_reports_failed_then_closed,
    tcp_connect_queues_until_up_then_both_ways,
    tcp_connect_paused_reading_applies_backpressure,
);

/// A connect to a port nobody listens on: `TcpConnectFailed(ECONNREFUSED)`, then `TcpClosed`,
/// and the id is free again.
fn tcp_connect_refused_reports_failed_then_closed(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    // Bind then drop: the port is (almost certainly) closed.
    let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap();
    let conn = h.b.connect_tcp(addr, io::ConnectOpts::default()).unwrap();
    h.b.flush().unwrap();
    assert!(h.poll_until(WAIT, |ev| closed(ev, conn) == 1), "no close: {:?}", h.events);
    let failed: Vec<_> = h.events.iter().filter(|e| matches!(e, Ev::ConnectFailed(..))).collect();
    assert_eq!(failed, vec![&Ev::ConnectFailed(conn, libc::ECONNREFUSED)]);
    assert!(!h.events.contains(&Ev::Connected(conn)));
    let failed_at = h.events.iter().position(|e| *e == Ev::ConnectFailed(conn, libc::ECONNREFUSED));
    let closed_at = h.events.iter().position(|e| *e == Ev::TcpClosed(conn));
    assert!(failed_at < closed_at, "failed before closed: {:?}", h.events);
}

/// Bytes queued before the connection is up go out once it is; then both directions work,
/// read in pieces of at most `read_bytes`, and the peer's close is reported.
fn tcp_connect_queues_until_up_then_both_ways(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let opts = io::ConnectOpts { keepalive: Some(Duration::from_secs(30)), read_bytes: 100 };
    let conn = h.b.connect_tcp(listener.local_addr().unwrap(), opts).unwrap();
    h.b.send_tcp(conn, b"early bytes;").unwrap();
    h.b.flush().unwrap();
    let (mut host, _) = listener.accept().unwrap();
    host.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    assert!(h.poll_until(WAIT, |ev| ev.contains(&Ev::Connected(conn))), "{:?}", h.events);
    // Keepalive was set on the gateway's side (read back through the peer's view is not
    // possible; the accepted socket is the host's): the connection works either way.
    h.b.send_tcp(conn, b"late bytes").unwrap();
    h.b.flush().unwrap();
    let mut got = vec![0u8; 22];
    let reader = std::thread::spawn(move || host.read_exact(&mut got).map(|()| (host, got)));
    let (mut host, got) = h.join_while_polling(reader);
    assert_eq!(&got, b"early bytes;late bytes");
    let data = pattern(3, 1000);
    host.write_all(&data).unwrap();
    assert!(h.poll_until(WAIT, |ev| tcp_bytes(ev, conn).len() == 1000), "{:?}", h.events.len());
    assert_eq!(tcp_bytes(&h.events, conn), data);
    for e in &h.events {
        if let Ev::TcpData(_, d) = e {
            assert!(d.len() <= 100, "a read of {} bytes, over read_bytes", d.len());
        }
    }
    drop(host);
    assert!(h.poll_until(WAIT, |ev| closed(ev, conn) == 1));
}

/// While reading is paused nothing is reported and the host's writes stall in TCP (its
/// buffers fill); resumed, everything arrives in order.
fn tcp_connect_paused_reading_applies_backpressure(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let opts = io::ConnectOpts { keepalive: None, read_bytes: 4096 };
    let conn = h.b.connect_tcp(listener.local_addr().unwrap(), opts).unwrap();
    h.b.flush().unwrap();
    let (host, _) = listener.accept().unwrap();
    assert!(h.poll_until(WAIT, |ev| ev.contains(&Ev::Connected(conn))));
    h.b.set_tcp_reading(conn, false);
    // Let a receive armed before the pause complete, then count what arrives while paused.
    h.poll_for(Duration::from_millis(50));
    let before = tcp_bytes(&h.events, conn).len();
    let total = 8 << 20;
    let data = pattern(9, total);
    let writer = {
        let data = data.clone();
        let mut host = host.try_clone().unwrap();
        host.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        std::thread::spawn(move || -> std::io::Result<usize> {
            let mut sent = 0;
            for chunk in data.chunks(64 * 1024) {
                match host.write_all(chunk) {
                    Ok(()) => sent += chunk.len(),
                    Err(_) => break, // the write timed out: TCP pushed back
                }
            }
            Ok(sent)
        })
    };
    h.poll_for(Duration::from_millis(300));
    assert!(
        tcp_bytes(&h.events, conn).len() <= before + 4096,
        "paused, yet {} bytes were read",
        tcp_bytes(&h.events, conn).len() - before
    );
    let sent = writer.join().unwrap().unwrap();
    assert!(sent < total, "the host wrote all {total} bytes: no backpressure");
    h.b.set_tcp_reading(conn, true);
    assert!(h.poll_until(WAIT, |ev| tcp_bytes(ev, conn).len() >= sent), "resumed, but stuck");
    let got = tcp_bytes(&h.events, conn);
    assert_eq!(&got[..sent], &data[..sent]);
    drop(host);
}

/// Many datagrams each way, from and to two peers, up to 1400 bytes: payload and addresses
/// preserved.
fn udp_datagrams_both_directions(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    let peers = [peer(), peer()];
    let peer_addrs = peers.each_ref().map(|p| p.local_addr().unwrap());

    let mut sent = Vec::new();
    for i in 0..200 {
        let len = if i % 10 == 9 { 1400 } else { 1 + (i * 37) % 1400 };
        let data = pattern(i, len);
        peers[i % 2].send_to(&data, h.addr).unwrap();
        sent.push((peer_addrs[i % 2], data));
        if i % 20 == 19 {
            let want = i + 1;
            assert!(h.poll_until(WAIT, |ev| datagrams(ev).len() >= want), "{flavor:?}: inbound");
        }
    }
    assert_eq!(datagrams(&h.events), sent, "{flavor:?}: inbound datagrams or sources differ");

    for i in 0..200 {
        let len = if i % 10 == 0 { 1400 } else { 1 + (i * 53) % 1400 };
        let data = pattern(1000 + i, len);
        h.b.send_to(peer_addrs[i % 2], &data).unwrap();
        if i % 10 == 9 {
            h.b.flush().unwrap();
            h.poll(Some(Duration::ZERO));
            for j in i - 9..=i {
                let (from, got) = recv(&peers[j % 2]);
                assert_eq!(from, h.addr, "{flavor:?}: outbound source");
                let len = if j % 10 == 0 { 1400 } else { 1 + (j * 53) % 1400 };
                assert_eq!(got, pattern(1000 + j, len), "{flavor:?}: outbound datagram {j}");
            }
        }
    }
    assert_eq!(h.b.dropped_sends(), 0);
    let oversized = vec![0u8; 64 * 1024];
    assert_eq!(h.b.send_to(peer_addrs[0], &oversized), Err(SendError::Full));
}

/// 1000 datagrams in, sent back to back by a peer, and 1000 out, queued back to back with a
/// flush every `batch` datagrams and no poll in between: all arrive, in order, none dropped.
fn udp_burst_of_1000_with_batched_flushes(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    let p = peer();
    let p_addr = p.local_addr().unwrap();
    // With small socket buffers (a low net.core.rmem_max), the sender pauses every 100 so the
    // kernel does not drop datagrams before anyone reads them.
    let pause_every = if big_rcvbuf(&p) && big_rcvbuf_of(h.rcvbuf) { N_BURST } else { 100 };

    let mut sent = Vec::new();
    for i in 0..N_BURST {
        let data = pattern(i, 64 + i % 200);
        p.send_to(&data, h.addr).unwrap();
        sent.push((p_addr, data));
        if (i + 1) % pause_every == 0 {
            let want = i + 1;
            assert!(h.poll_until(WAIT, |ev| datagrams(ev).len() >= want), "{flavor:?}: burst in");
        }
    }
    assert_eq!(datagrams(&h.events), sent, "{flavor:?}: burst in");

    let batch = cfg().batch;
    let mut expected = Vec::new();
    let mut read = 0;
    for i in 0..N_BURST {
        let data = pattern(5000 + i, 64 + i % 200);
        h.b.send_to(p_addr, &data).unwrap_or_else(|e| panic!("{flavor:?}: send_to {i}: {e:?}"));
        expected.push(data);
        // Small buffers: the peer reads every `pause_every`, whether or not a batch ends there
        // (nested under the batch test, the pause came only every lcm(32, 100) = 800).
        let pause = (i + 1) % pause_every == 0 || i + 1 == N_BURST;
        if (i + 1) % batch == 0 || pause {
            h.b.flush().unwrap();
            if pause {
                h.poll(Some(Duration::ZERO));
                while read <= i {
                    let (from, got) = recv(&p);
                    assert_eq!((from, &got), (h.addr, &expected[read]), "{flavor:?}: out {read}");
                    read += 1;
                }
            }
        }
    }
    assert_eq!(read, N_BURST);
    assert_eq!(h.b.dropped_sends(), 0, "{flavor:?}");
}

/// register_tcp, 200 KiB in, 100 KiB out, then the peer closes: TcpClosed once, nothing after,
/// and the id refuses sends.
fn tcp_read_write_then_peer_close(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    let (client, server) = tcp_pair();
    let conn = h.b.register_tcp(server).unwrap();

    let inbound = pattern(7, 200 * 1024);
    let writer = {
        let (mut c, data) = (client.try_clone().unwrap(), inbound.clone());
        std::thread::spawn(move || c.write_all(&data))
    };
    let n = inbound.len();
    assert!(h.poll_until(WAIT, |ev| tcp_bytes(ev, conn).len() >= n), "{flavor:?}: tcp in");
    writer.join().unwrap().unwrap();
    assert_eq!(tcp_bytes(&h.events, conn), inbound, "{flavor:?}: tcp bytes in");

    let outbound = pattern(8, 100 * 1024);
    let reader = read_exact_in_thread(client.try_clone().unwrap(), outbound.len());
    for chunk in outbound.chunks(16 * 1024) {
        h.b.send_tcp(conn, chunk).unwrap();
    }
    h.b.flush().unwrap();
    let got = h.join_while_polling(reader);
    assert_eq!(got, outbound, "{flavor:?}: tcp bytes out");

    h.events.clear();
    client.shutdown(std::net::Shutdown::Both).unwrap();
    drop(client);
    assert!(h.poll_until(WAIT, |ev| closed(ev, conn) > 0), "{flavor:?}: no TcpClosed");
    h.poll_for(Duration::from_millis(100));
    assert_eq!(closed(&h.events, conn), 1, "{flavor:?}: TcpClosed reported more than once");
    assert!(tcp_bytes(&h.events, conn).is_empty(), "{flavor:?}: data after end of stream");
    assert_eq!(h.b.send_tcp(conn, b"late"), Err(SendError::Closed));
}

/// Bytes queued before close_tcp are all delivered, then the peer sees end of stream, and the
/// backend reports TcpClosed.
fn tcp_close_after_queued_data_delivers_everything(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    let (client, server) = tcp_pair();
    let conn = h.b.register_tcp(server).unwrap();
    let payload = pattern(9, 192 * 1024);
    for chunk in payload.chunks(64 * 1024) {
        h.b.send_tcp(conn, chunk).unwrap();
    }
    h.b.close_tcp(conn);
    assert_eq!(h.b.send_tcp(conn, b"after close"), Err(SendError::Closed));
    h.b.flush().unwrap();
    let reader = std::thread::spawn(move || {
        let mut c = client;
        let mut all = Vec::new();
        c.read_to_end(&mut all).map(|_| all)
    });
    let got = h.join_while_polling(reader);
    assert_eq!(got.len(), payload.len(), "{flavor:?}: bytes lost at close");
    assert_eq!(got, payload, "{flavor:?}");
    assert!(h.poll_until(WAIT, |ev| closed(ev, conn) > 0), "{flavor:?}: no TcpClosed");
    h.poll_for(Duration::from_millis(50));
    assert_eq!(closed(&h.events, conn), 1, "{flavor:?}");
}

/// A connected pair with small socket buffers whose client never reads; the server side is
/// registered with the backend.
fn slow_reader(h: &mut Harness) -> (TcpStream, ConnId) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&listener.local_addr().unwrap().into()).unwrap();
    let (server, _) = listener.accept().unwrap();
    socket2::SockRef::from(&server).set_send_buffer_size(4096).unwrap();
    server.set_nonblocking(true).unwrap();
    let conn = h.b.register_tcp(server).unwrap();
    (sock.into(), conn)
}

/// A peer that never reads: sends fill the bounded queue and then fail with Full; no call
/// blocks. When the peer goes away, the connection is reported closed.
fn tcp_slow_reader_gets_full_without_blocking(flavor: Flavor) {
    let cfg = BackendConfig { send_queue_bytes: 64 * 1024, ..cfg() };
    let Some(mut h) = Harness::start(flavor, cfg) else { return };
    let (client, conn) = slow_reader(&mut h);

    let chunk = pattern(3, 16 * 1024);
    let start = Instant::now();
    let mut queued = 0usize;
    let full = loop {
        assert!(start.elapsed() < WAIT, "{flavor:?}: never Full after {queued} bytes");
        assert!(queued < 256 << 20, "{flavor:?}: 256 MiB accepted by a peer that never reads");
        let t = Instant::now();
        let r = h.b.send_tcp(conn, &chunk);
        h.b.flush().unwrap();
        h.poll(Some(Duration::ZERO));
        assert!(t.elapsed() < Duration::from_millis(500), "{flavor:?}: a call blocked");
        match r {
            Ok(()) => queued += chunk.len(),
            Err(e) => break e,
        }
    };
    assert_eq!(full, SendError::Full, "{flavor:?}");
    assert_eq!(h.b.send_tcp(conn, &chunk), Err(SendError::Full), "{flavor:?}");
    assert_eq!(closed(&h.events, conn), 0, "{flavor:?}");

    drop(client);
    assert!(h.poll_until(WAIT, |ev| closed(ev, conn) > 0), "{flavor:?}: no TcpClosed");
    assert_eq!(closed(&h.events, conn), 1, "{flavor:?}");
}

/// A peer that stops reading fills the queue: `tcp_room` then says less than a chunk, and the
/// last word (`send_tcp_last`) still fits in the room kept for it. When the peer reads again it
/// gets every byte queued, in order, then the last word, then a clean end of stream (a FIN, not
/// a reset, although it had sent input the backend never read: input after `close_tcp` is read
/// and discarded, never reported). TcpClosed comes once the peer closes too.
fn tcp_last_word_after_full_then_graceful_close(flavor: Flavor) {
    let cfg = BackendConfig { send_queue_bytes: 64 * 1024, ..cfg() };
    let Some(mut h) = Harness::start(flavor, cfg) else { return };
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    let conn = h.b.register_tcp(server).unwrap();
    assert!(h.b.tcp_room(conn) >= 16 * 1024, "{flavor:?}: an empty queue has room");

    let mut sent = Vec::new();
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < WAIT, "{flavor:?}: never Full after {} bytes", sent.len());
        let chunk = pattern(sent.len(), 16 * 1024);
        let r = h.b.send_tcp(conn, &chunk);
        h.b.flush().unwrap();
        h.poll(Some(Duration::ZERO));
        match r {
            Ok(()) => sent.extend_from_slice(&chunk),
            Err(e) => {
                assert_eq!(e, SendError::Full, "{flavor:?}");
                break;
            }
        }
    }
    assert!(h.b.tcp_room(conn) < 16 * 1024, "{flavor:?}: room reported after Full");
    client.write_all(b"input the backend never reports").unwrap();
    h.b.send_tcp_last(conn, b"LAST WORD").unwrap();
    assert_eq!(h.b.tcp_room(conn), 0, "{flavor:?}");
    assert_eq!(h.b.send_tcp(conn, b"x"), Err(SendError::Closed), "{flavor:?}");
    h.b.flush().unwrap();

    let reader = std::thread::spawn(move || {
        client.set_read_timeout(Some(WAIT)).unwrap();
        let mut all = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match client.read(&mut buf)? {
                0 => return Ok((all, client)),
                n => all.extend_from_slice(&buf[..n]),
            }
        }
    });
    let (all, client) = h.join_while_polling(reader);
    sent.extend_from_slice(b"LAST WORD");
    assert_eq!(all.len(), sent.len(), "{flavor:?}");
    assert!(all == sent, "{flavor:?}: bytes differ");
    assert_eq!(tcp_bytes(&h.events, conn), b"", "{flavor:?}: input reported after close");
    assert_eq!(closed(&h.events, conn), 0, "{flavor:?}: closed before the peer");
    drop(client);
    assert!(h.poll_until(WAIT, |ev| closed(ev, conn) > 0), "{flavor:?}: no TcpClosed");
    h.poll_for(STEP);
    assert_eq!(closed(&h.events, conn), 1, "{flavor:?}");
}

/// A peer that never reads fills its queue; `abort_tcp` closes the connection at once (the
/// queued bytes are discarded), reports one TcpClosed, and the peer sees the connection end.
fn tcp_abort_closes_a_slow_reader_at_once(flavor: Flavor) {
    let cfg = BackendConfig { send_queue_bytes: 64 * 1024, ..cfg() };
    let Some(mut h) = Harness::start(flavor, cfg) else { return };
    let (mut client, conn) = slow_reader(&mut h);
    let chunk = pattern(5, 16 * 1024);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < WAIT, "{flavor:?}: never Full");
        let r = h.b.send_tcp(conn, &chunk);
        h.b.flush().unwrap();
        h.poll(Some(Duration::ZERO));
        if r == Err(SendError::Full) {
            break;
        }
    }
    h.b.abort_tcp(conn);
    h.b.flush().unwrap();
    assert!(h.poll_until(WAIT, |ev| closed(ev, conn) > 0), "{flavor:?}: no TcpClosed after abort");
    assert_eq!(closed(&h.events, conn), 1, "{flavor:?}");
    assert_eq!(h.b.send_tcp(conn, b"x"), Err(SendError::Closed), "{flavor:?}");
    // The peer, still connected and never having read, sees the stream end (EOF or reset)
    // after at most what was already in flight.
    client.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let t0 = Instant::now();
    loop {
        assert!(t0.elapsed() < WAIT, "{flavor:?}: the peer never saw the end");
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {} // bytes that were already in flight
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("{flavor:?}: unexpected read error {e}"),
        }
    }
}

/// io::wake from another thread ends a waiting poll (with a timeout, and with None) with one
/// Wake event, and the wake is consumed.
fn wake_reports_one_event(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    let fd = h.wake.try_clone().unwrap();
    let start = Instant::now();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        io::wake(fd.as_fd());
    });
    assert!(h.poll_until(WAIT, |ev| wakes(ev) > 0), "{flavor:?}: no Wake");
    assert!(start.elapsed() < Duration::from_secs(2), "{flavor:?}: Wake came late");
    waker.join().unwrap();
    for _ in 0..3 {
        h.poll(Some(Duration::ZERO));
    }
    assert_eq!(wakes(&h.events), 1, "{flavor:?}: the wake was not consumed");

    // poll(None): only a wake ends it. If the backend misses the wake, a watchdog sends
    // another wake and a datagram after 5 s, so the test fails instead of hanging.
    let udp_addr = h.addr;
    let fd = h.wake.try_clone().unwrap();
    let waker = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(50));
        io::wake(fd.as_fd());
    });
    let fd = h.wake.try_clone().unwrap();
    let start = Instant::now();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if done_rx.recv_timeout(Duration::from_secs(5)).is_err() {
            io::wake(fd.as_fd());
            let _ = peer().send_to(b"watchdog", udp_addr);
        }
    });
    while wakes(&h.events) < 2 && start.elapsed() < WAIT {
        h.poll(None);
    }
    let waited = start.elapsed();
    let _ = done_tx.send(());
    watchdog.join().unwrap();
    waker.join().unwrap();
    assert!(waited < Duration::from_secs(4), "{flavor:?}: poll(None) missed the wake");
    assert_eq!(datagrams(&h.events).len(), 0, "{flavor:?}");
}

/// With nothing pending, poll(Some(ZERO)) returns at once and a short timeout is honoured.
fn poll_zero_returns_promptly(flavor: Flavor) {
    let Some(mut h) = Harness::start(flavor, cfg()) else { return };
    let start = Instant::now();
    for _ in 0..200 {
        assert_eq!(h.poll(Some(Duration::ZERO)), 0, "{flavor:?}");
    }
    assert!(start.elapsed() < Duration::from_secs(1), "{flavor:?}: {:?}", start.elapsed());
    let start = Instant::now();
    assert_eq!(h.poll(Some(Duration::from_millis(100))), 0, "{flavor:?}");
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(50), "{flavor:?}: returned early, {waited:?}");
    assert!(waited < Duration::from_secs(2), "{flavor:?}: returned late, {waited:?}");
    assert!(h.events.is_empty(), "{flavor:?}: {:?}", h.events);
}

/// With one connection slot: the id comes back only after TcpClosed, and the new connection
/// sees only its own bytes, never the old one's (late completions are dropped).
fn conn_id_reuse_delivers_no_stale_events(flavor: Flavor) {
    let cfg = BackendConfig { max_connections: 1, ..cfg() };
    let Some(mut h) = Harness::start(flavor, cfg) else { return };
    let (mut old_client, server) = tcp_pair();
    let old = h.b.register_tcp(server).unwrap();
    let (_extra_client, extra) = tcp_pair();
    assert!(h.b.register_tcp(extra).is_err(), "{flavor:?}: a second slot out of one");

    // The old peer keeps writing while the connection closes, then closes its end (a graceful
    // close completes when the peer's end of stream arrives).
    old_client.write_all(b"old;").unwrap();
    h.b.close_tcp(old);
    let _ = old_client.write_all(b"old;");
    h.b.flush().unwrap();
    old_client.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(h.poll_until(WAIT, |ev| closed(ev, old) > 0), "{flavor:?}: no TcpClosed");
    let _ = old_client.write_all(b"old;");
    h.poll_for(Duration::from_millis(20));
    assert_eq!(closed(&h.events, old), 1, "{flavor:?}");
    let old_bytes = tcp_bytes(&h.events, old);
    assert!(old_bytes.iter().all(|b| b"old;".contains(b)), "{flavor:?}: {old_bytes:?}");

    h.events.clear();
    let (mut new_client, server) = tcp_pair();
    let new = h.b.register_tcp(server).unwrap();
    assert_eq!(new, old, "{flavor:?}: one slot, so the id must be reused");
    let _ = old_client.write_all(b"old;");
    new_client.write_all(b"new!").unwrap();
    assert!(h.poll_until(WAIT, |ev| tcp_bytes(ev, new).len() >= 4), "{flavor:?}: no data");
    h.poll_for(Duration::from_millis(100));
    assert_eq!(tcp_bytes(&h.events, new), b"new!", "{flavor:?}: stale bytes on a reused id");
    assert_eq!(closed(&h.events, new), 0, "{flavor:?}: stale TcpClosed on a reused id");

    h.b.send_tcp(new, b"ack").unwrap();
    h.b.flush().unwrap();
    let got = h.join_while_polling(read_exact_in_thread(new_client, 3));
    assert_eq!(got, b"ack");
    drop(old_client);
}

/// Built from a `BackendSpec` sent to another thread, as a shard builds its backend (backends
/// are not `Send`): datagrams both ways, TCP and a wake all work on that thread.
fn runs_on_the_thread_that_built_it(flavor: Flavor) {
    if flavor != Flavor::Epoll && !fleetgate::sim::uring_available(&format!("{flavor:?}")) {
        return;
    }
    let kind = if flavor == Flavor::Epoll { Kind::Epoll } else { Kind::Uring };
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let addr = udp.local_addr().unwrap();
    let wake = io::eventfd().unwrap();
    let waker = wake.try_clone().unwrap();
    let spec = io::BackendSpec { kind, fallback: false, udp, wake, cfg: cfg() };
    let p = peer();
    let (mut client, server) = tcp_pair();
    let shard = std::thread::spawn(move || {
        let (b, note) = spec.build().unwrap();
        assert_eq!(note, None);
        let mut h = Harness { b, addr, rcvbuf: 0, wake: waker, events: Vec::new() };
        let p_addr = p.local_addr().unwrap();
        p.send_to(b"ping", h.addr).unwrap();
        assert!(h.poll_until(WAIT, |ev| !datagrams(ev).is_empty()), "{flavor:?}: no datagram");
        assert_eq!(datagrams(&h.events), [(p_addr, b"ping".to_vec())]);
        h.b.send_to(p_addr, b"pong").unwrap();
        h.b.flush().unwrap();
        h.poll(Some(Duration::ZERO));
        assert_eq!(recv(&p), (h.addr, b"pong".to_vec()));
        let conn = h.b.register_tcp(server).unwrap();
        h.b.send_tcp(conn, b"hello").unwrap();
        h.b.flush().unwrap();
        io::wake(h.wake.as_fd());
        assert!(h.poll_until(WAIT, |ev| wakes(ev) == 1), "{flavor:?}: no Wake");
        h.poll_for(Duration::from_millis(20));
    });
    let mut buf = [0u8; 5];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello");
    shard.join().unwrap();
}

// ---- harness ----

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    Epoll,
    Uring,
    UringCoop,
    UringPlain,
}

/// An owned copy of an [`IoEvent`].
#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Datagram(SocketAddr, Vec<u8>),
    TcpData(ConnId, Vec<u8>),
    TcpClosed(ConnId),
    Wake,
    Connected(ConnId),
    ConnectFailed(ConnId, i32),
}

struct Harness {
    b: Box<dyn Backend>,
    /// The backend's UDP address.
    addr: SocketAddr,
    /// Its UDP socket's receive buffer, in bytes.
    rcvbuf: usize,
    /// A duplicate of the backend's wake descriptor.
    wake: OwnedFd,
    events: Vec<Ev>,
}

impl Harness {
    fn start(flavor: Flavor, cfg: BackendConfig) -> Option<Self> {
        if flavor != Flavor::Epoll && !fleetgate::sim::uring_available(&format!("{flavor:?}")) {
            return None;
        }
        let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let _ = socket2::SockRef::from(&udp).set_recv_buffer_size(BIG_RCVBUF);
        let rcvbuf = socket2::SockRef::from(&udp).recv_buffer_size().unwrap();
        let addr = udp.local_addr().unwrap();
        let wake = io::eventfd().unwrap();
        let wake_fd = wake.try_clone().unwrap();
        let b: Box<dyn Backend> = match flavor {
            Flavor::Epoll => io::build(Kind::Epoll, udp, wake, cfg).unwrap(),
            Flavor::Uring => io::build(Kind::Uring, udp, wake, cfg).unwrap(),
            Flavor::UringCoop | Flavor::UringPlain => {
                let setup = if flavor == Flavor::UringCoop {
                    RingSetup::CoopTaskrun
                } else {
                    RingSetup::Plain
                };
                match Uring::with_setup(udp, wake, cfg, setup) {
                    Ok(u) => Box::new(u),
                    Err(e) => {
                        eprintln!("note: {flavor:?} skipped, the kernel refuses {setup:?}: {e}");
                        return None;
                    }
                }
            }
        };
        let name = if flavor == Flavor::Epoll { "epoll" } else { "io_uring" };
        assert_eq!(b.name(), name);
        Some(Self { b, addr, rcvbuf, wake: wake_fd, events: Vec::new() })
    }

    /// One poll; checks that the count returned is the number of events reported.
    fn poll(&mut self, timeout: Option<Duration>) -> usize {
        let before = self.events.len();
        let events = &mut self.events;
        let n = self.b.poll(timeout, &mut |ev| events.push(own(ev))).unwrap();
        assert_eq!(n, self.events.len() - before, "poll's count differs from its events");
        n
    }

    /// Polls until `done(events)` or `within` has passed; returns whether `done` held.
    fn poll_until(&mut self, within: Duration, mut done: impl FnMut(&[Ev]) -> bool) -> bool {
        let end = Instant::now() + within;
        loop {
            if done(&self.events) {
                return true;
            }
            let now = Instant::now();
            if now >= end {
                return false;
            }
            self.poll(Some((end - now).min(STEP)));
        }
    }

    fn poll_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            self.poll(Some(left.min(STEP)));
        }
    }

    /// Polls (so the backend keeps sending) until the thread ends; returns its result.
    fn join_while_polling<T>(&mut self, t: JoinHandle<std::io::Result<T>>) -> T {
        let end = Instant::now() + WAIT;
        while !t.is_finished() {
            assert!(Instant::now() < end, "peer thread still running after {WAIT:?}");
            self.poll(Some(STEP));
        }
        t.join().unwrap().unwrap()
    }
}

fn own(ev: IoEvent<'_>) -> Ev {
    match ev {
        IoEvent::Datagram { from, data } => Ev::Datagram(from, data.to_vec()),
        IoEvent::TcpData { conn, data } => Ev::TcpData(conn, data.to_vec()),
        IoEvent::TcpClosed { conn } => Ev::TcpClosed(conn),
        IoEvent::Wake => Ev::Wake,
        IoEvent::TcpConnected { conn } => Ev::Connected(conn),
        IoEvent::TcpConnectFailed { conn, errno } => Ev::ConnectFailed(conn, errno),
    }
}

fn datagrams(events: &[Ev]) -> Vec<(SocketAddr, Vec<u8>)> {
    events
        .iter()
        .filter_map(|e| match e {
            Ev::Datagram(from, data) => Some((*from, data.clone())),
            _ => None,
        })
        .collect()
}

fn tcp_bytes(events: &[Ev], conn: ConnId) -> Vec<u8> {
    let mut all = Vec::new();
    for e in events {
        if let Ev::TcpData(c, data) = e {
            if *c == conn {
                all.extend_from_slice(data);
            }
        }
    }
    all
}

fn closed(events: &[Ev], conn: ConnId) -> usize {
    events.iter().filter(|e| **e == Ev::TcpClosed(conn)).count()
}

fn wakes(events: &[Ev]) -> usize {
    events.iter().filter(|e| **e == Ev::Wake).count()
}

fn cfg() -> BackendConfig {
    BackendConfig {
        max_datagram: 1400,
        batch: 32,
        max_connections: 8,
        send_queue_bytes: 256 * 1024,
    }
}

/// Deterministic bytes, different for each seed.
fn pattern(seed: usize, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(131) ^ i.wrapping_mul(7)) as u8).collect()
}

/// A plain UDP peer with a large receive buffer and a read timeout.
fn peer() -> UdpSocket {
    let s = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(BIG_RCVBUF);
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

fn recv(s: &UdpSocket) -> (SocketAddr, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    let (n, from) = s.recv_from(&mut buf).expect("datagram within the read timeout");
    buf.truncate(n);
    (from, buf)
}

fn big_rcvbuf(s: &UdpSocket) -> bool {
    big_rcvbuf_of(socket2::SockRef::from(s).recv_buffer_size().unwrap())
}

fn big_rcvbuf_of(bytes: usize) -> bool {
    bytes >= BIG_RCVBUF
}

/// A connected pair: (peer, server side handed to the backend, non-blocking as the acceptor
/// hands it over).
fn tcp_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    server.set_nonblocking(true).unwrap();
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    (client, server)
}

fn read_exact_in_thread(mut s: TcpStream, n: usize) -> JoinHandle<std::io::Result<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; n];
        s.read_exact(&mut buf).map(|()| buf)
    })
}

const N_BURST: usize = 1000;
/// Socket receive buffer asked for (the kernel caps it at net.core.rmem_max, then doubles it).
const BIG_RCVBUF: usize = 2 << 20;
/// Longest any condition is waited for.
const WAIT: Duration = Duration::from_secs(10);
/// Longest single poll while waiting.
const STEP: Duration = Duration::from_millis(20);
/// Read and write timeout of the peers' blocking sockets.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
