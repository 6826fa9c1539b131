//! One save file and everything attached to it: the [`PlayerStore`], its
//! [`TradingSession`], and the events waiting to become signals.
//!
//! # Why the nodes do not own these
//! A Godot node's life is short and its moments are not ours: scenes change,
//! nodes are reparented and freed, the tree is paused. A trade is longer
//! than any of that. So the store and the session live in a [`SaveSlot`],
//! kept by a main-thread registry keyed by the save file, and the nodes only
//! attach to it:
//! - `LocalPlayerData` opens (or re-attaches to) the slot of its
//!   `save_path`; `TradingMarketplace` attaches to the slot of its
//!   `player_data` and gives it a session with its settings.
//! - A freed node detaches and the slot stays (nothing blocks the frame): a
//!   new scene's nodes on the same save pick it up where it was, trades in
//!   flight included.
//! - Every frame the first of our nodes' `_frame` ticks every slot once, so
//!   trades keep settling while *any* of our nodes exists, paused tree
//!   included.
//! - Quitting the game (the extension's deinitialisation) shuts every slot
//!   down: in-flight requests get their grace period, the journal of what
//!   is still pending is flushed for the next start.
//!
//! No node ever binds another: a `TradingMarketplace` reaches the store
//! through the slot, never through the `LocalPlayerData` node, so a signal
//! handler may call any method of either node at any moment.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::Duration;

use marketplace_client::client::ClientConfig;
use marketplace_client::persist::LoadError;
use marketplace_client::{ClientError, PlayerStore, SessionEvent, StoreOptions, TradingSession};

/// Events a slot keeps for nodes that are not there to hear them, at most.
const MAX_QUEUED: usize = 10_000;

pub struct SaveSlot {
    path: PathBuf,
    /// This opening's number (requests name their save by it; a file
    /// opened again is a new serial).
    serial: u64,
    pub store: PlayerStore,
    pub session: Option<TradingSession>,
    /// Grace for requests in flight when the game quits.
    pub shutdown_grace: Duration,
    /// Whether a `LocalPlayerData` node listens to the store's events.
    pub data_attached: bool,
    /// Session events, one queue per attached `TradingMarketplace`.
    listeners: Vec<(u64, VecDeque<SessionEvent>)>,
    /// Events no node is left to hear: they still complete their
    /// `MarketRequest`s (an `await` outlives the node that made it).
    orphans: VecDeque<SessionEvent>,
    /// Notifications nobody was there to hear (saved and acknowledged
    /// already): told to the next `TradingMarketplace` that attaches.
    unheard: VecDeque<SessionEvent>,
    last_tick: u64,
    /// Closed by a save-slot switch: whoever still holds it lets go.
    pub closed: bool,
}

pub type SlotRef = Rc<RefCell<SaveSlot>>;

thread_local! {
    /// Every open save, by file. Main thread only (Godot calls nodes there).
    static SLOTS: RefCell<HashMap<PathBuf, SlotRef>> = RefCell::new(HashMap::new());
    /// The save each live `LocalPlayerData` node (by instance id) has open.
    static DATA: RefCell<HashMap<i64, SlotRef>> = RefCell::new(HashMap::new());
    static NEXT_LISTENER: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
    static NEXT_SERIAL: std::cell::Cell<u64> = const { std::cell::Cell::new(1) };
    /// The frame `tick_all` last ran in.
    static TICKED: std::cell::Cell<u64> = const { std::cell::Cell::new(u64::MAX) };
}

/// Opens the save at `path`, or returns the slot already open for it.
pub fn open(path: &Path, default_name: &str, autosave: bool) -> Result<(SlotRef, bool), LoadError> {
    if let Some(slot) = SLOTS.with(|s| s.borrow().get(path).cloned()) {
        return Ok((slot, false));
    }
    let store = PlayerStore::open(
        path,
        default_name,
        StoreOptions {
            autosave,
            ..StoreOptions::default()
        },
    )?;
    let slot = Rc::new(RefCell::new(SaveSlot {
        path: path.to_path_buf(),
        serial: NEXT_SERIAL.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        }),
        store,
        session: None,
        shutdown_grace: Duration::from_secs(1),
        data_attached: false,
        listeners: Vec::new(),
        orphans: VecDeque::new(),
        unheard: VecDeque::new(),
        last_tick: u64::MAX,
        closed: false,
    }));
    SLOTS.with(|s| s.borrow_mut().insert(path.to_path_buf(), slot.clone()));
    Ok((slot, true))
}

/// Records that the `LocalPlayerData` node `instance_id` has `slot` open.
pub fn attach_data(instance_id: godot::prelude::InstanceId, slot: &SlotRef) {
    DATA.with(|d| d.borrow_mut().insert(instance_id.to_i64(), slot.clone()));
}

