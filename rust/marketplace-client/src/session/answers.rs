//! What the session does with each answer: reads become events; a
//! journaled trade's answer settles its hold — committed on success,
//! released only on a definitive refusal (I4), parked while it belongs to
//! another market — and is reported once the settlement is on disk (I3);
//! `claim_proceeds` ends when all its claims have; a page of the player's
//! operations reconciles a restored save.

use std::time::{Duration, Instant};

use marketplace_protocol::{ErrorCode, MarketChange};

use super::{SessionEvent, Tracked, TradingSession, SYNC_PAGE};
use crate::client::{Command, Event, EventKind, Reply, RequestId};
use crate::error::ClientError;
use crate::state::unix_now;
use crate::state::{Applied, OpId};
use crate::store::{OpOutcome, PlayerStore};

impl TradingSession {
    pub(super) fn handle(&mut self, store: &mut PlayerStore, event: Event) {
        let request_id = event.request_id;
        if let EventKind::Retrying { attempt, error, .. } = event.kind {
            self.retrying(store, request_id, attempt, error);
            return;
        }
        let Some(tracked) = self.tracked.remove(&request_id) else {
            return;
        };
        match (tracked, event.kind) {
            (_, EventKind::Retrying { .. }) => {}
            (Tracked::Login(device, _), EventKind::Done(Reply::LoggedIn(s)))
                if device != store.state().device_id || !self.is_current(&s) =>
            {
                // The game logged in as another device, or pointed at
                // another server, meanwhile.
                let error = ClientError::new(
                    ErrorCode::InvalidArgument,
                    "Superseded: the game logged in as another player or switched servers meanwhile",
                );
                self.ready
                    .push_back(SessionEvent::RequestFailed { request_id, error });
            }
            (Tracked::Sync(owner), EventKind::Done(Reply::Operations(page))) => {
                self.sync_in_flight = false;
                if self.client.owner().as_ref() != Some(&owner) {
                    return; // switched meanwhile: the next login syncs anew
                }
                let before = store.state().sync.get(&owner.server_id).map(|m| m.seq);
                for r in store.reconcile(&owner, &page) {
                    let event = SessionEvent::TradeRecovered {
                        key: r.key,
                        kind: r.kind,
                        credits: r.credits,
                        items: r.items,
                        shortfall: r.shortfall,
                    };
                    self.emit_durable(store, event);
                }
                let after = store.state().sync.get(&owner.server_id).map(|m| m.seq);
                let more = page.operations.len() >= SYNC_PAGE as usize && after > before;
                // Held back by a journaled trade: the mark stopped before
                // the last operation listed.
                let blocked = page
                    .operations
                    .last()
                    .is_some_and(|op| after < Some(op.seq));
                if more {
                    self.sync_page(store, owner);
                } else {
                    // A restored save now holds what the market says it
                    // lost: trading resumes.
                    self.restoring = false;
                    if !blocked {
                        store.forget_stale_keys(&owner.server_id);
                    }
                    self.noted_after_sync = store
                        .state()
                        .sync
                        .get(&owner.server_id)
                        .map_or(0, |m| m.applied.len());
                    self.synced = Some(owner);
                }
            }
            (Tracked::Sync(owner), EventKind::Failed(error)) if error.is_definitive() => {
                // A server without the operations listing (404), or one
                // that refuses it: nothing to reconcile with this login.
                tracing::info!(error = %error, "the market cannot list operations; no reconciliation");
                self.restoring = false;
                self.sync_in_flight = false;
                self.synced = Some(owner);
                self.noted_after_sync = usize::MAX;
            }
            (Tracked::Sync(_), _) => {
                // Offline, another market now, or an answer that does not
                // fit: try again later.
                self.sync_in_flight = false;
                self.next_sync = Instant::now() + Duration::from_secs(5);
            }
            (Tracked::QuietLogin(device), EventKind::Done(Reply::LoggedIn(s))) => {
                self.quiet_login = None;
                if device == store.state().device_id && self.is_current(&s) {
                    self.logged_in(store, &s);
                }
            }
            (Tracked::QuietLogin(_), _) => {
                // Offline or refused: unbound trades wait; try again later.
                self.quiet_login = None;
                self.next_quiet_login = Instant::now() + Duration::from_secs(2);
            }
            (Tracked::Login(_, by_token), EventKind::Done(Reply::LoggedIn(s))) => {
                store.set_identity_login(by_token);
                self.logged_in(store, &s);
                self.ready.push_back(SessionEvent::LoggedIn {
                    request_id,
                    player_id: s.player_id,
                    name: s.name,
                });
            }
            (Tracked::Inbox { first }, EventKind::Done(Reply::Notifications(page))) => {
                self.inbox_page(store, page, first);
            }
            (Tracked::Inbox { .. } | Tracked::Ack, _) => {
                // Unread or unacknowledged: the next login reads it again.
            }
            (Tracked::Browse, EventKind::Done(Reply::Listings(page))) => {
                for l in &page.listings {
                    self.note_lot(l);
                }
                self.ready
                    .push_back(SessionEvent::ListingsUpdated { request_id, page });
            }
            (Tracked::Orders, EventKind::Done(Reply::Orders(page))) => {
                self.ready.push_back(SessionEvent::OrdersListed {
                    request_id,
                    orders: page.orders,
                    next_cursor: page.next_cursor,
                });
            }
            (Tracked::FeeQuote, EventKind::Done(Reply::FeeQuote(quote))) => {
                self.ready
                    .push_back(SessionEvent::FeesQuoted { request_id, quote });
            }
            (Tracked::MarketData, EventKind::Done(Reply::MarketSummary(summary))) => {
                self.ready.push_back(SessionEvent::MarketSummary {
                    request_id,
                    summary,
                });
            }
            (Tracked::Identities, EventKind::Done(Reply::Identities(identities))) => {
                self.ready.push_back(SessionEvent::IdentitiesListed {
                    request_id,
                    identities,
                });
            }
            (Tracked::MarketData, EventKind::Done(Reply::Items(found))) => {
                self.ready.push_back(SessionEvent::ItemsFound {
                    request_id,
                    items: found.items,
                    catalog: found.catalog,
                });
            }
            (Tracked::MarketData, EventKind::Done(Reply::Depth(depth))) => {
                self.ready
                    .push_back(SessionEvent::DepthListed { request_id, depth });
            }
            (Tracked::MarketData, EventKind::Done(Reply::PriceHistory(history))) => {
                self.ready.push_back(SessionEvent::PriceHistory {
                    request_id,
                    history,
                });
            }
            (Tracked::CollectAll { origin }, EventKind::Done(Reply::Deliveries(page))) => {
                self.collect_page(store, origin, page);
            }
            (Tracked::CollectAll { origin }, kind) => {
                // A page could not be read: collects already journaled go
                // on; the request ends when they have settled.
                let error = match kind {
                    EventKind::Failed(error) => error,
                    _ => ClientError::new(ErrorCode::BadResponse, "unexpected answer"),
                };
                self.collect_failed(origin, error);
                self.collect_listed(store, origin);
            }
            (Tracked::Account, EventKind::Done(Reply::Account(envelope))) => {
                store.set_market(envelope.economy.mode, &envelope.account);
                self.ready.push_back(SessionEvent::AccountUpdated {
                    request_id,
                    account: envelope.account,
                });
            }
            (Tracked::GetListing, EventKind::Done(Reply::Listing(listing, _))) => {
                self.note_lot(&listing);
                self.ready.push_back(SessionEvent::ListingFetched {
                    request_id,
                    listing,
                });
            }
            (Tracked::Sales, EventKind::Done(Reply::Sales(page))) => {
                self.ready.push_back(SessionEvent::SalesListed {
                    request_id,
                    sales: page.sales,
                });
            }
            (Tracked::ClaimAll { origin }, EventKind::Done(Reply::Sales(page))) => {
                let request_id = origin;
                let sales = page.sales;
                let already: Vec<i64> = store
                    .state()
                    .journal
                    .values()
                    .filter_map(|p| match p.op {
                        MarketChange::Claim { sale_id } => Some(sale_id),
                        _ => None,
                    })
                    .collect();
                for sale in sales
                    .iter()
                    .filter(|s| s.claimed_at.is_none() && !already.contains(&s.id))
                {
                    match self.journal(
                        store,
                        MarketChange::Claim { sale_id: sale.id },
                        None,
                        Some(request_id),
                    ) {
                        Ok(_) => {
                            if let Some(c) = self.claims.get_mut(&origin) {
                                c.outstanding += 1;
                            }
                        }
                        Err(error) => self.claim_failed(origin, error),
                    }
                }
                if let Some(cursor) = page.next_cursor {
                    // More sales than one page: on to the next.
                    let next = self.client.next_request_id();
                    let command = Command::ListSales {
                        unclaimed_only: true,
                        cursor: Some(cursor),
                    };
                    match self.client.submit_with(next, command, None) {
                        Ok(()) => {
                            self.tracked.insert(next, Tracked::ClaimAll { origin });
                            return;
                        }
                        Err(error) => self.claim_failed(origin, error),
                    }
                }
                let nothing = self
                    .claims
                    .get(&origin)
                    .is_none_or(|c| c.outstanding == 0 && c.sales == 0 && c.error.is_none());
                if nothing {
                    self.ready.push_back(SessionEvent::ProceedsClaimed {
                        request_id,
                        sale_id: 0,
                        amount: 0,
                    });
                }
                if let Some(c) = self.claims.get_mut(&origin) {
                    c.listing = false;
                }
                self.claims_maybe_done(store, origin);
            }
            (Tracked::ClaimAll { origin }, EventKind::Done(_)) => {
                let error = ClientError::new(ErrorCode::BadResponse, "unexpected answer");
                self.claim_failed(origin, error);
                if let Some(c) = self.claims.get_mut(&origin) {
                    c.listing = false;
                }
                self.claims_maybe_done(store, origin);
            }
            (Tracked::ClaimAll { origin }, EventKind::Failed(error)) => {
                // A page of sales could not be read: the claims already
                // journaled go on; the request ends when they have settled.
                self.claim_failed(origin, error);
                if let Some(c) = self.claims.get_mut(&origin) {
                    c.listing = false;
                }
                self.claims_maybe_done(store, origin);
            }
            (Tracked::Op { op, origin }, kind) => self.settle(store, op, origin, kind),
            (_, EventKind::Failed(error)) => {
                self.ready
                    .push_back(SessionEvent::RequestFailed { request_id, error });
            }
            (_, EventKind::Done(_)) => {
                let error = ClientError::new(ErrorCode::BadResponse, "unexpected answer");
                self.ready
                    .push_back(SessionEvent::RequestFailed { request_id, error });
            }
        }
    }

