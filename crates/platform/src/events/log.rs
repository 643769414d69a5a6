//! The embedded event log: the bus of `bookstore up`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{Event, after_effect};
use crate::clock::now_ms;
use crate::db::{Database, Migrations};

/// The embedded log's schema.
pub static LOG_MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

/// An append-only log in a database: durable, deduplicated by event id, one position per
/// consumer. On SQLite (one writer at a time) positions follow commit order, which is what a
/// consumer reading "everything after my position" needs; it is the bus of `bookstore up`.
#[derive(Clone)]
pub struct EventLog {
    pub(super) db: Database,
    pub(super) appended: Arc<Notify>,
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
        self.consume_types(consumer, None, handler, shutdown).await
    }

    /// As [`Self::consume`], for the event types in `types` (every type when `None`): the rest
    /// are passed over, the position still moving past them.
    pub async fn consume_types<F, Fut>(
        &self,
        consumer: &str,
        types: Option<&[&str]>,
        handler: F,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()>
    where
        F: Fn(Event) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        let wanted = |event: &Event| types.is_none_or(|types| types.contains(&event.event_type.as_str()));
        // Replays an operator asked for while no consumer ran; later ones are announced in the
        // log itself ([`super::dead::REPLAY_ASKED`]), so nothing polls for them.
        self.take_replays(consumer, &handler).await?;
        loop {
            let after = self.position(consumer).await?;
            let query = sqlx::query(
                "SELECT seq, id, event_type, body FROM event_log WHERE seq > $1 ORDER BY seq LIMIT 100",
            )
            .bind(after);
            let Some(rows) = self.read_or_wait(query, &shutdown).await? else { return Ok(()) };
            for row in rows {
                if shutdown.is_cancelled() {
                    return Ok(());
                }
                let seq: i64 = row.try_get(0)?;
                let event = Event { id: row.try_get(1)?, event_type: row.try_get(2)?, body: row.try_get(3)? };
                if event.event_type == super::dead::REPLAY_ASKED {
                    if event.body == consumer.as_bytes() {
                        self.take_replays(consumer, &handler).await?;
                    }
                    self.advance(consumer, seq).await?;
                    continue;
                }
                if !wanted(&event) {
                    self.advance(consumer, seq).await?;
                    continue;
                }
                if let Err((attempts, error)) = self.attempt(consumer, &handler, &event).await? {
                    tracing::warn!(consumer, event = %event.id, error = %error, "event dead-lettered");
                    sqlx::query(
                        "INSERT INTO event_dead_letters (consumer, seq, id, error, created_at, attempts) \
                         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (consumer, seq) DO NOTHING",
                    )
                    .bind(consumer)
                    .bind(seq)
                    .bind(&event.id)
                    .bind(error)
                    .bind(now_ms())
                    .bind(i64::from(attempts))
                    .execute(self.db.pool())
                    .await
                    .context("dead-lettering an event")?;
                }
                self.advance(consumer, seq).await?;
            }
        }
    }

    /// Gives `event` to `handler` until it succeeds, `max_attempts` times at most; `Err` with
    /// the attempts made and the last error when it never did.
    pub(super) async fn attempt<F, Fut>(
        &self,
        consumer: &str,
        handler: &F,
        event: &Event,
    ) -> anyhow::Result<Result<(), (u32, String)>>
    where
        F: Fn(Event) -> Fut + Send + Sync,
        Fut: Future<Output = anyhow::Result<()>> + Send,
    {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match handler(event.clone()).await {
                Ok(()) => {
                    after_effect()?;
                    return Ok(Ok(()));
                }
                Err(e) if attempt >= self.max_attempts => return Ok(Err((attempt, format!("{e:#}")))),
                Err(e) => {
                    tracing::debug!(consumer, event = %event.id, attempt, error = %format!("{e:#}"), "event failed; retrying");
                    tokio::time::sleep(Duration::from_millis(20 * u64::from(attempt))).await;
                }
            }
        }
    }

    /// Runs `query` (a page of the log); when it finds nothing, waits for the next append (or
    /// [`crate::clock::idle_poll`], for another process's) and answers `Some(empty)`, so the
    /// caller reads again; `None` once `shutdown`.
    pub(super) async fn read_or_wait<'q>(
        &self,
        query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Vec<sqlx::any::AnyRow>>> {
        // Register for the wake-up before reading, so an append in between is not missed.
        let appended = self.appended.notified();
        tokio::pin!(appended);
        appended.as_mut().enable();
        let rows = query.fetch_all(self.db.pool()).await.context("reading the event log")?;
        if rows.is_empty() {
            tokio::select! {
                () = appended => {}
                () = tokio::time::sleep(crate::clock::idle_poll()) => {}
                () = shutdown.cancelled() => return Ok(None),
            }
        }
        Ok(Some(rows))
    }

    /// How many events `consumer` gave up on.
    pub(crate) async fn dead_letter_count(&self, consumer: &str) -> anyhow::Result<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM event_dead_letters WHERE consumer = $1 AND discarded_at IS NULL",
        )
        .bind(consumer)
        .fetch_one(self.db.pool())
        .await
        .context("counting dead letters")?;
        Ok(n.max(0) as u64)
    }
}
