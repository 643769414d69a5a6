//! The transactional outbox: events are written in the same transaction as the change that
//! caused them, and a relay publishes them to the bus and marks them.

use std::time::Duration;

use anyhow::Context;
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::{Bus, Event};
use crate::clock::now_ms;
use crate::db::{Database, Migrations};

/// The outbox and inbox tables, for a service's database (applied with the service's own
/// migrations when its spec uses the bus).
pub static OUTBOX_MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/outbox/postgres"),
    sqlite: sqlx::migrate!("./migrations/outbox/sqlite"),
};

/// Writes `events` to the outbox inside `tx`, the transaction of the change that caused them:
/// they are published if and only if the change commits.
pub async fn write(tx: &mut sqlx::Transaction<'static, sqlx::Any>, events: &[Event]) -> anyhow::Result<()> {
    for event in events {
        sqlx::query("INSERT INTO outbox (id, event_type, payload, created_at) VALUES ($1, $2, $3, $4)")
            .bind(&event.id)
            .bind(&event.event_type)
            .bind(&event.body)
            .bind(now_ms())
            .execute(&mut **tx)
            .await
            .context("writing an event to the outbox")?;
    }
    Ok(())
}

/// How often a relay that is behind counts its backlog.
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// The unpublished rows of `db`'s outbox, and when the oldest was written.
pub(super) async fn backlog(db: &Database) -> anyhow::Result<(i64, Option<i64>)> {
    let row = sqlx::query("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE published_at IS NULL")
        .fetch_one(db.pool())
        .await
        .context("counting the outbox")?;
    Ok((row.try_get(0)?, row.try_get(1)?))
}

/// Publishes up to `batch` unpublished events from `db`'s outbox, oldest first, then marks them
/// published; returns their types, one per event. A crash between the two publishes them again
/// on the next run, which consumers absorb.
pub(crate) async fn relay_outbox(
    service: &'static str,
    db: &Database,
    bus: &Bus,
    batch: i64,
) -> anyhow::Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT id, event_type, payload FROM outbox WHERE published_at IS NULL ORDER BY created_at, id LIMIT $1",
    )
    .bind(batch)
    .fetch_all(db.pool())
    .await
    .context("reading the outbox")?;
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let events = rows
        .iter()
        .map(|r| Ok(Event { id: r.try_get(0)?, event_type: r.try_get(1)?, body: r.try_get(2)? }))
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .context("decoding the outbox")?;
    // A crash here leaves committed events unpublished; the next run publishes them.
    fail::fail_point!("relay-before-publish", |_| -> anyhow::Result<Vec<String>> { std::process::abort() });
    // A producer span per event, child of the request that wrote it: its trace shows when the
    // event left for the bus. They end when the publication does.
    let spans: Vec<tracing::Span> = events
        .iter()
        .map(|e| crate::trace::producer_span(service, &e.event_type, &e.provenance().1))
        .collect();
    if let Err(e) = bus.publish(&events).await {
        spans.iter().for_each(crate::trace::mark_failed);
        return Err(e.context("publishing the outbox"));
    }
    drop(spans);
    // A crash here (tests arm this point to kill the process) leaves published events unmarked;
    // the next run publishes them again, which consumers' inboxes absorb.
    fail::fail_point!("relay-after-publish", |_| -> anyhow::Result<Vec<String>> { std::process::abort() });
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
    Ok(events.into_iter().map(|e| e.event_type).collect())
}

/// Runs [`relay_outbox`] until `shutdown`: at once after each full batch or when this process
/// commits events ([`Database::commit_events`]), else every `idle` (for events whose writer
/// stopped before its relay published them).
/// `service` labels its metrics: `events_published_total` by type, and the outbox's backlog,
/// `events_outbox_pending` and `events_outbox_oldest_age_seconds` (zero after a pass that
/// emptied it; counted, at most every few seconds, while it is not).
pub async fn run_relay(
    service: &'static str,
    db: Database,
    bus: Bus,
    idle: Duration,
    shutdown: CancellationToken,
) {
    const BATCH: i64 = 100;
    let pending = metrics::gauge!("events_outbox_pending", "service" => service);
    let oldest = metrics::gauge!("events_outbox_oldest_age_seconds", "service" => service);
    let mut counted: Option<std::time::Instant> = None;
    loop {
        let relayed = relay_outbox(service, &db, &bus, BATCH).await;
        if let Ok(events) = &relayed {
            for event in events {
                metrics::counter!("events_published_total", "service" => service, "event_type" => event.clone())
                    .increment(1);
            }
        }
        let wait = match relayed.as_ref().map(Vec::len) {
            Ok(n) if n as i64 == BATCH => Duration::ZERO,
            Ok(_) => idle,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "outbox relay failed; retrying");
                idle.max(Duration::from_secs(1))
            }
        };
        match relayed.as_ref().map(Vec::len) {
            Ok(n) if (n as i64) < BATCH => {
                pending.set(0.0);
                oldest.set(0.0);
            }
            _ if counted.is_none_or(|at| at.elapsed() >= BACKLOG_EVERY) => {
                counted = Some(std::time::Instant::now());
                if let Ok((rows, since)) = backlog(&db).await {
                    pending.set(rows as f64);
                    oldest.set(since.map_or(0.0, |ms| (now_ms() - ms).max(0) as f64 / 1000.0));
                }
            }
            _ => {}
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = db.events_committed() => {}
            () = shutdown.cancelled() => return,
        }
    }
}
