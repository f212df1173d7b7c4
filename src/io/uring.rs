//! The io_uring backend. See [`super`] for the contract.

use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::time::Duration;

use super::{Backend, BackendConfig, IoEvent, SendError};
use crate::session::ConnId;

/// Checks that io_uring can be set up here and supports the opcodes the backend uses.
pub fn probe() -> Result<(), String> {
    let ring = io_uring::IoUring::new(8).map_err(|e| format!("io_uring_setup: {e}"))?;
    let mut probe = io_uring::Probe::new();
    ring.submitter().register_probe(&mut probe).map_err(|e| format!("probe: {e}"))?;
    for (code, name) in [
        (io_uring::opcode::RecvMsgMulti::CODE, "RecvMsgMulti"),
        (io_uring::opcode::SendMsg::CODE, "SendMsg"),
        (io_uring::opcode::RecvMulti::CODE, "RecvMulti"),
        (io_uring::opcode::Send::CODE, "Send"),
        (io_uring::opcode::Read::CODE, "Read"),
        (io_uring::opcode::ProvideBuffers::CODE, "ProvideBuffers"),
    ] {
        if !probe.is_supported(code) {
            return Err(format!("opcode {name} not supported"));
        }
    }
    Err("the io_uring backend is not built yet".into())
}

/// The io_uring backend (not built yet: [`Uring::new`] fails and `auto` falls back to epoll).
pub struct Uring {
    _private: (),
}

impl Uring {
    /// Sets up the ring over the UDP socket and wake descriptor.
    pub fn new(_udp: UdpSocket, _wake: OwnedFd, _cfg: BackendConfig) -> std::io::Result<Self> {
        Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "the io_uring backend is not built yet",
        ))
    }
}

impl Backend for Uring {
    fn name(&self) -> &'static str {
        "io_uring"
    }
    fn poll(
        &mut self,
        _: Option<Duration>,
        _: &mut dyn FnMut(IoEvent<'_>),
    ) -> std::io::Result<usize> {
        Ok(0)
    }
    fn send_to(&mut self, _: SocketAddr, _: &[u8]) -> Result<(), SendError> {
        Err(SendError::Closed)
    }
    fn register_tcp(&mut self, _: TcpStream) -> std::io::Result<ConnId> {
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
    fn send_tcp(&mut self, _: ConnId, _: &[u8]) -> Result<(), SendError> {
        Err(SendError::Closed)
    }
    fn close_tcp(&mut self, _: ConnId) {}
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn dropped_sends(&self) -> u64 {
        0
    }
}
