//! Matching and fills: the order book of one item.
//!
//! A *fill* moves units of a sell listing to a buyer at one price, and is
//! one `purchases` row (several per listing now). A direct purchase fills a
//! listing from the buyer's account ([`super::purchase`]); a buy order
//! fills from its own escrow, here.
//!
//! # Matching
//! A change that can make the book of an item cross — a buy order placed, a
//! listing created or repriced — is matched at once against the best
//! resting other side, price first, then time (the lower id): sell
//! listings from the lowest price, buy orders from the highest. The fill
//! executes at the *resting* side's price, so a buy order that takes a
//! cheaper listing gets the difference back, and a listing that meets a
//! higher bid sells at the bid.
//!
//! Matching changes on one item run one at a time: each first bumps the
//! item's row in `item_books`, which every backend locks for the rest of
//! the transaction — *before* any other row (an account, a listing), so
//! two matching changes on one item take their locks in the same order
//! and cannot wait for each other. (Through account rows, changes on two
//! items can still meet under server grants; PostgreSQL then aborts one,
//! which is answered 503 and retried with its key.) (The bump is bookkeeping, not value: a
//! refusal that follows it is still a refusal that moved nothing.) Without it, on PostgreSQL a bid and an ask placed at
//! the same moment could each miss the other (neither sees the other's
//! uncommitted row) and rest crossed. Direct purchases, cancels and the
//! expiry sweep do not take the lock — they cannot make the book cross —
//! so every fill is still a conditional update that states what must
//! remain true (`status = 'active'`, enough `remaining`, not expired, the
//! price seen), and a race lost to one of them is a candidate skipped or
//! re-read, never a unit filled twice (invariant I1).
//!
//! What a fill owes the buyer of an order (the items, a refund below the
//! order's price) waits in a delivery under client deposits — the buyer
//! may be away for days — or lands in the market account under server
//! grants ([`owe`]).

use marketplace_protocol::Fill;
use sqlx::{AnyConnection, Row};

use super::OpContext;
use crate::books::{self, Move};
use crate::error::AppError;

/// How many candidates one statement reads; matching pages on.
const CANDIDATES: i64 = 16;

/// The most candidates one matching change looks at (while it holds the
/// item's book): the rest rests. Candidates whose minimum fill does not fit
/// are left out by the query itself; this bounds what races (a candidate
/// cancelled or bought meanwhile) can make one change walk.
const MAX_SCANNED: usize = 512;

/// Takes the item's book for the rest of the transaction.
pub(super) async fn lock_book(conn: &mut AnyConnection, item_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO item_books (item_id, version) VALUES ($1, 1) \
         ON CONFLICT (item_id) DO UPDATE SET version = item_books.version + 1",
    )
    .bind(item_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// What the market owes `player_id` from a change they did not ask for (or
/// not here): under client deposits a delivery waiting for them, whose id
/// the caller's ledger row names; under server grants straight into their
/// account (`None`).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn owe(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    player_id: i64,
    kind: &str,
    item_id: Option<&str>,
    quantity: i64,
    listing_id: Option<i64>,
    order_id: Option<i64>,
    fill_id: Option<i64>,
) -> Result<Option<i64>, AppError> {
    if !ctx.policy.delivers() {
        books::credit(conn, player_id, item_id, quantity).await?;
        return Ok(None);
    }
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO deliveries (player_id, kind, item_id, quantity, listing_id, order_id, fill_id, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
    )
    .bind(player_id)
    .bind(kind)
    .bind(item_id)
    .bind(quantity)
    .bind(listing_id)
    .bind(order_id)
    .bind(fill_id)
    .bind(ctx.now)
    .fetch_one(conn)
    .await?;
    ctx.outbox.delivery(id);
    Ok(Some(id))
}

/// The fees a fill worth `gross` adds to its listing's: the listing's fee
/// on everything it sold grows by them (see
/// [`crate::economy::FeeRule::on_fill`]). Reads what the listing sold
/// before — its row is locked by the fill's own update, so the sum is the
/// one this fill follows. No statement when fees are off.
pub(super) async fn fee_on(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    gross: i64,
) -> Result<i64, sqlx::Error> {
    if ctx.policy.fees.is_off() {
        return Ok(0);
    }
    let (before,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(price), 0) AS BIGINT) FROM purchases WHERE listing_id = $1",
    )
    .bind(listing_id)
    .fetch_one(conn)
    .await?;
    let (listing, tax) = ctx.policy.fees.on_fill(before, gross);
    Ok(listing + tax)
}

