//! The device's server list (DESIGN.md §4, "Beyond one host"): which gateway of a list a device
//! talks to, and when it moves to the next one.
//!
//! Like StayLinked's `servers.ini` and Starbase's A/B pairs, a device carries a list of gateways
//! (each entry one host: its UDP handshake address and its TCP address). The list itself (the
//! addresses) belongs to the driver; this cursor keeps only positions, so it is sans-IO, reads
//! no clock and is 8 bytes per device:
//!
//! - **Start**: entry `fnv1a64(key) % n`, where `key` is the deviceUid's value (its bytes up to
//!   the first NUL; a TCP client uses its username, the key the gateway knows it by) and
//!   `fnv1a64` is FNV-1a over 64 bits (offset basis `0xcbf2_9ce4_8422_2325`, prime
//!   `0x0000_0100_0000_01b3`), so that any implementation spreads a fleet the same way:
//!   `fnv1a64(b"DEV-000001") = 0xa0bf_005e_f074_3b38`, see the tests.
//! - **Resume at the holder**: once logged on, the current entry holds the session. A session
//!   that is lost (the gateway went silent, or the TCP connection closed) is resumed there
//!   first: only that gateway has its journal (resend works only on the same host).
//! - **Move to the next entry** (`(i + 1) % n`) on host timeout (no ConnectionAccept, no
//!   registration or LogonResponse within the device's `handshake_timeout`, 5 s: that includes a
//!   holder that died), on ConnectionReject or RegistrationReject SERVER_FULL or DRAINING, on a
//!   refused TCP connection, and on LoggedOut("draining"), LoggedOut("gateway draining"),
//!   LoggedOut("server full") or LoggedOut("gateway shutting down") (a gateway stopped by
//!   SIGTERM; see README "Decisions"). A move leaves the holder behind: the next logon on the
//!   new entry starts a new session (resetSeqNum = 1).
//! - Anything else (RATE_LIMITED, invalid credentials, a protocol error) is no reason to move:
//!   the driver retries or gives up as it would with one gateway.
//!
//! Call order: [`ServerCursor::new`] → [`ServerCursor::current`] for each connect →
//! [`ServerCursor::logged_on`] on LogonResponse → [`ServerCursor::on_end`] (or
//! [`ServerCursor::connect_refused`]) when an attempt or a session ends.

use super::EndReason;

/// Why a device moved to the next entry of its server list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MoveReason {
    /// No answer in time (handshake or logon), at a new entry or at the holder.
    HostTimeout,
    /// ConnectionReject / RegistrationReject SERVER_FULL, or a TCP LoggedOut("server full").
    ServerFull,
    /// ConnectionReject / RegistrationReject DRAINING, or a TCP LoggedOut("draining").
    Draining,
    /// LoggedOut("gateway draining"): the drain deadline of a gateway we were logged on to.
    DrainDeadline,
    /// LoggedOut("gateway shutting down").
    ShuttingDown,
    /// The TCP connection was refused.
    Refused,
}

impl MoveReason {
    /// Every reason, in report order.
    pub const ALL: [Self; 6] = [
        Self::HostTimeout,
        Self::ServerFull,
        Self::Draining,
        Self::DrainDeadline,
        Self::ShuttingDown,
        Self::Refused,
    ];

    /// Short name for reports (snake case).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostTimeout => "host_timeout",
            Self::ServerFull => "server_full",
            Self::Draining => "draining",
            Self::DrainDeadline => "drain_deadline",
            Self::ShuttingDown => "shutting_down",
            Self::Refused => "connection_refused",
        }
    }
}

/// ConnectionReject and RegistrationReject reasons that make a device move (DESIGN.md §1.3).
const CONNECTION_SERVER_FULL: u8 = 1;
const CONNECTION_DRAINING: u8 = 3;
const REGISTRATION_SERVER_FULL: u8 = 3;
const REGISTRATION_DRAINING: u8 = 4;

