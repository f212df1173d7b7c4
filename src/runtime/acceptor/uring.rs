//! The acceptor's io_uring driver: runs [`Core`]'s decisions over the ring of
//! [`crate::io::uring::accept`], which owns the memory the kernel touches (see its module docs
//! for the operations).
//!
//! A pending connection holds one ring slot of [`HANDOFF_BYTES`] and has one `RECV` in flight at
//! a time; it is handed to its shard (or closed) only when that receive has completed, so the
//! shard's ring is the only one to touch the socket after. A connection past its deadline has
//! its receive cancelled, and is refused when the cancelled receive ends. The ring waits at most
//! 50 ms, so shutdown is noticed.

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use super::{Core, Step, refuse};
use crate::counters::Counter;
use crate::io::uring::accept::{AcceptRing, CQES_PER_WAIT, Completion, Inbound};
use crate::runtime::handoff::{HANDOFF_BYTES, Handoff};
use crate::time::Timestamp;

/// Longest wait in the kernel: shutdown is checked at least this often.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// A connection waiting for its LogonRequest, in its ring slot.
struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes of the slot filled.
    len: usize,
    deadline: Timestamp,
    accepted: Timestamp,
    /// Being closed (its deadline passed, or it was the oldest when the table was full): its
    /// receive is being cancelled, and this LoggedOut reason goes out when it ends.
    closing: Option<&'static str>,
}

/// Runs the acceptor on io_uring until shutdown. An error before anything was served (no
/// io_uring, or it refuses an operation) lets the caller fall back to `poll(2)`.
pub fn run(core: &mut Core, udp: &UdpSocket, tcp: &TcpListener) -> std::io::Result<()> {
    // A connection being closed keeps its ring slot until its cancelled receive ends, and the
    // newcomer that made it go needs one meanwhile: one wait reaps at most `CQES_PER_WAIT`
    // accepts, so that many slots more than the pending limit cover a burst; newcomers beyond
    // wait in `waiting` for a slot to come back.
    let slots = core.max_pending + CQES_PER_WAIT;
    let mut d = Driver {
        ring: AcceptRing::new(slots, HANDOFF_BYTES)?,
        pending: (0..slots).map(|_| None).collect(),
        live: 0,
        waiting: VecDeque::with_capacity(CQES_PER_WAIT),
    };
    // Pending connections are closed (dropped) with the driver; the ring cancels and drains
    // what is in flight when it is dropped.
    d.serve(core, udp, tcp)
}

struct Driver {
    ring: AcceptRing,
    /// Indexed by ring slot.
    pending: Vec<Option<Pending>>,
    /// Pending connections not being closed (at most `max_pending`).
    live: usize,
    /// Accepted connections waiting for a ring slot (oldest first, at most `CQES_PER_WAIT`).
    waiting: VecDeque<(TcpStream, SocketAddr, Timestamp)>,
}

/// True if `stream` has bytes to read (or its peer has closed it), without taking them.
fn has_input(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    let flags = libc::MSG_PEEK | libc::MSG_DONTWAIT;
    match socket2::SockRef::from(stream).recv_with_flags(&mut byte, flags) {
        Ok(n) => n > 0,
        Err(_) => false,
    }
}

impl Driver {
    fn serve(
        &mut self,
        core: &mut Core,
        udp: &UdpSocket,
        tcp: &TcpListener,
    ) -> std::io::Result<()> {
        self.ring.start()?;
        tracing::info!(driver = "io_uring", "acceptor running");
        while !core.stopping() {
            let now = core.clock.now();
            core.publish(Some(now), "io_uring", self.live);
            self.ring.arm(udp, tcp);
            let wait = self.next_deadline().map_or(MAX_WAIT, |d| d.saturating_since(now));
            self.ring.wait(wait.clamp(Duration::from_millis(1), MAX_WAIT))?;
            let now = core.clock.now();
            while let Some(c) = self.ring.poll_completion() {
                self.dispatch(core, udp, now, c)?;
            }
            // Slots given back by this batch go to the connections waiting for one.
            while !self.waiting.is_empty() {
                let Some(slot) = self.ring.claim() else { break };
                if let Some((stream, peer, accepted)) = self.waiting.pop_front() {
                    self.start(core, slot, stream, peer, accepted);
                }
            }
            self.expire(core, now);
        }
        Ok(())
    }

    fn dispatch(
        &mut self,
        core: &mut Core,
        udp: &UdpSocket,
        now: Timestamp,
        c: Completion,
    ) -> std::io::Result<()> {
        match c {
            Completion::Datagram(buf) => {
                match self.ring.datagram(&buf) {
                    Inbound::Datagram(from, data) => {
                        if let Some(reply) = core.datagram(now, from, data) {
                            if !self.ring.send_to(udp, from, reply) {
                                core.counters.incr(Counter::ConnectionRepliesDropped);
                            }
                        }
                    }
                    Inbound::Truncated => core.counters.incr(Counter::ConnectionRequestsDropped),
                    Inbound::Invalid => {}
                }
                self.ring.recycle(buf);
            }
            Completion::SendFailed => core.counters.incr(Counter::ConnectionRepliesDropped),
            // Multishot accept refused (before Linux 5.19): let the caller fall back.
            Completion::AcceptUnsupported(e) => return Err(e),
            Completion::Accepted(stream) => self.on_accept(core, now, stream),
            Completion::Received { slot, result } => self.on_received(core, now, slot, result),
        }
        Ok(())
    }

