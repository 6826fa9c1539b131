//! Market data per item over raw HTTP: the summary (best ask and bid, last
//! price, 24 h volume), the book's depth by price level, and candles that
//! equal what the fills say (recomputed here from the rows). Both
//! databases.

use crate::support::{check_books, key, Player, TestDb, TestServer};
use marketplace_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

backend_tests!(
    the_summary_and_depth_show_the_book,
    candles_are_what_the_fills_say,
    answers_are_kept_for_a_moment,
    listings_sort_filter_and_page,
    items_are_found_by_id_and_catalog_name,
);

async fn post(t: &TestServer, who: &Player, path: &str, body: Value) -> Value {
    let r = t
        .send(
            Method::POST,
            path,
            Some(&who.token),
            Some(&key()),
            Some(body.to_string()),
        )
        .await;
    assert!(r.status.is_success(), "{path}: {}", r.text);
    r.body
}

async fn the_summary_and_depth_show_the_book(db: TestDb) {
    let t = TestServer::start(&db).await;
    let a = t.login("md-seller-a").await;
    let b = t.login("md-seller-b").await;
    let buyer = t.login("md-buyer").await;
    let empty = t.get(&buyer, "/v1/market/ore/summary").await;
    assert_eq!(empty.status, StatusCode::OK, "{}", empty.text);
    assert!(empty.body["best_ask"].is_null() && empty.body["last_price"].is_null());
    for (who, q, p) in [(&a, 2, 12), (&b, 3, 12), (&a, 1, 15)] {
        post(
            &t,
            who,
            "/v1/listings",
            json!({"item_id": "ore", "quantity": q, "price": p, "deposit": q}),
        )
        .await;
    }
    for (q, p) in [(2, 8), (1, 9), (4, 9)] {
        post(
            &t,
            &buyer,
            "/v1/orders",
            json!({"item_id": "ore", "quantity": q, "max_price": p, "deposit": q * p}),
        )
        .await;
    }
    let s = t.get(&buyer, "/v1/market/ore/summary").await.body;
    assert_eq!(
        (s["best_ask"].as_i64(), s["best_bid"].as_i64()),
        (Some(12), Some(9))
    );
    assert_eq!(
        (s["ask_quantity"].as_i64(), s["bid_quantity"].as_i64()),
        (Some(6), Some(7))
    );
    let d = t.get(&buyer, "/v1/market/ore/depth?levels=2").await.body;
    assert_eq!(
        d["asks"],
        json!([{"price": 12, "quantity": 5, "count": 2}, {"price": 15, "quantity": 1, "count": 1}])
    );
    assert_eq!(
        d["bids"],
        json!([{"price": 9, "quantity": 5, "count": 2}, {"price": 8, "quantity": 2, "count": 1}])
    );
    // A sale into the best bid moves the last price and the volume.
    post(
        &t,
        &a,
        "/v1/listings",
        json!({"item_id": "ore", "quantity": 3, "price": 9, "deposit": 3}),
    )
    .await;
    let s = t.get(&buyer, "/v1/market/ore/summary").await.body;
    assert_eq!(
        (
            s["last_price"].as_i64(),
            s["volume_24h"].as_i64(),
            s["trades_24h"].as_i64()
        ),
        (Some(9), Some(3), Some(2))
    );
    let bad = t.get(&buyer, "/v1/market/ore/depth?levels=0").await;
    assert_eq!(bad.code(), "invalid_request");
    let bad = t.get(&buyer, "/v1/market/%3Cscript%3E/summary").await;
    assert_eq!(bad.code(), "invalid_request");
    let anon = t
        .send(Method::GET, "/v1/market/ore/summary", None, None, None)
        .await;
    assert_eq!(anon.status, StatusCode::UNAUTHORIZED);
    check_books(&db).await;
}

