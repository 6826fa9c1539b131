//! `LocalPlayerData`: the player's credits, inventory and holds, saved
//! crash-safely by one writer thread.

use std::time::Duration;

use godot::classes::{INode, Node, ProjectSettings};
use godot::prelude::*;
use marketplace_client::{HoldKind, PlayerStore, StoreEvent, StoreOptions};

/// The player's local data: credits (available and held), inventory, and
/// the journal of marketplace trades in progress, in one save file.
///
/// Every change goes through this node on the main thread; saving never
/// blocks a frame (many changes in one frame make one write), and the file on
/// disk is always a whole old or new version. `flush()` waits for the write —
/// call it before quitting if you quit without leaving the tree.
///
/// ```gdscript
/// @onready var data: LocalPlayerData = $LocalPlayerData
///
/// func _ready():
///     data.inventory_changed.connect(func(item_id, count): inventory_ui.set_count(item_id, count))
///     data.credits_changed.connect(func(available, held): credits_label.text = "%d (+%d held)" % [available, held])
///     data.save_failed.connect(func(message): push_warning(message))
///     data.add_item("scrap_metal", 3)
/// ```
#[derive(GodotClass)]
#[class(base=Node)]
pub struct LocalPlayerData {
    /// Where the save file lives; `user://` paths are resolved by Godot.
    #[export]
    save_path: GString,
    /// Save after every change (still at most one write per frame).
    #[export]
    autosave: bool,
    /// The name a brand-new player starts with.
    #[export]
    default_player_name: GString,
    store: Option<PlayerStore>,
    /// Why the save file could not be opened (the file is left untouched).
    load_error: Option<String>,
    events: Vec<StoreEvent>,
    base: Base<Node>,
}

#[godot_api]
impl INode for LocalPlayerData {
    fn init(base: Base<Node>) -> Self {
        LocalPlayerData {
            save_path: "user://player_data.json".into(),
            autosave: true,
            default_player_name: "Pilot".into(),
            store: None,
            load_error: None,
            events: Vec::new(),
            base,
        }
    }

    fn ready(&mut self) {
        self.ensure_open();
        self.emit_pending();
    }

    fn process(&mut self, _delta: f64) {
        if let Some(store) = self.store.as_mut() {
            store.poll();
        }
        self.emit_pending();
    }

    fn exit_tree(&mut self) {
        // Leaving the tree (or quitting): make sure the last changes are on disk.
        if let Some(store) = self.store.as_mut() {
            if let Err(message) = store.flush(Duration::from_secs(5)) {
                godot_error!("LocalPlayerData: final save failed: {message}");
            }
        }
        self.emit_pending();
    }
}

#[godot_api]
impl LocalPlayerData {
    /// An item's count changed (0 when the last one left).
    #[signal]
    fn inventory_changed(item_id: GString, count: i64);
    /// Available or held credits changed.
    #[signal]
    fn credits_changed(available: i64, held: i64);
    /// A hold was placed: credits reserved (`amount` credits) or items escrowed
    /// for a sale (`amount` items).
    #[signal]
    fn hold_placed(hold_id: i64, amount: i64);
    /// A hold was given back; `reason` is an error code such as `"already_sold"`.
    #[signal]
    fn hold_released(hold_id: i64, reason: GString);
    /// A hold was spent for good.
    #[signal]
    fn hold_committed(hold_id: i64);
    /// Everything up to now is on disk.
    #[signal]
    fn saved();
    /// A save failed (disk full, read-only, …); nothing in memory was lost and
    /// the save is retried.
    #[signal]
    fn save_failed(message: GString);
    /// The save file was unreadable; the previous save (backup) was loaded.
    #[signal]
    fn recovered_from_backup(message: GString);
    /// The save file (and its backup) could not be loaded; they were left
    /// untouched and this node holds no data until the problem is fixed.
    #[signal]
    fn load_failed(message: GString);

    /// The server's id for this player, or -1 before the first login.
    #[func]
    fn get_player_id(&mut self) -> i64 {
        self.with_store(-1, |s| s.state().player_id.unwrap_or(-1))
    }

    #[func]
    fn get_player_name(&mut self) -> GString {
        self.with_store(GString::new(), |s| s.state().player_name.as_str().into())
    }

