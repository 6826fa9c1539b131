//! The HTTP API's contract on both backends: every error code, bad input that
//! changes nothing, identity from the token only, idempotent replays,
//! paging, rate limiting, metrics and restarts.

use crate::support::{check_books, count, key, TestDb, TestServer};
use marketplace_server::Config;
use marketplace_server::TokenSigner;
use reqwest::{Method, StatusCode};
use serde_json::json;

backend_tests!(
    bad_input_is_refused_and_changes_nothing,
    identity_comes_from_the_token,
    purchase_refusals_carry_their_codes,
    seller_operations,
    key_reuse_with_another_body_is_refused,
    browsing_pages_and_filters,
    rate_limit_answers_429_with_retry_after,
    restart_keeps_state_and_tokens,
    ledger_records_every_change_and_is_append_only,
    metrics_and_health,
    shutdown_finishes_in_flight_requests,
    operations_are_listed_once_each_in_pages,
);

/// The market's state. (`idempotency_keys` is left out on purpose: a
/// definitive answer such as 404 is stored for its key like any other.)
fn snapshot_tables() -> [&'static str; 4] {
    ["players", "listings", "purchases", "ledger"]
}

async fn row_counts(db: &TestDb) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in snapshot_tables() {
        counts.push(count(db, table).await);
    }
    counts
}

