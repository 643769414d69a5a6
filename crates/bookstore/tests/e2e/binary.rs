//! The `bookstore` executable itself: its help, its config errors, and `up` with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bookstore");

fn bookstore() -> Command {
    crate::clean_command(BIN, "warn")
}

#[test]
fn help_documents_every_command_and_option() {
    let out = bookstore().arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for word in ["up", "serve", "migrate", "--config"] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
    let out = bookstore().args(["up", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for word in [
        "--http",
        "BOOKSTORE_HTTP",
        "--data-dir",
        "BOOKSTORE_DATA_DIR",
        "--no-seed",
        "--books-database-url",
        "--users-database-url",
        "BOOKSTORE_MASTER_KEY_FILE",
        "BOOKSTORE_ADMIN_PASSWORD",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}

#[test]
fn a_bad_setting_stops_the_start_and_names_the_key() {
    let out = bookstore().args(["up"]).env("BOOKSTORE_REQUEST_TIMEOUT_MS", "soon").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("request_timeout_ms (from BOOKSTORE_REQUEST_TIMEOUT_MS)"), "{err}");

    let out = bookstore().args(["serve", "books", "--books-database-url", "mysql://x"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("books_database_url"));

    // A users service without a master key refuses to start (only `up` makes one up).
    let dir = tempfile::tempdir().unwrap();
    let out = bookstore()
        .args(["serve", "users", "--users-grpc", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("BOOKSTORE_MASTER_KEY_FILE"));
}

#[test]
fn migrate_creates_the_schema_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = bookstore().args(["migrate", "--data-dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(dir.path().join("books.db").exists());
    assert!(dir.path().join("users.db").exists());
    assert!(dir.path().join("orders.db").exists());
}

/// On RabbitMQ, an event published to a type no queue is bound to is dropped by the broker. The
/// deployment's `migrate` job declares every consumer's queue, so an event published before any
/// consumer has ever run is kept for each consumer of its type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_declares_every_consumers_queue_so_an_event_published_first_is_kept() {
    use bookstore_platform::db::Backend;
    use bookstore_platform::events::{Bus, Event, RabbitBus};
    use bookstore_platform::testing::{TestDatabase, amqp_url_or_skip};
    use tokio_util::sync::CancellationToken;

    let Some(amqp) = amqp_url_or_skip() else { return };
    let namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = crate::RabbitNamespace { url: amqp.clone(), namespace: namespace.clone() };
    let mut command = bookstore();
    command.args(["migrate", "--amqp-url", &amqp, "--amqp-namespace", &namespace]);
    let mut databases = Vec::new();
    for service in ["books", "users", "orders", "fulfillment", "recommendations"] {
        let Some(db) = TestDatabase::new(Backend::Postgres).await else { return };
        command.arg(format!("--{service}-database-url")).arg(&db.url);
        databases.push(db);
    }
    let out = command.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("RabbitMQ: the queues of"));

    let mut rabbit = RabbitBus::new(amqp).unwrap();
    rabbit.namespace.clone_from(&namespace);
    let bus = Bus::Rabbit(std::sync::Arc::new(rabbit));
    let event = Event { id: "published-first".into(), event_type: "OrderPlaced".into(), body: b"-".to_vec() };
    bus.publish(&[event]).await.unwrap();
    for (consumer, _, types) in bookstore::CONSUMED_BY.iter().filter(|(_, _, t)| t.contains(&"OrderPlaced")) {
        let (got, mut received) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let consuming = {
            let (bus, stop) = (bus.clone(), stop.clone());
            tokio::spawn(async move {
                bus.consume_types(
                    consumer,
                    types,
                    move |e| {
                        let got = got.clone();
                        async move {
                            got.send(e.id).unwrap();
                            Ok(())
                        }
                    },
                    stop,
                )
                .await
            })
        };
        let id = tokio::time::timeout(std::time::Duration::from_secs(30), received.recv()).await;
        assert_eq!(id.ok().flatten().as_deref(), Some("published-first"), "{consumer} kept the event");
        stop.cancel();
        consuming.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn up_serves_the_seeded_shop_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = bookstore()
        .args([
            "up",
            "--http",
            "127.0.0.1:0",
            "--books-grpc",
            "127.0.0.1:0",
            "--users-grpc",
            "127.0.0.1:0",
            "--orders-grpc",
            "127.0.0.1:0",
            "--fulfillment-grpc",
            "127.0.0.1:0",
            "--recommendations-grpc",
            "127.0.0.1:0",
            "--admin-http",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (gateway, admin, admin_password) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let (mut admin, mut admin_password) = (None, None);
        let first_word = |rest: &str| rest.split_whitespace().next().map(str::to_owned);
        let gateway = lines.find_map(|line| {
            let line = line.ok()?;
            if let Some(rest) = line.strip_prefix("admin password: ") {
                admin_password = first_word(rest);
            }
            if let Some(rest) = line.strip_prefix("admin    http://") {
                admin = first_word(rest);
            }
            line.strip_prefix("gateway  http://").and_then(first_word)
        });
        // Keep reading, as a terminal would, until the process closes its output.
        std::thread::spawn(move || lines.for_each(drop));
        (
            gateway.expect("up prints the gateway's address"),
            admin.expect("up prints the admin address"),
            admin_password,
        )
    })
    .await
    .unwrap();
    let admin_password = admin_password.expect("up prints the generated admin password once");
    assert!(dir.path().join("master.key").exists(), "up keeps its generated master key with the data");

    let http = reqwest::Client::new();
    let ready = http.get(format!("http://{admin}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // The container health check: `probe` asks the admin listener, as a bare image can.
    let probe = |live: bool| {
        let mut probe = bookstore();
        probe.args(["probe", "--admin-http", &admin]);
        if live {
            probe.arg("--live");
        }
        probe.output().unwrap()
    };
    assert!(probe(false).status.success(), "probe: ready");
    assert!(probe(true).status.success(), "probe --live: alive");
    let books: serde_json::Value =
        http.get(format!("http://{gateway}/api/v1/books")).send().await.unwrap().json().await.unwrap();
    assert!(books["total"].as_i64().unwrap() >= 50, "seeded: {books}");
    let login = http
        .post(format!("http://{gateway}/api/v1/auth/login"))
        .json(&serde_json::json!({"username": "admin", "password": admin_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200, "the printed admin password works");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    let status = exit_within(child, Duration::from_secs(10)).await;
    assert!(status.success(), "exit status {status}");
    let gone = probe(false);
    assert!(!gone.status.success(), "probe fails once the process is gone");
    assert!(String::from_utf8_lossy(&gone.stderr).contains("/readyz"), "and says what it asked");
}

bookstore_platform::backend_tests!(processes_killed_at_every_crash_point_still_give_each_order_one_effect);

pub(crate) const ADMIN_PASSWORD: &str = "orchid satellite marmalade quiver";

/// `bookstore up` on `dir` (and on PostgreSQL + RabbitMQ when `servers` names them), with
/// `env`; returns the process and the gateway's address once it is listening (`None` when the
/// process died before).
pub(crate) async fn start_up(
    dir: &std::path::Path,
    servers: &[(&str, String)],
    env: &[(&str, &str)],
) -> (std::process::Child, Option<String>) {
    start_up_logging(dir, servers, env, Stdio::inherit()).await
}

/// [`start_up`], with the process's log (stderr) going to `log`.
async fn start_up_logging(
    dir: &std::path::Path,
    servers: &[(&str, String)],
    env: &[(&str, &str)],
    log: Stdio,
) -> (std::process::Child, Option<String>) {
    let mut command = bookstore();
    command.args(["up", "--http", "127.0.0.1:0", "--data-dir"]).arg(dir);
    for flag in [
        "--books-grpc",
        "--users-grpc",
        "--orders-grpc",
        "--fulfillment-grpc",
        "--recommendations-grpc",
        "--admin-http",
    ] {
        command.args([flag, "127.0.0.1:0"]);
    }
    for (flag, value) in servers {
        command.args([*flag, value.as_str()]);
    }
    command.env("BOOKSTORE_ADMIN_PASSWORD", ADMIN_PASSWORD).envs(env.iter().copied());
    let mut child = command.stdout(Stdio::piped()).stderr(log).spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let gateway = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let gateway = lines.find_map(|line| {
            line.ok()?
                .strip_prefix("gateway  http://")
                .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        });
        std::thread::spawn(move || lines.for_each(drop));
        gateway
    })
    .await
    .unwrap();
    (child, gateway)
}

/// Waits up to 20 s for `child` to exit.
pub(crate) async fn exit_of(child: std::process::Child) -> std::process::ExitStatus {
    exit_within(child, Duration::from_secs(20)).await
}

/// Waits up to `limit` for `child` to exit; kills it and fails the test after that.
async fn exit_within(mut child: std::process::Child, limit: Duration) -> std::process::ExitStatus {
    tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill().unwrap();
        panic!("bookstore did not exit within {limit:?}");
    })
    .await
    .unwrap()
}

/// Places a one-line order as the admin; the response, or `None` when the process died first.
async fn place_order(http: &reqwest::Client, gateway: &str) -> Option<reqwest::StatusCode> {
    let token = crate::login(http, &format!("http://{gateway}"), "admin", ADMIN_PASSWORD).await;
    let books: serde_json::Value =
        http.get(format!("http://{gateway}/api/v1/books")).send().await.unwrap().json().await.unwrap();
    let book = books["items"][0]["id"].as_str().unwrap().to_owned();
    let placed = http
        .post(format!("http://{gateway}/api/v1/orders"))
        .bearer_auth(token)
        .json(&serde_json::json!({"lines": [{"book_id": book, "quantity": 1}], "shipping_address": crate::shipping_address()}))
        .send()
        .await;
    placed.ok().map(|r| r.status())
}

async fn processes_killed_at_every_crash_point_still_give_each_order_one_effect(
    backend: bookstore_platform::db::Backend,
) {
    use bookstore_platform::db::{Backend, Database};
    use bookstore_platform::events::RabbitBus;
    use bookstore_platform::testing::{TestDatabase, amqp_url_or_skip};

    let dir = tempfile::tempdir().unwrap();
    // On PostgreSQL the events go through RabbitMQ, into a queue of the test's own.
    let mut servers = Vec::new();
    let mut databases = Vec::new();
    let consumer = format!("e2e-{}", uuid::Uuid::new_v4().simple());
    // Exchanges and queues of the test's own on the shared broker.
    let namespace = format!("test-{}", uuid::Uuid::new_v4().simple());
    let bus = match backend {
        Backend::Sqlite => format!("log:sqlite://{}", dir.path().join("events.db").display()),
        Backend::Postgres => {
            let Some(amqp) = amqp_url_or_skip() else { return };
            for flag in ["--books-database-url", "--users-database-url", "--orders-database-url"] {
                let Some(db) = TestDatabase::new(backend).await else { return };
                servers.push((flag, db.url.clone()));
                databases.push(db);
            }
            servers.push(("--amqp-url", amqp.clone()));
            servers.push(("--amqp-namespace", namespace.clone()));
            let mut rabbit = RabbitBus::new(amqp.clone()).expect("a broker URL");
            rabbit.topics = vec!["OrderPlaced".into()];
            rabbit.namespace.clone_from(&namespace);
            rabbit.declare(&consumer).await.unwrap();
            format!("amqp:{amqp}")
        }
    };
    let orders_url = servers.iter().find(|(flag, _)| *flag == "--orders-database-url").map_or_else(
        || format!("sqlite://{}", dir.path().join("orders.db").display()),
        |(_, url)| url.clone(),
    );
    let http = reqwest::Client::new();
    let unmarked = || async {
        let orders = Database::connect(&orders_url, &Default::default()).await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(orders.pool())
            .await
            .unwrap();
        orders.close().await;
        n
    };

    // Run 1 dies between the order's commit and its event's publication.
    let (child, gateway) =
        start_up(dir.path(), &servers, &[("FAILPOINTS", "relay-before-publish=return")]).await;
    let first = place_order(&http, &gateway.expect("up prints the gateway's address")).await;
    assert!(matches!(first, None | Some(reqwest::StatusCode::CREATED)), "{first:?}");
    assert!(!exit_of(child).await.success(), "killed before publishing");
    assert_eq!(unmarked().await, 1, "committed, not published");
    // Run 2 publishes it on its first relay pass and dies before marking it.
    let (child, _) = start_up(dir.path(), &servers, &[("FAILPOINTS", "relay-after-publish=return")]).await;
    assert!(!exit_of(child).await.success(), "killed after publishing");
    assert_eq!(unmarked().await, 1, "published, never marked");
    // Run 3 publishes it again, takes a second order, and stops cleanly.
    let (child, gateway) = start_up(dir.path(), &servers, &[]).await;
    let gateway = gateway.expect("up prints the gateway's address");
    assert_eq!(place_order(&http, &gateway).await, Some(reqwest::StatusCode::CREATED));
    for _ in 0..100 {
        if unmarked().await == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(exit_of(child).await.success());

    // Downstream, a consumer process dies between an effect and its acknowledgement, and a
    // second one finishes the stream.
    let orders = Database::connect(&orders_url, &Default::default()).await.unwrap();
    let placed: Vec<String> =
        sqlx::query_scalar("SELECT id FROM orders ORDER BY id").fetch_all(orders.pool()).await.unwrap();
    assert_eq!(placed.len(), 2, "both orders were committed");
    let effects_db = TestDatabase::sqlite();
    let effects = Database::connect(&effects_db.url, &Default::default()).await.unwrap();
    for ddl in [
        "CREATE TABLE inbox (consumer TEXT NOT NULL, event_id TEXT NOT NULL, processed_at BIGINT NOT NULL, PRIMARY KEY (consumer, event_id))",
        "CREATE TABLE effects (order_id TEXT NOT NULL)",
    ] {
        sqlx::query(ddl).execute(effects.pool()).await.unwrap();
    }
    let consume = |failpoints: &str| {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["--exact", "binary::consumer_process", "--ignored", "--nocapture"])
            .env("CRASH_TEST_BUS", &bus)
            .env("CRASH_TEST_CONSUMER", &consumer)
            .env("CRASH_TEST_NAMESPACE", &namespace)
            .env("CRASH_TEST_EFFECTS", &effects_db.url)
            .env("CRASH_TEST_EXPECT", placed.len().to_string())
            .env("FAILPOINTS", failpoints)
            .stdout(Stdio::piped());
        command
    };
    let crashed = tokio::task::spawn_blocking({
        let mut command = consume("consumer-after-effect=return");
        move || command.output().unwrap()
    });
    let crashed = tokio::time::timeout(Duration::from_secs(60), crashed).await.unwrap().unwrap();
    assert!(!crashed.status.success(), "the consumer was killed after its first effect");
    let applied = || async {
        sqlx::query_scalar::<_, String>("SELECT order_id FROM effects ORDER BY order_id")
            .fetch_all(effects.pool())
            .await
            .unwrap()
    };
    assert_eq!(applied().await.len(), 1, "one effect happened before the crash");
    let finished = tokio::task::spawn_blocking({
        let mut command = consume("");
        move || command.output().unwrap()
    });
    let finished = tokio::time::timeout(Duration::from_secs(60), finished).await.unwrap().unwrap();
    let output = String::from_utf8_lossy(&finished.stdout);
    assert!(finished.status.success(), "{output}");
    let deliveries: usize = output
        .lines()
        .find_map(|l| l.strip_prefix("deliveries="))
        .and_then(|n| n.trim().parse().ok())
        .expect("the consumer reports its deliveries");
    assert_eq!(applied().await, placed, "every committed order has exactly one downstream effect");
    assert!(deliveries > 1, "the unacknowledged event came again and the inbox absorbed it: {deliveries}");
    if let Some(amqp) = bus.strip_prefix("amqp:") {
        assert!(deliveries >= 3, "the broker also delivered the event published twice: {deliveries}");
        let mut rabbit = RabbitBus::new(amqp).expect("a broker URL");
        rabbit.namespace = namespace;
        rabbit.delete_queues(&consumer).await.unwrap();
    }
}

/// Not a test of its own: the consumer process the crash test starts (and kills, through the
/// `consumer-after-effect` crash point). It applies each order's event once, with an inbox, to
/// `CRASH_TEST_EFFECTS`, and stops when `CRASH_TEST_EXPECT` effects are there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "started by processes_killed_at_every_crash_point_still_give_each_order_one_effect"]
async fn consumer_process() {
    use bookstore_api::orders::v1 as pb;
    use bookstore_platform::db::Database;
    use bookstore_platform::events::{Bus, Event, EventLog, RabbitBus, inbox_begin};
    use prost::Message;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    let _failpoints = bookstore_platform::arm_failpoints();
    let var = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set"));
    let (bus, consumer, expect) =
        (var("CRASH_TEST_BUS"), var("CRASH_TEST_CONSUMER"), var("CRASH_TEST_EXPECT"));
    let expect: i64 = expect.parse().unwrap();
    let effects = Database::connect(&var("CRASH_TEST_EFFECTS"), &Default::default()).await.unwrap();
    let bus = if let Some(url) = bus.strip_prefix("log:") {
        Bus::Log(EventLog::open(Database::connect(url, &Default::default()).await.unwrap()).await.unwrap())
    } else {
        let mut rabbit = RabbitBus::new(bus.strip_prefix("amqp:").unwrap()).expect("a broker URL");
        rabbit.topics = vec!["OrderPlaced".into()];
        rabbit.namespace = var("CRASH_TEST_NAMESPACE");
        Bus::Rabbit(Arc::new(rabbit))
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let deliveries = Arc::new(AtomicUsize::new(0));
    let (effects2, stop2, deliveries2) = (effects.clone(), stop.clone(), deliveries.clone());
    // OrderPlaced alone: the bus carries other events too (each process's revocation checkpoint).
    let consuming = bus.consume_types(
        &consumer,
        &["OrderPlaced"],
        move |e: Event| {
            let (effects, stop, deliveries) = (effects2.clone(), stop2.clone(), deliveries2.clone());
            async move {
                deliveries.fetch_add(1, Ordering::SeqCst);
                let envelope = pb::EventEnvelope::decode(e.body.as_slice())?;
                if envelope.r#type == "OrderPlaced"
                    && let Some(mut tx) = inbox_begin(&effects, "effects", &e.id).await?
                {
                    let order =
                        pb::OrderPlaced::decode(envelope.payload.as_slice())?.order.unwrap_or_default();
                    sqlx::query("INSERT INTO effects (order_id) VALUES ($1)")
                        .bind(&order.id)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                }
                let n: i64 =
                    sqlx::query_scalar("SELECT COUNT(*) FROM effects").fetch_one(effects.pool()).await?;
                if n >= expect {
                    stop.cancel();
                }
                Ok(())
            }
        },
        stop.clone(),
    );
    tokio::time::timeout(Duration::from_secs(45), consuming).await.expect("the events arrived").unwrap();
    println!("deliveries={}", deliveries.load(Ordering::SeqCst));
}

#[test]
fn config_prints_the_effective_configuration_with_secrets_redacted() {
    let key = bookstore_users::crypto::MasterKey::generate_base64();
    let out = bookstore()
        .args([
            "config",
            "--orders-database-url",
            "postgres://shop:pa55word@db/orders",
            "--http",
            "0.0.0.0:80",
        ])
        .env("BOOKSTORE_MASTER_KEY", &key)
        .env("BOOKSTORE_BOOKS_CACHE_TTL_MS", "250")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(!text.contains("pa55word") && !text.contains(key.trim()), "a secret leaked:\n{text}");
    for line in [
        "[orders]",
        r#"database_url = "postgres://shop:***@db/orders""#,
        r#"master_key = "<redacted>""#,
        "cache_ttl_ms = 250",
        r#"http = "0.0.0.0:80""#,
    ] {
        assert!(text.contains(line), "{line} missing from:\n{text}");
    }
}

/// SIGTERM lands while the outbox relay has published a batch but not yet marked it, and while
/// a sweeper pass has begun: the process still exits 0, logs no error, and finishes both units
/// (the batch is marked, once; the sweeper's pass completes).
#[tokio::test]
async fn sigterm_during_a_relay_batch_and_a_sweeper_pass_finishes_both_and_exits_cleanly() {
    use bookstore_platform::db::Database;

    let dir = tempfile::tempdir().unwrap();
    let pauses = "relay-mid-batch=1*return(3000);books-release-expired-holds=1*return(3000)";
    let (mut child, gateway) =
        start_up_logging(dir.path(), &[], &[("FAILPOINTS", pauses)], Stdio::piped()).await;
    let gateway = gateway.expect("up prints the gateway's address");
    let stderr = child.stderr.take().unwrap();
    let (log_tx, mut log) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = log_tx.send(line);
        }
    });

    let http = reqwest::Client::new();
    assert_eq!(place_order(&http, &gateway).await, Some(reqwest::StatusCode::CREATED));
    // Wait until both units are under way: each says so when it reaches its pause point.
    let mut seen = Vec::new();
    let mut paused = std::collections::BTreeSet::new();
    while paused.len() < 2 {
        let line = tokio::time::timeout(Duration::from_secs(30), log.recv())
            .await
            .unwrap_or_else(|_| panic!("both pause points reached; log so far:\n{}", seen.join("\n")))
            .expect("the process is running");
        if line.contains("pausing at a test pause point") {
            for point in ["relay-mid-batch", "books-release-expired-holds"] {
                if line.contains(point) {
                    paused.insert(point);
                }
            }
        }
        seen.push(line);
    }
    assert!(Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap().success());
    let status = exit_within(child, Duration::from_secs(30)).await;
    while let Ok(line) = log.try_recv() {
        seen.push(line);
    }
    let log = seen.join("\n");
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(!log.contains(r#""level":"ERROR""#), "no error logged:\n{log}");
    for point in ["relay-mid-batch", "books-release-expired-holds"] {
        assert!(
            seen.iter().any(|l| l.contains("resuming after a test pause point") && l.contains(point)),
            "{point} finished its unit after the signal:\n{log}"
        );
    }
    let orders = Database::connect(
        &format!("sqlite://{}", dir.path().join("orders.db").display()),
        &Default::default(),
    )
    .await
    .unwrap();
    let unmarked: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM outbox WHERE published_at IS NULL")
        .fetch_one(orders.pool())
        .await
        .unwrap();
    assert_eq!(unmarked, 0, "the batch in hand was marked published before the exit");
}
