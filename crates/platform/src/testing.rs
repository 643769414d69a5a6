//! Fresh databases for tests, on either backend.
//!
//! SQLite always works (a file in a temporary folder). PostgreSQL needs
//! `BOOKSTORE_TEST_POSTGRES_URL` (a server URL whose user may create databases); each test gets
//! a database of its own, dropped when the test ends. Without the variable a PostgreSQL test
//! says loudly that it did not run, and under CI (`CI` set) it fails instead: CI must never pass
//! by skipping the real server.

use std::time::Duration;

use anyhow::Context;
use sqlx::{Connection, Executor};

use crate::db::{Backend, Database, Migrations, PoolConfig};

pub(crate) const POSTGRES_URL_VAR: &str = "BOOKSTORE_TEST_POSTGRES_URL";

/// A database that lives as long as the test holding it.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    postgres_drop: Option<(String, String)>,
}

impl TestDatabase {
    /// A fresh, empty database of `backend`, or `None` (after saying so) when PostgreSQL is not
    /// configured outside CI.
    pub async fn new(backend: Backend) -> Option<Self> {
        match backend {
            Backend::Sqlite => Some(Self::sqlite()),
            Backend::Postgres => {
                let admin_url = postgres_url_or_skip()?;
                Some(Self::postgres(&admin_url).await.expect("creating a PostgreSQL test database"))
            }
        }
    }

    pub fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("creating a temporary folder");
        let url = format!("sqlite://{}", dir.path().join("test.db").display());
        Self { url, _dir: Some(dir), postgres_drop: None }
    }

    async fn postgres(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("bookstore_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .with_context(|| format!("connecting to {POSTGRES_URL_VAR}"))?;
        admin.execute(format!(r#"CREATE DATABASE "{name}""#).as_str()).await?;
        admin.close().await?;
        let mut url = url::Url::parse(admin_url).context("parsing the PostgreSQL URL")?;
        url.set_path(&name);
        Ok(Self { url: url.to_string(), _dir: None, postgres_drop: Some((admin_url.to_owned(), name)) })
    }

    /// Connects and applies `migrations`.
    pub async fn connect(&self, migrations: &Migrations) -> Database {
        let db = Database::connect(&self.url, &PoolConfig::default())
            .await
            .expect("connecting to the test database");
        db.migrate(migrations).await.expect("migrating the test database");
        db
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres_drop.take() else { return };
        // Drop runs outside async; a short-lived thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            rt.block_on(async move {
                let Ok(mut admin) = sqlx::PgConnection::connect(&admin_url).await else { return };
                let _ = tokio::time::timeout(
                    Duration::from_secs(10),
                    admin.execute(format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#).as_str()),
                )
                .await;
            });
        })
        .join();
    }
}

pub(crate) const AMQP_URL_VAR: &str = "BOOKSTORE_TEST_AMQP_URL";

/// The value of `var`, which `what` tests need (`name` in the skip note): `None` with a loud
/// note when it is unset outside CI; a panic when it is unset under CI, which must run them all.
pub fn required_or_skip(var: &str, name: &str, what: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if std::env::var_os("CI").is_some() => panic!("{var} is not set, and CI must run the {what}"),
        _ => {
            eprintln!("SKIPPED ({name}): {var} is not set; this test did not run");
            None
        }
    }
}

/// The RabbitMQ URL for tests; `None` with a loud note when unset outside CI; a panic when
/// unset under CI.
pub fn amqp_url_or_skip() -> Option<String> {
    required_or_skip(AMQP_URL_VAR, "RabbitMQ", "RabbitMQ tests")
}

pub(crate) const RABBITMQ_SERVER_VAR: &str = "BOOKSTORE_TEST_RABBITMQ_SERVER";

pub(crate) const REDIS_URL_VAR: &str = "BOOKSTORE_TEST_REDIS_URL";

/// The shared Redis for tests (each test keeps to keys under a prefix of its own); `None` with a
/// loud note when unset outside CI; a panic when unset under CI.
pub fn redis_url_or_skip() -> Option<String> {
    required_or_skip(REDIS_URL_VAR, "Redis", "Redis tests")
}

