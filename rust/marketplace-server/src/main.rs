//! `marketplace-server`: serve the marketplace until SIGTERM or Ctrl-C.
//! `marketplace-server audit --database URL`: prove the books balance.
//! `marketplace-server new-server-id --database URL`: give a copied
//! database a market identity of its own.

use clap::Parser;
use marketplace_server::{BoundServer, Config};
use tracing_subscriber::EnvFilter;

/// `marketplace-server audit`: replays the ledger and checks every account,
/// stash, escrow and unclaimed proceeds against it, and that what is inside
/// the market equals what came in minus what went out. Exits 1 and names the
/// first mismatch when the books do not balance. Reads only.
#[derive(Debug, Parser)]
#[command(name = "marketplace-server audit")]
struct AuditArgs {
    /// The database to audit (as for serving).
    #[arg(
        long,
        env = "MARKET_DATABASE_URL",
        default_value = "sqlite://marketplace.sqlite"
    )]
    database: String,
}

async fn audit(args: AuditArgs) -> std::process::ExitCode {
    let report = match marketplace_server::audit(&args.database).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("marketplace-server audit: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    for line in &report.lines {
        println!("{line}");
    }
    match report.mismatches.first() {
        None => {
            println!("the books balance");
            std::process::ExitCode::SUCCESS
        }
        Some(first) => {
            eprintln!("the books do not balance; first mismatch: {first}");
            for other in report.mismatches.iter().skip(1).take(20) {
                eprintln!("  also: {other}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// `marketplace-server new-server-id`: gives the database a new market
/// identity. Clients bind every trade to the identity they logged in to;
/// a database copied from another market (a staging copy of production)
/// must not answer trades meant for the original. Run it on the copy,
/// with its servers stopped, before they serve: trades bound to the old
/// identity then wait instead of running there.
#[derive(Debug, Parser)]
#[command(name = "marketplace-server new-server-id")]
struct NewIdArgs {
    /// The database whose identity changes (as for serving).
    #[arg(
        long,
        env = "MARKET_DATABASE_URL",
        default_value = "sqlite://marketplace.sqlite"
    )]
    database: String,
}

async fn new_server_id(args: NewIdArgs) -> std::process::ExitCode {
    match marketplace_server::new_server_id(&args.database).await {
        Ok((old, new)) => {
            println!("market identity changed from {old} to {new}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("marketplace-server new-server-id: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("audit") => return audit(AuditArgs::parse_from(std::env::args().skip(1))).await,
        Some("new-server-id") => {
            return new_server_id(NewIdArgs::parse_from(std::env::args().skip(1))).await
        }
        _ => {}
    }
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    let config = Config::parse();
    let database = redact(&config.database);
    let server = match BoundServer::bind(config).await {
        Ok(server) => server,
        Err(e) => {
            tracing::error!(error = %e, "could not start");
            eprintln!("marketplace-server: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    tracing::info!(addr = %server.local_addr(), %database, "marketplace serving");
    match server.serve(shutdown_signal()).await {
        Ok(()) => {
            tracing::info!("stopped cleanly");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            tracing::error!(error = %e, "server failed");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

/// The database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***{}", &url[..scheme_end], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
