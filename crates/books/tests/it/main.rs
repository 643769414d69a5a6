//! Integration tests of the books service: the store on each backend, and the gRPC server.
//! SQLite always; PostgreSQL when `BOOKSTORE_TEST_POSTGRES_URL` is set (and always in CI).

mod cache;
mod grpc;
mod reservations;
mod store;

use bookstore_books::domain::{Author, Description, Isbn, Money, NewBook, Title, check_digit};
use bookstore_books::{BookStore, MIGRATIONS};
use bookstore_platform::db::Backend;
use bookstore_platform::testing::TestDatabase;

/// A fresh, migrated store, or `None` when the backend is not configured (outside CI).
pub async fn store(backend: Backend) -> Option<(TestDatabase, BookStore)> {
    let test_db = TestDatabase::new(backend).await?;
    let db = test_db.connect(&MIGRATIONS).await;
    Some((test_db, BookStore::new(db)))
}

/// A valid ISBN-13 made from `n`, unique per `n`.
pub fn isbn(n: u32) -> String {
    let body = format!("978{n:09}");
    format!("{body}{}", check_digit(body.as_bytes()))
}

pub fn new_book(n: u32, title: &str, author: &str, description: &str) -> NewBook {
    NewBook {
        isbn: Isbn::parse(&isbn(n)).unwrap(),
        title: Title::parse(title).unwrap(),
        author: Author::parse(author).unwrap(),
        description: Description::parse(description).unwrap(),
        price: Money::parse(1000 + i64::from(n), "USD").unwrap(),
        stock: 10,
    }
}
