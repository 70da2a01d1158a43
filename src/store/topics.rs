//! Topics: name, metadata, ACL entries and memberships, each a register of
//! the entity `topic:<uuid>`.

use std::collections::BTreeSet;

use rusqlite::Connection;
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Db, Error, log};
use crate::change::{Change, Entity, field};
use crate::router::acl::{Acl, Flag, Subject};

const PREFIX: &str = "topic:";

/// A topic as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct TopicRecord {
    /// Server-assigned, time-ordered; never changes.
    pub id: Uuid,
    /// Its name (renaming changes only this).
    pub name: String,
    /// Deleted by an owner.
    pub deleted: bool,
    /// Key/value metadata (`description`, `format`, …); `name` is not here.
    pub meta: Map<String, Value>,
    /// Grants in force.
    pub acl: Acl,
    /// Member accounts.
    pub members: BTreeSet<Uuid>,
    /// The store's commit count when this copy was read: of two copies,
    /// the one read later is at least as new, so a cache never lets an
    /// older read overwrite a newer one.
    pub as_of: u64,
}

fn acl_field(subject: &Subject, flag: Flag) -> String {
    format!("{}{}:{}", field::ACL_PREFIX, subject.key(), flag.as_str())
}

impl Db {
    /// Creates a topic named `name`: the creator is its owner and a member,
    /// and `*` may read and write (an open topic).
    pub fn create_topic(
        &mut self,
        name: &str,
        creator: Uuid,
        meta: &Map<String, Value>,
    ) -> Result<TopicRecord, Error> {
        let id = Uuid::now_v7();
        self.write(|tx, origin| {
            if name_holder(tx, &name.to_lowercase())?.is_some() {
                return Err(Error::NameTaken);
            }
            let e = Entity::Topic(id);
            let change = Change::new("topic.create")
                .set(e, field::NAME, name)
                .set(e, &acl_field(&Subject::Account(creator), Flag::Owner), true)
                .set(e, &acl_field(&Subject::Everyone, Flag::Read), true)
                .set(e, &acl_field(&Subject::Everyone, Flag::Write), true)
                .set(e, &format!("{}{creator}", field::MEMBER_PREFIX), true)
                .set_meta(e, meta);
            log::append(tx, origin, change)?;
            Ok(())
        })?;
        self.topic(id)?.ok_or(Error::NotFound)
    }

    /// The topic with `id`, not deleted: what a change may apply to.
    fn live_topic(&self, id: Uuid) -> Result<TopicRecord, Error> {
        self.topic(id)?
            .filter(|t| !t.deleted)
            .ok_or(Error::NotFound)
    }

    /// [`Db::live_topic`]'s check alone: two register lookups, not a load
    /// of every register (every member) of the topic.
    fn check_live(&self, id: Uuid) -> Result<(), Error> {
        let key = Entity::Topic(id).key();
        // Every topic has a name register (null once deleted).
        let exists = super::register::<Value>(&self.conn, &key, field::NAME)?.is_some();
        let deleted = super::register::<bool>(&self.conn, &key, field::DELETED)? == Some(true);
        if exists && !deleted {
            Ok(())
        } else {
            Err(Error::NotFound)
        }
    }

    /// The topic with `id`, deleted or not.
    pub fn topic(&self, id: Uuid) -> Result<Option<TopicRecord>, Error> {
        load(&self.conn, id, self.commits)
    }

    /// The live topic named `name` (case-insensitive).
    pub fn topic_by_name(&self, name: &str) -> Result<Option<TopicRecord>, Error> {
        match name_holder(&self.conn, &name.to_lowercase())? {
            Some(id) => Ok(load(&self.conn, id, self.commits)?.filter(|t| !t.deleted)),
            None => Ok(None),
        }
    }

    /// Every topic, deleted ones included, oldest first.
    pub fn all_topics(&self) -> Result<Vec<TopicRecord>, Error> {
        let mut out = Vec::new();
        for entity in super::entities_with_name(&self.conn, PREFIX)? {
            if let Some(id) = super::parse_entity(PREFIX, &entity) {
                if let Some(t) = load(&self.conn, id, self.commits)? {
                    out.push(t);
                }
            }
        }
        Ok(out)
    }

    /// Renames a topic (when `name` is given) and sets metadata keys, in
    /// one transaction: either both happen or neither.
    pub fn update_topic(
        &mut self,
        id: Uuid,
        name: Option<&str>,
        values: &Map<String, Value>,
        max_keys: usize,
    ) -> Result<(), Error> {
        let current = self.live_topic(id)?;
        super::check_key_count(&current.meta, values, max_keys)?;
        let e = Entity::Topic(id);
        self.write(|tx, origin| {
            let mut change = Change::new(if name.is_some() {
                "topic.rename"
            } else {
                "topic.meta"
            });
            if let Some(n) = name {
                match name_holder(tx, &n.to_lowercase())? {
                    Some(holder) if holder != id => return Err(Error::NameTaken),
                    _ => {}
                }
                change = change.set(e, field::NAME, n);
            }
            log::append(tx, origin, change.set_meta(e, values))?;
            Ok(())
        })
    }

    /// Grants or revokes one ACL entry, and ends the membership of `ends`
    /// (the members a ban puts out, as the caller judged them) in the same
    /// change.
    pub fn set_topic_acl(
        &mut self,
        id: Uuid,
        subject: &Subject,
        flag: Flag,
        granted: bool,
        ends: &[Uuid],
    ) -> Result<(), Error> {
        self.check_live(id)?;
        let e = Entity::Topic(id);
        let mut change = Change::new(if granted {
            "topic.acl.grant"
        } else {
            "topic.acl.revoke"
        })
        .set(
            e,
            &acl_field(subject, flag),
            if granted {
                Value::Bool(true)
            } else {
                Value::Null
            },
        );
        for account in ends {
            change = change.set(
                e,
                &format!("{}{account}", field::MEMBER_PREFIX),
                Value::Null,
            );
        }
        self.commit(change)
    }

