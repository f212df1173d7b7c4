//! The stateless half of the UDP handshake (DESIGN.md §2 rules 1–2): cookies and the answer to a
//! ConnectionRequest. Pure functions: the secret and the time are passed in.
//!
//! # Cookie layout (32 bytes, opaque to the device)
//!
//! ```text
//!   0..8   expiry, gateway clock, nanoseconds, little-endian (the next whole second after
//!          now + ttl, so that repeated ConnectionRequests within a second get identical answers)
//!   8..32  first 24 bytes of BLAKE3-keyed(secret, expiry | peer ip (16, v4-mapped) | peer port
//!          | deviceUid (16) | clientNonce | shard)
//! ```
//!
//! Verification recomputes the tag under the current and the previous secret (rotation) and
//! compares in constant time. No state is kept before a valid RegistrationRequest.

use core::time::Duration;
use std::net::{IpAddr, SocketAddr};

use subtle::ConstantTimeEq;

use crate::protocol::{
    Body, CONNECTION_REQUEST_LEN, ConnectionRejectReason, DATAGRAM_PREFIX_LEN, Datagram, DeviceUid,
    Header, Message, write_prefix,
};
use crate::time::Timestamp;

/// A 32-byte secret for cookie tags.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct CookieKey(pub [u8; 32]);

impl core::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("CookieKey(..)")
    }
}

/// The current and previous cookie keys (rotation keeps the previous one valid for one period).
#[derive(Clone, Copy, Debug)]
pub struct CookieKeys {
    /// Signs new cookies.
    pub current: CookieKey,
    /// Still accepted.
    pub previous: Option<CookieKey>,
}

/// Why a cookie was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieError {
    /// The tag does not verify under any key.
    Bad,
    /// The tag verifies but the expiry has passed.
    Expired,
}

/// What a cookie binds.
#[derive(Clone, Copy, Debug)]
pub struct CookieInput<'a> {
    /// The device's address and port as seen by the gateway.
    pub peer: SocketAddr,
    /// `deviceUid`.
    pub device_uid: &'a DeviceUid,
    /// `clientNonce`.
    pub client_nonce: u64,
    /// The shard the device is sent to.
    pub shard: u16,
}

/// Makes a cookie valid until the next whole second after `now + ttl`.
pub fn make_cookie(
    key: &CookieKey,
    now: Timestamp,
    ttl: Duration,
    input: &CookieInput<'_>,
) -> [u8; 32] {
    const SECOND_NS: u64 = 1_000_000_000;
    // The next whole second strictly after `now + ttl`: every request within the same whole
    // second [k s, k+1 s) gets the same expiry, hence the same cookie. (Rounding with `div_ceil`
    // split a second at its first instant: a request at exactly k s and one a millisecond later
    // got different cookies.)
    let expiry = ((now + ttl).as_nanos() / SECOND_NS).saturating_add(1).saturating_mul(SECOND_NS);
    let mut cookie = [0u8; 32];
    cookie[..8].copy_from_slice(&expiry.to_le_bytes());
    cookie[8..].copy_from_slice(&tag(key, expiry, input)[..24]);
    cookie
}

/// Checks a cookie against both keys, then its expiry.
pub fn verify_cookie(
    keys: &CookieKeys,
    now: Timestamp,
    cookie: &[u8; 32],
    input: &CookieInput<'_>,
) -> Result<(), CookieError> {
    let mut exp = [0u8; 8];
    exp.copy_from_slice(&cookie[..8]);
    let expiry = u64::from_le_bytes(exp);
    let matches = |key: &CookieKey| bool::from(tag(key, expiry, input)[..24].ct_eq(&cookie[8..]));
    if !(matches(&keys.current) || keys.previous.as_ref().is_some_and(matches)) {
        return Err(CookieError::Bad);
    }
    if now.as_nanos() > expiry {
        return Err(CookieError::Expired);
    }
    Ok(())
}

