//! The session slab (STYLE.md rule 12, quinn's `Slab<ConnectionMeta>`): every session of the
//! shard, allocated at start-up, addressed by index and checked by generation through
//! [`SessionHandle`]; the free list; the queue of sessions with output; the shard's counters
//! (kept here because an [`super::Outbox`] sends through the slab and counts).

use std::collections::VecDeque;
use std::net::SocketAddr;

use super::Link;
use crate::counters::{Counter, Counters};
use crate::ids::SessionHandle;
use crate::session::SessionConfig;
use crate::session::gateway::GatewaySession;
use crate::session::pending::PendingAttach;
use crate::session::state::State;
use crate::time::Timestamp;

/// One place of the slab: a session and what the endpoint keeps about it.
pub(super) struct Slot {
    pub(super) session: GatewaySession,
    /// Bumped on every release: a handle from before no longer matches.
    pub(super) generation: u32,
    pub(super) in_use: bool,
    /// Where its output goes.
    pub(super) link: Link,
    /// In the dirty queue.
    pub(super) dirty: bool,
    /// Buffers produced in a row (pacing, `EndpointConfig::session_burst`).
    pub(super) burst: u32,
    /// The state gauge it is counted under (`Gauge::NONE` when not in use).
    pub(super) gauge: u8,
    /// Its neighbours in the list of its application's sessions (`NIL` at the ends).
    pub(super) app_next: u32,
    pub(super) app_prev: u32,
    /// Parked by `poll_transmit_within`: its TCP send queue had no room (see `flow.rs`).
    pub(super) blocked: bool,
    /// A slow reader: its next transmit is its LoggedOut, sent with `Transmit::last`.
    pub(super) stalled: bool,
    /// A newer UDP attach waiting to log on (DESIGN.md §2 rule 9): its place in the pending
    /// pool, `NIL` if none. A rare state, so it lives in a side table, not in every record.
    pending: u32,
    /// Its device config string, in the endpoint's arena (`configs.rs`).
    pub(super) config: super::ConfigRef,
}

/// A pending attach and the address it came from.
pub(super) type Pending = (SocketAddr, PendingAttach);

/// The slab, its free list, the dirty queue and the counters.
pub(super) struct Sessions {
    pub(super) slots: Vec<Slot>,
    free: Vec<u32>,
    /// Sessions that may have output, in the order they got it.
    pub(super) dirty: VecDeque<u32>,
    pub(super) counters: Counters,
    /// Sessions in use by state (`gauge_of`), kept as they change: the `/metrics` gauges and
    /// the drain check without a walk over the slab.
    pub(super) gauges: [u32; GAUGES],
    /// The pending attaches (`Slot::pending`), at most `max_pending` at once; places are
    /// pushed as first needed, within the capacity reserved at start-up.
    pendings: Vec<Pending>,
    pending_free: Vec<u32>,
    /// First session of each application's list (`NIL` if none): a broadcast walks only its
    /// application's sessions.
    app_heads: Vec<u32>,
}

impl Sessions {
    /// `n` closed sessions with their journals, allocated now.
    pub(super) fn new(n: usize, max_pending: usize, cfg: SessionConfig) -> Self {
        let cfg = std::sync::Arc::new(cfg);
        let slots = (0..n)
            .map(|_| Slot {
                session: GatewaySession::new(cfg.clone()),
                generation: 0,
                in_use: false,
                link: Link::None,
                dirty: false,
                burst: 0,
                gauge: GAUGE_NONE,
                app_next: NIL,
                app_prev: NIL,
                pending: NIL,
                config: super::ConfigRef::NONE,
                blocked: false,
                stalled: false,
            })
            .collect();
        Self {
            slots,
            free: (0..n as u32).rev().collect(),
            dirty: VecDeque::with_capacity(n),
            counters: Counters::default(),
            gauges: [0; GAUGES],
            pendings: Vec::with_capacity(max_pending),
            pending_free: Vec::with_capacity(max_pending),
            app_heads: vec![NIL; 256],
        }
    }

    /// Bytes one slot takes besides its journal.
    pub(super) const SLOT_BYTES: usize = core::mem::size_of::<Slot>();

    /// Sessions in use.
    pub(super) fn in_use(&self) -> usize {
        self.slots.len() - self.free.len()
    }

