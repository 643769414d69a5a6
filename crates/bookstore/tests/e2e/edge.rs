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
        health_check: None,
    }
}

backend_tests!(
    two_gateways_sharing_redis_share_each_clients_count,
    a_weighted_route_splits_traffic_three_to_one_and_passes_requests_and_answers_through,
    a_client_past_its_rate_limit_gets_429_with_the_ratelimit_headers,
    past_the_concurrency_limit_requests_are_refused_at_once_with_503,
    an_h2c_backend_is_spoken_to_over_http2_with_bodies_passed_both_ways,
    a_backend_failing_its_health_checks_gets_no_traffic_until_it_passes_again,
);

/// A backend that answers with its name, and `/healthz` with 200 or 503 as `healthy` says.
async fn checked_backend(name: &'static str, healthy: Arc<std::sync::atomic::AtomicBool>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(any(move |request: Request| {
        let healthy = healthy.clone();
        async move {
            if request.uri().path() == "/healthz" && !healthy.load(std::sync::atomic::Ordering::SeqCst) {
                return (axum::http::StatusCode::SERVICE_UNAVAILABLE, "sick");
            }
            (axum::http::StatusCode::OK, name)
        }
    }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn a_backend_failing_its_health_checks_gets_no_traffic_until_it_passes_again(backend_: DbBackend) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let a_healthy = Arc::new(AtomicBool::new(true));
    let a = checked_backend("a", a_healthy.clone()).await;
    let b = checked_backend("b", Arc::new(AtomicBool::new(true))).await;
    // Weights that differ make the draw proportional (1:2), not latency-driven, so both get traffic.
    let mut checked = route("/ext/checked", &[(&a, 1), (&b, 2)]);
    checked.health_check =
        Some(bookstore_gateway::proxy::HealthCheck { path: "/healthz".into(), interval_ms: 100 });
    let Some(system) = System::start_with(backend_, false, |c| {
        c.gateway.routes = vec![checked];
        c.gateway.rate_limit_requests = 0;
    })
    .await
    else {
        return;
    };
    let http = &system.http;
    let a_is_healthy = || async {
        let status: serde_json::Value =
            http.get(format!("{}/status", system.admin_base)).send().await.unwrap().json().await.unwrap();
        let route = status["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer"] == "route /ext/checked")
            .cloned()
            .unwrap();
        route["endpoints"].as_array().unwrap().iter().find(|e| e["url"] == a.as_str()).unwrap()["healthy"]
            .as_bool()
            .unwrap()
    };
    let answers = || async {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for i in 0..100 {
            let answer = http.get(system.url(&format!("/ext/checked/{i}"))).send().await.unwrap();
            assert_eq!(answer.status(), 200, "every request is served");
            *counts.entry(answer.text().await.unwrap()).or_default() += 1;
        }
        counts
    };
    assert!(answers().await.get("a").is_some_and(|n| *n > 0), "both backends take traffic at first");

    // a's checks fail (its other paths still answer, so only the checks can tell).
    a_healthy.store(false, Ordering::SeqCst);
    crate::until("a is reported unhealthy", std::time::Duration::from_secs(30), || async {
        !a_is_healthy().await
    })
    .await;
    let counts = answers().await;
    assert_eq!(counts.get("b"), Some(&100), "all traffic goes to b while a fails its checks: {counts:?}");

    a_healthy.store(true, Ordering::SeqCst);
    crate::until("a is healthy again", std::time::Duration::from_secs(30), a_is_healthy).await;
    assert!(answers().await.get("a").is_some_and(|n| *n > 0), "a gets traffic again once it passes");
}

/// An HTTP backend that answers with the HTTP version it was asked in and the body it got.
async fn echo_version_backend() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(any(|request: Request| async move {
        let version = format!("{:?}", request.version());
        let path = request.uri().path().to_owned();
        let body = axum::body::to_bytes(request.into_body(), 1 << 20).await.unwrap();
        format!("{version} {path} {}", String::from_utf8_lossy(&body))
    }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

async fn an_h2c_backend_is_spoken_to_over_http2_with_bodies_passed_both_ways(backend_: DbBackend) {
    let h2 = echo_version_backend().await;
    let h1 = echo_version_backend().await;
    let routes = vec![
        route("/ext/h2", &[(&format!("h2c://{h2}"), 1)]),
        route("/ext/h1", &[(&format!("http://{h1}"), 1)]),
    ];
    let Some(system) = System::start_with(backend_, false, |c| {
        c.gateway.routes = routes;
        c.gateway.rate_limit_requests = 0;
    })
    .await
    else {
        return;
    };
    let (http, system) = (&system.http, &system);
    let answers = futures::future::join_all((0..20).map(|i| async move {
        let answer =
            http.post(system.url(&format!("/ext/h2/n/{i}"))).body(format!("body {i}")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        assert!(answer.headers().contains_key("x-request-id"), "every answer names its request");
        answer.text().await.unwrap()
    }))
    .await;
    for (i, answer) in answers.iter().enumerate() {
        assert_eq!(answer, &format!("HTTP/2.0 /n/{i} body {i}"), "h2c backend, prefix stripped, body passed");
    }
    let answer = http.post(system.url("/ext/h1/x")).body("plain").send().await.unwrap();
    assert_eq!(answer.text().await.unwrap(), "HTTP/1.1 /x plain", "an http:// backend gets HTTP/1.1");
}

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
    let seen: Seen = Arc::default();
    let ext = backend("ext", seen.clone(), Arc::new(Notify::new())).await;
    let routes = vec![route("/ext", &[(&ext, 1)])];
    let Some(system) = System::start_with(backend_, false, |c| {
        c.gateway.routes = routes;
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
    // Pass-through routes count in the same window, and refuse in the gateway's envelope.
    let answer = http.get(system.url("/ext/anything")).send().await.unwrap();
    assert_eq!(answer.status(), 429);
    assert!(answer.headers().contains_key("ratelimit"));
    let body: serde_json::Value = answer.json().await.unwrap();
    assert_eq!(body["code"], "RESOURCE_EXHAUSTED");
    assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    assert!(seen.lock().unwrap().is_empty(), "a refused request never reaches the backend");
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
    // A route shares the limit, and refuses in the envelope.
    let refused = system.http.get(system.url("/ext/slow/other")).send().await.unwrap();
    assert_eq!(refused.status(), 503);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "UNAVAILABLE");
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

backend_tests!(status_says_which_replicas_are_called_in_process);

/// `/status` marks a replica that is a service of the same process (called in process, no
/// socket), and only such a one: with in-process calls off, every peer is dialled.
async fn status_says_which_replicas_are_called_in_process(backend: DbBackend) {
    for local_calls in [true, false] {
        let Some(system) = System::start_with(backend, false, |c| c.process.local_calls = local_calls).await
        else {
            return;
        };
        let status: serde_json::Value = system
            .http
            .get(format!("{}/status", system.admin_base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let peers = status["peers"].as_array().unwrap();
        let books = peers.iter().find(|p| p["service"] == "gateway" && p["peer"] == "books");
        let books = books.unwrap_or_else(|| panic!("the gateway's books client is listed: {status}"));
        assert!(!books["endpoints"].as_array().unwrap().is_empty(), "{status}");
        for peer in peers {
            for endpoint in peer["endpoints"].as_array().unwrap() {
                assert_eq!(
                    endpoint["in_process"], local_calls,
                    "{endpoint} with local_calls = {local_calls}"
                );
            }
        }
    }
}
