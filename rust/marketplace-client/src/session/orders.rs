//! Buy orders, deliveries and fee quotes: the session's side of a real
//! market.
//!
//! - **A buy order** holds `quantity × max_price` credits the moment it is
//!   placed (in the save, deposited with the order; or in the market
//!   account under server grants), journaled and settled like every trade:
//!   the hold is committed when the server says the order is placed, and
//!   released only on a definitive refusal (I4). From then on the credits
//!   are the order's escrow on the server, which fills spend while the
//!   player is away.
//! - **Deliveries** are what the market keeps for the player meanwhile —
//!   the items an order bought, the credits it did not spend, a listing's
//!   escrow after it expired. [`TradingSession::collect_deliveries`] lists
//!   them and collects them with journaled, keyed requests (one per kind of
//!   item), so each arrives in the save exactly once, through crashes, and
//!   is reported only once saved (I3).

use marketplace_protocol::{Collected, DeliveriesPage, MarketChange};

use super::{invalid, SessionEvent, Tracked, TradingSession};
use crate::client::{Command, RequestId};
use crate::error::ClientError;
use crate::state::Applied;
use crate::store::PlayerStore;

/// How a `collect_deliveries` request is doing.
#[derive(Default)]
pub(super) struct CollectProgress {
    /// Pages still being read.
    listing: bool,
    /// Collects journaled and not settled yet.
    outstanding: usize,
    deliveries: Vec<marketplace_protocol::Delivery>,
    error: Option<ClientError>,
}

/// The most ids one collect request carries (the server's bound).
const COLLECT_BATCH: usize = 100;

impl TradingSession {
    /// Places a buy order for `quantity` units of `item_id` at up to
    /// `max_price` each, taking fills of at least `min_fill` units (or the
    /// rest of the order), resting for `duration_secs` (`None`: the
    /// server's default). Holds `quantity × max_price` credits at once.
    pub fn place_buy_order(
        &mut self,
        store: &mut PlayerStore,
        item_id: &str,
        quantity: i64,
        max_price: i64,
        min_fill: Option<i64>,
        duration_secs: Option<i64>,
    ) -> Result<RequestId, ClientError> {
        marketplace_protocol::check_id("item_id", item_id).map_err(invalid)?;
        marketplace_protocol::check_quantity(quantity).map_err(invalid)?;
        marketplace_protocol::check_price("max_price", max_price).map_err(invalid)?;
        let escrow = marketplace_protocol::check_total(quantity, max_price).map_err(invalid)?;
        if min_fill.is_some_and(|m| !(1..=quantity).contains(&m)) {
            return Err(invalid("min_fill must be between 1 and the quantity"));
        }
        if duration_secs.is_some_and(|d| d < 1) {
            return Err(invalid("duration must be at least 1 second"));
        }
        let (hold, deposit) = self.credit_hold(store, escrow);
        self.journal(
            store,
            MarketChange::PlaceOrder {
                item_id: item_id.to_string(),
                quantity,
                max_price,
                min_fill,
                duration_secs,
                deposit,
            },
            Some(hold),
            None,
        )
    }

    /// Cancels one of the player's buy orders: what its escrow still holds
    /// comes back once the server says so. Fills made before the cancel
    /// stay (their deliveries wait as usual).
    pub fn cancel_order(
        &mut self,
        store: &mut PlayerStore,
        order_id: i64,
    ) -> Result<RequestId, ClientError> {
        if order_id < 1 {
            return Err(invalid("order id must be positive"));
        }
        self.journal(store, MarketChange::CancelOrder { order_id }, None, None)
    }

    /// The player's buy orders: `status` `active`, `closed` or `None` (all).
    pub fn list_orders(
        &mut self,
        status: Option<&str>,
        cursor: Option<String>,
    ) -> Result<RequestId, ClientError> {
        if status.is_some_and(|s| !matches!(s, "active" | "closed" | "all")) {
            return Err(invalid("status must be active, closed or all"));
        }
        self.send_now(
            Command::MyOrders {
                status: status.map(str::to_string),
                cursor,
            },
            Tracked::Orders,
        )
    }

