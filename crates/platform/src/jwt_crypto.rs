//! The cryptography behind `jsonwebtoken`: Ed25519 (EdDSA) only, from `ed25519-dalek`.
//!
//! jsonwebtoken 10 takes its algorithms from a process-wide `CryptoProvider`. Its bundled
//! `rust_crypto` provider compiles every algorithm, RSA included, and the `rsa` crate carries an
//! unfixed timing advisory (RUSTSEC-2023-0071, the Marvin attack). The bookstore signs and
//! verifies EdDSA only, so this provider offers exactly that, and the binary contains no RSA
//! code at all. Tests that forge HS256 tokens (to prove they are refused) get HMAC signing in
//! test builds only; verification is EdDSA in every build.
//!
//! [`install`] must run before the first token is signed or verified; the verifier, the users
//! keyring and the test issuer call it, so no caller has to remember.

use ed25519_dalek::pkcs8::DecodePrivateKey;
use jsonwebtoken::crypto::{CryptoProvider, JwkUtils, JwtSigner, JwtVerifier};
use jsonwebtoken::errors::{ErrorKind, Result};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::signature::{Error, Signer, Verifier};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey};
use sha2::Digest;

static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: new_signer,
    verifier_factory: new_verifier,
    jwk_utils: JwkUtils {
        extract_rsa_public_key_components: |_| Err(ErrorKind::InvalidAlgorithmName.into()),
        extract_ec_public_key_coordinates: |_, _| Err(ErrorKind::InvalidAlgorithmName.into()),
        compute_digest,
    },
};

/// Makes this the process's provider; later calls (and a provider already installed by this
/// function) are fine.
pub fn install() {
    let _ = PROVIDER.install_default();
}

fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
    match algorithm {
        Algorithm::EdDSA if key.family() == AlgorithmFamily::Ed => {
            let key = ed25519_dalek::SigningKey::from_pkcs8_der(key.inner())
                .map_err(|_| ErrorKind::InvalidEddsaKey)?;
            Ok(Box::new(EdDsaSigner(key)))
        }
        #[cfg(any(test, feature = "testing"))]
        Algorithm::HS256 => Ok(Box::new(forging::Hs256Signer(key.try_get_hmac_secret()?.to_vec()))),
        _ => Err(ErrorKind::InvalidAlgorithmName.into()),
    }
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match algorithm {
        Algorithm::EdDSA if key.family() == AlgorithmFamily::Ed => {
            let bytes: &[u8; 32] =
                key.as_bytes().get(..32).and_then(|b| b.try_into().ok()).ok_or(ErrorKind::InvalidEddsaKey)?;
            let key =
                ed25519_dalek::VerifyingKey::from_bytes(bytes).map_err(|_| ErrorKind::InvalidEddsaKey)?;
            Ok(Box::new(EdDsaVerifier(key)))
        }
        _ => Err(ErrorKind::InvalidAlgorithmName.into()),
    }
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> Vec<u8> {
    match hash {
        ThumbprintHash::SHA256 => sha2::Sha256::digest(data).to_vec(),
        ThumbprintHash::SHA384 => sha2::Sha384::digest(data).to_vec(),
        ThumbprintHash::SHA512 => sha2::Sha512::digest(data).to_vec(),
    }
}

struct EdDsaSigner(ed25519_dalek::SigningKey);

impl Signer<Vec<u8>> for EdDsaSigner {
    fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, Error> {
        Ok(ed25519_dalek::Signer::sign(&self.0, msg).to_bytes().to_vec())
    }
}

impl JwtSigner for EdDsaSigner {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

struct EdDsaVerifier(ed25519_dalek::VerifyingKey);

impl Verifier<Vec<u8>> for EdDsaVerifier {
    fn verify(&self, msg: &[u8], signature: &Vec<u8>) -> std::result::Result<(), Error> {
        let signature = ed25519_dalek::Signature::from_slice(signature).map_err(|_| Error::new())?;
        ed25519_dalek::Verifier::verify(&self.0, msg, &signature).map_err(|_| Error::new())
    }
}

impl JwtVerifier for EdDsaVerifier {
    fn algorithm(&self) -> Algorithm {
        Algorithm::EdDSA
    }
}

/// HS256 signing, for tests that forge tokens a verifier must refuse.
#[cfg(any(test, feature = "testing"))]
mod forging {
    use hmac::Mac;

    use super::*;

    pub(super) struct Hs256Signer(pub(super) Vec<u8>);

    impl Signer<Vec<u8>> for Hs256Signer {
        fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, Error> {
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.0).map_err(|_| Error::new())?;
            mac.update(msg);
            Ok(mac.finalize().into_bytes().to_vec())
        }
    }

    impl JwtSigner for Hs256Signer {
        fn algorithm(&self) -> Algorithm {
            Algorithm::HS256
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eddsa_signs_and_verifies_and_nothing_else_verifies() {
        install();
        let signing = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(&signing).unwrap();
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::EdDSA),
            &serde_json::json!({"sub": "ada", "exp": 4_000_000_000u64}),
            &EncodingKey::from_ed_der(der.as_bytes()),
        )
        .unwrap();
        let public = DecodingKey::from_ed_der(signing.verifying_key().as_bytes());
        let mut validation = jsonwebtoken::Validation::new(Algorithm::EdDSA);
        validation.required_spec_claims.clear();
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<serde_json::Value>(&token, &public, &validation).unwrap();
        assert_eq!(data.claims["sub"], "ada");

        let other = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
        let wrong = DecodingKey::from_ed_der(other.verifying_key().as_bytes());
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &wrong, &validation).is_err());
        assert!(new_verifier(&Algorithm::RS256, &public).is_err(), "no RSA here");
        assert!(
            new_verifier(&Algorithm::HS256, &DecodingKey::from_secret(b"k")).is_err(),
            "no HMAC verification"
        );
    }
}
