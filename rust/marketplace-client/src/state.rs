//! The player's save document and the hold ledger that lives in it.
//!
//! Everything a crash must not lose is in [`PlayerState`]: credits,
//! inventory, holds, and the journal of marketplace operations sent but not
//! yet settled. Every method either applies a whole change or refuses it and
//! changes nothing, so the document is always consistent ([`PlayerState::validate`]).
//! Methods check everything first and only then change anything: no method
//! copies the document to be able to undo (a settlement costs the same with
//! ten or ten thousand trades pending).
//!
//! # Holds
//! Buying reserves credits ([`HoldKind::Credits`]); selling escrows items
//! ([`HoldKind::Items`]). A hold is either committed (the credits are spent,
//! the items are gone to the market) or released (they come back). Nothing
//! else touches held amounts, so for every player
//! `credits + held credits` and `inventory + escrowed items` only change by
//! deliberate credit/debit — the client's half of invariant I2.
//!
//! # Limits
//! The game's own changes may bring a count or a balance up to
//! [`MAX_HOLDING`]; settlements of trades may go beyond it, and `i64` leaves
//! room for millions of them (see the protocol crate), so a trade the server
//! made is never stuck on arithmetic.

use std::collections::{BTreeMap, HashMap};

use marketplace_protocol::{Account, EconomyMode, MarketChange, MAX_HOLDING};
use serde::{Deserialize, Serialize};

/// Version of the save document this build writes. A file with a higher
/// version is refused, never overwritten. Version 2 added `created_at` to
/// journal entries (version 1 files are read; their entries count as new);
/// version 3 the market account mirror and its holds; version 4 binds each
/// journal entry to the market and player that accepted it (`owner`; entries
/// of older files are bound at their first send after the upgrade).
/// Version 5 keeps an append-only log of changes beside the document
/// (`log_epoch` names the log that continues it; see [`crate::persist`]).
pub const SCHEMA_VERSION: u32 = 5;

pub type HoldId = u64;
pub type OpId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HoldKind {
    /// Credits reserved for a purchase (or any game use of `reserve_credits`).
    Credits { amount: i64 },
    /// Items taken out of the inventory while a listing is being created.
    Items { item_id: String, quantity: i64 },
    /// Credits of the market account reserved for a purchase or a
    /// withdrawal (server grants): the save is not touched.
    MarketCredits { amount: i64 },
    /// Items of the market account reserved for a listing or a withdrawal.
    MarketItems { item_id: String, quantity: i64 },
}

impl HoldKind {
    /// The amount held (credits or items).
    pub fn amount(&self) -> i64 {
        match self {
            HoldKind::Credits { amount } | HoldKind::MarketCredits { amount } => *amount,
            HoldKind::Items { quantity, .. } | HoldKind::MarketItems { quantity, .. } => *quantity,
        }
    }

    /// True for holds on the market account rather than the save.
    pub fn is_market(&self) -> bool {
        matches!(
            self,
            HoldKind::MarketCredits { .. } | HoldKind::MarketItems { .. }
        )
    }
}

/// The player's market account as last seen: a mirror for showing and for
/// placing holds (server grants). The server's account is the truth; every
/// view it sends replaces this one when it is newer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct MarketMirror {
    /// The server's economy policy, from the last login.
    #[serde(default)]
    pub mode: EconomyMode,
    #[serde(default)]
    pub credits: i64,
    #[serde(default)]
    pub stash: BTreeMap<String, i64>,
    /// The server's version of the account this mirror shows.
    #[serde(default)]
    pub version: i64,
    /// The mirror was changed locally after the view of `version` (only
    /// with a server that sends no account with its answers): a view of
    /// the same version is older than it, only a newer one replaces it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
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
    /// Unix seconds when the player made the trade (0 in files written
    /// before schema version 2). Only for showing how long it has waited: the
    /// server recognises the key however old it is.
    #[serde(default)]
    pub created_at: i64,
    /// The market and player this operation belongs to (schema 4). Set
    /// before its first send — on disk before anything leaves — and never
    /// changed: the operation is only ever sent there, as that player.
    /// `None`: never sent yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<Owner>,
}

/// Who a journaled operation belongs to: a market (its
/// [`marketplace_protocol::Session::server_id`], the same behind every
/// address and replica) and a player in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Owner {
    pub server_id: String,
    pub player_id: i64,
}

impl Owner {
    /// The owner a server too old to announce an id gets: its address.
    pub fn by_address(server_url: &str, player_id: i64) -> Owner {
        Owner {
            server_id: format!("{BY_ADDRESS}{}", server_url.trim_end_matches('/')),
            player_id,
        }
    }

    /// Bound by address (see [`Owner::by_address`]), not by a market's id.
    pub fn is_by_address(&self) -> bool {
        self.server_id.starts_with(BY_ADDRESS)
    }
}

/// The prefix of an [`Owner::by_address`] server id.
const BY_ADDRESS: &str = "url:";

/// Unix seconds now.
pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// `key` was made by the save whose id is `save_id` (see
/// [`PlayerState::new_key`]).
fn key_of_save(save_id: &str, key: &str) -> bool {
    !save_id.is_empty()
        && key
            .strip_prefix(save_id)
            .is_some_and(|rest| rest.starts_with('.'))
}

impl std::fmt::Display for Owner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "player {} of market {}", self.player_id, self.server_id)
    }
}

/// How far this save is known to contain one market's record of the
/// player's operations (`GET /v1/me/operations`): every operation with
/// `seq <= seq` is in the save, and so are those in `applied` (keys of
/// operations settled here whose `seq` is not confirmed yet, with the Unix
/// time they were noted). After a save is restored from an older backup,
/// the operations after `seq` that are neither journaled nor in `applied`
/// are the ones the save lost: they are applied again (see
/// [`PlayerState::reconcile`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SyncMark {
    pub player_id: i64,
    pub seq: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub applied: BTreeMap<String, i64>,
    /// Notifications of this market already shown, by id, with the number
    /// of fills they summed then: one comes back to the game only when it
    /// is new or has grown (at most [`MAX_NOTICES`], the newest).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notices: BTreeMap<i64, i64>,
}

/// At most this many shown notifications are remembered per market.
pub const MAX_NOTICES: usize = 256;

