//! Exactly-once, in-order checking of a pushed stream (the `resend` scenario's verdict).
#![forbid(unsafe_code)]

/// Checks that the feed events one device receives are exactly the gateway's sequence: each
/// event's counter must be the previous one plus one. A duplicate, a reordering or a gap is a
/// violation; the first counter seen is accepted as the start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FeedChecker {
    last: Option<u64>,
    /// Events accepted.
    pub received: u64,
    /// Counters seen again or out of order.
    pub duplicates: u64,
    /// Events missing (sum of gap sizes).
    pub missing: u64,
}

impl FeedChecker {
    /// Records one event's counter.
    pub fn observe(&mut self, counter: u64) {
        match self.last {
            Some(last) if counter <= last => self.duplicates += 1,
            Some(last) => {
                self.missing += counter - last - 1;
                self.received += 1;
                self.last = Some(counter);
            }
            None => {
                self.received += 1;
                self.last = Some(counter);
            }
        }
    }

    /// Restarts at the next event (the stream was reset: a new session, not a resume).
    pub fn restart(&mut self) {
        self.last = None;
    }

    /// True if no event was duplicated, reordered or missed.
    pub fn is_exact(&self) -> bool {
        self.duplicates == 0 && self.missing == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_contiguous_stream_passes() {
        let mut c = FeedChecker::default();
        for k in 5..100 {
            c.observe(k);
        }
        assert!(c.is_exact());
        assert_eq!(c.received, 95);
    }

    #[test]
    fn a_gap_fails() {
        let mut c = FeedChecker::default();
        for k in [1, 2, 3, 5, 6] {
            c.observe(k);
        }
        assert!(!c.is_exact());
        assert_eq!(c.missing, 1);
    }

    #[test]
    fn a_duplicate_or_reorder_fails() {
        let mut c = FeedChecker::default();
        for k in [1, 2, 2, 3] {
            c.observe(k);
        }
        assert_eq!(c.duplicates, 1);
        assert!(!c.is_exact());
        let mut c = FeedChecker::default();
        for k in [1, 3, 2] {
            c.observe(k);
        }
        assert!(!c.is_exact());
    }
}
