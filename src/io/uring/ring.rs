//! The io_uring toolkit shared by the shard backend ([`super::Uring`]) and the acceptor's ring
//! ([`super::accept`]): `user_data` tokens, operation lifecycles, kernel-shared memory
//! (`Region`), provided-buffer rings, the UDP send-slot pool, ring setup and the bounded
//! cancel-and-drain used before memory is freed. See [`super`] for the rules they implement.

use std::net::SocketAddr;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use io_uring::{IoUring, Submitter, cqueue, opcode, squeue, types};

use crate::io::{from_sockaddr, to_sockaddr};

/// Which optional setup flags the kernel accepted for a ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingSetup {
    /// `SINGLE_ISSUER | DEFER_TASKRUN | SUBMIT_ALL` (Linux 6.1): completions run only when the
    /// shard thread enters the ring.
    DeferTaskrun,
    /// `COOP_TASKRUN | SUBMIT_ALL` (Linux 5.19): completions run at the next syscall of the
    /// thread, without interrupting it.
    CoopTaskrun,
    /// No optional flags.
    Plain,
}

impl RingSetup {
    /// The setup flags, for the log.
    pub fn flags(self) -> &'static str {
        match self {
            Self::DeferTaskrun => "SINGLE_ISSUER|DEFER_TASKRUN|SUBMIT_ALL",
            Self::CoopTaskrun => "COOP_TASKRUN|SUBMIT_ALL",
            Self::Plain => "none",
        }
    }
}

/// `user_data`: `op` in bits 56..64, `index` in 32..56, `generation` in 0..32.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Token(pub(super) u64);

impl Token {
    /// Reserved for cancel requests, whose results are ignored.
    pub(super) const CANCEL: Self = Self((Op::Cancel as u64) << 56);

    pub(super) fn new(op: Op, index: usize, generation: u32) -> Self {
        debug_assert!(index as u64 <= INDEX_MASK);
        Self((op as u64) << 56 | (index as u64 & INDEX_MASK) << 32 | u64::from(generation))
    }

    pub(super) fn op(self) -> Option<Op> {
        Op::from_bits((self.0 >> 56) as u8)
    }

    pub(super) fn index(self) -> usize {
        ((self.0 >> 32) & INDEX_MASK) as usize
    }

    pub(super) fn generation(self) -> u32 {
        self.0 as u32
    }
}

/// The kinds of operation, in a `Token`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(super) enum Op {
    UdpRecv = 1,
    UdpSend = 2,
    Wake = 3,
    TcpRecv = 4,
    TcpSend = 5,
    Cancel = 6,
    /// The acceptor's multishot accept ([`accept`]).
    Accept = 7,
    /// An outbound connection's `POLL_ADD` for writability (its connect finished).
    TcpConnect = 8,
}

impl Op {
    pub(super) const VALUES: [Self; 8] = [
        Self::UdpRecv,
        Self::UdpSend,
        Self::Wake,
        Self::TcpRecv,
        Self::TcpSend,
        Self::Cancel,
        Self::Accept,
        Self::TcpConnect,
    ];

    pub(super) fn from_bits(bits: u8) -> Option<Self> {
        Self::VALUES.into_iter().find(|op| *op as u8 == bits)
    }
}

/// Where an operation, and the memory it borrows, stands (STYLE rule 18; monoio
/// `driver/uring/lifecycle.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lifecycle {
    /// Nothing in flight: the memory is ours.
    Idle,
    /// Queued or submitted: the memory is the kernel's until the final CQE.
    Submitted,
    /// As `Submitted`, but the owner is closing: the final CQE only gives the memory back.
    Orphaned,
}

/// Page-aligned anonymous memory, reached only through raw pointers so that no Rust reference
/// covers bytes the kernel is using.
pub(in crate::io) struct Region {
    ptr: NonNull<u8>,
    /// 0 once leaked: drop then leaves the mapping alone.
    len: usize,
}

