//! The local player store: one owner, one writer.
//!
//! The old client wrote the inventory file from two places at once and lost
//! items. Here the [`PlayerStore`] owns the [`PlayerState`]; every mutation
//! goes through it on the thread that owns it (the game's main thread), and
//! other threads send theirs through a [`StoreRemote`], applied in order at
//! the next [`PlayerStore::poll`].
//!
//! Saving never blocks the caller: [`PlayerStore::save`] only marks the state
//! dirty. Once per `poll` (once per frame) a dirty state is serialised and
//! handed to the writer thread, replacing any snapshot it has not started yet
//! — so a thousand saves in one frame are one write. The writer writes with
//! [`persist::save_atomically`]. [`PlayerStore::flush`] waits for the write
//! (for quitting the game).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::persist::{self, LoadError, RealFs, SaveFs};
use crate::state::{HoldId, HoldKind, OpId, PlayerState, StateError};
use marketplace_protocol::MarketChange;

/// Something the game may want to show or log; drained with
/// [`PlayerStore::drain_events`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    InventoryChanged {
        item_id: String,
        count: i64,
    },
    CreditsChanged {
        available: i64,
        held: i64,
    },
    HoldPlaced {
        hold_id: HoldId,
        kind: HoldKind,
    },
    HoldReleased {
        hold_id: HoldId,
        reason: String,
    },
    HoldCommitted {
        hold_id: HoldId,
    },
    /// Everything up to `generation` is on disk.
    Saved {
        generation: u64,
    },
    /// A write failed; the state in memory is intact and the save is retried.
    SaveFailed {
        message: String,
    },
    /// The main save file was unreadable or missing; the backup was loaded.
    RecoveredFromBackup {
        message: String,
    },
    /// A mutation sent through a [`StoreRemote`] was refused.
    RemoteRejected {
        message: String,
    },
}

/// How an operation in the journal ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpOutcome {
    /// The server applied it: commit the hold, then credit what came in.
    Applied {
        items_in: Option<(String, i64)>,
        credits_in: i64,
    },
    /// The server refused it definitively: release the hold.
    Rejected { reason: String },
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SaveStats {
    /// Calls of [`PlayerStore::save`] (explicit or by autosave).
    pub save_calls: u64,
    /// Snapshots handed to the writer.
    pub snapshots: u64,
    /// Files actually written.
    pub writes: u64,
}

/// Options of [`PlayerStore::open`].
pub struct StoreOptions {
    /// Save after every mutation (still one write per frame). Default: true.
    pub autosave: bool,
    /// The file operations; tests inject failures here. Default: [`RealFs`].
    pub fs: Box<dyn SaveFs>,
    /// Pause before retrying a failed write. Default: 1 s.
    pub retry_after: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            autosave: true,
            fs: Box::new(RealFs),
            retry_after: Duration::from_secs(1),
        }
    }
}

/// A mutation sent from another thread.
enum RemoteOp {
    AddItem(String, i64),
    RemoveItem(String, i64),
    AddCredits(i64),
    Save,
}

/// A `Send + Clone` handle for other threads: their mutations are queued and
/// applied by the owner, in order, at its next `poll`.
#[derive(Clone)]
pub struct StoreRemote {
    tx: mpsc::Sender<RemoteOp>,
}

impl StoreRemote {
    pub fn add_item(&self, item_id: &str, quantity: i64) {
        let _ = self
            .tx
            .send(RemoteOp::AddItem(item_id.to_string(), quantity));
    }
    pub fn remove_item(&self, item_id: &str, quantity: i64) {
        let _ = self
            .tx
            .send(RemoteOp::RemoveItem(item_id.to_string(), quantity));
    }
    pub fn add_credits(&self, delta: i64) {
        let _ = self.tx.send(RemoteOp::AddCredits(delta));
    }
    pub fn save(&self) {
        let _ = self.tx.send(RemoteOp::Save);
    }
}

#[derive(Default)]
struct Slot {
    pending: Option<(u64, Vec<u8>)>,
    stop: bool,
    /// Highest generation written.
    durable: u64,
    /// Highest generation whose write failed, with the error.
    failed: Option<(u64, String)>,
    writes: u64,
}

