//! The runtime (DESIGN.md §3): the threads that drive the sans-IO core over real sockets.
//!
//! - [`acceptor`]: the handshake port and the TCP listener; hands TCP connections to shards;
//! - [`handoff`]: what goes from the acceptor to a shard, over an SPSC queue;
//! - [`shard`]: one pinned thread per core running an endpoint over an I/O backend, with its
//!   protocol tap ([`shard::tap`]);
//! - [`report`]: what the runtime publishes for the operator side to read;
//! - [`control`]: operator commands (drain, undrain, disconnect) to the shards and the
//!   acceptor, over SPSC queues and one flag;
//! - [`gateway`]: start and stop of the whole data plane;
//! - [`placement`]: the non-shard threads pinned to `gateway.service_cpus`;
//! - [`signals`]: SIGTERM and SIGINT to the shutdown flag.

pub mod acceptor;
pub mod control;
pub mod gateway;
pub mod handoff;
pub mod placement;
pub mod report;
pub mod shard;
pub mod signals;

pub use gateway::{Gateway, Totals};
