//! d. Malformed input: one specific error (and Reject reason) each.

use super::*;

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

/// Golden bytes cut to `len`, with messageLength saying so.
fn cut_to(golden_hex: &str, len: u16) -> Vec<u8> {
    golden_with(golden_hex, |b| {
        set_u16(b, 2, len);
        b.truncate(usize::from(len));
    })
}

/// Each case must fail with `LengthMismatch { type_id, declared, expected }`.
fn check_length_mismatches(cases: &[(&str, Vec<u8>, u16, u16, usize)]) {
    for &(what, ref b, type_id, declared, expected) in cases {
        assert_eq!(
            decode_err(b),
            DecodeError::LengthMismatch { type_id, declared, expected },
            "{what}"
        );
    }
}

#[test]
fn fixed_type_length_mismatch() {
    check_length_mismatches(&[
        (
            "Heartbeat declaring 41 bytes (padded to 48, so the padding check passes)",
            golden_with(GOLDEN_HEARTBEAT, |b| {
                set_u16(b, 2, 41);
                b.resize(48, 0);
            }),
            10,
            41,
            40,
        ),
        ("Heartbeat with no body at all", cut_to(GOLDEN_HEARTBEAT, 32), 10, 32, 40),
        (
            "LogonRequest one byte short (80 instead of 81)",
            cut_to(GOLDEN_LOGON_REQUEST, 80),
            1,
            80,
            81,
        ),
        (
            "a ConnectionRequest cut to 120 bytes (the \"shorter than 128\" of DESIGN.md §2 rule 2)",
            cut_to(GOLDEN_CONNECTION_REQUEST, 120),
            50,
            120,
            128,
        ),
    ]);
}

#[test]
fn variable_type_length_mismatch() {
    check_length_mismatches(&[
        // LoggedOut: messageLength 68 means reasonLength 35 (0x23).
        ("LoggedOut, reasonLength 34", golden_with(GOLDEN_LOGGED_OUT, |b| b[32] = 0x22), 5, 68, 67),
        ("LoggedOut, reasonLength 36", golden_with(GOLDEN_LOGGED_OUT, |b| b[32] = 0x24), 5, 68, 69),
        ("LoggedOut without even the length byte", cut_to(GOLDEN_LOGGED_OUT, 32), 5, 32, 33),
        (
            "Reject whose detailsLength says 8 while messageLength says 7",
            golden_with(GOLDEN_REJECT, |b| b[41] = 8),
            30,
            49,
            50,
        ),
        (
            "DeviceConfig whose configLength says 0 while messageLength says 9",
            golden_with(GOLDEN_DEVICE_CONFIG, |b| b[40] = 0),
            57,
            50,
            41,
        ),
    ]);
}

#[test]
fn variable_details_over_their_maximum() {
    // A reject with one detail byte over its limit: consistent lengths, but over the limit (90
    // bytes for ConnectionReject, 50 for RegistrationReject).
    for (golden, max) in [
        (GOLDEN_CONNECTION_REJECT, CONNECTION_REJECT_DETAILS_MAX),
        (GOLDEN_REGISTRATION_REJECT, REGISTRATION_REJECT_DETAILS_MAX),
    ] {
        let details = vec![b'x'; max + 1];
        let len = 34 + details.len();
        let mut b = hex(golden)[..32].to_vec();
        set_u16(&mut b, 2, len as u16);
        b.extend_from_slice(&[1, details.len() as u8]);
        b.extend_from_slice(&details);
        b.resize(align8(len), 0);
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::Details), "max {max}");
    }
}

