//! Player identity: logging in with identity tokens of the game's providers,
//! linking them to device players, and every way a token must be refused.
//! Keys are made here; the key set is served on loopback
//! (`fake-identity-provider`).

use std::time::{Duration, Instant};

use fake_identity_provider::{self as idp, JwksServer, Kind, Mode, SigningKey};
use marketplace_server::Config;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::support::{Player, Reply, TestDb, TestServer};

backend_tests!(
    tokens_of_every_kind_log_in_and_a_subject_is_one_player_for_good,
    forged_and_misaddressed_tokens_are_refused,
    clock_skew_is_allowed_within_the_leeway_only,
    key_rotation_is_picked_up_and_unknown_keys_are_refetched_at_a_limited_rate,
    a_key_set_that_hangs_or_answers_garbage_fails_token_logins_only,
    bans_follow_the_player_whatever_the_credential,
    a_linked_identity_brings_the_device_players_market_to_any_device,
    linking_refuses_what_is_anothers_and_needs_both_proofs,
    two_devices_racing_to_link_one_identity_end_with_one_owner,
    unlinking_never_orphans_an_account,
    an_operator_can_turn_device_logins_off,
    a_login_that_goes_away_mid_read_neither_loses_the_read_nor_buys_another,
    a_first_token_login_on_a_device_save_links_the_two,
    device_logins_off_still_let_a_device_player_move_to_an_account,
);

pub const ISSUER: &str = "https://eos.test";
pub const BACKEND_ISSUER: &str = "https://backend.test";
pub const FILE_ISSUER: &str = "https://files.test";
pub const AUDIENCE: &str = "market";
const SECRET_VAR: &str = "MARKET_TEST_BACKEND_SECRET";
pub const SECRET: &str = "backend-secret-backend-secret-backend-secret";

/// A market with three providers: `eos` (key set over HTTP, RS256, ES256
/// and EdDSA), `backend` (HS256 shared secret) and `files` (key set in a
/// file).
pub struct Market {
    pub t: TestServer,
    pub rs: SigningKey,
    pub es: SigningKey,
    pub ed: SigningKey,
    pub file_key: SigningKey,
    pub jwks: JwksServer,
    _dir: tempfile::TempDir,
}

pub async fn market(db: &TestDb, tweak: impl FnOnce(&mut Config, &mut Value)) -> Market {
    // Every test sets the same value: one write, no race that matters.
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| std::env::set_var(SECRET_VAR, SECRET));
    let rs = SigningKey::generate(Kind::Rs256, "rs-1");
    let es = SigningKey::generate(Kind::Es256, "es-1");
    let ed = SigningKey::generate(Kind::EdDsa, "ed-1");
    let file_key = SigningKey::generate(Kind::Es256, "file-1");
    let jwks = JwksServer::start(&[&rs, &es, &ed]).await;
    let dir = tempfile::tempdir().expect("dir");
    let key_file = dir.path().join("keys.json");
    std::fs::write(&key_file, idp::jwks(&[&file_key]).to_string()).expect("write");
    let mut providers = json!({"providers": [
        {"name": "eos", "issuer": ISSUER, "audience": [AUDIENCE], "jwks_url": jwks.url,
         "jwks_min_refetch_secs": 2, "jwks_timeout_ms": 500},
        {"name": "backend", "issuer": BACKEND_ISSUER, "audience": [AUDIENCE, "other-service"],
         "hs256_secret_env": SECRET_VAR},
        {"name": "files", "issuer": FILE_ISSUER, "audience": [AUDIENCE], "jwks_file": key_file},
    ]});
    let mut config = Config::for_tests(&db.url);
    tweak(&mut config, &mut providers);
    let path = dir.path().join("providers.json");
    std::fs::write(&path, providers.to_string()).expect("write");
    config.identity_providers = Some(path);
    Market {
        t: TestServer::start_with(config).await,
        rs,
        es,
        ed,
        file_key,
        jwks,
        _dir: dir,
    }
}

