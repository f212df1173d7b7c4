//! Starting and stopping the gateway's data plane: sockets, shard threads (one per core,
//! pinned) and the acceptor. What it publishes ([`Published`]) is handed to the caller, which
//! runs the operator side over it (`ops::Server` does, for `fleetgate serve`, `fleetgate demo`
//! and the integration tests).

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::counters::Counters;
use crate::io::{self, BackendConfig, BackendSpec};
use crate::runtime::acceptor::{self, AcceptorSpec};
use crate::runtime::control::{self, Control};
use crate::runtime::report::{Published, SESSION_ROWS, ShardLink, Snapshot};
use crate::runtime::shard::tap::TraceFilter;
use crate::runtime::shard::{self, Publish, ShardSpec};
use crate::session::handshake::HandshakeConfig;
use crate::session::{Authenticator, Endpoint};
use crate::time::Clock;

/// A running gateway's data plane.
pub struct Gateway {
    /// The UDP handshake port as bound.
    pub handshake_addr: SocketAddr,
    /// The TCP port as bound.
    pub tcp_addr: SocketAddr,
    /// Each shard's UDP session port.
    pub session_ports: Vec<u16>,
    /// Backend chosen for the shards and why.
    pub backend: String,
    /// Bytes reserved for session slabs, journals and device config strings, all shards.
    pub reserved_bytes: usize,
    /// Of those, the journals'.
    pub journal_bytes: usize,
    shutdown: Arc<AtomicBool>,
    shards: Vec<JoinHandle<Counters>>,
    acceptor: Option<JoinHandle<Counters>>,
    /// Behind a mutex only so that a `Gateway` stays `Sync` (the queue ends are not); taken
    /// once, off every hot path.
    control: std::sync::Mutex<Option<Control>>,
}

/// What a stopped gateway counted.
#[derive(Debug, Default)]
pub struct Totals {
    /// Session counters summed over shards.
    pub counters: Counters,
    /// Acceptor counters.
    pub acceptor: Counters,
}

/// How long binding retries while the address is still in use. A gateway killed with SIGKILL
/// holds its ports a little longer than its process: io_uring releases the sockets 6-12 ms after
/// the process is reaped (epoll about 1 ms), so an immediate restart would fail without this.
const BIND_RETRY: Duration = Duration::from_secs(2);

