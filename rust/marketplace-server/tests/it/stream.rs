//! The live market over raw HTTP: the change stream (server-sent events)
//! and the notification inbox. Both databases.
//!
//! What must hold: every event a subscriber may see reaches it once, in
//! `seq` order, across reconnects and a server restart; a resume from
//! before what is kept says `reload`; a slow subscriber is cut off and
//! the market does not wait for it; nobody sees another player's private
//! events or notifications; a notification sums a listing's or an order's
//! fills until acknowledged, and only other players' actions notify.

use std::time::Duration;

use crate::support::{check_books, key, Player, TestDb, TestServer};
use marketplace_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

backend_tests!(
    events_arrive_once_in_order_across_reconnects_and_a_restart,
    a_resume_from_before_what_is_kept_says_reload,
    nobody_sees_another_players_private_events,
    a_slow_subscriber_is_cut_off_and_the_market_goes_on,
    the_inbox_sums_fills_per_listing_and_order_until_acknowledged,
    an_expiry_notifies_the_owner_and_the_stream,
    a_player_holds_a_bounded_number_of_streams,
);

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct Sse {
    pub event: String,
    pub id: Option<i64>,
    pub data: Value,
}

/// A stream connection read frame by frame.
pub struct Stream {
    resp: reqwest::Response,
    buf: String,
}

impl Stream {
    pub async fn open(t: &TestServer, who: &Player, query: &str) -> Stream {
        let resp = t
            .http
            .get(format!("{}/v1/stream?{query}", t.base))
            .bearer_auth(&who.token)
            .send()
            .await
            .expect("stream connects");
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap_or(""),
            "text/event-stream"
        );
        Stream {
            resp,
            buf: String::new(),
        }
    }

    /// The next event, `None` when the server ended the stream. Panics
    /// after 10 s of silence (a heartbeat comes every 15 s, and tests
    /// never wait for one).
    pub async fn next(&mut self) -> Option<Sse> {
        loop {
            if let Some(at) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..at + 2).collect();
                let mut sse = Sse {
                    event: "message".into(),
                    id: None,
                    data: Value::Null,
                };
                let mut any = false;
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        sse.event = v.to_string();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("id: ") {
                        sse.id = v.parse().ok();
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        sse.data = serde_json::from_str(v).expect("event data is JSON");
                    }
                }
                if any {
                    return Some(sse);
                }
                continue; // a comment (heartbeat)
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.resp.chunk())
                .await
                .expect("an event within 10 s");
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes)),
                _ => return None,
            }
        }
    }

    /// Skips to `event: ready`, returning the market events before it.
    pub async fn until_ready(&mut self) -> Vec<Sse> {
        let mut before = Vec::new();
        loop {
            let e = self.next().await.expect("stream says ready");
            if e.event == "ready" {
                return before;
            }
            before.push(e);
        }
    }

    /// The next `n` market events.
    pub async fn take(&mut self, n: usize) -> Vec<Sse> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let e = self.next().await.expect("stream goes on");
            if e.event == "market" {
                out.push(e);
            }
        }
        out
    }
}

async fn call(t: &TestServer, who: &Player, method: Method, path: &str, body: Value) -> Value {
    let body = (!body.is_null()).then(|| body.to_string());
    let r = t
        .send(method, path, Some(&who.token), Some(&key()), body)
        .await;
    assert!(r.status.is_success(), "{path}: {} {}", r.status, r.text);
    r.body
}

async fn list(t: &TestServer, seller: &Player, item: &str, quantity: i64, price: i64) -> i64 {
    let b = call(
        t,
        seller,
        Method::POST,
        "/v1/listings",
        json!({"item_id": item, "quantity": quantity, "price": price, "deposit": quantity}),
    )
    .await;
    b["listing"]["id"].as_i64().expect("listing id")
}

async fn buy(t: &TestServer, buyer: &Player, listing: i64, quantity: i64, price: i64) -> Value {
    call(
        t,
        buyer,
        Method::POST,
        &format!("/v1/listings/{listing}/purchase"),
        json!({"expected_price": price, "quantity": quantity, "deposit": quantity * price}),
    )
    .await
}

async fn order(t: &TestServer, buyer: &Player, item: &str, quantity: i64, max_price: i64) -> Value {
    call(
        t,
        buyer,
        Method::POST,
        "/v1/orders",
        json!({"item_id": item, "quantity": quantity, "max_price": max_price,
            "deposit": quantity * max_price}),
    )
    .await
}