/// FNV-1a, 64 bits: the hash that picks a device's first entry (see the module docs).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// The entry a device with this key starts at, in a list of `n` (0 when `n` is 0).
pub fn start_index(key: &[u8], n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    (fnv1a64(key) % n as u64) as usize
}

/// No holder.
const NONE: u16 = u16::MAX;

/// One device's position in its server list (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerCursor {
    n: u16,
    current: u16,
    /// The entry that holds the device's session (`NONE`: none).
    holder: u16,
    /// Moves since the last logon: `n` or more means the whole list has been tried.
    moves: u16,
}

impl ServerCursor {
    /// A cursor over `n` entries (at most 65,535; at least 1), at the key's start entry.
    pub fn new(key: &[u8], n: usize) -> Self {
        let n = n.clamp(1, usize::from(u16::MAX - 1));
        Self { n: n as u16, current: start_index(key, n) as u16, holder: NONE, moves: 0 }
    }

    /// The entry to connect to.
    pub fn current(&self) -> usize {
        usize::from(self.current)
    }

    /// The entry holding the session, if any.
    pub fn holder(&self) -> Option<usize> {
        (self.holder != NONE).then_some(usize::from(self.holder))
    }

    /// True when the next connect goes to the gateway that holds the session: it may resume
    /// (resetSeqNum = 0); anywhere else the logon starts a new session.
    pub fn can_resume(&self) -> bool {
        self.holder == self.current
    }

    /// Moves since the last logon; at least the list's length means every entry was tried
    /// since (the driver backs off).
    pub fn moves_since_logon(&self) -> usize {
        usize::from(self.moves)
    }

    /// LogonResponse: the current entry holds the session.
    pub fn logged_on(&mut self) {
        self.holder = self.current;
        self.moves = 0;
    }

    /// A session attempt or a session ended with `reason` (`text`: the LoggedOut reason). Moves
    /// to the next entry and says why when §4 asks for it; `None`: stay (resume at the holder,
    /// or retry as with one gateway).
    pub fn on_end(&mut self, reason: EndReason, text: &[u8]) -> Option<MoveReason> {
        let why = match reason {
            EndReason::HostTimeout => MoveReason::HostTimeout,
            EndReason::ConnectionRejected(CONNECTION_SERVER_FULL)
            | EndReason::RegistrationRejected(REGISTRATION_SERVER_FULL) => MoveReason::ServerFull,
            EndReason::ConnectionRejected(CONNECTION_DRAINING)
            | EndReason::RegistrationRejected(REGISTRATION_DRAINING) => MoveReason::Draining,
            EndReason::LoggedOut => match text {
                b"draining" => MoveReason::Draining,
                b"gateway draining" => MoveReason::DrainDeadline,
                b"server full" => MoveReason::ServerFull,
                b"gateway shutting down" => MoveReason::ShuttingDown,
                _ => return None,
            },
            _ => return None,
        };
        self.advance();
        Some(why)
    }

    /// The TCP connection to the current entry was refused: move on.
    pub fn connect_refused(&mut self) -> MoveReason {
        self.advance();
        MoveReason::Refused
    }

