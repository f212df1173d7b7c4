//! Every message of DESIGN.md §1.2–§1.4, decoded as borrowed views and encoded into caller-owned
//! buffers.

use core::fmt;

use super::codec::{
    DecodeError, EncodeError, Field, Reader, Writer, align8, fixed_chars, is_printable, var_chars,
};
use super::header::{FLAG_RESEND, HEADER_LEN, Header};

wire_enum! {
    /// The `messageTypeId` values with a fixed meaning. Types `0x0064` (100) and above are
    /// application messages ([`Body::App`]).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub enum MessageType: u16 {
        /// C→S, first message of a session.
        LogonRequest = 0x0001,
        /// S→C, logon accepted.
        LogonResponse = 0x0002,
        /// C→S, graceful end.
        LogoutRequest = 0x0004,
        /// S→C, the session ends.
        LoggedOut = 0x0005,
        /// Both, liveness and acknowledgement.
        Heartbeat = 0x000a,
        /// Both, asks for a Heartbeat echoing the correlation id.
        TestRequest = 0x000b,
        /// C→S, asks for a range of server messages again.
        ResendRequest = 0x0014,
        /// S→C, stands for a run of non-journaled messages during a resend.
        GapFill = 0x0015,
        /// S→C, a message was refused.
        Reject = 0x001e,
        /// C→handshake port.
        ConnectionRequest = 0x0032,
        /// Handshake port→C.
        ConnectionAccept = 0x0033,
        /// Handshake port→C.
        ConnectionReject = 0x0034,
        /// C→session port.
        RegistrationRequest = 0x0035,
        /// Session port→C.
        RegistrationAccept = 0x0036,
        /// Session port→C.
        RegistrationReject = 0x0037,
        /// S→C, asks for the device config.
        GetDeviceConfig = 0x0038,
        /// C→S, the device config string.
        DeviceConfig = 0x0039,
    }

    /// Maps a wire type id to a known type (`None` for application or unknown ids).
    fn from_u16;
}

/// First `messageTypeId` of application messages.
pub const APP_TYPE_MIN: u16 = 0x0064;

impl MessageType {
    /// True for the handshake messages 50–57, which carry sequence number 0.
    pub fn is_handshake(self) -> bool {
        (self as u16) >= 0x0032
    }
}

wire_enum! {
    /// `Reject.reason` (DESIGN.md §1.2).
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum RejectReason: u8 {
        /// `protocolId` or `version` wrong.
        InvalidProtocol = 1,
        /// `messageTypeId` unknown.
        UnknownMessageType = 2,
        /// `messageLength` wrong for the type.
        InvalidLength = 3,
        /// A field is out of range.
        InvalidFieldValue = 4,
        /// Wrong direction or state.
        MessageNotAllowed = 5,
        /// The gateway is draining.
        GatewayNotActive = 6,
        /// Too many messages.
        RateLimited = 7,
    }

    /// Maps a wire value; `None` outside 1..=7.
    fn from_u8;
}

/// `ConnectionReject.reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConnectionRejectReason {
    /// No room for another session.
    ServerFull = 1,
    /// `clientVersion` is not 1.
    UnsupportedVersion = 2,
    /// The gateway is shutting down.
    Draining = 3,
    /// Too many requests from this source.
    RateLimited = 4,
    /// The request was malformed.
    Malformed = 5,
}

/// `RegistrationReject.reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RegistrationRejectReason {
    /// The cookie does not verify.
    BadCookie = 1,
    /// The cookie is past its expiry.
    CookieExpired = 2,
    /// No room for another session.
    ServerFull = 3,
    /// The gateway is shutting down.
    Draining = 4,
}

/// A fixed-width `char[N]` value: printable ASCII right-padded with NUL.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FixedStr<const N: usize>([u8; N]);

impl<const N: usize> FixedStr<N> {
    /// Builds the padded field from `value`; fails if longer than `N` or not printable ASCII.
    pub fn new(value: &[u8]) -> Option<Self> {
        if value.len() > N || !value.iter().all(|&b| is_printable(b)) {
            return None;
        }
        let mut raw = [0u8; N];
        raw[..value.len()].copy_from_slice(value);
        Some(Self(raw))
    }

