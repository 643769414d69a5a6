//! The REST API through the gateway.

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{System, book_json};

backend_tests!(
    a_posted_book_can_be_fetched_by_its_id,
    bad_input_gets_400_in_the_envelope,
    missing_things_get_404_in_the_envelope,
    a_duplicate_isbn_gets_409,
    an_oversized_body_gets_413,
    books_can_be_updated_restocked_and_deleted,
    the_catalog_pages_with_a_total,
    search_and_author_filter_find_seeded_books,
    request_ids_are_kept_or_made,
    responses_are_compressed_when_asked,
    openapi_asyncapi_and_swagger_ui_are_served,
    metrics_count_requests_per_route,
    cors_is_off_by_default_and_on_when_configured,
);

/// Asserts an error response: its status, the envelope's code, and that `request_id` is the
/// response's `x-request-id`.
async fn assert_envelope(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let request_id =
        response.headers().get("x-request-id").expect("x-request-id").to_str().unwrap().to_owned();
    assert_eq!(response.headers()["content-type"], "application/json");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert_eq!(body["request_id"], request_id.as_str());
    body
}

/// The seed's own flow: POST a book → 201 with an id, GET it → 200 with the same title.
async fn a_posted_book_can_be_fetched_by_its_id(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let response = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .json(&book_json(1, "E2E Test Book"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().expect("an id");
    assert_eq!(location, format!("/api/v1/books/{id}"));

    let response = sys.http.get(sys.url(&location)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let fetched: Value = response.json().await.unwrap();
    assert_eq!(fetched["title"], "E2E Test Book");
    assert_eq!(fetched["price"], json!({"amount_minor": 1999, "currency": "USD"}));
    assert_eq!(fetched["stock"], 5);
    assert_eq!(fetched, created);
    assert!(fetched["created_at"].as_str().unwrap().ends_with('Z'));
}

async fn bad_input_gets_400_in_the_envelope(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let post =
        |body: Value| sys.http.post(sys.url("/api/v1/books")).bearer_auth(&sys.admin).json(&body).send();

    let mut bad_isbn = book_json(1, "X");
    bad_isbn["isbn"] = json!("9780441172718");
    let body =
        assert_envelope(post(bad_isbn).await.unwrap(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT").await;
    assert_eq!(body["message"], "isbn: check digit does not match");
    // The books service named the field in a standard BadRequest detail; the envelope lists it.
    assert_eq!(body["details"], json!([{"field": "isbn", "description": "check digit does not match"}]));

    let mut float_price = book_json(1, "X");
    float_price["price"] = json!(19.99);
    assert_envelope(post(float_price).await.unwrap(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT").await;

    let mut unknown_field = book_json(1, "X");
    unknown_field["colour"] = json!("red");
    let body =
        assert_envelope(post(unknown_field).await.unwrap(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT")
            .await;
    assert!(body["message"].as_str().unwrap().contains("colour"), "{body}");

    let mut empty_title = book_json(1, "   ");
    empty_title["title"] = json!("   ");
    let body =
        assert_envelope(post(empty_title).await.unwrap(), StatusCode::BAD_REQUEST, "INVALID_ARGUMENT").await;
    assert_eq!(body["message"], "title: must not be empty");

    let malformed = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .header("content-type", "application/json")
        .body("{\"isbn\": ")
        .send()
        .await
        .unwrap();
    assert_envelope(malformed, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT").await;

    let not_json =
        sys.http.post(sys.url("/api/v1/books")).bearer_auth(&sys.admin).body("isbn=1").send().await.unwrap();
    assert_envelope(not_json, StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE").await;

    let bad_limit = sys.http.get(sys.url("/api/v1/books?limit=1000")).send().await.unwrap();
    let body = assert_envelope(bad_limit, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT").await;
    assert!(body["message"].as_str().unwrap().starts_with("limit"), "{body}");

    let bad_page = sys.http.get(sys.url("/api/v1/books?page=abc")).send().await.unwrap();
    assert_envelope(bad_page, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT").await;

    let zero_delta = sys
        .http
        .post(sys.url("/api/v1/books/x/stock"))
        .bearer_auth(&sys.admin)
        .json(&json!({"delta": 0}))
        .send()
        .await
        .unwrap();
    assert_envelope(zero_delta, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT").await;
}

async fn missing_things_get_404_in_the_envelope(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let response = sys.http.get(sys.url("/api/v1/books/no-such-book")).send().await.unwrap();
    let body = assert_envelope(response, StatusCode::NOT_FOUND, "NOT_FOUND").await;
    assert!(body["message"].as_str().unwrap().contains("no-such-book"));

    let response = sys.http.get(sys.url("/api/v1/nothing-here")).send().await.unwrap();
    assert_envelope(response, StatusCode::NOT_FOUND, "NOT_FOUND").await;

    let response =
        sys.http.delete(sys.url("/api/v1/books/no-such-book")).bearer_auth(&sys.admin).send().await.unwrap();
    assert_envelope(response, StatusCode::NOT_FOUND, "NOT_FOUND").await;

    // Signed in: an anonymous caller is refused (401) before the method is looked at.
    let response = sys.http.put(sys.url("/api/v1/books")).bearer_auth(&sys.admin).send().await.unwrap();
    assert_envelope(response, StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED").await;
}

async fn a_duplicate_isbn_gets_409(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let first = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .json(&book_json(7, "First"))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let second = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .json(&book_json(7, "Second"))
        .send()
        .await
        .unwrap();
    assert_envelope(second, StatusCode::CONFLICT, "ALREADY_EXISTS").await;
    let all: Value = sys.http.get(sys.url("/api/v1/books")).send().await.unwrap().json().await.unwrap();
    assert_eq!(all["total"], 1, "the first book is kept, the second not added");
}

async fn an_oversized_body_gets_413(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let mut huge = book_json(1, "Big");
    huge["description"] = json!("x".repeat(100 * 1024));
    let response =
        sys.http.post(sys.url("/api/v1/books")).bearer_auth(&sys.admin).json(&huge).send().await.unwrap();
    assert_envelope(response, StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE").await;

    // Under the body limit but over the field limit: a 400 that names the field.
    let mut long = book_json(1, "Long");
    long["description"] = json!("x".repeat(5001));
    let body = assert_envelope(
        sys.http.post(sys.url("/api/v1/books")).bearer_auth(&sys.admin).json(&long).send().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
    )
    .await;
    assert!(body["message"].as_str().unwrap().starts_with("description"));
}

async fn books_can_be_updated_restocked_and_deleted(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let created: Value = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .json(&book_json(1, "Draft"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = sys.url(&format!("/api/v1/books/{}", created["id"].as_str().unwrap()));

    let updated: Value = sys
        .http
        .patch(&url)
        .bearer_auth(&sys.admin)
        .json(&json!({"title": "Final", "price": {"amount_minor": 2500, "currency": "EUR"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(updated["title"], "Final");
    assert_eq!(updated["price"], json!({"amount_minor": 2500, "currency": "EUR"}));
    assert_eq!(updated["author"], created["author"], "fields not sent are kept");

    let restocked: Value = sys
        .http
        .post(format!("{url}/stock"))
        .bearer_auth(&sys.admin)
        .json(&json!({"delta": 10}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(restocked["stock"], 15);
    let too_many = sys
        .http
        .post(format!("{url}/stock"))
        .bearer_auth(&sys.admin)
        .json(&json!({"delta": -16}))
        .send()
        .await
        .unwrap();
    assert_envelope(too_many, StatusCode::CONFLICT, "FAILED_PRECONDITION").await;
    let after: Value = sys.http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(after["stock"], 15, "a refused removal changes nothing");

    assert_eq!(
        sys.http.delete(&url).bearer_auth(&sys.admin).send().await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(sys.http.get(&url).send().await.unwrap().status(), StatusCode::NOT_FOUND);
}

async fn the_catalog_pages_with_a_total(backend: Backend) {
    let Some(sys) = System::start(backend, true).await else { return };
    let first: Value =
        sys.http.get(sys.url("/api/v1/books?limit=10")).send().await.unwrap().json().await.unwrap();
    let total = first["total"].as_i64().unwrap();
    assert!(total >= 50, "the starter catalog is loaded: {total}");
    assert_eq!((first["page"].as_i64(), first["limit"].as_i64()), (Some(1), Some(10)));

    let mut ids = std::collections::HashSet::new();
    let mut titles = Vec::new();
    let pages = (total + 9) / 10;
    for page in 1..=pages {
        let body: Value = sys
            .http
            .get(sys.url(&format!("/api/v1/books?limit=10&page={page}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for book in body["items"].as_array().unwrap() {
            assert!(ids.insert(book["id"].as_str().unwrap().to_owned()), "no book twice across pages");
            titles.push(book["title"].as_str().unwrap().to_lowercase());
        }
    }
    assert_eq!(ids.len() as i64, total, "every book once across pages");
    let mut sorted = titles.clone();
    sorted.sort();
    assert_eq!(titles, sorted, "stable title order");
}

async fn search_and_author_filter_find_seeded_books(backend: Backend) {
    let Some(sys) = System::start(backend, true).await else { return };
    let found: Value =
        sys.http.get(sys.url("/api/v1/books?q=dune")).send().await.unwrap().json().await.unwrap();
    assert_eq!(found["items"][0]["title"], "Dune", "{found}");

    let found: Value = sys
        .http
        .get(sys.url("/api/v1/books?q=rust%20programming"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(found["items"][0]["title"], "The Rust Programming Language", "{found}");

    let asimov: Value = sys
        .http
        .get(sys.url("/api/v1/books?author=isaac%20asimov"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(asimov["total"].as_i64().unwrap() >= 2);
    for book in asimov["items"].as_array().unwrap() {
        assert_eq!(book["author"], "Isaac Asimov");
    }

    let nothing: Value =
        sys.http.get(sys.url("/api/v1/books?q=xylophonequartz")).send().await.unwrap().json().await.unwrap();
    assert_eq!(nothing["total"], 0);

    let both = sys.http.get(sys.url("/api/v1/books?q=dune&author=x")).send().await.unwrap();
    assert_envelope(both, StatusCode::BAD_REQUEST, "INVALID_ARGUMENT").await;
}

async fn request_ids_are_kept_or_made(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let given =
        sys.http.get(sys.url("/api/v1/books")).header("x-request-id", "trace-me-42").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "trace-me-42");
    let made = sys.http.get(sys.url("/api/v1/books")).send().await.unwrap();
    let id = made.headers()["x-request-id"].to_str().unwrap();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    let error =
        sys.http.get(sys.url("/api/v1/books/nope")).header("x-request-id", "err-7").send().await.unwrap();
    let body: Value = error.json().await.unwrap();
    assert_eq!(body["request_id"], "err-7");
}

async fn responses_are_compressed_when_asked(backend: Backend) {
    let Some(sys) = System::start(backend, true).await else { return };
    let raw = reqwest::Client::builder().no_gzip().no_brotli().build().unwrap();
    for encoding in ["gzip", "br"] {
        let response = raw
            .get(sys.url("/api/v1/books?limit=50"))
            .header("accept-encoding", encoding)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-encoding"], encoding);
    }
    let plain = raw.get(sys.url("/api/v1/books?limit=50")).send().await.unwrap();
    assert!(plain.headers().get("content-encoding").is_none());
    // And the decompressed body is the same JSON.
    let decoded: Value =
        sys.http.get(sys.url("/api/v1/books?limit=50")).send().await.unwrap().json().await.unwrap();
    assert_eq!(decoded["items"].as_array().unwrap().len(), 50);
}

async fn openapi_asyncapi_and_swagger_ui_are_served(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let doc: Value = sys.http.get(sys.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert!(doc["paths"]["/api/v1/books/{id}"]["get"].is_object());
    let page = sys.http.get(sys.url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.unwrap().contains("swagger-ui"));
    // The UI's assets are in the binary: no network needed.
    let asset = sys.http.get(sys.url("/docs/swagger-ui.css")).send().await.unwrap();
    assert_eq!(asset.status(), StatusCode::OK);
    // What streams is described beside it.
    let live: Value = sys.http.get(sys.url("/api/asyncapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(live["channels"]["queue"]["address"], "/api/v1/fulfillment/queue/ws");
    assert!(doc["paths"]["/api/v1/orders/events"]["get"].is_object());
}

async fn metrics_count_requests_per_route(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let response = sys.http.get(sys.url("/api/v1/books/missing-for-metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let metrics =
        sys.http.get(format!("{}/metrics", sys.admin_base)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("http_server_requests_total{")
            && l.contains(r#"route="/api/v1/books/{id}""#)
            && l.contains(r#"status="404""#)
            && l.contains(r#"service="gateway""#)),
        "{metrics}"
    );
    assert!(metrics.contains("http_server_request_duration_seconds_bucket{"), "latency histogram");
    // One process, one registry: the admin listener shows every service's metrics.
    let books_metrics = metrics;
    assert!(books_metrics.contains(r#"rpc="/bookstore.books.v1.BookService/GetBook""#));
    assert!(books_metrics.contains("db_pool_idle_connections"));
}

async fn cors_is_off_by_default_and_on_when_configured(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let response =
        sys.http.get(sys.url("/api/v1/books")).header("origin", "https://shop.example").send().await.unwrap();
    assert!(response.headers().get("access-control-allow-origin").is_none());
    drop(sys);

    let Some(sys) = System::start_with(backend, false, |c| {
        c.gateway.cors_allowed_origins = "https://shop.example".into()
    })
    .await
    else {
        return;
    };
    let preflight = sys
        .http
        .request(reqwest::Method::OPTIONS, sys.url("/api/v1/books"))
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://shop.example");
    let other =
        sys.http.get(sys.url("/api/v1/books")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
}
