//! The tonic adapter: proto messages in, domain values through the store, proto messages out;
//! store errors become gRPC statuses.

use bookstore_api::books::v1 as pb;
use bookstore_api::books::v1::book_service_server::BookService;
use bookstore_platform::auth::{Role, check_service_scope, require_or_scope};
use bookstore_platform::grpc::timestamp;
use bookstore_platform::status::{self, Shortfall};
use tonic::{Request, Response, Status};

use crate::domain::{
    Author, Book, BookPatch, Description, InvalidField, Isbn, Money, NewBook, PageRequest, ReservationState,
    ReserveLine, SearchQuery, Settlement, Title, parse_reserve_lines, parse_stock, parse_stock_delta,
};
use crate::store::{BookStore, StoreError};

/// Who may change the catalog.
const CATALOG_EDITORS: &[Role] = &[Role::Staff, Role::Admin];
/// Who may run the checkout saga's steps besides a service account granted `books:reserve`
/// (the orders service, with its own token).
const SAGA_CALLERS: &[Role] = &[Role::Admin];
/// What a service account needs to read the catalog (anyone else may, anonymous included).
const READ: &str = "books:read";
/// How long stock is held for an order that is never confirmed.
pub const DEFAULT_HOLD: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// The gRPC face of the books service.
#[derive(Debug, Clone)]
pub struct BooksGrpc {
    store: BookStore,
}

impl BooksGrpc {
    pub fn new(store: BookStore) -> Self {
        Self { store }
    }
}

fn invalid(err: InvalidField) -> Status {
    err.into()
}

impl From<StoreError> for Status {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound(_) => Status::not_found(err.to_string()),
            StoreError::DuplicateIsbn(_) => Status::already_exists(err.to_string()),
            StoreError::InsufficientStock { .. } => Status::failed_precondition(err.to_string()),
            StoreError::OutOfStock(ref lines) => {
                let detail = lines
                    .iter()
                    .map(|l| {
                        format!(
                            "{} ({}: {} requested, {} available)",
                            l.book_id, l.reason, l.requested, l.available
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                let shortfalls: Vec<Shortfall> = lines
                    .iter()
                    .map(|l| Shortfall {
                        book_id: l.book_id.clone(),
                        reason: l.reason.to_owned(),
                        requested: l.requested,
                        available: l.available,
                    })
                    .collect();
                status::out_of_stock(format!("not enough stock: {detail}"), &shortfalls)
            }
            StoreError::ReservationReleased(_) => Status::failed_precondition(err.to_string()),
            StoreError::NoReservation(_) => Status::not_found(err.to_string()),
            // The details stay in our logs; the caller learns only that it was not its fault.
            StoreError::Unexpected(e) => status::unexpected("books", &e),
        }
    }
}

fn to_proto(book: Book) -> pb::Book {
    pb::Book {
        id: book.id,
        isbn: book.isbn,
        title: book.title,
        author: book.author,
        description: book.description,
        price: Some(pb::Money { amount_minor: book.price_minor, currency: book.currency }),
        stock: book.stock,
        reserved: book.reserved,
        sold: book.sold,
        create_time: Some(timestamp(book.created_at)),
        update_time: Some(timestamp(book.updated_at)),
    }
}

fn page_to_proto(books: Vec<Book>, total: i64, page: PageRequest) -> pb::ListBooksResponse {
    pb::ListBooksResponse {
        books: books.into_iter().map(to_proto).collect(),
        total,
        page: page.page() as i32,
        limit: page.limit() as i32,
    }
}

fn money(price: Option<pb::Money>) -> Result<Money, InvalidField> {
    let price = price.ok_or(InvalidField { field: "price", reason: "is required".into() })?;
    Money::parse(price.amount_minor, &price.currency)
}

#[tonic::async_trait]
impl BookService for BooksGrpc {
    async fn get_book(&self, request: Request<pb::GetBookRequest>) -> Result<Response<pb::Book>, Status> {
        check_service_scope(&request, READ)?;
        let book = self.store.get(&request.into_inner().id).await?;
        Ok(Response::new(to_proto(book)))
    }

    async fn list_books(
        &self,
        request: Request<pb::ListBooksRequest>,
    ) -> Result<Response<pb::ListBooksResponse>, Status> {
        check_service_scope(&request, READ)?;
        let req = request.into_inner();
        let page = PageRequest::parse(req.page, req.limit).map_err(invalid)?;
        let author = req.author.as_deref().map(Author::parse).transpose().map_err(invalid)?;
        let (books, total) = self.store.list(page, author.as_ref()).await?;
        Ok(Response::new(page_to_proto(books, total, page)))
    }

    async fn create_book(
        &self,
        request: Request<pb::CreateBookRequest>,
    ) -> Result<Response<pb::Book>, Status> {
        require_or_scope(&request, CATALOG_EDITORS, "books:write")?;
        let req = request.into_inner();
        let book = NewBook {
            isbn: Isbn::parse(&req.isbn).map_err(invalid)?,
            title: Title::parse(&req.title).map_err(invalid)?,
            author: Author::parse(&req.author).map_err(invalid)?,
            description: Description::parse(&req.description).map_err(invalid)?,
            price: money(req.price).map_err(invalid)?,
            stock: parse_stock(req.stock).map_err(invalid)?,
        };
        let book = self.store.create(book).await?;
        tracing::info!(id = %book.id, isbn = %book.isbn, "book created");
        Ok(Response::new(to_proto(book)))
    }

