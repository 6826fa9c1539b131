//! Scale-out, proven: three `marketplace-server` processes on one
//! PostgreSQL. They start at the same moment (migrations run once, under the
//! advisory lock); buyers spread across them race for every listing; the
//! same key is replayed on different replicas at once; one replica is killed
//! with SIGKILL mid-load. No acknowledged purchase is lost, nothing is sold
//! twice, the survivors keep serving.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use marketplace_e2e::{check_books, key, postgres_url, scalar, Api, Reply, ServerProcess};

const LISTINGS: usize = 40;
const BUYERS: usize = 12;

/// Buys with one key until a replica gives a real answer, moving to the next
/// replica when one is down or busy — what a client behind a balancer sees.
async fn buy_anywhere(
    api: &Api,
    bases: &[String],
    mut replica: usize,
    token: &str,
    listing: i64,
    key: &str,
) -> Reply {
    for _ in 0..200 {
        match api
            .purchase(&bases[replica % bases.len()], token, listing, 10, key)
            .await
        {
            Ok(r) if r.status < 500 && r.code() != "request_in_progress" => return r,
            _ => {
                replica += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    panic!("no replica answered listing {listing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_share_one_postgres() {
    let Some(db) = postgres_url("the replica suite").await else {
        return;
    };
    // Started at the same moment.
    let starting: Vec<_> = (0..3)
        .map(|_| {
            let db = db.clone();
            std::thread::spawn(move || ServerProcess::start(&db, &[]))
        })
        .collect();
    let replicas: Vec<ServerProcess> = starting.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM schema_migrations").await,
        scalar(&db, "SELECT MAX(version) FROM schema_migrations").await,
        "every migration applied once"
    );
    let bases: Arc<Vec<String>> = Arc::new(replicas.iter().map(ServerProcess::url).collect());
    let victim = Arc::new(Mutex::new(Some(replicas.into_iter().collect::<Vec<_>>())));
    let api = Api::default();

    // A seller logs in on one replica; its token works on all (one secret).
    let (_, seller) = api.login(&bases[0], "rep-seller").await;
    let mut listings = Vec::new();
    for i in 0..LISTINGS {
        listings.push(
            api.create_listing(&bases[i % 3], &seller, &format!("item-{i}"), 10)
                .await,
        );
    }
    let mut buyers = Vec::new();
    for i in 0..BUYERS {
        buyers.push(api.login(&bases[i % 3], &format!("rep-buyer-{i}")).await);
    }

    // The same key on three replicas at once: one purchase, one answer.
    let replayed = listings[0];
    let (_, token) = buyers[0].clone();
    let k = key();
    let mut same = Vec::new();
    for base in bases.iter() {
        let (api, base, token, k) = (api.clone(), base.clone(), token.clone(), k.clone());
        same.push(tokio::spawn(async move {
            loop {
                let r = api.purchase(&base, &token, replayed, 10, &k).await.unwrap();
                if r.code() != "request_in_progress" {
                    return r;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }));
    }
    let mut answers = Vec::new();
    for t in same {
        answers.push(t.await.unwrap());
    }
    assert_eq!(answers[0].status, 200, "{}", answers[0].text);
    assert!(
        answers.iter().all(|a| a.text == answers[0].text),
        "identical answers: {answers:#?}"
    );
    assert_eq!(
        scalar(
            &db,
            &format!("SELECT COUNT(*) FROM purchases WHERE listing_id = {replayed}")
        )
        .await,
        1
    );

    // Every buyer races for every other listing, spread over the replicas;
    // a third of the way in, replica 2 is killed.
    let done = Arc::new(AtomicUsize::new(0));
    let total = (LISTINGS - 1) * BUYERS;
    let mut tasks = Vec::new();
    for (n, (listing, (buyer_id, token))) in listings[1..]
        .iter()
        .flat_map(|l| buyers.iter().map(move |b| (*l, b.clone())))
        .enumerate()
    {
        let (api, bases, done, victim) = (api.clone(), bases.clone(), done.clone(), victim.clone());
        tasks.push(tokio::spawn(async move {
            let r = buy_anywhere(&api, &bases, n, &token, listing, &key()).await;
            if done.fetch_add(1, Ordering::SeqCst) == total / 3 {
                if let Some(replicas) = victim.lock().unwrap().as_mut() {
                    replicas[2].kill();
                }
            }
            (listing, buyer_id, r)
        }));
    }
    let mut acknowledged = Vec::new();
    for t in tasks {
        let (listing, buyer_id, r) = t.await.unwrap();
        match r.status {
            200 => acknowledged.push((
                listing,
                buyer_id,
                r.body["purchase"]["id"].as_i64().unwrap(),
            )),
            409 => assert_eq!(r.code(), "already_sold", "{}", r.text),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    // Exactly one winner per listing, and every acknowledged purchase is there.
    let mut winners: Vec<i64> = acknowledged.iter().map(|(l, _, _)| *l).collect();
    winners.sort();
    winners.dedup();
    assert_eq!(winners.len(), LISTINGS - 1, "every listing sold");
    assert_eq!(
        acknowledged.len(),
        LISTINGS - 1,
        "one acknowledged sale per listing"
    );
    for (listing, buyer, purchase) in &acknowledged {
        let found = scalar(
            &db,
            &format!("SELECT COUNT(*) FROM purchases WHERE id = {purchase} AND listing_id = {listing} AND buyer_id = {buyer}"),
        )
        .await;
        assert_eq!(found, 1, "acknowledged purchase {purchase} is on the books");
    }
    assert_eq!(
        scalar(&db, "SELECT COUNT(*) FROM purchases").await,
        LISTINGS as i64
    );
    check_books(&db).await;

    // The survivors keep serving.
    for base in &bases[..2] {
        let r = api
            .send(base, reqwest::Method::GET, "/healthz", None, None, None)
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        let (_, t) = api.login(base, "after-the-kill").await;
        let l = api.create_listing(base, &t, "late", 10).await;
        assert!(l > 0);
    }
}
