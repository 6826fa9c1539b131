//! `marketplace-chaos [--players N] [--ops N] [--seed N] [--postgres ADMIN_URL]
//! [--fault-rate F] [--crash-every N] [--server-restarts N] [--cheaters N] [--life-every N]`: runs the chaos
//! simulation and prints the invariant report; exits non-zero if one fails.

use std::process::ExitCode;

use marketplace_sim::chaos::{run, ChaosConfig};

fn main() -> ExitCode {
    let mut cfg = ChaosConfig::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        let parsed = match (flag.as_str(), value.as_deref()) {
            ("--players", Some(v)) => v.parse().map(|n| cfg.players = n).is_ok(),
            ("--ops", Some(v)) => v.parse().map(|n| cfg.ops = n).is_ok(),
            ("--seed", Some(v)) => v.parse().map(|n| cfg.seed = n).is_ok(),
            ("--fault-rate", Some(v)) => v.parse().map(|n| cfg.fault_rate = n).is_ok(),
            ("--crash-every", Some(v)) => v.parse().map(|n| cfg.crash_every = n).is_ok(),
            ("--server-restarts", Some(v)) => v.parse().map(|n| cfg.server_restarts = n).is_ok(),
            ("--cheaters", Some(v)) => v.parse().map(|n| cfg.cheaters = n).is_ok(),
            ("--life-every", Some(v)) => v.parse().map(|n| cfg.life_every = n).is_ok(),
            ("--postgres", Some(v)) => {
                cfg.postgres_admin_url = Some(v.to_string());
                true
            }
            _ => false,
        };
        if !parsed {
            eprintln!("usage: marketplace-chaos [--players N] [--ops N] [--seed N] [--postgres ADMIN_URL] [--fault-rate F] [--crash-every N] [--server-restarts N] [--cheaters N] [--life-every N]");
            return ExitCode::from(2);
        }
    }
    if cfg.players < 2 || !(0.0..=1.0).contains(&cfg.fault_rate) {
        eprintln!("marketplace-chaos: need at least 2 players and a fault rate between 0 and 1");
        return ExitCode::from(2);
    }
    println!(
        "chaos: {} players, {} operations, seed {}, fault rate {}, {}",
        cfg.players,
        cfg.ops,
        cfg.seed,
        cfg.fault_rate,
        if cfg.postgres_admin_url.is_some() {
            "PostgreSQL"
        } else {
            "SQLite"
        }
    );
    match run(&cfg) {
        Ok(report) => {
            println!("{report}");
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("marketplace-chaos: {e}");
            ExitCode::FAILURE
        }
    }
}
