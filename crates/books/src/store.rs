//! All of the books service's SQL, one place. Portable SQL on sqlx's `Any` driver; only the
//! full-text search differs by backend (PostgreSQL `tsvector` vs SQLite FTS5).

use std::sync::Arc;

use anyhow::Context;
use bookstore_platform::clock::now_ms;
use bookstore_platform::db::{Backend, Database, unique_violation};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::cache::{BookCache, Lookup};
use crate::domain::{
    Author, Book, BookPatch, NewBook, PageRequest, ReservationState, SearchQuery, Settlement,
};

/// A line that could not be reserved, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailedLine {
    pub book_id: String,
    pub requested: i64,
    /// Units on the shelf; 0 for a book that does not exist.
    pub available: i64,
    pub reason: &'static str,
}

/// A reserved line with the book's price and title at the moment of reservation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReservedLine {
    pub book_id: String,
    pub quantity: i64,
    pub price_minor: i64,
    pub currency: String,
    pub title: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not enough stock for {} line(s)", .0.len())]
    OutOfStock(Vec<FailedLine>),
    #[error("reservation for order {0} was already released")]
    ReservationReleased(String),
    #[error("no reservation for order {0}")]
    NoReservation(String),
    #[error("no book with id {0}")]
    NotFound(String),
    #[error("a book with ISBN {0} already exists")]
    DuplicateIsbn(String),
    #[error("not enough stock: {available} available, {requested} requested")]
    InsufficientStock { available: i64, requested: i64 },
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// The columns of a [`Book`], in `book_from_row`'s order. Macros, not consts, so that every
/// statement is one `&'static str` built at compile time.
macro_rules! columns {
    () => {
        "id, isbn, title, author, description, price_minor, currency, stock, created_at, updated_at, reserved, sold"
    };
}
/// The same columns, qualified, for the search join (the FTS table has a title column too).
macro_rules! b_columns {
    () => {
        "b.id, b.isbn, b.title, b.author, b.description, b.price_minor, b.currency, b.stock, \
         b.created_at, b.updated_at, b.reserved, b.sold"
    };
}

/// The catalog's persistence, with an optional read-through cache of single books.
///
/// The cache ([`BookCache`]) serves `get`, the path every product page and every checkout takes.
/// Every write through this store evicts what it changed once committed, in every tier. Stock
/// decisions never read the cache: they are conditional updates in the database.
#[derive(Clone, Debug)]
pub struct BookStore {
    db: Database,
    cache: Arc<BookCache>,
}

fn reservation_state(row: &AnyRow) -> Result<ReservationState, StoreError> {
    let state: String = row.try_get(2).context("decoding a reservation")?;
    Ok(ReservationState::parse(&state).with_context(|| format!("unknown reservation state {state}"))?)
}

fn book_from_row(row: &AnyRow) -> Result<Book, sqlx::Error> {
    Ok(Book {
        id: row.try_get(0)?,
        isbn: row.try_get(1)?,
        title: row.try_get(2)?,
        author: row.try_get(3)?,
        description: row.try_get(4)?,
        price_minor: row.try_get(5)?,
        currency: row.try_get(6)?,
        stock: row.try_get(7)?,
        created_at: row.try_get(8)?,
        updated_at: row.try_get(9)?,
        reserved: row.try_get(10)?,
        sold: row.try_get(11)?,
    })
}

fn books_from_rows(rows: &[AnyRow]) -> Result<Vec<Book>, StoreError> {
    rows.iter()
        .map(book_from_row)
        .collect::<Result<_, _>>()
        .context("decoding book rows")
        .map_err(StoreError::from)
}

impl BookStore {
    pub fn new(db: Database) -> Self {
        Self { db, cache: Arc::new(BookCache::none()) }
    }

    /// Caches up to `capacity` books for `ttl` each in this process; a zero TTL leaves it off.
    pub fn with_cache(self, ttl: std::time::Duration, capacity: u64) -> Self {
        self.with_read_cache(BookCache::none().with_local(ttl, capacity))
    }

