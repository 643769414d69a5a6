//! Events between services: at-least-once delivery, made effectively-once by consumers.
//!
//! - Producers write each event in the same transaction as the change that caused it, to an
//!   `outbox` table of their own database; [`relay_outbox`] publishes what is unpublished and
//!   marks it. A crash between publishing and marking publishes again: harmless, because...
//! - ...consumers record each processed event id in an `inbox` table in the same transaction as
//!   the event's effect ([`inbox_begin`]), so a redelivered event has no second effect.
//! - The bus behind [`Bus`]: an embedded durable log ([`EventLog`], a table in a database of its
//!   own, for `bookstore up`), with RabbitMQ for real deployments to follow behind the same
//!   interface.
//!
//! A service's migrations create its tables:
//! `outbox (id TEXT PK, event_type TEXT, payload BLOB/BYTEA, created_at BIGINT, published_at BIGINT NULL)`,
//! `inbox (consumer TEXT, event_id TEXT, processed_at BIGINT, PRIMARY KEY (consumer, event_id))`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::db::{Database, Migrations};

/// An event as it travels: its id (for deduplication), its type (for routing) and its body
/// (the encoded envelope).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub id: String,
    pub event_type: String,
    pub body: Vec<u8>,
}

/// The embedded log's schema.
pub static LOG_MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

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
}

/// RabbitMQ as the bus: one durable topic exchange (`bookstore.events`, routing key = event
/// type), a durable quorum queue per consuming service bound to it, persistent messages with
/// publisher confirms, manual acknowledgements, and a dead-letter queue per consumer that the
/// broker fills once a message was delivered `max_attempts` times without an ack. Publishing
/// reconnects on the next call after a failure; consuming reconnects in a loop with backoff, so
/// both survive a broker restart.
pub struct RabbitBus {
    url: String,
    publisher: tokio::sync::Mutex<Option<(lapin::Connection, lapin::Channel)>>,
    pub max_attempts: u32,
    /// The event types (routing-key patterns) a consumer's queue is bound to: `#`, every event,
    /// unless a consumer narrows it to what it handles, so the broker drops the rest for it.
    pub topics: Vec<String>,
    /// How long one broker operation may take (connecting and declaring, or publishing a batch
    /// and collecting its confirmations) before the connection is given up as broken: a broker
    /// that accepts connections but cannot serve a queue must fail a publish, not hang it.
    pub timeout: Duration,
}

pub const EXCHANGE: &str = "bookstore.events";
pub const DEAD_LETTER_EXCHANGE: &str = "bookstore.events.dead";

