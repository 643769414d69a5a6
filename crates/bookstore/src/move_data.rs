//! `bookstore move-data`: from `up`'s embedded SQLite files to the PostgreSQL databases of a
//! `serve` deployment, service by service, verified by row counts and checksums.
//!
//! Each run makes every target database equal to its source as one snapshot of it: rows are
//! upserted by primary key and rows the source no longer has are deleted, all in one
//! transaction per database, parents before children. So a move is resumable and can run while
//! `up` still serves; a last run after `up` stops carries what changed meanwhile. The outbox,
//! the inbox and (when the target keeps an event log) the log and each consumer's position move
//! with the rest, so an event unpublished or unconsumed at the move is published or consumed
//! after it, once.
//!
//! The copy is driven by the target's schema (after this release's migrations on both sides):
//! its tables, columns (generated ones are left to PostgreSQL), primary keys, foreign keys and
//! serial sequences, read from `information_schema`. Libraries: pgloader does this from
//! outside (and is not packaged here); sqlx has no copy between backends. This is the part of
//! it we need, a few hundred lines over sqlx.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use bookstore_platform::db::{Backend, Database, PoolConfig};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::Config;

/// A value as it moves: every column type the services use.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Value {
    Null,
    Int(i64),
    Text(String),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Text,
    Bytes,
}

struct Column {
    name: String,
    kind: Kind,
    /// Filled from a sequence (`BIGSERIAL`), which is moved on past the copied values.
    serial: bool,
}

struct Table {
    name: String,
    columns: Vec<Column>,
    /// Indexes into `columns`; empty when the table has no primary key.
    key: Vec<usize>,
}

type Rows = Vec<Vec<Value>>;

/// The target's tables, parents before children, with what a copy needs of each.
async fn tables(db: &Database) -> anyhow::Result<Vec<Table>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema() \
         AND table_type = 'BASE TABLE' AND table_name <> '_sqlx_migrations' ORDER BY table_name",
    )
    .fetch_all(db.pool())
    .await
    .context("listing tables")?;
    let edges = sqlx::query(
        "SELECT tc.table_name::text, ccu.table_name::text FROM information_schema.table_constraints tc \
         JOIN information_schema.constraint_column_usage ccu \
           ON tc.constraint_name = ccu.constraint_name AND tc.table_schema = ccu.table_schema \
         WHERE tc.constraint_type = 'FOREIGN KEY' AND tc.table_schema = current_schema()",
    )
    .fetch_all(db.pool())
    .await
    .context("listing foreign keys")?;
    let mut parents: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for edge in edges {
        let (child, parent): (String, String) = (edge.try_get(0)?, edge.try_get(1)?);
        if child != parent {
            parents.entry(child).or_default().insert(parent);
        }
    }
    // Parents first: take a table once every table it refers to is taken.
    let mut order: Vec<String> = Vec::new();
    while order.len() < names.len() {
        let next = names
            .iter()
            .find(|n| {
                !order.contains(n) && parents.get(*n).is_none_or(|ps| ps.iter().all(|p| order.contains(p)))
            })
            .context("foreign keys in a cycle")?;
        order.push(next.clone());
    }
    let mut out = Vec::new();
    for name in order {
        let rows = sqlx::query(
            "SELECT column_name::text, data_type::text, is_generated::text, COALESCE(column_default, '')::text \
             FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = $1 \
             ORDER BY ordinal_position",
        )
        .bind(&name)
        .fetch_all(db.pool())
        .await
        .context("listing columns")?;
        let mut columns = Vec::new();
        for row in rows {
            let (column, data_type, generated, default): (String, String, String, String) =
                (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?, row.try_get(3)?);
            if generated == "ALWAYS" {
                continue;
            }
            let kind = match data_type.as_str() {
                "bigint" | "integer" | "smallint" => Kind::Int,
                "text" | "character varying" => Kind::Text,
                "bytea" => Kind::Bytes,
                other => anyhow::bail!("{name}.{column} is {other}, which a move does not carry"),
            };
            columns.push(Column { name: column, kind, serial: default.starts_with("nextval(") });
        }
        let key_columns: Vec<String> = sqlx::query_scalar(
            "SELECT kcu.column_name::text FROM information_schema.table_constraints tc \
             JOIN information_schema.key_column_usage kcu ON tc.constraint_name = kcu.constraint_name \
               AND tc.table_schema = kcu.table_schema AND tc.table_name = kcu.table_name \
             WHERE tc.constraint_type = 'PRIMARY KEY' AND tc.table_schema = current_schema() \
               AND tc.table_name = $1 ORDER BY kcu.ordinal_position",
        )
        .bind(&name)
        .fetch_all(db.pool())
        .await
        .context("reading a primary key")?;
        let key = key_columns
            .iter()
            .map(|k| columns.iter().position(|c| &c.name == k).context("a key column that is generated"))
            .collect::<anyhow::Result<_>>()?;
        out.push(Table { name, columns, key });
    }
    Ok(out)
}

