//! The market's books: accounts, stashes, and the ledger rows that move
//! value between them — and the audit that proves they balance.
//!
//! Every credit and item inside the market is in exactly one place: a
//! player's account (credits) or stash (items), a listing's escrow (what
//! remains of the listing while it is active), a buy order's escrow,
//! unclaimed proceeds (a fill not yet claimed, less its fees), a delivery
//! waiting for its player, or the fees the market kept. Value changes place only by a conditional update — a balance
//! or count can never go below zero, `CHECK` constraints say so twice — and
//! every change of place is a ledger row with what moved (`item_id` NULL for
//! credits, `quantity`).
//!
//! | ledger action | from | to |
//! |---|---|---|
//! | `deposit`, `grant`, `opening_*` | outside (the game's save, the backend, the books before accounts existed) | account / stash (`opening_escrow`: a listing; `opening_proceeds`: proceeds) |
//! | `withdraw` | account / stash | outside (the game's save) |
//! | `list` | stash | the listing |
//! | `cancel` | the listing | stash |
//! | `purchase_pay` | the buyer's account | proceeds |
//! | `purchase_items` | the listing | the buyer's stash |
//! | `claim` | proceeds | the seller's account |
//! | `fee` | proceeds | the market's fees (the currency sink) |
//! | `order_place` | the buyer's account | the order's escrow |
//! | `fill_pay` | the order's escrow | proceeds |
//! | `fill_items` | the listing | the buyer's stash, or a delivery (`delivery_id`) |
//! | `order_return` | the order's escrow | the buyer's account, or a delivery |
//! | `listing_return` | the listing (expired) | the seller's stash, or a delivery |
//! | `collect` | a delivery | the player's account / stash |
//!
//! [`audit`] replays these rows and checks that what is in every place is
//! what the ledger says, and that inside = inflow − outflow, per item and
//! for credits — without trusting any client.

use std::collections::BTreeMap;

use marketplace_protocol::Account;
use sqlx::{AnyConnection, Row};

use crate::error::AppError;
use crate::op::OpContext;

/// Sets a savepoint: a refusal found after it is undone with [`undo`].
pub async fn checkpoint(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute("SAVEPOINT change").await.map(drop)
}

/// Keeps what was written since [`checkpoint`].
pub async fn release(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute("RELEASE change").await.map(drop)
}

/// Undoes what was written since [`checkpoint`].
pub async fn undo(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor;
    conn.execute("ROLLBACK TO change").await?;
    conn.execute("RELEASE change").await.map(drop)
}

/// Ends a [`checkpoint`] by the outcome of the work done after it: keeps the
/// writes when it succeeded, undoes them when it was refused. An
/// infrastructure error is passed on untouched (the whole transaction fails).
pub async fn keep_or_undo<T>(
    conn: &mut AnyConnection,
    outcome: Result<T, AppError>,
) -> Result<T, AppError> {
    match outcome {
        Ok(answer) => {
            release(conn).await?;
            Ok(answer)
        }
        Err(e) if e.is_infrastructure() => Err(e),
        Err(refusal) => {
            undo(conn).await?;
            Err(refusal)
        }
    }
}

/// Adds credits (`item_id` None) or items to a player's account.
pub async fn credit(
    conn: &mut AnyConnection,
    player_id: i64,
    item_id: Option<&str>,
    quantity: i64,
) -> Result<(), AppError> {
    let limit = marketplace_protocol::MAX_HOLDING.saturating_mul(1000);
    let touched = match item_id {
        None => sqlx::query(
            "INSERT INTO accounts (player_id, credits, version) VALUES ($1, $2, 1) \
             ON CONFLICT (player_id) DO UPDATE SET credits = accounts.credits + excluded.credits, \
             version = accounts.version + 1 WHERE accounts.credits + excluded.credits <= $3",
        )
        .bind(player_id)
        .bind(quantity)
        .bind(limit)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        Some(item) => {
            let n = sqlx::query(
                "INSERT INTO stash (player_id, item_id, quantity) VALUES ($1, $2, $3) \
                 ON CONFLICT (player_id, item_id) DO UPDATE SET quantity = stash.quantity + excluded.quantity \
                 WHERE stash.quantity + excluded.quantity <= $4",
            )
            .bind(player_id)
            .bind(item)
            .bind(quantity)
            .bind(limit)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            bump(conn, player_id).await?;
            n
        }
    };
    if touched == 0 {
        // Never a refusal: it comes after other writes. Unreachable within
        // the deposit caps; if it ever happens the transaction rolls back.
        return Err(AppError::Internal(format!(
            "account of player {player_id} would hold more than the market allows"
        )));
    }
    Ok(())
}

