//! The addon in a real Godot *editor*, headless: enabling and disabling
//! the plugin (the `Market` autoload added and removed, the server setting
//! kept, a game's own autoload untouched) and the nodes' editor warnings.
//! The checks are an editor plugin of their own
//! (`godot/tests/editor_checks/`), enabled alone in a fresh project.
//!
//! Needs an editor build (export templates have no editor): runs when
//! `GDRUST_GODOT_EDITOR_BIN` names one, otherwise prints a SKIPPED line.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn plugin_enable_disable_and_editor_warnings() {
    let Some(editor) = std::env::var_os("GDRUST_GODOT_EDITOR_BIN") else {
        let line = "SKIPPED: the Godot editor checks (set GDRUST_GODOT_EDITOR_BIN to a Godot 4.3+ editor build to run them)";
        println!("{line}");
        eprintln!("{line}");
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let project = work.path().join("project");
    marketplace_e2e::godot::make_project(&project);
    // The project as a developer has it before enabling the addon's
    // plugin: no Market autoload, only the checks' own plugin enabled.
    let settings = project.join("project.godot");
    let text = std::fs::read_to_string(&settings).unwrap();
    let mut kept = String::new();
    let mut section = String::new();
    for line in text.lines() {
        if line.starts_with('[') {
            section = line.to_string();
        }
        if section == "[autoload]" || section == "[editor_plugins]" {
            continue;
        }
        kept.push_str(line);
        kept.push('\n');
    }
    kept.push_str(
        "\n[editor_plugins]\n\nenabled=PackedStringArray(\"res://addons/editor_checks/plugin.cfg\")\n",
    );
    std::fs::write(&settings, kept).unwrap();
    let checks = project.join("addons/editor_checks");
    std::fs::create_dir_all(&checks).unwrap();
    let source = marketplace_e2e::workspace_root().join("godot/tests/editor_checks");
    for file in ["plugin.cfg", "plugin.gd"] {
        std::fs::copy(source.join(file), checks.join(file)).unwrap();
    }
    std::fs::remove_dir_all(project.join("tests/editor_checks")).unwrap();

    let mut cmd = Command::new(&editor);
    cmd.args(["--headless", "--editor", "--path"])
        .arg(&project)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    marketplace_e2e::godot::isolate_user_data(&mut cmd, work.path());
    let mut child = cmd.spawn().expect("GDRUST_GODOT_EDITOR_BIN runs");
    // Read both pipes while it runs (a full pipe would stall the editor).
    let read = |pipe: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_string(&mut text);
            }
            text
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(300) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let (stdout, stderr) = (out.join().unwrap(), err.join().unwrap());
    println!("{stdout}\n{stderr}");
    assert!(
        status.success() && stdout.contains("EDITOR CHECKS PASSED"),
        "the editor checks failed ({status}):\n{stdout}\n{stderr}"
    );
}
