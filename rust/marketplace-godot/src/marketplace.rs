//! `TradingMarketplace`: the marketplace, without ever blocking a frame.

use std::collections::VecDeque;
use std::time::Duration;

use godot::classes::{INode, Node};
use godot::prelude::*;
use marketplace_client::client::ClientConfig;
use marketplace_client::{
    ClientError, ErrorCode, PlayerStore, RequestId, SessionEvent, TradingSession,
};

use crate::convert;
use crate::player_data::LocalPlayerData;

/// The player-to-player marketplace.
///
/// Every method returns a request id at once; the answer arrives later as a
/// signal carrying that id. Requests run on a background runtime, so no call
/// ever waits on the network. A purchase reserves the credits immediately
/// (see `LocalPlayerData.get_held_credits()`); the hold is spent when the
/// server confirms (`purchase_succeeded`) and given back only when the server
/// definitively refuses (`purchase_failed` with `"already_sold"`,
/// `"price_changed"`, …). Timeouts and lost connections are retried with the
/// same idempotency key (`request_retrying`), also after a restart.
///
/// ```gdscript
/// @onready var market: TradingMarketplace = $TradingMarketplace
///
/// func _ready():
///     market.logged_in.connect(func(player_id): market.refresh_listings({}))
///     market.listings_updated.connect(show_listings)
///     market.purchase_succeeded.connect(func(request_id, purchase): toast("Bought %s" % purchase["item_id"]))
///     market.purchase_failed.connect(func(request_id, listing_id, code, message):
///         if code == "already_sold":
///             toast("Item sold to another player — refresh and try again")
///         else:
///             toast(message))
///     market.busy_changed.connect(func(busy): spinner.visible = busy)
///     market.login("", "")  # the identity saved in LocalPlayerData
///
/// func _on_buy_pressed(listing: Dictionary):
///     market.buy_listing(listing["id"], listing["price"])
/// ```
#[derive(GodotClass)]
#[class(base=Node)]
pub struct TradingMarketplace {
    /// Base URL of the marketplace server.
    #[export]
    server_url: GString,
    /// The `LocalPlayerData` node holding this player's credits and items.
    #[export]
    player_data: NodePath,
    /// Requests on the wire at once.
    #[export]
    max_concurrent_requests: i64,
    /// Timeout of one HTTP exchange, in seconds (a timed-out trade is retried,
    /// never rolled back).
    #[export]
    request_timeout_sec: f64,
    /// Client-side rate limit; 0 = none.
    #[export]
    max_requests_per_second: f64,
    /// Most answers turned into signals per frame.
    #[export]
    max_events_per_frame: i64,
    /// How long in-flight requests may finish when the node leaves the tree.
    #[export]
    shutdown_grace_sec: f64,
    session: Option<TradingSession>,
    /// The settings `session` was started with.
    session_config: Option<ClientConfig>,
    data: Option<Gd<LocalPlayerData>>,
    /// Requests refused locally, reported on the next frame (so the caller
    /// has its request id before the signal arrives).
    local_failures: VecDeque<(i64, Option<i64>, ClientError)>,
    next_local_id: i64,
    next_cursor: Option<String>,
    events: Vec<SessionEvent>,
    base: Base<Node>,
}

/// Ids of requests refused before a session existed; far above the
/// session's own.
const LOCAL_ID_BASE: i64 = 1 << 40;

#[godot_api]
impl INode for TradingMarketplace {
    fn init(base: Base<Node>) -> Self {
        let defaults = ClientConfig::default();
        TradingMarketplace {
            server_url: defaults.server_url.as_str().into(),
            player_data: NodePath::default(),
            max_concurrent_requests: defaults.max_concurrent_requests as i64,
            request_timeout_sec: defaults.request_timeout.as_secs_f64(),
            max_requests_per_second: defaults.max_requests_per_second,
            max_events_per_frame: 64,
            shutdown_grace_sec: 1.0,
            session: None,
            session_config: None,
            data: None,
            local_failures: VecDeque::new(),
            next_local_id: LOCAL_ID_BASE,
            next_cursor: None,
            events: Vec::new(),
            base,
        }
    }