    /// Adds or removes a member.
    pub fn set_member(&mut self, id: Uuid, account: Uuid, member: bool) -> Result<(), Error> {
        self.check_live(id)?;
        self.commit(
            Change::new(if member { "topic.join" } else { "topic.leave" }).set(
                Entity::Topic(id),
                &format!("{}{account}", field::MEMBER_PREFIX),
                if member {
                    Value::Bool(true)
                } else {
                    Value::Null
                },
            ),
        )
    }

    /// Marks a topic deleted; its name becomes free.
    pub fn delete_topic(&mut self, id: Uuid) -> Result<(), Error> {
        self.check_live(id)?;
        let e = Entity::Topic(id);
        self.commit(
            Change::new("topic.delete")
                .set(e, field::DELETED, true)
                .set(e, field::NAME, Value::Null),
        )
    }

    /// Commits a change to an existing entity.
    fn commit(&mut self, change: Change) -> Result<(), Error> {
        self.write(|tx, origin| {
            log::append(tx, origin, change)?;
            Ok(())
        })
    }
}

/// The live topic holding a lowercased name.
fn name_holder(conn: &Connection, lookup: &str) -> Result<Option<Uuid>, Error> {
    super::name_holder(conn, PREFIX, lookup, true)
}

fn load(conn: &Connection, id: Uuid, as_of: u64) -> Result<Option<TopicRecord>, Error> {
    let rows = super::load_registers(conn, &Entity::Topic(id).key())?;
    if rows.is_empty() {
        return Ok(None);
    }
    let mut t = TopicRecord {
        id,
        name: String::new(),
        deleted: false,
        meta: Map::new(),
        acl: Acl::default(),
        members: BTreeSet::new(),
        as_of,
    };
    for (f, value) in rows {
        if f == field::NAME {
            t.name = value.as_str().unwrap_or_default().to_owned();
        } else if f == field::DELETED {
            t.deleted = value.as_bool().unwrap_or(false);
        } else if let Some(k) = f.strip_prefix(field::META_PREFIX) {
            if !value.is_null() {
                t.meta.insert(k.to_owned(), value);
            }
        } else if let Some(m) = f.strip_prefix(field::MEMBER_PREFIX) {
            if let (Ok(account), Value::Bool(true)) = (Uuid::parse_str(m), &value) {
                t.members.insert(account);
            }
        } else if let Some(entry) = f.strip_prefix(field::ACL_PREFIX) {
            let parsed = entry
                .rsplit_once(':')
                .and_then(|(s, fl)| Some((Subject::from_key(s)?, Flag::parse(fl)?)));
            if let (Some((subject, flag)), Value::Bool(true)) = (parsed, &value) {
                t.acl.set(subject, flag, true);
            }
        }
    }
    if !t.deleted && name_holder(conn, &t.name.to_lowercase())? != Some(id) {
        t.name = super::clash_name(&t.name, id);
    }
    Ok(Some(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_lifecycle() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let dan = Uuid::now_v7();
        let t = db.create_topic("Lobby", dan, &Map::new()).unwrap();
        assert!(t.members.contains(&dan));
        assert!(t.acl.has_entry(&Subject::Account(dan), Flag::Owner));
        assert!(matches!(
            db.create_topic("lobby", dan, &Map::new()),
            Err(Error::NameTaken)
        ));
        // An account named like a topic is a different namespace.
        db.create_account("lobby", "h").unwrap();
        db.update_topic(t.id, Some("Hall"), &Map::new(), 8).unwrap();
        assert_eq!(db.topic_by_name("hall").unwrap().unwrap().id, t.id);
        assert!(db.topic_by_name("lobby").unwrap().is_none());
        let bob = Uuid::now_v7();
        db.set_member(t.id, bob, true).unwrap();
        db.set_topic_acl(t.id, &Subject::Account(bob), Flag::Ban, true, &[bob])
            .unwrap();
        let t2 = db.topic(t.id).unwrap().unwrap();
        assert!(!t2.members.contains(&bob));
        db.delete_topic(t.id).unwrap();
        assert!(db.topic_by_name("hall").unwrap().is_none());
        assert!(db.topic(t.id).unwrap().unwrap().deleted);
        // A deleted topic takes no more changes.
        let none = Map::new();
        assert!(matches!(
            db.update_topic(t.id, Some("Gone"), &none, 8),
            Err(Error::NotFound)
        ));
        assert!(matches!(
            db.set_topic_acl(t.id, &Subject::Everyone, Flag::Read, false, &[]),
            Err(Error::NotFound)
        ));
        assert!(matches!(
            db.set_member(t.id, bob, true),
            Err(Error::NotFound)
        ));
        assert!(matches!(db.delete_topic(t.id), Err(Error::NotFound)));
        assert!(matches!(
            db.set_member(Uuid::now_v7(), bob, true),
            Err(Error::NotFound)
        ));
        db.create_topic("Hall", dan, &Map::new()).unwrap();
        // A rename that reaches it after its delete (another node's, applied
        // later) holds no name.
        db.commit(Change::new("topic.rename").set(Entity::Topic(t.id), field::NAME, "Gone"))
            .unwrap();
        db.create_topic("gone", dan, &Map::new()).unwrap();
    }
}
