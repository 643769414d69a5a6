//! Customers' orders, live: every orders replica subscribes to orders' own events
//! (OrderPlaced, OrderCancelled, OrderStatusChanged: one each time an order is placed or moves,
//! written in the same transaction as the move), and hands each order, as it is then, to the
//! watchers of its owner ([`crate::grpc`]'s `WatchMyOrders`).
//!
//! The events are the one source, so a watcher on any replica sees a change made through any
//! other, in the order the bus delivers them; every replica reads the whole stream
//! ([`bookstore_platform::events::subscribe`]), each from where it stood when it started. The
//! event carries the order without its shipping address, and so does the watch.

use std::sync::Arc;

use anyhow::Context;
use bookstore_api::orders::v1 as pb;
use bookstore_platform::events::Event;
use prost::Message;
use tokio::sync::broadcast;

/// The subscription's name: one stream on RabbitMQ that every orders replica reads.
pub const SUBSCRIPTION: &str = "orders-live";
/// Every event orders publishes when an order is placed or changes status.
pub const TYPES: [&str; 3] = ["OrderPlaced", "OrderCancelled", "OrderStatusChanged"];
/// How long the broker keeps the events for this subscription: a replica starting reads what
/// was published since it was built, so a little is plenty.
pub const KEEP: &str = "1h";
/// How many orders a watcher may fall behind before it is ended.
pub const BACKLOG: usize = 1024;
/// A watch resuming from `since_ms` is sent every order of its owner changed from this long
/// before it: a change stamped by a replica whose clock is behind by less is not missed.
pub const RESUME_SLACK_MS: i64 = 5_000;
/// At most this many orders are replayed to a resuming watch (the most recently changed ones
/// would be cut; a customer with more changes in the window reloads the list).
pub const RESUMED_AT_MOST: i64 = 500;

/// This replica's fan-out of changed orders to its watchers.
#[derive(Clone)]
pub struct Live {
    orders: broadcast::Sender<Arc<pb::Order>>,
}

impl Default for Live {
    fn default() -> Self {
        Self { orders: broadcast::channel(BACKLOG).0 }
    }
}

impl Live {
    /// Every order changed from now on (watchers keep only their owner's).
    pub fn watch(&self) -> broadcast::Receiver<Arc<pb::Order>> {
        self.orders.subscribe()
    }

    /// Hands the order of one of orders' events to the watchers.
    pub fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let envelope = pb::EventEnvelope::decode(event.body.as_slice()).context("decoding an envelope")?;
        let payload = envelope.payload.as_slice();
        let order = match envelope.r#type.as_str() {
            "OrderPlaced" => pb::OrderPlaced::decode(payload).context("decoding OrderPlaced")?.order,
            "OrderCancelled" => pb::OrderCancelled::decode(payload).context("decoding OrderCancelled")?.order,
            "OrderStatusChanged" => {
                pb::OrderStatusChanged::decode(payload).context("decoding OrderStatusChanged")?.order
            }
            _ => None,
        };
        if let Some(order) = order {
            // No watcher is fine.
            let _ = self.orders.send(Arc::new(order));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Order, Status};

    fn order(status: Status) -> Order {
        Order {
            id: "o1".into(),
            user_id: "u1".into(),
            status,
            lines: vec![],
            total_minor: 100,
            currency: "EUR".into(),
            created_at: 1,
            updated_at: 2,
            shipping_address: None,
            status_reason: String::new(),
        }
    }

    #[test]
    fn each_event_of_an_order_reaches_watchers_as_the_order_then() {
        let live = Live::default();
        let mut watcher = live.watch();
        let key = bookstore_platform::crypto::DataKey::new(
            "events",
            "k".into(),
            &bookstore_platform::crypto::DataKey::generate_material(),
        );
        live.handle(&crate::events::order_placed(&order(Status::Placed), &key)).unwrap();
        let moved = order(Status::Fulfilling);
        live.handle(&crate::events::order_status_changed(&moved, Status::Placed)).unwrap();
        live.handle(&crate::events::order_cancelled(&order(Status::Cancelled))).unwrap();
        let seen: Vec<String> = (0..3).map(|_| watcher.try_recv().unwrap().status.clone()).collect();
        assert_eq!(seen, ["PLACED", "FULFILLING", "CANCELLED"]);
        assert!(watcher.try_recv().is_err(), "nothing else");
    }
}
