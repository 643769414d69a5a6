//! What a service account must be granted for each route: one table, which the gateway
//! enforces ([`require_scope`]) and the OpenAPI document states (the `oauth2` scheme on each
//! operation). People are governed by their roles alone; a service account may call only the
//! routes listed here, with the scope listed (the services check the same scopes again).

use axum::extract::{MatchedPath, Request};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bookstore_platform::auth::Role;

use crate::auth::Caller;
use crate::error::{ApiError, ErrorCode};

/// (method, route, scope) for every route a service account may call.
pub const ROUTE_SCOPES: &[(Method, &str, &str)] = &[
    (Method::GET, "/api/v1/books", "books:read"),
    (Method::GET, "/api/v1/books/{id}", "books:read"),
    (Method::GET, "/api/v1/books/{id}/recommendations", "books:read"),
    (Method::POST, "/api/v1/books", "books:write"),
    (Method::PATCH, "/api/v1/books/{id}", "books:write"),
    (Method::DELETE, "/api/v1/books/{id}", "books:write"),
    (Method::POST, "/api/v1/books/{id}/stock", "books:write"),
    (Method::GET, "/api/v1/orders", "orders:read"),
    (Method::GET, "/api/v1/orders/{id}", "orders:read"),
    (Method::POST, "/api/v1/orders/{id}/cancel", "orders:write"),
    (Method::POST, "/api/v1/orders/{id}/status", "orders:write"),
    (Method::GET, "/api/v1/fulfillment/queue", "queue:read"),
    (Method::POST, "/api/v1/fulfillment/tasks/{id}/move", "queue:write"),
    (Method::POST, "/api/v1/fulfillment/tasks/{id}/claim", "queue:write"),
    (Method::POST, "/api/v1/fulfillment/tasks/{id}/advance", "queue:write"),
    (Method::POST, "/api/v1/fulfillment/tasks/{id}/remove", "queue:write"),
];

/// The scope a service account needs for `method` on `route`; `None`: not for service accounts.
pub fn scope_for(method: &Method, route: &str) -> Option<&'static str> {
    ROUTE_SCOPES.iter().find(|(m, r, _)| m == method && *r == route).map(|(_, _, scope)| *scope)
}

/// Refuses (403, in the envelope) a service account's call to a route without the scope it
/// needs, or to a route that is not for service accounts. Runs after routing (a route layer).
pub async fn require_scope(request: Request, next: Next) -> Response {
    let Some(caller) = request.extensions().get::<Caller>() else { return next.run(request).await };
    if !caller.identity.has(Role::Service) {
        return next.run(request).await;
    }
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or_default();
    let refusal = match scope_for(request.method(), route) {
        Some(scope) if caller.identity.scopes.iter().any(|s| s == scope) => return next.run(request).await,
        Some(scope) => format!("this needs the {scope} scope"),
        None => "service accounts may not call this".to_owned(),
    };
    ApiError::new(StatusCode::FORBIDDEN, ErrorCode::PermissionDenied, refusal).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scope_a_route_needs_is_one_a_service_account_can_be_granted() {
        for (method, route, scope) in ROUTE_SCOPES {
            assert!(
                bookstore_platform::auth::SCOPES.iter().any(|(name, _)| name == scope),
                "{method} {route} needs {scope}, which no account can hold"
            );
        }
        assert_eq!(scope_for(&Method::POST, "/api/v1/books"), Some("books:write"));
        assert_eq!(scope_for(&Method::POST, "/api/v1/orders"), None, "checkout is for people");
    }
}
