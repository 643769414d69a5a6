//! `bookstore`: every service of the bookstore in one binary.
#![forbid(unsafe_code)]

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use bookstore::config::Flags;
use bookstore::{App, Config};
use bookstore_platform::service::Mode;
use clap::{Parser, Subcommand};

// glibc's malloc showed up as a sixth of the CPU of the hot read path (many small, short-lived
// allocations across threads); mimalloc's thread-local free lists cut that down.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process. mimalloc reserves its arenas a GiB at a
/// time and asks the kernel for huge pages in them (as does every mapping where THP is set to
/// `always`), so a few small allocations spread over a 2 MiB region made it resident whole:
/// idle, `up` held 66 MiB of huge pages in 72 MiB of heap. A service this size gains nothing
/// measurable from fewer TLB misses. The flag is the process's, whichever thread sets it.
fn without_huge_pages() {
    #[cfg(target_os = "linux")]
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("warning: transparent huge pages stay on: {e}");
    }
}

const SECRETS_HELP: &str = "\
Secrets are read from the environment or the config file only, never from flags (flags show in
process lists):
  BOOKSTORE_MASTER_KEY_FILE / master_key_file   file with the master key (users' and orders'
                                                personal data)
  BOOKSTORE_MASTER_KEY      / master_key        the master key itself (base64, 32 bytes)
  BOOKSTORE_ADMIN_PASSWORD  / admin_password    the first admin's password (else generated and
                                                printed once)
  BOOKSTORE_ORDERS_CLIENT_SECRET / orders_client_secret
                                                the orders service's service-account secret, when
                                                it runs apart from users
Every setting can also be set as BOOKSTORE_<NAME> or in the --config file, or read from a file
named by BOOKSTORE_<NAME>_FILE (how containers get secrets: /run/secrets/<name>);
`bookstore config` prints the effective configuration. See the README.";

/// An online bookstore built as microservices.
#[derive(Parser)]
#[command(version, about, long_about = None, after_help = SECRETS_HELP)]
struct Cli {
    /// A TOML file of settings: process keys at the top, a table per service
    /// (`[orders] database_url = "..."`); `bookstore config` prints one.
    #[arg(long, global = true, value_name = "FILE", env = "BOOKSTORE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every service in this process with embedded defaults (SQLite under --data-dir).
    #[command(after_help = SECRETS_HELP)]
    Up {
        #[command(flatten)]
        flags: Flags,
        /// Do not load the starter catalog into an empty catalog.
        #[arg(long)]
        no_seed: bool,
    },
    /// Run the chosen services, e.g. `serve books --books-database-url postgres://...`.
    #[command(after_help = SECRETS_HELP)]
    Serve {
        /// Which services to run.
        #[arg(required = true, value_parser = clap::builder::PossibleValuesParser::new(bookstore::service_names()))]
        services: Vec<String>,
        #[command(flatten)]
        flags: Flags,
        /// Load the starter catalog into an empty catalog.
        #[arg(long)]
        seed: bool,
    },
    /// Apply every service's database migrations (and the event log's) and exit.
    Migrate {
        #[command(flatten)]
        flags: Flags,
    },
    /// Copy every service's database (and the embedded event log) to a new folder, with a
    /// manifest sealed by the master key. The master key is not in it: keep it apart.
    Backup {
        /// The folder to write (new, or empty).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[command(flatten)]
        flags: Flags,
    },
    /// Restore a backup into empty databases, after checking its manifest and every file;
    /// then apply this release's migrations.
    Restore {
        /// The folder `backup` wrote.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        #[command(flatten)]
        flags: Flags,
    },
    /// Copy every service's data from `up`'s SQLite files to the PostgreSQL databases this
    /// configuration names, verified; again after `up` stops, to carry what changed meanwhile.
    MoveData {
        /// `up`'s data folder (its SQLite files and event log).
        #[arg(long, value_name = "DIR")]
        from_data_dir: PathBuf,
        #[command(flatten)]
        flags: Flags,
    },
    /// Print the effective configuration (defaults, file, environment, flags) as a config
    /// file, with secrets redacted.
    Config {
        #[command(flatten)]
        flags: Flags,
    },
    /// Ask this process's admin listener (admin_http) whether it is ready, GET /readyz, or with
    /// --live whether it is alive, GET /healthz; exit 0 when it answers 200. A container's health
    /// check, for images with no shell or HTTP client.
    Probe {
        /// Ask /healthz (alive) instead of /readyz (ready for traffic).
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        flags: Flags,
    },
    /// Keys, service accounts and dead letters.
    #[command(subcommand)]
    Admin(AdminCommand),
}

