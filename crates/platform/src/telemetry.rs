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

/// The log subscriber's defaults when `RUST_LOG` is unset.
const LOG_FILTER: &str = "info,sqlx=warn,tower_http=info,h2=warn";

/// Installs the global log subscriber, without tracing: for commands that serve nothing. Safe to
/// call more than once; only the first install of the process counts.
pub fn init_logging() {
    let _ = install(None, Output::Stderr);
}

/// The tracer provider of a serving process. Spans still buffered are sent when it is shut down.
pub struct Tracing(opentelemetry_sdk::trace::SdkTracerProvider);

impl Tracing {
    /// Sends every span that has ended (waiting for the collector a few seconds at most), then
    /// stops exporting.
    pub fn shutdown(self) {
        let _ = self.0.shutdown();
    }
}

/// Installs the global subscriber for a serving process: logs as [`init_logging`], and every
/// `info` span of ours made an OpenTelemetry span ([`crate::trace`]), exported as `settings`
/// say. Call inside the Tokio runtime, before anything logs; fails if a subscriber is installed.
pub fn init_tracing(settings: &crate::trace::TracingSettings) -> anyhow::Result<Tracing> {
    let provider = crate::trace::provider(settings)?;
    install(Some(&provider), Output::Stderr)?;
    Ok(Tracing(provider))
}

/// Where log lines go.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Output {
    /// JSON lines on stderr (or human-readable with `BOOKSTORE_LOG_FORMAT=pretty`).
    Stderr,
    /// The test harness's captured output, warnings and up unless `RUST_LOG` says otherwise.
    Test,
}

/// Installs the log layer for `output` and, with a `provider`, the layer that makes our `info`
/// spans OpenTelemetry spans. Each layer has its own filter: `RUST_LOG` narrows the logs, never
/// the traces.
pub(crate) fn install(
    provider: Option<&opentelemetry_sdk::trace::SdkTracerProvider>,
    output: Output,
) -> anyhow::Result<()> {
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;

    type Boxed = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;
    let default = if output == Output::Test { "warn" } else { LOG_FILTER };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let fmt = tracing_subscriber::fmt::layer();
    let logs: Boxed = match output {
        Output::Test => fmt.with_test_writer().with_filter(filter).boxed(),
        Output::Stderr if std::env::var("BOOKSTORE_LOG_FORMAT").is_ok_and(|v| v == "pretty") => {
            fmt.with_writer(std::io::stderr).with_filter(filter).boxed()
        }
        Output::Stderr => fmt
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .with_filter(filter)
            .boxed(),
    };
    let mut layers = vec![logs];
    if let Some(provider) = provider {
        use opentelemetry::trace::TracerProvider as _;
        let ours = tracing_subscriber::filter::Targets::new().with_target("bookstore", tracing::Level::INFO);
        let tracer = provider.tracer("bookstore");
        // Every span is opened in `trace`, on a pool thread: where and which thread say nothing.
        let spans =
            tracing_opentelemetry::layer().with_tracer(tracer).with_location(false).with_threads(false);
        layers.push(spans.with_filter(ours).boxed());
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
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
    let span = if route.starts_with("/grpc.health.v1.Health/") {
        // Probes every few seconds from every peer and orchestrator: traces of nothing.
        tracing::Span::none()
    } else if is_grpc {
        crate::trace::server_span(service, route.trim_start_matches('/'), request.headers())
    } else {
        crate::trace::server_span(service, &format!("{method} {route}"), request.headers())
    };
    let response = tracing::Instrument::instrument(next.run(request), span.clone()).await;
    let elapsed = started.elapsed().as_secs_f64();
    if is_grpc {
        // A status sent at once is a header; one sent after a streamed body is a trailer, which
        // this layer does not see (and counts as OK).
        let code =
            response.headers().get("grpc-status").and_then(|v| v.to_str().ok()).unwrap_or("0").to_owned();
        let failed = !matches!(code.as_str(), "0" | "3" | "5" | "6" | "9");
        crate::trace::record_outcome(&span, "rpc.grpc.status_code", &code, failed);
        metrics::counter!("grpc_server_requests_total", "service" => service, "rpc" => route.clone(), "code" => code).increment(1);
        if failed {
            metrics::counter!("grpc_server_errors_total", "service" => service, "rpc" => route.clone())
                .increment(1);
        }
        metrics::histogram!("grpc_server_request_duration_seconds", "service" => service, "rpc" => route)
            .record(elapsed);
    } else {
        let status = response.status();
        crate::trace::record_outcome(
            &span,
            "http.response.status_code",
            status.as_str(),
            status.is_server_error(),
        );
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
        let (published, traceparent) = event.provenance();
        let span = crate::trace::consumer_span(service, consumer, &event.event_type, &traceparent);
        let (ok, failed, duration, lag) = (ok.clone(), failed.clone(), duration.clone(), lag.clone());
        let handled = span.in_scope(|| handler(event));
        Box::pin(tracing::Instrument::instrument(
            async move {
                let started = Instant::now();
                let result = handled.await;
                duration.record(started.elapsed().as_secs_f64());
                match &result {
                    Ok(()) => ok.increment(1),
                    Err(_) => {
                        failed.increment(1);
                        crate::trace::mark_failed(&tracing::Span::current());
                    }
                }
                if let Some(ms) = published {
                    lag.set((crate::clock::now_ms() - ms).max(0) as f64 / 1000.0);
                }
                result
            },
            span,
        ))
    }
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
