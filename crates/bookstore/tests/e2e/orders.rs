//! Checkout through the gateway: the saga over books' reservations, idempotency keys, the order
//! lifecycle, and the events written with each change.

use futures::StreamExt;
use prost::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

use bookstore_platform::backend_tests;
use bookstore_platform::db::Backend;

use crate::{System, book_json, login};

backend_tests!(
    a_checkout_prices_from_the_catalog_and_sells_the_stock,
    an_oversold_basket_is_409_with_its_lines_and_holds_nothing,
    a_retried_checkout_with_the_same_key_places_one_order,
    two_hundred_keys_sent_twenty_times_at_once_make_two_hundred_orders,
    two_thousand_concurrent_checkouts_never_oversell,
    customers_see_only_their_own_orders_and_staff_see_all,
    orders_move_only_along_their_lifecycle,
    every_change_writes_its_event_in_the_same_transaction,
    an_event_carries_the_trace_of_the_request_that_caused_it,
    an_order_ships_to_the_address_given_else_the_accounts_and_without_either_is_400,
    no_address_or_name_is_stored_or_published_in_plaintext,
);

/// The address every test customer's account carries, so a checkout without one ships there.
const ACCOUNT_ADDRESS: &str = "7 Account Road\nFallback City";

/// A basket: (book id, quantity) per line.
type Basket = Vec<(String, i64)>;

const PASSWORD: &str = "velvet lantern orbit crumble";

/// A book with `stock` units at `price`, created by the admin; returns its id.
async fn book(sys: &System, n: u32, price: i64, stock: i64) -> String {
    let mut body = book_json(n, &format!("Book {n}"));
    body["price"]["amount_minor"] = json!(price);
    body["stock"] = json!(stock);
    let created: Value = sys
        .http
        .post(sys.url("/api/v1/books"))
        .bearer_auth(&sys.admin)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    created["id"].as_str().unwrap().to_owned()
}

