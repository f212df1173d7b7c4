//! An in-memory [`Backend`] for driving a runtime `Shard` in virtual time: the test pushes
//! input ([`MemBackend::deliver`], [`MemBackend::deliver_tcp`]) and takes what the shard sent
//! ([`MemBackend::take_sent`]). Nothing touches a socket: a TCP connection is opened with
//! [`MemBackend::open_tcp`] (a handoff's socket cannot be adopted: `register_tcp` refuses).
//! An outbound connection (`connect_tcp`, a host) is recorded ([`MemBackend::connects`]) and
//! stays connecting until the test decides: [`MemBackend::accept_connect`] or
//! [`MemBackend::refuse_connect`]; reading it can be paused ([`MemBackend::is_reading`]).

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::ids::ConnId;
use crate::io::{Backend, ConnectOpts, IoEvent, SendError};

/// Input waiting for the next `poll`.
#[derive(Debug)]
enum Input {
    Datagram(SocketAddr, Vec<u8>),
    Tcp(ConnId, Vec<u8>),
    Closed(ConnId),
    Connected(ConnId),
    ConnectFailed(ConnId, i32),
}

/// Output the shard handed over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sent {
    /// A datagram to an address.
    Datagram(SocketAddr, Vec<u8>),
    /// Bytes on a connection.
    Tcp(ConnId, Vec<u8>),
}

/// The in-memory backend (see the module docs).
#[derive(Debug, Default)]
pub struct MemBackend {
    input: VecDeque<Input>,
    sent: Vec<Sent>,
    /// Per connection id: open, and closing (after `close_tcp`).
    conns: Vec<(bool, bool)>,
    /// Outbound connections asked for, in order: id and address.
    connects: Vec<(ConnId, SocketAddr)>,
    /// Connections whose reading is paused.
    paused: Vec<ConnId>,
    /// `connect_tcp` fails with this errno (`EMFILE`: out of descriptors) while set.
    pub connect_error: Option<i32>,
}

impl MemBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a datagram from `from` for the next poll.
    pub fn deliver(&mut self, from: SocketAddr, data: &[u8]) {
        self.input.push_back(Input::Datagram(from, data.to_vec()));
    }

    /// Opens a connection (as if registered) and returns its id.
    pub fn open_tcp(&mut self) -> ConnId {
        let id = match self.conns.iter().position(|&(open, _)| !open) {
            Some(i) => i,
            None => {
                self.conns.push((false, false));
                self.conns.len() - 1
            }
        };
        self.conns[id] = (true, false);
        ConnId(id as u32)
    }

    /// Queues bytes arriving on `conn` for the next poll.
    pub fn deliver_tcp(&mut self, conn: ConnId, data: &[u8]) {
        self.input.push_back(Input::Tcp(conn, data.to_vec()));
    }

    /// Outbound connections asked for so far: id and address.
    pub fn connects(&self) -> &[(ConnId, SocketAddr)] {
        &self.connects
    }

    /// Completes the outbound connection `conn`.
    pub fn accept_connect(&mut self, conn: ConnId) {
        self.input.push_back(Input::Connected(conn));
    }

    /// Fails the outbound connection `conn` with `errno`; it is closed after.
    pub fn refuse_connect(&mut self, conn: ConnId, errno: i32) {
        self.input.push_back(Input::ConnectFailed(conn, errno));
        self.close(conn);
    }

    /// The peer of `conn` closes it (end of stream).
    pub fn peer_close(&mut self, conn: ConnId) {
        self.close(conn);
    }

    /// False while the shard has paused reading `conn`.
    pub fn is_reading(&self, conn: ConnId) -> bool {
        !self.paused.contains(&conn)
    }

    /// What the shard sent since the last call.
    pub fn take_sent(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.sent)
    }

    /// True while `conn` is open (not closed or aborted by the shard).
    pub fn is_open(&self, conn: ConnId) -> bool {
        self.conns.get(conn.0 as usize).is_some_and(|&(open, closing)| open && !closing)
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(conn.0 as usize) {
            if c.0 && !c.1 {
                c.1 = true;
                self.input.push_back(Input::Closed(conn));
            }
        }
    }
}

impl Backend for MemBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn poll(
        &mut self,
        _timeout: Option<Duration>,
        on_event: &mut dyn FnMut(IoEvent<'_>),
    ) -> std::io::Result<usize> {
        // Virtual time: never waits. One batch: what is queued now.
        let mut n = 0;
        for _ in 0..self.input.len() {
            let Some(i) = self.input.pop_front() else { break };
            n += 1;
            match i {
                Input::Datagram(from, data) => on_event(IoEvent::Datagram { from, data: &data }),
                Input::Tcp(conn, data) => {
                    if self.is_open(conn) {
                        on_event(IoEvent::TcpData { conn, data: &data });
                    }
                }
                Input::Closed(conn) => {
                    self.conns[conn.0 as usize] = (false, false);
                    self.paused.retain(|&c| c != conn);
                    on_event(IoEvent::TcpClosed { conn });
                }
                Input::Connected(conn) => on_event(IoEvent::TcpConnected { conn }),
                Input::ConnectFailed(conn, errno) => {
                    on_event(IoEvent::TcpConnectFailed { conn, errno });
                }
            }
        }
        Ok(n)
    }

    fn send_to(&mut self, to: SocketAddr, data: &[u8]) -> Result<(), SendError> {
        self.sent.push(Sent::Datagram(to, data.to_vec()));
        Ok(())
    }

    fn register_tcp(&mut self, _stream: TcpStream) -> std::io::Result<ConnId> {
        Err(std::io::Error::new(std::io::ErrorKind::Unsupported, "in-memory backend"))
    }

    fn connect_tcp(&mut self, addr: SocketAddr, _opts: ConnectOpts) -> std::io::Result<ConnId> {
        if let Some(errno) = self.connect_error {
            return Err(std::io::Error::from_raw_os_error(errno));
        }
        let conn = self.open_tcp();
        self.connects.push((conn, addr));
        Ok(conn)
    }

    fn set_tcp_reading(&mut self, conn: ConnId, on: bool) {
        self.paused.retain(|&c| c != conn);
        if !on {
            self.paused.push(conn);
        }
    }

    fn send_tcp(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        if !self.is_open(conn) {
            return Err(SendError::Closed);
        }
        self.sent.push(Sent::Tcp(conn, data.to_vec()));
        Ok(())
    }

    fn tcp_room(&self, conn: ConnId) -> usize {
        if self.is_open(conn) { 1 << 20 } else { 0 }
    }

    fn close_tcp(&mut self, conn: ConnId) {
        self.close(conn);
    }

    fn send_tcp_last(&mut self, conn: ConnId, data: &[u8]) -> Result<(), SendError> {
        let r = self.send_tcp(conn, data);
        self.close(conn);
        r
    }

    fn abort_tcp(&mut self, conn: ConnId) {
        self.close(conn);
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }

    fn dropped_sends(&self) -> u64 {
        0
    }
}
