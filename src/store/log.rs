//! The event log and the one apply path.
//!
//! Every change of state is appended as an event `(origin node, incarnation,
//! seq)` with a hybrid logical clock timestamp, in the same transaction as
//! the change itself. `seq` is gapless per origin and incarnation; the clock
//! (48-bit Unix ms, 16-bit counter) is persisted and never goes backwards.
//! [`apply`] folds an event's register writes into state, last writer wins by
//! `(hlc, origin)`, so replicas that apply the same events in any order agree.

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use uuid::Uuid;

use super::Error;
use super::search::IndexQueue;
use crate::change::{Change, ExJson, Message, field};
use crate::proto::id::{UuidText, now_ms};
use crate::proto::packet::{write_str, write_uuid};

/// Who writes events: a node and the incarnation of its store. A wiped store
/// gets a new incarnation, so it is a new origin to its peers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The node name from the config.
    pub node: String,
    /// Random, minted with the store.
    pub incarnation: String,
}

impl Origin {
    /// The tie-break key compared after the clock: `node/incarnation`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.node, self.incarnation)
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Origin node.
    pub node: String,
    /// Origin incarnation.
    pub incarnation: String,
    /// Gapless sequence number per origin.
    pub seq: u64,
    /// Hybrid logical clock timestamp.
    pub hlc: u64,
    /// What changed.
    pub change: Change,
}

/// The clock value after `last` at wall time `now_ms`.
pub fn next_hlc(last: u64, now_ms: u64) -> u64 {
    (now_ms << 16).max(last.saturating_add(1))
}

/// Appends a local change: assigns seq and clock, records the event and
/// applies it, all inside `tx`.
pub fn append(tx: &Transaction<'_>, origin: &Origin, change: Change) -> Result<Event, Error> {
    let mut log = Appender::open(tx, origin)?;
    let event = log.append(tx, origin, change)?;
    log.close(tx, origin)?;
    Ok(event)
}

/// Appends a run of local changes inside one transaction (a group commit):
/// the log's last seq and clock are read once when it opens and the clock
/// is written back once when it closes, not three statements per change.
pub struct Appender {
    seq: u64,
    hlc: u64,
    /// Search rows of the run, written when it closes.
    index: IndexQueue,
    /// How the run's messages are applied (see [`Appender::open_new`]).
    arrival: Arrival,
}

impl Appender {
    /// Reads where `origin`'s log stands. Its messages are applied as any
    /// stored one is.
    pub fn open(tx: &Transaction<'_>, origin: &Origin) -> Result<Self, Error> {
        Ok(Self {
            seq: seen_seq(tx, &origin.node, &origin.incarnation)?,
            hlc: read_clock(tx)?,
            index: IndexQueue::default(),
            arrival: Arrival::Stored,
        })
    }

    /// [`Appender::open`] for changes made just now by this node, whose
    /// messages have ids minted for them that nobody has seen yet: nothing
    /// can refer to them, so nothing about them is looked up. For the store
    /// thread's group commits of sessions' changes only.
    pub(super) fn open_new(tx: &Transaction<'_>, origin: &Origin) -> Result<Self, Error> {
        Ok(Self {
            arrival: Arrival::Minted,
            ..Self::open(tx, origin)?
        })
    }

    /// Records and applies one change: the next seq, the next clock value.
    /// A change that fails leaves the position as it was.
    pub fn append(
        &mut self,
        tx: &Transaction<'_>,
        origin: &Origin,
        change: Change,
    ) -> Result<Event, Error> {
        let now = u64::try_from(now_ms()).unwrap_or(0);
        let hlc = next_hlc(self.hlc, now);
        let seq = self.seq + 1;
        let event = Event {
            node: origin.node.clone(),
            incarnation: origin.incarnation.clone(),
            seq,
            hlc,
            change,
        };
        let rowid = insert(tx, &event)?;
        // The event is in the log from here on: the next one follows it
        // even if applying this one fails.
        (self.seq, self.hlc) = (seq, hlc);
        apply_as(
            tx,
            &mut self.index,
            rowid,
            &origin.key(),
            hlc,
            &event.change,
            self.arrival,
        )?;
        Ok(event)
    }

