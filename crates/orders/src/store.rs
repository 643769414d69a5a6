//! All of the orders service's SQL.

use anyhow::Context;
use bookstore_platform::clock::now_ms;
use bookstore_platform::db::{Database, unique_violation};
use bookstore_platform::events::{Event, outbox};
use sqlx::Row;

use std::sync::Arc;

use bookstore_platform::crypto::DataKey;

use crate::domain::{Line, Order, Settle, ShippingAddress, Status, StockState};

/// What an idempotency key says about a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyClaim {
    /// The key is new: go ahead.
    Claimed,
    /// The same request was already answered with this order.
    Done(String),
    /// The same request is being processed right now.
    InFlight,
    /// The key was used for a different request.
    Mismatch,
}

/// What can go wrong in the store. Every outcome a caller acts on (a claimed key, a lost
/// race, a missing order) is a value, not an error; what is left is the database failing or
/// holding a row this code cannot read.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("order {id} has a status this version does not know: {status:?}")]
    UnknownStatus { id: String, status: String },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// How long an idempotency key is remembered.
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;

/// The column the shipping address is encrypted in, bound into its ciphertext.
const ADDRESS_COLUMN: &str = "shipping_address";

#[derive(Clone)]
pub struct OrderStore {
    db: Database,
    /// Encrypts shipping addresses at rest ([`bookstore_platform::crypto`]).
    key: Arc<DataKey>,
}

impl std::fmt::Debug for OrderStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrderStore").field("db", &self.db).finish_non_exhaustive()
    }
}