/// What an operator does by hand; the names say it as an operator would type them.
#[derive(Subcommand)]
enum AdminCommand {
    /// Print a new random master key (base64) to put in a secret store or file.
    GenerateMasterKey,
    /// Add a new token signing key; it is published at once and signs after
    /// --signing-key-publish-ahead-secs. Old keys verify their tokens until those expire.
    RotateSigningKey {
        #[command(flatten)]
        flags: Flags,
    },
    /// Re-wrap every key of the users and orders databases from the configured master key to a
    /// new one. Personal data is not re-encrypted (it is under data keys, which do not change).
    /// Restart users and orders with the new key afterwards.
    RotateMasterKey {
        /// File holding the new master key.
        #[arg(long, value_name = "FILE")]
        new_master_key_file: PathBuf,
        #[command(flatten)]
        flags: Flags,
    },
    /// Create or update, in the users database, the service accounts orders and recommendations
    /// call books with, from their configured client ids and secrets (orders_client_id and
    /// orders_client_secret; recommendations_client_id and recommendations_client_secret, at
    /// least 32 characters), with the scopes each needs. Again changes nothing; a changed secret
    /// is a rotation. A deployment runs it after `migrate`.
    ProvisionServiceAccounts {
        #[command(flatten)]
        flags: Flags,
    },
    /// Events a consumer gave up on: list, show, replay or discard them, on the deployment's
    /// bus (the embedded log, or RabbitMQ with amqp_url).
    #[command(subcommand)]
    DeadLetters(DeadLetterCommand),
    /// Write a development CA and a TLS certificate it signs (for localhost and the --host names)
    /// to try HTTPS: ca.pem, ca-key.pem, server.pem, server-key.pem. Not for production.
    DevCerts {
        /// The folder to write them to.
        #[arg(long, value_name = "DIR", default_value = "certs")]
        out: PathBuf,
        /// Another name or address the certificate is for (repeatable).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum DeadLetterCommand {
    /// Every consumer's dead letters (or one's), oldest first.
    List {
        /// Only this consumer's.
        #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(bookstore::CONSUMERS))]
        consumer: Option<String>,
        #[command(flatten)]
        flags: Flags,
    },
    /// One dead letter as JSON: its envelope decoded, the error, the attempts.
    Show {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(bookstore::CONSUMERS))]
        consumer: String,
        /// The event's id.
        id: String,
        #[command(flatten)]
        flags: Flags,
    },
    /// Send a dead letter (or all of a consumer's) back to its consumer. Its inbox keeps an
    /// event it applied before from having a second effect; one that fails again is a dead
    /// letter again.
    Replay {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(bookstore::CONSUMERS))]
        consumer: String,
        /// The event's id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every dead letter of the consumer.
        #[arg(long, conflicts_with = "id")]
        all: bool,
        #[command(flatten)]
        flags: Flags,
    },
    /// Set a dead letter aside for good, for a reason (logged with the event).
    Discard {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(bookstore::CONSUMERS))]
        consumer: String,
        /// The event's id.
        id: String,
        /// Why (1 to 500 characters).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        flags: Flags,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    without_huge_pages();
    let _failpoints = bookstore_platform::arm_failpoints();
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // A no-op when the command installed logging already.
            bookstore_platform::telemetry::init_logging();
            tracing::error!(error = %format!("{err:#}"), "bookstore stopped");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let file = cli.config.as_deref();
    // Serving processes trace (their settings are in the configuration); the rest only log, but
    // for probe, a health check run every few seconds, whose answer is its exit status.
    if !matches!(cli.command, Command::Up { .. } | Command::Serve { .. } | Command::Probe { .. }) {
        bookstore_platform::telemetry::init_logging();
    }
    match cli.command {
        Command::Up { mut flags, no_seed } => {
            if no_seed {
                flags.set("seed", "false");
            }
            let config = Config::load(file, &flags)?;
            serve(&bookstore::service_names(), &config, Mode::Up).await
        }
        Command::Serve { services, mut flags, seed } => {
            if seed {
                flags.set("seed", "true");
            }
            let config = Config::load(file, &flags)?;
            let names: Vec<&str> = services.iter().map(String::as_str).collect();
            serve(&names, &config, Mode::Serve).await
        }
        Command::Migrate { flags } => {
            let config = Config::load(file, &flags)?;
            for line in bookstore::migrate(&config).await? {
                say(format_args!("{line}"));
            }
            Ok(())
        }
        Command::Backup { to, flags } => {
            let config = Config::load(file, &flags)?;
            let manifest = bookstore::backup::backup(&config, &to).await?;
            for db in &manifest.databases {
                say(format_args!(
                    "{}: {} ({} bytes, migration {})",
                    db.name, db.file, db.bytes, db.migration_level
                ));
            }
            say(format_args!(
                "backed up to {}; keep master key {} apart from it",
                to.display(),
                manifest.master_key_id
            ));
            Ok(())
        }
        Command::Restore { from, flags } => {
            let config = Config::load(file, &flags)?;
            for line in bookstore::backup::restore(&config, &from).await? {
                say(format_args!("{line}"));
            }
            Ok(())
        }
        Command::MoveData { from_data_dir, flags } => {
            let to = Config::load(file, &flags)?;
            let mut from = Config::default();
            from.process.data_dir = from_data_dir;
            for line in bookstore::move_data::move_data(&from, &to).await? {
                say(format_args!("{line}"));
            }
            Ok(())
        }
        Command::Config { flags } => {
            let config = Config::load(file, &flags)?;
            say(format_args!("{}", config.to_redacted_toml()?.trim_end()));
            Ok(())
        }
        Command::Probe { live, flags } => {
            let config = Config::load(file, &flags)?;
            let mut addr = config.process.admin_http;
            // Bound to every address: ask over the loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    Ipv4Addr::LOCALHOST.into()
                } else {
                    Ipv6Addr::LOCALHOST.into()
                });
            }
            let url = format!("http://{addr}{}", if live { "/healthz" } else { "/readyz" });
            let http = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(3)).build()?;
            let status = http.get(&url).send().await.with_context(|| format!("asking {url}"))?.status();
            anyhow::ensure!(status == reqwest::StatusCode::OK, "{url} answered {status}");
            Ok(())
        }
        Command::Admin(AdminCommand::GenerateMasterKey) => {
            say(format_args!("{}", bookstore_platform::crypto::MasterKey::generate_base64()));
            Ok(())
        }
        Command::Admin(AdminCommand::DeadLetters(command)) => dead_letters(file, command).await,
        Command::Admin(AdminCommand::DevCerts { out, hosts }) => {
            for path in bookstore_platform::tls::dev_certs(&out, &hosts)? {
                say(format_args!("wrote {}", path.display()));
            }
            let dir = out.display();
            say(format_args!(
                "serve HTTPS with --tls-cert-file {dir}/server.pem --tls-key-file {dir}/server-key.pem; \
                 clients trust {dir}/ca.pem"
            ));
            Ok(())
        }
        Command::Admin(AdminCommand::RotateSigningKey { flags }) => {
            let config = Config::load(file, &flags)?;
            let users = open_users(&config).await?;
            let ahead = Duration::from_secs(config.users.signing_key_publish_ahead_secs);
            let kid = users.keyring.add_signing_key(&users.store, ahead).await?;
            say(format_args!("new signing key {kid}: published now, signs in {} s", ahead.as_secs()));
            Ok(())
        }
        Command::Admin(AdminCommand::ProvisionServiceAccounts { flags }) => {
            use bookstore_users::accounts::Provisioned;
            let config = Config::load(file, &flags)?;
            let accounts = [
                (
                    "orders",
                    &config.orders.client_id,
                    &config.orders.client_secret,
                    bookstore_orders::SCOPES_AT_BOOKS,
                ),
                (
                    "recommendations",
                    &config.recommendations.client_id,
                    &config.recommendations.client_secret,
                    bookstore_recommendations::SCOPES_AT_BOOKS,
                ),
            ];
            let mut store = None;
            for (service, id, secret, scopes) in accounts {
                let (id, secret) = match (id, secret) {
                    (Some(id), Some(secret)) => (id, secret),
                    (None, None) => {
                        say(format_args!("{service}: no {service}_client_id or secret configured; skipped"));
                        continue;
                    }
                    _ => {
                        anyhow::bail!("set both {service}_client_id and {service}_client_secret, or neither")
                    }
                };
                if store.is_none() {
                    let db = service_database(&config, "users").await?;
                    store = Some(bookstore_users::store::UserStore::new(db));
                }
                let store = store.as_ref().expect("opened above");
                let name =
                    bookstore_users::domain::FullName::parse(service).expect("a service's name is a name");
                let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
                let done =
                    bookstore_users::accounts::provision_service_account(store, id, &name, secret, &scopes)
                        .await
                        .with_context(|| format!("provisioning {service}'s service account"))?;
                let done = match done {
                    Provisioned::Created => "created",
                    Provisioned::Updated => "updated",
                    Provisioned::Unchanged => "unchanged",
                };
                say(format_args!("{service}: service account {id} {done}, scopes {}", scopes.join(" ")));
            }
            anyhow::ensure!(store.is_some(), "no service account is configured, so none was provisioned");
            Ok(())
        }
        Command::Admin(AdminCommand::RotateMasterKey { new_master_key_file, flags }) => {
            let config = Config::load(file, &flags)?;
            let old = config.master_key(Mode::Up)?;
            let new = bookstore_platform::crypto::load_master_key(
                None,
                Some(&new_master_key_file),
                None,
                "rotate-master-key",
            )?;
            let store = bookstore_users::store::UserStore::new(service_database(&config, "users").await?);
            let users = bookstore_users::keys::rotate_master_key(&store, &old, &new).await?;
            let orders_db = service_database(&config, "orders").await?;
            let orders = bookstore_platform::crypto::rewrap_data_keys(&orders_db, &old, &new).await?;
            say(format_args!(
                "re-wrapped {users} users keys and {orders} orders keys under master key {}; restart with it",
                new.id()
            ));
            Ok(())
        }
    }
}

