//! The frame budget, measured inside Godot: `godot/bench/frame_budget.tscn`
//! buys through one `HTTPRequest` node, a pool of 32, and the addon, against
//! a real server behind a proxy adding 20 ms to every exchange, and reports
//! the main thread's process time frame by frame. Then the addon alone with
//! 1,000 and 10,000 purchases in flight, and with a 10,000-item inventory:
//! the cost per settlement must not grow with either. Last, 200 purchases
//! started in each of 10 frames: the cost of one `buy_listing` call, per
//! frame's batch (fastest and median), less at the mercy of one noisy frame.
//!
//! `cargo bench -p marketplace-e2e --bench godot_frame_budget` (also run by
//! `cargo xtask bench`); needs `GDRUST_GODOT_BIN`, otherwise prints SKIPPED.
//! The addon is the release library built now, run by whatever Godot build
//! `GDRUST_GODOT_BIN` is (a template_debug build loads it as its debug
//! library: the same file).

use std::process::Command;
use std::time::Duration;

use marketplace_e2e::Api;
use serde_json::{json, Value};

/// (name, client, purchases, inventory items, rounds: the purchases started
/// in that many batches, one a frame, each timed).
const CASES: &[(&str, &str, usize, usize, usize)] = &[
    ("one HTTPRequest node, one at a time", "one_http", 200, 0, 1),
    ("32 HTTPRequest nodes", "pool32", 200, 0, 1),
    ("TradingMarketplace", "addon", 200, 0, 1),
    ("TradingMarketplace, 1,000 in flight", "addon", 1_000, 0, 1),
    (
        "TradingMarketplace, 10,000 in flight",
        "addon",
        10_000,
        0,
        1,
    ),
    (
        "TradingMarketplace, 10,000-item inventory",
        "addon",
        200,
        10_000,
        1,
    ),
    (
        "TradingMarketplace, 200 calls a frame for 10 frames",
        "addon",
        2_000,
        0,
        10,
    ),
];

