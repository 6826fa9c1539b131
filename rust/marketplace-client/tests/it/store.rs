//! The player store: crash safety (I3, I5), corrupt and foreign files,
//! failing disks, and one writer under load.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use marketplace_client::persist::{self, backup_path, LoadError, RealFs, SaveFs};
use marketplace_client::{PlayerState, PlayerStore, StoreEvent, StoreOptions};

fn events(store: &mut PlayerStore) -> Vec<StoreEvent> {
    let mut out = Vec::new();
    store.drain_events(&mut out);
    out
}

/// A store that writes the whole document at every save (no log): the
/// file-level guarantees below are about that write.
fn open(path: &Path) -> PlayerStore {
    PlayerStore::open(
        path,
        "Ann",
        StoreOptions {
            log_bytes: 0,
            ..StoreOptions::default()
        },
    )
    .expect("opens")
}

/// A store as games get it: changes appended to the log between document
/// writes.
fn open_logged(path: &Path) -> PlayerStore {
    PlayerStore::open(path, "Ann", StoreOptions::default()).expect("opens")
}

/// Which step of a save fails: 0 = none, 1 = write, 2 = link, 3 = rename, 4 = dir sync.
#[derive(Clone, Default)]
struct FaultyFs {
    fail_step: Arc<AtomicU8>,
    kind: Arc<AtomicU8>,
}

impl FaultyFs {
    fn error(&self) -> io::Error {
        match self.kind.load(Ordering::SeqCst) {
            1 => io::Error::from_raw_os_error(30), // EROFS: read-only file system
            2 => io::Error::from(io::ErrorKind::PermissionDenied),
            _ => io::Error::from_raw_os_error(28), // ENOSPC: no space left on device
        }
    }
    fn check(&self, step: u8) -> io::Result<()> {
        if self.fail_step.load(Ordering::SeqCst) == step {
            Err(self.error())
        } else {
            Ok(())
        }
    }
}

impl SaveFs for FaultyFs {
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        if self.fail_step.load(Ordering::SeqCst) == 1 {
            // A full disk: part of the file gets written, then the error.
            let _ = std::fs::write(path, &bytes[..bytes.len() / 2]);
            return Err(self.error());
        }
        RealFs.write_synced(path, bytes)
    }
    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> io::Result<()> {
        if self.fail_step.load(Ordering::SeqCst) == 1 {
            // A full disk: part of the line gets written, then the error.
            let _ = RealFs.append_synced(path, &bytes[..bytes.len() / 2]);
            return Err(self.error());
        }
        RealFs.append_synced(path, bytes)
    }
    fn link_or_copy(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(2)?;
        RealFs.link_or_copy(from, to)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.check(3)?;
        RealFs.rename(from, to)
    }
    fn sync_dir(&mut self, dir: &Path) -> io::Result<()> {
        self.check(4)?;
        RealFs.sync_dir(dir)
    }
}

#[test]
fn save_and_reload_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let mut store = open(&path);
    store.add_credits(500).unwrap();
    store.add_item("ore", 3).unwrap();
    let hold = store.reserve_credits(120).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    let saved = store.state().clone();
    drop(store);
    let store = open(&path);
    assert_eq!(store.state(), &saved);
    assert_eq!(store.state().held_credits(), 120);
    assert!(store.state().holds.contains_key(&hold));
}

#[test]
fn corrupt_main_file_falls_back_to_backup_and_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let mut store = open(&path);
    store.add_item("ore", 1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    store.add_item("ore", 1).unwrap(); // second save: the first becomes the backup
    store.flush(Duration::from_secs(5)).unwrap();
    drop(store);
    for garbage in [
        &b"{\"version\":1,\"cred"[..],
        b"",
        b"\x00\x01\x02",
        b"[]",
        b"{\"version\":1}",
    ] {
        let backup: PlayerState =
            serde_json::from_slice(&std::fs::read(backup_path(&path)).unwrap()).unwrap();
        let in_backup = backup.item_count("ore");
        std::fs::write(&path, garbage).unwrap();
        let mut store = open(&path);
        assert_eq!(
            store.state().item_count("ore"),
            in_backup,
            "the backup's content"
        );
        let evs = events(&mut store);
        assert!(
            evs.iter()
                .any(|e| matches!(e, StoreEvent::RecoveredFromBackup { .. })),
            "recovery is reported: {evs:?}"
        );
        assert!(
            dir.path().join("player.json.corrupt").exists(),
            "the damaged file is kept"
        );
        store.flush(Duration::from_secs(5)).unwrap();
        drop(store);
        // A good main file was written again.
        assert_eq!(open(&path).state().item_count("ore"), in_backup);
        // Put two versions back for the next round.
        let mut store = open(&path);
        store.add_item("ore", 1).unwrap();
        store.flush(Duration::from_secs(5)).unwrap();
        store.remove_item("ore", 1).unwrap();
        store.flush(Duration::from_secs(5)).unwrap();
    }
}

