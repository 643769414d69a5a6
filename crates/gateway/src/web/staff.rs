//! The staff's pages: the fulfillment queue, live ([`queue`], with `web/queue.js`), and the
//! catalog's books (add, edit, adjust stock). The services decide who may: a customer who finds
//! these addresses gets the API's 403 as a page.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;

use super::assets::QUEUE;
use super::layout::{PageError, alert, explain, form_can_say, page, page_with, refused, render};
use super::session::{Csrf, checked};
use crate::AppState;
use crate::auth::Auth;
use crate::books::{Book, CreateBook, Money, StockAdjustment, UpdateBook};
use crate::error::{self, ApiError};
use crate::fulfillment::{Queue, Task};

/// `GET /staff/queue`: the queue as it is now; with JavaScript, live (`web/queue.js` opens the
/// socket at `/staff/queue/ws` and keeps the list current, and its buttons and drag and drop
/// act on it).
pub async fn queue(State(state): State<AppState>, auth: Auth, csrf: Csrf) -> Result<Response, PageError> {
    auth.required()?;
    let error::Json(Queue { seq, tasks }) = crate::fulfillment::get_queue(State(state), auth.clone()).await?;
    let main = html! {
        h1 { "Fulfillment queue" }
        p #queue-status role="status" aria-live="polite" { "As of loading this page; live updates need JavaScript." }
        p.muted #queue-help {
            "Drag a queued order to reorder it, or use its buttons. Claim an order to pick it, then advance it to packed and shipped."
        }
        ol #queue data-seq=(seq) aria-describedby="queue-help" {
            @for task in tasks.iter().filter(|t| is_open(t)) { (task_item(task)) }
        }
    };
    Ok(render(page_with("Fulfillment queue", &auth, &csrf, main, Some(&QUEUE))))
}

/// Whether a task is still work to do (queued, being picked or packed).
fn is_open(task: &Task) -> bool {
    matches!(task.state.as_str(), "QUEUED" | "PICKING" | "PACKED")
}

/// A task as the page first shows it (the script draws the same from the socket's messages).
fn task_item(task: &Task) -> Markup {
    html! {
        li.task data-task-id=(task.id) data-version=(task.version) data-state=(task.state) {
            strong { "Order " (super::shop::short(&task.order_id)) }
            " · " span.state { (task.state) }
            ul { @for line in &task.lines { li { (line.quantity) " × " (line.title) } } }
        }
    }
}

/// The fields of a book's form, as typed.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct BookForm {
    pub csrf: String,
    pub isbn: String,
    pub title: String,
    pub author: String,
    pub description: String,
    /// `19.99`.
    pub price: String,
    pub currency: String,
    pub stock: String,
}

impl BookForm {
    fn of(book: &Book) -> Self {
        let price = &book.price;
        Self {
            isbn: book.isbn.clone(),
            title: book.title.clone(),
            author: book.author.clone(),
            description: book.description.clone(),
            price: format!("{}.{:02}", price.amount_minor / 100, price.amount_minor % 100),
            currency: price.currency.clone(),
            ..Self::default()
        }
    }

    fn money(&self) -> Result<Money, ApiError> {
        Ok(Money { amount_minor: minor_units(&self.price)?, currency: self.currency.clone() })
    }
}

/// A price as typed (`19.99`, `20`, `0.5`) in minor units; 400 for anything else.
pub fn minor_units(text: &str) -> Result<i64, ApiError> {
    let bad = || ApiError::invalid("price: an amount like 19.99");
    let (units, cents) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    if units.is_empty() || cents.len() > 2 || !units.bytes().chain(cents.bytes()).all(|b| b.is_ascii_digit())
    {
        return Err(bad());
    }
    let units: i64 = units.parse().map_err(|_| bad())?;
    let cents: i64 = format!("{cents:0<2}").parse().map_err(|_| bad())?;
    units.checked_mul(100).and_then(|u| u.checked_add(cents)).ok_or_else(bad)
}

fn book_form(action: &str, csrf: &Csrf, form: &BookForm, new: bool, problem: Option<&str>) -> Markup {
    let field = |name: &'static str, label: &'static str, value: &str| {
        html! { label for=(name) { (label) } input id=(name) name=(name) value=(value) required; }
    };
    html! {
        @if let Some(problem) = problem { (alert(problem)) }
        form method="post" action=(action) {
            input type="hidden" name="csrf" value=(csrf.0);
            (field("isbn", "ISBN-13", &form.isbn))
            (field("title", "Title", &form.title))
            (field("author", "Author", &form.author))
            label for="description" { "Description" }
            input #description name="description" value=(form.description);
            (field("price", "Price (e.g. 19.99)", &form.price))
            (field("currency", "Currency (e.g. USD)", &form.currency))
            @if new {
                label for="stock" { "Units on the shelf" }
                input #stock type="number" name="stock" value=(form.stock) min="0";
            }
            p { button type="submit" { @if new { "Add the book" } @else { "Save" } } }
        }
    }
}

/// `GET /staff/books/new`.
pub async fn new_book_form(auth: Auth, csrf: Csrf) -> Result<Response, PageError> {
    auth.required()?;
    let form = BookForm { currency: "USD".into(), stock: "0".into(), ..BookForm::default() };
    let main = html! { h1 { "Add a book" } (book_form("/staff/books/new", &csrf, &form, true, None)) };
    Ok(render(page("Add a book", &auth, &csrf, main)))
}

