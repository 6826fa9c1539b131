//! Idempotent execution of every mutating request.
//!
//! A client sends each operation with an `Idempotency-Key` and retries it with
//! the same key until it gets an answer. The server must apply the operation
//! once and give every retry the first answer, byte for byte. So the key is
//! claimed, the operation applied and the answer stored **in one
//! transaction**: either all of it commits or none of it does, and a retry
//! after a rollback simply runs again.
//!
//! Concurrency with the same key:
//! - inside one server process, a second request while the first runs gets
//!   409 `request_in_progress` at once ([`InFlight`]);
//! - across PostgreSQL replicas, the second transaction's insert of the key
//!   waits on the first's uncommitted row, then finds it committed and
//!   replays the stored answer. Either way the operation happens once.
//!
//! The operation runs in a task of its own (or in the SQLite writer, see
//! [`GroupCommit`]), so a client that hangs up mid-request cannot cancel a
//! transaction half-way; its retry finds the stored answer.
//!
//! Stored answers are pruned after the retention period; the operation is
//! still recognised after that, from its key in the domain rows
//! ([`market::recall`]): exactly once has no expiry.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use marketplace_protocol::{EconomyMode, ErrorCode, MarketChange};

use crate::error::{Answer, AppError};
use crate::market::{self, Done, OpContext};
use crate::AppState;

/// The canonical JSON of a change, hashed: what a replayed key is compared against.
fn request_hash(change: &MarketChange) -> String {
    let canonical = serde_json::to_vec(change).unwrap_or_default();
    crate::auth::sha256_hex(&canonical)
}

/// The answer to a mutation and how it came about.
pub struct Outcome {
    pub answer: Answer,
    /// The error code of a refused operation, `None` on success.
    pub code: Option<ErrorCode>,
    /// True when this is the stored answer of an earlier request.
    pub replayed: bool,
}

/// Keys being executed in this process right now.
#[derive(Default)]
pub struct InFlight {
    keys: Mutex<HashSet<(i64, String)>>,
}

pub struct InFlightGuard {
    owner: Arc<crate::Inner>,
    entry: (i64, String),
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if let Ok(mut keys) = self.owner.in_flight.keys.lock() {
            keys.remove(&self.entry);
        }
    }
}

fn claim_in_flight(state: &AppState, player_id: i64, key: &str) -> Option<InFlightGuard> {
    let entry = (player_id, key.to_string());
    let mut keys = state.0.in_flight.keys.lock().ok()?;
    if !keys.insert(entry.clone()) {
        return None;
    }
    Some(InFlightGuard {
        owner: state.0.clone(),
        entry,
    })
}

/// One mutation on its way to the database.
pub struct Job {
    player_id: i64,
    key: String,
    request_id: String,
    mutation: MarketChange,
    /// The server clock when the request arrived: the time the change is recorded at.
    now: i64,
    policy: Arc<crate::economy::Policy>,
}

/// Runs `mutation` for `player_id` exactly once per `key`.
pub async fn run(
    state: &AppState,
    player_id: i64,
    key: String,
    request_id: String,
    mutation: MarketChange,
) -> Result<Outcome, AppError> {
    let guard = claim_in_flight(state, player_id, &key).ok_or(AppError::RequestInProgress)?;
    let job = Job {
        player_id,
        key,
        request_id,
        mutation,
        now: state.0.clock.now(),
        policy: state.0.policy.clone(),
    };
    let result = match &state.0.group_commit {
        Some(writer) => writer.submit(job).await,
        None => {
            let db = state.0.db.clone();
            tokio::spawn(async move { run_alone(&db, &job).await })
                .await
                .map_err(|e| AppError::Internal(format!("mutation task failed: {e}")))?
        }
    };
    drop(guard);
    if result.is_ok() {
        // Committed: this replica's subscribers hear of it now.
        state.0.stream.wake();
    }
    result
}