/// `bookstore admin dead-letters ...`: on the deployment's bus, as the admin listener does.
async fn dead_letters(file: Option<&std::path::Path>, command: DeadLetterCommand) -> anyhow::Result<()> {
    use bookstore_platform::events::{DiscardReason, Which};
    let flags = match &command {
        DeadLetterCommand::List { flags, .. }
        | DeadLetterCommand::Show { flags, .. }
        | DeadLetterCommand::Replay { flags, .. }
        | DeadLetterCommand::Discard { flags, .. } => flags,
    };
    let config = Config::load(file, flags)?;
    // Replays and discards go in the audit trail, as the admin listener's do; an action that
    // cannot be recorded is not taken.
    let users = match &command {
        DeadLetterCommand::Replay { .. } | DeadLetterCommand::Discard { .. } => Some(
            open_users(&config)
                .await
                .context("opening the audit trail (the users database); nothing was changed")?,
        ),
        DeadLetterCommand::List { .. } | DeadLetterCommand::Show { .. } => None,
    };
    let audit = |action: &'static str, target: String| {
        let users = users.as_ref().expect("opened for every command that changes something");
        audit_command(users, action, target)
    };
    let (bus, db) = bookstore::bus(&config).await?;
    let done = match command {
        DeadLetterCommand::List { consumer, .. } => {
            let consumers = match &consumer {
                Some(one) => vec![one.as_str()],
                None => bookstore::CONSUMERS.to_vec(),
            };
            for consumer in consumers {
                let dead = bus.dead_letters(consumer).await?;
                say(format_args!("{consumer}: {} dead letter(s)", dead.len()));
                for d in dead {
                    let pending = if d.replay_pending { "  (replay pending)" } else { "" };
                    say(format_args!(
                        "  {}  {}  {} attempt(s)  {}{pending}",
                        d.event.id, d.event.event_type, d.attempts, d.error
                    ));
                }
            }
            Ok(())
        }
        DeadLetterCommand::Show { consumer, id, .. } => {
            match bus.dead_letters(&consumer).await?.into_iter().find(|d| d.event.id == id) {
                Some(dead) => {
                    let json = dead.to_json(bookstore::describe_payload);
                    say(format_args!("{}", serde_json::to_string_pretty(&json)?));
                    Ok(())
                }
                None => Err(anyhow::anyhow!("{consumer} has no dead letter {id:?}")),
            }
        }
        DeadLetterCommand::Replay { consumer, id, .. } => {
            let which = id.as_deref().map_or(Which::All, Which::One);
            let replayed = bus.replay_dead_letters(&consumer, which).await?;
            if let (Some(id), true) = (&id, replayed.is_empty()) {
                anyhow::bail!("{consumer} has no dead letter {id:?}");
            }
            let target = match &id {
                Some(id) => format!("/dead-letters/{consumer}/{id}/replay"),
                None => format!("/dead-letters/{consumer}/replay"),
            };
            audit("CLI dead-letters replay", target).await?;
            for id in &replayed {
                say(format_args!("{consumer}: {id} sent back"));
            }
            say(format_args!("{} replayed; `list` shows any that failed again", replayed.len()));
            Ok(())
        }
        DeadLetterCommand::Discard { consumer, id, reason, .. } => {
            let reason = DiscardReason::parse(&reason).map_err(|e| anyhow::anyhow!("--reason: {e}"))?;
            match bus.discard_dead_letter(&consumer, &id, &reason).await? {
                Some(_) => {
                    audit("CLI dead-letters discard", format!("/dead-letters/{consumer}/{id}/discard"))
                        .await?;
                    say(format_args!("{consumer}: {id} discarded ({})", reason.as_str()));
                    Ok(())
                }
                None => Err(anyhow::anyhow!("{consumer} has no dead letter {id:?}")),
            }
        }
    };
    if let Some(db) = db {
        db.close().await;
    }
    done
}

