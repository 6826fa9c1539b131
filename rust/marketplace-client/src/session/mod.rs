//! [`TradingSession`]: trades with holds that settle only on definitive answers.
//!
//! The session sits on the game's main thread between the [`PlayerStore`]
//! (the player's data, which it borrows for each call) and the
//! [`MarketClient`] (the network, which it owns). A trade goes:
//!
//! 1. **Hold and journal** (synchronous, in the caller's frame): buying
//!    reserves the expected price, selling escrows the items, and the
//!    operation enters the journal with its idempotency key. The UI can show
//!    the new balance at once.
//! 2. **Send once durable**: the request leaves only after the save holding
//!    its journal entry is on disk, so a crash can never forget a request the
//!    server may have applied (I2 across crashes). While saves fail (disk
//!    full, a file another program holds) trades wait — the game has been
//!    told with `SaveFailed` and sees them in [`TradingSession::pending_trades`]
//!    — and go as soon as a save succeeds. Reads go on.
//! 3. **Settle on a definitive answer**: success commits the hold and credits
//!    what came in; `already_sold`, `price_changed`, … release it. Timeouts,
//!    lost connections, 5xx and anything a proxy says settle nothing: the
//!    client retries with the same key (I4). After a restart,
//!    [`TradingSession::new`] re-sends every journaled operation with its
//!    original key. A trade retrying for longer than the stall threshold is
//!    reported once ([`SessionEvent::TradeStalled`]) — its hold stays.
//! 4. **Report once durable**: the event telling the game about a settlement
//!    is released only after the save holding the settlement is on disk (I3).
//!
//! # Living with a game
//! Settings change while the session runs ([`TradingSession::set_config`]);
//! request ids are unique for the session's life. A journaled trade
//! belongs to the market and player that accepted it ([`crate::state::Owner`],
//! bound before its first send and on disk before anything leaves): it is
//! only ever sent there, as that player, and the server refuses it anywhere
//! else (`wrong_server`). While the game points at another server the trade
//! waits, hold and all, and shows why in [`TradingSession::pending_trades`];
//! it goes again once the game points back. Switching to another device
//! identity is still refused with `trades_pending` while trades wait. Requests refused locally are reported on the *next* poll, and
//! one poll reports only what was queued before it began — a handler that
//! answers every failure with a new request cannot make a frame endless.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use marketplace_protocol::{ErrorCode, Listing, ListingPage, MarketChange, Purchase, Sale};

use crate::client::{BrowseQuery, ClientConfig, Command, Event, MarketClient, RequestId};
use crate::error::ClientError;
use crate::state::unix_now;
use crate::state::{HoldKind, OpId};
use crate::store::PlayerStore;

mod answers;
mod live;
mod orders;

/// What the game hears about, in order. The Godot layer turns each into a
/// signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    LoggedIn {
        request_id: RequestId,
        player_id: i64,
        name: String,
    },
    ListingsUpdated {
        request_id: RequestId,
        page: ListingPage,
    },
    ListingFetched {
        request_id: RequestId,
        listing: Listing,
    },
    ListingCreated {
        request_id: RequestId,
        listing: Listing,
    },
    ListingRepriced {
        request_id: RequestId,
        listing: Listing,
    },
    ListingCancelled {
        request_id: RequestId,
        listing: Listing,
    },
    PurchaseSucceeded {
        request_id: RequestId,
        purchase: Purchase,
    },
    /// The hold was released: `error.code` is `already_sold`,
    /// `price_changed`, `listing_cancelled`, `own_listing`, `not_found`, …
    PurchaseFailed {
        request_id: RequestId,
        listing_id: i64,
        error: ClientError,
    },
    SalesListed {
        request_id: RequestId,
        sales: Vec<Sale>,
    },
    /// One sale's proceeds were credited (`amount` 0 with `sale_id` 0: there
    /// was nothing to claim).
    ProceedsClaimed {
        request_id: RequestId,
        sale_id: i64,
        amount: i64,
    },
    /// Any other request failed for good (a refused sale, cancel, reprice or
    /// read). A refused sale's items are back in the inventory.
    RequestFailed {
        request_id: RequestId,
        error: ClientError,
    },
    /// A request failed in a way that is not definitive and is retried.
    RequestRetrying {
        request_id: RequestId,
        attempt: u32,
        error: ClientError,
    },
    /// A trade has waited longer than the stall threshold and its last
    /// attempt failed (`error`); it keeps being retried and its hold stays.
    /// Reported once per trade per session.
    TradeStalled {
        request_id: RequestId,
        trade: PendingTrade,
        error: ClientError,
    },
    /// Credits (`item_id` None) or items arrived in the save from the
    /// market account.
    Withdrawn {
        request_id: RequestId,
        item_id: Option<String>,
        quantity: i64,
    },
    /// The market account as the server sees it now (also in the store's
    /// mirror).
    AccountUpdated {
        request_id: RequestId,
        account: marketplace_protocol::Account,
    },
    /// Requests went from none to some in flight, or back.
    BusyChanged { busy: bool },
    /// A trade the server made for this player that the save had lost (it
    /// was restored from an older backup, after the trade was sent) was
    /// applied to the save now: `credits` and `items` came in (negative:
    /// went out); `shortfall` is what had gone out that the save no longer
    /// had. Reported once, after it is saved.
    TradeRecovered {
        key: String,
        /// `purchase`, `create_listing`, `cancel`, `claim`, `withdraw`, …
        kind: String,
        credits: i64,
        items: Vec<(String, i64)>,
        shortfall: i64,
    },
    /// A buy order was placed: its price is in escrow (the hold committed),
    /// `fills` are what it bought at once — their items and any refund
    /// wait as deliveries (client deposits) or are in the market account.
    OrderPlaced {
        request_id: RequestId,
        order: marketplace_protocol::Order,
        fills: Vec<marketplace_protocol::Fill>,
    },
    /// A buy order was cancelled; `returned` credits of its escrow came
    /// back (into the save, or the market account under server grants).
    OrderCancelled {
        request_id: RequestId,
        order: marketplace_protocol::Order,
        returned: i64,
    },
    OrdersListed {
        request_id: RequestId,
        orders: Vec<marketplace_protocol::Order>,
        next_cursor: Option<String>,
    },
    /// A `collect_deliveries` request is over: `deliveries` came in (into
    /// the save, or the market account under server grants), saved before
    /// this is reported. `error` is the first failure, if any (what it
    /// concerned stays waiting for the next call).
    DeliveriesCollected {
        request_id: RequestId,
        deliveries: Vec<marketplace_protocol::Delivery>,
        error: Option<ClientError>,
    },
    FeesQuoted {
        request_id: RequestId,
        quote: marketplace_protocol::FeeQuote,
    },
    MarketSummary {
        request_id: RequestId,
        summary: marketplace_protocol::MarketSummary,
    },
    /// Items matching a search, best first; `catalog`: the server has a
    /// catalog (names were searched too).
    ItemsFound {
        request_id: RequestId,
        items: Vec<marketplace_protocol::ItemMatch>,
        catalog: bool,
    },
    /// The player's ways in, after listing, linking or unlinking.
    IdentitiesListed {
        request_id: RequestId,
        identities: marketplace_protocol::Identities,
    },
    DepthListed {
        request_id: RequestId,
        depth: marketplace_protocol::Depth,
    },
    PriceHistory {
        request_id: RequestId,
        history: marketplace_protocol::PriceHistory,
    },
    /// A change of the market from the stream (a hint: it never settles a
    /// trade; see [`marketplace_protocol::StreamEvent`]).
    MarketChanged {
        event: Box<marketplace_protocol::StreamEvent>,
    },
    /// The stream connected and caught up (`live`), or lost its
    /// connection (`error`) and is reconnecting.
    MarketLive {
        live: bool,
        error: Option<ClientError>,
    },
    /// Changes may have been missed: read what is on screen again.
    MarketReload,
    /// What happened while the player was away (or just now, by others):
    /// reported once, after it is saved.
    Notification {
        notification: marketplace_protocol::Notification,
    },
    /// Deliveries wait to be collected (at login).
    DeliveriesWaiting { count: i64 },
    /// A `claim_proceeds` request is over: every unclaimed sale it found has
    /// settled (`sales` claimed for `amount` credits in all). `error` is the
    /// first refusal, if any (its sale stays unclaimed for the next call).
    /// Comes last, after that request's `ProceedsClaimed` events.
    ClaimsDone {
        request_id: RequestId,
        sales: usize,
        amount: i64,
        error: Option<ClientError>,
    },
}

