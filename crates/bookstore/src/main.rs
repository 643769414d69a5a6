//! `bookstore`: every service of the bookstore in one binary.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bookstore::{App, Config, Embedded, Service};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

// glibc's malloc showed up as a sixth of the CPU of the hot read path (many small, short-lived
// allocations across threads); mimalloc's thread-local free lists cut that down.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const SECRETS_HELP: &str = "\
Secrets are read from the environment or the config file only, never from flags (flags show in
process lists):
  BOOKSTORE_MASTER_KEY_FILE / master_key_file   file with the users service's master key
  BOOKSTORE_MASTER_KEY      / master_key        the master key itself (base64, 32 bytes)
  BOOKSTORE_ADMIN_PASSWORD  / admin_password    the first admin's password (else generated and
                                                printed once)
  BOOKSTORE_ORDERS_CLIENT_SECRET / orders_client_secret
                                                the orders service's service-account secret, when
                                                it runs apart from users
Every setting can also be set as BOOKSTORE_<NAME> or in the --config file; see the README.";

/// An online bookstore built as microservices.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = SECRETS_HELP)]
struct Cli {
    /// A TOML file of settings (same keys as the flags, with underscores: `data_dir = "..."`).
    #[arg(long, global = true, value_name = "FILE", env = "BOOKSTORE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in this process with embedded defaults (SQLite under --data-dir).
    #[command(after_help = SECRETS_HELP)]
    Up {
        #[command(flatten)]
        flags: Flags,
        /// Do not load the starter catalog into an empty catalog.
        #[arg(long)]
        no_seed: bool,
    },
    /// Run the chosen services, e.g. `serve books --books-database-url postgres://...`.
    #[command(after_help = SECRETS_HELP)]
    Serve {
        /// Which services to run.
        #[arg(required = true, value_enum)]
        services: Vec<Service>,
        #[command(flatten)]
        flags: Flags,
        /// Load the starter catalog into an empty catalog.
        #[arg(long)]
        seed: bool,
    },
    /// Apply every service's database migrations and exit.
    Migrate {
        #[command(flatten)]
        flags: Flags,
    },
    /// Key management.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// Every admin command manages a key; the names say which, as an operator would type them.
#[allow(clippy::enum_variant_names)]
#[derive(Subcommand)]
enum AdminCommand {
    /// Print a new random master key (base64) to put in a secret store or file.
    GenerateMasterKey,
    /// Add a new token signing key; it is published at once and signs after
    /// --signing-key-publish-ahead-secs. Old keys verify their tokens until those expire.
    RotateSigningKey {
        #[command(flatten)]
        flags: Flags,
    },
    /// Re-wrap every key of the users database from the configured master key to a new one.
    /// Personal data is not re-encrypted (it is under data keys, which do not change). Restart
    /// the users service with the new key afterwards.
    RotateMasterKey {
        /// File holding the new master key.
        #[arg(long, value_name = "FILE")]
        new_master_key_file: PathBuf,
        #[command(flatten)]
        flags: Flags,
    },
}

/// Settings that may come from flags; each also reads `BOOKSTORE_<NAME>` and the config file.
#[derive(Args, Serialize, Default)]
struct Flags {
    /// Gateway HTTP address [env: BOOKSTORE_HTTP] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    http: Option<SocketAddr>,
    /// Books gRPC address [env: BOOKSTORE_BOOKS_GRPC] [default: 127.0.0.1:50051]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    books_grpc: Option<SocketAddr>,
    /// Users gRPC address [env: BOOKSTORE_USERS_GRPC] [default: 127.0.0.1:50052]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    users_grpc: Option<SocketAddr>,
    /// Orders gRPC address [env: BOOKSTORE_ORDERS_GRPC] [default: 127.0.0.1:50053]
    #[arg(long, value_name = "ADDR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    orders_grpc: Option<SocketAddr>,
    /// URL of an orders service elsewhere [env: BOOKSTORE_ORDERS_URL]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    orders_url: Option<String>,
    /// Orders database, postgres://... or sqlite:... [env: BOOKSTORE_ORDERS_DATABASE_URL] [default: <data-dir>/orders.db]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    orders_database_url: Option<String>,
    /// The orders service account's client id, when orders runs apart from users [env: BOOKSTORE_ORDERS_CLIENT_ID]
    #[arg(long, value_name = "ID")]
    #[serde(skip_serializing_if = "Option::is_none")]
    orders_client_id: Option<String>,
    /// The embedded event log, sqlite:... [env: BOOKSTORE_EVENT_LOG_URL] [default: <data-dir>/events.db]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    event_log_url: Option<String>,
    /// RabbitMQ as the bus between services, amqp://... [env: BOOKSTORE_AMQP_URL] [default: the event log]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    amqp_url: Option<String>,
    /// URL of a books service elsewhere [env: BOOKSTORE_BOOKS_URL]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    books_url: Option<String>,
    /// URL of a users service elsewhere [env: BOOKSTORE_USERS_URL]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    users_url: Option<String>,
    /// Folder of the embedded SQLite databases [env: BOOKSTORE_DATA_DIR] [default: ./data]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    data_dir: Option<PathBuf>,
    /// Books database, postgres://... or sqlite:... [env: BOOKSTORE_BOOKS_DATABASE_URL] [default: <data-dir>/books.db]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    books_database_url: Option<String>,
    /// Users database, postgres://... or sqlite:... [env: BOOKSTORE_USERS_DATABASE_URL] [default: <data-dir>/users.db]
    #[arg(long, value_name = "URL")]
    #[serde(skip_serializing_if = "Option::is_none")]
    users_database_url: Option<String>,
    /// How long a cached book may be served, ms; 0 is off [env: BOOKSTORE_BOOKS_CACHE_TTL_MS] [default: 1000]
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    books_cache_ttl_ms: Option<u64>,
    /// Connections per database pool [env: BOOKSTORE_DB_MAX_CONNECTIONS] [default: 16]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    db_max_connections: Option<u32>,
    /// Largest JSON body accepted, in bytes [env: BOOKSTORE_MAX_BODY_BYTES] [default: 65536]
    #[arg(long, value_name = "BYTES")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_body_bytes: Option<usize>,
    /// End-to-end request deadline in ms [env: BOOKSTORE_REQUEST_TIMEOUT_MS] [default: 10000]
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    request_timeout_ms: Option<u64>,
    /// Comma-separated CORS origins; empty is off [env: BOOKSTORE_CORS_ALLOWED_ORIGINS]
    #[arg(long, value_name = "ORIGINS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    cors_allowed_origins: Option<String>,
    /// File with the master key [env: BOOKSTORE_MASTER_KEY_FILE] [default for up: <data-dir>/master.key]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    master_key_file: Option<PathBuf>,
    /// Access-token lifetime, s [env: BOOKSTORE_ACCESS_TOKEN_TTL_SECS] [default: 900]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    access_token_ttl_secs: Option<u64>,
    /// Refresh-token lifetime, s [env: BOOKSTORE_REFRESH_TOKEN_TTL_SECS] [default: 2592000]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token_ttl_secs: Option<u64>,
    /// Least time between JWKS refetches for unknown key ids, ms [env: BOOKSTORE_JWKS_REFRESH_MS] [default: 60000]
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    jwks_refresh_ms: Option<u64>,
    /// How often users rereads its signing keys, ms [env: BOOKSTORE_SIGNING_KEY_RELOAD_MS] [default: 30000]
    #[arg(long, value_name = "MS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_key_reload_ms: Option<u64>,
    /// How long a new signing key is published before it signs, s [env: BOOKSTORE_SIGNING_KEY_PUBLISH_AHEAD_SECS] [default: 120]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    signing_key_publish_ahead_secs: Option<u64>,
    /// Failed logins per account before 429 [env: BOOKSTORE_LOGIN_FAILURES_PER_ACCOUNT] [default: 5]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    login_failures_per_account: Option<u32>,
    /// Failed logins per client address before 429 [env: BOOKSTORE_LOGIN_FAILURES_PER_ADDRESS] [default: 20]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    login_failures_per_address: Option<u32>,
    /// Window of the failed-login counts, s [env: BOOKSTORE_LOGIN_FAILURE_WINDOW_SECS] [default: 900]
    #[arg(long, value_name = "SECS")]
    #[serde(skip_serializing_if = "Option::is_none")]
    login_failure_window_secs: Option<u64>,
    #[arg(skip)]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<bool>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    bookstore_platform::telemetry::init_logging();
    let _failpoints = bookstore_platform::arm_failpoints();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "bookstore stopped");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = cli.config.as_deref();
    match cli.command {
        Command::Up { mut flags, no_seed } => {
            if no_seed {
                flags.seed = Some(false);
            }
            let config = Config::load(file, &flags)?;
            serve(&Service::ALL, &config, Embedded::UP).await
        }
        Command::Serve { services, mut flags, seed } => {
            if seed {
                flags.seed = Some(true);
            }
            let config = Config::load(file, &flags)?;
            serve(&services, &config, Embedded::SERVE).await
        }
        Command::Migrate { flags } => {
            let config = Config::load(file, &flags)?;
            let url = config.books_database_url();
            bookstore::connect(&url, &config, &bookstore_books::MIGRATIONS, "books").await?;
            say(format_args!("books: migrations applied to {}", redact(&url)));
            let url = config.users_database_url();
            bookstore::connect(&url, &config, &bookstore_users::MIGRATIONS, "users").await?;
            say(format_args!("users: migrations applied to {}", redact(&url)));
            let url = config.orders_database_url();
            bookstore::connect(&url, &config, &bookstore_orders::MIGRATIONS, "orders").await?;
            say(format_args!("orders: migrations applied to {}", redact(&url)));
            Ok(())
        }
        Command::Admin(AdminCommand::GenerateMasterKey) => {
            say(format_args!("{}", bookstore_users::crypto::MasterKey::generate_base64()));
            Ok(())
        }
        Command::Admin(AdminCommand::RotateSigningKey { flags }) => {
            let config = Config::load(file, &flags)?;
            let users = open_users(&config).await?;
            let ahead = Duration::from_secs(config.signing_key_publish_ahead_secs);
            let kid = users.keyring.add_signing_key(&users.store, ahead).await?;
            say(format_args!("new signing key {kid}: published now, signs in {} s", ahead.as_secs()));
            Ok(())
        }
        Command::Admin(AdminCommand::RotateMasterKey { new_master_key_file, flags }) => {
            let config = Config::load(file, &flags)?;
            let old = bookstore::master_key(&config, true)?;
            let new_config =
                Config { master_key: None, master_key_file: Some(new_master_key_file), ..config.clone() };
            let new = bookstore::master_key(&new_config, false)?;
            let db = bookstore::connect(
                &config.users_database_url(),
                &config,
                &bookstore_users::MIGRATIONS,
                "users",
            )
            .await?;
            let store = bookstore_users::store::UserStore::new(db);
            let count = bookstore_users::keys::rotate_master_key(&store, &old, &new).await?;
            say(format_args!("re-wrapped {count} keys under master key {}; restart users with it", new.id()));
            Ok(())
        }
    }
}

