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
//! share of a settlement. Prints the mean and p99 per settlement; the goal
//! is a flat line (within 2×) from 10 to 10,000 on both axes.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use marketplace_client::state::Applied;
use marketplace_client::{MarketChange, OpOutcome, PlayerStore, StoreOptions};

const SETTLED: usize = 2_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("main-thread cost of one settlement (settle + poll + events), {SETTLED} settlements per row");
    println!("| trades pending | inventory items | mean | p99 |");
    println!("|---|---|---|---|");
    for &(pending, inventory) in &[
        (10, 10),
        (1_000, 10),
        (10_000, 10),
        (10, 10_000),
        (10_000, 10_000),
    ] {
        let (mean, p99) = measure(pending, inventory);
        println!(
            "| {pending} | {inventory} | {:.1} µs | {:.1} µs |",
            mean.as_secs_f64() * 1e6,
            p99.as_secs_f64() * 1e6
        );
    }
}

fn measure(pending: usize, inventory: usize) -> (Duration, Duration) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = PlayerStore::open(
        dir.path().join("player.json"),
        "bench",
        StoreOptions::default(),
    )
    .expect("store opens");
    store
        .add_credits((pending + SETTLED) as i64 * 10)
        .expect("credits");
    for i in 0..inventory {
        store.add_item(&format!("item_{i:05}"), 1).expect("item");
    }
    let mut ops: VecDeque<_> = (0..pending).map(|i| journal(&mut store, i)).collect();
    store.flush(Duration::from_secs(30)).expect("flush");
    let mut events = Vec::new();
    store.drain_events(&mut events);

    let mut costs = Vec::with_capacity(SETTLED);
    for n in 0..SETTLED {
        let op = ops.pop_front().expect("a pending trade");
        let outcome = OpOutcome::Applied(Applied {
            items_in: Some((format!("bought_{}", n % 20), 1)),
            ..Applied::default()
        });
        let started = Instant::now();
        store.settle_op(op, &outcome).expect("settles");
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
    costs.sort();
    let mean = costs.iter().sum::<Duration>() / costs.len() as u32;
    (mean, costs[costs.len() * 99 / 100])
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
