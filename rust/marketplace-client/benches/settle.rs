//! What one settlement costs the main thread, against how many trades are
//! pending and how big the inventory is.
//!
//! ```text
//! cargo bench -p marketplace-client --bench settle
//! ```
//! For each size: a save on disk with that many purchases journaled (each
//! holding credits) and that many distinct items; then 2,000 purchases settle
//! one by one (a new one is journaled after each, untimed, so exactly that
//! many stay pending), each followed by the poll that hands the change to
//! the writer thread and the events to the game — the main thread's whole
//! share of a settlement — and by its save, alone (each settlement is a
//! write of its own, as at a game's pace). Prints the mean and p99 per settlement; the goal
//! is a flat line (within 2×) from 10 to 10,000 on both axes.
//!
//! And what the save costs on the writer thread, each settlement saved
//! alone: the log line it appends (counted at the file system), the
//! document writes that happened meanwhile, what a settlement costs in the
//! long run (its line plus its share of the document write that comes each
//! time the log has grown to the document's size), and the writer thread's
//! CPU per settlement (Linux: `/proc/self/task/*/stat`). The `log off` rows
//! write the whole document every time, as saves did before the log.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use marketplace_client::persist::{RealFs, SaveFs};
use marketplace_client::state::Applied;
use marketplace_client::{MarketChange, OpOutcome, PlayerStore, StoreOptions};

/// The real file system, counting the bytes written: whole files
/// (documents, log headers) and appended log lines apart.
#[derive(Clone, Default)]
struct Counting {
    written: Arc<AtomicU64>,
    appended: Arc<AtomicU64>,
    documents: Arc<AtomicU64>,
}

impl SaveFs for Counting {
    fn write_synced(&mut self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        self.written
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        if bytes.len() > 64 {
            self.documents.fetch_add(1, Ordering::Relaxed);
        }
        RealFs.write_synced(path, bytes)
    }
    fn append_synced(&mut self, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        self.appended
            .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        RealFs.append_synced(path, bytes)
    }
    fn link_or_copy(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.link_or_copy(from, to)
    }
    fn rename(&mut self, from: &Path, to: &Path) -> std::io::Result<()> {
        RealFs.rename(from, to)
    }
    fn sync_dir(&mut self, dir: &Path) -> std::io::Result<()> {
        RealFs.sync_dir(dir)
    }
}

