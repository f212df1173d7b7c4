//! The portable backend: level-triggered epoll, `recvmmsg`/`sendmmsg` batches for UDP,
//! non-blocking reads and writes with a bounded per-connection queue for TCP. See [`super`] for
//! the contract.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::{
    Backend, BackendConfig, ConnectOpts, IoEvent, LAST_WORD_BYTES, SendError, from_sockaddr,
    to_sockaddr,
};
use crate::ids::ConnId;

const TOKEN_UDP: u64 = u64::MAX;
const TOKEN_WAKE: u64 = u64::MAX - 1;
const READ_CHUNK: usize = 64 * 1024;

struct Conn {
    stream: TcpStream,
    out: VecDeque<u8>,
    /// `close_tcp` was called: write what is queued, then half-close.
    closing: bool,
    /// Our FIN is queued; reading and discarding until the peer's end of stream.
    half_closed: bool,
    writable_armed: bool,
    /// An outbound connection not up yet: waiting for writability.
    connecting: bool,
    /// Reading stopped ([`Backend::set_tcp_reading`]).
    paused: bool,
    /// Bytes per read, one read per poll (0: `READ_CHUNK`, up to 4 reads).
    read_bytes: usize,
}

impl Conn {
    fn new(stream: TcpStream, out: VecDeque<u8>) -> Self {
        Self {
            stream,
            out,
            closing: false,
            half_closed: false,
            writable_armed: false,
            connecting: false,
            paused: false,
            read_bytes: 0,
        }
    }

    /// The epoll interest: writability while connecting; else input unless paused, and
    /// writability while output is queued.
    fn interest(&self) -> u32 {
        if self.connecting {
            return libc::EPOLLOUT as u32;
        }
        let mut ev = if self.paused { 0 } else { libc::EPOLLIN as u32 };
        if !self.out.is_empty() {
            ev |= libc::EPOLLOUT as u32;
        }
        ev
    }
}

/// The epoll backend.
pub struct Epoll {
    epfd: OwnedFd,
    udp: UdpSocket,
    wake: OwnedFd,
    cfg: BackendConfig,
    events: Vec<libc::epoll_event>,
    // recvmmsg state: one buffer, address and header per batch entry.
    rx: Vec<u8>,
    rx_addrs: Vec<libc::sockaddr_storage>,
    rx_iov: Vec<libc::iovec>,
    rx_hdrs: Vec<libc::mmsghdr>,
    // sendmmsg state.
    tx: Vec<u8>,
    tx_lens: Vec<usize>,
    tx_addrs: Vec<libc::sockaddr_storage>,
    tx_addr_lens: Vec<libc::socklen_t>,
    tx_iov: Vec<libc::iovec>,
    tx_hdrs: Vec<libc::mmsghdr>,
    tx_count: usize,
    dropped: u64,
    conns: Vec<Option<Conn>>,
    spare_queues: Vec<VecDeque<u8>>,
    free: Vec<u32>,
    closed: Vec<ConnId>,
    scratch: Vec<u8>,
}

