//! `bookstore backup` and `bookstore restore`: a consistent copy of every service's database
//! (and the embedded event log, when it is the bus), with a manifest that a restore checks.
//!
//! - SQLite: `VACUUM INTO`, an online copy that is one consistent snapshot of the file.
//! - PostgreSQL: `pg_dump --format=custom`, one snapshot per database; restored with
//!   `pg_restore`. The tools come from `PATH`, else the newest `/usr/lib/postgresql/*/bin`.
//!
//! The manifest (`manifest.json`) names this release, each database's migration level, file,
//! size and SHA-256, and is sealed with a key derived from the master key (AES-256-GCM over its
//! SHA-256): a restore refuses a file that changed, a manifest changed without the master key,
//! a backup of a newer release, a backup of another bus, and a database that is not empty. The
//! master key itself is never written to a backup.
//!
//! Libraries: there is no crate that backs up SQLite and PostgreSQL alike; `VACUUM INTO` and
//! `pg_dump` are what each database ships for this, so we drive them and keep the manifest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use bookstore_platform::crypto::MasterKey;
use bookstore_platform::db::{Backend, Database, Migrations, PoolConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::Config;

/// What a backup holds, and how to check it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// The layout of a backup; a restore refuses one it does not know.
    pub format: u32,
    /// The release that wrote it.
    pub version: String,
    pub created_at_ms: i64,
    /// Which master key seals it (its id, not the key).
    pub master_key_id: String,
    /// `log` (the embedded event log is in the backup) or `rabbitmq` (the bus keeps its own).
    pub bus: String,
    pub databases: Vec<BackedUp>,
}

/// One database in a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BackedUp {
    /// The service (or `events`, the event log).
    pub name: String,
    /// `sqlite` or `postgres`.
    pub backend: String,
    pub file: String,
    /// The last migration applied when it was copied.
    pub migration_level: i64,
    pub bytes: u64,
    pub sha256: String,
}

const FORMAT: u32 = 1;
const MANIFEST: &str = "manifest.json";
const SEAL: &str = "manifest.seal";

/// Every database of the deployment `config` describes: each service's that keeps data, and the
/// event log when it is the bus; with its migrations.
pub(crate) fn databases(config: &Config) -> Vec<(&'static str, String, Vec<&'static Migrations>)> {
    let mut all: Vec<_> = crate::SERVICES
        .iter()
        .filter(|e| !e.migrations().is_empty())
        .map(|e| (e.name(), e.database_url(config), e.migrations()))
        .collect();
    if config.process.amqp_url.is_none() {
        all.push(("events", config.event_log_url(), vec![&bookstore_platform::events::log::LOG_MIGRATIONS]));
    }
    all
}

fn bus_of(config: &Config) -> &'static str {
    if config.process.amqp_url.is_some() { "rabbitmq" } else { "log" }
}

/// The master key a backup is sealed with: as configured, else `<data_dir>/master.key` if it
/// is there (as `up` keeps it). Never generated here: a new key could open nothing.
fn master_key(config: &Config) -> anyhow::Result<MasterKey> {
    let in_data_dir = config.process.data_dir.join("master.key");
    let data_dir = in_data_dir.exists().then_some(config.process.data_dir.as_path());
    bookstore_platform::crypto::load_master_key(
        config.process.master_key.as_deref(),
        config.process.master_key_file.as_deref(),
        data_dir,
        "a backup is sealed with the master key, so this command",
    )
}

/// The manifest's seal: its SHA-256, encrypted under a key derived from the master key.
fn seal(key: &MasterKey, manifest: &[u8]) -> Vec<u8> {
    let digest = hex::encode(Sha256::digest(manifest));
    key.derive("backup-manifest", "backup").encrypt("manifest", "sha256", &digest)
}

fn sha256_of(path: &Path) -> anyhow::Result<(u64, String)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut hasher = Sha256::new();
    let bytes =
        std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok((bytes, hex::encode(hasher.finalize())))
}

/// A PostgreSQL client tool: on `PATH`, else from the newest server installed.
fn pg_tool(name: &str) -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join(name)).find(|p| p.is_file()));
    if let Some(Some(found)) = on_path {
        return found;
    }
    let mut installed: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|dirs| dirs.flatten().map(|d| d.path().join("bin").join(name)).filter(|p| p.is_file()).collect())
        .unwrap_or_default();
    installed.sort_by_key(|p| {
        p.iter().nth(4).and_then(|v| v.to_str()).and_then(|v| v.parse::<u32>().ok()).unwrap_or(0)
    });
    installed.pop().unwrap_or_else(|| PathBuf::from(name))
}

