//! Many hosts, for real: Linux network namespaces joined by veth pairs to a bridge, one per
//! host, each with an address of its own. etcd, users, two books, orders and the gateway each
//! run on their own host, find each other through etcd, and the test drives the shop from the
//! bridge like a client from outside. Then one books host is killed, and the shop keeps selling.
//!
//! A PostgreSQL cluster, a RabbitMQ node and a Redis server of the test's own run on two more
//! hosts, listening on their bridge addresses (the shared servers listen on loopback only): a
//! database per service, the two books hosts sharing theirs, orders' events on the broker.
//!
//! It is also the rehearsal of a deployment. Every bookstore process is configured only by the
//! deployment's environment files (`deploy/env/`, which the compose stack and the Kubernetes
//! manifests read too) and secret files under `/run/secrets`, and finds its peers by the names
//! those files use (`etcd`, `postgres`, `rabbitmq`, `redis`, each host's `/etc/hosts`). It runs
//! as the image runs it: a user other than root (65532) with no capabilities, on a read-only
//! root filesystem where only `/tmp` and `/var/lib/bookstore` can be written (bubblewrap).
//! The migrations and the service accounts are the deployment's jobs, run first; every
//! process's probes are asked on its admin port.
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

    /// Gives every host the same `/etc/hosts`: `ip netns exec` mounts `/etc/netns/<ns>/hosts`
    /// over it, as a cluster's DNS would answer for its services.
    fn name_hosts(&self, names: &[(&str, usize)]) {
        let mut text = String::from("127.0.0.1 localhost\n");
        for (name, host) in names {
            text.push_str(&format!("{} {name}\n", self.addr(*host)));
        }
        for ns in &self.names {
            let dir = format!("/etc/netns/{ns}");
            std::fs::create_dir_all(&dir).expect("making a host's /etc");
            std::fs::write(format!("{dir}/hosts"), &text).expect("writing a host's /etc/hosts");
        }
    }

    /// Runs `program args` on host `host`; a bookstore's stdout is piped, a server's output
    /// goes to its log.
    fn run(
        &mut self,
        host: usize,
        label: &str,
        program: &str,
        args: &[String],
        env: &[(&str, String)],
    ) -> &mut Child {
        let mut command = crate::clean_command("ip", "error");
        command.args(["netns", "exec", &self.names[host], program]).args(args);
        command.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        // A group of its own, so a kill reaches what the program starts (postgres under
        // runuser, the Erlang VM under rabbitmq-server).
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        // The bookstore's output is read (for its addresses); a server's goes to its log file,
        // kept when the test fails.
        let (stdout, stderr) = if program == BIN || args.iter().any(|a| a == BIN) {
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

    /// Waits for a job to finish.
    fn wait(&mut self, label: &str) -> std::process::ExitStatus {
        let (_, child) =
            self.processes.iter_mut().find(|(l, _)| l == label).expect("a process of that label");
        child.wait().expect("waiting for a job")
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
            let _ = std::fs::remove_dir_all(format!("/etc/netns/{ns}"));
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
    let Some(etcd_bin) = required("BOOKSTORE_TEST_ETCD") else { return };
    let Some(rabbitmq_server) = required("BOOKSTORE_TEST_RABBITMQ_SERVER") else { return };
    let Some(redis_server) = required("BOOKSTORE_TEST_REDIS_SERVER") else { return };
    let Some(bwrap) = which("bwrap") else {
        assert!(std::env::var_os("CI").is_none(), "no bwrap (bubblewrap), and CI must run the hosts test");
        eprintln!("SKIPPED (hosts): no bwrap (Debian's bubblewrap) on the PATH; this test did not run");
        return;
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
    // The names the deployment's files use for what it runs beside the shop.
    hosts.name_hosts(&[("etcd", etcd), ("postgres", db), ("rabbitmq", mq), ("redis", mq)]);

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
    // Redis beside it: the gateways' shared rate-limit counts.
    let args: Vec<String> = ["--bind", &mq_addr, "--port", "6379", "--save", "", "--appendonly", "no"]
        .iter()
        .chain(&["--protected-mode", "no"])
        .map(|s| s.to_string())
        .collect();
    hosts.run(mq, "redis", &redis_server, &args, &[]);

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

    // The servers answer across the bridge; a database per service.
    let pg = format!("postgres://postgres@{db_addr}:5432");
    until("PostgreSQL on the db host", Duration::from_secs(60), || async {
        sqlx::PgPool::connect(&format!("{pg}/postgres")).await.is_ok()
    })
    .await;
    let admin_pool = sqlx::PgPool::connect(&format!("{pg}/postgres")).await.unwrap();
    for name in SERVICES {
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin_pool).await.unwrap();
    }
    admin_pool.close().await;
    until("RabbitMQ on the mq host", Duration::from_secs(60), || async {
        tokio::net::TcpStream::connect((mq_addr.as_str(), 5672)).await.is_ok()
    })
    .await;

    // The deployment's secrets, as files; the URLs name the servers as the deployment does.
    let secrets = tempfile::tempdir().unwrap();
    let mut files = vec![
        ("master-key", bookstore_platform::crypto::MasterKey::generate_base64()),
        ("admin-password", PASSWORD.to_owned()),
        ("amqp-url", "amqp://guest:guest@rabbitmq:5672/%2f".to_owned()),
        ("redis-url", "redis://redis:6379".to_owned()),
        ("orders-client-secret", "orders-secret-of-this-test-".repeat(2)),
        ("recommendations-client-secret", "recommendations-secret-of-this-test".to_owned()),
    ];
    for name in SERVICES {
        files.push((
            leak(format!("{name}-database-url")),
            format!("postgres://postgres@postgres:5432/{name}"),
        ));
    }
    // Readable by the service's user only, as a Secret volume mounts them (0440, its group).
    for (name, value) in &files {
        let file = secrets.path().join(name);
        std::fs::write(&file, format!("{value}\n")).unwrap();
        std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o400)).unwrap();
        give_to_the_service_user(&file);
    }
    give_to_the_service_user(secrets.path());
    let secrets = secrets.path().display().to_string();
    let sandbox = Sandbox { bwrap, secrets: secrets.clone() };

    // The deployment's jobs first: every database migrated, then the service accounts.
    let migrate = sandbox.command(&path("data-migrate"), &["migrate"]);
    let env = deployment_env(&["common", "migrate"]);
    let done = hosts.run(orders, "migrate", &migrate[0], &migrate[1..], &env).wait().unwrap();
    assert!(done.success(), "the migrate job failed");
    let provision = sandbox.command(&path("data-provision"), &["admin", "provision-service-accounts"]);
    let child = hosts.run(orders, "provision", &provision[0], &provision[1..], &env);
    let said = line_of(child, "orders: service account svc-orders ").await;
    assert!(said.starts_with("created"), "the orders account was created: {said}");
    assert!(hosts.wait("provision").success(), "the service-accounts job failed");

    // A service on its host: `serve <service>` as the image runs it, from its files alone.
    let serve = |hosts: &mut Hosts, host: usize, label: &str, service: &str, extra: &[&str]| {
        let mut args = vec!["serve", service];
        args.extend(extra);
        let command = sandbox.command(&path(&format!("data-{label}")), &args);
        let env = deployment_env(&["common", service]);
        hosts.run(host, label, &command[0], &command[1..], &env);
    };
    serve(&mut hosts, users, "users", "users", &[]);
    serve(&mut hosts, books1, "books1", "books", &["--seed"]);
    serve(&mut hosts, books2, "books2", "books", &[]);
    serve(&mut hosts, orders, "orders", "orders", &[]);
    serve(&mut hosts, gateway, "gateway", "gateway", &[]);
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    // Every process's probes, on its admin port, as the orchestrator asks them.
    for host in [users, books1, books2, orders, gateway] {
        let admin = format!("http://{}:9180", hosts.addr(host));
        until(&format!("{} to be ready", names[host]), Duration::from_secs(90), || async {
            http.get(format!("{admin}/readyz")).send().await.is_ok_and(|r| r.status() == 200)
        })
        .await;
        let live = http.get(format!("{admin}/healthz")).send().await.unwrap();
        assert_eq!(live.status(), 200, "{} is live", names[host]);
    }
    let base = format!("http://{}:8080", hosts.addr(gateway));

    until("the gateway to reach books across hosts", Duration::from_secs(60), || async {
        http.get(format!("{base}/api/v1/books?limit=1")).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;
    // Each replica registered the address it is reached at (bound to 0.0.0.0, it found its own).
    let registered = registered_addrs(&etcd_addr, "books", 2).await;
    let want: Vec<String> = [books1, books2].iter().map(|h| format!("{}:50051", hosts.addr(*h))).collect();
    assert_eq!(registered, want, "both books replicas registered by their own host's address");
    let admin = crate::login(&http, &base, "admin", PASSWORD).await;

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
    // Orders finds books and users through etcd too, and calls books as the provisioned
    // account; the first checkout may wait for discovery.
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

/// The executable of a server the test starts, named by `variable`. Unset, the test is
/// skipped (and says so) outside CI; in CI it fails.
fn required(variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(path) if !path.is_empty() => Some(path),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{variable} is not set, and CI must run the hosts test")
        }
        _ => {
            eprintln!("SKIPPED (hosts): {variable} is not set; this test did not run");
            None
        }
    }
}

/// Every service with a database of its own.
const SERVICES: [&str; 5] = ["books", "users", "orders", "fulfillment", "recommendations"];

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

fn which(program: &str) -> Option<String> {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
        .map(|p| p.display().to_string())
}

/// The variables of the deployment's environment files (`deploy/env/<name>.env`, later files
/// winning), as the compose stack and the Kubernetes ConfigMaps set them. Two are this test's
/// own: quieter logs, and no trace collector (there is none on these hosts).
fn deployment_env(files: &[&str]) -> Vec<(&'static str, String)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/env");
    let mut vars: Vec<(&'static str, String)> = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(dir.join(format!("{file}.env"))).expect("reading an env file");
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (key, value) =
                line.split_once('=').unwrap_or_else(|| panic!("{file}.env: not KEY=VALUE: {line}"));
            vars.retain(|(k, _)| *k != key);
            vars.push((leak(key.to_owned()), value.to_owned()));
        }
    }
    vars.retain(|(k, _)| *k != "BOOKSTORE_OTLP_ENDPOINT" && *k != "RUST_LOG");
    vars.push(("RUST_LOG", "error".to_owned()));
    vars
}

