//! The database layer: one set of queries for SQLite and PostgreSQL.
//!
//! # Why `sqlx::Any`
//! The server's queries are plain SQL that both engines accept (`$1`
//! placeholders, `RETURNING`, `ON CONFLICT DO NOTHING`), so the `Any` driver
//! runs the same query text on either backend and the business logic exists
//! once. The price is a narrower type set (integers, text), which is all this
//! schema uses: timestamps are Unix seconds in `BIGINT`, every integer column
//! is `BIGINT` so it decodes as `i64` on both engines. Only the schema
//! (`migrations/*.{sqlite,postgres}.sql`) differs per backend.
//!
//! # SQLite: one writer
//! SQLite allows one writer at a time. Several pooled writers would fight over
//! the lock (`SQLITE_BUSY`) and a deferred transaction that reads before it
//! writes can fail to upgrade its lock. So the SQLite writer pool has exactly
//! one connection, every write transaction starts with `BEGIN IMMEDIATE`, and
//! reads use a separate pool of read-only connections that WAL mode lets run
//! beside the writer. PostgreSQL uses one pool for both; its row locks order
//! concurrent conditional updates.

use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Connection, Executor, Transaction};

use crate::config::{Config, SqliteSync};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    backend: Backend,
    write: AnyPool,
    read: AnyPool,
}

/// A migration: the same version on both backends, each with its own SQL,
/// and optionally a step SQL alone cannot do (run in the same transaction).
struct Migration {
    version: i64,
    name: &'static str,
    sqlite: &'static str,
    postgres: &'static str,
    step: Option<Step>,
}

impl Migration {
    /// What the migration runs on `backend`, as a SHA-256: kept with it
    /// when applied, and compared at every start, so an applied migration
    /// cannot be edited silently (the database would not be what the file
    /// now says).
    fn checksum(&self, backend: Backend) -> String {
        let sql = match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        };
        let step = match self.step {
            Some(Step::HashDeviceIds) => "hash_device_ids",
            None => "",
        };
        // Line endings do not count: a checkout that turns the files into
        // CRLF must not make a server refuse its own database.
        let sql = sql.replace("\r\n", "\n");
        crate::auth::sha256_hex(format!("{sql}\n-- step: {step}").as_bytes())
    }
}

/// Migration steps written in Rust.
#[derive(Clone, Copy)]
enum Step {
    /// Replaces every stored device id with its hash ([`crate::auth::device_hash`]).
    HashDeviceIds,
}

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sqlite: include_str!("migrations/0001_initial.sqlite.sql"),
        postgres: include_str!("migrations/0001_initial.postgres.sql"),
        step: None,
    },
    Migration {
        version: 2,
        name: "keys_in_domain_rows",
        sqlite: include_str!("migrations/0002_keys_in_domain_rows.sqlite.sql"),
        postgres: include_str!("migrations/0002_keys_in_domain_rows.postgres.sql"),
        step: None,
    },
    Migration {
        version: 3,
        name: "hash_device_ids",
        sqlite: "",
        postgres: "",
        step: Some(Step::HashDeviceIds),
    },
    Migration {
        version: 4,
        name: "books",
        sqlite: include_str!("migrations/0004_books.sqlite.sql"),
        postgres: include_str!("migrations/0004_books.postgres.sql"),
        step: None,
    },
    Migration {
        version: 5,
        name: "exact_deposit_window",
        sqlite: include_str!("migrations/0005_exact_deposit_window.sqlite.sql"),
        postgres: include_str!("migrations/0005_exact_deposit_window.postgres.sql"),
        step: None,
    },
    Migration {
        version: 6,
        name: "ledger_by_player",
        sqlite: include_str!("migrations/0006_ledger_by_player.sqlite.sql"),
        postgres: include_str!("migrations/0006_ledger_by_player.postgres.sql"),
        step: None,
    },
    Migration {
        version: 7,
        name: "orders",
        sqlite: include_str!("migrations/0007_orders.sqlite.sql"),
        postgres: include_str!("migrations/0007_orders.postgres.sql"),
        step: None,
    },
    Migration {
        version: 8,
        name: "market_data",
        sqlite: include_str!("migrations/0008_market_data.sqlite.sql"),
        postgres: include_str!("migrations/0008_market_data.postgres.sql"),
        step: None,
    },
    Migration {
        version: 9,
        name: "stream",
        sqlite: include_str!("migrations/0009_stream.sqlite.sql"),
        postgres: include_str!("migrations/0009_stream.postgres.sql"),
        step: None,
    },
    Migration {
        version: 10,
        name: "identities",
        sqlite: include_str!("migrations/0010_identities.sqlite.sql"),
        postgres: include_str!("migrations/0010_identities.postgres.sql"),
        step: None,
    },
    Migration {
        version: 11,
        name: "console",
        sqlite: include_str!("migrations/0011_console.sqlite.sql"),
        postgres: include_str!("migrations/0011_console.postgres.sql"),
        step: None,
    },
];

