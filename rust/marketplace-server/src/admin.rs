//! The admin API: the game's own trusted backend grants credits and items,
//! reads accounts and bans players. Authenticated by the admin key
//! (`--admin-key`), never by a player token; without a configured key every
//! admin request is refused.
//!
//! | method and path | purpose |
//! |---|---|
//! | `POST /admin/v1/players/{id}/grants` `{item_id?, quantity}` + `Idempotency-Key` | credit an account (idempotent forever: the key is kept in the grant row) |
//! | `GET /admin/v1/players/{id}/account` | the account and the economy policy |
//! | `POST /admin/v1/players/{id}/ban`, `DELETE …/ban` | a banned player's tokens stop working on every replica within seconds (at once on this one), and it cannot log in |

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use marketplace_protocol::{check_id, AccountEnvelope, MoveRequest, Moved};

use crate::books::Move;
use crate::error::{Answer, AppError};
use crate::extract::{check_move, ApiJson, IdemKey, PathId, RequestId};
use crate::op::OpContext;
use crate::{books, AppState};

/// Players whose tokens no longer work, mirrored from the `bans` table.
#[derive(Default)]
pub struct Bans {
    players: RwLock<HashSet<i64>>,
}

impl Bans {
    pub async fn load(db: &crate::Db) -> Result<Bans, sqlx::Error> {
        let bans = Bans::default();
        bans.reload(db).await?;
        Ok(bans)
    }

    async fn reload(&self, db: &crate::Db) -> Result<(), sqlx::Error> {
        let rows: Vec<(i64,)> = sqlx::query_as("SELECT player_id FROM bans")
            .fetch_all(db.reader())
            .await?;
        if let Ok(mut set) = self.players.write() {
            *set = rows.into_iter().map(|(p,)| p).collect();
        }
        Ok(())
    }

    pub fn contains(&self, player_id: i64) -> bool {
        self.players
            .read()
            .map(|s| s.contains(&player_id))
            .unwrap_or(false)
    }

    fn set(&self, player_id: i64, banned: bool) {
        if let Ok(mut set) = self.players.write() {
            if banned {
                set.insert(player_id);
            } else {
                set.remove(&player_id);
            }
        }
    }
}

/// Picks up bans made on other replicas.
pub async fn refresh_bans(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(e) = state.0.bans.reload(&state.0.db).await {
            tracing::warn!(error = %e, "reloading bans failed");
        }
    }
}

/// A request carrying the admin key.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let Some(expected) = &state.0.config.admin_key else {
            return Err(AppError::Unauthorized);
        };
        let given = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AppError::Unauthorized)?;
        if !constant_time_eq(given.trim().as_bytes(), expected.as_bytes()) {
            return Err(AppError::Unauthorized);
        }
        Ok(Admin)
    }
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/admin/v1/players/{id}/grants", post(grant))
        .route("/admin/v1/players/{id}/account", get(account))
        .route("/admin/v1/players/{id}/ban", post(ban).delete(unban))
}

pub(crate) async fn player_exists(state: &AppState, player_id: i64) -> Result<(), AppError> {
    let found: Option<(i64,)> = sqlx::query_as("SELECT id FROM players WHERE id = $1")
        .bind(player_id)
        .fetch_optional(state.0.db.reader())
        .await?;
    found.map(drop).ok_or(AppError::NotFound("Player"))
}