impl RabbitBus {
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            publisher: tokio::sync::Mutex::new(None),
            max_attempts: 5,
            topics: vec!["#".into()],
            timeout: Duration::from_secs(30),
        }
    }

    /// `work`, or an error naming `what` once [`Self::timeout`] has passed.
    async fn within<T>(
        &self,
        what: &str,
        work: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        tokio::time::timeout(self.timeout, work).await.unwrap_or_else(|_| {
            Err(anyhow::anyhow!("{what}: RabbitMQ did not answer within {:?}", self.timeout))
        })
    }

    async fn open(&self) -> anyhow::Result<(lapin::Connection, lapin::Channel)> {
        use lapin::options::ExchangeDeclareOptions;
        let conn = lapin::Connection::connect(&self.url, lapin::ConnectionProperties::default())
            .await
            .context("connecting to RabbitMQ")?;
        let channel = conn.create_channel().await.context("opening a channel")?;
        let durable = ExchangeDeclareOptions { durable: true, ..Default::default() };
        for name in [EXCHANGE, DEAD_LETTER_EXCHANGE] {
            channel
                .exchange_declare(name.into(), lapin::ExchangeKind::Topic, durable, Default::default())
                .await
                .context("declaring the exchanges")?;
        }
        Ok((conn, channel))
    }

    /// Publishes each event persistently and waits for the broker's confirmation of all.
    pub async fn publish(&self, events: &[Event]) -> anyhow::Result<()> {
        let mut publisher = self.publisher.lock().await;
        let result = self.within("publishing", self.publish_on(&mut publisher, events)).await;
        if result.is_err() {
            // Start afresh next time: the connection may be gone, or stuck.
            *publisher = None;
        }
        result
    }

    async fn publish_on(
        &self,
        publisher: &mut Option<(lapin::Connection, lapin::Channel)>,
        events: &[Event],
    ) -> anyhow::Result<()> {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        if publisher.as_ref().is_none_or(|(conn, _)| !conn.status().connected()) {
            let (conn, channel) = self.open().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .context("enabling publisher confirms")?;
            *publisher = Some((conn, channel));
        }
        let (_, channel) = publisher.as_ref().expect("connected above");
        {
            let mut confirms = Vec::with_capacity(events.len());
            for e in events {
                let properties = lapin::BasicProperties::default()
                    .with_message_id(e.id.as_str().into())
                    .with_type(e.event_type.as_str().into())
                    .with_delivery_mode(2);
                let confirm = channel
                    .basic_publish(
                        EXCHANGE.into(),
                        e.event_type.as_str().into(),
                        BasicPublishOptions::default(),
                        &e.body,
                        properties,
                    )
                    .await
                    .context("publishing an event")?;
                confirms.push(confirm);
            }
            for confirm in confirms {
                let confirmation = confirm.await.context("waiting for the broker's confirmation")?;
                anyhow::ensure!(confirmation.is_ack(), "the broker refused an event");
            }
            Ok(())
        }
    }

    /// Declares `consumer`'s queue (and its dead-letter queue), bound to [`Self::topics`].
    /// Consuming does this too; calling it first makes sure nothing published meanwhile is missed.
    pub async fn declare(&self, consumer: &str) -> anyhow::Result<()> {
        self.within("declaring queues", async {
            let (conn, channel) = self.open().await?;
            declare_queues(&channel, consumer, self.max_attempts, &self.topics).await?;
            conn.close(200, "declared".into()).await.ok();
            Ok(())
        })
        .await
    }

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
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.consume_once(consumer, &handler, &shutdown).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    tracing::warn!(consumer, error = %format!("{e:#}"), "RabbitMQ consumer lost; reconnecting");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return Ok(()),
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One connection's worth of consuming: `Ok` on shutdown, `Err` when the connection broke.
    async fn consume_once<F, Fut>(
        &self,
        consumer: &str,
        handler: &F,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn(Event) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        use futures::StreamExt;
        use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
        let (conn, mut deliveries) = self
            .within("starting to consume", async {
                let (conn, channel) = self.open().await?;
                let queue = declare_queues(&channel, consumer, self.max_attempts, &self.topics).await?;
                channel.basic_qos(32, BasicQosOptions::default()).await.context("setting the prefetch")?;
                let deliveries = channel
                    .basic_consume(
                        queue.as_str().into(),
                        consumer.into(),
                        BasicConsumeOptions::default(),
                        Default::default(),
                    )
                    .await
                    .context("starting to consume")?;
                Ok((conn, deliveries))
            })
            .await?;
        loop {
            let delivery = tokio::select! {
                d = deliveries.next() => d,
                () = shutdown.cancelled() => {
                    conn.close(200, "shutting down".into()).await.ok();
                    return Ok(());
                }
            };
            let delivery = match delivery {
                Some(Ok(d)) => d,
                Some(Err(e)) => return Err(anyhow::Error::new(e).context("receiving")),
                None => anyhow::bail!("the broker ended the consumer"),
            };
            let event = Event {
                id: delivery.properties.message_id().as_ref().map(|s| s.to_string()).unwrap_or_default(),
                event_type: delivery.routing_key.to_string(),
                body: delivery.data.clone(),
            };
            match handler(event).await {
                Ok(()) => {
                    after_effect()?;
                    delivery.acker.ack(BasicAckOptions::default()).await.context("acknowledging")?;
                }
                Err(e) => {
                    tracing::debug!(consumer, error = %format!("{e:#}"), "event failed; the broker will redeliver");
                    delivery
                        .acker
                        .nack(BasicNackOptions { requeue: true, ..Default::default() })
                        .await
                        .context("rejecting")?;
                }
            }
        }
    }
}

