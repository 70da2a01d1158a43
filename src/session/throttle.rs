//! Throttles: failed logins per account and per source address, and each
//! connection's packet rate.
//!
//! Failed logins: each key has a bucket of `burst` failures that refills evenly over
//! `window`. A login takes its failure token from both buckets before any
//! hashing, and is refused while either is empty, with the time until a
//! failure is allowed again; a login that did not fail gets its token back.
//! Charging first makes N concurrent attempts cost N tokens (checked before
//! and charged after the hash, every attempt in flight passed the check).
//! Addresses count by [`crate::source::source_key`] (an IPv6 address by
//! its /64). Memory is bounded: full buckets carry no information and are
//! dropped when the table grows, a sweep at most each time it has doubled
//! (so a login never pays for a scan of the table), and past
//! [`MAX_KEYS`] the buckets touched longest ago are forgotten.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked per table before the first sweep of full buckets.
const SWEEP_AT: usize = 65_536;
/// Keys tracked per table at most (a few tens of MiB with long names).
const MAX_KEYS: usize = 262_144;

struct Buckets<K> {
    burst: f64,
    per_token: Duration,
    map: HashMap<K, (f64, Instant)>,
    /// The size at which the next sweep runs, and the first one.
    sweep_at: usize,
    first_sweep: usize,
    /// The most keys kept.
    max_keys: usize,
}

impl<K: Hash + Eq + Clone> Buckets<K> {
    fn new(burst: u32, window: Duration) -> Self {
        Self::bounded(burst, window, SWEEP_AT, MAX_KEYS)
    }

    fn bounded(burst: u32, window: Duration, sweep_at: usize, max_keys: usize) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            burst,
            per_token: window.div_f64(burst),
            map: HashMap::new(),
            sweep_at: sweep_at.min(max_keys),
            first_sweep: sweep_at.min(max_keys),
            max_keys,
        }
    }

    /// Drops the full buckets; past `max_keys`, the ones touched longest
    /// ago too (a forgotten key may fail again at once: only under a flood
    /// from more sources than the table holds). The next sweep waits until
    /// the table has doubled, so sweeps cost O(1) a spend.
    fn sweep(&mut self, now: Instant) {
        let (burst, per) = (self.burst, self.per_token.as_secs_f64());
        self.map.retain(|_, &mut (t, at)| {
            t + now.saturating_duration_since(at).as_secs_f64() / per < burst
        });
        let keep = (self.max_keys / 2).max(1);
        if self.map.len() > keep {
            let mut touched: Vec<Instant> = self.map.values().map(|&(_, at)| at).collect();
            let cut = touched.len() - keep;
            let (_, &mut oldest_kept, _) = touched.select_nth_unstable(cut);
            self.map.retain(|_, &mut (_, at)| at >= oldest_kept);
            tracing::warn!(
                kept = self.map.len(),
                "failed-login table full: the oldest entries were forgotten"
            );
        }
        self.sweep_at = (self.map.len() * 2).clamp(self.first_sweep, self.max_keys);
    }

    fn level(&self, key: &K, now: Instant) -> f64 {
        match self.map.get(key) {
            None => self.burst,
            Some(&(tokens, at)) => {
                let refill =
                    now.saturating_duration_since(at).as_secs_f64() / self.per_token.as_secs_f64();
                (tokens + refill).min(self.burst)
            }
        }
    }

    /// Time until one failure is allowed, zero if now.
    fn wait(&self, key: &K, now: Instant) -> Duration {
        let level = self.level(key, now);
        if level >= 1.0 {
            Duration::ZERO
        } else {
            self.per_token.mul_f64(1.0 - level)
        }
    }

    /// Gives back a token [`Buckets::spend`] took; a bucket that is full
    /// again is forgotten.
    fn refund(&mut self, key: &K, now: Instant) {
        let level = self.level(key, now) + 1.0;
        if level >= self.burst {
            self.map.remove(key);
        } else {
            self.map.insert(key.clone(), (level, now));
        }
    }

    fn spend(&mut self, key: &K, now: Instant) {
        let level = self.level(key, now);
        if self.map.len() >= self.sweep_at && !self.map.contains_key(key) {
            self.sweep(now);
        }
        self.map.insert(key.clone(), ((level - 1.0).max(0.0), now));
    }
}

