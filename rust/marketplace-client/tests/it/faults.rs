//! The client core against a real server through a fault-injecting proxy:
//! holds are settled only by definitive answers (I4), lost answers are
//! retried with the same key and commit once (I1, I2).

use std::time::Duration;

use crate::support::proxy::Fault;
use crate::support::{list_items, Player, World};
use marketplace_client::{ErrorCode, SessionEvent};

fn purchases(world: &World) -> i64 {
    world.count("SELECT COUNT(*) FROM purchases")
}

#[test]
fn lost_response_then_retry_commits_exactly_once() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listing = list_items(&world, &mut seller, &[150])[0];
    let mut buyer = Player::in_memory(&world, "buyer", 1_000);
    buyer.login();
    // The server commits the purchase; the answer never arrives, twice.
    world.proxy.fault("/purchase", Fault::LoseResponse, 2);
    let id = buyer.buy(listing, 150).unwrap();
    assert_eq!(
        (
            buyer.store.state().credits,
            buyer.store.state().held_credits()
        ),
        (850, 150)
    );
    buyer.pump_until(Duration::from_secs(20), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. }))
    });
    let retries = buyer
        .events
        .iter()
        .filter(
            |e| matches!(e, SessionEvent::RequestRetrying { request_id, .. } if *request_id == id),
        )
        .count();
    assert!(retries >= 2, "retried after each lost answer");
    assert_eq!(purchases(&world), 1, "one purchase on the server");
    let s = buyer.store.state();
    assert_eq!((s.credits, s.held_credits()), (850, 0), "one debit locally");
    assert_eq!(s.item_count("item-0"), 1);
    assert!(s.journal.is_empty());
}

#[test]
fn timeouts_resets_and_500s_never_release_a_hold() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listings = list_items(&world, &mut seller, &[10, 20, 30]);
    let mut buyer = Player::in_memory(&world, "buyer", 100);
    buyer.login();
    // Every purchase fails ambiguously for a while.
    world
        .proxy
        .fault(&format!("/{}/purchase", listings[0]), Fault::Stall, 2);
    world
        .proxy
        .fault(&format!("/{}/purchase", listings[1]), Fault::Reset, 4);
    world
        .proxy
        .fault(&format!("/{}/purchase", listings[2]), Fault::Answer500, 4);
    for (listing, price) in listings.iter().zip([10, 20, 30]) {
        buyer.buy(*listing, price).unwrap();
    }
    // While failures keep coming, every hold stays placed.
    let deadline = std::time::Instant::now() + Duration::from_millis(1200);
    while std::time::Instant::now() < deadline {
        buyer.frame();
        assert!(
            !buyer
                .events
                .iter()
                .any(|e| matches!(e, SessionEvent::PurchaseFailed { .. })),
            "an ambiguous failure released a hold: {:?}",
            buyer.events
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let codes: Vec<ErrorCode> = buyer
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::RequestRetrying { error, .. } => Some(error.code),
            _ => None,
        })
        .collect();
    assert!(codes.contains(&ErrorCode::Offline), "{codes:?}");
    assert!(codes.contains(&ErrorCode::Internal), "{codes:?}");
    buyer.settle(Duration::from_secs(30));
    assert!(codes.len() >= 8);
    let s = buyer.store.state();
    assert_eq!((s.credits, s.held_credits()), (40, 0));
    assert_eq!(purchases(&world), 3);
    let timeouts = buyer
        .events
        .iter()
        .filter(|e| matches!(e, SessionEvent::RequestRetrying { error, .. } if error.code == ErrorCode::Timeout))
        .count();
    assert!(
        timeouts >= 1,
        "the stalled purchase timed out and was retried"
    );
}

#[test]
fn already_sold_always_releases_the_hold() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listing = list_items(&world, &mut seller, &[100])[0];
    let mut first = Player::in_memory(&world, "first", 500);
    let mut second = Player::in_memory(&world, "second", 500);
    first.login();
    second.login();
    first.buy(listing, 100).unwrap();
    first.settle(Duration::from_secs(10));
    // The second buyer's answer is lost once, then it is a definitive refusal.
    world.proxy.fault("/purchase", Fault::LoseResponse, 1);
    let id = second.buy(listing, 100).unwrap();
    assert!(second
        .session
        .as_ref()
        .unwrap()
        .is_purchase_pending(&second.store, listing));
    // A second buy of the same listing is refused locally while pending.
    let again = second.buy(listing, 100).unwrap_err();
    assert_eq!(again.code, ErrorCode::PurchaseInProgress);
    second.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::PurchaseFailed { .. }))
    });
    let failed = second
        .events
        .iter()
        .find_map(|e| match e {
            SessionEvent::PurchaseFailed {
                request_id,
                listing_id,
                error,
            } => Some((*request_id, *listing_id, error.clone())),
            _ => None,
        })
        .unwrap();
    assert_eq!((failed.0, failed.1), (id, listing));
    assert_eq!(failed.2.code, ErrorCode::AlreadySold);
    assert_eq!(failed.2.message, "Item sold to another player");
    let st = second.store.state();
    assert_eq!(
        (st.credits, st.held_credits()),
        (500, 0),
        "hold released in full"
    );
    assert!(second
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::BusyChanged { busy: false })));
    assert_eq!(purchases(&world), 1);
}

