//! Edits and redactions of kept messages.
//!
//! A message event never changes on its own; what readers see of it is
//! folded from two registers of the entity `message:<topic>/<id>`: `edit`
//! (the current text, last writer wins) and `redacted`. Both are written by
//! immutable events (`message.edit`, `message.redact`) like any register,
//! so a mesh replicates them. A redaction also removes the text from every
//! place it is stored: the message's event, the edits' events and the
//! `edit` register. [`settle`] does that on the one apply path, whatever
//! order the message, its edits and its redaction arrive in.

use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::blocks::{self, Key, Place};
use super::log::Arrival;
use super::search::IndexQueue;
use super::{Db, Error, Event, log, search};
use crate::change::{Change, ExJson, Message, Write};

/// Event kind of an edit.
pub const KIND_EDIT: &str = "message.edit";
/// Event kind of a redaction.
pub const KIND_REDACT: &str = "message.redact";
/// Register holding a message's current text.
pub(super) const EDIT: &str = "edit";
/// Register set once a message is redacted.
pub(super) const REDACTED: &str = "redacted";

/// A message's text as last edited.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    /// The new `ex`.
    pub ex: Map<String, Value>,
    /// When it was edited, Unix ms.
    pub ts: i64,
    /// Who edited it (its sender).
    pub by: Uuid,
    /// Which edit of the message this is, from 1 (0 in a revision stored
    /// before edits were counted).
    #[serde(default)]
    pub n: u32,
}

/// A message's redaction.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Redaction {
    /// When, Unix ms.
    pub ts: i64,
    /// Who: its sender, or an op or owner of the topic.
    pub by: Uuid,
}

/// The register entity of a message.
pub(super) fn entity(topic: Uuid, id: &str) -> String {
    format!("message:{topic}/{id}")
}

/// The topic and message id an entity names.
fn parse_entity(entity: &str) -> Option<(Uuid, &str)> {
    let (topic, id) = entity.strip_prefix("message:")?.split_once('/')?;
    Some((Uuid::parse_str(topic).ok()?, id))
}

fn write(topic: Uuid, id: &str, field: &str, value: &impl Serialize) -> Result<Write, Error> {
    Ok(Write {
        entity: entity(topic, id),
        field: field.to_owned(),
        value: serde_json::to_value(value).map_err(|e| Error::Corrupt(e.to_string()))?,
    })
}

/// The change that edits message `id` of `topic` to `revision`.
pub(super) fn edit_change(topic: Uuid, id: &str, revision: &Revision) -> Result<Change, Error> {
    Ok(one_write(KIND_EDIT, write(topic, id, EDIT, revision)?))
}

/// The change that redacts message `id` of `topic`.
pub(super) fn redact_change(topic: Uuid, id: &str, redaction: &Redaction) -> Result<Change, Error> {
    Ok(one_write(
        KIND_REDACT,
        write(topic, id, REDACTED, redaction)?,
    ))
}

/// A change of `kind` holding the one register write `w`.
fn one_write(kind: &str, w: Write) -> Change {
    let mut change = Change::new(kind);
    change.writes.push(w);
    change
}

impl Db {
    /// Records an edit of message `id` of `topic`.
    pub fn edit_message(
        &mut self,
        topic: Uuid,
        id: &str,
        revision: &Revision,
    ) -> Result<Event, Error> {
        let change = edit_change(topic, id, revision)?;
        self.write(|tx, origin| log::append(tx, origin, change))
    }

    /// Records the redaction of message `id` of `topic`, removing its text.
    pub fn redact_message(
        &mut self,
        topic: Uuid,
        id: &str,
        redaction: &Redaction,
    ) -> Result<Event, Error> {
        let change = redact_change(topic, id, redaction)?;
        self.write(|tx, origin| log::append(tx, origin, change))
    }

    /// The kept message `id` of `topic`, unless it was redacted.
    pub fn live_message(&self, topic: Uuid, id: &str) -> Result<Option<Message>, Error> {
        if self.redaction(topic, id)?.is_some() {
            return Ok(None);
        }
        self.kept_message(topic, id)
    }

    /// The latest edit of message `id` of `topic`, if it was edited.
    pub fn revision(&self, topic: Uuid, id: &str) -> Result<Option<Revision>, Error> {
        super::register(&self.conn, &entity(topic, id), EDIT)
    }

