//! Market data per item, read from the book and the fills: a summary (best
//! ask and bid, last price, 24 h volume), the depth of the book (price
//! levels), the price history (candles per hour or day) — and the item
//! search behind a shop's search box (`/v1/items?search=`: catalog ids and
//! display names, or the ids on the book without a catalog).
//!
//! Everything is read through the reader pool with indexed queries (the
//! book indexes of migration 7, `purchases_by_item` of migration 8) and
//! bounded: depth to [`MAX_LEVELS`] levels a side, history to
//! [`MAX_CANDLES`] intervals and [`MAX_FILLS`] fills scanned.
//!
//! Every player's shop screen asks for these: an answer is kept for
//! `--market-data-cache-ms` (2 s) and served to every player who asks for the same thing
//! meanwhile (per replica; these are figures to show, not to trade on —
//! trades check prices themselves). A history without an end is the one
//! ending now, so it is cached by its interval and range, not its `to`.

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use marketplace_protocol::{
    check_id, Candle, Depth, DepthLevel, ItemMatch, ItemSearch, MarketSummary, PriceHistory,
};
use serde::Deserialize;
use sqlx::Row;

use crate::error::{Answer, AppError};
use crate::extract::AuthPlayer;
use crate::AppState;

/// Most price levels a side of the depth shows.
pub const MAX_LEVELS: i64 = 100;
/// Most intervals one history answer holds.
pub const MAX_CANDLES: i64 = 500;
/// Most fills one history answer reads (the oldest beyond it are left out).
pub const MAX_FILLS: i64 = 100_000;

/// Entries kept at most; beyond, the cache starts afresh.
const CACHE_ENTRIES: usize = 10_000;

/// Recent market data answers by what was asked.
pub struct Cache {
    keep_for: std::time::Duration,
    entries: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, Answer)>>,
}

impl Cache {
    pub fn new(keep_for: std::time::Duration) -> Cache {
        Cache {
            keep_for,
            entries: Default::default(),
        }
    }

    fn get(&self, key: &str) -> Option<Answer> {
        let entries = self.entries.lock().ok()?;
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.keep_for)
            .map(|(_, answer)| answer.clone())
    }

    fn put(&self, key: String, answer: &Answer) {
        if self.keep_for.is_zero() {
            return;
        }
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= CACHE_ENTRIES {
                entries.clear();
            }
            entries.insert(key, (std::time::Instant::now(), answer.clone()));
        }
    }
}

/// The cached answer for `key`, or `compute`'s (then kept).
async fn cached<F>(state: &AppState, key: String, compute: F) -> Result<Answer, AppError>
where
    F: std::future::Future<Output = Result<Answer, AppError>>,
{
    if let Some(answer) = state.0.market_cache.get(&key) {
        return Ok(answer);
    }
    let answer = compute.await?;
    state.0.market_cache.put(key, &answer);
    Ok(answer)
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/market/{item_id}/summary", get(summary))
        .route("/v1/market/{item_id}/depth", get(depth))
        .route("/v1/market/{item_id}/history", get(history))
        .route("/v1/items", get(items))
}

/// The most items one search answers with.
pub const MAX_SEARCH_RESULTS: usize = 100;

/// The search text of `?search=`, trimmed and checked.
pub(crate) fn search_text(text: &str) -> Result<String, AppError> {
    marketplace_protocol::check_search(text)
        .map(str::to_string)
        .map_err(AppError::InvalidRequest)
}

#[derive(Deserialize)]
struct ItemsQuery {
    search: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/items?search=&limit=`.
async fn items(
    State(state): State<AppState>,
    _player: AuthPlayer,
    query: Result<Query<ItemsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let text = search_text(q.search.as_deref().unwrap_or(""))?;
    let limit = q.limit.unwrap_or(20).clamp(1, MAX_SEARCH_RESULTS);
    if let Some(catalog) = &state.0.policy.catalog {
        // In memory: no database, no cache needed.
        let items = catalog
            .search(&text, limit)
            .into_iter()
            .map(|(id, name)| ItemMatch {
                item_id: id.to_string(),
                name: name.map(str::to_string),
            })
            .collect();
        return Answer::json(
            StatusCode::OK,
            &ItemSearch {
                items,
                catalog: true,
            },
        );
    }
    // Without a catalog an id is all there is: ids on the book (for sale or
    // wanted) starting with the text, as typed.
    let key = format!("items {limit} {text}");
    let db = state.0.db.clone();
    cached(&state, key, async move {
        let pattern = format!("{}%", like_escape(&text));
        let rows: Vec<(String,)> = sqlx::query_as(
            "SELECT item_id FROM listings WHERE status = 'active' AND item_id LIKE $1 ESCAPE '\\' \
             UNION SELECT item_id FROM orders WHERE status = 'active' AND item_id LIKE $1 ESCAPE '\\' \
             ORDER BY item_id LIMIT $2",
        )
        .bind(&pattern)
        .bind(limit as i64)
        .fetch_all(db.reader())
        .await?;
        Answer::json(
            StatusCode::OK,
            &ItemSearch {
                items: rows
                    .into_iter()
                    .map(|(item_id,)| ItemMatch {
                        item_id,
                        name: None,
                    })
                    .collect(),
                catalog: false,
            },
        )
    })
    .await
}

/// `text` for a `LIKE … ESCAPE '\'` pattern, its wildcards taken literally.
pub(crate) fn like_escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_")
}