async fn bad_input_is_refused_and_changes_nothing(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "ore", 10).await;
    let before = row_counts(&db).await;
    let tok = Some(seller.token.as_str());
    let long_id = "x".repeat(65);
    let cases: Vec<(Method, String, Option<String>, StatusCode, &str)> = vec![
        (
            Method::POST,
            "/v1/listings".into(),
            Some("{not json".into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":0,"price":5}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":-3,"price":5}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1,"price":0}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1,"price":-1}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1,"price":9223372036854775808}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1,"price":1e30}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        // Beyond the protocol's limits (quantity 10^6, price 10^12).
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":9223372036854775807,"price":1}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1000001,"price":1}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1,"price":1000000000001}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::PATCH,
            format!("/v1/listings/{listing}"),
            Some(r#"{"price":1000000000001}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1,"price":"5"}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"","quantity":1,"price":5}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(json!({"item_id": long_id, "quantity": 1, "price": 5}).to_string()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(r#"{"item_id":"ore","quantity":1,"price":5,"seller_id":2}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/v1/listings".into(),
            Some(json!({"item_id": "x".repeat(20_000), "quantity": 1, "price": 5}).to_string()),
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
        ),
        (
            Method::PATCH,
            format!("/v1/listings/{listing}"),
            Some(r#"{"price":0}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/v1/listings/abc".into(),
            Some(r#"{"price":3}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/v1/listings/-4".into(),
            Some(r#"{"price":3}"#.into()),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::PATCH,
            "/v1/listings/99999".into(),
            Some(r#"{"price":3}"#.into()),
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/v1/listings/99999".into(),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::POST,
            "/v1/sales/99999/claim".into(),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/listings/99999".into(),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::GET,
            "/v1/listings?limit=0".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/listings?limit=100000".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/listings?status=lost".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/listings?cursor=zz".into(),
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::GET,
            "/v1/nowhere".into(),
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, path, body, status, code) in cases {
        let r = t
            .send(method.clone(), &path, tok, Some(&key()), body.clone())
            .await;
        assert_eq!(r.status, status, "{method} {path} {body:?}: {}", r.text);
        assert_eq!(r.code(), code, "{method} {path}: {}", r.text);
        assert!(!r.body["error"]["message"].as_str().unwrap_or("").is_empty());
    }
    // A purchase with a bad body or no key is refused before anything runs.
    let path = format!("/v1/listings/{listing}/purchase");
    let bt = Some(buyer.token.as_str());
    for body in [
        r#"{"expected_price":0}"#,
        r#"{"expected_price":1000000000001}"#,
        r#"{"price":10}"#,
        "[]",
        "null",
        "",
    ] {
        let r = t
            .send(Method::POST, &path, bt, Some(&key()), Some(body.into()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}: {}", r.text);
    }
    let r = t
        .send(
            Method::POST,
            &path,
            bt,
            None,
            Some(r#"{"expected_price":10}"#.into()),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    let r = t
        .send(
            Method::POST,
            &path,
            bt,
            Some(&"k".repeat(65)),
            Some(r#"{"expected_price":10}"#.into()),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
    // Bad sessions.
    for body in [
        r#"{"device_id":"","name":"a"}"#,
        r#"{"device_id":"d","name":""}"#,
        r#"{"device_id":"d"}"#,
    ] {
        let r = t
            .send(Method::POST, "/v1/sessions", None, None, Some(body.into()))
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
    }
    assert_eq!(
        row_counts(&db).await,
        before,
        "bad input changed the database"
    );
    let r = t
        .send(
            Method::GET,
            &format!("/v1/listings/{listing}"),
            tok,
            None,
            None,
        )
        .await;
    assert_eq!(r.body["listing"]["status"], "active");
}

async fn identity_comes_from_the_token(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let listing = t.create_listing(&seller, "ore", 10).await;
    let path = format!("/v1/listings/{listing}/purchase");
    let body = Some(r#"{"expected_price":10}"#.to_string());
    let r = t
        .send(Method::POST, &path, None, Some(&key()), body.clone())
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let tampered = seller
        .token
        .replacen(&format!("v1.{}.", seller.id), "v1.999.", 1);
    let r = t
        .send(
            Method::POST,
            &path,
            Some(&tampered),
            Some(&key()),
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let signer = TokenSigner::new(Config::for_tests("").token_secret.as_deref().unwrap());
    let expired = signer.issue(seller.id + 1, marketplace_server::now_secs() - 1);
    let r = t
        .send(
            Method::POST,
            &path,
            Some(&expired),
            Some(&key()),
            body.clone(),
        )
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = t
        .send(Method::GET, "/v1/listings", Some("garbage"), None, None)
        .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    // Logging in again with the same device is the same player.
    let again = t.login("seller").await;
    assert_eq!(again.id, seller.id);
    assert_eq!(check_books(&db).await.purchases, 0);
}

async fn purchase_refusals_carry_their_codes(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "ore", 100).await;
    let r = t.purchase(&seller, listing, 100, &key()).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "own_listing"));
    let r = t.purchase(&buyer, listing, 90, &key()).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "price_changed")
    );
    assert_eq!(r.body["error"]["current_price"], 100);
    assert_eq!(r.body["error"]["message"], "Price changed to 100");
    let r = t.purchase(&buyer, 424242, 100, &key()).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found"));
    let r = t.purchase(&buyer, listing, 100, &key()).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["purchase"]["buyer_id"], buyer.id);
    assert_eq!(r.body["purchase"]["seller_id"], seller.id);
    let other = t.login("other").await;
    let r = t.purchase(&other, listing, 100, &key()).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "already_sold"));
    let cancelled = t.create_listing(&seller, "ore", 5).await;
    let r = t
        .send(
            Method::DELETE,
            &format!("/v1/listings/{cancelled}"),
            Some(&seller.token),
            Some(&key()),
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t.purchase(&buyer, cancelled, 5, &key()).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "listing_cancelled")
    );
    let books = check_books(&db).await;
    assert_eq!((books.purchases, books.unclaimed_total), (1, 100));
}

async fn seller_operations(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "ore", 100).await;
    let r = t.reprice(&buyer, listing, 1).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let r = t.cancel(&buyer, listing).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let r = t.reprice(&seller, listing, 120).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["listing"]["price"], 120);
    // The buyer saw the old price: refused with the new one.
    let r = t.purchase(&buyer, listing, 100, &key()).await;
    assert_eq!(
        (r.code(), r.body["error"]["current_price"].as_i64()),
        ("price_changed", Some(120))
    );
    let r = t.purchase(&buyer, listing, 120, &key()).await;
    assert_eq!(r.status, StatusCode::OK);
    let sale = r.body["purchase"]["id"].as_i64().unwrap();
    let r = t.reprice(&seller, listing, 1).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "already_sold"));
    let r = t.cancel(&seller, listing).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "already_sold"));
    // Sales: the buyer cannot claim, the seller claims once.
    let r = t.get(&seller, "/v1/me/sales?claimed=false").await;
    assert_eq!(r.body["sales"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["sales"][0]["price"], 120);
    let r = t.claim(&buyer, sale, &key()).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "forbidden"));
    let claim_key = key();
    let r = t.claim(&seller, sale, &claim_key).await;
    assert_eq!(
        (r.status, r.body["amount"].as_i64()),
        (StatusCode::OK, Some(120))
    );
    let again = t.claim(&seller, sale, &claim_key).await;
    assert_eq!(
        again.text, r.text,
        "a replayed claim returns the first answer"
    );
    let r = t.claim(&seller, sale, &key()).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "already_claimed")
    );
    let r = t.get(&seller, "/v1/me/sales?claimed=false").await;
    assert!(r.body["sales"].as_array().unwrap().is_empty());
    // Cancelling twice: the second is refused.
    let other = t.create_listing(&seller, "gem", 3).await;
    assert_eq!(t.cancel(&seller, other).await.status, StatusCode::OK);
    let r = t.cancel(&seller, other).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "listing_cancelled")
    );
    let books = check_books(&db).await;
    assert_eq!((books.claimed_total, books.unclaimed_total), (120, 0));
}

