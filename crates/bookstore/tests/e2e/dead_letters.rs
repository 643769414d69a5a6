//! Dead letters, as an operator meets them: an event no consumer can handle is set aside by
//! each consumer of its type; admins list, inspect, replay and discard it on the admin listener
//! and with `bookstore admin dead-letters`, on the deployment's bus (the event log on SQLite,
//! RabbitMQ with PostgreSQL).

use reqwest::StatusCode;
use serde_json::{Value, json};

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;
use bookstore_platform::events::Event;

use crate::{System, customer, until};

backend_tests!(
    admins_list_inspect_replay_and_discard_dead_letters_on_the_admin_listener,
    the_command_line_lists_and_discards_the_dead_letters_of_the_deployment,
);

/// Publishes an OrderPlaced whose body is not an event envelope: fulfillment and recommendations
/// both consume OrderPlaced, and neither can handle it. Its id.
async fn publish_undecodable(sys: &System) -> String {
    let (bus, db) = bookstore::bus(&sys.config).await.unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    let event = Event { id: id.clone(), event_type: "OrderPlaced".into(), body: b"not an envelope".to_vec() };
    bus.publish(&[event]).await.unwrap();
    if let Some(db) = db {
        db.close().await;
    }
    id
}

/// Publishes an event neither consumer of its type can handle and waits until both set it
/// aside; its id.
async fn both_give_up_on_one(sys: &System) -> String {
    let id = publish_undecodable(sys).await;
    until("both consumers to give up on the event", std::time::Duration::from_secs(60), || async {
        let (_, list) = dead_letters(sys, &sys.admin).await;
        of(&list, "fulfillment").len() == 1 && of(&list, "recommendations").len() == 1
    })
    .await;
    id
}

async fn dead_letters(sys: &System, token: &str) -> (StatusCode, Value) {
    let answer =
        sys.http.get(format!("{}/dead-letters", sys.admin_base)).bearer_auth(token).send().await.unwrap();
    (answer.status(), answer.json().await.unwrap())
}

/// The dead letters of `consumer` in a `GET /dead-letters` answer.
fn of<'a>(list: &'a Value, consumer: &str) -> &'a Vec<Value> {
    let entry = list["consumers"].as_array().unwrap().iter().find(|c| c["consumer"] == consumer);
    entry.unwrap_or_else(|| panic!("{consumer} is listed: {list}"))["dead_letters"].as_array().unwrap()
}

async fn admins_list_inspect_replay_and_discard_dead_letters_on_the_admin_listener(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let (id, admin) = (both_give_up_on_one(&sys).await, sys.admin.clone());

    // Admins alone.
    let anonymous = sys.http.get(format!("{}/dead-letters", sys.admin_base)).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHENTICATED", "in the error envelope: {body}");
    assert!(body["request_id"].is_string(), "{body}");
    let shopper = customer(&sys, "deadletterreader").await;
    let (status, body) = dead_letters(&sys, &shopper).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["code"], "PERMISSION_DENIED");

    let (status, list) = dead_letters(&sys, &admin).await;
    assert_eq!(status, StatusCode::OK);
    assert!(of(&list, "orders").is_empty(), "orders does not consume OrderPlaced: {list}");
    let dead = &of(&list, "fulfillment")[0];
    assert_eq!(dead["id"], id.as_str());
    assert_eq!(dead["type"], "OrderPlaced");
    assert_eq!(dead["attempts"], 5, "the default attempts: {dead}");
    assert!(!dead["error"].as_str().unwrap().is_empty(), "{dead}");
    assert_eq!(dead["envelope"], Value::Null, "the body is no envelope: {dead}");

    let one = |consumer: &str| format!("{}/dead-letters/{consumer}/{id}", sys.admin_base);
    let shown = sys.http.get(one("fulfillment")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(shown.status(), StatusCode::OK);
    assert_eq!(shown.json::<Value>().await.unwrap()["id"], id.as_str());
    let nobody = sys.http.get(one("nobody")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(nobody.status(), StatusCode::NOT_FOUND);

    // A discard needs a reason; then the letter is gone.
    let discard = |reason: Value| {
        sys.http.post(format!("{}/discard", one("fulfillment"))).bearer_auth(&admin).json(&reason).send()
    };
    let refused = discard(json!({"reason": "  "})).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.json::<Value>().await.unwrap()["code"], "INVALID_ARGUMENT");
    let discarded = discard(json!({"reason": "a malformed event from a test"})).await.unwrap();
    assert_eq!(discarded.status(), StatusCode::OK);
    let gone = sys.http.get(one("fulfillment")).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert_eq!(discard(json!({"reason": "again"})).await.unwrap().status(), StatusCode::NOT_FOUND);

    // A replay of what still cannot be handled sets it aside again.
    let replay = format!("{}/dead-letters/recommendations/replay", sys.admin_base);
    let replayed = sys.http.post(&replay).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(replayed.status(), StatusCode::OK);
    assert_eq!(replayed.json::<Value>().await.unwrap()["replayed"], json!([id]));
    until("the replayed event to fail again", std::time::Duration::from_secs(60), || async {
        let (_, list) = dead_letters(&sys, &admin).await;
        let dead = of(&list, "recommendations");
        dead.len() == 1 && dead[0]["replay_pending"] == false
    })
    .await;
    let (_, list) = dead_letters(&sys, &admin).await;
    assert!(of(&list, "fulfillment").is_empty(), "the discarded one stays discarded: {list}");

    // Both are in the audit trail, as the admin's.
    let trail = crate::get_json(&sys.http, &sys.url("/api/v1/audit"), &admin).await;
    let me = crate::get_json(&sys.http, &sys.url("/api/v1/users/me"), &admin).await;
    let entries = trail["items"].as_array().unwrap();
    for (action, target) in [
        ("POST /dead-letters/{consumer}/{id}/discard", format!("/dead-letters/fulfillment/{id}/discard")),
        ("POST /dead-letters/{consumer}/replay", "/dead-letters/recommendations/replay".to_owned()),
    ] {
        let entry = entries.iter().find(|e| e["action"] == action && e["status"] == 200);
        let entry = entry.unwrap_or_else(|| panic!("{action} is in the audit trail: {trail}"));
        assert_eq!(entry["target"], target.as_str());
        assert_eq!(entry["actor"], me["id"]);
    }
}