impl PlayerState {
    /// Notes notifications of `owner`'s market as shown; returns those that
    /// are new or have grown since last shown (the rest were shown before).
    pub fn note_notices<'a>(
        &mut self,
        owner: &Owner,
        notices: &'a [marketplace_protocol::Notification],
    ) -> Vec<&'a marketplace_protocol::Notification> {
        let mark = self
            .sync
            .entry(owner.server_id.clone())
            .or_insert_with(|| SyncMark {
                player_id: owner.player_id,
                seq: UNSET,
                ..SyncMark::default()
            });
        if mark.player_id != owner.player_id {
            // Another player of this market: that player's mark goes, as
            // when a settlement is noted (a reconciliation starts afresh).
            *mark = SyncMark {
                player_id: owner.player_id,
                seq: UNSET,
                ..SyncMark::default()
            };
        }
        let mut fresh = Vec::new();
        for n in notices {
            if mark
                .notices
                .get(&n.id)
                .is_some_and(|fills| *fills >= n.fills)
            {
                continue;
            }
            mark.notices.insert(n.id, n.fills);
            fresh.push(n);
        }
        while mark.notices.len() > MAX_NOTICES {
            mark.notices.pop_first();
        }
        fresh
    }
}

/// [`SyncMark::seq`] before the first reconciliation with that market.
pub const UNSET: i64 = -1;

/// At most this many keys wait in [`SyncMark::applied`].
pub const MAX_APPLIED_KEYS: usize = 4096;

/// A new random save id: 16 hex digits.
pub fn new_save_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The save id of a file from before save ids: derived from its device id
/// (FNV-1a), the same for the file and its backup.
pub fn save_id_of_device(device_id: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in device_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A key noted in [`SyncMark::applied`] is forgotten after this long even if
/// no listing ever confirms it (an operation settled while the mark was
/// being set up): the list stays small.
pub const APPLIED_KEY_TTL_SECS: i64 = 30 * 24 * 3600;

/// What [`PlayerState::note_applied`] changed in a mark: exactly, so the
/// save writer's copy follows without copying the mark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Noted {
    pub server_id: String,
    pub player_id: i64,
    /// The mark's position after the change.
    pub seq: i64,
    /// The mark was another player's and started afresh.
    pub reset: bool,
    /// A key dropped to keep the list bounded.
    pub evicted: Option<String>,
    pub key: String,
    pub at: i64,
}

/// An operation the server made that this save did not contain (it was
/// restored from an older backup), applied again by [`PlayerState::reconcile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovered {
    pub key: String,
    pub kind: String,
    /// Credits that came into the save (negative: went out).
    pub credits: i64,
    /// Items that came in, per item (negative: went out).
    pub items: Vec<(String, i64)>,
    /// What the save no longer had of what went out (the game spent it
    /// since): credits, then items — 0 when everything was there.
    pub shortfall: i64,
}

/// How a journaled operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpOutcome {
    /// The server applied it: commit the hold (or the part of it the server
    /// took), then credit what came in.
    Applied(Applied),
    /// The server refused it definitively: release the hold.
    Rejected { reason: String },
}

/// What an applied operation did to this player.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Applied {
    /// How much of the hold the server took; the rest is given back.
    /// `None`: all of it.
    pub hold_spent: Option<i64>,
    /// Items into the save.
    pub items_in: Option<(String, i64)>,
    /// Credits into the save.
    pub credits_in: i64,
    /// Items into the market account mirror.
    pub market_items_in: Option<(String, i64)>,
    /// Credits into the market account mirror.
    pub market_credits_in: i64,
    /// The market account right after the operation, as the server sent it
    /// (server grants). With it the mirror takes the view (if newer) instead
    /// of doing arithmetic; `market_*_in` and the hold's effect on the
    /// mirror are then already in it.
    pub market_view: Option<Account>,
}

impl Applied {
    /// Applied, with these items coming into the save.
    pub fn items(item_id: &str, quantity: i64) -> Applied {
        Applied {
            items_in: Some((item_id.to_string(), quantity)),
            ..Applied::default()
        }
    }

    /// Applied, with these credits coming into the save.
    pub fn credits(amount: i64) -> Applied {
        Applied {
            credits_in: amount,
            ..Applied::default()
        }
    }
}

/// What a settlement changed, for events and the writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    pub op: PendingOp,
    /// The hold and whether it was committed (`true`) or released.
    pub hold: Option<(HoldId, HoldKind, bool)>,
    pub items_in: Option<(String, i64)>,
    pub credits_in: i64,
    /// The market mirror changed.
    pub market_changed: bool,
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
    #[error("the amount would go beyond the limit of {MAX_HOLDING}")]
    Overflow,
    #[error("no hold {0}")]
    UnknownHold(HoldId),
    #[error("hold {0} belongs to a pending marketplace operation")]
    HoldInUse(HoldId),
    #[error("not enough credits in the market account: {available} available, {requested} needed")]
    InsufficientMarketCredits { available: i64, requested: i64 },
    #[error("not enough {item_id} in the market account: {owned} available, {requested} needed")]
    InsufficientMarketItems {
        item_id: String,
        owned: i64,
        requested: i64,
    },
}

/// Figures derived from the document, kept up to date by every method so
/// that no question costs a walk over every hold or trade. Not saved; built
/// by [`PlayerState::reindex`] after loading.
#[derive(Debug, Clone, Default)]
struct Index {
    held_credits: i64,
    escrow: HashMap<String, i64>,
    market_held_credits: i64,
    market_escrow: HashMap<String, i64>,
    /// Hold → the journaled operation that owns it.
    /// Ids this save numbers itself: a fast unkeyed hasher is safe.
    hold_owner: rustc_hash::FxHashMap<HoldId, OpId>,
    /// Listing → journaled purchases of it.
    /// Keyed by the server's listing ids: a keyed hasher.
    purchases: crate::ids::IdMap<i64, u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlayerState {
    pub version: u32,
    /// Identifies this installation to the server (`POST /v1/sessions`).
    pub device_id: String,
    /// This save file's own id (schema 4), the prefix of every idempotency
    /// key it makes: the operations a reconciliation may apply to this save
    /// are the ones it made, never another save's of the same player.
    /// Empty in older files until their first save (then made).
    #[serde(default)]
    pub save_id: String,
    pub player_id: Option<i64>,
    pub player_name: String,
    /// The last login was by identity token (never the token itself): after
    /// a restart the client does not log in by itself — the device is not
    /// this player — and waits for the game's `login_with_token`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity_login: bool,
    /// Available credits (held credits are in `holds`).
    pub credits: i64,
    /// Item id → count; counts are always ≥ 1 (an item at 0 is removed).
    pub inventory: BTreeMap<String, i64>,
    /// Read freely; change only through the methods (they keep the index).
    pub holds: BTreeMap<HoldId, Hold>,
    pub next_hold_id: HoldId,
    /// Read freely; change only through the methods (they keep the index).
    pub journal: BTreeMap<OpId, PendingOp>,
    pub next_op_id: OpId,
    /// The market account as last seen (schema 3).
    #[serde(default)]
    pub market: MarketMirror,
    /// Per market (its server id): how far this save is known to contain
    /// the player's operations there (schema 4).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sync: BTreeMap<String, SyncMark>,
    /// Which append-only log continues this document (schema 5): the save
    /// writer's business, set when it writes the document; not part of
    /// what two states compare.
    #[serde(default)]
    pub log_epoch: u64,
    #[serde(skip)]
    index: Index,
}

/// Two states are equal when their documents are (the index follows).
impl Index {
    fn add(&mut self, kind: &HoldKind) {
        let bump = |map: &mut HashMap<String, i64>, item: &str, n: i64| {
            let e = map.entry(item.to_string()).or_insert(0);
            *e = e.saturating_add(n);
            if *e == 0 {
                map.remove(item);
            }
        };
        match kind {
            HoldKind::Credits { amount } => {
                self.held_credits = self.held_credits.saturating_add(*amount)
            }
            HoldKind::Items { item_id, quantity } => bump(&mut self.escrow, item_id, *quantity),
            HoldKind::MarketCredits { amount } => {
                self.market_held_credits = self.market_held_credits.saturating_add(*amount)
            }
            HoldKind::MarketItems { item_id, quantity } => {
                bump(&mut self.market_escrow, item_id, *quantity)
            }
        }
    }