    fn ready(&mut self) {
        // Start at once when configured, so that trades left pending by a
        // crash are re-sent (they wait for `login`).
        if !self.player_data.is_empty() {
            if let Err(e) = self.with_session(|_, _| Ok(())) {
                godot_error!("TradingMarketplace: {e}");
            }
        }
    }

    fn process(&mut self, _delta: f64) {
        let mut events = std::mem::take(&mut self.events);
        if self.session.is_some() {
            let max = usize::try_from(self.max_events_per_frame)
                .unwrap_or(64)
                .max(1);
            let _ = self.with_session(|session, store| {
                session.poll(store, max, &mut events);
                Ok(())
            });
        }
        while let Some((id, listing_id, error)) = self.local_failures.pop_front() {
            self.emit_failure(id, listing_id, &error);
        }
        for event in events.drain(..) {
            self.emit(event);
        }
        self.events = events;
    }

    fn exit_tree(&mut self) {
        let Some(session) = self.session.take() else {
            return;
        };
        let grace = Duration::from_secs_f64(self.shutdown_grace_sec.clamp(0.0, 30.0));
        // If the LocalPlayerData left first, it already saved the journal;
        // dropping the session stops the client within its grace period.
        let Some(mut data) = self.data.take().filter(|d| d.is_instance_valid()) else {
            return;
        };
        let mut guard = data.bind_mut();
        if let Some(store) = guard.store_mut() {
            let unreported = session.shutdown(store, grace);
            if !unreported.is_empty() {
                godot_print!(
                    "TradingMarketplace: {} answers arrived while leaving; their effects are saved",
                    unreported.len()
                );
            }
        }
    }
}

#[godot_api]
impl TradingMarketplace {
    /// Logged in; the other requests can now reach the server.
    #[signal]
    fn logged_in(player_id: i64);
    /// A page of listings arrived (see `get_next_cursor()` for the next one).
    #[signal]
    fn listings_updated(listings: VarArray);
    /// The listing is on the market; its items left the inventory for good.
    #[signal]
    fn listing_created(request_id: i64, listing: VarDictionary);
    /// The listing's price changed.
    #[signal]
    fn listing_repriced(request_id: i64, listing: VarDictionary);
    /// The listing was withdrawn; its items are back in the inventory.
    #[signal]
    fn listing_cancelled(request_id: i64, listing_id: i64);
    /// The purchase is done: credits spent, item in the inventory.
    #[signal]
    fn purchase_succeeded(request_id: i64, purchase: VarDictionary);
    /// The purchase was refused and the held credits are back. `code`:
    /// `"already_sold"` (another player won), `"price_changed"`,
    /// `"listing_cancelled"`, `"own_listing"`, `"not_found"`,
    /// `"insufficient_credits"`, `"purchase_in_progress"`, …
    #[signal]
    fn purchase_failed(request_id: i64, listing_id: i64, code: GString, message: GString);
    /// Proceeds of one sale were credited (`amount` 0: nothing to claim).
    #[signal]
    fn proceeds_claimed(request_id: i64, amount: i64);
    /// Any other request failed for good; `code` is stable, `message` is for the player.
    #[signal]
    fn request_failed(request_id: i64, code: GString, message: GString);
    /// A request failed in a way that may have reached the server (`reason`:
    /// `"timeout"`, `"offline"`, `"internal"`, …); it is retried with the same key.
    #[signal]
    fn request_retrying(request_id: i64, attempt: i64, reason: GString);
    /// Requests went from none to some in flight, or back.
    #[signal]
    fn busy_changed(busy: bool);

    /// Logs in. Empty arguments use the identity saved in `LocalPlayerData`
    /// (a new player gets a random device id); given ones are saved there.
    #[func]
    fn login(&mut self, device_id: GString, player_name: GString) -> i64 {
        let (device_id, player_name) = (device_id.to_string(), player_name.to_string());
        self.request(None, |session, store| {
            if !device_id.is_empty() || !player_name.is_empty() {
                let device = if device_id.is_empty() {
                    store.state().device_id.clone()
                } else {
                    device_id
                };
                let name = if player_name.is_empty() {
                    store.state().player_name.clone()
                } else {
                    player_name
                };
                store.set_identity(&device, &name)?;
            }
            session.login(store)
        })
    }