impl RabbitBus {
    /// Takes every message from `consumer`'s dead-letter queue; returns their event ids.
    pub async fn drain_dead_letters(&self, consumer: &str) -> anyhow::Result<Vec<String>> {
        use lapin::options::BasicGetOptions;
        self.within("reading dead letters", async {
            let (conn, channel) = self.open().await?;
            let mut ids = Vec::new();
            let queue = format!("bookstore.{consumer}.dead");
            while let Some(message) = channel
                .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .context("reading dead letters")?
            {
                let id = message.delivery.properties.message_id().as_ref().map(|s| s.to_string());
                ids.push(id.unwrap_or_default());
            }
            conn.close(200, "done".into()).await.ok();
            Ok(ids)
        })
        .await
    }

    /// Removes `consumer`'s queues (tests clean up after themselves).
    pub async fn delete_queues(&self, consumer: &str) -> anyhow::Result<()> {
        use lapin::options::QueueDeleteOptions;
        self.within("deleting queues", async {
            let (conn, channel) = self.open().await?;
            for queue in [format!("bookstore.{consumer}"), format!("bookstore.{consumer}.dead")] {
                channel
                    .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                    .await
                    .context("deleting a queue")?;
            }
            conn.close(200, "done".into()).await.ok();
            Ok(())
        })
        .await
    }
}

/// The consumer's quorum queue (dead-lettering after `max_attempts` deliveries) and its
/// dead-letter queue; returns the queue's name.
async fn declare_queues(
    channel: &lapin::Channel,
    consumer: &str,
    max_attempts: u32,
    topics: &[String],
) -> anyhow::Result<String> {
    use lapin::options::{QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable};
    let queue = format!("bookstore.{consumer}");
    let dead = format!("{queue}.dead");
    let durable = QueueDeclareOptions { durable: true, ..Default::default() };
    channel
        .queue_declare(dead.as_str().into(), durable, FieldTable::default())
        .await
        .context("declaring the dead-letter queue")?;
    channel
        .queue_bind(
            dead.as_str().into(),
            DEAD_LETTER_EXCHANGE.into(),
            consumer.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .context("binding the dead-letter queue")?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    // The broker counts returns, not deliveries: a limit of n allows n + 1 deliveries.
    args.insert("x-delivery-limit".into(), AMQPValue::LongInt(max_attempts.saturating_sub(1) as i32));
    args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()));
    args.insert("x-dead-letter-routing-key".into(), AMQPValue::LongString(consumer.into()));
    channel.queue_declare(queue.as_str().into(), durable, args).await.context("declaring the queue")?;
    for topic in topics {
        channel
            .queue_bind(
                queue.as_str().into(),
                EXCHANGE.into(),
                topic.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("binding the queue")?;
    }
    Ok(queue)
}

/// An append-only log in a database: durable, deduplicated by event id, one position per
/// consumer. On SQLite (one writer at a time) positions follow commit order, which is what a
/// consumer reading "everything after my position" needs; it is the bus of `bookstore up`.
#[derive(Clone)]
pub struct EventLog {
    db: Database,
    appended: Arc<Notify>,
    /// Attempts per event before it goes to the dead letters.
    pub max_attempts: u32,
}

impl EventLog {
    pub async fn open(db: Database) -> anyhow::Result<Self> {
        db.migrate(&LOG_MIGRATIONS).await.context("event log migrations")?;
        Ok(Self { db, appended: Arc::new(Notify::new()), max_attempts: 5 })
    }

    pub async fn publish(&self, events: &[Event]) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write().await.context("starting to append events")?;
        for e in events {
            sqlx::query(
                "INSERT INTO event_log (id, event_type, body, created_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&e.id)
            .bind(&e.event_type)
            .bind(&e.body)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .context("appending an event")?;
        }
        tx.commit().await.context("committing events")?;
        self.appended.notify_waiters();
        Ok(())
    }

