//! The promises in ordinary game life, not only a tidy run: autosave off,
//! settings changed mid-trade, another identity, a proxy's error page, a
//! full disk, a second instance on the same save, handlers that call back,
//! trades that cannot finish, and what `Saved` means.

use std::time::{Duration, Instant};

use crate::support::proxy::Fault;
use crate::support::{count, list_items, player_with, Player, TestFs, World};
use marketplace_client::client::ClientConfig;
use marketplace_client::persist::LoadError;
use marketplace_client::session::DEFAULT_EVENTS_PER_POLL;
use marketplace_client::{
    ClientError, ErrorCode, PlayerState, PlayerStore, SessionEvent, StoreEvent, StoreOptions,
};

fn purchase_succeeded(e: &SessionEvent) -> bool {
    matches!(e, SessionEvent::PurchaseSucceeded { .. })
}

/// A buyer whose save goes through a file system the test can fill up.
fn buyer_on_test_fs(world: &World) -> (TestFs, std::path::PathBuf, Player) {
    let fs = TestFs::default();
    let path = world.dir.path().join("buyer.json");
    let buyer = player_with(
        world,
        &path,
        StoreOptions {
            fs: Box::new(fs.clone()),
            retry_after: Duration::from_millis(50),
            ..StoreOptions::default()
        },
    );
    (fs, path, buyer)
}

fn seller_with_listings(world: &World, prices: &[i64]) -> (Player, Vec<i64>) {
    let mut seller = Player::in_memory(world, "seller", 0);
    seller.login();
    let ids = list_items(world, &mut seller, prices);
    (seller, ids)
}

#[test]
fn autosave_off_still_saves_and_sends_trades() {
    let world = World::start();
    let (_seller, listings) = seller_with_listings(&world, &[100]);
    let path = world.dir.path().join("buyer.json");
    let mut buyer = player_with(
        &world,
        &path,
        StoreOptions {
            autosave: false,
            ..StoreOptions::default()
        },
    );
    buyer.store.add_credits(1_000).unwrap();
    buyer.store.flush(Duration::from_secs(5)).unwrap();
    buyer.login();
    // The game's own change waits for an explicit save…
    buyer.store.add_credits(5).unwrap();
    for _ in 0..5 {
        buyer.frame();
        std::thread::sleep(Duration::from_millis(5));
    }
    let on_disk: PlayerState = marketplace_client::store::read_saved(&path)
        .unwrap()
        .unwrap();
    assert_eq!(on_disk.credits, 1_000, "autosave off: not written yet");
    // …but a trade is saved, sent and settled.
    buyer.buy(listings[0], 100).unwrap();
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(purchase_succeeded)
    });
    buyer.store.flush(Duration::from_secs(5)).unwrap();
    let on_disk: PlayerState = marketplace_client::store::read_saved(&path)
        .unwrap()
        .unwrap();
    assert_eq!((on_disk.credits, on_disk.item_count("item-0")), (905, 1));
    assert!(on_disk.journal.is_empty());
}

#[test]
fn settings_change_mid_trade_loses_nothing_and_ids_stay_unique() {
    let world = World::start();
    let (_seller, listings) = seller_with_listings(&world, &[10, 20, 30]);
    let mut buyer = Player::in_memory(&world, "buyer", 1_000);
    buyer.login();
    world
        .proxy
        .fault("/purchase", Fault::Delay(Duration::from_millis(300)), 1);
    let first = buyer.buy(listings[0], 10).unwrap();
    buyer.frame(); // sent
                   // Every setting changes while the purchase is on the wire.
    let mut config = world.client_config();
    config.request_timeout = Duration::from_secs(3);
    config.max_concurrent_requests = 2;
    config.max_requests_per_second = 100.0;
    let store = &buyer.store;
    buyer
        .session
        .as_mut()
        .unwrap()
        .set_config(store, config)
        .unwrap();
    let second = buyer.buy(listings[1], 20).unwrap();
    assert!(second.0 > first.0, "request ids never restart");
    buyer.pump_until(Duration::from_secs(10), |e| {
        count(e, purchase_succeeded) == 2
    });
    let ids: Vec<u64> = buyer
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::PurchaseSucceeded { request_id, .. } => Some(request_id.0),
            _ => None,
        })
        .collect();
    assert!(ids.contains(&first.0) && ids.contains(&second.0), "{ids:?}");
    // Another address while a trade waits: allowed. The trade belongs to
    // the market (its server id), not to the address, so it settles through
    // the new one — exactly once.
    world.proxy.fault("/purchase", Fault::LoseResponse, 1_000);
    buyer.buy(listings[2], 30).unwrap();
    buyer.frame();
    let other = ClientConfig {
        server_url: world.server.as_ref().unwrap().url(),
        ..world.client_config()
    };
    let store = &buyer.store;
    buyer
        .session
        .as_mut()
        .unwrap()
        .set_config(store, other)
        .expect("another address of the same market");
    buyer.settle(Duration::from_secs(10));
    world.proxy.clear();
    assert_eq!(
        world.count(&format!(
            "SELECT COUNT(*) FROM purchases WHERE listing_id = {}",
            listings[2]
        )),
        1
    );
    let browse = buyer.session().browse(Default::default()).unwrap();
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(|e| matches!(e, SessionEvent::ListingsUpdated { request_id, .. } if *request_id == browse))
    });
    assert_eq!(buyer.store.state().total_credits(), 940);
    assert_eq!(world.count("SELECT COUNT(*) FROM purchases"), 3);
}

