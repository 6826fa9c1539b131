//! The console's pages and actions. Reads go through the reader pool with
//! indexed, paged queries (`LIMIT` and a key to continue after, never an
//! `OFFSET`), so a page costs the same with a million ledger rows as with
//! ten; changes reuse the admin API's and the market's own code.

use std::fmt::Write;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use serde::Deserialize;
use sqlx::Row;

use super::html::{self, esc, form, page, table, time, url};
use super::{CsrfForm, Operator};
use crate::error::AppError;
use crate::market::expiry::Closing;
use crate::AppState;

const PAGE: i64 = 50;

fn failed(e: impl Into<AppError>) -> Response {
    let e = e.into();
    html::error_page(e.status(), &e.to_string())
}

fn player_link(id: i64) -> String {
    format!("<a href=/console/players/{id}>{id}</a>")
}

fn listing_link(id: Option<i64>) -> String {
    id.map(|id| format!("<a href=\"/console/listings?id={id}\">{id}</a>"))
        .unwrap_or_default()
}

fn order_link(id: Option<i64>) -> String {
    id.map(|id| format!("<a href=\"/console/orders?id={id}&amp;status=all\">{id}</a>"))
        .unwrap_or_default()
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map(|v| esc(&v.to_string())).unwrap_or_default()
}

async fn count(state: &AppState, sql: &str) -> Result<i64, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as(sql).fetch_one(state.0.db.reader()).await?;
    Ok(n)
}

pub async fn overview(State(state): State<AppState>, op: Operator) -> Response {
    let body = async {
        let mut conn = state.0.db.reader().acquire().await?;
        let t = crate::books::totals(&mut conn).await?;
        drop(conn);
        let mut out = String::from("<h2>Inside the market</h2><div class=cards>");
        for (label, value) in [
            ("credits in accounts", t.account_credits),
            ("unclaimed proceeds", t.unclaimed_proceeds),
            ("credits in buy orders", t.order_escrow_credits),
            ("credits waiting (deliveries)", t.delivery_credits),
            ("fees kept", t.fees),
            ("items in stashes", t.stash_items),
            ("items in listings", t.escrow_items),
            ("items waiting (deliveries)", t.delivery_items),
        ] {
            let _ = write!(
                out,
                "<div class=card><span class=muted>{label}</span><b>{value}</b></div>"
            );
        }
        out.push_str("</div><h2>Activity</h2><div class=cards>");
        for (label, sql) in [
            ("players", "SELECT COUNT(*) FROM players"),
            (
                "active listings",
                "SELECT COUNT(*) FROM listings WHERE status = 'active'",
            ),
            (
                "active buy orders",
                "SELECT COUNT(*) FROM orders WHERE status = 'active'",
            ),
            (
                "deliveries waiting",
                "SELECT COUNT(*) FROM deliveries WHERE collected_at IS NULL",
            ),
            ("banned players", "SELECT COUNT(*) FROM bans"),
        ] {
            let _ = write!(
                out,
                "<div class=card><span class=muted>{label}</span><b>{}</b></div>",
                count(&state, sql).await?
            );
        }
        let _ = write!(
            out,
            "<div class=card><span class=muted>live streams (this replica)</span><b>{}</b></div></div>",
            state.0.stream.subscribers()
        );
        let hour = state.0.metrics.last_hour();
        let series = |f: &dyn Fn(&crate::metrics::Minute) -> f64| -> Vec<f64> {
            hour.iter().map(f).collect()
        };
        out.push_str("<h2>This replica, per minute</h2><div class=cards>");
        out.push_str(&html::sparkline(
            "requests",
            &series(&|m| m.requests as f64),
        ));
        out.push_str(&html::sparkline(
            "errors (5xx)",
            &series(&|m| m.errors as f64),
        ));
        out.push_str(&html::sparkline(
            "purchases",
            &series(&|m| m.purchases as f64),
        ));
        out.push_str(&html::sparkline(
            "mean latency, ms",
            &series(&|m| {
                if m.requests == 0 {
                    0.0
                } else {
                    m.latency_sum * 1000.0 / m.requests as f64
                }
            }),
        ));
        out.push_str("</div>");
        out.push_str(&audit_summary(&last_audit(&state).await?, &op));
        let actions = sqlx::query(
            "SELECT at, session_label, action, player_id, listing_id, detail FROM console_actions ORDER BY id DESC LIMIT 20",
        )
        .fetch_all(state.0.db.reader())
        .await?;
        let rows: Vec<Vec<String>> = actions
            .iter()
            .map(|r| {
                vec![
                    time(r.try_get("at").unwrap_or(0)),
                    esc(&r.try_get::<String, _>("session_label").unwrap_or_default()),
                    esc(&r.try_get::<String, _>("action").unwrap_or_default()),
                    r.try_get::<Option<i64>, _>("player_id")
                        .ok()
                        .flatten()
                        .map(player_link)
                        .unwrap_or_default(),
                    listing_link(r.try_get::<Option<i64>, _>("listing_id").ok().flatten()),
                    esc(&r.try_get::<String, _>("detail").unwrap_or_default()),
                ]
            })
            .collect();
        out.push_str("<h2>Recent operator actions</h2>");
        out.push_str(&table(
            &[
                "at (UTC)", "session", "action", "player", "listing", "detail",
            ],
            &rows,
        ));
        Ok::<_, AppError>(out)
    };
    match body.await {
        Ok(body) => page("Overview", &op.csrf, &body),
        Err(e) => failed(e),
    }
}

