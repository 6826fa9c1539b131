//! `MarketRequest`: one request to the marketplace, awaitable from GDScript.
//!
//! Every request method of `TradingMarketplace` returns one, so a script may
//! either await it —
//!
//! ```gdscript
//! var result: Dictionary = await market.buy_listing(id, price).completed
//! ```
//!
//! — or keep connecting the node's signals, matching `request.id` against
//! their `request_id`. Both see the same answers: for each request the
//! node's signal comes first, then `completed`.
//!
//! # Where requests live
//! A request outlives the node that made it, like the trade behind it (see
//! `save_slot`): the pending ones are kept in a main-thread registry by id,
//! and completed by whichever of our nodes turns the answer into a signal —
//! or, when no `TradingMarketplace` listens to the save any more, by the
//! save's own frame tick. `completed` is never emitted inside the call that
//! made the request (an `await` on it always gets there first).

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use godot::prelude::*;
use marketplace_client::{ClientError, ErrorCode, SessionEvent};

use crate::convert;

/// One request to the marketplace and, once known, its result.
///
/// `result` (also the argument of `completed`) always has `ok` (bool),
/// `code` (a stable error code, `""` when ok), `message` (for the player,
/// `""` when ok) and `request_id`, plus what the request produced:
///
/// | request | on success |
/// |---|---|
/// | `login` | `player_id`, `player_name` |
/// | `refresh_listings` | `listings`, `next_cursor` (`""` after the last page) |
/// | `create_listing`, `reprice_listing` | `listing` |
/// | `cancel_listing` | `listing_id`, `listing` |
/// | `buy_listing` | `purchase` (failure: `listing_id`, and `current_price` with `"price_changed"`) |
/// | `claim_proceeds` | `sales` (how many were claimed), `amount` (credits in all) |
/// | `withdraw_credits`, `withdraw_items` | `item_id` (`""` for credits), `quantity` |
/// | `refresh_market_account` | `account` |
///
/// A trade without a definitive answer is retried and its request stays
/// pending (see `TradingMarketplace.trade_stalled`); an await on it waits as
/// long as the trade does.
#[derive(GodotClass)]
#[class(no_init, base=RefCounted)]
pub struct MarketRequest {
    /// The id the node's signals carry as `request_id`.
    #[var(no_set)]
    id: i64,
    /// `"login"`, `"listings"`, `"create_listing"`, `"reprice"`, `"cancel"`,
    /// `"purchase"`, `"claim"`, `"withdraw"` or `"account"`.
    #[var(no_set)]
    kind: GString,
    /// Whether `result` is in.
    #[var(no_set)]
    done: bool,
    /// The result (empty until `done`).
    #[var(no_set)]
    result: VarDictionary,
    /// Only `ClaimsDone` ends a claim that reached the session; a refusal
    /// before it did ends it too.
    ends_on_failure: bool,
    /// The save whose session carries it (none: refused before any did).
    slot: Option<PathBuf>,
    base: Base<RefCounted>,
}

#[godot_api]
impl MarketRequest {
    /// The answer is in: `result` as described above.
    #[signal]
    fn completed(result: VarDictionary);

    /// True once done and successful.
    #[func]
    fn is_ok(&self) -> bool {
        self.done && self.result.get("ok").is_some_and(|v| v.booleanize())
    }

    /// The error code once done (`""` when ok or not done).
    #[func]
    fn get_code(&self) -> GString {
        self.result
            .get("code")
            .and_then(|v| v.try_to::<GString>().ok())
            .unwrap_or_default()
    }
}

thread_local! {
    /// Requests waiting for their answer, by id. Main thread only.
    static PENDING: RefCell<HashMap<i64, Gd<MarketRequest>>> = RefCell::new(HashMap::new());
    /// Ids of requests refused before any session existed (far above the
    /// sessions' own, which count from 1 per process).
    static NEXT_LOCAL_ID: Cell<i64> = const { Cell::new(1 << 40) };
    /// Completions to run at the next frame tick, when no node is bound:
    /// answers left over when a save closed or a node went away.
    static DEFERRED: RefCell<VecDeque<Deferred>> = const { RefCell::new(VecDeque::new()) };
}

enum Deferred {
    Event(Box<SessionEvent>),
    /// The save closed: whatever of its requests still waits ends with
    /// `shutting_down`.
    CloseSlot(PathBuf),
}

