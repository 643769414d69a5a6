//! All of the users service's SQL. Rows hold ciphertext; [`crate::keys::Keyring`] turns them
//! into [`crate::domain::User`]s.

use anyhow::Context;
use bookstore_platform::clock::now_ms;
use bookstore_platform::db::{Backend, Database, unique_violation};

use bookstore_platform::auth::Role;

use crate::domain::KeyPurpose;
use sqlx::Row;
use sqlx::any::AnyRow;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("that username is taken")]
    DuplicateUsername,
    #[error("an account with that email exists")]
    DuplicateEmail,
    #[error("this is the last admin account")]
    LastAdmin,
    #[error(transparent)]
    Unexpected(#[from] anyhow::Error),
}

/// A user as stored: personal data encrypted.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: String,
    pub username: String,
    pub email_bidx: String,
    pub email_ct: Vec<u8>,
    pub full_name_ct: Vec<u8>,
    pub address_ct: Vec<u8>,
    pub dek_id: String,
    pub password_hash: String,
    pub roles: String,
    pub created_at: i64,
    pub updated_at: i64,
    /// Bumped by every update; an update applies only to the version it read.
    pub version: i64,
}

macro_rules! user_columns {
    () => {
        "id, username, email_bidx, email_ct, full_name_ct, address_ct, dek_id, password_hash, roles, \
         created_at, updated_at, version"
    };
}

/// Replaces the role rows of `user_id` with the roles in `roles` (the row's comma-separated list).
async fn write_roles(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    user_id: &str,
    roles: &str,
) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM user_roles WHERE user_id = $1")
        .bind(user_id)
        .execute(&mut **tx)
        .await
        .context("replacing a user's roles")?;
    for role in crate::domain::roles_from_text(roles) {
        sqlx::query("INSERT INTO user_roles (user_id, role) VALUES ($1, $2)")
            .bind(user_id)
            .bind(role.as_str())
            .execute(&mut **tx)
            .await
            .context("recording a user's role")?;
    }
    Ok(())
}

fn user_from_row(row: &AnyRow) -> Result<UserRow, sqlx::Error> {
    Ok(UserRow {
        id: row.try_get(0)?,
        username: row.try_get(1)?,
        email_bidx: row.try_get(2)?,
        email_ct: row.try_get(3)?,
        full_name_ct: row.try_get(4)?,
        address_ct: row.try_get(5)?,
        dek_id: row.try_get(6)?,
        password_hash: row.try_get(7)?,
        roles: row.try_get(8)?,
        created_at: row.try_get(9)?,
        updated_at: row.try_get(10)?,
        version: row.try_get(11)?,
    })
}

/// A key wrapped by the master key.
#[derive(Debug, Clone)]
pub struct KeyRow {
    pub id: String,
    pub purpose: KeyPurpose,
    pub wrapped: Vec<u8>,
    pub master_key_id: String,
    pub public_jwk: Option<String>,
    pub created_at: i64,
    pub active_from: i64,
    pub retired_at: Option<i64>,
}

/// A refresh token's record.
#[derive(Debug, Clone)]
pub struct RefreshRow {
    pub family_id: String,
    pub user_id: String,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub struct UserStore {
    db: Database,
    /// How long an access token lives: how long a revocation must be held.
    token_ttl: std::time::Duration,
}

fn map_user_conflict(err: sqlx::Error, doing: &'static str) -> StoreError {
    match unique_violation(&err) {
        Some(c) if c.contains("username") => StoreError::DuplicateUsername,
        Some(c) if c.contains("email_bidx") => StoreError::DuplicateEmail,
        _ => StoreError::Unexpected(anyhow::Error::new(err).context(doing)),
    }
}

impl UserStore {
    /// The store; revocations it publishes are held for the longest access-token lifetime
    /// until [`Self::revoking_for`] says how long tokens live.
    pub fn new(db: Database) -> Self {
        Self { db, token_ttl: bookstore_platform::revocation::REPLAY }
    }

