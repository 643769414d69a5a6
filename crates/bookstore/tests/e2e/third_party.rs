//! Calling the shop as a service: accounts an admin creates, lists, rotates and revokes; tokens
//! that carry the account's scopes; and every route doing what its scope allows and nothing
//! else, at the gateway and at the service behind it.

use reqwest::StatusCode;
use serde_json::{Value, json};

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;

use crate::{System, book_json, customer, post_json, shipping_address};

backend_tests!(
    a_service_account_does_what_its_scopes_allow_and_nothing_else,
    an_admin_lists_rotates_and_revokes_service_accounts,
);

/// A service account granted `scopes`: (client id, secret).
async fn account(sys: &System, name: &str, scopes: &[&str]) -> (String, String) {
    let created = post_json(
        &sys.http,
        &sys.url("/api/v1/service-accounts"),
        &sys.admin,
        &json!({"name": name, "scopes": scopes}),
    )
    .await;
    assert_eq!(created["scopes"], json!(scopes), "{created}");
    (created["client_id"].as_str().unwrap().to_owned(), created["client_secret"].as_str().unwrap().to_owned())
}

/// The answer to a client-credentials grant.
async fn grant(sys: &System, id: &str, secret: &str, scope: Option<&str>) -> reqwest::Response {
    let mut body = json!({"grant_type": "client_credentials", "client_id": id, "client_secret": secret});
    if let Some(scope) = scope {
        body["scope"] = json!(scope);
    }
    sys.http.post(sys.url("/api/v1/auth/token")).json(&body).send().await.unwrap()
}

async fn token(sys: &System, id: &str, secret: &str) -> String {
    let answer: Value = grant(sys, id, secret, None).await.json().await.unwrap();
    answer["access_token"].as_str().unwrap_or_else(|| panic!("no token: {answer}")).to_owned()
}

fn claims(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap())
        .unwrap()
}

async fn a_service_account_does_what_its_scopes_allow_and_nothing_else(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let (reader_id, reader_secret) = account(&sys, "catalog reader", &["books:read"]).await;
    let reader = token(&sys, &reader_id, &reader_secret).await;
    assert_eq!(claims(&reader)["scope"], "books:read");
    let (writer_id, writer_secret) = account(&sys, "catalog feed", &["books:write"]).await;
    let writer = token(&sys, &writer_id, &writer_secret).await;

    // books:read reads and cannot write; books:write writes and cannot read.
    let list = |token: &str| sys.http.get(sys.url("/api/v1/books")).bearer_auth(token.to_owned()).send();
    let add = |token: &str, n: u32| {
        sys.http
            .post(sys.url("/api/v1/books"))
            .bearer_auth(token.to_owned())
            .json(&book_json(n, "Fed"))
            .send()
    };
    assert_eq!(list(&reader).await.unwrap().status(), StatusCode::OK);
    let refused = add(&reader, 1).await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["code"], "PERMISSION_DENIED");
    assert!(body["message"].as_str().unwrap().contains("books:write"), "{body}");
    assert_eq!(add(&writer, 2).await.unwrap().status(), StatusCode::CREATED);
    assert_eq!(list(&writer).await.unwrap().status(), StatusCode::FORBIDDEN);

    // The service behind the gateway checks the same: books itself refuses the reader's write.
    let channel =
        tonic::transport::Channel::from_shared(sys.books_base.clone()).unwrap().connect().await.unwrap();
    let mut books = bookstore_api::books::v1::book_service_client::BookServiceClient::new(channel);
    let mut request = tonic::Request::new(bookstore_api::books::v1::CreateBookRequest::default());
    request.metadata_mut().insert("authorization", format!("Bearer {reader}").parse().unwrap());
    assert_eq!(books.create_book(request).await.unwrap_err().code(), tonic::Code::PermissionDenied);

    // orders:read sees every order; no service account checks out (that is for people).
    let ada = customer(&sys, "ada").await;
    let book = post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &{
        let mut b = book_json(3, "Sold");
        b["stock"] = json!(5);
        b
    })
    .await;
    let body =
        json!({"lines": [{"book_id": book["id"], "quantity": 1}], "shipping_address": shipping_address()});
    post_json(&sys.http, &sys.url("/api/v1/orders"), &ada, &body).await;
    let (auditor_id, auditor_secret) = account(&sys, "auditor", &["orders:read"]).await;
    let auditor = token(&sys, &auditor_id, &auditor_secret).await;
    let seen: Value = sys
        .http
        .get(sys.url("/api/v1/orders"))
        .bearer_auth(&auditor)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(seen["total"], 1, "every order: {seen}");
    let checkout =
        sys.http.post(sys.url("/api/v1/orders")).bearer_auth(&auditor).json(&body).send().await.unwrap();
    assert_eq!(checkout.status(), StatusCode::FORBIDDEN);

    // A narrower token on request; never a wider one; no scope that does not exist.
    let narrowed = grant(&sys, &auditor_id, &auditor_secret, Some("orders:read")).await;
    assert_eq!(narrowed.status(), StatusCode::OK);
    let wider = grant(&sys, &auditor_id, &auditor_secret, Some("orders:read orders:write")).await;
    assert_eq!(wider.status(), StatusCode::BAD_REQUEST);
    let made_up = sys
        .http
        .post(sys.url("/api/v1/service-accounts"))
        .bearer_auth(&sys.admin)
        .json(&json!({"name": "greedy", "scopes": ["everything"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(made_up.status(), StatusCode::BAD_REQUEST);
}

async fn an_admin_lists_rotates_and_revokes_service_accounts(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let (id, secret) = account(&sys, "partner shop", &["books:read"]).await;
    let url = |path: &str| sys.url(&format!("/api/v1/service-accounts{path}"));

    let listed: Value =
        sys.http.get(url("")).bearer_auth(&sys.admin).send().await.unwrap().json().await.unwrap();
    let entry = listed["items"].as_array().unwrap().iter().find(|a| a["client_id"] == id.as_str()).unwrap();
    assert_eq!((entry["name"].as_str(), &entry["scopes"]), (Some("partner shop"), &json!(["books:read"])));
    assert!(entry.get("client_secret").is_none() && entry.get("revoked_at").is_none(), "{entry}");
    let ada = customer(&sys, "ada").await;
    assert_eq!(sys.http.get(url("")).bearer_auth(&ada).send().await.unwrap().status(), StatusCode::FORBIDDEN);

    // A new secret: the old one stops working at once.
    let rotated: Value = sys
        .http
        .post(url(&format!("/{id}/rotate-secret")))
        .bearer_auth(&sys.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let new_secret = rotated["client_secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    assert_eq!(grant(&sys, &id, &secret, None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(grant(&sys, &id, new_secret, None).await.status(), StatusCode::OK);

    // Revoked: its next token request fails; it stays listed, marked.
    let revoked = sys.http.post(url(&format!("/{id}/revoke"))).bearer_auth(&sys.admin).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    let revoked: Value = revoked.json().await.unwrap();
    assert!(revoked["revoked_at"].is_string(), "{revoked}");
    assert_eq!(grant(&sys, &id, new_secret, None).await.status(), StatusCode::UNAUTHORIZED);
    let again =
        sys.http.post(url(&format!("/{id}/rotate-secret"))).bearer_auth(&sys.admin).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_FOUND, "a revoked account gets no new secret");
    let unknown = sys.http.post(url("/svc-nobody/revoke")).bearer_auth(&sys.admin).send().await.unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}
