//! The storefront's reading pages: the catalog (search and paging), a book with what is bought
//! with it, and a customer's orders.

use axum::extract::{Path, Query, State};
use axum::response::Response;
use maud::{Markup, html};
use serde::Deserialize;

use super::answer_of;
use super::layout::{PageError, money, page, page_with, render, when};
use super::session::Csrf;
use crate::AppState;
use crate::auth::Auth;
use crate::books::{Book, BookPage};
use crate::error::{self, ApiError};
use crate::orders::{Order, OrderPage};
use crate::recommendations::{LimitQuery, Recommendations};

/// Books on one page of the catalog.
pub const PER_PAGE: i32 = 12;

/// What the catalog's address may say: `?q=dune&page=2`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CatalogQuery {
    pub q: String,
    pub page: String,
}

/// A page number from an address: 1 when absent, 400 when not a number.
fn page_number(text: &str) -> Result<i32, ApiError> {
    match text.trim() {
        "" => Ok(1),
        n => n.parse().map_err(|_| ApiError::invalid("page: must be a number")),
    }
}

/// `GET /`: the catalog, or what matches a search.
pub async fn catalog(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Query(query): Query<CatalogQuery>,
) -> Result<Response, PageError> {
    let q = query.q.trim().to_owned();
    let params = crate::books::ListParams {
        q: (!q.is_empty()).then(|| q.clone()),
        author: None,
        page: Some(page_number(&query.page)?),
        limit: Some(PER_PAGE),
    };
    let answer = crate::books::list_books(State(state), auth.clone(), error::Query(params)).await;
    let (books, degraded): (BookPage, bool) = answer_of(answer).await?;
    let title = if q.is_empty() { "Catalog".to_owned() } else { format!("Search: {q}") };
    let pages = (books.total + i64::from(books.limit) - 1) / i64::from(books.limit.max(1));
    let link = |n: i32| {
        let mut url = url::form_urlencoded::Serializer::for_suffix(String::from("/?"), 2);
        if !q.is_empty() {
            url.append_pair("q", &q);
        }
        url.append_pair("page", &n.to_string()).finish()
    };
    let main = html! {
        h1 { (title) }
        form.search method="get" action="/" role="search" {
            div {
                label for="q" { "Search by title, author or description" }
                input #q type="search" name="q" value=(q) maxlength="200";
            }
            button type="submit" { "Search" }
        }
        (stale_notice(degraded))
        @if books.items.is_empty() {
            p { "No books match. " a href="/" { "See the whole catalog" } "." }
        } @else {
            p.muted { (books.total) @if books.total == 1 { " book" } @else { " books" } " · page " (books.page) " of " (pages) }
            ul.books { @for book in &books.items { li { (card(book, "h2")) } } }
            nav.pager aria-label="Pages" {
                @if books.page > 1 { a href=(link(books.page - 1)) rel="prev" { "← Previous" } }
                @if i64::from(books.page) < pages { a href=(link(books.page + 1)) rel="next" { "Next →" } }
            }
        }
    };
    Ok(render(page(&title, &auth, &csrf, main)))
}

/// A book in a list: its title (a link to it), author, price and whether it is in stock.
fn card(book: &Book, heading: &str) -> Markup {
    let title = html! { a href={ "/books/" (book.id) } { (book.title) } };
    html! {
        @if heading == "h2" { h2 { (title) } } @else { h3 { (title) } }
        p.muted { (book.author) }
        p { span.price { (money(&book.price)) } " · " (availability(book)) }
    }
}

fn availability(book: &Book) -> &'static str {
    if book.stock > 0 { "in stock" } else { "out of stock" }
}

fn stale_notice(degraded: bool) -> Markup {
    html! {
        @if degraded { p.notice role="status" { "The catalog is busy: this is the copy we saved last, and may be out of date." } }
    }
}

