//! Every decoder of the wire format, on arbitrary bytes and on messages built from arbitrary
//! fields:
//!
//! - `Header::decode`, `split_frame`, `Message::decode_frame`, `Message::decode`,
//!   `Datagram::parse` + `frames()` and the handshake port's `answer_connection_request` never
//!   panic, and every error has a reject reason and a description;
//! - whatever decodes re-encodes byte for byte (the encoder refuses anything the decoder
//!   refuses, and accepts everything it accepts);
//! - a message built from arbitrary fields that the encoder accepts decodes to itself;
//! - the handshake answer is never larger than the request, decodes, and its cookie verifies.
#![no_main]

use core::time::Duration;
use std::net::SocketAddr;

use arbitrary::{Arbitrary, Unstructured};
use fleetgate::protocol::{
    Body, DATAGRAM_PREFIX_LEN, Datagram, DecodeError, HEADER_LEN, Header, Message, OwnedBody,
    Writer, align8, split_frame, write_prefix,
};
use fleetgate::session::handshake::{
    CookieInput, CookieKey, CookieKeys, HandshakeConfig, HandshakeOutcome,
    answer_connection_request, verify_cookie,
};
use fleetgate::time::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    header(data);
    split(data);
    frame(data);
    datagram(data);
    handshake(data);
    fields(data);
});

fn error(e: DecodeError) {
    let _ = e.reject_reason();
    assert!(!e.as_str().is_empty());
    assert!(!e.to_string().is_empty());
}

fn header(data: &[u8]) {
    match Header::decode(data) {
        Ok(h) => {
            let mut out = [0u8; HEADER_LEN];
            let mut w = Writer::new(&mut out);
            h.encode(&mut w);
            assert_eq!(w.finish(), Ok(HEADER_LEN));
            assert_eq!(&out[..], &data[..HEADER_LEN], "header round trip");
        }
        Err(e) => error(e),
    }
}

fn split(data: &[u8]) {
    match split_frame(data) {
        Ok((frame, padded)) => {
            let h = Header::decode(frame).expect("split_frame checked the header");
            assert_eq!(frame.len(), usize::from(h.length));
            assert_eq!(padded, align8(frame.len()));
            assert!(padded <= data.len());
            assert!(data[frame.len()..padded].iter().all(|&b| b == 0));
        }
        Err(e) => error(e),
    }
}

/// Re-encodes `msg` and compares it with `wire` (exactly `messageLength` bytes) plus zero
/// padding.
fn reencode(msg: &Message<'_>, wire: &[u8]) {
    let len = msg.encoded_len();
    assert_eq!(len, align8(wire.len()), "encoded_len of {msg:?}");
    let mut out = vec![0xAAu8; len];
    let n = msg.encode(&mut out).unwrap_or_else(|e| panic!("decoded but refused: {e} {msg:?}"));
    assert_eq!(n, len);
    assert_eq!(&out[..wire.len()], wire, "round trip of {msg:?}");
    assert!(out[wire.len()..].iter().all(|&b| b == 0), "padding");
    // One byte short is refused, not truncated.
    assert!(msg.encode(&mut out[..len - 1]).is_err());
}

fn frame(data: &[u8]) {
    match Message::decode_frame(data) {
        Ok(m) => {
            assert_eq!(usize::from(m.header.length), data.len());
            assert_eq!(m.header.type_id, m.body.type_id());
            assert_eq!(m.body.len(), data.len() - HEADER_LEN);
            reencode(&m, data);
        }
        Err(e) => error(e),
    }
    match Message::decode(data) {
        Ok((m, padded)) => {
            let (frame, p) = split_frame(data).expect("decode splits first");
            assert_eq!(p, padded);
            assert_eq!(Message::decode_frame(frame), Ok(m));
            reencode(&m, frame);
        }
        Err(e) => error(e),
    }
}

