//! Refused connections, logged without flooding the log: one warning per
//! address per interval, with how many connections it covers.
//!
//! A client that retries in a loop against a connection limit makes
//! thousands of refusals a second; a line for each buries everything else
//! (and costs more than the refusal). The first refusal from an address
//! logs at once; those that follow within `log.refused_interval_ms` are
//! counted, and the count is logged when the interval is over. Addresses
//! are tracked up to `log.refused_max_addresses`; refusals from further
//! addresses are counted together.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One line to log: `count` refusals from `ip` (`None`: from addresses
/// past the tracking bound), the last for `reason`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The address, when tracked.
    pub ip: Option<IpAddr>,
    /// Refusals this line covers.
    pub count: u64,
    /// Why the last of them was refused (an error code, or `dropped`).
    pub reason: &'static str,
}

struct Entry {
    /// When a line for this address was last logged.
    logged: Instant,
    /// Refusals since then, not yet logged.
    pending: u64,
    reason: &'static str,
}

#[derive(Default)]
struct Inner {
    by_ip: HashMap<IpAddr, Entry>,
    /// Refusals from untracked addresses, not yet logged.
    others: u64,
    others_reason: &'static str,
}

/// The refusal counter shared by the accept loops.
pub struct RefusalLog {
    interval: Duration,
    max_addresses: usize,
    inner: Mutex<Inner>,
}

impl RefusalLog {
    /// One line per address per `interval`, at most `max_addresses` tracked.
    pub fn new(interval: Duration, max_addresses: usize) -> Self {
        Self {
            interval,
            max_addresses,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// How often [`RefusalLog::due`] should be asked.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Counts a refusal at `now`; returns the line to log now, if any (the
    /// first refusal from an address in an interval).
    pub fn refused(&self, ip: IpAddr, reason: &'static str, now: Instant) -> Option<Report> {
        let mut inner = self.inner.lock().ok()?;
        if let Some(e) = inner.by_ip.get_mut(&ip) {
            e.pending += 1;
            e.reason = reason;
            if now.saturating_duration_since(e.logged) < self.interval {
                return None;
            }
            e.logged = now;
            let count = std::mem::take(&mut e.pending);
            return Some(Report {
                ip: Some(ip),
                count,
                reason,
            });
        }
        if inner.by_ip.len() >= self.max_addresses {
            inner.others += 1;
            inner.others_reason = reason;
            return None;
        }
        inner.by_ip.insert(
            ip,
            Entry {
                logged: now,
                pending: 0,
                reason,
            },
        );
        Some(Report {
            ip: Some(ip),
            count: 1,
            reason,
        })
    }

    /// The lines due at `now`: counts held for an interval, logged; and
    /// addresses quiet for an interval, forgotten (memory stays bounded).
    pub fn due(&self, now: Instant) -> Vec<Report> {
        let Ok(mut inner) = self.inner.lock() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        let interval = self.interval;
        inner.by_ip.retain(|ip, e| {
            if now.saturating_duration_since(e.logged) < interval {
                return true;
            }
            if e.pending == 0 {
                return false;
            }
            out.push(Report {
                ip: Some(*ip),
                count: std::mem::take(&mut e.pending),
                reason: e.reason,
            });
            e.logged = now;
            true
        });
        if inner.others > 0 {
            out.push(Report {
                ip: None,
                count: std::mem::take(&mut inner.others),
                reason: inner.others_reason,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 2));
    const C: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 3));

    fn report(ip: Option<IpAddr>, count: u64) -> Report {
        Report {
            ip,
            count,
            reason: "server/per-ip-limit",
        }
    }

    #[test]
    fn one_line_per_address_per_interval_with_the_count() {
        let log = RefusalLog::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        let r = "server/per-ip-limit";
        assert_eq!(log.refused(A, r, t0), Some(report(Some(A), 1)));
        // 11,543 more within the interval: nothing logged now.
        for n in 0..11_543u64 {
            let at = t0 + Duration::from_micros(n);
            assert_eq!(log.refused(A, r, at), None);
        }
        assert_eq!(log.due(t0 + Duration::from_secs(5)), []);
        // At the interval's end, one line with the count.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(log.due(t1), [report(Some(A), 11_543)]);
        // Then quiet: forgotten after another interval.
        assert_eq!(log.due(t1 + Duration::from_secs(10)), []);
        assert_eq!(
            log.refused(A, r, t1 + Duration::from_secs(11)),
            Some(report(Some(A), 1))
        );
    }

    #[test]
    fn a_refusal_after_the_interval_logs_with_what_was_pending() {
        let log = RefusalLog::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        let r = "server/per-ip-limit";
        log.refused(A, r, t0);
        log.refused(A, r, t0 + Duration::from_secs(1));
        assert_eq!(
            log.refused(A, r, t0 + Duration::from_secs(10)),
            Some(report(Some(A), 2))
        );
    }

    #[test]
    fn addresses_past_the_bound_are_counted_together() {
        let log = RefusalLog::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        let r = "server/per-ip-limit";
        assert!(log.refused(A, r, t0).is_some());
        assert!(log.refused(B, r, t0).is_some());
        assert_eq!(log.refused(C, r, t0), None);
        assert_eq!(log.refused(C, r, t0), None);
        assert_eq!(log.due(t0), [report(None, 2)]);
    }
}
