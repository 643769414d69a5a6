//! The `bookstore` executable itself: its help, its config errors, and `up` with SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_bookstore");

fn bookstore() -> Command {
    let mut cmd = Command::new(BIN);
    // The test's own environment must not configure the child.
    for (key, _) in std::env::vars() {
        if key.starts_with("BOOKSTORE_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("RUST_LOG", "warn");
    cmd
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
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (gateway, admin_password) = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        let mut admin_password = None;
        let gateway = lines.find_map(|line| {
            let line = line.ok()?;
            if let Some(rest) = line.strip_prefix("admin password: ") {
                admin_password = rest.split_whitespace().next().map(str::to_owned);
            }
            line.strip_prefix("gateway  http://")
                .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
        });
        // Keep reading, as a terminal would, until the process closes its output.
        std::thread::spawn(move || lines.for_each(drop));
        (gateway.expect("up prints the gateway's address"), admin_password)
    })
    .await
    .unwrap();
    let admin_password = admin_password.expect("up prints the generated admin password once");
    assert!(dir.path().join("master.key").exists(), "up keeps its generated master key with the data");

    let http = reqwest::Client::new();
    let ready = http.get(format!("http://{gateway}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
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
    let status = tokio::task::spawn_blocking(move || {
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        child.kill().unwrap();
        panic!("bookstore did not stop within 10 s of SIGTERM");
    })
    .await
    .unwrap();
    assert!(status.success(), "exit status {status}");
}