/// The last audit run from the console (any replica): when, and what it
/// said.
async fn last_audit(state: &AppState) -> Result<Option<(i64, Vec<String>, Vec<String>)>, AppError> {
    let row: Option<(i64, String)> =
        sqlx::query_as("SELECT at, report FROM console_audits ORDER BY id DESC LIMIT 1")
            .fetch_optional(state.0.db.reader())
            .await?;
    Ok(row.map(|(at, report)| {
        let v: serde_json::Value = serde_json::from_str(&report).unwrap_or_default();
        let list = |k: &str| -> Vec<String> {
            v[k].as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        (at, list("lines"), list("mismatches"))
    }))
}

fn audit_summary(last: &Option<(i64, Vec<String>, Vec<String>)>, op: &Operator) -> String {
    let said = match last {
        None => "<p class=muted>No audit run from the console yet.</p>".to_string(),
        Some((at, _, mismatches)) if mismatches.is_empty() => {
            format!("<p class=ok>The books balanced at {} UTC.</p>", time(*at))
        }
        Some((at, _, mismatches)) => format!(
            "<p class=bad>The books did not balance at {} UTC: {}</p>",
            time(*at),
            linked(&mismatches[0])
        ),
    };
    format!(
        "<h2>Audit</h2>{said}{} <a href=/console/audit>details</a>",
        form("/console/audit", &op.csrf, "", "Run the audit now")
    )
}

/// An audit line, escaped, with the rows it names linked: players (their
/// account, stash, deliveries), listings (their escrow), orders.
fn linked(line: &str) -> String {
    const NAMES: [(&str, &str); 7] = [
        ("Account(", "player"),
        ("Stash(", "player"),
        ("Delivery(", "player"),
        ("OrderEscrow(", "order"),
        ("Escrow(", "listing"),
        ("listing ", "listing"),
        ("order ", "order"),
    ];
    let escaped = esc(line);
    let mut out = String::new();
    let mut rest = escaped.as_str();
    loop {
        let next = NAMES
            .iter()
            .filter_map(|(p, kind)| rest.find(p).map(|i| (i, *p, *kind)))
            .min_by_key(|(i, _, _)| *i);
        let Some((i, p, kind)) = next else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..i + p.len()]);
        let after = &rest[i + p.len()..];
        let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
        if !digits.is_empty() {
            let href = match kind {
                "player" => format!("/console/players/{digits}"),
                "listing" => format!("/console/listings?id={digits}&amp;status=all"),
                _ => format!("/console/orders?id={digits}&amp;status=all"),
            };
            let _ = write!(out, "<a href=\"{href}\">{digits}</a>");
        }
        rest = &after[digits.len()..];
    }
}

pub async fn audit(State(state): State<AppState>, op: Operator) -> Response {
    let last = match last_audit(&state).await {
        Ok(last) => last,
        Err(e) => return failed(e),
    };
    let mut body = audit_summary(&last, &op);
    if let Some((_, lines, mismatches)) = last {
        if !mismatches.is_empty() {
            body.push_str("<h2>Mismatches (first first)</h2><ol>");
            for m in &mismatches {
                let _ = write!(body, "<li>{}</li>", linked(m));
            }
            body.push_str("</ol>");
        }
        body.push_str("<h2>What it checked</h2><ul>");
        for l in &lines {
            let _ = write!(body, "<li>{}</li>", esc(l));
        }
        body.push_str("</ul>");
    }
    page("Audit", &op.csrf, &body)
}

