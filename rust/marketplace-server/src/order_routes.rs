//! The routes of buy orders, deliveries and fees: the same small handlers
//! over explicit state as [`crate::routes`] — check the shape, hand a
//! [`MarketChange`] to [`idempotency::run`] or read through the reader
//! pool.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use marketplace_protocol::{
    check_id, check_positive, CollectRequest, DeliveriesPage, FeeQuote, MarketChange, OrdersPage,
    PlaceOrderRequest,
};
use serde::Deserialize;

use crate::error::{Answer, AppError};
use crate::extract::{ApiJson, AuthPlayer, IdemKey, PathId, RequestId};
use crate::idempotency;
use crate::market::deliveries::{delivery_from_row, DELIVERY_COLUMNS};
use crate::market::orders::{as_of, order_from_row, with_fills, ORDER_COLUMNS};
use crate::routes::{done_filter, mutation_response, own_page, page};
use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/orders", get(list_orders).post(place_order))
        .route("/v1/orders/{id}", get(get_order).delete(cancel_order))
        .route("/v1/me/orders", get(my_orders))
        .route("/v1/me/deliveries", get(my_deliveries))
        .route("/v1/me/deliveries/collect", post(collect))
        .route("/v1/fees/quote", get(fee_quote))
}

async fn place_order(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<PlaceOrderRequest>,
) -> Result<Response, AppError> {
    // The shape here; limits after the key (see `create_listing`).
    check_id("item_id", &req.item_id).map_err(AppError::InvalidRequest)?;
    check_positive("quantity", req.quantity).map_err(AppError::InvalidRequest)?;
    check_positive("max_price", req.max_price).map_err(AppError::InvalidRequest)?;
    if !(0..=req.quantity.saturating_mul(req.max_price)).contains(&req.deposit) {
        return Err(AppError::InvalidRequest(
            "deposit must be between 0 and quantity × max_price".into(),
        ));
    }
    let mutation = MarketChange::PlaceOrder {
        item_id: req.item_id,
        quantity: req.quantity,
        max_price: req.max_price,
        min_fill: req.min_fill,
        duration_secs: req.duration_secs,
        deposit: req.deposit,
    };
    let outcome = idempotency::run(&state, player_id, key, request_id, mutation).await?;
    Ok(mutation_response(&state, outcome))
}

async fn cancel_order(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    PathId(order_id): PathId,
) -> Result<Response, AppError> {
    let mutation = MarketChange::CancelOrder { order_id };
    let outcome = idempotency::run(&state, player_id, key, request_id, mutation).await?;
    Ok(mutation_response(&state, outcome))
}

async fn get_order(
    State(state): State<AppState>,
    _player: AuthPlayer,
    PathId(id): PathId,
) -> Result<Answer, AppError> {
    let mut conn = state.0.db.reader().acquire().await?;
    let envelope = with_fills(&mut conn, id, state.0.clock.now())
        .await?
        .ok_or(AppError::NotFound("Order"))?;
    Answer::json(StatusCode::OK, &envelope)
}