fn item(
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, AppError> {
    let axum::extract::Path(item_id) = path.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    check_id("item_id", &item_id).map_err(AppError::InvalidRequest)?;
    Ok(item_id)
}

/// The unit price of a fill (fills from before unit prices: the lot's
/// price over its units).
const UNIT: &str = "COALESCE(unit_price, price / quantity)";

async fn summary(
    State(state): State<AppState>,
    _player: AuthPlayer,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Answer, AppError> {
    let item_id = item(path)?;
    let key = format!("summary {item_id}");
    cached(&state, key, summary_of(&state, item_id)).await
}

async fn summary_of(state: &AppState, item_id: String) -> Result<Answer, AppError> {
    let now = state.0.clock.now();
    let db = state.0.db.reader();
    let (best_ask, ask_quantity): (Option<i64>, i64) = sqlx::query_as(
        "SELECT MIN(price), CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM listings \
         WHERE item_id = $1 AND status = 'active' AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(&item_id)
    .bind(now)
    .fetch_one(db)
    .await?;
    let (best_bid, bid_quantity): (Option<i64>, i64) = sqlx::query_as(
        "SELECT MAX(max_price), CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM orders \
         WHERE item_id = $1 AND status = 'active' AND (expires_at IS NULL OR expires_at > $2)",
    )
    .bind(&item_id)
    .bind(now)
    .fetch_one(db)
    .await?;
    let last: Option<(i64,)> = sqlx::query_as(&format!(
        "SELECT {UNIT} FROM purchases WHERE item_id = $1 ORDER BY created_at DESC, id DESC LIMIT 1"
    ))
    .bind(&item_id)
    .fetch_optional(db)
    .await?;
    let (volume_24h, trades_24h): (i64, i64) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT), COUNT(*) FROM purchases \
         WHERE item_id = $1 AND created_at > $2",
    )
    .bind(&item_id)
    .bind(now - 24 * 3600)
    .fetch_one(db)
    .await?;
    Answer::json(
        StatusCode::OK,
        &MarketSummary {
            item_id,
            best_ask,
            best_bid,
            ask_quantity,
            bid_quantity,
            last_price: last.map(|(p,)| p),
            volume_24h,
            trades_24h,
            at: now,
        },
    )
}

#[derive(Deserialize)]
struct DepthQuery {
    levels: Option<i64>,
}

async fn depth(
    State(state): State<AppState>,
    _player: AuthPlayer,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<DepthQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let item_id = item(path)?;
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let levels = q.levels.unwrap_or(20);
    if !(1..=MAX_LEVELS).contains(&levels) {
        return Err(AppError::InvalidRequest(format!(
            "levels must be between 1 and {MAX_LEVELS}"
        )));
    }
    let key = format!("depth {item_id} {levels}");
    cached(&state, key, depth_of(&state, item_id, levels)).await
}

async fn depth_of(state: &AppState, item_id: String, levels: i64) -> Result<Answer, AppError> {
    let now = state.0.clock.now();
    let db = state.0.db.reader();
    let side = |sql: &str| {
        let sql = sql.to_string();
        let item_id = item_id.clone();
        async move {
            let rows = sqlx::query(&sql)
                .bind(item_id)
                .bind(now)
                .bind(levels)
                .fetch_all(db)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(DepthLevel {
                        price: r.try_get("price")?,
                        quantity: r.try_get("quantity")?,
                        count: r.try_get("n")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
        }
    };
    let asks = side(
        "SELECT price, CAST(SUM(remaining) AS BIGINT) AS quantity, COUNT(*) AS n FROM listings \
         WHERE item_id = $1 AND status = 'active' AND (expires_at IS NULL OR expires_at > $2) \
         GROUP BY price ORDER BY price LIMIT $3",
    )
    .await?;
    let bids = side(
        "SELECT max_price AS price, CAST(SUM(remaining) AS BIGINT) AS quantity, COUNT(*) AS n FROM orders \
         WHERE item_id = $1 AND status = 'active' AND (expires_at IS NULL OR expires_at > $2) \
         GROUP BY max_price ORDER BY max_price DESC LIMIT $3",
    )
    .await?;
    Answer::json(
        StatusCode::OK,
        &Depth {
            item_id,
            asks,
            bids,
        },
    )
}

#[derive(Deserialize)]
struct HistoryQuery {
    interval: Option<String>,
    from: Option<i64>,
    to: Option<i64>,
}

async fn history(
    State(state): State<AppState>,
    _player: AuthPlayer,
    path: Result<axum::extract::Path<String>, axum::extract::rejection::PathRejection>,
    query: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Answer, AppError> {
    let item_id = item(path)?;
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let interval = q.interval.unwrap_or_else(|| "hour".into());
    let step = match interval.as_str() {
        "hour" => 3600,
        "day" => 86_400,
        _ => {
            return Err(AppError::InvalidRequest(
                "interval must be hour or day".into(),
            ))
        }
    };
    let now = state.0.clock.now();
    let to = q.to.unwrap_or(now);
    let from = q.from.unwrap_or(to - step * 48);
    if from > to || (to - from) / step >= MAX_CANDLES {
        return Err(AppError::InvalidRequest(format!(
            "from must be before to, at most {MAX_CANDLES} intervals apart"
        )));
    }
    let key = format!(
        "history {item_id} {interval} {} {}",
        q.from.map_or("-".into(), |f| f.to_string()),
        q.to.map_or("now".into(), |t| t.to_string())
    );
    cached(
        &state,
        key,
        history_of(&state, item_id, interval, step, from, to),
    )
    .await
}

async fn history_of(
    state: &AppState,
    item_id: String,
    interval: String,
    step: i64,
    from: i64,
    to: i64,
) -> Result<Answer, AppError> {
    let rows = sqlx::query(&format!(
        "SELECT created_at, quantity, {UNIT} AS unit FROM purchases \
         WHERE item_id = $1 AND created_at >= $2 AND created_at <= $3 \
         ORDER BY created_at, id LIMIT $4"
    ))
    .bind(&item_id)
    .bind(from.div_euclid(step) * step)
    .bind(to)
    .bind(MAX_FILLS)
    .fetch_all(state.0.db.reader())
    .await?;
    let mut fills = Vec::with_capacity(rows.len());
    for r in &rows {
        fills.push((
            r.try_get::<i64, _>("created_at")?,
            r.try_get::<i64, _>("quantity")?,
            r.try_get::<i64, _>("unit")?,
        ));
    }
    Answer::json(
        StatusCode::OK,
        &PriceHistory {
            item_id,
            interval,
            candles: candles(&fills, step),
        },
    )
}

/// Candles of `step` seconds from fills `(at, units, unit price)` in time
/// order: one per interval with a fill.
pub fn candles(fills: &[(i64, i64, i64)], step: i64) -> Vec<Candle> {
    let mut out: Vec<Candle> = Vec::new();
    for &(at, units, price) in fills {
        let start = at.div_euclid(step) * step;
        match out.last_mut() {
            Some(c) if c.start == start => {
                c.high = c.high.max(price);
                c.low = c.low.min(price);
                c.close = price;
                c.volume += units;
                c.trades += 1;
            }
            _ => out.push(Candle {
                start,
                open: price,
                high: price,
                low: price,
                close: price,
                volume: units,
                trades: 1,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::candles;

    #[test]
    fn candles_follow_the_fills() {
        let fills = [
            (3_600, 2, 10),
            (3_700, 1, 14),
            (7_100, 3, 9),
            (7_300, 1, 11),
        ];
        let c = candles(&fills, 3_600);
        assert_eq!(c.len(), 2);
        assert_eq!(
            (
                c[0].start,
                c[0].open,
                c[0].high,
                c[0].low,
                c[0].close,
                c[0].volume,
                c[0].trades
            ),
            (3_600, 10, 14, 9, 9, 6, 3)
        );
        assert_eq!(
            (c[1].start, c[1].open, c[1].close, c[1].volume),
            (7_200, 11, 11, 1)
        );
        assert!(candles(&[], 3_600).is_empty());
    }
}
