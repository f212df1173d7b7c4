//! Counters: one enum indexes a per-shard `[u64; Counter::COUNT]` (Aeron system counters).
//!
//! Names put units last; the Prometheus name is `fleetgate_` + [`Counter::name`].
#![forbid(unsafe_code)]

macro_rules! counters {
    ($($(#[doc = $doc:literal])* $variant:ident => $name:literal,)*) => {
        /// Everything the sans-IO endpoint counts.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(usize)]
        pub enum Counter {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Counter {
            /// Every counter, in index order.
            pub const VALUES: &'static [Self] = &[$(Self::$variant,)*];
            /// Number of counters.
            pub const COUNT: usize = Self::VALUES.len();

            /// The metric name (snake case, unit last).
            pub const fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)*
                }
            }
        }
    };
}

counters! {
    /// Datagrams received on the session port.
    DatagramsReceived => "datagrams_received_total",
    /// Datagrams produced for sending.
    DatagramsSent => "datagrams_sent_total",
    /// Bytes received (datagrams and TCP frames).
    BytesReceived => "bytes_received_total",
    /// Bytes produced for sending.
    BytesSent => "bytes_sent_total",
    /// Sequenced messages processed in order.
    MessagesReceived => "messages_received_total",
    /// Messages produced for sending (fresh, not resent).
    MessagesSent => "messages_sent_total",
    /// Application messages delivered to the application.
    AppMessagesReceived => "app_messages_received_total",
    /// Application messages journaled for sending.
    AppMessagesSent => "app_messages_sent_total",
    /// Handshakes that created a session.
    HandshakesRegistered => "handshakes_registered_total",
    /// Handshakes that resumed a kept session.
    HandshakesResumed => "handshakes_resumed_total",
    /// Repeated RegistrationRequests answered idempotently.
    HandshakesRepeated => "handshakes_repeated_total",
    /// RegistrationRequests refused: bad cookie.
    HandshakesBadCookie => "handshakes_bad_cookie_total",
    /// RegistrationRequests refused: expired cookie.
    HandshakesCookieExpired => "handshakes_cookie_expired_total",
    /// RegistrationRequests or TCP logons refused: session table full.
    HandshakesServerFull => "handshakes_server_full_total",
    /// RegistrationRequests or logons refused while draining.
    HandshakesDraining => "handshakes_draining_total",
    /// Datagrams dropped: session id unknown.
    DropUnknownSession => "drop_unknown_session_total",
    /// Datagrams dropped: session id 0 where one is required, or non-zero on a handshake.
    DropBadPrefix => "drop_bad_prefix_total",
    /// Frames (on UDP: whole datagrams, rule 12) dropped: protocol id or version.
    DropInvalidProtocol => "drop_invalid_protocol_total",
    /// Frames (on UDP: whole datagrams) dropped: unknown message type.
    DropUnknownType => "drop_unknown_type_total",
    /// Frames (on UDP: whole datagrams) dropped: length, truncation, padding or trailing bytes.
    DropInvalidLength => "drop_invalid_length_total",
    /// Frames (on UDP: whole datagrams) dropped: field values or characters.
    DropInvalidField => "drop_invalid_field_total",
    /// Messages dropped: not allowed in this state or direction (UDP).
    DropNotAllowed => "drop_not_allowed_total",
    /// Messages dropped: duplicate (sequence below expected).
    DropDuplicate => "drop_duplicate_total",
    /// Messages dropped: sequence above expected (UDP; the device retransmits).
    DropOutOfOrder => "drop_out_of_order_total",
    /// Datagrams that arrived from an address other than the session's (dropped).
    DropWrongAddress => "drop_wrong_address_total",
    /// Datagrams dropped whole: larger than `udp.max_datagram` (rule 12).
    DropOversized => "drop_oversized_total",
    /// Reject messages sent.
    RejectsSent => "rejects_sent_total",
    /// LoggedOut messages sent.
    LoggedOutSent => "logged_out_sent_total",
    /// Heartbeats sent.
    HeartbeatsSent => "heartbeats_sent_total",
    /// TestRequests sent.
    TestRequestsSent => "test_requests_sent_total",
    /// GetDeviceConfig messages sent (including re-sends).
    DeviceConfigRequestsSent => "device_config_requests_sent_total",
    /// ResendRequests received and accepted.
    ResendRequests => "resend_requests_total",
    /// ResendRequests that replaced one still under way.
    ResendReplaced => "resend_replaced_total",
    /// Application messages re-sent from the journal.
    MessagesResent => "messages_resent_total",
    /// GapFills sent.
    GapFillsSent => "gap_fills_sent_total",
    /// Resend requests reaching below the journal (LoggedOut and close).
    ResendWindowExceeded => "resend_window_exceeded_total",
    /// Logons accepted.
    LogonsAccepted => "logons_accepted_total",
    /// Logons refused for bad credentials.
    LogonsFailed => "logons_failed_total",
    /// Logons refused without a check: a failure limit held (source, network or username).
    LogonsRateLimited => "logons_rate_limited_total",
    /// Of those, refused because their IPv4 /24 reached its failure limit.
    LogonsNetworkLimited => "logons_network_limited_total",
    /// Of those, refused because their username was being guessed at and they had failed.
    LogonsUsernameLimited => "logons_username_limited_total",
    /// Sources, networks or usernames a limiter table could not track (their set was full of
    /// blocked entries): treated as blocked.
    LimiterUntracked => "limiter_untracked_total",
    /// Logouts at the device's request.
    Logouts => "logouts_total",
    /// Sessions whose peer went silent (TestRequest unanswered).
    SessionsLost => "sessions_lost_total",
    /// Sessions detached (transport lost, state kept).
    SessionsDetached => "sessions_detached_total",
    /// Sessions resumed after a detach or displacement.
    SessionsResumed => "sessions_resumed_total",
    /// Sessions displaced by a newer attach.
    SessionsDisplaced => "sessions_displaced_total",
    /// Newer UDP attaches held pending beside a session until they log on (rule 9).
    AttachesPending => "attaches_pending_total",
    /// Pending attaches that ended without taking the session over: credentials or logon
    /// refused, timed out, replaced by a newer one, or their session ended first.
    AttachesPendingDropped => "attaches_pending_dropped_total",
    /// Detached sessions released after `session.detached_ttl`.
    SessionsExpired => "sessions_expired_total",
    /// Sessions closed because DeviceConfig did not arrive in time (eSP0008).
    DeviceConfigTimeouts => "device_config_timeouts_total",
    /// TCP connections closed because LogonRequest did not arrive in time.
    LogonTimeouts => "logon_timeouts_total",
    /// Application sends refused: the journal holds only unsent messages.
    SendBackpressure => "send_backpressure_total",
    /// Sessions logged out because their output queue overflowed.
    OutputOverflow => "output_overflow_total",
    /// Stateless replies dropped because the reply queue was full.
    ReplyQueueFull => "reply_queue_full_total",
    /// Sessions closed by a protocol violation (TCP sequence errors, framing errors).
    ProtocolViolations => "protocol_violations_total",
}

/// A fixed array of counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Counters([u64; Counter::COUNT]);

impl Default for Counters {
    fn default() -> Self {
        Self([0; Counter::COUNT])
    }
}

impl Counters {
    /// Adds one.
    #[inline]
    pub fn incr(&mut self, c: Counter) {
        self.0[c as usize] += 1;
    }

    /// Adds `n`.
    #[inline]
    pub fn add(&mut self, c: Counter, n: u64) {
        self.0[c as usize] += n;
    }

    /// Reads one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Adds every counter of `other` (merging shards, off the hot path).
    pub fn merge(&mut self, other: &Self) {
        for (a, b) in self.0.iter_mut().zip(other.0.iter()) {
            *a += b;
        }
    }

    /// `(counter, value)` pairs in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::VALUES.iter().map(|&c| (c, self.0[c as usize]))
    }
}
