//! A stand-in for a game's identity provider, for tests and benchmarks:
//! what Epic Online Services, Firebase or a game's own backend do when
//! they hand a player an identity token.
//!
//! - [`SigningKey`]: a fresh key (RS256, ES256, EdDSA) with its public JWK;
//!   [`SigningKey::sign`] makes a token with any claims.
//! - [`hs256`]: a token signed with a shared secret; [`unsigned`]: one with
//!   `alg: none`; [`hs256_with_public_key`]: the classic confusion attack.
//! - [`JwksServer`]: serves a key set on `127.0.0.1:0`, counts its hits, and
//!   can be told to hang or to answer garbage.
//!
//! Keys are generated here, never committed; nothing leaves loopback.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::KeyPair;
use serde_json::{json, Value};

/// Which kind of key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Rs256,
    Es256,
    EdDsa,
}

/// A private key and its public half as a JWK.
#[derive(Clone)]
pub struct SigningKey {
    pub kind: Kind,
    pub kid: String,
    encoding: EncodingKey,
    jwk: Value,
    /// The public key's bytes (for the confusion attack).
    pub public_bytes: Vec<u8>,
}

impl SigningKey {
    /// A new key. RSA keys are slow to make, so one RSA key pair per
    /// process is made and reused under each `kid` asked for.
    pub fn generate(kind: Kind, kid: &str) -> SigningKey {
        match kind {
            Kind::Rs256 => {
                let (der, n, e) = rsa_pair();
                SigningKey {
                    kind,
                    kid: kid.into(),
                    encoding: EncodingKey::from_rsa_der(der),
                    jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                                "n": b64(n), "e": b64(e)}),
                    public_bytes: n.to_vec(),
                }
            }
            Kind::Es256 => {
                let rng = ring::rand::SystemRandom::new();
                let alg = &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING;
                let pkcs8 =
                    ring::signature::EcdsaKeyPair::generate_pkcs8(alg, &rng).expect("P-256 key");
                let pair = ring::signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8.as_ref(), &rng)
                    .expect("P-256 key");
                // Uncompressed point: 0x04 ‖ x ‖ y.
                let point = pair.public_key().as_ref().to_vec();
                SigningKey {
                    kind,
                    kid: kid.into(),
                    encoding: EncodingKey::from_ec_der(pkcs8.as_ref()),
                    jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                                "x": b64(&point[1..33]), "y": b64(&point[33..65])}),
                    public_bytes: point,
                }
            }
            Kind::EdDsa => {
                let rng = ring::rand::SystemRandom::new();
                let pkcs8 =
                    ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).expect("Ed25519 key");
                let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
                    .expect("Ed25519 key");
                let public = pair.public_key().as_ref().to_vec();
                SigningKey {
                    kind,
                    kid: kid.into(),
                    encoding: EncodingKey::from_ed_der(pkcs8.as_ref()),
                    jwk: json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig",
                                "x": b64(&public)}),
                    public_bytes: public,
                }
            }
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self.kind {
            Kind::Rs256 => Algorithm::RS256,
            Kind::Es256 => Algorithm::ES256,
            Kind::EdDsa => Algorithm::EdDSA,
        }
    }

    /// The public JWK.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    /// A token with these claims, its header naming this key.
    pub fn sign(&self, claims: &Value) -> String {
        self.sign_as(claims, Some(&self.kid))
    }

    /// A token whose header names `kid` (or none).
    pub fn sign_as(&self, claims: &Value, kid: Option<&str>) -> String {
        let mut header = Header::new(self.algorithm());
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &self.encoding).expect("signs")
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One RSA-2048 key pair per process: (PKCS#1 DER, n, e).
fn rsa_pair() -> &'static (Vec<u8>, Vec<u8>, Vec<u8>) {
    static PAIR: OnceLock<(Vec<u8>, Vec<u8>, Vec<u8>)> = OnceLock::new();
    PAIR.get_or_init(|| {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::traits::PublicKeyParts;
        let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
        let der = key.to_pkcs1_der().expect("DER").as_bytes().to_vec();
        (der, key.n().to_bytes_be(), key.e().to_bytes_be())
    })
}

/// Claims a provider would put in a token: `iss`, `aud`, `sub`, `iat`, and
/// `exp` an hour from now.
pub fn claims(issuer: &str, audience: &str, subject: &str) -> Value {
    let now = now();
    json!({"iss": issuer, "aud": audience, "sub": subject, "iat": now, "exp": now + 3600})
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// A token signed with a shared secret (a game backend's way).
pub fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("signs")
}

/// `alg: none` and no signature.
pub fn unsigned(claims: &Value) -> String {
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(claims.to_string().as_bytes());
    format!("{header}.{body}.")
}

/// An HS256 token "signed" with a public key as the secret, naming that
/// key's id: what a verifier that lets the token choose the algorithm
/// would accept.
pub fn hs256_with_public_key(key: &SigningKey, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &header,
        claims,
        &EncodingKey::from_secret(&key.public_bytes),
    )
    .expect("signs")
}

/// How the key-set server answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    Serve = 0,
    /// Takes the request and never answers.
    Hang = 1,
    /// Answers 200 with HTML.
    Garbage = 2,
    /// Serves the keys after 300 ms.
    Slow = 3,
}

/// A key set served on loopback.
pub struct JwksServer {
    pub url: String,
    state: Arc<ServerState>,
    task: tokio::task::JoinHandle<()>,
}

struct ServerState {
    keys: Mutex<Vec<Value>>,
    hits: AtomicU64,
    mode: AtomicU8,
}

impl JwksServer {
    /// Serves `keys` at `http://127.0.0.1:PORT/jwks.json`.
    pub async fn start(keys: &[&SigningKey]) -> JwksServer {
        let state = Arc::new(ServerState {
            keys: Mutex::new(keys.iter().map(|k| k.jwk()).collect()),
            hits: AtomicU64::new(0),
            mode: AtomicU8::new(Mode::Serve as u8),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binds");
        let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
        let served = state.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let state = served.clone();
                async move {
                    state.hits.fetch_add(1, Ordering::SeqCst);
                    match state.mode.load(Ordering::SeqCst) {
                        1 => {
                            std::future::pending::<()>().await;
                            String::new()
                        }
                        2 => "<html><body>502 Bad Gateway</body></html>".to_string(),
                        mode => {
                            if mode == 3 {
                                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                            }
                            let keys = state.keys.lock().map(|k| k.clone()).unwrap_or_default();
                            json!({ "keys": keys }).to_string()
                        }
                    }
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JwksServer { url, state, task }
    }

    /// Publishes these keys instead (a key rotation).
    pub fn publish(&self, keys: &[&SigningKey]) {
        if let Ok(mut k) = self.state.keys.lock() {
            *k = keys.iter().map(|k| k.jwk()).collect();
        }
    }

    pub fn set_mode(&self, mode: Mode) {
        self.state.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.state.hits.load(Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The key-set document for `keys` (for a `jwks_file`).
pub fn jwks(keys: &[&SigningKey]) -> Value {
    json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
}
