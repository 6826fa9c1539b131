//! The server on the open internet: slow and half-open clients, made-up
//! methods, a load balancer in front, a million callers, a writer that
//! dies, a million expired answers, a leaked database.

use std::time::{Duration, Instant};

use crate::support::{check_books, count, key, TestDb, TestServer};
use marketplace_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

backend_tests!(
    made_up_methods_do_not_grow_the_metrics,
    sales_are_paged,
    device_ids_are_stored_hashed,
    pruning_goes_in_chunks_and_writes_go_on,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_open_connections_are_closed_and_others_served_throughout() {
    let db = TestDb::sqlite().await;
    let mut config = Config::for_tests(&db.url);
    config.header_timeout_secs = 2;
    let t = TestServer::start_with(config).await;
    let addr = t.server.addr();
    // 2,000 clients that send half a request line and stop.
    let mut idle = Vec::new();
    for _ in 0..2_000 {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /heal").await.expect("write");
        idle.push(s);
    }
    // A normal client is served all along.
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_millis(2_500) {
        let r = t.send(Method::GET, "/healthz", None, None, None).await;
        assert_eq!(r.status, StatusCode::OK);
        served += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(served >= 10);
    // After the header timeout every half-open socket was closed by the server.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    let mut closed = 0;
    for s in &mut idle {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(_)) | Ok(Err(_)) => closed += 1, // EOF, an error answer, or a reset
            Err(_) => {}                           // still open
        }
    }
    assert_eq!(closed, 2_000, "every half-open connection was closed");
    let r = t.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_their_turn() {
    let db = TestDb::sqlite().await;
    let mut config = Config::for_tests(&db.url);
    config.max_connections = 5;
    config.header_timeout_secs = 1;
    let t = TestServer::start_with(config).await;
    let mut hogs = Vec::new();
    for _ in 0..5 {
        let mut s = tokio::net::TcpStream::connect(t.server.addr())
            .await
            .unwrap();
        s.write_all(b"GET /").await.unwrap();
        hogs.push(s);
    }
    // The sixth waits in the accept queue until the hogs time out, then is served.
    let started = Instant::now();
    let r = t.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it had to wait"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_cannot_fill_the_connection_cap() {
    let db = TestDb::sqlite().await;
    let mut config = Config::for_tests(&db.url);
    config.max_connections_per_ip = 3;
    config.header_timeout_secs = 1;
    let t = TestServer::start_with(config).await;
    let mut hogs = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(t.server.addr())
            .await
            .unwrap();
        s.write_all(b"GET /").await.unwrap();
        hogs.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A fourth connection from the same address is closed at once.
    let mut fourth = tokio::net::TcpStream::connect(t.server.addr())
        .await
        .unwrap();
    let _ = fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_millis(500), fourth.read(&mut buf))
        .await
        .expect("closed at once, not after the header timeout");
    assert!(matches!(n, Ok(0) | Err(_)), "closed without an answer");
    // Once the hogs time out, the address is served again.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let r = t.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK);
}

