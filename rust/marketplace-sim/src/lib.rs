//! Whole-system runs: real players (client core + player store), a real
//! marketplace server, and between them the fault-injecting proxy.
//!
//! - [`seed`]: the seed's scenario — one seller, ten buyers pressing Buy at
//!   the same instant — with live progress, as `cargo xtask demo` runs it.
//! - [`chaos`]: many players trading at random through lost answers, resets,
//!   500s and delays, with player crashes and server restarts; checks and
//!   prints invariants I1–I5 at the end.
//! - [`world`]: the server-plus-proxy and the simulated player they share.
//! - [`baseline`]: the old read-modify-write JSON backend, for benchmarks.

pub mod baseline;
pub mod chaos;
pub mod seed;
pub mod world;
