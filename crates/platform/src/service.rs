//! The service contract: how a service crate plugs into a process.
//!
//! A service crate exposes a [`Spec`] (its name, its migrations, whether it uses the event bus)
//! and one `build(ctx: Context, settings: Settings) -> anyhow::Result<Built>`. The process
//! (`crates/bookstore/src/lib.rs`) gives every service a [`Context`]: its database opened and
//! migrated, the bus, URLs of its peers, the token verifier, and a [`Tasks`] to run its
//! background work under. `build` returns what must be served: its router, its readiness
//! checks, and lines to show the operator. `up`, `serve` and `migrate` iterate over one list of
//! these; adding a service is a crate and a line in that list.
//!
//! Shutdown, in order (see [`Tasks`]): readiness turns 503 and the listeners stop accepting and
//! drain their requests; then background tasks are told to stop, finish the unit of work in
//! hand, and are waited for; then the pools close.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{TokenSource, Verifier};
use crate::balance::{Board, PeerChannel, ResilienceConfig, tonic_connector};
use crate::db::{Database, Migrations};
use crate::events::Bus;
use crate::local::LocalServices;
use crate::server::ReadinessCheck;

/// What the process must know of a service before building it.
pub struct Spec {
    /// The service's name: its config section, its metrics' `service` label, its log field.
    pub name: &'static str,
    /// Its schema, when it keeps data; the process opens and migrates its database.
    pub migrations: Option<&'static Migrations>,
    /// Whether it publishes or consumes events: the process then opens the bus, and adds
    /// platform's outbox and inbox tables to its database (`events::OUTBOX_MIGRATIONS`).
    pub uses_bus: bool,
    /// Whether it keeps personal data encrypted: the process then loads the master key
    /// ([`crate::crypto`]) and hands it over in [`Context::master_key`].
    pub uses_master_key: bool,
}

/// Where a service listens and where others find it, from its configuration section.
pub trait Endpoint {
    /// The address it listens on when this process runs it.
    fn listen(&self) -> std::net::SocketAddr;
    /// Its URL as configured, for processes that do not run it.
    fn url(&self) -> Option<&str> {
        None
    }
    /// Its database as configured; `None` means SQLite in the data folder.
    fn database_url(&self) -> Option<&str> {
        None
    }
    /// How it announces itself in the registry: the address others dial (`None`: the bound
    /// one) and its weight. `None` for what nobody discovers (the gateway).
    fn announce(&self) -> Option<(Option<&str>, u32)> {
        None
    }
}

/// `bookstore up` (embedded conveniences for one machine) or `bookstore serve` (a deployment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Seeds an empty catalog by default, keeps a generated master key in the data folder.
    Up,
    /// Nothing generated or seeded unless configured.
    Serve,
}

/// Everything a service gets from the process it runs in.
pub struct Context {
    pub name: &'static str,
    pub mode: Mode,
    /// The folder of embedded files (SQLite databases, `up`'s master key).
    pub data_dir: PathBuf,
    /// Its database, opened and migrated, when its [`Spec`] has migrations.
    pub database: Option<Database>,
    /// The bus between services, when its [`Spec`] uses it.
    pub bus: Option<Bus>,
    /// Every service's URL (one address, or several comma-separated), by name.
    pub peers: BTreeMap<&'static str, String>,
    /// Checks callers' access tokens against the users service's keys.
    pub verifier: Arc<Verifier>,
    /// Mints service tokens for services of this process, when users runs in it (`up`): a
    /// service in the same process needs no client secret to prove who it is.
    pub local_tokens: Option<LocalTokens>,
    /// How long a request may take end to end; peers' calls inherit it as their cap.
    pub request_timeout: Duration,
    /// How clients of peers balance, trip, eject and retry.
    pub resilience: ResilienceConfig,
    /// Mutual TLS to peers, when the deployment turns it on ([`crate::tls::Mutual`]).
    pub peer_tls: Option<Arc<rustls::ClientConfig>>,
    /// The process's peer channels, shown on its status page.
    pub board: Board,
    /// The services of this process, called in process rather than over a socket
    /// ([`crate::local`]).
    pub local: LocalServices,
    pub tasks: Tasks,
    /// The deployment's master key, when the service's [`Spec`] asked for it.
    pub master_key: Option<crate::crypto::MasterKey>,
}