    /// The client holds a new login (the game's, the session's own, or one
    /// the client made by itself): trades bound to this address while its
    /// server announced no id (before an upgrade) belong to the id it
    /// announces now, and parked trades may be at home.
    pub(super) fn owner_changed(&mut self, store: &mut PlayerStore) {
        let owner = self.client.owner();
        if let Some(owner) = &owner {
            if !owner.is_by_address() {
                let url = self.client.config().server_url;
                let by_address = crate::state::Owner::by_address(&url, owner.player_id);
                store.rebind_ops(&by_address, owner);
            }
        }
        self.last_owner = owner;
        self.unpark(store);
    }

    /// Remembers how many units a listing has left, for "buy the lot".
    pub(super) fn note_lot(&mut self, listing: &marketplace_protocol::Listing) {
        if self.lots.len() >= 4096 {
            self.lots.clear();
        }
        self.lots.insert(listing.id, listing.remaining());
    }

    /// True when `s` is the login the client holds now (not one overtaken
    /// by a switch of device or server while it was on the way).
    fn is_current(&self, s: &marketplace_protocol::Session) -> bool {
        self.client.owner().is_some_and(|o| {
            o.player_id == s.player_id && (s.server_id.is_empty() || o.server_id == s.server_id)
        })
    }

    /// What every login answer for the current device changes.
    fn logged_in(&mut self, store: &mut PlayerStore, s: &marketplace_protocol::Session) {
        store.set_player(s.player_id, &s.name);
        store.set_market_mode(s.economy.mode);
        if s.economy.mode == marketplace_protocol::EconomyMode::ServerGrants {
            // The wallet trades pay from: mirror it at once.
            let _ = self.refresh_account();
        }
        self.owner_changed(store);
        // The save is compared with this market's record again.
        self.synced = None;
        self.live_after_login();
    }

