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
//! - [`market`]: the state changes (list, reprice, cancel, purchase, claim,
//!   deposit, withdraw).
//! - [`books`]: accounts, stashes, value movements and the audit.
//! - [`economy`]: how value enters the market (policy, caps, catalog).
//! - [`admin`]: the game backend's API (grants, accounts, bans).
//! - [`idempotency`]: runs a state change exactly once per `Idempotency-Key`.
//! - [`routes`]: HTTP handlers, extractors (token, key, JSON) and middleware.
//! - [`error`]: the one error type that becomes every error answer.
//! - [`serve`]: the connection loop (connection cap, header and request timeouts).
//! - [`identity`], `players`: who a player is (device ids, the game's identity providers, linking).
//! - [`auth`], [`rate_limit`], [`net`], [`metrics`]: the supporting cast.
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

mod admin;
mod auth;
mod books;
pub mod config;
mod console;
mod db;
mod economy;
mod error;
mod extract;
mod idempotency;
pub mod identity;
mod market;
mod market_data;
mod metrics;
mod net;
mod op;
mod order_routes;
mod players;
mod rate_limit;
mod routes;
mod serve;
mod stream;

// The crate's surface: start a server ([`spawn`], [`BoundServer`]) with a
// [`Config`]; audit a database's books; and what tests need to reach past
// HTTP (the migrations, a token signer to forge tokens with).
pub use auth::TokenSigner;
pub use books::{audit as audit_connection, AuditReport};
pub use config::Config;
pub use console::utc_time;
pub use db::{audit, new_server_id, Backend, Db};

/// Shared state of every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// Market data answers, kept for a moment (see [`market_data`]).
    pub(crate) market_cache: market_data::Cache,
    pub(crate) policy: Arc<economy::Policy>,
    pub(crate) bans: admin::Bans,
    /// The game's identity providers (`--identity-providers`).
    pub(crate) identities: identity::Providers,
    /// The operator console's sign-in limits and last audit on this replica.
    pub(crate) console: console::Console,
    pub(crate) clock: Arc<Clock>,
    pub(crate) db: Db,
    pub(crate) signer: auth::TokenSigner,
    pub(crate) limiter: rate_limit::RateLimiter,
    pub(crate) metrics: metrics::Metrics,
    pub(crate) in_flight: idempotency::InFlight,
    /// The SQLite writer; `None` on PostgreSQL.
    pub(crate) group_commit: Option<idempotency::GroupCommit>,
    /// This market's identity (`server_secrets`), announced at login.
    pub(crate) server_id: String,
    /// The change stream's subscribers on this replica.
    pub(crate) stream: Arc<stream::Hub>,
    /// Turns true when the server starts shutting down (long-lived
    /// streams end on it).
    pub(crate) stop: tokio::sync::watch::Sender<bool>,
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
    metrics_listener: Option<tokio::net::TcpListener>,
}

impl BoundServer {
    /// Connects to the database (running migrations) and binds the socket.
    pub async fn bind(config: Config) -> Result<BoundServer, StartError> {
        config.validate().map_err(StartError::Config)?;
        let policy = Arc::new(config.policy().map_err(StartError::Config)?);
        let identities = config.identity_providers().map_err(StartError::Config)?;
        if !identities.is_empty() {
            tracing::info!(providers = ?identities.names(), "identity tokens accepted");
        } else if !config.device_logins {
            return Err(StartError::Config(
                "--device-logins false needs --identity-providers: nobody could log in".into(),
            ));
        }
        let db = Db::connect(&config).await?;
        let bans = admin::Bans::load(&db).await?;
        let secret = match &config.token_secret {
            Some(secret) => secret.clone(),
            None => db.stored_token_secret().await?,
        };
        let server_id = db.stored_server_id().await?;
        let bind = |addr: SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Listen { addr, source })
        };
        let listener = bind(config.listen).await?;
        let metrics_listener = match config.metrics_listen {
            Some(addr) => Some(bind(addr).await?),
            None => None,
        };
        let clock = Arc::new(Clock::default());
        let state = AppState(Arc::new(Inner {
            market_cache: market_data::Cache::new(std::time::Duration::from_millis(
                config.market_data_cache_ms,
            )),
            policy,
            bans,
            identities,
            console: console::Console::default(),
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
            server_id,
            stream: Arc::new(stream::Hub::new(config.stream_buffer)),
            stop: tokio::sync::watch::channel(false).0,
            db,
            config,
        }));
        Ok(BoundServer {
            state,
            listener,
            metrics_listener,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.state.0.config.listen)
    }

    /// Where `/metrics` is served when it has a listener of its own.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then stops accepting, lets in-flight
    /// requests finish (up to the configured grace period) and closes the
    /// database.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let BoundServer {
            state,
            listener,
            metrics_listener,
        } = self;
        let config = &state.0.config;
        let grace = Duration::from_secs(config.shutdown_grace_secs);
        let limits = serve::ConnLimits {
            max_connections: config.max_connections,
            per_ip: config.max_connections_per_ip,
            header_timeout: Duration::from_secs(config.header_timeout_secs),
            exempt: config.trusted_proxies.clone(),
        };
        let stop_rx = state.0.stop.subscribe();
        let tailer = tokio::spawn(state.0.stream.clone().tail(
            state.0.db.clone(),
            Duration::from_millis(config.stream_poll_ms),
            stop_rx.clone(),
        ));
        let pruner = tokio::spawn(prune_idempotency_keys(state.clone(), stop_rx.clone()));
        let bans = tokio::spawn(admin::refresh_bans(state.clone(), stop_rx.clone()));
        let expiry = tokio::spawn(sweep_expired_every_minute(state.clone(), stop_rx.clone()));
        let mut servers = vec![tokio::spawn(serve::serve(
            listener,
            routes::router(state.clone(), metrics_listener.is_none()),
            limits.clone(),
            stop_rx.clone(),
        ))];
        if let Some(listener) = metrics_listener {
            servers.push(tokio::spawn(serve::serve(
                listener,
                routes::metrics_router(state.clone()),
                limits,
                stop_rx.clone(),
            )));
        }
        shutdown.await;
        tracing::info!("shutting down: finishing in-flight requests");
        let _ = state.0.stop.send(true);
        let all = async {
            for server in &mut servers {
                let _ = server.await;
            }
        };
        if tokio::time::timeout(grace, all).await.is_err() {
            tracing::warn!(?grace, "grace period over; dropping remaining connections");
            for server in &servers {
                server.abort();
            }
        }
        pruner.abort();
        bans.abort();
        expiry.abort();
        tailer.abort();
        state.0.db.close().await;
        Ok(())
    }
}

