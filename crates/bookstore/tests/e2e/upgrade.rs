//! An upgrade without downtime, for real: the previous release (release/previous, built by
//! .ci/previous-release.sh and named by `BOOKSTORE_TEST_PREVIOUS_RELEASE`) and this tree run
//! side by side over one set of databases and one bus, finding each other in etcd, as replicas
//! do while an orchestrator replaces them one at a time.
//!
//! 1. The previous release creates and migrates every database and serves the shop: one
//!    process with users, orders, fulfillment, recommendations and the gateway, and two books
//!    replicas.
//! 2. During steady checkouts through its gateway, each books replica in turn is stopped
//!    (SIGTERM) and replaced by one of this tree's, which takes traffic.
//! 3. This tree's users, orders and gateway start beside the previous release's process, over
//!    the databases it migrated (applying this tree's migrations, which only expand). Orders
//!    placed through the new gateway are placed by the new orders service, and their events are
//!    consumed by the previous release's fulfillment; an order through the old gateway still
//!    works against the expanded schema.
//!
//! Afterwards nothing is lost or doubled: every checkout key has exactly one order, the stock
//! adds up, and every order has exactly one fulfillment task.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bookstore_platform::db::Backend;
use bookstore_platform::testing::{EtcdNode, TestDatabase, required_or_skip};
use serde_json::json;

use crate::replicas::{books_calls, checkout};
use crate::{get_json, until};

const NEW: &str = env!("CARGO_BIN_EXE_bookstore");

/// A `bookstore serve` process of either release; killed when dropped.
struct Served {
    process: crate::Running,
    admin: String,
    gateway: Option<String>,
}

impl Served {
    /// Starts `binary serve <services>` with the test's configuration file and `flags`, and
    /// waits until it prints where it listens.
    async fn start(binary: &str, config: &std::path::Path, services: &[&str], flags: &[&str]) -> Self {
        let mut command = crate::clean_command(binary, "error");
        command.arg("serve").args(services).arg("--config").arg(config).args(flags);
        let mut wanted = vec!["admin    http://"];
        if services.contains(&"gateway") {
            wanted.push("gateway  http://");
        }
        let (process, found) = crate::spawn_listening(command, &wanted).await;
        let admin = found[0].clone();
        let gateway = found.get(1).map(|a| format!("http://{a}"));
        Self { process, admin, gateway }
    }

    fn gateway(&self) -> &str {
        self.gateway.as_deref().expect("a process serving the gateway")
    }
}

/// The test's configuration for every process of both releases: its databases, its bus (top
/// level keys in `bus`), the registry, port 0 everywhere; peers are named per process, by flags.
fn config_file(
    dir: &std::path::Path,
    registry: &str,
    dbs: &BTreeMap<&str, TestDatabase>,
    bus: &str,
) -> String {
    let mut toml = format!(
        "data_dir = {dir:?}\nmaster_key = {key:?}\nadmin_http = \"127.0.0.1:0\"\njwks_refresh_ms = 0\n\
         registry_url = {registry:?}\nejection_ms = 1000\n{bus}\n\
         [gateway]\nhttp = \"127.0.0.1:0\"\nrate_limit_requests = 0\n",
        dir = dir.display().to_string(),
        key = bookstore_platform::crypto::MasterKey::generate_base64(),
    );
    for (service, db) in dbs {
        toml.push_str(&format!("[{service}]\ngrpc = \"127.0.0.1:0\"\ndatabase_url = {:?}\n", db.url));
        if *service == "users" {
            toml.push_str(&format!(
                "admin_password = {:?}\nregistrations_per_address = 0\n",
                crate::ADMIN_PASSWORD
            ));
        }
    }
    toml
}

bookstore_platform::backend_tests!(
    the_previous_release_and_this_one_run_side_by_side_and_a_rolling_upgrade_loses_no_order
);

