//! `LocalPlayerData`: the player's credits, inventory and holds, saved
//! crash-safely by one writer thread.

use std::collections::VecDeque;
use std::time::Duration;

use godot::classes::node::ProcessMode;
use godot::classes::{Engine, INode, Node, ProjectSettings};
use godot::prelude::*;
use marketplace_client::paths::resolve_save_path;
use marketplace_client::{ClientError, ErrorCode, PlayerStore, StoreEvent};

use crate::data::{self, MarketAccount, MarketHold};
use crate::save_slot::{self, SlotRef};

/// Store events turned into signals per frame, at most; the rest wait.
const SIGNALS_PER_FRAME: usize = 1024;

/// The player's local data: credits (available and held), inventory, and
/// the journal of marketplace trades in progress, in one save file.
///
/// The file is opened on first use or, at the latest, right after the
/// scene's `_ready` calls — so a parent may set `save_path`, `autosave` and
/// `default_player_name` in its own `_ready` (save slots), and signals about
/// loading (`load_failed`, `recovered_from_backup`) reach connections made
/// there. Saving never blocks a frame (many changes in one frame make one
/// write, done on a thread of its own), and the file on disk is always a
/// whole old or new version. The node keeps working while the tree is
/// paused (`process_mode` is `ALWAYS` unless you change it).
///
/// One save file is open in one place: a second `LocalPlayerData` on the
/// same file, or a second instance of the game, gets `load_failed` and
/// touches nothing. Freeing the node (a scene change) never waits on the
/// disk; a node created later on the same file carries on where it was.
///
/// ```gdscript
/// @onready var data: LocalPlayerData = $LocalPlayerData
///
/// func _ready():
///     data.save_path = "user://slot_%d.json" % slot   # before first use
///     data.inventory_changed.connect(func(item_id, count): inventory_ui.set_count(item_id, count))
///     data.credits_changed.connect(func(available, held): credits_label.text = "%d (+%d held)" % [available, held])
///     data.save_failed.connect(func(message): push_warning(message))
///     data.recovered_from_backup.connect(func(message): toast("Your save was damaged; the previous one was loaded"))
/// ```
#[derive(GodotClass)]
#[class(tool, base=Node)]
pub struct LocalPlayerData {
    /// Where the save file lives: `user://…` (the default,
    /// `user://player_data.json`), a path relative to `user://`, or an
    /// absolute path. `res://` cannot work (it is read-only in an exported
    /// game): such a path is kept, the editor warns, and at run time the
    /// node loads nothing (`load_failed`) rather than save anywhere else.
    /// Changing it switches files — refused (the old value stays) while
    /// trades wait for their answer.
    #[var(set = set_save_path)]
    #[export]
    save_path: GString,
    /// Save the game's own changes (`add_item`, …) as they happen, at most
    /// once per frame. Marketplace trades are saved whatever this says.
    #[var(set = set_autosave)]
    #[export]
    autosave: bool,
    /// The name a brand-new player starts with (read when the file is
    /// opened).
    #[export]
    default_player_name: GString,
    slot: Option<SlotRef>,
    /// Why the save file could not be opened (the file is left untouched),
    /// and when: opening is tried again a second later (another instance
    /// may have closed it, the player may have fixed the disk).
    load_error: Option<(String, std::time::Instant)>,
    /// `load_failed` messages for the next `_frame`.
    unsent_load_failures: VecDeque<String>,
    /// Running inside the editor: the node is only edited there — no file
    /// is opened, nothing ticks; the scene dock shows its warnings.
    in_editor: bool,
    /// When `_frame` is queued and runs.
    frame: FrameGate,
    base: Base<Node>,
}