struct Writer {
    shared: Arc<(Mutex<Slot>, Condvar)>,
    results: mpsc::Receiver<Result<u64, String>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    fn start(path: PathBuf, mut fs: Box<dyn SaveFs>) -> std::io::Result<Writer> {
        let shared = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let (tx, results) = mpsc::channel();
        let inner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("player-store-writer".into())
            .spawn(move || loop {
                let (lock, cv) = &*inner;
                let job = {
                    let Ok(mut slot) = lock.lock() else { return };
                    loop {
                        if let Some(job) = slot.pending.take() {
                            break job;
                        }
                        if slot.stop {
                            return;
                        }
                        slot = match cv.wait(slot) {
                            Ok(s) => s,
                            Err(_) => return,
                        };
                    }
                };
                let (generation, bytes) = job;
                let result = persist::save_atomically(fs.as_mut(), &path, &bytes)
                    .map_err(|e| format!("saving {} failed: {e}", path.display()));
                // Report on the channel first, so that whoever wakes up on
                // the condition variable finds the result there too.
                let _ = tx.send(result.clone().map(|()| generation));
                let Ok(mut slot) = lock.lock() else { return };
                match &result {
                    Ok(()) => {
                        slot.durable = slot.durable.max(generation);
                        slot.writes += 1;
                        if slot.failed.as_ref().is_some_and(|(g, _)| *g <= generation) {
                            slot.failed = None;
                        }
                    }
                    Err(e) => slot.failed = Some((generation, e.clone())),
                }
                drop(slot);
                cv.notify_all();
            })?;
        Ok(Writer {
            shared,
            results,
            thread: Some(thread),
        })
    }

    fn hand_over(&self, generation: u64, bytes: Vec<u8>) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut slot) = lock.lock() {
            slot.pending = Some((generation, bytes));
            // A new attempt supersedes an older failure.
            slot.failed = None;
        }
        cv.notify_all();
    }
}

