//! Player identity from the game's side: logging in with the game's own
//! accounts (an identity token), moving to a new device by token or by
//! recovery code, and what a refused or expired token does.

use std::time::Duration;

use fake_identity_provider as idp;
use marketplace_client::{ErrorCode, SessionEvent};
use marketplace_server::Config;

use crate::support::{list_items, Player, World};

const SECRET_VAR: &str = "MARKET_CLIENT_TEST_BACKEND_SECRET";
const SECRET: &str = "client-test-secret-client-test-secret-xx";
const ISSUER: &str = "https://backend.test";

/// A market that takes its game backend's HS256 tokens.
fn world(token_ttl_secs: u64) -> World {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| std::env::set_var(SECRET_VAR, SECRET));
    let dir = tempfile::tempdir().expect("temp dir");
    let providers = dir.path().join("providers.json");
    let file = serde_json::json!({"providers": [{
        "name": "backend", "issuer": ISSUER, "audience": ["market"],
        "hs256_secret_env": SECRET_VAR,
    }]});
    std::fs::write(&providers, file.to_string()).expect("write");
    let mut config = Config::for_tests(format!("sqlite://{}/market.sqlite", dir.path().display()));
    config.identity_providers = Some(providers);
    config.token_ttl_secs = token_ttl_secs;
    World::start_on(config, dir)
}

fn token(subject: &str) -> String {
    idp::hs256(SECRET.as_bytes(), &idp::claims(ISSUER, "market", subject))
}

/// Pumps until request `id` is answered; the answer `pick` finds (panics
/// on the request's failure).
fn answer<T>(
    p: &mut Player,
    id: marketplace_client::RequestId,
    pick: impl Fn(&SessionEvent) -> Option<T>,
) -> T {
    p.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(|e| match e {
            SessionEvent::RequestFailed { request_id, error } if *request_id == id => {
                panic!("request failed: {error}")
            }
            e => e.request_id() == Some(id) && pick(e).is_some(),
        })
    });
    p.find(|e| pick(e).filter(|_| e.request_id() == Some(id)))
}

fn logged_in_as(p: &mut Player, id: marketplace_client::RequestId) -> i64 {
    answer(p, id, |e| match e {
        SessionEvent::LoggedIn { player_id, .. } => Some(*player_id),
        _ => None,
    })
}

fn identities(
    p: &mut Player,
    id: marketplace_client::RequestId,
) -> marketplace_client::protocol::Identities {
    answer(p, id, |e| match e {
        SessionEvent::IdentitiesListed { identities, .. } => Some(identities.clone()),
        _ => None,
    })
}

fn failure(p: &mut Player, id: marketplace_client::RequestId) -> marketplace_client::ClientError {
    p.pump_until(Duration::from_secs(10), |e| {
        e.iter().any(
            |e| matches!(e, SessionEvent::RequestFailed { request_id, .. } if *request_id == id),
        )
    });
    p.find(|e| match e {
        SessionEvent::RequestFailed { request_id, error } if *request_id == id => {
            Some(error.clone())
        }
        _ => None,
    })
}

#[test]
fn a_player_links_their_account_and_a_new_device_takes_over_their_listing() {
    let world = world(3600);
    let mut old_pc = Player::in_memory(&world, "old-pc", 0);
    old_pc.login();
    let player = old_pc.find(|e| match e {
        SessionEvent::LoggedIn { player_id, .. } => Some(*player_id),
        _ => None,
    });
    let listing = list_items(&world, &mut old_pc, &[40])[0];
    let id = old_pc
        .session()
        .link_identity(&token("steam-7656"))
        .expect("sent");
    let linked = identities(&mut old_pc, id);
    assert!(linked.device);
    assert_eq!(linked.identities[0].subject, "steam-7656");

    // A new PC: a fresh save, the game's account.
    let mut new_pc = Player::in_memory(&world, "new-pc", 0);
    let id = new_pc
        .session
        .as_mut()
        .expect("session")
        .login_with_token(&mut new_pc.store, &token("steam-7656"), "Ann")
        .expect("sent");
    assert_eq!(logged_in_as(&mut new_pc, id), player);
    assert_eq!(new_pc.store.state().player_id, Some(player));
    // It cancels the old PC's listing and the item arrives in its save.
    new_pc.cancel(listing).expect("sent");
    new_pc.pump_until(Duration::from_secs(10), |e| {
        e.iter()
            .any(|e| matches!(e, SessionEvent::ListingCancelled { .. }))
    });
    new_pc.settle(Duration::from_secs(10));
    assert_eq!(new_pc.store.state().item_count("item-0"), 1);
    // The new PC never made a device player of its own.
    assert_eq!(world.count("SELECT COUNT(*) FROM players"), 1);
}

#[test]
fn a_recovery_code_moves_a_player_without_accounts() {
    let world = world(3600);
    let mut old_pc = Player::in_memory(&world, &format!("dev-{:032x}", 0xabcdef_u128), 0);
    old_pc.login();
    let player = old_pc.store.state().player_id.expect("logged in");
    let code = marketplace_client::recovery::recovery_code(&old_pc.store.state().device_id)
        .expect("the addon's device ids have a code");
    // Typed on the new device, sloppily.
    let typed = code.to_lowercase().replace('-', " ");
    let device = marketplace_client::recovery::device_id_of(&typed).expect("a code");
    let mut new_pc = Player::in_memory(&world, "dev-fresh", 0);
    let session = new_pc.session.as_mut().expect("session");
    session
        .set_identity(&mut new_pc.store, &device, "Ann")
        .expect("set");
    let id = session.login(&new_pc.store).expect("sent");
    assert_eq!(logged_in_as(&mut new_pc, id), player);
}