async fn customer(sys: &System, name: &str) -> String {
    let response = sys
        .http
        .post(sys.url("/api/v1/auth/register"))
        .json(&json!({
            "username": name,
            "email": format!("{name}@example.com"),
            "password": PASSWORD,
            "full_name": name,
            "address": ACCOUNT_ADDRESS
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    login(&sys.http, &sys.base, name, PASSWORD).await
}

async fn checkout(sys: &System, token: &str, lines: Value, key: Option<&str>) -> reqwest::Response {
    let mut request =
        sys.http.post(sys.url("/api/v1/orders")).bearer_auth(token).json(&json!({"lines": lines}));
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.unwrap()
}

async fn units(sys: &System, id: &str) -> (i64, i64, i64) {
    let b: Value =
        sys.http.get(sys.url(&format!("/api/v1/books/{id}"))).send().await.unwrap().json().await.unwrap();
    (b["stock"].as_i64().unwrap(), b["reserved"].as_i64().unwrap(), b["sold"].as_i64().unwrap())
}

async fn a_checkout_prices_from_the_catalog_and_sells_the_stock(backend: Backend) {
    let Some(sys) = System::start_with(backend, false, |c| c.books.cache_ttl_ms = 0).await else { return };
    let a = book(&sys, 1, 1999, 5).await;
    let b = book(&sys, 2, 500, 5).await;
    let ada = customer(&sys, "ada").await;
    let response =
        checkout(&sys, &ada, json!([{"book_id": a, "quantity": 2}, {"book_id": b, "quantity": 1}]), None)
            .await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let order: Value = response.json().await.unwrap();
    assert_eq!(order["status"], "PLACED");
    assert_eq!(order["total"], json!({"amount_minor": 4498, "currency": "USD"}));
    let line_a = order["lines"].as_array().unwrap().iter().find(|l| l["book_id"] == a.as_str()).unwrap();
    assert_eq!(line_a["unit_price"]["amount_minor"], 1999);
    assert_eq!(line_a["title"], "Book 1");
    assert_eq!(units(&sys, &a).await, (3, 0, 2), "reserved, then confirmed as sold");
    assert_eq!(units(&sys, &b).await, (4, 0, 1));

    let fetched: Value = sys
        .http
        .get(sys.url(&format!("/api/v1/orders/{}", order["id"].as_str().unwrap())))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched, order);

    // The client cannot set a price: unknown fields are refused.
    let priced = checkout(&sys, &ada, json!([{"book_id": a, "quantity": 1, "unit_price": 1}]), None).await;
    assert_eq!(priced.status(), StatusCode::BAD_REQUEST);
    let anonymous = sys
        .http
        .post(sys.url("/api/v1/orders"))
        .json(&json!({"lines": [{"book_id": a, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
}

async fn an_oversold_basket_is_409_with_its_lines_and_holds_nothing(backend: Backend) {
    let Some(sys) = System::start_with(backend, false, |c| c.books.cache_ttl_ms = 0).await else { return };
    let a = book(&sys, 1, 1000, 5).await;
    let b = book(&sys, 2, 1000, 1).await;
    let ada = customer(&sys, "ada").await;
    let response = checkout(&sys, &ada, json!([{"book_id": a, "quantity": 2}, {"book_id": b, "quantity": 3}, {"book_id": "nope", "quantity": 1}]), None).await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], "FAILED_PRECONDITION");
    let failed = body["details"].as_array().expect("the failed lines");
    assert_eq!(failed.len(), 2);
    assert!(failed.iter().any(|f| f["book_id"] == b.as_str() && f["available"] == 1 && f["requested"] == 3));
    assert!(failed.iter().any(|f| f["book_id"] == "nope" && f["reason"] == "no such book"));
    assert_eq!(units(&sys, &a).await, (5, 0, 0), "nothing held");
    let mine: Value =
        sys.http.get(sys.url("/api/v1/orders")).bearer_auth(&ada).send().await.unwrap().json().await.unwrap();
    assert_eq!(mine["total"], 0, "no order");
}

async fn a_retried_checkout_with_the_same_key_places_one_order(backend: Backend) {
    let Some(sys) = System::start_with(backend, false, |c| c.books.cache_ttl_ms = 0).await else { return };
    let a = book(&sys, 1, 1000, 10).await;
    let ada = customer(&sys, "ada").await;
    let basket = json!([{"book_id": a, "quantity": 2}]);
    let first = checkout(&sys, &ada, basket.clone(), Some("key-1")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = checkout(&sys, &ada, basket.clone(), Some("key-1")).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again: Value = again.json().await.unwrap();
    assert_eq!(first, again, "the same answer");
    assert_eq!(units(&sys, &a).await, (8, 0, 2), "sold once");

    let other_body = checkout(&sys, &ada, json!([{"book_id": a, "quantity": 3}]), Some("key-1")).await;
    assert_eq!(other_body.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Keys are per user: someone else's key-1 is a different order.
    let bob = customer(&sys, "bob").await;
    let bobs = checkout(&sys, &bob, basket.clone(), Some("key-1")).await;
    assert_eq!(bobs.status(), StatusCode::CREATED);
    assert_ne!(bobs.json::<Value>().await.unwrap()["id"], first["id"]);

    // A failed attempt does not burn its key: after a restock, the retry goes through.
    let big = json!([{"book_id": a, "quantity": 9}]);
    assert_eq!(checkout(&sys, &ada, big.clone(), Some("key-2")).await.status(), StatusCode::CONFLICT);
    sys.http
        .post(sys.url(&format!("/api/v1/books/{a}/stock")))
        .bearer_auth(&sys.admin)
        .json(&json!({"delta": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(checkout(&sys, &ada, big, Some("key-2")).await.status(), StatusCode::CREATED);
}

async fn two_hundred_keys_sent_twenty_times_at_once_make_two_hundred_orders(backend: Backend) {
    // Every checkout of one book waits on that book's row; on a loaded machine the last of
    // thousands can take longer than the default 10 s deadline, which is not what this tests.
    let Some(sys) = System::start_with(backend, false, |c| {
        c.books.cache_ttl_ms = 0;
        c.process.request_timeout_ms = 120_000;
    })
    .await
    else {
        return;
    };
    let a = book(&sys, 1, 100, 100_000).await;
    let ada = customer(&sys, "ada").await;
    let requests: Vec<(usize, u32)> = (0..20).flat_map(|copy| (0..200).map(move |key| (key, copy))).collect();
    let results: Vec<(usize, StatusCode, Option<String>)> = futures::stream::iter(requests)
        .map(|(key, _)| {
            let (sys, ada, a) = (&sys, &ada, &a);
            async move {
                let response =
                    checkout(sys, ada, json!([{"book_id": a, "quantity": 1}]), Some(&format!("k-{key}")))
                        .await;
                let status = response.status();
                let id = if status == StatusCode::CREATED {
                    response.json::<Value>().await.unwrap()["id"].as_str().map(str::to_owned)
                } else {
                    None
                };
                (key, status, id)
            }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let mut per_key: std::collections::HashMap<usize, std::collections::HashSet<String>> = Default::default();
    for (key, status, id) in results {
        match status {
            StatusCode::CREATED => {
                per_key.entry(key).or_default().insert(id.unwrap());
            }
            StatusCode::CONFLICT => {} // the same key was in flight
            other => panic!("unexpected {other}"),
        }
    }
    assert!(per_key.values().all(|ids| ids.len() == 1), "one order per key");
    let all: Value = sys
        .http
        .get(sys.url("/api/v1/orders?limit=1"))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["total"], 200, "exactly 200 orders");
    assert_eq!(units(&sys, &a).await.2, 200, "200 units sold");
}

async fn two_thousand_concurrent_checkouts_never_oversell(backend: Backend) {
    // Every checkout of one book waits on that book's row; on a loaded machine the last of
    // thousands can take longer than the default 10 s deadline, which is not what this tests.
    let Some(sys) = System::start_with(backend, false, |c| {
        c.books.cache_ttl_ms = 0;
        c.process.request_timeout_ms = 120_000;
    })
    .await
    else {
        return;
    };
    let mut books = Vec::new();
    for n in 0..10 {
        books.push(book(&sys, n, 100 + i64::from(n), 100).await);
    }
    let ada = customer(&sys, "ada").await;
    // A fixed pseudo-random sequence, so a failure can be replayed.
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let baskets: Vec<Basket> = (0..2000)
        .map(|_| {
            let count = 1 + next(3) as usize;
            let mut picked: Vec<usize> = Vec::new();
            while picked.len() < count {
                let i = next(10) as usize;
                if !picked.contains(&i) {
                    picked.push(i);
                }
            }
            picked.into_iter().map(|i| (books[i].clone(), 1 + next(3) as i64)).collect()
        })
        .collect();
    let results: Vec<(Basket, StatusCode, Value)> = futures::stream::iter(baskets)
        .map(|basket| {
            let (sys, ada) = (&sys, &ada);
            async move {
                let lines: Vec<Value> =
                    basket.iter().map(|(b, q)| json!({"book_id": b, "quantity": q})).collect();
                let response = checkout(sys, ada, Value::Array(lines), None).await;
                let status = response.status();
                (basket, status, response.json::<Value>().await.unwrap())
            }
        })
        .buffer_unordered(128)
        .collect()
        .await;
    let mut taken = std::collections::HashMap::<String, i64>::new();
    let mut placed = 0;
    for (basket, status, body) in &results {
        match *status {
            StatusCode::CREATED => {
                placed += 1;
                assert_eq!(body["status"], "PLACED");
                for (b, q) in basket {
                    *taken.entry(b.clone()).or_default() += q;
                }
            }
            StatusCode::CONFLICT => assert_eq!(body["code"], "FAILED_PRECONDITION", "{body}"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert!(placed > 0 && placed < 2000, "some sold, some refused: {placed}");
    for id in &books {
        let (stock, reserved, sold) = units(&sys, id).await;
        assert!(stock >= 0, "never negative");
        assert_eq!(stock + reserved + sold, 100, "available + reserved + sold is constant");
        assert_eq!(reserved, 0, "every 201 was confirmed, every failure held nothing");
        assert_eq!(sold, taken.get(id).copied().unwrap_or(0), "sold is exactly what the 201s took");
    }
}

async fn customers_see_only_their_own_orders_and_staff_see_all(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let a = book(&sys, 1, 1000, 10).await;
    let ada = customer(&sys, "ada").await;
    let eve = customer(&sys, "eve").await;
    let order: Value =
        checkout(&sys, &ada, json!([{"book_id": a, "quantity": 1}]), None).await.json().await.unwrap();
    let url = sys.url(&format!("/api/v1/orders/{}", order["id"].as_str().unwrap()));
    assert_eq!(sys.http.get(&url).bearer_auth(&eve).send().await.unwrap().status(), StatusCode::NOT_FOUND);
    assert_eq!(
        sys.http.post(format!("{url}/cancel")).bearer_auth(&eve).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let eves: Value =
        sys.http.get(sys.url("/api/v1/orders")).bearer_auth(&eve).send().await.unwrap().json().await.unwrap();
    assert_eq!(eves["total"], 0);
    let filter =
        sys.http.get(sys.url("/api/v1/orders?status=PLACED")).bearer_auth(&eve).send().await.unwrap();
    assert_eq!(filter.status(), StatusCode::FORBIDDEN);
    let staff: Value = sys
        .http
        .get(sys.url("/api/v1/orders?status=PLACED"))
        .bearer_auth(&sys.admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(staff["total"], 1);
    assert_eq!(staff["items"][0]["id"], order["id"]);
    assert_eq!(sys.http.get(&url).bearer_auth(&sys.admin).send().await.unwrap().status(), StatusCode::OK);
}

async fn orders_move_only_along_their_lifecycle(backend: Backend) {
    let Some(sys) = System::start_with(backend, false, |c| c.books.cache_ttl_ms = 0).await else { return };
    let a = book(&sys, 1, 1000, 10).await;
    let ada = customer(&sys, "ada").await;
    let order: Value =
        checkout(&sys, &ada, json!([{"book_id": a, "quantity": 3}]), None).await.json().await.unwrap();
    let url = sys.url(&format!("/api/v1/orders/{}", order["id"].as_str().unwrap()));
    let step = |token: &str, status: &str| {
        sys.http
            .post(format!("{url}/status"))
            .bearer_auth(token.to_owned())
            .json(&json!({"status": status}))
            .send()
    };

    assert_eq!(
        step(&ada, "FULFILLING").await.unwrap().status(),
        StatusCode::FORBIDDEN,
        "customers do not ship"
    );
    assert_eq!(step(&sys.admin, "SHIPPED").await.unwrap().status(), StatusCode::CONFLICT, "no skipping");
    assert_eq!(step(&sys.admin, "LOST").await.unwrap().status(), StatusCode::BAD_REQUEST);
    for status in ["FULFILLING", "SHIPPED", "DELIVERED"] {
        let moved: Value = step(&sys.admin, status).await.unwrap().json().await.unwrap();
        assert_eq!(moved["status"], status);
    }
    let late_cancel = sys.http.post(format!("{url}/cancel")).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(late_cancel.status(), StatusCode::CONFLICT);

    // A PLACED order cancelled by its owner puts its books back.
    let second: Value =
        checkout(&sys, &ada, json!([{"book_id": a, "quantity": 2}]), None).await.json().await.unwrap();
    assert_eq!(units(&sys, &a).await, (5, 0, 5));
    let cancel_url = sys.url(&format!("/api/v1/orders/{}/cancel", second["id"].as_str().unwrap()));
    let cancelled: Value =
        sys.http.post(&cancel_url).bearer_auth(&ada).send().await.unwrap().json().await.unwrap();
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(units(&sys, &a).await, (7, 0, 3));
    assert_eq!(
        sys.http.post(&cancel_url).bearer_auth(&ada).send().await.unwrap().status(),
        StatusCode::CONFLICT
    );
}

async fn every_change_writes_its_event_in_the_same_transaction(backend: Backend) {
    use bookstore_api::orders::v1 as pb;
    use bookstore_platform::events::{Bus, Event, RabbitBus};
    let Some(sys) = System::start(backend, false).await else { return };
    // With RabbitMQ, a queue of our own sees what the relay publishes from now on.
    let rabbit = sys.config.process.amqp_url.clone().map(|url| {
        let mut bus = RabbitBus::new(url).expect("a broker URL");
        bus.topics = vec!["OrderPlaced".into(), "OrderCancelled".into()];
        bus.namespace.clone_from(&sys.config.process.amqp_namespace);
        std::sync::Arc::new(bus)
    });
    let consumer = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    if let Some(rabbit) = &rabbit {
        rabbit.declare(&consumer).await.unwrap();
    }
    let a = book(&sys, 1, 1000, 10).await;
    let ada = customer(&sys, "ada").await;
    let placed: Value =
        checkout(&sys, &ada, json!([{"book_id": a, "quantity": 1}]), None).await.json().await.unwrap();
    let id = placed["id"].as_str().unwrap().to_owned();
    sys.http.post(sys.url(&format!("/api/v1/orders/{id}/cancel"))).bearer_auth(&ada).send().await.unwrap();

    let db =
        bookstore_platform::db::Database::connect(&sys.orders_db.url, &Default::default()).await.unwrap();
    let rows: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT event_type, payload FROM outbox ORDER BY created_at, id")
            .fetch_all(db.pool())
            .await
            .unwrap();
    let types: Vec<&str> = rows.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(types, ["OrderPlaced", "OrderCancelled"]);
    let envelope = pb::EventEnvelope::decode(rows[0].1.as_slice()).unwrap();
    assert_eq!(envelope.r#type, "OrderPlaced");
    assert!(!envelope.id.is_empty() && envelope.time.is_some());
    let event = pb::OrderPlaced::decode(envelope.payload.as_slice()).unwrap();
    assert_eq!(event.order.unwrap().id, id);

    // The relay publishes them to the bus, once each, and marks them.
    let published: Vec<String> = match &rabbit {
        None => {
            let log =
                bookstore_platform::db::Database::connect(&sys.config.event_log_url(), &Default::default())
                    .await
                    .unwrap();
            let mut published = Vec::new();
            for _ in 0..100 {
                // Orders' events (fulfillment publishes on the same log).
                published = sqlx::query_scalar(
                    "SELECT event_type FROM event_log WHERE event_type LIKE 'Order%' ORDER BY seq",
                )
                .fetch_all(log.pool())
                .await
                .unwrap();
                if published.len() >= 2 {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            published
        }
        Some(rabbit) => {
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let stop = tokio_util::sync::CancellationToken::new();
            let (seen2, stop2, order_id) = (seen.clone(), stop.clone(), id.clone());
            let bus = Bus::Rabbit(rabbit.clone());
            let run = bus.consume(
                &consumer,
                move |e: Event| {
                    let (seen, stop, order_id) = (seen2.clone(), stop2.clone(), order_id.clone());
                    async move {
                        let envelope = pb::EventEnvelope::decode(e.body.as_slice())?;
                        let order = match envelope.r#type.as_str() {
                            "OrderPlaced" => pb::OrderPlaced::decode(envelope.payload.as_slice())?.order,
                            "OrderCancelled" => {
                                pb::OrderCancelled::decode(envelope.payload.as_slice())?.order
                            }
                            _ => None,
                        };
                        if order.is_some_and(|o| o.id == order_id) {
                            let mut seen = seen.lock().unwrap();
                            seen.push(envelope.r#type);
                            if seen.len() >= 2 {
                                stop.cancel();
                            }
                        }
                        Ok(())
                    }
                },
                stop.clone(),
            );
            tokio::time::timeout(std::time::Duration::from_secs(20), run)
                .await
                .expect("events arrived")
                .unwrap();
            rabbit.delete_queues(&consumer).await.unwrap();
            seen.lock().unwrap().clone()
        }
    };
    assert_eq!(published, ["OrderPlaced", "OrderCancelled"]);
    let unpublished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(unpublished, 0);
}

async fn an_event_carries_the_trace_of_the_request_that_caused_it(backend: Backend) {
    use bookstore_api::orders::v1 as pb;
    let Some(sys) = System::start(backend, false).await else { return };
    let a = book(&sys, 1, 1000, 10).await;
    let ada = customer(&sys, "ada").await;
    let caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let placed = sys
        .http
        .post(sys.url("/api/v1/orders"))
        .bearer_auth(&ada)
        .header("traceparent", caller)
        .json(&json!({"lines": [{"book_id": a, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), StatusCode::CREATED);
    // Without a traceparent, the gateway starts a trace of its own.
    checkout(&sys, &ada, json!([{"book_id": a, "quantity": 1}]), None).await;

    let db =
        bookstore_platform::db::Database::connect(&sys.orders_db.url, &Default::default()).await.unwrap();
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar("SELECT payload FROM outbox ORDER BY created_at, id")
        .fetch_all(db.pool())
        .await
        .unwrap();
    // 00-<trace id>-<span id>-<flags>
    let traces: Vec<Vec<String>> = payloads
        .iter()
        .map(|p| {
            let envelope = pb::EventEnvelope::decode(p.as_slice()).unwrap();
            let parts: Vec<String> = envelope.traceparent.split('-').map(str::to_owned).collect();
            assert_eq!(parts.len(), 4, "every event has a trace context: {:?}", envelope.traceparent);
            parts
        })
        .collect();
    let caller: Vec<&str> = caller.split('-').collect();
    assert_eq!(traces[0][1], caller[1], "the caller's trace continues into the event");
    assert_ne!(traces[0][2], caller[2], "as a hop of its own");
    assert_eq!(traces[0][3], "01", "sampled, as the caller asked");
    assert_ne!(traces[1][1], caller[1], "a request without one starts a new trace");
}

async fn an_order_ships_to_the_address_given_else_the_accounts_and_without_either_is_400(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let a = book(&sys, 1, 1000, 10).await;
    let ada = customer(&sys, "ada").await;
    let given = json!({"name": "Ada Lovelace", "line1": "12 St James's Square", "city": "London",
                       "postal_code": "SW1Y 4JH", "country": "gb"});
    let placed: Value = sys
        .http
        .post(sys.url("/api/v1/orders"))
        .bearer_auth(&ada)
        .json(&json!({"lines": [{"book_id": a, "quantity": 1}], "shipping_address": given}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let expected = json!({"name": "Ada Lovelace", "line1": "12 St James's Square", "line2": "",
                          "city": "London", "postal_code": "SW1Y 4JH", "country": "GB"});
    assert_eq!(placed["shipping_address"], expected);
    let url = sys.url(&format!("/api/v1/orders/{}", placed["id"].as_str().unwrap()));
    let fetched: Value = sys.http.get(&url).bearer_auth(&ada).send().await.unwrap().json().await.unwrap();
    assert_eq!(fetched["shipping_address"], expected, "kept, and read back decrypted");

    // Without one: the account's name and address.
    let fallback: Value =
        checkout(&sys, &ada, json!([{"book_id": a, "quantity": 1}]), None).await.json().await.unwrap();
    assert_eq!(
        fallback["shipping_address"],
        json!({"name": "ada", "line1": "7 Account Road", "line2": "Fallback City", "city": "",
               "postal_code": "", "country": ""})
    );

    // A bad address names its field.
    let bad = sys
        .http
        .post(sys.url("/api/v1/orders"))
        .bearer_auth(&ada)
        .json(&json!({"lines": [{"book_id": a, "quantity": 1}],
                      "shipping_address": {"name": "Ada", "line1": "x", "country": "Great Britain"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    let body: Value = bad.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("shipping_address.country"), "{body}");

    // Neither on the request nor on the account: 400 saying so, and no stock held.
    let nowhere = sys
        .http
        .post(sys.url("/api/v1/auth/register"))
        .json(&json!({"username": "nowhere", "email": "nowhere@example.com", "password": PASSWORD, "full_name": "No Where"}))
        .send()
        .await
        .unwrap();
    assert_eq!(nowhere.status(), StatusCode::ACCEPTED);
    let token = login(&sys.http, &sys.base, "nowhere", PASSWORD).await;
    let refused = checkout(&sys, &token, json!([{"book_id": a, "quantity": 1}]), None).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let body: Value = refused.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("set an address on your account"), "{body}");
    assert_eq!(units(&sys, &a).await.1, 0, "nothing is held for a refused checkout");
}

async fn no_address_or_name_is_stored_or_published_in_plaintext(backend: Backend) {
    let Some(sys) = System::start(backend, false).await else { return };
    let a = book(&sys, 1, 1000, 10).await;
    let ada = customer(&sys, "ada").await;
    let placed = sys
        .http
        .post(sys.url("/api/v1/orders"))
        .bearer_auth(&ada)
        .json(&json!({"lines": [{"book_id": a, "quantity": 1}],
                      "shipping_address": {"name": "Zebedee Quixote", "line1": "99 Xylophone Lane"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(placed.status(), StatusCode::CREATED);
    checkout(&sys, &ada, json!([{"book_id": a, "quantity": 1}]), None).await;

    let secrets: [&[u8]; 4] = [b"Zebedee", b"Xylophone", b"Account Road", b"Fallback City"];
    let leaks = |bytes: &[u8]| secrets.iter().any(|s| bytes.windows(s.len()).any(|w| w == *s));
    let orders =
        bookstore_platform::db::Database::connect(&sys.orders_db.url, &Default::default()).await.unwrap();
    let addresses: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT shipping_address FROM orders").fetch_all(orders.pool()).await.unwrap();
    assert_eq!(addresses.len(), 2);
    assert!(!addresses.iter().any(|a| leaks(a)), "addresses are ciphertext at rest");
    // Every event orders wrote, as it crossed (or will cross) the bus.
    let payloads: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT payload FROM outbox").fetch_all(orders.pool()).await.unwrap();
    assert!(!payloads.is_empty() && !payloads.iter().any(|p| leaks(p)), "no plaintext in events");
    // And on SQLite, nowhere in the database file (or its write-ahead log) at all.
    if let Some(path) = sys.orders_db.url.strip_prefix("sqlite://") {
        for file in [path.to_owned(), format!("{path}-wal")] {
            if let Ok(bytes) = std::fs::read(&file) {
                assert!(!leaks(&bytes), "{file} holds plaintext");
            }
        }
    }
}
