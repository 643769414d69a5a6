//! The security suite: each finding of the gateway's penetration test, replayed as the attack it
//! was, and shown to fail now. Security headers, echoed request ids, internals in messages, 400
//! before 401, errors outside the envelope, and the public port's operational surface and
//! timeouts.

use std::time::Duration;

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::System;

backend_tests!(
    every_answer_carries_the_security_headers_and_personal_ones_are_never_stored,
    the_docs_load_their_assets_from_the_gateway_under_their_own_policy,
    strict_transport_security_is_sent_only_for_requests_that_came_over_tls,
    a_request_id_is_echoed_only_when_it_is_short_and_plain,
    refusals_say_what_is_wrong_in_our_words_not_the_parsers,
    an_anonymous_call_to_any_protected_operation_is_401_before_its_body_is_read,
    a_request_too_large_or_unreadable_is_refused_in_the_envelope,
    operational_endpoints_are_not_on_the_public_port,
    the_public_port_closes_connections_that_stall_or_idle,
);

/// Words of serde, Rust and the JSON parser that no client-facing message may contain.
const INTERNALS: &[&str] = &[
    "expected",
    "struct",
    "line ",
    "column",
    "invalid type",
    "i64",
    "i32",
    "u32",
    "String",
    "Option",
    "CreateBook",
    "ListParams",
    "Uuid",
    "Failed to deserialize",
];

fn header<'a>(response: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    response.headers().get(name).map(|v| v.to_str().unwrap())
}

async fn every_answer_carries_the_security_headers_and_personal_ones_are_never_stored(backend: Backend) {
    let Some(sys) = System::start(backend, true).await else { return };
    let http = &sys.http;
    let get = |path: &str, token: Option<&str>| {
        let mut request = http.get(sys.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let anonymous = [
        get("/api/v1/books", None).await.unwrap(),
        get("/api/openapi.json", None).await.unwrap(),
        get("/no/such/thing", None).await.unwrap(),
        get("/api/v1/users/me", None).await.unwrap(),
        get("/.well-known/jwks.json", None).await.unwrap(),
    ];
    for response in &anonymous {
        let url = response.url().path();
        assert_eq!(header(response, "x-content-type-options"), Some("nosniff"), "{url}");
        assert_eq!(header(response, "referrer-policy"), Some("no-referrer"), "{url}");
        let policy = header(response, "content-security-policy").unwrap_or_default();
        assert!(policy.ends_with("frame-ancestors 'none'"), "{url}: {policy}");
        assert_eq!(header(response, "strict-transport-security"), None, "no HSTS over plain HTTP: {url}");
    }
    let [books, openapi, _, _, jwks] = &anonymous;
    assert_eq!(header(books, "cache-control"), None, "the public catalog may be cached");
    assert_eq!(header(openapi, "cache-control"), None, "the API document may be cached");
    assert_eq!(header(jwks, "cache-control"), Some("public, max-age=60"), "a handler's own is kept");

    // Tokens.
    let login = http
        .post(sys.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": crate::ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);
    assert_eq!(header(&login, "cache-control"), Some("no-store"), "a token answer");
    let wrong = http
        .post(sys.url("/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": "not it at all"}))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&wrong, "cache-control"), Some("no-store"), "a refused login");
    // Personal data, orders, the queue, service accounts.
    for path in [
        "/api/v1/users/me",
        "/api/v1/users",
        "/api/v1/orders",
        "/api/v1/service-accounts",
        "/api/v1/fulfillment/queue",
        "/api/v1/users/me/recommendations",
    ] {
        let response = get(path, Some(&sys.admin)).await.unwrap();
        assert!(response.status().is_success(), "{path}: {}", response.status());
        assert_eq!(header(&response, "cache-control"), Some("no-store"), "{path}");
        assert_eq!(header(&response, "x-content-type-options"), Some("nosniff"), "{path}");
    }
    // A signed-in caller's catalog read may differ from the public one.
    let signed_in = get("/api/v1/books", Some(&sys.admin)).await.unwrap();
    assert_eq!(header(&signed_in, "cache-control"), Some("no-store"));
}

