//! All of the fulfillment service's SQL.
//!
//! Every change takes the next sequence number by updating the one row of `queue_head` first,
//! so writers queue up behind each other (PostgreSQL's row lock; SQLite's write lock) and
//! sequence numbers follow commit order without gaps: a client that has seen change N has seen
//! every change before it.

use std::sync::Arc;

use anyhow::Context;
use bookstore_platform::clock::now_ms;
use bookstore_platform::crypto::DataKey;
use bookstore_platform::db::Database;
use bookstore_platform::events::outbox;
use sqlx::Row;

use crate::domain::{Change, ChangeKind, Line, Task, TaskState};

type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// The column the shipping address is encrypted in, bound into its ciphertext.
const ADDRESS_COLUMN: &str = "shipping_address";

const COLUMNS: &str =
    "id, order_id, lines, shipping_address, state, rank, version, assignee, reason, created_at, updated_at";

/// Why a change was refused, or what failed.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("no task with id {0}")]
    NotFound(String),
    #[error("task {id} is at version {current}, not {given}: load the queue again")]
    Stale { id: String, current: i64, given: i64 },
    #[error("a task that is {state} cannot be {action}")]
    NotAllowed { state: &'static str, action: &'static str },
    #[error(transparent)]
    Store(#[from] anyhow::Error),
}

impl From<sqlx::Error> for TaskError {
    fn from(err: sqlx::Error) -> Self {
        Self::Store(err.into())
    }
}

#[derive(Clone)]
pub struct TaskStore {
    db: Database,
    /// Encrypts shipping addresses at rest ([`bookstore_platform::crypto`]).
    key: Arc<DataKey>,
    /// Committed changes, in sequence order, for watchers ([`TaskStore::watch`]), as
    /// [`TaskStore::follow`] reads them from the history.
    changes: tokio::sync::broadcast::Sender<Change>,
    /// Rung after every change committed here (and by [`crate::fanout`] for changes of other
    /// replicas): the history has something new.
    doorbell: Arc<tokio::sync::Notify>,
    /// Rings the other replicas' doorbells, when Redis is configured.
    fanout: Option<Arc<crate::fanout::Fanout>>,
    /// How many of the newest changes are kept for clients that resume.
    history: i64,
}

/// The newest changes kept for resuming clients, unless configured otherwise.
pub const DEFAULT_HISTORY: u32 = 10_000;

/// How many changes a watcher may fall behind before it is ended.
pub const WATCH_BACKLOG: usize = 1024;

/// A task's row, before its position is known.
struct Stored {
    task: Task,
    rank: i64,
}

impl TaskStore {
    /// A store keeping the newest `history` changes (at least one) for resuming clients.
    pub fn new(db: Database, key: DataKey, history: u32) -> Self {
        let (changes, _) = tokio::sync::broadcast::channel(WATCH_BACKLOG);
        Self {
            db,
            key: Arc::new(key),
            changes,
            doorbell: Arc::default(),
            fanout: None,
            history: i64::from(history.max(1)),
        }
    }

    /// The store, ringing every replica through `fanout` after each change it commits.
    pub fn with_fanout(mut self, fanout: Arc<crate::fanout::Fanout>) -> Self {
        self.fanout = Some(fanout);
        self
    }

    /// Every change after `seq`, in order, or `None` when the oldest of them is no longer kept
    /// (the client needs a fresh snapshot instead). Tasks come with their current address.
    pub async fn changes_after(&self, seq: i64) -> Result<Option<Vec<Change>>, TaskError> {
        let head: i64 = sqlx::query_scalar("SELECT seq FROM queue_head WHERE id = 1")
            .fetch_one(self.db.pool())
            .await
            .context("reading the queue's head")?;
        if seq >= head {
            return Ok((seq == head).then(Vec::new));
        }
        let rows = sqlx::query("SELECT seq, body FROM changes WHERE seq > $1 ORDER BY seq")
            .bind(seq)
            .fetch_all(self.db.pool())
            .await
            .context("reading changes")?;
        // Kept without a gap from seq + 1, or not at all.
        let first: Option<i64> = rows.first().map(|row| row.try_get(0)).transpose()?;
        if first != Some(seq + 1) {
            return Ok(None);
        }
        let mut changes = Vec::with_capacity(rows.len());
        let mut addresses: std::collections::HashMap<String, Option<String>> =
            std::collections::HashMap::new();
        for row in &rows {
            let body: String = row.try_get(1)?;
            let mut change: Change = serde_json::from_str(&body).context("reading a kept change")?;
            if !addresses.contains_key(&change.task.id) {
                let address = self.address_of(&change.task.id).await?;
                addresses.insert(change.task.id.clone(), address);
            }
            change.task.shipping_address.clone_from(&addresses[&change.task.id]);
            changes.push(change);
        }
        Ok(Some(changes))
    }

