//! The read cache shared through Redis: one replica's read serves another, a write through any
//! replica evicts the book from every replica at once, a read that raced a write never puts the
//! old book back, and reads go on from the database while Redis is down.
//!
//! Each test is a pair of "replicas" (two stores with caches of their own) on one database and
//! a key prefix of its own in Redis; TTLs are long, so only an eviction can explain a fresh read.

use std::time::Duration;

use bookstore_books::BookStore;
use bookstore_books::cache::{BookCache, Lookup, Shared};
use bookstore_books::domain::{Book, BookPatch, Title};
use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use bookstore_platform::testing::{RedisNode, redis_url_or_skip};
use tokio_util::sync::CancellationToken;

use crate::{new_book, store};

backend_tests!(
    a_book_read_through_one_replica_is_served_to_another_from_redis,
    a_write_through_one_replica_evicts_the_book_from_every_replica_at_once,
    reads_go_to_the_database_while_redis_is_down,
);

const LONG: Duration = Duration::from_secs(600);

fn prefix() -> String {
    format!("test-{}", uuid::Uuid::new_v4().simple())
}

async fn cache(url: &str, prefix: &str, local: Duration) -> BookCache {
    BookCache::none().with_local(local, 1000).with_shared(Shared::connect(url, prefix, LONG).await.unwrap())
}

/// A replica whose eviction listener runs until `stop`.
fn replica(base: &BookStore, cache: BookCache, stop: &CancellationToken) -> BookStore {
    let replica = base.clone().with_read_cache(cache);
    tokio::spawn(replica.read_cache().listen(stop.clone()));
    replica
}

/// Changes a title behind every cache's back, as a replica of another release might.
async fn retitle_in_the_database(store: &BookStore, id: &str, title: &str) {
    sqlx::query("UPDATE books SET title = $1 WHERE id = $2")
        .bind(title)
        .bind(id)
        .execute(store.database().pool())
        .await
        .unwrap();
}

async fn a_book_read_through_one_replica_is_served_to_another_from_redis(backend: Backend) {
    let Some(url) = redis_url_or_skip() else { return };
    let Some((_db, base)) = store(backend).await else { return };
    let prefix = prefix();
    let stop = CancellationToken::new();
    // No in-process tier: every read that the database does not answer comes from Redis.
    let a = replica(&base, cache(&url, &prefix, Duration::ZERO).await, &stop);
    let b = replica(&base, cache(&url, &prefix, Duration::ZERO).await, &stop);
    let book = base.create(new_book(1, "Dune", "Frank Herbert", "")).await.unwrap();

    assert_eq!(a.get(&book.id).await.unwrap().title, "Dune");
    retitle_in_the_database(&base, &book.id, "Changed behind the cache").await;
    assert_eq!(b.get(&book.id).await.unwrap().title, "Dune", "b is served what a put in Redis");
    assert_eq!(
        base.get(&book.id).await.unwrap().title,
        "Changed behind the cache",
        "an uncached store reads the row"
    );
    stop.cancel();
}

/// Waits until `replica` reads `book` as `expected`, for at most 10 s (far below the TTLs).
async fn until_read(replica: &BookStore, id: &str, expected: impl Fn(&Book) -> bool) -> Book {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let book = replica.get(id).await.unwrap();
        if expected(&book) {
            return book;
        }
        assert!(tokio::time::Instant::now() < deadline, "still stale after 10 s: {book:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn a_write_through_one_replica_evicts_the_book_from_every_replica_at_once(backend: Backend) {
    let Some(url) = redis_url_or_skip() else { return };
    let Some((_db, base)) = store(backend).await else { return };
    let prefix = prefix();
    let stop = CancellationToken::new();
    let a = replica(&base, cache(&url, &prefix, LONG).await, &stop);
    let b = replica(&base, cache(&url, &prefix, LONG).await, &stop);
    let book = base.create(new_book(1, "Dune", "Frank Herbert", "")).await.unwrap();
    // Both tiers of both replicas hold the book.
    assert_eq!(a.get(&book.id).await.unwrap().title, "Dune");
    assert_eq!(b.get(&book.id).await.unwrap().title, "Dune");
    retitle_in_the_database(&base, &book.id, "Not through a store").await;
    assert_eq!(a.get(&book.id).await.unwrap().title, "Dune", "a serves from its own tier");

    let patch = BookPatch { title: Some(Title::parse("Dune Messiah").unwrap()), ..Default::default() };
    b.update(&book.id, patch).await.unwrap();
    assert_eq!(b.get(&book.id).await.unwrap().title, "Dune Messiah", "the writer reads its write");
    until_read(&a, &book.id, |book| book.title == "Dune Messiah").await;

    a.adjust_stock(&book.id, -4).await.unwrap();
    assert_eq!(a.get(&book.id).await.unwrap().stock, 6);
    until_read(&b, &book.id, |book| book.stock == 6).await;
    stop.cancel();
}

#[tokio::test]
async fn a_read_that_raced_a_write_never_puts_the_old_book_back() {
    let Some(url) = redis_url_or_skip() else { return };
    let prefix = prefix();
    let reader = cache(&url, &prefix, Duration::ZERO).await;
    let writer = cache(&url, &prefix, Duration::ZERO).await;
    let (_db, store) = store(Backend::Sqlite).await.unwrap();
    let old = store.create(new_book(1, "Dune", "Frank Herbert", "")).await.unwrap();

    // The reader misses and reads the database (the old book); the write commits and evicts;
    // only then does the reader try to fill.
    let Lookup::Miss(ticket) = reader.lookup(&old.id).await else { panic!("nothing was cached yet") };
    writer.evict([old.id.as_str()]).await;
    reader.fill(&old, ticket).await;
    assert!(
        matches!(writer.lookup(&old.id).await, Lookup::Miss(_)),
        "the old book was put back after the write"
    );

    // Without a write in between, the fill is kept.
    let Lookup::Miss(ticket) = reader.lookup(&old.id).await else { panic!("nothing was cached") };
    reader.fill(&old, ticket).await;
    assert!(matches!(writer.lookup(&old.id).await, Lookup::Hit(book) if book == old));
}

async fn reads_go_to_the_database_while_redis_is_down(backend: Backend) {
    let Some(mut redis) = RedisNode::start_or_skip().await else { return };
    let Some((_db, base)) = store(backend).await else { return };
    let stop = CancellationToken::new();
    let a = replica(&base, cache(&redis.url(), &prefix(), Duration::ZERO).await, &stop);
    let book = base.create(new_book(1, "Dune", "Frank Herbert", "")).await.unwrap();
    assert_eq!(a.get(&book.id).await.unwrap().title, "Dune");

    redis.kill();
    retitle_in_the_database(&base, &book.id, "Dune, read from the row").await;
    assert_eq!(a.get(&book.id).await.unwrap().title, "Dune, read from the row");
    let patch = BookPatch { title: Some(Title::parse("Dune Messiah").unwrap()), ..Default::default() };
    assert_eq!(a.update(&book.id, patch).await.unwrap().title, "Dune Messiah", "writes do not wait on Redis");
    assert_eq!(a.get(&book.id).await.unwrap().title, "Dune Messiah");
    stop.cancel();
}
