//! Many replicas: two real `bookstore serve books` processes over one database, behind a
//! gateway that knows both from a static list. One is killed (SIGKILL, no goodbye) during steady
//! reads, then started again on its address.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bookstore::{App, Config};
use bookstore_platform::db::Backend;
use bookstore_platform::service::Mode;
use bookstore_platform::testing::TestDatabase;

use crate::until;

const BIN: &str = env!("CARGO_BIN_EXE_bookstore");

/// A books process; killed when dropped.
struct Replica {
    process: crate::Running,
    grpc: String,
    admin: String,
}

impl Replica {
    /// Kills it outright (SIGKILL), like a crashed host, and waits for it to be gone.
    fn kill(&mut self) {
        self.process.kill();
    }

    /// Stops it the way an orchestrator does (SIGTERM), and waits for it to exit.
    fn terminate(&mut self) {
        self.process.terminate();
    }
}

/// Starts `bookstore serve books` (with `extra` flags) on `grpc` (`127.0.0.1:0` for any port) over `database_url`.
async fn start_books(database_url: &str, users_url: &str, grpc: &str, seed: bool, extra: &[&str]) -> Replica {
    let mut command = crate::clean_command(BIN, "error");
    command.args(["serve", "books", "--books-grpc", grpc, "--admin-http", "127.0.0.1:0"]).args([
        "--books-database-url",
        database_url,
        "--users-url",
        users_url,
    ]);
    if seed {
        command.arg("--seed");
    }
    command.args(extra);
    let (process, found) =
        crate::spawn_listening(command, &["books    gRPC on http://", "admin    http://"]).await;
    let [grpc, admin] = <[String; 2]>::try_from(found).unwrap();
    Replica { process, grpc, admin }
}

/// Calls `books` has answered (`grpc_server_requests_total`), from its `/metrics`.
async fn served(http: &reqwest::Client, replica: &Replica) -> f64 {
    books_calls(http, &replica.admin).await
}