async fn the_docs_load_their_assets_from_the_gateway_under_their_own_policy(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let page = sys.http.get(sys.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let policy = header(&page, "content-security-policy").unwrap().to_owned();
    for directive in ["frame-ancestors 'none'", "script-src 'self'", "default-src 'self'"] {
        assert!(policy.contains(directive), "{policy} lacks {directive}");
    }
    assert_eq!(header(&page, "x-content-type-options"), Some("nosniff"));
    let html = page.text().await.unwrap();
    // Every script and stylesheet it names comes from the gateway (relative), and no script is
    // inline (the policy would block it).
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (at, _) in html.match_indices(attribute) {
            let rest = &html[at + attribute.len()..];
            let url = &rest[..rest.find('"').unwrap()];
            assert!(
                !url.contains("//") && !url.starts_with("data:") && !url.starts_with("javascript:"),
                "the page loads {url} from elsewhere"
            );
            assets.push(url.to_owned());
        }
    }
    assert!(
        assets.iter().any(|a| a.ends_with(".js")) && assets.iter().any(|a| a.ends_with(".css")),
        "{assets:?}"
    );
    for (at, _) in html.match_indices("<script") {
        let tag = &html[at..at + html[at..].find('>').unwrap()];
        assert!(tag.contains("src="), "an inline script the policy would block: {tag}");
    }
    for asset in &assets {
        let url = format!("{}/docs/{}", sys.base, asset.trim_start_matches("./"));
        let response = sys.http.get(&url).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert_eq!(header(&response, "content-security-policy"), Some(policy.as_str()), "{url}");
    }
    // The initializer fetches the document from the gateway too.
    let initializer = sys.http.get(sys.url("/docs/swagger-initializer.js")).send().await.unwrap();
    let script = initializer.text().await.unwrap();
    assert!(script.contains("/api/openapi.json") && !script.contains("http"), "{script}");
}

async fn strict_transport_security_is_sent_only_for_requests_that_came_over_tls(backend: Backend) {
    // The tests' client is the proxy in front: its X-Forwarded-Proto is believed.
    let Some(sys) = System::start_with(backend, false, |c| {
        c.gateway.hsts_max_age_secs = 31_536_000;
        c.gateway.trusted_proxies = "127.0.0.1".into();
    })
    .await
    else {
        return;
    };
    let plain = sys.http.get(sys.url("/api/v1/books")).send().await.unwrap();
    assert_eq!(header(&plain, "strict-transport-security"), None, "plain HTTP pins nothing");
    let forwarded =
        sys.http.get(sys.url("/api/v1/books")).header("x-forwarded-proto", "https").send().await.unwrap();
    assert_eq!(header(&forwarded, "strict-transport-security"), Some("max-age=31536000; includeSubDomains"));
}

async fn a_request_id_is_echoed_only_when_it_is_short_and_plain(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let script = format!("<script>alert(1)</script>{}", "a".repeat(1000));
    let huge = format!("<script>{}", "a".repeat(100 * 1024));
    for sent in [script.as_str(), huge.as_str(), "x".repeat(65).as_str(), "a b", "a\"b"] {
        let response =
            sys.http.get(sys.url("/api/v1/no-such-thing")).header("x-request-id", sent).send().await.unwrap();
        assert!(response.status().is_client_error());
        let echoed = header(&response, "x-request-id").unwrap().to_owned();
        assert_ne!(echoed, sent);
        assert!(uuid::Uuid::parse_str(&echoed).is_ok(), "a fresh id instead: {echoed}");
        let body = response.text().await.unwrap();
        assert!(!body.contains("<script>") && !body.contains(&"a".repeat(100)), "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["request_id"], echoed.as_str(), "the body names the id the header does");
    }
    for sane in ["abc-123_x.y:z", "0190b6a2-7c1e-7aa0-9c1e-1234567890ab", &"x".repeat(64)] {
        let response =
            sys.http.get(sys.url("/api/v1/no-such-thing")).header("x-request-id", sane).send().await.unwrap();
        assert_eq!(header(&response, "x-request-id"), Some(sane));
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["request_id"], sane);
    }
}

/// The envelope of `response`, after checking it has `status` and a message free of internals.
async fn our_words(response: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(response.status(), status, "{}", response.url());
    let body: Value = response.json().await.unwrap();
    let message = body["message"].as_str().unwrap();
    for word in INTERNALS {
        assert!(!message.contains(word), "{message:?} gives away {word:?}");
    }
    body
}

