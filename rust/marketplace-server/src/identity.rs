//! Identity providers: players log in with the game's own accounts.
//!
//! A game that has accounts (Epic Online Services, Firebase, Auth0,
//! Keycloak, or its own backend vouching for a Steam ticket it checked)
//! hands the player's game an identity token — a JWT — and the game logs in
//! with it. The token's issuer names the provider; `(provider, subject)` is
//! one player for good, on any device (`identities` table, see
//! `players.rs`).
//!
//! What a token must pass, all fixed by the operator's configuration and
//! never by the token:
//! - its issuer is a configured provider;
//! - its `alg` is one that provider allows: a key-set provider allows only
//!   asymmetric algorithms (RS256, ES256, EdDSA, …), a shared-secret
//!   provider only HS256 — so neither `none` nor an HS256 token "signed"
//!   with a public key can pass;
//! - its signature verifies with the provider's key (by `kid`);
//! - `iss`, `aud`, `exp` (and `nbf` when present) check out, with a small
//!   configurable clock skew, and `sub` is present.
//!
//! Key sets come from a file or a URL, are cached, and are read again on
//! a key id they do not hold (key rotation without a restart) — at most
//! once per `jwks_min_refetch_secs` per provider, so a stream of tokens with
//! made-up key ids cannot turn the server into a client hammering the
//! provider. A fetch that hangs or answers garbage fails token logins of
//! that provider clearly (`unavailable`, or `identity_refused` for a key the
//! last good set did not hold) and nothing else: the fetch runs in the
//! login's own request, under a timeout, and one lock per provider makes
//! concurrent logins wait for one fetch rather than start many.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::AppError;

/// Longest identity token accepted (real ones are 1–2 KiB).
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// Longest subject kept (Steam ids are 17 digits, EOS ids 32 hex, UUIDs 36).
pub const MAX_SUBJECT_CHARS: usize = 255;
/// Largest key set read from a provider.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The `--identity-providers` file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvidersFile {
    pub providers: Vec<ProviderConfig>,
}

/// One provider, as the operator configures it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The name identities are kept under (`[a-z0-9_-]`, 1–32 chars). Never
    /// rename a provider in use: its players would be strangers.
    pub name: String,
    /// The tokens' `iss`, exactly.
    pub issuer: String,
    /// Accepted `aud` values (at least one: a token minted for another
    /// service of the same issuer must not log in here).
    pub audience: Vec<String>,
    /// Key set (JWKS) served at this URL…
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// …or kept in this file (read again on an unknown key id too).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Or a shared secret (HS256) in this environment variable, for a
    /// game's own backend; at least 32 bytes.
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// Algorithms allowed for a key-set provider (default RS256, ES256 and
    /// EdDSA); HMAC algorithms are refused here.
    #[serde(default)]
    pub algorithms: Option<Vec<String>>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 60, at
    /// most 300).
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// How long a key-set fetch may take (default 5,000 ms).
    #[serde(default = "default_timeout_ms")]
    pub jwks_timeout_ms: u64,
    /// The least time between two fetches of the key set (default 60 s): an
    /// unknown key id within it is refused without asking the provider.
    #[serde(default = "default_min_refetch")]
    pub jwks_min_refetch_secs: u64,
    /// How long a fetched key set is used before it is read again (default
    /// 3,600 s; a failed read keeps the old keys).
    #[serde(default = "default_max_age")]
    pub jwks_max_age_secs: u64,
}

fn default_leeway() -> u64 {
    60
}
fn default_timeout_ms() -> u64 {
    5_000
}
fn default_min_refetch() -> u64 {
    60
}
fn default_max_age() -> u64 {
    3_600
}

/// Who a token proved the caller to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub provider: String,
    pub subject: String,
}

/// Every configured provider.
#[derive(Debug, Default)]
pub struct Providers {
    by_issuer: HashMap<String, Provider>,
}

#[derive(Debug)]
struct Provider {
    name: String,
    issuer: String,
    audience: Vec<String>,
    algorithms: Vec<Algorithm>,
    leeway: u64,
    keys: KeySource,
}

enum KeySource {
    Secret(DecodingKey),
    Set(std::sync::Arc<KeySet>),
}

