//! Batched UDP receive and send (`recvmmsg`/`sendmmsg`) over preallocated buffers, for one
//! thread that drives many sockets (the load generator). A safe wrapper: the raw headers are
//! rebuilt from owned buffers right before each system call, so nothing points into memory that
//! may have moved.
//!
//! `rustix` offers `sendmmsg` but not `recvmmsg` (1.1), so both are written here over `libc`,
//! like the epoll backend's batches ([`super::epoll`]), to keep one shape for the pair.
//!
//! - [`RecvBatch::recv`] takes up to a batch of datagrams from one socket without waiting;
//!   [`RecvBatch::datagram`] reads each.
//! - [`SendBatch`] collects datagrams for one socket ([`SendBatch::slot`], then
//!   [`SendBatch::commit`] with the destination) and [`SendBatch::flush`] hands them to the kernel
//!   in one `sendmmsg` (more only when the kernel takes part of the batch).

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

use super::{from_sockaddr, to_sockaddr};

/// `batch` entries of `slot` bytes, each with an address, an iovec and a header; the headers
/// are pointed at the rest ([`Entries::prepare`]) right before each call.
struct Entries {
    slot: usize,
    bufs: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Entries {
    /// `batch` (1..=1024) entries of `slot` (at least 1) bytes.
    fn new(batch: usize, slot: usize) -> Self {
        let batch = batch.clamp(1, 1024);
        let slot = slot.max(1);
        Self {
            slot,
            bufs: vec![0; batch * slot],
            addrs: (0..batch).map(|_| zeroed_storage()).collect(),
            iovs: (0..batch)
                .map(|_| libc::iovec { iov_base: core::ptr::null_mut(), iov_len: 0 })
                .collect(),
            hdrs: (0..batch).map(|_| zeroed_mmsghdr()).collect(),
        }
    }

    fn batch(&self) -> usize {
        self.hdrs.len()
    }

    /// Points header `i` at the first `len` bytes of its buffer and at its address, of which
    /// `namelen` bytes count.
    fn prepare(&mut self, i: usize, len: usize, namelen: libc::socklen_t) {
        // `i * slot` is within `bufs` (batch * slot bytes long).
        let base = self.bufs.as_mut_ptr();
        self.iovs[i] =
            libc::iovec { iov_base: base.wrapping_add(i * self.slot).cast(), iov_len: len };
        let h = &mut self.hdrs[i];
        h.msg_len = 0;
        h.msg_hdr.msg_name = (&raw mut self.addrs[i]).cast();
        h.msg_hdr.msg_namelen = namelen;
        h.msg_hdr.msg_iov = &raw mut self.iovs[i];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = core::ptr::null_mut();
        h.msg_hdr.msg_controllen = 0;
        h.msg_hdr.msg_flags = 0;
    }

    /// The first `len` bytes of entry `i`.
    fn bytes(&self, i: usize, len: usize) -> &[u8] {
        &self.bufs[i * self.slot..i * self.slot + len]
    }
}

/// Received datagrams: `batch` entries of `slot` bytes each.
pub struct RecvBatch {
    e: Entries,
    /// Entries filled by the last receive.
    filled: usize,
}

impl RecvBatch {
    /// Room for `batch` (1..=1024) datagrams of up to `slot` bytes.
    pub fn new(batch: usize, slot: usize) -> Self {
        Self { e: Entries::new(batch, slot), filled: 0 }
    }

    /// Receives what `sock` has queued, up to a batch, without waiting. Returns the number of
    /// datagrams now readable with [`RecvBatch::datagram`] (0 when nothing was queued or the
    /// call was interrupted).
    pub fn recv(&mut self, sock: &UdpSocket) -> std::io::Result<usize> {
        self.filled = 0;
        let batch = self.e.batch();
        for i in 0..batch {
            self.e.prepare(i, self.e.slot, STORAGE_LEN);
        }
        // SAFETY: `batch` headers, each naming one address buffer of STORAGE_LEN bytes and one
        // iovec of `slot` bytes inside `bufs`; all owned by `self`, not moved during the call.
        self.filled = unsafe {
            super::recvmmsg(sock.as_raw_fd(), self.e.hdrs.as_mut_ptr(), batch, libc::MSG_DONTWAIT)
        }?;
        Ok(self.filled)
    }

    /// Entry `i` of the last receive: its bytes, and whether the kernel truncated it (it was
    /// longer than `slot`). Empty past the entries received.
    pub fn datagram(&self, i: usize) -> (&[u8], bool) {
        if i >= self.filled {
            return (&[], false);
        }
        let h = &self.e.hdrs[i];
        let len = (h.msg_len as usize).min(self.e.slot);
        let truncated = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        (self.e.bytes(i, len), truncated)
    }

    /// Source address of entry `i` of the last receive.
    pub fn source(&self, i: usize) -> Option<SocketAddr> {
        if i >= self.filled {
            return None;
        }
        from_sockaddr(&self.e.addrs[i])
    }
}

/// Datagrams waiting to go out on one socket.
pub struct SendBatch {
    e: Entries,
    lens: Vec<usize>,
    addr_lens: Vec<libc::socklen_t>,
    count: usize,
}

/// What a [`SendBatch::flush`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Flushed {
    /// Datagrams the kernel took.
    pub sent: usize,
    /// Datagrams the kernel refused (socket buffer full, unreachable): dropped.
    pub dropped: usize,
    /// `sendmmsg` calls made.
    pub calls: usize,
}