/// The ledger row that moves a fill's fees from the seller's proceeds to
/// the market's sink.
pub(super) fn fee_move<'a>(
    seller_id: i64,
    fee: i64,
    purchase_id: i64,
    listing_id: i64,
) -> Move<'a> {
    Move {
        player_id: seller_id,
        action: "fee",
        item_id: None,
        quantity: fee,
        listing_id: Some(listing_id),
        purchase_id: Some(purchase_id),
        ..Default::default()
    }
}

/// A fill between a sell listing and a buy order, both already reduced by
/// `quantity` (the order's escrow by `quantity × max_price`).
struct OrderFill<'a> {
    listing_id: i64,
    seller_id: i64,
    order_id: i64,
    buyer_id: i64,
    max_price: i64,
    item_id: &'a str,
    quantity: i64,
    unit_price: i64,
}

/// Records an order fill: the purchase row with its fees, the items and any
/// refund owed to the buyer, and the ledger rows.
async fn record(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    f: &OrderFill<'_>,
) -> Result<Fill, AppError> {
    let gross = f.unit_price * f.quantity;
    let fee = fee_on(conn, ctx, f.listing_id, gross).await?;
    let (purchase_id,): (i64,) = sqlx::query_as(
        "INSERT INTO purchases (listing_id, buyer_id, seller_id, item_id, quantity, price, created_at, order_id, unit_price, fee, taker_id, taker_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
    )
    .bind(f.listing_id)
    .bind(f.buyer_id)
    .bind(f.seller_id)
    .bind(f.item_id)
    .bind(f.quantity)
    .bind(gross)
    .bind(ctx.now)
    .bind(f.order_id)
    .bind(f.unit_price)
    .bind(fee)
    .bind(ctx.player_id)
    .bind(ctx.idem_key)
    .fetch_one(&mut *conn)
    .await?;
    ctx.outbox.fill(purchase_id);
    let (lid, oid, pid) = (Some(f.listing_id), Some(f.order_id), Some(purchase_id));
    let items_to = owe(
        conn,
        ctx,
        f.buyer_id,
        "order_items",
        Some(f.item_id),
        f.quantity,
        lid,
        oid,
        pid,
    )
    .await?;
    let mut moves = vec![
        Move {
            player_id: f.buyer_id,
            action: "fill_pay",
            quantity: gross,
            listing_id: lid,
            purchase_id: pid,
            order_id: oid,
            ..Default::default()
        },
        Move {
            player_id: f.buyer_id,
            action: "fill_items",
            item_id: Some(f.item_id),
            quantity: f.quantity,
            listing_id: lid,
            purchase_id: pid,
            order_id: oid,
            delivery_id: items_to,
        },
    ];
    let refund = (f.max_price - f.unit_price) * f.quantity;
    if refund > 0 {
        let refund_to = owe(
            conn,
            ctx,
            f.buyer_id,
            "order_refund",
            None,
            refund,
            lid,
            oid,
            pid,
        )
        .await?;
        moves.push(Move {
            player_id: f.buyer_id,
            action: "order_return",
            quantity: refund,
            listing_id: lid,
            purchase_id: pid,
            order_id: oid,
            delivery_id: refund_to,
            ..Default::default()
        });
    }
    if fee > 0 {
        moves.push(fee_move(f.seller_id, fee, purchase_id, f.listing_id));
    }
    books::movements(conn, ctx, &moves).await?;
    Ok(Fill {
        id: purchase_id,
        listing_id: f.listing_id,
        order_id: Some(f.order_id),
        buyer_id: f.buyer_id,
        seller_id: f.seller_id,
        item_id: f.item_id.to_string(),
        quantity: f.quantity,
        unit_price: f.unit_price,
        price: gross,
        fee,
        created_at: ctx.now,
    })
}