async fn made_up_methods_do_not_grow_the_metrics(db: TestDb) {
    let t = TestServer::start(&db).await;
    // Every series the loop below can touch exists once already.
    let junk = Method::from_bytes(b"JUNK").unwrap();
    let _ = t.send(junk, "/nowhere", None, None, None).await;
    let _ = t.send(Method::GET, "/metrics", None, None, None).await;
    let before = t
        .send(Method::GET, "/metrics", None, None, None)
        .await
        .text
        .len();
    for i in 0..300 {
        let method = Method::from_bytes(format!("JUNK{i}").as_bytes()).unwrap();
        let _ = t
            .send(method, &format!("/nowhere/{i}"), None, None, None)
            .await;
    }
    let after = t.send(Method::GET, "/metrics", None, None, None).await;
    assert!(
        after.text.len() < before + 100,
        "metrics grew from {before} to {} bytes",
        after.text.len()
    );
    assert!(
        after
            .text
            .contains(r#"method="other",route="unmatched",status="404"} 301"#),
        "{}",
        after.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_can_have_a_listener_of_their_own() {
    let db = TestDb::sqlite().await;
    let mut config = Config::for_tests(&db.url);
    config.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let t = TestServer::start_with(config).await;
    let r = t.send(Method::GET, "/metrics", None, None, None).await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "not on the public listener"
    );
    let metrics = t.server.metrics_addr().expect("metrics listener");
    let r = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("market_http_requests_total"));
}

async fn login_from(t: &TestServer, device: &str, forwarded_for: &str) -> StatusCode {
    t.http
        .post(format!("{}/v1/sessions", t.base))
        .header("x-forwarded-for", forwarded_for)
        .json(&json!({"device_id": device, "name": device}))
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_behind_a_trusted_balancer_are_limited_per_client() {
    let db = TestDb::sqlite().await;
    let mut config = Config::for_tests(&db.url);
    config.rate_limit_per_sec = 0.1;
    config.rate_limit_burst = 2;
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    let t = TestServer::start_with(config).await;
    // Twenty players behind the balancer: each has a bucket of its own.
    for i in 0..20 {
        let ip = format!("203.0.113.{i}");
        assert_eq!(login_from(&t, &format!("d{i}"), &ip).await, StatusCode::OK);
        assert_eq!(login_from(&t, &format!("d{i}"), &ip).await, StatusCode::OK);
    }
    // One of them, a third time: limited.
    assert_eq!(
        login_from(&t, "d0", "203.0.113.0").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // IPv6 clients are one bucket per /64.
    assert_eq!(
        login_from(&t, "v6a", "2001:db8:1:2::1").await,
        StatusCode::OK
    );
    assert_eq!(
        login_from(&t, "v6b", "2001:db8:1:2::ffff").await,
        StatusCode::OK
    );
    assert_eq!(
        login_from(&t, "v6c", "2001:db8:1:2:abcd::9").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // Without trusting the balancer, the header is ignored: one bucket for all.
    let db2 = TestDb::sqlite().await;
    let mut config = Config::for_tests(&db2.url);
    config.rate_limit_per_sec = 0.1;
    config.rate_limit_burst = 2;
    let t2 = TestServer::start_with(config).await;
    assert_eq!(login_from(&t2, "a", "198.51.100.1").await, StatusCode::OK);
    assert_eq!(login_from(&t2, "b", "198.51.100.2").await, StatusCode::OK);
    assert_eq!(
        login_from(&t2, "c", "198.51.100.3").await,
        StatusCode::TOO_MANY_REQUESTS
    );
}

async fn sales_are_paged(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    for i in 0..7 {
        let l = t.create_listing(&seller, "ore", 10 + i).await;
        assert_eq!(
            t.purchase(&buyer, l, 10 + i, &key()).await.status,
            StatusCode::OK
        );
    }
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let r = t
            .get(
                &seller,
                &format!("/v1/me/sales?claimed=false&limit=3&cursor={cursor}"),
            )
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        let page = r.body["sales"].as_array().unwrap();
        assert!(page.len() <= 3);
        seen.extend(page.iter().map(|s| s["id"].as_i64().unwrap()));
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    let r = t.get(&seller, "/v1/me/sales?limit=0").await;
    assert_eq!(r.code(), "invalid_request");
    let r = t.get(&seller, "/v1/me/sales?cursor=abc").await;
    assert_eq!(r.code(), "invalid_request");
}

async fn device_ids_are_stored_hashed(db: TestDb) {
    let t = TestServer::start(&db).await;
    let p = t.login("dev-secret-1234").await;
    let pool = db.pool().await;
    let stored: Vec<(String,)> = sqlx::query_as("SELECT device_id FROM players")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|(d,)| d.starts_with("sha256:") && !d.contains("secret")),
        "{stored:?}"
    );
    // A save from before hashing: a plain device id in the table. The
    // migration hashes it, and its player logs in as before.
    sqlx::query(
        "INSERT INTO players (device_id, name, created_at) VALUES ('legacy-device', 'old', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    let (legacy_id,): (i64,) =
        sqlx::query_as("SELECT id FROM players WHERE device_id = 'legacy-device'")
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::query("DELETE FROM schema_migrations WHERE version = 3")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    t.server.shutdown().await;
    let t = TestServer::start(&db).await;
    assert_eq!(t.login("legacy-device").await.id, legacy_id);
    assert_eq!(t.login("dev-secret-1234").await.id, p.id);
    assert_eq!(count(&db, "players").await, 2);
}

async fn pruning_goes_in_chunks_and_writes_go_on(db: TestDb) {
    let mut config = Config::for_tests(&db.url);
    config.idempotency_retention_hours = 24;
    let t = TestServer::start_with(config).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    // 20,000 expired answers, written straight into the table.
    let pool = db.pool().await;
    let old = marketplace_server::now_secs() - 3 * 24 * 3600;
    for chunk in 0..200 {
        let values: Vec<String> = (0..100)
            .map(|i| format!("(1, 'old-{chunk}-{i}', 'h', 200, '{{}}', {old})"))
            .collect();
        sqlx::query(&format!(
            "INSERT INTO idempotency_keys (player_id, idem_key, request_hash, status_code, response_body, created_at) VALUES {}",
            values.join(",")
        ))
        .execute(&pool)
        .await
        .unwrap();
    }
    pool.close().await;
    let listing = t.create_listing(&seller, "ore", 5).await;
    let k = key();
    // The prune goes chunk by chunk, so a purchase sent once it started is
    // answered before it ends (one unbounded DELETE would hold it back).
    let order = std::sync::Mutex::new(Vec::new());
    let prune = async {
        let n = t.server.prune_now().await;
        order.lock().unwrap().push("prune");
        n
    };
    let buy = async {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let r = t.purchase(&buyer, listing, 5, &k).await;
        order.lock().unwrap().push("purchase");
        r
    };
    let (pruned, bought) = tokio::join!(prune, buy);
    assert_eq!(pruned.unwrap(), 20_000);
    assert_eq!(bought.status, StatusCode::OK);
    assert_eq!(order.into_inner().unwrap(), ["purchase", "prune"]);
    // The fresh answers stay.
    assert!(count(&db, "idempotency_keys").await >= 2);
    check_books(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_that_panics_is_replaced_and_health_says_so() {
    let db = TestDb::sqlite().await;
    let t = TestServer::start(&db).await;
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let first = t.create_listing(&seller, "ore", 5).await;
    t.server.crash_writer_for_test().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = t.send(Method::GET, "/healthz", None, None, None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert!(r.text.contains("restarted 1 times"), "{}", r.text);
    // Mutations go on through the new writer.
    assert_eq!(
        t.purchase(&buyer, first, 5, &key()).await.status,
        StatusCode::OK
    );
    let second = t.create_listing(&seller, "gem", 7).await;
    assert!(second > first);
    check_books(&db).await;
}
