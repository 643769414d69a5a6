//! The client side of a peer with many replicas: one [`PeerChannel`] per peer, which every
//! generated gRPC client wraps (`BookServiceClient<PeerChannel>`).
//!
//! - **Discovery**: it follows the peer's [`Source`](crate::discovery::Source) and keeps the
//!   state of replicas that stay in the set.
//! - **Balancing**: power of two choices, as linkerd and Finagle do. Two replicas are drawn at
//!   random; the call goes to the one with the lower cost, `peak-EWMA latency × (requests in
//!   flight + 1)`. The latency estimate decays towards zero while a replica is not chosen, so
//!   one that was slow gets tried again. With static weights that differ, a draw in proportion
//!   to the weights instead, so the configured split holds at any load.
//! - **Circuit breakers** per replica ([`crate::breaker`]): an open breaker takes its replica
//!   out of the draw; once half-open, the next call is its trial; with every breaker open the
//!   call fails fast with `UNAVAILABLE`.
//! - **Outlier ejection** as Envoy does it: after `eject_after` consecutive failures a replica
//!   is out for `ejection × times ejected` (capped), never more than `max_ejected_percent` of
//!   the set at once.
//! - **Retries** are the caller's choice, made per call with [`PeerChannel::retrying`], because
//!   only the caller knows a call is safe to repeat; a retry budget caps them, and a retry goes
//!   to a replica the call has not failed on yet, while there is one.
//!
//! Failures, for breakers and ejection, are transport errors, calls over their time, and the
//! statuses that mean the replica (not the request) is unwell: `UNAVAILABLE`, `INTERNAL`,
//! `UNKNOWN`, `DATA_LOSS` and `DEADLINE_EXCEEDED`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::Notify;
use tonic::Code;
use tonic::body::Body;
use tower::retry::budget::{Budget, TpsBudget};
use tower::util::BoxCloneSyncService;
use tower::{BoxError, Service, ServiceExt};

use crate::breaker::{Breaker, BreakerConfig, BreakerEvent, BreakerState, CallResult, Permit};
use crate::discovery::{Source, Target};
use crate::grpc::Deadline;

type HttpRequest = http::Request<Body>;
type HttpResponse = http::Response<Body>;
/// One replica's transport: a tonic channel, or a stand-in in tests.
pub type Transport = BoxCloneSyncService<HttpRequest, HttpResponse, BoxError>;
/// Builds the transport to a target.
pub type Connector = Arc<dyn Fn(&Target) -> anyhow::Result<Transport> + Send + Sync>;

/// How a peer's client balances, trips, ejects and retries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ResilienceConfig {
    /// The longest one call may take, whatever deadline its caller has.
    pub call_timeout: Duration,
    pub connect_timeout: Duration,
    pub breaker: BreakerConfig,
    /// Consecutive failures that eject a replica.
    pub eject_after: u32,
    /// How long a first ejection lasts; the n-th lasts n times as long.
    pub ejection: Duration,
    pub max_ejection: Duration,
    /// The largest share of the set that may be ejected at once.
    pub max_ejected_percent: u32,
    /// Retries allowed on top of the calls made, over a sliding window of ten seconds.
    pub retry_percent: f32,
    /// Retries always allowed per second, so a quiet client can still retry.
    pub retry_min_per_sec: u32,
    /// Attempts of one retried call, the first included.
    pub max_attempts: u32,
    /// The first backoff's ceiling; it doubles each attempt (full jitter: a random wait up to it).
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl Default for ResilienceConfig {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            breaker: BreakerConfig::default(),
            eject_after: 5,
            ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejected_percent: 50,
            retry_percent: 0.2,
            retry_min_per_sec: 10,
            max_attempts: 3,
            backoff_base: Duration::from_millis(25),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// How long a latency sample keeps its weight (the EWMA's time constant).
const DECAY: Duration = Duration::from_secs(10);
tokio::task_local! {
    /// The replicas a retried call has already failed on: a retry goes elsewhere when it can.
    static FAILED_ON: std::cell::RefCell<Vec<String>>;
}
/// The latency a replica is assumed to have before its first answer.
const DEFAULT_RTT: Duration = Duration::from_millis(5);

/// One replica as the client sees it.
struct Member {
    target: Target,
    transport: Transport,
    in_flight: AtomicU32,
    health: Mutex<Health>,
}

struct Health {
    breaker: Breaker,
    consecutive_failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    /// Peak-EWMA latency, in seconds, as of `rtt_at`.
    rtt: f64,
    rtt_at: Instant,
    /// Active health checks failed in a row ([`PeerChannel::check_health`]).
    failed_checks: u32,
}

impl Health {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    fn rtt_now(&self, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.rtt_at).as_secs_f64();
        self.rtt * (-elapsed / DECAY.as_secs_f64()).exp()
    }

    fn observe_rtt(&mut self, sample: Duration, now: Instant) {
        let sample = sample.as_secs_f64();
        let current = self.rtt_now(now);
        self.rtt = if sample > current {
            sample
        } else {
            let w = (-(now.saturating_duration_since(self.rtt_at).as_secs_f64()) / DECAY.as_secs_f64()).exp();
            current * w + sample * (1.0 - w)
        };
        self.rtt_at = now;
    }
}