/// Forgets which node had `slot` open.
pub fn detach_data(slot: &SlotRef) {
    DATA.with(|d| d.borrow_mut().retain(|_, s| !Rc::ptr_eq(s, slot)));
}

/// The save the `LocalPlayerData` node `instance_id` has open, if any.
pub fn slot_of(instance_id: godot::prelude::InstanceId) -> Option<SlotRef> {
    DATA.with(|d| d.borrow().get(&instance_id.to_i64()).cloned())
}

/// Closes a slot with nothing pending (a save-slot switch): its file is
/// flushed and its lock released at once — whoever still holds the slot
/// finds it `closed` and lets go. Blocks briefly (one write, and up to
/// about 0.1 s for reads still in flight).
pub fn close(slot: &SlotRef) {
    let (path, serial) = {
        let s = slot.borrow();
        (s.path.clone(), s.serial)
    };
    SLOTS.with(|s| s.borrow_mut().remove(&path));
    let (session, store) = {
        let mut s = slot.borrow_mut();
        s.closed = true;
        // The real store leaves the slot (and is dropped below: its writer
        // finishes, the lock goes); a blank one stays for late readers.
        let blank = PlayerStore::in_memory(marketplace_client::PlayerState::new("", ""));
        (s.session.take(), std::mem::replace(&mut s.store, blank))
    };
    let mut store = store;
    // What nobody will hear from this slot any more still completes its
    // requests (next tick: the caller may be a bound node).
    {
        let mut guard = slot.borrow_mut();
        let s = &mut *guard;
        let queued: Vec<SessionEvent> = s
            .listeners
            .drain(..)
            .flat_map(|(_, q)| q)
            .chain(s.orphans.drain(..))
            .collect();
        for event in queued {
            crate::request::complete_later(event);
        }
    }
    let result = match session {
        Some(session) => {
            let done = session.shutdown(&mut store, Duration::ZERO);
            for event in done.told {
                crate::request::complete_later(event);
            }
            // Settled in memory, not on disk: the awaiting code hears "not
            // known yet"; the journal on disk settles them on the next open.
            for event in done.untold.iter().filter_map(SessionEvent::not_known_yet) {
                crate::request::complete_later(event);
            }
            if done.saved {
                Ok(())
            } else {
                Err(
                    "the final save failed; trades answered meanwhile settle on the next open"
                        .to_string(),
                )
            }
        }
        None => store.flush_wanted(Duration::from_secs(5)),
    };
    crate::request::close_slot_later(serial);
    drop(store);
    if let Err(e) = result {
        godot::global::godot_warn!("LocalPlayerData: saving {} failed: {e}", path.display());
    }
}

/// Ticks every open slot once for `frame` (the engine's process frame
/// counter): what the first of our nodes' `_frame` each frame does.
pub fn tick_all(frame: u64, max_events: usize, budget: Duration) {
    if TICKED.with(|t| t.replace(frame)) != frame {
        // Once a frame, before new answers come in.
        crate::request::give_up_due();
    }
    let slots: Vec<SlotRef> = SLOTS.with(|s| s.borrow().values().cloned().collect());
    for slot in slots {
        let orphans = match slot.try_borrow_mut() {
            Ok(mut s) => {
                s.tick(frame, max_events, budget);
                std::mem::take(&mut s.orphans)
            }
            Err(_) => continue,
        };
        // Nothing borrowed: an awaiting script may call anything.
        for event in &orphans {
            crate::request::complete(event, None);
        }
    }
    crate::request::run_deferred();
}

/// Takes a cancelled request's events out of the queues of the save
/// `serial`; true when its answer was there (nothing more will come).
pub fn purge_answer(serial: u64, id: i64) -> bool {
    let slot = SLOTS.with(|s| {
        s.borrow()
            .values()
            .find(|slot| slot.try_borrow().is_ok_and(|s| s.serial == serial))
            .cloned()
    });
    slot.and_then(|slot| slot.try_borrow_mut().ok().map(|mut s| s.purge(id)))
        .unwrap_or(false)
}

/// Shuts every slot down for good (the game quits): in-flight requests get
/// their grace, the rest stays journaled on disk for the next start.
pub fn shutdown_all() {
    let slots: Vec<(PathBuf, SlotRef)> = SLOTS.with(|s| s.borrow_mut().drain().collect());
    for (path, slot) in slots {
        let Ok(mut guard) = slot.try_borrow_mut() else {
            continue;
        };
        let s = &mut *guard;
        let grace = s.shutdown_grace;
        if let Some(session) = s.session.take() {
            let done = session.shutdown(&mut s.store, grace);
            if !done.saved {
                godot::global::godot_error!(
                    "LocalPlayerData: final save of {} failed; {} trade(s) still pending and {} answered while quitting settle on the next start",
                    path.display(),
                    s.store.state().journal.len(),
                    done.untold.len()
                );
            } else if !done.told.is_empty() {
                godot::global::godot_print!(
                    "TradingMarketplace: {} answers arrived while quitting; their effects are saved",
                    done.told.len()
                );
            }
        } else if let Err(e) = s.store.flush(Duration::from_secs(5)) {
            godot::global::godot_error!(
                "LocalPlayerData: final save of {} failed: {e}",
                path.display()
            );
        }
    }
}

