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
}

/// A task's row, before its position is known.
struct Stored {
    task: Task,
    rank: i64,
}

impl TaskStore {
    pub fn new(db: Database, key: DataKey) -> Self {
        Self { db, key: Arc::new(key) }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// The queue now: the last change's number, then queued tasks by position and the ones in
    /// hand by age. The number is read first, so the tasks are at least that new.
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
        Ok(change)
    }

    /// QUEUED → PICKING, with `who` as the assignee.
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
    pub async fn advance(&self, id: &str, version: i64) -> Result<Change, TaskError> {
        self.step(id, version, "advanced", TaskState::next, None, None).await
    }

    /// An open task → REMOVED, with `reason`.
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
        tx.commit().await?;
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
        sqlx::query("INSERT INTO changes (seq, task_id, kind, version, at) VALUES ($1, $2, $3, $4, $5)")
            .bind(seq)
            .bind(id)
            .bind(kind.as_str())
            .bind(task.version)
            .bind(now_ms())
            .execute(&mut **tx)
            .await
            .context("recording a change")?;
        Ok(Change { seq, kind, task })
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
