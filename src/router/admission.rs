//! Pending join requests of topics whose members admit newcomers
//! (`admission: members`). Soft state, like presence: never written to the
//! store, gone after a restart. In a mesh every node mirrors every request
//! (flooded by the mesh), so an admitter on any node sees it, and each node
//! forgets one when it ends; ids of requests that ended are remembered until
//! their own expiry, so a copy that comes late by another path is not taken
//! again. What a decision changes (membership) is replicated; the request
//! is not. Nothing here awaits a socket or knows SQL.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use tokio::sync::Notify;
use uuid::Uuid;

/// One account's request to enter one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest {
    /// Server-assigned id (UUIDv7), shown to the requester and admitters.
    pub id: String,
    /// The topic.
    pub topic: Uuid,
    /// The requesting account.
    pub account: Uuid,
    /// Its name, as shown.
    pub name: String,
    /// A few words for the admitters (`ex.note` of the `join`).
    pub note: Option<String>,
    /// Opaque key material for end-to-end encryption (`ex.key`).
    pub key: Option<String>,
    /// Unix ms after which the request expires.
    pub expires: i64,
}

/// Why a request was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooMany {
    /// The topic holds its bound of pending requests.
    Topic(usize),
    /// The account holds its bound of pending requests.
    Account(usize),
}

/// What [`JoinRequests::ask`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// The request is new: admitters are to be told.
    New(JoinRequest),
    /// The account already had one pending here; it stands unchanged.
    Already(JoinRequest),
}

/// How a request ended, as told in the `admit` event's `result`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// An admitter admitted it: the account is a member.
    Admitted,
    /// An admitter declined it.
    Declined,
    /// The requester withdrew it (`leave`).
    Withdrawn,
    /// Nobody answered in time.
    Expired,
}

impl Settled {
    /// The `result` of the `admit` event.
    pub fn as_str(self) -> &'static str {
        match self {
            Settled::Admitted => "admitted",
            Settled::Declined => "declined",
            Settled::Withdrawn => "withdrawn",
            Settled::Expired => "expired",
        }
    }
}

/// What [`JoinRequests::mirror`] did with another node's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirrored {
    /// Taken: admitters connected here are to be told.
    New(JoinRequest),
    /// Taken in place of a later request of the same account for the same
    /// topic (made on another node at about the same time): the earlier
    /// one stands everywhere. Nobody is told again.
    Replaced,
    /// The same request is already pending here.
    Known,
    /// Not taken: it ended here already, it is past its expiry, an earlier
    /// request of the account stands, or the table is at its bound.
    Dropped,
}

/// Ids of requests that ended here, each until the request's own expiry
/// (after which any copy of it is refused as expired anyway).
#[derive(Default)]
struct Ended {
    ids: HashSet<String>,
    /// `(expires, id)`, in the order they ended.
    order: VecDeque<(i64, String)>,
}

/// At most this many ended ids are remembered; the oldest go first. A copy
/// of a request comes late only by racing its outcome over another path
/// (milliseconds), so losing an old id costs nothing in practice.
const MAX_ENDED: usize = 16_384;

impl Ended {
    fn add(&mut self, id: &str, expires: i64, now_ms: i64) {
        while let Some((at, old)) = self.order.front() {
            if *at > now_ms && self.order.len() < MAX_ENDED {
                break;
            }
            self.ids.remove(old);
            self.order.pop_front();
        }
        if expires > now_ms && self.ids.insert(id.to_owned()) {
            self.order.push_back((expires, id.to_owned()));
        }
    }
}

/// The pending requests, by `(topic, account)`: one each.
#[derive(Default)]
pub struct JoinRequests {
    pending: Mutex<HashMap<(Uuid, Uuid), JoinRequest>>,
    /// Locked after `pending` when both are.
    ended: Mutex<Ended>,
    /// Woken when a request is added, so the expiry loop rereads the
    /// earliest deadline.
    added: Notify,
}

impl JoinRequests {
    /// Records `req` unless the account has one pending in the topic, or
    /// the topic or account is at its bound.
    pub fn ask(
        &self,
        req: JoinRequest,
        max_per_topic: usize,
        max_per_account: usize,
    ) -> Result<Asked, TooMany> {
        let Ok(mut pending) = self.pending.lock() else {
            return Err(TooMany::Topic(0));
        };
        if let Some(old) = pending.get(&(req.topic, req.account)) {
            return Ok(Asked::Already(old.clone()));
        }
        let in_topic = pending.keys().filter(|(t, _)| *t == req.topic).count();
        if in_topic >= max_per_topic {
            return Err(TooMany::Topic(in_topic));
        }
        let of_account = pending.keys().filter(|(_, a)| *a == req.account).count();
        if of_account >= max_per_account {
            return Err(TooMany::Account(of_account));
        }
        pending.insert((req.topic, req.account), req.clone());
        drop(pending);
        self.added.notify_one();
        Ok(Asked::New(req))
    }