    async fn address_of(&self, task_id: &str) -> Result<Option<String>, TaskError> {
        let sealed: Option<Option<Vec<u8>>> =
            sqlx::query_scalar("SELECT shipping_address FROM tasks WHERE id = $1")
                .bind(task_id)
                .fetch_optional(self.db.pool())
                .await?;
        match sealed.flatten() {
            None => Ok(None),
            Some(sealed) => Ok(Some(
                self.key
                    .decrypt(task_id, ADDRESS_COLUMN, &sealed)
                    .with_context(|| format!("decrypting the address of task {task_id}"))?,
            )),
        }
    }

    /// Committed changes from now on, in sequence order.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Says that a change was committed here: this replica's watchers get it at once, and the
    /// other replicas' (through Redis) as soon as they hear.
    pub fn ring(&self) {
        self.doorbell.notify_one();
        if let Some(fanout) = &self.fanout {
            let fanout = fanout.clone();
            tokio::spawn(async move { fanout.publish().await });
        }
    }

    /// Says that another replica committed a change.
    pub fn ring_here(&self) {
        self.doorbell.notify_one();
    }

    /// Reads the change history as it grows and hands each change to the watchers, in sequence
    /// order, each once: when rung, and every `poll` in any case (what another replica
    /// committed, when nothing rings for it). The history is the one source, so watchers of
    /// every replica see every change in the order the database committed them (a change's
    /// writer holds the queue's head row until it commits, so a change is never visible before
    /// the one numbered before it).
    pub async fn follow(self, poll: std::time::Duration, stop: tokio_util::sync::CancellationToken) {
        let mut last = loop {
            match sqlx::query_scalar::<_, i64>("SELECT seq FROM queue_head WHERE id = 1")
                .fetch_one(self.db.pool())
                .await
            {
                Ok(seq) => break seq,
                Err(e) => {
                    tracing::warn!(error = %e, "reading the queue's head failed; retrying");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(poll) => {}
                    }
                }
            }
        };
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.doorbell.notified() => {}
                () = tokio::time::sleep(poll) => {}
            }
            match self.changes_after(last).await {
                Ok(Some(changes)) => {
                    for change in changes {
                        last = change.seq;
                        // No watcher is fine.
                        let _ = self.changes.send(change);
                    }
                }
                Ok(None) => {
                    // More changes between two reads than the history keeps: start again from
                    // the head (a watcher that resumes gets a snapshot then).
                    tracing::warn!(last, "the change follower fell behind the history");
                    if let Ok((seq, _)) = self.queue().await {
                        last = seq;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the change history failed; retrying"),
            }
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The queue now: the last change's number, then queued tasks by position and the ones in
    /// hand by age. The number is read first, so the tasks are at least that new.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "fulfillment store queue"))]
    pub async fn queue(&self) -> Result<(i64, Vec<Task>), TaskError> {
        let seq: i64 = sqlx::query_scalar("SELECT seq FROM queue_head WHERE id = 1")
            .fetch_one(self.db.pool())
            .await
            .context("reading the queue's head")?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM tasks WHERE state IN ('QUEUED', 'PICKING', 'PACKED') \
             ORDER BY CASE WHEN state = 'QUEUED' THEN 0 ELSE 1 END, rank, created_at"
        ))
        .fetch_all(self.db.pool())
        .await
        .context("reading the queue")?;
        let mut tasks = Vec::with_capacity(rows.len());
        let mut queued = 0;
        for row in &rows {
            let mut task = self.read_row(row)?.task;
            if task.state == TaskState::Queued {
                task.position = Some(queued);
                queued += 1;
            }
            tasks.push(task);
        }
        Ok((seq, tasks))
    }

    /// Adds the task of a placed order at the end of the queue, in `tx` (the inbox's); `None`
    /// when the order already has one.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "fulfillment store add"))]
    pub async fn add(
        &self,
        tx: &mut Tx,
        order_id: &str,
        lines: &[Line],
        shipping_address: Option<&str>,
    ) -> Result<Option<Change>, TaskError> {
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM tasks WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut **tx)
            .await?;
        if exists.is_some() {
            return Ok(None);
        }
        let seq = next_seq(tx).await?;
        let id = uuid::Uuid::now_v7().to_string();
        let rank: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(rank), -1) + 1 FROM tasks").fetch_one(&mut **tx).await?;
        let now = now_ms();
        sqlx::query(
            "INSERT INTO tasks (id, order_id, lines, shipping_address, state, rank, version, assignee, reason, \
             created_at, updated_at) VALUES ($1, $2, $3, $4, 'QUEUED', $5, 1, '', '', $6, $6)",
        )
        .bind(&id)
        .bind(order_id)
        .bind(serde_json::to_string(lines).context("encoding lines")?)
        .bind(shipping_address.map(|a| self.key.encrypt(&id, ADDRESS_COLUMN, a)))
        .bind(rank)
        .bind(now)
        .execute(&mut **tx)
        .await
        .context("storing a task")?;
        self.finish(tx, seq, &id, ChangeKind::Added).await.map(Some)
    }

    /// Cancels the open task of `order_id` in `tx` (its order was cancelled); `None` when there
    /// is none, or it has shipped already.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "fulfillment store cancel_order"))]
    pub async fn cancel_order(&self, tx: &mut Tx, order_id: &str) -> Result<Option<Change>, TaskError> {
        let id: Option<String> = sqlx::query_scalar("SELECT id FROM tasks WHERE order_id = $1")
            .bind(order_id)
            .fetch_optional(&mut **tx)
            .await?;
        let Some(id) = id else { return Ok(None) };
        let seq = next_seq(tx).await?;
        let task = self.load(tx, &id).await?;
        if !task.state.open() {
            return Ok(None);
        }
        set_state(tx, &id, TaskState::Cancelled, None, Some("the order was cancelled")).await?;
        let change = self.finish(tx, seq, &id, ChangeKind::Removed).await?;
        publish_state(tx, &change.task).await?;
        Ok(Some(change))
    }

    /// Moves a queued task to `position` among the queued (the end, if past it).
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "fulfillment store move_task"))]
    pub async fn move_task(&self, id: &str, position: usize, version: i64) -> Result<Change, TaskError> {
        let mut tx = self.db.begin_write().await?;
        let seq = next_seq(&mut tx).await?;
        let task = self.load_at(&mut tx, id, version).await?;
        if task.state != TaskState::Queued {
            return Err(TaskError::NotAllowed { state: task.state.as_str(), action: "moved" });
        }
        let mut order: Vec<String> =
            sqlx::query_scalar("SELECT id FROM tasks WHERE state = 'QUEUED' ORDER BY rank, created_at")
                .fetch_all(&mut *tx)
                .await?;
        order.retain(|other| other != id);
        order.insert(position.min(order.len()), id.to_owned());
        for (rank, task_id) in order.iter().enumerate() {
            sqlx::query("UPDATE tasks SET rank = $1 WHERE id = $2 AND rank <> $1")
                .bind(rank as i64)
                .bind(task_id)
                .execute(&mut *tx)
                .await?;
        }
        bump(&mut tx, id).await?;
        let change = self.finish(&mut tx, seq, id, ChangeKind::Moved).await?;
        tx.commit().await?;
        self.ring();
        Ok(change)
    }

    /// QUEUED → PICKING, with `who` as the assignee.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "fulfillment store claim"))]
    pub async fn claim(&self, id: &str, version: i64, who: &str) -> Result<Change, TaskError> {
        self.step(
            id,
            version,
            "claimed",
            |state| (state == TaskState::Queued).then_some(TaskState::Picking),
            Some(who),
            None,
        )
        .await
    }

    /// PICKING → PACKED → SHIPPED.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "fulfillment store advance"))]
    pub async fn advance(&self, id: &str, version: i64) -> Result<Change, TaskError> {
        self.step(id, version, "advanced", TaskState::next, None, None).await
    }

    /// An open task → REMOVED, with `reason`.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "fulfillment store remove"))]
    pub async fn remove(&self, id: &str, version: i64, reason: &str) -> Result<Change, TaskError> {
        self.step(
            id,
            version,
            "removed",
            |state| state.open().then_some(TaskState::Removed),
            None,
            Some(reason),
        )
        .await
    }

    /// One change of state, at `version`, as `to` allows from the task's state.
    async fn step(
        &self,
        id: &str,
        version: i64,
        action: &'static str,
        to: impl Fn(TaskState) -> Option<TaskState>,
        assignee: Option<&str>,
        reason: Option<&str>,
    ) -> Result<Change, TaskError> {
        let mut tx = self.db.begin_write().await?;
        let seq = next_seq(&mut tx).await?;
        let task = self.load_at(&mut tx, id, version).await?;
        let Some(next) = to(task.state) else {
            return Err(TaskError::NotAllowed { state: task.state.as_str(), action });
        };
        set_state(&mut tx, id, next, assignee, reason).await?;
        let kind = if next.open() { ChangeKind::Updated } else { ChangeKind::Removed };
        let change = self.finish(&mut tx, seq, id, kind).await?;
        publish_state(&mut tx, &change.task).await?;
        self.db.commit_events(tx).await?;
        self.ring();
        Ok(change)
    }

    /// The task `id` if it is at `version`.
    async fn load_at(&self, tx: &mut Tx, id: &str, version: i64) -> Result<Task, TaskError> {
        let task = self.load(tx, id).await?;
        if task.version != version {
            return Err(TaskError::Stale { id: id.to_owned(), current: task.version, given: version });
        }
        Ok(task)
    }

    async fn load(&self, tx: &mut Tx, id: &str) -> Result<Task, TaskError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| TaskError::NotFound(id.to_owned()))?;
        Ok(self.read_row(&row)?.task)
    }

    /// Records change `seq` of task `id` and answers it with the task as it is now.
    async fn finish(&self, tx: &mut Tx, seq: i64, id: &str, kind: ChangeKind) -> Result<Change, TaskError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
        let Stored { mut task, rank } = self.read_row(&row)?;
        if task.state == TaskState::Queued {
            let before: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM tasks WHERE state = 'QUEUED' AND (rank < $1 OR (rank = $1 AND created_at < $2))",
            )
            .bind(rank)
            .bind(task.created_at)
            .fetch_one(&mut **tx)
            .await?;
            task.position = Some(before as usize);
        }
        let change = Change { seq, kind, task };
        sqlx::query(
            "INSERT INTO changes (seq, task_id, kind, version, at, body) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(seq)
        .bind(id)
        .bind(kind.as_str())
        .bind(change.task.version)
        .bind(now_ms())
        .bind(serde_json::to_string(&change).context("encoding a change")?)
        .execute(&mut **tx)
        .await
        .context("recording a change")?;
        // The history keeps its newest changes: each change lets the oldest one go.
        sqlx::query("DELETE FROM changes WHERE seq <= $1")
            .bind(seq - self.history)
            .execute(&mut **tx)
            .await
            .context("trimming the change history")?;
        Ok(change)
    }

    fn read_row(&self, row: &sqlx::any::AnyRow) -> Result<Stored, TaskError> {
        let id: String = row.try_get(0)?;
        let lines: String = row.try_get(2)?;
        let sealed: Option<Vec<u8>> = row.try_get(3)?;
        let state: String = row.try_get(4)?;
        let shipping_address = match sealed {
            Some(sealed) => Some(
                self.key
                    .decrypt(&id, ADDRESS_COLUMN, &sealed)
                    .with_context(|| format!("decrypting the address of task {id}"))?,
            ),
            None => None,
        };
        let task = Task {
            order_id: row.try_get(1)?,
            lines: serde_json::from_str(&lines).context("reading a task's lines")?,
            shipping_address,
            state: TaskState::parse(&state)
                .with_context(|| format!("task {id} has an unknown state {state:?}"))?,
            position: None,
            version: row.try_get(6)?,
            assignee: row.try_get(7)?,
            reason: row.try_get(8)?,
            created_at: row.try_get(9)?,
            updated_at: row.try_get(10)?,
            id,
        };
        Ok(Stored { task, rank: row.try_get(5)? })
    }
}

