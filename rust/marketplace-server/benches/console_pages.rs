//! The operator console's pages with a million ledger rows: each page's
//! time to answer, SQLite (and PostgreSQL with `MARKET_BENCH_POSTGRES_URL`).
//!
//! ```text
//! cargo bench -p marketplace-server --bench console_pages
//! ```
//! Seeds 2,000 players and 1,000,000 ledger rows (sessions, listings and
//! purchases over 100 items) straight into the database, signs in, then
//! asks each page 20 times and prints the median and the slowest.

use std::time::{Duration, Instant};

use marketplace_server::Config;

const ROWS: i64 = 1_000_000;
const ADMIN: &str = "bench-admin-key-bench-admin-key-bench-admin";

async fn seed(url: &str, postgres: bool) {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    let players = if postgres {
        "INSERT INTO players (device_id, name, created_at) SELECT 'sha256:bench' || g, 'pilot-' || g, 0 FROM generate_series(1, 2000) g".to_string()
    } else {
        "WITH RECURSIVE g(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM g WHERE x < 2000) \
         INSERT INTO players (device_id, name, created_at) SELECT 'sha256:bench' || x, 'pilot-' || x, 0 FROM g".to_string()
    };
    sqlx::query(&players).execute(&mut conn).await.unwrap();
    let ledger = |from: i64, to: i64| {
        let body = "(x % 2000) + 1, CASE x % 3 WHEN 0 THEN 'session' WHEN 1 THEN 'list' ELSE 'purchase' END, \
                    'item-' || (x % 100), 'bench-' || x";
        if postgres {
            format!("INSERT INTO ledger (at, player_id, action, item_id, request_id) SELECT x, {body} FROM generate_series({from}, {to}) x")
        } else {
            format!("WITH RECURSIVE g(x) AS (SELECT {from} UNION ALL SELECT x + 1 FROM g WHERE x < {to}) \
                     INSERT INTO ledger (at, player_id, action, item_id, request_id) SELECT x, {body} FROM g")
        }
    };
    let mut at = 1;
    while at <= ROWS {
        let to = (at + 99_999).min(ROWS);
        sqlx::query(&ledger(at, to))
            .execute(&mut conn)
            .await
            .unwrap();
        at = to + 1;
    }
    sqlx::query("ANALYZE").execute(&mut conn).await.unwrap();
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut databases = vec![(
        "SQLite",
        format!("sqlite://{}/bench.sqlite", dir.path().display()),
        false,
    )];
    if let Ok(url) = std::env::var("MARKET_BENCH_POSTGRES_URL") {
        databases.push(("PostgreSQL", url, true));
    }
    println!("Console pages over {ROWS} ledger rows, 20 requests each");
    println!("| database | page | median | slowest |");
    println!("|---|---|---:|---:|");
    for (name, url, postgres) in databases {
        let mut config = Config::for_tests(url.clone());
        config.admin_key = Some(ADMIN.into());
        // Migrate first, then seed, then serve.
        let server = rt
            .block_on(marketplace_server::spawn(config.clone()))
            .unwrap();
        rt.block_on(seed(&url, postgres));
        let base = server.url();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let cookie = rt.block_on(async {
            let r = http
                .post(format!("{base}/console/login"))
                .form(&[("key", ADMIN)])
                .send()
                .await
                .unwrap();
            r.headers()["set-cookie"]
                .to_str()
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .to_string()
        });
        for page in [
            "/console/",
            "/console/players?q=pilot-17",
            "/console/players/17",
            "/console/players/17?before=500000",
            "/console/ledger",
            "/console/ledger?item=item-42",
            "/console/ledger?action=purchase&before=700000",
            "/console/ledger?player=99&item=item-99",
            "/console/listings?status=all",
        ] {
            let mut times: Vec<Duration> = (0..20)
                .map(|_| {
                    rt.block_on(async {
                        let t0 = Instant::now();
                        let r = http
                            .get(format!("{base}{page}"))
                            .header("cookie", &cookie)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(r.status(), 200, "{page}");
                        r.bytes().await.unwrap();
                        t0.elapsed()
                    })
                })
                .collect();
            times.sort();
            println!(
                "| {name} | `{page}` | {:.1?} | {:.1?} |",
                times[10], times[19]
            );
        }
        rt.block_on(server.shutdown());
    }
}