/// Takes credits or items out of a player's account, only if they are there.
pub async fn debit(
    conn: &mut AnyConnection,
    player_id: i64,
    item_id: Option<&str>,
    quantity: i64,
) -> Result<(), AppError> {
    let touched = match item_id {
        None => sqlx::query(
            "UPDATE accounts SET credits = credits - $2, version = version + 1 \
             WHERE player_id = $1 AND credits >= $2",
        )
        .bind(player_id)
        .bind(quantity)
        .execute(&mut *conn)
        .await?
        .rows_affected(),
        Some(item) => {
            let n = sqlx::query(
                "UPDATE stash SET quantity = quantity - $3 \
                 WHERE player_id = $1 AND item_id = $2 AND quantity >= $3",
            )
            .bind(player_id)
            .bind(item)
            .bind(quantity)
            .execute(&mut *conn)
            .await?
            .rows_affected();
            if n == 1 {
                bump(conn, player_id).await?;
            }
            n
        }
    };
    if touched == 0 {
        return Err(match item_id {
            None => AppError::InsufficientFunds,
            Some(_) => AppError::InsufficientItems,
        });
    }
    Ok(())
}

/// A new version of the account (its stash changed).
async fn bump(conn: &mut AnyConnection, player_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO accounts (player_id, credits, version) VALUES ($1, 0, 1) \
         ON CONFLICT (player_id) DO UPDATE SET version = accounts.version + 1",
    )
    .bind(player_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// How much of `item_id` (or credits) the player holds in the market account.
pub async fn holding(
    conn: &mut AnyConnection,
    player_id: i64,
    item_id: Option<&str>,
) -> Result<i64, sqlx::Error> {
    let row: Option<(i64,)> = match item_id {
        None => {
            sqlx::query_as("SELECT credits FROM accounts WHERE player_id = $1")
                .bind(player_id)
                .fetch_optional(conn)
                .await?
        }
        Some(item) => {
            sqlx::query_as("SELECT quantity FROM stash WHERE player_id = $1 AND item_id = $2")
                .bind(player_id)
                .bind(item)
                .fetch_optional(conn)
                .await?
        }
    };
    Ok(row.map_or(0, |(n,)| n))
}

/// What moved, for the ledger.
#[derive(Default)]
pub struct Move<'a> {
    pub player_id: i64,
    pub action: &'a str,
    /// `None`: credits.
    pub item_id: Option<&'a str>,
    pub quantity: i64,
    pub listing_id: Option<i64>,
    pub purchase_id: Option<i64>,
    pub order_id: Option<i64>,
    /// Set when the move goes to (or, for `collect`, comes from) a
    /// delivery waiting for the player rather than their account.
    pub delivery_id: Option<i64>,
}

/// A ledger row that moves value.
pub async fn movement(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    m: Move<'_>,
) -> Result<(), sqlx::Error> {
    movements(conn, ctx, &[m]).await
}

