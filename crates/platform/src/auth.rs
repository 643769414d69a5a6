//! Who is calling.
//!
//! Access tokens are EdDSA (Ed25519) JWTs issued by the users service. Every holder of a
//! resource verifies them itself (the service that holds the data checks the token), with the
//! users service's public keys (JWKS) fetched over gRPC, cached by `kid`, and refetched at most
//! once a minute when a token names a key we do not know. The algorithm is pinned to EdDSA, so
//! `alg: none` and HS256-signed-with-the-public-key tokens are refused before any signature
//! check; issuer, audience, expiry and not-before are all required, with 30 s of leeway.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::{Deserialize, Serialize};

pub const ISSUER: &str = "bookstore";
pub const AUDIENCE: &str = "bookstore";
/// Clock skew tolerated on `exp` and `nbf`.
pub const LEEWAY_SECS: u64 = 30;

/// What a caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Customer,
    Staff,
    Admin,
    /// A service account calling with its own credentials (client-credentials grant).
    Service,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Customer => "customer",
            Role::Staff => "staff",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "customer" => Some(Role::Customer),
            "staff" => Some(Role::Staff),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }
}

/// Whom a token is for (`aud`, RFC 7519: one name or several). [`AUDIENCE`] is the public API:
/// such a token is good at the gateway and at every service it forwards it to. A service's name
/// (`books`) is that service alone, called directly: what a service asks for when it calls
/// another with its own credentials (as an RFC 8707 resource indicator), so a token it leaks
/// opens nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    One(String),
    Many(Vec<String>),
}

impl Audience {
    /// The audience of a token for `names`, or for the public API when there are none.
    pub fn of(names: &[String]) -> Self {
        match names {
            [] => Self::One(AUDIENCE.to_owned()),
            [one] => Self::One(one.clone()),
            many => Self::Many(many.to_vec()),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match self {
            Self::One(one) => one == name,
            Self::Many(many) => many.iter().any(|n| n == name),
        }
    }
}

impl From<&str> for Audience {
    fn from(name: &str) -> Self {
        Self::One(name.to_owned())
    }
}

/// What a service account may be granted, and what each grants: every route and method a
/// service account may call needs one of these (people are governed by their roles alone).
pub const SCOPES: [(&str, &str); 7] = [
    ("books:read", "read the catalog and recommendations"),
    ("books:write", "add, change and delete books, and adjust their stock"),
    ("books:reserve", "reserve, confirm and release stock (the checkout saga)"),
    ("orders:read", "read every order"),
    ("orders:write", "cancel orders and move them along their lifecycle"),
    ("queue:read", "read the fulfillment queue"),
    ("queue:write", "move, claim, advance and remove fulfillment tasks"),
];

/// `scopes`, if each is one of [`SCOPES`]; else the first that is not.
pub fn parse_scopes(scopes: &[String]) -> Result<Vec<String>, String> {
    let mut parsed: Vec<String> = Vec::with_capacity(scopes.len());
    for scope in scopes {
        if !SCOPES.iter().any(|(name, _)| name == scope) {
            return Err(scope.clone());
        }
        if !parsed.contains(scope) {
            parsed.push(scope.clone());
        }
    }
    Ok(parsed)
}

/// The claims of a bookstore access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: Audience,
    pub sub: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    pub roles: Vec<Role>,
    /// What a service account's token is granted ([`SCOPES`]), space-separated (RFC 8693 §4.2).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    /// The sign-in session the token belongs to (OpenID Connect's `sid`): signing out ends the
    /// session's tokens alone ([`crate::revocation`]). Service tokens have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// The verified caller, available to handlers in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The user's id, or the service account's client id.
    pub subject: String,
    pub roles: Vec<Role>,
    /// The token's `jti`.
    pub token_id: String,
    /// When the token stops being valid (`exp`, seconds since the epoch): what holds a
    /// connection open on it (a WebSocket) ends then.
    pub expires_at: u64,
    /// A service account's grants ([`SCOPES`]); none for people.
    pub scopes: Vec<String>,
}

