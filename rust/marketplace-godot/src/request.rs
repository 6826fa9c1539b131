//! `MarketRequest`: one request to the marketplace, awaitable from GDScript.
//!
//! Every request method of `TradingMarketplace` returns one, so a script may
//! either await it —
//!
//! ```gdscript
//! var result: MarketResult = await market.buy_listing(id, price).completed
//! ```
//!
//! — or keep connecting the node's signals, matching `request.id` against
//! their `request_id`. Both see the same answers (the very same objects):
//! for each request the node's signal comes first, then `completed`.
//!
//! # Where requests live
//! A request outlives the node that made it, like the trade behind it (see
//! `save_slot`): the pending ones are kept in a main-thread registry by id,
//! and completed by whichever of our nodes turns the answer into a signal —
//! or, when no `TradingMarketplace` listens to the save any more, by the
//! save's own frame tick. `completed` is never emitted inside the call that
//! made the request (an `await` on it always gets there first), and at most
//! once.
//!
//! # Giving up
//! `cancel()` ends a read at once (`"cancelled"`: nothing changed, its
//! answer and its signal are dropped — taken out of the save's queues if
//! already there, or when they come); a request that changes something (a
//! trade, a login, linking) cannot be cancelled — once asked for it goes to
//! the server (a trade is journaled: I4), so `cancel()` on it returns false
//! and changes nothing. `give_up_after(seconds)` ends the *wait* on any
//! request: when no answer came in time, `completed` carries
//! `"still_pending"` (a read: `"cancelled"`), and the real outcome still
//! comes through the node's signals and `LocalPlayerData`. Deadlines are
//! checked at the start of a frame's tick, so an answer emitted in an
//! earlier frame always wins.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use godot::prelude::*;
use marketplace_client::{ClientError, ErrorCode, SessionEvent};

use crate::data::{self, MarketResult};

/// One request to the marketplace and, once known, its result.
///
/// `result` (also the argument of `completed`) is a `MarketResult`: `ok`,
/// `code`, `message`, and what the request produced (see `MarketResult`).
/// A trade without a definitive answer is retried and its request stays
/// pending (see `TradingMarketplace.trade_stalled`); to stop waiting for
/// it, `give_up_after(seconds)`.
#[derive(GodotClass)]
#[class(no_init, base=RefCounted)]
pub struct MarketRequest {
    /// The id the node's signals carry as `request_id`.
    #[var(no_set)]
    id: i64,
    /// The method that made it: `"buy_listing"`, `"refresh_listings"`, …
    #[var(get = get_kind, no_set)]
    #[allow(dead_code)] // The property's slot; `get_kind` reads `method`.
    kind: GString,
    /// Whether `result` is in.
    #[var(no_set)]
    done: bool,
    /// The result (`null` until `done`).
    #[var(no_set)]
    result: Option<Gd<MarketResult>>,
    /// The method's name, made a `String` only when asked for.
    method: &'static str,
    /// Only `ClaimsDone` ends a claim that reached the session; a refusal
    /// before it did ends it too.
    ends_on_failure: bool,
    /// Refused before reaching the server: its answer is decided (it comes
    /// end of the frame), so there is no wait to give up.
    refused: bool,
    /// The save (its serial) whose session carries it (none: refused
    /// before any did).
    slot: Option<u64>,
    base: Base<RefCounted>,
}

#[godot_api]
impl MarketRequest {
    /// The answer is in: the same object as `result`. Emitted once.
    #[signal]
    fn completed(result: Gd<MarketResult>);

    /// The method that made the request.
    #[func]
    fn get_kind(&self) -> GString {
        self.method.into()
    }

    /// True once done and successful.
    #[func]
    fn is_ok(&self) -> bool {
        self.result.as_ref().is_some_and(|r| r.bind().ok)
    }

