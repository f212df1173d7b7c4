//! The input of the `endpoint` target: gateway settings and a sequence of operations.

use arbitrary::Arbitrary;

use crate::emit::{Emit, variant};
use crate::{Seq, Text};

/// Settings, then the operations.
#[derive(Arbitrary, Clone, Debug)]
pub struct Input {
    /// Journal of `1 << (journal % 5)` messages per session.
    pub journal: u8,
    /// `session_burst` of `1 + burst % 4`.
    pub burst: u8,
    /// Device groups by the first byte of the device config ('H', 'J', 'S', 'X').
    pub groups: bool,
    /// What happens, in order.
    pub ops: Vec<Op>,
}

/// One step; the driver's pass (timers, transmits within the room, events) follows each.
#[derive(Arbitrary, Clone, Debug)]
pub enum Op {
    /// A RegistrationRequest on the session port (prefix 0).
    Register { from: u8, uid: u8, nonce: u8, cookie: Cookie },
    /// A session datagram built from fields (`from: None`: the address the session registered
    /// from), then raw bytes.
    Udp { to: Prefix, from: Option<u8>, frames: Vec<Frame>, tail: Vec<u8> },
    /// Raw bytes on the session port.
    UdpRaw { from: u8, data: Vec<u8> },
    /// Bytes on a TCP connection (opened first if needed): frames built from fields, then raw.
    Tcp { conn: u8, from: u8, frames: Vec<Frame>, tail: Vec<u8> },
    /// The peer closed (or reset) the connection.
    TcpClose { conn: u8 },
    /// The driver could not queue a reply on this connection.
    TcpStalled { conn: u8 },
    /// The room the connection's send queue has from now on (`u16::MAX`: unlimited).
    Room { conn: u8, room: u16 },
    /// An application message (type `100 + type_id`) pushed to a session from outside.
    Push { session: u8, type_id: u8, len: u8 },
    /// Virtual time passes.
    Wait { ms: u16 },
    /// Virtual time jumps to the next deadline.
    WaitForTimer,
    /// The cookie secret rotates.
    RotateKeys,
    /// The gateway drains.
    Shutdown,
}

/// The cookie of a RegistrationRequest.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Cookie {
    /// Made `age_s % 16` seconds ago for this request (expired once older than the TTL).
    Valid { age_s: u8 },
    /// Made for another address.
    WrongPeer,
    /// Made under the previous secret.
    Previous,
    /// Anything.
    Garbage([u8; 32]),
}

/// The session id prefix of a datagram.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum Prefix {
    /// One of the session ids the gateway handed out.
    Session(u8),
    Zero,
    Raw(u64),
}

/// A message built from fields.
#[derive(Arbitrary, Clone, Debug)]
pub struct Frame {
    pub seq: Seq,
    pub resend: bool,
    pub ack: u8,
    pub body: FrameBody,
}

/// The body of a [`Frame`].
#[derive(Arbitrary, Clone, Debug)]
pub enum FrameBody {
    /// LogonRequest for `USERS[user % 4]`, with the right password if `good`.
    Logon {
        user: u8,
        good: bool,
        reset: bool,
    },
    Heartbeat(i64),
    TestRequest(i64),
    /// A ResendRequest from `back` before the last number this stream received live, for `len`
    /// more (or everything, `to = 0`).
    Resend {
        back: u8,
        len: u8,
        all: bool,
    },
    ResendRaw {
        from: i64,
        to: i64,
    },
    Logout(Text),
    App {
        type_id: u8,
        len: u8,
    },
    /// DeviceConfig answering the last GetDeviceConfig if `right`.
    DeviceConfig {
        right: bool,
        corr: i64,
        config: Text,
    },
    Registration {
        uid: u8,
        nonce: u8,
        cookie: Cookie,
    },
    /// A message only the gateway sends.
    Wrong(WrongBody),
    /// Raw bytes where a frame would be.
    Raw(Vec<u8>),
}

/// Messages in the wrong direction.
#[derive(Arbitrary, Clone, Copy, Debug)]
pub enum WrongBody {
    LogonResponse(i32),
    GapFill(i64),
    Reject(i64, u8),
    LoggedOut,
    ConnectionRequest(u8, u16),
    GetDeviceConfig(i64),
    RegistrationAccept(u64, bool),
}

impl Emit for Input {
    fn emit(&self, out: &mut Vec<u8>) {
        self.journal.emit(out);
        self.burst.emit(out);
        self.groups.emit(out);
        self.ops.emit(out);
    }
}

