//! The notification inbox: what happened to a player's listings and orders
//! that they did not ask for (a buyer took units, a resting order filled,
//! the expiry sent something back), kept until they acknowledge it.
//!
//! One notification per listing or order and kind, brought up to date by
//! every later fill until acknowledged — a trader whose order fills in 40
//! pieces overnight finds one "order filled: 40 units" at login, not 40
//! messages. Written in the transaction of the change ([`super::publish`]),
//! so a notification exists exactly when its change does. Changes a player
//! made themselves (their own purchase, their own cancel) notify nobody:
//! they have the answer.
//!
//! `GET /v1/me/notifications` lists the open ones; `POST
//! /v1/me/notifications/ack` closes them (naturally idempotent, so no
//! idempotency key). Acknowledged ones are deleted after a day, open ones
//! after `--notification-retention-days`.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use marketplace_protocol::{
    AckRequest, Fill, Listing, ListingStatus, Notification, NotificationsPage, Order, OrderStatus,
    MAX_ACK_IDS,
};
use serde::Deserialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::error::{Answer, AppError};
use crate::extract::{ApiJson, AuthPlayer};
use crate::op::OpContext;
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/me/notifications", get(list))
        .route("/v1/me/notifications/ack", post(ack))
}

const COLUMNS: &str = "id, kind, item_id, listing_id, order_id, quantity, credits, fee, fills, \
     created_at, updated_at";

