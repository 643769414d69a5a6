//! Accounts: the service's state ([`Users`]), creating a user, the first admin, the encryption
//! of a user's row (personal data under the data key, bound to the row's id), and service
//! accounts a deployment provisions from its own secrets.

use std::time::Duration;

use bookstore_platform::auth::Role;
use bookstore_platform::clock::now_ms;
use bookstore_platform::db::Database;

use crate::crypto::{MasterKey, sha256_hex};
use crate::domain::{Address, Email, FullName, Password, User, Username, roles_from_text, roles_to_text};
use crate::keys::Keyring;
use crate::store::{StoreError, UserRow, UserStore};
use crate::{passwords, throttle, tokens};

#[derive(Debug, Clone)]
pub struct UsersConfig {
    pub access_ttl: Duration,
    pub refresh_ttl: Duration,
    pub limits: throttle::Limits,
    /// Sign-ups per client address per window (0: no limit).
    pub registrations_per_address: u32,
    pub registration_window: Duration,
    /// How often each replica rereads the signing keys (to pick up a rotation).
    pub signing_key_reload: Duration,
    /// How many passwords may be hashed at once.
    pub hash_concurrency: usize,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            access_ttl: Duration::from_secs(15 * 60),
            refresh_ttl: Duration::from_secs(30 * 24 * 3600),
            limits: throttle::Limits::default(),
            registrations_per_address: 10,
            registration_window: Duration::from_secs(3600),
            signing_key_reload: Duration::from_secs(30),
            hash_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// The service's state, shared by its handlers.
pub struct Users {
    pub store: UserStore,
    pub keyring: Keyring,
    pub hasher: passwords::Hasher,
    pub throttle: throttle::FailedLogins,
    pub registrations: throttle::Registrations,
    pub config: UsersConfig,
}

impl Users {
    pub async fn new(db: Database, master: MasterKey, config: UsersConfig) -> anyhow::Result<Self> {
        let store = UserStore::new(db).revoking_for(config.access_ttl);
        let keyring = Keyring::load(&store, master, config.access_ttl).await?;
        Ok(Self {
            store,
            keyring,
            hasher: passwords::Hasher::new(config.hash_concurrency).await?,
            throttle: throttle::FailedLogins::new(config.limits),
            registrations: throttle::Registrations::new(
                config.registrations_per_address,
                config.registration_window,
                config.limits.capacity,
            ),
            config,
        })
    }

    /// Appends `entry`, done by `actor` holding `roles` (space-separated), to the audit trail:
    /// its client address sealed under the data key, bound to the entry's id.
    pub async fn record_audit(
        &self,
        actor: String,
        roles: String,
        entry: bookstore_api::users::v1::RecordAuditRequest,
    ) -> anyhow::Result<()> {
        let id = uuid::Uuid::now_v7().to_string();
        let address_sealed = self.keyring.data.encrypt(&id, "address", &entry.address);
        let row = crate::store::AuditRow {
            id,
            at_ms: now_ms(),
            actor,
            roles,
            action: entry.action,
            target: entry.target,
            status: i64::from(entry.status),
            request_id: entry.request_id,
            address_sealed,
        };
        self.store.record_audit(&row).await
    }

    /// The row of `user`, personal data encrypted under the current data key and bound to the
    /// row's id.
    pub fn encrypt(&self, user: &User, password_hash: String) -> UserRow {
        let key = &self.keyring.data;
        let email =
            Email::parse(&user.email).map(|e| e.normalized()).unwrap_or_else(|_| user.email.to_lowercase());
        UserRow {
            id: user.id.clone(),
            username: user.username.clone(),
            email_bidx: self.keyring.blind_index.email(&email),
            email_ct: key.encrypt(&user.id, "email", &user.email),
            full_name_ct: key.encrypt(&user.id, "full_name", &user.full_name),
            address_ct: key.encrypt(&user.id, "address", &user.address),
            dek_id: key.id.clone(),
            password_hash,
            roles: roles_to_text(&user.roles),
            created_at: user.created_at,
            updated_at: user.updated_at,
            version: 0,
        }
    }

