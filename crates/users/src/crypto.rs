//! Encryption of personal data at rest (envelope encryption) and the keyed blind index.
//!
//! - The **master key** (32 bytes) comes from the environment or a file, never the database.
//!   It only wraps other keys.
//! - **Keys** (the data key, the blind-index key, the token signing keys) are stored in the
//!   database wrapped by the master key with AES-256-GCM, bound to their id and purpose as
//!   associated data. Rotating the master key re-wraps these few rows and touches no user data.
//! - **Personal data** (email, full name, address) is AES-256-GCM ciphertext under the data key,
//!   bound to its row and column as associated data, so a value copied to another row or column
//!   fails to decrypt instead of showing someone else's address.
//! - **Lookup by email** goes through a keyed blind index (HMAC-SHA256 of the normalised email),
//!   which is equal for equal emails and reveals nothing without the key.
//!
//! Built from RustCrypto's `aes-gcm` and `hmac`; the envelope layout is ours because it is
//! three lines: `version (1) || nonce (12) || ciphertext+tag`.

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

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
pub struct MasterKey {
    cipher: Aes256Gcm,
    id: String,
}

impl MasterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        if bytes.len() != 32 {
            return Err(CryptoError::BadMasterKey);
        }
        // The id tells which master key wrapped a row, without revealing the key.
        let id = hex::encode(&Sha256::digest([b"bookstore-master-key-id:".as_slice(), bytes].concat())[..8]);
        Ok(Self { cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(bytes)), id })
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
}

fn wrap_aad(key_id: &str, purpose: &str) -> String {
    format!("bookstore/keys/{purpose}/{key_id}")
}

/// Encrypts and decrypts personal data.
pub struct DataKey {
    pub id: String,
    cipher: Aes256Gcm,
}

impl DataKey {
    pub fn new(id: String, material: &[u8]) -> Self {
        Self { id, cipher: Aes256Gcm::new(Key::<Aes256Gcm>::from_slice(material)) }
    }

    /// Fresh material for a new data key.
    pub fn generate_material() -> Zeroizing<Vec<u8>> {
        Zeroizing::new(Aes256Gcm::generate_key(&mut OsRng).to_vec())
    }

    /// Encrypts the value of `column` in the row of `row_id`.
    pub fn encrypt(&self, row_id: &str, column: &str, plaintext: &str) -> Vec<u8> {
        seal(&self.cipher, field_aad(row_id, column).as_bytes(), plaintext.as_bytes())
    }

    pub fn decrypt(&self, row_id: &str, column: &str, sealed: &[u8]) -> Result<String, CryptoError> {
        let bytes = open(&self.cipher, field_aad(row_id, column).as_bytes(), sealed)?;
        String::from_utf8(bytes).map_err(|_| CryptoError::Malformed)
    }
}

fn field_aad(row_id: &str, column: &str) -> String {
    format!("bookstore/users/{row_id}/{column}")
}

/// The keyed blind index for equality lookups on encrypted values.
pub struct BlindIndex {
    key: Zeroizing<Vec<u8>>,
}

impl BlindIndex {
    pub fn new(material: &[u8]) -> Self {
        Self { key: Zeroizing::new(material.to_vec()) }
    }

    pub fn email(&self, normalized_email: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(b"email:");
        mac.update(normalized_email.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }
}

/// SHA-256, hex: how refresh tokens and client secrets are looked up without being stored.
pub fn sha256_hex(value: &str) -> String {
    hex::encode(Sha256::digest(value.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_key() -> DataKey {
        DataKey::new("dk1".into(), &DataKey::generate_material())
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
    fn the_blind_index_is_deterministic_and_keyed() {
        let a = BlindIndex::new(b"key-a");
        let b = BlindIndex::new(b"key-b");
        assert_eq!(a.email("ada@example.com"), a.email("ada@example.com"));
        assert_ne!(a.email("ada@example.com"), a.email("bob@example.com"));
        assert_ne!(a.email("ada@example.com"), b.email("ada@example.com"));
    }
}
