//! The lifecycle every service shares.
//!
//! A service is an axum [`Router`]: its gRPC services (tonic routes turned into axum routes,
//! [`grpc_service_router`]) or its REST API. [`serve`] runs it on one listener that speaks
//! HTTP/1 and HTTP/2 (h2c, which gRPC uses) and, on shutdown, stops accepting and waits for
//! in-flight requests. The process's operational endpoints ([`ops_router`]: `/healthz`,
//! `/readyz`, `/metrics`) are served the same way on a listener of their own.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::telemetry;

/// A readiness check: `Ok` when the service can do useful work (its database answers, its
/// dependencies are reachable).
pub type ReadinessCheck =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>> + Send + Sync>;

/// Work done before each `/metrics` scrape, e.g. sampling pool gauges.
pub type ScrapeHook = Arc<dyn Fn() + Send + Sync>;

/// The operational endpoints of a process, on its admin listener.
#[derive(Clone)]
pub(crate) struct Ops {
    /// Cancelled when the process starts to stop: readiness turns 503 at once.
    pub draining: CancellationToken,
    /// Every service's readiness checks, with its name.
    pub readiness: Vec<(&'static str, ReadinessCheck)>,
    pub on_scrape: Vec<ScrapeHook>,
    /// The process's peer channels, for `/status`.
    pub board: crate::balance::Board,
}

/// `/healthz` (the process is alive), `/readyz` (every service in it can serve; 503 while
/// shutting down), `/metrics` (Prometheus text) and `/status` (peers' replicas, as JSON). These live on the admin listener
/// (`admin_http`), off the public port.
pub(crate) fn ops_router(ops: Ops) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .with_state(Arc::new(ops))
}

async fn readyz(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    if ops.draining.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned());
    }
    for (service, check) in &ops.readiness {
        if let Err(err) = check().await {
            tracing::warn!(service, error = %format!("{err:#}"), "not ready");
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{service} not ready: {err:#}"));
        }
    }
    (StatusCode::OK, "ready".to_owned())
}

/// The process's clients of its peers: each replica's weight, breaker, ejection, calls in
/// flight and latency estimate, as JSON.
async fn status(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    axum::Json(serde_json::json!({ "peers": ops.board.snapshot() }))
}

async fn metrics(State(ops): State<Arc<Ops>>) -> impl IntoResponse {
    for hook in &ops.on_scrape {
        hook();
    }
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], telemetry::metrics_handle().render())
}

/// Everything a gRPC service shares, around its own `routes`: the caller's trace continued,
/// token verification (callers' identities reach handlers), the caller's deadline enforced,
/// the standard gRPC health service reporting `health_name` SERVING, and request metrics.
/// Each service's router is this call.
pub async fn grpc_service_router(
    service: &'static str,
    health_name: &str,
    routes: tonic::service::Routes,
    verifier: Arc<crate::auth::Verifier>,
) -> Router {
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_service_status(health_name, tonic_health::ServingStatus::Serving).await;
    let grpc = routes
        .add_service(health_service)
        .into_axum_router()
        .layer(axum::middleware::from_fn_with_state(verifier, crate::auth::authenticate_grpc))
        .layer(axum::middleware::from_fn(crate::grpc::enforce_grpc_deadline))
        .layer(axum::middleware::from_fn(crate::trace::continue_trace));
    with_request_metrics(grpc, service)
}

/// Adds the request metrics layer for `service` to a router.
pub fn with_request_metrics(router: Router, service: &'static str) -> Router {
    // Install the registry now: what is recorded before it exists is lost.
    telemetry::metrics_handle();
    router.layer(axum::middleware::from_fn_with_state(service, telemetry::track_requests))
}

/// A running server: its address, and a handle to wait until it has drained.
pub struct Running {
    pub addr: SocketAddr,
    pub task: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains in-flight requests.
pub fn serve(
    service: &'static str,
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<Running> {
    let addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        // Small request/response pairs; Nagle's delay would dominate their latency.
        let _ = tcp.set_nodelay(true);
    });
    let task = tokio::spawn(async move {
        tracing::info!(service, %addr, "listening");
        // Handlers may ask for the peer's address (login throttling does).
        let make_service = router.into_make_service_with_connect_info::<SocketAddr>();
        let result =
            axum::serve(listener, make_service).with_graceful_shutdown(shutdown.cancelled_owned()).await;
        tracing::info!(service, %addr, "drained and stopped");
        result
    });
    Ok(Running { addr, task })
}

/// Resolves on SIGTERM or Ctrl-C, then cancels `token`.
pub async fn cancel_on_signal(token: CancellationToken) {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
        () = token.cancelled() => return,
    }
    token.cancel();
}