async fn run(tool: &str, args: &[&std::ffi::OsStr]) -> anyhow::Result<()> {
    let path = pg_tool(tool);
    let out = tokio::process::Command::new(&path)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {} (install the PostgreSQL client tools)", path.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "{tool} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// The last migration applied to `db` (0: none).
async fn migration_level(db: &Database) -> anyhow::Result<i64> {
    let tables: i64 = match db.backend() {
        Backend::Sqlite => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            )
            .fetch_one(db.pool())
            .await?
        }
        Backend::Postgres => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() \
                 AND table_name = '_sqlx_migrations'",
            )
            .fetch_one(db.pool())
            .await?
        }
    };
    if tables == 0 {
        return Ok(0);
    }
    let level: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
        .fetch_one(db.pool())
        .await
        .context("reading the migration level")?;
    Ok(level.unwrap_or(0))
}

/// How many tables `db` holds: a restore goes into empty databases only.
async fn table_count(db: &Database) -> anyhow::Result<i64> {
    let sql = match db.backend() {
        Backend::Sqlite => {
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        }
        Backend::Postgres => {
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()"
        }
    };
    Ok(sqlx::query_scalar(sql).fetch_one(db.pool()).await?)
}

/// The file a `sqlite:` URL names.
fn sqlite_path(url: &str) -> PathBuf {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    PathBuf::from(rest.split('?').next().unwrap_or(rest))
}

