//! The OpenAPI document, generated from the handlers' annotations.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::ErrorBody;
use crate::{books, orders, users};

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

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bookstore",
        description = "The bookstore's REST API. Every error is `{\"code\", \"message\", \"request_id\"}` with the matching HTTP status.",
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
        orders::create_order,
        orders::get_order,
        orders::list_orders,
        orders::cancel_order,
        orders::update_status,
    ),
    components(schemas(
        ErrorBody,
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
        users::Login,
        users::RefreshToken,
        users::ClientCredentials,
        users::Tokens,
        users::UpdateUser,
        users::NewServiceAccount,
        users::ServiceAccount,
        orders::Order,
        orders::OrderLine,
        orders::OrderPage,
        orders::BasketLine,
        orders::CreateOrder,
        orders::StatusChange,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "books", description = "The catalog: browse and search (anyone), manage and stock (staff, admin)"),
        (name = "auth", description = "Register, sign in, refresh, sign out; service-account tokens; the JWKS"),
        (name = "users", description = "Your account; everyone's for an admin"),
        (name = "orders", description = "Checkout, order history, cancellation; fulfilment steps for staff"),
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
