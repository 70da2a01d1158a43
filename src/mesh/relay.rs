//! Messages of topics that keep no history (DESIGN.md §8): not in the log,
//! so they cross the mesh as `mesh.relay` packets, flooded over every link.
//! Each node numbers the relays it originates (`o`, `s`); a receiver takes
//! each `(o, s)` once and delivers an origin's relays in `s` order, holding
//! back one that arrives early (a new link can overtake an old path) until
//! the ones before it arrive or `mesh.reorder_wait_ms` passes. So every
//! member's every connection, on every node, gets each message once, in
//! its sender's order; a relay lost on every path is skipped and counted.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::wire::{self, Relay};
use super::{Inner, Mesh, NOBODY};

/// Relays of one origin held back at most; past it, the gap is skipped.
const MAX_PENDING: usize = 4096;
/// An origin unheard of this long is forgotten.
const ORIGIN_IDLE: Duration = Duration::from_secs(600);

/// Relayed lines ready for the members connected here.
pub(super) struct Ready {
    topic: Uuid,
    lines: Bytes,
    count: usize,
}

struct OriginState {
    next: u64,
    pending: BTreeMap<u64, (Instant, Ready)>,
    heard: Instant,
}

/// Per origin: the next relay to deliver and those that came early.
#[derive(Default)]
pub(super) struct Reorder {
    origins: HashMap<String, OriginState>,
    /// Relays never received on any path, given up on.
    pub skipped: u64,
}

impl Reorder {
    /// Offers relay `seq` of `origin`: `None` when it was taken before (a
    /// duplicate), else what is now ready, in order.
    fn offer(&mut self, origin: &str, seq: u64, item: Ready, now: Instant) -> Option<Vec<Ready>> {
        let st = self
            .origins
            .entry(origin.to_owned())
            .or_insert_with(|| OriginState {
                next: seq,
                pending: BTreeMap::new(),
                heard: now,
            });
        st.heard = now;
        if seq < st.next || st.pending.contains_key(&seq) {
            return None;
        }
        st.pending.insert(seq, (now, item));
        let mut ready = Vec::new();
        drain(st, &mut ready);
        while st.pending.len() > MAX_PENDING {
            self.skipped += skip_gap(st);
            drain(st, &mut ready);
        }
        Some(ready)
    }

    /// Gives up on gaps older than `wait`: what was held behind them is
    /// ready.
    fn flush(&mut self, now: Instant, wait: Duration) -> Vec<Ready> {
        let mut ready = Vec::new();
        let mut skipped = 0;
        for st in self.origins.values_mut() {
            while st
                .pending
                .first_key_value()
                .is_some_and(|(_, (at, _))| now.duration_since(*at) >= wait)
            {
                skipped += skip_gap(st);
                drain(st, &mut ready);
            }
        }
        self.origins
            .retain(|_, st| !st.pending.is_empty() || now.duration_since(st.heard) < ORIGIN_IDLE);
        self.skipped += skipped;
        ready
    }
}

fn drain(st: &mut OriginState, ready: &mut Vec<Ready>) {
    while let Some(entry) = st.pending.first_entry() {
        if *entry.key() != st.next {
            break;
        }
        let (_, item) = entry.remove();
        ready.push(item);
        st.next = st.next.wrapping_add(1);
    }
}

/// Moves past the gap before the first held relay; how many were skipped.
fn skip_gap(st: &mut OriginState) -> u64 {
    match st.pending.first_key_value() {
        Some((first, _)) => {
            let skipped = first.saturating_sub(st.next);
            st.next = *first;
            skipped
        }
        None => 0,
    }
}

fn deliver(inner: &Inner, ready: Vec<Ready>) {
    let ctx = &inner.ctx;
    for r in ready {
        if let Some(t) = ctx.topics.get(r.topic) {
            ctx.presence
                .deliver(t.members.iter(), &r.lines, r.count, NOBODY);
        }
    }
}

impl crate::session::EphemeralRelay for Mesh {
    fn publish(&self, topic: Uuid, lines: &Bytes) {
        let inner = &self.inner;
        // Numbered and queued under one lock, so every link carries this
        // node's relays in number order.
        let Ok(mut seq) = inner.relay_seq.lock() else {
            return;
        };
        let links = inner.all_links();
        if links.is_empty() {
            return;
        }
        *seq += 1;
        let packet = Bytes::from(wire::relay_line(&inner.relay_origin, *seq, &topic, lines));
        for l in links {
            if !l.send_raw(packet.clone()) {
                inner.relay_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// A `mesh.relay` from link `came_by`: new ones go on to every other link
/// and, in order, to the members connected here.
pub(super) fn on_relay(inner: &Arc<Inner>, came_by: u64, relay: Relay) {
    if relay.o == inner.relay_origin {
        // Our own, back round a ring.
        inner.relay_duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut lines = Vec::with_capacity(relay.packets.iter().map(|p| p.get().len() + 1).sum());
    for p in &relay.packets {
        lines.extend_from_slice(p.get().as_bytes());
        lines.push(b'\n');
    }
    let item = Ready {
        topic: relay.topic,
        lines: Bytes::from(lines),
        count: relay.packets.len(),
    };
    let forward = Bytes::from(wire::relay_line(
        &relay.o,
        relay.s,
        &relay.topic,
        &item.lines,
    ));
    let offered = inner
        .reorder
        .lock()
        .ok()
        .and_then(|mut r| r.offer(&relay.o, relay.s, item, Instant::now()));
    let Some(ready) = offered else {
        inner.relay_duplicates.fetch_add(1, Ordering::Relaxed);
        return;
    };
    for l in inner.all_links() {
        if l.id != came_by && !l.send_raw(forward.clone()) {
            inner.relay_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
    deliver(inner, ready);
}

/// Releases relays held behind gaps that did not fill in time.
pub(super) async fn flush_loop(inner: Arc<Inner>) {
    let wait = Duration::from_millis(inner.cfg.reorder_wait_ms);
    let mut tick = tokio::time::interval(wait / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let ready = inner
            .reorder
            .lock()
            .map(|mut r| r.flush(Instant::now(), wait))
            .unwrap_or_default();
        deliver(&inner, ready);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(n: usize) -> Ready {
        Ready {
            topic: Uuid::nil(),
            lines: Bytes::new(),
            count: n,
        }
    }

    fn counts(r: Option<Vec<Ready>>) -> Option<Vec<usize>> {
        r.map(|v| v.into_iter().map(|r| r.count).collect())
    }

    #[test]
    fn relays_come_out_once_in_order_and_gaps_are_skipped_after_a_wait() {
        let t = Instant::now();
        let mut r = Reorder::default();
        assert_eq!(counts(r.offer("o", 5, item(5), t)), Some(vec![5]));
        assert_eq!(counts(r.offer("o", 7, item(7), t)), Some(vec![]));
        assert_eq!(counts(r.offer("o", 7, item(7), t)), None);
        assert_eq!(counts(r.offer("o", 6, item(6), t)), Some(vec![6, 7]));
        assert_eq!(counts(r.offer("o", 6, item(6), t)), None);
        assert_eq!(counts(r.offer("o", 9, item(9), t)), Some(vec![]));
        let ready = r.flush(t + Duration::from_millis(10), Duration::from_millis(100));
        assert!(ready.is_empty() && r.skipped == 0);
        let ready = r.flush(t + Duration::from_millis(100), Duration::from_millis(100));
        assert_eq!((ready.len(), r.skipped), (1, 1));
        assert_eq!(
            counts(r.offer("o", 8, item(8), t)),
            None,
            "skipped stays skipped"
        );
    }
}
