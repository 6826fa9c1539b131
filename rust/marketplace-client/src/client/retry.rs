//! Attempts: one request retried until a definitive answer (mutations,
//! with the same idempotency key, forever: I4) or out of attempts (reads),
//! with backoff and jitter, logging in again on 401 — and the bearer token
//! a request goes with, bound to the market and player a journaled trade
//! belongs to.

use std::time::Duration;

use marketplace_protocol::{ErrorCode, Session};

use super::wire::exchange;
use super::{
    poisoned, shutting_down, ClientConfig, Command, Credentials, Envelope, Event, EventKind, Reply,
    RequestId, Shared,
};
use crate::error::ClientError;
use crate::state::Owner;

/// Runs attempts until a definitive answer. Once the client is stopping, no
/// new attempt starts and no wait continues; an exchange already on the wire
/// may finish within the shutdown grace period.
pub(super) async fn attempts(shared: &Shared, envelope: &Envelope) -> EventKind {
    let mut stopping = shared.stopping.subscribe();
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        if *stopping.borrow() {
            return EventKind::Failed(shutting_down());
        }
        let token = tokio::select! {
            token = bearer(shared, &envelope.command) => token,
            _ = stopping.wait_for(|s| *s) => return EventKind::Failed(shutting_down()),
        };
        let token = match token {
            Ok(Some((token, owner))) => {
                if let Some(expected) = &envelope.owner {
                    if owner.as_ref() != Some(expected) {
                        // Logged in elsewhere: this trade is not for here.
                        return EventKind::Failed(elsewhere(expected, owner.as_ref()));
                    }
                }
                Ok(Some(token))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        let result = match &token {
            Ok(token) => {
                tokio::select! {
                    _ = shared.bucket.acquire() => {}
                    _ = stopping.wait_for(|s| *s) => return EventKind::Failed(shutting_down()),
                }
                let permit = tokio::select! {
                    permit = shared.gate.acquire() => match permit {
                        Ok(p) => p,
                        Err(_) => return EventKind::Failed(shutting_down()),
                    },
                    _ = stopping.wait_for(|s| *s) => return EventKind::Failed(shutting_down()),
                };
                let sent_to = shared.settings().server_url;
                let result = exchange(shared, envelope, token.as_deref()).await;
                drop(permit);
                result.map(|reply| (reply, sent_to))
            }
            // No session yet and logging in failed: handled like any failure.
            Err(e) => Err(e.clone()),
        };
        let token = token.ok().flatten();
        let error = match result {
            Ok((reply, sent_to)) => {
                if let (Reply::LoggedIn(session), Command::Login(credentials)) =
                    (&reply, &envelope.command)
                {
                    remember_session(shared, session, credentials, &sent_to);
                }
                return EventKind::Done(reply);
            }
            Err(e) => e,
        };
        if error.code == ErrorCode::WrongServer {
            // The server at this address is not the trade's market (or the
            // token is another player's there): its token is of no use for
            // this trade; the session parks it until the game points back.
            if let Ok(mut s) = shared.session.lock() {
                if s.token.is_some() && s.token == token {
                    s.token = None;
                    s.owner = None;
                    s.epoch += 1;
                }
            }
            if let Some(expected) = &envelope.owner {
                return EventKind::Failed(elsewhere(expected, None));
            }
            return EventKind::Failed(error);
        }
        if error.code == ErrorCode::Unauthorized
            && !matches!(envelope.command, Command::Login { .. })
            && attempt < 50
        {
            // The token expired or the server's secret changed: log in again
            // with the remembered credentials, then retry at once.
            if relogin(shared, token.as_deref()).await.is_ok() {
                continue;
            }
        }
        if error.is_definitive() {
            return EventKind::Failed(error);
        }
        let config = shared.settings();
        if !envelope.command.is_mutation() && attempt >= config.read_attempts {
            return EventKind::Failed(error);
        }
        let delay = backoff(&config, attempt, error.retry_after);
        let _ = shared.events.send(Event {
            request_id: envelope.id,
            kind: EventKind::Retrying {
                attempt,
                error,
                delay,
            },
        });
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stopping.wait_for(|s| *s) => return EventKind::Failed(shutting_down()),
        }
    }
}

/// Exponential backoff with ±50 % jitter, capped; never shorter than the
/// server's `Retry-After`.
fn backoff(config: &ClientConfig, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = config
        .retry_base_delay
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let capped = exp.min(config.retry_max_delay);
    let jitter = 0.5 + rand::random::<f64>();
    let delay = capped.mul_f64(jitter).min(config.retry_max_delay);
    match retry_after {
        Some(r) => delay.max(r),
        None => delay,
    }
}

/// The token for the change stream: the current one, or a login with the
/// remembered credentials, or — with none — a wait for the game's login.
pub(super) async fn stream_token(shared: &Shared) -> Result<String, ClientError> {
    loop {
        let notified = shared.logged_in.notified();
        let has_credentials = {
            let session = shared.session.lock().map_err(|_| poisoned())?;
            if let Some(token) = &session.token {
                return Ok(token.clone());
            }
            session.credentials.is_some()
        };
        if has_credentials {
            relogin(shared, None).await?;
            continue;
        }
        notified.await;
    }
}