    async fn position(&self, consumer: &str) -> anyhow::Result<i64> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT seq FROM event_offsets WHERE consumer = $1")
            .bind(consumer)
            .fetch_optional(self.db.pool())
            .await
            .context("reading a consumer's position")?
            .unwrap_or(0))
    }

    async fn advance(&self, consumer: &str, seq: i64) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO event_offsets (consumer, seq) VALUES ($1, $2) \
             ON CONFLICT (consumer) DO UPDATE SET seq = excluded.seq",
        )
        .bind(consumer)
        .bind(seq)
        .execute(self.db.pool())
        .await
        .context("advancing a consumer")?;
        Ok(())
    }

    /// Delivers events after the consumer's position, in order; the position advances only after
    /// the handler succeeded (at-least-once). A handler failing `max_attempts` times sends the
    /// event to the dead letters, and the consumer moves on.
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
        loop {
            // Register for the wake-up before reading, so an append in between is not missed.
            let appended = self.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let after = self.position(consumer).await?;
            let rows = sqlx::query(
                "SELECT seq, id, event_type, body FROM event_log WHERE seq > $1 ORDER BY seq LIMIT 100",
            )
            .bind(after)
            .fetch_all(self.db.pool())
            .await
            .context("reading the event log")?;
            if rows.is_empty() {
                tokio::select! {
                    () = appended => continue,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    () = shutdown.cancelled() => return Ok(()),
                }
            }
            for row in rows {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let seq: i64 = row.try_get(0)?;
                let event = Event { id: row.try_get(1)?, event_type: row.try_get(2)?, body: row.try_get(3)? };
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    match handler(event.clone()).await {
                        Ok(()) => {
                            after_effect()?;
                            break;
                        }
                        Err(e) if attempt >= self.max_attempts => {
                            tracing::warn!(consumer, event = %event.id, error = %format!("{e:#}"), "event dead-lettered");
                            sqlx::query(
                                "INSERT INTO event_dead_letters (consumer, seq, id, error, created_at) \
                                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (consumer, seq) DO NOTHING",
                            )
                            .bind(consumer)
                            .bind(seq)
                            .bind(&event.id)
                            .bind(format!("{e:#}"))
                            .bind(now_ms())
                            .execute(self.db.pool())
                            .await
                            .context("dead-lettering an event")?;
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(consumer, event = %event.id, attempt, error = %format!("{e:#}"), "event failed; retrying");
                            tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                        }
                    }
                }
                self.advance(consumer, seq).await?;
            }
        }
    }

    /// Events a consumer gave up on: (event id, error).
    pub async fn dead_letters(&self, consumer: &str) -> anyhow::Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT id, error FROM event_dead_letters WHERE consumer = $1 ORDER BY seq")
            .bind(consumer)
            .fetch_all(self.db.pool())
            .await
            .context("reading dead letters")?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()
            .map_err(Into::into)
    }
}

/// Between a consumer's effect and its acknowledgement: a crash here (tests arm this point to
/// kill the process) redelivers an event whose effect is done, which the inbox absorbs.
fn after_effect() -> anyhow::Result<()> {
    fail::fail_point!("consumer-after-effect", |_| -> anyhow::Result<()> { std::process::abort() });
    Ok(())
}

