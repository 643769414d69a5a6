//! The work queue: every checkout becomes a queued task; staff reorder, claim, advance and
//! remove tasks with the version they saw; a cancelled order takes its task off the queue.

use reqwest::StatusCode;
use serde_json::{Value, json};

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;

use crate::{System, book_json, customer, post_json, until};

backend_tests!(
    checkouts_become_queued_tasks_that_staff_reorder_claim_advance_and_remove,
    two_staff_moving_one_task_at_once_one_wins_and_the_other_gets_409,
    a_staff_socket_gets_the_snapshot_then_each_change_and_acts_on_the_queue,
    a_socket_without_a_staff_token_is_closed_with_a_code_that_says_why,
    a_staff_socket_is_closed_with_4401_when_its_token_expires,
    a_socket_resuming_from_its_last_seq_gets_exactly_the_changes_it_missed,
    two_replicas_sharing_redis_show_a_move_through_one_to_sockets_on_the_other_at_once,
    a_redis_restart_mid_stream_loses_no_change,
    a_customer_hears_each_of_their_orders_move_and_nothing_of_anyone_elses,
    an_order_stream_resumed_from_its_last_event_id_replays_what_changed_meanwhile,
    an_order_stream_ends_with_an_expired_event_when_its_token_expires,
);

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn socket(sys: &System) -> Socket {
    let url = format!("{}/api/v1/fulfillment/queue/ws", sys.base.replacen("http://", "ws://", 1));
    tokio_tungstenite::connect_async(url).await.expect("the socket opens").0
}

pub(crate) async fn send(socket: &mut Socket, message: Value) {
    use futures::SinkExt;
    socket.send(tokio_tungstenite::tungstenite::Message::Text(message.to_string().into())).await.unwrap();
}

