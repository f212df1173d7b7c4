//! I/O backends for a shard (DESIGN.md §3).
//!
//! # The backend contract
//!
//! A backend owns one shard's sockets: its UDP session socket, its TCP connections and a wake
//! file descriptor (an eventfd the acceptor writes to after a handoff). It is used from the
//! shard thread only. In each pass of the shard loop:
//!
//! 1. [`Backend::poll`] waits at most `timeout` (`Some(ZERO)`: do not wait; `None`: until
//!    something happens) and reports every completed input through the callback:
//!    [`IoEvent::Datagram`] (one per datagram, with its source), [`IoEvent::TcpData`] (bytes
//!    read on a connection, in order), [`IoEvent::TcpClosed`] (the connection is gone: peer
//!    close, error, or a close we asked for has completed; its [`ConnId`] may be reused after)
//!    and [`IoEvent::Wake`]. Slices are valid only during the callback.
//! 2. [`Backend::send_to`] and [`Backend::send_tcp`] queue output. They copy the bytes: the
//!    caller's buffer is free again on return. They never block: a full queue is
//!    [`SendError::Full`]. [`Backend::tcp_room`] says how much `send_tcp` takes now; the shard
//!    keeps session output within it (see `Endpoint::poll_transmit_within`).
//! 3. [`Backend::close_tcp`] closes a connection gracefully: once its queued bytes are handed
//!    to the kernel it half-closes (`shutdown(SHUT_WR)`: the FIN follows the data), then reads
//!    and discards until the peer closes its end, and only then closes the descriptor and
//!    reports [`IoEvent::TcpClosed`]. (Closing a socket with unread input makes the kernel send
//!    a reset that discards what it had not yet delivered, such as the LoggedOut just queued.)
//!    No [`IoEvent::TcpData`] is reported after `close_tcp`. [`Backend::abort_tcp`] closes at
//!    once, discarding what is queued; the shard aborts a closing connection whose peer has not
//!    closed after `tcp.close_linger_ms`.
//! 4. [`Backend::flush`] hands queued sends to the kernel (one `sendmmsg` or one
//!    `io_uring_enter` for the batch).
//!
//! Every TCP send queue keeps its last [`LAST_WORD_BYTES`] for the connection's last message:
//! `send_tcp` reports `Full` before using them, and [`Backend::send_tcp_last`] may. So a reader
//! too slow to keep up can still be told LoggedOut, behind what is queued.
//!
//! [`Backend::register_tcp`] adopts an accepted, connected socket (from the acceptor's
//! handoff) and returns its `ConnId`, below `max_connections`.
//!
//! [`Backend::connect_tcp`] opens an outbound connection (a host, DESIGN.md §1.6) in the same
//! `ConnId` space: the socket is created non-blocking with its options (keepalive, no delay)
//! and the id returned at once; the backend waits for it to become writable and reports
//! [`IoEvent::TcpConnected`], or [`IoEvent::TcpConnectFailed`] followed by
//! [`IoEvent::TcpClosed`]. Bytes queued while it connects go out once it is up. A connection
//! opened with [`ConnectOpts::read_bytes`] is read at most that many bytes per poll (one read),
//! and [`Backend::set_tcp_reading`] stops and resumes reading it: the host then meets TCP
//! flow control while its session cannot take more. An error from `connect_tcp` itself (such
//! as `EMFILE`, out of file descriptors) is returned and no id is used.
//!
//! Two implementations pass the same tests: [`uring`] (io_uring, default) and [`epoll`]
//! (portable: epoll with `recvmmsg`/`sendmmsg`). [`select`] chooses once for the shards and the
//! acceptor: `"uring"`, `"epoll"`, or `"auto"`, which probes io_uring (every opcode the shards
//! and the acceptor use, then a trial ring) and falls back to epoll when io_uring is missing or
//! refused (as in many containers). `FLEETGATE_IO=epoll` in the environment forces the fallback
//! whatever the config says. A backend is built on its shard's thread from a [`BackendSpec`]
//! (plain data) and never leaves it: backends are not `Send`.
//!
//! Every `unsafe` block of the product lives under this module: the backends, the acceptor's
//! ring ([`uring::accept`]), the bare echo loops of the floor bench ([`floor`]), the load
//! generator's batched UDP to many destinations ([`mmsg`]; `floor::Mmsg` sends on connected
//! sockets only) and [`rusage_self`]. The other system calls the crate makes (`poll(2)`, epoll
//! for the load generator, rlimits, eventfd, signals) go through the `rustix` and `signal-hook`
//! crates.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{OwnedFd, RawFd};
use std::time::Duration;

use crate::ids::ConnId;

pub mod epoll;
pub mod floor;
pub mod mmsg;
pub mod uring;