    pub fn decrypt(&self, row: &UserRow) -> anyhow::Result<User> {
        let key = &self.keyring.data;
        anyhow::ensure!(
            row.dek_id == key.id,
            "user {} is encrypted under unknown data key {}",
            row.id,
            row.dek_id
        );
        Ok(User {
            id: row.id.clone(),
            username: row.username.clone(),
            email: key.decrypt(&row.id, "email", &row.email_ct)?,
            full_name: key.decrypt(&row.id, "full_name", &row.full_name_ct)?,
            address: key.decrypt(&row.id, "address", &row.address_ct)?,
            roles: roles_from_text(&row.roles),
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }

    pub async fn create(
        &self,
        username: &Username,
        email: &Email,
        full_name: &FullName,
        address: &Address,
        password: &Password,
        roles: &[Role],
    ) -> Result<User, StoreError> {
        let now = now_ms();
        let user = User {
            id: uuid::Uuid::now_v7().to_string(),
            username: username.as_str().to_owned(),
            email: email.as_str().to_owned(),
            full_name: full_name.as_str().to_owned(),
            address: address.as_str().to_owned(),
            roles: roles.to_vec(),
            created_at: now,
            updated_at: now,
        };
        let hash = self.hasher.hash(password).await?;
        self.store.insert_user(&self.encrypt(&user, hash)).await?;
        Ok(user)
    }

    /// A `service`-role token for a service running in this process (`bookstore up`), which
    /// needs no client secret to prove it is us, granted `scopes`, for the services in
    /// `audience`. Separate deployments use client credentials.
    pub fn internal_service_token(
        &self,
        service: &str,
        scopes: &[String],
        audience: &[String],
    ) -> anyhow::Result<(String, Duration)> {
        let token = tokens::access_token(
            &self.keyring,
            &format!("svc-{service}"),
            &[Role::Service],
            scopes,
            audience,
            None,
            self.config.access_ttl,
        )?;
        Ok((token, self.config.access_ttl))
    }

    /// On a shop with no admin, creates `admin` with `password`, or with a generated password
    /// that is returned so the caller can show it once. `Ok(None)` when an admin exists.
    pub async fn ensure_admin(&self, password: Option<&str>) -> anyhow::Result<Option<String>> {
        if self.store.count_with_role(Role::Admin).await? > 0 {
            return Ok(None);
        }
        let (text, generated) = match password {
            Some(p) => (p.to_owned(), false),
            None => (tokens::random_secret(), true),
        };
        let password = Password::parse(&text, &["admin"])
            .map_err(|e| anyhow::anyhow!("admin_password (BOOKSTORE_ADMIN_PASSWORD) {}", e.reason))?;
        let created = self
            .create(
                &Username::parse("admin")?,
                &Email::parse("admin@bookstore.invalid")?,
                &FullName::parse("Administrator")?,
                &Address::parse("")?,
                &password,
                &[Role::Admin],
            )
            .await;
        match created {
            Ok(_) => Ok(generated.then_some(text)),
            // Another replica created it first.
            Err(StoreError::DuplicateUsername | StoreError::DuplicateEmail) => Ok(None),
            Err(e @ StoreError::LastAdmin) => Err(e.into()),
            Err(StoreError::Unexpected(e)) => Err(e),
        }
    }
}

/// What [`provision_service_account`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provisioned {
    Created,
    /// The account was there with another secret or other scopes; it has the given ones now.
    Updated,
    Unchanged,
}

/// The shortest client secret a deployment may provision (`openssl rand -base64 32` gives 44).
/// Secrets are stored as an unsalted SHA-256, which is sound only for random ones: a deployment
/// generates them, never chooses them.
pub const MIN_PROVISIONED_SECRET: usize = 32;

/// Makes the service account `client_id` exist, live, with `secret` and exactly `scopes`: how
/// a deployment gives orders and recommendations the accounts they call books with, from
/// secrets it generated and hands to both sides, with no one copying a secret from an answer.
/// Running it again changes nothing; a changed secret (a rotation) or scope list is applied.
/// An account an admin revoked stays revoked: provisioning it is an error that says so.
pub async fn provision_service_account(
    store: &UserStore,
    client_id: &str,
    name: &FullName,
    secret: &str,
    scopes: &[String],
) -> anyhow::Result<Provisioned> {
    let length = secret.chars().count();
    anyhow::ensure!(
        length >= MIN_PROVISIONED_SECRET,
        "the secret of service account {client_id} is {length} characters; at least {MIN_PROVISIONED_SECRET} are needed"
    );
    let scopes = bookstore_platform::auth::parse_scopes(scopes)
        .map_err(|unknown| anyhow::anyhow!("service account {client_id}: no scope {unknown:?}"))?;
    let hash = sha256_hex(secret);
    match store.service_account(client_id).await? {
        None => {
            store.insert_service_account(client_id, name.as_str(), &hash, &scopes).await?;
            Ok(Provisioned::Created)
        }
        Some(account) if account.revoked_at.is_some() => anyhow::bail!(
            "service account {client_id} was revoked; give the service a new client id (and a new secret)"
        ),
        Some(account) => {
            let same_secret = store.live_service_account(client_id).await?.is_some_and(|(h, _)| h == hash);
            if same_secret && account.scopes == scopes {
                return Ok(Provisioned::Unchanged);
            }
            // Tokens granted a scope the account no longer has end now.
            let narrowed = account.scopes.iter().any(|s| !scopes.contains(s));
            anyhow::ensure!(
                store.reset_service_account(client_id, &hash, &scopes, narrowed).await?,
                "service account {client_id} was revoked while it was being provisioned"
            );
            Ok(Provisioned::Updated)
        }
    }
}