    /// The seq of the last change appended (or of the log before it).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Writes the search rows, the clock and this origin's position.
    pub fn close(mut self, tx: &Transaction<'_>, origin: &Origin) -> Result<(), Error> {
        self.index.flush(tx)?;
        write_clock(tx, self.hlc)?;
        set_seen_seq(tx, &origin.node, &origin.incarnation, self.seq)
    }
}

/// Records an event in the log (not applying it): a message's topic and
/// id go in their own indexed columns too. Returns the event's rowid.
pub fn insert(tx: &Transaction<'_>, event: &Event) -> Result<i64, Error> {
    insert_body(tx, event, &encode(&event.change)?)
}

/// A change as the log stores it: the text `serde_json::to_string` writes.
/// A kept message, most of the log, is written piece by piece into a buffer
/// sized once: serde escaped every string (UUIDs too) and regrew its buffer
/// twice for a chat message, about 6% of the store thread's time under
/// chatbench's pairs with history.
pub(super) fn encode(change: &Change) -> Result<String, Error> {
    let corrupt = |e: String| Error::Corrupt(e);
    let Some(m) = change.message.as_ref().filter(|_| change.writes.is_empty()) else {
        return serde_json::to_string(change).map_err(|e| corrupt(e.to_string()));
    };
    let parts = MessageParts {
        kind: &change.kind,
        topic: &UuidText::new(m.topic),
        id: &m.id,
        ts: m.ts,
        sender: &UuidText::new(m.sender),
        ex: m.ex.get(),
    };
    // Every piece is text (`ex` is a `str`), so this only checks.
    String::from_utf8(parts.encode()).map_err(|e| corrupt(e.to_string()))
}

/// A kept message's pieces, for [`encode`] without building a [`Change`]
/// first (the send path appends them to the message log as they come).
pub struct MessageParts<'a> {
    /// The change's kind: `message`.
    pub kind: &'a str,
    /// The topic, formatted.
    pub topic: &'a UuidText,
    /// The message's id.
    pub id: &'a str,
    /// Its time, where it is not the event's clock (0 when it is).
    pub ts: i64,
    /// The sender, formatted.
    pub sender: &'a UuidText,
    /// Its `ex`, JSON text.
    pub ex: &'a str,
}

/// A kept message whose `ex` is `{"body": text}`, as the session appends
/// it to the message log (tests).
#[cfg(test)]
pub(crate) fn text_message(topic: Uuid, sender: Uuid, id: &str, text: &str) -> Vec<u8> {
    let ex = serde_json::json!({ "body": text }).to_string();
    MessageParts {
        kind: Change::MESSAGE,
        topic: &UuidText::new(topic),
        id,
        ts: 0,
        sender: &UuidText::new(sender),
        ex: &ex,
    }
    .encode()
}

impl MessageParts<'_> {
    /// The change's text, as [`encode`] writes a message change.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ex.len() + self.id.len() + self.kind.len() + 160);
        self.encode_into(&mut out);
        out
    }

    /// [`MessageParts::encode`], appended to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"kind\":");
        write_str(out, self.kind);
        out.extend_from_slice(b",\"writes\":[],\"message\":{\"topic\":");
        write_uuid(out, self.topic);
        out.extend_from_slice(b",\"id\":");
        write_str(out, self.id);
        out.extend_from_slice(b",\"ts\":");
        out.extend_from_slice(itoa::Buffer::new().format(self.ts).as_bytes());
        out.extend_from_slice(b",\"sender\":");
        write_uuid(out, self.sender);
        out.extend_from_slice(b",\"ex\":");
        out.extend_from_slice(self.ex.as_bytes());
        out.extend_from_slice(b"}}");
    }
}