#[godot_api]
impl INode for LocalPlayerData {
    fn init(base: Base<Node>) -> Self {
        // Keep saving and trading while the game is paused (a shop in a
        // pause menu). A value set in the inspector or by a script wins.
        base.to_init_gd().set_process_mode(ProcessMode::ALWAYS);
        LocalPlayerData {
            save_path: "user://player_data.json".into(),
            autosave: true,
            default_player_name: "Pilot".into(),
            slot: None,
            load_error: None,
            unsent_load_failures: VecDeque::new(),
            in_editor: Engine::singleton().is_editor_hint(),
            frame: FrameGate::default(),
            base,
        }
    }

    /// What the editor's scene dock shows next to the node.
    fn get_configuration_warnings(&self) -> PackedStringArray {
        self.get_setup_warnings()
    }

    fn ready(&mut self) {
        if self.in_editor {
            return;
        }
        // After every `_ready` of this frame, the parent's included.
        self.base_mut().call_deferred("_open_if_unused", &[]);
    }

    fn process(&mut self, _delta: f64) {
        // The frame's signals go out from `_frame`, a deferred call that
        // holds no borrow of this node while a handler runs: a handler (or
        // a script resuming from `await`) may even free the node.
        if !self.in_editor && self.frame.queue() {
            self.base_mut().call_deferred("_frame", &[]);
        }
    }
}

/// When a node's deferred `_frame` runs: queued at most once a frame from
/// `_process`, run at most once a frame (by the frame counter, not a flag,
/// so a dropped deferred call cannot stall the node, and a script calling
/// `_frame` again changes nothing).
pub struct FrameGate {
    queued: u64,
    ran: u64,
}

impl Default for FrameGate {
    fn default() -> FrameGate {
        FrameGate {
            queued: u64::MAX,
            ran: u64::MAX,
        }
    }
}

impl FrameGate {
    /// True the first time this frame: queue `_frame` now.
    pub fn queue(&mut self) -> bool {
        let frame = Engine::singleton().get_process_frames();
        std::mem::replace(&mut self.queued, frame) != frame
    }

    /// True the first time this frame: run `_frame`'s work.
    pub fn run(&mut self) -> bool {
        let frame = Engine::singleton().get_process_frames();
        std::mem::replace(&mut self.ran, frame) != frame
    }
}

/// Ticks every open save once this frame (whichever node's `_frame` comes first).
pub fn tick_slots() {
    let frame = Engine::singleton().get_process_frames();
    save_slot::tick_all(
        frame,
        marketplace_client::session::DEFAULT_EVENTS_PER_POLL,
        Duration::from_micros(500),
    );
}

impl Drop for LocalPlayerData {
    /// Freed (a scene change, or quitting): let go of the save without
    /// waiting. It stays open in the registry, where trades go on settling;
    /// quitting flushes it.
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            if let Ok(mut s) = slot.try_borrow_mut() {
                s.data_attached = false;
            }
            save_slot::detach_data(&slot);
        }
    }
}

#[godot_api]
impl LocalPlayerData {
    /// An item's count changed (0 when the last one left).
    #[signal]
    fn inventory_changed(item_id: GString, count: i64);
    /// Available or held credits changed. Within a frame the newest values
    /// come last, also when a handler changes credits again.
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
    /// Everything changed so far is on disk (nothing newer waits).
    #[signal]
    fn saved();
    /// A save failed (disk full, read-only, …); nothing in memory was lost,
    /// the save is retried, and trades wait until a save succeeds.
    #[signal]
    fn save_failed(message: GString);
    /// The save file was unreadable; the previous save (backup) was loaded.
    #[signal]
    fn recovered_from_backup(message: GString);
    /// The market account changed (server grants: the wallet trades pay
    /// from): its credits and the part held by pending trades. See
    /// `get_market_account()`.
    #[signal]
    fn market_account_changed(credits: i64, held: i64);
    /// The save file (and its backup) could not be loaded, or another node or
    /// game instance has it open; the files were left untouched and this node
    /// holds no data until the problem is fixed.
    #[signal]
    fn load_failed(message: GString);

