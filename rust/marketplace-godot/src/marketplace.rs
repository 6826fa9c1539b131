//! `TradingMarketplace`: the marketplace, without ever blocking a frame.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use godot::classes::node::ProcessMode;
use godot::classes::{Engine, INode, Node, ProjectSettings};
use godot::prelude::*;
use marketplace_client::client::{duration_from_secs, ClientConfig};
use marketplace_client::{
    ClientError, ErrorCode, PlayerStore, RequestId, SessionEvent, TradingSession,
};

use crate::convert;
use crate::data::{
    self, MarketAccount, MarketDelivery, MarketDepth, MarketFeeQuote, MarketFill, MarketIdentities,
    MarketItemMatch, MarketItemSummary, MarketListing, MarketNotification, MarketOrder,
    MarketPendingTrade, MarketPriceHistory, MarketPurchase, MarketResult,
};
use crate::player_data::{tick_slots, FrameGate, LocalPlayerData};
use crate::request::{self, MarketRequest};
use crate::save_slot::{self, SlotRef};

/// The player-to-player marketplace.
///
/// Every request method returns a `MarketRequest` at once; the answer
/// arrives later, both as the request's `completed` signal (so a script can
/// `await` it) and as the node's signal carrying `request.id`. Requests run
/// on a background runtime, so no call ever waits on the network. A purchase reserves the credits immediately
/// (see `LocalPlayerData.get_held_credits()`); the hold is spent when the
/// server confirms (`purchase_succeeded`) and given back only when the server
/// definitively refuses (`purchase_failed` with `"already_sold"`,
/// `"price_changed"`, …). Timeouts, lost connections and a proxy's error
/// pages are retried with the same idempotency key (`request_retrying`),
/// also after a restart; a trade that keeps failing is reported once with
/// `trade_stalled` and stays in `get_pending_trades()`.
///
/// Settings may change at any time and apply at once; trades in flight
/// carry on. The node keeps working while the tree is paused. Trades belong
/// to the save of `player_data`, not to this node: freeing it (a scene
/// change) never waits, and trades go on settling while any marketplace
/// node exists — the recommended set-up is an autoload that owns both nodes.
///
/// Awaiting requests:
///
/// ```gdscript
/// @onready var market: TradingMarketplace = $TradingMarketplace
///
/// func _ready():
///     var login: Dictionary = await market.login().completed   # the saved identity
///     if not login.ok:
///         toast(login.message)
///         return
///     var page: Dictionary = await market.refresh_listings({}).completed
///     show_listings(page.listings)
///
/// func _on_buy_pressed(listing: Dictionary):
///     buy_button.disabled = true
///     var r: Dictionary = await market.buy_listing(listing.id, listing.price).completed
///     buy_button.disabled = false
///     if r.ok:
///         toast("Bought %s" % r.purchase.item_id)
///     elif r.code == "already_sold":
///         toast("Item sold to another player — refresh and try again")
///     elif r.code == "price_changed":
///         offer_new_price(listing, r.current_price)
///     else:
///         toast(r.message)
/// ```
///
/// Or signals, for UIs that prefer them:
///
/// ```gdscript
/// func _ready():
///     market.logged_in.connect(func(request_id, player_id): market.refresh_listings({}))
///     market.listings_updated.connect(func(request_id, listings, next_cursor): show_listings(listings))
///     market.purchase_failed.connect(func(request_id, listing_id, code, message, current_price): toast(message))
///     market.busy_changed.connect(func(busy): spinner.visible = busy)
///     market.login()
/// ```
#[derive(GodotClass)]
#[class(tool, base=Node)]
pub struct TradingMarketplace {
    /// Base URL of the marketplace server (`http://` or `https://`).
    /// Changing it is refused while trades wait for their answer. Its
    /// default is the project setting `trading_marketplace/server_url`,
    /// with feature-tag overrides (`server_url.debug`, `server_url.release`,
    /// …), so debug and release builds can point at different servers.
    /// (Every number below and `live` take their default from a project
    /// setting of the same name under `trading_marketplace/` too.)
    #[var(set = set_server_url)]
    #[export]
    server_url: GString,
    /// The `LocalPlayerData` node holding this player's credits and items.
    #[var(set = set_player_data)]
    #[export]
    player_data: Option<Gd<LocalPlayerData>>,
    /// Requests on the wire at once (1–1024).
    #[var(set = set_max_concurrent_requests)]
    #[export(range = (1.0, 1024.0, 1.0))]
    max_concurrent_requests: i64,
    /// Timeout of one HTTP exchange, in seconds (a timed-out trade is retried,
    /// never rolled back).
    #[var(set = set_request_timeout_sec)]
    #[export(range = (0.1, 600.0, 0.1))]
    request_timeout_sec: f64,
    /// Client-side rate limit in requests per second; 0 = none.
    #[var(set = set_max_requests_per_second)]
    #[export(range = (0.0, 1000.0, 0.5, or_greater))]
    max_requests_per_second: f64,
    /// Most answers turned into signals per frame.
    #[var(set = set_max_events_per_frame)]
    #[export(range = (1.0, 10000.0, 1.0))]
    max_events_per_frame: i64,
    /// Most time per frame spent turning answers into signals, in
    /// milliseconds; the rest wait for the next frame.
    #[var(set = set_max_frame_time_msec)]
    #[export(range = (0.1, 100.0, 0.1))]
    max_frame_time_msec: f64,
    /// How long requests in flight may finish when the game quits, in seconds.
    #[var(set = set_shutdown_grace_sec)]
    #[export(range = (0.0, 30.0, 0.1))]
    shutdown_grace_sec: f64,
    /// A trade without a definitive answer for this long is reported with
    /// `trade_stalled`, in seconds.
    #[var(set = set_stall_after_sec)]
    #[export(range = (1.0, 86400.0, 1.0, or_greater))]
    stall_after_sec: f64,
    /// Live market: once logged in, changes are pushed (the
    /// `market_*` signals, `delivery_waiting`, `notification_received`). Off: no
    /// connection is kept; nothing else changes.
    #[var(set = set_live)]
    #[export]
    live: bool,
    /// Items whose public changes are pushed; empty: every item. (Own
    /// listings, orders and notifications come whatever this says.)
    #[var(set = set_watched_items)]
    #[export]
    watched_items: PackedStringArray,
    /// The save this node trades on, and its listener id there.
    slot: Option<(SlotRef, u64)>,
    /// The `LocalPlayerData` node `slot` came from.
    data_id: Option<InstanceId>,
    /// Settings changed since they were last applied.
    config_dirty: bool,
    /// Requests refused before any save was reachable, for this frame's `_frame`.
    local_failures: VecDeque<(i64, Option<i64>, ClientError)>,
    next_cursor: Option<String>,
    /// Running inside the editor (asked once: the answer never changes).
    in_editor: bool,
    /// When `_frame` is queued and runs.
    frame: FrameGate,
    base: Base<Node>,
}