impl Drop for Writer {
    /// Finishes the pending write, then stops and joins the thread.
    fn drop(&mut self) {
        let (lock, cv) = &*self.shared;
        if let Ok(mut slot) = lock.lock() {
            slot.stop = true;
        }
        cv.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The player's data, its save file and its writer.
pub struct PlayerStore {
    state: PlayerState,
    path: Option<PathBuf>,
    autosave: bool,
    retry_after: Duration,
    generation: u64,
    save_wanted: bool,
    /// Highest generation handed to the writer.
    handed: u64,
    durable: u64,
    /// Generation of the last failed write, until a later write succeeds.
    failing: Option<u64>,
    retry_at: Option<Instant>,
    writer: Option<Writer>,
    events: VecDeque<StoreEvent>,
    remote_tx: mpsc::Sender<RemoteOp>,
    remote_rx: mpsc::Receiver<RemoteOp>,
    stats: SaveStats,
}

/// Most remote mutations applied per `poll`, so one frame does bounded work.
const REMOTE_PER_POLL: usize = 10_000;

impl PlayerStore {
    /// Opens (or creates on first save) the save file at `path`. A new
    /// player gets a random device id and `default_name`.
    pub fn open(
        path: impl AsRef<Path>,
        default_name: &str,
        options: StoreOptions,
    ) -> Result<PlayerStore, LoadError> {
        let path = path.as_ref().to_path_buf();
        let loaded = persist::load(&path)?;
        let state = loaded
            .state
            .unwrap_or_else(|| PlayerState::new(new_device_id(), default_name));
        let writer = Writer::start(path.clone(), options.fs).map_err(|source| LoadError::Io {
            path: path.clone(),
            source,
        })?;
        let mut store = Self::build(state, Some(path), Some(writer), options.autosave);
        store.retry_after = options.retry_after;
        if let Some(message) = loaded.recovered_from_backup {
            tracing::warn!(%message, "player data recovered from backup");
            store
                .events
                .push_back(StoreEvent::RecoveredFromBackup { message });
            // Write a good main file again at once.
            store.save();
        }
        Ok(store)
    }

    /// A store without a file (tests, tools, a game that saves elsewhere).
    pub fn in_memory(state: PlayerState) -> PlayerStore {
        Self::build(state, None, None, true)
    }

    fn build(
        state: PlayerState,
        path: Option<PathBuf>,
        writer: Option<Writer>,
        autosave: bool,
    ) -> PlayerStore {
        let (remote_tx, remote_rx) = mpsc::channel();
        PlayerStore {
            state,
            path,
            autosave,
            retry_after: Duration::from_secs(1),
            generation: 0,
            save_wanted: false,
            handed: 0,
            durable: 0,
            failing: None,
            retry_at: None,
            writer,
            events: VecDeque::new(),
            remote_tx,
            remote_rx,
            stats: SaveStats::default(),
        }
    }

    pub fn state(&self) -> &PlayerState {
        &self.state
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn remote(&self) -> StoreRemote {
        StoreRemote {
            tx: self.remote_tx.clone(),
        }
    }

    pub fn set_autosave(&mut self, on: bool) {
        self.autosave = on;
    }

    pub fn stats(&self) -> SaveStats {
        let mut stats = self.stats;
        if let Some(w) = &self.writer {
            if let Ok(slot) = w.shared.0.lock() {
                stats.writes = slot.writes;
            }
        }
        stats
    }

    /// Bumped by every change of the state.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Everything up to this generation is on disk. Without a file, every
    /// generation counts as durable.
    pub fn durable_generation(&self) -> u64 {
        if self.path.is_none() {
            self.generation
        } else {
            self.durable
        }
    }

    /// True while the newest write failed and no later one succeeded.
    pub fn is_failing(&self) -> bool {
        self.failing.is_some()
    }

    fn changed(&mut self) {
        self.generation += 1;
        if self.autosave {
            self.save();
        }
    }

    fn credits_event(&mut self) {
        self.events.push_back(StoreEvent::CreditsChanged {
            available: self.state.credits,
            held: self.state.held_credits(),
        });
    }

    fn item_event(&mut self, item_id: &str) {
        self.events.push_back(StoreEvent::InventoryChanged {
            item_id: item_id.to_string(),
            count: self.state.item_count(item_id),
        });
    }

    fn hold_kind_events(&mut self, kind: &HoldKind) {
        match kind {
            HoldKind::Credits { .. } => self.credits_event(),
            HoldKind::Items { item_id, .. } => self.item_event(item_id),
        }
    }

    pub fn add_credits(&mut self, delta: i64) -> Result<i64, StateError> {
        let n = self.state.add_credits(delta)?;
        self.credits_event();
        self.changed();
        Ok(n)
    }

    pub fn add_item(&mut self, item_id: &str, quantity: i64) -> Result<i64, StateError> {
        let n = self.state.add_item(item_id, quantity)?;
        self.item_event(item_id);
        self.changed();
        Ok(n)
    }

    pub fn remove_item(&mut self, item_id: &str, quantity: i64) -> Result<i64, StateError> {
        let n = self.state.remove_item(item_id, quantity)?;
        self.item_event(item_id);
        self.changed();
        Ok(n)
    }

    pub fn reserve_credits(&mut self, amount: i64) -> Result<HoldId, StateError> {
        let hold_id = self.state.reserve_credits(amount)?;
        self.events.push_back(StoreEvent::HoldPlaced {
            hold_id,
            kind: HoldKind::Credits { amount },
        });
        self.credits_event();
        self.changed();
        Ok(hold_id)
    }

    pub fn escrow_items(&mut self, item_id: &str, quantity: i64) -> Result<HoldId, StateError> {
        let hold_id = self.state.escrow_items(item_id, quantity)?;
        self.events.push_back(StoreEvent::HoldPlaced {
            hold_id,
            kind: HoldKind::Items {
                item_id: item_id.to_string(),
                quantity,
            },
        });
        self.item_event(item_id);
        self.changed();
        Ok(hold_id)
    }

    /// Releases a hold the game placed itself (not one of a pending trade).
    pub fn release_hold(&mut self, hold_id: HoldId, reason: &str) -> Result<(), StateError> {
        let kind = self.state.release_hold(hold_id)?;
        self.after_release(hold_id, &kind, reason);
        Ok(())
    }

    /// Commits a hold the game placed itself (not one of a pending trade).
    pub fn commit_hold(&mut self, hold_id: HoldId) -> Result<(), StateError> {
        let kind = self.state.commit_hold(hold_id)?;
        self.after_commit(hold_id, &kind);
        Ok(())
    }

    fn after_release(&mut self, hold_id: HoldId, kind: &HoldKind, reason: &str) {
        self.events.push_back(StoreEvent::HoldReleased {
            hold_id,
            reason: reason.to_string(),
        });
        self.hold_kind_events(kind);
        self.changed();
    }

    fn after_commit(&mut self, hold_id: HoldId, kind: &HoldKind) {
        self.events.push_back(StoreEvent::HoldCommitted { hold_id });
        self.hold_kind_events(kind);
        self.changed();
    }

    /// Sets the identity used to log in (kept in the save file, so restarts
    /// log in as the same player and can settle its pending trades).
    pub fn set_identity(&mut self, device_id: &str, name: &str) -> Result<(), StateError> {
        marketplace_protocol::check_id("device_id", device_id)
            .map_err(StateError::InvalidItemId)?;
        marketplace_protocol::check_name(name).map_err(StateError::InvalidItemId)?;
        if self.state.device_id != device_id || self.state.player_name != name {
            self.state.device_id = device_id.to_string();
            self.state.player_name = name.to_string();
            self.changed();
        }
        Ok(())
    }

    /// Records who the server says we are.
    pub fn set_player(&mut self, player_id: i64, name: &str) {
        if self.state.player_id != Some(player_id) || self.state.player_name != name {
            self.state.player_id = Some(player_id);
            self.state.player_name = name.to_string();
            self.changed();
        }
    }

    /// Journals a marketplace operation (with the hold it settles).
    pub fn begin_op(&mut self, key: String, op: MarketChange, hold: Option<HoldId>) -> OpId {
        let id = self.state.journal_op(key, op, hold);
        self.changed();
        id
    }

    /// Applies the definitive outcome of a journaled operation exactly once:
    /// the hold is committed or released, what came in is credited, and the
    /// operation leaves the journal — all or nothing.
    pub fn settle_op(&mut self, op_id: OpId, outcome: &OpOutcome) -> Result<(), StateError> {
        let Some(op) = self.state.journal.get(&op_id).cloned() else {
            return Ok(()); // settled already
        };
        // Work on a copy so that a refusal half-way changes nothing.
        let mut next = self.state.clone();
        next.journal.remove(&op_id);
        let mut touched_items = Vec::new();
        let settled_hold = match (outcome, op.hold) {
            (OpOutcome::Applied { .. }, Some(h)) => Some((h, next.commit_hold_unchecked(h)?)),
            (OpOutcome::Rejected { .. }, Some(h)) => Some((h, next.release_hold_unchecked(h)?)),
            (_, None) => None,
        };
        if let OpOutcome::Applied {
            items_in,
            credits_in,
        } = outcome
        {
            if let Some((item_id, quantity)) = items_in {
                next.add_item(item_id, *quantity)?;
                touched_items.push(item_id.clone());
            }
            if *credits_in != 0 {
                next.add_credits(*credits_in)?;
            }
        }
        self.state = next;
        if let Some((hold_id, kind)) = &settled_hold {
            match outcome {
                OpOutcome::Applied { .. } => self
                    .events
                    .push_back(StoreEvent::HoldCommitted { hold_id: *hold_id }),
                OpOutcome::Rejected { reason } => self.events.push_back(StoreEvent::HoldReleased {
                    hold_id: *hold_id,
                    reason: reason.clone(),
                }),
            }
            if let HoldKind::Items { item_id, .. } = kind {
                touched_items.push(item_id.clone());
            }
        }
        touched_items.dedup();
        for item in touched_items {
            self.item_event(&item);
        }
        self.credits_event();
        self.changed();
        Ok(())
    }

    /// Asks for a save. Never blocks: the write happens on the writer thread
    /// after the next `poll`, together with every other save of the frame.
    pub fn save(&mut self) {
        self.stats.save_calls += 1;
        self.save_wanted = true;
    }

    /// Applies queued remote mutations, collects the writer's results and
    /// hands a dirty state to the writer. Call once per frame.
    pub fn poll(&mut self) {
        for _ in 0..REMOTE_PER_POLL {
            let Ok(op) = self.remote_rx.try_recv() else {
                break;
            };
            let result = match op {
                RemoteOp::AddItem(item, n) => self.add_item(&item, n).map(drop),
                RemoteOp::RemoveItem(item, n) => self.remove_item(&item, n).map(drop),
                RemoteOp::AddCredits(n) => self.add_credits(n).map(drop),
                RemoteOp::Save => {
                    self.save();
                    Ok(())
                }
            };
            if let Err(e) = result {
                self.events.push_back(StoreEvent::RemoteRejected {
                    message: e.to_string(),
                });
            }
        }
        self.collect_results();
        self.hand_to_writer(false);
    }

    fn collect_results(&mut self) {
        let Some(writer) = &self.writer else { return };
        let mut results = Vec::new();
        while let Ok(r) = writer.results.try_recv() {
            results.push(r);
        }
        for result in results {
            match result {
                Ok(generation) => {
                    self.durable = self.durable.max(generation);
                    if self.failing.is_some_and(|g| g <= generation) {
                        self.failing = None;
                        self.retry_at = None;
                    }
                    self.events.push_back(StoreEvent::Saved { generation });
                }
                Err(message) => {
                    tracing::warn!(%message, "save failed");
                    self.failing = Some(self.handed);
                    self.retry_at = Some(Instant::now() + self.retry_after);
                    self.save_wanted = true;
                    self.events.push_back(StoreEvent::SaveFailed { message });
                }
            }
        }
    }

    fn hand_to_writer(&mut self, force: bool) {
        if !self.save_wanted && !force {
            return;
        }
        let Some(writer) = &self.writer else {
            self.save_wanted = false;
            return;
        };
        if !force && self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if self.handed == self.generation && self.failing.is_none() && !force {
            // Nothing new since the last snapshot.
            self.save_wanted = false;
            return;
        }
        match serde_json::to_vec(&self.state) {
            Ok(bytes) => {
                writer.hand_over(self.generation, bytes);
                self.handed = self.generation;
                self.stats.snapshots += 1;
                self.save_wanted = false;
            }
            Err(e) => self.events.push_back(StoreEvent::SaveFailed {
                message: format!("cannot serialise player data: {e}"),
            }),
        }
    }

    /// Writes the current state now and waits until it is on disk (or the
    /// write failed, or `timeout` passed). For quitting the game.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), String> {
        self.poll();
        let Some(shared) = self.writer.as_ref().map(|w| w.shared.clone()) else {
            return Ok(());
        };
        let target = self.generation;
        if self.handed < target || self.failing.is_some() {
            self.hand_to_writer(true);
        }
        let (lock, cv) = &*shared;
        let deadline = Instant::now() + timeout;
        let mut slot = lock.lock().map_err(|_| "save writer crashed".to_string())?;
        let outcome = loop {
            if slot.durable >= target {
                break Ok(());
            }
            if let Some((g, e)) = &slot.failed {
                if *g >= target {
                    break Err(e.clone());
                }
            }
            let now = Instant::now();
            if now >= deadline {
                break Err(format!("save did not finish within {timeout:?}"));
            }
            slot = match cv.wait_timeout(slot, deadline - now) {
                Ok((s, _)) => s,
                Err(_) => return Err("save writer crashed".into()),
            };
        };
        drop(slot);
        self.collect_results();
        outcome
    }

    /// Moves pending events into `out`.
    pub fn drain_events(&mut self, out: &mut Vec<StoreEvent>) {
        out.extend(self.events.drain(..));
    }
}

fn new_device_id() -> String {
    format!(
        "dev-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}