    /// Credits available to spend (held credits are not included).
    #[func]
    fn get_credits(&mut self) -> i64 {
        self.with_store(0, |s| s.state().credits)
    }

    /// Credits reserved by holds (purchases waiting for the server).
    #[func]
    fn get_held_credits(&mut self) -> i64 {
        self.with_store(0, |s| s.state().held_credits())
    }

    /// Adds (or with a negative `n`, removes) credits. Returns false, changing
    /// nothing, if the balance would go below zero or overflow.
    #[func]
    fn add_credits(&mut self, n: i64) -> bool {
        self.mutate("add_credits", |s| s.add_credits(n).map(drop))
    }

    #[func]
    fn get_item_count(&mut self, item_id: GString) -> i64 {
        self.with_store(0, |s| s.state().item_count(&item_id.to_string()))
    }

    /// Item id → count.
    #[func]
    fn get_inventory(&mut self) -> VarDictionary {
        self.with_store(VarDictionary::new(), |s| {
            let mut d = VarDictionary::new();
            for (item, count) in &s.state().inventory {
                d.set(
                    &GString::from(item.as_str()).to_variant(),
                    &count.to_variant(),
                );
            }
            d
        })
    }

    /// Adds `n` ≥ 1 items. Returns false on a bad id, count or overflow.
    #[func]
    fn add_item(&mut self, item_id: GString, n: i64) -> bool {
        self.mutate("add_item", |s| {
            s.add_item(&item_id.to_string(), n).map(drop)
        })
    }

    /// Removes `n` items; false (and nothing changes) if fewer are owned.
    #[func]
    fn remove_item(&mut self, item_id: GString, n: i64) -> bool {
        self.mutate("remove_item", |s| {
            s.remove_item(&item_id.to_string(), n).map(drop)
        })
    }

    /// Reserves `amount` available credits; returns the hold id, or -1 if not
    /// enough are available.
    #[func]
    fn reserve_credits(&mut self, amount: i64) -> i64 {
        let id = self.with_store(Err(None), |s| s.reserve_credits(amount).map_err(Some));
        self.emit_pending();
        match id {
            Ok(id) => i64::try_from(id).unwrap_or(-1),
            Err(_) => -1,
        }
    }

    /// Gives a hold's credits back. Holds of marketplace trades in progress
    /// are refused: only the server's answer settles those.
    #[func]
    fn release_credits_hold(&mut self, hold_id: i64) -> bool {
        let Ok(id) = u64::try_from(hold_id) else {
            return false;
        };
        self.mutate("release_credits_hold", |s| s.release_hold(id, "released"))
    }

    /// Spends a hold for good. Holds of trades in progress are refused.
    #[func]
    fn commit_credits_hold(&mut self, hold_id: i64) -> bool {
        let Ok(id) = u64::try_from(hold_id) else {
            return false;
        };
        self.mutate("commit_credits_hold", |s| s.commit_hold(id))
    }

    /// Asks for a save. Never blocks; the write happens after this frame.
    #[func]
    fn save_inventory(&mut self) {
        if let Some(s) = self.store_mut() {
            s.save();
        }
    }

    /// Writes now and waits (up to 5 s) until it is on disk. For quitting.
    #[func]
    fn flush(&mut self) -> bool {
        let result = self.with_store(Err("player data is not loaded".to_string()), |s| {
            s.flush(Duration::from_secs(5))
        });
        self.emit_pending();
        match result {
            Ok(()) => true,
            Err(message) => {
                godot_error!("LocalPlayerData.flush: {message}");
                false
            }
        }
    }

    /// Checks the data's internal consistency (no negative counts or credits,
    /// every trade's hold present, …); problems are printed as errors.
    #[func]
    fn validate_inventory(&mut self) -> bool {
        match self.with_store(Err(vec!["player data is not loaded".to_string()]), |s| {
            s.state().validate()
        }) {
            Ok(()) => true,
            Err(problems) => {
                for p in problems {
                    godot_error!("LocalPlayerData: {p}");
                }
                false
            }
        }
    }

    /// True once the save file was loaded (or a new player created).
    #[func]
    fn is_loaded(&mut self) -> bool {
        self.store_mut().is_some()
    }

