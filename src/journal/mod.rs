//! Per-session journal of sent messages, for resend (DESIGN.md §2 rule 7, §3 "Journal").
//!
//! # Layout
//!
//! A [`Journal`] is a fixed ring of `slot_count` slots (a power of two, at least
//! `messages_per_session`), each `slot_bytes` long, allocated once at construction:
//!
//! ```text
//!   data: [ slot 0 | slot 1 | ... | slot n-1 ]     n * slot_bytes bytes
//!   meta: [ (seq, len) ; n ]                       n * 16 bytes
//!   ordinal k lives in slot k & (n - 1); retained ordinals are [head, tail)
//! ```
//!
//! Slots are addressed by the message's *ordinal* (how many messages were appended before it),
//! not by its sequence number as in TigerBeetle's journal: session messages (heartbeats, test
//! requests, ...) take sequence numbers too but are not journaled, so addressing by `seq` would
//! let them evict application messages and break the guarantee that each session keeps at least
//! its last `messages_per_session` application messages. Sequence numbers are strictly increasing
//! in ordinal order, so a lookup by `seq` is a binary search over `[head, tail)`.
//!
//! Each slot records `(seq, len)`; appending into a full ring evicts the oldest entry and
//! remembers its `seq` in [`Journal::evicted_through`], so a resend that reaches below the
//! retained window is detected and answered with LoggedOut rather than a silent gap.
//!
//! # Limits
//!
//! - A message longer than `slot_bytes` is refused ([`JournalError::TooLarge`]).
//! - Memory is fixed: [`JournalConfig::bytes_per_session`] is known before start-up.
//! - `append`, `get`, `lower_bound` and `release_through` never allocate.
#![forbid(unsafe_code)]

/// Sizing of one journal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct JournalConfig {
    /// Messages each session keeps at least (`journal.messages_per_session`, default 64).
    pub messages_per_session: usize,
    /// Largest padded message a slot holds, header included (`journal.slot_bytes`, default 256).
    pub slot_bytes: usize,
}

impl Default for JournalConfig {
    fn default() -> Self {
        Self { messages_per_session: 64, slot_bytes: 256 }
    }
}

impl JournalConfig {
    /// Slots in the ring: `messages_per_session` rounded up to a power of two (at least 1).
    pub fn slot_count(&self) -> usize {
        self.messages_per_session.max(1).next_power_of_two()
    }

    /// Bytes one journal reserves (data plus per-slot metadata).
    pub fn bytes_per_session(&self) -> usize {
        self.slot_count() * (self.slot_bytes + core::mem::size_of::<SlotMeta>())
    }
}

