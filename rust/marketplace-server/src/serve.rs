//! The connection loop: accepts TCP connections and serves HTTP/1.1 on
//! them with limits that hold on the open internet.
//!
//! - **A connection cap** (`--max-connections`): beyond it, new clients wait
//!   in the kernel's accept queue until a connection closes. One address may
//!   hold at most `--max-connections-per-ip` of them (trusted proxies
//!   excepted); beyond that its new connections are closed at once, so a
//!   single host cannot fill the cap.
//! - **A header timeout** (`--header-timeout-secs`): a client that opens a
//!   socket and sends half a request line, or a keep-alive connection left
//!   idle, is closed after it. (axum's own `serve` runs hyper without a
//!   timer, so neither would ever happen.)
//! - **A request timeout** (`--request-timeout-secs`, in
//!   [`crate::routes`]): from headers to answer, body included.
//!
//! Shutdown is graceful: the listener closes, connections finish the
//! request they are serving, and the caller bounds the wait.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::Request;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower::Service;

/// Limits of one listener.
#[derive(Debug, Clone)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub per_ip: usize,
    pub header_timeout: Duration,
    /// Peers the per-address limit does not apply to (load balancers).
    pub exempt: Vec<crate::net::Cidr>,
}

/// Open connections per peer address.
#[derive(Default)]
struct PerIp(std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>);

impl PerIp {
    fn enter(&self, ip: std::net::IpAddr, max: usize) -> bool {
        let Ok(mut map) = self.0.lock() else {
            return true;
        };
        let n = map.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn leave(&self, ip: std::net::IpAddr) {
        if let Ok(mut map) = self.0.lock() {
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true, then stops accepting
/// and waits for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnLimits,
    mut stop: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = Arc::new(PerIp::default());
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stopped(&mut stop) => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off a little.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stopped(&mut stop) => break,
        };
        let ip = crate::net::limit_key(peer.ip());
        let counted = !limits.exempt.iter().any(|c| c.contains(peer.ip()));
        if counted && !per_ip.enter(ip, limits.per_ip.max(1)) {
            drop(stream);
            drop(permit);
            continue;
        }
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let mut app = app.clone();
            async move { app.call(req).await }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        let per_ip = per_ip.clone();
        tokio::spawn(async move {
            let _ = conn.await;
            if counted {
                per_ip.leave(ip);
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Completes once `stop` is true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
