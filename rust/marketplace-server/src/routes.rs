//! HTTP routes: small handlers over explicit state. Each handler validates
//! its input, then either reads through the reader pool or hands a
//! [`MarketChange`] to [`idempotency::run`].

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use marketplace_protocol::{
    check_id, check_name, check_positive, AccountEnvelope, CreateListingRequest, ListingPage,
    MarketChange, MoveRequest, PurchaseRequest, RepriceRequest, SalesPage, Session, SessionRequest,
    DEFAULT_PAGE_LIMIT, MAX_BODY_BYTES, MAX_PAGE_LIMIT, REQUEST_ID_HEADER,
};
use serde::Deserialize;

use crate::error::{Answer, AppError};
use crate::extract::{check_move, ApiJson, AuthPlayer, IdemKey, PathId, RequestId};
use crate::idempotency::{self, Outcome};
use crate::market::{
    as_of, listing_from_row, sale_from_row, BROWSE_COLUMNS, BROWSE_FROM, SALE_COLUMNS,
};
use crate::rate_limit::Caller;
use crate::AppState;

/// The API. `/metrics` is on it unless it has a listener of its own
/// (`with_metrics` false).
pub fn router(state: AppState, with_metrics: bool) -> Router {
    let mut router = Router::new()
        .route("/v1/sessions", post(create_session))
        .route("/v1/listings", get(list_listings).post(create_listing))
        .route(
            "/v1/listings/{id}",
            get(get_listing)
                .patch(reprice_listing)
                .delete(cancel_listing),
        )
        .route("/v1/listings/{id}/purchase", post(purchase))
        .route("/v1/me/sales", get(my_sales))
        .route("/v1/me/account", get(my_account))
        .route("/v1/me/operations", get(my_operations))
        .route("/v1/me/deposits", post(deposit))
        .route("/v1/me/withdrawals", post(withdraw))
        .route("/v1/sales/{id}/claim", post(claim))
        .route("/v1/me/identities", get(my_identities).post(link_identity))
        .route("/v1/me/identities/{provider}", delete(unlink_identity))
        .merge(crate::order_routes::router())
        .merge(crate::market_data::router())
        .merge(crate::stream::router())
        .merge(crate::admin::router())
        .merge(crate::console::router(state.clone()))
        .route("/healthz", get(healthz));
    if with_metrics {
        router = router.route("/metrics", get(metrics));
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::from_fn(older_clients))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// A client that does not send [`marketplace_protocol::PROTOCOL_HEADER`]
/// predates the codes of partial fills and expiry and would take them for
/// ambiguous answers (retrying a refused trade forever): it gets the older
/// codes that mean the same to it. The stored idempotent answer is the
/// precise one; the translation happens here, on every answer alike.
async fn older_clients(req: Request, next: Next) -> Response {
    let knows = req
        .headers()
        .contains_key(marketplace_protocol::PROTOCOL_HEADER);
    let response = next.run(req).await;
    if knows || response.status() != StatusCode::CONFLICT {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return AppError::Internal("unreadable answer".into()).into_response();
    };
    let older = serde_json::from_slice::<marketplace_protocol::ErrorEnvelope>(&bytes)
        .ok()
        .and_then(|mut envelope| {
            let code = match envelope.error.code.as_str() {
                "quantity_unavailable" => "already_sold",
                "listing_expired" => "listing_cancelled",
                _ => return None,
            };
            envelope.error.code = code.to_string();
            envelope.error.available = None;
            serde_json::to_vec(&envelope).ok()
        });
    let body = older.unwrap_or_else(|| bytes.to_vec());
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// `/metrics` (and `/healthz`) alone, for `--metrics-listen`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .with_state(state)
}

/// A request that takes longer than `--request-timeout-secs` (a slow body,
/// a stuck database) is answered 503 `unavailable`, which the client
/// retries. A mutation runs in a task of its own and still finishes; the
/// retry gets its answer.
async fn deadline(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limit = std::time::Duration::from_secs(state.0.config.request_timeout_secs);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => AppError::Unavailable.into_response(),
    }
}

