//! Server configuration: one struct, every field a flag with an environment
//! variable and a documented default.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

/// Durability of SQLite commits (`PRAGMA synchronous`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqliteSync {
    /// fsync the write-ahead log on every commit: an answered purchase
    /// survives a power cut. The default.
    Full,
    /// fsync only at checkpoints: an answered purchase survives a killed
    /// process but the last commits may be lost on a power cut.
    Normal,
}

/// How value enters the market (see `economy.rs` and the README's "Trust model").
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EconomyArg {
    /// Players' games deposit what their trades need, capped per 24 h.
    ClientDeposits,
    /// Only the game's backend grants credits and items (admin API).
    ServerGrants,
}

#[derive(Debug, Clone, Parser)]
#[command(
    name = "marketplace-server",
    version,
    about = "The reference marketplace server: atomic purchases, idempotent retries, SQLite by default, PostgreSQL at scale."
)]
pub struct Config {
    /// Address to serve HTTP on.
    #[arg(long, env = "MARKET_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Database URL: `sqlite://FILE` (created on first run, WAL mode) or
    /// `postgres://USER:PASSWORD@HOST:PORT/DB`. Any number of server replicas
    /// may share one PostgreSQL database; a SQLite file belongs to one server.
    #[arg(
        long,
        env = "MARKET_DATABASE_URL",
        default_value = "sqlite://marketplace.sqlite"
    )]
    pub database: String,

    /// Secret that signs session tokens (at least 32 bytes). When absent, one
    /// is generated on first start and stored in the database, so every
    /// replica sharing the database agrees on it.
    #[arg(long, env = "MARKET_TOKEN_SECRET", hide_env_values = true)]
    pub token_secret: Option<String>,

    /// Lifetime of a session token, in seconds.
    #[arg(long, env = "MARKET_TOKEN_TTL_SECS", default_value_t = 24 * 3600)]
    pub token_ttl_secs: u64,

    /// Sustained requests per second allowed per player (and per client
    /// address for `POST /v1/sessions`); 0 turns rate limiting off.
    #[arg(long, env = "MARKET_RATE_LIMIT_PER_SEC", default_value_t = 20.0)]
    pub rate_limit_per_sec: f64,

    /// Requests a player may burst above the sustained rate.
    #[arg(long, env = "MARKET_RATE_LIMIT_BURST", default_value_t = 40)]
    pub rate_limit_burst: u32,

    /// How long a stored idempotent answer is kept, in hours (at least 24).
    #[arg(long, env = "MARKET_IDEMPOTENCY_RETENTION_HOURS", default_value_t = 7 * 24)]
    pub idempotency_retention_hours: u64,

    /// Connections to PostgreSQL per replica (SQLite always uses one writer
    /// and this many readers, capped at 8).
    #[arg(long, env = "MARKET_DB_MAX_CONNECTIONS", default_value_t = 16)]
    pub db_max_connections: u32,

    /// SQLite commit durability.
    #[arg(long, env = "MARKET_SQLITE_SYNC", value_enum, default_value_t = SqliteSync::Full)]
    pub sqlite_sync: SqliteSync,

    /// Seconds to let in-flight requests finish after SIGTERM / Ctrl-C.
    #[arg(long, env = "MARKET_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Serve `/metrics` on this address only (for example an internal
    /// interface); when absent it is served on `--listen` with the API.
    #[arg(long, env = "MARKET_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Seconds a client has to send a request's headers; a keep-alive
    /// connection idle this long is closed too (behind a load balancer, set
    /// it above the balancer's idle timeout: AWS ALB's 60 s → 65).
    #[arg(long, env = "MARKET_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// Seconds a request may take from its headers to its answer (body
    /// included); a mutation that runs out of time still finishes and its
    /// retry gets its answer.
    #[arg(long, env = "MARKET_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Open connections at most; further clients wait to be accepted.
    #[arg(long, env = "MARKET_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,

    /// Open connections one client address (IPv6: one /64) may hold; more
    /// are closed at once. Trusted proxies are not limited.
    #[arg(long, env = "MARKET_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: usize,

    /// How value enters the market: `client-deposits` (players' games move
    /// what their trades need from their saves, within the caps) or
    /// `server-grants` (only the game's backend, through the admin API).
    #[arg(long, env = "MARKET_ECONOMY", value_enum, default_value_t = EconomyArg::ClientDeposits)]
    pub economy: EconomyArg,

    /// Credits one player may deposit per rolling 24 hours (client deposits).
    #[arg(long, env = "MARKET_DEPOSIT_CAP_CREDITS", default_value_t = 100_000)]
    pub deposit_cap_credits: i64,

    /// Items of one kind one player may deposit per rolling 24 hours.
    #[arg(long, env = "MARKET_DEPOSIT_CAP_ITEMS", default_value_t = 1_000)]
    pub deposit_cap_items: i64,

    /// A JSON catalog of tradeable items, with their largest quantity per
    /// listing and their price range; other items get `unknown_item`.
    #[arg(long, env = "MARKET_CATALOG")]
    pub catalog: Option<std::path::PathBuf>,

    /// Key of the admin API (`/admin/v1/…`: grants, accounts, bans), at least
    /// 32 bytes; without it the admin API answers 401 to everyone.
    #[arg(long, env = "MARKET_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,

    /// Load balancers and proxies whose `X-Forwarded-For` is believed, as
    /// comma-separated addresses or CIDR blocks (`10.0.0.0/8,fd00::/8`).
    /// Without it, the peer address is the client's.
    #[arg(long, env = "MARKET_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::net::Cidr>,

    /// Listing fee, charged from the seller's proceeds on each fill, in
    /// basis points of the fill's value (250 = 2.5 %); 0 with no minimum: off.
    #[arg(long, env = "MARKET_LISTING_FEE_BP", default_value_t = 0)]
    pub listing_fee_bp: i64,
    /// Smallest listing fee per fill, in credits.
    #[arg(long, env = "MARKET_LISTING_FEE_MIN", default_value_t = 0)]
    pub listing_fee_min: i64,
    /// Largest listing fee per fill, in credits (0: no cap).
    #[arg(long, env = "MARKET_LISTING_FEE_MAX", default_value_t = 0)]
    pub listing_fee_max: i64,
    /// Sales tax, charged from the seller's proceeds on each fill, in
    /// basis points; 0 with no minimum: off.
    #[arg(long, env = "MARKET_SALES_TAX_BP", default_value_t = 0)]
    pub sales_tax_bp: i64,
    #[arg(long, env = "MARKET_SALES_TAX_MIN", default_value_t = 0)]
    pub sales_tax_min: i64,
    /// 0: no cap.
    #[arg(long, env = "MARKET_SALES_TAX_MAX", default_value_t = 0)]
    pub sales_tax_max: i64,

    /// How long a listing rests unless the seller asks for less.
    #[arg(long, env = "MARKET_LISTING_DURATION_SECS", default_value_t = 30 * 86_400)]
    pub listing_duration_secs: i64,
    /// The longest a seller may ask for.
    #[arg(long, env = "MARKET_LISTING_MAX_DURATION_SECS", default_value_t = 90 * 86_400)]
    pub listing_max_duration_secs: i64,
    /// How long a buy order rests unless the buyer asks for less.
    #[arg(long, env = "MARKET_ORDER_DURATION_SECS", default_value_t = 30 * 86_400)]
    pub order_duration_secs: i64,
    #[arg(long, env = "MARKET_ORDER_MAX_DURATION_SECS", default_value_t = 90 * 86_400)]
    pub order_max_duration_secs: i64,

    /// How long a market data answer (summary, depth, history of an item)
    /// is served to every player who asks for the same; 0: not kept.
    #[arg(long, env = "MARKET_DATA_CACHE_MS", default_value_t = 2_000)]
    pub market_data_cache_ms: u64,

    /// How often each replica looks for events other replicas committed
    /// (its own are sent at once).
    #[arg(long, env = "MARKET_STREAM_POLL_MS", default_value_t = 100)]
    pub stream_poll_ms: u64,

    /// Stream connections one player may hold on a replica; one more ends
    /// the oldest.
    #[arg(long, env = "MARKET_STREAM_MAX_PER_PLAYER", default_value_t = 4)]
    pub stream_max_per_player: usize,

    /// Stream connections a replica serves at most (each also counts
    /// against --max-connections, and at most 4/5 of it are streams);
    /// more get 503 and retry.
    #[arg(long, env = "MARKET_STREAM_MAX_SUBSCRIBERS", default_value_t = 10_000)]
    pub stream_max_subscribers: usize,

    /// Events a subscriber may fall behind by before it is cut off (it
    /// resumes from its last event on its next connection).
    #[arg(long, env = "MARKET_STREAM_BUFFER", default_value_t = 4096)]
    pub stream_buffer: usize,

    /// How long events are kept for clients that reconnect; one further
    /// behind is told to reload.
    #[arg(long, env = "MARKET_STREAM_RETENTION_SECS", default_value_t = 3_600)]
    pub stream_retention_secs: u64,

    /// A JSON file of identity providers whose tokens log players in (see
    /// the README's "Player identity"); none by default.
    #[arg(long, env = "MARKET_IDENTITY_PROVIDERS")]
    pub identity_providers: Option<std::path::PathBuf>,

    /// Whether a device id alone logs a player in (the embedded quick
    /// start's way). Turn it off when every player has a provider identity.
    #[arg(long, env = "MARKET_DEVICE_LOGINS", default_value_t = true, action = clap::ArgAction::Set)]
    pub device_logins: bool,

    /// How long a notification nobody acknowledged is kept.
    #[arg(long, env = "MARKET_NOTIFICATION_RETENTION_DAYS", default_value_t = 30)]
    pub notification_retention_days: u64,
}