impl Member {
    fn cost(&self, now: Instant) -> f64 {
        let health = self.health.lock().expect("health lock");
        let in_flight = f64::from(self.in_flight.load(Ordering::Relaxed));
        (health.rtt_now(now) + 1e-6) * (in_flight + 1.0)
    }

    fn eligible(&self, now: Instant) -> bool {
        let health = self.health.lock().expect("health lock");
        !health.ejected(now) && health.breaker.would_allow(now)
    }

    fn passes_checks(&self) -> bool {
        self.health.lock().expect("health lock").failed_checks < UNHEALTHY_AFTER
    }
}

/// Active health checks failed in a row that take a replica out of the draw; one that passes
/// brings it back.
const UNHEALTHY_AFTER: u32 = 2;

/// What the status page shows of one replica.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EndpointStatus {
    pub url: String,
    pub weight: u32,
    pub breaker: &'static str,
    pub ejected: bool,
    /// False while the replica fails its active health checks (always true without them).
    pub healthy: bool,
    pub in_flight: u32,
    pub latency_ms: f64,
    /// The replica is a service of this process, called in process (no socket, no TLS).
    pub in_process: bool,
}

/// The peer channels of one process, for its status page (`/status` on the admin listener).
#[derive(Clone, Default)]
pub struct Board {
    channels: Arc<Mutex<Vec<std::sync::Weak<Shared>>>>,
    /// The services this process calls in process.
    local: Arc<std::sync::RwLock<crate::local::LocalServices>>,
}

impl Board {
    /// The services this process calls in process, from now on.
    pub fn call_in_process(&self, local: crate::local::LocalServices) {
        *self.local.write().unwrap_or_else(std::sync::PoisonError::into_inner) = local;
    }

    pub fn register(&self, channel: &PeerChannel) {
        let mut channels = self.channels.lock().expect("board lock");
        channels.retain(|c| c.strong_count() > 0);
        channels.push(Arc::downgrade(&channel.shared));
    }

    /// Every live channel: who calls, which peer, and its replicas.
    pub fn snapshot(&self) -> Vec<PeerStatus> {
        let local = self.local.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        let channels = self.channels.lock().expect("board lock");
        channels
            .iter()
            .filter_map(std::sync::Weak::upgrade)
            .map(|shared| {
                let channel = PeerChannel { shared };
                let mut endpoints = channel.status();
                for endpoint in &mut endpoints {
                    endpoint.in_process = local.serves(&endpoint.url);
                }
                PeerStatus { service: channel.shared.caller, peer: channel.shared.peer.clone(), endpoints }
            })
            .collect()
    }
}

impl Board {
    /// Sets `grpc_client_endpoints{service, peer, state}`: how many replicas of each peer each
    /// client can call (`ready`) and how many it cannot, and why (`ejected`, `unhealthy`: failing
    /// its health checks, `open`: its breaker fails calls fast). Called on every scrape.
    pub fn record_gauges(&self) {
        for peer in self.snapshot() {
            let mut counts = [("ready", 0u32), ("ejected", 0), ("unhealthy", 0), ("open", 0)];
            for endpoint in &peer.endpoints {
                let state = if endpoint.ejected {
                    1
                } else if !endpoint.healthy {
                    2
                } else if endpoint.breaker == "open" {
                    3
                } else {
                    0
                };
                counts[state].1 += 1;
            }
            for (state, count) in counts {
                metrics::gauge!("grpc_client_endpoints", "service" => peer.service, "peer" => peer.peer.clone(), "state" => state)
                    .set(f64::from(count));
            }
        }
    }
}