    /// Removes and returns the account's pending request in the topic.
    pub fn take(&self, topic: Uuid, account: Uuid) -> Option<JoinRequest> {
        let req = self.pending.lock().ok()?.remove(&(topic, account))?;
        self.remember_ended(&req.id, req.expires);
        Some(req)
    }

    /// Puts back a request [`take`](Self::take) removed (its decision could
    /// not be committed), whatever the bounds.
    pub fn put_back(&self, req: JoinRequest) {
        if let Ok(mut ended) = self.ended.lock() {
            if ended.ids.remove(&req.id) {
                ended.order.retain(|(_, id)| *id != req.id);
            }
        }
        if let Ok(mut pending) = self.pending.lock() {
            pending.entry((req.topic, req.account)).or_insert(req);
        }
        self.added.notify_one();
    }

    /// Takes a request made on another node, unless it ended here already
    /// or expired, within `max_per_topic` and `max_per_account` (memory
    /// bounds: the asking node checked the protocol's). Of two requests of
    /// one account for one topic, the one with the smaller id (the earlier)
    /// is kept, so every node keeps the same.
    pub fn mirror(
        &self,
        req: JoinRequest,
        now_ms: i64,
        max_per_topic: usize,
        max_per_account: usize,
    ) -> Mirrored {
        if req.expires <= now_ms || self.has_ended(&req.id) {
            return Mirrored::Dropped;
        }
        let Ok(mut pending) = self.pending.lock() else {
            return Mirrored::Dropped;
        };
        let key = (req.topic, req.account);
        if let Some(old) = pending.get(&key) {
            if old.id == req.id {
                return Mirrored::Known;
            }
            let (loser, replace) = if req.id < old.id {
                ((old.id.clone(), old.expires), true)
            } else {
                ((req.id.clone(), req.expires), false)
            };
            if replace {
                pending.insert(key, req);
            }
            drop(pending);
            self.remember_ended(&loser.0, loser.1);
            if replace {
                self.added.notify_one();
                return Mirrored::Replaced;
            }
            return Mirrored::Dropped;
        }
        let in_topic = pending.keys().filter(|(t, _)| *t == req.topic).count();
        let of_account = pending.keys().filter(|(_, a)| *a == req.account).count();
        if in_topic >= max_per_topic || of_account >= max_per_account {
            return Mirrored::Dropped;
        }
        pending.insert(key, req.clone());
        drop(pending);
        self.added.notify_one();
        Mirrored::New(req)
    }

    /// Ends request `id` of `account` in `topic` as another node decided:
    /// removes and returns it if pending here, and remembers the id either
    /// way (until `expires`), so a copy of the request arriving later is
    /// not taken.
    pub fn end(&self, topic: Uuid, account: Uuid, id: &str, expires: i64) -> Option<JoinRequest> {
        let taken = self.pending.lock().ok().and_then(|mut p| {
            if p.get(&(topic, account)).is_some_and(|r| r.id == id) {
                p.remove(&(topic, account))
            } else {
                None
            }
        });
        self.remember_ended(id, expires);
        taken
    }

