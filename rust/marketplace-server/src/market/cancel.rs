use marketplace_protocol::{ListingEnvelope, Transfer};
use sqlx::AnyConnection;
use sqlx::Row;

use super::{
    change_own_listing, keyed_row, listing_from_row, mismatch, Done, OpContext, SellerChange,
    LISTING_COLUMNS,
};
use crate::books::{self, Move};
use crate::error::AppError;

/// Withdraws a listing: what remains of its escrow goes back to the
/// seller's stash — and, under client deposits, on to the game's save.
/// (What sold before stays sold; its proceeds are the seller's to claim.)
pub(super) async fn run(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
) -> Result<Done, AppError> {
    let (listing, returned) =
        change_own_listing(conn, ctx, listing_id, SellerChange::Cancel).await?;
    let delivers = ctx.policy.delivers();
    let item = Some(listing.item_id.as_str());
    let me = ctx.player_id;
    let mut moves = vec![Move {
        player_id: me,
        action: "cancel",
        item_id: item,
        quantity: returned,
        listing_id: Some(listing_id),
        purchase_id: None,
        ..Default::default()
    }];
    let delivered = if delivers {
        // Back to the stash and on to the save: the stash nets out.
        moves.push(Move {
            player_id: me,
            action: "withdraw",
            item_id: item,
            quantity: returned,
            listing_id: Some(listing_id),
            purchase_id: None,
            ..Default::default()
        });
        sqlx::query("UPDATE listings SET cancel_delivered = returned WHERE id = $1")
            .bind(listing_id)
            .execute(&mut *conn)
            .await?;
        returned
    } else {
        books::credit(conn, me, item, returned).await?;
        0
    };
    books::movements(conn, ctx, &moves).await?;
    Ok(Done::Listing {
        envelope: ListingEnvelope {
            listing,
            fills: Vec::new(),
            transfer: Some(Transfer {
                deposited: 0,
                delivered,
                ..Transfer::default()
            }),
        },
        created: false,
    })
}

/// The cancellation this key made.
pub(super) async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
) -> Result<Option<Done>, AppError> {
    let sql = format!(
                "SELECT {LISTING_COLUMNS}, cancel_delivered FROM listings WHERE seller_id = $1 AND cancel_key = $2"
            );
    let Some(row) = keyed_row(conn, &sql, ctx).await? else {
        return Ok(None);
    };
    let listing = listing_from_row(&row)?;
    if listing.id != listing_id {
        return mismatch();
    }
    let transfer = row
        .try_get::<Option<i64>, _>("cancel_delivered")?
        .map(|delivered| Transfer {
            deposited: 0,
            delivered,
            ..Transfer::default()
        });
    Ok(Some(Done::Listing {
        envelope: ListingEnvelope {
            listing,
            fills: Vec::new(),
            transfer,
        },
        created: false,
    }))
}
