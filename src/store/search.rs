//! Full-text search over kept messages: an FTS5 index (contentless, so the
//! text is stored once, in the log) whose rows are the kept messages,
//! newest first in ascending rowid: FTS5 walks a doclist in ascending
//! order page by page, but loads it whole to walk it backwards, so newest
//! first must be ascending for a common word to cost a page and not the
//! whole list.
//!
//! **Rowids.** A kept message is named by a [`blocks::Key`]. An `events`
//! row's key, its rowid negated, is its FTS rowid, as it has been since
//! the index was made (newer rows, lower rowids). A block entry's key
//! (`block << 16 | index`, positive) grows with the message's seq, so its
//! FTS rowid is the key subtracted from [`BLOCK_ROWIDS`]: below every
//! row's, and again lower for newer ones. A page so walks this node's
//! kept messages held in blocks newest first, then the messages held as
//! rows (peers', and this node's from before blocks) newest first.
//! [`fts_rowid`] and [`fts_key`] are the only places that know it; a
//! page's positions are FTS rowids negated (a row's is its rowid, as ever).
//!
//! The apply path keeps it current: a kept message is indexed in the
//! transaction that applies it (unless its topic's format is `binary`, or
//! it is this node's and goes behind, as below), an
//! edit replaces its text, a redaction removes it, and a trigger drops the
//! row of any message event that retention deletes (a block has no
//! trigger: retention calls [`unindex_block`] before it deletes one). A
//! transaction's rows are queued and written at its end, newest first
//! ([`IndexQueue`]).
//!
//! The rowids tie the index to the events table, which has no INTEGER
//! PRIMARY KEY: a VACUUM may renumber it, so the store never runs one.
//!
//! **Behind the message log.** This node's kept messages, which the
//! message log's index writes as entries of blocks (`blocks.rs`; a record
//! whose id is no UUID as an event of the node's message origin:
//! `message_index`), are not indexed for search in that transaction: a
//! pass ([`catch_up`]) writes their entries later, in runs, when the store
//! thread has nothing else to do, or at once when a search waits for it.
//! Tokenizing a message costs more than a whole plain send (about 2 µs of
//! the index's 7; bench/README.md, twenty-first round), so at the message
//! rate of a burst it would bound how fast kept messages are taken. The
//! `search_behind` table holds how far the pass has come (the origin's
//! seq); a message past it has no entry, so an edit, a redaction or
//! retention leaves it to the pass, which reads the message's current text
//! then (a block entry's from the message log's segment).

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::blocks::{self, Key, Place};
use super::log::Origin;
use super::message_index::MESSAGE_SUFFIX;
use super::segment;
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

/// FTS rowids below this one are block entries' ([`fts_rowid`]); a row's
/// is its key, at or above it.
const BLOCK_ROWIDS: i64 = -(1 << 62);

/// The FTS rowid of the kept message `key` (the module's doc, "Rowids"):
/// ascending, newest first. A block key is below 2^62 while blocks number
/// below 2^46.
pub(super) fn fts_rowid(key: Key) -> i64 {
    if key <= 0 {
        key
    } else {
        BLOCK_ROWIDS.saturating_sub(key)
    }
}

/// The key of the kept message at FTS rowid `rowid`: [`fts_rowid`] undone.
pub(super) fn fts_key(rowid: i64) -> Key {
    if rowid >= BLOCK_ROWIDS {
        rowid
    } else {
        BLOCK_ROWIDS - rowid
    }
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

/// Where the pass stands in the message origin, whose seqs block entries
/// carry.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Searched {
    node: String,
    incarnation: String,
    /// Every entry through this seq is indexed (or passed over).
    seq: u64,
}

/// [`Searched`], if the pass was started: the `search_behind` row of this
/// store's incarnation's message origin. (The message log numbers on
/// across a rename of the node, each name with a row of its own: the
/// furthest is the log's.)
fn searched(conn: &Connection) -> Result<Option<Searched>, Error> {
    Ok(conn
        .prepare_cached(
            "SELECT origin, incarnation, seq FROM search_behind
             WHERE incarnation = (SELECT value FROM node WHERE key = 'incarnation') || ?1
             ORDER BY seq DESC LIMIT 1",
        )?
        .query_row(params![MESSAGE_SUFFIX], |r| {
            Ok(Searched {
                node: r.get(0)?,
                incarnation: r.get(1)?,
                seq: u64::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
            })
        })
        .optional()?)
}

/// Whether the kept message `key` is behind the pass (it has no search
/// entry yet, and the pass will index its text as it is then). A block
/// entry no longer held is not: it has nothing to index.
pub(super) fn behind(tx: &Transaction<'_>, key: Key) -> Result<bool, Error> {
    match blocks::place(key) {
        Place::Row(rowid) => Ok(tx
            .prepare_cached(ROW_BEHIND)?
            .query_row(params![rowid], |r| r.get(0))?),
        Place::Block { .. } => {
            let Some(found) = blocks::find_key(tx, key)? else {
                return Ok(false);
            };
            Ok(searched(tx)?.is_some_and(|s| found.entry.seq > s.seq))
        }
    }
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

/// Whether any message event is behind the pass.
const ANY_BEHIND: &str = "SELECT EXISTS (SELECT 1 FROM search_behind b CROSS JOIN events e
    ON e.origin = b.origin AND e.incarnation = b.incarnation AND e.seq > b.seq)";

