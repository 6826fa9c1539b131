//! The stable error codes. GDScript matches on these strings, so a code is
//! never renamed or reused; new codes may be added.

use std::fmt;

/// Every error code the system produces, on the server or in the client.
///
/// | code | HTTP | produced by | definitive? |
/// |---|---|---|---|
/// | `invalid_request` | 400 | server | yes |
/// | `unauthorized` | 401 | server | no (log in again, then retry) |
/// | `forbidden` | 403 | server | yes |
/// | `own_listing` | 403 | server | yes |
/// | `not_found` | 404 | server | yes |
/// | `already_sold` | 409 | server | yes |
/// | `price_changed` | 409 | server | yes |
/// | `listing_cancelled` | 409 | server | yes |
/// | `already_claimed` | 409 | server | yes |
/// | `idempotency_key_reused` | 409 | server | yes |
/// | `request_in_progress` | 409 | server | no (retry) |
/// | `payload_too_large` | 413 | server | yes |
/// | `rate_limited` | 429 | server | no (retry after `Retry-After`) |
/// | `internal` | 500 | server | no (retry) |
/// | `unavailable` | 503 | server | no (retry) |
/// | `offline` | – | client: connection refused or reset | no (retry) |
/// | `timeout` | – | client: no answer in time | no (retry) |
/// | `bad_response` | – | client: the answer could not be understood | no (retry) |
/// | `purchase_in_progress` | – | client: this listing is already being bought | yes (nothing sent) |
/// | `insufficient_credits` | – | client: not enough available credits | yes (nothing sent) |
/// | `insufficient_items` | 409 / – | server: the market account holds too few of the item; client: not enough items to sell (nothing sent) | yes |
/// | `not_logged_in` | – | client: call `login` first | yes (nothing sent) |
/// | `invalid_argument` | – | client: refused before sending | yes (nothing sent) |
/// | `shutting_down` | – | client: the node is leaving; the operation stays journaled | no |
/// | `trades_pending` | – | client: refused while trades wait for their answer (switching player or save file) | yes (nothing changed) |
/// | `insufficient_funds` | 409 | server: the market account's balance (after any deposit) is too low | yes |
/// | `deposit_limit` | 403 | server: the player's deposits in the last 24 h reached the cap | yes |
/// | `deposits_disabled` | 403 | server: only the game's backend may bring value in (server grants) | yes |
/// | `unknown_item` | 400 | server: the item is not in the catalog | yes |
/// | `quantity_unavailable` | 409 | server: fewer units remain than the purchase asked for | yes |
/// | `listing_expired` | 409 | server: the listing's time ran out (its escrow went back to the seller) | yes |
/// | `order_closed` | 409 | server: the buy order is filled, cancelled or expired | yes |
/// | `save_restoring` | – | client: the save was restored from its backup; new trades wait until the market has told it what it lost | yes (nothing sent) |
/// | `identity_refused` | 401 | server: the identity token failed a check (signature, issuer, audience, expiry, key); get a fresh token | yes |
/// | `identity_linked` | 409 | server: the identity belongs to another player, or this player already has one from that provider | yes |
/// | `cancelled` | – | client: the game cancelled the request (`MarketRequest.cancel()`) before it changed anything | yes (nothing changed) |
/// | `still_pending` | – | client: the game stopped waiting (`MarketRequest.give_up_after`); a trade may still happen and is told by the node's signals | no |
/// | `save_unavailable` | – | client: the save file is not loaded (see `load_failed`) | yes (nothing changed) |
/// | `save_failed` | – | client: writing the save failed (disk full, read-only); nothing in memory was lost, the write is retried | no |
/// | `wrong_server` | 421 | server: the request was bound to another server or player (`X-Market-Server`, `X-Market-Player`); client: a journaled trade waits while the game points at another server or player | no (it goes once the game points back) |
///
/// *Definitive* means the server decided and will decide the same on a retry:
/// a hold is released only on a definitive failure (invariant I4). A
/// non-definitive failure leaves the hold pending and the request is retried
/// with the same idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    InvalidRequest,
    Unauthorized,
    Forbidden,
    OwnListing,
    NotFound,
    AlreadySold,
    PriceChanged,
    ListingCancelled,
    AlreadyClaimed,
    IdempotencyKeyReused,
    RequestInProgress,
    PayloadTooLarge,
    RateLimited,
    Internal,
    Unavailable,
    Offline,
    Timeout,
    BadResponse,
    PurchaseInProgress,
    InsufficientCredits,
    InsufficientItems,
    NotLoggedIn,
    InvalidArgument,
    ShuttingDown,
    TradesPending,
    InsufficientFunds,
    DepositLimit,
    DepositsDisabled,
    UnknownItem,
    WrongServer,
    QuantityUnavailable,
    ListingExpired,
    OrderClosed,
    SaveRestoring,
    IdentityRefused,
    IdentityLinked,
    Cancelled,
    StillPending,
    SaveUnavailable,
    SaveFailed,
}