impl Config {
    /// The defaults, as `marketplace-server` with no arguments and no
    /// environment would use them.
    pub fn defaults() -> Config {
        Config::parse_from(["marketplace-server"])
    }

    /// Defaults for an in-process server: port 0, the given database, no rate
    /// limit unless the caller sets one.
    pub fn for_tests(database: impl Into<String>) -> Config {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database: database.into(),
            token_secret: Some("test-secret-test-secret-test-secret".into()),
            token_ttl_secs: 3600,
            rate_limit_per_sec: 0.0,
            rate_limit_burst: 40,
            idempotency_retention_hours: 24,
            db_max_connections: 16,
            sqlite_sync: SqliteSync::Normal,
            shutdown_grace_secs: 5,
            metrics_listen: None,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            max_connections: 10_000,
            max_connections_per_ip: 10_000,
            trusted_proxies: Vec::new(),
            economy: EconomyArg::ClientDeposits,
            deposit_cap_credits: 100_000,
            deposit_cap_items: 1_000,
            catalog: None,
            admin_key: Some("test-admin-key-test-admin-key-test-admin".into()),
            listing_fee_bp: 0,
            listing_fee_min: 0,
            listing_fee_max: 0,
            sales_tax_bp: 0,
            sales_tax_min: 0,
            sales_tax_max: 0,
            listing_duration_secs: 30 * 86_400,
            listing_max_duration_secs: 90 * 86_400,
            order_duration_secs: 30 * 86_400,
            order_max_duration_secs: 90 * 86_400,
            // Tests see every change at once; the cache has a test of its own.
            market_data_cache_ms: 0,
            stream_poll_ms: 100,
            stream_max_per_player: 4,
            stream_max_subscribers: 10_000,
            stream_buffer: 4096,
            stream_retention_secs: 3_600,
            notification_retention_days: 30,
            identity_providers: None,
            device_logins: true,
        }
    }

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    /// The economy policy these flags describe (reads the catalog file).
    pub fn policy(&self) -> Result<crate::economy::Policy, String> {
        Ok(crate::economy::Policy {
            mode: match self.economy {
                EconomyArg::ClientDeposits => marketplace_protocol::EconomyMode::ClientDeposits,
                EconomyArg::ServerGrants => marketplace_protocol::EconomyMode::ServerGrants,
            },
            deposit_cap_credits: self.deposit_cap_credits,
            deposit_cap_items: self.deposit_cap_items,
            catalog: match &self.catalog {
                Some(path) => Some(crate::economy::Catalog::load(path)?),
                None => None,
            },
            fees: self.fees(),
            durations: crate::economy::Durations {
                listing_default: self.listing_duration_secs,
                listing_max: self.listing_max_duration_secs,
                order_default: self.order_duration_secs,
                order_max: self.order_max_duration_secs,
            },
        })
    }

    /// The identity providers `--identity-providers` names (none without it).
    pub fn identity_providers(&self) -> Result<crate::identity::Providers, String> {
        match &self.identity_providers {
            Some(path) => crate::identity::Providers::load(path),
            None => Ok(crate::identity::Providers::default()),
        }
    }

    fn fees(&self) -> crate::economy::Fees {
        use crate::economy::FeeRule;
        crate::economy::Fees {
            listing: FeeRule {
                rate_bp: self.listing_fee_bp,
                min: self.listing_fee_min,
                max: self.listing_fee_max,
            },
            sales_tax: FeeRule {
                rate_bp: self.sales_tax_bp,
                min: self.sales_tax_min,
                max: self.sales_tax_max,
            },
        }
    }

    /// Open streams this replica admits: the flag, but never more than
    /// four fifths of `--max-connections`, so trades always find room.
    pub fn stream_subscriber_cap(&self) -> usize {
        self.stream_max_subscribers
            .min(self.max_connections.saturating_mul(4) / 5)
            .max(1)
    }

    pub fn idempotency_retention(&self) -> Duration {
        Duration::from_secs(self.idempotency_retention_hours.max(24) * 3600)
    }

    /// Checks what clap cannot: returns a message for the operator.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(secret) = &self.token_secret {
            if secret.len() < 32 {
                return Err("--token-secret must be at least 32 bytes".into());
            }
        }
        if self.rate_limit_per_sec < 0.0 || !self.rate_limit_per_sec.is_finite() {
            return Err("--rate-limit-per-sec must be a finite number ≥ 0".into());
        }
        if self.db_max_connections == 0 {
            return Err("--db-max-connections must be at least 1".into());
        }
        if self.token_ttl_secs == 0 {
            return Err("--token-ttl-secs must be at least 1".into());
        }
        if self.header_timeout_secs == 0 || self.request_timeout_secs == 0 {
            return Err(
                "--header-timeout-secs and --request-timeout-secs must be at least 1".into(),
            );
        }
        if self.stream_poll_ms == 0 || self.stream_max_per_player == 0 || self.stream_buffer == 0 {
            return Err(
                "--stream-poll-ms, --stream-max-per-player and --stream-buffer must be at least 1"
                    .into(),
            );
        }
        if self.max_connections == 0 {
            return Err("--max-connections must be at least 1".into());
        }
        if self.stream_retention_secs > 30 * 86_400 || self.notification_retention_days > 3_650 {
            return Err(
                "--stream-retention-secs is at most 30 days, --notification-retention-days at most 3650"
                    .into(),
            );
        }
        if self.deposit_cap_credits < 0 || self.deposit_cap_items < 0 {
            return Err("deposit caps must be at least 0".into());
        }
        let fees = self.fees();
        fees.listing.validate("--listing-fee")?;
        fees.sales_tax.validate("--sales-tax")?;
        if self.listing_duration_secs < 1
            || self.order_duration_secs < 1
            || self.listing_duration_secs > self.listing_max_duration_secs
            || self.order_duration_secs > self.order_max_duration_secs
        {
            return Err(
                "durations must be at least 1 second and no longer than their maximum".into(),
            );
        }
        if self.admin_key.as_ref().is_some_and(|k| k.len() < 32) {
            return Err("--admin-key must be at least 32 bytes".into());
        }
        Ok(())
    }
}
