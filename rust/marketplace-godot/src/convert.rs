//! Conversions between the client core's plain Rust values and Godot types.
//! Dictionaries use the server's field names, so GDScript reads
//! `purchase["price"]` exactly as the HTTP API documents it.

use godot::prelude::*;
use marketplace_client::client::BrowseQuery;
use marketplace_client::protocol::{
    Delivery, Depth, FeeQuote, Fill, Listing, MarketSummary, Order, PriceHistory, Purchase, Sale,
};
use marketplace_client::{ClientError, ErrorCode, PendingTrade};

fn put(d: &mut VarDictionary, key: &str, value: impl ToGodot) {
    d.set(key, &value.to_variant());
}

pub fn listing(l: &Listing) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "id", l.id);
    put(&mut d, "seller_id", l.seller_id);
    put(&mut d, "item_id", GString::from(l.item_id.as_str()));
    put(&mut d, "quantity", l.quantity);
    put(&mut d, "price", l.price);
    put(&mut d, "status", GString::from(l.status.as_str()));
    put(&mut d, "created_at", l.created_at);
    put(&mut d, "updated_at", l.updated_at);
    put(&mut d, "quantity_remaining", l.remaining());
    // 0: never expires.
    put(&mut d, "expires_at", l.expires_at.unwrap_or(0));
    // Browsing gives the seller's name; trade answers do not ("").
    put(
        &mut d,
        "seller_name",
        GString::from(l.seller_name.as_deref().unwrap_or("")),
    );
    d
}

pub fn listings(ls: &[Listing]) -> VarArray {
    let mut a = VarArray::new();
    for l in ls {
        a.push(&listing(l).to_variant());
    }
    a
}

pub fn purchase(p: &Purchase) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "id", p.id);
    put(&mut d, "listing_id", p.listing_id);
    put(&mut d, "buyer_id", p.buyer_id);
    put(&mut d, "seller_id", p.seller_id);
    put(&mut d, "item_id", GString::from(p.item_id.as_str()));
    put(&mut d, "quantity", p.quantity);
    put(&mut d, "price", p.price);
    put(&mut d, "unit_price", p.unit_price);
    put(&mut d, "created_at", p.created_at);
    d
}

pub fn sale(s: &Sale) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "id", s.id);
    put(&mut d, "listing_id", s.listing_id);
    put(&mut d, "buyer_id", s.buyer_id);
    put(&mut d, "item_id", GString::from(s.item_id.as_str()));
    put(&mut d, "quantity", s.quantity);
    put(&mut d, "price", s.price);
    put(&mut d, "fee", s.fee);
    put(&mut d, "sold_at", s.sold_at);
    d
}

/// A buy order, with the server's field names; `expires_at` 0: never.
pub fn order(o: &Order) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "id", o.id);
    put(&mut d, "buyer_id", o.buyer_id);
    put(&mut d, "item_id", GString::from(o.item_id.as_str()));
    put(&mut d, "quantity", o.quantity);
    put(&mut d, "quantity_remaining", o.quantity_remaining);
    put(&mut d, "max_price", o.max_price);
    put(&mut d, "min_fill", o.min_fill);
    put(&mut d, "escrow", o.escrow);
    put(&mut d, "status", GString::from(o.status.as_str()));
    put(&mut d, "created_at", o.created_at);
    put(&mut d, "updated_at", o.updated_at);
    put(&mut d, "expires_at", o.expires_at.unwrap_or(0));
    d
}

pub fn orders(os: &[Order]) -> VarArray {
    let mut a = VarArray::new();
    for o in os {
        a.push(&order(o).to_variant());
    }
    a
}

/// One fill; `order_id` 0: a direct purchase.
pub fn fill(f: &Fill) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "id", f.id);
    put(&mut d, "listing_id", f.listing_id);
    put(&mut d, "order_id", f.order_id.unwrap_or(0));
    put(&mut d, "buyer_id", f.buyer_id);
    put(&mut d, "seller_id", f.seller_id);
    put(&mut d, "item_id", GString::from(f.item_id.as_str()));
    put(&mut d, "quantity", f.quantity);
    put(&mut d, "unit_price", f.unit_price);
    put(&mut d, "price", f.price);
    put(&mut d, "fee", f.fee);
    put(&mut d, "created_at", f.created_at);
    d
}

pub fn fills(fs: &[Fill]) -> VarArray {
    let mut a = VarArray::new();
    for f in fs {
        a.push(&fill(f).to_variant());
    }
    a
}

/// A delivery; `item_id` "": credits.
pub fn delivery(x: &Delivery) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "id", x.id);
    put(&mut d, "kind", GString::from(x.kind.as_str()));
    put(
        &mut d,
        "item_id",
        GString::from(x.item_id.as_deref().unwrap_or("")),
    );
    put(&mut d, "quantity", x.quantity);
    put(&mut d, "listing_id", x.listing_id.unwrap_or(0));
    put(&mut d, "order_id", x.order_id.unwrap_or(0));
    put(&mut d, "created_at", x.created_at);
    d
}

