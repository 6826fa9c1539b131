//! A real market over raw HTTP: partial purchases, buy orders matched
//! price first then time, fills at the resting side's price with the
//! difference back, deliveries collected exactly once, expiry decided by
//! the time itself (not by the sweep), fees into a sink the audit knows,
//! and the races that must never fill a unit twice. Both databases; every
//! test ends with the books (I1 per unit, I2, I6).

use std::sync::Arc;

use crate::support::{check_books, key, Player, Reply, TestDb, TestServer};
use marketplace_server::config::EconomyArg;
use marketplace_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

backend_tests!(
    partial_purchases_take_units_and_the_whole_lot_stays_the_default,
    a_buy_order_takes_the_cheapest_then_oldest_and_gets_the_difference_back,
    a_new_listing_sells_into_the_best_bids_at_their_price,
    a_minimum_fill_is_respected_on_both_sides,
    deliveries_are_collected_once_and_replays_get_the_same_answer,
    nothing_fills_past_its_time_and_the_sweep_only_tidies,
    cancelling_an_order_returns_what_is_left_once,
    fees_go_to_a_sink_the_audit_knows_and_the_quote_says_them,
    orders_racing_for_one_listing_never_fill_a_unit_twice,
    listings_racing_into_one_order_and_its_cancel_never_overfill,
    under_server_grants_fills_land_in_the_account,
    a_cheater_cannot_fill_past_quantities_or_collect_twice,
    older_clients_get_codes_they_know,
    the_audit_counts_units,
    a_partial_purchase_replayed_after_pruning_gets_its_first_answer,
    a_lot_sold_unit_by_unit_pays_the_fees_of_the_lot,
);

async fn call(t: &TestServer, who: &Player, method: Method, path: &str, body: Value) -> Reply {
    call_keyed(t, who, method, path, body, &key()).await
}

async fn call_keyed(
    t: &TestServer,
    who: &Player,
    method: Method,
    path: &str,
    body: Value,
    k: &str,
) -> Reply {
    let body = (!body.is_null()).then(|| body.to_string());
    t.send(method, path, Some(&who.token), Some(k), body).await
}