#[test]
fn bad_chars() {
    let cases = [
        ("non-printable byte in the username", GOLDEN_LOGON_REQUEST, 34, 0x07, Field::Username),
        ("DEL (0x7f) is not printable either", GOLDEN_LOGON_REQUEST, 32, 0x7f, Field::Username),
        (
            "username \"alice\\0\\0x\": text after a NUL",
            GOLDEN_LOGON_REQUEST,
            39,
            b'x',
            Field::Username,
        ),
        ("... even in the last byte of the field", GOLDEN_LOGON_REQUEST, 47, b'x', Field::Username),
        ("password: high byte", GOLDEN_LOGON_REQUEST, 48, 0x80, Field::Password),
        ("password: text after the NUL", GOLDEN_LOGON_REQUEST, 79, b'!', Field::Password),
        ("uid in ConnectionRequest", GOLDEN_CONNECTION_REQUEST, 40, b'Z', Field::DeviceUid),
        ("uid in RegistrationRequest", GOLDEN_REGISTRATION_REQUEST, 32, 0x1f, Field::DeviceUid),
        // Variable fields: NUL or control bytes are refused.
        ("NUL in a LoggedOut reason", GOLDEN_LOGGED_OUT, 33, 0x00, Field::Reason),
        ("newline in a LogoutRequest reason", GOLDEN_LOGOUT_REQUEST, 35, b'\n', Field::Reason),
        ("0xff in Reject details", GOLDEN_REJECT, 42, 0xff, Field::Details),
        ("NUL in ConnectionReject details", GOLDEN_CONNECTION_REJECT, 34, 0x00, Field::Details),
        ("tab in RegistrationReject details", GOLDEN_REGISTRATION_REJECT, 40, 0x09, Field::Details),
        ("DEL in a DeviceConfig config", GOLDEN_DEVICE_CONFIG, 49, 0x7f, Field::Config),
    ];
    for (what, golden, at, byte, field) in cases {
        let b = golden_with(golden, |b| b[at] = byte);
        assert_eq!(decode_err(&b), DecodeError::InvalidChars(field), "{what}");
    }
}