/// Mints a service-role token for the named service.
/// Mints tokens in-process for a service (its name, its scopes, its audience).
pub type LocalTokens = Arc<dyn Fn(&str, &[String], &[String]) -> TokenSource + Send + Sync>;

impl Context {
    /// The database its [`Spec`] asked for.
    pub fn database(&self) -> anyhow::Result<Database> {
        self.database.clone().ok_or_else(|| anyhow::anyhow!("{} has no database in its spec", self.name))
    }

    /// The master key its [`Spec`] asked for.
    pub fn master_key(&self) -> anyhow::Result<crate::crypto::MasterKey> {
        self.master_key.clone().ok_or_else(|| anyhow::anyhow!("{} has no master key in its spec", self.name))
    }

    /// Relays the service's outbox to the bus in the background, until the process stops:
    /// committed events reach the bus even if the service stopped right after committing them.
    /// `task` names the relay in the log.
    pub fn relay_outbox(&self, task: &'static str) -> anyhow::Result<()> {
        let (db, bus, stopping) = (self.database()?, self.bus()?, self.tasks.stopping());
        // Woken by each commit of events in this process; the poll ([`crate::clock::idle_poll`])
        // is for events a process that stopped between committing and publishing left behind.
        let relay = crate::events::run_relay(self.name, db, bus, crate::clock::idle_poll(), stopping);
        self.tasks.spawn(task, relay);
        Ok(())
    }