    /// Reads through `cache` (both tiers, as the service builds it).
    pub fn with_read_cache(mut self, cache: BookCache) -> Self {
        self.cache = Arc::new(cache);
        self
    }

    /// The read cache, for its eviction listener.
    pub fn read_cache(&self) -> Arc<BookCache> {
        self.cache.clone()
    }

    async fn evict(&self, id: &str) {
        self.cache.evict([id]).await;
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store create"))]
    pub async fn create(&self, book: NewBook) -> Result<Book, StoreError> {
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let sql = concat!(
            "INSERT INTO books (id, isbn, title, title_key, author, author_key, description, \
             price_minor, currency, stock, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING ",
            columns!(),
            ""
        );
        let row = sqlx::query(sql)
            .bind(&id)
            .bind(book.isbn.as_str())
            .bind(book.title.as_str())
            .bind(book.title.sort_key())
            .bind(book.author.as_str())
            .bind(book.author.key())
            .bind(book.description.as_str())
            .bind(book.price.amount_minor)
            .bind(book.price.currency.as_str())
            .bind(book.stock)
            .bind(now)
            .fetch_one(self.db.pool())
            .await
            .map_err(|e| map_isbn_conflict(e, book.isbn.as_str(), "inserting a book"))?;
        Ok(book_from_row(&row).context("decoding the new book")?)
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store get"))]
    pub async fn get(&self, id: &str) -> Result<Book, StoreError> {
        if self.cache.is_off() {
            return self.get_uncached(id).await;
        }
        match self.cache.lookup(id).await {
            Lookup::Hit(book) => Ok(book),
            Lookup::Miss(ticket) => {
                let book = self.get_uncached(id).await?;
                self.cache.fill(&book, ticket).await;
                Ok(book)
            }
        }
    }

    async fn get_uncached(&self, id: &str) -> Result<Book, StoreError> {
        let sql = concat!("SELECT ", columns!(), " FROM books WHERE id = $1");
        let row = sqlx::query(sql)
            .bind(id)
            .fetch_optional(self.db.pool())
            .await
            .context("fetching a book")?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        Ok(book_from_row(&row).context("decoding a book")?)
    }

    /// A page of the catalog in title order (ties by id), with the total count.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store list"))]
    pub async fn list(
        &self,
        page: PageRequest,
        author: Option<&Author>,
    ) -> Result<(Vec<Book>, i64), StoreError> {
        let pool = self.db.pool();
        let (rows, total) = match author {
            None => {
                let sql =
                    concat!("SELECT ", columns!(), " FROM books ORDER BY title_key, id LIMIT $1 OFFSET $2");
                let rows = sqlx::query(sql).bind(i64::from(page.limit())).bind(page.offset()).fetch_all(pool);
                let total = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM books").fetch_one(pool);
                tokio::try_join!(rows, total).context("listing books")?
            }
            Some(author) => {
                let key = author.key();
                let sql = concat!(
                    "SELECT ",
                    columns!(),
                    " FROM books WHERE author_key = $1 \
                     ORDER BY title_key, id LIMIT $2 OFFSET $3"
                );
                let rows = sqlx::query(sql)
                    .bind(&key)
                    .bind(i64::from(page.limit()))
                    .bind(page.offset())
                    .fetch_all(pool);
                let total = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM books WHERE author_key = $1")
                    .bind(&key)
                    .fetch_one(pool);
                tokio::try_join!(rows, total).context("listing books by author")?
            }
        };
        Ok((books_from_rows(&rows)?, total))
    }

    /// Books containing every word of the query, best match first: a match in the title counts
    /// more than one in the author, which counts more than one in the description.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store search"))]
    pub async fn search(
        &self,
        query: &SearchQuery,
        page: PageRequest,
    ) -> Result<(Vec<Book>, i64), StoreError> {
        let pool = self.db.pool();
        let limit = i64::from(page.limit());
        let (rows, total) = match self.db.backend() {
            Backend::Postgres => {
                let text = query.plain();
                let sql = concat!(
                    "SELECT ",
                    b_columns!(),
                    " FROM books b, plainto_tsquery('english', $1) q \
                     WHERE b.search @@ q ORDER BY ts_rank(b.search, q) DESC, b.title_key, b.id \
                     LIMIT $2 OFFSET $3"
                );
                let rows = sqlx::query(sql).bind(&text).bind(limit).bind(page.offset()).fetch_all(pool);
                let total = sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM books WHERE search @@ plainto_tsquery('english', $1)",
                )
                .bind(&text)
                .fetch_one(pool);
                tokio::try_join!(rows, total).context("searching books")?
            }
            Backend::Sqlite => {
                let text = query.fts5();
                let sql = concat!(
                    "SELECT ",
                    b_columns!(),
                    " FROM books_fts JOIN books b ON b.seq = books_fts.rowid \
                     WHERE books_fts MATCH $1 \
                     ORDER BY bm25(books_fts, 10.0, 5.0, 1.0), b.title_key, b.id LIMIT $2 OFFSET $3"
                );
                let rows = sqlx::query(sql).bind(&text).bind(limit).bind(page.offset()).fetch_all(pool);
                let total =
                    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM books_fts WHERE books_fts MATCH $1")
                        .bind(&text)
                        .fetch_one(pool);
                tokio::try_join!(rows, total).context("searching books")?
            }
        };
        Ok((books_from_rows(&rows)?, total))
    }

    /// Changes the fields set in `patch` in one statement, so concurrent patches of different
    /// fields do not undo each other.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store update"))]
    pub async fn update(&self, id: &str, patch: BookPatch) -> Result<Book, StoreError> {
        if patch.is_empty() {
            return self.get(id).await;
        }
        let sql = concat!(
            "UPDATE books SET \
               isbn = COALESCE($2, isbn), \
               title = COALESCE($3, title), title_key = COALESCE($4, title_key), \
               author = COALESCE($5, author), author_key = COALESCE($6, author_key), \
               description = COALESCE($7, description), \
               price_minor = COALESCE($8, price_minor), currency = COALESCE($9, currency), \
               updated_at = $10 \
             WHERE id = $1 RETURNING ",
            columns!(),
            ""
        );
        let isbn = patch.isbn.as_ref().map(|i| i.as_str().to_owned());
        let row = sqlx::query(sql)
            .bind(id)
            .bind(isbn.clone())
            .bind(patch.title.as_ref().map(|t| t.as_str().to_owned()))
            .bind(patch.title.as_ref().map(|t| t.sort_key()))
            .bind(patch.author.as_ref().map(|a| a.as_str().to_owned()))
            .bind(patch.author.as_ref().map(|a| a.key()))
            .bind(patch.description.as_ref().map(|d| d.as_str().to_owned()))
            .bind(patch.price.as_ref().map(|p| p.amount_minor))
            .bind(patch.price.as_ref().map(|p| p.currency.as_str().to_owned()))
            .bind(now_ms())
            .fetch_optional(self.db.pool())
            .await
            .map_err(|e| map_isbn_conflict(e, isbn.as_deref().unwrap_or_default(), "updating a book"))?
            .ok_or_else(|| StoreError::NotFound(id.to_owned()))?;
        self.evict(id).await;
        Ok(book_from_row(&row).context("decoding the updated book")?)
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store delete"))]
    pub async fn delete(&self, id: &str) -> Result<(), StoreError> {
        let done = sqlx::query("DELETE FROM books WHERE id = $1")
            .bind(id)
            .execute(self.db.pool())
            .await
            .context("deleting a book")?;
        self.evict(id).await;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(id.to_owned()));
        }
        Ok(())
    }

