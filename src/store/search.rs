//! Full-text search over kept messages: an FTS5 index (contentless, so the
//! text is stored once, in the log) whose rows are the message events'
//! rowids, negated: FTS5 walks a doclist in ascending order page by page,
//! but loads it whole to walk it backwards, so newest first must be
//! ascending for a common word to cost a page and not the whole list.
//!
//! The apply path keeps it current: a kept message is indexed in the
//! transaction that applies it (unless its topic's format is `binary`, or
//! it is this node's and goes behind, as below), an
//! edit replaces its text, a redaction removes it, and a trigger drops the
//! row of any message event that retention deletes. A transaction's rows
//! are queued and written at its end, newest first ([`IndexQueue`]).
//!
//! The rowids tie the index to the events table, which has no INTEGER
//! PRIMARY KEY: a VACUUM may renumber it, so the store never runs one.
//!
//! **Behind the message log.** This node's kept messages, which the
//! message log's index writes as events of the node's message origin
//! (`message_index`), are not indexed for search in that transaction: a
//! pass ([`catch_up`]) writes their entries later, in runs, when the store
//! thread has nothing else to do, or at once when a search waits for it.
//! Tokenizing a message costs more than a whole plain send (about 2 µs of
//! the index's 7; bench/README.md, twenty-first round), so at the message
//! rate of a burst it would bound how fast kept messages are taken. The
//! `search_behind` table holds how far the pass has come (the origin's
//! seq); a row past it has no entry, so an edit, a redaction or retention
//! leaves it to the pass, which reads the message's current text then.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::log::Origin;
use super::{Db, Error};
use crate::change::{Change, Message};

/// What to look for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    /// Words and phrases, all of which must occur (each matched as a phrase
    /// of one or more words).
    pub terms: Vec<String>,
    /// Topics the asker may search: a message elsewhere is never returned.
    pub topics: HashSet<Uuid>,
    /// Only this topic, when given (it must also be in `topics`).
    pub topic: Option<Uuid>,
    /// Only messages from this account.
    pub sender: Option<Uuid>,
    /// Only messages sent at or after this Unix ms.
    pub since_ms: Option<i64>,
    /// Only messages sent before this Unix ms.
    pub until_ms: Option<i64>,
    /// Continue below this position (a previous page's `cursor`).
    pub cursor: Option<i64>,
    /// Most results.
    pub limit: usize,
    /// Most index matches examined for one page.
    pub scan: usize,
}

/// A page of results, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Found {
    /// The messages, `ts` filled in, `ex` as stored (not yet edited).
    pub messages: Vec<Message>,
    /// Each message's position: a cursor that goes on after it.
    pub positions: Vec<i64>,
    /// Where the next page starts, when there may be more.
    pub cursor: Option<i64>,
}

/// A string as an FTS5 string literal (a phrase).
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// The FTS5 expression: every term, as a phrase. Topic and sender are
/// filtered while reading the matches, not in the index: a topic as large
/// as the index would cost a walk of its whole doclist per query, and a
/// column filter makes every term read its positions.
fn expression(q: &Query) -> String {
    let parts: Vec<String> = q.terms.iter().map(|t| quoted(t)).collect();
    parts.join(" AND ")
}

/// The searchable text of a message: its `ex`'s top-level strings.
fn text(ex: &Map<String, Value>) -> String {
    let strings: Vec<&str> = ex.values().filter_map(Value::as_str).collect();
    strings.join("\n")
}