/// Stored answers deleted per transaction while pruning.
const PRUNE_CHUNK: i64 = 250;

/// Deletes the stored answers older than the retention, chunk by chunk,
/// letting other writes in between; returns how many went.
async fn prune_expired(state: &AppState) -> Result<u64, sqlx::Error> {
    let retention = state.0.config.idempotency_retention().as_secs() as i64;
    let cutoff = state.0.clock.now() - retention;
    let mut total = 0;
    loop {
        let n = match &state.0.group_commit {
            Some(writer) => writer.prune(cutoff, PRUNE_CHUNK).await?,
            None => {
                state
                    .0
                    .db
                    .prune_idempotency_chunk(cutoff, PRUNE_CHUNK)
                    .await?
            }
        };
        total += n;
        if n < PRUNE_CHUNK as u64 {
            if let Err(e) = stream::prune(state).await {
                tracing::warn!(error = %e, "pruning the stream and the inbox failed");
            }
            // Deposits older than the cap's window count for nothing.
            let before = state.0.clock.now() - 2 * books::DEPOSIT_WINDOW_SECS;
            loop {
                match state
                    .0
                    .db
                    .prune_deposit_log_chunk(before, PRUNE_CHUNK)
                    .await
                {
                    Ok(n) if n == PRUNE_CHUNK as u64 => {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Ok(_) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "pruning deposit windows failed");
                        break;
                    }
                }
            }
            return Ok(total);
        }
        // Room for writes between chunks.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn prune_idempotency_keys(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        match prune_expired(&state).await {
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

/// Listings and orders swept per transaction.
const SWEEP_CHUNK: i64 = 100;

/// Arbitrary constant: the PostgreSQL advisory lock one sweeping replica
/// holds for its transaction.
const EXPIRY_LOCK_ID: i64 = 0x6578_7069_7279;

/// Sends back what expired listings and orders hold, chunk by chunk (see
/// [`market::expiry`]: the sweep only tidies — nothing fills past its
/// time whether or not it ran); returns how many it closed.
async fn sweep_expired(state: &AppState) -> Result<u64, error::AppError> {
    let mut total = 0;
    loop {
        let mut tx = state.0.db.begin_write().await?;
        if state.0.db.backend() == db::Backend::Postgres {
            // One replica sweeps at a time; the others find it taken and
            // leave it (their next minute comes).
            let (mine,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_xact_lock($1)")
                .bind(EXPIRY_LOCK_ID)
                .fetch_one(&mut *tx)
                .await?;
            if !mine {
                return Ok(total);
            }
        }
        let now = state.0.clock.now();
        let n = market::expiry::sweep(&mut tx, &state.0.policy, now, SWEEP_CHUNK).await?;
        tx.commit().await?;
        state.0.stream.wake();
        total += n;
        if n < SWEEP_CHUNK as u64 {
            return Ok(total);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn sweep_expired_every_minute(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        match sweep_expired(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(closed = n, "expired listings and orders sent back"),
            Err(e) => {
                tracing::warn!(error = %e, "the expiry sweep failed; it runs again in a minute")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A server running on the current tokio runtime. Dropping it stops it
/// without waiting; [`RunningServer::shutdown`] waits for a clean stop.
pub struct RunningServer {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
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
        prune_expired(&self.state).await
    }

    /// Runs the expiry sweep now, as the minutely task would; returns how
    /// many listings and orders it closed.
    pub async fn sweep_now(&self) -> Result<u64, String> {
        sweep_expired(&self.state).await.map_err(|e| e.to_string())
    }

    /// Makes the SQLite writer panic (tests of its supervisor).
    #[doc(hidden)]
    pub async fn crash_writer_for_test(&self) {
        if let Some(writer) = &self.state.0.group_commit {
            writer.crash_for_test().await;
        }
    }

    /// Where `/metrics` is served when `metrics_listen` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
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
    let metrics_addr = bound.metrics_addr();
    let state = bound.state.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(bound.serve(async move {
        let _ = stop_rx.await;
    }));
    Ok(RunningServer {
        addr,
        metrics_addr,
        state,
        stop: Some(stop_tx),
        task: Some(task),
    })
}