    /// Access tokens live `ttl`: revocations are held that long (and a minute, the leeway).
    pub fn revoking_for(self, ttl: std::time::Duration) -> Self {
        Self { token_ttl: ttl + std::time::Duration::from_secs(60), ..self }
    }

    /// Writes in `tx` the event that ends the tokens of `sessions` of `subject` (every token of
    /// it when `sessions` is empty): it reaches every verifier once `tx` commits.
    async fn revoke_tokens_in(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        subject: &str,
        sessions: &[String],
    ) -> anyhow::Result<()> {
        let until = now_ms() + self.token_ttl.as_millis() as i64;
        let event = bookstore_platform::revocation::event(subject, sessions, until);
        bookstore_platform::events::outbox::write(tx, &[event]).await
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store insert_user"))]
    pub async fn insert_user(&self, u: &UserRow) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        sqlx::query(concat!(
            "INSERT INTO users (",
            user_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
        ))
        .bind(&u.id)
        .bind(&u.username)
        .bind(&u.email_bidx)
        .bind(&u.email_ct)
        .bind(&u.full_name_ct)
        .bind(&u.address_ct)
        .bind(&u.dek_id)
        .bind(&u.password_hash)
        .bind(&u.roles)
        .bind(u.created_at)
        .bind(u.updated_at)
        .bind(u.version)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_user_conflict(e, "inserting a user"))?;
        write_roles(&mut tx, &u.id, &u.roles).await?;
        tx.commit().await.context("inserting a user")?;
        Ok(())
    }

