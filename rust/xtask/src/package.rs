//! `cargo xtask package`: the addon as a Godot developer downloads it.
//!
//! `dist/trading_marketplace-<version>.zip` holds one folder,
//! `trading_marketplace-<version>/addons/trading_marketplace/`, with the
//! library for every desktop in its release and debug builds, the licences
//! (ours and those of every crate compiled into the library) and a short
//! README. The single root folder is what the Godot Asset Library installer
//! expects: it strips it and installs `addons/…` into the project.
//!
//! Reproducible: libraries are built with local paths remapped
//! (`--remap-path-prefix`, the target directory included) and refused if
//! they still name one; entries are sorted and dated with the commit's time.
//! A rebuild in the same clone gives the same zip, and the Linux and
//! Windows libraries are byte-identical from any clone with the same
//! toolchain: the clone's path is remapped, and `cargo xtask reproduce
//! <platform>` checks that the target directory's place does not matter
//! (the macOS dylib has not been checked). The Windows DLL takes
//! one more step: GNU ld orders its import table by the names of the files
//! the imports come from, so it is linked from inside the target directory
//! with relative paths (`cross::link_relative`); before that, a target
//! directory under `/tmp` and one under `/work` gave two import orders.
//! `dist/…zip.sha256` is written next
//! to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::cross::{self, Platform, PLATFORMS};
use crate::zip::{self, Entry};
use crate::{cargo, workspace_root, Result};

/// The two builds the `.gdextension` names: `debug` (the editor and debug
/// exports; gdext's strict safeguards) and `release`.
pub const PROFILES: [(&str, &str); 2] = [("debug", "addon-debug"), ("release", "release")];

pub const ADDON: &str = "addons/trading_marketplace";

/// The addon's version: the adapter crate's, which must match plugin.cfg.
pub fn version() -> Result<String> {
    let root = workspace_root();
    let manifest = std::fs::read_to_string(root.join("rust/marketplace-godot/Cargo.toml"))?;
    let crate_version =
        field(&manifest, "version").ok_or("no version in marketplace-godot's Cargo.toml")?;
    let plugin = std::fs::read_to_string(root.join(ADDON).join("plugin.cfg"))?;
    let plugin_version = field(&plugin, "version").ok_or("no version in plugin.cfg")?;
    if crate_version != plugin_version {
        return Err(format!(
            "version mismatch: marketplace-godot is {crate_version}, plugin.cfg says {plugin_version}"
        )
        .into());
    }
    Ok(crate_version)
}

/// `key = "value"` or `key="value"`, first occurrence.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// The commit's time (reproducible entry dates), or `SOURCE_DATE_EPOCH`.
fn source_date() -> u64 {
    if let Some(t) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return t;
    }
    Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0)
}

/// Builds every platform's libraries (also into the addon's `bin/`), then
/// the zip from exactly those libraries and the addon's tracked files.
pub fn package(args: &[String]) -> Result<()> {
    let platforms = selected(args)?;
    let version = version()?;
    let target_dir = cross::target_dir();
    let root = workspace_root();
    let prefix = format!("trading_marketplace-{version}/{ADDON}");
    let mut files = BTreeMap::new();
    for &platform in &platforms {
        for (folder, profile) in PROFILES {
            let lib = cross::build(platform, profile, &target_dir, true)?;
            check_library(platform, &lib)?;
            install(platform, folder, &lib)?;
            files.insert(
                format!("{prefix}/bin/{}/{folder}/{}", platform.dir, platform.file),
                Entry {
                    data: std::fs::read(&lib)?,
                    executable: true,
                },
            );
        }
    }
    let dirty = Command::new("git")
        .args(["status", "--porcelain", "--", ADDON])
        .current_dir(&root)
        .output()
        .map(|o| o.stdout.iter().any(|b| !b.is_ascii_whitespace()))
        .unwrap_or(false);
    if dirty {
        eprintln!("xtask: warning: {ADDON} has uncommitted changes; the zip holds the working tree's files");
    }
    if platforms.len() != PLATFORMS.len() {
        eprintln!("xtask: built the libraries asked for (--only); packaging needs every platform");
        return Ok(());
    }
    for path in tracked_addon_files()? {
        let name = path
            .strip_prefix(ADDON)
            .ok_or_else(|| format!("{path} is outside the addon"))?
            .to_string();
        files.insert(
            format!("{prefix}{name}"),
            Entry {
                data: std::fs::read(root.join(&path))?,
                executable: false,
            },
        );
    }
    for licence in ["LICENSE-MIT", "LICENSE-APACHE"] {
        files.insert(
            format!("{prefix}/{licence}"),
            Entry {
                data: std::fs::read(root.join(licence))?,
                executable: false,
            },
        );
    }
    files.insert(
        format!("{prefix}/THIRD_PARTY_LICENSES.md"),
        Entry {
            data: third_party_licences()?.into_bytes(),
            executable: false,
        },
    );

    let bytes = zip::write(&files, source_date())?;
    let dist = root.join("dist");
    std::fs::create_dir_all(&dist)?;
    let name = format!("trading_marketplace-{version}.zip");
    let zip_path = dist.join(&name);
    std::fs::write(&zip_path, &bytes)?;
    verify_independently(&zip_path, &files)?;
    let digest = sha256_hex(&bytes);
    std::fs::write(
        dist.join(format!("{name}.sha256")),
        format!("{digest}  {name}\n"),
    )?;
    eprintln!(
        "xtask: {} ({:.1} MiB, {} files)\nxtask: sha256 {digest}",
        zip_path.display(),
        bytes.len() as f64 / (1024.0 * 1024.0),
        files.len()
    );
    if args.iter().any(|a| a == "--check") {
        check_in_godot(&zip_path, &version)?;
    }
    Ok(())
}

