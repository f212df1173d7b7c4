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
use crate::io::{self, BackendConfig};
use crate::runtime::acceptor::{self, AcceptorSpec};
use crate::runtime::handoff::Handoff;
use crate::runtime::report::{Published, ShardLink, Snapshot};
use crate::runtime::shard::tap::{TraceFilter, TraceRecord};
use crate::runtime::shard::{self, ShardSpec};
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
    /// Bytes reserved for session slabs and journals, all shards.
    pub reserved_bytes: usize,
    shutdown: Arc<AtomicBool>,
    shards: Vec<JoinHandle<Counters>>,
    acceptor: Option<JoinHandle<Counters>>,
}

/// What a stopped gateway counted.
#[derive(Debug, Default)]
pub struct Totals {
    /// Session counters summed over shards.
    pub counters: Counters,
    /// Acceptor counters.
    pub acceptor: Counters,
}

fn bind_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Large buffers absorb bursts (resends, handshake storms); the kernel caps them at
    // net.core.rmem_max / wmem_max (see tuning/sysctl.conf).
    let _ = s.set_recv_buffer_size(8 << 20);
    let _ = s.set_send_buffer_size(8 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
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
        let hs_udp = bind_udp(g.handshake_addr)
            .map_err(|e| format!("cannot bind UDP {}: {e}", g.handshake_addr))?;
        let handshake_addr = hs_udp.local_addr().map_err(|e| e.to_string())?;
        let tcp = TcpListener::bind(g.tcp_addr)
            .map_err(|e| format!("cannot bind TCP {}: {e}", g.tcp_addr))?;
        let tcp_addr = tcp.local_addr().map_err(|e| e.to_string())?;
        let (kind, why) = io::select(&g.io);
        let kind = if kind == io::Kind::Uring && io::uring::probe().is_err() && g.io == "auto" {
            io::Kind::Epoll
        } else {
            kind
        };
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut session_ports = Vec::new();
        // Stops and joins the shards already started if a later step fails.
        let mut guard = StartGuard { shutdown: shutdown.clone(), handles: Vec::new() };
        let handles = &mut guard.handles;
        let mut producers = Vec::new();
        let mut wakes = Vec::new();
        let mut links = Vec::new();
        let mut backend_name = why.clone();
        let obs = &cfg.observability;
        let filter = TraceFilter::new(&obs.trace_devices, &obs.trace_addrs)?;
        let mut trace_rx = Vec::new();
        for i in 0..shards {
            let port =
                g.session_port_base.checked_add(i as u16).ok_or("session ports overflow u16")?;
            let addr = SocketAddr::new(g.handshake_addr.ip(), port);
            let udp =
                bind_udp(addr).map_err(|e| format!("cannot bind session port {addr}: {e}"))?;
            session_ports.push(port);
            let wake = io::eventfd().map_err(|e| format!("eventfd: {e}"))?;
            let waker = wake.try_clone().map_err(|e| format!("eventfd: {e}"))?;
            let bcfg = BackendConfig {
                max_datagram: cfg.udp.max_datagram,
                batch: 64,
                max_connections: cfg.tcp.max_connections_per_shard,
                send_queue_bytes: cfg.tcp.send_queue_bytes,
            };
            let (backend, waker) =
                match io::build(kind, udp.try_clone().map_err(|e| e.to_string())?, wake, bcfg) {
                    Ok(b) => (b, waker),
                    Err(e) if g.io == "auto" => {
                        // The failed build closed its eventfd: the fallback gets a new one.
                        backend_name = format!("epoll (io_uring backend failed: {e})");
                        let wake = io::eventfd().map_err(|e| format!("eventfd: {e}"))?;
                        let waker = wake.try_clone().map_err(|e| format!("eventfd: {e}"))?;
                        let b = io::build(io::Kind::Epoll, udp, wake, bcfg)
                            .map_err(|e| format!("epoll backend: {e}"))?;
                        (b, waker)
                    }
                    Err(e) => return Err(format!("shard {i}: {e}")),
                };
            wakes.push(waker);
            start_shard(
                i,
                cfg,
                backend,
                &mut producers,
                &mut links,
                handles,
                &auth,
                master,
                clock,
                &shutdown,
                &cores,
                &filter,
                &mut trace_rx,
            )?;
        }
        let spec = AcceptorSpec {
            udp: hs_udp,
            tcp,
            uring: kind == io::Kind::Uring,
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
            max_pending: 1024,
            report,
        };
        let acceptor = std::thread::Builder::new()
            .name("fleetgate-acceptor".into())
            .spawn(move || acceptor::run(spec))
            .map_err(|e| e.to_string())?;
        let reserved_bytes = shards * Endpoint::reserved_bytes(&cfg.endpoint_config(0));
        let gateway = Self {
            handshake_addr,
            tcp_addr,
            session_ports,
            backend: backend_name,
            reserved_bytes,
            shutdown,
            shards: std::mem::take(&mut guard.handles),
            acceptor: Some(acceptor),
        };
        let published =
            Published { shards: links, traces: trace_rx, acceptor: acceptor_reports, clock };
        Ok((gateway, published))
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

#[allow(clippy::too_many_arguments)]
fn start_shard(
    i: usize,
    cfg: &Config,
    backend: Box<dyn io::Backend + Send>,
    producers: &mut Vec<rtrb::Producer<Handoff>>,
    links: &mut Vec<ShardLink>,
    handles: &mut Vec<JoinHandle<Counters>>,
    auth: &Arc<dyn Authenticator + Send + Sync>,
    master: [u8; 32],
    clock: Clock,
    shutdown: &Arc<AtomicBool>,
    cores: &[core_affinity::CoreId],
    filter: &TraceFilter,
    trace_rx: &mut Vec<rtrb::Consumer<TraceRecord>>,
) -> Result<(), String> {
    let trace = if filter.is_empty() {
        None
    } else {
        let (tx, rx) = rtrb::RingBuffer::new(8192);
        trace_rx.push(rx);
        Some((filter.clone(), tx))
    };
    let (tx, rx) = rtrb::RingBuffer::new(cfg.gateway.handoff_queue);
    producers.push(tx);
    let (snap_tx, snap_rx) = rtrb::RingBuffer::new(4);
    let (mut recycle_tx, recycle_rx) = rtrb::RingBuffer::new(4);
    for _ in 0..2 {
        let _ = recycle_tx.push(Box::new(Snapshot::new(
            cfg.gateway.max_sessions_per_shard,
            cfg.observability.latency_ns_max,
        )));
    }
    links.push(ShardLink { snapshots: snap_rx, recycle: recycle_tx });
    let core = if cfg.gateway.cpus.is_empty() {
        cores.get(i % cores.len().max(1)).copied()
    } else {
        let want = cfg.gateway.cpus[i % cfg.gateway.cpus.len()];
        cores.iter().find(|c| c.id == want).copied()
    };
    let app =
        crate::apps::builtin(&cfg.gateway.app, Duration::from_millis(cfg.gateway.feed_interval_ms))
            .ok_or_else(|| format!("unknown gateway.app {:?}", cfg.gateway.app))?;
    let spec = ShardSpec {
        index: i,
        endpoint: cfg.endpoint_config(i as u16),
        max_message_bytes: cfg.tcp.max_message_bytes,
        backend,
        handoffs: rx,
        snapshots: snap_tx,
        recycled: recycle_rx,
        auth: auth.clone(),
        app,
        master,
        cookie_rotate: Duration::from_secs(cfg.udp.cookie_rotate_s.max(1)),
        clock,
        shutdown: shutdown.clone(),
        drain_timeout: Duration::from_millis(cfg.gateway.drain_timeout_ms),
        close_linger: Duration::from_millis(cfg.tcp.close_linger_ms),
        spin: if cfg.gateway.idle == "spin" {
            Duration::from_micros(cfg.gateway.spin_us)
        } else {
            Duration::ZERO
        },
        core,
        trace,
        groups: cfg.group_policy(),
        group_apps: cfg
            .group_apps()
            .iter()
            .filter_map(|n| {
                crate::apps::builtin(n, Duration::from_millis(cfg.gateway.feed_interval_ms))
            })
            .collect(),
    };
    let h = std::thread::Builder::new()
        .name(format!("fleetgate-shard-{i}"))
        .spawn(move || shard::run(spec))
        .map_err(|e| e.to_string())?;
    handles.push(h);
    Ok(())
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