/// A trade waiting for its definitive answer, as
/// [`TradingSession::pending_trades`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTrade {
    pub request_id: RequestId,
    /// The trade's idempotency key: what the server knows it by (for a
    /// support ticket, or the operator's console).
    pub key: String,
    /// `purchase`, `create_listing`, `reprice`, `cancel` or `claim`.
    pub kind: &'static str,
    pub listing_id: Option<i64>,
    pub sale_id: Option<i64>,
    /// The buy order (`cancel_order`).
    pub order_id: Option<i64>,
    pub item_id: Option<String>,
    pub quantity: Option<i64>,
    /// The price per unit (purchase, listing, reprice, buy order), else 0.
    pub amount: i64,
    /// Unix seconds when the player made the trade.
    pub created_at: i64,
    pub age: Duration,
    /// Attempts that failed without a definitive answer (this session).
    pub attempts: u32,
    pub last_error: Option<ErrorCode>,
    /// Not sent yet: its journal entry is not on disk (saves are failing).
    pub waiting_for_save: bool,
    /// Why it waits for the game to point elsewhere: the trade belongs to
    /// another market or player than the one the game is connected to now
    /// (`wrong_server`). It goes as soon as the game points back.
    pub waiting_for_owner: Option<String>,
}

/// What a request id stands for.
#[derive(Debug, Clone)]
enum Tracked {
    /// A login as this device (by identity token: `true`).
    Login(String, bool),
    /// A login the session made by itself, to learn which market and player
    /// unbound trades will belong to; not reported.
    QuietLogin(String),
    Browse,
    GetListing,
    Sales,
    /// `claim_proceeds`: the sales list page by page, then one claim per
    /// sale, all reported under `origin`.
    ClaimAll {
        origin: RequestId,
    },
    Account,
    Op {
        op: OpId,
        origin: RequestId,
    },
    /// A page of the player's operations, to reconcile the save with.
    Sync(crate::state::Owner),
    Orders,
    FeeQuote,
    /// Market data: the reply is reported as it comes.
    MarketData,
    /// The player's identities (list, link, unlink).
    Identities,
    /// A page of the inbox (`first`: the login's first).
    Inbox {
        first: bool,
    },
    /// An acknowledgement of notifications; its answer changes nothing.
    Ack,
    /// `collect_deliveries`: the deliveries page by page, then one collect
    /// per kind of item, all reported under `origin`.
    CollectAll {
        origin: RequestId,
    },
}

struct Unsent {
    id: RequestId,
    op: OpId,
    generation: u64,
}

/// How a `claim_proceeds` request is doing.
#[derive(Default)]
struct ClaimProgress {
    /// Pages of sales still being fetched.
    listing: bool,
    /// Claims journaled and not settled yet.
    outstanding: usize,
    sales: usize,
    amount: i64,
    error: Option<ClientError>,
}

/// How a journaled operation is doing in this session.
struct Progress {
    request_id: RequestId,
    attempts: u32,
    last_error: Option<ErrorCode>,
    stalled: bool,
    /// For entries with no creation time (files from before schema 2).
    seen_since: Instant,
}