pub async fn run_audit(
    State(state): State<AppState>,
    op: Operator,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(refused) = op.check(&f.csrf) {
        return refused.into_response();
    }
    let report = async {
        let mut conn = state.0.db.reader().acquire().await?;
        crate::books::audit(&mut conn).await
    };
    match report.await {
        Ok(report) => {
            let detail = if report.ok() {
                "balanced".to_string()
            } else {
                format!("{} mismatches", report.mismatches.len())
            };
            let stored = async {
                let mut tx = state.0.db.begin_write().await?;
                sqlx::query(
                    "INSERT INTO console_audits (at, session_label, ok, report) VALUES ($1, $2, $3, $4)",
                )
                .bind(state.0.clock.now())
                .bind(&op.label)
                .bind(i64::from(report.ok()))
                .bind(
                    serde_json::json!({"lines": report.lines, "mismatches": report.mismatches})
                        .to_string(),
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            };
            if let Err(e) = stored.await {
                return failed(e);
            }
            if let Err(e) = op.record(&state, "audit", None, None, &detail).await {
                return failed(e);
            }
            Redirect::to("/console/audit").into_response()
        }
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub struct PlayerSearch {
    #[serde(default)]
    q: String,
}

pub async fn players(
    State(state): State<AppState>,
    op: Operator,
    Query(s): Query<PlayerSearch>,
) -> Response {
    let q = s.q.trim().to_string();
    let rows = async {
        if q.is_empty() {
            return Ok(Vec::new());
        }
        let rows = if let Ok(id) = q.parse::<i64>() {
            sqlx::query("SELECT id, name, created_at FROM players WHERE id = $1")
                .bind(id)
                .fetch_all(state.0.db.reader())
                .await?
        } else {
            // A prefix as a range, which an index serves on every collation.
            sqlx::query(
                "SELECT id, name, created_at FROM players WHERE name >= $1 AND name < $2 ORDER BY name, id LIMIT 50",
            )
            .bind(&q)
            .bind(format!("{q}\u{10FFFF}"))
            .fetch_all(state.0.db.reader())
            .await?
        };
        Ok::<_, sqlx::Error>(rows)
    };
    let rows = match rows.await {
        Ok(rows) => rows,
        Err(e) => return failed(e),
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let id: i64 = r.try_get("id").unwrap_or(0);
            vec![
                player_link(id),
                esc(&r.try_get::<String, _>("name").unwrap_or_default()),
                time(r.try_get("created_at").unwrap_or(0)),
                if state.0.bans.contains(id) {
                    "<span class=bad>banned</span>".into()
                } else {
                    String::new()
                },
            ]
        })
        .collect();
    let body = format!(
        "<form method=get action=/console/players><input name=q value=\"{}\" placeholder=\"player id or name\" autofocus> \
         <button type=submit>Find</button></form>{}",
        esc(&q),
        if q.is_empty() { String::new() } else { table(&["id", "name", "since (UTC)", ""], &cells) }
    );
    page("Players", &op.csrf, &body)
}

#[derive(Deserialize)]
pub struct LedgerQuery {
    /// Rows before this ledger id (the next page).
    before: Option<i64>,
    player: Option<String>,
    item: Option<String>,
    action: Option<String>,
    /// UTC dates, `YYYY-MM-DD`, both inclusive.
    from: Option<String>,
    to: Option<String>,
}

/// A page of ledger rows, newest first; the id to continue before.
async fn ledger_rows(
    state: &AppState,
    player: Option<i64>,
    item: Option<&str>,
    action: Option<&str>,
    span: (Option<i64>, Option<i64>),
    before: i64,
    limit: i64,
) -> Result<Vec<sqlx::any::AnyRow>, sqlx::Error> {
    // Only the filters given, as plain equalities: each has an index that
    // leads with it and ends with `id` (`ledger_by_player`, `ledger_by_item`,
    // `ledger_by_action_id`), which a `$n IS NULL OR …` form would hide
    // from the planner.
    let mut sql = String::from(
        "SELECT id, at, player_id, action, listing_id, purchase_id, order_id, delivery_id, item_id, quantity, \
         amount, idempotency_key, request_id FROM ledger WHERE id < $1",
    );
    let mut n = 1;
    let mut clause = |column: &str, given: bool| {
        if given {
            n += 1;
            sql.push_str(&format!(" AND {column} = ${n}"));
        }
    };
    clause("player_id", player.is_some());
    clause("item_id", item.is_some());
    clause("action", action.is_some());
    // A time span narrows (ids grow with time, so paging stays by id).
    if span.0.is_some() {
        n += 1;
        sql.push_str(&format!(" AND at >= ${n}"));
    }
    if span.1.is_some() {
        n += 1;
        sql.push_str(&format!(" AND at < ${n}"));
    }
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", n + 1));
    let mut q = sqlx::query(&sql).bind(before);
    if let Some(player) = player {
        q = q.bind(player);
    }
    if let Some(item) = item {
        q = q.bind(item.to_string());
    }
    if let Some(action) = action {
        q = q.bind(action.to_string());
    }
    for bound in [span.0, span.1].into_iter().flatten() {
        q = q.bind(bound);
    }
    q.bind(limit).fetch_all(state.0.db.reader()).await
}

fn ledger_table(rows: &[sqlx::any::AnyRow]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let g = |c: &str| r.try_get::<Option<i64>, _>(c).ok().flatten();
            let s = |c: &str| r.try_get::<Option<String>, _>(c).ok().flatten();
            vec![
                opt(g("id")),
                time(g("at").unwrap_or(0)),
                g("player_id").map(player_link).unwrap_or_default(),
                esc(&s("action").unwrap_or_default()),
                opt(s("item_id")),
                opt(g("quantity").or(g("amount"))),
                listing_link(g("listing_id")),
                order_link(g("order_id")),
                opt(g("purchase_id")),
                opt(g("delivery_id")),
                opt(s("idempotency_key")),
                opt(s("request_id")),
            ]
        })
        .collect();
    table(
        &[
            "#",
            "at (UTC)",
            "player",
            "action",
            "item",
            "qty",
            "listing",
            "order",
            "purchase",
            "delivery",
            "idempotency key",
            "request",
        ],
        &cells,
    )
}

