//! Contended purchase throughput and latency, SQLite and PostgreSQL.
//!
//! ```text
//! cargo bench -p marketplace-server --bench purchase_contention
//! MARKET_BENCH_POSTGRES_URL=postgres://… cargo bench -p marketplace-server --bench purchase_contention
//! ```
//! (`cargo xtask bench` starts a PostgreSQL cluster with fsync on and passes
//! its URL.) Each round lists `LISTINGS` items and lets `BUYERS` buyers race
//! for every one of them, 32 or 64 requests in flight at a time, from a
//! client in the same process. It prints attempts per second and latency
//! percentiles, and checks that each listing was sold exactly once.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use marketplace_server::config::SqliteSync;
use marketplace_server::Config;
use support::{check_books, key, TestDb, TestServer};
use tokio::sync::Semaphore;

const LISTINGS: usize = 500;
const BUYERS: usize = 20;

struct Figures {
    attempts: usize,
    wins: usize,
    elapsed: Duration,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

async fn round(db: &TestDb, sync: SqliteSync, concurrency: usize) -> Figures {
    let mut config = Config::for_tests(&db.url);
    config.sqlite_sync = sync;
    let t = Arc::new(TestServer::start_with(config).await);
    let seller = t.login("seller").await;
    let mut buyers = Vec::new();
    for i in 0..BUYERS {
        buyers.push(t.login(&format!("buyer-{i}")).await);
    }
    let mut listings = Vec::new();
    for i in 0..LISTINGS {
        listings.push(t.create_listing(&seller, &format!("item-{i}"), 100).await);
    }
    // Interleave buyers so that the BUYERS attempts on one listing are in
    // flight together.
    let mut work = Vec::new();
    for &listing in &listings {
        for buyer in &buyers {
            work.push((listing, buyer.clone()));
        }
    }
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(work.len());
    for (listing, buyer) in work {
        let (t, gate) = (t.clone(), gate.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.expect("semaphore open");
            let sent = Instant::now();
            let r = t.purchase(&buyer, listing, 100, &key()).await;
            (r.status.as_u16(), sent.elapsed())
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut wins = 0;
    for task in tasks {
        let (status, latency) = task.await.expect("task");
        assert!(status == 200 || status == 409, "unexpected status {status}");
        wins += usize::from(status == 200);
        latencies.push(latency);
    }
    let elapsed = started.elapsed();
    assert_eq!(wins, LISTINGS, "exactly one winner per listing");
    assert_eq!(check_books(db).await.purchases, LISTINGS as i64);
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    Figures {
        attempts: latencies.len(),
        wins,
        elapsed,
        p50: pct(0.50),
        p99: pct(0.99),
        max: latencies[latencies.len() - 1],
    }
}

fn print(label: &str, f: &Figures) {
    println!(
        "{label:<28} {:>7.0} attempts/s  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>6.2} ms  ({} attempts, {} sold, {:.2} s)",
        f.attempts as f64 / f.elapsed.as_secs_f64(),
        f.p50.as_secs_f64() * 1e3,
        f.p99.as_secs_f64() * 1e3,
        f.max.as_secs_f64() * 1e3,
        f.attempts,
        f.wins,
        f.elapsed.as_secs_f64()
    );
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench` absent; do nothing then.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        println!("contended purchases: {LISTINGS} listings x {BUYERS} buyers each");
        for (label, sync, concurrency) in [
            ("sqlite FULL, 32 in flight", SqliteSync::Full, 32),
            ("sqlite FULL, 64 in flight", SqliteSync::Full, 64),
            ("sqlite NORMAL, 64 in flight", SqliteSync::Normal, 64),
        ] {
            let db = TestDb::sqlite().await;
            print(label, &round(&db, sync, concurrency).await);
        }
        match std::env::var("MARKET_BENCH_POSTGRES_URL") {
            Ok(url) => {
                std::env::set_var("MARKET_TEST_POSTGRES_URL", url);
                let db = TestDb::postgres().await.expect("postgres database");
                print(
                    "postgres, 64 in flight",
                    &round(&db, SqliteSync::Full, 64).await,
                );
            }
            Err(_) => println!(
                "postgres: SKIPPED (set MARKET_BENCH_POSTGRES_URL or use `cargo xtask bench`)"
            ),
        }
    });
}
