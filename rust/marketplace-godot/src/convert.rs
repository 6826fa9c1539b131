//! What GDScript passes in, made into the client core's values: the
//! `refresh_listings` filter. (What goes out is in `data`.)

use godot::prelude::*;
use marketplace_client::client::BrowseQuery;
use marketplace_client::{ClientError, ErrorCode};

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
