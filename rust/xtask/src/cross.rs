//! Building the addon library for every desktop from this Linux machine,
//! and the tools that takes — installed here, never by hand.
//!
//! | platform | Rust target | linker / C compiler |
//! |---|---|---|
//! | Linux x86_64 | `x86_64-unknown-linux-gnu`, glibc 2.17 | zig (`cargo-zigbuild`) |
//! | Linux arm64 | `aarch64-unknown-linux-gnu`, glibc 2.17 | zig |
//! | Windows x86_64 | `x86_64-pc-windows-gnu` | Debian's `mingw-w64` |
//! | macOS (x86_64 + arm64, one universal file) | `universal2-apple-darwin` | zig |
//!
//! Zig links Linux libraries against glibc 2.17's symbols, so they load on
//! every distribution a Godot game runs on (the build machine's own glibc
//! would make them need 2.34+: no Ubuntu 20.04, no Steam Runtime sniper),
//! and links macOS against its bundled SDK stubs. `ziglang` and
//! `cargo-zigbuild` come from PyPI, pinned, into a virtualenv under
//! `target/tools/` (Debian's Python refuses system-wide pip installs).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::system::{apt, rust_target};
use crate::{cargo, run, workspace_root, Result};

/// The pinned build tools from PyPI.
const ZIG_TOOLS: [&str; 2] = ["ziglang==0.13.0", "cargo-zigbuild==0.24.1"];

/// One platform's library in the addon.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    /// Folder under `addons/trading_marketplace/bin/`.
    pub dir: &'static str,
    /// The library's file name.
    pub file: &'static str,
    /// The Rust target: where cargo puts the library, what `cargo tree`
    /// resolves (for macOS, the zigbuild universal pseudo-target).
    pub triple: &'static str,
    /// What `--target` says (zig's glibc version suffix included).
    pub build_target: &'static str,
    pub how: How,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// Plain `cargo build` (with the target's linker from Debian).
    Cargo,
    /// `cargo zigbuild`.
    Zig,
}

pub const PLATFORMS: [Platform; 4] = [
    Platform {
        dir: "linux-x86_64",
        file: "libtrading_marketplace.so",
        triple: "x86_64-unknown-linux-gnu",
        build_target: "x86_64-unknown-linux-gnu.2.17",
        how: How::Zig,
    },
    Platform {
        dir: "linux-arm64",
        file: "libtrading_marketplace.so",
        triple: "aarch64-unknown-linux-gnu",
        build_target: "aarch64-unknown-linux-gnu.2.17",
        how: How::Zig,
    },
    Platform {
        dir: "windows-x86_64",
        file: "trading_marketplace.dll",
        triple: "x86_64-pc-windows-gnu",
        build_target: "x86_64-pc-windows-gnu",
        how: How::Cargo,
    },
    Platform {
        dir: "macos",
        file: "libtrading_marketplace.dylib",
        triple: "universal2-apple-darwin",
        build_target: "universal2-apple-darwin",
        how: How::Zig,
    },
];

pub fn platform(dir: &str) -> Result<Platform> {
    PLATFORMS
        .iter()
        .copied()
        .find(|p| p.dir == dir)
        .ok_or_else(|| {
            format!(
                "no platform {dir:?} (one of: linux-x86_64, linux-arm64, windows-x86_64, macos)"
            )
            .into()
        })
}

/// Everything building `platform` from this machine needs.
pub fn ensure_tools(platform: Platform) -> Result<()> {
    match platform.dir {
        "linux-x86_64" | "linux-arm64" => {
            rust_target(platform.triple)?;
            zig_tools().map(drop)
        }
        "windows-x86_64" => {
            apt(&["gcc-mingw-w64-x86-64", "binutils-mingw-w64-x86-64"])?;
            rust_target(platform.triple)
        }
        "macos" => {
            rust_target("x86_64-apple-darwin")?;
            rust_target("aarch64-apple-darwin")?;
            zig_tools().map(drop)
        }
        other => Err(format!("unknown platform {other}").into()),
    }
}

/// The virtualenv with the pinned zig tools (made on first use); returns
/// its `bin/`, which goes first on `PATH` for `cargo zigbuild`.
fn zig_tools() -> Result<PathBuf> {
    let venv = target_dir().join("tools/zig-venv");
    let bin = venv.join("bin");
    let stamp = venv.join("pinned.txt");
    let wanted = ZIG_TOOLS.join("\n");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(bin);
    }
    let made = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !made {
        // Debian ships venv separately.
        apt(&["python3", "python3-venv"])?;
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(bin.join("python3"))
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(ZIG_TOOLS))?;
    std::fs::write(&stamp, wanted)?;
    Ok(bin)
}

