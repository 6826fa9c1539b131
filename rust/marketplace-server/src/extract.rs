//! Extractors: what every handler takes from a request, checked once at
//! the edge — the bearer token's player (never a body field), the
//! `Idempotency-Key`, a positive path id, JSON in our error envelope — and
//! the request id the ledger records. Used by the public API
//! ([`crate::routes`]) and the admin API ([`crate::admin`]) alike.

use std::time::Instant;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use marketplace_protocol::{
    check_id, check_price, check_quantity, MoveRequest, IDEMPOTENCY_HEADER, PLAYER_HEADER,
    SERVER_HEADER,
};

use crate::error::AppError;
use crate::rate_limit::Caller;
use crate::AppState;

/// The request id: taken from `X-Request-Id` when the client sent a sane one,
/// otherwise generated. Echoed on the answer and written to the ledger.
#[derive(Clone)]
pub struct RequestId(pub String);

/// The authenticated, rate-limited player. Identity comes from the bearer
/// token only.
pub struct AuthPlayer(pub i64);

impl FromRequestParts<AppState> for AuthPlayer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AppError::Unauthorized)?;
        let player_id = state
            .0
            .signer
            .verify(token.trim(), state.0.clock.now())
            .ok_or(AppError::Unauthorized)?;
        if state.0.bans.contains(player_id) {
            return Err(AppError::Unauthorized);
        }
        check_binding(&parts.headers, state, player_id)?;
        state
            .0
            .limiter
            .check(Caller::Player(player_id), Instant::now())
            .map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })?;
        Ok(AuthPlayer(player_id))
    }
}

/// The `Idempotency-Key` header, required on every mutating call.
pub struct IdemKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdemKey {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let key = parts
            .headers
            .get(IDEMPOTENCY_HEADER)
            .ok_or_else(|| {
                AppError::InvalidRequest("the Idempotency-Key header is required".into())
            })?
            .to_str()
            .map_err(|_| AppError::InvalidRequest("Idempotency-Key must be ASCII".into()))?;
        check_id("Idempotency-Key", key).map_err(AppError::InvalidRequest)?;
        Ok(IdemKey(key.to_string()))
    }
}

/// A request bound to a market and a player (a client's journaled trade)
/// runs only there: another market, or this one under another player, says
/// `wrong_server` before anything is read or written — also a market that
/// shares this one's token secret, which would accept the token.
fn check_binding(
    headers: &axum::http::HeaderMap,
    state: &AppState,
    player_id: i64,
) -> Result<(), AppError> {
    if let Some(server) = headers.get(SERVER_HEADER) {
        if server.as_bytes() != state.0.server_id.as_bytes() {
            return Err(AppError::WrongServer(
                "This request belongs to another market",
            ));
        }
    }
    if let Some(player) = headers.get(PLAYER_HEADER) {
        let same = player
            .to_str()
            .ok()
            .and_then(|p| p.trim().parse::<i64>().ok())
            == Some(player_id);
        if !same {
            return Err(AppError::WrongServer(
                "This request belongs to another player",
            ));
        }
    }
    Ok(())
}

/// A positive integer id from the path.
pub struct PathId(pub i64);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| AppError::InvalidRequest(e.body_text()))?;
        match raw.parse::<i64>() {
            Ok(id) if id > 0 => Ok(PathId(id)),
            _ => Err(AppError::InvalidRequest(
                "id in the path must be a positive integer".into(),
            )),
        }
    }
}

/// `axum::Json` with its rejections turned into our error envelope.
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: serde::de::DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, AppError> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> AppError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return AppError::PayloadTooLarge;
    }
    AppError::InvalidRequest(rejection.body_text())
}

/// Checks a deposit, withdrawal or grant: an item id when items move, and a
/// quantity within the protocol's limits (credits up to a price's).
pub fn check_move(req: &MoveRequest) -> Result<(), AppError> {
    match &req.item_id {
        Some(item) => {
            check_id("item_id", item).map_err(AppError::InvalidRequest)?;
            check_quantity(req.quantity).map_err(AppError::InvalidRequest)
        }
        None => check_price("quantity", req.quantity).map_err(AppError::InvalidRequest),
    }
}