impl Emit for Op {
    fn emit(&self, out: &mut Vec<u8>) {
        let n = 12;
        match self {
            Self::Register { from, uid, nonce, cookie } => {
                variant(out, 0, n);
                (from, uid, nonce).emit(out);
                cookie.emit(out);
            }
            Self::Udp { to, from, frames, tail } => {
                variant(out, 1, n);
                to.emit(out);
                from.emit(out);
                frames.emit(out);
                tail.emit(out);
            }
            Self::UdpRaw { from, data } => {
                variant(out, 2, n);
                from.emit(out);
                data.emit(out);
            }
            Self::Tcp { conn, from, frames, tail } => {
                variant(out, 3, n);
                (conn, from).emit(out);
                frames.emit(out);
                tail.emit(out);
            }
            Self::TcpClose { conn } => {
                variant(out, 4, n);
                conn.emit(out);
            }
            Self::TcpStalled { conn } => {
                variant(out, 5, n);
                conn.emit(out);
            }
            Self::Room { conn, room } => {
                variant(out, 6, n);
                conn.emit(out);
                room.emit(out);
            }
            Self::Push { session, type_id, len } => {
                variant(out, 7, n);
                (session, type_id, len).emit(out);
            }
            Self::Wait { ms } => {
                variant(out, 8, n);
                ms.emit(out);
            }
            Self::WaitForTimer => variant(out, 9, n),
            Self::RotateKeys => variant(out, 10, n),
            Self::Shutdown => variant(out, 11, n),
        }
    }
}

impl Emit for Cookie {
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Self::Valid { age_s } => {
                variant(out, 0, 4);
                age_s.emit(out);
            }
            Self::WrongPeer => variant(out, 1, 4),
            Self::Previous => variant(out, 2, 4),
            Self::Garbage(c) => {
                variant(out, 3, 4);
                c.emit(out);
            }
        }
    }
}

impl Emit for Prefix {
    fn emit(&self, out: &mut Vec<u8>) {
        match self {
            Self::Session(i) => {
                variant(out, 0, 3);
                i.emit(out);
            }
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

impl Emit for FrameBody {
    fn emit(&self, out: &mut Vec<u8>) {
        let n = 11;
        match self {
            Self::Logon { user, good, reset } => {
                variant(out, 0, n);
                user.emit(out);
                (good, reset).emit(out);
            }
            Self::Heartbeat(c) => {
                variant(out, 1, n);
                c.emit(out);
            }
            Self::TestRequest(c) => {
                variant(out, 2, n);
                c.emit(out);
            }
            Self::Resend { back, len, all } => {
                variant(out, 3, n);
                (back, len).emit(out);
                all.emit(out);
            }
            Self::ResendRaw { from, to } => {
                variant(out, 4, n);
                from.emit(out);
                to.emit(out);
            }
            Self::Logout(t) => {
                variant(out, 5, n);
                t.emit(out);
            }
            Self::App { type_id, len } => {
                variant(out, 6, n);
                (type_id, len).emit(out);
            }
            Self::DeviceConfig { right, corr, config } => {
                variant(out, 7, n);
                right.emit(out);
                corr.emit(out);
                config.emit(out);
            }
            Self::Registration { uid, nonce, cookie } => {
                variant(out, 8, n);
                (uid, nonce).emit(out);
                cookie.emit(out);
            }
            Self::Wrong(w) => {
                variant(out, 9, n);
                w.emit(out);
            }
            Self::Raw(bytes) => {
                variant(out, 10, n);
                bytes.emit(out);
            }
        }
    }
}

impl Emit for WrongBody {
    fn emit(&self, out: &mut Vec<u8>) {
        let n = 7;
        match *self {
            Self::LogonResponse(h) => {
                variant(out, 0, n);
                h.emit(out);
            }
            Self::GapFill(s) => {
                variant(out, 1, n);
                s.emit(out);
            }
            Self::Reject(r, reason) => {
                variant(out, 2, n);
                r.emit(out);
                reason.emit(out);
            }
            Self::LoggedOut => variant(out, 3, n),
            Self::ConnectionRequest(u, v) => {
                variant(out, 4, n);
                u.emit(out);
                v.emit(out);
            }
            Self::GetDeviceConfig(c) => {
                variant(out, 5, n);
                c.emit(out);
            }
            Self::RegistrationAccept(id, r) => {
                variant(out, 6, n);
                id.emit(out);
                r.emit(out);
            }
        }
    }
}
