//! The bus, the relay and the inbox, on both backends.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::log::LOG_MIGRATIONS;
use super::outbox::relay_outbox;
use super::*;
use crate::db::{Backend, Database};
use crate::testing::TestDatabase;

/// A RabbitMQ bus for one test, with a consumer name nobody else uses, which is also the
/// only event type its queue is bound to: the exchange is shared with every test running
/// at the same time, and their events must not reach this one.
fn rabbit() -> Option<(RabbitBus, String, String)> {
    let url = crate::testing::amqp_url_or_skip()?;
    let consumer = format!("test-{}", uuid::Uuid::new_v4().simple());
    Some((isolated(&url, &consumer), consumer, url))
}

fn isolated(url: &str, consumer: &str) -> RabbitBus {
    let mut bus = RabbitBus::new(url).expect("a broker URL");
    bus.topics = vec![consumer.to_owned()];
    bus
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_delivers_each_event_and_dead_letters_a_poison_one() {
    let Some((mut bus, consumer, _)) = rabbit() else { return };
    bus.max_attempts = 3;
    let bus = Arc::new(bus);
    bus.declare(&consumer).await.unwrap();
    let ours = |n: usize| Event {
        id: format!("{consumer}-e{n}"),
        event_type: consumer.clone(),
        body: vec![n as u8],
    };
    Bus::Rabbit(bus.clone()).publish(&[ours(1), ours(2), ours(3)]).await.unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let poison_tries = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (seen2, tries2, stop2) = (seen.clone(), poison_tries.clone(), stop.clone());
    let poison = format!("{consumer}-e1");
    let consuming_bus = Bus::Rabbit(bus.clone());
    let run = consuming_bus.consume(
        &consumer,
        move |e: Event| {
            let (seen, tries, stop, poison) = (seen2.clone(), tries2.clone(), stop2.clone(), poison.clone());
            async move {
                if e.id == poison {
                    tries.fetch_add(1, Ordering::SeqCst);
                    anyhow::bail!("poison");
                }
                let mut seen = seen.lock().unwrap();
                seen.push(e.id);
                if seen.len() == 2 && tries.load(Ordering::SeqCst) >= 3 {
                    stop.cancel();
                }
                Ok(())
            }
        },
        stop.clone(),
    );
    // The poison message may still be cycling when the good ones are done; give it time.
    let stopper = {
        let (stop, tries) = (stop.clone(), poison_tries.clone());
        tokio::spawn(async move {
            for _ in 0..200 {
                if tries.load(Ordering::SeqCst) >= 3 {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            stop.cancel();
        })
    };
    tokio::time::timeout(Duration::from_secs(30), run).await.expect("consumer stopped").unwrap();
    stopper.await.unwrap();
    let mut seen = seen.lock().unwrap().clone();
    seen.sort();
    assert_eq!(seen, [format!("{consumer}-e2"), format!("{consumer}-e3")]);
    assert_eq!(poison_tries.load(Ordering::SeqCst), 3, "delivered max_attempts times");
    // Counted (the operator's gauge), then taken.
    for _ in 0..50 {
        if bus.dead_letter_count(&consumer).await.unwrap() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bus.dead_letter_count(&consumer).await.unwrap(), 1, "one dead letter waits");
    let dead = bus.dead_letters(&consumer).await.unwrap();
    assert_eq!(dead.len(), 1, "the poison message is in the dead-letter queue: {dead:?}");
    assert_eq!(dead[0].event.id, format!("{consumer}-e1"));
    assert_eq!(dead[0].event.event_type, consumer, "its type survives the dead-letter queue");
    assert!(dead[0].error.contains("poison"), "the consumer's error is kept: {}", dead[0].error);
    assert_eq!(dead[0].attempts, 3);
    bus.delete_queues(&consumer).await.unwrap();
}

/// A TCP proxy whose connections can be cut, like a broker restart seen from the client.
async fn cuttable_proxy(
    upstream: std::net::SocketAddr,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<u64>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (cut, generation) = tokio::sync::watch::channel(0u64);
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut generation = generation.clone();
            tokio::spawn(async move {
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else { return };
                generation.borrow_and_update();
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                    _ = generation.changed() => {}
                }
            });
        }
    });
    (addr, cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_connection_loss_mid_stream_loses_nothing_and_repeats_no_effect() {
    let Some((_, consumer, url)) = rabbit() else { return };
    let parsed = url::Url::parse(&url).unwrap();
    let upstream = format!("{}:{}", parsed.host_str().unwrap(), parsed.port().unwrap_or(5672));
    let upstream: std::net::SocketAddr = tokio::net::lookup_host(upstream).await.unwrap().next().unwrap();
    let (proxy, cut) = cuttable_proxy(upstream).await;
    let mut via_proxy = parsed.clone();
    via_proxy.set_port(Some(proxy.port())).unwrap();
    via_proxy.set_host(Some("127.0.0.1")).unwrap();
    let consumer_bus = isolated(via_proxy.as_str(), &consumer);
    let publisher = RabbitBus::new(url.clone()).expect("a broker URL");
    each_event_once_across(consumer_bus, publisher, &consumer, || async {
        cut.send_modify(|g| *g += 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rabbitmq_restart_mid_stream_loses_nothing_and_repeats_no_effect() {
    let Some(mut node) = crate::testing::RabbitNode::start_or_skip().await else { return };
    let consumer = format!("test-{}", uuid::Uuid::new_v4().simple());
    let consumer_bus = isolated(&node.url(), &consumer);
    let publisher = RabbitBus::new(node.url()).expect("a broker URL");
    let node = &mut node;
    each_event_once_across(consumer_bus, publisher, &consumer, || async move {
        node.stop();
        node.start().await.expect("restarting the broker");
    })
    .await;
}

/// The bus over TLS, to a broker of the test's own that speaks nothing else and asks for a
/// client certificate: an event goes through; a client that trusts another CA, or shows no
/// certificate, gets no connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_over_tls_verifies_the_broker_and_shows_the_client_certificate() {
    let (certs, strangers) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    crate::tls::dev_certs(certs.path(), &[]).unwrap();
    crate::tls::dev_certs(strangers.path(), &[]).unwrap();
    let Some(node) = crate::testing::RabbitNode::start_tls_or_skip(certs.path()).await else { return };
    let url = |ca: &std::path::Path, client: bool| {
        let mut url = format!("{}?cacertfile={}", node.url(), ca.join("ca.pem").display());
        if client {
            let dir = certs.path().display();
            url.push_str(&format!("&certfile={dir}/server.pem&keyfile={dir}/server-key.pem"));
        }
        url
    };
    let consumer = format!("test-{}", uuid::Uuid::new_v4().simple());
    let bus = Arc::new(isolated(&url(certs.path(), true), &consumer));
    bus.declare(&consumer).await.expect("declaring over TLS");
    let sent = Event { id: format!("{consumer}-1"), event_type: consumer.clone(), body: vec![1] };
    let bus = Bus::Rabbit(bus);
    bus.publish(std::slice::from_ref(&sent)).await.expect("publishing over TLS");
    assert_eq!(collect(&bus, &consumer, 1).await, vec![sent.id]);

    for (what, url) in [
        ("a broker another CA signed", url(strangers.path(), true)),
        ("no client certificate", url(certs.path(), false)),
    ] {
        let mut bus = RabbitBus::new(url).expect("a broker URL");
        bus.timeout = Duration::from_secs(10);
        let opened = bus.within("connecting", bus.open()).await;
        let err = format!("{:#}", opened.err().unwrap_or_else(|| panic!("connected with {what}")));
        // "invalid peer certificate: BadSignature"; "received fatal alert: CertificateRequired".
        // Under TLS 1.3 the broker refuses a missing certificate after the client has finished
        // its half of the handshake: the client reads the alert, or finds the connection reset.
        let refused = err.to_lowercase().contains("certificate")
            || (what == "no client certificate" && err.contains("reset by peer"));
        assert!(refused, "{what}: refused at the handshake: {err}");
    }
}

#[test]
fn a_broker_url_keeps_its_tls_files_out_of_the_amqp_url_and_refuses_what_would_not_be_tls() {
    let (url, tls) = BrokerTls::split(
        "amqps://u:p@mq:5671/%2f?cacertfile=/ca.pem&certfile=/c.pem&keyfile=/k.pem&frame_max=8192",
    )
    .unwrap();
    assert_eq!(url, "amqps://u:p@mq:5671/%2f?frame_max=8192&heartbeat=10");
    let tls = tls.expect("amqps is TLS");
    assert_eq!(tls.ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
    assert_eq!(tls.client, Some(("/c.pem".into(), "/k.pem".into())));
    assert_eq!(
        BrokerTls::split("amqp://mq/%2f?heartbeat=5").unwrap(),
        ("amqp://mq/%2f?heartbeat=5".into(), None)
    );
    assert_eq!(BrokerTls::split("amqps://mq/%2f").unwrap().1, Some(BrokerTls::default()), "system roots");
    for (bad, why) in [
        ("amqp://mq/%2f?cacertfile=/ca.pem", "amqps"),
        ("amqps://mq/%2f?certfile=/c.pem", "together"),
        ("amqps://mq/%2f?verify=verify_none", "verified"),
        ("amqps://mq/%2f?cacertfile=", "empty"),
        ("http://mq/", "amqp"),
    ] {
        let err = BrokerTls::split(bad).unwrap_err().to_string();
        assert!(err.contains(why), "{bad}: {err}");
    }
}

/// A database of a consumer's own: its inbox, and a table of the effects it applied.
async fn effects_database() -> (TestDatabase, Database) {
    let test_db = TestDatabase::sqlite();
    let db = Database::connect(&test_db.url, &Default::default()).await.unwrap();
    for ddl in [
        "CREATE TABLE inbox (consumer TEXT NOT NULL, event_id TEXT NOT NULL, processed_at BIGINT NOT NULL, PRIMARY KEY (consumer, event_id))",
        "CREATE TABLE effects (event_id TEXT NOT NULL)",
    ] {
        sqlx::query(ddl).execute(db.pool()).await.unwrap();
    }
    (test_db, db)
}

/// Publishes 30 events, starts consuming them with an inbox, runs `disrupt` once 10 were
/// handled, publishes 30 more (retrying while the broker is away), and checks that each of
/// the 60 had exactly one effect.
async fn each_event_once_across<D, Fut>(
    consumer_bus: RabbitBus,
    publisher: RabbitBus,
    consumer: &str,
    disrupt: D,
) where
    D: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let consumer_bus = Arc::new(consumer_bus);
    let publisher = Bus::Rabbit(Arc::new(publisher));
    consumer_bus.declare(consumer).await.unwrap();

    let (_test_db, db) = effects_database().await;
    let events: Vec<Event> = (0..60)
        .map(|n| Event { id: format!("{consumer}-{n}"), event_type: consumer.to_owned(), body: vec![] })
        .collect();
    publisher.publish(&events[..30]).await.unwrap();

    let stop = CancellationToken::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let (db2, stop2, handled2) = (db.clone(), stop.clone(), handled.clone());
    let run = tokio::spawn({
        let bus = Bus::Rabbit(consumer_bus.clone());
        let consumer = consumer.to_owned();
        async move {
            bus.consume(
                &consumer,
                move |e: Event| {
                    let (db, stop, handled) = (db2.clone(), stop2.clone(), handled2.clone());
                    async move {
                        if let Some(mut tx) = inbox_begin(&db, "effects", &e.id).await? {
                            sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                                .bind(&e.id)
                                .execute(&mut *tx)
                                .await?;
                            tx.commit().await?;
                        }
                        let count: i64 =
                            sqlx::query_scalar("SELECT COUNT(*) FROM effects").fetch_one(db.pool()).await?;
                        if count >= 60 {
                            stop.cancel();
                        }
                        handled.fetch_add(1, Ordering::SeqCst);
                        Ok(())
                    }
                },
                stop.clone(),
            )
            .await
        }
    });
    // Disrupt while messages are in flight, then publish the rest.
    for _ in 0..500 {
        if handled.load(Ordering::SeqCst) >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    disrupt().await;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(90);
    while let Err(e) = publisher.publish(&events[30..]).await {
        assert!(tokio::time::Instant::now() < give_up, "no publish succeeded for 90 s: {e:#}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    match tokio::time::timeout(Duration::from_secs(90), run).await {
        Ok(finished) => finished.unwrap().expect("the consumer ends cleanly when stopped"),
        Err(_) => {
            let effects: i64 =
                sqlx::query_scalar("SELECT COUNT(*) FROM effects").fetch_one(db.pool()).await.unwrap();
            panic!(
                "the consumer did not finish in 90 s: {} deliveries handled, {effects} of 60 effects",
                handled.load(Ordering::SeqCst)
            );
        }
    }

    let effects: Vec<String> =
        sqlx::query_scalar("SELECT event_id FROM effects").fetch_all(db.pool()).await.unwrap();
    let distinct: std::collections::HashSet<_> = effects.iter().collect();
    assert_eq!(effects.len(), 60, "every event had an effect");
    assert_eq!(distinct.len(), 60, "and only one");
    consumer_bus.delete_queues(consumer).await.unwrap();
}

crate::backend_tests!(
    the_log_delivers_each_event_once_in_order_and_resumes_where_it_stopped,
    a_failing_event_is_retried_then_dead_lettered,
    dead_letters_on_the_log_are_listed_replayed_with_one_effect_and_discarded_with_a_reason,
    a_relay_crash_and_a_consumer_crash_still_give_exactly_one_effect,
    every_subscriber_on_the_log_gets_its_types_and_catches_up_from_its_position,
    events_committed_in_the_process_are_relayed_at_once_not_at_the_next_poll,
);

async fn events_committed_in_the_process_are_relayed_at_once_not_at_the_next_poll(backend: Backend) {
    let Some((_t, bus, db)) = log(backend).await else { return };
    db.migrate_all(&[&LOG_MIGRATIONS, &OUTBOX_MIGRATIONS]).await.unwrap();
    let stop = CancellationToken::new();
    // A poll an hour apart: only the wake-up on commit can relay within the test's time.
    let relay =
        tokio::spawn(run_relay("test", db.clone(), bus.clone(), Duration::from_secs(3600), stop.clone()));
    for n in 0..3 {
        let mut tx = db.begin_write().await.unwrap();
        outbox::write(&mut tx, &[event(n)]).await.unwrap();
        db.commit_events(tx).await.unwrap();
        assert_eq!(collect(&bus, &format!("c{n}"), n + 1).await.len(), n + 1, "event {n} relayed");
    }
    stop.cancel();
    relay.await.unwrap();
}

fn event(n: usize) -> Event {
    Event { id: format!("e{n}"), event_type: "Test".into(), body: vec![n as u8] }
}

async fn log(backend: Backend) -> Option<(TestDatabase, Bus, Database)> {
    let test_db = TestDatabase::new(backend).await?;
    let db = Database::connect(&test_db.url, &Default::default()).await.unwrap();
    let log = EventLog::open(db.clone()).await.unwrap();
    Some((test_db, Bus::Log(log), db))
}

/// Consumes until `n` events arrived (or 10 s passed), then stops.
async fn collect(bus: &Bus, consumer: &str, n: usize) -> Vec<String> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let (seen2, stop2) = (seen.clone(), stop.clone());
    let run = bus.consume(
        consumer,
        move |e: Event| {
            let (seen, stop) = (seen2.clone(), stop2.clone());
            async move {
                let mut seen = seen.lock().unwrap();
                seen.push(e.id);
                if seen.len() >= n {
                    stop.cancel();
                }
                Ok(())
            }
        },
        stop.clone(),
    );
    tokio::time::timeout(Duration::from_secs(10), run).await.expect("consumer finished").unwrap();
    seen.lock().unwrap().clone()
}

async fn the_log_delivers_each_event_once_in_order_and_resumes_where_it_stopped(backend: Backend) {
    let Some((_t, bus, _db)) = log(backend).await else { return };
    bus.publish(&[event(1), event(2)]).await.unwrap();
    bus.publish(&[event(2), event(3)]).await.unwrap(); // e2 again: deduplicated
    assert_eq!(collect(&bus, "c1", 3).await, ["e1", "e2", "e3"]);
    bus.publish(&[event(4)]).await.unwrap();
    assert_eq!(collect(&bus, "c1", 1).await, ["e4"], "a restarted consumer resumes after its position");
    assert_eq!(collect(&bus, "c2", 4).await, ["e1", "e2", "e3", "e4"], "each consumer has its own position");
}

async fn a_failing_event_is_retried_then_dead_lettered(backend: Backend) {
    let Some((_t, _bus, db)) = log(backend).await else { return };
    let mut log = EventLog::open(db).await.unwrap();
    log.max_attempts = 3;
    let bus = Bus::Log(log.clone());
    bus.publish(&[event(1), event(2)]).await.unwrap();
    let attempts = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let (a, s) = (attempts.clone(), stop.clone());
    bus.consume(
        "c",
        move |e: Event| {
            let (a, s) = (a.clone(), s.clone());
            async move {
                if e.id == "e1" {
                    a.fetch_add(1, Ordering::SeqCst);
                    anyhow::bail!("poison");
                }
                s.cancel();
                Ok(())
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    assert_eq!(attempts.load(Ordering::SeqCst), 3, "tried max_attempts times");
    let dead = log.dead_letters("c").await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(log.dead_letter_count("c").await.unwrap(), 1, "the operator's gauge counts it");
    assert_eq!(dead[0].event.id, "e1");
    assert!(dead[0].error.contains("poison"));
    assert_eq!(dead[0].attempts, 3);
}

async fn a_relay_crash_and_a_consumer_crash_still_give_exactly_one_effect(backend: Backend) {
    let Some((_t, bus, db)) = log(backend).await else { return };
    // The outbox and inbox as platform ships them, beside the log's own tables.
    db.migrate_all(&[&LOG_MIGRATIONS, &OUTBOX_MIGRATIONS]).await.unwrap();
    sqlx::query("CREATE TABLE effects (event_id TEXT NOT NULL)").execute(db.pool()).await.unwrap();
    for n in 0..20 {
        let mut tx = db.begin_write().await.unwrap();
        outbox::write(&mut tx, &[event(n)]).await.unwrap();
        tx.commit().await.unwrap();
    }
    // The relay dies after publishing the first 5 and before marking them: they stay
    // unpublished in the outbox, and the next run publishes them again.
    let first: Vec<Event> = (0..5).map(event).collect();
    bus.publish(&first).await.unwrap();
    // The backlog the relay reports as its gauges: all 20, the oldest a moment old; then none.
    let (rows, oldest) = outbox::backlog(&db).await.unwrap();
    assert_eq!(rows, 20);
    assert!(oldest.is_some_and(|ms| ms <= crate::clock::now_ms()), "{oldest:?}");
    while !relay_outbox("test", &db, &bus, 7).await.unwrap().is_empty() {}
    assert_eq!(outbox::backlog(&db).await.unwrap(), (0, None));

    // The consumer applies each effect with its inbox record, but "crashes" before
    // acknowledging every third event the first time, so those are delivered again.
    let crashed = Arc::new(Mutex::new(std::collections::HashSet::new()));
    let stop = CancellationToken::new();
    let delivered = Arc::new(AtomicUsize::new(0));
    let (db2, crashed2, stop2, delivered2) = (db.clone(), crashed.clone(), stop.clone(), delivered.clone());
    bus.consume(
        "effects",
        move |e: Event| {
            let (db, crashed, stop, delivered) =
                (db2.clone(), crashed2.clone(), stop2.clone(), delivered2.clone());
            async move {
                delivered.fetch_add(1, Ordering::SeqCst);
                if let Some(mut tx) = inbox_begin(&db, "effects", &e.id).await? {
                    sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                        .bind(&e.id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
                let n: usize = e.id[1..].parse()?;
                if n.is_multiple_of(3) && crashed.lock().unwrap().insert(e.id.clone()) {
                    anyhow::bail!("crashed before the ack");
                }
                // Done once every event has its effect (the relay's order is the outbox's).
                let effects: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM effects").fetch_one(db.pool()).await?;
                if effects == 20 {
                    stop.cancel();
                }
                Ok(())
            }
        },
        stop.clone(),
    )
    .await
    .unwrap();
    assert!(delivered.load(Ordering::SeqCst) > 20, "some events were delivered twice");
    let effects: Vec<String> = sqlx::query_scalar("SELECT event_id FROM effects ORDER BY event_id")
        .fetch_all(db.pool())
        .await
        .unwrap();
    let mut expected: Vec<String> = (0..20).map(|n| format!("e{n}")).collect();
    expected.sort();
    assert_eq!(effects, expected, "every event has exactly one effect");
    let unpublished: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(db.pool())
        .await
        .unwrap();
    assert_eq!(unpublished, 0);
}

/// What one subscriber was handed: (event id, position).
type Handed = Arc<Mutex<Vec<(String, i64)>>>;

/// Subscribes on `bus` in the background; returns what it is handed and its stop.
fn subscriber(bus: &Bus, subscription: Subscription) -> (Handed, CancellationToken) {
    let handed: Handed = Arc::default();
    let stop = CancellationToken::new();
    let (bus, sink, until) = (bus.clone(), handed.clone(), stop.clone());
    tokio::spawn(async move {
        bus.subscribe(
            &subscription,
            move |e: Event, position| {
                let sink = sink.clone();
                async move {
                    sink.lock().unwrap().push((e.id, position));
                    Ok(())
                }
            },
            until,
        )
        .await
        .unwrap();
    });
    (handed, stop)
}

/// Waits (30 s at most) until `handed` holds `n` events; returns their ids.
async fn ids_once(handed: &Handed, n: usize) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ids: Vec<String> = handed.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
        if ids.len() >= n {
            return ids;
        }
        assert!(tokio::time::Instant::now() < deadline, "only {ids:?} of {n} events arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two replicas from the beginning each get every event of their type, in order, and nothing
/// of another type; a third, started later after the first event's position, catches up on the
/// rest and then gets what is published while it runs.
async fn subscriptions_fan_out_and_catch_up(bus: &Bus, name: &str) {
    let (wanted, other) = (format!("{name}.Wanted"), format!("{name}.Other"));
    let ev = |kind: &str, n: u32| Event {
        id: format!("{name}-{kind}-{n}"),
        event_type: kind.to_owned(),
        body: vec![],
    };
    let subscription =
        |start| Subscription { name: name.to_owned(), types: vec![wanted.clone()], start, keep: super::KEEP };
    // The subscription exists before the first publish, as it does once a service that
    // subscribes has started.
    bus.declare_subscription(&subscription(StartAt::Now)).await.unwrap();
    let published = [ev(&wanted, 1), ev(&other, 1), ev(&wanted, 2), ev(&other, 2), ev(&wanted, 3)];
    bus.publish(&published).await.unwrap();
    let expected: Vec<String> = [1, 2, 3].iter().map(|n| format!("{name}-{wanted}-{n}")).collect();
    let (first, stop_first) = subscriber(bus, subscription(StartAt::Beginning));
    let (second, stop_second) = subscriber(bus, subscription(StartAt::Beginning));
    assert_eq!(ids_once(&first, 3).await, expected, "from the beginning: every event of its type, in order");
    assert_eq!(ids_once(&second, 3).await, expected, "every replica gets every one");

    let after_first = second.lock().unwrap()[0].1;
    let (third, stop_third) = subscriber(bus, subscription(StartAt::After(after_first)));
    assert_eq!(ids_once(&third, 2).await, expected[1..], "caught up after the position it gave");
    let since = crate::clock::now_ms();
    bus.publish(&[ev(&other, 3), ev(&wanted, 4)]).await.unwrap();
    let fourth = format!("{name}-{wanted}-4");
    assert_eq!(ids_once(&third, 3).await.last(), Some(&fourth), "and then gets what comes next");
    // Started from a moment, but attached only after an event of that moment was published:
    // it gets it all the same (and on RabbitMQ perhaps some of the second before).
    let (late, stop_late) = subscriber(bus, subscription(StartAt::Since(since)));
    let mut got = ids_once(&late, 1).await;
    while got.last() != Some(&fourth) {
        assert!(got.len() < 4, "{fourth} did not come after {got:?}");
        got = ids_once(&late, got.len() + 1).await;
    }
    stop_late.cancel();
    assert_eq!(ids_once(&second, 4).await.last(), Some(&fourth), "every replica does");
    assert_eq!(ids_once(&first, 4).await.last(), Some(&fourth));
    assert_eq!(second.lock().unwrap().len(), 4, "nothing of the other type");
    for stop in [stop_first, stop_second, stop_third] {
        stop.cancel();
    }
}

async fn every_subscriber_on_the_log_gets_its_types_and_catches_up_from_its_position(backend: Backend) {
    let Some((_t, bus, _db)) = log(backend).await else { return };
    subscriptions_fan_out_and_catch_up(&bus, "fanout").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_on_rabbitmq_gets_its_types_and_catches_up_from_its_position() {
    let Some(url) = crate::testing::amqp_url_or_skip() else { return };
    let name = format!("test-{}", uuid::Uuid::new_v4().simple());
    let rabbit = Arc::new(RabbitBus::new(url).expect("a broker URL"));
    subscriptions_fan_out_and_catch_up(&Bus::Rabbit(rabbit.clone()), &name).await;
    rabbit.delete_stream(&name).await.unwrap();
}

async fn dead_letters_on_the_log_are_listed_replayed_with_one_effect_and_discarded_with_a_reason(
    backend: Backend,
) {
    let Some((_t, _bus, db)) = log(backend).await else { return };
    let mut log = EventLog::open(db).await.unwrap();
    log.max_attempts = 3;
    dead_letter_lifecycle(Bus::Log(log), "c").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_on_rabbitmq_are_listed_replayed_with_one_effect_and_discarded_with_a_reason() {
    let Some((mut bus, consumer, _)) = rabbit() else { return };
    bus.max_attempts = 3;
    let bus = Arc::new(bus);
    bus.declare(&consumer).await.unwrap();
    dead_letter_lifecycle(Bus::Rabbit(bus.clone()), &consumer).await;
    bus.delete_queues(&consumer).await.unwrap();
}

/// Waits (30 s at most) until `consumer`'s dead letters satisfy `done`; returns them.
async fn dead_letters_until(
    bus: &Bus,
    consumer: &str,
    what: &str,
    done: impl Fn(&[DeadLetter]) -> bool,
) -> Vec<DeadLetter> {
    let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let dead = bus.dead_letters(consumer).await.unwrap();
        if done(&dead) {
            return dead;
        }
        assert!(tokio::time::Instant::now() < give_up, "waited 30 s for {what}; dead letters: {dead:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three events die while a consumer (3 attempts each) is broken: one fails before its effect,
/// one after it (as a crash before the acknowledgement would), one can never be handled. The
/// operator sees each with its error, mends the consumer, replays the first two (one effect each:
/// the inbox absorbs the second's repeat), replays the third into a second death, and discards
/// it with a reason.
async fn dead_letter_lifecycle(bus: Bus, consumer: &str) {
    let (_test_db, db) = effects_database().await;
    let event = |payload: &[u8]| {
        let mut e = enveloped(consumer, payload.to_vec(), 7);
        e.event_type = consumer.to_owned();
        e
    };
    let (before, after, never, fine) = (event(b"before"), event(b"after"), event(b"never"), event(b"fine"));
    let ids = [&before, &after, &never].map(|e| e.id.clone());
    bus.publish(&[before.clone(), after.clone(), never.clone(), fine.clone()]).await.unwrap();

    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // The events the handler finished with success, each time it did.
    let handled = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = CancellationToken::new();
    let consuming = {
        let (bus, consumer, db, broken, stop, handled) =
            (bus.clone(), consumer.to_owned(), db.clone(), broken.clone(), stop.clone(), handled.clone());
        let [before, after, never] = ids.clone();
        tokio::spawn(async move {
            bus.consume(
                &consumer,
                move |e: Event| {
                    let (db, broken, handled) = (db.clone(), broken.load(Ordering::SeqCst), handled.clone());
                    let (before, after, never) = (before.clone(), after.clone(), never.clone());
                    async move {
                        anyhow::ensure!(e.id != never, "cannot be handled");
                        anyhow::ensure!(!(broken && e.id == before), "broken before the effect");
                        if let Some(mut tx) = inbox_begin(&db, "effects", &e.id).await? {
                            sqlx::query("INSERT INTO effects (event_id) VALUES ($1)")
                                .bind(&e.id)
                                .execute(&mut *tx)
                                .await?;
                            tx.commit().await?;
                        }
                        anyhow::ensure!(!(broken && e.id == after), "lost after the effect");
                        handled.lock().unwrap().push(e.id);
                        Ok(())
                    }
                },
                stop,
            )
            .await
        })
    };
    let effects = |id: String| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM effects WHERE event_id = $1")
                .bind(id)
                .fetch_one(db.pool())
                .await
                .unwrap()
        }
    };

    let dead = dead_letters_until(&bus, consumer, "three dead letters", |d| d.len() == 3).await;
    let listed: Vec<&str> = dead.iter().map(|d| d.event.id.as_str()).collect();
    assert_eq!(listed, ids.iter().map(String::as_str).collect::<Vec<_>>(), "listed oldest first");
    assert!(dead.iter().all(|d| d.attempts == 3 && d.event.event_type == consumer), "{dead:?}");
    assert!(dead[0].error.contains("broken before the effect"), "{}", dead[0].error);
    assert!(dead[2].error.contains("cannot be handled"), "{}", dead[2].error);
    let shown =
        dead[0].to_json(|kind, payload| Some(format!("{kind}: {}", String::from_utf8_lossy(payload))));
    assert_eq!(shown["envelope"]["schema_version"], 7, "{shown}");
    assert_eq!(shown["envelope"]["payload"], format!("{consumer}: before"), "{shown}");
    assert_eq!(shown["attempts"], 3);
    // The consumer went on past them (the event after the last dead one may still be in hand).
    let handled_once = |id: String| {
        let handled = handled.clone();
        async move {
            let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
            while !handled.lock().unwrap().contains(&id) {
                assert!(tokio::time::Instant::now() < give_up, "{id} was never handled");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    handled_once(fine.id.clone()).await;
    assert_eq!(effects(fine.id.clone()).await, 1, "the others went on");
    assert_eq!(bus.dead_letter_count(consumer).await.unwrap(), 3, "the gauge counts them");

    broken.store(false, Ordering::SeqCst);
    for id in &ids[..2] {
        assert_eq!(bus.replay_dead_letters(consumer, Which::One(id)).await.unwrap(), vec![id.clone()]);
    }
    dead_letters_until(&bus, consumer, "the two replays", |d| d.len() == 1).await;
    // On RabbitMQ a replayed letter leaves the dead-letter queue before its consumer takes it.
    handled_once(ids[0].clone()).await;
    handled_once(ids[1].clone()).await;
    assert_eq!(effects(ids[0].clone()).await, 1, "a replay applies what never was");
    assert_eq!(effects(ids[1].clone()).await, 1, "and changes nothing where the effect was applied");

    assert_eq!(bus.replay_dead_letters(consumer, Which::All).await.unwrap(), [ids[2].clone()]);
    let again = dead_letters_until(&bus, consumer, "the third to die again", |d| {
        d.len() == 1 && !d[0].replay_pending
    })
    .await;
    assert_eq!(again[0].attempts, 3, "tried again, as many times");

    let reason = DiscardReason::parse("  cannot be handled by any release  ").unwrap();
    let discarded = bus.discard_dead_letter(consumer, &ids[2], &reason).await.unwrap();
    assert_eq!(discarded.map(|d| d.event.id), Some(ids[2].clone()));
    assert!(bus.dead_letters(consumer).await.unwrap().is_empty(), "a discarded letter is not listed");
    assert_eq!(bus.dead_letter_count(consumer).await.unwrap(), 0, "nor counted");
    assert_eq!(bus.discard_dead_letter(consumer, &ids[2], &reason).await.unwrap(), None, "gone");
    assert!(bus.replay_dead_letters(consumer, Which::All).await.unwrap().is_empty(), "nothing to replay");
    assert_eq!(effects(ids[2].clone()).await, 0);

    stop.cancel();
    consuming.await.unwrap().unwrap();
}

#[test]
fn a_discard_reason_is_one_to_five_hundred_characters_not_all_blank() {
    assert_eq!(
        DiscardReason::parse(" duplicate of an applied event ").unwrap().as_str(),
        "duplicate of an applied event"
    );
    assert!(DiscardReason::parse("   ").is_err());
    assert!(DiscardReason::parse(&"x".repeat(500)).is_ok());
    assert!(DiscardReason::parse(&"x".repeat(501)).is_err());
}