#[test]
fn inconsistent_main_file_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let mut store = open(&path);
    store.add_credits(10).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    store.add_credits(10).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    drop(store);
    let mut bad: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    bad["credits"] = serde_json::json!(-50);
    std::fs::write(&path, bad.to_string()).unwrap();
    let store = open(&path);
    assert_eq!(
        store.state().credits,
        10,
        "fell back to the consistent backup"
    );
}

#[test]
fn both_files_corrupt_is_an_error_and_leaves_them_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    std::fs::write(&path, b"{broken").unwrap();
    std::fs::write(backup_path(&path), b"also broken").unwrap();
    let err = PlayerStore::open(&path, "Ann", StoreOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(err, LoadError::BothUnreadable { .. }), "{err}");
    assert!(err.to_string().contains("left untouched"));
    assert_eq!(std::fs::read(&path).unwrap(), b"{broken");
    assert_eq!(std::fs::read(backup_path(&path)).unwrap(), b"also broken");
    // Main corrupt and no backup at all: also an error, never an empty inventory.
    std::fs::remove_file(backup_path(&path)).unwrap();
    assert!(PlayerStore::open(&path, "Ann", StoreOptions::default()).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), b"{broken");
}

#[test]
fn newer_schema_is_refused_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let future = br#"{"version":99,"credits":5,"wallets":{"main":9}}"#;
    std::fs::write(&path, future).unwrap();
    let err = PlayerStore::open(&path, "Ann", StoreOptions::default())
        .err()
        .expect("refused");
    assert!(
        matches!(
            err,
            LoadError::NewerVersion {
                found: 99,
                supported: 5,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(std::fs::read(&path).unwrap(), future);
}

fn faulty_store(path: &Path, fs: &FaultyFs) -> PlayerStore {
    PlayerStore::open(
        path,
        "Ann",
        StoreOptions {
            fs: Box::new(fs.clone()),
            retry_after: Duration::from_millis(10),
            log_bytes: 0,
            ..StoreOptions::default()
        },
    )
    .expect("opens")
}

#[test]
fn full_disk_or_read_only_directory_reports_and_keeps_memory_intact() {
    for kind in [0u8, 1, 2] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("player.json");
        let fs = FaultyFs::default();
        fs.kind.store(kind, Ordering::SeqCst);
        let mut store = faulty_store(&path, &fs);
        store.add_credits(100).unwrap();
        store.flush(Duration::from_secs(5)).unwrap();
        let on_disk = std::fs::read(&path).unwrap();
        fs.fail_step.store(1, Ordering::SeqCst);
        store.add_item("ore", 7).unwrap();
        let err = store.flush(Duration::from_secs(5)).unwrap_err();
        assert!(!err.is_empty());
        let evs = events(&mut store);
        assert!(
            evs.iter()
                .any(|e| matches!(e, StoreEvent::SaveFailed { .. })),
            "{evs:?}"
        );
        assert_eq!(store.state().item_count("ore"), 7, "memory intact");
        assert_eq!(store.state().credits, 100);
        assert_eq!(
            std::fs::read(&path).unwrap(),
            on_disk,
            "the old file is intact"
        );
        assert!(store.is_failing());
        // The disk recovers: the retry writes everything.
        fs.fail_step.store(0, Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(20));
        store.poll();
        store.flush(Duration::from_secs(5)).unwrap();
        assert!(!store.is_failing());
        drop(store);
        assert_eq!(open(&path).state().item_count("ore"), 7);
    }
}

#[test]
fn a_save_interrupted_at_any_step_leaves_a_whole_old_or_new_file() {
    for step in 1..=4u8 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("player.json");
        let fs = FaultyFs::default();
        let mut store = faulty_store(&path, &fs);
        store.add_item("ore", 1).unwrap();
        store.flush(Duration::from_secs(5)).unwrap();
        fs.fail_step.store(step, Ordering::SeqCst);
        store.add_item("ore", 1).unwrap();
        let result = store.flush(Duration::from_secs(5));
        // "Crash" here: drop everything (the disk still failing) and load
        // what is on disk.
        drop(store);
        let loaded = persist::load(&path).expect("loads");
        assert!(
            loaded.recovered_from_backup.is_none(),
            "step {step}: main file whole"
        );
        let count = loaded.state.expect("a save exists").item_count("ore");
        match step {
            4 => assert!(
                result.is_err() && count == 2,
                "renamed before the failing dir sync"
            ),
            _ => assert_eq!(count, 1, "step {step}: the old version"),
        }
    }
}

