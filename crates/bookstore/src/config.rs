//! Configuration: defaults < file (`--config FILE`, TOML) < environment (`BOOKSTORE_*`) < flags.
//!
//! Each key is defined once, in its section's `settings!` (the process's keys below; each
//! service's in its crate's `settings.rs`). The file groups keys by section
//! (`[orders] database_url = "..."`, process keys at the top); the environment and the flags use
//! the flat name (`BOOKSTORE_ORDERS_DATABASE_URL`, `--orders-database-url`). A bad value or an
//! unknown key stops the start with a message that names the key and where it came from.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use figment::{Figment, Provider};
use serde::{Deserialize, Serialize};

use bookstore_platform::balance::ResilienceConfig;
use bookstore_platform::breaker::BreakerConfig;
use bookstore_platform::settings::{Key, Section, Source, check_database_url};

bookstore_platform::settings! {
    /// Settings of the process, shared by the services it runs (the top of the file).
    pub struct ProcessSettings in "", validate(check_process) {
        /// Folder of the embedded SQLite databases (and, for up, the generated master key).
        data_dir: PathBuf = PathBuf::from("./data"), flag data_dir "DIR";
        /// The master key (32 bytes, base64) that wraps the keys of users' and orders' personal data.
        master_key: Option<String> = None, secret master_key "KEY";
        /// File with the master key [default for up: <data-dir>/master.key]
        master_key_file: Option<PathBuf> = None, flag master_key_file "FILE";
        /// Where /healthz, /readyz and /metrics are served, off the public port.
        admin_http: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 9180)), flag admin_http "ADDR";
        /// Connections per database pool.
        db_max_connections: u32 = 16, flag db_max_connections "N";
        /// End-to-end request deadline, ms; also the longest a request waits for a database connection.
        request_timeout_ms: u64 = 10_000, flag request_timeout_ms "MS";
        /// The embedded event log, sqlite:... or postgres://... [default: <data-dir>/events.db]
        event_log_url: Option<String> = None, flag event_log_url "URL";
        /// RabbitMQ as the bus between services, amqp://... [default: the event log]
        amqp_url: Option<String> = None, flag amqp_url "URL";
        /// The first part of the bus's exchange and queue names on RabbitMQ (<ns>.events, <ns>.<consumer>).
        amqp_namespace: String = "bookstore".to_owned(), flag amqp_namespace "NAME";
        /// Least time between JWKS refetches for unknown key ids, ms.
        jwks_refresh_ms: u64 = 60_000, flag jwks_refresh_ms "MS";
        /// Call the services of this process in process, not through their sockets (false: always dial).
        local_calls: bool = true, flag local_calls "BOOL";
        /// etcd (etcd://host:2379[,host:2379...]) where serve registers each of its services.
        registry_url: Option<String> = None, flag registry_url "URL";
        /// Mutual TLS between services: this process's certificate (PEM, for server and client auth).
        mtls_cert_file: Option<PathBuf> = None, flag mtls_cert_file "FILE";
        /// Mutual TLS between services: the private key of mtls_cert_file (PEM).
        mtls_key_file: Option<PathBuf> = None, flag mtls_key_file "FILE";
        /// Mutual TLS between services: the CA that signs every service's certificate (PEM).
        mtls_ca_file: Option<PathBuf> = None, flag mtls_ca_file "FILE";
        /// Consecutive failures (or calls over their time) that open a replica's circuit breaker.
        breaker_max_failures: u32 = 5, flag breaker_max_failures "N";
        /// How long an open breaker fails fast before its trial call, ms.
        breaker_reset_timeout_ms: u64 = 1_000, flag breaker_reset_timeout_ms "MS";
        /// What a failed trial multiplies the open time by.
        breaker_backoff: f64 = 2.0, flag breaker_backoff "X";
        /// The longest a breaker stays open, ms.
        breaker_max_reset_timeout_ms: u64 = 30_000, flag breaker_max_reset_timeout_ms "MS";
        /// Consecutive failures that eject a replica from its peer's set.
        eject_after_failures: u32 = 5, flag eject_after_failures "N";
        /// How long a first ejection lasts (the n-th lasts n times as long, up to 5 min), ms.
        ejection_ms: u64 = 10_000, flag ejection_ms "MS";
        /// The largest share of a peer's replicas ejected at once, percent.
        max_ejected_percent: u32 = 50, flag max_ejected_percent "PCT";
        /// Retries allowed on top of the calls made (10 s window), percent.
        retry_budget_percent: u32 = 20, flag retry_budget_percent "PCT";
        /// Attempts of a call that is safe to retry, the first included.
        retry_max_attempts: u32 = 3, flag retry_max_attempts "N";
        /// OTLP collector that sampled spans are sent to: http(s)://host:4317 over gRPC,
        /// http(s)://host:4318 over HTTP [default: none]
        otlp_endpoint: Option<String> = None, flag otlp_endpoint "URL";
        /// How spans reach the collector: grpc, or http/protobuf (to `<endpoint>/v1/traces`).
        otlp_protocol: String = "grpc".to_owned(), flag otlp_protocol "PROTOCOL";
        /// Share of the traces started here that are sampled, 0 to 1 (a caller's decision is kept).
        trace_sample_ratio: f64 = 1.0, flag trace_sample_ratio "RATIO";
    }
}

