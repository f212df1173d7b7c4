//! Wire-format codec benchmarks (DESIGN.md §1): single-message encode and decode, a full UDP
//! datagram split into frames, and the TCP stream deframer.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench codec
//! cargo bench --bench codec -- --warm-up-time 1 --measurement-time 2   # quicker
//! cargo bench --bench codec -- deframer                                # one group only
//! ```
//!
//! Criterion prints the time per iteration (`time: [low median high]`) and, where set, the
//! throughput. Single-message benches count one message per iteration; the datagram and deframer
//! benches count every message (elements) or byte they process.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_main};
use fleetgate::protocol::{
    Body, DATAGRAM_PREFIX_LEN, Datagram, Deframer, Header, Message, Password, Username,
    write_prefix,
};

/// Largest UDP datagram (the `udp.max_datagram` default).
const MAX_DATAGRAM: usize = 1400;
/// Size of the TCP stream for the deframer benches.
const STREAM_LEN: usize = 64 * 1024;
/// Bytes handed to the deframer per push, like one TCP segment.
const SEGMENT: usize = 1460;

fn header(seq: i64) -> Header {
    Header {
        flags: 0,
        length: 0,
        type_id: 0,
        seq,
        last_processed: 41,
        send_time: 1_700_000_000_000_000_000,
    }
}

fn heartbeat(seq: i64) -> Message<'static> {
    Message { header: header(seq), body: Body::Heartbeat { correlation_id: 0 } }
}

fn encode(m: &Message<'_>) -> Vec<u8> {
    let mut buf = vec![0u8; m.encoded_len()];
    m.encode(&mut buf).expect("encode");
    buf
}

fn single_messages(c: &mut Criterion) {
    let mut g = c.benchmark_group("message");
    g.throughput(Throughput::Elements(1));

    let hb = heartbeat(42);
    let mut buf = [0u8; 128];
    g.bench_function("encode_heartbeat", |b| {
        b.iter(|| black_box(&hb).encode(black_box(&mut buf[..])).expect("encode"))
    });

    let hb_bytes = encode(&hb);
    g.bench_function("decode_heartbeat", |b| {
        b.iter(|| Message::decode(black_box(&hb_bytes)).expect("decode"))
    });

    let body = [0x5au8; 64];
    let app = Message { header: header(43), body: Body::App { type_id: 100, body: &body } };
    let mut buf = [0u8; 128];
    g.bench_function("encode_decode_app_64b", |b| {
        b.iter(|| {
            let n = black_box(&app).encode(black_box(&mut buf[..])).expect("encode");
            let (m, used) = Message::decode(black_box(&buf[..n])).expect("decode");
            black_box(m);
            used
        })
    });

    let logon = Message {
        header: header(1),
        body: Body::LogonRequest {
            username: Username::new(b"device-000123").expect("username"),
            password: Password::new(b"correct horse battery staple").expect("password"),
            reset_seq_num: true,
        },
    };
    let logon_bytes = encode(&logon);
    g.bench_function("decode_logon_request", |b| {
        b.iter(|| Message::decode(black_box(&logon_bytes)).expect("decode"))
    });
    g.finish();
}

fn datagram(c: &mut Criterion) {
    // As many back-to-back Heartbeats as fit in a 1400-byte datagram: 34 × 40 + 8 = 1368 bytes.
    let frame_len = heartbeat(0).encoded_len();
    let count = (MAX_DATAGRAM - DATAGRAM_PREFIX_LEN) / frame_len;
    let mut dgram = vec![0u8; DATAGRAM_PREFIX_LEN + count * frame_len];
    write_prefix(&mut dgram, 0x1234_5678_9abc_def0);
    for (i, chunk) in dgram[DATAGRAM_PREFIX_LEN..].chunks_exact_mut(frame_len).enumerate() {
        heartbeat(i as i64 + 1).encode(chunk).expect("encode");
    }

    let mut g = c.benchmark_group("datagram");
    g.throughput(Throughput::Elements(count as u64));
    g.bench_function(format!("split_decode_{count}_heartbeats_{}b", dgram.len()), |b| {
        b.iter(|| {
            let d = Datagram::parse(black_box(&dgram)).expect("parse");
            let mut sum = d.session_id;
            for frame in d.frames() {
                let m = Message::decode_frame(frame.expect("frame")).expect("decode");
                sum = sum.wrapping_add(m.header.seq as u64);
            }
            sum
        })
    });
    g.finish();
}

/// Pushes `stream` into `d` (after a reset) one TCP segment at a time and hands every frame to
/// `f` (generic, so each bench's loop is compiled with its body inlined).
fn each_frame(d: &mut Deframer, stream: &[u8], mut f: impl FnMut(&[u8])) {
    d.reset();
    for segment in black_box(stream).chunks(SEGMENT) {
        assert_eq!(d.push(segment), segment.len());
        while let Some(frame) = d.next_frame().expect("frame") {
            f(frame);
        }
    }
}

fn deframer(c: &mut Criterion) {
    // 64 KiB of back-to-back frames: Heartbeats (40 bytes) alternating with 64-byte application
    // messages (96 bytes padded).
    let body = [0x5au8; 64];
    let mut stream = Vec::with_capacity(STREAM_LEN);
    let mut frames = 0u64;
    loop {
        let seq = frames as i64 + 1;
        let m = if frames % 2 == 0 {
            heartbeat(seq)
        } else {
            Message { header: header(seq), body: Body::App { type_id: 200, body: &body } }
        };
        if stream.len() + m.encoded_len() > STREAM_LEN {
            break;
        }
        stream.extend_from_slice(&encode(&m));
        frames += 1;
    }

    eprintln!(
        "deframer stream: {frames} frames, {} bytes, pushed in {SEGMENT}-byte segments",
        stream.len()
    );
    let mut d = Deframer::new(16 * 1024);
    let mut g = c.benchmark_group("deframer");
    g.throughput(Throughput::Bytes(stream.len() as u64));

    // Framing only: split the stream, pushed one TCP segment at a time, into frames.
    g.bench_function("frames_64k", |b| {
        b.iter(|| {
            let mut seen = 0u64;
            each_frame(&mut d, &stream, |frame| {
                black_box(frame);
                seen += 1;
            });
            assert_eq!(seen, frames);
            seen
        })
    });

    // Framing and decoding every frame.
    g.bench_function("frames_decode_64k", |b| {
        b.iter(|| {
            let mut sum = 0u64;
            each_frame(&mut d, &stream, |frame| {
                let m = Message::decode_frame(frame).expect("decode");
                sum = sum.wrapping_add(m.header.seq as u64);
            });
            sum
        })
    });
    g.finish();
}

// `criterion_group!` expands to an undocumented `pub fn`; keep the allowance to that one item.
#[allow(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]
mod group {
    use super::{datagram, deframer, single_messages};
    criterion::criterion_group!(benches, single_messages, datagram, deframer);
}

criterion_main!(group::benches);
