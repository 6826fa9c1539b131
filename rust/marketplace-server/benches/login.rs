//! Logins per second: by device id, and by identity token with each
//! signature algorithm (HS256, RS256, ES256, EdDSA), on SQLite (and
//! PostgreSQL with `MARKET_BENCH_POSTGRES_URL`).
//!
//! ```text
//! cargo bench -p marketplace-server --bench login
//! ```
//! Each round runs for `ROUND` with `IN_FLIGHT` logins at a time from a
//! client in the same process, over `PLAYERS` distinct players (so most
//! logins find their player; the first of each makes it). A second table
//! measures the signature check alone (`Providers::verify`, one thread),
//! which is what a token login adds to a device login's database write.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_identity_provider::{self as idp, Kind, SigningKey};
use marketplace_server::identity::{Providers, ProvidersFile};
use marketplace_server::Config;
use tokio::sync::Semaphore;

const ROUND: Duration = Duration::from_secs(4);
const IN_FLIGHT: usize = 32;
const PLAYERS: usize = 2_000;
const ISSUER: &str = "https://bench.test";
const SECRET_VAR: &str = "MARKET_BENCH_HS_SECRET";
const SECRET: &str = "bench-secret-bench-secret-bench-secret-xx";

struct Keys {
    rs: SigningKey,
    es: SigningKey,
    ed: SigningKey,
}

fn providers(dir: &std::path::Path, keys: &Keys) -> std::path::PathBuf {
    let jwks = dir.join("jwks.json");
    std::fs::write(
        &jwks,
        idp::jwks(&[&keys.rs, &keys.es, &keys.ed]).to_string(),
    )
    .unwrap();
    let path = dir.join("providers.json");
    let file = serde_json::json!({"providers": [
        {"name": "keys", "issuer": ISSUER, "audience": ["market"], "jwks_file": jwks},
        {"name": "backend", "issuer": "https://backend.bench", "audience": ["market"],
         "hs256_secret_env": SECRET_VAR},
    ]});
    std::fs::write(&path, file.to_string()).unwrap();
    path
}

/// `n` request bodies of one kind.
fn bodies(kind: &str, keys: &Keys) -> Vec<String> {
    (0..PLAYERS)
        .map(|i| {
            let sub = format!("player-{i}");
            let claims = idp::claims(ISSUER, "market", &sub);
            let token = match kind {
                "device" => {
                    return serde_json::json!({"device_id": format!("dev-{i}"), "name": "p"})
                        .to_string()
                }
                "HS256" => idp::hs256(
                    SECRET.as_bytes(),
                    &idp::claims("https://backend.bench", "market", &sub),
                ),
                "RS256" => keys.rs.sign(&claims),
                "ES256" => keys.es.sign(&claims),
                _ => keys.ed.sign(&claims),
            };
            serde_json::json!({"identity_token": token, "name": "p"}).to_string()
        })
        .collect()
}

async fn round(url: &str, bodies: Arc<Vec<String>>) -> (f64, Duration, Duration) {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(IN_FLIGHT)
        .build()
        .unwrap();
    let gate = Arc::new(Semaphore::new(IN_FLIGHT));
    let started = Instant::now();
    let mut tasks = Vec::new();
    let mut i = 0usize;
    while started.elapsed() < ROUND {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let (http, url, bodies) = (http.clone(), url.to_string(), bodies.clone());
        let body = i % bodies.len();
        i += 1;
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let r = http
                .post(format!("{url}/v1/sessions"))
                .header("content-type", "application/json")
                .body(bodies[body].clone())
                .send()
                .await
                .expect("answered");
            assert!(
                r.status().is_success(),
                "{}",
                r.text().await.unwrap_or_default()
            );
            drop(permit);
            t0.elapsed()
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.push(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    (
        latencies.len() as f64 / elapsed.as_secs_f64(),
        pct(0.5),
        pct(0.99),
    )
}

fn main() {
    std::env::set_var(SECRET_VAR, SECRET);
    let keys = Keys {
        rs: SigningKey::generate(Kind::Rs256, "rs"),
        es: SigningKey::generate(Kind::Es256, "es"),
        ed: SigningKey::generate(Kind::EdDsa, "ed"),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let providers_path = providers(dir.path(), &keys);
    let mut databases = vec![(
        "SQLite",
        format!("sqlite://{}/bench.sqlite", dir.path().display()),
    )];
    if let Ok(url) = std::env::var("MARKET_BENCH_POSTGRES_URL") {
        databases.push(("PostgreSQL", url));
    }
    println!(
        "Logins through HTTP, {IN_FLIGHT} in flight, {} s a round",
        ROUND.as_secs()
    );
    println!("| database | login by | logins/s | p50 | p99 |");
    println!("|---|---|---:|---:|---:|");
    for (name, url) in databases {
        let mut config = Config::for_tests(url);
        config.identity_providers = Some(providers_path.clone());
        config.sqlite_sync = marketplace_server::config::SqliteSync::Full;
        let server = rt.block_on(marketplace_server::spawn(config)).unwrap();
        for kind in ["device", "HS256", "RS256", "ES256", "EdDSA"] {
            let bodies = Arc::new(bodies(kind, &keys));
            let (rate, p50, p99) = rt.block_on(round(&server.url(), bodies));
            println!("| {name} | {kind} | {rate:.0} | {p50:.1?} | {p99:.1?} |");
        }
        rt.block_on(server.shutdown());
    }

    // The signature check alone.
    let file: ProvidersFile =
        serde_json::from_str(&std::fs::read_to_string(&providers_path).unwrap()).unwrap();
    let verifier = Providers::from_config(file, |_| Some(SECRET.to_string())).unwrap();
    println!("\nThe token check alone (Providers::verify), one thread");
    println!("| algorithm | checks/s | per check |");
    println!("|---|---:|---:|");
    for kind in ["HS256", "RS256", "ES256", "EdDSA"] {
        let tokens: Vec<String> = bodies(kind, &keys)
            .iter()
            .take(200)
            .map(|b| {
                let v: serde_json::Value = serde_json::from_str(b).unwrap();
                v["identity_token"].as_str().unwrap().to_string()
            })
            .collect();
        let n = 5_000;
        let started = Instant::now();
        rt.block_on(async {
            for i in 0..n {
                verifier
                    .verify(&tokens[i % tokens.len()])
                    .await
                    .expect("valid");
            }
        });
        let each = started.elapsed() / n as u32;
        println!(
            "| {kind} | {:.0} | {each:.1?} |",
            n as f64 / started.elapsed().as_secs_f64()
        );
    }
}