    /// What a sale of `quantity` units at `price` each costs in fees and
    /// brings the seller, as the server charges it now.
    pub fn quote_fees(&mut self, quantity: i64, price: i64) -> Result<RequestId, ClientError> {
        marketplace_protocol::check_quantity(quantity).map_err(invalid)?;
        marketplace_protocol::check_total(quantity, price).map_err(invalid)?;
        self.send_now(Command::FeeQuote { quantity, price }, Tracked::FeeQuote)
    }

    /// An item's market summary: best ask and bid, last price, 24 h volume.
    pub fn market_summary(&mut self, item_id: &str) -> Result<RequestId, ClientError> {
        marketplace_protocol::check_id("item_id", item_id).map_err(invalid)?;
        let command = Command::MarketSummary {
            item_id: item_id.to_string(),
        };
        self.send_now(command, Tracked::MarketData)
    }

    /// Items whose id starts with `text` or whose catalog name holds it,
    /// best first, at most `limit` (1–100): a shop's search box.
    pub fn search_items(&mut self, text: &str, limit: u32) -> Result<RequestId, ClientError> {
        let text = marketplace_protocol::check_search(text).map_err(invalid)?;
        if !(1..=100).contains(&limit) {
            return Err(invalid("limit must be between 1 and 100"));
        }
        let command = Command::SearchItems {
            search: text.to_string(),
            limit,
        };
        self.send_now(command, Tracked::MarketData)
    }

    /// An item's book by price level, `levels` (1–100) a side.
    pub fn depth(&mut self, item_id: &str, levels: u32) -> Result<RequestId, ClientError> {
        marketplace_protocol::check_id("item_id", item_id).map_err(invalid)?;
        if !(1..=100).contains(&levels) {
            return Err(invalid("levels must be between 1 and 100"));
        }
        let command = Command::Depth {
            item_id: item_id.to_string(),
            levels,
        };
        self.send_now(command, Tracked::MarketData)
    }

    /// An item's price history: candles per `hour` or `day` between `from`
    /// and `to` (Unix seconds; `None`: the last 48 intervals).
    pub fn price_history(
        &mut self,
        item_id: &str,
        interval: &str,
        from: Option<i64>,
        to: Option<i64>,
    ) -> Result<RequestId, ClientError> {
        marketplace_protocol::check_id("item_id", item_id).map_err(invalid)?;
        if !matches!(interval, "hour" | "day") {
            return Err(invalid("interval must be hour or day"));
        }
        let command = Command::PriceHistory {
            item_id: item_id.to_string(),
            interval: interval.to_string(),
            from,
            to,
        };
        self.send_now(command, Tracked::MarketData)
    }

    /// Collects everything the market keeps for the player. Ends with one
    /// [`SessionEvent::DeliveriesCollected`], after what came in is saved.
    pub fn collect_deliveries(&mut self) -> Result<RequestId, ClientError> {
        let origin = self.client.next_request_id();
        self.client
            .submit_with(origin, Command::ListDeliveries { cursor: None }, None)?;
        self.tracked.insert(origin, Tracked::CollectAll { origin });
        self.collects.insert(
            origin,
            CollectProgress {
                listing: true,
                ..CollectProgress::default()
            },
        );
        Ok(origin)
    }