impl OrderStore {
    pub fn new(db: Database, key: DataKey) -> Self {
        Self { db, key: Arc::new(key) }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Claims `key` for `user_id`'s request `hash`. Keys older than a day are forgotten first.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store claim_key"))]
    pub async fn claim_key(&self, user_id: &str, key: &str, hash: &str) -> Result<KeyClaim> {
        let now = now_ms();
        sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND created_at < $3")
            .bind(user_id)
            .bind(key)
            .bind(now - KEY_TTL_MS)
            .execute(self.db.pool())
            .await
            .context("expiring an idempotency key")?;
        let inserted = sqlx::query(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(user_id)
        .bind(key)
        .bind(hash)
        .bind(now)
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => return Ok(KeyClaim::Claimed),
            Err(e) if unique_violation(&e).is_some() => {}
            Err(e) => return Err(anyhow::Error::new(e).context("claiming an idempotency key").into()),
        }
        let row = sqlx::query(
            "SELECT request_hash, order_id FROM idempotency_keys WHERE user_id = $1 AND key = $2",
        )
        .bind(user_id)
        .bind(key)
        .fetch_optional(self.db.pool())
        .await
        .context("reading an idempotency key")?;
        let Some(row) = row else {
            // Released between our insert and our read (the first attempt failed): try again.
            return Box::pin(self.claim_key(user_id, key, hash)).await;
        };
        let stored_hash: String = row.try_get(0)?;
        let order_id: Option<String> = row.try_get(1)?;
        Ok(match (stored_hash == hash, order_id) {
            (false, _) => KeyClaim::Mismatch,
            (true, Some(order)) => KeyClaim::Done(order),
            (true, None) => KeyClaim::InFlight,
        })
    }

    /// Forgets a key whose request failed, so a retry runs again.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store release_key"))]
    pub async fn release_key(&self, user_id: &str, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM idempotency_keys WHERE user_id = $1 AND key = $2 AND order_id IS NULL")
            .bind(user_id)
            .bind(key)
            .execute(self.db.pool())
            .await
            .context("releasing an idempotency key")?;
        Ok(())
    }

    /// Stores a placed order, its lines, its OrderPlaced event and its idempotency key's answer
    /// in one transaction: all of them or none.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store insert_order"))]
    pub async fn insert_order(
        &self,
        order: &Order,
        idempotency: Option<(&str, &str)>,
        event: &Event,
    ) -> Result<()> {
        let mut tx = self.db.begin_write().await.context("starting an order")?;
        sqlx::query(
            "INSERT INTO orders (id, user_id, status, total_minor, currency, stock_state, created_at, updated_at, \
             shipping_address) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
        )
        .bind(&order.id)
        .bind(&order.user_id)
        .bind(order.status.as_str())
        .bind(order.total_minor)
        .bind(&order.currency)
        .bind(StockState::Held.as_str())
        .bind(order.created_at)
        .bind(order.shipping_address.as_ref().map(|a| self.key.encrypt(&order.id, ADDRESS_COLUMN, &a.to_json())))
        .execute(&mut *tx)
        .await
        .context("storing an order")?;
        for l in &order.lines {
            sqlx::query(
                "INSERT INTO order_lines (order_id, book_id, quantity, unit_price_minor, currency, title) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&order.id)
            .bind(&l.book_id)
            .bind(l.quantity)
            .bind(l.unit_price_minor)
            .bind(&l.currency)
            .bind(&l.title)
            .execute(&mut *tx)
            .await
            .context("storing an order line")?;
        }
        outbox::write(&mut tx, std::slice::from_ref(event)).await?;
        if let Some((user_id, key)) = idempotency {
            sqlx::query("UPDATE idempotency_keys SET order_id = $3 WHERE user_id = $1 AND key = $2")
                .bind(user_id)
                .bind(key)
                .bind(&order.id)
                .execute(&mut *tx)
                .await
                .context("answering an idempotency key")?;
        }
        self.db.commit_events(tx).await.context("committing an order")?;
        Ok(())
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store get"))]
    pub async fn get(&self, id: &str) -> Result<Option<Order>> {
        let row = sqlx::query(
            "SELECT id, user_id, status, total_minor, currency, created_at, updated_at, shipping_address, status_reason \
             FROM orders WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(self.db.pool())
        .await
        .context("fetching an order")?;
        let Some(row) = row else { return Ok(None) };
        let mut orders = vec![self.order_from_row(&row)?];
        self.fill_lines(&mut orders).await?;
        Ok(orders.pop())
    }

    /// Fills in the lines of every order in `orders` with one query.
    async fn fill_lines(&self, orders: &mut [Order]) -> Result<()> {
        if orders.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (1..=orders.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT order_id, book_id, quantity, unit_price_minor, currency, title FROM order_lines \
             WHERE order_id IN ({}) ORDER BY order_id, book_id",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(&sql);
        for order in orders.iter() {
            query = query.bind(&order.id);
        }
        let rows = query.fetch_all(self.db.pool()).await.context("fetching order lines")?;
        let mut by_order: std::collections::HashMap<String, Vec<Line>> = std::collections::HashMap::new();
        for r in &rows {
            let line = Line {
                book_id: r.try_get(1)?,
                quantity: r.try_get(2)?,
                unit_price_minor: r.try_get(3)?,
                currency: r.try_get(4)?,
                title: r.try_get(5)?,
            };
            by_order.entry(r.try_get(0)?).or_default().push(line);
        }
        for order in orders.iter_mut() {
            order.lines = by_order.remove(&order.id).unwrap_or_default();
        }
        Ok(())
    }

    /// A page of orders, newest first: one user's, or everyone's (`user_id` None), optionally
    /// in one status.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store list"))]
    pub async fn list(
        &self,
        user_id: Option<&str>,
        status: Option<Status>,
        limit: i64,
        offset: i64,
    ) -> Result<(Vec<Order>, i64)> {
        let user = user_id.map(str::to_owned);
        let status = status.map(|s| s.as_str().to_owned());
        let rows = sqlx::query(
            "SELECT id, user_id, status, total_minor, currency, created_at, updated_at, shipping_address, status_reason \
             FROM orders WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR status = $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3 OFFSET $4",
        )
        .bind(user.clone())
        .bind(status.clone())
        .bind(limit)
        .bind(offset)
        .fetch_all(self.db.pool())
        .await
        .context("listing orders")?;
        let total = sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM orders WHERE ($1 IS NULL OR user_id = $1) AND ($2 IS NULL OR status = $2)",
        )
        .bind(user)
        .bind(status)
        .fetch_one(self.db.pool())
        .await
        .context("counting orders")?;
        let mut orders = rows.iter().map(|row| self.order_from_row(row)).collect::<Result<Vec<_>>>()?;
        self.fill_lines(&mut orders).await?;
        Ok((orders, total))
    }

    /// The orders of `user_id` changed at or after `since_ms`, oldest change first, at most `limit`.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store changed_since"))]
    pub async fn changed_since(&self, user_id: &str, since_ms: i64, limit: i64) -> Result<Vec<Order>> {
        let rows = sqlx::query(
            "SELECT id, user_id, status, total_minor, currency, created_at, updated_at, shipping_address, status_reason \
             FROM orders WHERE user_id = $1 AND updated_at >= $2 ORDER BY updated_at, id LIMIT $3",
        )
        .bind(user_id)
        .bind(since_ms)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .context("listing changed orders")?;
        let mut orders = rows.iter().map(|row| self.order_from_row(row)).collect::<Result<Vec<_>>>()?;
        self.fill_lines(&mut orders).await?;
        Ok(orders)
    }

    /// Moves an order from `from` to `to` with its event, if it is still in `from`: `false`
    /// when another request moved it first.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store transition"))]
    pub async fn transition(&self, id: &str, from: Status, to: Status, event: &Event) -> Result<bool> {
        let mut tx = self.db.begin_write().await.context("starting a transition")?;
        if !Self::transition_in(&mut tx, id, from, to, "", event).await? {
            return Ok(false);
        }
        self.db.commit_events(tx).await.context("committing a transition")?;
        Ok(true)
    }

    /// [`Self::transition`] inside `tx`, recording `reason` with the new status.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store transition_in"))]
    pub async fn transition_in(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
        from: Status,
        to: Status,
        reason: &str,
        event: &Event,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE orders SET status = $3, status_reason = $4, updated_at = $5 WHERE id = $1 AND status = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(reason)
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .context("moving an order")?;
        if done.rows_affected() == 0 {
            return Ok(false);
        }
        outbox::write(tx, std::slice::from_ref(event)).await?;
        Ok(true)
    }

    /// Records that the task event of `version` was applied to order `id`, in `tx`: `false`
    /// when a newer one (or this one) was applied before, or there is no such order.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store advance_task_version"))]
    pub async fn advance_task_version(
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
        version: i64,
    ) -> Result<bool> {
        let done = sqlx::query("UPDATE orders SET task_version = $2 WHERE id = $1 AND task_version < $2")
            .bind(id)
            .bind(version)
            .execute(&mut **tx)
            .await
            .context("recording a task version")?;
        Ok(done.rows_affected() > 0)
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store set_stock_state"))]
    pub async fn set_stock_state(&self, id: &str, state: StockState) -> Result<()> {
        sqlx::query("UPDATE orders SET stock_state = $2 WHERE id = $1")
            .bind(id)
            .bind(state.as_str())
            .execute(self.db.pool())
            .await
            .context("recording stock state")?;
        Ok(())
    }

    /// Records `state` for every order in `ids` with one statement.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store set_stock_states"))]
    pub async fn set_stock_states(&self, ids: &[&str], state: StockState) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let placeholders: Vec<String> = (0..ids.len()).map(|i| format!("${}", i + 2)).collect();
        let sql = format!("UPDATE orders SET stock_state = $1 WHERE id IN ({})", placeholders.join(", "));
        let mut query = sqlx::query(&sql).bind(state.as_str());
        for id in ids {
            query = query.bind(*id);
        }
        query.execute(self.db.pool()).await.context("recording stock states")?;
        Ok(())
    }

    /// Orders whose reservation is not settled the way their status needs, with the
    /// settlement each needs.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "orders store unsettled"))]
    pub async fn unsettled(&self, limit: i64) -> Result<Vec<(String, Settle)>> {
        let rows = sqlx::query(
            "SELECT id, status FROM orders WHERE (status <> $1 AND stock_state = $2) \
             OR (status = $1 AND stock_state <> $3) ORDER BY created_at LIMIT $4",
        )
        .bind(Status::Cancelled.as_str())
        .bind(StockState::Held.as_str())
        .bind(StockState::Released.as_str())
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .context("finding unsettled orders")?;
        rows.iter()
            .map(|r| {
                let id: String = r.try_get(0)?;
                let status = parse_status(&id, r.try_get(1)?)?;
                Ok((id, Settle::for_status(status)))
            })
            .collect()
    }
}

fn parse_status(id: &str, status: String) -> Result<Status> {
    Status::parse(&status).ok_or_else(|| StoreError::UnknownStatus { id: id.to_owned(), status })
}

impl OrderStore {
    /// An order from `SELECT id, user_id, status, total_minor, currency, created_at,
    /// updated_at, shipping_address, status_reason`, its address decrypted; lines are filled in apart.
    fn order_from_row(&self, row: &sqlx::any::AnyRow) -> Result<Order> {
        let id: String = row.try_get(0)?;
        let sealed: Option<Vec<u8>> = row.try_get(7)?;
        let shipping_address = match sealed {
            None => None,
            Some(sealed) => {
                let json = self
                    .key
                    .decrypt(&id, ADDRESS_COLUMN, &sealed)
                    .with_context(|| format!("decrypting the shipping address of order {id}"))?;
                Some(ShippingAddress::from_json(&json).map_err(|e| anyhow::anyhow!("order {id}: {e}"))?)
            }
        };
        Ok(Order {
            status: parse_status(&id, row.try_get(2)?)?,
            user_id: row.try_get(1)?,
            lines: Vec::new(),
            total_minor: row.try_get(3)?,
            currency: row.try_get(4)?,
            created_at: row.try_get(5)?,
            updated_at: row.try_get(6)?,
            shipping_address,
            status_reason: row.try_get(8)?,
            id,
        })
    }
}
