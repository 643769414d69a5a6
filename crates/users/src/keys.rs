//! The keyring: every key the users service holds, unwrapped with the master key at start.
//!
//! - one data key (personal data) and one blind-index key, made on first start;
//! - signing keys for access tokens. The newest key whose `active_from` has come signs; every
//!   key that is pending, active, or retired less than a token lifetime (plus leeway) ago is in
//!   the JWKS, so tokens signed by an old key verify until they expire, and a new key is
//!   published before it is used (verifiers refetch the JWKS at most once a minute).

use std::sync::RwLock;
use std::time::Duration;

use anyhow::{Context, bail};
use ed25519_dalek::pkcs8::EncodePrivateKey;
use jsonwebtoken::EncodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet};

use crate::crypto::{BlindIndex, DataKey, MasterKey};
use crate::domain::KeyPurpose;
use crate::store::{KeyRow, UserStore};
use bookstore_platform::clock::now_ms;

/// A signing key ready to use.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Jwk,
    pub active_from: i64,
    pub retired_at: Option<i64>,
}

pub struct Keyring {
    pub master: MasterKey,
    pub data: DataKey,
    pub blind_index: BlindIndex,
    signing: RwLock<Vec<SigningKey>>,
    /// How long a superseded signing key stays in the JWKS: the access-token lifetime plus leeway.
    keep_retired_for: Duration,
}

impl Keyring {
    /// Loads (or, on first start, creates) the keys. Fails with a clear message if the keys
    /// were wrapped by another master key.
    pub async fn load(store: &UserStore, master: MasterKey, access_ttl: Duration) -> anyhow::Result<Self> {
        bookstore_platform::jwt_crypto::install();
        let data = single_key(store, &master, KeyPurpose::Data).await?;
        let blind = single_key(store, &master, KeyPurpose::BlindIndex).await?;
        let keyring = Self {
            data: DataKey::new("users", data.0, &data.1),
            blind_index: BlindIndex::new(&blind.1),
            master,
            signing: RwLock::new(Vec::new()),
            keep_retired_for: access_ttl + Duration::from_secs(bookstore_platform::auth::LEEWAY_SECS + 30),
        };
        if store.keys(KeyPurpose::Signing).await?.is_empty() {
            keyring.add_signing_key(store, Duration::ZERO).await?;
        }
        keyring.reload_signing_keys(store).await?;
        Ok(keyring)
    }

    /// Rereads the signing keys (another replica or the admin command may have rotated them).
    pub async fn reload_signing_keys(&self, store: &UserStore) -> anyhow::Result<()> {
        let mut keys = Vec::new();
        for row in store.keys(KeyPurpose::Signing).await? {
            let der = unwrap_row(&self.master, &row)?;
            let jwk: Jwk = serde_json::from_str(row.public_jwk.as_deref().unwrap_or_default())
                .with_context(|| format!("signing key {} has no public key", row.id))?;
            keys.push(SigningKey {
                kid: row.id,
                encoding: EncodingKey::from_ed_der(&der),
                jwk,
                active_from: row.active_from,
                retired_at: row.retired_at,
            });
        }
        *self.signing.write().expect("signing keys lock") = keys;
        Ok(())
    }

    /// Makes a new signing key that starts signing after `publish_ahead` (so verifiers can see
    /// it first), and retires the current one from that moment.
    pub async fn add_signing_key(
        &self,
        store: &UserStore,
        publish_ahead: Duration,
    ) -> anyhow::Result<String> {
        let kid = uuid::Uuid::now_v7().simple().to_string();
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = signing.to_pkcs8_der().context("encoding the signing key")?;
        let jwk = bookstore_platform::auth::ed25519_jwk(&kid, &signing.verifying_key().to_bytes());
        let now = now_ms();
        let row = KeyRow {
            id: kid.clone(),
            purpose: KeyPurpose::Signing,
            wrapped: self.master.wrap(&kid, KeyPurpose::Signing.as_str(), der.as_bytes()),
            master_key_id: self.master.id().to_owned(),
            public_jwk: Some(serde_json::to_string(&jwk)?),
            created_at: now,
            active_from: now + publish_ahead.as_millis() as i64,
            retired_at: None,
        };
        store.insert_key(&row).await?;
        self.reload_signing_keys(store).await?;
        Ok(kid)
    }

