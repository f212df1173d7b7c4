//! Journal benchmarks (DESIGN.md §2 rule 7, §3 "Journal"): appending into a full ring, and
//! serving a resend from it through the gateway.
//!
//! - `append/{64,256}b`: `Journal::append` of a 64-byte and a 256-byte message into a ring of
//!   1024 slots of 256 bytes that is already full, so every append evicts the oldest entry
//!   (the steady state of a busy session).
//! - `resend_1000/{udp,tcp}`: the gateway serving one ResendRequest for 1,000 journaled
//!   application messages (64-byte bodies, 96 bytes on the wire): the request goes into
//!   `Endpoint::handle_datagram` (UDP) or `handle_tcp_frame` (TCP), then
//!   `Endpoint::poll_transmit` is called until it returns `None`: each journaled message is
//!   copied out with the resend flag set, packed into 1400-byte datagrams (UDP) or 16 KiB
//!   stream chunks (TCP). The output is not decoded. Throughput is per message: criterion's
//!   `thrpt` is resent messages per second, and `time` / 1000 is the cost of one.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench journal
//! cargo bench --bench journal -- --warm-up-time 1 --measurement-time 3   # quicker
//! cargo bench --bench journal -- resend                                  # one group only
//! ```

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_main};
use fleetgate::counters::Counter;
use fleetgate::journal::{Journal, JournalConfig};
use fleetgate::protocol::Body;
use fleetgate::session::Transport;
use fleetgate::sim::Pair;

/// Slots in the append bench's ring.
const RING: usize = 1024;
/// Messages per ResendRequest.
const RESEND: i64 = 1000;

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append");
    g.throughput(Throughput::Elements(1));
    for size in [64usize, 256] {
        let mut j = Journal::new(JournalConfig { messages_per_session: RING, slot_bytes: 256 });
        let msg = vec![0x5au8; size];
        let mut seq = 0i64;
        while !j.is_full() {
            seq += 1;
            j.append(seq, &msg).expect("append");
        }
        g.bench_function(format!("{size}b"), |b| {
            b.iter(|| {
                seq += 1;
                j.append(black_box(seq), black_box(&msg))
            })
        });
        assert!(j.is_full());
        assert_eq!(j.newest_seq(), seq);
        assert_eq!(j.evicted_through(), seq - RING as i64);
    }
    g.finish();
}

fn resend(c: &mut Criterion) {
    let mut g = c.benchmark_group("resend_1000");
    g.throughput(Throughput::Elements(RESEND as u64));
    let body = [0x5au8; 64];
    for transport in [Transport::Udp, Transport::Tcp] {
        let mut pair = Pair::logged_on(transport, 2048);
        // 1,000 consecutive application messages, delivered once.
        let h = pair.handle();
        let from = pair.ep.send(pair.now, h, 300, &body).expect("send");
        let mut to = from;
        for _ in 1..RESEND {
            to = pair.ep.send(pair.now, h, 300, &body).expect("send");
        }
        assert_eq!(to - from + 1, RESEND, "no session message in the range");
        pair.advance(Duration::from_millis(1));
        assert_eq!(pair.received(), RESEND as u64);

        // From here on the bench stands in for the device.
        let mut seq = pair.dev().next_out();
        let mut input = [0u8; 128];
        let resent = pair.ep.counters().get(Counter::MessagesResent);
        let mut requests = 0u64;
        let name = match transport {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                pair.now = pair.now + Duration::from_micros(1);
                pair.fire_timers();
                let len = pair.encode_up(seq, Body::ResendRequest { from, to }, &mut input);
                seq += 1;
                pair.gateway_input(black_box(&input[..len]));
                requests += 1;
                pair.drain_gateway(false)
            })
        });
        let resent = pair.ep.counters().get(Counter::MessagesResent) - resent;
        assert_eq!(resent, requests * RESEND as u64, "every request served in full");
        assert_eq!(pair.ep.counters().get(Counter::ResendRequests), requests);
    }
    g.finish();
}

// `criterion_group!` expands to an undocumented `pub fn`; keep the allowance to that one item.
#[allow(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]
mod group {
    use super::{append, resend};
    criterion::criterion_group!(benches, append, resend);
}

criterion_main!(group::benches);