pub fn eos(subject: &str) -> Value {
    idp::claims(ISSUER, AUDIENCE, subject)
}

pub fn backend(subject: &str) -> String {
    idp::hs256(
        SECRET.as_bytes(),
        &idp::claims(BACKEND_ISSUER, AUDIENCE, subject),
    )
}

async fn token_login(t: &TestServer, token: &str) -> Reply {
    t.send(
        Method::POST,
        "/v1/sessions",
        None,
        None,
        Some(json!({"identity_token": token, "name": "pilot"}).to_string()),
    )
    .await
}

async fn logged_in(t: &TestServer, token: &str) -> Player {
    let r = token_login(t, token).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    Player {
        id: r.body["player_id"].as_i64().expect("player_id"),
        token: r.body["token"].as_str().expect("token").to_string(),
    }
}

fn refused(r: &Reply, what: &str) {
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "identity_refused"),
        "{what}: {}",
        r.text
    );
}

async fn link(t: &TestServer, who: Option<&Player>, token: &str) -> Reply {
    t.send(
        Method::POST,
        "/v1/me/identities",
        who.map(|p| p.token.as_str()),
        None,
        Some(json!({ "identity_token": token }).to_string()),
    )
    .await
}

async fn tokens_of_every_kind_log_in_and_a_subject_is_one_player_for_good(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    let by_rs = logged_in(&m.t, &m.rs.sign(&eos("epic-1"))).await;
    let by_es = logged_in(&m.t, &m.es.sign(&eos("epic-1"))).await;
    let by_ed = logged_in(&m.t, &m.ed.sign(&eos("epic-1"))).await;
    assert_eq!(
        (by_rs.id, by_rs.id),
        (by_es.id, by_ed.id),
        "one subject, one player"
    );
    // The session works like a device's.
    let r = m.t.get(&by_rs, "/v1/me/account").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The same subject at another provider is someone else.
    let by_backend = logged_in(&m.t, &backend("epic-1")).await;
    assert_ne!(by_backend.id, by_rs.id);
    let by_file = logged_in(
        &m.t,
        &m.file_key
            .sign(&idp::claims(FILE_ISSUER, AUDIENCE, "epic-1")),
    )
    .await;
    assert!(![by_rs.id, by_backend.id].contains(&by_file.id));
    // Any accepted audience works.
    let other_aud = idp::hs256(
        SECRET.as_bytes(),
        &idp::claims(BACKEND_ISSUER, "other-service", "epic-1"),
    );
    assert_eq!(logged_in(&m.t, &other_aud).await.id, by_backend.id);
    // A token-made player has no device, and says which identity it is.
    let r = m.t.get(&by_rs, "/v1/me/identities").await;
    assert_eq!(r.body["device"], json!(false), "{}", r.text);
    assert_eq!(r.body["identities"][0]["provider"], "eos");
    assert_eq!(r.body["identities"][0]["subject"], "epic-1");
    // A device login beside it makes its own player, as always.
    assert!(![by_rs.id, by_backend.id].contains(&m.t.login("dev-1").await.id));
    // Neither credential: refused.
    let neither =
        m.t.send(
            Method::POST,
            "/v1/sessions",
            None,
            None,
            Some(json!({"name": "p"}).to_string()),
        )
        .await;
    assert_eq!(
        (neither.status, neither.code()),
        (StatusCode::BAD_REQUEST, "invalid_request")
    );
}

async fn with_device(t: &TestServer, device: &str, token: &str) -> Reply {
    t.send(
        Method::POST,
        "/v1/sessions",
        None,
        None,
        Some(json!({"device_id": device, "identity_token": token, "name": "p"}).to_string()),
    )
    .await
}