/// Every row of `table`, sorted by its key (in Rust: the two databases collate text apart).
async fn read<'c>(
    conn: impl sqlx::Executor<'c, Database = sqlx::Any>,
    table: &Table,
) -> anyhow::Result<Rows> {
    let list: Vec<String> = table.columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
    let sql = format!("SELECT {} FROM \"{}\"", list.join(", "), table.name);
    let raw = sqlx::query(&sql).fetch_all(conn).await.with_context(|| format!("reading {}", table.name))?;
    let mut rows = Vec::with_capacity(raw.len());
    for row in raw {
        let mut values = Vec::with_capacity(table.columns.len());
        for (i, column) in table.columns.iter().enumerate() {
            let value = match column.kind {
                Kind::Int => row.try_get::<Option<i64>, _>(i)?.map(Value::Int),
                Kind::Text => row.try_get::<Option<String>, _>(i)?.map(Value::Text),
                Kind::Bytes => row.try_get::<Option<Vec<u8>>, _>(i)?.map(Value::Bytes),
            };
            values.push(value.unwrap_or(Value::Null));
        }
        rows.push(values);
    }
    let key = |row: &Vec<Value>| -> Vec<Value> {
        if table.key.is_empty() { row.clone() } else { table.key.iter().map(|&i| row[i].clone()).collect() }
    };
    rows.sort_by_key(key);
    Ok(rows)
}

/// The rows' SHA-256, the same whichever database they were read from.
fn checksum(rows: &Rows) -> String {
    let mut hash = Sha256::new();
    for row in rows {
        for value in row {
            match value {
                Value::Null => hash.update([0u8]),
                Value::Int(n) => {
                    hash.update([1u8]);
                    hash.update(n.to_be_bytes());
                }
                Value::Text(s) => {
                    hash.update([2u8]);
                    hash.update((s.len() as u64).to_be_bytes());
                    hash.update(s.as_bytes());
                }
                Value::Bytes(b) => {
                    hash.update([3u8]);
                    hash.update((b.len() as u64).to_be_bytes());
                    hash.update(b);
                }
            }
        }
    }
    hex::encode(hash.finalize())
}

/// Binds `value`; a null with its column's type, which PostgreSQL checks.
fn bind<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    value: &Value,
    kind: Kind,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    match (value, kind) {
        (Value::Null, Kind::Int) => query.bind(None::<i64>),
        (Value::Null, Kind::Text) => query.bind(None::<String>),
        (Value::Null, Kind::Bytes) => query.bind(None::<Vec<u8>>),
        (Value::Int(n), _) => query.bind(*n),
        (Value::Text(s), _) => query.bind(s.clone()),
        (Value::Bytes(b), _) => query.bind(b.clone()),
    }
}

