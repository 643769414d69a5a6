//! The cart and checkout.
//!
//! The cart lives in the browser, in one cookie (`bookstore_cart`: book ids and quantities, at
//! most [`MAX_LINES`] lines), so a visitor can fill one before signing in and no service keeps
//! baskets nobody checks out. Prices and titles always come from the catalog, never from it.
//! Checkout posts the cart with a shipping address and an idempotency key written into the form
//! when it was shown: sending the form twice (a double click, a reload) places one order.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Redirect, Response};
use axum_extra::extract::cookie::CookieJar;
use maud::{Markup, html};
use serde::Deserialize;

use super::answer_of;
use super::layout::{PageError, alert, explain, form_can_say, money, page, refused, render};
use super::session::{Csrf, Secure, checked, cookie};
use crate::AppState;
use crate::auth::Auth;
use crate::books::{Book, Money};
use crate::error::{self, ApiError};
use crate::orders::{BasketLine, CreateOrder, Order, ShippingAddress};

pub const CART: &str = "bookstore_cart";
/// The most lines a cart holds (the API takes up to 50 per order).
pub const MAX_LINES: usize = 50;
/// The most copies of one book in a cart.
pub const MAX_QUANTITY: i64 = 100;
/// How long a browser keeps its cart: 30 days.
const CART_DAYS: i64 = 30;

/// A cart: lines of (book id, quantity), each book once, 1 to [`MAX_QUANTITY`] copies, at most
/// [`MAX_LINES`] lines. Parsed from its cookie; whatever does not fit is dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cart(Vec<(String, i64)>);

impl Cart {
    /// The cart in `jar`; empty when it has none.
    pub fn of(jar: &CookieJar) -> Self {
        jar.get(CART).map(|c| Self::parse(c.value())).unwrap_or_default()
    }

    /// `id:qty|id:qty`, keeping the lines that are well formed.
    pub fn parse(text: &str) -> Self {
        let mut cart = Self::default();
        for line in text.split('|') {
            if let Some((id, quantity)) = line.split_once(':')
                && let Ok(quantity) = quantity.parse()
            {
                cart.set(id, quantity);
            }
        }
        cart
    }

    /// Sets `id` to `quantity` copies (0 takes it out); ignored when the id is not one a book
    /// can have, or the cart is full.
    pub fn set(&mut self, id: &str, quantity: i64) {
        let valid_id =
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !valid_id {
            return;
        }
        let quantity = quantity.clamp(0, MAX_QUANTITY);
        match self.0.iter().position(|(i, _)| i == id) {
            Some(at) if quantity == 0 => {
                self.0.remove(at);
            }
            Some(at) => self.0[at].1 = quantity,
            None if quantity > 0 && self.0.len() < MAX_LINES => self.0.push((id.to_owned(), quantity)),
            None => {}
        }
    }

    pub fn quantity(&self, id: &str) -> i64 {
        self.0.iter().find(|(i, _)| i == id).map_or(0, |(_, q)| *q)
    }

    pub fn lines(&self) -> &[(String, i64)] {
        &self.0
    }

    /// The cookie's value.
    pub fn to_text(&self) -> String {
        self.0.iter().map(|(id, q)| format!("{id}:{q}")).collect::<Vec<_>>().join("|")
    }
}

/// The cookie that holds `cart`.
fn cart_cookie(cart: &Cart, secure: bool) -> axum_extra::extract::cookie::Cookie<'static> {
    let keep = if cart.lines().is_empty() { 0 } else { CART_DAYS * 86_400 };
    cookie(CART, cart.to_text(), Some(keep), secure)
}

/// A line of the cart with its book as the catalog has it now.
struct Priced {
    book: Book,
    quantity: i64,
}

/// How many of a cart's books are asked for at once: a full cart (50 lines) costs a few round
/// trips to books, not fifty, without one page taking every connection.
const BOOKS_AT_ONCE: usize = 8;

/// The books of `cart`, from the catalog, in the cart's order; lines whose book is gone are
/// left out.
async fn priced(state: &AppState, auth: &Auth, cart: &Cart) -> Result<Vec<Priced>, ApiError> {
    use futures::StreamExt as _;
    // Owned lines and state in each future: the handler's future must be Send for any lifetime.
    let answers: Vec<_> = futures::stream::iter(cart.lines().to_vec())
        .map(|(id, quantity)| {
            let (state, auth) = (state.clone(), auth.clone());
            async move {
                let answer = crate::books::get_book(State(state), auth, error::Path(id)).await;
                (answer_of::<Book>(answer).await, quantity)
            }
        })
        .buffered(BOOKS_AT_ONCE)
        .collect()
        .await;
    let mut lines = Vec::with_capacity(answers.len());
    for (answer, quantity) in answers {
        match answer {
            Ok((book, _)) => lines.push(Priced { book, quantity }),
            Err(e) if e.status == axum::http::StatusCode::NOT_FOUND => {}
            Err(e) => return Err(e),
        }
    }
    Ok(lines)
}

