//! The live market through the client core, as a game uses it: a second
//! player's purchase reaches the first one's session without a refresh;
//! the stream reconnects and resumes after its connection is cut and after
//! a server restart, missing nothing and repeating nothing; pushed events
//! never settle a hold (I4); notifications arrive once each, after they
//! are saved — also across a restart of the game.

use std::collections::HashSet;
use std::time::Duration;

use marketplace_client::protocol::{ListingStatus, StreamChange};
use marketplace_client::{PlayerStore, SessionEvent, StoreOptions};

use crate::support::{count, Player, World};

const T: Duration = Duration::from_secs(10);

fn live(p: &Player) -> bool {
    p.events
        .iter()
        .any(|e| matches!(e, SessionEvent::MarketLive { live: true, .. }))
}

/// The listing events a player's session reported, in order.
fn listing_changes(p: &Player, id: i64) -> Vec<(i64, String, i64)> {
    p.events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::MarketChanged { event } => match &event.change {
                StreamChange::Listing { change, listing } if listing.id == id => {
                    Some((event.seq, change.clone(), listing.quantity_remaining))
                }
                _ => None,
            },
            _ => None,
        })
        .collect()
}

fn seqs(p: &Player) -> Vec<i64> {
    p.events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::MarketChanged { event } => Some(event.seq),
            _ => None,
        })
        .collect()
}

#[test]
fn another_players_purchase_reaches_the_shop_without_a_refresh() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "live-seller", 0);
    seller.store.add_item("ore", 5).expect("items");
    let mut buyer = Player::in_memory(&world, "live-buyer", 1_000);
    let mut watcher = Player::in_memory(&world, "live-watcher", 0);
    for p in [&mut seller, &mut buyer, &mut watcher] {
        p.login();
        p.pump_until(T, |e| {
            e.iter()
                .any(|e| matches!(e, SessionEvent::MarketLive { live: true, .. }))
        });
    }
    // A fresh stream tells the game to read its page first.
    assert!(count(&watcher.events, |e| matches!(e, SessionEvent::MarketReload)) >= 1);
    seller.sell("ore", 5, 10).expect("sell");
    let id = seller.wait_listed();
    watcher.pump_until(T, move |e| {
        e.iter().any(|e| match e {
            SessionEvent::MarketChanged { event } => {
                matches!(&event.change, StreamChange::Listing { listing, .. } if listing.id == id)
            }
            _ => false,
        })
    });
    buyer
        .session
        .as_mut()
        .expect("session")
        .buy_units(&mut buyer.store, id, 10, 2)
        .expect("buy");
    buyer.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::PurchaseSucceeded { .. }))
    });
    let id2 = id;
    watcher.pump_until(T, move |e| {
        e.iter().any(|e| match e {
            SessionEvent::MarketChanged { event } => matches!(&event.change,
                StreamChange::Listing { listing, .. } if listing.id == id2 && listing.quantity_remaining == 3),
            _ => false,
        })
    });
    buyer
        .session
        .as_mut()
        .expect("session")
        .buy_units(&mut buyer.store, id, 10, 3)
        .expect("buy");
    buyer.settle(T);
    watcher.pump_until(T, move |e| {
        e.iter().any(|e| match e {
            SessionEvent::MarketChanged { event } => matches!(&event.change,
                StreamChange::Listing { listing, .. } if listing.id == id2 && listing.status == ListingStatus::Sold),
            _ => false,
        })
    });
    let changes: Vec<String> = listing_changes(&watcher, id)
        .into_iter()
        .map(|(_, c, _)| c)
        .collect();
    assert_eq!(changes, ["created", "updated", "sold"]);
    // The seller, online, hears of the sale as a notification, once, and
    // the server's inbox is empty after (acknowledged once saved).
    seller.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::Notification { .. }))
    });
    seller.pump_until(T, |_| {
        world.count("SELECT COUNT(*) FROM notifications WHERE acked_at IS NULL AND kind = 'sold'")
            == 0
    });
    // The watcher's own events never include the seller's.
    assert!(!watcher
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::Notification { .. })));
    let s = seqs(&watcher);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "in order, once: {s:?}");
}