    /// A failed attempt that will be retried: counted, reported, and — once a
    /// trade has waited too long — reported as stalled.
    fn retrying(
        &mut self,
        store: &PlayerStore,
        request_id: RequestId,
        attempt: u32,
        error: ClientError,
    ) {
        let (origin, op) = match self.tracked.get(&request_id) {
            Some(Tracked::Op { origin, op }) => (*origin, Some(*op)),
            _ => (request_id, None),
        };
        self.ready.push_back(SessionEvent::RequestRetrying {
            request_id: origin,
            attempt,
            error: error.clone(),
        });
        let Some(op) = op else { return };
        let Some(progress) = self.progress.get_mut(&op) else {
            return;
        };
        progress.attempts = attempt;
        progress.last_error = Some(error.code);
        if progress.stalled {
            return;
        }
        let Some(pending) = store.state().journal.get(&op) else {
            return;
        };
        let trade = self.describe(op, pending, self.progress.get(&op), unix_now());
        if trade.age >= self.stall_after {
            if let Some(p) = self.progress.get_mut(&op) {
                p.stalled = true;
            }
            self.ready.push_back(SessionEvent::TradeStalled {
                request_id: origin,
                trade,
                error,
            });
        }
    }

    /// Applies a journaled operation's final answer.
    fn settle(&mut self, store: &mut PlayerStore, op_id: OpId, origin: RequestId, kind: EventKind) {
        let Some(pending) = store.state().journal.get(&op_id).cloned() else {
            self.progress.remove(&op_id);
            return;
        };
        // Whether the hold is on the market account (server grants) rather
        // than on the save.
        let held_in_market = pending
            .hold
            .and_then(|h| store.state().holds.get(&h))
            .is_some_and(|h| h.kind.is_market());
        let (outcome, event) = match (&pending.op, kind) {
            (_, EventKind::Retrying { .. }) => return,
            (_, EventKind::Failed(error)) if error.code == ErrorCode::WrongServer => {
                // Another market or player: it waits, hold and all, until
                // the game points back (then `unpark`).
                if let Some(p) = self.progress.get_mut(&op_id) {
                    p.last_error = Some(error.code);
                }
                self.parked.insert(op_id, error);
                if pending.owner.is_some() && pending.owner == self.client.owner() {
                    // Re-bound or logged in meanwhile (this attempt was sent
                    // before): it is at home now, so it goes again at once.
                    self.unpark(store);
                    return;
                }
                self.claim_left_journaled(store, &pending.op, origin, ErrorCode::WrongServer);
                return;
            }
            (_, EventKind::Failed(error)) if !error.is_definitive() => {
                // Shutting down: leave it journaled for the next start (I4).
                return;
            }
            (
                MarketChange::Purchase { .. },
                EventKind::Done(Reply::Purchased(purchase, transfer)),
            ) => {
                // Items go where the server put them: the save (delivered)
                // or the market account. A save hold is spent as far as the
                // server deposited from it; a server without books took it all.
                let into_save = transfer.as_ref().is_none_or(|t| t.delivered > 0);
                let item = (purchase.item_id.clone(), purchase.quantity);
                let applied = Applied {
                    hold_spent: transfer
                        .as_ref()
                        .filter(|_| !held_in_market)
                        .map(|t| t.deposited),
                    items_in: into_save.then(|| item.clone()),
                    market_items_in: (!into_save).then_some(item),
                    market_view: transfer.and_then(|t| t.account),
                    ..Applied::default()
                };
                (
                    OpOutcome::Applied(applied),
                    SessionEvent::PurchaseSucceeded {
                        request_id: origin,
                        purchase,
                    },
                )
            }
            (MarketChange::Purchase { listing_id, .. }, EventKind::Failed(error)) => (
                OpOutcome::Rejected {
                    reason: error.code.as_str().to_string(),
                },
                SessionEvent::PurchaseFailed {
                    request_id: origin,
                    listing_id: *listing_id,
                    error,
                },
            ),
            (
                MarketChange::CreateListing { .. },
                EventKind::Done(Reply::Listing(listing, transfer)),
            ) => (
                OpOutcome::Applied(Applied {
                    hold_spent: transfer
                        .as_ref()
                        .filter(|_| !held_in_market)
                        .map(|t| t.deposited),
                    market_view: transfer.and_then(|t| t.account),
                    ..Applied::default()
                }),
                SessionEvent::ListingCreated {
                    request_id: origin,
                    listing,
                },
            ),
            (MarketChange::Reprice { .. }, EventKind::Done(Reply::Listing(listing, _))) => (
                OpOutcome::Applied(Applied::default()),
                SessionEvent::ListingRepriced {
                    request_id: origin,
                    listing,
                },
            ),
            (MarketChange::Cancel { .. }, EventKind::Done(Reply::Listing(listing, transfer))) => {
                let into_save = transfer.as_ref().is_none_or(|t| t.delivered > 0);
                // What came back: the units not sold (a server from before
                // partial fills returned the whole lot).
                let back = transfer
                    .as_ref()
                    .filter(|t| t.delivered > 0)
                    .map_or(listing.quantity, |t| t.delivered);
                let items = (listing.item_id.clone(), back);
                (
                    OpOutcome::Applied(Applied {
                        items_in: into_save.then(|| items.clone()),
                        market_items_in: (!into_save).then_some(items),
                        market_view: transfer.and_then(|t| t.account),
                        ..Applied::default()
                    }),
                    SessionEvent::ListingCancelled {
                        request_id: origin,
                        listing,
                    },
                )
            }
            (MarketChange::Claim { sale_id }, EventKind::Done(Reply::Claimed(claim))) => {
                let into_save = claim.transfer.as_ref().is_none_or(|t| t.delivered > 0);
                (
                    OpOutcome::Applied(Applied {
                        credits_in: if into_save { claim.amount } else { 0 },
                        market_credits_in: if into_save { 0 } else { claim.amount },
                        market_view: claim.transfer.as_ref().and_then(|t| t.account.clone()),
                        ..Applied::default()
                    }),
                    SessionEvent::ProceedsClaimed {
                        request_id: origin,
                        sale_id: *sale_id,
                        amount: claim.amount,
                    },
                )
            }
            (
                MarketChange::Withdraw { item_id, quantity },
                EventKind::Done(Reply::Moved(moved)),
            ) => {
                // The account after the withdrawal: the mirror takes it as
                // the settlement's view, with no arithmetic on top.
                (
                    OpOutcome::Applied(Applied {
                        items_in: item_id.clone().map(|i| (i, *quantity)),
                        credits_in: if item_id.is_none() { *quantity } else { 0 },
                        market_view: Some(moved.account.clone()),
                        ..Applied::default()
                    }),
                    SessionEvent::Withdrawn {
                        request_id: origin,
                        item_id: item_id.clone(),
                        quantity: *quantity,
                    },
                )
            }
            (MarketChange::PlaceOrder { .. }, EventKind::Done(Reply::Order(envelope))) => (
                OpOutcome::Applied(Applied {
                    hold_spent: envelope
                        .transfer
                        .as_ref()
                        .filter(|_| !held_in_market)
                        .map(|t| t.deposited),
                    market_view: envelope.transfer.as_ref().and_then(|t| t.account.clone()),
                    ..Applied::default()
                }),
                SessionEvent::OrderPlaced {
                    request_id: origin,
                    order: envelope.order,
                    fills: envelope.fills,
                },
            ),
            (MarketChange::CancelOrder { .. }, EventKind::Done(Reply::Order(envelope))) => {
                let transfer = envelope.transfer.as_ref();
                let into_save = transfer.is_some_and(|t| t.delivered > 0);
                let order = envelope.order;
                // What the escrow held: the units left at the order's price.
                let returned = transfer.filter(|_| into_save).map_or(
                    order.quantity_remaining.saturating_mul(order.max_price),
                    |t| t.delivered,
                );
                (
                    OpOutcome::Applied(Applied {
                        credits_in: if into_save { returned } else { 0 },
                        market_credits_in: if into_save { 0 } else { returned },
                        market_view: transfer.and_then(|t| t.account.clone()),
                        ..Applied::default()
                    }),
                    SessionEvent::OrderCancelled {
                        request_id: origin,
                        order,
                        returned,
                    },
                )
            }
            (MarketChange::Collect { .. }, EventKind::Done(Reply::Collected(collected))) => {
                let Some(applied) = super::orders::applied_of_collect(&collected) else {
                    tracing::warn!(
                        op = op_id,
                        "a collect answered with mixed kinds; it stays journaled"
                    );
                    self.claim_left_journaled(store, &pending.op, origin, ErrorCode::BadResponse);
                    return;
                };
                (
                    OpOutcome::Applied(applied),
                    SessionEvent::DeliveriesCollected {
                        request_id: origin,
                        deliveries: collected.deliveries,
                        error: None,
                    },
                )
            }
            (MarketChange::Deposit { .. }, EventKind::Done(Reply::Moved(moved))) => {
                store.set_market_view(&moved.account);
                (
                    OpOutcome::Applied(Applied::default()),
                    SessionEvent::AccountUpdated {
                        request_id: origin,
                        account: moved.account,
                    },
                )
            }
            (_, EventKind::Failed(error)) => (
                OpOutcome::Rejected {
                    reason: error.code.as_str().to_string(),
                },
                SessionEvent::RequestFailed {
                    request_id: origin,
                    error,
                },
            ),
            (_, EventKind::Done(_)) => {
                // A reply of the wrong kind cannot settle anything; the
                // operation stays journaled and is re-sent on the next start.
                tracing::warn!(op = op_id, "unexpected reply for a journaled operation");
                self.claim_left_journaled(store, &pending.op, origin, ErrorCode::BadResponse);
                return;
            }
        };
        if let Err(e) = store.settle_op(op_id, &outcome) {
            // Cannot happen within the protocol's limits (see state.rs); if
            // it does, the trade stays journaled and shows as stalled.
            tracing::error!(op = op_id, error = %e, "cannot settle operation; it stays journaled");
            if let Some(p) = self.progress.get_mut(&op_id) {
                p.last_error = Some(ErrorCode::Internal);
            }
            self.claim_left_journaled(store, &pending.op, origin, ErrorCode::Internal);
            return;
        }
        self.progress.remove(&op_id);
        if matches!(pending.op, MarketChange::Collect { .. }) && self.is_collect(origin) {
            // Part of a `collect_deliveries` request: reported with its end.
            let (collected, error) = match event {
                SessionEvent::DeliveriesCollected { deliveries, .. } => (deliveries, None),
                SessionEvent::RequestFailed { error, .. } if error.code == ErrorCode::NotFound => {
                    // Collected meanwhile by another of this save's keys.
                    (Vec::new(), None)
                }
                SessionEvent::RequestFailed { error, .. } => (Vec::new(), Some(error)),
                _ => (Vec::new(), None),
            };
            self.collect_settled(store, origin, collected, error);
            return;
        }
        let claim = match (&pending.op, &event) {
            (MarketChange::Claim { .. }, SessionEvent::ProceedsClaimed { amount, .. }) => {
                Some((*amount, None))
            }
            (MarketChange::Claim { .. }, SessionEvent::RequestFailed { error, .. }) => {
                Some((0, Some(error.clone())))
            }
            _ => None,
        };
        self.emit_durable(store, event);
        if let Some((amount, error)) = claim {
            if let Some(c) = self.claims.get_mut(&origin) {
                c.outstanding = c.outstanding.saturating_sub(1);
                if error.is_none() {
                    c.sales += 1;
                    c.amount += amount;
                } else if c.error.is_none() {
                    c.error = error;
                }
            }
            self.claims_maybe_done(store, origin);
        }
    }

