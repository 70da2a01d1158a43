//! A bounded seen-cache of packet ids: what flooding needs to drop a packet
//! that comes back by another path. Entries expire after a TTL; when full,
//! the oldest go first.

use std::collections::{HashSet, VecDeque};
use std::time::{Duration, Instant};

use uuid::Uuid;

/// Ids seen recently.
#[derive(Debug)]
pub struct Seen {
    ids: HashSet<Uuid>,
    order: VecDeque<(Instant, Uuid)>,
    ttl: Duration,
    capacity: usize,
}

impl Seen {
    /// A cache keeping ids for `ttl`, at most `capacity` of them.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ids: HashSet::new(),
            order: VecDeque::new(),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// Records `id`; false when it was already there (a duplicate).
    pub fn insert(&mut self, id: Uuid, now: Instant) -> bool {
        while let Some((at, old)) = self.order.front().copied() {
            if now.duration_since(at) < self.ttl && self.order.len() < self.capacity {
                break;
            }
            self.order.pop_front();
            self.ids.remove(&old);
        }
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        true
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

    #[test]
    fn duplicates_are_refused_until_they_expire_and_size_is_bounded() {
        let t0 = Instant::now();
        let mut s = Seen::new(Duration::from_secs(10), 3);
        let a = Uuid::now_v7();
        assert!(s.insert(a, t0));
        assert!(!s.insert(a, t0));
        assert!(s.insert(a, t0 + Duration::from_secs(11)));
        for _ in 0..10 {
            s.insert(Uuid::now_v7(), t0 + Duration::from_secs(12));
        }
        assert_eq!(s.len(), 3);
    }
}
