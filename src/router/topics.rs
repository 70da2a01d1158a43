//! The in-memory topic table: a cache of the store's topics (name ↔ id,
//! metadata, ACL, members) that the hot path reads without touching SQLite.
//! Every committed topic change is read back and [`Topics::put`] here in
//! the store job that commits it (a session's change, or a batch of a mesh
//! peer's events), so the store stays the one source of truth and no later
//! store job answers ahead of the table.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use uuid::Uuid;

use crate::store::TopicRecord;

#[derive(Default)]
struct Table {
    by_id: HashMap<Uuid, Arc<TopicRecord>>,
    by_name: HashMap<String, Uuid>,
    /// Deleted topics and the commit count they were read at, so that a
    /// copy read before the deletion cannot bring one back.
    deleted: HashMap<Uuid, u64>,
}

/// What [`Topics::put`] did.
#[derive(Debug)]
pub enum Put {
    /// The copy is in (or the topic removed); the copy it replaced, if any.
    Taken(Option<Arc<TopicRecord>>),
    /// The cache holds a copy read later; nothing changed.
    Stale,
}

/// Every live topic.
#[derive(Default)]
pub struct Topics {
    table: RwLock<Table>,
    /// Bumped by every change: a lookup made at an unchanged version is
    /// still what a lookup now would give.
    version: AtomicU64,
}

impl Topics {
    /// A table holding `records` (deleted ones are skipped).
    pub fn load(records: Vec<TopicRecord>) -> Self {
        let topics = Topics::default();
        for r in records {
            topics.put(r);
        }
        topics
    }

    /// The topic with `id`.
    pub fn get(&self, id: Uuid) -> Option<Arc<TopicRecord>> {
        self.table.read().ok()?.by_id.get(&id).cloned()
    }

    /// The topic named by a UUID or by its name (case-insensitive).
    pub fn resolve(&self, id_or_name: &str) -> Option<Arc<TopicRecord>> {
        let t = self.table.read().ok()?;
        let id = match Uuid::parse_str(id_or_name) {
            Ok(id) => id,
            Err(_) => *t.by_name.get(&id_or_name.to_lowercase())?,
        };
        t.by_id.get(&id).cloned()
    }

    /// The table's version: it changes whenever any topic does.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Replaces the cached copy of a topic (removes it if deleted), unless
    /// the cache holds a copy read later. Puts come from store jobs, which
    /// run one at a time, so they arrive in order; the check keeps it so
    /// for any put made elsewhere. Answers whether `record` was taken, and
    /// the copy it replaced.
    pub fn put(&self, record: TopicRecord) -> Put {
        let Ok(mut t) = self.table.write() else {
            return Put::Stale;
        };
        let newer = t
            .by_id
            .get(&record.id)
            .map(|old| old.as_of)
            .or_else(|| t.deleted.get(&record.id).copied())
            .is_some_and(|as_of| as_of > record.as_of);
        if newer {
            return Put::Stale;
        }
        // Bumped before the change, under the lock: whoever reads the
        // table after this sees a new version too.
        self.version.fetch_add(1, Ordering::AcqRel);
        let old = t.by_id.remove(&record.id);
        if let Some(old) = &old {
            let key = old.name.to_lowercase();
            if t.by_name.get(&key) == Some(&old.id) {
                t.by_name.remove(&key);
            }
        }
        if record.deleted {
            t.deleted.insert(record.id, record.as_of);
        } else {
            t.by_name.insert(record.name.to_lowercase(), record.id);
            t.by_id.insert(record.id, Arc::new(record));
        }
        Put::Taken(old)
    }

    /// The live topics `account` is a member of, by name.
    pub fn member_of(&self, account: Uuid) -> Vec<Arc<TopicRecord>> {
        let mut mine: Vec<_> = self
            .all()
            .into_iter()
            .filter(|t| t.members.contains(&account))
            .collect();
        mine.sort_by_key(|t| t.name.to_lowercase());
        mine
    }

    /// Every live topic, for searches.
    pub fn all(&self) -> Vec<Arc<TopicRecord>> {
        self.table
            .read()
            .map(|t| t.by_id.values().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: Uuid, as_of: u64, members: &[Uuid], deleted: bool) -> TopicRecord {
        TopicRecord {
            id,
            name: "lobby".into(),
            deleted,
            meta: Default::default(),
            acl: Default::default(),
            members: members.iter().copied().collect(),
            as_of,
        }
    }

    #[test]
    fn a_copy_read_earlier_never_overwrites_one_read_later() {
        let (id, dan, bob) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let topics = Topics::default();
        assert!(matches!(
            topics.put(record(id, 5, &[dan, bob], false)),
            Put::Taken(None)
        ));
        // A reload that started before bob joined finishes last.
        assert!(matches!(
            topics.put(record(id, 4, &[dan], false)),
            Put::Stale
        ));
        assert!(topics.get(id).is_some_and(|t| t.members.contains(&bob)));
        // The same read again, or a later one, is taken.
        assert!(matches!(
            topics.put(record(id, 5, &[dan, bob], false)),
            Put::Taken(Some(_))
        ));
        // Deleted; a copy read before the deletion cannot bring it back.
        assert!(matches!(
            topics.put(record(id, 7, &[], true)),
            Put::Taken(Some(_))
        ));
        assert!(matches!(
            topics.put(record(id, 6, &[dan], false)),
            Put::Stale
        ));
        assert!(topics.get(id).is_none() && topics.resolve("lobby").is_none());
    }
}