#[test]
fn another_identity_cannot_take_over_pending_trades() {
    let world = World::start();
    let (_seller, listings) = seller_with_listings(&world, &[50]);
    let mut buyer = Player::in_memory(&world, "buyer", 500);
    buyer.login();
    world.proxy.fault("/purchase", Fault::LoseResponse, 1_000);
    buyer.buy(listings[0], 50).unwrap();
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::RequestRetrying { .. }))
    });
    let store = &mut buyer.store;
    let err = buyer
        .session
        .as_mut()
        .unwrap()
        .set_identity(store, "dev-someone-else", "Eve")
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::TradesPending);
    assert_eq!(buyer.store.state().device_id, "buyer", "identity unchanged");
    world.proxy.clear();
    buyer.settle(Duration::from_secs(10));
    assert_eq!(
        buyer.store.state().item_count("item-0"),
        1,
        "settled as its owner"
    );
    let store = &mut buyer.store;
    buyer
        .session
        .as_mut()
        .unwrap()
        .set_identity(store, "dev-someone-else", "Eve")
        .unwrap();
    assert_eq!(
        buyer.store.state().player_id,
        None,
        "a new player until logged in"
    );
    buyer.login();
    let new_id = buyer.store.state().player_id.unwrap();
    assert_eq!(world.count("SELECT COUNT(*) FROM purchases"), 1);
    assert_eq!(
        world.count(&format!(
            "SELECT COUNT(*) FROM purchases WHERE buyer_id = {new_id}"
        )),
        0
    );
}

#[test]
fn a_proxy_error_page_after_a_lost_answer_keeps_the_hold() {
    let world = World::start();
    let statuses = [400u16, 403, 404, 410, 413];
    let prices: Vec<i64> = (1..=statuses.len() as i64).map(|p| p * 10).collect();
    let (_seller, listings) = seller_with_listings(&world, &prices);
    let mut buyer = Player::in_memory(&world, "buyer", 1_000);
    buyer.login();
    for (i, status) in statuses.iter().enumerate() {
        // The server commits; a CDN in front answers with its own page.
        world.proxy.fault("/purchase", Fault::ProxyPage(*status), 1);
        buyer.buy(listings[i], prices[i]).unwrap();
        buyer.pump_until(Duration::from_secs(10), |e| {
            count(e, purchase_succeeded) == i + 1
        });
        assert!(
            !buyer
                .events
                .iter()
                .any(|e| matches!(e, SessionEvent::PurchaseFailed { .. })),
            "HTTP {status} released a hold: {:#?}",
            buyer.events
        );
    }
    let spent: i64 = prices.iter().sum();
    let st = buyer.store.state();
    assert_eq!(
        (st.credits, st.held_credits()),
        (1_000 - spent, 0),
        "debited once each"
    );
    assert_eq!(
        world.count("SELECT COUNT(*) FROM purchases"),
        statuses.len() as i64
    );
}

