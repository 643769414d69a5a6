//! Who is calling, at the edge. The gateway verifies a presented token itself (a bad token is
//! refused here, before any service is bothered) and passes it on to the services, which verify
//! it again and decide what the caller may do: the resource holder has the last word.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
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
        self.0.as_ref().ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, "sign in first")
        })
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
            let mut response =
                ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthenticated, err.to_string())
                    .into_response();
            response.headers_mut().insert(
                axum::http::header::WWW_AUTHENTICATE,
                axum::http::HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
            response
        }
    }
}