/// The events the whole table holds, oldest first.
async fn table(db: &TestDb) -> Vec<(i64, Value)> {
    let pool = db.pool().await;
    let rows: Vec<(i64, String)> =
        sqlx::query_as("SELECT seq, body FROM stream_events ORDER BY seq")
            .fetch_all(&pool)
            .await
            .expect("events");
    rows.into_iter()
        .map(|(seq, body)| (seq, serde_json::from_str(&body).expect("JSON")))
        .collect()
}

/// Some trading between `a` and `b` on `item`: creates, partial and whole
/// purchases, a reprice, a cancel, an order that rests and one that fills.
async fn trade(t: &TestServer, a: &Player, b: &Player, item: &str) {
    let l = list(t, a, item, 5, 10).await;
    buy(t, b, l, 2, 10).await;
    call(
        t,
        a,
        Method::PATCH,
        &format!("/v1/listings/{l}"),
        json!({"price": 12}),
    )
    .await;
    buy(t, b, l, 3, 12).await;
    let l2 = list(t, a, item, 2, 20).await;
    call(
        t,
        a,
        Method::DELETE,
        &format!("/v1/listings/{l2}"),
        Value::Null,
    )
    .await;
    order(t, b, item, 4, 9).await;
    list(t, a, item, 3, 8).await;
}

/// The numbers of the table's events about `item`.
fn events_of(all: &[(i64, Value)], item: &str) -> Vec<i64> {
    all.iter()
        .filter(|(_, e)| {
            e["listing"]["item_id"] == item || e["order"]["item_id"] == item || e["item_id"] == item
        })
        .map(|(s, _)| *s)
        .collect()
}

