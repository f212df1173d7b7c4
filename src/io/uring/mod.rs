//! The io_uring backend. See [`super`] for the contract; this module only says how it is met.
//! The pieces shared with the acceptor's ring ([`accept`]: tokens, lifecycles, regions,
//! provided-buffer rings, send slots, setup, cancel-and-drain) live in `ring.rs`.
//!
//! # Design
//!
//! One ring per backend (so one per shard), used from the shard thread only. Every operation's
//! `user_data` is a `Token`: `(op, index, generation)` packed into 64 bits, so a completion is
//! routed without a lookup, and a completion for a slot that has since been reused is recognised
//! by its generation and dropped (STYLE rule 12; io-uring `examples/tcp_echo.rs`, monoio
//! `driver/uring/mod.rs`).
//!
//! | traffic     | operation                                     | memory                             |
//! |-------------|-----------------------------------------------|------------------------------------|
//! | UDP receive | one multishot `RECVMSG` on the session socket | provided-buffer ring, group 0      |
//! | UDP send    | one `SENDMSG` per datagram                    | fixed pool of send slots           |
//! | TCP receive | one multishot `RECV` per connection           | provided-buffer ring, group 1      |
//! | TCP send    | at most one `SEND` in flight per connection   | the connection's bounded send ring |
//! | wake        | multishot `POLL_ADD` on the eventfd           | none (the eventfd is read inline)  |
//! | TCP close   | queue drained, `shutdown(SHUT_WR)`, multishot `RECV` (discarding) to end of stream | none |
//! | TCP abort   | `shutdown(SHUT_RDWR)`, then `ASYNC_CANCEL` of its ops | none                       |
//! | TCP connect | non-blocking `connect(2)`, then one `POLL_ADD` (`POLLOUT`) and `SO_ERROR` | none       |
//! | host receive | one single-shot `RECV` of at most `read_bytes` at a time, not re-armed while paused | group 1 |
//!
//! `send_to`, `send_tcp` and `close_tcp` only fill memory and queue SQEs; [`Backend::flush`] and
//! [`Backend::poll`] hand the whole queue to the kernel in one `io_uring_enter`. `poll` waits
//! with an `EXT_ARG` timeout (no timeout SQE), reaps at most `CQES_PER_POLL` completions, and
//! re-arms every multishot that ended (no `IORING_CQE_F_MORE`: `ENOBUFS`, an error, or the
//! kernel's choice).
//!
//! # Buffer ownership (STYLE rule 18)
//!
//! Memory the kernel may touch lives in `Region`s (anonymous mappings reached only through raw
//! pointers, never through a `&mut` held across a submission) and each operation that borrows
//! some has a `Lifecycle`: `Idle` (ours), `Submitted` (the kernel's until the final CQE) or
//! `Orphaned` (its connection is closing; the final CQE only gives the memory back). A
//! connection slot is freed, and [`IoEvent::TcpClosed`] reported, only once neither its receive
//! nor its send is in flight, so its send ring and descriptor outlive every SQE naming them.
//! Provided buffers go back to their ring right after the event that shows them. On drop the
//! backend cancels everything and waits (bounded) for the last CQE; if the ring does not
//! quiesce (or the backend is dropped off the thread that entered the ring, which
//! `SINGLE_ISSUER` then refuses), the memory is leaked rather than freed under the kernel.
//!
//! # Ring setup
//!
//! [`RingSetup::DeferTaskrun`] (`SINGLE_ISSUER | DEFER_TASKRUN`, Linux 6.1) is tried first:
//! completions are then produced only inside this thread's `io_uring_enter`, with no
//! inter-processor interrupts. The ring is created `R_DISABLED` and enabled by the first thread
//! that enters it (the shard thread, which builds it: the backend is not `Send`). When
//! the kernel refuses those flags, [`RingSetup::CoopTaskrun`] (5.19), then [`RingSetup::Plain`].