/// A provider's published keys, as last read.
struct KeySet {
    from: SetLocation,
    timeout: Duration,
    min_refetch: Duration,
    max_age: Duration,
    cache: std::sync::Mutex<KeyCache>,
    /// Told when a read finishes.
    done: tokio::sync::Notify,
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Secret(_) => f.write_str("Secret(..)"),
            KeySource::Set(set) => write!(f, "Set({:?})", set.from),
        }
    }
}

#[derive(Debug)]
enum SetLocation {
    Url(reqwest::Client, String),
    File(PathBuf),
}

#[derive(Default)]
struct KeyCache {
    keys: Vec<CachedKey>,
    /// When the keys above were read.
    fetched: Option<Instant>,
    /// When a read was last started, succeeded or not.
    tried: Option<Instant>,
    /// A read is under way.
    reading: bool,
}

struct CachedKey {
    kid: Option<String>,
    /// The JWK's own `alg`, when it names one: the key is used for no other.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
}

#[derive(Deserialize)]
struct Unverified {
    #[serde(default)]
    iss: Option<String>,
}

impl Providers {
    /// Reads the `--identity-providers` file and checks it (secrets from the
    /// environment, names, algorithms); a key-set file must exist now, a URL
    /// is first fetched at the first login.
    pub fn load(path: &std::path::Path) -> Result<Providers, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--identity-providers {}: {e}", path.display()))?;
        let file: ProvidersFile = serde_json::from_str(&text)
            .map_err(|e| format!("--identity-providers {}: {e}", path.display()))?;
        Providers::from_config(file, |var| std::env::var(var).ok())
    }

    /// The providers a parsed file describes; `env` reads secrets.
    pub fn from_config(
        file: ProvidersFile,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Providers, String> {
        let mut by_issuer = HashMap::new();
        let mut names = std::collections::HashSet::new();
        for p in file.providers {
            let named = |what: &str| format!("identity provider {:?}: {what}", p.name);
            let name_ok = (1..=32).contains(&p.name.len())
                && p.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-'
                });
            if !name_ok || p.name == "device" {
                return Err(named(
                    "the name is 1-32 of a-z, 0-9, _ and - (and not \"device\")",
                ));
            }
            if !names.insert(p.name.clone()) {
                return Err(named("named twice"));
            }
            if p.issuer.is_empty() || by_issuer.contains_key(&p.issuer) {
                return Err(named("its issuer is empty or another provider's"));
            }
            if p.audience.is_empty() || p.audience.iter().any(String::is_empty) {
                return Err(named("give at least one audience"));
            }
            if p.leeway_secs > 300 {
                return Err(named("leeway_secs is at most 300"));
            }
            if !(100..=10_000).contains(&p.jwks_timeout_ms)
                || p.jwks_min_refetch_secs < 1
                || p.jwks_max_age_secs < 60
            {
                return Err(named(
                    "jwks_timeout_ms is 100-10000, jwks_min_refetch_secs at least 1, jwks_max_age_secs at least 60",
                ));
            }
            let sources = [
                p.jwks_url.is_some(),
                p.jwks_file.is_some(),
                p.hs256_secret_env.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 {
                return Err(named(
                    "give exactly one of jwks_url, jwks_file and hs256_secret_env",
                ));
            }
            let (keys, algorithms) = if let Some(var) = &p.hs256_secret_env {
                if p.algorithms.as_ref().is_some_and(|a| a != &["HS256"]) {
                    return Err(named("a shared-secret provider uses HS256 only"));
                }
                let secret = env(var).ok_or_else(|| named(&format!("{var} is not set")))?;
                if secret.len() < 32 {
                    return Err(named(&format!("{var} must be at least 32 bytes")));
                }
                (
                    KeySource::Secret(DecodingKey::from_secret(secret.as_bytes())),
                    vec![Algorithm::HS256],
                )
            } else {
                let algorithms = match &p.algorithms {
                    None => vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA],
                    Some(list) => {
                        let mut out = Vec::new();
                        for a in list {
                            let alg: Algorithm = a
                                .parse()
                                .map_err(|_| named(&format!("unknown algorithm {a}")))?;
                            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
                            {
                                return Err(named(
                                    "a key-set provider allows no HMAC algorithm (use hs256_secret_env)",
                                ));
                            }
                            out.push(alg);
                        }
                        if out.is_empty() {
                            return Err(named("allow at least one algorithm"));
                        }
                        out
                    }
                };
                let from = match (&p.jwks_url, &p.jwks_file) {
                    (Some(url), _) => {
                        let parsed = reqwest::Url::parse(url)
                            .map_err(|e| named(&format!("jwks_url: {e}")))?;
                        let loopback =
                            matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
                        let secure =
                            parsed.scheme() == "https" || (parsed.scheme() == "http" && loopback);
                        if !secure || !parsed.username().is_empty() || parsed.password().is_some() {
                            return Err(named(
                                "jwks_url must be https:// (http:// only on loopback): keys read in clear could be swapped",
                            ));
                        }
                        let client = reqwest::Client::builder()
                            .timeout(Duration::from_millis(p.jwks_timeout_ms))
                            .redirect(reqwest::redirect::Policy::none())
                            .build()
                            .map_err(|e| named(&e.to_string()))?;
                        SetLocation::Url(client, url.clone())
                    }
                    (None, Some(path)) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|e| named(&format!("{}: {e}", path.display())))?;
                        parse_key_set(text.as_bytes()).map_err(|e| named(&e))?;
                        SetLocation::File(path.clone())
                    }
                    (None, None) => unreachable!("one source was checked above"),
                };
                (
                    KeySource::Set(std::sync::Arc::new(KeySet {
                        from,
                        timeout: Duration::from_millis(p.jwks_timeout_ms),
                        min_refetch: Duration::from_secs(p.jwks_min_refetch_secs),
                        max_age: Duration::from_secs(p.jwks_max_age_secs),
                        cache: std::sync::Mutex::new(KeyCache::default()),
                        done: tokio::sync::Notify::new(),
                    })),
                    algorithms,
                )
            };
            by_issuer.insert(
                p.issuer.clone(),
                Provider {
                    name: p.name,
                    issuer: p.issuer,
                    audience: p.audience,
                    algorithms,
                    leeway: p.leeway_secs,
                    keys,
                },
            );
        }
        Ok(Providers { by_issuer })
    }

    pub fn is_empty(&self) -> bool {
        self.by_issuer.is_empty()
    }

    /// The provider names, for the start-up log.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.by_issuer.values().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        names
    }

    /// Checks an identity token; the caller is who it names.
    pub async fn verify(&self, token: &str) -> Result<Identity, AppError> {
        let refused = |why: &'static str| AppError::IdentityRefused(why);
        if self.by_issuer.is_empty() {
            return Err(AppError::Forbidden(
                "This market takes no identity tokens (no --identity-providers)",
            ));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(refused("The identity token is too long"));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| refused("The identity token is not a signed JWT"))?;
        let provider = token
            .split('.')
            .nth(1)
            .and_then(|payload| URL_SAFE_NO_PAD.decode(payload).ok())
            .and_then(|json| serde_json::from_slice::<Unverified>(&json).ok())
            .and_then(|claims| claims.iss)
            .and_then(|iss| self.by_issuer.get(&iss))
            .ok_or(refused(
                "The identity token's issuer is not a provider of this market",
            ))?;
        if !provider.algorithms.contains(&header.alg) {
            return Err(refused(
                "The identity token's algorithm is not one its provider uses",
            ));
        }
        let key = provider.key(header.kid.as_deref(), header.alg).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&provider.issuer]);
        validation.set_audience(&provider.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = provider.leeway;
        let data = jsonwebtoken::decode::<Claims>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            refused(match e.kind() {
                ErrorKind::ExpiredSignature => "The identity token has expired",
                ErrorKind::ImmatureSignature => "The identity token is not valid yet",
                ErrorKind::InvalidAudience => "The identity token is for another audience",
                ErrorKind::InvalidIssuer => "The identity token's issuer is wrong",
                ErrorKind::InvalidSignature => "The identity token's signature is wrong",
                ErrorKind::MissingRequiredClaim(_) => "The identity token lacks a required claim",
                _ => "The identity token was refused",
            })
        })?;
        let subject = data.claims.sub;
        if subject.is_empty()
            || subject.chars().count() > MAX_SUBJECT_CHARS
            || subject.chars().any(char::is_control)
        {
            return Err(refused("The identity token's subject is empty or too long"));
        }
        Ok(Identity {
            provider: provider.name.clone(),
            subject,
        })
    }
}