#[test]
fn trades_wait_while_saves_fail_and_go_once_one_succeeds() {
    let world = World::start();
    let (_seller, listings) = seller_with_listings(&world, &[70]);
    let (fs, path, mut buyer) = buyer_on_test_fs(&world);
    buyer.store.add_credits(500).unwrap();
    buyer.store.flush(Duration::from_secs(5)).unwrap();
    buyer.login();
    fs.set_failing(true);
    let request = buyer.buy(listings[0], 70).unwrap();
    let browse = buyer.session().browse(Default::default()).unwrap();
    let mut store_events = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(600);
    while Instant::now() < deadline {
        buyer.frame();
        buyer.store.drain_events(&mut store_events);
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        store_events
            .iter()
            .any(|e| matches!(e, StoreEvent::SaveFailed { .. })),
        "the game is told"
    );
    assert_eq!(
        world.count("SELECT COUNT(*) FROM purchases"),
        0,
        "nothing sent without its journal on disk"
    );
    assert!(
        buyer.events.iter().any(|e| matches!(e, SessionEvent::ListingsUpdated { request_id, .. } if *request_id == browse)),
        "reads go on"
    );
    let pending = buyer.session.as_ref().unwrap().pending_trades(&buyer.store);
    assert_eq!(pending.len(), 1);
    assert_eq!(
        (
            pending[0].kind,
            pending[0].listing_id,
            pending[0].waiting_for_save,
            pending[0].request_id
        ),
        ("purchase", Some(listings[0]), true, request)
    );
    fs.set_failing(false);
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(purchase_succeeded)
    });
    assert_eq!(world.count("SELECT COUNT(*) FROM purchases"), 1);
    drop(buyer);
    let reloaded = PlayerStore::open(&path, "x", StoreOptions::default()).unwrap();
    assert_eq!(reloaded.state().credits, 430);
    assert!(reloaded.state().journal.is_empty());
}

#[test]
fn one_save_file_one_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slot.json");
    let mut first = PlayerStore::open(&path, "Ann", StoreOptions::default()).unwrap();
    first.add_credits(10).unwrap();
    first.flush(Duration::from_secs(5)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = PlayerStore::open(&path, "Bob", StoreOptions::default())
        .err()
        .expect("a second store on the same file is refused");
    assert!(matches!(err, LoadError::Locked { .. }), "{err}");
    assert!(err.to_string().contains("another instance"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "nothing written");
    drop(first);
    let again = PlayerStore::open(&path, "Bob", StoreOptions::default()).unwrap();
    assert_eq!(again.state().credits, 10);
}

const LOCK_CHILD: &str = "MARKET_LOCK_CHILD";

/// Runs only as the child of `a_second_game_instance_is_refused`: holds
/// the save open until killed.
#[test]
fn lock_child() {
    let Some(path) = std::env::var_os(LOCK_CHILD) else {
        return;
    };
    let _store = PlayerStore::open(path, "child", StoreOptions::default()).unwrap();
    println!("holding");
    std::thread::sleep(Duration::from_secs(60));
}

#[test]
fn a_second_game_instance_is_refused() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.json");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "game_life::lock_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(LOCK_CHILD, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.any(|l| l.is_ok_and(|l| l.contains("holding"))));
    let err = PlayerStore::open(&path, "parent", StoreOptions::default())
        .err()
        .expect("refused while the other instance runs");
    assert!(matches!(err, LoadError::Locked { .. }), "{err}");
    child.kill().unwrap();
    let _ = child.wait();
    // A killed instance leaves no lock behind.
    PlayerStore::open(&path, "parent", StoreOptions::default()).expect("free again");
}

#[test]
fn a_handler_that_keeps_failing_cannot_make_a_frame_endless() {
    let world = World::start();
    let mut player = Player::in_memory(&world, "p", 100);
    let first = player.session().refuse(
        None,
        ClientError::new(ErrorCode::InvalidArgument, "bad filter"),
    );
    let mut reported = Vec::new();
    for _ in 0..50 {
        let mut out = Vec::new();
        let session = player.session.as_mut().unwrap();
        session.poll(&mut player.store, DEFAULT_EVENTS_PER_POLL, &mut out);
        let failures = count(&out, |e| matches!(e, SessionEvent::RequestFailed { .. }));
        assert!(
            failures <= 1,
            "one frame reports only what was refused before it"
        );
        for e in &out {
            if let SessionEvent::RequestFailed { request_id, .. } = e {
                reported.push(*request_id);
                // The handler asks again, and is refused again.
                session.refuse(
                    None,
                    ClientError::new(ErrorCode::InvalidArgument, "bad filter"),
                );
            }
        }
    }
    assert_eq!(reported.len(), 50);
    assert_eq!(reported[0], first);
    assert!(reported.windows(2).all(|w| w[0].0 < w[1].0), "fresh ids");
}