    /// The error code once done (`""` when ok or not done).
    #[func]
    fn get_code(&self) -> GString {
        self.result
            .as_ref()
            .map(|r| r.bind().code.clone())
            .unwrap_or_default()
    }

    /// True while `cancel()` would cancel it: a read (browsing, quotes,
    /// summaries, the account, identities) not done yet. A request that
    /// changes something — a trade, a login, linking — never can.
    #[func]
    fn can_cancel(&self) -> bool {
        !self.done && is_read(self.method) && PENDING.with(|p| p.borrow().contains_key(&self.id))
    }

    /// Cancels a read (see `can_cancel`): it ends at once with
    /// `"cancelled"` and its answer, also one already arrived but not
    /// signalled yet, is dropped with its signal. Returns false, changing
    /// nothing, for a request that changes something or one already done:
    /// a trade asked for is journaled and reaches the server whatever the
    /// game does — `give_up_after` stops waiting for it instead.
    #[func]
    fn cancel(&mut self) -> bool {
        if !self.can_cancel() {
            return false;
        }
        let id = self.id;
        if PENDING.with(|p| p.borrow_mut().remove(&id)).is_none() {
            return false;
        }
        drop_read(id, self.slot);
        let error = ClientError::new(ErrorCode::Cancelled, "Cancelled by the game");
        let result = data::failure(id, self.method, &error);
        // Never inside the call: an await after `cancel()` still hears it.
        FINISHED.with(|f| f.borrow_mut().push_back((self.to_gd(), result)));
        true
    }

    /// Stops waiting after `seconds` (from now) if no answer came:
    /// `completed` then carries `"still_pending"` for a request that
    /// changes something — its real outcome still comes, through the node's
    /// signals (`purchase_succeeded`, `purchase_failed`, `logged_in`, …) and
    /// `LocalPlayerData`, and a trade shows in `get_pending_trades()`
    /// meanwhile — or `"cancelled"` for a read (its answer is dropped).
    /// Nothing is undone. A request refused before it was sent keeps its
    /// refusal (it comes at the end of the frame). Returns this request, to await in one
    /// line:
    /// `var r: MarketResult = await market.buy_listing(id, price).give_up_after(5.0).completed`.
    #[func]
    fn give_up_after(&mut self, seconds: f64) -> Gd<MarketRequest> {
        if !self.done && !self.refused {
            let seconds = if seconds.is_finite() {
                seconds.clamp(0.0, 1e7)
            } else {
                0.0
            };
            let at = Instant::now() + Duration::from_secs_f64(seconds);
            DEADLINES.with(|d| d.borrow_mut().push((at, self.id)));
        }
        self.to_gd()
    }
}

/// Drops the answer of read `id` on the save `slot`: now, if it is already
/// in the save's queues; else when it comes.
fn drop_read(id: i64, slot: Option<u64>) {
    let answered = slot.is_some_and(|serial| crate::save_slot::purge_answer(serial, id));
    if !answered {
        DROPPED.with(|d| d.borrow_mut().insert(id, slot));
    }
}

/// Kinds that only read: cancelling them changes nothing.
fn is_read(method: &str) -> bool {
    matches!(
        method,
        "refresh_listings"
            | "get_orders"
            | "get_market_summary"
            | "search_items"
            | "get_depth"
            | "get_price_history"
            | "quote_fees"
            | "refresh_market_account"
            | "get_identities"
    )
}

