//! fleetgate: a thread-per-core session gateway for large fleets of devices.
//!
//! ```text
//!              UDP :3006 / TCP :4210
//!                     |
//!               [ acceptor ]  -- stateless cookies; reads the TCP LogonRequest; picks the shard
//!                |  SPSC  |
//!         [ shard 0 ] ... [ shard N-1 ]   one pinned core each: own io_uring, own UDP session
//!                |          |             port, TCP connections, session slab, timers, journals
//!           [ housekeeping thread ]       merges stats, /metrics, histogram logs, traces
//! ```
//!
//! The layers, from the bottom:
//!
//! - [`protocol`]: the wire format of DESIGN.md §1 (pure codecs, no allocation when decoding).
//! - [`journal`]: per-session preallocated rings of sent application messages, for resend.
//! - [`session`]: sans-IO state machines for the gateway side ([`session::Endpoint`],
//!   [`session::GatewaySession`]) and the device side ([`session::Device`]). No syscalls and no
//!   clock reads: every entry point takes `now`.
//! - [`time`]: the `Timestamp` newtype passed into the sans-IO core.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod apps;
pub mod config;
pub mod counters;
pub mod ids;
pub mod io;
pub mod journal;
pub mod ops;
pub mod protocol;
pub mod rng;
pub mod runtime;
pub mod session;
pub mod time;
pub mod tools;

#[cfg(any(test, feature = "sim"))]
pub mod sim;
