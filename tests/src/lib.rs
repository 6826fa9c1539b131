//! Support for the end-to-end suites: the built `marketplace-server`
//! binary run as a real process (black-box HTTP, replicas, SIGKILL), fresh
//! databases, and a small HTTP client speaking the marketplace API.
//!
//! The suites themselves are in `tests/tests/`. They need nothing outside
//! the workspace except PostgreSQL for the replica suite, which reads
//! `MARKET_TEST_POSTGRES_URL` (set by `cargo xtask test`).

pub mod godot;
pub mod webdriver;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{json, Value};

/// The `marketplace-server` binary: `MARKET_SERVER_BIN` when set, else
/// built now (in this test run's profile) with the cargo that runs the tests.
pub fn server_binary() -> PathBuf {
    if let Some(bin) = std::env::var_os("MARKET_SERVER_BIN") {
        return PathBuf::from(bin);
    }
    build(
        &["-p", "marketplace-server", "--bin", "marketplace-server"],
        &format!("marketplace-server{}", std::env::consts::EXE_SUFFIX),
    )
}

/// The addon library (`marketplace-godot`'s cdylib) for this machine, built
/// now in this test run's profile.
pub fn addon_library() -> PathBuf {
    build(
        &["-p", "marketplace-godot", "--lib"],
        &format!(
            "{}trading_marketplace{}",
            std::env::consts::DLL_PREFIX,
            std::env::consts::DLL_SUFFIX
        ),
    )
}

/// Runs `cargo build` with `args` in this test run's profile (the lock is
/// free while tests run) and returns the path of `file` it made.
fn build(args: &[&str], file: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo);
    cmd.arg("build").arg("-q").args(args);
    if release {
        cmd.arg("--release");
    }
    let status = cmd
        .current_dir(workspace_root())
        .status()
        .expect("cargo runs");
    assert!(status.success(), "cargo build {args:?} failed");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let built = target
        .join(if release { "release" } else { "debug" })
        .join(file);
    assert!(built.exists(), "{} was not built", built.display());
    built
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// A `marketplace-server` process.
pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// Its log lines, as they come.
    pub log: mpsc::Receiver<String>,
}

pub const TEST_SECRET: &str = "e2e-secret-e2e-secret-e2e-secret-xx";

