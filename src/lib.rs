//! fleetgate: a thread-per-core session gateway for large fleets of devices.
//!
//! # Data flow (DESIGN.md §3)
//!
//! ```text
//!              UDP :3006 / TCP :4210
//!                     |
//!               [ acceptor ]  -- stateless cookies; reads the TCP LogonRequest; picks the shard
//!                |  SPSC  |      (hash of deviceUid or username, so resume finds the same shard)
//!         [ shard 0 ] ... [ shard N-1 ]   one pinned core each: own io_uring, own UDP session
//!                |          |             port, TCP connections, session slab, timers, journals
//!                |  SPSC    |             (snapshots, trace records)
//!           [ housekeeping thread ]       merges stats, /metrics, histogram logs, traces
//! ```
//!
//! The acceptor is [`runtime::acceptor`], a shard [`runtime::shard`] (driving a
//! [`session::Endpoint`] over an [`io::Backend`]), the handoff [`runtime::handoff`], what the
//! shards and the acceptor publish [`runtime::report`], and the housekeeping thread
//! [`ops::housekeeping`]. [`ops::Server`] starts the whole of it.
//!
//! # Layers
//!
//! Each module belongs to one layer and imports only from its own layer or those below
//! (`tests/architecture.rs` checks it):
//!
//! 0. [`time`], [`ids`], [`counters`], [`rng`]: leaf types (timestamps and the process clock,
//!    connection and session handles, the counter table, the seeded generator).
//! 1. [`protocol`]: the wire format of DESIGN.md §1 (pure codecs, no allocation when decoding);
//!    [`journal`]: per-session preallocated rings of sent application messages, for resend.
//! 2. [`session`]: sans-IO state machines for the gateway side ([`session::Endpoint`],
//!    [`session::GatewaySession`]) and the device side ([`session::Device`]), the handshake
//!    cookies and the credentials check. No syscalls and no clock reads: every entry point
//!    takes `now`.
//! 3. [`apps`]: the built-in applications behind the sessions; [`io`]: the I/O backends
//!    (io_uring, epoll) and every `unsafe` block (the test-only counting allocator in `sim`
//!    aside).
//! 4. [`config`]: the TOML configuration and what it builds for the layers below.
//! 5. [`runtime`]: the acceptor and shard threads, the handoff, what they publish, start and
//!    stop, signals.
//! 6. [`ops`]: housekeeping, `/metrics`, HTTP, traces: reads what the runtime publishes;
//!    `sim` (behind the `sim` feature, and in unit tests): the deterministic simulator and the
//!    in-memory harness of the tests and benches.
//! 7. [`tools`]: the command line (`clap` lives only here), the load generator, the demo,
//!    `hist`, `check`, `passwd`.
#![deny(unsafe_op_in_unsafe_fn)]

/// `counts! { struct ... }`: a struct of `u64` counts with `merge`, which adds another's field
/// by field (so that no count can be left out of the sum).
macro_rules! counts {
    ($(#[$m:meta])* pub struct $name:ident { $($(#[$fm:meta])* pub $f:ident: u64,)* }) => {
        $(#[$m])*
        pub struct $name {
            $($(#[$fm])* pub $f: u64,)*
        }

        impl $name {
            /// Adds `o` field by field.
            pub fn merge(&mut self, o: &Self) {
                $(self.$f += o.$f;)*
            }
        }
    };
}

// 0. Leaf types.
pub mod counters;
pub mod ids;
pub mod rng;
pub mod time;

// 1. Wire format and journal.
pub mod journal;
pub mod protocol;

// 2. Sans-IO sessions.
pub mod session;

// 3. Applications and I/O backends.
pub mod apps;
pub mod io;

// 4. Configuration.
pub mod config;

// 5. Runtime.
pub mod runtime;

// 6. Operator side and simulation.
pub mod ops;
#[cfg(any(test, feature = "sim"))]
pub mod sim;

// 7. Tools and command line.
pub mod tools;