/// Arbitrary constant: the PostgreSQL advisory lock that serialises migrations
/// when several replicas start at once.
const MIGRATION_LOCK_ID: i64 = 0x6d61_726b_6574;

impl Db {
    /// Connects, applies pending migrations and returns the handle.
    pub async fn connect(config: &Config) -> Result<Db, sqlx::Error> {
        Self::connect_up_to(config, i64::MAX).await
    }

    /// Connects and migrates up to schema `version` only (tests of the
    /// migrations: a database as an older server left it).
    #[doc(hidden)]
    pub async fn connect_up_to(config: &Config, version: i64) -> Result<Db, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let url = config.database.as_str();
        let db = if url.starts_with("sqlite:") {
            Self::connect_sqlite(url, config).await?
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let pool = AnyPoolOptions::new()
                .max_connections(config.db_max_connections)
                .acquire_timeout(Duration::from_secs(10))
                .connect(url)
                .await?;
            Db {
                backend: Backend::Postgres,
                write: pool.clone(),
                read: pool,
            }
        } else {
            return Err(sqlx::Error::Configuration(
                "database URL must start with sqlite:// or postgres://".into(),
            ));
        };
        db.migrate(version).await?;
        Ok(db)
    }

    async fn connect_sqlite(url: &str, config: &Config) -> Result<Db, sqlx::Error> {
        // Create the file on first run unless the URL says otherwise.
        let url = if url.contains("mode=") {
            url.to_string()
        } else if url.contains('?') {
            format!("{url}&mode=rwc")
        } else {
            format!("{url}?mode=rwc")
        };
        let sync = match config.sqlite_sync {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        let options: AnyConnectOptions = url.parse()?;
        let write = AnyPoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA journal_mode = WAL").await?;
                    conn.execute(format!("PRAGMA synchronous = {sync}").as_str())
                        .await?;
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    // Savepoints (every change runs in one) journal into
                    // temp storage: keep it in memory, not in temp files.
                    conn.execute("PRAGMA temp_store = MEMORY").await?;
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await?;
        let read = AnyPoolOptions::new()
            .max_connections(config.db_max_connections.clamp(1, 8))
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute("PRAGMA busy_timeout = 5000").await?;
                    conn.execute("PRAGMA query_only = ON").await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        Ok(Db {
            backend: Backend::Sqlite,
            write,
            read,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Pool for reads that need no transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// Starts a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so the transaction never fails half-way to upgrade.
    pub async fn begin_write(&self) -> Result<Transaction<'static, Any>, sqlx::Error> {
        match self.backend {
            Backend::Sqlite => self.write.begin_with("BEGIN IMMEDIATE").await,
            Backend::Postgres => self.write.begin().await,
        }
    }

    /// Closes both pools, waiting for checked-out connections to return.
    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }

    /// Applies every migration up to `up_to` that is not applied yet.
    async fn migrate(&self, up_to: i64) -> Result<(), sqlx::Error> {
        let mut conn = self.write.acquire().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_lock($1)")
                .bind(MIGRATION_LOCK_ID)
                .execute(&mut *conn)
                .await?;
        }
        let result = async {
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations (\
                 version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
            )
            .await?;
            // Checksums came after the table: servers before them made it
            // without the column.
            if sqlx::query("SELECT checksum FROM schema_migrations LIMIT 1")
                .fetch_optional(&mut *conn)
                .await
                .is_err()
            {
                conn.execute("ALTER TABLE schema_migrations ADD COLUMN checksum TEXT")
                    .await?;
            }
            for m in MIGRATIONS.iter().filter(|m| m.version <= up_to) {
                let checksum = m.checksum(self.backend);
                let done: Option<(i64, Option<String>)> = sqlx::query_as(
                    "SELECT version, checksum FROM schema_migrations WHERE version = $1",
                )
                .bind(m.version)
                .fetch_optional(&mut *conn)
                .await?;
                match done {
                    Some((_, Some(stored))) if stored != checksum => {
                        return Err(sqlx::Error::Configuration(
                            format!(
                                "migration {} ({}) differs from the one applied to this database \
                                 (checksum {stored}, the file now gives {checksum}): an applied \
                                 migration was edited; add a new migration instead",
                                m.version, m.name
                            )
                            .into(),
                        ));
                    }
                    Some((_, Some(_))) => continue,
                    Some((_, None)) => {
                        // Applied before checksums existed: recorded now.
                        sqlx::query("UPDATE schema_migrations SET checksum = $1 WHERE version = $2")
                            .bind(&checksum)
                            .bind(m.version)
                            .execute(&mut *conn)
                            .await?;
                        continue;
                    }
                    None => {}
                }
                let sql = match self.backend {
                    Backend::Sqlite => m.sqlite,
                    Backend::Postgres => m.postgres,
                };
                let mut tx = conn.begin().await?;
                for statement in split_statements(sql) {
                    tx.execute(statement).await?;
                }
                if let Some(step) = m.step {
                    run_step(&mut tx, step).await?;
                }
                sqlx::query(
                    "INSERT INTO schema_migrations (version, name, applied_at, checksum) VALUES ($1, $2, $3, $4)",
                )
                .bind(m.version)
                .bind(m.name)
                .bind(crate::now_secs())
                .bind(&checksum)
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                tracing::info!(version = m.version, name = m.name, "applied migration");
            }
            Ok::<(), sqlx::Error>(())
        }
        .await;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(MIGRATION_LOCK_ID)
                .execute(&mut *conn)
                .await?;
        }
        result
    }

    /// Returns the token-signing secret stored in the database, generating it
    /// on first use. Every replica sharing the database gets the same one.
    pub async fn stored_token_secret(&self) -> Result<String, sqlx::Error> {
        self.stored_value("token", crate::auth::generate_secret())
            .await
    }

    /// The market's identity ([`marketplace_protocol::Session::server_id`]):
    /// made on first start and kept in the database, so every replica and
    /// every address of this market announce the same one.
    pub async fn stored_server_id(&self) -> Result<String, sqlx::Error> {
        self.stored_value("server_id", new_market_id()).await
    }

    /// A value of `server_secrets`, set to `candidate` if it has none yet
    /// (the first replica to get there wins; the others read its value).
    async fn stored_value(&self, name: &str, candidate: String) -> Result<String, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(&candidate)
        .execute(&mut *tx)
        .await?;
        let (value,): (String,) =
            sqlx::query_as("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(value)
    }

    /// Forgets up to `limit` deposit buckets older than `before` (Unix
    /// seconds): they no longer count towards any cap. In chunks, like the
    /// answers, so that no write waits long behind it.
    pub async fn prune_deposit_log_chunk(
        &self,
        before: i64,
        limit: i64,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM deposit_log WHERE (player_id, item_id, at) IN \
             (SELECT player_id, item_id, at FROM deposit_log WHERE at < $1 LIMIT $2)",
        )
        .bind(before)
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    /// Deletes up to `limit` stored idempotent answers older than `cutoff`
    /// (Unix seconds), in one short transaction. Pruning goes chunk by chunk
    /// so that no write waits long behind it.
    pub async fn prune_idempotency_chunk(
        &self,
        cutoff: i64,
        limit: i64,
    ) -> Result<u64, sqlx::Error> {
        let mut tx = self.begin_write().await?;
        let done = sqlx::query(
            "DELETE FROM idempotency_keys WHERE (player_id, idem_key) IN \
             (SELECT player_id, idem_key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
        )
        .bind(cutoff)
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}

