//! Pass-through routes: a path prefix proxied to HTTP backends, as Traefik's routers and
//! weighted services do, over the same balancer, breakers and outlier ejection as every gRPC
//! client ([`bookstore_platform::balance`]).
//!
//! ```toml
//! [[gateway.routes]]
//! prefix = "/ext/inventory"
//! strip_prefix = true
//! backends = [{ url = "http://127.0.0.1:9001", weight = 3 }, { url = "http://127.0.0.1:9002", weight = 1 }]
//! ```
//!
//! The request goes on as it came (method, path, query, headers, body, streamed both ways), less
//! hop-by-hop headers, plus `X-Forwarded-For`/`-Proto`/`-Host`. The backend's answer comes back
//! untouched (not recompressed, no envelope): the gateway's error envelope applies only to what
//! the gateway itself refuses (no backend available: 503; over time: 504; over the client's
//! rate limit: 429). Pass-through calls are not retried: the gateway cannot know they are safe
//! to repeat. A backend is `http://host:port` (HTTP/1.1, pooled keep-alive connections) or
//! `h2c://host:port` (HTTP/2 without TLS, requests multiplexed on one connection).
//!
//! Routes take a path of their own in front of the API's middleware stack: one handler counts
//! the request against the concurrency limit and the client's rate limit, sets the request id,
//! forwards, and records the route's metrics through handles it keeps, instead of eight layers
//! that each box a future and build their labels anew (`bench/pass-through.sh` measures it).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bookstore_platform::balance::{Board, PeerChannel, Refused, ResilienceConfig};
use bookstore_platform::discovery::{MAX_WEIGHT, Source, Target};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::edge::{self, RateLimiter};
use crate::error::{ApiError, ErrorCode};

/// One `[[gateway.routes]]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// The path prefix it serves, e.g. `/ext/inventory` (matched on whole segments).
    pub prefix: String,
    /// Whether the prefix is removed before the request goes on.
    #[serde(default)]
    pub strip_prefix: bool,
    pub backends: Vec<Backend>,
    /// Active health checks of the backends, when given.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
}

/// `health_check = { path = "/healthz", interval_ms = 5000 }`: every interval, each backend
/// gets `GET path`; two failures in a row take it out of the draw, one success brings it back
/// ([`PeerChannel::check_health`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub path: String,
    #[serde(default = "five_seconds")]
    pub interval_ms: u64,
}

