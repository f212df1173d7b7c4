//! A whole gateway: the data plane ([`Gateway`]) and, over what it publishes, the housekeeping
//! thread and the HTTP endpoint.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::admin;
use super::housekeeping::{self, View};
use super::http;
use crate::config::Config;
use crate::runtime::gateway::{Gateway, Totals};
use crate::session::Authenticator;

/// A running gateway with its operator side.
pub struct Server {
    /// The data plane: addresses as bound, backend, shards and acceptor.
    pub gateway: Gateway,
    /// The HTTP endpoint as bound, if enabled.
    pub metrics_addr: Option<SocketAddr>,
    /// The merged view behind /metrics.
    pub view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    housekeeping: Option<JoinHandle<()>>,
    http: Option<JoinHandle<()>>,
    admin: Option<JoinHandle<()>>,
}

impl Server {
    /// Binds every socket (the HTTP one first) and starts every thread.
    pub fn start(cfg: &Config, auth: Arc<dyn Authenticator + Send + Sync>) -> Result<Self, String> {
        Self::start_with(cfg, auth, Arc::new(AtomicBool::new(false)))
    }

    /// As [`Server::start`], stopped by `shutdown` (the flag the signal handlers set).
    pub fn start_with(
        cfg: &Config,
        auth: Arc<dyn Authenticator + Send + Sync>,
        shutdown: Arc<AtomicBool>,
    ) -> Result<Self, String> {
        let obs = &cfg.observability;
        let listener = if obs.metrics_addr.is_empty() {
            None
        } else {
            let l = TcpListener::bind(&obs.metrics_addr)
                .map_err(|e| format!("cannot bind metrics {}: {e}", obs.metrics_addr))?;
            Some(l)
        };
        let admin_path = PathBuf::from(&cfg.gateway.admin_socket);
        let admin_listener = if cfg.gateway.admin_socket.is_empty() {
            None
        } else {
            Some(admin::bind(&admin_path)?)
        };
        let (gateway, published) = Gateway::start(cfg, auth, shutdown)?;
        let service_cpus = cfg.gateway.service_cpus.clone();
        let view = Arc::new(Mutex::new(View::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let hk = {
            let (view, stop) = (view.clone(), stop.clone());
            let log = obs.hist_log.clone().map(PathBuf::from);
            let trace_dir = PathBuf::from(&obs.trace_dir);
            let max = obs.latency_ns_max;
            spawn("fleetgate-housekeeping", &service_cpus, move || {
                housekeeping::run(published, view, log, trace_dir, stop, max)
            })?
        };
        let mut server = Self {
            gateway,
            metrics_addr: None,
            view,
            stop,
            housekeeping: Some(hk),
            http: None,
            admin: None,
        };
        if let (Some(l), Some(control)) = (admin_listener, server.gateway.take_control()) {
            let a = admin::Admin::new(control, server.view.clone());
            let stop = server.stop.clone();
            tracing::info!(path = %admin_path.display(), "operator channel listening");
            let h = spawn("fleetgate-admin", &service_cpus, move || {
                admin::serve(l, admin_path, a, stop)
            })?;
            server.admin = Some(h);
        }
        if let Some(l) = listener {
            server.metrics_addr = l.local_addr().ok();
            let (view, stop) = (server.view.clone(), server.stop.clone());
            let limits = http::HttpLimits {
                max_connections: obs.http_max_connections,
                header_timeout: Duration::from_millis(obs.http_header_timeout_ms),
            };
            let endpoint = http::Endpoint::new(l)
                .map_err(|e| format!("cannot start the HTTP endpoint: {e}"))?;
            let h = spawn("fleetgate-http", &service_cpus, move || {
                http::serve_http(endpoint, view, stop, limits)
            })?;
            server.http = Some(h);
        }
        Ok(server)
    }

    /// The flag that stops the gateway (for signal handlers).
    pub fn shutdown_flag(&self) -> Arc<AtomicBool> {
        self.gateway.shutdown_flag()
    }

    /// Logs every session out, waits for the threads, returns the totals.
    pub fn stop(mut self) -> Totals {
        self.shutdown_flag().store(true, Ordering::Relaxed);
        self.wait()
    }

    /// Waits until the shutdown flag is set (by a signal) and the gateway has stopped, then
    /// stops the operator side (after the shards' last snapshots).
    pub fn wait(&mut self) -> Totals {
        let totals = self.gateway.wait();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.housekeeping.take() {
            let _ = h.join();
        }
        if let Some(h) = self.http.take() {
            let _ = h.join();
        }
        if let Some(h) = self.admin.take() {
            let _ = h.join();
        }
        totals
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.housekeeping.is_some() || self.http.is_some() || self.admin.is_some() {
            self.shutdown_flag().store(true, Ordering::Relaxed);
            let _ = self.wait();
        }
    }
}

/// Starts a service thread on the service cores (`spawn_service`); a failed spawn is the start's
/// error.
fn spawn<T: Send + 'static>(
    name: &str,
    cpus: &[usize],
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<JoinHandle<T>, String> {
    crate::runtime::placement::spawn_service(name, cpus, f).map_err(|e| e.to_string())
}
