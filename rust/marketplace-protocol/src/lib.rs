//! Wire types of the marketplace HTTP API, version 1.
//!
//! This crate is the single description of what crosses the network: request
//! and response bodies, the error envelope and the stable error codes. The
//! server serialises these types, the client core deserialises them, and the
//! Godot adapter turns them into `Dictionary`s with the same field names.
//!
//! Nothing here performs I/O; validation limits live here so that the client
//! can refuse a request locally with the same rule the server applies.
//!
//! # Conventions
//! - Ids are positive 64-bit integers assigned by the server.
//! - Prices, quantities and credits are `i64`; prices and quantities are ≥ 1.
//! - Timestamps are Unix seconds (UTC).
//! - Every error answer is `{"error": {"code": "...", "message": "..."}}`,
//!   with `current_price` added for `price_changed`.

use serde::{Deserialize, Serialize};

mod codes;
pub use codes::ErrorCode;

/// Longest accepted `item_id`, `device_id`, player name and idempotency key, in bytes.
pub const MAX_ID_LEN: usize = 64;
/// Longest accepted player name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Largest request body the server reads, in bytes; larger bodies get 413.
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Largest quantity of one listing.
pub const MAX_QUANTITY: i64 = 1_000_000;
/// Largest price of one listing, in credits.
pub const MAX_PRICE: i64 = 1_000_000_000_000;
/// Largest amount a player's own game may bring a count or a balance to
/// (10^15). Settlements of trades may go beyond it: each adds at most
/// [`MAX_QUANTITY`] items or [`MAX_PRICE`] credits, and `i64` has room for
/// more than nine million of those above this line, so arithmetic can never
/// leave a trade stuck.
pub const MAX_HOLDING: i64 = 1_000_000_000_000_000;
/// Default and maximum page size of `GET /v1/listings`.
pub const DEFAULT_PAGE_LIMIT: u32 = 50;
pub const MAX_PAGE_LIMIT: u32 = 200;
/// Header carrying the client's idempotency key on every mutating call.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Header the server sets on every answer (and accepts from the client) to
/// correlate logs and ledger rows.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Sent by clients that know the codes added with partial fills and expiry
/// (`quantity_unavailable`, `listing_expired`, `order_closed`), with
/// [`PROTOCOL_VERSION`]. To a client without it, the server answers those
/// refusals with the older codes that mean the same to it (`already_sold`,
/// `listing_cancelled`): a client treats a code it does not know as
/// ambiguous and would retry a refused trade forever.
pub const PROTOCOL_HEADER: &str = "x-market-protocol";
pub const PROTOCOL_VERSION: u32 = 2;

/// A change sent with this header is refused with `wrong_server` (421, not
/// definitive) by any server whose [`Session::server_id`] differs: a
/// journaled trade is only ever carried out by the server that accepted it.
pub const SERVER_HEADER: &str = "x-market-server";

/// A change sent with this header is refused with `wrong_server` when the
/// token's player differs: a journaled trade runs only as its own player.
pub const PLAYER_HEADER: &str = "x-market-player";

