//! Termination signals: SIGTERM and SIGINT set the gateway's shutdown flag, which every thread
//! checks at least every 100 ms. The handler only sets an atomic (`io::sys`); a small thread
//! forwards it to the flag.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::io::sys;

/// Catches SIGTERM and SIGINT from now on (before the gateway starts, so that none is lost).
pub fn catch() {
    sys::catch_terminate();
}

/// Sets `shutdown` once a caught signal arrives (polled every 20 ms by a detached thread).
pub fn forward_to(shutdown: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        while !sys::terminate_requested() {
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("fleetgate: shutting down");
        shutdown.store(true, Ordering::Relaxed);
    });
}
