//! c. Random, plausible, mutated and truncated bytes never panic, and whatever decodes is
//! canonical.

use super::*;

// ---------------------------------------------------------------------------------------------
// c. Random bytes never panic
// ---------------------------------------------------------------------------------------------

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

proptest! {
    #[test]
    fn host_decode_never_panics(type_id in 398u16..=404, body in vec(any::<u8>(), 0..300)) {
        if let Ok(Some(m)) = HostMessage::decode(type_id, &body) {
            // Whatever decodes encodes back to the same bytes.
            let mut out = vec![0u8; m.len()];
            prop_assert_eq!(m.encode_body(&mut out), Ok(body.len()));
            prop_assert_eq!(out, body);
        }
    }
}
