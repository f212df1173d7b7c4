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

/// The credentials check behind the failed-logon limiter (DESIGN.md §2 rule 11).
pub struct LogonCheck {
    auth: Box<dyn Authenticator>,
    limiter: FailureLimiter,
}

impl LogonCheck {
    /// Checks with `auth`; refuses an address after `max_failures` failures within `window`.
    pub fn new(auth: Box<dyn Authenticator>, max_failures: u32, window: Duration) -> Self {
        Self { auth, limiter: FailureLimiter::new(max_failures, window) }
    }

    /// Checks the rate limit and the credentials; records failures. A refusal says whether
    /// the password was checked: [`Refusal::RateLimited`] when the source was already limited
    /// (the password is not even looked at), [`Refusal::InvalidCredentials`] when it was checked
    /// and is wrong, including the failure that reaches the limit.
    pub fn check(
        &mut self,
        now: Timestamp,
        ip: IpAddr,
        username: &Username,
        password: &Password,
        c: &mut Counters,
    ) -> Result<(), Refusal> {
        if self.limiter.is_limited(now, ip) {
            c.incr(Counter::LogonsRateLimited);
            return Err(Refusal::RateLimited);
        }
        if self.auth.check(username.as_bytes(), password.as_bytes()) {
            return Ok(());
        }
        c.incr(Counter::LogonsFailed);
        self.limiter.record_failure(now, ip);
        Err(Refusal::InvalidCredentials)
    }
}

/// Failed logons per source address.
struct FailureLimiter {
    table: Box<[Failures]>,
    max: u32,
    window: Duration,
}

#[derive(Clone, Copy)]
struct Failures {
    ip: Option<IpAddr>,
    count: u32,
    since: Timestamp,
}

impl FailureLimiter {
    fn new(max: u32, window: Duration) -> Self {
        let empty = Failures { ip: None, count: 0, since: Timestamp::ZERO };
        Self { table: vec![empty; 256].into_boxed_slice(), max, window }
    }

    fn is_limited(&self, now: Timestamp, ip: IpAddr) -> bool {
        let f = &self.table[failure_slot(ip)];
        f.ip == Some(ip) && f.count >= self.max && now.saturating_since(f.since) <= self.window
    }

    fn record_failure(&mut self, now: Timestamp, ip: IpAddr) {
        let f = &mut self.table[failure_slot(ip)];
        if f.ip != Some(ip) || now.saturating_since(f.since) > self.window {
            *f = Failures { ip: Some(ip), count: 0, since: now };
        }
        f.count += 1;
    }
}

fn failure_slot(ip: IpAddr) -> usize {
    let h = match ip {
        IpAddr::V4(v4) => u32::from(v4) as u64,
        IpAddr::V6(v6) => {
            let o = v6.octets();
            u64::from_le_bytes([o[8], o[9], o[10], o[11], o[12], o[13], o[14], o[15]])
        }
    };
    (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize
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
