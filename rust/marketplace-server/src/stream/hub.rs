//! One replica's side of the stream: a task tails `stream_events` and
//! hands each new event, once, to every subscriber of this replica
//! through a broadcast channel.
//!
//! The table is the stream; the hub keeps nothing a replica could lose.
//! Every replica reads the same rows in the same `seq` order, so a client
//! that resumes on another replica (after a SIGKILL, behind a load
//! balancer) gets the same stream. The tailer is woken at once by this
//! replica's commits ([`Hub::wake`]) and polls for the other replicas'
//! (`--stream-poll-ms`).
//!
//! A slow subscriber never slows anyone: the broadcast channel is a ring
//! of `--stream-buffer` events that senders overwrite; a subscriber that falls
//! behind by more is told `lagged` and cut off, and resumes from its last
//! `seq` on its next connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use tokio::sync::{broadcast, watch, Notify};

use crate::db::Db;

/// Rows read per poll.
const BATCH: i64 = 1000;

/// One event as every subscriber sends it: the SSE frame, built once.
pub struct Frame {
    pub seq: i64,
    pub item_id: Option<String>,
    pub owner_id: Option<i64>,
    pub recipient_id: Option<i64>,
    pub text: Bytes,
}

/// The events in `(after, through]`, oldest first, at most `limit`.
pub async fn read_frames(
    db: &Db,
    after: i64,
    through: i64,
    limit: i64,
) -> Result<Vec<Frame>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, item_id, owner_id, recipient_id, body FROM stream_events \
         WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
    )
    .bind(after)
    .bind(through)
    .bind(limit)
    .fetch_all(db.reader())
    .await?;
    rows.iter()
        .map(|r| {
            use sqlx::Row;
            let body: String = r.try_get("body")?;
            Ok(Frame::new(
                r.try_get("seq")?,
                r.try_get("item_id")?,
                r.try_get("owner_id")?,
                r.try_get("recipient_id")?,
                &body,
            ))
        })
        .collect()
}

impl Frame {
    pub fn new(
        seq: i64,
        item_id: Option<String>,
        owner_id: Option<i64>,
        recipient_id: Option<i64>,
        body: &str,
    ) -> Frame {
        Frame {
            seq,
            item_id,
            owner_id,
            recipient_id,
            text: Bytes::from(format!("id: {seq}\nevent: market\ndata: {body}\n\n")),
        }
    }
}

/// What a subscriber asked for.
pub struct Filter {
    pub player_id: i64,
    /// Public events of these items; empty: of every item.
    pub items: Vec<String>,
    /// False: only the player's own events.
    pub market: bool,
}

impl Filter {
    pub fn wants(&self, f: &Frame) -> bool {
        match f.recipient_id {
            Some(r) => r == self.player_id,
            None => {
                f.owner_id == Some(self.player_id)
                    || (self.market
                        && (self.items.is_empty()
                            || f.item_id
                                .as_deref()
                                .is_some_and(|i| self.items.iter().any(|x| x == i))))
            }
        }
    }
}

/// Per player: each open subscription's id and the sender that ends it.
type Subscriptions = HashMap<i64, Vec<(u64, watch::Sender<bool>)>>;

pub struct Hub {
    frames: broadcast::Sender<Arc<Frame>>,
    /// The newest `seq` handed to the channel.
    head: AtomicI64,
    /// Events up to this `seq` may be pruned: a resume from before it reloads.
    pruned_through: AtomicI64,
    wake: Notify,
    /// Open subscriptions per player, each with the sender that ends it.
    open: Mutex<Subscriptions>,
    next_id: AtomicU64,
    total: AtomicUsize,
    /// Events handed out, subscribers cut off for lagging, replaced.
    pub published: AtomicU64,
    pub lagged: AtomicU64,
}

impl Hub {
    pub fn new(ring: usize) -> Hub {
        Hub {
            frames: broadcast::channel(ring.max(1)).0,
            head: AtomicI64::new(0),
            pruned_through: AtomicI64::new(0),
            wake: Notify::new(),
            open: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            total: AtomicUsize::new(0),
            published: AtomicU64::new(0),
            lagged: AtomicU64::new(0),
        }
    }

