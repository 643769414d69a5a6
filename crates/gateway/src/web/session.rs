//! Who is browsing, and proof that a form came from our own page.
//!
//! The browser never holds a token where a script could read it. Three cookies, all
//! `HttpOnly; SameSite=Lax; Path=/`, and `Secure` when the page came over HTTPS:
//! - `bookstore_access`: the access token (a JWT), verified on every page request as a bearer
//!   token is on the API, revocations included;
//! - `bookstore_refresh`: the refresh token. When the access token is missing, expired or
//!   revoked, it is traded for a new pair (once: each refresh token is single use, so requests
//!   that race with the same one share the one trade, [`Refreshes`]); a refused one signs the
//!   browser out;
//! - `bookstore_csrf`: a random token, which every form of ours also carries. A form sent
//!   without it, or from another site (`Origin` or, failing that, `Referer` naming another
//!   host), is refused with 403 ([`checked`]). Signing in sets a new one, so a token planted
//!   before the session began is worth nothing in it.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine as _;
use bookstore_platform::auth::AuthError;

use super::Web;
use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};
use crate::users::{RefreshToken, Tokens};

pub const ACCESS: &str = "bookstore_access";
pub const REFRESH: &str = "bookstore_refresh";
pub const CSRF: &str = "bookstore_csrf";

/// How long a trade of one refresh token is remembered, for requests racing with it.
const REFRESH_SHARED_FOR: Duration = Duration::from_secs(30);

/// The CSRF token of this browser, to write into forms.
#[derive(Debug, Clone)]
pub struct Csrf(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Csrf {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Csrf>().cloned().unwrap_or(Csrf(String::new())))
    }
}

/// The refresh token this request traded the browser's for, which is the session's now.
#[derive(Debug, Clone)]
pub struct Refreshed(pub String);

/// The session's current refresh token: the one just traded for, or else the cookie's.
pub fn current_refresh(parts_extensions: Option<&Refreshed>, jar: &CookieJar) -> Option<String> {
    parts_extensions.map(|r| r.0.clone()).or_else(|| jar.get(REFRESH).map(|c| c.value().to_owned()))
}

/// Whether cookies set on this request's answer should be `Secure`.
#[derive(Debug, Clone, Copy)]
pub struct Secure(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for Secure {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Secure>().copied().unwrap_or(Secure(true)))
    }
}

/// Trades of refresh tokens in the last moments, by the token's SHA-256: requests that arrive
/// together with one expired access cookie (two tabs, a page and its form) all get the pair
/// the first one traded for, instead of spending the token twice (which the users service
/// reads as theft, and ends the session).
#[derive(Clone)]
pub struct Refreshes(moka::future::Cache<[u8; 32], Arc<Tokens>>);

impl Refreshes {
    /// Forgets every trade that led to `refresh_token`: its session has ended, and a request
    /// still holding an older token must not be signed in by a remembered trade.
    pub async fn forget(&self, refresh_token: &str) {
        let spent: Vec<_> = self
            .0
            .iter()
            .filter(|(_, tokens)| tokens.refresh_token.as_deref() == Some(refresh_token))
            .map(|(key, _)| key)
            .collect();
        for key in spent {
            self.0.invalidate(key.as_ref()).await;
        }
    }
}

impl Default for Refreshes {
    fn default() -> Self {
        Self(moka::future::Cache::builder().max_capacity(10_000).time_to_live(REFRESH_SHARED_FOR).build())
    }
}