async fn key_reuse_with_another_body_is_refused(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let a = t.create_listing(&seller, "ore", 10).await;
    let b = t.create_listing(&seller, "ore", 20).await;
    let k = key();
    let first = t.purchase(&buyer, a, 9, &k).await;
    assert_eq!(first.code(), "price_changed");
    let replay = t.purchase(&buyer, a, 9, &k).await;
    assert_eq!(replay.text, first.text, "a refusal is replayed too");
    let r = t.purchase(&buyer, a, 10, &k).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "idempotency_key_reused")
    );
    let r = t.purchase(&buyer, b, 9, &k).await;
    assert_eq!(r.code(), "idempotency_key_reused");
    // Keys are per player: another player may use the same string.
    let other = t.login("other").await;
    let r = t.purchase(&other, a, 10, &k).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(check_books(&db).await.purchases, 1);
}

async fn browsing_pages_and_filters(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let mut ids = Vec::new();
    for i in 0..7 {
        ids.push(
            t.create_listing(&seller, if i % 2 == 0 { "ore" } else { "gem" }, 10 + i)
                .await,
        );
    }
    assert_eq!(
        t.purchase(&buyer, ids[0], 10, &key()).await.status,
        StatusCode::OK
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/listings?limit=2&cursor={c}"),
            None => "/v1/listings?limit=2".into(),
        };
        let r = t
            .send(Method::GET, &path, Some(&buyer.token), None, None)
            .await;
        assert_eq!(r.status, StatusCode::OK);
        for l in r.body["listings"].as_array().unwrap() {
            assert_eq!(l["status"], "active");
            seen.push(l["id"].as_i64().unwrap());
        }
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ids[1..].to_vec(),
        "every active listing once, in order"
    );
    let r = t
        .send(
            Method::GET,
            "/v1/listings?item_id=gem",
            Some(&buyer.token),
            None,
            None,
        )
        .await;
    assert_eq!(r.body["listings"].as_array().unwrap().len(), 3);
    let r = t
        .send(
            Method::GET,
            "/v1/listings?status=sold",
            Some(&buyer.token),
            None,
            None,
        )
        .await;
    assert_eq!(r.body["listings"][0]["id"], ids[0]);
    let r = t
        .send(
            Method::GET,
            &format!("/v1/listings?status=all&seller_id={}", seller.id),
            Some(&buyer.token),
            None,
            None,
        )
        .await;
    assert_eq!(r.body["listings"].as_array().unwrap().len(), 7);
}

