//! A Godot project to run the addon in: the demo project's scenes, tests
//! and benchmarks, plus the addon under test, in a directory of its own.

use std::path::{Path, PathBuf};

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
pub fn make_project(project: &Path) {
    let repo = crate::workspace_root();
    copy_dir(&repo.join("godot"), project, &[".godot", "addons"]);
    let addon = project.join("addons/trading_marketplace");
    match std::env::var_os("MARKET_ADDON_DIR") {
        Some(dir) => {
            println!("addon under test: {}", PathBuf::from(&dir).display());
            copy_dir(Path::new(&dir), &addon, &[]);
        }
        None => {
            copy_dir(&repo.join("addons/trading_marketplace"), &addon, &["bin"]);
            let lib = crate::addon_library();
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

/// `GDRUST_GODOT_BIN`, or a SKIPPED line naming `what` and `None`.
pub fn godot_binary(what: &str) -> Option<std::ffi::OsString> {
    let bin = std::env::var_os("GDRUST_GODOT_BIN");
    if bin.is_none() {
        let line =
            format!("SKIPPED: {what} (set GDRUST_GODOT_BIN to a Godot 4.3+ binary to run it)");
        println!("{line}");
        eprintln!("{line}");
    }
    bin
}

/// Gives a Godot run its own `user://` under `dir`, so the suite never
/// touches the developer's real saves of the demo (same project name) —
/// nor they the suite.
pub fn isolate_user_data(cmd: &mut std::process::Command, dir: &Path) {
    let data = dir.join("user-data");
    cmd.env("XDG_DATA_HOME", &data).env("APPDATA", &data);
    if cfg!(target_os = "macos") {
        cmd.env("HOME", &data);
    }
}