/// Failed-login throttle shared by every session.
pub struct LoginThrottle {
    accounts: Mutex<Buckets<String>>,
    addresses: Mutex<Buckets<IpAddr>>,
}

impl LoginThrottle {
    /// `per_account` and `per_ip` failures allowed per `window`.
    pub fn new(per_account: u32, per_ip: u32, window: Duration) -> Self {
        Self {
            accounts: Mutex::new(Buckets::new(per_account, window)),
            addresses: Mutex::new(Buckets::new(per_ip, window)),
        }
    }

    /// Takes one failure token for a login for `account` (none for
    /// tickets) from `ip`, before the credentials are checked;
    /// `Err(retry_after)`, taking nothing, while either allowance is used
    /// up. Give it back with [`LoginThrottle::refund`] when the login does
    /// not fail.
    pub fn reserve(&self, account: Option<&str>, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let ip = crate::source::source_key(ip);
        let key = account.map(str::to_lowercase);
        // Both tables at once (always accounts first): checking and taking
        // from both is one step, or two racing logins could both pass the
        // check for the last token.
        let mut accounts = lock(&self.accounts);
        let mut addresses = lock(&self.addresses);
        let by_account = key
            .as_ref()
            .map_or(Duration::ZERO, |k| accounts.wait(k, now));
        let wait = by_account.max(addresses.wait(&ip, now));
        if wait > Duration::ZERO {
            return Err(wait);
        }
        if let Some(k) = &key {
            accounts.spend(k, now);
        }
        addresses.spend(&ip, now);
        Ok(())
    }

    /// Gives back the token [`LoginThrottle::reserve`] took, for a login
    /// that did not fail.
    pub fn refund(&self, account: Option<&str>, ip: IpAddr) {
        let now = Instant::now();
        let ip = crate::source::source_key(ip);
        if let Some(name) = account {
            lock(&self.accounts).refund(&name.to_lowercase(), now);
        }
        lock(&self.addresses).refund(&ip, now);
    }
}

