//! The acceptor → shard handoff (DESIGN.md §3): a TCP connection whose LogonRequest the acceptor
//! has read, moved to the chosen shard over that shard's SPSC queue (`rtrb`) and followed by a
//! write to the shard's eventfd.

use std::net::{SocketAddr, TcpStream};

use crate::time::Timestamp;

/// Bytes of a TCP connection the acceptor read before handing it over (the LogonRequest and
/// anything after it).
pub const HANDOFF_BYTES: usize = 512;

/// A TCP connection handed from the acceptor to its shard.
#[derive(Debug)]
pub struct Handoff {
    /// The connected socket.
    pub stream: TcpStream,
    /// The peer.
    pub peer: SocketAddr,
    /// Bytes already read, starting with the LogonRequest frame.
    pub initial: [u8; HANDOFF_BYTES],
    /// How many of `initial` are valid.
    pub len: usize,
    /// When the acceptor accepted the connection (for the handshake-time histogram).
    pub accepted: Timestamp,
}