#[godot_api]
impl INode for TradingMarketplace {
    fn init(base: Base<Node>) -> Self {
        base.to_init_gd().set_process_mode(ProcessMode::ALWAYS);
        let defaults = ClientConfig::default();
        // The project's defaults (Project Settings → trading_marketplace/…,
        // with feature-tag overrides), else the addon's.
        let int = |name, default: i64, lo, hi| {
            project_default(name).map_or(default, |v| sane_int(name, v as i64, lo, hi))
        };
        let float = |name, default: f64, lo, hi| {
            project_default(name).map_or(default, |v| sane_f64(name, v, default, lo, hi))
        };
        TradingMarketplace {
            server_url: project_server_url().unwrap_or_else(|| defaults.server_url.as_str().into()),
            player_data: None,
            max_concurrent_requests: int(
                "max_concurrent_requests",
                defaults.max_concurrent_requests as i64,
                1,
                1024,
            ),
            request_timeout_sec: float(
                "request_timeout_sec",
                defaults.request_timeout.as_secs_f64(),
                0.1,
                600.0,
            ),
            max_requests_per_second: float(
                "max_requests_per_second",
                defaults.max_requests_per_second,
                0.0,
                1e6,
            ),
            max_events_per_frame: int("max_events_per_frame", 64, 1, 10_000),
            max_frame_time_msec: float("max_frame_time_msec", 1.0, 0.1, 100.0),
            shutdown_grace_sec: float("shutdown_grace_sec", 1.0, 0.0, 30.0),
            stall_after_sec: float(
                "stall_after_sec",
                marketplace_client::session::DEFAULT_STALL_AFTER.as_secs_f64(),
                1.0,
                1e9,
            ),
            live: project_default("live") != Some(0.0),
            watched_items: PackedStringArray::new(),
            slot: None,
            data_id: None,
            config_dirty: true,
            local_failures: VecDeque::new(),
            next_cursor: None,
            in_editor: Engine::singleton().is_editor_hint(),
            frame: FrameGate::default(),
            base,
        }
    }

    fn process(&mut self, _delta: f64) {
        // The frame's signals go out from `_frame`, a deferred call that
        // holds no borrow of this node while a handler runs: a handler (or
        // an awaiting script) may even free the node.
        if self.frame.queue() {
            self.base_mut().call_deferred("_frame", &[]);
        }
        if self.in_editor {
            // In the editor the node is only edited: no runtime, no thread,
            // no file. A script calling it there still hears its refusals.
            return;
        }
        // Starts the session in the first frame — after every `_ready`, so
        // settings made there count — and re-sends trades a crash left.
        if self.player_data.is_some() {
            if let Err(e) = self.attach() {
                if self.slot.is_none() && self.config_dirty {
                    godot_error!("TradingMarketplace: {}", e.message);
                    self.config_dirty = false;
                }
            }
        }
    }

    /// What the editor's scene dock shows next to the node.
    fn get_configuration_warnings(&self) -> PackedStringArray {
        self.get_setup_warnings()
    }
}

/// The event a local refusal stands for.
fn refusal_event(id: i64, listing_id: Option<i64>, error: ClientError) -> SessionEvent {
    let request_id = RequestId(id as u64);
    match listing_id {
        Some(listing_id) => SessionEvent::PurchaseFailed {
            request_id,
            listing_id,
            error,
        },
        None => SessionEvent::RequestFailed { request_id, error },
    }
}

impl Drop for TradingMarketplace {
    /// Freed: stop listening; the session stays with the save and keeps
    /// settling trades. Refusals not reported yet still complete their
    /// requests (at the next tick).
    fn drop(&mut self) {
        for (id, listing_id, error) in self.local_failures.drain(..) {
            request::complete_later(refusal_event(id, listing_id, error));
        }
        if let Some((slot, listener)) = self.slot.take() {
            if let Ok(mut s) = slot.try_borrow_mut() {
                s.unlisten(listener);
            }
        }
    }
}

#[godot_api]
impl TradingMarketplace {
    /// Logged in; the other requests can now reach the server.
    #[signal]
    fn logged_in(request_id: i64, player_id: i64);
    /// A page of listings arrived for `refresh_listings` request
    /// `request_id` (compare it with the latest request's id to drop a
    /// stale page); `next_cursor` asks for the next page (`""`: the last).
    #[signal]
    fn listings_updated(request_id: i64, listings: Array<Gd<MarketListing>>, next_cursor: GString);
    /// The listing is on the market; its items left the inventory for good.
    #[signal]
    fn listing_created(request_id: i64, listing: Gd<MarketListing>);
    /// The listing's price changed.
    #[signal]
    fn listing_repriced(request_id: i64, listing: Gd<MarketListing>);
    /// The listing was withdrawn; its items are back in the inventory.
    #[signal]
    fn listing_cancelled(request_id: i64, listing_id: i64);
    /// The purchase is done: credits spent, item in the inventory.
    #[signal]
    fn purchase_succeeded(request_id: i64, purchase: Gd<MarketPurchase>);
    /// The purchase was refused and the held credits are back. `code`:
    /// `"already_sold"` (another player won), `"price_changed"` (then
    /// `current_price` is the listing's price now; otherwise 0),
    /// `"listing_cancelled"`, `"own_listing"`, `"not_found"`,
    /// `"insufficient_credits"`, `"purchase_in_progress"`, …
    #[signal]
    fn purchase_failed(
        request_id: i64,
        listing_id: i64,
        code: GString,
        message: GString,
        current_price: i64,
    );
    /// Proceeds of one sale were credited (`amount` 0: nothing to claim).
    #[signal]
    fn proceeds_claimed(request_id: i64, amount: i64);
    /// A `claim_proceeds` request is over: `sales` sales claimed for
    /// `amount` credits in all (after their `proceeds_claimed`).
    #[signal]
    fn claim_finished(request_id: i64, sales: i64, amount: i64);
    /// Any other request failed for good; `code` is stable, `message` is for the player.
    #[signal]
    fn request_failed(request_id: i64, code: GString, message: GString);
    /// A request failed in a way that may have reached the server (`reason`:
    /// `"timeout"`, `"offline"`, `"internal"`, `"bad_response"`, …); it is
    /// retried with the same key.
    #[signal]
    fn request_retrying(request_id: i64, attempt: i64, reason: GString);
    /// A trade has gone `stall_after_sec` without a definitive answer and is
    /// still being retried; its hold stays (the server may have applied it).
    /// Reported once per trade.
    #[signal]
    fn trade_stalled(request_id: i64, trade: Gd<MarketPendingTrade>);
    /// Credits (`item_id` "") or items arrived in the save from the market
    /// account (`withdraw_credits`, `withdraw_items`).
    #[signal]
    fn withdrawn(request_id: i64, item_id: GString, quantity: i64);
    /// The market account as the server sees it (`refresh_market_account`,
    /// and after logging in to a server-grants market).
    /// `LocalPlayerData.get_market_account()` has it too.
    #[signal]
    fn market_account_updated(request_id: i64, account: Gd<MarketAccount>);
    /// Requests went from none to some in flight, or back.
    #[signal]
    fn busy_changed(busy: bool);
    /// The save had lost a trade the market made (it was restored from its
    /// backup, which was older than the trade): the trade's effect was
    /// applied to the save now. `kind` as in `get_pending_trades()`;
    /// `credits` came in (negative: went out); `items` maps item ids to
    /// counts that came in (negative: went out); `shortfall` is what had
    /// gone out that the save no longer had. Reported once, after saving.
    #[signal]
    fn trade_recovered(kind: GString, credits: i64, items: VarDictionary, shortfall: i64);
    /// A buy order is placed: its credits are in escrow on the server (the
    /// hold is spent). `fills` are what it bought at once; their
    /// items, and credits it paid below `max_price`, wait as deliveries
    /// (`collect_deliveries`) — or are in the market account under server
    /// grants.
    #[signal]
    fn order_placed(request_id: i64, order: Gd<MarketOrder>, fills: Array<Gd<MarketFill>>);
    /// A buy order is cancelled; `returned` credits of its escrow are back.
    #[signal]
    fn order_cancelled(request_id: i64, order: Gd<MarketOrder>, returned: i64);
    /// A page of the player's buy orders (`get_orders`).
    #[signal]
    fn orders_updated(request_id: i64, orders: Array<Gd<MarketOrder>>, next_cursor: GString);
    /// A `collect_deliveries` request is over: `deliveries` are in the
    /// save (or the market account under server grants), saved before
    /// this signal.
    #[signal]
    fn deliveries_collected(request_id: i64, deliveries: Array<Gd<MarketDelivery>>);
    /// What a sale would cost in fees (`quote_fees`).
    #[signal]
    fn fees_quoted(request_id: i64, quote: Gd<MarketFeeQuote>);
    /// An item's market summary (`get_market_summary`).
    #[signal]
    fn market_summary_updated(request_id: i64, summary: Gd<MarketItemSummary>);
    /// Items found by `search_items`, best first; `catalog`: the server
    /// has a catalog, so names were searched too.
    #[signal]
    fn items_found(request_id: i64, items: Array<Gd<MarketItemMatch>>, catalog: bool);
    /// An item's book by price level (`get_depth`), the best level first.
    #[signal]
    fn depth_updated(request_id: i64, depth: Gd<MarketDepth>);
    /// An item's price history (`get_price_history`), oldest candle first.
    #[signal]
    fn price_history_updated(request_id: i64, history: Gd<MarketPriceHistory>);
    /// The player's ways in (`get_identities`, `link_identity`,
    /// `unlink_identity`).
    #[signal]
    fn identities_updated(request_id: i64, identities: Gd<MarketIdentities>);

