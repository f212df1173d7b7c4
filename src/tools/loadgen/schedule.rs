//! One deadline per device in a binary heap with lazy deletion: the generator thread's only
//! timer structure (STYLE.md rule 3: a heap of each session's `poll_timeout()`, never a timer per
//! device and never a scan).
//!
//! Each device has at most one *valid* entry, the time in [`Schedule::armed`]. Arming earlier
//! pushes a new entry and makes the old one stale; arming later pushes nothing: the earlier entry
//! fires, the caller finds nothing due (the device's `handle_timeout` is a no-op when early) and
//! arms again. Stale entries are skipped when they reach the top. So each arm and each due
//! deadline costs O(log n), and the heap holds about one entry per device plus those that moved
//! earlier since they were last popped.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::time::Timestamp;

/// Deadlines of `n` devices.
#[derive(Debug)]
pub struct Schedule {
    heap: BinaryHeap<Reverse<(Timestamp, u32)>>,
    armed: Vec<Timestamp>,
}

impl Schedule {
    /// A schedule for devices `0..n`, none armed.
    pub fn new(n: usize) -> Self {
        Self { heap: BinaryHeap::with_capacity(n + n / 4 + 16), armed: vec![Timestamp::MAX; n] }
    }

    /// The valid deadline of device `k` (`Timestamp::MAX`: none).
    pub fn armed(&self, k: u32) -> Timestamp {
        self.armed[k as usize]
    }

    /// Makes `at` the deadline of `k` if it is earlier than the one it has.
    pub fn arm(&mut self, k: u32, at: Timestamp) {
        let slot = &mut self.armed[k as usize];
        if at < *slot {
            *slot = at;
            self.heap.push(Reverse((at, k)));
        }
    }

    /// The earliest entry's time (possibly a stale one: then a wake-up finds nothing to do).
    pub fn next(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// The next device whose valid deadline is at or before `now`; it is disarmed.
    pub fn pop_due(&mut self, now: Timestamp) -> Option<u32> {
        while let Some(&Reverse((t, k))) = self.heap.peek() {
            if t > now {
                return None;
            }
            self.heap.pop();
            if self.armed[k as usize] == t {
                self.armed[k as usize] = Timestamp::MAX;
                return Some(k);
            }
        }
        None
    }

    /// Entries in the heap, stale ones included.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// True when no entry is left.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn earlier_supersedes_later_waits_stale_entries_are_skipped() {
        let mut s = Schedule::new(3);
        s.arm(0, t(50));
        s.arm(1, t(20));
        s.arm(0, t(10)); // earlier: the 50 ms entry is stale now
        s.arm(1, t(40)); // later: nothing pushed, 20 ms stays valid
        assert_eq!(s.len(), 3);
        assert_eq!(s.next(), Some(t(10)));
        assert_eq!(s.pop_due(t(5)), None);
        assert_eq!(s.pop_due(t(30)), Some(0));
        assert_eq!(s.pop_due(t(30)), Some(1));
        assert_eq!(s.pop_due(t(30)), None);
        assert_eq!(s.armed(0), Timestamp::MAX);
        // The stale 50 ms entry of device 0 never fires.
        assert_eq!(s.pop_due(t(100)), None);
        assert!(s.is_empty());
        // Disarmed devices can be armed again, at any time.
        s.arm(1, t(200));
        assert_eq!(s.pop_due(t(200)), Some(1));
    }

    #[test]
    fn due_devices_come_out_in_deadline_order() {
        let mut s = Schedule::new(100);
        for k in 0..100u32 {
            s.arm(k, t(u64::from((k * 37) % 100)));
        }
        let mut last = Timestamp::ZERO;
        let mut n = 0;
        while let Some(k) = s.pop_due(t(1000)) {
            let at = t(u64::from((k * 37) % 100));
            assert!(at >= last);
            last = at;
            n += 1;
        }
        assert_eq!(n, 100);
    }
}
