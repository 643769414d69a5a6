//! `/api/v1/books`: the catalog over REST, translated to the books service's gRPC.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bookstore_api::books::v1 as pb;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::AppState;
use crate::auth::Auth;
use crate::error::{ApiError, ErrorBody, Json, Path, Query};

/// Money as integer minor units (cents) and an ISO 4217 currency; never a float.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Money {
    /// 0 to 100,000,000.
    #[schema(example = 1999, minimum = 0, maximum = 100_000_000)]
    #[serde(deserialize_with = "crate::error::integral")]
    pub amount_minor: i64,
    /// ISO 4217, any case.
    #[schema(example = "USD", pattern = r"^\s*[A-Za-z]{3}\s*$")]
    pub currency: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Book {
    #[schema(example = "0190b6a2-7c1e-7d2a-9a53-2f0c8b1e4d10")]
    pub id: String,
    /// ISBN-13, digits only.
    #[schema(example = "9780441172719")]
    pub isbn: String,
    #[schema(example = "Dune")]
    pub title: String,
    #[schema(example = "Frank Herbert")]
    pub author: String,
    pub description: String,
    pub price: Money,
    /// Units on the shelf, available to order.
    pub stock: i64,
    /// Units held for orders being placed.
    pub reserved: i64,
    /// Units sold.
    pub sold: i64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct BookPage {
    pub items: Vec<Book>,
    /// How many books match, over all pages.
    pub total: i64,
    pub page: i32,
    pub limit: i32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateBook {
    /// ISBN-13 (978 or 979) with a valid check digit; hyphens allowed.
    #[schema(example = "978-0-441-17271-9", pattern = r"^\s*97[89][0-9-]{10,14}\s*$")]
    pub isbn: String,
    /// 1 to 300 characters.
    #[schema(example = "Dune")]
    #[schema(
        min_length = 1,
        max_length = 300,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub title: String,
    /// 1 to 200 characters.
    #[schema(example = "Frank Herbert")]
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub author: String,
    /// Up to 5,000 characters.
    #[serde(default)]
    #[schema(max_length = 5000, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub description: String,
    pub price: Money,
    /// Units on the shelf, 0 to 1,000,000,000; 0 if omitted.
    #[serde(default, deserialize_with = "crate::error::integral")]
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    pub stock: i64,
}

/// Only the fields present change.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateBook {
    #[schema(pattern = r"^\s*97[89][0-9-]{10,14}\s*$")]
    pub isbn: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 300,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub title: Option<String>,
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub author: Option<String>,
    #[schema(max_length = 5000, pattern = r"^[^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*$")]
    pub description: Option<String>,
    pub price: Option<Money>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StockAdjustment {
    /// Units to add (positive) or remove (negative), not zero, at most 1,000,000,000 either way;
    /// stock never goes below zero.
    #[schema(example = 5, minimum = -1_000_000_000, maximum = 1_000_000_000)]
    #[serde(deserialize_with = "crate::error::integral")]
    pub delta: i64,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Full-text search over title, author and description; best match first. 1 to 16 words
    /// (runs of letters and digits), at most 200 characters.
    #[param(min_length = 1, max_length = 200)]
    pub q: Option<String>,
    /// Only books by this author (exact, case-insensitive), 1 to 200 characters. Not combined
    /// with `q`.
    #[param(
        min_length = 1,
        max_length = 200,
        pattern = r"^\s*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F]([^\u0000-\u0008\u000B-\u001F\u007F-\u009F]*[^\s\u0000-\u0008\u000B-\u001F\u007F-\u009F])?\s*$"
    )]
    pub author: Option<String>,
    /// 1-based page number (default 1).
    #[param(minimum = 1, maximum = 10000)]
    pub page: Option<i32>,
    /// Books per page, 1..=100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i32>,
}

pub(crate) fn rfc3339(ts: Option<prost_types::Timestamp>) -> String {
    ts.and_then(|t| {
        OffsetDateTime::from_unix_timestamp(t.seconds)
            .ok()
            .map(|d| d + time::Duration::nanoseconds(t.nanos.into()))
    })
    .and_then(|d| d.format(&Rfc3339).ok())
    .unwrap_or_default()
}

impl From<pb::Book> for Book {
    fn from(b: pb::Book) -> Self {
        let price = b.price.unwrap_or_default();
        Self {
            id: b.id,
            isbn: b.isbn,
            title: b.title,
            author: b.author,
            description: b.description,
            price: Money { amount_minor: price.amount_minor, currency: price.currency },
            stock: b.stock,
            reserved: b.reserved,
            sold: b.sold,
            created_at: rfc3339(b.create_time),
            updated_at: rfc3339(b.update_time),
        }
    }
}

impl From<pb::ListBooksResponse> for BookPage {
    fn from(r: pb::ListBooksResponse) -> Self {
        Self {
            items: r.books.into_iter().map(Book::from).collect(),
            total: r.total,
            page: r.page,
            limit: r.limit,
        }
    }
}

impl From<Money> for pb::Money {
    fn from(m: Money) -> Self {
        Self { amount_minor: m.amount_minor, currency: m.currency }
    }
}

