//! The expiry sweep: tidies listings and orders whose time ran out.
//!
//! The sweep decides nothing about fills. Every fill's conditional update
//! checks `expires_at > now` itself, so a listing or order is closed to
//! fills the second its time runs out, however far behind this sweep is.
//! All the sweep does is send back what an expired listing or order still
//! holds — as a delivery under client deposits, into the account under
//! server grants — and mark it expired. Each one is a conditional update
//! on `status = 'active'`, so a seller's cancel racing the sweep returns
//! the escrow once, through whichever came first.

use sqlx::AnyConnection;

use super::fills::owe;
use super::OpContext;
use crate::books::{self, Move};
use crate::economy::Policy;
use crate::error::AppError;

/// Expires up to `limit` listings and `limit` orders past their time at
/// `now`; returns how many.
pub async fn sweep(
    conn: &mut AnyConnection,
    policy: &Policy,
    now: i64,
    limit: i64,
) -> Result<u64, AppError> {
    // No requester: the rows carry no idempotency key.
    let ctx = OpContext {
        player_id: 0,
        request_id: "expiry",
        idem_key: "",
        now,
        policy,
        outbox: Default::default(),
    };
    let mut swept = 0;
    let listings: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM listings WHERE status = 'active' AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    for (id,) in listings {
        if send_back(conn, &ctx, id, Closer::Expiry).await?.is_some() {
            swept += 1;
        }
    }
    let orders: Vec<(i64,)> = sqlx::query_as(
        "SELECT id FROM orders WHERE status = 'active' AND expires_at <= $1 ORDER BY expires_at, id LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?;
    for (id,) in orders {
        if refund_order(conn, &ctx, id, Closer::Expiry)
            .await?
            .is_some()
        {
            swept += 1;
        }
    }
    crate::stream::publish(conn, &ctx).await?;
    Ok(swept)
}

/// Who closes a listing that is not its seller's doing.
#[derive(Clone, Copy)]
enum Closer {
    Expiry,
    Operator,
}

/// Closes an active listing (for `Expiry`: only once its time ran out) and
/// sends what remains back to its seller — a delivery under client
/// deposits, the account under server grants. `None` when it was not
/// active (sold, cancelled or closed meanwhile: nothing to send back).
async fn send_back(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    id: i64,
    closer: Closer,
) -> Result<Option<(i64, i64)>, AppError> {
    let (closed_by, kind, expired_only) = match closer {
        Closer::Expiry => ("expiry", "listing_expired", true),
        Closer::Operator => ("operator", "listing_returned", false),
    };
    let row: Option<(i64, String, i64)> = sqlx::query_as(
        "UPDATE listings SET status = 'cancelled', closed_by = $3, returned = remaining, \
         remaining = 0, updated_at = $1 \
         WHERE id = $2 AND status = 'active' AND (expires_at <= $1 OR $4 = 0) \
         RETURNING seller_id, item_id, returned",
    )
    .bind(ctx.now)
    .bind(id)
    .bind(closed_by)
    .bind(i64::from(expired_only))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((seller, item, returned)) = row else {
        return Ok(None);
    };
    ctx.outbox.listing(id);
    if returned > 0 {
        let to = owe(
            conn,
            ctx,
            seller,
            kind,
            Some(&item),
            returned,
            Some(id),
            None,
            None,
        )
        .await?;
        books::movements(
            conn,
            ctx,
            &[Move {
                player_id: seller,
                action: "listing_return",
                item_id: Some(&item),
                quantity: returned,
                listing_id: Some(id),
                delivery_id: to,
                ..Default::default()
            }],
        )
        .await?;
    }
    Ok(Some((seller, returned)))
}

/// Closes an active buy order (for `Expiry`: only once its time ran out)
/// and sends its escrow back to its buyer, as [`send_back`] does a
/// listing's. `None` when it was not active.
async fn refund_order(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    id: i64,
    closer: Closer,
) -> Result<Option<(i64, i64)>, AppError> {
    let (status, kind, expired_only) = match closer {
        Closer::Expiry => ("expired", "order_expired", true),
        Closer::Operator => ("cancelled", "order_refund", false),
    };
    let row: Option<(i64, i64)> = sqlx::query_as(
        "UPDATE orders SET status = $3, returned = escrow, escrow = 0, updated_at = $1 \
         WHERE id = $2 AND status = 'active' AND (expires_at <= $1 OR $4 = 0) RETURNING buyer_id, returned",
    )
    .bind(ctx.now)
    .bind(id)
    .bind(status)
    .bind(i64::from(expired_only))
    .fetch_optional(&mut *conn)
    .await?;
    let Some((buyer, returned)) = row else {
        return Ok(None);
    };
    ctx.outbox.order(id);
    if returned > 0 {
        let to = owe(conn, ctx, buyer, kind, None, returned, None, Some(id), None).await?;
        books::movements(
            conn,
            ctx,
            &[Move {
                player_id: buyer,
                action: "order_return",
                quantity: returned,
                order_id: Some(id),
                delivery_id: to,
                ..Default::default()
            }],
        )
        .await?;
    }
    Ok(Some((buyer, returned)))
}

/// What the market's operator closes from the console.
#[derive(Debug, Clone, Copy)]
pub enum Closing {
    /// An active listing: what remains goes back to its seller.
    Listing(i64),
    /// An active buy order: its escrow goes back to its buyer.
    Order(i64),
}

/// The market's operator closes an active listing or buy order (the
/// console): what it holds goes back to its owner as the expiry sweep sends
/// it, so the owner's game collects it whenever it comes back. Returns the
/// owner and what was sent back; `None` when it was not active.
pub async fn close_by_operator(
    conn: &mut AnyConnection,
    policy: &Policy,
    now: i64,
    closing: Closing,
    request_id: &str,
) -> Result<Option<(i64, i64)>, AppError> {
    let ctx = OpContext {
        player_id: 0,
        request_id,
        idem_key: "",
        now,
        policy,
        outbox: Default::default(),
    };
    let done = match closing {
        Closing::Listing(id) => send_back(conn, &ctx, id, Closer::Operator).await?,
        Closing::Order(id) => refund_order(conn, &ctx, id, Closer::Operator).await?,
    };
    crate::stream::publish(conn, &ctx).await?;
    Ok(done)
}
