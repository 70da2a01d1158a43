//! The in-memory topic table: a cache of the store's topics (name ↔ id,
//! metadata, ACL, members) that the hot path reads without touching SQLite.
//! After every committed topic change the session reloads that topic from
//! the store and [`Topics::put`]s it, so the store stays the one source of
//! truth.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use uuid::Uuid;

use crate::store::TopicRecord;

#[derive(Default)]
struct Table {
    by_id: HashMap<Uuid, Arc<TopicRecord>>,
    by_name: HashMap<String, Uuid>,
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

    /// Replaces the cached copy of a topic (removes it if deleted).
    pub fn put(&self, record: TopicRecord) {
        let Ok(mut t) = self.table.write() else {
            return;
        };
        // Bumped before the change, under the lock: whoever reads the
        // table after this sees a new version too.
        self.version.fetch_add(1, Ordering::AcqRel);
        if let Some(old) = t.by_id.remove(&record.id) {
            let key = old.name.to_lowercase();
            if t.by_name.get(&key) == Some(&old.id) {
                t.by_name.remove(&key);
            }
        }
        if record.deleted {
            return;
        }
        t.by_name.insert(record.name.to_lowercase(), record.id);
        t.by_id.insert(record.id, Arc::new(record));
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
