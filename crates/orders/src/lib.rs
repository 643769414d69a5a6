//! The orders service: orders and their lifecycle, the checkout saga over books' stock
//! reservations, idempotency keys, and the outbox of events (OrderPlaced, OrderCancelled,
//! OrderStatusChanged) written in the same transaction as the change.
//!
//! - [`domain`]: statuses and their moves, baskets, totals; no I/O.
//! - [`store`]: all of its SQL.
//! - [`checkout`]: the checkout saga, its compensation, settling stock, an order's moves.
//! - [`confirmer`]: confirmations of placed orders, grouped (group commit).
//! - [`events`]: what it publishes (OrderPlaced, OrderCancelled, OrderStatusChanged).
//! - [`follow`]: what it hears: its orders' fulfillment tasks (TaskStateChanged).
//! - [`live`]: customers' orders, live: every replica hears every order's events and hands
//!   them to the owner's watches.
//! - [`grpc`]: the tonic adapter: proto ⇄ domain, who may do what.
//! - [`settings`]: its configuration section, `[orders]`.
//!
//! [`build`] assembles the service from its [`Context`].
#![forbid(unsafe_code)]

pub mod checkout;
pub mod confirmer;
pub mod domain;
pub mod events;
pub mod follow;
pub mod grpc;
pub mod live;
pub mod settings;
pub mod store;

use std::time::Duration;

use bookstore_api::orders::v1::order_service_server::OrderServiceServer;
use bookstore_platform::clock::now_ms;
use bookstore_platform::crypto::{event_key, stored_data_key};
use bookstore_platform::db::Migrations;
use bookstore_platform::events::StartAt;
use bookstore_platform::server::grpc_service_router;
use bookstore_platform::service::{Built, Context, Spec};

pub use checkout::Checkout;
pub use grpc::OrdersGrpc;
pub use settings::Settings;
pub use store::OrderStore;

pub const SERVICE: &str = "orders";

pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

/// What orders' own token is granted at books: reading prices, and the checkout saga's stock calls.
pub const SCOPES_AT_BOOKS: &[&str] = &["books:read", "books:reserve"];

pub static SPEC: Spec =
    Spec { name: SERVICE, migrations: Some(&MIGRATIONS), uses_bus: true, uses_master_key: true };

/// The orders service: its gRPC API, the outbox relay, and the sweeper that finishes
/// interrupted settlements. It calls books with its own service token, and users with the
/// caller's token (for the account's address when an order names none). Shipping addresses are
/// encrypted at rest under its data key, and sealed in OrderPlaced under the events key, both
/// under the master key.
pub async fn build(ctx: Context, settings: Settings) -> anyhow::Result<Built> {
    let db = ctx.database()?;
    let master = ctx.master_key()?;
    let store = OrderStore::new(db.clone(), stored_data_key(&db, &master, SERVICE).await?);
    let users = ctx.channel("users").await?;
    // Good at books alone, granted what it needs there.
    let token = ctx.service_token(
        settings.client_id.clone(),
        settings.client_secret.clone(),
        &users,
        &["books"],
        SCOPES_AT_BOOKS,
    )?;
    let events_key = event_key(&master, events::SHIPPING_ADDRESS);
    let checkout = Checkout::new(store.clone(), ctx.channel("books").await?, token, events_key, &ctx.tasks);

    ctx.relay_outbox("orders-outbox-relay")?;
    // Orders follow their fulfillment tasks.
    let follower = checkout.clone();
    ctx.consume(follow::CONSUMER, &follow::TYPES, move |event| {
        let checkout = follower.clone();
        async move { follow::handle(&checkout, event).await }
    })?;

    // Finishes settlements a crash or an outage interrupted: placed orders whose stock is
    // still only held get it confirmed, cancelled ones get it back on the shelf.
    let sweeper = checkout.clone();
    ctx.tasks.every("orders-settle-sweeper", Duration::from_secs(5), move || {
        let sweeper = sweeper.clone();
        async move { sweeper.settle_unsettled(100).await }
    });

    // Customers watch their own orders change, through any replica.
    let live = live::Live::default();
    let watched = live.clone();
    ctx.subscribe(
        live::SUBSCRIPTION,
        &live::TYPES,
        StartAt::Since(now_ms()),
        live::KEEP,
        move |event, _| {
            let result = watched.handle(&event);
            async move { result }
        },
    )?;

    let routes = tonic::service::Routes::new(OrderServiceServer::new(OrdersGrpc::new(checkout, users, live)));
    let router =
        grpc_service_router(SERVICE, "bookstore.orders.v1.OrderService", routes, ctx.verifier.clone()).await;
    Ok(Built::new(router).with_database(SERVICE, &db))
}
