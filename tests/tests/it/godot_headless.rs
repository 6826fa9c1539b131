//! The Godot check suite (`godot/tests/test_runner.tscn`) run headless in a
//! real Godot 4 against real marketplace servers started here on port 0.
//!
//! Runs when `GDRUST_GODOT_BIN` names a Godot 4.3+ binary (an editor build, or
//! a template build: the project's `.godot/extension_list.cfg` is written
//! here); otherwise prints a SKIPPED line.
//!
//! The suite runs in a new project in a temporary directory: the demo
//! project's scenes and tests, plus the addon — by default the repository's
//! `addons/trading_marketplace/` with the library built now, or, with
//! `MARKET_ADDON_DIR`, an addon folder as a game developer gets it (e.g. the
//! unpacked release zip: `cargo xtask package --check` does this).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const IDENTITY_ISSUER: &str = "https://game.test";

/// What every Godot run here needs: the binary, a new project in a
/// temporary directory, and a marketplace server on SQLite beside it.
struct Stage {
    /// Signs the suite's identity tokens.
    identity_key: fake_identity_provider::SigningKey,
    godot: std::ffi::OsString,
    work: tempfile::TempDir,
    project: std::path::PathBuf,
    rt: tokio::runtime::Runtime,
    server: marketplace_server::RunningServer,
}

impl Stage {
    /// `None` (with a SKIPPED line naming `what`) without a Godot binary.
    fn new(what: &str) -> Option<Stage> {
        let godot = marketplace_e2e::godot::godot_binary(what)?;
        let work = tempfile::tempdir().unwrap();
        let project = work.path().join("project");
        marketplace_e2e::godot::make_project(&project);
        let rt = tokio::runtime::Runtime::new().unwrap();
        let url = format!("sqlite://{}/market.sqlite", work.path().display());
        let mut config = marketplace_server::Config::for_tests(url);
        // The game's identity provider: a key set in a file, its key made now.
        let key = fake_identity_provider::SigningKey::generate(
            fake_identity_provider::Kind::Es256,
            "godot-suite",
        );
        let keys = work.path().join("jwks.json");
        std::fs::write(&keys, fake_identity_provider::jwks(&[&key]).to_string()).unwrap();
        let providers = work.path().join("providers.json");
        let file = serde_json::json!({"providers": [{
            "name": "game", "issuer": IDENTITY_ISSUER, "audience": ["market"], "jwks_file": keys,
        }]});
        std::fs::write(&providers, file.to_string()).unwrap();
        config.identity_providers = Some(providers);
        let server = rt
            .block_on(marketplace_server::spawn(config))
            .expect("server starts");
        Some(Stage {
            identity_key: key,
            godot,
            work,
            project,
            rt,
            server,
        })
    }

    /// Stops the server cleanly.
    fn finish(self) {
        let Stage { rt, server, .. } = self;
        rt.block_on(server.shutdown());
    }

    /// Godot, headless, on the project, with its own user data.
    fn command(&self) -> Command {
        let mut command = Command::new(&self.godot);
        marketplace_e2e::godot::isolate_user_data(&mut command, self.work.path());
        command.arg("--headless").arg("--path").arg(&self.project);
        command
    }
}