thread_local! {
    /// Requests waiting for their answer, by id. Main thread only.
    static PENDING: RefCell<rustc_hash::FxHashMap<i64, Gd<MarketRequest>>> = RefCell::new(rustc_hash::FxHashMap::default());
    /// Ids of requests refused before any session existed (far above the
    /// sessions' own, which count from 1 per process).
    static NEXT_LOCAL_ID: Cell<i64> = const { Cell::new(1 << 40) };
    /// Completions to run at the next frame tick, when no node is bound:
    /// answers left over when a save closed or a node went away.
    static DEFERRED: RefCell<VecDeque<Deferred>> = const { RefCell::new(VecDeque::new()) };
    /// Requests ended by the game (cancel, give up): `completed` at the
    /// next tick.
    static FINISHED: RefCell<VecDeque<(Gd<MarketRequest>, Gd<MarketResult>)>> = const { RefCell::new(VecDeque::new()) };
    /// When to stop waiting for a request (`give_up_after`).
    static DEADLINES: RefCell<Vec<(Instant, i64)>> = const { RefCell::new(Vec::new()) };
    /// Reads the game cancelled whose answer has not come yet (with the
    /// save they wait on): their answers are dropped, signals too.
    static DROPPED: RefCell<HashMap<i64, Option<u64>>> = RefCell::new(HashMap::new());
}

enum Deferred {
    Event(Box<SessionEvent>),
    /// The save closed: whatever of its requests still waits ends with
    /// `shutting_down`.
    CloseSlot(u64),
}

/// A fresh id for a request refused before it reached a session.
pub fn local_id() -> i64 {
    NEXT_LOCAL_ID.with(|n| {
        let id = n.get() + 1;
        n.set(id);
        id
    })
}

/// A new pending request made by `method` on the save `slot` (its
/// serial); `refused`: it failed before reaching the session, so its
/// failure (reported at the end of the frame, never inside the call) ends it.
pub fn track(id: i64, method: &'static str, refused: bool, slot: Option<u64>) -> Gd<MarketRequest> {
    let request = Gd::from_init_fn(|base| MarketRequest {
        id,
        kind: GString::new(),
        done: false,
        result: None,
        method,
        ends_on_failure: method != "claim_proceeds" || refused,
        refused,
        slot,
        base,
    });
    PENDING.with(|p| p.borrow_mut().insert(id, request.clone()));
    request
}

/// The method that made the waiting request `id` ("" when none waits).
pub fn method_of(id: i64) -> &'static str {
    PENDING.with(|p| p.borrow().get(&id).map(|r| r.bind().method).unwrap_or(""))
}

/// True when `event` belongs to a read the game cancelled: it is dropped
/// (no signal, no result). Its answer forgets the cancellation. Called
/// where the save hands events to its nodes, once per event.
pub fn drop_if_cancelled(event: &SessionEvent) -> bool {
    let Some(id) = event.request_id().map(|r| r.0 as i64) else {
        return false;
    };
    DROPPED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_empty() || !d.contains_key(&id) {
            return false;
        }
        if data::ends_request(event) {
            d.remove(&id);
        }
        true
    })
}

/// Completes the request `event` ends, if one waits, with `result` (built
/// here when not given): emits `completed`. Call with nothing borrowed
/// (the handler may call anything).
pub fn complete(event: &SessionEvent, result: Option<Gd<MarketResult>>) {
    let Some(id) = event.request_id().map(|r| r.0 as i64) else {
        return;
    };
    let Some(request) = PENDING.with(|p| p.borrow().get(&id).cloned()) else {
        if data::ends_request(event) {
            // A cancelled read's answer that no queue filtered: forget it.
            DROPPED.with(|d| d.borrow_mut().remove(&id));
        }
        return;
    };
    let (method, ends_on_failure) = {
        let r = request.bind();
        (r.method, r.ends_on_failure)
    };
    if matches!(event, SessionEvent::RequestFailed { .. }) && !ends_on_failure {
        return;
    }
    let Some(result) = result.or_else(|| data::result_of(event, method)) else {
        return;
    };
    PENDING.with(|p| p.borrow_mut().remove(&id));
    finish(request, result);
}

/// Stores the result and emits `completed` (the request is already out of
/// the registry).
fn finish(mut request: Gd<MarketRequest>, result: Gd<MarketResult>) {
    let id = {
        let mut r = request.bind_mut();
        if r.done {
            return;
        }
        r.done = true;
        r.result = Some(result.clone());
        r.id
    };
    DEADLINES.with(|d| {
        let mut d = d.borrow_mut();
        if !d.is_empty() {
            d.retain(|(_, waiting)| *waiting != id);
        }
    });
    request.signals().completed().emit(&result);
}

