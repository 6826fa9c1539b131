//! Upgrading a database an older server left: keys are found again in the
//! ledger (a key the old server ran twice keeps only its first row), device
//! ids are hashed, listings beyond today's limits are withdrawn, open escrow
//! and proceeds enter the books — and the upgraded server answers old keys
//! with their first outcome.

use crate::support::{check_books, TestDb, TestServer};
use marketplace_server::{Config, Db};
use reqwest::StatusCode;
use serde_json::json;

backend_tests!(
    an_old_database_is_upgraded_in_place,
    an_edited_applied_migration_stops_the_server,
    hour_buckets_carry_over_and_a_copied_database_gets_its_own_identity,
    lots_priced_per_lot_become_unit_prices_or_go_back_to_their_seller,
);

async fn exec(db: &TestDb, sql: &str) {
    let pool = db.pool().await;
    sqlx::query(sql)
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    pool.close().await;
}

async fn one(db: &TestDb, sql: &str) -> Option<String> {
    let pool = db.pool().await;
    let row: Option<(Option<String>,)> = sqlx::query_as(sql).fetch_optional(&pool).await.unwrap();
    pool.close().await;
    row.and_then(|(v,)| v)
}

async fn an_old_database_is_upgraded_in_place(db: TestDb) {
    // The schema of the first release, with what it accumulated.
    let config = Config::for_tests(&db.url);
    Db::connect_up_to(&config, 1)
        .await
        .expect("version 1")
        .close()
        .await;
    for sql in [
        "INSERT INTO players (id, device_id, name, created_at) VALUES (1, 'dev-old-seller', 's', 0)",
        "INSERT INTO players (id, device_id, name, created_at) VALUES (2, 'dev-old-buyer', 'b', 0)",
        // Sold, answer lost, stored answer pruned since.
        "INSERT INTO listings (id, seller_id, item_id, quantity, price, status, created_at, updated_at) VALUES (1, 1, 'ore', 1, 100, 'sold', 0, 0)",
        "INSERT INTO ledger (at, player_id, action, listing_id, amount, idempotency_key, request_id) VALUES (0, 1, 'list', 1, 100, 'k-list-1', 'r')",
        "INSERT INTO purchases (id, listing_id, buyer_id, seller_id, item_id, quantity, price, created_at) VALUES (1, 1, 2, 1, 'ore', 1, 100, 0)",
        "INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, amount, idempotency_key, request_id) VALUES (0, 2, 'purchase', 1, 1, 100, 'k-buy-1', 'r')",
        // The old server ran one key twice after pruning: two listings.
        "INSERT INTO listings (id, seller_id, item_id, quantity, price, status, created_at, updated_at) VALUES (2, 1, 'gem', 2, 50, 'active', 0, 0)",
        "INSERT INTO ledger (at, player_id, action, listing_id, amount, idempotency_key, request_id) VALUES (0, 1, 'list', 2, 50, 'k-dup', 'r')",
        "INSERT INTO listings (id, seller_id, item_id, quantity, price, status, created_at, updated_at) VALUES (3, 1, 'gem', 2, 50, 'active', 1, 1)",
        "INSERT INTO ledger (at, player_id, action, listing_id, amount, idempotency_key, request_id) VALUES (1, 1, 'list', 3, 50, 'k-dup', 'r')",
        // A modified client's listing from before the limits.
        "INSERT INTO listings (id, seller_id, item_id, quantity, price, status, created_at, updated_at) VALUES (4, 1, 'ore', 9223372036854775807, 1, 'active', 0, 0)",
    ] {
        exec(&db, sql).await;
    }
    if db.is_postgres() {
        for table in ["players", "listings", "purchases"] {
            exec(
                &db,
                &format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), 10)"),
            )
            .await;
        }
    }

    // The new server starts on it.
    let t = TestServer::start(&db).await;
    assert_eq!(
        one(&db, "SELECT create_key FROM listings WHERE id = 2")
            .await
            .as_deref(),
        Some("k-dup"),
        "the first listing keeps the key"
    );
    assert_eq!(
        one(&db, "SELECT create_key FROM listings WHERE id = 3").await,
        None
    );
    assert_eq!(
        one(&db, "SELECT status FROM listings WHERE id = 4")
            .await
            .as_deref(),
        Some("cancelled"),
        "beyond the limits: withdrawn"
    );
    assert!(one(&db, "SELECT device_id FROM players WHERE id = 1")
        .await
        .unwrap()
        .starts_with("sha256:"));

    // Old players log in as themselves; old keys get their first outcome.
    let buyer = t.login("dev-old-buyer").await;
    assert_eq!(buyer.id, 2);
    let r = t
        .send(
            reqwest::Method::POST,
            "/v1/listings/1/purchase",
            Some(&buyer.token),
            Some("k-buy-1"),
            Some(json!({ "expected_price": 100 }).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["purchase"]["id"], 1);
    assert!(
        r.body.get("transfer").is_none(),
        "from before the books: everything moved"
    );
    let seller = t.login("dev-old-seller").await;
    assert_eq!(seller.id, 1);
    let r = t
        .send(
            reqwest::Method::POST,
            "/v1/listings",
            Some(&seller.token),
            Some("k-dup"),
            Some(json!({"item_id": "gem", "quantity": 2, "price": 50}).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.body["listing"]["id"].as_i64()),
        (StatusCode::CREATED, Some(2))
    );
    // The escrow and proceeds open the books; the seller claims the old sale.
    let r = t.claim(&seller, 1, "k-claim-after-upgrade").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    check_books(&db).await;
}