    /// A page of deliveries for `origin`: one journaled collect per kind of
    /// item (of at most [`COLLECT_BATCH`]), skipping those a journaled
    /// collect already carries.
    pub(super) fn collect_page(
        &mut self,
        store: &mut PlayerStore,
        origin: RequestId,
        page: DeliveriesPage,
    ) {
        let already: Vec<i64> = store
            .state()
            .journal
            .values()
            .flat_map(|p| match &p.op {
                MarketChange::Collect { delivery_ids } => delivery_ids.clone(),
                _ => Vec::new(),
            })
            .collect();
        let mut by_kind: std::collections::BTreeMap<Option<String>, Vec<i64>> =
            std::collections::BTreeMap::new();
        for d in page
            .deliveries
            .iter()
            .filter(|d| d.collected_at.is_none() && !already.contains(&d.id))
        {
            by_kind.entry(d.item_id.clone()).or_default().push(d.id);
        }
        for ids in by_kind.into_values() {
            for batch in ids.chunks(COLLECT_BATCH) {
                let op = MarketChange::Collect {
                    delivery_ids: batch.to_vec(),
                };
                match self.journal(store, op, None, Some(origin)) {
                    Ok(_) => {
                        if let Some(c) = self.collects.get_mut(&origin) {
                            c.outstanding += 1;
                        }
                    }
                    Err(error) => self.collect_failed(origin, error),
                }
            }
        }
        if let Some(cursor) = page.next_cursor {
            let next = self.client.next_request_id();
            let command = Command::ListDeliveries {
                cursor: Some(cursor),
            };
            match self.client.submit_with(next, command, None) {
                Ok(()) => {
                    self.tracked.insert(next, Tracked::CollectAll { origin });
                    return;
                }
                Err(error) => self.collect_failed(origin, error),
            }
        }
        self.collect_listed(store, origin);
    }

    /// `origin`'s pages are read (or could not be).
    pub(super) fn collect_listed(&mut self, store: &PlayerStore, origin: RequestId) {
        if let Some(c) = self.collects.get_mut(&origin) {
            c.listing = false;
        }
        self.collects_maybe_done(store, origin);
    }

    pub(super) fn collect_failed(&mut self, origin: RequestId, error: ClientError) {
        if let Some(c) = self.collects.get_mut(&origin) {
            if c.error.is_none() {
                c.error = Some(error);
            }
        }
    }

    /// One of `origin`'s collects settled (`collected` its deliveries) or
    /// ended without settling (`error`).
    pub(super) fn collect_settled(
        &mut self,
        store: &PlayerStore,
        origin: RequestId,
        collected: Vec<marketplace_protocol::Delivery>,
        error: Option<ClientError>,
    ) {
        if let Some(c) = self.collects.get_mut(&origin) {
            c.outstanding = c.outstanding.saturating_sub(1);
            c.deliveries.extend(collected);
            if c.error.is_none() {
                c.error = error;
            }
        }
        self.collects_maybe_done(store, origin);
    }

    fn collects_maybe_done(&mut self, store: &PlayerStore, origin: RequestId) {
        let done = self
            .collects
            .get(&origin)
            .is_some_and(|c| !c.listing && c.outstanding == 0);
        if done {
            if let Some(c) = self.collects.remove(&origin) {
                self.emit_durable(
                    store,
                    SessionEvent::DeliveriesCollected {
                        request_id: origin,
                        deliveries: c.deliveries,
                        error: c.error,
                    },
                );
            }
        }
    }

    /// True while `origin` is a `collect_deliveries` request.
    pub(super) fn is_collect(&self, origin: RequestId) -> bool {
        self.collects.contains_key(&origin)
    }
}

/// What a collect's answer does to the save: its deliveries (all of one
/// kind, as the session asks) into the save or the market account. `None`
/// when the answer mixes kinds (not what was asked: it settles nothing).
pub(super) fn applied_of_collect(collected: &Collected) -> Option<Applied> {
    let kind = collected.deliveries.first().map(|d| d.item_id.clone())?;
    if collected.deliveries.iter().any(|d| d.item_id != kind) {
        return None;
    }
    let total: i64 = collected.deliveries.iter().map(|d| d.quantity).sum();
    let transfer = collected.transfer.as_ref();
    let into_save = transfer.is_none_or(|t| t.delivered > 0);
    let mut applied = Applied {
        market_view: transfer.and_then(|t| t.account.clone()),
        ..Applied::default()
    };
    match (kind, into_save) {
        (Some(item), true) => applied.items_in = Some((item, total)),
        (Some(item), false) => applied.market_items_in = Some((item, total)),
        (None, true) => applied.credits_in = total,
        (None, false) => applied.market_credits_in = total,
    }
    Some(applied)
}