/// A kept message's change read back from text [`MessageParts::encode`]
/// wrote, without serde: the search pass reads every kept message back
/// (serde's decode of a `Change` was 6% of the index's time when the index
/// did it; chatbench's pairs with history). `None` for text of any other
/// shape, or whose strings were escaped: the caller decodes it with serde.
pub(super) fn decode_message(text: &str) -> Option<Change> {
    let p = split_message(text)?;
    Some(Change {
        kind: p.kind.to_owned(),
        writes: Vec::new(),
        message: Some(Message {
            topic: p.topic,
            id: p.id.to_owned(),
            ts: p.ts,
            sender: p.sender,
            ex: ExJson::from_text(p.ex.to_owned()).ok()?,
        }),
    })
}

/// A kept message's topic and id, read at their places in a record that
/// [`MessageParts::encode`] wrote with a UUID id (as every session does):
/// the message log's index needs nothing else of a record, and this is a
/// tenth of [`split_message`]'s work. `None` for anything else, which
/// [`split_message`] then reads.
pub(super) fn message_topic_and_id(body: &[u8]) -> Option<(Uuid, Uuid)> {
    const HEAD: &[u8] = b"{\"kind\":\"message\",\"writes\":[],\"message\":{\"topic\":\"";
    const ID: &[u8] = b"\",\"id\":\"";
    const UUID: usize = uuid::fmt::Hyphenated::LENGTH;
    let rest = body.strip_prefix(HEAD)?;
    let (topic, rest) = rest.split_at_checked(UUID)?;
    let (id, rest) = rest.strip_prefix(ID)?.split_at_checked(UUID)?;
    if rest.first() != Some(&b'"') {
        return None;
    }
    Some((
        Uuid::try_parse_ascii(topic).ok()?,
        Uuid::try_parse_ascii(id).ok()?,
    ))
}

/// `text`, a record [`MessageParts::encode`] wrote, with its message's
/// `ex` emptied at the same length (`{`, spaces, `}`): a redaction rewrites
/// the record in place in the message log. `None` for other text.
pub(super) fn blank_ex(text: &str) -> Option<String> {
    let ex = split_message(text)?.ex;
    // `ex` is a slice of `text`.
    let start = (ex.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
    let mut out = String::with_capacity(text.len());
    out.push_str(text.get(..start)?);
    out.push_str(&blank_object(ex.len())?);
    out.push_str(text.get(start + ex.len()..)?);
    Some(out)
}

/// An empty JSON object `len` bytes long (`{`, spaces, `}`): a redacted
/// message's `ex` in its record, which keeps the record's length. `None`
/// under two bytes.
pub(super) fn blank_object(len: usize) -> Option<String> {
    let inner = len.checked_sub(2)?;
    let mut out = String::with_capacity(len);
    out.push('{');
    out.extend(std::iter::repeat_n(' ', inner));
    out.push('}');
    Some(out)
}

/// The pieces of text [`MessageParts::encode`] wrote, borrowed, on the
/// rules of [`decode_message`]; `ex` not yet checked as JSON.
pub(super) struct SplitMessage<'a> {
    /// The change's kind.
    pub kind: &'a str,
    /// The topic.
    pub topic: Uuid,
    /// The message's id.
    pub id: &'a str,
    /// Its `ts` field.
    pub ts: i64,
    /// The sender.
    pub sender: Uuid,
    /// Its `ex`, as written.
    pub ex: &'a str,
}

