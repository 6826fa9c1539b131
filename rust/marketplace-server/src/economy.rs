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
//! quantity per listing, their price range and optionally the name players
//! see (what item search matches besides the id); other items are refused
//! with `unknown_item`.

use std::collections::HashMap;
use std::path::Path;

use marketplace_protocol::{Economy, EconomyMode};
use serde::Deserialize;

/// One tradeable item's rules.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ItemRule {
    /// The name players see ("Iron ore"); search matches it.
    #[serde(default)]
    pub name: Option<String>,
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

/// `{"items": {"ore": {"name": "Iron ore", "max_quantity": 100, "min_price": 1, "max_price": 5000}, …}}`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub items: HashMap<String, ItemRule>,
}

use marketplace_protocol::MAX_ITEM_NAME_CHARS as MAX_ITEM_NAME;

/// How well an item matches a search: lower first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    IdPrefix,
    NamePrefix,
    NameWord,
    NameInside,
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
            if let Some(name) = &rule.name {
                if name.trim().is_empty()
                    || name.chars().count() > MAX_ITEM_NAME
                    || name.chars().any(char::is_control)
                {
                    return Err(format!(
                        "catalog item {id:?}: a name is 1 to {MAX_ITEM_NAME} printable characters"
                    ));
                }
            }
        }
        Ok(catalog)
    }

    /// Items whose id starts with `text` or whose name holds it (case
    /// aside: both are compared lowercased), best matches
    /// first — id prefix, name prefix, a word of the name, anywhere in the
    /// name — then by id; at most `limit`.
    pub fn search(&self, text: &str, limit: usize) -> Vec<(&str, Option<&str>)> {
        let needle = text.trim().to_lowercase();
        let mut found: Vec<(Rank, &str, Option<&str>)> = self
            .items
            .iter()
            .filter_map(|(id, rule)| {
                let name = rule.name.as_deref();
                let rank = if id.to_lowercase().starts_with(&needle) {
                    Rank::IdPrefix
                } else {
                    let lower = name?.to_lowercase();
                    if lower.starts_with(&needle) {
                        Rank::NamePrefix
                    } else if lower
                        .split(|c: char| !c.is_alphanumeric())
                        .any(|word| word.starts_with(&needle))
                    {
                        Rank::NameWord
                    } else if lower.contains(&needle) {
                        Rank::NameInside
                    } else {
                        return None;
                    }
                };
                Some((rank, id.as_str(), name))
            })
            .collect();
        found.sort_unstable();
        found.truncate(limit);
        found.into_iter().map(|(_, id, name)| (id, name)).collect()
    }
}

/// The policy in force.
#[derive(Debug, Clone)]
pub struct Policy {
    pub mode: EconomyMode,
    pub deposit_cap_credits: i64,
    pub deposit_cap_items: i64,
    pub catalog: Option<Catalog>,
    /// Off (zero) unless configured.
    pub fees: Fees,
    pub durations: Durations,
}

/// One fee: a rate of a fill's value with a minimum and a cap, never more
/// than the value itself. Rates are in basis points (1/100 of a percent),
/// so the arithmetic is whole credits, rounded up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeeRule {
    pub rate_bp: i64,
    pub min: i64,
    /// 0: no cap.
    pub max: i64,
}

impl FeeRule {
    pub fn is_off(&self) -> bool {
        self.rate_bp == 0 && self.min == 0
    }

    /// The fee on a listing that sold `gross` credits' worth in all.
    pub fn on(&self, gross: i64) -> i64 {
        if self.is_off() || gross <= 0 {
            return 0;
        }
        let rated = (i128::from(gross) * i128::from(self.rate_bp) + 9_999) / 10_000;
        let mut fee = i64::try_from(rated).unwrap_or(i64::MAX).max(self.min);
        if self.max > 0 {
            fee = fee.min(self.max);
        }
        fee.min(gross)
    }

    /// What a fill worth `gross` adds to its listing's fee, after the
    /// listing sold `before`: the fee is the listing's, so a lot sold in
    /// parts pays exactly what it pays sold at once — the minimum once, the
    /// cap once, one rounding — whoever chooses the parts.
    pub fn on_fill(&self, before: i64, gross: i64) -> i64 {
        let total = before.saturating_add(gross);
        (self.on(total) - self.on(before.max(0))).clamp(0, gross.max(0))
    }

    pub fn validate(&self, what: &str) -> Result<(), String> {
        if !(0..=10_000).contains(&self.rate_bp) || self.min < 0 || self.max < 0 {
            return Err(format!(
                "{what}: the rate must be 0..=10000 basis points and the minimum and cap at least 0"
            ));
        }
        if self.max > 0 && self.min > self.max {
            return Err(format!("{what}: the minimum is above the cap"));
        }
        Ok(())
    }
}

/// The currency sink: charged on every fill, from the seller's proceeds,
/// in the fill's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Fees {
    /// The broker's fee for listing, charged on what sells (a listing
    /// that never sells costs nothing).
    pub listing: FeeRule,
    pub sales_tax: FeeRule,
}

