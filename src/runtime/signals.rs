//! Termination signals: SIGTERM and SIGINT set the gateway's shutdown flag directly (the
//! `signal-hook` crate's handler only stores to the atomic), which every thread checks at least
//! every 100 ms.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// Catches SIGTERM and SIGINT from now on (before the gateway starts, so that none is lost):
/// each sets the returned flag, to be given to the gateway as its shutdown flag.
pub fn catch() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(flag)
}
