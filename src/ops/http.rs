//! `/metrics`, `/sessions` and `/healthz` over HTTP/1.1 (loopback by default), off the hot path:
//! hyper's server on a one-thread tokio runtime, so many clients are served at once and a slow
//! one holds nothing but its own connection. Each connection has `http_header_timeout_ms` to
//! send its request headers (at most 8 KiB, hyper's smallest buffer), one request, and 10 s in
//! all; at most `http_max_connections` are open, and a connection beyond is closed at once.

use std::convert::Infallible;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};

use super::housekeeping::View;
use super::metrics::{CONTENT_TYPE, metrics, sessions};

/// The HTTP endpoint's limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Connections open at once (`observability.http_max_connections`).
    pub max_connections: usize,
    /// Time to send the request headers (`observability.http_header_timeout_ms`).
    pub header_timeout: Duration,
}

/// Everything one connection may take, headers, request and response together.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the accept loop looks at `stop`.
const STOP_CHECK: Duration = Duration::from_millis(100);

/// The endpoint's runtime (one thread) and its listener, made by the caller so that a failure
/// (no file descriptor left for the runtime's epoll and eventfd) fails the gateway's start
/// instead of leaving it running without `/metrics`.
pub struct Endpoint {
    rt: tokio::runtime::Runtime,
    listener: tokio::net::TcpListener,
}

impl Endpoint {
    /// Builds the runtime and registers `listener` with it.
    pub fn new(listener: TcpListener) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        listener.set_nonblocking(true)?;
        let listener = {
            let _in = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        Ok(Self { rt, listener })
    }
}

/// Serves `/metrics`, `/sessions` and `/healthz` until `stop`.
pub fn serve_http(
    endpoint: Endpoint,
    view: Arc<Mutex<View>>,
    stop: Arc<AtomicBool>,
    limits: HttpLimits,
) {
    let Endpoint { rt, listener } = endpoint;
    rt.block_on(async move {
        let open = Arc::new(AtomicUsize::new(0));
        while !stop.load(Ordering::Relaxed) {
            let Ok(accepted) = tokio::time::timeout(STOP_CHECK, listener.accept()).await else {
                continue;
            };
            let Ok((stream, _)) = accepted else { continue };
            if open.load(Ordering::Relaxed) >= limits.max_connections {
                drop(stream);
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let (view, open) = (view.clone(), open.clone());
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let view = view.clone();
                    async move { Ok::<_, Infallible>(respond(&req, &view)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(limits.header_timeout)
                    .max_buf_size(8192)
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service);
                let _ = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    });
}

fn respond(req: &Request<Incoming>, view: &Mutex<View>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => {
            (StatusCode::OK, CONTENT_TYPE, metrics(&view.lock().unwrap_or_else(|e| e.into_inner())))
        }
        "/sessions" => (
            StatusCode::OK,
            "application/json",
            sessions(&view.lock().unwrap_or_else(|e| e.into_inner())),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /sessions or /healthz\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}
