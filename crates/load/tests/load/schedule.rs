//! The schedule over HTTP: the rate is kept on a slow shop, waits behind the in-flight cap are
//! counted in the latencies, and every request that went wrong is counted by its status or by
//! the kind of failure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bookstore_load::engine::{self, Pacing, Plan};
use bookstore_load::input::{MaxInFlight, Pause, Rate, RunLength};
use bookstore_load::record::Failure;
use bookstore_load::scenario::Scenario;
use bookstore_load::shop::{self, Customer, Shop, ShopTarget};

use crate::fake_shop::{ADMIN_PASSWORD, FakeShop};
use crate::prepare::{client, preparation};

fn plan(rate: f64, duration: Duration, max_in_flight: usize, mix: &str) -> Plan {
    Plan {
        rate: Rate::per_second(rate).unwrap(),
        duration: RunLength::new(duration).unwrap(),
        warmup: Pause::default(),
        max_in_flight: MaxInFlight::new(max_in_flight).unwrap(),
        timeout: RunLength::new(Duration::from_secs(10)).unwrap(),
        mix: mix.parse().unwrap(),
        seed: 11,
        pacing: Pacing::Thread,
    }
}

async fn prepared_target(fake: &FakeShop) -> Arc<ShopTarget> {
    let client = client(fake);
    let (shop, _) = shop::prepare(&client, &preparation(4, ADMIN_PASSWORD)).await.unwrap();
    fake.take_seen();
    Arc::new(ShopTarget { client, shop })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_shop_gets_every_request_due_and_the_queued_ones_carry_their_wait() {
    let fake = FakeShop::start(&[]).await;
    let target = prepared_target(&fake).await;
    fake.slow_reads(Duration::from_millis(50));

    // Two in flight at 50 ms each serve 40 a second; 100 a second are due for a second.
    let started = Instant::now();
    let recording = engine::run(target.clone(), &plan(100.0, Duration::from_secs(1), 2, "read=1")).await;
    let read = &recording.scenarios[&Scenario::Read];
    assert_eq!(read.count(), 100, "every request due is recorded");
    assert_eq!(read.succeeded, 100);
    assert_eq!(fake.take_seen().hits["read"], 100, "and every one reached the shop");
    assert!(recording.held_by_cap >= 50, "{} held back by the cap", recording.held_by_cap);
    assert!(started.elapsed() >= Duration::from_secs(2), "sending 100 at 40 a second takes 2.5 s");
    // The last request due (at 1 s) was sent at about 2.5 s: it waited 1.5 s for room.
    let max = read.latency.max();
    assert!(max >= 1_000_000, "max {max} µs should include the wait behind the cap");

    // The same load with room for every request: each takes the shop's 50 ms.
    let recording = engine::run(target, &plan(100.0, Duration::from_secs(1), 1024, "read=1")).await;
    let read = &recording.scenarios[&Scenario::Read];
    assert_eq!(read.count(), 100);
    assert_eq!(recording.held_by_cap, 0);
    let median = read.latency.value_at_quantile(0.5);
    assert!((50_000..500_000).contains(&median), "median {median} µs: the shop's 50 ms, plus noise");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwanted_answers_are_counted_by_status_in_their_scenario() {
    let fake = FakeShop::start(&[]).await;
    let target = prepared_target(&fake).await;
    let plan = plan(400.0, Duration::from_secs(1), 256, "browse=1,book=1,read=1,checkout=1");
    let recording = engine::run(target, &plan).await;
    let seen = fake.take_seen().hits;
    let hits = |what: &str| seen.get(what).copied().unwrap_or(0);

    assert_eq!(recording.total().count(), 400);
    let browse = &recording.scenarios[&Scenario::Browse];
    assert_eq!(browse.statuses.get(&503).copied().unwrap_or(0), hits("catalog page"));
    assert_eq!(browse.rejections(), hits("catalog page"), "a 503 is a rejection");
    assert_eq!(browse.succeeded, hits("list"));
    assert!(hits("catalog page") > 0 && hits("list") > 0, "browsing sends both: {seen:?}");

    let book = &recording.scenarios[&Scenario::Book];
    assert_eq!(book.statuses.get(&500).copied().unwrap_or(0), hits("recommendations"));
    assert_eq!(book.rejections(), 0, "a 500 is an error, not a rejection");
    assert_eq!(book.succeeded, hits("book page"));

    let read = &recording.scenarios[&Scenario::Read];
    assert_eq!((read.errors(), read.succeeded), (0, hits("read")));
    let checkout = &recording.scenarios[&Scenario::Checkout];
    assert_eq!((checkout.errors(), checkout.succeeded), (0, hits("order")), "every order was a 201");
    assert!(recording.total().failures.is_empty(), "{:?}", recording.total().failures);
}

fn shop_of_one_book() -> Shop {
    Shop {
        books: vec!["b1".into()],
        catalog_pages: 1,
        words: vec!["dune".into()],
        customers: vec![Customer { username: "bench0".into(), access_token: "token-bench0".into() }],
        signed_in_at: std::time::Instant::now(),
        token_lifetime: Duration::from_secs(900),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shop_that_is_not_there_is_counted_as_connection_failures() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let address = format!("http://127.0.0.1:{port}").parse().unwrap();
    let client = bookstore_load::client::ShopClient::new(&address, 16, Duration::from_secs(1));
    let target = Arc::new(ShopTarget { client, shop: shop_of_one_book() });
    let recording = engine::run(target, &plan(50.0, Duration::from_millis(400), 16, "read=1")).await;
    let read = &recording.scenarios[&Scenario::Read];
    assert_eq!(read.count(), 20);
    assert_eq!(read.failures.get(&Failure::Connect), Some(&20), "{:?}", read.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_slower_than_the_timeout_is_counted_as_a_timeout() {
    let fake = FakeShop::start(&[]).await;
    fake.slow_reads(Duration::from_secs(30));
    let target = Arc::new(ShopTarget { client: client(&fake), shop: shop_of_one_book() });
    let mut plan = plan(20.0, Duration::from_millis(500), 16, "read=1");
    plan.timeout = RunLength::new(Duration::from_millis(300)).unwrap();
    let recording = engine::run(target, &plan).await;
    let read = &recording.scenarios[&Scenario::Read];
    assert_eq!(read.count(), 10);
    assert_eq!(read.failures.get(&Failure::Timeout), Some(&10), "{:?}", read.failures);
    assert!(read.latency.value_at_quantile(0.5) >= 300_000, "a timeout's latency is at least the timeout");
}
