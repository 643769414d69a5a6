//! What fulfillment hears: OrderPlaced makes a task, OrderCancelled cancels it. Each event is
//! applied once (the inbox, in the same transaction as its effect), whatever the bus
//! redelivers. The shipping address arrives sealed under the events key and is kept encrypted
//! under fulfillment's own data key.
//!
//! What it says: TaskStateChanged, written to its outbox with each change of a task's state.

use anyhow::Context;
use bookstore_api::orders::v1 as orders;
use bookstore_platform::crypto::DataKey;
use bookstore_platform::events::{Event, inbox_begin};
use prost::Message;

use crate::domain::Line;
use crate::store::TaskStore;

/// The consumer's name: its RabbitMQ queue, its inbox rows.
pub const CONSUMER: &str = "fulfillment";
/// The only events its queue is bound to (the seed's filtering consumer).
pub const TYPES: [&str; 2] = ["OrderPlaced", "OrderCancelled"];
/// What opens the address sealed in OrderPlaced ([`bookstore_platform::crypto::event_key`]).
pub const SHIPPING_ADDRESS: &str = "shipping-address";

/// The payload schema version of the events fulfillment publishes.
pub const SCHEMA_VERSION: u32 = 1;

/// TaskStateChanged for `task` as it is now (no personal data).
pub fn task_state_changed(task: &crate::domain::Task) -> Event {
    let changed = bookstore_api::fulfillment::v1::TaskStateChanged {
        task_id: task.id.clone(),
        order_id: task.order_id.clone(),
        state: task.state.as_str().to_owned(),
        version: task.version,
        reason: task.reason.clone(),
        assignee: task.assignee.clone(),
    };
    bookstore_platform::events::enveloped("TaskStateChanged", changed.encode_to_vec(), SCHEMA_VERSION)
}

/// Applies one event: a task for a placed order, a cancelled one for a cancelled order.
pub async fn handle(store: &TaskStore, events_key: &DataKey, event: Event) -> anyhow::Result<()> {
    let envelope = orders::EventEnvelope::decode(event.body.as_slice()).context("decoding an envelope")?;
    let Some(mut tx) = inbox_begin(store.database(), CONSUMER, &event.id).await? else {
        return Ok(()); // applied before
    };
    let change = match envelope.r#type.as_str() {
        "OrderPlaced" => {
            let placed =
                orders::OrderPlaced::decode(envelope.payload.as_slice()).context("decoding OrderPlaced")?;
            let order = placed.order.context("OrderPlaced without an order")?;
            let address = match placed.sealed_shipping_address.is_empty() {
                true => None,
                false => Some(
                    events_key
                        .decrypt(&order.id, "shipping_address", &placed.sealed_shipping_address)
                        .context("opening the sealed shipping address")?,
                ),
            };
            let lines: Vec<Line> = order
                .lines
                .into_iter()
                .map(|l| Line { book_id: l.book_id, quantity: l.quantity, title: l.title })
                .collect();
            store.add(&mut tx, &order.id, &lines, address.as_deref()).await?
        }
        "OrderCancelled" => {
            let cancelled = orders::OrderCancelled::decode(envelope.payload.as_slice())
                .context("decoding OrderCancelled")?;
            let order = cancelled.order.context("OrderCancelled without an order")?;
            store.cancel_order(&mut tx, &order.id).await?
        }
        // Another type reached this consumer (the embedded log delivers every type): nothing
        // to do, and the inbox remembers it was seen.
        _ => None,
    };
    store.database().commit_events(tx).await.context("committing an event's effect")?;
    if let Some(change) = change {
        store.ring();
        tracing::info!(
            seq = change.seq,
            kind = change.kind.as_str(),
            order = change.task.order_id,
            "queue changed"
        );
    }
    Ok(())
}