impl Epoll {
    /// Sets up epoll over the UDP socket and the wake descriptor; allocates every batch buffer.
    pub fn new(udp: UdpSocket, wake: OwnedFd, cfg: BackendConfig) -> std::io::Result<Self> {
        udp.set_nonblocking(true)?;
        // SAFETY: no pointer arguments; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `ep` is a fresh descriptor we own.
        let epfd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ep) };
        let b = cfg.batch.max(1);
        let slot = cfg.max_datagram.max(2048);
        // SAFETY: sockaddr_storage, iovec and mmsghdr are plain C structs for which all-zero
        // bytes are a valid value.
        let zeroed = || unsafe { core::mem::zeroed::<libc::sockaddr_storage>() };
        let mut this = Self {
            epfd,
            udp,
            wake,
            cfg,
            events: vec![libc::epoll_event { events: 0, u64: 0 }; 256],
            rx: vec![0; b * slot],
            rx_addrs: (0..b).map(|_| zeroed()).collect(),
            rx_iov: Vec::with_capacity(b),
            // SAFETY: see above.
            rx_hdrs: (0..b).map(|_| unsafe { core::mem::zeroed() }).collect(),
            tx: vec![0; b * slot],
            tx_lens: vec![0; b],
            tx_addrs: (0..b).map(|_| zeroed()).collect(),
            tx_addr_lens: vec![0; b],
            tx_iov: Vec::with_capacity(b),
            // SAFETY: see above.
            tx_hdrs: (0..b).map(|_| unsafe { core::mem::zeroed() }).collect(),
            tx_count: 0,
            dropped: 0,
            conns: (0..cfg.max_connections).map(|_| None).collect(),
            spare_queues: Vec::new(),
            free: (0..cfg.max_connections as u32).rev().collect(),
            closed: Vec::with_capacity(cfg.max_connections),
            scratch: vec![0; READ_CHUNK],
        };
        for i in 0..b {
            let rx_base = this.rx[i * slot..].as_mut_ptr();
            this.rx_iov.push(libc::iovec { iov_base: rx_base.cast(), iov_len: slot });
            let tx_base = this.tx[i * slot..].as_mut_ptr();
            this.tx_iov.push(libc::iovec { iov_base: tx_base.cast(), iov_len: 0 });
        }
        this.ctl(libc::EPOLL_CTL_ADD, this.udp.as_raw_fd(), libc::EPOLLIN as u32, TOKEN_UDP)?;
        this.ctl(libc::EPOLL_CTL_ADD, this.wake.as_raw_fd(), libc::EPOLLIN as u32, TOKEN_WAKE)?;
        Ok(this)
    }

    /// Puts `stream` in a free slot, registered for `events`; returns the slot and its
    /// connection.
    fn add_conn(&mut self, stream: TcpStream, events: u32) -> std::io::Result<(u32, &mut Conn)> {
        let Some(idx) = self.free.pop() else {
            return Err(std::io::Error::other("no free connection slot"));
        };
        if let Err(e) = self.ctl(libc::EPOLL_CTL_ADD, stream.as_raw_fd(), events, u64::from(idx)) {
            self.free.push(idx);
            return Err(e);
        }
        // Queues are allocated once per slot and reused.
        let out = self
            .spare_queues
            .pop()
            .unwrap_or_else(|| VecDeque::with_capacity(self.cfg.send_queue_bytes));
        Ok((idx, self.conns[idx as usize].insert(Conn::new(stream, out))))
    }

    fn ctl(&self, op: i32, fd: RawFd, events: u32, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: `ev` is a live epoll_event; the descriptors are open.
        let r = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut ev) };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    fn slot(&self) -> usize {
        self.cfg.max_datagram.max(2048)
    }

    fn recv_udp(&mut self, on_event: &mut dyn FnMut(IoEvent<'_>)) -> usize {
        let slot = self.slot();
        let b = self.rx_hdrs.len();
        let mut reported = 0;
        // Bounded: at most 4 batches per poll, so one busy socket cannot starve the rest.
        for _ in 0..4 {
            for i in 0..b {
                let h = &mut self.rx_hdrs[i].msg_hdr;
                h.msg_name = (&raw mut self.rx_addrs[i]).cast();
                h.msg_namelen = core::mem::size_of::<libc::sockaddr_storage>() as u32;
                h.msg_iov = &raw mut self.rx_iov[i];
                h.msg_iovlen = 1;
                h.msg_control = core::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
                self.rx_iov[i].iov_len = slot;
                self.rx_hdrs[i].msg_len = 0;
            }
            // SAFETY: every header points at a live address slot and iovec, each iovec at `slot`
            // bytes inside `self.rx`; all live as long as `self`.
            let n = unsafe {
                libc::recvmmsg(
                    self.udp.as_raw_fd(),
                    self.rx_hdrs.as_mut_ptr(),
                    b as u32,
                    libc::MSG_DONTWAIT,
                    core::ptr::null_mut(),
                )
            };
            if n <= 0 {
                break;
            }
            for i in 0..n as usize {
                let len = self.rx_hdrs[i].msg_len as usize;
                let truncated = self.rx_hdrs[i].msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
                if let (Some(from), false) = (from_sockaddr(&self.rx_addrs[i]), truncated) {
                    let data = &self.rx[i * slot..i * slot + len.min(slot)];
                    on_event(IoEvent::Datagram { from, data });
                    reported += 1;
                }
            }
            if (n as usize) < b {
                break;
            }
        }
        reported
    }

    fn read_tcp(&mut self, idx: usize, on_event: &mut dyn FnMut(IoEvent<'_>)) -> usize {
        let conn = ConnId(idx as u32);
        let mut reported = 0;
        let (rounds, limit) = match self.conns[idx].as_ref() {
            Some(c) if c.paused && !c.closing => return 0,
            Some(c) if c.read_bytes > 0 => (1, c.read_bytes.min(self.scratch.len())),
            Some(_) => (4, self.scratch.len()),
            None => return 0,
        };
        // Bounded: at most 4 chunks per poll per connection (one for an outbound connection
        // read in `read_bytes` pieces).
        for _ in 0..rounds {
            let Some(c) = self.conns[idx].as_mut() else { return reported };
            match c.stream.read(&mut self.scratch[..limit]) {
                Ok(0) => {
                    self.drop_conn(idx);
                    break;
                }
                Ok(n) => {
                    // Input after `close_tcp` is read only to be discarded.
                    if !c.closing {
                        on_event(IoEvent::TcpData { conn, data: &self.scratch[..n] });
                        reported += 1;
                    }
                    if n < limit {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.drop_conn(idx);
                    break;
                }
            }
        }
        reported
    }

    fn write_tcp(&mut self, idx: usize) {
        let Some(c) = self.conns[idx].as_mut() else { return };
        if c.connecting {
            return;
        }
        while !c.out.is_empty() {
            let (a, _) = c.out.as_slices();
            match c.stream.write(a) {
                Ok(0) => break,
                Ok(n) => {
                    c.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.drop_conn(idx);
                    return;
                }
            }
        }
        let (empty, closing, armed, fd) =
            (c.out.is_empty(), c.closing, c.writable_armed, c.stream.as_raw_fd());
        if empty && closing && !c.half_closed {
            // Everything queued is written: the FIN follows it. Keep reading (and discarding)
            // until the peer closes its end, so that no unread input makes the final close a
            // reset that would discard what is still undelivered.
            let _ = c.stream.shutdown(std::net::Shutdown::Write);
            c.half_closed = true;
        }
        if empty == armed {
            let events = c.interest();
            if self.ctl(libc::EPOLL_CTL_MOD, fd, events, idx as u64).is_ok() {
                if let Some(c) = self.conns[idx].as_mut() {
                    c.writable_armed = !empty;
                }
            }
        }
    }

    /// Writes or queues `data` on a connection whose queue may hold at most `cap` bytes.
    fn queue_tcp(&mut self, conn: ConnId, data: &[u8], cap: usize) -> Result<(), SendError> {
        let idx = conn.0 as usize;
        let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else {
            return Err(SendError::Closed);
        };
        if c.closing {
            return Err(SendError::Closed);
        }
        // All or nothing, checked before any byte is written: a message cut short would corrupt
        // the stream for whatever follows it (such as the LoggedOut to a slow reader).
        if c.out.len() + data.len() > cap {
            return Err(SendError::Full);
        }
        let mut rest = data;
        if c.out.is_empty() && !c.connecting {
            match c.stream.write(data) {
                Ok(n) => rest = &data[n..],
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => {
                    self.drop_conn(idx);
                    return Err(SendError::Closed);
                }
            }
        }
        if rest.is_empty() {
            return Ok(());
        }
        c.out.extend(rest);
        if !c.connecting {
            self.write_tcp(idx);
        }
        Ok(())
    }

    /// An outbound connection became writable (or failed): reports how its connect ended.
    fn finish_connect(&mut self, idx: usize, on_event: &mut dyn FnMut(IoEvent<'_>)) -> usize {
        let Some(c) = self.conns[idx].as_mut() else { return 0 };
        let err = match c.stream.take_error() {
            Ok(None) => None,
            Ok(Some(e)) | Err(e) => Some(e.raw_os_error().unwrap_or(libc::EIO)),
        };
        // Writable without an error can still be unconnected (a reset raced the check).
        let err = err
            .or_else(|| c.stream.peer_addr().err().map(|e| e.raw_os_error().unwrap_or(libc::EIO)));
        if let Some(errno) = err {
            on_event(IoEvent::TcpConnectFailed { conn: ConnId(idx as u32), errno });
            self.drop_conn(idx);
            return 1;
        }
        c.connecting = false;
        let (fd, events) = (c.stream.as_raw_fd(), c.interest());
        c.writable_armed = !c.out.is_empty();
        let write = c.closing || !c.out.is_empty();
        let _ = self.ctl(libc::EPOLL_CTL_MOD, fd, events, idx as u64);
        on_event(IoEvent::TcpConnected { conn: ConnId(idx as u32) });
        if write {
            self.write_tcp(idx);
        }
        1
    }

    fn drop_conn(&mut self, idx: usize) {
        if let Some(mut c) = self.conns[idx].take() {
            // Closing the descriptor removes it from the epoll set.
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
            c.out.clear();
            self.spare_queues.push(core::mem::take(&mut c.out));
            // The id is freed only once `TcpClosed` has been reported (in `poll`), so a
            // connection registered in between cannot receive the old connection's close.
            self.closed.push(ConnId(idx as u32));
        }
    }
}

impl Backend for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(IoEvent<'_>),
    ) -> std::io::Result<usize> {
        let mut reported = 0;
        for conn in self.closed.drain(..) {
            on_event(IoEvent::TcpClosed { conn });
            self.free.push(conn.0);
            reported += 1;
        }
        let ms = match timeout {
            None => -1,
            Some(d) => i32::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
        };
        let ms = if reported > 0 { 0 } else { ms };
        // SAFETY: `events` is a live, writable array of the length passed.
        let n = unsafe {
            libc::epoll_wait(
                self.epfd.as_raw_fd(),
                self.events.as_mut_ptr(),
                self.events.len() as i32,
                ms,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::Interrupted { Ok(reported) } else { Err(e) };
        }
        for i in 0..n as usize {
            let ev = self.events[i];
            let (token, flags) = (ev.u64, ev.events);
            match token {
                TOKEN_UDP => reported += self.recv_udp(on_event),
                TOKEN_WAKE => {
                    let mut v = [0u8; 8];
                    // SAFETY: reads 8 bytes into a live buffer from our eventfd.
                    let _ = unsafe { libc::read(self.wake.as_raw_fd(), v.as_mut_ptr().cast(), 8) };
                    on_event(IoEvent::Wake);
                    reported += 1;
                }
                idx if self
                    .conns
                    .get(idx as usize)
                    .is_some_and(|c| c.as_ref().is_some_and(|c| c.connecting)) =>
                {
                    reported += self.finish_connect(idx as usize, on_event);
                }
                idx => {
                    let idx = idx as usize;
                    if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                        reported += self.read_tcp(idx, on_event);
                    }
                    if flags & libc::EPOLLOUT as u32 != 0 {
                        self.write_tcp(idx);
                    }
                }
            }
        }
        for conn in self.closed.drain(..) {
            on_event(IoEvent::TcpClosed { conn });
            self.free.push(conn.0);
            reported += 1;
        }
        Ok(reported)
    }

    fn send_to(&mut self, to: SocketAddr, data: &[u8]) -> Result<(), SendError> {
        let slot = self.slot();
        if data.len() > slot {
            return Err(SendError::Full);
        }
        if self.tx_count == self.tx_hdrs.len() {
            let _ = self.flush();
            if self.tx_count == self.tx_hdrs.len() {
                self.dropped += 1;
                return Err(SendError::Full);
            }
        }
        let i = self.tx_count;
        self.tx[i * slot..i * slot + data.len()].copy_from_slice(data);
        self.tx_lens[i] = data.len();
        self.tx_addr_lens[i] = to_sockaddr(to, &mut self.tx_addrs[i]);
        self.tx_count += 1;
        Ok(())
    }

    fn register_tcp(&mut self, stream: TcpStream) -> std::io::Result<ConnId> {
        stream.set_nonblocking(true)?;
        let _ = stream.set_nodelay(true);
        let (idx, _) = self.add_conn(stream, libc::EPOLLIN as u32)?;
        Ok(ConnId(idx))
    }

    fn connect_tcp(&mut self, addr: SocketAddr, opts: ConnectOpts) -> std::io::Result<ConnId> {
        if self.free.is_empty() {
            return Err(std::io::Error::other("no free connection slot"));
        }
        let (sock, _) = super::start_connect(addr, opts)?;
        // Writability (or an error) says the connect finished, even when it already has.
        let (idx, c) = self.add_conn(TcpStream::from(sock), libc::EPOLLOUT as u32)?;
        c.connecting = true;
        c.read_bytes = opts.read_bytes;
        Ok(ConnId(idx))
    }

    fn set_tcp_reading(&mut self, conn: ConnId, on: bool) {
        let idx = conn.0 as usize;
        let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) else { return };
        if c.paused != on {
            return;
        }
        c.paused = !on;
        if c.connecting {
            return;
        }
        let (fd, events) = (c.stream.as_raw_fd(), c.interest());
        let _ = self.ctl(libc::EPOLL_CTL_MOD, fd, events, idx as u64);
    }

    fn send_tcp(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        // The last LAST_WORD_BYTES are kept for `send_tcp_last`.
        let cap = self.cfg.send_queue_bytes.saturating_sub(LAST_WORD_BYTES);
        self.queue_tcp(conn, data, cap)
    }

    fn tcp_room(&self, conn: ConnId) -> usize {
        match self.conns.get(conn.0 as usize).and_then(Option::as_ref) {
            Some(c) if !c.closing => self
                .cfg
                .send_queue_bytes
                .saturating_sub(LAST_WORD_BYTES)
                .saturating_sub(c.out.len()),
            _ => 0,
        }
    }

    fn send_tcp_last(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        self.queue_tcp(conn, data, self.cfg.send_queue_bytes)?;
        self.close_tcp(conn);
        Ok(())
    }
    fn close_tcp(&mut self, conn: ConnId) {
        let idx = conn.0 as usize;
        if let Some(c) = self.conns.get_mut(idx).and_then(Option::as_mut) {
            c.closing = true;
            self.write_tcp(idx);
        }
    }

    fn abort_tcp(&mut self, conn: ConnId) {
        self.drop_conn(conn.0 as usize);
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let slot = self.slot();
        let mut start = 0;
        while start < self.tx_count {
            for i in start..self.tx_count {
                self.tx_iov[i].iov_len = self.tx_lens[i];
                let h = &mut self.tx_hdrs[i].msg_hdr;
                h.msg_name = (&raw mut self.tx_addrs[i]).cast();
                h.msg_namelen = self.tx_addr_lens[i];
                h.msg_iov = &raw mut self.tx_iov[i];
                h.msg_iovlen = 1;
                h.msg_control = core::ptr::null_mut();
                h.msg_controllen = 0;
                h.msg_flags = 0;
            }
            let _ = slot;
            // SAFETY: headers [start, tx_count) point at live addresses and iovecs over `self.tx`.
            let n = unsafe {
                libc::sendmmsg(
                    self.udp.as_raw_fd(),
                    self.tx_hdrs[start..].as_mut_ptr(),
                    (self.tx_count - start) as u32,
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                // The socket buffer is full or the destination refused: drop the first datagram
                // (counted) and go on with the rest; UDP peers recover by their own rules.
                self.dropped += 1;
                start += 1;
                continue;
            }
            start += n as usize;
        }
        self.tx_count = 0;
        Ok(())
    }

    fn dropped_sends(&self) -> u64 {
        self.dropped
    }
}
