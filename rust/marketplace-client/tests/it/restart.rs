//! A game that crashes or quits mid-trade: the journal on disk re-sends the
//! operation with its original key, and the hold settles exactly once
//! (I2, I3, I4 across restarts).

use std::time::Duration;

use crate::support::proxy::Fault;
use crate::support::{list_items, Player, World};
use marketplace_client::{PlayerStore, SessionEvent, StoreOptions};

fn open_player(world: &World, path: &std::path::Path) -> Player {
    let store = PlayerStore::open(path, "buyer", StoreOptions::default()).expect("opens");
    Player::with_store(world.client_config(), store)
}

#[test]
fn crash_after_the_server_committed_settles_once_on_restart() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listing = list_items(&world, &mut seller, &[250])[0];
    let path = world.dir.path().join("buyer.json");
    let mut buyer = open_player(&world, &path);
    buyer.store.add_credits(1_000).unwrap();
    buyer.login();
    // The server commits; the answer is lost every time until the "crash".
    world.proxy.fault("/purchase", Fault::LoseResponse, 1_000);
    buyer.buy(listing, 250).unwrap();
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::RequestRetrying { .. }))
    });
    assert_eq!(
        world.count("SELECT COUNT(*) FROM purchases"),
        1,
        "the server has it"
    );
    // Crash: what is on disk now is all that survives (the document and
    // its log).
    let log = marketplace_client::persist::log_path(&path);
    let on_disk = std::fs::read(&path).unwrap();
    let log_on_disk = std::fs::read(&log).ok();
    drop(buyer);
    std::fs::write(&path, &on_disk).unwrap();
    match log_on_disk {
        Some(bytes) => std::fs::write(&log, bytes).unwrap(),
        None => {
            let _ = std::fs::remove_file(&log);
        }
    }
    world.proxy.clear();

    let mut buyer = open_player(&world, &path);
    let st = buyer.store.state();
    assert_eq!(
        (st.credits, st.held_credits(), st.journal.len()),
        (750, 250, 1),
        "hold and journal survived"
    );
    buyer.login();
    buyer.settle(Duration::from_secs(10));
    let st = buyer.store.state();
    assert_eq!((st.credits, st.held_credits()), (750, 0), "debited once");
    assert_eq!(st.item_count("item-0"), 1, "delivered once");
    assert!(
        buyer
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. })),
        "{:#?}",
        buyer.events
    );
    assert_eq!(world.count("SELECT COUNT(*) FROM purchases"), 1);
    // And once more: a restart after settling changes nothing.
    buyer.store.flush(Duration::from_secs(5)).unwrap();
    drop(buyer);
    let again = open_player(&world, &path);
    assert_eq!(again.store.state().credits, 750);
    assert!(again.store.state().journal.is_empty());
}

#[test]
fn quitting_mid_trade_keeps_the_operation_for_next_time() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listing = list_items(&world, &mut seller, &[40])[0];
    let path = world.dir.path().join("buyer.json");
    let mut buyer = open_player(&world, &path);
    buyer.store.add_credits(100).unwrap();
    buyer.login();
    world.proxy.fault("/purchase", Fault::Stall, 1);
    buyer.buy(listing, 40).unwrap();
    buyer.pump_until(Duration::from_secs(5), |_| true);
    std::thread::sleep(Duration::from_millis(100));
    let session = buyer.session.take().unwrap();
    let started = std::time::Instant::now();
    let last = session.shutdown(&mut buyer.store, Duration::from_millis(200));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "shutdown is bounded"
    );
    assert!(
        !last
            .told
            .iter()
            .chain(&last.untold)
            .any(|e| matches!(e, SessionEvent::PurchaseFailed { .. })),
        "nothing released on quit"
    );
    drop(buyer);

    let mut buyer = open_player(&world, &path);
    assert_eq!(
        buyer.store.state().journal.len(),
        1,
        "the purchase is still journaled"
    );
    assert_eq!(buyer.store.state().held_credits(), 40);
    // No login call: the journaled purchase logs in by itself as the saved
    // identity and settles.
    buyer.settle(Duration::from_secs(10));
    assert_eq!(buyer.store.state().credits, 60);
    assert_eq!(buyer.store.state().item_count("item-0"), 1);
    assert_eq!(world.count("SELECT COUNT(*) FROM purchases"), 1);
}

