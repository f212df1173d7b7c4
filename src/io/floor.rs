//! Bare echo loops: the floor the gateway is measured against (`benches/echo_floor.rs`,
//! `scripts/bench-compare.sh`). The gateway does not use this module.
//!
//! No session logic at all: a datagram goes back to its source, a TCP chunk back down its
//! connection. What is left is the cost of the kernel's loopback path plus the cheapest way we
//! know to drive it, so a gateway figure divided by a figure from here is the gateway's own
//! overhead.
//!
//! - [`Mmsg`]: `recvmmsg`/`sendmmsg` over preallocated buffers. [`Mmsg::echo`] sends a received
//!   batch back in place: the same headers, buffers and source addresses, nothing copied.
//! - [`UringUdpEcho`]: one multishot `RECVMSG` over a provided-buffer ring; each datagram goes
//!   back with a `SENDMSG` that points into the buffer it arrived in (again nothing copied), and
//!   the buffer returns to the ring when that send completes. All sends of a pass reach the
//!   kernel in the next `io_uring_enter`, which also waits for input.
//! - [`Epoll`]: a small level-triggered epoll set, for the TCP echo and the bench's clients.
//!
//! This lives in `src/io/` only because it needs raw syscalls, which the project keeps here.

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};

use super::from_sockaddr;
use super::uring::ring::{BufRing, RECVMSG_OUT_LEN, Region, cancel_all_and_wait, transient};

const STORAGE_LEN: u32 = size_of::<libc::sockaddr_storage>() as u32;

/// A zero-filled heap array reached only through raw pointers, so that the kernel may write
/// into it between our reads without any Rust reference covering the bytes.
struct RawArray<T> {
    ptr: NonNull<T>,
    len: usize,
}

impl<T: Copy> RawArray<T> {
    /// `len` zeroed elements; only for C structs and integers, for which all-zero is valid.
    fn zeroed(len: usize) -> Self {
        // SAFETY: callers use this for plain C structs and integers (sockaddr_storage, iovec,
        // mmsghdr, u8), for which all-zero bytes are a valid value.
        let v: Vec<T> = (0..len).map(|_| unsafe { core::mem::zeroed() }).collect();
        let raw = Box::into_raw(v.into_boxed_slice());
        // SAFETY: `Box::into_raw` never returns null.
        let ptr = unsafe { NonNull::new_unchecked(raw.cast::<T>()) };
        Self { ptr, len }
    }

    fn at(&self, i: usize) -> *mut T {
        assert!(i < self.len, "index {i} out of {}", self.len);
        // SAFETY: in bounds, checked above.
        unsafe { self.ptr.as_ptr().add(i) }
    }
}

impl<T> Drop for RawArray<T> {
    fn drop(&mut self) {
        let slice = core::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len);
        // SAFETY: made by `Box::into_raw` of a boxed slice of exactly `len` elements, and
        // dropped once.
        drop(unsafe { Box::from_raw(slice) });
    }
}

/// A batch of datagram buffers for `recvmmsg`/`sendmmsg`.
///
/// Use: [`Mmsg::recv`] fills entries `0..n`; read them with [`Mmsg::datagram`] and
/// [`Mmsg::source`], then either [`Mmsg::echo`] them back or fill entries with [`Mmsg::fill`] and
/// [`Mmsg::send`] them on a connected socket.
pub struct Mmsg {
    batch: usize,
    cap: usize,
    bufs: RawArray<u8>,
    names: RawArray<libc::sockaddr_storage>,
    iovs: RawArray<libc::iovec>,
    hdrs: RawArray<libc::mmsghdr>,
}

// SAFETY: the raw pointers inside the headers point into arrays owned by this value (heap memory
// that does not move with it), used by one thread at a time.
unsafe impl Send for Mmsg {}

impl Mmsg {
    /// `batch` entries (1..=1024) of `cap` bytes each.
    pub fn new(batch: usize, cap: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        let cap = cap.max(1);
        let this = Self {
            batch,
            cap,
            bufs: RawArray::zeroed(batch * cap),
            names: RawArray::zeroed(batch),
            iovs: RawArray::zeroed(batch),
            hdrs: RawArray::zeroed(batch),
        };
        for i in 0..batch {
            // SAFETY: every pointer is in bounds of an array owned by `this` (`at` checks);
            // nothing else refers to these entries.
            unsafe {
                let iov = this.iovs.at(i);
                (*iov).iov_base = this.bufs.at(i * cap).cast();
                (*iov).iov_len = cap;
                let h = &raw mut (*this.hdrs.at(i)).msg_hdr;
                (*h).msg_name = this.names.at(i).cast();
                (*h).msg_namelen = STORAGE_LEN;
                (*h).msg_iov = iov;
                (*h).msg_iovlen = 1;
            }
        }
        this
    }

