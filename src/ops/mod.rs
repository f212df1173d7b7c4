//! The operator side (DESIGN.md §3), off the hot path: it reads what the runtime publishes
//! (`runtime::report`), never the reverse.
//!
//! - [`housekeeping`]: the thread that collects the shards' snapshots into a [`View`], writes
//!   the HdrHistogram interval log and drains the trace queues;
//! - [`metrics`]: `/metrics` (Prometheus text) and `/sessions` (JSON) from the view;
//! - [`http`]: the HTTP endpoint serving them and `/healthz`;
//! - [`traces`]: the per-device protocol trace files;
//! - [`admin`]: the operator channel on a Unix socket (`fleetgate ctl`: sessions, show,
//!   disconnect, drain, undrain, status);
//! - [`Server`]: a gateway ([`crate::runtime::Gateway`]) with this side attached, as
//!   `fleetgate serve`, `fleetgate demo` and the integration tests run it.

pub mod admin;
pub mod housekeeping;
pub mod http;
pub mod metrics;
mod server;
pub mod traces;

pub use housekeeping::View;
pub use server::Server;
