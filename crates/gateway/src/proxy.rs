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
//! untouched: the gateway's error envelope applies only to what the gateway itself refuses (no
//! backend available: 503; over time: 504). Pass-through calls are not retried: the gateway
//! cannot know they are safe to repeat.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bookstore_platform::balance::{Board, PeerChannel, Refused, ResilienceConfig};
use bookstore_platform::discovery::{MAX_WEIGHT, Source, Target};
use serde::{Deserialize, Serialize};
use tower::ServiceExt;

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
        for b in &route.backends {
            anyhow::ensure!(
                (1..=MAX_WEIGHT).contains(&b.weight),
                "invalid configuration: gateway.routes: {p:?}: weight must be from 1 to {MAX_WEIGHT}"
            );
            let url = url::Url::parse(&b.url).map_err(|e| {
                anyhow::anyhow!("invalid configuration: gateway.routes: {p:?}: {:?}: {e}", b.url)
            })?;
            anyhow::ensure!(
                url.scheme() == "http" && url.path() == "/" && url.query().is_none(),
                "invalid configuration: gateway.routes: {p:?}: a backend is http://host:port, not {:?}",
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
    trusted_proxies: Arc<[ipnet::IpNet]>,
}

/// The routes as one router, their channels on `board` (the admin listener's `/status`).
pub async fn router(
    routes: &[Route],
    config: ResilienceConfig,
    board: &Board,
    trusted_proxies: Arc<[ipnet::IpNet]>,
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
        let state =
            Arc::new(RouteState { route: route.clone(), channel, trusted_proxies: trusted_proxies.clone() });
        router = router.merge(
            Router::new()
                .route(&route.prefix, any(pass_through))
                .route(&format!("{}/{{*rest}}", route.prefix), any(pass_through))
                .with_state(state),
        );
    }
    Ok(router)
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

async fn pass_through(State(state): State<Arc<RouteState>>, request: Request) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let (mut parts, body) = request.into_parts();
    let path = parts.uri.path();
    let path = match state.route.strip_prefix {
        true => match path.strip_prefix(state.route.prefix.as_str()).unwrap_or(path) {
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
        let client = crate::client::client_address(peer, &parts.headers, &state.trusted_proxies);
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
    parts.uri = match path_and_query.parse() {
        Ok(uri) => uri,
        Err(_) => return crate::error::ApiError::invalid("the path cannot be passed on").into_response(),
    };
    parts.version = axum::http::Version::HTTP_11;
    let request = http::Request::from_parts(parts, tonic::body::Body::new(body));
    let response = match state.channel.clone().oneshot(request).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(route = state.route.prefix, error = %e, "pass-through failed");
            return crate::error::ApiError::new(
                axum::http::StatusCode::BAD_GATEWAY,
                crate::error::ErrorCode::Unavailable,
                "the backend failed",
            )
            .into_response();
        }
    };
    // No backend answered: the gateway's own refusal, in its envelope (with Retry-After).
    if let Some(Refused(status)) = response.extensions().get::<Refused>().cloned() {
        return crate::error::ApiError::from(status).into_response();
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    parts.extensions.insert(PassedThrough);
    Response::from_parts(parts, axum::body::Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, urls: &[&str]) -> Route {
        Route {
            prefix: prefix.into(),
            strip_prefix: false,
            backends: urls.iter().map(|u| Backend { url: (*u).into(), weight: 1 }).collect(),
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
        assert!(err(route("/ext", &["http://a:1/path"])).contains("http://host:port"));
        let twice = [route("/ext", &["http://a:1"]), route("/ext", &["http://b:1"])];
        assert!(check_routes(&twice).unwrap_err().to_string().contains("twice"));
    }
}
