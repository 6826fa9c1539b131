//! The client's one error type: a stable [`ErrorCode`] GDScript can match on,
//! a sentence a player can read, and whether the outcome is definitive.

use std::fmt;
use std::time::Duration;

use marketplace_protocol::ErrorCode;

/// Longest server-provided message shown to a player; a hostile server
/// cannot flood the UI.
const MAX_MESSAGE_CHARS: usize = 200;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientError {
    pub code: ErrorCode,
    /// For the player: "Item sold to another player", "Price changed to 120".
    pub message: String,
    /// With `price_changed`: the listing's price now.
    pub current_price: Option<i64>,
    /// With `quantity_unavailable`: the units that remain.
    pub available: Option<i64>,
    /// With `rate_limited`: the server's `Retry-After`.
    pub retry_after: Option<Duration>,
}

impl ClientError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ClientError {
        ClientError {
            code,
            message: sanitize(&message.into()),
            current_price: None,
            available: None,
            retry_after: None,
        }
    }

    /// True when the server decided and a retry cannot change it: only then
    /// may a hold be released (invariant I4).
    pub fn is_definitive(&self) -> bool {
        self.code.is_definitive()
    }
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ClientError {}

/// Printable, single-line, bounded.
fn sanitize(message: &str) -> String {
    let clean: String = message
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_MESSAGE_CHARS)
        .collect();
    clean.trim().to_string()
}

impl From<crate::state::StateError> for ClientError {
    fn from(e: crate::state::StateError) -> ClientError {
        use crate::state::StateError;
        let code = match &e {
            StateError::InsufficientCredits { .. } => ErrorCode::InsufficientCredits,
            StateError::InsufficientItems { .. } => ErrorCode::InsufficientItems,
            StateError::InsufficientMarketCredits { .. } => ErrorCode::InsufficientFunds,
            StateError::InsufficientMarketItems { .. } => ErrorCode::InsufficientItems,
            // The hold belongs to a trade waiting for its answer.
            StateError::HoldInUse(_) => ErrorCode::TradesPending,
            _ => ErrorCode::InvalidArgument,
        };
        ClientError::new(code, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_bounded_and_printable() {
        let e = ClientError::new(
            ErrorCode::BadResponse,
            format!("a\nb\u{7}{}", "x".repeat(500)),
        );
        assert!(e.message.chars().count() <= MAX_MESSAGE_CHARS);
        assert!(!e.message.chars().any(char::is_control));
        assert!(e.message.starts_with("a b"));
    }
}
