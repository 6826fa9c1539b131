//! [`MarketClient`]: a synchronous handle over a private tokio runtime.
//!
//! The game's main thread must never wait on the network. So the handle owns
//! a named thread running a tokio runtime (built during [`MarketClient::start`],
//! which returns its error to the caller); [`MarketClient::submit`] puts a
//! command on an unbounded channel and returns its [`RequestId`] at once;
//! finished work comes back as [`Event`]s on a `std::sync::mpsc` channel that
//! [`MarketClient::poll`] drains without blocking. [`MarketClient::shutdown`]
//! (and `Drop`) stops taking work, gives in-flight requests a bounded grace
//! period and joins the thread.
//!
//! # The request queue
//! Every request passes, in order: the client-side token bucket
//! (`max_requests_per_second`), a semaphore (`max_concurrent_requests`), and
//! one HTTP exchange with a timeout. A failure that is not definitive
//! (timeout, connection lost, 5xx, 429, an answer that cannot be understood)
//! is retried with exponential backoff and jitter, honouring `Retry-After`.
//! Mutations are retried **with the same idempotency key until a definitive
//! answer** (invariant I4); reads give up after `read_attempts`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use marketplace_protocol::{
    AccountEnvelope, Claim, ErrorCode, ErrorEnvelope, Listing, ListingEnvelope, ListingPage,
    ListingStatus, MarketChange, Moved, OperationsPage, Purchase, PurchaseEnvelope, SalesPage,
    Session, Transfer, IDEMPOTENCY_HEADER, PLAYER_HEADER, SERVER_HEADER,
};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify, Semaphore};

use crate::error::ClientError;
use crate::state::Owner;

/// Client settings. Every field has a default ([`ClientConfig::default`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ClientConfig {
    /// Base URL of the marketplace. Default `http://127.0.0.1:8080`.
    pub server_url: String,
    /// Requests on the wire at once. Default 16.
    pub max_concurrent_requests: usize,
    /// Timeout of one HTTP exchange. Default 10 s.
    pub request_timeout: Duration,
    /// Client-side rate limit (token bucket, burst = one second's worth);
    /// 0 = unlimited. Default 20, matching the server's default per-player limit.
    pub max_requests_per_second: f64,
    /// First retry delay; doubles per attempt, with ±50 % jitter. Default 200 ms.
    pub retry_base_delay: Duration,
    /// Longest retry delay. Default 30 s.
    pub retry_max_delay: Duration,
    /// Attempts for reads (browse, sales, login) before giving up. Default 3.
    pub read_attempts: u32,
    /// Worker threads of the private runtime. Default 2.
    pub worker_threads: usize,
    /// Largest answer body read, in bytes. Default 1 MiB.
    pub max_response_bytes: usize,
    /// Grace period for in-flight requests when the handle is dropped. Default 2 s.
    pub drop_grace: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            server_url: "http://127.0.0.1:8080".into(),
            max_concurrent_requests: 16,
            request_timeout: Duration::from_secs(10),
            max_requests_per_second: 20.0,
            retry_base_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            read_attempts: 3,
            worker_threads: 2,
            max_response_bytes: 1 << 20,
            drop_grace: Duration::from_secs(2),
        }
    }
}

impl ClientConfig {
    /// The settings with every number made usable: NaN, infinite, negative
    /// or absurd values are replaced by the nearest sane one (a setting typed
    /// into an inspector must never stop the client). Refuses only a
    /// `server_url` that is not http(s).
    pub fn checked(mut self) -> Result<ClientConfig, ClientError> {
        let url = self.server_url.trim().trim_end_matches('/');
        if !(url.starts_with("http://") || url.starts_with("https://"))
            || url.contains(char::is_whitespace)
        {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "server_url must start with http:// or https://",
            ));
        }
        self.server_url = url.to_string();
        self.max_concurrent_requests = self.max_concurrent_requests.clamp(1, 1024);
        let clamp = |d: Duration, lo: Duration, hi: Duration| d.clamp(lo, hi);
        self.request_timeout = clamp(
            self.request_timeout,
            Duration::from_millis(100),
            Duration::from_secs(600),
        );
        self.retry_base_delay = clamp(
            self.retry_base_delay,
            Duration::from_millis(1),
            Duration::from_secs(60),
        );
        self.retry_max_delay = clamp(
            self.retry_max_delay,
            self.retry_base_delay,
            Duration::from_secs(3600),
        );
        self.drop_grace = clamp(self.drop_grace, Duration::ZERO, Duration::from_secs(30));
        if !self.max_requests_per_second.is_finite() || self.max_requests_per_second < 0.0 {
            self.max_requests_per_second = 0.0;
        }
        self.read_attempts = self.read_attempts.max(1);
        self.max_response_bytes = self.max_response_bytes.max(1024);
        Ok(self)
    }
}

/// Seconds from a setting that may be NaN, infinite or negative, clamped to
/// `lo..=hi` (NaN → `default`).
pub fn duration_from_secs(secs: f64, default: Duration, lo: f64, hi: f64) -> Duration {
    if secs.is_nan() {
        return default;
    }
    Duration::from_secs_f64(secs.clamp(lo, hi))
}

/// Identifies one submitted command in the events it produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Filter and page of `GET /v1/listings`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BrowseQuery {
    /// `active` (the server's default), `sold`, `cancelled` or `all`.
    pub status: Option<String>,
    pub item_id: Option<String>,
    pub seller_id: Option<i64>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// Everything the marketplace API offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Login {
        device_id: String,
        name: String,
    },
    Browse(BrowseQuery),
    GetListing {
        listing_id: i64,
    },
    /// One page of the player's sales (`cursor` from the previous page).
    ListSales {
        unclaimed_only: bool,
        cursor: Option<String>,
    },
    /// The player's market account and the economy policy.
    Account,
    /// A page of the player's keyed operations after `after`
    /// (`GET /v1/me/operations`), for reconciling a restored save.
    Operations {
        after: i64,
        limit: u32,
    },
    /// A change of the market: carries an idempotency key and is retried
    /// until a definitive answer.
    Change(MarketChange),
}