    /// Consumes the event `types` as `consumer` (its queue on RabbitMQ, its inbox rows) in the
    /// background, until the process stops; each event goes to `handler`.
    pub fn consume<F, Fut>(
        &self,
        consumer: &'static str,
        types: &'static [&'static str],
        handler: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(crate::events::Event) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (bus, stopping) = (self.bus()?, self.tasks.stopping());
        let metered = crate::telemetry::metered_handler(self.name, consumer, handler);
        let consuming = bus.clone();
        self.tasks.spawn(consumer, async move {
            if let Err(e) = consuming.consume_types(consumer, types, metered, stopping).await {
                tracing::error!(consumer, error = %format!("{e:#}"), "a consumer stopped");
            }
        });
        let (service, stopping) = (self.name, self.tasks.stopping());
        self.tasks
            .spawn("dead letters", crate::telemetry::watch_dead_letters(service, consumer, bus, stopping));
        Ok(())
    }

    /// Delivers every event of `types` from `start` to `handler`, with its position, in the
    /// background until the process stops. Unlike [`Self::consume`], every replica gets every
    /// event ([`crate::events::subscribe`]): for what each replica keeps for itself.
    pub fn subscribe<F, Fut>(
        &self,
        name: &'static str,
        types: &'static [&'static str],
        start: crate::events::StartAt,
        keep: &'static str,
        handler: F,
    ) -> anyhow::Result<()>
    where
        F: Fn(crate::events::Event, i64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (bus, stopping) = (self.bus()?, self.tasks.stopping());
        let subscription = crate::events::Subscription {
            name: name.to_owned(),
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            start,
            keep,
        };
        self.tasks.spawn(name, async move {
            if let Err(e) = bus.subscribe(&subscription, handler, stopping).await {
                tracing::error!(subscription = name, error = %format!("{e:#}"), "a subscription stopped");
            }
        });
        Ok(())
    }

    /// This service's own credentials for calling `audience` (service names: the token is good
    /// there alone, [`crate::auth::Audience`]) with `scopes` (what it needs there,
    /// [`crate::auth::SCOPES`]) ([`crate::auth::ServiceToken`]): tokens minted in-process when
    /// users runs in this process, else obtained from users with the service account's
    /// `client_id` and `client_secret` (client credentials; the account must be granted the
    /// scopes), cached and renewed before they expire.
    pub fn service_token(
        &self,
        client_id: Option<String>,
        client_secret: Option<String>,
        users: &PeerChannel,
        audience: &[&str],
        scopes: &[&str],
    ) -> anyhow::Result<Arc<crate::auth::ServiceToken>> {
        use bookstore_api::users::v1::user_service_client::UserServiceClient;
        let audience: Vec<String> = audience.iter().map(|a| (*a).to_owned()).collect();
        let scopes: Vec<String> = scopes.iter().map(|s| (*s).to_owned()).collect();
        if let Some(local) = &self.local_tokens {
            return Ok(Arc::new(crate::auth::ServiceToken::new(local(self.name, &scopes, &audience))));
        }
        let (Some(client_id), Some(client_secret)) = (client_id, client_secret) else {
            let (name, upper) = (self.name, self.name.to_uppercase());
            anyhow::bail!(
                "{name} runs apart from users, so it needs a service account: set {name}_client_id \
                 (BOOKSTORE_{upper}_CLIENT_ID) and {name}_client_secret (BOOKSTORE_{upper}_CLIENT_SECRET); \
                 an admin creates one with POST /api/v1/service-accounts"
            );
        };
        let channel = users.clone();
        let source: crate::auth::TokenSource = Arc::new(move || {
            let mut client = UserServiceClient::new(channel.clone());
            let request = bookstore_api::users::v1::IssueServiceTokenRequest {
                client_id: client_id.clone(),
                client_secret: client_secret.clone(),
                resources: audience.clone(),
                scopes: scopes.clone(),
            };
            Box::pin(async move {
                let response = client.issue_service_token(request).await?.into_inner();
                Ok((response.access_token, Duration::from_secs(response.expires_in.max(1) as u64)))
            })
        });
        Ok(Arc::new(crate::auth::ServiceToken::new(source)))
    }

    /// The bus its [`Spec`] asked for.
    pub fn bus(&self) -> anyhow::Result<Bus> {
        self.bus.clone().ok_or_else(|| anyhow::anyhow!("{} does not use the bus in its spec", self.name))
    }

    /// The URL of `peer`.
    pub fn peer_url(&self, peer: &str) -> anyhow::Result<&str> {
        self.peers
            .get(peer)
            .map(String::as_str)
            .ok_or_else(|| anyhow::anyhow!("no URL for the {peer} service"))
    }

    /// A balanced, breaker-guarded channel to every replica of `peer` ([`PeerChannel`]), each
    /// call capped at the request timeout.
    pub async fn channel(&self, peer: &str) -> anyhow::Result<PeerChannel> {
        let config = ResilienceConfig { call_timeout: self.request_timeout, ..self.resilience };
        let connector = self.local.connector(tonic_connector(&config, self.peer_tls.clone()));
        let channel =
            PeerChannel::connect_via(self.name, peer, self.peer_url(peer)?, config, connector).await?;
        self.board.register(&channel);
        Ok(channel)
    }
}

/// What a built service gives the process to run.
pub struct Built {
    /// Its public API: gRPC routes, or the gateway's REST edge. Operational endpoints are the
    /// process's, on the admin listener.
    pub router: Router,
    /// Checks `/readyz` runs (all must pass).
    pub readiness: Vec<ReadinessCheck>,
    /// Work before each `/metrics` scrape (pool gauges).
    pub on_scrape: Vec<crate::server::ScrapeHook>,
    /// Lines to show once to whoever started the process (a generated admin password).
    pub notices: Vec<String>,
    /// Service tokens for the services built after it in this process (users provides them).
    pub local_tokens: Option<LocalTokens>,
    /// Serve its listener over TLS with this ([`crate::tls::acceptor`]).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Built {
    pub fn new(router: Router) -> Self {
        Self {
            router,
            readiness: Vec::new(),
            on_scrape: Vec::new(),
            notices: Vec::new(),
            local_tokens: None,
            tls: None,
        }
    }

