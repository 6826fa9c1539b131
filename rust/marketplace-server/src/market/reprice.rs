//! Repricing: the seller changes the price of an active listing.

use marketplace_protocol::{ListingEnvelope, ListingStatus, Transfer};
use sqlx::AnyConnection;
use sqlx::Row;

use super::{
    change_own_listing, fetch_listing, keyed_row, ledger, limits, mismatch, Done, OpContext,
    SellerChange,
};
use crate::error::AppError;

/// Changes the price of the caller's active listing.
pub(super) async fn run(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    price: i64,
) -> Result<Done, AppError> {
    limits(marketplace_protocol::check_price("price", price))?;
    if let Some(l) = fetch_listing(conn, listing_id).await? {
        if l.seller_id == ctx.player_id && l.status == ListingStatus::Active {
            ctx.policy.check_listing(&l.item_id, l.quantity, price)?;
            limits(marketplace_protocol::check_total(l.quantity_remaining, price).map(drop))?;
        }
        // The item's book before the listing's row (the order every
        // matching change takes its locks in).
        super::fills::lock_book(conn, &l.item_id).await?;
    }
    let (mut listing, _) =
        change_own_listing(conn, ctx, listing_id, SellerChange::Reprice(price)).await?;
    sqlx::query(
        "INSERT INTO listing_reprices (listing_id, seller_id, idem_key, price, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(listing_id)
    .bind(ctx.player_id)
    .bind(ctx.idem_key)
    .bind(price)
    .bind(ctx.now)
    .execute(&mut *conn)
    .await?;
    ledger(conn, ctx, "reprice", Some(listing_id), None, Some(price)).await?;
    // At its new price it may meet resting buy orders.
    let fills = super::fills::match_listing(
        conn,
        ctx,
        listing_id,
        &listing.item_id,
        price,
        listing.quantity_remaining,
    )
    .await?;
    if !fills.is_empty() {
        listing = fetch_listing(conn, listing_id)
            .await?
            .ok_or_else(|| AppError::Internal("a listing vanished".into()))?;
    }
    Ok(Done::Listing {
        envelope: ListingEnvelope {
            listing,
            fills,
            transfer: Some(Transfer::default()),
        },
        created: false,
    })
}

/// The reprice this key made, with the listing as it left it.
pub(super) async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    price: i64,
) -> Result<Option<Done>, AppError> {
    let Some(row) = keyed_row(
        conn,
        "SELECT listing_id, price, at FROM listing_reprices WHERE seller_id = $1 AND idem_key = $2",
        ctx,
    )
    .await?
    else {
        return Ok(None);
    };
    let (id, new_price, at): (i64, i64, i64) = (
        row.try_get("listing_id")?,
        row.try_get("price")?,
        row.try_get("at")?,
    );
    if id != listing_id || new_price != price {
        return mismatch();
    }
    let Some(mut listing) = fetch_listing(conn, id).await? else {
        return Err(AppError::Internal(format!(
            "reprice of missing listing {id}"
        )));
    };
    let fills = super::fills::fills_of_key(conn, ctx).await?;
    listing.price = new_price;
    listing.updated_at = at;
    if listing.status == ListingStatus::Cancelled || listing.status == ListingStatus::Expired {
        listing.status = ListingStatus::Active;
    }
    Ok(Some(Done::Listing {
        envelope: ListingEnvelope {
            listing,
            fills,
            transfer: Some(Transfer::default()),
        },
        created: false,
    }))
}