/// An input reported by [`Backend::poll`].
#[derive(Debug)]
pub enum IoEvent<'a> {
    /// A datagram on the UDP session socket.
    Datagram {
        /// Source address.
        from: SocketAddr,
        /// Payload.
        data: &'a [u8],
    },
    /// Bytes read from a TCP connection.
    TcpData {
        /// The connection.
        conn: ConnId,
        /// The bytes, in stream order.
        data: &'a [u8],
    },
    /// The connection is closed and its id free.
    TcpClosed {
        /// The connection.
        conn: ConnId,
    },
    /// The wake descriptor fired (a handoff is waiting).
    Wake,
    /// An outbound connection ([`Backend::connect_tcp`]) is up.
    TcpConnected {
        /// The connection.
        conn: ConnId,
    },
    /// An outbound connection could not be made; [`IoEvent::TcpClosed`] follows.
    TcpConnectFailed {
        /// The connection.
        conn: ConnId,
        /// The `errno` (`ECONNREFUSED`, `ETIMEDOUT`, `ENETUNREACH`, ...).
        errno: i32,
    },
}

/// Options of an outbound connection ([`Backend::connect_tcp`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectOpts {
    /// TCP keepalive idle time (`None`: off).
    pub keepalive: Option<Duration>,
    /// At most this many bytes per read, one read per poll (0: the backend's own chunking).
    pub read_bytes: usize,
}

/// Creates the non-blocking socket of an outbound connection and starts connecting:
/// `Ok((socket, true))` when connected at once, `Ok((socket, false))` when in progress.
pub(crate) fn start_connect(
    addr: SocketAddr,
    opts: ConnectOpts,
) -> std::io::Result<(socket2::Socket, bool)> {
    use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    sock.set_nonblocking(true)?;
    sock.set_cloexec(true)?;
    let _ = sock.set_nodelay(true);
    if let Some(idle) = opts.keepalive {
        let interval = (idle / 4).max(Duration::from_secs(1));
        let ka = TcpKeepalive::new().with_time(idle).with_interval(interval).with_retries(4);
        sock.set_tcp_keepalive(&ka)?;
    }
    match sock.connect(&addr.into()) {
        Ok(()) => Ok((sock, true)),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok((sock, false)),
        Err(e) => Err(e),
    }
}

/// Why a send was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SendError {
    /// The bounded send queue is full.
    Full,
    /// The connection is unknown or closing.
    Closed,
}

/// Room every TCP send queue keeps for the connection's last message (a LoggedOut, whose reason
/// is at most 64 bytes: 33 + 64 bytes framed), so a slow reader can still be told why it is
/// closed.
pub const LAST_WORD_BYTES: usize = 128;

/// Sizes a backend allocates up front.
#[derive(Clone, Copy, Debug)]
pub struct BackendConfig {
    /// Largest datagram (`udp.max_datagram`).
    pub max_datagram: usize,
    /// Datagrams received per batch and queued for sending before a flush.
    pub batch: usize,
    /// TCP connections (`tcp.max_connections_per_shard`).
    pub max_connections: usize,
    /// Per-connection send queue (`tcp.send_queue_bytes`), [`LAST_WORD_BYTES`] of it kept for
    /// [`Backend::send_tcp_last`].
    pub send_queue_bytes: usize,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self { max_datagram: 1400, batch: 64, max_connections: 4096, send_queue_bytes: 256 * 1024 }
    }
}