pub async fn player(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Query(q): Query<LedgerQuery>,
) -> Response {
    let body = async {
        let who: Option<(String, i64)> =
            sqlx::query_as("SELECT name, created_at FROM players WHERE id = $1")
                .bind(id)
                .fetch_optional(state.0.db.reader())
                .await?;
        let Some((name, since)) = who else {
            return Err(AppError::NotFound("Player"));
        };
        let mut conn = state.0.db.reader().acquire().await?;
        let account = crate::books::account(&mut conn, id).await?;
        drop(conn);
        let ids = crate::players::identities(&state.0.db, id).await?;
        let banned = state.0.bans.contains(id);
        let mut out = format!(
            "<p>Player {id} · <b>{}</b> · since {} UTC · {} · ways in: {}{}</p>",
            esc(&name),
            time(since),
            if banned {
                "<span class=bad>banned</span>"
            } else {
                "<span class=ok>not banned</span>"
            },
            if ids.device { "device" } else { "" },
            ids.identities
                .iter()
                .map(|i| format!(" {}:{}", esc(&i.provider), esc(&i.subject)))
                .collect::<String>()
        );
        out.push_str(&if banned {
            form(
                &format!("/console/players/{id}/unban"),
                &op.csrf,
                "",
                "Unban",
            )
        } else {
            form(&format!("/console/players/{id}/ban"), &op.csrf, "", "Ban")
        });
        let key = format!("console-grant-{}", crate::random_id());
        out.push_str(&format!(
            "<h2>Grant</h2>{}",
            form(
                &format!("/console/players/{id}/grant"),
                &op.csrf,
                &format!(
                    "<input type=hidden name=key value=\"{key}\"><input name=item placeholder=\"item id (empty: credits)\"> \
                     <input name=quantity type=number min=1 required placeholder=quantity> \
                     <input name=reason required placeholder=\"reason (kept with the grant)\" size=40>"
                ),
                "Grant",
            )
        ));
        let _ = write!(
            out,
            "<h2>Market account</h2><p>{} credits</p>",
            account.credits
        );
        let stash: Vec<Vec<String>> = account
            .stash
            .iter()
            .map(|(k, v)| vec![esc(k), v.to_string()])
            .collect();
        out.push_str(&table(&["item", "in stash"], &stash));
        let held = |sql: &'static str| {
            let state = state.clone();
            async move {
                sqlx::query(sql)
                    .bind(id)
                    .fetch_all(state.0.db.reader())
                    .await
            }
        };
        let listings = held(
            "SELECT id, seller_id, item_id, quantity, remaining, price, status, created_at FROM listings WHERE seller_id = $1 ORDER BY id DESC LIMIT 20",
        )
        .await?;
        out.push_str("<h2>Listings (latest 20)</h2>");
        out.push_str(&listing_rows(&listings, &op, true));
        let orders = held(
            "SELECT id, item_id, quantity, remaining, max_price, escrow, status FROM orders WHERE buyer_id = $1 ORDER BY id DESC LIMIT 20",
        )
        .await?;
        out.push_str("<h2>Buy orders (latest 20)</h2>");
        out.push_str(&order_rows(&orders, &op));
        let deliveries = held(
            "SELECT id, kind, item_id, quantity, listing_id, order_id, created_at FROM deliveries WHERE player_id = $1 AND collected_at IS NULL ORDER BY id LIMIT 50",
        )
        .await?;
        let cells: Vec<Vec<String>> = deliveries
            .iter()
            .map(|r| {
                let g = |c: &str| r.try_get::<Option<i64>, _>(c).ok().flatten();
                vec![
                    opt(g("id")),
                    esc(&r.try_get::<String, _>("kind").unwrap_or_default()),
                    opt(r.try_get::<Option<String>, _>("item_id").ok().flatten()),
                    opt(g("quantity")),
                    listing_link(g("listing_id")),
                    order_link(g("order_id")),
                    time(g("created_at").unwrap_or(0)),
                ]
            })
            .collect();
        out.push_str("<h2>Deliveries waiting</h2>");
        out.push_str(&table(
            &[
                "#",
                "kind",
                "item",
                "qty",
                "listing",
                "order",
                "since (UTC)",
            ],
            &cells,
        ));
        let before = q.before.unwrap_or(i64::MAX);
        let rows = ledger_rows(&state, Some(id), None, None, (None, None), before, PAGE).await?;
        let _ = write!(
            out,
            "<h2>Ledger</h2><p><a href=/console/players/{id}/ledger.csv>Export all as CSV</a></p>{}",
            ledger_table(&rows)
        );
        if rows.len() as i64 == PAGE {
            if let Some(last) = rows.last().and_then(|r| r.try_get::<i64, _>("id").ok()) {
                let _ = write!(
                    out,
                    "<p><a href=\"/console/players/{id}?before={last}\">Older</a></p>"
                );
            }
        }
        Ok(out)
    };
    match body.await {
        Ok(body) => page(&format!("Player {id}"), &op.csrf, &body),
        Err(e) => failed(e),
    }
}