/// Resolves the browser's session for the pages below: the caller (as [`Caller`], which the
/// API's handlers read), its CSRF token ([`Csrf`]), and the cookies to set on the answer.
pub async fn sessions(State(web): State<Arc<Web>>, mut request: Request, next: Next) -> Response {
    if !request.method().is_safe() && !same_origin(request.headers()) {
        return forbidden("this form came from another site");
    }
    let secure = crate::security::over_tls(&request, &web.state.trusted_proxies);
    let jar = CookieJar::from_headers(request.headers());
    let mut set = Vec::new();
    let csrf = match jar.get(CSRF).map(Cookie::value) {
        Some(token) if token.len() == TOKEN_CHARS => token.to_owned(),
        _ => {
            let token = new_token();
            set.push(cookie(CSRF, token.clone(), None, secure));
            token
        }
    };
    request.extensions_mut().insert(Csrf(csrf));
    request.extensions_mut().insert(web.refreshes.clone());
    request.extensions_mut().insert(Secure(secure));
    if let Some(caller) = signed_in(&web, &jar, secure, &mut set).await {
        request.extensions_mut().insert(caller);
    }
    // A trade just made: the session's refresh token is now the new one.
    if let Some(traded) = set.iter().find(|c| c.name() == REFRESH && !c.value().is_empty()) {
        request.extensions_mut().insert(Refreshed(traded.value().to_owned()));
    }
    let mut response = next.run(request).await;
    // A handler that set a cookie itself (signing in or out) has the last word on it.
    let own: Vec<String> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok()?.split('=').next().map(str::to_owned))
        .collect();
    for cookie in set.into_iter().filter(|c| !own.iter().any(|name| name == c.name())) {
        if let Ok(value) = HeaderValue::from_str(&cookie.to_string()) {
            response.headers_mut().append(header::SET_COOKIE, value);
        }
    }
    response
}

/// The caller the cookies name: by the access token, or else by a trade of the refresh token
/// (whose new cookies go into `set`).
async fn signed_in(
    web: &Web,
    jar: &CookieJar,
    secure: bool,
    set: &mut Vec<Cookie<'static>>,
) -> Option<Caller> {
    if let Some(token) = jar.get(ACCESS).map(Cookie::value) {
        match web.verifier.verify(token).await {
            Ok(identity) => return Some(Caller { identity, token: token.to_owned() }),
            // Nobody can tell now; the cookies may be good, so they stay.
            Err(AuthError::KeysUnavailable) => return None,
            Err(_) => {}
        }
    }
    let refresh = jar.get(REFRESH)?.value().to_owned();
    let key: [u8; 32] = <sha2::Sha256 as sha2::Digest>::digest(refresh.as_bytes()).into();
    let state = web.state.clone();
    let traded = web
        .refreshes
        .0
        .try_get_with(key, async move {
            let body = RefreshToken { refresh_token: refresh };
            crate::users::refresh(State(state), crate::error::Json(body))
                .await
                .map(|tokens| Arc::new(tokens.0))
        })
        .await;
    match traded {
        Ok(tokens) => {
            set.extend(session_cookies(&tokens, secure));
            let identity = web.verifier.verify(&tokens.access_token).await.ok()?;
            Some(Caller { identity, token: tokens.access_token.clone() })
        }
        Err(error) => {
            if error.status == StatusCode::UNAUTHORIZED {
                set.extend(cleared(secure));
            }
            None
        }
    }
}

/// The cookies that hold a session of `tokens`.
pub fn session_cookies(tokens: &Tokens, secure: bool) -> Vec<Cookie<'static>> {
    // The access cookie leaves the browser a little before the token expires, so a request
    // does not arrive with a token that expires on the way.
    let access_for = (tokens.expires_in - 5).max(1);
    let mut cookies = vec![cookie(ACCESS, tokens.access_token.clone(), Some(access_for), secure)];
    if let Some(refresh) = &tokens.refresh_token {
        cookies.push(cookie(REFRESH, refresh.clone(), tokens.refresh_expires_in, secure));
    }
    cookies
}

/// The cookies that end a session.
pub fn cleared(secure: bool) -> Vec<Cookie<'static>> {
    [ACCESS, REFRESH].into_iter().map(|name| cookie(name, String::new(), Some(0), secure)).collect()
}

