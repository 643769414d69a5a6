//! The `bookstore` binary's library: configuration, the list of services, and their assembly
//! into one process. `main.rs` only parses the command line.
//!
//! [`SERVICES`] is the one list: `up`, `serve` and `migrate` iterate over it. Each entry names a
//! service crate's [`Spec`], its configuration section and its `build`; [`App::start`] binds
//! every chosen service's listener, works out where each peer is, opens what each spec asks
//! for (database, bus), builds the services in order and serves them, with the operational
//! endpoints on one admin listener. The end-to-end tests start it on port 0.
#![forbid(unsafe_code)]

pub mod backup;
pub mod config;
pub mod move_data;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bookstore_api::users::v1::GetJwksRequest;
use bookstore_api::users::v1::user_service_client::UserServiceClient;
use bookstore_platform::auth::{JwksSource, Verifier};
use bookstore_platform::balance::PeerChannel;
use bookstore_platform::db::{Database, Migrations, PoolConfig};
use bookstore_platform::etcd::{Etcd, Registration};
use bookstore_platform::events::{Bus, DeadLetterAdmin, EventLog, OUTBOX_MIGRATIONS, RabbitBus};
use bookstore_platform::local::{self, LocalServices};
use bookstore_platform::service::{Built, Context, Endpoint, LocalTokens, Mode, Process, Spec, Tasks};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

type BuildFuture = Pin<Box<dyn Future<Output = anyhow::Result<Built>> + Send>>;

/// A service as the process knows it: its spec, where it listens and is found, how it is built.
pub struct Entry {
    pub spec: &'static Spec,
    endpoint: fn(&Config) -> &dyn Endpoint,
    build: fn(Context, &Config) -> BuildFuture,
}

impl Entry {
    pub fn name(&self) -> &'static str {
        self.spec.name
    }

    /// The migrations of its database: its own, and platform's outbox and inbox when it uses
    /// the bus. Empty when it keeps no data.
    pub fn migrations(&self) -> Vec<&'static Migrations> {
        let mut sets: Vec<&'static Migrations> = self.spec.migrations.into_iter().collect();
        if self.spec.uses_bus && !sets.is_empty() {
            sets.push(&OUTBOX_MIGRATIONS);
        }
        sets
    }

    /// Its database URL: as configured, else SQLite in the data folder.
    pub fn database_url(&self, config: &Config) -> String {
        (self.endpoint)(config)
            .database_url()
            .map_or_else(|| config.sqlite_in_data_dir(&format!("{}.db", self.spec.name)), str::to_owned)
    }
}

/// Every service, in start order: what others depend on first (users issues the tokens the
/// others verify; the gateway calls all of them).
pub static SERVICES: [Entry; 6] = [
    Entry {
        spec: &bookstore_users::SPEC,
        endpoint: |c| &c.users,
        build: |ctx, c| Box::pin(bookstore_users::build(ctx, c.users.clone())),
    },
    Entry {
        spec: &bookstore_books::SPEC,
        endpoint: |c| &c.books,
        build: |ctx, c| Box::pin(bookstore_books::build(ctx, c.books.clone())),
    },
    Entry {
        spec: &bookstore_orders::SPEC,
        endpoint: |c| &c.orders,
        build: |ctx, c| Box::pin(bookstore_orders::build(ctx, c.orders.clone())),
    },
    Entry {
        spec: &bookstore_fulfillment::SPEC,
        endpoint: |c| &c.fulfillment,
        build: |ctx, c| Box::pin(bookstore_fulfillment::build(ctx, c.fulfillment.clone())),
    },
    Entry {
        spec: &bookstore_recommendations::SPEC,
        endpoint: |c| &c.recommendations,
        build: |ctx, c| Box::pin(bookstore_recommendations::build(ctx, c.recommendations.clone())),
    },
    Entry {
        spec: &bookstore_gateway::SPEC,
        endpoint: |c| &c.gateway,
        build: |ctx, c| Box::pin(bookstore_gateway::build(ctx, c.gateway.clone())),
    },
];

/// Every consumer of the bus among the services (each a queue of its own on RabbitMQ), in the
/// order of [`CONSUMED_BY`].
pub const CONSUMERS: [&str; CONSUMED_BY.len()] = {
    let mut names = [""; CONSUMED_BY.len()];
    let mut i = 0;
    while i < names.len() {
        names[i] = CONSUMED_BY[i].0;
        i += 1;
    }
    names
};

