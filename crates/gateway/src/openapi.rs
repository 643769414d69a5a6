//! The OpenAPI document, generated from the handlers' annotations; and beside it the AsyncAPI
//! document of what the gateway streams (the queue's WebSocket, customers' order events),
//! written by hand in `asyncapi.json` and checked against the socket's parser by its tests.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::{audit, books, fulfillment, orders, recommendations, users};

/// The AsyncAPI document, served at `/api/asyncapi.json`.
pub const ASYNCAPI: &str = include_str!("../asyncapi.json");

pub async fn asyncapi() -> impl axum::response::IntoResponse {
    ([(axum::http::header::CONTENT_TYPE, "application/json")], ASYNCAPI)
}

/// Declares the bearer scheme, so Swagger UI's Authorize button takes an access token.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build(),
            ),
        );
    }
}

/// Declares the OAuth2 client-credentials scheme with every scope a service account can hold,
/// and puts on each operation the scope a service account needs for it ([`crate::scopes`]), so
/// Swagger UI's Authorize button gets a token for them, and the document says what the gateway
/// enforces.
struct OAuth2Scopes;

impl Modify for OAuth2Scopes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ClientCredentials, Flow, OAuth2, Scopes, SecurityRequirement};
        let scopes = Scopes::from_iter(bookstore_platform::auth::SCOPES);
        let flow = Flow::ClientCredentials(ClientCredentials::new("/api/v1/auth/token", scopes));
        let scheme = OAuth2::with_description(
            [flow],
            "For service accounts (third-party applications): client credentials, as JSON or \
             RFC 6749's form, for a token carrying the account's scopes.",
        );
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("oauth2", SecurityScheme::OAuth2(scheme));
        for (method, route, scope) in crate::scopes::ROUTE_SCOPES {
            let Some(item) = openapi.paths.paths.get_mut(*route) else { continue };
            let operation = match *method {
                axum::http::Method::GET => item.get.as_mut(),
                axum::http::Method::POST => item.post.as_mut(),
                axum::http::Method::PATCH => item.patch.as_mut(),
                axum::http::Method::DELETE => item.delete.as_mut(),
                _ => None,
            };
            if let Some(operation) = operation {
                let security = operation.security.get_or_insert_with(Vec::new);
                if security.is_empty() {
                    // Public reads: anonymous, or a bearer token.
                    security.push(SecurityRequirement::default());
                    security.push(SecurityRequirement::new("bearer", Vec::<String>::new()));
                }
                security.push(SecurityRequirement::new("oauth2", [*scope]));
            }
        }
    }
}

/// What the edge may answer on every operation, and the degraded catalog reads: each
/// operation may get 429 (over the client's rate limit, with the IETF `RateLimit` headers) and
/// 503 (overloaded or no replica, with `Retry-After`); catalog reads may come back marked
/// `X-Degraded: stale`. (Every answer carries `RateLimit-Policy` and `RateLimit` while limits
/// are on; the document's description says so once rather than on every response.)
struct EdgeResponses;

impl Modify for EdgeResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{
            ContentBuilder, HeaderBuilder, Ref, RefOr, ResponseBuilder, Type, schema::ObjectBuilder,
        };
        let text = || ObjectBuilder::new().schema_type(Type::String).build();
        let header =
            |description: &str| HeaderBuilder::new().schema(text()).description(Some(description)).build();
        let error = |description: &str| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .header("Retry-After", header("Seconds to wait before trying again"))
        };
        let policy = header("The limit in force, e.g. `\"default\";q=6000;w=60` (while limits are on)");
        let standing = header("What is left of it, e.g. `\"default\";r=5999;t=42` (while limits are on)");
        let components = openapi.components.get_or_insert_with(Default::default);
        components.responses.insert(
            "TooManyRequests".into(),
            RefOr::T(
                error("Over the client's rate limit")
                    .header("RateLimit-Policy", policy)
                    .header("RateLimit", standing)
                    .build(),
            ),
        );
        components.responses.insert(
            "Unavailable".into(),
            RefOr::T(
                error("The gateway is overloaded, or no replica of a service it needs can answer").build(),
            ),
        );
        let stale =
            header("`stale` when books could not answer and this is the last good copy the gateway holds");
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations =
                [&mut item.get, &mut item.post, &mut item.put, &mut item.patch, &mut item.delete];
            let is_catalog_read = path.starts_with("/api/v1/books");
            for (i, operation) in operations.into_iter().enumerate() {
                let Some(operation) = operation else { continue };
                let responses = &mut operation.responses.responses;
                responses
                    .entry("429".into())
                    .or_insert_with(|| Ref::from_response_name("TooManyRequests").into());
                responses
                    .entry("503".into())
                    .or_insert_with(|| Ref::from_response_name("Unavailable").into());
                if is_catalog_read
                    && i == 0
                    && let Some(RefOr::T(ok)) = responses.get_mut("200")
                {
                    ok.headers.insert("X-Degraded".into(), stale.clone());
                }
            }
        }
    }
}

/// What every operation may answer to a request it cannot take, stated on each (unless the
/// operation says it in its own words): 400 when it has a body or parameters (unreadable, or a
/// field out of its rules), 413 and 415 when it takes a JSON body (too large; not JSON), 401
/// (no token where one is needed, [`crate::auth::PUBLIC_ROUTES`]; or one sent that is not
/// valid, anywhere), 403 when it needs a token (a role or scope may not suffice), 404 when its
/// path names a resource.
struct RequestErrors;

