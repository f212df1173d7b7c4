//! The gateway's configuration: a TOML file (profiles in `tuning/`), every key overridable on the
//! command line with `--set section.key=value`. Every limit carries its unit in its name and has
//! a documented default; unknown keys are errors.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::apps::AppKind;
use crate::io;
use crate::journal::JournalConfig;
use crate::session::{EndpointConfig, SessionConfig};

/// `section! { /// docs  pub struct Name { /// docs  pub key: Type = default, ... } }`: a TOML
/// section whose keys all have defaults (missing keys take them, unknown keys are errors), each
/// written beside its field.
macro_rules! section {
    ($(#[$m:meta])* pub struct $name:ident {
        $($(#[$fm:meta])* pub $f:ident: $t:ty = $default:expr,)*
    }) => {
        $(#[$m])*
        #[derive(Clone, Debug, Deserialize, PartialEq)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$fm])* pub $f: $t,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($f: $default,)* }
            }
        }
    };
}

/// The whole configuration. Field docs give the TOML key, the unit and the default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`: threads, addresses, limits.
    pub gateway: GatewaySection,
    /// `[udp]`: handshake and UDP session settings.
    pub udp: UdpSection,
    /// `[tcp]`: TCP settings.
    pub tcp: TcpSection,
    /// `[session]`: per-session timers.
    pub session: SessionSection,
    /// `[journal]`: resend journal sizing.
    pub journal: JournalSection,
    /// `[auth]`: credentials and logon failure limits.
    pub auth: AuthSection,
    /// `[observability]`: metrics, histogram logs, traces.
    pub observability: ObservabilitySection,
    /// `[[groups]]`: device groups matched on device-config fields.
    pub groups: Vec<DeviceGroup>,
    /// `[[hosts]]`: TCP hosts a device group may bridge its sessions to (DESIGN.md §1.6).
    pub hosts: Vec<HostEntry>,
    /// `[host_limits]`: what each shard reserves for host connections.
    pub host_limits: HostLimits,
}