/// A request that changes the market: the five idempotent operations.
///
/// One type for one concept, wherever it appears: the server hashes its JSON
/// to recognise a replayed `Idempotency-Key` with a different body, the
/// client sends it, and the player's journal stores it (so its serialised
/// form is part of the save format: variants and fields are only ever added).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum MarketChange {
    /// `POST /v1/listings`
    CreateListing {
        item_id: String,
        quantity: i64,
        /// Per unit.
        price: i64,
        /// Items the game moves from its save into the market for this
        /// listing if the player's stash falls short (client deposits).
        #[serde(default, skip_serializing_if = "is_zero")]
        deposit: i64,
        /// How long the listing may rest, in seconds (at most the server's
        /// bound; absent: the server's default).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_secs: Option<i64>,
    },
    /// `PATCH /v1/listings/{listing_id}`
    Reprice { listing_id: i64, price: i64 },
    /// `DELETE /v1/listings/{listing_id}`
    Cancel { listing_id: i64 },
    /// `POST /v1/listings/{listing_id}/purchase`
    Purchase {
        listing_id: i64,
        /// Per unit — or, without a `quantity`, what all the remaining
        /// units cost together (how clients before partial fills spoke).
        expected_price: i64,
        /// Units to buy; absent: all that remain, `expected_price` being
        /// their price together.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        quantity: Option<i64>,
        /// Credits the game moves from its save into the market for this
        /// purchase if the player's balance falls short (client deposits).
        #[serde(default, skip_serializing_if = "is_zero")]
        deposit: i64,
    },
    /// `POST /v1/sales/{sale_id}/claim`
    Claim { sale_id: i64 },
    /// `POST /v1/me/deposits`: from the game's save into the market account.
    Deposit {
        /// `None`: credits.
        item_id: Option<String>,
        quantity: i64,
    },
    /// `POST /v1/me/withdrawals`: from the market account into the game's save.
    Withdraw {
        /// `None`: credits.
        item_id: Option<String>,
        quantity: i64,
    },
    /// `POST /v1/orders`: a buy order, matched at once against resting
    /// sell listings and resting with what is left.
    PlaceOrder {
        item_id: String,
        quantity: i64,
        /// Per unit: the most the buyer pays.
        max_price: i64,
        /// The smallest fill the order takes (the rest of the order when
        /// less remains); absent: 1.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_fill: Option<i64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        duration_secs: Option<i64>,
        /// Credits the game moves from its save into the market for the
        /// order's escrow if the account falls short (client deposits).
        #[serde(default, skip_serializing_if = "is_zero")]
        deposit: i64,
    },
    /// `DELETE /v1/orders/{order_id}`
    CancelOrder { order_id: i64 },
    /// `POST /v1/me/deliveries/collect`: what the market owes the player
    /// (bought items, refunds, expired escrow), into the game's save
    /// (client deposits) or the market account (server grants).
    Collect { delivery_ids: Vec<i64> },
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// How value entered the market (an economy policy of the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EconomyMode {
    /// The game moves credits and items from its save into the market as
    /// trades need them (capped per player per 24 h), and gets bought items,
    /// proceeds and cancelled escrow back into its save.
    #[default]
    ClientDeposits,
    /// Only the game's trusted backend grants credits and items (admin
    /// API); the market account is the player's wallet for trading.
    ServerGrants,
}

/// The server's economy policy, as the client sees it at login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Economy {
    pub mode: EconomyMode,
    /// Credits a player may deposit per rolling 24 hours.
    pub deposit_cap_credits: i64,
    /// Items of one kind a player may deposit per rolling 24 hours.
    pub deposit_cap_items: i64,
}

/// A player's market account: what is theirs inside the market, outside
/// listings and unclaimed proceeds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Account {
    pub credits: i64,
    /// Item id → count (only counts ≥ 1).
    pub stash: std::collections::BTreeMap<String, i64>,
    /// Grows with every change of the account: the newer of two views.
    pub version: i64,
}

/// What a change moved between the player's game and the market.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Transfer {
    /// Moved from the game's save into the market for this change:
    /// credits (purchase) or items (listing).
    #[serde(default)]
    pub deposited: i64,
    /// Moved from the market into the game's save by this change: items
    /// (purchase, cancel) or credits (claim).
    #[serde(default)]
    pub delivered: i64,
    /// Under server grants: the player's market account right after this
    /// change (same transaction), so a client can mirror it without
    /// arithmetic — the newer of two views by `version` wins.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<Account>,
}

/// `POST /v1/sessions`: log in by device id, or by an identity token of
/// one of the market's identity providers (exactly one of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub device_id: String,
    pub name: String,
    /// A JWT from the game's identity provider (see the README's "Player
    /// identity"); the player is its `(provider, subject)` for good.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_token: Option<String>,
}

/// `POST /v1/me/identities`: link the identity this token proves to the
/// logged-in player (whose session proves the device).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkIdentityRequest {
    pub identity_token: String,
}