#[test]
fn selling_cancelling_and_claiming_move_items_and_credits_once() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    seller.store.add_item("laser", 3).unwrap();
    seller.sell("laser", 2, 90).unwrap();
    assert_eq!(
        seller.store.state().item_count("laser"),
        1,
        "escrowed at once"
    );
    assert_eq!(seller.store.state().escrowed_items("laser"), 2);
    // Selling more than is owned is refused locally: nothing escrowed.
    assert!(seller.sell("laser", 5, 10).is_err());
    assert_eq!(seller.store.state().item_count("laser"), 1);
    let listing = seller.wait_listed();
    assert_eq!(
        seller.store.state().escrowed_items("laser"),
        0,
        "items now live in the listing"
    );
    // Cancel with a lost answer: the items come back exactly once.
    world.proxy.fault("/v1/listings/", Fault::LoseResponse, 1);
    seller.cancel(listing).unwrap();
    seller.settle(Duration::from_secs(10));
    assert_eq!(seller.store.state().item_count("laser"), 3);
    // Sell again, someone buys, the seller claims with a lost answer.
    seller.sell("laser", 1, 90).unwrap();
    seller.events.clear();
    let listing = seller.wait_listed();
    let mut buyer = Player::in_memory(&world, "buyer", 100);
    buyer.login();
    buyer.buy(listing, 90).unwrap();
    buyer.settle(Duration::from_secs(10));
    world.proxy.fault("/claim", Fault::LoseResponse, 1);
    seller.session().claim_proceeds().unwrap();
    seller.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::ProceedsClaimed { amount: 90, .. }))
    });
    seller.settle(Duration::from_secs(10));
    assert_eq!(seller.store.state().credits, 90, "paid once");
    // Nothing left to claim: the answer says so.
    seller.events.clear();
    seller.session().claim_proceeds().unwrap();
    seller.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::ProceedsClaimed { amount: 0, .. }))
    });
    assert_eq!(seller.store.state().credits, 90);
    assert_eq!(seller.store.state().item_count("laser"), 2);
    assert_eq!(buyer.store.state().item_count("laser"), 1);
    assert_eq!(buyer.store.state().credits, 10);
}

/// Exactly once has no expiry: the answer is lost, the player quits and
/// comes back eight days later, after the server pruned its stored answers
/// (retention 7 days). The replay is recognised from the purchase row.
#[test]
fn a_week_away_with_a_lost_answer_still_settles_once() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/market.sqlite", dir.path().display());
    let mut config = marketplace_server::Config::for_tests(url);
    config.idempotency_retention_hours = 7 * 24;
    let world = World::start_on(config, dir);
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listing = list_items(&world, &mut seller, &[300])[0];
    let path = world.dir.path().join("buyer.json");
    let mut buyer = open_player(&world, &path);
    buyer.store.add_credits(1_000).unwrap();
    buyer.login();
    world.proxy.fault("/purchase", Fault::LoseResponse, 1_000);
    buyer.buy(listing, 300).unwrap();
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::RequestRetrying { .. }))
    });
    assert_eq!(
        world.count("SELECT COUNT(*) FROM purchases"),
        1,
        "the server has it"
    );
    // The player quits (the journal is on disk) and is away for 8 days.
    drop(buyer);
    world.proxy.clear();
    let server = world.server.as_ref().unwrap();
    server.clock().advance(8 * 24 * 3600);
    let pruned = world.rt.block_on(server.prune_now()).unwrap();
    assert!(pruned >= 1, "the stored answer is gone");
    assert_eq!(world.count("SELECT COUNT(*) FROM idempotency_keys"), 0);

    let mut buyer = open_player(&world, &path);
    let created_at = buyer
        .store
        .state()
        .journal
        .values()
        .next()
        .unwrap()
        .created_at;
    assert!(created_at > 0, "the journal knows when the trade was made");
    buyer.settle(Duration::from_secs(20));
    let st = buyer.store.state();
    assert_eq!(
        (st.credits, st.held_credits()),
        (700, 0),
        "one debit, not a refund"
    );
    assert_eq!(st.item_count("item-0"), 1, "the item arrived");
    assert!(buyer
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. })));
    assert_eq!(
        world.count("SELECT COUNT(*) FROM purchases"),
        1,
        "one purchase"
    );
    // I2: the seller's proceeds equal the buyer's debit.
    assert_eq!(
        world.count("SELECT COALESCE(SUM(price), 0) FROM purchases WHERE claimed_at IS NULL"),
        300
    );
}