/// The last seq any block holds: the last batch's.
const LAST_BLOCK_SEQ: &str = "SELECT MAX(last_seq) FROM blocks
    WHERE batch = (SELECT MAX(batch) FROM blocks)";

/// The pass's places, one an origin.
const PLACES: &str = "SELECT origin, incarnation, seq FROM search_behind
    ORDER BY origin, incarnation";

/// Origin `?1`, incarnation `?2`'s message events past seq `?3`, oldest
/// first, at most `?4`.
const NEXT_BEHIND: &str = "SELECT rowid, seq, body FROM events
    WHERE origin = ?1 AND incarnation = ?2 AND seq > ?3
    ORDER BY seq LIMIT ?4";

/// Whether anything is behind the pass: a message event, or a block
/// entry of the message origin.
fn any_behind(conn: &Connection) -> Result<bool, Error> {
    if conn
        .prepare_cached(ANY_BEHIND)?
        .query_row([], |r| r.get(0))?
    {
        return Ok(true);
    }
    let Some(s) = searched(conn)? else {
        return Ok(false);
    };
    Ok(conn
        .prepare_cached(blocks::ANY_AFTER)?
        .query_row(params![sql_int(s.seq)], |r| r.get(0))?)
}

/// A seq as SQLite's integer.
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

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

/// A message behind the pass.
struct Behind {
    seq: u64,
    key: Key,
    text: Text,
}

/// Where a message behind the pass has its text.
enum Text {
    /// An event's body.
    Row(String),
    /// A block entry's record in the message log.
    Block(segment::Position),
}