/// One client's view of one peer.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PeerStatus {
    pub service: &'static str,
    pub peer: String,
    pub endpoints: Vec<EndpointStatus>,
}

struct Shared {
    /// The service that calls (the `service` label).
    caller: &'static str,
    peer: String,
    config: ResilienceConfig,
    protocol: Protocol,
    connector: Connector,
    members: Mutex<Arc<Vec<Arc<Member>>>>,
    duration: metrics::Histogram,
    refresh: Arc<Notify>,
    budget: TpsBudget,
    _follow: tokio_util::sync::DropGuard,
}

/// A balanced, breaker-guarded channel to every replica of one peer. Cheap to clone; clones
/// share their state.
#[derive(Clone)]
pub struct PeerChannel {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerChannel").field("peer", &self.shared.peer).finish_non_exhaustive()
    }
}

/// Lazily connected tonic channels: the first call connects, and a service can start before its
/// peers do. With `tls` (mutual TLS between services, [`crate::tls::Mutual`]) every connection
/// is TLS, whatever scheme the peer's URL says, verified against the name or address in it.
pub fn tonic_connector(config: &ResilienceConfig, tls: Option<Arc<rustls::ClientConfig>>) -> Connector {
    let connect_timeout = config.connect_timeout;
    Arc::new(move |target: &Target| {
        let endpoint = tonic::transport::Endpoint::from_shared(target.url.clone())?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_while_idle(true);
        let channel = match &tls {
            // Not spoken in plain text while the URL says TLS.
            None if target.url.starts_with("https:") => anyhow::bail!(
                "{}: TLS between services is mutual here: set mtls_cert_file, mtls_key_file and mtls_ca_file",
                target.url
            ),
            None => endpoint.connect_lazy(),
            Some(tls) => endpoint.connect_with_connector_lazy(tls_dialer(tls.clone())),
        };
        Ok(BoxCloneSyncService::new(channel.map_err(BoxError::from)))
    })
}

/// A TLS connection to a peer, as hyper reads and writes it.
type TlsIo = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Dials a peer's URI over TCP and makes a TLS handshake with it, checking its certificate for
/// the URI's host.
fn tls_dialer(
    config: Arc<rustls::ClientConfig>,
) -> impl Service<http::Uri, Response = TlsIo, Error = BoxError, Future: Send> + Clone + Send + 'static {
    let connector = tokio_rustls::TlsConnector::from(config);
    tower::service_fn(move |uri: http::Uri| {
        let connector = connector.clone();
        async move {
            let host = uri.host().ok_or("a peer URL without a host")?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
            let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(host)?;
            let stream = connector.connect(name, tcp).await?;
            Ok::<_, BoxError>(TlsIo::new(stream))
        }
    })
}

/// Clients for plain HTTP backends: `http://` speaks HTTP/1.1 over a keep-alive pool,
/// `h2c://` speaks HTTP/2 without TLS (prior knowledge), multiplexed on one connection. The
/// request's URI is rewritten to the backend's authority.
pub fn http_connector(config: &ResilienceConfig) -> Connector {
    use hyper_util::client::legacy::Client;
    use hyper_util::client::legacy::connect::HttpConnector;
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    let mut builder = Client::builder(hyper_util::rt::TokioExecutor::new());
    builder.pool_idle_timeout(Duration::from_secs(60)).pool_max_idle_per_host(256);
    let http1: Client<HttpConnector, Body> = builder.build(connector.clone());
    let http2: Client<HttpConnector, Body> = builder
        .http2_only(true)
        .timer(hyper_util::rt::TokioTimer::new())
        .http2_keep_alive_interval(Duration::from_secs(30))
        .build(connector);
    Arc::new(move |target: &Target| {
        let (client, url) = match target.url.strip_prefix("h2c://") {
            Some(authority) => (http2.clone(), format!("http://{authority}")),
            None => (http1.clone(), target.url.clone()),
        };
        let base: http::Uri = url.parse()?;
        Ok(BoxCloneSyncService::new(tower::service_fn(move |mut request: HttpRequest| {
            let client = client.clone();
            let mut parts = base.clone().into_parts();
            parts.path_and_query = request.uri().path_and_query().cloned();
            let uri = http::Uri::from_parts(parts);
            async move {
                *request.uri_mut() = uri?;
                let response = client.request(request).await?;
                Ok::<_, BoxError>(response.map(Body::new))
            }
        })))
    })
}