/// A fresh id for a request refused before it reached a session.
pub fn local_id() -> i64 {
    NEXT_LOCAL_ID.with(|n| {
        let id = n.get() + 1;
        n.set(id);
        id
    })
}

/// A new pending request on the save at `slot`; `refused`: it failed
/// before reaching the session, so its failure (reported next frame) ends it.
pub fn track(id: i64, kind: &str, refused: bool, slot: Option<&Path>) -> Gd<MarketRequest> {
    let request = Gd::from_init_fn(|base| MarketRequest {
        id,
        kind: kind.into(),
        done: false,
        result: VarDictionary::new(),
        ends_on_failure: kind != "claim" || refused,
        slot: slot.map(Path::to_path_buf),
        base,
    });
    PENDING.with(|p| p.borrow_mut().insert(id, request.clone()));
    request
}

/// Completes the request `event` ends, if one waits: emits `completed`.
/// Call with nothing borrowed (the handler may call anything).
pub fn complete(event: &SessionEvent) {
    if let Some((request, result)) = take_completion(event) {
        finish(request, result);
    }
}

/// Stores the result and emits `completed` (the request is already out of
/// the registry).
fn finish(mut request: Gd<MarketRequest>, result: VarDictionary) {
    {
        let mut r = request.bind_mut();
        r.done = true;
        r.result = result.clone();
    }
    request.signals().completed().emit(&result);
}

/// Completes the request `event` ends at the next frame tick (for callers
/// that may hold a node or a slot).
pub fn complete_later(event: SessionEvent) {
    DEFERRED.with(|d| d.borrow_mut().push_back(Deferred::Event(Box::new(event))));
}

/// Ends, at the next frame tick, every request still waiting on the save
/// at `slot` (it closed: their answers can no longer come).
pub fn close_slot_later(slot: &Path) {
    DEFERRED.with(|d| {
        d.borrow_mut()
            .push_back(Deferred::CloseSlot(slot.to_path_buf()))
    });
}

/// Runs the deferred completions. Call with nothing borrowed.
pub fn run_deferred() {
    while let Some(next) = DEFERRED.with(|d| d.borrow_mut().pop_front()) {
        match next {
            Deferred::Event(event) => complete(&event),
            Deferred::CloseSlot(path) => {
                let ids: Vec<i64> = PENDING.with(|p| {
                    p.borrow()
                        .iter()
                        .filter(|(_, r)| r.bind().slot.as_deref() == Some(path.as_path()))
                        .map(|(id, _)| *id)
                        .collect()
                });
                for id in ids {
                    let error = ClientError::new(
                        ErrorCode::ShuttingDown,
                        "The save file this request belonged to was closed before its answer came",
                    );
                    if let Some(request) = PENDING.with(|p| p.borrow_mut().remove(&id)) {
                        finish(request, failure(id, &error));
                    }
                }
            }
        }
    }
}

/// The waiting request `event` ends, and its result.
fn take_completion(event: &SessionEvent) -> Option<(Gd<MarketRequest>, VarDictionary)> {
    let id = event_request_id(event)?;
    let request = PENDING.with(|p| p.borrow().get(&id).cloned())?;
    let ends_on_failure = request.bind().ends_on_failure;
    let result = result_of(event, ends_on_failure)?;
    PENDING.with(|p| p.borrow_mut().remove(&id));
    Some((request, result))
}

fn event_request_id(event: &SessionEvent) -> Option<i64> {
    event.request_id().map(|id| id.0 as i64)
}

fn put(d: &mut VarDictionary, key: &str, value: impl ToGodot) {
    d.set(key, &value.to_variant());
}

fn success(request_id: i64) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "ok", true);
    put(&mut d, "code", GString::new());
    put(&mut d, "message", GString::new());
    put(&mut d, "request_id", request_id);
    d
}

/// A failure's result: `ok` false, its code and message, `current_price`
/// when the server gave one.
pub fn failure(request_id: i64, error: &ClientError) -> VarDictionary {
    let (code, message) = convert::error(error);
    let mut d = VarDictionary::new();
    put(&mut d, "ok", false);
    put(&mut d, "code", code);
    put(&mut d, "message", message);
    put(&mut d, "request_id", request_id);
    if let Some(price) = error.current_price {
        put(&mut d, "current_price", price);
    }
    if let Some(available) = error.available {
        put(&mut d, "available", available);
    }
    d
}

