//! The seed's scenario, end to end: one seller lists an item, ten buyers press
//! Buy at the same instant. Exactly one purchase commits; nine holds are
//! rolled back with `already_sold`; credits and items are conserved.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use marketplace_client::{ErrorCode, SessionEvent};

use crate::world::{pump_until, sim_client_config, SimPlayer};

pub const BUYERS: usize = 10;
pub const PRICE: i64 = 120;
pub const START_CREDITS: i64 = 500;
pub const ITEM: &str = "plasma_cutter";

/// What happened, for the caller to check and print.
#[derive(Debug, Default)]
pub struct SeedOutcome {
    pub committed: usize,
    pub rolled_back_already_sold: usize,
    pub other_failures: usize,
    pub credits_before: i64,
    pub credits_after: i64,
    pub items_before: i64,
    pub items_after: i64,
    pub elapsed: Duration,
}

impl SeedOutcome {
    pub fn is_correct(&self) -> bool {
        self.committed == 1
            && self.rolled_back_already_sold == BUYERS - 1
            && self.other_failures == 0
            && self.credits_before == self.credits_after
            && self.items_before == self.items_after
    }
}

/// Runs the scenario against `url`, keeping player files in `dir` and
/// writing progress to `out`. `run` makes the device ids unique per run.
pub fn run(url: &str, dir: &Path, run: &str, out: &mut dyn Write) -> Result<SeedOutcome, String> {
    let config = sim_client_config(url);
    let mut players = Vec::new();
    let mut seller = SimPlayer::open(
        "seller",
        &dir.join(format!("seller-{run}.json")),
        config.clone(),
    )?;
    seller
        .store
        .set_identity(&format!("seed-{run}-seller"), "Seller")
        .map_err(|e| e.to_string())?;
    seller.store.add_item(ITEM, 1).map_err(|e| e.to_string())?;
    players.push(seller);
    for i in 0..BUYERS {
        let mut buyer = SimPlayer::open(
            &format!("buyer-{i}"),
            &dir.join(format!("buyer-{i}-{run}.json")),
            config.clone(),
        )?;
        buyer
            .store
            .set_identity(&format!("seed-{run}-buyer-{i}"), &format!("Buyer {i}"))
            .map_err(|e| e.to_string())?;
        buyer
            .store
            .add_credits(START_CREDITS)
            .map_err(|e| e.to_string())?;
        players.push(buyer);
    }
    let _ = writeln!(out, "· {} players log in", players.len());
    for p in &mut players {
        p.login().map_err(|e| e.to_string())?;
    }
    let ok = pump_until(&mut players, Duration::from_secs(20), |ps| {
        ps.iter().all(|p| {
            p.events
                .iter()
                .any(|e| matches!(e, SessionEvent::LoggedIn { .. }))
        })
    });
    if !ok {
        return Err(format!("players could not log in to {url}"));
    }

    let _ = writeln!(out, "· the seller lists 1 × {ITEM} for {PRICE} credits");
    let seller = &mut players[0];
    seller
        .session
        .create_listing(&mut seller.store, ITEM, 1, PRICE)
        .map_err(|e| e.to_string())?;
    let ok = pump_until(&mut players[..1], Duration::from_secs(20), |ps| {
        ps[0]
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::ListingCreated { .. }))
    });
    let listing_id = players[0]
        .events
        .iter()
        .find_map(|e| match e {
            SessionEvent::ListingCreated { listing, .. } => Some(listing.id),
            _ => None,
        })
        .filter(|_| ok)
        .ok_or("the listing was not created")?;
    let _ = writeln!(out, "  listing #{listing_id} is on the market");

    let credits_before: i64 = players
        .iter()
        .map(|p| p.store.state().total_credits())
        .sum();
    let items_before: i64 = players
        .iter()
        .map(|p| p.store.state().item_count(ITEM) + p.store.state().escrowed_items(ITEM))
        .sum::<i64>()
        + 1; // the one in the active listing
    for p in &mut players {
        p.events.clear();
    }

    let _ = writeln!(out, "· {BUYERS} buyers press Buy at the same instant");
    let started = Instant::now();
    for p in players.iter_mut().skip(1) {
        p.session
            .buy(&mut p.store, listing_id, PRICE)
            .map_err(|e| e.to_string())?;
        let s = p.store.state();
        let _ = writeln!(
            out,
            "  {:<8} hold placed: {} available + {} held",
            p.label,
            s.credits,
            s.held_credits()
        );
    }
    let mut outcome = SeedOutcome {
        credits_before,
        items_before,
        ..SeedOutcome::default()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while players.iter().skip(1).any(|p| !p.is_settled()) {
        if Instant::now() > deadline {
            return Err("the purchases did not settle within 30 s".into());
        }
        for p in players.iter_mut().skip(1) {
            let label = p.label.clone();
            let new: Vec<SessionEvent> = p.frame().to_vec();
            for e in new {
                match e {
                    SessionEvent::PurchaseSucceeded { purchase, .. } => {
                        outcome.committed += 1;
                        let _ = writeln!(
                            out,
                            "  {label:<8} ✔ purchase #{} committed: paid {}",
                            purchase.id, purchase.price
                        );
                    }
                    SessionEvent::PurchaseFailed { error, .. } => {
                        if error.code == ErrorCode::AlreadySold {
                            outcome.rolled_back_already_sold += 1;
                        } else {
                            outcome.other_failures += 1;
                        }
                        let _ = writeln!(
                            out,
                            "  {label:<8} ✘ hold rolled back: {} ({})",
                            error.code, error.message
                        );
                    }
                    SessionEvent::RequestRetrying { attempt, error, .. } => {
                        let _ = writeln!(
                            out,
                            "  {label:<8} … retrying ({}, attempt {attempt})",
                            error.code
                        );
                    }
                    _ => {}
                }
            }
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    outcome.elapsed = started.elapsed();

    let _ = writeln!(out, "· the seller claims the proceeds");
    let seller = &mut players[0];
    seller.session.claim_proceeds().map_err(|e| e.to_string())?;
    let ok = pump_until(&mut players[..1], Duration::from_secs(20), |ps| {
        ps[0].is_settled()
            && ps[0]
                .events
                .iter()
                .any(|e| matches!(e, SessionEvent::ProceedsClaimed { .. }))
    });
    if !ok {
        return Err("the seller could not claim".into());
    }
    outcome.credits_after = players
        .iter()
        .map(|p| p.store.state().total_credits())
        .sum();
    // Items in inventories and escrow, plus those in active listings (none
    // now: the listing was sold).
    outcome.items_after = players
        .iter()
        .map(|p| p.store.state().item_count(ITEM) + p.store.state().escrowed_items(ITEM))
        .sum::<i64>();
    for p in &mut players {
        let _ = p.store.flush(Duration::from_secs(5));
    }
    Ok(outcome)
}

/// One listing a trader makes: item, quantity, price.
pub type Goods = (&'static str, i64, i64);

/// The traders who stock the demo market: a name, and what each lists.
pub const TRADERS: &[(&str, &[Goods])] = &[
    (
        "Vega Salvage",
        &[("shield_cell", 2, 85), ("warp_coil", 1, 340)],
    ),
    (
        "Orion Freight",
        &[("nav_chip", 1, 60), ("scrap_metal", 10, 25)],
    ),
    ("Kestrel", &[("plasma_cutter", 1, 135), ("fuel_rod", 3, 45)]),
];

/// Stocks the market with the traders' listings, once per data directory
/// (a trader whose save file exists has listed already). Returns how many
/// listings were made.
pub fn stock(url: &str, dir: &Path, out: &mut dyn Write) -> Result<usize, String> {
    let config = sim_client_config(url);
    let mut traders = Vec::new();
    for (name, goods) in TRADERS {
        let slug = name.to_lowercase().replace(' ', "-");
        let path = dir.join(format!("trader-{slug}.json"));
        if path.exists() {
            continue;
        }
        let mut trader = SimPlayer::open(name, &path, config.clone())?;
        trader
            .store
            .set_identity(&format!("demo-trader-{slug}"), name)
            .map_err(|e| e.to_string())?;
        for (item, quantity, _) in goods.iter() {
            trader
                .store
                .add_item(item, *quantity)
                .map_err(|e| e.to_string())?;
        }
        trader.login().map_err(|e| e.to_string())?;
        traders.push((trader, *goods));
    }
    if traders.is_empty() {
        return Ok(0);
    }
    let mut players: Vec<SimPlayer> = Vec::new();
    let mut wanted = 0;
    for (mut trader, goods) in traders {
        let _ = writeln!(
            out,
            "· {} lists {} kinds of goods",
            trader.label,
            goods.len()
        );
        for (item, quantity, price) in goods {
            trader
                .session
                .create_listing(&mut trader.store, item, *quantity, *price)
                .map_err(|e| e.to_string())?;
            wanted += 1;
        }
        players.push(trader);
    }
    let listed = |ps: &[SimPlayer]| {
        ps.iter()
            .map(|p| {
                p.events
                    .iter()
                    .filter(|e| matches!(e, SessionEvent::ListingCreated { .. }))
                    .count()
            })
            .sum::<usize>()
    };
    pump_until(&mut players, Duration::from_secs(20), |ps| {
        listed(ps) == wanted
    });
    let made = listed(&players);
    if made != wanted {
        return Err(format!("only {made} of {wanted} demo listings were made"));
    }
    for p in &mut players {
        p.store
            .flush(Duration::from_secs(5))
            .map_err(|e| e.to_string())?;
    }
    Ok(made)
}
