//! Pending join requests of topics whose members admit newcomers
//! (`admission: members`). Soft state, like presence: held by the node the
//! requester is connected to, never written to the store, gone after a
//! restart. What a decision changes (membership) is replicated; the request
//! is not. Nothing here awaits a socket or knows SQL.

use std::collections::HashMap;
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

/// The pending requests, by `(topic, account)`: one each.
#[derive(Default)]
pub struct JoinRequests {
    pending: Mutex<HashMap<(Uuid, Uuid), JoinRequest>>,
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
        self.pending.lock().ok()?.remove(&(topic, account))
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
}
