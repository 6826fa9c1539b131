//! The client against a market with server-side books: under client
//! deposits the account stays invisible (trades deposit what they need and
//! everything comes back to the save); under server grants the store mirrors
//! the account, purchases and listings hold its credits and items, and
//! withdrawals bring value to the save.

use std::time::Duration;

use crate::support::{Player, World};
use marketplace_client::protocol::EconomyMode;
use marketplace_client::{ErrorCode, SessionEvent};
use marketplace_server::config::EconomyArg;

const ADMIN: &str = "test-admin-key-test-admin-key-test-admin";

fn grants_world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/market.sqlite", dir.path().display());
    let mut config = marketplace_server::Config::for_tests(url);
    config.economy = EconomyArg::ServerGrants;
    World::start_on(config, dir)
}

/// The game's backend grants credits (`item` None) or items.
fn grant(world: &World, player_id: i64, item: Option<&str>, quantity: i64) {
    let url = format!(
        "{}/admin/v1/players/{player_id}/grants",
        world.server.as_ref().unwrap().url()
    );
    let status = world.rt.block_on(async {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(ADMIN)
            .header("idempotency-key", format!("g-{}", rand::random::<u64>()))
            .json(&serde_json::json!({"item_id": item, "quantity": quantity}))
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success());
}

fn refresh(p: &mut Player) {
    let id = p.session().refresh_account().unwrap();
    p.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(
            |e| matches!(e, SessionEvent::AccountUpdated { request_id, .. } if *request_id == id),
        )
    });
}

#[test]
fn under_server_grants_the_store_mirrors_the_account_and_holds_in_it() {
    let world = grants_world();
    let mut seller = Player::in_memory(&world, "gs", 0);
    let mut alice = Player::in_memory(&world, "ga", 0);
    let mut bob = Player::in_memory(&world, "gb", 0);
    for p in [&mut seller, &mut alice, &mut bob] {
        p.login();
        assert_eq!(p.store.state().market.mode, EconomyMode::ServerGrants);
    }
    let id = |p: &Player| p.store.state().player_id.unwrap();
    grant(&world, id(&seller), Some("relic"), 1);
    grant(&world, id(&alice), None, 100);
    grant(&world, id(&bob), None, 100);
    for p in [&mut seller, &mut alice, &mut bob] {
        refresh(p);
    }
    assert_eq!(alice.store.state().market.credits, 100);
    assert_eq!(seller.store.state().market.stash.get("relic"), Some(&1));

    // Listing holds the stash's item; the save is never touched.
    seller.sell("relic", 1, 60).unwrap();
    assert_eq!(seller.store.state().market_available_items("relic"), 0);
    let listing = seller.wait_listed();
    assert!(!seller.store.state().market.stash.contains_key("relic"));

    // Two buyers race; both hold account credits at once.
    alice.buy(listing, 60).unwrap();
    bob.buy(listing, 60).unwrap();
    assert_eq!(alice.store.state().market_available_credits(), 40);
    assert_eq!(alice.store.state().credits, 0, "the save is not the wallet");
    for p in [&mut alice, &mut bob] {
        p.pump_until(Duration::from_secs(10), |e| {
            e.iter().any(|e| {
                matches!(
                    e,
                    SessionEvent::PurchaseSucceeded { .. } | SessionEvent::PurchaseFailed { .. }
                )
            })
        });
    }
    let alice_won = alice
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. }));
    let (winner, loser) = if alice_won {
        (&mut alice, &mut bob)
    } else {
        (&mut bob, &mut alice)
    };
    assert_eq!(winner.store.state().market.credits, 40);
    assert_eq!(
        winner.store.state().market.stash.get("relic"),
        Some(&1),
        "the item is in the account"
    );
    assert_eq!(
        loser.store.state().market_held_credits(),
        0,
        "the loser's hold was released"
    );
    assert_eq!(loser.store.state().market_available_credits(), 100);
    // The mirror matches the server's account.
    refresh(winner);
    assert_eq!(winner.store.state().market.credits, 40);

    // Withdrawals bring value to the save.
    let store = &mut winner.store;
    winner
        .session
        .as_mut()
        .unwrap()
        .withdraw(store, None, 30)
        .unwrap();
    let store = &mut winner.store;
    let id_items = winner
        .session
        .as_mut()
        .unwrap()
        .withdraw(store, Some("relic"), 1)
        .unwrap();
    winner.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(
            |e| matches!(e, SessionEvent::Withdrawn { request_id, .. } if *request_id == id_items),
        )
    });
    winner.settle(Duration::from_secs(10));
    let st = winner.store.state();
    assert_eq!((st.credits, st.item_count("relic")), (30, 1));
    assert_eq!(
        (st.market.credits, st.market.stash.get("relic")),
        (10, None)
    );
    // More than there is: refused by the mirror before anything is sent.
    let store = &mut winner.store;
    let err = winner
        .session
        .as_mut()
        .unwrap()
        .withdraw(store, None, 11)
        .unwrap_err();
    assert_eq!(err.code, ErrorCode::InsufficientFunds);

    // The seller's proceeds land in the account, not the save.
    let claim = seller.session().claim_proceeds().unwrap();
    seller.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(|e| matches!(e, SessionEvent::ProceedsClaimed { request_id, amount, .. } if *request_id == claim && *amount > 0))
    });
    seller.settle(Duration::from_secs(10));
    assert_eq!(
        (
            seller.store.state().credits,
            seller.store.state().market.credits
        ),
        (0, 60)
    );
}

