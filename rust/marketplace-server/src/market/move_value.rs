use marketplace_protocol::Moved;
use sqlx::AnyConnection;
use sqlx::Row;

use super::{keyed_row, mismatch, Done, OpContext};
use crate::books;
use crate::error::AppError;

/// `POST /v1/me/deposits` and `/v1/me/withdrawals`: a move between the
/// game's save and the market account, recorded with its key.
pub(super) async fn run(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: Option<&str>,
    quantity: i64,
    inward: bool,
) -> Result<Done, AppError> {
    let table = if inward {
        books::deposit(conn, ctx, item_id, quantity).await?;
        "deposits"
    } else {
        books::withdraw(conn, ctx, item_id, quantity, None, None).await?;
        "withdrawals"
    };
    let (id,): (i64,) = sqlx::query_as(&format!(
        "INSERT INTO {table} (player_id, idem_key, item_id, quantity, at) VALUES ($1, $2, $3, $4, $5) RETURNING id"
    ))
    .bind(ctx.player_id)
    .bind(ctx.idem_key)
    .bind(item_id)
    .bind(quantity)
    .bind(ctx.now)
    .fetch_one(&mut *conn)
    .await?;
    let account = books::account(conn, ctx.player_id).await?;
    Ok(Done::Moved(Moved {
        id,
        item_id: item_id.map(str::to_string),
        quantity,
        account,
    }))
}

/// The deposit or withdrawal this key made, with the account now.
pub(super) async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: Option<&str>,
    quantity: i64,
    inward: bool,
) -> Result<Option<Done>, AppError> {
    let table = if inward { "deposits" } else { "withdrawals" };
    let sql =
        format!("SELECT id, item_id, quantity FROM {table} WHERE player_id = $1 AND idem_key = $2");
    let Some(row) = keyed_row(conn, &sql, ctx).await? else {
        return Ok(None);
    };
    let id: i64 = row.try_get("id")?;
    let was_item: Option<String> = row.try_get("item_id")?;
    let was_quantity: i64 = row.try_get("quantity")?;
    if was_item.as_deref() != item_id || was_quantity != quantity {
        return mismatch();
    }
    let account = books::account(conn, ctx.player_id).await?;
    Ok(Some(Done::Moved(Moved {
        id,
        item_id: was_item,
        quantity: was_quantity,
        account,
    })))
}