#[derive(Deserialize)]
struct OrdersQuery {
    item_id: Option<String>,
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/orders?item_id=`: an item's resting buy orders, best first
/// (highest price, then oldest) — the bids a seller can sell into. Paged
/// by position.
async fn list_orders(
    State(state): State<AppState>,
    _player: AuthPlayer,
    query: Result<Query<OrdersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let item_id = q
        .item_id
        .ok_or_else(|| AppError::InvalidRequest("item_id is required".into()))?;
    check_id("item_id", &item_id).map_err(AppError::InvalidRequest)?;
    let (limit, skip) = page(q.limit, q.cursor.as_deref())?;
    let now = state.0.clock.now();
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE item_id = $1 AND status = 'active' \
         AND (expires_at IS NULL OR expires_at > $2) ORDER BY max_price DESC, id LIMIT $3 OFFSET $4"
    );
    let rows = sqlx::query(&sql)
        .bind(&item_id)
        .bind(now)
        .bind(i64::from(limit))
        .bind(skip)
        .fetch_all(state.0.db.reader())
        .await?;
    let orders = rows
        .iter()
        .map(order_from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let next_cursor =
        (orders.len() == limit as usize).then(|| (skip + i64::from(limit)).to_string());
    Answer::json(
        StatusCode::OK,
        &OrdersPage {
            orders,
            next_cursor,
        },
    )
}

/// `GET /v1/me/orders?status=`: the player's orders, oldest first.
async fn my_orders(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    query: Result<Query<OrdersQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let (limit, after) = page(q.limit, q.cursor.as_deref())?;
    let filter = match q.status.as_deref() {
        None | Some("all") => "",
        Some("active") => " AND status = 'active'",
        Some("closed") => " AND status <> 'active'",
        Some(_) => {
            return Err(AppError::InvalidRequest(
                "status must be active, closed or all".into(),
            ))
        }
    };
    let sql = format!(
        "SELECT {ORDER_COLUMNS} FROM orders WHERE buyer_id = $1 AND id > $2{filter} ORDER BY id LIMIT $3"
    );
    let now = state.0.clock.now();
    let (orders, next_cursor) = own_page(
        &state,
        &sql,
        player_id,
        after,
        limit,
        |row| order_from_row(row).map(|o| as_of(o, now)),
        |o| o.id,
    )
    .await?;
    Answer::json(
        StatusCode::OK,
        &OrdersPage {
            orders,
            next_cursor,
        },
    )
}

#[derive(Deserialize)]
struct DeliveriesQuery {
    collected: Option<bool>,
    cursor: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/me/deliveries?collected=false`: what waits for the player.
async fn my_deliveries(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    query: Result<Query<DeliveriesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let (limit, after) = page(q.limit, q.cursor.as_deref())?;
    let sql = format!(
        "SELECT {DELIVERY_COLUMNS} FROM deliveries WHERE player_id = $1 AND id > $2{} ORDER BY id LIMIT $3",
        done_filter(q.collected, "collected_at")
    );
    let (deliveries, next_cursor) = own_page(
        &state,
        &sql,
        player_id,
        after,
        limit,
        delivery_from_row,
        |d| d.id,
    )
    .await?;
    Answer::json(
        StatusCode::OK,
        &DeliveriesPage {
            deliveries,
            next_cursor,
        },
    )
}

async fn collect(
    State(state): State<AppState>,
    AuthPlayer(player_id): AuthPlayer,
    IdemKey(key): IdemKey,
    axum::Extension(RequestId(request_id)): axum::Extension<RequestId>,
    ApiJson(req): ApiJson<CollectRequest>,
) -> Result<Response, AppError> {
    crate::market::deliveries::check_ids(&req.delivery_ids).map_err(AppError::InvalidRequest)?;
    let mutation = MarketChange::Collect {
        delivery_ids: req.delivery_ids,
    };
    let outcome = idempotency::run(&state, player_id, key, request_id, mutation).await?;
    Ok(mutation_response(&state, outcome))
}

#[derive(Deserialize)]
struct QuoteQuery {
    quantity: Option<i64>,
    price: i64,
}

/// `GET /v1/fees/quote?quantity=&price=`: what a sale of `quantity` units
/// (default 1) at `price` each costs the seller, before they confirm. The
/// fees are charged per fill, so a listing that sells in parts may pay a
/// minimum more than once: the quote is for one fill of this size.
async fn fee_quote(
    State(state): State<AppState>,
    query: Result<Query<QuoteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let quantity = q.quantity.unwrap_or(1);
    marketplace_protocol::check_quantity(quantity).map_err(AppError::InvalidRequest)?;
    marketplace_protocol::check_price("price", q.price).map_err(AppError::InvalidRequest)?;
    let gross =
        marketplace_protocol::check_total(quantity, q.price).map_err(AppError::InvalidRequest)?;
    let (listing_fee, sales_tax) = state.0.policy.fees.on(gross);
    Answer::json(
        StatusCode::OK,
        &FeeQuote {
            quantity,
            unit_price: q.price,
            buyer_pays: gross,
            listing_fee,
            sales_tax,
            seller_receives: gross - listing_fee - sales_tax,
        },
    )
}