/// One job in its own transaction (PostgreSQL: many of these run at once,
/// ordered by row locks).
async fn run_alone(db: &crate::Db, job: &Job) -> Result<Outcome, AppError> {
    let mut tx = db.begin_write().await?;
    let outcome = execute_in(&mut tx, job).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// Claims the key, applies the mutation and stores its answer, inside the
/// caller's transaction. Returns
/// - `Ok` with the answer to send (new or replayed);
/// - `Err` of a refusal that wrote nothing (`idempotency_key_reused`);
/// - `Err` of an infrastructure failure: the caller must roll back.
async fn execute_in(conn: &mut sqlx::AnyConnection, job: &Job) -> Result<Outcome, AppError> {
    let hash = request_hash(&job.mutation);
    // Claim the key. If another request holds it, replay its stored answer —
    // unless the pruner deleted it between our insert and our read, in which
    // case the key is free again and the next round claims it.
    let mut rounds = 0;
    loop {
        rounds += 1;
        let claimed = sqlx::query(
            "INSERT INTO idempotency_keys (player_id, idem_key, request_hash, status_code, response_body, created_at) \
             VALUES ($1, $2, $3, 0, '', $4) ON CONFLICT (player_id, idem_key) DO NOTHING",
        )
        .bind(job.player_id)
        .bind(&job.key)
        .bind(&hash)
        .bind(job.now)
        .execute(&mut *conn)
        .await?
        .rows_affected()
            == 1;
        if claimed {
            break;
        }
        let stored: Option<(String, i64, String)> = sqlx::query_as(
            "SELECT request_hash, status_code, response_body FROM idempotency_keys \
             WHERE player_id = $1 AND idem_key = $2",
        )
        .bind(job.player_id)
        .bind(&job.key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some((stored_hash, status, body)) = stored else {
            if rounds < 3 {
                continue;
            }
            return Err(AppError::Unavailable);
        };
        if stored_hash != hash {
            return Err(AppError::IdempotencyKeyReused);
        }
        let status = u16::try_from(status).unwrap_or(500);
        if status == 0 {
            return Err(AppError::RequestInProgress);
        }
        return Ok(Outcome {
            code: stored_code(status, &body),
            answer: Answer { status, body },
            replayed: true,
        });
    }

    let ctx = OpContext {
        player_id: job.player_id,
        request_id: &job.request_id,
        idem_key: &job.key,
        now: job.now,
        policy: &job.policy,
        outbox: Default::default(),
    };
    // The stored answer may have been pruned: the key is still known if it
    // changed something, and the rows it changed rebuild the answer. (A
    // purchase asks only when it loses the race — the path of most
    // purchases, kept to the fewest statements — see `market::purchase`.)
    let kind = change_kind(&job.mutation);
    let known: Option<(String,)> = if matches!(job.mutation, MarketChange::Purchase { .. }) {
        None
    } else {
        sqlx::query_as("SELECT kind FROM operation_keys WHERE player_id = $1 AND idem_key = $2")
            .bind(job.player_id)
            .bind(&job.key)
            .fetch_optional(&mut *conn)
            .await?
    };
    let (result, replayed) = match known {
        Some((k,)) if k != kind => (Err(AppError::IdempotencyKeyReused), false),
        Some(_) => match market::recall(conn, &ctx, &job.mutation).await {
            Ok(Some(done)) => (Ok(done), true),
            Ok(None) => (
                Err(AppError::Internal(format!(
                    "key of a {kind} without its rows"
                ))),
                false,
            ),
            Err(e) => (Err(e), false),
        },
        None if matches!(job.mutation, MarketChange::Purchase { .. }) => {
            // Records its own key, and recalls its own replays.
            match market::apply(conn, &ctx, &job.mutation).await {
                Ok(effect) => (Ok(effect.done), effect.replayed),
                Err(e) => (Err(e), false),
            }
        }
        None => {
            // A refusal leaves nothing written (see `market`).
            let result = market::apply(conn, &ctx, &job.mutation)
                .await
                .map(|effect| effect.done);
            if result.is_ok() {
                sqlx::query(
                    "INSERT INTO operation_keys (player_id, idem_key, kind) VALUES ($1, $2, $3)",
                )
                .bind(job.player_id)
                .bind(&job.key)
                .bind(kind)
                .execute(&mut *conn)
                .await?;
            }
            (result, false)
        }
    };
    // A business refusal is decided before the operation writes anything, so
    // it is stored as the answer like a success. An infrastructure failure
    // may leave partial writes: it goes up and the transaction rolls back,
    // key included, so the client's retry runs the operation anew.
    let (answer, code) = match result {
        Ok(mut done) => {
            if job.policy.economy().mode == EconomyMode::ServerGrants {
                with_account(conn, job.player_id, &mut done).await?;
            }
            (answer_of(&done)?, None)
        }
        Err(e) if e.is_business_outcome() => (Answer::from(&e), Some(e.code())),
        Err(e) => return Err(e),
    };
    if code.is_none() && !replayed {
        // Last of the change's writes but one: it takes the stream's
        // counter, held to the commit (see `stream`).
        crate::stream::publish(conn, &ctx).await?;
    }
    sqlx::query(
        "UPDATE idempotency_keys SET status_code = $1, response_body = $2 \
         WHERE player_id = $3 AND idem_key = $4",
    )
    .bind(i64::from(answer.status))
    .bind(&answer.body)
    .bind(job.player_id)
    .bind(&job.key)
    .execute(&mut *conn)
    .await?;
    Ok(Outcome {
        answer,
        code,
        replayed,
    })
}

/// Under server grants the client mirrors the market account: a change's
/// answer carries the account right after it (read in the same
/// transaction), in its `transfer`, so the mirror is always a view the
/// server had — never the client's arithmetic (which double-counted a
/// withdrawal and a purchase settling after a refresh). Answers of moves
/// carry their account already.
async fn with_account(
    conn: &mut sqlx::AnyConnection,
    player_id: i64,
    done: &mut Done,
) -> Result<(), AppError> {
    if let Some(transfer) = done.transfer_mut() {
        transfer.account = Some(crate::books::account(conn, player_id).await?);
    }
    Ok(())
}

/// The HTTP answer of what a change did: the edge where the domain's
/// [`Done`] becomes a status and a JSON body (and is stored as such).
fn answer_of(done: &Done) -> Result<Answer, AppError> {
    use axum::http::StatusCode;
    match done {
        Done::Listing { envelope, created } => Answer::json(
            if *created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            envelope,
        ),
        Done::Purchase(p) => Answer::json(StatusCode::OK, p),
        Done::Claim(c) => Answer::json(StatusCode::OK, c),
        Done::Moved(m) => Answer::json(StatusCode::OK, m),
        Done::Order { envelope, created } => Answer::json(
            if *created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            envelope,
        ),
        Done::Collected(c) => Answer::json(StatusCode::OK, c),
    }
}

/// The kind of change a key made, as `operation_keys` records it.
fn change_kind(change: &MarketChange) -> &'static str {
    match change {
        MarketChange::CreateListing { .. } => "create_listing",
        MarketChange::Reprice { .. } => "reprice",
        MarketChange::Cancel { .. } => "cancel",
        MarketChange::Purchase { .. } => "purchase",
        MarketChange::Claim { .. } => "claim",
        MarketChange::Deposit { .. } => "deposit",
        MarketChange::Withdraw { .. } => "withdraw",
        MarketChange::PlaceOrder { .. } => "place_order",
        MarketChange::CancelOrder { .. } => "cancel_order",
        MarketChange::Collect { .. } => "collect",
    }
}

/// Group commit for SQLite's single writer.
///
/// SQLite commits one transaction at a time, and with `synchronous=FULL`
/// every commit waits for an fsync. So one writer task takes every mutation
/// waiting in its queue (up to [`MAX_BATCH`]), runs them one after another in
/// **one** transaction and commits once; only then does any of them get its
/// answer (I3: nothing is acknowledged before it is durable). Mutations are
/// still applied strictly one at a time, so each sees the effects of those
/// before it exactly as with separate transactions.
///
/// If the batch hits an infrastructure error, it is rolled back and each of
/// its jobs is retried in a transaction of its own, so one failing job cannot
/// fail its neighbours.
///
/// # Supervised
/// The writer runs under a supervisor: if it panics (a bug), the jobs of
/// that batch get `unavailable` (the client retries; the transaction was
/// rolled back), the panic is logged, and a new writer takes over the same
/// queue. `/healthz` asks the writer itself ([`GroupCommit::ping`]), so a
/// writer that cannot answer makes the health check fail.
///
/// Housekeeping that writes (pruning old answers) goes through the same
/// queue in small chunks, between batches, so it never holds the write lock
/// for long.
pub struct GroupCommit {
    queue: mpsc::Sender<Work>,
    restarts: Arc<std::sync::atomic::AtomicU64>,
}

/// Most mutations committed together.
pub const MAX_BATCH: usize = 128;

/// What the writer is asked to do.
enum Work {
    Job(Job, oneshot::Sender<Result<Outcome, AppError>>),
    /// Answer once the batch before it is done (health check).
    Ping(oneshot::Sender<()>),
    /// Delete up to `limit` stored answers older than `cutoff`.
    Prune {
        cutoff: i64,
        limit: i64,
        reply: oneshot::Sender<Result<u64, sqlx::Error>>,
    },
    /// Panic (tests of the supervisor only).
    Crash,
}

impl GroupCommit {
    /// Starts the supervised writer on the current runtime. It ends when the
    /// last `GroupCommit` handle is dropped.
    pub fn start(db: crate::Db) -> GroupCommit {
        let (queue, rx) = mpsc::channel(4 * MAX_BATCH);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let restarts = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = restarts.clone();
        tokio::spawn(async move {
            let mut careful = 0;
            loop {
                match tokio::spawn(writer(db.clone(), rx.clone(), careful)).await {
                    Ok(()) => return, // the queue closed: the server is gone
                    Err(e) if e.is_panic() => {
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::error!("the SQLite writer panicked; a new one takes over");
                        // The next jobs run one transaction each: a job that
                        // panics again takes down only itself.
                        careful = CAREFUL_JOBS;
                    }
                    Err(_) => return, // the runtime is shutting down
                }
            }
        });
        GroupCommit { queue, restarts }
    }

    async fn submit(&self, job: Job) -> Result<Outcome, AppError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Work::Job(job, reply))
            .await
            .map_err(|_| AppError::Unavailable)?;
        answer.await.map_err(|_| AppError::Unavailable)?
    }

    /// True when the writer answers within `timeout` (a full queue counts
    /// against the time too).
    pub async fn ping(&self, timeout: std::time::Duration) -> bool {
        let (reply, answer) = oneshot::channel();
        let round_trip =
            async { self.queue.send(Work::Ping(reply)).await.is_ok() && answer.await.is_ok() };
        matches!(tokio::time::timeout(timeout, round_trip).await, Ok(true))
    }

    /// Deletes up to `limit` stored answers older than `cutoff`, between batches.
    pub async fn prune(&self, cutoff: i64, limit: i64) -> Result<u64, sqlx::Error> {
        let (reply, answer) = oneshot::channel();
        let gone = || sqlx::Error::PoolClosed;
        self.queue
            .send(Work::Prune {
                cutoff,
                limit,
                reply,
            })
            .await
            .map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }

    /// How many times the writer was replaced after a panic.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Makes the writer panic (tests of the supervisor).
    #[doc(hidden)]
    pub async fn crash_for_test(&self) {
        let _ = self.queue.send(Work::Crash).await;
    }
}