/// [`decode_message`]'s reading of `text`, nothing built: the message
/// log's index stores a record's text as it is, and needs only its kind,
/// topic and id (a record's checksum vouches for the rest, which the
/// session checked before it appended it).
pub(super) fn split_message(text: &str) -> Option<SplitMessage<'_>> {
    /// A JSON string's text up to its closing quote, if nothing in it is
    /// escaped (`write_str` escapes only quotes, backslashes and control
    /// characters, so such text is the string itself); and what follows.
    fn plain(s: &str) -> Option<(&str, &str)> {
        let (text, rest) = s.split_once('"')?;
        (!text.bytes().any(|b| b == b'\\' || b < 0x20)).then_some((text, rest))
    }
    let (kind, rest) = plain(text.strip_prefix("{\"kind\":\"")?)?;
    let (topic, rest) = plain(rest.strip_prefix(",\"writes\":[],\"message\":{\"topic\":\"")?)?;
    let (id, rest) = plain(rest.strip_prefix(",\"id\":\"")?)?;
    let (ts_text, rest) = rest.strip_prefix(",\"ts\":")?.split_once(',')?;
    // As `itoa` writes it, and nothing else (no sign, zeros or `-0`).
    let ts: i64 = ts_text.parse().ok()?;
    if itoa::Buffer::new().format(ts) != ts_text {
        return None;
    }
    let (sender, rest) = plain(rest.strip_prefix("\"sender\":\"")?)?;
    let ex = rest.strip_prefix(",\"ex\":")?.strip_suffix("}}")?;
    Some(SplitMessage {
        kind,
        topic: Uuid::try_parse(topic).ok()?,
        id,
        ts,
        sender: Uuid::try_parse(sender).ok()?,
        ex,
    })
}

/// Records an event whose change is already encoded as `body` (an event
/// from a peer is stored as it came). Returns the event's rowid.
pub fn insert_body(tx: &Transaction<'_>, event: &Event, body: &str) -> Result<i64, Error> {
    let mut insert = tx.prepare_cached(INSERT_EVENT)?;
    insert_row(
        &mut insert,
        (&event.node, &event.incarnation),
        event.seq,
        event.hlc,
        &event.change,
        body,
    )
}

/// The statement [`insert_row`] runs.
pub(super) const INSERT_EVENT: &str =
    "INSERT INTO events (origin, incarnation, seq, hlc, kind, body, topic, message_id)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

/// [`insert_body`] through `insert`, [`INSERT_EVENT`] prepared once by a
/// caller that records many events (the message log's index: a cache
/// lookup per row was 2% of its time), for an event of `origin` (node,
/// incarnation).
pub(super) fn insert_row(
    insert: &mut rusqlite::Statement<'_>,
    origin: (&str, &str),
    seq: u64,
    hlc: u64,
    change: &Change,
    body: &str,
) -> Result<i64, Error> {
    let message = change.message.as_ref().map(|m| (m.topic, m.id.as_str()));
    insert_fields(insert, origin, (seq, hlc), &change.kind, message, body)
}

/// [`insert_row`] from the columns' values: the change's kind, and its
/// message's topic and id if it has one.
pub(super) fn insert_fields(
    insert: &mut rusqlite::Statement<'_>,
    origin: (&str, &str),
    (seq, hlc): (u64, u64),
    kind: &str,
    message: Option<(Uuid, &str)>,
    body: &str,
) -> Result<i64, Error> {
    let topic = message.map(|(topic, _)| UuidText::new(topic));
    Ok(insert.insert(params![
        origin.0,
        origin.1,
        seq as i64,
        hlc as i64,
        kind,
        body,
        topic.as_ref().map(UuidText::as_str),
        message.map(|(_, id)| id)
    ])?)
}

/// The node's clock as last persisted.
pub fn read_clock(tx: &Transaction<'_>) -> Result<u64, Error> {
    let last: Option<String> = tx
        .prepare_cached("SELECT value FROM node WHERE key = 'hlc'")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(last.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0))
}

/// Persists the node's clock.
pub fn write_clock(tx: &Transaction<'_>, hlc: u64) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO node (key, value) VALUES ('hlc', ?1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![hlc.to_string()])?;
    Ok(())
}

