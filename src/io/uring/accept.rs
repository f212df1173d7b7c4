//! The acceptor's io_uring driver (see [`crate::acceptor`] for what it decides).
//!
//! | traffic                   | operation                                   | memory                          |
//! |---------------------------|---------------------------------------------|---------------------------------|
//! | ConnectionRequests        | one multishot `RECVMSG` on the handshake port | provided-buffer ring, group 0 |
//! | Accepts and Rejects       | one `SENDMSG` each                          | fixed pool of send slots        |
//! | new TCP connections       | one multishot `ACCEPT` on the listener      | none                            |
//! | a pending LogonRequest    | one `RECV` at a time per connection         | its fixed slot of `HANDOFF_BYTES` |
//! | logon deadline            | `ASYNC_CANCEL` of that `RECV`               | none                            |
//!
//! The same rules as the shard backend ([`super`]): every `user_data` is a `Token` (op, slot,
//! generation); memory the kernel may write lives in `Region`s and is ours again only at an
//! op's final CQE; a pending connection is handed to its shard (or closed) only when no op on it
//! is in flight, so the shard's ring is the only one to touch it after. The ring waits with an
//! `EXT_ARG` timeout (at most 50 ms, so shutdown is noticed) and is cancelled and drained
//! (bounded) before its memory is freed, or the memory is leaked.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, types};

use super::{
    BufRing, Lifecycle, MIN_DATAGRAM_BUF, NAME_LEN, Op, RECVMSG_OUT_LEN, Region, SendSlots, Token,
    UDP_BGID, cancel_all_and_wait, setup_ring, sockaddr_from_name, transient,
};
use crate::acceptor::{Core, Step, refuse};
use crate::shard::{HANDOFF_BYTES, Handoff};
use crate::time::Timestamp;

/// Handshake-port receive buffers (each holds one datagram with its header and address).
const RECV_BUFS: u16 = 256;
/// Answers in flight at most; more in one burst are dropped (counted: the device retries).
const SEND_SLOTS: usize = 256;
/// Longest wait in the kernel: shutdown is checked at least this often.
const MAX_WAIT: Duration = Duration::from_millis(50);

/// A connection waiting for its LogonRequest.
struct Pending {
    stream: TcpStream,
    peer: SocketAddr,
    len: usize,
    deadline: Timestamp,
    accepted: Timestamp,
    recv: Lifecycle,
    /// Its deadline passed and its receive is being cancelled.
    expired: bool,
}

struct Ring {
    ring: IoUring,
    disabled: bool,
    inflight: usize,
    hdr: Region,
    bufs: BufRing,
    slots: SendSlots,
    /// `HANDOFF_BYTES` per pending slot.
    pend_bufs: Region,
    pending: Vec<Option<Pending>>,
    gens: Vec<u32>,
    free: Vec<u32>,
    udp_recv: Lifecycle,
    accept: Lifecycle,
    /// Accepts have completed (so a failing multishot accept is not the kernel refusing it).
    accepted_any: bool,
}

/// Runs the acceptor on io_uring until shutdown. An error before anything was served (no
/// io_uring, or it refuses an operation) lets the caller fall back to `poll(2)`.
pub fn run(core: &mut Core, udp: &UdpSocket, tcp: &TcpListener) -> std::io::Result<()> {
    let mut r = Ring::new(core.max_pending)?;
    let result = r.serve(core, udp, tcp);
    if !r.quiesce() {
        r.leak();
    }
    // Pending connections are closed (dropped) with the ring.
    result
}

