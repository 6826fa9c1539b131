//! Selling: items from the stash (deposited from the save first where the
//! policy and the request allow) go into a new listing's escrow.

use super::{
    cover, keyed_row, limits, listing_from_row, mismatch, Done, OpContext, LISTING_COLUMNS,
};
use crate::books::{self, Move};
use crate::error::AppError;
use marketplace_protocol::{ListingEnvelope, ListingStatus, Transfer};
use sqlx::AnyConnection;
use sqlx::Row;

pub(super) async fn run(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: &str,
    quantity: i64,
    price: i64,
    deposit: i64,
    duration_secs: Option<i64>,
) -> Result<Done, AppError> {
    limits(marketplace_protocol::check_quantity(quantity))?;
    limits(marketplace_protocol::check_price("price", price))?;
    limits(marketplace_protocol::check_total(quantity, price).map(drop))?;
    ctx.policy.check_listing(item_id, quantity, price)?;
    let expires_at = ctx
        .policy
        .durations
        .expiry(false, ctx.now, duration_secs)
        .map_err(AppError::InvalidRequest)?;
    // The item's book first, before any row of an account or a listing:
    // every change that matches takes its locks in this order, so two of
    // them cannot wait for each other (see `fills`).
    super::fills::lock_book(conn, item_id).await?;
    books::checkpoint(conn).await?;
    let outcome = list_from_stash(conn, ctx, item_id, quantity, price, deposit, expires_at).await;
    let mut done = books::keep_or_undo(conn, outcome).await?;
    // Listed: nothing below is a refusal. Resting buy orders at or above
    // the price take what they want at once.
    if let Done::Listing { envelope, .. } = &mut done {
        let fills =
            super::fills::match_listing(conn, ctx, envelope.listing.id, item_id, price, quantity)
                .await?;
        if !fills.is_empty() {
            envelope.listing = super::fetch_listing(conn, envelope.listing.id)
                .await?
                .ok_or_else(|| AppError::Internal("a listing vanished".into()))?;
            envelope.fills = fills;
        }
    }
    Ok(done)
}

async fn list_from_stash(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: &str,
    quantity: i64,
    price: i64,
    deposit: i64,
    expires_at: i64,
) -> Result<Done, AppError> {
    let deposited = cover(conn, ctx, Some(item_id), quantity, deposit).await?;
    // Deposited and escrowed at once: the stash changes by the difference.
    books::adjust(conn, ctx.player_id, Some(item_id), deposited - quantity).await?;
    let sql = format!(
        "INSERT INTO listings (seller_id, item_id, quantity, price, status, created_at, updated_at, create_key, listed_price, deposited, remaining, expires_at) \
         VALUES ($1, $2, $3, $4, 'active', $5, $5, $6, $4, $7, $3, $8) RETURNING {LISTING_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(ctx.player_id)
        .bind(item_id)
        .bind(quantity)
        .bind(price)
        .bind(ctx.now)
        .bind(ctx.idem_key)
        .bind(deposited)
        .bind(expires_at)
        .fetch_one(&mut *conn)
        .await?;
    let listing = listing_from_row(&row)?;
    ctx.outbox.listing_created(listing.id);
    let me = ctx.player_id;
    let mut moves = Vec::with_capacity(2);
    if deposited > 0 {
        moves.push(Move {
            player_id: me,
            action: "deposit",
            item_id: Some(item_id),
            quantity: deposited,
            listing_id: Some(listing.id),
            purchase_id: None,
            ..Default::default()
        });
    }
    moves.push(Move {
        player_id: me,
        action: "list",
        item_id: Some(item_id),
        quantity,
        listing_id: Some(listing.id),
        purchase_id: None,
        ..Default::default()
    });
    books::movements(conn, ctx, &moves).await?;
    Ok(Done::Listing {
        envelope: ListingEnvelope {
            listing,
            fills: Vec::new(),
            transfer: Some(Transfer {
                deposited,
                delivered: 0,
                ..Transfer::default()
            }),
        },
        created: true,
    })
}

/// The listing this key created, as it was right after.
pub(super) async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: &str,
    quantity: i64,
    price: i64,
) -> Result<Option<Done>, AppError> {
    let sql = format!(
                "SELECT {LISTING_COLUMNS}, listed_price, deposited FROM listings WHERE seller_id = $1 AND create_key = $2"
            );
    let Some(row) = keyed_row(conn, &sql, ctx).await? else {
        return Ok(None);
    };
    let mut listing = listing_from_row(&row)?;
    listing.price = row
        .try_get::<Option<i64>, _>("listed_price")?
        .unwrap_or(listing.price);
    if listing.item_id != item_id || listing.quantity != quantity || listing.price != price {
        return mismatch();
    }
    // As the answer left it: less what it sold at once to resting orders.
    let fills = super::fills::fills_of_key(conn, ctx).await?;
    let sold: i64 = fills.iter().map(|f| f.quantity).sum();
    listing.quantity_remaining = listing.quantity - sold;
    listing.status = if listing.quantity_remaining == 0 {
        ListingStatus::Sold
    } else {
        ListingStatus::Active
    };
    listing.updated_at = listing.created_at;
    let transfer = row
        .try_get::<Option<i64>, _>("deposited")?
        .map(|deposited| Transfer {
            deposited,
            delivered: 0,
            ..Transfer::default()
        });
    Ok(Some(Done::Listing {
        envelope: ListingEnvelope {
            listing,
            fills,
            transfer,
        },
        created: true,
    }))
}
