//! Shared pieces of the fleetgate fuzz targets: a counting allocator, messages built from fuzzed
//! fields, and a checker for what a device is owed on one outbound stream.
//!
//! The targets live in `fuzz_targets/`; this library holds what more than one of them uses.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use arbitrary::Arbitrary;
use emit::input;
use fleetgate::protocol::{
    Body, DeviceUid, FLAG_RESEND, Header, Message, Password, Username, split_frame,
};

pub mod device;
pub mod emit;
pub mod endpoint;

// ---------------------------------------------------------------------------------------------
// Counting allocator
// ---------------------------------------------------------------------------------------------

/// Forwards to [`System`]; while [`Armed`] is alive on a thread, counts that thread's
/// allocations and the bytes they take (reallocations count as one allocation of the growth).
pub struct Counting;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static BYTES: Cell<u64> = const { Cell::new(0) };
}

fn count(bytes: usize) {
    // `try_with`: the allocator may run while thread-locals are being torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
            let _ = BYTES.try_with(|c| c.set(c.get() + bytes as u64));
        }
    });
}

// SAFETY: every method forwards to the system allocator with the caller's arguments unchanged;
// counting touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size.saturating_sub(layout.size()));
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Counts this thread's allocations from [`Armed::new`] until it is dropped.
pub struct Armed {
    allocs: u64,
    bytes: u64,
}

impl Armed {
    /// Starts counting on this thread.
    pub fn new() -> Self {
        let a = Self { allocs: ALLOCS.with(Cell::get), bytes: BYTES.with(Cell::get) };
        ARMED.with(|x| x.set(true));
        a
    }

    /// Stops counting; returns the allocations made and the bytes they took meanwhile.
    pub fn finish(self) -> (u64, u64) {
        ARMED.with(|x| x.set(false));
        (ALLOCS.with(Cell::get) - self.allocs, BYTES.with(Cell::get) - self.bytes)
    }
}

impl Default for Armed {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Messages from fuzzed fields
// ---------------------------------------------------------------------------------------------

/// Device uids, usernames and passwords are drawn from small sets, so that sessions collide.
pub const UIDS: [&[u8]; 4] = [b"DEV0", b"DEV1", b"DEV2", b"PDT9090-0001"];
/// See [`UIDS`].
pub const USERS: [&[u8]; 4] = [b"user0", b"user1", b"user2", b"user3"];
/// The password every [`USERS`] entry has at the fuzzed gateway.
pub const PASSWORD: &[u8] = b"pw";

/// The uid with this index (modulo the set).
pub fn uid(i: u8) -> DeviceUid {
    DeviceUid::new(UIDS[usize::from(i) % UIDS.len()]).unwrap_or_default()
}

/// The username with this index (modulo the set).
pub fn user(i: u8) -> Username {
    Username::new(USERS[usize::from(i) % USERS.len()]).unwrap_or_default()
}

input! {
    /// A sequence number relative to what the receiver expects next.
    #[derive(Arbitrary, Clone, Copy, Debug)]
    pub enum Seq {
        /// The next number in this batch (the receiver's expected number for the first frame).
        Next,
        /// `expected + delta`, clamped at 0.
        Delta(i8),
        /// Any value (negative ones make the frame fail to decode).
        Raw(i64),
    }
}

/// A message built from fields: its sequence number relative to what the receiver expects, the
/// resend flag, the acknowledgement (`A`, as the target draws it) and the body (`B`). Emitted
/// field by field in declaration order, as the derive reads them.
#[derive(Arbitrary, Clone, Debug)]
pub struct Frame<A, B> {
    pub seq: Seq,
    pub resend: bool,
    pub ack: A,
    pub body: B,
}

impl<A: emit::Emit, B: emit::Emit> emit::Emit for Frame<A, B> {
    fn emit(&self, out: &mut Vec<u8>) {
        emit::Emit::emit(&self.seq, out);
        emit::Emit::emit(&self.resend, out);
        emit::Emit::emit(&self.ack, out);
        emit::Emit::emit(&self.body, out);
    }
}

input! {
    /// Fields a fuzzer can choose for a string: one of a few printable values, or raw bytes (which
    /// may make the encoder refuse the message: then it is sent as raw bytes instead).
    #[derive(Arbitrary, Clone, Debug)]
    pub enum Text {
        /// Empty.
        Empty,
        /// `n` printable bytes.
        Printable(u8),
        /// Whatever the fuzzer wrote.
        Raw(Vec<u8>),
    }
}

impl Text {
    /// The bytes, written into `scratch`.
    pub fn bytes<'a>(&'a self, scratch: &'a mut [u8; 255]) -> &'a [u8] {
        match self {
            Self::Empty => &[],
            Self::Printable(n) => {
                let n = usize::from(*n);
                for (i, b) in scratch[..n].iter_mut().enumerate() {
                    *b = b'a' + (i % 26) as u8;
                }
                &scratch[..n]
            }
            Self::Raw(v) => v,
        }
    }
}

/// Encodes `msg`, padded, at the end of `out`; on refusal appends nothing and returns false.
pub fn push_message(out: &mut Vec<u8>, msg: &Message<'_>) -> bool {
    let start = out.len();
    out.resize(start + msg.encoded_len(), 0);
    match msg.encode(&mut out[start..]) {
        Ok(n) => {
            out.truncate(start + n);
            true
        }
        Err(_) => {
            out.truncate(start);
            false
        }
    }
}

/// A header for a fuzzed frame.
pub fn header(seq: i64, resend: bool, last_processed: i64) -> Header {
    Header {
        flags: if resend { FLAG_RESEND } else { 0 },
        seq: seq.max(0),
        last_processed: last_processed.max(0),
        send_time: 1_700_000_000_000_000_000,
        ..Header::default()
    }
}

/// A LogonRequest body.
pub fn logon(username: Username, password: &[u8], reset: bool) -> Body<'static> {
    Body::LogonRequest {
        username,
        password: Password::new(password).unwrap_or_default(),
        reset_seq_num: reset,
    }
}

