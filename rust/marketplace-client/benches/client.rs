//! Latency hiding and main-thread cost of the client core.
//!
//! ```text
//! cargo bench -p marketplace-client --bench client
//! ```
//! 1. 200 purchases of distinct listings against a local server behind a
//!    proxy that adds 20 ms to every request: sent one at a time, each
//!    waiting for the previous answer (what one GDScript `HTTPRequest` node
//!    does), versus all submitted at once through the queue with the default
//!    concurrency. The client-side rate limit is off for both (the server's
//!    per-player limit too), since it would measure the limit, not the queue.
//! 2. The cost of one `MarketClient::poll` with nothing ready and with 1,000
//!    events ready, and of one `TradingSession::poll` frame with nothing to do.

#[path = "../tests/it/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use marketplace_client::client::{
    BrowseQuery, ClientConfig, Command, EventKind, MarketClient, Reply,
};
use marketplace_client::protocol::MarketChange;
use marketplace_client::{PlayerState, PlayerStore, TradingSession};
use support::proxy::Fault;
use support::{list_items, Player, World};

const PURCHASES: usize = 200;

fn login(client: &MarketClient, device: &str) {
    client
        .submit(Command::Login(
            marketplace_client::client::Credentials::device(device, device),
        ))
        .expect("login");
    wait_all(client, 1);
}

/// Polls until `n` final events arrived; returns the replies.
fn wait_all(client: &MarketClient, n: usize) -> Vec<EventKind> {
    let mut done = Vec::new();
    let mut events = Vec::new();
    while done.len() < n {
        events.clear();
        client.poll(&mut events, 1024);
        done.extend(
            events
                .drain(..)
                .map(|e| e.kind)
                .filter(|k| !matches!(k, EventKind::Retrying { .. })),
        );
        std::thread::sleep(Duration::from_micros(200));
    }
    done
}

fn purchases(
    world: &World,
    listings: &[i64],
    config: ClientConfig,
    device: &str,
    one_at_a_time: bool,
) -> Duration {
    let client = MarketClient::start(config).expect("client");
    login(&client, device);
    let started = Instant::now();
    let mut ok = 0;
    if one_at_a_time {
        for &listing in listings {
            client
                .submit(Command::Change(MarketChange::Purchase {
                    listing_id: listing,
                    expected_price: 10,
                    quantity: None,
                    deposit: 10,
                }))
                .unwrap();
            ok += wait_all(&client, 1)
                .iter()
                .filter(|k| matches!(k, EventKind::Done(Reply::Purchased(..))))
                .count();
        }
    } else {
        for &listing in listings {
            client
                .submit(Command::Change(MarketChange::Purchase {
                    listing_id: listing,
                    expected_price: 10,
                    quantity: None,
                    deposit: 10,
                }))
                .unwrap();
        }
        ok = wait_all(&client, listings.len())
            .iter()
            .filter(|k| matches!(k, EventKind::Done(Reply::Purchased(..))))
            .count();
    }
    let elapsed = started.elapsed();
    assert_eq!(ok, listings.len(), "every purchase succeeded");
    let _ = world;
    elapsed
}

/// A session on an in-memory save with `credits`, not logged in.
fn offline_session(world: &World, name: &str, credits: i64) -> (PlayerStore, TradingSession) {
    let mut state = PlayerState::new(name, name);
    state.credits = credits;
    let mut store = PlayerStore::in_memory(state);
    let session = TradingSession::new(
        ClientConfig {
            server_url: world.proxy.url(),
            ..ClientConfig::default()
        },
        &mut store,
    )
    .unwrap();
    (store, session)
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listings = list_items(&world, &mut seller, &vec![10; 2 * PURCHASES]);
    world
        .proxy
        .fault_randomly("/purchase", Fault::Delay(Duration::from_millis(20)), 1.0);
    let config = ClientConfig {
        server_url: world.proxy.url(),
        max_requests_per_second: 0.0,
        ..ClientConfig::default()
    };
    let sequential = purchases(
        &world,
        &listings[..PURCHASES],
        config.clone(),
        "sequential",
        true,
    );
    let queued = purchases(
        &world,
        &listings[PURCHASES..],
        config.clone(),
        "queued",
        false,
    );
    println!("{PURCHASES} purchases, 20 ms injected latency each:");
    println!(
        "  one at a time (HTTPRequest pattern): {:>8.1} ms",
        sequential.as_secs_f64() * 1e3
    );
    println!(
        "  queued, {} concurrent (default):   {:>8.1} ms   ({:.1}x faster)",
        config.max_concurrent_requests,
        queued.as_secs_f64() * 1e3,
        sequential.as_secs_f64() / queued.as_secs_f64()
    );
    world.proxy.clear();

    // poll() with nothing ready.
    let client = MarketClient::start(ClientConfig {
        server_url: world.proxy.url(),
        max_requests_per_second: 0.0,
        ..ClientConfig::default()
    })
    .unwrap();
    login(&client, "poller");
    let mut out = Vec::with_capacity(2048);
    let rounds = 2_000_000;
    let started = Instant::now();
    for _ in 0..rounds {
        client.poll(&mut out, 64);
    }
    let idle = started.elapsed() / rounds;
    println!(
        "MarketClient::poll, nothing ready:      {:>8.1} ns",
        idle.as_nanos() as f64
    );

    // poll() with 1,000 events ready.
    let mut samples = Vec::new();
    for _ in 0..5 {
        for _ in 0..1_000 {
            client
                .submit(Command::Browse(BrowseQuery {
                    limit: Some(1),
                    ..BrowseQuery::default()
                }))
                .unwrap();
        }
        while client.pending_count() > 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        out.clear();
        let started = Instant::now();
        let n = client.poll(&mut out, 1_000);
        samples.push(started.elapsed());
        assert_eq!(n, 1_000);
    }
    samples.sort();
    println!(
        "MarketClient::poll, 1,000 events ready: {:>8.1} µs (median of 5)",
        samples[2].as_secs_f64() * 1e6
    );

    // A TradingSession frame with nothing to do (what the Godot node pays
    // every frame while idle).
    let (mut store, mut session) = offline_session(&world, "idle", 10);
    let mut events = Vec::new();
    let started = Instant::now();
    let frames = 1_000_000;
    for _ in 0..frames {
        session.poll(
            &mut store,
            marketplace_client::session::DEFAULT_EVENTS_PER_POLL,
            &mut events,
        );
    }
    println!(
        "TradingSession::poll, idle frame:      {:>8.1} ns",
        (started.elapsed() / frames).as_nanos() as f64
    );

    // The main thread's cost of asking for a purchase (what a game's
    // `buy_listing` call pays before the adapter's own work): checks, the
    // credit hold, the journal entry. Nothing is sent within the loop.
    for calls in [200usize, 10_000] {
        let (mut store, mut session) = offline_session(&world, "buyer", 1_000_000_000);
        let started = Instant::now();
        for listing in 0..calls {
            session.buy(&mut store, listing as i64 + 1, 10).unwrap();
        }
        println!(
            "TradingSession::buy, {calls:>6} in one frame: {:>6.2} µs a call",
            started.elapsed().as_secs_f64() * 1e6 / calls as f64
        );
    }
}
