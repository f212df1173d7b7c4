//! a. Golden bytes, one per message type (DESIGN.md §1.1–§1.4), written out by hand.

use super::*;

// ---------------------------------------------------------------------------------------------
// a. Golden bytes, one per message type (DESIGN.md §1.1–§1.4)
// ---------------------------------------------------------------------------------------------
//
// Header lines are always: protocolId flags messageLength(2) messageTypeId(2) version(2), then
// sequenceNum, lastProcessedSeqNum, sendTime (8 bytes each, little-endian).

/// Type 1, messageLength 81 (0x51), padded to 88.
pub(super) const GOLDEN_LOGON_REQUEST: &str = concat!(
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
pub(super) const GOLDEN_LOGON_RESPONSE: &str = concat!(
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
pub(super) const GOLDEN_LOGOUT_REQUEST: &str = concat!(
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
pub(super) const GOLDEN_LOGGED_OUT: &str = concat!(
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
pub(super) const GOLDEN_HEARTBEAT: &str = concat!(
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
pub(super) const GOLDEN_TEST_REQUEST: &str = concat!(
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
pub(super) const GOLDEN_RESEND_REQUEST: &str = concat!(
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
pub(super) const GOLDEN_GAP_FILL: &str = concat!(
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
pub(super) const GOLDEN_REJECT: &str = concat!(
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
pub(super) const GOLDEN_CONNECTION_REQUEST: &str = concat!(
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
pub(super) const GOLDEN_CONNECTION_ACCEPT: &str = concat!(
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
pub(super) const GOLDEN_CONNECTION_REJECT: &str = concat!(
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
pub(super) const GOLDEN_REGISTRATION_REQUEST: &str = concat!(
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
pub(super) const GOLDEN_REGISTRATION_ACCEPT: &str = concat!(
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
pub(super) const GOLDEN_REGISTRATION_REJECT: &str = concat!(
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
pub(super) const GOLDEN_GET_DEVICE_CONFIG: &str = concat!(
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
pub(super) const GOLDEN_DEVICE_CONFIG: &str = concat!(
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
pub(super) const GOLDEN_APP: &str = concat!(
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
pub(super) const GOLDEN_APP_EMPTY: &str = concat!(
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
// Host data (DESIGN.md §1.6): application messages whose bodies `HostMessage` reads
// ---------------------------------------------------------------------------------------------

/// Type 400 (0x0190, HostData C→S), body "ls\r\n": messageLength 36 (0x24), padded 40.
pub(super) const GOLDEN_HOST_DATA_TO_HOST: &str = concat!(
    "db 00 24 00 90 01 01 00", // length 36, type 0x0190
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "6c 73 0d 0a 00 00 00 00", // "ls" CR LF, 4 bytes padding
);

/// Type 401 (0x0191, HostData S→C), body IAC WILL ECHO (ff fb 01): messageLength 35 (0x23).
pub(super) const GOLDEN_HOST_DATA_FROM_HOST: &str = concat!(
    "db 00 23 00 91 01 01 00", // length 35, type 0x0191
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "ff fb 01 00 00 00 00 00", // telnet IAC WILL ECHO, 5 bytes padding
);

/// Type 402 (0x0192, HostStatus), UNREACHABLE (4) "refused": messageLength 41 (0x29), padded 48.
pub(super) const GOLDEN_HOST_STATUS: &str = concat!(
    "db 00 29 00 92 01 01 00", // length 41, type 0x0192
    "08 07 06 05 04 03 02 01", //
    "18 17 16 15 14 13 12 11", //
    "28 27 26 25 24 23 22 21", //
    "04 07 72 65 66 75 73 65", // state 4, detailsLength 7, "refuse" ...
    "64 00 00 00 00 00 00 00", // ... "d", 7 bytes padding
);

#[test]
fn golden_host_data_to_host() {
    let expected = Message {
        header: seq_header(0, 36, 400),
        body: Body::App { type_id: 400, body: b"ls\r\n" },
    };
    check_golden(GOLDEN_HOST_DATA_TO_HOST, &expected);
    assert_eq!(HostMessage::decode(400, b"ls\r\n"), Ok(Some(HostMessage::ToHost(b"ls\r\n"))));
    let mut body = [0u8; 4];
    assert_eq!(HostMessage::ToHost(b"ls\r\n").encode_body(&mut body), Ok(4));
    assert_eq!(&body, &hex(GOLDEN_HOST_DATA_TO_HOST)[32..36]);
    assert_eq!(HostMessage::ToHost(b"x").type_id(), HOST_DATA_TO_HOST);
}

#[test]
fn golden_host_data_from_host() {
    let bytes = hex(GOLDEN_HOST_DATA_FROM_HOST);
    let expected = Message {
        header: seq_header(0, 35, 401),
        body: Body::App { type_id: 401, body: &[0xff, 0xfb, 0x01] },
    };
    check_golden(GOLDEN_HOST_DATA_FROM_HOST, &expected);
    // Host bytes are opaque: telnet commands (0xff) pass through untouched.
    let (m, _) = Message::decode(&bytes).unwrap();
    let Body::App { type_id, body } = m.body else { panic!("not an app body: {m:?}") };
    assert_eq!(
        HostMessage::decode(type_id, body),
        Ok(Some(HostMessage::FromHost(&[0xff, 0xfb, 1])))
    );
    assert_eq!(HostMessage::FromHost(b"x").type_id(), HOST_DATA_FROM_HOST);
}

#[test]
fn golden_host_status() {
    let bytes = hex(GOLDEN_HOST_STATUS);
    let expected = Message {
        header: seq_header(0, 41, 402),
        body: Body::App { type_id: 402, body: &bytes[32..41] },
    };
    check_golden(GOLDEN_HOST_STATUS, &expected);
    let got = HostMessage::decode(402, &bytes[32..41]).unwrap().unwrap();
    assert_eq!(got, HostMessage::Status { state: HostState::Unreachable, details: b"refused" });
    let mut body = [0u8; 9];
    assert_eq!(got.encode_body(&mut body), Ok(9));
    assert_eq!(&body[..], &bytes[32..41]);
    assert_eq!(StatusBuf::new(HostState::Unreachable, b"refused").as_bytes(), &bytes[32..41]);
    // Every state has the number DESIGN.md §1.6 gives it.
    for (v, s) in [
        (1, HostState::Connected),
        (2, HostState::Connecting),
        (3, HostState::ClosedByHost),
        (4, HostState::Unreachable),
        (5, HostState::IdleTimeout),
    ] {
        assert_eq!(HostState::from_u8(v), Some(s));
        assert_eq!(s as u8, v);
    }
}
