//! The `bookstore` binary's library: configuration and the assembly of services into one
//! process. `main.rs` only parses the command line.
//!
//! [`App::start`] is what `bookstore up` and `bookstore serve` run, and what the end-to-end tests
//! start on port 0.
#![forbid(unsafe_code)]

pub mod config;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bookstore_api::users::v1::GetJwksRequest;
use bookstore_api::users::v1::user_service_client::UserServiceClient;
use bookstore_gateway::GatewayConfig;
use bookstore_platform::auth::{JwksSource, ServiceToken, TokenSource, Verifier};
use bookstore_platform::db::{Database, PoolConfig};
use bookstore_platform::events::{Bus, EventLog, RabbitBus, run_relay};
use bookstore_platform::grpc::ClientConfig;
use bookstore_platform::server::{self, Running};
use bookstore_users::crypto::MasterKey;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

/// The services the binary can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Service {
    Gateway,
    Books,
    Users,
    Orders,
}

impl Service {
    /// In start order: what others depend on first.
    pub const ALL: [Service; 4] = [Service::Users, Service::Books, Service::Orders, Service::Gateway];
}

/// How `up` differs from `serve`: embedded conveniences that a real deployment must not have.
#[derive(Debug, Clone, Copy, Default)]
pub struct Embedded {
    /// Seed an empty catalog unless `seed` says otherwise.
    pub seed_by_default: bool,
    /// Without a configured master key, keep a generated one in `<data_dir>/master.key`.
    pub master_key_in_data_dir: bool,
}

impl Embedded {
    pub const UP: Embedded = Embedded { seed_by_default: true, master_key_in_data_dir: true };
    pub const SERVE: Embedded = Embedded { seed_by_default: false, master_key_in_data_dir: false };
}

/// Running services in this process.
pub struct App {
    pub gateway_addr: Option<SocketAddr>,
    pub books_addr: Option<SocketAddr>,
    pub users_addr: Option<SocketAddr>,
    pub orders_addr: Option<SocketAddr>,
    /// The first admin's password, when this start generated it (show it once).
    pub generated_admin_password: Option<String>,
    /// Cancelled to stop the whole process.
    shutdown: CancellationToken,
    /// In start order, each with its own stop token: stopped in reverse, so the gateway drains
    /// its requests while the services behind it still answer them.
    servers: Vec<(CancellationToken, Running)>,
    databases: Vec<Database>,
}

impl App {
    pub async fn start(services: &[Service], config: &Config, embedded: Embedded) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let mut app = App {
            gateway_addr: None,
            books_addr: None,
            users_addr: None,
            orders_addr: None,
            generated_admin_password: None,
            shutdown: shutdown.clone(),
            servers: vec![],
            databases: vec![],
        };

        // Bind every listener first, so each service knows where the others are.
        let users_listener = bind_if(services, Service::Users, config.users_grpc, "users_grpc").await?;
        let books_listener = bind_if(services, Service::Books, config.books_grpc, "books_grpc").await?;
        let orders_listener = bind_if(services, Service::Orders, config.orders_grpc, "orders_grpc").await?;
        let orders_url = match &orders_listener {
            Some(l) if config.orders_url.is_none() => format!("http://{}", l.local_addr()?),
            _ => config.orders_url(),
        };
        let users_url = match &users_listener {
            Some(l) if config.users_url.is_none() => format!("http://{}", l.local_addr()?),
            _ => config.users_url(),
        };
        let books_url = match &books_listener {
            Some(l) if config.books_url.is_none() => format!("http://{}", l.local_addr()?),
            _ => config.books_url(),
        };
        let verifier = verifier(&users_url, Duration::from_millis(config.jwks_refresh_ms))?;

        let mut in_process_users = None;
        if let Some(listener) = users_listener {
            let db =
                connect(&config.users_database_url(), config, &bookstore_users::MIGRATIONS, "users").await?;
            let master = master_key(config, embedded.master_key_in_data_dir)?;
            let users =
                Arc::new(bookstore_users::Users::new(db.clone(), master, users_config(config)).await?);
            app.generated_admin_password = users.ensure_admin(config.admin_password.as_deref()).await?;
            in_process_users = Some(users.clone());
            let router = bookstore_users::router(users, verifier.clone(), shutdown.clone()).await;
            app.users_addr = Some(app.serve(bookstore_users::SERVICE, listener, router)?);
            app.databases.push(db);
        }

