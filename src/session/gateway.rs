//! One session on the gateway side (DESIGN.md §2).
//!
//! Driven by [`super::Endpoint`]; methods in the order the endpoint calls them:
//! `attach` → `handle_frame` (repeatedly) → `accept_logon` / `close` → `send_app` →
//! `handle_timeout` → `poll_transmit` (until `None`) → `poll_timeout`.
//!
//! Outbound numbering: every sequenced message gets its number when it is produced. Session
//! messages wait in a small [`ControlQueue`]; application messages are written straight into the
//! journal slot they will be resent from. `sent_through` is the highest number handed to the
//! transport; live output goes out strictly in number order, after any resend under way.

use core::time::Duration;
use std::sync::Arc;

use super::SessionConfig;
use super::control::{CONTROL_CAP, Control, ControlQueue, ReasonBuf, detail_code, detail_text};
use super::error::{Deadline, Misuse, Overflow, PeerClose, Refusal, SendError, Violation};
use super::state::{AfterLogout, CloseReason, Event, State, Transport};
use super::timer::{Timer, TimerTable};
use crate::counters::{Counter, Counters};
use crate::journal::Journal;
use crate::protocol::{
    Body, DATAGRAM_PREFIX_LEN, DecodeError, DeviceUid, FLAG_RESEND, HEADER_LEN, Header, Message,
    MessageType, Password, RejectReason, Username, align8, offset, write_prefix,
};
use crate::time::Timestamp;

/// What a frame asks of the endpoint.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Deliver<'a> {
    /// Deliver to the application.
    App { type_id: u16, body: &'a [u8] },
    /// A LogonRequest for the endpoint to authenticate.
    Logon { seq: i64, username: Username, password: Password, reset: bool },
    /// The device config arrived (the endpoint keeps it, outside the session record).
    Config { config: &'a [u8] },
}

/// The UDP registration of the current attach (DESIGN.md §2 rules 1 and 2): present for a UDP
/// attach, absent for TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Registration {
    /// The RegistrationRequest's clientNonce: a repeat with it gets the same answer.
    nonce: u64,
    /// The answer says resumed = 1.
    resumed: bool,
    /// A RegistrationAccept is owed: the first, or the answer to a repeated request. It travels
    /// alone, with prefix 0, before anything else.
    accept_owed: bool,
    /// Where the Get Device Config exchange stands.
    config: ConfigRequest,
}

/// The Get Device Config exchange of a UDP attach (DESIGN.md §2 rule 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConfigRequest {
    /// GetDeviceConfig(corr) is to be sent: the first, or the re-send every second.
    Owed { corr: i64 },
    /// Sent; waiting for DeviceConfig(corr) until the deadline.
    Sent { corr: i64 },
    /// DeviceConfig arrived.
    Received,
}

impl ConfigRequest {
    fn corr(self) -> Option<i64> {
        match self {
            Self::Owed { corr } | Self::Sent { corr } => Some(corr),
            Self::Received => None,
        }
    }
}

/// The LogonResponse of the current stream, kept to answer a repeated LogonRequest (see the
/// module docs of [`super`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LogonReply {
    /// No logon on this stream yet.
    None,
    /// Numbered `seq`, announcing `hb` seconds.
    Sent { seq: i64, hb: i32 },
    /// The device repeated its LogonRequest: send the response again (resend flag, same
    /// number) once its number has gone out.
    RepeatOwed { seq: i64, hb: i32 },
}

#[derive(Clone, Copy, Debug)]
struct Resend {
    next: i64,
    to: i64,
    ord: u64,
}

/// One gateway-side session. See the module docs for the call order.
#[derive(Debug)]
pub struct GatewaySession {
    /// The shard's settings, shared by its sessions (8 bytes, not 128, in every record).
    cfg: Arc<SessionConfig>,
    id: u64,
    state: State,
    transport: Transport,
    device_uid: DeviceUid,
    username: Username,
    has_stream: bool,
    // Registration (UDP).
    registration: Option<Registration>,
    /// Attaches so far: the correlation id of the attach's GetDeviceConfig.
    attaches: i64,
    // Inbound.
    expected_in: i64,
    ack_owed: bool,
    last_heard: Timestamp,
    // Outbound.
    next_out: i64,
    sent_through: i64,
    live_ord: u64,
    control: ControlQueue,
    journal: Journal,
    resend: Option<Resend>,
    logon_reply: LogonReply,
    last_sent: Timestamp,
    heartbeat: Duration,
    group_heartbeat: Option<Duration>,
    app: u8,
    resend_started: Option<Timestamp>,
    resend_done: Option<Duration>,
    test_corr: i64,
    timers: TimerTable,
    wall_offset_ns: i64,
}

impl GatewaySession {
    /// A closed session with its journal allocated (done once per slot, at start-up).
    pub fn new(cfg: Arc<SessionConfig>) -> Self {
        let journal = Journal::new(cfg.journal);
        let heartbeat = cfg.heartbeat_interval;
        Self {
            cfg,
            id: 0,
            state: State::Closed(CloseReason::LOGOUT),
            transport: Transport::Udp,
            device_uid: DeviceUid::default(),
            username: Username::default(),
            has_stream: false,
            registration: None,
            attaches: 0,
            expected_in: 1,
            ack_owed: false,
            last_heard: Timestamp::ZERO,
            next_out: 1,
            sent_through: 0,
            live_ord: 0,
            control: ControlQueue::new(),
            journal,
            resend: None,
            logon_reply: LogonReply::None,
            last_sent: Timestamp::ZERO,
            heartbeat,
            group_heartbeat: None,
            app: 0,
            resend_started: None,
            resend_done: None,
            test_corr: 0,
            timers: TimerTable::default(),
            wall_offset_ns: 0,
        }
    }

