//! A real market through the client core, as a game uses it: buy orders
//! hold their credits until the server takes them into escrow, fills made
//! while the buyer is away wait as deliveries, collecting them brings them
//! into the save exactly once — through lost answers and restarts — and
//! partial purchases hold exactly what they may cost. Every test checks the
//! client's half of I2 (credits + held and items + escrowed move only by
//! what the server did) and the server's books.

use std::time::Duration;

use marketplace_client::{ErrorCode, SessionEvent};

use crate::support::{proxy, Player, World};

const T: Duration = Duration::from_secs(10);

fn placed(p: &Player) -> marketplace_client::protocol::Order {
    p.find(|e| match e {
        SessionEvent::OrderPlaced { order, .. } => Some(order.clone()),
        _ => None,
    })
}

fn collect(p: &mut Player) -> Vec<marketplace_client::protocol::Delivery> {
    let id = p.session().collect_deliveries().expect("collect");
    p.pump_until(T, |e| {
        e.iter().any(|e| matches!(e, SessionEvent::DeliveriesCollected { request_id, .. } if *request_id == id))
    });
    p.find(|e| match e {
        SessionEvent::DeliveriesCollected {
            request_id,
            deliveries,
            error,
        } if *request_id == id => {
            assert!(error.is_none(), "{error:?}");
            Some(deliveries.clone())
        }
        _ => None,
    })
}

fn audit(world: &World) {
    world.rt.block_on(async {
        sqlx::any::install_default_drivers();
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&world.config.database)
            .await
            .expect("connect");
        let mut conn = pool.acquire().await.expect("conn");
        let report = marketplace_server::audit_connection(&mut conn)
            .await
            .expect("audit");
        assert!(report.ok(), "I6: {:#?}", report.mismatches);
    });
}

#[test]
fn a_buy_order_fills_while_away_and_its_deliveries_arrive_once() {
    let world = World::start();
    let mut buyer = Player::in_memory(&world, "order-buyer", 1_000);
    let mut seller = Player::in_memory(&world, "order-seller", 0);
    seller.store.add_item("ore", 10).unwrap();
    buyer.login();
    seller.login();

    let store = &mut buyer.store;
    buyer
        .session
        .as_mut()
        .unwrap()
        .place_buy_order(store, "ore", 5, 20, None, None)
        .expect("order");
    // Held at once: 5 × 20.
    assert_eq!(
        (
            buyer.store.state().credits,
            buyer.store.state().held_credits()
        ),
        (900, 100)
    );
    buyer.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::OrderPlaced { .. }))
    });
    buyer.settle(T);
    let order = placed(&buyer);
    assert_eq!((order.quantity_remaining, order.escrow), (5, 100));
    // The credits are the order's escrow now: spent from the save.
    assert_eq!(
        (
            buyer.store.state().credits,
            buyer.store.state().held_credits()
        ),
        (900, 0)
    );

    // The seller lists 3 below the bid: the listing is the newcomer, so
    // the order takes them at its own price (the resting side's), 20.
    seller.sell("ore", 3, 15).unwrap();
    seller.wait_listed();
    seller.settle(T);
    let got = collect(&mut buyer);
    buyer.settle(T);
    assert_eq!(got.iter().map(|d| d.quantity).sum::<i64>(), 3);
    assert_eq!(buyer.store.state().item_count("ore"), 3);
    // A second collect finds nothing and changes nothing.
    assert!(collect(&mut buyer).is_empty());
    assert_eq!(buyer.store.state().item_count("ore"), 3);

    // Cancel: the 2 units left (40 credits) come back into the save.
    let store = &mut buyer.store;
    buyer
        .session
        .as_mut()
        .unwrap()
        .cancel_order(store, order.id)
        .unwrap();
    buyer.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::OrderCancelled { .. }))
    });
    buyer.settle(T);
    let returned = buyer.find(|e| match e {
        SessionEvent::OrderCancelled { returned, .. } => Some(*returned),
        _ => None,
    });
    assert_eq!(returned, 40);
    assert_eq!(buyer.store.state().credits, 940);
    // I2 over both: 1,000 credits in, 60 to the seller's proceeds.
    seller.session().claim_proceeds().unwrap();
    seller.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::ClaimsDone { .. }))
    });
    seller.settle(T);
    assert_eq!(seller.store.state().credits, 60);
    assert_eq!(buyer.total_credits() + seller.total_credits(), 1_000);
    assert_eq!(
        buyer.store.state().item_count("ore") + seller.store.state().item_count("ore"),
        10
    );
    audit(&world);
}