impl ErrorCode {
    /// Every code, for documentation and exhaustive tests.
    pub const ALL: [ErrorCode; 40] = [
        ErrorCode::InvalidRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::OwnListing,
        ErrorCode::NotFound,
        ErrorCode::AlreadySold,
        ErrorCode::PriceChanged,
        ErrorCode::ListingCancelled,
        ErrorCode::AlreadyClaimed,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::RequestInProgress,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Internal,
        ErrorCode::Unavailable,
        ErrorCode::Offline,
        ErrorCode::Timeout,
        ErrorCode::BadResponse,
        ErrorCode::PurchaseInProgress,
        ErrorCode::InsufficientCredits,
        ErrorCode::InsufficientItems,
        ErrorCode::NotLoggedIn,
        ErrorCode::InvalidArgument,
        ErrorCode::ShuttingDown,
        ErrorCode::TradesPending,
        ErrorCode::InsufficientFunds,
        ErrorCode::DepositLimit,
        ErrorCode::DepositsDisabled,
        ErrorCode::UnknownItem,
        ErrorCode::WrongServer,
        ErrorCode::QuantityUnavailable,
        ErrorCode::ListingExpired,
        ErrorCode::OrderClosed,
        ErrorCode::SaveRestoring,
        ErrorCode::IdentityRefused,
        ErrorCode::IdentityLinked,
        ErrorCode::Cancelled,
        ErrorCode::StillPending,
        ErrorCode::SaveUnavailable,
        ErrorCode::SaveFailed,
    ];