/// One provider identity of a player.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkedIdentity {
    pub provider: String,
    pub subject: String,
    pub linked_at: i64,
}

/// Answer of `GET`/`POST /v1/me/identities` and `DELETE …/{provider}`: the
/// player's ways in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identities {
    pub identities: Vec<LinkedIdentity>,
    /// Whether a device id logs this player in (false for a player a token
    /// login made).
    pub device: bool,
}

/// Answer of `POST /v1/sessions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub player_id: i64,
    pub name: String,
    pub token: String,
    pub expires_at: i64,
    /// The server's economy policy (absent from servers before it existed).
    #[serde(default)]
    pub economy: Economy,
    /// The market's stable identity: made once and stored in its database,
    /// so every replica and every address of one market says the same, and
    /// a reset or different market says something else. Journaled trades
    /// are bound to it. Empty from servers before it existed.
    #[serde(default)]
    pub server_id: String,
}

/// Lifecycle of a listing. Only `Active` listings can be bought, repriced or
/// cancelled; `Sold`, `Cancelled` and `Expired` are final. (A listing past
/// its `expires_at` shows `Expired` at once: nothing fills it from then on,
/// whether or not its escrow has been sent back yet.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ListingStatus {
    Active,
    Sold,
    Cancelled,
    Expired,
}

impl ListingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ListingStatus::Active => "active",
            ListingStatus::Sold => "sold",
            ListingStatus::Cancelled => "cancelled",
            ListingStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "active" => Some(ListingStatus::Active),
            "sold" => Some(ListingStatus::Sold),
            "cancelled" => Some(ListingStatus::Cancelled),
            "expired" => Some(ListingStatus::Expired),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listing {
    pub id: i64,
    pub seller_id: i64,
    pub item_id: String,
    /// Units listed.
    pub quantity: i64,
    /// Per unit.
    pub price: i64,
    pub status: ListingStatus,
    pub created_at: i64,
    pub updated_at: i64,
    /// Units not yet sold (0 from servers before partial fills: then see
    /// [`Listing::remaining`]).
    #[serde(default)]
    pub quantity_remaining: i64,
    /// Unix seconds after which nothing fills it; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// The seller's display name, when browsing (`GET /v1/listings`,
    /// `GET /v1/listings/{id}`); absent in trade answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seller_name: Option<String>,
}

impl Listing {
    /// Units that can still be bought: `quantity_remaining`, or the whole
    /// lot of an active listing from a server before partial fills.
    pub fn remaining(&self) -> i64 {
        if self.quantity_remaining == 0 && self.status == ListingStatus::Active {
            self.quantity
        } else {
            self.quantity_remaining
        }
    }
}

/// `POST /v1/listings`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateListingRequest {
    pub item_id: String,
    pub quantity: i64,
    /// Per unit.
    pub price: i64,
    /// Absent when 0 (servers before deposits refuse unknown fields).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deposit: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<i64>,
}

/// `PATCH /v1/listings/{id}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepriceRequest {
    pub price: i64,
}

/// `POST /v1/listings/{id}/purchase`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurchaseRequest {
    /// Per unit; without a `quantity`, what all the remaining units cost
    /// together.
    pub expected_price: i64,
    /// Units to buy; absent: all that remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantity: Option<i64>,
    /// Absent when 0 (servers before deposits refuse unknown fields).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deposit: i64,
}

/// `POST /v1/me/deposits`, `POST /v1/me/withdrawals`, and the admin's grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    /// Absent or null: credits.
    #[serde(default)]
    pub item_id: Option<String>,
    pub quantity: i64,
}

/// Answer of deposits, withdrawals and grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Moved {
    pub id: i64,
    /// `None`: credits.
    pub item_id: Option<String>,
    pub quantity: i64,
    pub account: Account,
}

/// Answer of `GET /v1/me/account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountEnvelope {
    pub account: Account,
    pub economy: Economy,
}

