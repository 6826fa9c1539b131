//! The old design against this one, on the same machine, in one run.
//!
//! ```text
//! cargo bench -p marketplace-sim --bench baseline
//! ```
//! 1. Correctness: 10 buyers hit one listing at the same moment, on the old
//!    read-modify-write JSON backend (requests handled concurrently, as
//!    several serverless instances would) and on this server. Repeated 20
//!    times; prints how many times each sold one item.
//! 2. Throughput: 2,000 purchase attempts over 500 listings (4 buyers each),
//!    the old backend one request at a time (one instance) vs this server
//!    (SQLite, synchronous=FULL) with 32 requests in flight.

use std::sync::Arc;
use std::time::{Duration, Instant};

use marketplace_server::Config;
use marketplace_sim::baseline;
use serde_json::json;
use tokio::sync::{Barrier, Semaphore};

const LISTINGS: usize = 500;
const BUYERS_PER_LISTING: usize = 4;

async fn login(http: &reqwest::Client, base: &str, device: &str) -> String {
    let r: serde_json::Value = http
        .post(format!("{base}/v1/sessions"))
        .json(&json!({"device_id": device, "name": device}))
        .send()
        .await
        .expect("login")
        .json()
        .await
        .expect("session");
    r["token"].as_str().expect("token").to_string()
}

async fn new_listing(http: &reqwest::Client, base: &str, token: &str, key: &str) -> i64 {
    let r: serde_json::Value = http
        .post(format!("{base}/v1/listings"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({"item_id": "relic", "quantity": 1, "price": 100, "deposit": 1}))
        .send()
        .await
        .expect("list")
        .json()
        .await
        .expect("listing");
    r["listing"]["id"].as_i64().expect("id")
}

async fn buy_new(http: &reqwest::Client, base: &str, token: &str, listing: i64, key: &str) -> u16 {
    http.post(format!("{base}/v1/listings/{listing}/purchase"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&json!({"expected_price": 100, "deposit": 100}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

async fn buy_old(http: &reqwest::Client, base: &str, listing: i64, buyer: &str) -> u16 {
    http.post(format!("{base}/purchase/{listing}"))
        .json(&json!({"buyer": buyer}))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let dir = tempfile::tempdir().expect("temp dir");
        let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().expect("client");

        // The new server.
        let mut config = Config::for_tests(format!("sqlite://{}/market.sqlite", dir.path().display()));
        config.sqlite_sync = marketplace_server::config::SqliteSync::Full;
        let server = marketplace_server::spawn(config).await.expect("server");
        let base = server.url();
        let seller = login(&http, &base, "seller").await;
        let mut buyers = Vec::new();
        for i in 0..10 {
            buyers.push(login(&http, &base, &format!("buyer-{i}")).await);
        }

        // 1. Ten buyers at once, 20 times.
        let mut old_sales = Vec::new();
        let mut new_sales = Vec::new();
        for round in 0..20 {
            let (addr, task) = baseline::start(dir.path().join(format!("old-{round}.json")), 1, 100, false)
                .await
                .expect("old backend");
            let old_base = format!("http://{addr}");
            let barrier = Arc::new(Barrier::new(10));
            let tasks: Vec<_> = (0..10)
                .map(|b| {
                    let (http, old_base, barrier) = (http.clone(), old_base.clone(), barrier.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        buy_old(&http, &old_base, 1, &format!("buyer-{b}")).await
                    })
                })
                .collect();
            let mut ok = 0;
            for t in tasks {
                ok += usize::from(t.await.expect("task") == 200);
            }
            old_sales.push(ok);
            task.abort();

            let listing = new_listing(&http, &base, &seller, &format!("l-{round}")).await;
            let barrier = Arc::new(Barrier::new(10));
            let tasks: Vec<_> = buyers
                .iter()
                .enumerate()
                .map(|(b, token)| {
                    let (http, base, barrier, token) = (http.clone(), base.clone(), barrier.clone(), token.clone());
                    tokio::spawn(async move {
                        barrier.wait().await;
                        buy_new(&http, &base, &token, listing, &format!("r{round}-b{b}")).await
                    })
                })
                .collect();
            let mut ok = 0;
            for t in tasks {
                ok += usize::from(t.await.expect("task") == 200);
            }
            new_sales.push(ok);
        }
        let oversold = old_sales.iter().filter(|&&n| n > 1).count();
        println!("10 buyers, 1 item, at the same moment (20 rounds):");
        println!(
            "  old JSON read-modify-write: sold {:?} times per round -> {} of 20 rounds sold the item more than once (max {})",
            old_sales,
            oversold,
            old_sales.iter().max().unwrap_or(&0)
        );
        println!("  this server:                sold {:?} times per round", new_sales);

        // 2. Throughput.
        let (addr, task) = baseline::start(dir.path().join("old-big.json"), LISTINGS, 100, true)
            .await
            .expect("old backend");
        let old_base = format!("http://{addr}");
        let started = Instant::now();
        let mut attempts = 0;
        for listing in 1..=LISTINGS as i64 {
            for b in 0..BUYERS_PER_LISTING {
                buy_old(&http, &old_base, listing, &format!("buyer-{b}")).await;
                attempts += 1;
            }
        }
        let old_rate = attempts as f64 / started.elapsed().as_secs_f64();
        task.abort();

        let mut listings = Vec::new();
        for i in 0..LISTINGS {
            listings.push(new_listing(&http, &base, &seller, &format!("big-{i}")).await);
        }
        let started = Instant::now();
        let gate = Arc::new(Semaphore::new(32));
        let mut tasks = Vec::new();
        for (i, &listing) in listings.iter().enumerate() {
            for (b, token) in buyers.iter().take(BUYERS_PER_LISTING).enumerate() {
                let (http, base, gate, token) = (http.clone(), base.clone(), gate.clone(), token.clone());
                tasks.push(tokio::spawn(async move {
                    let _permit = gate.acquire_owned().await.expect("gate");
                    buy_new(&http, &base, &token, listing, &format!("big-{i}-{b}")).await
                }));
            }
        }
        let mut wins = 0;
        for t in tasks {
            wins += usize::from(t.await.expect("task") == 200);
        }
        let new_rate = (LISTINGS * BUYERS_PER_LISTING) as f64 / started.elapsed().as_secs_f64();
        assert_eq!(wins, LISTINGS, "one winner per listing");
        println!("{} purchase attempts over {LISTINGS} listings:", LISTINGS * BUYERS_PER_LISTING);
        println!("  old JSON backend, one request at a time: {old_rate:>8.0} attempts/s");
        println!(
            "  this server (SQLite FULL, 32 in flight): {new_rate:>8.0} attempts/s  ({:.1}x)",
            new_rate / old_rate
        );
        server.shutdown().await;
        let _ = Duration::ZERO;
    });
}
