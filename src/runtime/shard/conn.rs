//! A shard's per-connection state, one [`Conn`] per backend `ConnId`, allocated at start-up.

use std::net::SocketAddr;

use crate::protocol::{Deframer, DeviceUid};
use crate::time::Timestamp;

/// One TCP connection of a shard, indexed by its `ConnId`.
pub(super) struct Conn {
    /// Splits the byte stream into frames (capacity `tcp.max_message_bytes`).
    pub(super) deframer: Deframer,
    /// Its first frame (the LogonRequest) has gone to the endpoint.
    pub(super) started: bool,
    /// When the acceptor accepted it; `ZERO` once its logon time is recorded.
    pub(super) accepted_at: Timestamp,
    /// The peer.
    pub(super) peer: SocketAddr,
    /// The username of its LogonRequest (for traces).
    pub(super) who: DeviceUid,
    /// Closing: aborted at this deadline unless the peer closes first.
    pub(super) linger: Option<Linger>,
}

/// A connection the shard is closing: aborted at `deadline` unless closed before.
#[derive(Clone, Copy, Debug)]
pub(super) struct Linger {
    pub(super) deadline: Timestamp,
    /// Closed as a slow reader (for the counters).
    pub(super) slow: bool,
}

impl Conn {
    pub(super) fn new(max_message_bytes: usize) -> Self {
        Self {
            deframer: Deframer::new(max_message_bytes),
            started: false,
            accepted_at: Timestamp::ZERO,
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            who: DeviceUid::default(),
            linger: None,
        }
    }

    /// Takes over the slot for a new connection from `peer`, accepted at `accepted_at`.
    pub(super) fn open(&mut self, peer: SocketAddr, accepted_at: Timestamp) {
        self.deframer.reset();
        self.started = false;
        self.accepted_at = accepted_at;
        self.peer = peer;
        self.who = DeviceUid::default();
        self.linger = None;
    }
}
