//! Logs and metrics, set up once per process.
//!
//! Logs are JSON lines (or human-readable with `BOOKSTORE_LOG_FORMAT=pretty`), filtered by
//! `RUST_LOG`. Metrics go to one process-wide Prometheus registry; every series carries a
//! `service` label, so `bookstore up` (all services in one process) stays readable.
//!
//! **Names** follow one rule: `<area>_<subject>_<unit>`, with Prometheus's base units
//! (`_seconds`, `_bytes`), `_total` for counters and no suffix for a gauge of things
//! (`db_pool_connections`); the area is the layer (`http_server`, `grpc_client`, `events`,
//! `websocket`, `cache`, `db_pool`, `tokio_runtime`) or the business (`orders`). Labels are
//! lower-case nouns; outcomes are one label (`result` or `outcome`), never one series per
//! outcome. What is process-wide, not a service's, says `service="process"`. The list of
//! every series is `deploy/monitoring/metrics.txt`, which CI checks the dashboards against.

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

/// `handler`, counted and timed for `consumer` of `service`: `events_handled_total` by outcome
/// (`ok`, or `failed` for an attempt the bus will make again), `events_handle_duration_seconds`,
/// and `events_consumer_lag_seconds`, how long ago the event just handled was published.
pub(crate) fn metered_handler<F, Fut>(
    service: &'static str,
    consumer: &'static str,
    handler: F,
) -> impl Fn(
    crate::events::Event,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>
+ Send
+ Sync
+ 'static
where
    F: Fn(crate::events::Event) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let [ok, failed] = ["ok", "failed"].map(|outcome| {
        metrics::counter!("events_handled_total", "service" => service, "consumer" => consumer, "outcome" => outcome)
    });
    let duration =
        metrics::histogram!("events_handle_duration_seconds", "service" => service, "consumer" => consumer);
    let lag = metrics::gauge!("events_consumer_lag_seconds", "service" => service, "consumer" => consumer);
    move |event| {
        let published = published_at(&event);
        let (ok, failed, duration, lag) = (ok.clone(), failed.clone(), duration.clone(), lag.clone());
        let handled = handler(event);
        Box::pin(async move {
            let started = Instant::now();
            let result = handled.await;
            duration.record(started.elapsed().as_secs_f64());
            match &result {
                Ok(()) => ok.increment(1),
                Err(_) => failed.increment(1),
            }
            if let Some(ms) = published {
                lag.set((crate::clock::now_ms() - ms).max(0) as f64 / 1000.0);
            }
            result
        })
    }
}

/// When `event` was published, from its envelope.
fn published_at(event: &crate::events::Event) -> Option<i64> {
    use prost::Message;
    let envelope = bookstore_api::orders::v1::EventEnvelope::decode(event.body.as_slice()).ok()?;
    let time = envelope.time?;
    Some(time.seconds * 1000 + i64::from(time.nanos) / 1_000_000)
}

/// How often the dead letters of a consumer are counted.
const DEAD_LETTERS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// Keeps `events_dead_letters{service, consumer}`, the events `consumer` gave up on and left
/// for an operator, up to date until `stopping`.
pub(crate) async fn watch_dead_letters(
    service: &'static str,
    consumer: &'static str,
    bus: crate::events::Bus,
    stopping: tokio_util::sync::CancellationToken,
) {
    let gauge = metrics::gauge!("events_dead_letters", "service" => service, "consumer" => consumer);
    // The first count once the consumer has had time to declare its queues.
    let mut wait = std::time::Duration::from_secs(5);
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopping.cancelled() => return,
        }
        match bus.dead_letter_count(consumer).await {
            Ok(n) => gauge.set(n as f64),
            Err(e) => tracing::debug!(consumer, error = %format!("{e:#}"), "dead letters not counted"),
        }
        wait = DEAD_LETTERS_EVERY;
    }
}

/// Samples the async runtime's own gauges (`tokio_runtime_*{service="process"}`): its worker
/// threads, its live tasks, and the tasks waiting in its global queue.
pub(crate) fn record_runtime() {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let m = runtime.metrics();
    metrics::gauge!("tokio_runtime_workers", "service" => "process").set(m.num_workers() as f64);
    metrics::gauge!("tokio_runtime_alive_tasks", "service" => "process").set(m.num_alive_tasks() as f64);
    metrics::gauge!("tokio_runtime_global_queue_depth", "service" => "process")
        .set(m.global_queue_depth() as f64);
}
