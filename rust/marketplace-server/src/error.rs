//! One error type for every handler; it becomes the HTTP answer.
//!
//! Definitive business outcomes (`already_sold`, `price_changed`, …) are
//! errors here too, because to the client they are: they are stored as the
//! idempotent answer of the request like a success would be. `Internal` is
//! the only variant whose details are logged rather than sent.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use marketplace_protocol::{ErrorBody, ErrorCode, ErrorEnvelope, MAX_BODY_BYTES};

/// What a failure means for the request's `Idempotency-Key`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The server decided; the refusal is stored as the key's answer and a
    /// replay gets it again. The client may release its hold (definitive).
    Refusal,
    /// Nothing was decided and nothing written; the client retries.
    Retry,
    /// The database or the server failed: the transaction rolls back, key
    /// included, and the client's retry runs the request anew.
    Infrastructure,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("Missing, invalid or expired session token")]
    Unauthorized,
    #[error("{0}")]
    Forbidden(&'static str),
    #[error("You cannot buy your own listing")]
    OwnListing,
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("Item sold to another player")]
    AlreadySold,
    #[error("Price changed to {current_price}")]
    PriceChanged { current_price: i64 },
    #[error("The seller cancelled this listing")]
    ListingCancelled,
    #[error("These proceeds were already claimed")]
    AlreadyClaimed,
    #[error("This Idempotency-Key was already used for a different request")]
    IdempotencyKeyReused,
    #[error("A request with this Idempotency-Key is still running; retry shortly")]
    RequestInProgress,
    #[error("Request body is larger than {MAX_BODY_BYTES} bytes")]
    PayloadTooLarge,
    #[error("Too many requests; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("Not enough credits in the market account")]
    InsufficientFunds,
    #[error("Not enough of this item in the market account")]
    InsufficientItems,
    #[error("Deposit limit reached: {left} of {cap} can be deposited now (the cap counts the last 24 hours)")]
    DepositLimit { cap: i64, left: i64 },
    #[error("This market takes no deposits from players")]
    DepositsDisabled,
    #[error("This item cannot be traded here")]
    UnknownItem,
    #[error("{0}")]
    WrongServer(&'static str),
    #[error("Only {available} left")]
    QuantityUnavailable { available: i64 },
    #[error("This listing has expired")]
    ListingExpired,
    #[error("This order is no longer active")]
    OrderClosed,
    #[error("{0}")]
    IdentityRefused(&'static str),
    #[error("{0}")]
    IdentityLinked(&'static str),
    #[error("The server is busy; retry shortly")]
    Unavailable,
    #[error("Internal server error")]
    Internal(String),
}

impl AppError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::InvalidRequest(_) => ErrorCode::InvalidRequest,
            AppError::Unauthorized => ErrorCode::Unauthorized,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::OwnListing => ErrorCode::OwnListing,
            AppError::NotFound(_) => ErrorCode::NotFound,
            AppError::AlreadySold => ErrorCode::AlreadySold,
            AppError::PriceChanged { .. } => ErrorCode::PriceChanged,
            AppError::ListingCancelled => ErrorCode::ListingCancelled,
            AppError::AlreadyClaimed => ErrorCode::AlreadyClaimed,
            AppError::IdempotencyKeyReused => ErrorCode::IdempotencyKeyReused,
            AppError::RequestInProgress => ErrorCode::RequestInProgress,
            AppError::PayloadTooLarge => ErrorCode::PayloadTooLarge,
            AppError::RateLimited { .. } => ErrorCode::RateLimited,
            AppError::InsufficientFunds => ErrorCode::InsufficientFunds,
            AppError::InsufficientItems => ErrorCode::InsufficientItems,
            AppError::DepositLimit { .. } => ErrorCode::DepositLimit,
            AppError::DepositsDisabled => ErrorCode::DepositsDisabled,
            AppError::UnknownItem => ErrorCode::UnknownItem,
            AppError::WrongServer(_) => ErrorCode::WrongServer,
            AppError::QuantityUnavailable { .. } => ErrorCode::QuantityUnavailable,
            AppError::ListingExpired => ErrorCode::ListingExpired,
            AppError::OrderClosed => ErrorCode::OrderClosed,
            AppError::IdentityRefused(_) => ErrorCode::IdentityRefused,
            AppError::IdentityLinked(_) => ErrorCode::IdentityLinked,
            AppError::Unavailable => ErrorCode::Unavailable,
            AppError::Internal(_) => ErrorCode::Internal,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code()
            .http_status()
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    /// How the idempotency layer treats this failure. One exhaustive match,
    /// so a new variant cannot be added without deciding.
    pub fn disposition(&self) -> Disposition {
        match self {
            AppError::InvalidRequest(_)
            | AppError::Forbidden(_)
            | AppError::OwnListing
            | AppError::NotFound(_)
            | AppError::AlreadySold
            | AppError::PriceChanged { .. }
            | AppError::ListingCancelled
            | AppError::AlreadyClaimed
            | AppError::IdempotencyKeyReused
            | AppError::PayloadTooLarge
            | AppError::InsufficientFunds
            | AppError::InsufficientItems
            | AppError::DepositLimit { .. }
            | AppError::DepositsDisabled
            | AppError::UnknownItem
            | AppError::QuantityUnavailable { .. }
            | AppError::ListingExpired
            | AppError::OrderClosed
            | AppError::IdentityRefused(_)
            | AppError::IdentityLinked(_) => Disposition::Refusal,
            AppError::Unauthorized
            | AppError::RequestInProgress
            | AppError::RateLimited { .. }
            | AppError::WrongServer(_) => Disposition::Retry,
            AppError::Unavailable | AppError::Internal(_) => Disposition::Infrastructure,
        }
    }

    /// True for outcomes the server decided and will decide the same way again:
    /// these are stored as the idempotent answer.
    pub fn is_business_outcome(&self) -> bool {
        self.disposition() == Disposition::Refusal
    }

    /// True for failures of the database or the server itself: the
    /// transaction they happened in must be rolled back.
    pub fn is_infrastructure(&self) -> bool {
        self.disposition() == Disposition::Infrastructure
    }

    /// The JSON error envelope.
    pub fn body(&self) -> String {
        let current_price = match self {
            AppError::PriceChanged { current_price } => Some(*current_price),
            _ => None,
        };
        let envelope = ErrorEnvelope {
            error: ErrorBody {
                code: self.code().as_str().to_string(),
                message: self.to_string(),
                current_price,
                available: match self {
                    AppError::QuantityUnavailable { available } => Some(*available),
                    _ => None,
                },
            },
        };
        serde_json::to_string(&envelope).unwrap_or_else(|_| {
            r#"{"error":{"code":"internal","message":"Internal server error"}}"#.into()
        })
    }
}

impl From<crate::economy::Refusal> for AppError {
    fn from(r: crate::economy::Refusal) -> AppError {
        match r {
            crate::economy::Refusal::UnknownItem => AppError::UnknownItem,
            crate::economy::Refusal::OutOfRange(m) => AppError::InvalidRequest(m),
        }
    }
}

impl From<sqlx::Error> for AppError {
    fn from(e: sqlx::Error) -> AppError {
        match e {
            sqlx::Error::PoolTimedOut => AppError::Unavailable,
            // PostgreSQL gave up on the transaction to break a deadlock or a
            // serialization conflict: nothing was written, and the same
            // request may simply run again (503, retried by the client).
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("40P01") | Some("40001")) =>
            {
                tracing::warn!(error = %db, "transaction aborted by the database; the client retries");
                AppError::Unavailable
            }
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        if let AppError::Internal(detail) = &self {
            tracing::error!(%detail, "internal error");
        }
        let mut response = Answer {
            status: self.status().as_u16(),
            body: self.body(),
        }
        .into_response();
        if let AppError::RateLimited { retry_after_secs } = self {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
        }
        response
    }
}

/// A finished answer: status and JSON body, exactly as stored for replays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Result<Answer, AppError> {
        let body = serde_json::to_string(value).map_err(|e| AppError::Internal(e.to_string()))?;
        Ok(Answer {
            status: status.as_u16(),
            body,
        })
    }
}