/// Where cargo puts `platform`'s library for `profile` in `target_dir`
/// (built with `--target`, or for the host without one).
pub fn built(target_dir: &Path, platform: Platform, profile: &str, with_target: bool) -> PathBuf {
    let profile_dir = if profile == "dev" { "debug" } else { profile };
    if !with_target {
        return target_dir.join(profile_dir).join(platform.file);
    }
    target_dir
        .join(platform.triple)
        .join(profile_dir)
        .join(platform.file)
}

/// The platform this machine is, if the addon ships for it.
pub fn host() -> Result<Platform> {
    let dir = match (std::env::consts::OS, std::env::consts::ARCH) {
        ("linux", "x86_64") => "linux-x86_64",
        ("linux", "aarch64") => "linux-arm64",
        ("windows", "x86_64") => "windows-x86_64",
        ("macos", _) => "macos",
        (os, arch) => return Err(format!("the addon has no library for {os}/{arch}").into()),
    };
    platform(dir)
}

/// Builds the addon library for `platform` with cargo `profile` into
/// `target_dir`; returns the library's path.
///
/// `for_release`: always cross-style (`--target`, so host build scripts and
/// the test builds in `target/release` are untouched) with this machine's
/// paths remapped out of the binary, so another clone elsewhere builds the
/// same bytes. Otherwise a plain host build that shares `target/release`
/// with the tests.
pub fn build(
    platform: Platform,
    profile: &str,
    target_dir: &Path,
    for_release: bool,
) -> Result<PathBuf> {
    let with_target = for_release || platform.dir != host()?.dir;
    eprintln!(
        "xtask: building the addon library for {} ({profile})",
        platform.dir
    );
    let mut cmd = cargo();
    cmd.env("CARGO_TARGET_DIR", target_dir);
    if !with_target {
        // This machine's own library (development): no extra tools.
        cmd.arg("build");
    } else {
        ensure_tools(platform)?;
        match platform.how {
            How::Zig => {
                let bin = zig_tools()?;
                let path = std::env::var_os("PATH").unwrap_or_default();
                let mut paths = vec![bin];
                paths.extend(std::env::split_paths(&path));
                cmd.env("PATH", std::env::join_paths(paths)?);
                cmd.arg("zigbuild");
            }
            How::Cargo => {
                cmd.arg("build");
                if platform.dir == "windows-x86_64" {
                    // This very binary links (see `link_relative`), so the
                    // DLL does not depend on where the target directory is.
                    cmd.env(
                        "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER",
                        std::env::current_exe()?,
                    )
                    .env(LINK_WITH, "x86_64-w64-mingw32-gcc")
                    .env(LINK_FROM, target_dir)
                    .env("CC_x86_64_pc_windows_gnu", "x86_64-w64-mingw32-gcc")
                    .env("AR_x86_64_pc_windows_gnu", "x86_64-w64-mingw32-ar");
                }
            }
        }
        cmd.args(["--target", platform.build_target]);
    }
    if for_release {
        let mut flags = vec![
            format!(
                "--remap-path-prefix={}=/build/trading_marketplace",
                workspace_root().display()
            ),
            format!("--remap-path-prefix={}=/cargo", cargo_home().display()),
            // Generated sources (build scripts' OUT_DIR) live here; it may be
            // outside the clone (CARGO_TARGET_DIR). Last, so it wins when the
            // target directory is inside the clone.
            format!("--remap-path-prefix={}=/target", target_dir.display()),
        ];
        if platform.dir == "windows-x86_64" {
            // No build time in the PE header, and no symbol table: its
            // entries name rustc's temp files (random per build).
            flags.push("-Clink-arg=-Wl,--no-insert-timestamp".into());
            flags.push("-Cstrip=symbols".into());
        }
        if platform.dir == "macos" {
            // Without -install_name the linker names a dylib by its output
            // path (LC_ID_DYLIB), this machine's;
            // Godot opens it by path, so a relative install name is enough.
            flags.push("-Clink-arg=-Wl,-install_name,@rpath/libtrading_marketplace.dylib".into());
        }
        cmd.env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"));
    }
    cmd.args(["--profile", profile, "-p", "marketplace-godot", "--lib"]);
    run(&mut cmd)?;
    let lib = built(target_dir, platform, profile, with_target);
    if !lib.exists() {
        return Err(format!("{} was not built", lib.display()).into());
    }
    if for_release {
        let bytes = std::fs::read(&lib)?;
        for local in [workspace_root(), cargo_home(), target_dir.to_path_buf()] {
            let needle = local.to_string_lossy().into_owned();
            if needle.len() > 1 && bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                return Err(format!(
                    "{} names this machine's path {needle}: not reproducible",
                    lib.display()
                )
                .into());
            }
        }
    }
    Ok(lib)
}

