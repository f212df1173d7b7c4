//! Counters: one declared table (Aeron's `aeron_system_counters.h`) for everything the gateway
//! counts, the sans-IO endpoint, the shard loop and the acceptor alike. Each [`Counter`] indexes a
//! `[u64; Counter::COUNT]` ([`Counters`]): one per shard and one for the acceptor.
//!
//! Each entry declares its metric name (units last: `_total`, `_ns_max`), its help text (the
//! doc comment), its [`Kind`], who keeps it ([`Scope`]) and, for the members of a labelled
//! family, one label. The Prometheus name is `fleetgate_` + [`Counter::name`]; `ops::metrics`
//! exports the table as it is, with no list of its own.
#![forbid(unsafe_code)]

/// How a counter behaves, and how values from several shards combine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows; shards add up.
    Counter,
    /// A current value (set at each snapshot); shards add up.
    Gauge,
    /// The largest value seen; shards combine by maximum. Exported as a gauge.
    Max,
}

/// Who keeps a counter (and so which array holds it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Each shard (its endpoint and its loop); exported with a `shard` label.
    Shard,
    /// The acceptor; exported without a `shard` label.
    Acceptor,
}

/// What the table declares about one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    /// Metric name without the `fleetgate_` prefix, unit last.
    pub name: &'static str,
    /// Help text.
    pub help: &'static str,
    /// Counter, gauge or maximum.
    pub kind: Kind,
    /// Kept by the shards or by the acceptor.
    pub scope: Scope,
    /// For the members of a labelled family (same name): the label that tells them apart.
    pub label: Option<(&'static str, &'static str)>,
}

impl Meta {
    /// A shard counter without a label.
    const fn new(name: &'static str, help: &'static str) -> Self {
        Self { name, help, kind: Kind::Counter, scope: Scope::Shard, label: None }
    }

    const fn gauge(self) -> Self {
        Self { kind: Kind::Gauge, ..self }
    }

    const fn max(self) -> Self {
        Self { kind: Kind::Max, ..self }
    }

    const fn acceptor(self) -> Self {
        Self { scope: Scope::Acceptor, ..self }
    }

    const fn label(self, key: &'static str, value: &'static str) -> Self {
        Self { label: Some((key, value)), ..self }
    }
}

macro_rules! counters {
    ($(
        $(#[doc = $doc:literal])*
        $variant:ident => $name:literal $(.$m:ident($($a:expr),*))*,
    )*) => {
        /// Everything the gateway counts (see the module docs).
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
            const META: [Meta; Self::COUNT] =
                [$(Meta::new($name, concat!($($doc),*)) $(.$m($($a),*))*,)*];
        }
    };
}

impl Counter {
    /// What the table declares about this counter.
    pub const fn meta(self) -> &'static Meta {
        &Self::META[self as usize]
    }

    /// The metric name (snake case, unit last, without the `fleetgate_` prefix).
    pub const fn name(self) -> &'static str {
        self.meta().name
    }

    /// The help text (the entry's doc comment).
    pub fn help(self) -> &'static str {
        self.meta().help.trim()
    }
}

counters! {
    // ---- Sessions (kept by each shard's endpoint) ----
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
    /// Newer UDP attaches dropped unanswered because every place for a pending attach was
    /// taken (`max_pending_attaches`); the device repeats its request.
    AttachesPendingFull => "attaches_pending_full_total",
    /// Device config strings not kept: the shard's arena (`gateway.device_config_bytes` per
    /// session) had no room. The device group was chosen from the string all the same.
    DeviceConfigNotKept => "device_config_not_kept_total",
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

    // ---- Sessions by state (set by each shard at each snapshot) ----
    /// Sessions by state.
    StateAwaitingConfig => "sessions".gauge().label("state", "awaiting_config"),
    /// Sessions by state.
    StateAwaitingLogon => "sessions".gauge().label("state", "awaiting_logon"),
    /// Sessions by state.
    StateActive => "sessions".gauge().label("state", "active"),
    /// Sessions by state.
    StateLoggingOut => "sessions".gauge().label("state", "logging_out"),
    /// Sessions by state.
    StateDetached => "sessions".gauge().label("state", "detached"),

    // ---- The shard loop ----
    /// TCP connections handed over by the acceptor and taken.
    Handoffs => "handoffs_total",
    /// Handoffs whose connection could not be adopted (no connection slot).
    HandoffRejected => "handoff_rejected_total",
    /// Datagrams the kernel refused (socket buffer full).
    UdpSendDropped => "udp_send_dropped_total",
    /// TCP connections whose send queue filled (slow readers): told LoggedOut and closed.
    TcpSlowReaderClosed => "tcp_slow_reader_closed_total",
    /// Slow readers aborted because they did not take their LoggedOut in
    /// `tcp.close_linger_ms`.
    TcpSlowReaderAborted => "tcp_slow_reader_aborted_total",
    /// Connections the shard closed that were aborted after `tcp.close_linger_ms` (the peer
    /// neither read everything nor closed its end); slow readers included.
    TcpCloseAborted => "tcp_close_aborted_total",
    /// Histogram values above the bound (saturated).
    HistogramSaturated => "histogram_saturated_total",
    /// Longest loop pass with work (ns).
    CycleNsMax => "cycle_ns_max".max(),
    /// Loop passes with work over 1 ms.
    CyclesOver1ms => "cycles_over_1ms_total",
    /// Trace records dropped because the writer fell behind.
    TraceDropped => "trace_dropped_total",
    /// TCP connections open on the shard.
    TcpConnections => "tcp_connections".gauge(),

    // ---- The acceptor ----
    /// ConnectionRequests on the handshake port, by outcome.
    ConnectionRequestsAccepted => "connection_requests_total".acceptor().label("outcome", "accepted"),
    /// ConnectionRequests on the handshake port, by outcome.
    ConnectionRequestsRejected => "connection_requests_total".acceptor().label("outcome", "rejected"),
    /// ConnectionRequests on the handshake port, by outcome.
    ConnectionRequestsRateLimited =>
        "connection_requests_total".acceptor().label("outcome", "rate_limited"),
    /// ConnectionRequests on the handshake port, by outcome.
    ConnectionRequestsDropped => "connection_requests_total".acceptor().label("outcome", "dropped"),
    /// Of the rate-limited ConnectionRequests, those from a source the limiter table could not
    /// track (its set was full of empty buckets; `session::limit`).
    ConnectionRequestsUntracked => "connection_requests_untracked_total".acceptor(),
    /// Answers on the handshake port not sent: the kernel refused them, or (io_uring) no send
    /// slot was free.
    ConnectionRepliesDropped => "connection_replies_dropped_total".acceptor(),
    /// Accepted TCP connections, by what became of them before their logon.
    TcpHandedOff => "tcp_accepts_total".acceptor().label("outcome", "handed_off"),
    /// Accepted TCP connections, by what became of them before their logon.
    TcpLogonTimeouts => "tcp_accepts_total".acceptor().label("outcome", "logon_timeout"),
    /// Accepted TCP connections, by what became of them before their logon (refused at once:
    /// the handoff queue is full or the ring has no room).
    TcpRefused => "tcp_accepts_total".acceptor().label("outcome", "refused"),
    /// Accepted TCP connections, by what became of them before their logon (the oldest
    /// connection still waiting for its LogonRequest, closed to make room for a new one).
    TcpEvicted => "tcp_accepts_total".acceptor().label("outcome", "evicted"),
    /// Accepted TCP connections, by what became of them before their logon (a first frame that
    /// cannot be a LogonRequest: bad header, impossible length, another type).
    TcpMalformed => "tcp_accepts_total".acceptor().label("outcome", "malformed"),
    /// Accepted TCP connections, by what became of them before their logon (closed by the peer
    /// first).
    TcpPeerClosed => "tcp_accepts_total".acceptor().label("outcome", "peer_closed"),
    /// TCP connections waiting for their LogonRequest.
    TcpPendingLogons => "tcp_pending_logons".acceptor().gauge(),
}

