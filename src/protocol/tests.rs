//! Tests of the wire format against DESIGN.md §1.
//!
//! - Golden bytes: every message type written out by hand, byte by byte, from DESIGN.md's tables
//!   (never produced by the encoder under test). Each is decoded and every field checked, then the
//!   same message is encoded and compared with the golden bytes, padding included.
//! - Property tests: round trips of arbitrary valid messages, random and mutated bytes through
//!   every entry point (no panics, and whatever decodes is canonical).
//! - One test per malformed case, checking the exact [`DecodeError`] and its Reject reason.
//! - The stream [`Deframer`] and the UDP [`Datagram`] framing.

use super::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Parses hex digits, ignoring ASCII whitespace (so golden bytes can be laid out 8 per line).
fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits in {s:?}");
    let nibble = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("not a hex digit: {:?}", c as char),
    };
    digits.chunks(2).map(|p| (nibble(p[0]) << 4) | nibble(p[1])).collect()
}

/// Formats bytes as hex, 8 per group, for readable assertion messages.
fn to_hex(bytes: &[u8]) -> String {
    bytes
        .chunks(8)
        .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Recognisable header values: every byte differs, so a byte-order mistake shows.
const SEQ: i64 = 0x0102_0304_0506_0708;
const LAST: i64 = 0x1112_1314_1516_1718;
const TIME: i64 = 0x2122_2324_2526_2728;

fn header(flags: u8, length: u16, type_id: u16, seq: i64, last_processed: i64) -> Header {
    Header { flags, length, type_id, seq, last_processed, send_time: TIME }
}

/// A sequenced header with [`SEQ`] and [`LAST`].
fn seq_header(flags: u8, length: u16, type_id: u16) -> Header {
    header(flags, length, type_id, SEQ, LAST)
}

/// A handshake header: sequenceNum 0, lastProcessedSeqNum 0.
fn hs_header(length: u16, type_id: u16) -> Header {
    header(0, length, type_id, 0, 0)
}

/// Cookie bytes 0x00, 0x01, ..., 0x1f.
fn cookie() -> [u8; 32] {
    core::array::from_fn(|i| i as u8)
}

fn set_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn set_i64(b: &mut [u8], at: usize, v: i64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Encodes into a fresh, exactly sized buffer.
fn encode_vec(m: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut buf).expect("encode");
    assert_eq!(n, buf.len());
    buf
}

/// The core golden check: decode the hand-written bytes and compare every field with
/// `expected`, then encode `expected` and compare with the bytes (padding included).
fn check_golden(golden_hex: &str, expected: &Message<'_>) {
    let golden = hex(golden_hex);
    assert_eq!(golden.len() % 8, 0, "golden bytes must be padded to 8");

    // Decode, whole padded message.
    let (decoded, used) = Message::decode(&golden).expect("golden bytes decode");
    assert_eq!(used, golden.len(), "padded length consumed");
    assert_eq!(decoded.header, expected.header, "header fields");
    assert_eq!(decoded.body, expected.body, "body fields");
    assert_eq!(decoded.body.type_id(), expected.header.type_id);
    assert_eq!(usize::from(decoded.header.length), HEADER_LEN + decoded.body.len());

    // Decode, exact frame.
    let (frame, padded) = split_frame(&golden).expect("split_frame");
    assert_eq!(padded, golden.len());
    assert_eq!(frame.len(), usize::from(expected.header.length));
    assert_eq!(Message::decode_frame(frame).expect("decode_frame"), *expected);

    // Encode into a dirty buffer: the padding must be written as zeros.
    assert_eq!(expected.encoded_len(), golden.len());
    let mut buf = [0xeeu8; 512];
    let n = expected.encode(&mut buf).expect("encode");
    assert_eq!(n, golden.len());
    assert_eq!(
        &buf[..n],
        &golden[..],
        "encoded bytes differ\n  got:  {}\n  want: {}",
        to_hex(&buf[..n]),
        to_hex(&golden)
    );
    assert_eq!(buf[n], 0xee, "encoder wrote past the padded length");

    // The encoder takes messageLength and messageTypeId from the body, not from the header.
    let mut sloppy = *expected;
    sloppy.header.length = 0;
    sloppy.header.type_id = 0xffff;
    let mut buf2 = [0x55u8; 512];
    let n2 = sloppy.encode(&mut buf2).expect("encode with sloppy header");
    assert_eq!(&buf2[..n2], &golden[..]);
}

#[test]
fn hex_helper_works() {
    assert_eq!(hex("db 0A\n ff00"), vec![0xdb, 0x0a, 0xff, 0x00]);
    assert_eq!(hex(""), Vec::<u8>::new());
    assert_eq!(to_hex(&[1, 2]), "01 02");
}

// ---------------------------------------------------------------------------------------------
// a. Golden bytes, one per message type (DESIGN.md §1.1–§1.4)
// ---------------------------------------------------------------------------------------------
//
// Header lines are always: protocolId flags messageLength(2) messageTypeId(2) version(2), then
// sequenceNum, lastProcessedSeqNum, sendTime (8 bytes each, little-endian).

/// Type 1, messageLength 81 (0x51), padded to 88.
const GOLDEN_LOGON_REQUEST: &str = concat!(
    "db 00 51 00 01 00 01 00", // 0xDB, flags 0, length 81, type 1, version 1
    "08 07 06 05 04 03 02 01", // sequenceNum 0x0102030405060708
    "18 17 16 15 14 13 12 11", // lastProcessedSeqNum 0x1112131415161718
    "28 27 26 25 24 23 22 21", // sendTime 0x2122232425262728
    "61 6c 69 63 65 00 00 00", // username "alice" ...
    "00 00 00 00 00 00 00 00", // ... NUL-padded to 16
    "73 33 63 72 65 74 21 00", // password "s3cret!" ...
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", // ... NUL-padded to 32
    "01 00 00 00 00 00 00 00", // resetSeqNum 1, then 7 bytes of padding
);

#[test]
fn golden_logon_request() {
    let expected = Message {
        header: seq_header(0, 81, 1),
        body: Body::LogonRequest {
            username: Username::new(b"alice").unwrap(),
            password: Password::new(b"s3cret!").unwrap(),
            reset_seq_num: true,
        },
    };
    check_golden(GOLDEN_LOGON_REQUEST, &expected);
    let bytes = hex(GOLDEN_LOGON_REQUEST);
    let (m, _) = Message::decode(&bytes).unwrap();
    assert_eq!(m.body.message_type(), Some(MessageType::LogonRequest));
    assert!(!m.header.is_resend());
    let Body::LogonRequest { username, password, reset_seq_num } = m.body else {
        panic!("wrong body {:?}", m.body)
    };
    assert_eq!(username.as_str(), "alice");
    assert_eq!(username.raw().len(), 16);
    assert_eq!(password.as_bytes(), b"s3cret!");
    assert!(reset_seq_num);
}

/// Type 2, messageLength 36 (0x24), padded to 40.
const GOLDEN_LOGON_RESPONSE: &str = concat!(
    "db 00 24 00 02 00 01 00", // length 36, type 2
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "04 03 02 01 00 00 00 00", // heartbeatIntervalSeconds 0x01020304, 4 bytes padding
);

#[test]
fn golden_logon_response() {
    let expected = Message {
        header: seq_header(0, 36, 2),
        body: Body::LogonResponse { heartbeat_interval_s: 0x0102_0304 },
    };
    check_golden(GOLDEN_LOGON_RESPONSE, &expected);
}

/// Type 4, reason "bye": messageLength 33 + 3 = 36, padded to 40.
const GOLDEN_LOGOUT_REQUEST: &str = concat!(
    "db 00 24 00 04 00 01 00", // length 36, type 4
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "03 62 79 65 00 00 00 00", // reasonLength 3, "bye", 4 bytes padding
);

#[test]
fn golden_logout_request() {
    let expected =
        Message { header: seq_header(0, 36, 4), body: Body::LogoutRequest { reason: b"bye" } };
    check_golden(GOLDEN_LOGOUT_REQUEST, &expected);
}

/// Type 5, reason "eSP0008 could not get device config" (35 bytes): length 68 (0x44), padded 72.
const GOLDEN_LOGGED_OUT: &str = concat!(
    "db 00 44 00 05 00 01 00", // length 68, type 5
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "23 65 53 50 30 30 30 38", // reasonLength 35, "eSP0008"
    "20 63 6f 75 6c 64 20 6e", // " could n"
    "6f 74 20 67 65 74 20 64", // "ot get d"
    "65 76 69 63 65 20 63 6f", // "evice co"
    "6e 66 69 67 00 00 00 00", // "nfig", 4 bytes padding
);

#[test]
fn golden_logged_out() {
    let expected = Message {
        header: seq_header(0, 68, 5),
        body: Body::LoggedOut { reason: b"eSP0008 could not get device config" },
    };
    check_golden(GOLDEN_LOGGED_OUT, &expected);
}

/// Type 10 with the resend flag, messageLength 40 (0x28): no padding.
const GOLDEN_HEARTBEAT: &str = concat!(
    "db 01 28 00 0a 00 01 00", // flags 0x01 (resend), length 40, type 10
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "38 37 36 35 34 33 32 31", // correlationId 0x3132333435363738
);

#[test]
fn golden_heartbeat() {
    let expected = Message {
        header: seq_header(FLAG_RESEND, 40, 10),
        body: Body::Heartbeat { correlation_id: 0x3132_3334_3536_3738 },
    };
    check_golden(GOLDEN_HEARTBEAT, &expected);
    let bytes = hex(GOLDEN_HEARTBEAT);
    let (m, _) = Message::decode(&bytes).unwrap();
    assert!(m.header.is_resend());
}

/// Type 11, messageLength 40.
const GOLDEN_TEST_REQUEST: &str = concat!(
    "db 00 28 00 0b 00 01 00", // length 40, type 11
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "48 47 46 45 44 43 42 41", // correlationId 0x4142434445464748
);

#[test]
fn golden_test_request() {
    let expected = Message {
        header: seq_header(0, 40, 11),
        body: Body::TestRequest { correlation_id: 0x4142_4344_4546_4748 },
    };
    check_golden(GOLDEN_TEST_REQUEST, &expected);
}

/// Type 20, messageLength 48 (0x30).
const GOLDEN_RESEND_REQUEST: &str = concat!(
    "db 00 30 00 14 00 01 00", // length 48, type 20
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "06 05 04 03 02 01 00 00", // fromSeqNum 0x010203040506
    "00 00 00 00 00 00 00 00", // toSeqNum 0 (everything after from)
);

#[test]
fn golden_resend_request() {
    let expected = Message {
        header: seq_header(0, 48, 20),
        body: Body::ResendRequest { from: 0x0102_0304_0506, to: 0 },
    };
    check_golden(GOLDEN_RESEND_REQUEST, &expected);
}

/// Type 21 with the resend flag (DESIGN.md §2 rule 7), messageLength 40.
const GOLDEN_GAP_FILL: &str = concat!(
    "db 01 28 00 15 00 01 00", // resend, length 40, type 21
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "11 10 0f 0e 0d 0c 0b 0a", // newSeqNum 0x0a0b0c0d0e0f1011
);

#[test]
fn golden_gap_fill() {
    let expected = Message {
        header: seq_header(FLAG_RESEND, 40, 21),
        body: Body::GapFill { new_seq_num: 0x0a0b_0c0d_0e0f_1011 },
    };
    check_golden(GOLDEN_GAP_FILL, &expected);
}

/// Type 30, details "bad len" (7): messageLength 42 + 7 = 49 (0x31), padded to 56.
const GOLDEN_REJECT: &str = concat!(
    "db 00 31 00 1e 00 01 00", // length 49, type 30
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "58 57 56 55 54 53 52 51", // refSeqNum 0x5152535455565758
    "03 07 62 61 64 20 6c 65", // reason 3 INVALID_LENGTH, detailsLength 7, "bad le"
    "6e 00 00 00 00 00 00 00", // "n", 7 bytes padding
);

#[test]
fn golden_reject() {
    let expected = Message {
        header: seq_header(0, 49, 30),
        body: Body::Reject {
            ref_seq_num: 0x5152_5354_5556_5758,
            reason: RejectReason::InvalidLength as u8,
            details: b"bad len",
        },
    };
    check_golden(GOLDEN_REJECT, &expected);
    let bytes = hex(GOLDEN_REJECT);
    let (m, _) = Message::decode(&bytes).unwrap();
    let Body::Reject { reason, .. } = m.body else { panic!() };
    assert_eq!(RejectReason::from_u8(reason), Some(RejectReason::InvalidLength));
}

/// Type 50, messageLength 128 (0x80), sequenceNum 0, no padding.
const GOLDEN_CONNECTION_REQUEST: &str = concat!(
    "db 00 80 00 32 00 01 00", // length 128, type 50
    "00 00 00 00 00 00 00 00", // sequenceNum 0 (handshake)
    "00 00 00 00 00 00 00 00", // lastProcessedSeqNum 0
    "28 27 26 25 24 23 22 21", // sendTime
    "48 48 2d 30 30 30 31 00", // deviceUid "HH-0001" ...
    "00 00 00 00 00 00 00 00", // ... NUL-padded to 16
    "a8 a7 a6 a5 a4 a3 a2 a1", // clientNonce 0xa1a2a3a4a5a6a7a8
    "01 00 00 00 00 00 00 00", // clientVersion 1, then zero from body offset 26 ...
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", // ... to body offset 96 (message offset 128)
);

#[test]
fn golden_connection_request() {
    let expected = Message {
        header: hs_header(128, 50),
        body: Body::ConnectionRequest {
            device_uid: DeviceUid::new(b"HH-0001").unwrap(),
            client_nonce: 0xa1a2_a3a4_a5a6_a7a8,
            client_version: 1,
        },
    };
    check_golden(GOLDEN_CONNECTION_REQUEST, &expected);
    assert_eq!(hex(GOLDEN_CONNECTION_REQUEST).len(), CONNECTION_REQUEST_LEN);
    assert!(MessageType::ConnectionRequest.is_handshake());
}

/// Type 51, messageLength 80 (0x50).
const GOLDEN_CONNECTION_ACCEPT: &str = concat!(
    "db 00 50 00 33 00 01 00", // length 80, type 51
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "28 27 26 25 24 23 22 21", //
    "88 13 00 00 10 27 00 00", // sessionPort 5000, reserved 0, cookieTtlMs 10000
    "a8 a7 a6 a5 a4 a3 a2 a1", // clientNonce
    "00 01 02 03 04 05 06 07", // cookie[0..8]
    "08 09 0a 0b 0c 0d 0e 0f", //
    "10 11 12 13 14 15 16 17", //
    "18 19 1a 1b 1c 1d 1e 1f", // cookie[24..32]
);

#[test]
fn golden_connection_accept() {
    let expected = Message {
        header: hs_header(80, 51),
        body: Body::ConnectionAccept {
            session_port: 5000,
            cookie_ttl_ms: 10_000,
            client_nonce: 0xa1a2_a3a4_a5a6_a7a8,
            cookie: cookie(),
        },
    };
    check_golden(GOLDEN_CONNECTION_ACCEPT, &expected);
}

/// Type 52, reason SERVER_FULL, details "full": messageLength 34 + 4 = 38 (0x26), padded 40.
const GOLDEN_CONNECTION_REJECT: &str = concat!(
    "db 00 26 00 34 00 01 00", // length 38, type 52
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "28 27 26 25 24 23 22 21", //
    "01 04 66 75 6c 6c 00 00", // reason 1, detailsLength 4, "full", 2 bytes padding
);

#[test]
fn golden_connection_reject() {
    let expected = Message {
        header: hs_header(38, 52),
        body: Body::ConnectionReject {
            reason: ConnectionRejectReason::ServerFull as u8,
            details: b"full",
        },
    };
    check_golden(GOLDEN_CONNECTION_REJECT, &expected);
}

/// Type 53, messageLength 88 (0x58).
const GOLDEN_REGISTRATION_REQUEST: &str = concat!(
    "db 00 58 00 35 00 01 00", // length 88, type 53
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "28 27 26 25 24 23 22 21", //
    "48 48 2d 30 30 30 31 00", // deviceUid "HH-0001"
    "00 00 00 00 00 00 00 00", //
    "a8 a7 a6 a5 a4 a3 a2 a1", // clientNonce
    "00 01 02 03 04 05 06 07", // cookie
    "08 09 0a 0b 0c 0d 0e 0f", //
    "10 11 12 13 14 15 16 17", //
    "18 19 1a 1b 1c 1d 1e 1f", //
);

#[test]
fn golden_registration_request() {
    let expected = Message {
        header: hs_header(88, 53),
        body: Body::RegistrationRequest {
            device_uid: DeviceUid::new(b"HH-0001").unwrap(),
            client_nonce: 0xa1a2_a3a4_a5a6_a7a8,
            cookie: cookie(),
        },
    };
    check_golden(GOLDEN_REGISTRATION_REQUEST, &expected);
}

/// Type 54, messageLength 48 (0x30).
const GOLDEN_REGISTRATION_ACCEPT: &str = concat!(
    "db 00 30 00 36 00 01 00", // length 48, type 54
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "28 27 26 25 24 23 22 21", //
    "c8 c7 c6 c5 c4 c3 c2 c1", // sessionId 0xc1c2c3c4c5c6c7c8
    "01 00 00 00 00 00 00 00", // resumed 1, body bytes 9..16 zero
);

#[test]
fn golden_registration_accept() {
    let expected = Message {
        header: hs_header(48, 54),
        body: Body::RegistrationAccept { session_id: 0xc1c2_c3c4_c5c6_c7c8, resumed: true },
    };
    check_golden(GOLDEN_REGISTRATION_ACCEPT, &expected);
}

/// Type 55, reason COOKIE_EXPIRED, "expired": messageLength 34 + 7 = 41 (0x29), padded 48.
const GOLDEN_REGISTRATION_REJECT: &str = concat!(
    "db 00 29 00 37 00 01 00", // length 41, type 55
    "00 00 00 00 00 00 00 00", //
    "00 00 00 00 00 00 00 00", //
    "28 27 26 25 24 23 22 21", //
    "02 07 65 78 70 69 72 65", // reason 2, detailsLength 7, "expire"
    "64 00 00 00 00 00 00 00", // "d", 7 bytes padding
);

#[test]
fn golden_registration_reject() {
    let expected = Message {
        header: hs_header(41, 55),
        body: Body::RegistrationReject {
            reason: RegistrationRejectReason::CookieExpired as u8,
            details: b"expired",
        },
    };
    check_golden(GOLDEN_REGISTRATION_REJECT, &expected);
}

/// Type 56, messageLength 40; sequenceNum 0, lastProcessedSeqNum may be non-zero.
const GOLDEN_GET_DEVICE_CONFIG: &str = concat!(
    "db 00 28 00 38 00 01 00", // length 40, type 56
    "00 00 00 00 00 00 00 00", // sequenceNum 0
    "18 17 16 15 14 13 12 11", // lastProcessedSeqNum
    "28 27 26 25 24 23 22 21", //
    "68 67 66 65 64 63 62 61", // correlationId 0x6162636465666768
);

#[test]
fn golden_get_device_config() {
    let expected = Message {
        header: header(0, 40, 56, 0, LAST),
        body: Body::GetDeviceConfig { correlation_id: 0x6162_6364_6566_6768 },
    };
    check_golden(GOLDEN_GET_DEVICE_CONFIG, &expected);
}

/// Type 57, config "AB~001~19" (9): messageLength 41 + 9 = 50 (0x32), padded 56.
const GOLDEN_DEVICE_CONFIG: &str = concat!(
    "db 00 32 00 39 00 01 00", // length 50, type 57
    "00 00 00 00 00 00 00 00", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "68 67 66 65 64 63 62 61", // correlationId
    "09 41 42 7e 30 30 31 7e", // configLength 9, "AB~001~"
    "31 39 00 00 00 00 00 00", // "19", 6 bytes padding
);

#[test]
fn golden_device_config() {
    let expected = Message {
        header: header(0, 50, 57, 0, LAST),
        body: Body::DeviceConfig { correlation_id: 0x6162_6364_6566_6768, config: b"AB~001~19" },
    };
    check_golden(GOLDEN_DEVICE_CONFIG, &expected);
}

/// Type 300 (0x012c, the `feed` event), body "hello": messageLength 37 (0x25), padded 40.
const GOLDEN_APP: &str = concat!(
    "db 00 25 00 2c 01 01 00", // length 37, type 0x012c
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "68 65 6c 6c 6f 00 00 00", // "hello", 3 bytes padding
);

#[test]
fn golden_app() {
    let expected = Message {
        header: seq_header(0, 37, 300),
        body: Body::App { type_id: 300, body: b"hello" },
    };
    check_golden(GOLDEN_APP, &expected);
    let bytes = hex(GOLDEN_APP);
    let (m, _) = Message::decode(&bytes).unwrap();
    assert_eq!(m.body.message_type(), None);
}

/// Type 100 (the first application type) with an empty body: header only, 32 bytes.
const GOLDEN_APP_EMPTY: &str = concat!(
    "db 00 20 00 64 00 01 00", // length 32, type 100
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
);

#[test]
fn golden_app_empty_body() {
    let expected = Message {
        header: seq_header(0, 32, APP_TYPE_MIN),
        body: Body::App { type_id: APP_TYPE_MIN, body: b"" },
    };
    check_golden(GOLDEN_APP_EMPTY, &expected);
    assert!(expected.body.is_empty());
}

#[test]
fn golden_binary_app_body_is_opaque() {
    // Application bodies are opaque: NUL and high bytes are fine. Type 0xfffe, 3-byte body.
    let golden = concat!(
        "db 00 23 00 fe ff 01 00", // length 35, type 0xfffe
        "08 07 06 05 04 03 02 01", //
        "18 17 16 15 14 13 12 11", //
        "28 27 26 25 24 23 22 21", //
        "00 ff 80 00 00 00 00 00", // body 00 ff 80, 5 bytes padding
    );
    let expected = Message {
        header: seq_header(0, 35, 0xfffe),
        body: Body::App { type_id: 0xfffe, body: &[0x00, 0xff, 0x80] },
    };
    check_golden(golden, &expected);
}

#[test]
fn header_constants_match_design() {
    assert_eq!(PROTOCOL_ID, 0xdb);
    assert_eq!(PROTOCOL_VERSION, 1);
    assert_eq!(HEADER_LEN, 32);
    assert_eq!(FLAG_RESEND, 0x01);
    assert_eq!(APP_TYPE_MIN, 100);
    assert_eq!(DATAGRAM_PREFIX_LEN, 8);
    assert_eq!(
        (offset::FLAGS, offset::LENGTH, offset::TYPE_ID),
        (1, 2, 4),
        "header offsets (DESIGN.md §1.1)"
    );
    assert_eq!((offset::SEQ, offset::LAST_PROCESSED, offset::SEND_TIME), (8, 16, 24));
    // The offsets agree with the golden bytes.
    let g = hex(GOLDEN_HEARTBEAT);
    assert_eq!(g[offset::FLAGS], FLAG_RESEND);
    assert_eq!(u16::from_le_bytes([g[offset::LENGTH], g[offset::LENGTH + 1]]), 40);
    assert_eq!(u16::from_le_bytes([g[offset::TYPE_ID], g[offset::TYPE_ID + 1]]), 10);
    assert_eq!(g[offset::SEQ], 0x08);
    assert_eq!(g[offset::LAST_PROCESSED], 0x18);
    assert_eq!(g[offset::SEND_TIME], 0x28);
}

#[test]
fn message_type_ids_match_design() {
    let table: [(u16, MessageType); 17] = [
        (1, MessageType::LogonRequest),
        (2, MessageType::LogonResponse),
        (4, MessageType::LogoutRequest),
        (5, MessageType::LoggedOut),
        (10, MessageType::Heartbeat),
        (11, MessageType::TestRequest),
        (20, MessageType::ResendRequest),
        (21, MessageType::GapFill),
        (30, MessageType::Reject),
        (50, MessageType::ConnectionRequest),
        (51, MessageType::ConnectionAccept),
        (52, MessageType::ConnectionReject),
        (53, MessageType::RegistrationRequest),
        (54, MessageType::RegistrationAccept),
        (55, MessageType::RegistrationReject),
        (56, MessageType::GetDeviceConfig),
        (57, MessageType::DeviceConfig),
    ];
    for (id, ty) in table {
        assert_eq!(ty as u16, id);
        assert_eq!(MessageType::from_u16(id), Some(ty));
        assert_eq!(ty.is_handshake(), id >= 50, "{ty:?}");
    }
    for id in [0u16, 3, 6, 9, 12, 22, 31, 49, 58, 99, 100, 300, u16::MAX] {
        assert_eq!(MessageType::from_u16(id), None, "{id}");
    }
    for v in 1..=7u8 {
        assert_eq!(RejectReason::from_u8(v).map(|r| r as u8), Some(v));
    }
    assert_eq!(RejectReason::from_u8(0), None);
    assert_eq!(RejectReason::from_u8(8), None);
}

#[test]
fn seed_device_config_round_trips() {
    let config: &[u8] = b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~";
    let m = Message {
        header: header(0, (41 + config.len()) as u16, 57, 0, 3),
        body: Body::DeviceConfig { correlation_id: 7, config },
    };
    let bytes = encode_vec(&m);
    assert_eq!(bytes.len(), align8(41 + config.len()));
    assert_eq!(bytes[40], config.len() as u8, "configLength at body offset 8");
    assert_eq!(&bytes[41..41 + config.len()], config);
    assert_eq!(Message::decode(&bytes).unwrap(), (m, bytes.len()));
}

#[test]
fn full_width_fixed_strings_have_no_nul() {
    // A 16-byte username fills the field: no NUL terminator at all.
    let m = Message {
        header: seq_header(0, 81, 1),
        body: Body::LogonRequest {
            username: Username::new(b"ABCDEFGHIJKLMNOP").unwrap(),
            password: Password::new(&[b'~'; 32]).unwrap(),
            reset_seq_num: false,
        },
    };
    let bytes = encode_vec(&m);
    assert_eq!(&bytes[32..48], b"ABCDEFGHIJKLMNOP");
    assert_eq!(&bytes[48..80], &[b'~'; 32]);
    assert_eq!(bytes[80], 0, "resetSeqNum 0");
    assert_eq!(Message::decode(&bytes).unwrap().0, m);
    assert!(Username::new(b"ABCDEFGHIJKLMNOPQ").is_none(), "17 bytes do not fit");
    assert!(Username::new(b"a\0b").is_none(), "NUL is not a printable value byte");
    assert!(Username::new(b"").unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// b. Round trips (proptest)
// ---------------------------------------------------------------------------------------------

/// An owned mirror of [`Body`] so proptest can generate it; [`OwnedBody::body`] borrows it back.
#[derive(Clone, Debug)]
enum OwnedBody {
    LogonRequest(Username, Password, bool),
    LogonResponse(i32),
    LogoutRequest(Vec<u8>),
    LoggedOut(Vec<u8>),
    Heartbeat(i64),
    TestRequest(i64),
    ResendRequest(i64, i64),
    GapFill(i64),
    Reject(i64, u8, Vec<u8>),
    ConnectionRequest(DeviceUid, u64, u16),
    ConnectionAccept(u16, u32, u64, [u8; 32]),
    ConnectionReject(u8, Vec<u8>),
    RegistrationRequest(DeviceUid, u64, [u8; 32]),
    RegistrationAccept(u64, bool),
    RegistrationReject(u8, Vec<u8>),
    GetDeviceConfig(i64),
    DeviceConfig(i64, Vec<u8>),
    App(u16, Vec<u8>),
}

impl OwnedBody {
    fn body(&self) -> Body<'_> {
        match self {
            Self::LogonRequest(username, password, reset) => Body::LogonRequest {
                username: *username,
                password: *password,
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
                device_uid: *uid,
                client_nonce: *nonce,
                client_version: *version,
            },
            Self::ConnectionAccept(port, ttl, nonce, cookie) => Body::ConnectionAccept {
                session_port: *port,
                cookie_ttl_ms: *ttl,
                client_nonce: *nonce,
                cookie: *cookie,
            },
            Self::ConnectionReject(reason, d) => {
                Body::ConnectionReject { reason: *reason, details: d }
            }
            Self::RegistrationRequest(uid, nonce, cookie) => Body::RegistrationRequest {
                device_uid: *uid,
                client_nonce: *nonce,
                cookie: *cookie,
            },
            Self::RegistrationAccept(id, resumed) => {
                Body::RegistrationAccept { session_id: *id, resumed: *resumed }
            }
            Self::RegistrationReject(reason, d) => {
                Body::RegistrationReject { reason: *reason, details: d }
            }
            Self::GetDeviceConfig(c) => Body::GetDeviceConfig { correlation_id: *c },
            Self::DeviceConfig(c, config) => Body::DeviceConfig { correlation_id: *c, config },
            Self::App(type_id, body) => Body::App { type_id: *type_id, body },
        }
    }
}

/// An owned message whose header agrees with its body (length and type id filled in).
#[derive(Clone, Debug)]
struct OwnedMessage {
    header: Header,
    body: OwnedBody,
}

impl OwnedMessage {
    fn message(&self) -> Message<'_> {
        Message { header: self.header, body: self.body.body() }
    }
}

fn printable(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(0x20u8..=0x7e, 0..=max)
}

fn fixed_str<const N: usize>() -> impl Strategy<Value = FixedStr<N>> {
    printable(N).prop_map(|v| FixedStr::<N>::new(&v).expect("printable and short enough"))
}

fn owned_body(max_app: usize) -> impl Strategy<Value = OwnedBody> {
    prop_oneof![
        (fixed_str::<16>(), fixed_str::<32>(), any::<bool>())
            .prop_map(|(u, p, r)| OwnedBody::LogonRequest(u, p, r)),
        any::<i32>().prop_map(OwnedBody::LogonResponse),
        printable(255).prop_map(OwnedBody::LogoutRequest),
        printable(255).prop_map(OwnedBody::LoggedOut),
        any::<i64>().prop_map(OwnedBody::Heartbeat),
        any::<i64>().prop_map(OwnedBody::TestRequest),
        (any::<i64>(), any::<i64>()).prop_map(|(f, t)| OwnedBody::ResendRequest(f, t)),
        any::<i64>().prop_map(OwnedBody::GapFill),
        (any::<i64>(), any::<u8>(), printable(255))
            .prop_map(|(r, reason, d)| OwnedBody::Reject(r, reason, d)),
        (fixed_str::<16>(), any::<u64>(), any::<u16>())
            .prop_map(|(u, n, v)| OwnedBody::ConnectionRequest(u, n, v)),
        (any::<u16>(), any::<u32>(), any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(p, t, n, c)| OwnedBody::ConnectionAccept(p, t, n, c)),
        (any::<u8>(), printable(CONNECTION_REJECT_DETAILS_MAX))
            .prop_map(|(r, d)| OwnedBody::ConnectionReject(r, d)),
        (fixed_str::<16>(), any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(u, n, c)| OwnedBody::RegistrationRequest(u, n, c)),
        (any::<u64>(), any::<bool>()).prop_map(|(s, r)| OwnedBody::RegistrationAccept(s, r)),
        (any::<u8>(), printable(REGISTRATION_REJECT_DETAILS_MAX))
            .prop_map(|(r, d)| OwnedBody::RegistrationReject(r, d)),
        any::<i64>().prop_map(OwnedBody::GetDeviceConfig),
        (any::<i64>(), printable(255)).prop_map(|(c, s)| OwnedBody::DeviceConfig(c, s)),
        (APP_TYPE_MIN..=u16::MAX, vec(any::<u8>(), 0..=max_app))
            .prop_map(|(t, b)| OwnedBody::App(t, b)),
    ]
}

fn owned_message_with(max_app: usize) -> impl Strategy<Value = OwnedMessage> {
    (owned_body(max_app), any::<bool>(), 0..=i64::MAX, 0..=i64::MAX, any::<i64>()).prop_map(
        |(body, resend, seq, last_processed, send_time)| {
            let b = body.body();
            let handshake = b.message_type().is_some_and(MessageType::is_handshake);
            let header = Header {
                flags: if resend { FLAG_RESEND } else { 0 },
                length: (HEADER_LEN + b.len()) as u16,
                type_id: b.type_id(),
                seq: if handshake { 0 } else { seq },
                last_processed,
                send_time,
            };
            OwnedMessage { header, body }
        },
    )
}

fn owned_message() -> impl Strategy<Value = OwnedMessage> {
    owned_message_with(300)
}

/// Whatever decodes is canonical: re-encoding it gives back exactly the bytes it came from.
fn assert_canonical(m: &Message<'_>, bytes: &[u8]) -> Result<(), TestCaseError> {
    let mut buf = vec![0u8; m.encoded_len()];
    let n = m.encode(&mut buf).map_err(|e| TestCaseError::fail(format!("re-encode: {e}")))?;
    prop_assert_eq!(&buf[..n], bytes, "decoded message re-encodes differently");
    Ok(())
}

proptest! {
    #[test]
    fn round_trip_every_type(m in owned_message()) {
        let msg = m.message();
        let len = HEADER_LEN + msg.body.len();
        prop_assert_eq!(msg.encoded_len() % 8, 0);
        prop_assert_eq!(msg.encoded_len(), align8(len));
        prop_assert!(msg.encoded_len() - len < 8);

        let mut buf = vec![0xa5u8; msg.encoded_len() + 16];
        let n = msg.encode(&mut buf).unwrap();
        prop_assert_eq!(n, msg.encoded_len());
        prop_assert_eq!(u16::from_le_bytes([buf[2], buf[3]]) as usize, len);
        prop_assert!(buf[len..n].iter().all(|&b| b == 0), "padding is zero");
        prop_assert!(buf[n..].iter().all(|&b| b == 0xa5), "nothing written past the padding");

        let (decoded, used) = Message::decode(&buf[..n]).unwrap();
        prop_assert_eq!(used, n);
        prop_assert_eq!(decoded, msg);
        // Decoding ignores what follows the padded message.
        let (decoded2, used2) = Message::decode(&buf).unwrap();
        prop_assert_eq!((decoded2, used2), (msg, n));
        // The exact frame decodes to the same.
        prop_assert_eq!(Message::decode_frame(&buf[..len]).unwrap(), msg);
        // A buffer one byte short is refused, not overrun.
        prop_assert_eq!(
            msg.encode(&mut buf[..n - 1]),
            Err(EncodeError::BufferTooSmall { needed: n })
        );
    }

    #[test]
    fn round_trip_large_app_bodies(
        type_id in APP_TYPE_MIN..=u16::MAX,
        len in 0usize..=(usize::from(u16::MAX) - HEADER_LEN),
        fill in any::<u8>(),
    ) {
        let body = vec![fill; len];
        let msg = Message {
            header: seq_header(0, (HEADER_LEN + len) as u16, type_id),
            body: Body::App { type_id, body: &body },
        };
        let bytes = encode_vec(&msg);
        prop_assert_eq!(bytes.len() % 8, 0);
        prop_assert_eq!(Message::decode(&bytes).unwrap(), (msg, bytes.len()));
    }

    #[test]
    fn round_trip_through_a_datagram(
        ms in vec(owned_message_with(64), 1..8),
        session_id in any::<u64>(),
    ) {
        let mut dgram = vec![0u8; DATAGRAM_PREFIX_LEN];
        prop_assert_eq!(write_prefix(&mut dgram, session_id), DATAGRAM_PREFIX_LEN);
        for m in &ms {
            dgram.extend_from_slice(&encode_vec(&m.message()));
        }
        let d = Datagram::parse(&dgram).unwrap();
        prop_assert_eq!(d.session_id, session_id);
        let got: Vec<Message<'_>> =
            d.frames().map(|f| Message::decode_frame(f.unwrap()).unwrap()).collect();
        let want: Vec<Message<'_>> = ms.iter().map(OwnedMessage::message).collect();
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------------------------
// c. Random bytes never panic
// ---------------------------------------------------------------------------------------------

/// Feeds `bytes` to a deframer of `capacity` in chunks of the given sizes, decoding every frame.
/// On a framing error the connection would be closed: the deframer is reset. Returns the number
/// of frames seen. Fails if the deframer ever gets stuck (full, yet neither a frame nor an error).
fn run_deframer(
    bytes: &[u8],
    capacity: usize,
    chunks: &[usize],
    mut on_frame: impl FnMut(&[u8]),
) -> Result<usize, TestCaseError> {
    let mut d = Deframer::new(capacity);
    let mut pos = 0;
    let mut frames = 0;
    let mut chunk = chunks.iter().cycle();
    while pos < bytes.len() {
        let end = (pos + chunk.next().copied().unwrap_or(1).max(1)).min(bytes.len());
        let pushed = d.push(&bytes[pos..end]);
        pos += pushed;
        let mut progressed = pushed > 0;
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => {
                    prop_assert!(frame.len() >= HEADER_LEN);
                    prop_assert!(align8(frame.len()) <= align8(capacity.max(HEADER_LEN)));
                    on_frame(frame);
                    frames += 1;
                    progressed = true;
                }
                Ok(None) => break,
                Err(_) => {
                    d.reset();
                    progressed = true;
                    break;
                }
            }
        }
        prop_assert!(progressed, "deframer stuck with {} bytes buffered", d.buffered());
        prop_assert!(d.buffered() <= align8(capacity.max(HEADER_LEN)));
    }
    Ok(frames)
}

/// Bytes that look like a message often enough to reach the body decoders: a valid-looking
/// header with a chosen type, flags, sequence number and a length near the body's, a body biased
/// towards printable ASCII and NUL, and zero padding.
fn plausible_bytes() -> impl Strategy<Value = Vec<u8>> {
    let ids = prop::sample::select(vec![
        0u16,
        1,
        2,
        3,
        4,
        5,
        10,
        11,
        20,
        21,
        30,
        50,
        51,
        52,
        53,
        54,
        55,
        56,
        57,
        58,
        99,
        100,
        300,
        u16::MAX,
    ]);
    let byte = prop_oneof![0x20u8..=0x7e, Just(0u8), Just(1u8), any::<u8>()];
    (ids, 0u8..3, -1i64..2, vec(byte, 0..140), -2i32..=2).prop_map(
        |(type_id, flags, seq, body, delta)| {
            let len = (HEADER_LEN + body.len()) as i32 + delta;
            let len = len.clamp(0, i32::from(u16::MAX)) as u16;
            let mut out = Vec::with_capacity(align8(usize::from(len)) + 8);
            out.push(PROTOCOL_ID);
            out.push(flags);
            out.extend_from_slice(&len.to_le_bytes());
            out.extend_from_slice(&type_id.to_le_bytes());
            out.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
            out.extend_from_slice(&seq.to_le_bytes());
            out.extend_from_slice(&0i64.to_le_bytes());
            out.extend_from_slice(&TIME.to_le_bytes());
            out.extend_from_slice(&body);
            out.resize(align8(out.len().max(usize::from(len))), 0);
            out
        },
    )
}

/// Every entry point on one input: must not panic; whatever decodes must be canonical.
fn exercise_all(bytes: &[u8], chunks: &[usize], capacity: usize) -> Result<(), TestCaseError> {
    if let Ok((m, used)) = Message::decode(bytes) {
        prop_assert!(used <= bytes.len() && used % 8 == 0 && used >= HEADER_LEN);
        assert_canonical(&m, &bytes[..used])?;
    }
    let _ = split_frame(bytes);
    let _ = Header::decode(bytes);
    if let Ok(m) = Message::decode_frame(bytes) {
        prop_assert_eq!(usize::from(m.header.length), bytes.len());
    }
    if let Ok(d) = Datagram::parse(bytes) {
        let mut count = 0;
        for f in d.frames() {
            count += 1;
            prop_assert!(count <= bytes.len() / HEADER_LEN + 1, "frames iterator runs on");
            if let Ok(frame) = f {
                prop_assert!(frame.len() >= HEADER_LEN);
                let _ = Message::decode_frame(frame);
            }
        }
    }
    run_deframer(bytes, capacity, chunks, |frame| {
        let _ = Message::decode_frame(frame);
    })?;
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(
        bytes in vec(any::<u8>(), 0..600),
        chunks in vec(1usize..80, 1..20),
        capacity in 0usize..700,
    ) {
        exercise_all(&bytes, &chunks, capacity)?;
    }

    #[test]
    fn random_bytes_after_valid_start_never_panic(
        mut bytes in vec(any::<u8>(), 0..600),
        chunks in vec(1usize..80, 1..20),
    ) {
        // Start with protocolId 0xDB so the deframer and decoder get past the first check.
        if let Some(b) = bytes.first_mut() {
            *b = PROTOCOL_ID;
        }
        if bytes.len() > 8 {
            bytes[6] = 1; // version 1
            bytes[7] = 0;
        }
        exercise_all(&bytes, &chunks, 512)?;
        // And behind a datagram prefix.
        let mut dgram = 7u64.to_le_bytes().to_vec();
        dgram.extend_from_slice(&bytes);
        exercise_all(&dgram, &chunks, 512)?;
    }

    #[test]
    fn plausible_bytes_never_panic(
        bytes in plausible_bytes(),
        chunks in vec(1usize..80, 1..20),
    ) {
        exercise_all(&bytes, &chunks, 512)?;
    }

    #[test]
    fn mutated_messages_never_panic(
        m in owned_message(),
        flips in vec((any::<Index>(), 1u8..=255), 1..4),
        chunks in vec(1usize..80, 1..20),
    ) {
        let mut bytes = encode_vec(&m.message());
        for (at, xor) in &flips {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        exercise_all(&bytes, &chunks, 512)?;
        let mut dgram = 0u64.to_le_bytes().to_vec();
        dgram.extend_from_slice(&bytes);
        exercise_all(&dgram, &chunks, 512)?;
    }

    #[test]
    fn truncated_messages_are_errors(m in owned_message(), cut in any::<Index>()) {
        let bytes = encode_vec(&m.message());
        let cut = cut.index(bytes.len()); // strictly shorter than the padded message
        let err = Message::decode(&bytes[..cut]).unwrap_err();
        let is_truncated = matches!(err, DecodeError::Truncated { .. });
        prop_assert!(is_truncated, "cut at {}: {:?}", cut, err);
    }
}

// ---------------------------------------------------------------------------------------------
// d. Malformed input: one specific error each
// ---------------------------------------------------------------------------------------------

fn decode_err(bytes: &[u8]) -> DecodeError {
    match Message::decode(bytes) {
        Ok((m, _)) => panic!("expected an error, decoded {m:?} from {}", to_hex(bytes)),
        Err(e) => e,
    }
}

/// Golden bytes with `edit` applied.
fn golden_with(golden_hex: &str, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut b = hex(golden_hex);
    edit(&mut b);
    b
}

#[test]
fn bad_protocol_id() {
    for p in [0x00, 0xdc, 0xbd, 0xff] {
        let b = golden_with(GOLDEN_HEARTBEAT, |b| b[0] = p);
        assert_eq!(decode_err(&b), DecodeError::InvalidProtocolId(p));
        assert_eq!(Header::decode(&b), Err(DecodeError::InvalidProtocolId(p)));
        assert_eq!(Message::decode_frame(&b), Err(DecodeError::InvalidProtocolId(p)));
    }
    // Garbage is named as such even when shorter than a header.
    assert_eq!(decode_err(b"GET / HTTP/1.1"), DecodeError::InvalidProtocolId(b'G'));
}

#[test]
fn bad_version() {
    for v in [0u16, 2, 0x0100, u16::MAX] {
        let b = golden_with(GOLDEN_HEARTBEAT, |b| set_u16(b, 6, v));
        assert_eq!(decode_err(&b), DecodeError::UnsupportedVersion(v));
    }
    // Version 1 written big-endian reads as 256.
    let b = golden_with(GOLDEN_HEARTBEAT, |b| b[6..8].copy_from_slice(&[0x00, 0x01]));
    assert_eq!(decode_err(&b), DecodeError::UnsupportedVersion(256));
}

#[test]
fn bad_flags() {
    for f in [0x02, 0x03, 0x80, 0xff] {
        let b = golden_with(GOLDEN_HEARTBEAT, |b| b[1] = f);
        assert_eq!(decode_err(&b), DecodeError::InvalidFlags(f));
    }
}

#[test]
fn too_short() {
    let hb = hex(GOLDEN_HEARTBEAT);
    assert_eq!(decode_err(&[]), DecodeError::Truncated { needed: HEADER_LEN });
    assert_eq!(decode_err(&hb[..1]), DecodeError::Truncated { needed: HEADER_LEN });
    assert_eq!(decode_err(&hb[..31]), DecodeError::Truncated { needed: HEADER_LEN });
    assert_eq!(decode_err(&hb[..32]), DecodeError::Truncated { needed: 40 });
    assert_eq!(decode_err(&hb[..39]), DecodeError::Truncated { needed: 40 });
    // The padding is part of the message: 81 bytes of a LogonRequest are not enough.
    let logon = hex(GOLDEN_LOGON_REQUEST);
    assert_eq!(decode_err(&logon[..81]), DecodeError::Truncated { needed: 88 });
    assert_eq!(decode_err(&logon[..87]), DecodeError::Truncated { needed: 88 });
    // An exact frame shorter than its messageLength.
    assert!(matches!(Message::decode_frame(&hb[..39]), Err(DecodeError::Truncated { .. })));
    assert!(matches!(Message::decode_frame(&hb[..10]), Err(DecodeError::Truncated { .. })));
}

#[test]
fn length_below_header() {
    for len in [0u16, 1, 8, 31] {
        let b = golden_with(GOLDEN_HEARTBEAT, |b| set_u16(b, 2, len));
        assert_eq!(decode_err(&b), DecodeError::LengthBelowHeader(len));
    }
}

#[test]
fn fixed_type_length_mismatch() {
    // Heartbeat declaring 41 bytes (padded to 48, so the padding check passes).
    let b = golden_with(GOLDEN_HEARTBEAT, |b| {
        set_u16(b, 2, 41);
        b.resize(48, 0);
    });
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 10, declared: 41, expected: 40 }
    );
    // Heartbeat with no body at all.
    let b = golden_with(GOLDEN_HEARTBEAT, |b| {
        set_u16(b, 2, 32);
        b.truncate(32);
    });
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 10, declared: 32, expected: 40 }
    );
    // LogonRequest one byte short (80 instead of 81).
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| {
        set_u16(b, 2, 80);
        b.truncate(80);
    });
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 1, declared: 80, expected: 81 }
    );
    // A ConnectionRequest cut to 120 bytes (the "shorter than 128" of DESIGN.md §2 rule 2).
    let b = golden_with(GOLDEN_CONNECTION_REQUEST, |b| {
        set_u16(b, 2, 120);
        b.truncate(120);
    });
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 50, declared: 120, expected: 128 }
    );
}

