//! The live market: the change stream (`GET /v1/stream`) and the
//! notification inbox (`/v1/me/notifications`).
//!
//! # Pushes are hints
//! Nothing here moves value. An event says "this listing now looks like
//! this"; the client redraws a row. Holds, journals and the books settle
//! only on the answers to a player's own requests (I4) — a pushed "sold"
//! never releases a hold, and a lost event loses nothing but a redraw.
//!
//! # The outbox, numbered in commit order
//! Every change records what it touched in its [`OpContext`]'s
//! [`Outbox`] (a listing, an order, a fill, a delivery). If the change
//! succeeds, [`publish`] — still inside its transaction — reads those rows
//! as they now are, writes the events to `stream_events`, brings the
//! player's notifications up to date, and last of all bumps the single
//! `stream_head` row by the number of events. That row lock is held until
//! the commit, so two transactions that publish commit one after the
//! other and their events are numbered in commit order, without gaps, on
//! SQLite and on PostgreSQL, whatever replica ran them. A reader that sees
//! event `n` committed has seen every event before it: a client resuming
//! "after `n`" misses nothing and sees nothing twice. The price is that
//! publishing commits are serial on PostgreSQL (refusals publish nothing
//! and are not); BENCHMARKS.md has what that costs.
//!
//! Rejected alternatives: ids from a sequence (taken in one order,
//! committed in another: a reader can see 12 before 11 commits and skip
//! 11 for good); LISTEN/NOTIFY as the stream itself (lost while a replica
//! reconnects; payloads capped at 8 kB). Every replica instead tails the
//! table ([`hub`]), woken at once by its own commits and polling for the
//! others'.
//!
//! # What is deliberately absent
//! Per-player event history beyond the retention (`--stream-retention-secs`):
//! a client further behind is told to reload. What a player must not miss
//! while away is in the inbox, kept until acknowledged.

use std::collections::BTreeSet;
use std::sync::Mutex;

use marketplace_protocol::{
    Delivery, Fill, Listing, ListingStatus, Order, OrderStatus, StreamChange, StreamEvent,
};
use sqlx::{AnyConnection, Row};

use crate::error::AppError;
use crate::market::deliveries::{delivery_from_row, DELIVERY_COLUMNS};
use crate::market::orders::{order_from_row, ORDER_COLUMNS};
use crate::market::{as_of, fill_from_row, listing_from_row, BROWSE_COLUMNS, FILL_COLUMNS};
use crate::op::OpContext;

pub(crate) mod hub;
pub(crate) mod inbox;
mod sse;

pub use hub::Hub;

/// The stream and the inbox routes.
pub fn router() -> axum::Router<crate::AppState> {
    sse::router().merge(inbox::router())
}

/// What one change touched, collected while it runs.
#[derive(Default)]
pub struct Outbox(Mutex<Touched>);

#[derive(Default)]
struct Touched {
    listings: BTreeSet<i64>,
    created_listing: Option<i64>,
    orders: BTreeSet<i64>,
    created_order: Option<i64>,
    fills: BTreeSet<i64>,
    deliveries: BTreeSet<i64>,
}

impl Outbox {
    fn with(&self, f: impl FnOnce(&mut Touched)) {
        if let Ok(mut t) = self.0.lock() {
            f(&mut t);
        }
    }

    /// A listing changed (repriced, cancelled, expired).
    pub fn listing(&self, id: i64) {
        self.with(|t| {
            t.listings.insert(id);
        });
    }

    pub fn listing_created(&self, id: i64) {
        self.with(|t| {
            t.listings.insert(id);
            t.created_listing = Some(id);
        });
    }

    /// A buy order changed (cancelled, expired).
    pub fn order(&self, id: i64) {
        self.with(|t| {
            t.orders.insert(id);
        });
    }

    pub fn order_placed(&self, id: i64) {
        self.with(|t| {
            t.orders.insert(id);
            t.created_order = Some(id);
        });
    }

    /// A fill (a `purchases` row): its listing and order changed too.
    pub fn fill(&self, id: i64) {
        self.with(|t| {
            t.fills.insert(id);
        });
    }

    /// A delivery was written for a player.
    pub fn delivery(&self, id: i64) {
        self.with(|t| {
            t.deliveries.insert(id);
        });
    }

    fn take(&self) -> Touched {
        self.0
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
    }
}