/// The user the image runs as (distroless's `nonroot`).
const SERVICE_USER: u32 = 65532;
/// Where the image keeps the binary (deploy/Dockerfile).
const IMAGE_BIN: &str = "/usr/local/bin/bookstore";

fn give_to_the_service_user(path: &std::path::Path) {
    std::os::unix::fs::chown(path, Some(SERVICE_USER), Some(SERVICE_USER))
        .expect("giving a file to the service's user");
}

/// How the image runs the binary: as user 65532 (a real one: files are checked against it)
/// with no capabilities and no way to gain any, on a read-only root filesystem with a fresh
/// `/tmp`, its own data folder at `/var/lib/bookstore`, and the secrets at `/run/secrets`
/// (read-only). bubblewrap, started as root, makes the mounts; setpriv, inside them, drops to
/// the user before the binary starts.
struct Sandbox {
    bwrap: String,
    secrets: String,
}

impl Sandbox {
    fn command(&self, data: &str, args: &[&str]) -> Vec<String> {
        std::fs::create_dir_all(data).expect("making a data folder");
        give_to_the_service_user(std::path::Path::new(data));
        let user = SERVICE_USER.to_string();
        let (uid, gid) = (format!("--reuid={user}"), format!("--regid={user}"));
        let mut command: Vec<String> =
            [&self.bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
                .iter()
                .chain(&["--perms", "1777", "--tmpfs", "/tmp", "--tmpfs", "/var/lib"])
                .chain(&["--bind", data, "/var/lib/bookstore"])
                .chain(&["--tmpfs", "/run", "--ro-bind", &self.secrets, "/run/secrets"])
                // Where the image has it (the build's own path may be under the fresh /tmp).
                .chain(&["--tmpfs", "/usr/local/bin", "--ro-bind", BIN, IMAGE_BIN, "--die-with-parent", "--"])
                .chain(&["setpriv", &uid, &gid, "--clear-groups", "--inh-caps=-all", "--bounding-set=-all"])
                .chain(&["--no-new-privs", "--", IMAGE_BIN])
                .map(|s| s.to_string())
                .collect();
        command.extend(args.iter().map(|s| s.to_string()));
        command
    }
}

/// The addresses registered under `service` in the etcd at `addr`, sorted, once there are
/// `count` of them.
async fn registered_addrs(addr: &str, service: &str, count: usize) -> Vec<String> {
    let source =
        bookstore_platform::discovery::Source::parse(&format!("etcd://{addr}:2379/{service}")).unwrap();
    let (mut targets, _) = source.watch().await;
    let mut addrs = Vec::new();
    until(&format!("{count} {service} replicas registered"), Duration::from_secs(30), || {
        addrs = targets
            .borrow_and_update()
            .iter()
            .map(|t| t.url.trim_start_matches("http://").to_owned())
            .collect();
        addrs.sort();
        let n = addrs.len();
        async move { n == count }
    })
    .await;
    addrs
}