    /// Takes a free slot and opens a fresh session with this id in it.
    pub(super) fn allocate(&mut self, id: u64, wall_offset_ns: i64) -> Option<u32> {
        let index = self.free.pop()?;
        let slot = &mut self.slots[index as usize];
        debug_assert!(!slot.in_use);
        slot.in_use = true;
        slot.link = Link::None;
        slot.burst = 0;
        debug_assert_eq!(slot.pending, NIL);
        slot.session.open(id, wall_offset_ns);
        self.link_app(index);
        self.recount(index);
        Some(index)
    }

    /// Returns a slot whose session has closed to the free list; the handle it had.
    pub(super) fn release(&mut self, index: u32) -> SessionHandle {
        if self.take_pending(index).is_some() {
            // Its session ended first: the attach has nothing to take over.
            self.counters.incr(Counter::AttachesPendingDropped);
        }
        let slot = &mut self.slots[index as usize];
        debug_assert!(slot.in_use && slot.session.state().is_closed());
        let handle = SessionHandle::new(index, slot.generation);
        slot.link = Link::None;
        slot.in_use = false;
        slot.generation = slot.generation.wrapping_add(1);
        self.unlink_app(index);
        self.recount(index);
        self.free.push(index);
        handle
    }

    /// Counts slot `index` under the gauge of its current state (none once released).
    pub(super) fn recount(&mut self, index: u32) {
        let slot = &mut self.slots[index as usize];
        let g = if slot.in_use { gauge_of(slot.session.state()) } else { GAUGE_NONE };
        if g != slot.gauge {
            if let Some(n) = self.gauges.get_mut(usize::from(slot.gauge)) {
                *n -= 1;
            }
            if let Some(n) = self.gauges.get_mut(usize::from(g)) {
                *n += 1;
            }
            slot.gauge = g;
        }
    }

    /// The first session of application `app`'s list.
    pub(super) fn app_head(&self, app: u8) -> u32 {
        self.app_heads[usize::from(app)]
    }

    /// Moves slot `index` to application `app`'s list.
    pub(super) fn set_app(&mut self, index: u32, app: u8) {
        self.unlink_app(index);
        self.slots[index as usize].session.set_app(app);
        self.link_app(index);
    }

    /// Enters slot `index` at the head of its application's list.
    fn link_app(&mut self, index: u32) {
        let app = usize::from(self.slots[index as usize].session.app());
        let head = core::mem::replace(&mut self.app_heads[app], index);
        if head != NIL {
            self.slots[head as usize].app_prev = index;
        }
        let slot = &mut self.slots[index as usize];
        slot.app_next = head;
        slot.app_prev = NIL;
    }

    /// Takes slot `index` out of its application's list.
    fn unlink_app(&mut self, index: u32) {
        let (next, prev) = {
            let s = &self.slots[index as usize];
            (s.app_next, s.app_prev)
        };
        if prev == NIL {
            let app = usize::from(self.slots[index as usize].session.app());
            if self.app_heads[app] == index {
                self.app_heads[app] = next;
            }
        } else {
            self.slots[prev as usize].app_next = next;
        }
        if next != NIL {
            self.slots[next as usize].app_prev = prev;
        }
        let slot = &mut self.slots[index as usize];
        slot.app_next = NIL;
        slot.app_prev = NIL;
    }

    /// The current handle of slot `index`.
    pub(super) fn handle(&self, index: u32) -> SessionHandle {
        SessionHandle::new(index, self.slots[index as usize].generation)
    }

    /// The slot behind a handle, if it is still that session.
    pub(super) fn get(&self, h: SessionHandle) -> Option<&Slot> {
        let s = self.slots.get(h.index() as usize)?;
        (s.in_use && s.generation == h.generation()).then_some(s)
    }

    /// Queues slot `index` for `poll_transmit` if its session has output.
    pub(super) fn mark_dirty(&mut self, index: u32) {
        if !self.slots[index as usize].dirty && self.wants_transmit(index) {
            self.slots[index as usize].dirty = true;
            self.dirty.push_back(index);
        }
    }

    /// True if slot `index`'s session or its pending attach has something to send.
    pub(super) fn wants_transmit(&self, index: u32) -> bool {
        self.slots[index as usize].session.wants_transmit()
            || self.pending(index).is_some_and(|(_, p)| p.wants_transmit())
    }

