//! Test support: a real server on port 0 over a fresh database (a temporary
//! SQLite file, or a new database on the PostgreSQL cluster named by
//! `MARKET_TEST_POSTGRES_URL`), an HTTP client, and invariant checks that read
//! the database directly.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU64, Ordering};

use marketplace_server::{Config, RunningServer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{AnyPool, Connection};

/// Generates one test per backend: `sqlite::name` and `postgres::name`, each
/// calling `name(TestDb)`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    super::$name($crate::support::TestDb::sqlite().await).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $name() {
                    let Some(db) = $crate::support::TestDb::postgres().await else { return };
                    super::$name(db).await
                }
            )*
        }
    };
}

/// A database that lives as long as the test.
pub struct TestDb {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}/market.sqlite", dir.path().display());
        TestDb {
            url,
            _dir: Some(dir),
        }
    }

    /// `None` (and a SKIPPED line) when no PostgreSQL is configured, unless
    /// `MARKET_REQUIRE_POSTGRES` is set, as `cargo xtask test` and CI do.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(admin) = std::env::var("MARKET_TEST_POSTGRES_URL") else {
            if std::env::var_os("MARKET_REQUIRE_POSTGRES").is_some() {
                panic!("MARKET_REQUIRE_POSTGRES is set but MARKET_TEST_POSTGRES_URL is not");
            }
            eprintln!("SKIPPED: PostgreSQL test (set MARKET_TEST_POSTGRES_URL, or run `cargo xtask test`)");
            return None;
        };
        sqlx::any::install_default_drivers();
        let name = format!(
            "market_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        let mut conn = sqlx::AnyConnection::connect(&admin)
            .await
            .expect("connect to the PostgreSQL test cluster");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let _ = conn.close().await;
        let (base, _) = admin.rsplit_once('/').expect("URL has a database");
        Some(TestDb {
            url: format!("{base}/{name}"),
            _dir: None,
        })
    }

    pub fn is_postgres(&self) -> bool {
        self.url.starts_with("postgres")
    }

    pub async fn pool(&self) -> AnyPool {
        sqlx::any::install_default_drivers();
        sqlx::any::AnyPoolOptions::new()
            .max_connections(2)
            .connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

/// An HTTP answer: status, the body as JSON (or `Null`) and its raw text.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub text: String,
    pub headers: reqwest::header::HeaderMap,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

#[derive(Debug, Clone)]
pub struct Player {
    pub id: i64,
    pub token: String,
}

/// A running server and a client for it.
pub struct TestServer {
    pub server: RunningServer,
    pub http: reqwest::Client,
    pub base: String,
}

static KEYS: AtomicU64 = AtomicU64::new(0);

/// A fresh idempotency key.
pub fn key() -> String {
    format!(
        "k-{}-{}",
        KEYS.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>()
    )
}

impl TestServer {
    pub async fn start(db: &TestDb) -> TestServer {
        Self::start_with(Config::for_tests(&db.url)).await
    }

    pub async fn start_with(config: Config) -> TestServer {
        let server = marketplace_server::spawn(config)
            .await
            .expect("server starts");
        let base = server.url();
        TestServer {
            server,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()
                .expect("client"),
            base,
        }
    }

    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<String>,
    ) -> Reply {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(
                marketplace_protocol::PROTOCOL_HEADER,
                marketplace_protocol::PROTOCOL_VERSION,
            );
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        if let Some(body) = body {
            req = req.header("content-type", "application/json").body(body);
        }
        let resp = req.send().await.expect("request reaches the server");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            body,
            text,
            headers,
        }
    }

    pub async fn login(&self, device: &str) -> Player {
        let r = self
            .send(
                reqwest::Method::POST,
                "/v1/sessions",
                None,
                None,
                Some(json!({"device_id": device, "name": device}).to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        Player {
            id: r.body["player_id"].as_i64().expect("player_id"),
            token: r.body["token"].as_str().expect("token").to_string(),
        }
    }

    pub async fn create_listing(&self, seller: &Player, item: &str, price: i64) -> i64 {
        let r = self
            .send(
                reqwest::Method::POST,
                "/v1/listings",
                Some(&seller.token),
                Some(&key()),
                Some(
                    json!({"item_id": item, "quantity": 1, "price": price, "deposit": 1})
                        .to_string(),
                ),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.body["listing"]["id"].as_i64().expect("listing id")
    }

    /// Buys the whole lot at `price` per unit, offering to deposit what
    /// a lot of up to 1,000 units would cost (only the shortfall is taken).
    pub async fn purchase(&self, buyer: &Player, listing: i64, price: i64, key: &str) -> Reply {
        let deposit = price
            .saturating_mul(1000)
            .min(marketplace_protocol::MAX_PRICE);
        self.send(
            reqwest::Method::POST,
            &format!("/v1/listings/{listing}/purchase"),
            Some(&buyer.token),
            Some(key),
            Some(json!({ "expected_price": price, "deposit": deposit }).to_string()),
        )
        .await
    }

    pub async fn reprice(&self, who: &Player, listing: i64, price: i64) -> Reply {
        self.send(
            reqwest::Method::PATCH,
            &format!("/v1/listings/{listing}"),
            Some(&who.token),
            Some(&key()),
            Some(json!({ "price": price }).to_string()),
        )
        .await
    }

    pub async fn cancel(&self, who: &Player, listing: i64) -> Reply {
        self.send(
            reqwest::Method::DELETE,
            &format!("/v1/listings/{listing}"),
            Some(&who.token),
            Some(&key()),
            None,
        )
        .await
    }

    pub async fn get(&self, who: &Player, path: &str) -> Reply {
        self.send(reqwest::Method::GET, path, Some(&who.token), None, None)
            .await
    }

    pub async fn claim(&self, seller: &Player, sale: i64, key: &str) -> Reply {
        self.send(
            reqwest::Method::POST,
            &format!("/v1/sales/{sale}/claim"),
            Some(&seller.token),
            Some(key),
            None,
        )
        .await
    }
}

async fn scalar(pool: &AnyPool, sql: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    n
}

/// Server-side figures of the invariants.
#[derive(Debug, PartialEq, Eq)]
pub struct Books {
    pub sold_listings: i64,
    pub purchases: i64,
    pub purchase_total: i64,
    pub unclaimed_total: i64,
    pub claimed_total: i64,
    pub claim_ledger_total: i64,
    pub fees: i64,
}

/// Checks I1 — every unit is sold at most once: a listing's fills never
/// exceed its quantity and with what remains (or went back) make it up,
/// it is sold exactly when all its units are; the same for buy orders;
/// every fill is within both sides' prices and before both sides expired
/// or closed — and the server's share of I2 (every fill's proceeds are
/// unclaimed, or were claimed exactly once less the fees, as the ledger
/// shows), and the audit (I6). Returns the figures.
pub async fn check_books(db: &TestDb) -> Books {
    let pool = db.pool().await;
    let checks: [(&str, &str); 9] = [
        (
            "I1: a listing's fills and what remains do not make up its quantity",
            "SELECT COUNT(*) FROM listings l WHERE l.quantity <> l.remaining + COALESCE(l.returned, 0)              + (SELECT COALESCE(SUM(p.quantity), 0) FROM purchases p WHERE p.listing_id = l.id)              AND NOT (l.status = 'cancelled' AND l.returned IS NULL)",
        ),
        (
            "I1: a listing sold with units left, or with units left and not active",
            "SELECT COUNT(*) FROM listings WHERE (status = 'sold' AND remaining <> 0) \
             OR (status = 'active' AND remaining = 0) OR (status = 'cancelled' AND remaining <> 0)",
        ),
        (
            "I1: an order's fills and what remains do not make up its quantity",
            "SELECT COUNT(*) FROM orders o WHERE o.quantity <> o.remaining              + (SELECT COALESCE(SUM(p.quantity), 0) FROM purchases p WHERE p.order_id = o.id)",
        ),
        (
            "I1: an order's escrow is not what its remaining units cost",
            "SELECT COUNT(*) FROM orders WHERE (status = 'active' AND escrow <> remaining * max_price)              OR (status <> 'active' AND escrow <> 0) OR (status = 'filled' AND remaining <> 0)",
        ),
        (
            "I1: a fill above its order's price",
            "SELECT COUNT(*) FROM purchases p JOIN orders o ON o.id = p.order_id WHERE p.unit_price > o.max_price",
        ),
        (
            "I1: a fill below every price its listing ever asked",
            "SELECT COUNT(*) FROM purchases p JOIN listings l ON l.id = p.listing_id              WHERE p.unit_price IS NOT NULL AND p.unit_price < l.price              AND p.unit_price < COALESCE(l.listed_price, l.price)              AND NOT EXISTS (SELECT 1 FROM listing_reprices r WHERE r.listing_id = l.id AND r.price <= p.unit_price)",
        ),
        (
            "I1: a fill after its listing or order expired",
            "SELECT COUNT(*) FROM purchases p JOIN listings l ON l.id = p.listing_id              LEFT JOIN orders o ON o.id = p.order_id              WHERE (l.expires_at IS NOT NULL AND p.created_at >= l.expires_at)              OR (o.expires_at IS NOT NULL AND p.created_at >= o.expires_at)",
        ),
        (
            "I1: a fill of an order after it was cancelled",
            "SELECT COUNT(*) FROM purchases p JOIN orders o ON o.id = p.order_id              WHERE o.status = 'cancelled' AND p.created_at > o.updated_at",
        ),
        (
            "I1: a fill whose price is not its units at their price",
            "SELECT COUNT(*) FROM purchases WHERE unit_price IS NOT NULL AND price <> unit_price * quantity",
        ),
    ];
    for (what, sql) in checks {
        assert_eq!(scalar(&pool, sql).await, 0, "{what}");
    }
    let double_claims = scalar(
        &pool,
        "SELECT COUNT(*) FROM (SELECT purchase_id FROM ledger WHERE action = 'claim' \
         GROUP BY purchase_id HAVING COUNT(*) > 1) d",
    )
    .await;
    assert_eq!(double_claims, 0, "I2: proceeds paid out twice");
    let double_collects = scalar(
        &pool,
        "SELECT COUNT(*) FROM (SELECT delivery_id FROM ledger WHERE action = 'collect' \
         GROUP BY delivery_id HAVING COUNT(*) > 1) d",
    )
    .await;
    assert_eq!(double_collects, 0, "I2: a delivery collected twice");
    let books = Books {
        sold_listings: scalar(&pool, "SELECT COUNT(*) FROM listings WHERE status = 'sold'").await,
        purchases: scalar(&pool, "SELECT COUNT(*) FROM purchases").await,
        purchase_total: scalar(&pool, "SELECT CAST(COALESCE(SUM(price), 0) AS BIGINT) FROM purchases").await,
        unclaimed_total: scalar(
            &pool,
            "SELECT CAST(COALESCE(SUM(price), 0) AS BIGINT) FROM purchases WHERE claimed_at IS NULL",
        )
        .await,
        claimed_total: scalar(
            &pool,
            "SELECT CAST(COALESCE(SUM(price - fee), 0) AS BIGINT) FROM purchases WHERE claimed_at IS NOT NULL",
        )
        .await,
        claim_ledger_total: scalar(
            &pool,
            "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM ledger WHERE action = 'claim'",
        )
        .await,
        fees: scalar(&pool, "SELECT CAST(COALESCE(SUM(fee), 0) AS BIGINT) FROM purchases").await,
    };
    assert_eq!(
        books.purchase_total,
        books.unclaimed_total + books.claimed_total + scalar(
            &pool,
            "SELECT CAST(COALESCE(SUM(fee), 0) AS BIGINT) FROM purchases WHERE claimed_at IS NOT NULL",
        )
        .await,
        "I2: purchase money not accounted for"
    );
    assert_eq!(
        books.claimed_total, books.claim_ledger_total,
        "I2: claims vs ledger"
    );
    // I6: the server's own books balance, from the ledger alone.
    let mut conn = pool.acquire().await.expect("connection");
    let audit = marketplace_server::audit_connection(&mut conn)
        .await
        .expect("audit runs");
    assert!(
        audit.ok(),
        "I6: the books do not balance: {:#?}",
        audit.mismatches
    );
    drop(conn);
    pool.close().await;
    books
}

/// Number of rows in `table`.
pub async fn count(db: &TestDb, table: &str) -> i64 {
    let pool = db.pool().await;
    let n = scalar(&pool, &format!("SELECT COUNT(*) FROM {table}")).await;
    pool.close().await;
    n
}

/// Today's UTC date, `YYYY-MM-DD`.
pub fn today() -> String {
    let at = marketplace_server::utc_time(marketplace_server::now_secs());
    at[..10].to_string()
}
