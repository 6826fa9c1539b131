//! `cargo xtask <command>`: the project's task runner (std only, so it builds
//! in seconds on a fresh machine).
//!
//! - `demo`: build the Godot addon into `addons/trading_marketplace/bin/`,
//!   start the marketplace on embedded SQLite and run the seed scenario.
//! - `test`: every test — the workspace's cargo tests against SQLite and a
//!   throwaway PostgreSQL cluster, and the headless Godot suite when
//!   `GDRUST_GODOT_BIN` names a Godot 4 binary.
//! - `build-addon`: build this machine's addon library (debug and release)
//!   into `addons/trading_marketplace/bin/` and copy the addon into the
//!   demo project (`godot/addons/`, which git ignores).
//! - `cross <platform>`: build one platform's library from here (Linux
//!   arm64, Windows, macOS…) and check it; CI checks the Windows DLL so.
//! - `reproduce <platform>`: two release builds of that library whose target
//!   directories sit in different places (as two clones' do) must be the
//!   same bytes.
//! - `package`: every platform's libraries and the release zip in `dist/`;
//!   `--check` also runs the Godot suite on the unpacked zip.
//! - `screenshot`: the demo in a real window (Xvfb, Mesa), recorded with
//!   Godot's Movie Maker; the last frame becomes `docs/demo.png`.
//! - `bench`: every benchmark, PostgreSQL included (a throwaway cluster with
//!   fsync on), and the frame budget inside Godot when `GDRUST_GODOT_BIN`
//!   is set.
//! - `chaos`: the long chaos simulation on SQLite and PostgreSQL; flags go to
//!   `marketplace-chaos` (e.g. `--players 200 --ops 50000`).
//! - `postgres`: start a throwaway PostgreSQL cluster and wait (for benchmarks
//!   and debugging); prints its URL.

mod cross;
mod package;
mod postgres;
mod screenshot;
mod system;
mod zip;

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

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(workspace_root());
    cmd
}

pub fn workspace_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap_or_else(|_| std::path::PathBuf::from("."))
}

const USAGE: &str = "usage: cargo xtask <command> [options]
  demo [--no-serve] [--listen ADDR]  build the addon, start the marketplace (SQLite), run the seed scenario, keep serving
  test [--no-postgres]               run every test (starts a throwaway PostgreSQL cluster)
  build-addon                        build this machine's addon library (debug + release) and copy the addon into godot/addons/
  cross PLATFORM [--profile P]       build one platform's library (linux-x86_64, linux-arm64, windows-x86_64, macos) and check it
  reproduce PLATFORM                 build one platform's release library in two target directories (one under the clone,
                                     one under the system's temp dir) and check the two are the same bytes
  package [--only P1,P2] [--check]   build every platform (debug + release), write dist/trading_marketplace-<version>.zip + .sha256;
                                     --check: run the Godot suite on the unpacked zip (needs GDRUST_GODOT_BIN)
  screenshot                         record the demo under Xvfb (needs GDRUST_GODOT_BIN built with x11 and opengl3) into docs/demo.png
  bench                              run every benchmark (SQLite and a throwaway PostgreSQL with fsync on)
  chaos [FLAGS]                      long chaos run on SQLite and PostgreSQL (flags: see marketplace-chaos)
  postgres [--fsync]                 start a throwaway PostgreSQL cluster, print its URL, wait for Enter";

