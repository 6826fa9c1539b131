//! Building the addon library for every desktop from this Linux machine,
//! and the tools that takes — installed here, never by hand.
//!
//! | platform | Rust target | linker / C compiler |
//! |---|---|---|
//! | Linux x86_64 | `x86_64-unknown-linux-gnu` | the host's |
//! | Linux arm64 | `aarch64-unknown-linux-gnu` | Debian's `gcc-aarch64-linux-gnu` |
//! | Windows x86_64 | `x86_64-pc-windows-gnu` | Debian's `mingw-w64` |
//! | macOS (x86_64 + arm64, one universal file) | `universal2-apple-darwin` | `cargo-zigbuild` with `ziglang`, both from PyPI |

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::system::{apt, have, python_has, rust_target};
use crate::{cargo, run, workspace_root, Result};

/// One platform's library in the addon.
#[derive(Debug, Clone, Copy)]
pub struct Platform {
    /// Folder under `addons/trading_marketplace/bin/`.
    pub dir: &'static str,
    /// The library's file name.
    pub file: &'static str,
    /// The Rust target (for macOS, the zigbuild universal pseudo-target).
    pub triple: &'static str,
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
        how: How::Cargo,
    },
    Platform {
        dir: "linux-arm64",
        file: "libtrading_marketplace.so",
        triple: "aarch64-unknown-linux-gnu",
        how: How::Cargo,
    },
    Platform {
        dir: "windows-x86_64",
        file: "trading_marketplace.dll",
        triple: "x86_64-pc-windows-gnu",
        how: How::Cargo,
    },
    Platform {
        dir: "macos",
        file: "libtrading_marketplace.dylib",
        triple: "universal2-apple-darwin",
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

/// Everything `platform` needs to be built here.
pub fn ensure_tools(platform: Platform) -> Result<()> {
    match platform.dir {
        "linux-x86_64" => Ok(()),
        "linux-arm64" => {
            apt(&["gcc-aarch64-linux-gnu", "libc6-dev-arm64-cross"])?;
            rust_target(platform.triple)
        }
        "windows-x86_64" => {
            apt(&["gcc-mingw-w64-x86-64", "binutils-mingw-w64-x86-64"])?;
            rust_target(platform.triple)
        }
        "macos" => {
            rust_target("x86_64-apple-darwin")?;
            rust_target("aarch64-apple-darwin")?;
            if !have("cargo-zigbuild") || !python_has("ziglang") {
                run(Command::new("python3").args([
                    "-m",
                    "pip",
                    "install",
                    "-q",
                    "--disable-pip-version-check",
                    "ziglang",
                    "cargo-zigbuild",
                ]))?;
            }
            Ok(())
        }
        other => Err(format!("unknown platform {other}").into()),
    }
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
    ensure_tools(platform)?;
    let with_target = for_release || platform.dir != host()?.dir;
    eprintln!(
        "xtask: building the addon library for {} ({profile})",
        platform.dir
    );
    let mut cmd = cargo();
    cmd.env("CARGO_TARGET_DIR", target_dir);
    cmd.arg(if platform.how == How::Zig {
        "zigbuild"
    } else {
        "build"
    });
    if with_target {
        cmd.args(["--target", platform.triple]);
    }
    match platform.dir {
        "linux-arm64" => {
            cmd.env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            )
            .env("CC_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-gcc")
            .env("AR_aarch64_unknown_linux_gnu", "aarch64-linux-gnu-ar");
        }
        "windows-x86_64" if with_target => {
            cmd.env(
                "CARGO_TARGET_X86_64_PC_WINDOWS_GNU_LINKER",
                "x86_64-w64-mingw32-gcc",
            )
            .env("CC_x86_64_pc_windows_gnu", "x86_64-w64-mingw32-gcc")
            .env("AR_x86_64_pc_windows_gnu", "x86_64-w64-mingw32-ar");
        }
        _ => {}
    }
    if for_release {
        let flags = [
            format!(
                "--remap-path-prefix={}=/build/trading_marketplace",
                workspace_root().display()
            ),
            format!("--remap-path-prefix={}=/cargo", cargo_home().display()),
        ];
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
        for local in [workspace_root(), cargo_home()] {
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
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}