/// Answer of `POST /v1/listings`, `PATCH` and `DELETE /v1/listings/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingEnvelope {
    pub listing: Listing,
    /// Resting buy orders the new or repriced listing filled at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fills: Vec<Fill>,
    /// What the change moved between the game's save and the market
    /// (absent from servers without books: then everything moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// Answer of `GET /v1/listings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListingPage {
    pub listings: Vec<Listing>,
    /// Pass back as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// A completed purchase. The buyer sees it as a purchase, the seller as a
/// sale (same id) until the proceeds are claimed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Purchase {
    pub id: i64,
    pub listing_id: i64,
    pub buyer_id: i64,
    pub seller_id: i64,
    pub item_id: String,
    /// Units bought.
    pub quantity: i64,
    /// What the buyer paid in all (`unit_price × quantity`).
    pub price: i64,
    pub created_at: i64,
    #[serde(default)]
    pub unit_price: i64,
}

/// Answer of `POST /v1/listings/{id}/purchase`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PurchaseEnvelope {
    pub purchase: Purchase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// A sale as the seller sees it in `GET /v1/me/sales`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sale {
    pub id: i64,
    pub listing_id: i64,
    pub buyer_id: i64,
    pub item_id: String,
    pub quantity: i64,
    /// What the buyer paid in all.
    pub price: i64,
    /// Fees kept by the market; the seller receives `price - fee`.
    #[serde(default)]
    pub fee: i64,
    pub sold_at: i64,
    /// Unix seconds of the claim, `None` while the proceeds are unclaimed.
    pub claimed_at: Option<i64>,
}

/// Answer of `GET /v1/me/sales?claimed=&cursor=&limit=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SalesPage {
    pub sales: Vec<Sale>,
    /// Pass back as `cursor` for the next page; `None` on the last page.
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// One keyed operation of the player, as `GET /v1/me/operations` lists it:
/// what a client needs to tell whether its save contains the operation
/// (by `key`) and, if not, to apply what it moved in or out of the save.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationRecord {
    /// Orders the player's operations; pass the last one seen as `after`.
    pub seq: i64,
    /// The idempotency key the operation was made with.
    pub key: String,
    /// `purchase`, `create_listing`, `reprice`, `cancel`, `claim`,
    /// `deposit`, `withdraw`, `grant` (by the game's backend), or `other`.
    pub kind: String,
    /// Unix seconds (server clock).
    pub at: i64,
    /// Credits the operation moved into the player's save (negative: out
    /// of it, into the market).
    #[serde(default)]
    pub credits: i64,
    /// Items the operation moved into the save, per item (negative: out).
    #[serde(default)]
    pub items: std::collections::BTreeMap<String, i64>,
}

/// Answer of `GET /v1/me/operations?after=&limit=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperationsPage {
    /// Operations with `seq > after`, oldest first.
    pub operations: Vec<OperationRecord>,
    /// The newest `seq` of any of the player's operations.
    pub last_seq: i64,
}

/// Answer of `POST /v1/sales/{id}/claim`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub sale_id: i64,
    pub amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// Lifecycle of a buy order: `Active` until filled, cancelled or expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Active,
    Filled,
    Cancelled,
    Expired,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Active => "active",
            OrderStatus::Filled => "filled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            OrderStatus::Active,
            OrderStatus::Filled,
            OrderStatus::Cancelled,
            OrderStatus::Expired,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
    }
}

/// A buy order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub id: i64,
    pub buyer_id: i64,
    pub item_id: String,
    pub quantity: i64,
    pub quantity_remaining: i64,
    /// Per unit.
    pub max_price: i64,
    pub min_fill: i64,
    /// Credits the order still holds in escrow (`quantity_remaining ×
    /// max_price` while active; 0 once closed — the rest went back).
    pub escrow: i64,
    pub status: OrderStatus,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
}