/// The result `event` gives its request, if it ends it.
fn result_of(event: &SessionEvent, ends_on_failure: bool) -> Option<VarDictionary> {
    use SessionEvent::*;
    let id = event_request_id(event)?;
    let mut d = success(id);
    match event {
        LoggedIn {
            player_id, name, ..
        } => {
            put(&mut d, "player_id", *player_id);
            put(&mut d, "player_name", GString::from(name.as_str()));
        }
        ListingsUpdated { page, .. } => {
            put(&mut d, "listings", convert::listings(&page.listings));
            put(
                &mut d,
                "next_cursor",
                GString::from(page.next_cursor.as_deref().unwrap_or("")),
            );
        }
        ListingFetched { listing, .. }
        | ListingCreated { listing, .. }
        | ListingRepriced { listing, .. } => {
            put(&mut d, "listing", convert::listing(listing));
        }
        ListingCancelled { listing, .. } => {
            put(&mut d, "listing_id", listing.id);
            put(&mut d, "listing", convert::listing(listing));
        }
        PurchaseSucceeded { purchase, .. } => {
            put(&mut d, "purchase", convert::purchase(purchase));
        }
        PurchaseFailed {
            listing_id, error, ..
        } => {
            d = failure(id, error);
            put(&mut d, "listing_id", *listing_id);
        }
        SalesListed { sales, .. } => put(&mut d, "sales", convert::sales(sales)),
        ClaimsDone {
            sales,
            amount,
            error,
            ..
        } => {
            if let Some(error) = error {
                d = failure(id, error);
            }
            put(&mut d, "sales", *sales as i64);
            put(&mut d, "amount", *amount);
        }
        Withdrawn {
            item_id, quantity, ..
        } => {
            put(
                &mut d,
                "item_id",
                GString::from(item_id.as_deref().unwrap_or("")),
            );
            put(&mut d, "quantity", *quantity);
        }
        AccountUpdated { account, .. } => put(&mut d, "account", convert::account(account)),
        OrderPlaced { order, fills, .. } => {
            put(&mut d, "order", convert::order(order));
            put(&mut d, "fills", convert::fills(fills));
        }
        OrderCancelled {
            order, returned, ..
        } => {
            put(&mut d, "order", convert::order(order));
            put(&mut d, "returned", *returned);
        }
        OrdersListed {
            orders,
            next_cursor,
            ..
        } => {
            put(&mut d, "orders", convert::orders(orders));
            put(
                &mut d,
                "next_cursor",
                GString::from(next_cursor.as_deref().unwrap_or("")),
            );
        }
        DeliveriesCollected {
            deliveries, error, ..
        } => {
            if let Some(error) = error {
                d = failure(id, error);
            }
            put(&mut d, "deliveries", convert::deliveries(deliveries));
        }
        FeesQuoted { quote, .. } => put(&mut d, "quote", convert::fee_quote(quote)),
        MarketSummary { summary, .. } => put(&mut d, "summary", convert::market_summary(summary)),
        DepthListed { depth, .. } => put(&mut d, "depth", convert::depth(depth)),
        IdentitiesListed { identities, .. } => {
            put(&mut d, "identities", convert::identities(identities))
        }
        ItemsFound { items, catalog, .. } => {
            put(&mut d, "items", convert::item_matches(items));
            put(&mut d, "catalog", *catalog);
        }
        PriceHistory { history, .. } => put(&mut d, "history", convert::price_history(history)),
        RequestFailed { error, .. } if ends_on_failure => d = failure(id, error),
        RequestFailed { .. }
        | ProceedsClaimed { .. }
        | RequestRetrying { .. }
        | TradeStalled { .. }
        | BusyChanged { .. }
        | TradeRecovered { .. }
        | MarketChanged { .. }
        | MarketLive { .. }
        | MarketReload
        | Notification { .. }
        | DeliveriesWaiting { .. } => return None,
    }
    Some(d)
}

/// Lets go of every waiting request (the extension unloads: the engine's
/// objects must be released while it is still there).
pub fn forget_all() {
    DEFERRED.with(|d| d.borrow_mut().clear());
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    drop(pending);
}

/// How many requests wait (for tests and diagnostics).
pub fn pending_count() -> usize {
    PENDING.with(|p| p.borrow().len())
}
