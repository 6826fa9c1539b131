//! The wire: how a [`Command`] becomes an HTTP request (built from the
//! protocol crate's request structs; query strings encoded by reqwest), and
//! how an answer becomes a [`Reply`] or a [`ClientError`] — checked against
//! the request, because a hold is settled on what this says (I4): only our
//! own error envelope with a status that fits its code is definitive, and a
//! success that contradicts the request is `bad_response`.

use std::time::Duration;

use marketplace_protocol::{
    AccountEnvelope, Claim, CreateListingRequest, ErrorCode, ErrorEnvelope, Listing,
    ListingEnvelope, ListingPage, ListingStatus, MarketChange, MoveRequest, Moved, OperationsPage,
    PurchaseEnvelope, PurchaseRequest, RepriceRequest, SalesPage, Session, SessionRequest,
    IDEMPOTENCY_HEADER, PLAYER_HEADER, SERVER_HEADER,
};
use marketplace_protocol::{
    CollectRequest, Collected, DeliveriesPage, FeeQuote, OrderEnvelope, OrderStatus, OrdersPage,
    PlaceOrderRequest,
};
use reqwest::Method;
use serde::de::DeserializeOwned;

use super::{Command, Envelope, Reply, Shared};
use crate::error::ClientError;

/// An HTTP request, before it meets a server address: what
/// [`request_of`] makes of a command (pure, so it is table-tested).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WireRequest {
    pub method: Method,
    /// Below the server URL, from `/v1/...`.
    pub path: String,
    pub query: Vec<(&'static str, String)>,
    pub body: Option<serde_json::Value>,
}

fn json<T: serde::Serialize>(value: &T) -> Option<serde_json::Value> {
    serde_json::to_value(value).ok()
}

