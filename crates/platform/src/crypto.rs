//! Encryption of personal data at rest and in transit between services (envelope encryption),
//! for every service that keeps personal data.
//!
//! - The **master key** (32 bytes) comes from the environment or a file, never a database
//!   ([`load_master_key`]). It only wraps or derives other keys.
//! - A service's **data key** is random, stored in its own database wrapped by the master key
//!   with AES-256-GCM, bound to its id and purpose as associated data ([`stored_data_key`]; the
//!   users service keeps its keys in its own keyring). Rotating the master key re-wraps these
//!   few rows and touches no data.
//! - **Values** are AES-256-GCM ciphertext under a data key, bound to their scope, row and column
//!   as associated data ([`DataKey`]), so a value copied to another row or column fails to
//!   decrypt instead of showing someone else's address.
//! - Values that travel between services (in events) are sealed under a key both sides derive
//!   from the master key ([`MasterKey::derive`], HKDF-SHA256).
//!
//! Built from RustCrypto's `aes-gcm` and `hkdf`; the envelope layout is ours because it is
//! three lines: `version (1) || nonce (12) || ciphertext+tag`.

use std::path::Path;

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use anyhow::Context as _;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::clock::now_ms;
use crate::db::Database;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("ciphertext is malformed")]
    Malformed,
    #[error("decryption failed: wrong key, or the value was moved or altered")]
    Decrypt,
    #[error("master key must be 32 bytes, base64-encoded")]
    BadMasterKey,
}

fn seal(cipher: &Aes256Gcm, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
    let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
    let ciphertext =
        cipher.encrypt(&nonce, Payload { msg: plaintext, aad }).expect("AES-GCM encryption does not fail");
    let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
    out.push(VERSION);
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ciphertext);
    out
}

fn open(cipher: &Aes256Gcm, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != VERSION {
        return Err(CryptoError::Malformed);
    }
    let nonce = Nonce::from_slice(&sealed[1..1 + NONCE_LEN]);
    cipher.decrypt(nonce, Payload { msg: &sealed[1 + NONCE_LEN..], aad }).map_err(|_| CryptoError::Decrypt)
}

