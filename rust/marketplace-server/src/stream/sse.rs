//! `GET /v1/stream`: the change stream as server-sent events.
//!
//! Why SSE and not WebSockets: the stream only flows one way (requests
//! stay plain HTTP, keyed and retried as ever); SSE is HTTP/1.1 a proxy or
//! load balancer passes untouched; resuming is part of the format
//! (`id:` / `Last-Event-ID`); and it needs no upgrade handshake, no
//! framing crate and no ping/pong of its own on either side.
//!
//! A connection: the events after `after` (or `Last-Event-ID`) that the
//! subscriber may see, read from the table; `event: ready`; then live
//! events as the hub hands them out, a `: ping` comment every
//! [`HEARTBEAT`]. It ends with `event: reload` never — that is sent first,
//! instead of the missed events, when they are no longer kept — but with
//! `event: lagged` (too slow), `event: replaced` (the player opened more
//! than `--stream-max-per-player`), at the token's lifetime, a ban, or
//! the server's shutdown; the client reconnects with its last `seq`.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use marketplace_protocol::{check_id, StreamReady, StreamReload, MAX_STREAM_ITEMS};
use serde::Deserialize;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::hub::{Admission, Filter, Frame};
use crate::error::AppError;
use crate::extract::AuthPlayer;
use crate::AppState;

/// A comment line this often keeps proxies from closing an idle stream and
/// lets the server notice a ban or a dead peer.
pub const HEARTBEAT: Duration = Duration::from_secs(15);

/// Events sent in one write at most.
const BATCH_FRAMES: usize = 256;

/// A subscriber whose socket takes nothing for this long is cut off (it
/// resumes by sequence when it reads again).
const WRITE_STALL: Duration = Duration::from_secs(30);

/// Rows per backfill read.
const BACKFILL_PAGE: i64 = 500;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/stream", get(subscribe))
}

#[derive(Deserialize)]
struct StreamQuery {
    after: Option<i64>,
    /// Comma-separated item ids; absent: every item.
    items: Option<String>,
    /// `false`: only the player's own events.
    market: Option<bool>,
}

async fn subscribe(
    State(state): State<AppState>,
    AuthPlayer(me): AuthPlayer,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, AppError> {
    let Query(q) = query.map_err(|e| AppError::InvalidRequest(e.body_text()))?;
    let items: Vec<String> = q
        .items
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if items.len() > MAX_STREAM_ITEMS {
        return Err(AppError::InvalidRequest(format!(
            "at most {MAX_STREAM_ITEMS} items per stream"
        )));
    }
    for item in &items {
        check_id("item id", item).map_err(AppError::InvalidRequest)?;
    }
    let after = match q.after {
        Some(a) => Some(a),
        None => headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<i64>().map_err(|_| {
                    AppError::InvalidRequest("Last-Event-ID is not an event id".into())
                })
            })
            .transpose()?,
    };
    if after.is_some_and(|a| a < 0) {
        return Err(AppError::InvalidRequest(
            "after must not be negative".into(),
        ));
    }
    let config = &state.0.config;
    let hub = state.0.stream.clone();
    let admission = hub
        .admit(
            me,
            config.stream_max_per_player,
            config.stream_subscriber_cap(),
        )
        .ok_or(AppError::Unavailable)?;
    // Subscribe first, then read the head: every frame after it comes
    // through the channel (see `Hub::read_new`). The head is the
    // database's committed one, not this replica's tailer's: a client
    // coming from a replica further ahead (or reconnecting the instant
    // after a commit, or right after a restart) resumes instead of
    // reloading, and `ready` means "everything committed before you
    // connected is behind you". Live frames at or below it are skipped,
    // so nothing arrives twice. Read before answering: a database that
    // cannot answer is a 503 the client backs off from, not an empty 200.
    let rx = hub.receiver();
    let (committed, pruned) = super::hub::read_head(&state.0.db).await?;
    let head = committed.max(hub.head());
    let pruned = pruned.max(hub.pruned_through());
    let filter = Filter {
        player_id: me,
        items,
        market: q.market.unwrap_or(true),
    };
    // The stream lives as long as the token it was opened with: a ban or a
    // token past its time ends it, and the client logs in again.
    let now = state.0.clock.now();
    let expires_at = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| state.0.signer.verify_until(t.trim(), now))
        .map_or(now + config.token_ttl_secs as i64, |(_, at)| at);
    let lifetime = Duration::from_secs(expires_at.saturating_sub(now).max(1) as u64);
    let (tx, body_rx) = tokio::sync::mpsc::channel::<Bytes>(64);
    tokio::spawn(run(
        state.clone(),
        admission,
        filter,
        Start {
            after,
            head,
            pruned,
        },
        rx,
        tx,
        lifetime,
    ));
    let body = Body::from_stream(futures_util::stream::unfold(body_rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, std::convert::Infallible>(bytes), rx))
    }));
    let mut response = Response::new(body);
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Tells nginx-like proxies not to buffer the stream.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn control(event: &str, data: &impl serde::Serialize) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "{}".into());
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

/// Where a subscription starts: the client's resume point, and the
/// committed head and pruning cut read when it connected.
struct Start {
    after: Option<i64>,
    head: i64,
    pruned: i64,
}