    /// Browses listings. `filter` keys (all optional; pass `{}` for the
    /// first page of active listings): `status` (`"active"`, `"sold"`,
    /// `"cancelled"`, `"all"`), `item_id`, `seller_id`, `cursor`, `limit`.
    /// (Godot cannot give a `Dictionary` parameter a default value.)
    #[func]
    fn refresh_listings(&mut self, filter: VarDictionary) -> i64 {
        let query = convert::browse_query(&filter);
        self.request(None, |session, _| session.browse(query?))
    }

    /// Lists `quantity` items for `price` credits; they leave the inventory at once.
    #[func]
    fn create_listing(&mut self, item_id: GString, quantity: i64, price: i64) -> i64 {
        let item_id = item_id.to_string();
        self.request(None, |session, store| {
            session.create_listing(store, &item_id, quantity, price)
        })
    }

    #[func]
    fn reprice_listing(&mut self, listing_id: i64, price: i64) -> i64 {
        self.request(None, |session, store| {
            session.reprice_listing(store, listing_id, price)
        })
    }

    #[func]
    fn cancel_listing(&mut self, listing_id: i64) -> i64 {
        self.request(None, |session, store| {
            session.cancel_listing(store, listing_id)
        })
    }

    /// Buys a listing at the price the player saw; reserves the credits at once.
    #[func]
    fn buy_listing(&mut self, listing_id: i64, expected_price: i64) -> i64 {
        self.request(Some(listing_id), |session, store| {
            session.buy(store, listing_id, expected_price)
        })
    }

    /// Collects the proceeds of every unclaimed sale (`proceeds_claimed` per sale).
    #[func]
    fn claim_proceeds(&mut self) -> i64 {
        self.request(None, |session, _| session.claim_proceeds())
    }

    /// True while a purchase of this listing waits for its definitive answer.
    #[func]
    fn is_purchase_pending(&mut self, listing_id: i64) -> bool {
        self.with_session(|session, store| Ok(session.is_purchase_pending(store, listing_id)))
            .unwrap_or(false)
    }

    /// Requests not finished yet.
    #[func]
    fn pending_count(&self) -> i64 {
        self.session
            .as_ref()
            .map_or(0, |s| s.pending_count() as i64)
    }

    /// The cursor of the next listings page, or "" after the last page.
    #[func]
    fn get_next_cursor(&self) -> GString {
        self.next_cursor.as_deref().unwrap_or("").into()
    }

    #[func]
    fn is_logged_in(&self) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| s.client().is_logged_in())
    }
}

impl TradingMarketplace {
    fn config(&self) -> ClientConfig {
        ClientConfig {
            server_url: self.server_url.to_string(),
            max_concurrent_requests: usize::try_from(self.max_concurrent_requests)
                .unwrap_or(1)
                .max(1),
            request_timeout: Duration::from_secs_f64(self.request_timeout_sec.clamp(0.1, 600.0)),
            max_requests_per_second: self.max_requests_per_second.max(0.0),
            ..ClientConfig::default()
        }
    }

