//! End to end: the real system (every service, real gRPC between them) on port 0, driven over
//! HTTP like a client would. Every test runs on SQLite, and on PostgreSQL when
//! `BOOKSTORE_TEST_POSTGRES_URL` is set (always in CI).

mod api;
mod audit;
mod backup;
mod binary;
mod dead_letters;
mod edge;
mod fulfillment;
mod hosts;
mod lifecycle;
mod move_data;
mod observability;
mod orders;
mod recommendations;
mod replicas;
mod security;
mod sessions;
mod third_party;
mod tls;
mod traces;
mod upgrade;
mod users;
mod web;

use bookstore::{App, Config};
use bookstore_platform::db::Backend;
use bookstore_platform::service::Mode;
use bookstore_platform::testing::TestDatabase;

pub const ADMIN_PASSWORD: &str = "e2e admin passphrase of some length";

pub struct System {
    pub app: Option<App>,
    pub base: String,
    pub books_base: String,
    /// The admin listener: `/healthz`, `/readyz`, `/metrics`.
    pub admin_base: String,
    pub http: reqwest::Client,
    /// An admin's access token.
    pub admin: String,
    pub config: Config,
    pub books_db: TestDatabase,
    pub users_db: TestDatabase,
    pub orders_db: TestDatabase,
    pub fulfillment_db: TestDatabase,
    pub recommendations_db: TestDatabase,
    _data_dir: tempfile::TempDir,
}

impl System {
    /// The whole system on fresh storage of `backend`, with or without the starter catalog.
    pub async fn start(backend: Backend, seed: bool) -> Option<Self> {
        Self::start_with(backend, seed, |_| {}).await
    }

    pub async fn start_with(backend: Backend, seed: bool, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        let books_db = TestDatabase::new(backend).await?;
        let users_db = TestDatabase::new(backend).await?;
        let orders_db = TestDatabase::new(backend).await?;
        let fulfillment_db = TestDatabase::new(backend).await?;
        let recommendations_db = TestDatabase::new(backend).await?;
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        let port0: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        config.process.admin_http = port0;
        config.process.data_dir = data_dir.path().to_owned();
        // Tests rotate keys and expect the change within moments.
        config.process.jwks_refresh_ms = 0;
        config.gateway.http = port0;
        config.books.grpc = port0;
        config.books.database_url = Some(books_db.url.clone());
        config.books.seed = Some(seed);
        config.users.grpc = port0;
        config.users.database_url = Some(users_db.url.clone());
        config.process.master_key = Some(bookstore_platform::crypto::MasterKey::generate_base64());
        config.users.admin_password = Some(ADMIN_PASSWORD.into());
        config.users.signing_key_reload_ms = 100;
        // Every test client signs up from one address; the sign-up limit's test sets its own.
        config.users.registrations_per_address = 0;
        config.orders.grpc = port0;
        config.orders.database_url = Some(orders_db.url.clone());
        config.fulfillment.grpc = port0;
        config.fulfillment.database_url = Some(fulfillment_db.url.clone());
        config.recommendations.grpc = port0;
        config.recommendations.database_url = Some(recommendations_db.url.clone());
        if backend == Backend::Postgres {
            // With the real servers, the bus is the real broker too: exchanges and queues of
            // this test's own on the shared broker.
            config.process.amqp_url = bookstore_platform::testing::amqp_url_or_skip();
            config.process.amqp_namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
        }
        tweak(&mut config);
        let app =
            App::start(&bookstore::service_names(), &config, Mode::Serve).await.expect("starting the system");
        let books_base = format!("http://{}", app.addr("books").unwrap());
        let admin_base = format!("http://{}", app.admin_addr);
        // Over HTTPS when the gateway has a certificate: then the CA beside it is trusted.
        let (base, http) = match &config.gateway.tls_cert_file {
            None => (format!("http://{}", app.addr("gateway").unwrap()), reqwest::Client::new()),
            Some(cert) => {
                let port = app.addr("gateway").unwrap().port();
                (format!("https://localhost:{port}"), https_client(&cert.with_file_name("ca.pem")))
            }
        };
        let admin = login(&http, &base, "admin", ADMIN_PASSWORD).await;
        Some(Self {
            app: Some(app),
            base,
            books_base,
            admin_base,
            http,
            admin,
            config,
            books_db,
            users_db,
            orders_db,
            fulfillment_db,
            recommendations_db,
            _data_dir: data_dir,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

impl Drop for System {
    fn drop(&mut self) {
        if let Some(app) = &self.app {
            app.shutdown_token().cancel();
            // Consumers stop before their queues go, rather than declare them again.
            app.stop_background();
        }
        // The test's own exchanges and queues on the shared broker go with it.
        let Some(url) = self.config.process.amqp_url.clone() else { return };
        drop(RabbitNamespace { url, namespace: self.config.process.amqp_namespace.clone() });
    }
}

/// A test's own exchanges and queues on the shared broker (`amqp_namespace`), deleted when
/// dropped, once the test's consumers have stopped.
pub struct RabbitNamespace {
    pub url: String,
    pub namespace: String,
}

impl Drop for RabbitNamespace {
    fn drop(&mut self) {
        let mut rabbit = bookstore_platform::events::RabbitBus::new(self.url.clone()).expect("a broker URL");
        rabbit.namespace.clone_from(&self.namespace);
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            if let Err(e) =
                runtime.block_on(rabbit.delete_namespace(&bookstore::CONSUMERS, &bookstore::SUBSCRIPTIONS))
            {
                eprintln!("could not delete the test's RabbitMQ namespace: {e:#}");
            }
        })
        .join();
    }
}

/// `program` with none of the test's own `BOOKSTORE_*` variables (they must not configure a
/// child), logging at `log` level.
pub fn clean_command(program: &str, log: &str) -> std::process::Command {
    let mut command = std::process::Command::new(program);
    for (key, _) in std::env::vars() {
        if key.starts_with("BOOKSTORE_") {
            command.env_remove(key);
        }
    }
    command.env("RUST_LOG", log);
    command
}

/// A child process, killed when dropped.
pub struct Running(pub std::process::Child);

impl Running {
    /// Kills it outright (SIGKILL), like a crashed host, and waits for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }

    /// Stops it the way an orchestrator does (SIGTERM), and waits for it to exit.
    pub fn terminate(&mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let _ = self.0.wait();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawns `command` (a `bookstore serve`), waits until it has printed a line starting with each
/// of `prefixes` (such as `"admin    http://"`), and returns it with the first word after each,
/// in order; the rest of its output is read and dropped. Panics when it stops before that.
pub async fn spawn_listening(
    mut command: std::process::Command,
    prefixes: &[&str],
) -> (Running, Vec<String>) {
    use std::io::{BufRead, BufReader};
    let mut child =
        command.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::inherit()).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let prefixes: Vec<String> = prefixes.iter().map(|p| (*p).to_owned()).collect();
    let found = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            for (prefix, slot) in prefixes.iter().zip(found.iter_mut()) {
                if let Some(rest) = line.strip_prefix(prefix.as_str()) {
                    *slot = rest.split_whitespace().next().map(str::to_owned);
                }
            }
            if found.iter().all(Option::is_some) {
                break;
            }
        }
        std::thread::spawn(move || lines.for_each(drop));
        prefixes
            .iter()
            .zip(found)
            .map(|(prefix, f)| f.unwrap_or_else(|| panic!("the process stopped before printing {prefix:?}")))
            .collect()
    })
    .await
    .unwrap();
    (Running(child), found)
}

