//! Property tests of the hold ledger: any sequence of place / commit /
//! release / duplicate settlement keeps available credits ≥ 0, never lets two
//! holds spend the same credits, and conserves credits and items (I2).

use marketplace_client::{HoldKind, MarketChange, OpOutcome, PlayerState, PlayerStore};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Step {
    Reserve(i64),
    Escrow(i64),
    Commit(usize),
    Release(usize),
    /// A trade: hold + journal entry, settled later.
    Trade {
        amount: i64,
        buy: bool,
    },
    /// Settle the n-th pending trade (possibly again: a duplicate event).
    Settle {
        pick: usize,
        applied: bool,
    },
    AddCredits(i64),
    AddItems(i64),
    RemoveItems(i64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (-5i64..400).prop_map(Step::Reserve),
        (-2i64..6).prop_map(Step::Escrow),
        (0usize..8).prop_map(Step::Commit),
        (0usize..8).prop_map(Step::Release),
        ((1i64..300), any::<bool>()).prop_map(|(amount, buy)| Step::Trade { amount, buy }),
        ((0usize..8), any::<bool>()).prop_map(|(pick, applied)| Step::Settle { pick, applied }),
        (-200i64..200).prop_map(Step::AddCredits),
        (-3i64..5).prop_map(Step::AddItems),
        (-3i64..5).prop_map(Step::RemoveItems),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn ledger_invariants_hold(steps in prop::collection::vec(step(), 1..80)) {
        let mut state = PlayerState::new("dev", "p");
        state.credits = 1_000;
        state.inventory.insert("ore".into(), 10);
        let mut store = PlayerStore::in_memory(state);
        // What entered or left on purpose: conservation is checked against it.
        let mut credits_in: i64 = 1_000;
        let mut items_in: i64 = 10;
        let mut settled_ops = Vec::new();
        for step in steps {
            let holds: Vec<u64> = store.state().holds.keys().copied().collect();
            let ops: Vec<u64> = store.state().journal.keys().copied().chain(settled_ops.iter().copied()).collect();
            match step {
                Step::Reserve(n) => { let _ = store.reserve_credits(n); }
                Step::Escrow(n) => { let _ = store.escrow_items("ore", n); }
                Step::Commit(i) => {
                    if let Some(h) = holds.get(i) {
                        let kind = store.state().holds[h].kind.clone();
                        if store.commit_hold(*h).is_ok() {
                            match kind {
                                HoldKind::Credits { amount } => credits_in -= amount,
                                HoldKind::Items { quantity, .. } => items_in -= quantity,
                                HoldKind::MarketCredits { .. } | HoldKind::MarketItems { .. } => {}
                            }
                        }
                    }
                }
                Step::Release(i) => {
                    if let Some(h) = holds.get(i) { let _ = store.release_hold(*h, "test"); }
                }
                Step::Trade { amount, buy } => {
                    if buy {
                        if let Ok(h) = store.reserve_credits(amount) {
                            store.begin_op(format!("k{}", store.generation()), MarketChange::Purchase { listing_id: 1, expected_price: amount, quantity: None, deposit: amount }, Some(h), 0);
                        }
                    } else if let Ok(h) = store.escrow_items("ore", 1 + amount % 3) {
                        store.begin_op(format!("k{}", store.generation()), MarketChange::CreateListing { item_id: "ore".into(), quantity: 1 + amount % 3, price: amount, deposit: 0, duration_secs: None }, Some(h), 0);
                    }
                }
                Step::Settle { pick, applied } => {
                    if let Some(op) = ops.get(pick) {
                        let pending = store.state().journal.get(op).cloned();
                        let outcome = if applied {
                            OpOutcome::Applied(Default::default())
                        } else {
                            OpOutcome::Rejected { reason: "already_sold".into() }
                        };
                        let before = store.state().clone();
                        store.settle_op(*op, &outcome).unwrap();
                        match pending {
                            None => prop_assert_eq!(store.state(), &before, "a duplicate settlement changed nothing"),
                            Some(p) => {
                                settled_ops.push(*op);
                                if applied {
                                    match before.holds[&p.hold.unwrap()].kind {
                                        HoldKind::Credits { amount } => credits_in -= amount,
                                        HoldKind::Items { quantity, .. } => items_in -= quantity,
                                        HoldKind::MarketCredits { .. } | HoldKind::MarketItems { .. } => {}
                                    }
                                }
                            }
                        }
                    }
                }
                Step::AddCredits(n) => { if store.add_credits(n).is_ok() { credits_in += n; } }
                Step::AddItems(n) => { if store.add_item("ore", n).is_ok() { items_in += n; } }
                Step::RemoveItems(n) => { if store.remove_item("ore", n).is_ok() { items_in -= n; } }
            }
            let s = store.state();
            prop_assert!(s.credits >= 0, "available went negative");
            prop_assert!(s.validate().is_ok(), "{:?}", s.validate());
            prop_assert_eq!(s.total_credits(), credits_in, "credits conserved");
            prop_assert_eq!(s.item_count("ore") + s.escrowed_items("ore"), items_in, "items conserved");
            // No two holds share credits: the sum of holds never exceeds what came in.
            prop_assert!(s.held_credits() <= credits_in);
        }
    }
}
