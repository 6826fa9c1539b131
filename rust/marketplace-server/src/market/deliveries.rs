//! Deliveries: what the market owes a player from changes they were not
//! there for — a buy order's items and refunds, a listing's escrow after
//! it expired — kept for them until they collect it, exactly once.
//!
//! Collecting is a keyed change like every other: the conditional update
//! on `collected_at IS NULL` lets each delivery through once, whatever the
//! number of keys or replicas asking; the key is written into the rows it
//! collected, so a replay gets the same deliveries back forever. That is
//! also how a game keeping its own save collects: it sends a key it has
//! saved, applies the answer to its save, and repeats the *same* key after
//! a crash until its save holds the answer — the deliveries stay the
//! key's.
//!
//! Under client deposits a collected delivery goes on into the game's save
//! (`withdraw` rows); under server grants nothing waits — what is owed
//! lands in the market account at once ([`super::fills::owe`]) — but rows
//! migrated from before and any collected by a changed policy go into the
//! account.

use marketplace_protocol::{Collected, Delivery, Transfer};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{Done, OpContext};
use crate::books::{self, Move};
use crate::error::AppError;

/// The most deliveries one request collects.
pub const MAX_COLLECT: usize = 100;

pub(crate) const DELIVERY_COLUMNS: &str =
    "id, kind, item_id, quantity, listing_id, order_id, fill_id, created_at, collected_at";

pub(crate) fn delivery_from_row(row: &AnyRow) -> Result<Delivery, sqlx::Error> {
    Ok(Delivery {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        item_id: row.try_get("item_id")?,
        quantity: row.try_get("quantity")?,
        listing_id: row.try_get("listing_id")?,
        order_id: row.try_get("order_id")?,
        fill_id: row.try_get("fill_id")?,
        created_at: row.try_get("created_at")?,
        collected_at: row.try_get("collected_at")?,
    })
}

/// Checks the ids of a collect request: 1..=[`MAX_COLLECT`] positive ids.
pub fn check_ids(ids: &[i64]) -> Result<(), String> {
    if ids.is_empty() || ids.len() > MAX_COLLECT {
        return Err(format!(
            "delivery_ids must hold 1 to {MAX_COLLECT} delivery ids"
        ));
    }
    if ids.iter().any(|id| *id < 1) {
        return Err("delivery ids are positive".into());
    }
    Ok(())
}

/// Collects those of `ids` that are the caller's and not collected yet.
/// None of them: `not_found` (nothing changed; a retry finds the same).
pub(super) async fn collect(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    ids: &[i64],
) -> Result<Done, AppError> {
    check_ids(ids).map_err(AppError::InvalidRequest)?;
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let delivers = ctx.policy.delivers();
    let me = ctx.player_id;
    let sql = format!(
        "UPDATE deliveries SET collected_at = $1, collect_key = $2, collect_delivered = quantity * $3 \
         WHERE id = $4 AND player_id = $5 AND collected_at IS NULL RETURNING {DELIVERY_COLUMNS}"
    );
    let mut collected = Vec::new();
    for id in ids {
        if let Some(row) = sqlx::query(&sql)
            .bind(ctx.now)
            .bind(ctx.idem_key)
            .bind(i64::from(delivers))
            .bind(id)
            .bind(me)
            .fetch_optional(&mut *conn)
            .await?
        {
            collected.push(delivery_from_row(&row)?);
        }
    }
    if collected.is_empty() {
        return Err(AppError::NotFound("Delivery"));
    }
    let mut moves = Vec::with_capacity(collected.len() * 2);
    let mut delivered = 0;
    for d in &collected {
        moves.push(Move {
            player_id: me,
            action: "collect",
            item_id: d.item_id.as_deref(),
            quantity: d.quantity,
            listing_id: d.listing_id,
            order_id: d.order_id,
            purchase_id: d.fill_id,
            delivery_id: Some(d.id),
        });
        if delivers {
            // Into the account and on to the save: the account nets out.
            moves.push(Move {
                player_id: me,
                action: "withdraw",
                item_id: d.item_id.as_deref(),
                quantity: d.quantity,
                delivery_id: Some(d.id),
                ..Default::default()
            });
            delivered += d.quantity;
        } else {
            books::credit(conn, me, d.item_id.as_deref(), d.quantity).await?;
        }
    }
    books::movements(conn, ctx, &moves).await?;
    Ok(Done::Collected(Collected {
        deliveries: collected,
        transfer: Some(Transfer {
            delivered,
            ..Transfer::default()
        }),
    }))
}

/// The deliveries this key collected.
pub(super) async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    ids: &[i64],
) -> Result<Option<Done>, AppError> {
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS}, collect_delivered FROM deliveries \
         WHERE player_id = $1 AND collect_key = $2 ORDER BY id"
    );
    let rows = sqlx::query(&sql)
        .bind(ctx.player_id)
        .bind(ctx.idem_key)
        .fetch_all(&mut *conn)
        .await?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut deliveries = Vec::with_capacity(rows.len());
    let mut delivered = 0;
    for row in &rows {
        let d = delivery_from_row(row)?;
        if !ids.contains(&d.id) {
            return super::mismatch();
        }
        delivered += row
            .try_get::<Option<i64>, _>("collect_delivered")?
            .unwrap_or(0);
        deliveries.push(d);
    }
    Ok(Some(Done::Collected(Collected {
        deliveries,
        transfer: Some(Transfer {
            delivered,
            ..Transfer::default()
        }),
    })))
}