#[test]
fn variable_type_length_mismatch() {
    // LoggedOut: messageLength 68 means reasonLength 35 (0x23).
    let b = golden_with(GOLDEN_LOGGED_OUT, |b| b[32] = 0x22);
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 5, declared: 68, expected: 67 }
    );
    let b = golden_with(GOLDEN_LOGGED_OUT, |b| b[32] = 0x24);
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 5, declared: 68, expected: 69 }
    );
    // LoggedOut without even the length byte.
    let b = golden_with(GOLDEN_LOGGED_OUT, |b| {
        set_u16(b, 2, 32);
        b.truncate(32);
    });
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 5, declared: 32, expected: 33 }
    );
    // Reject whose detailsLength says 8 while messageLength says 7.
    let b = golden_with(GOLDEN_REJECT, |b| b[41] = 8);
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 30, declared: 49, expected: 50 }
    );
    // DeviceConfig whose configLength says 0 while messageLength says 9.
    let b = golden_with(GOLDEN_DEVICE_CONFIG, |b| b[40] = 0);
    assert_eq!(
        decode_err(&b),
        DecodeError::LengthMismatch { type_id: 57, declared: 50, expected: 41 }
    );
}

#[test]
fn variable_details_over_their_maximum() {
    // ConnectionReject with 91 detail bytes: consistent lengths, but over the 90-byte limit.
    let details = [b'x'; CONNECTION_REJECT_DETAILS_MAX + 1];
    let len = 34 + details.len();
    let mut b = hex(GOLDEN_CONNECTION_REJECT)[..32].to_vec();
    set_u16(&mut b, 2, len as u16);
    b.extend_from_slice(&[1, details.len() as u8]);
    b.extend_from_slice(&details);
    b.resize(align8(len), 0);
    assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::Details));

    let details = [b'x'; REGISTRATION_REJECT_DETAILS_MAX + 1];
    let len = 34 + details.len();
    let mut b = hex(GOLDEN_REGISTRATION_REJECT)[..32].to_vec();
    set_u16(&mut b, 2, len as u16);
    b.extend_from_slice(&[1, details.len() as u8]);
    b.extend_from_slice(&details);
    b.resize(align8(len), 0);
    assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::Details));
}