#[test]
fn under_client_deposits_the_account_stays_invisible() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "ds", 0);
    seller.store.add_item("ore", 2).unwrap();
    let mut buyer = Player::in_memory(&world, "db", 500);
    seller.login();
    buyer.login();
    assert_eq!(buyer.store.state().market.mode, EconomyMode::ClientDeposits);
    // Two at 60 each: the whole lot costs 120.
    seller.sell("ore", 2, 60).unwrap();
    let listing = seller.wait_listed();
    let store = &mut buyer.store;
    let session = buyer.session.as_mut().unwrap();
    session.buy_units(store, listing, 60, 2).unwrap();
    buyer.settle(Duration::from_secs(10));
    assert_eq!(
        (
            buyer.store.state().credits,
            buyer.store.state().item_count("ore")
        ),
        (380, 2)
    );
    seller.session().claim_proceeds().unwrap();
    seller.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::ProceedsClaimed { amount, .. } if *amount > 0))
    });
    seller.settle(Duration::from_secs(10));
    assert_eq!(
        seller.store.state().credits,
        120,
        "proceeds came back to the save"
    );
    assert_eq!(
        world.count("SELECT COALESCE(SUM(credits), 0) FROM accounts"),
        0,
        "nothing stays in the market"
    );
    assert_eq!(
        world.count("SELECT COALESCE(SUM(quantity), 0) FROM stash"),
        0
    );
}

/// The server's account as `GET /v1/me/account` shows it: (credits, stash).
fn server_account(world: &World, p: &Player) -> (i64, std::collections::BTreeMap<String, i64>) {
    let url = format!("{}/v1/me/account", world.server.as_ref().unwrap().url());
    let login = world.raw_login(&p.store.state().device_id);
    world.rt.block_on(async {
        let account: marketplace_client::protocol::AccountEnvelope = reqwest::Client::new()
            .get(url)
            .bearer_auth(login["token"].as_str().unwrap())
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (account.account.credits, account.account.stash)
    })
}

fn assert_mirror(world: &World, p: &Player, step: &str) {
    let (credits, stash) = server_account(world, p);
    let m = &p.store.state().market;
    assert_eq!(
        (m.credits, &m.stash),
        (credits, &stash),
        "after {step}: the mirror equals the server's account"
    );
}

/// Issue 16, defect 3: the server-grants mirror equals the server's account
/// after every settlement. Before the fix a withdrawal set the mirror to the
/// account after it and then the committed hold subtracted the amount again
/// (40 − withdraw 30 → 0, not 10), and a purchase settling after a refresh
/// was subtracted twice.
#[test]
fn under_server_grants_the_mirror_equals_the_account_after_every_step() {
    let world = grants_world();
    let mut seller = Player::in_memory(&world, "mirror-seller", 0);
    let mut buyer = Player::in_memory(&world, "mirror-buyer", 0);
    seller.login();
    buyer.login();
    let id = |p: &Player| p.store.state().player_id.unwrap();
    grant(&world, id(&buyer), None, 40);
    grant(&world, id(&seller), Some("relic"), 3);
    refresh(&mut buyer);
    refresh(&mut seller);
    assert_mirror(&world, &buyer, "the grant");

    // Withdraw 30 of 40: 10 left, and usable at once.
    let session = buyer.session.as_mut().unwrap();
    session.withdraw(&mut buyer.store, None, 30).unwrap();
    buyer.settle(Duration::from_secs(10));
    assert_eq!(buyer.store.state().market.credits, 10);
    assert_eq!(buyer.store.state().market_available_credits(), 10);
    assert_eq!(buyer.store.state().credits, 30, "in the save");
    assert_mirror(&world, &buyer, "the withdrawal");

    // A listing from the stash, bought: seller's stash and buyer's credits.
    seller.sell("relic", 1, 4).unwrap();
    let first = seller.wait_listed();
    assert_mirror(&world, &seller, "listing from the stash");
    buyer.buy(first, 4).unwrap();
    buyer.settle(Duration::from_secs(10));
    assert_mirror(&world, &buyer, "a purchase");
    assert_eq!(buyer.store.state().market.credits, 6);

    // A purchase whose answer is lost; a refresh shows the account after it
    // (as the refresh after a login does) before the retry settles it.
    seller.events.clear();
    seller.sell("relic", 1, 5).unwrap();
    let second = seller.wait_listed();
    buyer.buy_answer_lost(&world, second, 5);
    // The retries keep losing their answers until the refresh is seen (on
    // a loaded machine a retry could otherwise settle first).
    refresh(&mut buyer);
    assert_eq!(
        buyer.store.state().market.credits,
        1,
        "the view has it spent"
    );
    assert_eq!(
        buyer.store.state().market_available_credits(),
        0,
        "held too: never more than there is"
    );
    world.proxy.clear();
    buyer.settle(Duration::from_secs(10));
    assert_eq!(
        buyer.store.state().market.credits,
        1,
        "not subtracted twice"
    );
    assert_mirror(&world, &buyer, "a purchase settled after a refresh");

    // Proceeds into the account, and a cancel back into the stash.
    seller.events.clear();
    seller.session().claim_proceeds().unwrap();
    seller.settle(Duration::from_secs(10));
    assert_mirror(&world, &seller, "claims");
    assert_eq!(seller.store.state().market.credits, 9);
    seller.sell("relic", 1, 7).unwrap();
    let third = seller.wait_listed();
    seller.cancel(third).unwrap();
    seller.settle(Duration::from_secs(10));
    assert_mirror(&world, &seller, "a cancel");
    assert_eq!(seller.store.state().market.stash.get("relic"), Some(&1));
    world.proxy.clear();
}