    /// Runs `f` with the session and the player store, starting the session
    /// on first use.
    fn with_session<R>(
        &mut self,
        f: impl FnOnce(&mut TradingSession, &mut PlayerStore) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        if self.data.as_ref().is_some_and(|d| !d.is_instance_valid()) {
            // The LocalPlayerData node was freed; look it up again.
            self.data = None;
        }
        if self.data.is_none() {
            let node = self
                .base()
                .try_get_node_as::<LocalPlayerData>(&self.player_data);
            self.data = Some(node.ok_or_else(|| {
                ClientError::new(
                    ErrorCode::InvalidArgument,
                    "TradingMarketplace.player_data must point to a LocalPlayerData node",
                )
            })?);
        }
        let config = self.config();
        let Some(mut data) = self.data.clone() else {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "player_data is not set",
            ));
        };
        let mut guard = data.bind_mut();
        let store = guard.store_mut().ok_or_else(|| {
            ClientError::new(
                ErrorCode::InvalidArgument,
                "LocalPlayerData could not load its save file",
            )
        })?;
        if self.session.is_none() || self.session_config.as_ref() != Some(&config) {
            // First use, or a property changed (say `server_url`, set by a
            // parent's `_ready` after ours): start with these settings. Safe at
            // any moment: the journal re-sends whatever was in flight, with
            // the same keys. A logged-in session logs in again by itself.
            let was_logged_in = self
                .session
                .take()
                .is_some_and(|s| s.client().is_logged_in());
            let mut session = TradingSession::new(config.clone(), store)?;
            if was_logged_in {
                session.login(store)?;
            }
            self.session = Some(session);
            self.session_config = Some(config);
        }
        match self.session.as_mut() {
            Some(session) => f(session, store),
            None => Err(ClientError::new(ErrorCode::Internal, "no session")),
        }
    }

    /// Submits a request; a local refusal still gets a request id and is
    /// reported as a signal on the next frame.
    fn request(
        &mut self,
        listing_id: Option<i64>,
        f: impl FnOnce(&mut TradingSession, &mut PlayerStore) -> Result<RequestId, ClientError>,
    ) -> i64 {
        match self.with_session(f) {
            Ok(RequestId(id)) => id as i64,
            Err(error) => {
                let id = match self.session.as_ref() {
                    Some(s) => s.client().next_request_id().0 as i64,
                    None => {
                        self.next_local_id += 1;
                        self.next_local_id
                    }
                };
                self.local_failures.push_back((id, listing_id, error));
                id
            }
        }
    }

    fn emit_failure(&mut self, id: i64, listing_id: Option<i64>, error: &ClientError) {
        let (code, message) = convert::error(error);
        match listing_id {
            Some(listing_id) => self
                .signals()
                .purchase_failed()
                .emit(id, listing_id, &code, &message),
            None => self.signals().request_failed().emit(id, &code, &message),
        }
    }

    fn emit(&mut self, event: SessionEvent) {
        let id = |r: RequestId| r.0 as i64;
        match event {
            SessionEvent::LoggedIn { player_id, .. } => self.signals().logged_in().emit(player_id),
            SessionEvent::ListingsUpdated { page, .. } => {
                self.next_cursor = page.next_cursor.clone();
                self.signals()
                    .listings_updated()
                    .emit(&convert::listings(&page.listings));
            }
            SessionEvent::ListingFetched { .. } | SessionEvent::SalesListed { .. } => {}
            SessionEvent::ListingCreated {
                request_id,
                listing,
            } => self
                .signals()
                .listing_created()
                .emit(id(request_id), &convert::listing(&listing)),
            SessionEvent::ListingRepriced {
                request_id,
                listing,
            } => self
                .signals()
                .listing_repriced()
                .emit(id(request_id), &convert::listing(&listing)),
            SessionEvent::ListingCancelled {
                request_id,
                listing,
            } => self
                .signals()
                .listing_cancelled()
                .emit(id(request_id), listing.id),
            SessionEvent::PurchaseSucceeded {
                request_id,
                purchase,
            } => self
                .signals()
                .purchase_succeeded()
                .emit(id(request_id), &convert::purchase(&purchase)),
            SessionEvent::PurchaseFailed {
                request_id,
                listing_id,
                error,
            } => self.emit_failure(id(request_id), Some(listing_id), &error),
            SessionEvent::ProceedsClaimed {
                request_id, amount, ..
            } => self
                .signals()
                .proceeds_claimed()
                .emit(id(request_id), amount),
            SessionEvent::RequestFailed { request_id, error } => {
                self.emit_failure(id(request_id), None, &error)
            }
            SessionEvent::RequestRetrying {
                request_id,
                attempt,
                error,
            } => self.signals().request_retrying().emit(
                id(request_id),
                i64::from(attempt),
                &GString::from(error.code.as_str()),
            ),
            SessionEvent::BusyChanged { busy } => self.signals().busy_changed().emit(busy),
        }
    }
}