pub struct TradingSession {
    client: MarketClient,
    /// Keyed by ids this process numbers: a fast unkeyed hasher is safe.
    tracked: rustc_hash::FxHashMap<RequestId, Tracked>,
    progress: rustc_hash::FxHashMap<OpId, Progress>,
    unsent: VecDeque<Unsent>,
    /// Client events taken but not handled yet (a frame's time ran out).
    backlog: VecDeque<Event>,
    /// Events that wait for nothing (reads, notices), in order.
    ready: VecDeque<SessionEvent>,
    /// Events waiting for the save that makes them true.
    deferred: VecDeque<(u64, SessionEvent)>,
    /// Requests refused locally, reported on the next poll.
    refusals: VecDeque<SessionEvent>,
    claims: HashMap<RequestId, ClaimProgress>,
    collects: HashMap<RequestId, orders::CollectProgress>,
    /// Listing → units remaining, as the last page or listing read showed
    /// them: what "buy the whole lot" means for a listing.
    lots: crate::ids::IdMap<i64, i64>,
    /// Durable trades never sent and not bound to a market yet: they wait
    /// for a login to say where they belong.
    unbound: Vec<Unsent>,
    /// The session's own login for `unbound`, in flight; else when to try again.
    quiet_login: Option<RequestId>,
    next_quiet_login: Instant,
    /// Trades of another market or player than the current one, and why.
    parked: HashMap<OpId, ClientError>,
    /// The login the parked trades were last compared with.
    last_owner: Option<crate::state::Owner>,
    /// The market and player the save was last reconciled with (once per
    /// login); a pass in flight; when to look again.
    synced: Option<crate::state::Owner>,
    sync_in_flight: bool,
    next_sync: Instant,
    /// Keys still noted after the last pass (held back by a journaled trade,
    /// or just settled): a new pass waits for more than these.
    noted_after_sync: usize,
    /// Not before then (a pass held back by a journaled trade would
    /// otherwise run again after every settlement).
    next_resync: Instant,
    busy: bool,
    stall_after: Duration,
    /// The save came from its backup and the market has not yet told it
    /// what it lost: new trades wait (`save_restoring`), so the player
    /// cannot spend again what a lost trade already took.
    restoring: bool,
    live: live::Live,
}

/// Operations per page when reconciling the save with the server's record.
const SYNC_PAGE: u32 = 200;

/// Keys noted since the last reconciliation that make the session
/// reconcile again within the same login.
const SYNC_AGAIN_AT: usize = 1000;

/// Client events handled per `poll` by default: bounds one frame's work.
pub const DEFAULT_EVENTS_PER_POLL: usize = 256;

/// How long a trade may retry before [`SessionEvent::TradeStalled`].
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(60);

fn invalid(message: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::InvalidArgument, message)
}

fn trades_pending(n: usize, what: &str) -> ClientError {
    ClientError::new(
        ErrorCode::TradesPending,
        format!("Cannot {what} while {n} trade(s) wait for the marketplace's answer; they belong to this player and server"),
    )
}

impl TradingSession {
    /// Starts the client and re-sends every operation left in the journal
    /// (with its original key), so a trade interrupted by a crash settles.
    pub fn new(
        config: ClientConfig,
        store: &mut PlayerStore,
    ) -> Result<TradingSession, ClientError> {
        let client = MarketClient::start(config)?;
        let mut session = TradingSession {
            client,
            tracked: Default::default(),
            progress: Default::default(),
            unsent: VecDeque::new(),
            backlog: VecDeque::new(),
            ready: VecDeque::new(),
            deferred: VecDeque::new(),
            refusals: VecDeque::new(),
            claims: HashMap::new(),
            collects: HashMap::new(),
            lots: crate::ids::IdMap::default(),
            unbound: Vec::new(),
            quiet_login: None,
            next_quiet_login: Instant::now(),
            parked: HashMap::new(),
            last_owner: None,
            synced: None,
            sync_in_flight: false,
            next_sync: Instant::now(),
            noted_after_sync: 0,
            next_resync: Instant::now(),
            busy: false,
            stall_after: DEFAULT_STALL_AFTER,
            restoring: store.recovered_from_backup(),
            live: live::Live::default(),
        };
        // Journaled operations must be able to settle even before the game
        // logs in: the client may log in by itself as the saved identity.
        // Not when the game last logged in by identity token: the device is
        // not that player, and only the game has a token.
        let state = store.state();
        if !state.identity_login {
            session
                .client
                .set_credentials(&state.device_id, &state.player_name);
        }
        let pending: Vec<OpId> = store.state().journal.keys().copied().collect();
        // They may be newer than the last save (a store that outlived an
        // earlier session): sent once everything up to now is on disk —
        // which needs a save even with `autosave` off and nothing else
        // asking for one.
        let generation = store.generation();
        if !pending.is_empty() && store.durable_generation() < generation {
            store.save();
        }
        for op in pending {
            let id = session.client.next_request_id();
            session.track_op(id, op, id, generation);
        }
        Ok(session)
    }

    fn track_op(&mut self, id: RequestId, op: OpId, origin: RequestId, generation: u64) {
        self.tracked.insert(id, Tracked::Op { op, origin });
        self.progress.insert(
            op,
            Progress {
                request_id: origin,
                attempts: 0,
                last_error: None,
                stalled: false,
                seen_since: Instant::now(),
            },
        );
        self.unsent.push_back(Unsent { id, op, generation });
    }

    pub fn client(&self) -> &MarketClient {
        &self.client
    }

    /// How long a trade may go without a definitive answer before
    /// [`SessionEvent::TradeStalled`]. Default 60 s.
    pub fn set_stall_after(&mut self, after: Duration) {
        self.stall_after = after;
    }

    /// Applies new settings at once, without restarting anything: request
    /// ids, the journal and events in flight are untouched. Switching to
    /// another server is fine while trades wait: each belongs to the market
    /// and player that accepted it and is only ever sent there — while the
    /// game points elsewhere it waits (see [`PendingTrade::waiting_for_owner`]),
    /// and it goes again as soon as the game points back.
    pub fn set_config(
        &mut self,
        store: &PlayerStore,
        config: ClientConfig,
    ) -> Result<(), ClientError> {
        let config = config.checked()?;
        let moved = config.server_url != self.client.config().server_url;
        self.client.reconfigure(config)?;
        if moved {
            self.unpark(store);
        }
        Ok(())
    }

