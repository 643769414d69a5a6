//! Distributed tracing seen from a collector: `bookstore up --otlp-endpoint` sends one checkout
//! as one trace, a span per hop (a server span per request, a client span per call), each the
//! child of the one that caused it, down to the outbox relay's publication of the checkout's
//! event and the services that handle it.

use std::process::Command;
use std::time::{Duration, Instant};

use bookstore_platform::db::Backend;
use bookstore_platform::testing::{OtlpReceiver, ReceivedSpan, TestDatabase, amqp_url_or_skip};

use crate::binary::{ADMIN_PASSWORD, exit_of, start_up};

bookstore_platform::backend_tests!(
    a_checkout_is_one_trace_from_the_gateway_through_orders_and_books_to_its_event_handlers
);

/// The caller's trace and span: a client that traces its own work.
const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";
/// A caller that traces but did not sample this trace.
const UNSAMPLED_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";

async fn a_checkout_is_one_trace_from_the_gateway_through_orders_and_books_to_its_event_handlers(
    backend: Backend,
) {
    let receiver = OtlpReceiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let mut servers = vec![("--otlp-endpoint", receiver.endpoint.clone())];
    let mut databases = Vec::new();
    if backend == Backend::Postgres {
        // On PostgreSQL the events go through RabbitMQ, under exchanges of the test's own.
        let Some(amqp) = amqp_url_or_skip() else { return };
        for flag in ["--books-database-url", "--users-database-url", "--orders-database-url"] {
            let Some(db) = TestDatabase::new(backend).await else { return };
            servers.push((flag, db.url.clone()));
            databases.push(db);
        }
        servers.push(("--amqp-url", amqp));
        servers.push(("--amqp-namespace", format!("test-{}", uuid::Uuid::new_v4().simple())));
    }
    let (child, gateway) = start_up(dir.path(), &servers, &[]).await;
    let base = format!("http://{}", gateway.expect("up starts"));

    let http = reqwest::Client::new();
    let token = crate::login(&http, &base, "admin", ADMIN_PASSWORD).await;
    let books: serde_json::Value =
        http.get(format!("{base}/api/v1/books")).send().await.unwrap().json().await.unwrap();
    let book = books["items"][0]["id"].as_str().unwrap().to_owned();
    let order = |traceparent: String| {
        http.post(format!("{base}/api/v1/orders"))
            .bearer_auth(&token)
            .header("traceparent", traceparent)
            .json(&serde_json::json!({
                "lines": [{"book_id": book, "quantity": 1}],
                "shipping_address": crate::shipping_address(),
            }))
            .send()
    };
    let placed = order(format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01")).await.unwrap();
    assert_eq!(placed.status(), 201);
    let request_id = placed.headers()["x-request-id"].to_str().unwrap().to_owned();
    let unsampled = order(format!("00-{UNSAMPLED_TRACE}-{CALLER_SPAN}-00")).await.unwrap();
    assert_eq!(unsampled.status(), 201);

    // Spans leave in batches: wait until the events' handlers have reported theirs.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !receiver.spans().iter().any(|s| s.trace_id == CALLER_TRACE && s.kind == "consumer") {
        assert!(Instant::now() < deadline, "no consumer span arrived: {:#?}", receiver.spans());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A graceful stop sends what is still buffered; after it, what is missing was never sent.
    let stopped = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(stopped.success());
    assert!(exit_of(child).await.success());

    let spans = receiver.spans();
    let trace: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == CALLER_TRACE).collect();
    let span_of = |kind: &str, service: &str, parent: &str| -> &ReceivedSpan {
        trace
            .iter()
            .copied()
            .find(|s| {
                s.kind == kind
                    && s.attributes.get("service").map(String::as_str) == Some(service)
                    && s.parent_span_id == parent
            })
            .unwrap_or_else(|| panic!("no {kind} span of {service} under {parent} in {trace:#?}"))
    };
    let server_of = |service: &str, parent: &str| span_of("server", service, parent);
    // A call is a client span of the caller, and the callee's server span is its child.
    let call_of = |service: &str, parent: &ReceivedSpan, peer: &str, method: &str| -> String {
        let call = span_of("client", service, &parent.span_id);
        assert_eq!(call.name, method);
        assert_eq!(call.attributes["peer"], peer);
        assert!(call.attributes["server.address"].starts_with("http://127.0.0.1:"), "{call:?}");
        call.span_id.clone()
    };
    let edge = server_of("gateway", CALLER_SPAN);
    assert_eq!(edge.name, "POST /api/v1/orders");
    assert_eq!(edge.attributes["http.response.status_code"], "201");
    assert_eq!(edge.attributes["request_id"], request_id, "a trace is found by the request id a client saw");
    assert!(!edge.failed);
    let create = "bookstore.orders.v1.OrderService/CreateOrder";
    let orders = server_of("orders", &call_of("gateway", edge, "orders", create));
    assert_eq!(orders.name, create);
    assert_eq!(orders.attributes["rpc.grpc.status_code"], "0");
    let reserve = "bookstore.books.v1.BookService/ReserveStock";
    let books = server_of("books", &call_of("orders", orders, "books", reserve));
    assert_eq!(books.name, reserve);
    // Each store method a request reached is a span of its own, under that request's.
    for (name, parent) in
        [("orders store insert_order", &orders.span_id), ("books store reserve", &books.span_id)]
    {
        let store =
            trace.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} in {trace:#?}"));
        assert_eq!((&store.parent_span_id, store.kind), (parent, "internal"), "{name}");
    }
    // The outbox relay's publication of the order's event, later, still in the checkout's trace.
    let published = span_of("producer", "orders", &orders.span_id);
    assert_eq!(published.name, "publish OrderPlaced");
    let handlers: Vec<&&ReceivedSpan> = trace.iter().filter(|s| s.kind == "consumer").collect();
    assert!(!handlers.is_empty());
    assert!(
        handlers.iter().all(|s| s.parent_span_id == orders.span_id && s.name.ends_with(" OrderPlaced")),
        "an event's handling is a child of the request that published it: {handlers:#?}"
    );
    assert_eq!(edge.service_name, "bookstore", "up is one process, one OTel service");

    assert!(
        spans.iter().all(|s| s.trace_id != UNSAMPLED_TRACE),
        "a caller's decision not to sample is kept by every hop"
    );
    drop(databases);
}
