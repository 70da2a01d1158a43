//! Who is online anywhere: an account is online while it has a connection
//! on this node or on a node of the mesh heard from recently (DESIGN.md §8:
//! presence is soft state owned by the node a session is on). Changes are
//! gathered, not sent one by one: whoever drains them (the `presence`
//! events, the mesh's presence packets) gets each account's net change
//! since its last drain, so a reconnect or a flap in between says nothing.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use tokio::sync::Notify;
use uuid::Uuid;

#[derive(Default)]
struct State {
    /// Accounts with a connection here.
    local: HashSet<Uuid>,
    /// Accounts connected on other live nodes: on how many. Signed, and
    /// never clamped: the mesh counts each node's changes after releasing
    /// its presence table, so an account's going away may be counted
    /// before its coming, and the two must still net to nothing.
    remote: HashMap<Uuid, i64>,
    /// For the `presence` events: the state each changed account had at
    /// the last drain.
    changed: HashMap<Uuid, bool>,
    /// For the mesh: the local state each changed account had at the last
    /// drain.
    local_changed: HashMap<Uuid, bool>,
}

impl State {
    fn online(&self, account: &Uuid) -> bool {
        self.local.contains(account) || self.remote.get(account).is_some_and(|n| *n > 0)
    }
}

/// The online view of this node.
#[derive(Default)]
pub struct Online {
    state: Mutex<State>,
    /// Woken when an account's online state may have changed.
    pub changed: Notify,
    /// Woken when an account's local state may have changed.
    pub local_changed: Notify,
}

/// Net changes: accounts now online, accounts now offline.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Came online.
    pub online: Vec<Uuid>,
    /// Went offline.
    pub offline: Vec<Uuid>,
}

impl Changes {
    /// Nothing changed.
    pub fn is_empty(&self) -> bool {
        self.online.is_empty() && self.offline.is_empty()
    }
}

impl Online {
    /// Whether `account` is online anywhere this node can see.
    pub fn is_online(&self, account: &Uuid) -> bool {
        self.state
            .lock()
            .map(|s| s.online(account))
            .unwrap_or(false)
    }

    /// Whether `account` was online at the last [`Online::drain`]: what
    /// a list must say that the drained changes' events are news
    /// relative to. A change since then is reported by the next drain; a
    /// list that showed it already would be left standing, unreported, if
    /// the change were reversed before that drain (they net to nothing).
    pub fn was_online_at_drain(&self, account: &Uuid) -> bool {
        self.state
            .lock()
            .map(|s| {
                s.changed
                    .get(account)
                    .copied()
                    .unwrap_or_else(|| s.online(account))
            })
            .unwrap_or(false)
    }

    /// Accounts connected here now (what a full presence packet lists).
    pub fn local_accounts(&self) -> Vec<Uuid> {
        self.state
            .lock()
            .map(|s| s.local.iter().copied().collect())
            .unwrap_or_default()
    }

    /// `account` got its first connection here (`true`) or lost its last.
    /// Called under the connection table's lock, so calls for one account
    /// come in the order its connections came and went.
    pub fn set_local(&self, account: Uuid, connected: bool) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let was = s.online(&account);
        let was_local = s.local.contains(&account);
        if connected {
            s.local.insert(account);
        } else {
            s.local.remove(&account);
        }
        // Net change since the last drain only: back where it was, the
        // account leaves the map (which nothing drains without a mesh).
        let at_drain = *s.local_changed.entry(account).or_insert(was_local);
        if at_drain == connected {
            s.local_changed.remove(&account);
        }
        let now = s.online(&account);
        if was != now {
            s.changed.entry(account).or_insert(was);
        }
        drop(s);
        self.local_changed.notify_one();
        if was != now {
            self.changed.notify_one();
        }
    }

    /// The accounts connected here as of the last [`Online::drain_local`]:
    /// what this node has told the mesh so far (a full list numbered with
    /// the last packet's seq must not hold changes the next packet nets
    /// away).
    pub fn announced_local(&self) -> Vec<Uuid> {
        let Ok(s) = self.state.lock() else {
            return Vec::new();
        };
        let mut out: Vec<Uuid> = s
            .local
            .iter()
            .filter(|a| s.local_changed.get(*a) != Some(&false))
            .copied()
            .collect();
        out.extend(
            s.local_changed
                .iter()
                .filter(|(a, was)| **was && !s.local.contains(*a))
                .map(|(a, _)| *a),
        );
        out
    }

    /// Accounts a live node of the mesh has connected (`up`) or no longer
    /// has (a node that left, fell silent, or whose user went away).
    pub fn set_remote(&self, accounts: &[Uuid], up: bool) {
        let Ok(mut s) = self.state.lock() else {
            return;
        };
        let mut any = false;
        for a in accounts {
            let was = s.online(a);
            let n = s.remote.entry(*a).or_insert(0);
            *n = n.saturating_add(if up { 1 } else { -1 });
            if *n == 0 {
                s.remote.remove(a);
            }
            if was != s.online(a) {
                s.changed.entry(*a).or_insert(was);
                any = true;
            }
        }
        drop(s);
        if any {
            self.changed.notify_one();
        }
    }

    /// Net online changes since the last call.
    pub fn drain(&self) -> Changes {
        let Ok(mut s) = self.state.lock() else {
            return Changes::default();
        };
        let changed = std::mem::take(&mut s.changed);
        split(changed, |a| s.online(a))
    }

    /// Net changes of the accounts connected here since the last call.
    pub fn drain_local(&self) -> Changes {
        let Ok(mut s) = self.state.lock() else {
            return Changes::default();
        };
        let changed = std::mem::take(&mut s.local_changed);
        split(changed, |a| s.local.contains(a))
    }
}

