//! The main job: start the marketplace on embedded SQLite, run the seed
//! scenario through the real client core, print the outcome, keep serving.
//!
//! `cargo xtask demo` builds the Godot addon first and then runs this.
//! Flags: `--listen ADDR` (default 127.0.0.1:8080, or a free port if taken),
//! `--data DIR` (default ./marketplace-data), `--no-serve` (exit after the
//! scenario).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use marketplace_server::Config;
use marketplace_sim::seed;
use marketplace_sim::world::Market;

fn main() -> ExitCode {
    let mut listen: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 8080));
    let mut data = PathBuf::from("marketplace-data");
    let mut serve = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => match args.next().and_then(|a| a.parse().ok()) {
                Some(a) => listen = a,
                None => return usage("--listen needs an address like 127.0.0.1:8080"),
            },
            "--data" => match args.next() {
                Some(d) => data = PathBuf::from(d),
                None => return usage("--data needs a directory"),
            },
            "--no-serve" => serve = false,
            "-h" | "--help" => return usage(""),
            other => return usage(&format!("unknown argument {other}")),
        }
    }
    if let Err(e) = std::fs::create_dir_all(data.join("players")) {
        eprintln!("marketplace-demo: cannot create {}: {e}", data.display());
        return ExitCode::FAILURE;
    }
    if std::net::TcpListener::bind(listen).is_err() {
        eprintln!("marketplace-demo: {listen} is taken; using a free port instead");
        listen.set_port(0);
    }
    let database = format!("sqlite://{}/marketplace.sqlite", data.display());
    let mut config = Config::defaults();
    config.listen = listen;
    config.database = database.clone();
    println!("Starting the marketplace on {database} …");
    let market = match Market::start(config) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("marketplace-demo: the server did not start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let Some(addr) = market.server.as_ref().map(|s| s.addr()) else {
        return ExitCode::FAILURE;
    };
    println!("Marketplace serving on http://{addr}\n");
    println!(
        "Seed scenario: one seller, {} buyers, one item, everyone presses Buy at once",
        seed::BUYERS
    );
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0)
    );
    // Straight to the server: the proxy is for fault injection, not needed here.
    let url = format!("http://{addr}");
    let outcome = match seed::run(&url, &data.join("players"), &run, &mut std::io::stdout()) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("marketplace-demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!(
        "\nOutcome ({:.0} ms from the first Buy to the last answer):",
        outcome.elapsed.as_secs_f64() * 1e3
    );
    println!("  purchases committed:              {}", outcome.committed);
    println!(
        "  holds rolled back (already_sold): {}",
        outcome.rolled_back_already_sold
    );
    println!(
        "  other failures:                   {}",
        outcome.other_failures
    );
    println!(
        "  credits before / after:           {} / {}",
        outcome.credits_before, outcome.credits_after
    );
    println!(
        "  items before / after:             {} / {}",
        outcome.items_before, outcome.items_after
    );
    if !outcome.is_correct() {
        eprintln!("\nmarketplace-demo: the outcome is WRONG");
        return ExitCode::FAILURE;
    }
    println!("  => sold exactly once; nothing lost, nothing created.");
    match seed::stock(&url, &data.join("players"), &mut std::io::stdout()) {
        Ok(0) => {}
        Ok(n) => println!("\nThe demo market is stocked: {n} listings by named traders."),
        Err(e) => eprintln!("marketplace-demo: stocking the market: {e}"),
    }
    if !serve {
        return ExitCode::SUCCESS;
    }
    println!("\nThe marketplace keeps serving on http://{addr} (Ctrl-C to stop).");
    println!("Open the Godot demo against it: open godot/project.godot in Godot 4.3+ and press F5");
    if addr.port() != 8080 {
        println!("(set MARKET_SERVER_URL=http://{addr} first, or the TradingMarketplace node's server_url)");
    }
    let mut market = market;
    let _ = market.rt.block_on(tokio::signal::ctrl_c());
    println!("Stopping: finishing in-flight requests …");
    if let Some(server) = market.server.take() {
        market.rt.block_on(server.shutdown());
    }
    ExitCode::SUCCESS
}

fn usage(problem: &str) -> ExitCode {
    if !problem.is_empty() {
        eprintln!("marketplace-demo: {problem}");
    }
    eprintln!("usage: marketplace-demo [--listen ADDR] [--data DIR] [--no-serve]");
    if problem.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    }
}