/// One of our cookies: `HttpOnly; SameSite=Lax; Path=/`, `Secure` when asked, kept for
/// `max_age_secs` (for the browser's session when `None`).
pub fn cookie(name: &'static str, value: String, max_age_secs: Option<i64>, secure: bool) -> Cookie<'static> {
    let mut cookie =
        Cookie::build((name, value)).http_only(true).same_site(SameSite::Lax).path("/").secure(secure);
    if let Some(secs) = max_age_secs {
        cookie = cookie.max_age(time::Duration::seconds(secs));
    }
    cookie.build()
}

/// Characters of a CSRF token: 32 random bytes, base64url without padding.
const TOKEN_CHARS: usize = 43;

pub(super) fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Checks the CSRF token a form carried against the browser's; 403 when they differ.
pub fn checked(sent: &str, csrf: &Csrf) -> Result<(), ApiError> {
    use subtle::ConstantTimeEq as _;
    if !csrf.0.is_empty() && bool::from(sent.as_bytes().ct_eq(csrf.0.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::PermissionDenied,
            "this form has expired: go back, reload the page and send it again",
        ))
    }
}

/// Whether a request that changes something came from a page of this host: its `Origin` (or,
/// when a browser sends none, its `Referer`) names the host it was sent to. A request with
/// neither is not from a browser's form, and the CSRF token decides.
fn same_origin(headers: &HeaderMap) -> bool {
    let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok()) else { return false };
    let from = headers.get(header::ORIGIN).or_else(|| headers.get(header::REFERER));
    let Some(from) = from.and_then(|v| v.to_str().ok()) else { return true };
    // A `Referer` is a whole address: its origin is what is compared, by the live socket's rule.
    url::Url::parse(from)
        .is_ok_and(|url| crate::live::origin_allowed(&url.origin().ascii_serialization(), Some(host), &[]))
}

fn forbidden(message: &str) -> Response {
    super::layout::error_page(&ApiError::new(StatusCode::FORBIDDEN, ErrorCode::PermissionDenied, message))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (header::HeaderName::from_static(k), v.parse().unwrap())).collect()
    }

    #[test]
    fn a_form_is_ours_only_when_its_origin_or_referer_names_this_host() {
        let ours = [("host", "shop.example:8080"), ("origin", "http://shop.example:8080")];
        assert!(same_origin(&headers(&ours)));
        assert!(same_origin(&headers(&[("host", "shop.example"), ("referer", "https://shop.example/cart")])));
        assert!(same_origin(&headers(&[("host", "shop.example")])), "no browser: the token decides");
        for from in
            ["http://evil.example:8080", "http://shop.example:9090", "null", "http://shop.example.evil"]
        {
            assert!(!same_origin(&headers(&[("host", "shop.example:8080"), ("origin", from)])), "{from}");
        }
        assert!(!same_origin(&headers(&[("origin", "http://shop.example")])), "no host");
    }

    #[test]
    fn a_csrf_token_is_accepted_only_when_it_is_the_browsers_own() {
        let token = new_token();
        assert_eq!(token.len(), TOKEN_CHARS);
        assert!(checked(&token, &Csrf(token.clone())).is_ok());
        assert!(checked("", &Csrf(token.clone())).is_err());
        assert!(checked(&new_token(), &Csrf(token)).is_err());
        assert!(checked("", &Csrf(String::new())).is_err(), "no token is no proof");
    }

    #[test]
    fn session_cookies_are_http_only_lax_and_secure_over_https() {
        let tokens = Tokens {
            access_token: "a.b.c".into(),
            token_type: "Bearer".into(),
            expires_in: 900,
            refresh_token: Some("r".into()),
            refresh_expires_in: Some(86_400),
        };
        let cookies = session_cookies(&tokens, true);
        assert_eq!(cookies.len(), 2);
        for c in &cookies {
            let text = c.to_string();
            for attribute in ["HttpOnly", "SameSite=Lax", "Path=/", "Secure"] {
                assert!(text.contains(attribute), "{text}");
            }
        }
        assert_eq!(cookies[0].max_age(), Some(time::Duration::seconds(895)));
        assert!(!session_cookies(&tokens, false)[0].to_string().contains("Secure"));
        assert!(cleared(false).iter().all(|c| c.max_age() == Some(time::Duration::ZERO)));
    }
}