/// Each consumer of the bus, the service it belongs to, and the event types it takes: a process
/// serves the dead letters of its own services' consumers on its admin listener, and on
/// RabbitMQ declares their queues before it starts.
pub const CONSUMED_BY: [(&str, &str, &[&str]); 3] = [
    (bookstore_fulfillment::events::CONSUMER, "fulfillment", &bookstore_fulfillment::events::TYPES),
    (bookstore_orders::follow::CONSUMER, "orders", &bookstore_orders::follow::TYPES),
    (
        bookstore_recommendations::events::CONSUMER,
        "recommendations",
        &bookstore_recommendations::events::TYPES,
    ),
];

/// Declares the queues of the consumers in `consumers` (with their types) on the bus, all at
/// once, so that nothing published before a consumer first connects is dropped.
pub async fn declare_consumers(bus: &Bus, consumers: &[(&str, &str, &[&str])]) -> anyhow::Result<()> {
    let declared = consumers.iter().map(|(consumer, _, types)| bus.declare_consumer(consumer, types));
    futures::future::try_join_all(declared).await?;
    Ok(())
}

/// An event's payload for a person (a dead letter's, [`bookstore_platform::events::dead`]):
/// the protobuf message of each type the services publish, as its fields. Personal data is not
/// in events in the clear (a shipping address travels sealed).
pub fn describe_payload(event_type: &str, payload: &[u8]) -> Option<String> {
    use bookstore_api::{fulfillment::v1 as fulfillment, orders::v1 as orders, users::v1 as users};
    use prost::Message;
    fn shown<M: Message + Default + std::fmt::Debug>(payload: &[u8]) -> Option<String> {
        Some(M::decode(payload).map_or_else(|e| format!("undecodable: {e}"), |m| format!("{m:?}")))
    }
    match event_type {
        "OrderPlaced" => shown::<orders::OrderPlaced>(payload),
        "OrderCancelled" => shown::<orders::OrderCancelled>(payload),
        "OrderStatusChanged" => shown::<orders::OrderStatusChanged>(payload),
        "TaskStateChanged" => shown::<fulfillment::TaskStateChanged>(payload),
        "TokensRevoked" => shown::<users::TokensRevoked>(payload),
        _ => None,
    }
}

/// Every per-replica subscription among the services (each a stream of its own on RabbitMQ).
pub const SUBSCRIPTIONS: [&str; 2] =
    [bookstore_orders::live::SUBSCRIPTION, bookstore_platform::revocation::SUBSCRIPTION];

/// How long a start waits to have read back the revocations published before it.
const CATCH_UP: Duration = Duration::from_secs(10);

/// The names `serve` accepts.
pub fn service_names() -> Vec<&'static str> {
    SERVICES.iter().map(Entry::name).collect()
}

/// Running services in this process.
pub struct App {
    /// Where each service of this process listens, by name.
    pub addrs: BTreeMap<&'static str, SocketAddr>,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin_addr: SocketAddr,
    /// Lines for whoever started the process, shown once (a generated admin password).
    pub notices: Vec<String>,
    /// Cancelled to stop the whole process.
    shutdown: CancellationToken,
    process: Process,
}