/// One fill: units of a sell listing bought, by a buyer directly or by a
/// buy order, at one price.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fill {
    /// The purchase (sale) id: the seller claims its proceeds by it.
    pub id: i64,
    pub listing_id: i64,
    /// The buy order it filled; `None` for a direct purchase.
    #[serde(default)]
    pub order_id: Option<i64>,
    pub buyer_id: i64,
    pub seller_id: i64,
    pub item_id: String,
    pub quantity: i64,
    pub unit_price: i64,
    /// `unit_price × quantity`: what the buyer paid.
    pub price: i64,
    /// Listing fee and sales tax, kept by the market from the seller's
    /// proceeds.
    pub fee: i64,
    pub created_at: i64,
}

/// Answer of `POST /v1/orders`, `DELETE /v1/orders/{id}` and
/// `GET /v1/orders/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEnvelope {
    pub order: Order,
    /// The fills made by this request (placing: at once against resting
    /// listings; `GET`: all of the order's fills).
    #[serde(default)]
    pub fills: Vec<Fill>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// Answer of `GET /v1/me/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrdersPage {
    pub orders: Vec<Order>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// What the market owes a player and keeps for them until collected:
/// items a buy order bought, the credits an order did not spend (a fill
/// below its price, a cancel, an expiry), a listing's escrow after it
/// expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: i64,
    /// `order_items`, `order_refund`, `order_expired`, `listing_expired`,
    /// `listing_returned` (a lot withdrawn by the upgrade to unit prices).
    pub kind: String,
    /// `None`: credits.
    pub item_id: Option<String>,
    pub quantity: i64,
    #[serde(default)]
    pub listing_id: Option<i64>,
    #[serde(default)]
    pub order_id: Option<i64>,
    #[serde(default)]
    pub fill_id: Option<i64>,
    pub created_at: i64,
    #[serde(default)]
    pub collected_at: Option<i64>,
}

/// Answer of `GET /v1/me/deliveries?collected=&cursor=&limit=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveriesPage {
    pub deliveries: Vec<Delivery>,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// `POST /v1/me/deliveries/collect`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectRequest {
    pub delivery_ids: Vec<i64>,
}

/// Answer of `POST /v1/me/deliveries/collect`: the deliveries this key
/// collected (those of the request not collected before). Under client
/// deposits each goes into the game's save (`transfer.delivered` > 0);
/// under server grants into the market account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Collected {
    pub deliveries: Vec<Delivery>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<Transfer>,
}

/// `POST /v1/orders`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceOrderRequest {
    pub item_id: String,
    pub quantity: i64,
    pub max_price: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_fill: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<i64>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deposit: i64,
}

/// Answer of `GET /v1/fees/quote?quantity=&price=`: what a listing of
/// `quantity` units at `price` each costs in fees and brings when it sells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeeQuote {
    pub quantity: i64,
    pub unit_price: i64,
    /// What the buyer pays: `unit_price × quantity`.
    pub buyer_pays: i64,
    pub listing_fee: i64,
    pub sales_tax: i64,
    /// `buyer_pays - listing_fee - sales_tax`.
    pub seller_receives: i64,
}

/// Answer of `GET /v1/market/{item_id}/summary`: what an item trades at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MarketSummary {
    pub item_id: String,
    /// The lowest unit price of an active listing; `None`: no seller.
    pub best_ask: Option<i64>,
    /// The highest price of an active buy order; `None`: no buyer.
    pub best_bid: Option<i64>,
    /// Units for sale and units wanted, in all.
    pub ask_quantity: i64,
    pub bid_quantity: i64,
    /// The unit price of the last fill; `None`: never traded.
    pub last_price: Option<i64>,
    /// Units traded and fills over the last 24 hours.
    pub volume_24h: i64,
    pub trades_24h: i64,
    /// Server time the figures are for (Unix seconds).
    pub at: i64,
}

/// One price level of the book: the units at that price and how many
/// listings or orders make them up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DepthLevel {
    pub price: i64,
    pub quantity: i64,
    pub count: i64,
}

/// Answer of `GET /v1/market/{item_id}/depth?levels=`: the book, the best
/// levels first on each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Depth {
    pub item_id: String,
    /// Sell listings, cheapest first.
    pub asks: Vec<DepthLevel>,
    /// Buy orders, highest first.
    pub bids: Vec<DepthLevel>,
}

