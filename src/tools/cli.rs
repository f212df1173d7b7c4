//! The `fleetgate` command line (clap lives only here): parse, then dispatch to the tools and
//! the gateway. `src/main.rs` calls [`main`].

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::ops::Server;
use crate::runtime::signals;
use crate::session::{Authenticator, Credentials, OpenLogon};
use crate::tools::{check, passwd};

/// fleetgate: a thread-per-core session gateway for large device fleets.
#[derive(Parser, Debug)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log level or filter (`info`, `debug`, `fleetgate=debug,warn`); default: RUST_LOG, else
    /// `info`.
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format: text or json (one object per line); default: `observability.log_format` for
    /// `serve`, else text.
    #[arg(long, value_enum, global = true)]
    log_format: Option<LogFormatArg>,
    #[command(subcommand)]
    command: Command,
}

/// `--log-format`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormatArg {
    /// One line per event.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway (UDP handshake port, TCP port, one shard per core).
    Serve(ServeArgs),
    /// Add or replace a user in a credentials file (password read from stdin).
    Passwd(PasswdArgs),
    /// Check host readiness: kernel, io_uring, memlock, cores, sysctls.
    Check(CheckArgs),
    /// Run a load scenario against a running gateway.
    Load(Box<LoadArgs>),
    /// A gateway and a simulated fleet in one process, ending in a latency histogram.
    Demo(DemoArgs),
    /// Summarize, compare and plot HdrHistogram interval logs (.hlog).
    Hist(HistArgs),
    /// Operate a running gateway over its operator channel (`gateway.admin_socket`): list and
    /// show sessions, disconnect one, drain for maintenance, undrain, status.
    Ctl(CtlArgs),
    /// Floods and faults against a gateway process it starts, with canaries (scripts/chaos.sh).
    #[command(hide = true)]
    Chaos(ChaosArgs),
    /// The chaos run's slowloris worker: holds idle TCP connections.
    #[command(hide = true, name = "chaos-hold")]
    ChaosHold(HoldArgs),
}

