//! The input of the `device` target: device settings and a sequence of operations.

use arbitrary::Arbitrary;

use crate::Text;
use crate::emit::input;

input! {
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
}

input! {
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
}

input! {
    /// The session id prefix of a datagram (ignored on TCP).
    #[derive(Arbitrary, Clone, Copy, Debug)]
    pub enum Prefix {
        /// The device's session id.
        Session,
        Zero,
        Raw(u64),
    }
}

/// A gateway message built from fields: its number relative to what the device expects.
pub type Frame = crate::Frame<Ack, GwBody>;

input! {
    /// `lastProcessedSeqNum` relative to what the device has numbered.
    #[derive(Arbitrary, Clone, Copy, Debug)]
    pub enum Ack {
        /// Everything numbered so far.
        All,
        /// `next_out - 1 + delta`.
        Delta(i8),
        Raw(i64),
    }
}

input! {
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
}
