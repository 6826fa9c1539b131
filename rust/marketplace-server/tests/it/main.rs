//! The server's integration tests, in one binary (one link step on 2-core
//! CI instead of one per file). Each module is a suite; `support` starts a
//! real server on port 0 over a fresh SQLite file or PostgreSQL database,
//! and `backend_tests!` runs a test on both.

#[macro_use]
mod support;

mod api;
mod books;
mod concurrency;
mod console;
mod forever;
mod hardening;
mod identity;
mod market_data;
mod migrations;
mod orders;
mod stream;