    /// A claim of `origin`'s that cannot settle in this session (it stays
    /// journaled for the next start) still ends its part of the request,
    /// as a failure.
    fn claim_left_journaled(
        &mut self,
        store: &PlayerStore,
        op: &MarketChange,
        origin: RequestId,
        code: ErrorCode,
    ) {
        if matches!(op, MarketChange::Collect { .. }) && self.is_collect(origin) {
            let error = ClientError::new(
                code,
                "A collect could not settle now; it is kept and retried on the next start",
            );
            self.collect_settled(store, origin, Vec::new(), Some(error));
            return;
        }
        if !matches!(op, MarketChange::Claim { .. }) {
            return;
        }
        if let Some(c) = self.claims.get_mut(&origin) {
            c.outstanding = c.outstanding.saturating_sub(1);
            if c.error.is_none() {
                c.error = Some(ClientError::new(
                    code,
                    "A claim could not settle now; it is kept and retried on the next start",
                ));
            }
        }
        self.claims_maybe_done(store, origin);
    }

    /// A claim of `origin`'s could not even be made: reported now, and
    /// remembered for the request's end.
    fn claim_failed(&mut self, origin: RequestId, error: ClientError) {
        if let Some(c) = self.claims.get_mut(&origin) {
            if c.error.is_none() {
                c.error = Some(error.clone());
            }
        }
        self.ready.push_back(SessionEvent::RequestFailed {
            request_id: origin,
            error,
        });
    }

    /// Ends a `claim_proceeds` request once its sales are read and every
    /// claim it made has settled.
    fn claims_maybe_done(&mut self, store: &PlayerStore, origin: RequestId) {
        let done = self
            .claims
            .get(&origin)
            .is_some_and(|c| !c.listing && c.outstanding == 0);
        if done {
            if let Some(c) = self.claims.remove(&origin) {
                self.emit_durable(
                    store,
                    SessionEvent::ClaimsDone {
                        request_id: origin,
                        sales: c.sales,
                        amount: c.amount,
                        error: c.error,
                    },
                );
            }
        }
    }
}
