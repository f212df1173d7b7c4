//! The acceptor's ring: a safe API over io_uring for the handshake port, the TCP listener and
//! the connections waiting for their first bytes. It owns every byte the kernel may touch and
//! keeps the `unsafe`; what to answer, and what to do with a connection, is the driver's
//! (`runtime::acceptor::uring`).
//!
//! | traffic                   | operation                                     | memory                          |
//! |---------------------------|-----------------------------------------------|---------------------------------|
//! | datagrams (handshakes)    | one multishot `RECVMSG` on the handshake port | provided-buffer ring, group 0   |
//! | answers                   | one `SENDMSG` each ([`AcceptRing::send_to`])  | fixed pool of send slots        |
//! | new TCP connections       | one multishot `ACCEPT` on the listener        | none                            |
//! | a connection's first bytes | one `RECV` at a time per slot ([`AcceptRing::recv`]) | the slot's fixed buffer  |
//! | a deadline                | `ASYNC_CANCEL` of that `RECV`                 | none                            |
//!
//! The same rules as the shard backend ([`super`]): every `user_data` is a `Token` (op, slot,
//! generation); memory the kernel may write lives in `Region`s and is ours again only at an
//! op's final CQE. A slot's bytes can be read only while no receive is in flight on it
//! ([`AcceptRing::slot_bytes`]), and a slot released with its receive in flight is reused only
//! after that receive's CQE. On drop the ring is cancelled and drained (bounded) before its
//! memory is freed, or the memory is leaked.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, types};

use super::UDP_BGID;
use super::ring::{
    BufRing, Lifecycle, MIN_DATAGRAM_BUF, NAME_LEN, Op, RECVMSG_OUT_LEN, Region, RingSetup,
    SendSlots, Token, cancel_all_and_wait, setup_ring, sockaddr_from_name, transient,
};

/// What one completion of the acceptor's ring says, in order of arrival.
#[derive(Debug)]
pub enum Completion {
    /// A datagram arrived on the handshake port: read it with [`AcceptRing::datagram`], then
    /// give the buffer back with [`AcceptRing::recycle`].
    Datagram(RecvBuf),
    /// An answer queued by [`AcceptRing::send_to`] was refused by the kernel.
    SendFailed,
    /// The listener accepted a connection (non-blocking, close-on-exec).
    Accepted(TcpStream),
    /// The multishot accept is refused before any connection was accepted (Linux before 5.19):
    /// the caller should fall back to another driver.
    AcceptUnsupported(std::io::Error),
    /// The receive into `slot` ended: `Ok(n)` bytes were added at the offset it was given
    /// (`Ok(0)`: end of stream), or it failed (cancelled, reset, ...).
    Received {
        /// The slot.
        slot: usize,
        /// Bytes received, or why not.
        result: std::io::Result<usize>,
    },
}

/// A provided buffer holding one received datagram; give it back with [`AcceptRing::recycle`].
#[derive(Debug)]
#[must_use = "a buffer not recycled is lost to the ring"]
pub struct RecvBuf {
    bid: u16,
    len: usize,
}

/// A received datagram, as [`AcceptRing::datagram`] reads it.
#[derive(Debug)]
pub enum Inbound<'a> {
    /// Its source and payload.
    Datagram(SocketAddr, &'a [u8]),
    /// Larger than the buffer, or without a usable source address.
    Truncated,
    /// The kernel's `RECVMSG` header does not parse.
    Invalid,
}

/// The acceptor's ring (see the module docs).
pub struct AcceptRing {
    // Declared first so that it is dropped before the memory it may refer to.
    ring: IoUring,
    /// Created `R_DISABLED` and not entered yet: the kernel has seen no SQE.
    disabled: bool,
    /// Operations pushed whose final CQE has not been reaped yet (cancels included).
    inflight: usize,
    /// Reaped completions not yet handed out by [`AcceptRing::poll_completion`]; `cqes[next..]` are left.
    cqes: Vec<cqueue::Entry>,
    next: usize,
    /// The `msghdr` the multishot `RECVMSG` is armed with (only its name length is used).
    hdr: Region,
    bufs: BufRing,
    slots: SendSlots,
    /// `slot_len` bytes per pending slot.
    slot_bufs: Region,
    slot_len: usize,
    /// Per slot: its receive (`Orphaned`: the slot was released with it in flight).
    slot_recv: Vec<Lifecycle>,
    /// Per slot: bumped when the slot is released, so a late CQE is recognised.
    gens: Vec<u32>,
    free: Vec<u32>,
    udp_recv: Lifecycle,
    accept: Lifecycle,
    /// Accepts have completed (so a failing multishot accept is not the kernel refusing it).
    accepted_any: bool,
}