/// The request a command sends.
pub(crate) fn request_of(command: &Command) -> WireRequest {
    let mut query: Vec<(&'static str, String)> = Vec::new();
    let (method, path, body) = match command {
        Command::Login(c) => (
            Method::POST,
            "/v1/sessions".to_string(),
            // With a token, the device goes along: a first login of an
            // account on a save that played by device links the two.
            json(&SessionRequest {
                device_id: c.device_id.clone(),
                name: c.name.clone(),
                identity_token: c.identity_token.clone(),
            }),
        ),
        Command::Browse(q) => {
            let params = [
                ("status", q.status.clone()),
                ("item_id", q.item_id.clone()),
                ("item_prefix", q.item_prefix.clone()),
                ("search", q.search.clone()),
                ("seller_id", q.seller_id.map(|s| s.to_string())),
                ("min_price", q.min_price.map(|p| p.to_string())),
                ("max_price", q.max_price.map(|p| p.to_string())),
                ("sort", q.sort.clone()),
                ("cursor", q.cursor.clone()),
                ("limit", q.limit.map(|l| l.to_string())),
            ];
            query.extend(params.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))));
            (Method::GET, "/v1/listings".to_string(), None)
        }
        Command::GetListing { listing_id } => {
            (Method::GET, format!("/v1/listings/{listing_id}"), None)
        }
        Command::Change(MarketChange::CreateListing {
            item_id,
            quantity,
            price,
            deposit,
            duration_secs,
        }) => (
            Method::POST,
            "/v1/listings".to_string(),
            json(&CreateListingRequest {
                item_id: item_id.clone(),
                quantity: *quantity,
                price: *price,
                deposit: *deposit,
                duration_secs: *duration_secs,
            }),
        ),
        Command::Change(MarketChange::Reprice { listing_id, price }) => (
            Method::PATCH,
            format!("/v1/listings/{listing_id}"),
            json(&RepriceRequest { price: *price }),
        ),
        Command::Change(MarketChange::Cancel { listing_id }) => {
            (Method::DELETE, format!("/v1/listings/{listing_id}"), None)
        }
        Command::Change(MarketChange::Purchase {
            listing_id,
            expected_price,
            quantity,
            deposit,
        }) => (
            Method::POST,
            format!("/v1/listings/{listing_id}/purchase"),
            json(&PurchaseRequest {
                expected_price: *expected_price,
                quantity: *quantity,
                deposit: *deposit,
            }),
        ),
        Command::Change(MarketChange::PlaceOrder {
            item_id,
            quantity,
            max_price,
            min_fill,
            duration_secs,
            deposit,
        }) => (
            Method::POST,
            "/v1/orders".to_string(),
            json(&PlaceOrderRequest {
                item_id: item_id.clone(),
                quantity: *quantity,
                max_price: *max_price,
                min_fill: *min_fill,
                duration_secs: *duration_secs,
                deposit: *deposit,
            }),
        ),
        Command::Change(MarketChange::CancelOrder { order_id }) => {
            (Method::DELETE, format!("/v1/orders/{order_id}"), None)
        }
        Command::Change(MarketChange::Collect { delivery_ids }) => (
            Method::POST,
            "/v1/me/deliveries/collect".to_string(),
            json(&CollectRequest {
                delivery_ids: delivery_ids.clone(),
            }),
        ),
        Command::MyOrders { status, cursor } => {
            query.push(("limit", marketplace_protocol::MAX_PAGE_LIMIT.to_string()));
            if let Some(s) = status {
                query.push(("status", s.clone()));
            }
            if let Some(c) = cursor {
                query.push(("cursor", c.clone()));
            }
            (Method::GET, "/v1/me/orders".to_string(), None)
        }
        Command::ListDeliveries { cursor } => {
            query.push(("limit", marketplace_protocol::MAX_PAGE_LIMIT.to_string()));
            query.push(("collected", "false".to_string()));
            if let Some(c) = cursor {
                query.push(("cursor", c.clone()));
            }
            (Method::GET, "/v1/me/deliveries".to_string(), None)
        }
        Command::FeeQuote { quantity, price } => {
            query.push(("quantity", quantity.to_string()));
            query.push(("price", price.to_string()));
            (Method::GET, "/v1/fees/quote".to_string(), None)
        }
        Command::MarketSummary { item_id } => {
            (Method::GET, format!("/v1/market/{item_id}/summary"), None)
        }
        Command::Identities => (Method::GET, "/v1/me/identities".to_string(), None),
        Command::LinkIdentity { identity_token } => (
            Method::POST,
            "/v1/me/identities".to_string(),
            json(&marketplace_protocol::LinkIdentityRequest {
                identity_token: identity_token.clone(),
            }),
        ),
        Command::UnlinkIdentity { provider } => (
            Method::DELETE,
            format!("/v1/me/identities/{provider}"),
            None,
        ),
        Command::SearchItems { search, limit } => {
            query.push(("search", search.clone()));
            query.push(("limit", limit.to_string()));
            (Method::GET, "/v1/items".to_string(), None)
        }
        Command::Depth { item_id, levels } => {
            query.push(("levels", levels.to_string()));
            (Method::GET, format!("/v1/market/{item_id}/depth"), None)
        }
        Command::PriceHistory {
            item_id,
            interval,
            from,
            to,
        } => {
            query.push(("interval", interval.clone()));
            if let Some(from) = from {
                query.push(("from", from.to_string()));
            }
            if let Some(to) = to {
                query.push(("to", to.to_string()));
            }
            (Method::GET, format!("/v1/market/{item_id}/history"), None)
        }
        Command::Change(MarketChange::Deposit { item_id, quantity }) => (
            Method::POST,
            "/v1/me/deposits".to_string(),
            json(&MoveRequest {
                item_id: item_id.clone(),
                quantity: *quantity,
            }),
        ),
        Command::Change(MarketChange::Withdraw { item_id, quantity }) => (
            Method::POST,
            "/v1/me/withdrawals".to_string(),
            json(&MoveRequest {
                item_id: item_id.clone(),
                quantity: *quantity,
            }),
        ),
        Command::Account => (Method::GET, "/v1/me/account".to_string(), None),
        Command::Notifications { cursor } => {
            query.push(("limit", marketplace_protocol::MAX_PAGE_LIMIT.to_string()));
            if let Some(c) = cursor {
                query.push(("cursor", c.clone()));
            }
            (Method::GET, "/v1/me/notifications".to_string(), None)
        }
        Command::AckNotifications { acks } => (
            Method::POST,
            "/v1/me/notifications/ack".to_string(),
            json(&marketplace_protocol::AckRequest {
                ids: acks.iter().map(|(id, _)| *id).collect(),
                fills: Some(acks.iter().map(|(_, fills)| *fills).collect()),
            }),
        ),
        Command::Operations { after, limit } => {
            query.push(("after", after.to_string()));
            query.push(("limit", limit.to_string()));
            (Method::GET, "/v1/me/operations".to_string(), None)
        }
        Command::ListSales {
            unclaimed_only,
            cursor,
        } => {
            query.push(("limit", marketplace_protocol::MAX_PAGE_LIMIT.to_string()));
            if *unclaimed_only {
                query.push(("claimed", "false".to_string()));
            }
            if let Some(c) = cursor {
                query.push(("cursor", c.clone()));
            }
            (Method::GET, "/v1/me/sales".to_string(), None)
        }
        Command::Change(MarketChange::Claim { sale_id }) => {
            (Method::POST, format!("/v1/sales/{sale_id}/claim"), None)
        }
    };
    WireRequest {
        method,
        path,
        query,
        body,
    }
}