#[test]
fn handlers_changing_data_leave_the_newest_state_last() {
    let mut store = PlayerStore::in_memory(PlayerState::new("d", "n"));
    store.add_credits(100).unwrap();
    let hold = store.reserve_credits(40).unwrap();
    store.commit_hold(hold).unwrap();
    let mut last_credits = None;
    let mut handled = 0;
    // Emit one event at a time; a hold_committed handler adds credits.
    while let Some(event) = store.next_event() {
        handled += 1;
        assert!(handled < 100);
        match event {
            StoreEvent::HoldCommitted { .. } => {
                store.add_credits(7).unwrap();
            }
            StoreEvent::CreditsChanged { available, held } => {
                last_credits = Some((available, held))
            }
            _ => {}
        }
    }
    assert_eq!(
        last_credits,
        Some((67, 0)),
        "the UI ends on the current balance"
    );
}

#[test]
fn long_waiting_trades_are_visible_and_stall_without_releasing() {
    let world = World::start();
    let (_seller, listings) = seller_with_listings(&world, &[25]);
    let path = world.dir.path().join("buyer.json");
    let mut buyer = player_with(&world, &path, StoreOptions::default());
    buyer.store.add_credits(100).unwrap();
    buyer.login();
    world.proxy.fault("/purchase", Fault::LoseResponse, 1_000);
    buyer.session().set_stall_after(Duration::from_millis(300));
    let request = buyer.buy(listings[0], 25).unwrap();
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::TradeStalled { .. }))
    });
    let stalled = buyer.find(|e| match e {
        SessionEvent::TradeStalled {
            request_id,
            trade,
            error,
        } => Some((*request_id, trade.clone(), error.code)),
        _ => None,
    });
    assert_eq!(stalled.0, request);
    assert_eq!((stalled.1.kind, stalled.1.amount), ("purchase", 25));
    assert!(stalled.1.attempts >= 1 && stalled.1.age >= Duration::from_millis(300));
    assert!(!stalled.2.is_definitive());
    let pending = buyer.session.as_ref().unwrap().pending_trades(&buyer.store);
    assert_eq!(pending.len(), 1);
    assert!(pending[0].last_error.is_some() && !pending[0].waiting_for_save);
    assert_eq!(
        buyer.store.state().held_credits(),
        25,
        "a stalled trade keeps its hold (I4)"
    );
    // Restart where logging in is refused for good by something in the way:
    // still retried, still visible, still held.
    buyer.store.flush(Duration::from_secs(5)).unwrap();
    drop(buyer);
    world.proxy.clear();
    world
        .proxy
        .fault("/v1/sessions", Fault::ProxyPage(403), 1_000_000);
    let mut buyer = player_with(&world, &path, StoreOptions::default());
    buyer.session().set_stall_after(Duration::ZERO);
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::TradeStalled { .. }))
    });
    let pending = buyer.session.as_ref().unwrap().pending_trades(&buyer.store);
    assert_eq!(pending[0].last_error, Some(ErrorCode::BadResponse));
    assert_eq!(buyer.store.state().held_credits(), 25);
    world.proxy.clear();
    buyer.settle(Duration::from_secs(40));
    assert_eq!(buyer.store.state().item_count("item-0"), 1);
    assert_eq!(world.count("SELECT COUNT(*) FROM purchases"), 1);
}

