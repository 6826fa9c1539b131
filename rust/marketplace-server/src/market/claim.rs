use marketplace_protocol::{Claim, Transfer};
use sqlx::AnyConnection;
use sqlx::Row;

use super::{keyed_row, mismatch, Done, OpContext};
use crate::books::{self, Move};
use crate::error::AppError;

/// Pays out a sale once, less the fees the market kept: the conditional update on `claimed_at IS NULL` lets
/// exactly one of any number of concurrent claims through. The proceeds go
/// to the seller's account — and under client deposits on to the save.
pub(super) async fn run(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    sale_id: i64,
) -> Result<Done, AppError> {
    let delivers = i64::from(ctx.policy.delivers());
    let row = sqlx::query(
        "UPDATE purchases SET claimed_at = $1, claim_key = $4, claim_delivered = (price - fee) * $5 \
         WHERE id = $2 AND seller_id = $3 AND claimed_at IS NULL RETURNING listing_id, price - fee AS amount",
    )
    .bind(ctx.now)
    .bind(sale_id)
    .bind(ctx.player_id)
    .bind(ctx.idem_key)
    .bind(delivers)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        let found: Option<(i64,)> = sqlx::query_as("SELECT seller_id FROM purchases WHERE id = $1")
            .bind(sale_id)
            .fetch_optional(&mut *conn)
            .await?;
        return Err(match found {
            None => AppError::NotFound("Sale"),
            Some((seller,)) if seller != ctx.player_id => {
                AppError::Forbidden("Only the seller can claim these proceeds")
            }
            Some(_) => AppError::AlreadyClaimed,
        });
    };
    let listing_id: i64 = row.try_get("listing_id")?;
    let amount: i64 = row.try_get("amount")?;
    let me = ctx.player_id;
    let mut moves = vec![Move {
        player_id: me,
        action: "claim",
        item_id: None,
        quantity: amount,
        listing_id: Some(listing_id),
        purchase_id: Some(sale_id),
        ..Default::default()
    }];
    let delivered = if delivers == 1 {
        // Into the account and on to the save: the account nets out.
        moves.push(Move {
            player_id: me,
            action: "withdraw",
            item_id: None,
            quantity: amount,
            listing_id: Some(listing_id),
            purchase_id: Some(sale_id),
            ..Default::default()
        });
        amount
    } else {
        books::credit(conn, me, None, amount).await?;
        0
    };
    books::movements(conn, ctx, &moves).await?;
    Ok(Done::Claim(Claim {
        sale_id,
        amount,
        transfer: Some(Transfer {
            deposited: 0,
            delivered,
            ..Transfer::default()
        }),
    }))
}

/// The claim this key made.
pub(super) async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    sale_id: i64,
) -> Result<Option<Done>, AppError> {
    let Some(row) = keyed_row(
        conn,
        "SELECT id, price - fee AS amount, claim_delivered FROM purchases WHERE seller_id = $1 AND claim_key = $2",
        ctx,
    )
    .await?
    else {
        return Ok(None);
    };
    let (id, amount): (i64, i64) = (row.try_get("id")?, row.try_get("amount")?);
    if id != sale_id {
        return mismatch();
    }
    let transfer = row
        .try_get::<Option<i64>, _>("claim_delivered")?
        .map(|delivered| Transfer {
            deposited: 0,
            delivered,
            ..Transfer::default()
        });
    Ok(Some(Done::Claim(Claim {
        sale_id: id,
        amount,
        transfer,
    })))
}