fn listing_rows(rows: &[sqlx::any::AnyRow], op: &Operator, with_cancel: bool) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let g = |c: &str| r.try_get::<Option<i64>, _>(c).ok().flatten();
            let id = g("id").unwrap_or(0);
            let status = r.try_get::<String, _>("status").unwrap_or_default();
            let mut row = vec![
                listing_link(Some(id)),
                g("seller_id").map(player_link).unwrap_or_default(),
                esc(&r.try_get::<String, _>("item_id").unwrap_or_default()),
                format!("{} of {}", opt(g("remaining")), opt(g("quantity"))),
                opt(g("price")),
                esc(&status),
            ];
            if with_cancel {
                row.push(if status == "active" {
                    form(
                        &format!("/console/listings/{id}/cancel"),
                        &op.csrf,
                        "",
                        "Withdraw",
                    )
                } else {
                    String::new()
                });
            }
            row
        })
        .collect();
    table(
        &[
            "listing",
            "seller",
            "item",
            "left",
            "unit price",
            "status",
            "",
        ],
        &cells,
    )
}

fn order_rows(rows: &[sqlx::any::AnyRow], op: &Operator) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let g = |c: &str| r.try_get::<Option<i64>, _>(c).ok().flatten();
            let id = g("id").unwrap_or(0);
            let status = r.try_get::<String, _>("status").unwrap_or_default();
            let cancel = if status == "active" {
                form(
                    &format!("/console/orders/{id}/cancel"),
                    &op.csrf,
                    "",
                    "Cancel",
                )
            } else {
                String::new()
            };
            vec![
                order_link(Some(id)),
                g("buyer_id").map(player_link).unwrap_or_default(),
                esc(&r.try_get::<String, _>("item_id").unwrap_or_default()),
                format!("{} of {}", opt(g("remaining")), opt(g("quantity"))),
                opt(g("max_price")),
                opt(g("escrow")),
                esc(&status),
                cancel,
            ]
        })
        .collect();
    table(
        &[
            "order",
            "buyer",
            "item",
            "left",
            "max price",
            "escrow",
            "status",
            "",
        ],
        &cells,
    )
}

pub async fn ledger_csv(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<i64>,
) -> Response {
    let mut out = String::from(
        "id,at,player_id,action,item_id,quantity,amount,listing_id,order_id,purchase_id,delivery_id,idempotency_key,request_id\n",
    );
    let mut before = i64::MAX;
    // Page by page, as the screen does; capped so one export stays small.
    for _ in 0..200 {
        let rows = match ledger_rows(&state, Some(id), None, None, (None, None), before, 500).await
        {
            Ok(rows) => rows,
            Err(e) => return failed(e),
        };
        for r in &rows {
            let g = |c: &str| {
                r.try_get::<Option<i64>, _>(c)
                    .ok()
                    .flatten()
                    .map(|v| v.to_string())
                    .unwrap_or_default()
            };
            let s = |c: &str| {
                csv(&r
                    .try_get::<Option<String>, _>(c)
                    .ok()
                    .flatten()
                    .unwrap_or_default())
            };
            let _ = writeln!(
                out,
                "{},{},{},{},{},{},{},{},{},{},{},{},{}",
                g("id"),
                g("at"),
                g("player_id"),
                s("action"),
                s("item_id"),
                g("quantity"),
                g("amount"),
                g("listing_id"),
                g("order_id"),
                g("purchase_id"),
                g("delivery_id"),
                s("idempotency_key"),
                s("request_id")
            );
        }
        match rows.last().and_then(|r| r.try_get::<i64, _>("id").ok()) {
            Some(last) if rows.len() == 500 => before = last,
            _ => break,
        }
    }
    let mut response = (StatusCode::OK, out).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(v) =
        HeaderValue::from_str(&format!("attachment; filename=\"player-{id}-ledger.csv\""))
    {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    response
}

/// A CSV field: quoted when it holds a separator, a quote or a line break;
/// a leading `=`, `+`, `-` or `@` is prefixed so a spreadsheet never runs it.
fn csv(field: &str) -> String {
    let field = if field.starts_with(['=', '+', '-', '@']) {
        format!("'{field}")
    } else {
        field.to_string()
    };
    if field.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", field.replace('"', "\"\""))
    } else {
        field
    }
}