section! {
    /// `[gateway]`.
    pub struct GatewaySection {
        /// `shards`: shard threads; 0 = one per available core (default 0).
        pub shards: usize = 0,
        /// `cpus`: cores to pin shard i to (`cpus[i % len]`); empty = cores 0..shards (default []).
        pub cpus: Vec<usize> = Vec::new(),
        /// `service_cpus`: cores the non-shard threads (acceptor, housekeeping with the trace
        /// and histogram writers, HTTP, operator channel) may run on, so that they never preempt
        /// a shard; empty = unpinned (default []).
        pub service_cpus: Vec<usize> = Vec::new(),
        /// `io`: "auto" (io_uring if usable, else epoll), "uring" or "epoll" (default "auto"); the
        /// acceptor follows (io_uring, or its `poll(2)` driver with epoll).
        pub io: io::Choice = io::Choice::Auto,
        /// `idle`: "park" (wait in the kernel until the next deadline when a pass found nothing to
        /// do) or "spin" (busy-poll `spin_us` first) (default "park").
        pub idle: Idle = Idle::Park,
        /// `spin_us`: with `idle = "spin"`, busy-poll this long before parking (default 50 µs).
        pub spin_us: u64 = 50,
        /// `handshake_addr`: UDP handshake port (default "0.0.0.0:3006").
        pub handshake_addr: SocketAddr = ([0, 0, 0, 0], 3006).into(),
        /// `tcp_addr`: TCP port (default "0.0.0.0:4210").
        pub tcp_addr: SocketAddr = ([0, 0, 0, 0], 4210).into(),
        /// `session_port_base`: shard i's UDP session port is this + i (default 5000).
        pub session_port_base: u16 = 5000,
        /// `max_sessions_per_shard`: sessions, detached ones included (default 4096).
        pub max_sessions_per_shard: usize = 4096,
        /// `app`: built-in application: "echo", "feed" or "none" (default "echo").
        pub app: AppKind = AppKind::Echo,
        /// `feed_interval_ms`: with `app = "feed"`, one type-300 event to every session this often
        /// (default 1000 ms).
        pub feed_interval_ms: u64 = 1000,
        /// `drain_timeout_ms`: on SIGTERM, wait this long for LoggedOut to go out (default 1500
        /// ms); what is not out by then stays unsent, and the shard's log says how many.
        pub drain_timeout_ms: u64 = 1500,
        /// `handoff_queue`: acceptor→shard SPSC capacity (default 1024 handoffs).
        pub handoff_queue: usize = 1024,
        /// `handoffs_per_pass`: handoffs a shard takes per loop pass at most (default 64).
        pub handoffs_per_pass: usize = 64,
        /// `io_batch`: datagrams a backend receives per batch and queues before a flush (default
        /// 64).
        pub io_batch: usize = 64,
        /// `reply_queue`: stateless replies (rejects, LoggedOut to unknown peers) a shard holds
        /// before dropping more, counted in `fleetgate_reply_queue_full_total` (default 1024).
        pub reply_queue: usize = 1024,
        /// `max_pending_attaches`: newer UDP attaches a shard holds beside their session until they
        /// log on (DESIGN.md §2 rule 9), in a side table; more are dropped unanswered and counted
        /// in `fleetgate_attaches_pending_full_total` (default 4096).
        pub max_pending_attaches: usize = 4096,
        /// `device_config_bytes`: bytes of device config strings a shard keeps per session on
        /// average, reserved at start-up; a string finding no room is not kept and is counted in
        /// `fleetgate_device_config_not_kept_total` (default 128; the seed's example is 116).
        pub device_config_bytes: usize = 128,
        /// `snapshot_interval_ms`: how often a shard publishes its counters, sessions and
        /// histograms to housekeeping, and rotates cookie keys (default 1000 ms).
        pub snapshot_interval_ms: u64 = 1000,
        /// `admin_socket`: path of the operator channel's Unix socket (`fleetgate ctl`), created
        /// with mode 0600; a stale socket there is replaced, any other file refuses the start; ""
        /// = no operator channel (default "").
        pub admin_socket: String = String::new(),
        /// `drain_logouts_per_s`: at a drain's deadline, each shard logs its remaining sessions out
        /// at this rate, so that they do not all storm the other gateways at once (default 1000
        /// sessions per second per shard).
        pub drain_logouts_per_s: u32 = 1000,
    }
}

/// `gateway.idle`: what a shard does after a pass that found nothing to do.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Idle {
    /// Wait in the kernel until input or the next session deadline.
    #[default]
    Park,
    /// Busy-poll for `gateway.spin_us`, then park.
    Spin,
}

section! {
    /// `[udp]`.
    pub struct UdpSection {
        /// `max_datagram`: largest datagram sent, prefix included (default 1400 bytes).
        pub max_datagram: usize = 1400,
        /// `ack_delay_ms`: acknowledge processed input within this (default 20 ms).
        pub ack_delay_ms: u64 = 20,
        /// `cookie_ttl_ms`: cookie validity (default 5000 ms).
        pub cookie_ttl_ms: u64 = 5000,
        /// `cookie_rotate_s`: new cookie secret this often; the previous stays valid (default 60
        /// s).
        pub cookie_rotate_s: u64 = 60,
        /// `device_config_timeout_ms`: eSP0008 after this (default 10000 ms).
        pub device_config_timeout_ms: u64 = 10_000,
        /// `device_config_retry_ms`: GetDeviceConfig re-send period (default 1000 ms).
        pub device_config_retry_ms: u64 = 1000,
        /// `handshake_rate_per_s`: ConnectionRequests per source address per second (default 20).
        pub handshake_rate_per_s: u32 = 20,
        /// `handshake_burst`: token-bucket depth per source address (default 40).
        pub handshake_burst: u32 = 40,
        /// `socket_buffer_bytes`: receive and send buffer asked for each UDP socket; the kernel
        /// caps it at `net.core.rmem_max` / `wmem_max` (default 8388608 bytes).
        pub socket_buffer_bytes: usize = 8 << 20,
    }
}