impl Identity {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn has_any(&self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.has(*r))
    }

    pub fn is_admin(&self) -> bool {
        self.has(Role::Admin)
    }

    /// Holds one of `roles`, or is a service account granted `scope`.
    pub fn may(&self, roles: &[Role], scope: &str) -> bool {
        self.has_any(roles) || (self.has(Role::Service) && self.scopes.iter().any(|s| s == scope))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid access token: {0}")]
    Invalid(&'static str),
    #[error("access token expired")]
    Expired,
    #[error("access token revoked")]
    Revoked,
    #[error("the signing keys could not be fetched")]
    KeysUnavailable,
}

/// Fetches the current JWKS.
pub type JwksSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<JwkSet>> + Send>> + Send + Sync>;

/// Keys older than this are refetched on the next verification, so a key the issuer stopped
/// publishing (rotated out, or withdrawn after a compromise) stops verifying within minutes.
pub(crate) const JWKS_MAX_AGE: Duration = Duration::from_secs(300);
/// After a failed fetch, the next try waits at least this long (not the full `min_refresh`).
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Cache {
    keys: HashMap<String, DecodingKey>,
    /// When the keys in hand were fetched.
    fetched_at: Option<Instant>,
}

/// Verifies access tokens against a cached JWKS.
pub struct Verifier {
    source: JwksSource,
    cache: RwLock<Cache>,
    /// The earliest moment another fetch may start; held across a fetch, so one runs at a time.
    next_fetch: tokio::sync::Mutex<Option<Instant>>,
    min_refresh: Duration,
    validation: Validation,
    /// Tokens that stopped working before they expire.
    revocations: crate::revocation::Revocations,
    /// Tokens whose signature and claims checked out, with their claims and key id: the same
    /// token on its next request skips the signature check (an Ed25519 verification, a fifth of
    /// a checkout's instructions with three per order). Expiry, audience, the key still being
    /// served and revocation are checked on every use.
    verified: moka::sync::Cache<String, Arc<(Claims, String)>>,
}

/// How many verified tokens a verifier remembers, and for how long at most.
const VERIFIED_CAPACITY: u64 = 4096;
const VERIFIED_TTL: Duration = Duration::from_secs(60);

impl Verifier {
    /// `min_refresh` is the least time between two fetches prompted by unknown key ids (one
    /// minute in production; tests shorten it).
    pub fn new(source: JwksSource, min_refresh: Duration) -> Self {
        crate::jwt_crypto::install();
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[ISSUER]);
        // Required, and checked against who is asking ([`Verifier::verify_for`]).
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        Self {
            source,
            cache: RwLock::new(Cache::default()),
            next_fetch: tokio::sync::Mutex::new(None),
            min_refresh,
            validation,
            revocations: Default::default(),
            verified: moka::sync::Cache::builder()
                .max_capacity(VERIFIED_CAPACITY)
                .time_to_live(VERIFIED_TTL)
                .build(),
        }
    }

    /// The tokens revoked before they expire, which this verifier refuses.
    pub fn revocations(&self) -> &crate::revocation::Revocations {
        &self.revocations
    }

    /// A token for the public API ([`AUDIENCE`]): what the gateway accepts.
    pub async fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_among(token, &[AUDIENCE]).await
    }

    /// A token for the public API or for `service` alone: what `service` accepts.
    pub async fn verify_for(&self, token: &str, service: &str) -> Result<Identity, AuthError> {
        self.verify_among(token, &[AUDIENCE, service]).await
    }

    async fn verify_among(&self, token: &str, audiences: &[&str]) -> Result<Identity, AuthError> {
        let checked = match self.verified.get(token) {
            // Verified before, by a key still served: only what time or others can change is
            // checked again.
            Some(entry) if self.key(&entry.1).is_some() && !self.stale() => {
                let now =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                if entry.0.exp.saturating_add(LEEWAY_SECS) < now.as_secs() {
                    return Err(AuthError::Expired);
                }
                entry
            }
            _ => {
                let entry = Arc::new(self.check_signature(token).await?);
                self.verified.insert(token.to_owned(), entry.clone());
                entry
            }
        };
        let claims = &checked.0;
        if !audiences.iter().any(|a| claims.aud.contains(a)) {
            return Err(AuthError::Invalid("wrong audience"));
        }
        if self.revocations.revoked(&claims.sub, claims.sid.as_deref()) {
            return Err(AuthError::Revoked);
        }
        Ok(Identity {
            subject: claims.sub.clone(),
            roles: claims.roles.clone(),
            token_id: claims.jti.clone(),
            expires_at: claims.exp,
            scopes: claims.scope.split_whitespace().map(str::to_owned).collect(),
        })
    }

    /// The token's signature, issuer, times and required claims checked: its claims and the id
    /// of the key that signed it.
    async fn check_signature(&self, token: &str) -> Result<(Claims, String), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid("malformed"))?;
        // Pinned: whatever the token claims, only EdDSA is accepted.
        if header.alg != Algorithm::EdDSA {
            return Err(AuthError::Invalid("algorithm not allowed"));
        }
        let kid = header.kid.ok_or(AuthError::Invalid("no key id"))?;
        let key = match self.key(&kid) {
            Some(key) if !self.stale() => key,
            cached => {
                let refreshed = self.refresh().await;
                match (self.key(&kid), refreshed) {
                    (Some(key), _) => key,
                    // Unknown, and the keys could not be fetched: the caller should retry, not
                    // be told its token is bad.
                    (None, Err(err)) if cached.is_none() => return Err(err),
                    (None, _) => return Err(AuthError::Invalid("unknown key id")),
                }
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, &key, &self.validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                ErrorKind::ImmatureSignature => AuthError::Invalid("not yet valid"),
                ErrorKind::InvalidIssuer => AuthError::Invalid("wrong issuer"),
                ErrorKind::InvalidAudience => AuthError::Invalid("wrong audience"),
                ErrorKind::InvalidSignature => AuthError::Invalid("bad signature"),
                ErrorKind::MissingRequiredClaim(_) => AuthError::Invalid("missing claim"),
                _ => AuthError::Invalid("rejected"),
            }
        })?;
        Ok((data.claims, kid))
    }

    fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.cache.read().ok()?.keys.get(kid).cloned()
    }

    fn stale(&self) -> bool {
        self.cache.read().map_or(true, |c| c.fetched_at.is_none_or(|at| at.elapsed() > JWKS_MAX_AGE))
    }

    /// Refetches the JWKS unless a fetch happened less than `min_refresh` ago (5 s after a
    /// failed one), so a stream of tokens with made-up key ids cannot turn into a stream of
    /// fetches. A failed fetch keeps the keys in hand.
    async fn refresh(&self) -> Result<(), AuthError> {
        let mut next_fetch = self.next_fetch.lock().await;
        if next_fetch.is_some_and(|at| Instant::now() < at) {
            return Ok(());
        }
        match (self.source)().await {
            Ok(set) => {
                let mut keys = HashMap::new();
                for jwk in &set.keys {
                    let (Some(kid), Ok(key)) = (jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)) else {
                        continue;
                    };
                    keys.insert(kid, key);
                }
                if let Ok(mut cache) = self.cache.write() {
                    *cache = Cache { keys, fetched_at: Some(Instant::now()) };
                }
                *next_fetch = Some(Instant::now() + self.min_refresh);
                Ok(())
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "fetching the JWKS failed");
                *next_fetch = Some(Instant::now() + self.min_refresh.min(RETRY_AFTER_FAILURE));
                Err(AuthError::KeysUnavailable)
            }
        }
    }
}

