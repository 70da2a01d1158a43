//! Presence across the mesh (DESIGN.md §8): soft state owned by the node a
//! session is on. Each node numbers `mesh.presence` packets saying which
//! accounts came or left since the last (a heartbeat when none did; the
//! full list now and then), flooded over every link and taken once per
//! number, in order, like relays. A node not heard from for
//! `mesh.presence_timeout_ms` has its accounts shown offline (they stay
//! members of their topics); heard again, they are online again. A link
//! that comes up is told the full list of every node this one hears, so a
//! healed partition agrees at once.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tracing::{info, warn};
use uuid::Uuid;

use super::Inner;
use super::link::Link;
use super::wire::{Packet, Presence};

/// Packets of one origin held back behind a gap at most.
const MAX_PENDING: usize = 256;
/// A silent origin is forgotten after this long (it is then offline).
const ORIGIN_FORGET: Duration = Duration::from_secs(3600);
/// Local changes are gathered this long before they are sent.
const GATHER: Duration = Duration::from_millis(100);

struct Origin {
    boot: String,
    next: u64,
    accounts: HashSet<Uuid>,
    heard: Instant,
    live: bool,
    pending: BTreeMap<u64, (Instant, Presence)>,
}

/// What this node knows of every other node's connected accounts.
#[derive(Default)]
pub(super) struct Table {
    origins: HashMap<String, Origin>,
    /// The number of this node's last presence packet.
    own_seq: u64,
    /// Packets that came again by another path (the price of flooding).
    pub duplicates: u64,
    /// Packets never received on any path, given up after the reorder wait.
    pub skipped: u64,
}

/// Accounts to count as connected on one more node, and on one fewer.
#[derive(Default)]
struct Delta {
    up: Vec<Uuid>,
    down: Vec<Uuid>,
}

/// One origin, for `mesh status`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OriginStatus {
    /// The node.
    pub node: String,
    /// Heard within the presence timeout: its users count as online.
    pub live: bool,
    /// Accounts connected to it.
    pub users: usize,
    /// Since it was last heard.
    pub heard_ms: u64,
}

impl Table {
    /// Takes packet `p` unless it was taken before; `None` for a duplicate.
    fn offer(&mut self, p: Presence, now: Instant, delta: &mut Delta) -> Option<()> {
        let st = self.origins.entry(p.o.clone()).or_insert_with(|| Origin {
            boot: p.b.clone(),
            next: p.s,
            accounts: HashSet::new(),
            heard: now,
            live: true,
            pending: BTreeMap::new(),
        });
        if p.b < st.boot {
            return None;
        }
        if p.b > st.boot {
            // The node restarted: what its last run had is gone.
            if st.live {
                delta.down.extend(st.accounts.drain());
            }
            st.accounts.clear();
            st.boot = p.b.clone();
            st.next = p.s;
            st.pending.clear();
            st.live = true;
        }
        let early = !p.full && p.s > st.next;
        if p.s < st.next || (early && st.pending.contains_key(&p.s)) {
            return None;
        }
        st.heard = now;
        if !st.live {
            st.live = true;
            delta.up.extend(st.accounts.iter().copied());
        }
        if early {
            st.pending.insert(p.s, (now, p));
            while st.pending.len() > MAX_PENDING {
                self.skipped += skip_gap(st, delta);
            }
            return Some(());
        }
        apply(st, p, delta);
        drain(st, delta);
        Some(())
    }

    /// Gives up gaps older than `wait`; marks origins silent longer than
    /// `timeout` offline, and forgets long-silent ones.
    fn tick(&mut self, now: Instant, wait: Duration, timeout: Duration, delta: &mut Delta) {
        for (node, st) in &mut self.origins {
            while st
                .pending
                .first_key_value()
                .is_some_and(|(_, (at, _))| now.duration_since(*at) >= wait)
            {
                self.skipped += skip_gap(st, delta);
            }
            if st.live && now.duration_since(st.heard) >= timeout {
                st.live = false;
                warn!(
                    %node,
                    users = st.accounts.len(),
                    silent_ms = u64::try_from(now.duration_since(st.heard).as_millis()).unwrap_or(u64::MAX),
                    "mesh: node not heard from; its users are shown offline"
                );
                delta.down.extend(st.accounts.iter().copied());
            }
        }
        self.origins
            .retain(|_, st| st.live || now.duration_since(st.heard) < ORIGIN_FORGET);
    }

    /// Full lists of every live origin, as they stand here.
    fn snapshot(&self) -> Vec<Presence> {
        self.origins
            .iter()
            .filter(|(_, st)| st.live)
            .map(|(node, st)| Presence {
                o: node.clone(),
                b: st.boot.clone(),
                s: st.next.saturating_sub(1),
                full: true,
                on: sorted(st.accounts.iter().copied()),
                off: Vec::new(),
            })
            .collect()
    }