        if let Some(listener) = books_listener {
            let db =
                connect(&config.books_database_url(), config, &bookstore_books::MIGRATIONS, "books").await?;
            let store = bookstore_books::BookStore::new(db.clone())
                .with_cache(Duration::from_millis(config.books_cache_ttl_ms), 100_000);
            if config.seed.unwrap_or(embedded.seed_by_default) {
                let added = bookstore_books::seed::seed_if_empty(&store).await?;
                if added > 0 {
                    tracing::info!(added, "loaded the starter catalog");
                }
            }
            let router = bookstore_books::router(store, verifier.clone(), shutdown.clone()).await;
            app.books_addr = Some(app.serve(bookstore_books::SERVICE, listener, router)?);
            app.databases.push(db);
        }

        if let Some(listener) = orders_listener {
            let db = connect(&config.orders_database_url(), config, &bookstore_orders::MIGRATIONS, "orders")
                .await?;
            let token =
                Arc::new(ServiceToken::new(orders_token_source(config, in_process_users, &users_url)?));
            // The caller's deadline bounds each call; the channel's cap is the longest request.
            let client = ClientConfig { call_timeout: config.request_timeout(), ..ClientConfig::default() };
            let books = bookstore_platform::grpc::channel(&books_url, &client)?;
            let store = bookstore_orders::OrderStore::new(db.clone());
            // The outbox relay: committed events reach the bus even if orders stopped right
            // after committing them.
            let bus = match &config.amqp_url {
                Some(url) => Bus::Rabbit(Arc::new(RabbitBus::new(url.clone()))),
                None => {
                    let log_db = Database::connect(&config.event_log_url(), &PoolConfig::default())
                        .await
                        .context("event log")?;
                    app.databases.push(log_db.clone());
                    Bus::Log(EventLog::open(log_db).await?)
                }
            };
            tokio::spawn(run_relay(db.clone(), bus, Duration::from_millis(200), shutdown.clone()));
            let router =
                bookstore_orders::router(store, books, token, verifier.clone(), shutdown.clone()).await;
            app.orders_addr = Some(app.serve(bookstore_orders::SERVICE, listener, router)?);
            app.databases.push(db);
        }

        if services.contains(&Service::Gateway) {
            let gateway = GatewayConfig {
                books_url,
                users_url,
                orders_url,
                max_body_bytes: config.max_body_bytes,
                request_timeout: config.request_timeout(),
                cors_allowed_origins: config.cors_origins(),
                client: ClientConfig { call_timeout: config.request_timeout(), ..ClientConfig::default() },
            };
            let listener = TcpListener::bind(config.http)
                .await
                .with_context(|| format!("binding http {}", config.http))?;
            let router = bookstore_gateway::router(&gateway, verifier, shutdown.clone())?;
            app.gateway_addr = Some(app.serve(bookstore_gateway::SERVICE, listener, router)?);
        }
        Ok(app)
    }

    fn serve(
        &mut self,
        service: &'static str,
        listener: TcpListener,
        router: axum::Router,
    ) -> anyhow::Result<SocketAddr> {
        let stop = CancellationToken::new();
        let running = server::serve(service, listener, router, stop.clone())?;
        let addr = running.addr;
        self.servers.push((stop, running));
        Ok(addr)
    }

    /// A token that stops every service when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Stops accepting, drains in-flight requests, closes the databases.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits for the shutdown token, then stops the servers one by one, last started first,
    /// each after draining its in-flight requests.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        for (stop, running) in self.servers.into_iter().rev() {
            stop.cancel();
            running.task.await.context("server task panicked")?.context("server failed")?;
        }
        for db in self.databases {
            db.close().await;
        }
        Ok(())
    }
}

async fn bind_if(
    services: &[Service],
    service: Service,
    addr: SocketAddr,
    key: &str,
) -> anyhow::Result<Option<TcpListener>> {
    if !services.contains(&service) {
        return Ok(None);
    }
    Ok(Some(TcpListener::bind(addr).await.with_context(|| format!("binding {key} {addr}"))?))
}

/// Connects to a service's database and brings its schema up to date.
pub async fn connect(
    url: &str,
    config: &Config,
    migrations: &bookstore_platform::db::Migrations,
    service: &str,
) -> anyhow::Result<Database> {
    let pool = PoolConfig { max_connections: config.db_max_connections, ..PoolConfig::default() };
    let db = Database::connect(url, &pool).await.with_context(|| format!("{service} database"))?;
    db.migrate(migrations).await.with_context(|| format!("{service} migrations"))?;
    Ok(db)
}

