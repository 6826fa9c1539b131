//! Buy orders: placed with their whole price in escrow, matched at once
//! against resting listings ([`super::fills`]), resting with what is left
//! until filled, cancelled or expired.
//!
//! The escrow is `remaining × max_price` for as long as the order is
//! active: each fill takes `quantity × max_price` from it (the price to
//! the seller's proceeds, any difference back to the buyer), and a cancel
//! or an expiry returns what is left. Placing and cancelling are keyed and
//! exactly once like every change; fills happen under other players' keys
//! and are the order's rows in `purchases`.

use marketplace_protocol::{MarketChange, Order, OrderEnvelope, OrderStatus, Transfer};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::fills::{self, fills_of_key};
use super::{cover, keyed_row, limits, mismatch, Done, OpContext};
use crate::books::{self, Move};
use crate::error::AppError;

pub(crate) const ORDER_COLUMNS: &str =
    "id, buyer_id, item_id, quantity, remaining, max_price, min_fill, escrow, status, \
     created_at, updated_at, expires_at";

pub(crate) fn order_from_row(row: &AnyRow) -> Result<Order, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Order {
        id: row.try_get("id")?,
        buyer_id: row.try_get("buyer_id")?,
        item_id: row.try_get("item_id")?,
        quantity: row.try_get("quantity")?,
        quantity_remaining: row.try_get("remaining")?,
        max_price: row.try_get("max_price")?,
        min_fill: row.try_get("min_fill")?,
        escrow: row.try_get("escrow")?,
        status: OrderStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown order status {status:?}").into(),
        })?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        expires_at: row.try_get("expires_at")?,
    })
}

/// The order as of `now`: past its expiry nothing fills it.
pub(crate) fn as_of(mut order: Order, now: i64) -> Order {
    if order.status == OrderStatus::Active && order.expires_at.is_some_and(|t| t <= now) {
        order.status = OrderStatus::Expired;
    }
    order
}

async fn fetch(conn: &mut AnyConnection, order_id: i64) -> Result<Option<Order>, sqlx::Error> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE id = $1");
    sqlx::query(&sql)
        .bind(order_id)
        .fetch_optional(conn)
        .await?
        .as_ref()
        .map(order_from_row)
        .transpose()
}

/// The terms of a `PlaceOrder`, checked.
struct Terms<'a> {
    item_id: &'a str,
    quantity: i64,
    max_price: i64,
    min_fill: i64,
    escrow: i64,
    expires_at: i64,
    deposit: i64,
}

fn terms<'a>(ctx: &OpContext<'_>, change: &'a MarketChange) -> Result<Terms<'a>, AppError> {
    let MarketChange::PlaceOrder {
        item_id,
        quantity,
        max_price,
        min_fill,
        duration_secs,
        deposit,
    } = change
    else {
        return Err(AppError::Internal("not an order".into()));
    };
    limits(marketplace_protocol::check_quantity(*quantity))?;
    limits(marketplace_protocol::check_price("max_price", *max_price))?;
    let escrow = marketplace_protocol::check_total(*quantity, *max_price)
        .map_err(AppError::InvalidRequest)?;
    let min_fill = min_fill.unwrap_or(1);
    if !(1..=*quantity).contains(&min_fill) {
        return Err(AppError::InvalidRequest(
            "min_fill must be between 1 and the quantity".into(),
        ));
    }
    ctx.policy.check_listing(item_id, *quantity, *max_price)?;
    let expires_at = ctx
        .policy
        .durations
        .expiry(true, ctx.now, *duration_secs)
        .map_err(AppError::InvalidRequest)?;
    Ok(Terms {
        item_id,
        quantity: *quantity,
        max_price: *max_price,
        min_fill,
        escrow,
        expires_at,
        deposit: *deposit,
    })
}