fn backend_name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// Writes a backup of every database of the deployment to `to` (a new or empty folder).
pub async fn backup(config: &Config, to: &Path) -> anyhow::Result<Manifest> {
    let key = master_key(config)?;
    if to.exists() {
        anyhow::ensure!(
            std::fs::read_dir(to)?.next().is_none(),
            "{} is not empty: a backup goes into a new folder",
            to.display()
        );
    }
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    let mut backed_up = Vec::new();
    for (name, url, _) in databases(config) {
        let db = Database::connect(&url, &PoolConfig::default())
            .await
            .with_context(|| format!("{name} database"))?;
        let migration_level = migration_level(&db).await.with_context(|| format!("{name} database"))?;
        let backend = db.backend();
        let file = match backend {
            Backend::Sqlite => format!("{name}.sqlite"),
            Backend::Postgres => format!("{name}.pgdump"),
        };
        let path = to.join(&file);
        match backend {
            Backend::Sqlite => {
                let target =
                    path.to_str().context("a backup folder whose path is UTF-8")?.replace('\'', "''");
                sqlx::query(&format!("VACUUM INTO '{target}'"))
                    .execute(db.pool())
                    .await
                    .with_context(|| format!("copying the {name} database"))?;
            }
            Backend::Postgres => {
                let args = [
                    "--format=custom".as_ref(),
                    "--no-owner".as_ref(),
                    "--no-privileges".as_ref(),
                    "--file".as_ref(),
                    path.as_os_str(),
                    "--dbname".as_ref(),
                    url.as_ref(),
                ];
                run("pg_dump", &args).await.with_context(|| format!("dumping the {name} database"))?;
            }
        }
        db.close().await;
        let (bytes, sha256) = sha256_of(&path)?;
        backed_up.push(BackedUp {
            name: name.to_owned(),
            backend: backend_name(backend).to_owned(),
            file,
            migration_level,
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        created_at_ms: bookstore_platform::clock::now_ms(),
        master_key_id: key.id().to_owned(),
        bus: bus_of(config).to_owned(),
        databases: backed_up,
    };
    let text = serde_json::to_vec_pretty(&manifest)?;
    std::fs::write(to.join(SEAL), hex::encode(seal(&key, &text)))?;
    std::fs::write(to.join(MANIFEST), &text)?;
    Ok(manifest)
}

/// Reads and checks the backup in `from`: its seal, its format and release, every file.
pub fn verify(config: &Config, from: &Path) -> anyhow::Result<Manifest> {
    let text = std::fs::read(from.join(MANIFEST))
        .with_context(|| format!("reading {MANIFEST} in {}", from.display()))?;
    let sealed = std::fs::read_to_string(from.join(SEAL)).with_context(|| format!("reading {SEAL}"))?;
    let manifest: Manifest = serde_json::from_slice(&text).context("the manifest is not one")?;
    let key = master_key(config)?;
    anyhow::ensure!(
        manifest.master_key_id == key.id(),
        "the backup was sealed with master key {}, and this configuration has {}: restore with the \
         master key the backup was made with",
        manifest.master_key_id,
        key.id()
    );
    let digest = hex::decode(sealed.trim()).ok().and_then(|sealed| {
        key.derive("backup-manifest", "backup").decrypt("manifest", "sha256", &sealed).ok()
    });
    anyhow::ensure!(
        digest.as_deref() == Some(hex::encode(Sha256::digest(&text)).as_str()),
        "the manifest does not match its seal: it was changed after the backup"
    );
    anyhow::ensure!(
        manifest.format == FORMAT,
        "a backup of format {} (this release reads {FORMAT})",
        manifest.format
    );
    for db in &manifest.databases {
        let (bytes, sha256) = sha256_of(&from.join(&db.file))?;
        anyhow::ensure!(
            bytes == db.bytes && sha256 == db.sha256,
            "{} does not match the manifest: it changed after the backup",
            db.file
        );
    }
    Ok(manifest)
}

/// Restores the backup in `from` into the deployment's databases, which must be empty; then
/// brings each up to this release's migrations. Lines for the operator.
pub async fn restore(config: &Config, from: &Path) -> anyhow::Result<Vec<String>> {
    let manifest = verify(config, from)?;
    anyhow::ensure!(
        manifest.bus == bus_of(config),
        "the backup's bus is {}, and this configuration's is {}",
        manifest.bus,
        bus_of(config)
    );
    let targets = databases(config);
    // Every check before the first write.
    let mut plan = Vec::new();
    for (name, url, migrations) in &targets {
        let backed_up = manifest
            .databases
            .iter()
            .find(|d| d.name == *name)
            .with_context(|| format!("the backup has no {name} database"))?;
        let db = Database::connect(url, &PoolConfig::default())
            .await
            .with_context(|| format!("{name} database"))?;
        anyhow::ensure!(
            backend_name(db.backend()) == backed_up.backend,
            "the backup's {name} database is {}, and this configuration's is {}",
            backed_up.backend,
            backend_name(db.backend())
        );
        let latest = migrations
            .iter()
            .flat_map(|m| match db.backend() {
                Backend::Postgres => m.postgres.migrations.iter(),
                Backend::Sqlite => m.sqlite.migrations.iter(),
            })
            .map(|m| m.version)
            .max()
            .unwrap_or(0);
        anyhow::ensure!(
            backed_up.migration_level <= latest,
            "the backup's {name} database is at migration {}, newer than this release's {latest}: \
             restore with release {} or later",
            backed_up.migration_level,
            manifest.version
        );
        let tables = table_count(&db).await?;
        anyhow::ensure!(
            tables == 0,
            "the {name} database is not empty ({tables} tables): restore into empty databases"
        );
        plan.push((name, url, db, backed_up));
    }
    let mut done = Vec::new();
    for (name, url, db, backed_up) in plan {
        let file = from.join(&backed_up.file);
        match db.backend() {
            Backend::Sqlite => {
                db.close().await;
                let path = sqlite_path(url);
                for leftover in ["-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{leftover}", path.display()));
                }
                std::fs::copy(&file, &path).with_context(|| format!("restoring {}", path.display()))?;
            }
            Backend::Postgres => {
                db.close().await;
                let args = [
                    "--no-owner".as_ref(),
                    "--no-privileges".as_ref(),
                    "--exit-on-error".as_ref(),
                    "--dbname".as_ref(),
                    url.as_ref(),
                    file.as_os_str(),
                ];
                run("pg_restore", &args).await.with_context(|| format!("restoring the {name} database"))?;
            }
        }
        let (_, _, migrations) = targets.iter().find(|(n, _, _)| n == name).expect("planned from targets");
        crate::connect(url, config, migrations, name).await?.close().await;
        done.push(format!(
            "{name}: restored {} ({} bytes, migration {}) into {}",
            backed_up.file,
            backed_up.bytes,
            backed_up.migration_level,
            crate::config::redact_url(url)
        ));
    }
    Ok(done)
}