    /// The redaction of message `id` of `topic`, if it was redacted.
    pub fn redaction(&self, topic: Uuid, id: &str) -> Result<Option<Redaction>, Error> {
        super::register(&self.conn, &entity(topic, id), REDACTED)
    }

    /// Replaces each message's `ex` with what readers see now: the latest
    /// edit's text marked `"edited": <ms>`, or `{"redacted": true}`. The
    /// server's marks are taken out of what senders wrote.
    pub fn current_text(&self, messages: &mut [Message]) -> Result<(), Error> {
        let corrupt = |e: serde_json::Error| Error::Corrupt(e.to_string());
        for m in messages {
            let e = entity(m.topic, &m.id);
            if super::register::<Redaction>(&self.conn, &e, REDACTED)?.is_some() {
                let ex = Map::from_iter([(REDACTED.to_owned(), Value::Bool(true))]);
                m.ex = ExJson::from_map(&ex).map_err(corrupt)?;
                continue;
            }
            if let Some(mut revision) = super::register::<Revision>(&self.conn, &e, EDIT)? {
                revision
                    .ex
                    .insert("edited".into(), Value::from(revision.ts));
                m.ex = ExJson::from_map(&revision.ex).map_err(corrupt)?;
            } else if may_hold_marks(m.ex.get()) {
                // Rare: only then is the text read as a map (and written
                // again without the marks).
                let mut ex: Map<String, Value> =
                    serde_json::from_str(m.ex.get()).map_err(corrupt)?;
                let (a, b) = (ex.remove("edited"), ex.remove(REDACTED));
                if a.is_some() || b.is_some() {
                    m.ex = ExJson::from_map(&ex).map_err(corrupt)?;
                }
            }
        }
        Ok(())
    }
}

/// Whether a message's `ex` text may hold a key `edited` or `redacted`:
/// spelled out, or spelled with `\u` escapes (the only escapes that make
/// letters), which every JSON reader takes for the same key.
fn may_hold_marks(ex: &str) -> bool {
    ex.contains("\"edited\"") || ex.contains("\"redacted\"") || ex.contains("\\u")
}