impl PeerChannel {
    /// A channel to the peer `peer` at `url` (see [`crate::discovery`]), for `caller`.
    /// With `tls`, every connection to it is mutual TLS ([`tonic_connector`]).
    pub async fn connect(
        caller: &'static str,
        peer: &str,
        url: &str,
        config: ResilienceConfig,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> anyhow::Result<Self> {
        Self::connect_via(caller, peer, url, config, tonic_connector(&config, tls)).await
    }

    /// As [`PeerChannel::connect`], with the transports made by `connector` (calls in process,
    /// [`crate::local`]).
    pub async fn connect_via(
        caller: &'static str,
        peer: &str,
        url: &str,
        config: ResilienceConfig,
        connector: Connector,
    ) -> anyhow::Result<Self> {
        let source = Source::parse(url).map_err(|e| anyhow::anyhow!("{peer}_url: {e:#}"))?;
        Self::with_connector(caller, peer, source, config, connector).await
    }

    /// As [`PeerChannel::connect`], with the transports made by `connector`.
    pub async fn with_connector(
        caller: &'static str,
        peer: &str,
        source: Source,
        config: ResilienceConfig,
        connector: Connector,
    ) -> anyhow::Result<Self> {
        Self::build(caller, peer, source, config, Protocol::Grpc, connector).await
    }

    /// A channel over plain HTTP to the replicas in `source`, for the gateway's pass-through
    /// route `name`: the same balancing, breakers and ejection, over HTTP/1.1 or h2c
    /// ([`http_connector`]).
    pub async fn http(
        caller: &'static str,
        name: &str,
        source: Source,
        config: ResilienceConfig,
    ) -> anyhow::Result<Self> {
        Self::build(caller, name, source, config, Protocol::Http, http_connector(&config)).await
    }

    async fn build(
        caller: &'static str,
        peer: &str,
        source: Source,
        config: ResilienceConfig,
        protocol: Protocol,
        connector: Connector,
    ) -> anyhow::Result<Self> {
        let (mut targets, refresh) = source.watch().await;
        let stop = tokio_util::sync::CancellationToken::new();
        let shared = Arc::new(Shared {
            caller,
            peer: peer.to_owned(),
            config,
            protocol,
            connector,
            members: Mutex::new(Arc::new(Vec::new())),
            duration: metrics::histogram!("grpc_client_request_duration_seconds", "service" => caller, "peer" => peer.to_owned()),
            refresh,
            budget: TpsBudget::new(Duration::from_secs(10), config.retry_min_per_sec, config.retry_percent),
            _follow: stop.clone().drop_guard(),
        });
        shared.update(&targets.borrow_and_update())?;
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    changed = targets.changed() => if changed.is_err() { return },
                }
                let Some(shared) = weak.upgrade() else { return };
                if let Err(e) = shared.update(&targets.borrow_and_update()) {
                    tracing::error!(peer = shared.peer, error = %format!("{e:#}"), "could not follow a peer's replicas");
                }
            }
        });
        Ok(Self { shared })
    }

    /// The peer's replicas as this client sees them now.
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = now();
        let members = self.shared.members();
        members
            .iter()
            .map(|m| {
                let health = m.health.lock().expect("health lock");
                EndpointStatus {
                    url: m.target.url.clone(),
                    weight: m.target.weight,
                    breaker: health.breaker.state(now).as_str(),
                    ejected: health.ejected(now),
                    healthy: health.failed_checks < UNHEALTHY_AFTER,
                    in_flight: m.in_flight.load(Ordering::Relaxed),
                    latency_ms: health.rtt_now(now) * 1000.0,
                    in_process: false,
                }
            })
            .collect()
    }

    pub fn peer(&self) -> &str {
        &self.shared.peer
    }

    /// Active health checks, as Envoy's: every `interval`, each replica gets `GET path` (for
    /// plain HTTP peers, the gateway's routes). A check fails on a transport error, on no answer
    /// within `min(interval, 1 s)`, or on a status that is not 2xx; after two failed checks in a
    /// row the replica leaves the draw, and one passing check brings it back. Passive health
    /// (breakers, ejection) goes on as before; the checks find a dead replica before a client's
    /// call does, and a recovered one without waiting for a trial call. Stops with the channel.
    pub fn check_health(&self, path: &str, interval: Duration) {
        let weak = Arc::downgrade(&self.shared);
        let path = path.to_owned();
        let timeout = interval.min(Duration::from_secs(1));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let members = shared.members();
                drop(shared);
                futures::future::join_all(members.iter().map(|m| check_one(m, &path, timeout))).await;
            }
        });
    }

    /// Runs `call`, and again when it fails with `UNAVAILABLE` (the request did not reach a
    /// replica that could answer), with exponential backoff and full jitter, never past
    /// `deadline`, and only while the retry budget allows. Use it for calls that are safe to
    /// repeat: reads, and writes that carry an idempotency key or a reservation id.
    pub async fn retrying<T, F, Fut>(&self, deadline: Deadline, mut call: F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        FAILED_ON.scope(std::cell::RefCell::new(Vec::new()), self.retry_loop(deadline, &mut call)).await
    }

    async fn retry_loop<T, F, Fut>(&self, deadline: Deadline, call: &mut F) -> Result<T, tonic::Status>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, tonic::Status>>,
    {
        let config = &self.shared.config;
        self.shared.budget.deposit();
        let mut ceiling = config.backoff_base;
        let mut attempt = 1;
        loop {
            let status = match call().await {
                Ok(answer) => return Ok(answer),
                Err(status) => status,
            };
            if status.code() != Code::Unavailable || attempt >= config.max_attempts {
                return Err(status);
            }
            let wait = Duration::from_secs_f64(rand::thread_rng().gen_range(0.0..=ceiling.as_secs_f64()));
            if deadline.remaining() <= wait {
                return Err(status);
            }
            if !self.shared.budget.withdraw() {
                metrics::counter!("grpc_client_retries_total", "service" => self.shared.caller, "peer" => self.shared.peer.clone(), "outcome" => "over_budget").increment(1);
                return Err(status);
            }
            metrics::counter!("grpc_client_retries_total", "service" => self.shared.caller, "peer" => self.shared.peer.clone(), "outcome" => "retried").increment(1);
            tokio::time::sleep(wait).await;
            ceiling = (ceiling * 2).min(config.backoff_max);
            attempt += 1;
        }
    }
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// One active health check of `member`; records whether it passed.
async fn check_one(member: &Member, path: &str, timeout: Duration) {
    let request = http::Request::get(path).body(Body::default());
    let passed = match request {
        Ok(request) => matches!(
            tokio::time::timeout(timeout, member.transport.clone().oneshot(request)).await,
            Ok(Ok(response)) if response.status().is_success()
        ),
        Err(_) => false,
    };
    let mut health = member.health.lock().expect("health lock");
    let was_healthy = health.failed_checks < UNHEALTHY_AFTER;
    health.failed_checks = if passed { 0 } else { health.failed_checks.saturating_add(1) };
    let healthy = health.failed_checks < UNHEALTHY_AFTER;
    if was_healthy != healthy {
        tracing::warn!(endpoint = member.target.url, healthy, "health check changed a replica's standing");
    }
}