impl Fees {
    /// (listing fee, sales tax) on a listing that sold `gross` in all
    /// (a quote); together never more than `gross`.
    pub fn on(&self, gross: i64) -> (i64, i64) {
        self.on_fill(0, gross)
    }

    /// (listing fee, sales tax) a fill worth `gross` adds, after its
    /// listing sold `before` (see [`FeeRule::on_fill`]); together never
    /// more than `gross`.
    pub fn on_fill(&self, before: i64, gross: i64) -> (i64, i64) {
        let listing = self.listing.on_fill(before, gross);
        let tax = self.sales_tax.on_fill(before, gross).min(gross - listing);
        (listing, tax)
    }

    pub fn is_off(&self) -> bool {
        self.listing.is_off() && self.sales_tax.is_off()
    }
}

/// How long listings and orders rest: a default and a bound, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Durations {
    pub listing_default: i64,
    pub listing_max: i64,
    pub order_default: i64,
    pub order_max: i64,
}

impl Default for Durations {
    fn default() -> Durations {
        const DAY: i64 = 24 * 3600;
        Durations {
            listing_default: 30 * DAY,
            listing_max: 90 * DAY,
            order_default: 30 * DAY,
            order_max: 90 * DAY,
        }
    }
}

impl Durations {
    /// When a listing (`order` false) or an order made at `now` for
    /// `asked` seconds expires: a request may ask for less than the bound,
    /// never more.
    pub fn expiry(&self, order: bool, now: i64, asked: Option<i64>) -> Result<i64, String> {
        let (default, max) = if order {
            (self.order_default, self.order_max)
        } else {
            (self.listing_default, self.listing_max)
        };
        let secs = asked.unwrap_or(default);
        if secs < 1 || secs > max {
            return Err(format!("duration_secs must be between 1 and {max}"));
        }
        Ok(now.saturating_add(secs))
    }
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
    fn fees_round_up_and_respect_minimum_cap_and_value() {
        let off = FeeRule::default();
        assert_eq!(off.on(1_000), 0);
        let rule = FeeRule {
            rate_bp: 250,
            min: 2,
            max: 100,
        };
        assert_eq!(rule.on(1_000), 25);
        assert_eq!(rule.on(1_001), 26, "rounded up");
        assert_eq!(rule.on(10), 2, "the minimum");
        assert_eq!(rule.on(1), 1, "never more than the value");
        assert_eq!(rule.on(1_000_000), 100, "the cap");
        let fees = Fees {
            listing: FeeRule {
                rate_bp: 10_000,
                min: 0,
                max: 0,
            },
            sales_tax: rule,
        };
        assert_eq!(fees.on(50), (50, 0), "together never more than the value");
        assert!(FeeRule {
            rate_bp: 10_001,
            min: 0,
            max: 0
        }
        .validate("x")
        .is_err());
        assert!(FeeRule {
            rate_bp: 1,
            min: 5,
            max: 4
        }
        .validate("x")
        .is_err());
    }

    #[test]
    fn durations_have_a_default_and_a_bound() {
        let d = Durations::default();
        assert_eq!(d.expiry(false, 100, None), Ok(100 + d.listing_default));
        assert_eq!(d.expiry(true, 100, Some(60)), Ok(160));
        assert!(d.expiry(true, 100, Some(d.order_max + 1)).is_err());
        assert!(d.expiry(false, 100, Some(0)).is_err());
    }

    #[test]
    fn catalog_search_ranks_id_then_name_matches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("catalog.json");
        std::fs::write(
            &path,
            r#"{"items": {
                "ore_iron": {"name": "Iron ore"},
                "ore_gold": {"name": "Gold ore"},
                "ingot_iron": {"name": "Refined iron ingot"},
                "ironwood": {},
                "hull": {"name": "Hull plating (Mk II)"},
                "gem": {}
            }}"#,
        )
        .unwrap();
        let catalog = Catalog::load(&path).unwrap();
        let ids = |text: &str| -> Vec<&str> {
            catalog
                .search(text, 10)
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(ids("iron"), ["ironwood", "ore_iron", "ingot_iron"]);
        assert_eq!(ids("ORE"), ["ore_gold", "ore_iron"]);
        assert_eq!(ids("mk"), ["hull"]);
        assert_eq!(ids("on ore"), ["ore_iron"]);
        assert!(ids("silver").is_empty());
        assert_eq!(catalog.search("o", 1).len(), 1, "limited");
        assert_eq!(catalog.search("hull", 1)[0].1, Some("Hull plating (Mk II)"));
        for bad in [r#"{"name": ""}"#, r#"{"name": "a\nb"}"#] {
            std::fs::write(&path, format!(r#"{{"items": {{"x": {bad}}}}}"#)).unwrap();
            assert!(Catalog::load(&path).is_err(), "{bad}");
        }
    }

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
            fees: Fees::default(),
            durations: Durations::default(),
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