impl App {
    /// Starts the services named in `chosen` (all of them for `up`).
    pub async fn start(chosen: &[&str], config: &Config, mode: Mode) -> anyhow::Result<Self> {
        for name in chosen {
            anyhow::ensure!(service_names().contains(name), "no service named {name:?}");
        }
        let entries: Vec<&Entry> = SERVICES.iter().filter(|e| chosen.contains(&e.name())).collect();

        // Bind every listener first, so each service knows where the others are.
        let mut listeners = Vec::new();
        for entry in &entries {
            let addr = (entry.endpoint)(config).listen();
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {} on {addr}", entry.name()))?;
            listeners.push(listener);
        }
        let mut peers = BTreeMap::new();
        for entry in &SERVICES {
            let endpoint = (entry.endpoint)(config);
            let here = entries.iter().position(|e| e.name() == entry.name());
            let url = match (endpoint.url(), here) {
                (Some(url), _) => url.to_owned(),
                (None, Some(i)) => local::url_of(listeners[i].local_addr()?),
                (None, None) => format!("http://{}", endpoint.listen()),
            };
            peers.insert(entry.name(), url);
        }
        // A peer served by this process is called in process, at the address it listens on.
        let local = match config.process.local_calls {
            true => LocalServices::new(
                listeners.iter().map(TcpListener::local_addr).collect::<std::io::Result<Vec<_>>>()?,
            ),
            false => LocalServices::default(),
        };
        let mutual = config.mutual_tls()?;
        let peer_tls = mutual.as_ref().map(|m| m.client.clone());
        // One channel to users serves both the token keys and the audit trail.
        let users =
            PeerChannel::connect("process", "users", &peers["users"], config.resilience(), peer_tls.clone())
                .await?;
        let verifier = verifier(users.clone(), Duration::from_millis(config.process.jwks_refresh_ms));

        let tasks = Tasks::new();
        let mut process = Process::new(tasks.clone());
        process.call_in_process(local.clone());
        // Every process verifies tokens, so every process follows the revocations on the bus.
        let bus = open_bus(config, &mut process).await?;
        // This process's consumers' queues exist before it is started: what any process
        // publishes from now on is kept for them. With the broker away, the consumers declare
        // them when they connect.
        let ours: Vec<_> =
            CONSUMED_BY.iter().filter(|(_, service, _)| chosen.contains(service)).copied().collect();
        match tokio::time::timeout(Duration::from_secs(5), declare_consumers(&bus, &ours)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "consumers' queues not declared at start")
            }
            Err(_) => tracing::warn!("consumers' queues not declared within 5 s of the start"),
        }
        let (caught_up, following) =
            bookstore_platform::revocation::follow(bus.clone(), verifier.clone(), tasks.stopping());
        tasks.spawn("revocations", following);
        let check = caught_up.clone();
        process.ready_when("revocations", move || {
            let caught_up = check.now();
            async move {
                anyhow::ensure!(caught_up, "still reading back the revocations published before the start");
                Ok(())
            }
        });
        let bus = Some(bus);
        let mode_data_dir = config.process.data_dir.clone();
        let master_key = match entries.iter().any(|e| e.spec.uses_master_key) {
            true => Some(config.master_key(mode)?),
            false => None,
        };
        let mut local_tokens: Option<LocalTokens> = None;
        let mut addrs = BTreeMap::new();
        let mut notices = Vec::new();
        for (entry, listener) in entries.iter().zip(listeners) {
            let sets = entry.migrations();
            let database = match sets.is_empty() {
                false => {
                    let db = connect(&entry.database_url(config), config, &sets, entry.name()).await?;
                    process.own_database(db.clone());
                    Some(db)
                }
                true => None,
            };
            let ctx = Context {
                name: entry.name(),
                mode,
                data_dir: mode_data_dir.clone(),
                database,
                bus: entry.spec.uses_bus.then(|| bus.clone()).flatten(),
                peers: peers.clone(),
                verifier: verifier.clone(),
                local_tokens: local_tokens.clone(),
                master_key: entry.spec.uses_master_key.then(|| master_key.clone()).flatten(),
                request_timeout: config.request_timeout(),
                resilience: config.resilience(),
                peer_tls: peer_tls.clone(),
                board: process.board(),
                local: local.clone(),
                tasks: tasks.clone(),
            };
            let mut built =
                (entry.build)(ctx, config).await.with_context(|| format!("starting {}", entry.name()))?;
            // Every service but the gateway answers its peers alone: with mutual TLS on, only
            // to callers that show a certificate the deployment's CA signed.
            if entry.name() != bookstore_gateway::SPEC.name {
                built.tls = mutual.as_ref().map(|m| m.acceptor.clone());
            }
            if built.local_tokens.is_some() {
                local_tokens.clone_from(&built.local_tokens);
            }
            notices.extend(built.notices.iter().cloned());
            let bound = process.serve(entry.name(), listener, built)?;
            addrs.insert(entry.name(), bound);
            if let (Mode::Serve, Some(registry), Some((advertised, weight))) =
                (mode, &config.process.registry_url, (entry.endpoint)(config).announce())
            {
                let (endpoints, _) = bookstore_platform::etcd::parse_url(registry)?;
                let advertised = advertised.map(str::to_owned);
                let (name, instance) = (entry.name(), uuid::Uuid::now_v7().simple().to_string());
                let (etcd, draining, stopping) =
                    (Etcd::new(endpoints.clone()), process.draining(), tasks.stopping());
                // Deregisters as soon as the process starts to stop (before its listeners
                // drain), then waits for the rest of the background work to be told.
                tasks.spawn("registration", async move {
                    let addr = match advertised {
                        Some(addr) => Some(addr),
                        None => bookstore_platform::etcd::reachable_addr(&endpoints, bound, &draining)
                            .await
                            .map(|a| a.to_string()),
                    };
                    if let Some(addr) = addr {
                        let version = env!("CARGO_PKG_VERSION").to_owned();
                        let registration = Registration { addr, weight, version };
                        bookstore_platform::etcd::register(etcd, name, &instance, registration, draining)
                            .await;
                    }
                    stopping.cancelled().await;
                });
            }
        }
        // Not started until a token revoked before the start is refused: the bus answers in
        // moments; when it is away, the process starts unready and becomes ready once caught up.
        if !caught_up.wait(CATCH_UP).await {
            tracing::warn!("revocations not read back within {CATCH_UP:?}: not ready until they are");
        }
        let consumers: Vec<&'static str> = ours.iter().map(|(c, ..)| *c).collect();
        if let (Some(bus), false) = (&bus, consumers.is_empty()) {
            process.admin_routes(bookstore_platform::events::dead::admin_routes(DeadLetterAdmin {
                bus: bus.clone(),
                consumers,
                verifier: verifier.clone(),
                describe: describe_payload,
                audit: Some(audit_sink(users)),
            }));
        }
        let admin = TcpListener::bind(config.process.admin_http)
            .await
            .with_context(|| format!("binding admin_http {}", config.process.admin_http))?;
        let admin_addr = process.serve_admin(admin)?;
        Ok(App { addrs, admin_addr, notices, shutdown: CancellationToken::new(), process })
    }

    /// Where the service `name` of this process listens.
    pub fn addr(&self, name: &str) -> Option<SocketAddr> {
        self.addrs.get(name).copied()
    }

    /// A token that stops every service when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Tells the background tasks (relays, consumers, sweepers) to stop now, without waiting:
    /// for a test that drops the app and then removes what its consumers were reading.
    pub fn stop_background(&self) {
        self.process.stopping().cancel();
    }

    /// Waits for the shutdown token, then stops in order: readiness 503, listeners drain (last
    /// started first), background tasks finish their unit of work, pools close.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.shutdown.cancelled().await;
        self.process.stop().await
    }
}

