//! The marketplace's state changes, each run inside the caller's write
//! transaction (see [`crate::idempotency`]).
//!
//! Every change is a *conditional* update: the `WHERE` clause states what must
//! still be true (`status = 'active'`, the expected price, the seller), and
//! zero affected rows means another request got there first. Only then is the
//! row read again, to tell the caller *why*. No code path reads a row, decides
//! in Rust, and writes it back — that read-modify-write is the double sale of
//! the old backend (invariant I1).
//!
//! # Exactly once, forever
//! Each change writes its `Idempotency-Key` into the row it creates or
//! changes (`listings.create_key`, `listings.cancel_key`,
//! `listing_reprices.idem_key`, `purchases.buy_key`, `purchases.claim_key`),
//! under a unique index per requester. The stored answers of
//! [`crate::idempotency`] are pruned after the retention period; these rows
//! are not. [`recall`] finds the change a key already made and rebuilds its
//! answer from those rows, so a replay after any delay gets the outcome the
//! first request had — never a fresh, different one. A key whose request was
//! *refused* is not recalled: a refusal changed nothing, so running it again
//! can only produce a consistent answer.
//!
//! # The books
//! Trades move value between market accounts, escrow and proceeds through
//! [`crate::books`]. Under client deposits a trade deposits what it needs
//! from the game's save (`deposit` in the request, never more than the
//! shortfall) and delivers what comes out back to it; the answer's
//! `transfer` says what moved, and the rows keep it for [`recall`].
//!
//! **A refusal leaves nothing written.** Most refusals are found before the
//! first write (the conditional update that fails writes nothing). Where a
//! refusal can follow writes — the buyer who won the race cannot pay, the
//! seller's stash falls short — a savepoint ([`books::checkpoint`]) is set
//! first and rolled back. Savepoints cost round trips, so the path losers
//! of a race take has none.

use axum::http::StatusCode;
use marketplace_protocol::{
    Claim, Listing, ListingEnvelope, ListingStatus, MarketChange, Moved, Purchase,
    PurchaseEnvelope, Sale, Transfer,
};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use crate::books::{self, Move};
use crate::economy::Policy;
use crate::error::{Answer, AppError};

/// Who is asking, the identifiers recorded in the ledger, and the policy.
pub struct OpContext<'a> {
    pub player_id: i64,
    pub request_id: &'a str,
    pub idem_key: &'a str,
    pub now: i64,
    pub policy: &'a Policy,
    /// Set when the change turned out to be a replay and its answer was
    /// rebuilt from the rows (a purchase finds that out itself).
    pub replayed: std::sync::atomic::AtomicBool,
}

pub const LISTING_COLUMNS: &str =
    "id, seller_id, item_id, quantity, price, status, created_at, updated_at";

/// Listings with their seller's name, for browsing: select
/// `BROWSE_COLUMNS` from `BROWSE_FROM`, naming listing columns `l.…`.
pub const BROWSE_COLUMNS: &str = "l.id, l.seller_id, l.item_id, l.quantity, l.price, l.status, \
     l.created_at, l.updated_at, p.name AS seller_name";
pub const BROWSE_FROM: &str = "listings l JOIN players p ON p.id = l.seller_id";

pub fn listing_from_row(row: &AnyRow) -> Result<Listing, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(Listing {
        id: row.try_get("id")?,
        seller_id: row.try_get("seller_id")?,
        item_id: row.try_get("item_id")?,
        quantity: row.try_get("quantity")?,
        price: row.try_get("price")?,
        status: ListingStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown listing status {status:?}").into(),
        })?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        // Only browsing selects it.
        seller_name: row.try_get("seller_name").ok(),
    })
}

pub const SALE_COLUMNS: &str =
    "id, listing_id, buyer_id, item_id, quantity, price, created_at, claimed_at";