/// A free port for a server a test stops and starts again on the same port: drawn below the
/// kernel's ephemeral range, so that while the server is down no outgoing connection of another
/// test can be given the port (one drawn with `bind(0)` comes from that range, and a restart
/// then fails now and then with "address in use").
pub fn restartable_port() -> u16 {
    use rand::Rng;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000.min(ephemeral_start / 2);
    let mut rng = rand::thread_rng();
    loop {
        let port = rng.gen_range(low..ephemeral_start);
        // Free on every IPv4 address (the Erlang distribution listens on all of them).
        if std::net::TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
}

/// A RabbitMQ node of one test's own, so the test can crash and restart a broker without
/// disturbing the shared one every other test uses. Started from the `rabbitmq-server` script
/// named by `BOOKSTORE_TEST_RABBITMQ_SERVER` (one that runs the node in the foreground as the
/// current user, like Debian's `/usr/lib/rabbitmq/bin/rabbitmq-server`), with its data, logs
/// and ports of its own; killed and deleted when dropped.
pub struct RabbitNode {
    server: std::path::PathBuf,
    dir: tempfile::TempDir,
    name: String,
    port: u16,
    dist_port: u16,
    process: Option<std::process::Child>,
    /// Whether it speaks AMQP over TLS alone.
    tls: bool,
}

impl RabbitNode {
    /// A running node, or `None` (after saying so) when the variable is unset outside CI; a
    /// panic when it is unset under CI or the node does not come up.
    pub async fn start_or_skip() -> Option<Self> {
        Self::start_with(None).await
    }

    /// As [`Self::start_or_skip`], a node that speaks AMQP over TLS alone, with the certificate
    /// and key `server.pem`/`server-key.pem` in `certs` and a client certificate signed by its
    /// `ca.pem` required (as [`crate::tls::dev_certs`] writes them).
    pub async fn start_tls_or_skip(certs: &std::path::Path) -> Option<Self> {
        Self::start_with(Some(certs)).await
    }

    async fn start_with(certs: Option<&std::path::Path>) -> Option<Self> {
        let server = std::path::PathBuf::from(required_or_skip(
            RABBITMQ_SERVER_VAR,
            "RabbitMQ restart",
            "broker restart and TLS tests",
        )?);
        let mut node = Self {
            server,
            dir: tempfile::tempdir().expect("creating a folder for the broker"),
            name: format!("bookstore-test-{}@localhost", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            port: restartable_port(),
            dist_port: restartable_port(),
            process: None,
            tls: certs.is_some(),
        };
        let config = match certs {
            None => format!("listeners.tcp.local = 127.0.0.1:{}\n", node.port),
            Some(certs) => format!(
                "listeners.tcp = none\nlisteners.ssl.local = 127.0.0.1:{port}\n\
                 ssl_options.cacertfile = {ca}\nssl_options.certfile = {cert}\nssl_options.keyfile = {key}\n\
                 ssl_options.verify = verify_peer\nssl_options.fail_if_no_peer_cert = true\n",
                port = node.port,
                ca = certs.join("ca.pem").display(),
                cert = certs.join("server.pem").display(),
                key = certs.join("server-key.pem").display(),
            ),
        };
        std::fs::write(node.dir.path().join("rabbitmq.conf"), config).expect("writing the broker's config");
        std::fs::write(node.dir.path().join("enabled_plugins"), "[].\n")
            .expect("writing the broker's plugins");
        node.start().await.expect("starting a RabbitMQ node of the test's own");
        Some(node)
    }

    /// Its URL: `amqps://` for a TLS node, without the files a client needs.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "amqps" } else { "amqp" };
        format!("{scheme}://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the node (again, after [`Self::kill`], on the same data) and waits until it
    /// accepts connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        use std::os::unix::process::CommandExt;
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join("console.log"))?;
        let child = std::process::Command::new(&self.server)
            .env("RABBITMQ_NODENAME", &self.name)
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("data"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            // A node that fails to boot writes erl_crash.dump where it runs: in its own folder.
            .current_dir(dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            // A group of its own, so a kill reaches the Erlang VM the script starts, too.
            .process_group(0)
            .spawn()
            .with_context(|| format!("running {}", self.server.display()))?;
        self.process = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.process.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let console = std::fs::read_to_string(dir.join("console.log")).unwrap_or_default();
                anyhow::bail!("the broker exited ({status}) before accepting connections:\n{console}");
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "the broker did not come up in 120 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the node the way an operator restarting it does (SIGTERM: the broker closes its
    /// clients' connections and shuts down cleanly), and waits until it is down.
    pub fn stop(&mut self) {
        let Some(mut child) = self.process.take() else { return };
        let _ = std::process::Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
        let _ = child.wait();
    }

    /// Kills the node outright (SIGKILL, no goodbye to its clients), like a crashed host.
    pub fn kill(&mut self) {
        let Some(mut child) = self.process.take() else { return };
        let _ =
            std::process::Command::new("kill").args(["-KILL", "--", &format!("-{}", child.id())]).status();
        let _ = child.wait();
    }
}

impl Drop for RabbitNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The variable naming the `etcd` executable the registry tests start (Debian's `/usr/bin/etcd`).
pub(crate) const ETCD_VAR: &str = "BOOKSTORE_TEST_ETCD";

/// An etcd server of one test's own (its data and ports), so the test can stop and restart it;
/// killed and deleted when dropped.
pub struct EtcdNode {
    etcd: std::path::PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    process: Option<std::process::Child>,
}

impl EtcdNode {
    /// A running server, or `None` (after saying so) when `BOOKSTORE_TEST_ETCD` is unset outside
    /// CI; a panic when it is unset under CI or the server does not come up.
    pub async fn start_or_skip() -> Option<Self> {
        let etcd = std::path::PathBuf::from(required_or_skip(ETCD_VAR, "etcd", "etcd tests")?);
        let mut node = Self {
            etcd,
            dir: tempfile::tempdir().expect("creating a folder for etcd"),
            client_port: restartable_port(),
            peer_port: restartable_port(),
            process: None,
        };
        node.start().await.expect("starting an etcd of the test's own");
        Some(node)
    }

    /// `etcd://127.0.0.1:<port>`, for `registry_url` (add `/<service>` for a peer URL).
    pub fn url(&self) -> String {
        format!("etcd://127.0.0.1:{}", self.client_port)
    }

    /// Starts the server (again, after [`Self::stop`], on the same data and ports) and waits
    /// until it answers.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let dir = self.dir.path();
        let log = std::fs::File::create(dir.join("etcd.log"))?;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = std::process::Command::new(&self.etcd)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(["--name", "test", "--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &format!("test={peer}"), "--log-level", "warn"])
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("running {}", self.etcd.display()))?;
        self.process = Some(child);
        let client = crate::etcd::Etcd::new(vec![client]);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if client.range_prefix("/").await.is_ok() {
                return Ok(());
            }
            if let Some(status) = self.process.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(dir.join("etcd.log")).unwrap_or_default();
                anyhow::bail!("etcd exited ({status}) before answering:\n{log}");
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "etcd did not come up in 60 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the server outright (SIGKILL), like a crashed host.
    pub fn stop(&mut self) {
        let Some(mut child) = self.process.take() else { return };
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for EtcdNode {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The variable naming the `prometheus` executable the scrape test starts (Debian's
/// `/usr/bin/prometheus`).
pub(crate) const PROMETHEUS_VAR: &str = "BOOKSTORE_TEST_PROMETHEUS";

/// A Prometheus server of one test's own, scraping the given targets every second, with its
/// data and port of its own; killed and deleted when dropped.
pub struct PrometheusNode {
    _dir: tempfile::TempDir,
    port: u16,
    process: std::process::Child,
}

impl PrometheusNode {
    /// A running server scraping `targets` (`host:port` of admin listeners, path `/metrics`),
    /// or `None` (after saying so) when `BOOKSTORE_TEST_PROMETHEUS` is unset outside CI; a panic
    /// when it is unset under CI or the server does not come up.
    pub async fn start_or_skip(targets: &[std::net::SocketAddr]) -> Option<Self> {
        let prometheus = required_or_skip(PROMETHEUS_VAR, "Prometheus", "the scrape test")?;
        Some(Self::start(&prometheus, targets).await.expect("starting a Prometheus of the test's own"))
    }

    async fn start(prometheus: &str, targets: &[std::net::SocketAddr]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: bookstore\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        );
        std::fs::write(dir.path().join("prometheus.yml"), config)?;
        let port = restartable_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log"))?;
        let process = std::process::Command::new(prometheus)
            .arg(format!("--config.file={}", dir.path().join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("running {prometheus}"))?;
        let mut node = Self { _dir: dir, port, process };
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if reqwest::get(&ready).await.is_ok_and(|r| r.status().is_success()) {
                return Ok(node);
            }
            if let Ok(Some(status)) = node.process.try_wait() {
                let log =
                    std::fs::read_to_string(node._dir.path().join("prometheus.log")).unwrap_or_default();
                anyhow::bail!("prometheus exited ({status}) before it was ready:\n{log}");
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "prometheus was not ready in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The series an instant query for `expr` returns, through Prometheus's HTTP API: each a
    /// `{"metric": {labels}, "value": [time, "value"]}`.
    pub async fn query(&self, expr: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let answer: serde_json::Value =
            reqwest::Client::new().get(url).query(&[("query", expr)]).send().await?.json().await?;
        anyhow::ensure!(answer["status"] == "success", "the query {expr} failed: {answer}");
        Ok(answer["data"]["result"].as_array().cloned().unwrap_or_default())
    }
}

impl Drop for PrometheusNode {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// The variable naming the folder of PostgreSQL's server programs (`initdb`, `postgres`; on
/// Debian `/usr/lib/postgresql/<version>/bin`), from which the TLS test starts a server of its own.
pub(crate) const POSTGRES_BIN_VAR: &str = "BOOKSTORE_TEST_POSTGRES_BIN";

/// A PostgreSQL server of one test's own with TLS on (`ssl = on`, a certificate from
/// [`crate::tls::dev_certs`] for `localhost`), on a port of its own, accepting any local user
/// (trust); stopped and deleted when dropped. Under root it runs as the `postgres` user, since
/// PostgreSQL refuses to run as root.
pub struct PostgresTlsNode {
    dir: tempfile::TempDir,
    port: u16,
    process: Option<std::process::Child>,
}

impl PostgresTlsNode {
    /// A running server, or `None` (after saying so) when `BOOKSTORE_TEST_POSTGRES_BIN` is unset
    /// outside CI; a panic when it is unset under CI or the server does not come up.
    pub async fn start_or_skip() -> Option<Self> {
        let bin = std::path::PathBuf::from(required_or_skip(
            POSTGRES_BIN_VAR,
            "PostgreSQL TLS",
            "PostgreSQL TLS test",
        )?);
        Some(Self::start(&bin).await.expect("starting a PostgreSQL of the test's own"))
    }

    async fn start(bin: &std::path::Path) -> anyhow::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir()?;
        crate::tls::dev_certs(&dir.path().join("certs"), &[])?;
        let root = std::fs::metadata("/proc/self")?.uid() == 0;
        if root {
            let chown =
                std::process::Command::new("chown").arg("-R").arg("postgres:").arg(dir.path()).status()?;
            anyhow::ensure!(chown.success(), "chown to postgres failed");
        }
        let command = |program: &str| {
            let path = bin.join(program);
            if root {
                let mut command = std::process::Command::new("runuser");
                command.args(["-u", "postgres", "--"]).arg(path);
                command
            } else {
                std::process::Command::new(path)
            }
        };
        let data = dir.path().join("data");
        let init = command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "--no-sync", "-E", "UTF8"])
            .output()
            .context("running initdb")?;
        anyhow::ensure!(init.status.success(), "initdb failed: {}", String::from_utf8_lossy(&init.stderr));
        let port = restartable_port();
        let certs = dir.path().join("certs");
        let log = std::fs::File::create(dir.path().join("postgres.log"))?;
        let child = command("postgres")
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "ssl=on"])
            .arg("-c")
            .arg(format!("ssl_cert_file={}", certs.join("server.pem").display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", certs.join("server-key.pem").display()))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("running postgres")?;
        let mut node = Self { dir, port, process: Some(child) };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let plain = node.url("sslmode=disable");
            if let Ok(db) = Database::connect(&plain, &PoolConfig::default()).await {
                db.close().await;
                return Ok(node);
            }
            if let Some(status) = node.process.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(node.dir.path().join("postgres.log")).unwrap_or_default();
                anyhow::bail!("postgres exited ({status}) before answering:\n{log}");
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "postgres did not come up in 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A URL of its `postgres` database, as `localhost` (the name its certificate is for), with
    /// `params` (e.g. `sslmode=verify-full&sslrootcert=...`).
    pub fn url(&self, params: &str) -> String {
        format!("postgres://postgres@localhost:{}/postgres?{params}", self.port)
    }

    /// The CA certificate that signed the server's.
    pub fn ca(&self) -> std::path::PathBuf {
        self.dir.path().join("certs").join("ca.pem")
    }
}

impl Drop for PostgresTlsNode {
    fn drop(&mut self) {
        let Some(mut child) = self.process.take() else { return };
        // Under runuser the server is its child: stop the server itself by its pid file.
        let pid = std::fs::read_to_string(self.dir.path().join("data").join("postmaster.pid"))
            .ok()
            .and_then(|text| text.lines().next().map(str::to_owned));
        if let Some(pid) = pid {
            let _ = std::process::Command::new("kill").args(["-QUIT", &pid]).status();
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The variable naming the `redis-server` executable the Redis restart tests start.
pub(crate) const REDIS_SERVER_VAR: &str = "BOOKSTORE_TEST_REDIS_SERVER";

/// A Redis server of one test's own (keeping nothing on disk) on a port of its own, so the test
/// can kill and restart it; killed when dropped.
pub struct RedisNode {
    server: std::path::PathBuf,
    port: u16,
    process: Option<std::process::Child>,
}

impl RedisNode {
    /// A running server, or `None` (after saying so) when `BOOKSTORE_TEST_REDIS_SERVER` is unset
    /// outside CI; a panic when it is unset under CI or the server does not come up.
    pub async fn start_or_skip() -> Option<Self> {
        let server = std::path::PathBuf::from(required_or_skip(
            REDIS_SERVER_VAR,
            "Redis restart",
            "Redis restart tests",
        )?);
        let mut node = Self { server, port: restartable_port(), process: None };
        node.start().await.expect("starting a Redis of the test's own");
        Some(node)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, after [`Self::kill`], on the same port), and waits until it
    /// accepts connections.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        let port = self.port.to_string();
        let child = std::process::Command::new(&self.server)
            .args(["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("running {}", self.server.display()))?;
        self.process = Some(child);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "Redis did not come up in 30 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Kills the server outright (SIGKILL), like a crashed host.
    pub fn kill(&mut self) {
        let Some(mut child) = self.process.take() else { return };
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for RedisNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The PostgreSQL server URL for tests; `None` with a loud note when unset outside CI; a panic
/// when unset under CI.
pub(crate) fn postgres_url_or_skip() -> Option<String> {
    match std::env::var(POSTGRES_URL_VAR) {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{POSTGRES_URL_VAR} is not set, and CI must run the PostgreSQL tests")
        }
        _ => {
            eprintln!("SKIPPED (PostgreSQL): {POSTGRES_URL_VAR} is not set; this test ran on SQLite only");
            None
        }
    }
}

/// Sends what the services log at warning and above to the test's captured output, so a failing
/// test shows why (a 500 says only "internal error"; the log says what failed). `RUST_LOG`
/// widens or narrows it. Spans are made as in a serving process (trace ids reach peers and
/// events), and exported nowhere. Safe to call from every test: only the first call installs.
pub fn capture_logs() {
    let provider = crate::trace::provider(&crate::trace::TracingSettings::local("bookstore"))
        .expect("a local tracer provider");
    // Another subscriber may be installed already (an earlier call, or the test's own).
    let _ = crate::telemetry::install(Some(&provider), crate::telemetry::Output::Test);
}

/// Generates one test per backend from one async test body `fn(Backend)`:
///
/// ```ignore
/// backend_tests!(store_round_trips_a_book);
/// async fn store_round_trips_a_book(backend: Backend) { ... }
/// ```
/// expands to `mod store_round_trips_a_book { #[tokio::test] async fn sqlite() ... postgres() }`.
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    $crate::testing::capture_logs();
                    super::$name($crate::db::Backend::Sqlite).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    $crate::testing::capture_logs();
                    super::$name($crate::db::Backend::Postgres).await;
                }
            }
        )*
    };
}

/// A token issuer for tests of services that verify tokens but do not issue them: an Ed25519
/// key of its own, a [`crate::auth::Verifier`] that trusts it, and tokens with any claims.
pub struct TestIssuer {
    pub kid: String,
    key: jsonwebtoken::EncodingKey,
    jwks: jsonwebtoken::jwk::JwkSet,
    signing: ed25519_dalek::SigningKey,
}

impl Default for TestIssuer {
    fn default() -> Self {
        Self::new()
    }
}

impl TestIssuer {
    pub fn new() -> Self {
        crate::jwt_crypto::install();
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing.to_pkcs8_der().expect("encoding a test key");
        let key = jsonwebtoken::EncodingKey::from_ed_der(der.as_bytes());
        let kid = format!("test-{}", uuid::Uuid::new_v4().simple());
        let jwk = crate::auth::ed25519_jwk(&kid, &signing.verifying_key().to_bytes());
        Self { kid, key, jwks: jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }, signing }
    }

    /// A verifier that trusts this issuer only.
    pub fn verifier(&self) -> std::sync::Arc<crate::auth::Verifier> {
        let jwks = self.jwks.clone();
        let source: crate::auth::JwksSource = std::sync::Arc::new(move || {
            let jwks = jwks.clone();
            Box::pin(async move { Ok(jwks) })
        });
        std::sync::Arc::new(crate::auth::Verifier::new(source, Duration::ZERO))
    }

    /// Claims that pass every check, valid for ten minutes.
    pub fn claims(&self, subject: &str, roles: &[crate::auth::Role]) -> crate::auth::Claims {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        crate::auth::Claims {
            iss: crate::auth::ISSUER.into(),
            aud: crate::auth::AUDIENCE.into(),
            sub: subject.into(),
            exp: now + 600,
            nbf: now,
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            roles: roles.to_vec(),
            scope: String::new(),
            sid: None,
        }
    }

    /// Signs `claims` as they are, however wrong.
    pub fn sign(&self, claims: &crate::auth::Claims) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).expect("signing a test token")
    }

    /// A valid token for `subject` with `roles`.
    pub fn token(&self, subject: &str, roles: &[crate::auth::Role]) -> String {
        self.sign(&self.claims(subject, roles))
    }

    /// The raw public key, as an attacker would find it in the JWKS.
    pub fn public_key_bytes(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }
}

/// A [`crate::service::Context`] for a test that builds one service alone: mode `serve`, the
/// given database, no bus or peers unless the test adds them, a 10 s request timeout.
pub fn context(
    name: &'static str,
    database: Option<crate::db::Database>,
    verifier: std::sync::Arc<crate::auth::Verifier>,
    tasks: crate::service::Tasks,
) -> crate::service::Context {
    crate::service::Context {
        name,
        mode: crate::service::Mode::Serve,
        data_dir: std::env::temp_dir(),
        database,
        bus: None,
        peers: Default::default(),
        verifier,
        local_tokens: None,
        master_key: None,
        request_timeout: Duration::from_secs(10),
        resilience: Default::default(),
        peer_tls: None,
        board: Default::default(),
        local: Default::default(),
        tasks,
    }
}

/// One span as an OTLP collector received it, reduced to what tests look at.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// The `service.name` of the process that sent it.
    pub service_name: String,
    pub name: String,
    /// Lowercase hex, as `traceparent` writes them; `parent_span_id` is empty for a root.
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    /// `server`, `client`, `consumer`, `producer` or `internal`.
    pub kind: &'static str,
    /// Attributes whose values are strings or integers, as text.
    pub attributes: std::collections::HashMap<String, String>,
    /// Whether the span says it failed (status ERROR).
    pub failed: bool,
}

/// An OTLP trace receiver on free ports, over gRPC (what a collector or Jaeger listens with on
/// 4317) and over HTTP (`POST /v1/traces`, protobuf, as on 4318): it keeps every span it is
/// sent, for tests of what the services export.
pub struct OtlpReceiver {
    /// Its gRPC address as `otlp_endpoint` takes it.
    pub endpoint: String,
    /// Its HTTP address as `otlp_endpoint` takes it with `otlp_protocol = "http/protobuf"`.
    pub http_endpoint: String,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    server: tokio::task::JoinHandle<()>,
    http_server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> Self {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let endpoint = format!("http://{}", listener.local_addr().expect("a bound port"));
        let spans = std::sync::Arc::default();
        let service = TraceServiceServer::new(Collector(std::sync::Arc::clone(&spans)));
        let server = tokio::spawn(async move {
            let incoming = tonic::transport::server::TcpIncoming::from(listener);
            let _ =
                tonic::transport::Server::builder().add_service(service).serve_with_incoming(incoming).await;
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let http_endpoint = format!("http://{}", listener.local_addr().expect("a bound port"));
        let kept = std::sync::Arc::clone(&spans);
        let export = move |body: axum::body::Bytes| {
            let kept = std::sync::Arc::clone(&kept);
            async move {
                use axum::response::IntoResponse;
                use opentelemetry_proto::tonic::collector::trace::v1 as otlp;
                use prost::Message;
                let Ok(request) = otlp::ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST.into_response();
                };
                kept.lock().expect("spans lock").extend(received(request));
                let answer = otlp::ExportTraceServiceResponse::default().encode_to_vec();
                ([(axum::http::header::CONTENT_TYPE, "application/x-protobuf")], answer).into_response()
            }
        };
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(export));
        let http_server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { endpoint, http_endpoint, spans, server, http_server }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans lock").clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
        self.http_server.abort();
    }
}

struct Collector(std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest>,
    ) -> Result<
        tonic::Response<opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse>,
        tonic::Status,
    > {
        self.0.lock().expect("spans lock").extend(received(request.into_inner()));
        Ok(tonic::Response::new(Default::default()))
    }
}

/// The spans of one export, as tests look at them.
fn received(
    request: opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
) -> Vec<ReceivedSpan> {
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value::Value};
    fn text(attributes: &[KeyValue]) -> std::collections::HashMap<String, String> {
        attributes
            .iter()
            .filter_map(|kv| {
                let value = match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(s) => s.clone(),
                    Value::IntValue(i) => i.to_string(),
                    Value::BoolValue(b) => b.to_string(),
                    _ => return None,
                };
                Some((kv.key.clone(), value))
            })
            .collect()
    }
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| text(&r.attributes)).unwrap_or_default();
        let service_name = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(ReceivedSpan {
                service_name: service_name.clone(),
                name: span.name.clone(),
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                kind: match span.kind {
                    2 => "server",
                    3 => "client",
                    4 => "producer",
                    5 => "consumer",
                    _ => "internal",
                },
                attributes: text(&span.attributes),
                // STATUS_CODE_ERROR
                failed: span.status.is_some_and(|s| s.code == 2),
            });
        }
    }
    received
}
