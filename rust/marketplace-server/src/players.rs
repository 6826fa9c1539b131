//! Players: logging in by device. The device id is the player's only
//! credential, so only its hash is stored.

use crate::error::AppError;
use crate::Db;

/// Logs the device in as its player (made on first login; the name is
/// updated), records the session in the ledger, and returns the player's
/// id — in one transaction, which a banned player's login rolls back.
pub async fn log_in_device(
    db: &Db,
    device_id: &str,
    name: &str,
    now: i64,
    request_id: &str,
    banned: impl Fn(i64) -> bool,
) -> Result<i64, AppError> {
    let mut tx = db.begin_write().await?;
    // A row an older replica wrote with the id in clear (a rolling upgrade)
    // is upgraded in place, so that player keeps its account.
    let hash = crate::auth::device_hash(device_id);
    sqlx::query("UPDATE players SET device_id = $1 WHERE device_id = $2")
        .bind(&hash)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
    let (player_id,): (i64,) = sqlx::query_as(
        "INSERT INTO players (device_id, name, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (device_id) DO UPDATE SET name = excluded.name RETURNING id",
    )
    .bind(&hash)
    .bind(name)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO ledger (at, player_id, action, request_id) VALUES ($1, $2, 'session', $3)",
    )
    .bind(now)
    .bind(player_id)
    .bind(request_id)
    .execute(&mut *tx)
    .await?;
    if banned(player_id) {
        return Err(AppError::Unauthorized);
    }
    tx.commit().await?;
    Ok(player_id)
}