section! {
    /// `[tcp]`.
    pub struct TcpSection {
        /// `logon_timeout_ms`: LogonRequest must arrive within this of connect (default 10000 ms,
        /// 2 × the default heartbeat interval).
        pub logon_timeout_ms: u64 = 10_000,
        /// `max_connections_per_shard`: TCP connections per shard (default 4096).
        pub max_connections_per_shard: usize = 4096,
        /// `send_queue_bytes`: per-connection send queue; a reader that lets it fill is told
        /// LoggedOut("send queue full") and closed, its session kept for resume (default 262144
        /// bytes, at least 4096).
        pub send_queue_bytes: usize = 256 * 1024,
        /// `close_linger_ms`: a connection the gateway closes (after its LoggedOut, and a slow
        /// reader too) has this long to read what is queued and close its end; then it is aborted
        /// (default 1000 ms).
        pub close_linger_ms: u64 = 1000,
        /// `max_message_bytes`: largest inbound message on TCP (default 1024 bytes); a first frame
        /// that declares more is refused at once.
        pub max_message_bytes: usize = 1024,
        /// `max_pending_logons`: connections accepted and waiting for their LogonRequest; when the
        /// table is full, the oldest of them is closed (LoggedOut "server busy") to make room, so a
        /// client that logs on promptly always gets in (default 1024 connections).
        pub max_pending_logons: usize = 1024,
        /// `listen_backlog`: the TCP listener's backlog; 0 = the host's `net.core.somaxconn`
        /// (default 0).
        pub listen_backlog: u32 = 0,
    }
}

section! {
    /// `[session]`.
    pub struct SessionSection {
        /// `heartbeat_interval_s`: H, sent in LogonResponse (default 5 s).
        pub heartbeat_interval_s: u64 = 5,
        /// `detached_ttl_s`: keep a detached session this long (default 300 s).
        pub detached_ttl_s: u64 = 300,
        /// `burst`: buffers one session sends before others get a turn (default 8).
        pub burst: u32 = 8,
    }
}

section! {
    /// `[journal]`.
    pub struct JournalSection {
        /// `messages_per_session`: application messages each session keeps (default 64).
        pub messages_per_session: usize = JournalConfig::default().messages_per_session,
        /// `slot_bytes`: largest padded application message, header included (default 256 bytes).
        pub slot_bytes: usize = JournalConfig::default().slot_bytes,
    }
}

section! {
    /// `[auth]`.
    pub struct AuthSection {
        /// `credentials`: path of the credentials file (default none: logons refused).
        pub credentials: Option<String> = None,
        /// `open_logon`: accept any username and password (default false; explicit opt-in only).
        pub open_logon: bool = false,
        /// `max_failures`: failed logons per source (IPv4 address, IPv6 /64) before refusal
        /// (default 5).
        pub max_failures: u32 = 5,
        /// `max_network_failures`: failed logons per IPv4 /24 before the whole network is refused
        /// (default 20).
        pub max_network_failures: u32 = 20,
        /// `max_username_failures`: failed logons at one username before sources that have failed
        /// are refused for it without a check (default 10).
        pub max_username_failures: u32 = 10,
        /// `failure_window_s`: window for the failure counts; a limit once hit holds this long
        /// (default 60 s).
        pub failure_window_s: u64 = 60,
    }
}

section! {
    /// `[observability]`.
    pub struct ObservabilitySection {
        /// `metrics_addr`: HTTP for /metrics, /sessions, /healthz (default "127.0.0.1:9464"; "" to
        /// disable).
        pub metrics_addr: String = "127.0.0.1:9464".into(),
        /// `hist_log`: HdrHistogram interval log file (default none).
        pub hist_log: Option<String> = None,
        /// `trace_dir`: directory for per-device protocol traces (default "traces").
        pub trace_dir: String = "traces".into(),
        /// `trace_devices`: deviceUids to trace (default []).
        pub trace_devices: Vec<String> = Vec::new(),
        /// `trace_addrs`: source address ranges to trace, as CIDR (default []).
        pub trace_addrs: Vec<String> = Vec::new(),
        /// `trace_queue`: trace records a shard queues for the writer; more while it is behind are
        /// dropped and counted in `fleetgate_trace_dropped_total` (default 8192 records).
        pub trace_queue: usize = 8192,
        /// `latency_ns_max`: histogram upper bound (default 60 s in ns).
        pub latency_ns_max: u64 = 60_000_000_000,
        /// `http_max_connections`: HTTP connections open at once; one beyond is closed at once
        /// (default 256).
        pub http_max_connections: usize = 256,
        /// `http_header_timeout_ms`: an HTTP client has this long to send its request headers
        /// (default 2000 ms).
        pub http_header_timeout_ms: u64 = 2000,
        /// `log_format`: "text" (one line per event, for people) or "json" (one object per line,
        /// for log collectors); `--log-format` overrides it (default "text").
        pub log_format: LogFormat = LogFormat::Text,
    }
}