    /// Trades that waited for another market or player try again (they wait
    /// again at once, without a request, if the game still points elsewhere).
    pub(super) fn unpark(&mut self, store: &PlayerStore) {
        let parked: Vec<OpId> = self.parked.drain().map(|(op, _)| op).collect();
        for op in parked {
            if !store.state().journal.contains_key(&op) {
                continue;
            }
            let origin = self.progress.get(&op).map(|p| p.request_id);
            let id = self.client.next_request_id();
            let origin = origin.unwrap_or(id);
            self.tracked.insert(id, Tracked::Op { op, origin });
            self.unsent.push_back(Unsent {
                id,
                op,
                generation: 0,
            });
        }
    }

    /// Switches the identity the session logs in as (saved in the store).
    /// Refused with `trades_pending` for another device while trades of the
    /// current one wait: their keys belong to the player who made them.
    pub fn set_identity(
        &mut self,
        store: &mut PlayerStore,
        device_id: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        let pending = store.state().journal.len();
        if device_id != store.state().device_id && pending > 0 {
            return Err(trades_pending(pending, "log in as another player"));
        }
        store
            .set_identity(device_id, name)
            .map_err(|e| invalid(e.to_string()))?;
        // The game chose a device: the session may log in by it on its own.
        store.set_identity_login(false);
        self.client.set_credentials(device_id, name);
        Ok(())
    }

    /// Logs in as the player of an identity of the game's identity provider
    /// (the token is a JWT the game got from it; see the README's "Player
    /// identity"). The device id stays in the save for the day the game
    /// logs in by device again; the name, if given, is saved. The token is
    /// kept in memory only, to log in again while it is valid: a game that
    /// gets `unauthorized` or `identity_refused` later logs in with a
    /// fresh token. Trades already journaled stay their own player's: they
    /// go when the game is that player again (a token login as another
    /// player parks them, it never sends them as someone else).
    pub fn login_with_token(
        &mut self,
        store: &mut PlayerStore,
        identity_token: &str,
        name: &str,
    ) -> Result<RequestId, ClientError> {
        if identity_token.is_empty() || identity_token.len() > 8 * 1024 {
            return Err(invalid("identity_token must be 1 to 8192 bytes"));
        }
        let device_id = store.state().device_id.clone();
        let name = if name.is_empty() {
            store.state().player_name.clone()
        } else {
            name.to_string()
        };
        store
            .set_identity(&device_id, &name)
            .map_err(|e| invalid(e.to_string()))?;
        let credentials = crate::client::Credentials {
            device_id: device_id.clone(),
            name,
            identity_token: Some(identity_token.to_string()),
        };
        self.client.remember(credentials.clone());
        // `identity_login` is saved once the login succeeds (answers.rs).
        self.send_now(Command::Login(credentials), Tracked::Login(device_id, true))
    }

    /// Links the identity `identity_token` proves to the logged-in player:
    /// from then on a login with that identity, on any device, is this
    /// player. Refused with `identity_linked` when the identity is another
    /// player's (or this player has one of that provider already).
    pub fn link_identity(&mut self, identity_token: &str) -> Result<RequestId, ClientError> {
        if identity_token.is_empty() || identity_token.len() > 8 * 1024 {
            return Err(invalid("identity_token must be 1 to 8192 bytes"));
        }
        let command = Command::LinkIdentity {
            identity_token: identity_token.to_string(),
        };
        self.send_now(command, Tracked::Identities)
    }

    /// Unlinks the player's identity of `provider` (refused with
    /// `forbidden` when it is the player's last way in).
    pub fn unlink_identity(&mut self, provider: &str) -> Result<RequestId, ClientError> {
        let ok = (1..=32).contains(&provider.len())
            && provider
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if !ok {
            return Err(invalid("provider is 1-32 of a-z, 0-9, _ and -"));
        }
        let command = Command::UnlinkIdentity {
            provider: provider.to_string(),
        };
        self.send_now(command, Tracked::Identities)
    }

    /// The player's ways in: its provider identities, and whether its
    /// device id logs it in.
    pub fn identities(&mut self) -> Result<RequestId, ClientError> {
        self.send_now(Command::Identities, Tracked::Identities)
    }

    /// Logs in as the store's device and name.
    pub fn login(&mut self, store: &PlayerStore) -> Result<RequestId, ClientError> {
        let state = store.state();
        let credentials = crate::client::Credentials::device(&state.device_id, &state.player_name);
        self.client.remember(credentials.clone());
        self.send_now(
            Command::Login(credentials),
            Tracked::Login(state.device_id.clone(), false),
        )
    }

    pub fn browse(&mut self, query: BrowseQuery) -> Result<RequestId, ClientError> {
        self.send_now(Command::Browse(query), Tracked::Browse)
    }

    pub fn get_listing(&mut self, listing_id: i64) -> Result<RequestId, ClientError> {
        self.send_now(Command::GetListing { listing_id }, Tracked::GetListing)
    }

    /// The first page of the player's unclaimed sales.
    pub fn list_sales(&mut self) -> Result<RequestId, ClientError> {
        self.send_now(
            Command::ListSales {
                unclaimed_only: true,
                cursor: None,
            },
            Tracked::Sales,
        )
    }

    /// Lists the unclaimed sales and claims each; every claim credits its
    /// amount once ([`SessionEvent::ProceedsClaimed`]).
    pub fn claim_proceeds(&mut self) -> Result<RequestId, ClientError> {
        let origin = self.client.next_request_id();
        self.client.submit_with(
            origin,
            Command::ListSales {
                unclaimed_only: true,
                cursor: None,
            },
            None,
        )?;
        self.tracked.insert(origin, Tracked::ClaimAll { origin });
        self.claims.insert(
            origin,
            ClaimProgress {
                listing: true,
                ..ClaimProgress::default()
            },
        );
        Ok(origin)
    }