/// Indexes up to `max` messages behind the pass, oldest first in each
/// origin, each under its current text (as edited; not at all if
/// redacted, or if its topic is `binary` now), and moves the pass past
/// them. Rows go to `queue`, which the caller flushes before it commits.
/// Block entries are read from the message log `queue` was given
/// ([`IndexQueue::reading`]); one that has none stops short of the first
/// (which the next run with it indexes).
pub(super) fn catch_up(
    tx: &Transaction<'_>,
    queue: &mut IndexQueue,
    max: usize,
) -> Result<Passed, Error> {
    let messages = searched(tx)?;
    // The store's message log, in its write transactions (`blocks.rs`).
    let log = blocks::log().ok();
    let places: Vec<(String, String, i64)> = {
        let mut stmt = tx.prepare_cached(PLACES)?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    let mut passed = Passed {
        messages: 0,
        through: None,
        done: true,
    };
    for (origin, incarnation, at) in places {
        let budget = max - passed.messages;
        if budget == 0 {
            passed.done = false;
            break;
        }
        let at = u64::try_from(at).unwrap_or(0);
        let of_blocks = messages
            .as_ref()
            .is_some_and(|m| m.node == origin && m.incarnation == incarnation);
        let (mut next, mut whole) = next_behind(tx, (&origin, &incarnation), at, budget)?;
        // The message origin's rows and block entries, in seq order: cut
        // to `budget`, what is left has nothing before it that either
        // list left out (each holds `budget` or all there are).
        if of_blocks {
            whole &= next_in_blocks(tx, (&origin, &incarnation), at, budget, &mut next)?;
        }
        if next.len() > budget {
            next.truncate(budget);
            whole = false;
        }
        if log.is_none()
            && let Some(first) = next.iter().position(|b| matches!(b.text, Text::Block(_)))
        {
            tracing::warn!(
                seq = next.get(first).map(|b| b.seq),
                "search: kept messages behind the search pass are left to it: this \
                 transaction cannot read the message log"
            );
            next.truncate(first);
            whole = false;
        }
        // The block entries' records, read together (one read per span
        // of the log rather than two per record).
        let places: Vec<segment::Position> = next
            .iter()
            .filter_map(|b| match b.text {
                Text::Block(at) => Some(at),
                Text::Row(_) => None,
            })
            .collect();
        let mut read = log
            .as_deref()
            .map(|l| l.read_once(&places))
            .unwrap_or_default()
            .into_iter();
        let mut messages = Vec::with_capacity(next.len());
        for b in &next {
            let record = match b.text {
                Text::Block(_) => read.next(),
                Text::Row(_) => None,
            };
            if let Some(m) = message_behind(record, b)? {
                messages.push((b.key, m));
            }
        }
        // Edits and redactions made while they were behind, looked up for
        // the run at once (a lookup per message had been a fifth of the
        // pass).
        let entities: Vec<String> = messages
            .iter()
            .map(|(_, m)| super::edit::entity(m.topic, &m.id))
            .collect();
        let edited = edited_among(
            tx,
            messages
                .iter()
                .zip(&entities)
                .map(|((_, m), e)| (m.topic, e.as_str())),
        )?;
        for ((key, m), entity) in messages.iter().zip(&entities) {
            let arrival = if edited.contains(entity) {
                super::log::Arrival::Stored
            } else {
                super::log::Arrival::Minted
            };
            super::edit::index_message(tx, queue, *key, m, arrival)?;
        }
        let mut to = next.last().map(|b| b.seq);
        if whole && of_blocks {
            // Whatever else blocks hold past `at` is pruned: passed too,
            // or an idle store would find it behind at every run.
            let last: Option<i64> = tx
                .prepare_cached(LAST_BLOCK_SEQ)?
                .query_row([], |r| r.get(0))?;
            let last = last.and_then(|l| u64::try_from(l).ok()).filter(|&l| l > at);
            to = to.max(last);
        }
        if let Some(to) = to {
            tx.prepare_cached(
                "UPDATE search_behind SET seq = ?3 WHERE origin = ?1 AND incarnation = ?2",
            )?
            .execute(params![origin, incarnation, sql_int(to)])?;
            passed.through = passed.through.max(Some(to));
        }
        passed.messages += next.len();
        passed.done &= whole;
    }
    Ok(passed)
}

/// `origin`'s message events past `at`, at most `max`, and whether they
/// are all of them.
fn next_behind(
    tx: &Transaction<'_>,
    origin: (&str, &str),
    at: u64,
    max: usize,
) -> Result<(Vec<Behind>, bool), Error> {
    let mut stmt = tx.prepare_cached(NEXT_BEHIND)?;
    let rows = stmt.query_map(
        params![origin.0, origin.1, sql_int(at), sql_int(max as u64)],
        |r| {
            Ok(Behind {
                key: blocks::key(Place::Row(r.get(0)?)),
                seq: u64::try_from(r.get::<_, i64>(1)?).unwrap_or(0),
                text: Text::Row(r.get(2)?),
            })
        },
    )?;
    let rows: Vec<Behind> = rows.collect::<Result<_, _>>()?;
    let whole = rows.len() < max;
    Ok((rows, whole))
}

/// Merges into `next` (the message origin's events past `at`, in seq
/// order) its block entries past `at`, at least `max` of them if there
/// are: whether those are all there are. (Cut to `max`, the merge holds
/// nothing past what either list left out.)
fn next_in_blocks(
    tx: &Transaction<'_>,
    origin: (&str, &str),
    at: u64,
    max: usize,
    next: &mut Vec<Behind>,
) -> Result<bool, Error> {
    let found = blocks::after(tx, origin, at, max)?;
    let whole = found.len() < max;
    next.extend(found.into_iter().map(|f| Behind {
        seq: f.entry.seq,
        key: f.key,
        text: Text::Block(f.at),
    }));
    next.sort_by_key(|b| b.seq);
    Ok(whole)
}

/// The message behind the pass at `b` (its record read from the log,
/// `record`, if it is a block entry's). One whose text cannot be read
/// (damage) is passed over, not stopped at: a run that failed on it would
/// fail again at every tick, and nothing after it be searched.
fn message_behind(
    record: Option<Result<segment::Stored, segment::Error>>,
    b: &Behind,
) -> Result<Option<Message>, Error> {
    let change = match (&b.text, record) {
        (Text::Row(body), _) => super::log::decode_message(body)
            .map(Ok)
            .unwrap_or_else(|| serde_json::from_str::<Change>(body))
            .map_err(|e| Error::Corrupt(e.to_string())),
        (Text::Block(_), None) => return Ok(None),
        (Text::Block(_), Some(Ok(stored))) => blocks::change(&stored.body),
        (Text::Block(_), Some(Err(e))) if !e.is_lost() => return Err(e.into()),
        (Text::Block(_), Some(Err(e))) => Err(e.into()),
    };
    match change {
        Ok(change) => Ok(change.message),
        Err(e) => {
            tracing::error!(seq = b.seq, error = %e,
                "search: a kept message's stored text cannot be read or does not decode; it is \
                 left out of search");
            Ok(None)
        }
    }
}

/// The message entities (`edit::entity`, each with its topic) among
/// `entities` that have an edit or a redaction: one range of the registers
/// per topic, from its least to its greatest message entity.
fn edited_among<'a>(
    tx: &Transaction<'_>,
    entities: impl Iterator<Item = (Uuid, &'a str)>,
) -> Result<HashSet<String>, Error> {
    let mut ranges: HashMap<Uuid, (&str, &str)> = HashMap::new();
    for (topic, e) in entities {
        let (least, greatest) = ranges.entry(topic).or_insert((e, e));
        *least = (*least).min(e);
        *greatest = (*greatest).max(e);
    }
    let mut edited = HashSet::new();
    let mut stmt = tx.prepare_cached(
        "SELECT entity FROM registers WHERE entity BETWEEN ?1 AND ?2 AND field IN (?3, ?4)",
    )?;
    for (least, greatest) in ranges.values() {
        let rows = stmt.query_map(
            params![least, greatest, super::edit::EDIT, super::edit::REDACTED],
            |r| r.get::<_, String>(0),
        )?;
        for e in rows {
            edited.insert(e?);
        }
    }
    Ok(edited)
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
/// inserted newest message first (ascending FTS rowid). FTS5 writes its
/// in-memory rows out whenever a rowid is not above the last one written:
/// inserted as the events came (descending FTS rowids), every message
/// became a segment of its own, to be merged again and again; that was most
/// of a kept message's cost in a group commit.
#[derive(Debug, Default)]
pub struct IndexQueue {
    /// FTS rowid to the text to index.
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
        // Newest message first: the FTS rowids ascend.
        while let Some((rowid, text)) = self.rows.pop_first() {
            stmt.execute(params![rowid, text])?;
        }
        Ok(())
    }
}

/// Queues the kept message `key` for indexing with text from `ex`, or
/// from the message's own `ex` when `None` (a message not yet indexed: see
/// [`unindex`]).
pub(super) fn index(
    tx: &Transaction<'_>,
    queue: &mut IndexQueue,
    key: Key,
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
        queue.rows.insert(fts_rowid(key), text);
    }
    Ok(())
}