/// A table's lock; a panic elsewhere while holding it leaves valid buckets.
fn lock<K>(m: &Mutex<Buckets<K>>) -> std::sync::MutexGuard<'_, Buckets<K>> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refuse_then_refill() {
        let ip: IpAddr = [10, 0, 0, 1].into();
        let t = LoginThrottle::new(3, 100, Duration::from_secs(30));
        for _ in 0..3 {
            assert_eq!(t.reserve(Some("Dan"), ip), Ok(()));
        }
        let wait = t.reserve(Some("DAN"), ip).expect_err("throttled");
        assert!(wait <= Duration::from_secs(10), "{wait:?}");
        // Another account from the same address is not affected.
        assert_eq!(t.reserve(Some("alice"), ip), Ok(()));
        // Refill, computed from a later instant.
        let b = t.accounts.lock().unwrap();
        assert_eq!(
            b.wait(&"dan".to_string(), Instant::now() + Duration::from_secs(11)),
            Duration::ZERO
        );
    }

    #[test]
    fn the_table_is_swept_as_it_doubles_and_bounded() {
        let now = Instant::now();
        let mut b: Buckets<u32> = Buckets::bounded(5, Duration::from_secs(300), 100, 1000);
        for k in 0..100 {
            b.spend(&k, now);
        }
        assert_eq!(b.sweep_at, 100);
        // The 101st key sweeps; nothing is full, so the next sweep waits
        // until the table has doubled.
        b.spend(&100, now);
        assert_eq!((b.map.len(), b.sweep_at), (101, 200));
        for k in 101..10_000 {
            let at = now + Duration::from_millis(u64::from(k));
            b.spend(&k, at);
            assert!(b.map.len() <= 1000, "{} keys", b.map.len());
        }
        // The newest keys are kept, the oldest forgotten.
        assert!(b.map.contains_key(&9_999));
        assert!(!b.map.contains_key(&0));
    }

    #[test]
    fn an_ipv6_address_counts_by_its_64() {
        let t = LoginThrottle::new(100, 2, Duration::from_secs(30));
        let a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:1:ffff::2".parse().unwrap();
        assert_eq!(t.reserve(None, a), Ok(()));
        assert_eq!(t.reserve(None, b), Ok(()));
        assert!(
            t.reserve(None, "2001:db8:0:1::99".parse().unwrap())
                .is_err()
        );
        assert_eq!(t.reserve(None, "2001:db8:0:2::1".parse().unwrap()), Ok(()));
    }

    #[test]
    fn per_address_bucket() {
        let ip: IpAddr = [10, 0, 0, 2].into();
        let t = LoginThrottle::new(100, 2, Duration::from_secs(30));
        assert_eq!(t.reserve(Some("a"), ip), Ok(()));
        assert_eq!(t.reserve(None, ip), Ok(()));
        assert!(t.reserve(Some("c"), ip).is_err());
        assert_eq!(t.reserve(Some("c"), [10, 0, 0, 3].into()), Ok(()));
    }

    /// A refused reservation takes nothing; a refund gives a token back, up
    /// to the full bucket (which is then forgotten).
    #[test]
    fn refunds_give_back_what_was_taken() {
        let ip: IpAddr = [10, 0, 0, 4].into();
        let t = LoginThrottle::new(2, 100, Duration::from_secs(3600));
        assert_eq!(t.reserve(Some("dan"), ip), Ok(()));
        assert_eq!(t.reserve(Some("dan"), ip), Ok(()));
        assert!(t.reserve(Some("dan"), ip).is_err());
        t.refund(Some("dan"), ip);
        assert_eq!(t.reserve(Some("dan"), ip), Ok(()));
        assert!(t.reserve(Some("dan"), ip).is_err());
        t.refund(Some("dan"), ip);
        t.refund(Some("dan"), ip);
        t.refund(Some("dan"), ip);
        assert!(t.accounts.lock().unwrap().map.is_empty());
        assert!(t.addresses.lock().unwrap().map.is_empty());
    }
}

/// Token bucket for one connection.
#[derive(Debug)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl RateLimit {
    /// `per_second` sustained, `burst` at once.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            per_second: f64::from(per_second.max(1)),
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// `per_minute` sustained, as many at once.
    pub fn per_minute(per_minute: u32) -> Self {
        let burst = f64::from(per_minute.max(1));
        Self {
            per_second: burst / 60.0,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    /// Takes a token at `now`; `Err(wait)` when none is left.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        // Packets of one burst share a clock reading: nothing to refill.
        if now == self.at && self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64(
                (1.0 - self.tokens) / self.per_second,
            ))
        }
    }
}

impl RateLimit {
    /// Spends `cost` tokens at `now` (a budget of bytes, say), even more
    /// than are left: one large cost runs the bucket into debt rather than
    /// passing for free. `Err(wait)` while the bucket is in debt.
    pub fn spend(&mut self, now: Instant, cost: f64) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst) - cost;
        self.at = now;
        if self.tokens >= 0.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64(-self.tokens / self.per_second))
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let start = Instant::now();
        let mut r = RateLimit::new(10, 3);
        for _ in 0..3 {
            assert!(r.take(start).is_ok());
        }
        let wait = r.take(start).unwrap_err();
        assert!(wait <= Duration::from_millis(100));
        assert!(r.take(start + Duration::from_millis(100)).is_ok());
        assert!(r.take(start + Duration::from_millis(100)).is_err());
    }

    #[test]
    fn spending_runs_into_debt() {
        let start = Instant::now();
        let mut r = RateLimit::new(100, 1000);
        assert!(r.spend(start, 600.0).is_ok());
        assert!(r.spend(start, 400.0).is_ok());
        // Past the bucket, however large the cost: in debt until refilled.
        let wait = r.spend(start, 2000.0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        assert!(r.spend(start + Duration::from_secs(10), 0.0).is_err());
        assert!(r.spend(start + Duration::from_secs(20), 0.0).is_ok());
    }
}