/// One HTTP exchange, classified.
pub(super) async fn exchange(
    shared: &Shared,
    envelope: &Envelope,
    token: Option<&str>,
) -> Result<Reply, ClientError> {
    let config = shared.settings();
    let base = config.server_url.trim_end_matches('/');
    let wire = request_of(&envelope.command);
    let mut request = shared
        .http
        .request(wire.method, format!("{base}{}", wire.path))
        .timeout(config.request_timeout);
    if !wire.query.is_empty() {
        request = request.query(&wire.query);
    }
    let body = wire.body;
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request = request.header(
        marketplace_protocol::PROTOCOL_HEADER,
        marketplace_protocol::PROTOCOL_VERSION,
    );
    if let Some(key) = &envelope.key {
        request = request.header(IDEMPOTENCY_HEADER, key);
    }
    if let Some(owner) = &envelope.owner {
        if !owner.is_by_address() {
            request = request.header(SERVER_HEADER, owner.server_id.as_str());
        }
        request = request.header(PLAYER_HEADER, owner.player_id);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let mut response = request.send().await.map_err(transport_error)?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|s| Duration::from_secs(s.min(3600)));
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport_error)? {
        if bytes.len() + chunk.len() > config.max_response_bytes {
            return Err(ClientError::new(
                ErrorCode::BadResponse,
                "The server's answer was too large",
            ));
        }
        bytes.extend_from_slice(&chunk);
    }
    if (200..300).contains(&status) {
        parse_success(&envelope.command, &bytes)
    } else {
        Err(parse_failure(status, &bytes, retry_after))
    }
}

pub(super) fn transport_error(e: reqwest::Error) -> ClientError {
    // Messages never include the URL: it may carry secrets.
    let e = e.without_url();
    if e.is_timeout() {
        ClientError::new(ErrorCode::Timeout, "The marketplace did not answer in time")
    } else if e.is_connect() {
        ClientError::new(ErrorCode::Offline, "Cannot reach the marketplace")
    } else {
        ClientError::new(
            ErrorCode::Offline,
            format!("Connection to the marketplace lost ({e})"),
        )
    }
}