    /// The key that signs now: the newest whose `active_from` has passed.
    pub fn current_signing_key(&self) -> anyhow::Result<SigningKey> {
        let now = now_ms();
        let keys = self.signing.read().expect("signing keys lock");
        keys.iter()
            .filter(|k| k.active_from <= now)
            .max_by_key(|k| (k.active_from, k.kid.clone()))
            .cloned()
            .context("no active signing key")
    }

    /// The public keys verifiers may need: pending, current, and those superseded less than a
    /// token lifetime ago.
    pub fn jwks(&self) -> JwkSet {
        let now = now_ms();
        let keys = self.signing.read().expect("signing keys lock");
        let mut active: Vec<&SigningKey> = keys.iter().filter(|k| k.active_from <= now).collect();
        active.sort_by_key(|k| (k.active_from, k.kid.clone()));
        let keep = self.keep_retired_for.as_millis() as i64;
        let mut published = Vec::new();
        for (i, key) in active.iter().enumerate() {
            // A key is superseded when the next one became active.
            let superseded_at = active.get(i + 1).map(|next| next.active_from);
            if superseded_at.is_none_or(|at| now - at < keep) {
                published.push(key.jwk.clone());
            }
        }
        published.extend(keys.iter().filter(|k| k.active_from > now).map(|k| k.jwk.clone()));
        JwkSet { keys: published }
    }
}

fn unwrap_row(master: &MasterKey, row: &KeyRow) -> anyhow::Result<zeroize::Zeroizing<Vec<u8>>> {
    if row.master_key_id != master.id() {
        bail!(
            "key {} was wrapped by master key {}, but the configured master key is {}: \
             start with the master key this database was created with",
            row.id,
            row.master_key_id,
            master.id()
        );
    }
    master
        .unwrap(&row.id, row.purpose.as_str(), &row.wrapped)
        .with_context(|| format!("unwrapping key {}", row.id))
}

/// The one key of `purpose`, created if there is none yet.
async fn single_key(
    store: &UserStore,
    master: &MasterKey,
    purpose: KeyPurpose,
) -> anyhow::Result<(String, zeroize::Zeroizing<Vec<u8>>)> {
    if let Some(row) = store.keys(purpose).await?.into_iter().last() {
        let material = unwrap_row(master, &row)?;
        return Ok((row.id, material));
    }
    let id = uuid::Uuid::now_v7().simple().to_string();
    let material = DataKey::generate_material();
    let now = now_ms();
    store
        .insert_key(&KeyRow {
            id: id.clone(),
            purpose,
            wrapped: master.wrap(&id, purpose.as_str(), &material),
            master_key_id: master.id().to_owned(),
            public_jwk: None,
            created_at: now,
            active_from: now,
            retired_at: None,
        })
        .await?;
    Ok((id, material))
}

/// Re-wraps every key from `old` to `new` in one transaction. Personal data is untouched: it is
/// encrypted under the data key, which does not change.
pub async fn rotate_master_key(store: &UserStore, old: &MasterKey, new: &MasterKey) -> anyhow::Result<usize> {
    let rows = store.all_keys().await?;
    let mut rewrapped = Vec::with_capacity(rows.len());
    for row in &rows {
        if row.master_key_id == new.id() {
            continue;
        }
        let material = unwrap_row(old, row)?;
        rewrapped.push((row.id.clone(), new.wrap(&row.id, row.purpose.as_str(), &material)));
    }
    store.rewrap_keys(&rewrapped, new.id()).await?;
    Ok(rewrapped.len())
}