impl Ring {
    fn new(max_pending: usize) -> std::io::Result<Self> {
        let (ring, setup) = setup_ring(256, 1024, None)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "IORING_FEAT_EXT_ARG missing (Linux 5.11)",
            ));
        }
        let buf_len = (RECVMSG_OUT_LEN + NAME_LEN + MIN_DATAGRAM_BUF).next_multiple_of(64);
        let bufs = BufRing::new(&ring.submitter(), UDP_BGID, RECV_BUFS, buf_len)?;
        let hdr = Region::new(size_of::<libc::msghdr>())?;
        // SAFETY: a fresh, zero-filled mapping large enough for a msghdr (all-zero is valid).
        unsafe { (*hdr.ptr().cast::<libc::msghdr>()).msg_namelen = NAME_LEN as u32 };
        let n = max_pending.max(1);
        Ok(Self {
            ring,
            disabled: setup == super::RingSetup::DeferTaskrun,
            inflight: 0,
            hdr,
            bufs,
            slots: SendSlots::new(SEND_SLOTS, MIN_DATAGRAM_BUF)?,
            pend_bufs: Region::new(n * HANDOFF_BYTES)?,
            pending: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            free: (0..n as u32).rev().collect(),
            udp_recv: Lifecycle::Idle,
            accept: Lifecycle::Idle,
            accepted_any: false,
        })
    }

    fn serve(
        &mut self,
        core: &mut Core,
        udp: &UdpSocket,
        tcp: &TcpListener,
    ) -> std::io::Result<()> {
        if self.disabled {
            // Created R_DISABLED (SINGLE_ISSUER): this thread becomes its issuer.
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        eprintln!("fleetgate: acceptor running on io_uring");
        let mut cqes = Vec::with_capacity(1024);
        while !core.stopping() {
            let now = core.clock.now();
            core.publish(Some(now), "io_uring");
            self.arm(udp, tcp);
            let wait = self.next_deadline().map_or(MAX_WAIT, |d| d.saturating_since(now));
            let ts = types::Timespec::from(wait.clamp(Duration::from_millis(1), MAX_WAIT));
            match self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
            {
                Ok(_) => {}
                Err(e) if transient(&e) => {}
                Err(e) => return Err(e),
            }
            cqes.clear();
            cqes.extend(self.ring.completion().take(1024));
            let now = core.clock.now();
            for cqe in &cqes {
                self.dispatch(core, udp, now, cqe)?;
            }
            self.expire(core, now);
        }
        Ok(())
    }

    /// Queues `sqe`, submitting a full queue first; false if it stays full.
    ///
    /// # Safety
    ///
    /// As `Uring::push`: what `sqe` points to stays valid and untouched until its final CQE.
    unsafe fn push(&mut self, sqe: &io_uring::squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.inflight += 1;
                return true;
            }
            if self.ring.submit().is_err() {
                return false;
            }
        }
        false
    }

    /// Arms the multishots that are not armed.
    fn arm(&mut self, udp: &UdpSocket, tcp: &TcpListener) {
        if self.udp_recv == Lifecycle::Idle {
            let hdr = self.hdr.ptr().cast::<libc::msghdr>();
            let sqe = opcode::RecvMsgMulti::new(types::Fd(udp.as_raw_fd()), hdr, UDP_BGID)
                .build()
                .user_data(Token::new(Op::UdpRecv, 0, 0).0);
            // SAFETY: the msghdr lives in `hdr`, never written after `new`; the buffers are
            // group UDP_BGID's, kept until the ring quiesces; the socket outlives the ring's use.
            if unsafe { self.push(&sqe) } {
                self.udp_recv = Lifecycle::Submitted;
            }
        }
        if self.accept == Lifecycle::Idle {
            let sqe = opcode::AcceptMulti::new(types::Fd(tcp.as_raw_fd()))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(Token::new(Op::Accept, 0, 0).0);
            // SAFETY: no pointers; the listener outlives the ring's use.
            if unsafe { self.push(&sqe) } {
                self.accept = Lifecycle::Submitted;
            }
        }
    }

    fn dispatch(
        &mut self,
        core: &mut Core,
        udp: &UdpSocket,
        now: Timestamp,
        cqe: &cqueue::Entry,
    ) -> std::io::Result<()> {
        let (res, flags) = (cqe.result(), cqe.flags());
        let more = cqueue::more(flags);
        if !more {
            self.inflight = self.inflight.saturating_sub(1);
        }
        let token = Token(cqe.user_data());
        match token.op() {
            Some(Op::UdpRecv) => self.on_datagram(core, udp, now, res, flags, more),
            Some(Op::UdpSend) if self.slots.complete(token) && res < 0 => {
                core.counters.replies_dropped += 1;
            }
            Some(Op::Accept) => self.on_accept(core, now, res, more)?,
            Some(Op::TcpRecv) => self.on_pending(core, now, token, res),
            _ => {}
        }
        Ok(())
    }

    fn on_datagram(
        &mut self,
        core: &mut Core,
        udp: &UdpSocket,
        now: Timestamp,
        res: i32,
        flags: u32,
        more: bool,
    ) {
        if !more {
            // Ended (ENOBUFS, an error, or the kernel's choice): `arm` re-arms it.
            self.udp_recv = Lifecycle::Idle;
        }
        let Some(bid) = cqueue::buffer_select(flags).filter(|&b| self.bufs.owns(b)) else {
            return;
        };
        if let Ok(len) = usize::try_from(res) {
            // SAFETY: this CQE hands buffer `bid` to us; it is recycled below, after the last
            // use of `buf`.
            let buf = unsafe { self.bufs.filled(bid, len) };
            // SAFETY: `hdr` holds a msghdr written once in `new` and only read since.
            let hdr = unsafe { &*self.hdr.ptr().cast::<libc::msghdr>() };
            if let Ok(msg) = types::RecvMsgOut::parse(buf, hdr) {
                let from = sockaddr_from_name(msg.name_data());
                if let (false, Some(from)) = (msg.is_payload_truncated(), from) {
                    if let Some(reply) = core.datagram(now, from, msg.payload_data()) {
                        if !self.send_to(udp, from, reply) {
                            core.counters.replies_dropped += 1;
                        }
                    }
                } else {
                    core.counters.dropped += 1;
                }
            }
        }
        self.bufs.recycle(bid);
    }

    /// Queues one answer; false when no slot is free.
    fn send_to(&mut self, udp: &UdpSocket, to: SocketAddr, data: &[u8]) -> bool {
        let Some(idx) = self.slots.free.pop() else { return false };
        let idx = idx as usize;
        let hdr = self.slots.fill(idx, to, data);
        let sqe = opcode::SendMsg::new(types::Fd(udp.as_raw_fd()), hdr)
            .build()
            .user_data(Token::new(Op::UdpSend, idx, self.slots.gens[idx]).0);
        // SAFETY: the msghdr, iovec, address and bytes are in slot `idx`, which nothing touches
        // until this op's CQE frees it.
        if unsafe { self.push(&sqe) } {
            self.slots.state[idx] = Lifecycle::Submitted;
            true
        } else {
            self.slots.free.push(idx as u32);
            false
        }
    }

    fn on_accept(
        &mut self,
        core: &mut Core,
        now: Timestamp,
        res: i32,
        more: bool,
    ) -> std::io::Result<()> {
        if !more {
            self.accept = Lifecycle::Idle;
        }
        if res < 0 {
            let e = std::io::Error::from_raw_os_error(-res);
            if !self.accepted_any && matches!(-res, libc::EINVAL | libc::EOPNOTSUPP) {
                // Multishot accept refused (before Linux 5.19): let the caller fall back.
                return Err(e);
            }
            return Ok(()); // ECONNABORTED, EMFILE, ...: re-armed by `arm`
        }
        self.accepted_any = true;
        // SAFETY: a successful accept CQE carries a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(res) };
        let stream = TcpStream::from(fd);
        let Ok(peer) = stream.peer_addr() else { return Ok(()) }; // already gone
        let Some(idx) = self.free.pop() else {
            let why = core.busy();
            refuse(stream, why);
            return Ok(());
        };
        let idx = idx as usize;
        self.pending[idx] = Some(Pending {
            stream,
            peer,
            len: 0,
            deadline: now + core.logon_timeout,
            accepted: now,
            recv: Lifecycle::Idle,
            expired: false,
        });
        self.read_more(core, idx);
        Ok(())
    }

    /// Queues the next `RECV` of pending connection `idx` into the rest of its buffer.
    fn read_more(&mut self, core: &mut Core, idx: usize) {
        let generation = self.gens[idx];
        let Some(p) = self.pending[idx].as_ref() else { return };
        let (fd, len) = (p.stream.as_raw_fd(), p.len);
        let ptr = self.pend_bufs.ptr().wrapping_add(idx * HANDOFF_BYTES + len);
        let sqe = opcode::Recv::new(types::Fd(fd), ptr, (HANDOFF_BYTES - len) as u32)
            .build()
            .user_data(Token::new(Op::TcpRecv, idx, generation).0);
        // SAFETY: `[ptr, ptr + HANDOFF_BYTES - len)` is the unfilled rest of slot `idx` in
        // `pend_bufs`, not read until this op's CQE; the descriptor stays open until then (the
        // slot is released only when no op on it is in flight).
        if unsafe { self.push(&sqe) } {
            if let Some(p) = self.pending[idx].as_mut() {
                p.recv = Lifecycle::Submitted;
            }
        } else if let Some(p) = self.take(idx) {
            // No room in the ring even after a submit: refuse rather than wait.
            refuse(p.stream, core.busy());
        }
    }

    fn on_pending(&mut self, core: &mut Core, now: Timestamp, token: Token, res: i32) {
        let idx = token.index();
        if self.gens.get(idx) != Some(&token.generation()) {
            return;
        }
        let Some(p) = self.pending[idx].as_mut() else { return };
        p.recv = Lifecycle::Idle;
        if p.expired {
            // Its deadline passed (counted then); this is the cancelled receive's end.
            if let Some(p) = self.take(idx) {
                refuse(p.stream, "logon timeout");
            }
            return;
        }
        match usize::try_from(res) {
            Ok(n @ 1..) => p.len = (p.len + n).min(HANDOFF_BYTES),
            _ => {
                // End of stream or an error before a LogonRequest: just close.
                drop(self.take(idx));
                return;
            }
        }
        let (len, deadline) = (p.len, p.deadline);
        // SAFETY: the receive that wrote these bytes has completed and none is in flight.
        let bytes = unsafe {
            core::slice::from_raw_parts(self.pend_bufs.ptr().add(idx * HANDOFF_BYTES), len)
        };
        match core.first_frame(now, bytes, deadline) {
            Step::NeedMore => self.read_more(core, idx),
            Step::HandOff(shard) => {
                let mut initial = [0u8; HANDOFF_BYTES];
                initial[..len].copy_from_slice(bytes);
                if let Some(p) = self.take(idx) {
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
                if let Some(p) = self.take(idx) {
                    refuse(p.stream, why);
                }
            }
        }
    }

    /// Takes pending connection `idx` out of its slot, which is free again (call only when no
    /// op on it is in flight).
    fn take(&mut self, idx: usize) -> Option<Pending> {
        let p = self.pending[idx].take()?;
        self.gens[idx] = self.gens[idx].wrapping_add(1);
        self.free.push(idx as u32);
        Some(p)
    }

    /// The earliest deadline of a pending connection still waiting.
    fn next_deadline(&self) -> Option<Timestamp> {
        self.pending.iter().flatten().filter(|p| !p.expired).map(|p| p.deadline).min()
    }

    /// Cancels the receive of every pending connection past its deadline; its CQE closes it.
    fn expire(&mut self, core: &mut Core, now: Timestamp) {
        for idx in 0..self.pending.len() {
            let generation = self.gens[idx];
            let Some(p) = self.pending[idx].as_mut() else { continue };
            if p.expired || now < p.deadline {
                continue;
            }
            p.expired = true;
            let fd = p.stream.as_raw_fd();
            let _ = core.timed_out();
            let sqe = opcode::AsyncCancel::new(Token::new(Op::TcpRecv, idx, generation).0)
                .build()
                .user_data(Token::CANCEL.0);
            // SAFETY: no pointers.
            if !unsafe { self.push(&sqe) } {
                // The receive is still ours to wait for: shutting the socket down ends it.
                // SAFETY: no pointers; the descriptor is open.
                let _ = unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
        }
    }

    /// Cancels everything and waits, bounded, for every final CQE. True when none is left.
    fn quiesce(&mut self) -> bool {
        if self.inflight == 0 || self.disabled {
            return true;
        }
        cancel_all_and_wait(&mut self.ring, &mut self.inflight)
    }

    /// Leaves every region the kernel may still write mapped (rule 18).
    fn leak(&mut self) {
        self.hdr.leak();
        self.bufs.leak();
        self.slots.meta.leak();
        self.slots.bufs.leak();
        self.pend_bufs.leak();
    }
}