impl Command {
    pub fn is_mutation(&self) -> bool {
        matches!(self, Command::Change(_))
    }

    /// The listing a purchase is for.
    fn purchase_of(&self) -> Option<i64> {
        match self {
            Command::Change(MarketChange::Purchase { listing_id, .. }) => Some(*listing_id),
            _ => None,
        }
    }
}

/// A successful answer, as plain Rust values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    LoggedIn(Session),
    Listings(ListingPage),
    /// A listing, and for a change of it, what moved between save and
    /// market (`None` from a server without books: all of it).
    Listing(Listing, Option<Transfer>),
    Purchased(Purchase, Option<Transfer>),
    Sales(SalesPage),
    Claimed(Claim),
    /// A deposit or withdrawal, with the account after it.
    Moved(Moved),
    Account(AccountEnvelope),
    Operations(OperationsPage),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// The request succeeded.
    Done(Reply),
    /// The request failed for good: a definitive refusal, a read that ran
    /// out of attempts, or the client shutting down (`shutting_down`, not
    /// definitive: a journaled operation is re-sent on the next start).
    Failed(ClientError),
    /// A non-definitive failure; the same request goes again after `delay`.
    Retrying {
        attempt: u32,
        error: ClientError,
        delay: Duration,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub request_id: RequestId,
    pub kind: EventKind,
}

struct Envelope {
    id: RequestId,
    command: Command,
    key: Option<String>,
    /// A journaled trade's market and player: sent only with a token of
    /// that player on that market, with headers that make any other market
    /// refuse it.
    owner: Option<Owner>,
}

/// State shared by the handle and the runtime.
struct Shared {
    /// The settings in force; [`MarketClient::reconfigure`] changes them
    /// while requests run (each attempt reads them afresh).
    config: RwLock<ClientConfig>,
    /// Permits of `gate` the configuration currently allows.
    concurrency: Mutex<usize>,
    /// The private runtime, for work the handle starts (shrinking the gate).
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    http: reqwest::Client,
    events: mpsc::Sender<Event>,
    in_flight: AtomicUsize,
    buying: Mutex<HashSet<i64>>,
    session: Mutex<SessionState>,
    logged_in: Notify,
    bucket: TokenBucket,
    gate: Semaphore,
    stopping: watch::Sender<bool>,
}

#[derive(Default)]
struct SessionState {
    token: Option<String>,
    /// Who the token is for: the market that issued it and the player.
    owner: Option<Owner>,
    credentials: Option<(String, String)>,
    /// Bumped on every new token, so concurrent 401s log in again once.
    epoch: u64,
}

/// The synchronous handle. Owned by the game's main thread (or any thread);
/// `Send`, no method blocks on the network.
pub struct MarketClient {
    shared: Arc<Shared>,
    commands: tokio::sync::mpsc::UnboundedSender<Envelope>,
    events: mpsc::Receiver<Event>,
    thread: Option<JoinHandle<()>>,
    stop: Option<tokio::sync::oneshot::Sender<Duration>>,
}