/// The users service's settings from the configuration.
pub fn users_config(config: &Config) -> bookstore_users::UsersConfig {
    bookstore_users::UsersConfig {
        access_ttl: Duration::from_secs(config.access_token_ttl_secs),
        refresh_ttl: Duration::from_secs(config.refresh_token_ttl_secs),
        limits: bookstore_users::throttle::Limits {
            per_account: config.login_failures_per_account,
            per_address: config.login_failures_per_address,
            window: Duration::from_secs(config.login_failure_window_secs),
        },
        signing_key_reload: Duration::from_millis(config.signing_key_reload_ms.max(10)),
        ..Default::default()
    }
}

/// The master key: `master_key`, else `master_key_file`, else (for `up` only) the key kept in
/// `<data_dir>/master.key`, generated on first start.
pub fn master_key(config: &Config, allow_data_dir: bool) -> anyhow::Result<MasterKey> {
    if let Some(text) = &config.master_key {
        return MasterKey::from_base64(text)
            .context("invalid configuration: master_key (BOOKSTORE_MASTER_KEY)");
    }
    if let Some(path) = &config.master_key_file {
        return read_master_key(path)
            .context("invalid configuration: master_key_file (BOOKSTORE_MASTER_KEY_FILE)");
    }
    anyhow::ensure!(
        allow_data_dir,
        "the users service needs a master key: set master_key_file (BOOKSTORE_MASTER_KEY_FILE) or master_key \
         (BOOKSTORE_MASTER_KEY); `bookstore admin generate-master-key` makes one"
    );
    let path = config.data_dir.join("master.key");
    if !path.exists() {
        std::fs::create_dir_all(&config.data_dir).context("creating the data folder")?;
        write_secret_file(&path, &MasterKey::generate_base64())?;
        tracing::warn!(path = %path.display(), "generated a master key for this data folder; keep it with the data");
    }
    read_master_key(&path)
}

fn read_master_key(path: &Path) -> anyhow::Result<MasterKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(MasterKey::from_base64(&text)?)
}

/// Writes a file only its owner can read.
pub fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// A token verifier whose keys come from the users service at `users_url`.
pub fn verifier(users_url: &str, min_refresh: Duration) -> anyhow::Result<Arc<Verifier>> {
    let channel = bookstore_platform::grpc::channel(users_url, &ClientConfig::default())?;
    let source: JwksSource = Arc::new(move || {
        let mut client = UserServiceClient::new(channel.clone());
        Box::pin(async move {
            let mut request = tonic::Request::new(GetJwksRequest {});
            request.set_timeout(Duration::from_secs(2));
            let json = client.get_jwks(request).await?.into_inner().jwks_json;
            Ok(serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&json)?)
        })
    });
    Ok(Arc::new(Verifier::new(source, min_refresh)))
}

/// Where the orders service gets its service token: minted in-process when users runs in this
/// process, else by client credentials from users.
fn orders_token_source(
    config: &Config,
    users: Option<Arc<bookstore_users::Users>>,
    users_url: &str,
) -> anyhow::Result<TokenSource> {
    if let Some(users) = users {
        return Ok(Arc::new(move || {
            let minted = users.internal_service_token("orders");
            Box::pin(async move { minted })
        }));
    }
    let (Some(client_id), Some(client_secret)) =
        (config.orders_client_id.clone(), config.orders_client_secret.clone())
    else {
        anyhow::bail!(
            "orders runs apart from users, so it needs a service account: set orders_client_id \
             (BOOKSTORE_ORDERS_CLIENT_ID) and orders_client_secret (BOOKSTORE_ORDERS_CLIENT_SECRET); \
             an admin creates one with POST /api/v1/service-accounts"
        );
    };
    let channel = bookstore_platform::grpc::channel(users_url, &ClientConfig::default())?;
    Ok(Arc::new(move || {
        let mut client = UserServiceClient::new(channel.clone());
        let request = bookstore_api::users::v1::IssueServiceTokenRequest {
            client_id: client_id.clone(),
            client_secret: client_secret.clone(),
        };
        Box::pin(async move {
            let response = client.issue_service_token(request).await?.into_inner();
            Ok((response.access_token, Duration::from_secs(response.expires_in.max(1) as u64)))
        })
    }))
}