#[test]
fn save_to_an_impossible_path_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"file").unwrap();
    let path = blocker.join("player.json");
    let err = PlayerStore::open(&path, "Ann", StoreOptions::default())
        .err()
        .expect("refused");
    assert!(matches!(err, LoadError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("not-a-dir"),
        "the message names the path: {err}"
    );
}

/// The seed's local test, scaled: 10,000 rapid add/remove/save calls on the
/// game thread while another thread settles trades through the remote
/// handle. The result is the arithmetic sum; writes are far fewer than saves.
#[test]
fn ten_thousand_mutations_from_two_threads_one_writer() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let mut store = open_logged(&path);
    let remote = store.remote();
    let trader = std::thread::spawn(move || {
        for i in 0..10_000 {
            remote.add_item("salvage", 2);
            remote.add_credits(3);
            if i % 100 == 0 {
                remote.save();
                std::thread::sleep(Duration::from_micros(50));
            }
        }
    });
    let mut expected_ore = 0i64;
    for i in 0..10_000i64 {
        store.add_item("ore", 3).unwrap();
        expected_ore += 3;
        if i % 3 == 0 {
            store.remove_item("ore", 2).unwrap();
            expected_ore -= 2;
        }
        store.save();
        if i % 50 == 0 {
            store.poll(); // a frame
        }
    }
    trader.join().unwrap();
    // A poll applies at most 10,000 queued remote mutations (bounded work
    // per frame); the trader's 20,100 may all still be queued.
    for _ in 0..3 {
        store.poll();
    }
    store.flush(Duration::from_secs(10)).unwrap();
    let s = store.state();
    assert_eq!(s.item_count("ore"), expected_ore);
    assert_eq!(s.item_count("salvage"), 20_000);
    assert_eq!(s.credits, 30_000);
    s.validate().unwrap();
    let stats = store.stats();
    println!(
        "save calls: {}, snapshots handed to the writer: {}, files written: {}",
        stats.save_calls, stats.snapshots, stats.writes
    );
    assert!(stats.save_calls >= 20_000);
    assert!(
        stats.writes * 20 < stats.save_calls,
        "saves coalesce: {stats:?}"
    );
    drop(store);
    let reloaded = open(&path);
    assert_eq!(reloaded.state().item_count("ore"), expected_ore);
    assert_eq!(reloaded.state().item_count("salvage"), 20_000);
}

// ---- crash test: a child process killed with SIGKILL at random moments ----

/// The deterministic mutation number `n` (1-based).
fn mutate(state: &mut PlayerState, n: i64) {
    state.add_item("ops", 1).unwrap();
    state.add_item(&format!("i{}", n % 13), 1 + n % 3).unwrap();
    if n % 4 == 0 {
        let item = format!("i{}", (n + 5) % 13);
        let have = state.item_count(&item);
        if have > 0 {
            state.remove_item(&item, 1.min(have)).unwrap();
        }
    }
    state.add_credits(n % 7).unwrap();
}

