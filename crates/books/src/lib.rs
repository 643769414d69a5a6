//! The books service: the catalog, its full-text search, and stock per book.
//!
//! - [`domain`]: types and rules (ISBN-13, money, paging, search queries); no I/O.
//! - [`store`]: all of its SQL, on PostgreSQL or SQLite.
//! - [`cache`]: the read cache of single books, in-process and optionally shared in Redis.
//! - [`grpc`]: the tonic adapter (`bookstore.books.v1.BookService`).
//! - [`seed`]: the starter catalog.
//! - [`settings`]: its configuration section, `[books]`.
//!
//! [`build`] assembles the service from its [`Context`]: gRPC, gRPC health, the holds sweeper.
#![forbid(unsafe_code)]

pub mod cache;
pub mod domain;
pub mod grpc;
pub mod seed;
pub mod settings;
pub mod store;

use std::time::Duration;

use bookstore_api::books::v1::book_service_server::BookServiceServer;
use bookstore_platform::db::Migrations;
use bookstore_platform::server::grpc_service_router;
use bookstore_platform::service::{Built, Context, Mode, Spec};

pub use grpc::BooksGrpc;
pub use settings::Settings;
pub use store::BookStore;

pub const SERVICE: &str = "books";

/// The books schema, one migration folder per backend.
pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

pub static SPEC: Spec =
    Spec { name: SERVICE, migrations: Some(&MIGRATIONS), uses_bus: false, uses_master_key: false };

/// The books service: its gRPC API, and the sweeper that puts expired stock holds back on the
/// shelf. Reads are open to anyone; writes need a staff or admin token.
pub async fn build(ctx: Context, settings: Settings) -> anyhow::Result<Built> {
    let db = ctx.database()?;
    let mut cache =
        cache::BookCache::none().with_local(Duration::from_millis(settings.cache_ttl_ms), 100_000);
    if let Some(url) = &settings.redis_url {
        let ttl = Duration::from_millis(settings.redis_cache_ttl_ms);
        cache = cache.with_shared(cache::Shared::connect(url, &settings.redis_key_prefix, ttl).await?);
    }
    let store = BookStore::new(db.clone()).with_read_cache(cache);
    // Other replicas' evictions, when the cache is shared.
    if settings.redis_url.is_some() {
        ctx.tasks.spawn("books-cache-evictions", store.read_cache().listen(ctx.tasks.stopping()));
    }
    if settings.seed.unwrap_or(ctx.mode == Mode::Up) {
        let added = seed::seed_if_empty(&store).await?;
        if added > 0 {
            tracing::info!(added, "loaded the starter catalog");
        }
    }

    // Holds whose order never confirmed go back on the shelf.
    let sweeper = store.clone();
    ctx.tasks.every("books-release-expired-holds", Duration::from_secs(10), move || {
        let sweeper = sweeper.clone();
        async move {
            match sweeper.release_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(orders = n, "released expired stock holds"),
                Err(e) => tracing::warn!(error = %e, "releasing expired holds failed"),
            }
        }
    });

    let routes = tonic::service::Routes::new(BookServiceServer::new(BooksGrpc::new(store)));
    let router = grpc_service_router(SERVICE, "bookstore.books.v1.BookService", routes, ctx.verifier).await;
    Ok(Built::new(router).with_database(SERVICE, &db))
}