/// An HTTP client that trusts the CA in `ca_pem` alone.
pub fn https_client(ca_pem: &std::path::Path) -> reqwest::Client {
    let tls = bookstore_platform::tls::client_trusting(ca_pem).unwrap();
    reqwest::Client::builder().use_preconfigured_tls(tls).build().unwrap()
}

/// Signs in and returns the access token; panics if that fails.
pub async fn login(http: &reqwest::Client, base: &str, username: &str, password: &str) -> String {
    let response = http
        .post(format!("{base}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": username, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "login as {username}");
    let body: serde_json::Value = response.json().await.unwrap();
    body["access_token"].as_str().unwrap().to_owned()
}

/// POSTs `body` as JSON with `token`; the JSON answer (panics if the call itself fails).
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let answer = http.post(url).bearer_auth(token).json(body).send().await.unwrap();
    answer.json().await.unwrap()
}

/// GETs `url` with `token`; the JSON answer (panics if the call itself fails).
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> serde_json::Value {
    http.get(url).bearer_auth(token).send().await.unwrap().json().await.unwrap()
}

/// Waits for `condition`, checking every 50 ms, up to `limit`; fails the test with `what`.
pub async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: std::time::Duration,
    mut condition: impl FnMut() -> F,
) {
    let start = std::time::Instant::now();
    while !condition().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A shipping address for checkouts by accounts that keep none (the admin's).
/// The system's users service as a test can drive it directly (its keyring signs tokens the
/// system accepts), on the system's own database and master key.
pub async fn users_of(sys: &System) -> bookstore_users::Users {
    let config = &sys.config;
    let url = config.users.database_url.clone().unwrap();
    let users = bookstore::SERVICES.iter().find(|e| e.name() == "users").unwrap();
    let db = bookstore::connect(&url, config, &users.migrations(), "users").await.unwrap();
    let master = config.master_key(bookstore_platform::service::Mode::Serve).unwrap();
    bookstore_users::Users::new(db, master, config.users.users_config()).await.unwrap()
}

/// Registers customer `name` (no address on the account); their access token.
pub async fn customer(sys: &System, name: &str) -> String {
    const PASSWORD: &str = "velvet lantern orbit crumble";
    let register = serde_json::json!({"username": name, "email": format!("{name}@example.com"),
                                      "password": PASSWORD, "full_name": name});
    let answer = sys.http.post(sys.url("/api/v1/auth/register")).json(&register).send().await.unwrap();
    assert_eq!(answer.status(), reqwest::StatusCode::ACCEPTED);
    login(&sys.http, &sys.base, name, PASSWORD).await
}

/// Places an order of one copy of the catalog's first book as the admin; the order, checked
/// as placed.
pub async fn admin_buys_the_first_book(sys: &System) -> serde_json::Value {
    let books = get_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin).await;
    let book = books["items"][0]["id"].as_str().unwrap();
    let lines = serde_json::json!([{"book_id": book, "quantity": 1}]);
    let body = serde_json::json!({"lines": lines, "shipping_address": shipping_address()});
    let order = post_json(&sys.http, &sys.url("/api/v1/orders"), &sys.admin, &body).await;
    assert_eq!(order["status"], "PLACED", "{order}");
    order
}

pub fn shipping_address() -> serde_json::Value {
    serde_json::json!({"name": "Test Recipient", "line1": "1 Test Street", "city": "Testville", "country": "DE"})
}

/// A valid ISBN-13 made from `n`.
pub fn isbn(n: u32) -> String {
    let body = format!("978{n:09}");
    format!("{body}{}", bookstore_books::domain::check_digit(body.as_bytes()))
}

pub fn book_json(n: u32, title: &str) -> serde_json::Value {
    serde_json::json!({
        "isbn": isbn(n),
        "title": title,
        "author": "Test Author",
        "description": "A book made by a test.",
        "price": {"amount_minor": 1999, "currency": "USD"},
        "stock": 5
    })
}