async fn the_previous_release_and_this_one_run_side_by_side_and_a_rolling_upgrade_loses_no_order(
    backend: Backend,
) {
    let Some(previous) = required_or_skip(
        "BOOKSTORE_TEST_PREVIOUS_RELEASE",
        "previous release",
        "upgrade tests (.ci/previous-release.sh builds it)",
    ) else {
        return;
    };
    let Some(etcd) = EtcdNode::start_or_skip().await else { return };
    let mut dbs = BTreeMap::new();
    for service in ["books", "users", "orders", "fulfillment", "recommendations"] {
        let Some(db) = TestDatabase::new(backend).await else { return };
        dbs.insert(service, db);
    }
    // SQLite: the embedded event log in the data folder, shared by every process. PostgreSQL:
    // the real broker, with exchanges and queues of this test's own.
    let namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
    let amqp = match backend {
        Backend::Postgres => {
            let Some(url) = bookstore_platform::testing::amqp_url_or_skip() else { return };
            Some(url)
        }
        Backend::Sqlite => None,
    };
    let bus = amqp
        .as_ref()
        .map(|url| format!("amqp_url = {url:?}\namqp_namespace = {namespace:?}"))
        .unwrap_or_default();
    let _drop_namespace = amqp.map(|url| crate::RabbitNamespace { url, namespace: namespace.clone() });
    let dir = tempfile::tempdir().unwrap();
    let registry = etcd.url();
    let config = dir.path().join("bookstore.toml");
    std::fs::File::create(&config)
        .unwrap()
        .write_all(config_file(dir.path(), &registry, &dbs, &bus).as_bytes())
        .unwrap();
    let peer = |service: &str| format!("{registry}/{service}");
    let (users_url, books_url) = (peer("users"), peer("books"));
    let books_flags = ["--users-url", users_url.as_str()];
    let http = reqwest::Client::new();

    // 1. The previous release alone: it creates and migrates every database.
    let old = Served::start(
        &previous,
        &config,
        &["users", "orders", "fulfillment", "recommendations", "gateway"],
        &["--books-url", &books_url],
    )
    .await;
    let mut books = vec![
        Served::start(&previous, &config, &["books"], &books_flags).await,
        Served::start(&previous, &config, &["books"], &books_flags).await,
    ];
    let base = old.gateway().to_owned();
    let admin = crate::login(&http, &base, "admin", crate::ADMIN_PASSWORD).await;
    let gateway_finds_books = |base: String| {
        let http = http.clone();
        async move {
            http.get(format!("{base}/api/v1/books?limit=1")).send().await.is_ok_and(|r| r.status() == 200)
        }
    };
    until("the gateway to find books in etcd", Duration::from_secs(30), || gateway_finds_books(base.clone()))
        .await;
    let mut body = crate::book_json(1, "Upgraded Under Load");
    body["stock"] = json!(1000);
    let book = crate::post_json(&http, &format!("{base}/api/v1/books"), &admin, &body).await;
    let book = book["id"].as_str().unwrap().to_owned();

    // 2. Steady checkouts through the previous release's gateway while each books replica in
    //    turn is replaced by this tree's.
    let stop = Arc::new(AtomicBool::new(false));
    let started = Arc::new(AtomicUsize::new(0));
    let placed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (http, base, admin, book, placed, started, stop) = (
                http.clone(),
                base.clone(),
                admin.clone(),
                book.clone(),
                placed.clone(),
                started.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut n = w;
                while !stop.load(Ordering::Relaxed) {
                    started.fetch_add(1, Ordering::Relaxed);
                    let key = format!("rolling-{n}");
                    let id = checkout(&http, &base, &admin, &book, &key).await;
                    placed.lock().unwrap().push((key, id));
                    n += 4;
                }
            })
        })
        .collect();
    for replica in &mut books {
        let before = started.load(Ordering::Relaxed);
        until("checkouts to go on", Duration::from_secs(60), || async {
            started.load(Ordering::Relaxed) >= before + 10
        })
        .await;
        replica.process.terminate();
        *replica = Served::start(NEW, &config, &["books"], &books_flags).await;
        let admin_addr = replica.admin.clone();
        until("this tree's books replica to take checkouts", Duration::from_secs(60), || async {
            books_calls(&http, &admin_addr).await >= 20.0
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let mut placed = placed.lock().unwrap().clone();

    // 3. This tree's users, orders and gateway beside the previous release's process, over the
    //    databases it migrated. Its orders are placed by the new orders service (a peer in this
    //    process is called in process); the previous release's fulfillment consumes them.
    let fulfillment_url = peer("fulfillment");
    let recommendations_url = peer("recommendations");
    let new = Served::start(
        NEW,
        &config,
        &["users", "orders", "gateway"],
        &[
            "--books-url",
            &books_url,
            "--fulfillment-url",
            &fulfillment_url,
            "--recommendations-url",
            &recommendations_url,
        ],
    )
    .await;
    let new_base = new.gateway().to_owned();
    let new_admin = crate::login(&http, &new_base, "admin", crate::ADMIN_PASSWORD).await;
    until("the new gateway to find books in etcd", Duration::from_secs(30), || {
        gateway_finds_books(new_base.clone())
    })
    .await;
    for n in 0..10 {
        let key = format!("new-{n}");
        let id = checkout(&http, &new_base, &new_admin, &book, &key).await;
        placed.push((key, id));
    }
    // The previous release still takes orders over the expanded schema.
    placed.push(("old-after".into(), checkout(&http, &base, &admin, &book, "old-after").await));

    // Every key has exactly one order, and the shop holds no other.
    let mut keys: Vec<&str> = placed.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), placed.len(), "a key answered twice");
    let mut ids: Vec<&str> = placed.iter().map(|(_, id)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), placed.len(), "two keys got one order");
    let page = get_json(&http, &format!("{new_base}/api/v1/orders?limit=1"), &new_admin).await;
    assert_eq!(page["total"].as_u64(), Some(placed.len() as u64), "no order lost, none duplicated: {page}");
    eprintln!("{} orders across the upgrade", placed.len());

    // The stock adds up once every reservation is settled.
    let book_url = format!("{new_base}/api/v1/books/{book}");
    until("every reservation to be settled", Duration::from_secs(60), || async {
        get_json(&http, &book_url, &new_admin).await["reserved"].as_i64() == Some(0)
    })
    .await;
    let b = get_json(&http, &book_url, &new_admin).await;
    assert_eq!(b["sold"].as_u64(), Some(placed.len() as u64), "sold is what the orders took: {b}");
    assert_eq!(b["stock"].as_i64().unwrap() + b["sold"].as_i64().unwrap(), 1000);

    // Every order, placed by either release, reached the previous release's fulfillment once.
    let queue_url = format!("{new_base}/api/v1/fulfillment/queue");
    until("a fulfillment task for every order", Duration::from_secs(60), || async {
        get_json(&http, &queue_url, &new_admin).await["tasks"].as_array().map(Vec::len) == Some(placed.len())
    })
    .await;
    let queue = get_json(&http, &queue_url, &new_admin).await;
    let mut tasks: Vec<&str> =
        queue["tasks"].as_array().unwrap().iter().map(|t| t["order_id"].as_str().unwrap()).collect();
    tasks.sort_unstable();
    assert_eq!(tasks, ids, "one task per order, none twice");

    // This tree's additions work over the migrated databases: its admin actions are audited.
    let body = crate::book_json(2, "Audited After The Upgrade");
    crate::post_json(&http, &format!("{new_base}/api/v1/books"), &new_admin, &body).await;
    let audit = get_json(&http, &format!("{new_base}/api/v1/audit"), &new_admin).await;
    let actions: Vec<&str> =
        audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    let count = |action: &str| actions.iter().filter(|a| **a == action).count();
    assert_eq!((count("POST /api/v1/books"), count("POST /api/v1/orders")), (1, 10), "{audit}");
    drop((new, books, old));
}