    /// Entries in the batch.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Receives up to a batch. With `wait` it blocks for the first datagram (bounded by the
    /// socket's read timeout, if any) and takes what else is queued without waiting; without it
    /// it never waits. Returns the number received (0 on a timeout or an interrupted wait).
    pub fn recv(&mut self, sock: &UdpSocket, wait: bool) -> std::io::Result<usize> {
        for i in 0..self.batch {
            // SAFETY: in-bounds entries of arrays we own; no syscall is using them now.
            unsafe {
                (*self.iovs.at(i)).iov_len = self.cap;
                (*self.hdrs.at(i)).msg_hdr.msg_namelen = STORAGE_LEN;
            }
        }
        let flags = if wait { libc::MSG_WAITFORONE } else { libc::MSG_DONTWAIT };
        // SAFETY: `batch` headers, each naming one iovec of `cap` bytes and one address buffer
        // of STORAGE_LEN bytes, all inside arrays owned by `self` and alive for the call.
        unsafe { super::recvmmsg(sock.as_raw_fd(), self.hdrs.at(0), self.batch, flags) }
    }

    /// Bytes of received entry `i` (truncated to the entry's capacity).
    pub fn datagram(&self, i: usize) -> &[u8] {
        // SAFETY: `msg_len` was written by the last recvmmsg; the slice stays within entry `i`
        // (len clamped to `cap`) and no syscall writes the buffers while `&self` is borrowed.
        unsafe {
            let len = ((*self.hdrs.at(i)).msg_len as usize).min(self.cap);
            core::slice::from_raw_parts(self.bufs.at(i * self.cap), len)
        }
    }

    /// Source of received entry `i`.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        // SAFETY: an in-bounds, initialised (zeroed or kernel-written) sockaddr_storage.
        from_sockaddr(unsafe { &*self.names.at(i) })
    }

    /// Sends received entries `0..n` back to their sources, unchanged (one `sendmmsg`, retried
    /// for the rest when the kernel takes part of the batch). Returns the number sent; a
    /// datagram the kernel refuses is dropped, as a full socket buffer would drop it anyway.
    pub fn echo(&mut self, sock: &UdpSocket, n: usize) -> std::io::Result<usize> {
        let n = n.min(self.batch);
        for i in 0..n {
            // SAFETY: in-bounds entries; the received length and source are already in place.
            unsafe { (*self.iovs.at(i)).iov_len = (*self.hdrs.at(i)).msg_len as usize };
        }
        self.send_range(sock, n)
    }

    /// Copies `data` (truncated to the entry's capacity) into entry `i` for [`Mmsg::send`].
    pub fn fill(&mut self, i: usize, data: &[u8]) {
        let len = data.len().min(self.cap);
        // SAFETY: `len` bytes fit in entry `i`; the source is a live slice that cannot overlap
        // our private buffer; no syscall is using the entry now.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), self.bufs.at(i * self.cap), len);
            (*self.iovs.at(i)).iov_len = len;
            let h = &raw mut (*self.hdrs.at(i)).msg_hdr;
            (*h).msg_name = core::ptr::null_mut();
            (*h).msg_namelen = 0;
        }
    }

    /// Sends filled entries `0..n` on a connected socket. Entries keep no destination, so call
    /// [`Mmsg::recv`] (which restores the address fields) before using them with [`Mmsg::echo`].
    pub fn send(&mut self, sock: &UdpSocket, n: usize) -> std::io::Result<usize> {
        let n = n.min(self.batch);
        let sent = self.send_range(sock, n);
        for i in 0..n {
            // SAFETY: in-bounds entry; restores the address buffer for the next recvmmsg.
            unsafe { (*self.hdrs.at(i)).msg_hdr.msg_name = self.names.at(i).cast() };
        }
        sent
    }

    fn send_range(&mut self, sock: &UdpSocket, n: usize) -> std::io::Result<usize> {
        let mut done = 0;
        while done < n {
            // SAFETY: headers `done..n` are in bounds and each names memory owned by `self`
            // (payload iovec, and an address of `msg_namelen` bytes or none).
            let r = unsafe {
                libc::sendmmsg(sock.as_raw_fd(), self.hdrs.at(done), (n - done) as u32, 0)
            };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    // Refused (buffer full, unreachable port): this one is lost, go on.
                    Some(libc::EAGAIN | libc::ENOBUFS | libc::ECONNREFUSED) => {
                        done += 1;
                        continue;
                    }
                    _ => return Err(e),
                }
            }
            done += (r as usize).max(1);
        }
        Ok(n)
    }
}

