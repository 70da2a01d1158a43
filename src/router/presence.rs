//! Which connections each account has. An account is present while any of
//! its connections is; each connection is logged in on its own.

use std::collections::HashMap;
use std::sync::Mutex;

use uuid::Uuid;

use super::Outbound;
use crate::proto::ErrorCode;

/// Account → its live connections.
#[derive(Default)]
pub struct Presence {
    sessions: Mutex<HashMap<Uuid, Vec<(u64, Outbound)>>>,
}

impl Presence {
    /// Records a logged-in connection.
    pub fn add(&self, account: Uuid, conn: u64, out: Outbound) {
        if let Ok(mut s) = self.sessions.lock() {
            s.entry(account).or_default().push((conn, out));
        }
    }

    /// Forgets a connection (on close).
    pub fn remove(&self, account: Uuid, conn: u64) {
        if let Ok(mut s) = self.sessions.lock() {
            if let Some(list) = s.get_mut(&account) {
                list.retain(|(c, _)| *c != conn);
                if list.is_empty() {
                    s.remove(&account);
                }
            }
        }
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
            for (conn, out) in s.get(account).map(Vec::as_slice).unwrap_or_default() {
                if *conn != except && out.push_lines(bytes.clone(), count).is_ok() {
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
                            .filter(|(c, _)| *c != except)
                            .map(|(_, o)| o.clone())
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
