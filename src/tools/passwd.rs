//! The credentials file on disk: `fleetgate passwd` adds or replaces a user in it, and
//! `fleetgate serve` loads it (`auth.credentials`). The format, hashing and checking are
//! [`crate::session::auth`]'s, which does no I/O; this module reads and writes the file.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use crate::session::auth::{Credentials, entry_line};

/// `fleetgate passwd`: reads the password from stdin and adds (or replaces) `user` in `file`.
pub fn run(file: &Path, user: &str) -> Result<ExitCode, String> {
    let mut pw = String::new();
    std::io::stdin().read_line(&mut pw).map_err(|e| e.to_string())?;
    let pw = pw.trim_end_matches(['\n', '\r']);
    if pw.is_empty() || pw.len() > 32 {
        return Err("password must be 1..=32 characters (read from stdin)".into());
    }
    add_user(file, user, pw.as_bytes())?;
    tracing::info!(file = %file.display(), user, "credentials updated");
    Ok(ExitCode::SUCCESS)
}

/// Reads and parses a credentials file.
pub fn load(path: &Path) -> Result<Credentials, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Credentials::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Adds (or replaces) `username` in the file at `path` with a fresh random salt, creating the
/// file if needed.
pub fn add_user(path: &Path, username: &str, password: &[u8]) -> Result<(), String> {
    let mut salt = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut salt))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    let line = entry_line(username, password, &salt)?;
    let old = std::fs::read_to_string(path).unwrap_or_default();
    let prefix = format!("{username}:");
    let mut out: Vec<&str> = old.lines().filter(|l| !l.starts_with(&prefix)).collect();
    out.push(&line);
    let mut f =
        std::fs::File::create(path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    writeln!(f, "{}", out.join("\n")).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Authenticator;

    #[test]
    fn add_then_check_in_a_real_file() {
        let dir = std::env::temp_dir().join(format!("fleetgate-cred-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("credentials");
        let _ = std::fs::remove_file(&path);
        add_user(&path, "alice", b"s3cret").unwrap();
        add_user(&path, "bob", b"hunter2").unwrap();
        add_user(&path, "alice", b"changed").unwrap();
        let c = load(&path).unwrap();
        assert_eq!(c.len(), 2);
        assert!(c.check(b"alice", b"changed"));
        assert!(!c.check(b"alice", b"s3cret"));
        assert!(c.check(b"bob", b"hunter2"));
        assert!(!c.check(b"bob", b"hunter3"));
        assert!(!c.check(b"carol", b"anything"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
