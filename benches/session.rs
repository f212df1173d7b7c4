//! Session benchmarks (DESIGN.md §2–§3): one application message through the sans-IO gateway
//! and back, per round trip.
//!
//! - `round_trip/{udp,tcp}_64b`: a logged-on [`Device`](fleetgate::session::Device) sends a
//!   type-101 message with a 64-byte body; its datagram (UDP) or stream chunk (TCP, split by a
//!   `Deframer`) goes into `Endpoint::handle_datagram` / `handle_tcp_frame`; the echo
//!   application answers type 201 (journaled); `Endpoint::poll_transmit` writes it out and
//!   `Device::handle_datagram` / `handle_frame` takes it in (delivering it and releasing the
//!   acknowledged original from the device's retransmit buffer). Due timers are checked every
//!   round, as a driver would. Both sides of the protocol: encode, decode, sequencing, journal,
//!   acknowledgement.
//! - `gateway_only/{udp,tcp}_64b`: the gateway's half alone: a pre-encoded type-101 message
//!   (its sequence number patched in place each round) into the endpoint, the echo out of
//!   `poll_transmit` into a buffer nobody reads.
//!
//! The UDP device completed the full handshake (`answer_connection_request`, registration,
//! config, logon) and the TCP device its logon before the timed loop; virtual time moves 1 µs
//! per round. Gateway journal: the default 64 messages per session, so it wraps constantly.
//!
//! Run with:
//!
//! ```text
//! cargo bench --bench session
//! cargo bench --bench session -- --warm-up-time 1 --measurement-time 3   # quicker
//! cargo bench --bench session -- round_trip                              # one group only
//! ```
//!
//! Criterion prints the time per round trip (`time: [low median high]`) and the rate
//! (`thrpt`, round trips per second).

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_main};
use fleetgate::counters::Counter;
use fleetgate::journal::JournalConfig;
use fleetgate::protocol::{Body, DATAGRAM_PREFIX_LEN, offset};
use fleetgate::session::Transport;
use fleetgate::sim::Pair;

/// Virtual time per round.
const STEP: Duration = Duration::from_micros(1);
/// Application body size.
const BODY: usize = 64;

fn name(transport: Transport) -> &'static str {
    match transport {
        Transport::Udp => "udp_64b",
        Transport::Tcp => "tcp_64b",
    }
}

/// The group `group` (one round trip per iteration), with `bench` run once per transport on a
/// freshly logged-on pair.
fn per_transport(
    c: &mut Criterion,
    group: &str,
    mut bench: impl FnMut(&mut BenchmarkGroup<'_, WallTime>, Transport, Pair),
) {
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(1));
    for transport in [Transport::Udp, Transport::Tcp] {
        let pair = Pair::logged_on(transport, JournalConfig::default().messages_per_session);
        bench(&mut g, transport, pair);
    }
    g.finish();
}

fn round_trip(c: &mut Criterion) {
    let body = [0x5au8; BODY];
    per_transport(c, "round_trip", |g, transport, mut pair| {
        for _ in 0..10_000 {
            pair.round_trip(STEP, &body);
        }
        let received = pair.received();
        let mut rounds = 0u64;
        g.bench_function(name(transport), |b| {
            b.iter(|| {
                pair.round_trip(STEP, black_box(&body));
                rounds += 1;
            })
        });
        // Every round trip really delivered its echo.
        assert_eq!(pair.received() - received, rounds, "echoes delivered");
        assert_eq!(pair.dev().unacked(), 0);
    });
}

fn gateway_only(c: &mut Criterion) {
    let body = [0x5au8; BODY];
    per_transport(c, "gateway_only", |g, transport, mut pair| {
        // From here on the bench stands in for the device.
        let mut seq = pair.dev().next_out();
        let mut input = [0u8; 256];
        let len = pair.encode_up(seq, Body::App { type_id: 101, body: &body }, &mut input);
        let seq_at = match transport {
            Transport::Udp => DATAGRAM_PREFIX_LEN + offset::SEQ,
            Transport::Tcp => offset::SEQ,
        };
        let echoed = pair.ep.counters().get(Counter::AppMessagesSent);
        let mut rounds = 0u64;
        g.bench_function(name(transport), |b| {
            b.iter(|| {
                pair.now = pair.now + STEP;
                pair.fire_timers();
                input[seq_at..seq_at + 8].copy_from_slice(&seq.to_le_bytes());
                seq += 1;
                pair.gateway_input(black_box(&input[..len]));
                pair.drain_gateway(false);
                rounds += 1;
            })
        });
        let echoed = pair.ep.counters().get(Counter::AppMessagesSent) - echoed;
        assert_eq!(echoed, rounds, "every message echoed");
        assert!(pair.discarded_bytes >= rounds * 96);
    });
}

// `criterion_group!` expands to an undocumented `pub fn`; keep the allowance to that one item.
#[allow(missing_docs, reason = "criterion_group! generates an undocumented pub fn")]
mod group {
    use super::{gateway_only, round_trip};
    criterion::criterion_group!(benches, round_trip, gateway_only);
}

criterion_main!(group::benches);