/// Feeds one subscriber's body until it ends; the body channel closing
/// (the client went away) ends it too.
#[allow(clippy::too_many_arguments)]
async fn run(
    state: AppState,
    mut admission: Admission,
    filter: Filter,
    start: Start,
    mut rx: tokio::sync::broadcast::Receiver<Arc<Frame>>,
    tx: tokio::sync::mpsc::Sender<Bytes>,
    lifetime: Duration,
) {
    let hub = state.0.stream.clone();
    let mut stop = state.0.stop.subscribe();
    let deadline = tokio::time::sleep(lifetime);
    tokio::pin!(deadline);
    let mut cursor = start.head;
    if let Some(a) = start.after {
        let mut reload = !(a >= start.pruned && a <= cursor);
        if !reload {
            // A replaced, banned-by-shutdown or expired subscription stops
            // reading the table too, not only sending live frames.
            let filled = tokio::select! {
                r = backfill(&state, &filter, a, cursor, &tx) => r,
                _ = admission.ended.wait_for(|e| *e) => return,
                _ = stop.wait_for(|s| *s) => return,
                _ = &mut deadline => return,
            };
            match filled {
                Ok(true) => {}
                Ok(false) => return, // the client went away
                Err(e) => {
                    tracing::warn!(error = %e, "stream backfill failed");
                    return;
                }
            }
            // Pruned before or while we read (by any replica)? Then what
            // was read may have holes. The pruner announces its cut
            // before deleting, so the database's word is final.
            reload = super::hub::read_head(&state.0.db)
                .await
                .map(|(_, pruned)| pruned > a)
                .unwrap_or(true);
        }
        if reload
            && tx
                .send(control("reload", &StreamReload { head: cursor }))
                .await
                .is_err()
        {
            return;
        }
    }
    if tx
        .send(control("ready", &StreamReady { head: cursor }))
        .await
        .is_err()
    {
        return;
    }
    let mut beat = tokio::time::interval(HEARTBEAT);
    beat.tick().await;
    loop {
        let out = tokio::select! {
            frame = rx.recv() => match frame {
                Ok(frame) => {
                    // Whatever else is already waiting goes in the same
                    // write: under load, one syscall carries many events.
                    let mut out = Vec::new();
                    // What the client will have seen if this batch is lost.
                    let sent_through = cursor;
                    let mut next = Some(frame);
                    let mut taken = 0;
                    while let Some(frame) = next.take() {
                        if frame.seq > cursor {
                            cursor = frame.seq;
                            if filter.wants(&frame) {
                                out.extend_from_slice(&frame.text);
                            }
                        }
                        taken += 1;
                        if taken < BATCH_FRAMES {
                            next = match rx.try_recv() {
                                Ok(f) => Some(f),
                                Err(TryRecvError::Lagged(_)) => {
                                    hub.lagged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                    let _ = tx.try_send(control("lagged", &StreamReady { head: sent_through }));
                                    return;
                                }
                                Err(_) => None,
                            };
                        }
                    }
                    if out.is_empty() {
                        continue;
                    }
                    Bytes::from(out)
                }
                Err(RecvError::Lagged(_)) => {
                    hub.lagged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = tx.try_send(control("lagged", &StreamReady { head: cursor }));
                    return;
                }
                Err(RecvError::Closed) => return,
            },
            _ = beat.tick() => {
                if state.0.bans.contains(filter.player_id) {
                    return;
                }
                Bytes::from_static(b": ping\n\n")
            }
            _ = admission.ended.wait_for(|e| *e) => {
                let _ = tx.try_send(control("replaced", &StreamReady { head: cursor }));
                return;
            }
            _ = &mut deadline => return,
            _ = stop.wait_for(|s| *s) => return,
            _ = tx.closed() => return,
        };
        // A body the client does not read fills this channel: then the
        // subscriber is as slow as the socket, and `Lagged` cuts it off
        // once it can write again — or an end below, whichever is first;
        // a socket that takes nothing for `WRITE_STALL` is cut off too, so
        // a stalled reader holds its queued frames for seconds, not hours.
        tokio::select! {
            sent = tx.send(out) => if sent.is_err() { return },
            _ = tokio::time::sleep(WRITE_STALL) => {
                hub.lagged.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            _ = admission.ended.wait_for(|e| *e) => return,
            _ = &mut deadline => return,
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Sends the events in `(after, head]` the filter wants, from the table.
/// `Ok(false)`: the client went away.
async fn backfill(
    state: &AppState,
    filter: &Filter,
    after: i64,
    head: i64,
    tx: &tokio::sync::mpsc::Sender<Bytes>,
) -> Result<bool, sqlx::Error> {
    let mut from = after;
    while from < head {
        let frames = super::hub::read_frames(&state.0.db, from, head, BACKFILL_PAGE).await?;
        let Some(last) = frames.last().map(|f| f.seq) else {
            break;
        };
        for frame in frames {
            if filter.wants(&frame) && tx.send(frame.text).await.is_err() {
                return Ok(false);
            }
        }
        from = last;
    }
    Ok(true)
}
