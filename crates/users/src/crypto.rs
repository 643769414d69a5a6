//! The users service's own crypto: the keyed blind index for lookups by email, and hashes for
//! secrets it looks up without storing. Envelope encryption (master key → data key → fields)
//! is the platform's ([`bookstore_platform::crypto`]), shared with every service that keeps
//! personal data.
//!
//! **Lookup by email** goes through a keyed blind index (HMAC-SHA256 of the normalised email),
//! which is equal for equal emails and reveals nothing without the key.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

pub use bookstore_platform::crypto::{CryptoError, DataKey, MasterKey};

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

    #[test]
    fn the_blind_index_is_deterministic_and_keyed() {
        let a = BlindIndex::new(b"key-a");
        let b = BlindIndex::new(b"key-b");
        assert_eq!(a.email("ada@example.com"), a.email("ada@example.com"));
        assert_ne!(a.email("ada@example.com"), a.email("bob@example.com"));
        assert_ne!(a.email("ada@example.com"), b.email("ada@example.com"));
    }
}