/// The bus between services: RabbitMQ when `amqp_url` is set, else the embedded event log.
async fn open_bus(config: &Config, process: &mut Process) -> anyhow::Result<Bus> {
    let (bus, db) = bus(config).await?;
    if let Some(db) = db {
        process.own_database(db);
    }
    Ok(bus)
}

/// The deployment's bus, for an admin command (or a process): RabbitMQ when `amqp_url` is set,
/// else the embedded event log, with its database to close.
pub async fn bus(config: &Config) -> anyhow::Result<(Bus, Option<Database>)> {
    Ok(match &config.process.amqp_url {
        Some(url) => {
            let mut rabbit = RabbitBus::new(url.clone()).context("amqp_url")?;
            rabbit.namespace.clone_from(&config.process.amqp_namespace);
            (Bus::Rabbit(Arc::new(rabbit)), None)
        }
        None => {
            let db = Database::connect(&config.event_log_url(), &PoolConfig::default())
                .await
                .context("event log")?;
            (Bus::Log(EventLog::open(db.clone()).await?), Some(db))
        }
    })
}

/// Writes an admin's action on the admin listener (a dead-letter replay or discard) to the audit
/// trail the users service keeps, as the gateway does for the API's.
fn audit_sink(users: PeerChannel) -> bookstore_platform::events::dead::AuditSink {
    Arc::new(move |record| {
        let users = users.clone();
        Box::pin(async move {
            let entry = bookstore_api::users::v1::RecordAuditRequest {
                action: record.action,
                target: record.target,
                status: i32::from(record.status),
                request_id: record.request_id,
                address: record.address,
            };
            let mut request = tonic::Request::new(entry);
            request.set_timeout(Duration::from_secs(5));
            request.metadata_mut().insert("authorization", format!("Bearer {}", record.token).parse()?);
            UserServiceClient::new(users).record_audit(request).await?;
            Ok(())
        })
    })
}

/// Connects to a service's database and brings its schema up to date with `migrations`.
pub async fn connect(
    url: &str,
    config: &Config,
    migrations: &[&Migrations],
    service: &str,
) -> anyhow::Result<Database> {
    // A request waits for a connection as long as its deadline lets it: under a burst it takes its
    // turn, instead of failing at a shorter timeout of the pool's own while its caller still waits.
    let pool = PoolConfig {
        max_connections: config.process.db_max_connections,
        acquire_timeout: Duration::from_millis(config.process.request_timeout_ms),
        ..PoolConfig::default()
    };
    let db = Database::connect(url, &pool).await.with_context(|| format!("{service} database"))?;
    db.migrate_all(migrations).await.with_context(|| format!("{service} migrations"))?;
    Ok(db)
}

