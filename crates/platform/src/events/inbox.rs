//! The inbox: a consumer records each event it processed in the same transaction as the
//! event's effect, so a redelivered event has no second effect.

use anyhow::Context;

use crate::clock::now_ms;
use crate::db::Database;

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