#[test]
fn the_stream_resumes_after_a_cut_and_a_restart_missing_nothing() {
    let mut world = World::start();
    let mut seller = Player::in_memory(&world, "resume-seller", 0);
    seller.store.add_item("ore", 100).expect("items");
    let mut watcher = Player::in_memory(&world, "resume-watcher", 0);
    seller.login();
    watcher.login();
    watcher.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::MarketLive { live: true, .. }))
    });
    let mut created = Vec::new();
    for round in 0..3 {
        for _ in 0..3 {
            seller.sell("ore", 1, 5).expect("sell");
        }
        seller.pump_until(T, |e| {
            count(e, |e| matches!(e, SessionEvent::ListingCreated { .. })) == 3 * (round + 1)
        });
        match round {
            // The network drops the stream mid-way.
            0 => world.proxy.cut_streams(),
            // The server restarts (the stream is the table, not the process).
            1 => world.restart_server(),
            _ => {}
        }
    }
    for e in &seller.events {
        if let SessionEvent::ListingCreated { listing, .. } = e {
            created.push(listing.id);
        }
    }
    let want: HashSet<i64> = created.iter().copied().collect();
    watcher.pump_until(Duration::from_secs(30), |e| {
        let seen: HashSet<i64> = e
            .iter()
            .filter_map(|e| match e {
                SessionEvent::MarketChanged { event } => match &event.change {
                    StreamChange::Listing { listing, .. } => Some(listing.id),
                    _ => None,
                },
                _ => None,
            })
            .collect();
        want.is_subset(&seen)
    });
    let s = seqs(&watcher);
    assert!(s.windows(2).all(|w| w[0] < w[1]), "in order, once: {s:?}");
    assert!(
        count(&watcher.events, |e| matches!(
            e,
            SessionEvent::MarketLive { live: false, .. }
        )) >= 1,
        "the cut was noticed"
    );
}

#[test]
fn a_pushed_sale_never_settles_a_hold() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "i4-seller", 0);
    seller.store.add_item("ore", 1).expect("items");
    let mut a = Player::in_memory(&world, "i4-a", 100);
    let mut b = Player::in_memory(&world, "i4-b", 100);
    for p in [&mut seller, &mut a, &mut b] {
        p.login();
    }
    seller.sell("ore", 1, 10).expect("sell");
    let id = seller.wait_listed();
    // A's purchase answer is lost; B's purchase loses the race to it.
    a.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::MarketLive { live: true, .. }))
    });
    a.buy_answer_lost(&world, id, 10);
    // The stream says "sold" to A; A's hold stays until its own answer.
    a.pump_until(T, move |e| {
        e.iter().any(|e| match e {
            SessionEvent::MarketChanged { event } => matches!(&event.change,
                StreamChange::Listing { listing, .. } if listing.id == id && listing.status == ListingStatus::Sold),
            _ => false,
        })
    });
    let state = a.store.state();
    assert_eq!(state.held_credits() + state.credits, 100);
    let _ = &mut b;
    // Its retry gets the first answer: settled by the answer, not the push.
    world.proxy.clear();
    a.settle(T);
    assert_eq!(a.store.state().credits, 90);
    assert_eq!(a.store.state().item_count("ore"), 1);
}

#[test]
fn notifications_of_the_time_away_arrive_once_after_they_are_saved() {
    let world = World::start();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("seller.json");
    let mut seller = Player::on_disk(world.client_config(), &path, "away-seller");
    seller.store.add_item("ore", 10).expect("items");
    seller.login();
    seller.sell("ore", 10, 7).expect("sell");
    let id = seller.wait_listed();
    seller.settle(T);
    seller.quit();
    // Away: three purchases by another player.
    let mut buyer = Player::in_memory(&world, "away-buyer", 1_000);
    buyer.login();
    for _ in 0..3 {
        buyer
            .session
            .as_mut()
            .expect("session")
            .buy_units(&mut buyer.store, id, 7, 2)
            .expect("buy");
        buyer.settle(T);
    }
    // Back: one summary, saved before it is told.
    let mut seller = Player::on_disk(world.client_config(), &path, "away-seller");
    seller.login();
    seller.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::Notification { .. }))
    });
    let n = seller.find(|e| match e {
        SessionEvent::Notification { notification } => Some(notification.clone()),
        _ => None,
    });
    assert_eq!(
        (n.kind.as_str(), n.quantity, n.credits, n.fills),
        ("sold", 6, 42, 3)
    );
    assert_eq!(n.listing_id, Some(id));
    let saved = marketplace_client::store::read_saved(&path)
        .expect("readable")
        .expect("saved");
    assert!(
        saved.sync.values().any(|m| m.notices.contains_key(&n.id)),
        "noted in the save before it was told"
    );
    seller.pump_until(T, |_| {
        world.count("SELECT COUNT(*) FROM notifications WHERE acked_at IS NULL") == 0
    });
    seller.quit();
    // And never again.
    let mut seller = Player::on_disk(world.client_config(), &path, "away-seller");
    seller.login();
    seller.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::MarketLive { live: true, .. }))
    });
    assert_no_notification_within(&mut seller, 50);
}