/// The contract above, implemented by [`epoll::Epoll`] and [`uring::Uring`].
pub trait Backend {
    /// "io_uring" or "epoll".
    fn name(&self) -> &'static str;
    /// Waits for and reports input; returns the number of events reported.
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(IoEvent<'_>),
    ) -> std::io::Result<usize>;
    /// Queues a datagram from the session socket.
    fn send_to(&mut self, to: SocketAddr, data: &[u8]) -> Result<(), SendError>;
    /// Adopts a connected TCP socket.
    fn register_tcp(&mut self, stream: TcpStream) -> std::io::Result<ConnId>;
    /// Starts an outbound connection (see the module docs).
    fn connect_tcp(&mut self, addr: SocketAddr, opts: ConnectOpts) -> std::io::Result<ConnId>;
    /// Stops (`false`) or resumes (`true`) reading a connection.
    fn set_tcp_reading(&mut self, conn: ConnId, on: bool);
    /// Queues bytes on a connection.
    fn send_tcp(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError>;
    /// Bytes [`Backend::send_tcp`] takes on this connection now (0 once it is closing).
    fn tcp_room(&self, conn: ConnId) -> usize;
    /// Closes a connection gracefully: its queued bytes, a FIN, then (once the peer has closed
    /// its end) the descriptor; see the module docs.
    fn close_tcp(&mut self, conn: ConnId);
    /// Queues `data`, the connection's last message, using the room kept for it if need be
    /// ([`LAST_WORD_BYTES`]), then closes the connection as [`Backend::close_tcp`] does.
    fn send_tcp_last(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError>;
    /// Closes a connection at once, discarding its queued bytes (a reader too slow to keep up);
    /// [`IoEvent::TcpClosed`] follows.
    fn abort_tcp(&mut self, conn: ConnId);
    /// Hands queued sends to the kernel.
    fn flush(&mut self) -> std::io::Result<()>;
    /// Datagrams dropped because the kernel refused them (socket buffer full).
    fn dropped_sends(&self) -> u64;
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn name(&self) -> &'static str {
        (**self).name()
    }
    fn poll(
        &mut self,
        timeout: Option<Duration>,
        on_event: &mut dyn FnMut(IoEvent<'_>),
    ) -> std::io::Result<usize> {
        (**self).poll(timeout, on_event)
    }
    fn send_to(&mut self, to: SocketAddr, data: &[u8]) -> Result<(), SendError> {
        (**self).send_to(to, data)
    }
    fn register_tcp(&mut self, stream: TcpStream) -> std::io::Result<ConnId> {
        (**self).register_tcp(stream)
    }
    fn connect_tcp(&mut self, addr: SocketAddr, opts: ConnectOpts) -> std::io::Result<ConnId> {
        (**self).connect_tcp(addr, opts)
    }
    fn set_tcp_reading(&mut self, conn: ConnId, on: bool) {
        (**self).set_tcp_reading(conn, on)
    }
    fn send_tcp(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        (**self).send_tcp(conn, data)
    }
    fn tcp_room(&self, conn: ConnId) -> usize {
        (**self).tcp_room(conn)
    }
    fn close_tcp(&mut self, conn: ConnId) {
        (**self).close_tcp(conn)
    }
    fn send_tcp_last(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        (**self).send_tcp_last(conn, data)
    }
    fn abort_tcp(&mut self, conn: ConnId) {
        (**self).abort_tcp(conn)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        (**self).flush()
    }
    fn dropped_sends(&self) -> u64 {
        (**self).dropped_sends()
    }
}

/// Which backend to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// io_uring.
    Uring,
    /// epoll + recvmmsg/sendmmsg.
    Epoll,
}

/// `gateway.io`: what the operator asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// io_uring when [`uring::probe`] passes, else epoll.
    #[default]
    Auto,
    /// io_uring, or fail to start.
    Uring,
    /// epoll (and the acceptor's `poll(2)` driver).
    Epoll,
}

/// What [`select`] chose, for the shards and the acceptor alike.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected {
    /// The backend (and acceptor driver) to run.
    pub kind: Kind,
    /// Whether a shard whose io_uring backend cannot be built may fall back to epoll
    /// (`auto` only).
    pub fallback: bool,
    /// Why, for the log: "io_uring (probed)", "epoll (FLEETGATE_IO)", ...
    pub why: String,
}

/// Resolves `choice` and the `FLEETGATE_IO=epoll` override, probing io_uring once (every
/// opcode the shards and the acceptor use, then a trial ring) unless epoll is forced. An
/// explicit `uring` that the probe refuses is an error.
pub fn select(choice: Choice) -> Result<Selected, String> {
    let forced = std::env::var("FLEETGATE_IO").is_ok_and(|v| v == "epoll");
    let epoll = |why: String| Selected { kind: Kind::Epoll, fallback: false, why };
    if forced {
        return Ok(epoll("epoll (FLEETGATE_IO)".into()));
    }
    match choice {
        Choice::Epoll => Ok(epoll("epoll (configured)".into())),
        Choice::Uring => match uring::probe() {
            Ok(()) => Ok(Selected {
                kind: Kind::Uring,
                fallback: false,
                why: "io_uring (configured)".into(),
            }),
            Err(why) => Err(format!("gateway.io = \"uring\" but io_uring is unusable: {why}")),
        },
        Choice::Auto => Ok(match uring::probe() {
            Ok(()) => {
                Selected { kind: Kind::Uring, fallback: true, why: "io_uring (probed)".into() }
            }
            Err(why) => epoll(format!("epoll (io_uring unusable: {why})")),
        }),
    }
}

/// What a shard builds its backend from, on its own thread: plain data (its sockets and sizes),
/// so it can be sent there. A backend itself holds memory the kernel writes to and pointers to
/// it, and never leaves the thread that built it.
#[derive(Debug)]
pub struct BackendSpec {
    /// Which backend, and whether to fall back to epoll if io_uring cannot be built.
    pub kind: Kind,
    /// With `kind = Uring`: try epoll if the ring cannot be set up (`gateway.io = "auto"`).
    pub fallback: bool,
    /// The shard's UDP session socket.
    pub udp: UdpSocket,
    /// The shard's wake descriptor (the acceptor holds a duplicate).
    pub wake: OwnedFd,
    /// Sizes.
    pub cfg: BackendConfig,
}