/// Writes `rows` into `table` in the target transaction, but those `present` as they are:
/// upserts by key (a table without a key is emptied and filled).
async fn sync(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &Table,
    rows: &Rows,
    present: &BTreeSet<Vec<Value>>,
) -> anyhow::Result<()> {
    let names: Vec<String> = table.columns.iter().map(|c| format!("\"{}\"", c.name)).collect();
    let params: Vec<String> = (1..=names.len()).map(|i| format!("${i}")).collect();
    let mut sql =
        format!("INSERT INTO \"{}\" ({}) VALUES ({})", table.name, names.join(", "), params.join(", "));
    if table.key.is_empty() {
        sqlx::query(&format!("DELETE FROM \"{}\"", table.name)).execute(&mut **tx).await?;
    } else {
        let key: Vec<&str> = table.key.iter().map(|&i| names[i].as_str()).collect();
        let rest: Vec<String> = (0..names.len())
            .filter(|i| !table.key.contains(i))
            .map(|i| format!("{0} = excluded.{0}", names[i]))
            .collect();
        sql.push_str(&format!(" ON CONFLICT ({}) DO ", key.join(", ")));
        sql.push_str(&if rest.is_empty() {
            "NOTHING".to_owned()
        } else {
            format!("UPDATE SET {}", rest.join(", "))
        });
    }
    for row in rows.iter().filter(|row| !present.contains(*row)) {
        let mut query = sqlx::query(&sql);
        for (value, column) in row.iter().zip(&table.columns) {
            query = bind(query, value, column.kind);
        }
        query.execute(&mut **tx).await.with_context(|| format!("writing {}", table.name))?;
    }
    Ok(())
}

/// Deletes the rows of `table` whose keys are not in `rows`; the count, and the rows the
/// target holds already (written again only if they changed: an append-only table refuses
/// even an update to equal values).
async fn prune(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    table: &Table,
    rows: &Rows,
) -> anyhow::Result<(u64, BTreeSet<Vec<Value>>)> {
    if table.key.is_empty() {
        return Ok((0, BTreeSet::new()));
    }
    let wanted: BTreeSet<Vec<Value>> =
        rows.iter().map(|r| table.key.iter().map(|&i| r[i].clone()).collect()).collect();
    let present = read(&mut **tx, table).await?;
    let condition: Vec<String> = table
        .key
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("\"{}\" = ${}", table.columns[i].name, n + 1))
        .collect();
    let sql = format!("DELETE FROM \"{}\" WHERE {}", table.name, condition.join(" AND "));
    let mut deleted = 0;
    let mut kept = BTreeSet::new();
    for row in present {
        let key: Vec<Value> = table.key.iter().map(|&i| row[i].clone()).collect();
        if wanted.contains(&key) {
            kept.insert(row);
        } else {
            let mut query = sqlx::query(&sql);
            for (value, &i) in key.iter().zip(&table.key) {
                query = bind(query, value, table.columns[i].kind);
            }
            deleted += query.execute(&mut **tx).await?.rows_affected();
        }
    }
    Ok((deleted, kept))
}

/// Refuses a move from the event log to RabbitMQ that would leave events behind: each consumer
/// must have read the whole log, and no dead letter may wait in it.
async fn check_log_drained(log_url: &str) -> anyhow::Result<()> {
    let db = Database::connect(log_url, &PoolConfig::default()).await.context("event log")?;
    bookstore_platform::events::EventLog::open(db.clone()).await?;
    let end: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM event_log").fetch_one(db.pool()).await?;
    let end = end.unwrap_or(0);
    for consumer in crate::CONSUMERS {
        let at: Option<i64> = sqlx::query_scalar("SELECT seq FROM event_offsets WHERE consumer = $1")
            .bind(consumer)
            .fetch_optional(db.pool())
            .await?;
        anyhow::ensure!(
            at.unwrap_or(0) >= end,
            "consumer {consumer} has not read the whole event log ({} of {end}): start `up` until it \
             has, or give the target an event_log_url so the log moves too",
            at.unwrap_or(0)
        );
    }
    let dead: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM event_dead_letters WHERE discarded_at IS NULL")
        .fetch_one(db.pool())
        .await?;
    anyhow::ensure!(dead == 0, "{dead} dead letters wait in the event log: replay or discard them first");
    db.close().await;
    Ok(())
}

