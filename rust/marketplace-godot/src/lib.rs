//! The Godot 4 adapter: `TradingMarketplace` and `LocalPlayerData` nodes.
//!
//! A thin shell over `marketplace-client`: the nodes own a
//! [`TradingSession`](marketplace_client::TradingSession) and a
//! [`PlayerStore`](marketplace_client::PlayerStore), call them from the main
//! thread, and turn their events into signals in `process()`. Nothing here
//! touches the network or the disk directly, and no Godot type crosses a
//! thread: the client core's threads only ever see plain Rust values.
//!
//! # Layout
//! - [`player_data`]: the `LocalPlayerData` node (credits, inventory, holds, saves).
//! - [`marketplace`]: the `TradingMarketplace` node (requests, trades, signals).
//! - [`data`]: the typed values GDScript receives (`MarketListing`,
//!   `MarketResult`, …) — with [`convert`] (what GDScript passes in), the
//!   only places that know both the wire types and Godot's.
//! - [`request`]: `MarketRequest`, the awaitable handle of one request;
//!   cancelling and giving up.
//! - [`save_slot`]: one save file's store and trading session, which outlive
//!   the nodes attached to them (scene changes never wait).
//!
//! # Panics
//! None on purpose: every failure of a request becomes a `*_failed` signal
//! with a stable code, every misuse a `push_error`; gdext turns a panic (a
//! bug) into an engine error rather than a crash.

use godot::init::InitStage;
use godot::prelude::*;

pub mod convert;
pub mod data;
pub mod marketplace;
pub mod player_data;
pub mod request;
pub mod save_slot;

struct TradingMarketplaceExtension;

#[gdextension]
unsafe impl ExtensionLibrary for TradingMarketplaceExtension {
    /// The game is quitting (or the extension unloads): every open save is
    /// shut down — requests in flight get their grace period, what is still
    /// pending is flushed to disk for the next start. The only place that
    /// waits, and only here.
    fn on_stage_deinit(stage: InitStage) {
        if stage == InitStage::Scene {
            save_slot::shutdown_all();
            request::forget_all();
        }
    }
}

#[cfg(test)]
mod editor_help;