/// A notification: `id`, `kind` (`"sold"`, `"order_filled"`,
/// `"listing_expired"`, `"order_expired"`), `item_id`, `listing_id`,
/// `order_id` (0: none), `quantity`, `credits`, `fee`, `fills`,
/// `created_at`, `updated_at`.
pub fn notification(n: &marketplace_client::protocol::Notification) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "id", n.id);
    put(&mut d, "kind", GString::from(n.kind.as_str()));
    put(&mut d, "item_id", GString::from(n.item_id.as_str()));
    put(&mut d, "listing_id", n.listing_id.unwrap_or(0));
    put(&mut d, "order_id", n.order_id.unwrap_or(0));
    put(&mut d, "quantity", n.quantity);
    put(&mut d, "credits", n.credits);
    put(&mut d, "fee", n.fee);
    put(&mut d, "fills", n.fills);
    put(&mut d, "created_at", n.created_at);
    put(&mut d, "updated_at", n.updated_at);
    d
}

pub fn deliveries(xs: &[Delivery]) -> VarArray {
    let mut a = VarArray::new();
    for x in xs {
        a.push(&delivery(x).to_variant());
    }
    a
}

/// `item_id`, `best_ask`, `best_bid` (0: none), `ask_quantity`,
/// `bid_quantity`, `last_price` (0: never traded), `volume_24h`,
/// `trades_24h`, `at`.
pub fn market_summary(m: &MarketSummary) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "item_id", GString::from(m.item_id.as_str()));
    put(&mut d, "best_ask", m.best_ask.unwrap_or(0));
    put(&mut d, "best_bid", m.best_bid.unwrap_or(0));
    put(&mut d, "ask_quantity", m.ask_quantity);
    put(&mut d, "bid_quantity", m.bid_quantity);
    put(&mut d, "last_price", m.last_price.unwrap_or(0));
    put(&mut d, "volume_24h", m.volume_24h);
    put(&mut d, "trades_24h", m.trades_24h);
    put(&mut d, "at", m.at);
    d
}

/// Items found, each `{item_id, name}` (`name` empty: the catalog gives
/// none).
pub fn item_matches(items: &[marketplace_client::protocol::ItemMatch]) -> VarArray {
    let mut a = VarArray::new();
    for i in items {
        let mut d = VarDictionary::new();
        put(&mut d, "item_id", GString::from(i.item_id.as_str()));
        put(
            &mut d,
            "name",
            GString::from(i.name.as_deref().unwrap_or("")),
        );
        a.push(&d.to_variant());
    }
    a
}

/// `identities` (each `{provider, subject, linked_at}`) and `device`.
pub fn identities(x: &marketplace_client::protocol::Identities) -> VarDictionary {
    let mut list = VarArray::new();
    for i in &x.identities {
        let mut d = VarDictionary::new();
        put(&mut d, "provider", GString::from(i.provider.as_str()));
        put(&mut d, "subject", GString::from(i.subject.as_str()));
        put(&mut d, "linked_at", i.linked_at);
        list.push(&d.to_variant());
    }
    let mut d = VarDictionary::new();
    put(&mut d, "identities", list);
    put(&mut d, "device", x.device);
    d
}

/// `item_id`, `asks` and `bids`: arrays of `{price, quantity, count}`, the
/// best level first.
pub fn depth(x: &Depth) -> VarDictionary {
    let side = |levels: &[marketplace_client::protocol::DepthLevel]| {
        let mut a = VarArray::new();
        for l in levels {
            let mut d = VarDictionary::new();
            put(&mut d, "price", l.price);
            put(&mut d, "quantity", l.quantity);
            put(&mut d, "count", l.count);
            a.push(&d.to_variant());
        }
        a
    };
    let mut d = VarDictionary::new();
    put(&mut d, "item_id", GString::from(x.item_id.as_str()));
    put(&mut d, "asks", side(&x.asks));
    put(&mut d, "bids", side(&x.bids));
    d
}

/// `item_id`, `interval`, `candles`: `{start, open, high, low, close,
/// volume, trades}`, oldest first.
pub fn price_history(h: &PriceHistory) -> VarDictionary {
    let mut candles = VarArray::new();
    for c in &h.candles {
        let mut d = VarDictionary::new();
        put(&mut d, "start", c.start);
        put(&mut d, "open", c.open);
        put(&mut d, "high", c.high);
        put(&mut d, "low", c.low);
        put(&mut d, "close", c.close);
        put(&mut d, "volume", c.volume);
        put(&mut d, "trades", c.trades);
        candles.push(&d.to_variant());
    }
    let mut d = VarDictionary::new();
    put(&mut d, "item_id", GString::from(h.item_id.as_str()));
    put(&mut d, "interval", GString::from(h.interval.as_str()));
    put(&mut d, "candles", candles);
    d
}