/// `GET /books/{id}`: a book, a form to put it in the cart, and what is bought with it.
pub async fn book(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let answer = crate::books::get_book(State(state.clone()), auth.clone(), error::Path(id.clone())).await;
    let (book, degraded): (Book, bool) = answer_of(answer).await?;
    let limit = LimitQuery { limit: Some(4) };
    let answer = crate::recommendations::book_recommendations(
        State(state),
        auth.clone(),
        error::Path(id),
        error::Query(limit),
    )
    .await;
    // A book's page without its recommendations is still its page.
    let also = answer_of::<Recommendations>(answer).await.map(|(r, _)| r.items).unwrap_or_default();
    let main = html! {
        (stale_notice(degraded))
        h1 { (book.title) }
        p { "by " (book.author) }
        p { span.price { (money(&book.price)) } " · " (availability(&book)) }
        @if !book.description.is_empty() { p { (book.description) } }
        p.muted { "ISBN " (book.isbn) }
        @if book.stock > 0 {
            form method="post" action="/cart" {
                input type="hidden" name="csrf" value=(csrf.0);
                input type="hidden" name="book_id" value=(book.id);
                input type="hidden" name="mode" value="add";
                label for="quantity" { "Quantity" }
                input #quantity type="number" name="quantity" value="1" min="1" max=(super::cart::MAX_QUANTITY) required;
                p { button type="submit" { "Add to cart" } }
            }
        }
        @if super::layout::is_staff(&auth) { (super::staff::book_tools(&book, &csrf)) }
        @if !also.is_empty() {
            section aria-labelledby="also" {
                h2 #also { "Readers also bought" }
                ul.books { @for r in &also { li { (card(&r.book, "h3")) } } }
            }
        }
    };
    Ok(render(page(&book.title, &auth, &csrf, main)))
}

/// `GET /orders`: the signed-in customer's orders, newest first.
pub async fn orders(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Query(query): Query<CatalogQuery>,
) -> Result<Response, PageError> {
    let params =
        crate::orders::ListParams { status: None, page: Some(page_number(&query.page)?), limit: Some(20) };
    let error::Json(orders): error::Json<OrderPage> =
        crate::orders::list_orders(State(state), auth.clone(), error::Query(params)).await?;
    let main = html! {
        h1 { "My orders" }
        @if orders.items.is_empty() {
            p { "No orders yet. " a href="/" { "Find a book" } "." }
        } @else {
            table {
                thead { tr { th scope="col" { "Order" } th scope="col" { "Placed" } th scope="col" { "Status" } th scope="col" { "Total" } } }
                tbody {
                    @for order in &orders.items {
                        tr {
                            td { a href={ "/orders/" (order.id) } { (short(&order.id)) } }
                            td { (when(&order.created_at)) }
                            td { span.status data-order-id=(order.id) { (status_text(order)) } }
                            td { (money(&order.total)) }
                        }
                    }
                }
            }
        }
    };
    Ok(render(page_with("My orders", &auth, &csrf, main, Some(&super::assets::ORDERS))))
}

/// `GET /orders/{id}`: one order, its lines, where it ships and where it stands.
pub async fn order(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    let error::Json(order): error::Json<Order> =
        crate::orders::get_order(State(state), auth.clone(), error::Path(id)).await?;
    let title = format!("Order {}", short(&order.id));
    let main = html! {
        h1 { (title) }
        p { "Status: " span.status data-order-id=(order.id) aria-live="polite" { (status_text(&order)) } }
        @if !order.status_reason.is_empty() { p { (order.status_reason) } }
        p.muted { "Placed " (when(&order.created_at)) }
        table {
            thead { tr { th scope="col" { "Book" } th scope="col" { "Quantity" } th scope="col" { "Price" } } }
            tbody {
                @for line in &order.lines {
                    tr { td { a href={ "/books/" (line.book_id) } { (line.title) } } td { (line.quantity) } td { (money(&line.unit_price)) } }
                }
            }
        }
        p { "Total: " span.price { (money(&order.total)) } }
        @if let Some(address) = &order.shipping_address {
            h2 { "Ships to" }
            address {
                (address.name) br;
                (address.line1) br;
                @if !address.line2.is_empty() { (address.line2) br; }
                (address.postal_code) " " (address.city) br;
                (address.country)
            }
        }
    };
    Ok(render(page_with(&title, &auth, &csrf, main, Some(&super::assets::ORDERS))))
}

/// The last 8 characters of an id, enough to tell orders apart in a list: ids begin with a
/// timestamp, so orders placed together share their first characters.
pub fn short(id: &str) -> &str {
    id.get(id.len().saturating_sub(8)..).unwrap_or(id)
}

fn status_text(order: &Order) -> String {
    serde_json::to_value(order.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()
}