impl Region {
    pub(in crate::io) fn new(len: usize) -> std::io::Result<Self> {
        let len = len.max(1);
        // SAFETY: an anonymous private mapping; no pointer arguments besides the null hint; the
        // result is checked below.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast::<u8>()).ok_or_else(|| std::io::Error::other("mmap: null"))?;
        Ok(Self { ptr, len })
    }

    pub(in crate::io) fn ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(in crate::io) fn leak(&mut self) {
        self.len = 0;
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping is ours and `len` long; regions are dropped only after every
            // op that could use them has completed (`Uring::drop` leaks them otherwise).
            unsafe { libc::munmap(self.ptr().cast(), self.len) };
        }
    }
}

/// The kernel's `struct io_uring_buf`; entry 0's `resv` field is the ring's tail.
#[repr(C)]
pub(super) struct RawBuf {
    addr: u64,
    len: u32,
    bid: u16,
    resv: u16,
}

const _: () = assert!(size_of::<RawBuf>() == size_of::<types::BufRingEntry>());

/// A provided-buffer ring (`IORING_REGISTER_PBUF_RING`, Linux 5.19): `count` buffers of
/// `buf_len` bytes the kernel picks from for multishot receives.
pub(in crate::io) struct BufRing {
    entries: Region,
    bufs: Region,
    count: u16,
    buf_len: usize,
    /// Our tail; the kernel sees it once published.
    tail: u16,
}

impl BufRing {
    pub(in crate::io) fn new(
        submitter: &Submitter<'_>,
        bgid: u16,
        count: u16,
        buf_len: usize,
    ) -> std::io::Result<Self> {
        debug_assert!(count.is_power_of_two() && count <= 32768);
        let entries = Region::new(usize::from(count) * size_of::<RawBuf>())?;
        let bufs = Region::new(usize::from(count) * buf_len)?;
        // SAFETY: `entries` is page-aligned and holds `count` entries; it stays mapped while the
        // ring may use it (until the ring quiesces, or forever if it does not).
        unsafe { submitter.register_buf_ring_with_flags(entries.ptr() as u64, count, bgid, 0)? };
        let mut this = Self { entries, bufs, count, buf_len, tail: 0 };
        for bid in 0..count {
            this.recycle(bid);
        }
        Ok(this)
    }

    pub(in crate::io) fn owns(&self, bid: u16) -> bool {
        bid < self.count
    }