pub fn sale_from_row(row: &AnyRow) -> Result<Sale, sqlx::Error> {
    Ok(Sale {
        id: row.try_get("id")?,
        listing_id: row.try_get("listing_id")?,
        buyer_id: row.try_get("buyer_id")?,
        item_id: row.try_get("item_id")?,
        quantity: row.try_get("quantity")?,
        price: row.try_get("price")?,
        sold_at: row.try_get("created_at")?,
        claimed_at: row.try_get("claimed_at")?,
    })
}

async fn ledger(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    action: &str,
    listing_id: Option<i64>,
    purchase_id: Option<i64>,
    amount: Option<i64>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO ledger (at, player_id, action, listing_id, purchase_id, amount, idempotency_key, request_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(ctx.now)
    .bind(ctx.player_id)
    .bind(action)
    .bind(listing_id)
    .bind(purchase_id)
    .bind(amount)
    .bind(ctx.idem_key)
    .bind(ctx.request_id)
    .execute(conn)
    .await?;
    Ok(())
}

async fn fetch_listing(
    conn: &mut AnyConnection,
    listing_id: i64,
) -> Result<Option<Listing>, sqlx::Error> {
    let sql = format!("SELECT {LISTING_COLUMNS} FROM listings WHERE id = $1");
    match sqlx::query(&sql)
        .bind(listing_id)
        .fetch_optional(conn)
        .await?
    {
        Some(row) => Ok(Some(listing_from_row(&row)?)),
        None => Ok(None),
    }
}

/// Why a seller's conditional update on a listing matched nothing.
fn seller_refusal(listing: Option<Listing>, player_id: i64) -> AppError {
    match listing {
        None => AppError::NotFound("Listing"),
        Some(l) if l.seller_id != player_id => {
            AppError::Forbidden("Only the seller can change this listing")
        }
        Some(l) if l.status == ListingStatus::Sold => AppError::AlreadySold,
        Some(l) if l.status == ListingStatus::Cancelled => AppError::ListingCancelled,
        Some(_) => {
            AppError::Internal("listing update matched nothing but the listing is active".into())
        }
    }
}

/// A value beyond the protocol's limits is refused as `invalid_request`.
fn limits(check: Result<(), String>) -> Result<(), AppError> {
    check.map_err(AppError::InvalidRequest)
}

/// The part of `need` the account lacks, deposited from the game's save if
/// the request offers enough (`deposit`); otherwise the trade is refused
/// (`insufficient_funds` / `insufficient_items`, or `deposits_disabled`
/// when the game offered a deposit the policy does not take). Returns what
/// was deposited.
async fn cover(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: Option<&str>,
    need: i64,
    offered: i64,
) -> Result<i64, AppError> {
    let have = books::holding(conn, ctx.player_id, item_id).await?;
    let shortfall = (need - have).max(0);
    if shortfall == 0 {
        return Ok(0);
    }
    if offered > 0 && !ctx.policy.deposits_allowed() {
        return Err(AppError::DepositsDisabled);
    }
    if offered < shortfall {
        return Err(match item_id {
            None => AppError::InsufficientFunds,
            Some(_) => AppError::InsufficientItems,
        });
    }
    // Admitted and counted against the cap; the caller writes the account
    // (netted with the trade) and the ledger.
    books::admit_deposit(conn, ctx, item_id, shortfall).await?;
    Ok(shortfall)
}

pub async fn create_listing(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: &str,
    quantity: i64,
    price: i64,
    deposit: i64,
) -> Result<Answer, AppError> {
    limits(marketplace_protocol::check_quantity(quantity))?;
    limits(marketplace_protocol::check_price("price", price))?;
    ctx.policy.check_listing(item_id, quantity, price)?;
    books::checkpoint(conn).await?;
    let outcome = list_from_stash(conn, ctx, item_id, quantity, price, deposit).await;
    books::keep_or_undo(conn, outcome).await
}

async fn list_from_stash(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: &str,
    quantity: i64,
    price: i64,
    deposit: i64,
) -> Result<Answer, AppError> {
    let deposited = cover(conn, ctx, Some(item_id), quantity, deposit).await?;
    // Deposited and escrowed at once: the stash changes by the difference.
    books::adjust(conn, ctx.player_id, Some(item_id), deposited - quantity).await?;
    let sql = format!(
        "INSERT INTO listings (seller_id, item_id, quantity, price, status, created_at, updated_at, create_key, listed_price, deposited) \
         VALUES ($1, $2, $3, $4, 'active', $5, $5, $6, $4, $7) RETURNING {LISTING_COLUMNS}"
    );
    let row = sqlx::query(&sql)
        .bind(ctx.player_id)
        .bind(item_id)
        .bind(quantity)
        .bind(price)
        .bind(ctx.now)
        .bind(ctx.idem_key)
        .bind(deposited)
        .fetch_one(&mut *conn)
        .await?;
    let listing = listing_from_row(&row)?;
    let me = ctx.player_id;
    let mut moves = Vec::with_capacity(2);
    if deposited > 0 {
        moves.push(Move {
            player_id: me,
            action: "deposit",
            item_id: Some(item_id),
            quantity: deposited,
            listing_id: Some(listing.id),
            purchase_id: None,
        });
    }
    moves.push(Move {
        player_id: me,
        action: "list",
        item_id: Some(item_id),
        quantity,
        listing_id: Some(listing.id),
        purchase_id: None,
    });
    books::movements(conn, ctx, &moves).await?;
    Answer::json(
        StatusCode::CREATED,
        &ListingEnvelope {
            listing,
            transfer: Some(Transfer {
                deposited,
                delivered: 0,
                ..Transfer::default()
            }),
        },
    )
}

/// A seller's change to one of their active listings.
enum SellerChange {
    Reprice(i64),
    Cancel,
}

/// Applies `change` to the caller's listing if it is still active; otherwise
/// says why not (not found, not the seller, sold, cancelled).
async fn change_own_listing(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    change: SellerChange,
) -> Result<Listing, AppError> {
    let set = match change {
        SellerChange::Reprice(_) => "price = $4",
        SellerChange::Cancel => "status = 'cancelled', cancel_key = $4, cancel_delivered = 0",
    };
    let sql = format!(
        "UPDATE listings SET {set}, updated_at = $1 \
         WHERE id = $2 AND seller_id = $3 AND status = 'active' RETURNING {LISTING_COLUMNS}"
    );
    let mut query = sqlx::query(&sql)
        .bind(ctx.now)
        .bind(listing_id)
        .bind(ctx.player_id);
    query = match change {
        SellerChange::Reprice(price) => query.bind(price),
        SellerChange::Cancel => query.bind(ctx.idem_key),
    };
    match query.fetch_optional(&mut *conn).await? {
        Some(row) => Ok(listing_from_row(&row)?),
        None => Err(seller_refusal(
            fetch_listing(conn, listing_id).await?,
            ctx.player_id,
        )),
    }
}

pub async fn reprice_listing(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    price: i64,
) -> Result<Answer, AppError> {
    limits(marketplace_protocol::check_price("price", price))?;
    if let Some(l) = fetch_listing(conn, listing_id).await? {
        if l.seller_id == ctx.player_id && l.status == ListingStatus::Active {
            ctx.policy.check_listing(&l.item_id, l.quantity, price)?;
        }
    }
    let listing = change_own_listing(conn, ctx, listing_id, SellerChange::Reprice(price)).await?;
    sqlx::query(
        "INSERT INTO listing_reprices (listing_id, seller_id, idem_key, price, at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(listing_id)
    .bind(ctx.player_id)
    .bind(ctx.idem_key)
    .bind(price)
    .bind(ctx.now)
    .execute(&mut *conn)
    .await?;
    ledger(conn, ctx, "reprice", Some(listing_id), None, Some(price)).await?;
    Answer::json(
        StatusCode::OK,
        &ListingEnvelope {
            listing,
            transfer: Some(Transfer::default()),
        },
    )
}

/// Withdraws a listing: the escrow goes back to the seller's stash — and,
/// under client deposits, on to the game's save.
pub async fn cancel_listing(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
) -> Result<Answer, AppError> {
    let listing = change_own_listing(conn, ctx, listing_id, SellerChange::Cancel).await?;
    let delivers = ctx.policy.delivers();
    let item = Some(listing.item_id.as_str());
    let me = ctx.player_id;
    let mut moves = vec![Move {
        player_id: me,
        action: "cancel",
        item_id: item,
        quantity: listing.quantity,
        listing_id: Some(listing_id),
        purchase_id: None,
    }];
    let delivered = if delivers {
        // Back to the stash and on to the save: the stash nets out.
        moves.push(Move {
            player_id: me,
            action: "withdraw",
            item_id: item,
            quantity: listing.quantity,
            listing_id: Some(listing_id),
            purchase_id: None,
        });
        sqlx::query("UPDATE listings SET cancel_delivered = quantity WHERE id = $1")
            .bind(listing_id)
            .execute(&mut *conn)
            .await?;
        listing.quantity
    } else {
        books::credit(conn, me, item, listing.quantity).await?;
        0
    };
    books::movements(conn, ctx, &moves).await?;
    Answer::json(
        StatusCode::OK,
        &ListingEnvelope {
            listing,
            transfer: Some(Transfer {
                deposited: 0,
                delivered,
                ..Transfer::default()
            }),
        },
    )
}

/// The purchase: one conditional update flips the listing to `sold` only if it
/// is still active, at the price the buyer saw, and not the buyer's own. The
/// buyer pays from the market account (after depositing what is missing,
/// when the policy and the request allow), the price becomes the seller's
/// unclaimed proceeds, the items go to the buyer's stash — and under client
/// deposits on to the game's save. The purchase row (unique per listing),
/// the ledger rows and — in the caller — the idempotent answer commit in the
/// same transaction.
pub async fn purchase(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    listing_id: i64,
    expected_price: i64,
    deposit: i64,
) -> Result<Answer, AppError> {
    limits(marketplace_protocol::check_price(
        "expected_price",
        expected_price,
    ))?;
    // The race is decided here, by the one statement losers pay for. It
    // changes nothing but the status, so a refusal found after it (the buyer
    // cannot pay) can put the listing back exactly.
    let row = sqlx::query(
        "UPDATE listings SET status = 'sold' \
         WHERE id = $1 AND status = 'active' AND price = $2 AND seller_id <> $3 \
         RETURNING seller_id, item_id, quantity, price",
    )
    .bind(listing_id)
    .bind(expected_price)
    .bind(ctx.player_id)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        // Lost (or a replay of a purchase this key already made, whose
        // stored answer was pruned): one read tells which.
        let sql = format!(
            "SELECT {LISTING_COLUMNS}, (SELECT kind FROM operation_keys WHERE player_id = $2 AND idem_key = $3) AS known \
             FROM listings WHERE id = $1"
        );
        let row = sqlx::query(&sql)
            .bind(listing_id)
            .bind(ctx.player_id)
            .bind(ctx.idem_key)
            .fetch_optional(&mut *conn)
            .await?;
        let known: Option<String> = match &row {
            Some(r) => r.try_get("known")?,
            None => {
                let k: Option<(String,)> = sqlx::query_as(
                    "SELECT kind FROM operation_keys WHERE player_id = $1 AND idem_key = $2",
                )
                .bind(ctx.player_id)
                .bind(ctx.idem_key)
                .fetch_optional(&mut *conn)
                .await?;
                k.map(|(k,)| k)
            }
        };
        match known.as_deref() {
            Some("purchase") => {
                let change = MarketChange::Purchase {
                    listing_id,
                    expected_price,
                    deposit,
                };
                return match recall(conn, ctx, &change).await? {
                    Some(answer) => {
                        ctx.replayed
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                        Ok(answer)
                    }
                    None => Err(AppError::Internal(
                        "key of a purchase without its rows".into(),
                    )),
                };
            }
            Some(_) => return Err(AppError::IdempotencyKeyReused),
            None => {}
        }
        let listing = row.as_ref().map(listing_from_row).transpose()?;
        return Err(match listing {
            None => AppError::NotFound("Listing"),
            Some(l) if l.seller_id == ctx.player_id => AppError::OwnListing,
            Some(l) if l.status == ListingStatus::Sold => AppError::AlreadySold,
            Some(l) if l.status == ListingStatus::Cancelled => AppError::ListingCancelled,
            Some(l) if l.price != expected_price => AppError::PriceChanged {
                current_price: l.price,
            },
            Some(_) => {
                AppError::Internal("purchase matched nothing but the listing is buyable".into())
            }
        });
    };
    let seller_id: i64 = row.try_get("seller_id")?;
    let item_id: String = row.try_get("item_id")?;
    let quantity: i64 = row.try_get("quantity")?;
    let price: i64 = row.try_get("price")?;
    let won = Won {
        listing_id,
        seller_id,
        item_id,
        quantity,
        price,
    };
    books::checkpoint(conn).await?;
    let outcome = pay_and_deliver(conn, ctx, &won, deposit).await;
    let outcome = books::keep_or_undo(conn, outcome).await;
    if matches!(&outcome, Err(refusal) if !refusal.is_infrastructure()) {
        // Nothing of the purchase stays: the writes after the checkpoint
        // are undone; the listing (won before it) is for sale again.
        sqlx::query("UPDATE listings SET status = 'active' WHERE id = $1")
            .bind(listing_id)
            .execute(&mut *conn)
            .await?;
    }
    outcome
}

/// A listing a buyer just won the race for.
struct Won {
    listing_id: i64,
    seller_id: i64,
    item_id: String,
    quantity: i64,
    price: i64,
}

/// The rest of a purchase once the race is won: the buyer pays (depositing
/// what is missing if allowed), the price becomes proceeds, the items go to
/// the buyer — and to the save under client deposits.
async fn pay_and_deliver(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    won: &Won,
    deposit: i64,
) -> Result<Answer, AppError> {
    let Won {
        listing_id,
        seller_id,
        item_id,
        quantity,
        price,
    } = won;
    let (listing_id, seller_id, quantity, price) = (*listing_id, *seller_id, *quantity, *price);
    sqlx::query("UPDATE listings SET updated_at = $1 WHERE id = $2")
        .bind(ctx.now)
        .bind(listing_id)
        .execute(&mut *conn)
        .await?;
    let me = ctx.player_id;
    // The key is recorded here, inside the checkpoint: a key already used
    // for something else undoes the whole purchase, before
    // anything else could clash with it.
    let recorded = sqlx::query(
        "INSERT INTO operation_keys (player_id, idem_key, kind) VALUES ($1, $2, 'purchase') \
         ON CONFLICT (player_id, idem_key) DO NOTHING",
    )
    .bind(me)
    .bind(ctx.idem_key)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if recorded == 0 {
        return Err(AppError::IdempotencyKeyReused);
    }
    let deposited = cover(conn, ctx, None, price, deposit).await?;
    // Deposit and payment net out on the account: one conditional update
    // (none when the deposit paid it all).
    books::adjust(conn, me, None, deposited - price).await?;
    let delivered = if ctx.policy.delivers() { quantity } else { 0 };
    let (purchase_id,): (i64,) = sqlx::query_as(
        "INSERT INTO purchases (listing_id, buyer_id, seller_id, item_id, quantity, price, created_at, buy_key, deposited, delivered) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING id",
    )
    .bind(listing_id)
    .bind(me)
    .bind(seller_id)
    .bind(item_id)
    .bind(quantity)
    .bind(price)
    .bind(ctx.now)
    .bind(ctx.idem_key)
    .bind(deposited)
    .bind(delivered)
    .fetch_one(&mut *conn)
    .await?;
    if delivered == 0 {
        books::credit(conn, me, Some(item_id), quantity).await?;
    }
    let (lid, pid, item) = (Some(listing_id), Some(purchase_id), Some(item_id.as_str()));
    let mut moves = Vec::with_capacity(4);
    if deposited > 0 {
        moves.push(Move {
            player_id: me,
            action: "deposit",
            item_id: None,
            quantity: deposited,
            listing_id: lid,
            purchase_id: pid,
        });
    }
    moves.push(Move {
        player_id: me,
        action: "purchase_pay",
        item_id: None,
        quantity: price,
        listing_id: lid,
        purchase_id: pid,
    });
    moves.push(Move {
        player_id: me,
        action: "purchase_items",
        item_id: item,
        quantity,
        listing_id: lid,
        purchase_id: pid,
    });
    if delivered > 0 {
        moves.push(Move {
            player_id: me,
            action: "withdraw",
            item_id: item,
            quantity,
            listing_id: lid,
            purchase_id: pid,
        });
    }
    books::movements(conn, ctx, &moves).await?;
    let purchase = Purchase {
        id: purchase_id,
        listing_id,
        buyer_id: me,
        seller_id,
        item_id: item_id.clone(),
        quantity,
        price,
        created_at: ctx.now,
    };
    Answer::json(
        StatusCode::OK,
        &PurchaseEnvelope {
            purchase,
            transfer: Some(Transfer {
                deposited,
                delivered,
                ..Transfer::default()
            }),
        },
    )
}

/// Pays out a sale once: the conditional update on `claimed_at IS NULL` lets
/// exactly one of any number of concurrent claims through. The proceeds go
/// to the seller's account — and under client deposits on to the save.
pub async fn claim(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    sale_id: i64,
) -> Result<Answer, AppError> {
    let delivers = i64::from(ctx.policy.delivers());
    let row = sqlx::query(
        "UPDATE purchases SET claimed_at = $1, claim_key = $4, claim_delivered = price * $5 \
         WHERE id = $2 AND seller_id = $3 AND claimed_at IS NULL RETURNING listing_id, price",
    )
    .bind(ctx.now)
    .bind(sale_id)
    .bind(ctx.player_id)
    .bind(ctx.idem_key)
    .bind(delivers)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        let found: Option<(i64,)> = sqlx::query_as("SELECT seller_id FROM purchases WHERE id = $1")
            .bind(sale_id)
            .fetch_optional(&mut *conn)
            .await?;
        return Err(match found {
            None => AppError::NotFound("Sale"),
            Some((seller,)) if seller != ctx.player_id => {
                AppError::Forbidden("Only the seller can claim these proceeds")
            }
            Some(_) => AppError::AlreadyClaimed,
        });
    };
    let listing_id: i64 = row.try_get("listing_id")?;
    let amount: i64 = row.try_get("price")?;
    let me = ctx.player_id;
    let mut moves = vec![Move {
        player_id: me,
        action: "claim",
        item_id: None,
        quantity: amount,
        listing_id: Some(listing_id),
        purchase_id: Some(sale_id),
    }];
    let delivered = if delivers == 1 {
        // Into the account and on to the save: the account nets out.
        moves.push(Move {
            player_id: me,
            action: "withdraw",
            item_id: None,
            quantity: amount,
            listing_id: Some(listing_id),
            purchase_id: Some(sale_id),
        });
        amount
    } else {
        books::credit(conn, me, None, amount).await?;
        0
    };
    books::movements(conn, ctx, &moves).await?;
    Answer::json(
        StatusCode::OK,
        &Claim {
            sale_id,
            amount,
            transfer: Some(Transfer {
                deposited: 0,
                delivered,
                ..Transfer::default()
            }),
        },
    )
}