    /// Adds `delta` units (negative removes) in one conditional statement: stock can never go
    /// below zero, however many adjustments race.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store adjust_stock"))]
    pub async fn adjust_stock(&self, id: &str, delta: i64) -> Result<Book, StoreError> {
        let sql = concat!(
            "UPDATE books SET stock = stock + $2, updated_at = $3 \
             WHERE id = $1 AND stock + $2 >= 0 RETURNING ",
            columns!(),
            ""
        );
        let row = sqlx::query(sql)
            .bind(id)
            .bind(delta)
            .bind(now_ms())
            .fetch_optional(self.db.pool())
            .await
            .context("adjusting stock")?;
        self.evict(id).await;
        match row {
            Some(row) => Ok(book_from_row(&row).context("decoding the book")?),
            // Either the book is missing or the stock is short; tell which.
            None => {
                let book = self.get_uncached(id).await?;
                Err(StoreError::InsufficientStock { available: book.stock, requested: -delta })
            }
        }
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store count"))]
    pub async fn count(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM books")
            .fetch_one(self.db.pool())
            .await
            .context("counting books")?)
    }
}

fn map_isbn_conflict(err: sqlx::Error, isbn: &str, doing: &'static str) -> StoreError {
    match unique_violation(&err) {
        Some(constraint) if constraint.contains("isbn") => StoreError::DuplicateIsbn(isbn.to_owned()),
        _ => StoreError::Unexpected(anyhow::Error::new(err).context(doing)),
    }
}

