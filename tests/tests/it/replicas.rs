//! Scale-out, proven: three `marketplace-server` processes on one
//! PostgreSQL. They start at the same moment (migrations run once, under the
//! advisory lock); buyers spread across them race for every listing; the
//! same key is replayed on different replicas at once; one replica is killed
//! with SIGKILL mid-load. No acknowledged purchase is lost, nothing is sold
//! twice, the survivors keep serving — and a change-stream subscriber of the
//! killed replica resumes on a survivor missing nothing, seeing nothing
//! twice.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marketplace_e2e::{check_books, key, postgres_url, scalar, Api, Reply, ServerProcess};

/// Follows the change stream like a client behind a balancer: reads
/// `event: market` frames, and when its replica dies, reconnects to the
/// next with `after=` its last `seq`. Returns the stream's start (the
/// first `ready` head) and every public `seq` seen, in order, once it has
/// seen `until` (set when the load is over).
async fn follow_stream(
    bases: Arc<Vec<String>>,
    mut replica: usize,
    token: String,
    until: Arc<std::sync::atomic::AtomicI64>,
    started: tokio::sync::oneshot::Sender<()>,
) -> (i64, Vec<i64>, usize) {
    let mut started = Some(started);
    let mut start = None;
    let mut last: Option<i64> = None;
    let mut seen = Vec::new();
    let mut reconnects = 0;
    // No overall timeout: a stream is long; silence is caught per chunk.
    let http = reqwest::Client::new();
    loop {
        let mut url = format!("{}/v1/stream", bases[replica % bases.len()]);
        if let Some(after) = last.or(start) {
            url.push_str(&format!("?after={after}"));
        }
        let response = http.get(&url).bearer_auth(&token).send().await;
        let mut response = match response {
            Ok(r) if r.status() == 200 => r,
            _ => {
                replica += 1;
                reconnects += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let mut buf = String::new();
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(5), response.chunk()).await;
            let Ok(Ok(Some(bytes))) = chunk else {
                break; // killed, cut or silent: resume elsewhere
            };
            buf.push_str(&String::from_utf8_lossy(&bytes));
            while let Some(end) = buf.find("\n\n") {
                let frame: String = buf.drain(..end + 2).collect();
                let field = |name: &str| {
                    frame
                        .lines()
                        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
                };
                match field("event:").as_deref() {
                    Some("market") => {
                        let seq: i64 = field("id:").and_then(|s| s.parse().ok()).unwrap_or(-1);
                        let data: serde_json::Value = field("data:")
                            .and_then(|d| serde_json::from_str(&d).ok())
                            .unwrap_or_default();
                        assert_eq!(data["seq"].as_i64(), Some(seq), "{frame}");
                        if ["listing", "order", "trade"]
                            .contains(&data["type"].as_str().unwrap_or(""))
                        {
                            seen.push(seq);
                        }
                        last = Some(seq);
                    }
                    Some("ready") if start.is_none() => {
                        let head = field("data:")
                            .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                            .and_then(|v| v["head"].as_i64())
                            .unwrap_or(-1);
                        start = Some(head);
                        if let Some(s) = started.take() {
                            let _ = s.send(());
                        }
                    }
                    Some("ready") => {}
                    Some(other) => panic!("unexpected stream event {other}: {frame}"),
                    None => {} // a comment (ping)
                }
            }
            let target = until.load(Ordering::SeqCst);
            if target > 0 && last.or(start).unwrap_or(0) >= target {
                return (start.unwrap_or(0), seen, reconnects);
            }
        }
        replica += 1;
        reconnects += 1;
    }
}

const LISTINGS: usize = 40;
const BUYERS: usize = 12;

