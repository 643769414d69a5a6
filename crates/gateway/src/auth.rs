//! Who is calling, at the edge. The gateway verifies a presented token itself (a bad token is
//! refused here, before any service is bothered) and passes it on to the services, which verify
//! it again and decide what the caller may do: the resource holder has the last word.

use std::sync::Arc;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bookstore_platform::auth::{AuthError, Identity, Verifier, bearer};

use crate::error::{ApiError, ErrorCode};

/// A verified caller and the token it presented.
#[derive(Debug, Clone)]
pub struct Caller {
    pub identity: Identity,
    pub token: String,
}

/// The caller, if the request carried a valid token.
#[derive(Debug, Clone, Default)]
pub struct Auth(pub Option<Caller>);

impl Auth {
    /// The caller, or 401.
    pub fn required(&self) -> Result<&Caller, ApiError> {
        self.0.as_ref().ok_or_else(sign_in_first)
    }

    /// Wraps a gRPC message with the caller's token.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(caller) = &self.0
            && let Ok(value) = format!("Bearer {}", caller.token).parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Auth {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<Caller>().cloned()))
    }
}

fn sign_in_first() -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, "sign in first")
}

/// Verifies `Authorization: Bearer` when present; an invalid token is 401 at once.
pub async fn authenticate(
    State(verifier): State<Arc<Verifier>>,
    mut request: Request,
    next: Next,
) -> Response {
    let Some(token) = bearer(request.headers()).map(str::to_owned) else {
        return next.run(request).await;
    };
    match verifier.verify(&token).await {
        Ok(identity) => {
            request.extensions_mut().insert(Caller { identity, token });
            next.run(request).await
        }
        Err(AuthError::KeysUnavailable) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Unavailable,
            "cannot verify tokens right now",
        )
        .into_response(),
        Err(err) => {
            // Why it failed is for the log; the client learns only that it did (or that it
            // expired, which a client acts on and which tells an attacker nothing).
            tracing::info!(error = %err, "refused a token");
            let message = match err {
                AuthError::Expired => "the token has expired",
                _ => "the token is not valid",
            };
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, message).into_response();
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer error=\"invalid_token\""));
            response
        }
    }
}

/// Routes anyone may call without a token: (method, route as the router knows it). Every other
/// route of the API needs a signed-in caller ([`require_signed_in`]). The live queue's
/// WebSocket is here because it authenticates by its first message, not by a header.
pub const PUBLIC_ROUTES: &[(Method, &str)] = &[
    (Method::GET, "/api/v1/books"),
    (Method::GET, "/api/v1/books/{id}"),
    (Method::GET, "/api/v1/books/{id}/recommendations"),
    (Method::POST, "/api/v1/auth/register"),
    (Method::POST, "/api/v1/auth/login"),
    (Method::POST, "/api/v1/auth/refresh"),
    (Method::POST, "/api/v1/auth/logout"),
    (Method::POST, "/api/v1/auth/token"),
    (Method::GET, "/.well-known/jwks.json"),
    (Method::GET, "/api/v1/fulfillment/queue/ws"),
];

/// Whether `method` on `route` is an operation of the API, as its OpenAPI document states
/// (`HEAD` as `GET`; the live queue's WebSocket, which the document leaves to AsyncAPI, too).
pub fn is_operation(method: &Method, route: &str) -> bool {
    static OPERATIONS: std::sync::LazyLock<std::collections::HashSet<(String, String)>> =
        std::sync::LazyLock::new(|| {
            use utoipa::OpenApi;
            let mut operations = std::collections::HashSet::new();
            for (path, item) in crate::openapi::ApiDoc::openapi().paths.paths {
                for (method, operation) in [
                    ("GET", &item.get),
                    ("POST", &item.post),
                    ("PATCH", &item.patch),
                    ("DELETE", &item.delete),
                ] {
                    if operation.is_some() {
                        operations.insert((method.to_owned(), path.clone()));
                    }
                }
            }
            operations
        });
    let method = if method == Method::HEAD { &Method::GET } else { method };
    is_public(method, route) || OPERATIONS.contains(&(method.as_str().to_owned(), route.to_owned()))
}

/// Whether `method` on `route` may be called without a token (`HEAD` as `GET`).
pub fn is_public(method: &Method, route: &str) -> bool {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    PUBLIC_ROUTES.iter().any(|(m, r)| m == method && *r == route)
}

/// Refuses (401, in the envelope, with `WWW-Authenticate: Bearer`) an anonymous call to a route
/// that is not public, before its handler reads the body or the path: an anonymous client
/// learns nothing about what a protected operation would accept. Runs after routing (a route
/// layer), after the token check.
pub async fn require_signed_in(request: Request, next: Next) -> Response {
    let route = request.extensions().get::<MatchedPath>().map(MatchedPath::as_str).unwrap_or_default();
    if request.extensions().get::<Caller>().is_some()
        || is_public(request.method(), route)
        // A method the route does not have is 405 for anyone: nothing to protect.
        || !is_operation(request.method(), route)
    {
        return next.run(request).await;
    }
    let mut response = sign_in_first().into_response();
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}