async fn candles_are_what_the_fills_say(db: TestDb) {
    let t = TestServer::start(&db).await;
    let mut seller = t.login("c-seller").await;
    let mut buyer = t.login("c-buyer").await;
    // Fills over three hours at changing prices.
    for (hour, prices) in [(0, vec![10, 14, 9]), (1, vec![]), (2, vec![11, 13])] {
        for p in prices {
            let l = post(
                &t,
                &seller,
                "/v1/listings",
                json!({"item_id": "gem", "quantity": 2, "price": p, "deposit": 2}),
            )
            .await;
            let id = l["listing"]["id"].as_i64().unwrap();
            post(
                &t,
                &buyer,
                &format!("/v1/listings/{id}/purchase"),
                json!({"expected_price": p, "quantity": 1 + p % 2, "deposit": (1 + p % 2) * p}),
            )
            .await;
        }
        let _ = hour;
        t.server.clock().advance(3_600);
        // Tokens live an hour in tests: log in again.
        seller = t.login("c-seller").await;
        buyer = t.login("c-buyer").await;
    }
    let buyer = t.login("c-buyer").await;
    let now = t.server.clock().now();
    let h = t
        .get(
            &buyer,
            &format!(
                "/v1/market/gem/history?interval=hour&from={}&to={}",
                now - 4 * 3_600,
                now
            ),
        )
        .await;
    assert_eq!(h.status, StatusCode::OK, "{}", h.text);
    // Recomputed from the rows.
    let pool = db.pool().await;
    let rows: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT created_at, quantity, unit_price FROM purchases WHERE item_id = 'gem' ORDER BY created_at, id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    pool.close().await;
    let mut expected: Vec<Value> = Vec::new();
    for (at, q, p) in rows {
        let start = at.div_euclid(3_600) * 3_600;
        match expected.last_mut() {
            Some(c) if c["start"] == start => {
                c["high"] = json!(c["high"].as_i64().unwrap().max(p));
                c["low"] = json!(c["low"].as_i64().unwrap().min(p));
                c["close"] = json!(p);
                c["volume"] = json!(c["volume"].as_i64().unwrap() + q);
                c["trades"] = json!(c["trades"].as_i64().unwrap() + 1);
            }
            _ => expected.push(json!({"start": start, "open": p, "high": p, "low": p, "close": p, "volume": q, "trades": 1})),
        }
    }
    assert_eq!(expected.len(), 2, "two hours with fills");
    assert_eq!(h.body["candles"], json!(expected));
    let d = t
        .get(&buyer, "/v1/market/gem/history?interval=day")
        .await
        .body;
    assert_eq!(d["candles"].as_array().map(Vec::len), Some(1));
    let bad = t.get(&buyer, "/v1/market/gem/history?interval=week").await;
    assert_eq!(bad.code(), "invalid_request");
    let bad = t
        .get(
            &buyer,
            &format!("/v1/market/gem/history?interval=hour&from=0&to={now}"),
        )
        .await;
    assert_eq!(bad.code(), "invalid_request", "too many intervals");
    check_books(&db).await;
}

/// Every player's shop screen asks: the same answer is served to all for
/// the cache's time, then computed anew.
async fn answers_are_kept_for_a_moment(db: TestDb) {
    let mut config = marketplace_server::Config::for_tests(&db.url);
    config.market_data_cache_ms = 300;
    let t = TestServer::start_with(config).await;
    let seller = t.login("cache-seller").await;
    let reader = t.login("cache-reader").await;
    let first = t.get(&reader, "/v1/market/ore/summary").await.body;
    assert!(first["best_ask"].is_null());
    post(
        &t,
        &seller,
        "/v1/listings",
        json!({"item_id": "ore", "quantity": 1, "price": 12, "deposit": 1}),
    )
    .await;
    let kept = t.get(&reader, "/v1/market/ore/summary").await.body;
    assert_eq!(kept, first, "served from the cache");
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let fresh = t.get(&reader, "/v1/market/ore/summary").await.body;
    assert_eq!(
        fresh["best_ask"], 12,
        "computed anew after the cache's time"
    );
}