fn check_process(s: &ProcessSettings) -> anyhow::Result<()> {
    anyhow::ensure!(
        !s.amqp_namespace.is_empty()
            && s.amqp_namespace.len() <= 64
            && s.amqp_namespace.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)),
        "invalid configuration: amqp_namespace must be 1 to 64 of a-z, A-Z, 0-9, - and _"
    );
    if let Some(key) = &s.master_key {
        bookstore_platform::crypto::MasterKey::from_base64(key)
            .context("invalid configuration: master_key (BOOKSTORE_MASTER_KEY)")?;
    }
    anyhow::ensure!(
        s.db_max_connections >= 1,
        "invalid configuration: db_max_connections must be at least 1"
    );
    anyhow::ensure!(
        s.request_timeout_ms >= 1,
        "invalid configuration: request_timeout_ms must be at least 1"
    );
    anyhow::ensure!(
        s.breaker_max_failures >= 1 && s.eject_after_failures >= 1 && s.retry_max_attempts >= 1,
        "invalid configuration: breaker_max_failures, eject_after_failures and retry_max_attempts must be at least 1"
    );
    anyhow::ensure!(
        s.breaker_reset_timeout_ms >= 1 && s.breaker_max_reset_timeout_ms >= s.breaker_reset_timeout_ms,
        "invalid configuration: breaker_reset_timeout_ms must be at least 1 and at most breaker_max_reset_timeout_ms"
    );
    anyhow::ensure!(
        (1.0..=100.0).contains(&s.breaker_backoff),
        "invalid configuration: breaker_backoff must be between 1 and 100"
    );
    anyhow::ensure!(
        s.max_ejected_percent <= 100 && s.retry_budget_percent <= 1000,
        "invalid configuration: max_ejected_percent is at most 100, retry_budget_percent at most 1000"
    );
    if let Some(url) = &s.event_log_url {
        check_database_url("event_log_url", url)?;
    }
    if let Some(url) = &s.registry_url {
        let (_, path) = bookstore_platform::etcd::parse_url(url)
            .map_err(|e| anyhow::anyhow!("invalid configuration: registry_url: {e:#}"))?;
        anyhow::ensure!(
            path.is_empty(),
            "invalid configuration: registry_url is etcd://host:port[,host:port], without a path"
        );
    }
    anyhow::ensure!(
        s.mtls_cert_file.is_some() == s.mtls_key_file.is_some()
            && s.mtls_cert_file.is_some() == s.mtls_ca_file.is_some(),
        "invalid configuration: mtls_cert_file, mtls_key_file and mtls_ca_file go together"
    );
    anyhow::ensure!(
        (0.0..=1.0).contains(&s.trace_sample_ratio),
        "invalid configuration: trace_sample_ratio must be between 0 and 1"
    );
    if let Some(url) = &s.otlp_endpoint {
        let parsed =
            url::Url::parse(url).map_err(|e| anyhow::anyhow!("invalid configuration: otlp_endpoint: {e}"))?;
        anyhow::ensure!(
            matches!(parsed.scheme(), "http" | "https") && parsed.host_str().is_some(),
            "invalid configuration: otlp_endpoint is http(s)://host:port"
        );
    }
    s.otlp_protocol
        .parse::<bookstore_platform::trace::OtlpProtocol>()
        .map_err(|e| anyhow::anyhow!("invalid configuration: otlp_protocol: {e}"))?;
    if let Some(url) = &s.amqp_url {
        bookstore_platform::events::BrokerTls::split(url)
            .map_err(|e| anyhow::anyhow!("invalid configuration: amqp_url: {e:#}"))?;
    }
    Ok(())
}