#[test]
fn bad_chars() {
    // Non-printable byte in the username.
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[34] = 0x07);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Username));
    // DEL (0x7f) is not printable either.
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[32] = 0x7f);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Username));
    // A non-NUL byte after the first NUL: "alice\0\0x".
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[39] = b'x');
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Username));
    // ... even in the last byte of the field.
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[47] = b'x');
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Username));
    // Password: high byte, and text after the NUL.
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[48] = 0x80);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Password));
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[79] = b'!');
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Password));
    // deviceUid in ConnectionRequest and RegistrationRequest.
    let b = golden_with(GOLDEN_CONNECTION_REQUEST, |b| b[40] = b'Z');
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::DeviceUid));
    let b = golden_with(GOLDEN_REGISTRATION_REQUEST, |b| b[32] = 0x1f);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::DeviceUid));
    // Variable fields: NUL or control bytes are refused.
    let b = golden_with(GOLDEN_LOGGED_OUT, |b| b[33] = 0x00);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Reason));
    let b = golden_with(GOLDEN_LOGOUT_REQUEST, |b| b[35] = b'\n');
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Reason));
    let b = golden_with(GOLDEN_REJECT, |b| b[42] = 0xff);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Details));
    let b = golden_with(GOLDEN_CONNECTION_REJECT, |b| b[34] = 0x00);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Details));
    let b = golden_with(GOLDEN_REGISTRATION_REJECT, |b| b[40] = 0x09);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Details));
    let b = golden_with(GOLDEN_DEVICE_CONFIG, |b| b[49] = 0x7f);
    assert_eq!(decode_err(&b), DecodeError::InvalidChars(Field::Config));
}

