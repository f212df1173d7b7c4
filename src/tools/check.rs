//! `fleetgate check`: host readiness (kernel, io_uring, memlock, open files, cores, sysctls).

use std::path::Path;
use std::process::ExitCode;

use rustix::process::{Resource, getrlimit};

/// `fleetgate check --io-uring`: probes io_uring only (every opcode the shards and the acceptor
/// use, and a trial ring); exit 0 when usable, 1 when not (CI uses it to decide whether the
/// io_uring tests must run).
pub fn io_uring_only() -> ExitCode {
    match crate::io::uring::probe() {
        Ok(()) => {
            println!("io_uring usable");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("io_uring unusable: {e}");
            ExitCode::from(1)
        }
    }
}

/// Prints one line per check, `[ok]` or `[warn]`; exits 1 when a blocker is found (too few
/// open files), 0 otherwise. `sysctl` is the file of wanted kernel settings.
pub fn run(sysctl: &Path) -> Result<ExitCode, String> {
    let mut blockers = 0;
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let major: u32 = release.split('.').next().and_then(|v| v.parse().ok()).unwrap_or(0);
    let minor: u32 = release.split('.').nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let ok_kernel = (major, minor) >= (5, 19);
    println!(
        "{} kernel {release} (io_uring multishot recvmsg needs 6.0+, buffer rings 5.19+)",
        mark(ok_kernel)
    );
    match crate::io::uring::probe() {
        Ok(()) => println!("{} io_uring usable", mark(true)),
        Err(e) => {
            println!("{} io_uring unusable ({e}); the epoll backend will be used", mark(false))
        }
    }
    let memlock = getrlimit(Resource::Memlock).current.unwrap_or(u64::MAX);
    println!("{} memlock limit {} KiB", mark(memlock >= 64 << 10), memlock >> 10);
    let nofile = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    let ok_nofile = nofile >= 4096;
    if !ok_nofile {
        blockers += 1;
    }
    println!("{} open files limit {} (TCP sessions need one each)", mark(ok_nofile), nofile);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("{} {cores} cores available (one shard per core)", mark(cores >= 1));
    match std::fs::read_to_string(sysctl) {
        Ok(text) => {
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#'))
            {
                let Some((k, v)) = line.split_once('=') else { continue };
                let (k, v) = (k.trim(), v.trim());
                let path = format!("/proc/sys/{}", k.replace('.', "/"));
                let have = std::fs::read_to_string(&path)
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                    .unwrap_or_default();
                let want: Vec<&str> = v.split_whitespace().collect();
                let have_n: Vec<&str> = have.split_whitespace().collect();
                let ok = have_n.len() == want.len()
                    && have_n.iter().zip(&want).all(|(h, w)| {
                        match (h.parse::<u64>(), w.parse::<u64>()) {
                            (Ok(h), Ok(w)) => h >= w,
                            _ => h == w,
                        }
                    });
                println!("{} {k} = {have} (want {v})", mark(ok));
            }
        }
        Err(e) => println!("{} cannot read {}: {e}", mark(false), sysctl.display()),
    }
    if blockers > 0 {
        println!("{blockers} blocker(s)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

fn mark(ok: bool) -> &'static str {
    if ok { "[ok]  " } else { "[warn]" }
}