/// Applies every service's migrations, and the event log's when it is the bus; one line per
/// database for the operator.
pub async fn migrate(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut done = Vec::new();
    for entry in SERVICES.iter() {
        let sets = entry.migrations();
        if sets.is_empty() {
            continue;
        }
        let url = entry.database_url(config);
        connect(&url, config, &sets, entry.name()).await?.close().await;
        done.push(format!("{}: migrations applied to {}", entry.name(), config::redact_url(&url)));
    }
    if config.process.amqp_url.is_some() {
        // Every consumer's queue, before any service publishes (a deployment runs this first).
        let (bus, _) = bus(config).await?;
        declare_consumers(&bus, &CONSUMED_BY).await.context("declaring the consumers' queues on RabbitMQ")?;
        done.push(format!(
            "RabbitMQ: the queues of {} declared (namespace {})",
            CONSUMERS.join(", "),
            config.process.amqp_namespace
        ));
    } else {
        let url = config.event_log_url();
        let db = Database::connect(&url, &PoolConfig::default()).await.context("event log")?;
        EventLog::open(db.clone()).await?;
        db.close().await;
        done.push(format!("event log: migrations applied to {}", config::redact_url(&url)));
    }
    Ok(done)
}

/// A token verifier whose keys come from the users service over `channel`.
pub fn verifier(channel: PeerChannel, min_refresh: Duration) -> Arc<Verifier> {
    let source: JwksSource = Arc::new(move || {
        let mut client = UserServiceClient::new(channel.clone());
        Box::pin(async move {
            let mut request = tonic::Request::new(GetJwksRequest {});
            request.set_timeout(Duration::from_secs(2));
            let json = client.get_jwks(request).await?.into_inner().jwks_json;
            Ok(serde_json::from_str::<jsonwebtoken::jwk::JwkSet>(&json)?)
        })
    });
    Arc::new(Verifier::new(source, min_refresh))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a migration may not do while the previous release still runs against the database:
    /// drop or rename what it reads, or change a column's type under it.
    fn contracts(sql: &str) -> Vec<String> {
        let mut found = Vec::new();
        for line in sql.lines() {
            let code = line.split("--").next().unwrap_or_default().to_uppercase();
            let words: Vec<&str> = code.split_whitespace().collect();
            // `ALTER TABLE t DROP c` needs no COLUMN: any DROP or RENAME counts.
            let dropped_or_renamed = words.iter().any(|w| matches!(*w, "DROP" | "RENAME"));
            let retyped = words.contains(&"ALTER") && words.contains(&"TYPE");
            if dropped_or_renamed || retyped {
                found.push(line.trim().to_owned());
            }
        }
        found
    }

    #[test]
    fn migrations_only_expand_so_the_previous_release_runs_against_a_migrated_database() {
        let mut sets: Vec<(&str, &Migrations)> =
            SERVICES.iter().flat_map(|e| e.migrations().into_iter().map(move |m| (e.name(), m))).collect();
        sets.push(("events", &bookstore_platform::events::log::LOG_MIGRATIONS));
        let mut checked = 0;
        for (service, set) in sets {
            for migration in set.postgres.migrations.iter().chain(set.sqlite.migrations.iter()) {
                checked += 1;
                // A contraction is allowed once the release before it no longer reads what it
                // removes; the migration says so on a line of its own.
                if migration.sql.contains("-- contract:") {
                    continue;
                }
                let found = contracts(&migration.sql);
                assert!(
                    found.is_empty(),
                    "{service} migration {} ({}) contracts the schema: {found:?}; expand now, and \
                     contract in a later release with a `-- contract: <why it is safe>` line",
                    migration.version,
                    migration.description
                );
            }
        }
        assert!(checked > 20, "every service's migrations were read ({checked})");
    }

    #[test]
    fn a_contraction_is_found_in_any_of_its_spellings() {
        assert_eq!(contracts("ALTER TABLE books DROP COLUMN isbn;").len(), 1);
        assert_eq!(contracts("drop table books;").len(), 1);
        assert_eq!(contracts("ALTER TABLE books DROP isbn;").len(), 1);
        assert_eq!(contracts("ALTER TABLE books RENAME COLUMN a TO b;").len(), 1);
        assert_eq!(contracts("ALTER TABLE books ALTER COLUMN stock TYPE TEXT;").len(), 1);
        assert!(contracts("-- we never drop table books\nALTER TABLE books ADD COLUMN x TEXT;").is_empty());
        assert!(contracts("CREATE TABLE drops (event_type TEXT NOT NULL);").is_empty());
    }
}
