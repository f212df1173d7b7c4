//! Logon credentials (DESIGN.md §2 rule 11): the [`Authenticator`] trait the endpoint asks,
//! [`OpenLogon`], [`Credentials`] (per-user salted hashes checked in constant time), and
//! [`LogonCheck`]: the credentials check behind the failed-logon limiter, as the endpoint runs it
//! for every LogonRequest.
//!
//! This module is pure: it parses the credentials file's text and formats its lines; reading and
//! writing the file is the caller's (`tools::passwd`). One line per user, `#` starts a comment:
//!
//! ```text
//! username:v1:<iterations>:<salt, 64 hex digits>:<hash, 64 hex digits>
//! ```
//!
//! `hash` is BLAKE3 keyed with the salt over the password, then re-hashed `iterations` times
//! (default 1000). This is a fast hash by design: logons are checked on the shard threads, and a
//! storm of reconnecting devices must not stall them; give each device a high-entropy secret.
//! Unknown users cost the same work as known ones, so timing does not reveal which exist.
#![forbid(unsafe_code)]

use core::time::Duration;
use std::collections::HashMap;
use std::net::IpAddr;

use subtle::ConstantTimeEq;

use super::error::Refusal;
use super::limit::{Failures, LimitTable, Source};
use crate::counters::{Counter, Counters};
use crate::protocol::{Password, Username};
use crate::time::Timestamp;

/// Checks credentials. Implementations compare in constant time.
pub trait Authenticator {
    /// True if `password` is right for `username`.
    fn check(&self, username: &[u8], password: &[u8]) -> bool;
}

/// Accepts every logon (only behind the operator's explicit `--open-logon`).
#[derive(Clone, Copy, Debug, Default)]
pub struct OpenLogon;

impl Authenticator for OpenLogon {
    fn check(&self, _: &[u8], _: &[u8]) -> bool {
        true
    }
}

/// Limits of the failed-logon limiter (DESIGN.md §2 rule 11; `[auth]` in the config).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogonLimits {
    /// Failures from one source (IPv4 address, IPv6 /64) before it is refused
    /// (`auth.max_failures`, 5).
    pub per_source: u32,
    /// Failures from one IPv4 /24 before it is refused (`auth.max_network_failures`, 20).
    pub per_network: u32,
    /// Failures at one username before it is protected: then a source that has failed is
    /// refused for it without a check (`auth.max_username_failures`, 10).
    pub per_username: u32,
    /// The window every count and every block lasts (`auth.failure_window_s`, 60 s).
    pub window: Duration,
    /// Sources, networks and usernames each limiter table keeps (4096 per shard: a few
    /// hundred KiB). The fuzz target uses a small table: cheaper to build, more collisions.
    pub entries: usize,
}

impl Default for LogonLimits {
    fn default() -> Self {
        Self {
            per_source: 5,
            per_network: 20,
            per_username: 10,
            window: Duration::from_secs(60),
            entries: LIMITER_ENTRIES,
        }
    }
}

/// Sources, networks and usernames each limiter table keeps by default (per shard): a few
/// hundred KiB.
pub const LIMITER_ENTRIES: usize = 4096;

/// The credentials check behind the failed-logon limiter (DESIGN.md §2 rule 11), with one
/// [`LimitTable`] per level:
///
/// - a source (IPv4 address, IPv6 /64) with `per_source` failures in a window is refused for
///   the rest of that window without a check;
/// - so is every source of an IPv4 /24 with `per_network` failures (many addresses of one
///   network count together; IPv6: the /64 is the source);
/// - a username with `per_username` failures (guessed at from many networks) is protected for
///   the rest of the window: a source that has itself failed in the window is refused for it
///   without a check, so each guessing source gets one guess at it, not `per_source`; a source
///   that has not failed is checked as always, so the user still logs on from a clean address.
///
/// Every block holds for its whole window whatever else happens (see [`super::limit`]).
pub struct LogonCheck {
    auth: Box<dyn Authenticator>,
    limits: LogonLimits,
    sources: LimitTable<Source, Failures>,
    networks: LimitTable<Source, Failures>,
    users: LimitTable<Username, Failures>,
}