/// The whole configuration: the process's keys and a section per service.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub process: ProcessSettings,
    pub gateway: bookstore_gateway::Settings,
    pub books: bookstore_books::Settings,
    pub users: bookstore_users::Settings,
    pub orders: bookstore_orders::Settings,
    pub fulfillment: bookstore_fulfillment::Settings,
    pub recommendations: bookstore_recommendations::Settings,
}

/// Every section's name and keys; the process's section has the empty name.
pub fn sections() -> [(&'static str, &'static [Key]); 7] {
    [
        (ProcessSettings::NAME, ProcessSettings::KEYS),
        (bookstore_gateway::Settings::NAME, bookstore_gateway::Settings::KEYS),
        (bookstore_books::Settings::NAME, bookstore_books::Settings::KEYS),
        (bookstore_users::Settings::NAME, bookstore_users::Settings::KEYS),
        (bookstore_orders::Settings::NAME, bookstore_orders::Settings::KEYS),
        (bookstore_fulfillment::Settings::NAME, bookstore_fulfillment::Settings::KEYS),
        (bookstore_recommendations::Settings::NAME, bookstore_recommendations::Settings::KEYS),
    ]
}

/// Every key with its section, in help order.
pub fn keys() -> impl Iterator<Item = (&'static str, &'static Key)> {
    sections().into_iter().flat_map(|(section, keys)| keys.iter().map(move |key| (section, key)))
}

/// The dotted path of a key in the file (`orders.database_url`, or `data_dir` at the top).
fn path(section: &str, key: &Key) -> String {
    if section.is_empty() { key.field.to_owned() } else { format!("{section}.{}", key.field) }
}

/// Values given on the command line, by flat name.
#[derive(Debug, Clone, Default)]
pub struct Flags {
    given: BTreeMap<&'static str, String>,
}

impl Flags {
    /// Sets a key by its flat name, as a subcommand's own switch does (`up --no-seed`).
    pub fn set(&mut self, flat: &str, value: impl Into<String>) {
        let key =
            keys().find(|(_, k)| k.flat == flat).unwrap_or_else(|| panic!("no configuration key {flat}"));
        self.given.insert(key.1.flat, value.into());
    }

    fn provider(&self) -> Serialized<Dict> {
        provider_of(&self.given)
    }
}

/// Values given as text by flat name (flags, or files the environment names), as a provider.
fn provider_of(given: &BTreeMap<&'static str, String>) -> Serialized<Dict> {
    let mut root = Dict::new();
    for (section, key) in keys() {
        let Some(text) = given.get(key.flat) else { continue };
        // Read as the environment is read, so a flag and a variable mean the same; a secret is
        // text whatever it looks like (a password may look like a list).
        let value: Value = match key.source {
            Source::Secret => Value::from(text.clone()),
            _ => text.parse().unwrap_or_else(|_| Value::from(text.clone())),
        };
        if section.is_empty() {
            root.insert(key.field.to_owned(), value);
        } else {
            let table = root.entry(section.to_owned()).or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, dict) = table {
                dict.insert(key.field.to_owned(), value);
            }
        }
    }
    Serialized::defaults(root)
}

/// `BOOKSTORE_<KEY>_FILE=path` sets a key to the file's content (one trailing newline dropped),
/// the way container platforms hand over secrets (`/run/secrets/<name>`). Any key the
/// environment may set can be given so, except where `<key>_file` is a key of its own
/// (`master_key_file`, which reads its file itself). Setting a key both ways is an error.
fn from_files() -> anyhow::Result<BTreeMap<&'static str, String>> {
    let mut given = BTreeMap::new();
    for (_, key) in keys().filter(|(_, k)| k.source != Source::File) {
        let own = format!("{}_file", key.flat);
        if keys().any(|(_, k)| k.flat == own) {
            continue;
        }
        let variable = format!("BOOKSTORE_{}", own.to_uppercase());
        // Empty is unset, as for any variable.
        let Some(file) = std::env::var_os(&variable).filter(|f| !f.is_empty()) else { continue };
        let direct = format!("BOOKSTORE_{}", key.flat.to_uppercase());
        anyhow::ensure!(
            std::env::var_os(&direct).is_none_or(|v| v.is_empty()),
            "invalid configuration: {} is set by both {direct} and {variable}; set one",
            key.flat
        );
        let text = std::fs::read_to_string(&file).with_context(|| {
            format!(
                "invalid configuration: {} (from {variable}): reading {}",
                key.flat,
                Path::new(&file).display()
            )
        })?;
        let text = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
        given.insert(key.flat, text.to_owned());
    }
    Ok(given)
}