    /// Adds the checks every service with a database has: ready when it answers, pool gauges
    /// at each scrape.
    pub fn with_database(mut self, service: &'static str, db: &Database) -> Self {
        let ping = db.clone();
        self.readiness.push(Arc::new(move || {
            let db = ping.clone();
            Box::pin(async move { db.ping().await })
        }));
        let gauges = db.clone();
        self.on_scrape.push(Arc::new(move || gauges.record_pool_gauges(service)));
        self
    }

    pub fn ready_when<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.readiness.push(Arc::new(move || Box::pin(check())));
        self
    }
}

/// The background work of a process: every task is tracked, and stopping is cooperative.
///
/// A task takes [`Tasks::stopping`] and checks it between units of work (a relay batch, a
/// sweeper pass), never inside one, so a stop leaves nothing half done. [`Tasks::stop`]
/// cancels the token and waits until every task has returned.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    stopping: CancellationToken,
}

impl Default for Tasks {
    fn default() -> Self {
        Self::new()
    }
}

impl Tasks {
    pub fn new() -> Self {
        Self { tracker: TaskTracker::new(), stopping: CancellationToken::new() }
    }

    /// Cancelled when background work must stop.
    pub fn stopping(&self) -> CancellationToken {
        self.stopping.clone()
    }

    /// Runs `task` under the tracker; `name` is in the log when it ends early.
    pub fn spawn<F>(&self, name: &'static str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stopping = self.stopping.clone();
        self.tracker.spawn(async move {
            task.await;
            if !stopping.is_cancelled() {
                tracing::warn!(task = name, "background task ended before shutdown");
            }
        });
    }