    fn remove(&mut self, kind: &HoldKind) {
        let negated = match kind {
            HoldKind::Credits { amount } => HoldKind::Credits { amount: -amount },
            HoldKind::Items { item_id, quantity } => HoldKind::Items {
                item_id: item_id.clone(),
                quantity: -quantity,
            },
            HoldKind::MarketCredits { amount } => HoldKind::MarketCredits { amount: -amount },
            HoldKind::MarketItems { item_id, quantity } => HoldKind::MarketItems {
                item_id: item_id.clone(),
                quantity: -quantity,
            },
        };
        self.add(&negated);
    }
}

impl PartialEq for PlayerState {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.device_id == other.device_id
            && self.save_id == other.save_id
            && self.player_id == other.player_id
            && self.player_name == other.player_name
            && self.identity_login == other.identity_login
            && self.credits == other.credits
            && self.inventory == other.inventory
            && self.holds == other.holds
            && self.next_hold_id == other.next_hold_id
            && self.journal == other.journal
            && self.next_op_id == other.next_op_id
            && self.market == other.market
            && self.sync == other.sync
    }
}

impl Eq for PlayerState {}

impl PlayerState {
    pub fn new(device_id: impl Into<String>, player_name: impl Into<String>) -> PlayerState {
        PlayerState {
            version: SCHEMA_VERSION,
            device_id: device_id.into(),
            save_id: new_save_id(),
            player_id: None,
            player_name: player_name.into(),
            identity_login: false,
            credits: 0,
            inventory: BTreeMap::new(),
            holds: BTreeMap::new(),
            next_hold_id: 1,
            journal: BTreeMap::new(),
            next_op_id: 1,
            market: MarketMirror::default(),
            sync: BTreeMap::new(),
            log_epoch: 0,
            index: Index::default(),
        }
    }

    /// Rebuilds the derived figures from the document (after loading, or
    /// after a test edited the public fields directly).
    pub fn reindex(&mut self) {
        let mut index = Index::default();
        for hold in self.holds.values() {
            index.add(&hold.kind);
        }
        for (op_id, op) in &self.journal {
            if let Some(h) = op.hold {
                index.hold_owner.insert(h, *op_id);
            }
            if let MarketChange::Purchase { listing_id, .. } = op.op {
                *index.purchases.entry(listing_id).or_insert(0) += 1;
            }
        }
        self.index = index;
    }

    pub fn item_count(&self, item_id: &str) -> i64 {
        self.inventory.get(item_id).copied().unwrap_or(0)
    }

    /// Credits reserved by holds.
    pub fn held_credits(&self) -> i64 {
        self.index.held_credits
    }

    /// Items of one kind in escrow.
    pub fn escrowed_items(&self, item_id: &str) -> i64 {
        self.index.escrow.get(item_id).copied().unwrap_or(0)
    }

    /// Available plus held credits: what a purchase cannot create or destroy
    /// until its hold is settled.
    pub fn total_credits(&self) -> i64 {
        self.credits.saturating_add(self.held_credits())
    }

    /// True while a purchase of this listing is journaled.
    pub fn is_buying(&self, listing_id: i64) -> bool {
        self.index.purchases.contains_key(&listing_id)
    }