    /// The earliest deadline of slot `index`'s session and its pending attach.
    pub(super) fn poll_timeout(&self, index: u32) -> Option<Timestamp> {
        let p = self.pending(index).and_then(|(_, p)| p.poll_timeout());
        match (self.slots[index as usize].session.poll_timeout(), p) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Slot `index`'s pending attach.
    pub(super) fn pending(&self, index: u32) -> Option<&Pending> {
        self.pendings.get(self.slots[index as usize].pending as usize)
    }

    /// Slot `index`'s pending attach, and the counters beside it.
    pub(super) fn pending_mut(&mut self, index: u32) -> (Option<&mut Pending>, &mut Counters) {
        let p = self.slots[index as usize].pending as usize;
        (self.pendings.get_mut(p), &mut self.counters)
    }

    /// Gives slot `index` (which has none) a pending attach; false when the pool is full.
    pub(super) fn set_pending(&mut self, index: u32, p: Pending) -> bool {
        debug_assert_eq!(self.slots[index as usize].pending, NIL);
        let place = match self.pending_free.pop() {
            Some(place) => {
                self.pendings[place as usize] = p;
                place
            }
            None if self.pendings.len() < self.pendings.capacity() => {
                self.pendings.push(p);
                (self.pendings.len() - 1) as u32
            }
            None => return false,
        };
        self.slots[index as usize].pending = place;
        true
    }

    /// Takes slot `index`'s pending attach out (its place returns to the pool).
    pub(super) fn take_pending(&mut self, index: u32) -> Option<Pending> {
        let place = core::mem::replace(&mut self.slots[index as usize].pending, NIL);
        let p = *self.pendings.get(place as usize)?;
        self.pending_free.push(place);
        Some(p)
    }
}

/// The state gauges: how many sessions in use are in each state.
pub(super) const GAUGES: usize = 5;
/// `Slot::gauge` of a slot not in use.
const GAUGE_NONE: u8 = u8::MAX;
/// End of an intrusive list.
pub(super) const NIL: u32 = u32::MAX;

/// The gauge a state is counted under: the order of [`super::StateCounts`]' fields.
fn gauge_of(s: State) -> u8 {
    match s {
        State::AwaitingConfig => 0,
        State::AwaitingLogon => 1,
        State::Active => 2,
        State::LoggingOut(..) => 3,
        State::Detached => 4,
        State::Closed(_) => GAUGE_NONE,
    }
}

#[cfg(test)]
mod tests {
    use core::mem::size_of;

    use super::*;

    /// The session record's size, printed and held to its budget: every reserved session pays
    /// it at start-up, whatever it does. What each part is for:
    /// - `GatewaySession`: the session itself: id, state, transport, deviceUid and username (16
    ///   bytes each), registration (nonce, correlation), sequence numbers both ways, the
    ///   control queue (16 places of 24 bytes for numbered session messages waiting to go out,
    ///   plus the one LoggedOut reason of 64 bytes), the journal's ring indices and its two
    ///   buffer pointers, the timer table (10 × 8 bytes), heartbeat settings, resend progress,
    ///   and a shared pointer to the shard's settings;
    /// - `Slot`: generation, in-use, dirty, blocked and stalled flags, pacing burst, the link
    ///   (a socket address: 32 bytes), the state gauge, the application list's two links, the
    ///   pending attach's place and the device config string's place.
    ///
    /// Not in it (side tables): pending attaches (424 bytes, `gateway.max_pending_attaches`
    /// of them), device config strings (an arena, `gateway.device_config_bytes` per session on
    /// average), the timer wheel entry (16 bytes), the index entries.
    #[test]
    fn session_record_stays_within_its_budget() {
        let slot = size_of::<Slot>();
        let session = size_of::<GatewaySession>();
        println!(
            "session record: Slot {slot} B (GatewaySession {session} B, control queue {} B, \
             journal handle {} B, timers {} B, settings pointer {} B); pending attach {} B in \
             its side table",
            size_of::<crate::session::control::ControlQueue>(),
            size_of::<crate::journal::Journal>(),
            size_of::<crate::session::TimerTable>(),
            size_of::<std::sync::Arc<SessionConfig>>(),
            size_of::<Pending>(),
        );
        assert!(slot <= 1_000, "the session record grew to {slot} B (budget 1,000 B)");
        assert!(size_of::<crate::session::TimerTable>() <= 80);
    }
}
