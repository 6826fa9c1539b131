//! The marketplace's state changes, each run inside the caller's write
//! transaction (see [`crate::idempotency`]), one module per operation —
//! each with the recall of its keyed answer next to the writes it reads
//! back. The domain speaks no HTTP: an operation returns what it did
//! ([`Done`]); the idempotency layer turns that into the answer.
//!
//! Every change is a *conditional* update: the `WHERE` clause states what must
//! still be true (`status = 'active'`, the expected price, the seller), and
//! zero affected rows means another request got there first. Only then is the
//! row read again, to tell the caller *why*. No code path reads a row, decides
//! in Rust, and writes it back — that read-modify-write is the double sale of
//! the old backend (invariant I1).
//!
//! # Exactly once, forever
//! Each change writes its `Idempotency-Key` into the row it creates or
//! changes (`listings.create_key`, `listings.cancel_key`,
//! `listing_reprices.idem_key`, `purchases.buy_key`, `purchases.claim_key`),
//! under a unique index per requester. The stored answers of
//! [`crate::idempotency`] are pruned after the retention period; these rows
//! are not. [`recall`] finds the change a key already made and rebuilds its
//! answer from those rows, so a replay after any delay gets the outcome the
//! first request had — never a fresh, different one. A key whose request was
//! *refused* is not recalled: a refusal changed nothing, so running it again
//! can only produce a consistent answer.
//!
//! # The books
//! Trades move value between market accounts, escrow and proceeds through
//! [`crate::books`]. Under client deposits a trade deposits what it needs
//! from the game's save (`deposit` in the request, never more than the
//! shortfall) and delivers what comes out back to it; the answer's
//! `transfer` says what moved, and the rows keep it for [`recall`].
//!
//! **A refusal leaves nothing written.** Most refusals are found before the
//! first write (the conditional update that fails writes nothing). Where a
//! refusal can follow writes — the buyer who won the race cannot pay, the
//! seller's stash falls short — a savepoint ([`books::checkpoint`]) is set
//! first and rolled back. Savepoints cost round trips, so the path losers
//! of a race take has none.