/// Moves every database of `from` (SQLite: `up`'s) into the matching database of `to`
/// (PostgreSQL), verified; a line per database for the operator.
pub async fn move_data(from: &Config, to: &Config) -> anyhow::Result<Vec<String>> {
    let sources = crate::backup::databases(from);
    let targets = crate::backup::databases(to);
    if from.process.amqp_url.is_none() && to.process.amqp_url.is_some() {
        check_log_drained(&from.event_log_url()).await?;
    }
    let mut done = Vec::new();
    for (name, target_url, migrations) in &targets {
        let Some((_, source_url, _)) = sources.iter().find(|(n, _, _)| n == name) else {
            anyhow::bail!("the source has no {name} database");
        };
        anyhow::ensure!(source_url.starts_with("sqlite:"), "{name}: the source is not SQLite ({source_url})");
        anyhow::ensure!(
            !target_url.starts_with("sqlite:"),
            "{name}: the target is SQLite; set {name}_database_url to a PostgreSQL database"
        );
        // Both at this release's schema, so their columns agree.
        let source = crate::connect(source_url, from, migrations, name).await?;
        let target = crate::connect(target_url, to, migrations, name).await?;
        anyhow::ensure!(target.backend() == Backend::Postgres, "{name}: the target is not PostgreSQL");
        let tables = tables(&target).await.with_context(|| format!("{name} database"))?;

        // One snapshot of the source (a read transaction), into one transaction of the target.
        let mut snapshot = source.pool().begin().await?;
        let mut read_rows = Vec::new();
        for table in &tables {
            read_rows.push(read(&mut *snapshot, table).await?);
        }
        snapshot.rollback().await.ok();
        // What the source no longer has goes first (children first), so that a row re-created
        // under a new key does not collide with its old self on another unique column.
        let mut tx = target.begin_write().await?;
        let mut pruned = 0;
        let mut present = vec![BTreeSet::new(); tables.len()];
        for (i, (table, rows)) in tables.iter().zip(&read_rows).enumerate().rev() {
            let (deleted, kept) = prune(&mut tx, table, rows).await?;
            pruned += deleted;
            present[i] = kept;
        }
        for ((table, rows), present) in tables.iter().zip(&read_rows).zip(&present) {
            sync(&mut tx, table, rows, present).await?;
        }
        for table in &tables {
            for column in table.columns.iter().filter(|c| c.serial) {
                let sql = format!(
                    "SELECT setval(pg_get_serial_sequence('\"{0}\"', '{1}'), \
                     COALESCE((SELECT MAX(\"{1}\") FROM \"{0}\"), 0) + 1, false)",
                    table.name, column.name
                );
                sqlx::query(&sql).execute(&mut *tx).await.context("moving a sequence on")?;
            }
        }
        tx.commit().await.with_context(|| format!("committing the {name} database"))?;

        // Verified as written: the same rows, by count and checksum.
        let mut rows_moved = 0;
        for (table, rows) in tables.iter().zip(&read_rows) {
            let written = read(target.pool(), table).await?;
            anyhow::ensure!(
                written.len() == rows.len() && checksum(&written) == checksum(rows),
                "{name}.{}: {} rows written of {}, or their checksum differs",
                table.name,
                written.len(),
                rows.len()
            );
            rows_moved += rows.len();
        }
        source.close().await;
        target.close().await;
        done.push(format!(
            "{name}: {} tables, {rows_moved} rows ({pruned} removed) in {}, verified",
            tables.len(),
            crate::config::redact_url(target_url)
        ));
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checksum_tells_rows_apart_by_value_type_and_boundary() {
        let one = vec![vec![Value::Text("ab".into()), Value::Text("c".into())]];
        let two = vec![vec![Value::Text("a".into()), Value::Text("bc".into())]];
        assert_ne!(checksum(&one), checksum(&two), "boundaries count");
        let int = vec![vec![Value::Int(1)]];
        let text = vec![vec![Value::Text("1".into())]];
        assert_ne!(checksum(&int), checksum(&text), "types count");
        assert_ne!(checksum(&vec![vec![Value::Null]]), checksum(&vec![vec![Value::Bytes(vec![])]]));
        assert_eq!(checksum(&one), checksum(&one.clone()));
    }
}
