use bookstore_books::domain::{Author, BookPatch, Isbn, Money, PageRequest, SearchQuery, Title};
use bookstore_books::store::StoreError;
use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;

use crate::{isbn, new_book, store};

backend_tests!(
    a_created_book_reads_back_with_every_field,
    a_second_book_with_the_same_isbn_is_refused,
    listing_pages_in_title_order_with_the_total,
    listing_filters_by_author_ignoring_case,
    search_ranks_title_matches_above_description_matches,
    search_requires_every_word_and_follows_updates_and_deletes,
    an_update_changes_only_the_given_fields,
    a_deleted_book_is_gone,
    stock_never_goes_negative_under_concurrent_removals,
    the_seed_catalog_loads_once,
    a_cached_book_is_fresh_after_every_write,
);

async fn a_created_book_reads_back_with_every_field(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let created = store.create(new_book(1, "Dune", "Frank Herbert", "Spice and sand.")).await.unwrap();
    let read = store.get(&created.id).await.unwrap();
    assert_eq!(read, created);
    assert_eq!(read.isbn, isbn(1));
    assert_eq!((read.title.as_str(), read.author.as_str()), ("Dune", "Frank Herbert"));
    assert_eq!((read.price_minor, read.currency.as_str(), read.stock), (1001, "USD", 10));
    assert!(read.created_at > 1_600_000_000_000 && read.created_at == read.updated_at);
    assert!(matches!(store.get("no-such-id").await, Err(StoreError::NotFound(_))));
}

async fn a_second_book_with_the_same_isbn_is_refused(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    store.create(new_book(1, "A", "X", "")).await.unwrap();
    let err = store.create(new_book(1, "B", "Y", "")).await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateIsbn(ref i) if *i == isbn(1)), "{err:?}");

    // Taking another book's ISBN by update is refused the same way.
    let other = store.create(new_book(2, "C", "Z", "")).await.unwrap();
    let patch = BookPatch { isbn: Some(Isbn::parse(&isbn(1)).unwrap()), ..Default::default() };
    let err = store.update(&other.id, patch).await.unwrap_err();
    assert!(matches!(err, StoreError::DuplicateIsbn(_)), "{err:?}");
    assert_eq!(store.count().await.unwrap(), 2);
}

async fn listing_pages_in_title_order_with_the_total(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    for (n, title) in ["delta", "Alpha", "charlie", "Bravo", "echo"].into_iter().enumerate() {
        store.create(new_book(n as u32, title, "Someone", "")).await.unwrap();
    }
    let mut seen = Vec::new();
    for page in 1..=3 {
        let (books, total) = store.list(PageRequest::parse(page, 2).unwrap(), None).await.unwrap();
        assert_eq!(total, 5);
        assert!(books.len() <= 2);
        seen.extend(books.into_iter().map(|b| b.title));
    }
    assert_eq!(seen, ["Alpha", "Bravo", "charlie", "delta", "echo"], "case-insensitive title order");
    let (past_the_end, total) = store.list(PageRequest::parse(4, 2).unwrap(), None).await.unwrap();
    assert!(past_the_end.is_empty());
    assert_eq!(total, 5);
}

async fn listing_filters_by_author_ignoring_case(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    store.create(new_book(1, "Foundation", "Isaac Asimov", "")).await.unwrap();
    store.create(new_book(2, "I, Robot", "Isaac Asimov", "")).await.unwrap();
    store.create(new_book(3, "Dune", "Frank Herbert", "")).await.unwrap();
    let author = Author::parse("isaac ASIMOV").unwrap();
    let (books, total) = store.list(PageRequest::parse(1, 10).unwrap(), Some(&author)).await.unwrap();
    assert_eq!(total, 2);
    let titles: Vec<_> = books.iter().map(|b| b.title.as_str()).collect();
    assert_eq!(titles, ["Foundation", "I, Robot"]);
}

async fn search_ranks_title_matches_above_description_matches(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    store.create(new_book(1, "A Cookbook", "Chef", "Has a chapter on programming the oven.")).await.unwrap();
    store.create(new_book(2, "Programming Rust", "Jim Blandy", "Systems work in Rust.")).await.unwrap();
    store.create(new_book(3, "Gardening", "Green", "Nothing about code.")).await.unwrap();
    let (books, total) = store
        .search(&SearchQuery::parse("programming").unwrap(), PageRequest::parse(1, 10).unwrap())
        .await
        .unwrap();
    assert_eq!(total, 2);
    let titles: Vec<_> = books.iter().map(|b| b.title.as_str()).collect();
    assert_eq!(titles, ["Programming Rust", "A Cookbook"]);

    // Stemming: "programs" finds "programming" on both backends.
    let (books, _) = store
        .search(&SearchQuery::parse("programs").unwrap(), PageRequest::parse(1, 10).unwrap())
        .await
        .unwrap();
    assert_eq!(books.len(), 2);

    // Author matches count too.
    let (books, _) = store
        .search(&SearchQuery::parse("blandy").unwrap(), PageRequest::parse(1, 10).unwrap())
        .await
        .unwrap();
    assert_eq!(books[0].title, "Programming Rust");
}