/// One interval of an item's price history, from its fills.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candle {
    /// Unix seconds the interval starts at (UTC, aligned to the interval).
    pub start: i64,
    /// Unit prices: of the first fill, the highest, the lowest, the last.
    pub open: i64,
    pub high: i64,
    pub low: i64,
    pub close: i64,
    /// Units traded and fills.
    pub volume: i64,
    pub trades: i64,
}

/// Answer of `GET /v1/market/{item_id}/history?interval=hour|day&from=&to=`:
/// intervals with at least one fill, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceHistory {
    pub item_id: String,
    /// `hour` or `day`.
    pub interval: String,
    pub candles: Vec<Candle>,
}

/// One item found by `GET /v1/items?search=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemMatch {
    pub item_id: String,
    /// The catalog's display name, if it gives one.
    #[serde(default)]
    pub name: Option<String>,
}

/// Answer of `GET /v1/items?search=&limit=`: items whose id starts with
/// the text or whose catalog name holds it, best matches first. Without a
/// catalog (`catalog: false`) the items on the book whose id starts with
/// it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemSearch {
    pub items: Vec<ItemMatch>,
    pub catalog: bool,
}

/// The longest item search text.
pub const MAX_SEARCH_CHARS: usize = 64;

/// The longest display name a catalog may give an item.
pub const MAX_ITEM_NAME_CHARS: usize = 64;

/// One change pushed by `GET /v1/stream` (server-sent events: `id:` is
/// `seq`, `event: market`, `data:` this JSON).
///
/// **A hint, never money.** Nothing a client holds in escrow or has
/// journaled is decided by a pushed event: holds settle on the answers to
/// the player's own requests (I4), and the books stay the truth. An event
/// only says "this changed; here is how it looks now".
///
/// `seq` orders every event of the market in commit order (an event is
/// written in the transaction of its change). Reconnecting with the last
/// `seq` seen (`after=` or `Last-Event-ID`) resumes with nothing missed
/// and nothing twice while the server still keeps the events after it;
/// otherwise the stream says `reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamEvent {
    pub seq: i64,
    /// Server time of the change (Unix seconds).
    pub at: i64,
    #[serde(flatten)]
    pub change: StreamChange,
}

/// What changed. Public changes (`listing`, `order`, `trade`) go to every
/// subscriber of the item; the others only to the player named. A fill of
/// a player's listing or order by someone else reaches them as a
/// `notification` (one summary per listing or order, not one per fill);
/// their own requests' fills are in their answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StreamChange {
    /// A listing after its change: `created`, `updated` (repriced or
    /// partly bought), `sold`, `cancelled` or `expired`. A listing that is
    /// no longer `active` leaves the shop.
    Listing { change: String, listing: Listing },
    /// A buy order after its change: `placed`, `updated` (partly filled),
    /// `filled`, `cancelled` or `expired`.
    Order { change: String, order: Order },
    /// Units changed hands at a price (the ticker).
    Trade {
        item_id: String,
        quantity: i64,
        unit_price: i64,
        fill_id: i64,
    },
    /// Yours: something the market keeps for you to collect.
    Delivery { delivery: Delivery },
    /// Yours: a notification was written or brought up to date.
    Notification { notification: Notification },
}

impl StreamChange {
    /// The item a public change is about (`None` for a private one).
    pub fn item_id(&self) -> Option<&str> {
        match self {
            StreamChange::Listing { listing, .. } => Some(&listing.item_id),
            StreamChange::Order { order, .. } => Some(&order.item_id),
            StreamChange::Trade { item_id, .. } => Some(item_id),
            _ => None,
        }
    }
}

/// Sent as `event: reload` when the events after the client's `seq` are
/// no longer kept (or the client sent none it could resume from): reload
/// what is on screen, then go on from `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReload {
    /// The newest `seq` at the time: the stream goes on after it.
    pub head: i64,
}

