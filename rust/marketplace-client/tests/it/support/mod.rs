//! Test support: a real marketplace server in-process (SQLite in a temp dir,
//! or PostgreSQL when `MARKET_TEST_POSTGRES_URL` is set and asked for), the
//! fault-injecting proxy in front of it, and simulated players.
#![allow(dead_code)]

pub use fault_proxy as proxy;

use std::time::{Duration, Instant};

use marketplace_client::client::ClientConfig;
use marketplace_client::{
    ClientError, PlayerState, PlayerStore, RequestId, SessionEvent, StoreOptions, TradingSession,
};
use marketplace_server::{Config, RunningServer};
use proxy::Proxy;

pub struct World {
    pub rt: tokio::runtime::Runtime,
    pub server: Option<RunningServer>,
    pub config: Config,
    pub proxy: Proxy,
    pub dir: tempfile::TempDir,
}

impl World {
    pub fn start() -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/market.sqlite", dir.path().display());
        Self::start_on(Config::for_tests(url), dir)
    }

    pub fn start_on(config: Config, dir: tempfile::TempDir) -> World {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let server = rt
            .block_on(marketplace_server::spawn(config.clone()))
            .expect("server starts");
        let proxy = rt.block_on(Proxy::start(server.addr()));
        World {
            rt,
            server: Some(server),
            config,
            proxy,
            dir,
        }
    }

    /// Client settings pointing at the proxy, with short timeouts and retry
    /// delays so tests run fast.
    pub fn client_config(&self) -> ClientConfig {
        ClientConfig {
            server_url: self.proxy.url(),
            request_timeout: Duration::from_millis(1500),
            retry_base_delay: Duration::from_millis(20),
            retry_max_delay: Duration::from_millis(200),
            max_requests_per_second: 0.0,
            worker_threads: 1,
            drop_grace: Duration::from_millis(200),
            ..ClientConfig::default()
        }
    }

    /// Stops the server (gracefully) and starts it again on the same
    /// database, pointing the proxy at it.
    pub fn restart_server(&mut self) {
        if let Some(server) = self.server.take() {
            self.rt.block_on(server.shutdown());
        }
        let server = self
            .rt
            .block_on(marketplace_server::spawn(self.config.clone()))
            .expect("server restarts");
        self.proxy.set_upstream(server.addr());
        self.server = Some(server);
    }

    /// Counts rows in the server's database.
    pub fn count(&self, sql: &str) -> i64 {
        self.rt.block_on(async {
            sqlx::any::install_default_drivers();
            let pool = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&self.config.database)
                .await
                .expect("connect");
            let (n,): (i64,) = sqlx::query_as(sql).fetch_one(&pool).await.expect(sql);
            pool.close().await;
            n
        })
    }
}

/// A player: store plus session, polled by the test as a game would each frame.
pub struct Player {
    pub store: PlayerStore,
    pub session: Option<TradingSession>,
    pub events: Vec<SessionEvent>,
}

impl Player {
    pub fn in_memory(world: &World, device: &str, credits: i64) -> Player {
        let mut state = PlayerState::new(device, device);
        state.credits = credits;
        let store = PlayerStore::in_memory(state);
        Self::with_store(world.client_config(), store)
    }

    pub fn on_disk(config: ClientConfig, path: &std::path::Path, name: &str) -> Player {
        let store = PlayerStore::open(path, name, StoreOptions::default()).expect("store opens");
        Self::with_store(config, store)
    }

    pub fn with_store(config: ClientConfig, mut store: PlayerStore) -> Player {
        let session = TradingSession::new(config, &mut store).expect("session starts");
        Player {
            store,
            session: Some(session),
            events: Vec::new(),
        }
    }

    pub fn session(&mut self) -> &mut TradingSession {
        self.session.as_mut().expect("session running")
    }

    pub fn buy(&mut self, listing: i64, price: i64) -> Result<RequestId, ClientError> {
        let session = self.session.as_mut().expect("session running");
        session.buy(&mut self.store, listing, price)
    }

    pub fn sell(
        &mut self,
        item: &str,
        quantity: i64,
        price: i64,
    ) -> Result<RequestId, ClientError> {
        let session = self.session.as_mut().expect("session running");
        session.create_listing(&mut self.store, item, quantity, price)
    }

    pub fn reprice(&mut self, listing: i64, price: i64) -> Result<RequestId, ClientError> {
        let session = self.session.as_mut().expect("session running");
        session.reprice_listing(&mut self.store, listing, price)
    }

    pub fn cancel(&mut self, listing: i64) -> Result<RequestId, ClientError> {
        let session = self.session.as_mut().expect("session running");
        session.cancel_listing(&mut self.store, listing)
    }

    /// The first event `f` picks out (panics if none).
    pub fn find<T>(&self, f: impl FnMut(&SessionEvent) -> Option<T>) -> T {
        self.events.iter().find_map(f).expect("the expected event")
    }

    /// Pumps until a listing was created; the id of the first one among the
    /// events.
    pub fn wait_listed(&mut self) -> i64 {
        self.pump_until(Duration::from_secs(10), |e| {
            e.iter()
                .any(|e| matches!(e, SessionEvent::ListingCreated { .. }))
        });
        self.find(|e| match e {
            SessionEvent::ListingCreated { listing, .. } => Some(listing.id),
            _ => None,
        })
    }

    /// One frame.
    pub fn frame(&mut self) {
        if let Some(session) = self.session.as_mut() {
            session.poll(
                &mut self.store,
                marketplace_client::session::DEFAULT_EVENTS_PER_POLL,
                &mut self.events,
            );
        }
    }

