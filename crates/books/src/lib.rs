//! The books service: the catalog, its full-text search, and stock per book.
//!
//! - [`domain`]: types and rules (ISBN-13, money, paging, search queries); no I/O.
//! - [`store`]: all of its SQL, on PostgreSQL or SQLite.
//! - [`grpc`]: the tonic adapter (`bookstore.books.v1.BookService`).
//! - [`seed`]: the starter catalog.
//!
//! [`router`] assembles the service: gRPC, gRPC health, `/healthz`, `/readyz`, `/metrics`.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod seed;
pub mod store;

use axum::Router;
use bookstore_api::books::v1::book_service_server::BookServiceServer;
use std::sync::Arc;

use bookstore_platform::auth::Verifier;
use bookstore_platform::db::Migrations;
use bookstore_platform::server::{every, grpc_service_router};
use tokio_util::sync::CancellationToken;

pub use grpc::BooksGrpc;
pub use store::BookStore;

pub const SERVICE: &str = "books";

/// The books schema, one migration folder per backend.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

/// The whole books service as one router, ready for [`bookstore_platform::server::serve`].
/// Reads are open to anyone; writes need a staff or admin token, verified here with `verifier`.
pub async fn router(store: BookStore, verifier: Arc<Verifier>, shutdown: CancellationToken) -> Router {
    // Holds whose order never confirmed go back on the shelf.
    let sweeper = store.clone();
    every(std::time::Duration::from_secs(10), shutdown.clone(), move || {
        let sweeper = sweeper.clone();
        async move {
            match sweeper.release_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(orders = n, "released expired stock holds"),
                Err(e) => tracing::warn!(error = %e, "releasing expired holds failed"),
            }
        }
    });

    let db = store.database().clone();
    let routes = tonic::service::Routes::new(BookServiceServer::new(BooksGrpc::new(store)));
    grpc_service_router(SERVICE, "bookstore.books.v1.BookService", routes, verifier, db, shutdown).await
}