    /// Runs `unit` every `period` until stopped; a unit in progress always finishes.
    pub fn every<F, Fut>(&self, name: &'static str, period: Duration, unit: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let stopping = self.stopping.clone();
        self.spawn(name, async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    biased;
                    () = stopping.cancelled() => break,
                    _ = tick.tick() => {
                        // Lets a shutdown test land its signal once a pass has begun.
                        crate::pause_point(name).await;
                        unit().await;
                    }
                }
            }
        });
    }

    /// Tells every task to stop and waits until all have.
    pub async fn stop(&self) {
        self.stopping.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

/// The services of one process, served, and stopped in order.
pub struct Process {
    /// Cancelled when stopping starts: `/readyz` answers 503 from then on.
    draining: CancellationToken,
    /// In start order, each with its own stop token: stopped in reverse, so the gateway drains
    /// its requests while the services behind it still answer them.
    servers: Vec<(CancellationToken, crate::server::Running)>,
    admin: Option<(CancellationToken, crate::server::Running)>,
    readiness: Vec<(&'static str, ReadinessCheck)>,
    on_scrape: Vec<crate::server::ScrapeHook>,
    tasks: Tasks,
    databases: Vec<Database>,
    board: Board,
    /// Where its services are offered to callers in the process ([`crate::local`]).
    local: LocalServices,
    /// More routes for the admin listener, beside the operational endpoints.
    admin_routes: axum::Router,
}

impl Process {
    pub fn new(tasks: Tasks) -> Self {
        Self {
            draining: CancellationToken::new(),
            servers: Vec::new(),
            admin: None,
            readiness: Vec::new(),
            on_scrape: Vec::new(),
            tasks,
            databases: Vec::new(),
            board: Board::default(),
            local: LocalServices::default(),
            admin_routes: axum::Router::new(),
        }
    }

    /// Serves `routes` on the admin listener too (added before [`Self::serve_admin`]).
    pub fn admin_routes(&mut self, routes: axum::Router) {
        self.admin_routes = std::mem::take(&mut self.admin_routes).merge(routes);
    }

    /// Offers each service served from now on to callers in this process, through `local`
    /// ([`crate::local`]), until its listener has drained.
    pub fn call_in_process(&mut self, local: LocalServices) {
        self.board.call_in_process(local.clone());
        self.local = local;
    }

    /// Cancelled when the process starts to stop (before its listeners drain).
    pub fn draining(&self) -> CancellationToken {
        self.draining.clone()
    }

    /// Cancelled when the background tasks are told to stop.
    pub fn stopping(&self) -> CancellationToken {
        self.tasks.stopping()
    }

    /// Where the process's peer channels register for its status page.
    pub fn board(&self) -> Board {
        self.board.clone()
    }

    /// Adds a check of the process's own, under `name`, to the admin listener's `/readyz`.
    pub fn ready_when<F, Fut>(&mut self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        self.readiness.push((name, Arc::new(move || Box::pin(check()))));
    }

    /// Closes `db` after every task has stopped.
    pub fn own_database(&mut self, db: Database) {
        self.databases.push(db);
    }

    /// Serves `built` on `listener`; its readiness checks join the admin listener's `/readyz`.
    pub fn serve(
        &mut self,
        name: &'static str,
        listener: tokio::net::TcpListener,
        built: Built,
    ) -> std::io::Result<std::net::SocketAddr> {
        self.readiness.extend(built.readiness.into_iter().map(|check| (name, check)));
        self.on_scrape.extend(built.on_scrape);
        let stop = CancellationToken::new();
        self.local.provide(listener.local_addr()?, built.router.clone());
        let running = crate::server::serve_tls(name, listener, built.router, stop.clone(), built.tls)?;
        let addr = running.addr;
        self.servers.push((stop, running));
        Ok(addr)
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` for every service served so far.
    pub fn serve_admin(
        &mut self,
        listener: tokio::net::TcpListener,
    ) -> std::io::Result<std::net::SocketAddr> {
        let ops = crate::server::Ops {
            draining: self.draining.clone(),
            readiness: self.readiness.clone(),
            on_scrape: self.on_scrape.clone(),
            board: self.board.clone(),
        };
        let router = crate::server::ops_router(ops).merge(std::mem::take(&mut self.admin_routes));
        let stop = CancellationToken::new();
        let running = crate::server::serve("admin", listener, router, stop.clone())?;
        let addr = running.addr;
        self.admin = Some((stop, running));
        Ok(addr)
    }

    /// Stops in order: readiness 503; listeners drain, last started first; background tasks
    /// finish the unit in hand; the admin listener closes; pools close.
    pub async fn stop(self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        self.draining.cancel();
        let mut first_error = None;
        for (stop, running) in self.servers.into_iter().rev() {
            stop.cancel();
            let drained = running.task.await;
            // As its listener is closed to the other processes, it is to this one.
            self.local.withdraw(running.addr);
            match drained.context("server task panicked").and_then(|r| r.context("server failed")) {
                Ok(()) => {}
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        self.tasks.stop().await;
        if let Some((stop, running)) = self.admin {
            stop.cancel();
            let _ = running.task.await;
        }
        for db in self.databases {
            db.close().await;
        }
        first_error.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn stop_waits_for_the_unit_in_hand_and_starts_no_other() {
        let tasks = Tasks::new();
        let (started, finished) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (entered_tx, mut entered) = tokio::sync::mpsc::unbounded_channel();
        let (s, f) = (started.clone(), finished.clone());
        tasks.every("test", Duration::from_secs(1), move || {
            let (s, f, entered_tx) = (s.clone(), f.clone(), entered_tx.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                let _ = entered_tx.send(());
                tokio::time::sleep(Duration::from_secs(5)).await;
                f.fetch_add(1, Ordering::SeqCst);
            }
        });
        entered.recv().await.unwrap();
        tasks.stop().await;
        assert_eq!(started.load(Ordering::SeqCst), 1, "no unit starts after the stop");
        assert_eq!(finished.load(Ordering::SeqCst), 1, "the unit in hand finished");
    }
}
