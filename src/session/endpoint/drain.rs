//! Operator commands on one shard's sessions (DESIGN.md §4): drain and disconnect.
//!
//! - **Drain** ([`Endpoint::set_draining`]): new registrations get RegistrationReject(DRAINING)
//!   (the acceptor already answers new ConnectionRequests with ConnectionReject(DRAINING)), new
//!   TCP logons get LoggedOut("draining"); existing sessions continue, resume included. At the
//!   drain's deadline the driver calls [`Endpoint::drain_logouts`] pass after pass with a budget
//!   that paces the logouts (the shard spreads them at `gateway.drain_logouts_per_s`, so that a
//!   drained gateway's fleet does not storm the others): each attached session gets
//!   LoggedOut("gateway draining") and is released; a detached one is released (nobody is there
//!   to tell). Undrain ([`Endpoint::set_draining`] with `false`) stops both.
//! - **Disconnect** ([`Endpoint::disconnect`]): one session, by deviceUid or username:
//!   LoggedOut("disconnected by operator") and release.
//!
//! Bounded: a `drain_logouts` call walks at most [`SLOTS_PER_LOGOUT`] × its budget + 64 slots, so
//! a pass never walks the whole slab at once.

use super::Endpoint;
use crate::counters::Counter;
use crate::protocol::{DeviceUid, Username};
use crate::session::error::{CloseReason, LocalClose};
use crate::time::Timestamp;

/// LoggedOut reason for a TCP logon refused while draining (DESIGN.md §4).
pub(crate) const TCP_REFUSAL: &[u8] = b"draining";
/// LoggedOut reason at the drain deadline (DESIGN.md §4).
pub(crate) const DEADLINE_REASON: &[u8] = b"gateway draining";
/// LoggedOut reason of `fleetgate ctl disconnect`.
pub(crate) const DISCONNECT_REASON: &[u8] = b"disconnected by operator";
/// Slots a drain pass may walk per session it may log out.
pub(crate) const SLOTS_PER_LOGOUT: usize = 4;

/// One shard's drain state.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Drain {
    /// Refusing new sessions.
    pub(super) on: bool,
    /// Next slot the deadline's logouts look at.
    cursor: u32,
}

impl Endpoint {
    /// Enters (`true`) or leaves (`false`) drain mode (see the module docs). Entering again
    /// restarts the deadline's walk from the first slot.
    pub fn set_draining(&mut self, on: bool) {
        self.drain = Drain { on, cursor: 0 };
    }

    /// True in operator drain mode.
    pub fn is_operator_draining(&self) -> bool {
        self.drain.on
    }

    /// The drain deadline has passed: logs out (or releases) at most `budget` sessions, walking
    /// at most `SLOTS_PER_LOGOUT × budget + 64` slots from where the last call stopped. Returns
    /// the sessions ended and whether the walk reached the end of the slab (every session that
    /// existed is then ending; new ones are refused). Not draining: nothing.
    pub fn drain_logouts(&mut self, now: Timestamp, budget: usize) -> (usize, bool) {
        if !self.drain.on {
            return (0, true);
        }
        let len = self.sessions.slots.len() as u32;
        let walk = budget.saturating_mul(SLOTS_PER_LOGOUT).saturating_add(64);
        let mut ended = 0;
        let mut walked = 0;
        while self.drain.cursor < len && ended < budget && walked < walk {
            let index = self.drain.cursor;
            self.drain.cursor += 1;
            walked += 1;
            if self.end_session(now, index, LocalClose::Drain, DEADLINE_REASON) {
                self.sessions.counters.incr(Counter::DrainLogouts);
                ended += 1;
            }
        }
        (ended, self.drain.cursor >= len)
    }

    /// Ends the session of this deviceUid (UDP) or, failing that, of this username (TCP):
    /// LoggedOut("disconnected by operator") if attached, then released. False if there is none
    /// (or it is already ending).
    pub fn disconnect(&mut self, now: Timestamp, key: &[u8]) -> bool {
        let by_uid = DeviceUid::new(key).and_then(|u| self.index.by_uid(&u));
        let by_user = || Username::new(key).and_then(|u| self.index.by_user(&u));
        let Some(index) = by_uid.or_else(by_user) else { return false };
        let ended = self.end_session(now, index, LocalClose::Operator, DISCONNECT_REASON);
        if ended {
            self.sessions.counters.incr(Counter::OperatorDisconnects);
        }
        ended
    }

