//! The built `marketplace-server` binary, from the outside, on both
//! databases: it starts on flags alone, answers the API's contract over real
//! sockets, sells a contested item once, replays answers byte for byte, stops
//! cleanly on SIGTERM and comes back with its state.

use marketplace_e2e::{check_books, key, postgres_url, scalar, sqlite_url, Api, ServerProcess};
use reqwest::Method;
use serde_json::json;

async fn contract(database: &str) {
    let mut server = ServerProcess::start(database, &[]);
    let base = server.url();
    let api = Api::default();
    let (seller_id, seller) = api.login(&base, "bb-seller").await;
    let listing = api.create_listing(&base, &seller, "relic", 120).await;

    // Ten buyers, one listing, all at once: one sale.
    let mut buyers = Vec::new();
    for i in 0..10 {
        buyers.push(api.login(&base, &format!("bb-buyer-{i}")).await);
    }
    let mut tasks = Vec::new();
    for (_, token) in &buyers {
        let (api, base, token) = (api.clone(), base.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            api.purchase(&base, &token, listing, 120, &key())
                .await
                .expect("answered")
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        statuses.push((r.status, r.code().to_string()));
    }
    assert_eq!(
        statuses.iter().filter(|(s, _)| *s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert!(statuses
        .iter()
        .filter(|(s, _)| *s != 200)
        .all(|(s, c)| *s == 409 && c == "already_sold"));

    // A replay is byte-identical; the same key with another body is refused.
    let (_, buyer) = &buyers[0];
    let other = api.create_listing(&base, &seller, "gem", 30).await;
    let k = key();
    let first = api.purchase(&base, buyer, other, 30, &k).await.unwrap();
    assert_eq!(first.status, 200);
    let again = api.purchase(&base, buyer, other, 30, &k).await.unwrap();
    assert_eq!(again.text, first.text);
    let reused = api.purchase(&base, buyer, other, 31, &k).await.unwrap();
    assert_eq!(
        (reused.status, reused.code()),
        (409, "idempotency_key_reused")
    );

    // Errors come in the envelope, with stable codes.
    let r = api
        .send(
            &base,
            Method::POST,
            "/v1/listings",
            Some(&seller),
            Some(&key()),
            None,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (400, "invalid_request"));
    let r = api
        .send(
            &base,
            Method::POST,
            "/v1/listings",
            Some(&seller),
            Some(&key()),
            Some(json!({"item_id": "ore", "quantity": 2_000_000, "price": 1})),
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status, r.code()),
        (400, "invalid_request"),
        "beyond the quantity limit"
    );
    let r = api
        .send(
            &base,
            Method::GET,
            "/v1/listings",
            Some("v1.1.2.forged"),
            None,
            None,
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (401, "unauthorized"));
    let r = api
        .send(&base, Method::GET, "/nowhere", None, None, None)
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (404, "not_found"));
    let r = api
        .send(&base, Method::GET, "/healthz", None, None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    let r = api
        .send(&base, Method::GET, "/metrics", None, None, None)
        .await
        .unwrap();
    assert!(r.text.contains("market_purchases_total"));

    // The seller claims once.
    let r = api
        .send(
            &base,
            Method::GET,
            "/v1/me/sales?claimed=false",
            Some(&seller),
            None,
            None,
        )
        .await
        .unwrap();
    let sales = r.body["sales"].as_array().unwrap().clone();
    assert_eq!(sales.len(), 2);
    for sale in &sales {
        let id = sale["id"].as_i64().unwrap();
        let r = api
            .send(
                &base,
                Method::POST,
                &format!("/v1/sales/{id}/claim"),
                Some(&seller),
                Some(&key()),
                None,
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }

    // SIGTERM: a clean stop; started again, everything is still there.
    assert!(server.terminate(), "SIGTERM stops the server cleanly");
    let server = ServerProcess::start(database, &[]);
    let base = server.url();
    let replay = api.purchase(&base, buyer, other, 30, &k).await.unwrap();
    assert_eq!(replay.text, first.text, "answers survive a restart");
    let (again_id, _) = api.login(&base, "bb-seller").await;
    assert_eq!(again_id, seller_id);
    assert_eq!(scalar(database, "SELECT COUNT(*) FROM purchases").await, 2);
    assert_eq!(
        scalar(
            database,
            "SELECT COUNT(*) FROM purchases WHERE claimed_at IS NULL"
        )
        .await,
        0
    );
    check_books(database).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_keeps_the_contract_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    contract(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_keeps_the_contract_on_postgres() {
    let Some(url) = postgres_url("black-box HTTP").await else {
        return;
    };
    contract(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_flags_are_refused_with_a_message() {
    let out = std::process::Command::new(marketplace_e2e::server_binary())
        .args(["--database", "mysql://nope", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sqlite://") && text.contains("postgres://"),
        "{text}"
    );
    let out = std::process::Command::new(marketplace_e2e::server_binary())
        .args(["--token-secret", "short", "--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// `marketplace-server audit`: the books of a market that traded balance;
/// a balance changed behind the server's back is named.
async fn audit(database: &str) {
    let server = ServerProcess::start(database, &[]);
    let base = server.url();
    let api = Api::default();
    let (_, seller) = api.login(&base, "audit-seller").await;
    let (_, buyer) = api.login(&base, "audit-buyer").await;
    let l = api.create_listing(&base, &seller, "relic", 80).await;
    assert_eq!(
        api.purchase(&base, &buyer, l, 80, &key())
            .await
            .unwrap()
            .status,
        200
    );
    let r = api
        .send(
            &base,
            Method::POST,
            "/v1/me/deposits",
            Some(&buyer),
            Some(&key()),
            Some(json!({"quantity": 25})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    drop(server);
    let run = || {
        std::process::Command::new(marketplace_e2e::server_binary())
            .args(["audit", "--database", database])
            .output()
            .unwrap()
    };
    let out = run();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("the books balance") && stdout.contains("credits: 105 inside"),
        "{stdout}"
    );
    // Someone edits an account in the database.
    let sql = "UPDATE accounts SET credits = credits + 1000";
    {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        let mut conn = sqlx::AnyConnection::connect(database).await.unwrap();
        sqlx::query(sql).execute(&mut conn).await.unwrap();
        let _ = conn.close().await;
    }
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("first mismatch: Account("), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_tampered_books_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    audit(&sqlite_url(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_finds_tampered_books_on_postgres() {
    let Some(url) = postgres_url("the audit").await else {
        return;
    };
    audit(&url).await;
}