use marketplace_protocol::{
    Claim, Collected, Listing, ListingEnvelope, ListingStatus, MarketChange, Moved, OrderEnvelope,
    PurchaseEnvelope, Sale, Transfer,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::books;
use crate::error::AppError;
pub use crate::op::OpContext;
pub(crate) use fills::{fill_from_row, FILL_COLUMNS};

mod cancel;
mod claim;
mod create_listing;
pub(crate) mod deliveries;
pub(crate) mod expiry;
mod fills;
mod move_value;
pub(crate) mod orders;
mod purchase;
mod reprice;

/// What a change did, in the domain's terms. [`crate::idempotency`] turns
/// it into the HTTP answer (status and JSON) at the edge, and stores it.
#[derive(Debug, Clone)]
pub enum Done {
    /// A listing created (`created`), repriced or cancelled.
    Listing {
        envelope: ListingEnvelope,
        created: bool,
    },
    Purchase(PurchaseEnvelope),
    Claim(Claim),
    /// A deposit or a withdrawal, with the account after it.
    Moved(Moved),
    /// A buy order placed (`created`) or cancelled.
    Order {
        envelope: OrderEnvelope,
        created: bool,
    },
    Collected(Collected),
}

impl Done {
    /// What moved between the game's save and the market, if the change
    /// says (deposits and withdrawals carry the account instead).
    pub fn transfer_mut(&mut self) -> Option<&mut Transfer> {
        match self {
            Done::Listing { envelope, .. } => envelope.transfer.as_mut(),
            Done::Purchase(p) => p.transfer.as_mut(),
            Done::Claim(c) => c.transfer.as_mut(),
            Done::Moved(_) => None,
            Done::Order { envelope, .. } => envelope.transfer.as_mut(),
            Done::Collected(c) => c.transfer.as_mut(),
        }
    }
}

/// A change that ran, or whose earlier run was recalled (`replayed`).
#[derive(Debug)]
pub struct Effect {
    pub done: Done,
    pub replayed: bool,
}

impl From<Done> for Effect {
    fn from(done: Done) -> Effect {
        Effect {
            done,
            replayed: false,
        }
    }
}

/// Runs one change of the market.
pub async fn apply(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    change: &MarketChange,
) -> Result<Effect, AppError> {
    match change {
        MarketChange::CreateListing {
            item_id,
            quantity,
            price,
            deposit,
            duration_secs,
        } => create_listing::run(
            conn,
            ctx,
            item_id,
            *quantity,
            *price,
            *deposit,
            *duration_secs,
        )
        .await
        .map(Effect::from),
        MarketChange::Reprice { listing_id, price } => reprice::run(conn, ctx, *listing_id, *price)
            .await
            .map(Effect::from),
        MarketChange::Cancel { listing_id } => {
            cancel::run(conn, ctx, *listing_id).await.map(Effect::from)
        }
        MarketChange::Purchase {
            listing_id,
            expected_price,
            quantity,
            deposit,
        } => purchase::run(conn, ctx, *listing_id, *expected_price, *quantity, *deposit).await,
        MarketChange::Claim { sale_id } => claim::run(conn, ctx, *sale_id).await.map(Effect::from),
        MarketChange::Deposit { item_id, quantity } => {
            move_value::run(conn, ctx, item_id.as_deref(), *quantity, true)
                .await
                .map(Effect::from)
        }
        MarketChange::Withdraw { item_id, quantity } => {
            move_value::run(conn, ctx, item_id.as_deref(), *quantity, false)
                .await
                .map(Effect::from)
        }
        MarketChange::PlaceOrder { .. } => orders::place(conn, ctx, change).await.map(Effect::from),
        MarketChange::CancelOrder { order_id } => {
            orders::cancel(conn, ctx, *order_id).await.map(Effect::from)
        }
        MarketChange::Collect { delivery_ids } => deliveries::collect(conn, ctx, delivery_ids)
            .await
            .map(Effect::from),
    }
}

/// The change `ctx.idem_key` already made for `ctx.player_id`, if any, with
/// what it did: found in the domain rows, not in the (prunable) answer
/// store. `Err(IdempotencyKeyReused)` when the key made a different change.
///
/// The rebuilt answer is the first one semantically: the same status, the
/// same object as it was right after the change (a listing that was repriced
/// or sold since is shown as the change left it).
pub async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    change: &MarketChange,
) -> Result<Option<Done>, AppError> {
    match change {
        MarketChange::CreateListing {
            item_id,
            quantity,
            price,
            ..
        } => create_listing::recall(conn, ctx, item_id, *quantity, *price).await,
        MarketChange::Reprice { listing_id, price } => {
            reprice::recall(conn, ctx, *listing_id, *price).await
        }
        MarketChange::Cancel { listing_id } => cancel::recall(conn, ctx, *listing_id).await,
        MarketChange::Purchase {
            listing_id,
            expected_price,
            quantity,
            ..
        } => purchase::recall(conn, ctx, *listing_id, *expected_price, *quantity).await,
        MarketChange::Claim { sale_id } => claim::recall(conn, ctx, *sale_id).await,
        MarketChange::Deposit { item_id, quantity } => {
            move_value::recall(conn, ctx, item_id.as_deref(), *quantity, true).await
        }
        MarketChange::Withdraw { item_id, quantity } => {
            move_value::recall(conn, ctx, item_id.as_deref(), *quantity, false).await
        }
        MarketChange::PlaceOrder { .. } => orders::recall_place(conn, ctx, change).await,
        MarketChange::CancelOrder { order_id } => orders::recall_cancel(conn, ctx, *order_id).await,
        MarketChange::Collect { delivery_ids } => deliveries::recall(conn, ctx, delivery_ids).await,
    }
}

/// A recalled row that does not match the request: the key was used for
/// another change.
fn mismatch<T>() -> Result<T, AppError> {
    Err(AppError::IdempotencyKeyReused)
}

