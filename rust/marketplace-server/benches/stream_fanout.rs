//! The change stream under load: many subscribers, one server.
//!
//! ```text
//! cargo bench -p marketplace-server --bench stream_fanout
//! MARKET_BENCH_SUBSCRIBERS=2000 cargo bench -p marketplace-server --bench stream_fanout
//! ```
//! The server runs as its own process (the built `marketplace-server`,
//! SQLite, fsync on) so its memory can be read from `/proc`; the
//! subscribers are plain TCP connections of this process reading the
//! server-sent events. Everything shares this machine's cores.
//!
//! 1. **Fan-out.** `MARKET_BENCH_SUBSCRIBERS` (default 10,000) subscribers
//!    connect; the server's resident memory before and after, per
//!    connection. Then 20 changes, one at a time: for each, the time from
//!    sending the change to every subscriber having it (p50 and p99 over
//!    all deliveries, and the slowest subscriber).
//! 2. **Sustained.** 1,000 subscribers; a producer makes 1,000 changes a
//!    second for 10 s while buyers race for listings as in the purchase
//!    bench: events delivered per second, the lag from commit to arrival
//!    (p50, p99), and purchase attempts per second meanwhile.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use marketplace_server::TokenSigner;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "bench-secret-bench-secret-bench-secret";

struct Server {
    child: Child,
    addr: String,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_marketplace-server"))
            .args(["--listen", &addr])
            .arg("--database")
            .arg(format!("sqlite://{}/market.sqlite", dir.path().display()))
            .args(["--token-secret", SECRET])
            .args(["--rate-limit-per-sec", "0"])
            .args(["--max-connections", "19000"])
            .args(["--max-connections-per-ip", "19000"])
            .args(["--stream-max-subscribers", "18000"])
            .args(["--market-data-cache-ms", "0"])
            .args(["--deposit-cap-items", "1000000000"])
            .args(["--deposit-cap-credits", "1000000000000"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the server starts");
        // Ready when it answers /healthz.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "the server did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Some(stderr) = child.stderr.take() {
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if line.contains("ERROR") || line.contains("WARN") {
                        eprintln!("server: {line}");
                    }
                }
            });
        }
        Server {
            child,
            addr,
            _dir: dir,
        }
    }

    /// Resident memory in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

/// A subscriber's token (subscribing writes nothing: no player row needed).
fn token(player: i64) -> String {
    TokenSigner::new(SECRET).issue(player, marketplace_server::now_secs() + 3600)
}

/// Arrival times of listing events, by listing id, across subscribers.
#[derive(Default)]
struct Arrivals {
    times: Mutex<Vec<(i64, Instant)>>,
}

/// One subscriber: opens the stream and notes when each event arrives.
async fn subscribe(addr: String, player: i64, arrivals: Arc<Arrivals>, ready: Arc<AtomicUsize>) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    let request = format!(
        "GET /v1/stream?items=bench HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\n\r\n",
        token(player)
    );
    if s.write_all(request.as_bytes()).await.is_err() {
        return;
    }
    let mut buf = vec![0u8; 16 * 1024];
    let mut text = String::new();
    let mut counted = false;
    loop {
        let n = match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let now = Instant::now();
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
        if !counted && text.contains("event: ready") {
            counted = true;
            ready.fetch_add(1, Ordering::Relaxed);
        }
        // Every complete `data:` line is one event: note its listing.
        let mut seen = Vec::new();
        let complete = text.rfind('\n').map_or("", |i| &text[..i]);
        for line in complete.lines() {
            // Cheaper than parsing: the listing's id follows this.
            const KEY: &str = "\"listing\":{\"id\":";
            if let Some(at) = line.find(KEY) {
                let digits: String = line[at + KEY.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                if let Ok(id) = digits.parse::<i64>() {
                    seen.push((id, now));
                }
            }
        }
        if !seen.is_empty() {
            if let Ok(mut t) = arrivals.times.lock() {
                t.extend(seen);
            }
        }
        // Keep only an unfinished line.
        match text.rfind('\n') {
            Some(i) => {
                text.drain(..=i);
            }
            None if text.len() > 64 * 1024 => text.clear(),
            None => {}
        }
    }
}

