//! Time as data: the sans-IO core never reads a clock, it is handed a [`Timestamp`]. The
//! runtime and the tools read the process [`Clock`] and pass what it says down.

#![forbid(unsafe_code)]

use core::ops::{Add, Sub};
use core::time::Duration;
use std::time::Instant;

/// A point in time in nanoseconds since an arbitrary origin chosen by the driver (a monotonic
/// clock in the runtime, zero in simulations).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The origin.
    pub const ZERO: Self = Self(0);
    /// A time later than any real one, for "never".
    pub const MAX: Self = Self(u64::MAX);

    /// From nanoseconds since the origin.
    pub const fn from_nanos(ns: u64) -> Self {
        Self(ns)
    }

    /// Nanoseconds since the origin.
    pub const fn as_nanos(self) -> u64 {
        self.0
    }

    /// `self - earlier`, or zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Self) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Timestamp {
    type Output = Self;

    fn add(self, d: Duration) -> Self {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Self(self.0.saturating_add(ns))
    }
}

impl Sub for Timestamp {
    type Output = Duration;

    fn sub(self, earlier: Self) -> Duration {
        self.saturating_since(earlier)
    }
}

/// The process-wide time base: monotonic nanoseconds since start-up, plus the offset to the
/// Unix epoch for `sendTime`. Only the drivers (runtime, tools) read it.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    origin: Instant,
    wall_offset_ns: i64,
}

impl Clock {
    /// Starts the clock now.
    pub fn new() -> Self {
        let origin = Instant::now();
        let wall =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Self { origin, wall_offset_ns: wall.as_nanos() as i64 }
    }

    /// Now.
    pub fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.origin.elapsed().as_nanos() as u64)
    }

    /// Offset from [`Clock::now`] to Unix-epoch nanoseconds.
    pub fn wall_offset_ns(&self) -> i64 {
        self.wall_offset_ns
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}
