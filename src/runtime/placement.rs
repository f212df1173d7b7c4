//! Where the non-shard threads run: `gateway.service_cpus` (the acceptor, housekeeping with the
//! trace and histogram writers, HTTP, the operator channel). Each such thread is spawned with
//! [`spawn_service`], which pins it to the list before it runs anything and logs where it runs;
//! an empty list leaves it unpinned. Shards pin themselves (`gateway.cpus`).

use rustix::thread::{CpuSet, sched_getaffinity, sched_setaffinity};

/// Checks that every core of `cpus` is one this process may run on, so that a wrong list fails
/// at start-up rather than in a thread.
pub fn check_service_cpus(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    let allowed = sched_getaffinity(None).map_err(|e| format!("sched_getaffinity: {e}"))?;
    let ok = |&c: &usize| c < CpuSet::MAX_CPU && allowed.is_set(c);
    if let Some(bad) = cpus.iter().find(|c| !ok(c)) {
        let here: Vec<usize> = (0..CpuSet::MAX_CPU).filter(|&c| allowed.is_set(c)).collect();
        return Err(format!(
            "gateway.service_cpus: core {bad} is not one this process may run on ({here:?})"
        ));
    }
    Ok(())
}

/// Pins the calling thread to `cpus` (nothing when empty).
pub fn pin_current(cpus: &[usize]) -> Result<(), String> {
    if cpus.is_empty() {
        return Ok(());
    }
    let mut set = CpuSet::new();
    for &c in cpus.iter().filter(|&&c| c < CpuSet::MAX_CPU) {
        set.set(c);
    }
    sched_setaffinity(None, &set).map_err(|e| format!("sched_setaffinity {cpus:?}: {e}"))
}

/// Spawns a named service thread pinned to `cpus` (unpinned when empty); it logs where it runs.
pub fn spawn_service<T, F>(
    name: &str,
    cpus: &[usize],
    f: F,
) -> std::io::Result<std::thread::JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let cpus = cpus.to_vec();
    let label = name.to_string();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        match pin_current(&cpus) {
            Ok(()) if cpus.is_empty() => {
                tracing::info!(thread = %label, "service thread unpinned (gateway.service_cpus = [])")
            }
            Ok(()) => tracing::info!(thread = %label, cpus = ?cpus, "service thread pinned"),
            Err(e) => tracing::warn!(thread = %label, error = %e, "service thread left unpinned"),
        }
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_core_outside_the_allowed_set_is_refused() {
        assert!(check_service_cpus(&[]).is_ok());
        let e = check_service_cpus(&[CpuSet::MAX_CPU + 1]).unwrap_err();
        assert!(e.contains("gateway.service_cpus"), "{e}");
    }
}