/// The next JSON message, or the close frame's code.
pub(crate) async fn next(socket: &mut Socket) -> Result<Value, u16> {
    use futures::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(30), socket.next())
            .await
            .expect("a message within 30 s");
        match message {
            Some(Ok(Message::Text(text))) => return Ok(serde_json::from_str(&text).unwrap()),
            Some(Ok(Message::Close(frame))) => return Err(frame.map_or(1005, |f| u16::from(f.code))),
            Some(Ok(_)) => continue,
            other => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

async fn book(sys: &System, n: u32) -> String {
    let mut body = book_json(n, &format!("Book {n}"));
    body["stock"] = json!(100);
    post_json(&sys.http, &sys.url("/api/v1/books"), &sys.admin, &body).await["id"]
        .as_str()
        .unwrap()
        .to_owned()
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

async fn a_staff_socket_gets_the_snapshot_then_each_change_and_acts_on_the_queue(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let b = book(&sys, 1).await;
    let ada = customer(&sys, "ada").await;
    let first = order(&sys, &ada, &b, "First").await;
    queue_of(&sys, 1).await;

    let mut watcher = socket(&sys).await;
    send(&mut watcher, json!({"type": "auth", "token": sys.admin})).await;
    let snapshot = next(&mut watcher).await.unwrap();
    assert_eq!(snapshot["type"], "snapshot");
    assert_eq!(snapshot["tasks"][0]["order_id"], first.as_str());
    let seq = snapshot["seq"].as_i64().unwrap();

    // A checkout reaches the connected client as task_added, with the next number.
    let second = order(&sys, &ada, &b, "Second").await;
    let added = next(&mut watcher).await.unwrap();
    assert_eq!((added["type"].as_str(), added["seq"].as_i64()), (Some("task_added"), Some(seq + 1)));
    assert_eq!(
        (added["task"]["order_id"].as_str(), added["task"]["position"].as_u64()),
        (Some(second.as_str()), Some(1))
    );

    // A second staff socket moves it first; both see the move, the mover gets its ack.
    let mut mover = socket(&sys).await;
    send(&mut mover, json!({"type": "auth", "token": sys.admin})).await;
    assert_eq!(
        next(&mut mover).await.unwrap()["seq"].as_i64(),
        Some(seq + 1),
        "a snapshot as new as the change"
    );
    let version = added["task"]["version"].clone();
    let task_id = added["task"]["id"].clone();
    send(
        &mut mover,
        json!({"type": "move", "request_id": "r1", "task_id": task_id, "position": 0, "version": version}),
    )
    .await;
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(next(&mut mover).await.unwrap());
    }
    let ack = seen.iter().find(|m| m["type"] == "ack").expect("an ack");
    assert_eq!((ack["request_id"].as_str(), ack["seq"].as_i64()), (Some("r1"), Some(seq + 2)));
    assert!(seen.iter().any(|m| m["type"] == "task_moved"), "the mover sees the change too: {seen:?}");
    let moved = next(&mut watcher).await.unwrap();
    assert_eq!(
        (moved["type"].as_str(), moved["seq"].as_i64(), moved["task"]["position"].as_u64()),
        (Some("task_moved"), Some(seq + 2), Some(0))
    );

    // A stale version is an error naming the request, and changes nothing.
    send(
        &mut mover,
        json!({"type": "move", "request_id": "r2", "task_id": task_id, "position": 1, "version": version}),
    )
    .await;
    let error = next(&mut mover).await.unwrap();
    assert_eq!(
        (error["type"].as_str(), error["request_id"].as_str(), error["code"].as_str()),
        (Some("error"), Some("r2"), Some("FAILED_PRECONDITION"))
    );
    assert_eq!(queue(&sys).await["seq"].as_i64(), Some(seq + 2));
}

async fn a_socket_without_a_staff_token_is_closed_with_a_code_that_says_why(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let ada = customer(&sys, "ada").await;
    let mut customer_socket = socket(&sys).await;
    send(&mut customer_socket, json!({"type": "auth", "token": ada})).await;
    assert_eq!(next(&mut customer_socket).await, Err(4403), "a customer is refused");
    let mut forged = socket(&sys).await;
    send(&mut forged, json!({"type": "auth", "token": "not.a.token"})).await;
    assert_eq!(next(&mut forged).await, Err(4401));
    let mut rude = socket(&sys).await;
    send(&mut rude, json!({"type": "move", "request_id": "x", "task_id": "t", "position": 0, "version": 1}))
        .await;
    assert_eq!(next(&mut rude).await, Err(4400), "the first message must authenticate");

    // A page of another site cannot open one (WebSockets know no CORS); the shop's own can.
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!("{}/api/v1/fulfillment/queue/ws", sys.base.replacen("http://", "ws://", 1));
    let mut foreign = url.as_str().into_client_request().unwrap();
    foreign.headers_mut().insert("Origin", "https://elsewhere.example".parse().unwrap());
    match tokio_tungstenite::connect_async(foreign).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(answer)) => assert_eq!(answer.status(), 403),
        other => panic!("a foreign page's socket opened: {:?}", other.map(|(_, answer)| answer.status())),
    }
    let mut own = url.as_str().into_client_request().unwrap();
    let origin = sys.base.clone();
    own.headers_mut().insert("Origin", origin.parse().unwrap());
    assert!(tokio_tungstenite::connect_async(own).await.is_ok(), "the gateway's own pages open one");
}

/// A staff access token signed with the system's own current key, living `ttl` (shorter than
/// users will issue, so the test need not wait a minute).
pub async fn short_lived_token(
    sys: &System,
    role: bookstore_platform::auth::Role,
    ttl: std::time::Duration,
) -> String {
    let users = crate::users_of(sys).await;
    let subject = uuid::Uuid::new_v4().to_string();
    bookstore_users::tokens::access_token(&users.keyring, &subject, &[role], &[], &[], None, ttl).unwrap()
}

async fn a_staff_socket_is_closed_with_4401_when_its_token_expires(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let token =
        short_lived_token(&sys, bookstore_platform::auth::Role::Staff, std::time::Duration::from_secs(2))
            .await;
    let mut staff = socket(&sys).await;
    send(&mut staff, json!({"type": "auth", "token": token})).await;
    assert_eq!(next(&mut staff).await.expect("a snapshot while the token lives")["type"], "snapshot");
    // Nothing else happens on the queue: the next thing the socket hears is its close.
    assert_eq!(next(&mut staff).await, Err(4401), "closed when the token expires");
}

