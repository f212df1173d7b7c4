//! What a process costs, from `/proc` and `getrusage`: the generator reports its own memory and
//! CPU, and (given its pid) the gateway's.

use std::time::Duration;

/// Resident memory of a process (`/proc/<pid>/status`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `VmRSS` (bytes).
    pub rss_bytes: u64,
    /// `VmHWM`, the peak (bytes).
    pub hwm_bytes: u64,
}

/// The memory of `pid` (`None`: this process); `None` if it cannot be read (the process is gone).
pub fn memory(pid: Option<u32>) -> Option<Memory> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_string(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    Some(parse_status(&text))
}

/// `VmRSS` and `VmHWM` from the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Memory {
    let kib = |key: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    Memory { rss_bytes: kib("VmRSS:"), hwm_bytes: kib("VmHWM:") }
}

/// CPU time of `pid` so far. For this process, `getrusage` (microseconds, and it keeps the time
/// of threads that have exited: a test that runs the gateway in process sees other tests'
/// threads come and go). For another process, the sum of `/proc/<pid>/task/*/schedstat` (time
/// on a CPU, nanosecond exact, live threads only: the gateway's threads live as long as it
/// does), or `utime + stime` from `/proc/<pid>/stat` (10 ms ticks) where schedstat is missing.
/// `None` if the process is gone.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    if pid == std::process::id() {
        let r = own_cpu();
        return Some(r.user + r.system);
    }
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        let mut ns = 0u64;
        let mut any = false;
        for e in dir.flatten() {
            let Ok(s) = std::fs::read_to_string(e.path().join("schedstat")) else { continue };
            if let Some(v) = s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()) {
                ns += v;
                any = true;
            }
        }
        if any {
            return Some(Duration::from_nanos(ns));
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat_cpu(&stat)
}

/// `utime + stime` from the text of `/proc/<pid>/stat` (fields 14 and 15, in USER_HZ ticks,
/// which Linux fixes at 100 per second for user space).
pub fn parse_stat_cpu(stat: &str) -> Option<Duration> {
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Makes sure this process may open `needed` descriptors: raises the soft open-files limit
/// toward the hard one if need be. Errs with both figures when even the hard limit is too low.
pub fn ensure_open_files(needed: u64) -> Result<(), String> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let enough = |v: Option<u64>| v.is_none_or(|v| v >= needed);
    if enough(l.current) {
        return Ok(());
    }
    if !enough(l.maximum) {
        return Err(format!(
            "the generator needs about {needed} open files (sockets and TCP connections); the \
             hard limit is {} (fewer --sockets or --tcp-clients, or raise it)",
            l.maximum.unwrap_or(0)
        ));
    }
    l.current = Some(needed.max(l.current.unwrap_or(0)));
    setrlimit(Resource::Nofile, l).map_err(|e| format!("cannot raise the open files limit: {e}"))
}

/// This process's CPU time (user, system) and peak RSS, from `getrusage`.
pub fn own_cpu() -> crate::io::Rusage {
    crate::io::rusage_self()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_stat_parse() {
        let status = "Name:\tx\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads: 3\n";
        assert_eq!(parse_status(status), Memory { rss_bytes: 1024 * 1024, hwm_bytes: 2048 * 1024 });
        let stat = "42 (a b) S 1 42 42 0 -1 4194560 100 0 0 0 250 75 0 0 20 0 3 0 5 1000 20";
        assert_eq!(parse_stat_cpu(stat), Some(Duration::from_millis(3250)));
    }

    #[test]
    fn this_process_is_readable() {
        let m = memory(None).expect("/proc/self/status");
        assert!(m.rss_bytes > 0 && m.hwm_bytes >= m.rss_bytes);
        let cpu = cpu_time(std::process::id()).expect("own cpu");
        spin_on_cpu(Duration::from_millis(5));
        assert!(cpu_time(std::process::id()).unwrap() > cpu);
        assert!(own_cpu().user + own_cpu().system > Duration::ZERO);
    }

    /// Spins until the calling thread has run `d` on a CPU (its CPU-time clock), however long
    /// a loaded machine takes to give it that.
    fn spin_on_cpu(d: Duration) {
        let start = crate::io::thread_cpu_time();
        while crate::io::thread_cpu_time() < start + d {}
    }

    /// CPU spent by a thread that has since exited still counts: a sum over live threads would
    /// go down when one exits, and a difference of two samples would read zero.
    #[test]
    fn own_cpu_keeps_exited_threads() {
        let before = cpu_time(std::process::id()).unwrap();
        std::thread::spawn(|| spin_on_cpu(Duration::from_millis(30))).join().unwrap();
        let after = cpu_time(std::process::id()).unwrap();
        // 25 of the 30 ms: getrusage splits the same total into user and system in microseconds.
        assert!(after >= before + Duration::from_millis(25), "{before:?} -> {after:?}");
    }
}