    /// The value: the bytes before the first NUL.
    pub fn as_bytes(&self) -> &[u8] {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(N);
        &self.0[..end]
    }

    /// The value as text (always valid: the bytes are printable ASCII).
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(self.as_bytes()).unwrap_or("")
    }

    /// The padded wire bytes.
    pub fn raw(&self) -> &[u8; N] {
        &self.0
    }

    /// True if the value is empty.
    pub fn is_empty(&self) -> bool {
        self.0[0] == 0
    }

    fn decode(raw: &[u8; N], field: Field) -> Result<Self, DecodeError> {
        fixed_chars(raw, field)?;
        Ok(Self(*raw))
    }
}

impl<const N: usize> Default for FixedStr<N> {
    /// The empty value (all NUL).
    fn default() -> Self {
        Self([0; N])
    }
}

impl<const N: usize> fmt::Debug for FixedStr<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.as_str())
    }
}

/// `deviceUid`: char[16].
pub type DeviceUid = FixedStr<16>;
/// `username`: char[16].
pub type Username = FixedStr<16>;
/// `password`: char[32].
pub type Password = FixedStr<32>;

/// A message body. Variable-length fields borrow from the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body<'a> {
    /// Type 1.
    LogonRequest {
        /// char[16].
        username: Username,
        /// char[32].
        password: Password,
        /// `resetSeqNum` = 1.
        reset_seq_num: bool,
    },
    /// Type 2.
    LogonResponse {
        /// Seconds between heartbeats the gateway expects.
        heartbeat_interval_s: i32,
    },
    /// Type 4.
    LogoutRequest {
        /// Printable ASCII, at most 255 bytes.
        reason: &'a [u8],
    },
    /// Type 5.
    LoggedOut {
        /// Printable ASCII, at most 255 bytes.
        reason: &'a [u8],
    },
    /// Type 10.
    Heartbeat {
        /// Echo of a TestRequest, else 0.
        correlation_id: i64,
    },
    /// Type 11.
    TestRequest {
        /// Value to echo.
        correlation_id: i64,
    },
    /// Type 20.
    ResendRequest {
        /// First sequence number wanted.
        from: i64,
        /// Last wanted, or 0 for everything after `from`.
        to: i64,
    },
    /// Type 21.
    GapFill {
        /// Sequence number of the next message after the gap.
        new_seq_num: i64,
    },
    /// Type 30.
    Reject {
        /// Sequence number of the refused message.
        ref_seq_num: i64,
        /// Raw reason (see [`RejectReason`]).
        reason: u8,
        /// Printable ASCII.
        details: &'a [u8],
    },
    /// Type 50.
    ConnectionRequest {
        /// char[16].
        device_uid: DeviceUid,
        /// Client's random nonce.
        client_nonce: u64,
        /// Must be 1.
        client_version: u16,
    },
    /// Type 51.
    ConnectionAccept {
        /// The shard's session port.
        session_port: u16,
        /// How long the cookie stays valid.
        cookie_ttl_ms: u32,
        /// Echo of the request's nonce.
        client_nonce: u64,
        /// Opaque cookie to echo in the RegistrationRequest.
        cookie: [u8; 32],
    },
    /// Type 52.
    ConnectionReject {
        /// Raw reason (see [`ConnectionRejectReason`]).
        reason: u8,
        /// At most 90 printable bytes.
        details: &'a [u8],
    },
    /// Type 53.
    RegistrationRequest {
        /// char[16].
        device_uid: DeviceUid,
        /// Same nonce as the ConnectionRequest.
        client_nonce: u64,
        /// Echo of the ConnectionAccept cookie.
        cookie: [u8; 32],
    },
    /// Type 54.
    RegistrationAccept {
        /// The session's id, prefixed to every later datagram.
        session_id: u64,
        /// True if an existing session was resumed.
        resumed: bool,
    },
    /// Type 55.
    RegistrationReject {
        /// Raw reason (see [`RegistrationRejectReason`]).
        reason: u8,
        /// At most 50 printable bytes.
        details: &'a [u8],
    },
    /// Type 56.
    GetDeviceConfig {
        /// Echoed in DeviceConfig.
        correlation_id: i64,
    },
    /// Type 57.
    DeviceConfig {
        /// Echo of GetDeviceConfig.
        correlation_id: i64,
        /// Tilde-separated printable ASCII, at most 255 bytes.
        config: &'a [u8],
    },
    /// Types 100 and above: opaque body.
    App {
        /// `messageTypeId` (≥ 100).
        type_id: u16,
        /// The opaque body.
        body: &'a [u8],
    },
}