/// [`text`] of a stored `ex` (JSON text), read in one pass that keeps only
/// the top-level strings: nothing else is built, and a string without
/// escapes is not copied until it is joined. As [`Map`] reads an object, a
/// key met again keeps its first place and takes its last value.
fn stored_text(ex: &str) -> Result<String, serde_json::Error> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
    use std::borrow::Cow;
    use std::fmt;

    /// A string, borrowed from the text when it has no escapes.
    struct Text<'a>(Cow<'a, str>);
    /// A string, or `None` for any other value (skipped, not built).
    struct MaybeText<'a>(Option<Cow<'a, str>>);
    struct TextVisitor;
    struct AnyVisitor;
    struct Strings;

    impl<'de> Visitor<'de> for TextVisitor {
        type Value = Text<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Text(Cow::Borrowed(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Text(Cow::Owned(v.to_owned())))
        }
    }
    impl<'de> serde::Deserialize<'de> for Text<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_str(TextVisitor)
        }
    }
    impl<'de> Visitor<'de> for AnyVisitor {
        type Value = MaybeText<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(MaybeText(Some(Cow::Borrowed(v))))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok(MaybeText(Some(Cow::Owned(v.to_owned()))))
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(MaybeText(None))
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(MaybeText(None))
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(MaybeText(None))
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(MaybeText(None))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(MaybeText(None))
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_seq(seq).map(|_| MaybeText(None))
        }
        fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
            IgnoredAny.visit_map(map).map(|_| MaybeText(None))
        }
    }
    impl<'de> serde::Deserialize<'de> for MaybeText<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_any(AnyVisitor)
        }
    }
    impl<'de> Visitor<'de> for Strings {
        type Value = Vec<(Cow<'de, str>, Option<Cow<'de, str>>)>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut members: Self::Value = Vec::new();
            while let Some(Text(key)) = map.next_key::<Text<'de>>()? {
                let MaybeText(value) = map.next_value::<MaybeText<'de>>()?;
                match members.iter_mut().find(|(k, _)| *k == key) {
                    Some(member) => member.1 = value,
                    None => members.push((key, value)),
                }
            }
            Ok(members)
        }
    }

    let mut de = serde_json::Deserializer::from_str(ex);
    let members = de.deserialize_map(Strings)?;
    de.end()?;
    let strings: Vec<&str> = members.iter().filter_map(|(_, v)| v.as_deref()).collect();
    Ok(strings.join("\n"))
}

/// Starts search behind the index for `messages` (this node's message
/// origin), if it was not started: from the origin's last seq the store
/// holds, all of which were indexed for search as they came.
pub(super) fn start_behind(conn: &Connection, messages: &Origin) -> Result<(), Error> {
    let seq = super::log::seen_seq(conn, &messages.node, &messages.incarnation)?;
    conn.prepare_cached(
        "INSERT INTO search_behind (origin, incarnation, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (origin, incarnation) DO NOTHING",
    )?
    .execute(params![
        messages.node,
        messages.incarnation,
        i64::try_from(seq).unwrap_or(i64::MAX)
    ])?;
    Ok(())
}

/// Whether the message event at `rowid` is behind the pass (it has no
/// search entry yet, and the pass will index its text as it is then).
pub(super) fn behind(tx: &Transaction<'_>, rowid: i64) -> Result<bool, Error> {
    Ok(tx
        .prepare_cached(ROW_BEHIND)?
        .query_row(params![rowid], |r| r.get(0))?)
}

// The pass's queries join `search_behind` (a row per origin it follows)
// and `events` with CROSS JOIN, which keeps the order written: left to
// itself, SQLite's planner walked the events' primary key from its start
// and looked each entry up in `search_behind`, a scan of every event each
// run (70 ms at 330,000 events; the pass crawled, and an idle store
// scanned its whole history for each group indexed).

/// Whether the message event at `rowid` is behind the pass.
const ROW_BEHIND: &str = "SELECT EXISTS (SELECT 1 FROM events e CROSS JOIN search_behind b
    ON b.origin = e.origin AND b.incarnation = e.incarnation
    WHERE e.rowid = ?1 AND e.seq > b.seq)";

/// Whether any message is behind the pass.
const ANY_BEHIND: &str = "SELECT EXISTS (SELECT 1 FROM search_behind b CROSS JOIN events e
    ON e.origin = b.origin AND e.incarnation = b.incarnation AND e.seq > b.seq)";

/// The messages behind the pass, oldest first, at most `?1`.
const NEXT_BEHIND: &str = "SELECT e.rowid, b.origin, b.incarnation, e.seq, e.body
    FROM search_behind b CROSS JOIN events e
        ON e.origin = b.origin AND e.incarnation = b.incarnation AND e.seq > b.seq
    ORDER BY b.origin, b.incarnation, e.seq LIMIT ?1";

/// How far a run of the pass came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passed {
    /// Messages it indexed (or found redacted, or `binary`).
    pub messages: usize,
    /// The last seq it passed, if it passed any.
    pub through: Option<u64>,
    /// Whether it reached the end: nothing is behind any more.
    pub done: bool,
}