/// Issue 16, defect 4: the main save is damaged and its backup is older
/// than a trade the server committed. Before the fix the backup was loaded
/// as it was: the item never arrived and the credits the server took were
/// never debited (I2). Now the session compares the save with the server's
/// record of the player's operations and applies exactly what it lost —
/// once, also across later logins.
#[test]
fn a_backup_older_than_a_committed_trade_is_reconciled_with_the_server() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listings = list_items(&world, &mut seller, &[40, 15]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buyer.json");
    let config = world.client_config();
    let mut buyer = Player::on_disk(config.clone(), &path, "buyer");
    buyer.store.add_credits(100).unwrap();
    buyer.login();
    // An earlier trade settles normally (the save contains it).
    buyer.buy(listings[1], 15).unwrap();
    buyer.settle(Duration::from_secs(10));
    assert_eq!(buyer.store.state().credits, 85);
    buyer.store.flush(Duration::from_secs(5)).unwrap();
    // The save as a whole document (its log folded in).
    let before_trade = serde_json::to_vec(
        &marketplace_client::store::read_saved(&path)
            .unwrap()
            .expect("saved"),
    )
    .unwrap();

    // The trade: sent once its journal entry is on disk, committed by the
    // server, its answer lost; the game quits.
    buyer.buy_answer_lost(&world, listings[0], 40);
    buyer.quit();
    world.proxy.clear();
    // The main file is damaged; the backup is the save from before the trade.
    std::fs::write(&path, b"{\"version\": 4, \"cred").unwrap();
    std::fs::write(
        marketplace_client::persist::backup_path(&path),
        &before_trade,
    )
    .unwrap();

    let mut buyer = Player::on_disk(config.clone(), &path, "buyer");
    assert!(buyer.store.recovered_from_backup());
    assert!(
        buyer.store.state().journal.is_empty(),
        "the backup has no trace of it"
    );
    assert_eq!(buyer.store.state().credits, 85);
    // Until the market has told it what it lost, the restored save cannot
    // spend again the credits the lost trade took.
    let early = buyer.buy(listings[1], 40).unwrap_err();
    assert_eq!(early.code, marketplace_client::ErrorCode::SaveRestoring);
    assert_eq!(buyer.store.state().credits, 85, "nothing held");
    // No login by the game: a save restored from its backup logs in itself.
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::TradeRecovered { .. }))
    });
    let recovered: Vec<_> = buyer
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::TradeRecovered {
                kind,
                credits,
                items,
                shortfall,
                ..
            } => Some((kind.clone(), *credits, items.clone(), *shortfall)),
            _ => None,
        })
        .collect();
    assert_eq!(
        recovered,
        vec![(
            "purchase".to_string(),
            -40,
            vec![("item-0".to_string(), 1)],
            0
        )],
        "exactly the lost trade, not the one the save contains"
    );
    assert_eq!(
        buyer.store.state().credits,
        45,
        "debited what the server took (I2)"
    );
    assert_eq!(buyer.store.state().item_count("item-0"), 1, "delivered");
    assert_eq!(buyer.store.state().item_count("item-1"), 1);
    // Told what it lost: trading resumes (this listing is sold already:
    // refused by the market, the hold given back).
    buyer
        .buy(listings[1], 40)
        .expect("trading resumes once reconciled");
    buyer.settle(Duration::from_secs(5));
    assert_eq!(buyer.store.state().credits, 45);

    // Again later (another login, another start): nothing twice.
    buyer.login();
    buyer.settle(Duration::from_secs(5));
    buyer.store.flush(Duration::from_secs(5)).unwrap();
    drop(buyer);
    let mut buyer = Player::on_disk(config, &path, "buyer");
    buyer.login();
    std::thread::sleep(Duration::from_millis(200));
    buyer.settle(Duration::from_secs(5));
    assert!(!buyer
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::TradeRecovered { .. })));
    assert_eq!(buyer.store.state().credits, 45);
    assert_eq!(buyer.store.state().item_count("item-0"), 1);
}