/// Calls `bind` until it succeeds, fails with another error than `AddrInUse`, or
/// [`BIND_RETRY`] has passed (logged once).
fn bind_retrying<T>(
    what: &str,
    addr: SocketAddr,
    mut bind: impl FnMut() -> std::io::Result<T>,
) -> Result<T, String> {
    let t0 = std::time::Instant::now();
    let mut logged = false;
    loop {
        match bind() {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && t0.elapsed() < BIND_RETRY => {
                if !logged {
                    tracing::warn!(%addr, "{what} in use, retrying for up to {BIND_RETRY:?}");
                    logged = true;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => return Err(format!("cannot bind {what} {addr}: {e}")),
        }
    }
}

fn bind_udp(what: &str, addr: SocketAddr, buffer_bytes: usize) -> Result<UdpSocket, String> {
    bind_retrying(what, addr, || {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // Large buffers absorb bursts (resends, handshake storms); the kernel caps them at
        // net.core.rmem_max / wmem_max (see tuning/sysctl.conf).
        let _ = s.set_recv_buffer_size(buffer_bytes);
        let _ = s.set_send_buffer_size(buffer_bytes);
        s.bind(&addr.into())?;
        Ok(s.into())
    })
}

/// The TCP listener with `SO_REUSEADDR` (connections of a previous run in TIME_WAIT do not block
/// the port) and a backlog of `backlog`, or the host's `net.core.somaxconn` when 0.
fn bind_tcp(addr: SocketAddr, backlog: u32) -> Result<TcpListener, String> {
    let backlog = match backlog {
        0 => std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(4096),
        n => n,
    };
    bind_retrying("TCP", addr, || {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(backlog.min(i32::MAX as u32) as i32)?;
        Ok(s.into())
    })
}

fn random_secret() -> std::io::Result<[u8; 32]> {
    let mut k = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut k)?;
    Ok(k)
}

impl Gateway {
    /// Binds every socket and starts the shards and the acceptor; setting `shutdown` (as the
    /// signal handlers of [`crate::runtime::signals`] do) stops them. Returns the running
    /// gateway and the reading ends of what it publishes.
    pub fn start(
        cfg: &Config,
        auth: Arc<dyn Authenticator + Send + Sync>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<(Self, Published), String> {
        let shards = cfg.shard_count();
        let clock = Clock::new();
        let master = random_secret().map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
        let (report, acceptor_reports) = rtrb::RingBuffer::new(4);
        let g = &cfg.gateway;
        let sockbuf = cfg.udp.socket_buffer_bytes;
        let hs_udp = bind_udp("UDP", g.handshake_addr, sockbuf)?;
        let handshake_addr = hs_udp.local_addr().map_err(|e| e.to_string())?;
        let tcp = bind_tcp(g.tcp_addr, cfg.tcp.listen_backlog)?;
        let tcp_addr = tcp.local_addr().map_err(|e| e.to_string())?;
        // One probe, for the shards and the acceptor.
        let selected = io::select(g.io)?;
        tracing::info!(backend = %selected.why, "I/O backend selected");
        let config = Arc::new(cfg.clone());
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        super::placement::check_service_cpus(&g.service_cpus)?;
        let mut session_ports = Vec::new();
        // Stops and joins the shards already started if a later step fails.
        let mut guard = StartGuard { shutdown: shutdown.clone(), handles: Vec::new() };
        let mut producers = Vec::new();
        let mut wakes = Vec::new();
        let mut links = Vec::new();
        let obs = &cfg.observability;
        let filter = TraceFilter::new(&obs.trace_devices, &obs.trace_addrs)?;
        let mut trace_rx = Vec::new();
        let draining = Arc::new(AtomicBool::new(false));
        let mut control_wakes = Vec::new();
        let mut shard_controls = Vec::new();
        for i in 0..shards {
            let port =
                g.session_port_base.checked_add(i as u16).ok_or("session ports overflow u16")?;
            let addr = SocketAddr::new(g.handshake_addr.ip(), port);
            let udp = bind_udp("session port", addr, sockbuf)?;
            session_ports.push(port);
            let wake = io::eventfd().map_err(|e| format!("eventfd: {e}"))?;
            wakes.push(wake.try_clone().map_err(|e| format!("eventfd: {e}"))?);
            control_wakes.push(wake.try_clone().map_err(|e| format!("eventfd: {e}"))?);
            let (operator_ends, shard_control) = control::pair();
            shard_controls.push(operator_ends);
            let backend = BackendSpec {
                kind: selected.kind,
                fallback: selected.fallback,
                udp,
                wake,
                cfg: BackendConfig {
                    max_datagram: cfg.udp.max_datagram,
                    batch: g.io_batch,
                    max_connections: cfg.connection_ids_per_shard(),
                    send_queue_bytes: cfg.tcp.send_queue_bytes,
                },
            };
            let trace = (!filter.is_empty()).then(|| {
                let (tx, rx) = rtrb::RingBuffer::new(obs.trace_queue);
                trace_rx.push(rx);
                (filter.clone(), tx)
            });
            let (tx, rx) = rtrb::RingBuffer::new(g.handoff_queue);
            producers.push(tx);
            let (snapshots, snap_rx) = rtrb::RingBuffer::new(4);
            let (mut recycle, recycled) = rtrb::RingBuffer::new(4);
            for _ in 0..2 {
                let _ = recycle.push(Box::new(Snapshot::new(
                    g.max_sessions_per_shard.min(SESSION_ROWS),
                    obs.latency_ns_max,
                )));
            }
            links.push(ShardLink { snapshots: snap_rx, recycle });
            let core = if g.cpus.is_empty() {
                cores.get(i % cores.len().max(1)).copied()
            } else {
                let want = g.cpus[i % g.cpus.len()];
                cores.iter().find(|c| c.id == want).copied()
            };
            let (ready, built) = std::sync::mpsc::sync_channel(1);
            let spec = ShardSpec {
                index: i,
                config: config.clone(),
                backend,
                handoffs: rx,
                publish: Publish { snapshots, recycled },
                auth: auth.clone(),
                master,
                clock,
                shutdown: shutdown.clone(),
                core,
                trace,
                control: shard_control,
                ready,
            };
            let h = std::thread::Builder::new()
                .name(format!("fleetgate-shard-{i}"))
                .spawn(move || shard::run(spec))
                .map_err(|e| e.to_string())?;
            guard.handles.push(h);
            // The shard builds its backend on its own thread; wait for the outcome.
            match built.recv() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(format!("shard {i} ended before building its backend")),
            }
        }
        let spec = AcceptorSpec {
            udp: hs_udp,
            tcp,
            uring: selected.kind == io::Kind::Uring,
            handshake: HandshakeConfig {
                shards,
                session_port_base: g.session_port_base,
                cookie_ttl: Duration::from_millis(cfg.udp.cookie_ttl_ms),
            },
            master,
            cookie_rotate: Duration::from_secs(cfg.udp.cookie_rotate_s.max(1)),
            clock,
            shutdown: shutdown.clone(),
            handoffs: producers,
            wakes,
            logon_timeout: Duration::from_millis(cfg.tcp.logon_timeout_ms),
            rate_per_s: cfg.udp.handshake_rate_per_s,
            burst: cfg.udp.handshake_burst,
            max_pending: cfg.tcp.max_pending_logons,
            max_message_bytes: cfg.tcp.max_message_bytes,
            report,
            draining: draining.clone(),
        };
        let acceptor =
            super::placement::spawn_service("fleetgate-acceptor", &g.service_cpus, move || {
                acceptor::run(spec)
            })
            .map_err(|e| e.to_string())?;
        let reserved_bytes = shards * Endpoint::reserved_bytes(&cfg.endpoint_config(0));
        let journal_bytes = shards * Endpoint::journal_bytes(&cfg.endpoint_config(0));
        let gateway = Self {
            handshake_addr,
            tcp_addr,
            session_ports,
            backend: selected.why,
            reserved_bytes,
            journal_bytes,
            shutdown,
            shards: std::mem::take(&mut guard.handles),
            acceptor: Some(acceptor),
            control: std::sync::Mutex::new(Some(Control::new(
                shard_controls,
                control_wakes,
                draining,
            ))),
        };
        let published =
            Published { shards: links, traces: trace_rx, acceptor: acceptor_reports, clock };
        Ok((gateway, published))
    }

    /// The operator side of the command queues (drain, undrain, disconnect): taken once, by
    /// the operator channel (`ops::admin`).
    pub fn take_control(&self) -> Option<Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// The flag that stops the gateway (for signal handlers).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.shutdown.clone()
    }

    /// Logs every session out, waits for the threads, returns the totals.
    pub fn stop(mut self) -> Totals {
        self.shutdown.store(true, Ordering::Relaxed);
        self.wait()
    }

    /// Waits until the shutdown flag is set (by a signal) and the gateway has stopped.
    pub fn wait(&mut self) -> Totals {
        let mut t = Totals::default();
        while !self.shutdown.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::info!("shutting down");
        if let Some(a) = self.acceptor.take() {
            t.acceptor = a.join().unwrap_or_default();
        }
        for s in self.shards.drain(..) {
            if let Ok(c) = s.join() {
                t.counters.merge(&c);
            }
        }
        t
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if !self.shards.is_empty() || self.acceptor.is_some() {
            self.shutdown.store(true, Ordering::Relaxed);
            let _ = self.wait();
        }
    }
}

/// Joins the shard threads started so far when [`Gateway::start`] fails half-way.
struct StartGuard {
    shutdown: Arc<AtomicBool>,
    handles: Vec<JoinHandle<Counters>>,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.handles.is_empty() {
            self.shutdown.store(true, Ordering::Relaxed);
            for h in self.handles.drain(..) {
                let _ = h.join();
            }
        }
    }
}