/// Gives the database at `url` a new market identity (`server_id`);
/// returns the old and the new. See `marketplace-server new-server-id`.
pub async fn new_server_id(url: &str) -> Result<(String, String), String> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut conn = sqlx::AnyConnection::connect(url)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let old: Option<(String,)> =
        sqlx::query_as("SELECT value FROM server_secrets WHERE name = 'server_id'")
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| format!("not a marketplace database: {e}"))?;
    let new = new_market_id();
    // One statement: a server starting meanwhile sees the old id or the new.
    sqlx::query(
        "INSERT INTO server_secrets (name, value) VALUES ('server_id', $1) \
         ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(&new)
    .execute(&mut conn)
    .await
    .map_err(|e| e.to_string())?;
    let _ = conn.close().await;
    Ok((old.map(|(v,)| v).unwrap_or_default(), new))
}

/// A fresh market identity.
fn new_market_id() -> String {
    format!(
        "mkt_{:016x}{:016x}",
        rand::random::<u64>(),
        rand::random::<u64>()
    )
}

/// Deletes up to `limit` stored answers older than `cutoff`, in the
/// caller's transaction.
pub async fn delete_expired_answers(
    conn: &mut sqlx::AnyConnection,
    cutoff: i64,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM idempotency_keys WHERE (player_id, idem_key) IN \
         (SELECT player_id, idem_key FROM idempotency_keys WHERE created_at < $1 LIMIT $2)",
    )
    .bind(cutoff)
    .bind(limit)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Audits the books of the database at `url` without changing it (no
/// migrations are run; a database older than the books is refused).
pub async fn audit(url: &str) -> Result<crate::books::AuditReport, String> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let url = if url.starts_with("sqlite:") && !url.contains("mode=") {
        format!("{url}{}mode=ro", if url.contains('?') { "&" } else { "?" })
    } else {
        url.to_string()
    };
    let mut conn = sqlx::AnyConnection::connect(&url)
        .await
        .map_err(|e| format!("cannot open the database: {e}"))?;
    let version: Option<(Option<i64>,)> =
        sqlx::query_as("SELECT MAX(version) FROM schema_migrations")
            .fetch_optional(&mut conn)
            .await
            .map_err(|e| format!("not a marketplace database: {e}"))?;
    if version.and_then(|(v,)| v).unwrap_or(0) < 4 {
        return Err(
            "this database is older than the books (schema 4); start the server once to upgrade it"
                .into(),
        );
    }
    let report = crate::books::audit(&mut conn)
        .await
        .map_err(|e| format!("reading the books failed: {e}"))?;
    let _ = conn.close().await;
    Ok(report)
}

