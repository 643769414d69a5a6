//! Distributed tracing: an OpenTelemetry span for every hop of a request, W3C trace context
//! (`traceparent`) between the hops, and export over OTLP.
//!
//! - Every server opens one *server* span per request ([`server_span`], from the request
//!   metrics middleware), continuing the caller's `traceparent` or starting a trace.
//! - Each attempt of a call to a peer is a *client* span ([`client_span`], from the balancer),
//!   whose context and the caller's W3C `baggage` the request carries, so the callee's server
//!   span is its child.
//! - Events keep the context of the request that wrote them in their envelope
//!   ([`current_traceparent`]); the outbox relay's publication of one is a *producer* span
//!   ([`producer_span`]) and its handling a *consumer* span ([`consumer_span`]), both children of
//!   that request, so a checkout's trace reaches the services that react to it.
//! - A message on a WebSocket starts a trace of its own ([`message_span`]).
//!
//! The spans are `tracing` spans, made OpenTelemetry spans by `tracing-opentelemetry`: the log
//! lines of a request name its `trace_id`, and nested `tracing` spans at `info` become child
//! spans. Sampling is parent-based: a caller's decision is kept, and a trace that starts here is
//! sampled at `trace_sample_ratio`. Sampled spans go in batches to an OTLP collector, over gRPC
//! or HTTP (`otlp_protocol`), when `otlp_endpoint` is set; without one they still carry trace ids into logs and to peers. The
//! last of them are also kept in memory for the admin listener ([`crate::recent_traces`]).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::KeyValue;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub(crate) const HEADER: &str = "traceparent";

/// W3C trace context and W3C baggage, read from and written to every hop.
static PROPAGATOR: std::sync::LazyLock<TextMapCompositePropagator> = std::sync::LazyLock::new(|| {
    let propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> =
        vec![Box::new(TraceContextPropagator::new()), Box::new(BaggagePropagator::new())];
    TextMapCompositePropagator::new(propagators)
});

/// How long one batch of spans may take to reach the collector.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How spans travel to the collector: the names OpenTelemetry's `OTEL_EXPORTER_OTLP_PROTOCOL`
/// uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over gRPC (a collector's port 4317).
    #[default]
    Grpc,
    /// OTLP over HTTP, protobuf bodies, to `<endpoint>/v1/traces` (port 4318).
    HttpProtobuf,
}

impl std::str::FromStr for OtlpProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "grpc" => Ok(Self::Grpc),
            "http/protobuf" => Ok(Self::HttpProtobuf),
            other => Err(format!("{other:?} is not grpc or http/protobuf")),
        }
    }
}

/// What tracing is told by configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct TracingSettings {
    /// The OTLP collector (`http://host:4317` for gRPC, `http://host:4318` for HTTP); `None`:
    /// spans are not exported.
    pub otlp_endpoint: Option<String>,
    pub otlp_protocol: OtlpProtocol,
    /// The share of traces started here that are sampled, 0 to 1.
    pub sample_ratio: f64,
    /// `service.name` of this process's spans: the service it runs, or `bookstore` for several.
    pub service_name: String,
}

impl TracingSettings {
    /// Every trace sampled, nothing exported: for tests and tools.
    pub fn local(service_name: &str) -> Self {
        Self {
            otlp_endpoint: None,
            otlp_protocol: OtlpProtocol::Grpc,
            sample_ratio: 1.0,
            service_name: service_name.to_owned(),
        }
    }
}