/// The sum of `lines` (one currency: the catalog's).
fn total(lines: &[Priced]) -> Option<Money> {
    let currency = lines.first()?.book.price.currency.clone();
    let amount_minor = lines.iter().map(|l| l.book.price.amount_minor * l.quantity).sum();
    Some(Money { amount_minor, currency })
}

fn lines_table(lines: &[Priced], csrf: &Csrf, editable: bool) -> Markup {
    html! {
        table {
            thead { tr { th scope="col" { "Book" } th scope="col" { "Price" } th scope="col" { "Quantity" } } }
            tbody {
                @for line in lines {
                    tr {
                        td { a href={ "/books/" (line.book.id) } { (line.book.title) } br; span.muted { (line.book.author) } }
                        td { (money(&line.book.price)) }
                        td {
                            @if editable {
                                form method="post" action="/cart" {
                                    input type="hidden" name="csrf" value=(csrf.0);
                                    input type="hidden" name="book_id" value=(line.book.id);
                                    input type="hidden" name="mode" value="set";
                                    label for={ "q-" (line.book.id) } { "Quantity of " (line.book.title) }
                                    input id={ "q-" (line.book.id) } type="number" name="quantity" value=(line.quantity) min="0" max=(MAX_QUANTITY);
                                    " " button type="submit" { "Update" }
                                }
                            } @else {
                                (line.quantity)
                            }
                        }
                    }
                }
            }
        }
        @if let Some(total) = total(lines) { p { "Total: " span.price { (money(&total)) } } }
    }
}

fn empty_cart() -> Markup {
    html! { p { "Your cart is empty. " a href="/" { "Find a book" } "." } }
}

/// `GET /cart`.
pub async fn show(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    jar: CookieJar,
) -> Result<Response, PageError> {
    let lines = priced(&state, &auth, &Cart::of(&jar)).await?;
    let main = html! {
        h1 { "Cart" }
        @if lines.is_empty() {
            (empty_cart())
        } @else {
            p.muted { "Set a quantity to 0 to take a book out." }
            (lines_table(&lines, &csrf, true))
            p { a.button href="/checkout" { "Check out" } }
        }
    };
    Ok(render(page("Cart", &auth, &csrf, main)))
}

/// A change to the cart: `mode=add` adds `quantity` copies, `mode=set` sets them.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CartChange {
    pub csrf: String,
    pub book_id: String,
    pub quantity: String,
    pub mode: String,
}

/// `POST /cart`: changes the cart, then shows it.
pub async fn change(
    csrf: Csrf,
    Secure(secure): Secure,
    jar: CookieJar,
    axum::Form(form): axum::Form<CartChange>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    let quantity: i64 = form
        .quantity
        .trim()
        .parse()
        .map_err(|_| ApiError::invalid(format!("quantity: a whole number from 0 to {MAX_QUANTITY}")))?;
    let mut cart = Cart::of(&jar);
    match form.mode.as_str() {
        "add" => cart.set(&form.book_id, cart.quantity(&form.book_id) + quantity.max(0)),
        _ => cart.set(&form.book_id, quantity),
    }
    Ok((jar.add(cart_cookie(&cart, secure)), Redirect::to("/cart")).into_response())
}

/// `GET /checkout`: the cart and a shipping address form, for a signed-in customer.
pub async fn checkout_form(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    jar: CookieJar,
) -> Result<Response, PageError> {
    if auth.0.is_none() {
        return Ok(Redirect::to("/signin?next=%2Fcheckout").into_response());
    }
    let cart = Cart::of(&jar);
    let lines = priced(&state, &auth, &cart).await?;
    Ok(render(checkout_page(&auth, &csrf, &cart, &lines, &Address::default(), None)))
}

