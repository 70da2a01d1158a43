//! The seen-cache for flooded packets (ephemeral messages, routed packets):
//! ids already taken, so a packet that comes back by another path is
//! dropped. Ids are UUIDv7, so each carries its own time; the cache keeps
//! ids for a TTL and at most a capacity, and remembers the newest id time
//! it ever evicted (its horizon): a packet at or before the horizon, older
//! than the TTL, or too far in the future is refused as too old or too new,
//! never taken, so eviction can never let a duplicate through.

use std::collections::{HashSet, VecDeque};

use uuid::Uuid;

/// What became of an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not seen before: take the packet.
    Fresh,
    /// Seen: drop it.
    Duplicate,
    /// Older than the cache can vouch for: drop it.
    TooOld,
    /// Stamped too far in the future: drop it.
    TooNew,
}

/// Ids seen recently.
#[derive(Debug)]
pub struct Seen {
    ids: HashSet<Uuid>,
    /// `(id time in ms, id)`, in arrival order.
    order: VecDeque<(u64, Uuid)>,
    ttl_ms: u64,
    future_ms: u64,
    capacity: usize,
    horizon_ms: u64,
}

/// The Unix ms of a UUIDv7 (0 for other versions).
pub fn id_ms(id: &Uuid) -> u64 {
    id.get_timestamp()
        .map(|t| {
            let (s, n) = t.to_unix();
            s.saturating_mul(1000)
                .saturating_add(u64::from(n / 1_000_000))
        })
        .unwrap_or(0)
}

impl Seen {
    /// A cache keeping ids for `ttl_ms`, at most `capacity`, and refusing
    /// ids stamped more than `future_ms` ahead.
    pub fn new(ttl_ms: u64, future_ms: u64, capacity: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            ttl_ms,
            future_ms,
            capacity: capacity.max(1),
            horizon_ms: 0,
        }
    }

    /// Checks `id` at wall time `now_ms` and records it when fresh.
    pub fn check(&mut self, id: Uuid, now_ms: u64) -> Verdict {
        let at = id_ms(&id);
        let floor = now_ms.saturating_sub(self.ttl_ms);
        while let Some(&(t, old)) = self.order.front() {
            if t >= floor && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
            self.horizon_ms = self.horizon_ms.max(t);
        }
        if self.ids.contains(&id) {
            return Verdict::Duplicate;
        }
        if at < floor || at <= self.horizon_ms {
            return Verdict::TooOld;
        }
        if at > now_ms.saturating_add(self.future_ms) {
            return Verdict::TooNew;
        }
        self.ids.insert(id);
        self.order.push_back((at, id));
        Verdict::Fresh
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v7 id at `ms` (not from the process-wide generator, which must
    /// never be moved into the future).
    fn at(ms: u64) -> Uuid {
        let ts = uuid::Timestamp::from_unix(
            uuid::NoContext,
            ms / 1000,
            ((ms % 1000) * 1_000_000) as u32,
        );
        Uuid::new_v7(ts)
    }

    #[test]
    fn duplicates_old_and_future_ids_are_refused_and_size_is_bounded() {
        let now = 1_800_000_000_000;
        let mut s = Seen::new(10_000, 5_000, 3);
        let a = at(now);
        assert_eq!(s.check(a, now), Verdict::Fresh);
        assert_eq!(s.check(a, now), Verdict::Duplicate);
        assert_eq!(s.check(at(now - 20_000), now), Verdict::TooOld);
        assert_eq!(s.check(at(now + 60_000), now), Verdict::TooNew);
        for k in 1..10 {
            assert_eq!(s.check(at(now + k), now), Verdict::Fresh);
        }
        assert_eq!(s.len(), 3);
        // `a` was evicted: coming back, it is too old, never fresh again.
        assert_eq!(s.check(a, now), Verdict::TooOld);
        // Past the TTL, the entry is gone, and so is the id's chance.
        assert_eq!(s.check(a, now + 11_000), Verdict::TooOld);
    }
}