/// `observability.log_format`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line per event, for people.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `[[groups]]`: a device group. A device belongs to the first group whose every given field
/// matches its device config (fields counted from 1: device type = 5, screen rows = 6, columns
/// = 7, client build = 10, hardware address = 13, OS = 19).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DeviceGroup {
    /// `name`.
    pub name: String,
    /// `device_type`: field 5, exact match.
    pub device_type: Option<String>,
    /// `screen_rows`: field 6.
    pub screen_rows: Option<u32>,
    /// `screen_cols`: field 7.
    pub screen_cols: Option<u32>,
    /// `os`: field 19, matched after trimming spaces.
    pub os: Option<String>,
    /// `heartbeat_interval_s`: H for this group.
    pub heartbeat_interval_s: Option<u64>,
    /// `journal_depth`: application messages kept for resend (at most
    /// `journal.messages_per_session`, which is what is reserved).
    pub journal_depth: Option<usize>,
    /// `app`: built-in application serving the group ("echo", "feed" or "none").
    pub app: Option<AppKind>,
    /// `host`: the `[[hosts]]` entry (by name) the group's sessions are bridged to; exclusive
    /// with `app`.
    pub host: Option<String>,
}

section! {
    /// `[[hosts]]`: a TCP host (DESIGN.md §1.6, §4). Each logged-on session of a group naming it
    /// gets its own connection, opened by its shard and kept through detach and resume.
    pub struct HostEntry {
        /// `name`: what `[[groups]] host` refers to (required, unique; the `host` label on
        /// `/metrics`).
        pub name: String = String::new(),
        /// `addr`: the host's TCP address, "IP:port" (required).
        pub addr: Option<SocketAddr> = None,
        /// `connect_timeout_ms`: a connection not up by then is UNREACHABLE (default 5000 ms).
        pub connect_timeout_ms: u64 = 5000,
        /// `keepalive_s`: TCP keepalive idle time on the host connection; 0 = off (default 60 s).
        pub keepalive_s: u64 = 60,
        /// `inactivity_timeout_s`: nothing crossed the connection for this long → IDLE_TIMEOUT,
        /// then LoggedOut; 0 = never (default 0).
        pub inactivity_timeout_s: u64 = 0,
        /// `inactivity_message`: sent to the host before closing on inactivity (TOML escapes such
        /// as "\r\n" allowed; default none).
        pub inactivity_message: String = String::new(),
    }
}

section! {
    /// `[host_limits]`.
    pub struct HostLimits {
        /// `max_sessions_per_shard`: host connections a shard holds at once (each one file
        /// descriptor); a session beyond gets HostStatus(UNREACHABLE) (default 1024).
        pub max_sessions_per_shard: usize = 1024,
        /// `read_bytes`: most bytes read from a host at a time, and what each host connection
        /// holds while its session cannot take more (default 4096 bytes).
        pub read_bytes: usize = 4096,
        /// `to_host_bytes`: device bytes a host connection holds while the host does not read;
        /// one more ends the session with LoggedOut("host not reading") (default 16384 bytes).
        pub to_host_bytes: usize = 16384,
    }
}