/// Buys with one key until a replica gives a real answer, moving to the next
/// replica when one is down or busy — what a client behind a balancer sees.
async fn buy_anywhere(
    api: &Api,
    bases: &[String],
    mut replica: usize,
    token: &str,
    listing: i64,
    key: &str,
) -> Reply {
    for _ in 0..200 {
        match api
            .purchase(&bases[replica % bases.len()], token, listing, 10, key)
            .await
        {
            Ok(r) if r.status < 500 && r.code() != "request_in_progress" => return r,
            _ => {
                replica += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    panic!("no replica answered listing {listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_postgres() {
    let Some(db) = postgres_url("the replica suite").await else {
        return;
    };
    // Started at the same moment.
    let starting: Vec<_> = (0..3)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || ServerProcess::start(&db, &[]))
        })
        .collect();
    let replicas: Vec<ServerProcess> = starting.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM schema_migrations").await,
        scalar(&db, "SELECT MAX(version) FROM schema_migrations").await,
        "every migration applied once"
    );
    let bases: Arc<Vec<String>> = Arc::new(replicas.iter().map(ServerProcess::url).collect());
    let victim = Arc::new(Mutex::new(Some(replicas.into_iter().collect::<Vec<_>>())));
    let api = Api::default();

    // A seller logs in on one replica; its token works on all (one secret).
    let (_, seller) = api.login(&bases[0], "rep-seller").await;
    let mut listings = Vec::new();
    for i in 0..LISTINGS {
        listings.push(
            api.create_listing(&bases[i % 3], &seller, &format!("item-{i}"), 10)
                .await,
        );
    }
    let mut buyers = Vec::new();
    for i in 0..BUYERS {
        buyers.push(api.login(&bases[i % 3], &format!("rep-buyer-{i}")).await);
    }
    // A subscriber of the replica about to be killed.
    let (_, watcher) = api.login(&bases[2], "rep-watcher").await;
    let until = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let follower = tokio::spawn(follow_stream(
        bases.clone(),
        2,
        watcher,
        until.clone(),
        started_tx,
    ));
    started_rx.await.expect("the stream went live");

    // The same key on three replicas at once: one purchase, one answer.
    let replayed = listings[0];
    let (_, token) = buyers[0].clone();
    let k = key();
    let mut same = Vec::new();
    for base in bases.iter() {
        let (api, base, token, k) = (api.clone(), base.clone(), token.clone(), k.clone());
        same.push(tokio::spawn(async move {
            loop {
                let r = api.purchase(&base, &token, replayed, 10, &k).await.unwrap();
                if r.code() != "request_in_progress" {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let mut answers = Vec::new();
    for t in same {
        answers.push(t.await.unwrap());
    }
    assert_eq!(answers[0].status, 200, "{}", answers[0].text);
    assert!(
        answers.iter().all(|a| a.text == answers[0].text),
        "identical answers: {answers:#?}"
    );
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM purchases WHERE listing_id = {replayed}")
        )
        .await,
        1
    );

    // Every buyer races for every other listing, spread over the replicas;
    // a third of the way in, replica 2 is killed.
    let done = Arc::new(AtomicUsize::new(0));
    let total = (LISTINGS - 1) * BUYERS;
    let mut tasks = Vec::new();
    for (n, (listing, (buyer_id, token))) in listings[1..]
        .iter()
        .flat_map(|l| buyers.iter().map(move |b| (*l, b.clone())))
        .enumerate()
    {
        let (api, bases, done, victim) = (api.clone(), bases.clone(), done.clone(), victim.clone());
        tasks.push(tokio::spawn(async move {
            let r = buy_anywhere(&api, &bases, n, &token, listing, &key()).await;
            if done.fetch_add(1, Ordering::SeqCst) == total / 3 {
                if let Some(replicas) = victim.lock().unwrap().as_mut() {
                    replicas[2].kill();
                }
            }
            (listing, buyer_id, r)
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        let (listing, buyer_id, r) = t.await.unwrap();
        match r.status {
            200 => acknowledged.push((
                listing,
                buyer_id,
                r.body["purchase"]["id"].as_i64().unwrap(),
            )),
            409 => assert_eq!(r.code(), "already_sold", "{}", r.text),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    // Exactly one winner per listing, and every acknowledged purchase is there.
    let mut winners: Vec<i64> = acknowledged.iter().map(|(l, _, _)| *l).collect();
    winners.sort();
    winners.dedup();
    assert_eq!(winners.len(), LISTINGS - 1, "every listing sold");
    assert_eq!(
        acknowledged.len(),
        LISTINGS - 1,
        "one acknowledged sale per listing"
    );
    for (listing, buyer, purchase) in &acknowledged {
        let found = scalar(
            &db,
            &format!("SELECT COUNT(*) FROM purchases WHERE id = {purchase} AND listing_id = {listing} AND buyer_id = {buyer}"),
        )
        .await;
        assert_eq!(found, 1, "acknowledged purchase {purchase} is on the books");
    }
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM purchases").await,
        LISTINGS as i64
    );
    check_books(&db).await;

    // The subscriber of the killed replica went on on another, and has
    // every public event after its start once, in order.
    let last_public = scalar(
        &db,
        "SELECT COALESCE(MAX(seq), 0) FROM stream_events WHERE recipient_id IS NULL",
    )
    .await;
    until.store(last_public.max(1), Ordering::SeqCst);
    let (start, seen, reconnects) = tokio::time::timeout(Duration::from_secs(60), follower)
        .await
        .expect("the subscriber catches up")
        .unwrap();
    assert!(
        reconnects >= 1,
        "the killed replica's stream was resumed elsewhere"
    );
    let expected_count = scalar(
        &db,
        &format!("SELECT COUNT(*) FROM stream_events WHERE recipient_id IS NULL AND seq > {start}"),
    )
    .await;
    let expected_sum = scalar(
        &db,
        &format!("SELECT CAST(COALESCE(SUM(seq), 0) AS BIGINT) FROM stream_events WHERE recipient_id IS NULL AND seq > {start}"),
    )
    .await;
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order, none twice");
    assert_eq!(
        (seen.len() as i64, seen.iter().sum::<i64>()),
        (expected_count, expected_sum),
        "every public event after the start, across the kill"
    );

    // The survivors keep serving.
    for base in &bases[..2] {
        let r = api
            .send(base, reqwest::Method::GET, "/healthz", None, None, None)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let (_, t) = api.login(base, "after-the-kill").await;
        let l = api.create_listing(base, &t, "late", 10).await;
        assert!(l > 0);
    }
}

/// Buy orders and listings of one item race across three replicas on one
/// PostgreSQL: sellers list into the bids and buyers place orders into the
/// asks at the same moment, on different processes, with direct partial
/// purchases and order cancels in the middle. Never a unit filled twice,
/// never beyond a side's quantity, never above an order's price, and the
/// books balance.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn orders_and_listings_race_across_three_replicas() {
    let Some(db) = postgres_url("the replica order suite").await else {
        return;
    };
    let replicas: Vec<ServerProcess> = (0..3).map(|_| ServerProcess::start(&db, &[])).collect();
    let bases: Arc<Vec<String>> = Arc::new(replicas.iter().map(ServerProcess::url).collect());
    let api = Api::default();
    let mut tasks = Vec::new();
    for i in 0..24usize {
        let (api, bases) = (api.clone(), bases.clone());
        tasks.push(tokio::spawn(async move {
            let base = &bases[i % 3];
            let (_, token) = api.login(base, &format!("racer-{i}")).await;
            let post = |path: &'static str, body: serde_json::Value| {
                let (api, base, token) = (api.clone(), base.clone(), token.clone());
                async move {
                    api.send(&base, reqwest::Method::POST, path, Some(&token), Some(&key()), Some(body))
                        .await
                        .expect("a replica answers")
                }
            };
            match i % 4 {
                // Sellers: 3 units between 9 and 12 each.
                0 | 1 => {
                    let r = post("/v1/listings", serde_json::json!({"item_id": "ore", "quantity": 3, "price": 9 + (i % 4) as i64, "deposit": 3})).await;
                    assert_eq!(r.status, 201, "{}", r.text);
                    let listing = r.body["listing"]["id"].as_i64().unwrap();
                    // Someone buys one unit directly, racing the orders.
                    let (_, buyer) = api.login(&bases[(i + 1) % 3], &format!("direct-{i}")).await;
                    let _ = api
                        .send(&bases[(i + 1) % 3], reqwest::Method::POST, &format!("/v1/listings/{listing}/purchase"), Some(&buyer), Some(&key()),
                            Some(serde_json::json!({"expected_price": 9 + (i % 4) as i64, "quantity": 1, "deposit": 12})))
                        .await;
                }
                // Buyers: orders of 4 at up to 11; every other one cancelled.
                _ => {
                    let r = post("/v1/orders", serde_json::json!({"item_id": "ore", "quantity": 4, "max_price": 11, "deposit": 44})).await;
                    assert_eq!(r.status, 201, "{}", r.text);
                    if i % 8 == 2 {
                        let id = r.body["order"]["id"].as_i64().unwrap();
                        let r = api
                            .send(&bases[(i + 2) % 3], reqwest::Method::DELETE, &format!("/v1/orders/{id}"), Some(&token), Some(&key()), None)
                            .await
                            .unwrap();
                        assert!(r.status == 200 || r.code() == "order_closed", "{}", r.text);
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let fills = scalar(
        &db,
        "SELECT COUNT(*) FROM purchases WHERE order_id IS NOT NULL",
    )
    .await;
    assert!(fills > 0, "orders met listings");
    check_books(&db).await;
    let mut conn = {
        use sqlx::Connection;
        sqlx::any::install_default_drivers();
        sqlx::AnyConnection::connect(&db).await.expect("connect")
    };
    let audit = marketplace_server::audit_connection(&mut conn)
        .await
        .expect("audit");
    assert!(audit.ok(), "I6: {:#?}", audit.mismatches);
    // Crossed book check: no resting bid at or above a resting ask.
    let crossed = scalar(
        &db,
        "SELECT COUNT(*) FROM orders o JOIN listings l ON l.item_id = o.item_id \
         WHERE o.status = 'active' AND l.status = 'active' AND o.max_price >= l.price \
         AND l.seller_id <> o.buyer_id",
    )
    .await;
    assert_eq!(crossed, 0, "a bid and an ask rest crossed");
}