/// The key that wraps all other keys.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
    id: String,
    /// The key itself, for the keys derived from it ([`MasterKey::derive`]).
    material: Zeroizing<Vec<u8>>,
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::BadMasterKey);
        }
        // The id tells which master key wrapped a row, without revealing the key.
        let id = hex::encode(&Sha256::digest([b"bookstore-master-key-id:".as_slice(), bytes].concat())[..8]);
        Ok(Self {
            cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)),
            id,
            material: Zeroizing::new(bytes.to_vec()),
        })
    }

    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let bytes = Zeroizing::new(STANDARD.decode(text.trim()).map_err(|_| CryptoError::BadMasterKey)?);
        Self::from_bytes(&bytes)
    }

    /// A fresh random key, base64-encoded, for `bookstore admin generate-master-key` and the
    /// embedded default of `bookstore up`.
    pub fn generate_base64() -> String {
        let key = Aes256Gcm::generate_key(&mut OsRng);
        STANDARD.encode(key)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Wraps key material, bound to the key's id and purpose.
    pub fn wrap(&self, key_id: &str, purpose: &str, material: &[u8]) -> Vec<u8> {
        seal(&self.cipher, wrap_aad(key_id, purpose).as_bytes(), material)
    }

    pub fn unwrap(
        &self,
        key_id: &str,
        purpose: &str,
        wrapped: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        open(&self.cipher, wrap_aad(key_id, purpose).as_bytes(), wrapped).map(Zeroizing::new)
    }

    /// A key derived from this one for `purpose` (HKDF-SHA256, RFC 5869), that every service
    /// holding the master key derives alike: for data that travels between services, such as
    /// the sealed parts of events. Its values are bound to `scope` as [`DataKey`]'s are.
    pub fn derive(&self, purpose: &str, scope: &'static str) -> DataKey {
        let mut material = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<Sha256>::new(Some(b"bookstore"), &self.material)
            .expand(format!("bookstore/derived/{purpose}").as_bytes(), material.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 length");
        DataKey::new(scope, format!("derived:{purpose}:{}", self.id), material.as_ref())
    }
}

fn wrap_aad(key_id: &str, purpose: &str) -> String {
    format!("bookstore/keys/{purpose}/{key_id}")
}

/// Encrypts and decrypts personal data, each value bound to its place:
/// `bookstore/<scope>/<row id>/<column>` as associated data.
pub struct DataKey {
    pub id: String,
    scope: &'static str,
    cipher: Aes256Gcm,
}

impl DataKey {
    /// A key for the values of `scope` (the service's name, or what its values travel in).
    pub fn new(scope: &'static str, id: String, material: &[u8]) -> Self {
        Self { id, scope, cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(material)) }
    }

    /// Fresh material for a new data key.
    pub fn generate_material() -> Zeroizing<Vec<u8>> {
        Zeroizing::new(Aes256Gcm::generate_key(&mut OsRng).to_vec())
    }

    /// Encrypts the value of `column` in the row of `row_id`.
    pub fn encrypt(&self, row_id: &str, column: &str, plaintext: &str) -> Vec<u8> {
        seal(&self.cipher, self.aad(row_id, column).as_bytes(), plaintext.as_bytes())
    }

    pub fn decrypt(&self, row_id: &str, column: &str, sealed: &[u8]) -> Result<String, CryptoError> {
        let bytes = open(&self.cipher, self.aad(row_id, column).as_bytes(), sealed)?;
        String::from_utf8(bytes).map_err(|_| CryptoError::Malformed)
    }

    fn aad(&self, row_id: &str, column: &str) -> String {
        format!("bookstore/{}/{row_id}/{column}", self.scope)
    }
}

/// The key that seals `what` in events (e.g. `shipping-address`): derived from the master key,
/// so the producer and every consumer that holds the master key agree on it without a key
/// exchange; values are bound to `bookstore/events/<row id>/<column>`.
pub fn event_key(master: &MasterKey, what: &str) -> DataKey {
    master.derive(&format!("events/{what}"), "events")
}

/// The master key: `text` (base64), else the file at `file`, else (when `generate_in` names
/// the data folder, as `up` does) the key kept in `<data_dir>/master.key`, generated on first
/// start. `who` names what needs it, for the message when there is none.
pub fn load_master_key(
    text: Option<&str>,
    file: Option<&Path>,
    generate_in: Option<&Path>,
    who: &str,
) -> anyhow::Result<MasterKey> {
    if let Some(text) = text {
        return MasterKey::from_base64(text)
            .context("invalid configuration: master_key (BOOKSTORE_MASTER_KEY)");
    }
    if let Some(path) = file {
        return read_master_key(path)
            .context("invalid configuration: master_key_file (BOOKSTORE_MASTER_KEY_FILE)");
    }
    let Some(data_dir) = generate_in else {
        anyhow::bail!(
            "{who} needs the master key: set master_key_file (BOOKSTORE_MASTER_KEY_FILE) or \
             master_key (BOOKSTORE_MASTER_KEY); `bookstore admin generate-master-key` makes one"
        );
    };
    let path = data_dir.join("master.key");
    if !path.exists() {
        std::fs::create_dir_all(data_dir).context("creating the data folder")?;
        write_secret_file(&path, &MasterKey::generate_base64())?;
        tracing::warn!(path = %path.display(), "generated a master key for this data folder; keep it with the data");
    }
    read_master_key(&path)
}

fn read_master_key(path: &Path) -> anyhow::Result<MasterKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(MasterKey::from_base64(&text)?)
}

/// Writes a file only its owner can read.
pub fn write_secret_file(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    Ok(())
}