/// List the catalog, or search it with `q`.
#[utoipa::path(
    get, path = "/api/v1/books", tag = "books", params(ListParams),
    responses(
        (status = 200, description = "A page of books", body = BookPage),
        (status = 400, description = "Bad paging or query", body = ErrorBody),
    )
)]
pub async fn list_books(
    State(state): State<AppState>,
    auth: Auth,
    Query(params): Query<ListParams>,
) -> Result<Response, ApiError> {
    let (page, limit) = crate::error::paging(params.page, params.limit)?;
    let (peer, client) = (&state.peers.books, &state.books);
    let (key, answer) = match params.q {
        Some(query) => {
            if params.author.is_some() {
                return Err(ApiError::invalid("q and author cannot be combined"));
            }
            let request = pb::SearchBooksRequest { query, page, limit };
            let key = format!("search {request:?}");
            let answer =
                state.read(peer, client, &auth, request, |mut c, r| async move { c.search_books(r).await });
            (key, answer.await)
        }
        None => {
            let request = pb::ListBooksRequest { page, limit, author: params.author };
            let key = format!("list {request:?}");
            let answer =
                state.read(peer, client, &auth, request, |mut c, r| async move { c.list_books(r).await });
            (key, answer.await)
        }
    };
    state.stale.serve(key, answer.map(BookPage::from))
}

/// One book.
#[utoipa::path(
    get, path = "/api/v1/books/{id}", tag = "books",
    params(("id" = String, Path, description = "Book id")),
    responses(
        (status = 200, description = "The book", body = Book),
        (status = 404, description = "No such book", body = ErrorBody),
    )
)]
pub async fn get_book(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let key = format!("book {id}");
    let request = pb::GetBookRequest { id };
    let answer = state.read(&state.peers.books, &state.books, &auth, request, |mut c, r| async move {
        c.get_book(r).await
    });
    state.stale.serve(key, answer.await.map(Book::from))
}

/// Add a book to the catalog.
#[utoipa::path(
    post, path = "/api/v1/books", tag = "books", request_body = CreateBook, security(("bearer" = [])),
    responses(
        (status = 201, description = "Created", body = Book, headers(("location" = String, description = "The new book's URL"))),
        (status = 400, description = "A field is invalid", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Staff or admin only", body = ErrorBody),
        (status = 409, description = "The ISBN is taken", body = ErrorBody),
        (status = 413, description = "The body is too large", body = ErrorBody),
    )
)]
pub async fn create_book(
    State(state): State<AppState>,
    auth: Auth,
    Json(body): Json<CreateBook>,
) -> Result<impl IntoResponse, ApiError> {
    let request = pb::CreateBookRequest {
        isbn: body.isbn,
        title: body.title,
        author: body.author,
        description: body.description,
        price: Some(body.price.into()),
        stock: body.stock,
    };
    let book: Book =
        state.books.clone().create_book(state.request(request, &auth)).await?.into_inner().into();
    let location = format!("/api/v1/books/{}", book.id);
    Ok((StatusCode::CREATED, [(axum::http::header::LOCATION, location)], Json(book)))
}

/// Change some fields of a book.
#[utoipa::path(
    patch, path = "/api/v1/books/{id}", tag = "books", request_body = UpdateBook, security(("bearer" = [])),
    params(("id" = String, Path, description = "Book id")),
    responses(
        (status = 200, description = "The updated book", body = Book),
        (status = 400, description = "A field is invalid", body = ErrorBody),
        (status = 404, description = "No such book", body = ErrorBody),
        (status = 409, description = "The new ISBN is taken", body = ErrorBody),
    )
)]
pub async fn update_book(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<UpdateBook>,
) -> Result<Json<Book>, ApiError> {
    let request = pb::UpdateBookRequest {
        id,
        isbn: body.isbn,
        title: body.title,
        author: body.author,
        description: body.description,
        price: body.price.map(Into::into),
    };
    let book = state.books.clone().update_book(state.request(request, &auth)).await?;
    Ok(Json(book.into_inner().into()))
}

/// Remove a book.
#[utoipa::path(
    delete, path = "/api/v1/books/{id}", tag = "books", security(("bearer" = [])),
    params(("id" = String, Path, description = "Book id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such book", body = ErrorBody),
    )
)]
pub async fn delete_book(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.books.clone().delete_book(state.request(pb::DeleteBookRequest { id }, &auth)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Add or remove units of stock.
#[utoipa::path(
    post, path = "/api/v1/books/{id}/stock", tag = "books", request_body = StockAdjustment, security(("bearer" = [])),
    params(("id" = String, Path, description = "Book id")),
    responses(
        (status = 200, description = "The book with its new stock", body = Book),
        (status = 400, description = "delta is zero or out of range", body = ErrorBody),
        (status = 404, description = "No such book", body = ErrorBody),
        (status = 409, description = "Not enough stock to remove", body = ErrorBody),
    )
)]
pub async fn adjust_stock(
    State(state): State<AppState>,
    auth: Auth,
    Path(id): Path<String>,
    Json(body): Json<StockAdjustment>,
) -> Result<Json<Book>, ApiError> {
    let request = pb::AdjustStockRequest { id, delta: body.delta };
    let book = state.books.clone().adjust_stock(state.request(request, &auth)).await?;
    Ok(Json(book.into_inner().into()))
}