fn split(changed: HashMap<Uuid, bool>, now: impl Fn(&Uuid) -> bool) -> Changes {
    let mut c = Changes::default();
    for (account, was) in changed {
        match (was, now(&account)) {
            (false, true) => c.online.push(account),
            (true, false) => c.offline.push(account),
            _ => {}
        }
    }
    c.online.sort();
    c.offline.sort();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without a mesh nothing drains the local changes: an account that
    /// came and went leaves nothing behind.
    #[test]
    fn local_changes_that_net_to_nothing_are_not_kept() {
        let o = Online::default();
        for _ in 0..1000 {
            let a = Uuid::now_v7();
            o.set_local(a, true);
            o.set_local(a, false);
            o.drain();
        }
        let stay = Uuid::now_v7();
        o.set_local(stay, true);
        assert_eq!(o.state.lock().unwrap().local_changed.len(), 1);
        assert_eq!(o.announced_local(), Vec::<Uuid>::new());
        assert_eq!(o.drain_local().online, [stay]);
        // Gone and back between drains: no change, still announced.
        o.set_local(stay, false);
        o.set_local(stay, true);
        assert!(o.state.lock().unwrap().local_changed.is_empty());
        assert_eq!(o.announced_local(), [stay]);
        assert_eq!(o.drain_local(), Changes::default());
    }

    #[test]
    fn net_changes_only_and_remote_nodes_count() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let o = Online::default();
        o.set_local(a, true);
        o.set_local(a, false);
        o.set_local(a, true);
        assert_eq!(
            o.drain(),
            Changes {
                online: vec![a],
                offline: vec![]
            }
        );
        assert_eq!(o.drain_local().online, vec![a]);
        // A flap between drains says nothing.
        o.set_local(a, false);
        o.set_local(a, true);
        assert!(o.drain().is_empty());
        // b on two other nodes: online until both are gone.
        o.set_remote(&[b], true);
        o.set_remote(&[b], true);
        o.set_remote(&[b], false);
        assert!(o.is_online(&b));
        assert_eq!(o.drain().online, vec![b]);
        o.set_remote(&[b], false);
        assert_eq!(o.drain().offline, vec![b]);
        // a also elsewhere: leaving here keeps it online, but the mesh is
        // told it left this node.
        o.set_remote(&[a], true);
        o.set_local(a, false);
        assert!(o.drain().is_empty());
        let local = o.drain_local();
        assert_eq!(local.offline, vec![a]);
    }

    /// The mesh counts a node's changes after releasing its presence
    /// table, so two links' tasks may count one origin's consecutive
    /// changes in the other order: an account's going away counted before
    /// its coming must still net to nothing, not leave it online.
    #[test]
    fn remote_changes_counted_out_of_order_net_to_nothing() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let o = Online::default();
        o.set_remote(&[a], false);
        o.set_remote(&[a], true);
        assert!(!o.is_online(&a));
        assert!(o.drain().is_empty());
        // Online on one node; there it goes and comes back, counted in
        // the other order: online throughout.
        o.set_remote(&[b], true);
        o.drain();
        o.set_remote(&[b], true);
        o.set_remote(&[b], false);
        o.set_remote(&[b], false);
        o.set_remote(&[b], true);
        assert!(o.is_online(&b));
        assert!(o.drain().is_empty());
    }

    #[test]
    fn announced_local_is_as_of_the_last_drain() {
        let (a, b, c, d) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let o = Online::default();
        o.set_local(a, true);
        o.set_local(b, true);
        o.drain_local();
        // c comes and goes, b goes, d comes, between drains: still a and b.
        o.set_local(c, true);
        o.set_local(c, false);
        o.set_local(b, false);
        o.set_local(d, true);
        let sorted = |mut v: Vec<Uuid>| {
            v.sort();
            v
        };
        assert_eq!(sorted(o.announced_local()), sorted(vec![a, b]));
        o.drain_local();
        assert_eq!(sorted(o.announced_local()), sorted(vec![a, d]));
    }
}