/// The checkout form for `cart` (priced as `lines`), filled with `address`, with `problem` above
/// it when the last try failed. The form carries the cart it shows, so what is ordered is what
/// was reviewed, and a fresh idempotency key: one showing places at most one order, however
/// often it is sent.
fn checkout_page(
    auth: &Auth,
    csrf: &Csrf,
    cart: &Cart,
    lines: &[Priced],
    address: &Address,
    problem: Option<&str>,
) -> Markup {
    let field = |name: &'static str,
                 label: &'static str,
                 value: &str,
                 required: bool,
                 autocomplete: &'static str| {
        html! {
            label for=(name) { (label) @if !required { span.muted { " (optional)" } } }
            input id=(name) name=(name) value=(value) required[required] autocomplete=(autocomplete) maxlength="200";
        }
    };
    let main = html! {
        h1 { "Check out" }
        @if let Some(problem) = problem { (alert(problem)) }
        @if lines.is_empty() {
            (empty_cart())
        } @else {
            (lines_table(lines, csrf, false))
            form method="post" action="/checkout" {
                input type="hidden" name="csrf" value=(csrf.0);
                input type="hidden" name="key" value=(uuid::Uuid::new_v4());
                input type="hidden" name="cart" value=(cart.to_text());
                fieldset {
                    legend { "Ship to" }
                    (field("name", "Full name", &address.name, true, "name"))
                    (field("line1", "Address", &address.line1, true, "address-line1"))
                    (field("line2", "Address line 2", &address.line2, false, "address-line2"))
                    (field("city", "City", &address.city, false, "address-level2"))
                    (field("postal_code", "Postal code", &address.postal_code, false, "postal-code"))
                    (field("country", "Country (two letters, e.g. DE)", &address.country, false, "country"))
                }
                p { button type="submit" { "Place order" } }
            }
        }
    };
    page("Check out", auth, csrf, main)
}

/// The checkout form as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Address {
    pub csrf: String,
    pub key: String,
    /// The cart the form showed (`id:qty|...`).
    pub cart: String,
    pub name: String,
    pub line1: String,
    pub line2: String,
    pub city: String,
    pub postal_code: String,
    pub country: String,
}

/// `POST /checkout`: places the order of the cart the form showed (once per form shown),
/// empties the cart and shows the order; or shows the form again with what the API said was
/// wrong.
pub async fn checkout(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Secure(secure): Secure,
    jar: CookieJar,
    axum::Form(form): axum::Form<Address>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    auth.required()?;
    let cart = Cart::parse(&form.cart);
    let body = CreateOrder {
        lines: cart.lines().iter().map(|(id, q)| BasketLine { book_id: id.clone(), quantity: *q }).collect(),
        shipping_address: Some(ShippingAddress {
            name: form.name.clone(),
            line1: form.line1.clone(),
            line2: form.line2.clone(),
            city: form.city.clone(),
            postal_code: form.postal_code.clone(),
            country: form.country.clone(),
        }),
    };
    let mut headers = HeaderMap::new();
    if let Ok(key) = form.key.parse() {
        headers.insert("idempotency-key", key);
    }
    let placed =
        crate::orders::create_order(State(state.clone()), auth.clone(), headers, error::Json(body)).await;
    let placed = match placed {
        Ok(answer) => answer_of::<Order>(Ok(answer.into_response())).await,
        Err(e) => Err(e),
    };
    match placed {
        Ok((order, _)) => {
            let emptied = cart_cookie(&Cart::default(), secure);
            Ok((jar.add(emptied), Redirect::to(&format!("/orders/{}", order.id))).into_response())
        }
        Err(error) if form_can_say(&error) => {
            let lines = priced(&state, &auth, &cart).await?;
            // Books by their titles, not their ids.
            let why = lines.iter().fold(explain(&error), |why, l| {
                why.replace(&format!("book {}", l.book.id), &format!("“{}”", l.book.title))
            });
            Ok(refused(error.status, checkout_page(&auth, &csrf, &cart, &lines, &form, Some(&why))))
        }
        Err(error) => Err(error.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cart_keeps_well_formed_lines_each_book_once_within_limits() {
        let cart = Cart::parse("a-1:2|b-2:0|bad id:1|c-3:x|a-1:5|d-4:1000|:3");
        assert_eq!(cart.lines(), &[("a-1".to_owned(), 5), ("d-4".to_owned(), MAX_QUANTITY)]);
        assert_eq!(Cart::parse(&cart.to_text()), cart);
        let full = Cart::parse(&(0..80).map(|n| format!("b{n}:1")).collect::<Vec<_>>().join("|"));
        assert_eq!(full.lines().len(), MAX_LINES);
    }

    #[test]
    fn setting_a_quantity_to_zero_takes_the_book_out() {
        let mut cart = Cart::parse("a:1|b:2");
        cart.set("a", 0);
        assert_eq!(cart.to_text(), "b:2");
        cart.set("b", -4);
        assert!(cart.lines().is_empty());
    }
}
