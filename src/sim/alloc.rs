//! The counting allocator of the no-allocation proofs (`tests/no_alloc*.rs`). Each test binary
//! declares it as its global allocator:
//!
//! ```text
//! #[global_allocator]
//! static GLOBAL: fleetgate::sim::alloc::CountingAlloc = fleetgate::sim::alloc::CountingAlloc;
//! ```
//!
//! It forwards every call to [`System`] and counts the calls made while armed, in one of two
//! ways: on the calling thread ([`arm_this_thread`], for a driver that runs everything on its
//! own thread), or on every thread whose OS name starts with a prefix ([`arm_threads_named`],
//! for the running gateway's shard threads). `alloc` and `alloc_zeroed` count as allocations,
//! `realloc` as a reallocation; frees are counted but are not growth.
//!
//! A `GlobalAlloc` is an `unsafe impl` by nature: this file is the one place outside `io/`
//! where `unsafe` is allowed (see `tests/architecture.rs`); it is test support, never built
//! into the binary.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Forwards to [`System`]; counts while armed (see the module docs).
#[derive(Clone, Copy, Debug, Default)]
pub struct CountingAlloc;

/// What was counted since the last [`take`] (or start).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// `alloc` and `alloc_zeroed` calls.
    pub allocs: u64,
    /// `realloc` calls.
    pub reallocs: u64,
    /// `dealloc` calls (reported, not growth).
    pub deallocs: u64,
}

impl Counts {
    /// Allocations and reallocations: what must be zero on a hot path.
    pub fn growth(&self) -> u64 {
        self.allocs + self.reallocs
    }
}

/// Counts (or stops counting) the calling thread's calls.
pub fn arm_this_thread(on: bool) {
    ARMED.with(|a| a.set(on));
}

/// Counts the calls of every thread whose OS name (at most 15 bytes, as Linux keeps it) starts
/// with `prefix`; an empty prefix stops it.
pub fn arm_threads_named(prefix: &str) {
    let p = prefix.as_bytes();
    let n = p.len().min(15);
    for (slot, &b) in PREFIX.iter().zip(&p[..n]) {
        slot.store(b as usize, Ordering::Relaxed);
    }
    PREFIX_LEN.store(n, Ordering::SeqCst);
    NAMED_ARMED.store(n > 0, Ordering::SeqCst);
}

/// The counts so far, reset to zero.
pub fn take() -> Counts {
    Counts {
        allocs: ALLOCS.swap(0, Ordering::SeqCst),
        reallocs: REALLOCS.swap(0, Ordering::SeqCst),
        deallocs: DEALLOCS.swap(0, Ordering::SeqCst),
    }
}

/// The counts so far.
pub fn counts() -> Counts {
    Counts {
        allocs: ALLOCS.load(Ordering::SeqCst),
        reallocs: REALLOCS.load(Ordering::SeqCst),
        deallocs: DEALLOCS.load(Ordering::SeqCst),
    }
}

/// Prints a backtrace for each of the next `n` counted allocations (they are still counted);
/// the tests set it from `NO_ALLOC_BACKTRACES`.
pub fn print_backtraces(n: u64) {
    BACKTRACES.store(n, Ordering::Relaxed);
}

/// `alloc` + `alloc_zeroed` calls while armed.
static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// `realloc` calls while armed.
static REALLOCS: AtomicU64 = AtomicU64::new(0);
/// `dealloc` calls while armed.
static DEALLOCS: AtomicU64 = AtomicU64::new(0);
/// Backtraces still to print for armed allocations.
static BACKTRACES: AtomicU64 = AtomicU64::new(0);
/// [`arm_threads_named`] is on, with this prefix.
static NAMED_ARMED: AtomicBool = AtomicBool::new(false);
static PREFIX_LEN: AtomicUsize = AtomicUsize::new(0);
static PREFIX: [AtomicUsize; 15] = [const { AtomicUsize::new(0) }; 15];

thread_local! {
    // `const` and no destructor: reading it never allocates, so the allocator may use it.
    static ARMED: Cell<bool> = const { Cell::new(false) };
}

fn armed() -> bool {
    ARMED.try_with(Cell::get).unwrap_or(false) || (NAMED_ARMED.load(Ordering::Relaxed) && named())
}

/// True if the calling thread's OS name starts with the armed prefix.
fn named() -> bool {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer passed; it does not allocate.
    if unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) } != 0 {
        return false;
    }
    let n = PREFIX_LEN.load(Ordering::Relaxed);
    PREFIX[..n].iter().zip(&name).all(|(p, &b)| p.load(Ordering::Relaxed) == b as usize)
}

/// Counts one call if armed; prints its backtrace while any are left to print.
fn record(counter: &AtomicU64, what: &str, size: usize) {
    if !armed() {
        return;
    }
    counter.fetch_add(1, Ordering::Relaxed);
    let print =
        BACKTRACES.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok();
    if print {
        // Disarmed while printing: the backtrace and the formatting allocate themselves.
        let was = ARMED.try_with(|a| a.replace(false)).unwrap_or(false);
        let bt = std::backtrace::Backtrace::force_capture();
        eprintln!("armed {what} of {size} bytes:\n{bt}");
        arm_this_thread(was);
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract holds exactly as it does for `System`; the counting touches only
// atomics, a const thread-local and `prctl(PR_GET_NAME)`, none of which allocates or unwinds.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        record(&ALLOCS, "alloc", layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract for `layout`.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        record(&ALLOCS, "alloc_zeroed", layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract for `layout`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        record(&REALLOCS, "realloc", new_size);
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`, as
        // the caller guarantees; `new_size` is valid by the same contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if armed() {
            DEALLOCS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: `ptr` was allocated by this allocator (hence by `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}