fn datagram(data: &[u8]) {
    let dg = match Datagram::parse(data) {
        Ok(dg) => dg,
        Err(e) => {
            error(e);
            assert!(data.len() < DATAGRAM_PREFIX_LEN + HEADER_LEN);
            return;
        }
    };
    let mut prefix = [0u8; 8];
    prefix.copy_from_slice(&data[..8]);
    assert_eq!(dg.session_id, u64::from_le_bytes(prefix));
    assert_eq!(dg.payload, &data[8..]);
    // Rebuild the datagram from what the splitter returned: prefix, frames, padding.
    let mut rebuilt = vec![0u8; DATAGRAM_PREFIX_LEN];
    assert_eq!(write_prefix(&mut rebuilt, dg.session_id), DATAGRAM_PREFIX_LEN);
    let mut frames = dg.frames();
    let mut failed = false;
    let mut count = 0;
    for f in frames.by_ref() {
        count += 1;
        assert!(count <= dg.payload.len() / HEADER_LEN + 1, "the splitter does not end");
        match f {
            Ok(frame) => {
                assert!(!failed);
                assert!(frame.len() >= HEADER_LEN);
                rebuilt.extend_from_slice(frame);
                rebuilt.resize(align8(rebuilt.len()), 0);
                match Message::decode_frame(frame) {
                    Ok(m) => reencode(&m, frame),
                    Err(e) => error(e),
                }
            }
            Err(e) => {
                error(e);
                failed = true;
            }
        }
    }
    assert!(frames.next().is_none(), "the splitter ended once");
    if failed {
        assert!(rebuilt.len() < data.len());
        assert_eq!(&rebuilt[..], &data[..rebuilt.len()], "frames before the error");
    } else {
        assert_eq!(&rebuilt[..], data, "a datagram without error is its frames");
    }
}

fn handshake(data: &[u8]) {
    let cfg =
        HandshakeConfig { shards: 3, session_port_base: 5000, cookie_ttl: Duration::from_secs(5) };
    let key = CookieKey([7; 32]);
    let now = Timestamp::from_nanos(1_000_000_000);
    let peer = SocketAddr::from(([10, 0, 0, 1], 4000));
    let mut out = [0u8; 2048];
    let outcome = answer_connection_request(&cfg, &key, now, peer, data, None, &mut out);
    let len = match outcome {
        HandshakeOutcome::Accepted { len, .. } | HandshakeOutcome::Rejected { len, .. } => len,
        HandshakeOutcome::Dropped(_) => return,
    };
    assert!(len <= data.len(), "amplification: {len} bytes for {}", data.len());
    let reply = Datagram::parse(&out[..len]).expect("reply parses");
    assert_eq!(reply.session_id, 0);
    let mut frames = reply.frames();
    let frame = frames.next().expect("one frame").expect("frame splits");
    assert!(frames.next().is_none());
    let msg = Message::decode_frame(frame).expect("reply decodes");
    let request =
        Message::decode(Datagram::parse(data).expect("answered").payload).expect("answered").0;
    let Body::ConnectionRequest { device_uid, client_nonce, .. } = request.body else {
        panic!("answered {request:?}");
    };
    match (outcome, msg.body) {
        (
            HandshakeOutcome::Accepted { shard, .. },
            Body::ConnectionAccept { session_port, client_nonce: echoed, cookie, .. },
        ) => {
            assert_eq!(echoed, client_nonce);
            assert_eq!(usize::from(session_port - 5000), shard);
            let input =
                CookieInput { peer, device_uid: &device_uid, client_nonce, shard: shard as u16 };
            let keys = CookieKeys { current: key, previous: None };
            assert_eq!(verify_cookie(&keys, now, &cookie, &input), Ok(()));
            let later = now + Duration::from_secs(7);
            assert!(verify_cookie(&keys, later, &cookie, &input).is_err(), "cookie expires");
        }
        (HandshakeOutcome::Rejected { reason, .. }, Body::ConnectionReject { reason: r, .. }) => {
            assert_eq!(reason as u8, r);
        }
        (o, b) => panic!("{o:?} answered with {b:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Messages from arbitrary fields
// ---------------------------------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct Fields {
    flags: u8,
    seq: i64,
    last_processed: i64,
    send_time: i64,
    body: OwnedBody,
}

fn fields(data: &[u8]) {
    let Ok(f) = Fields::arbitrary_take_rest(Unstructured::new(data)) else { return };
    let msg = Message {
        header: Header {
            flags: f.flags,
            seq: f.seq,
            last_processed: f.last_processed,
            send_time: f.send_time,
            // Taken from the body on encode.
            length: 0,
            type_id: 0,
        },
        body: f.body.body(),
    };
    let mut out = vec![0u8; msg.encoded_len()];
    let Ok(n) = msg.encode(&mut out) else { return };
    assert_eq!(n, out.len());
    let (back, padded) = Message::decode(&out)
        .unwrap_or_else(|e| panic!("encoded but the decoder refuses it: {e} {msg:?}"));
    assert_eq!(padded, n);
    let expected = Header {
        length: (HEADER_LEN + msg.body.len()) as u16,
        type_id: msg.body.type_id(),
        ..msg.header
    };
    assert_eq!(back.header, expected);
    assert_eq!(back.body, msg.body);
}
