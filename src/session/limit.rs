//! One table type for every limiter (DESIGN.md §2 rule 11): the failed-logon limiter of each
//! shard (per source, per network, per username; [`super::auth::LogonCheck`]) and the
//! acceptor's per-source ConnectionRequest token bucket.
//!
//! # Keys
//!
//! A source is its IPv4 address, or its IPv6 /64: the low 64 bits of an IPv6 address (the
//! interface identifier) are the sender's own choice, so keying on them gave an attacker as many
//! keys as it liked. IPv4-mapped IPv6 addresses count as IPv4. A network is the IPv4 /24; for
//! IPv6 the network (/64, as DESIGN.md says) is the source itself, so only the source limit
//! applies ([`Source::network`] is `None`).
//!
//! # The table
//!
//! [`LimitTable`] is set-associative: a keyed hash (SipHash-1-3 with a secret seed, so no one can
//! aim at a set) picks a set of [`WAYS`] entries; a key lives in one entry of its set. A
//! newcomer takes a free entry, else evicts the least recently used entry that is *not blocked*.
//! A blocked entry (an empty token bucket, an address over its failure limit) is never evicted
//! before its window ends: a collision can no longer reset or refill another key's block, and a
//! limit, once hit, holds for its whole window whatever else happens. When every entry of the
//! set is blocked, the newcomer cannot be tracked and is treated as blocked itself (refused, or
//! rate limited) and counted ([`LimitTable::untracked`]): conservative, and reachable only by
//! blocking `WAYS` keys that share a secret-chosen set.
//!
//! Evicting an unblocked entry forgets what it counted below its limit (a few failures, a partly
//! drained bucket): the source starts afresh, which only matters to one that keeps failing, and
//! those failures still count at the network and username levels.

use core::hash::{Hash, Hasher};
use core::time::Duration;
use std::net::IpAddr;

use siphasher::sip::SipHasher13;

use crate::time::Timestamp;

/// Entries per set.
pub const WAYS: usize = 8;

/// What a limiter is keyed by: a source (IPv4 address, IPv6 /64) or an IPv4 network (/24).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// An IPv4 address.
    V4(u32),
    /// An IPv4 /24: its first address.
    Net4(u32),
    /// An IPv6 /64: its top 64 bits.
    V6(u64),
}

impl Source {
    /// The source key of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Self::V4(u32::from(v4)),
            IpAddr::V6(v6) => Self::V6((u128::from(v6) >> 64) as u64),
        }
    }

    /// The network key of `ip` when it differs from its source key (IPv4 /24); `None` for
    /// IPv6, whose source already is its /64.
    pub fn network(ip: IpAddr) -> Option<Self> {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Some(Self::Net4(u32::from(v4) & 0xffff_ff00)),
            IpAddr::V6(_) => None,
        }
    }
}

/// What a [`LimitTable`] holds per key.
pub trait Limit: Copy {
    /// True while the limit holds: the entry is then never evicted.
    fn is_blocked(&self, now: Timestamp) -> bool;

    /// When the entry was last touched (the least recent unblocked entry is evicted first).
    fn last_used(&self) -> Timestamp;
}

/// A set-associative table of limiter entries (see the module docs). Allocated once.
pub struct LimitTable<K, V> {
    entries: Box<[Option<(K, V)>]>,
    sets: usize,
    seed: (u64, u64),
    untracked: u64,
}

impl<K: Copy + Eq + Hash, V: Limit> LimitTable<K, V> {
    /// Room for about `entries` keys (rounded up to a power-of-two number of sets of
    /// [`WAYS`]); `seed` keys the hash (keep it secret).
    pub fn new(entries: usize, seed: [u8; 16]) -> Self {
        let sets = entries.div_ceil(WAYS).max(1).next_power_of_two();
        let mut k = [0u8; 8];
        k.copy_from_slice(&seed[..8]);
        let k0 = u64::from_le_bytes(k);
        k.copy_from_slice(&seed[8..]);
        let k1 = u64::from_le_bytes(k);
        Self {
            entries: vec![None; sets * WAYS].into_boxed_slice(),
            sets,
            seed: (k0, k1),
            untracked: 0,
        }
    }

