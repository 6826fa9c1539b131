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

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The addon's folder for this machine's library in `bin/`.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
const PLATFORM_DIR: &str = "linux-x86_64";
#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
const PLATFORM_DIR: &str = "linux-arm64";
#[cfg(target_os = "macos")]
const PLATFORM_DIR: &str = "macos";
#[cfg(target_os = "windows")]
const PLATFORM_DIR: &str = "windows-x86_64";

/// Copies `from` into `to`, leaving out the names in `skip`.
fn copy_dir(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target, skip);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A new Godot project at `project`: the demo's scenes and tests and the
/// addon under test.
fn make_project(project: &Path) {
    let repo = marketplace_e2e::workspace_root();
    copy_dir(&repo.join("godot"), project, &[".godot", "addons"]);
    let addon = project.join("addons/trading_marketplace");
    match std::env::var_os("MARKET_ADDON_DIR") {
        Some(dir) => {
            println!("addon under test: {}", PathBuf::from(&dir).display());
            copy_dir(Path::new(&dir), &addon, &[]);
        }
        None => {
            copy_dir(&repo.join("addons/trading_marketplace"), &addon, &["bin"]);
            let lib = marketplace_e2e::addon_library();
            for build in ["debug", "release"] {
                let bin = addon.join("bin").join(PLATFORM_DIR).join(build);
                std::fs::create_dir_all(&bin).unwrap();
                std::fs::copy(&lib, bin.join(lib.file_name().unwrap())).unwrap();
            }
        }
    }
    std::fs::create_dir_all(project.join(".godot")).unwrap();
    std::fs::write(
        project.join(".godot/extension_list.cfg"),
        "res://addons/trading_marketplace/trading_marketplace.gdextension\n",
    )
    .unwrap();
}

#[test]
fn godot_check_suite() {
    let Some(godot) = std::env::var_os("GDRUST_GODOT_BIN") else {
        let line = "SKIPPED: Godot headless check suite (set GDRUST_GODOT_BIN to a Godot 4.3+ binary to run it)";
        println!("{line}");
        eprintln!("{line}");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    make_project(&project);

    let rt = tokio::runtime::Runtime::new().unwrap();
    let url = format!("sqlite://{}/market.sqlite", work.path().display());
    let server = rt
        .block_on(marketplace_server::spawn(
            marketplace_server::Config::for_tests(url),
        ))
        .expect("server starts");
    // The same server with every purchase delayed: trades in flight across
    // a scene change.
    let slow = rt.block_on(fault_proxy::Proxy::start(server.addr()));
    slow.fault_randomly(
        "/purchase",
        fault_proxy::Fault::Delay(Duration::from_millis(1500)),
        1.0,
    );

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

    let mut child = Command::new(&godot)
        .args(["--headless", "--path"])
        .arg(&project)
        .arg("res://tests/test_runner.tscn")
        .env("MARKET_SERVER_URL", server.url())
        .env("MARKET_SLOW_URL", slow.url())
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
    rt.block_on(server.shutdown());
    rt.block_on(grants.shutdown());
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