pub async fn ban(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_ban(state, op, id, f, true).await
}

pub async fn unban(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    set_ban(state, op, id, f, false).await
}

async fn set_ban(state: AppState, op: Operator, id: i64, f: CsrfForm, banned: bool) -> Response {
    if let Err(refused) = op.check(&f.csrf) {
        return refused.into_response();
    }
    if let Err(e) = crate::admin::set_ban(&state, id, banned).await {
        return failed(e);
    }
    let action = if banned { "ban" } else { "unban" };
    if let Err(e) = op.record(&state, action, Some(id), None, "").await {
        return failed(e);
    }
    tracing::info!(session = %op.label, player = id, action, "console");
    Redirect::to(&format!("/console/players/{id}")).into_response()
}

#[derive(Deserialize)]
pub struct GrantForm {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
    #[serde(default)]
    item: String,
    #[serde(default)]
    quantity: String,
    #[serde(default)]
    reason: String,
}

pub async fn grant(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Form(f): Form<GrantForm>,
) -> Response {
    if let Err(refused) = op.check(&f.csrf) {
        return refused.into_response();
    }
    let reason = f.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return html::error_page(
            StatusCode::BAD_REQUEST,
            "Give a reason (up to 500 characters).",
        );
    }
    let Ok(quantity) = f.quantity.trim().parse::<i64>() else {
        return html::error_page(StatusCode::BAD_REQUEST, "The quantity is a whole number.");
    };
    if marketplace_protocol::check_id("idempotency key", &f.key).is_err() {
        return html::error_page(
            StatusCode::BAD_REQUEST,
            "The form's key is missing: reload the page.",
        );
    }
    let item = Some(f.item.trim().to_string()).filter(|i| !i.is_empty());
    let req = marketplace_protocol::MoveRequest {
        item_id: item.clone(),
        quantity,
    };
    if let Err(e) = crate::extract::check_move(&req) {
        return failed(e);
    }
    // The form's key: a double submit (or a retry after a lost answer) is
    // the same grant.
    match crate::admin::grant_to(&state, id, req, &f.key, &op.request_id()).await {
        Ok(moved) => {
            // A replayed form is the same grant: recorded once.
            let seen: Result<(i64,), _> = sqlx::query_as(
                "SELECT COUNT(*) FROM console_actions WHERE action = 'grant' AND player_id = $1 AND detail LIKE $2",
            )
            .bind(id)
            .bind(format!("grant #{}:%", moved.id))
            .fetch_one(state.0.db.reader())
            .await;
            if matches!(seen, Ok((n,)) if n > 0) {
                return Redirect::to(&format!("/console/players/{id}")).into_response();
            }
            let detail = format!(
                "grant #{}: {} {} — {}",
                moved.id,
                quantity,
                item.as_deref().unwrap_or("credits"),
                reason
            );
            if let Err(e) = op.record(&state, "grant", Some(id), None, &detail).await {
                return failed(e);
            }
            Redirect::to(&format!("/console/players/{id}")).into_response()
        }
        Err(e) => failed(e),
    }
}

#[derive(Deserialize)]
pub struct ListingFilter {
    id: Option<String>,
    item: Option<String>,
    seller: Option<String>,
    status: Option<String>,
    min_price: Option<String>,
    max_price: Option<String>,
    before: Option<i64>,
}

impl ListingFilter {
    /// The filters as a query string (for the "Older" link), escaped for
    /// an attribute.
    fn query(&self, status: Option<&str>) -> String {
        let v = |o: &Option<String>| url(o.as_deref().unwrap_or(""));
        format!(
            "id={}&amp;item={}&amp;seller={}&amp;status={}&amp;min_price={}&amp;max_price={}",
            v(&self.id),
            v(&self.item),
            v(&self.seller),
            url(status.unwrap_or("all")),
            v(&self.min_price),
            v(&self.max_price)
        )
    }
}