/// Listings per seller: below the default deposit cap, though the bench
/// server raises it anyway.
const PER_SELLER: usize = 500;

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let Some(godot) = marketplace_e2e::godot::godot_binary("Godot frame-budget benchmark") else {
        return;
    };
    let work = tempfile::tempdir().expect("temp dir");
    let project = work.path().join("project");
    marketplace_e2e::godot::make_project(&project);

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut config = marketplace_server::Config::for_tests(format!(
        "sqlite://{}/bench.sqlite",
        work.path().display()
    ));
    config.deposit_cap_credits = 1_000_000_000;
    config.deposit_cap_items = 1_000_000_000;
    let server = rt
        .block_on(marketplace_server::spawn(config))
        .expect("server starts");
    let proxy = rt.block_on(fault_proxy::Proxy::start(server.addr()));
    proxy.fault_randomly(
        "/v1/",
        fault_proxy::Fault::Delay(Duration::from_millis(20)),
        1.0,
    );

    // The listings, made straight on the server (no latency), many at once.
    let total: usize = CASES.iter().map(|c| c.2).sum();
    eprintln!("seeding {total} listings …");
    let base = server.url();
    let listings: Vec<(i64, i64)> = rt.block_on(async {
        let api = Api::default();
        let mut tasks = Vec::new();
        for seller in 0..total.div_ceil(PER_SELLER) {
            let (api, base) = (api.clone(), base.clone());
            let n = PER_SELLER.min(total - seller * PER_SELLER);
            tasks.push(tokio::spawn(async move {
                let (_, token) = api.login(&base, &format!("bench-seller-{seller}")).await;
                let mut made = Vec::with_capacity(n);
                for i in 0..n {
                    let price = 1 + (i % 5) as i64;
                    made.push((
                        api.create_listing(&base, &token, "bench_part", price).await,
                        price,
                    ));
                }
                made
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("seller task"));
        }
        all
    });
    let mut rest = listings.as_slice();
    let mut cases = Vec::new();
    for (name, client, n, inventory, rounds) in CASES {
        let (mine, others) = rest.split_at(*n);
        rest = others;
        cases.push(
            json!({"name": name, "client": client, "inventory": inventory,
            "rounds": rounds, "listings": mine}),
        );
    }
    let plan = work.path().join("plan.json");
    std::fs::write(
        &plan,
        json!({"url": proxy.url(), "cases": cases}).to_string(),
    )
    .expect("plan written");

    eprintln!("running the cases in Godot …");
    let mut command = Command::new(&godot);
    marketplace_e2e::godot::isolate_user_data(&mut command, work.path());
    let child = command
        .args(["--headless", "--path"])
        .arg(&project)
        .arg("res://bench/frame_budget.tscn")
        .env("MARKET_BENCH_PLAN", &plan)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("GDRUST_GODOT_BIN runs");
    // A scene whose script does not load never quits: give up after 20
    // minutes (every case together takes about one) instead of idling.
    let pid = child.id().to_string();
    let (finished, watchdog) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        if watchdog.recv_timeout(Duration::from_secs(20 * 60)).is_err() {
            eprintln!("the benchmark scene ran for 20 minutes: stopping it");
            let _ = Command::new("kill").arg(&pid).status();
        }
    });
    let output = child.wait_with_output().expect("Godot's output");
    let _ = finished.send(());
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        if line.contains("BENCH-") {
            eprintln!("{line}");
        }
    }
    let results: Vec<Value> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("BENCH "))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    if !stdout.contains("BENCH-DONE") || results.len() != CASES.len() {
        eprintln!("{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
        panic!("the benchmark scene did not finish every case");
    }
    rt.block_on(server.shutdown());

    println!("\nGodot frame budget: purchases of distinct listings through a 20 ms latency proxy (max 144 fps)\n");
    println!("| client | purchases | ok | wall time | frames | main-thread process time, total | per purchase | p99 frame | worst frame | worst after the first | starting every request (first frame; every batch for the 10-frame case) |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &results {
        if let Some(error) = r["error"].as_str() {
            println!(
                "| {} | did not run: {error} |",
                r["name"].as_str().unwrap_or("?")
            );
            continue;
        }
        let n = r["purchases"].as_f64().unwrap_or(1.0).max(1.0);
        let total_ms = r["process_total_ms"].as_f64().unwrap_or(0.0);
        println!(
            "| {} | {} | {} | {:.2} s | {} | {:.1} ms | {:.1} µs | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} ms |",
            r["name"].as_str().unwrap_or("?"),
            r["purchases"],
            r["ok"],
            r["wall_s"].as_f64().unwrap_or(0.0),
            r["frames"],
            total_ms,
            total_ms * 1000.0 / n,
            r["process_p99_ms"].as_f64().unwrap_or(0.0),
            r["process_worst_ms"].as_f64().unwrap_or(0.0),
            r["process_worst_after_first_ms"].as_f64().unwrap_or(0.0),
            r["issue_ms"].as_f64().unwrap_or(0.0),
        );
        if r["ok"] != r["purchases"] {
            eprintln!(
                "warning: {} purchases of {} succeeded in {:?}",
                r["ok"], r["purchases"], r["name"]
            );
        }
    }
    println!("\nOne `buy_listing` call on the main thread, the GDScript loop included (µs a call over one frame's batch):\n");
    println!("| client | batches | fastest batch | median batch |");
    println!("|---|---|---|---|");
    for r in results.iter().filter(|r| r["client"] == "addon") {
        println!(
            "| {} | {} | {:.2} µs | {:.2} µs |",
            r["name"].as_str().unwrap_or("?"),
            r["call_rounds"],
            r["call_us_min"].as_f64().unwrap_or(0.0),
            r["call_us_median"].as_f64().unwrap_or(0.0),
        );
    }
}
