//! Per-instance subscriptions: every replica that subscribes receives every event of the types
//! it names (the competing consumers of [`Bus::consume`](super::Bus::consume) share one queue per
//! service instead). For state each replica keeps for itself: revoked tokens, cache entries to
//! drop, live views to update.
//!
//! A subscriber says where to start ([`StartAt`]) and gets each event with its position, so a
//! replica that restarts can catch up from the last position it handled, or from the beginning
//! of what the bus keeps.
//!
//! - On the embedded log the position is the log's sequence number; each subscriber reads the
//!   log on its own, with no stored offset.
//! - On RabbitMQ a subscription is a *stream* queue (`bookstore.<name>.stream`, kept seven days),
//!   bound to the exchange for its types and read by every replica with its own offset
//!   (`x-stream-offset`); the position is the stream offset. A classic queue per replica would
//!   deliver only what arrives while the replica is connected, which is no catching up.
//!
//! Delivery is at least once; a handler that fails is retried a few times and then the event is
//! skipped with a warning (what a replica keeps for itself can be rebuilt; nothing is
//! dead-lettered).

use std::future::Future;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::{Event, EventLog, RabbitBus};

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartAt {
    /// The oldest event the bus still keeps.
    Beginning,
    /// Only events published from now on.
    Now,
    /// The first event after this position (one a handler was given before).
    After(i64),
    /// Every event published from this moment on (milliseconds since the epoch), and perhaps a
    /// few from the second before it: a start fixed when a service is built, so that what is
    /// published once it serves is never missed, however late the subscription attaches. On
    /// RabbitMQ the stream is read from the oldest event it keeps, skipping those published
    /// before (each carries its publish time): give such a subscription a short `keep`.
    Since(i64),
}

/// A per-instance subscription to some event types.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Names the stream on RabbitMQ; replicas of one service share it (one stream, each
    /// reading it from its own offset).
    pub name: String,
    /// The event types delivered; others never reach the handler.
    pub types: Vec<String>,
    pub start: StartAt,
    /// How long RabbitMQ keeps its events (`x-max-age`, e.g. `7D`, `1h`): what a replica can
    /// catch up on.
    pub keep: &'static str,
}

/// What a subscription keeps unless it says otherwise: a week.
pub const KEEP: &str = "7D";

/// Runs `handler` for one event, retrying a few times; `false` when it gave up on it.
async fn handle<F, Fut>(name: &str, handler: &F, event: Event, position: i64) -> bool
where
    F: Fn(Event, i64) -> Fut + Send + Sync,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    for attempt in 1..=5u64 {
        match handler(event.clone(), position).await {
            Ok(()) => return true,
            Err(e) if attempt == 5 => {
                tracing::warn!(subscription = name, event = %event.id, error = %format!("{e:#}"), "event skipped after retries");
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20 * attempt)).await,
        }
    }
    false
}

impl EventLog {
    /// Delivers every event of the subscription's types from its start, until `shutdown`.
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
        if subscription.types.is_empty() {
            return Ok(());
        }
        let mut after = match subscription.start {
            StartAt::Beginning => 0,
            StartAt::After(position) => position,
            StartAt::Now => sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(seq) FROM event_log")
                .fetch_one(self.db.pool())
                .await
                .context("finding the end of the event log")?
                .unwrap_or(0),
            StartAt::Since(ms) => {
                sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(seq) FROM event_log WHERE created_at < $1")
                    .bind(ms)
                    .fetch_one(self.db.pool())
                    .await
                    .context("finding where the event log stood")?
                    .unwrap_or(0)
            }
        };
        let placeholders: Vec<String> =
            (0..subscription.types.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!(
            "SELECT seq, id, event_type, body FROM event_log WHERE seq > $1 AND event_type IN ({}) \
             ORDER BY seq LIMIT 100",
            placeholders.join(", ")
        );
        loop {
            let mut query = sqlx::query(&sql).bind(after);
            for event_type in &subscription.types {
                query = query.bind(event_type);
            }
            let Some(rows) = self.read_or_wait(query, &shutdown).await? else { return Ok(()) };
            for row in rows {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let seq: i64 = row.try_get(0)?;
                let event = Event { id: row.try_get(1)?, event_type: row.try_get(2)?, body: row.try_get(3)? };
                handle(&subscription.name, &handler, event, seq).await;
                after = seq;
            }
        }
    }
}

