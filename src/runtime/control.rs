//! Operator commands into a running gateway (DESIGN.md §4: drain, undrain, disconnect), over
//! bounded SPSC queues like everything else that crosses threads: one command queue and one
//! answer queue per shard, whose writing and reading ends ([`Control`]) belong to one operator
//! thread (`ops::admin`). A shard takes at most [`COMMANDS_PER_PASS`] commands per loop pass
//! and answers each one; the acceptor only reads one flag ([`Control::set_draining`]) to refuse
//! new ConnectionRequests and TCP logons. No lock is taken on any hot path.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Commands a shard takes per loop pass at most.
pub const COMMANDS_PER_PASS: usize = 4;
/// Capacity of each command and answer queue.
pub const QUEUE: usize = 16;
/// Longest key of a disconnect (a deviceUid is 16 bytes, a username 16).
pub const KEY_BYTES: usize = 16;

/// One command to a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Refuse new sessions; log the existing ones out from `deadline` after the shard takes
    /// the command, paced at `gateway.drain_logouts_per_s`.
    Drain {
        /// From when the command is taken.
        deadline: Duration,
    },
    /// Leave drain mode (stops the deadline's logouts too).
    Undrain,
    /// End the session of this deviceUid or username.
    Disconnect {
        /// The key's bytes (the first `len`).
        key: [u8; KEY_BYTES],
        /// Its length.
        len: u8,
    },
}

/// A shard's answer to one command, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Drain or undrain taken.
    Done,
    /// Disconnect: whether the shard had that session.
    Disconnected(bool),
}

/// The shard's ends.
pub struct ShardControl {
    /// Commands from the operator thread.
    pub commands: rtrb::Consumer<Command>,
    /// Answers to it.
    pub answers: rtrb::Producer<Answer>,
}

/// The operator thread's ends: one pair per shard, the shards' wake-up descriptors and the
/// acceptor's drain flag.
pub struct Control {
    shards: Vec<(rtrb::Producer<Command>, rtrb::Consumer<Answer>)>,
    wakes: Vec<OwnedFd>,
    draining: Arc<AtomicBool>,
}

/// The operator thread's ends of one shard's queues.
pub type OperatorEnds = (rtrb::Producer<Command>, rtrb::Consumer<Answer>);

/// One shard's two queues: the operator thread's ends and the shard's.
pub fn pair() -> (OperatorEnds, ShardControl) {
    let (ctx, crx) = rtrb::RingBuffer::new(QUEUE);
    let (atx, arx) = rtrb::RingBuffer::new(QUEUE);
    ((ctx, arx), ShardControl { commands: crx, answers: atx })
}

impl Control {
    /// The operator side over each shard's ends and wake-up descriptor, and the acceptor's flag.
    pub fn new(shards: Vec<OperatorEnds>, wakes: Vec<OwnedFd>, draining: Arc<AtomicBool>) -> Self {
        Self { shards, wakes, draining }
    }

    /// Shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }

    /// Sets the acceptor's drain flag: new ConnectionRequests get ConnectionReject(DRAINING),
    /// new TCP logons LoggedOut("draining").
    pub fn set_draining(&self, on: bool) {
        self.draining.store(on, Ordering::Relaxed);
    }

    /// True while the acceptor refuses new sessions.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Sends `cmd` to every shard and collects their answers, waiting at most `timeout` in all;
    /// `None` in place of a shard that did not answer in time (its queue full or the shard
    /// stuck). Answers left over from an earlier timeout are discarded first.
    pub fn broadcast(&mut self, cmd: Command, timeout: Duration) -> Vec<Option<Answer>> {
        let until = Instant::now() + timeout;
        let mut sent = vec![false; self.shards.len()];
        for (i, (tx, rx)) in self.shards.iter_mut().enumerate() {
            while rx.pop().is_ok() {}
            sent[i] = tx.push(cmd).is_ok();
            if sent[i] {
                crate::io::wake(self.wakes[i].as_fd());
            }
        }
        let mut out: Vec<Option<Answer>> = vec![None; self.shards.len()];
        loop {
            let mut waiting = false;
            for (i, (_, rx)) in self.shards.iter_mut().enumerate() {
                if sent[i] && out[i].is_none() {
                    match rx.pop() {
                        Ok(a) => out[i] = Some(a),
                        Err(_) => waiting = true,
                    }
                }
            }
            if !waiting || Instant::now() >= until {
                return out;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
