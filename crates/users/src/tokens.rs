//! Access tokens (EdDSA JWTs) and refresh tokens (opaque, stored hashed).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bookstore_platform::auth::{Audience, Claims, ISSUER, Role};
use jsonwebtoken::{Algorithm, Header};
use rand::RngCore;

use crate::keys::Keyring;

/// Signs an access token for `subject` with `roles` (and a service account's `scopes`), valid
/// for `ttl`, for the services named in `audience` alone, or for the public API when it names
/// none ([`Audience::of`]); a person's belongs to their sign-in `session`.
pub fn access_token(
    keyring: &Keyring,
    subject: &str,
    roles: &[Role],
    scopes: &[String],
    audience: &[String],
    session: Option<&str>,
    ttl: Duration,
) -> anyhow::Result<String> {
    let key = keyring.current_signing_key()?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let claims = Claims {
        iss: ISSUER.into(),
        aud: Audience::of(audience),
        sub: subject.into(),
        iat: now,
        nbf: now,
        exp: now + ttl.as_secs(),
        jti: uuid::Uuid::now_v7().to_string(),
        roles: roles.to_vec(),
        scope: scopes.join(" "),
        sid: session.map(str::to_owned),
    };
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(key.kid.clone());
    Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
}

/// 256 random bits, URL-safe: a refresh token or a client secret.
pub fn random_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}