async fn search_requires_every_word_and_follows_updates_and_deletes(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let page = PageRequest::parse(1, 10).unwrap();
    let dune =
        store.create(new_book(1, "Dune", "Frank Herbert", "A desert planet and its spice.")).await.unwrap();
    store
        .create(new_book(2, "Desert Solitaire", "Edward Abbey", "A season in the wilderness."))
        .await
        .unwrap();

    let (books, _) = store.search(&SearchQuery::parse("desert spice").unwrap(), page).await.unwrap();
    assert_eq!(books.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(), [dune.id.as_str()]);

    let patch = BookPatch { title: Some(Title::parse("Arrakis").unwrap()), ..Default::default() };
    store.update(&dune.id, patch).await.unwrap();
    let (_, total) = store.search(&SearchQuery::parse("dune").unwrap(), page).await.unwrap();
    assert_eq!(total, 0, "the old title is no longer indexed");
    let (books, _) = store.search(&SearchQuery::parse("arrakis").unwrap(), page).await.unwrap();
    assert_eq!(books.len(), 1);

    store.delete(&dune.id).await.unwrap();
    let (_, total) = store.search(&SearchQuery::parse("arrakis").unwrap(), page).await.unwrap();
    assert_eq!(total, 0, "a deleted book is not found");
}

async fn an_update_changes_only_the_given_fields(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let book = store.create(new_book(1, "Dune", "Frank Herbert", "Sand.")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let patch = BookPatch { price: Some(Money::parse(2599, "eur").unwrap()), ..Default::default() };
    let updated = store.update(&book.id, patch).await.unwrap();
    assert_eq!((updated.price_minor, updated.currency.as_str()), (2599, "EUR"));
    assert_eq!((updated.title.as_str(), updated.description.as_str()), ("Dune", "Sand."));
    assert_eq!(updated.stock, 10);
    assert!(updated.updated_at > book.updated_at);
    assert_eq!(updated.created_at, book.created_at);
    assert!(matches!(
        store
            .update("missing", BookPatch { title: Some(Title::parse("x").unwrap()), ..Default::default() })
            .await,
        Err(StoreError::NotFound(_))
    ));
}

async fn a_deleted_book_is_gone(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let book = store.create(new_book(1, "Dune", "Frank Herbert", "")).await.unwrap();
    store.delete(&book.id).await.unwrap();
    assert!(matches!(store.get(&book.id).await, Err(StoreError::NotFound(_))));
    assert!(matches!(store.delete(&book.id).await, Err(StoreError::NotFound(_))));
}

async fn stock_never_goes_negative_under_concurrent_removals(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let book = store.create(new_book(1, "Dune", "Frank Herbert", "")).await.unwrap();
    let tasks: Vec<_> = (0..30)
        .map(|_| {
            let store = store.clone();
            let id = book.id.clone();
            tokio::spawn(async move { store.adjust_stock(&id, -1).await })
        })
        .collect();
    let mut ok = 0;
    for task in tasks {
        match task.await.unwrap() {
            Ok(_) => ok += 1,
            Err(StoreError::InsufficientStock { available: 0, requested: 1 }) => {}
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(ok, 10, "exactly the 10 units on the shelf were removed");
    assert_eq!(store.get(&book.id).await.unwrap().stock, 0);
    assert_eq!(store.adjust_stock(&book.id, 5).await.unwrap().stock, 5);
    assert!(matches!(store.adjust_stock("missing", 1).await, Err(StoreError::NotFound(_))));
}

async fn the_seed_catalog_loads_once(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let added = bookstore_books::seed::seed_if_empty(&store).await.unwrap();
    assert!(added >= 50, "{added}");
    assert_eq!(bookstore_books::seed::seed_if_empty(&store).await.unwrap(), 0);
    assert_eq!(store.count().await.unwrap(), added as i64);
    let (books, _) =
        store.search(&SearchQuery::parse("dune").unwrap(), PageRequest::parse(1, 5).unwrap()).await.unwrap();
    assert_eq!(books[0].title, "Dune");
}

async fn a_cached_book_is_fresh_after_every_write(backend: Backend) {
    let Some((_db, store)) = store(backend).await else { return };
    let store = store.with_cache(std::time::Duration::from_secs(600), 100);
    let book = store.create(new_book(1, "Dune", "Frank Herbert", "")).await.unwrap();
    assert_eq!(store.get(&book.id).await.unwrap().title, "Dune");

    let patch = BookPatch { title: Some(Title::parse("Dune Messiah").unwrap()), ..Default::default() };
    store.update(&book.id, patch).await.unwrap();
    assert_eq!(store.get(&book.id).await.unwrap().title, "Dune Messiah", "an update evicts");

    store.adjust_stock(&book.id, -3).await.unwrap();
    assert_eq!(store.get(&book.id).await.unwrap().stock, 7, "a stock change evicts");

    store.delete(&book.id).await.unwrap();
    assert!(matches!(store.get(&book.id).await, Err(StoreError::NotFound(_))), "a delete evicts");
}