impl ServerProcess {
    /// Starts the binary on a free port with `database` and `extra` flags,
    /// and waits until it serves.
    pub fn start(database: &str, extra: &[&str]) -> ServerProcess {
        let mut child = Command::new(server_binary())
            .args(["--listen", "127.0.0.1:0", "--database", database])
            .args(["--token-secret", TEST_SECRET, "--rate-limit-per-sec", "0"])
            .args(extra)
            .env("NO_COLOR", "1")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server binary starts");
        let (tx, log) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        let addr = loop {
            let line = match log.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => line,
                Err(_) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("the server exited with {status}: {seen:#?}");
                    }
                    assert!(std::time::Instant::now() < deadline, "no start: {seen:#?}");
                    continue;
                }
            };
            if line.contains("marketplace serving") {
                if let Some(addr) = field(&line, "addr=").and_then(|a| a.parse().ok()) {
                    break addr;
                }
            }
            seen.push(line);
        };
        ServerProcess { child, addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the exit; returns whether it was clean.
    pub fn terminate(&mut self) -> bool {
        #[cfg(unix)]
        {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
        }
        #[cfg(not(unix))]
        {
            let _ = self.child.kill();
        }
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value after `key` in a log line, up to the next space.
fn field(line: &str, key: &str) -> Option<String> {
    let start = line.find(key)? + key.len();
    Some(
        line[start..]
            .split_whitespace()
            .next()?
            .trim_matches('"')
            .to_string(),
    )
}

/// A fresh database: a SQLite file in `dir`, or a new database on the
/// PostgreSQL cluster of `MARKET_TEST_POSTGRES_URL` (`None`, after a
/// SKIPPED line, when there is none and `MARKET_REQUIRE_POSTGRES` is unset).
pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/market.sqlite", dir.path().display())
}

pub async fn postgres_url(what: &str) -> Option<String> {
    let Ok(admin) = std::env::var("MARKET_TEST_POSTGRES_URL") else {
        if std::env::var_os("MARKET_REQUIRE_POSTGRES").is_some() {
            panic!("MARKET_REQUIRE_POSTGRES is set but MARKET_TEST_POSTGRES_URL is not");
        }
        eprintln!("SKIPPED: {what} on PostgreSQL (set MARKET_TEST_POSTGRES_URL, or run `cargo xtask test`)");
        return None;
    };
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let name = format!("e2e_{}_{}", std::process::id(), rand::random::<u32>());
    let mut conn = sqlx::AnyConnection::connect(&admin)
        .await
        .expect("connect to the PostgreSQL test cluster");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create database");
    let _ = conn.close().await;
    let (base, _) = admin.rsplit_once('/').expect("URL has a database");
    Some(format!("{base}/{name}"))
}

/// One integer from the database.
pub async fn scalar(database: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(database)
        .await
        .expect("connect");
    let (n,): (i64,) = sqlx::query_as(sql)
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
    n
}

/// I1 and the server's half of I2, read from the database.
pub async fn check_books(database: &str) {
    // I1 per unit: every listing's and every buy order's fills and what
    // remains (or went back) make up its quantity; a listing is sold
    // exactly when nothing remains; no fill above its order's price.
    let checks = [
        ("I1: a listing's fills do not add up", "SELECT COUNT(*) FROM listings l WHERE l.quantity <> l.remaining + COALESCE(l.returned, 0) \
            + (SELECT COALESCE(SUM(p.quantity), 0) FROM purchases p WHERE p.listing_id = l.id) \
            AND NOT (l.status = 'cancelled' AND l.returned IS NULL)"),
        ("I1: sold with units left, or active with none", "SELECT COUNT(*) FROM listings WHERE (status = 'sold' AND remaining <> 0) OR (status = 'active' AND remaining = 0)"),
        ("I1: an order's fills do not add up", "SELECT COUNT(*) FROM orders o WHERE o.quantity <> o.remaining \
            + (SELECT COALESCE(SUM(p.quantity), 0) FROM purchases p WHERE p.order_id = o.id)"),
        ("I1: a fill above its order's price", "SELECT COUNT(*) FROM purchases p JOIN orders o ON o.id = p.order_id WHERE p.unit_price > o.max_price"),
        ("I1: an order's escrow is not what its units cost", "SELECT COUNT(*) FROM orders WHERE (status = 'active' AND escrow <> remaining * max_price) OR (status <> 'active' AND escrow <> 0)"),
    ];
    for (what, sql) in checks {
        assert_eq!(scalar(database, sql).await, 0, "{what}");
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// Speaks the marketplace API to any server URL.
#[derive(Clone)]
pub struct Api {
    pub http: reqwest::Client,
}

impl Default for Api {
    fn default() -> Self {
        Api {
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .timeout(Duration::from_secs(20))
                .build()
                .expect("client"),
        }
    }
}

impl Api {
    pub async fn send(
        &self,
        base: &str,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        key: Option<&str>,
        body: Option<Value>,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self.http.request(method, format!("{base}{path}"));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(key) = key {
            req = req.header("idempotency-key", key);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        Ok(Reply {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        })
    }

    /// Logs in; returns (player id, token).
    pub async fn login(&self, base: &str, device: &str) -> (i64, String) {
        let r = self
            .send(
                base,
                reqwest::Method::POST,
                "/v1/sessions",
                None,
                None,
                Some(json!({"device_id": device, "name": device})),
            )
            .await
            .expect("login reaches the server");
        assert_eq!(r.status, 200, "{}", r.text);
        (
            r.body["player_id"].as_i64().expect("player_id"),
            r.body["token"].as_str().expect("token").to_string(),
        )
    }

    pub async fn create_listing(&self, base: &str, token: &str, item: &str, price: i64) -> i64 {
        let r = self
            .send(
                base,
                reqwest::Method::POST,
                "/v1/listings",
                Some(token),
                Some(&key()),
                Some(json!({"item_id": item, "quantity": 1, "price": price, "deposit": 1})),
            )
            .await
            .expect("listing reaches the server");
        assert_eq!(r.status, 201, "{}", r.text);
        r.body["listing"]["id"].as_i64().expect("listing id")
    }

    pub async fn purchase(
        &self,
        base: &str,
        token: &str,
        listing: i64,
        price: i64,
        key: &str,
    ) -> Result<Reply, reqwest::Error> {
        self.send(
            base,
            reqwest::Method::POST,
            &format!("/v1/listings/{listing}/purchase"),
            Some(token),
            Some(key),
            Some(json!({ "expected_price": price, "deposit": price })),
        )
        .await
    }
}

/// A fresh idempotency key.
pub fn key() -> String {
    format!(
        "e2e-{:016x}{:08x}",
        rand::random::<u64>(),
        rand::random::<u32>()
    )
}
