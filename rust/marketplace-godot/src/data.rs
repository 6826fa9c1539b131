//! The typed values GDScript receives: a listing, a purchase, an order, a
//! fill, a delivery, an account, a notification, a request's result, …
//!
//! Each is a read-only `RefCounted` with typed, documented properties, so
//! the script editor completes `result.purchase.item_id` and a typo fails
//! when the script is parsed, not when a player presses a button. Their
//! property names are the HTTP API's field names. They are made once per
//! answer on the main thread and shared: the node's signal and the
//! request's `completed` carry the same objects.
//!
//! Values the server leaves out read as `0` or `""` (documented per
//! property); objects a result does not carry are `null`; lists are empty.

use godot::prelude::*;
use marketplace_client::protocol::{
    Account, Delivery, Depth, DepthLevel, FeeQuote, Fill, Identities, ItemMatch, Listing,
    MarketSummary, Notification, Order, PriceHistory, Purchase,
};
use marketplace_client::{ClientError, PendingTrade, SessionEvent};

/// Declares a read-only data class: every field a typed property with a
/// getter and no setter.
macro_rules! data_class {
    (
        $(#[doc = $doc:literal])*
        $name:ident {
            $( $(#[$fdoc:meta])* $field:ident : $ty:ty ),* $(,)?
        }
    ) => {
        $(#[doc = $doc])*
        #[derive(GodotClass)]
        #[class(no_init, base=RefCounted)]
        pub struct $name {
            $( $(#[$fdoc])* #[var(no_set)] pub $field: $ty, )*
        }

        #[godot_api]
        impl $name {}
    };
}

data_class! {
    /// A listing: items a player offers at a fixed unit price.
    MarketListing {
        /// The listing's id.
        id: i64,
        /// The seller's player id.
        seller_id: i64,
        /// The seller's name when browsing; `""` in a trade's answer.
        seller_name: GString,
        /// The item on offer.
        item_id: GString,
        /// Units listed.
        quantity: i64,
        /// Units still for sale.
        quantity_remaining: i64,
        /// Unit price in credits.
        price: i64,
        /// `"active"`, `"sold"`, `"cancelled"` or `"expired"`.
        status: GString,
        /// When it was listed (Unix seconds).
        created_at: i64,
        /// When it last changed (Unix seconds).
        updated_at: i64,
        /// When it expires (Unix seconds); `0`: never.
        expires_at: i64,
    }
}

data_class! {
    /// A purchase of units of a listing, as the buyer sees it.
    MarketPurchase {
        /// The purchase's id.
        id: i64,
        /// The listing bought from.
        listing_id: i64,
        /// The buyer's player id.
        buyer_id: i64,
        /// The seller's player id.
        seller_id: i64,
        /// The item bought.
        item_id: GString,
        /// Units bought.
        quantity: i64,
        /// Credits paid in all.
        price: i64,
        /// Credits per unit.
        unit_price: i64,
        /// When it happened (Unix seconds).
        created_at: i64,
    }
}

data_class! {
    /// A buy order: up to `quantity` units of an item at up to `max_price` each.
    MarketOrder {
        /// The order's id.
        id: i64,
        /// The buyer's player id.
        buyer_id: i64,
        /// The item wanted.
        item_id: GString,
        /// Units ordered.
        quantity: i64,
        /// Units still wanted.
        quantity_remaining: i64,
        /// Highest unit price paid.
        max_price: i64,
        /// Smallest part it takes; `0` or `1`: any.
        min_fill: i64,
        /// Credits the order still holds in escrow.
        escrow: i64,
        /// `"active"`, `"filled"`, `"cancelled"` or `"expired"`.
        status: GString,
        /// When it was placed (Unix seconds).
        created_at: i64,
        /// When it last changed (Unix seconds).
        updated_at: i64,
        /// When it expires (Unix seconds); `0`: never.
        expires_at: i64,
    }
}

data_class! {
    /// One trade between a listing and a buyer: a direct purchase or part of a buy order.
    MarketFill {
        /// The fill's id.
        id: i64,
        /// The listing sold from.
        listing_id: i64,
        /// The buy order filled; `0`: a direct purchase.
        order_id: i64,
        /// The buyer's player id.
        buyer_id: i64,
        /// The seller's player id.
        seller_id: i64,
        /// The item traded.
        item_id: GString,
        /// Units traded.
        quantity: i64,
        /// Credits per unit.
        unit_price: i64,
        /// Credits in all.
        price: i64,
        /// The market's fee, in credits.
        fee: i64,
        /// When it happened (Unix seconds).
        created_at: i64,
    }
}

data_class! {
    /// Something the market keeps for the player until `collect_deliveries()`.
    MarketDelivery {
        /// The delivery's id.
        id: i64,
        /// Why it came: `"order_fill"`, `"order_refund"`, `"listing_returned"`, …
        kind: GString,
        /// The item; `""`: credits.
        item_id: GString,
        /// Units, or credits when `item_id` is `""`.
        quantity: i64,
        /// The listing it came from; `0`: none.
        listing_id: i64,
        /// The buy order it came from; `0`: none.
        order_id: i64,
        /// When it was made (Unix seconds).
        created_at: i64,
    }
}

data_class! {
    /// What happened to the player's trades while they were away (or now):
    /// one per listing or order and kind, with running totals. The same
    /// `id` comes again with larger totals when more of an order fills.
    MarketNotification {
        /// The notification's id: key on it.
        id: i64,
        /// `"sold"`, `"order_filled"`, `"listing_expired"` or `"order_expired"`.
        kind: GString,
        /// The item.
        item_id: GString,
        /// The listing; `0`: none.
        listing_id: i64,
        /// The buy order; `0`: none.
        order_id: i64,
        /// Units in all.
        quantity: i64,
        /// Credits in all (earned, or refunded).
        credits: i64,
        /// Fees in all.
        fee: i64,
        /// How many fills it sums.
        fills: i64,
        /// First seen (Unix seconds).
        created_at: i64,
        /// Last grown (Unix seconds).
        updated_at: i64,
    }
}

data_class! {
    /// A market account: what the server keeps for the player.
    ///
    /// `mode`, `held_credits` and `available_credits` are the client's
    /// view and come only from `LocalPlayerData.get_market_account()`; in a
    /// server's answer they read `""`, `0` and `credits`.
    MarketAccount {
        /// Credits in the account.
        credits: i64,
        /// Item id → count held in the account.
        stash: VarDictionary,
        /// The account's version (grows with every change).
        version: i64,
        /// `"client_deposits"` or `"server_grants"`; `""` in a server's answer.
        mode: GString,
        /// Credits reserved by trades waiting for their answer.
        held_credits: i64,
        /// Credits free to spend.
        available_credits: i64,
    }
}

data_class! {
    /// What selling `quantity` units at `unit_price` would cost and bring.
    MarketFeeQuote {
        /// Units.
        quantity: i64,
        /// Credits per unit.
        unit_price: i64,
        /// What the buyer pays in all.
        buyer_pays: i64,
        /// The fee for listing.
        listing_fee: i64,
        /// The market's cut of the sale.
        sales_tax: i64,
        /// What the seller receives in all.
        seller_receives: i64,
    }
}

data_class! {
    /// An item's market at a glance.
    MarketItemSummary {
        /// The item.
        item_id: GString,
        /// Lowest asking unit price; `0`: nobody sells.
        best_ask: i64,
        /// Highest bid; `0`: nobody buys.
        best_bid: i64,
        /// Units offered at the best ask.
        ask_quantity: i64,
        /// Units wanted at the best bid.
        bid_quantity: i64,
        /// Last traded unit price; `0`: never traded.
        last_price: i64,
        /// Units traded in the last 24 hours.
        volume_24h: i64,
        /// Trades in the last 24 hours.
        trades_24h: i64,
        /// When the server computed it (Unix seconds).
        at: i64,
    }
}

data_class! {
    /// One price level of an item's book.
    MarketDepthLevel {
        /// Unit price.
        price: i64,
        /// Units at this price.
        quantity: i64,
        /// Listings or orders at this price.
        count: i64,
    }
}

data_class! {
    /// An item's book by price level, the best level first.
    MarketDepth {
        /// The item.
        item_id: GString,
        /// Listings by price, cheapest first.
        asks: Array<Gd<MarketDepthLevel>>,
        /// Buy orders by price, highest first.
        bids: Array<Gd<MarketDepthLevel>>,
    }
}

data_class! {
    /// One interval of an item's price history.
    MarketCandle {
        /// Start of the interval (Unix seconds).
        start: i64,
        /// First unit price.
        open: i64,
        /// Highest unit price.
        high: i64,
        /// Lowest unit price.
        low: i64,
        /// Last unit price.
        close: i64,
        /// Units traded.
        volume: i64,
        /// Trades.
        trades: i64,
    }
}

data_class! {
    /// An item's price history, oldest candle first.
    MarketPriceHistory {
        /// The item.
        item_id: GString,
        /// `"hour"` or `"day"`.
        interval: GString,
        /// The candles, oldest first.
        candles: Array<Gd<MarketCandle>>,
    }
}

data_class! {
    /// An account of the game's identity provider linked to the player.
    MarketIdentity {
        /// The provider's name in the server's configuration.
        provider: GString,
        /// The account's id at the provider.
        subject: GString,
        /// When it was linked (Unix seconds).
        linked_at: i64,
    }
}

data_class! {
    /// The player's ways in.
    MarketIdentities {
        /// Linked accounts.
        identities: Array<Gd<MarketIdentity>>,
        /// Whether a device id also logs in as the player.
        device: bool,
    }
}

data_class! {
    /// An item found by `search_items`.
    MarketItemMatch {
        /// The item.
        item_id: GString,
        /// Its display name in the server's catalog; `""`: none.
        name: GString,
    }
}

data_class! {
    /// A trade waiting for its definitive answer.
    MarketPendingTrade {
        /// The request that started it.
        request_id: i64,
        /// `"purchase"`, `"create_listing"`, `"reprice"`, `"cancel"`, `"claim"`, `"place_order"`, …
        kind: GString,
        /// The listing; `0`: none.
        listing_id: i64,
        /// The sale being claimed; `0`: none.
        sale_id: i64,
        /// The buy order; `0`: none.
        order_id: i64,
        /// The item; `""`: none.
        item_id: GString,
        /// Units; `0`: none.
        quantity: i64,
        /// Credits it holds.
        amount: i64,
        /// When it started (Unix seconds).
        created_at: i64,
        /// How long it has waited, in seconds.
        age_sec: f64,
        /// Tries so far.
        attempts: i64,
        /// The last attempt's code; `""`: none yet.
        last_error: GString,
        /// Not sent: saving fails (see `LocalPlayerData.save_failed`).
        waiting_for_save: bool,
        /// Why it waits for another server or player; `""`: it does not.
        waiting_for_server: GString,
    }
}

data_class! {
    /// Credits set aside by `LocalPlayerData.reserve_credits`.
    MarketHold {
        /// The hold's id (pass it to `commit_credits_hold` or `release_credits_hold`); `0` when refused.
        id: i64,
        /// Credits held.
        amount: i64,
        /// `""` when held; otherwise why not (`"insufficient_credits"`, `"invalid_argument"`, `"save_unavailable"`).
        code: GString,
    }
}

/// The result of a request: `completed`'s argument and `MarketRequest.result`.
///
/// Every result has `ok`, `code` (a stable error code, `""` when ok),
/// `message` (for logs; show the player a translation of `code`),
/// `request_id` and `kind`; then what the request produced:
///
/// | request | on success |
/// |---|---|
/// | `login`, `login_with_token`, `login_with_recovery_code` | `player_id`, `player_name` |
/// | `refresh_listings` | `listings`, `next_cursor` (`""` after the last page) |
/// | `create_listing`, `reprice_listing` | `listing` |
/// | `cancel_listing` | `listing_id`, `listing` |
/// | `buy_listing` | `purchase` (failure: `listing_id`, and `current_price` with `"price_changed"`) |
/// | `place_buy_order` | `order`, `fills` |
/// | `cancel_order` | `order`, `returned` |
/// | `get_orders` | `orders`, `next_cursor` |
/// | `collect_deliveries` | `deliveries` (also on a failure after some were saved) |
/// | `claim_proceeds` | `sales` (how many were claimed), `amount` (credits in all) |
/// | `withdraw_credits`, `withdraw_items` | `item_id` (`""` for credits), `quantity` |
/// | `refresh_market_account` | `account` |
/// | `quote_fees` | `quote` |
/// | `get_market_summary` | `summary` |
/// | `get_depth` | `depth` |
/// | `get_price_history` | `history` |
/// | `search_items` | `items`, `catalog` |
/// | `link_identity`, `unlink_identity`, `get_identities` | `identities` |
#[derive(GodotClass)]
#[class(no_init, base=RefCounted)]
pub struct MarketResult {
    /// True when the request did what it asked.
    #[var(no_set)]
    pub ok: bool,
    /// A stable error code from the codes table (`""` when ok): match on it,
    /// and translate it for the player.
    #[var(no_set)]
    pub code: GString,
    /// What went wrong, in English, for logs (`""` when ok).
    #[var(no_set)]
    pub message: GString,
    /// The request's id (the node's signals carry it as `request_id`).
    #[var(no_set)]
    pub request_id: i64,
    /// The kind of request (`MarketRequest.kind`).
    #[var(no_set)]
    pub kind: GString,
    /// The player's id (logins).
    #[var(no_set)]
    pub player_id: i64,
    /// The player's name (logins).
    #[var(no_set)]
    pub player_name: GString,
    /// The listing made, changed or withdrawn.
    #[var(no_set)]
    pub listing: Option<Gd<MarketListing>>,
    /// The listing a purchase or withdrawal named (also on a failure).
    #[var(no_set)]
    pub listing_id: i64,
    /// A page of listings.
    #[var(no_set)]
    pub listings: Array<Gd<MarketListing>>,
    /// The cursor of the next page (`refresh_listings`, `get_orders`); `""`
    /// after the last page.
    #[var(no_set)]
    pub next_cursor: GString,
    /// The purchase made.
    #[var(no_set)]
    pub purchase: Option<Gd<MarketPurchase>>,
    /// With `"price_changed"`: the listing's unit price now; otherwise `0`.
    #[var(no_set)]
    pub current_price: i64,
    /// With `"quantity_unavailable"`: the units that remain; otherwise `0`.
    #[var(no_set)]
    pub available: i64,
    /// The buy order placed or cancelled.
    #[var(no_set)]
    pub order: Option<Gd<MarketOrder>>,
    /// What a new buy order bought at once.
    #[var(no_set)]
    pub fills: Array<Gd<MarketFill>>,
    /// A page of the player's buy orders.
    #[var(no_set)]
    pub orders: Array<Gd<MarketOrder>>,
    /// Credits a cancelled order gave back.
    #[var(no_set)]
    pub returned: i64,
    /// What `collect_deliveries` brought into the save.
    #[var(no_set)]
    pub deliveries: Array<Gd<MarketDelivery>>,
    /// Sales claimed (`claim_proceeds`).
    #[var(no_set)]
    pub sales: i64,
    /// Credits claimed in all (`claim_proceeds`).
    #[var(no_set)]
    pub amount: i64,
    /// The item withdrawn; `""`: credits.
    #[var(no_set)]
    pub item_id: GString,
    /// Units or credits withdrawn.
    #[var(no_set)]
    pub quantity: i64,
    /// The market account.
    #[var(no_set)]
    pub account: Option<Gd<MarketAccount>>,
    /// A fee quote.
    #[var(no_set)]
    pub quote: Option<Gd<MarketFeeQuote>>,
    /// An item's market summary.
    #[var(no_set)]
    pub summary: Option<Gd<MarketItemSummary>>,
    /// An item's book.
    #[var(no_set)]
    pub depth: Option<Gd<MarketDepth>>,
    /// An item's price history.
    #[var(no_set)]
    pub history: Option<Gd<MarketPriceHistory>>,
    /// The player's linked accounts.
    #[var(no_set)]
    pub identities: Option<Gd<MarketIdentities>>,
    /// Items found.
    #[var(no_set)]
    pub items: Array<Gd<MarketItemMatch>>,
    /// Whether the server has a catalog of display names (`search_items`).
    #[var(no_set)]
    pub catalog: bool,
}

#[godot_api]
impl MarketResult {
    /// True when the outcome is final: a success, or a failure the server
    /// (or the client, before sending) decided for good. False for
    /// `"still_pending"`, `"timeout"`, `"offline"`, …: a trade may yet
    /// happen and will be told by the node's signals.
    #[func]
    fn is_definitive(&self) -> bool {
        self.ok
            || marketplace_client::ErrorCode::parse(&self.code.to_string())
                .is_some_and(|c| c.is_definitive())
    }

    /// True when a next page exists (`next_cursor` is not empty).
    #[func]
    fn has_next_page(&self) -> bool {
        !self.next_cursor.is_empty()
    }
}

impl MarketResult {
    fn blank(request_id: i64, kind: &str) -> MarketResult {
        MarketResult {
            ok: true,
            code: GString::new(),
            message: GString::new(),
            request_id,
            kind: kind.into(),
            player_id: 0,
            player_name: GString::new(),
            listing: None,
            listing_id: 0,
            listings: Array::new(),
            next_cursor: GString::new(),
            purchase: None,
            current_price: 0,
            available: 0,
            order: None,
            fills: Array::new(),
            orders: Array::new(),
            returned: 0,
            deliveries: Array::new(),
            sales: 0,
            amount: 0,
            item_id: GString::new(),
            quantity: 0,
            account: None,
            quote: None,
            summary: None,
            depth: None,
            history: None,
            identities: None,
            items: Array::new(),
            catalog: false,
        }
    }

    fn fail(&mut self, error: &ClientError) {
        self.ok = false;
        self.code = error.code.as_str().into();
        self.message = error.message.as_str().into();
        self.current_price = error.current_price.unwrap_or(0);
        self.available = error.available.unwrap_or(0);
    }
}

/// A failed request's result.
pub fn failure(request_id: i64, kind: &str, error: &ClientError) -> Gd<MarketResult> {
    let mut r = MarketResult::blank(request_id, kind);
    r.fail(error);
    Gd::from_object(r)
}

/// The result `event` gives its request, if it is an answer to one (also
/// `RequestFailed`, which ends every request but a claim that reached the
/// session). Built once: the node's signal and `completed` share it.
pub fn result_of(event: &SessionEvent, kind: &str) -> Option<Gd<MarketResult>> {
    use SessionEvent::*;
    if !ends_request(event) {
        return None;
    }
    let id = event.request_id()?.0 as i64;
    let mut r = MarketResult::blank(id, kind);
    match event {
        LoggedIn {
            player_id, name, ..
        } => {
            r.player_id = *player_id;
            r.player_name = name.as_str().into();
        }
        ListingsUpdated { page, .. } => {
            r.listings = read_only(page.listings.iter().map(listing).collect());
            r.next_cursor = page.next_cursor.as_deref().unwrap_or("").into();
        }
        ListingFetched { listing: l, .. }
        | ListingCreated { listing: l, .. }
        | ListingRepriced { listing: l, .. } => r.listing = Some(listing(l)),
        ListingCancelled { listing: l, .. } => {
            r.listing_id = l.id;
            r.listing = Some(listing(l));
        }
        PurchaseSucceeded { purchase: p, .. } => {
            r.listing_id = p.listing_id;
            r.purchase = Some(purchase(p));
        }
        PurchaseFailed {
            listing_id, error, ..
        } => {
            r.fail(error);
            r.listing_id = *listing_id;
        }
        ClaimsDone {
            sales,
            amount,
            error,
            ..
        } => {
            if let Some(error) = error {
                r.fail(error);
            }
            r.sales = *sales as i64;
            r.amount = *amount;
        }
        Withdrawn {
            item_id, quantity, ..
        } => {
            r.item_id = item_id.as_deref().unwrap_or("").into();
            r.quantity = *quantity;
        }
        AccountUpdated { account: a, .. } => r.account = Some(account(a)),
        OrderPlaced {
            order: o, fills: f, ..
        } => {
            r.order = Some(order(o));
            r.fills = read_only(f.iter().map(fill).collect());
        }
        OrderCancelled {
            order: o, returned, ..
        } => {
            r.order = Some(order(o));
            r.returned = *returned;
        }
        OrdersListed {
            orders,
            next_cursor,
            ..
        } => {
            r.orders = read_only(orders.iter().map(order).collect());
            r.next_cursor = next_cursor.as_deref().unwrap_or("").into();
        }
        DeliveriesCollected {
            deliveries, error, ..
        } => {
            if let Some(error) = error {
                r.fail(error);
            }
            r.deliveries = read_only(deliveries.iter().map(delivery).collect());
        }
        FeesQuoted { quote, .. } => r.quote = Some(fee_quote(quote)),
        MarketSummary { summary, .. } => r.summary = Some(market_summary(summary)),
        DepthListed { depth: d, .. } => r.depth = Some(depth(d)),
        IdentitiesListed { identities: i, .. } => r.identities = Some(identities(i)),
        ItemsFound { items, catalog, .. } => {
            r.items = read_only(items.iter().map(item_match).collect());
            r.catalog = *catalog;
        }
        PriceHistory { history, .. } => r.history = Some(price_history(history)),
        RequestFailed { error, .. } => r.fail(error),
        // Not answers (see `ends_request`).
        _ => return None,
    }
    Some(Gd::from_object(r))
}

/// True when `event` is the answer to a request: it has a result (a
/// `RequestFailed` too — it ends every request but a claim that reached
/// the session). Progress (`RequestRetrying`, `TradeStalled`, a claim's
/// per-sale `ProceedsClaimed`) and pushed changes are not.
pub fn ends_request(event: &SessionEvent) -> bool {
    use SessionEvent::*;
    match event {
        LoggedIn { .. }
        | ListingsUpdated { .. }
        | ListingFetched { .. }
        | ListingCreated { .. }
        | ListingRepriced { .. }
        | ListingCancelled { .. }
        | PurchaseSucceeded { .. }
        | PurchaseFailed { .. }
        | ClaimsDone { .. }
        | Withdrawn { .. }
        | AccountUpdated { .. }
        | OrderPlaced { .. }
        | OrderCancelled { .. }
        | OrdersListed { .. }
        | DeliveriesCollected { .. }
        | FeesQuoted { .. }
        | MarketSummary { .. }
        | DepthListed { .. }
        | IdentitiesListed { .. }
        | ItemsFound { .. }
        | PriceHistory { .. }
        | RequestFailed { .. } => true,
        SalesListed { .. }
        | ProceedsClaimed { .. }
        | RequestRetrying { .. }
        | TradeStalled { .. }
        | BusyChanged { .. }
        | TradeRecovered { .. }
        | MarketChanged { .. }
        | MarketLive { .. }
        | MarketReload
        | Notification { .. }
        | DeliveriesWaiting { .. } => false,
    }
}

/// A list a script cannot change: the same array reaches the node's signal
/// and the awaiting code, so one handler's `sort()` must not reorder what
/// another sees.
pub fn read_only<T: godot::meta::Element>(a: Array<T>) -> Array<T> {
    a.into_read_only()
}

fn s(text: &str) -> GString {
    text.into()
}

pub fn listing(l: &Listing) -> Gd<MarketListing> {
    Gd::from_object(MarketListing {
        id: l.id,
        seller_id: l.seller_id,
        seller_name: s(l.seller_name.as_deref().unwrap_or("")),
        item_id: s(&l.item_id),
        quantity: l.quantity,
        quantity_remaining: l.remaining(),
        price: l.price,
        status: s(l.status.as_str()),
        created_at: l.created_at,
        updated_at: l.updated_at,
        expires_at: l.expires_at.unwrap_or(0),
    })
}

pub fn purchase(p: &Purchase) -> Gd<MarketPurchase> {
    Gd::from_object(MarketPurchase {
        id: p.id,
        listing_id: p.listing_id,
        buyer_id: p.buyer_id,
        seller_id: p.seller_id,
        item_id: s(&p.item_id),
        quantity: p.quantity,
        price: p.price,
        unit_price: p.unit_price,
        created_at: p.created_at,
    })
}

pub fn order(o: &Order) -> Gd<MarketOrder> {
    Gd::from_object(MarketOrder {
        id: o.id,
        buyer_id: o.buyer_id,
        item_id: s(&o.item_id),
        quantity: o.quantity,
        quantity_remaining: o.quantity_remaining,
        max_price: o.max_price,
        min_fill: o.min_fill,
        escrow: o.escrow,
        status: s(o.status.as_str()),
        created_at: o.created_at,
        updated_at: o.updated_at,
        expires_at: o.expires_at.unwrap_or(0),
    })
}

pub fn fill(f: &Fill) -> Gd<MarketFill> {
    Gd::from_object(MarketFill {
        id: f.id,
        listing_id: f.listing_id,
        order_id: f.order_id.unwrap_or(0),
        buyer_id: f.buyer_id,
        seller_id: f.seller_id,
        item_id: s(&f.item_id),
        quantity: f.quantity,
        unit_price: f.unit_price,
        price: f.price,
        fee: f.fee,
        created_at: f.created_at,
    })
}

pub fn delivery(x: &Delivery) -> Gd<MarketDelivery> {
    Gd::from_object(MarketDelivery {
        id: x.id,
        kind: s(x.kind.as_str()),
        item_id: s(x.item_id.as_deref().unwrap_or("")),
        quantity: x.quantity,
        listing_id: x.listing_id.unwrap_or(0),
        order_id: x.order_id.unwrap_or(0),
        created_at: x.created_at,
    })
}

pub fn notification(n: &Notification) -> Gd<MarketNotification> {
    Gd::from_object(MarketNotification {
        id: n.id,
        kind: s(n.kind.as_str()),
        item_id: s(&n.item_id),
        listing_id: n.listing_id.unwrap_or(0),
        order_id: n.order_id.unwrap_or(0),
        quantity: n.quantity,
        credits: n.credits,
        fee: n.fee,
        fills: n.fills,
        created_at: n.created_at,
        updated_at: n.updated_at,
    })
}

/// Item id → count, as a `Dictionary`.
pub fn counts<'a>(items: impl IntoIterator<Item = (&'a String, &'a i64)>) -> VarDictionary {
    let mut d = VarDictionary::new();
    for (item, n) in items {
        d.set(item.as_str(), *n);
    }
    d
}

/// A server's answer about the account (the client's view fields blank).
pub fn account(a: &Account) -> Gd<MarketAccount> {
    Gd::from_object(MarketAccount {
        credits: a.credits,
        stash: counts(&a.stash).into_read_only(),
        version: a.version,
        mode: GString::new(),
        held_credits: 0,
        available_credits: a.credits,
    })
}

/// The client's view of the market account (`LocalPlayerData`).
pub fn account_view(st: &marketplace_client::PlayerState) -> Gd<MarketAccount> {
    let mode = match st.market.mode {
        marketplace_client::protocol::EconomyMode::ClientDeposits => "client_deposits",
        marketplace_client::protocol::EconomyMode::ServerGrants => "server_grants",
    };
    Gd::from_object(MarketAccount {
        credits: st.market.credits,
        stash: counts(&st.market.stash).into_read_only(),
        version: st.market.version,
        mode: mode.into(),
        held_credits: st.market_held_credits(),
        available_credits: st.market_available_credits(),
    })
}

pub fn fee_quote(q: &FeeQuote) -> Gd<MarketFeeQuote> {
    Gd::from_object(MarketFeeQuote {
        quantity: q.quantity,
        unit_price: q.unit_price,
        buyer_pays: q.buyer_pays,
        listing_fee: q.listing_fee,
        sales_tax: q.sales_tax,
        seller_receives: q.seller_receives,
    })
}

pub fn market_summary(m: &MarketSummary) -> Gd<MarketItemSummary> {
    Gd::from_object(MarketItemSummary {
        item_id: s(&m.item_id),
        best_ask: m.best_ask.unwrap_or(0),
        best_bid: m.best_bid.unwrap_or(0),
        ask_quantity: m.ask_quantity,
        bid_quantity: m.bid_quantity,
        last_price: m.last_price.unwrap_or(0),
        volume_24h: m.volume_24h,
        trades_24h: m.trades_24h,
        at: m.at,
    })
}

fn depth_level(l: &DepthLevel) -> Gd<MarketDepthLevel> {
    Gd::from_object(MarketDepthLevel {
        price: l.price,
        quantity: l.quantity,
        count: l.count,
    })
}

pub fn depth(x: &Depth) -> Gd<MarketDepth> {
    Gd::from_object(MarketDepth {
        item_id: s(&x.item_id),
        asks: read_only(x.asks.iter().map(depth_level).collect()),
        bids: read_only(x.bids.iter().map(depth_level).collect()),
    })
}

pub fn price_history(h: &PriceHistory) -> Gd<MarketPriceHistory> {
    Gd::from_object(MarketPriceHistory {
        item_id: s(&h.item_id),
        interval: s(h.interval.as_str()),
        candles: read_only(
            h.candles
                .iter()
                .map(|c| {
                    Gd::from_object(MarketCandle {
                        start: c.start,
                        open: c.open,
                        high: c.high,
                        low: c.low,
                        close: c.close,
                        volume: c.volume,
                        trades: c.trades,
                    })
                })
                .collect(),
        ),
    })
}

pub fn identities(x: &Identities) -> Gd<MarketIdentities> {
    Gd::from_object(MarketIdentities {
        identities: read_only(
            x.identities
                .iter()
                .map(|i| {
                    Gd::from_object(MarketIdentity {
                        provider: s(&i.provider),
                        subject: s(&i.subject),
                        linked_at: i.linked_at,
                    })
                })
                .collect(),
        ),
        device: x.device,
    })
}

pub fn item_match(i: &ItemMatch) -> Gd<MarketItemMatch> {
    Gd::from_object(MarketItemMatch {
        item_id: s(&i.item_id),
        name: s(i.name.as_deref().unwrap_or("")),
    })
}

pub fn pending_trade(t: &PendingTrade) -> Gd<MarketPendingTrade> {
    Gd::from_object(MarketPendingTrade {
        request_id: t.request_id.0 as i64,
        kind: s(t.kind),
        listing_id: t.listing_id.unwrap_or(0),
        sale_id: t.sale_id.unwrap_or(0),
        order_id: t.order_id.unwrap_or(0),
        item_id: s(t.item_id.as_deref().unwrap_or("")),
        quantity: t.quantity.unwrap_or(0),
        amount: t.amount,
        created_at: t.created_at,
        age_sec: t.age.as_secs_f64(),
        attempts: i64::from(t.attempts),
        last_error: s(t.last_error.map_or("", |c| c.as_str())),
        waiting_for_save: t.waiting_for_save,
        waiting_for_server: s(t.waiting_for_owner.as_deref().unwrap_or("")),
    })
}

/// A hold made, or refused with `code`.
pub fn hold(id: i64, amount: i64, code: &str) -> Gd<MarketHold> {
    Gd::from_object(MarketHold {
        id,
        amount,
        code: code.into(),
    })
}