/// Splits a buffer of back-to-back padded messages into frames; `None` if it is not exactly
/// that.
pub fn frames_of(mut bytes: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let (frame, padded) = split_frame(bytes).ok()?;
        out.push(frame);
        bytes = &bytes[padded..];
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// What a device is owed on one outbound stream
// ---------------------------------------------------------------------------------------------

/// Checks one sender's outbound stream (one transport attach: a TCP connection, or a UDP
/// session id and address between two RegistrationAccepts) message by message:
///
/// - sequenced messages sent for the first time (no resend flag) are numbered strictly one
///   more than the previous one; only a LoggedOut may jump ahead (what was numbered and not sent
///   before a goodbye is recovered by resend after a resume: DESIGN.md §2, rule 9 and the
///   decisions in `session/mod.rs`), and nothing sequenced follows a LoggedOut;
/// - a resend answers a ResendRequest the peer sent on this stream (same `from`), covers its
///   range without a hole (each number as the message or inside a GapFill), never beyond it,
///   and is complete when live traffic resumes, unless a LoggedOut ends the stream or the peer
///   asked for another range meanwhile. Never a silent gap (DESIGN.md §2 rule 7).
#[derive(Debug, Default)]
pub struct Stream {
    live_last: Option<i64>,
    ended: bool,
    run: Option<Run>,
    /// An unfinished resend that live traffic overtook: a violation unless a LoggedOut follows.
    owed: Option<String>,
    /// ResendRequests the peer sent on this stream, oldest first: (from, to).
    requests: Vec<(i64, i64)>,
}

#[derive(Clone, Debug)]
struct Run {
    next: i64,
    /// The `to` of each request with this run's `from` that the run may be answering (`None`
    /// for `to = 0`: everything sent when the request arrived). The checker does not model
    /// which requests the gateway refused, so the run must fit at least one of them.
    to: Vec<Option<i64>>,
}

impl Run {
    fn done(&self, live: i64) -> bool {
        self.to.iter().any(|to| match *to {
            Some(to) => self.next > to,
            None => self.next == live,
        })
    }
}

/// What kind of sequenced message the checker sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// GapFill with its `newSeqNum`.
    GapFill(i64),
    /// LoggedOut.
    LoggedOut,
    /// LogonResponse (re-sent with its original number when a LogonRequest is repeated).
    LogonResponse,
    /// An application message (type 100 and above): the only kind a resend repeats.
    App,
    /// Any other session message.
    Other,
}