    fn status(&self, now: Instant) -> Vec<OriginStatus> {
        let mut v: Vec<OriginStatus> = self
            .origins
            .iter()
            .map(|(node, st)| OriginStatus {
                node: node.clone(),
                live: st.live,
                users: st.accounts.len(),
                heard_ms: u64::try_from(now.duration_since(st.heard).as_millis())
                    .unwrap_or(u64::MAX),
            })
            .collect();
        v.sort_by(|a, b| a.node.cmp(&b.node));
        v
    }
}

fn sorted(it: impl Iterator<Item = Uuid>) -> Vec<Uuid> {
    let mut v: Vec<Uuid> = it.collect();
    v.sort();
    v
}

/// Applies packet `p` (the next in order, or a full list at least as new).
fn apply(st: &mut Origin, p: Presence, delta: &mut Delta) {
    if p.full {
        let new: HashSet<Uuid> = p.on.into_iter().collect();
        delta.down.extend(st.accounts.difference(&new).copied());
        delta.up.extend(new.difference(&st.accounts).copied());
        st.accounts = new;
        st.pending.retain(|s, _| *s > p.s);
    } else {
        for a in p.on {
            if st.accounts.insert(a) {
                delta.up.push(a);
            }
        }
        for a in p.off {
            if st.accounts.remove(&a) {
                delta.down.push(a);
            }
        }
    }
    // Wrapping: a lying peer's u64::MAX must not panic (and poison the
    // lock) in a debug build.
    st.next = p.s.wrapping_add(1);
}

fn drain(st: &mut Origin, delta: &mut Delta) {
    while let Some(entry) = st.pending.first_entry() {
        if *entry.key() != st.next {
            break;
        }
        let (_, p) = entry.remove();
        apply(st, p, delta);
    }
}

/// Moves past the gap before the first held packet; how many were skipped.
fn skip_gap(st: &mut Origin, delta: &mut Delta) -> u64 {
    let Some(first) = st.pending.first_key_value().map(|(s, _)| *s) else {
        return 0;
    };
    let skipped = first.saturating_sub(st.next);
    st.next = first;
    drain(st, delta);
    skipped
}

fn line(p: &Presence) -> Option<Bytes> {
    let mut v = serde_json::to_vec(&Packet::Presence(p.clone())).ok()?;
    v.push(b'\n');
    Some(Bytes::from(v))
}

/// Counts what changed in the online view.
fn commit(inner: &Inner, delta: Delta) {
    let online = &inner.ctx.presence.online;
    if !delta.up.is_empty() {
        online.set_remote(&delta.up, true);
    }
    if !delta.down.is_empty() {
        online.set_remote(&delta.down, false);
    }
}

/// A `mesh.presence` from link `came_by`: new ones go on to every other
/// link and into the online view.
pub(super) fn on_presence(inner: &Arc<Inner>, came_by: u64, p: Presence) {
    let Ok(mut table) = inner.presence.lock() else {
        return;
    };
    if p.o == inner.node {
        // Ours, back round a ring (or a previous run's).
        table.duplicates += 1;
        return;
    }
    let Some(forward) = line(&p) else {
        return;
    };
    let mut delta = Delta::default();
    if table.offer(p, Instant::now(), &mut delta).is_none() {
        table.duplicates += 1;
        return;
    }
    // Forwarded under the lock: every link carries an origin's packets in
    // the order this node took them.
    for l in inner.all_links() {
        if l.id != came_by {
            l.send_raw(forward.clone());
        }
    }
    drop(table);
    commit(inner, delta);
}

/// A link came up: it gets this node's full list and that of every node
/// this one hears, so the peer's view (and its side of a healed
/// partition) is right at once.
pub(super) fn on_link_up(inner: &Inner, link: &Link) {
    let Ok(table) = inner.presence.lock() else {
        return;
    };
    // What the last packet told, under its seq; changes since go out with
    // the next one (a list of now would hold changes that packet nets
    // away, and they would stay until the next full list).
    let told = inner.ctx.presence.online.announced_local();
    for p in std::iter::once(own_full(inner, table.own_seq, told)).chain(table.snapshot()) {
        if let Some(l) = line(&p) {
            link.send_raw(l);
        }
    }
}

/// This node's full list of `accounts`, as packet `seq`.
fn own_full(inner: &Inner, seq: u64, accounts: Vec<uuid::Uuid>) -> Presence {
    Presence {
        o: inner.node.clone(),
        b: inner.boot.clone(),
        s: seq,
        full: true,
        on: sorted(accounts.into_iter()),
        off: Vec::new(),
    }
}