#[test]
fn price_changed_releases_with_the_new_price() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listing = list_items(&world, &mut seller, &[100])[0];
    seller.reprice(listing, 120).unwrap();
    seller.settle(Duration::from_secs(10));
    let mut buyer = Player::in_memory(&world, "buyer", 500);
    buyer.login();
    buyer.buy(listing, 100).unwrap();
    buyer.settle(Duration::from_secs(10));
    let error = buyer
        .events
        .iter()
        .find_map(|e| match e {
            SessionEvent::PurchaseFailed { error, .. } => Some(error.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        (error.code, error.current_price),
        (ErrorCode::PriceChanged, Some(120))
    );
    assert_eq!(error.message, "Price changed to 120");
    assert_eq!(buyer.store.state().credits, 500);
}

/// 50 client handles race for 10 listings (5 each) with lost answers and 500s
/// sprinkled in: exactly 10 holds commit, 40 release, credits are conserved.
#[test]
fn fifty_clients_ten_listings_conserve_credits() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let prices: Vec<i64> = (0..10).map(|i| 100 + i).collect();
    let listings = list_items(&world, &mut seller, &prices);
    let mut buyers: Vec<Player> = (0..50)
        .map(|i| Player::in_memory(&world, &format!("buyer-{i}"), 1_000))
        .collect();
    for b in &mut buyers {
        b.login();
    }
    world
        .proxy
        .fault_randomly("/purchase", Fault::LoseResponse, 0.2);
    world
        .proxy
        .fault_randomly("/purchase", Fault::Answer500, 0.1);
    for (i, b) in buyers.iter_mut().enumerate() {
        b.buy(listings[i % 10], prices[i % 10]).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let mut busy = false;
        for b in &mut buyers {
            b.frame();
            busy |= !b.store.state().journal.is_empty();
        }
        if !busy {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "buyers did not settle"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    for b in &mut buyers {
        b.frame();
    }
    let won: Vec<_> = buyers
        .iter()
        .flat_map(|b| b.events.iter())
        .filter_map(|e| match e {
            SessionEvent::PurchaseSucceeded { purchase, .. } => Some(purchase.clone()),
            _ => None,
        })
        .collect();
    let lost = buyers
        .iter()
        .flat_map(|b| b.events.iter())
        .filter(|e| matches!(e, SessionEvent::PurchaseFailed { error, .. } if error.code == ErrorCode::AlreadySold))
        .count();
    assert_eq!((won.len(), lost), (10, 40));
    let mut sold: Vec<i64> = won.iter().map(|p| p.listing_id).collect();
    sold.sort();
    let mut all = listings.clone();
    all.sort();
    assert_eq!(sold, all, "each listing won once");
    let spent: i64 = won.iter().map(|p| p.price).sum();
    let total: i64 = buyers.iter().map(Player::total_credits).sum();
    assert_eq!(total + spent, 50 * 1_000, "credits conserved (I2)");
    assert!(buyers.iter().all(|b| b.store.state().held_credits() == 0));
    let unclaimed = world.count(
        "SELECT CAST(COALESCE(SUM(price), 0) AS BIGINT) FROM purchases WHERE claimed_at IS NULL",
    );
    assert_eq!(
        unclaimed, spent,
        "the seller's proceeds match what buyers paid"
    );
    assert_eq!(purchases(&world), 10);
}

#[test]
fn hostile_answers_leave_the_hold_pending() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listing = list_items(&world, &mut seller, &[100])[0];
    let mut buyer = Player::in_memory(&world, "buyer", 500);
    buyer.login();
    for garbage in [
        "not json",
        "{}",
        r#"{"purchase":{"id":1,"listing_id":999,"buyer_id":1,"seller_id":2,"item_id":"x","quantity":1,"price":100,"created_at":0}}"#,
        r#"{"purchase":{"id":1,"listing_id":1,"buyer_id":1,"seller_id":2,"item_id":"x","quantity":1,"price":1,"created_at":0}}"#,
    ] {
        world.proxy.fault("/purchase", Fault::Garbage(garbage), 1);
    }
    buyer.buy(listing, 100).unwrap();
    buyer.pump_until(Duration::from_secs(20), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. }))
    });
    let bad = buyer
        .events
        .iter()
        .filter(|e| matches!(e, SessionEvent::RequestRetrying { error, .. } if error.code == ErrorCode::BadResponse))
        .count();
    assert_eq!(
        bad, 4,
        "each garbled answer was retried, none settled the hold"
    );
    assert_eq!(buyer.store.state().credits, 400);
    assert_eq!(purchases(&world), 1);
}

#[test]
fn server_restart_mid_purchase_settles_once() {
    let mut world = World::start();
    let mut seller = Player::in_memory(&world, "seller", 0);
    seller.login();
    let listing = list_items(&world, &mut seller, &[70])[0];
    let mut buyer = Player::in_memory(&world, "buyer", 100);
    buyer.login();
    world.proxy.fault("/purchase", Fault::LoseResponse, 1);
    buyer.buy(listing, 70).unwrap();
    buyer.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::RequestRetrying { .. }))
    });
    world.restart_server();
    buyer.settle(Duration::from_secs(20));
    assert!(buyer
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. })));
    assert_eq!(buyer.store.state().credits, 30);
    assert_eq!(purchases(&world), 1);
}
