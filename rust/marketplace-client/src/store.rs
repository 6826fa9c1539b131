//! The local player store: one owner, one writer.
//!
//! The old client wrote the inventory file from two places at once and lost
//! items. Here the [`PlayerStore`] owns the [`PlayerState`]; every mutation
//! goes through it on the thread that owns it (the game's main thread), and
//! other threads send theirs through a [`StoreRemote`], applied in order at
//! the next [`PlayerStore::poll`].
//!
//! # Saving without costing the frame
//! Every mutation records what it changed as a small [`Delta`] (an item's new
//! count, a hold put or removed, …). Once per `poll` (once per frame) the
//! frame's deltas are handed to the writer thread, which keeps its own copy
//! of the document, applies them, serialises and writes with
//! [`persist::save_atomically`]. The game's thread never serialises the
//! document and never copies it: a trade's settlement costs the same with a
//! ten-item or a ten-thousand-item inventory. Deltas that pile up while the
//! writer is busy are applied together and written once, so a thousand saves
//! in one frame — or in ten frames of a slow disk — are one write.
//!
//! # What is saved when
//! Trades (journal entries, holds for trades, settlements, the identity) are
//! always saved: a trade may not be sent before its journal entry is on
//! disk. `autosave` governs only the game's own changes (`add_item`, …);
//! with it off they wait for [`PlayerStore::save`] — or ride along with the
//! next trade, since there is one file.
//!
//! # One store per file
//! Opening takes an OS lock on the save ([`persist::lock`]); a second store
//! on the same file — another game instance, another node — is refused
//! before anything is read or written.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::persist::{self, LoadError, RealFs, SaveFs};
use crate::state::unix_now;
use crate::state::{Hold, HoldId, HoldKind, OpId, PendingOp, PlayerState, Settled, StateError};
use marketplace_protocol::MarketChange;

pub use crate::state::OpOutcome;

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
    /// Everything the game has changed is on disk (nothing newer waits).
    Saved {
        generation: u64,
    },
    /// A write failed; the state in memory is intact and the save is
    /// retried. Told once per streak of failures (and again if the reason
    /// changes), not at every retry.
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
    /// The market account mirror changed (server grants): its credits, the
    /// part of them held by pending trades, and the server's version.
    MarketAccountChanged {
        credits: i64,
        held: i64,
        version: i64,
    },
}

/// Counters for tests and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SaveStats {
    /// Calls of [`PlayerStore::save`] (explicit or by autosave).
    pub save_calls: u64,
    /// Batches of changes handed to the writer.
    pub snapshots: u64,
    /// Files actually written.
    pub writes: u64,
}

/// Options of [`PlayerStore::open`].
pub struct StoreOptions {
    /// Save the game's own changes as they happen (still one write per
    /// frame). Trades are saved whatever this says. Default: true.
    pub autosave: bool,
    /// The file operations; tests inject failures here. Default: [`RealFs`].
    pub fs: Box<dyn SaveFs>,
    /// Pause before retrying a failed write. Default: 1 s.
    pub retry_after: Duration,
    /// How far the append-only log may grow before the document is written
    /// whole again: the larger of this and the document's size. 0: no log,
    /// every save writes the whole document. Default: 64 KiB.
    pub log_bytes: u64,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            autosave: true,
            fs: Box::new(RealFs),
            retry_after: Duration::from_secs(1),
            log_bytes: MIN_LOG_BYTES,
        }
    }
}

/// One change of the document, as the writer's copy applies it: the new
/// value of what changed (so applying it can never fail). Also what the
/// save's log records ([`persist::append_log`]), and what a load replays.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Delta {
    Credits(i64),
    /// An item's new count; 0 removes it.
    Item(String, i64),
    Hold(HoldId, Option<Hold>),
    Op(OpId, Option<PendingOp>),
    Counters(HoldId, OpId),
    Identity {
        device_id: String,
        player_name: String,
        player_id: Option<i64>,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        identity_login: bool,
    },
    Market(crate::state::MarketMirror),
    /// A market's whole sync mark (`None`: removed): after a
    /// reconciliation, which is rare.
    Sync(String, Option<crate::state::SyncMark>),
    /// One settlement noted in a market's mark (every settlement: small).
    Noted(crate::state::Noted),
}