    /// The server's id for this player, or -1 before the first login.
    #[func]
    fn get_player_id(&mut self) -> i64 {
        self.read(-1, |s| s.state().player_id.unwrap_or(-1))
    }

    #[func]
    fn get_player_name(&mut self) -> GString {
        self.read(GString::new(), |s| s.state().player_name.as_str().into())
    }

    /// Credits available to spend (held credits are not included).
    #[func]
    fn get_credits(&mut self) -> i64 {
        self.read(0, |s| s.state().credits)
    }

    /// Credits reserved by holds (purchases waiting for the server).
    #[func]
    fn get_held_credits(&mut self) -> i64 {
        self.read(0, |s| s.state().held_credits())
    }

    /// Adds (or with a negative `n`, removes) credits. Returns `""` when
    /// done; otherwise a code, changing nothing: `"insufficient_credits"`
    /// (the balance would go below zero), `"invalid_argument"` (beyond
    /// 10^15), `"save_unavailable"` (the save is not loaded).
    #[func]
    fn add_credits(&mut self, n: i64) -> GString {
        self.mutate("add_credits", |s| s.add_credits(n).map(drop))
    }

    #[func]
    fn get_item_count(&mut self, item_id: GString) -> i64 {
        self.read(0, |s| s.state().item_count(&item_id.to_string()))
    }

    /// Item id → count.
    #[func]
    fn get_inventory(&mut self) -> VarDictionary {
        self.read(VarDictionary::new(), |s| data::counts(&s.state().inventory))
    }

    /// Adds `n` ≥ 1 items. Returns `""` when done; otherwise a code,
    /// changing nothing: `"invalid_argument"` (a bad id, count or
    /// overflow), `"save_unavailable"`.
    #[func]
    fn add_item(&mut self, item_id: GString, n: i64) -> GString {
        self.mutate("add_item", |s| {
            s.add_item(&item_id.to_string(), n).map(drop)
        })
    }

    /// Removes `n` items. Returns `""` when done; otherwise a code,
    /// changing nothing: `"insufficient_items"` (fewer are owned),
    /// `"invalid_argument"`, `"save_unavailable"`.
    #[func]
    fn remove_item(&mut self, item_id: GString, n: i64) -> GString {
        self.mutate("remove_item", |s| {
            s.remove_item(&item_id.to_string(), n).map(drop)
        })
    }

    /// Reserves `amount` available credits: the hold's `code` is `""` and
    /// its `id` names it; otherwise `code` says why not
    /// (`"insufficient_credits"`, `"invalid_argument"`,
    /// `"save_unavailable"`) and nothing changed.
    #[func]
    fn reserve_credits(&mut self, amount: i64) -> Gd<MarketHold> {
        let made = self.read(Err(ErrorCode::SaveUnavailable), |s| {
            s.reserve_credits(amount)
                .map_err(|e| ClientError::from(e).code)
                .and_then(|id| i64::try_from(id).map_err(|_| ErrorCode::InvalidArgument))
        });
        match made {
            Ok(id) => data::hold(id, amount, ""),
            Err(code) => data::hold(0, amount, code.as_str()),
        }
    }

    /// Gives a hold's credits back. Returns `""` when done; otherwise a
    /// code, changing nothing: `"trades_pending"` (the hold is a
    /// marketplace trade's: only the server's answer settles it),
    /// `"invalid_argument"` (no such hold), `"save_unavailable"`.
    #[func]
    fn release_credits_hold(&mut self, hold_id: i64) -> GString {
        let Ok(id) = u64::try_from(hold_id) else {
            return ErrorCode::InvalidArgument.as_str().into();
        };
        self.mutate("release_credits_hold", |s| s.release_hold(id, "released"))
    }

    /// Spends a hold for good. Returns `""` when done; otherwise a code
    /// as for `release_credits_hold`.
    #[func]
    fn commit_credits_hold(&mut self, hold_id: i64) -> GString {
        let Ok(id) = u64::try_from(hold_id) else {
            return ErrorCode::InvalidArgument.as_str().into();
        };
        self.mutate("commit_credits_hold", |s| s.commit_hold(id))
    }