async fn a_socket_resuming_from_its_last_seq_gets_exactly_the_changes_it_missed(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let b = book(&sys, 1).await;
    let ada = customer(&sys, "ada").await;
    for recipient in ["A", "B"] {
        order(&sys, &ada, &b, recipient).await;
    }
    queue_of(&sys, 2).await;
    let mut first = socket(&sys).await;
    send(&mut first, json!({"type": "auth", "token": sys.admin})).await;
    let snapshot = next(&mut first).await.unwrap();
    let seen = snapshot["seq"].as_i64().unwrap();
    drop(first);

    // Missed while away: a move and a claim.
    let tasks = snapshot["tasks"].as_array().unwrap().clone();
    let moved: Value = act(&sys, &tasks[1], "move", json!({"position": 0, "version": tasks[1]["version"]}))
        .await
        .json()
        .await
        .unwrap();
    act(&sys, &tasks[0], "claim", json!({"version": tasks[0]["version"]})).await;

    let mut back = socket(&sys).await;
    send(&mut back, json!({"type": "auth", "token": sys.admin, "last_seq": seen})).await;
    let missed = [next(&mut back).await.unwrap(), next(&mut back).await.unwrap()];
    assert_eq!(
        missed.iter().map(|m| (m["type"].as_str().unwrap(), m["seq"].as_i64().unwrap())).collect::<Vec<_>>(),
        [("task_moved", seen + 1), ("task_updated", seen + 2)],
        "changes only, each once, in order: no snapshot"
    );
    assert_eq!(missed[0]["task"]["position"], moved["task"]["position"]);
    assert_eq!(missed[0]["task"]["shipping_address"]["name"], "B", "with the task's address");
    // And then live.
    let third = order(&sys, &ada, &b, "C").await;
    let added = next(&mut back).await.unwrap();
    assert_eq!(
        (added["type"].as_str(), added["seq"].as_i64(), added["task"]["order_id"].as_str()),
        (Some("task_added"), Some(seen + 3), Some(third.as_str()))
    );

    // A last_seq it cannot serve (from the future here; too old works the same): a snapshot.
    let mut lost = socket(&sys).await;
    send(&mut lost, json!({"type": "auth", "token": sys.admin, "last_seq": seen + 100})).await;
    let fresh = next(&mut lost).await.unwrap();
    assert_eq!((fresh["type"].as_str(), fresh["seq"].as_i64()), (Some("snapshot"), Some(seen + 3)));
}

/// The system with fulfillment on `redis`, changes delivered only by Redis (the poll is ten
/// minutes), and a second replica of fulfillment and the gateway over the same databases, bus
/// and Redis; its gateway's socket URL.
async fn two_replicas(backend: Backend, redis: String) -> Option<(System, bookstore::App, String)> {
    let channel = format!("test-{}", uuid::Uuid::new_v4().simple());
    let sys = System::start_with(backend, false, |c| {
        c.fulfillment.redis_url = Some(redis);
        c.fulfillment.redis_channel = channel;
        // Far longer than the tests wait: only the doorbell through Redis can deliver in time.
        c.fulfillment.change_poll_ms = 600_000;
        // Fifty staff sockets of one test account.
        c.gateway.queue_sockets_per_user = 50;
    })
    .await?;
    let app = sys.app.as_ref().unwrap();
    let mut config = sys.config.clone();
    let port0: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    (config.gateway.http, config.fulfillment.grpc, config.process.admin_http) = (port0, port0, port0);
    config.books.url = Some(format!("http://{}", app.addr("books").unwrap()));
    config.users.url = Some(format!("http://{}", app.addr("users").unwrap()));
    config.orders.url = Some(format!("http://{}", app.addr("orders").unwrap()));
    let replica =
        bookstore::App::start(&["fulfillment", "gateway"], &config, bookstore_platform::service::Mode::Serve)
            .await
            .unwrap();
    let ws = format!("ws://{}/api/v1/fulfillment/queue/ws", replica.addr("gateway").unwrap());
    Some((sys, replica, ws))
}

/// A staff socket at `url`, past its snapshot (which must be at `seq`).
async fn staff_socket(url: &str, sys: &System, seq: &Value) -> Socket {
    let mut socket = tokio_tungstenite::connect_async(url).await.unwrap().0;
    send(&mut socket, json!({"type": "auth", "token": sys.admin})).await;
    let snapshot = next(&mut socket).await.unwrap();
    assert_eq!((snapshot["type"].as_str(), &snapshot["seq"]), (Some("snapshot"), seq));
    socket
}

