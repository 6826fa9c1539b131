//! The live market in the session: the change stream and the inbox.
//!
//! - **Live by default.** Once logged in, the session opens the change
//!   stream (every item, or those the game watches) and reads the inbox.
//!   Stream events become [`SessionEvent::MarketChanged`]; the game
//!   redraws from them. They are hints: nothing here touches a hold, the
//!   journal or the save's credits and items — a pushed "sold" never
//!   settles a purchase (I4); only the answer to the player's own request
//!   does.
//! - **Notifications once each, after they are saved.** A notification
//!   (from the inbox at login, or pushed while playing) is noted in the
//!   save; [`SessionEvent::Notification`] is reported once that note is on
//!   disk, and only then is it acknowledged to the server. A crash before
//!   the acknowledgement shows nothing twice (the note is saved); a crash
//!   before the note is saved loses nothing (the server still has it). A
//!   summary that grows (more fills of the same order) comes again with
//!   the larger figures.

use marketplace_protocol::{Notification, NotificationsPage, StreamChange};

use super::{SessionEvent, Tracked, TradingSession};
use crate::client::{Command, StreamNotice, StreamOptions};
use crate::error::ClientError;
use crate::store::PlayerStore;

/// Settings of the live market, kept by the session.
#[derive(Debug, Clone)]
pub(super) struct Live {
    /// Open the stream once logged in.
    pub on: bool,
    pub watching: StreamOptions,
    /// The login the stream was opened for: reopened for another one.
    pub opened_for: Option<crate::state::Owner>,
    /// Notifications reported and not acknowledged yet, with the fills
    /// they were reported with.
    pub to_ack: Vec<(i64, i64)>,
    /// Whether the game was last told the stream is up (told on changes
    /// only, not at every reconnection attempt).
    pub told_up: Option<bool>,
    /// The stream's first `Reload` (its start, right after the login's
    /// inbox read) is still to come.
    pub starting: bool,
}

impl Default for Live {
    fn default() -> Self {
        Live {
            on: true,
            watching: StreamOptions::default(),
            opened_for: None,
            to_ack: Vec::new(),
            told_up: None,
            starting: false,
        }
    }
}

impl TradingSession {
    /// Turns the live market on (the default) or off. On: the stream opens
    /// at the next login, or now if logged in. Off: it closes.
    pub fn set_live(&mut self, on: bool) {
        self.live.on = on;
        if !on {
            self.client.close_stream();
            self.live.opened_for = None;
            self.live.told_up = None;
        } else if let Some(owner) = self.client.owner() {
            // Not after a login: the stream's first reload re-reads the
            // inbox (what came while live was off).
            self.open_stream(owner);
        }
    }

    pub fn is_live(&self) -> bool {
        self.live.on
    }

    /// Which public changes the stream brings: those of `items`, or of
    /// every item when empty; `own_only` brings only the player's own.
    /// Takes effect at once when the stream is open (resuming where it
    /// was, so nothing of the player's own is missed).
    pub fn watch(&mut self, items: Vec<String>, own_only: bool) -> Result<(), ClientError> {
        if items.len() > marketplace_protocol::MAX_STREAM_ITEMS {
            return Err(super::invalid(format!(
                "at most {} items can be watched",
                marketplace_protocol::MAX_STREAM_ITEMS
            )));
        }
        for item in &items {
            marketplace_protocol::check_id("item_id", item).map_err(super::invalid)?;
        }
        self.live.watching = StreamOptions { items, own_only };
        if self.live.on {
            if let Some(owner) = self.live.opened_for.clone() {
                // The reconnection is told (a node that attaches later and
                // sets what it watches learns the stream's state).
                self.live.told_up = None;
                self.client.open_stream(self.live.watching.clone(), true);
                self.live.opened_for = Some(owner);
            }
        }
        Ok(())
    }

    /// Reads the inbox again (the session does it at every login).
    pub fn fetch_notifications(&mut self) -> Result<crate::client::RequestId, ClientError> {
        self.fetch_inbox(true)
    }

    /// `first`: also tell how many deliveries wait (at a login).
    fn fetch_inbox(&mut self, first: bool) -> Result<crate::client::RequestId, ClientError> {
        let id = self
            .client
            .submit(Command::Notifications { cursor: None })?;
        self.tracked.insert(id, Tracked::Inbox { first });
        Ok(id)
    }