/// Several ledger rows in one statement (a trade writes up to four).
///
/// A row carries the request's idempotency key only when it is the
/// requester's own: a fill also moves value of the resting side's owner,
/// whose operations (`GET /v1/me/operations`) must not show another
/// player's key.
pub async fn movements(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    moves: &[Move<'_>],
) -> Result<(), sqlx::Error> {
    if moves.is_empty() {
        return Ok(());
    }
    let mut sql = String::from(
        "INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, idempotency_key, request_id, item_id, quantity, order_id, delivery_id) VALUES ",
    );
    const COLUMNS: usize = 11;
    for i in 0..moves.len() {
        if i > 0 {
            sql.push_str(", ");
        }
        let params: Vec<String> = (1..=COLUMNS)
            .map(|c| format!("${}", i * COLUMNS + c))
            .collect();
        sql.push_str(&format!("({})", params.join(", ")));
    }
    let mut query = sqlx::query(&sql);
    for m in moves {
        let key =
            (m.player_id == ctx.player_id && !ctx.idem_key.is_empty()).then_some(ctx.idem_key);
        query = query
            .bind(ctx.now)
            .bind(m.player_id)
            .bind(m.action)
            .bind(m.listing_id)
            .bind(m.purchase_id)
            .bind(key)
            .bind(ctx.request_id)
            .bind(m.item_id)
            .bind(m.quantity)
            .bind(m.order_id)
            .bind(m.delivery_id);
    }
    query.execute(conn).await?;
    Ok(())
}

/// Changes an account by `delta` credits or items in one statement: a
/// deposit and a payment of the same trade net out. Refused (nothing
/// written) when the account would go below zero.
pub async fn adjust(
    conn: &mut AnyConnection,
    player_id: i64,
    item_id: Option<&str>,
    delta: i64,
) -> Result<(), AppError> {
    match delta.cmp(&0) {
        std::cmp::Ordering::Equal => Ok(()),
        std::cmp::Ordering::Greater => credit(conn, player_id, item_id, delta).await,
        std::cmp::Ordering::Less => debit(conn, player_id, item_id, -delta).await,
    }
}

/// Lets `quantity` in from the player's game, within the policy, and
/// counts it against the cap — without crediting anything yet (the caller
/// writes the account and the ledger, netting the trade's moves).
pub async fn admit_deposit(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: Option<&str>,
    quantity: i64,
) -> Result<(), AppError> {
    let policy = ctx.policy;
    if !policy.deposits_allowed() {
        return Err(AppError::DepositsDisabled);
    }
    if let Some(item) = item_id {
        policy.check_item(item).map_err(AppError::from)?;
    }
    let key = item_id.unwrap_or("");
    // The last 24 hours, never less: deposits are counted per minute, and a
    // minute's deposits count until a day after the minute ends (so 24 h to
    // 24 h 1 min after each deposit; at most 1,441 rows to add up).
    let minute = ctx.now.div_euclid(60) * 60;
    let (recent,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(amount), 0) AS BIGINT) FROM deposit_log \
         WHERE player_id = $1 AND item_id = $2 AND at > $3",
    )
    .bind(ctx.player_id)
    .bind(key)
    .bind(ctx.now - DEPOSIT_WINDOW_SECS - 60)
    .fetch_one(&mut *conn)
    .await?;
    let cap = policy.cap(item_id);
    if recent.saturating_add(quantity) > cap {
        return Err(AppError::DepositLimit {
            cap,
            left: (cap - recent).max(0),
        });
    }
    sqlx::query(
        "INSERT INTO deposit_log (player_id, item_id, at, amount) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (player_id, item_id, at) DO UPDATE SET amount = deposit_log.amount + excluded.amount",
    )
    .bind(ctx.player_id)
    .bind(key)
    .bind(minute)
    .bind(quantity)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The deposit cap's window: a sliding 24 hours (see [`admit_deposit`]).
pub const DEPOSIT_WINDOW_SECS: i64 = 24 * 3600;

