//! The operator console: the market seen and acted on from a browser.
//!
//! Served by the server itself under `/console/` on the API listener — no
//! second service to deploy or port to open — and only when `--admin-key`
//! is set (without one, every console path is a 404, like an unknown
//! route). Put it behind the same TLS terminator as the API; a proxy that
//! says `X-Forwarded-Proto: https` (from `--trusted-proxies`) makes the
//! session cookie `Secure`.
//!
//! Why it is safe to expose beside the API:
//! - Sign-in exchanges the admin key for a random session (cookie
//!   `HttpOnly`, `SameSite=Strict`, `Path=/console`, 8 hours); only the
//!   cookie's hash is stored (`console_sessions`), so every replica sharing
//!   the database knows the session and a database leak holds no usable
//!   cookie. Wrong keys are refused and, after five from one address within
//!   ten minutes, refused without being checked (429) until that window ends.
//! - Every change is a POST carrying the session's CSRF token (a form
//!   field): without it, 403. Pages are server-rendered, work without
//!   JavaScript, and carry none: every value is HTML-escaped, the CSP allows
//!   no script at all, and `frame-ancestors 'none'` refuses framing.
//! - Every operator action is a `console_actions` row naming the action and
//!   the session it came from; the changes themselves are ordinary ledger
//!   rows (a grant, a listing's return) whose request id is the session's.

mod html;

pub use html::time as utc_time;
mod pages;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;

use crate::AppState;

/// How long a console session lasts.
const SESSION_SECS: i64 = 8 * 3600;
const COOKIE: &str = "market_console";
/// Failed sign-ins one address may make per window before it is refused
/// without a check.
const SIGN_IN_TRIES: u32 = 5;
const SIGN_IN_WINDOW: Duration = Duration::from_secs(600);
/// Addresses tracked at most (an attacker rotating addresses cannot grow
/// the map without bound).
const MAX_TRACKED: usize = 10_000;

/// The console's state on this replica.
#[derive(Default)]
pub struct Console {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(pages::overview))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/audit", get(pages::audit).post(pages::run_audit))
        .route("/console/players", get(pages::players))
        .route("/console/players/{id}", get(pages::player))
        .route("/console/players/{id}/ledger.csv", get(pages::ledger_csv))
        .route("/console/players/{id}/ban", post(pages::ban))
        .route("/console/players/{id}/unban", post(pages::unban))
        .route("/console/players/{id}/grant", post(pages::grant))
        .route("/console/listings", get(pages::listings))
        .route("/console/listings/{id}/cancel", post(pages::cancel_listing))
        .route("/console/orders", get(pages::orders))
        .route("/console/orders/{id}/cancel", post(pages::cancel_order))
        .route("/console/ledger", get(pages::ledger))
        .layer(middleware::from_fn_with_state(state, guarded))
}

/// Off without an admin key; security headers on every answer.
async fn guarded(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let on = state.0.config.admin_key.is_some();
    let mut response = if on {
        next.run(req).await
    } else {
        StatusCode::NOT_FOUND.into_response()
    };
    let h = response.headers_mut();
    let set = |h: &mut HeaderMap, name: &'static str, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(
        h,
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(h, "x-frame-options", "DENY");
    set(h, "x-content-type-options", "nosniff");
    set(h, "referrer-policy", "no-referrer");
    set(h, "cache-control", "no-store");
    response
}

/// A signed-in operator: the session's label (in the ledger and the
/// actions table) and its CSRF token (in every form).
pub struct Operator {
    pub label: String,
    pub csrf: String,
}

/// A change whose form lacks the session's CSRF token: 403.
pub struct CsrfRefused;

impl IntoResponse for CsrfRefused {
    fn into_response(self) -> Response {
        html::error_page(
            StatusCode::FORBIDDEN,
            "This form is stale or did not come from the console (CSRF token). Reload the page and try again.",
        )
    }
}

/// What an extractor answers a request without a session: the sign-in page.
pub struct SignIn;

impl IntoResponse for SignIn {
    fn into_response(self) -> Response {
        Redirect::to("/console/login").into_response()
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(cookie) = cookie(&parts.headers) else {
            return Err(SignIn.into_response());
        };
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT label, csrf FROM console_sessions WHERE id_hash = $1 AND expires_at > $2",
        )
        .bind(hash(&cookie))
        .bind(state.0.clock.now())
        .fetch_optional(state.0.db.reader())
        .await
        .map_err(|e| crate::error::AppError::from(e).into_response())?;
        match row {
            Some((label, csrf)) => Ok(Operator { label, csrf }),
            None => Err(SignIn.into_response()),
        }
    }
}