#[test]
fn bad_booleans_and_reserved_bytes() {
    for v in [2u8, 0xff] {
        let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[80] = v);
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::ResetSeqNum));
        let b = golden_with(GOLDEN_REGISTRATION_ACCEPT, |b| b[40] = v);
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::Resumed));
    }
    // ConnectionRequest: body bytes 26..96 (message 58..128) must be zero.
    for at in [58, 64, 100, 127] {
        let b = golden_with(GOLDEN_CONNECTION_REQUEST, |b| b[at] = 1);
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::Reserved), "at {at}");
    }
    // ConnectionAccept: reserved u16 at body offset 2.
    let b = golden_with(GOLDEN_CONNECTION_ACCEPT, |b| b[35] = 0x80);
    assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::Reserved));
    // RegistrationAccept: body bytes 9..16 must be zero.
    for at in [41, 47] {
        let b = golden_with(GOLDEN_REGISTRATION_ACCEPT, |b| b[at] = 1);
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::Reserved), "at {at}");
    }
}

#[test]
fn unknown_message_type() {
    for t in [0u16, 3, 6, 12, 31, 49, 58, 99] {
        // A header-only message (length 32): the type is checked before any body rule.
        let b = golden_with(GOLDEN_APP_EMPTY, |b| set_u16(b, 4, t));
        assert_eq!(decode_err(&b), DecodeError::UnknownMessageType(t), "type {t}");
        // And with a body.
        let b = golden_with(GOLDEN_HEARTBEAT, |b| set_u16(b, 4, t));
        assert_eq!(decode_err(&b), DecodeError::UnknownMessageType(t), "type {t}");
    }
}