impl From<&AppError> for Answer {
    fn from(e: &AppError) -> Answer {
        Answer {
            status: e.status().as_u16(),
            body: e.body(),
        }
    }
}

impl IntoResponse for Answer {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            self.body,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of every variant. The match makes this list fail to compile when a
    /// variant is added without being added here.
    fn every_variant() -> Vec<AppError> {
        let all = vec![
            AppError::InvalidRequest("x".into()),
            AppError::Unauthorized,
            AppError::Forbidden("x"),
            AppError::OwnListing,
            AppError::NotFound("Listing"),
            AppError::AlreadySold,
            AppError::PriceChanged { current_price: 5 },
            AppError::ListingCancelled,
            AppError::AlreadyClaimed,
            AppError::IdempotencyKeyReused,
            AppError::RequestInProgress,
            AppError::PayloadTooLarge,
            AppError::RateLimited {
                retry_after_secs: 1,
            },
            AppError::WrongServer("x"),
            AppError::QuantityUnavailable { available: 1 },
            AppError::ListingExpired,
            AppError::OrderClosed,
            AppError::IdentityRefused("x"),
            AppError::IdentityLinked("x"),
            AppError::Unavailable,
            AppError::Internal("x".into()),
        ];
        for e in &all {
            match e {
                AppError::InvalidRequest(_)
                | AppError::Unauthorized
                | AppError::Forbidden(_)
                | AppError::OwnListing
                | AppError::NotFound(_)
                | AppError::AlreadySold
                | AppError::PriceChanged { .. }
                | AppError::ListingCancelled
                | AppError::AlreadyClaimed
                | AppError::IdempotencyKeyReused
                | AppError::RequestInProgress
                | AppError::PayloadTooLarge
                | AppError::RateLimited { .. }
                | AppError::InsufficientFunds
                | AppError::InsufficientItems
                | AppError::DepositLimit { .. }
                | AppError::DepositsDisabled
                | AppError::UnknownItem
                | AppError::WrongServer(_)
                | AppError::QuantityUnavailable { .. }
                | AppError::ListingExpired
                | AppError::OrderClosed
                | AppError::IdentityRefused(_)
                | AppError::IdentityLinked(_)
                | AppError::Unavailable
                | AppError::Internal(_) => {}
            }
        }
        all
    }

    #[test]
    fn every_variant_is_classified_the_way_clients_read_it() {
        for e in every_variant() {
            let code = e.code();
            let status = e.status().as_u16();
            assert_eq!(code.http_status(), Some(status), "{e:?}");
            // What the server stores as a decision is exactly what the
            // client may settle a hold on (invariant I4).
            assert_eq!(
                e.disposition() == Disposition::Refusal,
                code.is_definitive(),
                "{e:?}"
            );
            if e.disposition() == Disposition::Infrastructure {
                assert!(status >= 500, "{e:?}");
            }
            let body: ErrorEnvelope = serde_json::from_str(&e.body()).expect("envelope");
            assert_eq!(body.error.code, code.as_str());
        }
    }
}
