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
    AccountEnvelope, Claim, ErrorCode, Listing, ListingPage, MarketChange, Moved, OperationsPage,
    Purchase, SalesPage, Session, Transfer,
};
use tokio::sync::{watch, Notify, Semaphore};

use crate::error::ClientError;
use crate::state::Owner;

mod retry;
mod stream;
mod wire;

pub use stream::{StreamNotice, StreamOptions};
pub(crate) use wire::notification_is_sane;

use retry::attempts;
pub use retry::owner_of;

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
    /// `active` (the server's default), `sold`, `cancelled`, `expired` or `all`.
    pub status: Option<String>,
    pub item_id: Option<String>,
    /// Items whose id starts with this.
    pub item_prefix: Option<String>,
    /// Items whose id starts with this or whose catalog name holds it.
    pub search: Option<String>,
    pub seller_id: Option<i64>,
    /// Unit price bounds, inclusive.
    pub min_price: Option<i64>,
    pub max_price: Option<i64>,
    /// `oldest` (the server's default), `newest` or `price` (cheapest first).
    pub sort: Option<String>,
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

/// Who to log in as: the save's device, or — when `identity_token` is
/// set — the player of an identity of the game's own identity provider
/// (the README's "Player identity"; the device is then not sent).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub device_id: String,
    pub name: String,
    pub identity_token: Option<String>,
}

impl Credentials {
    pub fn device(device_id: &str, name: &str) -> Credentials {
        Credentials {
            device_id: device_id.to_string(),
            name: name.to_string(),
            identity_token: None,
        }
    }

    /// Whether `other` names the same player: the same device, or tokens
    /// of the same issuer and subject (a fresh token of one identity is
    /// not another player).
    pub fn same_player(&self, other: &Credentials) -> bool {
        match (&self.identity_token, &other.identity_token) {
            (None, None) => self.device_id == other.device_id,
            (Some(a), Some(b)) => {
                a == b || token_subject(a).is_some_and(|s| Some(s) == token_subject(b))
            }
            _ => false,
        }
    }
}

/// Never prints a token.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("device_id", &self.device_id)
            .field("name", &self.name)
            .field(
                "identity_token",
                &self.identity_token.as_ref().map(|_| ".."),
            )
            .finish()
    }
}

/// The `iss` and `sub` of a JWT, read without checking it (only to tell
/// one identity from another; the server checks the token).
fn token_subject(token: &str) -> Option<(String, String)> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    #[derive(serde::Deserialize)]
    struct Claims {
        iss: Option<String>,
        sub: Option<String>,
    }
    let claims: Claims = serde_json::from_slice(&json).ok()?;
    Some((claims.iss?, claims.sub?))
}

/// Everything the marketplace API offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Login(Credentials),
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
    /// A page of the player's buy orders (`GET /v1/me/orders`).
    MyOrders {
        /// `active`, `closed` or `None` (all).
        status: Option<String>,
        cursor: Option<String>,
    },
    /// A page of what waits for the player (`GET /v1/me/deliveries`).
    ListDeliveries {
        cursor: Option<String>,
    },
    /// Items by id prefix or catalog name (`GET /v1/items?search=`).
    SearchItems {
        search: String,
        limit: u32,
    },
    /// An item's market data: summary, depth, price history.
    MarketSummary {
        item_id: String,
    },
    Depth {
        item_id: String,
        levels: u32,
    },
    PriceHistory {
        item_id: String,
        /// `hour` or `day`.
        interval: String,
        /// Unix seconds; `None`: the server's default range.
        from: Option<i64>,
        to: Option<i64>,
    },
    /// What a sale of `quantity` units at `price` each costs in fees.
    FeeQuote {
        quantity: i64,
        price: i64,
    },
    /// A page of the player's open notifications.
    Notifications {
        cursor: Option<String>,
    },
    /// Closes notifications the game has saved and shown (naturally
    /// idempotent: no key).
    AckNotifications {
        /// Each notification's id and the `fills` the game was shown.
        acks: Vec<(i64, i64)>,
    },
    /// The player's ways in (`GET /v1/me/identities`).
    Identities,
    /// Links the identity a token proves to the logged-in player (linking
    /// what is already the player's changes nothing: no key needed).
    LinkIdentity {
        identity_token: String,
    },
    /// Removes the player's identity of a provider.
    UnlinkIdentity {
        provider: String,
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
    /// A buy order placed or cancelled, with the fills placing it made.
    Order(marketplace_protocol::OrderEnvelope),
    Orders(marketplace_protocol::OrdersPage),
    Deliveries(marketplace_protocol::DeliveriesPage),
    Collected(marketplace_protocol::Collected),
    FeeQuote(marketplace_protocol::FeeQuote),
    MarketSummary(marketplace_protocol::MarketSummary),
    Items(marketplace_protocol::ItemSearch),
    Identities(marketplace_protocol::Identities),
    Depth(marketplace_protocol::Depth),
    PriceHistory(marketplace_protocol::PriceHistory),
    Notifications(marketplace_protocol::NotificationsPage),
    /// How many of the notifications were still open.
    Acked(u64),
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
    /// The change stream's task, its position (the last `seq` handed over;
    /// -1: none yet) and the queue to the game.
    stream: Mutex<stream::Slot>,
    stream_seq: std::sync::atomic::AtomicI64,
    outlet: stream::Outlet,
}