fn main() -> ExitCode {
    if let (Some(real), Some(base)) = (
        std::env::var_os(cross::LINK_WITH),
        std::env::var_os(cross::LINK_FROM),
    ) {
        // Run by rustc as the Windows linker (see `cross::link_relative`).
        return cross::link_relative(&real, std::path::Path::new(&base));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("test") => test(&args[1..]),
        Some("postgres") => postgres_shell(&args[1..]),
        Some("demo") => demo(&args[1..]),
        Some("build-addon") => build_addon(),
        Some("cross") => cross_one(&args[1..]),
        Some("reproduce") => reproduce(&args[1..]),
        Some("package") => package::package(&args[1..]),
        Some("screenshot") => screenshot::screenshot(),
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
    let mut godot_note = match std::env::var_os("GDRUST_GODOT_BIN") {
        Some(bin) => format!("xtask: Godot headless suite runs with {}", bin.to_string_lossy()),
        None => "xtask: SKIPPED Godot headless suite: GDRUST_GODOT_BIN is not set (point it at a Godot 4.3+ binary to run it)".into(),
    };
    godot_note.push('\n');
    godot_note.push_str(&match std::env::var_os("GDRUST_GODOT_EDITOR_BIN") {
        Some(bin) => format!("xtask: Godot editor checks run with {}", bin.to_string_lossy()),
        None => "xtask: SKIPPED Godot editor checks: GDRUST_GODOT_EDITOR_BIN is not set (point it at a Godot 4.3+ editor build to run them)".into(),
    });
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

/// This machine's library, debug and release, into the addon's `bin/`; then
/// the addon into the demo project.
pub fn build_addon() -> Result<()> {
    let host = cross::host()?;
    let target = cross::target_dir();
    for (folder, profile) in package::PROFILES {
        let lib = cross::build(host, profile, &target, false)?;
        let dest = package::install(host, folder, &lib)?;
        eprintln!("xtask: addon library at {}", dest.display());
    }
    sync_demo_addon()
}

/// `godot/addons/trading_marketplace` becomes a copy of the addon (a copy,
/// not a link: a Windows checkout turns links into text files).
fn sync_demo_addon() -> Result<()> {
    let root = workspace_root();
    let dest = root.join("godot").join(package::ADDON);
    let link = root.join("godot/addons");
    if link.is_symlink() {
        std::fs::remove_file(&link)?;
    } else if dest.exists() {
        std::fs::remove_dir_all(&dest)?;
    }
    copy_dir(&root.join(package::ADDON), &dest)?;
    // What the editor writes when it first imports the project; with it a
    // template build (no editor) runs the demo too.
    std::fs::create_dir_all(root.join("godot/.godot"))?;
    std::fs::write(
        root.join("godot/.godot/extension_list.cfg"),
        "res://addons/trading_marketplace/trading_marketplace.gdextension\n",
    )?;
    eprintln!("xtask: addon copied to {}", dest.display());
    Ok(())
}

pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `cross windows-x86_64 [--profile release]`: one platform, checked.
fn cross_one(args: &[String]) -> Result<()> {
    let platform = cross::platform(args.first().ok_or("cross needs a platform")?)?;
    let profile = match args.iter().position(|a| a == "--profile") {
        Some(i) => args.get(i + 1).ok_or("--profile needs a name")?.as_str(),
        None => "release",
    };
    let lib = cross::build(platform, profile, &cross::target_dir(), true)?;
    package::check_library(platform, &lib)?;
    eprintln!(
        "xtask: {} is a {} library with the GDExtension entry point",
        lib.display(),
        platform.dir
    );
    Ok(())
}

/// Two release builds of one platform's library whose target directories
/// sit in different places (under the clone, under the system's temp
/// dir): the same bytes, or an error naming both libraries (kept, to
/// compare; their digests are printed as they are built). It moves only
/// the target directory: the clone's own path is remapped out.
fn reproduce(args: &[String]) -> Result<()> {
    let platform = cross::platform(args.first().ok_or("reproduce needs a platform")?)?;
    let dirs = [
        workspace_root().join("target/reproduce"),
        std::env::temp_dir().join(format!(
            "trading-marketplace-reproduce-{}",
            std::process::id()
        )),
    ];
    let built = (|| -> Result<Vec<(String, std::path::PathBuf)>> {
        let mut out = Vec::new();
        for dir in &dirs {
            let lib = cross::build(platform, "release", dir, true)?;
            let digest = package::sha256_hex(&std::fs::read(&lib)?);
            eprintln!("xtask: {digest}  {}", lib.display());
            out.push((digest, lib));
        }
        Ok(out)
    })();
    let same = matches!(&built, Ok(b) if b[0].0 == b[1].0);
    if same || built.is_err() {
        let _ = std::fs::remove_dir_all(&dirs[1]);
    }
    let built = built?;
    if !same {
        return Err(format!(
            "{}: the two builds differ: {} and {}",
            platform.dir,
            built[0].1.display(),
            built[1].1.display()
        )
        .into());
    }
    eprintln!("xtask: {}: both builds are the same bytes", platform.dir);
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
            "-p",
            "marketplace-sim",
        ])
        .env("MARKET_BENCH_POSTGRES_URL", pg.url()))?;
    // Inside Godot (prints SKIPPED without GDRUST_GODOT_BIN).
    run(cargo().args([
        "bench",
        "-p",
        "marketplace-e2e",
        "--bench",
        "godot_frame_budget",
    ]))
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
    let exe = cross::target_dir().join("release/marketplace-chaos");
    run(std::process::Command::new(&exe).args(args))?;
    let pg = postgres::TempPostgres::start(true)?;
    run(std::process::Command::new(&exe)
        .args(args)
        .args(["--postgres", &pg.url()]))
}