impl LogonCheck {
    /// Checks with `auth` under `limits`; `seed` keys the tables' hash (keep it secret).
    pub fn new(auth: Box<dyn Authenticator>, limits: LogonLimits, seed: [u8; 16]) -> Self {
        Self {
            auth,
            limits,
            sources: LimitTable::new(limits.entries, seed),
            networks: LimitTable::new(limits.entries, seed),
            users: LimitTable::new(limits.entries, seed),
        }
    }

    /// Checks the limits and the credentials; records failures. A refusal says whether the
    /// password was checked: [`Refusal::RateLimited`] when a limit held (the password is not
    /// even looked at), [`Refusal::InvalidCredentials`] when it was checked and is wrong,
    /// including the failure that reaches a limit.
    pub fn check(
        &mut self,
        now: Timestamp,
        ip: IpAddr,
        username: &Username,
        password: &Password,
        c: &mut Counters,
    ) -> Result<(), Refusal> {
        let l = self.limits;
        let source = Source::of(ip);
        let network = Source::network(ip);
        let limited = if self.sources.is_blocked(&source, now) {
            untracked(self.sources.get(&source).is_none(), c);
            true
        } else if let Some(n) = network.filter(|n| self.networks.is_blocked(n, now)) {
            untracked(self.networks.get(&n).is_none(), c);
            c.incr(Counter::LogonsNetworkLimited);
            true
        } else if self.sources.get(&source).is_some_and(|f| f.count(now, l.window) > 0)
            && self.users.is_blocked(username, now)
        {
            untracked(self.users.get(username).is_none(), c);
            c.incr(Counter::LogonsUsernameLimited);
            true
        } else {
            false
        };
        if limited {
            c.incr(Counter::LogonsRateLimited);
            return Err(Refusal::RateLimited);
        }
        if self.auth.check(username.as_bytes(), password.as_bytes()) {
            return Ok(());
        }
        c.incr(Counter::LogonsFailed);
        let fresh = || Failures::new(now);
        match self.sources.entry(source, now, fresh) {
            Some(f) => f.record(now, l.per_source, l.window),
            None => c.incr(Counter::LimiterUntracked),
        }
        if let Some(n) = network {
            match self.networks.entry(n, now, fresh) {
                Some(f) => f.record(now, l.per_network, l.window),
                None => c.incr(Counter::LimiterUntracked),
            }
        }
        match self.users.entry(*username, now, fresh) {
            Some(f) => f.record(now, l.per_username, l.window),
            None => c.incr(Counter::LimiterUntracked),
        }
        Err(Refusal::InvalidCredentials)
    }
}

/// Counts a refusal of a key its full table could not track.
fn untracked(untracked: bool, c: &mut Counters) {
    if untracked {
        c.incr(Counter::LimiterUntracked);
    }
}

/// Default hash iterations for new entries.
pub const DEFAULT_ITERATIONS: u32 = 1000;

#[derive(Clone, Debug)]
struct Entry {
    iterations: u32,
    salt: [u8; 32],
    hash: [u8; 32],
}

/// Parsed credentials.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    users: HashMap<Vec<u8>, Entry>,
}

impl Credentials {
    /// Parses the file format.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut users = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parts: Vec<&str> = line.split(':').collect();
            let [user, "v1", iters, salt, hash] = parts[..] else {
                return Err(format!("line {}: expected user:v1:iterations:salt:hash", n + 1));
            };
            let iterations =
                iters.parse().map_err(|_| format!("line {}: bad iteration count", n + 1))?;
            let salt = unhex32(salt).ok_or_else(|| format!("line {}: bad salt", n + 1))?;
            let hash = unhex32(hash).ok_or_else(|| format!("line {}: bad hash", n + 1))?;
            if user.is_empty() || user.len() > 16 {
                return Err(format!("line {}: username must be 1..=16 characters", n + 1));
            }
            users.insert(user.as_bytes().to_vec(), Entry { iterations, salt, hash });
        }
        Ok(Self { users })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// True if there are no users.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

