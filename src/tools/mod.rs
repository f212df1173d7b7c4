//! The tools around the gateway, and the command line that runs them (`clap` lives only here):
//!
//! - [`cli`]: the `fleetgate` command line and its dispatch;
//! - [`loadgen`]: `fleetgate load`, the open-loop load generator;
//! - [`demo`]: `fleetgate demo`, a gateway and a fleet in one process;
//! - [`hist`]: `fleetgate hist`, HdrHistogram interval logs shown, compared and plotted;
//! - [`chaos`]: `fleetgate chaos` (hidden), floods and faults from outside with canaries;
//! - [`check`]: `fleetgate check`, host readiness;
//! - [`ctl`]: `fleetgate ctl`, the operator channel's client;
//! - [`passwd`]: `fleetgate passwd` and the credentials file on disk.

pub mod chaos;
pub mod check;
pub mod cli;
pub mod ctl;
pub mod demo;
pub mod hist;
pub mod loadgen;
pub mod loadhost;
pub mod passwd;
