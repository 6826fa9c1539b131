//! The change stream, client side: one task on the private runtime keeps a
//! `GET /v1/stream` connection open, parses its server-sent events and
//! hands them to the game's thread, which takes them when it polls.
//!
//! - **Resumes by sequence.** The task remembers the last `seq` it handed
//!   over and reconnects with `after=` it: the server sends what was
//!   missed, once, in order — or says `reload` when it no longer keeps it.
//! - **Backs off.** A failed connection is retried after 0.5 s, doubling
//!   to 30 s with jitter; a connection that went live resets the delay. A
//!   401 logs in again with the remembered credentials first.
//! - **Never blocks anyone.** The game's queue is bounded
//!   ([`NOTICE_QUEUE`]): a game that stops polling (paused, minimised)
//!   loses events, never memory, and is told to reload once it polls
//!   again. Nothing here touches holds or the journal: events are hints.
//! - **Distrusts the server.** An event larger than [`MAX_EVENT_BYTES`],
//!   or a silence longer than [`SILENCE`] (the server sends a comment every
//!   15 s), ends the connection; an event that does not parse is skipped
//!   (a newer server's kind) without losing the position.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use marketplace_protocol::{ErrorCode, StreamEvent, StreamReady, StreamReload};

use super::Shared;
use crate::error::ClientError;

/// Notices waiting for the game at most; beyond, events are dropped and
/// the game is told to reload.
pub const NOTICE_QUEUE: usize = 4096;

/// The largest event accepted.
pub const MAX_EVENT_BYTES: usize = 256 * 1024;

/// No byte for this long (three missed heartbeats): the connection is dead.
pub const SILENCE: Duration = Duration::from_secs(45);

const FIRST_DELAY: Duration = Duration::from_millis(500);
const MAX_DELAY: Duration = Duration::from_secs(30);

/// What the stream subscribes to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamOptions {
    /// Public changes of these items; empty: of every item.
    pub items: Vec<String>,
    /// False: only the player's own events (their listings, orders, fills,
    /// deliveries, notifications).
    pub own_only: bool,
}

/// What the stream tells the game, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamNotice {
    /// Connected and caught up: events from here on are live.
    Live { head: i64 },
    /// A change of the market (a hint: see [`marketplace_protocol::StreamEvent`]).
    Event(Box<StreamEvent>),
    /// Changes may have been missed (a fresh stream, one resumed too late,
    /// or a game that did not poll for long): read what is on screen again.
    Reload,
    /// The connection ended; the next try is in `retry_in`.
    Down {
        error: ClientError,
        retry_in: Duration,
    },
}

/// The running stream, if any, and its position.
#[derive(Default)]
pub(super) struct Slot {
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The notice queue's sending side, shared with the task. Each notice
/// carries the generation of the stream that sent it: a stream opened
/// afresh (another player or market) starts a new generation, and what
/// the old one still had queued, or sends while it is being stopped, is
/// never handed to the game as the new player's.
pub(super) struct Outlet {
    tx: mpsc::SyncSender<(u64, StreamNotice)>,
    /// Something was dropped: a `Reload` is owed before the next notice.
    dropped: AtomicBool,
    generation: AtomicU64,
}

impl Outlet {
    pub(super) fn new() -> (Outlet, mpsc::Receiver<(u64, StreamNotice)>) {
        let (tx, rx) = mpsc::sync_channel(NOTICE_QUEUE);
        (
            Outlet {
                tx,
                dropped: AtomicBool::new(false),
                generation: AtomicU64::new(0),
            },
            rx,
        )
    }

    /// The generation whose notices count.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn send(&self, generation: u64, notice: StreamNotice) {
        if self.dropped.load(Ordering::Acquire) {
            if self
                .tx
                .try_send((generation, StreamNotice::Reload))
                .is_err()
            {
                return;
            }
            self.dropped.store(false, Ordering::Release);
        }
        if self.tx.try_send((generation, notice)).is_err() {
            self.dropped.store(true, Ordering::Release);
        }
    }
}