#[test]
fn a_notification_saved_but_not_acknowledged_is_not_told_twice() {
    let world = World::start();
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("seller.json");
    let mut seller = Player::on_disk(world.client_config(), &path, "crash-seller");
    seller.store.add_item("ore", 2).expect("items");
    seller.login();
    seller.sell("ore", 2, 5).expect("sell");
    let id = seller.wait_listed();
    seller.settle(T);
    seller.quit();
    let mut buyer = Player::in_memory(&world, "crash-buyer", 100);
    buyer.login();
    buyer
        .session
        .as_mut()
        .expect("session")
        .buy_units(&mut buyer.store, id, 5, 2)
        .expect("buy");
    buyer.settle(T);
    assert_eq!(buyer.store.state().item_count("ore"), 2);
    // The game saw it and saved the note, then died before acknowledging:
    // every acknowledgement is lost on the way.
    world.proxy.fault(
        "/notifications/ack",
        crate::support::proxy::Fault::Reset,
        1_000,
    );
    let mut seller = Player::on_disk(world.client_config(), &path, "crash-seller");
    seller.login();
    seller.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::Notification { .. }))
    });
    seller.pump_until(T, |_| {
        world
            .proxy
            .stats
            .faults
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    });
    drop(seller); // killed: no shutdown
    assert_eq!(
        world.count("SELECT COUNT(*) FROM notifications WHERE acked_at IS NULL"),
        1
    );
    world.proxy.clear();
    let store = PlayerStore::open(&path, "crash-seller", StoreOptions::default()).expect("opens");
    let mut seller = Player::with_store(world.client_config(), store);
    seller.login();
    // Acknowledged now, but not told again.
    seller.pump_until(T, |_| {
        world.count("SELECT COUNT(*) FROM notifications WHERE acked_at IS NULL") == 0
    });
    assert_no_notification_within(&mut seller, 20);
}

#[test]
fn a_game_that_turns_live_off_hears_nothing_and_watching_filters() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "filter-seller", 0);
    seller.store.add_item("ore", 2).expect("items");
    seller.store.add_item("gem", 2).expect("items");
    let mut off = Player::in_memory(&world, "filter-off", 0);
    off.session().set_live(false);
    let mut gems = Player::in_memory(&world, "filter-gems", 0);
    gems.session()
        .watch(vec!["gem".into()], false)
        .expect("watch");
    assert!(gems.session().watch(vec!["bad id!".into()], false).is_err());
    for p in [&mut seller, &mut off, &mut gems] {
        p.login();
    }
    gems.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::MarketLive { live: true, .. }))
    });
    seller.sell("ore", 1, 5).expect("sell");
    seller.sell("gem", 1, 5).expect("sell");
    seller.settle(T);
    gems.pump_until(T, |e| {
        e.iter().any(|e| match e {
            SessionEvent::MarketChanged { event } => event.change.item_id() == Some("gem"),
            _ => false,
        })
    });
    for _ in 0..20 {
        off.frame();
        gems.frame();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!gems.events.iter().any(|e| match e {
        SessionEvent::MarketChanged { event } => event.change.item_id() == Some("ore"),
        _ => false,
    }));
    assert!(!live(&off));
    assert!(!off
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::MarketChanged { .. })));

    // What sells while live is off is told once it is on again: the
    // stream goes live (told) and its first reload re-reads the inbox.
    off.store.add_item("ore", 1).expect("items");
    off.sell("ore", 1, 5).expect("sell");
    let listing = off.wait_listed();
    let mut buyer = Player::in_memory(&world, "filter-buyer", 100);
    buyer.login();
    buyer.buy(listing, 5).expect("buy");
    buyer.settle(T);
    assert_no_notification_within(&mut off, 20);
    off.session().set_live(true);
    off.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::MarketLive { live: true, .. }))
            && e.iter().any(|e| matches!(e, SessionEvent::Notification { notification } if notification.listing_id == Some(listing)))
    });
}

/// Runs `frames` frames of the player's game, 5 ms apart: nothing is told.
fn assert_no_notification_within(player: &mut Player, frames: usize) {
    for _ in 0..frames {
        player.frame();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        count(&player.events, |e| matches!(
            e,
            SessionEvent::Notification { .. }
        )),
        0
    );
}