/// Lists `quantity` units at `price` each (deposited from the save).
async fn list(t: &TestServer, seller: &Player, item: &str, quantity: i64, price: i64) -> Reply {
    let r = call(
        t,
        seller,
        Method::POST,
        "/v1/listings",
        json!({"item_id": item, "quantity": quantity, "price": price, "deposit": quantity}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    r
}

async fn order(
    t: &TestServer,
    buyer: &Player,
    item: &str,
    quantity: i64,
    max_price: i64,
    extra: Value,
) -> Reply {
    let mut body = json!({"item_id": item, "quantity": quantity, "max_price": max_price,
        "deposit": quantity * max_price});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        b.extend(e.clone());
    }
    call(t, buyer, Method::POST, "/v1/orders", body).await
}

fn id(r: &Reply, what: &str) -> i64 {
    r.body[what]["id"]
        .as_i64()
        .unwrap_or_else(|| panic!("{what} id in {}", r.text))
}

async fn deliveries(t: &TestServer, who: &Player) -> Vec<Value> {
    let r = t.get(who, "/v1/me/deliveries?collected=false").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["deliveries"].as_array().cloned().unwrap_or_default()
}

/// Collects everything waiting; returns (credits, items) it brought.
async fn collect_all(t: &TestServer, who: &Player) -> (i64, i64) {
    let waiting = deliveries(t, who).await;
    if waiting.is_empty() {
        return (0, 0);
    }
    let ids: Vec<i64> = waiting.iter().filter_map(|d| d["id"].as_i64()).collect();
    let r = call(
        t,
        who,
        Method::POST,
        "/v1/me/deliveries/collect",
        json!({ "delivery_ids": ids }),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let mut got = (0, 0);
    for d in r.body["deliveries"].as_array().expect("deliveries") {
        let q = d["quantity"].as_i64().expect("quantity");
        if d["item_id"].is_null() {
            got.0 += q;
        } else {
            got.1 += q;
        }
    }
    got
}

async fn partial_purchases_take_units_and_the_whole_lot_stays_the_default(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("ore-seller").await;
    let buyer = t.login("ore-buyer").await;
    let l = id(&list(&t, &seller, "ore", 5, 20).await, "listing");
    let path = format!("/v1/listings/{l}/purchase");

    let r = call(
        &t,
        &buyer,
        Method::POST,
        &path,
        json!({"expected_price": 20, "quantity": 2, "deposit": 40}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (
            r.body["purchase"]["quantity"].as_i64(),
            r.body["purchase"]["price"].as_i64()
        ),
        (Some(2), Some(40)),
        "two units at 20 each"
    );
    assert_eq!(r.body["transfer"]["delivered"], 2);
    let shown = t.get(&buyer, &format!("/v1/listings/{l}")).await;
    assert_eq!(shown.body["listing"]["quantity_remaining"], 3);
    assert_eq!(shown.body["listing"]["status"], "active");

    // Without a quantity the request speaks in lots, as clients did before
    // partial fills: all that remains, at what it costs together (3 × 20).
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &path,
        json!({"expected_price": 20, "deposit": 100}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "price_changed"),
        "{}",
        r.text
    );
    assert_eq!(r.body["error"]["current_price"], 60, "the lot's price now");
    // More than remains: refused, with what remains.
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &path,
        json!({"expected_price": 20, "quantity": 4, "deposit": 80}),
    )
    .await;
    assert_eq!(r.code(), "quantity_unavailable");
    assert_eq!(r.body["error"]["available"], 3);
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &path,
        json!({"expected_price": 20, "quantity": 3, "deposit": 60}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let shown = t.get(&buyer, &format!("/v1/listings/{l}")).await;
    assert_eq!(
        (
            shown.body["listing"]["status"].as_str(),
            shown.body["listing"]["quantity_remaining"].as_i64()
        ),
        (Some("sold"), Some(0))
    );
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &path,
        json!({"expected_price": 20, "quantity": 1, "deposit": 20}),
    )
    .await;
    assert_eq!(r.code(), "already_sold");

    // A client from before partial fills buys a whole lot of 2 at 30 each
    // for 60, as it always did: it held 60 and is answered 60.
    let l3 = id(&list(&t, &seller, "gem", 2, 30).await, "listing");
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &format!("/v1/listings/{l3}/purchase"),
        json!({"expected_price": 30, "deposit": 30}),
    )
    .await;
    assert_eq!(
        (r.code(), r.body["error"]["current_price"].as_i64()),
        ("price_changed", Some(60)),
        "the unit price alone is not what the lot costs"
    );
    let l2 = id(&list(&t, &seller, "gem", 2, 30).await, "listing");
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &format!("/v1/listings/{l2}/purchase"),
        json!({"expected_price": 60, "deposit": 60}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (
            r.body["purchase"]["quantity"].as_i64(),
            r.body["purchase"]["price"].as_i64()
        ),
        (Some(2), Some(60))
    );
    // A lot whose total is beyond the limit is refused.
    let r = call(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        json!({"item_id": "ore", "quantity": 1000000, "price": 1000000000000i64, "deposit": 1}),
    )
    .await;
    assert_eq!(r.code(), "invalid_request", "{}", r.text);
    let books = check_books(&db).await;
    assert_eq!(books.purchases, 3);
}