/// Publishes up to `batch` unpublished events from `db`'s outbox, oldest first, then marks them
/// published; returns how many. A crash between the two publishes them again on the next run,
/// which consumers absorb.
pub async fn relay_outbox(db: &Database, bus: &Bus, batch: i64) -> anyhow::Result<usize> {
    let rows = sqlx::query(
        "SELECT id, event_type, payload FROM outbox WHERE published_at IS NULL ORDER BY created_at, id LIMIT $1",
    )
    .bind(batch)
    .fetch_all(db.pool())
    .await
    .context("reading the outbox")?;
    if rows.is_empty() {
        return Ok(0);
    }
    let events = rows
        .iter()
        .map(|r| Ok(Event { id: r.try_get(0)?, event_type: r.try_get(1)?, body: r.try_get(2)? }))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .context("decoding the outbox")?;
    // A crash here leaves committed events unpublished; the next run publishes them.
    fail::fail_point!("relay-before-publish", |_| -> anyhow::Result<usize> { std::process::abort() });
    bus.publish(&events).await.context("publishing the outbox")?;
    // A crash here (tests arm this point to kill the process) leaves published events unmarked;
    // the next run publishes them again, which consumers' inboxes absorb.
    fail::fail_point!("relay-after-publish", |_| -> anyhow::Result<usize> { std::process::abort() });
    // Shutdown tests land a SIGTERM here: the batch must still be marked before the exit.
    crate::pause_point("relay-mid-batch").await;
    // One statement marks the whole batch: under load the relay would otherwise cost a commit
    // per event on the producer's database.
    let placeholders: Vec<String> = (0..events.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!("UPDATE outbox SET published_at = $1 WHERE id IN ({})", placeholders.join(", "));
    let mut mark = sqlx::query(&sql).bind(now_ms());
    for e in &events {
        mark = mark.bind(&e.id);
    }
    mark.execute(db.pool()).await.context("marking events published")?;
    Ok(events.len())
}

/// Runs [`relay_outbox`] until `shutdown`: at once after each full batch, else every `idle`.
pub async fn run_relay(db: Database, bus: Bus, idle: Duration, shutdown: CancellationToken) {
    loop {
        let wait = match relay_outbox(&db, &bus, 100).await {
            Ok(100) => Duration::ZERO,
            Ok(_) => idle,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "outbox relay failed; retrying");
                idle.max(Duration::from_secs(1))
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// Starts the effect of `event_id` for `consumer`: a transaction that already holds the inbox
/// record, or `None` when the event was processed before. Apply the effect in the transaction
/// and commit: the effect and the record land together or not at all.
pub async fn inbox_begin(
    db: &Database,
    consumer: &str,
    event_id: &str,
) -> anyhow::Result<Option<sqlx::Transaction<'static, sqlx::Any>>> {
    let mut tx = db.begin_write().await.context("starting an inbox transaction")?;
    let inserted = sqlx::query(
        "INSERT INTO inbox (consumer, event_id, processed_at) VALUES ($1, $2, $3) ON CONFLICT (consumer, event_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(event_id)
    .bind(now_ms())
    .execute(&mut *tx)
    .await
    .context("recording an event in the inbox")?;
    if inserted.rows_affected() == 0 {
        tx.rollback().await.ok();
        return Ok(None);
    }
    Ok(Some(tx))
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::db::Backend;
    use crate::testing::TestDatabase;

    /// A RabbitMQ bus for one test, with a consumer name nobody else uses, which is also the
    /// only event type its queue is bound to: the exchange is shared with every test running
    /// at the same time, and their events must not reach this one.
    fn rabbit() -> Option<(RabbitBus, String, String)> {
        let url = crate::testing::amqp_url_or_skip()?;
        let consumer = format!("test-{}", uuid::Uuid::new_v4().simple());
        Some((isolated(&url, &consumer), consumer, url))
    }

    fn isolated(url: &str, consumer: &str) -> RabbitBus {
        let mut bus = RabbitBus::new(url);
        bus.topics = vec![consumer.to_owned()];
        bus
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_delivers_each_event_and_dead_letters_a_poison_one() {
        let Some((mut bus, consumer, _)) = rabbit() else { return };
        bus.max_attempts = 3;
        let bus = Arc::new(bus);
        bus.declare(&consumer).await.unwrap();
        let ours = |n: usize| Event {
            id: format!("{consumer}-e{n}"),
            event_type: consumer.clone(),
            body: vec![n as u8],
        };
        Bus::Rabbit(bus.clone()).publish(&[ours(1), ours(2), ours(3)]).await.unwrap();

        let seen = Arc::new(Mutex::new(Vec::new()));
        let poison_tries = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (seen2, tries2, stop2) = (seen.clone(), poison_tries.clone(), stop.clone());
        let poison = format!("{consumer}-e1");
        let consuming_bus = Bus::Rabbit(bus.clone());
        let run = consuming_bus.consume(
            &consumer,
            move |e: Event| {
                let (seen, tries, stop, poison) =
                    (seen2.clone(), tries2.clone(), stop2.clone(), poison.clone());
                async move {
                    if e.id == poison {
                        tries.fetch_add(1, Ordering::SeqCst);
                        anyhow::bail!("poison");
                    }
                    let mut seen = seen.lock().unwrap();
                    seen.push(e.id);
                    if seen.len() == 2 && tries.load(Ordering::SeqCst) >= 3 {
                        stop.cancel();
                    }
                    Ok(())
                }
            },
            stop.clone(),
        );
        // The poison message may still be cycling when the good ones are done; give it time.
        let stopper = {
            let (stop, tries) = (stop.clone(), poison_tries.clone());
            tokio::spawn(async move {
                for _ in 0..200 {
                    if tries.load(Ordering::SeqCst) >= 3 {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                stop.cancel();
            })
        };
        tokio::time::timeout(Duration::from_secs(30), run).await.expect("consumer stopped").unwrap();
        stopper.await.unwrap();
        let mut seen = seen.lock().unwrap().clone();
        seen.sort();
        assert_eq!(seen, [format!("{consumer}-e2"), format!("{consumer}-e3")]);
        assert_eq!(poison_tries.load(Ordering::SeqCst), 3, "delivered max_attempts times");
        let mut dead = Vec::new();
        for _ in 0..50 {
            dead.extend(bus.drain_dead_letters(&consumer).await.unwrap());
            if !dead.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(dead, [format!("{consumer}-e1")], "the poison message is in the dead-letter queue");
        bus.delete_queues(&consumer).await.unwrap();
    }

    /// A TCP proxy whose connections can be cut, like a broker restart seen from the client.
    async fn cuttable_proxy(
        upstream: std::net::SocketAddr,
    ) -> (std::net::SocketAddr, tokio::sync::watch::Sender<u64>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, generation) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut generation = generation.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                    generation.borrow_and_update();
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = generation.changed() => {}
                    }
                });
            }
        });
        (addr, cut)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rabbitmq_connection_loss_mid_stream_loses_nothing_and_repeats_no_effect() {
        let Some((_, consumer, url)) = rabbit() else { return };
        let parsed = url::Url::parse(&url).unwrap();
        let upstream = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap_or(5672));
        let upstream: std::net::SocketAddr = tokio::net::lookup_host(upstream).await.unwrap().next().unwrap();
        let (proxy, cut) = cuttable_proxy(upstream).await;
        let mut via_proxy = parsed.clone();
        via_proxy.set_port(Some(proxy.port())).unwrap();
        via_proxy.set_host(Some("127.0.0.1")).unwrap();
        let consumer_bus = isolated(via_proxy.as_str(), &consumer);
        let publisher = RabbitBus::new(url.clone());
        each_event_once_across(consumer_bus, publisher, &consumer, || async {
            cut.send_modify(|g| *g += 1);
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rabbitmq_restart_mid_stream_loses_nothing_and_repeats_no_effect() {
        let Some(mut node) = crate::testing::RabbitNode::start_or_skip().await else { return };
        let consumer = format!("test-{}", uuid::Uuid::new_v4().simple());
        let consumer_bus = isolated(&node.url(), &consumer);
        let publisher = RabbitBus::new(node.url());
        let node = &mut node;
        each_event_once_across(consumer_bus, publisher, &consumer, || async move {
            node.stop();
            node.start().await.expect("restarting the broker");
        })
        .await;
    }

    /// Publishes 30 events, starts consuming them with an inbox, runs `disrupt` once 10 were
    /// handled, publishes 30 more (retrying while the broker is away), and checks that each of
    /// the 60 had exactly one effect.
    async fn each_event_once_across<D, Fut>(
        consumer_bus: RabbitBus,
        publisher: RabbitBus,
        consumer: &str,
        disrupt: D,
    ) where
        D: FnOnce() -> Fut,
        Fut: Future<Output = ()>,
    {
        let consumer_bus = Arc::new(consumer_bus);
        let publisher = Bus::Rabbit(Arc::new(publisher));
        consumer_bus.declare(consumer).await.unwrap();

        let test_db = TestDatabase::sqlite();
        let db = Database::connect(&test_db.url, &Default::default()).await.unwrap();
        for ddl in [
            "CREATE TABLE inbox (consumer TEXT NOT NULL, event_id TEXT NOT NULL, processed_at BIGINT NOT NULL, PRIMARY KEY (consumer, event_id))",
            "CREATE TABLE effects (event_id TEXT NOT NULL)",
        ] {
            sqlx::query(ddl).execute(db.pool()).await.unwrap();
        }
        let events: Vec<Event> = (0..60)
            .map(|n| Event { id: format!("{consumer}-{n}"), event_type: consumer.to_owned(), body: vec![] })
            .collect();
        publisher.publish(&events[..30]).await.unwrap();

        let stop = CancellationToken::new();
        let handled = Arc::new(AtomicUsize::new(0));
        let (db2, stop2, handled2) = (db.clone(), stop.clone(), handled.clone());
        let run = tokio::spawn({
            let bus = Bus::Rabbit(consumer_bus.clone());
            let consumer = consumer.to_owned();
            async move {
                bus.consume(
                    &consumer,
                    move |e: Event| {
                        let (db, stop, handled) = (db2.clone(), stop2.clone(), handled2.clone());
                        async move {
                            if let Some(mut tx) = inbox_begin(&db, "effects", &e.id).await? {
                                sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                                    .bind(&e.id)
                                    .execute(&mut *tx)
                                    .await?;
                                tx.commit().await?;
                            }
                            let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects")
                                .fetch_one(db.pool())
                                .await?;
                            if count >= 60 {
                                stop.cancel();
                            }
                            handled.fetch_add(1, Ordering::SeqCst);
                            Ok(())
                        }
                    },
                    stop.clone(),
                )
                .await
            }
        });
        // Disrupt while messages are in flight, then publish the rest.
        for _ in 0..500 {
            if handled.load(Ordering::SeqCst) >= 10 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        disrupt().await;
        let give_up = tokio::time::Instant::now() + Duration::from_secs(90);
        while let Err(e) = publisher.publish(&events[30..]).await {
            assert!(tokio::time::Instant::now() < give_up, "no publish succeeded for 90 s: {e:#}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        match tokio::time::timeout(Duration::from_secs(90), run).await {
            Ok(finished) => finished.unwrap().expect("the consumer ends cleanly when stopped"),
            Err(_) => {
                let effects: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM effects").fetch_one(db.pool()).await.unwrap();
                panic!(
                    "the consumer did not finish in 90 s: {} deliveries handled, {effects} of 60 effects",
                    handled.load(Ordering::SeqCst)
                );
            }
        }

        let effects: Vec<String> =
            sqlx::query_scalar("SELECT event_id FROM effects").fetch_all(db.pool()).await.unwrap();
        let distinct: std::collections::HashSet<_> = effects.iter().collect();
        assert_eq!(effects.len(), 60, "every event had an effect");
        assert_eq!(distinct.len(), 60, "and only one");
        consumer_bus.delete_queues(consumer).await.unwrap();
    }

    crate::backend_tests!(
        the_log_delivers_each_event_once_in_order_and_resumes_where_it_stopped,
        a_failing_event_is_retried_then_dead_lettered,
        a_relay_crash_and_a_consumer_crash_still_give_exactly_one_effect,
    );

    fn event(n: usize) -> Event {
        Event { id: format!("e{n}"), event_type: "Test".into(), body: vec![n as u8] }
    }

    async fn log(backend: Backend) -> Option<(TestDatabase, Bus, Database)> {
        let test_db = TestDatabase::new(backend).await?;
        let db = Database::connect(&test_db.url, &Default::default()).await.unwrap();
        let log = EventLog::open(db.clone()).await.unwrap();
        Some((test_db, Bus::Log(log), db))
    }

    /// Consumes until `n` events arrived (or 10 s passed), then stops.
    async fn collect(bus: &Bus, consumer: &str, n: usize) -> Vec<String> {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (seen2, stop2) = (seen.clone(), stop.clone());
        let run = bus.consume(
            consumer,
            move |e: Event| {
                let (seen, stop) = (seen2.clone(), stop2.clone());
                async move {
                    let mut seen = seen.lock().unwrap();
                    seen.push(e.id);
                    if seen.len() >= n {
                        stop.cancel();
                    }
                    Ok(())
                }
            },
            stop.clone(),
        );
        tokio::time::timeout(Duration::from_secs(10), run).await.expect("consumer finished").unwrap();
        seen.lock().unwrap().clone()
    }

    async fn the_log_delivers_each_event_once_in_order_and_resumes_where_it_stopped(backend: Backend) {
        let Some((_t, bus, _db)) = log(backend).await else { return };
        bus.publish(&[event(1), event(2)]).await.unwrap();
        bus.publish(&[event(2), event(3)]).await.unwrap(); // e2 again: deduplicated
        assert_eq!(collect(&bus, "c1", 3).await, ["e1", "e2", "e3"]);
        bus.publish(&[event(4)]).await.unwrap();
        assert_eq!(collect(&bus, "c1", 1).await, ["e4"], "a restarted consumer resumes after its position");
        assert_eq!(
            collect(&bus, "c2", 4).await,
            ["e1", "e2", "e3", "e4"],
            "each consumer has its own position"
        );
    }

    async fn a_failing_event_is_retried_then_dead_lettered(backend: Backend) {
        let Some((_t, _bus, db)) = log(backend).await else { return };
        let mut log = EventLog::open(db).await.unwrap();
        log.max_attempts = 3;
        let bus = Bus::Log(log.clone());
        bus.publish(&[event(1), event(2)]).await.unwrap();
        let attempts = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let (a, s) = (attempts.clone(), stop.clone());
        bus.consume(
            "c",
            move |e: Event| {
                let (a, s) = (a.clone(), s.clone());
                async move {
                    if e.id == "e1" {
                        a.fetch_add(1, Ordering::SeqCst);
                        anyhow::bail!("poison");
                    }
                    s.cancel();
                    Ok(())
                }
            },
            stop.clone(),
        )
        .await
        .unwrap();
        assert_eq!(attempts.load(Ordering::SeqCst), 3, "tried max_attempts times");
        let dead = log.dead_letters("c").await.unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].0, "e1");
        assert!(dead[0].1.contains("poison"));
    }

    async fn a_relay_crash_and_a_consumer_crash_still_give_exactly_one_effect(backend: Backend) {
        let Some((_t, bus, db)) = log(backend).await else { return };
        let blob = if backend == Backend::Postgres { "BYTEA" } else { "BLOB" };
        for ddl in [
            format!("CREATE TABLE outbox (id TEXT PRIMARY KEY, event_type TEXT NOT NULL, payload {blob} NOT NULL, created_at BIGINT NOT NULL, published_at BIGINT)"),
            "CREATE TABLE inbox (consumer TEXT NOT NULL, event_id TEXT NOT NULL, processed_at BIGINT NOT NULL, PRIMARY KEY (consumer, event_id))".into(),
            "CREATE TABLE effects (event_id TEXT NOT NULL)".into(),
        ] {
            sqlx::query(&ddl).execute(db.pool()).await.unwrap();
        }
        for n in 0..20 {
            sqlx::query(
                "INSERT INTO outbox (id, event_type, payload, created_at) VALUES ($1, 'Test', $2, $3)",
            )
            .bind(format!("e{n}"))
            .bind(vec![n as u8])
            .bind(n as i64)
            .execute(db.pool())
            .await
            .unwrap();
        }
        // The relay dies after publishing the first 5 and before marking them: they stay
        // unpublished in the outbox, and the next run publishes them again.
        let first: Vec<Event> = (0..5).map(event).collect();
        bus.publish(&first).await.unwrap();
        while relay_outbox(&db, &bus, 7).await.unwrap() > 0 {}

        // The consumer applies each effect with its inbox record, but "crashes" before
        // acknowledging every third event the first time, so those are delivered again.
        let crashed = Arc::new(Mutex::new(std::collections::HashSet::new()));
        let stop = CancellationToken::new();
        let delivered = Arc::new(AtomicUsize::new(0));
        let (db2, crashed2, stop2, delivered2) =
            (db.clone(), crashed.clone(), stop.clone(), delivered.clone());
        bus.consume(
            "effects",
            move |e: Event| {
                let (db, crashed, stop, delivered) =
                    (db2.clone(), crashed2.clone(), stop2.clone(), delivered2.clone());
                async move {
                    delivered.fetch_add(1, Ordering::SeqCst);
                    if let Some(mut tx) = inbox_begin(&db, "effects", &e.id).await? {
                        sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                            .bind(&e.id)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    }
                    let n: usize = e.id[1..].parse()?;
                    if n.is_multiple_of(3) && crashed.lock().unwrap().insert(e.id.clone()) {
                        anyhow::bail!("crashed before the ack");
                    }
                    if n == 19 {
                        stop.cancel();
                    }
                    Ok(())
                }
            },
            stop.clone(),
        )
        .await
        .unwrap();
        assert!(delivered.load(Ordering::SeqCst) > 20, "some events were delivered twice");
        let effects: Vec<String> = sqlx::query_scalar("SELECT event_id FROM effects ORDER BY event_id")
            .fetch_all(db.pool())
            .await
            .unwrap();
        let mut expected: Vec<String> = (0..20).map(|n| format!("e{n}")).collect();
        expected.sort();
        assert_eq!(effects, expected, "every event has exactly one effect");
        let unpublished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert_eq!(unpublished, 0);
    }
}