    // The live market (`live`): pushed changes are hints for the screen —
    // none of them settles a trade; the request signals above do. Others'
    // fills of the player's listings and orders arrive as
    // `notification_received` (one summary per listing or order).

    /// A listing changed on the market: `change` is `"created"`,
    /// `"updated"` (repriced, or partly bought), `"sold"`, `"cancelled"` or
    /// `"expired"`; `listing` is how it is now (as in `listings_updated`).
    /// A listing whose `status` is not `"active"` leaves the shop.
    #[signal]
    fn market_listing_changed(change: GString, listing: Gd<MarketListing>);
    /// A buy order changed: `"placed"`, `"updated"`, `"filled"`,
    /// `"cancelled"`, `"expired"`; `order` as in `orders_updated`.
    #[signal]
    fn market_order_changed(change: GString, order: Gd<MarketOrder>);
    /// Units changed hands (the ticker).
    #[signal]
    fn market_trade(item_id: GString, quantity: i64, unit_price: i64);
    /// Something waits for the player to collect (`collect_deliveries`).
    #[signal]
    fn delivery_waiting(delivery: Gd<MarketDelivery>);
    /// What happened while the player was away, or by others just now:
    /// one summary per listing or order (`MarketNotification`),
    /// emitted once, after it is saved.
    #[signal]
    fn notification_received(notification: Gd<MarketNotification>);
    /// At login: `count` deliveries wait to be collected.
    #[signal]
    fn deliveries_waiting(count: i64);
    /// The live connection is up (`live`), or down and reconnecting by
    /// itself (`reason`: a stable code such as `"offline"`).
    #[signal]
    fn market_live_changed(live: bool, reason: GString);
    /// Changes may have been missed (first connection, a long pause): call
    /// `refresh_listings` (and re-read what else is on screen).
    #[signal]
    fn market_reload_needed();

    /// The node's frame work, deferred from `_process` to the end of the
    /// frame (called by the engine; not for scripts): ticks every open
    /// save, then emits this node's signals and completes their requests
    /// holding no borrow of the node — so a handler, or a script resuming
    /// from `await`, may free the node safely.
    #[func(gd_self)]
    fn _frame(mut this: Gd<Self>) {
        if !this.bind_mut().frame.run() {
            return;
        }
        if !this.bind().in_editor {
            tick_slots();
        }
        if this.is_instance_valid() {
            Self::emit_pending(&mut this);
        }
    }