/// Takes `quantity` units from a listing if they are still there, active,
/// unexpired and at `price`. The last unit sells it.
async fn take_from_listing(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    price: i64,
    quantity: i64,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE listings SET remaining = remaining - $1, \
         status = CASE WHEN remaining = $1 THEN 'sold' ELSE status END, updated_at = $2 \
         WHERE id = $3 AND status = 'active' AND remaining >= $1 AND price = $4 \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(quantity)
    .bind(ctx.now)
    .bind(listing_id)
    .bind(price)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// Takes `quantity` units from a buy order (and their price from its
/// escrow) if they are still there, active and unexpired.
async fn take_from_order(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    order_id: i64,
    quantity: i64,
) -> Result<bool, sqlx::Error> {
    let n = sqlx::query(
        "UPDATE orders SET remaining = remaining - $1, escrow = escrow - $1 * max_price, \
         status = CASE WHEN remaining = $1 THEN 'filled' ELSE status END, updated_at = $2 \
         WHERE id = $3 AND status = 'active' AND remaining >= $1 \
         AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(quantity)
    .bind(ctx.now)
    .bind(order_id)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(n == 1)
}

/// The units a fill of `available` against a side that has `left` and
/// takes no less than `min_fill` (unless less is left) may move.
fn fill_size(left: i64, available: i64, min_fill: i64) -> Option<i64> {
    let q = left.min(available);
    (q > 0 && (q >= min_fill || q == left)).then_some(q)
}

/// A buy order just placed (`left` units at up to `max_price`, fills of
/// at least `min_fill`) takes from the best resting listings.
#[allow(clippy::too_many_arguments)]
pub(super) async fn match_order(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    order_id: i64,
    item_id: &str,
    max_price: i64,
    min_fill: i64,
    mut left: i64,
) -> Result<Vec<Fill>, AppError> {
    // The caller holds the item's book.
    let me = ctx.player_id;
    let mut fills = Vec::new();
    let mut scanned = 0;
    // Price-time order, paged by the last candidate seen.
    let (mut after_price, mut after_id) = (0i64, 0i64);
    'pages: while left > 0 {
        let rows = sqlx::query(
            "SELECT id, seller_id, price, remaining FROM listings \
             WHERE item_id = $1 AND status = 'active' AND price <= $2 AND seller_id <> $3 \
             AND (expires_at IS NULL OR expires_at > $4) \
             AND (price > $5 OR (price = $5 AND id > $6)) \
             AND (remaining >= $8 OR remaining >= $9) \
             ORDER BY price, id LIMIT $7",
        )
        .bind(item_id)
        .bind(max_price)
        .bind(me)
        .bind(ctx.now)
        .bind(after_price)
        .bind(after_id)
        .bind(CANDIDATES)
        // Only listings a fill of the order's minimum (or its rest) fits.
        .bind(min_fill)
        .bind(left)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            scanned += 1;
            if scanned > MAX_SCANNED {
                break 'pages;
            }
            let listing_id: i64 = row.try_get("id")?;
            let seller_id: i64 = row.try_get("seller_id")?;
            let price: i64 = row.try_get("price")?;
            let mut available: i64 = row.try_get("remaining")?;
            (after_price, after_id) = (price, listing_id);
            // A direct purchase may take units between the read and the
            // update: read again and try what is left, a few times.
            for _ in 0..3 {
                let Some(q) = fill_size(left, available, min_fill) else {
                    break;
                };
                if take_from_listing(conn, ctx, listing_id, price, q).await? {
                    if !take_from_order(conn, ctx, order_id, q).await? {
                        return Err(AppError::Internal(format!(
                            "order {order_id} could not take {q} units it has"
                        )));
                    }
                    let fill = OrderFill {
                        listing_id,
                        seller_id,
                        order_id,
                        buyer_id: me,
                        max_price,
                        item_id,
                        quantity: q,
                        unit_price: price,
                    };
                    fills.push(record(conn, ctx, &fill).await?);
                    left -= q;
                    break;
                }
                let now: Option<(i64,)> = sqlx::query_as(
                    "SELECT remaining FROM listings WHERE id = $1 AND status = 'active' AND price = $2",
                )
                .bind(listing_id)
                .bind(price)
                .fetch_optional(&mut *conn)
                .await?;
                match now {
                    Some((n,)) => available = n,
                    None => break,
                }
            }
            if left == 0 {
                break 'pages;
            }
        }
    }
    Ok(fills)
}

