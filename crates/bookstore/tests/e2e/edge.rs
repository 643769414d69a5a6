//! The gateway as an edge: weighted pass-through routes, per-client rate limits (in memory,
//! and shared through Redis by two gateways), and the concurrency limit that sheds overload.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::Request;
use axum::routing::any;
use bookstore_gateway::proxy::{Backend, Route};
use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend as DbBackend;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::System;

/// What a stand-in backend saw: (its name, method, path and query, x-forwarded-for).
type Seen = Arc<Mutex<Vec<(String, String, String, String)>>>;

/// An HTTP backend on port 0 that answers with its name, records what it saw, and answers
/// `/missing` with its own 404 and `/hold` only once `release` is notified.
async fn backend(name: &str, seen: Seen, release: Arc<Notify>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let name = name.to_owned();
    let app = Router::new().fallback(any(move |request: Request| {
        let (name, seen, release) = (name.clone(), seen.clone(), release.clone());
        async move {
            let path = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let xff = request
                .headers()
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            seen.lock().unwrap().push((name.clone(), request.method().to_string(), path.clone(), xff));
            if path == "/hold" {
                release.notified().await;
            }
            if path == "/missing" {
                return (axum::http::StatusCode::NOT_FOUND, "backend's own not found".to_owned());
            }
            (axum::http::StatusCode::OK, name)
        }
    }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn route(prefix: &str, backends: &[(&str, u32)]) -> Route {
    Route {
        prefix: prefix.into(),
        strip_prefix: true,
        backends: backends
            .iter()
            .map(|(url, weight)| Backend { url: (*url).into(), weight: *weight })
            .collect(),
    }
}

backend_tests!(
    two_gateways_sharing_redis_share_each_clients_count,
    a_weighted_route_splits_traffic_three_to_one_and_passes_requests_and_answers_through,
    a_client_past_its_rate_limit_gets_429_with_the_ratelimit_headers,
    past_the_concurrency_limit_requests_are_refused_at_once_with_503,
);

async fn a_weighted_route_splits_traffic_three_to_one_and_passes_requests_and_answers_through(
    backend_: DbBackend,
) {
    let seen: Seen = Arc::default();
    let release = Arc::new(Notify::new());
    let a = backend("a", seen.clone(), release.clone()).await;
    let b = backend("b", seen.clone(), release.clone()).await;
    let routes = vec![route("/ext/inventory", &[(&a, 3), (&b, 1)])];
    let Some(system) = System::start_with(backend_, false, |c| {
        c.gateway.routes = routes;
        c.gateway.rate_limit_requests = 0;
    })
    .await
    else {
        return;
    };
    let http = &system.http;

    // Passed through: method, stripped path, query; the backend's own 404 untouched.
    let answer = http.delete(system.url("/ext/inventory/items/7?x=1")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let missing = http.get(system.url("/ext/inventory/missing")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.text().await.unwrap(),
        "backend's own not found",
        "no envelope over a backend's answer"
    );
    {
        let seen = seen.lock().unwrap();
        let (_, method, path, xff) = &seen[0];
        assert_eq!((method.as_str(), path.as_str(), xff.as_str()), ("DELETE", "/items/7?x=1", "127.0.0.1"));
        seen.iter().for_each(|s| assert!(!s.2.starts_with("/ext"), "the prefix is stripped"));
    }
    seen.lock().unwrap().clear();

    let answers: Vec<String> = futures::stream::iter((0..4000).map(|i| {
        let url = system.url(&format!("/ext/inventory/n/{i}"));
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    }))
    .buffer_unordered(16)
    .collect()
    .await;
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for answer in &answers {
        *counts.entry(answer.as_str()).or_default() += 1;
    }
    let share = counts.get("a").copied().unwrap_or(0) as f64 / 4000.0;
    assert!((0.7125..=0.7875).contains(&share), "3:1 route gave a {share:.3} of 4000: {counts:?}");

    // The admin listener lists the route's backends with weights and breaker states.
    let status: serde_json::Value =
        http.get(format!("{}/status", system.admin_base)).send().await.unwrap().json().await.unwrap();
    let route =
        status["peers"].as_array().unwrap().iter().find(|p| p["peer"] == "route /ext/inventory").unwrap();
    let weights: Vec<(String, u64, String)> = route["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["url"].as_str().unwrap().to_owned(),
                e["weight"].as_u64().unwrap(),
                e["breaker"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(weights, vec![(a, 3, "closed".into()), (b, 1, "closed".into())]);
}

async fn a_client_past_its_rate_limit_gets_429_with_the_ratelimit_headers(backend_: DbBackend) {
    let Some(system) = System::start_with(backend_, false, |c| {
        c.gateway.rate_limit_requests = 5;
        c.gateway.rate_limit_window_secs = 3600;
    })
    .await
    else {
        return;
    };
    let http = &system.http;
    // Signing in was one request of this address's five (login in System::start).
    let mut statuses = Vec::new();
    for _ in 0..5 {
        let answer = http.get(system.url("/api/v1/books")).send().await.unwrap();
        statuses.push(answer.status().as_u16());
        let policy = answer.headers().get("ratelimit-policy").unwrap().to_str().unwrap().to_owned();
        assert_eq!(policy, "\"default\";q=5;w=3600");
        assert!(answer.headers().get("ratelimit").unwrap().to_str().unwrap().starts_with("\"default\";r="));
        if answer.status() == 429 {
            let retry: u64 = answer.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=3600).contains(&retry));
            let body: serde_json::Value = answer.json().await.unwrap();
            assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
        }
    }
    assert_eq!(statuses, [200, 200, 200, 200, 429], "the address's sixth request is refused");
    // A signed-in client counts as itself, not as its address.
    let answer = http.get(system.url("/api/v1/books")).bearer_auth(&system.admin).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    assert!(answer.headers()["ratelimit"].to_str().unwrap().starts_with("\"default\";r=4;"));
}

async fn past_the_concurrency_limit_requests_are_refused_at_once_with_503(backend_: DbBackend) {
    let seen: Seen = Arc::default();
    let release = Arc::new(Notify::new());
    let slow = backend("slow", seen.clone(), release.clone()).await;
    let routes = vec![route("/ext/slow", &[(&slow, 1)])];
    let Some(system) = System::start_with(backend_, false, |c| {
        c.gateway.routes = routes;
        c.gateway.concurrency_limit = 1;
    })
    .await
    else {
        return;
    };
    let held = tokio::spawn({
        let (http, url) = (system.http.clone(), system.url("/ext/slow/hold"));
        async move { http.get(url).send().await.unwrap().status() }
    });
    // Wait until the backend holds the first request: the one permit is taken.
    while !seen.lock().unwrap().iter().any(|s| s.2 == "/hold") {
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let refused = system.http.get(system.url("/api/v1/books")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    release.notify_one();
    assert_eq!(held.await.unwrap(), 200);
    let after = system.http.get(system.url("/api/v1/books")).send().await.unwrap();
    assert_eq!(after.status(), 200, "the permit came back");
}

async fn two_gateways_sharing_redis_share_each_clients_count(backend_: DbBackend) {
    let Some(redis) = bookstore_platform::testing::redis_url_or_skip() else { return };
    // Keys of this test's own in the shared Redis.
    let prefix = format!("test-{}", uuid::Uuid::new_v4().simple());
    let Some(system) = System::start_with(backend_, false, |c| {
        c.gateway.rate_limit_requests = 4;
        c.gateway.rate_limit_window_secs = 3600;
        c.gateway.redis_url = Some(redis.clone());
        c.gateway.redis_key_prefix = prefix.clone();
    })
    .await
    else {
        return;
    };
    // A second gateway over the same services and the same Redis.
    let app = system.app.as_ref().unwrap();
    let mut config = system.config.clone();
    config.gateway.http = "127.0.0.1:0".parse().unwrap();
    config.process.admin_http = "127.0.0.1:0".parse().unwrap();
    for name in ["books", "users", "orders"] {
        let url = Some(format!("http://{}", app.addr(name).unwrap()));
        match name {
            "books" => config.books.url = url,
            "users" => config.users.url = url,
            _ => config.orders.url = url,
        }
    }
    let second =
        bookstore::App::start(&["gateway"], &config, bookstore_platform::service::Mode::Serve).await.unwrap();
    let second_base = format!("http://{}", second.addr("gateway").unwrap());

    // The login in System::start was this address's first request; two more on each gateway.
    let mut statuses = Vec::new();
    for base in [&system.base, &second_base, &system.base, &second_base] {
        statuses
            .push(system.http.get(format!("{base}/api/v1/books")).send().await.unwrap().status().as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429], "four requests in all, across both gateways");
    second.shutdown_token().cancel();
}
