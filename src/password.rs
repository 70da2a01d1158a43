//! Password hashing: argon2id, PHC strings, run off the async workers on
//! threads of their own, as many as may hash at once, so a login flood
//! queues here instead of stalling message traffic.

use std::sync::{Arc, Mutex, mpsc};

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
    /// One per hashing thread: a hash waits here (cancellable, in turn)
    /// rather than in the threads' queue.
    permits: Arc<Semaphore>,
    threads: Arc<Threads>,
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
        let concurrent = concurrent.max(1);
        Ok(Self {
            argon2,
            permits: Arc::new(Semaphore::new(concurrent)),
            threads: Arc::new(Threads::start(concurrent)?),
            decoy: Arc::new(decoy),
        })
    }

    /// A PHC string for `password`, computed here on the calling thread (for
    /// the admin CLI).
    pub fn hash_blocking(&self, password: &str) -> Result<String, Error> {
        hash_with(&self.argon2, password)
    }

    /// A PHC string for `password`, computed on a hashing thread.
    pub async fn hash(&self, password: Secret) -> Result<String, Error> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|e| Error::Hash(e.to_string()))?;
        let argon2 = self.argon2.clone();
        self.threads
            .run(move || hash_with(&argon2, password.expose()))
            .await?
    }

    /// Whether `phc` was made with this hasher's algorithm and cost: an
    /// account whose hash was not is verified at its own cost, which a
    /// login's timing would tell apart from an unknown name's (checked at
    /// this cost), so it is hashed again at its next login.
    pub fn is_current(&self, phc: &str) -> bool {
        let Ok(parsed) = PasswordHash::new(phc) else {
            return false;
        };
        let ours = self.argon2.params();
        parsed.algorithm == Algorithm::Argon2id.ident()
            && Params::try_from(&parsed).is_ok_and(|p| {
                (p.m_cost(), p.t_cost(), p.p_cost())
                    == (ours.m_cost(), ours.t_cost(), ours.p_cost())
            })
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
        let matched = self
            .threads
            .run(move || {
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

type Job = Box<dyn FnOnce() + Send>;

/// The hashing threads, started with the server and kept for its life; they
/// end when the last [`Passwords`] is dropped. Not tokio's blocking pool: a
/// hash handed to it as the last one ended often found no thread idle yet,
/// so a burst of 5,000 logins, one hash at a time, started 20 to 30 threads,
/// each with a stack and an allocator heap of its own, and let them go a
/// second later: about 1 KiB of memory per connection of the burst, and as
/// much noise in what an idle server holds.
struct Threads {
    jobs: mpsc::Sender<Job>,
}

impl Threads {
    fn start(n: usize) -> Result<Threads, Error> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..n {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name("tenthbit-hash".into())
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for a job.
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A panic loses its one answer, not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                })
                .map_err(|e| Error::Hash(format!("cannot start a hashing thread: {e}")))?;
        }
        Ok(Threads { jobs })
    }

    /// Runs `f` on a hashing thread and returns what it returned.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Error> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs
            .send(job)
            .map_err(|_| Error::Hash("the hashing threads are gone".into()))?;
        rx.await
            .map_err(|_| Error::Hash("a hashing thread failed".into()))
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

    #[test]
    fn a_hash_is_current_at_its_own_cost_only() {
        let p = Passwords::new(CHEAP, 1).unwrap();
        let phc = p.hash_blocking("hellosecret").unwrap();
        assert!(p.is_current(&phc));
        let dearer = Passwords::new(
            Cost {
                iterations: 2,
                ..CHEAP
            },
            1,
        )
        .unwrap();
        assert!(!dearer.is_current(&phc));
        assert!(!p.is_current("not a phc"));
        let argon2i =
            "$argon2i$v=19$m=64,t=1,p=1$c29tZXNhbHQ$iWh06vD8Fy27wf9npn6FXWiCX4K6pW6Ue1Bnzz07Z8A";
        assert!(!p.is_current(argon2i));
    }

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

    /// A burst runs on the pool's own threads, never more of them.
    #[tokio::test]
    async fn a_burst_runs_on_the_pools_threads() {
        let threads = Threads::start(2).unwrap();
        let runs = (0..64).map(|_| {
            threads.run(|| {
                let t = std::thread::current();
                (t.id(), t.name().map(str::to_owned))
            })
        });
        let ran: Vec<_> = futures_util::future::join_all(runs).await;
        let mut ids = std::collections::HashSet::new();
        for r in ran {
            let (id, name) = r.unwrap();
            assert_eq!(name.as_deref(), Some("tenthbit-hash"));
            ids.insert(id);
        }
        assert!(!ids.is_empty() && ids.len() <= 2, "{ids:?}");
    }

    /// A job that panics loses its answer, not the thread.
    #[tokio::test]
    async fn a_panic_costs_one_answer() {
        let threads = Threads::start(1).unwrap();
        assert!(threads.run(|| panic!("in a test")).await.is_err());
        assert_eq!(threads.run(|| 7).await.unwrap(), 7);
    }
}