async fn events_arrive_once_in_order_across_reconnects_and_a_restart(db: TestDb) {
    let t = TestServer::start(&db).await;
    let a = t.login("stream-a").await;
    let b = t.login("stream-b").await;
    let watcher = t.login("stream-w").await;
    // One subscriber stays connected throughout; the other drops and
    // comes back.
    let mut steady = Stream::open(&t, &watcher, "").await;
    assert!(steady.until_ready().await.is_empty());
    let mut hopping = Stream::open(&t, &watcher, "items=ore").await;
    hopping.until_ready().await;

    trade(&t, &a, &b, "ore").await;
    trade(&t, &a, &b, "gem").await;
    let all = table(&db).await;
    let public: Vec<i64> = all
        .iter()
        .filter(|(_, e)| ["listing", "order", "trade"].contains(&e["type"].as_str().unwrap_or("")))
        .map(|(s, _)| *s)
        .collect();
    let steady_seen = steady.take(public.len()).await;
    let seqs: Vec<i64> = steady_seen.iter().map(|e| e.id.expect("id")).collect();
    assert_eq!(seqs, public, "every public event once, in order");
    for e in &steady_seen {
        assert_eq!(Some(e.data["seq"].as_i64().unwrap_or(-1)), e.id);
    }
    // The table itself: numbered 1.. without a gap (commit order).
    let numbers: Vec<i64> = all.iter().map(|(s, _)| *s).collect();
    assert_eq!(numbers, (1..=all.len() as i64).collect::<Vec<_>>());

    // Per item, a listing's states follow each other: created, updated…
    let ore: Vec<&Sse> = steady_seen
        .iter()
        .filter(|e| e.data["listing"]["item_id"] == "ore")
        .collect();
    let first = ore[0].data["listing"]["id"].clone();
    let changes: Vec<&str> = ore
        .iter()
        .filter(|e| e.data["listing"]["id"] == first)
        .map(|e| e.data["change"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(changes, ["created", "updated", "updated", "sold"]);

    // The subscriber of one item saw some, then drops.
    let ore_events = events_of(&all, "ore");
    let got = hopping.take(3).await;
    drop(hopping);
    let last = got[2].id.expect("id");
    trade(&t, &a, &b, "ore").await;
    // A restart in between: the stream is the table, not the process.
    let config = Config::for_tests(&db.url);
    t.server.shutdown().await;
    let t = TestServer::start_with(config).await;
    trade(&t, &a, &b, "ore").await;
    let all = table(&db).await;
    let ore_events_now = events_of(&all, "ore");
    assert!(ore_events_now.len() > ore_events.len());
    let mut resumed = Stream::open(&t, &watcher, &format!("items=ore&after={last}")).await;
    let backfill = resumed.until_ready().await;
    let mut seen: Vec<i64> = got.iter().map(|e| e.id.unwrap_or(0)).collect();
    seen.extend(backfill.iter().map(|e| e.id.unwrap_or(0)));
    assert_eq!(seen, ore_events_now, "nothing lost, nothing twice");
    // `Last-Event-ID` resumes too.
    let resp = t
        .http
        .get(format!("{}/v1/stream?items=ore", t.base))
        .bearer_auth(&watcher.token)
        .header("last-event-id", last.to_string())
        .send()
        .await
        .expect("connects");
    let mut by_header = Stream {
        resp,
        buf: String::new(),
    };
    assert_eq!(by_header.until_ready().await.len(), backfill.len());
    check_books(&db).await;
}

async fn a_resume_from_before_what_is_kept_says_reload(db: TestDb) {
    let t = TestServer::start(&db).await;
    let a = t.login("reload-a").await;
    let b = t.login("reload-b").await;
    trade(&t, &a, &b, "ore").await;
    // Past the retention, the pruner takes the events.
    t.server.clock().advance(2 * 3600);
    t.server.prune_now().await.expect("prune");
    assert!(table(&db).await.is_empty());
    // (Tokens expired with the hours.)
    let a = t.login("reload-a").await;
    let b = t.login("reload-b").await;
    list(&t, &a, "ore", 1, 5).await;
    let head = table(&db).await.last().map(|(s, _)| *s).unwrap_or(0);
    let mut s = Stream::open(&t, &b, "after=1").await;
    let mut first = s.next().await.expect("an event");
    while first.event == "market" {
        // Events still kept may come before the word to reload.
        first = s.next().await.expect("an event");
    }
    assert_eq!(first.event, "reload", "{first:?}");
    assert!(first.data["head"].as_i64().unwrap_or(0) > 1);
    // A seq from the future (another database) reloads too.
    let mut s = Stream::open(&t, &b, &format!("after={}", head + 100)).await;
    assert_eq!(s.next().await.expect("event").event, "reload");
    // Bad input is refused clearly.
    for q in ["after=-1", "after=x", &format!("items={}", "a,".repeat(65))] {
        let r = t
            .send(
                Method::GET,
                &format!("/v1/stream?{q}"),
                Some(&b.token),
                None,
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}: {}", r.text);
    }
    let r = t.send(Method::GET, "/v1/stream", None, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

async fn nobody_sees_another_players_private_events(db: TestDb) {
    let t = TestServer::start(&db).await;
    let a = t.login("priv-a").await;
    let b = t.login("priv-b").await;
    let cheat = t.login("priv-cheat").await;
    let mut spy = Stream::open(&t, &cheat, "").await;
    spy.until_ready().await;
    let mut mine = Stream::open(&t, &a, "market=false").await;
    mine.until_ready().await;
    trade(&t, &a, &b, "ore").await;
    // The cheater's own marker, to know when it has read everything.
    let marker = list(&t, &cheat, "marker", 1, 1).await;
    loop {
        let e = spy.next().await.expect("stream goes on");
        if e.event != "market" {
            continue;
        }
        let kind = e.data["type"].as_str().unwrap_or("");
        assert!(
            ["listing", "order", "trade"].contains(&kind),
            "a private event reached another player: {e:?}"
        );
        if e.data["listing"]["id"] == marker {
            break;
        }
    }
    // The seller's own stream: its listings and its private events only,
    // up to its own marker.
    let own_marker = list(&t, &a, "marker", 1, 1).await;
    let mut got = Vec::new();
    loop {
        let e = mine.take(1).await.remove(0);
        let d = &e.data;
        let ok = d["listing"]["seller_id"] == a.id
            || d["order"]["buyer_id"] == a.id
            || d["type"] == "notification"
            || d["type"] == "delivery";
        assert!(ok, "not A's: {d}");
        if d["listing"]["id"] == own_marker {
            break;
        }
        got.push(e);
    }
    assert!(got.iter().any(|e| e.data["listing"]["seller_id"] == a.id));
    assert!(got.iter().any(|e| e.data["type"] == "notification"));
    // A cannot read or acknowledge B's inbox.
    let b_inbox = t.get(&b, "/v1/me/notifications").await;
    let ids: Vec<i64> = b_inbox.body["notifications"]
        .as_array()
        .expect("list")
        .iter()
        .filter_map(|n| n["id"].as_i64())
        .collect();
    assert!(!ids.is_empty(), "B's order filled: {}", b_inbox.text);
    let r = t
        .send(
            Method::POST,
            "/v1/me/notifications/ack",
            Some(&a.token),
            None,
            Some(json!({ "ids": ids }).to_string()),
        )
        .await;
    assert_eq!(r.body["acked"], 0, "{}", r.text);
    let a_inbox = t.get(&a, "/v1/me/notifications").await;
    for n in a_inbox.body["notifications"].as_array().expect("list") {
        assert!(!ids.contains(&n["id"].as_i64().unwrap_or(0)));
    }
    assert_eq!(
        t.get(&b, "/v1/me/notifications").await.body["notifications"]
            .as_array()
            .map(Vec::len),
        Some(ids.len())
    );
}

async fn a_slow_subscriber_is_cut_off_and_the_market_goes_on(db: TestDb) {
    let mut config = Config::for_tests(&db.url);
    // The ring holds one event: whoever does not read between two is
    // behind.
    config.stream_buffer = 1;
    let t = TestServer::start_with(config).await;
    let a = t.login("slow-a").await;
    let b = t.login("slow-b").await;
    // A subscriber on a socket with a tiny receive window that reads
    // nothing.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(1024).expect("small buffer");
    let addr = t.server.addr();
    let mut stalled = socket.connect(addr).await.expect("connect");
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stalled
        .write_all(
            format!(
                "GET /v1/stream HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\
                 authorization: Bearer {}\r\n\r\n",
                a.token
            )
            .as_bytes(),
        )
        .await
        .expect("request");
    let mut watcher = Stream::open(&t, &a, "").await;
    watcher.until_ready().await;
    // Bursts: one listing crossing 100 resting orders is one commit of
    // hundreds of events; and many small commits.
    for _ in 0..100 {
        order(&t, &b, "ore", 1, 10).await;
    }
    list(&t, &a, "ore", 100, 10).await;
    for i in 0..100 {
        let l = list(&t, &a, "gem", 1, 10 + i).await;
        call(
            &t,
            &a,
            Method::DELETE,
            &format!("/v1/listings/{l}"),
            Value::Null,
        )
        .await;
    }
    let pool = db.pool().await;
    let ids: Vec<(i64,)> = sqlx::query_as(
        "SELECT seq FROM stream_events WHERE recipient_id IS NULL OR recipient_id = $1 ORDER BY seq",
    )
    .bind(a.id)
    .fetch_all(&pool)
    .await
    .expect("the player's events");
    let expected: std::collections::BTreeSet<i64> = ids.into_iter().map(|(id,)| id).collect();
    // A subscriber that keeps up may be cut off too (this test's server
    // keeps only 8 events): either way it is told, and resumes. A resume
    // from before what is kept (a loaded machine reads late) is told
    // `reload` up to its head: what it covers counts as told.
    let mut last = 0;
    let mut seen = std::collections::BTreeSet::new();
    let mut watcher_cut = false;
    while !expected.is_subset(&seen) {
        match watcher.next().await {
            Some(e) if e.event == "market" => {
                last = e.id.unwrap_or(last);
                seen.extend(e.id);
            }
            Some(e) if e.event == "lagged" => {
                watcher_cut = true;
                watcher = Stream::open(&t, &a, &format!("after={last}")).await;
            }
            Some(e) if e.event == "reload" => {
                let head = e.data["head"].as_i64().expect("reload names its head");
                seen.extend(expected.range(..=head).copied());
                last = last.max(head);
            }
            Some(_) => {}
            None => {
                watcher = Stream::open(&t, &a, &format!("after={last}")).await;
            }
        }
    }
    assert!(
        expected.is_subset(&seen),
        "resumed streams miss nothing untold"
    );
    assert!(watcher_cut, "a one-event ring cuts off a reader of a burst");
    // The stalled one: once read, it ends with `lagged`.
    let mut text = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stalled.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => text.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("the stalled stream did not end; read {} bytes", text.len()),
        }
    }
    let text = String::from_utf8_lossy(&text);
    assert!(
        text.contains("event: lagged"),
        "{}",
        &text[text.len().saturating_sub(400)..]
    );
    let metrics = t.send(Method::GET, "/metrics", None, None, None).await.text;
    assert!(
        !metrics.contains("market_stream_lagged_total 0\n"),
        "{metrics}"
    );
}

async fn the_inbox_sums_fills_per_listing_and_order_until_acknowledged(db: TestDb) {
    let t = TestServer::start(&db).await;
    let seller = t.login("inbox-s").await;
    let buyer = t.login("inbox-b").await;
    let other = t.login("inbox-o").await;
    let l = list(&t, &seller, "ore", 10, 7).await;
    buy(&t, &buyer, l, 2, 7).await;
    buy(&t, &other, l, 3, 7).await;
    // The buyers asked for their purchases: nothing for them.
    for p in [&buyer, &other] {
        let r = t.get(p, "/v1/me/notifications").await;
        assert_eq!(r.body["notifications"], json!([]), "{}", r.text);
    }
    let r = t.get(&seller, "/v1/me/notifications").await;
    let n = &r.body["notifications"];
    assert_eq!(
        n.as_array().map(Vec::len),
        Some(1),
        "one per listing: {}",
        r.text
    );
    assert_eq!(n[0]["kind"], "sold");
    assert_eq!(n[0]["quantity"], 5);
    assert_eq!(n[0]["credits"], 35);
    assert_eq!(n[0]["fills"], 2);
    assert_eq!(n[0]["listing_id"], l);
    // A resting order filled by three listings: one summary.
    let o = order(&t, &buyer, "gem", 6, 9).await["order"]["id"].clone();
    for price in [7, 8, 9] {
        list(&t, &seller, "gem", 2, price).await;
    }
    let r = t.get(&buyer, "/v1/me/notifications").await;
    let n = &r.body["notifications"];
    assert_eq!(n.as_array().map(Vec::len), Some(1), "{}", r.text);
    assert_eq!(n[0]["kind"], "order_filled");
    assert_eq!(n[0]["order_id"], o);
    assert_eq!(n[0]["quantity"], 6);
    assert_eq!(n[0]["credits"], 6 * 9, "fills at the resting order's price");
    assert_eq!(n[0]["fills"], 3);
    assert!(
        r.body["deliveries_waiting"].as_i64().unwrap_or(0) >= 3,
        "{}",
        r.text
    );
    // The seller filled the order itself: no "sold" for those.
    let r = t.get(&seller, "/v1/me/notifications").await;
    assert_eq!(r.body["notifications"].as_array().map(Vec::len), Some(1));
    // Acknowledged: gone; acknowledging again changes nothing; a later
    // fill starts a new summary.
    let id = r.body["notifications"][0]["id"].as_i64().expect("id");
    // A modified client acknowledging another player's notification
    // closes nothing.
    let r = t
        .send(
            Method::POST,
            "/v1/me/notifications/ack",
            Some(&buyer.token),
            None,
            Some(json!({ "ids": [id] }).to_string()),
        )
        .await;
    assert_eq!(r.body["acked"], 0, "{}", r.text);
    for expected in [1, 0] {
        let r = t
            .send(
                Method::POST,
                "/v1/me/notifications/ack",
                Some(&seller.token),
                None,
                Some(json!({ "ids": [id] }).to_string()),
            )
            .await;
        assert_eq!(r.body["acked"], expected, "{}", r.text);
    }
    assert_eq!(
        t.get(&seller, "/v1/me/notifications").await.body["notifications"],
        json!([])
    );
    buy(&t, &other, l, 1, 7).await;
    let r = t.get(&seller, "/v1/me/notifications").await;
    let n = &r.body["notifications"];
    assert_eq!(n[0]["quantity"], 1);
    assert_ne!(n[0]["id"], id);
    // A fill between reading and acknowledging: the acknowledgement of
    // what was shown (1 fill) leaves the grown summary open, to be told.
    let id = n[0]["id"].as_i64().expect("id");
    buy(&t, &other, l, 1, 7).await;
    let ack = |fills: i64| {
        t.send(
            Method::POST,
            "/v1/me/notifications/ack",
            Some(&seller.token),
            None,
            Some(json!({ "ids": [id], "fills": [fills] }).to_string()),
        )
    };
    assert_eq!(ack(1).await.body["acked"], 0, "grown since it was shown");
    let r = t.get(&seller, "/v1/me/notifications").await;
    assert_eq!(r.body["notifications"][0]["id"], id);
    assert_eq!(r.body["notifications"][0]["quantity"], 2);
    assert_eq!(ack(2).await.body["acked"], 1);
    // Malformed acknowledgements are refused.
    for body in [
        json!({"ids": [1, 2], "fills": [1]}),
        json!({"ids": "x"}),
        json!({"ids": [1], "extra": 1}),
        json!({ "ids": (0..201).collect::<Vec<i64>>() }),
    ] {
        let r = t
            .send(
                Method::POST,
                "/v1/me/notifications/ack",
                Some(&seller.token),
                None,
                Some(body.to_string()),
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    }
    // Pruned after the retention.
    t.server.clock().advance(31 * 86_400);
    t.server.prune_now().await.expect("prune");
    let buyer = t.login("inbox-b").await;
    assert_eq!(
        t.get(&buyer, "/v1/me/notifications").await.body["notifications"],
        json!([])
    );
    check_books(&db).await;
}

async fn an_expiry_notifies_the_owner_and_the_stream(db: TestDb) {
    let t = TestServer::start(&db).await;
    let a = t.login("exp-a").await;
    let b = t.login("exp-b").await;
    let l = call(
        &t,
        &a,
        Method::POST,
        "/v1/listings",
        json!({"item_id": "ore", "quantity": 4, "price": 3, "deposit": 4, "duration_secs": 60}),
    )
    .await["listing"]["id"]
        .clone();
    let o = call(
        &t,
        &b,
        Method::POST,
        "/v1/orders",
        json!({"item_id": "ore", "quantity": 2, "max_price": 2, "deposit": 4, "duration_secs": 60}),
    )
    .await["order"]["id"]
        .clone();
    let mut s = Stream::open(&t, &a, "market=false").await;
    s.until_ready().await;
    t.server.clock().advance(61);
    assert_eq!(t.server.sweep_now().await.expect("sweep"), 2);
    let mut saw_expired = false;
    let mut saw_delivery = false;
    let mut saw_notification = false;
    while !(saw_expired && saw_delivery && saw_notification) {
        let e = s.take(1).await.remove(0).data;
        match e["type"].as_str().unwrap_or("") {
            // (Its creation may still be on its way to this replica's
            // tailer when the stream opened.)
            "listing" if e["change"] == "created" => {}
            "listing" => {
                assert_eq!(e["listing"]["id"], l);
                assert_eq!(e["change"], "expired");
                saw_expired = true;
            }
            "delivery" => {
                assert_eq!(e["delivery"]["kind"], "listing_expired");
                saw_delivery = true;
            }
            "notification" => {
                assert_eq!(e["notification"]["kind"], "listing_expired");
                assert_eq!(e["notification"]["quantity"], 4);
                saw_notification = true;
            }
            "order" => panic!("B's order reached A's own stream: {e}"),
            _ => {}
        }
    }
    let n = t.get(&b, "/v1/me/notifications").await.body["notifications"].clone();
    assert_eq!(n[0]["kind"], "order_expired");
    assert_eq!(n[0]["order_id"], o);
    assert_eq!(n[0]["credits"], 4);
    check_books(&db).await;
}

async fn a_player_holds_a_bounded_number_of_streams(db: TestDb) {
    let mut config = Config::for_tests(&db.url);
    config.stream_max_per_player = 2;
    config.stream_max_subscribers = 3;
    let t = TestServer::start_with(config).await;
    let a = t.login("cap-a").await;
    let b = t.login("cap-b").await;
    let mut first = Stream::open(&t, &a, "").await;
    first.until_ready().await;
    let mut second = Stream::open(&t, &a, "").await;
    second.until_ready().await;
    // A third ends the oldest (a client reconnecting before its old
    // connection is found dead must not lock itself out).
    let mut third = Stream::open(&t, &a, "").await;
    third.until_ready().await;
    let ended = first.next().await;
    assert_eq!(ended.map(|e| e.event), Some("replaced".to_string()));
    assert!(first.next().await.is_none());
    // The replica's cap: one more player fits, a second does not.
    let mut b1 = Stream::open(&t, &b, "").await;
    b1.until_ready().await;
    let c = t.login("cap-c").await;
    let r = t.get(&c, "/v1/stream").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text);
    drop(second);
    drop(third);
    drop(b1);
}

/// Two replicas on one PostgreSQL database serve the same stream: a
/// subscriber of each sees the same events in the same order, whichever
/// replica made the change; a client whose replica dies resumes on the
/// other without a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_serve_the_same_stream() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let one = TestServer::start(&db).await;
    let two = TestServer::start(&db).await;
    let a = one.login("rep-a").await;
    let b = two.login("rep-b").await;
    let w = one.login("rep-w").await;
    let mut on_one = Stream::open(&one, &w, "").await;
    on_one.until_ready().await;
    let mut on_two = Stream::open(&two, &w, "").await;
    on_two.until_ready().await;
    // Changes on both replicas, interleaved.
    for round in 0..5 {
        let (seller_on, buyer_on) = if round % 2 == 0 {
            (&one, &two)
        } else {
            (&two, &one)
        };
        let l = list(seller_on, &a, "ore", 3, 10).await;
        buy(buyer_on, &b, l, 1, 10).await;
        buy(seller_on, &b, l, 2, 10).await;
    }
    let (public,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM stream_events WHERE recipient_id IS NULL")
            .fetch_one(&db.pool().await)
            .await
            .expect("count");
    let seen_one: Vec<i64> = on_one
        .take(public as usize)
        .await
        .iter()
        .map(|e| e.id.unwrap_or(0))
        .collect();
    let half: Vec<i64> = on_two
        .take(public as usize / 2)
        .await
        .iter()
        .map(|e| e.id.unwrap_or(0))
        .collect();
    assert_eq!(half, seen_one[..half.len()]);
    // Replica two dies mid-stream (dropped: its tasks abort, no goodbye);
    // its subscriber comes back on replica one.
    drop(on_two);
    drop(two);
    let last = *half.last().expect("events");
    let mut resumed = Stream::open(&one, &w, &format!("after={last}")).await;
    let rest: Vec<i64> = resumed
        .until_ready()
        .await
        .iter()
        .map(|e| e.id.unwrap_or(0))
        .collect();
    let mut all = half.clone();
    all.extend(rest);
    assert_eq!(all, seen_one, "the same events, once each, in order");
    check_books(&db).await;
}

/// A client that saw events on a replica whose tailer is ahead resumes on
/// one that has not polled yet: it gets the events from the table, not a
/// `reload`, and its `ready` head covers everything committed.
#[tokio::test]
async fn a_resume_ahead_of_this_replicas_tailer_is_served_from_the_table() {
    let Some(db) = TestDb::postgres().await else {
        return;
    };
    let one = TestServer::start(&db).await;
    let mut slow = Config::for_tests(&db.url);
    // This replica hears of the other's commits only by polling: never,
    // within this test.
    slow.stream_poll_ms = 600_000;
    let two = TestServer::start_with(slow).await;
    let a = one.login("ahead-a").await;
    let b = one.login("ahead-b").await;
    let w = one.login("ahead-w").await;
    let mut on_one = Stream::open(&one, &w, "").await;
    let start = on_one.until_ready().await;
    assert!(start.is_empty());
    let l = list(&one, &a, "ore", 3, 10).await;
    buy(&one, &b, l, 1, 10).await;
    let seen: Vec<i64> = on_one
        .take(3)
        .await
        .iter()
        .map(|e| e.id.unwrap_or(0))
        .collect();
    // More happens after the client's last event.
    buy(&one, &b, l, 2, 10).await;
    let resume_from = seen[1];
    let mut on_two = Stream::open(&two, &w, &format!("after={resume_from}")).await;
    let backfill: Vec<i64> = on_two
        .until_ready()
        .await
        .iter()
        .map(|e| e.id.unwrap_or(0))
        .collect();
    let all = table(&db).await;
    let public: Vec<i64> = all
        .iter()
        .filter(|(s, e)| {
            *s > resume_from
                && ["listing", "order", "trade"].contains(&e["type"].as_str().unwrap_or(""))
        })
        .map(|(s, _)| *s)
        .collect();
    assert!(public.len() > 1);
    assert_eq!(backfill, public, "no reload, nothing missed");
}
