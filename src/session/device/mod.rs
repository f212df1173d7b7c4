//! The device side of a session (DESIGN.md §2): the 4-packet UDP handshake with retries, Get
//! Device Config, logon (new or resume), heartbeats, retransmission of unacknowledged messages
//! (UDP), gap detection with one ResendRequest at a time, and logout.
//!
//! Call order, like the gateway side (STYLE.md rule 2): `connect` → `handle_datagram` /
//! `handle_frame` / `handle_timeout` → `poll_event` (until `None`, after *each* `handle_*` call)
//! → `poll_transmit` (until `None`) → `poll_timeout`.
//!
//! Events come out of a preallocated, bounded queue ([`events`]): application bodies are copied
//! into it, so an event borrows the device, not the input. One input's events always fit in an
//! empty queue; a caller that does not drain between inputs is caught by a debug assertion, and
//! in release a message that finds no room is not consumed but asked for again (counted in
//! [`DeviceStats::event_queue_full`]): delayed, never lost.
//!
//! Every state change goes through the transition table in [`state`] (snapshot in
//! `src/session/snapshots/device_transitions.txt`).

use core::time::Duration;

use super::error::{Misuse, SendError};
use super::state::Transport;
use super::timer::{Timer, TimerTable};
use crate::journal::{Journal, JournalConfig};
use crate::protocol::{
    Body, Datagram, DeviceUid, FLAG_RESEND, Header, Message, Password, Username, offset,
    write_prefix,
};
use crate::time::Timestamp;

mod events;
pub mod servers;
mod state;

use events::EventQueue;
pub use state::{DeviceInput, DeviceState, EndReason};

/// Settings of a simulated or real device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceConfig {
    /// UDP (handshake first) or TCP (LogonRequest first).
    pub transport: Transport,
    /// `deviceUid` (UDP).
    pub device_uid: DeviceUid,
    /// Logon username.
    pub username: Username,
    /// Logon password.
    pub password: Password,
    /// First re-send delay for unacknowledged messages (`udp.retransmit_ms`, 200 ms).
    pub retransmit_min: Duration,
    /// Largest re-send delay after doubling (2000 ms).
    pub retransmit_max: Duration,
    /// Handshake packet retry period (500 ms).
    pub handshake_retry: Duration,
    /// Give up on the handshake or logon after this ("host timeout", 5 s).
    pub handshake_timeout: Duration,
    /// Heartbeat interval until LogonResponse says otherwise (5 s).
    pub heartbeat_default: Duration,
    /// Largest datagram (1400 bytes).
    pub max_datagram: usize,
    /// Retransmit buffer: unacknowledged messages kept (`messages_per_session`).
    pub buffer: JournalConfig,
    /// Application bytes one input may bring into the event queue ([`events`]); default
    /// `max_datagram`, so that one input's events always fit. A lean fleet (idle devices, a
    /// handshake storm: no application traffic) sets it small to save memory per device; an
    /// input bringing more application bytes than this is then delayed (asked for again by
    /// ResendRequest), never lost. The queue always holds at least one `buffer.slot_bytes`.
    pub event_bytes: usize,
}

impl DeviceConfig {
    /// Defaults for a device with this uid, username and password.
    pub fn new(transport: Transport, uid: &[u8], username: &[u8], password: &[u8]) -> Self {
        Self {
            transport,
            device_uid: DeviceUid::new(uid).unwrap_or_default(),
            username: Username::new(username).unwrap_or_default(),
            password: Password::new(password).unwrap_or_default(),
            retransmit_min: Duration::from_millis(200),
            retransmit_max: Duration::from_millis(2000),
            handshake_retry: Duration::from_millis(500),
            handshake_timeout: Duration::from_secs(5),
            heartbeat_default: Duration::from_secs(5),
            max_datagram: 1400,
            buffer: JournalConfig { messages_per_session: 256, slot_bytes: 256 },
            event_bytes: 1400,
        }
    }
}

/// Where a device transmit goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceDest {
    /// The gateway's handshake port (3006).
    Handshake,
    /// The session port named in ConnectionAccept.
    SessionPort(u16),
    /// The TCP stream.
    Stream,
}

/// One buffer for the device to send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct DeviceTransmit {
    /// Destination.
    pub dest: DeviceDest,
    /// Bytes at the start of the caller's buffer.
    pub len: usize,
}

/// Something that happened, taken with [`Device::poll_event`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent<'a> {
    /// RegistrationAccept.
    Registered {
        /// The session id.
        session_id: u64,
        /// An existing session was resumed.
        resumed: bool,
    },
    /// LogonResponse.
    LoggedOn {
        /// Heartbeat interval the gateway expects.
        heartbeat_interval_s: i32,
        /// The last of our messages the gateway processed.
        last_processed: i64,
    },
    /// Our stream state was discarded (new session where a resume was hoped for): this many
    /// unacknowledged messages are lost.
    StreamReset {
        /// Unacknowledged messages dropped.
        unacked_dropped: usize,
    },
    /// An application message, in order, exactly once.
    App {
        /// Its sequence number.
        seq: i64,
        /// `messageTypeId`.
        type_id: u16,
        /// Body.
        body: &'a [u8],
        /// `sendTime` from the header.
        send_time: i64,
        /// The resend flag.
        resent: bool,
    },
    /// A Reject for one of our messages.
    Rejected {
        /// The refused message.
        ref_seq_num: i64,
        /// Reason.
        reason: u8,
    },
    /// The session ended.
    Ended {
        /// Why.
        reason: EndReason,
        /// LoggedOut reason, if any.
        text: &'a [u8],
    },
}