/// A configuration problem, for the operator.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads `path` (if any), applies `key=value` overrides, checks the result.
    pub fn load(path: Option<&Path>, overrides: &[String]) -> Result<Self, ConfigError> {
        let mut table: toml::Table = match path {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| ConfigError(format!("cannot read {}: {e}", p.display())))?;
                text.parse().map_err(|e| ConfigError(format!("{}: {e}", p.display())))?
            }
            None => toml::Table::new(),
        };
        for o in overrides {
            apply_override(&mut table, o)?;
        }
        let cfg: Self = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError(format!("config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values and relations between them.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError(m.to_string()));
        if self.gateway.max_sessions_per_shard == 0 {
            return bad("gateway.max_sessions_per_shard must be at least 1");
        }
        if self.gateway.handoff_queue == 0 {
            return bad("gateway.handoff_queue must be at least 1");
        }
        if self.gateway.handoffs_per_pass == 0 || self.gateway.io_batch == 0 {
            return bad("gateway.handoffs_per_pass and gateway.io_batch must be at least 1");
        }
        if self.gateway.reply_queue == 0 || self.observability.trace_queue == 0 {
            return bad("gateway.reply_queue and observability.trace_queue must be at least 1");
        }
        if self.gateway.drain_logouts_per_s == 0 {
            return bad("gateway.drain_logouts_per_s must be at least 1");
        }
        if self.gateway.snapshot_interval_ms == 0 {
            return bad("gateway.snapshot_interval_ms must be at least 1");
        }
        if self.tcp.max_pending_logons == 0 {
            return bad("tcp.max_pending_logons must be at least 1");
        }
        if self
            .groups
            .iter()
            .any(|g| g.heartbeat_interval_s.is_some_and(|h| h == 0 || h > i32::MAX as u64))
        {
            return bad("groups.heartbeat_interval_s must be at least 1");
        }
        let a = &self.auth;
        if a.max_failures == 0 || a.max_username_failures == 0 {
            return bad("auth.max_failures and auth.max_username_failures must be at least 1");
        }
        if a.max_network_failures < a.max_failures {
            return bad("auth.max_network_failures must be at least auth.max_failures");
        }
        if self.tcp.max_message_bytes < 128 {
            return bad("tcp.max_message_bytes must be at least 128");
        }
        if self.tcp.send_queue_bytes < 4096 {
            return bad("tcp.send_queue_bytes must be at least 4096");
        }
        self.validate_hosts()?;
        self.session_config().validate().map_err(|e| ConfigError(e.to_string()))
    }

    fn validate_hosts(&self) -> Result<(), ConfigError> {
        let bad = |m: String| Err(ConfigError(m));
        for (i, h) in self.hosts.iter().enumerate() {
            if h.name.is_empty() {
                return bad(format!("hosts[{i}].name is required"));
            }
            if self.hosts[..i].iter().any(|o| o.name == h.name) {
                return bad(format!("hosts: the name {:?} is used twice", h.name));
            }
            if h.addr.is_none() {
                return bad(format!("hosts {:?}: addr is required (\"IP:port\")", h.name));
            }
            if h.connect_timeout_ms == 0 {
                return bad(format!("hosts {:?}: connect_timeout_ms must be at least 1", h.name));
            }
        }
        if self.hosts.len() > 128 {
            return bad("at most 128 [[hosts]] entries".into());
        }
        for g in &self.groups {
            let Some(name) = g.host.as_ref() else { continue };
            if g.app.is_some() {
                return bad(format!("groups {:?}: set app or host, not both", g.name));
            }
            if !self.hosts.iter().any(|h| &h.name == name) {
                return bad(format!("groups {:?}: no [[hosts]] entry named {name:?}", g.name));
            }
        }
        let l = &self.host_limits;
        if l.read_bytes < 64 || l.to_host_bytes < 64 {
            return bad(
                "host_limits.read_bytes and host_limits.to_host_bytes must be at least 64".into()
            );
        }
        Ok(())
    }

    /// Connection ids of a shard: its devices' TCP connections and, with `[[hosts]]`, its host
    /// connections, which share the id space.
    pub fn connection_ids_per_shard(&self) -> usize {
        let hosts = if self.hosts.is_empty() { 0 } else { self.host_limits.max_sessions_per_shard };
        self.tcp.max_connections_per_shard + hosts
    }

    /// The shard's host bridge limits.
    pub fn bridge_limits(&self) -> crate::apps::host::BridgeLimits {
        crate::apps::host::BridgeLimits {
            max_hosts: self.host_limits.max_sessions_per_shard,
            max_sessions: self.gateway.max_sessions_per_shard,
            max_conn_ids: self.connection_ids_per_shard(),
            read_bytes: self.host_limits.read_bytes,
            to_host_bytes: self.host_limits.to_host_bytes,
            max_chunk: crate::apps::host::BridgeLimits::chunk_for_slot(self.journal.slot_bytes),
        }
    }

    /// The `[[hosts]]` entries as the shards use them.
    pub fn host_specs(&self) -> Vec<crate::apps::HostSpec> {
        let secs = |s: u64| (s > 0).then(|| Duration::from_secs(s));
        self.hosts
            .iter()
            .map(|h| crate::apps::HostSpec {
                name: h.name.clone(),
                addr: h.addr.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
                connect_timeout: Duration::from_millis(h.connect_timeout_ms),
                keepalive: secs(h.keepalive_s),
                idle_timeout: secs(h.inactivity_timeout_s),
                idle_message: h.inactivity_message.as_bytes().to_vec(),
            })
            .collect()
    }

    /// The index of the `[[hosts]]` entry named `name`.
    pub fn host_index(&self, name: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.name == name)
    }

    /// The device-group policy for the shards (`None` without `[[groups]]`).
    pub fn group_policy(&self) -> Option<crate::session::GroupPolicy> {
        if self.groups.is_empty() {
            return None;
        }
        let groups = self.groups.clone();
        let names = self.group_apps();
        let hosts: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        Some(Box::new(move |config: &[u8]| {
            groups.iter().find(|g| g.matches(config)).map_or_else(Default::default, |g| {
                crate::session::GroupSettings {
                    heartbeat: g.heartbeat_interval_s.map(Duration::from_secs),
                    journal_depth: g.journal_depth,
                    // Group applications are added after the default one, in this order.
                    // Host applications follow, one per `[[hosts]]` entry in order.
                    app: g
                        .app
                        .and_then(|a| names.iter().position(|n| *n == a))
                        .or_else(|| {
                            let h = g.host.as_ref()?;
                            Some(names.len() + hosts.iter().position(|n| n == h)?)
                        })
                        .map(|i| i as u8 + 1),
                }
            })
        }))
    }

    /// The distinct applications named by device groups, in order of first use: each shard
    /// adds them after its default application.
    pub fn group_apps(&self) -> Vec<AppKind> {
        let mut names: Vec<AppKind> = Vec::new();
        for a in self.groups.iter().filter_map(|g| g.app) {
            if !names.contains(&a) {
                names.push(a);
            }
        }
        names
    }

    /// Shards to run: `gateway.shards`, or one per available core.
    pub fn shard_count(&self) -> usize {
        match self.gateway.shards {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// The per-session settings.
    pub fn session_config(&self) -> SessionConfig {
        SessionConfig {
            heartbeat_interval: Duration::from_secs(self.session.heartbeat_interval_s),
            logon_timeout: Duration::from_millis(self.tcp.logon_timeout_ms),
            device_config_timeout: Duration::from_millis(self.udp.device_config_timeout_ms),
            device_config_retry: Duration::from_millis(self.udp.device_config_retry_ms),
            ack_delay: Duration::from_millis(self.udp.ack_delay_ms),
            detached_ttl: Duration::from_secs(self.session.detached_ttl_s),
            max_datagram: self.udp.max_datagram,
            max_tcp_write: self
                .tcp
                .send_queue_bytes
                .saturating_sub(crate::io::LAST_WORD_BYTES)
                .min(64 * 1024),
            journal: JournalConfig {
                messages_per_session: self.journal.messages_per_session,
                slot_bytes: self.journal.slot_bytes,
            },
        }
    }

    /// The endpoint settings of shard `shard`.
    pub fn endpoint_config(&self, shard: u16) -> EndpointConfig {
        EndpointConfig {
            session: self.session_config(),
            max_sessions: self.gateway.max_sessions_per_shard,
            max_connections: self.connection_ids_per_shard(),
            shard,
            reply_queue: self.gateway.reply_queue,
            max_pending_attaches: self.gateway.max_pending_attaches,
            device_config_bytes: self.gateway.device_config_bytes,
            session_burst: self.session.burst,
            max_logon_failures: self.auth.max_failures,
            max_network_failures: self.auth.max_network_failures,
            max_username_failures: self.auth.max_username_failures,
            logon_failure_window: Duration::from_secs(self.auth.failure_window_s),
            limiter_entries: crate::session::auth::LIMITER_ENTRIES,
        }
    }
}

/// Applies `section.key=value` to the table. The value is TOML (`5`, `"epoll"`, `true`,
/// `[1, 2]`); a bare word that is not valid TOML is taken as a string.
fn apply_override(table: &mut toml::Table, o: &str) -> Result<(), ConfigError> {
    let Some((path, raw)) = o.split_once('=') else {
        return Err(ConfigError(format!("--set {o}: expected section.key=value")));
    };
    let path: Vec<&str> = path.trim().split('.').collect();
    let raw = raw.trim();
    let value = match format!("v = {raw}").parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(raw.into())),
        Err(_) => toml::Value::String(raw.into()),
    };
    let (last, parents) =
        path.split_last().ok_or_else(|| ConfigError(format!("--set {o}: empty key")))?;
    let mut t = table;
    for p in parents {
        let entry =
            t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError(format!("--set {o}: {p} is not a section")))?;
    }
    t.insert(last.to_string(), value);
    Ok(())
}

