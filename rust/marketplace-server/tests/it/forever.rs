//! Exactly once has no expiry: a replay after the stored answers were pruned
//! (8 days later, retention 7) is recognised from the key kept in the domain
//! rows and gets the first outcome — for every kind of change, on both
//! backends.

use crate::support::{check_books, count, key, Player, TestDb, TestServer};
use marketplace_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::json;

backend_tests!(
    replays_after_the_retention_get_the_first_outcome,
    a_key_reused_for_another_change_is_refused_after_pruning,
);

const EIGHT_DAYS: i64 = 8 * 24 * 3600;

async fn start(db: &TestDb) -> TestServer {
    let mut config = Config::for_tests(&db.url);
    config.idempotency_retention_hours = 7 * 24;
    TestServer::start_with(config).await
}

async fn send(
    t: &TestServer,
    who: &Player,
    method: Method,
    path: &str,
    key: &str,
    body: Option<serde_json::Value>,
) -> crate::support::Reply {
    t.send(
        method,
        path,
        Some(&who.token),
        Some(key),
        body.map(|b| b.to_string()),
    )
    .await
}

async fn replays_after_the_retention_get_the_first_outcome(db: TestDb) {
    let t = start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;

    // The first time: one of each change, each with its own key.
    let (k_list, k_reprice, k_reprice2, k_buy, k_claim, k_cancel) =
        (key(), key(), key(), key(), key(), key());
    let listed = send(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        &k_list,
        Some(json!({"item_id": "ore", "quantity": 2, "price": 100, "deposit": 2})),
    )
    .await;
    assert_eq!(listed.status, StatusCode::CREATED, "{}", listed.text);
    let listing = listed.body["listing"]["id"].as_i64().unwrap();
    let repriced = send(
        &t,
        &seller,
        Method::PATCH,
        &format!("/v1/listings/{listing}"),
        &k_reprice,
        Some(json!({"price": 120})),
    )
    .await;
    assert_eq!(repriced.status, StatusCode::OK);
    let later = send(
        &t,
        &seller,
        Method::PATCH,
        &format!("/v1/listings/{listing}"),
        &k_reprice2,
        Some(json!({"price": 150})),
    )
    .await;
    assert_eq!(later.status, StatusCode::OK);
    let bought = t.purchase(&buyer, listing, 300, &k_buy).await;
    assert_eq!(bought.status, StatusCode::OK, "{}", bought.text);
    let sale = bought.body["purchase"]["id"].as_i64().unwrap();
    let claimed = t.claim(&seller, sale, &k_claim).await;
    assert_eq!(claimed.status, StatusCode::OK);
    let other = t.create_listing(&seller, "gem", 40).await;
    let cancelled = send(
        &t,
        &seller,
        Method::DELETE,
        &format!("/v1/listings/{other}"),
        &k_cancel,
        None,
    )
    .await;
    assert_eq!(cancelled.status, StatusCode::OK);

    // Within the retention: byte for byte.
    let again = t.purchase(&buyer, listing, 300, &k_buy).await;
    assert_eq!(again.text, bought.text);

    let before = (
        count(&db, "listings").await,
        count(&db, "purchases").await,
        count(&db, "ledger").await,
    );

    // Eight days pass; the hourly pruner deletes every stored answer.
    t.server.clock().advance(EIGHT_DAYS);
    let pruned = t.server.prune_now().await.expect("prune");
    assert!(pruned >= 7, "pruned {pruned}");
    assert_eq!(count(&db, "idempotency_keys").await, 0);
    // Tokens expired meanwhile: log in again as the same players.
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;

    // Every replay: the same status and the same object, no new effect.
    let r = send(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        &k_list,
        Some(json!({"item_id": "ore", "quantity": 2, "price": 100, "deposit": 2})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["listing"]["id"].as_i64(), Some(listing));
    assert_eq!(
        r.body["listing"]["price"], 100,
        "as the listing was created"
    );
    assert_eq!(r.body["listing"]["quantity"], 2);
    assert_eq!(r.body["listing"]["status"], "active");

    let r = send(
        &t,
        &seller,
        Method::PATCH,
        &format!("/v1/listings/{listing}"),
        &k_reprice,
        Some(json!({"price": 120})),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (
            r.body["listing"]["id"].as_i64(),
            r.body["listing"]["price"].as_i64()
        ),
        (Some(listing), Some(120))
    );

    let r = t.purchase(&buyer, listing, 300, &k_buy).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "not already_sold: it was sold to this very key ({})",
        r.text
    );
    assert_eq!(
        r.body["purchase"], bought.body["purchase"],
        "the same purchase"
    );

    let r = t.claim(&seller, sale, &k_claim).await;
    assert_eq!(r.status, StatusCode::OK, "not already_claimed ({})", r.text);
    assert_eq!(r.body, claimed.body);

    let r = send(
        &t,
        &seller,
        Method::DELETE,
        &format!("/v1/listings/{other}"),
        &k_cancel,
        None,
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "not listing_cancelled ({})",
        r.text
    );
    assert_eq!(
        r.body, cancelled.body,
        "a cancelled listing never changes again"
    );

    // Nothing happened twice.
    let after = (
        count(&db, "listings").await,
        count(&db, "purchases").await,
        count(&db, "ledger").await - 2, // the two new logins
    );
    assert_eq!(after, before);
    let price: (i64,) = sqlx::query_as("SELECT price FROM listings WHERE id = $1")
        .bind(listing)
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(price.0, 150, "the old reprice was not applied again");
    // The rebuilt answers are stored again: the next replay is byte-identical.
    let r2 = t.purchase(&buyer, listing, 300, &k_buy).await;
    let r3 = t.purchase(&buyer, listing, 300, &k_buy).await;
    assert_eq!(r3.text, r2.text);
    let books = check_books(&db).await;
    assert_eq!(
        (books.purchases, books.claimed_total),
        (1, 300),
        "two units at 150"
    );
}