#[derive(Args, Debug)]
struct CtlArgs {
    /// The gateway's operator socket (`gateway.admin_socket`).
    #[arg(long, default_value = "/run/fleetgate/admin.sock")]
    socket: PathBuf,
    /// Print the gateway's JSON answer as it is.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Subcommand, Debug)]
enum CtlCommand {
    /// The connections list, one page at a time (from the shards' latest snapshots).
    Sessions {
        /// First row (0-based): the `next` of the previous page.
        #[arg(long, default_value_t = 0)]
        from: usize,
        /// Rows in this page (at most 1,000).
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// One session, by deviceUid (UDP) or username (TCP).
    Show {
        /// deviceUid or username.
        uid: String,
    },
    /// End one session: LoggedOut("disconnected by operator"), state released.
    Disconnect {
        /// deviceUid or username.
        uid: String,
    },
    /// Refuse new sessions now (ConnectionReject DRAINING, TCP LoggedOut("draining")); log the
    /// remaining ones out at the deadline with LoggedOut("gateway draining"), paced at
    /// `gateway.drain_logouts_per_s` per shard, so that devices move to their next gateway.
    Drain {
        /// Seconds until the remaining sessions are logged out.
        #[arg(long, default_value_t = 60)]
        deadline: u64,
    },
    /// Accept new sessions again (and stop a drain's logouts).
    Undrain,
    /// Draining or not, the deadline, session counts by state, per shard.
    Status,
}

#[derive(Args, Debug)]
struct ChaosArgs {
    /// The gateway binary (default: this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// TOML profile for the gateway.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Results folder.
    #[arg(long)]
    out: PathBuf,
    /// A few seconds per case.
    #[arg(long)]
    short: bool,
    /// First port (handshake; TCP +1, session port +2, HTTP +9).
    #[arg(long, default_value_t = 23000)]
    base_port: u16,
    /// Only this case (repeatable).
    #[arg(long)]
    case: Vec<String>,
    /// I/O backend: auto, uring or epoll.
    #[arg(long, default_value = "auto")]
    io: String,
    /// Worst canary gap that passes (ms).
    #[arg(long, default_value_t = 1000)]
    max_gap_ms: u64,
    /// Idle connections the slowloris case holds (0 = up to the gateway's open-files limit).
    #[arg(long, default_value_t = 0)]
    slowloris: usize,
}

#[derive(Args, Debug)]
struct HoldArgs {
    /// The gateway's TCP address.
    #[arg(long)]
    tcp: std::net::SocketAddr,
    /// Connections to hold.
    #[arg(long)]
    conns: usize,
    /// Seconds to hold them.
    #[arg(long)]
    seconds: f64,
    /// Source addresses 127.<net>.x.y.
    #[arg(long)]
    net: u8,
    /// Reopen every connection the gateway closes.
    #[arg(long, action = clap::ArgAction::Set, default_value_t = true)]
    reconnect: bool,
}

#[derive(Args, Debug)]
struct HistArgs {
    /// Unit of the values recorded in the logs (fleetgate records ns); output is in µs.
    #[arg(long, value_enum, default_value = "ns", global = true)]
    unit: crate::tools::hist::Unit,
    #[command(subcommand)]
    command: HistCommand,
}

#[derive(Subcommand, Debug)]
enum HistCommand {
    /// Per tag, all intervals merged: count, p50, p90, p99, p99.9, p99.99, max (µs), time span.
    Show {
        /// The interval log.
        file: PathBuf,
    },
    /// Two logs side by side, per tag present in both, with the ratio B/A.
    Compare {
        /// Baseline log.
        a: PathBuf,
        /// Log compared with the baseline.
        b: PathBuf,
    },
    /// Percentile distribution plot, one line per (file, tag): SVG or PNG by the extension.
    Plot {
        /// Interval logs.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Output file, .svg or .png.
        #[arg(short, long)]
        output: PathBuf,
        /// Plot only this tag (repeatable).
        #[arg(long)]
        tag: Vec<String>,
        /// Title.
        #[arg(long, default_value = "Latency by Percentile Distribution")]
        title: String,
        /// Width in pixels.
        #[arg(long, default_value_t = 960)]
        width: u32,
        /// Height in pixels.
        #[arg(long, default_value_t = 600)]
        height: u32,
        /// Log scale for the latency axis too.
        #[arg(long)]
        log_y: bool,
    },
}

/// `fleetgate load SCENARIO`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LoadScenario {
    /// Handshake + config + logon as fast as possible (or at `--rate`), then held.
    Storm,
    /// Open loop echo at a constant aggregate rate.
    Steady,
    /// Sessions that only heartbeat.
    Idle,
    /// Dropped datagrams and periodic resumes; every feed event exactly once, in order.
    Resend,
    /// Sessions arrive and leave continually.
    Churn,
    /// One UDP device and one TCP client: `--messages` echo replies live, then one
    /// ResendRequest for them all, timed and checked at the device (see `--messages`,
    /// `--window`, `--repeat`; the gateway needs journal.messages_per_session ≥ messages).
    ResendBurst,
    /// Devices bridged to an echo host: keystroke-to-echo latency through gateway and host
    /// against the host reached directly, with forced roams and exact streams.
    Host,
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Scenario (`host`: devices bridged to an echo host, against the host reached directly;
    /// see `--host`).
    #[arg(value_enum)]
    scenario: LoadScenario,
    /// host: the echo host (the gateway's `[[hosts]]` entry names it).
    #[arg(long, default_value = "127.0.0.1:7023")]
    host: std::net::SocketAddr,
    /// host: serve a byte echo at `--host` in this process (else one must be running there).
    #[arg(long)]
    echo_host: bool,
    /// host: one device roams (new address, resume) this often, in seconds (0 = never).
    #[arg(long, default_value_t = 0.5)]
    roam_every: f64,
    /// host: the devices' config string (their device group must name the host).
    #[arg(
        long,
        default_value = "AB~001~19~000~PDT9090_E5~16~26~09~01~0107~0000~000~0015708E863F~640~6006~1~20100118100852~S~WindowsCE ~2~01~0~"
    )]
    device_config: String,
    /// Gateway UDP handshake address.
    #[arg(long, default_value = "127.0.0.1:3006")]
    handshake: std::net::SocketAddr,
    /// Gateway TCP address.
    #[arg(long, default_value = "127.0.0.1:4210")]
    tcp: std::net::SocketAddr,
    /// UDP devices.
    #[arg(long, default_value_t = 100)]
    devices: usize,
    /// TCP clients.
    #[arg(long, default_value_t = 0)]
    tcp_clients: usize,
    /// steady/resend/churn: echo requests per second over all sessions; storm/idle: logons
    /// started per second (0 = all at once).
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// steady/resend/churn: warm-up seconds (connect, not measured); storm/idle: settling
    /// seconds between the last logon and the measured hold.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// steady/resend/churn: measured seconds; storm/idle: seconds the fleet is held (measured).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generator threads (each owns a share of the devices and sockets).
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// resend: share of received datagrams to drop, handshake and GetDeviceConfig included (a
    /// logon then waits for the gateway's re-send, every udp.device_config_retry_ms).
    #[arg(long, default_value_t = 0.05)]
    drop: f64,
    /// resend: reconnect + resume period; churn: session lifetime (seconds).
    #[arg(long, default_value_t = 3.0)]
    reconnect_every: f64,
    /// Loopback source addresses to spread devices over (127.0.0.1 upwards, .0 and .255
    /// skipped).
    #[arg(long, default_value_t = 200)]
    source_ips: u32,
    /// UDP sockets over all threads, spread over the source addresses (0 = one per device up
    /// to 1,024). Many devices share each; one handshake at a time per socket, so this is also
    /// the most handshakes in flight (and the most TCP clients connecting at once).
    #[arg(long, default_value_t = 0)]
    sockets: usize,
    /// storm/idle: connect the fleet in this many equal steps (earlier steps stay logged on),
    /// each reported on its own.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// storm/idle: give up on a step's stragglers this many seconds after its last connect
    /// started.
    #[arg(long, default_value_t = 120.0)]
    step_timeout: f64,
    /// Connect attempts per device (timeouts start another; rate-limited ones do not count).
    #[arg(long, default_value_t = 3)]
    attempts: u32,
    /// Seconds a device waits for each handshake or logon attempt ("host timeout").
    #[arg(long, default_value_t = 5.0)]
    handshake_timeout: f64,
    /// Username prefix.
    #[arg(long, default_value = "dev")]
    user_prefix: String,
    /// Password.
    #[arg(long, default_value = "pw")]
    password: String,
    /// Echo body bytes (8..=200).
    #[arg(long, default_value_t = 16)]
    body_bytes: usize,
    /// Fail (exit 1) when message-level errors exceed this share of attempts (a lost device
    /// fails the run whatever the share, churn aside).
    #[arg(long, default_value_t = 0.001)]
    max_error_share: f64,
    /// Device retransmit buffer in messages (default by scenario: 4 for storm/idle, 64 for
    /// echo, 1024 for resend).
    #[arg(long)]
    device_messages: Option<usize>,
    /// Device retransmit buffer slot size in bytes (default by scenario: 64 for storm/idle).
    #[arg(long)]
    device_slot_bytes: Option<usize>,
    /// Application bytes each device's event queue takes from one input (default by scenario:
    /// 64 for storm/idle, 1400 otherwise).
    #[arg(long)]
    device_event_bytes: Option<usize>,
    /// steady: send the same datagrams to this plain UDP echo server, without sessions: the
    /// generator's own floor (e.g. `cargo bench --bench echo_floor -- serve`).
    #[arg(long)]
    raw_echo: Option<std::net::SocketAddr>,
    /// Busy-poll between sends instead of sleeping until the next send or reply (the
    /// generator takes its whole core, as sockperf's client does; see README "Benchmarks").
    #[arg(long)]
    spin: bool,
    /// steady: one echo request in flight at most, latency from its actual send, as sockperf's
    /// ping-pong measures (for comparing by its method; the open loop stays the headline).
    #[arg(long)]
    ping_pong: bool,
    /// Do not log the sessions out at the end.
    #[arg(long)]
    no_logout: bool,
    /// Stop after this many seconds whatever the scenario's state, and report what happened
    /// (devices not logged on by then are errors).
    #[arg(long)]
    time_limit: Option<f64>,
    /// A server list (DESIGN.md §4), comma-separated or repeated: entries `HOST`,
    /// `HOST:UDP_PORT` or `HOST:UDP_PORT/TCP_PORT` (default ports 3006 and 4210). Each device
    /// starts at the entry FNV-1a-64(deviceUid) mod N (TCP clients: of the username), resumes
    /// at the gateway holding its session, and moves to the next entry on host timeout,
    /// SERVER_FULL, DRAINING, a refused TCP connection or LoggedOut("gateway draining"); a
    /// session that ends comes back. The report adds moves by reason, the time back after a
    /// session's end, and per gateway the devices never disturbed. Overrides --handshake and
    /// --tcp.
    #[arg(long, value_name = "LIST")]
    servers: Vec<String>,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Write the latency histograms as an HdrHistogram log (tags echo, lateness, handshake,
    /// handshake_step<k>).
    #[arg(long)]
    hist_log: Option<PathBuf>,
    /// The gateway's pid: report its RSS per session and its CPU per heartbeat over the hold.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// resend-burst: echo replies per repeat, then resent in one burst.
    #[arg(long, default_value_t = 10_000)]
    messages: usize,
    /// resend-burst: echo requests in flight at most.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// resend-burst: repeats per transport (medians are reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
}

#[derive(Args, Debug)]
struct DemoArgs {
    /// UDP devices.
    #[arg(long, default_value_t = 2000)]
    devices: usize,
    /// TCP clients.
    #[arg(long, default_value_t = 50)]
    tcp_clients: usize,
    /// Echo requests per second over all sessions.
    #[arg(long, default_value_t = 2000.0)]
    rate: f64,
    /// Measured seconds.
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// Results folder.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// I/O backend: auto, uring or epoll.
    #[arg(long, default_value = "auto")]
    io: String,
    /// Gateway shards (0 = one per core).
    #[arg(long, default_value_t = 0)]
    shards: usize,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// TOML config file (profiles in tuning/).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Override any config key: --set section.key=value (repeatable), e.g. --set udp.max_datagram=1200.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Shard threads (gateway.shards; 0 = one per core).
    #[arg(long)]
    shards: Option<usize>,
    /// I/O backend: auto, uring or epoll (gateway.io).
    #[arg(long)]
    io: Option<String>,
    /// Application: echo, feed or none (gateway.app).
    #[arg(long)]
    app: Option<String>,
    /// UDP handshake address (gateway.handshake_addr, default 0.0.0.0:3006).
    #[arg(long)]
    handshake_addr: Option<String>,
    /// TCP address (gateway.tcp_addr, default 0.0.0.0:4210).
    #[arg(long)]
    tcp_addr: Option<String>,
    /// First UDP session port (gateway.session_port_base, default 5000).
    #[arg(long)]
    session_port_base: Option<u16>,
    /// Credentials file (auth.credentials).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// Accept any username and password. Without this or --credentials, logons are refused.
    #[arg(long)]
    open_logon: bool,
    /// HdrHistogram interval log file (observability.hist_log).
    #[arg(long)]
    hist_log: Option<PathBuf>,
    /// HTTP address for /metrics, /sessions, /healthz (observability.metrics_addr; "" disables).
    #[arg(long)]
    metrics_addr: Option<String>,
}

#[derive(Args, Debug)]
struct PasswdArgs {
    /// The credentials file (created if missing).
    #[arg(long)]
    file: PathBuf,
    /// Username (1..=16 printable characters).
    user: String,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// sysctl file to compare with (default tuning/sysctl.conf).
    #[arg(long, default_value = "tuning/sysctl.conf")]
    sysctl: PathBuf,
    /// Only probe io_uring (the opcodes the shards and the acceptor use): exit 0 if usable.
    #[arg(long)]
    io_uring: bool,
}

/// Runs the command line; returns the process exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    raise_open_files_limit();
    let format = cli.log_format.map(|f| match f {
        LogFormatArg::Text => LogFormat::Text,
        LogFormatArg::Json => LogFormat::Json,
    });
    let level = cli.log_level.as_deref();
    if !matches!(cli.command, Command::Serve(_)) {
        init_logging(level, format.unwrap_or_default());
    }
    let r = match cli.command {
        Command::Serve(a) => serve(a, level, format),
        Command::Passwd(a) => passwd::run(&a.file, &a.user),
        Command::Check(a) if a.io_uring => Ok(check::io_uring_only()),
        Command::Check(a) => check::run(&a.sysctl),
        Command::Load(a) => load(*a),
        Command::Demo(a) => demo(a),
        Command::Hist(a) => hist(a),
        Command::Ctl(a) => {
            let request = match a.command {
                CtlCommand::Sessions { from, limit } => {
                    format!("sessions --from {from} --limit {limit}")
                }
                CtlCommand::Show { uid } => format!("show {uid}"),
                CtlCommand::Disconnect { uid } => format!("disconnect {uid}"),
                CtlCommand::Drain { deadline } => format!("drain --deadline {deadline}"),
                CtlCommand::Undrain => "undrain".into(),
                CtlCommand::Status => "status".into(),
            };
            crate::tools::ctl::run(&a.socket, &request, a.json)
        }
        Command::Chaos(a) => chaos(a),
        Command::ChaosHold(a) => {
            crate::tools::chaos::hold(a.tcp, a.conns, a.seconds, a.net, a.reconnect)
                .map(|()| ExitCode::SUCCESS)
        }
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fleetgate: {e}");
            ExitCode::from(2)
        }
    }
}

