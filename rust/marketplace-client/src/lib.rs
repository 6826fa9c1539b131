//! The engine-agnostic heart of the trading marketplace plugin.
//!
//! Nothing here depends on Godot: the `marketplace-godot` crate wraps these
//! types in nodes, and the command-line demo and the tests use them directly.
//!
//! # Layout
//! - [`state`]: the save document and the hold ledger (plain data, no I/O).
//! - [`persist`]: crash-safe writing and loading of the save file.
//! - [`store`]: [`PlayerStore`], the single owner of the player's data, with
//!   its writer thread.
//! - [`client`]: [`MarketClient`], a synchronous handle over a private tokio
//!   runtime that sends marketplace requests (queue, rate limit, retries).
//! - [`session`]: [`TradingSession`], which ties the two together: it places
//!   holds, journals operations, sends them once journaled and settles holds
//!   only on definitive answers (invariant I4).
//! - [`error`]: [`ClientError`] with its stable [`ErrorCode`].
//! - [`paths`]: where a save file goes (`user://`, never `res://`).

pub mod client;
pub mod error;
pub mod ids;
pub mod paths;
pub mod persist;
pub mod recovery;
pub mod session;
pub mod state;
pub mod store;

pub use client::{ClientConfig, Command, Event, EventKind, MarketClient, Reply, RequestId};
pub use error::ClientError;
pub use marketplace_protocol::MarketChange;
pub use marketplace_protocol::{self as protocol, ErrorCode};
pub use session::{PendingTrade, SessionEvent, Shutdown, TradingSession};
pub use state::{HoldId, HoldKind, PlayerState, StateError};
pub use store::{OpOutcome, PlayerStore, StoreEvent, StoreOptions, StoreRemote};
