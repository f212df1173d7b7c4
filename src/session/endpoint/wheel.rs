//! The shard's session timers (STYLE.md rule 3): a hierarchical timing wheel holding each
//! session's `poll_timeout()`, so that scheduling, moving, cancelling and firing one deadline
//! cost the same whether the shard holds a thousand sessions or a million.
//!
//! Six levels of 64 slots; a slot of level `k` spans `64^k` ticks of 1 ms, so the wheel covers
//! 64^6 ms (about 2.2 years; later deadlines are clamped to the wheel's end and re-checked when
//! they come round). Each slot is an intrusive doubly linked list threaded through a node per
//! session (16 bytes: next, prev, slot and deadline), preallocated at start-up; a 64-bit occupancy mask per
//! level finds the next deadline with one rotate and one `trailing_zeros`. A deadline in a
//! higher level cascades down at most five times before it fires. The design is tokio's
//! `runtime/time/wheel` with handles instead of pointers.
//!
//! Deadlines are rounded *up* to the millisecond, so an entry fires at or after its deadline,
//! never before (a session asked too early would do nothing and be scheduled again at once).

use crate::time::Timestamp;

/// Ticks (ms) since `Timestamp::ZERO`.
type Tick = u64;

/// A wheel of `n` entries (one per session slot), all allocated now.
pub(super) struct Wheel {
    nodes: Box<[Node]>,
    /// Head of each slot's list, level-major.
    heads: Box<[u32]>,
    occupied: [u64; LEVELS],
    /// Every tick before this one has been processed.
    elapsed: Tick,
    /// Entries taken off an expired slot and due, not yet handed out.
    due: u32,
}

/// One entry: its list neighbours, its slot (`IDLE` when not scheduled) and its deadline tick,
/// packed in 16 bytes (the tick is below 2^36, the slot below 2^9).
#[derive(Clone, Copy)]
struct Node {
    next: u32,
    prev: u32,
    /// `slot << 48 | tick`.
    slot_when: u64,
}

impl Node {
    const IDLE: Self = Self { next: NIL, prev: NIL, slot_when: (IDLE as u64) << 48 };

    fn slot(self) -> u16 {
        (self.slot_when >> 48) as u16
    }

    fn when(self) -> Tick {
        self.slot_when & ((1 << 48) - 1)
    }
}

impl Wheel {
    /// Room for entries `0..n`.
    pub(super) fn new(n: usize) -> Self {
        assert!(n < NIL as usize, "too many wheel entries");
        Self {
            nodes: vec![Node::IDLE; n].into_boxed_slice(),
            heads: vec![NIL; LEVELS * SLOTS].into_boxed_slice(),
            occupied: [0; LEVELS],
            elapsed: 0,
            due: NIL,
        }
    }

    /// Bytes reserved per entry.
    pub(super) const ENTRY_BYTES: usize = core::mem::size_of::<Node>();

    /// True if entry `i` is scheduled.
    #[cfg(test)]
    pub(super) fn is_scheduled(&self, i: u32) -> bool {
        self.nodes[i as usize].slot() != IDLE
    }

    /// Schedules entry `i` for `at`, replacing its deadline if it had one.
    pub(super) fn insert(&mut self, i: u32, at: Timestamp) {
        let when = tick_up(at).max(self.elapsed);
        let n = self.nodes[i as usize];
        if n.slot() != IDLE && n.when() == when {
            return; // already there
        }
        self.remove(i);
        self.place(i, when, self.elapsed);
    }

    /// Unschedules entry `i` if it is scheduled.
    pub(super) fn remove(&mut self, i: u32) {
        let n = self.nodes[i as usize];
        let slot = n.slot();
        if slot == IDLE {
            return;
        }
        if n.prev == NIL {
            let head = if slot == DUE { &mut self.due } else { &mut self.heads[usize::from(slot)] };
            debug_assert_eq!(*head, i);
            *head = n.next;
        } else {
            self.nodes[n.prev as usize].next = n.next;
        }
        if n.next != NIL {
            self.nodes[n.next as usize].prev = n.prev;
        }
        if slot != DUE && self.heads[usize::from(slot)] == NIL {
            let s = usize::from(slot);
            self.occupied[s / SLOTS] &= !(1 << (s % SLOTS));
        }
        self.nodes[i as usize] = Node::IDLE;
    }

