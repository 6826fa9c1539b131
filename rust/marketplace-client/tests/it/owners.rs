//! A journaled trade belongs to the market and player that accepted it
//! (invariants I2 and I4 across servers): it is never sent anywhere else,
//! waits visibly while the game points elsewhere, and settles when the game
//! points back.

use std::time::{Duration, Instant};

use marketplace_client::{ErrorCode, SessionEvent, StoreOptions};

use crate::support::{list_items, player_with, Player, World};

/// The interleaving: buy listing N on market A, A commits, the
/// answer is lost, the game quits; the next launch points at market B,
/// which has its own active listing N at the same price. Before the fix the
/// purchase was re-sent to B with its old key: B bought its own listing
/// (the wrong item) or refused it definitively and the hold was released
/// although A had sold the item.
#[test]
fn a_trade_answered_on_one_market_is_never_sent_to_another() {
    let a = World::start();
    let b = World::start();
    // The same listing id and price on both markets.
    let mut seller_a = Player::in_memory(&a, "seller-a", 0);
    let mut seller_b = Player::in_memory(&b, "seller-b", 0);
    let on_a = list_items(&a, &mut seller_a, &[40]);
    let on_b = list_items(&b, &mut seller_b, &[40]);
    assert_eq!(on_a, on_b, "both markets have listing {} at 40", on_a[0]);
    let listing = on_a[0];

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buyer.json");
    let mut buyer = player_with(&a, &path, StoreOptions::default());
    buyer.store.add_credits(100).unwrap();
    buyer.login();
    // A commits every attempt's purchase… and the game never hears.
    buyer.buy_answer_lost(&a, listing, 40);
    buyer.quit();

    // The next launch points at B (a realm picked later, a staging switch).
    let mut buyer = player_with(&b, &path, StoreOptions::default());
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        buyer.frame();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        b.count("SELECT COUNT(*) FROM purchases"),
        0,
        "B bought nothing"
    );
    assert_eq!(
        b.count("SELECT COUNT(*) FROM listings WHERE status = 'active'"),
        1,
        "B's listing is still for sale"
    );
    assert!(
        !buyer.events.iter().any(|e| matches!(
            e,
            SessionEvent::PurchaseFailed { .. } | SessionEvent::PurchaseSucceeded { .. }
        )),
        "nothing settled on B: {:?}",
        buyer.events
    );
    assert_eq!(
        buyer.store.state().held_credits(),
        40,
        "the hold stays (I4)"
    );
    assert_eq!(buyer.total_credits(), 100, "nothing spent yet (I2)");
    let pending = buyer.session.as_ref().unwrap().pending_trades(&buyer.store);
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].last_error, Some(ErrorCode::WrongServer));
    let why = pending[0]
        .waiting_for_owner
        .clone()
        .expect("the trade says why it waits");
    assert!(why.contains("market"), "{why}");

    // Listing ids are per market: B's listing of the same id can be bought
    // while A's purchase of it waits.
    buyer.buy(listing, 40).expect("B's listing is not A's");
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. }))
    });
    buyer.events.clear();
    assert_eq!(b.count("SELECT COUNT(*) FROM purchases"), 1);

    // Back to A: the trade goes with its key and settles as A's purchase.
    a.proxy.clear();
    buyer
        .set_config(a.client_config())
        .expect("switching servers is allowed while trades wait");
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. }))
    });
    assert_eq!(a.count("SELECT COUNT(*) FROM purchases"), 1, "exactly once");
    assert_eq!(b.count("SELECT COUNT(*) FROM purchases"), 1);
    assert_eq!(buyer.store.state().credits, 20);
    assert_eq!(buyer.store.state().held_credits(), 0);
    assert_eq!(
        buyer.store.state().item_count("item-0"),
        2,
        "one from each market"
    );
    assert!(buyer.store.state().journal.is_empty());
}

/// A trade made before any login is bound to the market and player of the
/// session's own login, on disk, before it leaves; a second market that
/// shares the token secret (and would accept the token) still refuses it,
/// because the server checks the binding headers.
#[test]
fn trades_made_before_login_are_bound_before_they_leave() {
    let a = World::start();
    let mut seller = Player::in_memory(&a, "seller", 0);
    let listing = list_items(&a, &mut seller, &[25])[0];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buyer.json");
    let mut buyer = player_with(&a, &path, StoreOptions::default());
    buyer.store.add_credits(50).unwrap();
    // No login: the session logs in by itself to learn the owner.
    buyer.buy(listing, 25).unwrap();
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. }))
    });
    assert!(
        !buyer
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::LoggedIn { .. })),
        "the session's own login is not reported as the game's"
    );
    assert_eq!(buyer.store.state().item_count("item-0"), 1);
}