#[test]
fn non_zero_padding() {
    for at in [81, 84, 87] {
        let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[at] = 1);
        assert_eq!(decode_err(&b), DecodeError::NonZeroPadding, "at {at}");
        assert_eq!(split_frame(&b), Err(DecodeError::NonZeroPadding));
    }
    let b = golden_with(GOLDEN_APP, |b| b[39] = 0x80);
    assert_eq!(decode_err(&b), DecodeError::NonZeroPadding);
}

#[test]
fn handshake_with_sequence_number() {
    for golden in [
        GOLDEN_CONNECTION_REQUEST,
        GOLDEN_CONNECTION_ACCEPT,
        GOLDEN_CONNECTION_REJECT,
        GOLDEN_REGISTRATION_REQUEST,
        GOLDEN_REGISTRATION_ACCEPT,
        GOLDEN_REGISTRATION_REJECT,
        GOLDEN_GET_DEVICE_CONFIG,
        GOLDEN_DEVICE_CONFIG,
    ] {
        let b = golden_with(golden, |b| set_i64(b, 8, 1));
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::SequenceNum));
    }
}

#[test]
fn negative_sequence_numbers() {
    for seq in [-1, i64::MIN] {
        let b = golden_with(GOLDEN_HEARTBEAT, |b| set_i64(b, 8, seq));
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::SequenceNum));
        let b = golden_with(GOLDEN_HEARTBEAT, |b| set_i64(b, 16, seq));
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::LastProcessedSeqNum));
        // Handshake messages too (negative is also non-zero).
        let b = golden_with(GOLDEN_CONNECTION_REQUEST, |b| set_i64(b, 8, seq));
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::SequenceNum));
    }
    // sendTime is a timestamp, not a sequence number: any value is accepted.
    let b = golden_with(GOLDEN_HEARTBEAT, |b| set_i64(b, 24, -1));
    assert_eq!(Message::decode(&b).unwrap().0.header.send_time, -1);
}