    /// After a login: the stream (resumed if it is the same login as
    /// before) and the inbox.
    pub(super) fn live_after_login(&mut self) {
        let Some(owner) = self.client.owner() else {
            return;
        };
        if self.live.on && !self.open_stream(owner) {
            // A fresh stream's first reload comes right after this read.
            self.live.starting = true;
        }
        let _ = self.fetch_notifications();
    }

    /// Opens the stream for `owner`; true when it resumes the one before.
    fn open_stream(&mut self, owner: crate::state::Owner) -> bool {
        let resume = self.live.opened_for.as_ref() == Some(&owner);
        if !resume {
            self.live.told_up = None;
        }
        self.client.open_stream(self.live.watching.clone(), resume);
        self.live.opened_for = Some(owner);
        resume
    }

    /// Takes up to `max` stream notices into events.
    pub(super) fn poll_stream(&mut self, store: &mut PlayerStore, max: usize) {
        let mut notices = Vec::new();
        self.client.poll_stream(&mut notices, max);
        for notice in notices {
            match notice {
                StreamNotice::Live { .. } => {
                    if self.live.told_up != Some(true) {
                        self.live.told_up = Some(true);
                        self.ready.push_back(SessionEvent::MarketLive {
                            live: true,
                            error: None,
                        });
                    }
                }
                StreamNotice::Down { error, .. } => {
                    if self.live.told_up != Some(false) {
                        self.live.told_up = Some(false);
                        self.ready.push_back(SessionEvent::MarketLive {
                            live: false,
                            error: Some(error),
                        });
                    }
                }
                StreamNotice::Reload => {
                    // Missed changes may include the player's own
                    // notifications: the inbox is read again (not at the
                    // stream's start: the login just read it).
                    if !std::mem::take(&mut self.live.starting) {
                        let _ = self.fetch_inbox(false);
                    }
                    self.ready.push_back(SessionEvent::MarketReload);
                }
                StreamNotice::Event(event) => match &event.change {
                    StreamChange::Notification { notification } => {
                        if crate::client::notification_is_sane(notification) {
                            self.notifications(store, std::slice::from_ref(notification));
                        }
                    }
                    change => {
                        if let StreamChange::Listing { listing, .. } = change {
                            // Only what "buy the whole lot" means: a hint
                            // too (the server checks the units).
                            self.note_lot(listing);
                        }
                        self.ready.push_back(SessionEvent::MarketChanged { event });
                    }
                },
            }
        }
    }

    /// A page of the inbox: new notifications are noted, reported once
    /// saved, then acknowledged; ones shown before are acknowledged now.
    pub(super) fn inbox_page(
        &mut self,
        store: &mut PlayerStore,
        page: NotificationsPage,
        first: bool,
    ) {
        if first && page.deliveries_waiting > 0 {
            self.ready.push_back(SessionEvent::DeliveriesWaiting {
                count: page.deliveries_waiting,
            });
        }
        self.notifications(store, &page.notifications);
        if let Some(cursor) = page.next_cursor {
            if let Ok(id) = self.client.submit(Command::Notifications {
                cursor: Some(cursor),
            }) {
                self.tracked.insert(id, Tracked::Inbox { first: false });
            }
        }
    }

    fn notifications(&mut self, store: &mut PlayerStore, list: &[Notification]) {
        let Some(owner) = self.client.owner() else {
            return;
        };
        let fresh: Vec<Notification> = store
            .note_notices(&owner, list)
            .into_iter()
            .cloned()
            .collect();
        let shown_before: Vec<(i64, i64)> = list
            .iter()
            .filter(|n| !fresh.iter().any(|f| f.id == n.id))
            .map(|n| (n.id, n.fills))
            .collect();
        self.ack(shown_before);
        for notification in fresh {
            self.emit_durable(store, SessionEvent::Notification { notification });
        }
    }

    /// Notifications just reported (their note is on disk): acknowledged.
    pub(super) fn reported(&mut self, event: &SessionEvent) {
        if let SessionEvent::Notification { notification } = event {
            self.live.to_ack.push((notification.id, notification.fills));
        }
    }

    pub(super) fn ack_reported(&mut self) {
        let ids = std::mem::take(&mut self.live.to_ack);
        self.ack(ids);
    }

    fn ack(&mut self, acks: Vec<(i64, i64)>) {
        for chunk in acks.chunks(marketplace_protocol::MAX_ACK_IDS) {
            if let Ok(id) = self.client.submit(Command::AckNotifications {
                acks: chunk.to_vec(),
            }) {
                // A lost acknowledgement shows nothing twice (the note is
                // saved); the next login acknowledges it again.
                self.tracked.insert(id, Tracked::Ack);
            }
        }
    }
}