impl AcceptRing {
    /// Sets up a ring with `slots` pending-connection buffers of `slot_len` bytes each. Fails
    /// when io_uring or a feature it needs is missing.
    pub fn new(slots: usize, slot_len: usize) -> std::io::Result<Self> {
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
        let n = slots.max(1);
        let slot_len = slot_len.max(1);
        Ok(Self {
            ring,
            disabled: setup == RingSetup::DeferTaskrun,
            inflight: 0,
            cqes: Vec::with_capacity(CQES_PER_WAIT),
            next: 0,
            hdr,
            bufs,
            slots: SendSlots::new(SEND_SLOTS, MIN_DATAGRAM_BUF)?,
            slot_bufs: Region::new(n * slot_len)?,
            slot_len,
            slot_recv: vec![Lifecycle::Idle; n],
            gens: vec![0; n],
            free: (0..n as u32).rev().collect(),
            udp_recv: Lifecycle::Idle,
            accept: Lifecycle::Idle,
            accepted_any: false,
        })
    }

    /// Makes the calling thread the ring's issuer (a ring created `R_DISABLED` under
    /// `SINGLE_ISSUER`); call on the thread that runs it, before anything else.
    pub fn start(&mut self) -> std::io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        Ok(())
    }

    /// Arms the multishot receive on `udp` and the multishot accept on `tcp` if they are not
    /// armed (the kernel ends a multishot on `ENOBUFS`, an error, or at its own choice). The
    /// sockets must outlive the ring's use of them.
    pub fn arm(&mut self, udp: &UdpSocket, tcp: &TcpListener) {
        if self.udp_recv == Lifecycle::Idle {
            let hdr = self.hdr.ptr().cast::<libc::msghdr>();
            let sqe = opcode::RecvMsgMulti::new(types::Fd(udp.as_raw_fd()), hdr, UDP_BGID)
                .build()
                .user_data(Token::new(Op::UdpRecv, 0, 0).0);
            // SAFETY: the msghdr lives in `hdr`, never written after `new`; the buffers are
            // group UDP_BGID's, kept until the ring quiesces.
            if unsafe { self.push(&sqe) } {
                self.udp_recv = Lifecycle::Submitted;
            }
        }
        if self.accept == Lifecycle::Idle {
            let sqe = opcode::AcceptMulti::new(types::Fd(tcp.as_raw_fd()))
                .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
                .build()
                .user_data(Token::new(Op::Accept, 0, 0).0);
            // SAFETY: no pointers.
            if unsafe { self.push(&sqe) } {
                self.accept = Lifecycle::Submitted;
            }
        }
    }

    /// Submits what is queued and waits up to `timeout` for a completion, then reaps what has
    /// completed (at most `CQES_PER_WAIT`) for [`AcceptRing::poll_completion`].
    pub fn wait(&mut self, timeout: Duration) -> std::io::Result<()> {
        let ts = types::Timespec::from(timeout);
        match self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts)) {
            Ok(_) => {}
            Err(e) if transient(&e) => {}
            Err(e) => return Err(e),
        }
        self.cqes.clear();
        self.next = 0;
        self.cqes.extend(self.ring.completion().take(CQES_PER_WAIT));
        for cqe in &self.cqes {
            if !cqueue::more(cqe.flags()) {
                self.inflight = self.inflight.saturating_sub(1);
            }
        }
        Ok(())
    }

    /// The next completion reaped by the last [`AcceptRing::wait`], if any.
    pub fn poll_completion(&mut self) -> Option<Completion> {
        while let Some(cqe) = self.cqes.get(self.next).cloned() {
            self.next += 1;
            if let Some(c) = self.complete(&cqe) {
                return Some(c);
            }
        }
        None
    }

    /// Reads the datagram in `buf` (handed out by [`Completion::Datagram`] and not yet
    /// recycled).
    pub fn datagram(&self, buf: &RecvBuf) -> Inbound<'_> {
        // SAFETY: the CQE that produced `buf` handed buffer `bid` to us, and it is recycled only
        // by `recycle`, which consumes `buf` and takes `&mut self`, so not while this borrow
        // lives.
        let data = unsafe { self.bufs.filled(buf.bid, buf.len) };
        // SAFETY: `hdr` holds a msghdr written once in `new` and only read since.
        let hdr = unsafe { &*self.hdr.ptr().cast::<libc::msghdr>() };
        let Ok(msg) = types::RecvMsgOut::parse(data, hdr) else { return Inbound::Invalid };
        match (msg.is_payload_truncated(), sockaddr_from_name(msg.name_data())) {
            (false, Some(from)) => {
                // The payload is the tail of `data`; re-slice it there so that it borrows the
                // buffer rather than the parsed header.
                let payload = msg.payload_data();
                let start = payload.as_ptr().addr() - data.as_ptr().addr();
                Inbound::Datagram(from, &data[start..start + payload.len()])
            }
            _ => Inbound::Truncated,
        }
    }

    /// Gives a datagram buffer back to the kernel.
    pub fn recycle(&mut self, buf: RecvBuf) {
        self.bufs.recycle(buf.bid);
    }

    /// Queues `data` to `to` from `udp`; false when every send slot is in use (or the data is
    /// larger than a slot).
    pub fn send_to(&mut self, udp: &UdpSocket, to: SocketAddr, data: &[u8]) -> bool {
        if data.len() > MIN_DATAGRAM_BUF {
            return false;
        }
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

    /// A free pending-connection slot, if any (its buffer is empty to the caller: it tracks how
    /// much of it is filled).
    pub fn claim(&mut self) -> Option<usize> {
        self.free.pop().map(|i| i as usize)
    }

    /// Gives `slot` back. A receive still in flight on it only returns the slot once its CQE
    /// arrives (and no [`Completion::Received`] is reported for it).
    pub fn release(&mut self, slot: usize) {
        let Some(state) = self.slot_recv.get_mut(slot) else { return };
        self.gens[slot] = self.gens[slot].wrapping_add(1);
        match *state {
            Lifecycle::Idle => self.free.push(slot as u32),
            Lifecycle::Submitted => *state = Lifecycle::Orphaned,
            Lifecycle::Orphaned => {}
        }
    }

    /// Queues a `RECV` from `stream` into `slot`'s buffer from `offset` to its end; false when
    /// one is in flight on the slot already, the buffer is full, or the queue stays full.
    pub fn recv(&mut self, slot: usize, stream: &TcpStream, offset: usize) -> bool {
        if self.slot_recv.get(slot) != Some(&Lifecycle::Idle) || offset >= self.slot_len {
            return false;
        }
        let ptr = self.slot_bufs.ptr().wrapping_add(slot * self.slot_len + offset);
        let sqe =
            opcode::Recv::new(types::Fd(stream.as_raw_fd()), ptr, (self.slot_len - offset) as u32)
                .build()
                .user_data(Token::new(Op::TcpRecv, slot, self.gens[slot]).0);
        // SAFETY: `[ptr, ptr + slot_len - offset)` is the rest of slot `slot` in `slot_bufs`,
        // which stays mapped until the ring quiesces; no receive is in flight on it, and it is
        // not read (`slot_bytes`) until this op's CQE marks it idle again.
        if unsafe { self.push(&sqe) } {
            self.slot_recv[slot] = Lifecycle::Submitted;
            true
        } else {
            false
        }
    }

    /// Cancels the receive in flight on `slot`; its [`Completion::Received`] follows. False
    /// when the cancel cannot be queued.
    pub fn cancel_recv(&mut self, slot: usize) -> bool {
        let Some(&generation) = self.gens.get(slot) else { return false };
        let sqe = opcode::AsyncCancel::new(Token::new(Op::TcpRecv, slot, generation).0)
            .build()
            .user_data(Token::CANCEL.0);
        // SAFETY: no pointers.
        unsafe { self.push(&sqe) }
    }

    /// The first `len` bytes of `slot`'s buffer, unless a receive is in flight on it.
    pub fn slot_bytes(&self, slot: usize, len: usize) -> Option<&[u8]> {
        if self.slot_recv.get(slot) != Some(&Lifecycle::Idle) {
            return None;
        }
        let len = len.min(self.slot_len);
        // SAFETY: inside `slot_bufs` (`slot` < slot count, `len` <= `slot_len`); no receive is in
        // flight on the slot, and none can be queued while `&self` is borrowed.
        Some(unsafe {
            core::slice::from_raw_parts(self.slot_bufs.ptr().add(slot * self.slot_len), len)
        })
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

    /// Applies one CQE to the ring's own state; returns what the caller must hear of it.
    fn complete(&mut self, cqe: &cqueue::Entry) -> Option<Completion> {
        let (res, flags) = (cqe.result(), cqe.flags());
        let more = cqueue::more(flags);
        let token = Token(cqe.user_data());
        match token.op()? {
            Op::UdpRecv => {
                if !more {
                    // Ended (ENOBUFS, an error, or the kernel's choice): `arm` re-arms it.
                    self.udp_recv = Lifecycle::Idle;
                }
                let bid = cqueue::buffer_select(flags).filter(|&b| self.bufs.owns(b))?;
                match usize::try_from(res) {
                    Ok(len) => Some(Completion::Datagram(RecvBuf { bid, len })),
                    Err(_) => {
                        self.bufs.recycle(bid);
                        None
                    }
                }
            }
            Op::UdpSend => {
                (self.slots.complete(token) && res < 0).then_some(Completion::SendFailed)
            }
            Op::Accept => {
                if !more {
                    self.accept = Lifecycle::Idle;
                }
                if res < 0 {
                    let e = std::io::Error::from_raw_os_error(-res);
                    if !self.accepted_any && matches!(-res, libc::EINVAL | libc::EOPNOTSUPP) {
                        return Some(Completion::AcceptUnsupported(e));
                    }
                    return None; // ECONNABORTED, EMFILE, ...: re-armed by `arm`
                }
                self.accepted_any = true;
                // SAFETY: a successful accept CQE carries a new descriptor that nothing else
                // owns.
                let fd = unsafe { OwnedFd::from_raw_fd(res) };
                Some(Completion::Accepted(TcpStream::from(fd)))
            }
            Op::TcpRecv => {
                let slot = token.index();
                let state = self.slot_recv.get_mut(slot)?;
                if *state == Lifecycle::Orphaned {
                    // Released while in flight: the slot is free only now.
                    *state = Lifecycle::Idle;
                    self.free.push(slot as u32);
                    return None;
                }
                if self.gens[slot] != token.generation() {
                    return None;
                }
                *state = Lifecycle::Idle;
                let result = usize::try_from(res)
                    .map_err(|_| std::io::Error::from_raw_os_error(res.saturating_neg()));
                Some(Completion::Received { slot, result })
            }
            _ => None,
        }
    }
}

impl Drop for AcceptRing {
    fn drop(&mut self) {
        if self.inflight == 0
            || self.disabled
            || cancel_all_and_wait(&mut self.ring, &mut self.inflight)
        {
            return;
        }
        // An op may still use our memory: leak it rather than free it under the kernel
        // (rule 18).
        self.hdr.leak();
        self.bufs.leak();
        self.slots.meta.leak();
        self.slots.bufs.leak();
        self.slot_bufs.leak();
    }
}

/// A trial for [`super::probe`]: an acceptor ring arms its multishot `ACCEPT` on a loopback
/// listener and reports a connection made to it (refused before Linux 5.19).
pub(super) fn trial() -> std::io::Result<()> {
    let udp = UdpSocket::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let tcp = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let mut ring = AcceptRing::new(1, 64)?;
    ring.start()?;
    ring.arm(&udp, &tcp);
    let _client = TcpStream::connect(tcp.local_addr()?)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        ring.wait(Duration::from_millis(10))?;
        while let Some(c) = ring.poll_completion() {
            match c {
                Completion::Accepted(_) => return Ok(()),
                Completion::AcceptUnsupported(e) => return Err(e),
                Completion::Datagram(buf) => ring.recycle(buf),
                _ => {}
            }
        }
    }
    Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "multishot ACCEPT reported nothing"))
}

/// Handshake-port receive buffers (each holds one datagram with its header and address).
const RECV_BUFS: u16 = 256;
/// Answers in flight at most; more in one burst are dropped (counted by the caller: the device
/// retries).
const SEND_SLOTS: usize = 256;
/// Completions reaped per wait at most.
pub const CQES_PER_WAIT: usize = 1024;