/// Migrations are checksummed: a database whose applied migration differs
/// from the file (someone edited an applied migration) is refused at start
/// with a message naming it, and nothing is changed.
async fn an_edited_applied_migration_stops_the_server(db: TestDb) {
    let config = Config::for_tests(&db.url);
    Db::connect(&config).await.expect("fresh").close().await;
    assert!(
        one(
            &db,
            "SELECT checksum FROM schema_migrations WHERE version = 4"
        )
        .await
        .is_some_and(|c| c.len() == 64),
        "every applied migration has its checksum"
    );
    // Applied before checksums existed: recorded at the next start.
    exec(
        &db,
        "UPDATE schema_migrations SET checksum = NULL WHERE version = 2",
    )
    .await;
    Db::connect(&config).await.expect("starts").close().await;
    assert!(one(
        &db,
        "SELECT checksum FROM schema_migrations WHERE version = 2"
    )
    .await
    .is_some());
    // As if migration 4's file had been edited after it was applied.
    exec(
        &db,
        "UPDATE schema_migrations SET checksum = 'edited' WHERE version = 4",
    )
    .await;
    let err = match Db::connect(&config).await {
        Ok(_) => panic!("a changed migration must stop the server"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("migration 4 (books)"), "{err}");
    assert!(err.contains("edited"), "{err}");
}

/// Migration 5 carries the old hour buckets of the deposit cap over (each
/// counting from its hour's last minute: never shorter); and
/// `new-server-id` gives a copied database an identity of its own, which
/// the next start announces.
async fn hour_buckets_carry_over_and_a_copied_database_gets_its_own_identity(db: TestDb) {
    let config = Config::for_tests(&db.url);
    Db::connect_up_to(&config, 4)
        .await
        .expect("version 4")
        .close()
        .await;
    exec(
        &db,
        "INSERT INTO deposit_window (player_id, item_id, hour, amount) VALUES (7, '', 480000, 500)",
    )
    .await;
    Db::connect(&config).await.expect("upgraded").close().await;
    assert_eq!(
        one(
            &db,
            "SELECT CAST(amount AS TEXT) FROM deposit_log WHERE player_id = 7 AND at = 1728003540"
        )
        .await
        .as_deref(),
        Some("500")
    );
    // The identity a login announces.
    async fn announced(db: &TestDb) -> String {
        let t = TestServer::start(db).await;
        let r = t
            .send(
                reqwest::Method::POST,
                "/v1/sessions",
                None,
                None,
                Some(json!({"device_id": "who-am-i", "name": "w"}).to_string()),
            )
            .await;
        r.body["server_id"].as_str().unwrap().to_string()
    }
    let id = announced(&db).await;
    assert!(id.starts_with("mkt_"));
    let (old, new) = marketplace_server::new_server_id(&db.url)
        .await
        .expect("rotated");
    assert_eq!(old, id);
    assert_ne!(new, id);
    assert_eq!(announced(&db).await, new);
}

/// Migration 7: prices become per unit. An active lot whose price divides
/// into whole credits per unit keeps selling at that unit price; one that
/// does not is withdrawn and its escrow waits for the seller as a delivery.
/// A purchase journaled by an old client (expected price: the lot's) is
/// still recognised by its key; the books balance.
async fn lots_priced_per_lot_become_unit_prices_or_go_back_to_their_seller(db: TestDb) {
    let config = Config::for_tests(&db.url);
    Db::connect_up_to(&config, 6)
        .await
        .expect("version 6")
        .close()
        .await;
    for sql in [
        "INSERT INTO players (id, device_id, name, created_at) VALUES (11, 'h-seller', 's', 0)",
        "INSERT INTO players (id, device_id, name, created_at) VALUES (12, 'h-buyer', 'b', 0)",
        // 4 units for 100: 25 each.
        "INSERT INTO listings (id, seller_id, item_id, quantity, price, status, created_at, updated_at, create_key, listed_price, deposited) VALUES (21, 11, 'ore', 4, 100, 'active', 0, 0, 'k-l21', 100, 4)",
        "INSERT INTO ledger (at, player_id, action, listing_id, idempotency_key, request_id, item_id, quantity) VALUES (0, 11, 'deposit', 21, 'k-l21', 'r', 'ore', 4)",
        "INSERT INTO ledger (at, player_id, action, listing_id, idempotency_key, request_id, item_id, quantity) VALUES (0, 11, 'list', 21, 'k-l21', 'r', 'ore', 4)",
        // 3 units for 100: no whole unit price.
        "INSERT INTO listings (id, seller_id, item_id, quantity, price, status, created_at, updated_at, create_key, listed_price, deposited) VALUES (22, 11, 'gem', 3, 100, 'active', 0, 0, 'k-l22', 100, 3)",
        "INSERT INTO ledger (at, player_id, action, listing_id, idempotency_key, request_id, item_id, quantity) VALUES (0, 11, 'deposit', 22, 'k-l22', 'r', 'gem', 3)",
        "INSERT INTO ledger (at, player_id, action, listing_id, idempotency_key, request_id, item_id, quantity) VALUES (0, 11, 'list', 22, 'k-l22', 'r', 'gem', 3)",
        // A lot of 2 bought for 60 by an old client: expected price 60.
        "INSERT INTO listings (id, seller_id, item_id, quantity, price, status, created_at, updated_at) VALUES (23, 11, 'ore', 2, 60, 'sold', 0, 0)",
        "INSERT INTO purchases (id, listing_id, buyer_id, seller_id, item_id, quantity, price, created_at, buy_key, deposited, delivered) VALUES (31, 23, 12, 11, 'ore', 2, 60, 0, 'k-old-buy', 60, 2)",
        "INSERT INTO operation_keys (player_id, idem_key, kind) VALUES (12, 'k-old-buy', 'purchase')",
        "INSERT INTO ledger (at, player_id, action, listing_id, idempotency_key, request_id, item_id, quantity) VALUES (0, 11, 'deposit', 23, 'k-l23', 'r', 'ore', 2)",
        "INSERT INTO ledger (at, player_id, action, listing_id, idempotency_key, request_id, item_id, quantity) VALUES (0, 11, 'list', 23, 'k-l23', 'r', 'ore', 2)",
        "INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, idempotency_key, request_id, quantity) VALUES (0, 12, 'deposit', 23, 31, 'k-old-buy', 'r', 60)",
        "INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, idempotency_key, request_id, quantity) VALUES (0, 12, 'purchase_pay', 23, 31, 'k-old-buy', 'r', 60)",
        "INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, idempotency_key, request_id, item_id, quantity) VALUES (0, 12, 'purchase_items', 23, 31, 'k-old-buy', 'r', 'ore', 2)",
        "INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, idempotency_key, request_id, item_id, quantity) VALUES (0, 12, 'withdraw', 23, 31, 'k-old-buy', 'r', 'ore', 2)",
    ] {
        exec(&db, sql).await;
    }
    if db.is_postgres() {
        for table in ["players", "listings", "purchases"] {
            exec(
                &db,
                &format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)"),
            )
            .await;
        }
    }
    let t = TestServer::start_with(config).await;
    let buyer = t.login("h-buyer").await;
    let seller = t.login("h-seller").await;
    assert_eq!((buyer.id, seller.id), (12, 11));
    let l21 = t.get(&buyer, "/v1/listings/21").await;
    assert_eq!(
        (
            l21.body["listing"]["price"].as_i64(),
            l21.body["listing"]["quantity_remaining"].as_i64()
        ),
        (Some(25), Some(4))
    );
    let l22 = t.get(&buyer, "/v1/listings/22").await;
    assert_eq!(l22.body["listing"]["status"], "cancelled");
    let waiting = t.get(&seller, "/v1/me/deliveries?collected=false").await;
    assert_eq!(waiting.body["deliveries"][0]["kind"], "listing_returned");
    assert_eq!(waiting.body["deliveries"][0]["quantity"], 3);
    // The old client's journaled purchase replays as itself.
    let r = t.purchase(&buyer, 23, 60, "k-old-buy").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["purchase"]["id"], 31);
    // The migrated lot sells by the unit.
    let r = t
        .send(
            reqwest::Method::POST,
            "/v1/listings/21/purchase",
            Some(&buyer.token),
            Some(&crate::support::key()),
            Some(json!({"expected_price": 25, "quantity": 1, "deposit": 25}).to_string()),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    check_books(&db).await;
}
