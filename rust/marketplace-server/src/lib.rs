//! The reference marketplace server.
//!
//! Players list salvaged items and buy each other's. The old backend sold an
//! item twice because it read a JSON document, flipped `status` and wrote the
//! document back; here every state change is one conditional update inside a
//! transaction that also stores the idempotent answer.
//!
//! # Layout
//! - [`config`]: flags and environment variables, with defaults.
//! - [`db`]: connection pools, migrations, the SQLite/PostgreSQL split.
//! - [`market`]: the state changes (list, reprice, cancel, purchase, claim).
//! - [`idempotency`]: runs a state change exactly once per `Idempotency-Key`.
//! - [`routes`]: HTTP handlers, extractors (token, key, JSON) and middleware.
//! - [`error`]: the one error type that becomes every error answer.
//! - [`auth`], [`rate_limit`], [`metrics`]: the supporting cast.
//!
//! # Running in-process
//! Tests and tools start a server on port 0 with [`spawn`]:
//! ```no_run
//! # async fn demo() -> Result<(), marketplace_server::StartError> {
//! let server = marketplace_server::spawn(marketplace_server::Config::for_tests(
//!     "sqlite:///tmp/market.sqlite",
//! ))
//! .await?;
//! println!("serving on http://{}", server.addr());
//! server.shutdown().await;
//! # Ok(()) }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub mod auth;
pub mod config;
pub mod db;
pub mod error;
pub mod idempotency;
pub mod market;
pub mod metrics;
pub mod rate_limit;
pub mod routes;

pub use config::Config;
pub use db::{Backend, Db};

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) config: Config,
    pub(crate) clock: Arc<Clock>,
    pub(crate) db: Db,
    pub(crate) signer: auth::TokenSigner,
    pub(crate) limiter: rate_limit::RateLimiter,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) in_flight: idempotency::InFlight,
    /// The SQLite writer; `None` on PostgreSQL.
    pub(crate) group_commit: Option<idempotency::GroupCommit>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// Unix time in seconds, by the system clock.
pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The server's "now", in Unix seconds: the system clock plus an offset that
/// only tests move (to show what a replay looks like after the idempotency
/// retention has passed). Every timestamp the server writes or compares —
/// rows, token expiry, pruning — comes from here.
#[derive(Debug, Default)]
pub struct Clock {
    offset_secs: std::sync::atomic::AtomicI64,
}

impl Clock {
    pub fn now(&self) -> i64 {
        now_secs().saturating_add(self.offset_secs.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Moves this server's clock forward (tests only).
    pub fn advance(&self, secs: i64) {
        self.offset_secs
            .fetch_add(secs, std::sync::atomic::Ordering::Relaxed);
    }
}

/// 16 random hex characters, for request ids.
pub(crate) fn random_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// A server that has connected to its database and bound its socket but not
/// yet started answering.
pub struct BoundServer {
    state: AppState,
    listener: tokio::net::TcpListener,
}

impl BoundServer {
    /// Connects to the database (running migrations) and binds the socket.
    pub async fn bind(config: Config) -> Result<BoundServer, StartError> {
        config.validate().map_err(StartError::Config)?;
        let db = Db::connect(&config).await?;
        let secret = match &config.token_secret {
            Some(secret) => secret.clone(),
            None => db.stored_token_secret().await?,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| StartError::Listen {
                addr: config.listen,
                source,
            })?;
        let clock = Arc::new(Clock::default());
        let state = AppState(Arc::new(Inner {
            limiter: rate_limit::RateLimiter::new(
                config.rate_limit_per_sec,
                config.rate_limit_burst,
            ),
            signer: auth::TokenSigner::new(&secret),
            metrics: metrics::Metrics::default(),
            in_flight: idempotency::InFlight::default(),
            group_commit: (db.backend() == Backend::Sqlite)
                .then(|| idempotency::GroupCommit::start(db.clone())),
            clock,
            db,
            config,
        }));
        Ok(BoundServer { state, listener })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.0.config.listen)
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight
    /// requests finish (up to the configured grace period) and closes the
    /// database.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let BoundServer { state, listener } = self;
        let grace = Duration::from_secs(state.0.config.shutdown_grace_secs);
        let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
        let pruner = tokio::spawn(prune_idempotency_keys(state.clone(), stop_rx.clone()));
        let app = routes::router(state.clone());
        let stop_signal = async move {
            shutdown.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = stop_tx.send(true);
        };
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(stop_signal);
        let server = tokio::spawn(async move { server.await });
        // Wait for the server to finish, bounding the drain once the stop
        // signal has fired.
        let mut server = server;
        let result = tokio::select! {
            r = &mut server => r,
            _ = async { let _ = stop_rx.wait_for(|stopped| *stopped).await; } => {
                match tokio::time::timeout(grace, &mut server).await {
                    Ok(r) => r,
                    Err(_) => {
                        tracing::warn!(?grace, "grace period over; dropping remaining connections");
                        server.abort();
                        Ok(Ok(()))
                    }
                }
            }
        };
        pruner.abort();
        state.0.db.close().await;
        match result {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(e)),
        }
    }
}

async fn prune_idempotency_keys(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let retention = state.0.config.idempotency_retention().as_secs() as i64;
    loop {
        let cutoff = state.0.clock.now() - retention;
        match state.0.db.prune_idempotency_keys(cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "pruned expired idempotency keys"),
            Err(e) => tracing::warn!(error = %e, "pruning idempotency keys failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A server running on the current tokio runtime. Dropping it stops it
/// without waiting; [`RunningServer::shutdown`] waits for a clean stop.
pub struct RunningServer {
    addr: SocketAddr,
    state: AppState,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// This server's clock (tests move it forward).
    pub fn clock(&self) -> &Clock {
        &self.state.0.clock
    }

    /// Deletes the stored answers older than the retention now, as the hourly
    /// pruner would; returns how many went.
    pub async fn prune_now(&self) -> Result<u64, sqlx::Error> {
        let retention = self.state.0.config.idempotency_retention().as_secs() as i64;
        let cutoff = self.state.0.clock.now() - retention;
        self.state.0.db.prune_idempotency_keys(cutoff).await
    }

    /// Graceful stop: in-flight requests finish, the database closes.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Binds and starts a server on the current runtime.
pub async fn spawn(config: Config) -> Result<RunningServer, StartError> {
    let bound = BoundServer::bind(config).await?;
    let addr = bound.local_addr();
    let state = bound.state.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async move {
        let _ = stop_rx.await;
    }));
    Ok(RunningServer {
        addr,
        state,
        stop: Some(stop_tx),
        task: Some(task),
    })
}