/// Calls `books` has answered in the process whose admin listener is `admin`.
pub async fn books_calls(http: &reqwest::Client, admin: &str) -> f64 {
    let Ok(response) = http.get(format!("http://{admin}/metrics")).send().await else { return 0.0 };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("grpc_server_requests_total{") && l.contains("service=\"books\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What every test here starts from: users in-process on port 0 (books' processes need its
/// address to verify tokens), fresh storage, and a configuration on port 0 everywhere that the
/// test adds its books URL to.
struct Base {
    config: Config,
    users: App,
    users_url: String,
    books_db: TestDatabase,
    _users_db: TestDatabase,
    _data_dir: tempfile::TempDir,
}

impl Base {
    async fn start(backend: Backend) -> Option<Self> {
        let books_db = TestDatabase::new(backend).await?;
        let users_db = TestDatabase::new(backend).await?;
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = quiet_config(data_dir.path());
        config.users.database_url = Some(users_db.url.clone());
        config.process.master_key = Some(bookstore_platform::crypto::MasterKey::generate_base64());
        config.users.admin_password = Some(crate::ADMIN_PASSWORD.into());
        let users = App::start(&["users"], &config, Mode::Serve).await.unwrap();
        let users_url = format!("http://{}", users.addr("users").unwrap());
        config.users.url = Some(users_url.clone());
        Some(Self { config, users, users_url, books_db, _users_db: users_db, _data_dir: data_dir })
    }

    /// Another books process over the same database.
    async fn books(&self, grpc: &str, seed: bool, extra: &[&str]) -> Replica {
        start_books(&self.books_db.url, &self.users_url, grpc, seed, extra).await
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        self.users.shutdown_token().cancel();
    }
}

/// Port 0 for every listener, data in `dir`, and no rate limit: readers here go as fast as they
/// can, and 6,000 reads a minute would turn a slow moment into a flood of 429s.
fn quiet_config(dir: &std::path::Path) -> Config {
    let port0: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = Config::default();
    config.process.admin_http = port0;
    config.process.data_dir = dir.to_owned();
    config.gateway.http = port0;
    config.users.grpc = port0;
    config.orders.grpc = port0;
    config.fulfillment.grpc = port0;
    config.recommendations.grpc = port0;
    config.gateway.rate_limit_requests = 0;
    config
}

bookstore_platform::backend_tests!(
    reads_survive_a_books_replica_killed_mid_run_and_it_wins_traffic_back_when_restarted
);

async fn reads_survive_a_books_replica_killed_mid_run_and_it_wins_traffic_back_when_restarted(
    backend: Backend,
) {
    let Some(world) = Base::start(backend).await else { return };
    let mut config = world.config.clone();
    // A replica back from the dead is tried again within a second (the default is ten).
    config.process.ejection_ms = 1000;
    let first = world.books("127.0.0.1:0", true, &[]).await;
    // Restarted on the same address later: a port no outgoing connection can take meanwhile.
    let mut second = world
        .books(&format!("127.0.0.1:{}", bookstore_platform::testing::restartable_port()), false, &[])
        .await;
    config.books.url = Some(format!("http://{},http://{}", first.grpc, second.grpc));
    let gateway = App::start(&["gateway"], &config, Mode::Serve).await.unwrap();
    let base = format!("http://{}", gateway.addr("gateway").unwrap());
    let admin = format!("http://{}", gateway.admin_addr);
    let http = reqwest::Client::new();
    let page: serde_json::Value =
        http.get(format!("{base}/api/v1/books?limit=20")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<String> =
        page["items"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_owned()).collect();
    assert!(!ids.is_empty(), "seeded catalog: {page}");

    // Steady reads, each recorded with when it finished and whether it succeeded.
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|n| {
            let (http, base, ids, stop) = (http.clone(), base.clone(), ids.clone(), stop.clone());
            tokio::spawn(async move {
                let mut results = Vec::new();
                let mut i = n;
                while !stop.load(Ordering::Relaxed) {
                    let path = if i % 2 == 0 {
                        format!("/api/v1/books/{}", ids[i % ids.len()])
                    } else {
                        "/api/v1/books?limit=5".to_owned()
                    };
                    let ok = match http.get(format!("{base}{path}")).send().await {
                        Ok(r) => r.status() == 200 && r.headers().get("x-degraded").is_none(),
                        Err(_) => false,
                    };
                    results.push((Instant::now(), ok));
                    i += 1;
                }
                results
            })
        })
        .collect();

    until("both replicas to serve reads", Duration::from_secs(30), || async {
        served(&http, &first).await >= 20.0 && served(&http, &second).await >= 20.0
    })
    .await;

    second.kill();
    let killed = Instant::now();
    let second_addr = second.grpc.clone();
    until("the killed replica's breaker to open", Duration::from_secs(30), || async {
        let status: serde_json::Value =
            http.get(format!("{admin}/status")).send().await.unwrap().json().await.unwrap();
        status["peers"].as_array().unwrap().iter().filter(|p| p["peer"] == "books").any(|p| {
            p["endpoints"].as_array().unwrap().iter().any(|e| {
                e["url"] == format!("http://{second_addr}")
                    && e["breaker"] != "closed"
                    && e["ejected"] == true
            })
        })
    })
    .await;
    let served_by_first = served(&http, &first).await;
    until("reads to go on after the kill", Duration::from_secs(30), || async {
        served(&http, &first).await >= served_by_first + 200.0
    })
    .await;

    second = world.books(&second_addr, false, &[]).await;
    until("the restarted replica to get traffic again", Duration::from_secs(30), || async {
        served(&http, &second).await >= 20.0
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let mut results = Vec::new();
    for reader in readers {
        results.extend(reader.await.unwrap());
    }
    let failed = results.iter().filter(|(_, ok)| !ok).count();
    let late = results.iter().filter(|(at, ok)| !ok && *at > killed + Duration::from_secs(1)).count();
    eprintln!("{} reads, {failed} failed, {late} more than a second after the kill", results.len());
    // At least the 200 the wait above saw after the kill, so the share below means something.
    assert!(results.len() >= 200, "{} reads", results.len());
    assert!(failed * 100 < results.len(), "{failed} of {} reads failed", results.len());
    assert_eq!(late, 0, "reads failed more than a second after the kill");
    gateway.shutdown_token().cancel();
}

bookstore_platform::backend_tests!(
    replicas_found_in_etcd_keep_serving_through_an_etcd_outage_and_a_graceful_stop
);

/// Steady reads through a gateway that finds books in etcd: etcd stopped mid-run changes
/// nothing; a replica started meanwhile registers once etcd is back and gets traffic; a replica
/// stopped with SIGTERM deregisters first, and no read fails on the way.
async fn replicas_found_in_etcd_keep_serving_through_an_etcd_outage_and_a_graceful_stop(backend: Backend) {
    let Some(mut etcd) = bookstore_platform::testing::EtcdNode::start_or_skip().await else { return };
    let Some(world) = Base::start(backend).await else { return };
    let mut config = world.config.clone();
    let registry = etcd.url();
    let register = ["--registry-url", registry.as_str()];
    let mut first = world.books("127.0.0.1:0", true, &register).await;
    config.books.url = Some(format!("{registry}/books"));
    let gateway = App::start(&["gateway"], &config, Mode::Serve).await.unwrap();
    let base = format!("http://{}", gateway.addr("gateway").unwrap());
    let http = reqwest::Client::new();
    until("the gateway to find the first replica", Duration::from_secs(30), || async {
        http.get(format!("{base}/api/v1/books?limit=1")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (http, base, stop) = (http.clone(), base.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut total, mut failed) = (0, 0);
                while !stop.load(Ordering::Relaxed) {
                    let ok = http
                        .get(format!("{base}/api/v1/books?limit=5"))
                        .send()
                        .await
                        .is_ok_and(|r| r.status() == 200 && r.headers().get("x-degraded").is_none());
                    total += 1;
                    failed += usize::from(!ok);
                }
                (total, failed)
            })
        })
        .collect();

    etcd.stop();
    let before = served(&http, &first).await;
    until("reads to go on with etcd down", Duration::from_secs(30), || async {
        served(&http, &first).await >= before + 100.0
    })
    .await;
    let second = world.books("127.0.0.1:0", false, &register).await;
    etcd.start().await.unwrap();
    until("the replica registered during the outage to get traffic", Duration::from_secs(30), || async {
        served(&http, &second).await >= 20.0
    })
    .await;

    first.terminate();
    let before = served(&http, &second).await;
    until("reads to go on after the graceful stop", Duration::from_secs(30), || async {
        served(&http, &second).await >= before + 100.0
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    let (mut total, mut failed) = (0, 0);
    for reader in readers {
        let (t, f) = reader.await.unwrap();
        total += t;
        failed += f;
    }
    eprintln!("{total} reads, {failed} failed");
    assert!(total > 200, "{total} reads");
    assert_eq!(failed, 0, "{failed} of {total} reads failed");
    gateway.shutdown_token().cancel();
}

bookstore_platform::backend_tests!(
    a_books_replica_killed_during_checkouts_loses_no_order_and_duplicates_none
);

/// Checkouts through two books replicas, one killed (SIGKILL) mid-run. Each checkout carries an
/// idempotency key and the client tries again on a 5xx, as a careful client does. Afterwards:
/// every key that got 201 has exactly one order, no key got two, and once the sweeper has
/// settled what the kill interrupted, the stock adds up: sold is exactly what the orders took.
async fn a_books_replica_killed_during_checkouts_loses_no_order_and_duplicates_none(backend: Backend) {
    use serde_json::{Value, json};
    let Some(world) = Base::start(backend).await else { return };
    let Some(orders_db) = TestDatabase::new(backend).await else { return };
    let mut config = world.config.clone();
    config.process.ejection_ms = 1000;
    config.orders.database_url = Some(orders_db.url.clone());
    let first = world.books("127.0.0.1:0", false, &[]).await;
    let mut second = world.books("127.0.0.1:0", false, &[]).await;
    config.books.url = Some(format!("http://{},http://{}", first.grpc, second.grpc));
    let http = reqwest::Client::new();

    // Orders runs apart from users here, so it signs in with a service account of its own.
    let setup = App::start(&["gateway"], &config, Mode::Serve).await.unwrap();
    let setup_base = format!("http://{}", setup.addr("gateway").unwrap());
    let admin = crate::login(&http, &setup_base, "admin", crate::ADMIN_PASSWORD).await;
    let url = format!("{setup_base}/api/v1/service-accounts");
    let account = crate::post_json(
        &http,
        &url,
        &admin,
        &json!({"name": "orders", "scopes": ["books:read", "books:reserve"]}),
    )
    .await;
    setup.shutdown_token().cancel();
    config.orders.client_id = Some(account["client_id"].as_str().unwrap().to_owned());
    config.orders.client_secret = Some(account["client_secret"].as_str().unwrap().to_owned());
    let shop = App::start(&["orders", "gateway"], &config, Mode::Serve).await.unwrap();
    let base = format!("http://{}", shop.addr("gateway").unwrap());

    let mut body = crate::book_json(1, "Killed Replica Book");
    body["stock"] = json!(1000);
    let book = crate::post_json(&http, &format!("{base}/api/v1/books"), &admin, &body).await;
    let book = book["id"].as_str().unwrap().to_owned();

    // Steady checkouts, each retried with its key until it is answered.
    let checkouts = 300;
    let placed = Arc::new(std::sync::Mutex::new(Vec::new()));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (http, base, admin, book, placed, started) =
                (http.clone(), base.clone(), admin.clone(), book.clone(), placed.clone(), started.clone());
            tokio::spawn(async move {
                for n in (w..checkouts).step_by(6) {
                    started.fetch_add(1, Ordering::Relaxed);
                    let key = format!("checkout-{n}");
                    let id = checkout(&http, &base, &admin, &book, &key).await;
                    placed.lock().unwrap().push((key, id));
                }
            })
        })
        .collect();

    until("a third of the checkouts to start", Duration::from_secs(60), || async {
        started.load(Ordering::Relaxed) >= checkouts / 3
    })
    .await;
    second.kill();
    for worker in workers {
        worker.await.unwrap();
    }

    let placed = placed.lock().unwrap().clone();
    assert_eq!(placed.len(), checkouts, "every checkout got its order");
    let mut keys: Vec<&str> = placed.iter().map(|(k, _)| k.as_str()).collect();
    keys.sort_unstable();
    keys.dedup();
    assert_eq!(keys.len(), checkouts);
    // One order per key: the shop holds exactly as many orders as keys, and each key's answer
    // named the same order every time it was asked.
    let page: Value = http
        .get(format!("{base}/api/v1/orders?limit=100"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page["total"].as_i64().unwrap(), checkouts as i64, "no order lost, none duplicated");
    // The sweeper settles what the kill interrupted; then the stock adds up exactly.
    until("every reservation to be settled", Duration::from_secs(60), || async {
        let b: Value =
            http.get(format!("{base}/api/v1/books/{book}")).send().await.unwrap().json().await.unwrap();
        b["reserved"].as_i64() == Some(0)
    })
    .await;
    let b: Value =
        http.get(format!("{base}/api/v1/books/{book}")).send().await.unwrap().json().await.unwrap();
    assert_eq!(b["sold"].as_i64().unwrap(), checkouts as i64, "sold is exactly what the orders took: {b}");
    assert_eq!(b["stock"].as_i64().unwrap() + b["sold"].as_i64().unwrap(), 1000);
    shop.shutdown_token().cancel();
    drop(first);
}

/// One checkout of `book` with idempotency key `key`, asked again with the same key until it is
/// answered, as a careful client does: after a 5xx or a dropped connection, and while another
/// attempt with the key is still running. Returns the order's id; panics on any other answer.
pub async fn checkout(http: &reqwest::Client, base: &str, token: &str, book: &str, key: &str) -> String {
    use serde_json::{Value, json};
    for _ in 0..40 {
        let answer = http
            .post(format!("{base}/api/v1/orders"))
            .bearer_auth(token)
            .header("idempotency-key", key)
            .json(&json!({"lines": [{"book_id": book, "quantity": 1}], "shipping_address": crate::shipping_address()}))
            .send()
            .await;
        let Ok(answer) = answer else { continue };
        let status = answer.status().as_u16();
        let body: Value = answer.json().await.unwrap_or(Value::Null);
        match status {
            201 | 200 => return body["id"].as_str().unwrap().to_owned(),
            // Another attempt with this key is still running: ask again.
            409 if body["code"] == "ABORTED"
                || body["message"].as_str().is_some_and(|m| m.contains("in progress")) =>
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            s if s >= 500 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("checkout {key}: unexpected {other}: {body}"),
        }
    }
    panic!("checkout {key} never got an answer")
}

/// A TCP proxy to `upstream` that holds each chunk the upstream sends for `delay` before
/// passing it on (a replica slowed by the network or a noisy neighbour); counts connections.
async fn slow_proxy(upstream: String, delay: Duration) -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            let upstream = upstream.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                let (mut client_read, mut client_write) = client.into_split();
                let (mut server_read, mut server_write) = server.into_split();
                let up =
                    tokio::spawn(async move { tokio::io::copy(&mut client_read, &mut server_write).await });
                let mut buf = vec![0u8; 64 * 1024];
                while let Ok(n) = server_read.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    tokio::time::sleep(delay).await;
                    if client_write.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    (addr, connections)
}

bookstore_platform::backend_tests!(a_books_replica_slowed_by_200ms_gets_under_a_tenth_of_the_reads);

async fn a_books_replica_slowed_by_200ms_gets_under_a_tenth_of_the_reads(backend: Backend) {
    let Some(world) = Base::start(backend).await else { return };
    let mut config = world.config.clone();
    let fast = world.books("127.0.0.1:0", true, &[]).await;
    let slow = world.books("127.0.0.1:0", false, &[]).await;
    let (slowed, _) = slow_proxy(slow.grpc.clone(), Duration::from_millis(200)).await;
    config.books.url = Some(format!("http://{},http://{slowed}", fast.grpc));
    let gateway = App::start(&["gateway"], &config, Mode::Serve).await.unwrap();
    let base = format!("http://{}", gateway.addr("gateway").unwrap());
    let http = reqwest::Client::new();
    let page: serde_json::Value =
        http.get(format!("{base}/api/v1/books?limit=20")).send().await.unwrap().json().await.unwrap();
    let ids: Vec<String> =
        page["items"].as_array().unwrap().iter().map(|b| b["id"].as_str().unwrap().to_owned()).collect();

    let (fast_before, slow_before) = (served(&http, &fast).await, served(&http, &slow).await);
    let reads = 300;
    // Four readers, as a page's worth of visitors would be.
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let (http, base, ids) = (http.clone(), base.clone(), ids.clone());
            tokio::spawn(async move {
                for n in (r..reads).step_by(4) {
                    let answer =
                        http.get(format!("{base}/api/v1/books/{}", ids[n % ids.len()])).send().await.unwrap();
                    assert_eq!(answer.status(), 200);
                }
            })
        })
        .collect();
    for reader in readers {
        reader.await.unwrap();
    }
    let fast_reads = served(&http, &fast).await - fast_before;
    let slow_reads = served(&http, &slow).await - slow_before;
    eprintln!("fast replica {fast_reads}, slowed replica {slow_reads}");
    assert!(fast_reads + slow_reads >= reads as f64, "every read reached books");
    assert!(
        slow_reads < 0.1 * (fast_reads + slow_reads),
        "the slowed replica took {slow_reads} of {}",
        fast_reads + slow_reads
    );
    gateway.shutdown_token().cancel();
}

/// A books stand-in that answers every call UNAVAILABLE (a replica whose database is gone) and
/// counts the calls that reached it.
async fn failing_books() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let app = axum::Router::new().fallback(move || {
        let counted = counted.clone();
        async move {
            counted.fetch_add(1, Ordering::Relaxed);
            tonic::Status::unavailable("stand-in: my database is gone").into_http::<axum::body::Body>()
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_books_replica_failing_calls_stay_within_a_fifth_over_the_requests() {
    let (a, a_calls) = failing_books().await;
    let (b, b_calls) = failing_books().await;
    let data_dir = tempfile::tempdir().unwrap();
    let mut config = quiet_config(data_dir.path());
    config.books.url = Some(format!("http://{a},http://{b}"));
    let gateway = App::start(&["gateway"], &config, Mode::Serve).await.unwrap();
    let base = format!("http://{}", gateway.addr("gateway").unwrap());
    let admin = format!("http://{}", gateway.admin_addr);
    let http = reqwest::Client::new();
    let requests = 500;
    for n in 0..requests {
        let answer = http.get(format!("{base}/api/v1/books/book-{n}")).send().await.unwrap();
        assert_eq!(answer.status(), 503, "an honest 503, not a hang or a 500");
        assert!(answer.headers().contains_key("retry-after"));
    }
    let reached = a_calls.load(Ordering::Relaxed) + b_calls.load(Ordering::Relaxed);
    eprintln!("{requests} requests, {reached} calls reached books");
    assert!(reached as f64 <= 1.2 * requests as f64, "{reached} calls for {requests} requests");
    let status: serde_json::Value =
        http.get(format!("{admin}/status")).send().await.unwrap().json().await.unwrap();
    let books = status["peers"].as_array().unwrap().iter().find(|p| p["peer"] == "books").unwrap();
    let ejected = books["endpoints"].as_array().unwrap().iter().filter(|e| e["ejected"] == true).count();
    assert!(ejected <= 1, "never more than half the set is ejected: {books}");
    gateway.shutdown_token().cancel();
}

bookstore_platform::backend_tests!(with_books_down_reads_are_served_stale_and_checkouts_fail_fast_with_503);

/// Degrade, don't fail: with its only books replica killed, the gateway answers a catalog read
/// it has answered before from its last good copy, marked `X-Degraded: stale`; one it has not
/// seen is an honest 503 with `Retry-After`, and so is a checkout.
async fn with_books_down_reads_are_served_stale_and_checkouts_fail_fast_with_503(backend: Backend) {
    let Some(world) = Base::start(backend).await else { return };
    let Some(orders_db) = TestDatabase::new(backend).await else { return };
    let mut config = world.config.clone();
    let mut books = world.books("127.0.0.1:0", true, &[]).await;
    config.books.url = Some(format!("http://{}", books.grpc));
    config.orders.database_url = Some(orders_db.url.clone());
    config.users.url = None;
    // Orders and users in the gateway's process: orders gets its token in-process.
    config.users.grpc = "127.0.0.1:0".parse().unwrap();
    let shop = App::start(&["users", "orders", "gateway"], &config, Mode::Serve).await.unwrap();
    let base = format!("http://{}", shop.addr("gateway").unwrap());
    let http = reqwest::Client::new();
    let page: serde_json::Value =
        http.get(format!("{base}/api/v1/books?limit=2")).send().await.unwrap().json().await.unwrap();
    let (seen, unseen) = (page["items"][0]["id"].as_str().unwrap(), page["items"][1]["id"].as_str().unwrap());
    let fresh: serde_json::Value =
        http.get(format!("{base}/api/v1/books/{seen}")).send().await.unwrap().json().await.unwrap();

    books.kill();
    let stale = http.get(format!("{base}/api/v1/books/{seen}")).send().await.unwrap();
    assert_eq!(stale.status(), 200);
    assert_eq!(stale.headers()["x-degraded"], "stale");
    assert_eq!(stale.json::<serde_json::Value>().await.unwrap(), fresh, "the last good copy");
    let list = http.get(format!("{base}/api/v1/books?limit=2")).send().await.unwrap();
    assert_eq!((list.status().as_u16(), list.headers()["x-degraded"].to_str().unwrap()), (200, "stale"));

    let missing = http.get(format!("{base}/api/v1/books/{unseen}")).send().await.unwrap();
    assert_eq!(missing.status(), 503, "never seen: nothing to serve");
    assert!(missing.headers().contains_key("retry-after"));

    let admin = crate::login(&http, &base, "admin", crate::ADMIN_PASSWORD).await;
    let started = std::time::Instant::now();
    let checkout = http
        .post(format!("{base}/api/v1/orders"))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"lines": [{"book_id": seen, "quantity": 1}], "shipping_address": crate::shipping_address()}))
        .send()
        .await
        .unwrap();
    assert_eq!(checkout.status(), 503, "checkout fails fast with books down");
    assert!(checkout.headers().contains_key("retry-after"));
    eprintln!("checkout with books down answered in {:?}", started.elapsed());
    shop.shutdown_token().cancel();
}
