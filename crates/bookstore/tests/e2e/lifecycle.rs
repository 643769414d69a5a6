//! Health, readiness and graceful shutdown of the whole system.

use std::time::Duration;

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use reqwest::StatusCode;

use crate::{System, book_json};

backend_tests!(
    health_and_readiness_answer_on_the_admin_listener_only,
    shutdown_finishes_requests_in_flight_and_refuses_new_ones
);

async fn health_and_readiness_answer_on_the_admin_listener_only(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let admin = &sys.admin_base;
    assert_eq!(sys.http.get(format!("{admin}/healthz")).send().await.unwrap().status(), StatusCode::OK);
    let ready = sys.http.get(format!("{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "{}", ready.text().await.unwrap());
    for path in ["/healthz", "/readyz", "/metrics"] {
        let public = sys.http.get(sys.url(path)).send().await.unwrap();
        assert_eq!(public.status(), StatusCode::NOT_FOUND, "the public port does not serve {path}");
    }
}

/// A client is halfway through sending a book when the system is told to stop: the book is
/// still created (nothing accepted is lost), new connections are refused, and the process's
/// servers then finish.
async fn shutdown_finishes_requests_in_flight_and_refuses_new_ones(backend: Backend) {
    let Some(mut sys) = System::start(backend, false).await else { return };
    let body = serde_json::to_vec(&book_json(1, "Sent During Shutdown")).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(2);
    let in_flight = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .body(reqwest::Body::wrap_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .send();
    let in_flight = tokio::spawn(in_flight);
    tx.send(Ok(first.to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let app = sys.app.take().unwrap();
    let gateway = app.addr("gateway").unwrap();
    app.shutdown_token().cancel();
    let stopped = tokio::spawn(app.wait());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio::net::TcpStream::connect(gateway).await.is_err(), "new connections are refused");
    let ready = sys.http.get(format!("{}/readyz", sys.admin_base)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE, "readiness fails while draining");
    assert!(!stopped.is_finished(), "the server waits for the request in flight");

    tx.send(Ok(rest.to_vec())).await.unwrap();
    drop(tx);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("stops after draining")
        .unwrap()
        .unwrap();
}
