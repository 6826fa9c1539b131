//! [`TradingSession`]: trades with holds that settle only on definitive answers.
//!
//! The session sits on the game's main thread between the [`PlayerStore`]
//! (the player's data, which it borrows for each call) and the
//! [`MarketClient`] (the network, which it owns). A trade goes:
//!
//! 1. **Hold and journal** (synchronous, in the caller's frame): buying
//!    reserves the expected price, selling escrows the items, and the
//!    operation enters the journal with its idempotency key. The UI can show
//!    the new balance at once.
//! 2. **Send once durable**: the request leaves only after the save holding
//!    its journal entry is on disk, so a crash can never forget a request the
//!    server may have applied (I2 across crashes).
//! 3. **Settle on a definitive answer**: success commits the hold and credits
//!    what came in; `already_sold`, `price_changed`, … release it. Timeouts,
//!    lost connections and 5xx settle nothing: the client retries with the
//!    same key (I4). After a restart, [`TradingSession::new`] re-sends every
//!    journaled operation with its original key.
//! 4. **Report once durable**: the event telling the game about a settlement
//!    is released only after the save holding the settlement is on disk (I3).
//!
//! While saves fail (disk full), steps 2 and 4 go ahead anyway — the game has
//! been told with `SaveFailed` — rather than freezing every trade.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use marketplace_protocol::{ErrorCode, Listing, ListingPage, MarketChange, Purchase, Sale};

use crate::client::{
    BrowseQuery, ClientConfig, Command, Event, EventKind, MarketClient, Reply, RequestId,
};
use crate::error::ClientError;
use crate::state::OpId;
use crate::store::{OpOutcome, PlayerStore};

/// What the game hears about, in order. The Godot layer turns each into a
/// signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    LoggedIn {
        request_id: RequestId,
        player_id: i64,
        name: String,
    },
    ListingsUpdated {
        request_id: RequestId,
        page: ListingPage,
    },
    ListingFetched {
        request_id: RequestId,
        listing: Listing,
    },
    ListingCreated {
        request_id: RequestId,
        listing: Listing,
    },
    ListingRepriced {
        request_id: RequestId,
        listing: Listing,
    },
    ListingCancelled {
        request_id: RequestId,
        listing: Listing,
    },
    PurchaseSucceeded {
        request_id: RequestId,
        purchase: Purchase,
    },
    /// The hold was released: `error.code` is `already_sold`,
    /// `price_changed`, `listing_cancelled`, `own_listing`, `not_found`, …
    PurchaseFailed {
        request_id: RequestId,
        listing_id: i64,
        error: ClientError,
    },
    SalesListed {
        request_id: RequestId,
        sales: Vec<Sale>,
    },
    /// One sale's proceeds were credited (`amount` 0 with `sale_id` 0: there
    /// was nothing to claim).
    ProceedsClaimed {
        request_id: RequestId,
        sale_id: i64,
        amount: i64,
    },
    /// Any other request failed for good (a refused sale, cancel, reprice or
    /// read). A refused sale's items are back in the inventory.
    RequestFailed {
        request_id: RequestId,
        error: ClientError,
    },
    /// A request failed in a way that is not definitive and is retried.
    RequestRetrying {
        request_id: RequestId,
        attempt: u32,
        error: ClientError,
    },
    /// Requests went from none to some in flight, or back.
    BusyChanged { busy: bool },
}

/// What a request id stands for.
#[derive(Debug, Clone)]
enum Tracked {
    Login,
    Browse,
    GetListing,
    Sales,
    /// `claim_proceeds`: the sales list, then one claim per sale.
    ClaimAll,
    Op {
        op: OpId,
        origin: RequestId,
    },
}

struct Unsent {
    id: RequestId,
    op: OpId,
    generation: u64,
}

pub struct TradingSession {
    client: MarketClient,
    tracked: HashMap<RequestId, Tracked>,
    unsent: VecDeque<Unsent>,
    /// Events waiting for the save that makes them true.
    deferred: VecDeque<(u64, SessionEvent)>,
    busy: bool,
    scratch: Vec<Event>,
}

/// Client events handled per `poll` by default: bounds one frame's work.
pub const DEFAULT_EVENTS_PER_POLL: usize = 256;

/// The newest generation whose requests may be sent and whose events may be
/// reported: what is on disk — or everything while saves fail, since the
/// game has been told (`SaveFailed`) and trading should not freeze.
fn go_ahead_up_to(store: &PlayerStore) -> u64 {
    if store.is_failing() {
        u64::MAX
    } else {
        store.durable_generation()
    }
}

