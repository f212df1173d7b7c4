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

mod framer;
mod golden;
mod malformed;
mod never_panic;
mod roundtrip;

use golden::*;

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

// ---------------------------------------------------------------------------------------------
// Strategies shared by the round-trip, never-panic and framer tests
// ---------------------------------------------------------------------------------------------

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

fn owned_body(max_app: usize) -> impl Strategy<Value = OwnedBody> {
    prop_oneof![
        (printable(16), printable(32), any::<bool>())
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
        (printable(16), any::<u64>(), any::<u16>())
            .prop_map(|(u, n, v)| OwnedBody::ConnectionRequest(u, n, v)),
        (any::<u16>(), any::<u32>(), any::<u64>(), any::<[u8; 32]>())
            .prop_map(|(p, t, n, c)| OwnedBody::ConnectionAccept(p, t, n, c)),
        (any::<u8>(), printable(CONNECTION_REJECT_DETAILS_MAX))
            .prop_map(|(r, d)| OwnedBody::ConnectionReject(r, d)),
        (printable(16), any::<u64>(), any::<[u8; 32]>())
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
