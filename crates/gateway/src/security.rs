//! What the gateway does so that a browser, a cache or a hostile client cannot turn its answers
//! against its users: security headers on every answer, request ids that are only echoed when
//! they are harmless, and its own limits on the request line and headers (answered in the error
//! envelope, below hyper's larger ones, which answer without it).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The longest `x-request-id` a client may choose; a longer one is replaced.
pub const REQUEST_ID_MAX_LEN: usize = 64;

/// The longest request target (path and query) the gateway reads; longer is 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;
/// The most header lines a request may carry; more is 431.
pub const MAX_HEADERS: usize = 100;
/// The most bytes a request's headers may take together (each line's name, value and 4 bytes
/// of `: ` and CRLF); more is 431.
pub const MAX_HEADER_BYTES: usize = 32 * 1024;

/// The Content-Security-Policy of every answer but the docs: nobody may frame the API.
pub const CSP: &str = "frame-ancestors 'none'";
/// The Content-Security-Policy of Swagger UI (`/docs`): its scripts, styles and the OpenAPI
/// document come from the gateway itself; its styles set some inline; its icons are `data:`
/// images; nobody may frame it.
pub const DOCS_CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                            img-src 'self' data:; connect-src 'self'; object-src 'none'; \
                            base-uri 'self'; form-action 'self'; frame-ancestors 'none'";

/// Whether a client's `x-request-id` may be kept and echoed: short, and of characters that
/// are inert in a header, a JSON string, HTML and a log line.
pub fn is_safe_request_id(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= REQUEST_ID_MAX_LEN
        && id.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// The edge's work on every request and answer, the API's and the pass-through routes' alike,
/// as the outermost layer. In order:
///
/// 1. the request keeps exactly one `x-request-id`: the client's when it is safe
///    ([`is_safe_request_id`]), else a new UUID, so the API's request-id layers, the routes and
///    the logs all see the same one;
/// 2. a request target or headers past the gateway's limits are refused ([`MAX_URI_BYTES`],
///    [`MAX_HEADERS`], [`MAX_HEADER_BYTES`]);
/// 3. the answer gets `X-Content-Type-Options`, `Referrer-Policy` and `Content-Security-Policy`
///    unless it has its own (a backend's, the docs'), and `Strict-Transport-Security` when the
///    request came over TLS ([`Hsts`]).
///
/// One layer rather than six: each layer of the stack is paid on every request, and these
/// were a third of them.
pub async fn edge(State(hsts): State<Arc<Hsts>>, mut request: Request, next: Next) -> Response {
    let strict_transport = hsts.value.clone().filter(|_| hsts.over_tls(&request));
    keep_safe_request_id(request.headers_mut());
    let mut response = match refuse(&request) {
        None => next.run(request).await,
        Some(error) => refusal(request.headers().get(REQUEST_ID).cloned(), error).await,
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CONTENT_SECURITY_POLICY, CSP),
    ] {
        if !headers.contains_key(&name) {
            headers.insert(name, HeaderValue::from_static(value));
        }
    }
    if let Some(value) = strict_transport {
        headers.insert(header::STRICT_TRANSPORT_SECURITY, value);
    }
    response
}

/// Leaves exactly one `x-request-id` in `headers`: the client's when it is safe, else a new one.
fn keep_safe_request_id(headers: &mut HeaderMap) {
    let mut sent = headers.get_all(REQUEST_ID).iter();
    let keep = match (sent.next(), sent.next()) {
        (Some(id), None) if is_safe_request_id(id.as_bytes()) => true,
        (None, _) => false,
        (Some(id), _) => {
            tracing::debug!(len = id.len(), "replacing a client's request id that is unsafe to echo");
            false
        }
    };
    if !keep {
        let id = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a uuid is a header value");
        headers.insert(REQUEST_ID, id);
    }
}

/// The answer, in the envelope, to a request [`refuse`] refused; `id` is its request id.
async fn refusal(id: Option<HeaderValue>, error: ApiError) -> Response {
    tracing::info!(status = %error.status, refusal = %error.message, "request refused at the edge");
    let text = id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let mut response = crate::error::finish(text, error.into_response()).await;
    if let Some(id) = id {
        response.headers_mut().insert(REQUEST_ID, id);
    }
    // The client may still be sending; it need not keep the connection.
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

/// A request target longer than [`MAX_URI_BYTES`] (414), or headers past [`MAX_HEADERS`] or
/// [`MAX_HEADER_BYTES`] (431). hyper's own limits are set above these
/// (`bookstore_platform::server`), so what a client can make hyper parse gets this answer.
fn refuse(request: &Request) -> Option<ApiError> {
    let uri = request.uri();
    let target = uri.path_and_query().map_or(0, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            ErrorCode::BadRequest,
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ));
    }
    let headers = request.headers();
    if headers.len() > MAX_HEADERS {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::BadRequest,
            format!("a request may carry at most {MAX_HEADERS} headers"),
        ));
    }
    if header_bytes(headers) > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::BadRequest,
            format!("the request's headers take more than {MAX_HEADER_BYTES} bytes"),
        ));
    }
    None
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum()
}

