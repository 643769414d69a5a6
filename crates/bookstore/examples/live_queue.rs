//! The live queue under load, for `bench/live-queue.sh` (not a test: it prints numbers).
//!
//! Against a running shop at `BASE` (its admin's password in `ADMIN_PASSWORD`): opens `SOCKETS`
//! staff sockets, then
//! 1. moves a task `MOVES` times, one after another, and times each move from its request to its
//!    arrival at every socket;
//! 2. moves tasks from four clients at once for `DURATION` seconds, and counts the moves per
//!    second that reached every socket;
//! 3. as the floor, the same fan-out with nothing but Redis: `SOCKETS` subscribers on one
//!    channel of `REDIS_URL`, `MOVES` publishes, each timed to its arrival at every subscriber.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

type Arrivals = Arc<Mutex<HashMap<i64, Vec<Instant>>>>;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> Value {
    let answer = http.post(url).bearer_auth(token).json(&body).send().await.expect("the shop answers");
    answer.json().await.expect("a JSON answer")
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(label: &str, mut latencies: Vec<Duration>) -> (Duration, Duration) {
    latencies.sort_unstable();
    let (p50, p99) = (percentile(&latencies, 0.5), percentile(&latencies, 0.99));
    println!("{label}: {} deliveries, p50 {:.2} ms, p99 {:.2} ms", latencies.len(), ms(p50), ms(p99));
    (p50, p99)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Waits until every one of `count` receivers has recorded `seq`; their arrival times.
async fn all_arrived(arrivals: &Arrivals, seq: i64, count: usize) -> Vec<Instant> {
    let started = Instant::now();
    loop {
        if let Some(times) = arrivals.lock().unwrap().get(&seq).filter(|t| t.len() >= count) {
            return times.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "change {seq} did not reach every receiver");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

#[tokio::main]
async fn main() {
    let base: String = env("BASE", "http://127.0.0.1:8080".to_owned());
    let sockets: usize = env("SOCKETS", 1000);
    let moves: usize = env("MOVES", 200);
    let seconds: u64 = env("DURATION", 10);
    let http = reqwest::Client::new();
    let login = json!({"username": "admin", "password": env("ADMIN_PASSWORD", String::new())});
    let token = post(&http, format!("{base}/api/v1/auth/login"), "", login).await["access_token"]
        .as_str()
        .expect("the admin signs in")
        .to_owned();

    // Twenty orders, so twenty tasks to move.
    let book = json!({"isbn": "9780000000002", "title": "Bench", "author": "Bench", "description": "",
                      "price": {"amount_minor": 100, "currency": "USD"}, "stock": 1000});
    let book =
        post(&http, format!("{base}/api/v1/books"), &token, book).await["id"].as_str().unwrap().to_owned();
    for _ in 0..20 {
        let order = json!({"lines": [{"book_id": book, "quantity": 1}],
                           "shipping_address": {"name": "Bench", "line1": "1 Bench Street"}});
        post(&http, format!("{base}/api/v1/orders"), &token, order).await;
    }
    let queue = loop {
        let queue: Value = http
            .get(format!("{base}/api/v1/fulfillment/queue"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if queue["tasks"].as_array().is_some_and(|t| t.len() >= 20) {
            break queue;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut tasks: Vec<(String, i64)> = queue["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["id"].as_str().unwrap().to_owned(), t["version"].as_i64().unwrap()))
        .collect();

    // The sockets, each recording when each change arrived.
    let arrivals: Arrivals = Arc::default();
    let ws = format!("{}/api/v1/fulfillment/queue/ws", base.replacen("http://", "ws://", 1));
    let opened = futures::stream::iter(0..sockets)
        .map(|_| {
            let (ws, token, arrivals) = (ws.clone(), token.clone(), arrivals.clone());
            async move {
                let (mut socket, _) = tokio_tungstenite::connect_async(&ws).await.expect("a socket");
                socket
                    .send(Message::Text(json!({"type": "auth", "token": token}).to_string().into()))
                    .await
                    .unwrap();
                let first = loop {
                    match socket.next().await.unwrap().unwrap() {
                        Message::Text(text) => break text,
                        _ => continue,
                    }
                };
                assert!(first.contains("snapshot"), "a snapshot first: {first}");
                tokio::spawn(async move {
                    while let Some(Ok(message)) = socket.next().await {
                        let at = Instant::now();
                        if let Message::Text(text) = message
                            && let Some(seq) =
                                serde_json::from_str::<Value>(&text).ok().and_then(|v| v["seq"].as_i64())
                        {
                            arrivals.lock().unwrap().entry(seq).or_default().push(at);
                        }
                    }
                });
            }
        })
        .buffer_unordered(100)
        .count()
        .await;
    println!("{opened} staff sockets open");

    // 1. One move at a time: from the request to every socket.
    let mut latencies = Vec::with_capacity(moves * sockets);
    let mut acks = Vec::with_capacity(moves);
    for _ in 0..moves {
        let (id, version) = tasks.pop().unwrap();
        let sent = Instant::now();
        let url = format!("{base}/api/v1/fulfillment/tasks/{id}/move");
        let change = post(&http, url, &token, json!({"position": 0, "version": version})).await;
        acks.push(sent.elapsed());
        let seq = change["seq"].as_i64().expect("the move is acknowledged");
        tasks.insert(0, (id, change["task"]["version"].as_i64().unwrap()));
        latencies.extend(all_arrived(&arrivals, seq, sockets).await.into_iter().map(|at| at - sent));
    }
    report("move acknowledged (REST)", acks);
    let (shop50, shop99) = report(&format!("move → every one of {sockets} sockets"), latencies);

    // 2. Four movers at once, each with tasks of its own.
    let per_mover = tasks.len() / 4;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let movers = (0..4).map(|m| {
        let mut mine: Vec<(String, i64)> = tasks[m * per_mover..(m + 1) * per_mover].to_vec();
        let (http, base, token) = (http.clone(), base.clone(), token.clone());
        async move {
            let mut last = 0;
            let mut done = 0;
            while Instant::now() < deadline {
                let (id, version) = mine.remove(0);
                let url = format!("{base}/api/v1/fulfillment/tasks/{id}/move");
                let change = post(&http, url, &token, json!({"position": 0, "version": version})).await;
                mine.push((id, change["task"]["version"].as_i64().expect("no conflict between movers")));
                last = last.max(change["seq"].as_i64().unwrap());
                done += 1;
            }
            (done, last)
        }
    });
    let started = Instant::now();
    let results = futures::future::join_all(movers).await;
    let last = results.iter().map(|r| r.1).max().unwrap();
    all_arrived(&arrivals, last, sockets).await;
    let elapsed = started.elapsed().as_secs_f64();
    let total: usize = results.iter().map(|r| r.0).sum();
    println!(
        "sustained: {:.0} moves/s, each to {sockets} sockets ({:.0} deliveries/s)",
        total as f64 / elapsed,
        (total * sockets) as f64 / elapsed
    );

    // 3. The floor: the same fan-out through bare Redis pub/sub.
    let redis_url: String = env("REDIS_URL", "redis://127.0.0.1:6379".to_owned());
    let client = redis::Client::open(redis_url).unwrap();
    let channel = format!("bench-{}", std::process::id());
    let heard: Arrivals = Arc::default();
    for _ in 0..sockets {
        let mut pubsub = client.get_async_pubsub().await.expect("a Redis subscriber");
        pubsub.subscribe(&channel).await.unwrap();
        let heard = heard.clone();
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let at = Instant::now();
                if let Ok(n) = message.get_payload::<i64>() {
                    heard.lock().unwrap().entry(n).or_default().push(at);
                }
            }
        });
    }
    let mut publisher = client.get_multiplexed_async_connection().await.unwrap();
    let mut floor = Vec::with_capacity(moves * sockets);
    for n in 0..moves as i64 {
        let sent = Instant::now();
        let _: i64 = redis::cmd("PUBLISH").arg(&channel).arg(n).query_async(&mut publisher).await.unwrap();
        floor.extend(all_arrived(&heard, n, sockets).await.into_iter().map(|at| at - sent));
    }
    let (redis50, redis99) = report(&format!("bare Redis PUBLISH → {sockets} subscribers"), floor);
    println!(
        "shop / bare Redis: p50 {:.1}x, p99 {:.1}x",
        shop50.as_secs_f64() / redis50.as_secs_f64(),
        shop99.as_secs_f64() / redis99.as_secs_f64()
    );
}
