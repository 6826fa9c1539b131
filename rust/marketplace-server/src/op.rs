//! The context of one change of the market: who asks, the identifiers the
//! ledger records, the time and the policy. Shared by the operations
//! ([`crate::market`]) and the books they move value through
//! ([`crate::books`]), which therefore do not depend on each other's types.

use crate::economy::Policy;
use crate::stream::Outbox;

/// Who is asking, the identifiers recorded in the ledger, and the policy.
pub struct OpContext<'a> {
    pub player_id: i64,
    pub request_id: &'a str,
    pub idem_key: &'a str,
    pub now: i64,
    pub policy: &'a Policy,
    /// What the change touched, for the change stream: published in the
    /// same transaction if the change succeeds ([`crate::stream::publish`]).
    pub outbox: Outbox,
}