/// Indexes up to `max` messages behind the pass, oldest first, each under
/// its current text (as edited; not at all if redacted, or if its topic is
/// `binary` now), and moves the pass past them. Rows go to `queue`, which
/// the caller flushes before it commits.
pub(super) fn catch_up(
    tx: &Transaction<'_>,
    queue: &mut IndexQueue,
    max: usize,
) -> Result<Passed, Error> {
    let mut rows = Vec::new();
    {
        let mut stmt = tx.prepare_cached(NEXT_BEHIND)?;
        let found = stmt.query_map(params![i64::try_from(max).unwrap_or(i64::MAX)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        for row in found {
            rows.push(row?);
        }
    }
    let done = rows.len() < max;
    // Where the pass stands for each origin once past these rows.
    let mut moved: HashMap<(&str, &str), i64> = HashMap::new();
    for (_, origin, incarnation, seq, _) in &rows {
        let at = moved.entry((origin, incarnation)).or_default();
        *at = (*at).max(*seq);
    }
    for (rowid, _, _, seq, body) in &rows {
        let change = super::log::decode_message(body)
            .map(Ok)
            .unwrap_or_else(|| serde_json::from_str::<Change>(body));
        match change {
            Ok(change) => {
                if let Some(m) = &change.message {
                    super::edit::index_message(tx, queue, *rowid, m, super::log::Arrival::Stored)?;
                }
            }
            // Passed over, not stopped at: a run that failed on it would
            // fail again at every tick, and nothing after it be searched.
            Err(e) => tracing::error!(seq, error = %e,
                "search: a kept message's stored text does not decode; it is left out of search"),
        }
    }
    let mut update = tx.prepare_cached(
        "UPDATE search_behind SET seq = ?3 WHERE origin = ?1 AND incarnation = ?2",
    )?;
    for ((origin, incarnation), seq) in moved.drain() {
        update.execute(params![origin, incarnation, seq])?;
    }
    let through = rows.iter().map(|r| u64::try_from(r.3).unwrap_or(0)).max();
    Ok(Passed {
        messages: rows.len(),
        through,
        done,
    })
}

/// Whether a topic's messages are `binary` (never inspected, never indexed).
fn is_binary(tx: &Transaction<'_>, topic: Uuid) -> Result<bool, Error> {
    let format: Option<String> = tx
        .prepare_cached("SELECT value FROM registers WHERE entity = ?1 AND field = 'meta:format'")?
        .query_row(params![format!("topic:{topic}")], |r| r.get(0))
        .optional()?;
    Ok(format
        .and_then(|f| serde_json::from_str::<String>(&f).ok())
        .is_some_and(|f| f == "binary" || f.starts_with("binary:")))
}

/// Index rows written in one transaction, held until it ends and then
/// inserted newest event first (ascending FTS rowid). FTS5 writes its
/// in-memory rows out whenever a rowid is not above the last one written:
/// inserted as the events come (descending FTS rowids), every message
/// became a segment of its own, to be merged again and again; that was most
/// of a kept message's cost in a group commit.
#[derive(Debug, Default)]
pub struct IndexQueue {
    /// Event rowid to the text to index.
    rows: BTreeMap<i64, String>,
    /// Whether each topic seen is `binary`, read once per transaction
    /// until a change writes state (see [`IndexQueue::forget_formats`]).
    formats: HashMap<Uuid, bool>,
}

impl IndexQueue {
    /// Forgets the topics' formats read so far: a change that writes
    /// state may have changed one.
    pub(super) fn forget_formats(&mut self) {
        self.formats.clear();
    }

    /// Writes every queued row.
    pub(super) fn flush(&mut self, tx: &Transaction<'_>) -> Result<(), Error> {
        let mut stmt = tx.prepare_cached("INSERT INTO search (rowid, text) VALUES (?1, ?2)")?;
        // Newest event first: the FTS rowids (negated) ascend.
        while let Some((rowid, text)) = self.rows.pop_last() {
            stmt.execute(params![rowid.saturating_neg(), text])?;
        }
        Ok(())
    }
}

/// Queues the message event at `rowid` for indexing with text from `ex`,
/// or from the message's own `ex` when `None` (a row not yet indexed: see
/// [`unindex`]).
pub(super) fn index(
    tx: &Transaction<'_>,
    queue: &mut IndexQueue,
    rowid: i64,
    message: &Message,
    ex: Option<&Map<String, Value>>,
) -> Result<(), Error> {
    let binary = match queue.formats.get(&message.topic) {
        Some(&binary) => binary,
        None => {
            let binary = is_binary(tx, message.topic)?;
            queue.formats.insert(message.topic, binary);
            binary
        }
    };
    if !binary {
        let text = match ex {
            Some(ex) => text(ex),
            None => stored_text(message.ex.get()).map_err(|e| Error::Corrupt(e.to_string()))?,
        };
        queue.rows.insert(rowid, text);
    }
    Ok(())
}

/// Removes the message event at `rowid` from the index (or from the rows
/// still queued for it).
pub(super) fn unindex(
    tx: &Transaction<'_>,
    queue: &mut IndexQueue,
    rowid: i64,
) -> Result<(), Error> {
    if queue.rows.remove(&rowid).is_none() {
        tx.prepare_cached("DELETE FROM search WHERE rowid = ?1")?
            .execute(params![rowid.saturating_neg()])?;
    }
    Ok(())
}

impl Db {
    /// Runs the search pass over up to `max` messages behind it ([`catch_up`]),
    /// in a transaction that commits without a WAL sync: a crash takes the
    /// pass back with it, and it runs again.
    pub fn search_behind(&mut self, max: usize) -> Result<Passed, Error> {
        // Read first: an idle store commits nothing.
        let any: bool = self
            .conn
            .prepare_cached(ANY_BEHIND)?
            .query_row([], |r| r.get(0))?;
        if !any {
            return Ok(Passed {
                messages: 0,
                through: None,
                done: true,
            });
        }
        self.unsynced_burst(|db| {
            db.write(|tx, _| {
                let mut queue = IndexQueue::default();
                let passed = catch_up(tx, &mut queue, max)?;
                queue.flush(tx)?;
                Ok(passed)
            })
        })?
    }

    /// Kept messages matching `q`, newest first (in the order this store
    /// took them in). At most `q.scan` matches are examined: a page may
    /// hold fewer than `q.limit` messages and still have a cursor.
    pub fn search(&self, q: &Query) -> Result<Found, Error> {
        if q.terms.is_empty() || q.limit == 0 {
            return Ok(Found {
                messages: Vec::new(),
                positions: Vec::new(),
                cursor: None,
            });
        }
        // The time window is applied while reading the matches, as topic
        // and sender are: in the query it would not count toward `scan`,
        // and a window that excludes every match would walk them all.
        let mut stmt = self.conn.prepare_cached(
            "SELECT -s.rowid, e.topic, e.hlc, e.body FROM search s JOIN events e ON e.rowid = -s.rowid
             WHERE search MATCH ?1 AND s.rowid > ?2
             ORDER BY s.rowid ASC LIMIT ?3",
        )?;
        let since = q.since_ms.map_or(i64::MIN, |ms| ms.saturating_mul(1 << 16));
        let until = q.until_ms.map_or(i64::MAX, |ms| ms.saturating_mul(1 << 16));
        let rows = stmt.query_map(
            params![
                expression(q),
                q.cursor.map_or(i64::MIN, i64::saturating_neg),
                i64::try_from(q.scan).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, Option<String>>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                ))
            },
        )?;
        let (mut messages, mut positions) = (Vec::new(), Vec::new());
        let (mut examined, mut last) = (0, None);
        for row in rows {
            let (rowid, topic, hlc, body) = row?;
            examined += 1;
            last = Some(rowid);
            let readable = topic
                .and_then(|t| Uuid::parse_str(&t).ok())
                .is_some_and(|t| q.topics.contains(&t) && q.topic.is_none_or(|only| only == t));
            if !readable || !(since..until).contains(&hlc) {
                continue;
            }
            let change: Change =
                serde_json::from_str(&body).map_err(|e| Error::Corrupt(e.to_string()))?;
            let wanted = |m: &Message| q.sender.is_none_or(|s| s == m.sender);
            if let Some(mut m) = change.message.filter(wanted) {
                m.ts = hlc >> 16;
                messages.push(m);
                positions.push(rowid);
                if messages.len() == q.limit {
                    break;
                }
            }
        }
        // More may follow when the page filled up or the scan ran out.
        let cursor = (messages.len() == q.limit || examined == q.scan)
            .then_some(last)
            .flatten();
        Ok(Found {
            messages,
            positions,
            cursor,
        })
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::store::log;
    use proptest::prelude::*;

    /// A JSON value as text: strings with and without escapes, and the
    /// other kinds, nested.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            "[a-z ]{0,8}".prop_map(|s| format!("\"{s}\"")),
            Just(r#""caf\u00e9 \"q\"\n""#.to_owned()),
            Just(r#""\ud83d\ude00 ok""#.to_owned()),
            Just("\"naïve\"".to_owned()),
            Just("12".to_owned()),
            Just("-1.5e3".to_owned()),
            Just("true".to_owned()),
            Just("null".to_owned()),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec(("[ab]", inner), 0..4).prop_map(|m| {
                    let members: Vec<String> = m
                        .into_iter()
                        .map(|(k, v)| format!("\"{k}\": {v}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    /// An object whose few keys repeat, some with escapes.
    fn object() -> impl Strategy<Value = String> {
        let key = prop_oneof![
            Just("a"),
            Just("b"),
            Just("c"),
            Just("\\u0061"),
            Just("d\\n")
        ];
        prop::collection::vec((key, value()), 0..6).prop_map(|m| {
            let members: Vec<String> = m.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!(" {{ {} }} ", members.join(" , "))
        })
    }

    proptest! {
        #[test]
        fn stored_text_is_the_text_of_the_parsed_map(ex in object()) {
            let map: Map<String, Value> = serde_json::from_str(&ex).unwrap();
            prop_assert_eq!(stored_text(&ex).unwrap(), text(&map));
        }
    }

    #[test]
    fn stored_text_refuses_what_the_map_refuses() {
        for bad in [
            "[1]",
            "\"s\"",
            "{\"a\":1} x",
            "{\"a\":}",
            "{",
            "",
            "{\"a\":\"\\x\"}",
        ] {
            assert!(
                serde_json::from_str::<Map<String, Value>>(bad).is_err(),
                "{bad}"
            );
            assert!(stored_text(bad).is_err(), "{bad}");
        }
        assert_eq!(
            stored_text(r#"{"a":"x","n":{"a":"inner"},"a":"y","b":"z"}"#).unwrap(),
            "y\nz"
        );
    }

    /// A message `id` of `topic` whose `ex` is `{"body": body}`.
    fn message(topic: Uuid, sender: Uuid, id: &str, body: &str) -> Change {
        Change::message(Message {
            topic,
            id: id.to_owned(),
            ts: 0,
            sender,
            ex: crate::change::ExJson::from_map(&Map::from_iter([(
                "body".to_owned(),
                Value::from(body),
            )]))
            .unwrap(),
        })
    }

    fn send(db: &mut Db, topic: Uuid, sender: Uuid, id: &str, body: &str) {
        let m = message(topic, sender, id, body);
        db.write(|tx, origin| log::append(tx, origin, m)).unwrap();
    }

    /// A query of `terms` over `topics`, ten results a page.
    pub(crate) fn query(terms: &[&str], topics: &[Uuid]) -> Query {
        Query {
            terms: terms.iter().map(|t| (*t).to_owned()).collect(),
            topics: topics.iter().copied().collect(),
            topic: None,
            sender: None,
            since_ms: None,
            until_ms: None,
            cursor: None,
            limit: 10,
            scan: 1000,
        }
    }

    fn ids(f: &Found) -> Vec<&str> {
        f.messages.iter().map(|m| m.id.as_str()).collect()
    }

    /// The ids of `t`'s messages with `word`, newest first.
    fn found(db: &Db, word: &str, t: Uuid) -> Vec<String> {
        let page = db.search(&query(&[word], &[t])).unwrap();
        page.messages.into_iter().map(|m| m.id).collect()
    }

    /// A new store, a topic and a sender.
    fn store() -> (tempfile::TempDir, Db, Uuid, Uuid) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "n1").unwrap();
        (dir, db, Uuid::now_v7(), Uuid::now_v7())
    }

    /// Kept messages `(id, body)` of `topic` as the message log's index
    /// writes them: behind the search pass.
    fn keep(db: &mut Db, topic: Uuid, sender: Uuid, messages: &[(&str, &str)]) {
        use crate::store::message_log::{Entry, SyncedRecord};
        use crate::store::segment::{HEADER_LEN, Position};
        let mut last = db.message_floor().unwrap();
        let records: Vec<(Entry, Vec<u8>)> = messages
            .iter()
            .map(|(id, body)| {
                let now = u64::try_from(crate::proto::id::now_ms()).unwrap();
                last = Entry {
                    seq: last.seq + 1,
                    hlc: log::next_hlc(last.hlc, now),
                };
                (last, log::text_message(topic, sender, id, body))
            })
            .collect();
        let at = Position {
            segment: 1,
            offset: HEADER_LEN,
        };
        let synced = records.iter().map(|(entry, body)| SyncedRecord {
            entry: *entry,
            at,
            body,
        });
        db.index_messages(synced, at).unwrap();
    }

    /// Kept messages are found once the pass has run over them, in runs of
    /// the size asked; a pass with nothing behind commits nothing.
    #[test]
    fn kept_messages_are_found_once_the_pass_has_run() {
        let (_dir, mut db, t, dan) = store();
        keep(
            &mut db,
            t,
            dan,
            &[("m1", "brown fox"), ("m2", "brown dog"), ("m3", "lazy cat")],
        );
        assert!(found(&db, "brown", t).is_empty());
        let first = db.search_behind(2).unwrap();
        assert_eq!(
            first,
            Passed {
                messages: 2,
                through: Some(2),
                done: false
            }
        );
        assert_eq!(found(&db, "brown", t), ["m2", "m1"]);
        assert!(found(&db, "lazy", t).is_empty());
        let rest = db.search_behind(10).unwrap();
        assert_eq!((rest.messages, rest.through, rest.done), (1, Some(3), true));
        assert_eq!(found(&db, "lazy", t), ["m3"]);
        let commits = db.commits;
        let idle = db.search_behind(10).unwrap();
        assert_eq!((idle.messages, idle.through, idle.done), (0, None, true));
        assert_eq!(db.commits, commits, "nothing behind: no transaction");
    }

    /// An edit, a redaction and retention that reach messages still behind
    /// the pass leave their entries to it: it indexes the edited text, not
    /// the redacted one, and not the pruned message; nothing fails for the
    /// entries that were never written.
    #[test]
    fn edits_redactions_and_retention_behind_the_pass_are_left_to_it() {
        let (_dir, mut db, t, dan) = store();
        keep(
            &mut db,
            t,
            dan,
            &[
                ("m0", "brown zero"),
                ("m1", "brown one"),
                ("m2", "brown two"),
                ("m3", "brown three"),
            ],
        );
        let revision = crate::store::edit::Revision {
            ex: Map::from_iter([("body".to_owned(), Value::from("a lazy cat"))]),
            ts: 1,
            by: dan,
            n: 1,
        };
        db.edit_message(t, "m1", &revision).unwrap();
        let redaction = crate::store::edit::Redaction { ts: 2, by: dan };
        db.redact_message(t, "m2", &redaction).unwrap();
        assert_eq!(db.prune_history(t, 0, i64::MAX / 2, 3).unwrap(), 1);
        assert!(db.search_behind(100).unwrap().done);
        assert_eq!(found(&db, "brown", t), ["m3"]);
        assert_eq!(found(&db, "lazy", t), ["m1"]);
        assert!(found(&db, "two", t).is_empty());

        // Past the pass, as ever: an edit replaces the entry, a redaction
        // and retention remove it.
        db.edit_message(t, "m3", &revision).unwrap();
        assert!(found(&db, "brown", t).is_empty());
        assert_eq!(found(&db, "lazy", t), ["m3", "m1"]);
        db.redact_message(t, "m3", &redaction).unwrap();
        assert_eq!(found(&db, "lazy", t), ["m1"]);
        assert_eq!(db.prune_history(t, 0, i64::MAX / 2, 0).unwrap(), 3);
        assert!(found(&db, "lazy", t).is_empty());
    }

    /// The pass's queries look events up by their key, never scan them
    /// (each run used to walk every event: the pass crawled as the
    /// history grew).
    #[test]
    fn the_pass_never_scans_the_events() {
        let (_dir, mut db, t, dan) = store();
        let many: Vec<(String, String)> = (0..200)
            .map(|i| (format!("m{i}"), format!("word {i}")))
            .collect();
        let many: Vec<(&str, &str)> = many.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        keep(&mut db, t, dan, &many);
        for sql in [ROW_BEHIND, ANY_BEHIND, NEXT_BEHIND] {
            let mut plan = db
                .conn
                .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                .unwrap();
            let args = vec![0i64; plan.parameter_count()];
            let steps: Vec<String> = plan
                .query_map(rusqlite::params_from_iter(args), |r| r.get::<_, String>(3))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert!(
                steps.iter().all(|s| !s.starts_with("SCAN e")),
                "{sql}: {steps:?}"
            );
        }
    }

    /// A topic's format change catches the pass up first: messages kept
    /// before it are indexed by the format they came under, those after
    /// it by the new one.
    #[test]
    fn a_format_change_catches_the_pass_up_first() {
        let (_dir, mut db, t, dan) = store();
        keep(&mut db, t, dan, &[("before", "word before")]);
        let binary = Change::new("topic.meta").set(
            crate::change::Entity::Topic(t),
            crate::change::field::META_FORMAT,
            "binary",
        );
        db.append_all(vec![binary]).unwrap();
        keep(&mut db, t, dan, &[("after", "word after")]);
        assert!(db.search_behind(100).unwrap().done);
        assert_eq!(found(&db, "word", t), ["before"]);

        // An account's own `format` metadata is no topic's format: the
        // pass is left where it is.
        keep(&mut db, t, dan, &[("later", "word later")]);
        let account = Change::new("account.meta").set(
            crate::change::Entity::Account(dan),
            crate::change::field::META_FORMAT,
            "binary",
        );
        db.append_all(vec![account]).unwrap();
        assert_eq!(db.search_behind(100).unwrap().messages, 1, "still behind");
    }

    /// A stored message whose text does not decode (damage) is passed
    /// over: the pass goes on to the messages after it.
    #[test]
    fn the_pass_goes_past_a_message_that_does_not_decode() {
        let (_dir, mut db, t, dan) = store();
        keep(&mut db, t, dan, &[("m1", "brown one"), ("m2", "brown two")]);
        db.conn
            .execute(
                "UPDATE events SET body = '{\"kind\":\"message\"' WHERE message_id = 'm1'",
                [],
            )
            .unwrap();
        let passed = db.search_behind(10).unwrap();
        assert_eq!((passed.messages, passed.through), (2, Some(2)));
        assert_eq!(found(&db, "brown", t), ["m2"]);
    }

    /// The pass's place is kept across a restart, and a store that starts
    /// it anew starts at what it holds (indexed as it came, before the
    /// pass existed).
    #[test]
    fn the_pass_carries_on_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (t, dan) = (Uuid::now_v7(), Uuid::now_v7());
        {
            let mut db = Db::open(dir.path(), "n1").unwrap();
            keep(&mut db, t, dan, &[("m1", "brown one"), ("m2", "brown two")]);
            assert_eq!(db.search_behind(1).unwrap().through, Some(1));
        }
        let mut db = Db::open(dir.path(), "n1").unwrap();
        assert_eq!(found(&db, "brown", t), ["m1"]);
        let rest = db.search_behind(10).unwrap();
        assert_eq!((rest.messages, rest.through), (1, Some(2)));
        assert_eq!(found(&db, "brown", t), ["m2", "m1"]);

        keep(&mut db, t, dan, &[("m3", "brown three")]);
        db.conn.execute("DELETE FROM search_behind", []).unwrap();
        start_behind(&db.conn, &db.origin.messages()).unwrap();
        assert!(
            db.search_behind(10).unwrap().through.is_none(),
            "starts at m3"
        );
    }

    #[test]
    fn words_phrases_filters_and_pages() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let (t, other, hidden) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let (dan, bob) = (Uuid::now_v7(), Uuid::now_v7());
        send(&mut db, t, dan, "m1", "the quick brown fox");
        send(&mut db, t, bob, "m2", "a brown quick dog");
        send(&mut db, other, dan, "m3", "Quick, brown café");
        send(&mut db, hidden, dan, "m4", "quick brown secret");
        let all = [t, other];

        let both = db.search(&query(&["quick", "brown"], &all)).unwrap();
        assert_eq!(ids(&both), ["m3", "m2", "m1"]);
        assert_eq!(both.cursor, None);
        let phrase = db.search(&query(&["quick brown"], &all)).unwrap();
        assert_eq!(ids(&phrase), ["m3", "m1"]);
        let accents = db.search(&query(&["cafe"], &all)).unwrap();
        assert_eq!(ids(&accents), ["m3"]);
        // Quotes and operators in a term are only text.
        let odd = db.search(&query(&["\"quick\" OR NOT", "*"], &all)).unwrap();
        assert!(odd.messages.is_empty());

        let mut q = query(&["brown"], &all);
        q.topic = Some(t);
        assert_eq!(ids(&db.search(&q).unwrap()), ["m2", "m1"]);
        q.sender = Some(dan);
        assert_eq!(ids(&db.search(&q).unwrap()), ["m1"]);

        let mut q = query(&["brown"], &all);
        q.limit = 2;
        let first = db.search(&q).unwrap();
        assert_eq!(ids(&first), ["m3", "m2"]);
        q.cursor = first.cursor;
        let second = db.search(&q).unwrap();
        assert_eq!(ids(&second), ["m1"]);
        assert_eq!(second.cursor, None);

        // A scan that runs out still says where to go on.
        let mut q = query(&["brown"], &[t]);
        q.scan = 1;
        let page = db.search(&q).unwrap();
        assert!(page.messages.is_empty(), "m4 and m3 are not readable");
        assert!(page.cursor.is_some());

        // An edit is found by its new text only; a redaction by nothing.
        let revision = crate::store::edit::Revision {
            ex: Map::from_iter([("body".to_owned(), Value::from("a lazy cat"))]),
            ts: 1,
            by: bob,
            n: 1,
        };
        db.edit_message(t, "m2", &revision).unwrap();
        assert_eq!(ids(&db.search(&query(&["lazy"], &all)).unwrap()), ["m2"]);
        assert_eq!(
            ids(&db.search(&query(&["brown"], &all)).unwrap()),
            ["m3", "m1"]
        );
        let redaction = crate::store::edit::Redaction { ts: 2, by: dan };
        db.redact_message(other, "m3", &redaction).unwrap();
        assert_eq!(ids(&db.search(&query(&["brown"], &all)).unwrap()), ["m1"]);
        db.redact_message(t, "m2", &redaction).unwrap();
        assert!(
            db.search(&query(&["lazy"], &all))
                .unwrap()
                .messages
                .is_empty()
        );

        // Retention drops a message: the index forgets it too.
        send(&mut db, t, bob, "m5", "brown again");
        assert_eq!(db.prune_history(t, 0, i64::MAX / 2, 1).unwrap(), 2);
        let q = query(&["brown"], &all);
        assert_eq!(ids(&db.search(&q).unwrap()), ["m5"]);
    }

    /// A time filter bounds what a page returns, not what it examines:
    /// matches outside the window count toward `scan` like any other, so a
    /// window that excludes every match still costs one scan per page (and
    /// the page says where to go on), not a walk of the word's whole index.
    #[test]
    fn matches_outside_the_time_window_count_toward_the_scan() {
        let (_dir, mut db, t, dan) = store();
        for n in 0..3 {
            send(&mut db, t, dan, &format!("m{n}"), "brown");
        }
        let mut q = query(&["brown"], &[t]);
        q.until_ms = Some(0);
        q.scan = 1;
        let mut pages = 0;
        loop {
            let page = db.search(&q).unwrap();
            assert!(page.messages.is_empty());
            pages += 1;
            match page.cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
            assert!(pages <= 3, "each page examines one match");
        }
        assert_eq!(pages, 4, "three pages of one match each, then the end");

        // The window still selects: from the first message's time on.
        let since = db.search(&query(&["brown"], &[t])).unwrap().messages[2].ts;
        let mut q = query(&["brown"], &[t]);
        q.since_ms = Some(since);
        assert_eq!(ids(&db.search(&q).unwrap()), ["m2", "m1", "m0"]);
        q.since_ms = Some(since + 1_000_000);
        assert!(db.search(&q).unwrap().messages.is_empty());
    }

    /// One group commit: many messages, one edited and one redacted in the
    /// same transaction. Newest first as ever; the edit and the redaction
    /// hold within the batch; and the rows go in as one segment, not one
    /// per message (which every message's flush made before).
    #[test]
    fn one_group_commit_indexes_as_one_run() {
        let (_dir, mut db, t, dan) = store();
        let mut changes: Vec<Change> = (0..1000)
            .map(|i| message(t, dan, &format!("m{i}"), &format!("common unique{i}")))
            .collect();
        let revision = crate::store::edit::Revision {
            ex: Map::from_iter([("body".to_owned(), Value::from("common edited"))]),
            ts: 1,
            by: dan,
            n: 1,
        };
        let edit = crate::store::edit::edit_change(t, "m10", &revision).unwrap();
        let redaction = crate::store::edit::Redaction { ts: 2, by: dan };
        let redact = crate::store::edit::redact_change(t, "m20", &redaction).unwrap();
        changes.push(edit);
        changes.push(redact);
        let before = db.conn.total_changes();
        db.append_all(changes).unwrap();
        // Rows written, the index's own tables included: an event, its
        // index row and its document size per message, and a few for the
        // segment. A flush per message wrote over 8,000 here.
        let written = db.conn.total_changes() - before;
        assert!(written < 3 * 1000 + 100, "{written} rows written");

        let mut q = query(&["common"], &[t]);
        q.limit = 3;
        assert_eq!(ids(&db.search(&q).unwrap()), ["m999", "m998", "m997"]);
        assert_eq!(ids(&db.search(&query(&["edited"], &[t])).unwrap()), ["m10"]);
        assert!(
            db.search(&query(&["unique10"], &[t]))
                .unwrap()
                .messages
                .is_empty()
        );
        assert!(
            db.search(&query(&["unique20"], &[t]))
                .unwrap()
                .messages
                .is_empty()
        );
        assert_eq!(
            ids(&db.search(&query(&["unique30"], &[t])).unwrap()),
            ["m30"]
        );
        let mut all = query(&["common"], &[t]);
        all.limit = 2000;
        all.scan = 2000;
        assert_eq!(db.search(&all).unwrap().messages.len(), 999);
    }

    /// A topic's format is read once per group commit, and read again
    /// after a change in the group sets it: messages after the topic
    /// turned `binary` are not indexed, those before it are.
    #[test]
    fn a_format_set_within_a_group_commit_holds_from_there() {
        let (_dir, mut db, t, dan) = store();
        let binary =
            Change::new("topic.meta").set(crate::change::Entity::Topic(t), "meta:format", "binary");
        db.append_all(vec![
            message(t, dan, "before", "word before"),
            binary,
            message(t, dan, "after", "word after"),
        ])
        .unwrap();
        assert_eq!(
            ids(&db.search(&query(&["word"], &[t])).unwrap()),
            ["before"]
        );
    }
}