    /// Logs in. Without arguments (or with empty ones) the identity saved
    /// in `LocalPlayerData` is used (a new player gets a random device id);
    /// given ones are saved there. Logging in as another device is refused
    /// with `trades_pending` while the current player's trades wait for
    /// their answer.
    #[func]
    fn login(
        &mut self,
        #[opt(default = "")] device_id: GString,
        #[opt(default = "")] player_name: GString,
    ) -> Gd<MarketRequest> {
        let (device_id, player_name) = (device_id.to_string(), player_name.to_string());
        self.request("login", None, |session, store| {
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
                session.set_identity(store, &device, &name)?;
            }
            session.login(store)
        })
    }

    /// Logs in with the game's own account: `identity_token` is a JWT from
    /// the game's identity provider (Epic Online Services, Firebase, Auth0,
    /// or the game's backend vouching for a Steam ticket — see the README's
    /// "Player identity"). Every device that logs in with the same account
    /// is the same market player. The token is kept in memory only, to log
    /// in again while it is valid; on `unauthorized` or `identity_refused`
    /// later, log in with a fresh one. `player_name`, if given, is saved.
    #[func]
    fn login_with_token(
        &mut self,
        identity_token: GString,
        #[opt(default = "")] player_name: GString,
    ) -> Gd<MarketRequest> {
        let (token, name) = (identity_token.to_string(), player_name.to_string());
        self.request("login_with_token", None, |session, store| {
            session.login_with_token(store, &token, &name)
        })
    }

    /// Links the account `identity_token` proves to the logged-in player,
    /// so that a new device logging in with it is this player
    /// (`identities_updated`; awaited: `identities`). Refused with
    /// `identity_linked` when that account is another player's.
    #[func]
    fn link_identity(&mut self, identity_token: GString) -> Gd<MarketRequest> {
        let token = identity_token.to_string();
        self.request("link_identity", None, |session, _| {
            session.link_identity(&token)
        })
    }

    /// Unlinks the player's account of `provider` (`identities_updated`);
    /// refused with `forbidden` when it is the player's last way in.
    #[func]
    fn unlink_identity(&mut self, provider: GString) -> Gd<MarketRequest> {
        let provider = provider.to_string();
        self.request("unlink_identity", None, |session, _| {
            session.unlink_identity(&provider)
        })
    }

    /// The player's linked accounts (`identities_updated`; awaited:
    /// `identities`).
    #[func]
    fn get_identities(&mut self) -> Gd<MarketRequest> {
        self.request("get_identities", None, |session, _| session.identities())
    }

    /// The save's device id written for a human to keep (`7GQ2-…`, 34
    /// characters): shown to a player without an account, it moves them to
    /// a new device with `login_with_recovery_code`. Whoever has it *is*
    /// the player: show it only on the player's request. Empty when the
    /// game chose the device id itself, and after a login by account
    /// (`login_with_token`): then the device is not the player.
    #[func]
    fn get_recovery_code(&mut self) -> GString {
        let code = self.attach().ok().and_then(|slot| {
            let s = slot.borrow();
            let state = s.store.state();
            // After a login by account, the save's device is not the player.
            if state.identity_login {
                return None;
            }
            marketplace_client::recovery::recovery_code(&state.device_id)
        });
        GString::from(code.unwrap_or_default().as_str())
    }

    /// Logs in as the player a recovery code stands for (see
    /// `get_recovery_code`); the code's device id is saved, so later logins
    /// are that player. A mistyped code fails with `invalid_argument`;
    /// like `login` with another device, refused with `trades_pending`
    /// while this save's trades wait for their answer.
    #[func]
    fn login_with_recovery_code(
        &mut self,
        code: GString,
        #[opt(default = "")] player_name: GString,
    ) -> Gd<MarketRequest> {
        let (code, name) = (code.to_string(), player_name.to_string());
        self.request("login_with_recovery_code", None, |session, store| {
            let device = marketplace_client::recovery::device_id_of(&code).map_err(|why| {
                ClientError::new(
                    ErrorCode::InvalidArgument,
                    format!("Not a recovery code: {why}"),
                )
            })?;
            let name = if name.is_empty() {
                store.state().player_name.clone()
            } else {
                name
            };
            session.set_identity(store, &device, &name)?;
            session.login(store)
        })
    }

    /// Browses listings. `filter` keys (all optional; pass `{}` for the
    /// first page of active listings): `status` (`"active"`, `"sold"`,
    /// `"cancelled"`, `"all"`), `item_id`, `seller_id`, `cursor`, `limit`.
    /// (Godot cannot give a `Dictionary` parameter a default value.)
    #[func]
    fn refresh_listings(&mut self, filter: VarDictionary) -> Gd<MarketRequest> {
        let query = convert::browse_query(&filter);
        self.request("refresh_listings", None, |session, _| {
            session.browse(query?)
        })
    }

    /// Lists `quantity` items at `price` credits each; they leave the
    /// inventory at once. The listing rests `duration_sec` seconds (0: the
    /// server's default; never more than its bound), then its unsold items
    /// come back as a delivery. Resting buy orders at or above the price
    /// may buy some at once (claim their proceeds like any sale).
    #[func]
    fn create_listing(
        &mut self,
        item_id: GString,
        quantity: i64,
        price: i64,
        #[opt(default = 0)] duration_sec: i64,
    ) -> Gd<MarketRequest> {
        let item_id = item_id.to_string();
        let duration = (duration_sec > 0).then_some(duration_sec);
        self.request("create_listing", None, |session, store| {
            session.create_listing_for(store, &item_id, quantity, price, duration)
        })
    }

    /// Changes a listing's price (`listing_repriced`).
    #[func]
    fn reprice_listing(&mut self, listing_id: i64, price: i64) -> Gd<MarketRequest> {
        self.request("reprice_listing", None, |session, store| {
            session.reprice_listing(store, listing_id, price)
        })
    }

    /// Withdraws a listing; its items come back (`listing_cancelled`).
    #[func]
    fn cancel_listing(&mut self, listing_id: i64) -> Gd<MarketRequest> {
        self.request("cancel_listing", None, |session, store| {
            session.cancel_listing(store, listing_id)
        })
    }

    /// Buys `quantity` units of a listing at the unit price the player saw
    /// (`quantity` 0: all that remains, as the last page showed it);
    /// reserves `quantity × expected_price` credits at once.
    /// `purchase_failed` with `"quantity_unavailable"` when fewer remain.
    #[func]
    fn buy_listing(
        &mut self,
        listing_id: i64,
        expected_price: i64,
        #[opt(default = 0)] quantity: i64,
    ) -> Gd<MarketRequest> {
        self.request("buy_listing", Some(listing_id), |session, store| {
            if quantity > 0 {
                session.buy_units(store, listing_id, expected_price, quantity)
            } else {
                session.buy(store, listing_id, expected_price)
            }
        })
    }

    /// Places a buy order: up to `quantity` units of `item_id` at up to
    /// `max_price` each. Holds `quantity × max_price` credits at once
    /// (shown in `get_held_credits()` until the server takes them into the
    /// order's escrow). It buys from the cheapest listings at once and
    /// rests with the rest for `duration_sec` (0: the server's default),
    /// filling while the player is away; `min_fill` (0: any) is the
    /// smallest part it takes. Then `order_placed`.
    #[func]
    fn place_buy_order(
        &mut self,
        item_id: GString,
        quantity: i64,
        max_price: i64,
        #[opt(default = 0)] min_fill: i64,
        #[opt(default = 0)] duration_sec: i64,
    ) -> Gd<MarketRequest> {
        let item_id = item_id.to_string();
        let min_fill = (min_fill > 0).then_some(min_fill);
        let duration = (duration_sec > 0).then_some(duration_sec);
        self.request("place_buy_order", None, |session, store| {
            session.place_buy_order(store, &item_id, quantity, max_price, min_fill, duration)
        })
    }

    /// Cancels one of the player's buy orders; what its escrow still holds
    /// comes back (`order_cancelled`; `"order_closed"` when it was filled,
    /// cancelled or expired already).
    #[func]
    fn cancel_order(&mut self, order_id: i64) -> Gd<MarketRequest> {
        self.request("cancel_order", None, |session, store| {
            session.cancel_order(store, order_id)
        })
    }

    /// The player's buy orders (`orders_updated`): `status` `"active"`,
    /// `"closed"` or `""` (all); `cursor` from the previous page.
    #[func]
    fn get_orders(
        &mut self,
        #[opt(default = "")] status: GString,
        #[opt(default = "")] cursor: GString,
    ) -> Gd<MarketRequest> {
        let status = status.to_string();
        let cursor = cursor.to_string();
        self.request("get_orders", None, |session, _| {
            session.list_orders(
                (!status.is_empty()).then_some(status.as_str()),
                (!cursor.is_empty()).then_some(cursor),
            )
        })
    }

    /// Collects what the market keeps for the player — items and refunds
    /// of buy orders, unsold items of expired listings — exactly once
    /// (`deliveries_collected`, after saving).
    #[func]
    fn collect_deliveries(&mut self) -> Gd<MarketRequest> {
        self.request("collect_deliveries", None, |session, _| {
            session.collect_deliveries()
        })
    }

    /// An item's market summary: best ask and bid, last price, 24 h volume
    /// (`market_summary_updated`; awaited: `summary`).
    #[func]
    fn get_market_summary(&mut self, item_id: GString) -> Gd<MarketRequest> {
        let item_id = item_id.to_string();
        self.request("get_market_summary", None, |session, _| {
            session.market_summary(&item_id)
        })
    }

    /// Items whose id starts with `text` or whose catalog display name
    /// holds it (case aside), best first, at most `limit` (1–100): a shop's
    /// search box (`items_found`; awaited: `items`, `catalog`). Browse what
    /// is for sale of them with `refresh_listings({"search": text})`.
    #[func]
    fn search_items(
        &mut self,
        text: GString,
        #[opt(default = 20)] limit: i64,
    ) -> Gd<MarketRequest> {
        let text = text.to_string();
        let limit = u32::try_from(limit).unwrap_or(0);
        self.request("search_items", None, |session, _| {
            session.search_items(&text, limit)
        })
    }

    /// An item's book by price level, `levels` (1–100) a side
    /// (`depth_updated`; awaited: `depth`).
    #[func]
    fn get_depth(
        &mut self,
        item_id: GString,
        #[opt(default = 20)] levels: i64,
    ) -> Gd<MarketRequest> {
        let item_id = item_id.to_string();
        let levels = u32::try_from(levels).unwrap_or(0);
        self.request("get_depth", None, |session, _| {
            session.depth(&item_id, levels)
        })
    }

    /// An item's price history as candles per `"hour"` or `"day"`, between
    /// `from` and `to` (Unix seconds; 0: the last 48 intervals)
    /// (`price_history_updated`; awaited: `history`).
    #[func]
    fn get_price_history(
        &mut self,
        item_id: GString,
        #[opt(default = "hour")] interval: GString,
        #[opt(default = 0)] from: i64,
        #[opt(default = 0)] to: i64,
    ) -> Gd<MarketRequest> {
        let (item_id, interval) = (item_id.to_string(), interval.to_string());
        self.request("get_price_history", None, |session, _| {
            session.price_history(
                &item_id,
                &interval,
                (from > 0).then_some(from),
                (to > 0).then_some(to),
            )
        })
    }

    /// What selling `quantity` units at `price` each would cost in fees
    /// and bring (`fees_quoted`): show "buyer pays / you receive" before
    /// the player confirms.
    #[func]
    fn quote_fees(&mut self, quantity: i64, price: i64) -> Gd<MarketRequest> {
        self.request("quote_fees", None, |session, _| {
            session.quote_fees(quantity, price)
        })
    }

    /// Collects the proceeds of every unclaimed sale (`proceeds_claimed` per
    /// sale, then `claim_finished`).
    #[func]
    fn claim_proceeds(&mut self) -> Gd<MarketRequest> {
        self.request("claim_proceeds", None, |session, _| {
            session.claim_proceeds()
        })
    }

    /// Moves `amount` credits from the market account into the save (server
    /// grants: proceeds and grants are spent from the save after this).
    /// Reserved at once; `withdrawn` when done, `request_failed` with
    /// `"insufficient_funds"` if the server has less.
    #[func]
    fn withdraw_credits(&mut self, amount: i64) -> Gd<MarketRequest> {
        self.request("withdraw_credits", None, |session, store| {
            session.withdraw(store, None, amount)
        })
    }

    /// Moves items from the market account into the save.
    #[func]
    fn withdraw_items(&mut self, item_id: GString, quantity: i64) -> Gd<MarketRequest> {
        let item_id = item_id.to_string();
        self.request("withdraw_items", None, |session, store| {
            session.withdraw(store, Some(&item_id), quantity)
        })
    }

    /// Asks the server for the market account (`market_account_updated`).
    #[func]
    fn refresh_market_account(&mut self) -> Gd<MarketRequest> {
        self.request("refresh_market_account", None, |session, _| {
            session.refresh_account()
        })
    }

    /// True while a purchase of this listing waits for its definitive answer.
    #[func]
    fn is_purchase_pending(&mut self, listing_id: i64) -> bool {
        self.with_slot(|session, store| Ok(session.is_purchase_pending(store, listing_id)))
            .unwrap_or(false)
    }

    /// Every trade waiting for its definitive answer, oldest first. Each is
    /// a Dictionary: `request_id`, `kind` (`"purchase"`, `"create_listing"`,
    /// `"reprice"`, `"cancel"`, `"claim"`), `listing_id`, `sale_id`,
    /// `item_id`, `quantity`, `amount`, `created_at` (Unix seconds),
    /// `age_sec`, `attempts`, `last_error` (a code, or ""),
    /// `waiting_for_save` (not sent: saving fails), `waiting_for_server`
    /// (why it waits, or "": the trade belongs to another market or player
    /// than the one `server_url` points at now; it goes when it points back).
    #[func]
    fn get_pending_trades(&mut self) -> Array<Gd<MarketPendingTrade>> {
        self.with_slot(|session, store| {
            Ok(session
                .pending_trades(store)
                .iter()
                .map(data::pending_trade)
                .collect())
        })
        .unwrap_or_default()
    }

    /// Requests not finished yet.
    #[func]
    fn pending_count(&mut self) -> i64 {
        self.with_slot(|session, _| Ok(session.pending_count() as i64))
            .unwrap_or(0)
    }

    /// Set-up problems, as the editor's scene dock shows them: no
    /// `player_data`, or a `server_url` that is not http(s). Empty when the
    /// node is ready to trade.
    #[func]
    fn get_setup_warnings(&self) -> PackedStringArray {
        let mut warnings = PackedStringArray::new();
        for w in self.configuration_warnings() {
            warnings.push(&GString::from(w.as_str()));
        }
        warnings
    }

    /// The cursor of the next listings page, or "" after the last page.
    #[func]
    fn get_next_cursor(&self) -> GString {
        self.next_cursor.as_deref().unwrap_or("").into()
    }

    #[func]
    fn is_logged_in(&mut self) -> bool {
        self.with_slot(|session, _| Ok(session.client().is_logged_in()))
            .unwrap_or(false)
    }

    #[func]
    fn set_server_url(&mut self, url: GString) {
        self.server_url = url;
        self.settings_changed();
        self.base_mut().update_configuration_warnings();
    }

    #[func]
    fn set_player_data(&mut self, node: Option<Gd<LocalPlayerData>>) {
        self.player_data = node;
        self.config_dirty = true;
        self.base_mut().update_configuration_warnings();
    }

    #[func]
    fn set_max_concurrent_requests(&mut self, n: i64) {
        self.max_concurrent_requests = sane_int("max_concurrent_requests", n, 1, 1024);
        self.settings_changed();
    }

    #[func]
    fn set_request_timeout_sec(&mut self, secs: f64) {
        self.request_timeout_sec = sane_f64("request_timeout_sec", secs, 10.0, 0.1, 600.0);
        self.settings_changed();
    }

    #[func]
    fn set_max_requests_per_second(&mut self, rate: f64) {
        self.max_requests_per_second = sane_f64("max_requests_per_second", rate, 20.0, 0.0, 1e6);
        self.settings_changed();
    }

    #[func]
    fn set_max_events_per_frame(&mut self, n: i64) {
        self.max_events_per_frame = sane_int("max_events_per_frame", n, 1, 10_000);
    }

    #[func]
    fn set_live(&mut self, on: bool) {
        self.live = on;
        self.config_dirty = true;
    }

    #[func]
    fn set_watched_items(&mut self, items: PackedStringArray) {
        self.watched_items = items;
        self.config_dirty = true;
    }

    #[func]
    fn set_max_frame_time_msec(&mut self, ms: f64) {
        self.max_frame_time_msec = sane_f64("max_frame_time_msec", ms, 1.0, 0.1, 100.0);
    }

    #[func]
    fn set_shutdown_grace_sec(&mut self, secs: f64) {
        self.shutdown_grace_sec = sane_f64("shutdown_grace_sec", secs, 1.0, 0.0, 30.0);
        self.settings_changed();
    }

    #[func]
    fn set_stall_after_sec(&mut self, secs: f64) {
        self.stall_after_sec = sane_f64("stall_after_sec", secs, 60.0, 1.0, 1e9);
        self.settings_changed();
    }
}

