//! A fixed workload for the instruction-count gate (`.ci/instructions.sh`), not a test.
//!
//! Starts the whole shop in this process as `bookstore up` does (SQLite and the embedded event
//! log in a temporary folder, every listener on port 0), signs in an admin and one customer,
//! then runs one phase and exits:
//!
//! - `start`: nothing more (what every other phase also pays, subtracted from them);
//! - `reads N`: `GET /api/v1/books/{id}` N times, cycling through the first 100 books;
//! - `checkouts N`: N one-line orders, one after another, cycling through the same books.
//!
//! Everything that could make two runs differ is fixed: one `current_thread` runtime, requests
//! one at a time (so every confirmation group holds one order), the books read cache off (no
//! hit or miss decided by a clock), the same ids in the same order, no polling for other
//! processes' work ([`bookstore_platform::clock::set_idle_poll`]). What is left (a sweeper firing
//! once more or less on a slow machine) is far below the gate's margin.
#![forbid(unsafe_code)]

use std::time::Duration;

use bookstore::{App, Config};
use bookstore_platform::service::Mode;
use serde_json::{Value, json};

// The allocator the shipped binary uses, so its cost is counted as it ships.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ADMIN_PASSWORD: &str = "workload admin passphrase of some length";
const CUSTOMER_PASSWORD: &str = "velvet lantern orbit crumble";

enum Phase {
    Start,
    Reads(usize),
    Checkouts(usize),
}

fn phase() -> anyhow::Result<Phase> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = |n: Option<&String>| -> anyhow::Result<usize> {
        let n: usize = n.ok_or_else(|| anyhow::anyhow!("a count must follow the phase"))?.parse()?;
        anyhow::ensure!(n > 0, "the count must be above 0");
        Ok(n)
    };
    match args.first().map(String::as_str) {
        Some("start") => Ok(Phase::Start),
        Some("reads") => Ok(Phase::Reads(count(args.get(1))?)),
        Some("checkouts") => Ok(Phase::Checkouts(count(args.get(1))?)),
        _ => anyhow::bail!("usage: workload start | reads N | checkouts N"),
    }
}

fn main() -> anyhow::Result<()> {
    let phase = phase()?;
    // Loops woken by the work this process makes (the outbox relays, the event log's readers)
    // poll for other processes' work too, once a second: under callgrind a checkout takes half
    // a second of wall time, so those polls were a fifth of its count, and more on a busier
    // machine. There is no other process here: they wait for their wake-ups alone.
    bookstore_platform::clock::set_idle_poll(Duration::from_secs(3600));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(run(phase))
}

async fn call(
    http: &reqwest::Client,
    request: reqwest::RequestBuilder,
    expected: u16,
) -> anyhow::Result<Value> {
    let response = http.execute(request.build()?).await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    anyhow::ensure!(status == expected, "answered {status}, not {expected}: {body}");
    Ok(if body.is_empty() { Value::Null } else { serde_json::from_str(&body)? })
}

async fn run(phase: Phase) -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let mut config = Config::default();
    let port0: std::net::SocketAddr = "127.0.0.1:0".parse()?;
    config.process.admin_http = port0;
    config.process.data_dir = data_dir.path().to_owned();
    config.gateway.http = port0;
    config.gateway.rate_limit_requests = 0;
    config.books.grpc = port0;
    config.books.cache_ttl_ms = 0;
    config.users.grpc = port0;
    config.orders.grpc = port0;
    config.fulfillment.grpc = port0;
    // Its unbidden reads of the change history come by the clock, not by the workload.
    config.fulfillment.change_poll_ms = 3_600_000;
    config.recommendations.grpc = port0;
    config.users.admin_password = Some(ADMIN_PASSWORD.into());
    config.users.registrations_per_address = 0;
    config.process.master_key = Some(bookstore_platform::crypto::MasterKey::generate_base64());
    let app = App::start(&bookstore::service_names(), &config, Mode::Up).await?;
    let base = format!("http://{}", app.addr("gateway").expect("the gateway runs"));
    let http = reqwest::Client::new();

    let login = |username: &'static str, password: &'static str| {
        http.post(format!("{base}/api/v1/auth/login"))
            .json(&json!({"username": username, "password": password}))
    };
    let admin = call(&http, login("admin", ADMIN_PASSWORD), 200).await?["access_token"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let register = http.post(format!("{base}/api/v1/auth/register")).json(&json!({
        "username": "reader", "email": "reader@example.com", "password": CUSTOMER_PASSWORD, "full_name": "A Reader"
    }));
    call(&http, register, 202).await?;
    let customer = call(&http, login("reader", CUSTOMER_PASSWORD), 200).await?["access_token"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    let books = call(&http, http.get(format!("{base}/api/v1/books?limit=100")), 200).await?;
    let ids: Vec<String> = books["items"]
        .as_array()
        .map(|items| items.iter().filter_map(|b| b["id"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    anyhow::ensure!(!ids.is_empty(), "the starter catalog is empty");
    for id in &ids {
        let restock = http
            .post(format!("{base}/api/v1/books/{id}/stock"))
            .bearer_auth(&admin)
            .json(&json!({"delta": 100_000}));
        call(&http, restock, 200).await?;
    }

    match phase {
        Phase::Start => {}
        Phase::Reads(n) => {
            for id in ids.iter().cycle().take(n) {
                call(&http, http.get(format!("{base}/api/v1/books/{id}")), 200).await?;
            }
        }
        Phase::Checkouts(n) => {
            for id in ids.iter().cycle().take(n) {
                let order = http.post(format!("{base}/api/v1/orders")).bearer_auth(&customer).json(&json!({
                    "lines": [{"book_id": id, "quantity": 1}],
                    "shipping_address": {"name": "A Reader", "line1": "1 Bench Street", "city": "Benchtown", "country": "DE"}
                }));
                call(&http, order, 201).await?;
            }
        }
    }

    app.shutdown_token().cancel();
    tokio::time::timeout(Duration::from_secs(60), app.wait()).await??;
    Ok(())
}
