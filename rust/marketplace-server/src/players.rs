//! Players and their ways in: a device id (only its hash is stored), and
//! identities of the game's identity providers (`identity.rs`), each
//! `(provider, subject)` one player for good.
//!
//! A device player links an identity by proving both at once: its session
//! (which only its device could get) and a token of the identity. From
//! then on any device that logs in with that identity is that player —
//! market account, listings, orders, deliveries and bans alike, because
//! all of them hang on the player id, not on the credential.

use marketplace_protocol::{Identities, LinkedIdentity};

use crate::error::AppError;
use crate::identity::Identity;
use crate::Db;

/// What a token-made player keeps as its device column: no device id
/// hashes to it (those are `sha256:…`), and the random part keeps it unique.
const NO_DEVICE_PREFIX: &str = "identity:";

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
    // is upgraded in place, so that player keeps its account. A stored
    // hash or a token-made player's placeholder is never taken for one (a
    // leaked hash sent as a device id would otherwise be renamed to its own
    // hash and log in as that player).
    let hash = crate::auth::device_hash(device_id);
    sqlx::query(
        "UPDATE players SET device_id = $1 WHERE device_id = $2 \
         AND device_id NOT LIKE 'identity:%' AND device_id NOT LIKE 'sha256:%'",
    )
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
    ledger(&mut tx, now, player_id, "session", request_id).await?;
    if banned(player_id) {
        return Err(AppError::Unauthorized);
    }
    tx.commit().await?;
    Ok(player_id)
}

/// Logs in the player of a provider identity. On the identity's first
/// login it becomes the player of `device` when that device has one (the
/// save played by device before the game had accounts: proving both at
/// once links them) and that player has no identity of this provider yet;
/// otherwise a new player with no device. Like [`log_in_device`], in one
/// transaction that a banned player's login rolls back.
pub async fn log_in_identity(
    db: &Db,
    identity: &Identity,
    device: Option<&str>,
    name: &str,
    now: i64,
    request_id: &str,
    banned: impl Fn(i64) -> bool,
) -> Result<i64, AppError> {
    // Two first logins of one identity at once (two devices): one makes the
    // player; the other finds it on its second pass.
    for _ in 0..2 {
        let mut tx = db.begin_write().await?;
        let player_id = match owner_of(&mut tx, identity).await? {
            Some(player_id) => {
                sqlx::query("UPDATE players SET name = $1 WHERE id = $2")
                    .bind(name)
                    .bind(player_id)
                    .execute(&mut *tx)
                    .await?;
                player_id
            }
            None => {
                let player_id = match device_player(&mut tx, device).await? {
                    Some(player_id) => {
                        lock_player(&mut tx, player_id).await?;
                        player_id
                    }
                    None => new_tokens_player(&mut tx, name, now).await?,
                };
                if !insert_identity(&mut tx, identity, player_id, now).await? {
                    tx.rollback().await?;
                    continue;
                }
                ledger(&mut tx, now, player_id, "identity_linked", request_id).await?;
                player_id
            }
        };
        ledger(&mut tx, now, player_id, "session", request_id).await?;
        if banned(player_id) {
            return Err(AppError::Unauthorized);
        }
        tx.commit().await?;
        return Ok(player_id);
    }
    Err(AppError::Unavailable)
}

/// Links `identity` to `player_id`. Linking what is already this player's
/// is a no-op; an identity of another player, or a second identity of one
/// provider, is refused (`identity_linked`) — whoever links first wins a
/// race, the other is told.
pub async fn link(
    db: &Db,
    player_id: i64,
    identity: &Identity,
    now: i64,
    request_id: &str,
) -> Result<Identities, AppError> {
    let mut tx = db.begin_write().await?;
    lock_player(&mut tx, player_id).await?;
    match owner_of(&mut tx, identity).await? {
        Some(owner) if owner == player_id => {}
        Some(_) => return Err(AppError::IdentityLinked(
            "This identity is another player's: log in with it instead, or unlink it there first",
        )),
        None => {
            let (same_provider,): (i64,) = sqlx::query_as(
                "SELECT COUNT(*) FROM identities WHERE player_id = $1 AND provider = $2",
            )
            .bind(player_id)
            .bind(&identity.provider)
            .fetch_one(&mut *tx)
            .await?;
            if same_provider > 0 {
                return Err(AppError::IdentityLinked(
                    "This player already has an identity of this provider: unlink it first",
                ));
            }
            if !insert_identity(&mut tx, identity, player_id, now).await? {
                return Err(AppError::IdentityLinked(
                    "This identity was linked to another player a moment ago",
                ));
            }
            ledger(&mut tx, now, player_id, "identity_linked", request_id).await?;
        }
    }
    let out = identities_in(&mut tx, player_id).await?;
    tx.commit().await?;
    Ok(out)
}