pub const LISTING_COLUMNS: &str =
    "id, seller_id, item_id, quantity, price, status, created_at, updated_at, \
     remaining, expires_at, closed_by, returned";

/// Listings with their seller's name, for browsing: select
/// `BROWSE_COLUMNS` from `BROWSE_FROM`, naming listing columns `l.…`.
pub const BROWSE_COLUMNS: &str = "l.id, l.seller_id, l.item_id, l.quantity, l.price, l.status, \
     l.created_at, l.updated_at, l.remaining, l.expires_at, l.closed_by, p.name AS seller_name";
pub const BROWSE_FROM: &str = "listings l JOIN players p ON p.id = l.seller_id";

/// A listing as stored. An active listing past its expiry still says
/// `active` here: [`as_of`] tells it as of a time.
pub fn listing_from_row(row: &AnyRow) -> Result<Listing, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let closed_by: Option<String> = row.try_get("closed_by")?;
    let status = match (status.as_str(), closed_by.as_deref()) {
        ("cancelled", Some("expiry")) => "expired".to_string(),
        _ => status,
    };
    Ok(Listing {
        id: row.try_get("id")?,
        seller_id: row.try_get("seller_id")?,
        item_id: row.try_get("item_id")?,
        quantity: row.try_get("quantity")?,
        price: row.try_get("price")?,
        status: ListingStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown listing status {status:?}").into(),
        })?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        // Only browsing selects it.
        seller_name: row.try_get("seller_name").ok(),
        quantity_remaining: row.try_get("remaining")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// The listing as of `now`: past its expiry nothing fills it, whether or
/// not the sweep has sent its escrow back yet.
pub fn as_of(mut listing: Listing, now: i64) -> Listing {
    if listing.status == ListingStatus::Active && listing.expires_at.is_some_and(|t| t <= now) {
        listing.status = ListingStatus::Expired;
    }
    listing
}

pub const SALE_COLUMNS: &str =
    "id, listing_id, buyer_id, item_id, quantity, price, fee, created_at, claimed_at";

pub fn sale_from_row(row: &AnyRow) -> Result<Sale, sqlx::Error> {
    Ok(Sale {
        id: row.try_get("id")?,
        listing_id: row.try_get("listing_id")?,
        buyer_id: row.try_get("buyer_id")?,
        item_id: row.try_get("item_id")?,
        quantity: row.try_get("quantity")?,
        price: row.try_get("price")?,
        fee: row.try_get("fee")?,
        sold_at: row.try_get("created_at")?,
        claimed_at: row.try_get("claimed_at")?,
    })
}

pub(crate) async fn ledger(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    action: &str,
    listing_id: Option<i64>,
    purchase_id: Option<i64>,
    amount: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, amount, idempotency_key, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(ctx.now)
    .bind(ctx.player_id)
    .bind(action)
    .bind(listing_id)
    .bind(purchase_id)
    .bind(amount)
    .bind(ctx.idem_key)
    .bind(ctx.request_id)
    .execute(conn)
    .await?;
    Ok(())
}

pub(crate) async fn fetch_listing(
    conn: &mut AnyConnection,
    listing_id: i64,
) -> Result<Option<Listing>, sqlx::Error> {
    let sql = format!("SELECT {LISTING_COLUMNS} FROM listings WHERE id = $1");
    match sqlx::query(&sql)
        .bind(listing_id)
        .fetch_optional(conn)
        .await?
    {
        Some(row) => Ok(Some(listing_from_row(&row)?)),
        None => Ok(None),
    }
}

/// Why a seller's conditional update on a listing matched nothing.
pub(crate) fn seller_refusal(listing: Option<Listing>, player_id: i64) -> AppError {
    match listing {
        None => AppError::NotFound("Listing"),
        Some(l) if l.seller_id != player_id => {
            AppError::Forbidden("Only the seller can change this listing")
        }
        Some(l) if l.status == ListingStatus::Sold => AppError::AlreadySold,
        Some(l) if l.status == ListingStatus::Cancelled => AppError::ListingCancelled,
        Some(l) if l.status == ListingStatus::Expired => AppError::ListingExpired,
        Some(_) => {
            AppError::Internal("listing update matched nothing but the listing is active".into())
        }
    }
}

