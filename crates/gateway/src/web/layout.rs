//! What every page shares: the document around it (landmarks, a skip link, the navigation for
//! who is browsing), money and dates as people read them, and the error page.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use maud::{DOCTYPE, Markup, html};

use super::assets::Asset;
use super::session::Csrf;
use crate::auth::Auth;
use crate::books::Money;
use crate::error::{ApiError, ErrorCode};

/// The `<head>` of every page: its title, our stylesheet, and `script` when it runs one.
fn head(title: &str, script: Option<&Asset>) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Bookstore" }
            link rel="stylesheet" href=(super::assets::STYLE.url());
            @if let Some(script) = script { script type="module" src=(script.url()) {} }
        }
    }
}

/// Whether `who` is staff (or an admin, who is staff too).
pub fn is_staff(who: &Auth) -> bool {
    use bookstore_platform::auth::Role;
    who.0.as_ref().is_some_and(|c| c.identity.has_any(&[Role::Staff, Role::Admin]))
}

/// Whether `who` is an admin.
pub fn is_admin(who: &Auth) -> bool {
    who.0.as_ref().is_some_and(|c| c.identity.is_admin())
}

/// A whole page titled `title` around `main`, with the navigation `who` may use.
pub fn page(title: &str, who: &Auth, csrf: &Csrf, main: Markup) -> Markup {
    page_with(title, who, csrf, main, None)
}

/// A page that also runs `script` (one of ours, as a module, after the page is read).
pub fn page_with(title: &str, who: &Auth, csrf: &Csrf, main: Markup, script: Option<&Asset>) -> Markup {
    let (staff, admin) = (is_staff(who), is_admin(who));
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title, script))
            body {
                a.skip href="#main" { "Skip to content" }
                header.site {
                    a.brand href="/" { "Bookstore" }
                    nav aria-label="Site" {
                        ul {
                            li { a href="/" { "Catalog" } }
                            li { a href="/cart" { "Cart" } }
                            @if who.0.is_some() {
                                li { a href="/orders" { "My orders" } }
                                @if staff {
                                    li { a href="/staff/queue" { "Queue" } }
                                    li { a href="/staff/books/new" { "Add a book" } }
                                }
                                @if admin { li { a href="/admin/users" { "Users" } } }
                                li {
                                    form.inline method="post" action="/signout" {
                                        input type="hidden" name="csrf" value=(csrf.0);
                                        button type="submit" { "Sign out" }
                                    }
                                }
                            } @else {
                                li { a href="/signin" { "Sign in" } }
                                li { a href="/register" { "Register" } }
                            }
                        }
                    }
                }
                main #main tabindex="-1" { (main) }
                footer.site { p { "Bookstore — every page here is also an API: " a href="/docs" { "see /docs" } "." } }
            }
        }
    }
}

/// `markup` as an HTML answer.
pub fn render(markup: Markup) -> Response {
    Html(markup.into_string()).into_response()
}

/// `money` as people read it: `USD 19.99`.
pub fn money(money: &Money) -> String {
    let (units, cents) = (money.amount_minor / 100, money.amount_minor % 100);
    format!("{} {units}.{cents:02}", money.currency)
}

/// An RFC 3339 time as a date and minute (UTC), for lists.
pub fn when(rfc3339: &str) -> String {
    rfc3339.get(..16).map(|s| s.replace('T', " ")).unwrap_or_default() + " UTC"
}

/// A message shown above a form, read out by screen readers as it appears.
pub fn alert(message: &str) -> Markup {
    html! { p.alert role="alert" { (message) } }
}

/// What the API said was wrong, for a form shown again: each field it named with why, or each
/// basket line it could not fill (`book {id}: ...`, for the caller to name by title), or else
/// its message.
pub fn explain(error: &ApiError) -> String {
    let text = |v: &serde_json::Value, key: &str| {
        v.get(key).map(|x| x.as_str().map_or(x.to_string(), str::to_owned))
    };
    let items = error.details.as_ref().and_then(|d| d.as_array()).cloned().unwrap_or_default();
    let fields: Vec<String> = items
        .iter()
        .filter_map(|item| Some(format!("{}: {}", text(item, "field")?, text(item, "description")?)))
        .collect();
    let short: Vec<String> = items
        .iter()
        .filter_map(|item| {
            let (book, wanted, left) =
                (text(item, "book_id")?, text(item, "requested")?, text(item, "available")?);
            Some(format!("book {book}: {wanted} wanted, {left} left"))
        })
        .collect();
    if !fields.is_empty() {
        format!("{} ({})", error.message, fields.join("; "))
    } else if !short.is_empty() {
        format!("Not enough stock for everything in your cart: {}.", short.join("; "))
    } else {
        error.message.clone()
    }
}

/// What a page answers when the API refused: the same status, and the API's own message, in
/// words a customer can act on. Signed-out visitors of a page that needs an account are sent
/// to sign in instead.
pub struct PageError(pub ApiError);

impl From<ApiError> for PageError {
    fn from(error: ApiError) -> Self {
        Self(error)
    }
}

impl From<tonic::Status> for PageError {
    fn from(status: tonic::Status) -> Self {
        Self(status.into())
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if self.0.status == StatusCode::UNAUTHORIZED {
            return Redirect::to("/signin").into_response();
        }
        error_page(&self.0)
    }
}

/// A form shown again with what was wrong (`markup`), under the status the API answered.
pub fn refused(status: StatusCode, markup: Markup) -> Response {
    let mut response = render(markup);
    *response.status_mut() = status;
    response.extensions_mut().insert(crate::error::Rendered);
    response
}

/// Whether the form that caused `error` can be shown again with it: the sender's mistake, not a
/// session that ended (which signs in first) or the shop's trouble (an error page).
pub fn form_can_say(error: &ApiError) -> bool {
    error.status.is_client_error() && error.status != StatusCode::UNAUTHORIZED
}

/// The error page of `error`: its status, its message, a way on.
pub fn error_page(error: &ApiError) -> Response {
    let heading = match error.code {
        ErrorCode::NotFound => "Not found",
        ErrorCode::PermissionDenied => "Not allowed",
        ErrorCode::Unavailable | ErrorCode::DeadlineExceeded => "The shop is busy",
        ErrorCode::ResourceExhausted => "Too many requests",
        ErrorCode::InvalidArgument | ErrorCode::BadRequest => "That did not work",
        _ => "Something went wrong",
    };
    let retry = error.retry_after.map(|s| format!("Try again in {s} seconds."));
    let body = html! {
        (DOCTYPE)
        html lang="en" {
            (head(heading, None))
            body {
                main #main {
                    h1 { (heading) }
                    (alert(&error.message))
                    @if let Some(retry) = retry { p { (retry) } }
                    p { a href="/" { "Back to the catalog" } }
                }
            }
        }
    };
    let mut response = (error.status, Html(body.into_string())).into_response();
    response.extensions_mut().insert(crate::error::Rendered);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_as_currency_and_two_decimals() {
        assert_eq!(money(&Money { amount_minor: 1999, currency: "USD".into() }), "USD 19.99");
        assert_eq!(money(&Money { amount_minor: 5, currency: "EUR".into() }), "EUR 0.05");
    }

    #[test]
    fn text_from_the_catalog_is_escaped_not_markup() {
        let markup = html! { p { ("<script>alert(1)</script>") } }.into_string();
        assert_eq!(markup, "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>");
    }
}