/// Reads the zip back with a reader that is not ours — Python's `zipfile`,
/// which checks every entry's CRC (`testzip`) — and compares every file's
/// name and SHA-256 with what was meant to go in. Our writer and our reader
/// could share a mistake; the Asset Library's unzip would not.
fn verify_independently(zip_path: &Path, files: &BTreeMap<String, Entry>) -> Result<()> {
    const SCRIPT: &str = r#"
import hashlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    bad = z.testzip()
    if bad is not None:
        sys.exit("bad CRC in " + bad)
    for info in z.infolist():
        if not info.is_dir():
            print(hashlib.sha256(z.read(info)).hexdigest(), info.filename)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .arg(zip_path)
        .output()
        .map_err(|e| format!("python3 is needed to check the zip: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "the zip does not read back: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    let listed: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(digest, name)| (name.to_string(), digest.to_string()))
        .collect();
    let meant: BTreeMap<String, String> = files
        .iter()
        .map(|(name, entry)| (name.clone(), sha256_hex(&entry.data)))
        .collect();
    if listed != meant {
        let missing: Vec<_> = meant.keys().filter(|k| !listed.contains_key(*k)).collect();
        let extra: Vec<_> = listed.keys().filter(|k| !meant.contains_key(*k)).collect();
        return Err(format!(
            "the zip read back by Python differs: missing {missing:?}, extra {extra:?}, or different contents"
        )
        .into());
    }
    eprintln!(
        "xtask: zip checked with Python's zipfile: {} files, CRCs and contents as written",
        listed.len()
    );
    Ok(())
}

/// The Godot suite on the addon as a game developer gets it: the zip
/// unpacked, its `addons/trading_marketplace` copied into a new project.
fn check_in_godot(zip_path: &Path, version: &str) -> Result<()> {
    if std::env::var_os("GDRUST_GODOT_BIN").is_none() {
        return Err("--check needs GDRUST_GODOT_BIN (a Godot 4.3+ binary)".into());
    }
    let dir = std::env::temp_dir().join(format!("market-package-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    unpack(zip_path, &dir)?;
    let addon = dir
        .join(format!("trading_marketplace-{version}"))
        .join(ADDON);
    eprintln!("xtask: running the Godot suite on {}", addon.display());
    let result = crate::run(
        cargo()
            .args([
                "test",
                "--release",
                "-p",
                "marketplace-e2e",
                "--test",
                "it",
                "--",
                "godot_headless",
                "--nocapture",
            ])
            .env("MARKET_ADDON_DIR", &addon),
    );
    let _ = std::fs::remove_dir_all(&dir);
    result
}

/// `--only linux-x86_64,windows-x86_64` builds just those (into `bin/`;
/// packaging still needs every platform).
fn selected(args: &[String]) -> Result<Vec<Platform>> {
    match args.iter().position(|a| a == "--only") {
        Some(i) => {
            let list = args.get(i + 1).ok_or("--only needs a list of platforms")?;
            list.split(',').map(cross::platform).collect()
        }
        None => Ok(PLATFORMS.to_vec()),
    }
}

/// Copies a built library to `bin/<platform>/<debug|release>/`.
pub fn install(platform: Platform, folder: &str, lib: &Path) -> Result<PathBuf> {
    let dest_dir = workspace_root()
        .join(ADDON)
        .join("bin")
        .join(platform.dir)
        .join(folder);
    std::fs::create_dir_all(&dest_dir)?;
    let dest = dest_dir.join(platform.file);
    std::fs::copy(lib, &dest).map_err(|e| format!("copying {}: {e}", lib.display()))?;
    Ok(dest)
}

/// The addon's files as git tracks them (no `bin/`, no editor caches, no
/// stray local files), sorted.
fn tracked_addon_files() -> Result<Vec<String>> {
    let out = Command::new("git")
        .args(["ls-files", "-z", "--", ADDON])
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("git is needed to package: {e}"))?;
    if !out.status.success() {
        return Err("git ls-files failed: package from a git checkout".into());
    }
    let mut files: Vec<String> = out
        .stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .filter(|p| !p.contains("/bin/"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("no tracked files under {ADDON}").into());
    }
    Ok(files)
}

/// A library is the right format for its platform and carries the entry
/// symbol Godot calls; a Windows DLL is also checked for the export itself.
pub fn check_library(platform: Platform, lib: &Path) -> Result<()> {
    let bytes = std::fs::read(lib)?;
    let le16 = |at: usize| {
        bytes
            .get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let be32 = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let format_ok = match platform.dir {
        // ELF, e_machine: x86-64 (62) / AArch64 (183).
        "linux-x86_64" => bytes.starts_with(b"\x7fELF") && le16(18) == Some(62),
        "linux-arm64" => bytes.starts_with(b"\x7fELF") && le16(18) == Some(183),
        // PE: the header's machine field is AMD64.
        "windows-x86_64" => {
            let pe = bytes
                .get(0x3c..0x40)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .unwrap_or(0);
            bytes.starts_with(b"MZ")
                && bytes.get(pe..pe + 4) == Some(b"PE\0\0")
                && le16(pe + 4) == Some(0x8664)
        }
        // Mach-O universal: two slices, x86_64 and arm64.
        "macos" => {
            let cpus: Vec<u32> = (0..be32(4).unwrap_or(0) as usize)
                .filter_map(|i| be32(8 + i * 20))
                .collect();
            be32(0) == Some(0xcafe_babe)
                && cpus.contains(&0x0100_0007)
                && cpus.contains(&0x0100_000c)
        }
        _ => false,
    };
    if !format_ok {
        return Err(format!("{} is not a {} library", lib.display(), platform.dir).into());
    }
    if platform.dir.starts_with("linux") {
        let newest = newest_glibc(&bytes);
        if newest > (2, 17) {
            return Err(format!(
                "{} needs glibc {}.{}: it would not load on older distributions (built against 2.17 it should not)",
                lib.display(),
                newest.0,
                newest.1
            )
            .into());
        }
    }
    let symbol = b"gdext_rust_init";
    if !bytes.windows(symbol.len()).any(|w| w == symbol) {
        return Err(format!("{} has no gdext_rust_init", lib.display()).into());
    }
    if platform.dir == "windows-x86_64" {
        cross::check_dll_exports(lib, "gdext_rust_init")?;
    }
    Ok(())
}

/// The newest `GLIBC_x.y` symbol version an ELF library names.
fn newest_glibc(bytes: &[u8]) -> (u32, u32) {
    let tag = b"GLIBC_";
    let mut newest = (0, 0);
    for (i, w) in bytes.windows(tag.len()).enumerate() {
        if w != tag {
            continue;
        }
        let rest: String = bytes[i + tag.len()..]
            .iter()
            .take(8)
            .take_while(|b| b.is_ascii_digit() || **b == b'.')
            .map(|b| *b as char)
            .collect();
        let mut parts = rest.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        newest = newest.max(version);
    }
    newest
}

/// Every crate compiled into the library for a shipped platform, with its
/// licence and the licence texts it ships (MIT and Apache-2.0 ask for their
/// notices to travel with binaries; gdext's MPL-2.0 asks that users can find
/// its source, hence the repository links).
fn third_party_licences() -> Result<String> {
    let mut crates = BTreeMap::new();
    for platform in PLATFORMS {
        let triples: &[&str] = if platform.dir == "macos" {
            &["x86_64-apple-darwin", "aarch64-apple-darwin"]
        } else {
            std::slice::from_ref(&platform.triple)
        };
        for triple in triples {
            let out = cargo()
                .args([
                    "tree",
                    "-q",
                    "-p",
                    "marketplace-godot",
                    "-e",
                    "normal",
                    "--prefix",
                    "none",
                ])
                .args(["--target", triple, "--format", "{p}|{l}|{r}"])
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "cargo tree failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                let line = line.trim_end_matches(" (*)");
                let mut parts = line.splitn(3, '|');
                let (Some(package), Some(licence), Some(repo)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    continue;
                };
                // Proc macros run in the compiler, not in the library; path
                // packages are this project's own crates.
                if package.contains("(proc-macro)") || package.contains(" (") {
                    continue;
                }
                crates.insert(package.to_string(), (licence.to_string(), repo.to_string()));
            }
        }
    }
    let mut text = String::from(
        "# Third-party licences\n\nThe Trading Marketplace library is built from these crates. \
         Each entry gives the crate, its licence, where its source is, and the licence \
         texts the crate ships.\n",
    );
    for (package, (licence, repo)) in &crates {
        text.push_str(&format!(
            "\n## {package}\n\nLicence: {licence}  \nSource: {repo}\n"
        ));
        let (name, version) = package.split_once(" v").unwrap_or((package, ""));
        for (file, body) in licence_files(name, version) {
            text.push_str(&format!(
                "\n### {file}\n\n```text\n{}\n```\n",
                body.trim_end()
            ));
        }
    }
    Ok(text)
}

/// The licence files in a crate's registry source (`LICENSE*`, `COPYING*`,
/// `NOTICE*`), sorted by name.
fn licence_files(name: &str, version: &str) -> Vec<(String, String)> {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_default();
    let mut found = BTreeMap::new();
    for registry in std::fs::read_dir(home.join("registry/src"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let dir = registry.path().join(format!("{name}-{version}"));
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let file = entry.file_name().to_string_lossy().into_owned();
            let upper = file.to_uppercase();
            if ["LICENSE", "LICENCE", "COPYING", "NOTICE"]
                .iter()
                .any(|p| upper.starts_with(p))
            {
                if let Ok(body) = std::fs::read_to_string(entry.path()) {
                    found.insert(file, body);
                }
            }
        }
        if !found.is_empty() {
            break;
        }
    }
    found.into_iter().collect()
}

/// SHA-256 in lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Unpacks `zip_path` into `dir` (for the Godot suite run from the package).
pub fn unpack(zip_path: &Path, dir: &Path) -> Result<()> {
    for (name, data) in zip::read(&std::fs::read(zip_path)?)? {
        let dest = dir.join(&name);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(dest, data)?;
    }
    Ok(())
}

#[cfg(test)]
mod independent_check {
    use super::*;

    #[test]
    fn python_reads_our_zip_and_notices_a_difference() {
        if Command::new("python3").arg("--version").output().is_err() {
            eprintln!("SKIPPED: python3 not found");
            return;
        }
        let mut files = BTreeMap::new();
        files.insert(
            "addon/plugin.cfg".to_string(),
            Entry {
                data: b"[plugin]\n".to_vec(),
                executable: false,
            },
        );
        files.insert(
            "addon/bin/lib.so".to_string(),
            Entry {
                data: vec![7; 100_000],
                executable: true,
            },
        );
        let dir = tempfile_dir();
        let path = dir.join("t.zip");
        std::fs::write(&path, zip::write(&files, 1_700_000_000).unwrap()).unwrap();
        verify_independently(&path, &files).expect("reads back");
        // A file the zip does not hold as meant is caught.
        files.get_mut("addon/plugin.cfg").unwrap().data = b"other".to_vec();
        assert!(verify_independently(&path, &files).is_err());
        // So is a damaged archive (cut short: its directory is gone).
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 30]).unwrap();
        files.get_mut("addon/plugin.cfg").unwrap().data = b"[plugin]\n".to_vec();
        assert!(verify_independently(&path, &files).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-zip-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