#[test]
fn trailing_bytes_in_a_datagram() {
    let mut dgram = 0x0102_0304_0506_0708u64.to_le_bytes().to_vec();
    dgram.extend_from_slice(&hex(GOLDEN_HEARTBEAT));
    dgram.extend_from_slice(&[0u8; 8]);
    let d = Datagram::parse(&dgram).unwrap();
    let mut frames = d.frames();
    let first = frames.next().unwrap().unwrap();
    assert_eq!(first, &hex(GOLDEN_HEARTBEAT)[..]);
    assert_eq!(frames.next(), Some(Err(DecodeError::TrailingBytes(8))));
    assert_eq!(frames.next(), None, "the iterator ends after an error");

    // A second message cut short is named by split_frame.
    let mut dgram = 0u64.to_le_bytes().to_vec();
    dgram.extend_from_slice(&hex(GOLDEN_HEARTBEAT));
    dgram.extend_from_slice(&hex(GOLDEN_LOGON_REQUEST)[..48]);
    let d = Datagram::parse(&dgram).unwrap();
    let got: Vec<_> = d.frames().collect();
    assert_eq!(got.len(), 2);
    assert!(got[0].is_ok());
    assert_eq!(got[1], Err(DecodeError::Truncated { needed: 88 }));
}

#[test]
fn reject_reasons_follow_design() {
    use DecodeError as E;
    use RejectReason as R;
    let cases = [
        (E::InvalidProtocolId(0), R::InvalidProtocol, 1),
        (E::UnsupportedVersion(2), R::InvalidProtocol, 1),
        (E::UnknownMessageType(3), R::UnknownMessageType, 2),
        (E::Truncated { needed: 40 }, R::InvalidLength, 3),
        (E::LengthBelowHeader(31), R::InvalidLength, 3),
        (E::LengthMismatch { type_id: 10, declared: 41, expected: 40 }, R::InvalidLength, 3),
        (E::NonZeroPadding, R::InvalidLength, 3),
        (E::TrailingBytes(8), R::InvalidLength, 3),
        (E::TooLong { declared: 9000, max: 4096 }, R::InvalidLength, 3),
        (E::InvalidFlags(2), R::InvalidFieldValue, 4),
        (E::InvalidChars(Field::Username), R::InvalidFieldValue, 4),
        (E::InvalidFieldValue(Field::ResetSeqNum), R::InvalidFieldValue, 4),
        (E::InvalidFieldValue(Field::SequenceNum), R::InvalidFieldValue, 4),
        (E::InvalidFieldValue(Field::Reserved), R::InvalidFieldValue, 4),
    ];
    for (err, reason, wire) in cases {
        assert_eq!(err.reject_reason(), reason, "{err:?}");
        assert_eq!(err.reject_reason() as u8, wire, "{err:?}");
        assert!(!err.as_str().is_empty());
        assert!(!err.to_string().is_empty());
    }
    // And from real inputs, end to end.
    let b = golden_with(GOLDEN_HEARTBEAT, |b| set_u16(b, 6, 2));
    assert_eq!(decode_err(&b).reject_reason(), R::InvalidProtocol);
    let b = golden_with(GOLDEN_HEARTBEAT, |b| set_u16(b, 4, 99));
    assert_eq!(decode_err(&b).reject_reason(), R::UnknownMessageType);
    let b = golden_with(GOLDEN_LOGGED_OUT, |b| b[32] = 0x22);
    assert_eq!(decode_err(&b).reject_reason(), R::InvalidLength);
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[80] = 2);
    assert_eq!(decode_err(&b).reject_reason(), R::InvalidFieldValue);
}

