//! The player's save document and the hold ledger that lives in it.
//!
//! Everything a crash must not lose is in [`PlayerState`]: credits,
//! inventory, holds, and the journal of marketplace operations sent but not
//! yet settled. Every method either applies a whole change or refuses it and
//! changes nothing, so the document is always consistent ([`PlayerState::validate`]).
//!
//! # Holds
//! Buying reserves credits ([`HoldKind::Credits`]); selling escrows items
//! ([`HoldKind::Items`]). A hold is either committed (the credits are spent,
//! the items are gone to the market) or released (they come back). Nothing
//! else touches held amounts, so for every player
//! `credits + held credits` and `inventory + escrowed items` only change by
//! deliberate credit/debit — the client's half of invariant I2.

use std::collections::BTreeMap;

use marketplace_protocol::MarketChange;
use serde::{Deserialize, Serialize};

/// Version of the save document this build writes. A file with a higher
/// version is refused, never overwritten.
pub const SCHEMA_VERSION: u32 = 1;

pub type HoldId = u64;
pub type OpId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HoldKind {
    /// Credits reserved for a purchase (or any game use of `reserve_credits`).
    Credits { amount: i64 },
    /// Items taken out of the inventory while a listing is being created.
    Items { item_id: String, quantity: i64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hold {
    #[serde(flatten)]
    pub kind: HoldKind,
}

/// A marketplace operation whose answer has not been applied yet. Its
/// idempotency key is fixed when it is created; every send, including the
/// ones after a restart, uses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingOp {
    pub key: String,
    pub op: MarketChange,
    /// The hold this operation settles, if any.
    pub hold: Option<HoldId>,
}

/// Why a change was refused. The document is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("not enough credits: {available} available, {requested} needed")]
    InsufficientCredits { available: i64, requested: i64 },
    #[error("not enough {item_id}: {owned} owned, {requested} needed")]
    InsufficientItems {
        item_id: String,
        owned: i64,
        requested: i64,
    },
    #[error("amount must be at least 1 (got {0})")]
    InvalidAmount(i64),
    /// An item id, device id or name that is not acceptable; the message says why.
    #[error("{0}")]
    InvalidItemId(String),
    #[error("the amount would overflow")]
    Overflow,
    #[error("no hold {0}")]
    UnknownHold(HoldId),
    #[error("hold {0} belongs to a pending marketplace operation")]
    HoldInUse(HoldId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerState {
    pub version: u32,
    /// Identifies this installation to the server (`POST /v1/sessions`).
    pub device_id: String,
    pub player_id: Option<i64>,
    pub player_name: String,
    /// Available credits (held credits are in `holds`).
    pub credits: i64,
    /// Item id → count; counts are always ≥ 1 (an item at 0 is removed).
    pub inventory: BTreeMap<String, i64>,
    pub holds: BTreeMap<HoldId, Hold>,
    pub next_hold_id: HoldId,
    pub journal: BTreeMap<OpId, PendingOp>,
    pub next_op_id: OpId,
}

impl PlayerState {
    pub fn new(device_id: impl Into<String>, player_name: impl Into<String>) -> PlayerState {
        PlayerState {
            version: SCHEMA_VERSION,
            device_id: device_id.into(),
            player_id: None,
            player_name: player_name.into(),
            credits: 0,
            inventory: BTreeMap::new(),
            holds: BTreeMap::new(),
            next_hold_id: 1,
            journal: BTreeMap::new(),
            next_op_id: 1,
        }
    }

    pub fn item_count(&self, item_id: &str) -> i64 {
        self.inventory.get(item_id).copied().unwrap_or(0)
    }

    /// Credits reserved by holds.
    pub fn held_credits(&self) -> i64 {
        self.holds
            .values()
            .map(|h| match h.kind {
                HoldKind::Credits { amount } => amount,
                HoldKind::Items { .. } => 0,
            })
            .fold(0i64, i64::saturating_add)
    }

    /// Items of one kind in escrow.
    pub fn escrowed_items(&self, item_id: &str) -> i64 {
        self.holds
            .values()
            .map(|h| match &h.kind {
                HoldKind::Items {
                    item_id: i,
                    quantity,
                } if i == item_id => *quantity,
                _ => 0,
            })
            .fold(0i64, i64::saturating_add)
    }

    /// Available plus held credits: what a purchase cannot create or destroy
    /// until its hold is settled.
    pub fn total_credits(&self) -> i64 {
        self.credits.saturating_add(self.held_credits())
    }

    /// Changes available credits by `delta` (may be negative); refuses to go
    /// below zero or to overflow.
    pub fn add_credits(&mut self, delta: i64) -> Result<i64, StateError> {
        let next = self
            .credits
            .checked_add(delta)
            .ok_or(StateError::Overflow)?;
        if next < 0 {
            return Err(StateError::InsufficientCredits {
                available: self.credits,
                requested: delta.saturating_neg(),
            });
        }
        // Held credits count too: the total must stay representable.
        next.checked_add(self.held_credits())
            .ok_or(StateError::Overflow)?;
        self.credits = next;
        Ok(next)
    }

    pub fn add_item(&mut self, item_id: &str, quantity: i64) -> Result<i64, StateError> {
        check_item(item_id)?;
        check_amount(quantity)?;
        let next = self
            .item_count(item_id)
            .checked_add(quantity)
            .ok_or(StateError::Overflow)?;
        next.checked_add(self.escrowed_items(item_id))
            .ok_or(StateError::Overflow)?;
        self.inventory.insert(item_id.to_string(), next);
        Ok(next)
    }

    pub fn remove_item(&mut self, item_id: &str, quantity: i64) -> Result<i64, StateError> {
        check_amount(quantity)?;
        let owned = self.item_count(item_id);
        if owned < quantity {
            return Err(StateError::InsufficientItems {
                item_id: item_id.to_string(),
                owned,
                requested: quantity,
            });
        }
        let next = owned - quantity;
        if next == 0 {
            self.inventory.remove(item_id);
        } else {
            self.inventory.insert(item_id.to_string(), next);
        }
        Ok(next)
    }

    fn new_hold(&mut self, kind: HoldKind) -> HoldId {
        let id = self.next_hold_id;
        self.next_hold_id += 1;
        self.holds.insert(id, Hold { kind });
        id
    }

    /// Moves `amount` available credits into a new hold. Two holds can never
    /// spend the same credits: the amount leaves `credits` at once.
    pub fn reserve_credits(&mut self, amount: i64) -> Result<HoldId, StateError> {
        check_amount(amount)?;
        if self.credits < amount {
            return Err(StateError::InsufficientCredits {
                available: self.credits,
                requested: amount,
            });
        }
        self.credits -= amount;
        Ok(self.new_hold(HoldKind::Credits { amount }))
    }

    /// Moves `quantity` items out of the inventory into a new hold.
    pub fn escrow_items(&mut self, item_id: &str, quantity: i64) -> Result<HoldId, StateError> {
        check_item(item_id)?;
        self.remove_item(item_id, quantity)?;
        Ok(self.new_hold(HoldKind::Items {
            item_id: item_id.to_string(),
            quantity,
        }))
    }

    /// Gives a hold's credits or items back. Refused for a hold that a pending
    /// marketplace operation owns (only its definitive answer may release it).
    pub fn release_hold(&mut self, hold: HoldId) -> Result<HoldKind, StateError> {
        self.check_free(hold)?;
        self.release_hold_unchecked(hold)
    }

    /// Spends a hold: its credits or items are gone for good.
    pub fn commit_hold(&mut self, hold: HoldId) -> Result<HoldKind, StateError> {
        self.check_free(hold)?;
        self.commit_hold_unchecked(hold)
    }

    fn check_free(&self, hold: HoldId) -> Result<(), StateError> {
        if !self.holds.contains_key(&hold) {
            return Err(StateError::UnknownHold(hold));
        }
        if self.journal.values().any(|op| op.hold == Some(hold)) {
            return Err(StateError::HoldInUse(hold));
        }
        Ok(())
    }

    pub(crate) fn release_hold_unchecked(&mut self, hold: HoldId) -> Result<HoldKind, StateError> {
        let Some(h) = self.holds.get(&hold) else {
            return Err(StateError::UnknownHold(hold));
        };
        // Check before changing anything, so a refusal leaves no trace.
        match &h.kind {
            HoldKind::Credits { amount } => {
                self.credits
                    .checked_add(*amount)
                    .ok_or(StateError::Overflow)?;
            }
            HoldKind::Items { item_id, quantity } => {
                self.item_count(item_id)
                    .checked_add(*quantity)
                    .ok_or(StateError::Overflow)?;
            }
        }
        let Some(h) = self.holds.remove(&hold) else {
            return Err(StateError::UnknownHold(hold));
        };
        match &h.kind {
            HoldKind::Credits { amount } => self.credits += amount,
            HoldKind::Items { item_id, quantity } => {
                *self.inventory.entry(item_id.clone()).or_insert(0) += quantity;
            }
        }
        Ok(h.kind)
    }

    pub(crate) fn commit_hold_unchecked(&mut self, hold: HoldId) -> Result<HoldKind, StateError> {
        self.holds
            .remove(&hold)
            .map(|h| h.kind)
            .ok_or(StateError::UnknownHold(hold))
    }

    /// Records a pending marketplace operation; returns its id.
    pub fn journal_op(&mut self, key: String, op: MarketChange, hold: Option<HoldId>) -> OpId {
        let id = self.next_op_id;
        self.next_op_id += 1;
        self.journal.insert(id, PendingOp { key, op, hold });
        id
    }

    /// Checks the document's internal consistency (the "inventory integrity
    /// check"): returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        if self.version != SCHEMA_VERSION {
            problems.push(format!(
                "schema version {} is not {SCHEMA_VERSION}",
                self.version
            ));
        }
        if self.credits < 0 {
            problems.push(format!("available credits are negative ({})", self.credits));
        }
        for (item, count) in &self.inventory {
            if *count < 1 {
                problems.push(format!("item {item:?} has count {count}"));
            }
            if check_item(item).is_err() {
                problems.push(format!("item id {item:?} is not valid"));
            }
        }
        let mut total = self.credits as i128;
        for (id, hold) in &self.holds {
            if *id >= self.next_hold_id {
                problems.push(format!(
                    "hold {id} is not below next_hold_id {}",
                    self.next_hold_id
                ));
            }
            match &hold.kind {
                HoldKind::Credits { amount } => {
                    if *amount < 1 {
                        problems.push(format!("hold {id} reserves {amount} credits"));
                    }
                    total += *amount as i128;
                }
                HoldKind::Items { item_id, quantity } => {
                    if *quantity < 1 {
                        problems.push(format!("hold {id} escrows {quantity} of {item_id:?}"));
                    }
                }
            }
        }
        if total > i64::MAX as i128 {
            problems.push("total credits overflow".into());
        }
        let mut hold_owners = BTreeMap::new();
        let mut keys = std::collections::BTreeSet::new();
        for (id, op) in &self.journal {
            if *id >= self.next_op_id {
                problems.push(format!(
                    "operation {id} is not below next_op_id {}",
                    self.next_op_id
                ));
            }
            if !keys.insert(op.key.as_str()) {
                problems.push(format!("idempotency key {:?} is used twice", op.key));
            }
            if let Some(hold) = op.hold {
                if !self.holds.contains_key(&hold) {
                    problems.push(format!("operation {id} refers to missing hold {hold}"));
                }
                if let Some(other) = hold_owners.insert(hold, *id) {
                    problems.push(format!(
                        "hold {hold} is owned by operations {other} and {id}"
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn check_amount(n: i64) -> Result<(), StateError> {
    if n < 1 {
        return Err(StateError::InvalidAmount(n));
    }
    Ok(())
}

fn check_item(item_id: &str) -> Result<(), StateError> {
    marketplace_protocol::check_id("item_id", item_id).map_err(StateError::InvalidItemId)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rich() -> PlayerState {
        let mut s = PlayerState::new("dev", "Ann");
        s.add_credits(1_000).unwrap();
        s.add_item("ore", 5).unwrap();
        s
    }

    #[test]
    fn reserve_commit_release() {
        let mut s = rich();
        let a = s.reserve_credits(300).unwrap();
        let b = s.reserve_credits(700).unwrap();
        assert_eq!((s.credits, s.held_credits()), (0, 1_000));
        assert!(matches!(
            s.reserve_credits(1),
            Err(StateError::InsufficientCredits {
                available: 0,
                requested: 1
            })
        ));
        s.commit_hold(a).unwrap();
        s.release_hold(b).unwrap();
        assert_eq!((s.credits, s.held_credits()), (700, 0));
        assert_eq!(s.release_hold(b), Err(StateError::UnknownHold(b)));
        s.validate().unwrap();
    }

    #[test]
    fn items_cannot_go_negative_or_overflow() {
        let mut s = rich();
        assert!(s.remove_item("ore", 6).is_err());
        assert!(s.remove_item("ore", 0).is_err());
        assert!(s.remove_item("ore", -1).is_err());
        assert!(s.add_item("ore", -1).is_err());
        assert!(s.add_item("ore", i64::MAX).is_err());
        assert!(s.add_item("", 1).is_err());
        assert_eq!(s.item_count("ore"), 5);
        assert_eq!(s.remove_item("ore", 5), Ok(0));
        assert!(!s.inventory.contains_key("ore"));
        assert!(s.add_credits(i64::MAX).is_err());
        assert!(s.add_credits(-1_001).is_err());
        assert_eq!(s.credits, 1_000);
        s.validate().unwrap();
    }

    #[test]
    fn escrow_moves_items_and_back() {
        let mut s = rich();
        let h = s.escrow_items("ore", 2).unwrap();
        assert_eq!((s.item_count("ore"), s.escrowed_items("ore")), (3, 2));
        s.release_hold(h).unwrap();
        assert_eq!(s.item_count("ore"), 5);
        let h = s.escrow_items("ore", 5).unwrap();
        assert!(!s.inventory.contains_key("ore"));
        s.commit_hold(h).unwrap();
        assert_eq!(s.item_count("ore"), 0);
    }

    #[test]
    fn journaled_holds_are_settled_only_by_their_operation() {
        let mut s = rich();
        let h = s.reserve_credits(10).unwrap();
        s.journal_op(
            "k1".into(),
            MarketChange::Purchase {
                listing_id: 1,
                expected_price: 10,
            },
            Some(h),
        );
        assert_eq!(s.release_hold(h), Err(StateError::HoldInUse(h)));
        assert_eq!(s.commit_hold(h), Err(StateError::HoldInUse(h)));
        s.validate().unwrap();
    }

    #[test]
    fn validate_finds_problems() {
        let mut s = rich();
        s.inventory.insert("ghost".into(), 0);
        s.credits = -5;
        s.journal_op("k".into(), MarketChange::Claim { sale_id: 1 }, Some(99));
        let problems = s.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }
}
