//! The input of the `endpoint` target: gateway settings and a sequence of operations.

use arbitrary::Arbitrary;

use crate::Text;
use crate::emit::input;

input! {
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
}

input! {
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
}

input! {
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
}

input! {
    /// The session id prefix of a datagram.
    #[derive(Arbitrary, Clone, Copy, Debug)]
    pub enum Prefix {
        /// One of the session ids the gateway handed out.
        Session(u8),
        Zero,
        Raw(u64),
    }
}

/// A message built from fields (`ack`: `lastProcessedSeqNum`, drawn from a byte).
pub type Frame = crate::Frame<u8, FrameBody>;

input! {
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
}

input! {
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
}