#[test]
fn saved_means_nothing_newer_waits() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    let fs = TestFs::default();
    let mut store = PlayerStore::open(
        &path,
        "Ann",
        StoreOptions {
            fs: Box::new(fs.clone()),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    fs.set_write_delay(150);
    store.add_item("ore", 1).unwrap();
    store.poll(); // the first write starts
    std::thread::sleep(Duration::from_millis(20));
    store.add_item("ore", 1).unwrap(); // newer than what is being written
    let mut saved_at = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && saved_at.is_empty() {
        store.poll();
        let mut events = Vec::new();
        store.drain_events(&mut events);
        for e in events {
            if let StoreEvent::Saved { generation } = e {
                saved_at.push(generation);
                let on_disk: PlayerState = marketplace_client::store::read_saved(&path)
                    .unwrap()
                    .unwrap();
                assert_eq!(
                    on_disk.item_count("ore"),
                    2,
                    "saved() came with everything on disk"
                );
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(saved_at, vec![store.generation()]);
}

#[test]
fn a_seller_with_more_sales_than_a_page_claims_them_all() {
    let world = World::start();
    let prices: Vec<i64> = (0..205).map(|i| 1 + i % 7).collect();
    let (mut seller, listings) = seller_with_listings(&world, &prices);
    let mut buyer = Player::in_memory(&world, "buyer", 10_000);
    buyer.login();
    for (id, price) in listings.iter().zip(&prices) {
        buyer.buy(*id, *price).unwrap();
    }
    buyer.settle(Duration::from_secs(60));
    let claim = seller.session().claim_proceeds().unwrap();
    seller.pump_until(Duration::from_secs(60), |e| {
        count(e, |e| matches!(e, SessionEvent::ProceedsClaimed { request_id, .. } if *request_id == claim)) == 205
    });
    seller.settle(Duration::from_secs(30));
    let total: i64 = prices.iter().sum();
    assert_eq!(
        seller.store.state().credits,
        total,
        "every page was claimed"
    );
    assert_eq!(
        world.count("SELECT COUNT(*) FROM purchases WHERE claimed_at IS NULL"),
        0
    );
    // The request ends once, after its last claim, with the totals.
    seller.pump_until(Duration::from_secs(10), |e| {
        count(
            e,
            |e| matches!(e, SessionEvent::ClaimsDone { request_id, .. } if *request_id == claim),
        ) == 1
    });
    let of_claim: Vec<&SessionEvent> = seller
        .events
        .iter()
        .filter(|e| {
            matches!(e, SessionEvent::ProceedsClaimed { request_id, .. } | SessionEvent::ClaimsDone { request_id, .. } if *request_id == claim)
        })
        .collect();
    match of_claim.last() {
        Some(SessionEvent::ClaimsDone {
            sales,
            amount,
            error,
            ..
        }) => {
            assert_eq!((*sales, *amount), (205, total));
            assert!(error.is_none());
        }
        other => panic!("ClaimsDone must come last, got {other:?}"),
    }
    // Nothing left: the next claim says so and ends at once.
    let again = seller.session().claim_proceeds().unwrap();
    seller.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(|e| matches!(e, SessionEvent::ClaimsDone { request_id, sales: 0, amount: 0, error: None } if *request_id == again))
    });
    assert!(seller.events.iter().any(
        |e| matches!(e, SessionEvent::ProceedsClaimed { request_id, amount: 0, .. } if *request_id == again)
    ));
}

#[test]
fn a_login_answer_for_the_previous_identity_is_not_taken() {
    let world = World::start();
    let (_seller, listings) = seller_with_listings(&world, &[40]);
    let mut buyer = Player::in_memory(&world, "device-a", 500);
    // A's login is slow; the game switches to B in the same frame.
    world
        .proxy
        .fault("/v1/sessions", Fault::Delay(Duration::from_millis(400)), 1);
    let store = &buyer.store;
    let first = buyer.session.as_mut().unwrap().login(store).unwrap();
    let store = &mut buyer.store;
    buyer
        .session
        .as_mut()
        .unwrap()
        .set_identity(store, "device-b", "Bea")
        .unwrap();
    buyer.login();
    let b_id = buyer.store.state().player_id.unwrap();
    // A's answer arrives after B's and is refused.
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(
            |e| matches!(e, SessionEvent::RequestFailed { request_id, .. } if *request_id == first),
        )
    });
    assert_eq!(buyer.store.state().player_id, Some(b_id), "still B");
    buyer.buy(listings[0], 40).unwrap();
    buyer.settle(Duration::from_secs(10));
    assert_eq!(
        world.count(&format!(
            "SELECT COUNT(*) FROM purchases WHERE buyer_id = {b_id}"
        )),
        1,
        "the trade ran as the player who made it"
    );
}

#[test]
fn a_save_that_cannot_be_locked_still_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    // Something makes the lock file impossible (here: a folder in its place;
    // in life a read-only folder or a file system without locks).
    std::fs::create_dir(marketplace_client::persist::lock_path(&path)).unwrap();
    let mut store =
        PlayerStore::open(&path, "Ann", StoreOptions::default()).expect("opens unlocked");
    store.add_credits(3).unwrap();
    store.flush(Duration::from_secs(5)).unwrap();
    drop(store);
    assert_eq!(
        PlayerStore::open(&path, "Ann", StoreOptions::default())
            .unwrap()
            .state()
            .credits,
        3
    );
}