/// A level-triggered epoll set.
pub struct Epoll {
    fd: OwnedFd,
    events: Vec<libc::epoll_event>,
    ready: usize,
}

/// Readable (`EPOLLIN`), for [`Epoll::add`] and the event masks.
pub const READABLE: u32 = libc::EPOLLIN as u32;
/// Writable (`EPOLLOUT`).
pub const WRITABLE: u32 = libc::EPOLLOUT as u32;
/// Hang-up or error (`EPOLLHUP | EPOLLERR | EPOLLRDHUP`).
pub const CLOSED: u32 = (libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLRDHUP) as u32;

impl Epoll {
    /// A set reporting up to `max_events` per wait.
    pub fn new(max_events: usize) -> std::io::Result<Self> {
        // SAFETY: no pointer arguments; the result is checked.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let events = vec![libc::epoll_event { events: 0, u64: 0 }; max_events.max(1)];
        Ok(Self { fd, events, ready: 0 })
    }

    fn ctl(&self, op: i32, fd: RawFd, interest: u32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events: interest, u64: token };
        // SAFETY: `ev` is a live epoll_event for the call.
        if unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Watches `fd` for `interest` ([`READABLE`], [`WRITABLE`]), reporting `token`.
    pub fn add(&self, fd: &impl AsRawFd, token: u64, interest: u32) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), interest | libc::EPOLLRDHUP as u32, token)
    }

    /// Changes what `fd` is watched for.
    pub fn modify(&self, fd: &impl AsRawFd, token: u64, interest: u32) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), interest | libc::EPOLLRDHUP as u32, token)
    }

    /// Stops watching `fd` (closing it does the same).
    pub fn remove(&self, fd: &impl AsRawFd) -> std::io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd.as_raw_fd(), 0, 0)
    }

    /// Waits up to `timeout` (`ZERO`: not at all) with microsecond precision (`epoll_pwait2`);
    /// returns the number of ready descriptors, read with [`Epoll::event`].
    pub fn wait(&mut self, timeout: Duration) -> std::io::Result<usize> {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(3600) as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: `events` is a live writable array of the length passed; `ts` is a live
        // timespec; no signal mask.
        let n = unsafe {
            libc::epoll_pwait2(
                self.fd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                &ts,
                core::ptr::null(),
            )
        };
        if n < 0 {
            self.ready = 0;
            let e = std::io::Error::last_os_error();
            return if e.raw_os_error() == Some(libc::EINTR) { Ok(0) } else { Err(e) };
        }
        self.ready = n as usize;
        Ok(self.ready)
    }

    /// Ready descriptor `i` of the last wait: (token, event mask).
    pub fn event(&self, i: usize) -> (u64, u32) {
        let e = self.events[i.min(self.ready.saturating_sub(1))];
        ({ e.u64 }, { e.events })
    }
}

// ---------------------------------------------------------------------------------------------
// io_uring

/// user_data of the multishot receive; sends carry `SEND | bid`.
const RECV: u64 = 1 << 32;
const SEND: u64 = 2 << 32;
const BGID: u16 = 0;
/// What one `SENDMSG` reads besides the buffer it echoes.
#[repr(C)]
struct SendMeta {
    hdr: libc::msghdr,
    iov: libc::iovec,
}

/// Totals of an echo loop.
#[derive(Clone, Copy, Debug, Default)]
pub struct EchoCounts {
    /// Datagrams received.
    pub received: u64,
    /// Datagrams sent back (send completed).
    pub echoed: u64,
    /// Payload bytes received.
    pub bytes: u64,
    /// Datagrams dropped (truncated, refused by the kernel, or no room to queue the send).
    pub dropped: u64,
    /// `io_uring_enter` calls (io_uring) or receive calls (mmsg).
    pub enters: u64,
}