    /// Polls until `done` holds for the events seen so far (panics after `timeout`).
    pub fn pump_until(&mut self, timeout: Duration, mut done: impl FnMut(&[SessionEvent]) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            self.frame();
            if done(&self.events) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out; events so far: {:#?}",
                self.events
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// New settings for the running session.
    pub fn set_config(&mut self, config: ClientConfig) -> Result<(), ClientError> {
        let session = self.session.as_mut().expect("session running");
        session.set_config(&self.store, config)
    }

    /// Buys `listing` at `price` while `world`'s proxy loses every answer:
    /// returns once the server committed the purchase (frames keep running
    /// until then), the game having heard nothing.
    pub fn buy_answer_lost(&mut self, world: &World, listing: i64, price: i64) {
        let committed = |w: &World| {
            w.count(&format!(
                "SELECT COUNT(*) FROM purchases WHERE listing_id = {listing}"
            ))
        };
        world
            .proxy
            .fault("/purchase", proxy::Fault::LoseResponse, 1_000);
        self.buy(listing, price).expect("purchase submitted");
        let deadline = Instant::now() + Duration::from_secs(10);
        while committed(world) == 0 {
            assert!(
                Instant::now() < deadline,
                "the server never got the purchase"
            );
            self.frame();
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Quits as a game does: the session shuts down, the store closes.
    pub fn quit(mut self) {
        if let Some(session) = self.session.take() {
            let _ = session.shutdown(&mut self.store, Duration::from_millis(50));
        }
    }

    pub fn login(&mut self) {
        let store = &self.store;
        let session = self.session.as_mut().expect("session");
        let id = session.login(store).expect("login submitted");
        self.pump_until(Duration::from_secs(10), |e| {
            e.iter().any(
                |e| matches!(e, SessionEvent::LoggedIn { request_id, .. } if *request_id == id),
            )
        });
    }

    /// Polls until nothing is pending and every settlement is reported.
    pub fn settle(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            self.frame();
            let idle = self.session.as_ref().is_none_or(TradingSession::is_idle);
            if idle && self.store.state().journal.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "did not settle; journal {:?}",
                self.store.state().journal
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn total_credits(&self) -> i64 {
        self.store.state().total_credits()
    }
}

/// A seller with one listing per price, created directly on the server.
pub fn list_items(world: &World, seller: &mut Player, prices: &[i64]) -> Vec<i64> {
    for (i, _) in prices.iter().enumerate() {
        seller
            .store
            .add_item(&format!("item-{i}"), 1)
            .expect("add item");
    }
    for (i, price) in prices.iter().enumerate() {
        seller
            .sell(&format!("item-{i}"), 1, *price)
            .expect("listing submitted");
    }
    let _ = world;
    let want = prices.len();
    seller.pump_until(Duration::from_secs(20), |e| {
        e.iter()
            .filter(|e| matches!(e, SessionEvent::ListingCreated { .. }))
            .count()
            == want
    });
    let mut ids: Vec<(String, i64)> = seller
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::ListingCreated { listing, .. } => {
                Some((listing.item_id.clone(), listing.id))
            }
            _ => None,
        })
        .collect();
    ids.sort_by_key(|(item, _)| {
        item.trim_start_matches("item-")
            .parse::<usize>()
            .unwrap_or(0)
    });
    seller.events.clear();
    ids.into_iter().map(|(_, id)| id).collect()
}

/// A file system for the store that can fail every write (a full disk) or
/// make each write slow, switched from the test while the store runs.
#[derive(Clone, Default)]
pub struct TestFs {
    pub failing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    pub write_delay_ms: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl marketplace_client::persist::SaveFs for TestFs {
    fn write_synced(&mut self, path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let delay = self.write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        marketplace_client::persist::RealFs.write_synced(path, bytes)
    }
    fn append_synced(&mut self, path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::sync::atomic::Ordering;
        let delay = self.write_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(Duration::from_millis(delay));
        }
        if self.failing.load(Ordering::SeqCst) {
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        marketplace_client::persist::RealFs.append_synced(path, bytes)
    }
    fn link_or_copy(
        &mut self,
        from: &std::path::Path,
        to: &std::path::Path,
    ) -> std::io::Result<()> {
        marketplace_client::persist::RealFs.link_or_copy(from, to)
    }
    fn rename(&mut self, from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
        marketplace_client::persist::RealFs.rename(from, to)
    }
    fn sync_dir(&mut self, dir: &std::path::Path) -> std::io::Result<()> {
        marketplace_client::persist::RealFs.sync_dir(dir)
    }
}

impl TestFs {
    pub fn set_failing(&self, on: bool) {
        self.failing.store(on, std::sync::atomic::Ordering::SeqCst);
    }
    pub fn set_write_delay(&self, ms: u64) {
        self.write_delay_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Opens a store on `path` with these options and starts a session for it.
pub fn player_with(world: &World, path: &std::path::Path, options: StoreOptions) -> Player {
    let store = PlayerStore::open(path, "player", options).expect("store opens");
    Player::with_store(world.client_config(), store)
}

impl World {
    /// Logs `device` in over raw HTTP (as a modified client would): the
    /// session answer as JSON.
    pub fn raw_login(&self, device: &str) -> serde_json::Value {
        let url = format!(
            "{}/v1/sessions",
            self.server.as_ref().expect("server").url()
        );
        self.rt.block_on(async {
            reqwest::Client::new()
                .post(url)
                .json(&serde_json::json!({"device_id": device, "name": device}))
                .send()
                .await
                .expect("login sent")
                .json()
                .await
                .expect("login answer")
        })
    }
}

/// Counts events of one kind.
pub fn count(events: &[SessionEvent], f: impl Fn(&SessionEvent) -> bool) -> usize {
    events.iter().filter(|e| f(e)).count()
}