    /// Makes a closed slot a fresh session with no stream state.
    pub(crate) fn open(&mut self, id: u64, wall_offset_ns: i64) {
        debug_assert!(self.state.is_closed());
        self.id = id;
        self.device_uid = DeviceUid::default();
        self.username = Username::default();
        self.has_stream = false;
        self.registration = None;
        self.group_heartbeat = None;
        self.app = 0;
        self.journal.set_limit(usize::MAX);
        self.wall_offset_ns = wall_offset_ns;
        self.reset_streams();
        self.transition(Event::Open);
    }

    fn reset_streams(&mut self) {
        self.journal.reset();
        self.control.clear();
        self.resend = None;
        self.expected_in = 1;
        self.next_out = 1;
        self.sent_through = 0;
        self.live_ord = 0;
        self.ack_owed = false;
        self.logon_reply = LogonReply::None;
    }

    /// The session id (UDP datagram prefix; also set for TCP sessions).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The transport of the current or last attach.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The deviceUid (UDP) or empty.
    pub fn device_uid(&self) -> &DeviceUid {
        &self.device_uid
    }

    /// The username of the last logon.
    pub fn username(&self) -> &Username {
        &self.username
    }

    /// Next inbound number expected from the device.
    pub fn expected_in(&self) -> i64 {
        self.expected_in
    }

    /// Next outbound number to assign.
    pub fn next_out(&self) -> i64 {
        self.next_out
    }

    /// When anything was last heard from the device.
    pub fn last_heard(&self) -> Timestamp {
        self.last_heard
    }

    /// True while a resend is under way.
    pub fn is_resending(&self) -> bool {
        self.resend.is_some()
    }