/// After an event's writes are folded: a redacted message keeps no text,
/// whichever of the message, its edits and its redaction came first, and
/// the search index holds each other message's current text. `rowid` is
/// the event's own row.
pub(super) fn settle(
    tx: &Transaction<'_>,
    queue: &mut IndexQueue,
    rowid: i64,
    change: &Change,
    arrival: Arrival,
) -> Result<(), Error> {
    match change.kind.as_str() {
        "message" => match &change.message {
            // The search pass indexes it (search.rs, "behind").
            Some(_) if arrival == Arrival::Behind => Ok(()),
            Some(m) => index_message(tx, queue, blocks::key(Place::Row(rowid)), m, arrival),
            None => Ok(()),
        },
        KIND_EDIT | KIND_REDACT => {
            for w in &change.writes {
                if super::register::<Redaction>(tx, &w.entity, REDACTED)?.is_some() {
                    erase(tx, queue, &w.entity)?;
                } else if let Some(r) = super::register::<Revision>(tx, &w.entity, EDIT)? {
                    // The edit that won, which need not be this one.
                    if let Some((topic, id)) = parse_entity(&w.entity) {
                        for (key, change) in message_rows(tx, topic, id)? {
                            // One behind the search pass has no entry: the
                            // pass indexes its text as edited.
                            if search::behind(tx, key)? {
                                continue;
                            }
                            if let Some(m) = &change.message {
                                search::unindex(tx, queue, key)?;
                                search::index(tx, queue, key, m, Some(&r.ex))?;
                            }
                        }
                    }
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Indexes the kept message `key` (not yet indexed) under its current
/// text: as last edited, if an edit came first; not at all, and erased, if
/// it is redacted.
pub(super) fn index_message(
    tx: &Transaction<'_>,
    queue: &mut IndexQueue,
    key: Key,
    m: &Message,
    arrival: Arrival,
) -> Result<(), Error> {
    // Just minted, no edit or redaction can name it yet.
    if arrival == Arrival::Stored {
        let e = entity(m.topic, &m.id);
        if super::register::<Redaction>(tx, &e, REDACTED)?.is_some() {
            return erase(tx, queue, &e);
        }
        if let Some(r) = super::register::<Revision>(tx, &e, EDIT)? {
            return search::index(tx, queue, key, m, Some(&r.ex));
        }
    }
    search::index(tx, queue, key, m, None)
}

/// The stored copies (key, change) of message `id` of `topic`: `events`
/// rows by the indexed message id, and this node's block entry, unless
/// retention has pruned it.
fn message_rows(tx: &Transaction<'_>, topic: Uuid, id: &str) -> Result<Vec<(Key, Change)>, Error> {
    let mut rows: Vec<(Key, Change)> = bodies(
        tx,
        "SELECT rowid, body FROM events
         WHERE topic = ?1 AND message_id = ?2 AND kind = 'message'",
        params![topic.to_string(), id],
    )?
    .into_iter()
    .map(|(rowid, c)| (blocks::key(Place::Row(rowid)), c))
    .collect();
    if let Some(found) = blocks::live_id(tx, topic, id, blocks::own)? {
        rows.push((found.key, blocks::read_change(&*blocks::log()?, &found)?));
    }
    rows.retain(|(_, c)| c.message.as_ref().is_some_and(|m| m.id == id));
    Ok(rows)
}

/// The ids of `topic`'s messages with edited text (their `edit` register
/// not erased): few, and found by the registers' key.
pub(super) fn edited_ids(tx: &rusqlite::Connection, topic: Uuid) -> Result<Vec<String>, Error> {
    // Entities `message:<topic>/<id>`: from the prefix to the next
    // character after `/`.
    let prefix = format!("message:{topic}/");
    let end = format!("message:{topic}0");
    let mut stmt = tx.prepare_cached(
        "SELECT entity FROM registers WHERE entity > ?1 AND entity < ?2
         AND field = 'edit' AND value != 'null'",
    )?;
    let rows = stmt.query_map(params![prefix, end], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for row in rows {
        if let Some(id) = row?.strip_prefix(&prefix) {
            out.push(id.to_owned());
        }
    }
    Ok(out)
}

/// Removes every stored copy of a redacted message's text: the message's
/// event keeps its envelope with an empty `ex`, its edits' events and its
/// `edit` register keep their clocks (so later writes still order) with
/// null values; the search index forgets it.
fn erase(tx: &Transaction<'_>, queue: &mut IndexQueue, entity: &str) -> Result<(), Error> {
    let Some((topic, id)) = parse_entity(entity) else {
        return Ok(());
    };
    for (key, mut change) in message_rows(tx, topic, id)? {
        // One behind the search pass has no entry to remove.
        if !search::behind(tx, key)? {
            search::unindex(tx, queue, key)?;
        }
        if let Some(m) = change.message.as_mut().filter(|m| !m.ex.is_empty()) {
            m.ex = ExJson::empty();
            store_body(tx, key, &change)?;
        }
    }
    erase_edits(tx, entity)
}

/// Nulls the text edits left of a message (`entity`): its `edit` register
/// and its edits' events, whose clocks stay so that later writes still
/// order. A redaction does it, and so does retention for a message it
/// drops: an edited message's latest text must not outlive the message.
pub(super) fn erase_edits(tx: &rusqlite::Connection, entity: &str) -> Result<(), Error> {
    tx.prepare_cached("UPDATE registers SET value = 'null' WHERE entity = ?1 AND field = ?2")?
        .execute(params![entity, EDIT])?;
    // The edits' events (a partial index holds just these).
    let quoted = serde_json::to_string(entity).map_err(|e| Error::Corrupt(e.to_string()))?;
    let rows = bodies(
        tx,
        "SELECT rowid, body FROM events WHERE kind = 'message.edit' AND instr(body, ?1) > 0",
        params![quoted],
    )?;
    for (rowid, mut change) in rows {
        let mut changed = false;
        for w in change.writes.iter_mut() {
            if w.entity == entity && !w.value.is_null() {
                w.value = Value::Null;
                changed = true;
            }
        }
        if changed {
            store_body(tx, blocks::key(Place::Row(rowid)), &change)?;
        }
    }
    Ok(())
}

/// Events that `sql` selects as `(rowid, body)`, decoded.
fn bodies(
    tx: &rusqlite::Connection,
    sql: &str,
    args: impl rusqlite::Params,
) -> Result<Vec<(i64, Change)>, Error> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
    let mut out = Vec::new();
    for row in rows {
        let (rowid, body) = row?;
        let change = serde_json::from_str(&body).map_err(|e| Error::Corrupt(e.to_string()))?;
        out.push((rowid, change));
    }
    Ok(out)
}

/// Writes a message's redacted body back: an `events` row's column, or
/// this node's record in the message log, rewritten in place at its
/// length and synced.
fn store_body(tx: &rusqlite::Connection, key: Key, change: &Change) -> Result<(), Error> {
    match blocks::place(key) {
        Place::Row(rowid) => {
            let body = serde_json::to_string(change).map_err(|e| Error::Corrupt(e.to_string()))?;
            tx.prepare_cached("UPDATE events SET body = ?1 WHERE rowid = ?2")?
                .execute(params![body, rowid])?;
        }
        Place::Block { .. } => {
            let Some(found) = blocks::find_key(tx, key)? else {
                return Ok(());
            };
            let log = blocks::log()?;
            let stored = log.read(found.at)?;
            let blank = match super::record::blank_ex(&stored.body) {
                Some(blank) => blank,
                // Another layout (the index reads it too): the change as
                // JSON, padded with spaces to the record's length.
                None => {
                    let mut body =
                        serde_json::to_string(change).map_err(|e| Error::Corrupt(e.to_string()))?;
                    let stored = stored.body.len();
                    let Some(padding) = stored.checked_sub(body.len()) else {
                        return Err(Error::Corrupt(format!(
                            "a redacted message of {} bytes does not fit its record of {stored}",
                            body.len(),
                        )));
                    };
                    body.extend(std::iter::repeat_n(' ', padding));
                    body.into_bytes()
                }
            };
            // Made once the transaction commits (a redaction that fails
            // erases nothing), and again at open if a crash tore it.
            blocks::journal_rewrite(tx, &found, &blank)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(topic: Uuid, id: &str) -> Change {
        Change::message(Message {
            topic,
            id: id.to_owned(),
            ts: 0,
            sender: Uuid::nil(),
            ex: ExJson::from_map(&Map::from_iter([(
                "body".to_owned(),
                Value::from("secret"),
            )]))
            .unwrap(),
        })
    }

    fn edit(topic: Uuid, id: &str, text: &str, ts: i64) -> Change {
        let revision = Revision {
            ex: Map::from_iter([("body".to_owned(), Value::from(text))]),
            ts,
            by: Uuid::nil(),
            n: 1,
        };
        let mut c = Change::new(KIND_EDIT);
        c.writes.push(write(topic, id, EDIT, &revision).unwrap());
        c
    }

    fn redact(topic: Uuid, id: &str) -> Change {
        let mut c = Change::new(KIND_REDACT);
        let r = Redaction {
            ts: 9,
            by: Uuid::nil(),
        };
        c.writes.push(write(topic, id, REDACTED, &r).unwrap());
        c
    }

    /// Records and applies an event of `origin` (`node/incarnation`) as
    /// one from a peer is.
    fn deliver(db: &mut Db, origin: &str, seq: u64, hlc: u64, change: &Change) {
        let (node, incarnation) = origin.split_once('/').unwrap();
        let event = Event {
            node: node.to_owned(),
            incarnation: incarnation.to_owned(),
            seq,
            hlc,
            change: change.clone(),
        };
        let tx = db.conn.transaction().unwrap();
        let rowid = log::insert(&tx, &event).unwrap();
        let mut index = crate::store::search::IndexQueue::default();
        log::apply(&tx, &mut index, rowid, origin, hlc, change).unwrap();
        index.flush(&tx).unwrap();
        tx.commit().unwrap();
    }

    /// Every event body and register value, as text.
    fn stored(db: &Db) -> String {
        let mut out = String::new();
        for e in db.events().unwrap() {
            out.push_str(&serde_json::to_string(&e.change).unwrap());
        }
        let mut stmt = db.conn.prepare("SELECT value FROM registers").unwrap();
        for v in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
            out.push_str(&v.unwrap());
        }
        out
    }

    fn seen(db: &Db, topic: Uuid, id: &str) -> Map<String, Value> {
        let mut m = vec![message(topic, id).message.unwrap()];
        db.current_text(&mut m).unwrap();
        serde_json::from_str(m.remove(0).ex.get()).unwrap()
    }

    /// Retention drops an edited message with the text its edits left:
    /// nothing of it outlives the message. A message of another node with
    /// the same clock as the one dropped by count is kept.
    #[test]
    fn retention_takes_an_edited_messages_text_with_it() {
        let t = Uuid::now_v7();
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        deliver(&mut db, "a/1", 1, 10 << 16, &message(t, "m1"));
        deliver(
            &mut db,
            "a/1",
            2,
            11 << 16,
            &edit(t, "m1", "edited fix", 100),
        );
        deliver(&mut db, "b/1", 1, 20 << 16, &message(t, "m2"));
        deliver(&mut db, "c/1", 1, 20 << 16, &message(t, "m3"));
        // Keep one: m1 and m2 go (m2 sorts before m3 at the same clock).
        assert_eq!(db.prune_history(t, 0, i64::MAX / 2, 1).unwrap(), 2);
        let text = stored(&db);
        assert!(!text.contains("fix"), "{text}");
        let page = db.history(t, None, None, 10).unwrap();
        let ids: Vec<_> = page.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m3"]);
    }

    #[test]
    fn an_edit_shows_and_a_redaction_erases_in_any_order() {
        let t = Uuid::now_v7();
        let events = [
            ("a/1", 1u64, message(t, "m1")),
            ("a/1", 2, edit(t, "m1", "first fix", 100)),
            ("b/1", 3, edit(t, "m1", "second fix", 200)),
            ("a/1", 4, redact(t, "m1")),
        ];
        // In order, step by step: the edit shows, the later edit wins.
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        for (n, (origin, hlc, change)) in events.iter().enumerate() {
            deliver(&mut db, origin, n as u64 + 1, *hlc, change);
            let ex = seen(&db, t, "m1");
            match n {
                0 => assert_eq!(ex["body"], "secret"),
                1 => assert_eq!(
                    (&ex["body"], &ex["edited"]),
                    (&"first fix".into(), &100.into())
                ),
                2 => assert_eq!(ex["body"], "second fix"),
                _ => assert_eq!(Value::Object(ex), serde_json::json!({"redacted": true})),
            }
        }
        let text = stored(&db);
        assert!(!text.contains("secret") && !text.contains("fix"), "{text}");
        assert!(db.redaction(t, "m1").unwrap().is_some());

        // Redaction first, message and edits after (as a mesh may deliver
        // them): the same end, nothing of the text kept.
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        for (n, i) in [3usize, 2, 0, 1].into_iter().enumerate() {
            let (origin, hlc, change) = &events[i];
            deliver(&mut db, origin, n as u64 + 1, *hlc, change);
        }
        assert_eq!(
            Value::Object(seen(&db, t, "m1")),
            serde_json::json!({"redacted": true})
        );
        let text = stored(&db);
        assert!(!text.contains("secret") && !text.contains("fix"), "{text}");
    }

    #[test]
    fn marks_a_sender_wrote_are_not_the_servers() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "n1").unwrap();
        let mut m = vec![Message {
            topic: Uuid::nil(),
            id: "x".into(),
            ts: 0,
            sender: Uuid::nil(),
            ex: ExJson::from_map(&Map::from_iter([
                ("edited".to_owned(), Value::from(1)),
                ("redacted".to_owned(), Value::Bool(true)),
                ("body".to_owned(), Value::from("hi")),
            ]))
            .unwrap(),
        }];
        db.current_text(&mut m).unwrap();
        let ex: Value = serde_json::from_str(m.remove(0).ex.get()).unwrap();
        assert_eq!(ex, serde_json::json!({"body": "hi"}));
    }

    /// The same marks with their keys spelled with escapes, which a sender
    /// may do (its text is kept as sent): every JSON reader takes
    /// `"\u0065dited"` for `edited`, so history takes it out too.
    #[test]
    fn escaped_marks_a_sender_wrote_are_not_the_servers() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "n1").unwrap();
        // The text history shows for a message kept as `raw`.
        let shown = |raw: &str| {
            let mut m = vec![Message {
                topic: Uuid::nil(),
                id: "x".into(),
                ts: 0,
                sender: Uuid::nil(),
                ex: ExJson::from_text(raw.to_owned()).unwrap(),
            }];
            db.current_text(&mut m).unwrap();
            m.remove(0).ex.get().to_owned()
        };
        for raw in [
            r#"{"\u0065dited":1,"body":"hi"}"#,
            r#"{"body":"hi","re\u0064acted":true}"#,
        ] {
            let ex: Value = serde_json::from_str(&shown(raw)).unwrap();
            assert_eq!(ex, serde_json::json!({"body": "hi"}), "{raw}");
        }
        // Escapes that spell no mark leave the text as it was sent.
        let raw = r#"{"body":"caf\u00e9","n":18446744073709551617}"#;
        assert_eq!(shown(raw), raw);
    }
}