/// Maximum `details` length in ConnectionReject (keeps it below the 128-byte request).
pub const CONNECTION_REJECT_DETAILS_MAX: usize = 90;
/// Maximum `details` length in RegistrationReject (keeps it below the 88-byte request).
pub const REGISTRATION_REJECT_DETAILS_MAX: usize = 50;
/// `messageLength` of a ConnectionRequest; shorter requests are dropped.
pub const CONNECTION_REQUEST_LEN: usize = 128;

impl Body<'_> {
    /// The `messageTypeId` of this body.
    pub fn type_id(&self) -> u16 {
        match self {
            Self::App { type_id, .. } => *type_id,
            other => other.message_type().map_or(0, |t| t as u16),
        }
    }

    /// The known type, or `None` for application messages.
    pub fn message_type(&self) -> Option<MessageType> {
        Some(match self {
            Self::LogonRequest { .. } => MessageType::LogonRequest,
            Self::LogonResponse { .. } => MessageType::LogonResponse,
            Self::LogoutRequest { .. } => MessageType::LogoutRequest,
            Self::LoggedOut { .. } => MessageType::LoggedOut,
            Self::Heartbeat { .. } => MessageType::Heartbeat,
            Self::TestRequest { .. } => MessageType::TestRequest,
            Self::ResendRequest { .. } => MessageType::ResendRequest,
            Self::GapFill { .. } => MessageType::GapFill,
            Self::Reject { .. } => MessageType::Reject,
            Self::ConnectionRequest { .. } => MessageType::ConnectionRequest,
            Self::ConnectionAccept { .. } => MessageType::ConnectionAccept,
            Self::ConnectionReject { .. } => MessageType::ConnectionReject,
            Self::RegistrationRequest { .. } => MessageType::RegistrationRequest,
            Self::RegistrationAccept { .. } => MessageType::RegistrationAccept,
            Self::RegistrationReject { .. } => MessageType::RegistrationReject,
            Self::GetDeviceConfig { .. } => MessageType::GetDeviceConfig,
            Self::DeviceConfig { .. } => MessageType::DeviceConfig,
            Self::App { .. } => return None,
        })
    }

    /// Body length in bytes (without header or padding).
    pub fn len(&self) -> usize {
        match self {
            Self::LogonRequest { .. } => 49,
            Self::LogonResponse { .. } => 4,
            Self::LogoutRequest { reason } | Self::LoggedOut { reason } => 1 + reason.len(),
            Self::Heartbeat { .. } | Self::TestRequest { .. } | Self::GapFill { .. } => 8,
            Self::GetDeviceConfig { .. } => 8,
            Self::ResendRequest { .. } => 16,
            Self::Reject { details, .. } => 10 + details.len(),
            Self::ConnectionRequest { .. } => 96,
            Self::ConnectionAccept { .. } => 48,
            Self::ConnectionReject { details, .. } | Self::RegistrationReject { details, .. } => {
                2 + details.len()
            }
            Self::RegistrationRequest { .. } => 56,
            Self::RegistrationAccept { .. } => 16,
            Self::DeviceConfig { config, .. } => 9 + config.len(),
            Self::App { body, .. } => body.len(),
        }
    }

    /// True if the body has no bytes (only possible for application messages).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Validates the string fields and lengths that decoding would check.
    fn validate(&self) -> Result<(), EncodeError> {
        let check = |s: &[u8], max: usize, field| {
            if s.len() <= max && s.iter().all(|&b| is_printable(b)) {
                Ok(())
            } else {
                Err(EncodeError::InvalidField(field))
            }
        };
        match self {
            Self::LogoutRequest { reason } | Self::LoggedOut { reason } => {
                check(reason, 255, Field::Reason)
            }
            Self::Reject { details, .. } => check(details, 255, Field::Details),
            Self::ConnectionReject { details, .. } => {
                check(details, CONNECTION_REJECT_DETAILS_MAX, Field::Details)
            }
            Self::RegistrationReject { details, .. } => {
                check(details, REGISTRATION_REJECT_DETAILS_MAX, Field::Details)
            }
            Self::DeviceConfig { config, .. } => check(config, 255, Field::Config),
            Self::App { type_id, .. } if *type_id < APP_TYPE_MIN => {
                Err(EncodeError::InvalidField(Field::TypeId))
            }
            Self::App { body, .. } if body.len() > usize::from(u16::MAX) - HEADER_LEN => {
                Err(EncodeError::BodyTooLong)
            }
            _ => Ok(()),
        }
    }

    fn encode(&self, w: &mut Writer<'_>) {
        match *self {
            Self::LogonRequest { username, password, reset_seq_num } => {
                w.put(username.raw());
                w.put(password.raw());
                w.u8(u8::from(reset_seq_num));
            }
            Self::LogonResponse { heartbeat_interval_s } => w.i32(heartbeat_interval_s),
            Self::LogoutRequest { reason } | Self::LoggedOut { reason } => {
                w.u8(reason.len() as u8);
                w.put(reason);
            }
            Self::Heartbeat { correlation_id }
            | Self::TestRequest { correlation_id }
            | Self::GetDeviceConfig { correlation_id } => w.i64(correlation_id),
            Self::ResendRequest { from, to } => {
                w.i64(from);
                w.i64(to);
            }
            Self::GapFill { new_seq_num } => w.i64(new_seq_num),
            Self::Reject { ref_seq_num, reason, details } => {
                w.i64(ref_seq_num);
                w.u8(reason);
                w.u8(details.len() as u8);
                w.put(details);
            }
            Self::ConnectionRequest { device_uid, client_nonce, client_version } => {
                w.put(device_uid.raw());
                w.u64(client_nonce);
                w.u16(client_version);
                w.zeros(96 - 26);
            }
            Self::ConnectionAccept { session_port, cookie_ttl_ms, client_nonce, cookie } => {
                w.u16(session_port);
                w.u16(0);
                w.u32(cookie_ttl_ms);
                w.u64(client_nonce);
                w.put(&cookie);
            }
            Self::ConnectionReject { reason, details }
            | Self::RegistrationReject { reason, details } => {
                w.u8(reason);
                w.u8(details.len() as u8);
                w.put(details);
            }
            Self::RegistrationRequest { device_uid, client_nonce, cookie } => {
                w.put(device_uid.raw());
                w.u64(client_nonce);
                w.put(&cookie);
            }
            Self::RegistrationAccept { session_id, resumed } => {
                w.u64(session_id);
                w.u8(u8::from(resumed));
                w.zeros(7);
            }
            Self::DeviceConfig { correlation_id, config } => {
                w.i64(correlation_id);
                w.u8(config.len() as u8);
                w.put(config);
            }
            Self::App { body, .. } => w.put(body),
        }
    }
}

