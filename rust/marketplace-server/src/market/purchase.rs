use marketplace_protocol::{ListingStatus, Purchase, PurchaseEnvelope, Transfer};
use sqlx::AnyConnection;
use sqlx::Row;

use super::fills::{fee_move, fee_on};
use super::{
    as_of, cover, keyed_row, limits, listing_from_row, mismatch, Done, Effect, OpContext,
    LISTING_COLUMNS,
};
use crate::books::{self, Move};
use crate::error::AppError;

/// The purchase: one conditional update takes the units from the listing
/// only if it is still active, unexpired, holds them, is at the price the
/// buyer saw, and is not the buyer's own; the last unit sells it.
///
/// **Without a quantity** the request speaks as clients did before partial
/// fills: it buys all that remains of the lot, and `expected_price` is
/// what those units cost *together* (what such a client held and shows).
/// Its refusals use only the codes those clients know (`price_changed`
/// with the lot's price now, `listing_cancelled`), so they stay definitive
/// for them.
///
/// The
/// buyer pays from the market account (after depositing what is missing,
/// when the policy and the request allow), the price becomes the seller's
/// unclaimed proceeds, the items go to the buyer's stash — and under client
/// deposits on to the game's save. The purchase row (unique per listing),
/// the ledger rows and — in the caller — the idempotent answer commit in the
/// same transaction.
pub(super) async fn run(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    expected_price: i64,
    quantity: Option<i64>,
    deposit: i64,
) -> Result<Effect, AppError> {
    limits(marketplace_protocol::check_price(
        "expected_price",
        expected_price,
    ))?;
    if let Some(q) = quantity {
        limits(marketplace_protocol::check_quantity(q))?;
    }
    let legacy = quantity.is_none();
    let requested = quantity;
    // In units: the lot's price per unit and its units, when the lot total
    // the request expects is what the remaining units cost now (else a
    // price no listing has, so the race below is lost and says why).
    let (unit_price, units) = match quantity {
        Some(q) => (expected_price, q),
        None => {
            let lot: Option<(i64, i64)> =
                sqlx::query_as("SELECT price, remaining FROM listings WHERE id = $1")
                    .bind(listing_id)
                    .fetch_optional(&mut *conn)
                    .await?;
            match lot {
                Some((unit, remaining))
                    if remaining > 0 && unit.checked_mul(remaining) == Some(expected_price) =>
                {
                    (unit, remaining)
                }
                _ => (0, 1),
            }
        }
    };
    // The race is decided here, by the one statement losers pay for. It
    // changes nothing but the units and the status, so a refusal found
    // after it (the buyer cannot pay) can put the listing back exactly.
    let row = sqlx::query(
        "UPDATE listings SET remaining = remaining - $4, \
         status = CASE WHEN remaining = $4 THEN 'sold' ELSE status END \
         WHERE id = $1 AND status = 'active' AND price = $2 AND seller_id <> $3 \
         AND remaining >= $4 AND (expires_at IS NULL OR expires_at > $5) \
         RETURNING seller_id, item_id, price",
    )
    .bind(listing_id)
    .bind(unit_price)
    .bind(ctx.player_id)
    .bind(units)
    .bind(ctx.now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        // Lost (or a replay of a purchase this key already made, whose
        // stored answer was pruned): one read tells which.
        let sql = format!(
            "SELECT {LISTING_COLUMNS}, (SELECT kind FROM operation_keys WHERE player_id = $2 AND idem_key = $3) AS known \
             FROM listings WHERE id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(listing_id)
            .bind(ctx.player_id)
            .bind(ctx.idem_key)
            .fetch_optional(&mut *conn)
            .await?;
        let known: Option<String> = match &row {
            Some(r) => r.try_get("known")?,
            None => {
                let k: Option<(String,)> = sqlx::query_as(
                    "SELECT kind FROM operation_keys WHERE player_id = $1 AND idem_key = $2",
                )
                .bind(ctx.player_id)
                .bind(ctx.idem_key)
                .fetch_optional(&mut *conn)
                .await?;
                k.map(|(k,)| k)
            }
        };
        match known.as_deref() {
            Some("purchase") => {
                return match recall(conn, ctx, listing_id, expected_price, quantity).await? {
                    Some(done) => Ok(Effect {
                        done,
                        replayed: true,
                    }),
                    None => Err(AppError::Internal(
                        "key of a purchase without its rows".into(),
                    )),
                };
            }
            Some(_) => return Err(AppError::IdempotencyKeyReused),
            None => {}
        }
        let listing = row
            .as_ref()
            .map(listing_from_row)
            .transpose()?
            .map(|l| as_of(l, ctx.now));
        // What the lot costs now, for a request that speaks in lots.
        let lot =
            |l: &marketplace_protocol::Listing| l.price.saturating_mul(l.quantity_remaining.max(1));
        return Err(match listing {
            None => AppError::NotFound("Listing"),
            Some(l) if l.seller_id == ctx.player_id => AppError::OwnListing,
            Some(l) if l.status == ListingStatus::Sold => AppError::AlreadySold,
            Some(l) if l.status == ListingStatus::Cancelled => AppError::ListingCancelled,
            Some(l) if l.status == ListingStatus::Expired && legacy => AppError::ListingCancelled,
            Some(l) if l.status == ListingStatus::Expired => AppError::ListingExpired,
            Some(l) if legacy => AppError::PriceChanged {
                current_price: lot(&l),
            },
            Some(l) if l.price != expected_price => AppError::PriceChanged {
                current_price: l.price,
            },
            Some(l) if l.quantity_remaining < units => AppError::QuantityUnavailable {
                available: l.quantity_remaining,
            },
            Some(_) => {
                AppError::Internal("purchase matched nothing but the listing is buyable".into())
            }
        });
    };
    let seller_id: i64 = row.try_get("seller_id")?;
    let item_id: String = row.try_get("item_id")?;
    let quantity = units;
    let unit_price: i64 = row.try_get("price")?;
    let won = Won {
        listing_id,
        seller_id,
        item_id,
        quantity,
        unit_price,
    };
    books::checkpoint(conn).await?;
    let outcome = pay_and_deliver(conn, ctx, &won, deposit).await;
    let outcome = books::keep_or_undo(conn, outcome).await;
    if matches!(&outcome, Err(refusal) if !refusal.is_infrastructure()) {
        // Nothing of the purchase stays: the writes after the checkpoint
        // are undone; the units (won before it) are for sale again.
        sqlx::query(
            "UPDATE listings SET status = 'active', remaining = remaining + $2 WHERE id = $1",
        )
        .bind(listing_id)
        .bind(won.quantity)
        .execute(&mut *conn)
        .await?;
    }
    if matches!(outcome, Err(AppError::IdempotencyKeyReused)) {
        // The key is taken. With units still for sale the race above is
        // won again by a replay of a purchase this key made (its stored
        // answer pruned): then the replay gets that purchase, not a
        // refusal a client would settle on.
        let known: Option<(String,)> = sqlx::query_as(
            "SELECT kind FROM operation_keys WHERE player_id = $1 AND idem_key = $2",
        )
        .bind(ctx.player_id)
        .bind(ctx.idem_key)
        .fetch_optional(&mut *conn)
        .await?;
        if known.is_some_and(|(kind,)| kind == "purchase") {
            if let Some(done) = recall(conn, ctx, listing_id, expected_price, requested).await? {
                return Ok(Effect {
                    done,
                    replayed: true,
                });
            }
        }
    }
    outcome.map(Effect::from)
}

/// A listing a buyer just won the race for.
struct Won {
    listing_id: i64,
    seller_id: i64,
    item_id: String,
    quantity: i64,
    unit_price: i64,
}

/// The rest of a purchase once the race is won: the buyer pays (depositing
/// what is missing if allowed), the price becomes proceeds, the items go to
/// the buyer — and to the save under client deposits.
async fn pay_and_deliver(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    won: &Won,
    deposit: i64,
) -> Result<Done, AppError> {
    let Won {
        listing_id,
        seller_id,
        item_id,
        quantity,
        unit_price,
    } = won;
    let (listing_id, seller_id, quantity, unit_price) =
        (*listing_id, *seller_id, *quantity, *unit_price);
    let price = marketplace_protocol::check_total(quantity, unit_price)
        .map_err(AppError::InvalidRequest)?;
    let fee = fee_on(conn, ctx, listing_id, price).await?;
    sqlx::query("UPDATE listings SET updated_at = $1 WHERE id = $2")
        .bind(ctx.now)
        .bind(listing_id)
        .execute(&mut *conn)
        .await?;
    let me = ctx.player_id;
    // The key is recorded here, inside the checkpoint: a key already used
    // for something else undoes the whole purchase, before
    // anything else could clash with it.
    let recorded = sqlx::query(
        "INSERT INTO operation_keys (player_id, idem_key, kind) VALUES ($1, $2, 'purchase') \
         ON CONFLICT (player_id, idem_key) DO NOTHING",
    )
    .bind(me)
    .bind(ctx.idem_key)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if recorded == 0 {
        return Err(AppError::IdempotencyKeyReused);
    }
    let deposited = cover(conn, ctx, None, price, deposit).await?;
    // Deposit and payment net out on the account: one conditional update
    // (none when the deposit paid it all).
    books::adjust(conn, me, None, deposited - price).await?;
    let delivered = if ctx.policy.delivers() { quantity } else { 0 };
    let (purchase_id,): (i64,) = sqlx::query_as(
        "INSERT INTO purchases (listing_id, buyer_id, seller_id, item_id, quantity, price, created_at, buy_key, deposited, delivered, unit_price, fee) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING id",
    )
    .bind(listing_id)
    .bind(me)
    .bind(seller_id)
    .bind(item_id)
    .bind(quantity)
    .bind(price)
    .bind(ctx.now)
    .bind(ctx.idem_key)
    .bind(deposited)
    .bind(delivered)
    .bind(unit_price)
    .bind(fee)
    .fetch_one(&mut *conn)
    .await?;
    ctx.outbox.fill(purchase_id);
    if delivered == 0 {
        books::credit(conn, me, Some(item_id), quantity).await?;
    }
    let (lid, pid, item) = (Some(listing_id), Some(purchase_id), Some(item_id.as_str()));
    let mut moves = Vec::with_capacity(4);
    if deposited > 0 {
        moves.push(Move {
            player_id: me,
            action: "deposit",
            item_id: None,
            quantity: deposited,
            listing_id: lid,
            purchase_id: pid,
            ..Default::default()
        });
    }
    moves.push(Move {
        player_id: me,
        action: "purchase_pay",
        item_id: None,
        quantity: price,
        listing_id: lid,
        purchase_id: pid,
        ..Default::default()
    });
    moves.push(Move {
        player_id: me,
        action: "purchase_items",
        item_id: item,
        quantity,
        listing_id: lid,
        purchase_id: pid,
        ..Default::default()
    });
    if delivered > 0 {
        moves.push(Move {
            player_id: me,
            action: "withdraw",
            item_id: item,
            quantity,
            listing_id: lid,
            purchase_id: pid,
            ..Default::default()
        });
    }
    if fee > 0 {
        moves.push(fee_move(seller_id, fee, purchase_id, listing_id));
    }
    books::movements(conn, ctx, &moves).await?;
    let purchase = Purchase {
        id: purchase_id,
        listing_id,
        buyer_id: me,
        seller_id,
        item_id: item_id.clone(),
        quantity,
        price,
        created_at: ctx.now,
        unit_price,
    };
    Ok(Done::Purchase(PurchaseEnvelope {
        purchase,
        transfer: Some(Transfer {
            deposited,
            delivered,
            ..Transfer::default()
        }),
    }))
}

/// The purchase this key made, as it was answered.
pub(super) async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    expected_price: i64,
    quantity: Option<i64>,
) -> Result<Option<Done>, AppError> {
    let Some(row) = keyed_row(
                conn,
                "SELECT id, listing_id, buyer_id, seller_id, item_id, quantity, price, created_at, deposited, delivered, unit_price \
                 FROM purchases WHERE buyer_id = $1 AND buy_key = $2",
                ctx,
            )
            .await?
            else {
                return Ok(None);
            };
    let purchase = Purchase {
        id: row.try_get("id")?,
        listing_id: row.try_get("listing_id")?,
        buyer_id: row.try_get("buyer_id")?,
        seller_id: row.try_get("seller_id")?,
        item_id: row.try_get("item_id")?,
        quantity: row.try_get("quantity")?,
        price: row.try_get("price")?,
        created_at: row.try_get("created_at")?,
        unit_price: 0,
    };
    // A request without a quantity expected what the units cost together
    // (so did every purchase from before prices were per unit, which have
    // no unit price stored); one with a quantity, the unit price.
    let stored_unit: Option<i64> = row.try_get("unit_price")?;
    let mut purchase = purchase;
    purchase.unit_price = stored_unit.unwrap_or(purchase.price / purchase.quantity.max(1));
    let matches = match quantity {
        None => purchase.price == expected_price,
        Some(q) => stored_unit == Some(expected_price) && q == purchase.quantity,
    };
    if purchase.listing_id != listing_id || !matches {
        return mismatch();
    }
    let transfer = row
        .try_get::<Option<i64>, _>("deposited")?
        .map(|deposited| -> Result<Transfer, sqlx::Error> {
            Ok(Transfer {
                deposited,
                delivered: row.try_get::<Option<i64>, _>("delivered")?.unwrap_or(0),
                ..Transfer::default()
            })
        })
        .transpose()?;
    Ok(Some(Done::Purchase(PurchaseEnvelope {
        purchase,
        transfer,
    })))
}