    /// The entry of `key`, if tracked.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.set(key).iter().find_map(|e| e.as_ref().filter(|(k, _)| k == key).map(|(_, v)| v))
    }

    /// True if `key` is blocked: its entry is, or it is not tracked and could not be (every
    /// entry of its set is blocked: see the module docs).
    pub fn is_blocked(&self, key: &K, now: Timestamp) -> bool {
        match self.get(key) {
            Some(v) => v.is_blocked(now),
            None => {
                self.set(key).iter().all(|e| e.as_ref().is_some_and(|(_, v)| v.is_blocked(now)))
            }
        }
    }

    /// The entry of `key`, made with `fresh` if it was not tracked; `None` (counted) when its set
    /// has no room: every entry is blocked.
    pub fn entry(&mut self, key: K, now: Timestamp, fresh: impl FnOnce() -> V) -> Option<&mut V> {
        let start = self.set_start(&key);
        let set = &mut self.entries[start..start + WAYS];
        let mut found = None;
        let mut victim: Option<(usize, Timestamp)> = None;
        for (i, e) in set.iter().enumerate() {
            match e {
                Some((k, _)) if *k == key => {
                    found = Some(i);
                    break;
                }
                None => victim = Some((i, Timestamp::ZERO)),
                Some((_, v)) if !v.is_blocked(now) => {
                    let used = v.last_used();
                    if victim.is_none_or(|(_, t)| used < t) {
                        victim = Some((i, used));
                    }
                }
                Some(_) => {}
            }
        }
        let i = match (found, victim) {
            (Some(i), _) => i,
            (None, Some((i, _))) => {
                set[i] = Some((key, fresh()));
                i
            }
            (None, None) => {
                self.untracked += 1;
                return None;
            }
        };
        set[i].as_mut().map(|(_, v)| v)
    }

    /// Keys that could not be tracked because their set was full of blocked entries.
    pub fn untracked(&self) -> u64 {
        self.untracked
    }

    fn set(&self, key: &K) -> &[Option<(K, V)>] {
        let start = self.set_start(key);
        &self.entries[start..start + WAYS]
    }

    fn set_start(&self, key: &K) -> usize {
        let mut h = SipHasher13::new_with_keys(self.seed.0, self.seed.1);
        key.hash(&mut h);
        (h.finish() as usize & (self.sets - 1)) * WAYS
    }
}

/// Failures counted over a window; blocked for a whole window from the moment the count
/// reaches its limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Failures {
    count: u32,
    since: Timestamp,
    blocked_until: Timestamp,
    last: Timestamp,
}

impl Failures {
    /// No failures yet.
    pub fn new(now: Timestamp) -> Self {
        Self { count: 0, since: now, blocked_until: Timestamp::ZERO, last: now }
    }

    /// Counts one failure; blocks for `window` once `max` failures fall within one window.
    pub fn record(&mut self, now: Timestamp, max: u32, window: Duration) {
        if !self.is_blocked(now) && now.saturating_since(self.since) > window {
            *self = Self::new(now);
        }
        self.count = self.count.saturating_add(1);
        self.last = now;
        if self.count >= max && !self.is_blocked(now) {
            self.blocked_until = now + window;
        }
    }

    /// Failures within the current window (0 once it has passed and nothing blocks).
    pub fn count(&self, now: Timestamp, window: Duration) -> u32 {
        if self.is_blocked(now) || now.saturating_since(self.since) <= window {
            self.count
        } else {
            0
        }
    }
}

impl Limit for Failures {
    fn is_blocked(&self, now: Timestamp) -> bool {
        now < self.blocked_until
    }

    fn last_used(&self) -> Timestamp {
        self.last
    }
}

/// A token bucket: `rate` tokens a second up to `burst`; blocked while it holds less than one.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    at: Timestamp,
    /// When it holds a whole token again (blocked until then).
    refilled: Timestamp,
}

impl TokenBucket {
    /// A full bucket.
    pub fn full(now: Timestamp, burst: u32) -> Self {
        Self { tokens: f64::from(burst), at: now, refilled: Timestamp::ZERO }
    }

    /// Takes a token if there is one; false (rate limited) if not.
    pub fn take(&mut self, now: Timestamp, rate: u32, burst: u32) -> bool {
        let dt = now.saturating_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * f64::from(rate)).min(f64::from(burst));
        self.at = now;
        let ok = self.tokens >= 1.0;
        if ok {
            self.tokens -= 1.0;
        }
        if self.tokens < 1.0 {
            let wait = if rate == 0 { f64::MAX } else { (1.0 - self.tokens) / f64::from(rate) };
            self.refilled = now + Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX);
        }
        ok
    }
}

impl Limit for TokenBucket {
    fn is_blocked(&self, now: Timestamp) -> bool {
        now < self.refilled
    }