/// The tracer provider of this process. Must be made inside the Tokio runtime (the OTLP
/// exporter's channel lives on it).
pub(crate) fn provider(settings: &TracingSettings) -> anyhow::Result<SdkTracerProvider> {
    anyhow::ensure!(
        (0.0..=1.0).contains(&settings.sample_ratio),
        "the trace sample ratio must be between 0 and 1"
    );
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        ])
        .build();
    let mut builder = SdkTracerProvider::builder()
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio))))
        .with_resource(resource)
        .with_span_processor(crate::recent_traces::Recorder);
    if let Some(endpoint) = &settings.otlp_endpoint {
        use opentelemetry_otlp::WithExportConfig as _;
        let exporter = match settings.otlp_protocol {
            OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
            // The batch processor exports from a thread of its own, off the runtime: the HTTP
            // exporter's client is a blocking one.
            OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(traces_url(endpoint))
                .with_timeout(EXPORT_TIMEOUT)
                .build(),
        }
        .with_context(|| format!("setting up span export to {endpoint}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    Ok(builder.build())
}

/// The OTLP/HTTP traces address of a collector at `endpoint`: `<endpoint>/v1/traces`, as
/// OpenTelemetry's exporters take a base endpoint; an address that already ends so is kept.
fn traces_url(endpoint: &str) -> String {
    let endpoint = endpoint.trim_end_matches('/');
    if endpoint.ends_with("/v1/traces") { endpoint.to_owned() } else { format!("{endpoint}/v1/traces") }
}

/// Reads trace context from HTTP headers (gRPC metadata are HTTP/2 headers).
struct Headers<'a>(&'a http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes trace context into HTTP headers.
struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (http::HeaderName::from_bytes(key.as_bytes()), value.parse()) {
            self.0.insert(key, value);
        }
    }
}