/// Completes the request `event` ends at the next frame tick (for callers
/// that may hold a node or a slot).
pub fn complete_later(event: SessionEvent) {
    DEFERRED.with(|d| d.borrow_mut().push_back(Deferred::Event(Box::new(event))));
}

/// Ends, at the next frame tick, every request still waiting on the save
/// `serial` (it closed: their answers can no longer come).
pub fn close_slot_later(serial: u64) {
    DEFERRED.with(|d| d.borrow_mut().push_back(Deferred::CloseSlot(serial)));
}

/// Runs the deferred completions and the waits given up on. Call with
/// nothing borrowed.
pub fn run_deferred() {
    while let Some(next) = DEFERRED.with(|d| d.borrow_mut().pop_front()) {
        match next {
            Deferred::Event(event) => complete(&event, None),
            Deferred::CloseSlot(serial) => {
                // Cancelled reads of that save: their answers cannot come.
                DROPPED.with(|d| d.borrow_mut().retain(|_, s| *s != Some(serial)));
                let ids: Vec<i64> = PENDING.with(|p| {
                    p.borrow()
                        .iter()
                        .filter(|(_, r)| r.bind().slot == Some(serial))
                        .map(|(id, _)| *id)
                        .collect()
                });
                for id in ids {
                    let error = ClientError::new(
                        ErrorCode::ShuttingDown,
                        "The save file this request belonged to was closed before its answer came",
                    );
                    if let Some(request) = PENDING.with(|p| p.borrow_mut().remove(&id)) {
                        let method = request.bind().method;
                        finish(request, data::failure(id, method, &error));
                    }
                }
            }
        }
    }
    while let Some((request, result)) = FINISHED.with(|f| f.borrow_mut().pop_front()) {
        finish(request, result);
    }
}

/// Ends the waits whose `give_up_after` time has come (their `completed`
/// at this tick's `run_deferred`). Called at the start of a frame's tick,
/// before new answers come in: an answer signalled in an earlier frame
/// always wins.
pub fn give_up_due() {
    let due: Vec<i64> = DEADLINES.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_empty() {
            return Vec::new();
        }
        let now = Instant::now();
        let due = d
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .collect();
        d.retain(|(at, _)| *at > now);
        due
    });
    for id in due {
        let Some(request) = PENDING.with(|p| p.borrow_mut().remove(&id)) else {
            continue;
        };
        let (method, slot) = {
            let r = request.bind();
            (r.method, r.slot)
        };
        let error = if is_read(method) {
            drop_read(id, slot);
            ClientError::new(
                ErrorCode::Cancelled,
                "No answer in the time the game waits (give_up_after); the read was dropped",
            )
        } else {
            ClientError::new(
                ErrorCode::StillPending,
                "No answer in the time the game waits (give_up_after); the request goes on and its outcome comes through the node's signals",
            )
        };
        FINISHED.with(|f| {
            f.borrow_mut()
                .push_back((request, data::failure(id, method, &error)))
        });
    }
}

/// Lets go of every waiting request (the extension unloads: the engine's
/// objects must be released while it is still there).
pub fn forget_all() {
    DEFERRED.with(|d| d.borrow_mut().clear());
    DEADLINES.with(|d| d.borrow_mut().clear());
    DROPPED.with(|d| d.borrow_mut().clear());
    let finished = FINISHED.with(|f| std::mem::take(&mut *f.borrow_mut()));
    drop(finished);
    let pending = PENDING.with(|p| std::mem::take(&mut *p.borrow_mut()));
    drop(pending);
}

/// How many requests wait (for tests and diagnostics).
pub fn pending_count() -> usize {
    PENDING.with(|p| p.borrow().len())
}