/// One event ready to be numbered: who may see it and what it says.
struct Pending {
    item_id: Option<String>,
    owner_id: Option<i64>,
    recipient_id: Option<i64>,
    change: StreamChange,
}

/// Rows per `IN (...)` read and per multi-row insert.
const CHUNK: usize = 100;

/// Publishes what the change in `ctx` touched, inside its transaction (see
/// the module docs): events, notifications, and the counter last.
/// Returns the number of events written.
pub async fn publish(conn: &mut AnyConnection, ctx: &OpContext<'_>) -> Result<usize, AppError> {
    let touched = ctx.outbox.take();
    if touched.listings.is_empty()
        && touched.orders.is_empty()
        && touched.fills.is_empty()
        && touched.deliveries.is_empty()
    {
        return Ok(0);
    }
    let now = ctx.now;
    let fills: Vec<Fill> = read_rows(
        conn,
        &format!("SELECT {FILL_COLUMNS} FROM purchases WHERE id IN (?) ORDER BY id"),
        &touched.fills,
        fill_from_row,
    )
    .await?;
    let mut listing_ids = touched.listings.clone();
    let mut order_ids = touched.orders.clone();
    for f in &fills {
        listing_ids.insert(f.listing_id);
        if let Some(o) = f.order_id {
            order_ids.insert(o);
        }
    }
    let listings: Vec<(Listing, i64)> = read_rows(
        conn,
        &format!(
            "SELECT {BROWSE_COLUMNS}, l.returned FROM listings l JOIN players p ON p.id = l.seller_id \
             WHERE l.id IN (?) ORDER BY l.id"
        ),
        &listing_ids,
        |r| {
            let returned: Option<i64> = r.try_get("returned")?;
            Ok((listing_from_row(r)?, returned.unwrap_or(0)))
        },
    )
    .await?;
    let orders: Vec<(Order, i64)> = read_rows(
        conn,
        &format!("SELECT {ORDER_COLUMNS}, returned FROM orders WHERE id IN (?) ORDER BY id"),
        &order_ids,
        |r| {
            let returned: Option<i64> = r.try_get("returned")?;
            Ok((order_from_row(r)?, returned.unwrap_or(0)))
        },
    )
    .await?;
    let deliveries: Vec<(i64, Delivery)> = read_rows(
        conn,
        &format!(
            "SELECT {DELIVERY_COLUMNS}, player_id FROM deliveries WHERE id IN (?) ORDER BY id"
        ),
        &touched.deliveries,
        |r| Ok((r.try_get("player_id")?, delivery_from_row(r)?)),
    )
    .await?;

    let mut events = Vec::new();
    for (listing, _) in &listings {
        let listing = as_of(listing.clone(), now);
        let change = match listing.status {
            ListingStatus::Active if touched.created_listing == Some(listing.id) => "created",
            ListingStatus::Active => "updated",
            ListingStatus::Sold => "sold",
            ListingStatus::Cancelled => "cancelled",
            ListingStatus::Expired => "expired",
        };
        events.push(Pending {
            item_id: Some(listing.item_id.clone()),
            owner_id: Some(listing.seller_id),
            recipient_id: None,
            change: StreamChange::Listing {
                change: change.into(),
                listing,
            },
        });
    }
    for (order, _) in &orders {
        let change = match order.status {
            OrderStatus::Active if touched.created_order == Some(order.id) => "placed",
            OrderStatus::Active => "updated",
            OrderStatus::Filled => "filled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Expired => "expired",
        };
        events.push(Pending {
            item_id: Some(order.item_id.clone()),
            owner_id: Some(order.buyer_id),
            recipient_id: None,
            change: StreamChange::Order {
                change: change.into(),
                order: order.clone(),
            },
        });
    }
    for fill in &fills {
        events.push(Pending {
            item_id: Some(fill.item_id.clone()),
            owner_id: None,
            recipient_id: None,
            change: StreamChange::Trade {
                item_id: fill.item_id.clone(),
                quantity: fill.quantity,
                unit_price: fill.unit_price,
                fill_id: fill.id,
            },
        });
    }
    for (player, delivery) in deliveries {
        events.push(Pending {
            item_id: None,
            owner_id: None,
            recipient_id: Some(player),
            change: StreamChange::Delivery { delivery },
        });
    }
    for (player, notification) in
        inbox::bring_up_to_date(conn, ctx, &fills, &listings, &orders).await?
    {
        events.push(Pending {
            item_id: None,
            owner_id: None,
            recipient_id: Some(player),
            change: StreamChange::Notification { notification },
        });
    }
    write_events(conn, now, events).await
}