/// `POST /staff/books/new`: adds the book and shows it; or the form again with why.
pub async fn create_book(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    axum::Form(form): axum::Form<BookForm>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    let made = async {
        let stock = form.stock.trim();
        let stock = if stock.is_empty() {
            0
        } else {
            stock.parse().map_err(|_| ApiError::invalid("stock: a whole number"))?
        };
        let body = CreateBook {
            isbn: form.isbn.clone(),
            title: form.title.clone(),
            author: form.author.clone(),
            description: form.description.clone(),
            price: form.money()?,
            stock,
        };
        let answer = crate::books::create_book(State(state), auth.clone(), error::Json(body)).await?;
        super::answer_of::<Book>(Ok(answer.into_response())).await.map(|(book, _)| book)
    };
    match made.await {
        Ok(book) => Ok(Redirect::to(&format!("/books/{}", book.id)).into_response()),
        Err(e) if form_can_say(&e) => {
            let main = html! { h1 { "Add a book" } (book_form("/staff/books/new", &csrf, &form, true, Some(&explain(&e)))) };
            Ok(refused(e.status, page("Add a book", &auth, &csrf, main)))
        }
        Err(e) => Err(e.into()),
    }
}

/// The staff's part of a book's page: edit it, adjust its stock.
pub fn book_tools(book: &Book, csrf: &Csrf) -> Markup {
    html! {
        section aria-labelledby="staff-tools" {
            h2 #staff-tools { "For staff" }
            p { (book.stock) " on the shelf, " (book.reserved) " held for orders, " (book.sold) " sold · "
                a href={ "/staff/books/" (book.id) "/edit" } { "Edit this book" } }
            form method="post" action={ "/staff/books/" (book.id) "/stock" } {
                input type="hidden" name="csrf" value=(csrf.0);
                label for="delta" { "Add units (negative to remove)" }
                input #delta type="number" name="delta" required;
                p { button type="submit" { "Adjust stock" } }
            }
        }
    }
}

/// `GET /staff/books/{id}/edit`.
pub async fn edit_book_form(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Path(id): Path<String>,
) -> Result<Response, PageError> {
    auth.required()?;
    let answer = crate::books::get_book(State(state), auth.clone(), error::Path(id.clone())).await;
    let (book, _): (Book, bool) = super::answer_of(answer).await?;
    let action = format!("/staff/books/{id}/edit");
    let main =
        html! { h1 { "Edit " (book.title) } (book_form(&action, &csrf, &BookForm::of(&book), false, None)) };
    Ok(render(page("Edit a book", &auth, &csrf, main)))
}

/// `POST /staff/books/{id}/edit`: saves every field; or the form again with why.
pub async fn edit_book(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<BookForm>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    let saved = async {
        let body = UpdateBook {
            isbn: Some(form.isbn.clone()),
            title: Some(form.title.clone()),
            author: Some(form.author.clone()),
            description: Some(form.description.clone()),
            price: Some(form.money()?),
        };
        crate::books::update_book(State(state), auth.clone(), error::Path(id.clone()), error::Json(body))
            .await
    };
    match saved.await {
        Ok(_) => Ok(Redirect::to(&format!("/books/{id}")).into_response()),
        Err(e) if form_can_say(&e) => {
            let action = format!("/staff/books/{id}/edit");
            let main =
                html! { h1 { "Edit a book" } (book_form(&action, &csrf, &form, false, Some(&explain(&e)))) };
            Ok(refused(e.status, page("Edit a book", &auth, &csrf, main)))
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct StockForm {
    pub csrf: String,
    pub delta: String,
}

/// `POST /staff/books/{id}/stock`: adds or removes units, then shows the book.
pub async fn adjust_stock(
    State(state): State<AppState>,
    auth: Auth,
    csrf: Csrf,
    Path(id): Path<String>,
    axum::Form(form): axum::Form<StockForm>,
) -> Result<Response, PageError> {
    checked(&form.csrf, &csrf)?;
    let delta =
        form.delta.trim().parse().map_err(|_| ApiError::invalid("delta: a whole number, not zero"))?;
    crate::books::adjust_stock(
        State(state),
        auth,
        error::Path(id.clone()),
        error::Json(StockAdjustment { delta }),
    )
    .await?;
    Ok(Redirect::to(&format!("/books/{id}")).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_price_becomes_minor_units_or_a_clear_refusal() {
        for (typed, minor) in [("19.99", 1999), ("20", 2000), ("0.5", 50), (" 7.05 ", 705), ("0", 0)] {
            assert_eq!(minor_units(typed).unwrap(), minor, "{typed}");
        }
        for bad in ["", "19.999", "-1", "1,50", "abc", ".5", "1e3", "99999999999999999999"] {
            assert!(minor_units(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_books_form_shows_its_price_as_typed() {
        let book = Book {
            id: "b".into(),
            isbn: "9780441172719".into(),
            title: "Dune".into(),
            author: "Frank Herbert".into(),
            description: String::new(),
            price: Money { amount_minor: 1905, currency: "USD".into() },
            stock: 1,
            reserved: 0,
            sold: 0,
            created_at: String::new(),
            updated_at: String::new(),
        };
        let form = BookForm::of(&book);
        assert_eq!(form.price, "19.05");
        assert_eq!(minor_units(&form.price).unwrap(), 1905);
        assert_eq!(super::super::layout::money(&form.money().unwrap()), "USD 19.05");
    }
}