    /// Ends the session in slot `index` (LoggedOut `why` if attached, released if detached);
    /// false if the slot is free or its session already ending.
    fn end_session(&mut self, now: Timestamp, index: u32, why: LocalClose, text: &[u8]) -> bool {
        if !self.sessions.slots[index as usize].in_use {
            return false;
        }
        if let (Some((_, p)), _) = self.sessions.pending_mut(index) {
            p.refuse(text);
        }
        let slot = &mut self.sessions.slots[index as usize];
        let state = slot.session.state();
        let reason = CloseReason::LocalClose(why);
        let ended = if state.is_attached() {
            slot.session.close(now, reason, text, &mut self.sessions.counters);
            true
        } else if state.is_detached() {
            slot.session.release(reason);
            true
        } else {
            false
        };
        self.settle(now, index);
        ended
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::super::*;
    use super::SLOTS_PER_LOGOUT;
    use crate::apps::Echo;
    use crate::protocol::Password;
    use crate::session::OpenLogon;
    use crate::session::handshake::{CookieKey, CookieKeys};

    const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

    fn endpoint(max_sessions: usize) -> Endpoint {
        let cfg = EndpointConfig { max_sessions, max_connections: 64, ..Default::default() };
        let keys = CookieKeys { current: CookieKey([1; 32]), previous: None };
        Endpoint::new(cfg, keys, [2; 32], Box::new(OpenLogon), Box::new(Echo))
    }

    fn encode(m: &Message<'_>) -> Vec<u8> {
        let mut f = [0u8; 256];
        let n = m.encode(&mut f).unwrap();
        crate::protocol::split_frame(&f[..n]).unwrap().0.to_vec()
    }

    fn logon(ep: &mut Endpoint, conn: u32, user: &[u8]) {
        let logon = Message {
            header: Header { seq: 1, ..Header::default() },
            body: Body::LogonRequest {
                username: Username::new(user).unwrap(),
                password: Password::new(b"pw").unwrap(),
                reset_seq_num: true,
            },
        };
        let peer = SocketAddr::from(([127, 0, 0, 1], 9));
        ep.handle_tcp_logon(NOW, ConnId(conn), peer, &encode(&logon));
    }

    /// Every (connection, message type, LoggedOut reason) queued for sending.
    fn sent(ep: &mut Endpoint) -> Vec<(u32, u16, String)> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Some(t) = ep.poll_transmit(NOW, &mut buf) {
            let Link::Tcp(ConnId(conn)) = t.dest else { continue };
            let mut rest = &buf[..t.len];
            while let Ok((f, padded)) = crate::protocol::split_frame(rest) {
                let m = Message::decode_frame(f).unwrap();
                let why = match m.body {
                    Body::LoggedOut { reason } => String::from_utf8_lossy(reason).into_owned(),
                    _ => String::new(),
                };
                out.push((conn, m.header.type_id, why));
                rest = &rest[padded..];
            }
        }
        out
    }

    const LOGON_RESPONSE: u16 = 2;
    const LOGGED_OUT: u16 = 5;

    #[test]
    fn draining_refuses_new_logons_and_keeps_existing_sessions_until_undrain() {
        let mut ep = endpoint(8);
        logon(&mut ep, 0, b"old");
        assert_eq!(sent(&mut ep), [(0, LOGON_RESPONSE, String::new())]);
        ep.set_draining(true);
        logon(&mut ep, 1, b"new");
        assert_eq!(sent(&mut ep), [(1, LOGGED_OUT, "draining".into())]);
        assert_eq!(ep.counters().get(Counter::HandshakesDraining), 1);
        // The existing session still works.
        let echo = Message {
            header: Header { seq: 2, ..Header::default() },
            body: Body::App { type_id: 150, body: b"x" },
        };
        ep.handle_tcp_frame(NOW, ConnId(0), &encode(&echo));
        assert_eq!(sent(&mut ep), [(0, 250, String::new())]);
        // It resumes too (a new connection, same user).
        ep.set_draining(false);
        logon(&mut ep, 2, b"new");
        assert_eq!(sent(&mut ep), [(2, LOGON_RESPONSE, String::new())]);
        assert_eq!(ep.session_count(), 2);
    }

    #[test]
    fn the_deadline_logs_out_at_most_the_budget_per_call_over_a_bounded_walk() {
        let n = 300;
        let mut ep = endpoint(n);
        for i in 0..5u32 {
            logon(&mut ep, i, format!("user{i}").as_bytes());
        }
        let _ = sent(&mut ep);
        // Not draining: nothing happens.
        assert_eq!(ep.drain_logouts(NOW, 100), (0, true));
        ep.set_draining(true);
        // One per call.
        for k in 1..=5 {
            let (ended, _) = ep.drain_logouts(NOW, 1);
            assert_eq!(ended, 1);
            let out = sent(&mut ep);
            assert_eq!(out.len(), 1);
            assert_eq!((out[0].1, out[0].2.as_str()), (LOGGED_OUT, "gateway draining"));
            assert_eq!(ep.counters().get(Counter::DrainLogouts), k);
        }
        // The rest of the slab is empty: each call walks at most 4 × 1 + 64 slots.
        let mut calls = 0;
        loop {
            calls += 1;
            let (ended, done) = ep.drain_logouts(NOW, 1);
            assert_eq!(ended, 0);
            if done {
                break;
            }
        }
        assert_eq!(calls, (n - 5).div_ceil(SLOTS_PER_LOGOUT + 64));
        assert!(ep.sessions().all(|s| !s.state.is_attached()));
    }

    #[test]
    fn detached_sessions_are_released_at_the_deadline() {
        let mut ep = endpoint(4);
        logon(&mut ep, 0, b"away");
        let _ = sent(&mut ep);
        ep.handle_tcp_closed(NOW, ConnId(0));
        assert_eq!(ep.sessions().next().unwrap().state, State::Detached);
        ep.set_draining(true);
        assert_eq!(ep.drain_logouts(NOW, 10), (1, true));
        assert_eq!(ep.session_count(), 0);
        assert!(sent(&mut ep).is_empty(), "nobody to tell");
    }

    #[test]
    fn disconnect_ends_one_session_by_username_and_reports_unknown_ones() {
        let mut ep = endpoint(4);
        logon(&mut ep, 0, b"alice");
        logon(&mut ep, 1, b"bob");
        let _ = sent(&mut ep);
        assert!(!ep.disconnect(NOW, b"carol"));
        assert!(ep.disconnect(NOW, b"alice"));
        assert_eq!(sent(&mut ep), [(0, LOGGED_OUT, "disconnected by operator".into())]);
        assert!(!ep.disconnect(NOW, b"alice"), "already gone");
        assert_eq!(ep.session_count(), 1);
        assert_eq!(ep.counters().get(Counter::OperatorDisconnects), 1);
    }
}
