//! The users service: accounts, passwords, roles and tokens — the IAM of the bookstore — with
//! personal data encrypted at rest.
//!
//! - [`accounts`]: the service's state, creating users and the first admin, row encryption.
//! - [`domain`]: usernames, emails, the password policy, roles, key purposes; no I/O.
//! - [`crypto`]: envelope encryption (master key → data key → fields) and the blind index.
//! - [`keys`]: the keyring: data, blind-index and token signing keys; rotation.
//! - [`passwords`]: argon2id off the async threads, bounded.
//! - [`tokens`]: EdDSA access tokens, opaque refresh tokens.
//! - [`throttle`]: failed-login delays per (account, address), per address and per account;
//!   the sign-up limit per address.
//! - [`store`]: all of its SQL.
//! - [`grpc`]: the tonic adapter and who may do what.
//! - [`settings`]: its configuration section, `[users]`, and the master key.
//!
//! [`build`] assembles the service from its [`Context`].
#![forbid(unsafe_code)]

pub mod accounts;
pub mod crypto;
pub mod domain;
pub mod grpc;
pub mod keys;
pub mod passwords;
pub mod settings;
pub mod store;
pub mod throttle;
pub mod tokens;

use std::sync::Arc;

use bookstore_api::users::v1::user_service_server::UserServiceServer;
use bookstore_platform::auth::TokenSource;
use bookstore_platform::db::Migrations;
use bookstore_platform::server::grpc_service_router;
use bookstore_platform::service::{Built, Context, LocalTokens, Spec};

pub use accounts::{Users, UsersConfig};
pub use grpc::UsersGrpc;
pub use settings::Settings;

pub const SERVICE: &str = "users";

pub static MIGRATIONS: Migrations = Migrations {
    postgres: sqlx::migrate!("./migrations/postgres"),
    sqlite: sqlx::migrate!("./migrations/sqlite"),
};

pub static SPEC: Spec =
    Spec { name: SERVICE, migrations: Some(&MIGRATIONS), uses_bus: true, uses_master_key: true };

/// The users service: its gRPC API, the first admin on an empty shop, and the task that picks
/// up signing keys rotated by another replica or by `bookstore admin`. In `up` it also mints
/// service tokens for the other services of the process ([`Built::local_tokens`]).
pub async fn build(ctx: Context, settings: Settings) -> anyhow::Result<Built> {
    let db = ctx.database()?;
    let master = ctx.master_key()?;
    let users = Arc::new(Users::new(db.clone(), master, settings.users_config()).await?);
    let generated = users.ensure_admin(settings.admin_password.as_deref()).await?;
    // Revocations reach every verifier through the outbox ([`bookstore_platform::revocation`]).
    ctx.relay_outbox("users-outbox")?;

    let reload = users.clone();
    ctx.tasks.every("users-reload-signing-keys", users.config.signing_key_reload, move || {
        let reload = reload.clone();
        async move {
            if let Err(e) = reload.keyring.reload_signing_keys(&reload.store).await {
                tracing::warn!(error = %format!("{e:#}"), "reloading signing keys failed");
            }
        }
    });

    let minter = users.clone();
    let local_tokens: LocalTokens = Arc::new(move |service: &str, scopes: &[String], audience: &[String]| {
        let (minter, service) = (minter.clone(), service.to_owned());
        let (scopes, audience) = (scopes.to_vec(), audience.to_vec());
        let source: TokenSource = Arc::new(move || {
            let minted = minter.internal_service_token(&service, &scopes, &audience);
            Box::pin(async move { minted })
        });
        source
    });

    let routes = tonic::service::Routes::new(UserServiceServer::new(UsersGrpc::new(users)));
    let router = grpc_service_router(SERVICE, "bookstore.users.v1.UserService", routes, ctx.verifier).await;
    let mut built = Built::new(router).with_database(SERVICE, &db);
    built.local_tokens = Some(local_tokens);
    if let Some(password) = generated {
        built.notices.push(format!(
            "admin password: {password}  (user `admin`; shown once; set BOOKSTORE_ADMIN_PASSWORD to choose it)"
        ));
    }
    Ok(built)
}