fn chaos(a: ChaosArgs) -> Result<ExitCode, String> {
    let bin = match a.bin {
        Some(b) => b,
        None => std::env::current_exe().map_err(|e| e.to_string())?,
    };
    let opts = crate::tools::chaos::Options {
        bin,
        config: a.config,
        out: a.out,
        short: a.short,
        base_port: a.base_port,
        cases: a.case,
        io: a.io,
        max_gap_ms: a.max_gap_ms,
        slowloris: a.slowloris,
    };
    let pass = crate::tools::chaos::run(opts)?;
    Ok(if pass { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Logs go to stderr through `tracing`: `level` (or RUST_LOG, else `info`) filters them, and
/// `format` says text or JSON lines.
fn init_logging(level: Option<&str>, format: LogFormat) {
    let filter = match level {
        Some(l) => tracing_subscriber::EnvFilter::new(l),
        None => tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_thread_names(true);
    // A second initialisation (never in the binary) is ignored.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The gateway's panic policy: a panic on any thread (a shard, the acceptor, housekeeping) is
/// logged with the thread's name, the message and its location, and aborts the process at once.
/// A gateway with a dead shard would keep answering `/healthz` and handshakes for sessions it can
/// no longer serve; aborting lets the supervisor (`Restart=on-failure` in
/// tuning/fleetgate.service) start a whole one, and devices resume on it.
///
/// The standard hook is not called: with `RUST_BACKTRACE` set it symbolizes a backtrace before
/// returning, which took over 5 s on a loaded 2-core host while the other shards kept serving
/// (the flaky `a_panicking_shard_aborts_the_process` in tests/ops.rs). The backtrace is in the
/// core dump (`coredumpctl debug fleetgate`).
fn install_panic_policy() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::error!(thread = name, "panic: {info}; aborting the process");
        eprintln!("thread '{name}' {info}; aborting the process");
        std::process::abort();
    }));
}

/// Raises the soft open-files limit to the hard limit: every TCP session of the gateway and
/// every UDP device of the load generator holds a descriptor, and the default soft limit (often
/// 1024) is far below what a fleet needs.
fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    // `None` is unlimited.
    let below = match (l.current, l.maximum) {
        (Some(cur), Some(max)) => cur < max,
        (Some(_), None) => true,
        (None, _) => false,
    };
    if below {
        l.current = l.maximum;
        let _ = setrlimit(Resource::Nofile, l);
    }
}