    fn send_now(&mut self, command: Command, tracked: Tracked) -> Result<RequestId, ClientError> {
        let id = self.client.submit(command)?;
        self.tracked.insert(id, tracked);
        Ok(id)
    }

    /// Records a request refused before anything was sent and returns its
    /// id; the failure is reported on the next poll (so the caller has the
    /// id first) as `PurchaseFailed` when `listing_id` is given, else
    /// `RequestFailed`.
    pub fn refuse(&mut self, listing_id: Option<i64>, error: ClientError) -> RequestId {
        let request_id = self.client.next_request_id();
        self.refusals.push_back(match listing_id {
            Some(listing_id) => SessionEvent::PurchaseFailed {
                request_id,
                listing_id,
                error,
            },
            None => SessionEvent::RequestFailed { request_id, error },
        });
        request_id
    }

    /// Buys the whole lot (all that remains of it as the last browse or
    /// `get_listing` showed; one unit of a listing never seen) at the unit
    /// price the player saw. See [`TradingSession::buy_units`].
    pub fn buy(
        &mut self,
        store: &mut PlayerStore,
        listing_id: i64,
        expected_price: i64,
    ) -> Result<RequestId, ClientError> {
        let units = self.lots.get(&listing_id).copied().unwrap_or(1).max(1);
        self.buy_units(store, listing_id, expected_price, units)
    }

    /// Buys `quantity` units of a listing at the unit price the player saw.
    /// Reserves `quantity × expected_price` credits at once; refuses
    /// locally (nothing sent, nothing held) with `purchase_in_progress`,
    /// `insufficient_credits` or `invalid_argument`.
    pub fn buy_units(
        &mut self,
        store: &mut PlayerStore,
        listing_id: i64,
        expected_price: i64,
        quantity: i64,
    ) -> Result<RequestId, ClientError> {
        if listing_id < 1 {
            return Err(invalid("listing id must be positive"));
        }
        marketplace_protocol::check_price("price", expected_price).map_err(invalid)?;
        marketplace_protocol::check_quantity(quantity).map_err(invalid)?;
        let total = marketplace_protocol::check_total(quantity, expected_price).map_err(invalid)?;
        if self.is_purchase_pending(store, listing_id) {
            return Err(ClientError::new(
                ErrorCode::PurchaseInProgress,
                "This item is already being bought",
            ));
        }
        // Client deposits: the price is held in the save and deposited with
        // the purchase. Server grants: it is held in the market account.
        let (hold, deposit) = self.credit_hold(store, total);
        self.journal(
            store,
            MarketChange::Purchase {
                listing_id,
                expected_price,
                quantity: Some(quantity),
                deposit,
            },
            Some(hold),
            None,
        )
    }

    /// The hold for spending `amount` credits, and the deposit that goes
    /// with it: held in the save and deposited with the trade (client
    /// deposits), or held in the market account (server grants).
    fn credit_hold(&self, store: &PlayerStore, amount: i64) -> (HoldKind, i64) {
        if self.grants_only(store) {
            (HoldKind::MarketCredits { amount }, 0)
        } else {
            (HoldKind::Credits { amount }, amount)
        }
    }

    /// True when the server's policy (as of the last login) takes no deposits.
    fn grants_only(&self, store: &PlayerStore) -> bool {
        store.state().market.mode == marketplace_protocol::EconomyMode::ServerGrants
    }

    /// Moves credits (`item_id` None) or items from the market account to
    /// the save. Reserved in the account mirror at once; the save is
    /// credited on the server's answer (journaled like every trade).
    pub fn withdraw(
        &mut self,
        store: &mut PlayerStore,
        item_id: Option<&str>,
        quantity: i64,
    ) -> Result<RequestId, ClientError> {
        let hold = match item_id {
            Some(item) => {
                marketplace_protocol::check_id("item_id", item).map_err(invalid)?;
                marketplace_protocol::check_quantity(quantity).map_err(invalid)?;
                HoldKind::MarketItems {
                    item_id: item.to_string(),
                    quantity,
                }
            }
            None => {
                marketplace_protocol::check_price("quantity", quantity).map_err(invalid)?;
                HoldKind::MarketCredits { amount: quantity }
            }
        };
        self.journal(
            store,
            MarketChange::Withdraw {
                item_id: item_id.map(str::to_string),
                quantity,
            },
            Some(hold),
            None,
        )
    }

    /// Asks the server for the market account (the mirror in the store is
    /// updated when the answer comes).
    pub fn refresh_account(&mut self) -> Result<RequestId, ClientError> {
        self.send_now(Command::Account, Tracked::Account)
    }

    /// Lists items for sale at `price` per unit, for the server's default
    /// duration. See [`TradingSession::create_listing_for`].
    pub fn create_listing(
        &mut self,
        store: &mut PlayerStore,
        item_id: &str,
        quantity: i64,
        price: i64,
    ) -> Result<RequestId, ClientError> {
        self.create_listing_for(store, item_id, quantity, price, None)
    }

    /// Lists items for sale at `price` per unit, resting for
    /// `duration_secs` (at most the server's bound; `None`: its default).
    /// Escrows them at once; they return to the inventory if the server
    /// refuses. Resting buy orders at or above the price may buy some or
    /// all at once (their proceeds are claimed like any sale).
    pub fn create_listing_for(
        &mut self,
        store: &mut PlayerStore,
        item_id: &str,
        quantity: i64,
        price: i64,
        duration_secs: Option<i64>,
    ) -> Result<RequestId, ClientError> {
        marketplace_protocol::check_id("item_id", item_id).map_err(invalid)?;
        marketplace_protocol::check_total(quantity, price).map_err(invalid)?;
        if duration_secs.is_some_and(|d| d < 1) {
            return Err(invalid("duration must be at least 1 second"));
        }
        marketplace_protocol::check_quantity(quantity).map_err(invalid)?;
        marketplace_protocol::check_price("price", price).map_err(invalid)?;
        let (hold, deposit) = if self.grants_only(store) {
            let hold = HoldKind::MarketItems {
                item_id: item_id.to_string(),
                quantity,
            };
            (hold, 0)
        } else {
            let hold = HoldKind::Items {
                item_id: item_id.to_string(),
                quantity,
            };
            (hold, quantity)
        };
        self.journal(
            store,
            MarketChange::CreateListing {
                item_id: item_id.to_string(),
                quantity,
                price,
                deposit,
                duration_secs,
            },
            Some(hold),
            None,
        )
    }

