//! The work queue: every checkout becomes a queued task; staff reorder, claim, advance and
//! remove tasks with the version they saw; a cancelled order takes its task off the queue.

use reqwest::StatusCode;
use serde_json::{Value, json};

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;

use crate::{System, book_json, login, post_json, until};

backend_tests!(
    checkouts_become_queued_tasks_that_staff_reorder_claim_advance_and_remove,
    two_staff_moving_one_task_at_once_one_wins_and_the_other_gets_409,
);

const PASSWORD: &str = "velvet lantern orbit crumble";

async fn book(sys: &System, n: u32) -> String {
    let mut body = book_json(n, &format!("Book {n}"));
    body["stock"] = json!(100);
    post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn customer(sys: &System, name: &str) -> String {
    let register = json!({"username": name, "email": format!("{name}@example.com"), "password": PASSWORD,
                          "full_name": name});
    let answer = sys.http.post(sys.url("/api/v1/auth/register")).json(&register).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::CREATED);
    login(&sys.http, &sys.base, name, PASSWORD).await
}

/// Places an order of one `book` shipping to `recipient`; its id.
async fn order(sys: &System, token: &str, book: &str, recipient: &str) -> String {
    let body = json!({"lines": [{"book_id": book, "quantity": 1}],
                      "shipping_address": {"name": recipient, "line1": "1 Queue Street", "country": "DE"}});
    let placed = post_json(&sys.http, &sys.url("/api/v1/orders"), token, &body).await;
    placed["id"].as_str().unwrap_or_else(|| panic!("no order: {placed}")).to_owned()
}

async fn queue(sys: &System) -> Value {
    let answer =
        sys.http.get(sys.url("/api/v1/fulfillment/queue")).bearer_auth(&sys.admin).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    answer.json().await.unwrap()
}

/// Waits until the queue holds `n` tasks; the queue then.
async fn queue_of(sys: &System, n: usize) -> Value {
    let limit = std::time::Duration::from_secs(30);
    until(&format!("{n} tasks on the queue"), limit, || async {
        queue(sys).await["tasks"].as_array().unwrap().len() == n
    })
    .await;
    queue(sys).await
}

/// Waits until order `id` is in `status`; the order then.
async fn order_in(sys: &System, token: &str, id: &str, status: &str) -> Value {
    let url = sys.url(&format!("/api/v1/orders/{id}"));
    let read = || async {
        sys.http.get(&url).bearer_auth(token).send().await.unwrap().json::<Value>().await.unwrap()
    };
    until(&format!("order {id} to be {status}"), std::time::Duration::from_secs(30), || async {
        read().await["status"] == status
    })
    .await;
    read().await
}

async fn act(sys: &System, task: &Value, action: &str, body: Value) -> reqwest::Response {
    let url = sys.url(&format!("/api/v1/fulfillment/tasks/{}/{action}", task["id"].as_str().unwrap()));
    sys.http.post(url).bearer_auth(&sys.admin).json(&body).send().await.unwrap()
}