/// The server side of the binding, over raw HTTP: a change bound to another
/// market or player is refused with `wrong_server` (421) and changes nothing.
#[test]
fn the_server_refuses_changes_bound_to_another_market_or_player() {
    let a = World::start();
    let mut seller = Player::in_memory(&a, "seller", 0);
    let listing = list_items(&a, &mut seller, &[30])[0];
    let url = a.server.as_ref().unwrap().url();
    let http = reqwest::Client::new();
    let login = a.raw_login("raw-buyer");
    let token = login["token"].as_str().unwrap().to_string();
    let server_id = login["server_id"].as_str().unwrap().to_string();
    assert!(server_id.starts_with("mkt_"), "{server_id}");
    let player_id = login["player_id"].as_i64().unwrap();
    let attempt = |server: &str, player: i64, key: &str| -> (u16, serde_json::Value) {
        a.rt.block_on(async {
            let r = http
                .post(format!("{url}/v1/listings/{listing}/purchase"))
                .bearer_auth(&token)
                .header("idempotency-key", key)
                .header("x-market-server", server)
                .header("x-market-player", player)
                .json(&serde_json::json!({"expected_price": 30, "deposit": 30}))
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        })
    };
    let (status, body) = attempt("mkt_another", player_id, "k1");
    assert_eq!(status, 421);
    assert_eq!(body["error"]["code"], "wrong_server");
    let (status, body) = attempt(&server_id, player_id + 1, "k2");
    assert_eq!(status, 421, "{body}");
    assert_eq!(
        a.count("SELECT COUNT(*) FROM purchases"),
        0,
        "nothing bought"
    );
    // The same key, bound right, goes through (a refusal stored nothing).
    let (status, body) = attempt(&server_id, player_id, "k1");
    assert_eq!(status, 200, "{body}");
    assert_eq!(a.count("SELECT COUNT(*) FROM purchases"), 1);
}

/// A login still on its way to market A when the game points at B is not
/// taken: its token and market are A's, and a trade bound to them would be
/// bound to the wrong market.
#[test]
fn a_login_overtaken_by_a_server_switch_is_not_taken() {
    let a = World::start();
    let b = World::start();
    let mut seller = Player::in_memory(&b, "seller-b", 0);
    let listing = list_items(&b, &mut seller, &[10])[0];
    let mut buyer = Player::in_memory(&a, "buyer", 100);
    a.proxy.fault(
        "/v1/sessions",
        crate::support::proxy::Fault::Delay(Duration::from_millis(600)),
        1,
    );
    let store = &buyer.store;
    let login = buyer.session.as_mut().unwrap().login(store).unwrap();
    buyer.frame();
    // On its way to A (held by A's proxy) when the game points at B.
    std::thread::sleep(Duration::from_millis(200));
    buyer.set_config(b.client_config()).unwrap();
    buyer.pump_until(Duration::from_secs(5), |e| {
        e.iter().any(|e| match e {
            SessionEvent::RequestFailed { request_id, .. } => *request_id == login,
            SessionEvent::LoggedIn { request_id, .. } => *request_id == login,
            _ => false,
        })
    });
    assert!(
        !buyer
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::LoggedIn { .. })),
        "A's login is superseded: {:?}",
        buyer.events
    );
    // A trade now belongs to B and goes there.
    buyer.buy(listing, 10).unwrap();
    buyer.settle(Duration::from_secs(10));
    assert_eq!(b.count("SELECT COUNT(*) FROM purchases"), 1);
    assert_eq!(a.count("SELECT COUNT(*) FROM purchases"), 0);
    let owner = buyer.session().client().owner().expect("logged in at B");
    assert_eq!(
        owner.server_id,
        b.raw_login("probe")["server_id"].as_str().unwrap()
    );
}

/// A trade bound by address (its server announced no id: before an
/// upgrade) is re-bound to the id the server at that address announces now,
/// and settles — it is not parked forever.
#[test]
fn a_trade_bound_by_address_follows_its_server_after_an_upgrade() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    let listing = list_items(&world, &mut seller, &[25])[0];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buyer.json");
    let mut buyer = player_with(&world, &path, StoreOptions::default());
    buyer.store.add_credits(100).unwrap();
    buyer.login();
    buyer.buy_answer_lost(&world, listing, 25);
    buyer.quit();
    world.proxy.clear();
    // As an older server would have bound it: by address.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let url = world.client_config().server_url;
    for op in doc["journal"].as_object_mut().unwrap().values_mut() {
        op["owner"]["server_id"] = serde_json::json!(format!("url:{}", url.trim_end_matches('/')));
    }
    std::fs::write(&path, serde_json::to_vec(&doc).unwrap()).unwrap();
    let mut buyer = player_with(&world, &path, StoreOptions::default());
    buyer.login();
    buyer.settle(Duration::from_secs(10));
    assert_eq!(
        buyer
            .events
            .iter()
            .filter(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. }))
            .count(),
        1
    );
    assert_eq!(world.count("SELECT COUNT(*) FROM purchases"), 1);
    assert_eq!(buyer.store.state().credits, 75);
}
