//! Concurrency against a real server on SQLite and PostgreSQL: many buyers
//! racing for the same listings, concurrent claims and concurrent replays.
//! Every test ends by checking the books (I1, I2) in the database itself.

use std::collections::HashMap;
use std::sync::Arc;

use crate::support::{check_books, key, TestDb, TestServer};
use reqwest::StatusCode;
use tokio::sync::Barrier;

backend_tests!(
    ten_buyers_one_listing,
    hundred_listings_twenty_buyers_each,
    concurrent_claims_pay_once,
    concurrent_replays_have_one_effect,
);

/// The seed's check: 10 buyers hit one listing at the same moment; exactly one
/// gets 200 and nine get 409 `already_sold`.
async fn ten_buyers_one_listing(db: TestDb) {
    let t = Arc::new(TestServer::start(&db).await);
    let seller = t.login("seller").await;
    let listing = t.create_listing(&seller, "plasma_cutter", 120).await;
    let mut buyers = Vec::new();
    for i in 0..10 {
        buyers.push(t.login(&format!("buyer-{i}")).await);
    }
    let barrier = Arc::new(Barrier::new(buyers.len()));
    let tasks: Vec<_> = buyers
        .into_iter()
        .map(|buyer| {
            let (t, barrier) = (t.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                t.purchase(&buyer, listing, 120, &key()).await
            })
        })
        .collect();
    let mut ok = 0;
    let mut sold = 0;
    for task in tasks {
        let r = task.await.unwrap();
        match (r.status, r.code()) {
            (StatusCode::OK, _) => ok += 1,
            (StatusCode::CONFLICT, "already_sold") => {
                assert_eq!(r.body["error"]["message"], "Item sold to another player");
                sold += 1
            }
            other => panic!("unexpected answer {other:?}: {}", r.text),
        }
    }
    assert_eq!((ok, sold), (1, 9));
    let books = check_books(&db).await;
    assert_eq!(books.purchases, 1);
    assert_eq!(books.unclaimed_total, 120);
}

/// Scaled: 100 listings × 20 concurrent buyers each, all at once. Exactly one
/// winner per listing; unclaimed proceeds equal the sum of purchase prices.
async fn hundred_listings_twenty_buyers_each(db: TestDb) {
    const LISTINGS: usize = 100;
    const BUYERS: usize = 20;
    let t = Arc::new(TestServer::start(&db).await);
    let seller = t.login("seller").await;
    let mut listings = Vec::new();
    for i in 0..LISTINGS {
        let price = 10 + i as i64;
        listings.push((
            t.create_listing(&seller, &format!("item-{i}"), price).await,
            price,
        ));
    }
    let mut buyers = Vec::new();
    for i in 0..BUYERS {
        buyers.push(t.login(&format!("buyer-{i}")).await);
    }
    let barrier = Arc::new(Barrier::new(LISTINGS * BUYERS));
    let mut tasks = Vec::new();
    for &(listing, price) in &listings {
        for buyer in &buyers {
            let (t, barrier, buyer) = (t.clone(), barrier.clone(), buyer.clone());
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                (listing, t.purchase(&buyer, listing, price, &key()).await)
            }));
        }
    }
    let mut winners: HashMap<i64, usize> = HashMap::new();
    let mut expected_total = 0;
    for task in tasks {
        let (listing, r) = task.await.unwrap();
        match (r.status, r.code()) {
            (StatusCode::OK, _) => {
                *winners.entry(listing).or_default() += 1;
                expected_total += r.body["purchase"]["price"].as_i64().unwrap();
            }
            (StatusCode::CONFLICT, "already_sold") => {}
            other => panic!("unexpected answer {other:?}: {}", r.text),
        }
    }
    assert_eq!(winners.len(), LISTINGS, "every listing sold");
    assert!(
        winners.values().all(|&n| n == 1),
        "exactly one winner per listing"
    );
    let books = check_books(&db).await;
    assert_eq!(books.purchases, LISTINGS as i64);
    assert_eq!(books.unclaimed_total, expected_total);
    assert_eq!(expected_total, listings.iter().map(|(_, p)| p).sum::<i64>());
}

/// Ten concurrent claims of one sale, each with its own key: one pays out,
/// the others get 409 `already_claimed`.
async fn concurrent_claims_pay_once(db: TestDb) {
    let t = Arc::new(TestServer::start(&db).await);
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "warp_coil", 300).await;
    let bought = t.purchase(&buyer, listing, 300, &key()).await;
    assert_eq!(bought.status, StatusCode::OK);
    let sale = bought.body["purchase"]["id"].as_i64().unwrap();
    let barrier = Arc::new(Barrier::new(10));
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let (t, barrier, seller) = (t.clone(), barrier.clone(), seller.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                t.claim(&seller, sale, &key()).await
            })
        })
        .collect();
    let mut paid = 0;
    for task in tasks {
        let r = task.await.unwrap();
        match (r.status, r.code()) {
            (StatusCode::OK, _) => {
                assert_eq!(r.body["amount"], 300);
                paid += 1;
            }
            (StatusCode::CONFLICT, "already_claimed") => {}
            other => panic!("unexpected answer {other:?}: {}", r.text),
        }
    }
    assert_eq!(paid, 1);
    let books = check_books(&db).await;
    assert_eq!((books.claimed_total, books.unclaimed_total), (300, 0));
}

/// Twenty concurrent sends of one purchase with one key: one purchase. Every
/// answer is either the first answer, byte for byte, or 409
/// `request_in_progress`; a later replay returns the first answer too.
async fn concurrent_replays_have_one_effect(db: TestDb) {
    let t = Arc::new(TestServer::start(&db).await);
    let seller = t.login("seller").await;
    let buyer = t.login("buyer").await;
    let listing = t.create_listing(&seller, "shield_cell", 75).await;
    let the_key = key();
    let barrier = Arc::new(Barrier::new(20));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let (t, barrier, buyer, k) =
                (t.clone(), barrier.clone(), buyer.clone(), the_key.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                t.purchase(&buyer, listing, 75, &k).await
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        let r = task.await.unwrap();
        match (r.status, r.code()) {
            (StatusCode::OK, _) => bodies.push(r.text),
            (StatusCode::CONFLICT, "request_in_progress") => {}
            other => panic!("unexpected answer {other:?}: {}", r.text),
        }
    }
    assert!(!bodies.is_empty());
    let later = t.purchase(&buyer, listing, 75, &the_key).await;
    assert_eq!(later.status, StatusCode::OK);
    assert_eq!(later.headers["idempotent-replayed"], "true");
    assert!(
        bodies.iter().all(|b| *b == later.text),
        "replays are byte-identical"
    );
    assert_eq!(check_books(&db).await.purchases, 1);
}