/// Sent as `event: ready` once the events missed since `after` are sent:
/// from here on the stream is live.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamReady {
    pub head: i64,
}

/// What happened while a player was away, kept by the server until the
/// player acknowledges it: one summary per listing or order, brought up to
/// date by every fill until acknowledged (not one per fill).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    pub id: i64,
    /// `sold` (units of your listing were bought), `order_filled` (your buy
    /// order bought units), `listing_expired`, `order_expired`.
    pub kind: String,
    pub item_id: String,
    #[serde(default)]
    pub listing_id: Option<i64>,
    #[serde(default)]
    pub order_id: Option<i64>,
    /// Units sold, bought, or sent back by the expiry.
    pub quantity: i64,
    /// Credits: `sold`, the proceeds after fees (claim them);
    /// `order_filled`, what the units cost; `order_expired`, credits sent
    /// back.
    pub credits: i64,
    /// Fees kept from a `sold`'s proceeds.
    #[serde(default)]
    pub fee: i64,
    /// Fills summed up.
    pub fills: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Answer of `GET /v1/me/notifications`: the notifications not yet
/// acknowledged, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationsPage {
    pub notifications: Vec<Notification>,
    /// Deliveries waiting to be collected (see `GET /v1/me/deliveries`).
    #[serde(default)]
    pub deliveries_waiting: i64,
    #[serde(default)]
    pub next_cursor: Option<String>,
}

/// `POST /v1/me/notifications/ack`: the notifications the client has
/// saved and shown. Acknowledging one twice, or one already pruned,
/// changes nothing. With `fills` (one per id), a notification is closed
/// only if it has not grown past what the client showed: a fill that
/// lands between the read and the acknowledgement keeps it open, to be
/// told with its new figures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckRequest {
    pub ids: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fills: Option<Vec<i64>>,
}

/// Most notifications acknowledged in one request.
pub const MAX_ACK_IDS: usize = 200;

/// Most items one stream subscribes to by id (`items=`).
pub const MAX_STREAM_ITEMS: usize = 64;

/// The error envelope: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One of [`ErrorCode`]'s strings. Kept as a string so that a newer
    /// server's code still parses on an older client.
    pub code: String,
    /// A sentence a player can read.
    pub message: String,
    /// Present with `price_changed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_price: Option<i64>,
    /// Present with `quantity_unavailable`: units that remain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available: Option<i64>,
}

/// Checks an item id, device id or idempotency key: 1..=[`MAX_ID_LEN`] bytes of
/// ASCII letters, digits, `_`, `-`, `.` or `:`.
/// An item search text, trimmed: 1 to [`MAX_SEARCH_CHARS`] printable
/// characters (both sides check it alike).
pub fn check_search(text: &str) -> Result<&str, String> {
    let text = text.trim();
    if text.is_empty()
        || text.chars().count() > MAX_SEARCH_CHARS
        || text.chars().any(char::is_control)
    {
        return Err(format!(
            "search is 1 to {MAX_SEARCH_CHARS} printable characters"
        ));
    }
    Ok(text)
}