/// Credits an account. The key is the admin's: a retry with it gets the
/// same grant, forever; the same key for another grant is refused.
async fn grant(
    State(state): State<AppState>,
    _: Admin,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    PathId(player_id): PathId,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<Answer, AppError> {
    let moved = grant_to(&state, player_id, req, &key, &request_id).await?;
    Answer::json(StatusCode::OK, &moved)
}

/// Credits an account once per key (the admin API's and the console's
/// grants alike).
pub(crate) async fn grant_to(
    state: &AppState,
    player_id: i64,
    req: MoveRequest,
    key: &str,
    request_id: &str,
) -> Result<Moved, AppError> {
    check_move(&req)?;
    if let Some(item) = &req.item_id {
        check_id("item_id", item).map_err(AppError::InvalidRequest)?;
        state.0.policy.check_item(item)?;
    }
    player_exists(state, player_id).await?;
    let now = state.0.clock.now();
    let mut tx = state.0.db.begin_write().await?;
    let inserted: Option<(i64,)> = sqlx::query_as(
        "INSERT INTO grants (idem_key, player_id, item_id, quantity, at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (idem_key) DO NOTHING RETURNING id",
    )
    .bind(key)
    .bind(player_id)
    .bind(&req.item_id)
    .bind(req.quantity)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let id = match inserted {
        Some((id,)) => {
            let ctx = OpContext {
                player_id,
                request_id,
                idem_key: key,
                now,
                policy: &state.0.policy,
                outbox: Default::default(),
            };
            books::credit(&mut tx, player_id, req.item_id.as_deref(), req.quantity).await?;
            books::movement(
                &mut tx,
                &ctx,
                Move {
                    player_id,
                    action: "grant",
                    item_id: req.item_id.as_deref(),
                    quantity: req.quantity,
                    listing_id: None,
                    purchase_id: None,
                    ..Default::default()
                },
            )
            .await?;
            id
        }
        None => {
            // A replay: the same grant, or a key reused for another one.
            let (id, was_player, was_item, was_quantity): (i64, i64, Option<String>, i64) =
                sqlx::query_as(
                    "SELECT id, player_id, item_id, quantity FROM grants WHERE idem_key = $1",
                )
                .bind(key)
                .fetch_one(&mut *tx)
                .await?;
            if was_player != player_id || was_item != req.item_id || was_quantity != req.quantity {
                return Err(AppError::IdempotencyKeyReused);
            }
            id
        }
    };
    let account = books::account(&mut tx, player_id).await?;
    tx.commit().await?;
    Ok(Moved {
        id,
        item_id: req.item_id,
        quantity: req.quantity,
        account,
    })
}

async fn account(
    State(state): State<AppState>,
    _: Admin,
    PathId(player_id): PathId,
) -> Result<Answer, AppError> {
    player_exists(&state, player_id).await?;
    let mut conn = state.0.db.reader().acquire().await?;
    let account = books::account(&mut conn, player_id).await?;
    Answer::json(
        StatusCode::OK,
        &AccountEnvelope {
            account,
            economy: state.0.policy.economy(),
        },
    )
}

async fn ban(
    State(state): State<AppState>,
    _: Admin,
    PathId(player_id): PathId,
) -> Result<Answer, AppError> {
    set_ban(&state, player_id, true).await?;
    Answer::json(
        StatusCode::OK,
        &serde_json::json!({ "player_id": player_id, "banned": true }),
    )
}

async fn unban(
    State(state): State<AppState>,
    _: Admin,
    PathId(player_id): PathId,
) -> Result<Answer, AppError> {
    set_ban(&state, player_id, false).await?;
    Answer::json(
        StatusCode::OK,
        &serde_json::json!({ "player_id": player_id, "banned": false }),
    )
}

/// Bans or unbans a player: its tokens stop (or start) working at once on
/// this replica, within seconds on the others.
pub(crate) async fn set_ban(
    state: &AppState,
    player_id: i64,
    banned: bool,
) -> Result<(), AppError> {
    player_exists(state, player_id).await?;
    let mut tx = state.0.db.begin_write().await?;
    if banned {
        sqlx::query(
            "INSERT INTO bans (player_id, at) VALUES ($1, $2) ON CONFLICT (player_id) DO NOTHING",
        )
        .bind(player_id)
        .bind(state.0.clock.now())
        .execute(&mut *tx)
        .await?;
    } else {
        sqlx::query("DELETE FROM bans WHERE player_id = $1")
            .bind(player_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    state.0.bans.set(player_id, banned);
    Ok(())
}