fn num(v: &Option<String>) -> Option<i64> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .and_then(|v| v.parse().ok())
}

fn text(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

pub async fn listings(
    State(state): State<AppState>,
    op: Operator,
    Query(f): Query<ListingFilter>,
) -> Response {
    let status = text(&f.status).unwrap_or_else(|| "active".into());
    let status = (status != "all").then_some(status);
    let rows = sqlx::query(
        "SELECT id, seller_id, item_id, quantity, remaining, price, status FROM listings \
         WHERE id < $1 AND ($2 IS NULL OR id = $2) AND ($3 IS NULL OR item_id = $3) AND ($4 IS NULL OR seller_id = $4) \
         AND ($5 IS NULL OR status = $5) AND ($6 IS NULL OR price >= $6) AND ($7 IS NULL OR price <= $7) \
         ORDER BY id DESC LIMIT $8",
    )
    .bind(f.before.unwrap_or(i64::MAX))
    .bind(num(&f.id))
    .bind(text(&f.item))
    .bind(num(&f.seller))
    .bind(&status)
    .bind(num(&f.min_price))
    .bind(num(&f.max_price))
    .bind(PAGE)
    .fetch_all(state.0.db.reader())
    .await;
    let rows = match rows {
        Ok(rows) => rows,
        Err(e) => return failed(e),
    };
    let v = |o: &Option<String>| esc(o.as_deref().unwrap_or(""));
    let mut body = format!(
        "<form method=get action=/console/listings>id <input name=id size=6 value=\"{}\"> item <input name=item value=\"{}\"> \
         seller <input name=seller size=6 value=\"{}\"> status <select name=status>{}</select> \
         price <input name=min_price size=6 value=\"{}\">–<input name=max_price size=6 value=\"{}\"> <button type=submit>Filter</button></form>",
        v(&f.id), v(&f.item), v(&f.seller),
        ["active", "sold", "cancelled", "all"]
            .iter()
            .map(|s| format!(
                "<option{}>{s}</option>",
                if status.as_deref().unwrap_or("all") == *s { " selected" } else { "" }
            ))
            .collect::<String>(),
        v(&f.min_price), v(&f.max_price)
    );
    body.push_str("<p class=muted>Withdraw sends what remains back to its seller (a delivery, or the account under server grants) and is recorded as an operator action.</p>");
    body.push_str(&listing_rows(&rows, &op, true));
    if rows.len() as i64 == PAGE {
        if let Some(last) = rows.last().and_then(|r| r.try_get::<i64, _>("id").ok()) {
            let _ = write!(
                body,
                "<p><a href=\"/console/listings?before={last}&amp;{}\">Older</a></p>",
                f.query(status.as_deref())
            );
        }
    }
    page("Listings", &op.csrf, &body)
}

pub async fn cancel_listing(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    close(state, op, Closing::Listing(id), f).await
}

pub async fn cancel_order(
    State(state): State<AppState>,
    op: Operator,
    Path(id): Path<i64>,
    Form(f): Form<CsrfForm>,
) -> Response {
    close(state, op, Closing::Order(id), f).await
}

/// Withdraws a listing or cancels a buy order as operator, and records it.
async fn close(state: AppState, op: Operator, closing: Closing, f: CsrfForm) -> Response {
    if let Err(refused) = op.check(&f.csrf) {
        return refused.into_response();
    }
    let done = async {
        let mut tx = state.0.db.begin_write().await?;
        let done = crate::market::expiry::close_by_operator(
            &mut tx,
            &state.0.policy,
            state.0.clock.now(),
            closing,
            &op.request_id(),
        )
        .await?;
        tx.commit().await?;
        state.0.stream.wake();
        Ok::<_, AppError>(done)
    };
    let (action, listing, detail, back) = match closing {
        Closing::Listing(id) => (
            "withdraw_listing",
            Some(id),
            format!("withdrew listing {id}:"),
            format!("/console/listings?id={id}&status=all"),
        ),
        Closing::Order(id) => (
            "cancel_order",
            None,
            format!("cancelled order {id}:"),
            format!("/console/orders?id={id}&status=all"),
        ),
    };
    match done.await {
        Ok(Some((owner, returned))) => {
            let detail = format!("{detail} {returned} back to its owner");
            if let Err(e) = op
                .record(&state, action, Some(owner), listing, &detail)
                .await
            {
                return failed(e);
            }
            Redirect::to(&back).into_response()
        }
        Ok(None) => html::error_page(
            StatusCode::CONFLICT,
            "That is no longer active: nothing to send back.",
        ),
        Err(e) => failed(e),
    }
}

pub async fn orders(
    State(state): State<AppState>,
    op: Operator,
    Query(f): Query<ListingFilter>,
) -> Response {
    let status = text(&f.status).unwrap_or_else(|| "active".into());
    let status = (status != "all").then_some(status);
    let rows = sqlx::query(
        "SELECT id, buyer_id, item_id, quantity, remaining, max_price, escrow, status FROM orders \
         WHERE id < $1 AND ($2 IS NULL OR item_id = $2) AND ($3 IS NULL OR buyer_id = $3) AND ($4 IS NULL OR status = $4) \
         AND ($5 IS NULL OR id = $5) AND ($6 IS NULL OR max_price >= $6) AND ($7 IS NULL OR max_price <= $7) \
         ORDER BY id DESC LIMIT $8",
    )
    .bind(f.before.unwrap_or(i64::MAX))
    .bind(text(&f.item))
    .bind(num(&f.seller))
    .bind(&status)
    .bind(num(&f.id))
    .bind(num(&f.min_price))
    .bind(num(&f.max_price))
    .bind(PAGE)
    .fetch_all(state.0.db.reader())
    .await;
    match rows {
        Ok(rows) => {
            let mut body = format!(
                "<form method=get action=/console/orders>item <input name=item value=\"{}\"> buyer <input name=seller size=6 value=\"{}\"> \
                 status <input name=status size=8 value=\"{}\"> max price <input name=min_price size=6 value=\"{}\">–<input name=max_price size=6 value=\"{}\"> \
                 <button type=submit>Filter</button></form>{}",
                esc(f.item.as_deref().unwrap_or("")),
                esc(f.seller.as_deref().unwrap_or("")),
                esc(status.as_deref().unwrap_or("all")),
                esc(f.min_price.as_deref().unwrap_or("")),
                esc(f.max_price.as_deref().unwrap_or("")),
                order_rows(&rows, &op)
            );
            if rows.len() as i64 == PAGE {
                if let Some(last) = rows.last().and_then(|r| r.try_get::<i64, _>("id").ok()) {
                    let _ = write!(
                        body,
                        "<p><a href=\"/console/orders?before={last}&amp;{}\">Older</a></p>",
                        f.query(status.as_deref())
                    );
                }
            }
            page("Buy orders", &op.csrf, &body)
        }
        Err(e) => failed(e),
    }
}

pub async fn ledger(
    State(state): State<AppState>,
    op: Operator,
    Query(q): Query<LedgerQuery>,
) -> Response {
    let player = num(&q.player);
    let (item, action) = (text(&q.item), text(&q.action));
    let (from, to) = (text(&q.from), text(&q.to));
    let day = |d: &Option<String>| d.as_deref().and_then(html::day_start);
    if (from.is_some() && day(&from).is_none()) || (to.is_some() && day(&to).is_none()) {
        return html::error_page(StatusCode::BAD_REQUEST, "Dates are YYYY-MM-DD (UTC).");
    }
    let span = (day(&from), day(&to).map(|t| t + 86_400));
    let rows = ledger_rows(
        &state,
        player,
        item.as_deref(),
        action.as_deref(),
        span,
        q.before.unwrap_or(i64::MAX),
        PAGE,
    )
    .await;
    match rows {
        Ok(rows) => {
            let mut body = format!(
                "<form method=get action=/console/ledger>player <input name=player size=6 value=\"{}\"> item <input name=item value=\"{}\"> \
                 action <input name=action value=\"{}\"> from <input name=from type=date value=\"{}\"> \
                 to <input name=to type=date value=\"{}\"> <button type=submit>Filter</button></form>{}",
                esc(q.player.as_deref().unwrap_or("")),
                esc(item.as_deref().unwrap_or("")),
                esc(action.as_deref().unwrap_or("")),
                esc(from.as_deref().unwrap_or("")),
                esc(to.as_deref().unwrap_or("")),
                ledger_table(&rows)
            );
            if rows.len() as i64 == PAGE {
                if let Some(last) = rows.last().and_then(|r| r.try_get::<i64, _>("id").ok()) {
                    let _ = write!(
                        body,
                        "<p><a href=\"/console/ledger?before={last}&amp;player={}&amp;item={}&amp;action={}&amp;from={}&amp;to={}\">Older</a></p>",
                        url(q.player.as_deref().unwrap_or("")),
                        url(item.as_deref().unwrap_or("")),
                        url(action.as_deref().unwrap_or("")),
                        url(from.as_deref().unwrap_or("")),
                        url(to.as_deref().unwrap_or(""))
                    );
                }
            }
            page("Ledger", &op.csrf, &body)
        }
        Err(e) => failed(e),
    }
}
