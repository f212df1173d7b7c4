//! `/metrics`, `/sessions` and `/healthz` over HTTP on loopback: one request per connection,
//! served by one thread, off the hot path.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::housekeeping::View;
use super::metrics::{metrics, sessions};

/// Serves `/metrics`, `/sessions` and `/healthz` until `stop`.
pub fn serve_http(listener: TcpListener, view: Arc<Mutex<View>>, stop: Arc<AtomicBool>) {
    let _ = listener.set_nonblocking(true);
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
                handle(stream, &view);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

fn handle(stream: std::net::TcpStream, view: &Mutex<View>) {
    let mut reader = BufReader::new(&stream);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    // Skip the headers.
    let mut h = String::new();
    while reader.read_line(&mut h).is_ok_and(|n| n > 2) {
        h.clear();
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/");
    let (status, ctype, body) = match path {
        "/metrics" => (
            "200 OK",
            super::metrics::CONTENT_TYPE,
            metrics(&view.lock().unwrap_or_else(|e| e.into_inner())),
        ),
        "/sessions" => (
            "200 OK",
            "application/json",
            sessions(&view.lock().unwrap_or_else(|e| e.into_inner())),
        ),
        "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
        _ => (
            "404 Not Found",
            "text/plain",
            "not found: try /metrics, /sessions or /healthz\n".to_string(),
        ),
    };
    let mut out = &stream;
    let _ = write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