impl Operator {
    /// Refuses a change whose form lacks this session's CSRF token.
    pub fn check(&self, given: &str) -> Result<(), CsrfRefused> {
        if crate::admin::constant_time_eq(given.as_bytes(), self.csrf.as_bytes()) {
            Ok(())
        } else {
            Err(CsrfRefused)
        }
    }

    /// The request id operator changes carry in the ledger: `console/` and
    /// the session's label — a `/` no client's `X-Request-Id` may hold, so
    /// no player can make their rows look like an operator's.
    pub fn request_id(&self) -> String {
        format!("console/{}", self.label)
    }

    /// Records an operator action.
    pub async fn record(
        &self,
        state: &AppState,
        action: &str,
        player_id: Option<i64>,
        listing_id: Option<i64>,
        detail: &str,
    ) -> Result<(), crate::error::AppError> {
        let mut tx = state.0.db.begin_write().await?;
        sqlx::query(
            "INSERT INTO console_actions (at, session_label, action, player_id, listing_id, detail) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(state.0.clock.now())
        .bind(&self.label)
        .bind(action)
        .bind(player_id)
        .bind(listing_id)
        .bind(detail)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

fn hash(secret: &str) -> String {
    crate::auth::sha256_hex(secret.as_bytes())
}

async fn login_page() -> Response {
    html::login_page(None, StatusCode::OK)
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    key: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let client = crate::net::client_address(peer.ip(), &headers, &state.0.config.trusted_proxies);
    let who = crate::net::limit_key(client);
    let now = Instant::now();
    let expected = state.0.config.admin_key.clone().unwrap_or_default();
    let right = !expected.is_empty()
        && crate::admin::constant_time_eq(form.key.trim().as_bytes(), expected.as_bytes());
    // The right key always gets in: an address shared by many (a proxy
    // missing from --trusted-proxies) must not let five wrong guesses lock
    // every operator out. (The key is ≥ 32 bytes: guessing is hopeless; the
    // limit keeps the log and the server quiet.)
    if !right {
        let Ok(mut failures) = state.0.console.failures.lock() else {
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        };
        failures.retain(|_, (_, since)| now.duration_since(*since) < SIGN_IN_WINDOW);
        if failures.get(&who).is_some_and(|(n, _)| *n >= SIGN_IN_TRIES) {
            return html::login_page(
                Some("Too many wrong keys from this address: wait ten minutes."),
                StatusCode::TOO_MANY_REQUESTS,
            );
        }
        if failures.len() < MAX_TRACKED {
            failures.entry(who).or_insert((0, now)).0 += 1;
        }
        tracing::warn!(client = %client, "console sign-in refused: wrong key");
        return html::login_page(Some("That is not the admin key."), StatusCode::UNAUTHORIZED);
    }
    let secret = crate::auth::generate_secret();
    let label = hash(&secret)[..10].to_string();
    let csrf = crate::auth::generate_secret();
    let at = state.0.clock.now();
    let stored = async {
        let mut tx = state.0.db.begin_write().await?;
        sqlx::query("DELETE FROM console_sessions WHERE expires_at <= $1")
            .bind(at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO console_sessions (id_hash, label, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(hash(&secret))
        .bind(&label)
        .bind(&csrf)
        .bind(at)
        .bind(at + SESSION_SECS)
        .execute(&mut *tx)
        .await?;
        tx.commit().await
    };
    if let Err(e) = stored.await {
        return crate::error::AppError::from(e).into_response();
    }
    tracing::info!(client = %client, session = %label, "console sign-in");
    let secure = behind_tls(&headers, peer.ip(), &state);
    let cookie = format!(
        "{COOKIE}={secret}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={SESSION_SECS}{}",
        if secure { "; Secure" } else { "" }
    );
    let mut response = Redirect::to("/console/").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// True when a trusted proxy says the browser spoke TLS to it.
fn behind_tls(headers: &HeaderMap, peer: IpAddr, state: &AppState) -> bool {
    state
        .0
        .config
        .trusted_proxies
        .iter()
        .any(|p| p.contains(peer))
        && headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

#[derive(Deserialize)]
pub struct CsrfForm {
    #[serde(default)]
    pub csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    operator: Operator,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = operator.check(&form.csrf) {
        return refused.into_response();
    }
    if let Some(cookie) = cookie(&headers) {
        if let Ok(mut tx) = state.0.db.begin_write().await {
            let _ = sqlx::query("DELETE FROM console_sessions WHERE id_hash = $1")
                .bind(hash(&cookie))
                .execute(&mut *tx)
                .await;
            let _ = tx.commit().await;
        }
    }
    let mut response = Redirect::to("/console/login").into_response();
    response.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "market_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    response
}
