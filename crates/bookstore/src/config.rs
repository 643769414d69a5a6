//! Configuration: defaults < file (`--config FILE`, TOML) < environment (`BOOKSTORE_*`) < flags.
//!
//! Every key has the same name in all four places: `http` is `http = "..."` in the file,
//! `BOOKSTORE_HTTP` in the environment and `--http` on the command line. A bad value stops the
//! start with a message that names the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    /// Where the gateway listens for HTTP.
    pub http: SocketAddr,
    /// Where the books service listens for gRPC.
    pub books_grpc: SocketAddr,
    /// Where the users service listens for gRPC.
    pub users_grpc: SocketAddr,
    /// Where the orders service listens for gRPC.
    pub orders_grpc: SocketAddr,
    /// The orders service's URL, for services running without it; defaults to `orders_grpc`.
    pub orders_url: Option<String>,
    /// The orders database; defaults to SQLite at `<data_dir>/orders.db`.
    pub orders_database_url: Option<String>,
    /// The orders service's service account, for calling books when it runs apart from users.
    pub orders_client_id: Option<String>,
    /// Its secret (environment or file only).
    pub orders_client_secret: Option<String>,
    /// The books service's URL, for services running without it; defaults to `books_grpc`.
    pub books_url: Option<String>,
    /// The users service's URL, for services running without it; defaults to `users_grpc`.
    pub users_url: Option<String>,
    /// The folder of the embedded SQLite files (and, for `up`, the generated master key).
    pub data_dir: PathBuf,
    /// The books database; defaults to SQLite at `<data_dir>/books.db`.
    pub books_database_url: Option<String>,
    /// The users database; defaults to SQLite at `<data_dir>/users.db`.
    pub users_database_url: Option<String>,
    /// The embedded event log (the bus between services); defaults to SQLite at
    /// `<data_dir>/events.db`.
    pub event_log_url: Option<String>,
    /// RabbitMQ (`amqp://...`): when set, the bus between services instead of the event log.
    pub amqp_url: Option<String>,
    /// Load the starter catalog into an empty catalog (default: yes for `up`, no for `serve`).
    pub seed: Option<bool>,
    /// How long the books service may serve a cached book, in ms; 0 turns the cache off.
    pub books_cache_ttl_ms: u64,
    /// Connections per database pool.
    pub db_max_connections: u32,
    /// The largest JSON body the gateway accepts, in bytes.
    pub max_body_bytes: usize,
    /// How long a request may take end to end, in milliseconds.
    pub request_timeout_ms: u64,
    /// Comma-separated origins allowed by CORS; empty turns CORS off.
    pub cors_allowed_origins: String,
    /// The master key (32 bytes, base64) that wraps the users service's keys; prefer
    /// `master_key_file` in production.
    pub master_key: Option<String>,
    /// A file holding the master key.
    pub master_key_file: Option<PathBuf>,
    /// The first admin's password, used only when there is no admin yet.
    pub admin_password: Option<String>,
    /// Access-token lifetime, in seconds.
    pub access_token_ttl_secs: u64,
    /// Refresh-token lifetime, in seconds.
    pub refresh_token_ttl_secs: u64,
    /// The least time between two JWKS fetches prompted by unknown key ids, in ms.
    pub jwks_refresh_ms: u64,
    /// How often the users service rereads its signing keys, in ms.
    pub signing_key_reload_ms: u64,
    /// How long a rotated signing key is published before it signs, in seconds.
    pub signing_key_publish_ahead_secs: u64,
    /// Failed logins per account before 429 until the window ends.
    pub login_failures_per_account: u32,
    /// Failed logins per client address before 429 until the window ends.
    pub login_failures_per_address: u32,
    /// The window failed logins are counted in, in seconds.
    pub login_failure_window_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            books_grpc: SocketAddr::from(([127, 0, 0, 1], 50051)),
            users_grpc: SocketAddr::from(([127, 0, 0, 1], 50052)),
            orders_grpc: SocketAddr::from(([127, 0, 0, 1], 50053)),
            orders_url: None,
            orders_database_url: None,
            orders_client_id: None,
            orders_client_secret: None,
            books_url: None,
            users_url: None,
            data_dir: PathBuf::from("./data"),
            books_database_url: None,
            users_database_url: None,
            event_log_url: None,
            amqp_url: None,
            seed: None,
            books_cache_ttl_ms: 1000,
            db_max_connections: 16,
            max_body_bytes: 64 * 1024,
            request_timeout_ms: 10_000,
            cors_allowed_origins: String::new(),
            master_key: None,
            master_key_file: None,
            admin_password: None,
            access_token_ttl_secs: 15 * 60,
            refresh_token_ttl_secs: 30 * 24 * 3600,
            jwks_refresh_ms: 60_000,
            signing_key_reload_ms: 30_000,
            signing_key_publish_ahead_secs: 120,
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            login_failure_window_secs: 15 * 60,
        }
    }
}