/// Cookie keys for the rotation epoch containing `now`: derived from the start-up secret, so the
/// acceptor and every shard agree without talking to each other.
pub fn cookie_keys(master: &[u8; 32], now: Timestamp, rotate: Duration) -> CookieKeys {
    let epoch = now.as_nanos() / rotate.as_nanos().max(1) as u64;
    let key = |e: u64| {
        let mut material = [0u8; 40];
        material[..32].copy_from_slice(master);
        material[32..].copy_from_slice(&e.to_le_bytes());
        CookieKey(blake3::derive_key("fleetgate cookie key v1", &material))
    };
    CookieKeys { current: key(epoch), previous: epoch.checked_sub(1).map(key) }
}

fn tag(key: &CookieKey, expiry: u64, input: &CookieInput<'_>) -> [u8; 32] {
    let ip = match input.peer.ip() {
        IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        IpAddr::V6(v6) => v6,
    };
    let mut h = blake3::Hasher::new_keyed(&key.0);
    h.update(&expiry.to_le_bytes());
    h.update(&ip.octets());
    h.update(&input.peer.port().to_le_bytes());
    h.update(input.device_uid.raw());
    h.update(&input.client_nonce.to_le_bytes());
    h.update(&input.shard.to_le_bytes());
    *h.finalize().as_bytes()
}

/// Picks the shard for a key (deviceUid or username): FNV-1a, stable across runs so that a
/// resume finds the same shard.
pub fn shard_for(key: &[u8], shards: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as usize
}

/// Settings of the handshake port.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeConfig {
    /// Number of shards.
    pub shards: usize,
    /// Session port of shard 0; shard i listens on `session_port_base + i`.
    pub session_port_base: u16,
    /// How long a cookie stays valid (`udp.cookie_ttl_ms`, default 5000 ms).
    pub cookie_ttl: Duration,
}

/// What the handshake port did with a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeOutcome {
    /// Answered with a ConnectionAccept of `len` bytes, for `shard`.
    Accepted {
        /// Bytes written to the output buffer.
        len: usize,
        /// The shard chosen.
        shard: usize,
    },
    /// Answered with a ConnectionReject of `len` bytes.
    Rejected {
        /// Bytes written to the output buffer.
        len: usize,
        /// Why.
        reason: ConnectionRejectReason,
    },
    /// Dropped without an answer (never more bytes out than in).
    Dropped(HandshakeDrop),
}

/// Why a datagram on the handshake port was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeDrop {
    /// Not a single well-formed ConnectionRequest of 128 bytes with a zero prefix.
    Malformed,
    /// Shorter than a whole padded ConnectionRequest.
    TooShort,
}