#[test]
fn a_cheaper_resting_listing_gives_the_difference_back_as_a_delivery() {
    let world = World::start();
    let mut buyer = Player::in_memory(&world, "refund-buyer", 500);
    let mut seller = Player::in_memory(&world, "refund-seller", 0);
    seller.store.add_item("gem", 4).unwrap();
    buyer.login();
    seller.login();
    seller.sell("gem", 4, 10).unwrap();
    seller.wait_listed();
    seller.settle(T);
    let store = &mut buyer.store;
    buyer
        .session
        .as_mut()
        .unwrap()
        .place_buy_order(store, "gem", 4, 25, None, None)
        .unwrap();
    buyer.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::OrderPlaced { .. }))
    });
    buyer.settle(T);
    let order = placed(&buyer);
    assert_eq!(
        order.status,
        marketplace_client::protocol::OrderStatus::Filled
    );
    // 100 went into escrow; 40 paid; 60 wait, with the 4 gems.
    assert_eq!(buyer.store.state().credits, 400);
    let got = collect(&mut buyer);
    buyer.settle(T);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (
            buyer.store.state().credits,
            buyer.store.state().item_count("gem")
        ),
        (460, 4)
    );
    audit(&world);
}

#[test]
fn a_collect_whose_answer_is_lost_is_applied_once_after_a_restart() {
    let world = World::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("buyer.json");
    let mut buyer = Player::on_disk(world.client_config(), &path, "lossy-buyer");
    buyer.store.add_credits(300).unwrap();
    let mut seller = Player::in_memory(&world, "lossy-seller", 0);
    seller.store.add_item("ore", 2).unwrap();
    buyer.login();
    seller.login();
    let store = &mut buyer.store;
    buyer
        .session
        .as_mut()
        .unwrap()
        .place_buy_order(store, "ore", 2, 30, None, None)
        .unwrap();
    buyer.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::OrderPlaced { .. }))
    });
    buyer.settle(T);
    seller.sell("ore", 2, 30).unwrap();
    seller.wait_listed();
    seller.settle(T);

    // The server collects, the answer never arrives, the game quits.
    world
        .proxy
        .fault("/deliveries/collect", proxy::Fault::LoseResponse, 1_000);
    buyer.session().collect_deliveries().unwrap();
    let collected =
        |w: &World| w.count("SELECT COUNT(*) FROM deliveries WHERE collected_at IS NOT NULL");
    let deadline = std::time::Instant::now() + T;
    while collected(&world) == 0 {
        assert!(std::time::Instant::now() < deadline, "never collected");
        buyer.frame();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(buyer.store.state().item_count("ore"), 0, "nothing told yet");
    buyer.quit();
    world.proxy.clear();

    // Relaunch: the journaled collect goes again with its key; the items
    // arrive once.
    let mut buyer = Player::on_disk(world.client_config(), &path, "lossy-buyer");
    buyer.settle(T);
    assert_eq!(buyer.store.state().item_count("ore"), 2);
    assert_eq!(buyer.store.state().credits, 240);
    assert!(collect(&mut buyer).is_empty(), "nothing left to collect");
    buyer.settle(T);
    assert_eq!(buyer.store.state().item_count("ore"), 2);
    audit(&world);
}

#[test]
fn partial_purchases_hold_what_they_may_cost() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "lot-seller", 0);
    seller.store.add_item("fuel", 5).unwrap();
    let mut buyer = Player::in_memory(&world, "lot-buyer", 100);
    seller.login();
    buyer.login();
    seller.sell("fuel", 5, 10).unwrap();
    let listing = seller.wait_listed();
    let store = &mut buyer.store;
    let session = buyer.session.as_mut().unwrap();
    session.buy_units(store, listing, 10, 2).unwrap();
    assert_eq!(buyer.store.state().held_credits(), 20);
    buyer.settle(T);
    assert_eq!(
        (
            buyer.store.state().credits,
            buyer.store.state().item_count("fuel")
        ),
        (80, 2)
    );
    // More than the save can hold for: refused before anything is sent.
    let store = &mut buyer.store;
    let session = buyer.session.as_mut().unwrap();
    let err = session.buy_units(store, listing, 10, 9).unwrap_err();
    assert_eq!(err.code, ErrorCode::InsufficientCredits);
    // After browsing, "buy" takes all that remains (3 × 10).
    let browse = buyer.session().browse(Default::default()).unwrap();
    buyer.pump_until(T, |e| {
        e.iter().any(|e| matches!(e, SessionEvent::ListingsUpdated { request_id, .. } if *request_id == browse))
    });
    buyer.buy(listing, 10).unwrap();
    assert_eq!(buyer.store.state().held_credits(), 30);
    buyer.settle(T);
    assert_eq!(
        (
            buyer.store.state().credits,
            buyer.store.state().item_count("fuel")
        ),
        (50, 5)
    );
    // Asking for more than remains: a definitive refusal, the hold back.
    let l2 = {
        seller.store.add_item("fuel", 1).unwrap();
        seller.events.clear();
        seller.sell("fuel", 1, 10).unwrap();
        seller.wait_listed()
    };
    let store = &mut buyer.store;
    let session = buyer.session.as_mut().unwrap();
    session.buy_units(store, l2, 10, 2).unwrap();
    buyer.settle(T);
    let code = buyer.find(|e| match e {
        SessionEvent::PurchaseFailed {
            listing_id, error, ..
        } if *listing_id == l2 => Some(error.code),
        _ => None,
    });
    assert_eq!(code, ErrorCode::QuantityUnavailable);
    assert_eq!(buyer.store.state().credits, 50);
    audit(&world);
}