/// Sends this node's packet (changes, or the full list when `full`) to
/// every link.
fn announce(inner: &Inner, full: bool) {
    let local = inner.ctx.presence.online.drain_local();
    let Ok(mut table) = inner.presence.lock() else {
        return;
    };
    let links = inner.all_links();
    if links.is_empty() {
        // Nobody to tell; a link that comes up gets the full list.
        return;
    }
    table.own_seq += 1;
    let p = if full {
        own_full(
            inner,
            table.own_seq,
            inner.ctx.presence.online.local_accounts(),
        )
    } else {
        Presence {
            o: inner.node.clone(),
            b: inner.boot.clone(),
            s: table.own_seq,
            full: false,
            on: local.online,
            off: local.offline,
        }
    };
    if let Some(l) = line(&p) {
        for link in links {
            link.send_raw(l.clone());
        }
    }
}

/// Heartbeats, changes, and the timeout of silent nodes.
pub(super) async fn presence_loop(inner: Arc<Inner>) {
    let every = Duration::from_millis(inner.cfg.presence_interval_ms);
    let full_every = Duration::from_millis(inner.cfg.presence_full_interval_ms);
    let timeout = Duration::from_millis(inner.cfg.presence_timeout_ms);
    let wait = Duration::from_millis(inner.cfg.reorder_wait_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_full = Instant::now();
    loop {
        let heartbeat = tokio::select! {
            _ = inner.shutdown.cancelled() => return,
            _ = tick.tick() => true,
            _ = inner.ctx.presence.online.local_changed.notified() => false,
        };
        if !heartbeat {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(GATHER) => {}
            }
        }
        let now = Instant::now();
        let full = heartbeat && now.duration_since(last_full) >= full_every;
        if full {
            last_full = now;
        }
        announce(&inner, full);
        if heartbeat {
            let mut delta = Delta::default();
            if let Ok(mut table) = inner.presence.lock() {
                table.tick(now, wait, timeout, &mut delta);
            }
            if !delta.up.is_empty() {
                info!(users = delta.up.len(), "mesh: users online again");
            }
            commit(&inner, delta);
        }
    }
}

/// Every origin's presence, and the counters, for `mesh status`.
pub(super) fn status(inner: &Inner) -> (Vec<OriginStatus>, u64, u64) {
    inner
        .presence
        .lock()
        .map(|t| (t.status(Instant::now()), t.duplicates, t.skipped))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pkt(s: u64, full: bool, on: &[Uuid], off: &[Uuid]) -> Presence {
        Presence {
            o: "n2".into(),
            b: "b1".into(),
            s,
            full,
            on: on.to_vec(),
            off: off.to_vec(),
        }
    }

    #[test]
    fn packets_apply_once_in_order_and_a_silent_node_goes_offline_and_back() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let t0 = Instant::now();
        let mut t = Table::default();
        let mut d = Delta::default();
        assert!(t.offer(pkt(3, true, &[a], &[]), t0, &mut d).is_some());
        assert_eq!(d.up, vec![a]);
        // 5 before 4: held, then both, in order.
        let mut d = Delta::default();
        assert!(t.offer(pkt(5, false, &[], &[b]), t0, &mut d).is_some());
        assert!(d.up.is_empty() && d.down.is_empty());
        assert!(t.offer(pkt(4, false, &[b], &[]), t0, &mut d).is_some());
        assert_eq!((d.up, d.down), (vec![b], vec![b]));
        let mut d = Delta::default();
        assert!(t.offer(pkt(4, false, &[b], &[]), t0, &mut d).is_none());
        // Silent past the timeout: a is offline, still known.
        let mut d = Delta::default();
        let later = t0 + Duration::from_secs(11);
        t.tick(
            later,
            Duration::from_secs(1),
            Duration::from_secs(10),
            &mut d,
        );
        assert_eq!(d.down, vec![a]);
        // Heard again: a is online again, without a full list.
        let mut d = Delta::default();
        assert!(t.offer(pkt(6, false, &[], &[]), later, &mut d).is_some());
        assert_eq!(d.up, vec![a]);
        // A new run of the node: its old accounts are gone.
        let mut d = Delta::default();
        let mut p = pkt(0, true, &[b], &[]);
        p.b = "b2".into();
        assert!(t.offer(p, later, &mut d).is_some());
        assert_eq!((d.up, d.down), (vec![b], vec![a]));
    }

    #[test]
    fn a_gap_is_given_up_after_the_wait() {
        let a = Uuid::now_v7();
        let t0 = Instant::now();
        let mut t = Table::default();
        let mut d = Delta::default();
        t.offer(pkt(1, true, &[], &[]), t0, &mut d);
        t.offer(pkt(3, false, &[a], &[]), t0, &mut d);
        assert!(d.up.is_empty());
        t.tick(
            t0 + Duration::from_millis(1500),
            Duration::from_secs(1),
            Duration::from_secs(10),
            &mut d,
        );
        assert_eq!((d.up, t.skipped), (vec![a], 1));
    }
}
