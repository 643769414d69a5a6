//! Password hashing: argon2id with OWASP's minimum parameters (19 MiB, 2 passes, 1 lane).
//!
//! Hashing takes tens of milliseconds of CPU by design, so it runs on the blocking pool, never
//! on the async threads, and a semaphore bounds how many run at once: a burst of logins queues
//! instead of exhausting memory (19 MiB each) or starving every other request.

use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::domain::Password;

pub const MEMORY_KIB: u32 = 19_456;
pub const PASSES: u32 = 2;
pub const LANES: u32 = 1;

#[derive(Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
    /// A real hash of a random password, verified against when the user does not exist, so
    /// that "no such user" costs the same time as "wrong password".
    dummy: Arc<String>,
}

fn argon2() -> Argon2<'static> {
    Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(MEMORY_KIB, PASSES, LANES, None).expect("valid params"),
    )
}

fn hash_blocking(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::generate(&mut OsRng);
    Ok(argon2()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| argon2().verify_password(password.as_bytes(), &parsed).is_ok())
}

impl Hasher {
    /// `concurrency` hashes at most at once (the number of cores is a good value).
    pub async fn new(concurrency: usize) -> anyhow::Result<Self> {
        let dummy = tokio::task::spawn_blocking(|| hash_blocking(&uuid::Uuid::new_v4().to_string()))
            .await
            .context("hashing task")??;
        Ok(Self { permits: Arc::new(Semaphore::new(concurrency.max(1))), dummy: Arc::new(dummy) })
    }

    pub async fn hash(&self, password: &Password) -> anyhow::Result<String> {
        // The permit moves into the blocking task: a cancelled request does not free it while
        // its hash is still running.
        let permit = self.permits.clone().acquire_owned().await.context("hasher closed")?;
        let password = password.expose().to_owned();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            hash_blocking(&password)
        })
        .await
        .context("hashing task")?
    }

    /// Checks `password` against `hash`, or against the dummy when there is no user, taking the
    /// same time either way.
    pub async fn verify(&self, password: &Password, hash: Option<&str>) -> anyhow::Result<bool> {
        let permit = self.permits.clone().acquire_owned().await.context("hasher closed")?;
        let exists = hash.is_some();
        let hash = hash.map_or_else(|| self.dummy.as_str().to_owned(), str::to_owned);
        let password = password.expose().to_owned();
        let ok = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            verify_blocking(&password, &hash)
        })
        .await
        .context("verify task")?;
        Ok(ok && exists)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_are_argon2id_with_owasp_parameters_and_verify() {
        let hasher = Hasher::new(2).await.unwrap();
        let password = Password::unchecked("correct horse battery staple");
        let hash = hasher.hash(&password).await.unwrap();
        assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
        assert!(hasher.verify(&password, Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&Password::unchecked("wrong horse"), Some(&hash)).await.unwrap());
        assert!(!hasher.verify(&password, None).await.unwrap(), "no user never verifies");
    }
}