impl clap::FromArgMatches for Flags {
    fn from_arg_matches(matches: &clap::ArgMatches) -> Result<Self, clap::Error> {
        let mut flags = Flags::default();
        for (_, key) in keys().filter(|(_, k)| k.source == Source::Flag) {
            if let Some(value) = matches.get_one::<String>(key.flat) {
                flags.given.insert(key.flat, value.clone());
            }
        }
        Ok(flags)
    }

    fn update_from_arg_matches(&mut self, matches: &clap::ArgMatches) -> Result<(), clap::Error> {
        *self = Self::from_arg_matches(matches)?;
        Ok(())
    }
}

impl clap::Args for Flags {
    /// One flag per key whose source allows it, with its help, variable and default.
    fn augment_args(command: clap::Command) -> clap::Command {
        let defaults = serde_json::to_value(Config::default()).unwrap_or_default();
        command.args(keys().filter(|(_, k)| k.source == Source::Flag).map(|(section, key)| {
            let default_value =
                if section.is_empty() { &defaults[key.field] } else { &defaults[section][key.field] };
            let generated = match default_value {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) if s.is_empty() => String::new(),
                serde_json::Value::String(s) => format!(" [default: {s}]"),
                other => format!(" [default: {other}]"),
            };
            // A key whose default is derived says so in its doc: `... [default: <data-dir>/x]`.
            let (text, default) = match key.help.split_once(" [default:") {
                Some((text, rest)) => (text, format!(" [default:{rest}")),
                None => (key.help, generated),
            };
            clap::Arg::new(key.flat)
                .long(key.flat.replace('_', "-"))
                .value_name(key.value_name)
                .help(format!("{text} [env: BOOKSTORE_{}]{default}", key.flat.to_uppercase()))
        }))
    }

    fn augment_args_for_update(command: clap::Command) -> clap::Command {
        Self::augment_args(command)
    }
}

impl Config {
    /// Layers the sources.
    pub fn load(file: Option<&Path>, flags: &Flags) -> anyhow::Result<Self> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(file) = file {
            anyhow::ensure!(file.exists(), "config file {} does not exist", file.display());
            figment = figment.merge(Toml::file(file));
        }
        // `BOOKSTORE_ORDERS_DATABASE_URL` is `orders.database_url`; other `BOOKSTORE_*`
        // variables (such as the tests' `BOOKSTORE_TEST_POSTGRES_URL`) are not configuration.
        let env = Env::prefixed("BOOKSTORE_").filter_map(|name| {
            keys()
                .find(|(_, k)| k.source != Source::File && name == k.flat)
                .map(|(section, key)| path(section, key).into())
        });
        figment = figment.merge(env).merge(provider_of(&from_files()?)).merge(flags.provider());
        check_unknown_keys(&figment)?;
        // Section by section: serde's `flatten` (the process keys) would lose the path of a bad
        // value, and the error must name its key.
        let config = Config {
            process: figment.extract().map_err(describe)?,
            gateway: figment.extract_inner(bookstore_gateway::Settings::NAME).map_err(describe)?,
            books: figment.extract_inner(bookstore_books::Settings::NAME).map_err(describe)?,
            users: figment.extract_inner(bookstore_users::Settings::NAME).map_err(describe)?,
            orders: figment.extract_inner(bookstore_orders::Settings::NAME).map_err(describe)?,
            fulfillment: figment.extract_inner(bookstore_fulfillment::Settings::NAME).map_err(describe)?,
            recommendations: figment
                .extract_inner(bookstore_recommendations::Settings::NAME)
                .map_err(describe)?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Every section's own checks.
    pub fn validate(&self) -> anyhow::Result<()> {
        self.process.validate()?;
        self.gateway.validate()?;
        self.books.validate()?;
        self.users.validate()?;
        self.orders.validate()?;
        self.fulfillment.validate()?;
        self.recommendations.validate()
    }

    /// The master key ([`bookstore_platform::crypto::load_master_key`]); `up` generates one in
    /// the data folder on first start, `serve` needs it configured.
    pub fn master_key(
        &self,
        mode: bookstore_platform::service::Mode,
    ) -> anyhow::Result<bookstore_platform::crypto::MasterKey> {
        let up = mode == bookstore_platform::service::Mode::Up;
        bookstore_platform::crypto::load_master_key(
            self.process.master_key.as_deref(),
            self.process.master_key_file.as_deref(),
            up.then_some(self.process.data_dir.as_path()),
            "users, orders and fulfillment keep personal data encrypted, so this process",
        )
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.process.request_timeout_ms)
    }

