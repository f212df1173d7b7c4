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
