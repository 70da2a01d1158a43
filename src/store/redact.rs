//! Redaction: a deleted account's secrets leave the store.
//!
//! Decision (issue 12, item 6): events keep carrying an account's password
//! hash and public keys in clear while the account lives (login needs the
//! hash, and a peer replicating the log needs both), and deleting the
//! account redacts them. Redaction is part of [`super::log::apply`], the one
//! path every event takes, local or replicated: whenever an applied event
//! touches an account whose `deleted` register is `true` (the
//! `account.delete` itself, or an older event of that account arriving
//! after the delete), the account's earlier events are rewritten without
//! their `password` and `key:<base64>` writes, and its `password` and
//! `key:` registers are removed (a key's base64 is the register's *field
//! name*, so clearing its value is not enough). Events keep their
//! `(origin, incarnation, seq, hlc)` and kind: the log stays gapless, a
//! redacted write simply is not there any more, and every node that applies
//! the delete, in any order relative to the account's other events, ends
//! with the same redacted log and registers.
//!
//! The same pass removes the account's metadata (`meta:<key>`) and read
//! markers (`read:<topic>`) from the registers, null or not: the delete
//! clears those it knows of, but a write it did not know of (a session's,
//! queued behind the delete; a peer's, made before the delete and
//! arriving after it, or arriving first from a node whose delete did not
//! know it) would otherwise stay, since no later write clears it. Those
//! stay in the events that carried them, as they do while the account
//! lives: redaction takes only secrets out of the log.
//!
//! What redaction cannot reach: copies outside the store (backups, a peer
//! that never receives the delete) and SQLite's free pages until they are
//! reused.

use rusqlite::{Transaction, params};

use super::Error;
use crate::change::{Change, field};

/// Entity key prefix of accounts.
const ACCOUNT: &str = "account:";

/// After `change` was applied: redacts every account it touched that is now
/// deleted.
pub fn after_apply(tx: &Transaction<'_>, change: &Change) -> Result<(), Error> {
    let mut done: Vec<&str> = Vec::new();
    for w in &change.writes {
        let entity = w.entity.as_str();
        if !entity.starts_with(ACCOUNT) || done.contains(&entity) {
            continue;
        }
        done.push(entity);
        if is_deleted(tx, entity)? {
            account(tx, entity)?;
        }
    }
    Ok(())
}

/// Whether the account's `deleted` register holds `true`.
fn is_deleted(tx: &Transaction<'_>, entity: &str) -> Result<bool, Error> {
    Ok(super::register::<bool>(tx, entity, field::DELETED)? == Some(true))
}

/// Whether a write holds a secret of the account: its password hash or
/// one of its public keys (in the field name).
fn is_secret(field_name: &str) -> bool {
    field_name == field::PASSWORD
        || field_name == field::REHASHED
        || field_name.starts_with(field::KEY_PREFIX)
}