    /// Set-up problems, as the editor's scene dock shows them: a
    /// `save_path` that cannot work (`res://`, empty, a folder, another
    /// scheme), an empty `default_player_name`. Empty when the node is
    /// ready.
    #[func]
    fn get_setup_warnings(&self) -> PackedStringArray {
        let mut warnings = PackedStringArray::new();
        if let Err(why) = resolve_save_path(&self.save_path.to_string(), std::path::Path::new("/"))
        {
            warnings.push(&GString::from(why.as_str()));
        }
        if self.default_player_name.to_string().trim().is_empty() {
            warnings.push("default_player_name is empty: a brand-new player gets no name.");
        }
        warnings
    }

    /// Asks for a save of the game's own changes (with `autosave` off).
    /// Never blocks; the write happens after this frame.
    #[func]
    fn save_inventory(&mut self) {
        self.read((), |s| s.save());
    }

    /// Writes now and waits (up to 5 s) until it is on disk. For quitting
    /// with `OS.kill()`-style exits; `get_tree().quit()` saves by itself.
    /// Returns `""` when on disk; otherwise `"save_failed"` (nothing in
    /// memory was lost; the write is retried) or `"save_unavailable"`.
    #[func]
    fn flush(&mut self) -> GString {
        let Some(slot) = self.slot() else {
            return ErrorCode::SaveUnavailable.as_str().into();
        };
        let result = slot.borrow_mut().store.flush(Duration::from_secs(5));
        match result {
            Ok(()) => GString::new(),
            Err(message) => {
                godot_error!("LocalPlayerData.flush: {message}");
                ErrorCode::SaveFailed.as_str().into()
            }
        }
    }

    /// Checks the data's internal consistency (no negative counts or
    /// credits, every trade's hold present, …): the problems found, empty
    /// when there are none (each is also printed as an error).
    #[func]
    fn validate_inventory(&mut self) -> PackedStringArray {
        let mut found = PackedStringArray::new();
        if let Err(problems) = self.read(Err(vec!["player data is not loaded".to_string()]), |s| {
            s.state().validate()
        }) {
            for p in problems {
                godot_error!("LocalPlayerData: {p}");
                found.push(&GString::from(p.as_str()));
            }
        }
        found
    }

    /// True once the save file was loaded (or a new player created).
    #[func]
    fn is_loaded(&mut self) -> bool {
        self.slot().is_some()
    }

    /// Why loading failed, or "".
    #[func]
    fn get_load_error(&mut self) -> GString {
        let _ = self.slot();
        self.load_error
            .as_ref()
            .map_or(GString::new(), |(m, _)| m.as_str().into())
    }

    /// The save file's absolute path ("" when `save_path` is not usable).
    #[func]
    fn get_save_file_path(&self) -> GString {
        match self.resolved_path() {
            Ok(p) => p.to_string_lossy().as_ref().into(),
            Err(_) => GString::new(),
        }
    }

    /// The market account as last seen from the server, with the
    /// client's view (`mode`, `held_credits`, `available_credits`); `null`
    /// while the save is not loaded. Under client deposits it is normally
    /// empty: trades take what they need from the save and give everything
    /// back to it.
    #[func]
    fn get_market_account(&mut self) -> Option<Gd<MarketAccount>> {
        self.read(None, |s| Some(data::account_view(s.state())))
    }

    /// Trades of this save waiting for the marketplace's answer.
    #[func]
    fn get_pending_trade_count(&mut self) -> i64 {
        self.slot()
            .map_or(0, |slot| slot.borrow().pending_trades() as i64)
    }