/// Removes the player's identity of `provider` — unless it is the player's
/// last way in (a token-made player with no other identity): that would
/// orphan the account.
pub async fn unlink(
    db: &Db,
    player_id: i64,
    provider: &str,
    now: i64,
    request_id: &str,
) -> Result<Identities, AppError> {
    let mut tx = db.begin_write().await?;
    // The player's row first: two unlinks at once take turns, so the second
    // sees what the first left (and cannot remove the last way in).
    lock_player(&mut tx, player_id).await?;
    let before = identities_in(&mut tx, player_id).await?;
    if !before.identities.iter().any(|i| i.provider == provider) {
        return Err(AppError::NotFound("identity"));
    }
    if !before.device && before.identities.len() <= 1 {
        return Err(AppError::Forbidden(
            "This is the player's only way in: link another identity before unlinking this one",
        ));
    }
    sqlx::query("DELETE FROM identities WHERE player_id = $1 AND provider = $2")
        .bind(player_id)
        .bind(provider)
        .execute(&mut *tx)
        .await?;
    ledger(&mut tx, now, player_id, "identity_unlinked", request_id).await?;
    let out = identities_in(&mut tx, player_id).await?;
    tx.commit().await?;
    Ok(out)
}

/// The player's ways in.
pub async fn identities(db: &Db, player_id: i64) -> Result<Identities, AppError> {
    let mut conn = db.reader().acquire().await?;
    identities_in(&mut conn, player_id).await
}

async fn identities_in(
    conn: &mut sqlx::AnyConnection,
    player_id: i64,
) -> Result<Identities, AppError> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT provider, subject, linked_at FROM identities WHERE player_id = $1 ORDER BY provider",
    )
    .bind(player_id)
    .fetch_all(&mut *conn)
    .await?;
    let device: Option<(String,)> = sqlx::query_as("SELECT device_id FROM players WHERE id = $1")
        .bind(player_id)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(Identities {
        identities: rows
            .into_iter()
            .map(|(provider, subject, linked_at)| LinkedIdentity {
                provider,
                subject,
                linked_at,
            })
            .collect(),
        device: device.is_some_and(|(d,)| !d.starts_with(NO_DEVICE_PREFIX)),
    })
}

/// The player `device` logs in as, if it has one and that player has no
/// identity yet: a device links to one account once. (A device player that
/// already moved to an account is that account's now: its device id, which
/// may have been shown as a recovery code or copied with a save, must not
/// hand the player to a second account.) A row still holding its id in
/// clear (a rolling upgrade) is found too.
async fn device_player(
    conn: &mut sqlx::AnyConnection,
    device: Option<&str>,
) -> Result<Option<i64>, AppError> {
    let Some(device) = device else {
        return Ok(None);
    };
    let row: Option<(i64,)> = sqlx::query_as(
        "SELECT p.id FROM players p WHERE (p.device_id = $1 OR (p.device_id = $2 \
         AND p.device_id NOT LIKE 'identity:%' AND p.device_id NOT LIKE 'sha256:%')) \
         AND NOT EXISTS (SELECT 1 FROM identities i WHERE i.player_id = p.id)",
    )
    .bind(crate::auth::device_hash(device))
    .bind(device)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|(id,)| id))
}

/// A player made by a token login: no device logs in as it.
async fn new_tokens_player(
    conn: &mut sqlx::AnyConnection,
    name: &str,
    now: i64,
) -> Result<i64, AppError> {
    let placeholder = format!(
        "{NO_DEVICE_PREFIX}{}{}",
        crate::random_id(),
        crate::random_id()
    );
    let (player_id,): (i64,) = sqlx::query_as(
        "INSERT INTO players (device_id, name, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(&placeholder)
    .bind(name)
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(player_id)
}

/// Takes the player's row for the rest of the transaction (PostgreSQL's
/// row lock; SQLite has one writer anyway).
async fn lock_player(conn: &mut sqlx::AnyConnection, player_id: i64) -> Result<(), AppError> {
    sqlx::query("UPDATE players SET name = name WHERE id = $1")
        .bind(player_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

async fn owner_of(
    conn: &mut sqlx::AnyConnection,
    identity: &Identity,
) -> Result<Option<i64>, AppError> {
    let row: Option<(i64,)> =
        sqlx::query_as("SELECT player_id FROM identities WHERE provider = $1 AND subject = $2")
            .bind(&identity.provider)
            .bind(&identity.subject)
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(id,)| id))
}

/// Inserts the link; false when the identity (or this player's identity of
/// that provider) was taken meanwhile.
async fn insert_identity(
    conn: &mut sqlx::AnyConnection,
    identity: &Identity,
    player_id: i64,
    now: i64,
) -> Result<bool, AppError> {
    let done = sqlx::query(
        "INSERT INTO identities (provider, subject, player_id, linked_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&identity.provider)
    .bind(&identity.subject)
    .bind(player_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

async fn ledger(
    conn: &mut sqlx::AnyConnection,
    now: i64,
    player_id: i64,
    action: &str,
    request_id: &str,
) -> Result<(), AppError> {
    sqlx::query("INSERT INTO ledger (at, player_id, action, request_id) VALUES ($1, $2, $3, $4)")
        .bind(now)
        .bind(player_id)
        .bind(action)
        .bind(request_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}
