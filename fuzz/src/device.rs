//! The input of the `device` target: device settings and a sequence of operations.

use arbitrary::Arbitrary;

use crate::emit::{Emit, variant};
use crate::{Seq, Text};

/// Settings, then the operations.
#[derive(Arbitrary, Clone, Debug)]
pub struct Input {
    /// TCP instead of UDP.
    pub tcp: bool,
    /// Retransmit buffer of `1 << (buffer % 6)` messages.
    pub buffer: u8,
    /// What happens, in order.
    pub ops: Vec<Op>,
}

/// One step; a driver's pass (timers, then every transmit) follows each.
#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    Connect {
        nonce: u8,
        reset: bool,
    },
    TransportLost,
    Logout,
    /// An application message of type `100 + type_id`.
    Send {
        type_id: u8,
        len: u8,
        expect_reply: bool,
    },
    /// A datagram (UDP) or stream bytes (TCP) from the gateway: frames built from fields, then
    /// raw bytes.
    Gateway {
        prefix: Prefix,
        frames: Vec<Frame>,
        tail: Vec<u8>,
    },
    Raw(Vec<u8>),
    Wait {
        ms: u16,
    },
    WaitForTimer,
}

/// The session id prefix of a datagram (ignored on TCP).
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Prefix {
    /// The device's session id.
    Session,
    Zero,
    Raw(u64),
}

/// A gateway message built from fields: its number relative to what the device expects.
#[derive(Arbitrary, Clone, Debug)]
pub struct Frame {
    pub seq: Seq,
    pub resend: bool,
    pub ack: Ack,
    pub body: GwBody,
}

/// `lastProcessedSeqNum` relative to what the device has numbered.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Ack {
    /// Everything numbered so far.
    All,
    /// `next_out - 1 + delta`.
    Delta(i8),
    Raw(i64),
}

/// The body of a [`Frame`].
#[derive(Arbitrary, Clone, Debug)]
pub enum GwBody {
    /// With the nonce of the last `connect` if `right_nonce`.
    ConnectionAccept {
        right_nonce: bool,
        nonce: u64,
        port: u16,
        cookie: [u8; 4],
    },
    ConnectionReject(u8, Text),
    RegistrationAccept {
        id: u64,
        resumed: bool,
    },
    RegistrationReject(u8),
    GetDeviceConfig(i64),
    LogonResponse(i32),
    Heartbeat(i64),
    TestRequest(i64),
    /// A GapFill `ahead` past its own number.
    GapFill {
        ahead: i8,
    },
    GapFillRaw(i64),
    Reject(i64, u8),
    LoggedOut(Text),
    App {
        type_id: u8,
        len: u8,
    },
    /// Messages only a device sends.
    ResendRequest(i64, i64),
    Logon {
        reset: bool,
    },
    Raw(Vec<u8>),
}

impl Emit for Input {
    fn emit(&self, out: &mut Vec<u8>) {
        self.tcp.emit(out);
        self.buffer.emit(out);
        self.ops.emit(out);
    }
}

impl Emit for Op {
    fn emit(&self, out: &mut Vec<u8>) {
        let n = 8;
        match self {
            Self::Connect { nonce, reset } => {
                variant(out, 0, n);
                (nonce, reset).emit(out);
            }
            Self::TransportLost => variant(out, 1, n),
            Self::Logout => variant(out, 2, n),
            Self::Send { type_id, len, expect_reply } => {
                variant(out, 3, n);
                (type_id, len, expect_reply).emit(out);
            }
            Self::Gateway { prefix, frames, tail } => {
                variant(out, 4, n);
                prefix.emit(out);
                frames.emit(out);
                tail.emit(out);
            }
            Self::Raw(bytes) => {
                variant(out, 5, n);
                bytes.emit(out);
            }
            Self::Wait { ms } => {
                variant(out, 6, n);
                ms.emit(out);
            }
            Self::WaitForTimer => variant(out, 7, n),
        }
    }
}

impl Emit for Prefix {
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Self::Session => variant(out, 0, 3),
            Self::Zero => variant(out, 1, 3),
            Self::Raw(id) => {
                variant(out, 2, 3);
                id.emit(out);
            }
        }
    }
}

impl Emit for Frame {
    fn emit(&self, out: &mut Vec<u8>) {
        self.seq.emit(out);
        self.resend.emit(out);
        self.ack.emit(out);
        self.body.emit(out);
    }
}

impl Emit for Ack {
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Self::All => variant(out, 0, 3),
            Self::Delta(d) => {
                variant(out, 1, 3);
                d.emit(out);
            }
            Self::Raw(v) => {
                variant(out, 2, 3);
                v.emit(out);
            }
        }
    }
}

impl Emit for GwBody {
    fn emit(&self, out: &mut Vec<u8>) {
        let n = 16;
        match self {
            Self::ConnectionAccept { right_nonce, nonce, port, cookie } => {
                variant(out, 0, n);
                right_nonce.emit(out);
                nonce.emit(out);
                port.emit(out);
                cookie.emit(out);
            }
            Self::ConnectionReject(r, t) => {
                variant(out, 1, n);
                r.emit(out);
                t.emit(out);
            }
            Self::RegistrationAccept { id, resumed } => {
                variant(out, 2, n);
                id.emit(out);
                resumed.emit(out);
            }
            Self::RegistrationReject(r) => {
                variant(out, 3, n);
                r.emit(out);
            }
            Self::GetDeviceConfig(c) => {
                variant(out, 4, n);
                c.emit(out);
            }
            Self::LogonResponse(h) => {
                variant(out, 5, n);
                h.emit(out);
            }
            Self::Heartbeat(c) => {
                variant(out, 6, n);
                c.emit(out);
            }
            Self::TestRequest(c) => {
                variant(out, 7, n);
                c.emit(out);
            }
            Self::GapFill { ahead } => {
                variant(out, 8, n);
                ahead.emit(out);
            }
            Self::GapFillRaw(s) => {
                variant(out, 9, n);
                s.emit(out);
            }
            Self::Reject(r, reason) => {
                variant(out, 10, n);
                r.emit(out);
                reason.emit(out);
            }
            Self::LoggedOut(t) => {
                variant(out, 11, n);
                t.emit(out);
            }
            Self::App { type_id, len } => {
                variant(out, 12, n);
                (type_id, len).emit(out);
            }
            Self::ResendRequest(from, to) => {
                variant(out, 13, n);
                from.emit(out);
                to.emit(out);
            }
            Self::Logon { reset } => {
                variant(out, 14, n);
                reset.emit(out);
            }
            Self::Raw(bytes) => {
                variant(out, 15, n);
                bytes.emit(out);
            }
        }
    }
}