/// Jobs run alone after a writer panicked.
const CAREFUL_JOBS: usize = 1_000;

async fn writer(
    db: crate::Db,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Work>>>,
    mut careful: usize,
) {
    let mut rx = rx.lock().await;
    let mut work: Vec<Work> = Vec::with_capacity(MAX_BATCH);
    loop {
        let limit = if careful > 0 { 1 } else { MAX_BATCH };
        if rx.recv_many(&mut work, limit).await == 0 {
            return;
        }
        careful = careful.saturating_sub(work.len());
        let mut batch = Vec::with_capacity(work.len());
        let mut prunes = Vec::new();
        let mut after = Vec::new();
        for w in work.drain(..) {
            match w {
                Work::Job(job, reply) => batch.push((job, reply)),
                Work::Prune {
                    cutoff,
                    limit,
                    reply,
                } => prunes.push((cutoff, limit, reply)),
                other => after.push(other),
            }
        }
        if !batch.is_empty() {
            let jobs: Vec<&Job> = batch.iter().map(|(job, _)| job).collect();
            // A pruning chunk rides in the batch's transaction: one commit
            // (one fsync) for both.
            let chunk = prunes.pop();
            match commit_batch(&db, &jobs, chunk.as_ref().map(|(c, l, _)| (*c, *l))).await {
                Ok((results, pruned)) => {
                    for ((_, reply), result) in batch.drain(..).zip(results) {
                        let _ = reply.send(result);
                    }
                    if let Some((_, _, reply)) = chunk {
                        let _ = reply.send(Ok(pruned));
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, jobs = batch.len(), "batch failed; retrying its jobs one by one");
                    for (job, reply) in batch.drain(..) {
                        let _ = reply.send(run_alone(&db, &job).await);
                    }
                    if let Some(chunk) = chunk {
                        prunes.push(chunk);
                    }
                }
            }
        }
        for (cutoff, limit, reply) in prunes {
            let _ = reply.send(db.prune_idempotency_chunk(cutoff, limit).await);
        }
        for w in after {
            match w {
                Work::Ping(reply) => {
                    let _ = reply.send(());
                }
                Work::Crash => panic!("the SQLite writer was told to crash (test)"),
                Work::Job(..) | Work::Prune { .. } => {}
            }
        }
    }
}

