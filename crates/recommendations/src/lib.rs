//! The recommendations service: what to read next, learnt from what customers buy (seed 001's
//! recommendation service, which calls the resource services with credentials of its own).
//!
//! - [`store`]: all of its SQL: purchases, the co-purchase counts derived from them, rankings.
//! - [`events`]: the consumer of OrderPlaced and OrderCancelled (its queue bound to those two
//!   types only), applied once each through the inbox.
//! - [`grpc`]: the tonic adapter; turns rankings into answers with books read from books with
//!   its own service token, filled up with best-sellers and then the catalog.
//! - [`settings`]: its configuration section, `[recommendations]`.
//!
//! [`build`] assembles the service from its [`Context`].
#![forbid(unsafe_code)]

pub mod events;
pub mod grpc;
pub mod settings;
pub mod store;

use bookstore_api::recommendations::v1::recommendation_service_server::RecommendationServiceServer;
use bookstore_platform::db::Migrations;
use bookstore_platform::server::grpc_service_router;
use bookstore_platform::service::{Built, Context, Spec};

pub use grpc::RecommendationsGrpc;
pub use settings::Settings;
pub use store::Store;

pub const SERVICE: &str = "recommendations";

pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

/// What recommendations' own token is granted at books: reading.
pub const SCOPES_AT_BOOKS: &[&str] = &["books:read"];

pub static SPEC: Spec =
    Spec { name: SERVICE, migrations: Some(&MIGRATIONS), uses_bus: true, uses_master_key: false };

/// The recommendations service: its gRPC API and its consumer of orders' events. It reads books
/// with its own service token: minted in-process when users runs in this process, else obtained
/// from users with its service account (client credentials), renewed before it expires.
pub async fn build(ctx: Context, settings: Settings) -> anyhow::Result<Built> {
    let db = ctx.database()?;
    let store = Store::new(db.clone());
    let users = ctx.channel("users").await?;
    // Good at books alone, for reading: a token that leaked from here opens nothing else.
    let token = ctx.service_token(
        settings.client_id.clone(),
        settings.client_secret.clone(),
        &users,
        &["books"],
        SCOPES_AT_BOOKS,
    )?;

    let consumer_store = store.clone();
    ctx.consume(events::CONSUMER, &events::TYPES, move |event| {
        let store = consumer_store.clone();
        async move { events::handle(&store, event).await }
    })?;

    let keep = std::time::Duration::from_millis(settings.cache_ttl_ms);
    let grpc = RecommendationsGrpc::new(store, ctx.channel("books").await?, token, keep);
    let routes = tonic::service::Routes::new(RecommendationServiceServer::new(grpc));
    let router = grpc_service_router(
        SERVICE,
        "bookstore.recommendations.v1.RecommendationService",
        routes,
        ctx.verifier.clone(),
    )
    .await;
    Ok(Built::new(router).with_database(SERVICE, &db))
}
