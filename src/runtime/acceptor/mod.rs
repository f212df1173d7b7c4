//! The acceptor thread (DESIGN.md §3): the stateless UDP handshake port and the TCP listener.
//!
//! - UDP: each ConnectionRequest is answered by [`answer_connection_request`] (a cookie naming
//!   the shard's session port), after a per-source token bucket; nothing is stored.
//! - TCP: a connection must deliver its LogonRequest within `tcp.logon_timeout_ms`; the
//!   acceptor reads that first frame, picks the shard by hash of the username (so a resume finds
//!   the same shard) and hands the socket and the bytes to that shard over its SPSC queue, then
//!   wakes it through its eventfd.
//!
//! What to answer is decided by [`Core`] (`core.rs`). Two drivers run it, chosen like the shards'
//! backend (`gateway.io`, `FLEETGATE_IO`):
//!
//! - io_uring ([`uring`], over the ring of [`crate::io::uring::accept`]): one multishot
//!   `RECVMSG` over a provided-buffer ring on the handshake port, `SENDMSG` replies from a fixed
//!   pool, one multishot `ACCEPT` on the listener, and one `RECV` per pending connection into its
//!   own fixed buffer;
//! - portable: `poll(2)` over non-blocking sockets ([`run_poll`]), also the fallback when the
//!   ring cannot be set up.
//!
//! The driver in use is logged and shown in `/metrics` as `fleetgate_acceptor_info{backend}`.
//!
//! [`answer_connection_request`]: crate::session::handshake::answer_connection_request

use std::io::Write;
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use crate::counters::Counters;
use crate::protocol::{Body, Header, Message};
use crate::runtime::handoff::Handoff;
use crate::runtime::report::AcceptorReport;
use crate::session::handshake::HandshakeConfig;
use crate::time::Clock;

mod core;
mod poll;
pub mod uring;

pub use self::core::{Core, Step};
pub use poll::run_poll;

/// Everything the acceptor needs.
pub struct AcceptorSpec {
    /// The handshake port socket.
    pub udp: UdpSocket,
    /// The TCP listener.
    pub tcp: TcpListener,
    /// Use io_uring (else `poll(2)`); falls back to `poll(2)` if the ring cannot be set up.
    pub uring: bool,
    /// Handshake settings (shards, session ports, cookie TTL).
    pub handshake: HandshakeConfig,
    /// Start-up secret for cookies.
    pub master: [u8; 32],
    /// Cookie rotation period.
    pub cookie_rotate: Duration,
    /// Time base.
    pub clock: Clock,
    /// Set by the signal handler.
    pub shutdown: Arc<AtomicBool>,
    /// One queue per shard.
    pub handoffs: Vec<rtrb::Producer<Handoff>>,
    /// One eventfd per shard.
    pub wakes: Vec<OwnedFd>,
    /// LogonRequest deadline.
    pub logon_timeout: Duration,
    /// ConnectionRequests per second per source address.
    pub rate_per_s: u32,
    /// Token bucket depth.
    pub burst: u32,
    /// Connections waiting for their LogonRequest (`tcp.max_pending_logons`).
    pub max_pending: usize,
    /// Largest inbound TCP message (`tcp.max_message_bytes`).
    pub max_message_bytes: usize,
    /// Where the counters are published for /metrics (about every 200 ms).
    pub report: rtrb::Producer<AcceptorReport>,
    /// Set while an operator drain refuses new sessions (`runtime::control`).
    pub draining: Arc<AtomicBool>,
}

/// Runs until shutdown on the chosen driver. Returns the counters.
pub fn run(spec: AcceptorSpec) -> Counters {
    let (mut core, udp, tcp, uring) = Core::new(spec);
    if uring {
        match uring::run(&mut core, &udp, &tcp) {
            Ok(()) => {
                core.publish(None, "io_uring", 0);
                return core.counters;
            }
            Err(e) => tracing::warn!(error = %e, "acceptor: io_uring unavailable, using poll(2)"),
        }
    }
    run_poll(&mut core, &udp, &tcp);
    core.publish(None, "poll", 0);
    core.counters
}

/// Best-effort LoggedOut(`why`), then close.
pub fn refuse(mut stream: TcpStream, why: &str) {
    let mut out = [0u8; 128];
    let msg = Message {
        header: Header { seq: 1, ..Header::default() },
        body: Body::LoggedOut { reason: why.as_bytes() },
    };
    if let Ok(n) = msg.encode(&mut out) {
        let _ = stream.write(&out[..n]);
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}
