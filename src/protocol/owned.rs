//! [`OwnedBody`]: an owned mirror of [`Body`] for generated messages, shared by the property
//! tests' strategies and the fuzz targets' `arbitrary` input (the `arbitrary` feature);
//! [`OwnedBody::body`] borrows it back.

use super::{Body, DeviceUid, Password, Username};

/// An owned [`Body`], variant for variant. The fixed-size text fields are plain bytes: one that
/// does not fit its field (too long, or not printable) becomes the empty string.
#[derive(Clone, Debug)]
#[cfg_attr(feature = "arbitrary", derive(arbitrary::Arbitrary))]
pub enum OwnedBody {
    /// Username, password, `resetSeqNumFlag`.
    LogonRequest(Vec<u8>, Vec<u8>, bool),
    /// Heartbeat interval in seconds.
    LogonResponse(i32),
    /// Reason.
    LogoutRequest(Vec<u8>),
    /// Reason.
    LoggedOut(Vec<u8>),
    /// Correlation id.
    Heartbeat(i64),
    /// Correlation id.
    TestRequest(i64),
    /// From, to.
    ResendRequest(i64, i64),
    /// New sequence number.
    GapFill(i64),
    /// Refused sequence number, reason, details.
    Reject(i64, u8, Vec<u8>),
    /// Device uid, client nonce, client version.
    ConnectionRequest(Vec<u8>, u64, u16),
    /// Session port, cookie ttl in ms, client nonce, cookie.
    ConnectionAccept(u16, u32, u64, [u8; 32]),
    /// Reason, details.
    ConnectionReject(u8, Vec<u8>),
    /// Device uid, client nonce, cookie.
    RegistrationRequest(Vec<u8>, u64, [u8; 32]),
    /// Session id, resumed.
    RegistrationAccept(u64, bool),
    /// Reason, details.
    RegistrationReject(u8, Vec<u8>),
    /// Correlation id.
    GetDeviceConfig(i64),
    /// Correlation id, config.
    DeviceConfig(i64, Vec<u8>),
    /// Type, body.
    App(u16, Vec<u8>),
}

impl OwnedBody {
    /// The [`Body`] this stands for, borrowing its bytes.
    pub fn body(&self) -> Body<'_> {
        match self {
            Self::LogonRequest(username, password, reset) => Body::LogonRequest {
                username: Username::new(username).unwrap_or_default(),
                password: Password::new(password).unwrap_or_default(),
                reset_seq_num: *reset,
            },
            Self::LogonResponse(h) => Body::LogonResponse { heartbeat_interval_s: *h },
            Self::LogoutRequest(r) => Body::LogoutRequest { reason: r },
            Self::LoggedOut(r) => Body::LoggedOut { reason: r },
            Self::Heartbeat(c) => Body::Heartbeat { correlation_id: *c },
            Self::TestRequest(c) => Body::TestRequest { correlation_id: *c },
            Self::ResendRequest(from, to) => Body::ResendRequest { from: *from, to: *to },
            Self::GapFill(n) => Body::GapFill { new_seq_num: *n },
            Self::Reject(r, reason, d) => {
                Body::Reject { ref_seq_num: *r, reason: *reason, details: d }
            }
            Self::ConnectionRequest(uid, nonce, version) => Body::ConnectionRequest {
                device_uid: DeviceUid::new(uid).unwrap_or_default(),
                client_nonce: *nonce,
                client_version: *version,
            },
            Self::ConnectionAccept(port, ttl, nonce, cookie) => Body::ConnectionAccept {
                session_port: *port,
                cookie_ttl_ms: *ttl,
                client_nonce: *nonce,
                cookie: *cookie,
            },
            Self::ConnectionReject(r, d) => Body::ConnectionReject { reason: *r, details: d },
            Self::RegistrationRequest(uid, nonce, cookie) => Body::RegistrationRequest {
                device_uid: DeviceUid::new(uid).unwrap_or_default(),
                client_nonce: *nonce,
                cookie: *cookie,
            },
            Self::RegistrationAccept(id, resumed) => {
                Body::RegistrationAccept { session_id: *id, resumed: *resumed }
            }
            Self::RegistrationReject(r, d) => Body::RegistrationReject { reason: *r, details: d },
            Self::GetDeviceConfig(c) => Body::GetDeviceConfig { correlation_id: *c },
            Self::DeviceConfig(c, config) => Body::DeviceConfig { correlation_id: *c, config },
            Self::App(t, b) => Body::App { type_id: *t, body: b },
        }
    }
}
