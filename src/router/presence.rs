//! Which connections each account has. An account is present while any of
//! its connections is; each connection is logged in on its own. The
//! [`Online`] view beside it says who is online anywhere in the mesh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::Outbound;
use super::online::Online;
use crate::proto::ErrorCode;

/// One logged-in connection.
struct Conn {
    id: u64,
    out: Outbound,
    /// It asked for `presence` events.
    watching: bool,
    /// For a user of another server: its `user@home`, lowercased (what
    /// ACLs name it by).
    remote: Option<Arc<str>>,
}

/// Account → its live connections.
#[derive(Default)]
pub struct Presence {
    sessions: Mutex<HashMap<Uuid, Vec<Conn>>>,
    /// Who is online here and on the other nodes.
    pub online: Online,
}

impl Presence {
    /// Records a logged-in connection; `remote` is a federated user's
    /// `user@home`, lowercased (`None` for a local account).
    pub fn add(&self, account: Uuid, conn: u64, out: Outbound, remote: Option<Arc<str>>) {
        if let Ok(mut s) = self.sessions.lock() {
            let list = s.entry(account).or_default();
            list.push(Conn {
                id: conn,
                out,
                watching: false,
                remote,
            });
            if list.len() == 1 {
                self.online.set_local(account, true);
            }
        }
    }

    /// Forgets a connection (on close).
    pub fn remove(&self, account: Uuid, conn: u64) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(list) = s.get_mut(&account) {
                list.retain(|c| c.id != conn);
                if list.is_empty() {
                    s.remove(&account);
                    self.online.set_local(account, false);
                }
            }
        }
    }

    /// Starts or stops `presence` events for one connection.
    pub fn watch(&self, account: Uuid, conn: u64, on: bool) {
        if let Ok(mut s) = self.sessions.lock() {
            for c in s.get_mut(&account).into_iter().flatten() {
                if c.id == conn {
                    c.watching = on;
                }
            }
        }
    }

    /// Of `accounts`, those with a connection that watches presence.
    pub fn watchers<'a>(&self, accounts: impl IntoIterator<Item = &'a Uuid>) -> Vec<Uuid> {
        let Ok(s) = self.sessions.lock() else {
            return Vec::new();
        };
        accounts
            .into_iter()
            .filter(|a| s.get(a).is_some_and(|l| l.iter().any(|c| c.watching)))
            .copied()
            .collect()
    }

    /// Queues `bytes` (one packet) for every connection of `account` that
    /// watches presence.
    pub fn deliver_to_watchers(&self, account: Uuid, bytes: &bytes::Bytes) {
        let Ok(s) = self.sessions.lock() else {
            return;
        };
        for c in s.get(&account).map(Vec::as_slice).unwrap_or_default() {
            if c.watching {
                let _ = c.out.push_lines(bytes.clone(), 1);
            }
        }
    }

    /// Of `accounts`, those with a connection here, each with its
    /// federated `user@home` (`None` for a local account): what an ACL
    /// needs to judge them.
    pub fn connected<'a>(
        &self,
        accounts: impl IntoIterator<Item = &'a Uuid>,
    ) -> Vec<(Uuid, Option<Arc<str>>)> {
        // The lock once per account: a large topic's members must not hold
        // up every delivery while they are looked up.
        accounts
            .into_iter()
            .filter_map(|a| {
                let s = self.sessions.lock().ok()?;
                let first = s.get(a)?.first()?;
                Some((*a, first.remote.clone()))
            })
            .collect()
    }

    /// How many connections the account has.
    pub fn connections(&self, account: Uuid) -> usize {
        self.sessions
            .lock()
            .map(|s| s.get(&account).map_or(0, Vec::len))
            .unwrap_or(0)
    }

    /// Queues `bytes`, `count` packets, for every connection of each account
    /// in `accounts` but `except`: serialized once and shared. A
    /// connection whose queue is full is cut as a slow consumer by its
    /// [`Outbound`]; nobody else waits for it.
    pub fn deliver<'a>(
        &self,
        accounts: impl IntoIterator<Item = &'a Uuid>,
        bytes: &bytes::Bytes,
        count: usize,
        except: u64,
    ) -> usize {
        let Ok(s) = self.sessions.lock() else {
            return 0;
        };
        let mut delivered = 0;
        for account in accounts {
            for c in s.get(account).map(Vec::as_slice).unwrap_or_default() {
                if c.id != except && c.out.push_lines(bytes.clone(), count).is_ok() {
                    delivered += 1;
                }
            }
        }
        delivered
    }

    /// Closes every connection of the account but `except`, saying why.
    pub fn close_all(&self, account: Uuid, except: u64, code: ErrorCode, message: &str) {
        let targets: Vec<Outbound> = self
            .sessions
            .lock()
            .map(|s| {
                s.get(&account)
                    .map(|l| {
                        l.iter()
                            .filter(|c| c.id != except)
                            .map(|c| c.out.clone())
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        for out in targets {
            out.closer().close(code, message);
        }
    }
}
