//! From `up` to `serve`: the embedded SQLite databases move to PostgreSQL while the shop takes
//! orders, and once more after it stops; the shop on PostgreSQL then has every order, and every
//! order's event reaches fulfillment exactly once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bookstore_platform::db::Backend;
use bookstore_platform::testing::TestDatabase;
use reqwest::StatusCode;

use crate::{System, get_json, post_json, shipping_address, until};

/// Places orders of one copy of the first book until `stop`; their ids in `placed`.
async fn keep_ordering(
    http: reqwest::Client,
    base: String,
    token: String,
    placed: Arc<Mutex<Vec<String>>>,
    stop: tokio_util::sync::CancellationToken,
) {
    let books = get_json(&http, &format!("{base}/api/v1/books"), &token).await;
    let book = books["items"][0]["id"].as_str().unwrap().to_owned();
    while !stop.is_cancelled() {
        let body = serde_json::json!({"lines": [{"book_id": book, "quantity": 1}], "shipping_address": shipping_address()});
        let order = post_json(&http, &format!("{base}/api/v1/orders"), &token, &body).await;
        assert_eq!(order["status"], "PLACED", "{order}");
        placed.lock().unwrap().push(order["id"].as_str().unwrap().to_owned());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_from_up_to_postgresql_mid_traffic_loses_no_order_and_applies_each_event_once() {
    let mut targets = Vec::new();
    for _ in 0..6 {
        let Some(db) = TestDatabase::new(Backend::Postgres).await else { return };
        targets.push(db);
    }
    let Some(mut up) = System::start(Backend::Sqlite, true).await else { return };
    let key = up.config.process.master_key.clone().unwrap();
    let point = |c: &mut bookstore::Config| {
        c.books.database_url = Some(targets[0].url.clone());
        c.users.database_url = Some(targets[1].url.clone());
        c.orders.database_url = Some(targets[2].url.clone());
        c.fulfillment.database_url = Some(targets[3].url.clone());
        c.recommendations.database_url = Some(targets[4].url.clone());
        // The event log moves too: what was not yet consumed is consumed after the move.
        c.process.event_log_url = Some(targets[5].url.clone());
        c.process.amqp_url = None;
        c.process.master_key = Some(key.clone());
    };
    let mut to = bookstore::Config::default();
    point(&mut to);

    let placed = Arc::new(Mutex::new(Vec::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let ordering = tokio::spawn(keep_ordering(
        up.http.clone(),
        up.base.clone(),
        up.admin.clone(),
        placed.clone(),
        stop.clone(),
    ));
    until("a few orders", Duration::from_secs(30), || async { placed.lock().unwrap().len() >= 3 }).await;
    let first = bookstore::move_data::move_data(&up.config, &to).await.unwrap();
    assert!(first.iter().all(|l| l.ends_with("verified")), "{first:?}");
    let moved_at = placed.lock().unwrap().len();
    until("orders after the first pass", Duration::from_secs(30), || async {
        placed.lock().unwrap().len() >= moved_at + 3
    })
    .await;
    stop.cancel();
    ordering.await.unwrap();
    // `up` stops; the last pass carries what changed since the first.
    let app = up.app.take().unwrap();
    app.shutdown_token().cancel();
    app.wait().await.unwrap();
    let last = bookstore::move_data::move_data(&up.config, &to).await.unwrap();
    assert_eq!(last.len(), 6, "five services and the event log: {last:?}");
    let again = bookstore::move_data::move_data(&up.config, &to).await.unwrap();
    assert!(
        again.iter().all(|l| l.contains("(0 removed)")),
        "a pass over equal data changes nothing: {again:?}"
    );

    let serve = System::start_with(Backend::Postgres, false, point).await.unwrap();
    let ids = placed.lock().unwrap().clone();
    for id in &ids {
        let answer = serve
            .http
            .get(serve.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(&serve.admin)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), StatusCode::OK, "order {id} moved");
    }
    // Each order's OrderPlaced reached fulfillment once: one task per order, none twice.
    until("a task for every order", Duration::from_secs(30), || async {
        let queue = get_json(&serve.http, &serve.url("/api/v1/fulfillment/queue"), &serve.admin).await;
        queue["tasks"].as_array().map(Vec::len) == Some(ids.len())
    })
    .await;
    let queue = get_json(&serve.http, &serve.url("/api/v1/fulfillment/queue"), &serve.admin).await;
    let mut orders: Vec<&str> =
        queue["tasks"].as_array().unwrap().iter().map(|t| t["order_id"].as_str().unwrap()).collect();
    orders.sort();
    let mut expected: Vec<&str> = ids.iter().map(String::as_str).collect();
    expected.sort();
    assert_eq!(orders, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_rabbitmq_is_refused_while_the_event_log_holds_unconsumed_events() {
    let Some(amqp) = bookstore_platform::testing::amqp_url_or_skip() else { return };
    let Some(target) = TestDatabase::new(Backend::Postgres).await else { return };
    let Some(mut up) = System::start(Backend::Sqlite, false).await else { return };
    let app = up.app.take().unwrap();
    app.shutdown_token().cancel();
    app.wait().await.unwrap();
    // Published after every consumer stopped: nobody has read it.
    let (bus, db) = bookstore::bus(&up.config).await.unwrap();
    let event = bookstore_platform::events::Event {
        id: "late".into(),
        event_type: "OrderPlaced".into(),
        body: vec![],
    };
    bus.publish(&[event]).await.unwrap();
    db.unwrap().close().await;
    let mut to = bookstore::Config::default();
    to.books.database_url = Some(target.url.clone());
    to.process.amqp_url = Some(amqp);
    let refused = bookstore::move_data::move_data(&up.config, &to).await.unwrap_err();
    assert!(format!("{refused:#}").contains("has not read the whole event log"), "{refused:#}");
    let db = bookstore_platform::db::Database::connect(&target.url, &Default::default()).await.unwrap();
    let tables: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema()",
    )
    .fetch_one(db.pool())
    .await
    .unwrap();
    assert_eq!(tables, 0, "refused before anything was written");
}