impl Modify for RequestErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        let error = |description: &str| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                    )
                    .build(),
            )
        };
        let components = openapi.components.get_or_insert_with(Default::default);
        for (name, description) in [
            (
                "BadRequest",
                "The request could not be read, or a field breaks its rules (`details` names them)",
            ),
            (
                "Unauthorized",
                "No token where one is needed, or a token sent that is not valid (`WWW-Authenticate: Bearer`)",
            ),
            (
                "Forbidden",
                "Signed in, but the caller's role (or a service account's scopes) does not allow it",
            ),
            ("NotFound", "No such resource, or not one the caller may see"),
            ("PayloadTooLarge", "The body is larger than the gateway takes"),
            ("UnsupportedMediaType", "The body is not `application/json`"),
        ] {
            components.responses.insert(name.into(), error(description));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                (axum::http::Method::GET, &mut item.get),
                (axum::http::Method::POST, &mut item.post),
                (axum::http::Method::PATCH, &mut item.patch),
                (axum::http::Method::DELETE, &mut item.delete),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                let public = crate::auth::is_public(&method, path);
                let json_body = operation
                    .request_body
                    .as_ref()
                    .is_some_and(|body| body.content.keys().any(|c| c == "application/json"));
                let has_parameters = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
                let mut add = |status: &str, name: &str| {
                    operation
                        .responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| Ref::from_response_name(name).into());
                };
                if json_body || has_parameters {
                    add("400", "BadRequest");
                }
                if json_body {
                    add("413", "PayloadTooLarge");
                    add("415", "UnsupportedMediaType");
                }
                // A token that is sent is checked, on public operations too.
                add("401", "Unauthorized");
                if !public {
                    add("403", "Forbidden");
                }
                if path.contains('{') {
                    add("404", "NotFound");
                }
            }
        }
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bookstore",
        description = "The bookstore's REST API. Every error is `{\"code\", \"message\", \"request_id\"}` with the matching HTTP status. While rate limits are on, every answer carries the IETF draft's `RateLimit-Policy` and `RateLimit` headers; past the limit the answer is 429 with `Retry-After`.",
        license(name = "Apache-2.0")
    ),
    paths(
        books::list_books,
        books::get_book,
        books::create_book,
        books::update_book,
        books::delete_book,
        books::adjust_stock,
        users::register,
        users::login,
        users::refresh,
        users::logout,
        users::token,
        users::jwks,
        users::get_me,
        users::update_me,
        users::delete_me,
        users::list_users,
        users::get_user,
        users::update_user,
        users::delete_user,
        users::create_service_account,
        users::list_service_accounts,
        users::rotate_service_account_secret,
        users::revoke_service_account,
        orders::create_order,
        orders::get_order,
        orders::order_events,
        orders::list_orders,
        orders::cancel_order,
        orders::update_status,
        fulfillment::get_queue,
        fulfillment::move_task,
        fulfillment::claim_task,
        fulfillment::advance_task,
        fulfillment::remove_task,
        recommendations::book_recommendations,
        recommendations::my_recommendations,
        audit::list,
    ),
    components(schemas(
        ErrorBody,
        audit::AuditEntry,
        audit::AuditPage,
        crate::error::ErrorCode,
        orders::OrderStatus,
        books::Book,
        books::BookPage,
        books::CreateBook,
        books::UpdateBook,
        books::StockAdjustment,
        books::Money,
        users::User,
        users::Role,
        users::UserPage,
        users::Register,
        users::Registered,
        users::Login,
        users::RefreshToken,
        users::ClientCredentials,
        users::Tokens,
        users::UpdateUser,
        users::NewServiceAccount,
        users::ServiceAccount,
        users::ServiceAccountInfo,
        users::ServiceAccountList,
        orders::Order,
        orders::OrderLine,
        orders::OrderPage,
        orders::BasketLine,
        orders::CreateOrder,
        orders::ShippingAddress,
        orders::StatusChange,
        fulfillment::Task,
        fulfillment::TaskLine,
        fulfillment::Queue,
        fulfillment::Change,
        fulfillment::Move,
        fulfillment::Step,
        fulfillment::Removal,
        recommendations::Recommendation,
        recommendations::Recommendations,
    )),
    modifiers(&BearerAuth, &OAuth2Scopes, &EdgeResponses, &RequestErrors),
    tags(
        (name = "books", description = "The catalog: browse and search (anyone), manage and stock (staff, admin)"),
        (name = "auth", description = "Register, sign in, refresh, sign out; service-account tokens; the JWKS"),
        (name = "users", description = "Your account; everyone's for an admin"),
        (name = "orders", description = "Checkout, order history, cancellation; fulfilment steps for staff"),
        (name = "fulfillment", description = "The work queue of placed orders: load, reorder, claim, advance, remove (staff)"),
    )
)]
pub struct ApiDoc;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every change to the API shows up in review as a change to this snapshot.
    #[test]
    fn openapi_document_matches_the_snapshot() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        insta::assert_json_snapshot!("openapi", doc);
    }
}