#[test]
fn a_failing_disk_is_told_once_per_streak() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.json");
    let fs = TestFs::default();
    let mut store = PlayerStore::open(
        &path,
        "Ann",
        StoreOptions {
            fs: Box::new(fs.clone()),
            retry_after: Duration::from_millis(5),
            ..StoreOptions::default()
        },
    )
    .unwrap();
    fs.set_failing(true);
    store.add_credits(1).unwrap();
    let mut failures = 0;
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        store.poll();
        while let Some(e) = store.next_event() {
            failures += usize::from(matches!(e, StoreEvent::SaveFailed { .. }));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(failures, 1, "many retries, one message");
    fs.set_failing(false);
    store.flush(Duration::from_secs(5)).unwrap();
    fs.set_failing(true);
    store.add_credits(1).unwrap();
    let _ = store.flush(Duration::from_secs(1));
    store.poll();
    let mut again = 0;
    while let Some(e) = store.next_event() {
        again += usize::from(matches!(e, StoreEvent::SaveFailed { .. }));
    }
    assert_eq!(again, 1, "a new streak is told again");
}

/// Issue 16, defect 2 (I3): a success is told only once it is on disk. The
/// answer arrives, then the disk fills, then the save slot closes (a slot
/// switch or quitting): before the fix `shutdown` returned the settlement as
/// told although the save failed, so the game heard "bought", the store was
/// dropped unsaved, and the next open replayed the trade and told it again.
#[test]
fn a_success_whose_save_fails_at_close_is_not_told_and_settles_on_the_next_open() {
    let world = World::start();
    let (_seller, listings) = seller_with_listings(&world, &[30]);
    let (fs, path, mut buyer) = buyer_on_test_fs(&world);
    buyer.store.add_credits(100).unwrap();
    buyer.login();
    buyer.settle(Duration::from_secs(5));
    // The purchase's journal entry reaches the disk, then the disk is full
    // by the time its answer settles.
    world.proxy.fault(
        "/purchase",
        Fault::DelayAnswer(Duration::from_millis(700)),
        1,
    );
    buyer.buy(listings[0], 30).unwrap();
    // Frames send it once its journal entry is on disk; once the server
    // has it, no more frames: its answer (held back by the proxy after the
    // commit) waits unsettled.
    let deadline = Instant::now() + Duration::from_secs(5);
    while world.count("SELECT COUNT(*) FROM purchases") == 0 {
        assert!(Instant::now() < deadline, "the purchase reached the server");
        buyer.frame();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!buyer.events.iter().any(purchase_succeeded));
    fs.set_failing(true);
    std::thread::sleep(Duration::from_millis(400));
    let session = buyer.session.take().unwrap();
    let done = session.shutdown(&mut buyer.store, Duration::from_millis(500));
    assert!(!done.saved, "the final save failed: {done:?}");
    assert!(
        !done.told.iter().any(purchase_succeeded) && !buyer.events.iter().any(purchase_succeeded),
        "not told: {:?}",
        done.told
    );
    assert_eq!(
        done.untold.iter().filter(|e| purchase_succeeded(e)).count(),
        1
    );
    let heard = done
        .untold
        .iter()
        .find_map(SessionEvent::not_known_yet)
        .expect("an awaiting caller hears something");
    assert!(
        matches!(&heard, SessionEvent::RequestFailed { error, .. } if !error.is_definitive()),
        "{heard:?}"
    );
    drop(buyer);

    // The disk has room again; the next open settles the trade once and
    // tells it then.
    fs.set_failing(false);
    let mut buyer = player_with(&world, &path, StoreOptions::default());
    assert_eq!(
        buyer.store.state().journal.len(),
        1,
        "still journaled on disk"
    );
    buyer.settle(Duration::from_secs(10));
    assert_eq!(count(&buyer.events, purchase_succeeded), 1, "told once");
    assert_eq!(buyer.store.state().credits, 70);
    assert_eq!(buyer.store.state().item_count("item-0"), 1);
    assert_eq!(world.count("SELECT COUNT(*) FROM purchases"), 1);
}
