//! Backup and restore: a backup taken while the shop serves gives back every order after its
//! databases are lost; a backup that changed, one sealed with another master key, and a restore
//! over databases in use are refused before anything is written.

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use bookstore_platform::testing::TestDatabase;

use crate::{System, admin_buys_the_first_book, get_json};

backend_tests!(
    a_restore_after_the_databases_are_lost_gives_back_every_order,
    a_changed_backup_another_master_key_or_databases_in_use_are_refused,
);

async fn a_restore_after_the_databases_are_lost_gives_back_every_order(backend: Backend) {
    let Some(sys) = System::start(backend, true).await else { return };
    let order = admin_buys_the_first_book(&sys).await;
    let id = order["id"].as_str().unwrap().to_owned();
    let catalog = get_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin).await;
    let folder = tempfile::tempdir().unwrap();
    let to = folder.path().join("backup");
    // Online: the shop keeps serving while it is copied.
    let manifest = bookstore::backup::backup(&sys.config, &to).await.unwrap();
    let mut names: Vec<&str> = manifest.databases.iter().map(|d| d.name.as_str()).collect();
    names.sort();
    let mut expected = vec!["books", "fulfillment", "orders", "recommendations", "users"];
    if backend == Backend::Sqlite {
        expected.insert(1, "events");
    }
    assert_eq!(names, expected, "every database, and the event log when it is the bus");
    let key = sys.config.process.master_key.clone().unwrap();
    for entry in std::fs::read_dir(&to).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        assert!(
            !bytes.windows(key.len()).any(|w| w == key.as_bytes()),
            "the master key is never in a backup"
        );
    }

    // The disaster: the system and every database of it are gone.
    drop(sys);
    let fresh = [
        TestDatabase::new(backend).await.unwrap(),
        TestDatabase::new(backend).await.unwrap(),
        TestDatabase::new(backend).await.unwrap(),
        TestDatabase::new(backend).await.unwrap(),
        TestDatabase::new(backend).await.unwrap(),
    ];
    let data_dir = tempfile::tempdir().unwrap();
    let point = |c: &mut bookstore::Config| {
        let [books, users, orders, fulfillment, recommendations] = &fresh;
        c.books.database_url = Some(books.url.clone());
        c.users.database_url = Some(users.url.clone());
        c.orders.database_url = Some(orders.url.clone());
        c.fulfillment.database_url = Some(fulfillment.url.clone());
        c.recommendations.database_url = Some(recommendations.url.clone());
        c.process.data_dir = data_dir.path().to_owned();
        c.process.master_key = Some(key.clone());
    };
    let mut config = bookstore::Config::default();
    point(&mut config);
    if backend == Backend::Postgres {
        config.process.amqp_url = bookstore_platform::testing::amqp_url_or_skip();
    }
    let lines = bookstore::backup::restore(&config, &to).await.unwrap();
    assert_eq!(lines.len(), expected.len(), "{lines:?}");

    let restored = System::start_with(backend, false, point).await.unwrap();
    let again =
        get_json(&restored.http, &restored.url(&format!("/api/v1/orders/{id}")), &restored.admin).await;
    assert_eq!(again["id"], id.as_str(), "{again}");
    assert_eq!(again["total"], order["total"], "{again}");
    assert_eq!(again["status"], order["status"], "{again}");
    let books = get_json(&restored.http, &restored.url("/api/v1/books"), &restored.admin).await;
    assert_eq!(books["items"], catalog["items"], "the catalog, stock included");
}

async fn a_changed_backup_another_master_key_or_databases_in_use_are_refused(backend: Backend) {
    let Some(sys) = System::start(backend, true).await else { return };
    let folder = tempfile::tempdir().unwrap();
    let to = folder.path().join("backup");
    let manifest = bookstore::backup::backup(&sys.config, &to).await.unwrap();
    assert!(bookstore::backup::verify(&sys.config, &to).is_ok());
    let books_before = get_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin).await;

    let refused = bookstore::backup::restore(&sys.config, &to).await.unwrap_err();
    assert!(format!("{refused:#}").contains("not empty"), "{refused:#}");
    let books_after = get_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin).await;
    assert_eq!(books_before, books_after, "nothing was written");

    // A file changed after the backup.
    let file = to.join(&manifest.databases[0].file);
    let original = std::fs::read(&file).unwrap();
    let mut changed = original.clone();
    let middle = changed.len() / 2;
    changed[middle] ^= 1;
    std::fs::write(&file, &changed).unwrap();
    let refused = bookstore::backup::verify(&sys.config, &to).unwrap_err();
    assert!(format!("{refused:#}").contains("does not match the manifest"), "{refused:#}");
    std::fs::write(&file, &original).unwrap();

    // The manifest changed (its checksums could be made to fit; its seal cannot, without the key).
    let manifest_path = to.join("manifest.json");
    let text = std::fs::read_to_string(&manifest_path).unwrap();
    std::fs::write(&manifest_path, text.replacen("\"format\": 1", "\"format\": 1 ", 1)).unwrap();
    let refused = bookstore::backup::verify(&sys.config, &to).unwrap_err();
    assert!(format!("{refused:#}").contains("does not match its seal"), "{refused:#}");
    std::fs::write(&manifest_path, &text).unwrap();

    // Another master key opens nothing it holds.
    let mut other = sys.config.clone();
    other.process.master_key = Some(bookstore_platform::crypto::MasterKey::generate_base64());
    let refused = bookstore::backup::verify(&other, &to).unwrap_err();
    assert!(format!("{refused:#}").contains("sealed with master key"), "{refused:#}");

    // A folder that holds something already is not written over.
    let refused = bookstore::backup::backup(&sys.config, &to).await.unwrap_err();
    assert!(format!("{refused:#}").contains("not empty"), "{refused:#}");
}
