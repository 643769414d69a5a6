//! Events between services: at-least-once delivery, made effectively-once by consumers.
//!
//! - [`outbox`]: producers hand [`Event`]s to [`outbox::write`] inside the transaction of the
//!   change that caused them; [`relay_outbox`] publishes what is unpublished and marks it. A
//!   crash between publishing and marking publishes again: harmless, because...
//! - [`inbox`]: ...consumers record each processed event id in the same transaction as the
//!   event's effect ([`inbox_begin`]), so a redelivered event has no second effect.
//! - The bus behind [`Bus`]: [`log`], an embedded durable log ([`EventLog`], a table in a
//!   database of its own, for `bookstore up`), or [`rabbit`], RabbitMQ ([`RabbitBus`]) for real
//!   deployments, behind the same interface.
//!
//! An event a consumer fails `max_attempts` times is set aside as a dead letter, which an
//! operator lists, replays or discards ([`dead`]).
//!
//! Besides those competing consumers (one queue per service), [`subscribe`] gives every
//! replica every event of the types it names, from a position it chooses ([`Bus::subscribe`]).
//!
//! Platform owns the outbox and inbox tables: a service whose spec uses the bus gets
//! [`OUTBOX_MIGRATIONS`] applied to its database with its own, instead of declaring them.

pub mod dead;
pub mod inbox;
pub mod log;
pub mod outbox;
pub mod rabbit;
pub mod subscribe;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use dead::{DeadLetter, DeadLetterAdmin, DiscardReason, Which};
pub use inbox::inbox_begin;
pub use log::EventLog;
pub use outbox::{OUTBOX_MIGRATIONS, run_relay};
pub use rabbit::{BrokerTls, RabbitBus};
pub use subscribe::{KEEP, StartAt, Subscription};

/// An event of `event_type` with `payload` (its protobuf message, schema `schema_version`), in
/// the envelope every event travels in: a fresh id, the time, and the trace of the request that
/// caused it, so its consumers' work joins that trace.
pub fn enveloped(event_type: &str, payload: Vec<u8>, schema_version: u32) -> Event {
    use prost::Message;
    let id = uuid::Uuid::now_v7().to_string();
    let envelope = bookstore_api::orders::v1::EventEnvelope {
        id: id.clone(),
        r#type: event_type.to_owned(),
        time: Some(crate::grpc::timestamp(crate::clock::now_ms())),
        traceparent: crate::trace::current_traceparent().unwrap_or_default(),
        payload,
        schema_version,
    };
    Event { id, event_type: event_type.to_owned(), body: envelope.encode_to_vec() }
}

/// An event as it travels: its id (for deduplication), its type (for routing) and its body
/// (the encoded envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub body: Vec<u8>,
}

impl Event {
    /// Where this event came from, read from its envelope: when it was published (ms since the
    /// epoch) and the `traceparent` of the request that caused it (empty when it had none, or
    /// when the body is not an envelope).
    pub fn provenance(&self) -> (Option<i64>, String) {
        use prost::Message;
        let Ok(envelope) = bookstore_api::orders::v1::EventEnvelope::decode(self.body.as_slice()) else {
            return (None, String::new());
        };
        let time = envelope.time.map(|t| t.seconds * 1000 + i64::from(t.nanos) / 1_000_000);
        (time, envelope.traceparent)
    }
}

/// Where events go.
#[derive(Clone)]
pub enum Bus {
    Log(EventLog),
    Rabbit(Arc<RabbitBus>),
}

impl Bus {
    /// Publishes `events`; when this returns `Ok`, they are durable in the bus.
    pub async fn publish(&self, events: &[Event]) -> anyhow::Result<()> {
        match self {
            Bus::Log(log) => log.publish(events).await,
            Bus::Rabbit(rabbit) => rabbit.publish(events).await,
        }
    }

    /// Delivers every event, from where `consumer` left off, to `handler`, until `shutdown`.
    pub async fn consume<F, Fut>(
        &self,
        consumer: &str,
        handler: F,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn(Event) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        match self {
            Bus::Log(log) => log.consume(consumer, handler, shutdown).await,
            Bus::Rabbit(rabbit) => rabbit.consume(consumer, handler, shutdown).await,
        }
    }

    /// Makes sure events of `subscription`'s types are kept for it from now on, before any
    /// subscriber runs (on RabbitMQ: declares and binds its stream; the log keeps everything).
    /// As [`Bus::consume`], for the event types in `types` only: on RabbitMQ the consumer's
    /// queue is bound to those routing keys alone, so the broker never delivers the rest; on the
    /// log the rest are passed over (the position still moves past them).
    pub async fn consume_types<F, Fut>(
        &self,
        consumer: &str,
        types: &[&str],
        handler: F,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn(Event) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        match self {
            Bus::Log(log) => log.consume_types(consumer, Some(types), handler, shutdown).await,
            Bus::Rabbit(rabbit) => rabbit.narrowed(types).consume(consumer, handler, shutdown).await,
        }
    }

    /// Makes sure events of `types` are kept for `consumer` from now on, before it first
    /// consumes (on RabbitMQ: declares its queue, bound to those types; the log keeps
    /// everything). An event published to RabbitMQ before any queue is bound to its type is
    /// dropped by the broker, so this runs before publishers start.
    pub async fn declare_consumer(&self, consumer: &str, types: &[&str]) -> anyhow::Result<()> {
        match self {
            Bus::Log(_) => Ok(()),
            Bus::Rabbit(rabbit) => rabbit.narrowed(types).declare(consumer).await,
        }
    }

    /// How many events `consumer` gave up on and left in its dead letters.
    pub async fn dead_letter_count(&self, consumer: &str) -> anyhow::Result<u64> {
        match self {
            Bus::Log(log) => log.dead_letter_count(consumer).await,
            Bus::Rabbit(rabbit) => rabbit.dead_letter_count(consumer).await,
        }
    }

    pub async fn declare_subscription(&self, subscription: &Subscription) -> anyhow::Result<()> {
        match self {
            Bus::Log(_) => Ok(()),
            Bus::Rabbit(rabbit) => rabbit.declare_subscription(subscription).await,
        }
    }

    /// Delivers to this replica every event of `subscription`'s types, from its start, with
    /// each event's position, until `shutdown` ([`subscribe`]).
    pub async fn subscribe<F, Fut>(
        &self,
        subscription: &Subscription,
        handler: F,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn(Event, i64) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        match self {
            Bus::Log(log) => log.subscribe(subscription, handler, shutdown).await,
            Bus::Rabbit(rabbit) => rabbit.subscribe(subscription, handler, shutdown).await,
        }
    }
}

/// Between a consumer's effect and its acknowledgement: a crash here (tests arm this point to
/// kill the process) redelivers an event whose effect is done, which the inbox absorbs.
pub(crate) fn after_effect() -> anyhow::Result<()> {
    fail::fail_point!("consumer-after-effect", |_| -> anyhow::Result<()> { std::process::abort() });
    Ok(())
}

#[cfg(test)]
mod tests;
