//! The last traces this process took part in, kept in memory and served on the admin listener:
//! a trace viewer that needs no collector (`bookstore up` on a laptop).
//!
//! - `GET /debug/traces`: the last [`KEEP_TRACES`] traces, newest first: trace id, the name and
//!   service of its first span here, when it started, how long it took, how many spans, whether
//!   any failed.
//! - `GET /debug/traces/{trace_id}`: its spans in start order, each with its parent, offset and
//!   duration; `?format=text` draws them as an indented waterfall for a terminal.
//!
//! It is a span processor beside the exporter: it sees the sampled spans, keeps the newest
//! traces (at most [`KEEP_SPANS`] spans each) and forgets the oldest. Spans are kept as the
//! exporter hands them over and put into words only when the page is read: formatting ids,
//! names and attributes as each span ended cost a cached read a tenth of its rate with every
//! trace sampled. Production sends traces to a collector ([`crate::trace`]); this page is for
//! looking at one process quickly.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use opentelemetry::trace::{SpanKind, Status, TraceId};
use opentelemetry_sdk::trace::{SpanData, SpanProcessor};

/// How many traces are kept.
pub const KEEP_TRACES: usize = 300;
/// How many spans of one trace are kept (a long-lived trace stops growing here).
pub const KEEP_SPANS: usize = 200;

/// One finished span, as the page shows it: made from a kept [`SpanData`] when it is asked for.
#[derive(Debug, Clone, serde::Serialize)]
struct Kept {
    span_id: String,
    parent_span_id: Option<String>,
    name: String,
    kind: &'static str,
    service: String,
    #[serde(skip)]
    start: SystemTime,
    duration_ms: f64,
    failed: bool,
    attributes: HashMap<String, String>,
}

#[derive(Debug, Default)]
struct Recent {
    /// Trace ids, oldest first.
    order: VecDeque<TraceId>,
    traces: HashMap<TraceId, Vec<SpanData>>,
}

/// The process's recent traces.
static RECENT: LazyLock<Mutex<Recent>> = LazyLock::new(Mutex::default);

/// The span processor that fills the page; added to the process's tracer provider.
#[derive(Debug)]
pub(crate) struct Recorder;

impl SpanProcessor for Recorder {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        let trace_id = span.span_context.trace_id();
        let mut recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let recent = &mut *recent;
        if !recent.traces.contains_key(&trace_id) {
            if recent.order.len() == KEEP_TRACES
                && let Some(oldest) = recent.order.pop_front()
            {
                recent.traces.remove(&oldest);
            }
            recent.order.push_back(trace_id);
        }
        let spans = recent.traces.entry(trace_id).or_default();
        if spans.len() < KEEP_SPANS {
            spans.push(span);
        }
    }

    fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> opentelemetry_sdk::error::OTelSdkResult {
        Ok(())
    }
}

/// The `service` attribute a span is tagged with (empty when it has none).
fn service_of(span: &SpanData) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == "service")
        .map(|kv| kv.value.to_string())
        .unwrap_or_default()
}

fn keep(span: &SpanData) -> Kept {
    let attributes: HashMap<String, String> =
        span.attributes.iter().map(|kv| (kv.key.to_string(), kv.value.to_string())).collect();
    Kept {
        span_id: span.span_context.span_id().to_string(),
        parent_span_id: (span.parent_span_id != opentelemetry::trace::SpanId::INVALID)
            .then(|| span.parent_span_id.to_string()),
        name: span.name.to_string(),
        kind: match span.span_kind {
            SpanKind::Server => "server",
            SpanKind::Client => "client",
            SpanKind::Producer => "producer",
            SpanKind::Consumer => "consumer",
            SpanKind::Internal => "internal",
        },
        service: attributes.get("service").cloned().unwrap_or_default(),
        start: span.start_time,
        duration_ms: span.end_time.duration_since(span.start_time).unwrap_or_default().as_secs_f64() * 1000.0,
        failed: matches!(span.status, Status::Error { .. }),
        attributes,
    }
}