impl<'a> DeviceEvent<'a> {
    /// A host message (DESIGN.md §1.6): HostData from the host (401) or HostStatus (402), as
    /// an application event carries it; `None` for other events and malformed host bodies.
    /// (A device bridged to a host also acknowledges host output promptly: see
    /// `HOST_ACK_DELAY`.)
    pub fn host(&self) -> Option<crate::protocol::HostMessage<'a>> {
        match *self {
            Self::App { type_id, body, .. } => {
                crate::protocol::HostMessage::decode(type_id, body).ok().flatten()
            }
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Outstanding {
    /// Highest number seen beyond the gap.
    high: i64,
}

/// Counters of one device (the load generator sums them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Messages re-sent after a timeout.
    pub retransmits: u64,
    /// ResendRequests sent.
    pub resend_requests: u64,
    /// Inbound duplicates dropped.
    pub duplicates: u64,
    /// Inbound out-of-order messages dropped.
    pub out_of_order: u64,
    /// GapFills applied.
    pub gap_fills: u64,
    /// Malformed inbound frames.
    pub malformed: u64,
    /// Messages not consumed because the event queue had no room (the caller did not drain
    /// it): asked for again by ResendRequest. Also events other than messages dropped then.
    pub event_queue_full: u64,
}

/// One device. See the module docs for the call order.
#[derive(Debug)]
pub struct Device {
    cfg: DeviceConfig,
    state: DeviceState,
    timers: TimerTable,
    wall_offset_ns: i64,
    // Handshake.
    nonce: u64,
    cookie: [u8; 32],
    session_port: u16,
    session_id: u64,
    resumed: bool,
    conn_request_pending: bool,
    reg_request_pending: bool,
    config_reply: Option<i64>,
    config: [u8; 255],
    config_len: u8,
    // Logon.
    logon_pending: bool,
    logon_resend: bool,
    /// The LogonRequest of this attach went out: only then is a LogonResponse its answer.
    logon_sent: bool,
    reset_next_logon: bool,
    has_stream: bool,
    /// Host output (DESIGN.md §1.6) arrived since the last sequenced message: acknowledge it
    /// within [`HOST_ACK_DELAY`], so the gateway's window to the host reopens.
    ack_owed: bool,
    heartbeat: Duration,
    // Outbound.
    next_out: i64,
    acked: i64,
    unacked: Journal,
    live_ord: u64,
    rtx_ord: u64,
    rto: Duration,
    last_sent: Timestamp,
    // Inbound.
    expected_in: i64,
    last_heard: Timestamp,
    outstanding: Option<Outstanding>,
    awaiting_replies: u32,
    test_corr: i64,
    stats: DeviceStats,
    events: EventQueue,
}

/// Places in the retransmit buffer kept for session messages.
const SESSION_RESERVE: usize = 4;

/// How soon a device acknowledges host output it received (with a Heartbeat when it has
/// nothing else to send): the gateway reads a host only as far as the device has acknowledged
/// a journal's worth (the `udp.ack_delay_ms` default, mirrored).
pub(super) const HOST_ACK_DELAY: Duration = Duration::from_millis(20);

impl Device {
    /// A device with its retransmit buffer allocated.
    pub fn new(cfg: DeviceConfig) -> Self {
        Self {
            cfg,
            state: DeviceState::Idle,
            timers: TimerTable::default(),
            wall_offset_ns: 0,
            nonce: 0,
            cookie: [0; 32],
            session_port: 0,
            session_id: 0,
            resumed: false,
            conn_request_pending: false,
            reg_request_pending: false,
            config_reply: None,
            config: [0; 255],
            config_len: 0,
            logon_pending: false,
            logon_resend: false,
            logon_sent: false,
            reset_next_logon: true,
            has_stream: false,
            ack_owed: false,
            heartbeat: cfg.heartbeat_default,
            next_out: 1,
            acked: 0,
            unacked: Journal::new(cfg.buffer),
            live_ord: 0,
            rtx_ord: 0,
            rto: cfg.retransmit_min,
            last_sent: Timestamp::ZERO,
            expected_in: 1,
            last_heard: Timestamp::ZERO,
            outstanding: None,
            awaiting_replies: 0,
            test_corr: 0,
            stats: DeviceStats::default(),
            events: EventQueue::new(cfg.event_bytes.max(cfg.buffer.slot_bytes)),
        }
    }

    /// Sets the device config string sent in DeviceConfig (printable ASCII, ≤ 255 bytes).
    pub fn set_device_config(&mut self, config: &[u8]) {
        let n = config.len().min(255);
        self.config[..n].copy_from_slice(&config[..n]);
        self.config_len = n as u8;
    }

    /// Sets the offset from `now` to Unix-epoch nanoseconds, for `sendTime`.
    pub fn set_wall_offset(&mut self, ns: i64) {
        self.wall_offset_ns = ns;
    }

    /// The settings.
    pub fn config(&self) -> &DeviceConfig {
        &self.cfg
    }

    /// The state.
    pub fn state(&self) -> DeviceState {
        self.state
    }

    /// The session id once registered (UDP).
    pub fn session_id(&self) -> u64 {
        self.session_id
    }

    /// Next number this device will use.
    pub fn next_out(&self) -> i64 {
        self.next_out
    }

    /// Next number expected from the gateway.
    pub fn expected_in(&self) -> i64 {
        self.expected_in
    }

    /// Messages sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        self.unacked.len()
    }