async fn checkouts_become_queued_tasks_that_staff_reorder_claim_advance_and_remove(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let b = book(&sys, 1).await;
    let ada = customer(&sys, "ada").await;
    let mut orders = Vec::new();
    for recipient in ["First Recipient", "Second Recipient", "Third Recipient"] {
        orders.push(order(&sys, &ada, &b, recipient).await);
    }
    let q = queue_of(&sys, 3).await;
    let tasks = q["tasks"].as_array().unwrap();
    let in_order: Vec<&str> = tasks.iter().map(|t| t["order_id"].as_str().unwrap()).collect();
    assert_eq!(in_order, orders.iter().map(String::as_str).collect::<Vec<_>>(), "served in order placed");
    for (i, task) in tasks.iter().enumerate() {
        assert_eq!((task["state"].as_str(), task["position"].as_u64()), (Some("QUEUED"), Some(i as u64)));
        assert_eq!(task["lines"][0]["book_id"], b.as_str());
    }
    assert_eq!(tasks[1]["shipping_address"]["name"], "Second Recipient", "staff see where it ships");
    let seq = q["seq"].as_i64().unwrap();
    assert!(seq >= 3, "each task's arrival was a change: {seq}");

    // Customers do not see the queue.
    let answer = sys.http.get(sys.url("/api/v1/fulfillment/queue")).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::FORBIDDEN);

    // The third goes first.
    let third = &tasks[2];
    let moved = act(&sys, third, "move", json!({"position": 0, "version": third["version"]})).await;
    assert_eq!(moved.status(), StatusCode::OK);
    let moved: Value = moved.json().await.unwrap();
    assert_eq!((moved["kind"].as_str(), moved["task"]["position"].as_u64()), (Some("task_moved"), Some(0)));
    assert_eq!(moved["seq"].as_i64(), Some(seq + 1), "the next number, in commit order");
    let q = queue(&sys).await;
    let order_now: Vec<&str> =
        q["tasks"].as_array().unwrap().iter().map(|t| t["order_id"].as_str().unwrap()).collect();
    assert_eq!(order_now, [orders[2].as_str(), orders[0].as_str(), orders[1].as_str()]);
    assert_eq!(q["seq"], moved["seq"]);
    // A change based on what the task was before the move is refused.
    let stale = act(&sys, third, "move", json!({"position": 2, "version": third["version"]})).await;
    assert_eq!(stale.status(), StatusCode::CONFLICT);

    // Claimed, packed, shipped: off the queue.
    let task = moved["task"].clone();
    let claimed: Value =
        act(&sys, &task, "claim", json!({"version": task["version"]})).await.json().await.unwrap();
    assert_eq!(claimed["task"]["state"], "PICKING");
    assert!(
        claimed["task"]["assignee"].as_str().is_some_and(|a| !a.is_empty()),
        "the claimer is the assignee"
    );
    assert!(claimed["task"].get("position").is_none(), "a task in hand has no queue position");
    let again = act(&sys, &claimed["task"], "claim", json!({"version": claimed["task"]["version"]})).await;
    assert_eq!(again.status(), StatusCode::CONFLICT, "only a queued task is claimed");
    // The customer sees the order follow its task.
    order_in(&sys, &ada, &orders[2], "FULFILLING").await;
    let cancel = sys
        .http
        .post(sys.url(&format!("/api/v1/orders/{}/cancel", orders[2])))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::CONFLICT, "a customer cancels only while PLACED");
    let packed: Value =
        act(&sys, &claimed["task"], "advance", json!({"version": claimed["task"]["version"]}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(packed["task"]["state"], "PACKED");
    let shipped: Value = act(&sys, &packed["task"], "advance", json!({"version": packed["task"]["version"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (shipped["kind"].as_str(), shipped["task"]["state"].as_str()),
        (Some("task_removed"), Some("SHIPPED"))
    );
    order_in(&sys, &ada, &orders[2], "SHIPPED").await;

    // Removing needs a reason.
    let first = queue(&sys).await["tasks"][0].clone();
    let no_reason = act(&sys, &first, "remove", json!({"version": first["version"], "reason": " "})).await;
    assert_eq!(no_reason.status(), StatusCode::BAD_REQUEST);
    let removed: Value =
        act(&sys, &first, "remove", json!({"version": first["version"], "reason": "damaged"}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(
        (removed["task"]["state"].as_str(), removed["task"]["reason"].as_str()),
        (Some("REMOVED"), Some("damaged"))
    );
    // Removing the task cancels its order with the reason, and its unit goes back on the shelf.
    let cancelled = order_in(&sys, &ada, &orders[0], "CANCELLED").await;
    assert_eq!(cancelled["status_reason"], "damaged");
    let stock = || async {
        let book: Value =
            sys.http.get(sys.url(&format!("/api/v1/books/{b}"))).send().await.unwrap().json().await.unwrap();
        (book["stock"].as_i64(), book["sold"].as_i64())
    };
    until("the removed order's unit back on the shelf", std::time::Duration::from_secs(30), || async {
        stock().await == (Some(98), Some(2))
    })
    .await;

    // A cancelled order takes its task off the queue.
    let cancel = sys
        .http
        .post(sys.url(&format!("/api/v1/orders/{}/cancel", orders[1])))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap();
    assert_eq!(cancel.status(), StatusCode::OK);
    queue_of(&sys, 0).await;

    // Nothing of the addresses in the clear in fulfillment's database.
    let db = bookstore_platform::db::Database::connect(&sys.fulfillment_db.url, &Default::default())
        .await
        .unwrap();
    let sealed: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT shipping_address FROM tasks").fetch_all(db.pool()).await.unwrap();
    assert_eq!(sealed.len(), 3);
    assert!(
        !sealed.iter().any(|s| s.windows(9).any(|w| w == b"Recipient")),
        "addresses are ciphertext at rest"
    );
}

async fn two_staff_moving_one_task_at_once_one_wins_and_the_other_gets_409(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let b = book(&sys, 1).await;
    let ada = customer(&sys, "ada").await;
    for recipient in ["A", "B", "C"] {
        order(&sys, &ada, &b, recipient).await;
    }
    let q = queue_of(&sys, 3).await;
    let last = q["tasks"][2].clone();
    let (one, two) = tokio::join!(
        act(&sys, &last, "move", json!({"position": 0, "version": last["version"]})),
        act(&sys, &last, "move", json!({"position": 1, "version": last["version"]})),
    );
    let mut statuses = [one.status().as_u16(), two.status().as_u16()];
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 409], "one move wins, the other is told the task changed");
    let after = queue(&sys).await;
    assert_eq!(after["seq"].as_i64(), Some(q["seq"].as_i64().unwrap() + 1), "exactly one change");
    let positions: Vec<u64> =
        after["tasks"].as_array().unwrap().iter().map(|t| t["position"].as_u64().unwrap()).collect();
    assert_eq!(positions, [0, 1, 2], "positions stay a permutation");
}