impl BookStore {
    /// Holds every line of `order_id`, or none: books are locked in id order (no deadlocks between
    /// two baskets), each decrement is conditional on enough stock, and the whole thing is one
    /// transaction. A retry with the same order id returns the reservation already made.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store reserve"))]
    pub async fn reserve(
        &self,
        order_id: &str,
        lines: &[crate::domain::ReserveLine],
        hold: std::time::Duration,
    ) -> Result<(Vec<ReservedLine>, i64), StoreError> {
        match self.reserve_once(order_id, lines, hold).await {
            // A concurrent call with the same order id won the race; its reservation is ours.
            Err(StoreError::Unexpected(e))
                if e.downcast_ref::<sqlx::Error>().and_then(unique_violation).is_some() =>
            {
                self.reserve_once(order_id, lines, hold).await
            }
            other => other,
        }
    }

    async fn reserve_once(
        &self,
        order_id: &str,
        lines: &[crate::domain::ReserveLine],
        hold: std::time::Duration,
    ) -> Result<(Vec<ReservedLine>, i64), StoreError> {
        let mut sorted = lines.to_vec();
        sorted.sort_by(|a, b| a.book_id.cmp(&b.book_id));
        let mut tx = self.db.begin_write().await.context("starting a reservation")?;

        let existing = sqlx::query(
            "SELECT r.book_id, r.quantity, r.state, r.expires_at, b.price_minor, b.currency, b.title \
             FROM reservations r JOIN books b ON b.id = r.book_id WHERE r.order_id = $1 ORDER BY r.book_id",
        )
        .bind(order_id)
        .fetch_all(&mut *tx)
        .await
        .context("reading an existing reservation")?;
        if !existing.is_empty() {
            let state = reservation_state(&existing[0])?;
            if state == ReservationState::Released {
                return Err(StoreError::ReservationReleased(order_id.to_owned()));
            }
            let expires_at: i64 = existing[0].try_get(3).context("decoding a reservation")?;
            let lines = existing
                .iter()
                .map(|r| {
                    Ok(ReservedLine {
                        book_id: r.try_get(0)?,
                        quantity: r.try_get(1)?,
                        price_minor: r.try_get(4)?,
                        currency: r.try_get(5)?,
                        title: r.try_get(6)?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .context("decoding a reservation")?;
            return Ok((lines, expires_at));
        }

        let now = now_ms();
        let expires_at = now + hold.as_millis() as i64;
        let mut reserved = Vec::with_capacity(sorted.len());
        let mut failed = Vec::new();
        for line in &sorted {
            let row = sqlx::query(
                "UPDATE books SET stock = stock - $2, reserved = reserved + $2, updated_at = $3 \
                 WHERE id = $1 AND stock >= $2 RETURNING price_minor, currency, title",
            )
            .bind(&line.book_id)
            .bind(line.quantity)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await
            .context("reserving a line")?;
            match row {
                Some(row) => {
                    sqlx::query(
                        "INSERT INTO reservations (order_id, book_id, quantity, state, expires_at, created_at) \
                         VALUES ($1, $2, $3, 'held', $4, $5)",
                    )
                    .bind(order_id)
                    .bind(&line.book_id)
                    .bind(line.quantity)
                    .bind(expires_at)
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(anyhow::Error::new)?;
                    reserved.push(ReservedLine {
                        book_id: line.book_id.clone(),
                        quantity: line.quantity,
                        price_minor: row.try_get(0).context("decoding a price")?,
                        currency: row.try_get(1).context("decoding a currency")?,
                        title: row.try_get(2).context("decoding a title")?,
                    });
                }
                None => {
                    let available = sqlx::query_scalar::<_, i64>("SELECT stock FROM books WHERE id = $1")
                        .bind(&line.book_id)
                        .fetch_optional(&mut *tx)
                        .await
                        .context("reading stock")?;
                    failed.push(FailedLine {
                        book_id: line.book_id.clone(),
                        requested: line.quantity,
                        available: available.unwrap_or(0),
                        reason: if available.is_some() { "out of stock" } else { "no such book" },
                    });
                }
            }
        }
        if !failed.is_empty() {
            // Nothing is held: dropping the transaction rolls every decrement back.
            tx.rollback().await.context("rolling back a reservation")?;
            return Err(StoreError::OutOfStock(failed));
        }
        tx.commit().await.context("committing a reservation")?;
        self.cache.evict(reserved.iter().map(|line| line.book_id.as_str())).await;
        Ok((reserved, expires_at))
    }

    /// Moves held units to sold (`confirm`) or back to the shelf (`release`). Idempotent: a
    /// reservation already in the target state is left as it is. Releasing a confirmed
    /// reservation returns its units too (a cancelled order's books go back on sale).
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store settle"))]
    pub async fn settle(&self, order_id: &str, how: Settlement) -> Result<ReservationState, StoreError> {
        let mut tx = self.db.begin_write().await.context("starting to settle a reservation")?;
        let rows = sqlx::query(
            "SELECT book_id, quantity, state FROM reservations WHERE order_id = $1 ORDER BY book_id",
        )
        .bind(order_id)
        .fetch_all(&mut *tx)
        .await
        .context("reading a reservation")?;
        if rows.is_empty() {
            return Err(StoreError::NoReservation(order_id.to_owned()));
        }
        let state = reservation_state(&rows[0])?;
        let target = how.target();
        if state == target {
            return Ok(state);
        }
        if how == Settlement::Confirm && state == ReservationState::Released {
            return Err(StoreError::ReservationReleased(order_id.to_owned()));
        }
        // The state change is the guard: of two racing settlements, only the one whose UPDATE
        // still finds the old state moves any stock (PostgreSQL re-checks the WHERE after the
        // other commits; SQLite runs them one at a time).
        let claimed = sqlx::query("UPDATE reservations SET state = $2 WHERE order_id = $1 AND state = $3")
            .bind(order_id)
            .bind(target.as_str())
            .bind(state.as_str())
            .execute(&mut *tx)
            .await
            .context("recording the settlement")?;
        if claimed.rows_affected() == 0 {
            tx.rollback().await.context("rolling back a settlement")?;
            return Box::pin(self.settle(order_id, how)).await;
        }
        let now = now_ms();
        let mut settled = Vec::with_capacity(rows.len());
        for row in &rows {
            let book_id: String = row.try_get(0).context("decoding a reservation")?;
            let quantity: i64 = row.try_get(1).context("decoding a reservation")?;
            let sql = match (how, state) {
                (Settlement::Confirm, _) => {
                    "UPDATE books SET reserved = reserved - $2, sold = sold + $2, updated_at = $3 WHERE id = $1"
                }
                (Settlement::Release, ReservationState::Confirmed) => {
                    "UPDATE books SET sold = sold - $2, stock = stock + $2, updated_at = $3 WHERE id = $1"
                }
                (Settlement::Release, _) => {
                    "UPDATE books SET reserved = reserved - $2, stock = stock + $2, updated_at = $3 WHERE id = $1"
                }
            };
            sqlx::query(sql)
                .bind(&book_id)
                .bind(quantity)
                .bind(now)
                .execute(&mut *tx)
                .await
                .context("settling a line")?;
            settled.push(book_id);
        }
        tx.commit().await.context("committing a settlement")?;
        self.cache.evict(settled.iter().map(String::as_str)).await;
        Ok(target)
    }

    /// Confirms many orders' reservations in one transaction; for each order, in the order
    /// given: confirmed (now or before), released (too late: expired or cancelled), or `None`
    /// when there is no reservation for it. The books' rows are updated in id order, with each book's units summed, as
    /// every other writer of several books does, so this never deadlocks with them.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store confirm_many"))]
    pub async fn confirm_many(
        &self,
        order_ids: &[String],
    ) -> Result<Vec<(String, Option<ReservationState>)>, StoreError> {
        let mut tx = self.db.begin_write().await.context("starting to confirm reservations")?;
        let mut outcomes = Vec::with_capacity(order_ids.len());
        let mut units: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for order_id in order_ids {
            // The state change is the guard, as in `settle`: only an UPDATE that still finds the
            // reservation held moves its units (PostgreSQL re-checks the WHERE after a racing
            // settlement commits).
            let claimed =
                sqlx::query("UPDATE reservations SET state = $2 WHERE order_id = $1 AND state = $3")
                    .bind(order_id)
                    .bind(ReservationState::Confirmed.as_str())
                    .bind(ReservationState::Held.as_str())
                    .execute(&mut *tx)
                    .await
                    .context("recording a confirmation")?;
            if claimed.rows_affected() > 0 {
                let lines = sqlx::query("SELECT book_id, quantity FROM reservations WHERE order_id = $1")
                    .bind(order_id)
                    .fetch_all(&mut *tx)
                    .await
                    .context("reading a reservation")?;
                for line in &lines {
                    let book_id: String = line.try_get(0).context("decoding a reservation")?;
                    let quantity: i64 = line.try_get(1).context("decoding a reservation")?;
                    *units.entry(book_id).or_default() += quantity;
                }
                outcomes.push((order_id.clone(), Some(ReservationState::Confirmed)));
                continue;
            }
            let state: Option<String> =
                sqlx::query_scalar("SELECT state FROM reservations WHERE order_id = $1 LIMIT 1")
                    .bind(order_id)
                    .fetch_optional(&mut *tx)
                    .await
                    .context("reading a reservation")?;
            let state = state
                .map(|s| {
                    ReservationState::parse(&s).with_context(|| format!("unknown reservation state {s}"))
                })
                .transpose()?;
            outcomes.push((order_id.clone(), state));
        }
        let now = now_ms();
        for (book_id, quantity) in &units {
            sqlx::query(
                "UPDATE books SET reserved = reserved - $2, sold = sold + $2, updated_at = $3 WHERE id = $1",
            )
            .bind(book_id)
            .bind(quantity)
            .bind(now)
            .execute(&mut *tx)
            .await
            .context("confirming a book's units")?;
        }
        tx.commit().await.context("committing confirmations")?;
        self.cache.evict(units.keys().map(String::as_str)).await;
        Ok(outcomes)
    }

    /// Releases holds whose time has passed (their order never confirmed); returns how many
    /// orders were released.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "books store release_expired"))]
    pub async fn release_expired(&self) -> Result<usize, StoreError> {
        let orders: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT order_id FROM reservations WHERE state = $2 AND expires_at < $1 LIMIT 500",
        )
        .bind(now_ms())
        .bind(ReservationState::Held.as_str())
        .fetch_all(self.db.pool())
        .await
        .context("finding expired reservations")?;
        for order in &orders {
            self.settle(order, Settlement::Release).await?;
        }
        Ok(orders.len())
    }
}