impl MarketClient {
    /// Starts the runtime thread. Fails (without leaving a thread behind) if
    /// the runtime or the HTTP client cannot be built or the URL is not http(s).
    pub fn start(config: ClientConfig) -> Result<MarketClient, ClientError> {
        let config = config.checked()?;
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_concurrent_requests.clamp(1, 64))
            .build()
            .map_err(|e| {
                ClientError::new(ErrorCode::InvalidArgument, format!("HTTP client: {e}"))
            })?;
        let (event_tx, events) = mpsc::channel();
        let (stopping, _) = watch::channel(false);
        let worker_threads = config.worker_threads.max(1);
        let shared = Arc::new(Shared {
            bucket: TokenBucket::new(config.max_requests_per_second),
            gate: Semaphore::new(config.max_concurrent_requests),
            concurrency: Mutex::new(config.max_concurrent_requests),
            runtime: std::sync::OnceLock::new(),
            config: RwLock::new(config),
            http,
            events: event_tx,
            in_flight: AtomicUsize::new(0),
            buying: Mutex::new(HashSet::new()),
            session: Mutex::new(SessionState::default()),
            logged_in: Notify::new(),
            stopping,
        });
        let (commands, command_rx) = tokio::sync::mpsc::unbounded_channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel();
        let (ready_tx, ready_rx) = mpsc::channel();
        let for_thread = shared.clone();
        let thread = std::thread::Builder::new()
            .name("marketplace-client".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(worker_threads)
                    .thread_name("marketplace-client-worker")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => {
                        let _ = for_thread.runtime.set(rt.handle().clone());
                        let _ = ready_tx.send(Ok(()));
                        rt
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let grace = runtime.block_on(dispatch(for_thread, command_rx, stop_rx));
                runtime.shutdown_timeout(grace);
            })
            .map_err(|e| ClientError::new(ErrorCode::InvalidArgument, format!("thread: {e}")))?;
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                let _ = thread.join();
                return Err(ClientError::new(
                    ErrorCode::InvalidArgument,
                    format!("runtime: {e}"),
                ));
            }
            Err(_) => {
                let _ = thread.join();
                return Err(ClientError::new(
                    ErrorCode::InvalidArgument,
                    "runtime thread died",
                ));
            }
        }
        Ok(MarketClient {
            shared,
            commands,
            events,
            thread: Some(thread),
            stop: Some(stop),
        })
    }

    /// A fresh request id (for callers that decide when to send later).
    /// Unique in the process: a game that switches save files or servers
    /// never sees an id twice.
    pub fn next_request_id(&self) -> RequestId {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        RequestId(NEXT.fetch_add(1, Ordering::Relaxed))
    }

    /// Sends `command` (a mutation gets a fresh idempotency key).
    pub fn submit(&self, command: Command) -> Result<RequestId, ClientError> {
        let id = self.next_request_id();
        let key = command.is_mutation().then(new_idempotency_key);
        self.submit_with(id, command, key)?;
        Ok(id)
    }

    /// Sends `command` under a caller-chosen id and idempotency key (the
    /// journal's, so that a retry after a restart reuses it). Refuses a second
    /// `Buy` of a listing already being bought (`purchase_in_progress`).
    pub fn submit_with(
        &self,
        id: RequestId,
        command: Command,
        key: Option<String>,
    ) -> Result<(), ClientError> {
        self.submit_bound(id, command, key, None)
    }

    /// [`MarketClient::submit_with`] for a journaled trade bound to `owner`:
    /// it is sent only with a token of that player on that market. While the
    /// client is logged in elsewhere it ends at once with `wrong_server`
    /// (not definitive: nothing was sent).
    pub fn submit_bound(
        &self,
        id: RequestId,
        command: Command,
        key: Option<String>,
        owner: Option<Owner>,
    ) -> Result<(), ClientError> {
        if *self.shared.stopping.borrow() {
            return Err(ClientError::new(
                ErrorCode::ShuttingDown,
                "The marketplace is shutting down",
            ));
        }
        if command.is_mutation() && key.is_none() {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "a mutation needs an idempotency key",
            ));
        }
        if let Some(listing_id) = command.purchase_of() {
            let mut buying = self.shared.buying.lock().map_err(|_| poisoned())?;
            if !buying.insert(listing_id) {
                return Err(ClientError::new(
                    ErrorCode::PurchaseInProgress,
                    "This item is already being bought",
                ));
            }
        }
        self.shared.in_flight.fetch_add(1, Ordering::SeqCst);
        if self
            .commands
            .send(Envelope {
                id,
                command: command.clone(),
                key,
                owner,
            })
            .is_err()
        {
            self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
            if let Some(listing_id) = command.purchase_of() {
                if let Ok(mut buying) = self.shared.buying.lock() {
                    buying.remove(&listing_id);
                }
            }
            return Err(ClientError::new(
                ErrorCode::ShuttingDown,
                "The marketplace client has stopped",
            ));
        }
        Ok(())
    }

    /// Moves up to `max` finished events into `out`; never blocks. Returns
    /// how many were moved.
    pub fn poll(&self, out: &mut Vec<Event>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            match self.events.try_recv() {
                Ok(event) => {
                    out.push(event);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        n
    }

    /// Requests submitted and not finished.
    pub fn pending_count(&self) -> usize {
        self.shared.in_flight.load(Ordering::SeqCst)
    }

    /// True while a `Buy` of this listing is in flight.
    pub fn is_buying(&self, listing_id: i64) -> bool {
        self.shared
            .buying
            .lock()
            .map(|b| b.contains(&listing_id))
            .unwrap_or(false)
    }

    /// Applies new settings to a running client: the server, timeouts,
    /// concurrency and rate take effect for every attempt from now on (one
    /// already on the wire finishes as it started). `worker_threads` keeps
    /// its first value.
    pub fn reconfigure(&self, config: ClientConfig) -> Result<(), ClientError> {
        let config = config.checked()?;
        let server_changed = self.shared.settings().server_url != config.server_url;
        self.shared.bucket.set_rate(config.max_requests_per_second);
        self.shared.resize_gate(config.max_concurrent_requests);
        if let Ok(mut c) = self.shared.config.write() {
            *c = config;
        }
        if server_changed {
            // Another server knows nothing of this token.
            self.forget_token();
        }
        Ok(())
    }

    /// The settings in force.
    pub fn config(&self) -> ClientConfig {
        self.shared.settings()
    }

    /// Forgets the session token (the next request logs in again).
    pub fn forget_token(&self) {
        if let Ok(mut s) = self.shared.session.lock() {
            s.token = None;
            s.owner = None;
            s.epoch += 1;
        }
    }

    /// The market and player of the current token, once logged in.
    pub fn owner(&self) -> Option<Owner> {
        self.shared
            .session
            .lock()
            .ok()
            .and_then(|s| s.token.as_ref().and(s.owner.clone()))
    }

    /// Remembers who to log in as, so that mutations can log in by
    /// themselves (after a restart, or when a token expires).
    /// A different device id is a different player: its token is forgotten.
    pub fn set_credentials(&self, device_id: &str, name: &str) {
        if let Ok(mut s) = self.shared.session.lock() {
            if s.credentials.as_ref().is_some_and(|(d, _)| d != device_id) {
                s.token = None;
                s.owner = None;
                s.epoch += 1;
            }
            s.credentials = Some((device_id.to_string(), name.to_string()));
        }
    }

    /// True once a login succeeded (the token may still expire; requests
    /// then log in again by themselves).
    pub fn is_logged_in(&self) -> bool {
        self.shared
            .session
            .lock()
            .map(|s| s.token.is_some())
            .unwrap_or(false)
    }

    /// Stops taking work, lets in-flight exchanges finish for up to `grace`,
    /// then stops the runtime and joins its thread. Requests still waiting
    /// end with `shutting_down` (their journal entries stay for next time).
    /// Blocks for at most about `grace` plus the runtime's own `grace`.
    pub fn shutdown(mut self, grace: Duration) {
        self.stop(grace);
    }

    /// Like [`MarketClient::shutdown`], but keeps the handle so that the
    /// events of the last answers can still be drained with `poll`.
    pub fn stop(&mut self, grace: Duration) {
        let _ = self.shared.stopping.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(grace);
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MarketClient {
    fn drop(&mut self) {
        let grace = self.shared.settings().drop_grace;
        self.stop(grace);
    }
}

impl Shared {
    fn settings(&self) -> ClientConfig {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Grows or shrinks the number of requests on the wire at once. Growing
    /// adds permits; shrinking takes permits out as they come back.
    fn resize_gate(self: &Arc<Self>, want: usize) {
        let Ok(mut have) = self.concurrency.lock() else {
            return;
        };
        if want > *have {
            self.gate.add_permits(want - *have);
        } else if want < *have {
            let excess = (*have - want) as u32;
            let shared = self.clone();
            // Permits in use come back when their requests finish; a task on
            // the client's runtime takes them out of circulation then.
            if let Some(runtime) = self.runtime.get() {
                runtime.spawn(async move {
                    if let Ok(p) = shared.gate.acquire_many(excess).await {
                        p.forget();
                    }
                });
            }
        }
        *have = want;
    }
}

fn poisoned() -> ClientError {
    ClientError::new(ErrorCode::Internal, "client state poisoned")
}

/// A new random idempotency key.
pub fn new_idempotency_key() -> String {
    format!(
        "{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Receives commands until told to stop; returns the grace period for the
/// runtime's shutdown.
async fn dispatch(
    shared: Arc<Shared>,
    mut commands: tokio::sync::mpsc::UnboundedReceiver<Envelope>,
    mut stop: tokio::sync::oneshot::Receiver<Duration>,
) -> Duration {
    let grace = loop {
        tokio::select! {
            biased;
            grace = &mut stop => break grace.unwrap_or(Duration::ZERO),
            envelope = commands.recv() => match envelope {
                Some(envelope) => {
                    tokio::spawn(run_request(shared.clone(), envelope));
                }
                None => break Duration::ZERO,
            },
        }
    };
    let _ = shared.stopping.send(true);
    // Commands that never started end at once.
    commands.close();
    while let Ok(envelope) = commands.try_recv() {
        finish(&shared, &envelope, EventKind::Failed(shutting_down()));
    }
    // Let in-flight exchanges finish, up to the grace period.
    let deadline = Instant::now() + grace;
    while shared.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Duration::from_millis(100)
}

fn shutting_down() -> ClientError {
    ClientError::new(
        ErrorCode::ShuttingDown,
        "The marketplace client is shutting down",
    )
}

/// Sends the final event of a request and forgets it.
fn finish(shared: &Shared, envelope: &Envelope, kind: EventKind) {
    if let Some(listing_id) = envelope.command.purchase_of() {
        if let Ok(mut buying) = shared.buying.lock() {
            buying.remove(&listing_id);
        }
    }
    let _ = shared.events.send(Event {
        request_id: envelope.id,
        kind,
    });
    shared.in_flight.fetch_sub(1, Ordering::SeqCst);
}

async fn run_request(shared: Arc<Shared>, envelope: Envelope) {
    let outcome = attempts(&shared, &envelope).await;
    finish(&shared, &envelope, outcome);
}

/// Runs attempts until a definitive answer. Once the client is stopping, no
/// new attempt starts and no wait continues; an exchange already on the wire
/// may finish within the shutdown grace period.
async fn attempts(shared: &Shared, envelope: &Envelope) -> EventKind {
    let mut stopping = shared.stopping.subscribe();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        if *stopping.borrow() {
            return EventKind::Failed(shutting_down());
        }
        let token = tokio::select! {
            token = bearer(shared, &envelope.command) => token,
            _ = stopping.wait_for(|s| *s) => return EventKind::Failed(shutting_down()),
        };
        let token = match token {
            Ok(Some((token, owner))) => {
                if let Some(expected) = &envelope.owner {
                    if owner.as_ref() != Some(expected) {
                        // Logged in elsewhere: this trade is not for here.
                        return EventKind::Failed(elsewhere(expected, owner.as_ref()));
                    }
                }
                Ok(Some(token))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let result = match &token {
            Ok(token) => {
                tokio::select! {
                    _ = shared.bucket.acquire() => {}
                    _ = stopping.wait_for(|s| *s) => return EventKind::Failed(shutting_down()),
                }
                let permit = tokio::select! {
                    permit = shared.gate.acquire() => match permit {
                        Ok(p) => p,
                        Err(_) => return EventKind::Failed(shutting_down()),
                    },
                    _ = stopping.wait_for(|s| *s) => return EventKind::Failed(shutting_down()),
                };
                let result = exchange(shared, envelope, token.as_deref()).await;
                drop(permit);
                result
            }
            // No session yet and logging in failed: handled like any failure.
            Err(e) => Err(e.clone()),
        };
        let token = token.ok().flatten();
        let error = match result {
            Ok(reply) => {
                if let (Reply::LoggedIn(session), Command::Login { device_id, name }) =
                    (&reply, &envelope.command)
                {
                    remember_session(shared, session, device_id, name);
                }
                return EventKind::Done(reply);
            }
            Err(e) => e,
        };
        if error.code == ErrorCode::WrongServer {
            // The server at this address is not the trade's market (or the
            // token is another player's there): its token is of no use for
            // this trade; the session parks it until the game points back.
            if let Ok(mut s) = shared.session.lock() {
                if s.token.is_some() && s.token == token {
                    s.token = None;
                    s.owner = None;
                    s.epoch += 1;
                }
            }
            if let Some(expected) = &envelope.owner {
                return EventKind::Failed(elsewhere(expected, None));
            }
            return EventKind::Failed(error);
        }
        if error.code == ErrorCode::Unauthorized
            && !matches!(envelope.command, Command::Login { .. })
            && attempt < 50
        {
            // The token expired or the server's secret changed: log in again
            // with the remembered credentials, then retry at once.
            if relogin(shared, token.as_deref()).await.is_ok() {
                continue;
            }
        }
        if error.is_definitive() {
            return EventKind::Failed(error);
        }
        let config = shared.settings();
        if !envelope.command.is_mutation() && attempt >= config.read_attempts {
            return EventKind::Failed(error);
        }
        let delay = backoff(&config, attempt, error.retry_after);
        let _ = shared.events.send(Event {
            request_id: envelope.id,
            kind: EventKind::Retrying {
                attempt,
                error,
                delay,
            },
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping.wait_for(|s| *s) => return EventKind::Failed(shutting_down()),
        }
    }
}

/// Exponential backoff with ±50 % jitter, capped; never shorter than the
/// server's `Retry-After`.
fn backoff(config: &ClientConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = config
        .retry_base_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(config.retry_max_delay);
    let jitter = 0.5 + rand::random::<f64>();
    let delay = capped.mul_f64(jitter).min(config.retry_max_delay);
    match retry_after {
        Some(r) => delay.max(r),
        None => delay,
    }
}

/// The token for a request. Without one, a request logs in by itself with
/// the remembered credentials (a journaled operation re-sent after a restart
/// must not wait for the game to log in). With no credentials yet, a
/// mutation waits for a login and a read fails with `not_logged_in`.
async fn bearer(
    shared: &Shared,
    command: &Command,
) -> Result<Option<(String, Option<Owner>)>, ClientError> {
    if matches!(command, Command::Login { .. }) {
        return Ok(None);
    }
    loop {
        let notified = shared.logged_in.notified();
        let has_credentials = {
            let session = shared.session.lock().map_err(|_| poisoned())?;
            if let Some(token) = &session.token {
                return Ok(Some((token.clone(), session.owner.clone())));
            }
            session.credentials.is_some()
        };
        if has_credentials {
            // A failed login never settles the operation: whatever the server
            // said about logging in says nothing about this request.
            relogin(shared, None).await.map_err(|e| {
                if e.is_definitive() {
                    ClientError::new(
                        ErrorCode::Unauthorized,
                        format!("Cannot log in: {}", e.message),
                    )
                } else {
                    e
                }
            })?;
            continue;
        }
        if !command.is_mutation() {
            return Err(ClientError::new(
                ErrorCode::NotLoggedIn,
                "Log in to the marketplace first",
            ));
        }
        notified.await;
    }
}

/// Keeps a login's token — unless the game switched to another device while
/// it was on the way: then the token is of the wrong player and is dropped
/// (a trade sent with it would run under the wrong player's keys).
fn remember_session(shared: &Shared, session: &Session, device_id: &str, name: &str) {
    if let Ok(mut s) = shared.session.lock() {
        let current = s.credentials.as_ref().map(|(d, _)| d.as_str());
        if current.is_some_and(|d| d != device_id) {
            return;
        }
        s.token = Some(session.token.clone());
        s.owner = Some(owner_of(session, &shared.settings().server_url));
        s.credentials = Some((device_id.to_string(), name.to_string()));
        s.epoch += 1;
    }
    shared.logged_in.notify_waiters();
}

/// Who a login made us: the market's id (or, from a server too old to
/// announce one, its address) and the player.
pub fn owner_of(session: &Session, server_url: &str) -> Owner {
    let server_id = if session.server_id.is_empty() {
        format!("url:{}", server_url.trim_end_matches('/'))
    } else {
        session.server_id.clone()
    };
    Owner {
        server_id,
        player_id: session.player_id,
    }
}

/// A trade of `expected` while the client is logged in as `current`.
fn elsewhere(expected: &Owner, current: Option<&Owner>) -> ClientError {
    let now = match current {
        Some(c) if c.server_id != expected.server_id => {
            format!("the game is connected to market {}", c.server_id)
        }
        Some(c) => format!("the game is logged in as player {}", c.player_id),
        None => "the server at this address is another market or player".to_string(),
    };
    ClientError::new(
        ErrorCode::WrongServer,
        format!("Waiting for {expected}: {now}; the trade goes when the game points back"),
    )
}

async fn relogin(shared: &Shared, stale: Option<&str>) -> Result<(), ClientError> {
    let credentials = {
        let s = shared.session.lock().map_err(|_| poisoned())?;
        if s.token.as_deref() != stale {
            return Ok(()); // someone else already logged in again
        }
        s.credentials.clone()
    };
    let Some((device_id, name)) = credentials else {
        return Err(ClientError::new(
            ErrorCode::NotLoggedIn,
            "Log in to the marketplace first",
        ));
    };
    let login = Envelope {
        id: RequestId(0),
        command: Command::Login {
            device_id: device_id.clone(),
            name: name.clone(),
        },
        key: None,
        owner: None,
    };
    shared.bucket.acquire().await;
    match exchange(shared, &login, None).await? {
        Reply::LoggedIn(session) => {
            remember_session(shared, &session, &device_id, &name);
            Ok(())
        }
        _ => Err(ClientError::new(
            ErrorCode::BadResponse,
            "unexpected answer to login",
        )),
    }
}

/// One HTTP exchange, classified.
async fn exchange(
    shared: &Shared,
    envelope: &Envelope,
    token: Option<&str>,
) -> Result<Reply, ClientError> {
    use reqwest::Method;
    let config = shared.settings();
    let base = config.server_url.trim_end_matches('/');
    let (method, url, body) = match &envelope.command {
        Command::Login { device_id, name } => (
            Method::POST,
            format!("{base}/v1/sessions"),
            Some(serde_json::json!({ "device_id": device_id, "name": name })),
        ),
        Command::Browse(q) => {
            let mut params: Vec<(String, String)> = Vec::new();
            if let Some(s) = &q.status {
                params.push(("status".into(), s.clone()));
            }
            if let Some(s) = &q.item_id {
                params.push(("item_id".into(), s.clone()));
            }
            if let Some(s) = q.seller_id {
                params.push(("seller_id".into(), s.to_string()));
            }
            if let Some(s) = &q.cursor {
                params.push(("cursor".into(), s.clone()));
            }
            if let Some(s) = q.limit {
                params.push(("limit".into(), s.to_string()));
            }
            let query: Vec<String> = params
                .iter()
                .map(|(k, v)| format!("{k}={}", encode_query(v)))
                .collect();
            let url = if query.is_empty() {
                format!("{base}/v1/listings")
            } else {
                format!("{base}/v1/listings?{}", query.join("&"))
            };
            (Method::GET, url, None)
        }
        Command::GetListing { listing_id } => (
            Method::GET,
            format!("{base}/v1/listings/{listing_id}"),
            None,
        ),
        Command::Change(MarketChange::CreateListing {
            item_id,
            quantity,
            price,
            deposit,
        }) => (
            Method::POST,
            format!("{base}/v1/listings"),
            Some(if *deposit > 0 {
                serde_json::json!({ "item_id": item_id, "quantity": quantity, "price": price, "deposit": deposit })
            } else {
                serde_json::json!({ "item_id": item_id, "quantity": quantity, "price": price })
            }),
        ),
        Command::Change(MarketChange::Reprice { listing_id, price }) => (
            Method::PATCH,
            format!("{base}/v1/listings/{listing_id}"),
            Some(serde_json::json!({ "price": price })),
        ),
        Command::Change(MarketChange::Cancel { listing_id }) => (
            Method::DELETE,
            format!("{base}/v1/listings/{listing_id}"),
            None,
        ),
        Command::Change(MarketChange::Purchase {
            listing_id,
            expected_price,
            deposit,
        }) => (
            Method::POST,
            format!("{base}/v1/listings/{listing_id}/purchase"),
            Some(if *deposit > 0 {
                serde_json::json!({ "expected_price": expected_price, "deposit": deposit })
            } else {
                serde_json::json!({ "expected_price": expected_price })
            }),
        ),
        Command::Change(MarketChange::Deposit { item_id, quantity }) => (
            Method::POST,
            format!("{base}/v1/me/deposits"),
            Some(serde_json::json!({ "item_id": item_id, "quantity": quantity })),
        ),
        Command::Change(MarketChange::Withdraw { item_id, quantity }) => (
            Method::POST,
            format!("{base}/v1/me/withdrawals"),
            Some(serde_json::json!({ "item_id": item_id, "quantity": quantity })),
        ),
        Command::Account => (Method::GET, format!("{base}/v1/me/account"), None),
        Command::Operations { after, limit } => (
            Method::GET,
            format!("{base}/v1/me/operations?after={after}&limit={limit}"),
            None,
        ),
        Command::ListSales {
            unclaimed_only,
            cursor,
        } => {
            let mut params = vec![format!("limit={}", marketplace_protocol::MAX_PAGE_LIMIT)];
            if *unclaimed_only {
                params.push("claimed=false".into());
            }
            if let Some(c) = cursor {
                params.push(format!("cursor={}", encode_query(c)));
            }
            (
                Method::GET,
                format!("{base}/v1/me/sales?{}", params.join("&")),
                None,
            )
        }
        Command::Change(MarketChange::Claim { sale_id }) => (
            Method::POST,
            format!("{base}/v1/sales/{sale_id}/claim"),
            None,
        ),
    };
    let mut request = shared
        .http
        .request(method, url)
        .timeout(config.request_timeout);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = &envelope.key {
        request = request.header(IDEMPOTENCY_HEADER, key);
    }
    if let Some(owner) = &envelope.owner {
        if !owner.server_id.starts_with("url:") {
            request = request.header(SERVER_HEADER, owner.server_id.as_str());
        }
        request = request.header(PLAYER_HEADER, owner.player_id);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let mut response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if bytes.len() + chunk.len() > config.max_response_bytes {
            return Err(ClientError::new(
                ErrorCode::BadResponse,
                "The server's answer was too large",
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    if (200..300).contains(&status) {
        parse_success(&envelope.command, &bytes)
    } else {
        Err(parse_failure(status, &bytes, retry_after))
    }
}

fn transport_error(e: reqwest::Error) -> ClientError {
    // Messages never include the URL: it may carry secrets.
    let e = e.without_url();
    if e.is_timeout() {
        ClientError::new(ErrorCode::Timeout, "The marketplace did not answer in time")
    } else if e.is_connect() {
        ClientError::new(ErrorCode::Offline, "Cannot reach the marketplace")
    } else {
        ClientError::new(
            ErrorCode::Offline,
            format!("Connection to the marketplace lost ({e})"),
        )
    }
}

fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn bad_response(what: &str) -> ClientError {
    ClientError::new(
        ErrorCode::BadResponse,
        format!("The marketplace sent an answer that makes no sense ({what})"),
    )
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|_| bad_response("malformed JSON"))
}

/// Parses and checks a 2xx answer. An answer that contradicts the request
/// (another listing, another price) is `bad_response` — not definitive, so a
/// hostile or broken server cannot make the client settle a hold wrongly.
fn parse_success(command: &Command, bytes: &[u8]) -> Result<Reply, ClientError> {
    match command {
        Command::Login { .. } => {
            let session: Session = decode(bytes)?;
            if session.token.is_empty() || session.player_id < 1 {
                return Err(bad_response("empty session"));
            }
            Ok(Reply::LoggedIn(session))
        }
        Command::Browse(_) => {
            let mut page: ListingPage = decode(bytes)?;
            // A listing this build cannot handle (from before the limits
            // existed, say) is left out of the page rather than failing it.
            page.listings.retain(listing_is_sane);
            Ok(Reply::Listings(page))
        }
        Command::GetListing { listing_id } => {
            let ListingEnvelope { listing, .. } = decode(bytes)?;
            if listing.id != *listing_id || !listing_is_sane(&listing) {
                return Err(bad_response("another listing"));
            }
            Ok(Reply::Listing(listing, None))
        }
        Command::Change(MarketChange::CreateListing {
            item_id,
            quantity,
            price,
            ..
        }) => {
            let ListingEnvelope { listing, transfer } = decode(bytes)?;
            if &listing.item_id != item_id
                || listing.quantity != *quantity
                || listing.price != *price
                || listing.id < 1
                || transfer
                    .as_ref()
                    .is_some_and(|t| !(0..=*quantity).contains(&t.deposited) || t.delivered != 0)
            {
                return Err(bad_response("the listing does not match the request"));
            }
            Ok(Reply::Listing(listing, transfer))
        }
        Command::Change(MarketChange::Reprice { listing_id, price }) => {
            let ListingEnvelope { listing, transfer } = decode(bytes)?;
            if listing.id != *listing_id || listing.price != *price {
                return Err(bad_response("the listing does not match the request"));
            }
            Ok(Reply::Listing(listing, transfer))
        }
        Command::Change(MarketChange::Cancel { listing_id }) => {
            let ListingEnvelope { listing, transfer } = decode(bytes)?;
            // Settlement follows the server's listing even beyond this
            // build's limits: a cancellation the server made must settle.
            if listing.id != *listing_id
                || listing.status != ListingStatus::Cancelled
                || listing.quantity < 1
                || marketplace_protocol::check_id("item_id", &listing.item_id).is_err()
                || transfer.as_ref().is_some_and(|t| {
                    t.deposited != 0 || (t.delivered != 0 && t.delivered != listing.quantity)
                })
            {
                return Err(bad_response("the listing was not cancelled"));
            }
            Ok(Reply::Listing(listing, transfer))
        }
        Command::Change(MarketChange::Purchase {
            listing_id,
            expected_price,
            ..
        }) => {
            let PurchaseEnvelope { purchase, transfer } = decode(bytes)?;
            if purchase.listing_id != *listing_id
                || purchase.price != *expected_price
                || purchase.quantity < 1
                || marketplace_protocol::check_id("item_id", &purchase.item_id).is_err()
                || transfer.as_ref().is_some_and(|t| {
                    !(0..=*expected_price).contains(&t.deposited)
                        || (t.delivered != 0 && t.delivered != purchase.quantity)
                })
            {
                return Err(bad_response("the purchase does not match the request"));
            }
            Ok(Reply::Purchased(purchase, transfer))
        }
        Command::Operations { after, limit } => {
            let page: OperationsPage = decode(bytes)?;
            // What a page says is applied to the save: every part must be
            // sane, or none of it is used.
            let sane = page.operations.len() <= *limit as usize
                && page.operations.windows(2).all(|w| w[0].seq < w[1].seq)
                && page.operations.iter().all(|op| {
                    op.seq > *after
                        && op.seq <= page.last_seq
                        && marketplace_protocol::check_id("key", &op.key).is_ok()
                        && op.credits.abs() <= marketplace_protocol::MAX_PRICE
                        && op.items.iter().all(|(item, n)| {
                            marketplace_protocol::check_id("item_id", item).is_ok()
                                && n.abs() <= marketplace_protocol::MAX_QUANTITY
                        })
                });
            if !sane {
                return Err(bad_response("the operations page does not fit the request"));
            }
            Ok(Reply::Operations(page))
        }
        Command::ListSales { .. } => {
            let mut page: SalesPage = decode(bytes)?;
            page.sales.retain(|s| s.id >= 1 && s.price >= 1);
            Ok(Reply::Sales(page))
        }
        Command::Change(MarketChange::Claim { sale_id }) => {
            let claim: Claim = decode(bytes)?;
            if claim.sale_id != *sale_id
                || claim.amount < 1
                || claim.transfer.as_ref().is_some_and(|t| {
                    t.deposited != 0 || (t.delivered != 0 && t.delivered != claim.amount)
                })
            {
                return Err(bad_response("the claim does not match the request"));
            }
            Ok(Reply::Claimed(claim))
        }
        Command::Change(MarketChange::Deposit { item_id, quantity })
        | Command::Change(MarketChange::Withdraw { item_id, quantity }) => {
            let moved: Moved = decode(bytes)?;
            if &moved.item_id != item_id || moved.quantity != *quantity || moved.account.credits < 0
            {
                return Err(bad_response("the move does not match the request"));
            }
            Ok(Reply::Moved(moved))
        }
        Command::Account => {
            let account: AccountEnvelope = decode(bytes)?;
            if account.account.credits < 0 || account.account.stash.values().any(|n| *n < 0) {
                return Err(bad_response("a negative account"));
            }
            Ok(Reply::Account(account))
        }
    }
}

fn listing_is_sane(l: &Listing) -> bool {
    l.id > 0
        && marketplace_protocol::check_quantity(l.quantity).is_ok()
        && marketplace_protocol::check_price("price", l.price).is_ok()
        && marketplace_protocol::check_id("item_id", &l.item_id).is_ok()
}

/// Classifies a non-2xx answer.
///
/// Only the marketplace's own error envelope, with a status that fits its
/// code, can be definitive — and so release a hold. Anything else is what a
/// proxy, CDN, load balancer or WAF says (an HTML 403 or 404 page, a bare
/// 502): it tells nothing about whether the server applied the request, so
/// it is classified by its status as one of the retryable codes (invariant
/// I4). A well-formed envelope with a code this client does not know is
/// treated the same way: a newer server's refusal is not guessed at.
fn parse_failure(status: u16, bytes: &[u8], retry_after: Option<Duration>) -> ClientError {
    let ambiguous = match status {
        401 => ErrorCode::Unauthorized,
        408 => ErrorCode::Timeout,
        429 => ErrorCode::RateLimited,
        500 => ErrorCode::Internal,
        s if s >= 500 => ErrorCode::Unavailable,
        _ => ErrorCode::BadResponse,
    };
    let envelope = serde_json::from_slice::<ErrorEnvelope>(bytes).ok();
    let mut error = match envelope {
        Some(env) => match ErrorCode::parse(&env.error.code) {
            Some(code) if code.http_status() == Some(status) => {
                let mut e = ClientError::new(code, env.error.message);
                e.current_price = env.error.current_price.filter(|p| *p > 0);
                e
            }
            _ => ClientError::new(
                ambiguous,
                format!(
                    "The marketplace answered HTTP {status} with a code this game does not know ({})",
                    env.error.code
                ),
            ),
        },
        None => ClientError::new(
            ambiguous,
            format!("HTTP {status} from something between the game and the marketplace"),
        ),
    };
    if error.message.is_empty() {
        error.message = format!("The marketplace answered HTTP {status}");
    }
    error.retry_after = retry_after;
    error
}

/// A token bucket shared by all requests of one client; its rate can
/// change while requests wait.
struct TokenBucket {
    /// (rate per second, tokens, last refill)
    state: Mutex<(f64, f64, Instant)>,
}

impl TokenBucket {
    fn new(per_sec: f64) -> TokenBucket {
        TokenBucket {
            state: Mutex::new((per_sec, per_sec.max(1.0), Instant::now())),
        }
    }

    fn set_rate(&self, per_sec: f64) {
        if let Ok(mut state) = self.state.lock() {
            state.0 = per_sec;
        }
    }

    async fn acquire(&self) {
        loop {
            let wait = {
                let Ok(mut state) = self.state.lock() else {
                    return;
                };
                let (per_sec, tokens, last) = *state;
                if per_sec <= 0.0 || !per_sec.is_finite() {
                    return;
                }
                let now = Instant::now();
                let burst = per_sec.max(1.0);
                let tokens = (tokens + now.duration_since(last).as_secs_f64() * per_sec).min(burst);
                if tokens >= 1.0 {
                    *state = (per_sec, tokens - 1.0, now);
                    return;
                }
                *state = (per_sec, tokens, now);
                // Wake up at least every second: the rate may change meanwhile.
                Duration::from_secs_f64(((1.0 - tokens) / per_sec).min(1.0))
            };
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_classified_by_code_and_status() {
        let body = br#"{"error":{"code":"already_sold","message":"Item sold to another player"}}"#;
        let e = parse_failure(409, body, None);
        assert_eq!(e.code, ErrorCode::AlreadySold);
        assert!(e.is_definitive());
        let e = parse_failure(502, b"<html>bad gateway</html>", None);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(!e.is_definitive());
        // A code that does not fit its status is not trusted.
        let e = parse_failure(500, body, None);
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.is_definitive());
        let e = parse_failure(429, b"", Some(Duration::from_secs(3)));
        assert_eq!(
            (e.code, e.retry_after),
            (ErrorCode::RateLimited, Some(Duration::from_secs(3)))
        );
        let e = parse_failure(418, br#"{"error":{"code":"teapot","message":"no"}}"#, None);
        assert_eq!(e.code, ErrorCode::BadResponse);
        assert!(!e.is_definitive(), "an unknown code settles nothing");
    }

    #[test]
    fn a_proxy_page_is_never_definitive() {
        for status in [400u16, 403, 404, 409, 410, 413, 418, 451] {
            let page = b"<html><body><h1>403 Forbidden</h1>nginx</body></html>";
            let e = parse_failure(status, page, None);
            assert!(!e.is_definitive(), "{status}: {e:?}");
            // Our envelope with a status that does not fit its code neither.
            let body = br#"{"error":{"code":"already_sold","message":"x"}}"#;
            let e = parse_failure(status, body, None);
            assert_eq!(
                e.is_definitive(),
                status == 409,
                "{status}: only 409 fits already_sold"
            );
        }
        let e = parse_failure(
            404,
            br#"{"error":{"code":"not_found","message":"Listing not found"}}"#,
            None,
        );
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.is_definitive());
    }

    #[test]
    fn success_must_match_the_request() {
        let buy = Command::Change(MarketChange::Purchase {
            listing_id: 7,
            expected_price: 100,
            deposit: 100,
        });
        let ok = br#"{"purchase":{"id":1,"listing_id":7,"buyer_id":2,"seller_id":1,"item_id":"ore","quantity":1,"price":100,"created_at":0}}"#;
        assert!(matches!(parse_success(&buy, ok), Ok(Reply::Purchased(..))));
        let wrong_price = br#"{"purchase":{"id":1,"listing_id":7,"buyer_id":2,"seller_id":1,"item_id":"ore","quantity":1,"price":1000,"created_at":0}}"#;
        assert_eq!(
            parse_success(&buy, wrong_price).unwrap_err().code,
            ErrorCode::BadResponse
        );
        for junk in [&b"not json"[..], b"{}", b"[]", b"null", b""] {
            let e = parse_success(&buy, junk).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadResponse);
            assert!(
                !e.is_definitive(),
                "a garbled success must not release a hold"
            );
        }
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let config = ClientConfig::default();
        let d1 = backoff(&config, 1, None);
        assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(300));
        let d20 = backoff(&config, 20, None);
        assert!(d20 <= config.retry_max_delay);
        assert!(backoff(&config, 1, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(encode_query("a b&c"), "a%20b%26c");
    }
}