/// Fields of a device config string (tilde-separated), counted from 1.
pub fn config_field(config: &[u8], n: usize) -> Option<&[u8]> {
    config.split(|&b| b == b'~').nth(n.checked_sub(1)?)
}

impl DeviceGroup {
    /// True if every field this group names matches `config`.
    pub fn matches(&self, config: &[u8]) -> bool {
        let field =
            |n| config_field(config, n).map(|f| String::from_utf8_lossy(f).trim().to_string());
        let num = |n| field(n).and_then(|f| f.parse::<u32>().ok());
        self.device_type.as_ref().is_none_or(|t| field(5).as_deref() == Some(t.as_str()))
            && self.screen_rows.is_none_or(|r| num(6) == Some(r))
            && self.screen_cols.is_none_or(|c| num(7) == Some(c))
            && self.os.as_ref().is_none_or(|o| field(19).as_deref() == Some(o.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &[u8] = b"AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~";

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::load(None, &[]).unwrap();
        assert_eq!(c.gateway.handshake_addr.port(), 3006);
        assert_eq!(c.gateway.tcp_addr.port(), 4210);
        assert_eq!(c.gateway.session_port_base, 5000);
        assert_eq!(c.udp.max_datagram, 1400);
        assert_eq!(c.session_config(), SessionConfig::default());
    }

    #[test]
    fn tuning_profiles_load_and_default_toml_is_the_defaults() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tuning");
        let default = Config::load(Some(&dir.join("default.toml")), &[]).unwrap();
        assert_eq!(default, Config::load(None, &[]).unwrap(), "tuning/default.toml drifted");
        for profile in ["large-fleet.toml", "low-latency.toml"] {
            Config::load(Some(&dir.join(profile)), &[]).unwrap();
        }
        let e = Config::load(None, &["gateway.idle=\"nap\"".into()]).unwrap_err();
        assert!(e.0.contains("nap"), "{e}");
    }

    #[test]
    fn overrides_set_any_key_and_unknown_keys_fail() {
        let c = Config::load(
            None,
            &[
                "udp.max_datagram=1200".into(),
                "gateway.io=epoll".into(),
                "gateway.cpus=[1,0]".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.udp.max_datagram, 1200);
        assert_eq!(c.gateway.io, io::Choice::Epoll);
        assert_eq!(c.gateway.cpus, vec![1, 0]);
        let e = Config::load(None, &["udp.max_datagrams=1".into()]).unwrap_err();
        assert!(e.0.contains("max_datagrams"), "{e}");
        let e = Config::load(None, &["gateway.io=kqueue".into()]).unwrap_err();
        assert!(e.0.contains("gateway.io"), "{e}");
        assert!(Config::load(None, &["nonsense".into()]).is_err());
    }

    #[test]
    fn device_groups_match_named_fields() {
        assert_eq!(config_field(SEED, 5), Some(&b"PDT9090_E5"[..]));
        assert_eq!(config_field(SEED, 13), Some(&b"0015708E863F"[..]));
        let g = DeviceGroup {
            device_type: Some("PDT9090_E5".into()),
            screen_rows: Some(16),
            screen_cols: Some(26),
            os: Some("WindowsCE".into()),
            ..Default::default()
        };
        assert!(g.matches(SEED));
        let g2 = DeviceGroup { screen_rows: Some(24), ..Default::default() };
        assert!(!g2.matches(SEED));
    }

    #[test]
    fn group_policy_from_toml_picks_the_first_matching_group() {
        let dir = std::env::temp_dir().join(format!("fleetgate-groups-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("groups.toml");
        std::fs::write(
            &path,
            "[[groups]]\nname = \"big screens\"\nscreen_rows = 24\nheartbeat_interval_s = 30\n\n\
             [[groups]]\nname = \"pdt\"\ndevice_type = \"PDT9090_E5\"\nheartbeat_interval_s = 10\njournal_depth = 16\napp = \"feed\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&path), &[]).unwrap();
        let policy = c.group_policy().expect("groups configured");
        let g = policy(SEED);
        assert_eq!(g.heartbeat, Some(Duration::from_secs(10)));
        assert_eq!(g.journal_depth, Some(16));
        assert_eq!(g.app, Some(1), "the first group application is index 1");
        assert_eq!(c.group_apps(), vec![AppKind::Feed]);
        assert!(Config::load(None, &["groups=[{name=\"x\", app=\"nope\"}]".into()]).is_err());
        assert_eq!(policy(b"XX~1~1~1~OTHER~16~26"), crate::session::GroupSettings::default());
        assert!(Config::load(None, &[]).unwrap().group_policy().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn host_groups_pick_host_applications_after_the_builtins() {
        let toml = "[[hosts]]\nname = \"wms\"\naddr = \"127.0.0.1:2323\"\n\
                    inactivity_timeout_s = 600\ninactivity_message = \"logoff\\r\\n\"\n\n\
                    [[hosts]]\nname = \"erp\"\naddr = \"[::1]:23\"\n\n\
                    [[groups]]\nname = \"feeds\"\nscreen_rows = 24\napp = \"feed\"\n\n\
                    [[groups]]\nname = \"pdt\"\ndevice_type = \"PDT9090_E5\"\nhost = \"erp\"\n";
        let table: toml::Table = toml.parse().unwrap();
        let c: Config = toml::Value::Table(table).try_into().unwrap();
        c.validate().unwrap();
        assert_eq!(c.hosts[0].inactivity_message, "logoff\r\n");
        assert_eq!(c.hosts[0].connect_timeout_ms, 5000);
        assert_eq!(c.hosts[1].addr, Some("[::1]:23".parse().unwrap()));
        assert_eq!(c.host_index("erp"), Some(1));
        // Application 0 is the default, 1 the group's "feed", then wms = 2 and erp = 3.
        let policy = c.group_policy().unwrap();
        assert_eq!(policy(SEED).app, Some(3));
        for (bad, why) in [
            ("hosts=[{name=\"a\"}]", "addr is required"),
            ("hosts=[{addr=\"127.0.0.1:1\"}]", "name is required"),
            (
                "hosts=[{name=\"a\", addr=\"127.0.0.1:1\"}, {name=\"a\", addr=\"127.0.0.1:2\"}]",
                "used twice",
            ),
            ("groups=[{name=\"g\", host=\"nowhere\"}]", "no [[hosts]] entry"),
        ] {
            let e = Config::load(None, &[bad.into()]).unwrap_err();
            assert!(e.0.contains(why), "{bad}: {e}");
        }
        let both = [
            "hosts=[{name=\"a\", addr=\"127.0.0.1:1\"}]".to_string(),
            "groups=[{name=\"g\", host=\"a\", app=\"echo\"}]".to_string(),
        ];
        assert!(Config::load(None, &both).unwrap_err().0.contains("not both"));
    }
}