    pub fn reprice_listing(
        &mut self,
        store: &mut PlayerStore,
        listing_id: i64,
        price: i64,
    ) -> Result<RequestId, ClientError> {
        if listing_id < 1 {
            return Err(invalid("listing id must be positive"));
        }
        marketplace_protocol::check_price("price", price).map_err(invalid)?;
        self.journal(
            store,
            MarketChange::Reprice { listing_id, price },
            None,
            None,
        )
    }

    /// Cancels one of the player's listings; its items come back on success.
    pub fn cancel_listing(
        &mut self,
        store: &mut PlayerStore,
        listing_id: i64,
    ) -> Result<RequestId, ClientError> {
        if listing_id < 1 {
            return Err(invalid("listing id must be positive"));
        }
        self.journal(store, MarketChange::Cancel { listing_id }, None, None)
    }

    fn journal(
        &mut self,
        store: &mut PlayerStore,
        op: MarketChange,
        hold: Option<HoldKind>,
        origin: Option<RequestId>,
    ) -> Result<RequestId, ClientError> {
        if self.restoring {
            return Err(ClientError::new(
                ErrorCode::SaveRestoring,
                "The save was restored from its backup; trading resumes once the market has told it what it lost",
            ));
        }
        let key = store.state().new_key();
        // Logged in: the trade belongs to this market and player, on disk
        // with the entry itself.
        let op_id = store.begin_bound_trade(key, op, hold, unix_now(), self.client.owner())?;
        let id = self.client.next_request_id();
        self.track_op(id, op_id, origin.unwrap_or(id), store.generation());
        Ok(id)
    }

    /// True while a purchase of this listing is journaled and unsettled.
    /// Listing ids are per market: a purchase waiting for another market
    /// (parked) does not make this market's listing of the same id pending.
    pub fn is_purchase_pending(&self, store: &PlayerStore, listing_id: i64) -> bool {
        if !store.state().is_buying(listing_id) {
            return false; // the common case, O(1)
        }
        let here = self.client.owner();
        store.state().journal.values().any(|p| {
            matches!(p.op, MarketChange::Purchase { listing_id: l, .. } if l == listing_id)
                && (p.owner.is_none() || here.is_none() || p.owner == here)
        })
    }

    /// Every trade waiting for its definitive answer, oldest first.
    pub fn pending_trades(&self, store: &PlayerStore) -> Vec<PendingTrade> {
        let now = unix_now();
        store
            .state()
            .journal
            .iter()
            .map(|(op_id, pending)| {
                let progress = self.progress.get(op_id);
                self.describe(*op_id, pending, progress, now)
            })
            .collect()
    }

    fn describe(
        &self,
        op_id: OpId,
        pending: &crate::state::PendingOp,
        progress: Option<&Progress>,
        now: i64,
    ) -> PendingTrade {
        let mut order_id = None;
        let (kind, listing_id, sale_id, item_id, quantity, amount) = match &pending.op {
            MarketChange::Purchase {
                listing_id,
                expected_price,
                quantity,
                ..
            } => (
                "purchase",
                Some(*listing_id),
                None,
                None,
                *quantity,
                *expected_price,
            ),
            MarketChange::PlaceOrder {
                item_id,
                quantity,
                max_price,
                ..
            } => (
                "place_order",
                None,
                None,
                Some(item_id.clone()),
                Some(*quantity),
                *max_price,
            ),
            MarketChange::CancelOrder { order_id: o } => {
                order_id = Some(*o);
                ("cancel_order", None, None, None, None, 0)
            }
            MarketChange::Collect { delivery_ids } => (
                "collect",
                None,
                None,
                None,
                Some(delivery_ids.len() as i64),
                0,
            ),
            MarketChange::CreateListing {
                item_id,
                quantity,
                price,
                ..
            } => (
                "create_listing",
                None,
                None,
                Some(item_id.clone()),
                Some(*quantity),
                *price,
            ),
            MarketChange::Reprice { listing_id, price } => {
                ("reprice", Some(*listing_id), None, None, None, *price)
            }
            MarketChange::Cancel { listing_id } => {
                ("cancel", Some(*listing_id), None, None, None, 0)
            }
            MarketChange::Claim { sale_id } => ("claim", None, Some(*sale_id), None, None, 0),
            MarketChange::Deposit { item_id, quantity } => {
                ("deposit", None, None, item_id.clone(), Some(*quantity), 0)
            }
            MarketChange::Withdraw { item_id, quantity } => {
                ("withdraw", None, None, item_id.clone(), Some(*quantity), 0)
            }
        };
        let age = if pending.created_at > 0 {
            Duration::from_secs(now.saturating_sub(pending.created_at).max(0) as u64)
        } else {
            progress.map_or(Duration::ZERO, |p| p.seen_since.elapsed())
        };
        PendingTrade {
            request_id: progress.map_or(RequestId(0), |p| p.request_id),
            key: pending.key.clone(),
            kind,
            listing_id,
            sale_id,
            order_id,
            item_id,
            quantity,
            amount,
            created_at: pending.created_at,
            age,
            attempts: progress.map_or(0, |p| p.attempts),
            last_error: progress.and_then(|p| p.last_error),
            waiting_for_save: self.unsent.iter().any(|u| u.op == op_id),
            waiting_for_owner: self.parked.get(&op_id).map(|e| e.message.clone()),
        }
    }