impl TradingSession {
    /// Starts the client and re-sends every operation left in the journal
    /// (with its original key), so a trade interrupted by a crash settles.
    pub fn new(
        config: ClientConfig,
        store: &mut PlayerStore,
    ) -> Result<TradingSession, ClientError> {
        let client = MarketClient::start(config)?;
        let mut session = TradingSession {
            client,
            tracked: HashMap::new(),
            unsent: VecDeque::new(),
            deferred: VecDeque::new(),
            busy: false,
            scratch: Vec::new(),
        };
        // Journaled operations must be able to settle even before the game
        // logs in: the client may log in by itself as the saved identity.
        let state = store.state();
        session
            .client
            .set_credentials(&state.device_id, &state.player_name);
        let pending: Vec<OpId> = store.state().journal.keys().copied().collect();
        for op in pending {
            let id = session.client.next_request_id();
            session.tracked.insert(id, Tracked::Op { op, origin: id });
            // Loaded from disk: already durable.
            session.unsent.push_back(Unsent {
                id,
                op,
                generation: 0,
            });
        }
        Ok(session)
    }

    pub fn client(&self) -> &MarketClient {
        &self.client
    }

    /// Logs in as the store's device and name.
    pub fn login(&mut self, store: &PlayerStore) -> Result<RequestId, ClientError> {
        let state = store.state();
        let command = Command::Login {
            device_id: state.device_id.clone(),
            name: state.player_name.clone(),
        };
        self.send_now(command, Tracked::Login)
    }

    pub fn browse(&mut self, query: BrowseQuery) -> Result<RequestId, ClientError> {
        self.send_now(Command::Browse(query), Tracked::Browse)
    }

    pub fn get_listing(&mut self, listing_id: i64) -> Result<RequestId, ClientError> {
        self.send_now(Command::GetListing { listing_id }, Tracked::GetListing)
    }

    pub fn list_sales(&mut self) -> Result<RequestId, ClientError> {
        self.send_now(
            Command::ListSales {
                unclaimed_only: true,
            },
            Tracked::Sales,
        )
    }

    /// Lists the unclaimed sales and claims each; every claim credits its
    /// amount once ([`SessionEvent::ProceedsClaimed`]).
    pub fn claim_proceeds(&mut self) -> Result<RequestId, ClientError> {
        self.send_now(
            Command::ListSales {
                unclaimed_only: true,
            },
            Tracked::ClaimAll,
        )
    }

    fn send_now(&mut self, command: Command, tracked: Tracked) -> Result<RequestId, ClientError> {
        let id = self.client.submit(command)?;
        self.tracked.insert(id, tracked);
        Ok(id)
    }