async fn two_replicas_sharing_redis_show_a_move_through_one_to_sockets_on_the_other_at_once(
    backend: Backend,
) {
    let Some(redis) = bookstore_platform::testing::redis_url_or_skip() else { return };
    let Some((sys, replica, replica_ws)) = two_replicas(backend, redis).await else { return };
    let b = book(&sys, 1).await;
    let ada = customer(&sys, "ada").await;
    for recipient in ["A", "B", "C"] {
        order(&sys, &ada, &b, recipient).await;
    }
    let q = queue_of(&sys, 3).await;
    let mut sockets = Vec::new();
    for _ in 0..50 {
        sockets.push(staff_socket(&replica_ws, &sys, &q["seq"]).await);
    }
    // A move through replica A reaches every socket of replica B, with the same number.
    let last = q["tasks"][2].clone();
    let moved: Value = act(&sys, &last, "move", json!({"position": 0, "version": last["version"]}))
        .await
        .json()
        .await
        .unwrap();
    for socket in &mut sockets {
        let change = next(socket).await.unwrap();
        assert_eq!((change["type"].as_str(), &change["seq"]), (Some("task_moved"), &moved["seq"]));
        assert_eq!(change["task"]["id"], last["id"]);
    }
    replica.stop_background();
}

async fn a_redis_restart_mid_stream_loses_no_change(backend: Backend) {
    let Some(mut redis) = bookstore_platform::testing::RedisNode::start_or_skip().await else { return };
    let Some((sys, replica, replica_ws)) = two_replicas(backend, redis.url()).await else { return };
    let b = book(&sys, 1).await;
    let ada = customer(&sys, "ada").await;
    for recipient in ["A", "B"] {
        order(&sys, &ada, &b, recipient).await;
    }
    let q = queue_of(&sys, 2).await;
    let mut socket = staff_socket(&replica_ws, &sys, &q["seq"]).await;

    // Redis dies; a change is committed through replica A while it is down (its ring is lost).
    redis.kill();
    let last = q["tasks"][1].clone();
    let moved: Value = act(&sys, &last, "move", json!({"position": 0, "version": last["version"]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["kind"], "task_moved", "the queue works without Redis");
    // Redis comes back: replica B subscribes again, reads the history, and the socket gets it.
    redis.start().await.unwrap();
    let change = next(&mut socket).await.unwrap();
    assert_eq!((change["type"].as_str(), &change["seq"]), (Some("task_moved"), &moved["seq"]));
    // And live again through Redis.
    let first = queue(&sys).await["tasks"][1].clone();
    let claimed: Value =
        act(&sys, &first, "claim", json!({"version": first["version"]})).await.json().await.unwrap();
    let change = next(&mut socket).await.unwrap();
    assert_eq!((change["type"].as_str(), &change["seq"]), (Some("task_updated"), &claimed["seq"]));
    replica.stop_background();
}

/// A customer's stream of their orders' events, as a client reads it.
struct OrderEvents {
    body: futures::stream::BoxStream<'static, reqwest::Result<Vec<u8>>>,
    buffer: Vec<u8>,
}

/// One server-sent event: its name, its id, its data.
#[derive(Debug)]
struct SentEvent {
    kind: String,
    id: String,
    data: Value,
}

impl OrderEvents {
    async fn open(sys: &System, token: &str, last_event_id: Option<&str>) -> Self {
        let answer = Self::request(sys, token, last_event_id).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let kind = answer.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        use futures::StreamExt;
        Self {
            body: answer.bytes_stream().map(|chunk| chunk.map(|b| b.to_vec())).boxed(),
            buffer: Vec::new(),
        }
    }

    async fn request(sys: &System, token: &str, last_event_id: Option<&str>) -> reqwest::Response {
        let mut request = sys.http.get(sys.url("/api/v1/orders/events")).bearer_auth(token);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        request.send().await.unwrap()
    }

    /// The next event with data (keep-alive comments skipped), or `None` when the stream ended.
    async fn next(&mut self) -> Option<SentEvent> {
        use futures::StreamExt;
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).unwrap();
                let mut event = SentEvent { kind: "message".into(), id: String::new(), data: Value::Null };
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event.kind = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        event.id = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                event.data = serde_json::from_str(&data).unwrap();
                return Some(event);
            }
            let chunk = tokio::time::timeout(std::time::Duration::from_secs(30), self.body.next())
                .await
                .expect("an event within 30 s");
            match chunk {
                Some(Ok(bytes)) => self.buffer.extend_from_slice(&bytes),
                _ => return None,
            }
        }
    }

    /// The next event, which must be `order` `id` in `status`.
    async fn order(&mut self, id: &str, status: &str) -> SentEvent {
        let event = self.next().await.expect("an event");
        assert_eq!(
            (event.kind.as_str(), event.data["id"].as_str(), event.data["status"].as_str()),
            ("order", Some(id), Some(status)),
            "{event:?}"
        );
        event
    }
}

