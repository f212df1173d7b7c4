//! `fleetgate ctl`: the operator's client of a gateway's operator channel
//! (`gateway.admin_socket`; protocol in `ops::admin`): sends one request line, prints the
//! answer as text (or as its JSON with `--json`). Exit status 1 when the gateway refused.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use serde_json::Value;

/// Sends `request` to the socket at `path` and returns the answer.
pub fn call(path: &Path, request: &str) -> Result<Value, String> {
    let shown = path.display();
    let mut s = UnixStream::connect(path)
        .map_err(|e| format!("cannot connect to {shown}: {e} (is gateway.admin_socket set?)"))?;
    // drain and disconnect wait up to 2 s for the shards.
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    s.write_all(format!("{request}\n").as_bytes()).map_err(|e| format!("{shown}: {e}"))?;
    let mut line = String::new();
    BufReader::new(&s).read_line(&mut line).map_err(|e| format!("{shown}: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("{shown}: bad answer {line:?}: {e}"))
}

/// Runs one request and prints its answer.
pub fn run(path: &Path, request: &str, json: bool) -> Result<ExitCode, String> {
    let v = call(path, request)?;
    if json {
        println!("{v}");
    } else {
        print!("{}", render(&v));
    }
    Ok(if v["ok"] == Value::Bool(true) { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The answer as text for a person.
pub fn render(v: &Value) -> String {
    if v["ok"] != Value::Bool(true) {
        return format!("error: {}\n", v["error"].as_str().unwrap_or("refused"));
    }
    let mut out = String::new();
    if let Some(rows) = v["sessions"].as_array() {
        out.push_str(&format!(
            "{:<16} {:<16} {:>5} {:<16} {:<24} {:>9} {:>9} {:>8}\n",
            "DEVICE_UID", "USERNAME", "SHARD", "STATE", "LINK", "IN", "OUT", "HEARD_MS"
        ));
        for r in rows {
            out.push_str(&row(r));
        }
        let shown = rows.len();
        let from = v["from"].as_u64().unwrap_or(0);
        out.push_str(&format!(
            "{shown} of {} sessions from {from}{}\n",
            v["total"],
            match v["next"].as_u64() {
                Some(n) => format!("; next page: sessions --from {n}"),
                None => String::new(),
            }
        ));
        return out;
    }
    if let Some(r) = v.get("session") {
        for (k, val) in r.as_object().into_iter().flatten() {
            out.push_str(&format!("{k:<18} {}\n", plain(val)));
        }
        return out;
    }
    if v.get("per_shard").is_some() {
        out.push_str(&format!("draining           {}\n", v["draining"]));
        if let Some(d) = v["deadline_in_s"].as_f64() {
            let when =
                if d >= 0.0 { format!("in {d:.1} s") } else { format!("passed {:.1} s ago", -d) };
            out.push_str(&format!("drain deadline     {when}\n"));
        }
        out.push_str(&format!("shards             {}\n", v["shards"]));
        let n = &v["sessions"];
        out.push_str(&format!(
            "sessions           {} (active {}, awaiting_config {}, awaiting_logon {}, logging_out {}, detached {})\n",
            n["total"], n["active"], n["awaiting_config"], n["awaiting_logon"], n["logging_out"], n["detached"]
        ));
        for s in v["per_shard"].as_array().into_iter().flatten() {
            out.push_str(&format!(
                "{:<18} {}active {}, detached {}, logging_out {}, drain_logouts {}\n",
                format!("shard {}", s["shard"]),
                if s["draining"] == Value::Bool(true) { "draining, " } else { "" },
                s["active"],
                s["detached"],
                s["logging_out"],
                s["drain_logouts"]
            ));
        }
        return out;
    }
    for (k, val) in v.as_object().into_iter().flatten().filter(|(k, _)| *k != "ok") {
        out.push_str(&format!("{k:<18} {}\n", plain(val)));
    }
    if out.is_empty() {
        out.push_str("ok\n");
    }
    out
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn row(r: &Value) -> String {
    format!(
        "{:<16} {:<16} {:>5} {:<16} {:<24} {:>9} {:>9} {:>8}\n",
        plain(&r["device_uid"]),
        plain(&r["username"]),
        plain(&r["shard"]),
        plain(&r["state"]),
        plain(&r["link"]),
        plain(&r["expected_in"]),
        plain(&r["next_out"]),
        plain(&r["last_heard_ms_ago"]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_render_for_a_person() {
        let refused = serde_json::json!({"ok": false, "error": "no session for X"});
        assert_eq!(render(&refused), "error: no session for X\n");
        let page = serde_json::json!({"ok": true, "total": 3, "from": 0, "next": 2, "sessions": [
            {"device_uid": "DEV-1", "username": "dev1", "shard": 0, "state": "active",
             "link": "udp:127.0.0.1:4000", "expected_in": 5, "next_out": 7,
             "last_heard_ms_ago": 12},
            {"device_uid": "", "username": "tcp1", "shard": 1, "state": "detached",
             "link": null, "expected_in": 2, "next_out": 2, "last_heard_ms_ago": 900},
        ]});
        let text = render(&page);
        assert!(text.starts_with("DEVICE_UID"), "{text}");
        assert!(text.contains("DEV-1") && text.contains("udp:127.0.0.1:4000"), "{text}");
        assert!(text.ends_with("2 of 3 sessions from 0; next page: sessions --from 2\n"), "{text}");
        let status = serde_json::json!({"ok": true, "draining": true, "deadline_in_s": -1.5,
            "shards": 1, "sessions": {"total": 3, "active": 2, "awaiting_config": 0,
            "awaiting_logon": 0, "logging_out": 1, "detached": 0},
            "per_shard": [{"shard": 0, "draining": true, "active": 2, "detached": 0,
            "logging_out": 1, "drain_logouts": 7}]});
        assert_eq!(
            render(&status),
            "draining           true\ndrain deadline     passed 1.5 s ago\nshards             1\n\
             sessions           3 (active 2, awaiting_config 0, awaiting_logon 0, logging_out 1, detached 0)\n\
             shard 0            draining, active 2, detached 0, logging_out 1, drain_logouts 7\n"
        );
        let drained = serde_json::json!({"ok": true, "draining": true, "deadline_s": 30});
        // Keys in name order.
        assert_eq!(render(&drained), "deadline_s         30\ndraining           true\n");
    }
}
