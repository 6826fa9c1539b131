//! `cargo xtask <command>`: the project's task runner (std only, so it builds
//! in seconds on a fresh machine).
//!
//! - `demo`: build the Godot addon into `addons/trading_marketplace/bin/`,
//!   start the marketplace on embedded SQLite and run the seed scenario.
//! - `test`: every test — the workspace's cargo tests against SQLite and a
//!   throwaway PostgreSQL cluster, and the headless Godot suite when
//!   `GDRUST_GODOT_BIN` names a Godot 4 binary.
//! - `build-addon`: only build the addon library into its `bin/` folder.
//! - `bench`: every benchmark, PostgreSQL included (a throwaway cluster with
//!   fsync on).
//! - `chaos`: the long chaos simulation on SQLite and PostgreSQL; flags go to
//!   `marketplace-chaos` (e.g. `--players 200 --ops 50000`).
//! - `postgres`: start a throwaway PostgreSQL cluster and wait (for benchmarks
//!   and debugging); prints its URL.

mod postgres;

use std::process::{Command, ExitCode};

pub type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Runs a command, failing with its name if it does not exit successfully.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .map_err(|e| format!("cannot run {:?}: {e}", cmd.get_program()))?;
    if !status.success() {
        return Err(format!("{:?} failed with {status}", cmd.get_program()).into());
    }
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| std::path::PathBuf::from("."))
}

const USAGE: &str = "usage: cargo xtask <command> [options]
  demo [--no-serve] [--listen ADDR]  build the addon, start the marketplace (SQLite), run the seed scenario, keep serving
  test [--no-postgres]               run every test (starts a throwaway PostgreSQL cluster)
  build-addon                        build the addon library into addons/trading_marketplace/bin/
  bench                              run every benchmark (SQLite and a throwaway PostgreSQL with fsync on)
  chaos [FLAGS]                      long chaos run on SQLite and PostgreSQL (flags: see marketplace-chaos)
  postgres [--fsync]                 start a throwaway PostgreSQL cluster, print its URL, wait for Enter";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("postgres") => postgres_shell(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("build-addon") => build_addon(),
        Some("bench") => bench(),
        Some("chaos") => chaos(&args[1..]),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

fn test(args: &[String]) -> Result<()> {
    let with_postgres = !args.iter().any(|a| a == "--no-postgres");
    let pg = if with_postgres {
        let pg = postgres::TempPostgres::start(false)?;
        eprintln!("xtask: PostgreSQL test cluster at {}", pg.url());
        Some(pg)
    } else {
        eprintln!("xtask: SKIPPED PostgreSQL tests (--no-postgres)");
        None
    };
    let godot_note = match std::env::var_os("GDRUST_GODOT_BIN") {
        Some(bin) => format!("xtask: Godot headless suite runs with {}", bin.to_string_lossy()),
        None => "xtask: SKIPPED Godot headless suite: GDRUST_GODOT_BIN is not set (point it at a Godot 4.3+ binary to run it)".into(),
    };
    eprintln!("{godot_note}");
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--release"]);
    if let Some(pg) = &pg {
        cmd.env("MARKET_TEST_POSTGRES_URL", pg.url())
            .env("MARKET_REQUIRE_POSTGRES", "1");
    }
    run(&mut cmd)?;
    eprintln!("{godot_note}");
    Ok(())
}

fn postgres_shell(args: &[String]) -> Result<()> {
    let fsync = args.iter().any(|a| a == "--fsync");
    let pg = postgres::TempPostgres::start(fsync)?;
    println!("{}", pg.url());
    eprintln!(
        "xtask: PostgreSQL running (fsync {}); press Enter to stop",
        if fsync { "on" } else { "off" }
    );
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    Ok(())
}

/// Where the addon's library goes for this platform, and its file name.
fn addon_library() -> Result<(&'static str, &'static str)> {
    match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => Ok(("linux-x86_64", "libtrading_marketplace.so")),
        ("linux", "aarch64") => Ok(("linux-arm64", "libtrading_marketplace.so")),
        ("windows", "x86_64") => Ok(("windows-x86_64", "trading_marketplace.dll")),
        ("macos", _) => Ok(("macos", "libtrading_marketplace.dylib")),
        (os, arch) => Err(format!(
            "no addon library entry for {os}/{arch} in trading_marketplace.gdextension"
        )
        .into()),
    }
}

fn build_addon() -> Result<()> {
    let (dir, file) = addon_library()?;
    eprintln!("xtask: building the addon library (release)");
    run(cargo().args(["build", "--release", "-p", "marketplace-godot"]))?;
    let root = workspace_root();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let built = target.join("release").join(file);
    let dest_dir = root.join("addons/trading_marketplace/bin").join(dir);
    std::fs::create_dir_all(&dest_dir)?;
    std::fs::copy(&built, dest_dir.join(file))
        .map_err(|e| format!("copying {}: {e}", built.display()))?;
    eprintln!("xtask: addon library at {}", dest_dir.join(file).display());
    Ok(())
}

fn demo(args: &[String]) -> Result<()> {
    build_addon()?;
    let mut cmd = cargo();
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "-p",
        "marketplace-sim",
        "--bin",
        "marketplace-demo",
        "--",
    ])
    .args(args);
    run(&mut cmd)
}

fn bench() -> Result<()> {
    let pg = postgres::TempPostgres::start(true)?;
    eprintln!(
        "xtask: PostgreSQL benchmark cluster at {} (fsync on)",
        pg.url()
    );
    run(cargo()
        .args([
            "bench",
            "-p",
            "marketplace-server",
            "-p",
            "marketplace-client",
        ])
        .env("MARKET_BENCH_POSTGRES_URL", pg.url()))
}

fn chaos(args: &[String]) -> Result<()> {
    run(cargo().args([
        "build",
        "--release",
        "-p",
        "marketplace-sim",
        "--bin",
        "marketplace-chaos",
    ]))?;
    let root = workspace_root();
    let exe = root.join("target/release/marketplace-chaos");
    run(std::process::Command::new(&exe).args(args))?;
    let pg = postgres::TempPostgres::start(true)?;
    run(std::process::Command::new(&exe)
        .args(args)
        .args(["--postgres", &pg.url()]))
}
