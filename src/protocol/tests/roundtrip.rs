//! b. Round trips of arbitrary valid messages (proptest).

use super::*;

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

proptest! {
    #[test]
    fn round_trip_host_messages(
        kind in 0u8..3,
        data in vec(any::<u8>(), 1..600),
        state in 1u8..=5,
        details in vec(0x20u8..=0x7e, 0..=255),
    ) {
        let state = HostState::from_u8(state).unwrap();
        let m = match kind {
            0 => HostMessage::ToHost(&data),
            1 => HostMessage::FromHost(&data),
            _ => HostMessage::Status { state, details: &details },
        };
        let mut body = vec![0u8; m.len()];
        prop_assert_eq!(m.encode_body(&mut body), Ok(m.len()));
        prop_assert_eq!(HostMessage::decode(m.type_id(), &body), Ok(Some(m)));
        // And as a whole application message on the wire.
        let msg = Message {
            header: Header { seq: 7, ..Header::default() },
            body: Body::App { type_id: m.type_id(), body: &body },
        };
        let mut wire = vec![0u8; msg.encoded_len()];
        let n = msg.encode(&mut wire).unwrap();
        let (back, _) = Message::decode(&wire[..n]).unwrap();
        let Body::App { type_id, body: b } = back.body else { panic!("not app") };
        prop_assert_eq!(HostMessage::decode(type_id, b), Ok(Some(m)));
        if m.len() > 1 {
            prop_assert_eq!(
                m.encode_body(&mut body[..m.len() - 1]),
                Err(EncodeError::BufferTooSmall { needed: m.len() })
            );
        }
    }
}
