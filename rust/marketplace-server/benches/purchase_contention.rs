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
//!
//! Two more rounds: one while the pruner deletes a million expired stored
//! answers (it goes in chunks between write batches, so purchases should
//! barely notice), and on PostgreSQL one through two server replicas
//! sharing the database (requests alternate between them).

#[path = "../tests/it/support/mod.rs"]
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

/// Inserts `n` stored answers that expired long ago.
async fn expired_answers(db: &TestDb, n: usize) {
    let pool = db.pool().await;
    let old = marketplace_server::now_secs() - 30 * 24 * 3600;
    let sql = if db.is_postgres() {
        format!(
            "INSERT INTO idempotency_keys (player_id, idem_key, request_hash, status_code, response_body, created_at) \
             SELECT 0, 'old-' || g, 'h', 200, '{{}}', {old} FROM generate_series(1, {n}) g"
        )
    } else {
        format!(
            "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < {n}) \
             INSERT INTO idempotency_keys (player_id, idem_key, request_hash, status_code, response_body, created_at) \
             SELECT 0, 'old-' || x, 'h', 200, '{{}}', {old} FROM g"
        )
    };
    sqlx::query(&sql)
        .execute(&pool)
        .await
        .expect("insert expired answers");
    pool.close().await;
}

async fn round(db: &TestDb, sync: SqliteSync, concurrency: usize) -> Figures {
    round_with(db, sync, concurrency, 1, 0).await
}

/// A round through `replicas` servers on `db`, with `expired` expired
/// answers being pruned meanwhile.
async fn round_with(
    db: &TestDb,
    sync: SqliteSync,
    concurrency: usize,
    replicas: usize,
    expired: usize,
) -> Figures {
    let mut config = Config::for_tests(&db.url);
    config.sqlite_sync = sync;
    let mut servers = Vec::new();
    for _ in 0..replicas.max(1) {
        servers.push(Arc::new(TestServer::start_with(config.clone()).await));
    }
    let t = servers[0].clone();
    if expired > 0 {
        expired_answers(db, expired).await;
    }
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
    let pruning = (expired > 0).then(|| {
        let t = t.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let n = t.server.prune_now().await.expect("prune");
            (n, started.elapsed())
        })
    });
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(work.len());
    for (n, (listing, buyer)) in work.into_iter().enumerate() {
        let (t, gate) = (servers[n % servers.len()].clone(), gate.clone());
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
    if let Some(pruning) = pruning {
        let (n, took) = pruning.await.expect("pruner");
        println!(
            "  (pruned {n} expired answers in {:.1} s meanwhile)",
            took.as_secs_f64()
        );
    }
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
        let db = TestDb::sqlite().await;
        let f = round_with(&db, SqliteSync::Full, 32, 1, 1_000_000).await;
        print("sqlite FULL, 32, pruning 1M", &f);
        match std::env::var("MARKET_BENCH_POSTGRES_URL") {
            Ok(url) => {
                std::env::set_var("MARKET_TEST_POSTGRES_URL", url);
                let db = TestDb::postgres().await.expect("postgres database");
                print(
                    "postgres, 64 in flight",
                    &round(&db, SqliteSync::Full, 64).await,
                );
                let db = TestDb::postgres().await.expect("postgres database");
                print(
                    "postgres, 2 replicas, 64",
                    &round_with(&db, SqliteSync::Full, 64, 2, 0).await,
                );
            }
            Err(_) => println!(
                "postgres: SKIPPED (set MARKET_BENCH_POSTGRES_URL or use `cargo xtask bench`)"
            ),
        }
    });
}