/// Set (to the real linker) when this binary is run as the Windows
/// linker; [`LINK_FROM`] names the target directory.
pub const LINK_WITH: &str = "XTASK_LINK_WITH";
pub const LINK_FROM: &str = "XTASK_LINK_FROM";

/// Runs the real linker from the target directory, with every path under
/// it made relative to it.
///
/// Why: GNU ld lays out a DLL's import table in the order of the *names*
/// of the files the imports come from (`SORT_BY_NAME(*)(.idata$2)` in its
/// PE script). Some come from the toolchain (`~/.rustup/…/libstd-….rlib`,
/// `/usr/…/mingw/lib/libkernel32.a`), and some from crates built in the
/// target directory (rustc keeps a raw-dylib crate's import library in its
/// rlib). So a target directory under `/tmp` put those imports first and
/// one under `/work` last: two clones, two DLLs. Relative, they are
/// `x86_64-pc-windows-gnu/…` wherever the clone is, and always sort after
/// the toolchain's absolute paths.
pub fn link_relative(real: &std::ffi::OsStr, base: &Path) -> std::process::ExitCode {
    let fail = |message: String| {
        eprintln!("xtask link: {message}");
        std::process::ExitCode::FAILURE
    };
    // `/build/target/` and `/build/target` name one directory.
    let base_text = base.to_string_lossy();
    let prefix = format!("{}/", base_text.trim_end_matches('/'));
    let mut rewritten = 0usize;
    // A path under the target directory, alone or as an option's value
    // (`-L…`, `-o…`, `…=path`, `…,path`): made relative; nothing else is
    // touched.
    let mut relative = |arg: &str| -> String {
        for lead in ["", "-L", "-o"] {
            if let Some(rest) = arg.strip_prefix(lead).and_then(|a| a.strip_prefix(&prefix)) {
                rewritten += 1;
                return format!("{lead}{rest}");
            }
        }
        for sep in ['=', ','] {
            let needle = format!("{sep}{prefix}");
            if arg.contains(&needle) {
                rewritten += 1;
                return arg.replace(&needle, &sep.to_string());
            }
        }
        arg.to_string()
    };
    let mut args = Vec::new();
    for arg in std::env::args_os().skip(1) {
        let Some(text) = arg.to_str() else {
            args.push(arg);
            continue;
        };
        match text.strip_prefix('@') {
            // A response file (long command lines), one argument a line.
            Some(file) => {
                let body = match std::fs::read_to_string(file) {
                    Ok(body) => body,
                    Err(e) => return fail(format!("cannot read {file}: {e}")),
                };
                let lines: Vec<String> = body.lines().map(&mut relative).collect();
                let copy = format!("{file}.relative");
                if let Err(e) = std::fs::write(&copy, lines.join("\n")) {
                    return fail(format!("cannot write {copy}: {e}"));
                }
                args.push(format!("@{copy}").into());
            }
            None => args.push(relative(text).into()),
        }
    }
    if rewritten == 0 {
        // Linking as given would quietly bring back the clone-dependent
        // import order.
        return fail(format!("nothing on the link line is under {prefix}"));
    }
    match Command::new(real).args(&args).current_dir(base).status() {
        Ok(status) if status.success() => std::process::ExitCode::SUCCESS,
        Ok(status) => std::process::ExitCode::from(status.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => fail(format!("cannot run {}: {e}", real.to_string_lossy())),
    }
}

pub fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default()
}

/// Checks that a Windows DLL exports the GDExtension entry symbol, with
/// mingw's objdump.
pub fn check_dll_exports(dll: &Path, symbol: &str) -> Result<()> {
    apt(&["binutils-mingw-w64-x86-64"])?;
    let out = Command::new("x86_64-w64-mingw32-objdump")
        .arg("-p")
        .arg(dll)
        .output()
        .map_err(|e| format!("cannot run x86_64-w64-mingw32-objdump: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let exported = text
        .lines()
        .skip_while(|l| !l.contains("[Ordinal/Name Pointer] Table"))
        .any(|l| l.split_whitespace().last() == Some(symbol));
    if !exported {
        return Err(format!("{} does not export {symbol}", dll.display()).into());
    }
    eprintln!("xtask: {} exports {symbol}", dll.display());
    Ok(())
}

/// The workspace's `target/` or `CARGO_TARGET_DIR`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from) {
        // Cargo reads a relative CARGO_TARGET_DIR from the current directory.
        Some(dir) if dir.is_relative() => std::env::current_dir().unwrap_or_default().join(dir),
        Some(dir) => dir,
        None => workspace_root().join("target"),
    }
}
