//! The orders service: orders and their lifecycle, the checkout saga over books' stock
//! reservations, idempotency keys, and the outbox of events (OrderPlaced, OrderCancelled,
//! OrderStatusChanged) written in the same transaction as the change.
//!
//! - [`domain`]: statuses and their moves, baskets, totals; no I/O.
//! - [`store`]: all of its SQL.
//! - [`grpc`]: the tonic adapter and the saga.
#![forbid(unsafe_code)]

pub mod domain;
pub mod grpc;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bookstore_api::books::v1::book_service_client::BookServiceClient;
use bookstore_api::orders::v1::order_service_server::OrderServiceServer;
use bookstore_platform::auth::{ServiceToken, Verifier};
use bookstore_platform::db::Migrations;
use bookstore_platform::server::{every, grpc_service_router};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

pub use grpc::OrdersGrpc;
pub use store::OrderStore;

pub const SERVICE: &str = "orders";

pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

/// The whole orders service as one router. It calls books on `books` with its own service
/// `token`, and verifies its callers' tokens with `verifier`.
pub async fn router(
    store: OrderStore,
    books: Channel,
    token: Arc<ServiceToken>,
    verifier: Arc<Verifier>,
    shutdown: CancellationToken,
) -> Router {
    let grpc_service = OrdersGrpc::new(store.clone(), BookServiceClient::new(books), token);

    // Finishes settlements a crash or an outage interrupted: placed orders whose stock is
    // still only held get it confirmed, cancelled ones get it back on the shelf.
    let sweeper = grpc_service.clone();
    let sweep_store = store.clone();
    every(Duration::from_secs(5), shutdown.clone(), move || {
        let (sweeper, sweep_store) = (sweeper.clone(), sweep_store.clone());
        async move {
            let Ok(pending) = sweep_store.unsettled(100).await else { return };
            for (order, confirm) in pending {
                if let Err(e) = sweeper.settle(&order, confirm).await {
                    tracing::warn!(%order, error = %e, "settling stock failed; will retry");
                }
            }
        }
    });

    let db = store.database().clone();
    let routes = tonic::service::Routes::new(OrderServiceServer::new(grpc_service));
    grpc_service_router(SERVICE, "bookstore.orders.v1.OrderService", routes, verifier, db, shutdown).await
}