pub fn check_id(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > MAX_ID_LEN {
        return Err(format!("{what} is longer than {MAX_ID_LEN} bytes"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
    {
        return Err(format!(
            "{what} may contain only letters, digits, '_', '-', '.' and ':'"
        ));
    }
    Ok(())
}

/// Checks a price or quantity: at least 1.
pub fn check_positive(what: &str, value: i64) -> Result<(), String> {
    if value < 1 {
        return Err(format!("{what} must be at least 1"));
    }
    Ok(())
}

/// Checks a listing's quantity: 1..=[`MAX_QUANTITY`].
pub fn check_quantity(value: i64) -> Result<(), String> {
    check_range("quantity", value, MAX_QUANTITY)
}

/// Checks what a trade of `quantity` units at `unit_price` moves in all:
/// at most [`MAX_PRICE`], so every settlement stays within the bounds the
/// books are reasoned about.
pub fn check_total(quantity: i64, unit_price: i64) -> Result<i64, String> {
    match quantity.checked_mul(unit_price) {
        Some(total) if total <= MAX_PRICE => Ok(total),
        _ => Err(format!(
            "quantity × price must be at most {MAX_PRICE} credits"
        )),
    }
}

/// Checks a price (also an expected price): 1..=[`MAX_PRICE`].
pub fn check_price(what: &str, value: i64) -> Result<(), String> {
    check_range(what, value, MAX_PRICE)
}

fn check_range(what: &str, value: i64, max: i64) -> Result<(), String> {
    check_positive(what, value)?;
    if value > max {
        return Err(format!("{what} must be at most {max}"));
    }
    Ok(())
}

/// Checks a player name: 1..=[`MAX_NAME_LEN`] bytes, no control characters.
pub fn check_name(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("name must not be empty".into());
    }
    if value.len() > MAX_NAME_LEN {
        return Err(format!("name is longer than {MAX_NAME_LEN} bytes"));
    }
    if value.chars().any(char::is_control) {
        return Err("name must not contain control characters".into());
    }
    if value.chars().any(is_invisible_format) {
        return Err("name must not contain invisible or direction-changing characters".into());
    }
    if value.trim() != value {
        return Err("name must not start or end with spaces".into());
    }
    Ok(())
}

/// Characters that change how a name *looks* without being seen: zero-width
/// spaces and joiners, bidirectional overrides and isolates, the byte-order
/// mark, invisible operators. Names are shown to other players (next to
/// their listings), so one player must not be able to dress up as another
/// with them. (Unicode's `Cf` characters that matter for display.)
fn is_invisible_format(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}'
        | '\u{200B}'..='\u{200F}'
        | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}'
        | '\u{E0000}'..='\u{E007F}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_hide_characters() {
        assert!(check_name("Vega Salvage").is_ok());
        assert!(check_name("Åsa Öberg 星").is_ok());
        assert!(
            check_name("Vega\u{200B}Salvage").is_err(),
            "zero-width space"
        );
        assert!(
            check_name("\u{202E}egaV").is_err(),
            "right-to-left override"
        );
        assert!(check_name("Vega\u{FEFF}").is_err(), "byte-order mark");
        assert!(check_name(" Vega").is_err(), "leading space");
        assert!(check_name("Vega\n").is_err());
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("item_id", "plasma_cutter-2").is_ok());
        assert!(check_id("item_id", "").is_err());
        assert!(check_id("item_id", &"x".repeat(MAX_ID_LEN + 1)).is_err());
        assert!(check_id("item_id", &"x".repeat(MAX_ID_LEN)).is_ok());
        assert!(check_id("item_id", "a b").is_err());
        assert!(check_id("item_id", "é").is_err());
    }

    #[test]
    fn limits_are_checked() {
        assert!(check_quantity(1).is_ok() && check_quantity(MAX_QUANTITY).is_ok());
        assert!(check_quantity(0).is_err() && check_quantity(MAX_QUANTITY + 1).is_err());
        assert!(check_quantity(i64::MAX).is_err());
        assert!(check_price("price", MAX_PRICE).is_ok());
        assert!(check_price("price", MAX_PRICE + 1).is_err());
        // Millions of settlements above the holding limit still fit in i64.
        const { assert!((i64::MAX - MAX_HOLDING) / MAX_PRICE > 9_000_000) };
    }

    #[test]
    fn error_envelope_round_trips() {
        let json = r#"{"error":{"code":"price_changed","message":"Price changed to 120","current_price":120}}"#;
        let env: ErrorEnvelope = serde_json::from_str(json).unwrap();
        assert_eq!(env.error.current_price, Some(120));
        assert_eq!(serde_json::to_string(&env).unwrap(), json);
    }

    #[test]
    fn unknown_fields_in_requests_are_refused() {
        let r = serde_json::from_str::<PurchaseRequest>(r#"{"expected_price":1,"buyer_id":7}"#);
        assert!(r.is_err());
    }
}