    fn last_used(&self) -> Timestamp {
        self.at
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;

    const T0: Timestamp = Timestamp::from_nanos(1_000_000_000);
    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn ipv6_is_keyed_on_its_64_and_mapped_ipv4_on_the_address() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:ffff:ffff:ffff".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Source::of(a), Source::of(b));
        assert_ne!(Source::of(a), Source::of(c));
        assert_eq!(Source::network(a), None);
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped());
        assert_eq!(Source::of(mapped), Source::of(IpAddr::from([10, 1, 2, 3])));
        assert_eq!(
            Source::network(IpAddr::from([10, 1, 2, 3])),
            Source::network(IpAddr::from([10, 1, 2, 200]))
        );
        assert_ne!(Source::of(IpAddr::V6(Ipv6Addr::LOCALHOST)), Source::of(a));
    }

    /// The flaw of issue 9 (found 2): a direct-mapped table forgot a blocked address once
    /// enough others had failed, because a colliding address reset the shared entry.
    #[test]
    fn a_blocked_key_survives_any_number_of_newcomers() {
        let mut t: LimitTable<Source, Failures> = LimitTable::new(256, [7; 16]);
        let victim = Source::of(IpAddr::from([192, 0, 2, 1]));
        for _ in 0..5 {
            t.entry(victim, T0, || Failures::new(T0)).unwrap().record(T0, 5, WINDOW);
        }
        assert!(t.is_blocked(&victim, T0));
        for i in 0..100_000u32 {
            let k = Source::V4(0x0a00_0000 + i);
            if let Some(f) = t.entry(k, T0, || Failures::new(T0)) {
                f.record(T0, 5, WINDOW);
            }
        }
        let later = T0 + (WINDOW - Duration::from_millis(1));
        assert!(t.is_blocked(&victim, later), "still blocked until its window ends");
        assert!(!t.is_blocked(&victim, T0 + WINDOW), "and not after");
    }

    /// The acceptor's flaw of the same kind: a colliding source refilled an empty bucket.
    #[test]
    fn an_empty_bucket_is_not_refilled_by_newcomers() {
        let mut t: LimitTable<Source, TokenBucket> = LimitTable::new(4096, [3; 16]);
        let flooder = Source::of(IpAddr::from([198, 51, 100, 7]));
        let b = t.entry(flooder, T0, || TokenBucket::full(T0, 40)).unwrap();
        while b.take(T0, 20, 40) {}
        for i in 0..100_000u32 {
            let k = Source::V4(0x0a00_0000 + i);
            let _ = t.entry(k, T0, || TokenBucket::full(T0, 40)).map(|b| b.take(T0, 20, 40));
        }
        assert!(t.is_blocked(&flooder, T0 + Duration::from_millis(49)));
        let b = t.entry(flooder, T0, || TokenBucket::full(T0, 40)).unwrap();
        assert!(!b.take(T0 + Duration::from_millis(49), 20, 40), "no token before 50 ms");
        assert!(b.take(T0 + Duration::from_millis(50), 20, 40), "one token at 20/s");
    }

    /// When every entry of a set is blocked, a newcomer of that set cannot be tracked: it is
    /// treated as blocked, and counted.
    #[test]
    fn a_set_full_of_blocked_entries_blocks_the_newcomer() {
        let mut t: LimitTable<Source, TokenBucket> = LimitTable::new(WAYS, [1; 16]);
        assert_eq!(t.sets, 1);
        for i in 0..WAYS as u32 {
            let b = t.entry(Source::V4(i), T0, || TokenBucket::full(T0, 1)).unwrap();
            assert!(b.take(T0, 1, 1));
            assert!(!b.take(T0, 1, 1));
        }
        let newcomer = Source::V4(1000);
        assert!(t.is_blocked(&newcomer, T0));
        assert!(t.entry(newcomer, T0, || TokenBucket::full(T0, 1)).is_none());
        assert_eq!(t.untracked(), 1);
        // A second later every bucket has a token again: the newcomer evicts the least recent.
        let t1 = T0 + Duration::from_secs(1);
        assert!(!t.is_blocked(&newcomer, t1));
        assert!(t.entry(newcomer, t1, || TokenBucket::full(t1, 1)).unwrap().take(t1, 1, 1));
    }

    #[test]
    fn a_limit_holds_for_its_whole_window_from_when_it_is_hit() {
        let mut f = Failures::new(T0);
        f.record(T0, 3, WINDOW);
        f.record(T0 + Duration::from_secs(59), 3, WINDOW);
        assert!(!f.is_blocked(T0 + Duration::from_secs(59)));
        // The third failure, 70 s after the first, starts a new window: count 1.
        f.record(T0 + Duration::from_secs(70), 3, WINDOW);
        assert_eq!(f.count(T0 + Duration::from_secs(70), WINDOW), 1);
        let hit = T0 + Duration::from_secs(80);
        f.record(hit, 3, WINDOW);
        f.record(hit, 3, WINDOW);
        assert!(f.is_blocked(hit));
        assert!(f.is_blocked(hit + (WINDOW - Duration::from_millis(1))));
        assert!(!f.is_blocked(hit + WINDOW));
    }

    #[test]
    fn token_bucket_refills_at_its_rate() {
        let mut b = TokenBucket::full(T0, 2);
        assert!(b.take(T0, 10, 2) && b.take(T0, 10, 2));
        assert!(!b.take(T0, 10, 2));
        assert!(b.is_blocked(T0 + Duration::from_millis(99)));
        assert!(!b.is_blocked(T0 + Duration::from_millis(100)));
        assert!(b.take(T0 + Duration::from_millis(100), 10, 2));
    }
}