/// A request body that did not arrive whole within its deadline ([`body_deadline`]).
#[derive(Debug)]
pub struct BodyTooSlow;

impl std::fmt::Display for BodyTooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTooSlow {}

/// A request's body must arrive whole within `limit` of its headers, however it trickles in
/// (a timeout between frames, as tower-http's, is kept alive by a byte every few seconds).
/// Past it, reading the body fails with [`BodyTooSlow`], which the handler's extractor turns
/// into 408 ([`crate::error`]), and the connection closes with the body unread.
pub async fn body_deadline(
    State(limit): State<std::time::Duration>,
    request: Request,
    next: Next,
) -> Response {
    use axum::body::{Body, HttpBody};
    use futures::StreamExt;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let deadline = tokio::time::Instant::now() + limit;
    let (parts, body) = request.into_parts();
    let chunks = futures::stream::unfold(Some(body.into_data_stream()), move |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(Ok(chunk))) => Some((Ok(chunk), Some(chunks))),
            Ok(Some(Err(e))) => Some((Err(axum::BoxError::from(e)), None)),
            Ok(None) => None,
            Err(_) => Some((Err(axum::BoxError::from(BodyTooSlow)), None)),
        }
    });
    next.run(Request::from_parts(parts, Body::from_stream(chunks))).await
}

/// A read anyone may make whose answer is the same for everyone: the catalog (`GET` books, a
/// book, a book's recommendations) and the API documents.
pub fn is_public_read(method: &Method, path: &str) -> bool {
    if method != Method::GET && method != Method::HEAD {
        return false;
    }
    if path == "/api/openapi.json" || path == "/api/asyncapi.json" {
        return true;
    }
    let Some(rest) = path.strip_prefix("/api/v1/books") else { return false };
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    rest.is_empty()
        || matches!(segments.as_slice(), [id] if !id.is_empty())
        || matches!(segments.as_slice(), [id, "recommendations"] if !id.is_empty())
}

