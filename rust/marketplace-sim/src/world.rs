//! A marketplace server behind a fault proxy, and simulated players.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fault_proxy::Proxy;
use marketplace_client::client::ClientConfig;
use marketplace_client::persist::{RealFs, SaveFs};
use marketplace_client::{ClientError, PlayerStore, SessionEvent, StoreOptions, TradingSession};
use marketplace_server::{Config, RunningServer};
use sqlx::Connection;

/// The server (in-process, on its own runtime) and the proxy in front of it.
pub struct Market {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<RunningServer>,
    pub config: Config,
    pub proxy: Proxy,
}

impl Market {
    pub fn start(config: Config) -> Result<Market, String> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        let server = rt
            .block_on(marketplace_server::spawn(config.clone()))
            .map_err(|e| e.to_string())?;
        let proxy = rt.block_on(Proxy::start(server.addr()));
        Ok(Market {
            rt,
            server: Some(server),
            config,
            proxy,
        })
    }

    /// The URL players use: through the proxy.
    pub fn url(&self) -> String {
        self.proxy.url()
    }

    /// The server itself, without the proxy.
    pub fn server_url(&self) -> String {
        self.server.as_ref().map_or_else(String::new, |s| s.url())
    }

    /// Stops the server gracefully and starts it again on the same database.
    pub fn restart_server(&mut self) -> Result<(), String> {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
        let server = self
            .rt
            .block_on(marketplace_server::spawn(self.config.clone()))
            .map_err(|e| e.to_string())?;
        self.proxy.set_upstream(server.addr());
        self.server = Some(server);
        Ok(())
    }

    /// Runs a query returning one integer against the server's database.
    pub fn query_i64(&self, sql: &str) -> Result<i64, String> {
        self.query_i64_bind(sql, &[])
    }

    pub fn query_i64_bind(&self, sql: &str, binds: &[i64]) -> Result<i64, String> {
        self.rt.block_on(async {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&self.config.database)
                .await
                .map_err(|e| e.to_string())?;
            let mut q = sqlx::query_as::<_, (i64,)>(sql);
            for b in binds {
                q = q.bind(*b);
            }
            let (n,) = q
                .fetch_one(&mut conn)
                .await
                .map_err(|e| format!("{sql}: {e}"))?;
            let _ = conn.close().await;
            Ok(n)
        })
    }
}

impl Market {
    /// Purchases the server made for `buyer` under idempotency key `key`.
    pub fn purchases_with_key(&self, buyer: i64, key: &str) -> Result<i64, String> {
        self.rt.block_on(async {
            sqlx::any::install_default_drivers();
            let mut conn = sqlx::AnyConnection::connect(&self.config.database)
                .await
                .map_err(|e| e.to_string())?;
            let (n,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM purchases WHERE buyer_id = $1 AND buy_key = $2",
            )
            .bind(buyer)
            .bind(key)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
            let _ = conn.close().await;
            Ok(n)
        })
    }
}

/// Creates a fresh database on the PostgreSQL cluster of `admin_url` and
/// returns its URL.
pub fn fresh_postgres_database(admin_url: &str, name: &str) -> Result<String, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(admin_url)
            .await
            .map_err(|e| format!("cannot connect to {admin_url}: {e}"))?;
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        let _ = conn.close().await;
        let (base, _) = admin_url.rsplit_once('/').ok_or("URL has no database")?;
        Ok(format!("{base}/{name}"))
    })
}

/// Client settings for simulated players: fast retries, no client-side rate limit.
pub fn sim_client_config(url: &str) -> ClientConfig {
    ClientConfig {
        server_url: url.to_string(),
        request_timeout: Duration::from_millis(1500),
        retry_base_delay: Duration::from_millis(20),
        retry_max_delay: Duration::from_millis(300),
        max_requests_per_second: 0.0,
        worker_threads: 1,
        drop_grace: Duration::from_millis(100),
        ..ClientConfig::default()
    }
}

/// A disk that can be made to fail every write (full, or held by another
/// program) while the player runs.
#[derive(Clone, Default)]
pub struct Disk {
    failing: Arc<AtomicBool>,
}

impl Disk {
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, Ordering::SeqCst);
    }
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }
}

impl SaveFs for Disk {
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if self.is_failing() {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        RealFs.write_synced(path, bytes)
    }
    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        if self.is_failing() {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        RealFs.append_synced(path, bytes)
    }
    fn link_or_copy(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.link_or_copy(from, to)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        if self.is_failing() {
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        RealFs.rename(from, to)
    }
    fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

/// A player as a game would run one: a store on disk and a session, polled
/// once per frame.
pub struct SimPlayer {
    pub label: String,
    pub path: PathBuf,
    pub store: PlayerStore,
    pub session: TradingSession,
    pub events: Vec<SessionEvent>,
    pub disk: Disk,
}

impl SimPlayer {
    pub fn open(label: &str, path: &Path, config: ClientConfig) -> Result<SimPlayer, String> {
        let disk = Disk::default();
        let mut store = PlayerStore::open(
            path,
            label,
            StoreOptions {
                fs: Box::new(disk.clone()),
                retry_after: Duration::from_millis(20),
                // The log folds into the document as soon as it outgrows
                // it: documents (and so backups) are rewritten often, so
                // crashes meet every state of the two files, and a damaged
                // main file leaves a backup that knows the market.
                log_bytes: 1,
                ..StoreOptions::default()
            },
        )
        .map_err(|e| e.to_string())?;
        let session = TradingSession::new(config, &mut store).map_err(|e| e.to_string())?;
        Ok(SimPlayer {
            label: label.to_string(),
            path: path.to_path_buf(),
            store,
            session,
            events: Vec::new(),
            disk,
        })
    }

    /// One frame; returns the new events (also kept in `events`).
    pub fn frame(&mut self) -> &[SessionEvent] {
        let start = self.events.len();
        self.session.poll(
            &mut self.store,
            marketplace_client::session::DEFAULT_EVENTS_PER_POLL,
            &mut self.events,
        );
        &self.events[start..]
    }

    pub fn login(&mut self) -> Result<(), ClientError> {
        self.session.login(&self.store).map(drop)
    }

    pub fn is_settled(&self) -> bool {
        self.session.is_idle() && self.store.state().journal.is_empty()
    }

    pub fn player_id(&self) -> Option<i64> {
        self.store.state().player_id
    }
}

/// Polls `players` until `done` or `timeout`.
pub fn pump_until(
    players: &mut [SimPlayer],
    timeout: Duration,
    mut done: impl FnMut(&[SimPlayer]) -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        for p in players.iter_mut() {
            p.frame();
        }
        if done(players) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