    /// Requests not finished: sent and in flight, or waiting for their
    /// journal entry to reach the disk.
    pub fn pending_count(&self) -> usize {
        self.client.pending_count() + self.unsent.len()
    }

    /// True when nothing is in flight, nothing waits to be sent and every
    /// event has been reported.
    pub fn is_idle(&self) -> bool {
        self.pending_count() == 0
            && self.deferred.is_empty()
            && self.ready.is_empty()
            && self.refusals.is_empty()
            && self.backlog.is_empty()
    }

    /// Does one frame's work: sends journaled operations that are durable,
    /// settles answered ones, and moves up to `max_client_events` answers
    /// into events. Appends the events that are now safe to report.
    pub fn poll(
        &mut self,
        store: &mut PlayerStore,
        max_client_events: usize,
        out: &mut Vec<SessionEvent>,
    ) {
        self.poll_within(store, max_client_events, None, out)
    }

    /// [`TradingSession::poll`] that also stops handling answers once
    /// `budget` has passed (the rest wait for the next frame): a frame's work
    /// is bounded by time as well as by count.
    pub fn poll_within(
        &mut self,
        store: &mut PlayerStore,
        max_client_events: usize,
        budget: Option<Duration>,
        out: &mut Vec<SessionEvent>,
    ) {
        let started = Instant::now();
        // Only what was refused before this poll began: handlers that refuse
        // again while these are reported are heard next frame.
        out.extend(self.refusals.drain(..));
        store.poll();
        if !self.parked.is_empty() && self.client.owner() != self.last_owner {
            // Logged in anew (by itself, too): parked trades look again.
            self.owner_changed(store);
        }
        self.maybe_sync(store);
        self.bind_unbound(store);
        self.send_durable(store);
        if self.backlog.len() < max_client_events {
            let mut fresh = Vec::new();
            self.client
                .poll(&mut fresh, max_client_events - self.backlog.len());
            self.backlog.extend(fresh);
        }
        let mut handled = 0;
        while handled < max_client_events {
            if budget.is_some_and(|b| handled > 0 && started.elapsed() >= b) {
                break;
            }
            let Some(event) = self.backlog.pop_front() else {
                break;
            };
            self.handle(store, event);
            handled += 1;
        }
        if budget.is_none_or(|b| started.elapsed() < b) {
            self.poll_stream(store, max_client_events);
        }
        // Settlements are handed to the writer now; reported once durable.
        store.poll();
        out.extend(self.ready.drain(..));
        let durable = store.durable_generation();
        while self.deferred.front().is_some_and(|(g, _)| *g <= durable) {
            if let Some((_, e)) = self.deferred.pop_front() {
                self.reported(&e);
                out.push(e);
            }
        }
        self.ack_reported();
        let busy = self.pending_count() > 0;
        if busy != self.busy {
            self.busy = busy;
            out.push(SessionEvent::BusyChanged { busy });
        }
    }

    /// Binds trades that were made before any login to the market and
    /// player the client is logged in as now (a login of its own if needed);
    /// they go once that binding is on disk.
    fn bind_unbound(&mut self, store: &mut PlayerStore) {
        if self.unbound.is_empty() {
            return;
        }
        if let Some(owner) = self.client.owner() {
            for mut u in std::mem::take(&mut self.unbound) {
                store.bind_op(u.op, &owner);
                u.generation = store.generation();
                self.unsent.push_back(u);
            }
            return;
        }
        self.request_quiet_login(store);
    }

    /// Once per login (as a market and player), compares the save with the
    /// server's record of the player's operations and applies what a save
    /// restored from an older backup lost (see [`PlayerState::reconcile`]).
    /// A save restored from its backup logs in by itself for it.
    ///
    /// [`PlayerState::reconcile`]: crate::state::PlayerState::reconcile
    fn maybe_sync(&mut self, store: &mut PlayerStore) {
        if self.sync_in_flight || Instant::now() < self.next_sync {
            return;
        }
        let Some(owner) = self.client.owner() else {
            if store.recovered_from_backup() {
                self.request_quiet_login(store);
            }
            return;
        };
        if self.synced.as_ref() == Some(&owner) {
            // Reconciled for this login; again when the keys noted since
            // have piled up (a long session), so the list stays short.
            let noted = store
                .state()
                .sync
                .get(&owner.server_id)
                .map_or(0, |m| m.applied.len());
            if noted < SYNC_AGAIN_AT
                || noted <= self.noted_after_sync
                || Instant::now() < self.next_resync
            {
                return;
            }
            self.next_resync = Instant::now() + Duration::from_secs(30);
        }
        self.sync_page(store, owner);
    }

    fn sync_page(&mut self, store: &PlayerStore, owner: crate::state::Owner) {
        let mark = store
            .state()
            .sync
            .get(&owner.server_id)
            .filter(|m| m.player_id == owner.player_id && m.seq != crate::state::UNSET);
        let command = match mark {
            Some(m) => Command::Operations {
                after: m.seq,
                limit: SYNC_PAGE,
            },
            // First contact: only where the record stands now.
            None => Command::Operations { after: 0, limit: 0 },
        };
        // Bound like a trade: only the owner's market lists its operations.
        let id = self.client.next_request_id();
        match self
            .client
            .submit_bound(id, command, None, Some(owner.clone()))
        {
            Ok(()) => {
                self.tracked.insert(id, Tracked::Sync(owner));
                self.sync_in_flight = true;
            }
            Err(_) => self.next_sync = Instant::now() + Duration::from_secs(5),
        }
    }