impl Shared {
    fn members(&self) -> Arc<Vec<Arc<Member>>> {
        self.members.lock().expect("members lock").clone()
    }

    /// Takes a new set of targets, keeping the state of replicas that stay.
    fn update(&self, targets: &[Target]) -> anyhow::Result<()> {
        let old = self.members();
        let mut next = Vec::with_capacity(targets.len());
        for target in targets {
            if let Some(kept) = old.iter().find(|m| m.target == *target) {
                next.push(kept.clone());
                continue;
            }
            let url = target.url.clone();
            let (caller, peer) = (self.caller, self.peer.clone());
            breaker_state(caller, &peer, &url, BreakerState::Closed);
            // Handles made once: a labelled counter looked up per call costs allocations.
            let results = [CallResult::Success, CallResult::Failure, CallResult::Timeout, CallResult::Rejected]
                .map(|r| metrics::counter!("grpc_client_requests_total", "service" => caller, "peer" => peer.clone(), "endpoint" => url.clone(), "result" => r.as_str()));
            let listener = Arc::new(move |event: BreakerEvent| match event {
                BreakerEvent::Call(result) => results[result as usize].increment(1),
                BreakerEvent::Entered(state) => breaker_entered(caller, &peer, &url, state),
            });
            next.push(Arc::new(Member {
                target: target.clone(),
                transport: (self.connector)(target)?,
                in_flight: AtomicU32::new(0),
                health: Mutex::new(Health {
                    breaker: Breaker::new(self.config.breaker, listener),
                    consecutive_failures: 0,
                    ejected_until: None,
                    ejections: 0,
                    rtt: DEFAULT_RTT.as_secs_f64(),
                    rtt_at: now(),
                    failed_checks: 0,
                }),
            }));
        }
        let urls: Vec<&str> = next.iter().map(|m| m.target.url.as_str()).collect();
        tracing::info!(service = self.caller, peer = self.peer, replicas = ?urls, "peer replicas");
        *self.members.lock().expect("members lock") = Arc::new(next);
        Ok(())
    }