/// Removes `entity`'s secrets from its registers and from every event's
/// body, and its metadata and read markers from its registers. State
/// events are few (messages are indexed apart), and an account is deleted
/// once, so reading them all is cheap.
fn account(tx: &Transaction<'_>, entity: &str) -> Result<(), Error> {
    let mut own =
        tx.prepare_cached("DELETE FROM registers WHERE entity = ?1 AND substr(field, 1, ?2) = ?3")?;
    for prefix in [field::META_PREFIX, field::READ_PREFIX] {
        own.execute(params![entity, prefix.len() as i64, prefix])?;
    }
    tx.prepare_cached(
        "DELETE FROM registers WHERE entity = ?1
           AND (field IN (?2, ?5) OR substr(field, 1, ?3) = ?4)",
    )?
    .execute(params![
        entity,
        field::PASSWORD,
        field::KEY_PREFIX.len() as i64,
        field::KEY_PREFIX,
        field::REHASHED
    ])?;
    let mut rewritten = Vec::new();
    {
        let mut stmt = tx.prepare_cached(
            "SELECT rowid, body FROM events INDEXED BY events_state
             WHERE topic IS NULL AND instr(body, ?1) > 0",
        )?;
        let rows = stmt.query_map(params![entity], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })?;
        for row in rows {
            let (rowid, body) = row?;
            let mut change: Change =
                serde_json::from_str(&body).map_err(|e| Error::Corrupt(e.to_string()))?;
            let before = change.writes.len();
            change
                .writes
                .retain(|w| w.entity != entity || !is_secret(&w.field));
            if change.writes.len() != before {
                let body =
                    serde_json::to_string(&change).map_err(|e| Error::Corrupt(e.to_string()))?;
                rewritten.push((rowid, body));
            }
        }
    }
    let mut update = tx.prepare_cached("UPDATE events SET body = ?2 WHERE rowid = ?1")?;
    for (rowid, body) in rewritten {
        update.execute(params![rowid, body])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Entity, Write};
    use crate::store::{Db, log};

    /// Every text of the events and registers tables, for searching.
    fn all_text(db: &Db) -> String {
        let mut out = String::new();
        for sql in [
            "SELECT body FROM events",
            "SELECT entity || ' ' || field || ' ' || value FROM registers",
        ] {
            let mut stmt = db.conn.prepare(sql).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            for row in rows {
                out.push_str(&row.unwrap());
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn a_delete_removes_the_hash_and_keys_from_events_and_registers() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let a = db
            .create_account("alice", "$argon2id$SECRET-HASH-1")
            .unwrap();
        db.set_password(a.id, "$argon2id$SECRET-HASH-2").unwrap();
        db.set_key(a.id, "PUBKEY-ONE", true).unwrap();
        db.set_key(a.id, "PUBKEY-TWO", true).unwrap();
        db.set_key(a.id, "PUBKEY-TWO", false).unwrap();
        let b = db.create_account("bob", "$argon2id$BOB-HASH").unwrap();
        db.set_key(b.id, "BOB-KEY", true).unwrap();
        let text = all_text(&db);
        assert!(text.contains("SECRET-HASH-1") && text.contains("PUBKEY-ONE"));

        db.delete_account(a.id).unwrap();
        let text = all_text(&db);
        for secret in ["SECRET-HASH-1", "SECRET-HASH-2", "PUBKEY-ONE", "PUBKEY-TWO"] {
            assert!(!text.contains(secret), "{secret} left in:\n{text}");
        }
        // Only that account's secrets: bob's stay, alice's name stays taken.
        assert!(text.contains("BOB-HASH") && text.contains("BOB-KEY"));
        let gone = db.account(a.id).unwrap().unwrap();
        assert!(gone.deleted && gone.password.is_none() && gone.keys.is_empty());
        assert_eq!(gone.name, "alice");
        let seqs: Vec<u64> = db.events().unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    }

    /// A peer's metadata and read marker of an account, made before the
    /// account's delete and arriving after it, or arriving first from a
    /// node whose delete did not know them: either way, nothing of them is
    /// left in the registers.
    #[test]
    fn a_deleted_accounts_metadata_and_markers_stay_gone_in_any_order() {
        let id = uuid::Uuid::now_v7();
        let e = Entity::Account(id);
        let create = Change::new("account.create")
            .set(e, field::NAME, "erin")
            .set(e, field::PASSWORD, "$argon2id$ERIN-HASH");
        let meta = Change::new("account.meta").set(e, "meta:fullname", "Erin Example");
        let mark = Change::new("account.read").set(
            e,
            &format!("{}{}", field::READ_PREFIX, uuid::Uuid::now_v7()),
            serde_json::json!({"id": "m1", "ts": 1}),
        );
        let delete = Change::new("account.delete")
            .set(e, field::DELETED, true)
            .set(e, field::PASSWORD, serde_json::Value::Null);
        // (origin, seq, clock): the metadata and the marker are another
        // node's, older than the delete.
        let events = [
            ("a", 1, 10, create),
            ("b", 1, 11, meta),
            ("b", 2, 12, mark),
            ("a", 2, 13, delete),
        ];
        for order in [[0, 1, 2, 3], [0, 3, 1, 2], [3, 2, 1, 0]] {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), "n1").unwrap();
            replay(
                &db,
                order.iter().map(|&i| {
                    let (node, seq, hlc, change) = &events[i];
                    (*node, *seq, *hlc, change)
                }),
            );
            let mut stmt = db
                .conn
                .prepare("SELECT field FROM registers WHERE entity = ?1 ORDER BY field")
                .unwrap();
            let fields: Vec<String> = stmt
                .query_map(params![e.key()], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(fields, [field::DELETED, field::NAME], "{order:?}");
            let gone = db.account(id).unwrap().unwrap();
            assert!(gone.deleted && gone.meta.is_empty(), "{order:?}");
            assert!(db.markers(id).unwrap().is_empty(), "{order:?}");
        }
    }

    /// Records and applies `(node, seq, clock in ms, change)` events of
    /// incarnation `inc`, in the order given, in one transaction: what a
    /// peer's log delivers.
    fn replay<'a>(db: &Db, events: impl Iterator<Item = (&'a str, u64, u64, &'a Change)>) {
        let tx = db.conn.unchecked_transaction().unwrap();
        for (node, seq, hlc, change) in events {
            let event = log::Event {
                node: node.into(),
                incarnation: "inc".into(),
                seq,
                hlc: hlc << 16,
                change: change.clone(),
            };
            let rowid = log::insert(&tx, &event).unwrap();
            let mut index = crate::store::search::IndexQueue::default();
            let origin = format!("{node}/inc");
            log::apply(&tx, &mut index, rowid, &origin, hlc << 16, change).unwrap();
            index.flush(&tx).unwrap();
        }
        tx.commit().unwrap();
    }

    #[test]
    fn a_replicated_delete_redacts_in_either_order() {
        let id = uuid::Uuid::now_v7();
        let e = Entity::Account(id);
        let create = Change::new("account.create")
            .set(e, field::NAME, "carol")
            .set(e, field::PASSWORD, "$argon2id$CAROL-HASH");
        let key = Change::new("account.key.add").set(e, "key:CAROL-KEY", true);
        let delete = Change::new("account.delete")
            .set(e, field::DELETED, true)
            .set(e, field::PASSWORD, serde_json::Value::Null);
        let events = [(1, 10, create), (2, 11, key), (3, 12, delete)];
        // The delete applied last (in order) and first (before the events it
        // redacts arrive), as a peer's log might deliver them.
        for order in [[0, 1, 2], [2, 0, 1]] {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), "n1").unwrap();
            replay(
                &db,
                order.iter().map(|&i| {
                    let (seq, hlc, change) = &events[i];
                    ("peer", *seq, *hlc, change)
                }),
            );
            let text = all_text(&db);
            assert!(!text.contains("CAROL-HASH"), "{order:?}:\n{text}");
            assert!(!text.contains("CAROL-KEY"), "{order:?}:\n{text}");
            let events = db.events().unwrap();
            assert_eq!(events.len(), 4, "{order:?}");
            let create = events.iter().find(|e| e.seq == 1 && e.node == "peer");
            assert_eq!(
                create.unwrap().change.writes,
                [Write {
                    entity: e.key(),
                    field: field::NAME.into(),
                    value: "carol".into()
                }]
            );
        }
    }
}