impl Config {
    /// Layers the sources. `flags` holds only what was given on the command line.
    pub fn load(file: Option<&Path>, flags: &impl Serialize) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
            figment = figment.merge(Toml::file(file));
        }
        let config: Config = figment
            .merge(Env::prefixed("BOOKSTORE_").only(&KEYS))
            .merge(Serialized::defaults(flags))
            .extract()
            .map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.db_max_connections >= 1,
            "invalid configuration: db_max_connections must be at least 1"
        );
        anyhow::ensure!(
            self.max_body_bytes >= 1024,
            "invalid configuration: max_body_bytes must be at least 1024"
        );
        anyhow::ensure!(
            self.request_timeout_ms >= 1,
            "invalid configuration: request_timeout_ms must be at least 1"
        );
        for (key, url) in [
            ("books_database_url", &self.books_database_url),
            ("users_database_url", &self.users_database_url),
        ] {
            if let Some(url) = url {
                bookstore_platform::db::Backend::from_url(url)
                    .with_context(|| format!("invalid configuration: {key}"))?;
            }
        }
        for (key, url) in
            [("books_url", &self.books_url), ("users_url", &self.users_url), ("orders_url", &self.orders_url)]
        {
            if let Some(url) = url {
                anyhow::ensure!(
                    url.starts_with("http://") || url.starts_with("https://"),
                    "invalid configuration: {key} must start with http:// or https://"
                );
            }
        }
        if let Some(url) = &self.amqp_url {
            anyhow::ensure!(
                url.starts_with("amqp://") || url.starts_with("amqps://"),
                "invalid configuration: amqp_url must start with amqp:// or amqps://"
            );
        }
        anyhow::ensure!(
            (60..=24 * 3600).contains(&self.access_token_ttl_secs),
            "invalid configuration: access_token_ttl_secs must be between 60 and 86400"
        );
        anyhow::ensure!(
            self.login_failures_per_account >= 1 && self.login_failures_per_address >= 1,
            "invalid configuration: login_failures_per_account and login_failures_per_address must be at least 1"
        );
        Ok(())
    }

    fn sqlite_in_data_dir(&self, file: &str) -> String {
        format!("sqlite://{}", self.data_dir.join(file).display())
    }

    pub fn books_database_url(&self) -> String {
        self.books_database_url.clone().unwrap_or_else(|| self.sqlite_in_data_dir("books.db"))
    }

    pub fn users_database_url(&self) -> String {
        self.users_database_url.clone().unwrap_or_else(|| self.sqlite_in_data_dir("users.db"))
    }

    pub fn orders_database_url(&self) -> String {
        self.orders_database_url.clone().unwrap_or_else(|| self.sqlite_in_data_dir("orders.db"))
    }

    pub fn event_log_url(&self) -> String {
        self.event_log_url.clone().unwrap_or_else(|| self.sqlite_in_data_dir("events.db"))
    }

    pub fn orders_url(&self) -> String {
        self.orders_url.clone().unwrap_or_else(|| format!("http://{}", self.orders_grpc))
    }

    pub fn books_url(&self) -> String {
        self.books_url.clone().unwrap_or_else(|| format!("http://{}", self.books_grpc))
    }

    pub fn users_url(&self) -> String {
        self.users_url.clone().unwrap_or_else(|| format!("http://{}", self.users_grpc))
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn cors_origins(&self) -> Vec<String> {
        self.cors_allowed_origins
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// Names the key, and where its bad value came from, in every error.
fn describe(errors: figment::Error) -> anyhow::Error {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|err| {
            let key = err.path.join(".").to_lowercase();
            let source = match &err.metadata {
                Some(m) if m.name.contains("environment") => {
                    format!(" (from BOOKSTORE_{})", key.to_uppercase())
                }
                Some(m) => match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                },
                None => String::new(),
            };
            format!("{key}{source}: {}", err.kind)
        })
        .collect();
    anyhow::anyhow!("invalid configuration: {}", lines.join("; "))
}