/// Records an operator's command in the audit trail: the actor is the operating-system account
/// that ran it (`cli:<name>`, role `operator`), from this machine (`local`).
async fn audit_command(users: &bookstore_users::Users, action: &str, target: String) -> anyhow::Result<()> {
    let login =
        std::env::var("USER").or_else(|_| std::env::var("LOGNAME")).unwrap_or_else(|_| "unknown".into());
    let entry = bookstore_api::users::v1::RecordAuditRequest {
        action: action.to_owned(),
        target: target.clone(),
        status: 200,
        request_id: uuid::Uuid::now_v7().to_string(),
        address: "local".to_owned(),
    };
    users
        .record_audit(format!("cli:{login}"), "operator".to_owned(), entry)
        .await
        .with_context(|| format!("done, but not recorded in the audit trail: {action} {target}"))
}

/// The database of the service `name`, migrated, for admin commands that work on it directly.
async fn service_database(config: &Config, name: &str) -> anyhow::Result<bookstore_platform::db::Database> {
    let entry = bookstore::SERVICES.iter().find(|e| e.name() == name).expect("the service is listed");
    bookstore::connect(&entry.database_url(config), config, &entry.migrations(), name).await
}

/// The users service's state, for admin commands that work on its database directly.
async fn open_users(config: &Config) -> anyhow::Result<bookstore_users::Users> {
    let db = service_database(config, "users").await?;
    let master = config.master_key(Mode::Up)?;
    bookstore_users::Users::new(db, master, config.users.users_config())
        .await
        .context("opening the users keyring")
}