/// Writes TaskStateChanged for `task` to the outbox, in the change's transaction.
async fn publish_state(tx: &mut Tx, task: &Task) -> Result<(), TaskError> {
    outbox::write(tx, &[crate::events::task_state_changed(task)]).await?;
    Ok(())
}

/// The next sequence number; every writer waits here for the one before it.
async fn next_seq(tx: &mut Tx) -> Result<i64, TaskError> {
    Ok(sqlx::query_scalar("UPDATE queue_head SET seq = seq + 1 WHERE id = 1 RETURNING seq")
        .fetch_one(&mut **tx)
        .await
        .context("taking the next sequence number")?)
}

async fn bump(tx: &mut Tx, id: &str) -> Result<(), TaskError> {
    sqlx::query("UPDATE tasks SET version = version + 1, updated_at = $2 WHERE id = $1")
        .bind(id)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

async fn set_state(
    tx: &mut Tx,
    id: &str,
    state: TaskState,
    assignee: Option<&str>,
    reason: Option<&str>,
) -> Result<(), TaskError> {
    sqlx::query(
        "UPDATE tasks SET state = $2, assignee = COALESCE($3, assignee), reason = COALESCE($4, reason), \
         version = version + 1, updated_at = $5 WHERE id = $1",
    )
    .bind(id)
    .bind(state.as_str())
    .bind(assignee)
    .bind(reason)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use bookstore_platform::crypto::MasterKey;
    use bookstore_platform::db::Backend;
    use bookstore_platform::testing::TestDatabase;

    use super::*;

    bookstore_platform::backend_tests!(changes_after_a_seq_are_kept_in_order_until_the_history_lets_them_go);

    async fn changes_after_a_seq_are_kept_in_order_until_the_history_lets_them_go(backend: Backend) {
        let Some(db) = TestDatabase::new(backend).await else { return };
        let database = db.connect(&crate::MIGRATIONS).await;
        let master = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let key =
            bookstore_platform::crypto::stored_data_key(&database, &master, "fulfillment").await.unwrap();
        let store = TaskStore::new(database.clone(), key, 3);
        let line = [Line { book_id: "b".into(), quantity: 1, title: "t".into() }];
        for n in 0..5 {
            let mut tx = database.begin_write().await.unwrap();
            store.add(&mut tx, &format!("o{n}"), &line, Some(r#"{"name":"N","line1":"L"}"#)).await.unwrap();
            tx.commit().await.unwrap();
        }
        let kept = store.changes_after(3).await.unwrap().expect("4 and 5 are kept");
        assert_eq!(kept.iter().map(|c| c.seq).collect::<Vec<_>>(), [4, 5]);
        assert_eq!(kept[1].task.order_id, "o4");
        assert_eq!(kept[1].task.position, Some(4), "the task as that change left it");
        assert!(kept[1].task.shipping_address.is_some(), "the address comes from the task, decrypted");
        assert_eq!(store.changes_after(5).await.unwrap(), Some(Vec::new()), "up to date");
        assert_eq!(store.changes_after(1).await.unwrap(), None, "2 is gone: a snapshot instead");
        assert_eq!(store.changes_after(9).await.unwrap(), None, "a seq from the future: a snapshot");
        let history: Vec<String> =
            sqlx::query_scalar("SELECT body FROM changes").fetch_all(database.pool()).await.unwrap();
        assert_eq!(history.len(), 3, "the newest three");
        assert!(!history.iter().any(|b| b.contains("line1")), "no address in the history");
    }
}
