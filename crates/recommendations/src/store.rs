//! All of recommendations' SQL: purchases as orders' events tell them, the co-purchase counts
//! they make, and the rankings read from both.
//!
//! `purchases` is the one source: a row per book of each order, with the order's own time and,
//! once it is cancelled, when. `pairs` is derived from it: after each event, the rows of the
//! books it names are counted again from `purchases` in the same transaction, so an event
//! applied twice (or a cancellation after its order) leaves exactly what the purchases say.

use std::collections::HashSet;

use anyhow::{Context, Result};
use bookstore_platform::db::Database;
use sqlx::Row;

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

/// Best-sellers count the orders of this many milliseconds before now, by the orders' own time.
pub const BEST_SELLER_WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;

/// A book in a ranking, with its score: orders with both books in one basket for bought
/// together, units sold for best-sellers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranked {
    pub book_id: String,
    pub score: i64,
}

/// One book of a placed order.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub book_id: String,
    pub quantity: i64,
}

#[derive(Clone)]
pub struct Store {
    db: Database,
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

impl Store {
    pub fn new(db: Database) -> Self {
        Self { db }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Records the books of a placed order, in `tx` (a cancellation heard first stands).
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "recommendations store placed"))]
    pub async fn placed(
        tx: &mut Tx,
        order_id: &str,
        user_id: &str,
        ordered_at: i64,
        lines: &[Purchase],
    ) -> Result<()> {
        Self::record(tx, order_id, user_id, ordered_at, lines, None).await
    }

    /// Takes a cancelled order's books out of every count, in `tx`; heard before the order
    /// itself, it keeps the order from counting when that comes.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "recommendations store cancelled"))]
    pub async fn cancelled(
        tx: &mut Tx,
        order_id: &str,
        user_id: &str,
        ordered_at: i64,
        lines: &[Purchase],
        at: i64,
    ) -> Result<()> {
        Self::record(tx, order_id, user_id, ordered_at, lines, Some(at)).await
    }

    async fn record(
        tx: &mut Tx,
        order_id: &str,
        user_id: &str,
        ordered_at: i64,
        lines: &[Purchase],
        cancelled_at: Option<i64>,
    ) -> Result<()> {
        for line in lines {
            sqlx::query(
                "INSERT INTO purchases (order_id, book_id, user_id, quantity, ordered_at, cancelled_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (order_id, book_id) DO UPDATE \
                 SET cancelled_at = excluded.cancelled_at \
                 WHERE purchases.cancelled_at IS NULL AND excluded.cancelled_at IS NOT NULL",
            )
            .bind(order_id)
            .bind(&line.book_id)
            .bind(user_id)
            .bind(line.quantity)
            .bind(ordered_at)
            .bind(cancelled_at)
            .execute(&mut **tx)
            .await
            .context("recording a purchase")?;
        }
        let books: Vec<String> = lines.iter().map(|l| l.book_id.clone()).collect();
        Self::recount(tx, &books).await
    }

    /// Counts again every pair with one of `books` in it, from the purchases not cancelled.
    async fn recount(tx: &mut Tx, books: &[String]) -> Result<()> {
        if books.is_empty() {
            return Ok(());
        }
        // Each statement names the books twice: `{books}` and `{again}`.
        let n = books.len();
        let statements = [
            ("DELETE FROM pairs WHERE book_id IN ({books}) OR other_id IN ({again})", "clearing pairs"),
            (
                "INSERT INTO pairs (book_id, other_id, baskets, customers) \
                 SELECT a.book_id, b.book_id, \
                        COUNT(DISTINCT CASE WHEN a.order_id = b.order_id THEN a.order_id END), \
                        COUNT(DISTINCT a.user_id) \
                 FROM purchases a JOIN purchases b ON b.user_id = a.user_id AND b.book_id <> a.book_id \
                 WHERE a.cancelled_at IS NULL AND b.cancelled_at IS NULL \
                   AND (a.book_id IN ({books}) OR b.book_id IN ({again})) \
                 GROUP BY a.book_id, b.book_id",
                "counting pairs",
            ),
        ];
        for (template, doing) in statements {
            let sql =
                template.replace("{books}", &placeholders(1, n)).replace("{again}", &placeholders(n + 1, n));
            let mut query = sqlx::query(&sql);
            for book in books.iter().chain(books) {
                query = query.bind(book);
            }
            query.execute(&mut **tx).await.context(doing)?;
        }
        Ok(())
    }

    /// The books bought with `book_id`, best first: more orders with both in one basket, then
    /// more customers who bought both, then by book id.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "recommendations store bought_together"))]
    pub async fn bought_together(&self, book_id: &str, limit: i64) -> Result<Vec<Ranked>> {
        let rows = sqlx::query(
            "SELECT other_id, baskets FROM pairs WHERE book_id = $1 \
             ORDER BY baskets DESC, customers DESC, other_id LIMIT $2",
        )
        .bind(book_id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .context("reading pairs")?;
        rows.iter().map(|r| Ok(Ranked { book_id: r.try_get(0)?, score: r.try_get(1)? })).collect()
    }

    /// What is bought with what `user_id` bought (their pairs summed over their books, ranked as
    /// [`Self::bought_together`] ranks), and what they bought, which the ranking leaves out.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "recommendations store for_customer"))]
    pub async fn for_customer(&self, user_id: &str, limit: i64) -> Result<(Vec<Ranked>, HashSet<String>)> {
        let bought: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT book_id FROM purchases WHERE user_id = $1 AND cancelled_at IS NULL",
        )
        .bind(user_id)
        .fetch_all(self.db.pool())
        .await
        .context("reading a customer's purchases")?;
        let rows = sqlx::query(
            "SELECT p.other_id, CAST(SUM(p.baskets) AS BIGINT) AS baskets, CAST(SUM(p.customers) AS BIGINT) AS customers \
             FROM pairs p \
             WHERE p.book_id IN (SELECT book_id FROM purchases WHERE user_id = $1 AND cancelled_at IS NULL) \
               AND p.other_id NOT IN (SELECT book_id FROM purchases WHERE user_id = $1 AND cancelled_at IS NULL) \
             GROUP BY p.other_id ORDER BY baskets DESC, customers DESC, p.other_id LIMIT $2",
        )
        .bind(user_id)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .context("ranking for a customer")?;
        let ranked = rows
            .iter()
            .map(|r| Ok(Ranked { book_id: r.try_get(0)?, score: r.try_get(1)? }))
            .collect::<Result<_>>()?;
        Ok((ranked, bought.into_iter().collect()))
    }

    /// The books that sold most units in the 30 days before `now_ms` (by the orders' own
    /// time, cancelled orders left out), then by book id.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "recommendations store best_sellers"))]
    pub async fn best_sellers(&self, now_ms: i64, limit: i64) -> Result<Vec<Ranked>> {
        let rows = sqlx::query(
            "SELECT book_id, CAST(SUM(quantity) AS BIGINT) AS units FROM purchases \
             WHERE cancelled_at IS NULL AND ordered_at >= $1 \
             GROUP BY book_id ORDER BY units DESC, book_id LIMIT $2",
        )
        .bind(now_ms - BEST_SELLER_WINDOW_MS)
        .bind(limit)
        .fetch_all(self.db.pool())
        .await
        .context("reading best-sellers")?;
        rows.iter().map(|r| Ok(Ranked { book_id: r.try_get(0)?, score: r.try_get(1)? })).collect()
    }
}