/// After the stream was refused its token: logs in again (once for every
/// concurrent caller), errors left to the next connection attempt.
pub(super) async fn relogin_for_stream(shared: &Shared) {
    let stale = shared.session.lock().ok().and_then(|s| s.token.clone());
    let _ = relogin(shared, stale.as_deref()).await;
}

/// The token for a request. Without one, a request logs in by itself with
/// the remembered credentials (a journaled operation re-sent after a restart
/// must not wait for the game to log in). With no credentials yet, a
/// mutation waits for a login and a read fails with `not_logged_in`.
async fn bearer(
    shared: &Shared,
    command: &Command,
) -> Result<Option<(String, Option<Owner>)>, ClientError> {
    if matches!(command, Command::Login { .. }) {
        return Ok(None);
    }
    loop {
        let notified = shared.logged_in.notified();
        let has_credentials = {
            let session = shared.session.lock().map_err(|_| poisoned())?;
            if let Some(token) = &session.token {
                return Ok(Some((token.clone(), session.owner.clone())));
            }
            session.credentials.is_some()
        };
        if has_credentials {
            // A failed login never settles the operation: whatever the server
            // said about logging in says nothing about this request.
            relogin(shared, None).await.map_err(|e| {
                if e.is_definitive() {
                    ClientError::new(
                        ErrorCode::Unauthorized,
                        format!("Cannot log in: {}", e.message),
                    )
                } else {
                    e
                }
            })?;
            continue;
        }
        if !command.is_mutation() {
            return Err(ClientError::new(
                ErrorCode::NotLoggedIn,
                "Log in to the marketplace first",
            ));
        }
        notified.await;
    }
}

/// Keeps a login's token — unless the game switched to another device while
/// it was on the way: then the token is of the wrong player and is dropped
/// (a trade sent with it would run under the wrong player's keys).
///
/// The same for a login sent to an address the game has left since
/// (`set_config` while it was on the way): its token and its market are
/// not the ones the game points at, and a trade bound to them would be
/// bound to the wrong market.
fn remember_session(shared: &Shared, session: &Session, credentials: &Credentials, sent_to: &str) {
    if let Ok(mut s) = shared.session.lock() {
        if s.credentials
            .as_ref()
            .is_some_and(|c| !c.same_player(credentials))
        {
            return;
        }
        if shared.settings().server_url != sent_to {
            return;
        }
        s.token = Some(session.token.clone());
        s.owner = Some(owner_of(session, sent_to));
        s.credentials = Some(credentials.clone());
        s.epoch += 1;
    }
    shared.logged_in.notify_waiters();
}

/// Who a login made us: the market's id (or, from a server too old to
/// announce one, its address) and the player.
pub fn owner_of(session: &Session, server_url: &str) -> Owner {
    if session.server_id.is_empty() {
        return Owner::by_address(server_url, session.player_id);
    }
    Owner {
        server_id: session.server_id.clone(),
        player_id: session.player_id,
    }
}

/// A trade of `expected` while the client is logged in as `current`.
fn elsewhere(expected: &Owner, current: Option<&Owner>) -> ClientError {
    let now = match current {
        Some(c) if c.server_id != expected.server_id => {
            format!("the game is connected to market {}", c.server_id)
        }
        Some(c) => format!("the game is logged in as player {}", c.player_id),
        None => "the server at this address is another market or player".to_string(),
    };
    ClientError::new(
        ErrorCode::WrongServer,
        format!("Waiting for {expected}: {now}; the trade goes when the game points back"),
    )
}

async fn relogin(shared: &Shared, stale: Option<&str>) -> Result<(), ClientError> {
    let credentials = {
        let s = shared.session.lock().map_err(|_| poisoned())?;
        if s.token.as_deref() != stale {
            return Ok(()); // someone else already logged in again
        }
        s.credentials.clone()
    };
    let Some(credentials) = credentials else {
        return Err(ClientError::new(
            ErrorCode::NotLoggedIn,
            "Log in to the marketplace first",
        ));
    };
    let login = Envelope {
        id: RequestId(0),
        command: Command::Login(credentials.clone()),
        key: None,
        owner: None,
    };
    shared.bucket.acquire().await;
    let sent_to = shared.settings().server_url;
    match exchange(shared, &login, None).await? {
        Reply::LoggedIn(session) => {
            remember_session(shared, &session, &credentials, &sent_to);
            Ok(())
        }
        _ => Err(ClientError::new(
            ErrorCode::BadResponse,
            "unexpected answer to login",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let config = ClientConfig::default();
        let d1 = backoff(&config, 1, None);
        assert!(d1 >= Duration::from_millis(100) && d1 <= Duration::from_millis(300));
        let d20 = backoff(&config, 20, None);
        assert!(d20 <= config.retry_max_delay);
        assert!(backoff(&config, 1, Some(Duration::from_secs(5))) >= Duration::from_secs(5));
    }
}