/// A whole message: header plus body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The header; `length` and `type_id` agree with `body` after decode, and are recomputed
    /// from `body` on encode.
    pub header: Header,
    /// The body.
    pub body: Body<'a>,
}

impl<'a> Message<'a> {
    /// Padded length on the wire.
    pub fn encoded_len(&self) -> usize {
        align8(HEADER_LEN + self.body.len())
    }

    /// Encodes header, body and zero padding into `buf`; returns the padded length.
    ///
    /// `header.length` and `header.type_id` are taken from the body, not from `header`.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        self.body.validate()?;
        // Refuse what the decoder would refuse, so an encoder bug cannot put it on the wire.
        let h = &self.header;
        if h.flags & !FLAG_RESEND != 0 {
            return Err(EncodeError::InvalidField(Field::Flags));
        }
        let handshake = self.body.message_type().is_some_and(MessageType::is_handshake);
        if h.seq < 0 || (handshake && h.seq != 0) {
            return Err(EncodeError::InvalidField(Field::SequenceNum));
        }
        if h.last_processed < 0 {
            return Err(EncodeError::InvalidField(Field::LastProcessedSeqNum));
        }
        let len = HEADER_LEN + self.body.len();
        let padded = align8(len);
        if buf.len() < padded {
            return Err(EncodeError::BufferTooSmall { needed: padded });
        }
        let mut w = Writer::new(&mut buf[..padded]);
        let header = Header { length: len as u16, type_id: self.body.type_id(), ..self.header };
        header.encode(&mut w);
        self.body.encode(&mut w);
        w.zeros(padded - len);
        let written = w.finish()?;
        debug_assert_eq!(written, padded);
        Ok(written)
    }

    /// Decodes one message from the start of `buf`, which must hold the whole padded message.
    /// Returns the message and the padded length it occupied.
    pub fn decode(buf: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let (frame, padded) = split_frame(buf)?;
        Ok((Self::decode_frame(frame)?, padded))
    }

    /// Decodes a frame whose length is exactly `messageLength` (no padding), as returned by
    /// [`split_frame`] or the stream deframer.
    pub fn decode_frame(frame: &'a [u8]) -> Result<Self, DecodeError> {
        let header = Header::decode(frame)?;
        let len = usize::from(header.length);
        if len > frame.len() {
            return Err(DecodeError::Truncated { needed: len });
        }
        if len < frame.len() {
            return Err(DecodeError::TrailingBytes(frame.len() - len));
        }
        let body = decode_body(&header, &frame[HEADER_LEN..])?;
        Ok(Self { header, body })
    }
}