impl Provider {
    /// The key a token names, reading the key set again when it does not
    /// hold it (at most once per `min_refetch`) or is older than `max_age`.
    ///
    /// The read runs in a task of its own and stores what it read whatever
    /// happens to the login that started it (a client that goes away
    /// mid-read neither loses the read nor buys another one); logins that
    /// arrive meanwhile wait for it.
    async fn key(&self, kid: Option<&str>, alg: Algorithm) -> Result<DecodingKey, AppError> {
        let set = match &self.keys {
            KeySource::Secret(key) => return Ok(key.clone()),
            KeySource::Set(set) => set,
        };
        let mut waited_for_a_read = false;
        let deadline = Instant::now() + set.timeout + Duration::from_secs(1);
        loop {
            let notified = set.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let start_read = {
                let mut cache = set.cache.lock().map_err(|_| AppError::Unavailable)?;
                let now = Instant::now();
                if !cache.reading {
                    let found = cache.find(kid, alg);
                    if found.is_none()
                        && kid
                            .is_some_and(|k| cache.keys.iter().any(|c| c.kid.as_deref() == Some(k)))
                    {
                        // The key is known, for another algorithm: no
                        // read can change that.
                        return Err(AppError::IdentityRefused(
                            "The identity token's algorithm is not its key's",
                        ));
                    }
                    let stale = cache.fetched.is_none_or(|at| now - at >= set.max_age);
                    let may_read = cache.tried.is_none_or(|at| now - at >= set.min_refetch);
                    match found {
                        Some(key) if !stale || !may_read => return Ok(key),
                        None if waited_for_a_read || !may_read => {
                            return Err(if cache.fetched.is_none() || !waited_for_a_read {
                                // Never read, or not read again yet for this
                                // key id (the provider may have just rotated
                                // to it): nothing final can be told; the
                                // client retries.
                                AppError::Unavailable
                            } else {
                                AppError::IdentityRefused(
                                    "The identity token's key is not one its provider publishes",
                                )
                            });
                        }
                        _ => {
                            cache.tried = Some(now);
                            cache.reading = true;
                            true
                        }
                    }
                } else {
                    false
                }
            };
            if start_read {
                let (set, name) = (set.clone(), self.name.clone());
                tokio::spawn(async move { set.read(&name).await });
            }
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return Err(AppError::Unavailable);
            }
            waited_for_a_read = true;
        }
    }
}