fn bad_response(what: &str) -> ClientError {
    ClientError::new(
        ErrorCode::BadResponse,
        format!("The marketplace sent an answer that makes no sense ({what})"),
    )
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ClientError> {
    serde_json::from_slice(bytes).map_err(|_| bad_response("malformed JSON"))
}

/// Parses and checks a 2xx answer. An answer that contradicts the request
/// (another listing, another price) is `bad_response` — not definitive, so a
/// hostile or broken server cannot make the client settle a hold wrongly.
fn parse_success(command: &Command, bytes: &[u8]) -> Result<Reply, ClientError> {
    match command {
        Command::Login { .. } => {
            let session: Session = decode(bytes)?;
            if session.token.is_empty() || session.player_id < 1 {
                return Err(bad_response("empty session"));
            }
            Ok(Reply::LoggedIn(session))
        }
        Command::Browse(_) => {
            let mut page: ListingPage = decode(bytes)?;
            // A listing this build cannot handle (from before the limits
            // existed, say) is left out of the page rather than failing it.
            page.listings.retain(listing_is_sane);
            Ok(Reply::Listings(page))
        }
        Command::GetListing { listing_id } => {
            let ListingEnvelope { listing, .. } = decode(bytes)?;
            if listing.id != *listing_id || !listing_is_sane(&listing) {
                return Err(bad_response("another listing"));
            }
            Ok(Reply::Listing(listing, None))
        }
        Command::Change(MarketChange::CreateListing {
            item_id,
            quantity,
            price,
            ..
        }) => {
            let ListingEnvelope {
                listing, transfer, ..
            } = decode(bytes)?;
            if &listing.item_id != item_id
                || listing.quantity != *quantity
                || listing.price != *price
                || listing.id < 1
                || transfer
                    .as_ref()
                    .is_some_and(|t| !(0..=*quantity).contains(&t.deposited) || t.delivered != 0)
            {
                return Err(bad_response("the listing does not match the request"));
            }
            Ok(Reply::Listing(listing, transfer))
        }
        Command::Change(MarketChange::Reprice { listing_id, price }) => {
            let ListingEnvelope {
                listing, transfer, ..
            } = decode(bytes)?;
            if listing.id != *listing_id || listing.price != *price {
                return Err(bad_response("the listing does not match the request"));
            }
            Ok(Reply::Listing(listing, transfer))
        }
        Command::Change(MarketChange::Cancel { listing_id }) => {
            let ListingEnvelope {
                listing, transfer, ..
            } = decode(bytes)?;
            // Settlement follows the server's listing even beyond this
            // build's limits: a cancellation the server made must settle.
            if listing.id != *listing_id
                || listing.status != ListingStatus::Cancelled
                || listing.quantity < 1
                || marketplace_protocol::check_id("item_id", &listing.item_id).is_err()
                || transfer.as_ref().is_some_and(|t| {
                    t.deposited != 0 || !(0..=listing.quantity).contains(&t.delivered)
                })
            {
                return Err(bad_response("the listing was not cancelled"));
            }
            Ok(Reply::Listing(listing, transfer))
        }
        Command::Change(MarketChange::Purchase {
            listing_id,
            expected_price,
            quantity,
            ..
        }) => {
            let PurchaseEnvelope { purchase, transfer } = decode(bytes)?;
            // Per unit since partial fills; a server from before answers
            // the lot's price, which was the expected one.
            let unit_ok = if purchase.unit_price == 0 {
                purchase.price == *expected_price
            } else {
                purchase.unit_price == *expected_price
                    && purchase.quantity.checked_mul(purchase.unit_price) == Some(purchase.price)
            };
            let most = expected_price.saturating_mul(quantity.unwrap_or(purchase.quantity));
            if purchase.listing_id != *listing_id
                || !unit_ok
                || purchase.quantity < 1
                || quantity.is_some_and(|q| q != purchase.quantity)
                || marketplace_protocol::check_id("item_id", &purchase.item_id).is_err()
                || transfer.as_ref().is_some_and(|t| {
                    !(0..=most).contains(&t.deposited)
                        || (t.delivered != 0 && t.delivered != purchase.quantity)
                })
            {
                return Err(bad_response("the purchase does not match the request"));
            }
            Ok(Reply::Purchased(purchase, transfer))
        }
        Command::Operations { after, limit } => {
            let page: OperationsPage = decode(bytes)?;
            // What a page says is applied to the save: every part must be
            // sane, or none of it is used.
            let sane = page.operations.len() <= *limit as usize
                && page.operations.windows(2).all(|w| w[0].seq < w[1].seq)
                && page.operations.iter().all(|op| {
                    op.seq > *after
                        && op.seq <= page.last_seq
                        && marketplace_protocol::check_id("key", &op.key).is_ok()
                        && op.credits.abs() <= marketplace_protocol::MAX_PRICE
                        && op.items.iter().all(|(item, n)| {
                            marketplace_protocol::check_id("item_id", item).is_ok()
                                && n.abs() <= marketplace_protocol::MAX_QUANTITY
                        })
                });
            if !sane {
                return Err(bad_response("the operations page does not fit the request"));
            }
            Ok(Reply::Operations(page))
        }
        Command::ListSales { .. } => {
            let mut page: SalesPage = decode(bytes)?;
            page.sales.retain(|s| s.id >= 1 && s.price >= 1);
            Ok(Reply::Sales(page))
        }
        Command::Change(MarketChange::Claim { sale_id }) => {
            let claim: Claim = decode(bytes)?;
            // 0 when the fees took all of a sale.
            if claim.sale_id != *sale_id
                || claim.amount < 0
                || claim.transfer.as_ref().is_some_and(|t| {
                    t.deposited != 0 || (t.delivered != 0 && t.delivered != claim.amount)
                })
            {
                return Err(bad_response("the claim does not match the request"));
            }
            Ok(Reply::Claimed(claim))
        }
        Command::Change(MarketChange::Deposit { item_id, quantity })
        | Command::Change(MarketChange::Withdraw { item_id, quantity }) => {
            let moved: Moved = decode(bytes)?;
            if &moved.item_id != item_id || moved.quantity != *quantity || moved.account.credits < 0
            {
                return Err(bad_response("the move does not match the request"));
            }
            Ok(Reply::Moved(moved))
        }
        Command::Change(MarketChange::PlaceOrder {
            item_id,
            quantity,
            max_price,
            ..
        }) => {
            let envelope: OrderEnvelope = decode(bytes)?;
            let o = &envelope.order;
            let escrow = quantity.saturating_mul(*max_price);
            let filled: i64 = envelope.fills.iter().map(|f| f.quantity).sum();
            if &o.item_id != item_id
                || o.quantity != *quantity
                || o.max_price != *max_price
                || o.id < 1
                || envelope.fills.iter().any(|f| {
                    f.quantity < 1
                        || f.unit_price < 1
                        || f.unit_price > *max_price
                        || f.order_id != Some(o.id)
                })
                || filled > *quantity
                || envelope
                    .transfer
                    .as_ref()
                    .is_some_and(|t| !(0..=escrow).contains(&t.deposited) || t.delivered != 0)
            {
                return Err(bad_response("the order does not match the request"));
            }
            Ok(Reply::Order(envelope))
        }
        Command::Change(MarketChange::CancelOrder { order_id }) => {
            let envelope: OrderEnvelope = decode(bytes)?;
            let o = &envelope.order;
            let escrow = o.quantity.saturating_mul(o.max_price);
            if o.id != *order_id
                || o.status != OrderStatus::Cancelled
                || envelope
                    .transfer
                    .as_ref()
                    .is_some_and(|t| t.deposited != 0 || !(0..=escrow).contains(&t.delivered))
            {
                return Err(bad_response("the order was not cancelled"));
            }
            Ok(Reply::Order(envelope))
        }
        Command::Change(MarketChange::Collect { delivery_ids }) => {
            let collected: Collected = decode(bytes)?;
            let total: i64 = collected.deliveries.iter().map(|d| d.quantity).sum();
            let sane = !collected.deliveries.is_empty()
                && collected.deliveries.iter().all(|d| {
                    delivery_ids.contains(&d.id)
                        && (1..=marketplace_protocol::MAX_PRICE).contains(&d.quantity)
                        && d.item_id
                            .as_deref()
                            .is_none_or(|i| marketplace_protocol::check_id("item_id", i).is_ok())
                })
                && collected.transfer.as_ref().is_some_and(|t| {
                    t.deposited == 0 && (t.delivered == 0 || t.delivered == total)
                });
            if !sane {
                return Err(bad_response("the deliveries do not match the request"));
            }
            Ok(Reply::Collected(collected))
        }
        Command::MyOrders { .. } => {
            let page: OrdersPage = decode(bytes)?;
            Ok(Reply::Orders(page))
        }
        Command::ListDeliveries { .. } => {
            let mut page: DeliveriesPage = decode(bytes)?;
            page.deliveries.retain(|d| {
                d.id >= 1
                    && d.quantity >= 1
                    && d.item_id
                        .as_deref()
                        .is_none_or(|i| marketplace_protocol::check_id("item_id", i).is_ok())
            });
            Ok(Reply::Deliveries(page))
        }
        Command::MarketSummary { item_id } => {
            let summary: marketplace_protocol::MarketSummary = decode(bytes)?;
            if &summary.item_id != item_id {
                return Err(bad_response("another item"));
            }
            Ok(Reply::MarketSummary(summary))
        }
        Command::Identities | Command::LinkIdentity { .. } | Command::UnlinkIdentity { .. } => {
            let identities: marketplace_protocol::Identities = decode(bytes)?;
            let sane = identities.identities.len() <= 64
                && identities
                    .identities
                    .iter()
                    .all(|i| i.provider.len() <= 32 && i.subject.chars().count() <= 255);
            if !sane {
                return Err(bad_response("identities out of bounds"));
            }
            Ok(Reply::Identities(identities))
        }
        Command::SearchItems { limit, .. } => {
            let found: marketplace_protocol::ItemSearch = decode(bytes)?;
            let sane = found.items.len() <= *limit as usize
                && found.items.iter().all(|i| {
                    marketplace_protocol::check_id("item_id", &i.item_id).is_ok()
                        && i.name.as_ref().is_none_or(|n| {
                            n.chars().count() <= marketplace_protocol::MAX_ITEM_NAME_CHARS
                        })
                });
            if !sane {
                return Err(bad_response("an item that cannot be"));
            }
            Ok(Reply::Items(found))
        }
        Command::Depth { item_id, .. } => {
            let depth: marketplace_protocol::Depth = decode(bytes)?;
            if &depth.item_id != item_id {
                return Err(bad_response("another item"));
            }
            Ok(Reply::Depth(depth))
        }
        Command::PriceHistory { item_id, .. } => {
            let history: marketplace_protocol::PriceHistory = decode(bytes)?;
            if &history.item_id != item_id {
                return Err(bad_response("another item"));
            }
            Ok(Reply::PriceHistory(history))
        }
        Command::FeeQuote { .. } => {
            let quote: FeeQuote = decode(bytes)?;
            if quote.listing_fee < 0 || quote.sales_tax < 0 || quote.seller_receives < 0 {
                return Err(bad_response("a negative fee"));
            }
            Ok(Reply::FeeQuote(quote))
        }
        Command::Notifications { .. } => {
            let mut page: marketplace_protocol::NotificationsPage = decode(bytes)?;
            page.notifications.retain(notification_is_sane);
            Ok(Reply::Notifications(page))
        }
        Command::AckNotifications { acks } => {
            #[derive(serde::Deserialize)]
            struct Acked {
                acked: u64,
            }
            let acked: Acked = decode(bytes)?;
            if acked.acked > acks.len() as u64 {
                return Err(bad_response("more acknowledged than asked"));
            }
            Ok(Reply::Acked(acked.acked))
        }
        Command::Account => {
            let account: AccountEnvelope = decode(bytes)?;
            if account.account.credits < 0 || account.account.stash.values().any(|n| *n < 0) {
                return Err(bad_response("a negative account"));
            }
            Ok(Reply::Account(account))
        }
    }
}

/// A notification a game can show: ids and figures in range (a hostile
/// server's others are dropped: they are only notices).
pub(crate) fn notification_is_sane(n: &marketplace_protocol::Notification) -> bool {
    n.id > 0
        && marketplace_protocol::check_id("item_id", &n.item_id).is_ok()
        && (0..=marketplace_protocol::MAX_HOLDING).contains(&n.quantity)
        && (0..=marketplace_protocol::MAX_HOLDING).contains(&n.credits)
        && (0..=marketplace_protocol::MAX_HOLDING).contains(&n.fee)
        && n.fills >= 0
}

fn listing_is_sane(l: &Listing) -> bool {
    l.id > 0
        && marketplace_protocol::check_quantity(l.quantity).is_ok()
        && marketplace_protocol::check_price("price", l.price).is_ok()
        && marketplace_protocol::check_id("item_id", &l.item_id).is_ok()
}

/// Classifies a non-2xx answer.
///
/// Only the marketplace's own error envelope, with a status that fits its
/// code, can be definitive — and so release a hold. Anything else is what a
/// proxy, CDN, load balancer or WAF says (an HTML 403 or 404 page, a bare
/// 502): it tells nothing about whether the server applied the request, so
/// it is classified by its status as one of the retryable codes (invariant
/// I4). A well-formed envelope with a code this client does not know is
/// treated the same way: a newer server's refusal is not guessed at.
pub(super) fn parse_failure(
    status: u16,
    bytes: &[u8],
    retry_after: Option<Duration>,
) -> ClientError {
    let ambiguous = match status {
        401 => ErrorCode::Unauthorized,
        408 => ErrorCode::Timeout,
        429 => ErrorCode::RateLimited,
        500 => ErrorCode::Internal,
        s if s >= 500 => ErrorCode::Unavailable,
        _ => ErrorCode::BadResponse,
    };
    let envelope = serde_json::from_slice::<ErrorEnvelope>(bytes).ok();
    let mut error = match envelope {
        Some(env) => match ErrorCode::parse(&env.error.code) {
            Some(code) if code.http_status() == Some(status) => {
                let mut e = ClientError::new(code, env.error.message);
                e.current_price = env.error.current_price.filter(|p| *p > 0);
                e.available = env.error.available.filter(|n| *n >= 0);
                e
            }
            _ => ClientError::new(
                ambiguous,
                format!(
                    "The marketplace answered HTTP {status} with a code this game does not know ({})",
                    env.error.code
                ),
            ),
        },
        None => ClientError::new(
            ambiguous,
            format!("HTTP {status} from something between the game and the marketplace"),
        ),
    };
    if error.message.is_empty() {
        error.message = format!("The marketplace answered HTTP {status}");
    }
    error.retry_after = retry_after;
    error
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::BrowseQuery;

    #[test]
    fn failures_are_classified_by_code_and_status() {
        let body = br#"{"error":{"code":"already_sold","message":"Item sold to another player"}}"#;
        let e = parse_failure(409, body, None);
        assert_eq!(e.code, ErrorCode::AlreadySold);
        assert!(e.is_definitive());
        let e = parse_failure(502, b"<html>bad gateway</html>", None);
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert!(!e.is_definitive());
        // A code that does not fit its status is not trusted.
        let e = parse_failure(500, body, None);
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.is_definitive());
        let e = parse_failure(429, b"", Some(Duration::from_secs(3)));
        assert_eq!(
            (e.code, e.retry_after),
            (ErrorCode::RateLimited, Some(Duration::from_secs(3)))
        );
        let e = parse_failure(418, br#"{"error":{"code":"teapot","message":"no"}}"#, None);
        assert_eq!(e.code, ErrorCode::BadResponse);
        assert!(!e.is_definitive(), "an unknown code settles nothing");
    }

    #[test]
    fn a_proxy_page_is_never_definitive() {
        for status in [400u16, 403, 404, 409, 410, 413, 418, 451] {
            let page = b"<html><body><h1>403 Forbidden</h1>nginx</body></html>";
            let e = parse_failure(status, page, None);
            assert!(!e.is_definitive(), "{status}: {e:?}");
            // Our envelope with a status that does not fit its code neither.
            let body = br#"{"error":{"code":"already_sold","message":"x"}}"#;
            let e = parse_failure(status, body, None);
            assert_eq!(
                e.is_definitive(),
                status == 409,
                "{status}: only 409 fits already_sold"
            );
        }
        let e = parse_failure(
            404,
            br#"{"error":{"code":"not_found","message":"Listing not found"}}"#,
            None,
        );
        assert_eq!(e.code, ErrorCode::NotFound);
        assert!(e.is_definitive());
    }

    #[test]
    fn success_must_match_the_request() {
        let buy = Command::Change(MarketChange::Purchase {
            listing_id: 7,
            expected_price: 100,
            quantity: None,
            deposit: 100,
        });
        let ok = br#"{"purchase":{"id":1,"listing_id":7,"buyer_id":2,"seller_id":1,"item_id":"ore","quantity":1,"price":100,"created_at":0}}"#;
        assert!(matches!(parse_success(&buy, ok), Ok(Reply::Purchased(..))));
        let wrong_price = br#"{"purchase":{"id":1,"listing_id":7,"buyer_id":2,"seller_id":1,"item_id":"ore","quantity":1,"price":1000,"created_at":0}}"#;
        assert_eq!(
            parse_success(&buy, wrong_price).unwrap_err().code,
            ErrorCode::BadResponse
        );
        for junk in [&b"not json"[..], b"{}", b"[]", b"null", b""] {
            let e = parse_success(&buy, junk).unwrap_err();
            assert_eq!(e.code, ErrorCode::BadResponse);
            assert!(
                !e.is_definitive(),
                "a garbled success must not release a hold"
            );
        }
    }

    /// A command, and the method, path, query and body it sends.
    type Row = (
        Command,
        Method,
        &'static str,
        Vec<(&'static str, &'static str)>,
        Option<serde_json::Value>,
    );

    /// Every command's request, as a table.
    #[test]
    fn commands_become_these_requests() {
        use serde_json::json;
        let table: Vec<Row> = vec![
            (
                Command::Login(crate::client::Credentials::device("d", "Ann")),
                Method::POST,
                "/v1/sessions",
                vec![],
                Some(json!({"device_id": "d", "name": "Ann"})),
            ),
            (
                Command::Login(crate::client::Credentials {
                    device_id: "d".into(),
                    name: "Ann".into(),
                    identity_token: Some("a.b.c".into()),
                }),
                Method::POST,
                "/v1/sessions",
                vec![],
                Some(json!({"device_id": "d", "identity_token": "a.b.c", "name": "Ann"})),
            ),
            (
                Command::Browse(BrowseQuery {
                    item_id: Some("ore & gems".into()),
                    limit: Some(5),
                    ..Default::default()
                }),
                Method::GET,
                "/v1/listings",
                vec![("item_id", "ore & gems"), ("limit", "5")],
                None,
            ),
            (
                Command::GetListing { listing_id: 9 },
                Method::GET,
                "/v1/listings/9",
                vec![],
                None,
            ),
            (
                Command::Browse(BrowseQuery {
                    search: Some("iron ore".into()),
                    ..Default::default()
                }),
                Method::GET,
                "/v1/listings",
                vec![("search", "iron ore")],
                None,
            ),
            (
                Command::SearchItems {
                    search: "mk ii".into(),
                    limit: 7,
                },
                Method::GET,
                "/v1/items",
                vec![("search", "mk ii"), ("limit", "7")],
                None,
            ),
            (
                Command::AckNotifications {
                    acks: vec![(4, 2), (9, 1)],
                },
                Method::POST,
                "/v1/me/notifications/ack",
                vec![],
                Some(json!({"ids": [4, 9], "fills": [2, 1]})),
            ),
            (
                Command::Change(MarketChange::CreateListing {
                    item_id: "ore".into(),
                    quantity: 2,
                    price: 30,
                    deposit: 0,
                    duration_secs: None,
                }),
                Method::POST,
                "/v1/listings",
                vec![],
                Some(json!({"item_id": "ore", "quantity": 2, "price": 30})),
            ),
            (
                Command::Change(MarketChange::CreateListing {
                    item_id: "ore".into(),
                    quantity: 2,
                    price: 30,
                    deposit: 2,
                    duration_secs: None,
                }),
                Method::POST,
                "/v1/listings",
                vec![],
                Some(json!({"item_id": "ore", "quantity": 2, "price": 30, "deposit": 2})),
            ),
            (
                Command::Change(MarketChange::Reprice {
                    listing_id: 4,
                    price: 12,
                }),
                Method::PATCH,
                "/v1/listings/4",
                vec![],
                Some(json!({"price": 12})),
            ),
            (
                Command::Change(MarketChange::Cancel { listing_id: 4 }),
                Method::DELETE,
                "/v1/listings/4",
                vec![],
                None,
            ),
            (
                Command::Change(MarketChange::Purchase {
                    listing_id: 7,
                    expected_price: 100,
                    quantity: None,
                    deposit: 0,
                }),
                Method::POST,
                "/v1/listings/7/purchase",
                vec![],
                Some(json!({"expected_price": 100})),
            ),
            (
                Command::Change(MarketChange::Purchase {
                    listing_id: 7,
                    expected_price: 100,
                    quantity: None,
                    deposit: 40,
                }),
                Method::POST,
                "/v1/listings/7/purchase",
                vec![],
                Some(json!({"expected_price": 100, "deposit": 40})),
            ),
            (
                Command::Change(MarketChange::Withdraw {
                    item_id: None,
                    quantity: 5,
                }),
                Method::POST,
                "/v1/me/withdrawals",
                vec![],
                Some(json!({"item_id": null, "quantity": 5})),
            ),
            (
                Command::Account,
                Method::GET,
                "/v1/me/account",
                vec![],
                None,
            ),
            (
                Command::Operations {
                    after: 3,
                    limit: 200,
                },
                Method::GET,
                "/v1/me/operations",
                vec![("after", "3"), ("limit", "200")],
                None,
            ),
            (
                Command::ListSales {
                    unclaimed_only: true,
                    cursor: Some("c 1".into()),
                },
                Method::GET,
                "/v1/me/sales",
                vec![("limit", "200"), ("claimed", "false"), ("cursor", "c 1")],
                None,
            ),
            (
                Command::Change(MarketChange::Claim { sale_id: 8 }),
                Method::POST,
                "/v1/sales/8/claim",
                vec![],
                None,
            ),
        ];
        for (command, method, path, query, body) in table {
            let wire = request_of(&command);
            assert_eq!(wire.method, method, "{command:?}");
            assert_eq!(wire.path, path, "{command:?}");
            let query: Vec<(&str, String)> =
                query.into_iter().map(|(k, v)| (k, v.to_string())).collect();
            assert_eq!(wire.query, query, "{command:?}");
            assert_eq!(wire.body, body, "{command:?}");
        }
    }

    #[test]
    fn query_values_are_encoded() {
        let wire = request_of(&Command::Browse(BrowseQuery {
            item_id: Some("a b&c=d/é".into()),
            ..Default::default()
        }));
        let request = reqwest::Client::new()
            .get("http://127.0.0.1:1/v1/listings")
            .query(&wire.query)
            .build()
            .unwrap();
        assert_eq!(request.url().query(), Some("item_id=a+b%26c%3Dd%2F%C3%A9"));
    }
}