#[test]
fn encode_errors() {
    let mut buf = [0u8; 512];
    let m =
        Message { header: seq_header(0, 0, 0), body: Body::LoggedOut { reason: b"bad\0reason" } };
    assert_eq!(m.encode(&mut buf), Err(EncodeError::InvalidField(Field::Reason)));
    let long = [b'x'; 256];
    let m = Message { header: seq_header(0, 0, 0), body: Body::LogoutRequest { reason: &long } };
    assert_eq!(m.encode(&mut buf), Err(EncodeError::InvalidField(Field::Reason)));
    let m = Message {
        header: hs_header(0, 0),
        body: Body::ConnectionReject { reason: 1, details: &long[..91] },
    };
    assert_eq!(m.encode(&mut buf), Err(EncodeError::InvalidField(Field::Details)));
    let m = Message {
        header: hs_header(0, 0),
        body: Body::RegistrationReject { reason: 1, details: &long[..51] },
    };
    assert_eq!(m.encode(&mut buf), Err(EncodeError::InvalidField(Field::Details)));
    let m = Message {
        header: hs_header(0, 0),
        body: Body::DeviceConfig { correlation_id: 1, config: b"tab\there" },
    };
    assert_eq!(m.encode(&mut buf), Err(EncodeError::InvalidField(Field::Config)));
    let huge = vec![0u8; usize::from(u16::MAX) - HEADER_LEN + 1];
    let m = Message { header: seq_header(0, 0, 0), body: Body::App { type_id: 100, body: &huge } };
    assert_eq!(m.encode(&mut vec![0u8; 70_000]), Err(EncodeError::BodyTooLong));
    let m = Message { header: seq_header(0, 0, 0), body: Body::Heartbeat { correlation_id: 1 } };
    assert_eq!(m.encode(&mut buf[..39]), Err(EncodeError::BufferTooSmall { needed: 40 }));
    assert_eq!(m.encode(&mut buf[..40]), Ok(40));
}

/// The encoder should refuse what its own decoder refuses (or reads as a different message).
#[test]
fn encode_refuses_app_type_below_100() {
    let mut buf = [0u8; 64];
    let m =
        Message { header: seq_header(0, 0, 0), body: Body::App { type_id: 10, body: &[0u8; 8] } };
    assert!(m.encode(&mut buf).is_err(), "App type 10 encoded as {:?}", Message::decode(&buf));
    let m = Message { header: seq_header(0, 0, 0), body: Body::App { type_id: 3, body: b"" } };
    assert!(m.encode(&mut buf).is_err());
}

/// The encoder should refuse header values its own decoder refuses.
#[test]
fn encode_refuses_headers_the_decoder_refuses() {
    let mut buf = [0u8; 64];
    let body = Body::Heartbeat { correlation_id: 1 };
    let m = Message { header: header(0x02, 0, 0, 1, 0), body };
    assert!(m.encode(&mut buf).is_err(), "flags 0x02");
    let m = Message { header: header(0, 0, 0, -1, 0), body };
    assert!(m.encode(&mut buf).is_err(), "negative sequenceNum");
    let m = Message { header: header(0, 0, 0, 1, -1), body };
    assert!(m.encode(&mut buf).is_err(), "negative lastProcessedSeqNum");
    let m = Message {
        header: header(0, 0, 0, 1, 0),
        body: Body::GetDeviceConfig { correlation_id: 1 },
    };
    assert!(m.encode(&mut buf).is_err(), "handshake message with sequenceNum 1");
}

// ---------------------------------------------------------------------------------------------
// e. Deframer
// ---------------------------------------------------------------------------------------------

/// Drains every frame currently available.
fn drain(d: &mut Deframer) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(f) = d.next_frame().expect("no framing error") {
        out.push(f.to_vec());
    }
    out
}

#[test]
fn deframer_back_to_back_frames_in_one_push() {
    let mut stream = Vec::new();
    for g in [GOLDEN_HEARTBEAT, GOLDEN_LOGON_REQUEST, GOLDEN_APP, GOLDEN_LOGGED_OUT] {
        stream.extend_from_slice(&hex(g));
    }
    let mut d = Deframer::new(4096);
    assert_eq!(d.push(&stream), stream.len());
    assert_eq!(d.buffered(), stream.len());
    let frames = drain(&mut d);
    assert_eq!(frames.len(), 4);
    // Frames are exactly messageLength bytes (no padding).
    assert_eq!(frames.iter().map(Vec::len).collect::<Vec<_>>(), vec![40, 81, 37, 68]);
    assert_eq!(Message::decode_frame(&frames[0]).unwrap().body.type_id(), 10);
    assert_eq!(Message::decode_frame(&frames[1]).unwrap().body.type_id(), 1);
    assert_eq!(Message::decode_frame(&frames[2]).unwrap().body.type_id(), 300);
    assert_eq!(Message::decode_frame(&frames[3]).unwrap().body.type_id(), 5);
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.next_frame(), Ok(None));
}

#[test]
fn deframer_frame_split_into_one_byte_pushes() {
    let logon = hex(GOLDEN_LOGON_REQUEST);
    let mut d = Deframer::new(128);
    for (i, byte) in logon.iter().enumerate() {
        assert_eq!(d.next_frame(), Ok(None), "frame reported after only {i} bytes");
        assert_eq!(d.push(core::slice::from_ref(byte)), 1);
    }
    // All 88 bytes (81 + 7 padding) are in: now the frame comes out.
    let frame = d.next_frame().unwrap().unwrap().to_vec();
    assert_eq!(frame, &logon[..81]);
    assert_eq!(d.next_frame(), Ok(None));
    assert_eq!(d.buffered(), 0);
}

#[test]
fn deframer_keeps_a_partial_frame() {
    let mut stream = hex(GOLDEN_HEARTBEAT);
    stream.extend_from_slice(&hex(GOLDEN_REJECT));
    let mut d = Deframer::new(256);
    // The whole heartbeat and 20 bytes of the reject.
    assert_eq!(d.push(&stream[..60]), 60);
    assert_eq!(drain(&mut d), vec![stream[..40].to_vec()]);
    assert_eq!(d.buffered(), 20);
    assert_eq!(d.next_frame(), Ok(None));
    assert_eq!(d.buffered(), 20, "a partial frame stays buffered");
    // The rest but one byte of the padding: still not a frame.
    assert_eq!(d.push(&stream[60..95]), 35);
    assert_eq!(d.next_frame(), Ok(None));
    assert_eq!(d.push(&stream[95..]), 1);
    assert_eq!(drain(&mut d), vec![stream[40..89].to_vec()]);
    assert_eq!(d.buffered(), 0);
}

#[test]
fn deframer_frame_larger_than_capacity() {
    let logon = hex(GOLDEN_LOGON_REQUEST); // padded 88
    let mut d = Deframer::new(64);
    assert_eq!(d.push(&logon), 64, "only the capacity fits");
    assert_eq!(d.next_frame(), Err(DecodeError::TooLong { declared: 81, max: 64 }));
    // Detected from the first 4 bytes already, before the buffer fills.
    let mut d = Deframer::new(64);
    d.push(&logon[..4]);
    assert_eq!(d.next_frame(), Err(DecodeError::TooLong { declared: 81, max: 64 }));
    // Exactly the capacity is fine.
    let mut d = Deframer::new(88);
    assert_eq!(d.push(&logon), 88);
    assert_eq!(drain(&mut d), vec![logon[..81].to_vec()]);
    // The error maps to INVALID_LENGTH.
    assert_eq!(
        DecodeError::TooLong { declared: 81, max: 64 }.reject_reason(),
        RejectReason::InvalidLength
    );
}