/// The keys read from `BOOKSTORE_*`; others (such as `BOOKSTORE_TEST_POSTGRES_URL`) are not
/// configuration.
const KEYS: [&str; 32] = [
    "http",
    "books_grpc",
    "users_grpc",
    "books_url",
    "users_url",
    "data_dir",
    "books_database_url",
    "users_database_url",
    "seed",
    "books_cache_ttl_ms",
    "db_max_connections",
    "max_body_bytes",
    "request_timeout_ms",
    "cors_allowed_origins",
    "master_key",
    "master_key_file",
    "admin_password",
    "access_token_ttl_secs",
    "refresh_token_ttl_secs",
    "jwks_refresh_ms",
    "signing_key_reload_ms",
    "signing_key_publish_ahead_secs",
    "login_failures_per_account",
    "login_failures_per_address",
    "login_failure_window_secs",
    "orders_grpc",
    "orders_url",
    "orders_database_url",
    "orders_client_id",
    "orders_client_secret",
    "event_log_url",
    "amqp_url",
];

#[cfg(test)]
// figment's test jail returns its own large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[derive(Serialize, Default)]
    struct Flags {
        #[serde(skip_serializing_if = "Option::is_none")]
        http: Option<SocketAddr>,
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "bookstore.toml",
                "http = \"127.0.0.1:1001\"\nmax_body_bytes = 2048\nrequest_timeout_ms = 7\n",
            )?;
            let file = Some(Path::new("bookstore.toml"));

            let c = Config::load(file, &Flags::default()).unwrap();
            assert_eq!((c.http.port(), c.max_body_bytes, c.request_timeout_ms), (1001, 2048, 7));

            jail.set_env("BOOKSTORE_HTTP", "127.0.0.1:1002");
            let c = Config::load(file, &Flags::default()).unwrap();
            assert_eq!(c.http.port(), 1002, "environment beats file");
            assert_eq!(c.max_body_bytes, 2048, "file beats default");

            let c = Config::load(file, &Flags { http: Some("127.0.0.1:1003".parse().unwrap()) }).unwrap();
            assert_eq!(c.http.port(), 1003, "flag beats environment");
            Ok(())
        });
    }

    #[test]
    fn a_bad_value_names_its_key() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("BOOKSTORE_HTTP", "not-an-address");
            let err = Config::load(None, &Flags::default()).unwrap_err().to_string();
            assert!(err.starts_with("invalid configuration: http (from BOOKSTORE_HTTP)"), "{err}");

            jail.clear_env();
            jail.set_env("BOOKSTORE_BOOKS_DATABASE_URL", "mysql://db");
            let err = Config::load(None, &Flags::default()).unwrap_err().to_string();
            assert!(err.contains("books_database_url"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn a_missing_config_file_is_an_error() {
        let err =
            Config::load(Some(Path::new("/nonexistent/bookstore.toml")), &Flags::default()).unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }

    #[test]
    fn the_embedded_database_lives_in_the_data_dir() {
        let c = Config { data_dir: PathBuf::from("/tmp/x"), ..Config::default() };
        assert_eq!(c.books_database_url(), "sqlite:///tmp/x/books.db");
        assert_eq!(c.users_database_url(), "sqlite:///tmp/x/users.db");
    }
}