fn five_seconds() -> u64 {
    5000
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Backend {
    pub url: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}

/// Marks a response that came from a backend, so the error envelope leaves it alone.
#[derive(Debug, Clone, Copy)]
pub struct PassedThrough;

/// Paths the gateway answers itself; a route may not take them.
const OWN: &[&str] = &["/api", "/docs", "/.well-known"];

pub fn check_routes(routes: &[Route]) -> anyhow::Result<()> {
    for route in routes {
        let p = &route.prefix;
        anyhow::ensure!(
            p.starts_with('/') && p.len() > 1 && !p.ends_with('/') && !p.contains(['{', '}', '*']),
            "invalid configuration: gateway.routes: prefix {p:?} must look like /name[/name...]"
        );
        anyhow::ensure!(
            !OWN.iter().any(|own| p == own || p.starts_with(&format!("{own}/"))),
            "invalid configuration: gateway.routes: prefix {p:?} is the gateway's own"
        );
        anyhow::ensure!(
            !route.backends.is_empty(),
            "invalid configuration: gateway.routes: {p:?} has no backends"
        );
        if let Some(check) = &route.health_check {
            anyhow::ensure!(
                check.path.starts_with('/') && check.path.parse::<http::uri::PathAndQuery>().is_ok(),
                "invalid configuration: gateway.routes: {p:?}: health_check.path {:?} must be a path",
                check.path
            );
            anyhow::ensure!(
                check.interval_ms >= 100,
                "invalid configuration: gateway.routes: {p:?}: health_check.interval_ms must be at least 100"
            );
        }
        for b in &route.backends {
            anyhow::ensure!(
                (1..=MAX_WEIGHT).contains(&b.weight),
                "invalid configuration: gateway.routes: {p:?}: weight must be from 1 to {MAX_WEIGHT}"
            );
            let url = url::Url::parse(&b.url).map_err(|e| {
                anyhow::anyhow!("invalid configuration: gateway.routes: {p:?}: {:?}: {e}", b.url)
            })?;
            anyhow::ensure!(
                matches!(url.scheme(), "http" | "h2c")
                    && url.host().is_some()
                    && url.path().trim_start_matches('/').is_empty()
                    && url.query().is_none(),
                "invalid configuration: gateway.routes: {p:?}: a backend is http://host:port or \
                 h2c://host:port, not {:?}",
                b.url
            );
        }
    }
    let mut prefixes: Vec<&str> = routes.iter().map(|r| r.prefix.as_str()).collect();
    prefixes.sort_unstable();
    let count = prefixes.len();
    prefixes.dedup();
    anyhow::ensure!(prefixes.len() == count, "invalid configuration: gateway.routes: a prefix appears twice");
    Ok(())
}

struct RouteState {
    route: Route,
    channel: PeerChannel,
    edge: Shared,
    metrics: RouteMetrics,
}

/// What every route shares with the API: the client's rate limit, the gateway's concurrency
/// limit, and the proxies whose `X-Forwarded-For` is believed.
#[derive(Clone)]
pub struct Shared {
    pub limiter: Arc<RateLimiter>,
    pub permits: Arc<Semaphore>,
    pub trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// The routes as one router, their channels on `board` (the admin listener's `/status`). Each
/// route's handler does its own edge work (see the module's documentation), so the router goes
/// beside the API's middleware stack, not under it.
pub async fn router(
    routes: &[Route],
    config: ResilienceConfig,
    board: &Board,
    edge: Shared,
) -> anyhow::Result<Router> {
    let mut router = Router::new();
    for route in routes {
        let targets = route
            .backends
            .iter()
            .map(|b| Target { url: b.url.trim_end_matches('/').to_owned(), weight: b.weight })
            .collect();
        let channel = PeerChannel::http(
            crate::SERVICE,
            &format!("route {}", route.prefix),
            Source::Static(targets),
            config,
        )
        .await?;
        board.register(&channel);
        if let Some(check) = &route.health_check {
            channel.check_health(&check.path, Duration::from_millis(check.interval_ms));
        }
        let state = Arc::new(RouteState {
            route: route.clone(),
            channel,
            edge: edge.clone(),
            metrics: RouteMetrics::new(&route.prefix),
        });
        router = router.merge(
            Router::new()
                .route(&route.prefix, any(pass_through))
                .route(&format!("{}/{{*rest}}", route.prefix), any(pass_through))
                .with_state(state),
        );
    }
    Ok(router)
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The request and error counters and the latency histogram of one route, per method and
/// status, looked up once and kept (the first request of a kind registers them).
struct RouteMetrics {
    route: String,
    handles: RwLock<HashMap<(Method, u16), Handles>>,
}

struct Handles {
    requests: metrics::Counter,
    errors: Option<metrics::Counter>,
    duration: metrics::Histogram,
}

/// Kinds of (method, status) a route keeps handles for; a client inventing methods cannot grow
/// the map past it (its requests are still counted, through the registry).
const KEPT_KINDS: usize = 64;

impl RouteMetrics {
    fn new(route: &str) -> Self {
        Self { route: format!("{route}/{{*rest}}"), handles: RwLock::default() }
    }

    fn record(&self, method: &Method, status: StatusCode, took: Duration) {
        let key = (method.clone(), status.as_u16());
        if let Some(handles) = self.handles.read().expect("metrics lock").get(&key) {
            handles.record(took);
            return;
        }
        let (service, method, route) = (crate::SERVICE, method.to_string(), self.route.clone());
        let handles = Handles {
            requests: metrics::counter!("http_server_requests_total", "service" => service, "method" => method.clone(), "route" => route.clone(), "status" => status.as_u16().to_string()),
            errors: status.is_server_error().then(|| {
                metrics::counter!("http_server_errors_total", "service" => service, "method" => method.clone(), "route" => route.clone())
            }),
            duration: metrics::histogram!("http_server_request_duration_seconds", "service" => service, "method" => method, "route" => route),
        };
        handles.record(took);
        let mut kept = self.handles.write().expect("metrics lock");
        if kept.len() < KEPT_KINDS {
            kept.insert(key, handles);
        }
    }
}

impl Handles {
    fn record(&self, took: Duration) {
        self.requests.increment(1);
        if let Some(errors) = &self.errors {
            errors.increment(1);
        }
        self.duration.record(took.as_secs_f64());
    }
}

/// Headers that belong to one connection, not to the request (RFC 9110, 7.6.1).
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut axum::http::HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    for name in &named {
        headers.remove(name);
    }
}

async fn pass_through(State(state): State<Arc<RouteState>>, mut request: Request) -> Response {
    let started = Instant::now();
    let method = request.method().clone();
    let request_id = match request.headers().get(REQUEST_ID) {
        Some(id) => id.clone(),
        None => {
            let id =
                HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).expect("a uuid is a header value");
            request.headers_mut().insert(REQUEST_ID, id.clone());
            id
        }
    };
    let mut response = match state.admit_and_forward(request).await {
        Ok(response) => response,
        Err(own) => crate::error::finish(request_id.to_str().unwrap_or_default().to_owned(), own).await,
    };
    response.headers_mut().insert(REQUEST_ID, request_id);
    state.metrics.record(&method, response.status(), started.elapsed());
    response
}

impl RouteState {
    /// The backend's answer, or the gateway's own refusal (written into the envelope by the
    /// caller): overloaded, over the client's rate limit, no backend available.
    async fn admit_and_forward(&self, request: Request) -> Result<Response, Response> {
        let Some(_in_flight) = edge::admit_in_flight(&self.edge.permits) else {
            return Err(edge::overloaded());
        };
        let standing = match self.edge.limiter.enabled() {
            true => Some(self.edge.limiter.admit(&request).await?),
            false => None,
        };
        let mut response = self.forward(request).await?;
        if let Some(standing) = standing {
            self.edge.limiter.stamp(&mut response, standing);
        }
        Ok(response)
    }

    async fn forward(&self, request: Request) -> Result<Response, Response> {
        let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
        let (mut parts, body) = request.into_parts();
        let path = parts.uri.path();
        let path = match self.route.strip_prefix {
            true => match path.strip_prefix(self.route.prefix.as_str()).unwrap_or(path) {
                "" => "/",
                rest => rest,
            },
            false => path,
        };
        let path_and_query = match parts.uri.query() {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        let host = parts.headers.get(header::HOST).cloned();
        strip_hop_by_hop(&mut parts.headers);
        if let Some(peer) = peer {
            let client = crate::client::client_address(peer, &parts.headers, &self.edge.trusted_proxies);
            let chain = match parts.headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
                // Only a trusted proxy's chain is passed on; anyone else's is replaced.
                Some(chain) if client != peer => format!("{chain}, {peer}"),
                _ => peer.to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&chain) {
                parts.headers.insert("x-forwarded-for", value);
            }
        }
        parts.headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        if let Some(host) = host {
            parts.headers.insert("x-forwarded-host", host);
        }
        parts.uri = path_and_query
            .parse()
            .map_err(|_| ApiError::invalid("the path cannot be passed on").into_response())?;
        // The backend's own protocol is the connector's business (HTTP/1.1 or h2c).
        parts.version = axum::http::Version::HTTP_11;
        let request = http::Request::from_parts(parts, tonic::body::Body::new(body));
        let response = self.channel.clone().oneshot(request).await.map_err(|e| {
            tracing::warn!(route = self.route.prefix, error = %e, "pass-through failed");
            ApiError::new(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, "the backend failed")
                .into_response()
        })?;
        // No backend answered: the gateway's own refusal, in its envelope (with Retry-After).
        if let Some(Refused(status)) = response.extensions().get::<Refused>().cloned() {
            return Err(ApiError::from(status).into_response());
        }
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.extensions.insert(PassedThrough);
        Ok(Response::from_parts(parts, axum::body::Body::new(body)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, urls: &[&str]) -> Route {
        Route {
            prefix: prefix.into(),
            strip_prefix: false,
            backends: urls.iter().map(|u| Backend { url: (*u).into(), weight: 1 }).collect(),
            health_check: None,
        }
    }

    #[test]
    fn routes_are_checked_before_the_start() {
        assert!(check_routes(&[route("/ext/inventory", &["http://127.0.0.1:9001"])]).is_ok());
        let err = |r: Route| check_routes(&[r]).unwrap_err().to_string();
        assert!(err(route("ext", &["http://a:1"])).contains("must look like"));
        assert!(err(route("/ext/", &["http://a:1"])).contains("must look like"));
        assert!(err(route("/api/things", &["http://a:1"])).contains("the gateway's own"));
        assert!(err(route("/ext", &[])).contains("no backends"));
        assert!(err(route("/ext", &["https://a:1"])).contains("http://host:port"));
        assert!(check_routes(&[route("/ext", &["h2c://127.0.0.1:9001"])]).is_ok());
        assert!(err(route("/ext", &["http://a:1/path"])).contains("http://host:port"));
        let mut checked = route("/ext", &["http://a:1"]);
        checked.health_check = Some(HealthCheck { path: "healthz".into(), interval_ms: 1000 });
        assert!(err(checked.clone()).contains("must be a path"));
        checked.health_check = Some(HealthCheck { path: "/healthz".into(), interval_ms: 10 });
        assert!(err(checked).contains("at least 100"));
        let twice = [route("/ext", &["http://a:1"]), route("/ext", &["http://b:1"])];
        assert!(check_routes(&twice).unwrap_err().to_string().contains("twice"));
    }
}
