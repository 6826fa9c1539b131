//! `cargo xtask <command>`: the project's task runner (std only, so it builds
//! in seconds on a fresh machine).
//!
//! - `demo`: build the Godot addon into `addons/trading_marketplace/bin/`,
//!   start the marketplace on embedded SQLite and run the seed scenario.
//! - `test`: every test — the workspace's cargo tests against SQLite and a
//!   throwaway PostgreSQL cluster, and the headless Godot suite when
//!   `GDRUST_GODOT_BIN` names a Godot 4 binary.
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

const USAGE: &str = "usage: cargo xtask <demo|test|postgres> [options]
  demo [--no-serve]      build the addon, start the marketplace (SQLite) and run the seed scenario
  test [--no-postgres]   run every test (starts a throwaway PostgreSQL cluster)
  postgres [--fsync]     start a throwaway PostgreSQL cluster, print its URL, wait for Ctrl-C";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("postgres") => postgres_shell(&args[1..]),
        Some("demo") => demo(&args[1..]),
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
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--release"]);
    if let Some(pg) = &pg {
        cmd.env("MARKET_TEST_POSTGRES_URL", pg.url())
            .env("MARKET_REQUIRE_POSTGRES", "1");
    }
    run(&mut cmd)
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

fn demo(_args: &[String]) -> Result<()> {
    Err("demo is not built yet".into())
}