/// `quantity`, `unit_price`, `buyer_pays`, `listing_fee`, `sales_tax`,
/// `seller_receives`.
pub fn fee_quote(q: &FeeQuote) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "quantity", q.quantity);
    put(&mut d, "unit_price", q.unit_price);
    put(&mut d, "buyer_pays", q.buyer_pays);
    put(&mut d, "listing_fee", q.listing_fee);
    put(&mut d, "sales_tax", q.sales_tax);
    put(&mut d, "seller_receives", q.seller_receives);
    d
}

pub fn sales(ss: &[Sale]) -> VarArray {
    let mut a = VarArray::new();
    for s in ss {
        a.push(&sale(s).to_variant());
    }
    a
}

/// A market account: `credits`, `stash` (item id → count), `version`.
pub fn account(a: &marketplace_client::protocol::Account) -> VarDictionary {
    let mut stash = VarDictionary::new();
    for (item, n) in &a.stash {
        stash.set(item.as_str(), *n);
    }
    let mut d = VarDictionary::new();
    put(&mut d, "credits", a.credits);
    put(&mut d, "stash", stash);
    put(&mut d, "version", a.version);
    d
}

/// A trade waiting for its answer, as `get_pending_trades()` shows it.
pub fn pending_trade(t: &PendingTrade) -> VarDictionary {
    let mut d = VarDictionary::new();
    put(&mut d, "request_id", t.request_id.0 as i64);
    put(&mut d, "kind", t.kind);
    put(&mut d, "listing_id", t.listing_id.unwrap_or(0));
    put(&mut d, "sale_id", t.sale_id.unwrap_or(0));
    put(&mut d, "order_id", t.order_id.unwrap_or(0));
    put(&mut d, "item_id", t.item_id.as_deref().unwrap_or(""));
    put(&mut d, "quantity", t.quantity.unwrap_or(0));
    put(&mut d, "amount", t.amount);
    put(&mut d, "created_at", t.created_at);
    put(&mut d, "age_sec", t.age.as_secs_f64());
    put(&mut d, "attempts", i64::from(t.attempts));
    put(
        &mut d,
        "last_error",
        t.last_error.map_or("", |c| c.as_str()),
    );
    put(&mut d, "waiting_for_save", t.waiting_for_save);
    put(
        &mut d,
        "waiting_for_server",
        t.waiting_for_owner.as_deref().unwrap_or(""),
    );
    d
}

pub fn pending_trades(ts: &[PendingTrade]) -> VarArray {
    let mut a = VarArray::new();
    for t in ts {
        a.push(&pending_trade(t).to_variant());
    }
    a
}

/// The code GDScript matches on and the sentence for the player.
pub fn error(e: &ClientError) -> (GString, GString) {
    (
        GString::from(e.code.as_str()),
        GString::from(e.message.as_str()),
    )
}

/// `refresh_listings(filter)`: `{status, item_id, item_prefix, search,
/// seller_id, min_price, max_price, sort, cursor, limit}`, all optional. Unknown keys or wrong types are refused with a message.
pub fn browse_query(filter: &VarDictionary) -> Result<BrowseQuery, ClientError> {
    let mut q = BrowseQuery::default();
    for (key, value) in filter.iter_shared() {
        let key = key.to_string();
        let bad = || {
            ClientError::new(
                ErrorCode::InvalidArgument,
                format!("refresh_listings: filter key {key:?} has the wrong type"),
            )
        };
        match key.as_str() {
            "status" => q.status = Some(value.try_to::<GString>().map_err(|_| bad())?.to_string()),
            "item_id" => q.item_id = Some(value.try_to::<GString>().map_err(|_| bad())?.to_string()),
            "item_prefix" => {
                q.item_prefix = Some(value.try_to::<GString>().map_err(|_| bad())?.to_string())
            }
            "search" => q.search = Some(value.try_to::<GString>().map_err(|_| bad())?.to_string()),
            "sort" => q.sort = Some(value.try_to::<GString>().map_err(|_| bad())?.to_string()),
            "min_price" => q.min_price = Some(value.try_to::<i64>().map_err(|_| bad())?),
            "max_price" => q.max_price = Some(value.try_to::<i64>().map_err(|_| bad())?),
            "cursor" => q.cursor = Some(value.try_to::<GString>().map_err(|_| bad())?.to_string()),
            "seller_id" => q.seller_id = Some(value.try_to::<i64>().map_err(|_| bad())?),
            "limit" => {
                let limit = value.try_to::<i64>().map_err(|_| bad())?;
                q.limit = Some(u32::try_from(limit).map_err(|_| bad())?);
            }
            other => {
                return Err(ClientError::new(
                    ErrorCode::InvalidArgument,
                    format!(
                        "refresh_listings: unknown filter key {other:?} (use status, item_id, item_prefix, search, seller_id, min_price, max_price, sort, cursor, limit)"
                    ),
                ))
            }
        }
    }
    Ok(q)
}
