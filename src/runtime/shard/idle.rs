//! What a shard does after a pass of its duty cycle ([`super::Shard::do_work`]) that found
//! nothing to do (Aeron's idle strategies, `aeron_agent.h`): park in the kernel until input or
//! the next deadline, or spin first.

use std::time::{Duration, Instant};

use crate::config::Idle;

/// The idle strategy of a shard (`gateway.idle`, `gateway.spin_us`).
#[derive(Clone, Copy, Debug)]
pub enum IdleStrategy {
    /// Park at once.
    Park,
    /// Busy-poll this long after the last pass with work, then park.
    SpinThenPark(Duration),
}

/// Longest park: shutdown and the once-a-second snapshot are noticed at least this often.
pub const MAX_PARK: Duration = Duration::from_millis(100);

impl IdleStrategy {
    /// From the configuration.
    pub fn new(idle: Idle, spin: Duration) -> Self {
        match idle {
            Idle::Park => Self::Park,
            Idle::Spin => Self::SpinThenPark(spin),
        }
    }

    /// How long the shard may wait for input now, after a pass that did `work` (`idle_since`:
    /// when the current run of idle passes began, kept by the caller). Zero: run the next pass
    /// at once.
    pub fn park_for(
        self,
        work: usize,
        idle_since: &mut Option<Instant>,
        until_deadline: Duration,
    ) -> Duration {
        if work > 0 {
            *idle_since = None;
            return Duration::ZERO;
        }
        let since = *idle_since.get_or_insert_with(Instant::now);
        match self {
            Self::SpinThenPark(spin) if since.elapsed() < spin => {
                std::hint::spin_loop();
                Duration::ZERO
            }
            _ => until_deadline.min(MAX_PARK),
        }
    }
}
