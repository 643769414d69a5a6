//! Metrics as an operator sees them: a Prometheus of the test's own scrapes a running system's
//! admin listener, and its query API answers with the checkout counter, the breakers' states
//! and the events' series.

use std::time::Duration;

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use bookstore_platform::testing::PrometheusNode;

use crate::{System, admin_buys_the_first_book, until};

backend_tests!(prometheus_scrapes_the_checkout_counter_breaker_states_and_the_events);

/// The value of the one series `expr` selects, summed if several (0 when none).
async fn value(prometheus: &PrometheusNode, expr: &str) -> f64 {
    let series = prometheus.query(&format!("sum({expr})")).await.unwrap();
    series.first().and_then(|s| s["value"][1].as_str()?.parse().ok()).unwrap_or(0.0)
}

async fn prometheus_scrapes_the_checkout_counter_breaker_states_and_the_events(backend: Backend) {
    let Some(sys) = System::start(backend, true).await else { return };
    let admin = sys.app.as_ref().unwrap().admin_addr;
    let Some(prometheus) = PrometheusNode::start_or_skip(&[admin]).await else { return };

    admin_buys_the_first_book(&sys).await;

    let limit = Duration::from_secs(60);
    until("the checkout counter in Prometheus", limit, || async {
        value(&prometheus, r#"orders_placed_total{service="orders"}"#).await >= 1.0
    })
    .await;
    until("the order's event published, and handled by fulfillment", limit, || async {
        value(&prometheus, r#"events_published_total{service="orders",event_type="OrderPlaced"}"#).await
            >= 1.0
            && value(&prometheus, r#"events_handled_total{service="fulfillment",outcome="ok"}"#).await >= 1.0
    })
    .await;
    // Every replica a client knows has its breaker's state, closed while all is well.
    let closed = prometheus
        .query(r#"grpc_client_breaker_state{service="orders",peer="books",state="closed"}"#)
        .await
        .unwrap();
    assert_eq!(closed.len(), 1, "one books replica: {closed:?}");
    assert_eq!(closed[0]["value"][1], "1");
    assert_eq!(value(&prometheus, r#"grpc_client_breaker_state{state="open"}"#).await, 0.0);
    let endpoints = r#"grpc_client_endpoints{service="orders",peer="books",state="ready"}"#;
    assert_eq!(value(&prometheus, endpoints).await, 1.0, "the one books replica is ready");
    assert_eq!(value(&prometheus, r#"grpc_client_endpoints{state="ejected"}"#).await, 0.0);
    assert!(value(&prometheus, r#"tokio_runtime_workers{service="process"}"#).await >= 1.0);
    assert_eq!(value(&prometheus, r#"events_outbox_pending{service="orders"}"#).await, 0.0);
}