/// A UDP echo on io_uring; see the module docs. Build and run it on one thread (its ring is
/// `SINGLE_ISSUER` where the kernel allows).
pub struct UringUdpEcho {
    // First, so that it is dropped (closed) before the memory it refers to.
    ring: IoUring,
    sock: UdpSocket,
    /// The datagram buffers (the shard backend's provided-buffer ring).
    bufs: BufRing,
    hdr: Region,
    metas: Region,
    armed: bool,
    /// Operations pushed whose final CQE has not been seen (the receive while armed, sends).
    inflight: usize,
    setup: &'static str,
    /// Completions taken from the CQ in one go; capacity fixed at the CQ size.
    cqes: Vec<(u64, i32, u32)>,
    /// Totals so far.
    pub counts: EchoCounts,
}

impl UringUdpEcho {
    /// An echo on `sock` with `count` (a power of two, 2..=4096) provided buffers for datagrams
    /// of up to `max_datagram` bytes.
    pub fn new(sock: UdpSocket, count: u16, max_datagram: usize) -> std::io::Result<Self> {
        let count = count.clamp(2, 4096).next_power_of_two();
        let (ring, setup) = setup_ring(u32::from(count), 4 * u32::from(count))?;
        let buf_len =
            (RECVMSG_OUT_LEN + STORAGE_LEN as usize + max_datagram.max(64)).next_multiple_of(64);
        let hdr = Region::new(size_of::<libc::msghdr>())?;
        let metas = Region::new(usize::from(count) * size_of::<SendMeta>())?;
        // SAFETY: a zero-filled page-aligned mapping large enough for a msghdr (all-zero is a
        // valid msghdr); the multishot receive only reads its name and control lengths.
        unsafe { (*hdr.ptr().cast::<libc::msghdr>()).msg_namelen = STORAGE_LEN };
        // Registered (and filled) now; the ring is closed before the buffers are unmapped, and
        // they are leaked if it does not quiesce.
        let bufs = BufRing::new(&ring.submitter(), BGID, count, buf_len)?;
        Ok(Self {
            ring,
            sock,
            bufs,
            hdr,
            metas,
            armed: false,
            inflight: 0,
            setup,
            cqes: Vec::with_capacity(4 * usize::from(count)),
            counts: EchoCounts::default(),
        })
    }

