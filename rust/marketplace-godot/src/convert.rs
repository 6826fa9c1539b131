//! Conversions between the client core's plain Rust values and Godot types.
//! Dictionaries use the server's field names, so GDScript reads
//! `purchase["price"]` exactly as the HTTP API documents it.

use godot::prelude::*;
use marketplace_client::client::BrowseQuery;
use marketplace_client::protocol::{Listing, Purchase, Sale};
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
    put(&mut d, "sold_at", s.sold_at);
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

/// `refresh_listings(filter)`: `{status, item_id, seller_id, cursor, limit}`,
/// all optional. Unknown keys or wrong types are refused with a message.
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
                        "refresh_listings: unknown filter key {other:?} (use status, item_id, seller_id, cursor, limit)"
                    ),
                ))
            }
        }
    }
    Ok(q)
}