async fn the_command_line_lists_and_discards_the_dead_letters_of_the_deployment(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let (id, admin) = (both_give_up_on_one(&sys).await, sys.admin.clone());
    // The deployment's bus, as its operator names it.
    let run = |args: &[&str]| {
        let mut cmd = crate::clean_command(env!("CARGO_BIN_EXE_bookstore"), "warn");
        cmd.args(["admin", "dead-letters"]).args(args);
        cmd.arg("--data-dir").arg(&sys.config.process.data_dir);
        // Replays and discards are recorded in the users database's audit trail.
        cmd.args(["--users-database-url", sys.config.users.database_url.as_deref().unwrap()]);
        cmd.env("BOOKSTORE_MASTER_KEY", sys.config.process.master_key.as_deref().unwrap());
        cmd.env("USER", "operator-ada");
        if let Some(url) = &sys.config.process.amqp_url {
            cmd.args(["--amqp-url", url, "--amqp-namespace", &sys.config.process.amqp_namespace]);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, out, err) = run(&["list"]);
    assert!(ok, "{err}");
    assert!(out.contains("fulfillment: 1 dead letter(s)"), "{out}");
    assert!(out.contains("orders: 0 dead letter(s)"), "{out}");
    assert!(out.contains(&id), "{out}");
    let (ok, out, err) = run(&["show", "recommendations", &id]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["consumer"], "recommendations");
    let (ok, _, err) = run(&["discard", "recommendations", &id]);
    assert!(!ok && err.contains("--reason"), "a discard needs a reason: {err}");
    let (ok, out, err) = run(&["discard", "recommendations", &id, "--reason", "malformed"]);
    assert!(ok, "{err}");
    assert!(out.contains("discarded (malformed)"), "{out}");
    let (ok, _, err) = run(&["discard", "recommendations", &id, "--reason", "malformed"]);
    assert!(!ok && err.contains("no dead letter"), "{err}");
    let (_, list) = dead_letters(&sys, &admin).await;
    assert!(of(&list, "recommendations").is_empty(), "{list}");
    assert_eq!(of(&list, "fulfillment").len(), 1, "{list}");

    // The discard is in the audit trail as the operator's, and the refused one is not.
    let trail = crate::get_json(&sys.http, &sys.url("/api/v1/audit?actor=cli:operator-ada"), &admin).await;
    let entries = trail["items"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{trail}");
    assert_eq!(entries[0]["action"], "CLI dead-letters discard");
    assert_eq!(entries[0]["target"], format!("/dead-letters/recommendations/{id}/discard"));
    assert_eq!(entries[0]["roles"], json!(["operator"]), "{trail}");
}
