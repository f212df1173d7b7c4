//! Device config strings (DESIGN.md §1.3: "the gateway keeps every field"), kept out of the
//! session record: a per-shard arena of 32-byte units, reserved at start-up, where each string
//! takes `ceil(len / 32)` contiguous units (at most 8 for the 255-byte maximum). The seed's
//! example config is 116 bytes: 4 units, 128 bytes, instead of the 256 bytes every record
//! carried inline whatever the string's length.
//!
//! Freed extents go onto one free list per size (1 to 8 units), threaded through the extents
//! themselves; an allocation takes an extent of its size, else fresh units at the end, else
//! splits a larger free extent. The arena is `gateway.device_config_bytes` per session
//! (default 128): when it is full, the string is not kept (counted); the device group was chosen
//! from the string as it arrived all the same.
//!
//! Untouched units are never written, so the arena costs memory only as strings arrive.

/// The arena and its free lists.
pub(super) struct Configs {
    bytes: Box<[u8]>,
    /// Units handed out from the end so far.
    bump: u32,
    /// Head of the free list of extents of `k` units (index `k`; 0 unused).
    free: [u32; MAX_UNITS + 1],
}

/// Where a kept string is: its first unit and its length (`len` 0: none kept).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ConfigRef {
    unit: u32,
    len: u8,
}

impl ConfigRef {
    /// No string kept.
    pub(super) const NONE: Self = Self { unit: NIL, len: 0 };
}

impl Configs {
    /// An arena of `bytes` bytes (rounded down to whole units).
    pub(super) fn new(bytes: usize) -> Self {
        let units = (bytes / UNIT).min(NIL as usize - 1);
        Self {
            bytes: vec![0; units * UNIT].into_boxed_slice(),
            bump: 0,
            free: [NIL; MAX_UNITS + 1],
        }
    }

    /// Keeps `s` (at most 255 bytes); `None` when the arena has no room.
    pub(super) fn insert(&mut self, s: &[u8]) -> Option<ConfigRef> {
        let s = &s[..s.len().min(255)];
        if s.is_empty() {
            return Some(ConfigRef::NONE);
        }
        let k = s.len().div_ceil(UNIT);
        let unit = self.take(k)?;
        let start = unit as usize * UNIT;
        self.bytes[start..start + s.len()].copy_from_slice(s);
        Some(ConfigRef { unit, len: s.len() as u8 })
    }

    /// The string behind `r`.
    pub(super) fn get(&self, r: ConfigRef) -> &[u8] {
        if r.len == 0 {
            return &[];
        }
        let start = r.unit as usize * UNIT;
        &self.bytes[start..start + usize::from(r.len)]
    }

    /// Gives `r`'s units back.
    pub(super) fn remove(&mut self, r: ConfigRef) {
        if r.len > 0 {
            self.push_free(r.unit, usize::from(r.len).div_ceil(UNIT));
        }
    }

    /// `k` contiguous units: a free extent of that size, fresh units, or a split larger one.
    fn take(&mut self, k: usize) -> Option<u32> {
        if let Some(u) = self.pop_free(k) {
            return Some(u);
        }
        let total = (self.bytes.len() / UNIT) as u32;
        if self.bump + k as u32 <= total {
            self.bump += k as u32;
            return Some(self.bump - k as u32);
        }
        let (big, u) = (k + 1..=MAX_UNITS).find_map(|b| self.pop_free(b).map(|u| (b, u)))?;
        self.push_free(u + k as u32, big - k);
        Some(u)
    }

    fn pop_free(&mut self, k: usize) -> Option<u32> {
        let u = self.free[k];
        if u == NIL {
            return None;
        }
        self.free[k] = self.link(u);
        Some(u)
    }

    fn push_free(&mut self, u: u32, k: usize) {
        let start = u as usize * UNIT;
        self.bytes[start..start + 4].copy_from_slice(&self.free[k].to_le_bytes());
        self.free[k] = u;
    }

    /// The next free extent, written in the first bytes of a free one.
    fn link(&self, u: u32) -> u32 {
        let start = u as usize * UNIT;
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes[start..start + 4]);
        u32::from_le_bytes(b)
    }
}

const UNIT: usize = 32;
const MAX_UNITS: usize = 255usize.div_ceil(UNIT);
const NIL: u32 = u32::MAX;

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn keeps_strings_and_reuses_freed_room() {
        let mut c = Configs::new(8 * UNIT);
        let a = c.insert(&[b'a'; 100]).unwrap(); // 4 units
        let b = c.insert(&[b'b'; 255]).unwrap_or(ConfigRef::NONE); // 8 units: no room
        assert_eq!(b, ConfigRef::NONE);
        let b = c.insert(&[b'b'; 128]).unwrap(); // 4 units: full now
        assert!(c.insert(b"x").is_none(), "full");
        assert_eq!((c.get(a), c.get(b)), (&[b'a'; 100][..], &[b'b'; 128][..]));
        c.remove(a);
        let d = c.insert(&[b'd'; 40]).unwrap(); // 2 of a's 4 units (split)
        let e = c.insert(&[b'e'; 64]).unwrap(); // the other 2
        assert_eq!(
            (c.get(d), c.get(e), c.get(b)),
            (&[b'd'; 40][..], &[b'e'; 64][..], &[b'b'; 128][..])
        );
    }

    proptest! {
        /// Against a model: every kept string reads back intact, whatever was freed meanwhile.
        #[test]
        fn strings_read_back_intact(ops in proptest::collection::vec((0usize..256, any::<bool>()), 1..300)) {
            let mut c = Configs::new(64 * UNIT);
            let mut kept: Vec<(ConfigRef, Vec<u8>)> = Vec::new();
            for (i, (len, free)) in ops.into_iter().enumerate() {
                if free && !kept.is_empty() {
                    let (r, _) = kept.swap_remove(i % kept.len());
                    c.remove(r);
                } else {
                    let s: Vec<u8> = (0..len).map(|j| b'!' + ((i + j) % 90) as u8).collect();
                    if let Some(r) = c.insert(&s) {
                        kept.push((r, s));
                    }
                }
                for (r, s) in &kept {
                    prop_assert_eq!(c.get(*r), &s[..]);
                }
            }
        }
    }
}