    /// Replaces every mutable column of the row (the caller read it, changed it, re-encrypted),
    /// if nobody changed it since: `false` when the row is gone or its version moved on, so a
    /// slow request can never write back what a faster one changed (a demotion, a password).
    ///
    /// `drops_admin` says the change takes the admin role away: then it is refused with
    /// [`StoreError::LastAdmin`] unless another admin remains, checked in the same transaction.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store update_user"))]
    pub async fn update_user(&self, u: &UserRow, drops_admin: bool) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        if drops_admin {
            self.ensure_another_admin(&mut tx, &u.id).await?;
        }
        let done = sqlx::query(
            "UPDATE users SET email_bidx = $2, email_ct = $3, full_name_ct = $4, address_ct = $5, \
             dek_id = $6, password_hash = $7, roles = $8, updated_at = $9, version = version + 1 \
             WHERE id = $1 AND version = $10",
        )
        .bind(&u.id)
        .bind(&u.email_bidx)
        .bind(&u.email_ct)
        .bind(&u.full_name_ct)
        .bind(&u.address_ct)
        .bind(&u.dek_id)
        .bind(&u.password_hash)
        .bind(&u.roles)
        .bind(u.updated_at)
        .bind(u.version)
        .execute(&mut *tx)
        .await
        .map_err(|e| map_user_conflict(e, "updating a user"))?;
        if done.rows_affected() == 1 {
            write_roles(&mut tx, &u.id, &u.roles).await?;
        }
        tx.commit().await.context("updating a user")?;
        Ok(done.rows_affected() == 1)
    }

    /// Refuses with [`StoreError::LastAdmin`] unless an admin other than `id` exists. Every
    /// admin row stays locked until `tx` ends, taken in id order so two of these never wait on
    /// each other in a cycle (on SQLite the write transaction locks the whole database): two
    /// admins demoting each other at the same instant cannot both count the other one; the
    /// second waits for the first and then sees it gone.
    async fn ensure_another_admin(
        &self,
        tx: &mut sqlx::Transaction<'static, sqlx::Any>,
        id: &str,
    ) -> Result<(), StoreError> {
        let lock = match self.db.backend() {
            Backend::Postgres => " FOR UPDATE",
            Backend::Sqlite => "",
        };
        let sql = format!("SELECT user_id FROM user_roles WHERE role = $1 ORDER BY user_id{lock}");
        let admins: Vec<String> = sqlx::query_scalar(&sql)
            .bind(Role::Admin.as_str())
            .fetch_all(&mut **tx)
            .await
            .context("counting admins")?;
        if admins.iter().all(|admin| admin == id) {
            return Err(StoreError::LastAdmin);
        }
        Ok(())
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store get_user"))]
    pub async fn get_user(&self, id: &str) -> anyhow::Result<Option<UserRow>> {
        self.user_where(
            concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"),
            id,
            "fetching a user",
        )
        .await
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store find_by_username"))]
    pub async fn find_by_username(&self, username: &str) -> anyhow::Result<Option<UserRow>> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE username = $1");
        self.user_where(sql, username, "finding a user by username").await
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store find_by_email_index"))]
    pub async fn find_by_email_index(&self, email_bidx: &str) -> anyhow::Result<Option<UserRow>> {
        let sql = concat!("SELECT ", user_columns!(), " FROM users WHERE email_bidx = $1");
        self.user_where(sql, email_bidx, "finding a user by email").await
    }

    /// The one user `sql` (with one parameter) selects, if any.
    async fn user_where(
        &self,
        sql: &'static str,
        value: &str,
        doing: &'static str,
    ) -> anyhow::Result<Option<UserRow>> {
        let row = sqlx::query(sql).bind(value).fetch_optional(self.db.pool()).await.context(doing)?;
        row.as_ref().map(user_from_row).transpose().context("decoding a user")
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store list_users"))]
    pub async fn list_users(&self, limit: i64, offset: i64) -> anyhow::Result<(Vec<UserRow>, i64)> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users ORDER BY username LIMIT $1 OFFSET $2"
        ))
        .bind(limit)
        .bind(offset)
        .fetch_all(self.db.pool())
        .await
        .context("listing users")?;
        let total = sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM users")
            .fetch_one(self.db.pool())
            .await
            .context("counting users")?;
        let users = rows.iter().map(user_from_row).collect::<Result<_, _>>().context("decoding users")?;
        Ok((users, total))
    }

    /// Deletes the account and its refresh tokens together.
    /// Deletes a user and their sessions; `drops_admin` as in [`Self::update_user`].
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store delete_user"))]
    pub async fn delete_user(&self, id: &str, drops_admin: bool) -> Result<bool, StoreError> {
        let mut tx = self.db.begin_write().await.context("starting a transaction")?;
        if drops_admin {
            self.ensure_another_admin(&mut tx, id).await?;
        }
        for sql in [
            "DELETE FROM refresh_tokens WHERE user_id = $1",
            "DELETE FROM refresh_families WHERE user_id = $1",
            "DELETE FROM user_roles WHERE user_id = $1",
        ] {
            sqlx::query(sql).bind(id).execute(&mut *tx).await.context("deleting a user's sessions")?;
        }
        let done = sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .context("deleting a user")?;
        if done.rows_affected() == 1 {
            self.revoke_tokens_in(&mut tx, id, &[]).await?;
        }
        self.db.commit_events(tx).await.context("deleting a user")?;
        Ok(done.rows_affected() == 1)
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store count_with_role"))]
    pub async fn count_with_role(&self, role: Role) -> anyhow::Result<i64> {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM user_roles WHERE role = $1")
            .bind(role.as_str())
            .fetch_one(self.db.pool())
            .await
            .context("counting users by role")
    }

    // --- keys -------------------------------------------------------------------------------

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store keys"))]
    pub async fn keys(&self, purpose: KeyPurpose) -> anyhow::Result<Vec<KeyRow>> {
        let rows = sqlx::query(
            "SELECT id, purpose, wrapped, master_key_id, public_jwk, created_at, active_from, retired_at \
             FROM crypto_keys WHERE purpose = $1 ORDER BY active_from, created_at, id",
        )
        .bind(purpose.as_str())
        .fetch_all(self.db.pool())
        .await
        .context("loading keys")?;
        rows.iter()
            .map(|r| {
                let stored: String = r.try_get(1)?;
                Ok(KeyRow {
                    id: r.try_get(0)?,
                    purpose: KeyPurpose::parse(&stored)
                        .with_context(|| format!("unknown key purpose {stored}"))?,
                    wrapped: r.try_get(2)?,
                    master_key_id: r.try_get(3)?,
                    public_jwk: r.try_get(4)?,
                    created_at: r.try_get(5)?,
                    active_from: r.try_get(6)?,
                    retired_at: r.try_get(7)?,
                })
            })
            .collect::<anyhow::Result<_>>()
            .context("decoding keys")
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store insert_key"))]
    pub async fn insert_key(&self, k: &KeyRow) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO crypto_keys (id, purpose, wrapped, master_key_id, public_jwk, created_at, active_from, \
             retired_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&k.id)
        .bind(k.purpose.as_str())
        .bind(&k.wrapped)
        .bind(&k.master_key_id)
        .bind(&k.public_jwk)
        .bind(k.created_at)
        .bind(k.active_from)
        .bind(k.retired_at)
        .execute(self.db.pool())
        .await
        .context("storing a key")?;
        Ok(())
    }

    /// Replaces every key's wrapping in one transaction (master-key rotation): all or none.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store rewrap_keys"))]
    pub async fn rewrap_keys(
        &self,
        rewrapped: &[(String, Vec<u8>)],
        master_key_id: &str,
    ) -> anyhow::Result<()> {
        let mut tx = self.db.pool().begin().await.context("starting a transaction")?;
        for (id, wrapped) in rewrapped {
            sqlx::query("UPDATE crypto_keys SET wrapped = $2, master_key_id = $3 WHERE id = $1")
                .bind(id)
                .bind(wrapped)
                .bind(master_key_id)
                .execute(&mut *tx)
                .await
                .context("re-wrapping a key")?;
        }
        tx.commit().await.context("committing re-wrapped keys")?;
        Ok(())
    }

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store all_keys"))]
    pub async fn all_keys(&self) -> anyhow::Result<Vec<KeyRow>> {
        let mut all = Vec::new();
        for purpose in KeyPurpose::ALL {
            all.extend(self.keys(purpose).await?);
        }
        Ok(all)
    }

    // --- refresh tokens -------------------------------------------------------------------

    /// Starts a session: a new family and its first refresh token, together.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store start_session"))]
    pub async fn start_session(
        &self,
        user_id: &str,
        token_hash: &str,
        expires_at: i64,
    ) -> anyhow::Result<String> {
        let family = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let mut tx = self.db.begin_write().await.context("starting a session")?;
        sqlx::query("INSERT INTO refresh_families (id, user_id, created_at) VALUES ($1, $2, $3)")
            .bind(&family)
            .bind(user_id)
            .bind(now)
            .execute(&mut *tx)
            .await
            .context("storing a session")?;
        insert_token(&mut tx, token_hash, &family, user_id, expires_at).await?;
        tx.commit().await.context("committing a session")?;
        Ok(family)
    }

    /// Spends `token_hash` for `new_hash` in one transaction that first locks the token's
    /// family, so it serialises with revocation: after a revocation commits, no refresh of that
    /// family succeeds, and none that started before leaves a live token behind. A token spent
    /// twice revokes its family.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store rotate_refresh"))]
    pub async fn rotate_refresh(
        &self,
        token_hash: &str,
        new_hash: &str,
        new_expires_at: i64,
    ) -> anyhow::Result<Refresh> {
        let mut tx = self.db.begin_write().await.context("starting a refresh")?;
        let Some(row) = sqlx::query(
            "SELECT family_id, user_id, expires_at, used_at FROM refresh_tokens WHERE token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await
        .context("finding a refresh token")?
        else {
            return Ok(Refresh::Unknown);
        };
        let family: String = row.try_get(0)?;
        let user_id: String = row.try_get(1)?;
        let expires_at: i64 = row.try_get(2)?;
        let used_at: Option<i64> = row.try_get(3)?;
        let live = sqlx::query(
            "UPDATE refresh_families SET revoked_at = revoked_at WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(&family)
        .execute(&mut *tx)
        .await
        .context("locking a session")?;
        if live.rows_affected() == 0 {
            return Ok(Refresh::Revoked);
        }
        let claimed = if used_at.is_none() {
            sqlx::query("UPDATE refresh_tokens SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL")
                .bind(token_hash)
                .bind(now_ms())
                .execute(&mut *tx)
                .await
                .context("spending a refresh token")?
                .rows_affected()
                == 1
        } else {
            false
        };
        if !claimed {
            revoke_family_in(&mut tx, &family).await?;
            self.revoke_tokens_in(&mut tx, &user_id, std::slice::from_ref(&family)).await?;
            self.db.commit_events(tx).await.context("revoking a reused session")?;
            return Ok(Refresh::Reused { user_id, family });
        }
        if expires_at < now_ms() {
            return Ok(Refresh::Expired);
        }
        insert_token(&mut tx, new_hash, &family, &user_id, new_expires_at).await?;
        tx.commit().await.context("committing a refresh")?;
        Ok(Refresh::Rotated { user_id, family })
    }

    /// The family of a refresh token, if it exists.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store family_of"))]
    pub async fn family_of(&self, token_hash: &str) -> anyhow::Result<Option<String>> {
        sqlx::query_scalar::<_, String>("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(self.db.pool())
            .await
            .context("finding a refresh token")
    }

    /// Ends a session (sign-out): its refresh tokens, and its access tokens on every verifier.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store revoke_family"))]
    pub async fn revoke_family(&self, family_id: &str) -> anyhow::Result<u64> {
        let mut tx = self.db.begin_write().await.context("starting a revocation")?;
        let n = revoke_family_in(&mut tx, family_id).await?;
        if n > 0 {
            let user_id: String = sqlx::query_scalar("SELECT user_id FROM refresh_families WHERE id = $1")
                .bind(family_id)
                .fetch_one(&mut *tx)
                .await
                .context("reading a session")?;
            self.revoke_tokens_in(&mut tx, &user_id, &[family_id.to_owned()]).await?;
        }
        self.db.commit_events(tx).await.context("committing a revocation")?;
        Ok(n)
    }

    /// Ends every session of a user (password or role change), their access tokens included.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store revoke_sessions_of"))]
    pub async fn revoke_sessions_of(&self, user_id: &str) -> anyhow::Result<u64> {
        let mut tx = self.db.begin_write().await.context("ending a user's sessions")?;
        let live: Vec<String> =
            sqlx::query_scalar("SELECT id FROM refresh_families WHERE user_id = $1 AND revoked_at IS NULL")
                .bind(user_id)
                .fetch_all(&mut *tx)
                .await
                .context("finding a user's sessions")?;
        sqlx::query("UPDATE refresh_families SET revoked_at = $2 WHERE user_id = $1 AND revoked_at IS NULL")
            .bind(user_id)
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .context("ending a user's sessions")?;
        if !live.is_empty() {
            self.revoke_tokens_in(&mut tx, user_id, &live).await?;
        }
        self.db.commit_events(tx).await.context("ending a user's sessions")?;
        Ok(live.len() as u64)
    }

    // --- service accounts -------------------------------------------------------------------

    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store insert_service_account"))]
    pub async fn insert_service_account(
        &self,
        client_id: &str,
        name: &str,
        secret_hash: &str,
        scopes: &[String],
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO service_accounts (client_id, name, secret_hash, created_at, scopes) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(client_id)
        .bind(name)
        .bind(secret_hash)
        .bind(now_ms())
        .bind(scopes.join(" "))
        .execute(self.db.pool())
        .await
        .context("storing a service account")?;
        Ok(())
    }

    /// A service account that is not revoked: its secret's hash and its scopes.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store live_service_account"))]
    pub async fn live_service_account(
        &self,
        client_id: &str,
    ) -> anyhow::Result<Option<(String, Vec<String>)>> {
        let row = sqlx::query(
            "SELECT secret_hash, scopes FROM service_accounts WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .fetch_optional(self.db.pool())
        .await
        .context("finding a service account")?;
        row.map(|r| {
            let scopes: String = r.try_get(1)?;
            Ok((r.try_get(0)?, scopes.split_whitespace().map(str::to_owned).collect()))
        })
        .transpose()
    }

    /// Every service account, oldest first.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store service_accounts"))]
    pub async fn service_accounts(&self) -> anyhow::Result<Vec<StoredServiceAccount>> {
        let rows = sqlx::query(
            "SELECT client_id, name, scopes, created_at, revoked_at FROM service_accounts ORDER BY created_at, client_id",
        )
        .fetch_all(self.db.pool())
        .await
        .context("listing service accounts")?;
        rows.iter().map(StoredServiceAccount::from_row).collect()
    }

    /// Sets a live account's secret and scopes at once (a deployment provisioning it), and with
    /// `revoke_tokens` ends the tokens it holds (scopes taken away must not outlive the change
    /// in tokens issued before it); false when there is no such live account.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store reset_service_account"))]
    pub async fn reset_service_account(
        &self,
        client_id: &str,
        secret_hash: &str,
        scopes: &[String],
        revoke_tokens: bool,
    ) -> anyhow::Result<bool> {
        let mut tx = self.db.begin_write().await.context("resetting a service account")?;
        let done = sqlx::query(
            "UPDATE service_accounts SET secret_hash = $2, scopes = $3 WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .bind(secret_hash)
        .bind(scopes.join(" "))
        .execute(&mut *tx)
        .await
        .context("resetting a service account")?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        if revoke_tokens {
            self.revoke_tokens_in(&mut tx, client_id, &[]).await?;
        }
        self.db.commit_events(tx).await.context("resetting a service account")?;
        Ok(true)
    }

    /// A new secret for a live account; `None` when there is no such account, or it is revoked.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store set_service_account_secret"))]
    pub async fn set_service_account_secret(
        &self,
        client_id: &str,
        secret_hash: &str,
    ) -> anyhow::Result<Option<StoredServiceAccount>> {
        let done = sqlx::query(
            "UPDATE service_accounts SET secret_hash = $2 WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .bind(secret_hash)
        .execute(self.db.pool())
        .await
        .context("rotating a secret")?;
        if done.rows_affected() == 0 {
            return Ok(None);
        }
        self.service_account(client_id).await
    }

    /// Revokes an account (again is the same); `None` when there is no such account.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store revoke_service_account"))]
    pub async fn revoke_service_account(
        &self,
        client_id: &str,
    ) -> anyhow::Result<Option<StoredServiceAccount>> {
        let mut tx = self.db.begin_write().await.context("revoking a service account")?;
        let done = sqlx::query(
            "UPDATE service_accounts SET revoked_at = $2 WHERE client_id = $1 AND revoked_at IS NULL",
        )
        .bind(client_id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await
        .context("revoking a service account")?;
        if done.rows_affected() > 0 {
            // Its tokens end with it, not when they expire.
            self.revoke_tokens_in(&mut tx, client_id, &[]).await?;
        }
        self.db.commit_events(tx).await.context("revoking a service account")?;
        self.service_account(client_id).await
    }

    /// An account by its client id, revoked or not.
    #[tracing::instrument(level = "info", name = "store", skip_all, fields(otel.name = "users store service_account"))]
    pub async fn service_account(&self, client_id: &str) -> anyhow::Result<Option<StoredServiceAccount>> {
        let row = sqlx::query(
            "SELECT client_id, name, scopes, created_at, revoked_at FROM service_accounts WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(self.db.pool())
        .await
        .context("reading a service account")?;
        row.as_ref().map(StoredServiceAccount::from_row).transpose()
    }
}

/// A service account as stored, without its secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredServiceAccount {
    pub client_id: String,
    pub name: String,
    pub scopes: Vec<String>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl StoredServiceAccount {
    fn from_row(row: &sqlx::any::AnyRow) -> anyhow::Result<Self> {
        let scopes: String = row.try_get(2)?;
        Ok(Self {
            client_id: row.try_get(0)?,
            name: row.try_get(1)?,
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
            created_at: row.try_get(3)?,
            revoked_at: row.try_get(4)?,
        })
    }
}

/// How a refresh went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    Rotated {
        user_id: String,
        family: String,
    },
    /// The token was spent before: the session is now revoked.
    Reused {
        user_id: String,
        family: String,
    },
    Revoked,
    Expired,
    Unknown,
}

async fn insert_token(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    token_hash: &str,
    family: &str,
    user_id: &str,
    expires_at: i64,
) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, user_id, expires_at, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(family)
    .bind(user_id)
    .bind(expires_at)
    .bind(now_ms())
    .execute(&mut **tx)
    .await
    .context("storing a refresh token")?;
    Ok(())
}

async fn revoke_family_in(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    family: &str,
) -> anyhow::Result<u64> {
    let done =
        sqlx::query("UPDATE refresh_families SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL")
            .bind(family)
            .bind(now_ms())
            .execute(&mut **tx)
            .await
            .context("revoking a session")?;
    Ok(done.rows_affected())
}

/// An entry of the audit trail as stored: the client's address sealed.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub id: String,
    pub at_ms: i64,
    pub actor: String,
    /// Space-separated.
    pub roles: String,
    pub action: String,
    pub target: String,
    pub status: i64,
    pub request_id: String,
    pub address_sealed: Vec<u8>,
}

/// Which entries of the audit trail to read.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub since_ms: i64,
    pub limit: i64,
}

impl UserStore {
    /// Appends `row` to the audit trail (which refuses updates and deletes in the database).
    pub async fn record_audit(&self, row: &AuditRow) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO audit_log (id, at_ms, actor, roles, action, target, status, request_id, address_sealed) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&row.id)
        .bind(row.at_ms)
        .bind(&row.actor)
        .bind(&row.roles)
        .bind(&row.action)
        .bind(&row.target)
        .bind(row.status)
        .bind(&row.request_id)
        .bind(&row.address_sealed)
        .execute(self.db.pool())
        .await
        .context("appending to the audit trail")?;
        Ok(())
    }

    /// The audit trail, newest first.
    pub async fn audit(&self, filter: &AuditFilter) -> anyhow::Result<Vec<AuditRow>> {
        let rows = sqlx::query(
            "SELECT id, at_ms, actor, roles, action, target, status, request_id, address_sealed FROM audit_log \
             WHERE ($1 = '' OR actor = $1) AND ($2 = '' OR action = $2) AND at_ms >= $3 \
             ORDER BY at_ms DESC, id DESC LIMIT $4",
        )
        .bind(filter.actor.clone().unwrap_or_default())
        .bind(filter.action.clone().unwrap_or_default())
        .bind(filter.since_ms)
        .bind(filter.limit)
        .fetch_all(self.db.pool())
        .await
        .context("reading the audit trail")?;
        rows.iter()
            .map(|r| {
                Ok(AuditRow {
                    id: r.try_get(0)?,
                    at_ms: r.try_get(1)?,
                    actor: r.try_get(2)?,
                    roles: r.try_get(3)?,
                    action: r.try_get(4)?,
                    target: r.try_get(5)?,
                    status: r.try_get(6)?,
                    request_id: r.try_get(7)?,
                    address_sealed: r.try_get(8)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .context("reading the audit trail")
    }
}