async fn a_first_token_login_on_a_device_save_links_the_two(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    // A save that played by device, then the game added accounts.
    let old = m.t.login("dev-before-accounts").await;
    let listing = m.t.create_listing(&old, "ore", 5).await;
    let r = with_device(&m.t, "dev-before-accounts", &backend("acct-9")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(
        r.body["player_id"].as_i64(),
        Some(old.id),
        "the account is linked to the save's player"
    );
    // Any device with the account is that player now.
    let elsewhere = logged_in(&m.t, &backend("acct-9")).await;
    assert_eq!(elsewhere.id, old.id);
    assert_eq!(m.t.cancel(&elsewhere, listing).await.status, StatusCode::OK);
    // An account that already has a player logs in as it, whatever device
    // comes along (the device's own player is left as it is).
    let other = m.t.login("dev-other-save").await;
    let r = with_device(&m.t, "dev-other-save", &backend("acct-9")).await;
    assert_eq!(r.body["player_id"].as_i64(), Some(old.id), "{}", r.text);
    assert_eq!(m.t.login("dev-other-save").await.id, other.id);
    // A device whose player has an account already is not linked to a
    // second one (of any provider): the new account gets a player of its own.
    let r = with_device(&m.t, "dev-before-accounts", &backend("acct-10")).await;
    let second = r.body["player_id"].as_i64().expect("logged in");
    assert_ne!(second, old.id, "{}", r.text);
    let r = with_device(&m.t, "dev-before-accounts", &m.es.sign(&eos("epic-9"))).await;
    assert_ne!(
        r.body["player_id"].as_i64(),
        Some(old.id),
        "nor to another provider's: {}",
        r.text
    );
    // A device id nobody has: a new token player, no device player made.
    let before = crate::support::count(&db, "players").await;
    let r = with_device(&m.t, "dev-never-seen", &backend("acct-11")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(crate::support::count(&db, "players").await, before + 1);
    let r =
        m.t.get(
            &Player {
                id: 0,
                token: r.body["token"].as_str().unwrap().into(),
            },
            "/v1/me/identities",
        )
        .await;
    assert_eq!(r.body["device"], json!(false), "{}", r.text);
    // A banned device player's account is not linked (nor logged in).
    let banned = m.t.login("dev-banned-save").await;
    m.t.send(
        Method::POST,
        &format!("/admin/v1/players/{}/ban", banned.id),
        Some(crate::books::ADMIN),
        None,
        None,
    )
    .await;
    let r = with_device(&m.t, "dev-banned-save", &backend("acct-12")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    // With device logins off the old save can still move to its account
    // (the device proves the player; no device player is made).
    drop(m);
}

async fn device_logins_off_still_let_a_device_player_move_to_an_account(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    let old = m.t.login("dev-moving").await;
    drop(m);
    let m = market(&db, |config, _| config.device_logins = false).await;
    let r = with_device(&m.t, "dev-moving", &backend("acct-moving")).await;
    assert_eq!(r.body["player_id"].as_i64(), Some(old.id), "{}", r.text);
    let r = with_device(&m.t, "dev-unknown", &backend("acct-unknown")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_ne!(r.body["player_id"].as_i64(), Some(old.id));
}

async fn forged_and_misaddressed_tokens_are_refused(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    // Known good first (so the key set is cached and refusals are the
    // token's fault, not the fetch's).
    logged_in(&m.t, &m.rs.sign(&eos("good"))).await;
    let impostor = SigningKey::generate(Kind::Es256, "es-1");
    refused(
        &token_login(&m.t, &impostor.sign(&eos("good"))).await,
        "wrong signature",
    );
    // A signature cut and pasted from another token.
    let a = m.es.sign(&eos("alice"));
    let b = m.es.sign(&eos("mallory"));
    let spliced = format!(
        "{}.{}",
        b.rsplit_once('.').unwrap().0,
        a.rsplit_once('.').unwrap().1
    );
    refused(&token_login(&m.t, &spliced).await, "spliced signature");
    refused(
        &token_login(&m.t, &idp::unsigned(&eos("good"))).await,
        "alg none",
    );
    refused(
        &token_login(&m.t, &idp::hs256_with_public_key(&m.rs, &eos("good"))).await,
        "HS256 with the RSA public key",
    );
    refused(
        &token_login(&m.t, &idp::hs256_with_public_key(&m.ed, &eos("good"))).await,
        "HS256 with the Ed25519 public key",
    );
    // An HS256 token for the key-set provider, signed with the backend's
    // real secret: the algorithm belongs to the provider, not to the token.
    refused(
        &token_login(&m.t, &idp::hs256(SECRET.as_bytes(), &eos("good"))).await,
        "HS256 at a key-set provider",
    );
    // And an RS256 token for the shared-secret provider.
    refused(
        &token_login(
            &m.t,
            &m.rs.sign(&idp::claims(BACKEND_ISSUER, AUDIENCE, "x")),
        )
        .await,
        "RS256 at the shared-secret provider",
    );
    refused(
        &token_login(
            &m.t,
            &idp::hs256(
                b"not-the-secret-not-the-secret-not",
                &idp::claims(BACKEND_ISSUER, AUDIENCE, "x"),
            ),
        )
        .await,
        "wrong secret",
    );
    refused(
        &token_login(
            &m.t,
            &m.rs.sign(&idp::claims("https://evil.test", AUDIENCE, "x")),
        )
        .await,
        "unknown issuer",
    );
    // The issuer of another provider, signed with this one's key.
    refused(
        &token_login(
            &m.t,
            &m.rs.sign(&idp::claims(BACKEND_ISSUER, AUDIENCE, "x")),
        )
        .await,
        "another provider's issuer",
    );
    refused(
        &token_login(&m.t, &m.rs.sign(&idp::claims(ISSUER, "another-game", "x"))).await,
        "wrong audience",
    );
    let mut no_sub = eos("x");
    no_sub.as_object_mut().unwrap().remove("sub");
    refused(&token_login(&m.t, &m.rs.sign(&no_sub)).await, "no subject");
    let mut no_exp = eos("x");
    no_exp.as_object_mut().unwrap().remove("exp");
    refused(&token_login(&m.t, &m.rs.sign(&no_exp)).await, "no expiry");
    refused(
        &token_login(&m.t, &m.rs.sign(&eos(""))).await,
        "empty subject",
    );
    for junk in [
        "",
        "x",
        "a.b.c",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
        &"A".repeat(20_000),
    ] {
        let r = token_login(&m.t, junk).await;
        assert!(
            r.code() == "identity_refused" || r.code() == "payload_too_large",
            "{junk:.20}: {}",
            r.text
        );
    }
    // None of it made a player.
    assert_eq!(crate::support::count(&db, "identities").await, 1);
}

async fn clock_skew_is_allowed_within_the_leeway_only(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    let now = idp::now();
    let at = |exp: i64, nbf: Option<i64>| {
        let mut c = eos("skewed");
        c["exp"] = json!(exp);
        if let Some(nbf) = nbf {
            c["nbf"] = json!(nbf);
        }
        m.rs.sign(&c)
    };
    // Leeway 60 s (the default).
    logged_in(&m.t, &at(now - 20, None)).await;
    refused(&token_login(&m.t, &at(now - 120, None)).await, "expired");
    logged_in(&m.t, &at(now + 600, Some(now + 20))).await;
    refused(
        &token_login(&m.t, &at(now + 600, Some(now + 600))).await,
        "not yet valid",
    );
}

async fn key_rotation_is_picked_up_and_unknown_keys_are_refetched_at_a_limited_rate(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    logged_in(&m.t, &m.rs.sign(&eos("rotating"))).await;
    assert_eq!(m.jwks.hits(), 1, "fetched at the first login, then cached");
    logged_in(&m.t, &m.es.sign(&eos("rotating"))).await;
    assert_eq!(m.jwks.hits(), 1);
    // The provider rotates: a new key replaces the RSA one.
    let next = SigningKey::generate(Kind::EdDsa, "ed-2");
    m.jwks.publish(&[&m.es, &next]);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let p = logged_in(&m.t, &next.sign(&eos("rotating"))).await;
    assert_eq!(m.jwks.hits(), 2, "an unknown key id reads the set again");
    // Made-up key ids within the minimum interval: no fetch, and no final
    // answer either (it could be a key the provider just rotated to).
    let stranger = SigningKey::generate(Kind::EdDsa, "made-up");
    for i in 0..20 {
        let t = stranger.sign_as(&eos("rotating"), Some(&format!("made-up-{i}")));
        let r = token_login(&m.t, &t).await;
        assert_eq!(
            (r.status, r.code()),
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            "{}",
            r.text
        );
    }
    assert_eq!(m.jwks.hits(), 2, "no fetch within the minimum interval");
    // Once it passed: one more read, and a key the set does not hold is
    // refused for good — the retired key too.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    refused(
        &token_login(&m.t, &stranger.sign(&eos("rotating"))).await,
        "unknown key id",
    );
    assert_eq!(m.jwks.hits(), 3, "one more fetch once the interval passed");
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    refused(
        &token_login(&m.t, &m.rs.sign(&eos("rotating"))).await,
        "retired key",
    );
    assert_eq!(logged_in(&m.t, &next.sign(&eos("rotating"))).await.id, p.id);
}

async fn a_key_set_that_hangs_or_answers_garbage_fails_token_logins_only(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    m.jwks.set_mode(Mode::Hang);
    let device = m.t.login("steady").await;
    // A token login waits for the key set at most its timeout (500 ms) and
    // says so; a device login and a read meanwhile are not held up.
    let started = Instant::now();
    let hung = m.rs.sign(&eos("hung"));
    let (token, (other, read)) = tokio::join!(token_login(&m.t, &hung), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let t0 = Instant::now();
        let other = m.t.login("steady-2").await;
        let read = m.t.get(&device, "/v1/listings").await;
        (other, (read, t0.elapsed()))
    });
    assert_eq!(
        (token.status, token.code()),
        (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        "{}",
        token.text
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(other.id > 0);
    assert_eq!(read.0.status, StatusCode::OK);
    assert!(
        read.1 < Duration::from_millis(400),
        "others are served while the key set hangs: {:?}",
        read.1
    );
    // A shared-secret provider needs no key set at all.
    logged_in(&m.t, &backend("independent")).await;
    // Garbage instead of a key set: still unavailable (nothing good read).
    m.jwks.set_mode(Mode::Garbage);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let r = token_login(&m.t, &m.rs.sign(&eos("hung"))).await;
    assert_eq!(r.code(), "unavailable", "{}", r.text);
    // Once a good set was read, garbage later keeps the good keys.
    m.jwks.set_mode(Mode::Serve);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let p = logged_in(&m.t, &m.rs.sign(&eos("hung"))).await;
    m.jwks.set_mode(Mode::Garbage);
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let unknown = SigningKey::generate(Kind::EdDsa, "new-key");
    refused(
        &token_login(&m.t, &unknown.sign(&eos("hung"))).await,
        "garbage has no new key",
    );
    assert_eq!(logged_in(&m.t, &m.rs.sign(&eos("hung"))).await.id, p.id);
}

async fn bans_follow_the_player_whatever_the_credential(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    let device = m.t.login("banned-device").await;
    let r = link(&m.t, Some(&device), &backend("banned-sub")).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r =
        m.t.send(
            Method::POST,
            &format!("/admin/v1/players/{}/ban", device.id),
            Some(crate::books::ADMIN),
            None,
            None,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let r = token_login(&m.t, &backend("banned-sub")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    // A player banned after a token login cannot log in by token either.
    let p = logged_in(&m.t, &m.rs.sign(&eos("later-banned"))).await;
    m.t.send(
        Method::POST,
        &format!("/admin/v1/players/{}/ban", p.id),
        Some(crate::books::ADMIN),
        None,
        None,
    )
    .await;
    let r = token_login(&m.t, &m.rs.sign(&eos("later-banned"))).await;
    assert_eq!(r.code(), "unauthorized", "{}", r.text);
    assert_eq!(
        m.t.get(&p, "/v1/me/account").await.status,
        StatusCode::UNAUTHORIZED
    );
}

async fn a_linked_identity_brings_the_device_players_market_to_any_device(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    let old_pc = m.t.login("old-pc").await;
    let listing = m.t.create_listing(&old_pc, "ore", 5).await;
    let r = link(&m.t, Some(&old_pc), &m.ed.sign(&eos("epic-mover"))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["device"], json!(true));
    assert_eq!(r.body["identities"][0]["subject"], "epic-mover");
    // Linking again is a no-op, not an error.
    let again = link(&m.t, Some(&old_pc), &m.rs.sign(&eos("epic-mover"))).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    // A new PC logs in with the identity: the same player, its listing and all.
    let new_pc = logged_in(&m.t, &m.rs.sign(&eos("epic-mover"))).await;
    assert_eq!(new_pc.id, old_pc.id);
    let r = m.t.cancel(&new_pc, listing).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "the new device cancels the old one's listing: {}",
        r.text
    );
    // The old device still logs in as the same player.
    assert_eq!(m.t.login("old-pc").await.id, old_pc.id);
    // The books hold (I1, I2's server share, I6) with the identity linked.
    crate::support::check_books(&db).await;
}

async fn linking_refuses_what_is_anothers_and_needs_both_proofs(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    let alice = m.t.login("alice-device").await;
    let mallory = m.t.login("mallory-device").await;
    assert_eq!(
        link(&m.t, Some(&alice), &backend("alice")).await.status,
        StatusCode::OK
    );
    // Mallory holds a token of Alice's identity (stolen or replayed): it
    // cannot be moved to Mallory's account.
    let r = link(&m.t, Some(&mallory), &backend("alice")).await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::CONFLICT, "identity_linked"),
        "{}",
        r.text
    );
    // An identity whose player a token login made is another player's too.
    logged_in(&m.t, &m.es.sign(&eos("made-by-token"))).await;
    let r = link(&m.t, Some(&mallory), &m.es.sign(&eos("made-by-token"))).await;
    assert_eq!(r.code(), "identity_linked", "{}", r.text);
    // No session: nothing proves the device.
    let r = link(&m.t, None, &backend("fresh")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{}", r.text);
    let forged = Player {
        id: alice.id,
        token: format!("{}x", alice.token),
    };
    assert_eq!(
        link(&m.t, Some(&forged), &backend("fresh")).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A session but a bad token: nothing proves the identity.
    refused(
        &link(&m.t, Some(&mallory), &idp::unsigned(&eos("fresh"))).await,
        "unsigned",
    );
    // One identity per provider per player.
    let r = link(&m.t, Some(&alice), &backend("alice-second")).await;
    assert_eq!(r.code(), "identity_linked", "{}", r.text);
    // Nothing of it moved Alice's identity.
    assert_eq!(logged_in(&m.t, &backend("alice")).await.id, alice.id);
    let r = m.t.get(&mallory, "/v1/me/identities").await;
    assert_eq!(r.body["identities"], json!([]), "{}", r.text);
}

async fn two_devices_racing_to_link_one_identity_end_with_one_owner(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    for round in 0..5 {
        let subject = format!("contested-{round}");
        let a = m.t.login(&format!("race-a-{round}")).await;
        let b = m.t.login(&format!("race-b-{round}")).await;
        let token = backend(&subject);
        let (ra, rb, rc) = tokio::join!(
            link(&m.t, Some(&a), &token),
            link(&m.t, Some(&b), &token),
            token_login(&m.t, &token),
        );
        let winners: Vec<i64> = [(&ra, a.id), (&rb, b.id)]
            .iter()
            .filter(|(r, _)| r.status == StatusCode::OK)
            .map(|(_, id)| *id)
            .collect();
        for r in [&ra, &rb] {
            assert!(
                r.status == StatusCode::OK || r.code() == "identity_linked",
                "{}",
                r.text
            );
        }
        // The token login may have come first and made the player itself.
        assert_eq!(rc.status, StatusCode::OK, "{}", rc.text);
        let owner = rc.body["player_id"].as_i64().unwrap();
        assert!(winners.len() <= 1, "round {round}: two owners");
        if let [winner] = winners[..] {
            assert_eq!(owner, winner, "round {round}");
        }
        assert_eq!(logged_in(&m.t, &backend(&subject)).await.id, owner);
    }
}

async fn unlinking_never_orphans_an_account(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    // A token-made player's only way in cannot be unlinked…
    let p = logged_in(&m.t, &backend("only-way")).await;
    let r = unlink(&m.t, &p, "backend").await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{}",
        r.text
    );
    // …until another is linked.
    assert_eq!(
        link(&m.t, Some(&p), &m.rs.sign(&eos("only-way")))
            .await
            .status,
        StatusCode::OK
    );
    let r = unlink(&m.t, &p, "backend").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["identities"].as_array().map(Vec::len), Some(1));
    let r = unlink(&m.t, &p, "eos").await;
    assert_eq!(r.code(), "forbidden", "the last one stays: {}", r.text);
    assert_eq!(logged_in(&m.t, &m.rs.sign(&eos("only-way"))).await.id, p.id);
    // The unlinked identity is free: its next login is a new player.
    assert_ne!(logged_in(&m.t, &backend("only-way")).await.id, p.id);
    // A device player may unlink: its device still logs it in.
    let d = m.t.login("unlinker").await;
    link(&m.t, Some(&d), &backend("unlinker")).await;
    assert_eq!(unlink(&m.t, &d, "backend").await.status, StatusCode::OK);
    assert_eq!(unlink(&m.t, &d, "backend").await.code(), "not_found");
    assert_eq!(m.t.login("unlinker").await.id, d.id);
}

async fn a_login_that_goes_away_mid_read_neither_loses_the_read_nor_buys_another(db: TestDb) {
    let m = market(&db, |_, _| {}).await;
    m.jwks.set_mode(Mode::Slow);
    // A client that gives up after 50 ms, while the key set takes 300.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let gone = impatient
        .post(format!("{}/v1/sessions", m.t.base))
        .header("content-type", "application/json")
        .body(json!({"identity_token": m.rs.sign(&eos("patient")), "name": "p"}).to_string())
        .send()
        .await;
    assert!(gone.is_err(), "the client went away");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(m.jwks.hits(), 1);
    // The read finished and was kept: the next login needs no other.
    logged_in(&m.t, &m.rs.sign(&eos("patient"))).await;
    assert_eq!(m.jwks.hits(), 1, "no second read");
}

async fn unlink(t: &TestServer, who: &Player, provider: &str) -> Reply {
    t.send(
        Method::DELETE,
        &format!("/v1/me/identities/{provider}"),
        Some(&who.token),
        None,
        None,
    )
    .await
}

async fn an_operator_can_turn_device_logins_off(db: TestDb) {
    let m = market(&db, |config, _| config.device_logins = false).await;
    let r =
        m.t.send(
            Method::POST,
            "/v1/sessions",
            None,
            None,
            Some(json!({"device_id": "dev-x", "name": "x"}).to_string()),
        )
        .await;
    assert_eq!(
        (r.status, r.code()),
        (StatusCode::FORBIDDEN, "forbidden"),
        "{}",
        r.text
    );
    logged_in(&m.t, &backend("token-only")).await;
    // And a market with no providers takes no tokens.
    let plain = TestServer::start(&db).await;
    let r = token_login(&plain, &backend("token-only")).await;
    assert_eq!(r.code(), "forbidden", "{}", r.text);
}
