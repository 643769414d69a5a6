//! One code path over PostgreSQL and SQLite.
//!
//! Services write portable SQL (`$1` placeholders, integer times, text ids) against sqlx's `Any`
//! driver, so the same store code runs on the embedded SQLite file of `bookstore up` and on the
//! PostgreSQL of a real deployment. Where the two must differ (full-text search, DDL), a service
//! asks [`Database::backend`] and keeps both versions side by side; migrations live in one folder
//! per backend.
//!
//! sqlx was chosen over sea-orm because the hot paths are a handful of hand-tuned queries, and
//! sqlx keeps them visible as SQL; sea-orm would add a layer of entities that buys nothing here.

use std::str::FromStr;
use std::sync::{Arc, Once};
use std::time::Duration;

use anyhow::{Context, bail};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::{AnyPool, Executor};

/// Which server a [`Database`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Postgres,
    Sqlite,
}

impl Backend {
    /// Tells the backend from a database URL; anything but `postgres://`, `postgresql://` and
    /// `sqlite:` is refused, so a typo fails at start instead of at the first query.
    pub(crate) fn from_url(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres)
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite)
        } else {
            bail!("unsupported database URL (expected postgres://... or sqlite:...)")
        }
    }
}

/// A service's migrations, one folder per backend (`migrations/postgres`, `migrations/sqlite`).
pub struct Migrations {
    pub postgres: Migrator,
    pub sqlite: Migrator,
}

/// Pool sizing; the defaults suit one service instance on a small machine.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub max_connections: u32,
    pub min_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self { max_connections: 16, min_connections: 1, acquire_timeout: Duration::from_secs(5) }
    }
}

/// A connection pool and the backend behind it.
#[derive(Debug, Clone)]
pub struct Database {
    pool: AnyPool,
    backend: Backend,
    /// Rung by [`Database::commit_events`]: the outbox relay of this process wakes at once
    /// instead of at its next poll.
    events_committed: Arc<tokio::sync::Notify>,
}

