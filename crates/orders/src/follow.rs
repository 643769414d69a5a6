//! Orders follows its fulfillment tasks: TaskStateChanged moves the order PLACED → FULFILLING
//! (claimed or packed) → SHIPPED, or cancels it with staff's reason when its task was removed
//! (and its stock goes back on the shelf). Orders stays the arbiter: a move applies only if it
//! is ahead of where the order is ([`Status::following_task`]), so a customer's cancellation
//! that came first stands. Each event is applied once (the inbox), and a task event older than
//! one already applied is skipped (the task's version), so out-of-order delivery changes
//! nothing.

use anyhow::Context;
use bookstore_api::fulfillment::v1::TaskStateChanged;
use bookstore_api::orders::v1::EventEnvelope;
use bookstore_platform::clock::now_ms;
use bookstore_platform::events::{Event, inbox_begin};
use prost::Message;

use crate::checkout::Checkout;
use crate::domain::{Settle, Status};
use crate::events;
use crate::store::OrderStore;

/// The consumer's name: its queue, its inbox rows.
pub const CONSUMER: &str = "orders";
/// The only events its queue is bound to.
pub const TYPES: [&str; 1] = ["TaskStateChanged"];

/// Applies one task event to its order.
pub async fn handle(checkout: &Checkout, event: Event) -> anyhow::Result<()> {
    let envelope = EventEnvelope::decode(event.body.as_slice()).context("decoding an envelope")?;
    if envelope.r#type != "TaskStateChanged" {
        return Ok(());
    }
    let changed =
        TaskStateChanged::decode(envelope.payload.as_slice()).context("decoding TaskStateChanged")?;
    let store = checkout.store();
    let Some(order) = store.get(&changed.order_id).await? else {
        tracing::warn!(order = changed.order_id, "a task event for an order this service does not have");
        return Ok(());
    };
    let Some(mut tx) = inbox_begin(store.database(), CONSUMER, &event.id).await? else {
        return Ok(()); // applied before
    };
    let newer = OrderStore::advance_task_version(&mut tx, &order.id, changed.version).await?;
    let next = if newer { order.status.following_task(&changed.state) } else { None };
    if let Some(to) = next {
        let mut moved = order.clone();
        moved.status = to;
        moved.updated_at = now_ms();
        moved.status_reason.clone_from(&changed.reason);
        let published = if to == Status::Cancelled {
            events::order_cancelled(&moved)
        } else {
            events::order_status_changed(&moved, order.status)
        };
        // Moved by someone else since it was read: the event is tried again, and reads anew.
        anyhow::ensure!(
            OrderStore::transition_in(&mut tx, &order.id, order.status, to, &changed.reason, &published)
                .await?,
            "order {} changed while its task event was applied",
            order.id
        );
    }
    store.database().commit_events(tx).await.context("committing a task event's effect")?;
    if let Some(to) = next {
        tracing::info!(
            order = order.id,
            from = order.status.as_str(),
            to = to.as_str(),
            "order follows its task"
        );
    }
    if next == Some(Status::Cancelled)
        && let Err(e) = checkout.settle(&order.id, Settle::Release).await
    {
        // Cancelled all the same; the sweeper puts the stock back when books answers.
        tracing::warn!(order = order.id, error = %e, "releasing a removed order's stock failed; will retry");
    }
    Ok(())
}
