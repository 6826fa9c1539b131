//! Session tokens: the player is whoever the token says, never a field in a
//! request body.
//!
//! A token is `v1.<player_id>.<expires_at>.<signature>`, the signature being
//! HMAC-SHA256 over `v1.<player_id>.<expires_at>` with the server's secret,
//! base64url without padding. Tokens are stateless, so any replica that shares
//! the secret verifies them.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Signs and verifies session tokens.
#[derive(Clone)]
pub struct TokenSigner {
    secret: Vec<u8>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner(..)")
    }
}

impl TokenSigner {
    pub fn new(secret: &str) -> TokenSigner {
        TokenSigner {
            secret: secret.as_bytes().to_vec(),
        }
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        // HMAC accepts keys of any length; `new_from_slice` cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(payload.as_bytes());
        mac
    }

    pub fn issue(&self, player_id: i64, expires_at: i64) -> String {
        let payload = format!("v1.{player_id}.{expires_at}");
        let sig = self.mac(&payload).finalize().into_bytes();
        format!("{payload}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Returns the player id of a valid, unexpired token.
    pub fn verify(&self, token: &str, now: i64) -> Option<i64> {
        self.verify_until(token, now)
            .map(|(player_id, _)| player_id)
    }

    /// The player and the token's expiry (Unix seconds), if it is valid.
    pub fn verify_until(&self, token: &str, now: i64) -> Option<(i64, i64)> {
        let (payload, sig) = token.rsplit_once('.')?;
        let sig = URL_SAFE_NO_PAD.decode(sig).ok()?;
        self.mac(payload).verify_slice(&sig).ok()?;
        let mut parts = payload.split('.');
        if parts.next()? != "v1" {
            return None;
        }
        let player_id: i64 = parts.next()?.parse().ok()?;
        let expires_at: i64 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || expires_at <= now {
            return None;
        }
        Some((player_id, expires_at))
    }
}

/// What the server keeps of a device id: `sha256:` and its SHA-256 in hex.
/// The device id is the player's only credential (whoever sends it is that
/// player), so a leaked database must not hand it out. The ids the addon
/// makes are 128 random bits, which a plain hash protects; a game that
/// makes its own must keep them as unguessable (see the README).
pub fn device_hash(device_id: &str) -> String {
    format!("sha256:{}", sha256_hex(device_id.as_bytes()))
}

/// SHA-256 of `bytes`, in lowercase hex: how the server keeps what it must
/// recognise but never needs back (device ids, console cookies, request
/// bodies, migration texts).
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A fresh random secret: 32 bytes, base64url.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_and_expire() {
        let signer = TokenSigner::new("0123456789abcdef0123456789abcdef");
        let token = signer.issue(42, 1_000);
        assert_eq!(signer.verify(&token, 999), Some(42));
        assert_eq!(signer.verify(&token, 1_000), None, "expired");
    }

    #[test]
    fn tampered_tokens_are_refused() {
        let signer = TokenSigner::new("0123456789abcdef0123456789abcdef");
        let token = signer.issue(42, 1_000);
        let forged = token.replacen("v1.42.", "v1.43.", 1);
        assert_eq!(signer.verify(&forged, 0), None);
        let longer = token.replacen(".1000.", ".99999.", 1);
        assert_eq!(signer.verify(&longer, 0), None);
        let other = TokenSigner::new("another-secret-another-secret-xx");
        assert_eq!(other.verify(&token, 0), None);
        for junk in ["", ".", "v1", "v1.1.2", "v1.a.b.c", "x.y.z.w.v"] {
            assert_eq!(signer.verify(junk, 0), None, "{junk}");
        }
    }
}