/// `Cache-Control: no-store` on every API answer that is not a public read made anonymously
/// ([`is_public_read`]): tokens, personal data, orders, the queue, and every answer to a
/// signed-in caller stay out of shared and browser caches. A handler's own `Cache-Control` wins.
pub async fn no_store(request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let storable = !path.starts_with("/api/")
        || (is_public_read(request.method(), path) && !request.headers().contains_key(header::AUTHORIZATION));
    let mut response = next.run(request).await;
    if !storable && !response.headers().contains_key(header::CACHE_CONTROL) {
        response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Marks a request that reached the gateway over TLS: the listener inserts it on requests of a
/// TLS connection. `Strict-Transport-Security` is sent only on such requests, or on those a
/// trusted proxy says came over `https`.
pub use bookstore_platform::server::OverTls;

/// What `Strict-Transport-Security` the gateway sends, and to whom.
#[derive(Debug, Clone)]
pub struct Hsts {
    /// The header, or `None` when HSTS is off (`hsts_max_age_secs = 0`).
    pub value: Option<HeaderValue>,
    /// Proxies whose `X-Forwarded-Proto` is believed.
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

impl Hsts {
    pub fn new(max_age_secs: u64, trusted_proxies: Arc<[ipnet::IpNet]>) -> Self {
        let value = (max_age_secs > 0).then(|| {
            HeaderValue::from_str(&format!("max-age={max_age_secs}; includeSubDomains"))
                .expect("a number is a header value")
        });
        Self { value, trusted_proxies }
    }

    /// Whether `request` came over TLS ([`over_tls`]).
    pub fn over_tls(&self, request: &Request) -> bool {
        over_tls(request, &self.trusted_proxies)
    }
}

/// Whether `request` came over TLS: to this process, or to one of the `trusted_proxies` in front
/// (which says so in `X-Forwarded-Proto`).
pub fn over_tls(request: &Request, trusted_proxies: &[ipnet::IpNet]) -> bool {
    if request.extensions().get::<OverTls>().is_some() {
        return true;
    }
    let Some(ConnectInfo(peer)) = request.extensions().get::<ConnectInfo<SocketAddr>>() else {
        return false;
    };
    trusted_proxies.iter().any(|net| net.contains(&peer.ip()))
        && request
            .headers()
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_id_is_kept_only_when_short_and_of_safe_characters() {
        assert!(is_safe_request_id(b"0190b6a2-7c1e-7aa0-9c1e-1234567890ab"));
        assert!(is_safe_request_id(b"trace:span.1_a"));
        assert!(!is_safe_request_id(b""));
        assert!(!is_safe_request_id(b"<script>alert(1)</script>"));
        assert!(!is_safe_request_id(b"a b"));
        assert!(!is_safe_request_id(b"a\"b"));
        assert!(!is_safe_request_id("é".as_bytes()));
        assert!(is_safe_request_id(&[b'a'; REQUEST_ID_MAX_LEN]));
        assert!(!is_safe_request_id(&[b'a'; REQUEST_ID_MAX_LEN + 1]));
    }

    #[test]
    fn only_anonymous_catalog_reads_and_the_documents_are_public_reads() {
        for path in [
            "/api/v1/books",
            "/api/v1/books/0190b6a2",
            "/api/v1/books/0190b6a2/recommendations",
            "/api/openapi.json",
            "/api/asyncapi.json",
        ] {
            assert!(is_public_read(&Method::GET, path), "{path}");
            assert!(!is_public_read(&Method::POST, path), "POST {path}");
        }
        for path in [
            "/api/v1/books/0190b6a2/stock",
            "/api/v1/books//recommendations",
            "/api/v1/booksx",
            "/api/v1/users/me",
            "/api/v1/users/me/recommendations",
            "/api/v1/orders",
            "/api/v1/auth/login",
            "/api/v1/service-accounts",
            "/api/v1/fulfillment/queue",
        ] {
            assert!(!is_public_read(&Method::GET, path), "{path}");
        }
    }

    fn request(peer: &str, proto: Option<&str>) -> Request {
        let mut builder = Request::builder().uri("/");
        if let Some(proto) = proto {
            builder = builder.header("x-forwarded-proto", proto);
        }
        let mut request = builder.body(axum::body::Body::empty()).unwrap();
        request.extensions_mut().insert(ConnectInfo(peer.parse::<SocketAddr>().unwrap()));
        request
    }

    #[test]
    fn hsts_is_sent_only_for_tls_and_only_when_on() {
        let proxies: Arc<[ipnet::IpNet]> = vec!["10.0.0.0/8".parse().unwrap()].into();
        let hsts = Hsts::new(31_536_000, proxies.clone());
        assert_eq!(hsts.value.as_ref().unwrap(), "max-age=31536000; includeSubDomains");
        assert!(!hsts.over_tls(&request("10.0.0.1:1", None)), "plain HTTP");
        assert!(hsts.over_tls(&request("10.0.0.1:1", Some("https"))), "a trusted proxy's TLS");
        assert!(!hsts.over_tls(&request("192.0.2.1:1", Some("https"))), "anyone may claim https");
        assert!(!hsts.over_tls(&request("10.0.0.1:1", Some("https, http"))), "the proxy's own hop wins");
        let mut tls = request("192.0.2.1:1", None);
        tls.extensions_mut().insert(OverTls);
        assert!(hsts.over_tls(&tls), "TLS to this process");
        assert!(Hsts::new(0, proxies).value.is_none(), "off by default");
    }

    #[test]
    fn targets_and_headers_past_the_limits_are_refused_with_414_and_431() {
        let ok = Request::builder().uri("/api/v1/books?q=x").body(axum::body::Body::empty()).unwrap();
        assert!(refuse(&ok).is_none());
        let long = format!("/api/v1/books?q={}", "a".repeat(MAX_URI_BYTES));
        let long = Request::builder().uri(long).body(axum::body::Body::empty()).unwrap();
        assert_eq!(refuse(&long).unwrap().status, StatusCode::URI_TOO_LONG);
        let mut many = Request::builder().uri("/");
        for i in 0..=MAX_HEADERS {
            many = many.header(format!("x-h{i}"), "1");
        }
        let many = many.body(axum::body::Body::empty()).unwrap();
        assert_eq!(refuse(&many).unwrap().status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
        let big = Request::builder()
            .uri("/")
            .header("x-big", "a".repeat(MAX_HEADER_BYTES))
            .body(axum::body::Body::empty())
            .unwrap();
        assert_eq!(refuse(&big).unwrap().status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
}