    /// Mutual TLS between services, when `mtls_*_file` are set: read now, so a bad file stops
    /// the start with its name.
    pub fn mutual_tls(&self) -> anyhow::Result<Option<bookstore_platform::tls::Mutual>> {
        let p = &self.process;
        match (&p.mtls_cert_file, &p.mtls_key_file, &p.mtls_ca_file) {
            (Some(cert), Some(key), Some(ca)) => bookstore_platform::tls::Mutual::load(cert, key, ca)
                .map(Some)
                .context("mutual TLS between services (mtls_cert_file, mtls_key_file, mtls_ca_file)"),
            _ => Ok(None),
        }
    }

    /// Where this process's spans go and how many it keeps. Its `service.name` is the service it
    /// runs, or `bookstore` when it runs several (each span names its own service as `service`).
    pub fn tracing(&self, services: &[&str]) -> bookstore_platform::trace::TracingSettings {
        let service_name = match services {
            [one] => (*one).to_owned(),
            _ => "bookstore".to_owned(),
        };
        bookstore_platform::trace::TracingSettings {
            otlp_endpoint: self.process.otlp_endpoint.clone(),
            // Checked when the configuration was read.
            otlp_protocol: self.process.otlp_protocol.parse().unwrap_or_default(),
            sample_ratio: self.process.trace_sample_ratio,
            service_name,
        }
    }

    /// How clients of peers balance, trip, eject and retry.
    pub fn resilience(&self) -> ResilienceConfig {
        let p = &self.process;
        ResilienceConfig {
            call_timeout: self.request_timeout(),
            breaker: BreakerConfig {
                max_failures: p.breaker_max_failures,
                reset_timeout: Duration::from_millis(p.breaker_reset_timeout_ms),
                backoff: p.breaker_backoff,
                max_reset_timeout: Duration::from_millis(p.breaker_max_reset_timeout_ms),
            },
            eject_after: p.eject_after_failures,
            ejection: Duration::from_millis(p.ejection_ms),
            max_ejected_percent: p.max_ejected_percent,
            retry_percent: p.retry_budget_percent as f32 / 100.0,
            max_attempts: p.retry_max_attempts,
            ..ResilienceConfig::default()
        }
    }

    /// A database in the data folder: `sqlite://<data_dir>/<file>`.
    pub fn sqlite_in_data_dir(&self, file: &str) -> String {
        format!("sqlite://{}", self.process.data_dir.join(file).display())
    }

    pub fn event_log_url(&self) -> String {
        self.process.event_log_url.clone().unwrap_or_else(|| self.sqlite_in_data_dir("events.db"))
    }

    /// The effective configuration as the file would spell it, secrets and passwords in URLs
    /// redacted (`bookstore config`).
    pub fn to_redacted_toml(&self) -> anyhow::Result<String> {
        let mut value = toml::Value::try_from(self)?;
        for (section, key) in keys() {
            let table = if section.is_empty() { Some(&mut value) } else { value.get_mut(section) };
            let Some(slot) = table.and_then(|t| t.get_mut(key.field)) else { continue };
            if let toml::Value::String(text) = slot {
                *text = if key.source == Source::Secret { "<redacted>".to_owned() } else { redact_url(text) };
            }
        }
        Ok(toml::to_string(&value)?)
    }
}

/// A URL without its password, for printing.
pub fn redact_url(text: &str) -> String {
    match url::Url::parse(text) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => text.to_owned(),
    }
}