/// CPU seconds used so far by the threads named `name` (Linux; 0 elsewhere).
fn thread_cpu(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if !name.starts_with(comm.trim()) || comm.trim().is_empty() {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after the command's closing parenthesis: utime, stime are
        // the 12th and 13th.
        if let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) {
            let fields: Vec<&str> = rest.split_whitespace().collect();
            for i in [11, 12] {
                ticks += fields
                    .get(i)
                    .and_then(|f| f.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    ticks as f64 / 100.0
}

const SETTLED: usize = 2_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("cost of one settlement (settle + poll + events on the main thread; bytes written and CPU on the writer thread), {SETTLED} settlements per row");
    println!("| trades pending | inventory items | save | main thread mean | main thread p99 | appended | documents written | bytes, amortised | writer CPU |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for &(pending, inventory, log) in &[
        (10, 10, true),
        (1_000, 10, true),
        (10_000, 10, true),
        (10, 10_000, true),
        (1_000, 10_000, true),
        (10_000, 10_000, true),
        (10, 10_000, false),
        (10_000, 10_000, false),
    ] {
        let m = measure(pending, inventory, log);
        println!(
            "| {pending} | {inventory} | {} | {:.1} µs | {:.1} µs | {} B | {} of {} KiB | {} B | {:.0} µs |",
            if log { "log" } else { "log off" },
            m.mean.as_secs_f64() * 1e6,
            m.p99.as_secs_f64() * 1e6,
            m.appended_per_settlement,
            m.documents,
            m.document_bytes / 1024,
            m.amortised_bytes,
            m.writer_cpu_per_settlement * 1e6,
        );
    }
}

struct Measured {
    mean: Duration,
    p99: Duration,
    /// Log lines appended per settlement.
    appended_per_settlement: u64,
    /// Whole documents written during the measured settlements, and the
    /// document's size.
    documents: u64,
    document_bytes: u64,
    /// What a settlement costs in the long run: its line, plus its share
    /// of the document write that comes each time the log has grown to
    /// the document's size (at least 64 KiB) — or, with the log off, the
    /// document itself.
    amortised_bytes: u64,
    writer_cpu_per_settlement: f64,
}

fn measure(pending: usize, inventory: usize, log: bool) -> Measured {
    let dir = tempfile::tempdir().expect("temp dir");
    let counting = Counting::default();
    let mut store = PlayerStore::open(
        dir.path().join("player.json"),
        "bench",
        StoreOptions {
            fs: Box::new(counting.clone()),
            log_bytes: if log {
                StoreOptions::default().log_bytes
            } else {
                0
            },
            ..StoreOptions::default()
        },
    )
    .expect("store opens");
    store
        .add_credits((pending + 2 * SETTLED) as i64 * 10)
        .expect("credits");
    for i in 0..inventory {
        store.add_item(&format!("item_{i:05}"), 1).expect("item");
    }
    let mut ops: VecDeque<_> = (0..pending).map(|i| journal(&mut store, i)).collect();
    store.flush(Duration::from_secs(30)).expect("flush");
    let mut events = Vec::new();
    store.drain_events(&mut events);

    // First the main thread's share, at a frame's pace (the writer
    // coalesces as it does in a game) …
    let mut costs = Vec::with_capacity(SETTLED);
    for n in 0..SETTLED {
        let op = ops.pop_front().expect("a pending trade");
        let started = Instant::now();
        store.settle_op(op, &bought(n)).expect("settles");
        store.poll();
        events.clear();
        store.drain_events(&mut events);
        costs.push(started.elapsed());
        // Keep exactly `pending` trades waiting (not timed).
        ops.push_back(journal(&mut store, pending + n));
        store.poll();
        store.drain_events(&mut events);
    }
    store.flush(Duration::from_secs(30)).expect("flush");
    // … then each settlement saved alone: what the writer writes and spends
    // on it. (Whole-document saves of a large save are slow: fewer of them.)
    let settled = if log { SETTLED } else { SETTLED / 10 };
    let (mut appended, mut written, mut documents, mut cpu) = (0u64, 0u64, 0u64, 0f64);
    for n in SETTLED..SETTLED + settled {
        let op = ops.pop_front().expect("a pending trade");
        store.settle_op(op, &bought(n)).expect("settles");
        store.poll();
        store.drain_events(&mut events);
        let (a, w, d, c) = (
            counting.appended.load(Ordering::Relaxed),
            counting.written.load(Ordering::Relaxed),
            counting.documents.load(Ordering::Relaxed),
            thread_cpu("player-store-writer"),
        );
        store.flush(Duration::from_secs(30)).expect("flush");
        appended += counting.appended.load(Ordering::Relaxed) - a;
        written += counting.written.load(Ordering::Relaxed) - w;
        documents += counting.documents.load(Ordering::Relaxed) - d;
        cpu += thread_cpu("player-store-writer") - c;
        ops.push_back(journal(&mut store, pending + n));
        store.poll();
        store.drain_events(&mut events);
        store.flush(Duration::from_secs(30)).expect("flush");
    }
    costs.sort();
    let mean = costs.iter().sum::<Duration>() / costs.len() as u32;
    let document_bytes = std::fs::metadata(dir.path().join("player.json")).map_or(0, |m| m.len());
    let line = appended / settled as u64;
    let amortised_bytes = if log {
        let limit = document_bytes.max(StoreOptions::default().log_bytes);
        line + document_bytes * line / limit.max(1)
    } else {
        written / settled as u64
    };
    Measured {
        mean,
        p99: costs[costs.len() * 99 / 100],
        appended_per_settlement: line,
        documents,
        document_bytes,
        amortised_bytes,
        writer_cpu_per_settlement: cpu / settled as f64,
    }
}

/// The outcome of purchase number `n`: an item comes in.
fn bought(n: usize) -> OpOutcome {
    OpOutcome::Applied(Applied {
        items_in: Some((format!("bought_{}", n % 20), 1)),
        ..Applied::default()
    })
}

/// Journals purchase number `i` with its credit hold.
fn journal(store: &mut PlayerStore, i: usize) -> u64 {
    let hold = store.reserve_credits(5).expect("hold");
    let change = MarketChange::Purchase {
        listing_id: i as i64 + 1,
        expected_price: 5,
        quantity: None,
        deposit: 5,
    };
    store.begin_op(format!("key-{i}"), change, Some(hold), 0)
}
