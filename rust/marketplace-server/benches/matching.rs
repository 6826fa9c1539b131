//! Matching throughput and latency: a book of 10,000 resting buy orders on
//! one item, swept by sell listings, SQLite and PostgreSQL.
//!
//! ```text
//! cargo bench -p marketplace-server --bench matching
//! MARKET_BENCH_POSTGRES_URL=postgres://… cargo bench -p marketplace-server --bench matching
//! ```
//! (`cargo xtask bench` passes a PostgreSQL URL.) 100 buyers rest 100 orders
//! each (2 units, prices spread over 500 levels). Then sellers list 20 units
//! at a price below every bid, 1 or 16 listings at a time: each listing
//! is one matching transaction that fills the ten best orders (price first,
//! then the oldest). Prints matching transactions and fills per second and
//! the latency of a matching transaction (p50, p99), then checks that every
//! order was filled exactly and the books balance.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use marketplace_server::Config;
use reqwest::Method;
use serde_json::json;
use support::{check_books, key, TestDb, TestServer};
use tokio::sync::Semaphore;

const BUYERS: usize = 100;
const ORDERS_EACH: usize = 100;
const UNITS: i64 = 2;
const LOT: i64 = 20;
const SELLERS: usize = 20;

async fn sweep(db: &TestDb, label: &str, in_flight: usize) {
    let mut config = Config::for_tests(&db.url);
    config.deposit_cap_credits = 1_000_000_000;
    config.deposit_cap_items = 1_000_000;
    // Market data answers kept as in production (2 s): the reads below.
    config.market_data_cache_ms = Config::defaults().market_data_cache_ms;
    let t = Arc::new(TestServer::start_with(config).await);
    let gate = Arc::new(Semaphore::new(32));
    let mut tasks = Vec::new();
    for b in 0..BUYERS {
        let buyer = t.login(&format!("bidder-{b}")).await;
        for o in 0..ORDERS_EACH {
            let (t, gate, buyer) = (t.clone(), gate.clone(), buyer.clone());
            let price = 50 + ((b * ORDERS_EACH + o) % 500) as i64;
            tasks.push(tokio::spawn(async move {
                let _p = gate.acquire_owned().await.expect("gate");
                let body = json!({"item_id": "ore", "quantity": UNITS, "max_price": price, "deposit": UNITS * price});
                let r = t
                    .send(Method::POST, "/v1/orders", Some(&buyer.token), Some(&key()), Some(body.to_string()))
                    .await;
                assert_eq!(r.status, 201, "{}", r.text);
            }));
        }
    }
    for task in tasks {
        task.await.expect("order");
    }
    let orders = BUYERS * ORDERS_EACH;
    let listings = (orders as i64 * UNITS / LOT) as usize;
    let mut sellers = Vec::new();
    for s in 0..SELLERS {
        sellers.push(t.login(&format!("sweeper-{s}")).await);
    }
    let gate = Arc::new(Semaphore::new(in_flight));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..listings {
        let (t, gate, seller) = (t.clone(), gate.clone(), sellers[n % SELLERS].clone());
        tasks.push(tokio::spawn(async move {
            let _p = gate.acquire_owned().await.expect("gate");
            let body = json!({"item_id": "ore", "quantity": LOT, "price": 10, "deposit": LOT});
            let sent = Instant::now();
            let r = t
                .send(
                    Method::POST,
                    "/v1/listings",
                    Some(&seller.token),
                    Some(&key()),
                    Some(body.to_string()),
                )
                .await;
            assert_eq!(r.status, 201, "{}", r.text);
            let fills = r.body["fills"].as_array().map_or(0, Vec::len);
            (fills, sent.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(listings);
    let mut fills = 0;
    for task in tasks {
        let (n, latency) = task.await.expect("listing");
        fills += n;
        latencies.push(latency);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "{label:<10} {in_flight:>2} in flight {:>6.0} matching transactions/s  {:>7.0} fills/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({listings} listings swept {orders} orders in {fills} fills, {:.1} s)",
        listings as f64 / elapsed.as_secs_f64(),
        fills as f64 / elapsed.as_secs_f64(),
        ms(pct(0.5)),
        ms(pct(0.99)),
        elapsed.as_secs_f64()
    );
    assert_eq!(
        fills, orders,
        "every order filled in one fill of its two units"
    );
    check_books(db).await;
    if in_flight > 1 {
        read_market_data(&t, label).await;
    }
}

/// The shop screen's reads on that item, 10,000 fills behind it: summary,
/// depth and an hourly history, 2,000 each, 16 in flight.
async fn read_market_data(t: &Arc<TestServer>, label: &str) {
    let reader = t.login("market-watcher").await;
    for (what, path) in [
        ("summary", "/v1/market/ore/summary"),
        ("depth", "/v1/market/ore/depth?levels=20"),
        ("history", "/v1/market/ore/history?interval=hour"),
    ] {
        let gate = Arc::new(Semaphore::new(16));
        let started = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..2_000 {
            let (t, gate, token) = (t.clone(), gate.clone(), reader.token.clone());
            tasks.push(tokio::spawn(async move {
                let _p = gate.acquire_owned().await.expect("gate");
                let sent = Instant::now();
                let r = t.send(Method::GET, path, Some(&token), None, None).await;
                assert_eq!(r.status, 200, "{}", r.text);
                sent.elapsed()
            }));
        }
        let mut latencies = Vec::new();
        for task in tasks {
            latencies.push(task.await.expect("read"));
        }
        let elapsed = started.elapsed();
        latencies.sort();
        println!(
            "{label:<10} {what:<8} {:>7.0} requests/s  p50 {:>6.2} ms  p99 {:>6.2} ms  (16 in flight, 2,000 requests)",
            2_000.0 / elapsed.as_secs_f64(),
            latencies[1_000].as_secs_f64() * 1e3,
            latencies[1_980].as_secs_f64() * 1e3
        );
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!(
            "matching: {} resting buy orders on one item, swept by listings of {LOT} units",
            BUYERS * ORDERS_EACH
        );
        for in_flight in [1, 16] {
            let db = TestDb::sqlite().await;
            sweep(&db, "sqlite", in_flight).await;
        }
        match std::env::var("MARKET_BENCH_POSTGRES_URL") {
            Ok(url) => {
                std::env::set_var("MARKET_TEST_POSTGRES_URL", url);
                for in_flight in [1, 16] {
                    let db = TestDb::postgres().await.expect("postgres database");
                    sweep(&db, "postgres", in_flight).await;
                }
            }
            Err(_) => println!(
                "postgres: SKIPPED (set MARKET_BENCH_POSTGRES_URL or use `cargo xtask bench`)"
            ),
        }
    });
}
