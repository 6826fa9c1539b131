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
) -> Result<Done, AppError> {
    limits(marketplace_protocol::check_quantity(quantity))?;
    limits(marketplace_protocol::check_price("price", price))?;
    ctx.policy.check_listing(item_id, quantity, price)?;
    books::checkpoint(conn).await?;
    let outcome = list_from_stash(conn, ctx, item_id, quantity, price, deposit).await;
    books::keep_or_undo(conn, outcome).await
}

async fn list_from_stash(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: &str,
    quantity: i64,
    price: i64,
    deposit: i64,
) -> Result<Done, AppError> {
    let deposited = cover(conn, ctx, Some(item_id), quantity, deposit).await?;
    // Deposited and escrowed at once: the stash changes by the difference.
    books::adjust(conn, ctx.player_id, Some(item_id), deposited - quantity).await?;
    let sql = format!(
        "INSERT INTO listings (seller_id, item_id, quantity, price, status, created_at, updated_at, create_key, listed_price, deposited) \
         VALUES ($1, $2, $3, $4, 'active', $5, $5, $6, $4, $7) RETURNING {LISTING_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(ctx.player_id)
        .bind(item_id)
        .bind(quantity)
        .bind(price)
        .bind(ctx.now)
        .bind(ctx.idem_key)
        .bind(deposited)
        .fetch_one(&mut *conn)
        .await?;
    let listing = listing_from_row(&row)?;
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
        });
    }
    moves.push(Move {
        player_id: me,
        action: "list",
        item_id: Some(item_id),
        quantity,
        listing_id: Some(listing.id),
        purchase_id: None,
    });
    books::movements(conn, ctx, &moves).await?;
    Ok(Done::Listing {
        envelope: ListingEnvelope {
            listing,
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
    listing.status = ListingStatus::Active;
    listing.updated_at = listing.created_at;
    if listing.item_id != item_id || listing.quantity != quantity || listing.price != price {
        return mismatch();
    }
    let transfer = row
        .try_get::<Option<i64>, _>("deposited")?
        .map(|deposited| Transfer {
            deposited,
            delivered: 0,
            ..Transfer::default()
        });
    Ok(Some(Done::Listing {
        envelope: ListingEnvelope { listing, transfer },
        created: true,
    }))
}