/// Fetches a fresh service token and how long it lives.
pub type TokenSource =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<(String, Duration)>> + Send>> + Send + Sync>;

/// A service's own credentials for calling other services (orders calling books; later the
/// recommendations service): a token fetched when first needed and again a minute before it
/// expires.
pub struct ServiceToken {
    source: TokenSource,
    /// The token and when to renew it, on tokio's clock (tests move it).
    cached: tokio::sync::Mutex<Option<(String, tokio::time::Instant)>>,
}

impl ServiceToken {
    pub fn new(source: TokenSource) -> Self {
        Self { source, cached: tokio::sync::Mutex::new(None) }
    }

    pub async fn get(&self) -> anyhow::Result<String> {
        let mut cached = self.cached.lock().await;
        if let Some((token, renew_at)) = cached.as_ref()
            && tokio::time::Instant::now() < *renew_at
        {
            return Ok(token.clone());
        }
        let (token, ttl) = (self.source)().await?;
        let renew_at = tokio::time::Instant::now()
            + ttl.saturating_sub(Duration::from_secs(60)).max(Duration::from_secs(1));
        *cached = Some((token.clone(), renew_at));
        Ok(token)
    }

    /// Puts the service's token on an outgoing request.
    pub async fn authorize<T>(&self, request: &mut tonic::Request<T>) -> Result<(), tonic::Status> {
        let token = self.get().await.map_err(|e| {
            tracing::warn!(error = %format!("{e:#}"), "no service token");
            tonic::Status::unavailable("cannot obtain a service token")
        })?;
        let value = format!("Bearer {token}").parse().map_err(|_| tonic::Status::internal("bad token"))?;
        request.metadata_mut().insert("authorization", value);
        Ok(())
    }
}