fn serve(a: ServeArgs, level: Option<&str>, format: Option<LogFormat>) -> Result<ExitCode, String> {
    let mut set = Vec::new();
    let q = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    if let Some(v) = a.shards {
        set.push(format!("gateway.shards={v}"));
    }
    if let Some(v) = &a.io {
        set.push(format!("gateway.io={}", q(v)));
    }
    if let Some(v) = &a.app {
        set.push(format!("gateway.app={}", q(v)));
    }
    if let Some(v) = &a.handshake_addr {
        set.push(format!("gateway.handshake_addr={}", q(v)));
    }
    if let Some(v) = &a.tcp_addr {
        set.push(format!("gateway.tcp_addr={}", q(v)));
    }
    if let Some(v) = a.session_port_base {
        set.push(format!("gateway.session_port_base={v}"));
    }
    if let Some(v) = &a.credentials {
        set.push(format!("auth.credentials={}", q(&v.display().to_string())));
    }
    if a.open_logon {
        set.push("auth.open_logon=true".into());
    }
    if let Some(v) = &a.hist_log {
        set.push(format!("observability.hist_log={}", q(&v.display().to_string())));
    }
    if let Some(v) = &a.metrics_addr {
        set.push(format!("observability.metrics_addr={}", q(v)));
    }
    set.extend(a.set);
    let cfg = Config::load(a.config.as_deref(), &set).map_err(|e| e.to_string())?;
    init_logging(level, format.unwrap_or(cfg.observability.log_format));
    let auth: Arc<dyn Authenticator + Send + Sync> =
        match (&cfg.auth.credentials, cfg.auth.open_logon) {
            (Some(p), _) => Arc::new(passwd::load(p.as_ref())?),
            (None, true) => {
                tracing::warn!("open logon: any username and password is accepted");
                Arc::new(OpenLogon)
            }
            (None, false) => {
                tracing::warn!(
                    "no credentials file and no --open-logon: every logon will be refused"
                );
                Arc::new(Credentials::default())
            }
        };
    install_panic_policy();
    let shutdown = signals::catch().map_err(|e| format!("cannot catch SIGTERM/SIGINT: {e}"))?;
    let mut gw = Server::start_with(&cfg, auth, shutdown)?;
    // The main thread only waits from here on: a service thread like the others.
    crate::runtime::placement::pin_current(&cfg.gateway.service_cpus)?;
    if !cfg.gateway.service_cpus.is_empty() {
        tracing::info!(thread = "main", cpus = ?cfg.gateway.service_cpus, "service thread pinned");
    }
    tracing::info!(
        "serving: udp handshake {} tcp {} session ports {:?} metrics {} backend {}; reserved {} MiB for sessions and journals (journals {} MiB, session records {} B each)",
        gw.gateway.handshake_addr,
        gw.gateway.tcp_addr,
        gw.gateway.session_ports,
        gw.metrics_addr.map_or("off".into(), |a| a.to_string()),
        gw.gateway.backend,
        gw.gateway.reserved_bytes >> 20,
        gw.gateway.journal_bytes >> 20,
        crate::session::Endpoint::RECORD_BYTES
    );
    let totals = gw.wait();
    tracing::info!("stopped: {}", crate::runtime::report::summary(&totals.counters));
    Ok(ExitCode::SUCCESS)
}