    /// The registration nonce of the current attach (UDP).
    pub(crate) fn reg_nonce(&self) -> Option<u64> {
        self.registration.map(|r| r.nonce)
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    fn transition(&mut self, event: Event) {
        match self.state.on(event) {
            Ok(next) => self.state = next,
            // Only reachable through a bug in this module; keep the state and say so in debug.
            Err(e) => debug_assert!(false, "{e}"),
        }
    }

    /// Attaches a transport: a new session, a resume after detach, or a displacement (the
    /// endpoint has already said goodbye to the old transport with [`Self::farewell`]).
    pub(crate) fn attach_udp(&mut self, now: Timestamp, uid: DeviceUid, nonce: u64, resumed: bool) {
        self.transport = Transport::Udp;
        self.device_uid = uid;
        self.attaches += 1;
        let config = ConfigRequest::Owed { corr: self.attaches };
        self.registration = Some(Registration { nonce, resumed, accept_owed: true, config });
        self.begin_attach(now, Transport::Udp);
        self.timers.set(Timer::Retry, now + self.cfg.device_config_retry);
        self.timers.set(Timer::Deadline, now + self.cfg.device_config_timeout);
    }

    /// Takes over a pending attach that has logged on with valid credentials (DESIGN.md §2
    /// rule 9; the endpoint has already said goodbye to the older transport, if any): the
    /// attach's registration and device config become the session's, and the session waits for
    /// [`Self::accept_logon`] with that LogonRequest.
    pub(crate) fn adopt_udp(&mut self, now: Timestamp, nonce: u64) {
        self.transport = Transport::Udp;
        self.attaches += 1;
        let config_state = ConfigRequest::Received;
        self.registration =
            Some(Registration { nonce, resumed: true, accept_owed: false, config: config_state });
        self.begin_attach(now, Transport::Udp);
        self.transition(Event::ConfigReceived);
    }

    /// Attaches a TCP connection whose LogonRequest has been authenticated.
    pub(crate) fn attach_tcp(&mut self, now: Timestamp) {
        self.transport = Transport::Tcp;
        self.registration = None;
        self.begin_attach(now, Transport::Tcp);
        self.timers.set(Timer::Deadline, now + self.cfg.logon_timeout);
    }

    fn begin_attach(&mut self, now: Timestamp, t: Transport) {
        self.skip_unsent();
        self.timers.stop_all();
        self.last_heard = now;
        self.last_sent = now;
        if let LogonReply::RepeatOwed { seq, hb } = self.logon_reply {
            // Owed to the old transport: the new one logs on again.
            self.logon_reply = LogonReply::Sent { seq, hb };
        }
        self.transition(Event::Attach(t));
    }

    /// Treats everything numbered but not yet sent as sent: it is recovered by resend.
    fn skip_unsent(&mut self) {
        self.resend = None;
        self.control.clear();
        self.sent_through = self.next_out - 1;
        self.live_ord = self.journal.tail();
        self.ack_owed = false;
    }

    /// Re-sends the RegistrationAccept for a repeated RegistrationRequest.
    pub(crate) fn repeat_registration(&mut self) {
        if let Some(r) = &mut self.registration {
            r.accept_owed = true;
        }
    }

    /// Numbers and encodes a LoggedOut for the *old* transport before a displacement; returns
    /// its padded length with the UDP prefix if any (0 if nothing is attached or `out` is short).
    pub(crate) fn farewell(
        &mut self,
        now: Timestamp,
        reason: &[u8],
        out: &mut [u8],
        c: &mut Counters,
    ) -> usize {
        if !self.state.is_attached() && !matches!(self.state, State::LoggingOut(..)) {
            return 0;
        }
        self.skip_unsent();
        let seq = self.next_out;
        self.next_out += 1;
        self.sent_through = seq;
        let (prefix, room) = self.prefix_room(out);
        let msg = self.fresh(now, seq, 0, Body::LoggedOut { reason });
        match msg.encode(&mut out[prefix..room]) {
            Ok(n) => {
                c.incr(Counter::LoggedOutSent);
                c.incr(Counter::MessagesSent);
                prefix + n
            }
            Err(_) => 0,
        }
    }

    /// Completes a logout whose LoggedOut is queued but not yet sent, because a newer attach
    /// for the same deviceUid or username arrived first (in the same input batch): encodes that
    /// LoggedOut for the *old* transport into `out` (with the UDP prefix if any) and ends the
    /// logout as if it had been flushed (release or detach). Whatever was numbered before it and
    /// not sent is treated as sent, as on any transport loss. Returns the length written (0 if
    /// not logging out or `out` is too short).
    pub(crate) fn finish_logout(
        &mut self,
        now: Timestamp,
        out: &mut [u8],
        c: &mut Counters,
    ) -> usize {
        if !matches!(self.state, State::LoggingOut(..)) {
            return 0;
        }
        let mut len = 0;
        while let Some((seq, ctl)) = self.control.front() {
            self.control.pop();
            if let Control::LoggedOut = ctl {
                let reason = *self.control.farewell();
                let (prefix, room) = self.prefix_room(out);
                let body = Body::LoggedOut { reason: reason.as_bytes() };
                if let Some(n) = self.write(now, &mut out[prefix..room], seq, 0, body) {
                    c.incr(Counter::LoggedOutSent);
                    c.incr(Counter::MessagesSent);
                    len = prefix + n;
                }
                break;
            }
        }
        self.skip_unsent();
        self.transition(Event::Flushed);
        self.after_state_change(now);
        len
    }

    /// Handles one inbound message (decoded by the endpoint: a datagram's messages are all
    /// decoded before any is acted on). Returns what the endpoint must act on.
    pub(crate) fn handle_message<'a>(
        &mut self,
        now: Timestamp,
        msg: Message<'a>,
        c: &mut Counters,
    ) -> Option<Deliver<'a>> {
        if !self.state.is_attached() {
            c.incr(Counter::DropNotAllowed);
            return None;
        }
        self.heard(now);
        let h = msg.header;
        if msg.body.message_type().is_some_and(MessageType::is_handshake) {
            return self.on_unsequenced(now, &msg, c);
        }
        match self.state {
            State::AwaitingConfig => {
                c.incr(Counter::DropNotAllowed);
                None
            }
            State::AwaitingLogon => match msg.body {
                Body::LogonRequest { username, password, reset_seq_num } => {
                    Some(Deliver::Logon { seq: h.seq, username, password, reset: reset_seq_num })
                }
                _ => {
                    self.not_allowed_before_logon(now, c);
                    None
                }
            },
            State::Active => self.on_active(now, h, msg.body, c),
            _ => None,
        }
    }

    fn heard(&mut self, now: Timestamp) {
        self.last_heard = now;
        if self.state.is_active() {
            self.timers.set(Timer::TestRequest, now + self.heartbeat.mul_f64(1.5));
            self.timers.stop(Timer::Liveness);
        }
    }

    fn on_unsequenced<'a>(
        &mut self,
        now: Timestamp,
        msg: &Message<'a>,
        c: &mut Counters,
    ) -> Option<Deliver<'a>> {
        match (self.transport, msg.body) {
            (Transport::Udp, Body::DeviceConfig { correlation_id, config }) => {
                let awaited = self.registration.and_then(|r| r.config.corr());
                if self.state == State::AwaitingConfig && awaited == Some(correlation_id) {
                    if let Some(r) = &mut self.registration {
                        r.config = ConfigRequest::Received;
                    }
                    self.timers.stop(Timer::Retry);
                    // Now the LogonRequest: within `logon_timeout`, as on TCP; an attach that
                    // never logs on must not hold its session slot forever.
                    self.timers.set(Timer::Deadline, now + self.cfg.logon_timeout);
                    self.transition(Event::ConfigReceived);
                    Some(Deliver::Config { config })
                } else {
                    // A duplicate answer to a re-sent GetDeviceConfig.
                    c.incr(Counter::DropDuplicate);
                    None
                }
            }
            (Transport::Udp, _) => {
                c.incr(Counter::DropNotAllowed);
                None
            }
            (Transport::Tcp, _) => {
                if self.state.is_active() {
                    self.reject(
                        now,
                        msg.header.seq,
                        RejectReason::MessageNotAllowed,
                        "handshake message on tcp",
                        c,
                    );
                } else {
                    self.not_allowed_before_logon(now, c);
                }
                None
            }
        }
    }

    fn not_allowed_before_logon(&mut self, now: Timestamp, c: &mut Counters) {
        match self.transport {
            Transport::Udp => c.incr(Counter::DropNotAllowed),
            Transport::Tcp => self.violation(now, Violation::LogonRequired, b"logon required", c),
        }
    }

    /// Counts a protocol violation and ends the session for it with LoggedOut(`why`).
    fn violation(&mut self, now: Timestamp, v: Violation, why: &[u8], c: &mut Counters) {
        c.incr(Counter::ProtocolViolations);
        self.close(now, CloseReason::PeerMisbehaved(v), why, c);
    }

    fn on_active<'a>(
        &mut self,
        now: Timestamp,
        h: Header,
        body: Body<'a>,
        c: &mut Counters,
    ) -> Option<Deliver<'a>> {
        if let Body::LogonRequest { .. } = body {
            if let (true, LogonReply::Sent { seq, hb } | LogonReply::RepeatOwed { seq, hb }) =
                (h.is_resend(), self.logon_reply)
            {
                // The device did not get our LogonResponse: send it again (see module docs).
                self.logon_reply = LogonReply::RepeatOwed { seq, hb };
                c.incr(Counter::DropDuplicate);
                return None;
            }
        }
        if !self.check_seq(now, h, c) {
            return None;
        }
        match body {
            Body::Heartbeat { .. } => None,
            Body::TestRequest { correlation_id } => {
                self.push_control(now, Control::Heartbeat { correlation_id }, c);
                None
            }
            Body::ResendRequest { from, to } => {
                self.start_resend(now, h.seq, from, to, c);
                None
            }
            Body::LogoutRequest { .. } => {
                c.incr(Counter::Logouts);
                self.close(now, CloseReason::LOGOUT, b"logout", c);
                None
            }
            Body::App { type_id, body } => {
                c.incr(Counter::AppMessagesReceived);
                Some(Deliver::App { type_id, body })
            }
            _ => {
                self.reject(now, h.seq, RejectReason::MessageNotAllowed, "message not allowed", c);
                None
            }
        }
    }

    /// DESIGN.md §2 rule 5. Returns true if the message is the expected one (and counts it).
    fn check_seq(&mut self, now: Timestamp, h: Header, c: &mut Counters) -> bool {
        if h.seq == self.expected_in {
            self.expected_in += 1;
            c.incr(Counter::MessagesReceived);
            self.owe_ack(now);
            return true;
        }
        match (self.transport, h.seq < self.expected_in) {
            (Transport::Tcp, true) if h.is_resend() => c.incr(Counter::DropDuplicate),
            (Transport::Tcp, _) => {
                let reason = ReasonBuf::format(format_args!(
                    "sequence error: expected {} got {}",
                    self.expected_in, h.seq
                ));
                self.violation(now, Violation::Sequence, reason.as_bytes(), c);
                return false;
            }
            (Transport::Udp, true) => {
                c.incr(Counter::DropDuplicate);
                // The device did not see our acknowledgement: send one again.
                self.owe_ack(now);
            }
            (Transport::Udp, false) => {
                c.incr(Counter::DropOutOfOrder);
                self.owe_ack(now);
            }
        }
        false
    }

    fn owe_ack(&mut self, now: Timestamp) {
        self.ack_owed = true;
        self.timers.set_earliest(Timer::Ack, now + self.cfg.ack_delay);
    }

    /// A TCP frame that did not decode (DESIGN.md §2 rule 12 and the module docs of [`super`]):
    /// Reject if it framed correctly and the session is logged on, else LoggedOut and close.
    pub(crate) fn handle_malformed(
        &mut self,
        now: Timestamp,
        frame: &[u8],
        e: DecodeError,
        c: &mut Counters,
    ) {
        count_decode_error(e, c);
        if self.transport == Transport::Udp || !self.state.is_attached() {
            return;
        }
        let framing = matches!(
            e,
            DecodeError::InvalidProtocolId(_)
                | DecodeError::UnsupportedVersion(_)
                | DecodeError::LengthBelowHeader(_)
                | DecodeError::Truncated { .. }
                | DecodeError::NonZeroPadding
                | DecodeError::TooLong { .. }
        );
        if framing || !self.state.is_active() {
            self.violation(now, Violation::Malformed(e), e.as_str().as_bytes(), c);
            return;
        }
        // The frame is intact but its body is bad: it consumes its number and gets a Reject.
        let mut raw = [0u8; 8];
        raw.copy_from_slice(&frame[offset::SEQ..offset::SEQ + 8]);
        let seq = i64::from_le_bytes(raw);
        let flags = frame[offset::FLAGS];
        let h = Header { seq, flags: flags & FLAG_RESEND, ..Header::default() };
        if self.check_seq(now, h, c) {
            self.reject(now, seq, e.reject_reason(), e.as_str(), c);
        }
    }

    /// Accepts an authenticated LogonRequest numbered `seq` (DESIGN.md §2 rules 4 and 8).
    pub(crate) fn accept_logon(
        &mut self,
        now: Timestamp,
        seq: i64,
        username: Username,
        reset: bool,
        heartbeat: Duration,
        c: &mut Counters,
    ) {
        debug_assert_eq!(self.state, State::AwaitingLogon);
        // Set before any refusal: the endpoint finds the username index entry to remove by this
        // name when the session is released. A refused first logon left the entry behind, and
        // the next logon with that name attached to whatever session reused the slot.
        self.username = username;
        if let Some((reason, why)) = self.logon_refusal(seq, reset) {
            self.close(now, reason, why, c);
            return;
        }
        let resume = !reset && self.has_stream;
        if !resume {
            self.reset_streams();
            self.expected_in = 2;
        }
        // On a resume the LogonRequest's own number is neither checked nor counted.
        self.has_stream = true;
        self.heartbeat = heartbeat;
        self.timers.stop(Timer::Deadline);
        self.transition(Event::LogonAccepted);
        self.heard(now);
        self.timers.set(Timer::Heartbeat, now + heartbeat);
        let hb = i32::try_from(heartbeat.as_secs()).unwrap_or(i32::MAX);
        let seq = self.next_out;
        self.logon_reply = LogonReply::Sent { seq, hb };
        self.push_control(now, Control::LogonResponse { heartbeat_interval_s: hb }, c);
        c.incr(Counter::LogonsAccepted);
    }

    /// Why [`Self::accept_logon`] would refuse an authenticated LogonRequest numbered `seq`
    /// (DESIGN.md §2 rules 4 and 8), with its LoggedOut text; `None` if it would accept it. The
    /// endpoint asks before a newer attach displaces an older one (rule 9): a logon that is
    /// refused displaces nothing.
    pub(crate) fn logon_refusal(
        &self,
        seq: i64,
        reset: bool,
    ) -> Option<(CloseReason, &'static [u8])> {
        let resume = !reset && self.has_stream;
        match (resume || seq == 1, reset) {
            (true, _) => None,
            (false, true) => Some((
                CloseReason::PeerMisbehaved(Violation::FirstSequence),
                b"first sequence number must be 1",
            )),
            (false, false) => Some((
                CloseReason::PeerIncompatible(Refusal::NothingToResume),
                b"nothing to resume",
            )),
        }
    }

    /// Queues LoggedOut(`why`) and ends the session once it is sent.
    pub(crate) fn close(
        &mut self,
        now: Timestamp,
        reason: CloseReason,
        why: &[u8],
        c: &mut Counters,
    ) {
        self.close_then(now, reason, AfterLogout::Release, why, c);
    }

    fn close_then(
        &mut self,
        now: Timestamp,
        reason: CloseReason,
        after: AfterLogout,
        why: &[u8],
        c: &mut Counters,
    ) {
        if !self.state.is_attached() {
            return;
        }
        self.resend = None;
        self.timers.stop_all();
        let text = ReasonBuf::new(why);
        if !self.control.push_logged_out(self.next_out, text) {
            // No room even in the reserved place: drop what waits and say goodbye now.
            self.skip_unsent();
            self.control.push_logged_out(self.next_out, text);
            c.incr(Counter::OutputOverflow);
        }
        self.next_out += 1;
        self.transition(Event::Close(reason, after));
        let _ = now;
    }

    /// Application messages the session takes before one more would push a message the device
    /// has not acknowledged (through `acked`) out of the journal, or be refused: the window a
    /// host's output is held to (DESIGN.md §1.6).
    pub(crate) fn app_window(&self, acked: i64) -> usize {
        let acked = acked.min(self.next_out - 1);
        self.journal.limit().saturating_sub(self.journal.count_after(acked))
    }

    /// True when the journal holds only unsent messages: one more application message would be
    /// refused (backpressure).
    pub(crate) fn output_full(&self) -> bool {
        self.journal.is_full() && self.journal.head() >= self.live_ord
    }

    /// The transport cannot take more output (a TCP reader too slow to keep up). Whatever is
    /// unsent counts as sent (the journal keeps it for a resend after resume), a
    /// LoggedOut("send queue full") is queued as the only output, and once it is sent the session
    /// is kept detached, as after a heartbeat timeout. False, with nothing queued, when the session
    /// is already ending.
    pub(crate) fn stalled(&mut self, now: Timestamp, c: &mut Counters) -> bool {
        if !self.state.is_attached() {
            return false;
        }
        self.skip_unsent();
        self.close_then(
            now,
            CloseReason::Backpressure(Overflow::SendQueue),
            AfterLogout::Detach,
            b"send queue full",
            c,
        );
        true
    }

    /// The transport went away (TCP closed, or the endpoint gave up on it).
    pub(crate) fn transport_lost(&mut self, now: Timestamp) {
        match self.state {
            State::AwaitingConfig | State::AwaitingLogon if !self.has_stream => {
                self.transition(Event::Release(CloseReason::PeerClosed(
                    PeerClose::TransportClosed,
                )));
            }
            State::AwaitingConfig
            | State::AwaitingLogon
            | State::Active
            | State::LoggingOut(..) => {
                self.transition(Event::TransportLost);
            }
            _ => {}
        }
        self.after_state_change(now);
    }

    /// Ends the session without a LoggedOut.
    pub(crate) fn release(&mut self, reason: CloseReason) {
        if !self.state.is_closed() {
            self.transition(Event::Release(reason));
        }
        self.timers.stop_all();
    }

    fn after_state_change(&mut self, now: Timestamp) {
        self.timers.stop_all();
        if self.state.is_detached() {
            self.skip_unsent();
            self.timers.set(Timer::DetachExpiry, now + self.cfg.detached_ttl);
        }
    }

    /// Queues an application message (DESIGN.md §1.4). It is journaled now and sent in number
    /// order; returns its sequence number.
    pub fn send_app(
        &mut self,
        now: Timestamp,
        type_id: u16,
        body: &[u8],
        c: &mut Counters,
    ) -> Result<i64, SendError> {
        if type_id < crate::protocol::APP_TYPE_MIN {
            return Err(SendError::ApiMisuse(Misuse::InvalidType));
        }
        // A session away from its device (detached, or re-attaching before its resume logon)
        // still journals: the device recovers these messages by resend after it resumes, which
        // is what "gets exactly what it missed" means for pushed traffic.
        let away = self.accepts_app() && !self.state.is_active();
        if !self.accepts_app() {
            return Err(SendError::NotActive);
        }
        let len = align8(HEADER_LEN + body.len());
        if len > self.journal.slot_bytes() {
            return Err(SendError::ApiMisuse(Misuse::TooLarge));
        }
        if self.journal.is_full() {
            let head = self.journal.head();
            // Every slot holds a message not yet sent live: the application must wait.
            let unsent = head >= self.live_ord;
            // During a resend, either of that or a slot the resend still has to read ends the
            // session: its output cannot keep up.
            let resend_overflow =
                self.resend.is_some_and(|r| unsent || (head >= r.ord && r.next <= r.to));
            if unsent {
                c.incr(Counter::SendBackpressure);
            }
            if resend_overflow {
                c.incr(Counter::OutputOverflow);
                self.close(
                    now,
                    CloseReason::Backpressure(Overflow::OutputQueue),
                    b"output queue overflow during resend",
                    c,
                );
            }
            if unsent || resend_overflow {
                return Err(SendError::Backpressure);
            }
        }
        let seq = self.next_out;
        let msg = self.fresh(now, seq, 0, Body::App { type_id, body });
        let appended = self.journal.append_with(seq, len, |dst| {
            // The slot is exactly `len` bytes and the body was size-checked above.
            let _ = msg.encode(dst);
        });
        if appended.is_err() {
            return Err(SendError::ApiMisuse(Misuse::TooLarge));
        }
        self.next_out += 1;
        if away {
            // Nothing goes out live while away: count it as sent, so the ring evicts the oldest
            // as usual (a resend reaching below it is a LoggedOut, never a silent gap).
            self.sent_through = seq;
            self.live_ord = self.journal.tail();
        }
        c.incr(Counter::AppMessagesSent);
        Ok(seq)
    }

    /// Applies a device group's settings (from the device config): heartbeat interval for the
    /// coming logon and journal depth within the reserved ring.
    pub(crate) fn apply_group(
        &mut self,
        heartbeat: Option<Duration>,
        journal_depth: Option<usize>,
    ) {
        if let Some(h) = heartbeat {
            self.group_heartbeat = Some(h);
        }
        if let Some(n) = journal_depth {
            self.journal.set_limit(n);
        }
    }

    /// How long the last completed resend took, from its ResendRequest to its last message
    /// handed to the transport (taken once).
    pub(crate) fn take_resend_done(&mut self) -> Option<Duration> {
        self.resend_done.take()
    }

    /// The application serving this session (0 unless a device group chose another).
    pub fn app(&self) -> u8 {
        self.app
    }

    pub(crate) fn set_app(&mut self, app: u8) {
        self.app = app;
    }

    /// The heartbeat interval the next logon announces: the device group's, else `default`.
    pub(crate) fn heartbeat_for_logon(&self, default: Duration) -> Duration {
        self.group_heartbeat.unwrap_or(default)
    }

    /// True if [`Self::send_app`] takes messages now: logged on, or away from the device with a
    /// stream to resume (detached, or re-attaching before the resume logon).
    pub fn accepts_app(&self) -> bool {
        match self.state {
            State::Active => true,
            State::Detached | State::AwaitingConfig | State::AwaitingLogon => self.has_stream,
            _ => false,
        }
    }

    fn push_control(&mut self, now: Timestamp, ctl: Control, c: &mut Counters) {
        if self.control.push(self.next_out, ctl) {
            self.next_out += 1;
        } else {
            c.incr(Counter::OutputOverflow);
            self.close(
                now,
                CloseReason::Backpressure(Overflow::OutputQueue),
                b"output queue overflow",
                c,
            );
        }
    }

    fn reject(
        &mut self,
        now: Timestamp,
        ref_seq_num: i64,
        reason: RejectReason,
        details: &'static str,
        c: &mut Counters,
    ) {
        c.incr(Counter::RejectsSent);
        let details = detail_code(details);
        self.push_control(now, Control::Reject { ref_seq_num, reason: reason as u8, details }, c);
    }

    /// DESIGN.md §2 rule 7.
    fn start_resend(&mut self, now: Timestamp, req_seq: i64, from: i64, to: i64, c: &mut Counters) {
        let last = self.sent_through;
        let to_eff = if to == 0 { last } else { to };
        if from < 1 || from > last || to_eff < from || to_eff > last {
            self.reject(now, req_seq, RejectReason::InvalidFieldValue, "invalid resend range", c);
            return;
        }
        if self.journal.evicted_through() >= from {
            self.window_exceeded(now, c);
            return;
        }
        if self.resend.is_some() {
            c.incr(Counter::ResendReplaced);
        }
        c.incr(Counter::ResendRequests);
        self.resend = Some(Resend { next: from, to: to_eff, ord: self.journal.lower_bound(from) });
        self.resend_started = Some(now);
    }

    fn window_exceeded(&mut self, now: Timestamp, c: &mut Counters) {
        c.incr(Counter::ResendWindowExceeded);
        let oldest = self.journal.evicted_through() + 1;
        let why =
            ReasonBuf::format(format_args!("resend window exceeded: oldest retained {oldest}"));
        let reason = CloseReason::PeerIncompatible(Refusal::ResendWindowExceeded);
        self.close(now, reason, why.as_bytes(), c);
    }

    /// Fires every expired timer; a no-op when called early.
    pub fn handle_timeout(&mut self, now: Timestamp, c: &mut Counters) {
        self.fire_timers(now, c);
        // A timer left over from another state has nothing to do: disarm it so the endpoint is
        // never asked to wake for it again.
        for t in Timer::VALUES {
            if self.timers.is_expired(t, now) {
                self.timers.stop(t);
            }
        }
    }

    fn fire_timers(&mut self, now: Timestamp, c: &mut Counters) {
        if self.timers.take_expired(Timer::DetachExpiry, now) {
            c.incr(Counter::SessionsExpired);
            self.release(CloseReason::Timeout(Deadline::Detached));
            return;
        }
        if self.timers.take_expired(Timer::Deadline, now) {
            match self.state {
                State::AwaitingConfig => {
                    c.incr(Counter::DeviceConfigTimeouts);
                    self.close(
                        now,
                        CloseReason::Timeout(Deadline::DeviceConfig),
                        b"eSP0008 could not get device config",
                        c,
                    );
                }
                State::AwaitingLogon => {
                    c.incr(Counter::LogonTimeouts);
                    self.close(now, CloseReason::Timeout(Deadline::Logon), b"logon timeout", c);
                }
                _ => {}
            }
            return;
        }
        if self.timers.take_expired(Timer::Retry, now) && self.state == State::AwaitingConfig {
            if let Some(r) = &mut self.registration {
                if let ConfigRequest::Sent { corr } = r.config {
                    r.config = ConfigRequest::Owed { corr };
                }
            }
            self.timers.set(Timer::Retry, now + self.cfg.device_config_retry);
        }
        if !self.state.is_active() {
            return;
        }
        if self.timers.take_expired(Timer::Liveness, now) {
            c.incr(Counter::SessionsLost);
            self.close_then(
                now,
                CloseReason::Timeout(Deadline::Heartbeat),
                AfterLogout::Detach,
                b"heartbeat timeout",
                c,
            );
            return;
        }
        if self.timers.take_expired(Timer::TestRequest, now) {
            self.test_corr += 1;
            c.incr(Counter::TestRequestsSent);
            self.push_control(now, Control::TestRequest { correlation_id: self.test_corr }, c);
            // A further H of silence after the TestRequest (DESIGN.md §2 rule 6): from now, not
            // from `last_heard`, which a late pass has left behind (a deadline in the past was
            // disarmed below as stale, and the peer was never found lost).
            self.timers.set(Timer::Liveness, now + self.heartbeat);
        }
        let ack_due = self.timers.take_expired(Timer::Ack, now) && self.ack_owed;
        let idle = self.timers.take_expired(Timer::Heartbeat, now);
        if (ack_due || idle) && self.control.len() == 0 && self.sent_through + 1 == self.next_out {
            c.incr(Counter::HeartbeatsSent);
            self.push_control(now, Control::Heartbeat { correlation_id: 0 }, c);
        }
        if idle {
            self.timers.set(Timer::Heartbeat, now + self.heartbeat);
        }
    }

    /// True if [`Self::poll_transmit`] would produce something.
    pub fn wants_transmit(&self) -> bool {
        self.registration
            .is_some_and(|r| r.accept_owed || matches!(r.config, ConfigRequest::Owed { .. }))
            || matches!(self.logon_reply, LogonReply::RepeatOwed { .. })
            || self.resend.is_some()
            || self.sent_through + 1 < self.next_out
    }

    /// Writes the next datagram (UDP, with prefix, at most `max_datagram`) or stream chunk (TCP)
    /// into `buf`; returns its length, or `None` if there is nothing to send.
    pub fn poll_transmit(
        &mut self,
        now: Timestamp,
        buf: &mut [u8],
        c: &mut Counters,
    ) -> Option<usize> {
        if !self.wants_transmit()
            || !matches!(
                self.state,
                State::AwaitingConfig
                    | State::AwaitingLogon
                    | State::Active
                    | State::LoggingOut(..)
            )
        {
            return None;
        }
        if let Some(r) = self.registration.filter(|r| r.accept_owed) {
            // Messages 50-55 travel alone, with prefix 0 (DESIGN.md §1.5).
            let start = write_prefix(buf, 0);
            let body = Body::RegistrationAccept { session_id: self.id, resumed: r.resumed };
            let n = self.write(now, &mut buf[start..], 0, 0, body)?;
            self.registration = Some(Registration { accept_owed: false, ..r });
            c.incr(Counter::DatagramsSent);
            c.add(Counter::BytesSent, (start + n) as u64);
            return Some(start + n);
        }
        let (start, room) = self.prefix_room(buf);
        let mut w = start;
        let mut fresh = false;
        loop {
            let out = &mut buf[w..room];
            let n = match self.next_item(now, out, c) {
                Item::Wrote { len, fresh: f } => {
                    fresh |= f;
                    len
                }
                Item::NoRoom | Item::Done => break,
                Item::Last { len } => {
                    w += len;
                    fresh = true;
                    self.transition(Event::Flushed);
                    self.after_state_change(now);
                    break;
                }
            };
            w += n;
        }
        if w == start {
            return None;
        }
        if self.transport == Transport::Udp {
            c.incr(Counter::DatagramsSent);
        }
        c.add(Counter::BytesSent, w as u64);
        self.last_sent = now;
        if fresh {
            self.ack_owed = false;
            self.timers.stop(Timer::Ack);
        }
        if self.state.is_active() {
            self.timers.set(Timer::Heartbeat, now + self.heartbeat);
        }
        Some(w)
    }

    /// Where messages start in `buf` and where they must end.
    fn prefix_room(&self, buf: &mut [u8]) -> (usize, usize) {
        match self.transport {
            Transport::Udp => {
                let room = buf.len().min(self.cfg.max_datagram);
                (write_prefix(buf, self.id), room)
            }
            Transport::Tcp => (0, buf.len().min(self.cfg.max_tcp_write)),
        }
    }

    fn fresh<'a>(&self, now: Timestamp, seq: i64, flags: u8, body: Body<'a>) -> Message<'a> {
        super::outgoing(now, self.wall_offset_ns, self.expected_in, seq, flags, body)
    }

    fn write(
        &self,
        now: Timestamp,
        out: &mut [u8],
        seq: i64,
        flags: u8,
        body: Body<'_>,
    ) -> Option<usize> {
        self.fresh(now, seq, flags, body).encode(out).ok()
    }

    fn next_item(&mut self, now: Timestamp, out: &mut [u8], c: &mut Counters) -> Item {
        let wrote = |len: Option<usize>, fresh| match len {
            Some(len) => Item::Wrote { len, fresh },
            None => Item::NoRoom,
        };
        if let Some(reg @ Registration { config: ConfigRequest::Owed { corr }, .. }) =
            self.registration
        {
            let r = self.write(now, out, 0, 0, Body::GetDeviceConfig { correlation_id: corr });
            if r.is_some() {
                let config = ConfigRequest::Sent { corr };
                self.registration = Some(Registration { config, ..reg });
                c.incr(Counter::DeviceConfigRequestsSent);
            }
            return wrote(r, false);
        }
        if let LogonReply::RepeatOwed { seq, hb } = self.logon_reply {
            let sent = LogonReply::Sent { seq, hb };
            if seq <= self.sent_through {
                let body = Body::LogonResponse { heartbeat_interval_s: hb };
                let r = self.write(now, out, seq, FLAG_RESEND, body);
                if r.is_some() {
                    self.logon_reply = sent;
                }
                return wrote(r, true);
            }
            // Not yet sent at all: it goes out live, in its turn.
            self.logon_reply = sent;
        }
        if let Some(r) = self.resend {
            return self.next_resend_item(now, r, out, c);
        }
        let next = self.sent_through + 1;
        if next >= self.next_out {
            return Item::Done;
        }
        if let Some((seq, ctl)) = self.control.front().filter(|&(s, _)| s == next) {
            let r = match ctl {
                Control::LogonResponse { heartbeat_interval_s } => {
                    self.write(now, out, seq, 0, Body::LogonResponse { heartbeat_interval_s })
                }
                Control::Heartbeat { correlation_id } => {
                    self.write(now, out, seq, 0, Body::Heartbeat { correlation_id })
                }
                Control::TestRequest { correlation_id } => {
                    self.write(now, out, seq, 0, Body::TestRequest { correlation_id })
                }
                Control::LoggedOut => {
                    let reason = *self.control.farewell();
                    self.write(now, out, seq, 0, Body::LoggedOut { reason: reason.as_bytes() })
                }
                Control::Reject { ref_seq_num, reason, details } => {
                    let details = detail_text(details).as_bytes();
                    let body = Body::Reject { ref_seq_num, reason, details };
                    self.write(now, out, seq, 0, body)
                }
            };
            let Some(len) = r else { return Item::NoRoom };
            self.control.pop();
            self.sent_through = seq;
            c.incr(Counter::MessagesSent);
            if let Control::LoggedOut = ctl {
                c.incr(Counter::LoggedOutSent);
                return Item::Last { len };
            }
            return Item::Wrote { len, fresh: true };
        }
        let last_processed = self.expected_in - 1;
        match self.journal.get_mut(self.live_ord) {
            Some((seq, bytes)) if seq == next => {
                if bytes.len() > out.len() {
                    return Item::NoRoom;
                }
                // Refresh the acknowledgement before the first send; resends then repeat these
                // exact bytes.
                bytes[offset::LAST_PROCESSED..offset::LAST_PROCESSED + 8]
                    .copy_from_slice(&last_processed.to_le_bytes());
                out[..bytes.len()].copy_from_slice(bytes);
                let len = bytes.len();
                self.live_ord += 1;
                self.sent_through = seq;
                c.incr(Counter::MessagesSent);
                Item::Wrote { len, fresh: true }
            }
            _ => {
                // Numbers are handed out to the control queue or the journal only, in order.
                debug_assert!(false, "live output out of order at {next}");
                Item::Done
            }
        }
    }

    fn next_resend_item(
        &mut self,
        now: Timestamp,
        mut r: Resend,
        out: &mut [u8],
        c: &mut Counters,
    ) -> Item {
        if r.next > r.to {
            self.resend = None;
            if let Some(t) = self.resend_started.take() {
                self.resend_done = Some(now.saturating_since(t));
            }
            return Item::Wrote { len: 0, fresh: false };
        }
        if r.ord < self.journal.head() {
            // Live traffic evicted a message this resend still needs.
            self.resend = None;
            self.window_exceeded(now, c);
            return Item::Wrote { len: 0, fresh: false };
        }
        let item = match self.journal.seq_at(r.ord) {
            Some(seq) if seq == r.next => {
                let Some((_, bytes)) = self.journal.get_mut(r.ord) else { return Item::Done };
                if bytes.len() > out.len() {
                    return Item::NoRoom;
                }
                bytes[offset::FLAGS] |= FLAG_RESEND;
                out[..bytes.len()].copy_from_slice(bytes);
                let len = bytes.len();
                r.next += 1;
                r.ord += 1;
                c.incr(Counter::MessagesResent);
                Item::Wrote { len, fresh: false }
            }
            other => {
                let run_end = match other {
                    Some(seq) => (seq - 1).min(r.to),
                    None => r.to,
                };
                let body = Body::GapFill { new_seq_num: run_end + 1 };
                let Some(len) = self.write(now, out, r.next, FLAG_RESEND, body) else {
                    return Item::NoRoom;
                };
                r.next = run_end + 1;
                c.incr(Counter::GapFillsSent);
                Item::Wrote { len, fresh: true }
            }
        };
        self.resend = Some(r);
        item
    }
}

enum Item {
    Wrote { len: usize, fresh: bool },
    Last { len: usize },
    NoRoom,
    Done,
}

/// Counts a decode error under its drop reason.
pub(crate) fn count_decode_error(e: DecodeError, c: &mut Counters) {
    let counter = match e.reject_reason() {
        RejectReason::InvalidProtocol => Counter::DropInvalidProtocol,
        RejectReason::UnknownMessageType => Counter::DropUnknownType,
        RejectReason::InvalidLength => Counter::DropInvalidLength,
        _ => Counter::DropInvalidField,
    };
    c.incr(counter);
}

const _: () = assert!(CONTROL_CAP >= 4);
const _: () = assert!(DATAGRAM_PREFIX_LEN == 8);
