//! The audit trail: every change by staff, an admin or a service account, with who, what,
//! when, from where, the request id and the outcome; readable by admins alone, filtered; kept
//! append-only by the database itself, the client's address encrypted.

use reqwest::StatusCode;
use serde_json::{Value, json};

use bookstore_platform::backend_tests;
use bookstore_platform::db::{Backend, Database};

use crate::{System, book_json, customer, get_json, post_json};

backend_tests!(
    every_change_by_an_admin_is_in_the_audit_trail_with_who_where_and_the_outcome,
    every_change_the_api_offers_leaves_an_audit_entry_when_an_admin_asks,
    the_audit_trail_is_append_only_in_the_database_and_keeps_addresses_encrypted,
);

async fn audit(sys: &System, query: &str) -> Vec<Value> {
    let page = get_json(&sys.http, &sys.url(&format!("/api/v1/audit{query}")), &sys.admin).await;
    page["items"].as_array().unwrap_or_else(|| panic!("an audit page: {page}")).clone()
}

async fn every_change_by_an_admin_is_in_the_audit_trail_with_who_where_and_the_outcome(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let me = get_json(&sys.http, &sys.url("/api/v1/users/me"), &sys.admin).await;
    let created = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .json(&book_json(1, "Audited"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let request_id = created.headers()["x-request-id"].to_str().unwrap().to_owned();
    let book: Value = created.json().await.unwrap();
    let stock = format!("/api/v1/books/{}/stock", book["id"].as_str().unwrap());
    let restocked = post_json(&sys.http, &sys.url(&stock), &sys.admin, &json!({"delta": 5})).await;
    assert!(restocked["stock"].is_number(), "{restocked}");
    // A refused attempt is an action too.
    let refused = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    // A customer's own doings are not staff actions; the trail is for admins alone.
    let shopper = customer(&sys, "auditedshopper").await;
    let answer = sys.http.get(sys.url("/api/v1/audit")).bearer_auth(&shopper).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);
    assert_eq!(answer.json::<Value>().await.unwrap()["code"], "PERMISSION_DENIED");

    let all = audit(&sys, "").await;
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(
        actions,
        ["POST /api/v1/books", "POST /api/v1/books/{id}/stock", "POST /api/v1/books"],
        "newest first, and nothing of the customer's: {all:?}"
    );
    let create = &all[2];
    assert_eq!(create["actor"], me["id"], "who: {create}");
    assert!(create["roles"].as_array().unwrap().contains(&json!("admin")), "{create}");
    assert_eq!(create["target"], "/api/v1/books");
    assert_eq!(create["status"], 201);
    assert_eq!(create["request_id"], request_id.as_str());
    assert_eq!(create["address"], "127.0.0.1", "from where: {create}");
    assert_eq!(all[1]["target"], stock.as_str());
    assert_eq!(all[0]["status"], 400, "the refused attempt, with its outcome");

    let only_stock = audit(&sys, "?action=POST%20/api/v1/books/%7Bid%7D/stock").await;
    assert_eq!(only_stock.len(), 1, "{only_stock:?}");
    assert!(audit(&sys, "?actor=someone-else").await.is_empty());
    let since = create["at_ms"].as_i64().unwrap() + 3_600_000;
    assert!(audit(&sys, &format!("?since={since}")).await.is_empty());
    assert_eq!(audit(&sys, "?limit=1").await.len(), 1);
    let bad = sys.http.get(sys.url("/api/v1/audit?limit=5000")).bearer_auth(&sys.admin).send().await.unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // An action on the queue's socket is recorded as one through the API.
    use crate::fulfillment::{next, send, socket};
    let mut queue = socket(&sys).await;
    send(&mut queue, json!({"type": "auth", "token": sys.admin})).await;
    assert_eq!(next(&mut queue).await.unwrap()["type"], "snapshot");
    send(
        &mut queue,
        json!({"type": "move", "request_id": "r1", "task_id": "nobody", "position": 0, "version": 1}),
    )
    .await;
    let answer = next(&mut queue).await.unwrap();
    assert_eq!(answer["type"], "error", "{answer}");
    let moved = audit(&sys, "?action=WS%20move").await;
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["target"], "/api/v1/fulfillment/tasks/nobody");
    assert_eq!(moved[0]["request_id"], "r1");
    assert_eq!(moved[0]["actor"], me["id"]);
    assert!(moved[0]["status"].as_i64().unwrap() >= 400, "{moved:?}");
}

async fn every_change_the_api_offers_leaves_an_audit_entry_when_an_admin_asks(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let doc: Value = sys.http.get(sys.url("/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut walked = Vec::new();
    for (path, operations) in doc["paths"].as_object().unwrap() {
        // Signing in and one's own account are everyone's; the rest are staff's and admins'.
        if path.starts_with("/api/v1/auth/") || path.starts_with("/api/v1/users/me") {
            continue;
        }
        for method in operations.as_object().unwrap().keys() {
            if method == "get" {
                continue;
            }
            let concrete = path.replace("{id}", "nobody").replace("{client_id}", "nobody");
            let method = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let answer = sys
                .http
                .request(method.clone(), sys.url(&concrete))
                .bearer_auth(&sys.admin)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            walked.push((format!("{method} {path}"), answer.status().as_u16()));
        }
    }
    assert!(walked.len() >= 15, "the document's changes were walked: {walked:?}");
    let trail = audit(&sys, "?limit=1000").await;
    for (action, status) in &walked {
        assert!(
            trail.iter().any(|e| e["action"] == action.as_str() && e["status"] == *status),
            "{action} ({status}) is not in the audit trail: {trail:?}"
        );
    }
}

async fn the_audit_trail_is_append_only_in_the_database_and_keeps_addresses_encrypted(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let created = post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &book_json(2, "Kept")).await;
    assert!(created["id"].is_string(), "{created}");
    assert_eq!(audit(&sys, "").await.len(), 1);
    let db = Database::connect(&sys.users_db.url, &Default::default()).await.unwrap();
    for change in ["UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"] {
        let refused = sqlx::query(change).execute(db.pool()).await.unwrap_err();
        assert!(refused.to_string().contains("append-only"), "{change}: {refused}");
    }
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT address_sealed FROM audit_log").fetch_one(db.pool()).await.unwrap();
    assert!(!sealed.windows(9).any(|w| w == b"127.0.0.1"), "the address is not kept in the clear");
    assert_eq!(audit(&sys, "").await[0]["address"], "127.0.0.1", "admins read it");
}