/// A shop screen's browsing: cheapest first or newest first, by price
/// range and by item id prefix, paged without gaps or repeats.
async fn listings_sort_filter_and_page(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("browse-seller").await;
    let reader = t.login("browse-reader").await;
    let mut made = Vec::new();
    for (item, price) in [
        ("ore_red", 30),
        ("ore_blue", 10),
        ("gem", 20),
        ("ore_red", 10),
        ("orex", 50),
        ("ore_1", 40),
    ] {
        let l = post(
            &t,
            &seller,
            "/v1/listings",
            json!({"item_id": item, "quantity": 1, "price": price, "deposit": 1}),
        )
        .await;
        made.push((l["listing"]["id"].as_i64().unwrap(), item, price));
    }
    let ids = |v: &Value| -> Vec<i64> {
        v["listings"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["id"].as_i64().unwrap())
            .collect()
    };
    // Cheapest first, two a page, every listing once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = t
            .get(
                &reader,
                &format!("/v1/listings?sort=price&limit=2&cursor={cursor}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        seen.extend(ids(&r.body));
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    let mut by_price = made.clone();
    by_price.sort_by_key(|(id, _, p)| (*p, *id));
    assert_eq!(
        seen,
        by_price.iter().map(|(id, _, _)| *id).collect::<Vec<_>>()
    );
    let newest = t
        .get(&reader, "/v1/listings?sort=newest&limit=3")
        .await
        .body;
    let mut last3: Vec<i64> = made.iter().map(|(id, _, _)| *id).collect();
    last3.reverse();
    last3.truncate(3);
    assert_eq!(ids(&newest), last3);
    // A price range and an id prefix (`_` is a letter here, not a wildcard).
    let ranged = t
        .get(&reader, "/v1/listings?min_price=15&max_price=40&sort=price")
        .await
        .body;
    let prices: Vec<i64> = ranged["listings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["price"].as_i64().unwrap())
        .collect();
    assert_eq!(prices, vec![20, 30, 40]);
    let prefixed = t
        .get(&reader, "/v1/listings?item_prefix=ore_&sort=price")
        .await
        .body;
    let items: Vec<&str> = prefixed["listings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["item_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        items,
        vec!["ore_blue", "ore_red", "ore_red", "ore_1"],
        "orex is not ore_…"
    );
    for bad in [
        "/v1/listings?sort=random",
        "/v1/listings?sort=price&cursor=12",
        "/v1/listings?item_prefix=a%25",
    ] {
        assert_eq!(t.get(&reader, bad).await.code(), "invalid_request", "{bad}");
    }
    check_books(&db).await;
}

fn ids_of(page: &Value, key: &str, field: &str) -> Vec<String> {
    page[key]
        .as_array()
        .unwrap_or(&Vec::new())
        .iter()
        .map(|v| v[field].as_str().unwrap_or("?").to_string())
        .collect()
}

/// A shop's search box: with a catalog, ids and display names match
/// (case aside), best first, and browsing filters by the same search;
/// without one, the ids on the book that start with the text.
async fn items_are_found_by_id_and_catalog_name(db: TestDb) {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.json");
    std::fs::write(
        &catalog,
        r#"{"items": {
            "ore_iron": {"name": "Iron ore"},
            "ore_gold": {"name": "Gold ore"},
            "ingot_iron": {"name": "Refined iron ingot"},
            "hull_mk2": {"name": "Hull plating (Mk II)"},
            "gem": {}
        }}"#,
    )
    .unwrap();
    let mut config = Config::for_tests(&db.url);
    config.catalog = Some(catalog);
    let t = TestServer::start_with(config).await;
    let seller = t.login("search-seller").await;
    let reader = t.login("search-reader").await;
    for (item, price) in [
        ("ore_iron", 10),
        ("ingot_iron", 30),
        ("ore_gold", 50),
        ("gem", 70),
    ] {
        post(
            &t,
            &seller,
            "/v1/listings",
            json!({"item_id": item, "quantity": 1, "price": price, "deposit": 1}),
        )
        .await;
    }
    let found = t.get(&reader, "/v1/items?search=IRON").await;
    assert_eq!(found.status, StatusCode::OK, "{}", found.text);
    assert_eq!(found.body["catalog"], true);
    assert_eq!(
        ids_of(&found.body, "items", "item_id"),
        ["ore_iron", "ingot_iron"]
    );
    assert_eq!(found.body["items"][0]["name"], "Iron ore");
    let mk = t.get(&reader, "/v1/items?search=mk%20ii").await.body;
    assert_eq!(ids_of(&mk, "items", "item_id"), ["hull_mk2"]);
    // Browsing by the same search: what is for sale of those items.
    let listed = t
        .get(&reader, "/v1/listings?search=iron&sort=price")
        .await
        .body;
    assert_eq!(
        ids_of(&listed, "listings", "item_id"),
        ["ore_iron", "ingot_iron"]
    );
    let none = t.get(&reader, "/v1/listings?search=silver").await.body;
    assert!(ids_of(&none, "listings", "item_id").is_empty());
    for bad in [
        "/v1/items",
        "/v1/items?search=",
        "/v1/items?search=%0A",
        &format!("/v1/items?search={}", "a".repeat(65)),
        "/v1/listings?search=",
    ] {
        assert_eq!(t.get(&reader, bad).await.code(), "invalid_request", "{bad}");
    }
    t.server.shutdown().await;

    // No catalog: ids on the book (for sale or wanted), as typed; LIKE's
    // wildcards are letters here.
    let t = TestServer::start(&db).await;
    let found = t.get(&reader, "/v1/items?search=ore_").await.body;
    assert_eq!(found["catalog"], false);
    assert_eq!(ids_of(&found, "items", "item_id"), ["ore_gold", "ore_iron"]);
    assert!(found["items"][0]["name"].is_null());
    let wild = t.get(&reader, "/v1/items?search=%25").await.body;
    assert!(ids_of(&wild, "items", "item_id").is_empty(), "{wild}");
    let listed = t.get(&reader, "/v1/listings?search=ing").await.body;
    assert_eq!(ids_of(&listed, "listings", "item_id"), ["ingot_iron"]);
    check_books(&db).await;
}
