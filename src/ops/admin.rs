//! The operator channel (DESIGN.md §4, like HAProxy's runtime API): a Unix socket
//! (`gateway.admin_socket`, mode 0600, never on the network) served by one small thread.
//!
//! # Protocol
//!
//! One request per connection: the client writes one line of text (at most 256 bytes, ended by
//! `\n`), the gateway answers with one line of JSON and closes. Every answer has `"ok"`; a
//! refused request has `"ok": false` and `"error"`. `fleetgate ctl` speaks it, and so does
//! `socat - UNIX-CONNECT:PATH`.
//!
//! | request | answer |
//! |---|---|
//! | `status` | `draining`, `deadline_in_s` (seconds left until the drain's deadline, negative once passed; null when not draining), `shards`, `sessions` (by state, and `total`), `per_shard` |
//! | `sessions [--from N] [--limit K]` | `total`, `from`, `next` (null on the last page), `sessions`: at most K rows (default 100, at most 1,000) of the connections list |
//! | `show KEY` | `session`: the row of the deviceUid or username KEY |
//! | `disconnect KEY` | `disconnected`: whether a shard had that session (LoggedOut("disconnected by operator") and released) |
//! | `drain [--deadline S]` | `draining: true`, `deadline_s` (default 60): new sessions are refused now, the remaining ones are logged out from S seconds on, paced per shard (`gateway.drain_logouts_per_s`) |
//! | `undrain` | `draining: false` |
//!
//! `sessions`, `show` and `status` read the housekeeping view (the shards' latest snapshots, at
//! most `gateway.snapshot_interval_ms` old), so they cost the shards nothing. `disconnect`,
//! `drain` and `undrain` reach every shard over its command queue
//! ([`crate::runtime::control`]); a shard takes a few commands per loop pass.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::housekeeping::View;
use crate::counters::Counter;
use crate::runtime::control::{Answer, Command, Control, KEY_BYTES};

/// Longest request line.
const MAX_LINE: usize = 256;
/// Rows per `sessions` answer by default, and at most.
pub const PAGE_DEFAULT: usize = 100;
/// The most rows one `sessions` answer carries.
pub const PAGE_MAX: usize = 1000;
/// A drain's deadline when the request gives none (s).
pub const DEADLINE_DEFAULT_S: u64 = 60;
/// How long a client has to send its request, and the shards to answer a command.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Binds the operator socket at `path` with mode 0600. A socket already there that nobody
/// answers on (left by a gateway that died) is replaced; one that answers, or a file that is not
/// a socket, refuses the start. The socket is bound under a temporary name, restricted, then
/// renamed into place, so it is never reachable with looser permissions.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    let shown = path.display();
    match std::fs::symlink_metadata(path) {
        Ok(m) if !m.file_type().is_socket() => {
            return Err(format!("admin socket {shown}: exists and is not a socket"));
        }
        Ok(_) => {
            if UnixStream::connect(path).is_ok() {
                return Err(format!("admin socket {shown}: in use by another process"));
            }
            std::fs::remove_file(path)
                .map_err(|e| format!("admin socket {shown}: cannot remove the stale one: {e}"))?;
            tracing::info!(path = %shown, "removed a stale admin socket");
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("admin socket {shown}: {e}")),
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).map_err(|e| format!("admin socket {}: {e}", tmp.display()))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!("admin socket {shown}: {e}"));
    }
    listener.set_nonblocking(true).map_err(|e| format!("admin socket {shown}: {e}"))?;
    Ok(listener)
}

/// The operator thread's state.
pub struct Admin {
    control: Control,
    view: Arc<Mutex<View>>,
    /// When the current drain was asked for, and its deadline.
    drain: Option<(Instant, Duration)>,
}

impl Admin {
    /// Over the gateway's command queues and the housekeeping view.
    pub fn new(control: Control, view: Arc<Mutex<View>>) -> Self {
        Self { control, view, drain: None }
    }