/// Places a buy order: its price into escrow (depositing what the account
/// lacks, where the policy and the request allow), then matched at once.
pub(super) async fn place(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    change: &MarketChange,
) -> Result<Done, AppError> {
    let t = terms(ctx, change)?;
    // The item's book before the buyer's account (see `fills`).
    fills::lock_book(conn, t.item_id).await?;
    books::checkpoint(conn).await?;
    let outcome = escrow(conn, ctx, &t).await;
    let (order_id, deposited) = books::keep_or_undo(conn, outcome).await?;
    // Nothing below can be refused: the order is placed; fills are what
    // the book offers.
    let fills = fills::match_order(
        conn,
        ctx,
        order_id,
        t.item_id,
        t.max_price,
        t.min_fill,
        t.quantity,
    )
    .await?;
    let order = fetch(conn, order_id)
        .await?
        .ok_or_else(|| AppError::Internal(format!("order {order_id} vanished")))?;
    Ok(Done::Order {
        envelope: OrderEnvelope {
            order,
            fills,
            transfer: Some(Transfer {
                deposited,
                ..Transfer::default()
            }),
        },
        created: true,
    })
}

async fn escrow(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    t: &Terms<'_>,
) -> Result<(i64, i64), AppError> {
    let me = ctx.player_id;
    let deposited = cover(conn, ctx, None, t.escrow, t.deposit).await?;
    books::adjust(conn, me, None, deposited - t.escrow).await?;
    let (order_id,): (i64,) = sqlx::query_as(
        "INSERT INTO orders (buyer_id, item_id, quantity, remaining, max_price, min_fill, escrow, status, \
         created_at, updated_at, expires_at, place_key, deposited) \
         VALUES ($1, $2, $3, $3, $4, $5, $6, 'active', $7, $7, $8, $9, $10) RETURNING id",
    )
    .bind(me)
    .bind(t.item_id)
    .bind(t.quantity)
    .bind(t.max_price)
    .bind(t.min_fill)
    .bind(t.escrow)
    .bind(ctx.now)
    .bind(t.expires_at)
    .bind(ctx.idem_key)
    .bind(deposited)
    .fetch_one(&mut *conn)
    .await?;
    ctx.outbox.order_placed(order_id);
    let mut moves = Vec::with_capacity(2);
    if deposited > 0 {
        moves.push(Move {
            player_id: me,
            action: "deposit",
            quantity: deposited,
            order_id: Some(order_id),
            ..Default::default()
        });
    }
    moves.push(Move {
        player_id: me,
        action: "order_place",
        quantity: t.escrow,
        order_id: Some(order_id),
        ..Default::default()
    });
    books::movements(conn, ctx, &moves).await?;
    Ok((order_id, deposited))
}

/// The order this key placed, as the answer showed it: its immediate
/// fills, and the order as they left it.
pub(super) async fn recall_place(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    change: &MarketChange,
) -> Result<Option<Done>, AppError> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS}, deposited FROM orders WHERE buyer_id = $1 AND place_key = $2"
    );
    let Some(row) = keyed_row(conn, &sql, ctx).await? else {
        return Ok(None);
    };
    let mut order = order_from_row(&row)?;
    let deposited: i64 = row.try_get("deposited")?;
    match change {
        MarketChange::PlaceOrder {
            item_id,
            quantity,
            max_price,
            ..
        } if *item_id == order.item_id
            && *quantity == order.quantity
            && *max_price == order.max_price => {}
        _ => return mismatch(),
    }
    let fills = fills_of_key(conn, ctx).await?;
    let taken: i64 = fills.iter().map(|f| f.quantity).sum();
    order.quantity_remaining = order.quantity - taken;
    order.escrow = order.quantity_remaining * order.max_price;
    order.status = if order.quantity_remaining == 0 {
        OrderStatus::Filled
    } else {
        OrderStatus::Active
    };
    order.updated_at = order.created_at;
    Ok(Some(Done::Order {
        envelope: OrderEnvelope {
            order,
            fills,
            transfer: Some(Transfer {
                deposited,
                ..Transfer::default()
            }),
        },
        created: true,
    }))
}