/// Answers one datagram received on the handshake port. `refuse` is the acceptor's verdict
/// before looking at the request (draining, full, rate limited), `None` to accept. Writes the
/// reply (prefix 0) into `out` and never writes more bytes than the datagram carried.
pub fn answer_connection_request(
    cfg: &HandshakeConfig,
    key: &CookieKey,
    now: Timestamp,
    peer: SocketAddr,
    datagram: &[u8],
    refuse: Option<ConnectionRejectReason>,
    out: &mut [u8],
) -> HandshakeOutcome {
    if datagram.len() < DATAGRAM_PREFIX_LEN + CONNECTION_REQUEST_LEN {
        return HandshakeOutcome::Dropped(HandshakeDrop::TooShort);
    }
    let Ok(dg) = Datagram::parse(datagram) else {
        return HandshakeOutcome::Dropped(HandshakeDrop::Malformed);
    };
    let mut frames = dg.frames();
    let (Some(Ok(frame)), None) = (frames.next(), frames.next()) else {
        return HandshakeOutcome::Dropped(HandshakeDrop::Malformed);
    };
    let Ok(msg) = Message::decode_frame(frame) else {
        return HandshakeOutcome::Dropped(HandshakeDrop::Malformed);
    };
    let Body::ConnectionRequest { device_uid, client_nonce, client_version } = msg.body else {
        return HandshakeOutcome::Dropped(HandshakeDrop::Malformed);
    };
    if dg.session_id != 0 {
        return HandshakeOutcome::Dropped(HandshakeDrop::Malformed);
    }
    let reject = |reason: ConnectionRejectReason, details: &[u8], out: &mut [u8]| {
        let len = write_reply(out, Body::ConnectionReject { reason: reason as u8, details });
        HandshakeOutcome::Rejected { len, reason }
    };
    if let Some(reason) = refuse {
        let details: &[u8] = match reason {
            ConnectionRejectReason::ServerFull => b"server full",
            ConnectionRejectReason::Draining => b"gateway draining",
            ConnectionRejectReason::RateLimited => b"rate limited",
            ConnectionRejectReason::UnsupportedVersion => b"unsupported client version",
            ConnectionRejectReason::Malformed => b"malformed request",
        };
        return reject(reason, details, out);
    }
    if client_version != 1 {
        return reject(
            ConnectionRejectReason::UnsupportedVersion,
            b"client version must be 1",
            out,
        );
    }
    if device_uid.is_empty() {
        return reject(ConnectionRejectReason::Malformed, b"empty deviceUid", out);
    }
    let shard = shard_for(device_uid.as_bytes(), cfg.shards);
    let input = CookieInput { peer, device_uid: &device_uid, client_nonce, shard: shard as u16 };
    let cookie = make_cookie(key, now, cfg.cookie_ttl, &input);
    let body = Body::ConnectionAccept {
        session_port: cfg.session_port_base.wrapping_add(shard as u16),
        cookie_ttl_ms: u32::try_from(cfg.cookie_ttl.as_millis()).unwrap_or(u32::MAX),
        client_nonce,
        cookie,
    };
    let len = write_reply(out, body);
    HandshakeOutcome::Accepted { len, shard }
}