/// `POST /v1/me/deposits` and `/v1/me/withdrawals`: a move between the
/// game's save and the market account, recorded with its key.
pub async fn move_value(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    item_id: Option<&str>,
    quantity: i64,
    inward: bool,
) -> Result<Answer, AppError> {
    let table = if inward {
        books::deposit(conn, ctx, item_id, quantity).await?;
        "deposits"
    } else {
        books::withdraw(conn, ctx, item_id, quantity, None, None).await?;
        "withdrawals"
    };
    let (id,): (i64,) = sqlx::query_as(&format!(
        "INSERT INTO {table} (player_id, idem_key, item_id, quantity, at) VALUES ($1, $2, $3, $4, $5) RETURNING id"
    ))
    .bind(ctx.player_id)
    .bind(ctx.idem_key)
    .bind(item_id)
    .bind(quantity)
    .bind(ctx.now)
    .fetch_one(&mut *conn)
    .await?;
    let account = books::account(conn, ctx.player_id).await?;
    Answer::json(
        StatusCode::OK,
        &Moved {
            id,
            item_id: item_id.map(str::to_string),
            quantity,
            account,
        },
    )
}
/// The change `ctx.idem_key` already made for `ctx.player_id`, if any, with
/// the answer it had: found in the domain rows, not in the (prunable) answer
/// store. `Err(IdempotencyKeyReused)` when the key made a different change.
///
/// The rebuilt answer is the first one semantically: the same status, the
/// same object as it was right after the change (a listing that was repriced
/// or sold since is shown as the change left it).
pub async fn recall(
    conn: &mut AnyConnection,
    ctx: &OpContext<'_>,
    change: &MarketChange,
) -> Result<Option<Answer>, AppError> {
    let mismatch = || Err(AppError::IdempotencyKeyReused);
    match change {
        MarketChange::CreateListing {
            item_id,
            quantity,
            price,
            ..
        } => {
            let sql = format!(
                "SELECT {LISTING_COLUMNS}, listed_price, deposited FROM listings WHERE seller_id = $1 AND create_key = $2"
            );
            let Some(row) = keyed_row(conn, &sql, ctx).await? else {
                return Ok(None);
            };
            let mut listing = listing_from_row(&row)?;
            listing.price = row
                .try_get::<Option<i64>, _>("listed_price")?
                .unwrap_or(listing.price);
            listing.status = ListingStatus::Active;
            listing.updated_at = listing.created_at;
            if &listing.item_id != item_id
                || listing.quantity != *quantity
                || listing.price != *price
            {
                return mismatch();
            }
            let transfer = row
                .try_get::<Option<i64>, _>("deposited")?
                .map(|deposited| Transfer {
                    deposited,
                    delivered: 0,
                    ..Transfer::default()
                });
            Answer::json(StatusCode::CREATED, &ListingEnvelope { listing, transfer }).map(Some)
        }
        MarketChange::Reprice { listing_id, price } => {
            let Some(row) = keyed_row(
                conn,
                "SELECT listing_id, price, at FROM listing_reprices WHERE seller_id = $1 AND idem_key = $2",
                ctx,
            )
            .await?
            else {
                return Ok(None);
            };
            let (id, new_price, at): (i64, i64, i64) = (
                row.try_get("listing_id")?,
                row.try_get("price")?,
                row.try_get("at")?,
            );
            if id != *listing_id || new_price != *price {
                return mismatch();
            }
            let Some(mut listing) = fetch_listing(conn, id).await? else {
                return Err(AppError::Internal(format!(
                    "reprice of missing listing {id}"
                )));
            };
            listing.price = new_price;
            listing.status = ListingStatus::Active;
            listing.updated_at = at;
            Answer::json(
                StatusCode::OK,
                &ListingEnvelope {
                    listing,
                    transfer: Some(Transfer::default()),
                },
            )
            .map(Some)
        }
        MarketChange::Cancel { listing_id } => {
            let sql = format!(
                "SELECT {LISTING_COLUMNS}, cancel_delivered FROM listings WHERE seller_id = $1 AND cancel_key = $2"
            );
            let Some(row) = keyed_row(conn, &sql, ctx).await? else {
                return Ok(None);
            };
            let listing = listing_from_row(&row)?;
            if listing.id != *listing_id {
                return mismatch();
            }
            let transfer = row
                .try_get::<Option<i64>, _>("cancel_delivered")?
                .map(|delivered| Transfer {
                    deposited: 0,
                    delivered,
                    ..Transfer::default()
                });
            Answer::json(StatusCode::OK, &ListingEnvelope { listing, transfer }).map(Some)
        }
        MarketChange::Purchase {
            listing_id,
            expected_price,
            ..
        } => {
            let Some(row) = keyed_row(
                conn,
                "SELECT id, listing_id, buyer_id, seller_id, item_id, quantity, price, created_at, deposited, delivered \
                 FROM purchases WHERE buyer_id = $1 AND buy_key = $2",
                ctx,
            )
            .await?
            else {
                return Ok(None);
            };
            let purchase = Purchase {
                id: row.try_get("id")?,
                listing_id: row.try_get("listing_id")?,
                buyer_id: row.try_get("buyer_id")?,
                seller_id: row.try_get("seller_id")?,
                item_id: row.try_get("item_id")?,
                quantity: row.try_get("quantity")?,
                price: row.try_get("price")?,
                created_at: row.try_get("created_at")?,
            };
            if purchase.listing_id != *listing_id || purchase.price != *expected_price {
                return mismatch();
            }
            let transfer = row
                .try_get::<Option<i64>, _>("deposited")?
                .map(|deposited| -> Result<Transfer, sqlx::Error> {
                    Ok(Transfer {
                        deposited,
                        delivered: row.try_get::<Option<i64>, _>("delivered")?.unwrap_or(0),
                        ..Transfer::default()
                    })
                })
                .transpose()?;
            Answer::json(StatusCode::OK, &PurchaseEnvelope { purchase, transfer }).map(Some)
        }
        MarketChange::Claim { sale_id } => {
            let Some(row) = keyed_row(
                conn,
                "SELECT id, price, claim_delivered FROM purchases WHERE seller_id = $1 AND claim_key = $2",
                ctx,
            )
            .await?
            else {
                return Ok(None);
            };
            let (id, amount): (i64, i64) = (row.try_get("id")?, row.try_get("price")?);
            if id != *sale_id {
                return mismatch();
            }
            let transfer = row
                .try_get::<Option<i64>, _>("claim_delivered")?
                .map(|delivered| Transfer {
                    deposited: 0,
                    delivered,
                    ..Transfer::default()
                });
            Answer::json(
                StatusCode::OK,
                &Claim {
                    sale_id: id,
                    amount,
                    transfer,
                },
            )
            .map(Some)
        }
        MarketChange::Deposit { item_id, quantity }
        | MarketChange::Withdraw { item_id, quantity } => {
            let table = if matches!(change, MarketChange::Deposit { .. }) {
                "deposits"
            } else {
                "withdrawals"
            };
            let sql = format!(
                "SELECT id, item_id, quantity FROM {table} WHERE player_id = $1 AND idem_key = $2"
            );
            let Some(row) = keyed_row(conn, &sql, ctx).await? else {
                return Ok(None);
            };
            let id: i64 = row.try_get("id")?;
            let was_item: Option<String> = row.try_get("item_id")?;
            let was_quantity: i64 = row.try_get("quantity")?;
            if &was_item != item_id || was_quantity != *quantity {
                return mismatch();
            }
            let account = books::account(conn, ctx.player_id).await?;
            Answer::json(
                StatusCode::OK,
                &Moved {
                    id,
                    item_id: was_item,
                    quantity: was_quantity,
                    account,
                },
            )
            .map(Some)
        }
    }
}

/// The row `sql` finds for `($1, $2) = (player, key)`.
async fn keyed_row(
    conn: &mut AnyConnection,
    sql: &str,
    ctx: &OpContext<'_>,
) -> Result<Option<AnyRow>, sqlx::Error> {
    sqlx::query(sql)
        .bind(ctx.player_id)
        .bind(ctx.idem_key)
        .fetch_optional(conn)
        .await
}