/// The service's data key for `scope`, from its database's `data_keys` table (a migration of the
/// service's own creates it), made on first start. Replicas starting at once may each make one;
/// all of them then use the oldest, so they agree. Fails with a clear message when the key was
/// wrapped by another master key.
pub async fn stored_data_key(
    db: &Database,
    master: &MasterKey,
    scope: &'static str,
) -> anyhow::Result<DataKey> {
    const OLDEST: &str =
        "SELECT id, master_key_id, wrapped FROM data_keys WHERE scope = $1 ORDER BY created_at, id LIMIT 1";
    let oldest = |db: &Database| {
        let pool = db.pool().clone();
        async move {
            let row = sqlx::query(OLDEST)
                .bind(scope)
                .fetch_optional(&pool)
                .await
                .context("reading the data key")?;
            anyhow::Ok(row.map(|row| {
                use sqlx::Row;
                (row.get::<String, _>(0), row.get::<String, _>(1), row.get::<Vec<u8>, _>(2))
            }))
        }
    };
    let (id, master_id, wrapped) = match oldest(db).await? {
        Some(found) => found,
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            let material = DataKey::generate_material();
            sqlx::query("INSERT INTO data_keys (id, scope, master_key_id, wrapped, created_at) VALUES ($1, $2, $3, $4, $5)")
                .bind(&id)
                .bind(scope)
                .bind(master.id())
                .bind(master.wrap(&id, scope, &material))
                .bind(now_ms())
                .execute(db.pool())
                .await
                .context("storing a new data key")?;
            oldest(db).await?.context("the data key just stored is gone")?
        }
    };
    anyhow::ensure!(
        master_id == master.id(),
        "the {scope} data key was wrapped by master key {master_id}, not by the configured master key {}: \
         start with the master key this data was written under",
        master.id()
    );
    let material = master.unwrap(&id, scope, &wrapped).context("unwrapping the data key")?;
    Ok(DataKey::new(scope, id, &material))
}

