//! The chaos simulation's short version, on SQLite and PostgreSQL: the
//! invariant report is printed (run with --nocapture to see it) and every
//! invariant must hold.

use marketplace_sim::chaos::{run, ChaosConfig};

fn short(seed: u64) -> ChaosConfig {
    ChaosConfig {
        players: 8,
        ops: 400,
        seed,
        ..ChaosConfig::default()
    }
}

#[test]
fn chaos_on_sqlite() {
    let report = run(&short(11)).expect("the simulation runs");
    println!("{report}");
    assert!(report.ok(), "{report}");
    assert!(
        report
            .stats
            .get("purchases committed")
            .copied()
            .unwrap_or(0)
            > 0,
        "{report}"
    );
    assert!(
        report.stats.get("faults injected").copied().unwrap_or(0) > 0,
        "{report}"
    );
    for event in [
        "player crashes",
        "life: settings changed",
        "life: long pauses",
        "life: disk failing",
        "life: quit and reopen",
        "cheats refused",
    ] {
        assert!(
            report.stats.get(event).copied().unwrap_or(0) > 0,
            "{event} never happened: {report}"
        );
    }
}

#[test]
fn chaos_on_postgres() {
    let Ok(admin) = std::env::var("MARKET_TEST_POSTGRES_URL") else {
        if std::env::var_os("MARKET_REQUIRE_POSTGRES").is_some() {
            panic!("MARKET_REQUIRE_POSTGRES is set but MARKET_TEST_POSTGRES_URL is not");
        }
        eprintln!("SKIPPED: chaos on PostgreSQL (set MARKET_TEST_POSTGRES_URL, or run `cargo xtask test`)");
        return;
    };
    let mut cfg = short(12);
    cfg.postgres_admin_url = Some(admin);
    let report = run(&cfg).expect("the simulation runs");
    println!("{report}");
    assert!(report.ok(), "{report}");
}