use std::net::{Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use io_uring::{IoUring, Probe, cqueue, opcode, squeue, types};

pub mod accept;
pub(super) mod ring;

pub use ring::RingSetup;
use ring::{
    BufRing, INDEX_MASK, Lifecycle, MIN_DATAGRAM_BUF, NAME_LEN, Op, RECVMSG_OUT_LEN, Region,
    SendSlots, Token, cancel_all_and_wait, setup_ring, sockaddr_from_name, transient,
};

use super::{Backend, BackendConfig, ConnectOpts, IoEvent, LAST_WORD_BYTES, SendError};
use crate::ids::ConnId;

/// Checks that io_uring can be used here, by the shards and the acceptor alike: the ring sets
/// up, the kernel has the features and opcodes both rely on, a trial backend receives and sends
/// a datagram on loopback (multishot `RECVMSG` with a provided-buffer ring, `SENDMSG`), and a
/// trial acceptor ring accepts a connection with a multishot `ACCEPT` (Linux 5.19).
///
/// It runs on a short-lived thread of its own: the rings it sets up and the operations it submits
/// leave io_uring state on the submitting thread (task work the kernel may still deliver after
/// the ring is gone), and that notification interrupts the caller's blocking calls with EINTR.
/// Probed on the caller's thread, a test's `read` with a timeout failed with EINTR now and then
/// (the flaky `uring_bad_credentials`, `uring_tcp_resume` in tests/gateway.rs).
pub fn probe() -> Result<(), String> {
    std::thread::Builder::new()
        .name("io_uring-probe".into())
        .spawn(probe_here)
        .map_err(|e| format!("cannot start the probe thread: {e}"))?
        .join()
        .map_err(|_| "the probe thread panicked".to_string())?
}

fn probe_here() -> Result<(), String> {
    let (ring, _) = setup_ring(8, 16, None).map_err(|e| format!("io_uring_setup: {e}"))?;
    if !ring.params().is_feature_ext_arg() {
        return Err("IORING_FEAT_EXT_ARG missing (wait timeouts need Linux 5.11)".into());
    }
    let mut probe = Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("probe: {e}"))?;
    for (code, name) in USED_OPS {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    drop(ring);
    trial().map_err(|e| format!("trial: {e}"))?;
    accept::trial().map_err(|e| format!("acceptor trial: {e}"))
}

/// The io_uring backend.
pub struct Uring {
    // Declared first so that it is dropped before the memory it may refer to.
    ring: IoUring,
    setup: RingSetup,
    /// Created `R_DISABLED` and not entered yet: the kernel has seen no SQE.
    disabled: bool,
    udp: UdpSocket,
    wake: OwnedFd,
    cfg: BackendConfig,
    /// Operations pushed whose final CQE has not been dispatched yet (cancels included).
    inflight: usize,
    /// Reaped completions waiting for dispatch; capacity `CQES_PER_POLL`, never grown.
    cqes: Vec<cqueue::Entry>,
    udp_recv: Lifecycle,
    /// The `msghdr` the multishot `RECVMSG` is armed with (only its name length is used).
    udp_hdr: Region,
    udp_bufs: BufRing,
    slots: SendSlots,
    dropped: u64,
    wake_poll: Lifecycle,
    tcp_bufs: BufRing,
    conns: Vec<Option<Conn>>,
    /// Per connection slot: bumped when the slot is freed.
    gens: Vec<u32>,
    /// Per connection slot: its send ring, allocated on first use and kept for reuse.
    outs: Vec<Option<SendRing>>,
    /// Per connection slot: queued in `kick`.
    kicked: Vec<bool>,
    /// Connections that need an SQE (receive re-arm, next send, or the close).
    kick: Vec<u32>,
    kick_spare: Vec<u32>,
    free: Vec<u32>,
    /// Connections freed but not yet reported; their ids return to `free` when reported.
    closed: Vec<ConnId>,
}

impl Uring {
    /// Sets up the ring over the UDP socket and wake descriptor, with the best [`RingSetup`] the
    /// kernel accepts; registers both provided-buffer rings and allocates every buffer.
    pub fn new(udp: UdpSocket, wake: OwnedFd, cfg: BackendConfig) -> std::io::Result<Self> {
        Self::build(udp, wake, cfg, None)
    }

    /// As [`Uring::new`], with exactly the given setup (for tests of the fallbacks).
    pub fn with_setup(
        udp: UdpSocket,
        wake: OwnedFd,
        cfg: BackendConfig,
        setup: RingSetup,
    ) -> std::io::Result<Self> {
        Self::build(udp, wake, cfg, Some(setup))
    }

    /// The setup flags the kernel accepted.
    pub fn setup(&self) -> RingSetup {
        self.setup
    }

    fn build(
        udp: UdpSocket,
        wake: OwnedFd,
        cfg: BackendConfig,
        only: Option<RingSetup>,
    ) -> std::io::Result<Self> {
        let n = cfg.max_connections;
        if n > INDEX_MASK as usize {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "max_connections does not fit the 24-bit token index",
            ));
        }
        // The eventfd is read after each poll completion, possibly when already drained.
        set_nonblocking(wake.as_raw_fd())?;
        let (ring, setup) = setup_ring(SQ_ENTRIES, CQ_ENTRIES, only)?;
        if !ring.params().is_feature_ext_arg() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "IORING_FEAT_EXT_ARG missing (Linux 5.11)",
            ));
        }
        let batch = cfg.batch.max(1);
        // As epoll: room for at least MIN_DATAGRAM_BUF bytes, larger datagrams are dropped.
        let payload = cfg.max_datagram.max(MIN_DATAGRAM_BUF);
        let udp_buf_len = (RECVMSG_OUT_LEN + NAME_LEN + payload).next_multiple_of(64);
        // Four batches per poll, as epoll's recvmmsg loop.
        let udp_buf_count = batch.saturating_mul(4).min(4096).next_power_of_two().max(64) as u16;
        let udp_bufs = BufRing::new(&ring.submitter(), UDP_BGID, udp_buf_count, udp_buf_len)?;
        let tcp_bufs = BufRing::new(&ring.submitter(), TCP_BGID, TCP_BUFS, TCP_BUF_LEN)?;
        let udp_hdr = Region::new(size_of::<libc::msghdr>())?;
        // SAFETY: a fresh, zero-filled, page-aligned mapping large enough for a msghdr (for which
        // all-zero bytes are valid); nothing else refers to it yet.
        unsafe { (*udp_hdr.ptr().cast::<libc::msghdr>()).msg_namelen = NAME_LEN as u32 };
        let slots = SendSlots::new(batch.saturating_mul(4).clamp(16, 4096), payload)?;
        Ok(Self {
            ring,
            setup,
            disabled: setup == RingSetup::DeferTaskrun,
            udp,
            wake,
            cfg,
            inflight: 0,
            cqes: Vec::with_capacity(CQES_PER_POLL),
            udp_recv: Lifecycle::Idle,
            udp_hdr,
            udp_bufs,
            slots,
            dropped: 0,
            wake_poll: Lifecycle::Idle,
            tcp_bufs,
            conns: (0..n).map(|_| None).collect(),
            gens: vec![0; n],
            outs: (0..n).map(|_| None).collect(),
            kicked: vec![false; n],
            kick: Vec::with_capacity(n),
            kick_spare: Vec::with_capacity(n),
            free: (0..n as u32).rev().collect(),
            closed: Vec::with_capacity(n),
        })
    }

    /// Enables an `R_DISABLED` ring from the calling thread, which becomes its single issuer.
    fn enable(&mut self) -> std::io::Result<()> {
        if self.disabled {
            self.ring.submitter().register_enable_rings()?;
            self.disabled = false;
        }
        Ok(())
    }

    /// Submits the queue and waits up to `wait` (`None`: without limit) for one completion.
    fn enter(&mut self, wait: Option<Duration>) -> std::io::Result<()> {
        self.enable()?;
        let submitter = self.ring.submitter();
        let r = match wait {
            None => submitter.submit_with_args(1, &types::SubmitArgs::new()),
            Some(d) => {
                let ts = types::Timespec::from(d);
                submitter.submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
            }
        };
        match r {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Queues `sqe`, first handing a full queue to the kernel (which never waits). Returns
    /// false when the queue stays full; the caller retries later.
    ///
    /// # Safety
    ///
    /// Every pointer in `sqe` must stay valid until the operation's final CQE, and what it points
    /// to must not be written by us (sends) or accessed at all (receives) until then. Callers
    /// keep such memory in a `Region` owned by `self` and mark the op [`Lifecycle::Submitted`]
    /// when this returns true.
    unsafe fn push(&mut self, sqe: &squeue::Entry) -> bool {
        for _ in 0..2 {
            // SAFETY: forwarded from this function's contract.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.inflight += 1;
                return true;
            }
            if self.enable().is_err() || self.ring.submit().is_err() {
                return false;
            }
        }
        false
    }

    /// Moves completions from the CQ into `cqes`, up to its capacity.
    fn reap(&mut self) {
        let room = self.cqes.capacity() - self.cqes.len();
        self.cqes.extend(self.ring.completion().take(room));
    }

    /// Out of send slots: submits, then frees the slots of completed sends at once and keeps
    /// every other completion, in order, for the next `poll`.
    fn reclaim(&mut self) {
        if self.enter(Some(Duration::ZERO)).is_err() {
            return;
        }
        let mut cq = self.ring.completion();
        while self.cqes.len() < self.cqes.capacity() {
            let Some(cqe) = cq.next() else { break };
            let token = Token(cqe.user_data());
            if token.op() == Some(Op::UdpSend) {
                self.inflight = self.inflight.saturating_sub(1);
                if self.slots.complete(token) && cqe.result() < 0 {
                    self.dropped += 1;
                }
            } else {
                self.cqes.push(cqe);
            }
        }
    }

    fn dispatch(&mut self, cqe: &cqueue::Entry, on_event: &mut dyn FnMut(IoEvent<'_>)) -> usize {
        let (res, flags) = (cqe.result(), cqe.flags());
        let more = cqueue::more(flags);
        if !more {
            debug_assert!(self.inflight > 0, "a final CQE for an op we did not count");
            self.inflight = self.inflight.saturating_sub(1);
        }
        let token = Token(cqe.user_data());
        match token.op() {
            Some(Op::UdpRecv) => self.on_udp_recv(res, flags, more, on_event),
            Some(Op::UdpSend) => {
                if self.slots.complete(token) && res < 0 {
                    self.dropped += 1;
                }
                0
            }
            Some(Op::Wake) => self.on_wake(more, on_event),
            Some(Op::TcpRecv) => self.on_tcp_recv(token, res, flags, more, on_event),
            Some(Op::TcpSend) => {
                self.on_tcp_send(token, res);
                0
            }
            Some(Op::TcpConnect) => self.on_tcp_connect(token, res, on_event),
            Some(Op::Cancel | Op::Accept) | None => 0,
        }
    }

    fn on_udp_recv(
        &mut self,
        res: i32,
        flags: u32,
        more: bool,
        on_event: &mut dyn FnMut(IoEvent<'_>),
    ) -> usize {
        if !more {
            // Ended (ENOBUFS, an error, or the kernel's choice): `arm` re-arms it.
            self.udp_recv = Lifecycle::Idle;
        }
        let Some(bid) = cqueue::buffer_select(flags).filter(|&b| self.udp_bufs.owns(b)) else {
            return 0;
        };
        let mut reported = 0;
        if let Ok(len) = usize::try_from(res) {
            // SAFETY: this CQE hands buffer `bid` to us; it is recycled below, after `buf`'s
            // last use.
            let buf = unsafe { self.udp_bufs.filled(bid, len) };
            // SAFETY: `udp_hdr` holds a msghdr written once in `build` and only read since.
            let hdr = unsafe { &*self.udp_hdr.ptr().cast::<libc::msghdr>() };
            if let Ok(msg) = types::RecvMsgOut::parse(buf, hdr) {
                // Truncated datagrams are dropped, as epoll does.
                if !msg.is_payload_truncated() && !msg.is_name_data_truncated() {
                    if let Some(from) = sockaddr_from_name(msg.name_data()) {
                        on_event(IoEvent::Datagram { from, data: msg.payload_data() });
                        reported = 1;
                    }
                }
            }
        }
        self.udp_bufs.recycle(bid);
        reported
    }

    fn on_wake(&mut self, more: bool, on_event: &mut dyn FnMut(IoEvent<'_>)) -> usize {
        if !more {
            self.wake_poll = Lifecycle::Idle;
        }
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64 from our non-blocking eventfd. A poll completion
        // that finds the counter already drained reads nothing and reports nothing.
        let n = unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut v).cast(), 8) };
        if n == 8 {
            on_event(IoEvent::Wake);
            1
        } else {
            0
        }
    }

    fn on_tcp_recv(
        &mut self,
        token: Token,
        res: i32,
        flags: u32,
        more: bool,
        on_event: &mut dyn FnMut(IoEvent<'_>),
    ) -> usize {
        let idx = token.index();
        let bid = cqueue::buffer_select(flags).filter(|&b| self.tcp_bufs.owns(b));
        let phase = match self.conns.get(idx).and_then(Option::as_ref) {
            Some(c) if self.gens[idx] == token.generation() => c.phase,
            _ => {
                // A completion for a slot freed or reused since: only its buffer matters.
                if let Some(bid) = bid {
                    self.tcp_bufs.recycle(bid);
                }
                return 0;
            }
        };
        let mut reported = 0;
        if let Some(bid) = bid {
            // Input after `close_tcp` is read only to be discarded.
            if let (Ok(len @ 1..), true) = (usize::try_from(res), phase == Phase::Open) {
                // SAFETY: this CQE hands buffer `bid` to us; it is recycled right after the
                // callback, the last use of `data`.
                let data = unsafe { self.tcp_bufs.filled(bid, len) };
                on_event(IoEvent::TcpData { conn: ConnId(idx as u32), data });
                reported = 1;
            }
            self.tcp_bufs.recycle(bid);
        }
        if !more {
            let Some(c) = self.conns[idx].as_mut() else { return reported };
            let was = core::mem::replace(&mut c.recv, Lifecycle::Idle);
            if was == Lifecycle::Orphaned {
                self.release(idx);
            } else if res == 0 || (res < 0 && res != -libc::ENOBUFS) {
                // End of stream, or a receive error: the connection is gone.
                self.teardown(idx);
            } else {
                self.kick(idx);
            }
        }
        reported
    }

    /// An outbound connection's writability poll completed: its connect has finished.
    fn on_tcp_connect(
        &mut self,
        token: Token,
        res: i32,
        on_event: &mut dyn FnMut(IoEvent<'_>),
    ) -> usize {
        let idx = token.index();
        if self.gens.get(idx) != Some(&token.generation()) {
            return 0;
        }
        let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else { return 0 };
        let was = core::mem::replace(&mut c.recv, Lifecycle::Idle);
        if was == Lifecycle::Orphaned {
            self.release(idx);
            return 0;
        }
        if c.phase != Phase::Connecting {
            return 0;
        }
        let sock = socket2::SockRef::from(&c.fd);
        let errno = |e: std::io::Error| e.raw_os_error().unwrap_or(libc::EIO);
        let err = if res < 0 {
            Some(-res)
        } else {
            match sock.take_error() {
                Ok(Some(e)) | Err(e) => Some(errno(e)),
                // Writable without an error can still be unconnected (a reset raced the check).
                Ok(None) => sock.peer_addr().err().map(errno),
            }
        };
        let conn = ConnId(idx as u32);
        if let Some(errno) = err {
            on_event(IoEvent::TcpConnectFailed { conn, errno });
            self.teardown(idx);
        } else {
            c.phase = Phase::Open;
            on_event(IoEvent::TcpConnected { conn });
            self.kick(idx);
        }
        1
    }

    fn on_tcp_send(&mut self, token: Token, res: i32) {
        let idx = token.index();
        if self.gens.get(idx) != Some(&token.generation()) {
            return;
        }
        let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else { return };
        let was = core::mem::replace(&mut c.send, Lifecycle::Idle);
        if was == Lifecycle::Orphaned {
            self.release(idx);
            return;
        }
        match usize::try_from(res) {
            Ok(n @ 1..) => {
                if let Some(out) = self.outs[idx].as_mut() {
                    out.consume(n);
                }
                // Partial send, more queued, or a close waiting for the queue: see `arm_conn`.
                self.kick(idx);
            }
            _ => self.teardown(idx),
        }
    }

    /// Queues every SQE that is due: the UDP receive and wake poll when not armed, and each
    /// kicked connection's receive re-arm, next send or close.
    fn arm(&mut self) {
        if self.udp_recv == Lifecycle::Idle {
            let hdr = self.udp_hdr.ptr().cast::<libc::msghdr>();
            let sqe = opcode::RecvMsgMulti::new(types::Fd(self.udp.as_raw_fd()), hdr, UDP_BGID)
                .build()
                .user_data(Token::new(Op::UdpRecv, 0, 0).0);
            // SAFETY: the msghdr lives in `udp_hdr`, never written after `build`; the buffers
            // are group UDP_BGID's, kept until the ring quiesces; the socket is ours.
            if unsafe { self.push(&sqe) } {
                self.udp_recv = Lifecycle::Submitted;
            }
        }
        if self.wake_poll == Lifecycle::Idle {
            let sqe = opcode::PollAdd::new(types::Fd(self.wake.as_raw_fd()), libc::POLLIN as u32)
                .multi(true)
                .build()
                .user_data(Token::new(Op::Wake, 0, 0).0);
            // SAFETY: no pointers; the eventfd is ours.
            if unsafe { self.push(&sqe) } {
                self.wake_poll = Lifecycle::Submitted;
            }
        }
        let mut todo = core::mem::replace(&mut self.kick, core::mem::take(&mut self.kick_spare));
        for &idx in &todo {
            let idx = idx as usize;
            self.kicked[idx] = false;
            if !self.arm_conn(idx) {
                self.kick(idx);
            }
        }
        todo.clear();
        self.kick_spare = todo;
    }

    /// Queues what connection `idx` needs next; false when the SQ is full.
    fn arm_conn(&mut self, idx: usize) -> bool {
        let generation = self.gens[idx];
        let Some(c) = self.conns[idx].as_ref() else { return true };
        let (fd, phase, recv, send) = (c.fd.as_raw_fd(), c.phase, c.recv, c.send);
        let (paused, read_bytes) = (c.paused, c.read_bytes);
        let (ptr, queued) = self.outs[idx].as_ref().map_or((core::ptr::null(), 0), SendRing::front);
        match phase {
            Phase::Draining => return true,
            Phase::Connecting => {
                if recv == Lifecycle::Idle {
                    let sqe = opcode::PollAdd::new(types::Fd(fd), libc::POLLOUT as u32)
                        .build()
                        .user_data(Token::new(Op::TcpConnect, idx, generation).0);
                    // SAFETY: no pointers; `fd` stays open until this op's final CQE.
                    if !unsafe { self.push(&sqe) } {
                        return false;
                    }
                    if let Some(c) = self.conns[idx].as_mut() {
                        c.recv = Lifecycle::Submitted;
                    }
                }
                return true;
            }
            Phase::Closing if send == Lifecycle::Idle && queued == 0 => {
                // Everything queued is handed to the kernel: the FIN follows it. Keep reading
                // (and discarding) until the peer closes its end, so that no unread input makes
                // the final close a reset that would discard what is still undelivered.
                // SAFETY: no pointers; the descriptor is open (owned by the connection).
                let _ = unsafe { libc::shutdown(fd, libc::SHUT_WR) };
                if let Some(c) = self.conns[idx].as_mut() {
                    c.phase = Phase::HalfClosed;
                }
            }
            Phase::Open | Phase::Closing | Phase::HalfClosed => {}
        }
        // A paused connection is not read (its open phase only: a closing one reads to discard).
        if recv == Lifecycle::Idle && !(paused && phase == Phase::Open) {
            let sqe = if read_bytes > 0 {
                // One bounded read at a time, so that a pause takes effect at once.
                opcode::Recv::new(types::Fd(fd), core::ptr::null_mut(), read_bytes)
                    .buf_group(TCP_BGID)
                    .build()
                    .flags(squeue::Flags::BUFFER_SELECT)
            } else {
                opcode::RecvMulti::new(types::Fd(fd), TCP_BGID).build()
            }
            .user_data(Token::new(Op::TcpRecv, idx, generation).0);
            // SAFETY: no pointers: the kernel takes buffers from group TCP_BGID, kept until the
            // ring quiesces; `fd` stays open until this op's final CQE (see `release`).
            if !unsafe { self.push(&sqe) } {
                return false;
            }
            if let Some(c) = self.conns[idx].as_mut() {
                c.recv = Lifecycle::Submitted;
            }
        }
        if send == Lifecycle::Idle && queued > 0 {
            let len = u32::try_from(queued).unwrap_or(u32::MAX);
            let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
                .flags(libc::MSG_NOSIGNAL)
                .build()
                .user_data(Token::new(Op::TcpSend, idx, generation).0);
            // SAFETY: `[ptr, ptr + len)` is the front of this connection's send ring: `append`
            // writes only behind it and `consume` runs only on this op's CQE; the ring and `fd`
            // are kept until then (the slot is freed only when no op is in flight).
            if !unsafe { self.push(&sqe) } {
                return false;
            }
            if let Some(c) = self.conns[idx].as_mut() {
                c.send = Lifecycle::Submitted;
            }
        }
        true
    }

    fn kick(&mut self, idx: usize) {
        if self.conns[idx].is_some() && !self.kicked[idx] {
            self.kicked[idx] = true;
            self.kick.push(idx as u32);
        }
    }

    /// Starts closing connection `idx`: its in-flight ops become orphans; the slot is freed when
    /// the last of them completes.
    fn teardown(&mut self, idx: usize) {
        let generation = self.gens[idx];
        let Some(c) = self.conns[idx].as_mut() else { return };
        if c.phase == Phase::Draining {
            return;
        }
        // While connecting, the op in the receive's place is the writability poll.
        let recv_op = if c.phase == Phase::Connecting { Op::TcpConnect } else { Op::TcpRecv };
        c.phase = Phase::Draining;
        // Completes a pending RECV (end of stream) and SEND (EPIPE) promptly; after a graceful
        // close, the FIN follows the bytes already written. The cancels cover the rest.
        // SAFETY: no pointers; the descriptor is open (owned by `c`).
        let _ = unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
        let mut cancel = [None, None];
        if c.recv == Lifecycle::Submitted {
            c.recv = Lifecycle::Orphaned;
            cancel[0] = Some(Token::new(recv_op, idx, generation));
        }
        if c.send == Lifecycle::Submitted {
            c.send = Lifecycle::Orphaned;
            cancel[1] = Some(Token::new(Op::TcpSend, idx, generation));
        }
        for token in cancel.into_iter().flatten() {
            let sqe = opcode::AsyncCancel::new(token.0).build().user_data(Token::CANCEL.0);
            // SAFETY: no pointers. If the queue is full the shutdown above still ends the op.
            let _ = unsafe { self.push(&sqe) };
        }
        self.release(idx);
    }

    /// Frees slot `idx` once its connection is draining and none of its ops is in flight.
    fn release(&mut self, idx: usize) {
        let quiet = self.conns[idx].as_ref().is_some_and(|c| {
            c.phase == Phase::Draining && c.recv == Lifecycle::Idle && c.send == Lifecycle::Idle
        });
        if !quiet {
            return;
        }
        self.conns[idx] = None; // closes the descriptor
        if let Some(out) = self.outs[idx].as_mut() {
            out.clear();
        }
        self.gens[idx] = self.gens[idx].wrapping_add(1);
        self.closed.push(ConnId(idx as u32));
    }

    /// Reports closed connections; only now may their ids be handed out again.
    fn report_closed(&mut self, on_event: &mut dyn FnMut(IoEvent<'_>)) -> usize {
        let n = self.closed.len();
        for conn in self.closed.drain(..) {
            self.free.push(conn.0);
            on_event(IoEvent::TcpClosed { conn });
        }
        n
    }

    /// Cancels everything and waits, bounded, for every op's final CQE. True when none is left.
    fn quiesce(&mut self) -> bool {
        for cqe in self.cqes.drain(..) {
            if !cqueue::more(cqe.flags()) {
                self.inflight = self.inflight.saturating_sub(1);
            }
        }
        if self.inflight == 0 || self.disabled {
            return true;
        }
        for c in self.conns.iter().flatten() {
            // SAFETY: no pointers; the descriptor is open (owned by `c`).
            let _ = unsafe { libc::shutdown(c.fd.as_raw_fd(), libc::SHUT_RDWR) };
        }
        cancel_all_and_wait(&mut self.ring, &mut self.inflight)
    }
}

impl Uring {
    /// The connection slot the next connection takes (the last of `free`, still in it).
    fn free_slot(&self) -> std::io::Result<usize> {
        let Some(&idx) = self.free.last() else {
            return Err(std::io::Error::other("no free connection slot"));
        };
        Ok(idx as usize)
    }

    /// Takes slot `idx` (from [`Uring::free_slot`]) for `fd`, in `phase`, and starts its
    /// operations. Its send ring is allocated once per slot and reused.
    fn add_conn(
        &mut self,
        idx: usize,
        fd: OwnedFd,
        phase: Phase,
        read_bytes: u32,
    ) -> std::io::Result<ConnId> {
        if self.outs[idx].is_none() {
            self.outs[idx] = Some(SendRing::new(self.cfg.send_queue_bytes)?);
        }
        self.free.pop();
        self.conns[idx] = Some(Conn {
            fd,
            phase,
            recv: Lifecycle::Idle,
            send: Lifecycle::Idle,
            paused: false,
            read_bytes,
        });
        self.kick(idx);
        Ok(ConnId(idx as u32))
    }
}

impl Backend for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(IoEvent<'_>),
    ) -> std::io::Result<usize> {
        let mut reported = self.report_closed(on_event);
        self.arm();
        let ready = reported > 0 || !self.cqes.is_empty() || !self.ring.completion().is_empty();
        self.enter(if ready { Some(Duration::ZERO) } else { timeout })?;
        self.reap();
        let mut cqes = core::mem::take(&mut self.cqes);
        for cqe in &cqes {
            reported += self.dispatch(cqe, on_event);
        }
        cqes.clear();
        self.cqes = cqes;
        // Re-arms and continued sends go out with the next flush or poll.
        self.arm();
        reported += self.report_closed(on_event);
        Ok(reported)
    }

    fn send_to(&mut self, to: SocketAddr, data: &[u8]) -> Result<(), SendError> {
        if data.len() > self.slots.buf_len {
            return Err(SendError::Full);
        }
        let idx = match self.slots.free.pop() {
            Some(i) => i,
            None => {
                self.reclaim();
                let Some(i) = self.slots.free.pop() else {
                    self.dropped += 1;
                    return Err(SendError::Full);
                };
                i
            }
        } as usize;
        let hdr = self.slots.fill(idx, to, data);
        let sqe = opcode::SendMsg::new(types::Fd(self.udp.as_raw_fd()), hdr)
            .build()
            .user_data(Token::new(Op::UdpSend, idx, self.slots.gens[idx]).0);
        // SAFETY: the msghdr, its iovec, the address and the bytes are in slot `idx` of the
        // send-slot regions, which nothing touches until this op's CQE frees the slot.
        if unsafe { self.push(&sqe) } {
            self.slots.state[idx] = Lifecycle::Submitted;
            Ok(())
        } else {
            self.slots.free.push(idx as u32);
            self.dropped += 1;
            Err(SendError::Full)
        }
    }

    fn register_tcp(&mut self, stream: TcpStream) -> std::io::Result<ConnId> {
        let idx = self.free_slot()?;
        // io_uring's socket ops wait by polling whatever the O_NONBLOCK flag says.
        let _ = stream.set_nodelay(true);
        self.add_conn(idx, OwnedFd::from(stream), Phase::Open, 0)
    }

    fn connect_tcp(&mut self, addr: SocketAddr, opts: ConnectOpts) -> std::io::Result<ConnId> {
        let idx = self.free_slot()?;
        let (sock, _) = super::start_connect(addr, opts)?;
        let read_bytes = opts.read_bytes.min(TCP_BUF_LEN) as u32;
        self.add_conn(idx, OwnedFd::from(sock), Phase::Connecting, read_bytes)
    }

    fn set_tcp_reading(&mut self, conn: ConnId, on: bool) {
        let idx = conn.0 as usize;
        if let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) {
            if c.paused == on {
                c.paused = !on;
                if on {
                    self.kick(idx);
                }
            }
        }
    }

    fn send_tcp(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        let idx = conn.0 as usize;
        match self.conns.get(idx).and_then(Option::as_ref) {
            // Queued while connecting, sent once up.
            Some(c) if matches!(c.phase, Phase::Open | Phase::Connecting) => {}
            _ => return Err(SendError::Closed),
        }
        let Some(out) = self.outs[idx].as_mut() else { return Err(SendError::Closed) };
        if data.len().saturating_add(LAST_WORD_BYTES) > out.free() {
            return Err(SendError::Full);
        }
        if !data.is_empty() {
            out.append(data);
            self.kick(idx);
        }
        Ok(())
    }

    fn tcp_room(&self, conn: ConnId) -> usize {
        let idx = conn.0 as usize;
        match (self.conns.get(idx).and_then(Option::as_ref), self.outs.get(idx)) {
            (Some(c), Some(Some(out))) if matches!(c.phase, Phase::Open | Phase::Connecting) => {
                out.free().saturating_sub(LAST_WORD_BYTES)
            }
            _ => 0,
        }
    }

    fn send_tcp_last(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        let idx = conn.0 as usize;
        match self.conns.get(idx).and_then(Option::as_ref) {
            Some(c) if c.phase == Phase::Open => {}
            _ => return Err(SendError::Closed),
        }
        let Some(out) = self.outs[idx].as_mut() else { return Err(SendError::Closed) };
        if data.len() > out.free() {
            return Err(SendError::Full);
        }
        out.append(data);
        self.close_tcp(conn);
        Ok(())
    }

    fn close_tcp(&mut self, conn: ConnId) {
        let idx = conn.0 as usize;
        if let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) {
            if c.phase == Phase::Connecting {
                // Nothing was said yet: no FIN to wait for.
                self.teardown(idx);
            } else if c.phase == Phase::Open {
                c.phase = Phase::Closing;
                self.kick(idx);
            }
        }
    }

    fn abort_tcp(&mut self, conn: ConnId) {
        let idx = conn.0 as usize;
        if self.conns.get(idx).is_some_and(Option::is_some) {
            self.teardown(idx);
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.arm();
        if self.ring.submission().is_empty() {
            return Ok(());
        }
        self.enable()?;
        match self.ring.submit() {
            Ok(_) => Ok(()),
            Err(e) if transient(&e) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn dropped_sends(&self) -> u64 {
        self.dropped
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        if self.quiesce() {
            return;
        }
        // An op may still use our memory (or the ring was entered from another thread): leak it
        // rather than free it under the kernel (rule 18).
        self.udp_hdr.leak();
        self.udp_bufs.leak();
        self.tcp_bufs.leak();
        self.slots.meta.leak();
        self.slots.bufs.leak();
        for out in self.outs.iter_mut().flatten() {
            out.mem.leak();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// An outbound connection waiting for its connect to finish (`POLL_ADD` in `recv`'s place).
    Connecting,
    Open,
    /// `close_tcp` was called: send what is queued, then half-close.
    Closing,
    /// Our FIN is queued; reading and discarding until the peer's end of stream.
    HalfClosed,
    /// Shut down; waiting for the final CQEs of its ops before the slot is freed.
    Draining,
}

struct Conn {
    fd: OwnedFd,
    phase: Phase,
    recv: Lifecycle,
    send: Lifecycle,
    /// Reading stopped ([`Backend::set_tcp_reading`]).
    paused: bool,
    /// Bytes per single-shot read (0: multishot).
    read_bytes: u32,
}

/// A connection's bounded send queue: a byte ring whose front may be in flight.
struct SendRing {
    mem: Region,
    cap: usize,
    head: usize,
    len: usize,
}

impl SendRing {
    fn new(cap: usize) -> std::io::Result<Self> {
        let cap = cap.max(1);
        Ok(Self { mem: Region::new(cap)?, cap, head: 0, len: 0 })
    }

    fn free(&self) -> usize {
        self.cap - self.len
    }

    /// Appends `data` (at most `free()` bytes) behind the queued bytes, never over them.
    fn append(&mut self, data: &[u8]) {
        debug_assert!(data.len() <= self.free());
        let tail = (self.head + self.len) % self.cap;
        let first = data.len().min(self.cap - tail);
        // SAFETY: `[tail, tail + first)` and `[0, data.len() - first)` are inside `mem` and in
        // its free part (the data fits in `free()` bytes), which no SQE refers to.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), self.mem.ptr().add(tail), first);
            core::ptr::copy_nonoverlapping(
                data.as_ptr().add(first),
                self.mem.ptr(),
                data.len() - first,
            );
        }
        self.len += data.len();
    }

    /// The contiguous queued bytes at the front.
    fn front(&self) -> (*const u8, usize) {
        (self.mem.ptr().wrapping_add(self.head), self.len.min(self.cap - self.head))
    }

    fn consume(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        let n = n.min(self.len);
        self.head = (self.head + n) % self.cap;
        self.len -= n;
        if self.len == 0 {
            self.head = 0;
        }
    }

    fn clear(&mut self) {
        self.head = 0;
        self.len = 0;
    }
}

/// Sends and receives one datagram through a throwaway backend on loopback.
fn trial() -> std::io::Result<()> {
    const MSG: &[u8] = b"fleetgate io_uring probe";
    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let addr = udp.local_addr()?;
    let cfg =
        BackendConfig { max_datagram: 64, batch: 4, max_connections: 1, send_queue_bytes: 64 };
    let mut uring = Uring::new(udp, super::eventfd()?, cfg)?;
    let peer = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))?;
    let peer_addr = peer.local_addr()?;
    peer.set_read_timeout(Some(TRIAL_TIMEOUT))?;
    uring.poll(Some(Duration::ZERO), &mut |_| {})?;
    peer.send_to(MSG, addr)?;
    uring.send_to(peer_addr, MSG).map_err(|e| std::io::Error::other(format!("send_to: {e:?}")))?;
    uring.flush()?;
    let deadline = Instant::now() + TRIAL_TIMEOUT;
    let mut received = false;
    while !received && Instant::now() < deadline {
        uring.poll(Some(Duration::from_millis(10)), &mut |ev| {
            if let IoEvent::Datagram { from, data } = ev {
                received |= from == peer_addr && data == MSG;
            }
        })?;
    }
    if !received {
        return Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "multishot RECVMSG delivered nothing",
        ));
    }
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf)?;
    if &buf[..n] != MSG || from != addr {
        return Err(std::io::Error::other("SENDMSG delivered the wrong datagram"));
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on an open descriptor; no pointers.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The opcodes the backend issues (`probe` checks them).
/// Every opcode the shard backend and the acceptor's ring ([`accept`]) submit.
const USED_OPS: [(u8, &str); 7] = [
    (opcode::RecvMsgMulti::CODE, "RECVMSG"),
    (opcode::SendMsg::CODE, "SENDMSG"),
    (opcode::RecvMulti::CODE, "RECV"),
    (opcode::Send::CODE, "SEND"),
    (opcode::PollAdd::CODE, "POLL_ADD"),
    (opcode::AsyncCancel::CODE, "ASYNC_CANCEL"),
    (opcode::AcceptMulti::CODE, "ACCEPT"),
];
/// Submission queue entries; a full queue is submitted early, never waited on.
const SQ_ENTRIES: u32 = 256;
/// Completion queue entries (the kernel buffers overflow with IORING_FEAT_NODROP).
const CQ_ENTRIES: u32 = 4096;
/// Completions dispatched per `poll` at most (rule 15); the rest wait for the next pass.
const CQES_PER_POLL: usize = 1024;
/// Buffer group ids of the two provided-buffer rings.
const UDP_BGID: u16 = 0;
const TCP_BGID: u16 = 1;
/// TCP receive buffers: shared by all connections and recycled right after each event.
const TCP_BUFS: u16 = 256;
const TCP_BUF_LEN: usize = 16 * 1024;
const TRIAL_TIMEOUT: Duration = Duration::from_secs(1);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn send_ring_wraps_without_touching_the_front() {
        let mut r = SendRing::new(8).unwrap();
        r.append(b"abcdef");
        r.consume(4);
        r.append(b"ghijkl");
        assert_eq!(r.free(), 0);
        let (p, n) = r.front();
        // SAFETY: `front` points at `n` queued bytes inside the ring.
        assert_eq!(unsafe { core::slice::from_raw_parts(p, n) }, b"efgh");
        r.consume(n);
        let (p, n) = r.front();
        // SAFETY: as above.
        assert_eq!(unsafe { core::slice::from_raw_parts(p, n) }, b"ijkl");
        r.consume(n);
        assert_eq!((r.free(), r.front().1), (8, 0));
    }
}