impl RabbitBus {
    /// Delivers every event of the subscription's types from its start, until `shutdown`;
    /// reconnects after a broker restart and resumes after the last position handled.
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
        let start = std::sync::Mutex::new(subscription.start);
        self.reconnecting(&subscription.name, &shutdown, || {
            self.subscribe_once(subscription, &start, &handler, &shutdown)
        })
        .await
    }

    /// One connection's worth of [`Self::subscribe`]; `start` moves past each event handled.
    async fn subscribe_once<F, Fut>(
        &self,
        subscription: &Subscription,
        start: &std::sync::Mutex<StartAt>,
        handler: &F,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn(Event, i64) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
        use lapin::types::{AMQPValue, FieldTable};
        let from = *start.lock().expect("subscription position");
        let offset = match from {
            StartAt::Beginning => AMQPValue::LongString("first".into()),
            StartAt::Now => AMQPValue::LongString("next".into()),
            StartAt::After(position) => AMQPValue::LongLongInt(position + 1),
            // Not a stream offset by time: this broker attaches those at the end when they fall
            // inside a chunk's second. The publish time of each event decides instead.
            StartAt::Since(_) => AMQPValue::LongString("first".into()),
        };
        // Publish times count whole seconds: the second `since` falls in is let through.
        let since_secs = match from {
            StartAt::Since(ms) => Some(ms.max(0) as u64 / 1000),
            _ => None,
        };
        let (conn, mut deliveries) = self
            .within("starting a subscription", async {
                let (conn, channel) = self.open().await?;
                let stream = declare_stream(self, &channel, subscription).await?;
                // A stream is read with a prefetch window and acknowledgements (which move the
                // window, not the data).
                channel.basic_qos(64, BasicQosOptions::default()).await.context("setting the prefetch")?;
                let mut args = FieldTable::default();
                args.insert("x-stream-offset".into(), offset);
                let deliveries = channel
                    .basic_consume(stream.as_str().into(), "".into(), BasicConsumeOptions::default(), args)
                    .await
                    .context("starting to read the stream")?;
                Ok((conn, deliveries))
            })
            .await?;
        while let Some(delivery) = super::rabbit::next_delivery(&conn, &mut deliveries, shutdown).await? {
            let position = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get("x-stream-offset").cloned())
                .and_then(|v| match v {
                    AMQPValue::LongLongInt(n) => Some(n),
                    AMQPValue::LongInt(n) => Some(i64::from(n)),
                    _ => None,
                })
                .context("a stream message without its offset")?;
            let event = super::rabbit::event_of(&delivery);
            let before_since = since_secs.is_some_and(|since| {
                delivery.properties.timestamp().is_some_and(|published| published < since)
            });
            // The stream may be bound to more types for another replica's version; deliver
            // only what this subscriber named.
            if subscription.types.contains(&event.event_type) && !before_since {
                handle(&subscription.name, handler, event, position).await;
            }
            *start.lock().expect("subscription position") = StartAt::After(position);
            delivery.acker.ack(BasicAckOptions::default()).await.context("acknowledging")?;
        }
        Ok(())
    }

    /// Declares the subscription's stream and its bindings, so events are kept for it.
    pub async fn declare_subscription(&self, subscription: &Subscription) -> anyhow::Result<()> {
        self.within("declaring a subscription", async {
            let (conn, channel) = self.open().await?;
            declare_stream(self, &channel, subscription).await?;
            conn.close(200, "done".into()).await.ok();
            Ok(())
        })
        .await
    }

    /// Removes a subscription's stream (tests clean up after themselves).
    #[cfg(test)]
    pub(crate) async fn delete_stream(&self, name: &str) -> anyhow::Result<()> {
        use lapin::options::QueueDeleteOptions;
        self.within("deleting a stream", async {
            let (conn, channel) = self.open().await?;
            let stream = self.queue(&format!("{name}.stream"));
            channel
                .queue_delete(stream.as_str().into(), QueueDeleteOptions::default())
                .await
                .context("deleting")?;
            conn.close(200, "done".into()).await.ok();
            Ok(())
        })
        .await
    }
}

/// The subscription's stream, bound to the exchange for its types; returns its name.
async fn declare_stream(
    rabbit: &RabbitBus,
    channel: &lapin::Channel,
    subscription: &Subscription,
) -> anyhow::Result<String> {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let stream = rabbit.queue(&format!("{}.stream", subscription.name));
    let exchange = rabbit.exchange();
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    // What a replica can catch up on: its `keep`, or 1 GB, whichever ends first.
    args.insert("x-max-age".into(), AMQPValue::LongString(subscription.keep.into()));
    args.insert("x-max-length-bytes".into(), AMQPValue::LongLongInt(1_000_000_000));
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel.queue_declare(stream.as_str().into(), durable, args).await.context("declaring the stream")?;
    for event_type in &subscription.types {
        channel
            .queue_bind(
                stream.as_str().into(),
                exchange.as_str().into(),
                event_type.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the stream")?;
    }
    Ok(stream)
}
