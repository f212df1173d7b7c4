//! Output: the stateless replies first, then sessions with output in turn, each at most
//! `session_burst` buffers before the next gets a go (so one large resend cannot starve the
//! rest). TCP flow control: a session's output never exceeds the room its connection's send
//! queue has; a session without room is parked (its output waits in its journal) until
//! [`Endpoint::unblock`]; a parked session whose journal holds nothing but unsent messages is a
//! slow reader, whose next and last transmit is LoggedOut("send queue full"), after which it is
//! kept detached for resume.

use super::{Endpoint, EndpointEvent, Link, MAX_SESSION_MESSAGE, Transmit};
use crate::ids::ConnId;
use crate::time::Timestamp;

impl Endpoint {
    /// Writes the next buffer to send into `buf` (at least `max_datagram` bytes for UDP), as
    /// [`Endpoint::poll_transmit_within`] with unlimited room on every connection.
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut [u8]) -> Option<Transmit> {
        self.poll_transmit_within(now, buf, &mut |_| usize::MAX)
    }

    /// Writes the next buffer to send into `buf`, never more bytes for a TCP connection than
    /// `room` says its send queue takes now. A session whose connection has no room for a whole
    /// message is parked (its output stays in its journal) until [`Endpoint::unblock`]; a parked
    /// session whose journal fills with unsent messages is a slow reader: its next and last
    /// transmit is LoggedOut("send queue full") ([`Transmit::last`]), then it is kept detached
    /// for resume.
    pub fn poll_transmit_within(
        &mut self,
        now: Timestamp,
        buf: &mut [u8],
        room: &mut dyn FnMut(ConnId) -> usize,
    ) -> Option<Transmit> {
        if let Some(r) = self.replies.pop_front() {
            let len = usize::from(r.len).min(buf.len());
            buf[..len].copy_from_slice(&r.buf[..len]);
            return Some(Transmit { dest: r.dest, len, last: false });
        }
        // Any one message fits in this much: a journal slot, or a session message.
        let need = self.cfg.session.journal.slot_bytes.max(MAX_SESSION_MESSAGE);
        while let Some(&index) = self.sessions.dirty.front() {
            // A pending attach's few messages (registration, GetDeviceConfig, its LoggedOut)
            // go to its own address, ahead of the session's output.
            let id = self.sessions.slots[index as usize].session.id();
            if let (Some((to, p)), c) = self.sessions.pending_mut(index)
                && p.wants_transmit()
            {
                let to = *to;
                if let Some(len) = p.poll_transmit(now, id, self.wall_offset_ns, buf, c) {
                    self.settle(now, index);
                    return Some(Transmit { dest: Link::Udp(to), len, last: false });
                }
            }
            let slot = &mut self.sessions.slots[index as usize];
            let dest = slot.link;
            let last = slot.stalled;
            let mut limit = buf.len();
            if let (Link::Tcp(conn), false) = (dest, last) {
                let r = room(conn);
                if r < need {
                    slot.dirty = false;
                    slot.burst = 0;
                    self.sessions.dirty.pop_front();
                    if !slot.blocked {
                        slot.blocked = true;
                        self.blocked.push(index);
                    }
                    self.check_stalled(now, index);
                    continue;
                }
                limit = limit.min(r);
            }
            let sent = if slot.in_use && dest != Link::None {
                slot.session.poll_transmit(now, &mut buf[..limit], &mut self.sessions.counters)
            } else {
                None
            };
            match sent {
                Some(len) => {
                    slot.burst += 1;
                    if last {
                        slot.stalled = false;
                    }
                    if slot.burst >= self.cfg.session_burst {
                        // Pacing: give the other sessions a turn.
                        slot.burst = 0;
                        self.sessions.dirty.pop_front();
                        self.sessions.dirty.push_back(index);
                    }
                    self.settle(now, index);
                    return Some(Transmit { dest, len, last });
                }
                None => {
                    slot.dirty = false;
                    slot.burst = 0;
                    self.sessions.dirty.pop_front();
                    if slot.in_use && dest == Link::None && slot.session.state().is_attached() {
                        // Output for a session with nowhere to go is dropped as sent.
                        continue;
                    }
                }
            }
        }
        None
    }

    /// Gives every session parked by [`Endpoint::poll_transmit_within`] another try; the driver
    /// calls it once per pass, before its transmits.
    pub fn unblock(&mut self, now: Timestamp) {
        let mut blocked = core::mem::take(&mut self.blocked);
        for &index in &blocked {
            // Output pushed to it meanwhile (a broadcast) may have filled its journal.
            self.check_stalled(now, index);
            let slot = &mut self.sessions.slots[index as usize];
            slot.blocked = false;
            self.sessions.mark_dirty(index);
        }
        blocked.clear();
        self.blocked = blocked;
    }

    /// A parked session that cannot journal more output is a slow reader (see
    /// [`Endpoint::poll_transmit_within`]).
    /// True if it started the goodbye (and settled the session).
    pub(super) fn check_stalled(&mut self, now: Timestamp, index: u32) -> bool {
        let slot = &self.sessions.slots[index as usize];
        match slot.link {
            Link::Tcp(conn) if slot.blocked && !slot.stalled && slot.session.output_full() => {
                self.stall(now, index, conn)
            }
            _ => false,
        }
    }

    /// Starts the slow-reader goodbye; false if the session is already ending.
    fn stall(&mut self, now: Timestamp, index: u32, conn: ConnId) -> bool {
        let slot = &mut self.sessions.slots[index as usize];
        if !slot.session.stalled(now, &mut self.sessions.counters) {
            return false;
        }
        slot.stalled = true;
        self.events.push_back(EndpointEvent::SlowReader(conn));
        self.settle(now, index);
        true
    }

    /// The driver could not queue a transmit on this connection (its bounded send queue is full;
    /// with [`Endpoint::poll_transmit_within`] this does not happen for session output). The
    /// session is a slow reader: its next and last transmit is LoggedOut("send queue full")
    /// ([`Transmit::last`]); then it is detached for resume and a
    /// [`EndpointEvent::CloseConnection`] follows. Returns false when there is no such goodbye
    /// (no session on the connection, or it is already ending): the driver closes at once.
    pub fn handle_tcp_stalled(&mut self, now: Timestamp, conn: ConnId) -> bool {
        let Some(index) = self.conns.get(conn.0 as usize).copied().flatten() else {
            return false;
        };
        let slot = &self.sessions.slots[index as usize];
        if slot.link != Link::Tcp(conn) || slot.stalled {
            return false;
        }
        self.stall(now, index, conn)
    }
}