    /// The earliest time an entry may be due (an entry in a higher level may fire later: its
    /// slot cascades then).
    pub(super) fn next_deadline(&self) -> Option<Timestamp> {
        if self.due != NIL {
            return Some(from_tick(self.elapsed));
        }
        self.next_expiration().map(|(_, _, deadline)| from_tick(deadline))
    }

    /// The next entry whose deadline has come by `now`, unscheduled; `None` when there is none
    /// left.
    pub(super) fn poll(&mut self, now: Timestamp) -> Option<u32> {
        let now = tick_down(now);
        loop {
            if self.due != NIL {
                let i = self.due;
                self.remove(i);
                return Some(i);
            }
            match self.next_expiration() {
                Some((level, slot, deadline)) if deadline <= now => {
                    self.expire(level, slot, deadline);
                    self.elapsed = self.elapsed.max(deadline);
                }
                _ => {
                    self.elapsed = self.elapsed.max(now);
                    return None;
                }
            }
        }
    }

    /// Takes the list of `(level, slot)`, whose start is `deadline`: entries due by then go
    /// to the due list, the others down to a lower level.
    fn expire(&mut self, level: usize, slot: usize, deadline: Tick) {
        let s = level * SLOTS + slot;
        let mut i = core::mem::replace(&mut self.heads[s], NIL);
        self.occupied[level] &= !(1 << slot);
        while i != NIL {
            let n = self.nodes[i as usize];
            let when = n.when();
            if when <= deadline {
                self.push(i, DUE, when);
            } else {
                self.place(i, when, deadline);
            }
            i = n.next;
        }
    }

    /// Puts entry `i` in the slot for tick `when` (at or after `elapsed`).
    fn place(&mut self, i: u32, when: Tick, elapsed: Tick) {
        let level = level_for(elapsed, when);
        let slot = ((when >> (level * BITS)) as usize) % SLOTS;
        self.occupied[level] |= 1 << slot;
        self.push(i, (level * SLOTS + slot) as u16, when);
    }

    fn push(&mut self, i: u32, slot: u16, when: Tick) {
        let head = if slot == DUE { &mut self.due } else { &mut self.heads[usize::from(slot)] };
        let old = core::mem::replace(head, i);
        if old != NIL {
            self.nodes[old as usize].prev = i;
        }
        self.nodes[i as usize] =
            Node { next: old, prev: NIL, slot_when: u64::from(slot) << 48 | when };
    }

    /// The lowest level with an entry, its next occupied slot and that slot's start tick.
    fn next_expiration(&self) -> Option<(usize, usize, Tick)> {
        (0..LEVELS).find_map(|level| {
            let occupied = self.occupied[level];
            if occupied == 0 {
                return None;
            }
            let slot_range = 1u64 << (level * BITS);
            let level_range = slot_range << BITS;
            let now_slot = (self.elapsed / slot_range) % SLOTS as u64;
            let slot = (u64::from(occupied.rotate_right(now_slot as u32).trailing_zeros())
                + now_slot)
                % SLOTS as u64;
            let level_start = self.elapsed & !(level_range - 1);
            let mut deadline = level_start + slot * slot_range;
            if deadline < self.elapsed {
                // A slot "behind" the current one holds entries one revolution on.
                deadline += level_range;
            }
            Some((level, slot as usize, deadline))
        })
    }
}

/// The level a deadline `when` goes to, seen from `elapsed`: the highest 6-bit group in which
/// they differ.
fn level_for(elapsed: Tick, when: Tick) -> usize {
    let masked = ((elapsed ^ when) | (SLOTS as u64 - 1)).min(MAX_TICK - 1);
    let significant = 63 - masked.leading_zeros() as usize;
    (significant / BITS).min(LEVELS - 1)
}

fn tick_up(t: Timestamp) -> Tick {
    t.as_nanos().div_ceil(NS_PER_TICK).min(MAX_TICK - 1)
}

fn tick_down(t: Timestamp) -> Tick {
    (t.as_nanos() / NS_PER_TICK).min(MAX_TICK - 1)
}

fn from_tick(t: Tick) -> Timestamp {
    Timestamp::from_nanos(t.saturating_mul(NS_PER_TICK))
}

