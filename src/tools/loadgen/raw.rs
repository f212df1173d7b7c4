//! The generator's floor: the steady scenario's datagrams sent to a plain UDP echo server (the
//! bare loop of `benches/echo_floor.rs`, or any echo), with no sessions and no device state.
//!
//! The same sockets, source addresses, open-loop schedule, batching and histograms as the
//! device engine ([`super::engine`]); each datagram is byte for byte the size of a device's echo
//! request (prefix, header, `body_bytes` of body with the intended send time in front). The
//! echo comes back unchanged, so latency from the intended time and send lateness are measured
//! exactly as in a gateway run: subtracting this run's figures from a gateway run's leaves the
//! gateway's share.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustix::buffer::spare_capacity;
use rustix::event::{Timespec, epoll};

use super::errors::ErrorKind;
use super::{Part, ThreadResult, source_ip};
use crate::io::mmsg::{RecvBatch, SendBatch};
use crate::protocol::{Body, DATAGRAM_PREFIX_LEN, HEADER_LEN, Header, Message};
use crate::time::{Clock, Timestamp};

const BATCH: usize = 64;
const SLOT: usize = 2048;
const MAX_WAIT: Duration = Duration::from_millis(10);
const DRAIN: Duration = Duration::from_secs(1);
const LATENCY_MAX_NS: u64 = 60_000_000_000;

/// One thread of a raw echo run against `to`.
pub(super) fn thread_main(part: Part<'_>, to: SocketAddr) -> Result<ThreadResult, String> {
    let Part { cfg, thread, threads, clock, shared } = part;
    let ep =
        epoll::create(epoll::CreateFlags::CLOEXEC).map_err(|e| format!("epoll_create1: {e}"))?;
    let total = cfg.socket_count();
    let mut socks: Vec<UdpSocket> = Vec::new();
    for g in (thread..total.max(threads)).step_by(threads) {
        let ip = source_ip(g as u32 % cfg.source_ips.max(1));
        let s = UdpSocket::bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .map_err(|e| format!("bind UDP socket on {ip}: {e}"))?;
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
        epoll::add(&ep, &s, epoll::EventData::new_u64(socks.len() as u64), epoll::EventFlags::IN)
            .map_err(|e| format!("epoll_ctl: {e}"))?;
        socks.push(s);
    }
    let mut st = ThreadResult::new(1);
    let mut rx = RecvBatch::new(BATCH, SLOT);
    let mut tx = SendBatch::new(BATCH, SLOT);
    let mut events: Vec<epoll::Event> = Vec::with_capacity(256);
    let mut body = vec![0u8; cfg.body_bytes];
    let start = clock.now();
    let warm_end = start + cfg.warmup;
    let end = warm_end + cfg.duration;
    let iv = Duration::from_secs_f64(threads as f64 / cfg.rate.max(1e-3));
    let mut next_send = start;
    let (mut rr, mut seq) = (0usize, 1i64);
    let (mut tx_sock, mut measured_sent) = (usize::MAX, 0u64);
    let prefix = 0x5241_5700 + thread as u64;
    loop {
        let now = clock.now();
        let stop = shared.stop.load(Ordering::Relaxed);
        if now >= end + DRAIN || stop || (now >= end && st.received >= measured_sent) {
            break;
        }
        let mut budget = 10_000;
        while now < end && next_send <= now && budget > 0 {
            budget -= 1;
            let intended = next_send;
            next_send = next_send + iv;
            rr = (rr + 1) % socks.len();
            if tx_sock != rr || tx.is_full() {
                flush(&mut tx, &mut st, tx_sock, &socks, &clock, warm_end);
                tx_sock = rr;
            }
            body[..8].copy_from_slice(&intended.as_nanos().to_le_bytes());
            let msg = Message {
                header: Header { seq, ..Header::default() },
                body: Body::App { type_id: 150, body: &body },
            };
            seq += 1;
            let Some(slot) = tx.slot() else { break };
            slot[..DATAGRAM_PREFIX_LEN].copy_from_slice(&prefix.to_le_bytes());
            let Ok(n) = msg.encode(&mut slot[DATAGRAM_PREFIX_LEN..]) else { break };
            tx.commit(DATAGRAM_PREFIX_LEN + n, to);
            if intended >= warm_end {
                measured_sent += 1;
                st.sent += 1;
                shared.live.sent.fetch_add(1, Ordering::Relaxed);
            }
        }
        flush(&mut tx, &mut st, tx_sock, &socks, &clock, warm_end);
        let now = clock.now();
        let until = if now < end { next_send.min(now + MAX_WAIT) } else { now + MAX_WAIT };
        let wait = if cfg.spin { Duration::ZERO } else { until.saturating_since(now) };
        let ts =
            Timespec { tv_sec: wait.as_secs() as i64, tv_nsec: i64::from(wait.subsec_nanos()) };
        events.clear();
        // EINTR and the like: nothing ready this time round.
        let _ = epoll::wait(&ep, spare_capacity(&mut events), Some(&ts));
        for ev in &events {
            let j = ev.data.u64() as usize;
            for _ in 0..4 {
                let n = rx.recv(&socks[j]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                st.wire.recv_calls += 1;
                st.wire.datagrams_received += n as u64;
                let now = clock.now();
                for i in 0..n {
                    let (d, truncated) = rx.datagram(i);
                    let at = DATAGRAM_PREFIX_LEN + HEADER_LEN;
                    if truncated || d.len() < at + 8 {
                        st.wire.malformed += 1;
                        continue;
                    }
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&d[at..at + 8]);
                    let intended = Timestamp::from_nanos(u64::from_le_bytes(b));
                    if intended < warm_end {
                        continue;
                    }
                    let lat = now.as_nanos().saturating_sub(intended.as_nanos()).max(1);
                    let _ = st.latency.record(lat.min(LATENCY_MAX_NS));
                    st.received += 1;
                    shared.live.received.fetch_add(1, Ordering::Relaxed);
                }
                if n < BATCH {
                    break;
                }
            }
        }
    }
    let lost = measured_sent.saturating_sub(st.received);
    if lost > 0 {
        st.errors.add(ErrorKind::LostReplies, lost);
    }
    Ok(st)
}

/// Sends the batch on socket `j`, recording the lateness of each measured datagram.
fn flush(
    tx: &mut SendBatch,
    st: &mut ThreadResult,
    j: usize,
    socks: &[UdpSocket],
    clock: &Clock,
    warm_end: Timestamp,
) {
    if tx.is_empty() || j >= socks.len() {
        return;
    }
    let now = clock.now();
    let at = DATAGRAM_PREFIX_LEN + HEADER_LEN;
    for i in 0..tx.len() {
        let d = tx.queued(i);
        if d.len() >= at + 8 {
            let mut b = [0u8; 8];
            b.copy_from_slice(&d[at..at + 8]);
            let intended = u64::from_le_bytes(b);
            if intended >= warm_end.as_nanos() {
                let late = now.as_nanos().saturating_sub(intended).max(1);
                let _ = st.lateness.record(late.min(LATENCY_MAX_NS));
            }
        }
    }
    let f = tx.flush(&socks[j]);
    st.wire.send_calls += f.calls as u64;
    st.wire.datagrams_sent += f.sent as u64;
    st.wire.send_dropped += f.dropped as u64;
    if f.dropped > 0 {
        st.errors.add(ErrorKind::SendFailed, f.dropped as u64);
    }
}
