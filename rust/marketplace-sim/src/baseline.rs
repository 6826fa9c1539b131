//! A faithful model of the **old** backend, for benchmarks only: one JSON
//! document holds every listing; each purchase reads the whole document,
//! checks the listing is `active`, sets it `sold` and writes the whole
//! document back — with nothing making the read-modify-write atomic.
//!
//! Run with one request at a time (as a single serverless instance did) it
//! is merely slow; run with concurrent requests (several instances, or two
//! buyers in the same second) it sells one item several times. The
//! benchmark shows both.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Clone)]
struct Doc {
    path: Arc<PathBuf>,
    /// `Some`: one request at a time (a single instance). `None`: concurrent.
    serial: Option<Arc<tokio::sync::Mutex<()>>>,
}

/// Starts the old design's server on port 0 with `listings` active listings
/// priced `price`. Returns its address and the task serving it.
pub async fn start(
    path: PathBuf,
    listings: usize,
    price: i64,
    one_at_a_time: bool,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let all: Vec<Value> = (1..=listings)
        .map(|id| json!({"id": id, "seller": "seller", "item_id": format!("item-{id}"), "price": price, "status": "active", "buyer": null}))
        .collect();
    std::fs::write(&path, serde_json::to_vec(&json!({ "listings": all }))?)?;
    let doc = Doc {
        path: Arc::new(path),
        serial: one_at_a_time.then(|| Arc::new(tokio::sync::Mutex::new(()))),
    };
    let app = Router::new()
        .route("/purchase/{id}", post(purchase))
        .with_state(doc);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((addr, task))
}

/// The old purchase: read everything, modify one entry, write everything.
async fn purchase(
    State(doc): State<Doc>,
    Path(id): Path<u64>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let _turn = match &doc.serial {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    let buyer = body["buyer"].as_str().unwrap_or("?").to_string();
    let read = tokio::fs::read(doc.path.as_ref()).await;
    let Ok(bytes) = read else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "read"})),
        );
    };
    let Ok(mut all) = serde_json::from_slice::<Value>(&bytes) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "parse"})),
        );
    };
    let Some(listing) = all["listings"]
        .as_array_mut()
        .and_then(|ls| ls.iter_mut().find(|l| l["id"] == json!(id)))
    else {
        return (StatusCode::NOT_FOUND, Json(json!({"error": "not_found"})));
    };
    if listing["status"] != "active" {
        return (StatusCode::CONFLICT, Json(json!({"error": "already_sold"})));
    }
    listing["status"] = json!("sold");
    listing["buyer"] = json!(buyer);
    // The whole document goes back, over whatever another request wrote.
    let Ok(out) = serde_json::to_vec(&all) else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "serialise"})),
        );
    };
    if tokio::fs::write(doc.path.as_ref(), out).await.is_err() {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "write"})),
        );
    }
    (StatusCode::OK, Json(json!({"sold_to": buyer})))
}