/// Splits the first message off `buf`: returns the frame (exactly `messageLength` bytes) and
/// the padded length. Checks the header, the length and that the padding is zero; the body is
/// not checked.
pub fn split_frame(buf: &[u8]) -> Result<(&[u8], usize), DecodeError> {
    if buf.len() < HEADER_LEN {
        // Check the first byte early so garbage is named as such rather than as "truncated".
        if let Some(&p) = buf.first().filter(|&&p| p != super::PROTOCOL_ID) {
            return Err(DecodeError::InvalidProtocolId(p));
        }
        return Err(DecodeError::Truncated { needed: HEADER_LEN });
    }
    let header = Header::decode(buf)?;
    let len = usize::from(header.length);
    let padded = align8(len);
    if buf.len() < padded {
        return Err(DecodeError::Truncated { needed: padded });
    }
    if buf[len..padded].iter().any(|&b| b != 0) {
        return Err(DecodeError::NonZeroPadding);
    }
    Ok((&buf[..len], padded))
}

fn decode_body<'a>(header: &Header, body: &'a [u8]) -> Result<Body<'a>, DecodeError> {
    let type_id = header.type_id;
    let declared = header.length;
    let mismatch = |expected: usize| DecodeError::LengthMismatch { type_id, declared, expected };
    if type_id >= APP_TYPE_MIN {
        return Ok(Body::App { type_id, body });
    }
    let Some(ty) = MessageType::from_u16(type_id) else {
        return Err(DecodeError::UnknownMessageType(type_id));
    };
    if ty.is_handshake() && header.seq != 0 {
        return Err(DecodeError::InvalidFieldValue(Field::SequenceNum));
    }
    // Fixed-size types must match exactly; variable ones are checked against their own length
    // byte below.
    let fixed = match ty {
        MessageType::LogonRequest => Some(49),
        MessageType::LogonResponse => Some(4),
        MessageType::Heartbeat
        | MessageType::TestRequest
        | MessageType::GapFill
        | MessageType::GetDeviceConfig => Some(8),
        MessageType::ResendRequest => Some(16),
        MessageType::ConnectionRequest => Some(96),
        MessageType::ConnectionAccept => Some(48),
        MessageType::RegistrationRequest => Some(56),
        MessageType::RegistrationAccept => Some(16),
        _ => None,
    };
    if let Some(n) = fixed.filter(|&n| n != body.len()) {
        return Err(mismatch(HEADER_LEN + n));
    }
    let mut r = Reader::new(body);
    // A variable body: `prefix` fixed bytes, then a u8 length at `len_at`, then that many chars.
    let var = |prefix: usize, max: usize| -> Result<&'a [u8], DecodeError> {
        let Some(&n) = body.get(prefix - 1) else {
            return Err(mismatch(HEADER_LEN + prefix));
        };
        let n = usize::from(n);
        if body.len() != prefix + n {
            return Err(mismatch(HEADER_LEN + prefix + n));
        }
        if n > max {
            return Err(DecodeError::InvalidFieldValue(Field::Details));
        }
        Ok(&body[prefix..])
    };
    let out = match ty {
        MessageType::LogonRequest => {
            let username = Username::decode(r.take_array()?, Field::Username)?;
            let password = Password::decode(r.take_array()?, Field::Password)?;
            let reset_seq_num = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::InvalidFieldValue(Field::ResetSeqNum)),
            };
            Body::LogonRequest { username, password, reset_seq_num }
        }
        MessageType::LogonResponse => Body::LogonResponse { heartbeat_interval_s: r.i32()? },
        MessageType::LogoutRequest => {
            Body::LogoutRequest { reason: var_chars(var(1, 255)?, Field::Reason)? }
        }
        MessageType::LoggedOut => {
            Body::LoggedOut { reason: var_chars(var(1, 255)?, Field::Reason)? }
        }
        MessageType::Heartbeat => Body::Heartbeat { correlation_id: r.i64()? },
        MessageType::TestRequest => Body::TestRequest { correlation_id: r.i64()? },
        MessageType::ResendRequest => Body::ResendRequest { from: r.i64()?, to: r.i64()? },
        MessageType::GapFill => Body::GapFill { new_seq_num: r.i64()? },
        MessageType::Reject => {
            let details = var_chars(var(10, 255)?, Field::Details)?;
            Body::Reject { ref_seq_num: r.i64()?, reason: r.u8()?, details }
        }
        MessageType::ConnectionRequest => {
            let device_uid = DeviceUid::decode(r.take_array()?, Field::DeviceUid)?;
            let client_nonce = r.u64()?;
            let client_version = r.u16()?;
            if r.rest().iter().any(|&b| b != 0) {
                return Err(DecodeError::InvalidFieldValue(Field::Reserved));
            }
            Body::ConnectionRequest { device_uid, client_nonce, client_version }
        }
        MessageType::ConnectionAccept => {
            let session_port = r.u16()?;
            if r.u16()? != 0 {
                return Err(DecodeError::InvalidFieldValue(Field::Reserved));
            }
            Body::ConnectionAccept {
                session_port,
                cookie_ttl_ms: r.u32()?,
                client_nonce: r.u64()?,
                cookie: *r.take_array()?,
            }
        }
        MessageType::ConnectionReject => {
            let details = var_chars(var(2, CONNECTION_REJECT_DETAILS_MAX)?, Field::Details)?;
            Body::ConnectionReject { reason: r.u8()?, details }
        }
        MessageType::RegistrationRequest => Body::RegistrationRequest {
            device_uid: DeviceUid::decode(r.take_array()?, Field::DeviceUid)?,
            client_nonce: r.u64()?,
            cookie: *r.take_array()?,
        },
        MessageType::RegistrationAccept => {
            let session_id = r.u64()?;
            let resumed = match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::InvalidFieldValue(Field::Resumed)),
            };
            if r.rest().iter().any(|&b| b != 0) {
                return Err(DecodeError::InvalidFieldValue(Field::Reserved));
            }
            Body::RegistrationAccept { session_id, resumed }
        }
        MessageType::RegistrationReject => {
            let details = var_chars(var(2, REGISTRATION_REJECT_DETAILS_MAX)?, Field::Details)?;
            Body::RegistrationReject { reason: r.u8()?, details }
        }
        MessageType::GetDeviceConfig => Body::GetDeviceConfig { correlation_id: r.i64()? },
        MessageType::DeviceConfig => {
            let config = var_chars(var(9, 255)?, Field::Config)?;
            Body::DeviceConfig { correlation_id: r.i64()?, config }
        }
    };
    Ok(out)
}