impl Database {
    /// Connects to `url`. For SQLite the file is created if missing, with its parent folder, and
    /// put in WAL mode so readers never wait for the writer.
    pub async fn connect(url: &str, config: &PoolConfig) -> anyhow::Result<Self> {
        static DRIVERS: Once = Once::new();
        DRIVERS.call_once(sqlx::any::install_default_drivers);

        let backend = Backend::from_url(url)?;
        let mut url = url.to_owned();
        let mut max = config.max_connections;
        if backend == Backend::Sqlite {
            create_sqlite_parent(&url)?;
            if !url.contains("mode=") && !url.contains(":memory:") {
                url.push_str(if url.contains('?') { "&mode=rwc" } else { "?mode=rwc" });
            }
            // SQLite has one writer at a time; more connections only queue on its lock.
            max = max.min(8);
        }
        let options = AnyConnectOptions::from_str(&url).context("parsing the database URL")?;
        let pool = AnyPoolOptions::new()
            .max_connections(max)
            .min_connections(config.min_connections.min(max))
            .acquire_timeout(config.acquire_timeout)
            .after_connect(move |conn, _meta| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        conn.execute(
                            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                             PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .with_context(|| format!("connecting to the {backend:?} database"))?;
        Ok(Self { pool, backend, events_committed: Arc::default() })
    }

    /// Applies the migrations for this backend that are not applied yet.
    pub async fn migrate(&self, migrations: &Migrations) -> anyhow::Result<()> {
        self.migrate_all(&[migrations]).await
    }

    /// Applies several sets as one (a service's own and the platform's outbox and inbox), in
    /// version order. They must be one history: sqlx refuses a database that has a migration
    /// applied that none of the sets knows, so the same sets must be given every time.
    pub async fn migrate_all(&self, sets: &[&Migrations]) -> anyhow::Result<()> {
        let mut migrations: Vec<sqlx::migrate::Migration> = sets
            .iter()
            .flat_map(|set| match self.backend {
                Backend::Postgres => set.postgres.migrations.iter(),
                Backend::Sqlite => set.sqlite.migrations.iter(),
            })
            .cloned()
            .collect();
        migrations.sort_by_key(|m| m.version);
        let migrator = Migrator { migrations: migrations.into(), ..Migrator::DEFAULT };
        migrator.run(&self.pool).await.context("applying migrations")?;
        Ok(())
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// A transaction that will write. On SQLite it takes the write lock at `BEGIN` (IMMEDIATE),
    /// so two such transactions queue on the busy timeout instead of one failing with
    /// "database is locked" when both try to upgrade a read lock; PostgreSQL locks rows as it goes.
    pub async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, sqlx::Error> {
        match self.backend {
            Backend::Postgres => self.pool.begin().await,
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await,
        }
    }

    /// Commits `tx`, which wrote events to the outbox, and wakes this process's relay for them.
    pub async fn commit_events(&self, tx: sqlx::Transaction<'static, sqlx::Any>) -> Result<(), sqlx::Error> {
        tx.commit().await?;
        self.events_committed.notify_one();
        Ok(())
    }

    /// Returns once events were committed through [`Database::commit_events`] (at once if some
    /// were since the last call).
    pub(crate) async fn events_committed(&self) {
        self.events_committed.notified().await;
    }

    /// A cheap round trip, for readiness checks.
    pub(crate) async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await.context("database ping")?;
        Ok(())
    }

    /// Publishes the pool's size and idle connections as gauges; called on every scrape.
    pub(crate) fn record_pool_gauges(&self, service: &'static str) {
        metrics::gauge!("db_pool_connections", "service" => service).set(f64::from(self.pool.size()));
        metrics::gauge!("db_pool_idle_connections", "service" => service).set(self.pool.num_idle() as f64);
        metrics::gauge!("db_pool_max_connections", "service" => service)
            .set(f64::from(self.pool.options().get_max_connections()));
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

fn create_sqlite_parent(url: &str) -> anyhow::Result<()> {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path.starts_with(":memory:") {
        return Ok(());
    }
    if let Some(parent) = std::path::Path::new(path).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating the data folder {}", parent.display()))?;
    }
    Ok(())
}

/// Maps a unique-constraint violation to `Some(constraint name)` on either backend, so a store
/// can turn it into a precise client error. SQLite does not name the constraint, only the
/// columns (`UNIQUE constraint failed: books.isbn`), so that text is returned instead.
pub fn unique_violation(err: &sqlx::Error) -> Option<String> {
    let db = err.as_database_error()?;
    if !db.is_unique_violation() {
        return None;
    }
    Some(db.constraint().map_or_else(|| db.message().to_owned(), str::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TLS to PostgreSQL is the URL's choice, as libpq's: `sslmode=verify-full` with
    /// `sslrootcert` talks TLS to a server whose certificate that CA signed for the host, and
    /// refuses one it did not sign.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_database_url_with_verify_full_connects_over_tls_and_refuses_a_certificate_it_cannot_verify() {
        let Some(server) = crate::testing::PostgresTlsNode::start_or_skip().await else { return };
        let verified = format!("sslmode=verify-full&sslrootcert={}", server.ca().display());
        let db = Database::connect(&server.url(&verified), &PoolConfig::default()).await.unwrap();
        let over_tls: bool = sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(db.pool())
            .await
            .unwrap();
        assert!(over_tls, "the connection is TLS");
        db.close().await;

        let stranger = tempfile::tempdir().unwrap();
        crate::tls::dev_certs(stranger.path(), &[]).unwrap();
        let unverifiable =
            format!("sslmode=verify-full&sslrootcert={}", stranger.path().join("ca.pem").display());
        let config =
            PoolConfig { acquire_timeout: std::time::Duration::from_secs(5), ..PoolConfig::default() };
        let refused = Database::connect(&server.url(&unverifiable), &config).await;
        assert!(refused.is_err(), "a server certificate another CA signed is refused");
    }

    #[test]
    fn backend_is_told_from_the_url_scheme() {
        assert_eq!(Backend::from_url("postgres://u@h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::from_url("postgresql://u@h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::from_url("sqlite://data/books.db").unwrap(), Backend::Sqlite);
        assert!(Backend::from_url("mysql://h/db").is_err());
    }

    #[tokio::test]
    async fn sqlite_file_and_its_folder_are_created_on_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested/books.db");
        let db =
            Database::connect(&format!("sqlite://{}", path.display()), &PoolConfig::default()).await.unwrap();
        db.ping().await.unwrap();
        assert!(path.exists());
    }
}