    /// The ring's setup flags, for the report.
    pub fn setup(&self) -> &'static str {
        self.setup
    }

    /// One pass: submits what is queued (the receive if it needs arming, the sends of the last
    /// pass), waits up to `wait` (`ZERO`: busy-poll) for a completion, and handles every
    /// completion there is. Returns the number of completions handled.
    pub fn run_once(&mut self, wait: Duration) -> std::io::Result<usize> {
        if !self.armed {
            let sqe = opcode::RecvMsgMulti::new(
                types::Fd(self.sock.as_raw_fd()),
                self.hdr.ptr().cast::<libc::msghdr>(),
                BGID,
            )
            .build()
            .user_data(RECV);
            // SAFETY: the msghdr lives in `hdr`, never written after `new`; buffers are group
            // BGID's, kept mapped while the ring may use them; the socket is ours.
            if unsafe { self.ring.submission().push(&sqe) }.is_ok() {
                self.armed = true;
                self.inflight += 1;
            }
        }
        self.counts.enters += 1;
        let r = if wait.is_zero() {
            self.ring.submitter().submit()
        } else {
            let ts = types::Timespec::from(wait);
            self.ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts))
        };
        if let Err(e) = r {
            if !transient(&e) {
                return Err(e);
            }
        }
        // Take the whole CQ at once (one head update), then handle it.
        let mut cqes = core::mem::take(&mut self.cqes);
        cqes.clear();
        cqes.extend(
            self.ring
                .completion()
                .take(cqes.capacity())
                .map(|c| (c.user_data(), c.result(), c.flags())),
        );
        let handled = cqes.len();
        for &(ud, res, flags) in &cqes {
            if ud == RECV {
                if !cqueue::more(flags) {
                    self.armed = false;
                    self.inflight -= 1;
                }
                if let Some(bid) = cqueue::buffer_select(flags).filter(|&b| self.bufs.owns(b)) {
                    self.on_datagram(bid, res);
                }
            } else if ud & !0xffff_ffff == SEND {
                self.inflight -= 1;
                if res < 0 {
                    self.counts.dropped += 1;
                } else {
                    self.counts.echoed += 1;
                }
                self.bufs.recycle((ud & 0xffff) as u16);
            }
        }
        self.cqes = cqes;
        Ok(handled)
    }

    /// A datagram in buffer `bid`: queue a `SENDMSG` of it back to its source, from the buffer.
    fn on_datagram(&mut self, bid: u16, res: i32) {
        let Ok(len) = usize::try_from(res) else {
            self.bufs.recycle(bid);
            return;
        };
        self.counts.received += 1;
        // SAFETY: the CQE handed buffer `bid` to us and it is not recycled until its send
        // completes.
        let buf = unsafe { self.bufs.filled(bid, len) };
        // SAFETY: the msghdr in `hdr` was written once in `new`.
        let hdr = unsafe { &*self.hdr.ptr().cast::<libc::msghdr>() };
        let Ok(msg) = types::RecvMsgOut::parse(buf, hdr) else {
            self.counts.dropped += 1;
            self.bufs.recycle(bid);
            return;
        };
        if msg.is_payload_truncated() || msg.is_name_data_truncated() {
            self.counts.dropped += 1;
            self.bufs.recycle(bid);
            return;
        }
        let (name, payload) = (msg.name_data(), msg.payload_data());
        self.counts.bytes += payload.len() as u64;
        let meta = self.metas.ptr().cast::<SendMeta>().wrapping_add(usize::from(bid));
        // SAFETY: `meta` is entry `bid` of `metas` (in bounds, aligned: the mapping is page
        // aligned and SendMeta's size is a multiple of its alignment); its previous send (for
        // this same buffer) has completed, since the buffer was recycled before the kernel
        // could hand it to us again.
        unsafe {
            meta.write(core::mem::zeroed());
            (*meta).iov.iov_base = payload.as_ptr().cast_mut().cast();
            (*meta).iov.iov_len = payload.len();
            (*meta).hdr.msg_name = name.as_ptr().cast_mut().cast();
            (*meta).hdr.msg_namelen = name.len() as u32;
            (*meta).hdr.msg_iov = &raw mut (*meta).iov;
            (*meta).hdr.msg_iovlen = 1;
        }
        // `hdr` is the first field of the repr(C) SendMeta.
        let sqe =
            opcode::SendMsg::new(types::Fd(self.sock.as_raw_fd()), meta.cast::<libc::msghdr>())
                .build()
                .user_data(SEND | u64::from(bid));
        self.push_send(&sqe, bid);
    }

    fn push_send(&mut self, sqe: &squeue::Entry, bid: u16) {
        for _ in 0..2 {
            // SAFETY: the msghdr, iovec, name and payload all live in mappings owned by `self`
            // and stay untouched until the send's CQE recycles the buffer.
            if unsafe { self.ring.submission().push(sqe) }.is_ok() {
                self.inflight += 1;
                return;
            }
            // A full queue: hand it to the kernel without waiting, then retry.
            if self.ring.submit().is_err() {
                break;
            }
        }
        self.counts.dropped += 1;
        self.bufs.recycle(bid);
    }
}

impl Drop for UringUdpEcho {
    fn drop(&mut self) {
        if !cancel_all_and_wait(&mut self.ring, &mut self.inflight) {
            // The kernel may still write into these: leak them rather than unmap under it.
            self.bufs.leak();
            self.hdr.leak();
            self.metas.leak();
        }
    }
}

/// The best ring setup the kernel accepts: `SINGLE_ISSUER | DEFER_TASKRUN` (6.1), then
/// `COOP_TASKRUN` (5.19), then none.
fn setup_ring(sq: u32, cq: u32) -> std::io::Result<(IoUring, &'static str)> {
    let mut last = None;
    for (name, pick) in [("SINGLE_ISSUER|DEFER_TASKRUN", 0), ("COOP_TASKRUN", 1), ("none", 2)] {
        let mut b = IoUring::<squeue::Entry, cqueue::Entry>::builder();
        b.setup_cqsize(cq).setup_clamp();
        match pick {
            0 => b.setup_submit_all().setup_single_issuer().setup_defer_taskrun(),
            1 => b.setup_submit_all().setup_coop_taskrun(),
            _ => &mut b,
        };
        match b.build(sq) {
            Ok(ring) => return Ok((ring, name)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no ring setup")))
}

/// Sets the calling thread's timer slack (`PR_SET_TIMERSLACK`): how late the kernel may fire
/// its timed waits to batch wake-ups. The default, 50 µs, makes an open-loop sender that sleeps
/// until each send time send up to 50 µs late; a load client sets it to 1 ns.
pub fn set_timer_slack(slack: Duration) -> std::io::Result<()> {
    let ns = slack.as_nanos().clamp(1, u128::from(u32::MAX)) as libc::c_ulong;
    // SAFETY: PR_SET_TIMERSLACK takes an integer and no pointers; the result is checked.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, ns, 0, 0, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