/// Why an append failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JournalError {
    /// The message is longer than a slot.
    TooLarge {
        /// The message length.
        len: usize,
        /// The slot size.
        slot_bytes: usize,
    },
    /// Sequence numbers must increase.
    OutOfOrder {
        /// The sequence number offered.
        seq: i64,
        /// The newest sequence number held.
        newest: i64,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct SlotMeta {
    seq: i64,
    len: u32,
}

/// A fixed ring of journaled messages. See the module docs for the layout.
#[derive(Debug)]
pub struct Journal {
    data: Box<[u8]>,
    meta: Box<[SlotMeta]>,
    mask: u64,
    slot_bytes: usize,
    head: u64,
    tail: u64,
    newest_seq: i64,
    evicted_through: i64,
    limit: usize,
}

impl Journal {
    /// Allocates the whole ring now; nothing allocates afterwards.
    pub fn new(cfg: JournalConfig) -> Self {
        let n = cfg.slot_count();
        assert!(n.is_power_of_two(), "slot count must be a power of two");
        assert!(cfg.slot_bytes >= crate::protocol::HEADER_LEN, "slot smaller than a header");
        Self {
            data: vec![0; n * cfg.slot_bytes].into_boxed_slice(),
            meta: vec![SlotMeta::default(); n].into_boxed_slice(),
            mask: (n - 1) as u64,
            slot_bytes: cfg.slot_bytes,
            head: 0,
            tail: 0,
            newest_seq: 0,
            evicted_through: 0,
            limit: n,
        }
    }

    /// Forgets every message (session reset or slot reuse); keeps the limit. Does not free
    /// memory.
    pub fn reset(&mut self) {
        self.head = 0;
        self.tail = 0;
        self.newest_seq = 0;
        self.evicted_through = 0;
    }

    /// Keeps at most `n` messages (clamped to `1..=capacity`): a device group's journal depth
    /// within the memory reserved at start-up. Takes effect from the next append.
    pub fn set_limit(&mut self, n: usize) {
        self.limit = n.clamp(1, self.meta.len());
    }

    /// Messages kept at most (the group's depth within the capacity).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Messages held whose number is above `acked`.
    pub fn count_after(&self, acked: i64) -> usize {
        let from = self.lower_bound(acked.saturating_add(1)).max(self.head);
        (self.tail - from.min(self.tail)) as usize
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }

    /// Largest message a slot holds.
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// Messages held.
    pub fn len(&self) -> usize {
        (self.tail - self.head) as usize
    }

    /// True if no message is held.
    pub fn is_empty(&self) -> bool {
        self.head == self.tail
    }

    /// True if the next append evicts the oldest message.
    pub fn is_full(&self) -> bool {
        self.len() >= self.limit
    }

    /// Ordinal of the oldest message held.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// Ordinal the next append takes.
    pub fn tail(&self) -> u64 {
        self.tail
    }

    /// Sequence number of the oldest message held.
    pub fn oldest_seq(&self) -> Option<i64> {
        (!self.is_empty()).then(|| self.meta_at(self.head).seq)
    }

    /// Sequence number of the newest message held, or of the newest ever appended (0 if none).
    pub fn newest_seq(&self) -> i64 {
        self.newest_seq
    }

    /// Highest sequence number evicted to make room (0 if none was). A resend from at or below
    /// it would leave a gap.
    pub fn evicted_through(&self) -> i64 {
        self.evicted_through
    }

    /// Appends a message of `len` bytes with sequence number `seq`, written in place by `fill`
    /// (which gets exactly `len` bytes). Evicts the oldest message if the ring is full and
    /// returns its sequence number.
    pub fn append_with(
        &mut self,
        seq: i64,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<Option<i64>, JournalError> {
        if len > self.slot_bytes {
            return Err(JournalError::TooLarge { len, slot_bytes: self.slot_bytes });
        }
        if seq <= self.newest_seq {
            return Err(JournalError::OutOfOrder { seq, newest: self.newest_seq });
        }
        let mut evicted = None;
        while self.is_full() {
            let old = self.meta_at(self.head).seq;
            self.evicted_through = old;
            self.head += 1;
            evicted = Some(old);
        }
        let ord = self.tail;
        let idx = (ord & self.mask) as usize;
        self.meta[idx] = SlotMeta { seq, len: len as u32 };
        let start = idx * self.slot_bytes;
        fill(&mut self.data[start..start + len]);
        self.tail += 1;
        self.newest_seq = seq;
        Ok(evicted)
    }

    /// Appends a copy of `bytes`. See [`Journal::append_with`].
    pub fn append(&mut self, seq: i64, bytes: &[u8]) -> Result<Option<i64>, JournalError> {
        self.append_with(seq, bytes.len(), |dst| dst.copy_from_slice(bytes))
    }

    /// The message at ordinal `ord`, if still held: `(seq, bytes)`.
    pub fn get(&self, ord: u64) -> Option<(i64, &[u8])> {
        if ord < self.head || ord >= self.tail {
            return None;
        }
        let idx = (ord & self.mask) as usize;
        let m = self.meta[idx];
        let start = idx * self.slot_bytes;
        Some((m.seq, &self.data[start..start + m.len as usize]))
    }

    /// Mutable access to the message at ordinal `ord` (to set the resend flag or refresh the
    /// acknowledgement before it is first sent).
    pub fn get_mut(&mut self, ord: u64) -> Option<(i64, &mut [u8])> {
        if ord < self.head || ord >= self.tail {
            return None;
        }
        let idx = (ord & self.mask) as usize;
        let m = self.meta[idx];
        let start = idx * self.slot_bytes;
        Some((m.seq, &mut self.data[start..start + m.len as usize]))
    }

    /// Sequence number at ordinal `ord`, if held.
    pub fn seq_at(&self, ord: u64) -> Option<i64> {
        (ord >= self.head && ord < self.tail).then(|| self.meta_at(ord).seq)
    }

    /// The first ordinal in `[head, tail]` whose message has `seq >= target` (`tail` if none).
    pub fn lower_bound(&self, target: i64) -> u64 {
        let (mut lo, mut hi) = (self.head, self.tail);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.meta_at(mid).seq < target {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// Drops every message with `seq <= through` from the old end (acknowledged messages, on the
    /// device side). Returns how many were dropped. These are not counted as evicted.
    pub fn release_through(&mut self, through: i64) -> usize {
        let start = self.head;
        while self.head < self.tail && self.meta_at(self.head).seq <= through {
            self.head += 1;
        }
        (self.head - start) as usize
    }

    fn meta_at(&self, ord: u64) -> SlotMeta {
        self.meta[(ord & self.mask) as usize]
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;

    fn cfg(n: usize) -> JournalConfig {
        JournalConfig { messages_per_session: n, slot_bytes: 64 }
    }

    #[test]
    fn slot_count_rounds_up_to_power_of_two() {
        assert_eq!(cfg(1).slot_count(), 1);
        assert_eq!(cfg(3).slot_count(), 4);
        assert_eq!(cfg(64).slot_count(), 64);
        assert_eq!(cfg(65).slot_count(), 128);
        assert_eq!(cfg(64).bytes_per_session(), 64 * (64 + 16));
    }

    #[test]
    fn keeps_at_least_messages_per_session_and_reports_evictions() {
        let mut j = Journal::new(cfg(3)); // 4 slots
        for seq in 1..=4 {
            assert_eq!(j.append(seq * 2, &[seq as u8; 40]), Ok(None));
        }
        assert_eq!(j.oldest_seq(), Some(2));
        assert_eq!(j.append(10, &[5; 40]), Ok(Some(2)));
        assert_eq!(j.evicted_through(), 2);
        assert_eq!(j.oldest_seq(), Some(4));
        assert_eq!(j.len(), 4);
    }

    #[test]
    fn a_limit_below_capacity_keeps_fewer_messages() {
        let mut j = Journal::new(cfg(8));
        j.set_limit(3);
        for seq in 1..=5 {
            j.append(seq, &[seq as u8]).unwrap();
        }
        assert_eq!(j.len(), 3);
        assert_eq!(j.oldest_seq(), Some(3));
        assert_eq!(j.evicted_through(), 2);
        j.reset();
        for seq in 1..=8 {
            j.append(seq, &[0]).unwrap();
        }
        assert_eq!(j.len(), 3, "a reset keeps the limit");
        j.set_limit(usize::MAX);
        j.append(9, &[0]).unwrap();
        assert_eq!(j.len(), 4, "the limit is clamped to the capacity and lifts at once");
    }

    #[test]
    fn refuses_oversized_and_out_of_order() {
        let mut j = Journal::new(cfg(4));
        assert_eq!(j.append(1, &[0; 65]), Err(JournalError::TooLarge { len: 65, slot_bytes: 64 }));
        j.append(5, &[0; 8]).unwrap();
        assert_eq!(j.append(5, &[0; 8]), Err(JournalError::OutOfOrder { seq: 5, newest: 5 }));
    }

    #[test]
    fn lower_bound_finds_first_at_or_after() {
        let mut j = Journal::new(cfg(8));
        for seq in [3, 4, 7, 9, 10] {
            j.append(seq, &[seq as u8]).unwrap();
        }
        assert_eq!(j.lower_bound(1), 0);
        assert_eq!(j.lower_bound(5), 2);
        assert_eq!(j.lower_bound(7), 2);
        assert_eq!(j.lower_bound(10), 4);
        assert_eq!(j.lower_bound(11), 5);
        assert_eq!(j.get(2), Some((7, &[7u8][..])));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(u8, usize),
        Release(u8),
        Reset,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (1u8..4, 0usize..=64).prop_map(|(gap, len)| Op::Append(gap, len)),
            2 => (0u8..6).prop_map(Op::Release),
            1 => Just(Op::Reset),
        ]
    }

    proptest! {
        /// The journal behaves like a bounded VecDeque oracle.
        #[test]
        fn matches_vecdeque_model(ops in proptest::collection::vec(op(), 1..300), n in 1usize..9) {
            let mut j = Journal::new(cfg(n));
            let cap = cfg(n).slot_count();
            let mut model: VecDeque<(i64, Vec<u8>)> = VecDeque::new();
            let mut next_seq = 1i64;
            let mut evicted = 0i64;
            for op in ops {
                match op {
                    Op::Append(gap, len) => {
                        let seq = next_seq + i64::from(gap) - 1;
                        next_seq = seq + 1;
                        let bytes: Vec<u8> = (0..len).map(|i| (seq as usize + i) as u8).collect();
                        let got = j.append(seq, &bytes).unwrap();
                        let want = if model.len() == cap {
                            let (s, _) = model.pop_front().unwrap();
                            evicted = s;
                            Some(s)
                        } else {
                            None
                        };
                        model.push_back((seq, bytes));
                        prop_assert_eq!(got, want);
                    }
                    Op::Release(k) => {
                        let through = model.front().map_or(0, |(s, _)| s + i64::from(k));
                        let mut dropped = 0;
                        while model.front().is_some_and(|(s, _)| *s <= through) {
                            model.pop_front();
                            dropped += 1;
                        }
                        prop_assert_eq!(j.release_through(through), dropped);
                    }
                    Op::Reset => {
                        j.reset();
                        model.clear();
                        next_seq = 1;
                        evicted = 0;
                    }
                }
                prop_assert_eq!(j.len(), model.len());
                prop_assert_eq!(j.evicted_through(), evicted);
                prop_assert_eq!(j.oldest_seq(), model.front().map(|(s, _)| *s));
                for (i, (seq, bytes)) in model.iter().enumerate() {
                    let ord = j.head() + i as u64;
                    prop_assert_eq!(j.get(ord), Some((*seq, &bytes[..])));
                    prop_assert_eq!(j.lower_bound(*seq), ord);
                }
            }
        }
    }
}