    /// Changes available credits by `delta` (may be negative): the game's own
    /// change. Refuses to go below zero or to bring the total beyond
    /// [`MAX_HOLDING`].
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
        if delta > 0 && next.saturating_add(self.held_credits()) > MAX_HOLDING {
            return Err(StateError::Overflow);
        }
        self.credits = next;
        Ok(next)
    }

    /// Adds items: the game's own change, up to [`MAX_HOLDING`] with escrow.
    pub fn add_item(&mut self, item_id: &str, quantity: i64) -> Result<i64, StateError> {
        check_item(item_id)?;
        check_amount(quantity)?;
        let next = self
            .item_count(item_id)
            .checked_add(quantity)
            .ok_or(StateError::Overflow)?;
        if next.saturating_add(self.escrowed_items(item_id)) > MAX_HOLDING {
            return Err(StateError::Overflow);
        }
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
        self.set_count(item_id, next);
        Ok(next)
    }

    fn set_count(&mut self, item_id: &str, count: i64) {
        if count == 0 {
            self.inventory.remove(item_id);
        } else if let Some(c) = self.inventory.get_mut(item_id) {
            *c = count;
        } else {
            self.inventory.insert(item_id.to_string(), count);
        }
    }

    fn new_hold(&mut self, kind: HoldKind) -> HoldId {
        let id = self.next_hold_id;
        self.next_hold_id += 1;
        self.index.add(&kind);
        self.holds.insert(id, Hold { kind });
        id
    }

    fn remove_hold(&mut self, hold: HoldId) -> Option<HoldKind> {
        let h = self.holds.remove(&hold)?;
        self.index.remove(&h.kind);
        Some(h.kind)
    }

    /// Market credits not held by a pending trade (as far as this mirror knows).
    pub fn market_available_credits(&self) -> i64 {
        (self.market.credits - self.index.market_held_credits).max(0)
    }

    /// Market items of one kind not held by a pending trade.
    pub fn market_available_items(&self, item_id: &str) -> i64 {
        let have = self.market.stash.get(item_id).copied().unwrap_or(0);
        (have - self.index.market_escrow.get(item_id).copied().unwrap_or(0)).max(0)
    }

    /// Market credits held by pending trades.
    pub fn market_held_credits(&self) -> i64 {
        self.index.market_held_credits
    }

    /// Reserves market credits (server grants: a purchase or a withdrawal).
    pub fn reserve_market_credits(&mut self, amount: i64) -> Result<HoldId, StateError> {
        check_amount(amount)?;
        let available = self.market_available_credits();
        if available < amount {
            return Err(StateError::InsufficientMarketCredits {
                available,
                requested: amount,
            });
        }
        Ok(self.new_hold(HoldKind::MarketCredits { amount }))
    }

    /// Reserves market items (server grants: a listing or a withdrawal).
    pub fn escrow_market_items(
        &mut self,
        item_id: &str,
        quantity: i64,
    ) -> Result<HoldId, StateError> {
        check_item(item_id)?;
        check_amount(quantity)?;
        let available = self.market_available_items(item_id);
        if available < quantity {
            return Err(StateError::InsufficientMarketItems {
                item_id: item_id.to_string(),
                owned: available,
                requested: quantity,
            });
        }
        Ok(self.new_hold(HoldKind::MarketItems {
            item_id: item_id.to_string(),
            quantity,
        }))
    }

    /// Takes the server's view of the account if it is newer than the
    /// mirror's. Returns whether the mirror changed.
    pub fn set_market(&mut self, mode: EconomyMode, account: &Account) -> bool {
        let changed = self.market.mode != mode;
        self.market.mode = mode;
        self.take_view(account) || changed
    }

    /// Takes a view of the account if it is newer than what the mirror
    /// shows: a higher version, or the same version over a mirror that no
    /// local arithmetic touched. Returns whether the mirror changed.
    fn take_view(&mut self, account: &Account) -> bool {
        let newer = account.version > self.market.version
            || (account.version == self.market.version && !self.market.local);
        if !newer {
            return false;
        }
        let stash: BTreeMap<String, i64> = account
            .stash
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let changed = account.credits.max(0) != self.market.credits
            || stash != self.market.stash
            || account.version != self.market.version
            || self.market.local;
        self.market.credits = account.credits.max(0);
        self.market.stash = stash;
        self.market.version = account.version;
        self.market.local = false;
        changed
    }

    fn market_add_items(&mut self, item_id: &str, delta: i64) {
        let n = self
            .market
            .stash
            .get(item_id)
            .copied()
            .unwrap_or(0)
            .saturating_add(delta)
            .max(0);
        if n == 0 {
            self.market.stash.remove(item_id);
        } else {
            self.market.stash.insert(item_id.to_string(), n);
        }
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
        self.check_release(hold)?;
        self.release_checked(hold)
    }

    /// Spends a hold: its credits or items are gone for good.
    pub fn commit_hold(&mut self, hold: HoldId) -> Result<HoldKind, StateError> {
        self.check_free(hold)?;
        self.remove_hold(hold).ok_or(StateError::UnknownHold(hold))
    }

    fn check_free(&self, hold: HoldId) -> Result<(), StateError> {
        if !self.holds.contains_key(&hold) {
            return Err(StateError::UnknownHold(hold));
        }
        if self.index.hold_owner.contains_key(&hold) {
            return Err(StateError::HoldInUse(hold));
        }
        Ok(())
    }

    /// Would releasing `hold` fit? (Checked before anything changes.)
    fn check_release(&self, hold: HoldId) -> Result<(), StateError> {
        let h = self.holds.get(&hold).ok_or(StateError::UnknownHold(hold))?;
        match &h.kind {
            HoldKind::Credits { amount } => self.credits.checked_add(*amount).map(drop),
            HoldKind::Items { item_id, quantity } => {
                self.item_count(item_id).checked_add(*quantity).map(drop)
            }
            // The market account was never touched by the hold.
            HoldKind::MarketCredits { .. } | HoldKind::MarketItems { .. } => Some(()),
        }
        .ok_or(StateError::Overflow)
    }

    fn release_checked(&mut self, hold: HoldId) -> Result<HoldKind, StateError> {
        let kind = self
            .remove_hold(hold)
            .ok_or(StateError::UnknownHold(hold))?;
        self.give_back(&kind, kind.amount());
        Ok(kind)
    }

    /// Gives `n` of a hold's kind back to where it came from.
    fn give_back(&mut self, kind: &HoldKind, n: i64) {
        match kind {
            HoldKind::Credits { .. } => self.credits += n,
            HoldKind::Items { item_id, .. } => {
                let next = self.item_count(item_id) + n;
                self.set_count(item_id, next);
            }
            HoldKind::MarketCredits { .. } | HoldKind::MarketItems { .. } => {}
        }
    }

    /// Records a pending marketplace operation; returns its id.
    pub fn journal_op(
        &mut self,
        key: String,
        op: MarketChange,
        hold: Option<HoldId>,
        created_at: i64,
    ) -> OpId {
        let id = self.next_op_id;
        self.next_op_id += 1;
        if let Some(h) = hold {
            self.index.hold_owner.insert(h, id);
        }
        if let MarketChange::Purchase { listing_id, .. } = op {
            *self.index.purchases.entry(listing_id).or_insert(0) += 1;
        }
        self.journal.insert(
            id,
            PendingOp {
                key,
                op,
                hold,
                created_at,
                owner: None,
            },
        );
        id
    }

    /// Binds a journaled operation to the market and player it will be sent
    /// to. An operation bound already keeps its owner (returns false).
    pub fn bind_op(&mut self, op_id: OpId, owner: &Owner) -> bool {
        match self.journal.get_mut(&op_id) {
            Some(op) if op.owner.is_none() => {
                op.owner = Some(owner.clone());
                true
            }
            _ => false,
        }
    }

    /// Notes that an operation of `owner` was applied to this save (its
    /// settlement), so that a later [`PlayerState::reconcile`] knows the save
    /// contains it. Returns the market whose mark changed.
    pub fn note_applied(&mut self, owner: &Owner, key: &str, now: i64) -> Option<Noted> {
        // Before the first reconciliation the mark is not set yet: noted
        // all the same (with no position), so that an operation settled
        // while the first page was on its way is never taken for lost.
        if !self.is_own_key(key) {
            return None; // not one reconciliation could ever apply
        }
        let mark = self
            .sync
            .entry(owner.server_id.clone())
            .or_insert_with(|| SyncMark {
                player_id: owner.player_id,
                seq: UNSET,
                applied: BTreeMap::new(),
                notices: BTreeMap::new(),
            });
        let mut noted = Noted {
            server_id: owner.server_id.clone(),
            player_id: owner.player_id,
            seq: mark.seq,
            reset: false,
            evicted: None,
            key: key.to_string(),
            at: now,
        };
        if mark.player_id != owner.player_id {
            // Another player of this market now: that player's mark is of
            // no use here any more (a reconciliation would start afresh).
            *mark = SyncMark {
                player_id: owner.player_id,
                seq: UNSET,
                applied: BTreeMap::new(),
                notices: BTreeMap::new(),
            };
            noted.reset = true;
            noted.seq = UNSET;
        }
        if mark.seq == UNSET && mark.applied.len() >= MAX_APPLIED_KEYS {
            // Bounded: a market that never reconciles (no operations
            // listing) must not grow the save forever. The oldest go —
            // only while no reconciliation has set the mark: once one has,
            // a dropped key would make its operation look lost (the
            // session reconciles again instead, see `SYNC_AGAIN_AT`).
            noted.evicted = mark
                .applied
                .iter()
                .min_by_key(|(_, t)| **t)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = &noted.evicted {
                mark.applied.remove(oldest);
            }
        }
        mark.applied.insert(key.to_string(), now);
        Some(noted)
    }

    /// An idempotency key this save made (see [`PlayerState::save_id`]).
    pub fn is_own_key(&self, key: &str) -> bool {
        key_of_save(&self.save_id, key)
    }

    /// A fresh idempotency key of this save's.
    /// `<save_id>.<32 hex digits>`: 128 random bits. Written by hand, not
    /// with `format!`: this runs in every trade call on the game's main
    /// thread, where the formatter was a third of its cost.
    pub fn new_key(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bits: u128 = rand::random();
        let mut key = String::with_capacity(self.save_id.len() + 33);
        key.push_str(&self.save_id);
        key.push('.');
        for i in 0..32 {
            key.push(char::from(HEX[(bits >> (124 - 4 * i)) as usize & 0xf]));
        }
        key
    }

    /// Compares a page of the server's record of `owner`'s operations
    /// (oldest first, `seq > mark`) with this save and applies again what
    /// the save lost: each operation neither journaled (it settles by its
    /// own answer) nor known as applied. The mark moves past every
    /// operation decided, but never past one still journaled, so nothing is
    /// skipped and nothing applied twice. The first page for a market sets
    /// the mark at `last_seq` and applies nothing: a save is taken to
    /// contain what happened before it knew the market.
    /// Returns what was applied.
    pub fn reconcile(
        &mut self,
        owner: &Owner,
        page: &marketplace_protocol::OperationsPage,
        now: i64,
    ) -> Vec<Recovered> {
        let known = self
            .sync
            .get(&owner.server_id)
            .filter(|m| m.player_id == owner.player_id);
        if known.is_none_or(|m| m.seq == UNSET) {
            // First contact: the record as it stands now. Keys noted before
            // (settled meanwhile) stay until seen or forgotten by age.
            let applied = known.map(|m| m.applied.clone()).unwrap_or_default();
            let notices = known.map(|m| m.notices.clone()).unwrap_or_default();
            self.sync.insert(
                owner.server_id.clone(),
                SyncMark {
                    player_id: owner.player_id,
                    seq: page.last_seq.max(0),
                    applied,
                    notices,
                },
            );
            return Vec::new();
        }
        let journaled: std::collections::HashSet<&str> =
            self.journal.values().map(|p| p.key.as_str()).collect();
        let save_id = self.save_id.clone();
        let mut blocked = false;
        let mut lost = Vec::new();
        let Some(mark) = self.sync.get_mut(&owner.server_id) else {
            return Vec::new();
        };
        for op in &page.operations {
            if op.seq <= mark.seq {
                continue;
            }
            if journaled.contains(op.key.as_str()) {
                // Settles by its own answer; the mark waits for it.
                blocked = true;
                continue;
            }
            if !key_of_save(&save_id, &op.key) {
                // Another save's (of the same player), the game backend's
                // grant, or a key from before save ids: never this save's
                // to apply.
                if !blocked {
                    mark.seq = op.seq;
                }
                continue;
            }
            if mark.applied.contains_key(&op.key) {
                if !blocked {
                    mark.applied.remove(&op.key);
                }
            } else {
                lost.push(op.clone());
                if blocked {
                    mark.applied.insert(op.key.clone(), now);
                }
            }
            if !blocked {
                mark.seq = op.seq;
            }
        }
        lost.into_iter()
            .filter(|op| op.credits != 0 || !op.items.is_empty())
            .map(|op| self.apply_lost(op))
            .collect()
    }

    /// After a complete reconciliation that nothing journaled held back:
    /// keys noted longer ago than [`APPLIED_KEY_TTL_SECS`] that no listing
    /// confirmed are forgotten (operations settled while the first listing
    /// was on its way, below the mark). Never mid-pass: a key still to be
    /// listed must stay known.
    pub fn forget_stale_keys(&mut self, server_id: &str, now: i64) -> bool {
        let Some(mark) = self.sync.get_mut(server_id) else {
            return false;
        };
        let before = mark.applied.len();
        mark.applied
            .retain(|_, noted| now.saturating_sub(*noted) < APPLIED_KEY_TTL_SECS);
        mark.applied.len() != before
    }

    /// Applies what a lost operation moved in or out of the save. What went
    /// out but is no longer here (spent since) is taken as far as it goes.
    fn apply_lost(&mut self, op: marketplace_protocol::OperationRecord) -> Recovered {
        let mut shortfall = 0;
        let have = self.credits;
        let credits = if op.credits < 0 {
            let take = (-op.credits).min(have);
            shortfall += -op.credits - take;
            -take
        } else {
            op.credits
        };
        self.credits = self.credits.saturating_add(credits);
        for (item, n) in &op.items {
            let owned = self.item_count(item);
            let n = if *n < 0 {
                let take = (-n).min(owned);
                shortfall += -n - take;
                -take
            } else {
                *n
            };
            self.set_count(item, owned.saturating_add(n));
        }
        Recovered {
            key: op.key,
            kind: op.kind,
            credits: op.credits,
            items: op.items.into_iter().collect(),
            shortfall,
        }
    }

    /// Applies the definitive outcome of a journaled operation: the hold is
    /// committed (in whole, or the part the server took, the rest given
    /// back) or released, what came in is credited, and the operation leaves
    /// the journal — all or nothing, checked before anything changes.
    /// `Ok(None)`: the operation was settled already.
    pub fn settle(
        &mut self,
        op_id: OpId,
        outcome: &OpOutcome,
    ) -> Result<Option<Settled>, StateError> {
        let Some(op) = self.journal.get(&op_id) else {
            return Ok(None);
        };
        let hold = op.hold;
        // Check: every addition below must fit in i64 (settlements may go
        // beyond MAX_HOLDING on purpose; see the module docs).
        match outcome {
            OpOutcome::Applied(a) => {
                let held = match hold {
                    Some(h) => Some(
                        self.holds
                            .get(&h)
                            .ok_or(StateError::UnknownHold(h))?
                            .kind
                            .clone(),
                    ),
                    None => None,
                };
                if let (Some(kind), Some(spent)) = (&held, a.hold_spent) {
                    if spent < 0 || spent > kind.amount() {
                        return Err(StateError::InvalidAmount(spent));
                    }
                }
                let back = match &held {
                    Some(kind) => kind.amount() - a.hold_spent.unwrap_or(kind.amount()),
                    None => 0,
                };
                let mut credits_back = a.credits_in;
                let mut items_back: Option<(&str, i64)> =
                    a.items_in.as_ref().map(|(i, q)| (i.as_str(), *q));
                match &held {
                    Some(HoldKind::Credits { .. }) => {
                        credits_back = credits_back.checked_add(back).ok_or(StateError::Overflow)?
                    }
                    Some(HoldKind::Items { item_id, .. }) if back > 0 => {
                        let q = items_back
                            .filter(|(i, _)| i == item_id)
                            .map_or(0, |(_, q)| q);
                        if items_back.is_some() && q == 0 {
                            // Two different items coming back: check the held one alone.
                            self.item_count(item_id)
                                .checked_add(back)
                                .ok_or(StateError::Overflow)?;
                        } else {
                            items_back = Some((
                                item_id.as_str(),
                                q.checked_add(back).ok_or(StateError::Overflow)?,
                            ));
                        }
                    }
                    _ => {}
                }
                if let Some((item_id, quantity)) = items_back {
                    check_item(item_id)?;
                    if quantity < 0 {
                        return Err(StateError::InvalidAmount(quantity));
                    }
                    self.item_count(item_id)
                        .checked_add(quantity)
                        .and_then(|n| n.checked_add(self.escrowed_items(item_id)))
                        .ok_or(StateError::Overflow)?;
                }
                if a.credits_in < 0 || a.market_credits_in < 0 {
                    return Err(StateError::InvalidAmount(
                        a.credits_in.min(a.market_credits_in),
                    ));
                }
                self.credits
                    .checked_add(credits_back)
                    .and_then(|n| n.checked_add(self.held_credits()))
                    .ok_or(StateError::Overflow)?;
                if let Some((item_id, q)) = &a.market_items_in {
                    check_item(item_id)?;
                    check_amount(*q)?;
                }
            }
            OpOutcome::Rejected { .. } => {
                if let Some(h) = hold {
                    self.check_release(h)?;
                }
            }
        }
        // Apply.
        let Some(op) = self.journal.remove(&op_id) else {
            return Ok(None);
        };
        if let Some(h) = op.hold {
            self.index.hold_owner.remove(&h);
        }
        if let MarketChange::Purchase { listing_id, .. } = op.op {
            if let Some(n) = self.index.purchases.get_mut(&listing_id) {
                *n -= 1;
                if *n == 0 {
                    self.index.purchases.remove(&listing_id);
                }
            }
        }
        let mut settled = Settled {
            op,
            hold: None,
            items_in: None,
            credits_in: 0,
            market_changed: false,
        };
        match outcome {
            OpOutcome::Applied(a) => {
                if let Some(h) = hold {
                    let kind = self.remove_hold(h).ok_or(StateError::UnknownHold(h))?;
                    let spent = a.hold_spent.unwrap_or(kind.amount());
                    self.give_back(&kind, kind.amount() - spent);
                    let arithmetic = a.market_view.is_none();
                    match &kind {
                        HoldKind::MarketCredits { .. } if arithmetic => {
                            self.market.credits = (self.market.credits - spent).max(0);
                            self.market.local = true;
                            settled.market_changed = true;
                        }
                        HoldKind::MarketItems { item_id, .. } if arithmetic => {
                            self.market_add_items(&item_id.clone(), -spent);
                            self.market.local = true;
                            settled.market_changed = true;
                        }
                        _ => {}
                    }
                    settled.hold = Some((h, kind, true));
                }
                if let Some((item_id, quantity)) = &a.items_in {
                    let next = self.item_count(item_id) + quantity;
                    self.set_count(item_id, next);
                    settled.items_in = Some((item_id.clone(), *quantity));
                }
                self.credits += a.credits_in;
                settled.credits_in = a.credits_in;
                match &a.market_view {
                    Some(view) => {
                        // The server's account after the operation: all of
                        // its effects on the account are in it.
                        if self.take_view(view) {
                            settled.market_changed = true;
                        }
                    }
                    None => {
                        if a.market_credits_in > 0 {
                            self.market.credits =
                                self.market.credits.saturating_add(a.market_credits_in);
                            self.market.local = true;
                            settled.market_changed = true;
                        }
                        if let Some((item_id, q)) = &a.market_items_in {
                            self.market_add_items(item_id, *q);
                            self.market.local = true;
                            settled.market_changed = true;
                        }
                    }
                }
            }
            OpOutcome::Rejected { .. } => {
                if let Some(h) = hold {
                    let kind = self.release_checked(h)?;
                    settled.hold = Some((h, kind, false));
                }
            }
        }
        Ok(Some(settled))
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
                HoldKind::Items { item_id, quantity }
                | HoldKind::MarketItems { item_id, quantity } => {
                    if *quantity < 1 {
                        problems.push(format!("hold {id} escrows {quantity} of {item_id:?}"));
                    }
                }
                HoldKind::MarketCredits { amount } => {
                    if *amount < 1 {
                        problems.push(format!("hold {id} reserves {amount} market credits"));
                    }
                }
            }
        }
        if self.market.credits < 0 || self.market.stash.values().any(|n| *n < 0) {
            problems.push("the market account mirror holds a negative amount".into());
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
            // The derived figures must agree with the document.
            let mut fresh = self.clone();
            fresh.reindex();
            if fresh.index.held_credits != self.index.held_credits
                || fresh.index.escrow != self.index.escrow
                || fresh.index.market_held_credits != self.index.market_held_credits
                || fresh.index.market_escrow != self.index.market_escrow
                || fresh.index.hold_owner != self.index.hold_owner
                || fresh.index.purchases != self.index.purchases
            {
                problems.push("derived figures disagree with the document (a bug)".into());
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
    fn a_new_key_is_the_save_id_and_128_random_bits_in_hex() {
        let s = rich();
        let (a, b) = (s.new_key(), s.new_key());
        assert_ne!(a, b);
        for key in [a, b] {
            let digits = key.strip_prefix(&format!("{}.", s.save_id)).unwrap();
            assert_eq!(digits.len(), 32, "{key}");
            assert!(digits
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            assert!(s.is_own_key(&key));
            marketplace_protocol::check_id("idempotency_key", &key).unwrap();
        }
    }

    fn buy(s: &mut PlayerState, listing_id: i64, price: i64) -> OpId {
        let h = s.reserve_credits(price).unwrap();
        s.journal_op(
            format!("k{listing_id}"),
            MarketChange::Purchase {
                listing_id,
                expected_price: price,
                quantity: None,
                deposit: price,
            },
            Some(h),
            0,
        )
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
        assert!(
            s.add_item("ore", MAX_HOLDING).is_err(),
            "beyond the holding limit"
        );
        assert!(s.add_item("", 1).is_err());
        assert_eq!(s.item_count("ore"), 5);
        assert_eq!(s.remove_item("ore", 5), Ok(0));
        assert!(!s.inventory.contains_key("ore"));
        assert!(s.add_credits(i64::MAX).is_err());
        assert!(s.add_credits(MAX_HOLDING).is_err());
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
        assert_eq!((s.item_count("ore"), s.escrowed_items("ore")), (0, 0));
        s.validate().unwrap();
    }

    #[test]
    fn journaled_holds_are_settled_only_by_their_operation() {
        let mut s = rich();
        let op = buy(&mut s, 1, 10);
        let h = s.journal[&op].hold.unwrap();
        assert!(s.is_buying(1));
        assert_eq!(s.release_hold(h), Err(StateError::HoldInUse(h)));
        assert_eq!(s.commit_hold(h), Err(StateError::HoldInUse(h)));
        s.validate().unwrap();
        let done = s
            .settle(op, &OpOutcome::Applied(Applied::items("gem", 1)))
            .unwrap()
            .unwrap();
        assert_eq!(done.hold, Some((h, HoldKind::Credits { amount: 10 }, true)));
        assert!(!s.is_buying(1));
        assert_eq!(
            (s.credits, s.held_credits(), s.item_count("gem")),
            (990, 0, 1)
        );
        assert_eq!(
            s.settle(op, &OpOutcome::Rejected { reason: "x".into() }),
            Ok(None)
        );
        s.validate().unwrap();
    }

    #[test]
    fn a_settlement_that_does_not_fit_changes_nothing() {
        let mut s = rich();
        let op = buy(&mut s, 1, 10);
        s.credits = i64::MAX - 20; // only a test can do this
        let before = s.clone();
        let r = s.settle(op, &OpOutcome::Applied(Applied::credits(100)));
        assert_eq!(r, Err(StateError::Overflow));
        assert_eq!(s, before);
        assert!(s.is_buying(1) && s.held_credits() == 10);
    }

    #[test]
    fn settlements_may_go_beyond_the_holding_limit() {
        let mut s = PlayerState::new("dev", "Ann");
        s.add_credits(MAX_HOLDING - 10).unwrap();
        let op = s.journal_op("k".into(), MarketChange::Claim { sale_id: 1 }, None, 0);
        s.settle(
            op,
            &OpOutcome::Applied(Applied::credits(marketplace_protocol::MAX_PRICE)),
        )
        .unwrap();
        assert!(s.credits > MAX_HOLDING);
        assert!(s.add_credits(1).is_err(), "the game itself cannot add more");
        s.validate().unwrap();
    }

    #[test]
    fn a_partly_spent_hold_gives_the_rest_back() {
        let mut s = rich();
        let op = buy(&mut s, 3, 100);
        // The market account had 30: the server took only 70 from the save.
        s.settle(
            op,
            &OpOutcome::Applied(Applied {
                hold_spent: Some(70),
                items_in: Some(("gem".into(), 1)),
                ..Applied::default()
            }),
        )
        .unwrap();
        assert_eq!(
            (s.credits, s.held_credits(), s.item_count("gem")),
            (930, 0, 1)
        );
        // Selling 3 ore of which the stash had 1: two leave the save.
        let h = s.escrow_items("ore", 3).unwrap();
        let op = s.journal_op(
            "k".into(),
            MarketChange::CreateListing {
                item_id: "ore".into(),
                quantity: 3,
                price: 5,
                deposit: 3,
                duration_secs: None,
            },
            Some(h),
            0,
        );
        s.settle(
            op,
            &OpOutcome::Applied(Applied {
                hold_spent: Some(2),
                ..Applied::default()
            }),
        )
        .unwrap();
        assert_eq!((s.item_count("ore"), s.escrowed_items("ore")), (3, 0));
        // A server may not take more than was held.
        let op = buy(&mut s, 4, 10);
        let r = s.settle(
            op,
            &OpOutcome::Applied(Applied {
                hold_spent: Some(11),
                ..Applied::default()
            }),
        );
        assert_eq!(r, Err(StateError::InvalidAmount(11)));
        s.validate().unwrap();
    }

    #[test]
    fn market_holds_follow_the_mirror() {
        let mut s = PlayerState::new("dev", "Ann");
        let account = Account {
            credits: 100,
            stash: [("ore".to_string(), 2)].into(),
            version: 5,
        };
        assert!(s.set_market(EconomyMode::ServerGrants, &account));
        let h = s.reserve_market_credits(60).unwrap();
        assert!(s.reserve_market_credits(41).is_err());
        assert_eq!(s.market_available_credits(), 40);
        let op = s.journal_op(
            "k".into(),
            MarketChange::Purchase {
                listing_id: 1,
                expected_price: 60,
                quantity: None,
                deposit: 0,
            },
            Some(h),
            0,
        );
        s.settle(
            op,
            &OpOutcome::Applied(Applied {
                market_items_in: Some(("gem".into(), 1)),
                ..Applied::default()
            }),
        )
        .unwrap();
        assert_eq!((s.market.credits, s.market_available_credits()), (40, 40));
        assert_eq!(s.market.stash.get("gem"), Some(&1));
        assert_eq!(s.credits, 0, "the save was never touched");
        // An older view does not go back in time.
        assert!(!s.set_market(
            EconomyMode::ServerGrants,
            &Account {
                credits: 100,
                stash: Default::default(),
                version: 4
            }
        ));
        s.validate().unwrap();
    }

    #[test]
    fn validate_finds_problems() {
        let mut s = rich();
        s.inventory.insert("ghost".into(), 0);
        s.credits = -5;
        s.journal_op("k".into(), MarketChange::Claim { sale_id: 1 }, Some(99), 0);
        let problems = s.validate().unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
    }

    fn op(
        seq: i64,
        key: &str,
        credits: i64,
        items: &[(&str, i64)],
    ) -> marketplace_protocol::OperationRecord {
        marketplace_protocol::OperationRecord {
            seq,
            key: key.into(),
            kind: "purchase".into(),
            at: 0,
            credits,
            items: items.iter().map(|(i, n)| (i.to_string(), *n)).collect(),
        }
    }

    fn page(
        ops: Vec<marketplace_protocol::OperationRecord>,
        last_seq: i64,
    ) -> marketplace_protocol::OperationsPage {
        marketplace_protocol::OperationsPage {
            operations: ops,
            last_seq,
        }
    }

    fn owner() -> Owner {
        Owner {
            server_id: "mkt_a".into(),
            player_id: 7,
        }
    }

    /// Reconciliation applies exactly what the save lost: not what it
    /// journals (settles by its answer), not what it settled, each lost one
    /// once — and the mark never passes a journaled operation.
    #[test]
    fn reconcile_applies_exactly_the_lost_operations_once() {
        let mut s = rich();
        let before = (s.credits, s.item_count("ore"));
        // First contact: the mark is where the record stands; nothing applied.
        assert!(s
            .reconcile(&owner(), &page(vec![op(3, "old", -5, &[])], 3), 0)
            .is_empty());
        assert_eq!(s.sync["mkt_a"].seq, 3);
        // k1 settled here, k2 still journaled, k3 lost, k4 after k2.
        let k = |n: &str| format!("{}.{n}", s.save_id);
        let (k1, k2, k3, k4) = (k("k1"), k("k2"), k("k3"), k("k4"));
        s.note_applied(&owner(), &k1, 0);
        s.journal_op(k2.clone(), MarketChange::Cancel { listing_id: 1 }, None, 0);
        let ops = vec![
            op(4, &k1, -10, &[("ore", 1)]),
            op(5, &k2, 0, &[("ore", 2)]),
            op(6, &k3, -20, &[("gem", 1)]),
            op(7, "other-save.k9", -20, &[("gem", 1)]),
            op(8, &k4, 3, &[]),
        ];
        let got = s.reconcile(&owner(), &page(ops.clone(), 8), 0);
        let keys: Vec<_> = got.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(keys, [k3.as_str(), k4.as_str()], "not another save's");
        assert_eq!(s.credits, before.0 - 20 + 3);
        assert_eq!(s.item_count("gem"), 1);
        assert_eq!(s.item_count("ore"), before.1, "k1 and k2 not applied here");
        let mark = &s.sync["mkt_a"];
        assert_eq!(mark.seq, 4, "stops before the journaled k2");
        assert!(mark.applied.contains_key(&k3) && mark.applied.contains_key(&k4));
        assert!(!mark.applied.contains_key(&k1), "confirmed below the mark");
        // k2 settles; the same page again applies nothing more.
        let op2 = *s.journal.keys().next().unwrap();
        s.journal.remove(&op2);
        s.reindex();
        s.note_applied(&owner(), &k2, 0);
        assert!(s.reconcile(&owner(), &page(ops, 8), 0).is_empty());
        assert_eq!(s.sync["mkt_a"].seq, 8);
        assert!(s.sync["mkt_a"].applied.is_empty());
    }

    /// An operation settled while the first reconciliation was on its way
    /// (committed after the server read `last_seq`) is not taken for lost.
    #[test]
    fn an_operation_settled_before_the_first_reconciliation_is_not_lost() {
        let mut s = rich();
        let credits = s.credits;
        let early = format!("{}.early", s.save_id);
        s.note_applied(&owner(), &early, 0);
        assert!(s.reconcile(&owner(), &page(vec![], 2), 0).is_empty());
        let later = page(vec![op(3, &early, -10, &[])], 3);
        assert!(s.reconcile(&owner(), &later, 0).is_empty());
        assert_eq!(s.credits, credits);
    }

    /// What went out but the save no longer has is taken as far as it goes.
    #[test]
    fn a_lost_operation_takes_no_more_than_the_save_has() {
        let mut s = PlayerState::new("d", "n");
        s.credits = 5;
        s.reconcile(&owner(), &page(vec![], 0), 0);
        let key = s.new_key();
        let got = s.reconcile(&owner(), &page(vec![op(1, &key, -8, &[("ore", -1)])], 1), 0);
        assert_eq!(got[0].shortfall, 3 + 1);
        assert_eq!(s.credits, 0);
        assert!(s.validate().is_ok());
    }

    /// Once a reconciliation set the mark, no noted key is ever dropped (a
    /// dropped key would make its operation look lost); before, the list
    /// is bounded. A file from before save ids gets the same id as its
    /// backup (derived from the device).
    #[test]
    fn noted_keys_are_kept_once_the_mark_is_set_and_upgraded_files_agree() {
        let mut s = rich();
        for i in 0..MAX_APPLIED_KEYS + 10 {
            let key = format!("{}.{i}", s.save_id);
            s.note_applied(&owner(), &key, i as i64);
        }
        assert_eq!(
            s.sync["mkt_a"].applied.len(),
            MAX_APPLIED_KEYS,
            "bounded while unset"
        );
        s.reconcile(&owner(), &page(vec![], 0), 0);
        for i in 0..20 {
            let key = format!("{}.more{i}", s.save_id);
            s.note_applied(&owner(), &key, 0);
        }
        assert_eq!(
            s.sync["mkt_a"].applied.len(),
            MAX_APPLIED_KEYS + 20,
            "kept once set"
        );
        assert_eq!(save_id_of_device("dev-1"), save_id_of_device("dev-1"));
        assert_ne!(save_id_of_device("dev-1"), save_id_of_device("dev-2"));
    }
}
