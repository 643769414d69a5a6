//! Many hosts, for real: Linux network namespaces joined by veth pairs to a bridge, one per
//! host, each with an address of its own. etcd, users, two books, orders and the gateway each
//! run on their own host, find each other through etcd, and the test drives the shop from the
//! bridge like a client from outside. Then one books host is killed, and the shop keeps selling.
//!
//! A PostgreSQL cluster and a RabbitMQ node of the test's own run on two more hosts, listening
//! on their bridge addresses (the shared servers listen on loopback only): a database per
//! service, the two books hosts sharing theirs, orders' events on the broker.
//!
//! Needs root (to make namespaces and run PostgreSQL as its own user). In CI a failure to make
//! them fails the test; elsewhere the test says SKIPPED and returns.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::until;

const BIN: &str = env!("CARGO_BIN_EXE_bookstore");
const PASSWORD: &str = "hosts test admin passphrase";

/// The namespaces, bridge and processes of one run; all removed when dropped.
struct Hosts {
    prefix: String,
    subnet: String,
    names: Vec<String>,
    processes: Vec<(String, Child)>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).output().map_err(|e| format!("ip {args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

impl Hosts {
    /// A bridge at `<subnet>.1` and one namespace per name at `<subnet>.<10 + i>`.
    fn build(names: &[&str]) -> Result<Self, String> {
        let n = std::process::id() % 200;
        let prefix = format!("bs{n}");
        let subnet = format!("10.213.{}", n + 20);
        let mut hosts =
            Self { prefix: prefix.clone(), subnet: subnet.clone(), names: Vec::new(), processes: Vec::new() };
        let bridge = format!("{prefix}br");
        // What a run that was killed (and so never cleaned up) may have left under this prefix.
        for name in names {
            let _ = ip(&["netns", "del", &format!("{prefix}-{name}")]);
        }
        let _ = ip(&["link", "del", &bridge]);
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", &bridge])?;
        ip(&["link", "set", &bridge, "up"])?;
        for (i, name) in names.iter().enumerate() {
            let ns = format!("{prefix}-{name}");
            ip(&["netns", "add", &ns])?;
            hosts.names.push(ns.clone());
            let (outside, inside) = (format!("{prefix}v{i}"), format!("{prefix}p{i}"));
            ip(&["link", "add", &outside, "type", "veth", "peer", "name", &inside])?;
            ip(&["link", "set", &outside, "master", &bridge])?;
            ip(&["link", "set", &outside, "up"])?;
            ip(&["link", "set", &inside, "netns", &ns])?;
            ip(&["-n", &ns, "link", "set", &inside, "name", "eth0"])?;
            ip(&["-n", &ns, "addr", "add", &format!("{subnet}.{}/24", 10 + i), "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        }
        Ok(hosts)
    }

    fn addr(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, 10 + host)
    }

    /// Runs `program args` on host `host`, its stdout piped.
    fn run(
        &mut self,
        host: usize,
        label: &str,
        program: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> &mut Child {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.names[host], program]).args(args);
        for (key, _) in std::env::vars() {
            if key.starts_with("BOOKSTORE_") {
                command.env_remove(key);
            }
        }
        command.env("RUST_LOG", "error").envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        // A group of its own, so a kill reaches what the program starts (postgres under
        // runuser, the Erlang VM under rabbitmq-server).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        // The bookstore's output is read (for its addresses); a server's goes to its log file,
        // kept when the test fails.
        let (stdout, stderr) = if program == BIN {
            (Stdio::piped(), Stdio::inherit())
        } else {
            let log = std::fs::File::create(self.log(label)).expect("creating a server's log");
            (Stdio::from(log.try_clone().unwrap()), Stdio::from(log))
        };
        let child = command.stdout(stdout).stderr(stderr).spawn().expect("starting a host's process");
        self.processes.push((label.to_owned(), child));
        &mut self.processes.last_mut().unwrap().1
    }

    /// Where a server started by [`Hosts::run`] writes its output.
    fn log(&self, label: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("{}-{label}.log", self.prefix))
    }

    fn kill(&mut self, label: &str) {
        if let Some((_, child)) = self.processes.iter_mut().find(|(l, _)| l == label) {
            kill_group(child);
        }
    }
}

fn kill_group(child: &mut Child) {
    let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
    let _ = child.wait();
}

impl Drop for Hosts {
    fn drop(&mut self) {
        for (label, child) in &mut self.processes {
            kill_group(child);
            let log = std::env::temp_dir().join(format!("{}-{label}.log", self.prefix));
            if std::thread::panicking() {
                eprintln!("server log kept: {}", log.display());
            } else {
                let _ = std::fs::remove_file(log);
            }
        }
        for ns in &self.names {
            let _ = ip(&["netns", "del", ns]);
        }
        let _ = ip(&["link", "del", &format!("{}br", self.prefix)]);
    }
}

/// The folder of the newest PostgreSQL server's binaries (Debian's layout).
fn postgres_bin() -> Option<String> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    versions.sort_unstable();
    let bin = format!("/usr/lib/postgresql/{}/bin", versions.last()?);
    std::path::Path::new(&bin).join("postgres").exists().then_some(bin)
}

/// Waits until the process prints a line starting with `prefix`; the rest of it.
async fn line_of(child: &mut Child, prefix: &'static str) -> String {
    let stdout = child.stdout.take().unwrap();
    tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let found = lines.by_ref().find_map(|l| l.ok()?.strip_prefix(prefix).map(str::to_owned));
        std::thread::spawn(move || lines.for_each(drop));
        found.unwrap_or_else(|| panic!("the process never printed {prefix:?}"))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shop_works_across_hosts_and_keeps_selling_when_a_books_host_dies() {
    let etcd_bin = match std::env::var("BOOKSTORE_TEST_ETCD") {
        Ok(path) if !path.is_empty() => path,
        _ if std::env::var_os("CI").is_some() => {
            panic!("BOOKSTORE_TEST_ETCD is not set, and CI must run the hosts test")
        }
        _ => {
            eprintln!("SKIPPED (hosts): BOOKSTORE_TEST_ETCD is not set; this test did not run");
            return;
        }
    };
    let rabbitmq_server = match std::env::var("BOOKSTORE_TEST_RABBITMQ_SERVER") {
        Ok(path) if !path.is_empty() => path,
        _ if std::env::var_os("CI").is_some() => {
            panic!("BOOKSTORE_TEST_RABBITMQ_SERVER is not set, and CI must run the hosts test")
        }
        _ => {
            eprintln!("SKIPPED (hosts): BOOKSTORE_TEST_RABBITMQ_SERVER is not set; this test did not run");
            return;
        }
    };
    let Some(pg_bin) = postgres_bin() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "no PostgreSQL server binaries, and CI must run the hosts test"
        );
        eprintln!(
            "SKIPPED (hosts): no PostgreSQL server binaries under /usr/lib/postgresql; this test did not run"
        );
        return;
    };
    let names = ["etcd", "users", "books1", "books2", "orders", "gateway", "db", "mq"];
    let mut hosts = match Hosts::build(&names) {
        Ok(hosts) => hosts,
        Err(e) if std::env::var_os("CI").is_some() => panic!("could not build the hosts' network: {e}"),
        Err(e) => {
            eprintln!("SKIPPED (hosts): could not build network namespaces ({e}); this test did not run");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let path = |p: &str| dir.path().join(p).display().to_string();
    let (etcd, users, books1, books2, orders, gateway, db, mq) = (0, 1, 2, 3, 4, 5, 6, 7);

    // A PostgreSQL cluster of the test's own on the db host (trust auth, no fsync: a test's).
    let pg_root = tempfile::tempdir().unwrap();
    std::fs::set_permissions(pg_root.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let pg_data = pg_root.path().join("data").display().to_string();
    std::fs::create_dir(&pg_data).unwrap();
    let chowned = Command::new("chown").args(["postgres:postgres", &pg_data]).status().unwrap();
    assert!(chowned.success(), "giving the cluster's folder to the postgres user");
    let initdb = Command::new("runuser")
        .args(["-u", "postgres", "--", &format!("{pg_bin}/initdb"), "-D", &pg_data, "--auth=trust"])
        .args(["-U", "postgres", "--no-sync", "-E", "UTF8"])
        .output()
        .unwrap();
    assert!(initdb.status.success(), "initdb: {}", String::from_utf8_lossy(&initdb.stderr));
    // The hosts reach it over the bridge's subnet.
    let hba = format!("{pg_data}/pg_hba.conf");
    let mut rules = std::fs::read_to_string(&hba).unwrap();
    rules.push_str(&format!("host all all {}.0/24 trust\n", hosts.subnet));
    std::fs::write(&hba, rules).unwrap();
    let db_addr = hosts.addr(db);
    let args: Vec<String> =
        ["-u", "postgres", "--", &format!("{pg_bin}/postgres"), "-D", &pg_data, "-k", &pg_data]
            .iter()
            .map(|s| s.to_string())
            .chain(
                ["-c", &format!("listen_addresses={db_addr}"), "-c", "fsync=off", "-p", "5432"]
                    .map(String::from),
            )
            .collect();
    hosts.run(db, "postgres", "runuser", &args, &[]);

    // A RabbitMQ node of the test's own on the mq host, taking guests from other hosts.
    let mq_addr = hosts.addr(mq);
    let mq_dir = tempfile::tempdir().unwrap();
    let mq_path = |p: &str| mq_dir.path().join(p).display().to_string();
    std::fs::write(
        mq_path("rabbitmq.conf"),
        format!("listeners.tcp.1 = {mq_addr}:5672\nloopback_users = none\n"),
    )
    .unwrap();
    std::fs::write(mq_path("enabled_plugins"), "[].\n").unwrap();
    let mq_env = [
        ("RABBITMQ_NODENAME", format!("{}-mq@localhost", hosts.prefix)),
        ("RABBITMQ_NODE_PORT", "5672".to_owned()),
        ("RABBITMQ_DIST_PORT", "25672".to_owned()),
        ("RABBITMQ_CONFIG_FILE", mq_path("rabbitmq.conf")),
        ("RABBITMQ_ENABLED_PLUGINS_FILE", mq_path("enabled_plugins")),
        ("RABBITMQ_MNESIA_BASE", mq_path("data")),
        ("RABBITMQ_LOG_BASE", mq_path("log")),
        ("RABBITMQ_PID_FILE", mq_path("pid")),
    ];
    // Erlang's port mapper, started here in the foreground: left to the broker, it would
    // daemonize out of the test's reach and outlive the test.
    hosts.run(mq, "epmd", "epmd", &["-address".to_owned(), format!("127.0.0.1,{mq_addr}")], &[]);
    until("epmd on the mq host", Duration::from_secs(60), || async {
        tokio::net::TcpStream::connect((mq_addr.as_str(), 4369)).await.is_ok()
    })
    .await;
    hosts.run(mq, "rabbitmq", &rabbitmq_server, &[], &mq_env);

    let etcd_addr = hosts.addr(etcd);
    let client = format!("http://{etcd_addr}:2379");
    let peer = format!("http://{etcd_addr}:2380");
    let args: Vec<String> = [
        "--data-dir",
        &path("etcd"),
        "--name",
        "hosts",
        "--listen-client-urls",
        &client,
        "--advertise-client-urls",
        &client,
        "--listen-peer-urls",
        &peer,
        "--initial-advertise-peer-urls",
        &peer,
        "--initial-cluster",
        &format!("hosts={peer}"),
        "--log-level",
        "warn",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    hosts.run(etcd, "etcd", &etcd_bin, &args, &[]);
    let registry = format!("etcd://{etcd_addr}:2379");

    // The servers answer across the bridge; a database per service.
    let pg = format!("postgres://postgres@{db_addr}:5432");
    until("PostgreSQL on the db host", Duration::from_secs(60), || async {
        sqlx::PgPool::connect(&format!("{pg}/postgres")).await.is_ok()
    })
    .await;
    let admin_pool = sqlx::PgPool::connect(&format!("{pg}/postgres")).await.unwrap();
    for name in ["books", "users", "orders"] {
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin_pool).await.unwrap();
    }
    admin_pool.close().await;
    until("RabbitMQ on the mq host", Duration::from_secs(60), || async {
        tokio::net::TcpStream::connect((mq_addr.as_str(), 5672)).await.is_ok()
    })
    .await;
    let amqp = format!("amqp://guest:guest@{mq_addr}:5672/%2f");

    // A service on its host: `serve <service>` on its own address, registered in etcd.
    let serve = |hosts: &Hosts, host: usize, service: &str, extra: &[&str]| -> Vec<String> {
        let addr = hosts.addr(host);
        let mut args: Vec<String> = vec!["serve".into(), service.into()];
        if service != "gateway" {
            args.extend([format!("--{service}-grpc"), format!("{addr}:50051")]);
        }
        args.extend([
            "--admin-http".into(),
            format!("{addr}:9180"),
            "--registry-url".into(),
            registry.clone(),
            "--data-dir".into(),
            path(&format!("data-{host}")),
        ]);
        for peer in ["books", "users", "orders"] {
            args.extend([format!("--{peer}-url"), format!("{registry}/{peer}")]);
        }
        if service != "gateway" {
            args.extend([format!("--{service}-database-url"), format!("{pg}/{service}")]);
        }
        args.extend(["--amqp-url".into(), amqp.clone()]);
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let key = bookstore_platform::crypto::MasterKey::generate_base64();
    let users_env =
        [("BOOKSTORE_MASTER_KEY", key.clone()), ("BOOKSTORE_ADMIN_PASSWORD", PASSWORD.to_owned())];
    let args = serve(&hosts, users, "users", &[]);
    let child = hosts.run(users, "users", BIN, &args, &users_env);
    line_of(child, "users    gRPC on").await;
    let args = serve(&hosts, books1, "books", &["--seed"]);
    line_of(hosts.run(books1, "books1", BIN, &args, &[]), "books    gRPC on").await;
    let args = serve(&hosts, books2, "books", &[]);
    line_of(hosts.run(books2, "books2", BIN, &args, &[]), "books    gRPC on").await;
    let http_addr = format!("{}:8080", hosts.addr(gateway));
    let args = serve(&hosts, gateway, "gateway", &["--http", &http_addr]);
    line_of(hosts.run(gateway, "gateway", BIN, &args, &[]), "gateway  http://").await;
    let base = format!("http://{http_addr}");
    let http = reqwest::Client::builder().no_proxy().build().unwrap();

    until("the gateway to reach books across hosts", Duration::from_secs(60), || async {
        http.get(format!("{base}/api/v1/books?limit=1")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    let admin = crate::login(&http, &base, "admin", PASSWORD).await;
    let url = format!("{base}/api/v1/service-accounts");
    let account = crate::post_json(
        &http,
        &url,
        &admin,
        &json!({"name": "orders", "scopes": ["books:read", "books:reserve"]}),
    )
    .await;
    let orders_env = [
        ("BOOKSTORE_ORDERS_CLIENT_ID", account["client_id"].as_str().unwrap().to_owned()),
        ("BOOKSTORE_ORDERS_CLIENT_SECRET", account["client_secret"].as_str().unwrap().to_owned()),
        ("BOOKSTORE_MASTER_KEY", key),
    ];
    let args = serve(&hosts, orders, "orders", &[]);
    line_of(hosts.run(orders, "orders", BIN, &args, &orders_env), "orders   gRPC on").await;

    let page: Value =
        http.get(format!("{base}/api/v1/books?limit=5")).send().await.unwrap().json().await.unwrap();
    let book = page["items"][0]["id"].as_str().unwrap().to_owned();
    let checkout = |key: String| {
        let (http, base, admin, book) = (http.clone(), base.clone(), admin.clone(), book.clone());
        async move {
            http.post(format!("{base}/api/v1/orders"))
                .bearer_auth(&admin)
                .header("idempotency-key", key)
                .json(&json!({"lines": [{"book_id": book, "quantity": 1}], "shipping_address": crate::shipping_address()}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    // Orders finds books and users through etcd too; the first checkout may wait for it.
    let started = Instant::now();
    loop {
        let status = checkout("first-order".into()).await;
        if status == 201 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(60), "no checkout across the hosts: {status}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    hosts.kill("books2");
    let mut failed = 0;
    for n in 0..200 {
        let read = http.get(format!("{base}/api/v1/books/{book}")).send().await;
        failed +=
            usize::from(!read.is_ok_and(|r| r.status() == 200 && r.headers().get("x-degraded").is_none()));
        if n % 20 == 0 {
            assert_eq!(
                checkout(format!("after-kill-{n}")).await,
                201,
                "a checkout after the books host died"
            );
        }
    }
    assert_eq!(failed, 0, "{failed} of 200 reads failed after a books host died");
}