impl BackendSpec {
    /// Builds the backend on the calling thread. Returns it and, after a fallback, why.
    pub fn build(self) -> std::io::Result<(Box<dyn Backend>, Option<String>)> {
        if self.kind == Kind::Epoll || !self.fallback {
            return Ok((build(self.kind, self.udp, self.wake, self.cfg)?, None));
        }
        // The failed attempt drops what it was given: keep duplicates for the fallback.
        let (udp, wake) = (self.udp.try_clone()?, self.wake.try_clone()?);
        match build(Kind::Uring, self.udp, self.wake, self.cfg) {
            Ok(b) => Ok((b, None)),
            Err(e) => Ok((
                build(Kind::Epoll, udp, wake, self.cfg)?,
                Some(format!("io_uring backend failed ({e}), running epoll")),
            )),
        }
    }
}

/// Builds a backend of `kind` over the shard's UDP socket and wake descriptor, on the calling
/// thread (the only one that may use it).
pub fn build(
    kind: Kind,
    udp: UdpSocket,
    wake: OwnedFd,
    cfg: BackendConfig,
) -> std::io::Result<Box<dyn Backend>> {
    Ok(match kind {
        Kind::Epoll => Box::new(epoll::Epoll::new(udp, wake, cfg)?),
        Kind::Uring => Box::new(uring::Uring::new(udp, wake, cfg)?),
    })
}

/// Creates an eventfd (non-blocking) for waking a shard.
pub fn eventfd() -> std::io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(0, EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC)?)
}

/// Signals an eventfd (from another thread). Errors (EAGAIN when the counter is saturated) are
/// harmless: the shard is already due to wake.
pub fn wake(fd: std::os::fd::BorrowedFd<'_>) {
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// CPU time and peak resident memory of this process (`getrusage(RUSAGE_SELF)`): the load
/// generator reports its own cost. (`rustix` 1.1 has no `getrusage`.)
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rusage {
    /// User CPU time, all threads.
    pub user: Duration,
    /// System CPU time, all threads.
    pub system: Duration,
    /// Peak resident set size (bytes).
    pub max_rss_bytes: u64,
}

/// This process's [`Rusage`]; zeros if the call fails.
pub fn rusage_self() -> Rusage {
    // SAFETY: rusage is a plain C struct (integers) for which all-zero bytes are a valid value.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage; RUSAGE_SELF needs nothing else.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return Rusage::default();
    }
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Rusage {
        user: tv(ru.ru_utime),
        system: tv(ru.ru_stime),
        // Linux reports kilobytes.
        max_rss_bytes: (ru.ru_maxrss.max(0) as u64) * 1024,
    }
}

/// CPU time of the calling thread so far (`CLOCK_THREAD_CPUTIME_ID`, nanoseconds); zero if the
/// call fails.
pub fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live, writable timespec; the clock id is a constant.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

/// `recvmmsg(2)` into the `n` headers at `hdrs`: the number of datagrams received, 0 when none
/// was queued (a non-blocking call) or the call was interrupted.
///
/// # Safety
///
/// `hdrs` points to `n` headers, each naming buffers that are valid for the kernel to write for
/// the whole call.
pub(crate) unsafe fn recvmmsg(
    fd: RawFd,
    hdrs: *mut libc::mmsghdr,
    n: usize,
    flags: i32,
) -> std::io::Result<usize> {
    // SAFETY: the caller's promise; no timeout.
    let r = unsafe { libc::recvmmsg(fd, hdrs, n as u32, flags, core::ptr::null_mut()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::EINTR) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(r as usize)
}

/// Converts a `sockaddr_storage` filled by the kernel into a `SocketAddr`.
pub(crate) fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, which it is large and
            // aligned enough for.
            let sin: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::from((ip, u16::from_be(sin6.sin6_port))))
        }
        _ => None,
    }
}

/// Writes `addr` into a `sockaddr_storage`; returns the length to pass to the kernel.
pub(crate) fn to_sockaddr(addr: SocketAddr, ss: &mut libc::sockaddr_storage) -> libc::socklen_t {
    let s2 = socket2::SockAddr::from(addr);
    let len = s2.len();
    // SAFETY: `SockAddr` holds a valid sockaddr of `len` bytes, and `len` never exceeds the size
    // of sockaddr_storage, which is what both point to.
    unsafe {
        core::ptr::copy_nonoverlapping(
            s2.as_ptr().cast::<u8>(),
            (ss as *mut libc::sockaddr_storage).cast::<u8>(),
            len as usize,
        );
    }
    len
}