    /// Every request pending, oldest first (for a node that links up).
    pub fn all(&self) -> Vec<JoinRequest> {
        let mut out: Vec<JoinRequest> = self
            .pending
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    fn has_ended(&self, id: &str) -> bool {
        self.ended
            .lock()
            .map(|e| e.ids.contains(id))
            .unwrap_or(true)
    }

    fn remember_ended(&self, id: &str, expires: i64) {
        if let Ok(mut e) = self.ended.lock() {
            e.add(id, expires, crate::proto::id::now_ms());
        }
    }

    /// The account's pending request in the topic, left in place.
    pub fn get(&self, topic: Uuid, account: Uuid) -> Option<JoinRequest> {
        self.pending.lock().ok()?.get(&(topic, account)).cloned()
    }

    /// The requests pending in `topic`, oldest first.
    pub fn in_topic(&self, topic: Uuid) -> Vec<JoinRequest> {
        let mut out: Vec<JoinRequest> = self
            .pending
            .lock()
            .map(|p| p.values().filter(|r| r.topic == topic).cloned().collect())
            .unwrap_or_default();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// Removes and returns the requests whose deadline is at or before
    /// `now_ms`.
    pub fn expire(&self, now_ms: i64) -> Vec<JoinRequest> {
        let Ok(mut pending) = self.pending.lock() else {
            return Vec::new();
        };
        let due: Vec<(Uuid, Uuid)> = pending
            .iter()
            .filter(|(_, r)| r.expires <= now_ms)
            .map(|(k, _)| *k)
            .collect();
        due.iter().filter_map(|k| pending.remove(k)).collect()
    }

    /// The earliest deadline pending, in Unix ms.
    pub fn next_expiry(&self) -> Option<i64> {
        self.pending.lock().ok()?.values().map(|r| r.expires).min()
    }

    /// Resolves after a request was added since the last call (the
    /// wake-up is kept if nobody waits yet).
    pub async fn added(&self) {
        self.added.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(topic: Uuid, account: Uuid, expires: i64) -> JoinRequest {
        JoinRequest {
            id: crate::proto::id::new_id(),
            topic,
            account,
            name: "bob".into(),
            note: None,
            key: None,
            expires,
        }
    }

    #[test]
    fn one_per_account_and_topic_within_bounds() {
        let r = JoinRequests::default();
        let (t, u, v, w) = (
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
            Uuid::now_v7(),
        );
        let first = req(t, u, 10);
        assert_eq!(r.ask(first.clone(), 2, 2), Ok(Asked::New(first.clone())));
        // Asking again keeps the first request.
        assert_eq!(r.ask(req(t, u, 99), 2, 2), Ok(Asked::Already(first)));
        assert!(matches!(r.ask(req(t, v, 20), 2, 2), Ok(Asked::New(_))));
        assert_eq!(r.ask(req(t, w, 30), 2, 2), Err(TooMany::Topic(2)));
        assert!(matches!(
            r.ask(req(Uuid::now_v7(), u, 5), 2, 2),
            Ok(Asked::New(_))
        ));
        assert_eq!(
            r.ask(req(Uuid::now_v7(), u, 5), 2, 2),
            Err(TooMany::Account(2))
        );
        assert_eq!(r.in_topic(t).len(), 2);
        assert_eq!(r.next_expiry(), Some(5));
        let gone = r.expire(10);
        assert_eq!(gone.len(), 2);
        assert_eq!(r.next_expiry(), Some(20));
        assert!(r.take(t, v).is_some());
        assert!(r.take(t, v).is_none());
        assert_eq!(r.next_expiry(), None);
    }

    #[test]
    fn mirrored_requests_keep_the_earliest_and_ended_ones_stay_ended() {
        let r = JoinRequests::default();
        let now = crate::proto::id::now_ms();
        let (t, u) = (Uuid::now_v7(), Uuid::now_v7());
        let early = req(t, u, now + 60_000);
        let late = req(t, u, now + 60_000);
        assert!(early.id < late.id);
        assert_eq!(
            r.mirror(late.clone(), now, 9, 9),
            Mirrored::New(late.clone())
        );
        assert_eq!(r.mirror(late.clone(), now, 9, 9), Mirrored::Known);
        assert_eq!(r.mirror(early.clone(), now, 9, 9), Mirrored::Replaced);
        assert_eq!(r.get(t, u), Some(early.clone()));
        // The later one lost: it comes back no more.
        assert_eq!(r.mirror(late.clone(), now, 9, 9), Mirrored::Dropped);
        // An outcome for another id leaves the pending one alone.
        assert_eq!(r.end(t, u, &late.id, late.expires), None);
        assert_eq!(r.end(t, u, &early.id, early.expires), Some(early.clone()));
        assert_eq!(r.mirror(early.clone(), now, 9, 9), Mirrored::Dropped);
        // Expired copies and full tables are not taken.
        assert_eq!(r.mirror(req(t, u, now), now, 9, 9), Mirrored::Dropped);
        assert_eq!(r.mirror(req(t, u, now + 1), now, 0, 9), Mirrored::Dropped);
        // An outcome that overtook its request is remembered.
        let overtaken = req(t, u, now + 60_000);
        assert_eq!(r.end(t, u, &overtaken.id, overtaken.expires), None);
        assert_eq!(r.mirror(overtaken, now, 9, 9), Mirrored::Dropped);
        assert!(r.all().is_empty());
    }
}