/// A misspelt key would otherwise be ignored in silence; this names it and its source.
fn check_unknown_keys(figment: &Figment) -> anyhow::Result<()> {
    let known: Vec<String> = keys().map(|(section, key)| path(section, key)).collect();
    let sections: Vec<&str> = sections().iter().map(|(name, _)| *name).filter(|n| !n.is_empty()).collect();
    let data = figment.data().map_err(describe)?;
    let mut unknown = Vec::new();
    for dict in data.values() {
        for (name, value) in dict {
            match value {
                Value::Dict(_, inner) if sections.contains(&name.as_str()) => {
                    for field in inner.keys() {
                        let dotted = format!("{name}.{field}");
                        if !known.contains(&dotted) {
                            unknown.push(dotted);
                        }
                    }
                }
                _ if known.contains(name) => {}
                _ => unknown.push(name.clone()),
            }
        }
    }
    if unknown.is_empty() {
        return Ok(());
    }
    let named: Vec<String> = unknown
        .iter()
        .map(|key| match figment.find_metadata(key).and_then(|m| m.source.as_ref()) {
            Some(source) => format!("{key} (from {source})"),
            None => key.clone(),
        })
        .collect();
    anyhow::bail!("invalid configuration: unknown key {}", named.join(", "))
}

/// Names the key, and where its bad value came from, in every error.
fn describe(errors: figment::Error) -> anyhow::Error {
    let lines: Vec<String> = errors
        .into_iter()
        .map(|err| {
            // figment orders the path of a section's error as it pleases (`http.gateway` from
            // `extract_inner`); match the key by its parts instead.
            let parts: Vec<String> = err.path.iter().map(|p| p.to_lowercase()).collect();
            let key = keys().find(|(section, key)| {
                let mut want = vec![key.field];
                if !section.is_empty() {
                    want.push(section);
                }
                parts.len() == want.len() && want.iter().all(|w| parts.iter().any(|p| p == w))
            });
            // Name the key as the environment and the flags spell it.
            let flat = key.map_or_else(|| parts.join("."), |(_, k)| k.flat.to_owned());
            let source = match &err.metadata {
                Some(m) if m.name.contains("environment") => {
                    format!(" (from BOOKSTORE_{})", flat.to_uppercase())
                }
                Some(m) => match &m.source {
                    Some(source) => format!(" (from {source})"),
                    None => format!(" (from {})", m.name),
                },
                None => String::new(),
            };
            format!("{flat}{source}: {}", err.kind)
        })
        .collect();
    anyhow::anyhow!("invalid configuration: {}", lines.join("; "))
}