/// The batch's jobs, one after another, and a pruning chunk, in one
/// transaction; returns each job's result and how many answers were pruned.
async fn commit_batch(
    db: &crate::Db,
    jobs: &[&Job],
    prune: Option<(i64, i64)>,
) -> Result<(Vec<Result<Outcome, AppError>>, u64), AppError> {
    let mut tx = db.begin_write().await?;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        match execute_in(&mut tx, job).await {
            Err(e) if e.is_infrastructure() => return Err(e),
            other => results.push(other),
        }
    }
    let pruned = match prune {
        Some((cutoff, limit)) => crate::db::delete_expired_answers(&mut tx, cutoff, limit).await?,
        None => 0,
    };
    tx.commit().await?;
    Ok((results, pruned))
}

fn stored_code(status: u16, body: &str) -> Option<ErrorCode> {
    if status < 400 {
        return None;
    }
    serde_json::from_str::<marketplace_protocol::ErrorEnvelope>(body)
        .ok()
        .and_then(|e| ErrorCode::parse(&e.error.code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tells_bodies_apart() {
        let a = MarketChange::Purchase {
            listing_id: 1,
            expected_price: 100,
            quantity: None,
            deposit: 0,
        };
        let b = MarketChange::Purchase {
            listing_id: 1,
            expected_price: 101,
            quantity: None,
            deposit: 0,
        };
        let c = MarketChange::Reprice {
            listing_id: 1,
            price: 100,
        };
        assert_eq!(request_hash(&a), request_hash(&a.clone()));
        assert_ne!(request_hash(&a), request_hash(&b));
        assert_ne!(request_hash(&a), request_hash(&c));
        // A body without a deposit hashes as before deposits existed, so a
        // journaled request from an older client replays as itself.
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"op":"purchase","listing_id":1,"expected_price":100}"#
        );
    }
}