/// Removes the kept message `key` from the index (or from the rows still
/// queued for it). The caller has found it not [`behind`].
pub(super) fn unindex(tx: &Transaction<'_>, queue: &mut IndexQueue, key: Key) -> Result<(), Error> {
    if queue.rows.remove(&fts_rowid(key)).is_none() {
        tx.prepare_cached("DELETE FROM search WHERE rowid = ?1")?
            .execute(params![fts_rowid(key)])?;
    }
    Ok(())
}

/// Removes the kept message `key`'s search entry, if it has one (it is not
/// [`behind`]): for a transaction that queues none (retention).
#[allow(
    dead_code,
    reason = "retention calls it (history.rs), switched to blocks apart"
)]
pub(super) fn unindex_key(tx: &Transaction<'_>, key: Key) -> Result<(), Error> {
    if !behind(tx, key)? {
        tx.prepare_cached("DELETE FROM search WHERE rowid = ?1")?
            .execute(params![fts_rowid(key)])?;
    }
    Ok(())
}

/// Removes the search entries of `block`'s entries that `which` picks
/// (all of them before retention deletes the block; those under the
/// topic's new floor when it raises the floor through it). Those behind
/// the pass have none; the pass leaves out what the floor covers, and
/// never reads a deleted block.
pub(super) fn unindex_block(
    tx: &Transaction<'_>,
    block: &blocks::Block,
    which: impl Fn(&blocks::Entry) -> bool,
) -> Result<(), Error> {
    let through = searched(tx)?.map_or(u64::MAX, |s| s.seq);
    let mut delete = tx.prepare_cached("DELETE FROM search WHERE rowid = ?1")?;
    // Newest first: ascending FTS rowids.
    for (index, e) in block.entries().rev() {
        if e.seq <= through && which(&e) {
            let key = blocks::key(Place::Block {
                rowid: block.rowid,
                index,
            });
            delete.execute(params![fts_rowid(key)])?;
        }
    }
    Ok(())
}

/// The matches of `?1` past FTS rowid `?2`, at most `?3`, newest first,
/// each with its row if it is one (a block entry's FTS rowid is far below
/// any row's negated, so it joins none).
const MATCHES: &str = "SELECT s.rowid, e.topic, e.hlc, e.body
    FROM search s LEFT JOIN events e ON e.rowid = -s.rowid
    WHERE search MATCH ?1 AND s.rowid > ?2
    ORDER BY s.rowid ASC LIMIT ?3";

/// The blocks a page of search results reads, and the floors of their
/// topics: hits come a block at a time (a block's FTS rowids are
/// consecutive), so the last block read is kept.
#[derive(Default)]
struct HitBlocks {
    last: Option<(i64, Option<blocks::Block>)>,
    floors: HashMap<Uuid, Option<blocks::HistoryPos>>,
}

impl HitBlocks {
    /// The block at `rowid`, if it is still held.
    fn block(&mut self, conn: &Connection, rowid: i64) -> Result<Option<&blocks::Block>, Error> {
        if self.last.as_ref().is_none_or(|(r, _)| *r != rowid) {
            self.last = Some((rowid, blocks::block(conn, rowid)?));
        }
        Ok(self.last.as_ref().and_then(|(_, b)| b.as_ref()))
    }

    /// `topic`'s retention floor.
    fn floor(
        &mut self,
        conn: &Connection,
        topic: Uuid,
    ) -> Result<Option<&blocks::HistoryPos>, Error> {
        let floor = match self.floors.entry(topic) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(blocks::floor(conn, topic)?),
        };
        Ok(floor.as_ref())
    }
}