    /// Answers one request line (the protocol in the module docs).
    pub fn request(&mut self, line: &str) -> Value {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["status"] => self.status(),
            ["sessions", rest @ ..] => match page(rest) {
                Ok((from, limit)) => self.sessions(from, limit),
                Err(e) => refused(&e),
            },
            ["show", key] => self.show(key),
            ["disconnect", key] => self.disconnect(key),
            ["drain"] => self.drain(DEADLINE_DEFAULT_S),
            ["drain", "--deadline", s] => match s.parse::<u64>() {
                Ok(s) => self.drain(s),
                Err(_) => refused("drain --deadline takes whole seconds"),
            },
            ["undrain"] => self.undrain(),
            _ => refused(
                "unknown request: status | sessions [--from N] [--limit K] | show KEY | \
                 disconnect KEY | drain [--deadline S] | undrain",
            ),
        }
    }

    fn rows(&self) -> Vec<Value> {
        let v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        // The same list `/sessions` serves.
        let all = super::metrics::sessions(&v);
        drop(v);
        serde_json::from_str(&all).unwrap_or_default()
    }

    fn status(&self) -> Value {
        let v = self.view.lock().unwrap_or_else(|e| e.into_inner());
        let states = [
            ("awaiting_config", Counter::StateAwaitingConfig),
            ("awaiting_logon", Counter::StateAwaitingLogon),
            ("active", Counter::StateActive),
            ("logging_out", Counter::StateLoggingOut),
            ("detached", Counter::StateDetached),
        ];
        let mut totals = serde_json::Map::new();
        let mut total = 0;
        let mut per_shard = Vec::new();
        for (i, s) in v.shards.iter().enumerate() {
            let Some(s) = s else { continue };
            let mut row = serde_json::Map::new();
            row.insert("shard".into(), json!(i));
            row.insert("draining".into(), json!(s.counters.get(Counter::Draining) > 0));
            for (name, c) in states {
                let n = s.counters.get(c);
                total += n;
                row.insert(name.into(), json!(n));
                let t = totals.entry(name).or_insert(json!(0));
                *t = json!(t.as_u64().unwrap_or(0) + n);
            }
            row.insert("drain_logouts".into(), json!(s.counters.get(Counter::DrainLogouts)));
            per_shard.push(Value::Object(row));
        }
        drop(v);
        totals.insert("total".into(), json!(total));
        let deadline_in_s = self
            .drain
            .map(|(at, d)| d.as_secs_f64() - at.elapsed().as_secs_f64())
            .map(|s| (s * 10.0).round() / 10.0);
        json!({
            "ok": true,
            "draining": self.control.is_draining(),
            "deadline_in_s": deadline_in_s,
            "shards": self.control.shards(),
            "sessions": totals,
            "per_shard": per_shard,
        })
    }

    fn sessions(&self, from: usize, limit: usize) -> Value {
        let rows = self.rows();
        let total = rows.len();
        let page: Vec<Value> = rows.into_iter().skip(from).take(limit).collect();
        let next = (from + page.len() < total).then_some(from + page.len());
        json!({ "ok": true, "total": total, "from": from, "next": next, "sessions": page })
    }

    fn show(&self, key: &str) -> Value {
        let found = self.rows().into_iter().find(|r| {
            r.get("device_uid").and_then(Value::as_str) == Some(key)
                || r.get("username").and_then(Value::as_str) == Some(key)
        });
        match found {
            Some(row) => json!({ "ok": true, "session": row }),
            None => refused(&format!("no session for {key}")),
        }
    }

    fn disconnect(&mut self, key: &str) -> Value {
        let bytes = key.as_bytes();
        if bytes.is_empty() || bytes.len() > KEY_BYTES {
            return refused("a deviceUid or username is 1 to 16 bytes");
        }
        let mut k = [0u8; KEY_BYTES];
        k[..bytes.len()].copy_from_slice(bytes);
        let answers =
            self.control.broadcast(Command::Disconnect { key: k, len: bytes.len() as u8 }, TIMEOUT);
        let found = answers.contains(&Some(Answer::Disconnected(true)));
        let missing = answers.iter().filter(|a| a.is_none()).count();
        if missing > 0 && !found {
            return refused(&format!("{missing} shard(s) did not answer"));
        }
        json!({ "ok": true, "disconnected": found })
    }

    fn drain(&mut self, deadline_s: u64) -> Value {
        let deadline = Duration::from_secs(deadline_s);
        // The acceptor first: from now on nothing new reaches the shards.
        self.control.set_draining(true);
        let answers = self.control.broadcast(Command::Drain { deadline }, TIMEOUT);
        self.drain = Some((Instant::now(), deadline));
        let missing = answers.iter().filter(|a| a.is_none()).count();
        tracing::warn!(deadline_s, "drain asked for by the operator");
        if missing > 0 {
            return refused(&format!("draining, but {missing} shard(s) did not answer"));
        }
        json!({ "ok": true, "draining": true, "deadline_s": deadline_s })
    }

    fn undrain(&mut self) -> Value {
        let answers = self.control.broadcast(Command::Undrain, TIMEOUT);
        self.control.set_draining(false);
        self.drain = None;
        tracing::warn!("undrain asked for by the operator");
        let missing = answers.iter().filter(|a| a.is_none()).count();
        if missing > 0 {
            return refused(&format!("undrained, but {missing} shard(s) did not answer"));
        }
        json!({ "ok": true, "draining": false })
    }
}

fn refused(why: &str) -> Value {
    json!({ "ok": false, "error": why })
}

/// `--from N --limit K` in any order.
fn page(args: &[&str]) -> Result<(usize, usize), String> {
    let (mut from, mut limit) = (0, PAGE_DEFAULT);
    let mut it = args.iter();
    while let Some(&flag) = it.next() {
        let value = it.next().and_then(|v| v.parse::<usize>().ok());
        match (flag, value) {
            ("--from", Some(v)) => from = v,
            ("--limit", Some(v)) => limit = v.clamp(1, PAGE_MAX),
            _ => return Err("sessions takes --from N and --limit K".into()),
        }
    }
    Ok((from, limit))
}

/// Serves the socket until `stop`, one client at a time; removes the socket at the end.
pub fn serve(listener: UnixListener, path: PathBuf, mut admin: Admin, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = answer(&mut admin, stream) {
                    tracing::debug!(error = %e, "admin request failed");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!(error = %e, "admin socket accept failed");
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn answer(admin: &mut Admin, stream: UnixStream) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(&stream, MAX_LINE as u64)).read_line(&mut line)?;
    let reply = if line.ends_with('\n') {
        admin.request(line.trim())
    } else {
        refused("one request line of at most 256 bytes, ended by a newline")
    };
    let mut out = &stream;
    out.write_all(reply.to_string().as_bytes())?;
    out.write_all(b"\n")?;
    out.flush()
}