    fn advance(&mut self) {
        self.current = (self.current + 1) % self.n;
        // Leaving the holder: its session is given up (a new one starts elsewhere).
        self.holder = NONE;
        self.moves = self.moves.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Published values so that other implementations can check theirs.
    #[test]
    fn fnv1a64_matches_the_reference_values() {
        // The FNV reference vectors (draft-eastlake-fnv): "" and "a".
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(fnv1a64(b"DEV-000001"), 0xa0bf_005e_f074_3b38);
    }

    #[test]
    fn a_fleet_spreads_over_the_list() {
        let mut per = [0usize; 3];
        for i in 0..3000 {
            per[start_index(format!("DEV-{i:06}").as_bytes(), 3)] += 1;
        }
        for n in per {
            assert!((900..=1100).contains(&n), "{per:?}");
        }
        assert_eq!(start_index(b"x", 0), 0);
        assert_eq!(start_index(b"x", 1), 0);
    }

    fn at(i: usize, n: usize) -> ServerCursor {
        let mut c = ServerCursor::new(b"", n);
        while c.current() != i {
            let _ = c.connect_refused();
        }
        c.moves = 0;
        c
    }

    #[test]
    fn starts_at_the_hash_and_wraps_around() {
        let c = ServerCursor::new(b"DEV-000001", 3);
        assert_eq!(c.current() as u64, 0xa0bf_005e_f074_3b38 % 3);
        let mut c = at(2, 3);
        assert_eq!(c.on_end(EndReason::HostTimeout, b""), Some(MoveReason::HostTimeout));
        assert_eq!(c.current(), 0);
        assert_eq!(c.moves_since_logon(), 1);
    }

    #[test]
    fn moves_on_exactly_the_reasons_of_section_4() {
        let cases: [(EndReason, &[u8], Option<MoveReason>); 14] = [
            (EndReason::HostTimeout, b"", Some(MoveReason::HostTimeout)),
            (EndReason::ConnectionRejected(1), b"", Some(MoveReason::ServerFull)),
            (EndReason::ConnectionRejected(3), b"", Some(MoveReason::Draining)),
            (EndReason::RegistrationRejected(3), b"", Some(MoveReason::ServerFull)),
            (EndReason::RegistrationRejected(4), b"", Some(MoveReason::Draining)),
            (EndReason::LoggedOut, b"draining", Some(MoveReason::Draining)),
            (EndReason::LoggedOut, b"gateway draining", Some(MoveReason::DrainDeadline)),
            (EndReason::LoggedOut, b"server full", Some(MoveReason::ServerFull)),
            (EndReason::LoggedOut, b"gateway shutting down", Some(MoveReason::ShuttingDown)),
            // Not reasons to move.
            (EndReason::ConnectionRejected(4), b"", None),
            (EndReason::ConnectionRejected(2), b"", None),
            (EndReason::LoggedOut, b"invalid credentials", None),
            (EndReason::Lost, b"", None),
            (EndReason::TransportClosed, b"", None),
        ];
        for (reason, text, want) in cases {
            let mut c = at(1, 3);
            assert_eq!(c.on_end(reason, text), want, "{reason:?} {text:?}");
            let next = if want.is_some() { 2 } else { 1 };
            assert_eq!(c.current(), next, "{reason:?} {text:?}");
        }
    }

    #[test]
    fn a_lost_session_resumes_at_its_holder_until_that_times_out() {
        let mut c = at(1, 3);
        assert!(!c.can_resume(), "nothing to resume before a logon");
        c.logged_on();
        assert_eq!(c.holder(), Some(1));
        // The holder went silent: stay, resume there.
        assert_eq!(c.on_end(EndReason::Lost, b""), None);
        assert!(c.can_resume());
        assert_eq!(c.current(), 1);
        // It does not answer: move on, and the next logon is a new session.
        assert_eq!(c.on_end(EndReason::HostTimeout, b""), Some(MoveReason::HostTimeout));
        assert_eq!((c.current(), c.holder(), c.can_resume()), (2, None, false));
        c.logged_on();
        assert_eq!((c.holder(), c.moves_since_logon()), (Some(2), 0));
    }

    #[test]
    fn a_refused_tcp_connection_moves_on_and_one_entry_stays_put() {
        let mut c = at(0, 2);
        assert_eq!(c.connect_refused(), MoveReason::Refused);
        assert_eq!(c.current(), 1);
        let mut one = ServerCursor::new(b"DEV", 1);
        assert_eq!(one.on_end(EndReason::HostTimeout, b""), Some(MoveReason::HostTimeout));
        assert_eq!(one.current(), 0);
        let empty = ServerCursor::new(b"DEV", 0);
        assert_eq!(empty.current(), 0);
    }
}
