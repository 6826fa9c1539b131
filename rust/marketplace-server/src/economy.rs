//! How value enters and leaves the market: the economy policy and the
//! optional item catalog.
//!
//! - **Client deposits** (the default): a player's game may move credits and
//!   items from its save into the market, capped per player per rolling
//!   24 hours (credits, and per item). Trades deposit exactly what they
//!   need and deliver what comes out (bought items, proceeds, cancelled
//!   escrow) straight back to the save, so the market account stays
//!   invisible to a game that does not care. A modified client can inject
//!   at most the cap, and every deposit is in the ledger.
//! - **Server grants**: players cannot deposit (`deposits_disabled`); only
//!   the game's own backend credits accounts, through the admin API. The
//!   market account is the player's trading wallet; withdrawals move value
//!   out to the save.
//!
//! A catalog (`--catalog FILE`) lists the tradeable items with their largest
//! quantity per listing and their price range; other items are refused with
//! `unknown_item`.

use std::collections::HashMap;
use std::path::Path;

use marketplace_protocol::{Economy, EconomyMode};
use serde::Deserialize;

/// One tradeable item's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRule {
    #[serde(default = "default_max_quantity")]
    pub max_quantity: i64,
    #[serde(default = "default_min_price")]
    pub min_price: i64,
    #[serde(default = "default_max_price")]
    pub max_price: i64,
}

fn default_max_quantity() -> i64 {
    marketplace_protocol::MAX_QUANTITY
}
fn default_min_price() -> i64 {
    1
}
fn default_max_price() -> i64 {
    marketplace_protocol::MAX_PRICE
}

/// `{"items": {"ore": {"max_quantity": 100, "min_price": 1, "max_price": 5000}, …}}`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub items: HashMap<String, ItemRule>,
}

impl Catalog {
    pub fn load(path: &Path) -> Result<Catalog, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the catalog {}: {e}", path.display()))?;
        let catalog: Catalog = serde_json::from_str(&text)
            .map_err(|e| format!("the catalog {} is not valid: {e}", path.display()))?;
        for (id, rule) in &catalog.items {
            marketplace_protocol::check_id("catalog item id", id)?;
            if rule.max_quantity < 1
                || rule.min_price < 1
                || rule.min_price > rule.max_price
                || rule.max_quantity > marketplace_protocol::MAX_QUANTITY
                || rule.max_price > marketplace_protocol::MAX_PRICE
            {
                return Err(format!("catalog item {id:?}: limits out of range"));
            }
        }
        Ok(catalog)
    }
}

/// The policy in force.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: EconomyMode,
    pub deposit_cap_credits: i64,
    pub deposit_cap_items: i64,
    pub catalog: Option<Catalog>,
}

/// Why the policy refuses an item, quantity or price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownItem,
    OutOfRange(String),
}

impl Policy {
    pub fn economy(&self) -> Economy {
        Economy {
            mode: self.mode,
            deposit_cap_credits: self.deposit_cap_credits,
            deposit_cap_items: self.deposit_cap_items,
        }
    }

    pub fn deposits_allowed(&self) -> bool {
        self.mode == EconomyMode::ClientDeposits
    }

    /// Trades deliver what comes out of the market straight to the save.
    pub fn delivers(&self) -> bool {
        self.mode == EconomyMode::ClientDeposits
    }

    /// Is this item tradeable at all?
    pub fn check_item(&self, item_id: &str) -> Result<(), Refusal> {
        match &self.catalog {
            Some(c) if !c.items.contains_key(item_id) => Err(Refusal::UnknownItem),
            _ => Ok(()),
        }
    }

    /// May this item be listed in this quantity at this price?
    pub fn check_listing(&self, item_id: &str, quantity: i64, price: i64) -> Result<(), Refusal> {
        let Some(catalog) = &self.catalog else {
            return Ok(());
        };
        let rule = catalog.items.get(item_id).ok_or(Refusal::UnknownItem)?;
        if quantity > rule.max_quantity {
            return Err(Refusal::OutOfRange(format!(
                "at most {} {item_id} per listing",
                rule.max_quantity
            )));
        }
        if price < rule.min_price || price > rule.max_price {
            return Err(Refusal::OutOfRange(format!(
                "{item_id} sells for {} to {} credits",
                rule.min_price, rule.max_price
            )));
        }
        Ok(())
    }

    /// The cap on deposits of `item_id` (`None`: credits) per rolling 24 h.
    pub fn cap(&self, item_id: Option<&str>) -> i64 {
        match item_id {
            None => self.deposit_cap_credits,
            Some(_) => self.deposit_cap_items,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_rules_apply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        std::fs::write(
            &path,
            r#"{"items": {"ore": {"max_quantity": 10, "min_price": 5, "max_price": 50}, "gem": {}}}"#,
        )
        .unwrap();
        let policy = Policy {
            mode: EconomyMode::ClientDeposits,
            deposit_cap_credits: 1,
            deposit_cap_items: 1,
            catalog: Some(Catalog::load(&path).unwrap()),
        };
        assert_eq!(policy.check_listing("ore", 10, 5), Ok(()));
        assert!(matches!(
            policy.check_listing("ore", 11, 5),
            Err(Refusal::OutOfRange(_))
        ));
        assert!(matches!(
            policy.check_listing("ore", 1, 51),
            Err(Refusal::OutOfRange(_))
        ));
        assert_eq!(
            policy.check_listing("gold", 1, 5),
            Err(Refusal::UnknownItem)
        );
        assert_eq!(policy.check_listing("gem", 1_000, 1), Ok(()));
        assert_eq!(policy.check_item("gold"), Err(Refusal::UnknownItem));
        std::fs::write(
            &path,
            r#"{"items": {"ore": {"min_price": 9, "max_price": 1}}}"#,
        )
        .unwrap();
        assert!(Catalog::load(&path).is_err());
        std::fs::write(&path, r#"{"things": {}}"#).unwrap();
        assert!(Catalog::load(&path).is_err());
    }
}
