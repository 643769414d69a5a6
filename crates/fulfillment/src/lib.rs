//! The fulfillment service: one task per placed order in a work queue that staff load,
//! reorder, claim, advance and trim (seed 002's work queue).
//!
//! - [`domain`]: task states and their steps, changes; no I/O.
//! - [`store`]: all of its SQL; every change numbered in commit order.
//! - [`events`]: the consumer of OrderPlaced and OrderCancelled (its queue bound to those two
//!   types only), applied once each through the inbox.
//! - [`grpc`]: the tonic adapter, staff only; the live queue as a stream.
//! - [`fanout`]: replicas ring each other through Redis when a change is committed.
//! - [`settings`]: its configuration section, `[fulfillment]`.
//!
//! [`build`] assembles the service from its [`Context`].
#![forbid(unsafe_code)]

pub mod domain;
pub mod events;
pub mod fanout;
pub mod grpc;
pub mod settings;
pub mod store;

use std::sync::Arc;

use bookstore_api::fulfillment::v1::fulfillment_service_server::FulfillmentServiceServer;
use bookstore_platform::crypto::{event_key, stored_data_key};
use bookstore_platform::db::Migrations;
use bookstore_platform::server::grpc_service_router;
use bookstore_platform::service::{Built, Context, Spec};

pub use grpc::FulfillmentGrpc;
pub use settings::Settings;
pub use store::TaskStore;

pub const SERVICE: &str = "fulfillment";

pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

pub static SPEC: Spec =
    Spec { name: SERVICE, migrations: Some(&MIGRATIONS), uses_bus: true, uses_master_key: true };

/// The fulfillment service: its gRPC API and its consumer of orders' events.
pub async fn build(ctx: Context, settings: Settings) -> anyhow::Result<Built> {
    let db = ctx.database()?;
    let master = ctx.master_key()?;
    let mut store =
        TaskStore::new(db.clone(), stored_data_key(&db, &master, SERVICE).await?, settings.change_history);
    if let Some(url) = &settings.redis_url {
        let fanout = Arc::new(fanout::Fanout::connect(url, &settings.redis_channel).await?);
        store = store.with_fanout(fanout.clone());
        ctx.tasks.spawn("fulfillment-fanout", fanout.listen(store.clone(), ctx.tasks.stopping()));
    }
    let poll = std::time::Duration::from_millis(settings.change_poll_ms);
    ctx.tasks.spawn("fulfillment-change-follower", store.clone().follow(poll, ctx.tasks.stopping()));
    let events_key = Arc::new(event_key(&master, events::SHIPPING_ADDRESS));

    ctx.relay_outbox("fulfillment-outbox-relay")?;
    let consumer_store = store.clone();
    ctx.consume(events::CONSUMER, &events::TYPES, move |event| {
        let (store, key) = (consumer_store.clone(), events_key.clone());
        async move { events::handle(&store, &key, event).await }
    })?;

    let routes = tonic::service::Routes::new(FulfillmentServiceServer::new(FulfillmentGrpc::new(store)));
    let router = grpc_service_router(
        SERVICE,
        "bookstore.fulfillment.v1.FulfillmentService",
        routes,
        ctx.verifier.clone(),
    )
    .await;
    Ok(Built::new(router).with_database(SERVICE, &db))
}