#[test]
fn godot_check_suite() {
    let Some(stage) = Stage::new("Godot headless check suite") else {
        return;
    };
    let (work, rt, server) = (&stage.work, &stage.rt, &stage.server);
    // The same server with every purchase delayed: trades in flight across
    // a scene change.
    let slow = rt.block_on(fault_proxy::Proxy::start(server.addr()));
    slow.fault_randomly(
        "/purchase",
        fault_proxy::Fault::Delay(Duration::from_millis(1500)),
        1.0,
    );
    // The same server losing every purchase's answer (after committing it).
    let lossy = rt.block_on(fault_proxy::Proxy::start(server.addr()));
    lossy.fault_randomly("/purchase", fault_proxy::Fault::LoseResponse, 1.0);

    // A second market where only the game's backend brings value in: its
    // players get their credits and items from the admin API before the
    // suite starts.
    let grants_url = format!("sqlite://{}/grants.sqlite", work.path().display());
    let mut grants_config = marketplace_server::Config::for_tests(grants_url);
    grants_config.economy = marketplace_server::config::EconomyArg::ServerGrants;
    let admin_key = grants_config.admin_key.clone().unwrap_or_default();
    let grants = rt
        .block_on(marketplace_server::spawn(grants_config))
        .expect("grants server starts");
    let grants_run = format!("{:08x}", rand_suffix());
    rt.block_on(async {
        let http = reqwest::Client::new();
        for (who, item, quantity) in [
            ("gs", Some("relic"), 1),
            ("ga", None, 100),
            ("gb", None, 100),
        ] {
            let session: serde_json::Value = http
                .post(format!("{}/v1/sessions", grants.url()))
                .json(&serde_json::json!({"device_id": format!("{who}-{grants_run}"), "name": who}))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let player = session["player_id"].as_i64().unwrap();
            let r = http
                .post(format!("{}/admin/v1/players/{player}/grants", grants.url()))
                .bearer_auth(&admin_key)
                .header("idempotency-key", format!("grant-{who}-{grants_run}"))
                .json(&serde_json::json!({"item_id": item, "quantity": quantity}))
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success());
        }
    });

    let subject = format!("godot-pilot-{}", rand_suffix());
    let claims = fake_identity_provider::claims(IDENTITY_ISSUER, "market", &subject);
    let impostor = fake_identity_provider::SigningKey::generate(
        fake_identity_provider::Kind::Es256,
        "godot-suite",
    );
    let mut child = stage
        .command()
        .arg("res://tests/test_runner.tscn")
        .env("MARKET_IDENTITY_SUBJECT", &subject)
        .env("MARKET_IDENTITY_TOKEN", stage.identity_key.sign(&claims))
        .env("MARKET_IDENTITY_TOKEN_2", stage.identity_key.sign(&claims))
        .env("MARKET_FORGED_TOKEN", impostor.sign(&claims))
        .env("MARKET_SERVER_URL", server.url())
        .env("MARKET_SLOW_URL", slow.url())
        .env("MARKET_LOSSY_URL", lossy.url())
        .env("MARKET_GRANTS_URL", grants.url())
        .env("MARKET_GRANTS_RUN", &grants_run)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("GDRUST_GODOT_BIN runs");
    let deadline = Instant::now() + Duration::from_secs(180);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    rt.block_on(grants.shutdown());
    stage.finish();
    let status = status.expect("Godot finished within 180 s (a clean quit)");
    assert!(status.success(), "the check suite failed: {status}");
    assert!(stdout.contains("ALL CHECKS PASSED"));
    assert!(
        !stderr.contains("[panic"),
        "a Rust panic reached the engine"
    );
}

/// A few random bits for names, without a dependency.
fn rand_suffix() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ u64::from(std::process::id()).rotate_left(32)
}

/// The demo shop (`godot/scenes/shop.tscn`, through the `Market` autoload)
/// runs in a real Godot against a server, its showcase to the end (a
/// listing, a purchase, a buy order from the panel, deliveries collected,
/// a fee quote): no script error, no panic, a clean quit.
#[test]
fn demo_shop_runs_without_script_errors() {
    let Some(stage) = Stage::new("Godot demo shop") else {
        return;
    };
    let server = &stage.server;
    let output = stage
        .command()
        .args(["--quit-after", "100000"])
        .arg("res://scenes/shop.tscn")
        .env("MARKET_SERVER_URL", server.url())
        .env("MARKET_DEMO_SHOWCASE", "1")
        .env("MARKET_DEMO_QUIT", "1")
        .output()
        .expect("GDRUST_GODOT_BIN runs");
    stage.finish();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}\n{stderr}");
    assert!(
        output.status.success(),
        "the shop quit with {}",
        output.status
    );
    for bad in ["SCRIPT ERROR", "Parse Error", "[panic"] {
        assert!(!stderr.contains(bad), "{bad} in the demo shop:\n{stderr}");
    }
    assert!(
        stdout.contains("showcase done:"),
        "the showcase did not reach its end (each step is a callback from the autoload):\n{stdout}"
    );
}