    /// Chooses a replica that may take a call, with the breaker's leave. With equal weights:
    /// power of two choices on cost. With weights that differ: a draw in proportion to the
    /// weights, as Traefik's weighted services split traffic, so a 3:1 split holds under any
    /// load (two choices over two replicas would always compare the same pair and leave the
    /// weights no say; weighting by load as well would pull the split towards 1:1 as the
    /// heavier replica's calls in flight grow).
    fn pick(&self, now: Instant) -> Option<(Arc<Member>, Permit)> {
        let members = self.members();
        let mut eligible: Vec<&Arc<Member>> = members.iter().filter(|m| m.eligible(now)).collect();
        // Replicas failing their health checks are left out while any passes; when none does,
        // all stay in (Envoy's panic mode), guarded by their breakers.
        if eligible.iter().any(|m| m.passes_checks()) {
            eligible.retain(|m| m.passes_checks());
        }
        // A retry skips the replicas this call already failed on, while others are left.
        let failed_on = FAILED_ON.try_with(|f| f.borrow().clone()).unwrap_or_default();
        if !failed_on.is_empty() && eligible.iter().any(|m| !failed_on.contains(&m.target.url)) {
            eligible.retain(|m| !failed_on.contains(&m.target.url));
        }
        let weighted = eligible.windows(2).any(|w| w[0].target.weight != w[1].target.weight);
        let mut rng = rand::thread_rng();
        while !eligible.is_empty() {
            // A replica whose breaker waits for its trial gets this call: one call per reset
            // timeout is what finding out costs, and waiting for the draw could take minutes.
            let probe = eligible.iter().position(|m| {
                m.health.lock().expect("health lock").breaker.state(now) == BreakerState::HalfOpen
            });
            let chosen = if let Some(probe) = probe {
                probe
            } else if weighted {
                draw(&eligible, &mut rng, |m| f64::from(m.target.weight))
            } else if eligible.len() == 1 {
                0
            } else {
                let first = rng.gen_range(0..eligible.len());
                let mut second = rng.gen_range(0..eligible.len() - 1);
                if second >= first {
                    second += 1;
                }
                if eligible[second].cost(now) < eligible[first].cost(now) { second } else { first }
            };
            let member = eligible[chosen];
            if let Some(permit) = member.health.lock().expect("health lock").breaker.try_acquire(now) {
                return Some((member.clone(), permit));
            }
            // Its half-open trial was taken since we looked: choose again without it.
            eligible.remove(chosen);
        }
        None
    }

    /// Records how a call to `member` ended: breaker, ejection, latency, metrics.
    fn record(&self, member: &Member, permit: Permit, result: CallResult, took: Duration) {
        let now = now();
        let mut health = member.health.lock().expect("health lock");
        // Back from its breaker or its ejection: what it did before says nothing of it now.
        let returning = health.breaker.state(now) == BreakerState::HalfOpen
            || health.ejected_until.is_some_and(|until| now >= until);
        health.breaker.record(permit, result, now);
        match result {
            CallResult::Success => {
                health.consecutive_failures = 0;
                if returning {
                    health.ejected_until = None;
                    health.rtt = took.as_secs_f64();
                    health.rtt_at = now;
                } else {
                    health.observe_rtt(took, now);
                }
                if !health.ejected(now) {
                    health.ejections = health.ejections.saturating_sub(1);
                }
            }
            CallResult::Failure | CallResult::Timeout => {
                // A retry of this call, if any, goes elsewhere.
                let _ = FAILED_ON.try_with(|f| f.borrow_mut().push(member.target.url.clone()));
                // A refused connection is fast, not a sign of speed; a timeout is slowness.
                if result == CallResult::Timeout {
                    health.observe_rtt(took, now);
                }
                health.consecutive_failures += 1;
                if health.consecutive_failures >= self.config.eject_after && !health.ejected(now) {
                    drop(health);
                    self.try_eject(member, &self.members(), now);
                }
            }
            CallResult::Rejected => {}
        }
        self.duration.record(took.as_secs_f64());
    }