    /// Why loading failed, or "".
    #[func]
    fn get_load_error(&self) -> GString {
        self.load_error.as_deref().unwrap_or("").into()
    }

    /// The save file's absolute path.
    #[func]
    fn get_save_file_path(&self) -> GString {
        self.resolved_path().as_str().into()
    }
}

impl LocalPlayerData {
    fn resolved_path(&self) -> String {
        let raw = self.save_path.to_string();
        if raw.starts_with("user://") || raw.starts_with("res://") {
            ProjectSettings::singleton()
                .globalize_path(&self.save_path)
                .to_string()
        } else {
            raw
        }
    }

    /// Opens the save file on first use (so `TradingMarketplace` can use this
    /// node whichever of the two becomes ready first).
    fn ensure_open(&mut self) {
        if self.store.is_some() || self.load_error.is_some() {
            return;
        }
        let path = std::path::PathBuf::from(self.resolved_path());
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let options = StoreOptions {
            autosave: self.autosave,
            ..StoreOptions::default()
        };
        match PlayerStore::open(&path, &self.default_player_name.to_string(), options) {
            Ok(store) => self.store = Some(store),
            Err(e) => {
                let message = e.to_string();
                godot_error!("LocalPlayerData: {message}");
                self.load_error = Some(message.clone());
                self.signals()
                    .load_failed()
                    .emit(&GString::from(message.as_str()));
            }
        }
    }

    /// The store, for `TradingMarketplace`.
    pub fn store_mut(&mut self) -> Option<&mut PlayerStore> {
        self.ensure_open();
        self.store.as_mut()
    }

    fn with_store<T>(&mut self, missing: T, f: impl FnOnce(&mut PlayerStore) -> T) -> T {
        match self.store_mut() {
            Some(s) => f(s),
            None => missing,
        }
    }

    fn mutate<E: std::fmt::Display>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut PlayerStore) -> Result<(), E>,
    ) -> bool {
        let result = self.with_store(None, |s| Some(f(s).map_err(|e| e.to_string())));
        self.emit_pending();
        match result {
            Some(Ok(())) => true,
            Some(Err(message)) => {
                godot_warn!("LocalPlayerData.{what}: {message}");
                false
            }
            None => false,
        }
    }

    /// Turns the store's events into signals.
    fn emit_pending(&mut self) {
        let Some(store) = self.store.as_mut() else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        store.drain_events(&mut events);
        for event in events.drain(..) {
            match event {
                StoreEvent::InventoryChanged { item_id, count } => self
                    .signals()
                    .inventory_changed()
                    .emit(&GString::from(item_id.as_str()), count),
                StoreEvent::CreditsChanged { available, held } => {
                    self.signals().credits_changed().emit(available, held)
                }
                StoreEvent::HoldPlaced { hold_id, kind } => {
                    let amount = match kind {
                        HoldKind::Credits { amount } => amount,
                        HoldKind::Items { quantity, .. } => quantity,
                    };
                    self.signals()
                        .hold_placed()
                        .emit(i64::try_from(hold_id).unwrap_or(-1), amount)
                }
                StoreEvent::HoldReleased { hold_id, reason } => {
                    self.signals().hold_released().emit(
                        i64::try_from(hold_id).unwrap_or(-1),
                        &GString::from(reason.as_str()),
                    )
                }
                StoreEvent::HoldCommitted { hold_id } => self
                    .signals()
                    .hold_committed()
                    .emit(i64::try_from(hold_id).unwrap_or(-1)),
                StoreEvent::Saved { .. } => self.signals().saved().emit(),
                StoreEvent::SaveFailed { message } => {
                    godot_warn!("LocalPlayerData: {message}");
                    self.signals()
                        .save_failed()
                        .emit(&GString::from(message.as_str()))
                }
                StoreEvent::RecoveredFromBackup { message } => {
                    godot_warn!("LocalPlayerData: {message}");
                    self.signals()
                        .recovered_from_backup()
                        .emit(&GString::from(message.as_str()))
                }
                StoreEvent::RemoteRejected { message } => {
                    godot_warn!("LocalPlayerData: {message}")
                }
            }
        }
        self.events = events;
    }
}