    /// Switches to another save file (a save slot). Returns "" when done, or
    /// a code: `"trades_pending"` (trades of the current file wait for their
    /// answer; nothing changed) or `"invalid_argument"` (a `res://` path, …).
    /// The new file opens on first use. Setting `save_path` does the same.
    #[func]
    fn change_save_path(&mut self, path: GString) -> GString {
        if self.in_editor {
            // Edited, not used: the dock's warnings say what is wrong.
            let code = match resolve_save_path(&path.to_string(), std::path::Path::new("/")) {
                Ok(_) => GString::new(),
                Err(_) => ErrorCode::InvalidArgument.as_str().into(),
            };
            self.save_path = path;
            self.base_mut().update_configuration_warnings();
            return code;
        }
        let resolved = resolve_save_path(&path.to_string(), &user_dir());
        if let Ok(resolved) = &resolved {
            if self.resolved_path().ok().as_ref() == Some(resolved) {
                // The same file, however it is spelled.
                self.save_path = path;
                return GString::new();
            }
        }
        if let Some(slot) = &self.slot {
            let pending = slot.borrow().pending_trades();
            if pending > 0 {
                godot_error!(
                    "LocalPlayerData: save_path stays {}: {pending} trade(s) of this save wait for the marketplace's answer",
                    self.save_path
                );
                return "trades_pending".into();
            }
        }
        if let Some(slot) = self.slot.take() {
            slot.borrow_mut().data_attached = false;
            save_slot::detach_data(&slot);
            save_slot::close(&slot);
        }
        self.save_path = path;
        self.load_error = None;
        match resolved {
            Ok(_) => GString::new(),
            Err(message) => {
                // Kept, so the node holds no data and says why (load_failed
                // at first use) instead of quietly saving somewhere else.
                godot_error!("LocalPlayerData: {message}");
                ErrorCode::InvalidArgument.as_str().into()
            }
        }
    }

    #[func]
    fn set_save_path(&mut self, path: GString) {
        let _ = self.change_save_path(path);
    }

    #[func]
    fn set_autosave(&mut self, on: bool) {
        self.autosave = on;
        if let Some(slot) = &self.slot {
            slot.borrow_mut().store.set_autosave(on);
        }
    }

    /// The node's frame work, deferred from `_process` to the end of the
    /// frame (called by the engine; not for scripts): ticks every open
    /// save, then emits this node's signals holding no borrow of it — so a
    /// handler may free the node safely.
    #[func(gd_self)]
    fn _frame(mut this: Gd<Self>) {
        if !this.bind_mut().frame.run() {
            return;
        }
        tick_slots();
        if this.is_instance_valid() {
            Self::emit_pending(&mut this);
        }
    }

    /// Deferred from `_ready`: opens the file if nothing used it yet, so that
    /// problems with it are reported in the first frame.
    #[func]
    fn _open_if_unused(&mut self) {
        let _ = self.slot();
    }
}

/// The folder `user://` names.
fn user_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(
        ProjectSettings::singleton()
            .globalize_path("user://")
            .to_string(),
    )
}

impl LocalPlayerData {
    fn resolved_path(&self) -> Result<std::path::PathBuf, String> {
        resolve_save_path(&self.save_path.to_string(), &user_dir())
    }

    /// The open save, opening it on first use. `None` (with `load_error`
    /// set and `load_failed` queued for the next `_frame`) when it cannot be.
    pub fn slot(&mut self) -> Option<SlotRef> {
        if self.in_editor {
            return None;
        }
        if let Some(slot) = &self.slot {
            return Some(slot.clone());
        }
        if let Some((_, at)) = &self.load_error {
            if at.elapsed() < Duration::from_secs(1) {
                return None;
            }
        }
        match self.open() {
            Ok(slot) => {
                self.load_error = None;
                self.slot = Some(slot.clone());
                Some(slot)
            }
            Err(message) => {
                // Told once per reason, not at every retry.
                if self.load_error.as_ref().map(|(m, _)| m) != Some(&message) {
                    godot_error!("LocalPlayerData: {message}");
                    self.unsent_load_failures.push_back(message.clone());
                }
                self.load_error = Some((message, std::time::Instant::now()));
                None
            }
        }
    }