async fn refusals_say_what_is_wrong_in_our_words_not_the_parsers(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let http = &sys.http;
    let create = |body: &str| {
        http.post(sys.url("/api/v1/books"))
            .bearer_auth(&sys.admin)
            .header("content-type", "application/json")
            .body(body.to_owned())
            .send()
    };
    let mut wrong_type = crate::book_json(1, "Wrong");
    wrong_type["price"]["amount_minor"] = "nineteen".into();
    let body = our_words(create(&wrong_type.to_string()).await.unwrap(), StatusCode::BAD_REQUEST).await;
    assert_eq!(body["message"], "field `price.amount_minor` has the wrong type or value");
    assert_eq!(body["code"], "INVALID_ARGUMENT");
    let body = our_words(create("[1, 2, 3]").await.unwrap(), StatusCode::BAD_REQUEST).await;
    assert_eq!(body["message"], "the body is not the JSON object this operation takes");
    let body = our_words(create(r#"{"anything": 1}"#).await.unwrap(), StatusCode::BAD_REQUEST).await;
    assert_eq!(body["message"], "field `anything` is not one this operation takes");
    let body = our_words(create("{}").await.unwrap(), StatusCode::BAD_REQUEST).await;
    assert_eq!(body["message"], "field `isbn` is missing");
    let body = our_words(create(r#"{"isbn": "#).await.unwrap(), StatusCode::BAD_REQUEST).await;
    assert_eq!(body["message"], "the body is not valid JSON");

    let bad_query = http.get(sys.url("/api/v1/books?page=abc")).send().await.unwrap();
    let body = our_words(bad_query, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["message"], "query parameter `page` has the wrong type or value");

    let bad_id = http.get(sys.url("/api/v1/books/not-a-uuid")).send().await.unwrap();
    let status = bad_id.status();
    assert!(status == StatusCode::BAD_REQUEST || status == StatusCode::NOT_FOUND, "{status}");
    our_words(bad_id, status).await;
    let undecodable = http.get(sys.url("/api/v1/books/%FF%FE")).send().await.unwrap();
    let body = our_words(undecodable, StatusCode::BAD_REQUEST).await;
    assert_eq!(body["message"], "the path is not valid");

    // A forged token: the client learns it is not valid, not why.
    let forged = format!("{}x", &sys.admin[..sys.admin.len() - 1]);
    for token in ["abc.def.ghi", "not even a jwt", forged.as_str()] {
        let response = http.get(sys.url("/api/v1/users/me")).bearer_auth(token).send().await.unwrap();
        assert_eq!(header(&response, "www-authenticate"), Some("Bearer error=\"invalid_token\""));
        let body = our_words(response, StatusCode::UNAUTHORIZED).await;
        assert_eq!(body["message"], "the token is not valid", "{token}");
    }
}

/// Every operation of the OpenAPI document, as (method, path with sample parameters, whether it
/// lets anonymous callers in).
fn operations(doc: &Value) -> Vec<(String, String, bool)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in ["get", "post", "put", "patch", "delete"] {
            let Some(operation) = item.get(method) else { continue };
            // Anonymous when it names no requirement, or an empty one among others.
            let public = match operation.get("security").and_then(Value::as_array) {
                None => true,
                Some(requirements) => {
                    requirements.is_empty()
                        || requirements.iter().any(|r| r.as_object().is_some_and(|r| r.is_empty()))
                }
            };
            let mut concrete = path.clone();
            while let Some(start) = concrete.find('{') {
                let end = concrete[start..].find('}').unwrap() + start;
                concrete.replace_range(start..=end, "0190b6a2-7c1e-7aa0-9c1e-1234567890ab");
            }
            all.push((method.to_uppercase(), concrete, public));
        }
    }
    all
}

async fn an_anonymous_call_to_any_protected_operation_is_401_before_its_body_is_read(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let doc: Value = sys.http.get(sys.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    let operations = operations(&doc);
    assert!(operations.len() > 30, "the document lists the API: {}", operations.len());
    let mut protected = 0;
    for (method, path, public) in operations {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = sys.http.request(method.clone(), sys.url(&path));
        if method != reqwest::Method::GET && method != reqwest::Method::DELETE {
            request = request.header("content-type", "application/json").body("{\"malformed\": ");
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        if public {
            assert_ne!(status, StatusCode::UNAUTHORIZED, "{method} {path} is public");
            continue;
        }
        protected += 1;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path} refuses an anonymous caller first");
        assert!(
            header(&response, "www-authenticate").is_some_and(|v| v.starts_with("Bearer")),
            "{method} {path}"
        );
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "UNAUTHENTICATED", "{method} {path}");
        assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
    }
    assert!(protected > 20, "most of the API needs a caller: {protected}");
    // The finding itself.
    let create = sys
        .http
        .post(sys.url("/api/v1/books"))
        .header("content-type", "application/json")
        .body("{\"price\": \"free\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(create.status(), StatusCode::UNAUTHORIZED);
}

/// Sends `request` on a new connection and reads the answer to the end (the server closes):
/// (status, head, body).
async fn raw(sys: &System, request: &[u8]) -> (u16, String, String) {
    let mut tcp = tokio::net::TcpStream::connect(sys.base.trim_start_matches("http://")).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

async fn a_request_too_large_or_unreadable_is_refused_in_the_envelope(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let long_uri = format!(
        "GET /api/v1/books?q={} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let many: String = (0..200).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let many = format!("GET /api/v1/books HTTP/1.1\r\nHost: x\r\n{many}Connection: close\r\n\r\n");
    let big = format!(
        "GET /api/v1/books HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    for (request, status) in [(long_uri, 414), (many, 431), (big, 431)] {
        let (got, head, body) = raw(&sys, request.as_bytes()).await;
        assert_eq!(got, status, "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["code"], "BAD_REQUEST");
        let id = body["request_id"].as_str().unwrap();
        assert!(uuid::Uuid::parse_str(id).is_ok(), "{body}");
        assert!(head.contains(&format!("x-request-id: {id}")), "{head}");
    }
    // What hyper cannot parse at all, or is past hyper's own limits, it refuses before the
    // gateway sees anything: that answer leaves in the envelope too.
    let past_hyper: String = (0..600).map(|i| format!("X-Header-{i}: {i}\r\n")).collect();
    let past_hyper = format!("GET /api/v1/books HTTP/1.1\r\nHost: x\r\n{past_hyper}\r\n");
    for (request, status) in [
        ("NOT A REQUEST\r\n\r\n".to_owned(), 400),
        ("GET /api/v1/books HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".to_owned(), 400),
        (past_hyper, 431),
    ] {
        let (got, head, body) = raw(&sys, request.as_bytes()).await;
        assert_eq!(got, status, "{head}");
        let head = head.to_ascii_lowercase();
        assert!(head.contains("x-content-type-options: nosniff"), "{head}");
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}"));
        assert_eq!(body["code"], "BAD_REQUEST");
        let id = body["request_id"].as_str().unwrap();
        assert!(head.contains(&format!("x-request-id: {id}")), "{head}");
    }
}

async fn operational_endpoints_are_not_on_the_public_port(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    for path in ["/metrics", "/healthz", "/readyz", "/status", "/debug/traces"] {
        let response = sys.http.get(sys.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path} on the public port");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], "NOT_FOUND", "{path}");
        assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
        let admin = sys.http.get(format!("{}{path}", sys.admin_base)).send().await.unwrap();
        assert_eq!(admin.status(), StatusCode::OK, "{path} on the admin listener");
    }
}

/// Reads until the server closes the connection (a 60 s guard against a hang); what it sent.
async fn until_closed(mut tcp: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all).await.expect("the gateway never closed it");
    String::from_utf8_lossy(&answer).into_owned()
}

async fn the_public_port_closes_connections_that_stall_or_idle(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let addr = sys.base.trim_start_matches("http://").to_owned();
    let connect = || tokio::net::TcpStream::connect(addr.clone());
    // Half a header (slowloris).
    let mut half = connect().await.unwrap();
    half.write_all(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    // A body that stalls: 10 of 100 bytes.
    let mut stalled = connect().await.unwrap();
    stalled
        .write_all(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"usernam")
        .await
        .unwrap();
    // A body that trickles in, a byte every 2 s: a timeout between reads would never end it.
    let mut trickle = connect().await.unwrap();
    trickle
        .write_all(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
        .await
        .unwrap();
    let (trickle_read, mut trickle_write) = trickle.into_split();
    let trickled = async move {
        let drip = async {
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                // Fails once the gateway has closed; the read below ends the race then.
                let _ = trickle_write.write_all(b" ").await;
            }
        };
        tokio::select! {
            _ = until_closed(trickle_read) => {},
            () = drip => {},
        }
    };
    // Nothing at all.
    let silent = connect().await.unwrap();
    // One request, then idle.
    let mut idle = connect().await.unwrap();
    idle.write_all(b"GET /api/v1/books HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let (half, stalled, (), silent, idle) = tokio::join!(
        until_closed(half),
        until_closed(stalled),
        trickled,
        until_closed(silent),
        until_closed(idle)
    );
    assert_eq!(half, "", "half a header gets no answer");
    assert_eq!(silent, "");
    assert!(idle.starts_with("HTTP/1.1 200"), "{idle}");
    // The stalled body is answered, in the envelope, before the connection goes.
    assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
    assert!(stalled.contains("\"code\":\"DEADLINE_EXCEEDED\""), "{stalled}");
}