    fn request_quiet_login(&mut self, store: &PlayerStore) {
        if self.quiet_login.is_some() || Instant::now() < self.next_quiet_login {
            return;
        }
        let device = store.state().device_id.clone();
        let token = self
            .client
            .credentials()
            .is_some_and(|c| c.identity_token.is_some());
        if store.state().identity_login && !token {
            // Restarted after a login by token: the game logs in again.
            return;
        }
        // As whoever the game last logged in as: its identity token if it
        // logged in by one (a device login here would make, or be, another
        // player), else the save's device.
        let credentials = self
            .client
            .credentials()
            .filter(|c| c.device_id == device)
            .unwrap_or_else(|| {
                crate::client::Credentials::device(&device, &store.state().player_name)
            });
        let command = Command::Login(credentials);
        if let Ok(id) = self.client.submit(command) {
            self.tracked.insert(id, Tracked::QuietLogin(device));
            self.quiet_login = Some(id);
        }
    }

    fn send_durable(&mut self, store: &PlayerStore) {
        let durable = store.durable_generation();
        while self.unsent.front().is_some_and(|u| u.generation <= durable) {
            let Some(u) = self.unsent.pop_front() else {
                break;
            };
            let Some(pending) = store.state().journal.get(&u.op) else {
                self.tracked.remove(&u.id);
                continue;
            };
            let Some(owner) = pending.owner.clone() else {
                // Never sent, and nobody knows yet where it belongs.
                self.unbound.push(u);
                continue;
            };
            let command = Command::Change(pending.op.clone());
            if let Err(e) =
                self.client
                    .submit_bound(u.id, command, Some(pending.key.clone()), Some(owner))
            {
                // Stopping: the operation stays journaled for the next start.
                tracing::debug!(error = %e, "journaled operation not sent");
                self.tracked.remove(&u.id);
            }
        }
    }

    /// An event that is true once the store's current state is on disk.
    fn emit_durable(&mut self, store: &PlayerStore, event: SessionEvent) {
        self.deferred.push_back((store.generation(), event));
    }

    /// Leaving for good (the game quits, or the save slot closes): stops
    /// the client (in-flight exchanges get up to `grace`), settles what was
    /// answered, and flushes the store so the journal of what is still
    /// pending is on disk for the next start. Blocks for at most about
    /// `grace` plus the save.
    ///
    /// An event is only *told* once the save holding it is on disk (I3): if
    /// the final save fails, the settlements it would have recorded are not
    /// reported as done — they come back as [`Shutdown::untold`], and the
    /// journal still on disk settles them (with the same keys) on the next
    /// start, which tells the game then.
    pub fn shutdown(mut self, store: &mut PlayerStore, grace: Duration) -> Shutdown {
        self.client.stop(grace);
        let mut events = Vec::new();
        self.client.poll(&mut events, usize::MAX);
        self.backlog.extend(events);
        while let Some(event) = self.backlog.pop_front() {
            self.handle(store, event);
        }
        let saved = match store.flush_wanted(Duration::from_secs(5)) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "final save failed");
                false
            }
        };
        let mut told: Vec<SessionEvent> = self.refusals.drain(..).collect();
        told.extend(self.ready.drain(..));
        let durable = store.durable_generation();
        let mut untold = Vec::new();
        for (generation, event) in self.deferred.drain(..) {
            if generation <= durable {
                told.push(event);
            } else {
                untold.push(event);
            }
        }
        Shutdown {
            told,
            untold,
            saved,
        }
    }
}

/// What [`TradingSession::shutdown`] leaves to report.
#[derive(Debug, Default)]
pub struct Shutdown {
    /// Events that are true on disk: report them as usual.
    pub told: Vec<SessionEvent>,
    /// Settlements that happened in memory but whose save failed: not true
    /// on disk, so never reported as done. The journal on disk still holds
    /// these trades; the next start settles them with their original keys.
    /// Whoever awaits one should hear "not known yet"
    /// ([`SessionEvent::not_known_yet`]).
    pub untold: Vec<SessionEvent>,
    /// The final save succeeded (everything in memory is on disk).
    pub saved: bool,
}

impl SessionEvent {
    /// The request this event answers, if any.
    pub fn request_id(&self) -> Option<RequestId> {
        use SessionEvent::*;
        match self {
            LoggedIn { request_id, .. }
            | ListingsUpdated { request_id, .. }
            | ListingFetched { request_id, .. }
            | ListingCreated { request_id, .. }
            | ListingRepriced { request_id, .. }
            | ListingCancelled { request_id, .. }
            | PurchaseSucceeded { request_id, .. }
            | PurchaseFailed { request_id, .. }
            | SalesListed { request_id, .. }
            | ProceedsClaimed { request_id, .. }
            | RequestFailed { request_id, .. }
            | RequestRetrying { request_id, .. }
            | TradeStalled { request_id, .. }
            | Withdrawn { request_id, .. }
            | AccountUpdated { request_id, .. }
            | ClaimsDone { request_id, .. }
            | OrderPlaced { request_id, .. }
            | OrderCancelled { request_id, .. }
            | OrdersListed { request_id, .. }
            | DeliveriesCollected { request_id, .. }
            | FeesQuoted { request_id, .. }
            | MarketSummary { request_id, .. }
            | ItemsFound { request_id, .. }
            | IdentitiesListed { request_id, .. }
            | DepthListed { request_id, .. }
            | PriceHistory { request_id, .. } => Some(*request_id),
            BusyChanged { .. }
            | TradeRecovered { .. }
            | MarketChanged { .. }
            | MarketLive { .. }
            | MarketReload
            | Notification { .. }
            | DeliveriesWaiting { .. } => None,
        }
    }

    /// What an awaiting caller hears instead of an event whose effect could
    /// not be saved: `shutting_down`, which is not definitive — the trade is
    /// still journaled on disk and settles on the next start.
    pub fn not_known_yet(&self) -> Option<SessionEvent> {
        let request_id = self.request_id()?;
        Some(SessionEvent::RequestFailed {
            request_id,
            error: ClientError::new(
                ErrorCode::ShuttingDown,
                "The answer arrived but could not be saved; the trade settles on the next start",
            ),
        })
    }
}
