//! The acceptor's portable driver: `poll(2)` over non-blocking sockets.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};

use rustix::event::{PollFd, PollFlags, Timespec};

use super::{Core, Step, refuse};
use crate::counters::Counter;
use crate::runtime::handoff::{HANDOFF_BYTES, Handoff};
use crate::time::Timestamp;

struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    buf: [u8; HANDOFF_BYTES],
    len: usize,
    deadline: Timestamp,
    accepted: Timestamp,
}

/// The portable driver: `poll(2)` over non-blocking sockets. Pending connections are kept
/// oldest first; when `max_pending` are waiting, a new one closes the oldest.
pub fn run_poll(core: &mut Core, udp: &UdpSocket, tcp: &TcpListener) {
    tracing::info!(driver = "poll", "acceptor running");
    let _ = udp.set_nonblocking(true);
    let _ = tcp.set_nonblocking(true);
    let mut pending: VecDeque<Pending> = VecDeque::with_capacity(core.max_pending);
    let mut rx = [0u8; 2048];
    let mut ready: Vec<bool> = Vec::with_capacity(core.max_pending + 2);
    let wait = Timespec { tv_sec: 0, tv_nsec: 50_000_000 };
    while !core.stopping() {
        core.publish(Some(core.clock.now()), "poll", pending.len());
        {
            // Rebuilt each pass (the pending set changes); bounded by `max_pending` + 2.
            let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(pending.len() + 2);
            fds.push(PollFd::new(udp, PollFlags::IN));
            fds.push(PollFd::new(tcp, PollFlags::IN));
            fds.extend(pending.iter().map(|p| PollFd::new(&p.stream, PollFlags::IN)));
            if rustix::event::poll(&mut fds, Some(&wait)).is_err() {
                continue; // EINTR: poll again
            }
            ready.clear();
            ready.extend(fds.iter().map(|f| !f.revents().is_empty()));
        }
        let now = core.clock.now();
        if ready[0] {
            for _ in 0..256 {
                let Ok((len, from)) = udp.recv_from(&mut rx) else { break };
                if let Some(reply) = core.datagram(now, from, &rx[..len]) {
                    if udp.send_to(reply, from).is_err() {
                        core.counters.incr(Counter::ConnectionRepliesDropped);
                    }
                }
            }
        }
        // Pending connections: read, hand off, or time out (before new ones shift the order:
        // `ready[2 + i]` matches `pending[i]` as polled). Backwards, so removal keeps the
        // indices still to visit.
        let polled = ready.len() - 2;
        let mut i = pending.len();
        while i > 0 {
            i -= 1;
            if i < polled && ready[2 + i] {
                let p = &mut pending[i];
                let closed = match std::io::Read::read(&mut p.stream, &mut p.buf[p.len..]) {
                    Ok(0) => true,
                    Ok(n) => {
                        p.len += n;
                        false
                    }
                    Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
                };
                if closed {
                    core.peer_closed();
                    pending.remove(i);
                    continue;
                }
            }
            let p = &pending[i];
            match core.first_frame(now, &p.buf[..p.len], p.deadline) {
                Step::NeedMore => {}
                Step::HandOff(shard) => {
                    let Some(p) = pending.remove(i) else { continue };
                    let h = Handoff {
                        stream: p.stream,
                        peer: p.peer,
                        initial: p.buf,
                        len: p.len,
                        accepted: p.accepted,
                    };
                    core.hand_off(shard, h);
                }
                Step::Refuse(why) => {
                    if let Some(p) = pending.remove(i) {
                        refuse(p.stream, why);
                    }
                }
            }
        }
        if ready[1] {
            for _ in 0..256 {
                let Ok((stream, peer)) = tcp.accept() else { break };
                if pending.len() >= core.max_pending {
                    // Make room: the oldest connection still without a LogonRequest goes.
                    if let Some(old) = pending.pop_front() {
                        let why = core.evicted();
                        refuse(old.stream, why);
                    }
                }
                let _ = stream.set_nonblocking(true);
                pending.push_back(Pending {
                    stream,
                    peer,
                    buf: [0; HANDOFF_BYTES],
                    len: 0,
                    deadline: now + core.logon_timeout,
                    accepted: now,
                });
            }
        }
    }
}