fn unix_ms(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// `GET /debug/traces`: the kept traces, newest first.
pub(crate) async fn list() -> Response {
    let recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let traces: Vec<serde_json::Value> = recent
        .order
        .iter()
        .rev()
        .filter_map(|id| {
            let spans = recent.traces.get(id)?;
            let first = spans.iter().min_by_key(|s| s.start_time)?;
            let end = spans.iter().map(|s| s.end_time).max()?;
            Some(serde_json::json!({
                "trace_id": id.to_string(),
                "root": first.name,
                "service": service_of(first),
                "start_unix_ms": unix_ms(first.start_time),
                "duration_ms": end.duration_since(first.start_time).unwrap_or_default().as_secs_f64() * 1000.0,
                "spans": spans.len(),
                "failed": spans.iter().any(|s| matches!(s.status, Status::Error { .. })),
            }))
        })
        .collect();
    axum::Json(serde_json::json!({ "traces": traces })).into_response()
}

#[derive(serde::Deserialize)]
pub(crate) struct Format {
    format: Option<String>,
}

/// `GET /debug/traces/{trace_id}`: one kept trace's spans in start order (JSON, or a text
/// waterfall with `?format=text`).
pub(crate) async fn show(Path(trace_id): Path<String>, Query(format): Query<Format>) -> Response {
    let Ok(id) = TraceId::from_hex(&trace_id) else {
        return (StatusCode::BAD_REQUEST, "a trace id is 32 hex digits").into_response();
    };
    let mut spans = {
        let recent = RECENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match recent.traces.get(&id) {
            Some(spans) => spans.iter().map(keep).collect::<Vec<Kept>>(),
            None => return (StatusCode::NOT_FOUND, "no such trace kept").into_response(),
        }
    };
    spans.sort_by_key(|s| s.start);
    let origin = spans[0].start;
    let offset = |s: &Kept| s.start.duration_since(origin).unwrap_or_default().as_secs_f64() * 1000.0;
    if format.format.as_deref() == Some("text") {
        return waterfall(&spans, offset).into_response();
    }
    let spans: Vec<serde_json::Value> = spans
        .iter()
        .map(|s| {
            let mut value = serde_json::to_value(s).unwrap_or_default();
            value["start_offset_ms"] = serde_json::json!(offset(s));
            value
        })
        .collect();
    axum::Json(serde_json::json!({ "trace_id": trace_id, "spans": spans })).into_response()
}

/// One line a span, indented under its parent, with a bar where it ran on a 40-column clock.
fn waterfall(spans: &[Kept], offset: impl Fn(&Kept) -> f64) -> String {
    let total = spans.iter().map(|s| offset(s) + s.duration_ms).fold(0.0_f64, f64::max).max(0.001);
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = String::new();
    // Roots here: no parent, or a parent this process did not see (the caller's).
    let roots: Vec<&Kept> =
        spans.iter().filter(|s| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p))).collect();
    let mut stack: Vec<(&Kept, usize)> = roots.into_iter().rev().map(|s| (s, 0)).collect();
    while let Some((span, depth)) = stack.pop() {
        let from = (offset(span) / total * 40.0) as usize;
        let width = ((span.duration_ms / total * 40.0).ceil() as usize).max(1).min(40 - from.min(39));
        let bar = format!("{}{}", " ".repeat(from.min(39)), "█".repeat(width));
        // A call names who called whom; the callee's own span follows under it.
        let who = match span.attributes.get("peer") {
            Some(peer) if span.kind == "client" => format!("{} → {peer}", span.service),
            _ => span.service.clone(),
        };
        let _ = writeln!(
            out,
            "{bar:<40} {:>9.3} ms  {}{} [{who}]{}",
            span.duration_ms,
            "  ".repeat(depth),
            span.name,
            if span.failed { " ERROR" } else { "" }
        );
        let children =
            spans.iter().filter(|c| c.parent_span_id.as_deref() == Some(span.span_id.as_str())).rev();
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    out
}

#[cfg(test)]
mod tests {
    use axum::body::to_bytes;
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};

    use super::*;

    async fn body(response: Response) -> (StatusCode, String) {
        let status = response.status();
        (status, String::from_utf8(to_bytes(response.into_body(), 1 << 20).await.unwrap().to_vec()).unwrap())
    }

    fn query(format: Option<&str>) -> Query<Format> {
        Query(Format { format: format.map(str::to_owned) })
    }

    #[tokio::test]
    async fn a_finished_trace_is_listed_and_shown_as_a_tree() {
        let provider = crate::trace::provider(&crate::trace::TracingSettings::local("test")).unwrap();
        let tracer = provider.tracer("test");
        let trace_id = tracer.in_span("POST /api/v1/orders", |cx| {
            cx.span().set_attribute(opentelemetry::KeyValue::new("service", "gateway"));
            tracer.in_span("bookstore.orders.v1.OrderService/CreateOrder", |cx| {
                let mut failing = tracer.start("bookstore.books.v1.BookService/ReserveStock");
                failing.set_status(Status::error("out of stock"));
                failing.end();
                cx.span().span_context().trace_id()
            })
        });

        let (status, listed) = body(list().await).await;
        assert_eq!(status, StatusCode::OK);
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
        let first = &listed["traces"][0];
        assert_eq!(first["trace_id"], trace_id.to_string(), "newest first");
        assert_eq!(first["root"], "POST /api/v1/orders");
        assert_eq!(first["service"], "gateway");
        assert_eq!(first["spans"], 3);
        assert_eq!(first["failed"], true);

        let (status, shown) = body(show(Path(trace_id.to_string()), query(None)).await).await;
        assert_eq!(status, StatusCode::OK);
        let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
        let spans = shown["spans"].as_array().unwrap();
        assert_eq!(spans[0]["name"], "POST /api/v1/orders");
        assert_eq!(spans[0]["parent_span_id"], serde_json::Value::Null);
        assert_eq!(spans[1]["parent_span_id"], spans[0]["span_id"], "in start order, each under its parent");
        assert_eq!(spans[2]["parent_span_id"], spans[1]["span_id"]);
        assert_eq!(spans[0]["start_offset_ms"], 0.0);

        let (_, text) = body(show(Path(trace_id.to_string()), query(Some("text"))).await).await;
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].contains(" POST /api/v1/orders [gateway]"), "{text}");
        assert!(lines[1].contains("   bookstore.orders.v1.OrderService/CreateOrder"), "indented: {text}");
        assert!(lines[2].ends_with("ReserveStock [] ERROR"), "{text}");
    }

    #[tokio::test]
    async fn only_the_newest_traces_are_kept_and_an_unknown_or_malformed_id_is_refused() {
        let provider = crate::trace::provider(&crate::trace::TracingSettings::local("test")).unwrap();
        let tracer = provider.tracer("test");
        let ids: Vec<TraceId> = (0..KEEP_TRACES + 5)
            .map(|_| tracer.in_span("GET /", |cx| cx.span().span_context().trace_id()))
            .collect();
        let (_, listed) = body(list().await).await;
        let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
        assert_eq!(listed["traces"].as_array().unwrap().len(), KEEP_TRACES);
        let (status, _) = body(show(Path(ids[0].to_string()), query(None)).await).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "the oldest was forgotten");
        let (status, _) = body(show(Path(ids[KEEP_TRACES + 4].to_string()), query(None)).await).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = body(show(Path("nope".to_owned()), query(None)).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}
