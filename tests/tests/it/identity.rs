//! Player identity through the built binary, on both databases: the
//! `--identity-providers` file and `--device-logins` flags as an operator
//! writes them, a key set served over HTTP, token logins, linking, and
//! refusals by stable code.

use fake_identity_provider::{self as idp, JwksServer, Kind, SigningKey};
use marketplace_e2e::{postgres_url, sqlite_url, Api, ServerProcess};
use reqwest::Method;
use serde_json::json;

const ISSUER: &str = "https://accounts.game.test";

fn providers_file(dir: &tempfile::TempDir, jwks: &JwksServer) -> String {
    let path = dir.path().join("providers.json");
    let file = json!({"providers": [{
        "name": "game", "issuer": ISSUER, "audience": ["market"], "jwks_url": jwks.url,
    }]});
    std::fs::write(&path, file.to_string()).unwrap();
    path.display().to_string()
}

async fn identity(database: &str, dir: &tempfile::TempDir) {
    let key = SigningKey::generate(Kind::Rs256, "k1");
    let jwks = JwksServer::start(&[&key]).await;
    let providers = providers_file(dir, &jwks);
    let server = ServerProcess::start(database, &["--identity-providers", &providers]);
    let base = server.url();
    let api = Api::default();
    let token_login = |token: String| {
        let (api, base) = (api.clone(), base.clone());
        async move {
            api.send(
                &base,
                Method::POST,
                "/v1/sessions",
                None,
                None,
                Some(json!({"identity_token": token, "name": "pilot"})),
            )
            .await
            .unwrap()
        }
    };
    let claims = |sub: &str| idp::claims(ISSUER, "market", sub);

    // A device player links the game's account; a new device logs in by it.
    let (device_player, device_token) = api.login(&base, "bb-id-device").await;
    let r = api
        .send(
            &base,
            Method::POST,
            "/v1/me/identities",
            Some(&device_token),
            None,
            Some(json!({"identity_token": key.sign(&claims("acct-1"))})),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 200, "{}", r.text);
    let r = token_login(key.sign(&claims("acct-1"))).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.body["player_id"].as_i64(), Some(device_player));

    // Refusals come as identity_refused.
    for forged in [
        idp::unsigned(&claims("acct-1")),
        idp::hs256_with_public_key(&key, &claims("acct-1")),
        SigningKey::generate(Kind::EdDsa, "k1").sign(&claims("acct-1")),
        key.sign(&idp::claims(ISSUER, "another-game", "acct-1")),
    ] {
        let r = token_login(forged).await;
        assert_eq!(
            (r.status, r.code()),
            (401, "identity_refused"),
            "{}",
            r.text
        );
    }
    // A token of another player's identity cannot be linked.
    let (_, other) = api.login(&base, "bb-id-other").await;
    let r = api
        .send(
            &base,
            Method::POST,
            "/v1/me/identities",
            Some(&other),
            None,
            Some(json!({"identity_token": key.sign(&claims("acct-1"))})),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (409, "identity_linked"), "{}", r.text);
    drop(server);

    // Device logins off: only tokens get in.
    let server = ServerProcess::start(
        database,
        &[
            "--identity-providers",
            &providers,
            "--device-logins",
            "false",
        ],
    );
    let r = api
        .send(
            &server.url(),
            Method::POST,
            "/v1/sessions",
            None,
            None,
            Some(json!({"device_id": "bb-id-device", "name": "x"})),
        )
        .await
        .unwrap();
    assert_eq!((r.status, r.code()), (403, "forbidden"), "{}", r.text);
    let r = api
        .send(
            &server.url(),
            Method::POST,
            "/v1/sessions",
            None,
            None,
            Some(json!({"identity_token": key.sign(&claims("acct-1")), "name": "x"})),
        )
        .await
        .unwrap();
    assert_eq!(
        r.body["player_id"].as_i64(),
        Some(device_player),
        "{}",
        r.text
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_logs_players_in_by_identity_token_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    identity(&sqlite_url(&dir), &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_logs_players_in_by_identity_token_on_postgres() {
    let Some(url) = postgres_url("black-box identity").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    identity(&url, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_providers_file_stops_the_start_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("providers.json");
    for (file, says) in [
        ("{not json", "providers.json"),
        (
            r#"{"providers":[{"name":"g","issuer":"i","audience":["a"],"jwks_url":"https://x","algorithms":["HS256"]}]}"#,
            "no HMAC",
        ),
        (
            r#"{"providers":[{"name":"g","issuer":"i","audience":["a"],"hs256_secret_env":"MARKET_E2E_UNSET_SECRET"}]}"#,
            "MARKET_E2E_UNSET_SECRET is not set",
        ),
    ] {
        std::fs::write(&path, file).unwrap();
        let out = std::process::Command::new(marketplace_e2e::server_binary())
            .args(["--listen", "127.0.0.1:0", "--identity-providers"])
            .arg(&path)
            .args(["--database", &sqlite_url(&dir)])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let text = String::from_utf8_lossy(&out.stderr).to_string()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(says), "{file}: {text}");
    }
}
