//! What the machine has, and installing what it lacks: Debian packages,
//! rustup targets, Python tools. Every tool a task needs is installed from
//! here, so a fresh machine needs no steps by hand.

use std::process::Command;

use crate::{run, Result};

pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Installs Debian packages that are missing (as root, or with
/// passwordless sudo); a clear error on a machine without apt.
pub fn apt(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !std::path::Path::new("/usr/bin/apt-get").exists() {
        return Err(format!(
            "this task needs {} (Debian package names); install the equivalents, or run it on Debian",
            missing.join(", ")
        )
        .into());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let apt_get = |args: &[&str]| {
        let mut cmd = if is_root() {
            Command::new("apt-get")
        } else {
            // -n: fail rather than wait for a password nobody will type;
            // env: sudo would drop DEBIAN_FRONTEND.
            let mut c = Command::new("sudo");
            c.args(["-n", "env", "DEBIAN_FRONTEND=noninteractive", "apt-get"]);
            c
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    };
    apt_get(&["update", "-q"])?;
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(missing);
    apt_get(&install)
}

/// The Rust target, from rustup's mirror.
pub fn rust_target(triple: &str) -> Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .any(|l| l.trim() == triple)
        })
        .unwrap_or(false);
    if !installed {
        run(Command::new("rustup").args(["target", "add", triple]))?;
    }
    Ok(())
}
