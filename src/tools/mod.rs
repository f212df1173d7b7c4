//! The command-line tools around the gateway.

pub mod passwd;