/// Moves value from the player's game into the market, within the policy:
/// `deposits_disabled` under server grants, `unknown_item` off the catalog,
/// `deposit_limit` beyond the cap over the last 24 hours.
pub async fn deposit(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: Option<&str>,
    quantity: i64,
) -> Result<(), AppError> {
    admit_deposit(conn, ctx, item_id, quantity).await?;
    credit(conn, ctx.player_id, item_id, quantity).await?;
    movement(
        conn,
        ctx,
        Move {
            player_id: ctx.player_id,
            action: "deposit",
            item_id,
            quantity,
            listing_id: None,
            purchase_id: None,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Moves value from the market account out to the player's game.
pub async fn withdraw(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: Option<&str>,
    quantity: i64,
    listing_id: Option<i64>,
    purchase_id: Option<i64>,
) -> Result<(), AppError> {
    debit(conn, ctx.player_id, item_id, quantity).await?;
    movement(
        conn,
        ctx,
        Move {
            player_id: ctx.player_id,
            action: "withdraw",
            item_id,
            quantity,
            listing_id,
            purchase_id,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// The player's keyed operations with `seq > after` (oldest first, at most
/// `limit`), each with what it moved between the player's game save and
/// the market: `withdraw` rows bring value into the save, `deposit` rows
/// take it out; the other movements stay inside the market. A client that
/// lost part of its save (a backup older than a trade) re-applies exactly
/// the operations its save does not contain.
///
/// An operation's `seq` is its first ledger row's id. Its rows are written
/// in one transaction; a key whose first row is at or before `after` was
/// listed already and is left out even if later rows are not.
pub async fn operations(
    conn: &mut AnyConnection,
    player_id: i64,
    after: i64,
    limit: i64,
) -> Result<marketplace_protocol::OperationsPage, sqlx::Error> {
    use std::collections::BTreeMap;
    // The next operations: keys whose *first* row is after `after` (a key
    // with a row at or before it was listed already, whatever rows it has
    // after), in the order of their first rows.
    let keys: Vec<(String, i64)> = if limit > 0 {
        sqlx::query_as(
            "SELECT l.idempotency_key, MIN(l.id) FROM ledger l \
             WHERE l.player_id = $1 AND l.idempotency_key IS NOT NULL AND l.id > $2 \
             AND NOT EXISTS (SELECT 1 FROM ledger o WHERE o.player_id = $1 \
                 AND o.idempotency_key = l.idempotency_key AND o.id <= $2) \
             GROUP BY l.idempotency_key ORDER BY MIN(l.id) LIMIT $3",
        )
        .bind(player_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&mut *conn)
        .await?
    } else {
        Vec::new()
    };
    // Every row of those keys, in one statement. A key's rows commit in one
    // transaction, so a key seen above has all of its rows here.
    let mut rows_of: BTreeMap<String, Vec<sqlx::any::AnyRow>> = BTreeMap::new();
    if !keys.is_empty() {
        let placeholders: Vec<String> = (0..keys.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT idempotency_key, id, at, action, item_id, quantity FROM ledger \
             WHERE player_id = $1 AND idempotency_key IN ({}) ORDER BY id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql).bind(player_id);
        for (key, _) in &keys {
            query = query.bind(key);
        }
        for row in query.fetch_all(&mut *conn).await? {
            let key: String = row.try_get("idempotency_key")?;
            rows_of.entry(key).or_default().push(row);
        }
    }
    // Read last: it is at least every seq listed.
    let (last_seq,): (i64,) = sqlx::query_as(
        "SELECT CAST(COALESCE(MAX(id), 0) AS BIGINT) FROM ledger \
         WHERE player_id = $1 AND idempotency_key IS NOT NULL",
    )
    .bind(player_id)
    .fetch_one(&mut *conn)
    .await?;
    let mut operations = Vec::with_capacity(keys.len());
    for (key, _) in keys {
        let rows = rows_of.remove(&key).unwrap_or_default();
        let mut seq = i64::MAX;
        let mut at = 0;
        let mut credits = 0i64;
        let mut items: BTreeMap<String, i64> = BTreeMap::new();
        let mut actions = Vec::new();
        for row in &rows {
            let id: i64 = row.try_get("id")?;
            if id < seq {
                seq = id;
                at = row.try_get("at")?;
            }
            let action: String = row.try_get("action")?;
            let item: Option<String> = row.try_get("item_id")?;
            let q: Option<i64> = row.try_get("quantity")?;
            let sign = match action.as_str() {
                "withdraw" => 1,
                "deposit" => -1,
                _ => 0,
            };
            if let (Some(q), true) = (q, sign != 0) {
                match item {
                    None => credits += sign * q,
                    Some(i) => *items.entry(i).or_insert(0) += sign * q,
                }
            }
            actions.push(action);
        }
        items.retain(|_, n| *n != 0);
        let has = |a: &str| actions.iter().any(|x| x == a);
        let kind = if has("purchase_pay") || has("purchase_items") {
            "purchase"
        } else if has("order_place") {
            "place_order"
        } else if has("collect") {
            "collect"
        } else if has("order_return") {
            "cancel_order"
        } else if has("list") {
            "create_listing"
        } else if has("cancel") {
            "cancel"
        } else if has("claim") {
            "claim"
        } else if has("reprice") {
            "reprice"
        } else if has("grant") {
            "grant"
        } else if has("withdraw") {
            "withdraw"
        } else if has("deposit") {
            "deposit"
        } else {
            "other"
        };
        operations.push(marketplace_protocol::OperationRecord {
            seq,
            key,
            kind: kind.to_string(),
            at,
            credits,
            items,
        });
    }
    Ok(marketplace_protocol::OperationsPage {
        operations,
        last_seq,
    })
}

/// A player's account as they see it.
pub async fn account(conn: &mut AnyConnection, player_id: i64) -> Result<Account, sqlx::Error> {
    let head: Option<(i64, i64)> =
        sqlx::query_as("SELECT credits, version FROM accounts WHERE player_id = $1")
            .bind(player_id)
            .fetch_optional(&mut *conn)
            .await?;
    let rows = sqlx::query(
        "SELECT item_id, quantity FROM stash WHERE player_id = $1 AND quantity > 0 ORDER BY item_id",
    )
    .bind(player_id)
    .fetch_all(&mut *conn)
    .await?;
    let mut stash = BTreeMap::new();
    for row in rows {
        stash.insert(
            row.try_get::<String, _>("item_id")?,
            row.try_get::<i64, _>("quantity")?,
        );
    }
    let (credits, version) = head.unwrap_or((0, 0));
    Ok(Account {
        credits,
        stash,
        version,
    })
}

/// The market's totals, from the places (not the ledger): what `/metrics`
/// exports.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub account_credits: i64,
    pub unclaimed_proceeds: i64,
    pub stash_items: i64,
    pub escrow_items: i64,
    /// Credits held by active buy orders.
    pub order_escrow_credits: i64,
    /// Waiting to be collected.
    pub delivery_credits: i64,
    pub delivery_items: i64,
    /// Kept by the market (the currency sink).
    pub fees: i64,
    pub inflow_credits: i64,
    pub outflow_credits: i64,
    pub inflow_items: i64,
    pub outflow_items: i64,
}

pub async fn totals(conn: &mut AnyConnection) -> Result<Totals, sqlx::Error> {
    const SQL: [&str; 12] = [
        "SELECT CAST(COALESCE(SUM(credits), 0) AS BIGINT) FROM accounts",
        "SELECT CAST(COALESCE(SUM(price - fee), 0) AS BIGINT) FROM purchases WHERE claimed_at IS NULL",
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM stash",
        "SELECT CAST(COALESCE(SUM(remaining), 0) AS BIGINT) FROM listings WHERE status = 'active'",
        "SELECT CAST(COALESCE(SUM(escrow), 0) AS BIGINT) FROM orders",
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM deliveries WHERE collected_at IS NULL AND item_id IS NULL",
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM deliveries WHERE collected_at IS NULL AND item_id IS NOT NULL",
        "SELECT CAST(COALESCE(SUM(fee), 0) AS BIGINT) FROM purchases",
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM ledger WHERE item_id IS NULL AND action IN ('deposit', 'grant', 'opening_proceeds')",
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM ledger WHERE item_id IS NULL AND action = 'withdraw'",
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM ledger WHERE item_id IS NOT NULL AND action IN ('deposit', 'grant', 'opening_escrow')",
        "SELECT CAST(COALESCE(SUM(quantity), 0) AS BIGINT) FROM ledger WHERE item_id IS NOT NULL AND action = 'withdraw'",
    ];
    let mut v = [0i64; 12];
    for (slot, sql) in v.iter_mut().zip(SQL) {
        *slot = sqlx::query_as::<_, (i64,)>(sql)
            .fetch_one(&mut *conn)
            .await?
            .0;
    }
    Ok(Totals {
        account_credits: v[0],
        unclaimed_proceeds: v[1],
        stash_items: v[2],
        escrow_items: v[3],
        order_escrow_credits: v[4],
        delivery_credits: v[5],
        delivery_items: v[6],
        fees: v[7],
        inflow_credits: v[8],
        outflow_credits: v[9],
        inflow_items: v[10],
        outflow_items: v[11],
    })
}

/// What the audit found.
#[derive(Clone, Debug, Default)]
pub struct AuditReport {
    pub lines: Vec<String>,
    /// The mismatches, first one first; empty when the books balance.
    pub mismatches: Vec<String>,
}

impl AuditReport {
    pub fn ok(&self) -> bool {
        self.mismatches.is_empty()
    }
}

/// A place value can be in, as the audit keys it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Place {
    Account(i64),
    Stash(i64, String),
    Escrow(i64),
    Proceeds(i64),
    OrderEscrow(i64),
    /// A delivery waiting for its player: credits or one kind of item.
    Delivery(i64, Option<String>),
    /// The currency sink.
    Fees,
}

/// Replays the ledger and compares every place with what it holds.
///
/// 1. From the ledger alone: each account's credits, each stash's items,
///    each listing's escrow and each purchase's unclaimed proceeds.
/// 2. These must equal the tables (accounts, stash, active listings,
///    unclaimed purchases), and nothing may be negative.
/// 3. Inside the market = inflow − outflow, for credits and per item.
pub async fn audit(conn: &mut AnyConnection) -> Result<AuditReport, sqlx::Error> {
    let mut report = AuditReport::default();
    let mut expected: BTreeMap<Place, i64> = BTreeMap::new();
    let mut inflow: BTreeMap<Option<String>, i64> = BTreeMap::new();
    let mut outflow: BTreeMap<Option<String>, i64> = BTreeMap::new();
    let rows = sqlx::query(
        "SELECT id, player_id, action, listing_id, purchase_id, order_id, delivery_id, item_id, quantity FROM ledger \
         WHERE quantity IS NOT NULL ORDER BY id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let mut moved = 0usize;
    for row in &rows {
        let id: i64 = row.try_get("id")?;
        let player: i64 = row.try_get("player_id")?;
        let action: String = row.try_get("action")?;
        let listing: Option<i64> = row.try_get("listing_id")?;
        let purchase: Option<i64> = row.try_get("purchase_id")?;
        let order: Option<i64> = row.try_get("order_id")?;
        let delivery: Option<i64> = row.try_get("delivery_id")?;
        let item: Option<String> = row.try_get("item_id")?;
        let q: i64 = row.try_get("quantity")?;
        moved += 1;
        let own = |item: &Option<String>| match item {
            None => Place::Account(player),
            Some(i) => Place::Stash(player, i.clone()),
        };
        // Where value owed to the row's player goes: a delivery when the
        // row names one, else their account.
        let owed = |item: &Option<String>| match delivery {
            Some(d) => Place::Delivery(d, item.clone()),
            None => own(item),
        };
        let escrow = Place::Escrow(listing.unwrap_or(0));
        let order_escrow = Place::OrderEscrow(order.unwrap_or(0));
        let proceeds = Place::Proceeds(purchase.unwrap_or(0));
        let mut add = |place: Place, delta: i64| *expected.entry(place).or_insert(0) += delta;
        match action.as_str() {
            "deposit" | "grant" => {
                add(own(&item), q);
                *inflow.entry(item.clone()).or_insert(0) += q;
            }
            "withdraw" => {
                add(own(&item), -q);
                *outflow.entry(item.clone()).or_insert(0) += q;
            }
            "opening_escrow" => {
                add(Place::Escrow(listing.unwrap_or(0)), q);
                *inflow.entry(item.clone()).or_insert(0) += q;
            }
            "opening_proceeds" => {
                add(Place::Proceeds(purchase.unwrap_or(0)), q);
                *inflow.entry(None).or_insert(0) += q;
            }
            "list" => {
                add(own(&item), -q);
                add(Place::Escrow(listing.unwrap_or(0)), q);
            }
            "cancel" => {
                add(Place::Escrow(listing.unwrap_or(0)), -q);
                add(own(&item), q);
            }
            "purchase_pay" => {
                add(Place::Account(player), -q);
                add(Place::Proceeds(purchase.unwrap_or(0)), q);
            }
            "purchase_items" => {
                add(Place::Escrow(listing.unwrap_or(0)), -q);
                add(own(&item), q);
            }
            "claim" => {
                add(Place::Proceeds(purchase.unwrap_or(0)), -q);
                add(Place::Account(player), q);
            }
            "fee" => {
                add(proceeds, -q);
                add(Place::Fees, q);
            }
            "order_place" => {
                add(Place::Account(player), -q);
                add(order_escrow, q);
            }
            "fill_pay" => {
                add(order_escrow, -q);
                add(proceeds, q);
            }
            "fill_items" | "listing_return" => {
                add(escrow, -q);
                add(owed(&item), q);
            }
            "order_return" => {
                add(order_escrow, -q);
                add(owed(&None), q);
            }
            "collect" => {
                add(Place::Delivery(delivery.unwrap_or(0), item.clone()), -q);
                add(own(&item), q);
            }
            other => report
                .mismatches
                .push(format!("ledger row {id}: unknown movement {other:?}")),
        }
    }
    // What the tables hold.
    let mut actual: BTreeMap<Place, i64> = BTreeMap::new();
    for row in sqlx::query("SELECT player_id, credits FROM accounts")
        .fetch_all(&mut *conn)
        .await?
    {
        actual.insert(
            Place::Account(row.try_get("player_id")?),
            row.try_get("credits")?,
        );
    }
    for row in sqlx::query("SELECT player_id, item_id, quantity FROM stash")
        .fetch_all(&mut *conn)
        .await?
    {
        actual.insert(
            Place::Stash(row.try_get("player_id")?, row.try_get("item_id")?),
            row.try_get("quantity")?,
        );
    }
    for row in sqlx::query("SELECT id, remaining FROM listings WHERE status = 'active'")
        .fetch_all(&mut *conn)
        .await?
    {
        actual.insert(Place::Escrow(row.try_get("id")?), row.try_get("remaining")?);
    }
    for row in sqlx::query("SELECT id, price - fee AS owed FROM purchases WHERE claimed_at IS NULL")
        .fetch_all(&mut *conn)
        .await?
    {
        actual.insert(Place::Proceeds(row.try_get("id")?), row.try_get("owed")?);
    }
    for row in sqlx::query("SELECT id, escrow FROM orders WHERE escrow <> 0")
        .fetch_all(&mut *conn)
        .await?
    {
        actual.insert(
            Place::OrderEscrow(row.try_get("id")?),
            row.try_get("escrow")?,
        );
    }
    for row in
        sqlx::query("SELECT id, item_id, quantity FROM deliveries WHERE collected_at IS NULL")
            .fetch_all(&mut *conn)
            .await?
    {
        actual.insert(
            Place::Delivery(row.try_get("id")?, row.try_get("item_id")?),
            row.try_get("quantity")?,
        );
    }
    let (fees,): (i64,) =
        sqlx::query_as("SELECT CAST(COALESCE(SUM(fee), 0) AS BIGINT) FROM purchases")
            .fetch_one(&mut *conn)
            .await?;
    if fees != 0 {
        actual.insert(Place::Fees, fees);
    }
    let mut places: Vec<&Place> = expected.keys().chain(actual.keys()).collect();
    places.sort();
    places.dedup();
    for place in places {
        let want = expected.get(place).copied().unwrap_or(0);
        let have = actual.get(place).copied().unwrap_or(0);
        if have < 0 || want < 0 {
            report.mismatches.push(format!(
                "{place:?} is negative (holds {have}, ledger says {want})"
            ));
        } else if want != have {
            report
                .mismatches
                .push(format!("{place:?} holds {have}, the ledger says {want}"));
        }
    }
    // Every unit sold at most once (I1): a listing's fills and what remains
    // or went back make up its quantity, an order's fills and what remains
    // make up its, and an order holds exactly what its remaining units
    // cost. (Listings cancelled before partial fills recorded no return.)
    const UNITS: [(&str, &str); 3] = [
        (
            "listing",
            "SELECT l.id FROM listings l WHERE l.quantity <> l.remaining + COALESCE(l.returned, 0) \
             + (SELECT COALESCE(SUM(p.quantity), 0) FROM purchases p WHERE p.listing_id = l.id) \
             AND NOT (l.status = 'cancelled' AND l.returned IS NULL) ORDER BY l.id LIMIT 5",
        ),
        (
            "order",
            "SELECT o.id FROM orders o WHERE o.quantity <> o.remaining \
             + (SELECT COALESCE(SUM(p.quantity), 0) FROM purchases p WHERE p.order_id = o.id) \
             ORDER BY o.id LIMIT 5",
        ),
        (
            "order (escrow)",
            "SELECT id FROM orders WHERE (status = 'active' AND escrow <> remaining * max_price) \
             OR (status <> 'active' AND escrow <> 0) ORDER BY id LIMIT 5",
        ),
    ];
    for (what, sql) in UNITS {
        for (id,) in sqlx::query_as::<_, (i64,)>(sql)
            .fetch_all(&mut *conn)
            .await?
        {
            report.mismatches.push(format!(
                "{what} {id}: its units do not add up (fills, remaining, returned)"
            ));
        }
    }
    // Conservation: inside = in − out, for credits and per item.
    let mut inside: BTreeMap<Option<String>, i64> = BTreeMap::new();
    for (place, n) in &actual {
        let kind = match place {
            Place::Account(_) | Place::Proceeds(_) | Place::OrderEscrow(_) | Place::Fees => None,
            Place::Stash(_, item) => Some(item.clone()),
            Place::Delivery(_, item) => item.clone(),
            Place::Escrow(_) => continue,
        };
        *inside.entry(kind).or_insert(0) += n;
    }
    for row in sqlx::query("SELECT item_id, CAST(SUM(remaining) AS BIGINT) AS n FROM listings WHERE status = 'active' GROUP BY item_id")
        .fetch_all(&mut *conn)
        .await?
    {
        *inside.entry(Some(row.try_get("item_id")?)).or_insert(0) += row.try_get::<i64, _>("n")?;
    }
    let mut kinds: Vec<&Option<String>> = inside
        .keys()
        .chain(inflow.keys())
        .chain(outflow.keys())
        .collect();
    kinds.sort();
    kinds.dedup();
    for kind in kinds {
        let (i, o, n) = (
            inflow.get(kind).copied().unwrap_or(0),
            outflow.get(kind).copied().unwrap_or(0),
            inside.get(kind).copied().unwrap_or(0),
        );
        let name = kind.as_deref().unwrap_or("credits");
        let line = if kind.is_none() && fees != 0 {
            format!("{name}: {n} inside (of which {fees} kept as fees) = {i} in − {o} out")
        } else {
            format!("{name}: {n} inside = {i} in − {o} out")
        };
        if n != i - o {
            report.mismatches.push(format!("conservation of {line}"));
        }
        report.lines.push(line);
    }
    report
        .lines
        .insert(0, format!("{moved} ledger movements replayed"));
    Ok(report)
}