/// A value beyond the protocol's limits is refused as `invalid_request`.
pub(crate) fn limits(check: Result<(), String>) -> Result<(), AppError> {
    check.map_err(AppError::InvalidRequest)
}

/// The part of `need` the account lacks, deposited from the game's save if
/// the request offers enough (`deposit`); otherwise the trade is refused
/// (`insufficient_funds` / `insufficient_items`, or `deposits_disabled`
/// when the game offered a deposit the policy does not take). Returns what
/// was deposited.
pub(crate) async fn cover(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: Option<&str>,
    need: i64,
    offered: i64,
) -> Result<i64, AppError> {
    let have = books::holding(conn, ctx.player_id, item_id).await?;
    let shortfall = (need - have).max(0);
    if shortfall == 0 {
        return Ok(0);
    }
    if offered > 0 && !ctx.policy.deposits_allowed() {
        return Err(AppError::DepositsDisabled);
    }
    if offered < shortfall {
        return Err(match item_id {
            None => AppError::InsufficientFunds,
            Some(_) => AppError::InsufficientItems,
        });
    }
    // Admitted and counted against the cap; the caller writes the account
    // (netted with the trade) and the ledger.
    books::admit_deposit(conn, ctx, item_id, shortfall).await?;
    Ok(shortfall)
}

/// A seller's change to one of their active listings.
pub(crate) enum SellerChange {
    Reprice(i64),
    Cancel,
}

/// Applies `change` to the caller's listing if it is still active; otherwise
/// says why not (not found, not the seller, sold, cancelled, expired). A
/// cancel is also how a seller takes back a listing that expired before
/// the sweep got to it; a reprice of one is refused (`listing_expired`).
/// Returns the listing and, for a cancel, the units that go back.
pub(crate) async fn change_own_listing(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    change: SellerChange,
) -> Result<(Listing, i64), AppError> {
    let (set, filter) = match change {
        SellerChange::Reprice(_) => ("price = $4", "(expires_at IS NULL OR expires_at > $1) AND"),
        SellerChange::Cancel => (
            "status = 'cancelled', closed_by = 'seller', cancel_key = $4, cancel_delivered = 0, \
             returned = remaining, remaining = 0",
            "",
        ),
    };
    let sql = format!(
        "UPDATE listings SET {set}, updated_at = $1 \
         WHERE {filter} id = $2 AND seller_id = $3 AND status = 'active' RETURNING {LISTING_COLUMNS}"
    );
    let mut query = sqlx::query(&sql)
        .bind(ctx.now)
        .bind(listing_id)
        .bind(ctx.player_id);
    query = match change {
        SellerChange::Reprice(price) => query.bind(price),
        SellerChange::Cancel => query.bind(ctx.idem_key),
    };
    match query.fetch_optional(&mut *conn).await? {
        Some(row) => {
            ctx.outbox.listing(listing_id);
            Ok((
                listing_from_row(&row)?,
                row.try_get::<Option<i64>, _>("returned")?.unwrap_or(0),
            ))
        }
        None => Err(seller_refusal(
            fetch_listing(conn, listing_id)
                .await?
                .map(|l| as_of(l, ctx.now)),
            ctx.player_id,
        )),
    }
}

/// The row `sql` finds for `($1, $2) = (player, key)`.
pub(crate) async fn keyed_row(
    conn: &mut AnyConnection,
    sql: &str,
    ctx: &OpContext<'_>,
) -> Result<Option<AnyRow>, sqlx::Error> {
    sqlx::query(sql)
        .bind(ctx.player_id)
        .bind(ctx.idem_key)
        .fetch_optional(conn)
        .await
}