async fn serve(services: &[&str], config: &Config, mode: Mode) -> anyhow::Result<()> {
    let tracing = bookstore_platform::telemetry::init_tracing(&config.tracing(services))?;
    let served = serve_traced(services, config, mode).await;
    // What was buffered reaches the collector before the process ends (a blocking wait).
    let _ = tokio::task::spawn_blocking(move || tracing.shutdown()).await;
    served
}

async fn serve_traced(services: &[&str], config: &Config, mode: Mode) -> anyhow::Result<()> {
    let app = App::start(services, config, mode).await?;
    for (name, addr) in &app.addrs {
        if *name != "gateway" {
            say(format_args!("{name:<8} gRPC on http://{addr}"));
        }
    }
    say(format_args!("admin    http://{}  (/healthz /readyz /metrics)", app.admin_addr));
    if let Some(endpoint) = &config.process.otlp_endpoint {
        let ratio = config.process.trace_sample_ratio;
        let protocol = &config.process.otlp_protocol;
        say(format_args!("traces   to {endpoint} (OTLP, {protocol}), {ratio} of new traces sampled"));
    }
    for notice in &app.notices {
        say(format_args!("{notice}"));
    }
    if let Some(addr) = app.addr("gateway") {
        say(format_args!("gateway  http://{addr}  (API docs: http://{addr}/docs)"));
        say(format_args!("bookstore is up; point a browser at http://{addr}/docs. Ctrl-C stops it."));
    }
    bookstore_platform::server::cancel_on_signal(app.shutdown_token()).await;
    app.wait().await
}

/// Prints a line for the person who started us; a closed stdout is not a reason to stop serving.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