impl SaveSlot {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// This opening of the file (see `serial`).
    pub fn serial(&self) -> u64 {
        self.serial
    }

    /// How many trades wait for their answer (or to be sent).
    pub fn pending_trades(&self) -> usize {
        self.store.state().journal.len()
    }

    /// Starts the session with `config`, or applies `config` to the running one.
    pub fn configure(&mut self, config: ClientConfig) -> Result<(), ClientError> {
        match &mut self.session {
            Some(session) => session.set_config(&self.store, config),
            None => {
                self.session = Some(TradingSession::new(config, &mut self.store)?);
                Ok(())
            }
        }
    }

    /// A new listener for session events; returns its id.
    pub fn listen(&mut self) -> u64 {
        let id = NEXT_LISTENER.with(|n| {
            let id = n.get();
            n.set(id + 1);
            id
        });
        // The first to attach hears what happened while nobody listened.
        let queue = std::mem::take(&mut self.unheard);
        self.listeners.push((id, queue));
        id
    }

    /// Removes a listener; if it was the last, what it had not heard yet
    /// still completes its requests (next tick), and its notifications
    /// wait for the next node to attach.
    pub fn unlisten(&mut self, id: u64) {
        if let Some(i) = self.listeners.iter().position(|(l, _)| *l == id) {
            let (_, queue) = self.listeners.remove(i);
            if self.listeners.is_empty() {
                self.deliver(queue.into());
            }
        }
    }

    /// The oldest session event for listener `id`.
    pub fn next_for(&mut self, id: u64) -> Option<SessionEvent> {
        self.listeners
            .iter_mut()
            .find(|(l, _)| *l == id)
            .and_then(|(_, q)| q.pop_front())
    }

    /// One frame of work, once per frame whoever asks first.
    fn tick(&mut self, frame: u64, max_events: usize, budget: Duration) {
        if self.last_tick == frame {
            return;
        }
        self.last_tick = frame;
        match &mut self.session {
            Some(session) => {
                let mut out = Vec::new();
                session.poll_within(&mut self.store, max_events, Some(budget), &mut out);
                self.deliver(out);
            }
            None => self.store.poll(),
        }
        if !self.data_attached {
            // Nobody listens: the effects are in the store and on disk.
            while self.store.next_event().is_some() {}
        }
    }

    fn deliver(&mut self, mut events: Vec<SessionEvent>) {
        // Answers to reads the game cancelled go no further.
        events.retain(|e| !crate::request::drop_if_cancelled(e));
        let n = self.listeners.len();
        if n == 0 {
            for event in events {
                match event {
                    SessionEvent::Notification { .. } | SessionEvent::DeliveriesWaiting { .. } => {
                        if self.unheard.len() >= MAX_QUEUED {
                            self.unheard.pop_front();
                        }
                        self.unheard.push_back(event);
                    }
                    // Hints for a screen nobody shows.
                    SessionEvent::MarketChanged { .. }
                    | SessionEvent::MarketLive { .. }
                    | SessionEvent::MarketReload => {}
                    other => self.orphans.push_back(other),
                }
            }
            return;
        }
        for event in events {
            for (i, (_, queue)) in self.listeners.iter_mut().enumerate() {
                if queue.len() >= MAX_QUEUED {
                    // The node is not listening (out of the tree?): its
                    // oldest event still completes its request.
                    if let Some(dropped) = queue.pop_front() {
                        crate::request::complete_later(dropped);
                    }
                }
                if i + 1 == n {
                    queue.push_back(event);
                    break;
                }
                queue.push_back(event.clone());
            }
        }
    }

    /// Takes request `id`'s events out of every queue (the game cancelled
    /// it); true when its answer was among them.
    fn purge(&mut self, id: i64) -> bool {
        let mut answered = false;
        let mut keep = |e: &SessionEvent| {
            let mine = e.request_id().is_some_and(|r| r.0 as i64 == id);
            answered |= mine && crate::data::ends_request(e);
            !mine
        };
        for (_, queue) in &mut self.listeners {
            queue.retain(&mut keep);
        }
        self.orphans.retain(&mut keep);
        answered
    }

    /// Local refusal, or a session-less one: reported to every listener.
    pub fn refuse(&mut self, listing_id: Option<i64>, error: ClientError) -> Option<i64> {
        self.session
            .as_mut()
            .map(|s| s.refuse(listing_id, error).0 as i64)
    }
}
