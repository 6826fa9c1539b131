//! The client core's integration tests, in one binary (one link step on
//! 2-core CI instead of one per file). Each module is a suite; `support`
//! starts a real server in-process on port 0 behind the fault proxy.

mod support;

mod books;
mod faults;
mod game_life;
mod identity;
mod ledger_props;
mod live;
mod orders;
mod owners;
mod restart;
mod store;