fn load_host(a: &LoadArgs) -> Result<ExitCode, String> {
    let cfg = crate::tools::loadhost::HostLoadConfig {
        handshake: a.handshake,
        host: a.host,
        serve_echo: a.echo_host,
        devices: a.devices,
        rate: a.rate,
        duration: std::time::Duration::from_secs_f64(a.duration),
        roam_every: std::time::Duration::from_secs_f64(a.roam_every.max(0.0)),
        device_config: a.device_config.clone(),
        uid_prefix: "HOST".into(),
        user: a.user_prefix.clone(),
        password: a.password.clone(),
    };
    let report = crate::tools::loadhost::run(&cfg)?;
    Ok(print_report(a.json, report.failed(), || report.json(), || report.table()))
}

/// Prints a load report as JSON or as the table; the exit status says whether it failed.
fn print_report(
    json: bool,
    failed: bool,
    as_json: impl FnOnce() -> String,
    table: impl FnOnce() -> String,
) -> ExitCode {
    if json {
        println!("{}", as_json());
    } else {
        print!("{}", table());
    }
    if failed { ExitCode::from(1) } else { ExitCode::SUCCESS }
}

fn load_resend_burst(a: &LoadArgs) -> Result<ExitCode, String> {
    let cfg = crate::tools::loadgen::burst::BurstConfig {
        handshake: a.handshake,
        tcp: a.tcp,
        messages: a.messages,
        window: a.window,
        repeat: a.repeat,
        udp: a.devices > 0,
        tcp_client: a.tcp_clients > 0,
        body_bytes: a.body_bytes,
        user_prefix: a.user_prefix.clone(),
        password: a.password.clone(),
        seed: a.seed,
        ..Default::default()
    };
    let report = crate::tools::loadgen::burst::run(&cfg)?;
    if a.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.table());
    }
    Ok(if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn load(a: LoadArgs) -> Result<ExitCode, String> {
    use crate::tools::loadgen::{LoadConfig, Scenario};
    let scenario = match a.scenario {
        LoadScenario::Storm => Scenario::Storm,
        LoadScenario::Steady => Scenario::Steady,
        LoadScenario::Idle => Scenario::Idle,
        LoadScenario::Resend => Scenario::Resend,
        LoadScenario::Churn => Scenario::Churn,
        LoadScenario::Host => return load_host(&a),
        LoadScenario::ResendBurst => return load_resend_burst(&a),
    };
    let secs = std::time::Duration::from_secs_f64;
    let mut cfg = LoadConfig {
        scenario,
        handshake: a.handshake,
        tcp: a.tcp,
        udp_devices: a.devices,
        tcp_devices: a.tcp_clients,
        rate: a.rate,
        warmup: secs(a.warmup),
        duration: secs(a.duration),
        seed: a.seed,
        threads: a.threads,
        drop_share: a.drop,
        reconnect_every: secs(a.reconnect_every),
        source_ips: a.source_ips,
        sockets: a.sockets,
        steps: a.steps,
        step_timeout: secs(a.step_timeout),
        attempts: a.attempts,
        handshake_timeout: secs(a.handshake_timeout),
        user_prefix: a.user_prefix,
        password: a.password,
        body_bytes: a.body_bytes,
        max_error_share: a.max_error_share,
        progress: !a.json,
        raw_echo: a.raw_echo,
        spin: a.spin,
        ping_pong: a.ping_pong,
        gateway_pid: a.gateway_pid,
        logout_at_end: !a.no_logout,
        time_limit: a.time_limit.map(secs),
        device_event_bytes: a.device_event_bytes,
        servers: crate::tools::loadgen::fleet::parse_servers(&a.servers)?,
        ..LoadConfig::default()
    };
    if a.device_messages.is_some() || a.device_slot_bytes.is_some() {
        let p = crate::tools::loadgen::Profile::for_scenario(scenario, cfg.body_bytes).buffer;
        cfg.device_buffer = Some(crate::journal::JournalConfig {
            messages_per_session: a.device_messages.unwrap_or(p.messages_per_session),
            slot_bytes: a.device_slot_bytes.unwrap_or(p.slot_bytes).max(64),
        });
    }
    if cfg.raw_echo.is_some() && cfg.scenario != Scenario::Steady {
        return Err("--raw-echo goes with the steady scenario".into());
    }
    let report = crate::tools::loadgen::run(&cfg)?;
    if let Some(p) = &a.hist_log {
        report.write_hlog(p)?;
    }
    Ok(print_report(a.json, report.failed(), || report.json(), || report.table()))
}

fn demo(a: DemoArgs) -> Result<ExitCode, String> {
    let d = crate::tools::demo::DemoConfig {
        udp_devices: a.devices,
        tcp_devices: a.tcp_clients,
        rate: a.rate,
        seconds: a.seconds,
        out: a.out,
        io: a.io,
        shards: a.shards,
    };
    let (report, dir) = crate::tools::demo::run(&d)?;
    println!();
    print!("{}", report.table());
    println!();
    print!("{}", report.histogram_text());
    println!();
    println!(
        "files: {}/summary.json (summary), {}/load.hlog (echo and logon latency), {}/gateway.hlog (gateway service, cycle and handshake time)",
        dir.display(),
        dir.display(),
        dir.display()
    );
    Ok(if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

fn hist(a: HistArgs) -> Result<ExitCode, String> {
    use crate::tools::hist;
    let read = |p: &PathBuf| hist::read_log(p, a.unit).map_err(|e| e.to_string());
    match &a.command {
        HistCommand::Show { file } => print!("{}", hist::show(&read(file)?)),
        HistCommand::Compare { a: fa, b: fb } => {
            print!("{}", hist::compare(&read(fa)?, &read(fb)?)?)
        }
        HistCommand::Plot { files, output, tag, title, width, height, log_y } => {
            let opt = hist::PlotOptions {
                title: title.clone(),
                width: *width,
                height: *height,
                log_y: *log_y,
            };
            tracing::info!("{}", hist::plot(files, a.unit, tag, &opt, output)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}