impl Delta {
    fn apply(self, s: &mut PlayerState) {
        match self {
            Delta::Credits(n) => s.credits = n,
            Delta::Item(item, 0) => {
                s.inventory.remove(&item);
            }
            Delta::Item(item, n) => {
                s.inventory.insert(item, n);
            }
            Delta::Hold(id, Some(h)) => {
                s.holds.insert(id, h);
            }
            Delta::Hold(id, None) => {
                s.holds.remove(&id);
            }
            Delta::Op(id, Some(op)) => {
                s.journal.insert(id, op);
            }
            Delta::Op(id, None) => {
                s.journal.remove(&id);
            }
            Delta::Counters(hold, op) => {
                s.next_hold_id = hold;
                s.next_op_id = op;
            }
            Delta::Identity {
                device_id,
                player_name,
                player_id,
                identity_login,
            } => {
                s.device_id = device_id;
                s.player_name = player_name;
                s.player_id = player_id;
                s.identity_login = identity_login;
            }
            Delta::Market(m) => s.market = m,
            Delta::Sync(server, Some(mark)) => {
                s.sync.insert(server, mark);
            }
            Delta::Sync(server, None) => {
                s.sync.remove(&server);
            }
            Delta::Noted(n) => {
                let mark = s.sync.entry(n.server_id).or_default();
                if n.reset || mark.player_id != n.player_id {
                    mark.applied.clear();
                }
                mark.player_id = n.player_id;
                mark.seq = n.seq;
                if let Some(old) = n.evicted {
                    mark.applied.remove(&old);
                }
                mark.applied.insert(n.key, n.at);
            }
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

/// What the owner and the writer thread share.
#[derive(Default)]
struct Slot {
    /// Batches of changes not yet applied to the writer's copy, by generation.
    batches: Vec<(u64, Vec<Delta>)>,
    /// Write the copy again even without new changes (a retry).
    rewrite: bool,
    stop: bool,
    /// Highest generation written.
    durable: u64,
    /// Highest generation whose write failed, with the error.
    failed: Option<(u64, String)>,
    writes: u64,
}

/// The writer's view of the log beside the document (see [`persist`]).
struct LogStart {
    /// Appending may go on: the log continues the document on disk and
    /// ends cleanly.
    usable: bool,
    bytes: u64,
    /// The size of the document when it was last written.
    document: u64,
    /// [`StoreOptions::log_bytes`].
    limit: u64,
    /// A backup document exists. Until one does, every save writes the
    /// whole document (cheap while a save is young): the second save of a
    /// new file leaves the first as its backup, as saves always did.
    backup: bool,
}

/// The log may grow to the document's size (at least this) before the
/// document is written again: writing costs, amortised, about twice what
/// changed.
pub const MIN_LOG_BYTES: u64 = 64 * 1024;

impl LogStart {
    /// Saves one batch of changes: appended to the log, or — when the log
    /// cannot take it (none, cut short, grown past the document, a write
    /// failed) — the whole document written anew and the log started
    /// afresh. Any failure leaves the log unusable, so the next attempt
    /// writes the whole document: nothing is ever appended after a line a
    /// failure may have cut short.
    fn write(
        &mut self,
        fs: &mut dyn SaveFs,
        path: &Path,
        copy: &mut PlayerState,
        generation: u64,
        changes: &[Delta],
    ) -> std::io::Result<()> {
        let result = if self.usable
            && self.backup
            && self.limit > 0
            && self.bytes < self.document.max(self.limit)
        {
            persist::append_log(fs, path, generation, &changes).map(|n| self.bytes += n)
        } else {
            self.rewrite(fs, path, copy)
        };
        if result.is_err() {
            self.usable = false;
        }
        result
    }

    fn rewrite(
        &mut self,
        fs: &mut dyn SaveFs,
        path: &Path,
        copy: &mut PlayerState,
    ) -> std::io::Result<()> {
        self.usable = false;
        let previous_epoch = copy.log_epoch;
        // A new document names a log no other document ever named (a
        // random epoch: a damaged main file's log can never be taken for
        // this one's).
        copy.log_epoch = rand::random::<u64>().max(1);
        let bytes = serde_json::to_vec(&*copy).map_err(std::io::Error::other)?;
        // The document about to become the backup keeps its log beside it,
        // so a load from the backup is one document write behind, not more
        // — if that log is the document's own (not a damaged main file's
        // after a load from the backup). Best effort: the backup's log only
        // helps a later rescue, and a stale one is never replayed (epochs).
        let log = persist::log_path(path);
        if path.exists() && persist::log_epoch(path) == Some(previous_epoch) {
            let _ = fs.link_or_copy(&log, &persist::log_path(&persist::backup_path(path)));
        }
        persist::save_atomically(fs, path, &bytes)?;
        self.bytes = persist::start_log(fs, path, copy.log_epoch)?;
        self.document = bytes.len() as u64;
        self.backup = persist::backup_path(path).exists();
        self.usable = true;
        Ok(())
    }
}

struct Writer {
    shared: Arc<(Mutex<Slot>, Condvar)>,
    results: mpsc::Receiver<Result<u64, String>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer with its own copy of the document. It holds the
    /// save's OS lock until its last write is done.
    fn start(
        path: PathBuf,
        mut fs: Box<dyn SaveFs>,
        mut copy: PlayerState,
        lock: Option<persist::SaveLock>,
        log: LogStart,
    ) -> std::io::Result<Writer> {
        let shared = Arc::new((Mutex::new(Slot::default()), Condvar::new()));
        let (tx, results) = mpsc::channel();
        let inner = shared.clone();
        let thread = std::thread::Builder::new()
            .name("player-store-writer".into())
            .spawn(move || {
                let _lock = lock;
                let mut copy_generation = 0;
                let mut log = log;
                loop {
                    let (lock, cv) = &*inner;
                    let batches = {
                        let Ok(mut slot) = lock.lock() else { return };
                        loop {
                            if !slot.batches.is_empty() || slot.rewrite {
                                slot.rewrite = false;
                                break std::mem::take(&mut slot.batches);
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
                    let changes: Vec<Delta> = batches
                        .iter()
                        .flat_map(|(_, deltas)| deltas.iter().cloned())
                        .collect();
                    for (generation, deltas) in batches {
                        for delta in deltas {
                            delta.apply(&mut copy);
                        }
                        copy_generation = generation;
                    }
                    let result = log
                        .write(fs.as_mut(), &path, &mut copy, copy_generation, &changes)
                        .map_err(|e| format!("saving {} failed: {e}", path.display()));
                    // Report on the channel first, so that whoever wakes up on
                    // the condition variable finds the result there too.
                    let _ = tx.send(result.clone().map(|()| copy_generation));
                    let Ok(mut slot) = lock.lock() else { return };
                    match &result {
                        Ok(()) => {
                            slot.durable = slot.durable.max(copy_generation);
                            slot.writes += 1;
                            if slot
                                .failed
                                .as_ref()
                                .is_some_and(|(g, _)| *g <= copy_generation)
                            {
                                slot.failed = None;
                            }
                        }
                        Err(e) => slot.failed = Some((copy_generation, e.clone())),
                    }
                    drop(slot);
                    cv.notify_all();
                }
            })?;
        Ok(Writer {
            shared,
            results,
            thread: Some(thread),
        })
    }

    fn hand_over(&self, generation: u64, deltas: Vec<Delta>, rewrite: bool) {
        // A rewrite (a retry, a load from the backup) writes the whole
        // document: see `LogStart::write`.
        let (lock, cv) = &*self.shared;
        if let Ok(mut slot) = lock.lock() {
            if !deltas.is_empty() || rewrite {
                slot.batches.push((generation, deltas));
            }
            slot.rewrite |= rewrite;
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

/// The single owner of the player's data.
pub struct PlayerStore {
    state: PlayerState,
    path: Option<PathBuf>,
    autosave: bool,
    retry_after: Duration,
    /// Bumped by every change of the state.
    generation: u64,
    /// Changes since the last hand-over.
    deltas: Vec<Delta>,
    save_wanted: bool,
    /// Highest generation handed to the writer.
    handed: u64,
    durable: u64,
    /// The generation whose write failed, while no later one succeeded.
    failing: Option<u64>,
    /// The last failure told to the game (to tell each streak once).
    told_failure: Option<String>,
    retry_at: Option<Instant>,
    writer: Option<Writer>,
    events: VecDeque<StoreEvent>,
    remote_tx: mpsc::Sender<RemoteOp>,
    remote_rx: mpsc::Receiver<RemoteOp>,
    stats: SaveStats,
    /// Loaded from the backup (the main file was damaged or missing).
    from_backup: bool,
}

/// Remote mutations applied per `poll`, so one frame does bounded work.
const REMOTE_PER_POLL: usize = 10_000;

/// Events kept for a game that does not take them.
pub const MAX_EVENTS: usize = 10_000;

/// Who asked for a change: the game's own changes are saved only with
/// `autosave`; trades always.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Game,
    Trade,
}

/// The document at `path` as its log continues it, where the log stands,
/// and whether the log fitted. A log whose changes leave the document
/// inconsistent (it cannot come from this writer) is not used: the
/// document alone is loaded (and reported, like a load from the backup, so
/// the session reconciles with the market), and the next write replaces
/// both.
fn continued_by_log(path: &Path, document: PlayerState) -> (PlayerState, LogStart, bool) {
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    let read: persist::LogRead<Vec<Delta>> = persist::read_log(path, document.log_epoch);
    let mut start = LogStart {
        usable: read.usable,
        bytes: read.bytes,
        document: size,
        limit: MIN_LOG_BYTES,
        backup: true,
    };
    if read.batches.is_empty() {
        return (document, start, true);
    }
    let mut state = document.clone();
    for delta in read.batches.into_iter().flatten() {
        delta.apply(&mut state);
    }
    state.reindex();
    match state.validate() {
        Ok(()) => (state, start, true),
        Err(problems) => {
            tracing::error!(
                ?problems,
                "the save's log does not fit its document; loading the document alone"
            );
            start.usable = false;
            (document, start, false)
        }
    }
}

/// What opening the save at `path` would load — the document continued by
/// its log, or the backup — without opening it (no lock, nothing written):
/// for tools, and tests that look at what is on disk.
pub fn read_saved(path: &Path) -> Result<Option<PlayerState>, LoadError> {
    let loaded = persist::load(path)?;
    Ok(match loaded.state {
        Some(state) if loaded.recovered_from_backup.is_none() => {
            Some(continued_by_log(path, state).0)
        }
        Some(state) => Some(continued_by_log(&persist::backup_path(path), state).0),
        None => None,
    })
}

impl PlayerStore {
    /// Opens (or creates on first save) the save file at `path`. A new
    /// player gets a random device id and `default_name`. Refused with
    /// [`LoadError::Locked`] while another store has the file open.
    pub fn open(
        path: impl AsRef<Path>,
        default_name: &str,
        options: StoreOptions,
    ) -> Result<PlayerStore, LoadError> {
        let path = path.as_ref().to_path_buf();
        let lock = persist::lock(&path)?;
        let loaded = persist::load(&path)?;
        let mut log = LogStart {
            usable: false,
            bytes: 0,
            document: 0,
            limit: options.log_bytes,
            backup: persist::backup_path(&path).exists(),
        };
        let mut recovered = loaded.recovered_from_backup;
        let mut state = match loaded.state {
            // The main document, continued by its log.
            Some(state) if recovered.is_none() => {
                let (state, start, fits) = continued_by_log(&path, state);
                log.usable = start.usable;
                log.bytes = start.bytes;
                log.document = start.document;
                if !fits {
                    recovered = Some(format!(
                        "the changes logged beside {} did not fit it; loaded the document alone",
                        path.display()
                    ));
                }
                state
            }
            // The backup, continued by its own log (kept beside it when it
            // was replaced); the next write starts a fresh document.
            Some(state) => continued_by_log(&persist::backup_path(&path), state).0,
            None => PlayerState::new(new_device_id(), default_name),
        };
        state.reindex();
        let writer = Writer::start(path.clone(), options.fs, state.clone(), lock, log).map_err(
            |source| LoadError::Io {
                path: path.clone(),
                source,
            },
        )?;
        let mut store = Self::build(state, Some(path), Some(writer), options.autosave);
        store.retry_after = options.retry_after;
        if let Some(message) = recovered {
            store.from_backup = true;
            tracing::warn!(%message, "player data recovered from backup");
            store
                .events
                .push_back(StoreEvent::RecoveredFromBackup { message });
            // Write a good main file again at once.
            if let Some(w) = &store.writer {
                w.hand_over(0, Vec::new(), true);
            }
        }
        Ok(store)
    }

    /// True when this store was loaded from the backup: it may lack trades
    /// the market made (the session reconciles it with the server).
    pub fn recovered_from_backup(&self) -> bool {
        self.from_backup
    }

    /// A store without a file (tests, tools, a game that saves elsewhere).
    pub fn in_memory(mut state: PlayerState) -> PlayerStore {
        state.reindex();
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
            deltas: Vec::new(),
            save_wanted: false,
            handed: 0,
            durable: 0,
            failing: None,
            told_failure: None,
            retry_at: None,
            writer,
            events: VecDeque::new(),
            remote_tx,
            remote_rx,
            stats: SaveStats::default(),
            from_backup: false,
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

    pub fn autosave(&self) -> bool {
        self.autosave
    }

    pub fn set_autosave(&mut self, on: bool) {
        self.autosave = on;
        if on && self.generation > self.handed {
            self.save();
        }
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

    fn changed(&mut self, origin: Origin) {
        self.generation += 1;
        if self.autosave || origin == Origin::Trade {
            self.save();
        }
    }

    fn credits_changed(&mut self) {
        self.deltas.push(Delta::Credits(self.state.credits));
        self.push_event(StoreEvent::CreditsChanged {
            available: self.state.credits,
            held: self.state.held_credits(),
        });
    }

    fn item_changed(&mut self, item_id: &str) {
        let count = self.state.item_count(item_id);
        self.deltas.push(Delta::Item(item_id.to_string(), count));
        self.push_event(StoreEvent::InventoryChanged {
            item_id: item_id.to_string(),
            count,
        });
    }

    fn hold_changed(&mut self, hold_id: HoldId) {
        let hold = self.state.holds.get(&hold_id).cloned();
        self.deltas.push(Delta::Hold(hold_id, hold));
    }

    fn counters_changed(&mut self) {
        self.deltas.push(Delta::Counters(
            self.state.next_hold_id,
            self.state.next_op_id,
        ));
    }

    fn kind_changed(&mut self, kind: &HoldKind) {
        match kind {
            HoldKind::Credits { .. } => self.credits_changed(),
            HoldKind::Items { item_id, .. } => self.item_changed(item_id),
            HoldKind::MarketCredits { .. } | HoldKind::MarketItems { .. } => self.market_changed(),
        }
    }

    fn market_changed(&mut self) {
        self.deltas.push(Delta::Market(self.state.market.clone()));
        self.push_event(StoreEvent::MarketAccountChanged {
            credits: self.state.market.credits,
            held: self.state.market_held_credits(),
            version: self.state.market.version,
        });
    }

    /// Records the server's economy policy (from a login).
    pub fn set_market_mode(&mut self, mode: marketplace_protocol::EconomyMode) {
        if self.state.market.mode != mode {
            self.state.market.mode = mode;
            self.market_changed();
            self.changed(Origin::Trade);
        }
    }

    /// Takes the server's view of the market account if it is newer.
    pub fn set_market(
        &mut self,
        mode: marketplace_protocol::EconomyMode,
        account: &marketplace_protocol::Account,
    ) {
        if self.state.set_market(mode, account) {
            self.market_changed();
            self.changed(Origin::Trade);
        }
    }

    /// Takes a newer view of the account, keeping the policy.
    pub fn set_market_view(&mut self, account: &marketplace_protocol::Account) {
        let mode = self.state.market.mode;
        self.set_market(mode, account);
    }

    pub fn add_credits(&mut self, delta: i64) -> Result<i64, StateError> {
        let n = self.state.add_credits(delta)?;
        self.credits_changed();
        self.changed(Origin::Game);
        Ok(n)
    }

    pub fn add_item(&mut self, item_id: &str, quantity: i64) -> Result<i64, StateError> {
        let n = self.state.add_item(item_id, quantity)?;
        self.item_changed(item_id);
        self.changed(Origin::Game);
        Ok(n)
    }

    pub fn remove_item(&mut self, item_id: &str, quantity: i64) -> Result<i64, StateError> {
        let n = self.state.remove_item(item_id, quantity)?;
        self.item_changed(item_id);
        self.changed(Origin::Game);
        Ok(n)
    }

    pub fn reserve_credits(&mut self, amount: i64) -> Result<HoldId, StateError> {
        self.hold(HoldKind::Credits { amount }, Origin::Game)
    }

    pub fn escrow_items(&mut self, item_id: &str, quantity: i64) -> Result<HoldId, StateError> {
        self.hold(
            HoldKind::Items {
                item_id: item_id.to_string(),
                quantity,
            },
            Origin::Game,
        )
    }

    fn hold(&mut self, kind: HoldKind, origin: Origin) -> Result<HoldId, StateError> {
        let hold_id = match &kind {
            HoldKind::Credits { amount } => self.state.reserve_credits(*amount)?,
            HoldKind::Items { item_id, quantity } => self.state.escrow_items(item_id, *quantity)?,
            HoldKind::MarketCredits { amount } => self.state.reserve_market_credits(*amount)?,
            HoldKind::MarketItems { item_id, quantity } => {
                self.state.escrow_market_items(item_id, *quantity)?
            }
        };
        self.hold_changed(hold_id);
        self.counters_changed();
        self.kind_changed(&kind);
        self.events
            .push_back(StoreEvent::HoldPlaced { hold_id, kind });
        self.changed(origin);
        Ok(hold_id)
    }

    /// Releases a hold the game placed itself (not one of a pending trade).
    pub fn release_hold(&mut self, hold_id: HoldId, reason: &str) -> Result<(), StateError> {
        let kind = self.state.release_hold(hold_id)?;
        self.hold_changed(hold_id);
        self.push_event(StoreEvent::HoldReleased {
            hold_id,
            reason: reason.to_string(),
        });
        self.kind_changed(&kind);
        self.changed(Origin::Game);
        Ok(())
    }

    /// Commits a hold the game placed itself (not one of a pending trade).
    pub fn commit_hold(&mut self, hold_id: HoldId) -> Result<(), StateError> {
        let kind = self.state.commit_hold(hold_id)?;
        self.hold_changed(hold_id);
        self.push_event(StoreEvent::HoldCommitted { hold_id });
        self.kind_changed(&kind);
        self.changed(Origin::Game);
        Ok(())
    }

    /// Sets the identity used to log in (kept in the save file, so restarts
    /// log in as the same player and can settle its pending trades). A new
    /// device forgets the server's player id until the next login.
    pub fn set_identity(&mut self, device_id: &str, name: &str) -> Result<(), StateError> {
        marketplace_protocol::check_id("device_id", device_id)
            .map_err(StateError::InvalidItemId)?;
        marketplace_protocol::check_name(name).map_err(StateError::InvalidItemId)?;
        if self.state.device_id != device_id || self.state.player_name != name {
            if self.state.device_id != device_id {
                self.state.player_id = None;
            }
            self.state.device_id = device_id.to_string();
            self.state.player_name = name.to_string();
            self.identity_changed();
        }
        Ok(())
    }

    /// Records whether the last login was by identity token (see
    /// [`PlayerState::identity_login`]).
    pub fn set_identity_login(&mut self, by_token: bool) {
        if self.state.identity_login != by_token {
            self.state.identity_login = by_token;
            self.identity_changed();
        }
    }

    /// Records who the server says we are.
    pub fn set_player(&mut self, player_id: i64, name: &str) {
        if self.state.player_id != Some(player_id) || self.state.player_name != name {
            self.state.player_id = Some(player_id);
            self.state.player_name = name.to_string();
            self.identity_changed();
        }
    }

    fn identity_changed(&mut self) {
        self.deltas.push(Delta::Identity {
            device_id: self.state.device_id.clone(),
            player_name: self.state.player_name.clone(),
            player_id: self.state.player_id,
            identity_login: self.state.identity_login,
        });
        self.changed(Origin::Trade);
    }

    /// Places a trade's hold (reserved credits or escrowed items) and
    /// journals the operation that will settle it, in one change. The
    /// operation may be sent once [`PlayerStore::durable_generation`] reaches
    /// the generation this returns.
    pub fn begin_trade(
        &mut self,
        key: String,
        op: MarketChange,
        hold: Option<HoldKind>,
        created_at: i64,
    ) -> Result<OpId, StateError> {
        self.begin_bound_trade(key, op, hold, created_at, None)
    }

    /// [`PlayerStore::begin_trade`] already bound to its market and player
    /// (`owner`), in one journal change.
    pub fn begin_bound_trade(
        &mut self,
        key: String,
        op: MarketChange,
        hold: Option<HoldKind>,
        created_at: i64,
        owner: Option<crate::state::Owner>,
    ) -> Result<OpId, StateError> {
        let hold_id = match hold {
            Some(kind) => Some(self.hold(kind, Origin::Trade)?),
            None => None,
        };
        let id = self.state.journal_op(key, op, hold_id, created_at);
        if let Some(owner) = owner {
            if let Some(pending) = self.state.journal.get_mut(&id) {
                pending.owner = Some(owner);
            }
        }
        self.deltas
            .push(Delta::Op(id, self.state.journal.get(&id).cloned()));
        self.counters_changed();
        self.changed(Origin::Trade);
        Ok(id)
    }

    /// Journals a marketplace operation (with the hold it settles).
    pub fn begin_op(
        &mut self,
        key: String,
        op: MarketChange,
        hold: Option<HoldId>,
        created_at: i64,
    ) -> OpId {
        let id = self.state.journal_op(key, op, hold, created_at);
        self.deltas
            .push(Delta::Op(id, self.state.journal.get(&id).cloned()));
        self.counters_changed();
        self.changed(Origin::Trade);
        id
    }

    /// Binds a journaled operation to its market and player (saved like any
    /// trade change; it is sent once that save is on disk).
    pub fn bind_op(&mut self, op_id: OpId, owner: &crate::state::Owner) -> bool {
        if !self.state.bind_op(op_id, owner) {
            return false;
        }
        self.deltas
            .push(Delta::Op(op_id, self.state.journal.get(&op_id).cloned()));
        self.changed(Origin::Trade);
        true
    }

    /// Compares a page of the server's record of `owner`'s operations with
    /// the save and applies again what it lost (see
    /// [`PlayerState::reconcile`]); saved like a trade.
    pub fn reconcile(
        &mut self,
        owner: &crate::state::Owner,
        page: &marketplace_protocol::OperationsPage,
    ) -> Vec<crate::state::Recovered> {
        let before = self.state.sync.get(&owner.server_id).cloned();
        let recovered = self.state.reconcile(owner, page, unix_now());
        let after = self.state.sync.get(&owner.server_id).cloned();
        if before == after && recovered.is_empty() {
            return recovered;
        }
        self.deltas
            .push(Delta::Sync(owner.server_id.clone(), after));
        let mut credits = false;
        for r in &recovered {
            credits |= r.credits != 0;
            for (item, _) in &r.items {
                self.item_changed(item);
            }
        }
        if credits {
            self.credits_changed();
        }
        // What was recovered is saved like a trade; a mark that only moved
        // rides with the next save (it describes the state saved with it).
        self.changed(if recovered.is_empty() {
            Origin::Game
        } else {
            Origin::Trade
        });
        recovered
    }

    /// Notes notifications as shown (see [`PlayerState::note_notices`]);
    /// returns the new ones. The note is saved like a trade: a game hears
    /// of a notification once it is on disk, and never again.
    pub fn note_notices<'a>(
        &mut self,
        owner: &crate::state::Owner,
        notices: &'a [marketplace_protocol::Notification],
    ) -> Vec<&'a marketplace_protocol::Notification> {
        let fresh = self.state.note_notices(owner, notices);
        if !fresh.is_empty() {
            let mark = self.state.sync.get(&owner.server_id).cloned();
            self.deltas.push(Delta::Sync(owner.server_id.clone(), mark));
            self.changed(Origin::Trade);
        }
        fresh
    }

    /// After a complete, unblocked reconciliation with `server_id`: forgets
    /// noted keys no listing confirmed for a long time.
    pub fn forget_stale_keys(&mut self, server_id: &str) {
        if self.state.forget_stale_keys(server_id, unix_now()) {
            let mark = self.state.sync.get(server_id).cloned();
            self.deltas.push(Delta::Sync(server_id.to_string(), mark));
            self.changed(Origin::Game);
        }
    }

    /// Moves every journaled operation bound to `from` to `to` (a market
    /// that announced no id, bound by its address, announces one now).
    pub fn rebind_ops(&mut self, from: &crate::state::Owner, to: &crate::state::Owner) {
        let ids: Vec<OpId> = self
            .state
            .journal
            .iter()
            .filter(|(_, p)| p.owner.as_ref() == Some(from))
            .map(|(id, _)| *id)
            .collect();
        let moved = !ids.is_empty();
        for id in ids {
            if let Some(op) = self.state.journal.get_mut(&id) {
                op.owner = Some(to.clone());
                self.deltas.push(Delta::Op(id, Some(op.clone())));
            }
        }
        if moved {
            self.changed(Origin::Trade);
        }
    }

    /// Applies the definitive outcome of a journaled operation exactly once:
    /// the hold is committed or released, what came in is credited, and the
    /// operation leaves the journal — all or nothing. Costs the same however
    /// many trades are pending.
    pub fn settle_op(&mut self, op_id: OpId, outcome: &OpOutcome) -> Result<(), StateError> {
        // An applied operation is noted in its market's sync mark, so that a
        // reconciliation knows this save contains it.
        let noted = match (outcome, self.state.journal.get(&op_id)) {
            (OpOutcome::Applied(_), Some(p)) => p.owner.clone().map(|o| (o, p.key.clone())),
            _ => None,
        };
        let Some(Settled {
            hold,
            items_in,
            credits_in,
            market_changed,
            ..
        }) = self.state.settle(op_id, outcome)?
        else {
            return Ok(()); // settled already
        };
        self.deltas.push(Delta::Op(op_id, None));
        if let Some((owner, key)) = noted {
            if let Some(noted) = self.state.note_applied(&owner, &key, unix_now()) {
                self.deltas.push(Delta::Noted(noted));
            }
        }
        let mut credits = credits_in != 0;
        let mut items: Vec<String> = Vec::new();
        if let Some((hold_id, kind, committed)) = hold {
            self.hold_changed(hold_id);
            self.push_event(if committed {
                StoreEvent::HoldCommitted { hold_id }
            } else {
                StoreEvent::HoldReleased {
                    hold_id,
                    reason: match outcome {
                        OpOutcome::Rejected { reason } => reason.clone(),
                        OpOutcome::Applied(_) => String::new(),
                    },
                }
            });
            match kind {
                HoldKind::Credits { .. } => credits = true,
                HoldKind::Items { item_id, .. } => items.push(item_id),
                HoldKind::MarketCredits { .. } | HoldKind::MarketItems { .. } => {}
            }
        }
        if let Some((item_id, _)) = items_in {
            if !items.contains(&item_id) {
                items.push(item_id);
            }
        }
        for item in &items {
            self.item_changed(item);
        }
        if credits {
            self.credits_changed();
        }
        if market_changed {
            self.market_changed();
        }
        self.changed(Origin::Trade);
        Ok(())
    }

    /// Asks for a save. Never blocks: the write happens on the writer thread
    /// after the next `poll`, together with every other save of the frame.
    pub fn save(&mut self) {
        self.stats.save_calls += 1;
        self.save_wanted = true;
    }

    /// Applies queued remote mutations, collects the writer's results and
    /// hands the frame's changes to the writer. Call once per frame.
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
                self.push_event(StoreEvent::RemoteRejected {
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
                        self.told_failure = None;
                    }
                    // True to its word: only when nothing newer waits.
                    if self.durable >= self.generation {
                        self.push_event(StoreEvent::Saved { generation });
                    }
                }
                Err(message) => {
                    self.failing = Some(self.handed);
                    self.retry_at = Some(Instant::now() + self.retry_after);
                    self.save_wanted = true;
                    if self.told_failure.as_deref() != Some(message.as_str()) {
                        tracing::warn!(%message, "save failed; retrying");
                        self.told_failure = Some(message.clone());
                        self.push_event(StoreEvent::SaveFailed { message });
                    } else {
                        tracing::debug!(%message, "save failed again");
                    }
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
            self.deltas.clear();
            return;
        };
        if !force && self.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let retry = self.failing.is_some();
        if self.deltas.is_empty() && !retry && !force {
            // Nothing new since the last hand-over.
            self.save_wanted = false;
            return;
        }
        // The next frame's batch starts as large as this one was, so a burst
        // of trades does not regrow it call by call on the main thread.
        let room = self.deltas.len();
        let deltas = std::mem::replace(&mut self.deltas, Vec::with_capacity(room));
        writer.hand_over(self.generation, deltas, retry || force);
        self.handed = self.generation;
        self.stats.snapshots += 1;
        self.save_wanted = false;
    }

    /// Writes the current state now and waits until it is on disk (or the
    /// write failed, or `timeout` passed). For quitting the game.
    pub fn flush(&mut self, timeout: Duration) -> Result<(), String> {
        self.poll();
        let Some(shared) = self.writer.as_ref().map(|w| w.shared.clone()) else {
            return Ok(());
        };
        let target = self.generation;
        if self.handed < target || self.failing.is_some() || !self.deltas.is_empty() {
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

    /// Queues an event for the game; a game that never takes them keeps at
    /// most the newest [`MAX_EVENTS`].
    fn push_event(&mut self, event: StoreEvent) {
        if self.events.len() >= MAX_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    /// Writes what was asked to be saved (trades, and the game's changes
    /// with `autosave` on or after `save()`) and waits for it — but not the
    /// game's own unsaved changes with `autosave` off. For quitting.
    pub fn flush_wanted(&mut self, timeout: Duration) -> Result<(), String> {
        self.poll();
        if self.save_wanted || self.failing.is_some() {
            return self.flush(timeout);
        }
        let Some(shared) = self.writer.as_ref().map(|w| w.shared.clone()) else {
            return Ok(());
        };
        let target = self.handed;
        let (lock, cv) = &*shared;
        let deadline = Instant::now() + timeout;
        let mut slot = lock.lock().map_err(|_| "save writer crashed".to_string())?;
        while slot.durable < target && slot.failed.is_none() {
            let now = Instant::now();
            if now >= deadline {
                return Err(format!("save did not finish within {timeout:?}"));
            }
            slot = match cv.wait_timeout(slot, deadline - now) {
                Ok((s, _)) => s,
                Err(_) => return Err("save writer crashed".into()),
            };
        }
        // The writer stopped on a failure before reaching the target: what
        // was handed to it is not on disk.
        let outcome = match &slot.failed {
            Some((_, e)) if slot.durable < target => Err(e.clone()),
            _ => Ok(()),
        };
        drop(slot);
        self.collect_results();
        outcome
    }

    /// Moves pending events into `out`.
    pub fn drain_events(&mut self, out: &mut Vec<StoreEvent>) {
        out.extend(self.events.drain(..));
    }

    /// Takes the oldest pending event (for emitting one at a time while
    /// handlers may cause new ones).
    pub fn next_event(&mut self) -> Option<StoreEvent> {
        self.events.pop_front()
    }
}

impl Drop for PlayerStore {
    /// Hands the changes that asked to be saved to the writer; the writer's
    /// own drop finishes the write before the thread ends and the lock is
    /// released. (With `autosave` off, game changes nobody saved are not
    /// written: the game decides when its progress is kept.)
    fn drop(&mut self) {
        if self.writer.is_some() && (self.save_wanted || self.failing.is_some()) {
            self.hand_to_writer(true);
        }
    }
}

fn new_device_id() -> String {
    format!(
        "dev-{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}
