//! The credentials file: per-user salted hashes, checked in constant time (DESIGN.md §2 rule 11).
//!
//! One line per user, `#` starts a comment:
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

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use subtle::ConstantTimeEq;

use crate::session::Authenticator;

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
    /// Reads and parses a credentials file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

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

/// Formats a credentials line for `username` with a fresh random salt.
pub fn entry_line(username: &str, password: &[u8]) -> Result<String, String> {
    if username.is_empty()
        || username.len() > 16
        || !username.bytes().all(|b| crate::protocol::is_printable(b) && b != b':')
    {
        return Err("username must be 1..=16 printable characters without ':'".into());
    }
    let mut salt = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salt))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let h = hash(&salt, DEFAULT_ITERATIONS, password);
    Ok(format!("{username}:v1:{DEFAULT_ITERATIONS}:{}:{}", hex(&salt), hex(&h)))
}

/// Adds (or replaces) `username` in the file at `path`, creating it if needed.
pub fn add_user(path: &Path, username: &str, password: &[u8]) -> Result<(), String> {
    let line = entry_line(username, password)?;
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let prefix = format!("{username}:");
    let mut out: Vec<&str> = old.lines().filter(|l| !l.starts_with(&prefix)).collect();
    out.push(&line);
    let mut f =
        std::fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    writeln!(f, "{}", out.join("\n")).map_err(|e| e.to_string())
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
    fn add_then_check_in_a_real_file() {
        let dir = std::env::temp_dir().join(format!("fleetgate-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("credentials");
        let _ = std::fs::remove_file(&path);
        add_user(&path, "alice", b"s3cret").unwrap();
        add_user(&path, "bob", b"hunter2").unwrap();
        add_user(&path, "alice", b"changed").unwrap();
        let c = Credentials::load(&path).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.check(b"alice", b"changed"));
        assert!(!c.check(b"alice", b"s3cret"));
        assert!(c.check(b"bob", b"hunter2"));
        assert!(!c.check(b"bob", b"hunter3"));
        assert!(!c.check(b"carol", b"anything"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert!(Credentials::parse("alice:v1:10:00:11").is_err());
        assert!(Credentials::parse("alice:v2:10:aa:bb").is_err());
        assert!(Credentials::parse("# comment only\n\n").unwrap().is_empty());
        assert!(entry_line("a:b", b"x").is_err());
    }
}