/// Writes `prefix 0 + body` into `out`; returns the length (0 if `out` is too small).
fn write_reply(out: &mut [u8], body: Body<'_>) -> usize {
    if write_prefix(out, 0) == 0 {
        return 0;
    }
    let msg = Message { header: Header::default(), body };
    match msg.encode(&mut out[DATAGRAM_PREFIX_LEN..]) {
        Ok(n) => DATAGRAM_PREFIX_LEN + n,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uid() -> DeviceUid {
        DeviceUid::new(b"PDT9090-0001").unwrap()
    }

    fn input(u: &DeviceUid) -> CookieInput<'_> {
        CookieInput {
            peer: "10.10.225.150:3771".parse().unwrap(),
            device_uid: u,
            client_nonce: 42,
            shard: 1,
        }
    }

    #[test]
    fn cookie_verifies_and_binds_every_input() {
        let key = CookieKey([7; 32]);
        let keys = CookieKeys { current: key, previous: None };
        let now = Timestamp::from_nanos(10_000_000_000);
        let u = uid();
        let c = make_cookie(&key, now, Duration::from_secs(5), &input(&u));
        assert_eq!(verify_cookie(&keys, now, &c, &input(&u)), Ok(()));
        // Same second: identical cookie (idempotent answers).
        let c2 =
            make_cookie(&key, now + Duration::from_millis(1), Duration::from_secs(5), &input(&u));
        assert_eq!(c, c2);
        let mut other = input(&u);
        other.client_nonce = 43;
        assert_eq!(verify_cookie(&keys, now, &c, &other), Err(CookieError::Bad));
        let mut other = input(&u);
        other.shard = 0;
        assert_eq!(verify_cookie(&keys, now, &c, &other), Err(CookieError::Bad));
        let mut other = input(&u);
        other.peer = "10.10.225.150:3772".parse().unwrap();
        assert_eq!(verify_cookie(&keys, now, &c, &other), Err(CookieError::Bad));
        let u2 = DeviceUid::new(b"PDT9090-0002").unwrap();
        assert_eq!(verify_cookie(&keys, now, &c, &input(&u2)), Err(CookieError::Bad));
        let mut forged = c;
        forged[0] ^= 1; // moving the expiry breaks the tag
        assert_eq!(verify_cookie(&keys, now, &forged, &input(&u)), Err(CookieError::Bad));
        let later = now + Duration::from_secs(7);
        assert_eq!(verify_cookie(&keys, later, &c, &input(&u)), Err(CookieError::Expired));
    }

    #[test]
    fn previous_key_still_verifies_after_rotation() {
        let old = CookieKey([1; 32]);
        let new = CookieKey([2; 32]);
        let now = Timestamp::from_nanos(1);
        let u = uid();
        let c = make_cookie(&old, now, Duration::from_secs(5), &input(&u));
        let rotated = CookieKeys { current: new, previous: Some(old) };
        assert_eq!(verify_cookie(&rotated, now, &c, &input(&u)), Ok(()));
        let dropped = CookieKeys { current: new, previous: None };
        assert_eq!(verify_cookie(&dropped, now, &c, &input(&u)), Err(CookieError::Bad));
    }

    fn request(version: u16, pad_to: usize) -> Vec<u8> {
        let mut buf = vec![0u8; 8 + 128];
        let msg = Message {
            header: Header::default(),
            body: Body::ConnectionRequest {
                device_uid: uid(),
                client_nonce: 9,
                client_version: version,
            },
        };
        msg.encode(&mut buf[8..]).unwrap();
        buf.truncate(pad_to);
        buf
    }

    #[test]
    fn answers_are_never_larger_than_requests() {
        let cfg = HandshakeConfig {
            shards: 2,
            session_port_base: 5000,
            cookie_ttl: Duration::from_secs(5),
        };
        let key = CookieKey([3; 32]);
        let peer: SocketAddr = "127.0.0.1:3771".parse().unwrap();
        let now = Timestamp::from_nanos(5);
        let mut out = [0u8; 2048];
        let req = request(1, 136);
        let HandshakeOutcome::Accepted { len, shard } =
            answer_connection_request(&cfg, &key, now, peer, &req, None, &mut out)
        else {
            panic!("expected accept");
        };
        assert!(len <= req.len());
        let dg = Datagram::parse(&out[..len]).unwrap();
        assert_eq!(dg.session_id, 0);
        let (msg, _) = Message::decode(dg.payload).unwrap();
        let Body::ConnectionAccept { session_port, client_nonce, cookie, .. } = msg.body else {
            panic!("not an accept");
        };
        assert_eq!(usize::from(session_port - 5000), shard);
        assert_eq!(client_nonce, 9);
        let keys = CookieKeys { current: key, previous: None };
        let u = uid();
        let inp = CookieInput { peer, device_uid: &u, client_nonce: 9, shard: shard as u16 };
        assert_eq!(verify_cookie(&keys, now, &cookie, &inp), Ok(()));
        // Identical request, identical answer.
        let mut out2 = [0u8; 2048];
        answer_connection_request(&cfg, &key, now, peer, &req, None, &mut out2);
        assert_eq!(out[..len], out2[..len]);

        let bad = request(2, 136);
        let res = answer_connection_request(&cfg, &key, now, peer, &bad, None, &mut out);
        let HandshakeOutcome::Rejected { len, reason } = res else { panic!("{res:?}") };
        assert_eq!(reason, ConnectionRejectReason::UnsupportedVersion);
        assert!(len <= bad.len());

        let refused = answer_connection_request(
            &cfg,
            &key,
            now,
            peer,
            &req,
            Some(ConnectionRejectReason::ServerFull),
            &mut out,
        );
        assert!(
            matches!(refused, HandshakeOutcome::Rejected { len, reason: ConnectionRejectReason::ServerFull } if len <= req.len())
        );

        for short in [0, 8, 40, 135] {
            let r = request(1, short);
            assert_eq!(
                answer_connection_request(&cfg, &key, now, peer, &r, None, &mut out),
                HandshakeOutcome::Dropped(HandshakeDrop::TooShort)
            );
        }
    }
}