/// A number typed into the inspector or set by a script, made usable: NaN
/// and infinities become the default, the rest is clamped — with a warning.
fn sane_f64(name: &str, value: f64, default: f64, lo: f64, hi: f64) -> f64 {
    let sane = if value.is_nan() {
        default
    } else {
        value.clamp(lo, hi)
    };
    if sane != value {
        godot_warn!("TradingMarketplace.{name} = {value} is not usable; using {sane}");
    }
    sane
}

fn sane_int(name: &str, value: i64, lo: i64, hi: i64) -> i64 {
    let sane = value.clamp(lo, hi);
    if sane != value {
        godot_warn!("TradingMarketplace.{name} = {value} is out of range; using {sane}");
    }
    sane
}

impl TradingMarketplace {
    /// Set-up mistakes the editor shows (and the game reports): no
    /// `LocalPlayerData`, or a server URL that is not http(s).
    fn configuration_warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        if self.player_data.is_none() {
            warnings.push(
                "player_data is empty: pick the LocalPlayerData node that holds this player's credits and items \
                 (both nodes in an autoload is the recommended set-up)."
                    .to_string(),
            );
        }
        let url = self.server_url.to_string();
        let scheme_ok = ["http://", "https://"].iter().any(|p| {
            url.len() > p.len()
                && url
                    .get(..p.len())
                    .is_some_and(|s| s.eq_ignore_ascii_case(p))
        });
        if !scheme_ok {
            warnings.push(format!(
                "server_url {url:?} is not an http:// or https:// address of the marketplace server."
            ));
        }
        warnings
    }

    fn config(&self) -> ClientConfig {
        ClientConfig {
            server_url: self.server_url.to_string(),
            max_concurrent_requests: self.max_concurrent_requests.clamp(1, 1024) as usize,
            request_timeout: duration_from_secs(
                self.request_timeout_sec,
                Duration::from_secs(10),
                0.1,
                600.0,
            ),
            max_requests_per_second: self.max_requests_per_second.max(0.0),
            ..ClientConfig::default()
        }
    }

    fn settings_changed(&mut self) {
        self.config_dirty = true;
        if self.slot.is_some() {
            if let Err(e) = self.apply_config() {
                godot_error!("TradingMarketplace: {}", e.message);
            }
        }
    }

    /// Gives the attached save's session this node's settings (starting it
    /// if needed). A refused change (an invalid setting) puts back the
    /// server in force. Another server while trades wait is fine: they wait
    /// for theirs.
    fn apply_config(&mut self) -> Result<(), ClientError> {
        let Some((slot, _)) = &self.slot else {
            return Ok(());
        };
        let config = self.config();
        let grace = duration_from_secs(self.shutdown_grace_sec, Duration::from_secs(1), 0.0, 30.0);
        let stall = duration_from_secs(self.stall_after_sec, Duration::from_secs(60), 1.0, 1e9);
        let mut s = slot.borrow_mut();
        s.shutdown_grace = grace;
        let result = s.configure(config);
        let items: Vec<String> = self
            .watched_items
            .as_slice()
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut watch = Ok(());
        if let Some(session) = s.session.as_mut() {
            session.set_stall_after(stall);
            if result.is_err() {
                self.server_url = session.client().config().server_url.as_str().into();
            }
            watch = session.watch(items, false);
            if session.is_live() != self.live {
                session.set_live(self.live);
            }
        }
        if let Err(e) = &watch {
            godot_error!("TradingMarketplace.watched_items: {}", e.message);
        }
        self.config_dirty = false;
        result
    }

    /// Attaches to the save of `player_data` (again, if it changed: another
    /// node, or the node switched files), with this node's settings.
    fn attach(&mut self) -> Result<SlotRef, ClientError> {
        // Every trade call comes through here: no clone of the node (a
        // type check in gdext) unless its save must be opened.
        let id = self
            .player_data
            .as_ref()
            .filter(|n| n.is_instance_valid())
            .map(|n| n.instance_id());
        let Some(id) = id else {
            // The data node is gone (freed with its scene): keep trading on
            // the save last used until `player_data` names another node.
            if let Some((slot, _)) = &self.slot {
                if !slot.borrow().closed {
                    return Ok(slot.clone());
                }
            }
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "TradingMarketplace.player_data must point to a LocalPlayerData node",
            ));
        };
        let current = save_slot::slot_of(id).or_else(|| {
            let mut node = self.player_data.clone()?;
            let slot = node.bind_mut().slot();
            slot
        });
        let Some(current) = current else {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "LocalPlayerData could not load its save file (see its load_failed signal)",
            ));
        };
        let same = self
            .slot
            .as_ref()
            .is_some_and(|(s, _)| std::rc::Rc::ptr_eq(s, &current));
        if !same {
            // Another save: stop listening to the old one (its trades stay
            // with it), listen to the new one, give it our settings.
            if let Some((old, listener)) = self.slot.take() {
                old.borrow_mut().unlisten(listener);
            }
            let listener = current.borrow_mut().listen();
            self.slot = Some((current.clone(), listener));
            self.data_id = Some(id);
            self.config_dirty = true;
        }
        if self.config_dirty {
            self.apply_config()?;
        }
        Ok(current)
    }

    /// Runs `f` with the session and the player store, attaching first.
    fn with_slot<R>(
        &mut self,
        f: impl FnOnce(&mut TradingSession, &mut PlayerStore) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        if self.in_editor {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "TradingMarketplace does not trade inside the editor",
            ));
        }
        let slot = self.attach()?;
        let mut guard = slot.borrow_mut();
        let s = &mut *guard;
        match s.session.as_mut() {
            Some(session) => f(session, &mut s.store),
            None => Err(ClientError::new(ErrorCode::Internal, "no session")),
        }
    }

    /// Submits a request of `kind`; a local refusal is a request too, and
    /// is reported (signal, then `completed`) at the end of the frame (`_frame`),
    /// never inside the call.
    fn request(
        &mut self,
        kind: &'static str,
        listing_id: Option<i64>,
        f: impl FnOnce(&mut TradingSession, &mut PlayerStore) -> Result<RequestId, ClientError>,
    ) -> Gd<MarketRequest> {
        let error = if self.in_editor {
            ClientError::new(
                ErrorCode::InvalidArgument,
                "TradingMarketplace does not trade inside the editor",
            )
        } else {
            match self.attach() {
                Ok(slot) => {
                    let mut guard = slot.borrow_mut();
                    let s = &mut *guard;
                    match s.session.as_mut() {
                        Some(session) => {
                            let (id, refused) = match f(session, &mut s.store) {
                                Ok(RequestId(id)) => (id as i64, false),
                                Err(error) => (session.refuse(listing_id, error).0 as i64, true),
                            };
                            let serial = s.serial();
                            drop(guard);
                            return request::track(id, kind, refused, Some(serial));
                        }
                        None => ClientError::new(ErrorCode::Internal, "no session"),
                    }
                }
                Err(error) => error,
            }
        };
        let id = request::local_id();
        self.local_failures.push_back((id, listing_id, error));
        request::track(id, kind, true, None)
    }

    /// Turns waiting events into signals, one at a time, holding no borrow
    /// of the node or the save while a handler runs (a handler may call
    /// anything, free the node too); bounded per frame by count and by time.
    fn emit_pending(this: &mut Gd<Self>) {
        let (budget, max, in_editor) = {
            let node = this.bind();
            (
                Duration::from_secs_f64(node.max_frame_time_msec.clamp(0.1, 100.0) / 1e3),
                node.max_events_per_frame.clamp(1, 10_000),
                node.in_editor,
            )
        };
        let started = Instant::now();
        // Requests refused before reaching a session: their signal, then
        // their `completed` (only those made before this frame's began).
        let refused: Vec<_> = this.bind_mut().local_failures.drain(..).collect();
        for (id, listing_id, error) in refused {
            let event = refusal_event(id, listing_id, error);
            if !this.is_instance_valid() {
                // Freed by a handler: the rest still complete their
                // requests, now (no node may be left to tick).
                request::complete(&event, None);
                continue;
            }
            if !request::drop_if_cancelled(&event) {
                Self::emit_event(this, &event);
            }
        }
        if in_editor {
            return;
        }
        for n in 0..max {
            if n > 0 && started.elapsed() >= budget {
                break;
            }
            if !this.is_instance_valid() {
                return;
            }
            let Some((slot, listener)) = this.bind().slot.clone() else {
                return;
            };
            let Some(event) = slot.borrow_mut().next_for(listener) else {
                return;
            };
            Self::emit_event(this, &event);
        }
    }

    /// One event: its typed result (made once), the node's signal, then the
    /// request's `completed` with the same objects. (A read the game
    /// cancelled never gets here: the save drops its events.)
    fn emit_event(this: &mut Gd<Self>, event: &SessionEvent) {
        let id = event.request_id().map(|r| r.0 as i64);
        let result = id.and_then(|id| data::result_of(event, request::method_of(id)));
        Self::emit(this, event, result.as_ref());
        request::complete(event, result);
    }

    fn emit_failure(this: &mut Gd<Self>, id: i64, listing_id: Option<i64>, error: &ClientError) {
        let code = GString::from(error.code.as_str());
        let message = GString::from(error.message.as_str());
        match listing_id {
            Some(listing_id) => this.signals().purchase_failed().emit(
                id,
                listing_id,
                &code,
                &message,
                error.current_price.unwrap_or(0),
            ),
            None => this.signals().request_failed().emit(id, &code, &message),
        }
    }

    fn emit_market(this: &mut Gd<Self>, event: &marketplace_client::protocol::StreamEvent) {
        use marketplace_client::protocol::StreamChange;
        match &event.change {
            StreamChange::Listing { change, listing } => this
                .signals()
                .market_listing_changed()
                .emit(change.as_str(), &data::listing(listing)),
            StreamChange::Order { change, order } => this
                .signals()
                .market_order_changed()
                .emit(change.as_str(), &data::order(order)),
            StreamChange::Trade {
                item_id,
                quantity,
                unit_price,
                ..
            } => this
                .signals()
                .market_trade()
                .emit(item_id.as_str(), *quantity, *unit_price),
            StreamChange::Delivery { delivery } => this
                .signals()
                .delivery_waiting()
                .emit(&data::delivery(delivery)),
            // Told by the session once saved (`notification_received`).
            StreamChange::Notification { .. } => {}
        }
    }

    /// The node's signal for `event`; `result` is its request's typed
    /// result when it answers one (the signal carries the same objects).
    fn emit(this: &mut Gd<Self>, event: &SessionEvent, result: Option<&Gd<MarketResult>>) {
        let id = |r: &RequestId| r.0 as i64;
        // The object the result holds, or a fresh one.
        let r = result.map(|r| r.bind());
        macro_rules! from_result {
            ($field:ident, $make:expr) => {
                r.as_ref()
                    .and_then(|r| r.$field.clone())
                    .unwrap_or_else(|| $make)
            };
        }
        macro_rules! list_from_result {
            ($field:ident, $make:expr) => {
                r.as_ref()
                    .map(|r| r.$field.clone())
                    .unwrap_or_else(|| $make)
            };
        }
        match event {
            SessionEvent::LoggedIn {
                request_id,
                player_id,
                ..
            } => {
                drop(r);
                this.signals().logged_in().emit(id(request_id), *player_id)
            }
            SessionEvent::ListingsUpdated { request_id, page } => {
                let listings =
                    list_from_result!(listings, page.listings.iter().map(data::listing).collect());
                drop(r);
                this.bind_mut().next_cursor = page.next_cursor.clone();
                this.signals().listings_updated().emit(
                    id(request_id),
                    &listings,
                    page.next_cursor.as_deref().unwrap_or(""),
                );
            }
            SessionEvent::ListingFetched { .. } | SessionEvent::SalesListed { .. } => {}
            SessionEvent::ListingCreated {
                request_id,
                listing,
            } => {
                let listing = from_result!(listing, data::listing(listing));
                drop(r);
                this.signals()
                    .listing_created()
                    .emit(id(request_id), &listing)
            }
            SessionEvent::ListingRepriced {
                request_id,
                listing,
            } => {
                let listing = from_result!(listing, data::listing(listing));
                drop(r);
                this.signals()
                    .listing_repriced()
                    .emit(id(request_id), &listing)
            }
            SessionEvent::ListingCancelled {
                request_id,
                listing,
            } => {
                drop(r);
                this.signals()
                    .listing_cancelled()
                    .emit(id(request_id), listing.id)
            }
            SessionEvent::PurchaseSucceeded {
                request_id,
                purchase,
            } => {
                let purchase = from_result!(purchase, data::purchase(purchase));
                drop(r);
                this.signals()
                    .purchase_succeeded()
                    .emit(id(request_id), &purchase)
            }
            SessionEvent::PurchaseFailed {
                request_id,
                listing_id,
                error,
            } => {
                drop(r);
                Self::emit_failure(this, id(request_id), Some(*listing_id), error)
            }
            SessionEvent::ProceedsClaimed {
                request_id, amount, ..
            } => {
                drop(r);
                this.signals()
                    .proceeds_claimed()
                    .emit(id(request_id), *amount)
            }
            SessionEvent::ClaimsDone {
                request_id,
                sales,
                amount,
                ..
            } => {
                drop(r);
                this.signals()
                    .claim_finished()
                    .emit(id(request_id), *sales as i64, *amount)
            }
            SessionEvent::RequestFailed { request_id, error } => {
                drop(r);
                Self::emit_failure(this, id(request_id), None, error)
            }
            SessionEvent::RequestRetrying {
                request_id,
                attempt,
                error,
            } => {
                drop(r);
                this.signals().request_retrying().emit(
                    id(request_id),
                    i64::from(*attempt),
                    error.code.as_str(),
                )
            }
            SessionEvent::TradeStalled {
                request_id, trade, ..
            } => {
                drop(r);
                this.signals()
                    .trade_stalled()
                    .emit(id(request_id), &data::pending_trade(trade))
            }
            SessionEvent::Withdrawn {
                request_id,
                item_id,
                quantity,
            } => {
                drop(r);
                this.signals().withdrawn().emit(
                    id(request_id),
                    item_id.as_deref().unwrap_or(""),
                    *quantity,
                )
            }
            SessionEvent::AccountUpdated {
                request_id,
                account,
            } => {
                let account = from_result!(account, data::account(account));
                drop(r);
                this.signals()
                    .market_account_updated()
                    .emit(id(request_id), &account)
            }
            SessionEvent::BusyChanged { busy } => {
                drop(r);
                this.signals().busy_changed().emit(*busy)
            }
            SessionEvent::OrderPlaced {
                request_id,
                order,
                fills,
            } => {
                let order = from_result!(order, data::order(order));
                let fills = list_from_result!(fills, fills.iter().map(data::fill).collect());
                drop(r);
                this.signals()
                    .order_placed()
                    .emit(id(request_id), &order, &fills)
            }
            SessionEvent::OrderCancelled {
                request_id,
                order,
                returned,
            } => {
                let order = from_result!(order, data::order(order));
                drop(r);
                this.signals()
                    .order_cancelled()
                    .emit(id(request_id), &order, *returned)
            }
            SessionEvent::OrdersListed {
                request_id,
                orders,
                next_cursor,
            } => {
                let orders = list_from_result!(orders, orders.iter().map(data::order).collect());
                drop(r);
                this.signals().orders_updated().emit(
                    id(request_id),
                    &orders,
                    next_cursor.as_deref().unwrap_or(""),
                )
            }
            SessionEvent::DeliveriesCollected {
                request_id,
                deliveries,
                error,
            } => {
                let deliveries =
                    list_from_result!(deliveries, deliveries.iter().map(data::delivery).collect());
                drop(r);
                if let Some(error) = error {
                    Self::emit_failure(this, id(request_id), None, error);
                    if !this.is_instance_valid() {
                        return; // freed by that handler
                    }
                }
                this.signals()
                    .deliveries_collected()
                    .emit(id(request_id), &deliveries)
            }
            SessionEvent::FeesQuoted { request_id, quote } => {
                let quote = from_result!(quote, data::fee_quote(quote));
                drop(r);
                this.signals().fees_quoted().emit(id(request_id), &quote)
            }
            SessionEvent::MarketSummary {
                request_id,
                summary,
            } => {
                let summary = from_result!(summary, data::market_summary(summary));
                drop(r);
                this.signals()
                    .market_summary_updated()
                    .emit(id(request_id), &summary)
            }
            SessionEvent::ItemsFound {
                request_id,
                items,
                catalog,
            } => {
                let items = list_from_result!(items, items.iter().map(data::item_match).collect());
                drop(r);
                this.signals()
                    .items_found()
                    .emit(id(request_id), &items, *catalog)
            }
            SessionEvent::IdentitiesListed {
                request_id,
                identities,
            } => {
                let identities = from_result!(identities, data::identities(identities));
                drop(r);
                this.signals()
                    .identities_updated()
                    .emit(id(request_id), &identities)
            }
            SessionEvent::DepthListed { request_id, depth } => {
                let depth = from_result!(depth, data::depth(depth));
                drop(r);
                this.signals().depth_updated().emit(id(request_id), &depth)
            }
            SessionEvent::PriceHistory {
                request_id,
                history,
            } => {
                let history = from_result!(history, data::price_history(history));
                drop(r);
                this.signals()
                    .price_history_updated()
                    .emit(id(request_id), &history)
            }
            SessionEvent::MarketChanged { event } => {
                drop(r);
                Self::emit_market(this, event)
            }
            SessionEvent::MarketLive { live, error } => {
                drop(r);
                this.signals()
                    .market_live_changed()
                    .emit(*live, error.as_ref().map(|e| e.code.as_str()).unwrap_or(""))
            }
            SessionEvent::MarketReload => {
                drop(r);
                this.signals().market_reload_needed().emit()
            }
            SessionEvent::Notification { notification } => {
                drop(r);
                this.signals()
                    .notification_received()
                    .emit(&data::notification(notification))
            }
            SessionEvent::DeliveriesWaiting { count } => {
                drop(r);
                this.signals().deliveries_waiting().emit(*count)
            }
            SessionEvent::TradeRecovered {
                kind,
                credits,
                items,
                shortfall,
                ..
            } => {
                drop(r);
                let counts = data::counts(items.iter().map(|(k, v)| (k, v)));
                this.signals()
                    .trade_recovered()
                    .emit(kind.as_str(), *credits, &counts, *shortfall)
            }
        }
    }
}