/// Logs a trader in; their token.
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

async fn post(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    path: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let r = http
        .post(format!("{base}{path}"))
        .bearer_auth(token)
        .header("idempotency-key", format!("k-{}", rand::random::<u64>()))
        .header(
            marketplace_protocol::PROTOCOL_HEADER,
            marketplace_protocol::PROTOCOL_VERSION,
        )
        .json(&body)
        .send()
        .await
        .expect("request");
    r.json().await.unwrap_or(serde_json::Value::Null)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn connect_all(server: &Server, n: usize, arrivals: &Arc<Arrivals>) -> Duration {
    let ready = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    for i in 0..n {
        tokio::spawn(subscribe(
            server.addr.clone(),
            1_000 + i as i64,
            arrivals.clone(),
            ready.clone(),
        ));
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::Relaxed) < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} subscribers connected",
            ready.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    started.elapsed()
}

async fn fan_out(n: usize) {
    let server = Server::start();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    // A seller (client deposits: each listing deposits its unit).
    let seller = login(&http, &base, "bench-seller").await;
    let before = server.rss_kib();
    let arrivals = Arc::new(Arrivals::default());
    let took = connect_all(&server, n, &arrivals).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = server.rss_kib();
    println!(
        "fan-out: {n} subscribers connected in {:.1} s; server RSS {} MiB → {} MiB: {:.1} KiB per connection",
        took.as_secs_f64(),
        before / 1024,
        after / 1024,
        (after.saturating_sub(before)) as f64 / n as f64
    );
    let mut deliveries = Vec::new();
    let mut slowest = Vec::new();
    for round in 0..20 {
        let sent = Instant::now();
        let b = post(
            &http,
            &base,
            &seller,
            "/v1/listings",
            json!({"item_id": "bench", "quantity": 1, "price": 10 + round, "deposit": 1}),
        )
        .await;
        let id = b["listing"]["id"].as_i64().unwrap_or_else(|| panic!("{b}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got: Vec<Instant> = arrivals
                .times
                .lock()
                .map(|t| {
                    t.iter()
                        .filter(|(l, _)| *l == id)
                        .map(|(_, at)| *at)
                        .collect()
                })
                .unwrap_or_default();
            if got.len() >= n {
                let mut lat: Vec<Duration> = got.iter().map(|at| at.duration_since(sent)).collect();
                lat.sort();
                slowest.push(*lat.last().unwrap_or(&Duration::ZERO));
                deliveries.extend(lat);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: {} of {n} arrived",
                got.len()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        if let Ok(mut t) = arrivals.times.lock() {
            t.clear();
        }
    }
    deliveries.sort();
    slowest.sort();
    println!(
        "fan-out: one change to all {n}: p50 {:.1} ms, p99 {:.1} ms per delivery; all of them in {:.1} ms (median of 20), {:.1} ms (worst)",
        percentile(&deliveries, 0.5).as_secs_f64() * 1e3,
        percentile(&deliveries, 0.99).as_secs_f64() * 1e3,
        percentile(&slowest, 0.5).as_secs_f64() * 1e3,
        slowest.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
}

async fn sustained(subscribers: usize) {
    const RATE: u64 = 1_000;
    const SECS: u64 = 10;
    let server = Server::start();
    let base = format!("http://{}", server.addr);
    let arrivals = Arc::new(Arrivals::default());
    connect_all(&server, subscribers, &arrivals).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .expect("client");
    let producer_token = login(&http, &base, "bench-producer").await;
    let racer_seller = login(&http, &base, "bench-race-seller").await;
    let mut buyers = Vec::new();
    for i in 0..20 {
        buyers.push(login(&http, &base, &format!("bench-buyer-{i}")).await);
    }
    // Listings for the buyers to race for (another item: not streamed to
    // the subscribers, who watch `bench`).
    let mut listings = Vec::new();
    for i in 0..2_000 {
        let b = post(
            &http,
            &base,
            &racer_seller,
            "/v1/listings",
            json!({"item_id": "race", "quantity": 1, "price": 5 + i % 3, "deposit": 1}),
        )
        .await;
        listings.push((b["listing"]["id"].as_i64().unwrap_or(0), 5 + i % 3));
    }
    // Listing id → when the producer had its answer (committed).
    let commits = Arc::new(Mutex::new(std::collections::HashMap::<i64, Instant>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The producer: RATE changes a second, 32 in flight at most.
    let producer = {
        let (http, base, commits, stop) =
            (http.clone(), base.clone(), commits.clone(), stop.clone());
        let token = producer_token.clone();
        tokio::spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(32));
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
            let mut made = 0u64;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let Ok(permit) = gate.clone().acquire_owned().await else {
                    break;
                };
                let (http, base, commits, token) =
                    (http.clone(), base.clone(), commits.clone(), token.clone());
                made += 1;
                tokio::spawn(async move {
                    let b = post(
                        &http,
                        &base,
                        &token,
                        "/v1/listings",
                        json!({"item_id": "bench", "quantity": 1, "price": 10, "deposit": 1}),
                    )
                    .await;
                    if let (Some(id), Ok(mut c)) = (b["listing"]["id"].as_i64(), commits.lock()) {
                        c.insert(id, Instant::now());
                    }
                    drop(permit);
                });
            }
            made
        })
    };
    // Buyers racing, 32 in flight.
    let attempts = Arc::new(AtomicUsize::new(0));
    let racers = {
        let (http, base, attempts, stop) =
            (http.clone(), base.clone(), attempts.clone(), stop.clone());
        let buyers = buyers.clone();
        tokio::spawn(async move {
            let gate = Arc::new(tokio::sync::Semaphore::new(32));
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let Ok(permit) = gate.clone().acquire_owned().await else {
                    break;
                };
                let (listing, price) = listings[i % listings.len()];
                let buyer = buyers[i % buyers.len()].clone();
                i += 1;
                let (http, base, attempts) = (http.clone(), base.clone(), attempts.clone());
                tokio::spawn(async move {
                    post(
                        &http,
                        &base,
                        &buyer,
                        &format!("/v1/listings/{listing}/purchase"),
                        json!({"expected_price": price, "quantity": 1, "deposit": price}),
                    )
                    .await;
                    attempts.fetch_add(1, Ordering::Relaxed);
                    drop(permit);
                });
            }
        })
    };
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(SECS)).await;
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let made = producer.await.unwrap_or(0);
    let _ = racers.await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let tries = attempts.load(Ordering::Relaxed);
    let delivered = arrivals.times.lock().map(|t| t.len()).unwrap_or(0);
    // Lag: each arrival after the producer had the change's answer
    // (an event may even arrive first: counted as 0).
    let mut lag = Vec::new();
    if let (Ok(t), Ok(c)) = (arrivals.times.lock(), commits.lock()) {
        for (id, at) in t.iter() {
            if let Some(done) = c.get(id) {
                lag.push(at.saturating_duration_since(*done));
            }
        }
    }
    lag.sort();
    println!(
        "sustained: {made} changes in {:.1} s ({:.0}/s) to {subscribers} subscribers: {delivered} deliveries ({:.0}/s), lag from commit p50 {:.1} ms, p99 {:.1} ms; purchases meanwhile {:.0} attempts/s",
        elapsed.as_secs_f64(),
        made as f64 / elapsed.as_secs_f64(),
        delivered as f64 / elapsed.as_secs_f64(),
        percentile(&lag, 0.5).as_secs_f64() * 1e3,
        percentile(&lag, 0.99).as_secs_f64() * 1e3,
        tries as f64 / elapsed.as_secs_f64(),
    );
}

fn main() {
    let n: usize = std::env::var("MARKET_BENCH_SUBSCRIBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sustained_subscribers: usize = std::env::var("MARKET_BENCH_SUSTAINED_SUBSCRIBERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    if n > 0 {
        rt.block_on(fan_out(n));
    }
    rt.block_on(sustained(sustained_subscribers));
}
