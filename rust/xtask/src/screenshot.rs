//! `cargo xtask screenshot`: the README's picture of the demo, from a real
//! run. The demo server is started on a free port with a fresh data
//! directory (stocked by named traders), the demo project runs in a virtual
//! X display with Mesa's software OpenGL, and Godot's Movie Maker records
//! it; the last frame is `docs/demo.png`.
//!
//! `MARKET_DEMO_SHOWCASE=1` makes the shop play a few moves by itself
//! (a mission reward, a salvage run, a listing, a purchase) so the picture
//! shows credits, holds and cargo.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{cargo, run, workspace_root, Result};

pub fn screenshot() -> Result<()> {
    let godot = std::env::var_os("GDRUST_GODOT_BIN")
        .ok_or("set GDRUST_GODOT_BIN to a Godot 4 binary built with x11=yes opengl3=yes")?;
    crate::system::apt(&["xvfb", "xauth", "libgl1-mesa-dri"])?;
    crate::build_addon()?;
    run(cargo().args([
        "build",
        "--release",
        "-q",
        "-p",
        "marketplace-sim",
        "--bin",
        "marketplace-demo",
    ]))?;
    let work = std::env::temp_dir().join(format!("market-shot-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let demo = crate::cross::target_dir().join("release/marketplace-demo");
    let mut server = Command::new(demo)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--data"])
        .arg(work.join("server"))
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = server.stdout.take().ok_or("no demo output")?;
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut serving = false;
    while Instant::now() < deadline {
        match lines.next() {
            Some(Ok(line)) => {
                println!("{line}");
                if line.contains("keeps serving") {
                    serving = true;
                    break;
                }
            }
            _ => break,
        }
    }
    let result = (|| -> Result<()> {
        if !serving {
            return Err("the demo server did not come up".into());
        }
        let frames = work.join("movie");
        std::fs::create_dir_all(&frames)?;
        run(Command::new("xvfb-run")
            .args(["-a", "-s", "-screen 0 1280x800x24"])
            .arg(&godot)
            .args([
                "--path",
                "godot",
                "--rendering-driver",
                "opengl3",
                "--resolution",
                "1024x640",
            ])
            .args(["--fixed-fps", "30", "--quit-after", "150", "--write-movie"])
            .arg(frames.join("shop.png"))
            .current_dir(workspace_root())
            .env("MARKET_SERVER_URL", format!("http://127.0.0.1:{port}"))
            .env("MARKET_DEMO_SHOWCASE", "1")
            // A fresh pilot: the game's user:// data goes here.
            .env("XDG_DATA_HOME", work.join("userdata")))?;
        let mut pngs: Vec<PathBuf> = std::fs::read_dir(&frames)?
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "png"))
            .collect();
        pngs.sort();
        let last = pngs.last().ok_or("Godot wrote no frames")?;
        let dest = workspace_root().join("docs/demo.png");
        std::fs::create_dir_all(dest.parent().ok_or("no docs dir")?)?;
        std::fs::copy(last, &dest)?;
        eprintln!("xtask: {} ({} frames recorded)", dest.display(), pngs.len());
        Ok(())
    })();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(&work);
    result
}