impl Stream {
    /// The peer sent a ResendRequest on this stream.
    pub fn requested(&mut self, from: i64, to: i64) {
        if self.requests.len() == 64 {
            self.requests.remove(0);
        }
        self.requests.push((from, to));
    }

    /// True once a LoggedOut went out on this stream.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// The last number sent live, if any.
    pub fn live_last(&self) -> Option<i64> {
        self.live_last
    }

    /// One outbound sequenced message (handshake messages 50–57 are not sequenced).
    pub fn message(&mut self, seq: i64, resend: bool, kind: Kind) -> Result<(), String> {
        if self.ended {
            return Err(format!("message {seq} ({kind:?}) after LoggedOut"));
        }
        if seq < 1 {
            return Err(format!("sequenced message numbered {seq}"));
        }
        if matches!(kind, Kind::GapFill(_)) && !resend {
            return Err(format!("GapFill {seq} without the resend flag"));
        }
        if resend {
            return self.resent(seq, kind);
        }
        if let Some(run) = self.run.take() {
            let done = run.done(seq);
            if run.next > seq {
                return Err(format!("live {seq} after a resend that reached {}", run.next - 1));
            }
            if !done {
                self.owed = Some(format!(
                    "resend stopped at {} (to one of {:?}) and live traffic resumed at {seq}",
                    run.next - 1,
                    run.to
                ));
            }
        }
        match self.live_last {
            Some(last) if last.checked_add(1) == Some(seq) => {}
            Some(last) if kind == Kind::LoggedOut && seq > last => {}
            Some(last) => return Err(format!("live {seq} after live {last}")),
            None => {}
        }
        self.live_last = Some(seq);
        if kind == Kind::LoggedOut {
            self.ended = true;
            self.owed = None;
        }
        Ok(())
    }

    fn resent(&mut self, seq: i64, kind: Kind) -> Result<(), String> {
        if kind == Kind::LogonResponse {
            // A repeated LogonResponse keeps its original number: not part of a resend run.
            return match self.live_last {
                Some(last) if seq > last => Err(format!("re-sent LogonResponse {seq} > {last}")),
                _ => Ok(()),
            };
        }
        if kind == Kind::LoggedOut || kind == Kind::Other {
            return Err(format!(
                "{kind:?} {seq} with the resend flag (only GapFill stands for it)"
            ));
        }
        let end = match kind {
            Kind::GapFill(new) if new <= seq => {
                return Err(format!("GapFill {seq} to {new} covers nothing"));
            }
            Kind::GapFill(new) => new - 1,
            _ => seq,
        };
        // A message numbered where the run under way stands continues it, as long as one of
        // its requests reaches this far. Otherwise it starts a new run, which answers a request
        // with this `from` (a new request replaces one under way, so an unfinished earlier run
        // is moot): a request may begin exactly where the last one ended (1..=3, then 4..=4).
        let fits = |to: &Option<i64>| to.is_none_or(|to| end <= to);
        let mut run = match self.run.take() {
            Some(run) if run.next == seq && run.to.iter().any(fits) => run,
            _ => {
                let Some(k) = self.requests.iter().rposition(|&(from, _)| from == seq) else {
                    return Err(format!("resend starting at {seq} answers no ResendRequest"));
                };
                let to = self.requests[..=k]
                    .iter()
                    .filter(|&&(from, _)| from == seq)
                    .map(|&(_, to)| (to != 0).then_some(to))
                    .collect();
                self.requests.drain(..=k);
                self.owed = None;
                Run { next: seq, to }
            }
        };
        run.to.retain(fits);
        if run.to.is_empty() {
            return Err(format!("resend of {seq}..={end} beyond every request from {seq}"));
        }
        if let Some(last) = self.live_last
            && end > last
        {
            return Err(format!("resend of {seq}..={end} beyond the last sent {last}"));
        }
        run.next = end.saturating_add(1);
        self.run = Some(run);
        Ok(())
    }

    /// The transport went away: the device resumes and asks again, nothing is owed.
    pub fn close(&mut self) {
        self.owed = None;
        self.run = None;
        self.ended = true;
    }

    /// At the end of a run with everything flushed: an unfinished resend is a silent gap.
    pub fn finish(&self) -> Result<(), String> {
        match &self.owed {
            Some(why) => Err(why.clone()),
            None => Ok(()),
        }
    }
}