/// The users service's state, for admin commands that work on its database directly.
async fn open_users(config: &Config) -> anyhow::Result<bookstore_users::Users> {
    let db = bookstore::connect(&config.users_database_url(), config, &bookstore_users::MIGRATIONS, "users")
        .await?;
    let master = bookstore::master_key(config, true)?;
    bookstore_users::Users::new(db, master, bookstore::users_config(config))
        .await
        .context("opening the users keyring")
}

async fn serve(services: &[Service], config: &Config, embedded: Embedded) -> anyhow::Result<()> {
    let app = App::start(services, config, embedded).await?;
    if let Some(addr) = app.users_addr {
        say(format_args!("users    gRPC on http://{addr}"));
    }
    if let Some(addr) = app.books_addr {
        say(format_args!("books    gRPC on http://{addr}"));
    }
    if let Some(addr) = app.orders_addr {
        say(format_args!("orders   gRPC on http://{addr}"));
    }
    if let Some(password) = &app.generated_admin_password {
        say(format_args!(
            "admin password: {password}  (user `admin`; shown once; set BOOKSTORE_ADMIN_PASSWORD to choose it)"
        ));
    }
    if let Some(addr) = app.gateway_addr {
        say(format_args!("gateway  http://{addr}  (API docs: http://{addr}/docs)"));
        say(format_args!("bookstore is up; point a browser at http://{addr}/docs. Ctrl-C stops it."));
    }
    bookstore_platform::server::cancel_on_signal(app.shutdown_token()).await;
    app.wait().await
}

/// Prints a line for the person who started us; a closed stdout is not a reason to stop serving.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// A database URL without its password, for printing.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_owned(),
    }
}