#[cfg(test)]
// figment's test jail returns its own large error type; that is its API, not ours.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn flags(pairs: &[(&str, &str)]) -> Flags {
        let mut flags = Flags::default();
        for (flat, value) in pairs {
            flags.set(flat, *value);
        }
        flags
    }

    #[test]
    fn each_layer_overrides_the_one_below() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "bookstore.toml",
                "request_timeout_ms = 7\n[gateway]\nhttp = \"127.0.0.1:1001\"\nmax_body_bytes = 2048\n",
            )?;
            let file = Some(Path::new("bookstore.toml"));

            let c = Config::load(file, &Flags::default()).unwrap();
            assert_eq!(
                (c.gateway.http.port(), c.gateway.max_body_bytes, c.process.request_timeout_ms),
                (1001, 2048, 7)
            );

            jail.set_env("BOOKSTORE_HTTP", "127.0.0.1:1002");
            let c = Config::load(file, &Flags::default()).unwrap();
            assert_eq!(c.gateway.http.port(), 1002, "environment beats file");
            assert_eq!(c.gateway.max_body_bytes, 2048, "file beats default");

            let c = Config::load(file, &flags(&[("http", "127.0.0.1:1003")])).unwrap();
            assert_eq!(c.gateway.http.port(), 1003, "flag beats environment");
            Ok(())
        });
    }

    #[test]
    fn pass_through_routes_come_from_the_file_and_are_checked() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "bookstore.toml",
                "[[gateway.routes]]\nprefix = \"/ext/inventory\"\nstrip_prefix = true\n\
                 backends = [{ url = \"http://127.0.0.1:9001\", weight = 3 }, { url = \"http://127.0.0.1:9002\" }]\n",
            )?;
            let c = Config::load(Some(Path::new("bookstore.toml")), &Flags::default()).unwrap();
            let route = &c.gateway.routes[0];
            assert_eq!((route.prefix.as_str(), route.strip_prefix), ("/ext/inventory", true));
            let weights: Vec<u32> = route.backends.iter().map(|b| b.weight).collect();
            assert_eq!(weights, [3, 1], "weight defaults to 1");

            jail.create_file(
                "bad.toml",
                "[[gateway.routes]]\nprefix = \"/api/x\"\nbackends = [{ url = \"http://a:1\" }]\n",
            )?;
            let err = Config::load(Some(Path::new("bad.toml")), &Flags::default()).unwrap_err();
            assert!(format!("{err:#}").contains("the gateway's own"), "{err:#}");
            Ok(())
        });
    }

    #[test]
    fn a_key_is_read_from_the_file_its_file_variable_names() {
        figment::Jail::expect_with(|jail| {
            // A password that looks like a list stays text; one trailing newline is dropped.
            jail.create_file("secret", "[not, a, list]\n")?;
            jail.create_file("url", "postgres://orders:pw@postgres:5432/orders\n")?;
            jail.create_file("timeout", "1234")?;
            jail.set_env("BOOKSTORE_ORDERS_CLIENT_SECRET_FILE", "secret");
            jail.set_env("BOOKSTORE_ORDERS_DATABASE_URL_FILE", "url");
            jail.set_env("BOOKSTORE_REQUEST_TIMEOUT_MS_FILE", "timeout");
            let c = Config::load(None, &Flags::default()).unwrap();
            assert_eq!(c.orders.client_secret.as_deref(), Some("[not, a, list]"));
            assert_eq!(c.orders.database_url.as_deref(), Some("postgres://orders:pw@postgres:5432/orders"));
            assert_eq!(c.process.request_timeout_ms, 1234, "a number from a file is a number");

            let flag = flags(&[("orders_database_url", "sqlite:///tmp/flag.db")]);
            let c = Config::load(None, &flag).unwrap();
            assert_eq!(
                c.orders.database_url.as_deref(),
                Some("sqlite:///tmp/flag.db"),
                "a flag beats a file"
            );

            jail.set_env("BOOKSTORE_ORDERS_CLIENT_SECRET", "direct");
            let err = format!("{:#}", Config::load(None, &Flags::default()).unwrap_err());
            assert!(
                err.contains("BOOKSTORE_ORDERS_CLIENT_SECRET and BOOKSTORE_ORDERS_CLIENT_SECRET_FILE"),
                "{err}"
            );
            jail.set_env("BOOKSTORE_ORDERS_CLIENT_SECRET", ""); // empty is unset
            let c = Config::load(None, &Flags::default()).unwrap();
            assert_eq!(
                c.orders.client_secret.as_deref(),
                Some("[not, a, list]"),
                "an empty variable gives way"
            );
            jail.set_env("BOOKSTORE_ORDERS_CLIENT_SECRET_FILE", "");
            let c = Config::load(None, &Flags::default()).unwrap();
            assert_eq!(c.orders.client_secret.as_deref(), Some(""), "an empty file variable is unset too");

            jail.set_env("BOOKSTORE_ORDERS_DATABASE_URL_FILE", "missing");
            let err = format!("{:#}", Config::load(None, &Flags::default()).unwrap_err());
            assert!(
                err.contains(
                    "orders_database_url (from BOOKSTORE_ORDERS_DATABASE_URL_FILE): reading missing"
                ),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn a_flat_name_and_a_sectioned_key_are_the_same_setting() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("a.toml", "[orders]\ndatabase_url = \"sqlite:///tmp/from-file.db\"\n")?;
            let c = Config::load(Some(Path::new("a.toml")), &Flags::default()).unwrap();
            assert_eq!(c.orders.database_url.as_deref(), Some("sqlite:///tmp/from-file.db"));

            jail.set_env("BOOKSTORE_ORDERS_DATABASE_URL", "sqlite:///tmp/from-env.db");
            let c = Config::load(Some(Path::new("a.toml")), &Flags::default()).unwrap();
            assert_eq!(c.orders.database_url.as_deref(), Some("sqlite:///tmp/from-env.db"));

            let c =
                Config::load(None, &flags(&[("orders_database_url", "sqlite:///tmp/from-flag.db")])).unwrap();
            assert_eq!(c.orders.database_url.as_deref(), Some("sqlite:///tmp/from-flag.db"));
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

            jail.clear_env();
            for (var, key) in [
                ("BOOKSTORE_ORDERS_DATABASE_URL", "orders_database_url"),
                ("BOOKSTORE_EVENT_LOG_URL", "event_log_url"),
                ("BOOKSTORE_AMQP_URL", "amqp_url"),
                ("BOOKSTORE_BOOKS_URL", "books_url"),
                ("BOOKSTORE_OTLP_ENDPOINT", "otlp_endpoint"),
            ] {
                jail.set_env(var, "nonsense://x");
                let err = Config::load(None, &Flags::default()).unwrap_err().to_string();
                assert!(err.contains(key), "{var}: {err}");
                jail.clear_env();
            }
            for ratio in ["1.5", "-0.1"] {
                jail.set_env("BOOKSTORE_TRACE_SAMPLE_RATIO", ratio);
                let err = Config::load(None, &Flags::default()).unwrap_err().to_string();
                assert!(err.contains("trace_sample_ratio must be between 0 and 1"), "{ratio}: {err}");
                jail.clear_env();
            }
            // TLS files with a plain URL would not be used: refused, as an unverified broker is.
            for url in ["amqp://broker/%2f?cacertfile=/etc/ca.pem", "amqps://broker/%2f?verify=verify_none"] {
                jail.set_env("BOOKSTORE_AMQP_URL", url);
                let err = Config::load(None, &Flags::default()).unwrap_err().to_string();
                assert!(err.contains("amqp_url"), "{url}: {err}");
            }
            jail.set_env("BOOKSTORE_AMQP_URL", "amqps://broker/%2f?cacertfile=/etc/ca.pem");
            Config::load(None, &Flags::default()).expect("TLS to the broker");
            jail.clear_env();
            jail.set_env("BOOKSTORE_MTLS_CA_FILE", "/etc/shop/ca.pem");
            let err = Config::load(None, &Flags::default()).unwrap_err().to_string();
            assert!(err.contains("mtls_cert_file"), "a CA without the process's certificate: {err}");
            jail.clear_env();
            jail.set_env("BOOKSTORE_TLS_CERT_FILE", "/etc/shop/cert.pem");
            let err = Config::load(None, &Flags::default()).unwrap_err().to_string();
            assert!(err.contains("tls_key_file"), "a certificate without its key: {err}");
            Ok(())
        });
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_that_names_it() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("typo.toml", "[books]\ndatabse_url = \"sqlite:///x.db\"\n")?;
            let err = Config::load(Some(Path::new("typo.toml")), &Flags::default()).unwrap_err().to_string();
            assert!(err.contains("unknown key books.databse_url"), "{err}");
            assert!(err.contains("typo.toml"), "names the file: {err}");
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
    fn flat_names_are_unique_across_sections() {
        let mut flat: Vec<&str> = keys().map(|(_, k)| k.flat).collect();
        let count = flat.len();
        flat.sort_unstable();
        flat.dedup();
        assert_eq!(flat.len(), count, "two keys share a flat name");
    }

    #[test]
    fn every_key_is_documented_in_the_readme() {
        let readme = include_str!("../../../README.md");
        for (section, key) in keys() {
            let flat = format!("`{}`", key.flat);
            assert!(readme.contains(&flat), "README's configuration table lacks {flat}");
            let file_key = format!("`{}`", path(section, key));
            let short = format!("`{section}.{}`", key.field);
            assert!(readme.contains(&file_key) || readme.contains(&short), "README lacks {file_key}");
        }
    }

    #[test]
    fn printed_configuration_redacts_secrets_and_url_passwords() {
        let mut config = Config::default();
        config.process.master_key = Some("c2VjcmV0".into());
        config.users.admin_password = Some("hunter2 hunter2".into());
        config.orders.client_secret = Some("s3cr3t".into());
        config.books.database_url = Some("postgres://shop:pa55word@db/books".into());
        let text = config.to_redacted_toml().unwrap();
        for secret in ["c2VjcmV0", "hunter2", "s3cr3t", "pa55word"] {
            assert!(!text.contains(secret), "{secret} leaked:\n{text}");
        }
        assert!(text.contains("[books]") && text.contains("postgres://shop:***@db/books"), "{text}");
        let reparsed: Config = toml::from_str(&text).unwrap();
        assert_eq!(reparsed.gateway, config.gateway, "the output reads back as a config file");
    }

    #[test]
    fn the_embedded_event_log_lives_in_the_data_dir() {
        let mut c = Config::default();
        c.process.data_dir = PathBuf::from("/tmp/x");
        assert_eq!(c.event_log_url(), "sqlite:///tmp/x/events.db");
    }
}
