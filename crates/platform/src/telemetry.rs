//! Logs and metrics, set up once per process.
//!
//! Logs are JSON lines (or human-readable with `BOOKSTORE_LOG_FORMAT=pretty`), filtered by
//! `RUST_LOG`. Metrics go to one process-wide Prometheus registry; every series carries a
//! `service` label, so `bookstore up` (all services in one process) stays readable.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// Latency buckets in seconds, from a cache hit to a slow query.
const LATENCY_BUCKETS: &[f64] =
    &[0.000_25, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the global log subscriber. Safe to call more than once (tests do); later calls are
/// no-ops.
pub fn init_logging() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,tower_http=info,h2=warn"));
        let pretty = std::env::var("BOOKSTORE_LOG_FORMAT").is_ok_and(|v| v == "pretty");
        let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
        let result = if pretty {
            builder.try_init()
        } else {
            builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
        };
        // A test harness may have installed a subscriber already; that is fine.
        let _ = result;
    });
}

/// The process-wide Prometheus registry, installed on first use.
pub(crate) fn metrics_handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("static buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may be installed (a test harness); then ours only renders itself.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Axum middleware that counts requests and errors and times them, per HTTP route or per gRPC
/// method. The `service` label is the middleware's state.
///
/// gRPC is recognised by its content type. Its status travels in the `grpc-status` header for
/// errors (tonic sends them as trailers-only responses) and in trailers for successes, so a
/// response without the header counts as OK.
pub(crate) async fn track_requests(
    State(service): State<&'static str>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let is_grpc = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let method = request.method().as_str().to_owned();
    let route = if is_grpc {
        request.uri().path().to_owned()
    } else {
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
    };
    let response = next.run(request).await;
    let elapsed = started.elapsed().as_secs_f64();
    if is_grpc {
        let code =
            response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned();
        let failed = !matches!(code.as_str(), "0" | "3" | "5" | "6" | "9");
        metrics::counter!("grpc_server_requests_total", "service" => service, "rpc" => route.clone(), "code" => code).increment(1);
        if failed {
            metrics::counter!("grpc_server_errors_total", "service" => service, "rpc" => route.clone())
                .increment(1);
        }
        metrics::histogram!("grpc_server_request_duration_seconds", "service" => service, "rpc" => route)
            .record(elapsed);
    } else {
        let status = response.status();
        metrics::counter!("http_server_requests_total", "service" => service, "method" => method.clone(), "route" => route.clone(), "status" => status.as_u16().to_string()).increment(1);
        if status.is_server_error() {
            metrics::counter!("http_server_errors_total", "service" => service, "method" => method.clone(), "route" => route.clone()).increment(1);
        }
        metrics::histogram!("http_server_request_duration_seconds", "service" => service, "method" => method, "route" => route).record(elapsed);
    }
    response
}
