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
            let slot = &mut self.sessions.slots[index as usize];
            // A pending attach's few messages (registration, GetDeviceConfig, its LoggedOut)
            // go to its own address, ahead of the session's output.
            if let Some((to, p)) = slot.pending.as_mut().filter(|(_, p)| p.wants_transmit()) {
                let (to, id) = (*to, slot.session.id());
                let c = &mut self.sessions.counters;
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::apps::Echo;
    use crate::counters::Counter;
    use crate::protocol::{Body, Header, Message};
    use crate::protocol::{Password, Username};
    use crate::session::OpenLogon;
    use crate::session::State;
    use crate::session::endpoint::EndpointConfig;
    use crate::session::handshake::{CookieKey, CookieKeys};

    const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

    /// One TCP session logged on (connection 0, journal of 8) and its LogonResponse taken.
    fn logged_on() -> Endpoint {
        let mut cfg = EndpointConfig { max_sessions: 4, max_connections: 4, ..Default::default() };
        cfg.session.journal.messages_per_session = 8;
        let keys = CookieKeys { current: CookieKey([1; 32]), previous: None };
        let mut ep = Endpoint::new(cfg, keys, [2; 32], Box::new(OpenLogon), Box::new(Echo));
        let logon = Message {
            header: Header { seq: 1, ..Header::default() },
            body: Body::LogonRequest {
                username: Username::new(b"flow").unwrap(),
                password: Password::new(b"pw").unwrap(),
                reset_seq_num: true,
            },
        };
        let mut f = [0u8; 128];
        let n = logon.encode(&mut f).unwrap();
        let frame = crate::protocol::split_frame(&f[..n]).unwrap().0;
        ep.handle_tcp_logon(NOW, ConnId(0), SocketAddr::from(([127, 0, 0, 1], 9)), frame);
        let mut buf = [0u8; 4096];
        let t = ep.poll_transmit(NOW, &mut buf).expect("LogonResponse");
        let f = crate::protocol::split_frame(&buf[..t.len]).unwrap().0;
        assert_eq!(Header::decode(f).unwrap().type_id, 2, "{:?}", Message::decode_frame(f));
        ep
    }

    /// Echo request `k` (seq k + 2) into the session.
    fn request(ep: &mut Endpoint, k: i64) {
        let m = Message {
            header: Header { seq: k + 2, ..Header::default() },
            body: Body::App { type_id: 150, body: &k.to_le_bytes() },
        };
        let mut f = [0u8; 128];
        let n = m.encode(&mut f).unwrap();
        ep.handle_tcp_frame(NOW, ConnId(0), crate::protocol::split_frame(&f[..n]).unwrap().0);
    }

    /// Message types in a TCP transmit.
    fn types(bytes: &[u8]) -> Vec<u16> {
        let mut rest = bytes;
        let mut out = Vec::new();
        while let Ok((f, padded)) = crate::protocol::split_frame(rest) {
            out.push(Header::decode(f).unwrap().type_id);
            rest = &rest[padded..];
        }
        out
    }

    #[test]
    fn tcp_output_waits_for_room_and_never_exceeds_it() {
        let mut ep = logged_on();
        for k in 0..3 {
            request(&mut ep, k);
        }
        let mut buf = [0u8; 4096];
        // No room: nothing goes out, the session is parked, its replies stay unsent.
        assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).is_none());
        // Parked until unblocked, even with room now.
        assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 4096).is_none());
        ep.unblock(NOW);
        // Room for two 40-byte replies at a time (and a whole journal slot).
        let room = 256;
        let mut got = Vec::new();
        loop {
            ep.unblock(NOW);
            let Some(t) = ep.poll_transmit_within(NOW, &mut buf, &mut |_| room) else { break };
            assert!(t.len <= room && !t.last, "{} bytes for {room} of room", t.len);
            got.extend(types(&buf[..t.len]));
        }
        assert_eq!(got, [250, 250, 250]);
        assert!(
            !std::iter::from_fn(|| ep.poll_event())
                .any(|e| matches!(e, EndpointEvent::SlowReader(_)))
        );
    }

    #[test]
    fn parked_session_whose_journal_fills_says_logged_out_last_and_detaches() {
        let mut ep = logged_on();
        let mut buf = [0u8; 4096];
        let mut k = 0;
        // The reader takes nothing: replies pile up in the journal (8) until it holds nothing
        // but unsent ones; the next request is not processed.
        while k < 20 {
            request(&mut ep, k);
            k += 1;
            if ep.sessions().next().is_some_and(|s| !s.state.is_attached()) {
                break;
            }
            ep.unblock(NOW);
            assert!(ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).is_none());
        }
        assert_eq!(k, 8, "the slow reader is found when the journal is full of unsent replies");
        let events: Vec<_> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(events.contains(&EndpointEvent::SlowReader(ConnId(0))), "{events:?}");
        assert_eq!(ep.counters().get(Counter::SendBackpressure), 0, "no reply was refused");
        // Its one last transmit, whatever the room: the LoggedOut, marked last.
        let t = ep.poll_transmit_within(NOW, &mut buf, &mut |_| 0).expect("LoggedOut");
        assert!(t.last);
        let m = Message::decode_frame(crate::protocol::split_frame(&buf[..t.len]).unwrap().0);
        let m = m.unwrap();
        assert_eq!(m.body, Body::LoggedOut { reason: b"send queue full" });
        assert_eq!(m.header.seq, 10, "after the LogonResponse and 8 replies");
        let events: Vec<_> = std::iter::from_fn(|| ep.poll_event()).collect();
        assert!(events.contains(&EndpointEvent::CloseConnection(ConnId(0))), "{events:?}");
        let s = ep.sessions().next().unwrap();
        assert_eq!(s.state, State::Detached, "kept for resume");
        assert_eq!(s.expected_in, 10, "requests 2..=9 processed, the ninth not");
    }
}
