//! The TCP `Deframer` fed one byte stream under an arbitrary chunking yields exactly what it
//! yields when fed as much as fits at a time: the same frames, then the same error or the same
//! buffered tail. It never panics, never holds more than its capacity, and its frames are the
//! datagram splitter's frames of the same bytes.
#![no_main]

use arbitrary::Unstructured;
use fleetgate::protocol::{Datagram, DecodeError, Deframer, HEADER_LEN, Header, align8};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    frames: Vec<Vec<u8>>,
    error: Option<DecodeError>,
    /// Bytes buffered at the end (only meaningful without an error).
    tail: usize,
}

fuzz_target!(|data: &[u8]| {
    // The deframer capacity (a u16, modulo 4096, rounded up to 8 and at least a header), the
    // chunk sizes used in turn (a `Vec<u16>`; bit 15 writes through `spare` + `filled`
    // instead of `push`), then the stream itself, raw.
    let mut u = Unstructured::new(data);
    let (Ok(capacity), Ok(chunks)) = (u.arbitrary::<u16>(), u.arbitrary::<Vec<u16>>()) else {
        return;
    };
    let stream = u.take_rest();
    let capacity = usize::from(capacity % 4096);
    let whole = feed(capacity, stream, &[]);
    let chunked = feed(capacity, stream, &chunks);
    assert_eq!(whole, chunked, "chunking changed the outcome");
    splitter_agrees(stream, &whole);
});

/// Feeds `stream` into a fresh deframer, `chunks[i]` bytes at a time (as much as fits when
/// `chunks` is empty), draining frames after each write until `Ok(None)` or the first error.
fn feed(capacity: usize, stream: &[u8], chunks: &[u16]) -> Outcome {
    let mut d = Deframer::new(capacity);
    let cap = align8(capacity.max(HEADER_LEN));
    let mut out = Outcome { frames: Vec::new(), error: None, tail: 0 };
    let mut rest = stream;
    let mut turn = 0;
    let mut stalls = 0;
    while !rest.is_empty() {
        let (want, via_spare) = match chunks.get(turn % chunks.len().max(1)) {
            Some(&c) => (usize::from(c & 0x7fff).max(1), c & 0x8000 != 0),
            None => (usize::MAX, false),
        };
        turn += 1;
        let want = want.min(rest.len());
        let n = if via_spare {
            let room = d.spare().len();
            assert_eq!(room + d.buffered(), cap, "spare moves the partial frame down");
            let spare = d.spare();
            let n = want.min(spare.len());
            spare[..n].copy_from_slice(&rest[..n]);
            d.filled(n);
            n
        } else {
            d.push(&rest[..want])
        };
        rest = &rest[n..];
        assert!(d.buffered() <= cap, "{} bytes buffered over {cap}", d.buffered());
        let mut progressed = n > 0;
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => {
                    // Exactly `messageLength` bytes of a frame whose header checks out.
                    assert!(frame.len() >= HEADER_LEN && align8(frame.len()) <= cap);
                    let h = Header::decode(frame).unwrap_or_else(|e| {
                        panic!("deframer returned a frame whose header is bad: {e}")
                    });
                    assert_eq!(usize::from(h.length), frame.len());
                    out.frames.push(frame.to_vec());
                    progressed = true;
                }
                Ok(None) => break,
                Err(e) => {
                    out.error = Some(e);
                    return out;
                }
            }
        }
        if !progressed {
            // A full buffer that holds no whole frame must have been an error (TooLong).
            stalls += 1;
            assert!(stalls < 4, "deframer stuck with {} bytes buffered", d.buffered());
        } else {
            stalls = 0;
        }
    }
    out.tail = d.buffered();
    out
}

/// The datagram splitter over the same bytes finds the same frames; where they differ at the
/// end, the difference is only what a stream and a datagram must treat differently.
fn splitter_agrees(stream: &[u8], got: &Outcome) {
    let mut payload = vec![0u8; 8];
    payload.extend_from_slice(stream);
    let Ok(dg) = Datagram::parse(&payload) else {
        // Shorter than one header: the deframer can have returned no frame.
        assert!(got.frames.is_empty());
        return;
    };
    let mut frames = Vec::new();
    let mut error = None;
    for f in dg.frames() {
        match f {
            Ok(f) => frames.push(f),
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    let k = got.frames.len();
    assert!(k <= frames.len(), "the deframer found more frames than the splitter");
    for (a, b) in got.frames.iter().zip(&frames) {
        assert_eq!(&a[..], *b);
    }
    match (got.error, error) {
        // Stream and splitter stop at the same place for the same reason.
        (Some(a), Some(b)) if k == frames.len() && a == b => {}
        // The deframer refuses a frame larger than its buffer before looking further.
        (Some(DecodeError::TooLong { .. }), _) => {}
        // A short tail: the stream waits for more, the datagram calls it trailing bytes (or
        // the deframer names its bad first byte at once).
        (None | Some(DecodeError::InvalidProtocolId(_)), Some(DecodeError::TrailingBytes(n)))
            if k == frames.len() && n < HEADER_LEN => {}
        // An incomplete last frame: the stream waits, the datagram says truncated.
        (None, Some(DecodeError::Truncated { .. })) if k == frames.len() => {}
        (None, None) => assert_eq!(k, frames.len()),
        (a, b) => panic!("deframer {a:?} after {k} frames, splitter {b:?} after {}", frames.len()),
    }
}