    fn try_eject(&self, member: &Member, members: &[Arc<Member>], now: Instant) {
        let ejected = members
            .iter()
            .filter(|m| {
                !std::ptr::eq(m.as_ref(), member) && m.health.lock().expect("health lock").ejected(now)
            })
            .count();
        let cap = members.len() * self.config.max_ejected_percent as usize / 100;
        let mut health = member.health.lock().expect("health lock");
        if ejected >= cap {
            return;
        }
        health.ejections += 1;
        let out_for = (self.config.ejection * health.ejections).min(self.config.max_ejection);
        health.ejected_until = Some(now + out_for);
        health.consecutive_failures = 0;
        tracing::warn!(
            service = self.caller,
            peer = self.peer,
            endpoint = member.target.url,
            seconds = out_for.as_secs_f64(),
            "replica ejected after consecutive failures"
        );
        metrics::counter!("grpc_client_ejections_total", "service" => self.caller, "peer" => self.peer.clone(), "endpoint" => member.target.url.clone()).increment(1);
    }
}

/// Picks an index with probability proportional to `weight`.
fn draw(members: &[&Arc<Member>], rng: &mut impl Rng, weight: impl Fn(&Member) -> f64) -> usize {
    let weights: Vec<f64> = members.iter().map(|m| weight(m)).collect();
    let mut at = rng.gen_range(0.0..weights.iter().sum::<f64>());
    for (i, w) in weights.iter().enumerate() {
        if at < *w {
            return i;
        }
        at -= w;
    }
    members.len() - 1
}

/// A breaker entered `state`: logged (a warning unless it closed) and counted.
fn breaker_entered(caller: &'static str, peer: &str, url: &str, state: BreakerState) {
    if state == BreakerState::Closed {
        tracing::info!(
            service = caller,
            peer,
            endpoint = url,
            state = state.as_str(),
            "circuit breaker changed state"
        );
    } else {
        tracing::warn!(
            service = caller,
            peer,
            endpoint = url,
            state = state.as_str(),
            "circuit breaker changed state"
        );
    }
    metrics::counter!("grpc_client_breaker_transitions_total", "service" => caller, "peer" => peer.to_owned(), "endpoint" => url.to_owned(), "state" => state.as_str()).increment(1);
    breaker_state(caller, peer, url, state);
}

/// `grpc_client_breaker_state`: 1 for the state a replica's breaker is in, 0 for the others
/// (set for a new replica too, so a healthy peer has its series from the start).
fn breaker_state(caller: &'static str, peer: &str, url: &str, state: BreakerState) {
    for s in [BreakerState::Closed, BreakerState::Open, BreakerState::HalfOpen] {
        metrics::gauge!("grpc_client_breaker_state", "service" => caller, "peer" => peer.to_owned(), "endpoint" => url.to_owned(), "state" => s.as_str())
            .set(if s == state { 1.0 } else { 0.0 });
    }
}

/// Whether a response's gRPC status says the replica, not the request, is unwell.
/// What a channel speaks to its replicas: it decides what counts as a failure and how a
/// refusal is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC: failures are the statuses above; refusals are gRPC statuses.
    Grpc,
    /// Plain HTTP (the gateway's pass-through routes): 502, 503 and 504 are failures (504 a
    /// timeout); refusals are 503 and 504 responses.
    Http,
}

fn classify(protocol: Protocol, response: &HttpResponse) -> CallResult {
    if protocol == Protocol::Http {
        return match response.status().as_u16() {
            504 => CallResult::Timeout,
            502 | 503 => CallResult::Failure,
            _ => CallResult::Success,
        };
    }
    let code = response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(Code::from);
    match code {
        Some(Code::DeadlineExceeded) => CallResult::Timeout,
        Some(Code::Unavailable | Code::Internal | Code::Unknown | Code::DataLoss) => CallResult::Failure,
        _ => CallResult::Success,
    }
}