async fn a_key_reused_for_another_change_is_refused_after_pruning(db: TestDb) {
    let t = start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let a = t.create_listing(&seller, "ore", 10).await;
    let b = t.create_listing(&seller, "ore", 20).await;
    let k = key();
    assert_eq!(t.purchase(&buyer, a, 10, &k).await.status, StatusCode::OK);
    let kl = key();
    let r = send(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        &kl,
        Some(json!({"item_id": "gem", "quantity": 1, "price": 5, "deposit": 1})),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    t.server.clock().advance(EIGHT_DAYS);
    t.server.prune_now().await.expect("prune");
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let r = t.purchase(&buyer, b, 20, &k).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "idempotency_key_reused"),
        "{}",
        r.text
    );
    // The purchase's key for another kind of change: refused too.
    let r = send(
        &t,
        &buyer,
        Method::POST,
        "/v1/listings",
        &k,
        Some(json!({"item_id": "gem", "quantity": 1, "price": 5, "deposit": 1})),
    )
    .await;
    assert_eq!(r.code(), "idempotency_key_reused", "{}", r.text);
    let r = send(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        &kl,
        Some(json!({"item_id": "gem", "quantity": 1, "price": 6, "deposit": 1})),
    )
    .await;
    assert_eq!(r.code(), "idempotency_key_reused");
    // A refused request changed nothing, so after pruning its key simply runs
    // again: still consistent (b is still for sale).
    let kr = key();
    assert_eq!(t.purchase(&buyer, b, 19, &kr).await.code(), "price_changed");
    t.server.clock().advance(EIGHT_DAYS);
    t.server.prune_now().await.expect("prune");
    let buyer = t.login("buyer").await;
    assert_eq!(t.purchase(&buyer, b, 19, &kr).await.code(), "price_changed");
    let books = check_books(&db).await;
    assert_eq!(books.purchases, 1);
    assert_eq!(count(&db, "listings").await, 3);
}
