//! Safe wrappers over the few system calls the rest of the crate makes outside the shard
//! backends, so that `unsafe` stays in `io/`: `poll(2)` for the acceptor's portable driver, an
//! epoll readiness set for the load generator, resource limits, and the termination signals.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// `poll(2)` over `fds` for at most `timeout_ms` (-1: without limit). Returns the number of
/// descriptors with events, or -1 on error (EINTR included: the caller polls again).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> i32 {
    // SAFETY: `fds` is a live, writable array of `fds.len()` pollfd structs.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) }
}

/// A level-triggered epoll set that reports readable descriptors by the token they were added
/// with.
#[derive(Debug)]
pub struct Poller {
    epfd: OwnedFd,
}

impl Poller {
    /// A new, empty set.
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: no pointer arguments; the result is checked.
        let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if ep < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `ep` is a fresh descriptor we own.
        Ok(Self { epfd: unsafe { OwnedFd::from_raw_fd(ep) } })
    }

    /// Watches `fd` for input, reporting it as `token`.
    pub fn add(&self, fd: RawFd, token: u64) -> std::io::Result<()> {
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: a live event struct; the kernel validates both descriptors.
        let r = unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) };
        if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Waits at most `timeout` (microsecond resolution, `epoll_pwait2`) and fills `events`.
    /// Returns how many of `events` are filled (0 on timeout or error).
    pub fn wait(&self, events: &mut Events, timeout: Duration) -> usize {
        let ts = libc::timespec {
            tv_sec: timeout.as_secs().min(i64::MAX as u64) as i64,
            tv_nsec: i64::from(timeout.subsec_nanos()),
        };
        // SAFETY: `events.0` is a live writable array of the length passed; `ts` is a live
        // timespec; the signal mask pointer may be null.
        let n = unsafe {
            libc::epoll_pwait2(
                self.epfd.as_raw_fd(),
                events.0.as_mut_ptr(),
                events.0.len() as i32,
                &ts,
                core::ptr::null(),
            )
        };
        events.1 = n.max(0) as usize;
        events.1
    }
}

/// The buffer [`Poller::wait`] fills, allocated once.
pub struct Events(Vec<libc::epoll_event>, usize);

impl Events {
    /// Room for `capacity` events per wait.
    pub fn with_capacity(capacity: usize) -> Self {
        Self(vec![libc::epoll_event { events: 0, u64: 0 }; capacity.max(1)], 0)
    }

    /// The tokens of the descriptors the last wait reported.
    pub fn tokens(&self) -> impl Iterator<Item = u64> + '_ {
        self.0[..self.1].iter().map(|e| e.u64)
    }
}

/// A resource limit [`soft_limit`] reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// `RLIMIT_NOFILE`: open descriptors.
    OpenFiles,
    /// `RLIMIT_MEMLOCK`: locked memory, bytes (io_uring rings on older kernels).
    LockedMemory,
}

/// The soft limit (0 if it cannot be read).
pub fn soft_limit(limit: Limit) -> u64 {
    let resource = match limit {
        Limit::OpenFiles => libc::RLIMIT_NOFILE,
        Limit::LockedMemory => libc::RLIMIT_MEMLOCK,
    };
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the live struct passed.
    unsafe { libc::getrlimit(resource, &mut rl) };
    rl.rlim_cur
}

/// Raises the soft open-files limit to the hard limit: every UDP device of the load generator
/// and every TCP session of the gateway holds a descriptor, and the default soft limit (often
/// 1024) is far below what a fleet needs.
pub fn raise_open_files_limit() {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the live struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_terminate(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
}

/// Catches SIGTERM and SIGINT: from now on they only make [`terminate_requested`] true.
pub fn catch_terminate() {
    // SAFETY: installs a handler that only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, on_terminate as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, on_terminate as *const () as libc::sighandler_t);
    }
}

/// True once SIGTERM or SIGINT arrived after [`catch_terminate`].
pub fn terminate_requested() -> bool {
    TERMINATE.load(Ordering::Relaxed)
}