#[test]
fn deframer_garbage_first_byte() {
    let mut d = Deframer::new(256);
    d.push(b"GET / HTTP/1.1\r\n");
    assert_eq!(d.next_frame(), Err(DecodeError::InvalidProtocolId(b'G')));
    // One garbage byte is enough to tell.
    let mut d = Deframer::new(256);
    d.push(&[0x16]);
    assert_eq!(d.next_frame(), Err(DecodeError::InvalidProtocolId(0x16)));
    // Garbage after a good frame: the good frame comes out first.
    let mut d = Deframer::new(256);
    d.push(&hex(GOLDEN_HEARTBEAT));
    d.push(&[0x00; 8]);
    assert!(d.next_frame().unwrap().is_some());
    assert_eq!(d.next_frame(), Err(DecodeError::InvalidProtocolId(0)));
    // reset() forgets everything, for reuse.
    d.reset();
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.next_frame(), Ok(None));
    d.push(&hex(GOLDEN_TEST_REQUEST));
    assert_eq!(drain(&mut d).len(), 1);
}

#[test]
fn deframer_header_errors_need_a_whole_header() {
    // Bad flags, short length, negative seq: reported once the 32 header bytes are in.
    for (edit, want) in [
        ((1usize, 0x02u8), DecodeError::InvalidFlags(0x02)),
        ((2, 31), DecodeError::LengthBelowHeader(31)),
        ((6, 9), DecodeError::UnsupportedVersion(9)),
        ((15, 0x80), DecodeError::InvalidFieldValue(Field::SequenceNum)),
    ] {
        let b = golden_with(GOLDEN_HEARTBEAT, |b| b[edit.0] = edit.1);
        let mut d = Deframer::new(256);
        d.push(&b[..31]);
        assert_eq!(d.next_frame(), Ok(None));
        d.push(&b[31..32]);
        assert_eq!(d.next_frame(), Err(want));
    }
    // Non-zero padding needs the padding.
    let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[85] = 9);
    let mut d = Deframer::new(256);
    d.push(&b);
    assert_eq!(d.next_frame(), Err(DecodeError::NonZeroPadding));
}

#[test]
fn deframer_compacts_for_a_long_stream() {
    // Far more bytes than the 96-byte capacity, in odd chunk sizes: the buffer must keep moving
    // partial frames to the front.
    let goldens = [
        GOLDEN_HEARTBEAT,
        GOLDEN_LOGON_REQUEST,
        GOLDEN_APP,
        GOLDEN_REJECT,
        GOLDEN_LOGON_RESPONSE,
        GOLDEN_GAP_FILL,
        GOLDEN_DEVICE_CONFIG,
    ];
    let mut stream = Vec::new();
    let mut want = Vec::new();
    for i in 0..2000 {
        let g = hex(goldens[i % goldens.len()]);
        let len = usize::from(u16::from_le_bytes([g[2], g[3]]));
        want.push(g[..len].to_vec());
        stream.extend_from_slice(&g);
    }
    assert!(stream.len() > 100_000);
    for chunk in [1usize, 7, 13, 40, 96, 1000] {
        let mut d = Deframer::new(96);
        let mut got = Vec::new();
        let mut pos = 0;
        while pos < stream.len() {
            let end = (pos + chunk).min(stream.len());
            let n = d.push(&stream[pos..end]);
            pos += n;
            let frames = drain(&mut d);
            assert!(n > 0 || !frames.is_empty(), "stuck at {pos} with chunk {chunk}");
            got.extend(frames);
        }
        assert_eq!(d.buffered(), 0);
        assert_eq!(got.len(), want.len(), "chunk {chunk}");
        assert!(got == want, "frames differ with chunk {chunk}");
    }
}

#[test]
fn deframer_spare_and_filled() {
    // The zero-copy path: read straight into spare(), then report the count.
    let hb = hex(GOLDEN_HEARTBEAT);
    let mut d = Deframer::new(64);
    let spare = d.spare();
    assert_eq!(spare.len(), 64);
    spare[..40].copy_from_slice(&hb);
    d.filled(40);
    assert_eq!(drain(&mut d), vec![hb.clone()]);
    // After the frame is taken, spare() hands back the whole buffer again.
    assert_eq!(d.spare().len(), 64);
}

proptest! {
    #[test]
    fn deframer_valid_stream_in_random_chunks(
        ms in vec(owned_message(), 1..20),
        chunks in vec(1usize..200, 1..10),
    ) {
        let mut stream = Vec::new();
        for m in &ms {
            stream.extend_from_slice(&encode_vec(&m.message()));
        }
        let mut got = Vec::new();
        let n = run_deframer(&stream, 512, &chunks, |f| got.push(f.to_vec()))?;
        prop_assert_eq!(n, ms.len());
        for (frame, m) in got.iter().zip(&ms) {
            prop_assert_eq!(Message::decode_frame(frame).unwrap(), m.message());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// f. Datagrams
// ---------------------------------------------------------------------------------------------

#[test]
fn datagram_prefix() {
    let mut dgram = hex("08 07 06 05 04 03 02 01");
    dgram.extend_from_slice(&hex(GOLDEN_HEARTBEAT));
    let d = Datagram::parse(&dgram).unwrap();
    assert_eq!(d.session_id, 0x0102_0304_0506_0708);
    assert_eq!(d.payload, &dgram[8..]);
    let frames: Vec<_> = d.frames().collect::<Result<_, _>>().unwrap();
    assert_eq!(frames.len(), 1);
    assert_eq!(
        Message::decode_frame(frames[0]).unwrap().body,
        Body::Heartbeat { correlation_id: 0x3132_3334_3536_3738 }
    );

    // Handshake datagrams carry prefix 0.
    let mut dgram = vec![0u8; 8];
    dgram.extend_from_slice(&hex(GOLDEN_CONNECTION_REQUEST));
    assert_eq!(dgram.len(), 136);
    assert_eq!(Datagram::parse(&dgram).unwrap().session_id, 0);

    // Shorter than prefix + header.
    for len in [0, 7, 8, 39] {
        assert_eq!(
            Datagram::parse(&dgram[..len]).unwrap_err(),
            DecodeError::Truncated { needed: DATAGRAM_PREFIX_LEN + HEADER_LEN },
            "len {len}"
        );
    }
}

#[test]
fn datagram_with_several_messages() {
    let goldens = [
        GOLDEN_GET_DEVICE_CONFIG,
        GOLDEN_LOGON_REQUEST,
        GOLDEN_APP,
        GOLDEN_HEARTBEAT,
        GOLDEN_LOGGED_OUT,
        GOLDEN_APP_EMPTY,
    ];
    let mut dgram = vec![0u8; 8];
    assert_eq!(write_prefix(&mut dgram, 0xc1c2_c3c4_c5c6_c7c8), 8);
    for g in goldens {
        dgram.extend_from_slice(&hex(g));
    }
    let d = Datagram::parse(&dgram).unwrap();
    assert_eq!(d.session_id, 0xc1c2_c3c4_c5c6_c7c8);
    let types: Vec<u16> =
        d.frames().map(|f| Message::decode_frame(f.unwrap()).unwrap().body.type_id()).collect();
    assert_eq!(types, vec![56, 1, 300, 10, 5, 100]);
    // Each frame is the unpadded message, in order.
    let lens: Vec<usize> = d.frames().map(|f| f.unwrap().len()).collect();
    assert_eq!(lens, vec![40, 81, 37, 40, 68, 32]);
}

#[test]
fn datagram_bad_message_ends_iteration() {
    let mut dgram = vec![0u8; 8];
    dgram.extend_from_slice(&hex(GOLDEN_HEARTBEAT));
    dgram.extend_from_slice(&golden_with(GOLDEN_TEST_REQUEST, |b| b[1] = 0x04));
    dgram.extend_from_slice(&hex(GOLDEN_HEARTBEAT));
    let got: Vec<_> = Datagram::parse(&dgram).unwrap().frames().collect();
    assert_eq!(got.len(), 2);
    assert!(got[0].is_ok());
    assert_eq!(got[1], Err(DecodeError::InvalidFlags(0x04)));
    // A frame that frames fine but has a bad body is caught by decode_frame.
    let mut dgram = vec![0u8; 8];
    dgram.extend_from_slice(&golden_with(GOLDEN_LOGON_REQUEST, |b| b[80] = 2));
    let frame = Datagram::parse(&dgram).unwrap().frames().next().unwrap().unwrap();
    assert_eq!(
        Message::decode_frame(frame),
        Err(DecodeError::InvalidFieldValue(Field::ResetSeqNum))
    );
}

#[test]
fn datagram_write_prefix() {
    let mut buf = [0xffu8; 16];
    assert_eq!(write_prefix(&mut buf, 0x0102_0304_0506_0708), 8);
    assert_eq!(&buf[..8], &hex("08 07 06 05 04 03 02 01")[..]);
    assert_eq!(&buf[8..], &[0xff; 8], "only the prefix is written");
    assert_eq!(write_prefix(&mut buf, 0), 8);
    assert_eq!(&buf[..8], &[0; 8]);
    // Too short: nothing written.
    let mut short = [0xaau8; 7];
    assert_eq!(write_prefix(&mut short, 1), 0);
    assert_eq!(short, [0xaa; 7]);
    // write_prefix + encode + parse agree.
    let mut dgram = [0u8; 8 + 88];
    write_prefix(&mut dgram, 42);
    let logon = hex(GOLDEN_LOGON_REQUEST);
    let m = Message::decode(&logon).unwrap().0;
    assert_eq!(m.encode(&mut dgram[8..]), Ok(88));
    let d = Datagram::parse(&dgram).unwrap();
    assert_eq!(d.session_id, 42);
    assert_eq!(Message::decode_frame(d.frames().next().unwrap().unwrap()), Ok(m));
}