/// Request id, tracing span, metrics and an access log line for every request.
async fn observe(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| check_id("request id", v).is_ok())
        .map(str::to_string)
        .unwrap_or_else(crate::random_id);
    req.extensions_mut().insert(RequestId(request_id.clone()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = crate::metrics::method_label(req.method());
    let span = tracing::info_span!("request", %method, %route, request_id = %request_id);
    let mut response = tracing::Instrument::instrument(next.run(req), span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .0
        .metrics
        .record_request(method, &route, status, elapsed);
    span.in_scope(|| {
        tracing::debug!(status, latency_ms = elapsed.as_secs_f64() * 1e3, "answered");
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

pub(crate) fn mutation_response(state: &AppState, outcome: Outcome) -> Response {
    if outcome.replayed {
        state.0.metrics.record_replay();
    }
    let replayed = outcome.replayed;
    let mut response = outcome.answer.into_response();
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    response
}

async fn create_session(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<SessionRequest>,
) -> Result<Answer, AppError> {
    let client = crate::net::client_address(peer.ip(), &headers, &state.0.config.trusted_proxies);
    state
        .0
        .limiter
        .check(
            Caller::Address(crate::net::limit_key(client)),
            Instant::now(),
        )
        .map_err(|retry_after_secs| AppError::RateLimited { retry_after_secs })?;
    check_name(&req.name).map_err(AppError::InvalidRequest)?;
    let now = state.0.clock.now();
    let banned = |player| state.0.bans.contains(player);
    let player_id = match (&req.identity_token, req.device_id.is_empty()) {
        (Some(token), _) => {
            let identity = state.0.identities.verify(token).await?;
            let device = (!req.device_id.is_empty()).then_some(req.device_id.as_str());
            if let Some(device) = device {
                check_id("device_id", device).map_err(AppError::InvalidRequest)?;
            }
            crate::players::log_in_identity(
                &state.0.db,
                &identity,
                device,
                &req.name,
                now,
                &request_id,
                banned,
            )
            .await?
        }
        (None, false) => {
            if !state.0.config.device_logins {
                return Err(AppError::Forbidden(
                    "This market logs players in by identity token only",
                ));
            }
            check_id("device_id", &req.device_id).map_err(AppError::InvalidRequest)?;
            crate::players::log_in_device(
                &state.0.db,
                &req.device_id,
                &req.name,
                now,
                &request_id,
                banned,
            )
            .await?
        }
        _ => {
            return Err(AppError::InvalidRequest(
                "Give either device_id or identity_token".into(),
            ))
        }
    };
    let expires_at = now.saturating_add(state.0.config.token_ttl_secs as i64);
    Answer::json(
        StatusCode::OK,
        &Session {
            player_id,
            name: req.name,
            token: state.0.signer.issue(player_id, expires_at),
            expires_at,
            economy: state.0.policy.economy(),
            server_id: state.0.server_id.clone(),
        },
    )
}

/// The player's ways in (provider identities; whether a device id works).
async fn my_identities(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
) -> Result<Answer, AppError> {
    let identities = crate::players::identities(&state.0.db, player_id).await?;
    Answer::json(StatusCode::OK, &identities)
}

/// Links the identity a token proves to the logged-in player: the session
/// proves the device, the token the identity.
async fn link_identity(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<marketplace_protocol::LinkIdentityRequest>,
) -> Result<Answer, AppError> {
    let identity = state.0.identities.verify(&req.identity_token).await?;
    let now = state.0.clock.now();
    let identities =
        crate::players::link(&state.0.db, player_id, &identity, now, &request_id).await?;
    Answer::json(StatusCode::OK, &identities)
}

async fn unlink_identity(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    axum::extract::Path(provider): axum::extract::Path<String>,
) -> Result<Answer, AppError> {
    let now = state.0.clock.now();
    let identities =
        crate::players::unlink(&state.0.db, player_id, &provider, now, &request_id).await?;
    Answer::json(StatusCode::OK, &identities)
}

#[derive(Deserialize)]
struct ListingQuery {
    status: Option<String>,
    item_id: Option<String>,
    /// Items whose id starts with this.
    item_prefix: Option<String>,
    /// Items whose id starts with this or whose catalog name holds it
    /// (see `/v1/items`).
    search: Option<String>,
    seller_id: Option<i64>,
    /// Unit price bounds, inclusive.
    min_price: Option<i64>,
    max_price: Option<i64>,
    /// `oldest` (the default), `newest` or `price` (cheapest first).
    sort: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// How a page of listings is ordered, and where the next page starts.
enum Order {
    Oldest { after: i64 },
    Newest { before: i64 },
    Price { price: i64, id: i64 },
}

impl Order {
    /// From `sort` and `cursor`: a cursor is the one this server issued for
    /// the same order (`id`, or `price.id` for `price`).
    fn parse(sort: Option<&str>, cursor: Option<&str>) -> Result<Order, AppError> {
        let bad = || AppError::InvalidRequest("cursor is not one this server issued".into());
        let cursor = cursor.filter(|c| !c.is_empty());
        let number = |c: &str| c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(bad);
        Ok(match sort.unwrap_or("oldest") {
            "oldest" => Order::Oldest {
                after: cursor.map(number).transpose()?.unwrap_or(0),
            },
            "newest" => Order::Newest {
                before: cursor.map(number).transpose()?.unwrap_or(i64::MAX),
            },
            "price" => match cursor {
                None => Order::Price { price: 0, id: 0 },
                Some(c) => {
                    let (p, id) = c.split_once('.').ok_or_else(bad)?;
                    Order::Price {
                        price: number(p)?,
                        id: number(id)?,
                    }
                }
            },
            _ => {
                return Err(AppError::InvalidRequest(
                    "sort must be oldest, newest or price".into(),
                ))
            }
        })
    }

    fn cursor_of(&self, last: &marketplace_protocol::Listing) -> String {
        match self {
            Order::Oldest { .. } | Order::Newest { .. } => last.id.to_string(),
            Order::Price { .. } => format!("{}.{}", last.price, last.id),
        }
    }
}

/// The cursor of the page after `items` (a full page of `limit`), made of
/// its last item; `None` after the last page.
pub(crate) fn next_cursor<T>(
    items: &[T],
    limit: u32,
    cursor: impl Fn(&T) -> String,
) -> Option<String> {
    (items.len() == limit as usize)
        .then(|| items.last().map(cursor))
        .flatten()
}

/// `AND <column> IS [NOT] NULL` for a `claimed`/`collected` filter: `None`
/// all rows, `Some(false)` those not done yet, `Some(true)` those done.
pub(crate) fn done_filter(done: Option<bool>, column: &str) -> String {
    match done {
        None => String::new(),
        Some(false) => format!(" AND {column} IS NULL"),
        Some(true) => format!(" AND {column} IS NOT NULL"),
    }
}

/// A page of the player's own rows, oldest first: `sql` selects with
/// `<owner> = $1 AND id > $2 … ORDER BY id LIMIT $3`. Returns the rows and
/// the cursor of the next page.
pub(crate) async fn own_page<T>(
    state: &AppState,
    sql: &str,
    player_id: i64,
    after: i64,
    limit: u32,
    from_row: impl Fn(&sqlx::any::AnyRow) -> Result<T, sqlx::Error>,
    id: impl Fn(&T) -> i64,
) -> Result<(Vec<T>, Option<String>), AppError> {
    let rows = sqlx::query(sql)
        .bind(player_id)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(state.0.db.reader())
        .await?;
    let items = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    let cursor = next_cursor(&items, limit, |x| id(x).to_string());
    Ok((items, cursor))
}

/// A value bound to a browse query.
enum Bind {
    Int(i64),
    Text(String),
}

/// A page's size and the id it starts after, from `limit` and `cursor`.
pub(crate) fn page(limit: Option<u32>, cursor: Option<&str>) -> Result<(u32, i64), AppError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_LIMIT);
    if limit == 0 || limit > MAX_PAGE_LIMIT {
        return Err(AppError::InvalidRequest(format!(
            "limit must be between 1 and {MAX_PAGE_LIMIT}"
        )));
    }
    let after: i64 = match cursor {
        None | Some("") => 0,
        Some(c) => c.parse().ok().filter(|n: &i64| *n >= 0).ok_or_else(|| {
            AppError::InvalidRequest("cursor is not one this server issued".into())
        })?,
    };
    Ok((limit, after))
}

async fn list_listings(
    State(state): State<AppState>,
    _player: AuthPlayer,
    query: Result<Query<ListingQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let (limit, _) = page(q.limit, None)?;
    let order = Order::parse(q.sort.as_deref(), q.cursor.as_deref())?;
    let status = q.status.as_deref().unwrap_or("active");
    let now = state.0.clock.now();
    // The stored status, and whether the condition on the time that tells
    // `active` from `expired` (before the sweep got there) applies.
    let (condition, timed) = match status {
        "all" => ("", false),
        "active" => (
            " AND l.status = 'active' AND (l.expires_at IS NULL OR l.expires_at > {now})",
            true,
        ),
        "expired" => (
            " AND ((l.status = 'active' AND l.expires_at <= {now}) OR l.closed_by = 'expiry')",
            true,
        ),
        "sold" => (" AND l.status = 'sold'", false),
        "cancelled" => (
            " AND l.status = 'cancelled' AND COALESCE(l.closed_by, '') <> 'expiry'",
            false,
        ),
        _ => {
            return Err(AppError::InvalidRequest(
                "status must be active, sold, cancelled, expired or all".into(),
            ))
        }
    };
    // Every value below is bound; `$n` numbers follow the order pushed.
    let mut sql = format!("SELECT {BROWSE_COLUMNS} FROM {BROWSE_FROM} WHERE 1 = 1");
    let mut binds: Vec<Bind> = Vec::new();
    let mut param = |sql: &mut String, text: &str, value: Bind| {
        binds.push(value);
        sql.push_str(&text.replace("{}", &format!("${}", binds.len())));
    };
    if timed {
        let (before, after) = condition.split_once("{now}").unwrap_or((condition, ""));
        param(&mut sql, &format!("{before}{{}}{after}"), Bind::Int(now));
    } else {
        sql.push_str(condition);
    }
    if let Some(item_id) = &q.item_id {
        check_id("item_id", item_id).map_err(AppError::InvalidRequest)?;
        param(&mut sql, " AND l.item_id = {}", Bind::Text(item_id.clone()));
    }
    if let Some(prefix) = &q.item_prefix {
        check_id("item_prefix", prefix).map_err(AppError::InvalidRequest)?;
        // `_` is a LIKE wildcard and may be in an id: escaped.
        let pattern = format!("{}%", crate::market_data::like_escape(prefix));
        param(
            &mut sql,
            " AND l.item_id LIKE {} ESCAPE '\\'",
            Bind::Text(pattern),
        );
    }
    if let Some(text) = &q.search {
        let text = crate::market_data::search_text(text)?;
        match &state.0.policy.catalog {
            Some(catalog) => {
                let ids = catalog.search(&text, crate::market_data::MAX_SEARCH_RESULTS);
                if ids.is_empty() {
                    sql.push_str(" AND 1 = 0");
                } else {
                    for (i, (id, _)) in ids.iter().enumerate() {
                        let text = if i == 0 {
                            " AND l.item_id IN ({}"
                        } else {
                            ", {}"
                        };
                        param(&mut sql, text, Bind::Text(id.to_string()));
                    }
                    sql.push(')');
                }
            }
            None => {
                let pattern = format!("{}%", crate::market_data::like_escape(&text));
                param(
                    &mut sql,
                    " AND l.item_id LIKE {} ESCAPE '\\'",
                    Bind::Text(pattern),
                );
            }
        }
    }
    if let Some(seller_id) = q.seller_id {
        param(&mut sql, " AND l.seller_id = {}", Bind::Int(seller_id));
    }
    if let Some(min) = q.min_price {
        param(&mut sql, " AND l.price >= {}", Bind::Int(min));
    }
    if let Some(max) = q.max_price {
        param(&mut sql, " AND l.price <= {}", Bind::Int(max));
    }
    match order {
        Order::Oldest { after } => {
            param(&mut sql, " AND l.id > {}", Bind::Int(after));
            sql.push_str(" ORDER BY l.id");
        }
        Order::Newest { before } => {
            param(&mut sql, " AND l.id < {}", Bind::Int(before));
            sql.push_str(" ORDER BY l.id DESC");
        }
        Order::Price { price, id } => {
            param(&mut sql, " AND (l.price > {}", Bind::Int(price));
            param(&mut sql, " OR (l.price = {}", Bind::Int(price));
            param(&mut sql, " AND l.id > {}))", Bind::Int(id));
            sql.push_str(" ORDER BY l.price, l.id");
        }
    }
    param(&mut sql, " LIMIT {}", Bind::Int(i64::from(limit)));
    let mut query = sqlx::query(&sql);
    for b in binds {
        query = match b {
            Bind::Int(n) => query.bind(n),
            Bind::Text(t) => query.bind(t),
        };
    }
    let rows = query.fetch_all(state.0.db.reader()).await?;
    let listings = rows
        .iter()
        .map(|row| listing_from_row(row).map(|l| as_of(l, now)))
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor = next_cursor(&listings, limit, |l| order.cursor_of(l));
    Answer::json(
        StatusCode::OK,
        &ListingPage {
            listings,
            next_cursor,
        },
    )
}

async fn get_listing(
    State(state): State<AppState>,
    _player: AuthPlayer,
    PathId(id): PathId,
) -> Result<Answer, AppError> {
    let sql = format!("SELECT {BROWSE_COLUMNS} FROM {BROWSE_FROM} WHERE l.id = $1");
    let row = sqlx::query(&sql)
        .bind(id)
        .fetch_optional(state.0.db.reader())
        .await?
        .ok_or(AppError::NotFound("Listing"))?;
    Answer::json(
        StatusCode::OK,
        &marketplace_protocol::ListingEnvelope {
            listing: as_of(listing_from_row(&row)?, state.0.clock.now()),
            fills: Vec::new(),
            transfer: None,
        },
    )
}

async fn create_listing(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<CreateListingRequest>,
) -> Result<Response, AppError> {
    // Only the shape here; the limits are checked after the key (a replay
    // of an older request beyond today's limits gets its first answer).
    check_id("item_id", &req.item_id).map_err(AppError::InvalidRequest)?;
    check_positive("quantity", req.quantity).map_err(AppError::InvalidRequest)?;
    check_positive("price", req.price).map_err(AppError::InvalidRequest)?;
    if !(0..=req.quantity).contains(&req.deposit) {
        return Err(AppError::InvalidRequest(
            "deposit must be between 0 and the quantity".into(),
        ));
    }
    let mutation = MarketChange::CreateListing {
        item_id: req.item_id,
        quantity: req.quantity,
        price: req.price,
        deposit: req.deposit,
        duration_secs: req.duration_secs,
    };
    let outcome = idempotency::run(&state, player_id, key, request_id, mutation).await?;
    Ok(mutation_response(&state, outcome))
}

async fn reprice_listing(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    PathId(listing_id): PathId,
    ApiJson(req): ApiJson<RepriceRequest>,
) -> Result<Response, AppError> {
    check_positive("price", req.price).map_err(AppError::InvalidRequest)?;
    let mutation = MarketChange::Reprice {
        listing_id,
        price: req.price,
    };
    let outcome = idempotency::run(&state, player_id, key, request_id, mutation).await?;
    Ok(mutation_response(&state, outcome))
}

async fn cancel_listing(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    PathId(listing_id): PathId,
) -> Result<Response, AppError> {
    let outcome = idempotency::run(
        &state,
        player_id,
        key,
        request_id,
        MarketChange::Cancel { listing_id },
    )
    .await?;
    Ok(mutation_response(&state, outcome))
}

async fn purchase(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    PathId(listing_id): PathId,
    ApiJson(req): ApiJson<PurchaseRequest>,
) -> Result<Response, AppError> {
    check_positive("expected_price", req.expected_price).map_err(AppError::InvalidRequest)?;
    if let Some(q) = req.quantity {
        check_positive("quantity", q).map_err(AppError::InvalidRequest)?;
    }
    // Never more than the purchase can cost (the whole lot: its bound).
    let most = match req.quantity {
        Some(q) => req.expected_price.saturating_mul(q),
        None => marketplace_protocol::MAX_PRICE,
    };
    if !(0..=most).contains(&req.deposit) {
        return Err(AppError::InvalidRequest(
            "deposit must be between 0 and what the purchase costs".into(),
        ));
    }
    let mutation = MarketChange::Purchase {
        listing_id,
        expected_price: req.expected_price,
        quantity: req.quantity,
        deposit: req.deposit,
    };
    let outcome = idempotency::run(&state, player_id, key, request_id, mutation).await;
    let label = match &outcome {
        Ok(o) => o.code.map_or("success", |c| c.as_str()),
        Err(e) => e.code().as_str(),
    };
    state.0.metrics.record_purchase(label);
    Ok(mutation_response(&state, outcome?))
}

#[derive(Deserialize)]
struct SalesQuery {
    claimed: Option<bool>,
    cursor: Option<String>,
    limit: Option<u32>,
}

async fn my_sales(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    query: Result<Query<SalesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let (limit, after) = page(q.limit, q.cursor.as_deref())?;
    let sql = format!(
        "SELECT {SALE_COLUMNS} FROM purchases WHERE seller_id = $1 AND id > $2{} ORDER BY id LIMIT $3",
        done_filter(q.claimed, "claimed_at")
    );
    let (sales, next_cursor) =
        own_page(&state, &sql, player_id, after, limit, sale_from_row, |s| {
            s.id
        })
        .await?;
    Answer::json(StatusCode::OK, &SalesPage { sales, next_cursor })
}

async fn claim(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    PathId(sale_id): PathId,
) -> Result<Response, AppError> {
    let outcome = idempotency::run(
        &state,
        player_id,
        key,
        request_id,
        MarketChange::Claim { sale_id },
    )
    .await?;
    Ok(mutation_response(&state, outcome))
}

/// 200 `ok` when the database answers — and, on SQLite, the writer that
/// every mutation goes through; 503 with the reason otherwise.
async fn my_account(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
) -> Result<Answer, AppError> {
    let mut conn = state.0.db.reader().acquire().await?;
    let account = crate::books::account(&mut conn, player_id).await?;
    Answer::json(
        StatusCode::OK,
        &AccountEnvelope {
            account,
            economy: state.0.policy.economy(),
        },
    )
}

#[derive(Deserialize)]
struct OperationsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

/// `GET /v1/me/operations?after=&limit=`: the player's keyed operations
/// after a point, with what each moved in or out of the game's save (see
/// [`crate::books::operations`]).
async fn my_operations(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    Query(q): Query<OperationsQuery>,
) -> Result<Answer, AppError> {
    let after = q.after.unwrap_or(0).max(0);
    let limit = q.limit.unwrap_or(DEFAULT_PAGE_LIMIT).min(MAX_PAGE_LIMIT);
    let mut conn = state.0.db.reader().acquire().await?;
    let page = crate::books::operations(&mut conn, player_id, after, i64::from(limit)).await?;
    Answer::json(StatusCode::OK, &page)
}

async fn deposit(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<Response, AppError> {
    check_move(&req)?;
    let change = MarketChange::Deposit {
        item_id: req.item_id,
        quantity: req.quantity,
    };
    let outcome = idempotency::run(&state, player_id, key, request_id, change).await?;
    Ok(mutation_response(&state, outcome))
}

async fn withdraw(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<MoveRequest>,
) -> Result<Response, AppError> {
    check_move(&req)?;
    let change = MarketChange::Withdraw {
        item_id: req.item_id,
        quantity: req.quantity,
    };
    let outcome = idempotency::run(&state, player_id, key, request_id, change).await?;
    Ok(mutation_response(&state, outcome))
}

async fn healthz(State(state): State<AppState>) -> Response {
    if let Err(e) = sqlx::query("SELECT 1").execute(state.0.db.reader()).await {
        tracing::warn!(error = %e, "health check failed");
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
    }
    if let Some(writer) = &state.0.group_commit {
        if !writer.ping(std::time::Duration::from_secs(2)).await {
            tracing::warn!("health check: the SQLite writer does not answer");
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the SQLite writer does not answer (restarted {} times)\n",
                    writer.restarts()
                ),
            )
                .into_response();
        }
        if writer.restarts() > 0 {
            return (
                StatusCode::OK,
                format!(
                    "ok (the SQLite writer was restarted {} times after a panic; see the log)\n",
                    writer.restarts()
                ),
            )
                .into_response();
        }
    }
    (StatusCode::OK, "ok\n").into_response()
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut text = state.0.metrics.render();
    state.0.stream.render_metrics(&mut text);
    match state.0.db.reader().acquire().await {
        Ok(mut conn) => match crate::books::totals(&mut conn).await {
            Ok(t) => crate::metrics::render_books(&mut text, &t),
            Err(e) => tracing::warn!(error = %e, "book totals unavailable"),
        },
        Err(e) => tracing::warn!(error = %e, "book totals unavailable"),
    }
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        text,
    )
        .into_response()
}

async fn not_found() -> AppError {
    AppError::NotFound("Route")
}