/// The highest seq of an origin this store holds or held: the version
/// vector entry, kept apart from the events so that pruning history never
/// moves it back (a reused seq would be taken for a duplicate by peers).
pub fn seen_seq(conn: &Connection, node: &str, incarnation: &str) -> Result<u64, Error> {
    let seq: Option<i64> = conn
        .prepare_cached("SELECT seq FROM vv WHERE origin = ?1 AND incarnation = ?2")?
        .query_row(params![node, incarnation], |r| r.get(0))
        .optional()?;
    Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
}

/// Raises an origin's version vector entry to `seq`.
pub fn set_seen_seq(
    tx: &Transaction<'_>,
    node: &str,
    incarnation: &str,
    seq: u64,
) -> Result<(), Error> {
    if seq == 0 {
        return Ok(());
    }
    tx.prepare_cached(
        "INSERT INTO vv (origin, incarnation, seq) VALUES (?1, ?2, ?3)
         ON CONFLICT (origin, incarnation) DO UPDATE SET seq = MAX(seq, excluded.seq)",
    )?
    .execute(params![node, incarnation, seq as i64])?;
    Ok(())
}

/// Folds a change's writes into the registers: each write wins only if its
/// `(hlc, origin)` is larger than the register's. Then, for a deleted
/// account the change touched (by this change or an earlier one, in
/// whatever order they arrived), removes its secrets from the log and the
/// registers (see [`super::redact`]). `rowid` is the event's own row, as
/// [`insert`] returned it; search rows go to `index`, which the caller
/// flushes before it commits.
pub fn apply(
    tx: &Transaction<'_>,
    index: &mut IndexQueue,
    rowid: i64,
    origin_key: &str,
    hlc: u64,
    change: &Change,
) -> Result<(), Error> {
    apply_as(tx, index, rowid, origin_key, hlc, change, Arrival::Stored)
}

/// How an event being applied reached this store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Minted here, in this transaction: no other event can refer to it
    /// yet (its message id is new and unguessable, and nobody has been
    /// told it), so nothing about it needs looking up.
    Minted,
    /// From a peer, or replayed: events about it may have come first.
    Stored,
    /// Minted here, as [`Arrival::Minted`], and indexed for search later
    /// by the search pass (the message log's index: `search.rs`, "behind").
    Behind,
}

/// [`apply`], told how the event arrived.
pub(super) fn apply_as(
    tx: &Transaction<'_>,
    index: &mut IndexQueue,
    rowid: i64,
    origin_key: &str,
    hlc: u64,
    change: &Change,
    arrival: Arrival,
) -> Result<(), Error> {
    if !change.writes.is_empty() {
        // Messages behind the search pass are indexed by the format their
        // topic had when they came, as those before them were.
        let format = |w: &crate::change::Write| {
            w.field == field::META_FORMAT && super::parse_entity("topic:", &w.entity).is_some()
        };
        if change.writes.iter().any(format) {
            super::search::catch_up(tx, index, usize::MAX)?;
        }
        // A write may change what the queue remembers (a topic's format),
        // even one that then fails half way.
        index.forget_formats();
        write_registers(tx, origin_key, hlc, change)?;
    }
    super::redact::after_apply(tx, change)?;
    super::tickets::after_apply(tx, origin_key, hlc, change)?;
    super::edit::settle(tx, index, rowid, change, arrival)
}

/// Folds `change`'s writes into the registers, last writer wins.
fn write_registers(
    tx: &Transaction<'_>,
    origin_key: &str,
    hlc: u64,
    change: &Change,
) -> Result<(), Error> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO registers (entity, field, value, lookup, hlc, origin) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (entity, field) DO UPDATE SET
            value = excluded.value, lookup = excluded.lookup, hlc = excluded.hlc, origin = excluded.origin
         WHERE (excluded.hlc, excluded.origin) > (registers.hlc, registers.origin)",
    )?;
    for w in &change.writes {
        let value = serde_json::to_string(&w.value).map_err(|e| Error::Corrupt(e.to_string()))?;
        stmt.execute(params![
            w.entity,
            w.field,
            value,
            lookup_key(&w.field, &w.value),
            hlc as i64,
            origin_key
        ])?;
    }
    Ok(())
}