    fn open(&mut self) -> Result<SlotRef, String> {
        let path = self.resolved_path()?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let (slot, _new) =
            save_slot::open(&path, &self.default_player_name.to_string(), self.autosave)
                .map_err(|e| e.to_string())?;
        {
            let mut s = slot.borrow_mut();
            if s.data_attached {
                return Err(format!(
                    "{} is already used by another LocalPlayerData node; give each node its own save_path",
                    path.display()
                ));
            }
            s.data_attached = true;
            s.store.set_autosave(self.autosave);
        }
        save_slot::attach_data(self.base().instance_id(), &slot);
        Ok(slot)
    }

    fn read<T>(&mut self, missing: T, f: impl FnOnce(&mut PlayerStore) -> T) -> T {
        match self.slot() {
            Some(slot) => f(&mut slot.borrow_mut().store),
            None => missing,
        }
    }

    /// A change to the save: `""` when done, or the code of why not.
    fn mutate<E: Into<ClientError>>(
        &mut self,
        what: &str,
        f: impl FnOnce(&mut PlayerStore) -> Result<(), E>,
    ) -> GString {
        match self.read(None, |s| Some(f(s).map_err(Into::into))) {
            Some(Ok(())) => GString::new(),
            Some(Err(error)) => {
                godot_warn!("LocalPlayerData.{what}: {}", error.message);
                error.code.as_str().into()
            }
            None => ErrorCode::SaveUnavailable.as_str().into(),
        }
    }

    /// Turns waiting events into signals, one at a time and without holding
    /// the save while a handler runs: a handler may call anything, and what
    /// it changes is signalled after — so the newest state comes last.
    fn emit_pending(this: &mut Gd<Self>) {
        loop {
            if !this.is_instance_valid() {
                return;
            }
            let Some(message) = this.bind_mut().unsent_load_failures.pop_front() else {
                break;
            };
            this.signals().load_failed().emit(message.as_str());
        }
        for _ in 0..SIGNALS_PER_FRAME {
            if !this.is_instance_valid() {
                return;
            }
            let Some(slot) = this.bind().slot.clone() else {
                return;
            };
            let Some(event) = slot.borrow_mut().store.next_event() else {
                return;
            };
            Self::emit(this, event);
        }
    }

    fn emit(this: &mut Gd<Self>, event: StoreEvent) {
        let id = |h: u64| i64::try_from(h).unwrap_or(-1);
        match event {
            StoreEvent::InventoryChanged { item_id, count } => this
                .signals()
                .inventory_changed()
                .emit(item_id.as_str(), count),
            StoreEvent::CreditsChanged { available, held } => {
                this.signals().credits_changed().emit(available, held)
            }
            StoreEvent::HoldPlaced { hold_id, kind } => this
                .signals()
                .hold_placed()
                .emit(id(hold_id), kind.amount()),
            StoreEvent::MarketAccountChanged { credits, held, .. } => {
                this.signals().market_account_changed().emit(credits, held)
            }
            StoreEvent::HoldReleased { hold_id, reason } => this
                .signals()
                .hold_released()
                .emit(id(hold_id), reason.as_str()),
            StoreEvent::HoldCommitted { hold_id } => {
                this.signals().hold_committed().emit(id(hold_id))
            }
            StoreEvent::Saved { .. } => this.signals().saved().emit(),
            StoreEvent::SaveFailed { message } => {
                godot_warn!("LocalPlayerData: {message}");
                this.signals().save_failed().emit(message.as_str())
            }
            StoreEvent::RecoveredFromBackup { message } => {
                godot_warn!("LocalPlayerData: {message}");
                this.signals()
                    .recovered_from_backup()
                    .emit(message.as_str())
            }
            StoreEvent::RemoteRejected { message } => {
                godot_warn!("LocalPlayerData: {message}")
            }
        }
    }
}