async fn run_step(conn: &mut sqlx::AnyConnection, step: Step) -> Result<(), sqlx::Error> {
    match step {
        Step::HashDeviceIds => {
            let rows: Vec<(i64, String)> = sqlx::query_as(
                "SELECT id, device_id FROM players WHERE device_id NOT LIKE 'sha256:%'",
            )
            .fetch_all(&mut *conn)
            .await?;
            for (id, device_id) in rows {
                sqlx::query("UPDATE players SET device_id = $1 WHERE id = $2")
                    .bind(crate::auth::device_hash(&device_id))
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        }
    }
}

/// Splits a migration file into statements: they are separated by blank
/// lines, because trigger bodies contain semicolons. Comment-only chunks are
/// skipped.
fn split_statements(sql: &str) -> impl Iterator<Item = &str> {
    sql.split("\n\n").map(str::trim).filter(|chunk| {
        chunk
            .lines()
            .any(|line| !line.trim().is_empty() && !line.trim_start().starts_with("--"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_on_blank_lines() {
        let sql =
            "-- comment\nCREATE TABLE a (x INT)\n\nCREATE TRIGGER t BEGIN\n SELECT 1;\nEND\n\n";
        let parts: Vec<_> = split_statements(sql).collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[1].contains("SELECT 1;"));
    }
}