/// The JWK (RFC 8037) of an Ed25519 public key.
pub fn ed25519_jwk(kid: &str, public_key: &[u8; 32]) -> jsonwebtoken::jwk::Jwk {
    use base64::Engine;
    use jsonwebtoken::jwk::{
        AlgorithmParameters, CommonParameters, EllipticCurve, Jwk, KeyAlgorithm, OctetKeyPairParameters,
        OctetKeyPairType, PublicKeyUse,
    };
    Jwk {
        common: CommonParameters {
            public_key_use: Some(PublicKeyUse::Signature),
            key_algorithm: Some(KeyAlgorithm::EdDSA),
            key_id: Some(kid.to_owned()),
            ..Default::default()
        },
        algorithm: AlgorithmParameters::OctetKeyPair(OctetKeyPairParameters {
            key_type: OctetKeyPairType::OctetKeyPair,
            curve: EllipticCurve::Ed25519,
            x: base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(public_key),
        }),
    }
}

/// Reads `authorization: Bearer <token>`.
pub fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// gRPC-side middleware of `service`: a request with a valid token (for the public API or for
/// `service`) carries its [`Identity`] in its
/// extensions; one with an invalid token is answered UNAUTHENTICATED at once; one without a
/// token goes on anonymous, and each method decides whether that is enough.
pub(crate) async fn authenticate_grpc(
    State((verifier, service)): State<(Arc<Verifier>, &'static str)>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Some(token) = bearer(request.headers()) {
        match verifier.verify_for(token, service).await {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
            }
            Err(err) => {
                let status = match err {
                    AuthError::KeysUnavailable => tonic::Status::unavailable(err.to_string()),
                    _ => tonic::Status::unauthenticated(err.to_string()),
                };
                return status.into_http::<axum::body::Body>().map(axum::body::Body::new);
            }
        }
    }
    next.run(request).await
}

/// The caller of a gRPC method, if it presented a valid token.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Identity> {
    request.extensions().get::<Identity>()
}

/// The caller, who must hold one of `roles`: UNAUTHENTICATED without a token, PERMISSION_DENIED
/// with the wrong role.
pub fn require<'a, T>(request: &'a tonic::Request<T>, roles: &[Role]) -> Result<&'a Identity, tonic::Status> {
    let identity = caller(request).ok_or_else(|| tonic::Status::unauthenticated("sign in first"))?;
    if identity.has_any(roles) {
        Ok(identity)
    } else {
        Err(tonic::Status::permission_denied("your role does not allow this"))
    }
}

/// The caller, who must hold one of `roles` or be a service account granted `scope`:
/// UNAUTHENTICATED without a token, PERMISSION_DENIED otherwise (naming the scope).
pub fn require_or_scope<'a, T>(
    request: &'a tonic::Request<T>,
    roles: &[Role],
    scope: &str,
) -> Result<&'a Identity, tonic::Status> {
    let identity = caller(request).ok_or_else(|| tonic::Status::unauthenticated("sign in first"))?;
    if identity.may(roles, scope) {
        Ok(identity)
    } else if identity.has(Role::Service) {
        Err(tonic::Status::permission_denied(format!("this needs the {scope} scope")))
    } else {
        Err(tonic::Status::permission_denied("your role does not allow this"))
    }
}