impl KeySet {
    /// Reads the key set and keeps it (or, failing, the last good keys).
    async fn read(&self, provider: &str) {
        let result = tokio::time::timeout(self.timeout, read_key_set(&self.from)).await;
        if let Ok(mut cache) = self.cache.lock() {
            match result {
                Ok(Ok(keys)) => {
                    cache.keys = keys;
                    cache.fetched = Some(Instant::now());
                }
                Ok(Err(e)) => {
                    tracing::warn!(provider, error = %e, "identity key set unreadable; the last good keys stay");
                }
                Err(_) => {
                    tracing::warn!(
                        provider,
                        "identity key set: no answer in time; the last good keys stay"
                    );
                }
            }
            cache.reading = false;
        }
        self.done.notify_waiters();
    }
}

impl KeyCache {
    fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
        let usable = |k: &&CachedKey| k.alg.is_none_or(|a| a == alg);
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .filter(usable)
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| k.key.clone()),
            // No key id: only a set with one usable key says which.
            None => {
                let mut usable = self.keys.iter().filter(usable);
                match (usable.next(), usable.next()) {
                    (Some(only), None) => Some(only.key.clone()),
                    _ => None,
                }
            }
        }
    }
}

async fn read_key_set(from: &SetLocation) -> Result<Vec<CachedKey>, String> {
    let bytes = match from {
        SetLocation::File(path) => tokio::fs::read(path)
            .await
            .map_err(|e| format!("{}: {e}", path.display()))?,
        SetLocation::Url(client, url) => {
            let mut response = client.get(url).send().await.map_err(|e| e.to_string())?;
            if !response.status().is_success() {
                return Err(format!("{url} answered {}", response.status()));
            }
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
                if body.len() + chunk.len() > MAX_JWKS_BYTES {
                    return Err(format!("{url}: the key set is over {MAX_JWKS_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            body
        }
    };
    parse_key_set(&bytes)
}

/// The signing keys of a JWKS document. Symmetric (`oct`) keys and keys
/// marked for encryption are left out: a published key set must never be
/// an HMAC secret.
fn parse_key_set(bytes: &[u8]) -> Result<Vec<CachedKey>, String> {
    #[derive(Deserialize)]
    struct Document {
        keys: Vec<serde_json::Value>,
    }
    let set: Document =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut keys = Vec::new();
    // One key at a time: a key of a kind this server does not use (ES512,
    // X25519) is skipped, not a reason to refuse the whole set.
    for jwk in set
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<jsonwebtoken::jwk::Jwk>(k).ok())
    {
        let jwk = &jwk;
        if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_))
            || jwk
                .common
                .public_key_use
                .as_ref()
                .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            continue;
        }
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        let alg = jwk
            .common
            .key_algorithm
            .and_then(|a| a.to_string().parse::<Algorithm>().ok());
        keys.push(CachedKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err("the key set holds no signing key this server can use".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hs_provider() -> ProvidersFile {
        serde_json::from_value(serde_json::json!({
            "providers": [{
                "name": "backend", "issuer": "https://backend.example",
                "audience": ["market"], "hs256_secret_env": "SECRET"
            }]
        }))
        .unwrap()
    }

    #[test]
    fn configuration_mistakes_are_told_at_start() {
        let secret = |_: &str| Some("s".repeat(32));
        assert!(Providers::from_config(hs_provider(), secret).is_ok());
        assert!(Providers::from_config(hs_provider(), |_| None)
            .unwrap_err()
            .contains("SECRET is not set"));
        assert!(
            Providers::from_config(hs_provider(), |_| Some("short".into()))
                .unwrap_err()
                .contains("at least 32 bytes")
        );
        let mut both = hs_provider();
        both.providers[0].jwks_url = Some("https://keys.example".into());
        assert!(Providers::from_config(both, secret)
            .unwrap_err()
            .contains("exactly one"));
        let mut hmac_set = hs_provider();
        hmac_set.providers[0].hs256_secret_env = None;
        hmac_set.providers[0].jwks_url = Some("https://keys.example".into());
        hmac_set.providers[0].algorithms = Some(vec!["HS256".into()]);
        assert!(Providers::from_config(hmac_set, secret)
            .unwrap_err()
            .contains("no HMAC"));
        let mut no_aud = hs_provider();
        no_aud.providers[0].audience.clear();
        assert!(Providers::from_config(no_aud, secret).is_err());
        let mut device = hs_provider();
        device.providers[0].name = "device".into();
        assert!(Providers::from_config(device, secret).is_err());
        let mut clear = hs_provider();
        clear.providers[0].hs256_secret_env = None;
        clear.providers[0].jwks_url = Some("http://keys.example/jwks.json".into());
        assert!(Providers::from_config(clear.clone(), secret)
            .unwrap_err()
            .contains("https"));
        clear.providers[0].jwks_url = Some("http://127.0.0.1:9/jwks.json".into());
        assert!(Providers::from_config(clear.clone(), secret).is_ok());
        clear.providers[0].jwks_min_refetch_secs = 0;
        assert!(Providers::from_config(clear, secret).is_err());
    }

    #[test]
    fn symmetric_keys_in_a_key_set_are_ignored() {
        let set = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"b"}]}"#;
        let keys = parse_key_set(set).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("b"));
        assert!(parse_key_set(b"<html>").is_err());
        // A key of a kind not used here is skipped, not fatal.
        let mixed = br#"{"keys":[{"kty":"EC","crv":"P-521","alg":"ES512","x":"AQ","y":"AQ","kid":"odd"},
            {"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"dh"},
            {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"b"}]}"#;
        let keys = parse_key_set(mixed).unwrap();
        assert!(keys.iter().any(|k| k.kid.as_deref() == Some("b")));
    }
}