#[derive(Default)]
struct SessionState {
    token: Option<String>,
    /// Who the token is for: the market that issued it and the player.
    owner: Option<Owner>,
    credentials: Option<Credentials>,
    /// Bumped on every new token, so concurrent 401s log in again once.
    epoch: u64,
}

/// The synchronous handle. Owned by the game's main thread (or any thread);
/// `Send`, no method blocks on the network.
pub struct MarketClient {
    shared: Arc<Shared>,
    commands: tokio::sync::mpsc::UnboundedSender<Envelope>,
    events: mpsc::Receiver<Event>,
    notices: mpsc::Receiver<(u64, StreamNotice)>,
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
        let (outlet, notices) = stream::Outlet::new();
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
            stream: Mutex::new(stream::Slot::default()),
            stream_seq: std::sync::atomic::AtomicI64::new(-1),
            outlet,
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
            notices,
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

    /// Opens the change stream (replacing one already open): it connects
    /// once logged in, reconnects with backoff and resumes where it was.
    /// `resume` false starts at the server's present (another market or
    /// player than the stream before), with a [`StreamNotice::Reload`].
    pub fn open_stream(&self, options: StreamOptions, resume: bool) {
        stream::open(&self.shared, options, resume);
    }

    /// Closes the change stream.
    pub fn close_stream(&self) {
        stream::close(&self.shared.stream);
    }

    /// The last event the stream handed over (`None`: none yet).
    pub fn stream_position(&self) -> Option<i64> {
        let seq = self.shared.stream_seq.load(Ordering::Acquire);
        (seq >= 0).then_some(seq)
    }

    /// Moves up to `max` stream notices into `out`; never blocks.
    pub fn poll_stream(&self, out: &mut Vec<StreamNotice>, max: usize) -> usize {
        let current = self.shared.outlet.generation();
        let mut n = 0;
        while n < max {
            match self.notices.try_recv() {
                Ok((generation, notice)) => {
                    // A stream replaced by one for another player or
                    // market: what it still sent is not this one's.
                    // (Generations only grow: a newer one's notices, from
                    // a stream opened while this poll ran, are kept.)
                    if generation >= current {
                        out.push(notice);
                        n += 1;
                    }
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
        self.remember(Credentials::device(device_id, name));
    }

    /// Remembers credentials; another player's forget the token.
    pub fn remember(&self, credentials: Credentials) {
        if let Ok(mut s) = self.shared.session.lock() {
            if s.credentials
                .as_ref()
                .is_some_and(|c| !c.same_player(&credentials))
            {
                s.token = None;
                s.owner = None;
                s.epoch += 1;
            }
            s.credentials = Some(credentials);
        }
    }

    /// Who the client logs in as by itself, if anyone.
    pub fn credentials(&self) -> Option<Credentials> {
        self.shared
            .session
            .lock()
            .ok()
            .and_then(|s| s.credentials.clone())
    }

    /// True when the remembered credentials are an identity token's.
    pub fn logs_in_by_token(&self) -> bool {
        self.shared.session.lock().ok().is_some_and(|s| {
            s.credentials
                .as_ref()
                .is_some_and(|c| c.identity_token.is_some())
        })
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
