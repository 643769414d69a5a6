//! Health, readiness and graceful shutdown of the whole system.

use std::time::Duration;

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use reqwest::StatusCode;

use crate::{System, book_json};

backend_tests!(
    health_and_readiness_answer_when_up,
    shutdown_finishes_requests_in_flight_and_refuses_new_ones
);

async fn health_and_readiness_answer_when_up(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let users_base = format!("http://{}", sys.app.as_ref().unwrap().users_addr.unwrap());
    for base in [&sys.base, &sys.books_base, &users_base] {
        assert_eq!(sys.http.get(format!("{base}/healthz")).send().await.unwrap().status(), StatusCode::OK);
        let ready = sys.http.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(ready.status(), StatusCode::OK, "{base}: {}", ready.text().await.unwrap());
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
    let gateway = app.gateway_addr.unwrap();
    app.shutdown_token().cancel();
    let stopped = tokio::spawn(app.wait());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(tokio::net::TcpStream::connect(gateway).await.is_err(), "new connections are refused");
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