    /// Counters.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// The earliest deadline.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    /// The next event, oldest first. Drain after each `handle_*` call (see the module docs);
    /// an event's bodies borrow the device until the next call.
    pub fn poll_event(&mut self) -> Option<DeviceEvent<'_>> {
        self.events.pop()
    }

    /// Applies `input` through the transition table; false (state unchanged) if the table does
    /// not allow it in the current state.
    fn step(&mut self, input: DeviceInput) -> bool {
        match self.state.on(input) {
            Ok(next) => {
                self.state = next;
                true
            }
            Err(_) => false,
        }
    }

    /// Applies an input the device itself decided on: the table must allow it.
    fn transition(&mut self, input: DeviceInput) {
        let ok = self.step(input);
        debug_assert!(ok, "device: {input:?} in {:?} is not in the table", self.state);
    }

    /// Queues an event that is not a message (see [`events`]).
    fn emit(&mut self, e: DeviceEvent<'_>) {
        if !self.events.push(&e) {
            self.stats.event_queue_full += 1;
            debug_assert!(false, "device event queue full: drain poll_event after each input");
        }
    }

    fn expect_drained(&self) {
        debug_assert!(
            self.events.is_empty(),
            "device events not drained: call poll_event until None after each handle_* call"
        );
    }

    /// Starts (or restarts) a session. `nonce` must be new for each UDP handshake. With
    /// `reset` the logon discards old state (resetSeqNum = 1); without it, a device that had a
    /// session asks to resume it.
    pub fn connect(&mut self, now: Timestamp, nonce: u64, reset: bool) {
        self.timers.stop_all();
        self.nonce = nonce;
        self.reset_next_logon = reset || !self.has_stream;
        self.outstanding = None;
        self.config_reply = None;
        self.logon_pending = false;
        self.events.clear();
        self.timers.set(Timer::Deadline, now + self.cfg.handshake_timeout);
        self.transition(DeviceInput::Connect(self.cfg.transport));
        match self.cfg.transport {
            Transport::Udp => {
                self.conn_request_pending = true;
                self.timers.set(Timer::Retry, now + self.cfg.handshake_retry);
            }
            Transport::Tcp => self.begin_logon(now),
        }
    }

    /// The transport went away (TCP closed); state is kept for a later `connect`.
    pub fn transport_lost(&mut self) {
        self.timers.stop_all();
        self.transition(DeviceInput::TransportLost);
    }

    /// Sends LogoutRequest; the session ends on LoggedOut.
    pub fn logout(&mut self, now: Timestamp) {
        if self.state.on(DeviceInput::Logout).is_ok()
            && self.push_sequenced(now, Body::LogoutRequest { reason: b"bye" })
        {
            self.transition(DeviceInput::Logout);
        }
    }

    /// Queues an application message (type ≥ 100). With `expect_reply`, a reply that does not
    /// come within the retransmit time triggers a TestRequest (lost-tail detection).
    pub fn send_app(
        &mut self,
        now: Timestamp,
        type_id: u16,
        body: &[u8],
        expect_reply: bool,
    ) -> Result<i64, SendError> {
        if type_id < crate::protocol::APP_TYPE_MIN {
            return Err(SendError::ApiMisuse(Misuse::InvalidType));
        }
        if self.state != DeviceState::Active {
            return Err(SendError::NotActive);
        }
        if crate::protocol::align8(crate::protocol::HEADER_LEN + body.len())
            > self.unacked.slot_bytes()
        {
            return Err(SendError::ApiMisuse(Misuse::TooLarge));
        }
        if self.unacked.len() + SESSION_RESERVE >= self.unacked.capacity() {
            return Err(SendError::Backpressure);
        }
        let seq = self.next_out;
        if !self.push_sequenced(now, Body::App { type_id, body }) {
            return Err(SendError::Backpressure);
        }
        if expect_reply {
            self.awaiting_replies += 1;
            self.timers.set_earliest(Timer::ReplyWait, now + self.rto);
        }
        Ok(seq)
    }

    /// Numbers, buffers and queues a sequenced message.
    fn push_sequenced(&mut self, now: Timestamp, body: Body<'_>) -> bool {
        if self.unacked.is_full() {
            return false;
        }
        let seq = self.next_out;
        let msg = self.msg(now, seq, 0, body);
        // Its header acknowledges everything received so far.
        self.ack_owed = false;
        let len = msg.encoded_len();
        if self
            .unacked
            .append_with(seq, len, |dst| {
                let _ = msg.encode(dst);
            })
            .is_err()
        {
            return false;
        }
        self.next_out += 1;
        true
    }

    fn msg<'a>(&self, now: Timestamp, seq: i64, flags: u8, body: Body<'a>) -> Message<'a> {
        super::outgoing(now, self.wall_offset_ns, self.expected_in, seq, flags, body)
    }

    /// Queues the LogonRequest (the state is already `LoggingOn`).
    fn begin_logon(&mut self, now: Timestamp) {
        debug_assert_eq!(self.state, DeviceState::LoggingOn);
        if self.reset_next_logon {
            self.unacked.reset();
            self.next_out = 1;
            self.acked = 0;
            self.expected_in = 1;
            self.live_ord = 0;
            self.rtx_ord = 0;
        }
        self.logon_pending = true;
        self.logon_resend = false;
        self.logon_sent = false;
        self.timers.set(Timer::Retry, now + self.cfg.retransmit_min);
        self.timers.set(Timer::Deadline, now + self.cfg.handshake_timeout);
    }

    /// A UDP datagram from the gateway (either port). Then drain [`Self::poll_event`].
    pub fn handle_datagram(&mut self, now: Timestamp, data: &[u8]) {
        self.expect_drained();
        let Ok(dg) = Datagram::parse(data) else {
            self.stats.malformed += 1;
            return;
        };
        if dg.session_id != 0 && dg.session_id != self.session_id {
            self.stats.malformed += 1;
            return;
        }
        for frame in dg.frames() {
            let Ok(frame) = frame else {
                self.stats.malformed += 1;
                return;
            };
            self.on_frame(now, frame);
        }
    }

    /// One frame from the gateway (a TCP frame, or one message of a datagram). Then drain
    /// [`Self::poll_event`].
    pub fn handle_frame(&mut self, now: Timestamp, frame: &[u8]) {
        self.expect_drained();
        self.on_frame(now, frame);
    }

    fn on_frame(&mut self, now: Timestamp, frame: &[u8]) {
        let Ok(msg) = Message::decode_frame(frame) else {
            self.stats.malformed += 1;
            return;
        };
        if matches!(self.state, DeviceState::Idle | DeviceState::Ended(_)) {
            return;
        }
        self.last_heard = now;
        let h = msg.header;
        match msg.body {
            Body::ConnectionAccept { session_port, client_nonce, cookie, .. } => {
                if client_nonce == self.nonce && self.step(DeviceInput::ConnectionAccepted) {
                    self.cookie = cookie;
                    self.session_port = session_port;
                    self.conn_request_pending = false;
                    self.reg_request_pending = true;
                    self.timers.set(Timer::Retry, now + self.cfg.handshake_retry);
                }
            }
            Body::ConnectionReject { reason, .. } => {
                self.end(EndReason::ConnectionRejected(reason), b"");
            }
            Body::RegistrationAccept { session_id, resumed } => {
                if self.step(DeviceInput::Registered) {
                    self.session_id = session_id;
                    self.resumed = resumed;
                    self.reg_request_pending = false;
                    self.timers.stop(Timer::Retry);
                    if !resumed && self.has_stream && !self.reset_next_logon {
                        // The gateway kept nothing: start over, and say what was lost.
                        self.reset_next_logon = true;
                        let unacked_dropped = self.unacked.len();
                        self.emit(DeviceEvent::StreamReset { unacked_dropped });
                    }
                    self.emit(DeviceEvent::Registered { session_id, resumed });
                }
            }
            Body::RegistrationReject { reason: 1 | 2, .. } => {
                // Bad or expired cookie: start the handshake again.
                if self.step(DeviceInput::CookieRefused) {
                    self.reg_request_pending = false;
                    self.conn_request_pending = true;
                }
            }
            Body::RegistrationReject { reason, .. } => {
                self.end(EndReason::RegistrationRejected(reason), b"");
            }
            Body::GetDeviceConfig { correlation_id } => {
                if self.step(DeviceInput::ConfigRequested) {
                    self.begin_logon(now);
                }
                if matches!(self.state, DeviceState::LoggingOn | DeviceState::Active) {
                    self.config_reply = Some(correlation_id);
                }
            }
            Body::LoggedOut { reason } => {
                // Terminal whatever its number: a LoggedOut beyond a gap must still be seen.
                self.end(EndReason::LoggedOut, reason);
            }
            // The last number, i64::MAX, has no successor (a gateway cannot have sent 2^63
            // messages): taking it would overflow the next expected number.
            _ if h.seq == 0 || h.seq == i64::MAX => self.stats.malformed += 1,
            body => self.on_sequenced(now, h, body),
        }
    }

    fn on_sequenced(&mut self, now: Timestamp, h: Header, body: Body<'_>) {
        self.on_ack(now, h.last_processed);
        if let Body::LogonResponse { heartbeat_interval_s } = body {
            // Not before our LogonRequest went out: a LogonResponse of an earlier attach
            // (delayed, same session id on a resume) is not the answer to this one.
            if self.logon_sent && self.step(DeviceInput::LogonAccepted) {
                self.logged_on(now, h, heartbeat_interval_s);
                return;
            }
        }
        if !self.state.is_logged_on() {
            return;
        }
        self.timers.set(Timer::TestRequest, now + self.heartbeat.mul_f64(1.5));
        self.timers.stop(Timer::Liveness);
        self.sequence(now, h, body);
    }

    fn sequence(&mut self, now: Timestamp, h: Header, body: Body<'_>) {
        if h.seq < self.expected_in {
            match body {
                Body::GapFill { new_seq_num } if new_seq_num > self.expected_in => {
                    self.expected_in = new_seq_num;
                    self.stats.gap_fills += 1;
                    self.progress(now);
                }
                _ => self.stats.duplicates += 1,
            }
            return;
        }
        if h.seq > self.expected_in {
            self.stats.out_of_order += 1;
            match &mut self.outstanding {
                Some(o) => o.high = o.high.max(h.seq),
                None => self.request_resend(now, h.seq),
            }
            return;
        }
        // A message whose event finds no room is not consumed: as if it had not arrived, it
        // is asked for again (see the module docs).
        let room = match body {
            Body::App { type_id, body } => {
                self.events.push_app(h.seq, type_id, body, h.send_time, h.is_resend())
            }
            Body::Reject { ref_seq_num, reason, .. } => {
                self.events.push_rejected(ref_seq_num, reason)
            }
            _ => true,
        };
        if !room {
            self.stats.event_queue_full += 1;
            match &mut self.outstanding {
                Some(o) => o.high = o.high.max(h.seq),
                None => self.request_resend(now, h.seq),
            }
            return;
        }
        self.expected_in += 1;
        match body {
            Body::GapFill { new_seq_num } => {
                self.expected_in = self.expected_in.max(new_seq_num);
                self.stats.gap_fills += 1;
            }
            Body::TestRequest { correlation_id } => {
                self.push_sequenced(now, Body::Heartbeat { correlation_id });
            }
            // Its event is queued above.
            Body::App { .. } if self.awaiting_replies > 0 => {
                self.awaiting_replies -= 1;
                if self.awaiting_replies == 0 {
                    self.timers.stop(Timer::ReplyWait);
                } else {
                    self.timers.set(Timer::ReplyWait, now + self.rto);
                }
            }
            _ => {}
        }
        if matches!(body, Body::App { type_id: crate::protocol::HOST_DATA_FROM_HOST, .. })
            && !self.ack_owed
        {
            self.ack_owed = true;
            self.timers.set(Timer::Heartbeat, now + HOST_ACK_DELAY);
        }
        self.progress(now);
    }

    fn progress(&mut self, now: Timestamp) {
        if let Some(o) = self.outstanding {
            if self.expected_in > o.high {
                self.outstanding = None;
                self.timers.stop(Timer::ResendRetry);
            } else {
                self.timers.set(Timer::ResendRetry, now + self.rto);
            }
        }
    }

    fn request_resend(&mut self, now: Timestamp, high: i64) {
        let from = self.expected_in;
        if self.push_sequenced(now, Body::ResendRequest { from, to: 0 }) {
            self.stats.resend_requests += 1;
            self.outstanding = Some(Outstanding { high });
            self.timers.set(Timer::ResendRetry, now + self.rto);
        }
    }

    /// LogonResponse (the state is already `Active`).
    fn logged_on(&mut self, now: Timestamp, h: Header, hb: i32) {
        self.logon_pending = false;
        self.has_stream = true;
        self.heartbeat = Duration::from_secs(u64::try_from(hb.max(1)).unwrap_or(5));
        self.timers.stop(Timer::Retry);
        self.timers.stop(Timer::Deadline);
        // H after our last send, the LogonRequest (DESIGN.md §2 rule 6), not H after its
        // answer came: the gateway's own first Heartbeat is due H after its LogonResponse, so a
        // device counting from the answer's arrival always came a round trip later and got
        // both that Heartbeat and the acknowledgement of its own (1.5 datagrams per heartbeat
        // over a 60 s hold of a million devices, issue 11).
        let due = self.last_sent + self.heartbeat;
        self.timers.set(Timer::Heartbeat, if due > now { due } else { now });
        self.timers.set(Timer::TestRequest, now + self.heartbeat.mul_f64(1.5));
        // Continue at L + 1: everything still held after L goes again, flagged as resent.
        self.live_ord = self.live_ord.max(self.unacked.head());
        self.rtx_ord = self.unacked.head();
        if !self.unacked.is_empty() {
            self.timers.set(Timer::Retransmit, now + self.rto);
        }
        self.emit(DeviceEvent::LoggedOn {
            heartbeat_interval_s: hb,
            last_processed: h.last_processed,
        });
        match h.seq.cmp(&self.expected_in) {
            core::cmp::Ordering::Equal => self.expected_in += 1,
            core::cmp::Ordering::Greater => {
                // Missed messages while away (or a lost tail): ask for them.
                self.request_resend(now, h.seq);
            }
            core::cmp::Ordering::Less => {}
        }
    }

    fn on_ack(&mut self, now: Timestamp, last_processed: i64) {
        // Numbered but not yet sent: from `live_ord` to the tail, one number each. An
        // acknowledgement beyond what was sent (a faulty or forged gateway) must not release
        // them: they would never be sent, and the gateway would wait for them forever.
        let unsent = (self.unacked.tail() - self.live_ord) as i64;
        let last_processed = last_processed.min(self.next_out - 1 - unsent);
        if last_processed <= self.acked {
            return;
        }
        self.acked = last_processed;
        if self.unacked.release_through(last_processed) > 0 {
            self.rto = self.cfg.retransmit_min;
            self.rtx_ord = self.rtx_ord.max(self.unacked.head());
            self.live_ord = self.live_ord.max(self.unacked.head());
            if self.unacked.is_empty() || !self.state.is_logged_on() {
                self.timers.stop(Timer::Retransmit);
            } else {
                self.timers.set(Timer::Retransmit, now + self.rto);
            }
        }
    }

    /// Ends the session if the table allows `reason` in the current state (a late reject is
    /// ignored).
    fn end(&mut self, reason: EndReason, text: &[u8]) {
        if !self.step(DeviceInput::End(reason)) {
            return;
        }
        self.timers.stop_all();
        self.conn_request_pending = false;
        self.reg_request_pending = false;
        self.logon_pending = false;
        self.config_reply = None;
        self.emit(DeviceEvent::Ended { reason, text });
    }

    /// Fires expired timers; a no-op when called early. Then drain [`Self::poll_event`].
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.expect_drained();
        self.fire_timers(now);
        // A timer left over from another state has nothing to do: disarm it so the driver is
        // never asked to wake for it again.
        for t in Timer::VALUES {
            if self.timers.is_expired(t, now) {
                self.timers.stop(t);
            }
        }
    }

    fn fire_timers(&mut self, now: Timestamp) {
        if self.timers.take_expired(Timer::Deadline, now) && self.state.is_connecting() {
            self.end(EndReason::HostTimeout, b"host timeout");
            return;
        }
        if self.timers.take_expired(Timer::Retry, now) {
            match self.state {
                DeviceState::Connecting => self.conn_request_pending = true,
                DeviceState::Registering => self.reg_request_pending = true,
                DeviceState::LoggingOn => {
                    self.logon_pending = true;
                    self.logon_resend = true;
                }
                _ => {}
            }
            let period = if self.state == DeviceState::LoggingOn {
                self.cfg.retransmit_min
            } else {
                self.cfg.handshake_retry
            };
            if matches!(
                self.state,
                DeviceState::Connecting | DeviceState::Registering | DeviceState::LoggingOn
            ) {
                self.timers.set(Timer::Retry, now + period);
            }
        }
        if !self.state.is_logged_on() {
            return;
        }
        if self.timers.take_expired(Timer::Liveness, now) {
            self.end(EndReason::Lost, b"gateway silent");
            return;
        }
        if self.timers.take_expired(Timer::TestRequest, now) {
            self.test_corr += 1;
            self.push_sequenced(now, Body::TestRequest { correlation_id: self.test_corr });
            // A further H of silence after the TestRequest (DESIGN.md §2 rule 6): from now, not
            // from `last_heard`, which a late pass has left behind (a deadline in the past was
            // disarmed below as stale, and the peer was never found lost).
            self.timers.set(Timer::Liveness, now + self.heartbeat);
        }
        if self.timers.take_expired(Timer::Retransmit, now) && !self.unacked.is_empty() {
            if self.cfg.transport == Transport::Udp {
                // Go back to the oldest unacknowledged message.
                self.rtx_ord = self.unacked.head();
                self.rto = (self.rto * 2).min(self.cfg.retransmit_max);
            }
            self.timers.set(Timer::Retransmit, now + self.rto);
        }
        if self.timers.take_expired(Timer::ResendRetry, now) && self.outstanding.is_some() {
            self.outstanding = None;
            let high = self.expected_in;
            self.request_resend(now, high);
        }
        if self.timers.take_expired(Timer::ReplyWait, now) && self.awaiting_replies > 0 {
            self.test_corr += 1;
            self.push_sequenced(now, Body::TestRequest { correlation_id: self.test_corr });
            self.timers.set(Timer::ReplyWait, now + self.rto);
        }
        if self.timers.take_expired(Timer::Heartbeat, now) {
            if (self.ack_owed || now.saturating_since(self.last_sent) >= self.heartbeat)
                && self.live_ord == self.unacked.tail()
            {
                self.push_sequenced(now, Body::Heartbeat { correlation_id: 0 });
            }
            // Next check: H after the last send. (Re-arming at `max(last_sent, now) + H`
            // postponed it to now + H whenever something had been sent since the timer was
            // armed, so a device that stopped sending stayed silent for up to 2 H and the
            // gateway had to probe it with TestRequest: DESIGN.md §2 rule 6.)
            let due = self.last_sent + self.heartbeat;
            self.timers.set(Timer::Heartbeat, if due > now { due } else { now + self.heartbeat });
        }
    }

    /// Writes the next datagram or stream chunk; `None` if nothing is due.
    pub fn poll_transmit(&mut self, now: Timestamp, buf: &mut [u8]) -> Option<DeviceTransmit> {
        let udp = self.cfg.transport == Transport::Udp;
        if udp && (self.conn_request_pending || self.reg_request_pending) {
            let (dest, body) = if self.conn_request_pending {
                self.conn_request_pending = false;
                let body = Body::ConnectionRequest {
                    device_uid: self.cfg.device_uid,
                    client_nonce: self.nonce,
                    client_version: 1,
                };
                (DeviceDest::Handshake, body)
            } else {
                self.reg_request_pending = false;
                let body = Body::RegistrationRequest {
                    device_uid: self.cfg.device_uid,
                    client_nonce: self.nonce,
                    cookie: self.cookie,
                };
                (DeviceDest::SessionPort(self.session_port), body)
            };
            let start = write_prefix(buf, 0);
            let n = Message { header: Header::default(), body }.encode(&mut buf[start..]).ok()?;
            return Some(DeviceTransmit { dest, len: start + n });
        }
        let (start, room, dest) = if udp {
            (
                write_prefix(buf, self.session_id),
                buf.len().min(self.cfg.max_datagram),
                DeviceDest::SessionPort(self.session_port),
            )
        } else {
            (0, buf.len(), DeviceDest::Stream)
        };
        let mut w = start;
        if let Some(corr) = self.config_reply {
            let body = Body::DeviceConfig {
                correlation_id: corr,
                config: &self.config[..usize::from(self.config_len)],
            };
            if let Ok(n) = (Message { header: Header::default(), body }).encode(&mut buf[w..room]) {
                w += n;
                self.config_reply = None;
            }
        }
        if self.logon_pending {
            let seq = if self.reset_next_logon { 1 } else { self.next_out };
            let flags = if self.logon_resend { FLAG_RESEND } else { 0 };
            let body = Body::LogonRequest {
                username: self.cfg.username,
                password: self.cfg.password,
                reset_seq_num: self.reset_next_logon,
            };
            if let Ok(n) = self.msg(now, seq, flags, body).encode(&mut buf[w..room]) {
                w += n;
                self.logon_pending = false;
                self.logon_sent = true;
                if self.reset_next_logon {
                    self.next_out = self.next_out.max(2);
                }
            }
        }
        if self.state.is_logged_on() {
            w = self.fill_sequenced(now, buf, w, room);
        }
        if w == start {
            return None;
        }
        self.last_sent = now;
        Some(DeviceTransmit { dest, len: w })
    }

    /// Copies re-sends (from `rtx_ord`) then first sends (from `live_ord`) into `buf[w..room]`.
    fn fill_sequenced(
        &mut self,
        now: Timestamp,
        buf: &mut [u8],
        mut w: usize,
        room: usize,
    ) -> usize {
        let ack = self.expected_in - 1;
        while self.rtx_ord < self.live_ord {
            let Some((_, bytes)) = self.unacked.get_mut(self.rtx_ord) else { break };
            if w + bytes.len() > room {
                return w;
            }
            bytes[offset::FLAGS] |= FLAG_RESEND;
            bytes[offset::LAST_PROCESSED..offset::LAST_PROCESSED + 8]
                .copy_from_slice(&ack.to_le_bytes());
            buf[w..w + bytes.len()].copy_from_slice(bytes);
            w += bytes.len();
            self.rtx_ord += 1;
            self.stats.retransmits += 1;
        }
        while self.live_ord < self.unacked.tail() {
            let Some((_, bytes)) = self.unacked.get_mut(self.live_ord) else { break };
            if w + bytes.len() > room {
                break;
            }
            bytes[offset::LAST_PROCESSED..offset::LAST_PROCESSED + 8]
                .copy_from_slice(&ack.to_le_bytes());
            buf[w..w + bytes.len()].copy_from_slice(bytes);
            w += bytes.len();
            self.live_ord += 1;
            self.rtx_ord = self.live_ord;
        }
        let udp = self.cfg.transport == Transport::Udp;
        if udp && !self.unacked.is_empty() && self.timers.get(Timer::Retransmit).is_none() {
            // Armed on the first unacknowledged send, re-armed on progress.
            self.timers.set(Timer::Retransmit, now + self.rto);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Timestamp = Timestamp::from_nanos(1_000_000_000);

    fn frame(seq: i64, flags: u8, body: Body<'_>) -> Vec<u8> {
        frame_with(Header { seq, flags, ..Header::default() }, body)
    }

    /// A frame numbered `seq` acknowledging `last_processed`.
    fn frame_ack(seq: i64, last_processed: i64, body: Body<'_>) -> Vec<u8> {
        frame_with(Header { seq, last_processed, ..Header::default() }, body)
    }

    fn frame_with(header: Header, body: Body<'_>) -> Vec<u8> {
        let msg = Message { header, body };
        let mut out = vec![0u8; msg.encoded_len()];
        let n = msg.encode(&mut out).unwrap();
        out.truncate(crate::protocol::split_frame(&out[..n]).unwrap().0.len());
        out
    }

    /// The gateway's ConnectionAccept to the handshake `connect(NOW, 1, _)` starts.
    fn accept() -> Body<'static> {
        Body::ConnectionAccept {
            session_port: 5000,
            cookie_ttl_ms: 5000,
            client_nonce: 1,
            cookie: [0; 32],
        }
    }

    /// Sequence numbers of everything `dev` sends now.
    fn sent(dev: &mut Device) -> Vec<(i64, bool)> {
        let mut buf = [0u8; 4096];
        let mut out = Vec::new();
        while let Some(t) = dev.poll_transmit(NOW, &mut buf) {
            let skip = if t.dest == DeviceDest::Stream { 0 } else { 8 };
            let mut rest = &buf[skip..t.len];
            while let Ok((f, padded)) = crate::protocol::split_frame(rest) {
                let h = Header::decode(f).unwrap();
                out.push((h.seq, h.is_resend()));
                rest = &rest[padded..];
            }
        }
        out
    }

    /// Takes every pending event; the end reason, if one ended the session.
    fn drain(dev: &mut Device) -> Option<EndReason> {
        let mut ended = None;
        while let Some(e) = dev.poll_event() {
            if let DeviceEvent::Ended { reason, .. } = e {
                ended = Some(reason);
            }
        }
        ended
    }

    /// Found by the `device` fuzz target: a late timer pass disarmed the liveness deadline it
    /// had just set in the past, and a silent gateway was never found lost.
    #[test]
    fn late_timer_pass_still_finds_a_silent_gateway_lost() {
        let mut dev = Device::new(DeviceConfig::new(Transport::Tcp, b"D", b"user", b"pw"));
        dev.connect(NOW, 1, true);
        let _ = sent(&mut dev);
        let mut ended = None;
        let logon = frame_ack(1, 1, Body::LogonResponse { heartbeat_interval_s: 5 });
        dev.handle_frame(NOW, &logon);
        ended = ended.or(drain(&mut dev));
        let late = NOW + Duration::from_secs(20);
        dev.handle_timeout(late);
        ended = ended.or(drain(&mut dev));
        let lost = late + Duration::from_secs(5);
        for _ in 0..100 {
            let Some(t) = dev.poll_timeout().filter(|&t| t <= lost) else { break };
            dev.handle_timeout(t);
            ended = ended.or(drain(&mut dev));
        }
        assert_eq!(ended, Some(EndReason::Lost));
    }

    /// Found by the `device` fuzz target: a GapFill to i64::MAX, then a message with that
    /// number, overflowed the next expected number (a panic with overflow checks, a wrap to a
    /// negative number without).
    #[test]
    fn the_last_sequence_number_is_refused_not_overflowed() {
        let mut dev = Device::new(DeviceConfig::new(Transport::Tcp, b"D", b"user", b"pw"));
        dev.connect(NOW, 1, true);
        let _ = sent(&mut dev);
        dev.handle_frame(NOW, &frame_ack(1, 1, Body::LogonResponse { heartbeat_interval_s: 5 }));
        drain(&mut dev);
        dev.handle_frame(NOW, &frame_ack(2, 1, Body::GapFill { new_seq_num: i64::MAX }));
        assert_eq!(dev.expected_in(), i64::MAX);
        let app = Body::App { type_id: 100, body: b"x" };
        dev.handle_frame(NOW, &frame_ack(i64::MAX, 1, app));
        assert_eq!(dev.expected_in(), i64::MAX);
        assert_eq!(dev.stats().malformed, 1);
    }

    /// Found by the `device` fuzz target: a LogonResponse that arrived before the device had
    /// sent its LogonRequest (from an earlier attach, on a resume with the same session id) was
    /// taken as the answer; the reset LogonRequest was then never sent and the device's next
    /// message took number 1.
    #[test]
    fn logon_response_before_the_logon_request_went_out_is_ignored() {
        let mut dev = Device::new(DeviceConfig::new(Transport::Udp, b"D", b"user", b"pw"));
        dev.connect(NOW, 1, true);
        let _ = sent(&mut dev);
        dev.handle_frame(NOW, &frame(0, 0, accept()));
        let _ = sent(&mut dev);
        let registered = Body::RegistrationAccept { session_id: 7, resumed: true };
        dev.handle_frame(NOW, &frame(0, 0, registered));
        drain(&mut dev);
        // GetDeviceConfig and a stale LogonResponse in the same datagram.
        dev.handle_frame(NOW, &frame(0, 0, Body::GetDeviceConfig { correlation_id: 3 }));
        let stale = frame(4, 0, Body::LogonResponse { heartbeat_interval_s: 5 });
        dev.handle_frame(NOW, &stale);
        assert_eq!(dev.state(), DeviceState::LoggingOn);
        // DeviceConfig (number 0), then the LogonRequest, number 1.
        assert_eq!(sent(&mut dev), [(0, false), (1, false)]);
        // Its answer is taken.
        let answer = frame_ack(1, 1, Body::LogonResponse { heartbeat_interval_s: 5 });
        dev.handle_frame(NOW, &answer);
        assert_eq!(dev.state(), DeviceState::Active);
    }

    /// Found by the `device` fuzz target: an acknowledgement beyond what the device had sent
    /// released messages it had numbered but not sent (here its ResendRequest), so they were
    /// never sent and the next message jumped the gap.
    #[test]
    fn acknowledgement_beyond_what_was_sent_releases_nothing_unsent() {
        let mut dev = Device::new(DeviceConfig::new(Transport::Tcp, b"D", b"user", b"pw"));
        dev.connect(NOW, 1, true);
        assert_eq!(sent(&mut dev), [(1, false)], "LogonRequest");
        // LogonResponse numbered 5: messages 1..=4 are missing, a ResendRequest (2) is queued.
        let logon = frame_ack(5, 1, Body::LogonResponse { heartbeat_interval_s: 5 });
        dev.handle_frame(NOW, &logon);
        drain(&mut dev);
        assert_eq!(dev.next_out(), 3);
        // Before it is sent, a message acknowledging far more than was ever sent.
        let hb = frame_ack(1, 100, Body::Heartbeat { correlation_id: 0 });
        dev.handle_frame(NOW, &hb);
        assert_eq!(dev.unacked(), 1, "the unsent ResendRequest is kept");
        assert_eq!(sent(&mut dev), [(2, false)], "and sent, numbered 2");
    }

    /// A TCP device logged on (LogonResponse numbered 1 taken, its event drained).
    fn logged_on() -> Device {
        let mut dev = Device::new(DeviceConfig::new(Transport::Tcp, b"D", b"user", b"pw"));
        dev.connect(NOW, 1, true);
        let mut buf = [0u8; 4096];
        while dev.poll_transmit(NOW, &mut buf).is_some() {}
        dev.handle_frame(NOW, &frame(1, 0, Body::LogonResponse { heartbeat_interval_s: 5 }));
        assert!(matches!(dev.poll_event(), Some(DeviceEvent::LoggedOn { .. })));
        assert!(dev.poll_event().is_none());
        assert_eq!(dev.state(), DeviceState::Active);
        dev
    }

    #[test]
    fn events_carry_bodies_from_the_device_not_the_input() {
        let mut dev = logged_on();
        let mut f = frame(2, 0, Body::App { type_id: 300, body: b"pushed" });
        dev.handle_frame(NOW, &f);
        f.fill(0); // the input is gone
        match dev.poll_event() {
            Some(DeviceEvent::App { seq: 2, type_id: 300, body, resent: false, .. }) => {
                assert_eq!(body, b"pushed")
            }
            other => panic!("{other:?}"),
        }
        assert!(dev.poll_event().is_none());
        dev.handle_frame(NOW, &frame(3, 0, Body::LoggedOut { reason: b"bye now" }));
        match dev.poll_event() {
            Some(DeviceEvent::Ended { reason: EndReason::LoggedOut, text }) => {
                assert_eq!(text, b"bye now")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(dev.state(), DeviceState::Ended(EndReason::LoggedOut));
    }

    /// A caller that does not drain between inputs: caught by a debug assertion; in release,
    /// the message that finds no room is not consumed but asked for again, so nothing is lost.
    #[test]
    fn an_undrained_queue_delays_messages_and_never_loses_one() {
        let mut dev = logged_on();
        let body = [7u8; 200];
        dev.handle_frame(NOW, &frame(2, 0, Body::App { type_id: 300, body: &body }));
        if cfg!(debug_assertions) {
            let second = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                dev.handle_frame(NOW, &frame(3, 0, Body::App { type_id: 300, body: &body }));
            }));
            assert!(second.is_err(), "debug builds assert that events were drained");
            return;
        }
        // 1400 bytes of bodies fit beside the reserve: seven of 200, the eighth does not.
        for seq in 3..=9 {
            dev.handle_frame(NOW, &frame(seq, 0, Body::App { type_id: 300, body: &body }));
        }
        assert_eq!(dev.stats().event_queue_full, 1);
        assert_eq!(dev.expected_in(), 9, "message 9 was not consumed");
        let seqs: Vec<i64> = std::iter::from_fn(|| match dev.poll_event()? {
            DeviceEvent::App { seq, .. } => Some(seq),
            _ => None,
        })
        .collect();
        assert_eq!(seqs, (2..=8).collect::<Vec<_>>());
        // It asked for it again.
        let mut buf = [0u8; 4096];
        let t = dev.poll_transmit(NOW, &mut buf).expect("ResendRequest");
        let mut rest = &buf[..t.len];
        let mut asked = None;
        while let Ok((f, padded)) = crate::protocol::split_frame(rest) {
            if let Ok(Message { body: Body::ResendRequest { from, to }, .. }) =
                Message::decode_frame(f)
            {
                asked = Some((from, to));
            }
            rest = &rest[padded..];
        }
        assert_eq!(asked, Some((9, 0)));
        dev.handle_frame(NOW, &frame(9, FLAG_RESEND, Body::App { type_id: 300, body: &body }));
        assert!(matches!(dev.poll_event(), Some(DeviceEvent::App { seq: 9, resent: true, .. })));
        assert_eq!(dev.expected_in(), 10);
    }

    #[test]
    fn late_answers_outside_the_table_are_ignored() {
        let mut dev = logged_on();
        dev.handle_frame(NOW, &frame(0, 0, accept()));
        dev.handle_frame(NOW, &frame(0, 0, Body::RegistrationReject { reason: 3, details: b"" }));
        dev.handle_frame(NOW, &frame(0, 0, Body::ConnectionReject { reason: 1, details: b"" }));
        assert_eq!(dev.state(), DeviceState::Active);
        assert!(dev.poll_event().is_none());
    }

    #[test]
    fn host_output_is_acknowledged_within_the_ack_delay_and_read_as_host_messages() {
        let mut dev = logged_on();
        let status = crate::protocol::StatusBuf::new(crate::protocol::HostState::Connected, b"wms");
        dev.handle_frame(NOW, &frame(2, 0, Body::App { type_id: 402, body: status.as_bytes() }));
        dev.handle_frame(NOW, &frame(3, 0, Body::App { type_id: 401, body: b"login: " }));
        let mut got = Vec::new();
        while let Some(e) = dev.poll_event() {
            if let Some(h) = e.host() {
                got.push(format!("{h:?}"));
            }
        }
        assert_eq!(got.len(), 2, "{got:?}");
        assert!(got[0].contains("Connected") && got[1].contains("FromHost"), "{got:?}");
        // Nothing to send yet; within HOST_ACK_DELAY a Heartbeat acknowledges number 3.
        assert!(sent(&mut dev).is_empty(), "nothing owed before the ack delay");
        assert!(dev.poll_timeout().is_some_and(|t| t <= NOW + HOST_ACK_DELAY));
        let later = NOW + HOST_ACK_DELAY;
        dev.handle_timeout(later);
        let mut buf = [0u8; 2048];
        let t = dev.poll_transmit(later, &mut buf).expect("an acknowledgement");
        let (m, _) = Message::decode(&buf[..t.len]).unwrap();
        assert!(matches!(m.body, Body::Heartbeat { correlation_id: 0 }), "{m:?}");
        assert_eq!(m.header.last_processed, 3);
    }
}