async fn rate_limit_answers_429_with_retry_after(db: TestDb) {
    let mut config = Config::for_tests(&db.url);
    config.rate_limit_per_sec = 0.5;
    config.rate_limit_burst = 3;
    let t = TestServer::start_with(config).await;
    let p = t.login("p").await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let r = t
            .send(Method::GET, "/v1/listings", Some(&p.token), None, None)
            .await;
        statuses.push(r.status);
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.code(), "rate_limited");
            let wait: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=2).contains(&wait), "Retry-After {wait}");
        }
    }
    assert_eq!(statuses[..3], [StatusCode::OK; 3]);
    assert_eq!(statuses[3], StatusCode::TOO_MANY_REQUESTS);
    // Another player is not affected.
    let q = t.login("q").await;
    let r = t
        .send(Method::GET, "/v1/listings", Some(&q.token), None, None)
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn restart_keeps_state_and_tokens(db: TestDb) {
    // No secret configured: it is generated once and stored in the database.
    let mut config = Config::for_tests(&db.url);
    config.token_secret = None;
    let t = TestServer::start_with(config.clone()).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "ore", 10).await;
    let k = key();
    let first = t.purchase(&buyer, listing, 10, &k).await;
    assert_eq!(first.status, StatusCode::OK);
    t.server.shutdown().await;
    let t = TestServer::start_with(config).await;
    let replay = t.purchase(&buyer, listing, 10, &k).await;
    assert_eq!(
        replay.text, first.text,
        "the stored answer survives a restart"
    );
    let r = t
        .send(
            Method::GET,
            &format!("/v1/listings/{listing}"),
            Some(&seller.token),
            None,
            None,
        )
        .await;
    assert_eq!(r.body["listing"]["status"], "sold");
    assert_eq!(check_books(&db).await.purchases, 1);
}

