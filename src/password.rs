//! Password hashing: argon2id, PHC strings, run off the async workers on the
//! blocking pool with a bound on how many run at once, so a login flood
//! queues here instead of stalling message traffic.

use std::sync::Arc;

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

use crate::proto::request::Secret;

/// Why hashing failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configured parameters are out of argon2's range.
    #[error("invalid argon2 parameters: {0}")]
    Params(String),
    /// Hashing failed (out of memory, no randomness).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cost {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

/// Hashes and verifies passwords; cheap to clone.
#[derive(Clone)]
pub struct Passwords {
    argon2: Argon2<'static>,
    permits: Arc<Semaphore>,
    /// A hash of nothing, verified against when the account does not exist so
    /// that "no such user" takes as long as "wrong password".
    decoy: Arc<String>,
}

impl Passwords {
    /// With `cost`, running at most `concurrent` hashes at once.
    pub fn new(cost: Cost, concurrent: usize) -> Result<Self, Error> {
        let params = Params::new(cost.memory_kib, cost.iterations, cost.parallelism, None)
            .map_err(|e| Error::Params(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let decoy = hash_with(&argon2, "decoy password, never matches")?;
        Ok(Self {
            argon2,
            permits: Arc::new(Semaphore::new(concurrent.max(1))),
            decoy: Arc::new(decoy),
        })
    }

    /// A PHC string for `password`, computed here on the calling thread (for
    /// the admin CLI).
    pub fn hash_blocking(&self, password: &str) -> Result<String, Error> {
        hash_with(&self.argon2, password)
    }

    /// A PHC string for `password`, computed on the blocking pool.
    pub async fn hash(&self, password: Secret) -> Result<String, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Hash(e.to_string()))?;
        let argon2 = self.argon2.clone();
        tokio::task::spawn_blocking(move || hash_with(&argon2, password.expose()))
            .await
            .map_err(|e| Error::Hash(e.to_string()))?
    }

    /// Whether `password` matches `phc`; with no hash (unknown account,
    /// deleted account) it does the same work and answers false.
    pub async fn verify(&self, password: Secret, phc: Option<String>) -> bool {
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let argon2 = self.argon2.clone();
        let real = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.decoy.as_ref().clone());
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc)
                .map(|parsed| {
                    argon2
                        .verify_password(password.expose().as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        real && matched
    }
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String, Error> {
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt)
        .map_err(|_| Error::Hash("no system randomness".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::Hash(e.to_string()))?;
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHEAP: Cost = Cost {
        memory_kib: 64,
        iterations: 1,
        parallelism: 1,
    };

    #[tokio::test]
    async fn hash_and_verify() {
        let p = Passwords::new(CHEAP, 2).unwrap();
        let phc = p.hash(Secret::new("hellosecret".into())).await.unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(!phc.contains("hellosecret"));
        assert!(
            p.verify(Secret::new("hellosecret".into()), Some(phc.clone()))
                .await
        );
        assert!(!p.verify(Secret::new("wrong".into()), Some(phc)).await);
        assert!(
            !p.verify(Secret::new("decoy password, never matches".into()), None)
                .await
        );
        assert!(
            !p.verify(Secret::new("x".into()), Some("not a phc".into()))
                .await
        );
    }
}