/// A fixed array of counters, indexed by [`Counter`].
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

    /// Sets a gauge (or a total kept elsewhere).
    #[inline]
    pub fn set(&mut self, c: Counter, v: u64) {
        self.0[c as usize] = v;
    }

    /// Raises a maximum to `v` if `v` is larger.
    #[inline]
    pub fn raise(&mut self, c: Counter, v: u64) {
        let slot = &mut self.0[c as usize];
        *slot = (*slot).max(v);
    }

    /// Reads one counter.
    pub fn get(&self, c: Counter) -> u64 {
        self.0[c as usize]
    }

    /// Combines `other` into this one, off the hot path: counters and gauges add up, maxima
    /// take the larger.
    pub fn merge(&mut self, other: &Self) {
        for &c in Counter::VALUES {
            let (a, b) = (&mut self.0[c as usize], other.0[c as usize]);
            match c.meta().kind {
                Kind::Counter | Kind::Gauge => *a += b,
                Kind::Max => *a = (*a).max(b),
            }
        }
    }

    /// `(counter, value)` pairs in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        Counter::VALUES.iter().map(|&c| (c, self.0[c as usize]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_put_units_last_and_families_are_consistent() {
        for &c in Counter::VALUES {
            let m = c.meta();
            assert!(!c.help().is_empty(), "{c:?} has no help");
            assert!(
                m.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{c:?}: {}",
                m.name
            );
            match m.kind {
                Kind::Counter => assert!(m.name.ends_with("_total"), "{c:?}: {}", m.name),
                Kind::Gauge | Kind::Max => assert!(!m.name.ends_with("_total"), "{c:?}"),
            }
            // Members of one family agree on everything but their label, and are declared
            // next to each other (the exposition writes a family's samples together).
            let same: Vec<usize> = Counter::VALUES
                .iter()
                .filter(|o| o.name() == m.name)
                .map(|&o| o as usize)
                .collect();
            assert!(same.windows(2).all(|w| w[1] == w[0] + 1), "{} is split", m.name);
            for &o in Counter::VALUES.iter().filter(|o| o.name() == m.name) {
                let om = o.meta();
                assert_eq!((om.kind, om.scope), (m.kind, m.scope), "{c:?} vs {o:?}");
                assert_eq!(om.label.map(|l| l.0), m.label.map(|l| l.0), "{c:?} vs {o:?}");
                assert!(same.len() == 1 || om.label.is_some(), "{o:?} needs a label");
            }
        }
    }

    #[test]
    fn merge_adds_counters_and_takes_the_larger_maximum() {
        let (mut a, mut b) = (Counters::default(), Counters::default());
        a.add(Counter::BytesSent, 5);
        b.add(Counter::BytesSent, 7);
        a.raise(Counter::CycleNsMax, 900);
        b.raise(Counter::CycleNsMax, 300);
        b.set(Counter::StateActive, 4);
        a.merge(&b);
        assert_eq!(a.get(Counter::BytesSent), 12);
        assert_eq!(a.get(Counter::CycleNsMax), 900);
        assert_eq!(a.get(Counter::StateActive), 4);
    }
}