impl SendBatch {
    /// Room for `batch` (1..=1024) datagrams of up to `slot` bytes.
    pub fn new(batch: usize, slot: usize) -> Self {
        let e = Entries::new(batch, slot);
        let batch = e.batch();
        Self { e, lens: vec![0; batch], addr_lens: vec![0; batch], count: 0 }
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.count
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// True when no entry is left: flush before the next [`SendBatch::slot`].
    pub fn is_full(&self) -> bool {
        self.count == self.e.batch()
    }

    /// The next free entry's buffer (`slot` bytes) to write a datagram into; `None` when full.
    pub fn slot(&mut self) -> Option<&mut [u8]> {
        if self.is_full() {
            return None;
        }
        let at = self.count * self.e.slot;
        Some(&mut self.e.bufs[at..at + self.e.slot])
    }

    /// The entry just written ([`SendBatch::slot`]) is `len` bytes for `to`. Ignored when full.
    pub fn commit(&mut self, len: usize, to: SocketAddr) {
        if self.is_full() {
            return;
        }
        let i = self.count;
        self.lens[i] = len.min(self.e.slot);
        self.addr_lens[i] = to_sockaddr(to, &mut self.e.addrs[i]);
        self.count += 1;
    }

    /// The bytes of queued entry `i` (for counting what goes out).
    pub fn queued(&self, i: usize) -> &[u8] {
        if i >= self.count {
            return &[];
        }
        self.e.bytes(i, self.lens[i])
    }

    /// Hands every queued datagram to `sock` (one `sendmmsg`, repeated for the rest when the
    /// kernel takes part of the batch) and empties the batch. A datagram the kernel refuses is
    /// dropped and counted, as a full socket buffer would drop it; the caller's protocol
    /// retransmits.
    pub fn flush(&mut self, sock: &UdpSocket) -> Flushed {
        let mut out = Flushed::default();
        for i in 0..self.count {
            self.e.prepare(i, self.lens[i], self.addr_lens[i]);
        }
        let mut start = 0;
        while start < self.count {
            out.calls += 1;
            // SAFETY: headers [start, count) name live address buffers and iovecs over `bufs`,
            // all owned by `self` and not moved during the call.
            let n = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.e.hdrs[start..].as_mut_ptr(),
                    (self.count - start) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                out.sent += n as usize;
                start += n as usize;
                continue;
            }
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // The first datagram was refused: drop it and go on with the rest.
            out.dropped += 1;
            start += 1;
        }
        self.count = 0;
        out
    }
}

const STORAGE_LEN: libc::socklen_t = core::mem::size_of::<libc::sockaddr_storage>() as _;

fn zeroed_storage() -> libc::sockaddr_storage {
    // SAFETY: sockaddr_storage is a plain C struct for which all-zero bytes are a valid value.
    unsafe { core::mem::zeroed() }
}

fn zeroed_mmsghdr() -> libc::mmsghdr {
    // SAFETY: mmsghdr is a plain C struct (integers and raw pointers) for which all-zero bytes
    // are a valid value.
    unsafe { core::mem::zeroed() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_goes_out_in_one_call_and_comes_back_in_one() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        b.set_nonblocking(true).unwrap();
        let to = b.local_addr().unwrap();
        let mut tx = SendBatch::new(8, 64);
        for k in 0..5u8 {
            let s = tx.slot().unwrap();
            s[..3].copy_from_slice(&[k, k, k]);
            tx.commit(3, to);
        }
        assert_eq!(tx.len(), 5);
        assert_eq!(tx.queued(4), &[4, 4, 4]);
        let f = tx.flush(&a);
        assert_eq!(f, Flushed { sent: 5, dropped: 0, calls: 1 });
        assert!(tx.is_empty());
        let mut rx = RecvBatch::new(16, 64);
        let mut got = Vec::new();
        let t0 = std::time::Instant::now();
        while got.len() < 5 && t0.elapsed() < std::time::Duration::from_secs(2) {
            let n = rx.recv(&b).unwrap();
            for i in 0..n {
                let (d, truncated) = rx.datagram(i);
                assert!(!truncated);
                assert_eq!(rx.source(i), Some(a.local_addr().unwrap()));
                got.push(d.to_vec());
            }
        }
        assert_eq!(got, (0..5u8).map(|k| vec![k, k, k]).collect::<Vec<_>>());
        assert_eq!(rx.recv(&b).unwrap(), 0, "nothing left, and no waiting");
    }

    #[test]
    fn a_long_datagram_is_reported_truncated() {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").unwrap();
        a.send_to(&[7; 100], b.local_addr().unwrap()).unwrap();
        let mut rx = RecvBatch::new(4, 16);
        let t0 = std::time::Instant::now();
        let mut n = 0;
        while n == 0 && t0.elapsed() < std::time::Duration::from_secs(2) {
            n = rx.recv(&b).unwrap();
        }
        assert_eq!(n, 1);
        let (d, truncated) = rx.datagram(0);
        assert_eq!(d.len(), 16);
        assert!(truncated);
    }

    #[test]
    fn a_full_batch_refuses_more() {
        let mut tx = SendBatch::new(2, 8);
        let to: SocketAddr = "127.0.0.1:9".parse().unwrap();
        for _ in 0..2 {
            assert!(tx.slot().is_some());
            tx.commit(1, to);
        }
        assert!(tx.is_full());
        assert!(tx.slot().is_none());
        tx.commit(1, to);
        assert_eq!(tx.len(), 2);
    }
}
