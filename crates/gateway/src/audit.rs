//! The audit trail at the edge: every change staff, an admin or a service account asks of the
//! API or the pages (every method but `GET`, `HEAD` and `OPTIONS`, refused attempts included),
//! and every action on the queue's socket (`WS move` and the rest), is recorded
//! with who (the verified caller, as the users service reads it from the token), what (the
//! operation and the path acted on), when, from where (the client's address, kept encrypted),
//! the request id and the answer's status; `GET /api/v1/audit` reads it (admins).
//!
//! The entry is written before the answer leaves, so an answered change has its entry. When the
//! users service cannot take it, the answer still goes (the change is done), and the entry goes
//! to the log at error level (`audit entry not recorded`, with every field) and
//! `audit_failures_total` counts it.

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use bookstore_api::users::v1 as pb;
use bookstore_platform::auth::Role;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::{Auth, Caller};
use crate::error::{ApiError, ErrorBody, Json, Query};

/// Records the request in the audit trail when it is a change by staff, an admin or a service
/// account (a route layer: it knows the matched route).
pub async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    // Reads are never audited: decide on the method before touching the caller.
    if matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(request).await;
    }
    let caller = match request.extensions().get::<Caller>() {
        Some(c) if c.identity.has_any(&[Role::Staff, Role::Admin, Role::Service]) => Some(c.clone()),
        _ => return next.run(request).await,
    };
    let route = request.extensions().get::<MatchedPath>().map(|p| p.as_str().to_owned()).unwrap_or_default();
    let action = format!("{} {route}", request.method());
    let target = request.uri().path().to_owned();
    let request_id =
        request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let address = address_of(request.extensions(), request.headers(), &state);
    let response = next.run(request).await;
    let entry = pb::RecordAuditRequest {
        action,
        target,
        status: i32::from(response.status().as_u16()),
        request_id,
        address,
    };
    write(&state, &Auth(caller), entry).await;
    response
}

/// Appends `entry`, an action of the caller in `auth`, to the audit trail; when the users
/// service cannot take it, logs it whole and counts the failure.
pub async fn write(state: &AppState, auth: &Auth, entry: pb::RecordAuditRequest) {
    if let Err(status) = state.users.clone().record_audit(state.request(entry.clone(), auth)).await {
        metrics::counter!("audit_failures_total", "service" => crate::SERVICE).increment(1);
        tracing::error!(
            actor = auth.0.as_ref().map(|c| c.identity.subject.as_str()).unwrap_or_default(),
            action = entry.action,
            target = entry.target,
            status = entry.status,
            request_id = entry.request_id,
            error = %status.message(),
            "audit entry not recorded"
        );
    }
}

/// The client's address, through the proxies the gateway trusts.
fn address_of(
    extensions: &axum::http::Extensions,
    headers: &axum::http::HeaderMap,
    state: &AppState,
) -> String {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| crate::client::client_address(c.0.ip(), headers, &state.trusted_proxies).to_string())
        .unwrap_or_default()
}

/// The client's address, for a handler that records actions of its own (the queue's socket).
pub struct ClientAddress(pub String);

impl axum::extract::FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(Self(address_of(&parts.extensions, &parts.headers, state)))
    }
}

/// Which entries to read.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AuditParams {
    /// Only this subject's (a user id, or a service account's client id).
    pub actor: Option<String>,
    /// Only this operation, as `METHOD /api/v1/path/{template}`.
    pub action: Option<String>,
    /// Only entries at or after this time (ms since the epoch).
    pub since: Option<i64>,
    /// At most this many (1 to 1000, default 100).
    pub limit: Option<i32>,
}

/// An action in the audit trail.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditEntry {
    pub id: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Who: a user id, or a service account's client id.
    pub actor: String,
    /// The actor's roles then.
    pub roles: Vec<String>,
    /// The operation, e.g. `POST /api/v1/books/{id}/stock`.
    pub action: String,
    /// The path acted on, e.g. `/api/v1/books/0190.../stock`.
    pub target: String,
    /// The answer's HTTP status: refused attempts are recorded too.
    pub status: i32,
    pub request_id: String,
    /// The client's address.
    pub address: String,
}

/// The audit trail, newest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
}

/// The audit trail: every change by staff, admins and service accounts, newest first (admin).
#[utoipa::path(get, path = "/api/v1/audit", tag = "users", params(AuditParams), security(("bearer" = [])),
    responses(
        (status = 200, description = "Entries, newest first", body = AuditPage),
        (status = 400, description = "A bad filter", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Admin only", body = ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    Query(params): Query<AuditParams>,
) -> Result<Json<AuditPage>, ApiError> {
    auth.required()?;
    let request = pb::ListAuditRequest {
        actor: params.actor.unwrap_or_default(),
        action: params.action.unwrap_or_default(),
        since_ms: params.since.unwrap_or(0),
        limit: params.limit.unwrap_or(0),
    };
    let listed = state.users.clone().list_audit(state.request(request, &auth)).await?.into_inner();
    let items = listed
        .entries
        .into_iter()
        .map(|e| AuditEntry {
            id: e.id,
            at_ms: e.at_ms,
            actor: e.actor,
            roles: e.roles,
            action: e.action,
            target: e.target,
            status: e.status,
            request_id: e.request_id,
            address: e.address,
        })
        .collect();
    Ok(Json(AuditPage { items }))
}
