//! The shop in a browser: pages the gateway renders itself, served from the binary.
//!
//! Each page is a view of the REST API: its handler calls the API's own handler (the same
//! checks, the same degraded answers when a service is down, the same errors) and renders the
//! answer as HTML with maud, which escapes every value it is given. Every reading page and every
//! form works without JavaScript; two small scripts of ours add what needs it (the staff's live
//! queue, live order status), and the Content-Security-Policy ([`PAGE_CSP`]) allows no other. The browser never holds a token: [`session`] keeps
//! the tokens in httpOnly cookies and a CSRF token guards every form.
//!
//! - [`shop`]: the catalog (search, paging), a book with its recommendations, my orders;
//! - [`cart`]: the cart (a cookie of book ids and quantities) and checkout;
//! - [`account`]: register, sign in, sign out;
//! - [`staff`]: the live fulfillment queue, and the catalog's books;
//! - [`admin`]: accounts and roles, service accounts.

pub mod account;
pub mod admin;
pub mod assets;
pub mod cart;
pub mod layout;
pub mod session;
pub mod shop;
pub mod staff;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use bookstore_platform::auth::Verifier;
use serde::de::DeserializeOwned;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::AppState;
use crate::error::{ApiError, ErrorCode};

/// The Content-Security-Policy of the pages: nothing but our own stylesheet and scripts (no
/// inline script or style), connections and forms to ourselves alone; no frames, no plugins.
pub const PAGE_CSP: &str = "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'self'; \
                            img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// What the pages share.
pub struct Web {
    pub state: AppState,
    pub verifier: Arc<Verifier>,
    pub refreshes: session::Refreshes,
}

/// The pages, over the API's handlers in `state`, with sessions checked by `verifier`. The
/// gateway's stack (request ids, metrics, compression, limits) goes around them as it goes
/// around the API.
pub fn router(state: AppState, verifier: Arc<Verifier>) -> Router {
    let web = Arc::new(Web { state: state.clone(), verifier, refreshes: session::Refreshes::default() });
    let pages = Router::new()
        .route("/", get(shop::catalog))
        .route("/books/{id}", get(shop::book))
        .route("/orders", get(shop::orders))
        .route("/orders/{id}", get(shop::order))
        // The API's own stream and socket, signed in by the session cookie for the pages' scripts.
        .route("/orders/events", get(crate::orders::order_events))
        .route("/staff/queue", get(staff::queue))
        .route("/staff/queue/ws", get(crate::live::queue_socket))
        .route("/staff/books/new", get(staff::new_book_form).post(staff::create_book))
        .route("/staff/books/{id}/edit", get(staff::edit_book_form).post(staff::edit_book))
        .route("/staff/books/{id}/stock", post(staff::adjust_stock))
        .route("/admin/users", get(admin::users))
        .route("/admin/users/{id}/role", post(admin::set_role))
        .route("/admin/service-accounts", get(admin::service_accounts).post(admin::create_service_account))
        .route("/admin/service-accounts/{client_id}/rotate", post(admin::rotate))
        .route("/admin/service-accounts/{client_id}/revoke", post(admin::revoke))
        .route("/cart", get(cart::show).post(cart::change))
        .route("/checkout", get(cart::checkout_form).post(cart::checkout))
        .route("/signin", get(account::sign_in_form).post(account::sign_in))
        .route("/register", get(account::register_form).post(account::register))
        .route("/signout", post(account::sign_out))
        // Staff's and admins' changes through the pages are in the audit trail as through the API.
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::audit::record))
        .with_state(state)
        .layer(axum::middleware::from_fn_with_state(web, session::sessions))
        // Every page carries its visitor's CSRF token, and some their orders: no cache keeps one.
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CACHE_CONTROL,
            HeaderValue::from_static("no-store"),
        ));
    // Assets need no session: a stylesheet fetched beside a page must not race it for a refresh.
    Router::new()
        .merge(pages)
        .route("/static/{file}", get(assets::serve))
        // No icon: an answer, so browsers stop asking.
        .route("/favicon.ico", get(|| async { axum::http::StatusCode::NO_CONTENT }))
        .layer(SetResponseHeaderLayer::overriding(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_CSP),
        ))
        // Our own forms must say where they come from: under `no-referrer` a browser sends
        // `Origin: null`, which [`session`] refuses. Other sites still learn nothing.
        .layer(SetResponseHeaderLayer::overriding(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        ))
}

/// The value in a JSON answer of one of the API's handlers, and whether it was served degraded
/// (a saved copy, or a fallback).
pub async fn answer_of<T: DeserializeOwned>(
    answer: Result<Response, ApiError>,
) -> Result<(T, bool), ApiError> {
    let response = answer?;
    let degraded = response.headers().contains_key(crate::stale::DEGRADED);
    let bytes =
        axum::body::to_bytes(Body::new(response.into_body()), usize::MAX).await.map_err(unreadable)?;
    let value = serde_json::from_slice(&bytes).map_err(unreadable)?;
    Ok((value, degraded))
}

fn unreadable(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "a page could not read the API's answer");
    ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, "internal error")
}