/// Numbers `events` after the stream's head (taking its row lock, held to
/// the commit) and writes them.
async fn write_events(
    conn: &mut AnyConnection,
    now: i64,
    events: Vec<Pending>,
) -> Result<usize, AppError> {
    let n = events.len();
    if n == 0 {
        return Ok(0);
    }
    let (last,): (i64,) =
        sqlx::query_as("UPDATE stream_head SET seq = seq + $1 WHERE id = 1 RETURNING seq")
            .bind(n as i64)
            .fetch_one(&mut *conn)
            .await?;
    let first = last - n as i64 + 1;
    let mut rows = Vec::with_capacity(n);
    for (i, e) in events.into_iter().enumerate() {
        let event = StreamEvent {
            seq: first + i as i64,
            at: now,
            change: e.change,
        };
        let body = serde_json::to_string(&event)
            .map_err(|err| AppError::Internal(format!("event did not serialise: {err}")))?;
        rows.push((event.seq, e.item_id, e.owner_id, e.recipient_id, body));
    }
    for chunk in rows.chunks(CHUNK) {
        let mut sql = String::from(
            "INSERT INTO stream_events (seq, item_id, owner_id, recipient_id, body, created_at) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 6;
            if i > 0 {
                sql.push(',');
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            ));
        }
        let mut q = sqlx::query(&sql);
        for (seq, item, owner, recipient, body) in chunk {
            q = q
                .bind(*seq)
                .bind(item.clone())
                .bind(*owner)
                .bind(*recipient)
                .bind(body.clone())
                .bind(now);
        }
        q.execute(&mut *conn).await?;
    }
    Ok(n)
}

/// Reads the rows `select` finds for `ids` (its `IN (?)` stands for
/// them), in chunks.
async fn read_rows<T>(
    conn: &mut AnyConnection,
    select: &str,
    ids: &BTreeSet<i64>,
    from_row: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
) -> Result<Vec<T>, AppError> {
    let ids: Vec<i64> = ids.iter().copied().collect();
    let mut out = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(CHUNK) {
        let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
        let sql = select.replace("IN (?)", &format!("IN ({})", placeholders.join(", ")));
        let mut q = sqlx::query(&sql);
        for id in chunk {
            q = q.bind(*id);
        }
        for row in q.fetch_all(&mut *conn).await? {
            out.push(from_row(&row)?);
        }
    }
    Ok(out)
}

/// Events deleted per transaction while pruning.
const PRUNE_CHUNK: i64 = 1000;

/// Deletes the events older than the retention, and the notifications
/// past theirs (see [`inbox::prune`]). The events' cut is announced in
/// `stream_head.pruned_through` *before* any row goes, so a subscriber
/// resuming from inside the cut is told to reload rather than given a
/// stream with holes.
pub(crate) async fn prune(state: &crate::AppState) -> Result<u64, sqlx::Error> {
    let config = &state.0.config;
    let now = state.0.clock.now();
    let db = &state.0.db;
    let cutoff = now - config.stream_retention_secs as i64;
    let (cut,): (Option<i64>,) =
        sqlx::query_as("SELECT MAX(seq) FROM stream_events WHERE created_at < $1")
            .bind(cutoff)
            .fetch_one(db.reader())
            .await?;
    let mut total = 0;
    if let Some(cut) = cut {
        let mut tx = db.begin_write().await?;
        sqlx::query(
            "UPDATE stream_head SET pruned_through = $1 WHERE id = 1 AND pruned_through < $1",
        )
        .bind(cut)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        loop {
            let mut tx = db.begin_write().await?;
            let n = sqlx::query(
                "DELETE FROM stream_events WHERE seq IN \
                 (SELECT seq FROM stream_events WHERE seq <= $1 ORDER BY seq LIMIT $2)",
            )
            .bind(cut)
            .bind(PRUNE_CHUNK)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            tx.commit().await?;
            total += n;
            if n < PRUNE_CHUNK as u64 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    let retention = config.notification_retention_days as i64 * 86_400;
    total += inbox::prune(db, now, retention).await?;
    Ok(total)
}