/// A service account must be granted `scope` for this; anyone else (anonymous included) may.
/// For what is open to the public but should not be to a service account not granted it.
pub fn check_service_scope<T>(request: &tonic::Request<T>, scope: &str) -> Result<(), tonic::Status> {
    match caller(request) {
        Some(identity) if identity.has(Role::Service) && !identity.scopes.iter().any(|s| s == scope) => {
            Err(tonic::Status::permission_denied(format!("this needs the {scope} scope")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    //! Token rejections of RFC 8725 (JWT best current practices), each against a verifier that
    //! accepts the same token with honest claims.

    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;

    use super::*;
    use crate::testing::TestIssuer;

    fn b64_json(value: &serde_json::Value) -> String {
        B64.encode(serde_json::to_vec(value).unwrap())
    }

    #[tokio::test]
    async fn an_honest_token_verifies_with_its_subject_and_roles() {
        let issuer = TestIssuer::new();
        let identity = issuer.verifier().verify(&issuer.token("u1", &[Role::Staff])).await.unwrap();
        assert_eq!(identity.subject, "u1");
        assert_eq!(identity.roles, vec![Role::Staff]);
        assert!(identity.has_any(&[Role::Admin, Role::Staff]) && !identity.is_admin());
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let issuer = TestIssuer::new();
        let header = b64_json(&serde_json::json!({"alg": "none", "typ": "JWT", "kid": issuer.kid}));
        let payload = B64.encode(serde_json::to_vec(&issuer.claims("u1", &[Role::Admin])).unwrap());
        let token = format!("{header}.{payload}.");
        assert!(matches!(issuer.verifier().verify(&token).await, Err(AuthError::Invalid(_))));
    }

    #[tokio::test]
    async fn hs256_signed_with_the_public_key_is_refused() {
        use hmac_sign::sign;
        let issuer = TestIssuer::new();
        let header = b64_json(&serde_json::json!({"alg": "HS256", "typ": "JWT", "kid": issuer.kid}));
        let payload = B64.encode(serde_json::to_vec(&issuer.claims("u1", &[Role::Admin])).unwrap());
        let signing_input = format!("{header}.{payload}");
        let signature = sign(&issuer.public_key_bytes(), signing_input.as_bytes());
        let token = format!("{signing_input}.{}", B64.encode(signature));
        assert!(matches!(
            issuer.verifier().verify(&token).await,
            Err(AuthError::Invalid("algorithm not allowed"))
        ));
    }

    /// HS256 by hand (HMAC-SHA256 through jsonwebtoken's own HMAC signer), as an attacker would
    /// forge it.
    mod hmac_sign {
        pub fn sign(key: &[u8], message: &[u8]) -> Vec<u8> {
            let token = jsonwebtoken::crypto::sign(
                message,
                &jsonwebtoken::EncodingKey::from_secret(key),
                jsonwebtoken::Algorithm::HS256,
            )
            .unwrap();
            base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token).unwrap()
        }
        use base64::Engine;
    }

    #[tokio::test]
    async fn expired_and_not_yet_valid_tokens_are_refused_beyond_the_leeway() {
        let issuer = TestIssuer::new();
        let verifier = issuer.verifier();
        let mut expired = issuer.claims("u1", &[Role::Customer]);
        expired.exp -= 600 + LEEWAY_SECS + 5;
        expired.iat -= 1200;
        expired.nbf -= 1200;
        assert!(matches!(verifier.verify(&issuer.sign(&expired)).await, Err(AuthError::Expired)));

        let mut early = issuer.claims("u1", &[Role::Customer]);
        early.nbf += LEEWAY_SECS + 120;
        assert!(matches!(
            verifier.verify(&issuer.sign(&early)).await,
            Err(AuthError::Invalid("not yet valid"))
        ));

        let mut within_leeway = issuer.claims("u1", &[Role::Customer]);
        within_leeway.nbf += 10;
        assert!(verifier.verify(&issuer.sign(&within_leeway)).await.is_ok());
    }

    #[tokio::test]
    async fn a_wrong_issuer_or_audience_is_refused() {
        let issuer = TestIssuer::new();
        let verifier = issuer.verifier();
        let mut claims = issuer.claims("u1", &[Role::Customer]);
        claims.iss = "someone-else".into();
        assert!(matches!(
            verifier.verify(&issuer.sign(&claims)).await,
            Err(AuthError::Invalid("wrong issuer"))
        ));
        let mut claims = issuer.claims("u1", &[Role::Customer]);
        claims.aud = "another-api".into();
        assert!(matches!(
            verifier.verify(&issuer.sign(&claims)).await,
            Err(AuthError::Invalid("wrong audience"))
        ));
    }

    #[tokio::test]
    async fn a_token_for_one_service_is_good_there_only_and_one_for_the_api_everywhere() {
        let issuer = TestIssuer::new();
        let verifier = issuer.verifier();
        let mut claims = issuer.claims("svc-recommendations", &[Role::Service]);
        claims.aud = Audience::of(&["books".to_owned()]);
        let for_books = issuer.sign(&claims);
        assert!(verifier.verify_for(&for_books, "books").await.is_ok());
        for refused in [verifier.verify_for(&for_books, "orders").await, verifier.verify(&for_books).await] {
            assert!(matches!(refused, Err(AuthError::Invalid("wrong audience"))), "{refused:?}");
        }
        claims.aud = Audience::of(&["books".to_owned(), "orders".to_owned()]);
        let for_both = issuer.sign(&claims);
        assert!(verifier.verify_for(&for_both, "orders").await.is_ok(), "one of several");
        assert!(verifier.verify_for(&for_both, "users").await.is_err());
        let api = issuer.token("u1", &[Role::Customer]);
        assert!(verifier.verify(&api).await.is_ok() && verifier.verify_for(&api, "books").await.is_ok());
    }

    /// What a service asks for when it calls another: `aud` as a list when it names several.
    #[test]
    fn an_audience_is_one_name_or_a_list_on_the_wire() {
        let one = serde_json::to_value(Audience::of(&[])).unwrap();
        assert_eq!(one, serde_json::json!(AUDIENCE));
        let many = serde_json::to_value(Audience::of(&["books".into(), "orders".into()])).unwrap();
        assert_eq!(many, serde_json::json!(["books", "orders"]));
        let read: Audience = serde_json::from_value(serde_json::json!(["a", "b"])).unwrap();
        assert!(read.contains("b") && !read.contains("c"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_service_token_is_fetched_once_and_again_a_minute_before_it_expires() {
        let fetched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = fetched.clone();
        let source: TokenSource = Arc::new(move || {
            let n = count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move { Ok((format!("token-{n}"), Duration::from_secs(300))) })
        });
        let token = ServiceToken::new(source);
        assert_eq!(token.get().await.unwrap(), "token-0");
        tokio::time::advance(Duration::from_secs(239)).await;
        assert_eq!(token.get().await.unwrap(), "token-0", "kept while it has more than a minute left");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(token.get().await.unwrap(), "token-1", "renewed in its last minute, before it expires");
        assert_eq!(fetched.load(std::sync::atomic::Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn an_unknown_key_id_is_refused() {
        let trusted = TestIssuer::new();
        let stranger = TestIssuer::new();
        let result = trusted.verifier().verify(&stranger.token("u1", &[Role::Admin])).await;
        assert!(matches!(result, Err(AuthError::Invalid("unknown key id"))));
    }

    #[tokio::test]
    async fn a_tampered_payload_or_signature_is_refused() {
        let issuer = TestIssuer::new();
        let verifier = issuer.verifier();
        let token = issuer.token("u1", &[Role::Customer]);
        let parts: Vec<&str> = token.split('.').collect();

        let escalated = B64.encode(serde_json::to_vec(&issuer.claims("u1", &[Role::Admin])).unwrap());
        let forged = format!("{}.{}.{}", parts[0], escalated, parts[2]);
        assert!(matches!(verifier.verify(&forged).await, Err(AuthError::Invalid("bad signature"))));

        let mut signature = B64.decode(parts[2]).unwrap();
        signature[0] ^= 1;
        let forged = format!("{}.{}.{}", parts[0], parts[1], B64.encode(signature));
        assert!(matches!(verifier.verify(&forged).await, Err(AuthError::Invalid(_))));

        assert!(verifier.verify("not.a.token").await.is_err());
        assert!(verifier.verify("").await.is_err());
    }

    #[tokio::test]
    async fn unknown_key_ids_refetch_the_jwks_at_most_once_per_interval() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let issuer = TestIssuer::new();
        let fetches = Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        let source: JwksSource = Arc::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            Box::pin(async { Ok(JwkSet { keys: vec![] }) })
        });
        let verifier = Verifier::new(source, Duration::from_secs(60));
        for _ in 0..20 {
            assert!(verifier.verify(&issuer.token("u1", &[Role::Customer])).await.is_err());
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 1, "a flood of unknown kids is one fetch");
    }

    #[tokio::test]
    async fn an_unreachable_issuer_is_unavailable_not_a_bad_token() {
        let issuer = TestIssuer::new();
        let source: JwksSource = Arc::new(|| Box::pin(async { anyhow::bail!("connection refused") }));
        let verifier = Verifier::new(source, Duration::from_secs(60));
        let result = verifier.verify(&issuer.token("u1", &[Role::Customer])).await;
        assert!(matches!(result, Err(AuthError::KeysUnavailable)), "{result:?}");
    }

    #[tokio::test]
    async fn a_token_verified_before_is_refused_once_revoked_or_once_its_key_is_withdrawn() {
        use std::sync::Mutex;
        let (issuer, successor) = (TestIssuer::new(), TestIssuer::new());
        let jwks = |i: &TestIssuer| JwkSet { keys: vec![ed25519_jwk(&i.kid, &i.public_key_bytes())] };
        let served = Arc::new(Mutex::new(jwks(&issuer)));
        let current = served.clone();
        let source: JwksSource = Arc::new(move || {
            let set = current.lock().unwrap().clone();
            Box::pin(async move { Ok(set) })
        });
        let verifier = Verifier::new(source, Duration::ZERO);

        let token = issuer.token("u1", &[Role::Customer]);
        for _ in 0..2 {
            assert_eq!(verifier.verify(&token).await.unwrap().subject, "u1", "verified, then remembered");
        }
        let until = crate::clock::now_ms() + 60_000;
        verifier.revocations().apply(&crate::revocation::event("u1", &[], until)).unwrap();
        assert!(matches!(verifier.verify(&token).await, Err(AuthError::Revoked)));

        let token = issuer.token("u2", &[Role::Customer]);
        assert_eq!(verifier.verify(&token).await.unwrap().subject, "u2");
        // The issuer rotates to a new key and withdraws the old one; a token of the new key
        // makes the verifier fetch the keys again.
        *served.lock().unwrap() = jwks(&successor);
        assert!(verifier.verify(&successor.token("u3", &[Role::Customer])).await.is_ok());
        let refused = verifier.verify(&token).await;
        assert!(matches!(refused, Err(AuthError::Invalid("unknown key id"))), "{refused:?}");
    }

    #[tokio::test]
    async fn a_remembered_token_is_checked_against_each_callers_audience() {
        let issuer = TestIssuer::new();
        let verifier = issuer.verifier();
        let mut claims = issuer.claims("svc", &[Role::Service]);
        claims.aud = Audience::from("books");
        let token = issuer.sign(&claims);
        assert!(verifier.verify_for(&token, "books").await.is_ok());
        assert!(matches!(
            verifier.verify_for(&token, "orders").await,
            Err(AuthError::Invalid("wrong audience"))
        ));
        assert!(matches!(verifier.verify(&token).await, Err(AuthError::Invalid("wrong audience"))));
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(bearer(&headers), None);
        headers.insert(http::header::AUTHORIZATION, "Bearer abc.def.ghi".parse().unwrap());
        assert_eq!(bearer(&headers), Some("abc.def.ghi"));
        headers.insert(http::header::AUTHORIZATION, "Basic dXNlcg==".parse().unwrap());
        assert_eq!(bearer(&headers), None);
    }
}