#[test]
fn bad_booleans_and_reserved_bytes() {
    for v in [2u8, 0xff] {
        let b = golden_with(GOLDEN_LOGON_REQUEST, |b| b[80] = v);
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::ResetSeqNum));
        let b = golden_with(GOLDEN_REGISTRATION_ACCEPT, |b| b[40] = v);
        assert_eq!(decode_err(&b), DecodeError::InvalidFieldValue(Field::Resumed));
    }
    // ConnectionRequest: body bytes 26..96 (message 58..128) must be zero; ConnectionAccept: the
    // reserved u16 at body offset 2; RegistrationAccept: body bytes 9..16 must be zero.
    let cases = [
        (GOLDEN_CONNECTION_REQUEST, 58, 1),
        (GOLDEN_CONNECTION_REQUEST, 64, 1),
        (GOLDEN_CONNECTION_REQUEST, 100, 1),
        (GOLDEN_CONNECTION_REQUEST, 127, 1),
        (GOLDEN_CONNECTION_ACCEPT, 35, 0x80),
        (GOLDEN_REGISTRATION_ACCEPT, 41, 1),
        (GOLDEN_REGISTRATION_ACCEPT, 47, 1),
    ];
    for (golden, at, v) in cases {
        let b = golden_with(golden, |b| b[at] = v);
        assert_eq!(
            decode_err(&b),
            DecodeError::InvalidFieldValue(Field::Reserved),
            "type {}, at {at}",
            b[4]
        );
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
    let long = [b'x'; 256];
    let seq = seq_header(0, 0, 0);
    let hs = hs_header(0, 0);
    let cases = [
        ("NUL in a reason", seq, Body::LoggedOut { reason: b"bad\0reason" }, Field::Reason),
        ("256-byte reason", seq, Body::LogoutRequest { reason: &long }, Field::Reason),
        (
            "91 bytes of ConnectionReject details",
            hs,
            Body::ConnectionReject { reason: 1, details: &long[..91] },
            Field::Details,
        ),
        (
            "51 bytes of RegistrationReject details",
            hs,
            Body::RegistrationReject { reason: 1, details: &long[..51] },
            Field::Details,
        ),
        (
            "tab in a config",
            hs,
            Body::DeviceConfig { correlation_id: 1, config: b"tab\there" },
            Field::Config,
        ),
    ];
    for (what, header, body, field) in cases {
        let m = Message { header, body };
        assert_eq!(m.encode(&mut buf), Err(EncodeError::InvalidField(field)), "{what}");
    }
    let huge = vec![0u8; usize::from(u16::MAX) - HEADER_LEN + 1];
    let m = Message { header: seq, body: Body::App { type_id: 100, body: &huge } };
    assert_eq!(m.encode(&mut vec![0u8; 70_000]), Err(EncodeError::BodyTooLong));
    let m = Message { header: seq, body: Body::Heartbeat { correlation_id: 1 } };
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

// Host data (DESIGN.md §1.6).

#[test]
fn host_data_must_carry_a_byte() {
    for t in [HOST_DATA_TO_HOST, HOST_DATA_FROM_HOST] {
        let e = HostMessage::decode(t, b"").unwrap_err();
        assert_eq!(e, DecodeError::LengthMismatch { type_id: t, declared: 32, expected: 33 });
        assert_eq!(e.reject_reason(), RejectReason::InvalidLength);
    }
    let mut buf = [0u8; 8];
    assert_eq!(
        HostMessage::ToHost(b"").encode_body(&mut buf),
        Err(EncodeError::InvalidField(Field::HostData))
    );
}

#[test]
fn host_status_length_must_match_details() {
    // Shorter than the fixed part.
    for body in [&b""[..], &[1u8][..]] {
        let e = HostMessage::decode(HOST_STATUS, body).unwrap_err();
        assert!(matches!(e, DecodeError::LengthMismatch { expected: 34, .. }), "{e:?}");
    }
    // detailsLength 3, two bytes given; detailsLength 1, two bytes given.
    let e = HostMessage::decode(HOST_STATUS, &[1, 3, b'a', b'b']).unwrap_err();
    assert_eq!(e, DecodeError::LengthMismatch { type_id: 402, declared: 36, expected: 37 });
    let e = HostMessage::decode(HOST_STATUS, &[1, 1, b'a', b'b']).unwrap_err();
    assert_eq!(e, DecodeError::LengthMismatch { type_id: 402, declared: 36, expected: 35 });
    assert_eq!(e.reject_reason(), RejectReason::InvalidLength);
}

#[test]
fn host_status_state_outside_1_to_5() {
    for s in [0u8, 6, 0x80, 0xff] {
        let e = HostMessage::decode(HOST_STATUS, &[s, 0]).unwrap_err();
        assert_eq!(e, DecodeError::InvalidFieldValue(Field::HostState));
        assert_eq!(e.reject_reason(), RejectReason::InvalidFieldValue);
    }
}

#[test]
fn host_status_details_must_be_printable() {
    for bad in [0x00u8, 0x1f, 0x7f, 0xff] {
        let e = HostMessage::decode(HOST_STATUS, &[4, 2, b'a', bad]).unwrap_err();
        assert_eq!(e, DecodeError::InvalidChars(Field::Details));
    }
    let mut buf = [0u8; 8];
    let bad = HostMessage::Status { state: HostState::Unreachable, details: b"a\n" };
    assert_eq!(bad.encode_body(&mut buf), Err(EncodeError::InvalidField(Field::Details)));
    // StatusBuf cleans what it is given rather than refuse it.
    assert_eq!(StatusBuf::new(HostState::Unreachable, b"a\nb").as_bytes(), b"\x04\x03a?b");
    assert_eq!(StatusBuf::new(HostState::Connected, &[b'x'; 300]).as_bytes().len(), 257);
}

#[test]
fn other_app_types_are_not_host_messages() {
    for t in [100u16, 150, 300, 399, 403, u16::MAX] {
        assert_eq!(HostMessage::decode(t, b"anything"), Ok(None));
    }
}