/// `trading_marketplace/<name>` with its feature-tag override for this
/// build (`.debug`, `.release`, a custom tag), if the project sets it.
fn project_setting(name: &str) -> Option<(String, Variant)> {
    let key = format!("trading_marketplace/{name}");
    let settings = ProjectSettings::singleton();
    if !settings.has_setting(&key) {
        return None;
    }
    let value = settings.get_setting_with_override(&key);
    Some((key, value))
}

/// A node default from the project (see `project_setting`), as a number (a
/// `bool` is 0 or 1); a value of another type is warned about and ignored.
fn project_default(name: &str) -> Option<f64> {
    let (key, value) = project_setting(name)?;
    let number = value
        .try_to::<f64>()
        .ok()
        .or_else(|| value.try_to::<i64>().ok().map(|v| v as f64))
        .or_else(|| value.try_to::<bool>().ok().map(|v| f64::from(u8::from(v))));
    if number.is_none() {
        godot_warn!("Project setting {key} = {value} is not a number; the addon's default is used");
    }
    number
}

/// The project's `server_url` (see `project_setting`), if set and not empty.
fn project_server_url() -> Option<GString> {
    project_setting("server_url")
        .and_then(|(_, url)| url.try_to::<GString>().ok())
        .filter(|url| !url.is_empty())
}