const BITS: usize = 6;
const SLOTS: usize = 1 << BITS;
const LEVELS: usize = 6;
/// Ticks the wheel covers.
const MAX_TICK: u64 = 1 << (BITS * LEVELS);
const NS_PER_TICK: u64 = 1_000_000;
const NIL: u32 = u32::MAX;
/// `Node::slot` of an entry not scheduled.
const IDLE: u16 = u16::MAX;
/// `Node::slot` of an entry on the due list.
const DUE: u16 = u16::MAX - 1;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn ms(n: u64) -> Timestamp {
        Timestamp::from_nanos(n * NS_PER_TICK)
    }

    #[test]
    fn fires_in_order_never_early() {
        let mut w = Wheel::new(4);
        let at = [ms(5) + core::time::Duration::from_nanos(1), ms(70), ms(5_000), ms(300_000)];
        for (i, &t) in at.iter().enumerate() {
            w.insert(i as u32, t);
        }
        assert_eq!(w.poll(ms(5)), None, "5 ms + 1 ns is not due at 5 ms");
        assert_eq!(w.poll(ms(6)), Some(0));
        assert_eq!(w.poll(ms(69)), None);
        assert_eq!(w.poll(ms(70)), Some(1));
        assert_eq!(w.poll(ms(299_999)), Some(2));
        assert_eq!(w.poll(ms(299_999)), None);
        assert_eq!(w.poll(ms(400_000)), Some(3));
        assert!(w.next_deadline().is_none());
    }

    /// Model test: the wheel against a sorted set of (deadline, entry).
    #[derive(Clone, Debug)]
    enum Op {
        Set(u8, u32),
        /// Up to 400 s ahead (levels 2 and 3).
        SetFar(u8, u32),
        Cancel(u8),
        Advance(u32),
        AdvanceFar(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..16, 0u32..200_000).prop_map(|(i, d)| Op::Set(i, d)),
            (0u8..16, 0u32..200_000).prop_map(|(i, d)| Op::SetFar(i, d)),
            (0u8..16).prop_map(Op::Cancel),
            (0u32..100_000).prop_map(Op::Advance),
            (0u32..100_000).prop_map(Op::AdvanceFar),
        ]
    }

    proptest! {
        #[test]
        fn matches_a_sorted_set(ops in proptest::collection::vec(op(), 1..200)) {
            let mut w = Wheel::new(16);
            let mut at = [None::<Timestamp>; 16];
            let mut model = BTreeSet::new();
            let mut now = Timestamp::ZERO;
            for op in ops {
                let (op, far) = match op {
                    Op::SetFar(i, d) => (Op::Set(i, d), 2_000),
                    Op::AdvanceFar(d) => (Op::Advance(d), 300),
                    op => (op, 1),
                };
                match op {
                    Op::Set(i, d) => {
                        let t = now + core::time::Duration::from_micros(u64::from(d) * 7 * far);
                        if let Some(old) = at[usize::from(i)].take() {
                            model.remove(&(old, i));
                        }
                        w.insert(u32::from(i), t);
                        at[usize::from(i)] = Some(t);
                        model.insert((t, i));
                    }
                    Op::SetFar(..) | Op::AdvanceFar(_) => unreachable!(),
                    Op::Cancel(i) => {
                        if let Some(old) = at[usize::from(i)].take() {
                            model.remove(&(old, i));
                        }
                        w.remove(u32::from(i));
                    }
                    Op::Advance(d) => {
                        now = now + core::time::Duration::from_micros(u64::from(d) * 13 * far);
                        let mut fired = BTreeSet::new();
                        while let Some(i) = w.poll(now) {
                            let t = at[i as usize].take().unwrap();
                            prop_assert!(t <= now, "fired early");
                            fired.insert((t, i as u8));
                        }
                        let due: BTreeSet<_> = model
                            .iter()
                            .filter(|(t, _)| tick_up(*t) <= tick_down(now))
                            .copied()
                            .collect();
                        prop_assert_eq!(&fired, &due);
                        for e in &due {
                            model.remove(e);
                        }
                        // The next deadline is never after the earliest entry.
                        if let (Some(d), Some((t, _))) = (w.next_deadline(), model.first()) {
                            prop_assert!(d <= from_tick(tick_up(*t)));
                        }
                    }
                }
            }
        }
    }
}