/// Opens the server span of one request to `service`, named `name` (`GET /api/v1/books/{id}`,
/// or the gRPC method), as a child of the caller's span when its headers carry one; records its
/// trace id for logs, and the request id the edge gave it.
pub(crate) fn server_span(service: &'static str, name: &str, headers: &http::HeaderMap) -> tracing::Span {
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    let span = tracing::info_span!(
        "request",
        otel.name = name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        service,
        request_id,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    adopt(&span, PROPAGATOR.extract(&Headers(headers)));
    span
}

/// Opens the *client* span of one attempt of a call from `service` to a replica (`endpoint`)
/// of `peer`, named `name` (the gRPC method), and puts its context on the request's `headers`,
/// so the replica's server span is its child. A retried call is one span per attempt.
pub(crate) fn client_span(
    service: &'static str,
    peer: &str,
    name: &str,
    endpoint: &str,
    headers: &mut http::HeaderMap,
) -> tracing::Span {
    let span = tracing::info_span!(
        "call",
        otel.name = name,
        otel.kind = "client",
        otel.status_code = tracing::field::Empty,
        service,
        peer,
        server.address = endpoint,
        rpc.grpc.status_code = tracing::field::Empty,
    );
    PROPAGATOR.inject_context(&span.context(), &mut HeadersMut(headers));
    span
}

/// Opens the span of one message a client sent on `service`'s WebSocket `socket`: a trace of
/// its own (a socket outlives the request that opened it), which the calls it makes join.
pub fn message_span(service: &'static str, socket: &'static str) -> tracing::Span {
    let span = tracing::info_span!(
        "message",
        otel.name = format!("{socket} message"),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        service,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    adopt(&span, opentelemetry::Context::new());
    span
}

/// Opens the *producer* span of `service`'s outbox relay publishing one event of `event_type`,
/// as a child of the request that wrote it (`traceparent`, from the event's envelope).
pub(crate) fn producer_span(service: &'static str, event_type: &str, traceparent: &str) -> tracing::Span {
    let span = tracing::info_span!(
        "publish",
        otel.name = format!("publish {event_type}"),
        otel.kind = "producer",
        otel.status_code = tracing::field::Empty,
        service,
    );
    adopt(&span, remote_parent(traceparent));
    span
}

/// Opens the span of `consumer` (of `service`) handling one event of `event_type`, as a child
/// of the request that published it (`traceparent`, from the event's envelope).
pub(crate) fn consumer_span(
    service: &'static str,
    consumer: &'static str,
    event_type: &str,
    traceparent: &str,
) -> tracing::Span {
    let span = tracing::info_span!(
        "event",
        otel.name = format!("{consumer} {event_type}"),
        otel.kind = "consumer",
        otel.status_code = tracing::field::Empty,
        service,
        consumer,
        trace_id = tracing::field::Empty,
        span_id = tracing::field::Empty,
    );
    adopt(&span, remote_parent(traceparent));
    span
}

/// The remote span a `traceparent` value (from an event's envelope) names, as a context to
/// adopt; an empty context when the value is not well formed.
fn remote_parent(traceparent: &str) -> opentelemetry::Context {
    let carrier = HashMap::from([(HEADER.to_owned(), traceparent.to_owned())]);
    TraceContextPropagator::new().extract(&carrier)
}

/// Makes `parent` (when it holds a valid remote span) the parent of `span`, and writes the
/// trace id `span` ends up in and its own span id on it, for the log lines within it.
fn adopt(span: &tracing::Span, parent: opentelemetry::Context) {
    if parent.span().span_context().is_valid() {
        // Fails only when the span is disabled, and then there is nothing to trace.
        let _ = span.set_parent(parent);
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", tracing::field::display(span_context.trace_id()));
        span.record("span_id", tracing::field::display(span_context.span_id()));
    }
}

/// Records the answer on a server or client span (`field` is `http.response.status_code` or
/// `rpc.grpc.status_code`), and marks the span failed when the server was at fault.
pub(crate) fn record_outcome(span: &tracing::Span, field: &str, code: &str, failed: bool) {
    span.record(field, code);
    if failed {
        span.record("otel.status_code", "ERROR");
    }
}

/// Marks `span` failed (a handler that returned an error).
pub(crate) fn mark_failed(span: &tracing::Span) {
    span.record("otel.status_code", "ERROR");
}

/// The current span's context as a `traceparent` value, for an event's envelope; `None` outside
/// any traced work.
pub fn current_traceparent() -> Option<String> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    carrier.remove(HEADER)
}

/// The trace id in a `traceparent` value (32 hex digits), if it is well formed.
pub fn trace_id_of(traceparent: &str) -> Option<String> {
    let context = remote_parent(traceparent);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// Runs `work` with our spans made OpenTelemetry spans, on this thread only.
    fn traced<T>(work: impl FnOnce() -> T) -> T {
        let provider = provider(&TracingSettings::local("test")).unwrap();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), work)
    }

    fn headers(traceparent: &str) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        headers.insert(HEADER, traceparent.parse().unwrap());
        headers
    }

    /// Opens the client span of a call made from the current span: the `traceparent` it puts
    /// on the call's headers, and the client span's own.
    fn call_from_here() -> (String, String) {
        let mut headers = http::HeaderMap::new();
        let call = client_span("orders", "books", "GetBook", "http://books", &mut headers);
        let sent = headers.get(HEADER).unwrap().to_str().unwrap().to_owned();
        (sent, call.in_scope(current_traceparent).unwrap())
    }

    /// `[version, trace id, span id, flags]` of a `traceparent`.
    fn fields(traceparent: &str) -> Vec<String> {
        traceparent.split('-').map(str::to_owned).collect()
    }

    #[test]
    fn a_request_continues_its_callers_trace_into_the_calls_and_events_it_makes() {
        let (sent, call, enveloped) = traced(|| {
            let span = server_span("books", "GET /", &headers(CALLER));
            span.in_scope(|| {
                let (sent, call) = call_from_here();
                (sent, call, current_traceparent().unwrap())
            })
        });
        let caller = fields(CALLER);
        for hop in [fields(&sent), fields(&enveloped)] {
            assert_eq!(hop[1], caller[1], "the same trace");
            assert_ne!(hop[2], caller[2], "a span of its own");
            assert_eq!(hop[3], "01", "sampled, as the caller decided");
        }
        assert_eq!(sent, call, "a call's headers name its client span as the callee's parent");
        assert_ne!(fields(&sent)[2], fields(&enveloped)[2], "the call is a span of its own");
    }

    #[test]
    fn a_callers_baggage_travels_on_with_its_trace() {
        let mut incoming = headers(CALLER);
        incoming.insert("baggage", "tenant=acme,region=eu".parse().unwrap());
        let sent = traced(|| {
            server_span("gateway", "GET /", &incoming).in_scope(|| {
                let mut headers = http::HeaderMap::new();
                let _call = client_span("gateway", "books", "GetBook", "http://books", &mut headers);
                headers.get("baggage").map(|v| v.to_str().unwrap().to_owned())
            })
        });
        let mut items: Vec<String> = sent.expect("baggage sent on").split(',').map(str::to_owned).collect();
        items.sort();
        assert_eq!(items, ["region=eu", "tenant=acme"]);
    }

    #[test]
    fn a_caller_that_did_not_sample_its_trace_is_not_sampled_below() {
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let sent =
            traced(|| server_span("books", "GET /", &headers(unsampled)).in_scope(current_traceparent));
        let sent = fields(&sent.unwrap());
        assert_eq!(sent[1], fields(unsampled)[1]);
        assert_eq!(sent[3], "00");
    }

    #[test]
    fn a_request_without_a_usable_traceparent_starts_a_sampled_trace() {
        for bad in ["", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "garbage"] {
            let sent = traced(|| server_span("books", "GET /", &headers(bad)).in_scope(current_traceparent));
            let sent = fields(&sent.unwrap());
            assert_eq!(sent[1].len(), 32, "{bad:?}");
            assert_ne!(sent[1], "00000000000000000000000000000000");
            assert_eq!(sent[3], "01", "{bad:?}");
        }
    }

    #[test]
    fn an_events_handler_is_a_child_of_the_request_that_published_it() {
        let published =
            traced(|| server_span("orders", "POST /", &headers(CALLER)).in_scope(current_traceparent));
        let published = published.unwrap();
        let handled = traced(|| {
            consumer_span("fulfillment", "fulfillment", "OrderPlaced", &published)
                .in_scope(current_traceparent)
        });
        let (published, handled) = (fields(&published), fields(&handled.unwrap()));
        assert_eq!(handled[1], published[1]);
        assert_ne!(handled[2], published[2]);
        assert_eq!(trace_id_of(&published.join("-")).as_deref(), Some(published[1].as_str()));
        assert_eq!(trace_id_of("nonsense"), None);
    }

    #[test]
    fn each_websocket_message_starts_a_trace_of_its_own() {
        let (first, second) = traced(|| {
            let first = message_span("gateway", "queue").in_scope(current_traceparent).unwrap();
            let second = message_span("gateway", "queue").in_scope(current_traceparent).unwrap();
            (fields(&first), fields(&second))
        });
        assert_ne!(first[1], second[1]);
        assert_eq!(first[3], "01");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sampled_spans_reach_a_collector_over_grpc_and_over_http() {
        let receiver = crate::testing::OtlpReceiver::start().await;
        for (protocol, endpoint, name) in [
            (OtlpProtocol::Grpc, receiver.endpoint.clone(), "over grpc"),
            (OtlpProtocol::HttpProtobuf, receiver.http_endpoint.clone(), "over http"),
        ] {
            let settings = TracingSettings {
                otlp_endpoint: Some(endpoint),
                otlp_protocol: protocol,
                ..TracingSettings::local("exporter-test")
            };
            let provider = provider(&settings).unwrap();
            let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
            tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
                server_span("books", name, &http::HeaderMap::new()).in_scope(|| {});
            });
            // The batch goes now; the exporters work off the runtime, so wait off it too.
            tokio::task::spawn_blocking(move || provider.force_flush()).await.unwrap().unwrap();
            let got = receiver.spans();
            let span = got.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("{name}: {got:#?}"));
            assert_eq!((span.service_name.as_str(), span.kind), ("exporter-test", "server"));
        }
    }

    #[test]
    fn a_collector_address_gets_the_traces_path_once() {
        assert_eq!(traces_url("http://c:4318"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(traces_url("http://c:4318/v1/traces"), "http://c:4318/v1/traces");
        assert_eq!("http/protobuf".parse(), Ok(OtlpProtocol::HttpProtobuf));
        assert_eq!("grpc".parse(), Ok(OtlpProtocol::Grpc));
        assert!("http/json".parse::<OtlpProtocol>().is_err());
    }

    #[test]
    fn outside_any_span_there_is_nothing_to_carry() {
        assert_eq!(traced(current_traceparent), None);
    }
}