    /// This replica committed events: read them now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Acquire)
    }

    pub fn pruned_through(&self) -> i64 {
        self.pruned_through.load(Ordering::Acquire)
    }

    pub fn subscribers(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// The stream's figures in the Prometheus text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP market_stream_subscribers Open stream connections on this replica."
        );
        let _ = writeln!(out, "# TYPE market_stream_subscribers gauge");
        let _ = writeln!(out, "market_stream_subscribers {}", self.subscribers());
        let _ = writeln!(
            out,
            "# HELP market_stream_head The newest event this replica has read."
        );
        let _ = writeln!(out, "# TYPE market_stream_head gauge");
        let _ = writeln!(out, "market_stream_head {}", self.head());
        let _ = writeln!(
            out,
            "# HELP market_stream_events_total Events this replica handed to its subscribers."
        );
        let _ = writeln!(out, "# TYPE market_stream_events_total counter");
        let _ = writeln!(
            out,
            "market_stream_events_total {}",
            self.published.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP market_stream_lagged_total Subscribers cut off for reading too slowly."
        );
        let _ = writeln!(out, "# TYPE market_stream_lagged_total counter");
        let _ = writeln!(
            out,
            "market_stream_lagged_total {}",
            self.lagged.load(Ordering::Relaxed)
        );
    }

    /// Subscribes to the frames after [`Hub::head`] (read it after this).
    pub fn receiver(&self) -> broadcast::Receiver<Arc<Frame>> {
        self.frames.subscribe()
    }

    /// Admits a subscription of `player_id`. At `per_player` open ones the
    /// oldest is ended (a client that reconnects before its old connection
    /// was found dead must not lock itself out); at `max` in all, none.
    pub fn admit(
        self: &Arc<Self>,
        player_id: i64,
        per_player: usize,
        max: usize,
    ) -> Option<Admission> {
        let mut open = self.open.lock().ok()?;
        let mine = open.entry(player_id).or_default();
        while !mine.is_empty() && mine.len() >= per_player.max(1) {
            let (_, end) = mine.remove(0);
            let _ = end.send(true);
            self.total.fetch_sub(1, Ordering::Relaxed);
        }
        if self.total.load(Ordering::Relaxed) >= max {
            if mine.is_empty() {
                open.remove(&player_id);
            }
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (end, ended) = watch::channel(false);
        mine.push((id, end));
        self.total.fetch_add(1, Ordering::Relaxed);
        Some(Admission {
            hub: self.clone(),
            player_id,
            id,
            ended,
        })
    }

    fn release(&self, player_id: i64, id: u64) {
        if let Ok(mut open) = self.open.lock() {
            if let Some(mine) = open.get_mut(&player_id) {
                if let Some(i) = mine.iter().position(|(x, _)| *x == id) {
                    mine.remove(i);
                    self.total.fetch_sub(1, Ordering::Relaxed);
                }
                if mine.is_empty() {
                    open.remove(&player_id);
                }
            }
        }
    }

    /// Reads the head, then new events, until `stop`.
    pub async fn tail(self: Arc<Self>, db: Db, poll: Duration, mut stop: watch::Receiver<bool>) {
        // Start at the present: never hand out the kept history as if it
        // were new (subscribers would skip it, but it would fill the ring).
        loop {
            match read_head(&db).await {
                Ok((seq, pruned)) => {
                    self.head.fetch_max(seq, Ordering::AcqRel);
                    self.pruned_through.fetch_max(pruned, Ordering::AcqRel);
                    break;
                }
                Err(e) => tracing::warn!(error = %e, "the stream could not read its head"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        loop {
            if let Err(e) = self.read_new(&db).await {
                tracing::warn!(error = %e, "reading the stream failed; trying again");
            }
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(poll) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn read_new(&self, db: &Db) -> Result<(), sqlx::Error> {
        loop {
            let (seq, pruned) = read_head(db).await?;
            self.pruned_through.fetch_max(pruned, Ordering::AcqRel);
            let head = self.head();
            if seq <= head {
                return Ok(());
            }
            let frames = read_frames(db, head, seq, BATCH).await?;
            if frames.is_empty() {
                // Pruned under us (a replica that slept through the
                // retention): subscribers behind it will be told to reload.
                self.head.store(seq, Ordering::Release);
                return Ok(());
            }
            let full = frames.len() as i64 == BATCH;
            for frame in frames {
                let seq = frame.seq;
                let frame = Arc::new(frame);
                // Head first, then send: a subscriber that reads the head
                // after subscribing gets every later frame from the channel.
                self.head.store(seq, Ordering::Release);
                let _ = self.frames.send(frame);
                self.published.fetch_add(1, Ordering::Relaxed);
            }
            if !full {
                return Ok(());
            }
        }
    }
}

/// The database's committed head and pruning cut: `(seq, pruned_through)`.
pub(super) async fn read_head(db: &Db) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as("SELECT seq, pruned_through FROM stream_head WHERE id = 1")
        .fetch_one(db.reader())
        .await
}

/// An admitted subscription; dropping it frees its place.
pub struct Admission {
    hub: Arc<Hub>,
    player_id: i64,
    id: u64,
    /// Turns true when a newer subscription of the player replaced it.
    pub ended: watch::Receiver<bool>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.hub.release(self.player_id, self.id);
    }
}