    /// The stable string GDScript matches on.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::OwnListing => "own_listing",
            ErrorCode::NotFound => "not_found",
            ErrorCode::AlreadySold => "already_sold",
            ErrorCode::PriceChanged => "price_changed",
            ErrorCode::ListingCancelled => "listing_cancelled",
            ErrorCode::AlreadyClaimed => "already_claimed",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::RequestInProgress => "request_in_progress",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Offline => "offline",
            ErrorCode::Timeout => "timeout",
            ErrorCode::BadResponse => "bad_response",
            ErrorCode::PurchaseInProgress => "purchase_in_progress",
            ErrorCode::InsufficientCredits => "insufficient_credits",
            ErrorCode::InsufficientItems => "insufficient_items",
            ErrorCode::NotLoggedIn => "not_logged_in",
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::TradesPending => "trades_pending",
            ErrorCode::InsufficientFunds => "insufficient_funds",
            ErrorCode::DepositLimit => "deposit_limit",
            ErrorCode::DepositsDisabled => "deposits_disabled",
            ErrorCode::UnknownItem => "unknown_item",
            ErrorCode::WrongServer => "wrong_server",
            ErrorCode::QuantityUnavailable => "quantity_unavailable",
            ErrorCode::ListingExpired => "listing_expired",
            ErrorCode::OrderClosed => "order_closed",
            ErrorCode::SaveRestoring => "save_restoring",
            ErrorCode::IdentityRefused => "identity_refused",
            ErrorCode::IdentityLinked => "identity_linked",
            ErrorCode::Cancelled => "cancelled",
            ErrorCode::StillPending => "still_pending",
            ErrorCode::SaveUnavailable => "save_unavailable",
            ErrorCode::SaveFailed => "save_failed",
        }
    }

    pub fn parse(s: &str) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The HTTP status the server answers with, for server codes.
    pub fn http_status(self) -> Option<u16> {
        Some(match self {
            ErrorCode::InvalidRequest | ErrorCode::UnknownItem => 400,
            ErrorCode::Unauthorized | ErrorCode::IdentityRefused => 401,
            ErrorCode::Forbidden
            | ErrorCode::OwnListing
            | ErrorCode::DepositLimit
            | ErrorCode::DepositsDisabled => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::AlreadySold
            | ErrorCode::PriceChanged
            | ErrorCode::ListingCancelled
            | ErrorCode::AlreadyClaimed
            | ErrorCode::IdempotencyKeyReused
            | ErrorCode::RequestInProgress
            | ErrorCode::InsufficientFunds
            | ErrorCode::InsufficientItems
            | ErrorCode::QuantityUnavailable
            | ErrorCode::ListingExpired
            | ErrorCode::OrderClosed
            | ErrorCode::IdentityLinked => 409,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::WrongServer => 421,
            ErrorCode::RateLimited => 429,
            ErrorCode::Internal => 500,
            ErrorCode::Unavailable => 503,
            ErrorCode::Offline
            | ErrorCode::Timeout
            | ErrorCode::BadResponse
            | ErrorCode::PurchaseInProgress
            | ErrorCode::InsufficientCredits
            | ErrorCode::NotLoggedIn
            | ErrorCode::InvalidArgument
            | ErrorCode::ShuttingDown
            | ErrorCode::TradesPending
            | ErrorCode::SaveRestoring
            | ErrorCode::Cancelled
            | ErrorCode::StillPending
            | ErrorCode::SaveUnavailable
            | ErrorCode::SaveFailed => return None,
        })
    }

    /// True when the outcome is final: retrying the same request cannot
    /// succeed, so a hold may be released (invariant I4).
    pub fn is_definitive(self) -> bool {
        match self {
            ErrorCode::InvalidRequest
            | ErrorCode::Forbidden
            | ErrorCode::OwnListing
            | ErrorCode::NotFound
            | ErrorCode::AlreadySold
            | ErrorCode::PriceChanged
            | ErrorCode::ListingCancelled
            | ErrorCode::AlreadyClaimed
            | ErrorCode::IdempotencyKeyReused
            | ErrorCode::PayloadTooLarge
            | ErrorCode::PurchaseInProgress
            | ErrorCode::InsufficientCredits
            | ErrorCode::InsufficientItems
            | ErrorCode::NotLoggedIn
            | ErrorCode::InvalidArgument
            | ErrorCode::TradesPending
            | ErrorCode::InsufficientFunds
            | ErrorCode::DepositLimit
            | ErrorCode::DepositsDisabled
            | ErrorCode::UnknownItem
            | ErrorCode::QuantityUnavailable
            | ErrorCode::ListingExpired
            | ErrorCode::OrderClosed
            | ErrorCode::SaveRestoring
            | ErrorCode::IdentityRefused
            | ErrorCode::IdentityLinked
            | ErrorCode::Cancelled
            | ErrorCode::SaveUnavailable => true,
            ErrorCode::Unauthorized
            | ErrorCode::RequestInProgress
            | ErrorCode::RateLimited
            | ErrorCode::Internal
            | ErrorCode::Unavailable
            | ErrorCode::Offline
            | ErrorCode::Timeout
            | ErrorCode::BadResponse
            | ErrorCode::ShuttingDown
            | ErrorCode::WrongServer
            | ErrorCode::StillPending
            | ErrorCode::SaveFailed => false,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "duplicate {code}");
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
        }
        assert_eq!(ErrorCode::parse("nope"), None);
    }

    #[test]
    fn ambiguous_outcomes_are_not_definitive() {
        for code in [ErrorCode::Timeout, ErrorCode::Offline, ErrorCode::Internal] {
            assert!(!code.is_definitive());
        }
        for code in [
            ErrorCode::AlreadySold,
            ErrorCode::PriceChanged,
            ErrorCode::OwnListing,
        ] {
            assert!(code.is_definitive());
        }
    }
}