fn from_row(row: &AnyRow) -> Result<Notification, sqlx::Error> {
    Ok(Notification {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        item_id: row.try_get("item_id")?,
        listing_id: row.try_get("listing_id")?,
        order_id: row.try_get("order_id")?,
        quantity: row.try_get("quantity")?,
        credits: row.try_get("credits")?,
        fee: row.try_get("fee")?,
        fills: row.try_get("fills")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

/// What one change adds to a notification.
#[derive(Default)]
struct Delta {
    item_id: String,
    quantity: i64,
    credits: i64,
    fee: i64,
    fills: i64,
}

/// The notification kinds and the subject column each is kept per.
fn subject_column(kind: &str) -> &'static str {
    match kind {
        "sold" | "listing_expired" => "listing_id",
        _ => "order_id",
    }
}

/// Adds what this change did to other players' listings and orders to
/// their open notifications (creating them as needed); returns each
/// notification as it now is, with its player.
pub(super) async fn bring_up_to_date(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    fills: &[Fill],
    listings: &[(Listing, i64)],
    orders: &[(Order, i64)],
) -> Result<Vec<(i64, Notification)>, AppError> {
    let actor = ctx.player_id;
    // (player, kind, subject) -> what to add; ordered, so concurrent
    // changes take the rows in one order.
    let mut deltas: BTreeMap<(i64, &'static str, i64), Delta> = BTreeMap::new();
    for f in fills {
        if f.seller_id != actor {
            let d = deltas
                .entry((f.seller_id, "sold", f.listing_id))
                .or_default();
            d.item_id.clone_from(&f.item_id);
            d.quantity += f.quantity;
            d.credits += f.price - f.fee;
            d.fee += f.fee;
            d.fills += 1;
        }
        if let Some(order_id) = f.order_id.filter(|_| f.buyer_id != actor) {
            let d = deltas
                .entry((f.buyer_id, "order_filled", order_id))
                .or_default();
            d.item_id.clone_from(&f.item_id);
            d.quantity += f.quantity;
            d.credits += f.price;
            d.fills += 1;
        }
    }
    // Only the sweep stores `expired` (a seller's own cancel says
    // `cancelled`); it never acts for a player.
    for (l, returned) in listings {
        if l.status == ListingStatus::Expired && l.seller_id != actor {
            let d = deltas
                .entry((l.seller_id, "listing_expired", l.id))
                .or_default();
            d.item_id.clone_from(&l.item_id);
            d.quantity += returned;
        }
    }
    for (o, returned) in orders {
        if o.status == OrderStatus::Expired && o.buyer_id != actor {
            let d = deltas
                .entry((o.buyer_id, "order_expired", o.id))
                .or_default();
            d.item_id.clone_from(&o.item_id);
            d.quantity += o.quantity_remaining;
            d.credits += returned;
        }
    }
    // One statement per chunk: each open notification is brought up to
    // date, or made (the keys are distinct, so no row of a statement
    // conflicts with another of it).
    let deltas: Vec<_> = deltas.into_iter().collect();
    let mut out = Vec::with_capacity(deltas.len());
    for chunk in deltas.chunks(50) {
        let mut sql = String::from(
            "INSERT INTO notifications (player_id, kind, subject_id, item_id, listing_id, order_id, \
             quantity, credits, fee, fills, created_at, updated_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 11;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9,
                b + 10,
                b + 11,
                b + 11
            ));
        }
        sql.push_str(&format!(
            " ON CONFLICT (player_id, kind, subject_id) WHERE acked_at IS NULL DO UPDATE SET \
             quantity = notifications.quantity + excluded.quantity, \
             credits = notifications.credits + excluded.credits, \
             fee = notifications.fee + excluded.fee, fills = notifications.fills + excluded.fills, \
             updated_at = excluded.updated_at RETURNING player_id, {COLUMNS}"
        ));
        let mut q = sqlx::query(&sql);
        for ((player, kind, subject), d) in chunk {
            let (listing, order) = match subject_column(kind) {
                "listing_id" => (Some(*subject), None),
                _ => (None, Some(*subject)),
            };
            q = q
                .bind(*player)
                .bind(*kind)
                .bind(*subject)
                .bind(d.item_id.clone())
                .bind(listing)
                .bind(order)
                .bind(d.quantity)
                .bind(d.credits)
                .bind(d.fee)
                .bind(d.fills)
                .bind(ctx.now);
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.push((row.try_get("player_id")?, from_row(&row)?));
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ListQuery {
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/me/notifications?cursor=&limit=`: open notifications, oldest
/// first, and how many deliveries wait.
async fn list(
    State(state): State<AppState>,
    AuthPlayer(me): AuthPlayer,
    Query(q): Query<ListQuery>,
) -> Result<Answer, AppError> {
    let (limit, after) = crate::routes::page(q.limit, q.cursor.as_deref())?;
    let sql = format!(
        "SELECT {COLUMNS} FROM notifications WHERE player_id = $1 AND id > $2 \
         AND acked_at IS NULL ORDER BY id LIMIT $3"
    );
    let (notifications, next_cursor) =
        crate::routes::own_page(&state, &sql, me, after, limit, from_row, |n| n.id).await?;
    let (deliveries_waiting,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM deliveries WHERE player_id = $1 AND collected_at IS NULL",
    )
    .bind(me)
    .fetch_one(state.0.db.reader())
    .await?;
    Answer::json(
        StatusCode::OK,
        &NotificationsPage {
            notifications,
            deliveries_waiting,
            next_cursor,
        },
    )
}

#[derive(serde::Serialize)]
struct Acked {
    acked: u64,
}

/// `POST /v1/me/notifications/ack {ids}`: closes the player's own open
/// notifications among `ids`; others' ids and closed ones are ignored.
async fn ack(
    State(state): State<AppState>,
    AuthPlayer(me): AuthPlayer,
    ApiJson(req): ApiJson<AckRequest>,
) -> Result<Answer, AppError> {
    if req.ids.len() > MAX_ACK_IDS {
        return Err(AppError::InvalidRequest(format!(
            "at most {MAX_ACK_IDS} notifications per acknowledgement"
        )));
    }
    if req.ids.is_empty() {
        return Answer::json(StatusCode::OK, &Acked { acked: 0 });
    }
    let sql = match &req.fills {
        None => {
            let placeholders: Vec<String> =
                (0..req.ids.len()).map(|i| format!("${}", i + 3)).collect();
            format!(
                "UPDATE notifications SET acked_at = $1 WHERE player_id = $2 AND acked_at IS NULL \
                 AND id IN ({})",
                placeholders.join(", ")
            )
        }
        Some(fills) if fills.len() == req.ids.len() => {
            // Closed only as shown: one that grew since stays open.
            let pairs: Vec<String> = (0..req.ids.len())
                .map(|i| format!("(id = ${} AND fills <= ${})", 2 * i + 3, 2 * i + 4))
                .collect();
            format!(
                "UPDATE notifications SET acked_at = $1 WHERE player_id = $2 AND acked_at IS NULL \
                 AND ({})",
                pairs.join(" OR ")
            )
        }
        Some(_) => {
            return Err(AppError::InvalidRequest(
                "fills, when given, has one entry per id".into(),
            ))
        }
    };
    let mut tx = state.0.db.begin_write().await?;
    let mut q = sqlx::query(&sql).bind(state.0.clock.now()).bind(me);
    for (i, id) in req.ids.iter().enumerate() {
        q = q.bind(*id);
        if let Some(fills) = req.fills.as_ref().and_then(|f| f.get(i)) {
            q = q.bind(*fills);
        }
    }
    let acked = q.execute(&mut *tx).await?.rows_affected();
    tx.commit().await?;
    Answer::json(StatusCode::OK, &Acked { acked })
}

/// How long acknowledged notifications are kept.
const ACKED_KEPT_SECS: i64 = 24 * 3600;

/// Deletes acknowledged notifications after a day and open ones after
/// `retention_secs`, in chunks; returns how many went.
pub(crate) async fn prune(
    db: &crate::Db,
    now: i64,
    retention_secs: i64,
) -> Result<u64, sqlx::Error> {
    // One indexed condition per pass (`notifications_acked`,
    // `notifications_by_time`): an `OR` of the two would scan the table.
    let mut total = 0;
    for (condition, cutoff) in [
        (
            "acked_at IS NOT NULL AND acked_at < $1",
            now - ACKED_KEPT_SECS,
        ),
        ("updated_at < $1", now - retention_secs),
    ] {
        let sql = format!(
            "DELETE FROM notifications WHERE id IN (SELECT id FROM notifications \
             WHERE {condition} LIMIT 500)"
        );
        loop {
            let mut tx = db.begin_write().await?;
            let n = sqlx::query(&sql)
                .bind(cutoff)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            tx.commit().await?;
            total += n;
            if n < 500 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    Ok(total)
}