impl Authenticator for Credentials {
    fn check(&self, username: &[u8], password: &[u8]) -> bool {
        const DUMMY: Entry =
            Entry { iterations: DEFAULT_ITERATIONS, salt: [0; 32], hash: [0xff; 32] };
        let (entry, known) = match self.users.get(username) {
            Some(e) => (e, true),
            None => (&DUMMY, false),
        };
        let h = hash(&entry.salt, entry.iterations, password);
        bool::from(h.ct_eq(&entry.hash)) & known
    }
}

fn hash(salt: &[u8; 32], iterations: u32, password: &[u8]) -> [u8; 32] {
    let mut h = *blake3::keyed_hash(salt, password).as_bytes();
    for _ in 0..iterations {
        h = *blake3::keyed_hash(salt, &h).as_bytes();
    }
    h
}

/// Formats a credentials line for `username` with `salt` (give each entry a fresh random one).
pub fn entry_line(username: &str, password: &[u8], salt: &[u8; 32]) -> Result<String, String> {
    if username.is_empty()
        || username.len() > 16
        || !username.bytes().all(|b| crate::protocol::is_printable(b) && b != b':')
    {
        return Err("username must be 1..=16 printable characters without ':'".into());
    }
    let h = hash(salt, DEFAULT_ITERATIONS, password);
    Ok(format!("{username}:v1:{DEFAULT_ITERATIONS}:{}:{}", hex(salt), hex(&h)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_are_errors() {
        assert!(Credentials::parse("alice:v1:10:00:11").is_err());
        assert!(Credentials::parse("alice:v2:10:aa:bb").is_err());
        assert!(Credentials::parse("# comment only\n\n").unwrap().is_empty());
        assert!(entry_line("a:b", b"x", &[0; 32]).is_err());
    }

    const T0: Timestamp = Timestamp::from_nanos(1_000_000_000);

    fn alice() -> LogonCheck {
        let text = entry_line("alice", b"right", &[1; 32]).unwrap();
        LogonCheck::new(
            Box::new(Credentials::parse(&text).unwrap()),
            LogonLimits::default(),
            [9; 16],
        )
    }

    fn try_logon(
        l: &mut LogonCheck,
        now: Timestamp,
        ip: IpAddr,
        user: &[u8],
        pw: &[u8],
        c: &mut Counters,
    ) -> Result<(), Refusal> {
        l.check(now, ip, &Username::new(user).unwrap(), &Password::new(pw).unwrap(), c)
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::from([a, b, c, d])
    }

    /// Issue 9, found 2: a refused address was checked against the password again once 256
    /// other addresses had failed once each.
    #[test]
    fn a_refused_address_stays_refused_whatever_other_addresses_do() {
        let (mut l, mut c) = (alice(), Counters::default());
        let attacker = v4(203, 0, 113, 9);
        for _ in 0..5 {
            assert_eq!(
                try_logon(&mut l, T0, attacker, b"alice", b"guess", &mut c),
                Err(Refusal::InvalidCredentials)
            );
        }
        assert_eq!(
            try_logon(&mut l, T0, attacker, b"alice", b"right", &mut c),
            Err(Refusal::RateLimited)
        );
        // 256 (and more) other addresses, each in its own network, fail once each.
        for i in 0..1024u32 {
            let ip = IpAddr::from((0x0a00_0000 + (i << 8) + 1).to_be_bytes());
            let _ = try_logon(&mut l, T0, ip, b"nobody", b"x", &mut c);
        }
        let later = T0 + Duration::from_secs(59);
        assert_eq!(
            try_logon(&mut l, later, attacker, b"alice", b"right", &mut c),
            Err(Refusal::RateLimited),
            "still refused, without a check"
        );
        assert_eq!(
            try_logon(&mut l, T0 + Duration::from_secs(61), attacker, b"alice", b"right", &mut c),
            Ok(())
        );
    }

    /// Issue 9, found 2: 200 guesses from 200 addresses of one /24 were all checked.
    #[test]
    fn a_network_is_refused_after_its_limit() {
        let (mut l, mut c) = (alice(), Counters::default());
        let mut checked = 0;
        for d in 1..=200u8 {
            match try_logon(&mut l, T0, v4(198, 51, 100, d), b"bob", b"guess", &mut c) {
                Err(Refusal::InvalidCredentials) => checked += 1,
                Err(Refusal::RateLimited) => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(checked, 20, "auth.max_network_failures guesses checked, no more");
        assert_eq!(c.get(Counter::LogonsNetworkLimited), 180);
        // Another /24 is not affected.
        assert_eq!(try_logon(&mut l, T0, v4(198, 51, 101, 1), b"alice", b"right", &mut c), Ok(()));
    }

    /// Issue 9, found 2: IPv6 addresses were keyed on their low 64 bits, the attacker's choice.
    #[test]
    fn ipv6_addresses_of_one_64_share_a_limit() {
        let (mut l, mut c) = (alice(), Counters::default());
        for i in 0..5u16 {
            let ip = IpAddr::from([0x2001, 0xdb8, 0, 7, i, 0xfeed, 0, 1]);
            assert_eq!(
                try_logon(&mut l, T0, ip, b"alice", b"guess", &mut c),
                Err(Refusal::InvalidCredentials)
            );
        }
        let fresh_iid = IpAddr::from([0x2001, 0xdb8, 0, 7, 0xaaaa, 0xbbbb, 0xcccc, 0xdddd]);
        assert_eq!(
            try_logon(&mut l, T0, fresh_iid, b"alice", b"right", &mut c),
            Err(Refusal::RateLimited)
        );
        let other_64 = IpAddr::from([0x2001, 0xdb8, 0, 8, 0, 0, 0, 1]);
        assert_eq!(try_logon(&mut l, T0, other_64, b"alice", b"right", &mut c), Ok(()));
    }

    /// DESIGN.md §2 rule 11: guesses at one username from many networks are slowed, without
    /// refusing that user from an address that has not failed.
    #[test]
    fn a_username_guessed_at_from_many_networks_is_slowed_yet_logs_on_from_a_clean_address() {
        let (mut l, mut c) = (alice(), Counters::default());
        let attackers: Vec<IpAddr> = (1..=50u8).map(|n| v4(100, 64, n, 1)).collect();
        // One guess from each of 50 networks: every one is checked (each source is new).
        for &ip in &attackers {
            assert_eq!(
                try_logon(&mut l, T0, ip, b"alice", b"guess", &mut c),
                Err(Refusal::InvalidCredentials)
            );
        }
        // Their second guesses are refused without a check: one guess per source, not five.
        for &ip in &attackers {
            assert_eq!(
                try_logon(&mut l, T0, ip, b"alice", b"right", &mut c),
                Err(Refusal::RateLimited)
            );
        }
        assert_eq!(c.get(Counter::LogonsUsernameLimited), 50);
        assert_eq!(c.get(Counter::LogonsFailed), 50);
        // The user, from an address that has not failed, is checked and logs on.
        assert_eq!(try_logon(&mut l, T0, v4(192, 0, 2, 10), b"alice", b"right", &mut c), Ok(()));
        // Other usernames are not protected by alice's count: the sources' own limits apply.
        assert_eq!(
            try_logon(&mut l, T0, attackers[0], b"carol", b"x", &mut c),
            Err(Refusal::InvalidCredentials)
        );
    }

    #[test]
    fn entry_lines_parse_and_check() {
        let text = [
            entry_line("alice", b"s3cret", &[1; 32]).unwrap(),
            entry_line("bob", b"hunter2", &[2; 32]).unwrap(),
        ]
        .join("\n");
        let c = Credentials::parse(&text).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.check(b"alice", b"s3cret"));
        assert!(!c.check(b"alice", b"hunter2"));
        assert!(c.check(b"bob", b"hunter2"));
        assert!(!c.check(b"carol", b"s3cret"));
        assert!(OpenLogon.check(b"carol", b"anything"));
    }
}
