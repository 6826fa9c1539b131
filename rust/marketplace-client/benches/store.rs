//! Save latency and coalescing of the player store.
//!
//! ```text
//! cargo bench -p marketplace-client --bench store
//! ```
//! Prints: the time from `save()` to "on disk" (serialise on the main thread
//! at the next poll, then write + fsync + rename + directory fsync on the
//! writer thread) for a 10,000-item inventory; how long the main thread's
//! share (the poll that serialises) takes; and how many file writes 1,000
//! `save()` calls in one frame turn into.

use std::time::{Duration, Instant};

use marketplace_client::{PlayerStore, StoreEvent, StoreOptions};

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("player.json");
    let mut store = PlayerStore::open(
        &path,
        "bench",
        StoreOptions {
            autosave: false,
            ..StoreOptions::default()
        },
    )
    .unwrap();
    for i in 0..10_000 {
        store.add_item(&format!("item_{i:05}"), 1 + i % 50).unwrap();
    }
    store.flush(Duration::from_secs(10)).unwrap();
    let size = std::fs::metadata(&path).unwrap().len();

    let mut latencies = Vec::new();
    let mut main_thread = Vec::new();
    let mut events = Vec::new();
    for round in 0..30 {
        store.add_item("item_00000", 1).unwrap();
        let started = Instant::now();
        store.save();
        let t = Instant::now();
        store.poll(); // serialises and hands over
        main_thread.push(t.elapsed());
        let target = store.generation();
        loop {
            store.poll();
            events.clear();
            store.drain_events(&mut events);
            if store.durable_generation() >= target {
                break;
            }
            std::thread::sleep(Duration::from_micros(50));
        }
        if round >= 5 {
            latencies.push(started.elapsed());
        }
    }
    latencies.sort();
    main_thread.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!("10,000-item inventory ({} KiB on disk):", size / 1024);
    println!(
        "  save() to on-disk: p50 {:.2} ms, p90 {:.2} ms, max {:.2} ms",
        ms(latencies[latencies.len() / 2]),
        ms(latencies[latencies.len() * 9 / 10]),
        ms(latencies[latencies.len() - 1])
    );
    println!(
        "  main-thread part (the poll that serialises): p50 {:.2} ms",
        ms(main_thread[main_thread.len() / 2])
    );

    // 1,000 saves in one frame.
    let before = store.stats();
    for i in 0..1_000 {
        store.add_item("item_00001", 1 + i % 2).unwrap();
        store.save();
    }
    store.poll();
    store.flush(Duration::from_secs(10)).unwrap();
    let after = store.stats();
    let saved_events = {
        let mut ev = Vec::new();
        store.drain_events(&mut ev);
        ev.iter()
            .filter(|e| matches!(e, StoreEvent::Saved { .. }))
            .count()
    };
    println!(
        "1,000 save() calls in one frame -> {} snapshot(s), {} file write(s) ({} Saved event(s))",
        after.snapshots - before.snapshots,
        after.writes - before.writes,
        saved_events
    );
}