fn expected_after(m: i64) -> PlayerState {
    let mut s = PlayerState::new("x", "x");
    for n in 1..=m {
        mutate(&mut s, n);
    }
    s
}

const CHILD_ENV: &str = "MARKET_STORE_CRASH_CHILD";

/// Runs only as the child of `killed_two_hundred_times_never_loses_a_saved_mutation`.
#[test]
fn crash_child() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let path = PathBuf::from(path);
    let mut store = open_logged(&path);
    let mut m = store.state().item_count("ops");
    let mut marks: Vec<(u64, i64)> = Vec::new();
    let mut out = Vec::new();
    loop {
        // One frame: a few mutations through the store's own methods.
        for _ in 0..(1 + rand::random::<u64>() % 20) {
            m += 1;
            let mut next = store.state().clone();
            mutate(&mut next, m);
            // Apply the same change through the public API.
            let n = m;
            store.add_item("ops", 1).unwrap();
            store.add_item(&format!("i{}", n % 13), 1 + n % 3).unwrap();
            if n % 4 == 0 {
                let item = format!("i{}", (n + 5) % 13);
                if store.state().item_count(&item) > 0 {
                    store.remove_item(&item, 1).unwrap();
                }
            }
            if n % 7 != 0 {
                store.add_credits(n % 7).unwrap();
            }
            assert_eq!(store.state().inventory, next.inventory);
        }
        marks.push((store.generation(), m));
        store.save();
        store.poll();
        store.drain_events(&mut out);
        for e in out.drain(..) {
            if let StoreEvent::Saved { generation } = e {
                if let Some((_, durable_m)) = marks.iter().rev().find(|(g, _)| *g <= generation) {
                    println!("durable {durable_m}");
                }
                marks.retain(|(g, _)| *g > generation);
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

#[cfg(unix)]
#[test]
fn killed_two_hundred_times_never_loses_a_saved_mutation() {
    use std::io::Read;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let exe = std::env::current_exe().unwrap();
    let mut max_seen = 0;
    let kills = 200;
    for round in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(5 + rand::random::<u64>() % 30));
        child.kill().unwrap(); // SIGKILL
        let _ = child.wait();
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .unwrap()
            .read_to_string(&mut stdout)
            .unwrap();
        let reported = stdout
            .lines()
            .filter_map(|l| l.strip_prefix("durable "))
            .filter_map(|n| n.trim().parse::<i64>().ok())
            .max()
            .unwrap_or(0);
        let loaded = persist::load(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            loaded.recovered_from_backup.is_none(),
            "round {round}: main file not whole (I5)"
        );
        // The document as its log continues it: what the next start loads.
        let saved = marketplace_client::store::read_saved(&path)
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        let Some(state) = saved else {
            assert_eq!(reported, 0, "round {round}: reported saved but no file");
            continue;
        };
        state.validate().unwrap();
        let m = state.item_count("ops");
        assert!(
            m >= reported,
            "round {round}: file has {m} mutations, {reported} were reported saved (I3)"
        );
        assert!(m >= max_seen, "round {round}: went back in time");
        let expected = expected_after(m);
        assert_eq!(
            state.inventory, expected.inventory,
            "round {round}: inventory of mutation {m}"
        );
        assert_eq!(
            state.credits, expected.credits,
            "round {round}: credits of mutation {m}"
        );
        max_seen = m;
    }
    println!("{kills} kills; {max_seen} mutations survived");
    assert!(max_seen > 0, "the child made progress");
}

// ---- the log: a save costs what changed ----

/// Bytes the save's two files hold.
fn sizes(path: &Path) -> (u64, u64) {
    let len = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
    (len(path), len(&persist::log_path(path)))
}

#[test]
fn a_change_appends_what_changed_not_the_whole_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let mut store = open_logged(&path);
    for i in 0..5_000 {
        store.add_item(&format!("item-{i}"), 1 + i % 7).unwrap();
    }
    store.flush(Duration::from_secs(10)).unwrap();
    // The first two saves write the document (no log yet to continue; then
    // no backup yet): from then on, changes are appended.
    store.add_credits(1).unwrap();
    store.flush(Duration::from_secs(10)).unwrap();
    assert!(persist::backup_path(&path).exists());
    let (document, log) = sizes(&path);
    assert!(document > 50_000, "a large inventory: {document} bytes");
    store.add_credits(5).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    store.add_item("item-7", 1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    let (document_after, log_after) = sizes(&path);
    assert_eq!(document_after, document, "the document was not rewritten");
    assert!(
        log_after - log < 300,
        "two small changes cost {} bytes",
        log_after - log
    );
    let expected = store.state().clone();
    drop(store);
    assert_eq!(open_logged(&path).state(), &expected, "the log is replayed");
}

#[test]
fn the_log_is_folded_into_the_document_once_it_outgrows_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let mut store = open_logged(&path);
    store.add_credits(1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    for i in 0..3_000 {
        store.add_item("ore", 1).unwrap();
        if i % 2 == 0 {
            store.flush(Duration::from_secs(5)).unwrap();
        }
    }
    store.flush(Duration::from_secs(5)).unwrap();
    let (_, log) = sizes(&path);
    assert!(
        log <= StoreOptions::default().log_bytes + 1_000,
        "the log stays bounded: {log} bytes"
    );
    let expected = store.state().clone();
    drop(store);
    assert_eq!(open_logged(&path).state().item_count("ore"), 3_000);
    assert_eq!(open_logged(&path).state(), &expected);
}

#[test]
fn a_line_cut_short_by_a_crash_ends_the_log_and_the_next_save_starts_afresh() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let mut store = open_logged(&path);
    store.add_item("ore", 1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    store.add_item("ore", 1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    drop(store);
    // A crash in the middle of appending the third change.
    let log = persist::log_path(&path);
    let mut bytes = std::fs::read(&log).unwrap();
    bytes.extend_from_slice(br#"{"g":9,"d":[{"Item":["ore","#);
    std::fs::write(&log, &bytes).unwrap();
    let mut store = open_logged(&path);
    assert_eq!(store.state().item_count("ore"), 2, "the whole lines count");
    store.add_item("gem", 1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    drop(store);
    let store = open_logged(&path);
    assert_eq!(
        (
            store.state().item_count("ore"),
            store.state().item_count("gem")
        ),
        (2, 1),
        "nothing appended after the cut line was lost"
    );
}

#[test]
fn a_log_of_another_document_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    let mut store = open_logged(&path);
    store.add_item("ore", 1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    store.add_credits(1).unwrap(); // the document again: now with a backup
    store.flush(Duration::from_secs(5)).unwrap();
    store.add_item("ore", 5).unwrap(); // appended
    store.flush(Duration::from_secs(5)).unwrap();
    drop(store);
    // The document of before (another epoch) put back, as a crash between
    // a document write and its log's start would leave it.
    let mut document: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    document["log_epoch"] = serde_json::json!(document["log_epoch"].as_u64().unwrap() + 7);
    std::fs::write(&path, document.to_string()).unwrap();
    let store = open_logged(&path);
    assert_eq!(store.state().item_count("ore"), 1, "the document alone");
    store.state().validate().unwrap();
}

#[test]
fn a_damaged_document_falls_back_to_the_backup_and_the_backups_own_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("player.json");
    // A document, then changes logged beside it.
    let mut store = open_logged(&path);
    store.add_item("ore", 1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    for _ in 0..2 {
        store.add_item("ore", 1).unwrap();
        store.flush(Duration::from_secs(5)).unwrap();
    }
    drop(store);
    // The next document write: the old document becomes the backup and
    // keeps its log beside it.
    let mut store = open(&path);
    store.add_item("gem", 1).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    drop(store);
    std::fs::write(&path, b"{\"version\": 5, \"cred").unwrap();
    let store = open_logged(&path);
    assert!(store.recovered_from_backup());
    assert_eq!(
        (
            store.state().item_count("ore"),
            store.state().item_count("gem")
        ),
        (3, 0),
        "the backup as its own log continued it: one document write behind"
    );
    assert_eq!(
        marketplace_client::store::read_saved(&path)
            .unwrap()
            .unwrap()
            .item_count("ore"),
        3
    );
}