async fn ledger_records_every_change_and_is_append_only(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "ore", 10).await;
    let r = t
        .http
        .post(format!("{}/v1/listings/{listing}/purchase", t.base))
        .bearer_auth(&buyer.token)
        .header("idempotency-key", "ledger-key")
        .header("x-request-id", "req-ledger-1")
        .json(&json!({"expected_price": 10, "deposit": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "req-ledger-1");
    let pool = db.pool().await;
    let (player, action, amount, idem, req): (i64, String, i64, String, String) = sqlx::query_as(
        "SELECT player_id, action, quantity, idempotency_key, request_id FROM ledger WHERE action = 'purchase_pay'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (player, action.as_str(), amount),
        (buyer.id, "purchase_pay", 10)
    );
    assert_eq!(
        (idem.as_str(), req.as_str()),
        ("ledger-key", "req-ledger-1")
    );
    let actions: Vec<(String,)> = sqlx::query_as("SELECT action FROM ledger ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let actions: Vec<_> = actions.into_iter().map(|(a,)| a).collect();
    // The listing deposits its item from the seller's save and escrows it;
    // the purchase deposits the price, pays it into proceeds, moves the
    // item to the buyer and delivers it to the buyer's save.
    assert_eq!(
        actions,
        [
            "session",
            "session",
            "deposit",
            "list",
            "deposit",
            "purchase_pay",
            "purchase_items",
            "withdraw"
        ]
    );
    assert!(sqlx::query("UPDATE ledger SET amount = 0")
        .execute(&pool)
        .await
        .is_err());
    assert!(sqlx::query("DELETE FROM ledger")
        .execute(&pool)
        .await
        .is_err());
    assert_eq!(count(&db, "ledger").await, 8);
}

async fn metrics_and_health(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "ore", 10).await;
    t.purchase(&buyer, listing, 10, &key()).await;
    t.purchase(&buyer, listing, 10, &key()).await;
    let r = t.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = t.send(Method::GET, "/metrics", None, None, None).await;
    assert!(
        r.text
            .contains(r#"market_purchases_total{outcome="success"} 1"#),
        "{}",
        r.text
    );
    assert!(r
        .text
        .contains(r#"market_purchases_total{outcome="already_sold"} 1"#));
    assert!(r
        .text
        .contains(r#"route="/v1/listings/{id}/purchase",status="409"} 1"#));
    assert!(r
        .text
        .contains("market_http_request_duration_seconds_bucket"));
}

/// A purchase that is still waiting on the database when shutdown begins is
/// finished and answered before the server stops.
async fn shutdown_finishes_in_flight_requests(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "ore", 10).await;
    // Hold the listing's row (PostgreSQL) or the write lock (SQLite).
    let pool = db.pool().await;
    let mut blocker = if db.is_postgres() {
        let mut tx = pool.begin().await.unwrap();
        sqlx::query("SELECT id FROM listings WHERE id = $1 FOR UPDATE")
            .bind(listing)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx
    } else {
        pool.begin_with("BEGIN IMMEDIATE").await.unwrap()
    };
    let TestServer { server, http, base } = t;
    let token = buyer.token.clone();
    let purchase = tokio::spawn(async move {
        http.post(format!("{base}/v1/listings/{listing}/purchase"))
            .bearer_auth(token)
            .header("idempotency-key", "in-flight")
            .json(&json!({"expected_price": 10, "deposit": 10}))
            .send()
            .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let stopping = tokio::spawn(server.shutdown());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "shutdown waits for the in-flight purchase"
    );
    sqlx::query("SELECT 1")
        .execute(&mut *blocker)
        .await
        .unwrap();
    blocker.commit().await.unwrap();
    let answer = purchase
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(answer.status(), StatusCode::OK);
    stopping.await.unwrap();
    pool.close().await;
    assert_eq!(check_books(&db).await.purchases, 1);
}

/// `GET /v1/me/operations` pages through a player's keyed operations: each
/// once, in order, whole (a purchase's several ledger rows are one
/// operation, never split by a page or counted against the next page),
/// with what each moved in or out of the game's save; and only the
/// player's own.
async fn operations_are_listed_once_each_in_pages(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("ops-seller").await;
    let buyer = t.login("ops-buyer").await;
    let mut bought = Vec::new();
    for i in 0..3 {
        let listing = t.create_listing(&seller, "relic", 10 + i).await;
        let k = format!("buy-{i}");
        let body = json!({"expected_price": 10 + i, "deposit": 10 + i}).to_string();
        let r = t
            .send(
                Method::POST,
                &format!("/v1/listings/{listing}/purchase"),
                Some(&buyer.token),
                Some(&k),
                Some(body),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        bought.push(k);
        for j in 0..70 {
            let r = t
                .send(
                    Method::POST,
                    "/v1/me/deposits",
                    Some(&buyer.token),
                    Some(&format!("dep-{i}-{j}")),
                    Some(json!({"quantity": 1}).to_string()),
                )
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        }
    }
    let mut after = 0;
    let mut seen: Vec<(i64, String, String, i64, serde_json::Value)> = Vec::new();
    loop {
        let r = t
            .get(&buyer, &format!("/v1/me/operations?after={after}&limit=50"))
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let ops = r.body["operations"].as_array().unwrap().clone();
        assert!(ops.len() <= 50);
        for op in &ops {
            seen.push((
                op["seq"].as_i64().unwrap(),
                op["key"].as_str().unwrap().to_string(),
                op["kind"].as_str().unwrap().to_string(),
                op["credits"].as_i64().unwrap(),
                op["items"].clone(),
            ));
            assert!(op["seq"].as_i64().unwrap() <= r.body["last_seq"].as_i64().unwrap());
        }
        if ops.len() < 50 {
            break;
        }
        after = seen.last().unwrap().0;
    }
    assert_eq!(seen.len(), 3 + 3 * 70, "every operation once");
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "in order");
    let keys: std::collections::HashSet<_> = seen.iter().map(|s| s.1.clone()).collect();
    assert_eq!(keys.len(), seen.len(), "no operation twice");
    for (i, k) in bought.iter().enumerate() {
        let op = seen
            .iter()
            .find(|s| &s.1 == k)
            .expect("the purchase is listed");
        assert_eq!(op.2, "purchase");
        // The first was paid by a deposit from the save; the others from
        // the balance the deposits built (nothing left the save for them).
        let deposited = if i == 0 { 10 } else { 0 };
        assert_eq!(op.3, -deposited, "its deposit left the save");
        assert_eq!(op.4, json!({"relic": 1}), "its item came into the save");
    }
    let dep = seen.iter().find(|s| s.1 == "dep-0-0").unwrap();
    assert_eq!((dep.2.as_str(), dep.3), ("deposit", -1));
    // The seller's list has only the seller's listings, nothing of the buyer's.
    let r = t.get(&seller, "/v1/me/operations?after=0&limit=200").await;
    let theirs = r.body["operations"].as_array().unwrap();
    assert_eq!(theirs.len(), 3);
    assert!(theirs.iter().all(|o| o["kind"] == "create_listing"));
    check_books(&db).await;
}