#[test]
fn a_refused_token_fails_the_login_once_and_changes_nothing() {
    let world = world(3600);
    let mut p = Player::in_memory(&world, "refused", 0);
    let forged = idp::hs256(
        b"not-the-backend-secret-not-the-backend",
        &idp::claims(ISSUER, "market", "x"),
    );
    let id = p
        .session
        .as_mut()
        .expect("session")
        .login_with_token(&mut p.store, &forged, "")
        .expect("sent");
    let error = failure(&mut p, id);
    assert_eq!(error.code, ErrorCode::IdentityRefused, "{error}");
    assert!(error.is_definitive());
    assert_eq!(world.count("SELECT COUNT(*) FROM players"), 0);
    assert!(
        !p.store.state().identity_login,
        "a refused token login leaves the save logging in by device"
    );
    // Nothing to send it with: reads say so rather than logging in by device.
    assert_eq!(p.store.state().player_id, None);
    let bad = p.session().link_identity("");
    assert_eq!(bad.expect_err("refused").code, ErrorCode::InvalidArgument);
}

#[test]
fn an_expired_session_logs_in_again_with_the_token_not_the_device() {
    // Sessions of 1 s: the next request finds its token expired.
    let world = world(1);
    let mut p = Player::in_memory(&world, "token-device", 0);
    let id = p
        .session
        .as_mut()
        .expect("session")
        .login_with_token(&mut p.store, &token("long-haul"), "Ann")
        .expect("sent");
    let player = logged_in_as(&mut p, id);
    std::thread::sleep(Duration::from_millis(2_100));
    let id = p.session().identities().expect("sent");
    let list = identities(&mut p, id);
    assert_eq!(list.identities[0].subject, "long-haul");
    assert!(!list.device);
    // A trade after expiry goes as the token's player too.
    p.store.add_item("ore", 1).expect("add");
    p.sell("ore", 1, 10).expect("sent");
    p.wait_listed();
    assert_eq!(world.count("SELECT COUNT(*) FROM players"), 1);
    assert_eq!(
        world.count(&format!(
            "SELECT COUNT(*) FROM listings WHERE seller_id = {player}"
        )),
        1
    );
}

#[test]
fn after_a_restart_a_token_player_waits_for_the_games_login_instead_of_logging_in_by_device() {
    let world = world(3600);
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("pilot.json");
    let mut p = Player::on_disk(world.client_config(), &path, "Ann");
    let id = p
        .session
        .as_mut()
        .expect("session")
        .login_with_token(&mut p.store, &token("restarting"), "Ann")
        .expect("sent");
    let player = logged_in_as(&mut p, id);
    p.store.add_item("ore", 1).expect("add");
    p.quit();

    // The game starts again and sells before it has logged in.
    let mut p = Player::on_disk(world.client_config(), &path, "Ann");
    assert!(
        p.store.state().identity_login,
        "the save remembers how it logged in"
    );
    p.sell("ore", 1, 10).expect("journaled");
    let until = std::time::Instant::now() + Duration::from_millis(1_500);
    while std::time::Instant::now() < until {
        p.frame();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        world.count("SELECT COUNT(*) FROM players"),
        1,
        "no device player was made behind the game's back"
    );
    assert_eq!(world.count("SELECT COUNT(*) FROM listings"), 0);
    // The game logs in with a fresh token: the trade goes, as that player.
    let id = p
        .session
        .as_mut()
        .expect("session")
        .login_with_token(&mut p.store, &token("restarting"), "Ann")
        .expect("sent");
    assert_eq!(logged_in_as(&mut p, id), player);
    p.wait_listed();
    assert_eq!(
        world.count(&format!(
            "SELECT COUNT(*) FROM listings WHERE seller_id = {player}"
        )),
        1
    );
    // A device login later clears the mark.
    p.login();
    assert!(!p.store.state().identity_login);
}

/// Game life: a CDN's HTML error page answers the token login (after or
/// instead of the server): not a refusal — the login is retried and the
/// player is logged in, the save still logging in by token.
#[test]
fn a_proxys_error_page_on_a_token_login_is_retried_not_taken_as_a_refusal() {
    let world = world(3600);
    world.proxy.fault(
        "/v1/sessions",
        crate::support::proxy::Fault::ProxyPage(502),
        2,
    );
    let mut p = Player::in_memory(&world, "behind-a-cdn", 0);
    let id = p
        .session
        .as_mut()
        .expect("session")
        .login_with_token(&mut p.store, &token("cdn-player"), "Ann")
        .expect("sent");
    let player = logged_in_as(&mut p, id);
    assert!(player > 0);
    assert!(p.store.state().identity_login);
    assert_eq!(
        world.count("SELECT COUNT(*) FROM players"),
        1,
        "one player, however often retried"
    );
}