/// Marks a response the channel wrote itself (no replica answered): the status it stands for,
/// so an HTTP caller (the gateway's pass-through) can answer in its own error format.
#[derive(Debug, Clone)]
pub struct Refused(pub tonic::Status);

fn status_response(protocol: Protocol, status: tonic::Status) -> HttpResponse {
    let mut response = match protocol {
        Protocol::Grpc => status.clone().into_http(),
        Protocol::Http => {
            let mut response = http::Response::new(Body::default());
            *response.status_mut() = match status.code() {
                Code::DeadlineExceeded => http::StatusCode::GATEWAY_TIMEOUT,
                _ => http::StatusCode::SERVICE_UNAVAILABLE,
            };
            response
        }
    };
    response.extensions_mut().insert(Refused(status));
    response
}

/// Decrements a replica's in-flight count however the call ends (cancellation included).
struct InFlight(Arc<Member>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Service<HttpRequest> for PeerChannel {
    type Response = HttpResponse;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<HttpResponse, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), BoxError>> {
        // Readiness is per replica, decided when the call is placed.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let shared = self.shared.clone();
        Box::pin(async move {
            let Some((member, permit)) = shared.pick(now()) else {
                metrics::counter!("grpc_client_requests_total", "service" => shared.caller, "peer" => shared.peer.clone(), "endpoint" => "none", "result" => "rejected").increment(1);
                shared.refresh.notify_one();
                return Ok(status_response(
                    shared.protocol,
                    tonic::Status::unavailable(format!(
                        "no {} replica can take the call (every one is failing, or none is known)",
                        shared.peer
                    )),
                ));
            };
            let limit = request
                .headers()
                .get("grpc-timeout")
                .and_then(|v| crate::grpc::parse_grpc_timeout(v.as_bytes()))
                .map_or(shared.config.call_timeout, |t| t.min(shared.config.call_timeout));
            let mut request = request;
            let name = match shared.protocol {
                Protocol::Grpc => request.uri().path().trim_start_matches('/').to_owned(),
                Protocol::Http => request.method().to_string(),
            };
            let span = crate::trace::client_span(
                shared.caller,
                &shared.peer,
                &name,
                &member.target.url,
                request.headers_mut(),
            );
            member.in_flight.fetch_add(1, Ordering::Relaxed);
            let _in_flight = InFlight(member.clone());
            let started = tokio::time::Instant::now();
            let attempt = tokio::time::timeout(limit, member.transport.clone().oneshot(request));
            let answer = tracing::Instrument::instrument(attempt, span.clone()).await;
            let took = started.elapsed();
            let outcome = match &answer {
                Ok(Ok(response)) => classify(shared.protocol, response),
                Ok(Err(_)) => CallResult::Failure,
                Err(_) => CallResult::Timeout,
            };
            let code = answer
                .as_ref()
                .ok()
                .and_then(|r| r.as_ref().ok())
                .and_then(|r| r.headers().get("grpc-status"));
            crate::trace::record_outcome(
                &span,
                "rpc.grpc.status_code",
                code.and_then(|v| v.to_str().ok()).unwrap_or("0"),
                matches!(outcome, CallResult::Failure | CallResult::Timeout),
            );
            match answer {
                Err(_elapsed) => {
                    shared.record(&member, permit, CallResult::Timeout, took);
                    Ok(status_response(
                        shared.protocol,
                        tonic::Status::deadline_exceeded(format!(
                            "{} at {} did not answer within {limit:?}",
                            shared.peer, member.target.url
                        )),
                    ))
                }
                Ok(Err(error)) => {
                    shared.record(&member, permit, CallResult::Failure, took);
                    shared.refresh.notify_one();
                    Ok(status_response(
                        shared.protocol,
                        tonic::Status::unavailable(format!(
                            "{} at {}: {error}",
                            shared.peer, member.target.url
                        )),
                    ))
                }
                Ok(Ok(response)) => {
                    shared.record(&member, permit, outcome, took);
                    Ok(response)
                }
            }
        })
    }
}

#[cfg(test)]
#[path = "balance_tests.rs"]
mod tests;