    fn on_accept(&mut self, core: &mut Core, now: Timestamp, stream: TcpStream) {
        let Ok(peer) = stream.peer_addr() else { return }; // already gone
        match self.ring.claim() {
            Some(slot) => self.start(core, slot, stream, peer, now),
            None => {
                // Every slot is live or still closing: wait for one, making room if need be:
                // the oldest waiting connection that has sent nothing goes (the oldest of all if
                // every one has), so that under a connect storm a client that sent its
                // LogonRequest at once is not refused before it is read.
                if self.waiting.len() == self.waiting.capacity() {
                    let idle = self.waiting.iter().position(|(s, ..)| !has_input(s)).unwrap_or(0);
                    if let Some((old, ..)) = self.waiting.remove(idle) {
                        let why = core.evicted();
                        refuse(old, why);
                    }
                }
                self.waiting.push_back((stream, peer, now));
            }
        }
    }

    /// Makes `stream` pending in ring `slot`, closing the oldest pending connection first if
    /// `max_pending` are waiting already.
    fn start(
        &mut self,
        core: &mut Core,
        slot: usize,
        stream: TcpStream,
        peer: SocketAddr,
        accepted: Timestamp,
    ) {
        if self.live >= core.max_pending {
            // Make room: the oldest connection still without a LogonRequest goes.
            let oldest = (0..self.pending.len())
                .filter(|&i| self.pending[i].as_ref().is_some_and(|p| p.closing.is_none()))
                .min_by_key(|&i| self.pending[i].as_ref().map(|p| p.accepted));
            if let Some(slot) = oldest {
                let why = core.evicted();
                self.close(slot, why);
            }
        }
        self.pending[slot] = Some(Pending {
            stream,
            peer,
            len: 0,
            deadline: accepted + core.logon_timeout,
            accepted,
            closing: None,
        });
        self.live += 1;
        self.read_more(core, slot);
    }

    /// Queues the next `RECV` of pending connection `slot` into the rest of its buffer.
    fn read_more(&mut self, core: &mut Core, slot: usize) {
        let Some(p) = self.pending[slot].as_ref() else { return };
        if !self.ring.recv(slot, &p.stream, p.len) {
            if let Some(p) = self.take(slot) {
                // No room in the ring even after a submit: refuse rather than wait.
                refuse(p.stream, core.busy());
            }
        }
    }

    fn on_received(
        &mut self,
        core: &mut Core,
        now: Timestamp,
        slot: usize,
        result: std::io::Result<usize>,
    ) {
        let Some(p) = self.pending.get_mut(slot).and_then(Option::as_mut) else { return };
        if let Some(why) = p.closing {
            // Being closed (counted then); this is the cancelled receive's end.
            if let Some(p) = self.take(slot) {
                refuse(p.stream, why);
            }
            return;
        }
        match result {
            Ok(n @ 1..) => p.len = (p.len + n).min(HANDOFF_BYTES),
            _ => {
                // End of stream or an error before a LogonRequest: just close.
                core.peer_closed();
                drop(self.take(slot));
                return;
            }
        }
        let (len, deadline) = (p.len, p.deadline);
        // The receive that wrote these bytes has completed and none is in flight.
        let Some(bytes) = self.ring.slot_bytes(slot, len) else { return };
        match core.first_frame(now, bytes, deadline) {
            Step::NeedMore => self.read_more(core, slot),
            Step::HandOff(shard) => {
                let mut initial = [0u8; HANDOFF_BYTES];
                initial[..len].copy_from_slice(bytes);
                if let Some(p) = self.take(slot) {
                    let h = Handoff {
                        stream: p.stream,
                        peer: p.peer,
                        initial,
                        len,
                        accepted: p.accepted,
                    };
                    core.hand_off(shard, h);
                }
            }
            Step::Refuse(why) => {
                if let Some(p) = self.take(slot) {
                    refuse(p.stream, why);
                }
            }
        }
    }

    /// Takes pending connection `slot` out and gives its ring slot back.
    fn take(&mut self, slot: usize) -> Option<Pending> {
        let p = self.pending.get_mut(slot)?.take()?;
        if p.closing.is_none() {
            self.live -= 1;
        }
        self.ring.release(slot);
        Some(p)
    }

    /// Starts closing pending connection `slot` with LoggedOut(`why`): its receive is cancelled,
    /// and its completion refuses it.
    fn close(&mut self, slot: usize, why: &'static str) {
        let Some(p) = self.pending[slot].as_mut() else { return };
        if p.closing.is_some() {
            return;
        }
        p.closing = Some(why);
        self.live -= 1;
        if !self.ring.cancel_recv(slot) {
            // The receive is still ours to wait for: shutting the socket down ends it.
            let _ = p.stream.shutdown(std::net::Shutdown::Read);
        }
    }

    /// The earliest deadline of a pending connection still waiting.
    fn next_deadline(&self) -> Option<Timestamp> {
        self.pending.iter().flatten().filter(|p| p.closing.is_none()).map(|p| p.deadline).min()
    }

    /// Cancels the receive of every pending connection past its deadline; its completion
    /// closes it.
    fn expire(&mut self, core: &mut Core, now: Timestamp) {
        for slot in 0..self.pending.len() {
            let Some(p) = self.pending[slot].as_ref() else { continue };
            if p.closing.is_some() || now < p.deadline {
                continue;
            }
            let why = core.timed_out();
            self.close(slot, why);
        }
    }
}