/// The case-folded lookup key of fields that are searched by value (names).
fn lookup_key(field_name: &str, value: &serde_json::Value) -> Option<String> {
    match (field_name, value) {
        (field::NAME, serde_json::Value::String(s)) => Some(s.to_lowercase()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Write;
    use proptest::prelude::*;

    fn registers(
        conn: &rusqlite::Connection,
    ) -> Vec<(String, String, String, Option<String>, i64, String)> {
        let mut stmt = conn
            .prepare("SELECT entity, field, value, lookup, hlc, origin FROM registers WHERE entity != 'server' ORDER BY entity, field")
            .unwrap();
        stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    fn arb_event() -> impl Strategy<Value = (String, u64, Change)> {
        let write = (
            0u8..3,
            prop_oneof![Just("name"), Just("password"), Just("meta:x")],
            0u8..4,
        )
            .prop_map(|(e, f, v)| Write {
                entity: format!("account:{e}"),
                field: f.to_owned(),
                value: if v == 0 {
                    serde_json::Value::Null
                } else {
                    serde_json::Value::from(format!("V{v}"))
                },
            });
        (
            prop_oneof![Just("a/1"), Just("b/1"), Just("c/2")],
            0u64..6,
            proptest::collection::vec(write, 1..4),
        )
            .prop_map(|(origin, hlc, writes)| {
                (
                    origin.to_owned(),
                    hlc,
                    Change {
                        kind: "test".into(),
                        writes,
                        message: None,
                    },
                )
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn apply_in_any_order_gives_the_same_state(
            events in proptest::collection::vec(arb_event(), 1..24),
            seed in any::<u64>(),
        ) {
            // Two events never share (hlc, origin) in a real log: the clock
            // is strictly increasing per origin. Keep the first of each.
            let mut seen = std::collections::HashSet::new();
            let events: Vec<_> = events.into_iter().filter(|(o, h, _)| seen.insert((o.clone(), *h))).collect();
            let mut shuffled = events.clone();
            // Deterministic Fisher-Yates from the seed.
            let mut x = seed | 1;
            for i in (1..shuffled.len()).rev() {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                shuffled.swap(i, (x % (i as u64 + 1)) as usize);
            }
            let mut states = Vec::new();
            for order in [&events, &shuffled] {
                let dir = tempfile::tempdir().unwrap();
                let mut db = crate::store::Db::open(dir.path(), "t").unwrap();
                let tx = db.conn.transaction().unwrap();
                let mut index = IndexQueue::default();
                for (rowid, (origin, hlc, change)) in order.iter().enumerate() {
                    apply(&tx, &mut index, rowid as i64, origin, *hlc, change).unwrap();
                }
                index.flush(&tx).unwrap();
                tx.commit().unwrap();
                states.push(registers(&db.conn));
            }
            prop_assert_eq!(&states[0], &states[1]);
        }
    }

    fn arb_message_change() -> impl Strategy<Value = Change> {
        let ex = prop_oneof![
            Just("{}".to_owned()),
            Just(r#"{"body":"hi"}"#.to_owned()),
            Just(
                r#" { "body" : "a \" \\ \u00e9 \n", "n": 1.50e3, "x": [null, {"y": true}] } "#
                    .to_owned()
            ),
            "[a-z ]{0,40}".prop_map(|s| serde_json::json!({ "message": s }).to_string()),
        ];
        (
            prop_oneof![Just("message".to_owned()), any::<String>()],
            any::<u128>(),
            // Any text, or a UUID as sessions mint them.
            prop_oneof![
                any::<String>(),
                any::<u128>().prop_map(|u| uuid::Uuid::from_u128(u).to_string())
            ],
            any::<i64>(),
            any::<u128>(),
            ex,
        )
            .prop_map(|(kind, topic, id, ts, sender, ex)| Change {
                kind,
                writes: Vec::new(),
                message: Some(crate::change::Message {
                    topic: uuid::Uuid::from_u128(topic),
                    id,
                    ts,
                    sender: uuid::Uuid::from_u128(sender),
                    ex: crate::change::ExJson::from_text(ex).unwrap(),
                }),
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn a_change_is_stored_as_serde_writes_it(change in arb_message_change(), writes in any::<bool>()) {
            let mut change = change;
            if writes {
                // Not the message path: serde's own text.
                change.writes.push(Write { entity: "e".into(), field: "f".into(), value: 1.into() });
            }
            prop_assert_eq!(encode(&change).unwrap(), serde_json::to_string(&change).unwrap());
        }

        #[test]
        fn a_message_reads_back_without_serde_as_serde_reads_it(change in arb_message_change()) {
            let text = encode(&change).unwrap();
            let serde: Change = serde_json::from_str(&text).unwrap();
            // Escaped strings are left to serde; everything else is read
            // back, and as serde reads it.
            match decode_message(&text) {
                Some(fast) => prop_assert_eq!(
                    serde_json::to_string(&fast).unwrap(),
                    serde_json::to_string(&serde).unwrap()
                ),
                None => prop_assert!(text.contains('\\'), "not read back: {}", text),
            }
        }

        #[test]
        fn a_topic_and_id_read_at_their_places_are_the_messages(change in arb_message_change()) {
            let text = encode(&change).unwrap();
            let serde: Change = serde_json::from_str(&text).unwrap();
            let Some(m) = serde.message.as_ref() else {
                return Ok(());
            };
            let parsed = uuid::Uuid::try_parse(&m.id).ok();
            match message_topic_and_id(text.as_bytes()) {
                Some((topic, id)) => {
                    prop_assert_eq!(serde.kind.as_str(), Change::MESSAGE);
                    prop_assert_eq!(topic, m.topic);
                    prop_assert_eq!(Some(id), parsed);
                }
                None => prop_assert!(
                    serde.kind != Change::MESSAGE || parsed.is_none() || m.id.len() != 36,
                    "not read: {}", text
                ),
            }
        }
    }

    #[test]
    fn text_of_another_shape_is_left_to_serde() {
        let message = Change::message(crate::change::Message {
            topic: uuid::Uuid::nil(),
            id: "a".into(),
            ts: 1,
            sender: uuid::Uuid::nil(),
            ex: crate::change::ExJson::empty(),
        });
        let text = encode(&message).unwrap();
        assert!(decode_message(&text).is_some());
        for other in [
            text.replacen("\"ts\":1", "\"ts\":\"1\"", 1),
            text.replacen("\"writes\":[]", "\"writes\":[1]", 1),
            text.replacen("}}", "}", 1),
            text.replacen("00000000-0000", "not-a-uuid-0000", 1),
            text.replacen("\"ts\":1", "\"ts\":+1", 1),
            text.replacen("\"ts\":1", "\"ts\":01", 1),
            text.replacen("\"ts\":1", "\"ts\":-0", 1),
            text.replacen("\"id\":\"a\"", "\"id\":\"a\tb\"", 1),
            serde_json::to_string(&serde_json::json!({"kind": "message"})).unwrap(),
        ] {
            assert!(decode_message(&other).is_none(), "{other}");
        }
    }

    #[test]
    fn clock_never_goes_backwards() {
        assert_eq!(next_hlc(0, 5), 5 << 16);
        assert_eq!(next_hlc(5 << 16, 5), (5 << 16) + 1);
        // Wall clock stepped back: keep counting from the last value.
        assert_eq!(next_hlc(9 << 16, 5), (9 << 16) + 1);
    }
}