async fn a_buy_order_takes_the_cheapest_then_oldest_and_gets_the_difference_back(db: TestDb) {
    let t = TestServer::start(&db).await;
    let a = t.login("seller-a").await;
    let b = t.login("seller-b").await;
    let buyer = t.login("bidder").await;
    let at_12 = id(&list(&t, &a, "ore", 2, 12).await, "listing");
    let older_10 = id(&list(&t, &a, "ore", 1, 10).await, "listing");
    let newer_10 = id(&list(&t, &b, "ore", 1, 10).await, "listing");
    let _at_15 = id(&list(&t, &b, "ore", 3, 15).await, "listing");
    // The buyer's own cheap listing is never matched (no self-trade).
    list(&t, &buyer, "ore", 1, 1).await;

    let r = order(&t, &buyer, "ore", 3, 12, json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let fills = r.body["fills"].as_array().expect("fills");
    let taken: Vec<(i64, i64, i64)> = fills
        .iter()
        .map(|f| {
            (
                f["listing_id"].as_i64().unwrap(),
                f["quantity"].as_i64().unwrap(),
                f["unit_price"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        taken,
        vec![(older_10, 1, 10), (newer_10, 1, 10), (at_12, 1, 12)],
        "price first, then time"
    );
    assert_eq!(r.body["order"]["status"], "filled");
    assert_eq!(r.body["order"]["escrow"], 0);
    assert_eq!(r.body["transfer"]["deposited"], 36);

    // Items and the 4 credits paid below the order's price wait for the buyer.
    assert_eq!(collect_all(&t, &buyer).await, (4, 3));
    // The sellers claim what their fills sold for.
    let sales = t.get(&a, "/v1/me/sales?claimed=false").await;
    let total: i64 = sales.body["sales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["price"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 22);
    let listing = t.get(&a, &format!("/v1/listings/{at_12}")).await;
    assert_eq!(listing.body["listing"]["quantity_remaining"], 1);
    check_books(&db).await;
}

async fn a_new_listing_sells_into_the_best_bids_at_their_price(db: TestDb) {
    let t = TestServer::start(&db).await;
    let low = t.login("bid-20").await;
    let high = t.login("bid-25").await;
    let seller = t.login("asker").await;
    let o20 = id(&order(&t, &low, "ore", 2, 20, json!({})).await, "order");
    let o25 = id(&order(&t, &high, "ore", 2, 25, json!({})).await, "order");
    let book = t.get(&seller, "/v1/orders?item_id=ore").await;
    let prices: Vec<i64> = book.body["orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["max_price"].as_i64().unwrap())
        .collect();
    assert_eq!(prices, vec![25, 20], "best bid first");

    let r = list(&t, &seller, "ore", 3, 18).await;
    let fills: Vec<(i64, i64, i64)> = r.body["fills"]
        .as_array()
        .expect("fills")
        .iter()
        .map(|f| {
            (
                f["order_id"].as_i64().unwrap(),
                f["quantity"].as_i64().unwrap(),
                f["unit_price"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        fills,
        vec![(o25, 2, 25), (o20, 1, 20)],
        "at the bids' prices, best first"
    );
    assert_eq!(r.body["listing"]["status"], "sold");
    // The order left resting with one unit holds exactly its price.
    let rest = t.get(&low, &format!("/v1/orders/{o20}")).await;
    assert_eq!(
        (
            rest.body["order"]["quantity_remaining"].as_i64(),
            rest.body["order"]["escrow"].as_i64()
        ),
        (Some(1), Some(20))
    );
    assert_eq!(rest.body["fills"].as_array().map(Vec::len), Some(1));
    assert_eq!(collect_all(&t, &high).await, (0, 2));
    // A repriced listing meets the bid too.
    let l = id(&list(&t, &seller, "ore", 1, 40).await, "listing");
    let r = t.reprice(&seller, l, 20).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["fills"].as_array().map(Vec::len), Some(1));
    assert_eq!(r.body["listing"]["status"], "sold");
    let mine = t.get(&low, "/v1/me/orders?status=closed").await;
    assert_eq!(mine.body["orders"][0]["status"], "filled");
    check_books(&db).await;
}

async fn a_minimum_fill_is_respected_on_both_sides(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("small-lots").await;
    let buyer = t.login("bulk-buyer").await;
    list(&t, &seller, "ore", 2, 10).await;
    let r = order(&t, &buyer, "ore", 10, 10, json!({"min_fill": 5})).await;
    assert_eq!(
        r.body["fills"].as_array().map(Vec::len),
        Some(0),
        "2 is below the minimum of 5"
    );
    let o = id(&r, "order");
    // A listing of 3 is still too small; one of 6 fills 6 of 10.
    let r = list(&t, &seller, "ore", 3, 10).await;
    assert_eq!(r.body["fills"].as_array().map_or(0, Vec::len), 0);
    let r = list(&t, &seller, "ore", 6, 10).await;
    assert_eq!(r.body["fills"][0]["quantity"], 6);
    // 4 left, below the minimum: the rest of the order may be filled.
    let r = list(&t, &seller, "ore", 4, 9).await;
    assert_eq!(r.body["fills"][0]["quantity"], 4);
    let shown = t.get(&buyer, &format!("/v1/orders/{o}")).await;
    assert_eq!(shown.body["order"]["status"], "filled");
    let r = order(&t, &buyer, "ore", 3, 10, json!({"min_fill": 4})).await;
    assert_eq!(r.code(), "invalid_request", "a minimum above the quantity");
    check_books(&db).await;
}

async fn deliveries_are_collected_once_and_replays_get_the_same_answer(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("d-seller").await;
    let buyer = t.login("d-buyer").await;
    order(&t, &buyer, "ore", 2, 15, json!({})).await;
    list(&t, &seller, "ore", 2, 15).await;
    let waiting = deliveries(&t, &buyer).await;
    assert_eq!(waiting.len(), 1, "the items (no refund: filled at the bid)");
    assert_eq!(
        (waiting[0]["kind"].as_str(), waiting[0]["quantity"].as_i64()),
        (Some("order_items"), Some(2))
    );
    let ids = json!({"delivery_ids": [waiting[0]["id"]]});
    let k = key();
    let first = call_keyed(
        &t,
        &buyer,
        Method::POST,
        "/v1/me/deliveries/collect",
        ids.clone(),
        &k,
    )
    .await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    assert_eq!(first.body["transfer"]["delivered"], 2);
    let replay = call_keyed(
        &t,
        &buyer,
        Method::POST,
        "/v1/me/deliveries/collect",
        ids.clone(),
        &k,
    )
    .await;
    assert_eq!(replay.body, first.body, "the same key: the same answer");
    // The stored answers pruned: the rows still give the same answer.
    t.server.clock().advance(3 * 86_400);
    t.server.prune_now().await.expect("prune");
    let buyer = t.login("d-buyer").await;
    let seller = t.login("d-seller").await;
    let later = call_keyed(
        &t,
        &buyer,
        Method::POST,
        "/v1/me/deliveries/collect",
        ids.clone(),
        &k,
    )
    .await;
    assert_eq!(later.body["deliveries"], first.body["deliveries"]);
    // Another key: nothing left to collect.
    let again = call(
        &t,
        &buyer,
        Method::POST,
        "/v1/me/deliveries/collect",
        ids.clone(),
    )
    .await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    // Someone else's delivery: not theirs to collect.
    let other = call(&t, &seller, Method::POST, "/v1/me/deliveries/collect", ids).await;
    assert_eq!(other.code(), "not_found");
    let r = call(
        &t,
        &buyer,
        Method::POST,
        "/v1/me/deliveries/collect",
        json!({"delivery_ids": []}),
    )
    .await;
    assert_eq!(r.code(), "invalid_request");
    check_books(&db).await;
}

async fn nothing_fills_past_its_time_and_the_sweep_only_tidies(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("timed-seller").await;
    let buyer = t.login("timed-buyer").await;
    let r = call(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        json!({"item_id": "ore", "quantity": 3, "price": 10, "deposit": 3, "duration_secs": 60}),
    )
    .await;
    let l = id(&r, "listing");
    let expires = r.body["listing"]["expires_at"]
        .as_i64()
        .expect("expires_at");
    let o = id(
        &order(&t, &buyer, "gem", 1, 50, json!({"duration_secs": 60})).await,
        "order",
    );
    let r = call(&t, &seller, Method::POST, "/v1/listings", json!({"item_id": "ore", "quantity": 1, "price": 10, "deposit": 1, "duration_secs": 999_999_999})).await;
    assert_eq!(r.code(), "invalid_request", "longer than the bound");

    t.server.clock().advance(61);
    assert!(t.server.clock().now() > expires);
    // The sweep has not run: the time alone closes them.
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &format!("/v1/listings/{l}/purchase"),
        json!({"expected_price": 10, "quantity": 1, "deposit": 10}),
    )
    .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "listing_expired"),
        "{}",
        r.text
    );
    let r = order(&t, &buyer, "ore", 3, 10, json!({})).await;
    assert_eq!(
        r.body["fills"].as_array().map(Vec::len),
        Some(0),
        "an expired listing fills no order"
    );
    let r = list(&t, &seller, "gem", 1, 40).await;
    assert_eq!(
        r.body["fills"].as_array().map_or(0, Vec::len),
        0,
        "an expired order takes nothing"
    );
    let shown = t.get(&buyer, &format!("/v1/listings/{l}")).await;
    assert_eq!(shown.body["listing"]["status"], "expired");
    let active = t.get(&buyer, "/v1/listings?item_id=ore").await;
    assert!(active.body["listings"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["id"] != l));
    let r = t.reprice(&seller, l, 5).await;
    assert_eq!(r.code(), "listing_expired");

    // The sweep sends back what they hold, once; a second sweep finds nothing.
    assert_eq!(t.server.sweep_now().await.expect("sweep"), 2);
    assert_eq!(t.server.sweep_now().await.expect("sweep"), 0);
    let back = deliveries(&t, &seller).await;
    assert_eq!(
        (back[0]["kind"].as_str(), back[0]["quantity"].as_i64()),
        (Some("listing_expired"), Some(3))
    );
    let refund = deliveries(&t, &buyer).await;
    assert!(refund
        .iter()
        .any(|d| d["kind"] == "order_expired" && d["quantity"] == 50));
    let shown = t.get(&buyer, &format!("/v1/orders/{o}")).await;
    assert_eq!(shown.body["order"]["status"], "expired");
    assert_eq!(collect_all(&t, &seller).await, (0, 3));
    // A cancel of a listing past its time that the sweep has not reached
    // returns its escrow; the sweep then has nothing to send.
    let r = call(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        json!({"item_id": "relic", "quantity": 2, "price": 10, "deposit": 2, "duration_secs": 30}),
    )
    .await;
    let l2 = id(&r, "listing");
    t.server.clock().advance(31);
    let r = t.cancel(&seller, l2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["transfer"]["delivered"], 2);
    assert_eq!(t.server.sweep_now().await.expect("sweep"), 0);
    check_books(&db).await;
}

async fn cancelling_an_order_returns_what_is_left_once(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("c-seller").await;
    let buyer = t.login("c-buyer").await;
    let o = id(&order(&t, &buyer, "ore", 5, 10, json!({})).await, "order");
    list(&t, &seller, "ore", 2, 10).await;
    let k = key();
    let path = format!("/v1/orders/{o}");
    let r = call_keyed(&t, &buyer, Method::DELETE, &path, Value::Null, &k).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        (
            r.body["order"]["status"].as_str(),
            r.body["transfer"]["delivered"].as_i64()
        ),
        (Some("cancelled"), Some(30))
    );
    let replay = call_keyed(&t, &buyer, Method::DELETE, &path, Value::Null, &k).await;
    assert_eq!(replay.body, r.body);
    let again = call(&t, &buyer, Method::DELETE, &path, Value::Null).await;
    assert_eq!(
        (again.status, again.code()),
        (StatusCode::CONFLICT, "order_closed")
    );
    let theirs = call(&t, &seller, Method::DELETE, &path, Value::Null).await;
    assert_eq!(theirs.code(), "forbidden");
    // After the cancel a new listing does not meet it.
    let r = list(&t, &seller, "ore", 1, 10).await;
    assert_eq!(r.body["fills"].as_array().map_or(0, Vec::len), 0);
    check_books(&db).await;
}

async fn fees_go_to_a_sink_the_audit_knows_and_the_quote_says_them(db: TestDb) {
    let mut config = Config::for_tests(&db.url);
    config.listing_fee_bp = 100; // 1 %
    config.listing_fee_min = 1;
    config.sales_tax_bp = 500; // 5 %
    config.sales_tax_max = 40;
    let t = TestServer::start_with(config).await;
    let seller = t.login("taxed-seller").await;
    let buyer = t.login("taxed-buyer").await;
    let quote = t.get(&buyer, "/v1/fees/quote?quantity=10&price=100").await;
    assert_eq!(quote.status, StatusCode::OK, "{}", quote.text);
    assert_eq!(
        (
            quote.body["buyer_pays"].as_i64(),
            quote.body["listing_fee"].as_i64(),
            quote.body["sales_tax"].as_i64(),
            quote.body["seller_receives"].as_i64()
        ),
        (Some(1000), Some(10), Some(40), Some(950)),
        "5 % of 1000 is 50, capped at 40"
    );
    let l = id(&list(&t, &seller, "ore", 10, 100).await, "listing");
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &format!("/v1/listings/{l}/purchase"),
        json!({"expected_price": 100, "quantity": 10, "deposit": 1000}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    order(&t, &buyer, "ore", 1, 7, json!({})).await;
    list(&t, &seller, "ore", 1, 7).await; // 7: fee 1 (minimum) + tax 1 (rounded up)
    let sales = t.get(&seller, "/v1/me/sales?claimed=false").await;
    let mut received = 0;
    for sale in sales.body["sales"].as_array().unwrap() {
        let s = sale["id"].as_i64().unwrap();
        let r = t.claim(&seller, s, &key()).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        assert_eq!(
            r.body["amount"].as_i64(),
            Some(sale["price"].as_i64().unwrap() - sale["fee"].as_i64().unwrap())
        );
        received += r.body["amount"].as_i64().unwrap();
    }
    assert_eq!(received, 950 + 5);
    let books = check_books(&db).await;
    assert_eq!(books.fees, 50 + 2);
    let metrics = t.send(Method::GET, "/metrics", None, None, None).await;
    assert!(
        metrics
            .text
            .contains("market_book_credits{place=\"fees\"} 52"),
        "{}",
        metrics.text
    );
}

async fn orders_racing_for_one_listing_never_fill_a_unit_twice(db: TestDb) {
    let t = Arc::new(TestServer::start(&db).await);
    let seller = t.login("race-seller").await;
    list(&t, &seller, "ore", 5, 10).await;
    let mut buyers = Vec::new();
    for i in 0..12 {
        buyers.push(t.login(&format!("race-buyer-{i}")).await);
    }
    let mut tasks = Vec::new();
    for (i, b) in buyers.into_iter().enumerate() {
        let t = t.clone();
        tasks.push(tokio::spawn(async move {
            // Orders of 1 and 2 units, and direct purchases, all at once.
            if i % 3 == 0 {
                let r = t
                    .send(
                        Method::GET,
                        "/v1/listings?item_id=ore",
                        Some(&b.token),
                        None,
                        None,
                    )
                    .await;
                let l = r.body["listings"][0]["id"].as_i64().unwrap_or(1);
                let r = call(
                    &t,
                    &b,
                    Method::POST,
                    &format!("/v1/listings/{l}/purchase"),
                    json!({"expected_price": 10, "quantity": 1, "deposit": 10}),
                )
                .await;
                i64::from(r.status == StatusCode::OK)
            } else {
                let q = 1 + (i as i64 % 2);
                let r = order(&t, &b, "ore", q, 10, json!({})).await;
                assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
                r.body["fills"].as_array().map_or(0, |f| {
                    f.iter().map(|x| x["quantity"].as_i64().unwrap()).sum()
                })
            }
        }));
    }
    let mut sold = 0;
    for task in tasks {
        sold += task.await.expect("task");
    }
    assert_eq!(sold, 5, "exactly the listing's units, each once");
    check_books(&db).await;
}

async fn listings_racing_into_one_order_and_its_cancel_never_overfill(db: TestDb) {
    let t = Arc::new(TestServer::start(&db).await);
    let buyer = t.login("big-bid").await;
    let o = id(&order(&t, &buyer, "ore", 6, 10, json!({})).await, "order");
    let mut tasks = Vec::new();
    for i in 0..10 {
        let t = t.clone();
        let seller = t.login(&format!("racing-seller-{i}")).await;
        tasks.push(tokio::spawn(async move {
            let r = list(&t, &seller, "ore", 1, 9).await;
            r.body["fills"].as_array().map_or(0, |f| f.len() as i64)
        }));
    }
    let cancel = {
        let t = t.clone();
        let buyer = buyer.clone();
        tokio::spawn(async move {
            call(
                &t,
                &buyer,
                Method::DELETE,
                &format!("/v1/orders/{o}"),
                Value::Null,
            )
            .await
        })
    };
    let mut filled = 0;
    for task in tasks {
        filled += task.await.expect("task");
    }
    let cancelled = cancel.await.expect("cancel");
    assert!(filled <= 6, "never beyond the order's quantity: {filled}");
    let shown = t.get(&buyer, &format!("/v1/orders/{o}")).await;
    let remaining = shown.body["order"]["quantity_remaining"].as_i64().unwrap();
    assert_eq!(remaining + filled, 6);
    if cancelled.status == StatusCode::OK {
        assert_eq!(
            cancelled.body["transfer"]["delivered"].as_i64(),
            Some(remaining * 10)
        );
    } else {
        assert_eq!(cancelled.code(), "order_closed", "{}", cancelled.text);
        assert_eq!(filled, 6);
    }
    check_books(&db).await;
}

async fn under_server_grants_fills_land_in_the_account(db: TestDb) {
    let mut config = Config::for_tests(&db.url);
    config.economy = EconomyArg::ServerGrants;
    let admin = config.admin_key.clone().expect("admin key");
    let t = TestServer::start_with(config).await;
    let seller = t.login("g-seller").await;
    let buyer = t.login("g-buyer").await;
    for (who, item, q) in [(&seller, Some("ore"), 4), (&buyer, None, 100)] {
        let r = t
            .http
            .post(format!("{}/admin/v1/players/{}/grants", t.base, who.id))
            .bearer_auth(&admin)
            .header("idempotency-key", key())
            .json(&json!({"item_id": item, "quantity": q}))
            .send()
            .await
            .expect("grant");
        assert!(r.status().is_success(), "{:?}", r.text().await);
    }
    let r = call(
        &t,
        &buyer,
        Method::POST,
        "/v1/orders",
        json!({"item_id": "ore", "quantity": 4, "max_price": 20}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.body["transfer"]["account"]["credits"], 20, "80 in escrow");
    let r = call(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        json!({"item_id": "ore", "quantity": 4, "price": 15}),
    )
    .await;
    assert_eq!(
        r.body["fills"].as_array().map(Vec::len),
        Some(1),
        "{}",
        r.text
    );
    assert!(
        deliveries(&t, &buyer).await.is_empty(),
        "nothing waits under grants"
    );
    let account = t.get(&buyer, "/v1/me/account").await;
    assert_eq!(account.body["account"]["stash"]["ore"], 4);
    assert_eq!(
        account.body["account"]["credits"], 20,
        "filled at the bid: no refund"
    );
    check_books(&db).await;
}

async fn a_cheater_cannot_fill_past_quantities_or_collect_twice(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("honest").await;
    let cheater = t.login("cheater").await;
    let l = id(&list(&t, &seller, "ore", 2, 10).await, "listing");
    let path = format!("/v1/listings/{l}/purchase");
    for body in [
        json!({"expected_price": 10, "quantity": 3, "deposit": 30}),
        json!({"expected_price": 10, "quantity": 0, "deposit": 0}),
        json!({"expected_price": 10, "quantity": -2, "deposit": 0}),
        json!({"expected_price": 5, "quantity": 2, "deposit": 10}),
        json!({"expected_price": 10, "quantity": 2, "deposit": 10}),
    ] {
        let r = call(&t, &cheater, Method::POST, &path, body.clone()).await;
        assert_ne!(r.status, StatusCode::OK, "{body}: {}", r.text);
    }
    // An order that claims to escrow less than it costs, or overflows.
    for body in [
        json!({"item_id": "ore", "quantity": 2, "max_price": 10, "deposit": 5}),
        json!({"item_id": "ore", "quantity": 9_000_000_000i64, "max_price": 9_000_000_000i64, "deposit": 0}),
        json!({"item_id": "ore", "quantity": 1, "max_price": 10, "deposit": 10, "buyer_id": 1}),
    ] {
        let r = call(&t, &cheater, Method::POST, "/v1/orders", body.clone()).await;
        assert_ne!(r.status, StatusCode::CREATED, "{body}: {}", r.text);
    }
    let r = order(&t, &cheater, "ore", 2, 10, json!({})).await;
    assert_eq!(r.body["fills"][0]["quantity"], 2);
    let waiting = deliveries(&t, &cheater).await;
    let ids: Vec<i64> = waiting.iter().filter_map(|d| d["id"].as_i64()).collect();
    // The same delivery twice in one request, and from two keys at once.
    let body = json!({"delivery_ids": [ids[0], ids[0]]});
    let (a, b) = tokio::join!(
        call(
            &t,
            &cheater,
            Method::POST,
            "/v1/me/deliveries/collect",
            body.clone()
        ),
        call(
            &t,
            &cheater,
            Method::POST,
            "/v1/me/deliveries/collect",
            body.clone()
        )
    );
    let got: Vec<usize> = [&a, &b]
        .iter()
        .map(|r| r.body["deliveries"].as_array().map_or(0, Vec::len))
        .collect();
    assert_eq!(got.iter().sum::<usize>(), 1, "{} / {}", a.text, b.text);
    check_books(&db).await;
}

/// A client from before partial fills and expiry (no protocol header)
/// would take the new codes for ambiguous answers and retry forever: it
/// gets the older codes that mean the same to it, definitive for it.
async fn older_clients_get_codes_they_know(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("old-seller").await;
    let buyer = t.login("old-buyer").await;
    let l = id(&list(&t, &seller, "ore", 2, 10).await, "listing");
    let old = |path: String, body: Value| {
        let (http, base, token) = (t.http.clone(), t.base.clone(), buyer.token.clone());
        async move {
            let r = http
                .post(format!("{base}{path}"))
                .bearer_auth(token)
                .header("idempotency-key", key())
                .json(&body)
                .send()
                .await
                .expect("answer");
            let status = r.status();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, body) = old(
        format!("/v1/listings/{l}/purchase"),
        json!({"expected_price": 10, "quantity": 5, "deposit": 50}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("already_sold")),
        "quantity_unavailable, said as an older client understands it"
    );
    let r = call(
        &t,
        &seller,
        Method::POST,
        "/v1/listings",
        json!({"item_id": "ore", "quantity": 1, "price": 10, "deposit": 1, "duration_secs": 5}),
    )
    .await;
    let short = id(&r, "listing");
    t.server.clock().advance(6);
    let buyer = t.login("old-buyer").await;
    let r = t
        .http
        .post(format!("{}/v1/listings/{short}/purchase", t.base))
        .bearer_auth(&buyer.token)
        .header("idempotency-key", key())
        .json(&json!({"expected_price": 10, "quantity": 1, "deposit": 10}))
        .send()
        .await
        .unwrap();
    let body: Value = r.json().await.unwrap();
    assert_eq!(
        body["error"]["code"], "listing_cancelled",
        "listing_expired, for an older client"
    );
    // A current client hears the precise code.
    let r = call(
        &t,
        &buyer,
        Method::POST,
        &format!("/v1/listings/{short}/purchase"),
        json!({"expected_price": 10, "quantity": 1, "deposit": 10}),
    )
    .await;
    assert_eq!(r.code(), "listing_expired");
    check_books(&db).await;
}

/// The audit proves I1 per unit from the tables: a fill's units tampered
/// with are named.
async fn the_audit_counts_units(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("unit-seller").await;
    let buyer = t.login("unit-buyer").await;
    order(&t, &buyer, "ore", 3, 10, json!({})).await;
    list(&t, &seller, "ore", 2, 10).await;
    check_books(&db).await;
    let pool = db.pool().await;
    sqlx::query("UPDATE purchases SET quantity = quantity + 1")
        .execute(&pool)
        .await
        .unwrap();
    let mut conn = pool.acquire().await.unwrap();
    let audit = marketplace_server::audit_connection(&mut conn)
        .await
        .unwrap();
    assert!(
        audit
            .mismatches
            .iter()
            .any(|m| m.contains("units do not add up")),
        "{:#?}",
        audit.mismatches
    );
}

/// A key's stored answer pruned, its listing still holding units: the
/// replay wins the race again, finds its key taken by its own purchase,
/// and answers that purchase — never a refusal the client would settle on.
async fn a_partial_purchase_replayed_after_pruning_gets_its_first_answer(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("replay-seller").await;
    let buyer = t.login("replay-buyer").await;
    let l = id(&list(&t, &seller, "ore", 5, 10).await, "listing");
    let k = key();
    let path = format!("/v1/listings/{l}/purchase");
    let body = json!({"expected_price": 10, "quantity": 2, "deposit": 20});
    let first = call_keyed(&t, &buyer, Method::POST, &path, body.clone(), &k).await;
    assert_eq!(first.status, StatusCode::OK, "{}", first.text);
    t.server.clock().advance(9 * 86_400);
    t.server.prune_now().await.expect("prune");
    let buyer = t.login("replay-buyer").await;
    let again = call_keyed(&t, &buyer, Method::POST, &path, body, &k).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.body["purchase"], first.body["purchase"]);
    let shown = t.get(&buyer, &format!("/v1/listings/{l}")).await;
    assert_eq!(
        shown.body["listing"]["quantity_remaining"], 3,
        "bought once"
    );
    check_books(&db).await;
}

/// The fee is the listing's: a buyer taking one unit at a time makes the
/// seller pay no more than the lot sold at once.
async fn a_lot_sold_unit_by_unit_pays_the_fees_of_the_lot(db: TestDb) {
    let mut config = Config::for_tests(&db.url);
    config.listing_fee_bp = 100;
    config.listing_fee_min = 3;
    config.sales_tax_bp = 250;
    let t = TestServer::start_with(config).await;
    let seller = t.login("lot-seller").await;
    let buyer = t.login("nibbler").await;
    let l = id(&list(&t, &seller, "ore", 10, 7).await, "listing");
    let quote = t.get(&seller, "/v1/fees/quote?quantity=10&price=7").await;
    let whole =
        quote.body["listing_fee"].as_i64().unwrap() + quote.body["sales_tax"].as_i64().unwrap();
    assert_eq!(whole, 3 + 2, "the minimum of 3, and 2.5 % of 70 rounded up");
    for _ in 0..10 {
        let r = call(
            &t,
            &buyer,
            Method::POST,
            &format!("/v1/listings/{l}/purchase"),
            json!({"expected_price": 7, "quantity": 1, "deposit": 7}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    }
    let books = check_books(&db).await;
    assert_eq!(books.fees, whole, "unit by unit, the fees of the lot");
}