    /// Buys a listing at the price the player saw. Reserves the credits at
    /// once; refuses locally (nothing sent, nothing held) with
    /// `purchase_in_progress`, `insufficient_credits` or `invalid_argument`.
    pub fn buy(
        &mut self,
        store: &mut PlayerStore,
        listing_id: i64,
        expected_price: i64,
    ) -> Result<RequestId, ClientError> {
        if listing_id < 1 || expected_price < 1 {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "listing id and price must be positive",
            ));
        }
        if self.is_purchase_pending(store, listing_id) {
            return Err(ClientError::new(
                ErrorCode::PurchaseInProgress,
                "This item is already being bought",
            ));
        }
        let hold = store.reserve_credits(expected_price)?;
        Ok(self.journal(
            store,
            MarketChange::Purchase {
                listing_id,
                expected_price,
            },
            Some(hold),
            None,
        ))
    }

    /// Lists items for sale. Escrows them at once; they return to the
    /// inventory if the server refuses.
    pub fn create_listing(
        &mut self,
        store: &mut PlayerStore,
        item_id: &str,
        quantity: i64,
        price: i64,
    ) -> Result<RequestId, ClientError> {
        marketplace_protocol::check_id("item_id", item_id)
            .map_err(|m| ClientError::new(ErrorCode::InvalidArgument, m))?;
        marketplace_protocol::check_positive("price", price)
            .map_err(|m| ClientError::new(ErrorCode::InvalidArgument, m))?;
        let hold = store.escrow_items(item_id, quantity)?;
        Ok(self.journal(
            store,
            MarketChange::CreateListing {
                item_id: item_id.to_string(),
                quantity,
                price,
            },
            Some(hold),
            None,
        ))
    }

    pub fn reprice_listing(
        &mut self,
        store: &mut PlayerStore,
        listing_id: i64,
        price: i64,
    ) -> Result<RequestId, ClientError> {
        if listing_id < 1 || price < 1 {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "listing id and price must be positive",
            ));
        }
        Ok(self.journal(
            store,
            MarketChange::Reprice { listing_id, price },
            None,
            None,
        ))
    }

    /// Cancels one of the player's listings; its items come back on success.
    pub fn cancel_listing(
        &mut self,
        store: &mut PlayerStore,
        listing_id: i64,
    ) -> Result<RequestId, ClientError> {
        if listing_id < 1 {
            return Err(ClientError::new(
                ErrorCode::InvalidArgument,
                "listing id must be positive",
            ));
        }
        Ok(self.journal(store, MarketChange::Cancel { listing_id }, None, None))
    }

    fn journal(
        &mut self,
        store: &mut PlayerStore,
        op: MarketChange,
        hold: Option<crate::state::HoldId>,
        origin: Option<RequestId>,
    ) -> RequestId {
        let key = crate::client::new_idempotency_key();
        let op_id = store.begin_op(key, op, hold);
        let id = self.client.next_request_id();
        self.tracked.insert(
            id,
            Tracked::Op {
                op: op_id,
                origin: origin.unwrap_or(id),
            },
        );
        self.unsent.push_back(Unsent {
            id,
            op: op_id,
            generation: store.generation(),
        });
        id
    }

    /// True while a purchase of this listing is journaled and unsettled.
    pub fn is_purchase_pending(&self, store: &PlayerStore, listing_id: i64) -> bool {
        store.state().journal.values().any(
            |p| matches!(p.op, MarketChange::Purchase { listing_id: l, .. } if l == listing_id),
        )
    }

    /// Requests not finished: sent and in flight, or waiting for their
    /// journal entry to reach the disk.
    pub fn pending_count(&self) -> usize {
        self.client.pending_count() + self.unsent.len()
    }

    /// True when nothing is in flight, nothing waits to be sent and every
    /// event has been reported.
    pub fn is_idle(&self) -> bool {
        self.pending_count() == 0 && self.deferred.is_empty()
    }

    /// Does one frame's work: sends journaled operations that are durable,
    /// settles answered ones, and moves up to `max_client_events` answers
    /// into events. Returns the events that are now safe to report.
    pub fn poll(
        &mut self,
        store: &mut PlayerStore,
        max_client_events: usize,
        out: &mut Vec<SessionEvent>,
    ) {
        store.poll();
        self.send_durable(store);
        let mut events = std::mem::take(&mut self.scratch);
        self.client.poll(&mut events, max_client_events);
        for event in events.drain(..) {
            self.handle(store, event);
        }
        self.scratch = events;
        // Settlements are saved at the next poll; report what is durable.
        store.poll();
        let durable = go_ahead_up_to(store);
        while self.deferred.front().is_some_and(|(g, _)| *g <= durable) {
            if let Some((_, e)) = self.deferred.pop_front() {
                out.push(e);
            }
        }
        let busy = self.pending_count() > 0;
        if busy != self.busy {
            self.busy = busy;
            out.push(SessionEvent::BusyChanged { busy });
        }
    }

    fn send_durable(&mut self, store: &PlayerStore) {
        let durable = go_ahead_up_to(store);
        while self.unsent.front().is_some_and(|u| u.generation <= durable) {
            let Some(u) = self.unsent.pop_front() else {
                break;
            };
            let Some(pending) = store.state().journal.get(&u.op) else {
                self.tracked.remove(&u.id);
                continue;
            };
            let command = Command::Change(pending.op.clone());
            if let Err(e) = self
                .client
                .submit_with(u.id, command, Some(pending.key.clone()))
            {
                // Stopping: the operation stays journaled for the next start.
                tracing::debug!(error = %e, "journaled operation not sent");
                self.tracked.remove(&u.id);
            }
        }
    }

    fn emit(&mut self, store: &PlayerStore, event: SessionEvent) {
        self.deferred.push_back((store.generation(), event));
    }

    fn handle(&mut self, store: &mut PlayerStore, event: Event) {
        let request_id = event.request_id;
        if let EventKind::Retrying { attempt, error, .. } = event.kind {
            let origin = match self.tracked.get(&request_id) {
                Some(Tracked::Op { origin, .. }) => *origin,
                _ => request_id,
            };
            self.emit(
                store,
                SessionEvent::RequestRetrying {
                    request_id: origin,
                    attempt,
                    error,
                },
            );
            return;
        }
        let Some(tracked) = self.tracked.remove(&request_id) else {
            return;
        };
        match (tracked, event.kind) {
            (_, EventKind::Retrying { .. }) => {}
            (Tracked::Login, EventKind::Done(Reply::LoggedIn(s))) => {
                store.set_player(s.player_id, &s.name);
                self.emit(
                    store,
                    SessionEvent::LoggedIn {
                        request_id,
                        player_id: s.player_id,
                        name: s.name,
                    },
                );
            }
            (Tracked::Browse, EventKind::Done(Reply::Listings(page))) => {
                self.emit(store, SessionEvent::ListingsUpdated { request_id, page });
            }
            (Tracked::GetListing, EventKind::Done(Reply::Listing(listing))) => {
                self.emit(
                    store,
                    SessionEvent::ListingFetched {
                        request_id,
                        listing,
                    },
                );
            }
            (Tracked::Sales, EventKind::Done(Reply::Sales(sales))) => {
                self.emit(store, SessionEvent::SalesListed { request_id, sales });
            }
            (Tracked::ClaimAll, EventKind::Done(Reply::Sales(sales))) => {
                let already: Vec<i64> = store
                    .state()
                    .journal
                    .values()
                    .filter_map(|p| match p.op {
                        MarketChange::Claim { sale_id } => Some(sale_id),
                        _ => None,
                    })
                    .collect();
                let mut claimed_any = false;
                for sale in sales
                    .iter()
                    .filter(|s| s.claimed_at.is_none() && !already.contains(&s.id))
                {
                    self.journal(
                        store,
                        MarketChange::Claim { sale_id: sale.id },
                        None,
                        Some(request_id),
                    );
                    claimed_any = true;
                }
                if !claimed_any {
                    self.emit(
                        store,
                        SessionEvent::ProceedsClaimed {
                            request_id,
                            sale_id: 0,
                            amount: 0,
                        },
                    );
                }
            }
            (Tracked::Op { op, origin }, kind) => self.settle(store, op, origin, kind),
            (_, EventKind::Failed(error)) => {
                self.emit(store, SessionEvent::RequestFailed { request_id, error });
            }
            (_, EventKind::Done(_)) => {
                let error = ClientError::new(ErrorCode::BadResponse, "unexpected answer");
                self.emit(store, SessionEvent::RequestFailed { request_id, error });
            }
        }
    }

    /// Applies a journaled operation's final answer.
    fn settle(&mut self, store: &mut PlayerStore, op_id: OpId, origin: RequestId, kind: EventKind) {
        let Some(pending) = store.state().journal.get(&op_id).cloned() else {
            return;
        };
        let (outcome, event) = match (&pending.op, kind) {
            (_, EventKind::Retrying { .. }) => return,
            (_, EventKind::Failed(error)) if !error.is_definitive() => {
                // Shutting down: leave it journaled for the next start (I4).
                return;
            }
            (MarketChange::Purchase { .. }, EventKind::Done(Reply::Purchased(purchase))) => (
                OpOutcome::Applied {
                    items_in: Some((purchase.item_id.clone(), purchase.quantity)),
                    credits_in: 0,
                },
                SessionEvent::PurchaseSucceeded {
                    request_id: origin,
                    purchase,
                },
            ),
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
            (MarketChange::CreateListing { .. }, EventKind::Done(Reply::Listing(listing))) => (
                OpOutcome::Applied {
                    items_in: None,
                    credits_in: 0,
                },
                SessionEvent::ListingCreated {
                    request_id: origin,
                    listing,
                },
            ),
            (MarketChange::Reprice { .. }, EventKind::Done(Reply::Listing(listing))) => (
                OpOutcome::Applied {
                    items_in: None,
                    credits_in: 0,
                },
                SessionEvent::ListingRepriced {
                    request_id: origin,
                    listing,
                },
            ),
            (MarketChange::Cancel { .. }, EventKind::Done(Reply::Listing(listing))) => (
                OpOutcome::Applied {
                    items_in: Some((listing.item_id.clone(), listing.quantity)),
                    credits_in: 0,
                },
                SessionEvent::ListingCancelled {
                    request_id: origin,
                    listing,
                },
            ),
            (MarketChange::Claim { sale_id }, EventKind::Done(Reply::Claimed(claim))) => (
                OpOutcome::Applied {
                    items_in: None,
                    credits_in: claim.amount,
                },
                SessionEvent::ProceedsClaimed {
                    request_id: origin,
                    sale_id: *sale_id,
                    amount: claim.amount,
                },
            ),
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
                return;
            }
        };
        if let Err(e) = store.settle_op(op_id, &outcome) {
            tracing::error!(op = op_id, error = %e, "cannot settle operation; it stays journaled");
            return;
        }
        self.emit(store, event);
    }

    /// Leaving: stops the client (in-flight exchanges get up to `grace`),
    /// settles what was answered, and flushes the store so the journal of
    /// what is still pending is on disk for the next start. Blocks for at
    /// most about `grace` plus the save.
    pub fn shutdown(mut self, store: &mut PlayerStore, grace: Duration) -> Vec<SessionEvent> {
        self.client.stop(grace);
        let mut events = Vec::new();
        self.client.poll(&mut events, usize::MAX);
        for event in events {
            self.handle(store, event);
        }
        if let Err(e) = store.flush(Duration::from_secs(5)) {
            tracing::warn!(error = %e, "final save failed");
        }
        self.deferred.drain(..).map(|(_, e)| e).collect()
    }
}