    async fn update_book(
        &self,
        request: Request<pb::UpdateBookRequest>,
    ) -> Result<Response<pb::Book>, Status> {
        require_or_scope(&request, CATALOG_EDITORS, "books:write")?;
        let req = request.into_inner();
        let patch = BookPatch {
            isbn: req.isbn.as_deref().map(Isbn::parse).transpose().map_err(invalid)?,
            title: req.title.as_deref().map(Title::parse).transpose().map_err(invalid)?,
            author: req.author.as_deref().map(Author::parse).transpose().map_err(invalid)?,
            description: req.description.as_deref().map(Description::parse).transpose().map_err(invalid)?,
            price: req.price.map(|p| money(Some(p))).transpose().map_err(invalid)?,
        };
        let book = self.store.update(&req.id, patch).await?;
        Ok(Response::new(to_proto(book)))
    }

    async fn delete_book(
        &self,
        request: Request<pb::DeleteBookRequest>,
    ) -> Result<Response<pb::DeleteBookResponse>, Status> {
        require_or_scope(&request, CATALOG_EDITORS, "books:write")?;
        let id = request.into_inner().id;
        self.store.delete(&id).await?;
        tracing::info!(%id, "book deleted");
        Ok(Response::new(pb::DeleteBookResponse {}))
    }

    async fn search_books(
        &self,
        request: Request<pb::SearchBooksRequest>,
    ) -> Result<Response<pb::ListBooksResponse>, Status> {
        check_service_scope(&request, READ)?;
        let req = request.into_inner();
        let query = SearchQuery::parse(&req.query).map_err(invalid)?;
        let page = PageRequest::parse(req.page, req.limit).map_err(invalid)?;
        let (books, total) = self.store.search(&query, page).await?;
        Ok(Response::new(page_to_proto(books, total, page)))
    }

    async fn adjust_stock(
        &self,
        request: Request<pb::AdjustStockRequest>,
    ) -> Result<Response<pb::Book>, Status> {
        require_or_scope(&request, CATALOG_EDITORS, "books:write")?;
        let req = request.into_inner();
        let delta = parse_stock_delta(req.delta).map_err(invalid)?;
        let book = self.store.adjust_stock(&req.id, delta).await?;
        Ok(Response::new(to_proto(book)))
    }

    async fn reserve_stock(
        &self,
        request: Request<pb::ReserveStockRequest>,
    ) -> Result<Response<pb::ReserveStockResponse>, Status> {
        require_or_scope(&request, SAGA_CALLERS, "books:reserve")?;
        let req = request.into_inner();
        if req.order_id.is_empty() || req.order_id.len() > 64 {
            return Err(Status::invalid_argument("order_id: must be 1 to 64 characters"));
        }
        let lines =
            req.lines.into_iter().map(|l| ReserveLine { book_id: l.book_id, quantity: l.quantity }).collect();
        let lines = parse_reserve_lines(lines).map_err(invalid)?;
        let hold = match req.hold_seconds {
            0 => DEFAULT_HOLD,
            s if (1..=24 * 3600).contains(&s) => std::time::Duration::from_secs(s as u64),
            _ => return Err(Status::invalid_argument("hold_seconds: must be between 1 and 86400")),
        };
        let (reserved, expires_at) = self.store.reserve(&req.order_id, &lines, hold).await?;
        Ok(Response::new(pb::ReserveStockResponse {
            lines: reserved
                .into_iter()
                .map(|l| pb::ReservedLine {
                    book_id: l.book_id,
                    quantity: l.quantity,
                    unit_price: Some(pb::Money { amount_minor: l.price_minor, currency: l.currency }),
                    title: l.title,
                })
                .collect(),
            expire_time: Some(timestamp(expires_at)),
        }))
    }

    async fn confirm_reservation(
        &self,
        request: Request<pb::ReservationRequest>,
    ) -> Result<Response<pb::ReservationResponse>, Status> {
        require_or_scope(&request, SAGA_CALLERS, "books:reserve")?;
        let state = self.store.settle(&request.into_inner().order_id, Settlement::Confirm).await?;
        Ok(Response::new(pb::ReservationResponse { state: state.as_str().to_owned() }))
    }

    async fn confirm_reservations(
        &self,
        request: Request<pb::ConfirmReservationsRequest>,
    ) -> Result<Response<pb::ConfirmReservationsResponse>, Status> {
        require_or_scope(&request, SAGA_CALLERS, "books:reserve")?;
        let order_ids = request.into_inner().order_ids;
        if order_ids.len() > 1000 {
            return Err(Status::invalid_argument("order_ids: at most 1000 at once"));
        }
        let outcomes = self.store.confirm_many(&order_ids).await?;
        Ok(Response::new(pb::ConfirmReservationsResponse {
            outcomes: outcomes
                .into_iter()
                // "missing": books has no reservation for the order.
                .map(|(order_id, state)| pb::ReservationOutcome {
                    order_id,
                    state: state.map_or("missing", ReservationState::as_str).to_owned(),
                })
                .collect(),
        }))
    }

    async fn release_reservation(
        &self,
        request: Request<pb::ReservationRequest>,
    ) -> Result<Response<pb::ReservationResponse>, Status> {
        require_or_scope(&request, SAGA_CALLERS, "books:reserve")?;
        let state = self.store.settle(&request.into_inner().order_id, Settlement::Release).await?;
        Ok(Response::new(pb::ReservationResponse { state: state.as_str().to_owned() }))
    }
}