impl Db {
    /// Runs the search pass over up to `max` messages behind it ([`catch_up`]),
    /// in a transaction that commits without a WAL sync: a crash takes the
    /// pass back with it, and it runs again.
    pub fn search_behind(&mut self, max: usize) -> Result<Passed, Error> {
        // Read first: an idle store commits nothing.
        if !any_behind(&self.conn)? {
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
    /// took them in: those in blocks, then those in rows; see the module's
    /// doc, "Rowids"). At most `q.scan` matches are examined: a page may
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
        // and a window that excludes every match would walk them all. A
        // block entry's match has no row (its rowid is far past any).
        let mut stmt = self.conn.prepare_cached(MATCHES)?;
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
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<String>>(3)?,
                ))
            },
        )?;
        let readable = |t: Uuid| q.topics.contains(&t) && q.topic.is_none_or(|only| only == t);
        let wanted = |m: &Message| q.sender.is_none_or(|s| s == m.sender);
        let messages_origin = self.origin.messages();
        let origin = (
            messages_origin.node.as_str(),
            messages_origin.incarnation.as_str(),
        );
        let mut held = HitBlocks::default();
        let (mut messages, mut positions) = (Vec::new(), Vec::new());
        let (mut examined, mut last) = (0, None);
        for row in rows {
            let (rowid, topic, hlc, body) = row?;
            examined += 1;
            let position = rowid.saturating_neg();
            last = Some(position);
            let (change, hlc) = match blocks::place(fts_key(rowid)) {
                Place::Row(_) => {
                    // A row gone (none is: retention's trigger drops its
                    // entry) is passed over.
                    let (Some(topic), Some(hlc), Some(body)) = (topic, hlc, body) else {
                        continue;
                    };
                    let readable = Uuid::parse_str(&topic).is_ok_and(readable);
                    if !readable || !(since..until).contains(&hlc) {
                        continue;
                    }
                    let change: Change =
                        serde_json::from_str(&body).map_err(|e| Error::Corrupt(e.to_string()))?;
                    (change, hlc)
                }
                Place::Block { rowid, index } => {
                    // A block retention deleted, or an entry under its
                    // topic's floor, is gone.
                    let Some(block) = held.block(&self.conn, rowid)? else {
                        continue;
                    };
                    let Some(entry) = block.entry(index) else {
                        continue;
                    };
                    let (topic, at) = (block.topic, block.at(&entry));
                    let hlc = sql_int(entry.hlc);
                    if !readable(topic) || !(since..until).contains(&hlc) {
                        continue;
                    }
                    if !blocks::above(held.floor(&self.conn, topic)?, origin, &entry) {
                        continue;
                    }
                    (blocks::change(&self.log.read(at)?.body)?, hlc)
                }
            };
            if let Some(mut m) = change.message.filter(wanted) {
                m.ts = hlc >> 16;
                messages.push(m);
                positions.push(position);
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
        keep_blocks(db, topic, sender, messages);
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
        keep_blocks(&mut db, t, dan, &[(&named(1), "word block")]);
        for sql in [
            ROW_BEHIND,
            ANY_BEHIND,
            NEXT_BEHIND,
            blocks::ANY_AFTER,
            LAST_BLOCK_SEQ,
        ] {
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
                steps
                    .iter()
                    .all(|s| !s.starts_with("SCAN e") && !s.starts_with("SCAN blocks")),
                "{sql}: {steps:?}"
            );
        }
    }

    /// A page walks the index in its own order, a row looked up by its
    /// rowid per match: nothing sorts the matches, nothing scans events.
    #[test]
    fn a_page_walks_the_index_in_order() {
        let (_dir, db, _, _) = store();
        let mut plan = db
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {MATCHES}"))
            .unwrap();
        let steps: Vec<String> = plan
            .query_map(params!["word", 0, 10], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            steps
                .first()
                .is_some_and(|s| s.starts_with("SCAN s VIRTUAL TABLE")),
            "{steps:?}"
        );
        assert!(
            steps
                .iter()
                .all(|s| !s.contains("TEMP B-TREE") && !s.starts_with("SCAN e")),
            "{steps:?}"
        );
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
    /// Message `n`'s id: a UUID, as a session mints (so the message log's
    /// index writes it as a block entry), rising with `n`.
    fn named(n: u128) -> String {
        Uuid::from_u128(n).to_string()
    }

    /// Kept messages `(id, body)` of `topic` as a session keeps them:
    /// records in the message log of `db`'s store, indexed in one
    /// transaction (an id that is a UUID as a block entry, any other as a
    /// row). Returns each one's seq and clock.
    fn keep_blocks(
        db: &mut Db,
        topic: Uuid,
        sender: Uuid,
        messages: &[(&str, &str)],
    ) -> Vec<crate::store::message_log::Entry> {
        use crate::store::message_log::{Entry, SyncedRecord};
        use crate::store::segment::{Record, Writer};
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
        let dir = log_dir(db);
        let mut writer = Writer::open(&dir, u64::MAX).unwrap().writer;
        let appended = writer
            .append(records.iter().map(|(e, body)| Record {
                seq: e.seq,
                hlc: e.hlc,
                body,
            }))
            .unwrap();
        let synced = records
            .iter()
            .zip(&appended.positions)
            .map(|((entry, body), at)| SyncedRecord {
                entry: *entry,
                at: *at,
                body,
            });
        db.index_messages(synced, appended.end).unwrap();
        records.into_iter().map(|(e, _)| e).collect()
    }

    /// The directory of the message log whose segments `db.log` reads.
    fn log_dir(db: &Db) -> std::path::PathBuf {
        let path = db.conn.path().unwrap();
        std::path::Path::new(path)
            .parent()
            .unwrap()
            .join(crate::store::MESSAGE_LOG_DIR)
    }

    /// Rows of `sql` (a count).
    fn count(db: &Db, sql: &str) -> i64 {
        db.conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }

    /// Search entries with `word`, whatever they name.
    fn entries(db: &Db, word: &str) -> i64 {
        db.conn
            .query_row(
                "SELECT COUNT(*) FROM search WHERE search MATCH ?1",
                params![word],
                |r| r.get(0),
            )
            .unwrap()
    }

    /// The key of entry `index` of the block at `rowid`.
    fn block_key(rowid: i64, index: usize) -> Key {
        blocks::key(Place::Block { rowid, index })
    }

    /// This node's kept messages held in blocks are found once the pass
    /// has run over them (read from the message log), in runs of the size
    /// asked, each as the row path gives a message: its topic, sender,
    /// text, and time from its clock.
    #[test]
    fn block_entries_are_found_once_the_pass_has_run() {
        let (_dir, mut db, t, dan) = store();
        let (a, b, c) = (named(1), named(2), named(3));
        let kept = keep_blocks(
            &mut db,
            t,
            dan,
            &[(&a, "brown fox"), (&b, "brown dog"), (&c, "lazy cat")],
        );
        assert_eq!(count(&db, "SELECT COUNT(*) FROM blocks"), 1);
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM events WHERE kind = 'message'"),
            0
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
        assert_eq!(found(&db, "brown", t), [b.clone(), a.clone()]);
        assert!(found(&db, "lazy", t).is_empty());
        let rest = db.search_behind(10).unwrap();
        assert_eq!((rest.messages, rest.through, rest.done), (1, Some(3), true));
        assert_eq!(found(&db, "lazy", t), [c]);
        let commits = db.commits;
        let idle = db.search_behind(10).unwrap();
        assert_eq!((idle.messages, idle.through, idle.done), (0, None, true));
        assert_eq!(db.commits, commits, "nothing behind: no transaction");

        let page = db.search(&query(&["fox"], &[t])).unwrap();
        let m = &page.messages[0];
        assert_eq!((m.topic, m.sender, m.id.as_str()), (t, dan, a.as_str()));
        assert_eq!(m.ts, i64::try_from(kept[0].hlc >> 16).unwrap());
        assert_eq!(m.ex.get(), r#"{"body":"brown fox"}"#);
        // Another topic's reader finds nothing.
        assert!(found(&db, "brown", Uuid::now_v7()).is_empty());
    }

    /// The pass indexes a block entry's current text: an edit's, none for
    /// a redacted message, none in a `binary` topic.
    #[test]
    fn block_entries_are_indexed_as_edited_redacted_and_formatted() {
        let (_dir, mut db, t, dan) = store();
        let bin = Uuid::now_v7();
        let binary = Change::new("topic.meta").set(
            crate::change::Entity::Topic(bin),
            crate::change::field::META_FORMAT,
            "binary",
        );
        db.append_all(vec![binary]).unwrap();
        let (m1, m2, m3, m4) = (named(1), named(2), named(3), named(4));
        keep_blocks(
            &mut db,
            t,
            dan,
            &[(&m1, "brown one"), (&m2, "brown two"), (&m3, "brown three")],
        );
        keep_blocks(&mut db, bin, dan, &[(&m4, "brown four")]);
        let revision = crate::store::edit::Revision {
            ex: Map::from_iter([("body".to_owned(), Value::from("a lazy cat"))]),
            ts: 1,
            by: dan,
            n: 1,
        };
        db.edit_message(t, &m1, &revision).unwrap();
        let redaction = crate::store::edit::Redaction { ts: 2, by: dan };
        db.redact_message(t, &m2, &redaction).unwrap();
        let passed = db.search_behind(100).unwrap();
        assert_eq!((passed.messages, passed.done), (4, true));
        assert_eq!(found(&db, "brown", t), [m3]);
        assert_eq!(found(&db, "lazy", t), [m1]);
        assert!(found(&db, "one", t).is_empty());
        assert!(found(&db, "two", t).is_empty());
        assert!(found(&db, "brown", bin).is_empty());
        assert_eq!(entries(&db, "brown"), 1);
    }

    /// Edits and redactions behind the pass, looked up one range of a
    /// topic's message entities at a time, reach the first, a middle and
    /// the last message of each topic's run; the other messages are
    /// indexed as kept.
    #[test]
    fn edits_behind_the_pass_are_found_in_each_topics_range() {
        let (_dir, mut db, t, dan) = store();
        let u = Uuid::now_v7();
        let ids: Vec<String> = (1..=6).map(named).collect();
        let [a, b, c, d, e, f] = [0, 1, 2, 3, 4, 5].map(|i| ids[i].as_str());
        keep_blocks(
            &mut db,
            t,
            dan,
            &[(a, "brown a"), (b, "brown b"), (c, "brown c")],
        );
        keep_blocks(
            &mut db,
            u,
            dan,
            &[(d, "brown d"), (e, "brown e"), (f, "brown f")],
        );
        let lazy = crate::store::edit::Revision {
            ex: Map::from_iter([("body".to_owned(), Value::from("a lazy cat"))]),
            ts: 1,
            by: dan,
            n: 1,
        };
        for (topic, id) in [(t, a), (t, c), (u, e)] {
            db.edit_message(topic, id, &lazy).unwrap();
        }
        let redaction = crate::store::edit::Redaction { ts: 2, by: dan };
        db.redact_message(u, d, &redaction).unwrap();
        let passed = db.search_behind(100).unwrap();
        assert_eq!((passed.messages, passed.done), (6, true));
        assert_eq!(found(&db, "lazy", t), [c, a]);
        assert_eq!(found(&db, "lazy", u), [e]);
        assert_eq!(found(&db, "brown", t), [b]);
        assert_eq!(found(&db, "brown", u), [f]);
    }

    /// A page walks the blocks' matches newest first, then the rows'
    /// (here older), each once across pages; sender and time filters
    /// hold for block entries as for rows.
    #[test]
    fn pages_walk_blocks_then_rows_newest_first() {
        let (_dir, mut db, t, dan) = store();
        let bob = Uuid::now_v7();
        send(&mut db, t, bob, "r1", "brown row");
        send(&mut db, t, bob, "r2", "brown row");
        let (b1, b2, b3) = (named(1), named(2), named(3));
        let kept = keep_blocks(
            &mut db,
            t,
            dan,
            &[(&b1, "brown b"), (&b2, "brown b"), (&b3, "brown b")],
        );
        assert!(db.search_behind(100).unwrap().done);
        let all = [b3.as_str(), b2.as_str(), b1.as_str(), "r2", "r1"];
        assert_eq!(found(&db, "brown", t), all);

        let mut q = query(&["brown"], &[t]);
        q.limit = 2;
        let mut pages = Vec::new();
        loop {
            let page = db.search(&q).unwrap();
            pages.push(ids(&page).join(" "));
            match page.cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        assert_eq!(
            pages,
            [format!("{b3} {b2}"), format!("{b1} r2"), "r1".to_owned()]
        );

        keep_blocks(&mut db, t, bob, &[(&named(4), "brown b")]);
        assert!(db.search_behind(100).unwrap().done);
        let mut q = query(&["brown"], &[t]);
        q.sender = Some(dan);
        assert_eq!(ids(&db.search(&q).unwrap()), [&b3, &b2, &b1]);
        let ts = |i: usize| i64::try_from(kept[i].hlc >> 16).unwrap();
        q.since_ms = Some(ts(0));
        q.until_ms = Some(ts(2) + 1);
        assert_eq!(ids(&db.search(&q).unwrap()), [&b3, &b2, &b1]);
        q.since_ms = Some(ts(2) + 1);
        assert!(db.search(&q).unwrap().messages.is_empty());
        q.since_ms = None;
        q.until_ms = Some(ts(0));
        assert!(db.search(&q).unwrap().messages.is_empty());
    }

    /// The message origin's rows (ids that are no UUID) and its block
    /// entries pass in seq order: the pass moves only past what it has
    /// indexed.
    #[test]
    fn rows_and_block_entries_of_the_message_origin_pass_in_seq_order() {
        let (_dir, mut db, t, dan) = store();
        let (a, c) = (named(1), named(3));
        keep_blocks(
            &mut db,
            t,
            dan,
            &[
                (&a, "brown a"),
                ("row-b", "brown b"),
                (&c, "brown c"),
                ("row-d", "brown d"),
            ],
        );
        assert_eq!(
            count(&db, "SELECT COUNT(*) FROM events WHERE kind = 'message'"),
            2
        );
        let step = |db: &mut Db, max| {
            let p = db.search_behind(max).unwrap();
            (p.messages, p.through, p.done)
        };
        assert_eq!(step(&mut db, 1), (1, Some(1), false));
        assert_eq!(found(&db, "brown", t), [a.as_str()]);
        assert_eq!(step(&mut db, 1), (1, Some(2), false));
        assert_eq!(found(&db, "brown", t), [a.as_str(), "row-b"]);
        assert_eq!(step(&mut db, 10), (2, Some(4), true));
        assert_eq!(
            found(&db, "brown", t),
            [c.as_str(), a.as_str(), "row-d", "row-b"]
        );
        assert_eq!(step(&mut db, 10), (0, None, true));
    }

    /// A transaction whose queue cannot read the message log (a topic's
    /// format change applied without it) catches the pass up to the first
    /// block entry and leaves that and the rest to the pass.
    #[test]
    fn a_catch_up_without_the_log_stops_at_the_first_block_entry() {
        let (_dir, mut db, t, dan) = store();
        let b = named(2);
        keep_blocks(
            &mut db,
            t,
            dan,
            &[("row-a", "brown a"), (&b, "brown b"), ("row-c", "brown c")],
        );
        let tx = db.conn.transaction().unwrap();
        let mut queue = IndexQueue::default();
        let passed = catch_up(&tx, &mut queue, 100).unwrap();
        queue.flush(&tx).unwrap();
        tx.commit().unwrap();
        assert_eq!(
            passed,
            Passed {
                messages: 1,
                through: Some(1),
                done: false
            }
        );
        assert_eq!(found(&db, "brown", t), ["row-a"]);
        let rest = db.search_behind(100).unwrap();
        assert_eq!((rest.messages, rest.through, rest.done), (2, Some(3), true));
        assert_eq!(found(&db, "brown", t), [b.as_str(), "row-c", "row-a"]);
    }

    /// A block entry is behind until the pass has passed its seq; one
    /// whose block is gone is not.
    #[test]
    fn a_block_key_is_behind_until_the_pass_passes_it() {
        let (_dir, mut db, t, dan) = store();
        keep_blocks(
            &mut db,
            t,
            dan,
            &[(&named(1), "brown a"), (&named(2), "brown b")],
        );
        let rowid = count(&db, "SELECT rowid FROM blocks");
        let is_behind = |db: &mut Db, key| {
            let tx = db.conn.transaction().unwrap();
            behind(&tx, key).unwrap()
        };
        assert!(is_behind(&mut db, block_key(rowid, 0)));
        db.search_behind(1).unwrap();
        assert!(!is_behind(&mut db, block_key(rowid, 0)));
        assert!(is_behind(&mut db, block_key(rowid, 1)));
        assert!(
            !is_behind(&mut db, block_key(rowid + 1, 0)),
            "no such block"
        );
        db.search_behind(1).unwrap();
        assert!(!is_behind(&mut db, block_key(rowid, 1)));
    }

    /// Retention: search skips an entry under its topic's floor and a
    /// block that is gone; [`unindex_block`] and [`unindex_key`] remove
    /// the entries.
    #[test]
    fn retention_of_block_entries_leaves_them_out_of_search() {
        let (_dir, mut db, t, dan) = store();
        let (m1, m2, m3) = (named(1), named(2), named(3));
        let kept = keep_blocks(
            &mut db,
            t,
            dan,
            &[(&m1, "brown one"), (&m2, "brown two"), (&m3, "brown three")],
        );
        let other = Uuid::now_v7();
        keep_blocks(&mut db, other, dan, &[(&named(4), "brown four")]);
        assert!(db.search_behind(100).unwrap().done);
        assert_eq!(entries(&db, "brown"), 4);

        // A block deleted without its entries: its matches are passed over.
        db.conn
            .execute(
                "DELETE FROM blocks WHERE topic = ?1",
                params![other.to_string()],
            )
            .unwrap();
        assert!(found(&db, "brown", other).is_empty());

        // A floor through m1: its entry is left out, then removed.
        let origin = db.origin.messages();
        let floor = (
            i64::try_from(kept[0].hlc).unwrap(),
            origin.node.clone(),
            origin.incarnation.clone(),
            i64::try_from(kept[0].seq).unwrap(),
        );
        blocks::raise_floor(&db.conn, t, &floor).unwrap();
        assert_eq!(found(&db, "brown", t), [m3.as_str(), m2.as_str()]);
        let rowid: i64 = db
            .conn
            .query_row(
                "SELECT rowid FROM blocks WHERE topic = ?1",
                params![t.to_string()],
                |r| r.get(0),
            )
            .unwrap();
        let block = blocks::block(&db.conn, rowid).unwrap().unwrap();
        let under = |e: &blocks::Entry| {
            !blocks::above(Some(&floor), (&origin.node, &origin.incarnation), e)
        };
        let tx = db.conn.transaction().unwrap();
        unindex_block(&tx, &block, under).unwrap();
        tx.commit().unwrap();
        assert_eq!(entries(&db, "brown"), 3);
        assert_eq!(entries(&db, "one"), 0);

        let tx = db.conn.transaction().unwrap();
        unindex_key(&tx, block_key(rowid, 1)).unwrap();
        tx.commit().unwrap();
        assert_eq!(found(&db, "brown", t), [m3.as_str()]);

        let tx = db.conn.transaction().unwrap();
        unindex_block(&tx, &block, |_| true).unwrap();
        tx.execute("DELETE FROM blocks WHERE rowid = ?1", params![rowid])
            .unwrap();
        tx.commit().unwrap();
        assert_eq!(entries(&db, "brown"), 1, "the deleted block's, left");
        assert!(found(&db, "brown", t).is_empty());
    }

    /// Block entries pruned before the pass reached them are passed over:
    /// the pass ends past them, and then finds nothing behind.
    #[test]
    fn block_entries_pruned_behind_the_pass_are_passed_over() {
        let (_dir, mut db, t, dan) = store();
        let kept = keep_blocks(
            &mut db,
            t,
            dan,
            &[(&named(1), "brown a"), (&named(2), "brown b")],
        );
        let origin = db.origin.messages();
        let floor = (
            i64::try_from(kept[1].hlc).unwrap(),
            origin.node.clone(),
            origin.incarnation.clone(),
            i64::try_from(kept[1].seq).unwrap(),
        );
        blocks::raise_floor(&db.conn, t, &floor).unwrap();
        let passed = db.search_behind(10).unwrap();
        assert_eq!(
            passed,
            Passed {
                messages: 0,
                through: Some(2),
                done: true
            }
        );
        assert_eq!(entries(&db, "brown"), 0);
        let commits = db.commits;
        assert!(db.search_behind(10).unwrap().done);
        assert_eq!(db.commits, commits, "nothing behind: no transaction");
    }

    /// A block entry whose record in the message log is damaged is passed
    /// over, and the pass goes on.
    #[test]
    fn the_pass_goes_past_a_block_entry_it_cannot_read() {
        use std::os::unix::fs::FileExt;
        let (_dir, mut db, t, dan) = store();
        let (a, b) = (named(1), named(2));
        keep_blocks(&mut db, t, dan, &[(&a, "brown a"), (&b, "brown b")]);
        let first = blocks::find_key(
            &db.conn,
            block_key(count(&db, "SELECT rowid FROM blocks"), 0),
        )
        .unwrap()
        .unwrap();
        let segment = log_dir(&db).join(format!("{:020}.seg", first.at.segment));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(segment)
            .unwrap();
        // A byte of its body: the record's CRC no longer matches.
        let body = first.at.offset + crate::store::segment::RECORD_HEAD as u64;
        file.write_all_at(b"X", body + 2).unwrap();
        let passed = db.search_behind(10).unwrap();
        assert_eq!(
            (passed.messages, passed.through, passed.done),
            (2, Some(2), true)
        );
        assert_eq!(found(&db, "brown", t), [b]);
    }

    /// A search through the daemon's store waits for the pass to reach
    /// what the message log had synced, and finds a message kept through
    /// the log (a block entry) once it has.
    #[tokio::test]
    async fn a_search_waiting_for_the_pass_finds_a_block_entry() {
        use crate::store::{Store, hold_store_thread};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let topic = Uuid::now_v7();
        let id = Uuid::now_v7().to_string();
        // The index's job, and the pass, wait behind the held one.
        let (release, held) = hold_store_thread(&store).await;
        let log = store.messages();
        let e = log
            .append_body(|_| log::text_message(topic, Uuid::now_v7(), &id, "brown fox"))
            .unwrap();
        log.wait_synced(e.seq).await.unwrap();
        let searching = {
            let store = store.clone();
            tokio::spawn(async move {
                let q = query(&["brown"], &[topic]);
                let found = store.read_searched(move |db| db.search(&q)).await;
                found
                    .unwrap()
                    .messages
                    .into_iter()
                    .map(|m| m.id)
                    .collect::<Vec<_>>()
            })
        };
        // This runtime has one thread: the search runs to its wait here.
        tokio::task::yield_now().await;
        assert!(!searching.is_finished(), "waits for the pass");
        release.send(()).unwrap();
        held.await.unwrap().unwrap();
        assert_eq!(searching.await.unwrap(), [id]);
        let blocks = store
            .read(|db| Ok(count(db, "SELECT COUNT(*) FROM blocks")))
            .await
            .unwrap();
        assert_eq!(blocks, 1, "held in a block");
        store.close().await;
    }
}
