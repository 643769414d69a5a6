//! The starter catalog: real books with real ISBN-13s, loaded into an empty catalog so that a
//! newcomer sees a shop at once.

use serde::Deserialize;

use crate::domain::{Author, Description, Isbn, Money, NewBook, Title, parse_stock};
use crate::store::{BookStore, StoreError};

const CATALOG: &str = include_str!("../seed/catalog.json");

#[derive(Deserialize)]
struct SeedBook {
    isbn: String,
    title: String,
    author: String,
    description: String,
    price_minor: i64,
    currency: String,
    stock: i64,
}

/// The seed catalog, parsed and validated like any client's input.
pub fn catalog() -> anyhow::Result<Vec<NewBook>> {
    let raw: Vec<SeedBook> = serde_json::from_str(CATALOG)?;
    raw.into_iter()
        .map(|b| {
            Ok(NewBook {
                isbn: Isbn::parse(&b.isbn)?,
                title: Title::parse(&b.title)?,
                author: Author::parse(&b.author)?,
                description: Description::parse(&b.description)?,
                price: Money::parse(b.price_minor, &b.currency)?,
                stock: parse_stock(b.stock)?,
            })
        })
        .collect::<Result<_, crate::domain::InvalidField>>()
        .map_err(|e| anyhow::anyhow!("seed catalog: {e}"))
}

/// Loads the seed catalog if the catalog is empty; returns how many books were added.
pub async fn seed_if_empty(store: &BookStore) -> anyhow::Result<usize> {
    if store.count().await? > 0 {
        return Ok(0);
    }
    let mut added = 0;
    for book in catalog()? {
        match store.create(book).await {
            Ok(_) => added += 1,
            // Another instance seeding at the same moment; its copy is as good as ours.
            Err(StoreError::DuplicateIsbn(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_seed_catalog_is_valid_and_has_over_fifty_books() {
        let books = super::catalog().unwrap();
        assert!(books.len() >= 50, "only {} books", books.len());
        let mut isbns: Vec<_> = books.iter().map(|b| b.isbn.as_str().to_owned()).collect();
        isbns.sort();
        isbns.dedup();
        assert_eq!(isbns.len(), books.len(), "ISBNs are unique");
    }
}