/// Starts (or restarts) the stream with `options`. `resume` keeps the
/// position of the one before (same market and player); otherwise it starts
/// at the server's present, announced by a `Reload` once the server has
/// said where that is.
pub(super) fn open(shared: &Arc<Shared>, options: StreamOptions, resume: bool) {
    let Some(runtime) = shared.runtime.get() else {
        return;
    };
    let Ok(mut slot) = shared.stream.lock() else {
        return;
    };
    if let Some(task) = slot.task.take() {
        task.abort();
    }
    if !resume {
        shared.stream_seq.store(-1, Ordering::Release);
        shared.outlet.generation.fetch_add(1, Ordering::AcqRel);
    }
    let generation = shared.outlet.generation();
    let for_task = shared.clone();
    slot.task = Some(runtime.spawn(async move { run(for_task, options, generation).await }));
}

pub(super) fn close(slot: &Mutex<Slot>) {
    if let Ok(mut slot) = slot.lock() {
        if let Some(task) = slot.task.take() {
            task.abort();
        }
    }
}

/// How a connection ended without an error.
enum Ended {
    /// The server cut it (too slow, replaced, token lifetime): go again now.
    Resume,
}

async fn run(shared: Arc<Shared>, options: StreamOptions, generation: u64) {
    let mut stopping = shared.stopping.subscribe();
    let mut failures: u32 = 0;
    loop {
        // Replaced by a stream for another player (`abort` may find this
        // task mid-poll on another worker): it must not touch the
        // position the new one starts from.
        if *stopping.borrow() || shared.outlet.generation() != generation {
            return;
        }
        let result = tokio::select! {
            r = connect(&shared, &options, &mut failures, generation) => r,
            _ = stopping.wait_for(|s| *s) => return,
        };
        let error = match result {
            Ok(Ended::Resume) => continue,
            Err(e) => e,
        };
        failures += 1;
        let retry_in = delay(failures);
        shared.outlet.send(
            generation,
            StreamNotice::Down {
                error: error.clone(),
                retry_in,
            },
        );
        if error.code == ErrorCode::Unauthorized {
            super::retry::relogin_for_stream(&shared).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(retry_in) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}

/// 0.5 s doubling to 30 s, with ±50 % jitter.
fn delay(failures: u32) -> Duration {
    let exp = FIRST_DELAY.saturating_mul(1u32 << failures.saturating_sub(1).min(8));
    exp.min(MAX_DELAY)
        .mul_f64(0.5 + rand::random::<f64>())
        .min(MAX_DELAY)
}

/// One connection, until it ends.
async fn connect(
    shared: &Shared,
    options: &StreamOptions,
    failures: &mut u32,
    generation: u64,
) -> Result<Ended, ClientError> {
    let token = super::retry::stream_token(shared).await?;
    let config = shared.settings();
    let base = config.server_url.trim_end_matches('/');
    let mut query: Vec<(&str, String)> = Vec::new();
    let after = shared.stream_seq.load(Ordering::Acquire);
    if after >= 0 {
        query.push(("after", after.to_string()));
    }
    if !options.items.is_empty() {
        query.push(("items", options.items.join(",")));
    }
    if options.own_only {
        query.push(("market", "false".into()));
    }
    let request = shared
        .http
        .get(format!("{base}/v1/stream"))
        .query(&query)
        .bearer_auth(&token)
        .header(
            marketplace_protocol::PROTOCOL_HEADER,
            marketplace_protocol::PROTOCOL_VERSION,
        )
        .header(reqwest::header::ACCEPT, "text/event-stream");
    let mut response = match tokio::time::timeout(config.request_timeout, request.send()).await {
        Err(_) => {
            return Err(ClientError::new(
                ErrorCode::Timeout,
                "The marketplace's stream did not answer in time",
            ))
        }
        Ok(r) => r.map_err(super::wire::transport_error)?,
    };
    let status = response.status().as_u16();
    if status != 200 {
        let bytes = read_small(&mut response).await;
        return Err(super::wire::parse_failure(status, &bytes, None));
    }
    let mut parser = Parser::default();
    // A connection that ends before `ready` (a server that failed after
    // answering) or is `replaced` (another of the player's connections
    // took its place) counts as a failure: backed off, never a tight loop.
    let mut went_live = false;
    loop {
        let chunk = match tokio::time::timeout(SILENCE, response.chunk()).await {
            Err(_) => {
                return Err(ClientError::new(
                    ErrorCode::Timeout,
                    "The marketplace's stream went silent",
                ))
            }
            Ok(Err(e)) => return Err(super::wire::transport_error(e)),
            Ok(Ok(None)) if went_live => return Ok(Ended::Resume),
            Ok(Ok(None)) => {
                return Err(ClientError::new(
                    ErrorCode::Offline,
                    "The marketplace's stream ended before it was ready",
                ))
            }
            Ok(Ok(Some(bytes))) => bytes,
        };
        for frame in parser.push(&chunk)? {
            if shared.outlet.generation() != generation {
                return Err(ClientError::new(
                    ErrorCode::Offline,
                    "The stream was replaced",
                ));
            }
            match frame.event.as_str() {
                "market" => {
                    if let Some(seq) = frame.id {
                        // The position moves even past an event this client
                        // cannot read: it is never asked for twice.
                        shared.stream_seq.store(seq, Ordering::Release);
                    }
                    match serde_json::from_str::<StreamEvent>(&frame.data) {
                        Ok(event) => shared
                            .outlet
                            .send(generation, StreamNotice::Event(Box::new(event))),
                        Err(e) => {
                            tracing::debug!(error = %e, "skipped a stream event this client does not know")
                        }
                    }
                }
                "ready" => {
                    let head = serde_json::from_str::<StreamReady>(&frame.data)
                        .map(|r| r.head)
                        .unwrap_or(0);
                    if shared.stream_seq.load(Ordering::Acquire) < 0 {
                        // A fresh stream has a position only now: the game
                        // re-reads what it shows after this, so nothing
                        // between opening and here goes unnoticed (even
                        // when the first connections fail before `ready`).
                        shared.stream_seq.store(head, Ordering::Release);
                        shared.outlet.send(generation, StreamNotice::Reload);
                    } else {
                        // Everything up to the head was sent or filtered
                        // out: a client watching quiet items moves on too,
                        // and never falls behind what the server keeps.
                        shared.stream_seq.fetch_max(head, Ordering::AcqRel);
                    }
                    went_live = true;
                    *failures = 0;
                    shared.outlet.send(generation, StreamNotice::Live { head });
                }
                "reload" => {
                    let Ok(reload) = serde_json::from_str::<StreamReload>(&frame.data) else {
                        return Err(bad("a reload without a head"));
                    };
                    shared.stream_seq.store(reload.head, Ordering::Release);
                    shared.outlet.send(generation, StreamNotice::Reload);
                }
                "replaced" => {
                    return Err(ClientError::new(
                        ErrorCode::Offline,
                        "Another connection of this player took the marketplace's stream",
                    ))
                }
                // `lagged` and anything newer: the server ends the
                // connection after it; resume from the position.
                _ => {}
            }
        }
    }
}

async fn read_small(response: &mut reqwest::Response) -> Vec<u8> {
    let mut bytes = Vec::new();
    while let Ok(Ok(Some(chunk))) =
        tokio::time::timeout(Duration::from_secs(5), response.chunk()).await
    {
        if bytes.len() + chunk.len() > 64 * 1024 {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    bytes
}

fn bad(what: &str) -> ClientError {
    ClientError::new(
        ErrorCode::BadResponse,
        format!("The marketplace's stream makes no sense ({what})"),
    )
}

/// One server-sent event.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Frame {
    pub event: String,
    pub id: Option<i64>,
    pub data: String,
}

/// Server-sent events from bytes as they come (a frame may span chunks).
#[derive(Default)]
pub(crate) struct Parser {
    buf: Vec<u8>,
}

impl Parser {
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<Frame>, ClientError> {
        self.buf.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(end) = find_blank_line(&self.buf) {
            let raw: Vec<u8> = self.buf.drain(..end.1).collect();
            let text = String::from_utf8_lossy(&raw[..end.0]);
            let mut frame = Frame {
                event: "message".into(),
                ..Frame::default()
            };
            let mut fields = 0;
            for line in text.lines() {
                if line.starts_with(':') {
                    continue;
                }
                let (name, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                fields += 1;
                match name {
                    "event" => frame.event = value.to_string(),
                    "id" => frame.id = value.parse().ok(),
                    "data" => {
                        if !frame.data.is_empty() {
                            frame.data.push('\n');
                        }
                        frame.data.push_str(value);
                    }
                    _ => {}
                }
            }
            if fields > 0 {
                frames.push(frame);
            }
        }
        if self.buf.len() > MAX_EVENT_BYTES {
            return Err(bad("an event too large"));
        }
        Ok(frames)
    }
}

/// The end of the first frame: (where its text ends, where the next
/// starts). Accepts `\n\n` and `\r\n\r\n`.
fn find_blank_line(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_chunks_and_comments_are_skipped() {
        let mut p = Parser::default();
        assert!(p
            .push(b": ping\n\nid: 7\nevent: mar")
            .expect("ok")
            .is_empty());
        let frames = p
            .push(b"ket\ndata: {\"a\":1}\n\nevent: ready\r\ndata: {}\r\n\r\n")
            .expect("ok");
        assert_eq!(
            frames,
            vec![
                Frame {
                    event: "market".into(),
                    id: Some(7),
                    data: "{\"a\":1}".into()
                },
                Frame {
                    event: "ready".into(),
                    id: None,
                    data: "{}".into()
                }
            ]
        );
    }

    #[test]
    fn an_endless_event_is_refused() {
        let mut p = Parser::default();
        let big = vec![b'x'; MAX_EVENT_BYTES + 1];
        assert_eq!(
            p.push(&big).expect_err("too large").code,
            ErrorCode::BadResponse
        );
    }

    #[test]
    fn a_full_queue_drops_and_owes_a_reload() {
        let (outlet, rx) = Outlet::new();
        for _ in 0..NOTICE_QUEUE + 10 {
            outlet.send(0, StreamNotice::Live { head: 1 });
        }
        let drained: Vec<_> = rx.try_iter().collect();
        assert_eq!(drained.len(), NOTICE_QUEUE);
        outlet.send(0, StreamNotice::Live { head: 2 });
        assert_eq!(rx.try_recv().ok(), Some((0, StreamNotice::Reload)));
        assert_eq!(
            rx.try_recv().ok(),
            Some((0, StreamNotice::Live { head: 2 }))
        );
    }

    #[test]
    fn notices_carry_the_generation_of_the_stream_that_sent_them() {
        let (outlet, rx) = Outlet::new();
        let old = outlet.generation();
        outlet.send(old, StreamNotice::Live { head: 1 });
        // Opened afresh for another player: a new generation.
        outlet.generation.fetch_add(1, Ordering::AcqRel);
        let new = outlet.generation();
        outlet.send(new, StreamNotice::Live { head: 2 });
        let kept: Vec<StreamNotice> = rx
            .try_iter()
            .filter(|(g, _)| *g == outlet.generation())
            .map(|(_, n)| n)
            .collect();
        assert_eq!(kept, vec![StreamNotice::Live { head: 2 }]);
    }

    #[test]
    fn delays_grow_and_stay_capped() {
        assert!(delay(1) <= Duration::from_millis(750));
        assert!(delay(30) <= MAX_DELAY);
    }
}