/// Re-wraps every data key in `db`'s `data_keys` from `old` to `new`; how many.
pub async fn rewrap_data_keys(db: &Database, old: &MasterKey, new: &MasterKey) -> anyhow::Result<u64> {
    use sqlx::Row;
    let rows = sqlx::query("SELECT id, scope, wrapped FROM data_keys WHERE master_key_id = $1")
        .bind(old.id())
        .fetch_all(db.pool())
        .await
        .context("reading data keys")?;
    let mut count = 0;
    for row in rows {
        let (id, scope, wrapped): (String, String, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
        let material = old.unwrap(&id, &scope, &wrapped).context("unwrapping a data key")?;
        sqlx::query("UPDATE data_keys SET wrapped = $1, master_key_id = $2 WHERE id = $3")
            .bind(new.wrap(&id, &scope, &material))
            .bind(new.id())
            .bind(&id)
            .execute(db.pool())
            .await
            .context("re-wrapping a data key")?;
        count += 1;
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_key() -> DataKey {
        DataKey::new("users", "dk1".into(), &DataKey::generate_material())
    }

    #[test]
    fn a_value_decrypts_only_in_its_own_row_and_column() {
        let key = data_key();
        let sealed = key.encrypt("user-1", "email", "ada@example.com");
        assert_eq!(key.decrypt("user-1", "email", &sealed).unwrap(), "ada@example.com");
        assert!(matches!(key.decrypt("user-2", "email", &sealed), Err(CryptoError::Decrypt)));
        assert!(matches!(key.decrypt("user-1", "address", &sealed), Err(CryptoError::Decrypt)));
    }

    #[test]
    fn ciphertext_does_not_contain_the_plaintext_and_is_fresh_each_time() {
        let key = data_key();
        let a = key.encrypt("u", "email", "ada@example.com");
        let b = key.encrypt("u", "email", "ada@example.com");
        assert_ne!(a, b, "a fresh nonce per encryption");
        assert!(!a.windows(3).any(|w| w == b"ada"));
    }

    #[test]
    fn a_tampered_ciphertext_fails() {
        let key = data_key();
        let mut sealed = key.encrypt("u", "email", "ada@example.com");
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(key.decrypt("u", "email", &sealed).is_err());
        assert!(matches!(key.decrypt("u", "email", &sealed[..10]), Err(CryptoError::Malformed)));
    }

    #[test]
    fn wrapped_keys_open_only_with_the_same_master_key_id_and_purpose() {
        let master = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let other = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        assert_ne!(master.id(), other.id());
        let wrapped = master.wrap("k1", "data", b"0123456789abcdef0123456789abcdef");
        assert_eq!(&master.unwrap("k1", "data", &wrapped).unwrap()[..], b"0123456789abcdef0123456789abcdef");
        assert!(other.unwrap("k1", "data", &wrapped).is_err());
        assert!(master.unwrap("k2", "data", &wrapped).is_err());
        assert!(master.unwrap("k1", "signing", &wrapped).is_err());
    }

    #[test]
    fn a_master_key_must_be_32_bytes_of_base64() {
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
        assert!(MasterKey::from_base64("not base64!").is_err());
    }

    #[test]
    fn derived_keys_agree_for_one_master_key_and_purpose_only() {
        let master = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let again = MasterKey::from_base64(&STANDARD.encode(&*master.material)).unwrap();
        let other = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let sealed = master.derive("shipping", "events").encrypt("o1", "address", "1 Main St");
        assert_eq!(
            again.derive("shipping", "events").decrypt("o1", "address", &sealed).unwrap(),
            "1 Main St"
        );
        assert!(master.derive("other", "events").decrypt("o1", "address", &sealed).is_err());
        assert!(other.derive("shipping", "events").decrypt("o1", "address", &sealed).is_err());
        assert!(
            master.derive("shipping", "orders").decrypt("o1", "address", &sealed).is_err(),
            "bound to its scope"
        );
    }

    crate::backend_tests!(a_stored_data_key_is_made_once_and_opens_only_under_its_master_key);

    async fn a_stored_data_key_is_made_once_and_opens_only_under_its_master_key(backend: crate::db::Backend) {
        let Some(db) = crate::testing::TestDatabase::new(backend).await else { return };
        let database = Database::connect(&db.url, &crate::db::PoolConfig::default()).await.unwrap();
        let blob = if backend == crate::db::Backend::Postgres { "BYTEA" } else { "BLOB" };
        sqlx::query(&format!(
            "CREATE TABLE data_keys (id TEXT PRIMARY KEY, scope TEXT NOT NULL, master_key_id TEXT NOT NULL, \
             wrapped {blob} NOT NULL, created_at BIGINT NOT NULL)"
        ))
        .execute(database.pool())
        .await
        .unwrap();
        let master = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let first = stored_data_key(&database, &master, "orders").await.unwrap();
        let second = stored_data_key(&database, &master, "orders").await.unwrap();
        assert_eq!(first.id, second.id, "made once, then read");
        let sealed = first.encrypt("o1", "address", "1 Main St");
        assert_eq!(second.decrypt("o1", "address", &sealed).unwrap(), "1 Main St");

        let other = MasterKey::from_base64(&MasterKey::generate_base64()).unwrap();
        let err = stored_data_key(&database, &other, "orders").await.err().unwrap();
        assert!(format!("{err:#}").contains("wrapped by master key"), "{err:#}");
        assert_eq!(rewrap_data_keys(&database, &master, &other).await.unwrap(), 1);
        let rewrapped = stored_data_key(&database, &other, "orders").await.unwrap();
        assert_eq!(
            rewrapped.decrypt("o1", "address", &sealed).unwrap(),
            "1 Main St",
            "the same key, re-wrapped"
        );
    }
}