    /// Gives buffer `bid` (back) to the kernel.
    pub(in crate::io) fn recycle(&mut self, bid: u16) {
        debug_assert!(self.owns(bid));
        let slot = usize::from(self.tail & (self.count - 1));
        let base = self.entries.ptr().cast::<RawBuf>();
        let addr = self.bufs.ptr().wrapping_add(usize::from(bid) * self.buf_len) as u64;
        // SAFETY: `slot < count`, so the entry is inside `entries` (page-aligned, so aligned).
        // The kernel reads only entries between its head and the published tail; this one is at
        // the tail, so it is ours. Field writes leave entry 0's `resv` (the tail) alone.
        unsafe {
            let e = base.add(slot);
            (&raw mut (*e).addr).write(addr);
            (&raw mut (*e).len).write(self.buf_len as u32);
            (&raw mut (*e).bid).write(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: entry 0's `resv` is the shared tail, an aligned u16 inside `entries` that we
        // only access atomically; the kernel loads it with acquire ordering, so this release
        // store publishes the entry written above.
        let tail = unsafe { AtomicU16::from_ptr(&raw mut (*base).resv) };
        tail.store(self.tail, Ordering::Release);
    }

    /// The first `len` bytes of buffer `bid`.
    ///
    /// # Safety
    ///
    /// A CQE must have handed `bid` to us and it must not have been recycled since (recycling
    /// takes `&mut self`, so not while the slice lives).
    pub(in crate::io) unsafe fn filled(&self, bid: u16, len: usize) -> &[u8] {
        debug_assert!(self.owns(bid));
        let len = len.min(self.buf_len);
        // SAFETY: in bounds (`bid < count`, `len <= buf_len`); by the caller's promise the
        // kernel does not write this buffer until it is recycled.
        unsafe {
            core::slice::from_raw_parts(self.bufs.ptr().add(usize::from(bid) * self.buf_len), len)
        }
    }

    pub(in crate::io) fn leak(&mut self) {
        self.entries.leak();
        self.bufs.leak();
    }
}

/// What one `SENDMSG` reads besides the payload.
#[repr(C)]
pub(super) struct SlotMeta {
    hdr: libc::msghdr,
    iov: libc::iovec,
    addr: libc::sockaddr_storage,
}

/// The fixed pool of UDP send slots: stable addresses, one op per slot.
pub(super) struct SendSlots {
    pub(super) meta: Region,
    pub(super) bufs: Region,
    pub(super) buf_len: usize,
    pub(super) state: Vec<Lifecycle>,
    pub(super) gens: Vec<u32>,
    pub(super) free: Vec<u32>,
}

impl SendSlots {
    pub(super) fn new(count: usize, buf_len: usize) -> std::io::Result<Self> {
        Ok(Self {
            meta: Region::new(count * size_of::<SlotMeta>())?,
            bufs: Region::new(count * buf_len)?,
            buf_len,
            state: vec![Lifecycle::Idle; count],
            gens: vec![0; count],
            free: (0..count as u32).rev().collect(),
        })
    }

    /// Fills idle slot `idx`; returns its msghdr.
    pub(super) fn fill(&mut self, idx: usize, to: SocketAddr, data: &[u8]) -> *const libc::msghdr {
        debug_assert!(self.state[idx] == Lifecycle::Idle && data.len() <= self.buf_len);
        let buf = self.bufs.ptr().wrapping_add(idx * self.buf_len);
        // SAFETY: `idx < count` and `data.len() <= buf_len`, so the bytes and the metadata are
        // inside their regions (page-aligned, and SlotMeta's size is a multiple of its
        // alignment). The slot is idle: no op refers to it, so this is the only access. All-zero
        // bytes are a valid msghdr.
        unsafe {
            core::ptr::copy_nonoverlapping(data.as_ptr(), buf, data.len());
            let m = &mut *self.meta.ptr().cast::<SlotMeta>().add(idx);
            let namelen = to_sockaddr(to, &mut m.addr);
            m.iov = libc::iovec { iov_base: buf.cast(), iov_len: data.len() };
            m.hdr = core::mem::zeroed();
            m.hdr.msg_name = (&raw mut m.addr).cast();
            m.hdr.msg_namelen = namelen;
            m.hdr.msg_iov = &raw mut m.iov;
            m.hdr.msg_iovlen = 1;
            &raw const m.hdr
        }
    }

    /// Frees the slot a send completion names; false if the token is stale.
    pub(super) fn complete(&mut self, token: Token) -> bool {
        let idx = token.index();
        if self.gens.get(idx) != Some(&token.generation())
            || self.state[idx] != Lifecycle::Submitted
        {
            return false;
        }
        self.state[idx] = Lifecycle::Idle;
        self.gens[idx] = self.gens[idx].wrapping_add(1);
        self.free.push(idx as u32);
        true
    }
}

/// Cancels every operation on an enabled ring and waits, bounded by `QUIESCE_TIMEOUT`, for the
/// final CQE of each of the `inflight` ones. True when none is left (the memory they used may
/// then be freed).
pub(in crate::io) fn cancel_all_and_wait(ring: &mut IoUring, inflight: &mut usize) -> bool {
    let sqe =
        opcode::AsyncCancel2::new(types::CancelBuilder::any()).build().user_data(Token::CANCEL.0);
    for _ in 0..2 {
        // SAFETY: no pointers.
        if unsafe { ring.submission().push(&sqe) }.is_ok() {
            *inflight += 1;
            break;
        }
        // A full queue: hand it to the kernel, then try again.
        let _ = ring.submit();
    }
    let deadline = Instant::now() + QUIESCE_TIMEOUT;
    while *inflight > 0 && Instant::now() < deadline {
        let ts = types::Timespec::from(QUIESCE_STEP);
        match ring.submitter().submit_with_args(1, &types::SubmitArgs::new().timespec(&ts)) {
            Ok(_) => {}
            Err(e) if transient(&e) => {}
            Err(_) => break,
        }
        for cqe in ring.completion() {
            if !cqueue::more(cqe.flags()) {
                *inflight = inflight.saturating_sub(1);
            }
        }
    }
    *inflight == 0
}

/// Sets up a ring with the best setup the kernel accepts, or exactly `only`.
pub(super) fn setup_ring(
    sq: u32,
    cq: u32,
    only: Option<RingSetup>,
) -> std::io::Result<(IoUring, RingSetup)> {
    let order = [RingSetup::DeferTaskrun, RingSetup::CoopTaskrun, RingSetup::Plain];
    let mut last = None;
    for setup in order.into_iter().filter(|s| only.is_none_or(|o| o == *s)) {
        let mut b = IoUring::<squeue::Entry, cqueue::Entry>::builder();
        b.setup_cqsize(cq).setup_clamp();
        match setup {
            RingSetup::DeferTaskrun => {
                b.setup_submit_all().setup_single_issuer().setup_defer_taskrun().setup_r_disabled()
            }
            RingSetup::CoopTaskrun => b.setup_submit_all().setup_coop_taskrun(),
            RingSetup::Plain => &mut b,
        };
        match b.build(sq) {
            Ok(ring) => return Ok((ring, setup)),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no ring setup to try")))
}

/// Converts the name field of a multishot `RECVMSG` buffer into an address.
pub(super) fn sockaddr_from_name(name: &[u8]) -> Option<SocketAddr> {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut ss: libc::sockaddr_storage = unsafe { core::mem::zeroed() };
    let n = name.len().min(size_of::<libc::sockaddr_storage>());
    // SAFETY: copies `n` bytes, no more than either side holds.
    unsafe { core::ptr::copy_nonoverlapping(name.as_ptr(), (&raw mut ss).cast::<u8>(), n) };
    from_sockaddr(&ss)
}

/// `io_uring_enter` errors that only mean "try again at the next pass": the wait timed out
/// (ETIME), a signal arrived (EINTR), or the kernel is short of resources or has completions
/// to flush first (EAGAIN, EBUSY).
pub(in crate::io) fn transient(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ETIME | libc::EINTR | libc::EAGAIN | libc::EBUSY))
}

/// Smallest UDP payload buffer (as epoll's slot).
pub(super) const MIN_DATAGRAM_BUF: usize = 2048;

/// `struct io_uring_recvmsg_out`, which starts every multishot `RECVMSG` buffer.
pub(in crate::io) const RECVMSG_OUT_LEN: usize = 16;

/// Name field reserved in every multishot `RECVMSG` buffer.
pub(super) const NAME_LEN: usize = size_of::<libc::sockaddr_storage>();

/// Bits of a token's index: connection and send-slot indices must fit.
pub(super) const INDEX_MASK: u64 = (1 << 24) - 1;

pub(super) const QUIESCE_TIMEOUT: Duration = Duration::from_secs(1);

pub(super) const QUIESCE_STEP: Duration = Duration::from_millis(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trips() {
        for op in Op::VALUES {
            let t = Token::new(op, 0x00ab_cdef, 0xdead_beef);
            assert_eq!((t.op(), t.index(), t.generation()), (Some(op), 0x00ab_cdef, 0xdead_beef));
        }
        assert_eq!(Token::CANCEL.op(), Some(Op::Cancel));
        assert_eq!(Token(0).op(), None);
    }
}
