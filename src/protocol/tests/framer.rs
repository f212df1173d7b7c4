//! e., f. The stream [`Deframer`] and the UDP [`Datagram`] framing.

use super::*;

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