#[test]
fn an_expired_listing_comes_back_as_a_delivery() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "slow-seller", 0);
    seller.store.add_item("relic", 3).unwrap();
    seller.login();
    let store = &mut seller.store;
    seller
        .session
        .as_mut()
        .unwrap()
        .create_listing_for(store, "relic", 3, 50, Some(60))
        .unwrap();
    seller.wait_listed();
    seller.settle(T);
    assert_eq!(seller.store.state().item_count("relic"), 0);
    let server = world.server.as_ref().unwrap();
    server.clock().advance(61);
    world.rt.block_on(server.sweep_now()).expect("sweep");
    // Logged in again: the clock moved past the token's life too.
    seller.login();
    let got = collect(&mut seller);
    seller.settle(T);
    assert_eq!(got[0].kind, "listing_expired");
    assert_eq!(seller.store.state().item_count("relic"), 3);
    audit(&world);
}

#[test]
fn fees_are_quoted_and_taken_from_the_proceeds() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/market.sqlite", dir.path().display());
    let mut config = marketplace_server::Config::for_tests(url);
    config.sales_tax_bp = 1_000; // 10 %
    let world = World::start_on(config, dir);
    let mut seller = Player::in_memory(&world, "fee-seller", 0);
    seller.store.add_item("ore", 1).unwrap();
    let mut buyer = Player::in_memory(&world, "fee-buyer", 100);
    seller.login();
    buyer.login();
    let q = seller.session().quote_fees(1, 100).unwrap();
    seller.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::FeesQuoted { request_id, .. } if *request_id == q))
    });
    let quote = seller.find(|e| match e {
        SessionEvent::FeesQuoted { quote, .. } => Some(quote.clone()),
        _ => None,
    });
    assert_eq!(
        (quote.buyer_pays, quote.sales_tax, quote.seller_receives),
        (100, 10, 90)
    );
    seller.sell("ore", 1, 100).unwrap();
    let listing = seller.wait_listed();
    buyer.buy(listing, 100).unwrap();
    buyer.settle(T);
    seller.session().claim_proceeds().unwrap();
    seller.pump_until(T, |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::ClaimsDone { .. }))
    });
    seller.settle(T);
    assert_eq!(
        seller.store.state().credits,
        90,
        "the seller receives what the quote said"
    );
    audit(&world);
}

#[test]
fn market_data_reaches_the_game() {
    let world = World::start();
    let mut seller = Player::in_memory(&world, "md-seller", 0);
    seller.store.add_item("ore", 3).unwrap();
    let mut buyer = Player::in_memory(&world, "md-buyer", 100);
    seller.login();
    buyer.login();
    seller.sell("ore", 3, 20).unwrap();
    let listing = seller.wait_listed();
    let store = &mut buyer.store;
    let session = buyer.session.as_mut().unwrap();
    session.buy_units(store, listing, 20, 1).unwrap();
    buyer.settle(T);
    let (s, d, h, f) = {
        let session = buyer.session();
        (
            session.market_summary("ore").unwrap(),
            session.depth("ore", 5).unwrap(),
            session.price_history("ore", "hour", None, None).unwrap(),
            session.search_items(" or ", 5).unwrap(),
        )
    };
    buyer.pump_until(T, |e| {
        [s, d, h, f]
            .iter()
            .all(|id| e.iter().any(|e| e.request_id() == Some(*id)))
    });
    let summary = buyer.find(|e| match e {
        SessionEvent::MarketSummary { summary, .. } => Some(summary.clone()),
        _ => None,
    });
    assert_eq!(
        (summary.best_ask, summary.last_price, summary.volume_24h),
        (Some(20), Some(20), 1)
    );
    let depth = buyer.find(|e| match e {
        SessionEvent::DepthListed { depth, .. } => Some(depth.clone()),
        _ => None,
    });
    assert_eq!(depth.asks[0].quantity, 2);
    let history = buyer.find(|e| match e {
        SessionEvent::PriceHistory { history, .. } => Some(history.clone()),
        _ => None,
    });
    assert_eq!(history.candles.len(), 1);
    let (items, catalog) = buyer.find(|e| match e {
        SessionEvent::ItemsFound { items, catalog, .. } => Some((items.clone(), *catalog)),
        _ => None,
    });
    assert!(!catalog, "this world has no catalog: ids on the book");
    assert_eq!(
        items.iter().map(|i| i.item_id.as_str()).collect::<Vec<_>>(),
        ["ore"]
    );
    assert_eq!(
        buyer.session().depth("ore", 0).unwrap_err().code,
        ErrorCode::InvalidArgument
    );
    for (text, limit) in [("", 5), ("ore", 0), ("ore", 101), ("a\nb", 5)] {
        assert_eq!(
            buyer.session().search_items(text, limit).unwrap_err().code,
            ErrorCode::InvalidArgument,
            "{text:?} {limit}"
        );
    }
}