/// The task of `order_id` on the queue, once it is there.
async fn task_of(sys: &System, order_id: &str) -> Value {
    let limit = std::time::Duration::from_secs(30);
    until(&format!("a task for order {order_id}"), limit, || async {
        queue(sys).await["tasks"].as_array().unwrap().iter().any(|t| t["order_id"] == order_id)
    })
    .await;
    let q = queue(sys).await;
    q["tasks"].as_array().unwrap().iter().find(|t| t["order_id"] == order_id).unwrap().clone()
}

async fn a_customer_hears_each_of_their_orders_move_and_nothing_of_anyone_elses(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let b = book(&sys, 1).await;
    let (ada, bob) = (customer(&sys, "ada").await, customer(&sys, "bob").await);
    let mut events = OrderEvents::open(&sys, &ada, None).await;
    let mine = order(&sys, &ada, &b, "Ada").await;
    let placed = events.order(&mine, "PLACED").await;
    assert!(placed.data.get("shipping_address").is_none(), "no address on the stream: {:?}", placed.data);
    let stamp = placed.id.parse::<i64>().expect("the id is the order's update time in ms");
    assert!(stamp > 1_700_000_000_000, "{stamp}");
    // Bob's order is placed before Ada's is claimed: were it sent to Ada, it would come next.
    let _theirs = order(&sys, &bob, &b, "Bob").await;

    let task = task_of(&sys, &mine).await;
    let claimed: Value =
        act(&sys, &task, "claim", json!({"version": task["version"]})).await.json().await.unwrap();
    events.order(&mine, "FULFILLING").await;
    let packed: Value =
        act(&sys, &claimed["task"], "advance", json!({"version": claimed["task"]["version"]}))
            .await
            .json()
            .await
            .unwrap();
    act(&sys, &packed["task"], "advance", json!({"version": packed["task"]["version"]})).await;
    let shipped = events.order(&mine, "SHIPPED").await;
    assert!(shipped.id.parse::<i64>().unwrap() >= stamp, "ids grow with the order's updates");

    // A stream needs a token.
    let anonymous = sys.http.get(sys.url("/api/v1/orders/events")).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    let body: Value = anonymous.json().await.unwrap();
    assert_eq!(body["code"], "UNAUTHENTICATED", "{body}");
}

async fn an_order_stream_resumed_from_its_last_event_id_replays_what_changed_meanwhile(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let b = book(&sys, 1).await;
    let ada = customer(&sys, "ada").await;
    let mut events = OrderEvents::open(&sys, &ada, None).await;
    let mine = order(&sys, &ada, &b, "Ada").await;
    let last = events.order(&mine, "PLACED").await.id;
    drop(events);

    // While Ada is away, staff claim her order.
    let task = task_of(&sys, &mine).await;
    act(&sys, &task, "claim", json!({"version": task["version"]})).await;
    order_in(&sys, &ada, &mine, "FULFILLING").await;

    // Back with the last id she saw: her order as it is now comes first.
    let mut events = OrderEvents::open(&sys, &ada, Some(&last)).await;
    events.order(&mine, "FULFILLING").await;

    // An id this stream never sent is refused, in the envelope.
    let bad = OrderEvents::request(&sys, &ada, Some("yesterday")).await;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.unwrap();
    assert_eq!(body["code"], "INVALID_ARGUMENT", "{body}");

    // Live connections per user are capped (five, one of them open above).
    let mut more = Vec::new();
    for _ in 0..4 {
        more.push(OrderEvents::open(&sys, &ada, None).await);
    }
    let refused = OrderEvents::request(&sys, &ada, None).await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
}

async fn an_order_stream_ends_with_an_expired_event_when_its_token_expires(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let token =
        short_lived_token(&sys, bookstore_platform::auth::Role::Customer, std::time::Duration::from_secs(2))
            .await;
    let mut events = OrderEvents::open(&sys, &token, None).await;
    let expired = events.next().await.expect("an event before the end");
    assert_eq!((expired.kind.as_str(), expired.data["code"].as_str()), ("expired", Some("UNAUTHENTICATED")));
    assert!(events.next().await.is_none(), "and then the stream ends");
}