/// A listing just created or repriced (`left` units at `price`) sells to
/// the best resting buy orders.
pub(super) async fn match_listing(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    item_id: &str,
    price: i64,
    mut left: i64,
) -> Result<Vec<Fill>, AppError> {
    // The caller holds the item's book.
    let me = ctx.player_id;
    let mut fills = Vec::new();
    let mut scanned = 0;
    let (mut after_price, mut after_id) = (i64::MAX, 0i64);
    'pages: while left > 0 {
        let rows = sqlx::query(
            "SELECT id, buyer_id, max_price, remaining, min_fill FROM orders \
             WHERE item_id = $1 AND status = 'active' AND max_price >= $2 AND buyer_id <> $3 \
             AND (expires_at IS NULL OR expires_at > $4) \
             AND (max_price < $5 OR (max_price = $5 AND id > $6)) \
             AND (min_fill <= $8 OR remaining <= $8) \
             ORDER BY max_price DESC, id LIMIT $7",
        )
        .bind(item_id)
        .bind(price)
        .bind(me)
        .bind(ctx.now)
        .bind(after_price)
        .bind(after_id)
        .bind(CANDIDATES)
        // Only orders whose minimum (or rest) what is left can fill.
        .bind(left)
        .fetch_all(&mut *conn)
        .await?;
        if rows.is_empty() {
            break;
        }
        for row in &rows {
            scanned += 1;
            if scanned > MAX_SCANNED {
                break 'pages;
            }
            let order_id: i64 = row.try_get("id")?;
            let buyer_id: i64 = row.try_get("buyer_id")?;
            let max_price: i64 = row.try_get("max_price")?;
            let remaining: i64 = row.try_get("remaining")?;
            let min_fill: i64 = row.try_get("min_fill")?;
            (after_price, after_id) = (max_price, order_id);
            // The order's minimum applies to what the order takes.
            let Some(q) = fill_size(remaining, left, min_fill) else {
                continue;
            };
            // Only a cancel or the sweep can have closed it since the read
            // (fills of this item wait for the book): then it is skipped.
            if !take_from_order(conn, ctx, order_id, q).await? {
                continue;
            }
            if !take_from_listing(conn, ctx, listing_id, price, q).await? {
                return Err(AppError::Internal(format!(
                    "listing {listing_id} could not give {q} units it has"
                )));
            }
            let fill = OrderFill {
                listing_id,
                seller_id: me,
                order_id,
                buyer_id,
                max_price,
                item_id,
                quantity: q,
                unit_price: max_price,
            };
            fills.push(record(conn, ctx, &fill).await?);
            left -= q;
            if left == 0 {
                break 'pages;
            }
        }
    }
    Ok(fills)
}

/// The order fills this request made (as the order placed, or as the
/// listing created or repriced).
pub(super) async fn fills_of_key(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
) -> Result<Vec<Fill>, sqlx::Error> {
    let sql = format!(
        "SELECT {FILL_COLUMNS} FROM purchases WHERE taker_id = $1 AND taker_key = $2 ORDER BY id"
    );
    let rows = sqlx::query(&sql)
        .bind(ctx.player_id)
        .bind(ctx.idem_key)
        .fetch_all(conn)
        .await?;
    rows.iter().map(fill_from_row).collect()
}

pub(crate) const FILL_COLUMNS: &str =
    "id, listing_id, order_id, buyer_id, seller_id, item_id, quantity, unit_price, price, fee, created_at";

pub(crate) fn fill_from_row(row: &sqlx::any::AnyRow) -> Result<Fill, sqlx::Error> {
    let quantity: i64 = row.try_get("quantity")?;
    let price: i64 = row.try_get("price")?;
    Ok(Fill {
        id: row.try_get("id")?,
        listing_id: row.try_get("listing_id")?,
        order_id: row.try_get("order_id")?,
        buyer_id: row.try_get("buyer_id")?,
        seller_id: row.try_get("seller_id")?,
        item_id: row.try_get("item_id")?,
        quantity,
        unit_price: row
            .try_get::<Option<i64>, _>("unit_price")?
            .unwrap_or(if quantity > 0 { price / quantity } else { 0 }),
        price,
        fee: row.try_get("fee")?,
        created_at: row.try_get("created_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::fill_size;

    #[test]
    fn fill_size_respects_the_minimum_unless_it_is_all_that_is_left() {
        assert_eq!(fill_size(10, 3, 1), Some(3));
        assert_eq!(fill_size(10, 3, 5), None, "below the order's minimum");
        assert_eq!(fill_size(4, 9, 5), Some(4), "the rest of the order");
        assert_eq!(fill_size(10, 0, 1), None);
    }
}