/// Cancels the caller's active order: what its escrow still holds goes
/// back — to the account, and under client deposits on to the save. An
/// order past its expiry that the sweep has not reached is cancelled the
/// same way (its owner takes it back sooner).
pub(super) async fn cancel(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    order_id: i64,
) -> Result<Done, AppError> {
    let delivers = i64::from(ctx.policy.delivers());
    let sql = format!(
        "UPDATE orders SET status = 'cancelled', cancel_key = $1, returned = escrow, escrow = 0, \
         cancel_delivered = escrow * $2, updated_at = $3 \
         WHERE id = $4 AND buyer_id = $5 AND status = 'active' RETURNING {ORDER_COLUMNS}, returned"
    );
    let row = sqlx::query(&sql)
        .bind(ctx.idem_key)
        .bind(delivers)
        .bind(ctx.now)
        .bind(order_id)
        .bind(ctx.player_id)
        .fetch_optional(&mut *conn)
        .await?;
    if row.is_some() {
        ctx.outbox.order(order_id);
    }
    let Some(row) = row else {
        return Err(match fetch(conn, order_id).await? {
            None => AppError::NotFound("Order"),
            Some(o) if o.buyer_id != ctx.player_id => {
                AppError::Forbidden("Only the buyer can cancel this order")
            }
            Some(_) => AppError::OrderClosed,
        });
    };
    let order = order_from_row(&row)?;
    let returned: i64 = row.try_get("returned")?;
    let me = ctx.player_id;
    let mut moves = Vec::with_capacity(2);
    let mut delivered = 0;
    if returned > 0 {
        moves.push(Move {
            player_id: me,
            action: "order_return",
            quantity: returned,
            order_id: Some(order_id),
            ..Default::default()
        });
        if delivers == 1 {
            moves.push(Move {
                player_id: me,
                action: "withdraw",
                quantity: returned,
                order_id: Some(order_id),
                ..Default::default()
            });
            delivered = returned;
        } else {
            books::credit(conn, me, None, returned).await?;
        }
    }
    books::movements(conn, ctx, &moves).await?;
    Ok(Done::Order {
        envelope: OrderEnvelope {
            order,
            fills: Vec::new(),
            transfer: Some(Transfer {
                delivered,
                ..Transfer::default()
            }),
        },
        created: false,
    })
}

/// The cancel this key made.
pub(super) async fn recall_cancel(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    order_id: i64,
) -> Result<Option<Done>, AppError> {
    let sql = format!(
        "SELECT {ORDER_COLUMNS}, cancel_delivered FROM orders WHERE buyer_id = $1 AND cancel_key = $2"
    );
    let Some(row) = keyed_row(conn, &sql, ctx).await? else {
        return Ok(None);
    };
    let order = order_from_row(&row)?;
    if order.id != order_id {
        return mismatch();
    }
    let delivered = row
        .try_get::<Option<i64>, _>("cancel_delivered")?
        .unwrap_or(0);
    Ok(Some(Done::Order {
        envelope: OrderEnvelope {
            order,
            fills: Vec::new(),
            transfer: Some(Transfer {
                delivered,
                ..Transfer::default()
            }),
        },
        created: false,
    }))
}

/// An order with all of its fills, for `GET /v1/orders/{id}`.
pub(crate) async fn with_fills(
    conn: &mut AnyConnection,
    order_id: i64,
    now: i64,
) -> Result<Option<OrderEnvelope>, sqlx::Error> {
    let Some(order) = fetch(conn, order_id).await? else {
        return Ok(None);
    };
    let sql = format!(
        "SELECT {} FROM purchases WHERE order_id = $1 ORDER BY id",
        fills::FILL_COLUMNS
    );
    let fills = sqlx::query(&sql)
        .bind(order_id)
        .fetch_all(conn)
        .await?
        .iter()
        .map(fills::fill_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(OrderEnvelope {
        order: as_of(order, now),
        fills,
        transfer: None,
    }))
}
