//! Blocks: this node's kept messages as the message log holds them, one
//! SQLite row per topic per index transaction (and per segment), pointing
//! into the log's segments.
//!
//! A row per message (its body, its primary key, a topic index and an id
//! index) cost about 28,000 instructions of the store thread per kept
//! message; a slim row without the body still 17,000 (three B-tree inserts
//! and a statement). A block is one insert for all of a topic's messages in
//! a transaction, about 15 bytes a message in its `entries` blob (40 in
//! the fixed form first written; bench/README.md, twenty-third and
//! twenty-seventh rounds). The bodies stay in the log, which keeps
//! a segment while any block points into it ([`oldest_segment`]).
//!
//! A block's entries, packed (written since 2026-12-05): a tag byte
//! (`0xb2`), the number of entries as a LEB128 varint, then per entry
//! the differences from the entry before (from zero for the first) of its
//! seq, its clock, its offset in the segment and its id's high 64 bits,
//! each a LEB128 varint of the wrapping difference, and the id's low 64
//! bits as they are (8 bytes, big-endian as a UUID's bytes are): about 15
//! bytes a message, where the earlier fixed form took 40. Within a block
//! each of those rises: the log's clock and offsets rise with each record,
//! and a kept message's id is minted under the log's lock, in seq order
//! (`session/message.rs`); the low half of a UUIDv7 is random. A packed
//! blob whose length is a multiple of 40 gets one more byte, so that the
//! fixed form (entries of 40 bytes: seq, clock and offset, 8 bytes each,
//! little-endian, then the id's 16), which earlier builds wrote and which
//! is read as before, is told by its length. Within a topic, blocks do not
//! overlap in clock or in id.
//!
//! A message is named by a [`Key`]: an `events` row's rowid negated (the
//! search index's rowids since it was made), or a block's rowid and the
//! entry's index in it, `rowid << 16 | index`, which is positive.
//!
//! Retention drops a prefix of a topic's history, recorded as the topic's
//! floor (`pruned`): a block wholly under it is deleted, and readers skip
//! the entries of a block that straddles it.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::Error;
use super::log::Origin;
use super::segment::{self, Position};
use crate::change::{Change, ExJson};

/// Bytes of one entry in a block's blob in the fixed form of builds before
/// 2026-12-05 (the packed form is told from it by its length).
pub const ENTRY_LEN: usize = 40;

/// The first byte of a packed blob.
const PACKED: u8 = 0xb2;

/// Entries a block holds at most: an entry's index is 16 bits of its key.
pub const MAX_ENTRIES: usize = 1 << 16;

/// A kept message's name: `-rowid` for an `events` row, `rowid << 16 |
/// index` for an entry of a block.
pub type Key = i64;

/// Where a key points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// An `events` row.
    Row(i64),
    /// Entry `index` of the block at `rowid`.
    Block {
        /// The block's rowid.
        rowid: i64,
        /// The entry's index.
        index: usize,
    },
}

/// The key of `place`.
pub fn key(place: Place) -> Key {
    match place {
        Place::Row(rowid) => -rowid,
        Place::Block { rowid, index } => (rowid << 16) | (index as i64 & 0xffff),
    }
}

/// Where `key` points.
pub fn place(key: Key) -> Place {
    if key <= 0 {
        Place::Row(-key)
    } else {
        Place::Block {
            rowid: key >> 16,
            index: (key & 0xffff) as usize,
        }
    }
}

/// One kept message of a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Its seq in the message origin.
    pub seq: u64,
    /// Its clock.
    pub hlc: u64,
    /// Its record's offset in the block's segment.
    pub offset: u64,
    /// Its id.
    pub id: Uuid,
}

impl Entry {
    /// What the packed form stores: the four words it codes as
    /// differences (seq, clock, offset, the id's high half), and the id's
    /// low half as it is.
    fn packed(&self) -> ([u64; 4], u64) {
        let id = self.id.as_u128();
        (
            [self.seq, self.hlc, self.offset, (id >> 64) as u64],
            id as u64,
        )
    }

    /// The entry [`Entry::packed`] gave `words` and `lo` for.
    fn unpacked([seq, hlc, offset, hi]: [u64; 4], lo: u64) -> Self {
        Entry {
            seq,
            hlc,
            offset,
            id: Uuid::from_u128((u128::from(hi) << 64) | u128::from(lo)),
        }
    }

    /// An entry from its [`ENTRY_LEN`] bytes in the fixed form (a shorter
    /// slice reads as zeros where it ends).
    fn decode(bytes: &[u8]) -> Self {
        let word = |i: usize| {
            bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|w| <[u8; 8]>::try_from(w).ok())
                .map_or(0, u64::from_le_bytes)
        };
        let id = bytes
            .get(24..ENTRY_LEN)
            .and_then(|b| <[u8; 16]>::try_from(b).ok())
            .unwrap_or_default();
        Entry {
            seq: word(0),
            hlc: word(1),
            offset: word(2),
            id: Uuid::from_bytes(id),
        }
    }
}

/// A block as read back.
#[derive(Debug, Clone)]
pub struct Block {
    /// Its rowid.
    pub rowid: i64,
    /// Its topic.
    pub topic: Uuid,
    /// The segment its records are in.
    pub segment: u64,
    entries: Vec<Entry>,
}

impl Block {
    /// Its entries, in seq order, with their indexes.
    pub fn entries(&self) -> impl DoubleEndedIterator<Item = (usize, Entry)> + '_ {
        self.entries.iter().copied().enumerate()
    }

    /// Entry `index`.
    pub fn entry(&self, index: usize) -> Option<Entry> {
        self.entries.get(index).copied()
    }

    /// Where entry `e`'s record is in the log.
    pub fn at(&self, e: &Entry) -> Position {
        Position {
            segment: self.segment,
            offset: e.offset,
        }
    }
}

/// The columns [`Block`] is read from.
pub const COLUMNS: &str = "rowid, topic, segment, entries";

/// A [`Block`] from a row of [`COLUMNS`].
pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Block> {
    let topic: String = r.get(1)?;
    Ok(Block {
        rowid: r.get(0)?,
        topic: Uuid::parse_str(&topic).unwrap_or_default(),
        segment: u64::try_from(r.get::<_, i64>(2)?).unwrap_or_default(),
        entries: decode_entries(r.get_ref(3)?.as_blob()?),
    })
}

/// A block's blob in the packed form, `PACKED` first (see the module's
/// doc).
fn encode_entries(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + entries.len() * 16);
    out.push(PACKED);
    put_varint(&mut out, entries.len() as u64);
    let mut prev = [0u64; 4];
    for e in entries {
        let (words, lo) = e.packed();
        for (word, before) in words.iter().zip(prev) {
            put_varint(&mut out, word.wrapping_sub(before));
        }
        out.extend_from_slice(&lo.to_be_bytes());
        prev = words;
    }
    if out.len() % ENTRY_LEN == 0 {
        // Not to be read as the fixed form: one byte past the entries.
        out.push(0);
    }
    out
}

/// A block's entries from its blob, in either form. A packed blob that
/// ends early (damage) gives the entries before the damage.
fn decode_entries(blob: &[u8]) -> Vec<Entry> {
    if blob.len() % ENTRY_LEN == 0 || blob.first() != Some(&PACKED) {
        return blob.chunks_exact(ENTRY_LEN).map(Entry::decode).collect();
    }
    let mut rest = blob.get(1..).unwrap_or_default();
    let Some(count) = take_varint(&mut rest) else {
        return Vec::new();
    };
    // Each entry takes at least 12 bytes: a count past that is damage.
    let mut entries = Vec::with_capacity(usize::try_from(count).unwrap_or(0).min(rest.len() / 12));
    let mut prev = [0u64; 4];
    for _ in 0..count {
        let Some((words, lo)) = take_packed(&mut rest, prev) else {
            break;
        };
        entries.push(Entry::unpacked(words, lo));
        prev = words;
    }
    entries
}

/// One packed entry's words (the differences from `prev` added back) and
/// low half, from the front of `bytes`; `None` if they end first.
fn take_packed(bytes: &mut &[u8], prev: [u64; 4]) -> Option<([u64; 4], u64)> {
    let mut words = prev;
    for word in &mut words {
        *word = word.wrapping_add(take_varint(bytes)?);
    }
    let (lo, after) = bytes.split_first_chunk::<8>()?;
    *bytes = after;
    Some((words, u64::from_be_bytes(*lo)))
}

/// Appends `v` as a LEB128 varint.
fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Takes a LEB128 varint from the front of `bytes`; `None` if it ends
/// first or runs past 64 bits.
fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        let bits = u64::from(b & 0x7f);
        let shift = 7 * i as u32;
        if shift == 63 && bits > 1 {
            return None;
        }
        v |= bits << shift;
        if b & 0x80 == 0 {
            *bytes = bytes.get(i + 1..).unwrap_or_default();
            return Some(v);
        }
    }
    None
}

/// The block at `rowid`, if any.
pub fn block(conn: &Connection, rowid: i64) -> Result<Option<Block>, Error> {
    Ok(conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM blocks WHERE rowid = ?1"))?
        .query_row(params![rowid], from_row)
        .optional()?)
}

/// The block of `topic` that holds id `id`, if one does, and the entry.
pub fn find_id(conn: &Connection, topic: Uuid, id: Uuid) -> Result<Option<(Block, usize)>, Error> {
    // The first block whose last id is at or past it: a topic's blocks
    // take only ids above those before them (`message_index.rs`).
    let block = conn
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM blocks WHERE topic = ?1 AND last_id >= ?2
             ORDER BY last_id LIMIT 1"
        ))?
        .query_row(params![topic.to_string(), &id.as_bytes()[..]], from_row)
        .optional()?;
    Ok(block.and_then(|b| {
        let index = b.entries().find(|(_, e)| e.id == id)?.0;
        Some((b, index))
    }))
}

/// The highest id `topic`'s blocks hold, if it has any: a block takes
/// only ids above it ([`find_id`]).
pub fn last_id(conn: &Connection, topic: Uuid) -> Result<Option<Uuid>, Error> {
    let id: Option<Vec<u8>> = conn
        .prepare_cached("SELECT MAX(last_id) FROM blocks WHERE topic = ?1")?
        .query_row(params![topic.to_string()], |r| r.get(0))?;
    Ok(id.and_then(|b| Uuid::from_slice(&b).ok()))
}

/// The kept message `id` of `topic` in a block of the message origin
/// (which `messages` gives, asked only once a block holds the id), unless
/// retention has pruned it (or `id` is no UUID, which no block holds).
pub fn live_id(
    conn: &Connection,
    topic: Uuid,
    id: &str,
    messages: impl FnOnce() -> Result<Origin, Error>,
) -> Result<Option<Found>, Error> {
    let Ok(id) = Uuid::try_parse(id) else {
        return Ok(None);
    };
    let Some((block, index)) = find_id(conn, topic, id)? else {
        return Ok(None);
    };
    let Some(entry) = block.entry(index) else {
        return Ok(None);
    };
    let floor = floor(conn, topic)?;
    let messages = messages()?;
    if !above(
        floor.as_ref(),
        (&messages.node, &messages.incarnation),
        &entry,
    ) {
        return Ok(None);
    }
    Ok(Some(Found {
        key: key(Place::Block {
            rowid: block.rowid,
            index,
        }),
        topic,
        at: block.at(&entry),
        entry,
    }))
}

/// Builds a transaction's blocks: one per topic and segment, entries in
/// seq order.
#[derive(Debug, Default)]
pub struct Builder {
    open: foldhash::HashMap<(Uuid, u64), usize>,
    blocks: Vec<Building>,
}

#[derive(Debug)]
struct Building {
    topic: Uuid,
    segment: u64,
    first: Entry,
    last: Entry,
    last_id: Uuid,
    entries: Vec<Entry>,
}

impl Builder {
    /// Adds a kept message of `topic` whose record is at `at`.
    pub fn add(&mut self, topic: Uuid, at: Position, seq: u64, hlc: u64, id: Uuid) {
        let e = Entry {
            seq,
            hlc,
            offset: at.offset,
            id,
        };
        let key = (topic, at.segment);
        let open = self.open.get(&key).copied().filter(|&i| {
            self.blocks
                .get(i)
                .is_some_and(|b| b.entries.len() < MAX_ENTRIES)
        });
        let i = match open {
            Some(i) => i,
            None => {
                self.blocks.push(Building {
                    topic,
                    segment: at.segment,
                    first: e,
                    last: e,
                    last_id: id,
                    entries: Vec::with_capacity(64),
                });
                let i = self.blocks.len() - 1;
                self.open.insert(key, i);
                i
            }
        };
        if let Some(b) = self.blocks.get_mut(i) {
            b.entries.push(e);
            b.last = e;
            b.last_id = b.last_id.max(id);
        }
    }

    /// Writes the blocks, in the order of their first seq, of the node
    /// `node`.
    pub fn write(self, tx: &rusqlite::Transaction<'_>, node: &str) -> Result<(), Error> {
        if self.blocks.is_empty() {
            return Ok(());
        }
        record_node(tx, node)?;
        let mut insert = tx.prepare_cached(
            "INSERT INTO blocks (batch, topic, segment, first_seq, last_seq, first_hlc, last_hlc, last_id, entries)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        // Blocks are made in the order of their first seq.
        let batch = self.blocks.first().map_or(0, |b| sql_int(b.first.seq));
        for b in &self.blocks {
            insert.execute(params![
                batch,
                &*b.topic.hyphenated().encode_lower(&mut text),
                sql_int(b.segment),
                sql_int(b.first.seq),
                sql_int(b.last.seq),
                sql_int(b.first.hlc),
                sql_int(b.last.hlc),
                &b.last_id.as_bytes()[..],
                &encode_entries(&b.entries),
            ])?;
        }
        Ok(())
    }
}

/// The `node` table's key for the node name this store's blocks were
/// written under.
const BLOCKS_NODE: &str = "blocks_node";

/// Records `node` as the name this store's blocks are written under, if
/// none is yet (once a transaction that writes blocks).
fn record_node(tx: &rusqlite::Transaction<'_>, node: &str) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO node (key, value) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING",
    )?
    .execute(params![BLOCKS_NODE, node])?;
    Ok(())
}

/// Refuses a store whose blocks were written under another node name
/// ([`Error::Renamed`]): blocks record no origin, and readers give them
/// the node's own.
pub fn check_node(conn: &Connection, node: &str) -> Result<(), Error> {
    let kept: Option<String> = conn
        .prepare_cached("SELECT value FROM node WHERE key = ?1")?
        .query_row(params![BLOCKS_NODE], |r| r.get(0))
        .optional()?;
    match kept {
        Some(kept) if kept != node => Err(Error::Renamed {
            kept,
            node: node.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// A u64 as SQLite's integer (the log's seqs, clocks and offsets are far
/// below `i64::MAX`).
fn sql_int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The oldest segment a block points into, if any block does: the log
/// keeps it and every later one.
pub fn oldest_segment(conn: &Connection) -> Result<Option<u64>, Error> {
    // Blocks are written in log order, and retention deletes, never moves.
    let s: Option<i64> = conn
        .prepare_cached("SELECT segment FROM blocks ORDER BY rowid LIMIT 1")?
        .query_row([], |r| r.get(0))
        .optional()?;
    Ok(s.and_then(|s| u64::try_from(s).ok()))
}

/// A position in history order: clock, origin, incarnation, seq.
pub type HistoryPos = (i64, String, String, i64);

/// Every topic's retention floor: positions at or under it are pruned.
pub fn floors(conn: &Connection) -> Result<HashMap<Uuid, HistoryPos>, Error> {
    let mut stmt =
        conn.prepare_cached("SELECT topic, hlc, origin, incarnation, seq FROM pruned")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
        ))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (topic, floor) = row?;
        if let Ok(topic) = Uuid::parse_str(&topic) {
            out.insert(topic, floor);
        }
    }
    Ok(out)
}

/// `topic`'s retention floor, if retention has pruned it.
pub fn floor(conn: &Connection, topic: Uuid) -> Result<Option<HistoryPos>, Error> {
    Ok(conn
        .prepare_cached("SELECT hlc, origin, incarnation, seq FROM pruned WHERE topic = ?1")?
        .query_row(params![topic.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .optional()?)
}

/// Raises `topic`'s retention floor to `to` (never lowers it).
pub fn raise_floor(conn: &Connection, topic: Uuid, to: &HistoryPos) -> Result<(), Error> {
    if floor(conn, topic)?.is_some_and(|f| f >= *to) {
        return Ok(());
    }
    conn.prepare_cached(
        "INSERT INTO pruned (topic, hlc, origin, incarnation, seq) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (topic) DO UPDATE SET hlc = excluded.hlc, origin = excluded.origin,
            incarnation = excluded.incarnation, seq = excluded.seq",
    )?
    .execute(params![topic.to_string(), to.0, to.1, to.2, to.3])?;
    Ok(())
}

/// Whether an entry of the message `origin` (node, incarnation) is above
/// `floor`, so not pruned.
pub fn above(floor: Option<&HistoryPos>, origin: (&str, &str), e: &Entry) -> bool {
    floor.is_none_or(|(hlc, node, incarnation, seq)| {
        (sql_int(e.hlc), origin.0, origin.1, sql_int(e.seq))
            > (*hlc, node.as_str(), incarnation.as_str(), *seq)
    })
}

/// A block's entry, with its key.
#[derive(Debug, Clone, Copy)]
pub struct Found {
    /// Its key.
    pub key: Key,
    /// Its topic.
    pub topic: Uuid,
    /// Where its record is in the log.
    pub at: Position,
    /// The entry.
    pub entry: Entry,
}

/// The SQL condition on `blocks` that picks the batch holding the seq
/// after `?1` and every later one: a transaction's blocks hold its seqs,
/// batch by batch in seq order, so no earlier block holds one above `?1`.
macro_rules! from_batch_of {
    () => {
        "batch >= COALESCE((SELECT batch FROM blocks WHERE batch <= ?1
                            ORDER BY batch DESC LIMIT 1), 0)"
    };
}

/// Whether any block holds an entry of seq above `?1` (the search pass's
/// place in the message origin).
pub const ANY_AFTER: &str = concat!(
    "SELECT EXISTS (SELECT 1 FROM blocks WHERE ",
    from_batch_of!(),
    " AND last_seq > ?1)"
);

/// The entries of seq above `after`, in seq order, from whole batches
/// until at least `max` are found (or there are no more): the search pass
/// and mesh catch-up read the message origin so. Pruned ones are left
/// out, and so are the message origin's rows (ids no session mints),
/// which `events` holds.
pub fn after(
    conn: &Connection,
    origin: (&str, &str),
    after: u64,
    max: usize,
) -> Result<Vec<Found>, Error> {
    let floors = floors(conn)?;
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS}, batch FROM blocks WHERE {} ORDER BY batch, rowid",
        from_batch_of!()
    ))?;
    let mut rows = stmt.query(params![sql_int(after)])?;
    let mut out = Vec::new();
    let mut batch = None;
    while let Some(row) = rows.next()? {
        let this: i64 = row.get(4)?;
        // Only at a batch's end: seqs interleave across a batch's blocks.
        if batch != Some(this) && out.len() >= max {
            break;
        }
        batch = Some(this);
        let b = from_row(row)?;
        let floor = floors.get(&b.topic);
        for (index, e) in b.entries() {
            if e.seq > after && above(floor, origin, &e) {
                out.push(Found {
                    key: key(Place::Block {
                        rowid: b.rowid,
                        index,
                    }),
                    topic: b.topic,
                    at: b.at(&e),
                    entry: e,
                });
            }
        }
    }
    out.sort_unstable_by_key(|f| f.entry.seq);
    Ok(out)
}

/// The entry at `key`, if its block is still held.
pub fn find_key(conn: &Connection, key: Key) -> Result<Option<Found>, Error> {
    let Place::Block { rowid, index } = place(key) else {
        return Ok(None);
    };
    let Some(b) = block(conn, rowid)? else {
        return Ok(None);
    };
    Ok(b.entry(index).map(|entry| Found {
        key,
        topic: b.topic,
        at: b.at(&entry),
        entry,
    }))
}

/// A kept message's record body as the change it encodes.
pub fn change(body: &[u8]) -> Result<Change, Error> {
    let mut change = super::record::change(body)?;
    // A redaction leaves `{`, spaces and `}` in the record.
    if let Some(m) = change.message.as_mut().filter(|m| m.ex.is_empty()) {
        m.ex = ExJson::empty();
    }
    Ok(change)
}

/// What a write transaction on this thread reads kept messages with.
struct Scope {
    log: Arc<segment::Reader>,
    messages: Origin,
}

thread_local! {
    /// The store whose write transaction runs on this thread ([`with_log`]).
    static SCOPE: RefCell<Option<Scope>> = const { RefCell::new(None) };
}

/// Runs `f` (a write transaction's work) with `log` as the message log
/// and `messages` as the message origin that [`log`] and [`own`] give:
/// edits, redactions and retention reach a kept message's record from deep
/// in the fold of changes, whose functions take a transaction and nothing
/// of the store's.
pub fn with_log<T>(log: &Arc<segment::Reader>, messages: &Origin, f: impl FnOnce() -> T) -> T {
    let scope = Scope {
        log: Arc::clone(log),
        messages: messages.clone(),
    };
    let before = SCOPE.with(|l| l.replace(Some(scope)));
    let out = f();
    SCOPE.with(|l| *l.borrow_mut() = before);
    out
}

fn outside() -> Error {
    Error::Corrupt("a kept message's record read outside the store's writes".into())
}

/// The message log of the write transaction running on this thread.
pub fn log() -> Result<Arc<segment::Reader>, Error> {
    SCOPE.with(|l| {
        l.borrow()
            .as_ref()
            .map(|s| Arc::clone(&s.log))
            .ok_or_else(outside)
    })
}

/// The message origin of the write transaction running on this thread.
pub fn own() -> Result<Origin, Error> {
    SCOPE.with(|l| {
        l.borrow()
            .as_ref()
            .map(|s| s.messages.clone())
            .ok_or_else(outside)
    })
}

/// The record of `f` as the change it encodes, as stored (its message's
/// `ts` is 0: the clock is its time).
pub fn read_change(log: &segment::Reader, f: &Found) -> Result<Change, Error> {
    change(&checked(log.read(f.at), f)?.body)
}

/// The records of `found` from the log, in order, each checked to be its
/// entry's seq: read together, a run of nearby records with one read
/// ([`segment::Reader::read_many`]; a history page or a peer's catch-up of
/// a burst's messages, whose pages are mostly no longer in the cache).
pub fn read_records<'f>(
    log: &segment::Reader,
    found: impl IntoIterator<Item = &'f Found>,
) -> Vec<Result<segment::Stored, Error>> {
    let found: Vec<&Found> = found.into_iter().collect();
    let at: Vec<segment::Position> = found.iter().map(|f| f.at).collect();
    log.read_many(&at)
        .into_iter()
        .zip(found)
        .map(|(read, f)| checked(read, f))
        .collect()
}

/// `read`, the record at `f`'s place, if it is `f`'s seq.
fn checked(
    read: Result<segment::Stored, segment::Error>,
    f: &Found,
) -> Result<segment::Stored, Error> {
    let stored = read?;
    if stored.seq != f.entry.seq {
        return Err(Error::Corrupt(format!(
            "the message log holds seq {} where a block says {} (segment {}, offset {})",
            stored.seq, f.entry.seq, f.at.segment, f.at.offset
        )));
    }
    Ok(stored)
}

/// Blocks read at a time by a [`Walk`].
const WALK_BLOCKS: i64 = 16;

/// A topic's block entries in history order from a clock, oldest first or
/// newest first, read a few blocks at a time: a history page, retention's
/// count. Pruned entries are not left out (the caller knows the floor).
pub struct Walk<'c> {
    conn: &'c Connection,
    topic: String,
    forward: bool,
    /// The last block's `last_hlc` read so far.
    cursor: i64,
    /// Whether the backward walk has read the block that holds `from`.
    started: bool,
    from: i64,
    ready: std::collections::VecDeque<Found>,
    done: bool,
}

impl<'c> Walk<'c> {
    /// Entries of `topic` from clock `from` on (`forward`: at or after it,
    /// oldest first), or back from it (at or before it, newest first).
    pub fn new(conn: &'c Connection, topic: Uuid, from: i64, forward: bool) -> Self {
        Walk {
            conn,
            topic: topic.to_string(),
            forward,
            cursor: if forward {
                from.saturating_sub(1)
            } else {
                from
            },
            started: forward,
            from,
            ready: std::collections::VecDeque::new(),
            done: false,
        }
    }

    fn fill(&mut self) -> Result<(), Error> {
        let first = !self.started;
        let (sql, args): (String, (i64, i64)) = if first {
            // The block holding `from` (or the first after it), whose
            // entries before it come first going back.
            self.started = true;
            (
                format!(
                    "SELECT {COLUMNS}, last_hlc FROM blocks WHERE topic = ?1 AND last_hlc >= ?2
                     ORDER BY last_hlc ASC LIMIT ?3"
                ),
                (self.from, 1),
            )
        } else if self.forward {
            (
                format!(
                    "SELECT {COLUMNS}, last_hlc FROM blocks WHERE topic = ?1 AND last_hlc > ?2
                     ORDER BY last_hlc ASC LIMIT ?3"
                ),
                (self.cursor, WALK_BLOCKS),
            )
        } else {
            (
                format!(
                    "SELECT {COLUMNS}, last_hlc FROM blocks WHERE topic = ?1 AND last_hlc < ?2
                     ORDER BY last_hlc DESC LIMIT ?3"
                ),
                (self.cursor, WALK_BLOCKS),
            )
        };
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let mut rows = stmt.query(params![self.topic, args.0, args.1])?;
        let mut read = 0;
        while let Some(row) = rows.next()? {
            read += 1;
            let b = from_row(row)?;
            let last: i64 = row.get(4)?;
            if !first {
                self.cursor = last;
            }
            let found = |(index, entry): (usize, Entry)| Found {
                key: key(Place::Block {
                    rowid: b.rowid,
                    index,
                }),
                topic: b.topic,
                at: b.at(&entry),
                entry,
            };
            if self.forward {
                self.ready.extend(b.entries().map(found));
            } else {
                self.ready.extend(b.entries().rev().map(found));
            }
        }
        // The first step back reads one block; an empty read then is not
        // the end.
        if read == 0 && !first {
            self.done = true;
        }
        Ok(())
    }

    /// The next entry, if any.
    pub fn next_entry(&mut self) -> Result<Option<Found>, Error> {
        while self.ready.is_empty() && !self.done {
            self.fill()?;
        }
        Ok(self.ready.pop_front())
    }
}

/// Journals a rewrite of the record of `f` to `body` (its length), which
/// [`apply_rewrites`] makes once the transaction has committed.
pub fn journal_rewrite(conn: &Connection, f: &Found, body: &[u8]) -> Result<(), Error> {
    conn.prepare_cached(
        "INSERT INTO rewrites (segment, offset, seq, hlc, body) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (segment, offset) DO UPDATE SET body = excluded.body",
    )?
    .execute(params![
        sql_int(f.at.segment),
        sql_int(f.at.offset),
        sql_int(f.entry.seq),
        sql_int(f.entry.hlc),
        body
    ])?;
    Ok(())
}

/// Whether the journal holds a rewrite not yet made.
pub fn rewrites_pending(conn: &Connection) -> Result<bool, Error> {
    Ok(conn
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM rewrites)")?
        .query_row([], |r| r.get(0))?)
}

/// Makes the rewrites the journal holds, each synced before its entry
/// goes: after a commit that journaled some, and at open (before the log
/// checks its last segment) for those a crash left or tore. A record whose
/// segment retention has removed needs none.
pub fn apply_rewrites(conn: &Connection, log: &segment::Reader) -> Result<usize, Error> {
    let pending: Vec<(i64, i64, i64, i64, Vec<u8>)> = {
        let mut stmt =
            conn.prepare_cached("SELECT segment, offset, seq, hlc, body FROM rewrites")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?;
        rows.collect::<Result<_, _>>()?
    };
    let as_u64 = |v: i64| u64::try_from(v).unwrap_or_default();
    for (segment, offset, seq, hlc, body) in &pending {
        let at = Position {
            segment: as_u64(*segment),
            offset: as_u64(*offset),
        };
        match log.redo(at, (as_u64(*seq), as_u64(*hlc)), body) {
            Ok(()) => {}
            Err(segment::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            // Not the record journaled (its length differs, or the place
            // is no record's): nothing to redo there, and trying again at
            // every commit would not change that.
            Err(e @ (segment::Error::Resized { .. } | segment::Error::Corrupt { .. })) => {
                tracing::error!(error = %e, segment, offset,
                    "message log: a journaled redaction does not fit its record; dropped");
            }
            Err(e) => return Err(e.into()),
        }
        conn.prepare_cached("DELETE FROM rewrites WHERE segment = ?1 AND offset = ?2")?
            .execute(params![segment, offset])?;
    }
    Ok(pending.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::edit::Redaction;
    use crate::store::history::Cursor;
    use crate::store::{MESSAGE_LOG_DIR, Store};
    use crate::store::{log, record};

    /// Keeps a message `{"body": text}` in `topic` through the store's
    /// message log, its id minted under the log's lock and its record
    /// binary, as a session's are; returns the id once the log has synced
    /// it.
    async fn keep(store: &Store, topic: Uuid, text: &str) -> String {
        keep_as(store, topic, text, false).await
    }

    /// [`keep`], the record the text an earlier build wrote.
    async fn keep_text(store: &Store, topic: Uuid, text: &str) -> String {
        keep_as(store, topic, text, true).await
    }

    async fn keep_as(store: &Store, topic: Uuid, text: &str, as_text: bool) -> String {
        let log = store.messages();
        let mut minted = String::new();
        let e = log
            .append(crate::proto::id::now_ms(), |_, out| {
                let id = crate::proto::id::uuid_at(crate::proto::id::now_ms());
                minted = id.to_string();
                if as_text {
                    out.extend_from_slice(&log::text_message(topic, Uuid::nil(), &minted, text));
                } else {
                    let ex = serde_json::json!({ "body": text }).to_string();
                    let kept = record::Kept {
                        topic,
                        id,
                        sender: Uuid::nil(),
                        ts: 0,
                        ex: &ex,
                    };
                    kept.encode_into(out);
                }
            })
            .expect("append");
        log.wait_synced(e.seq).await.expect("synced");
        minted
    }

    async fn page(
        store: &Store,
        topic: Uuid,
        before: Option<&str>,
        after: Option<&str>,
        limit: usize,
    ) -> (Vec<String>, bool) {
        let before = before.map(|b| Cursor::Id(b.to_owned()));
        let after = after.map(|a| Cursor::Id(a.to_owned()));
        let page = store
            .read(move |db| db.history(topic, before.as_ref(), after.as_ref(), limit))
            .await
            .expect("history");
        (page.messages.into_iter().map(|m| m.id).collect(), page.more)
    }

    /// Rows of the `blocks` table, and those of `topic`.
    async fn blocks(store: &Store, topic: Uuid) -> (i64, i64) {
        store
            .read(move |db| {
                let count = |sql: &str| -> rusqlite::Result<i64> {
                    db.conn
                        .query_row(sql, params![topic.to_string()], |r| r.get(0))
                };
                Ok((
                    count("SELECT COUNT(*) FROM blocks WHERE ?1 IS NOT NULL")?,
                    count("SELECT COUNT(*) FROM blocks WHERE topic = ?1")?,
                ))
            })
            .await
            .expect("count")
    }

    /// History pages over messages held in blocks (several index
    /// transactions, two topics interleaved) read as rows did: both ways,
    /// between id cursors, with `more`.
    #[tokio::test]
    async fn history_pages_over_blocks() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let (t, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut ids = Vec::new();
        for n in 0..12 {
            ids.push(keep(&store, t, &format!("m{n}")).await);
            keep(&store, other, "x").await;
        }
        assert!(
            blocks(&store, t).await.0 >= 2,
            "one block per topic at least"
        );
        let (latest, more) = page(&store, t, None, None, 3).await;
        assert_eq!(latest, ids[9..12]);
        assert!(more);
        let (before, _) = page(&store, t, Some(&ids[7]), None, 3).await;
        assert_eq!(before, ids[4..7]);
        let (after, more) = page(&store, t, None, Some(&ids[7]), 10).await;
        assert_eq!(after, ids[8..12]);
        assert!(!more);
        let (between, _) = page(&store, t, Some(&ids[5]), Some(&ids[1]), 10).await;
        assert_eq!(between, ids[2..5]);
        // An id of another topic, or none at all, names nothing here.
        let (stranger, _) = page(&store, t, Some(&Uuid::now_v7().to_string()), None, 3).await;
        assert!(stranger.is_empty());
        let (all, _) = page(&store, other, None, None, 100).await;
        assert_eq!(all.len(), 12);
        let id = ids[3].clone();
        let kept = store
            .read(move |db| db.kept_message(t, &id))
            .await
            .expect("kept")
            .expect("found");
        assert_eq!(kept.ex.get(), r#"{"body":"m3"}"#);
        assert!(kept.ts > 0);
        store.close().await;
    }

    /// A kept message whose record in the log is damaged is left out of
    /// history pages (and logged), not failing them; `more` still says a
    /// page was cut.
    #[tokio::test]
    async fn a_damaged_record_is_left_out_of_history_pages() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let t = Uuid::now_v7();
        let mut ids = Vec::new();
        for n in 0..6 {
            let text = if n == 4 {
                "flip-me".to_owned()
            } else {
                format!("m{n}")
            };
            ids.push(keep(&store, t, &text).await);
        }
        let (all, _) = page(&store, t, None, None, 10).await;
        assert_eq!(all, ids);
        let segment = std::fs::read_dir(dir.path().join("messages"))
            .expect("log dir")
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "seg"))
            .expect("a segment");
        let bytes = std::fs::read(&segment).expect("segment");
        let at = bytes
            .windows(7)
            .position(|w| w == b"flip-me")
            .expect("the text in the log");
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .expect("open");
        std::os::unix::fs::FileExt::write_all_at(&file, b"F", at as u64).expect("flip");
        let (latest, more) = page(&store, t, None, None, 3).await;
        assert_eq!(latest, [ids[2].clone(), ids[3].clone(), ids[5].clone()]);
        assert!(more);
        let (rest, more) = page(&store, t, Some(&ids[2]), None, 3).await;
        assert_eq!(rest, ids[0..2]);
        assert!(!more);
        let (after, more) = page(&store, t, None, Some(&ids[3]), 10).await;
        assert_eq!(after, [ids[5].clone()]);
        assert!(!more);
        store.close().await;
    }

    /// Retention over blocks: by count, the newest are left and the count
    /// is right; pruned messages are gone from history, lookups and pages,
    /// and wholly pruned blocks are deleted.
    #[tokio::test]
    async fn retention_prunes_blocks_by_count() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let (t, other) = (Uuid::now_v7(), Uuid::now_v7());
        let mut ids = Vec::new();
        for n in 0..10 {
            ids.push(keep(&store, t, &format!("m{n}")).await);
        }
        keep(&store, other, "x").await;
        let _ = page(&store, t, None, None, 1).await;
        let removed = store
            .call(move |db| db.prune_history(t, 0, i64::MAX / 2, 4))
            .await
            .expect("prune");
        assert_eq!(removed, 6);
        let (left, _) = page(&store, t, None, None, 100).await;
        assert_eq!(left, ids[6..]);
        let gone = ids[2].clone();
        assert!(
            store
                .read(move |db| db.kept_message(t, &gone))
                .await
                .expect("kept")
                .is_none()
        );
        let (after_gone, _) = page(&store, t, None, Some(&ids[2]), 100).await;
        assert!(after_gone.is_empty(), "a pruned id is no cursor");
        // Pruning again to the same count removes nothing more.
        let again = store
            .call(move |db| db.prune_history(t, 0, i64::MAX / 2, 4))
            .await
            .expect("prune");
        assert_eq!(again, 0);
        let all = store
            .call(move |db| db.prune_history(t, 0, i64::MAX / 2, 0))
            .await
            .expect("prune");
        assert_eq!(all, 4);
        assert_eq!(blocks(&store, t).await, (1, 0), "wholly pruned blocks go");
        assert!(page(&store, t, None, None, 100).await.0.is_empty());
        assert_eq!(page(&store, other, None, None, 100).await.0.len(), 1);
        store.close().await;
    }

    /// Kept messages whose ids do not rise with their seqs (an older
    /// build minted them before it took the log's lock, and `catch_up`
    /// indexes what it left; the clock stepped back across a restart) are
    /// each found by id: a block never holds an id under one an earlier
    /// block of its topic holds, which `find_id` would look for there.
    #[tokio::test]
    async fn ids_that_do_not_rise_with_seqs_are_found() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let t = Uuid::now_v7();
        let id = |n: u128| Uuid::from_u128(n << 80).to_string();
        // Two index transactions: ids 5 and 9, then 7 and 12.
        for batch in [[5, 9], [7, 12]] {
            let log = store.messages();
            let mut last = None;
            for n in batch {
                let text = format!("m{n}");
                let e = log
                    .append(crate::proto::id::now_ms(), |_, out| {
                        out.extend_from_slice(&log::text_message(t, Uuid::nil(), &id(n), &text));
                    })
                    .expect("append");
                last = Some(e);
            }
            let last = last.expect("appended");
            log.wait_synced(last.seq).await.expect("synced");
            store.indexed.wait(last.seq).await;
        }
        for n in [5, 7, 9, 12] {
            let want = id(n);
            let kept = store
                .read(move |db| db.kept_message(t, &want))
                .await
                .expect("kept");
            assert_eq!(
                kept.map(|m| m.ex.get().to_owned()),
                Some(format!(r#"{{"body":"m{n}"}}"#)),
                "message {n}"
            );
        }
        let (after, _) = page(&store, t, None, Some(&id(7)), 10).await;
        assert_eq!(after, [id(12)], "after 7, in history (seq) order");
        let (before, _) = page(&store, t, Some(&id(7)), None, 10).await;
        assert_eq!(before, [id(5), id(9)]);
        store.close().await;
    }

    /// Every `.seg` file's bytes in the message log.
    fn log_bytes(dir: &std::path::Path) -> Vec<u8> {
        let mut all = Vec::new();
        for f in std::fs::read_dir(dir.join(MESSAGE_LOG_DIR))
            .expect("dir")
            .flatten()
        {
            if f.path().extension().is_some_and(|e| e == "seg") {
                all.extend(std::fs::read(f.path()).expect("read"));
            }
        }
        all
    }

    fn holds(haystack: &[u8], needle: &str) -> bool {
        haystack
            .windows(needle.len())
            .any(|w| w == needle.as_bytes())
    }

    /// A redaction erases a block-held message's text from its record in
    /// the log (the record stays whole and readable), and history shows
    /// it empty.
    #[tokio::test]
    async fn a_redaction_erases_the_text_in_the_log() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let t = Uuid::now_v7();
        let id = keep(&store, t, "secret-words").await;
        let next = keep(&store, t, "later").await;
        let _ = page(&store, t, None, None, 1).await;
        assert!(holds(&log_bytes(dir.path()), "secret-words"));
        redact(&store, t, &id).await;
        assert!(!holds(&log_bytes(dir.path()), "secret-words"));
        let read = id.clone();
        let kept = store
            .read(move |db| db.kept_message(t, &read))
            .await
            .expect("kept")
            .expect("found");
        assert!(kept.ex.is_empty());
        assert_eq!(kept.ex.get(), "{}");
        let (ids, _) = page(&store, t, None, None, 10).await;
        assert_eq!(ids, [id, next]);
        store.close().await;
    }

    /// Redacts message `id` of `topic`.
    async fn redact(store: &Store, topic: Uuid, id: &str) {
        let id = id.to_owned();
        store
            .call(move |db| {
                db.redact_message(
                    topic,
                    &id,
                    &Redaction {
                        ts: 1,
                        by: Uuid::nil(),
                    },
                )
            })
            .await
            .expect("redact");
    }

    /// A log that an earlier build wrote text records to, and this one
    /// binary records, reads as one: history in order with every text, and
    /// a redaction of either kind erases its text in place.
    #[tokio::test]
    async fn text_and_binary_records_read_together() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let t = Uuid::now_v7();
        let kept = ["old-one", "new-one", "old-two", "new-two"];
        let mut ids = Vec::new();
        for (n, text) in kept.iter().enumerate() {
            ids.push(if n % 2 == 0 {
                keep_text(&store, t, text).await
            } else {
                keep(&store, t, text).await
            });
        }
        async fn texts(store: &Store, t: Uuid) -> Vec<(String, String)> {
            store
                .read(move |db| {
                    let page = db.history(t, None, None, 10)?;
                    Ok(page
                        .messages
                        .into_iter()
                        .map(|m| (m.id, m.ex.get().to_owned()))
                        .collect::<Vec<_>>())
                })
                .await
                .expect("history")
        }
        let body = |text: &str| format!("{{\"body\":\"{text}\"}}");
        let read = texts(&store, t).await;
        let want: Vec<(String, String)> = ids
            .iter()
            .zip(kept)
            .map(|(id, text)| (id.clone(), body(text)))
            .collect();
        assert_eq!(read, want);
        for redacted in [&ids[0], &ids[3]] {
            redact(&store, t, redacted).await;
        }
        let log = log_bytes(dir.path());
        assert!(!holds(&log, "old-one") && !holds(&log, "new-two"));
        assert!(holds(&log, "new-one") && holds(&log, "old-two"));
        let read = texts(&store, t).await;
        let shown: Vec<&str> = read.iter().map(|(_, ex)| ex.as_str()).collect();
        assert_eq!(
            shown,
            [
                "{}",
                body("new-one").as_str(),
                body("old-two").as_str(),
                "{}"
            ]
        );
        store.close().await;
    }

    /// A redaction committed without a sync of its own (a client's, in a
    /// run of synced-later jobs; a peer's, in its batch) makes its journal
    /// durable before it writes over the record: a crash that tore the
    /// rewrite would otherwise leave a record failing its CRC and nothing
    /// to redo it, and the open's check of the last segment would cut it
    /// and every acknowledged record after it.
    #[tokio::test]
    async fn an_unsynced_redaction_syncs_its_journal_before_the_rewrite() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let t = Uuid::now_v7();
        let id = keep(&store, t, "secret-words").await;
        keep(&store, t, "later").await;
        let _ = page(&store, t, None, None, 1).await;
        let (synced_at, commits) = store
            .call(move |db| {
                db.unsynced(|db| {
                    db.redact_message(
                        t,
                        &id,
                        &Redaction {
                            ts: 1,
                            by: Uuid::nil(),
                        },
                    )
                })?;
                Ok((db.synced_at, db.commits))
            })
            .await
            .expect("redact");
        assert!(!holds(&log_bytes(dir.path()), "secret-words"), "rewritten");
        assert_eq!(synced_at, commits, "the journal synced before the rewrite");
        store.close().await;
    }

    /// A journaled rewrite that a crash left torn (the record's CRC no
    /// longer matches) is made again at open, before the log's check of
    /// its last segment would cut the record and every one after it.
    #[tokio::test]
    async fn a_torn_rewrite_is_made_again_at_open() {
        let dir = tempfile::tempdir().expect("dir");
        let t = Uuid::now_v7();
        let (id, after) = {
            let store = Store::open(dir.path(), "n1").expect("open");
            let (id, after) = keep_two(&store, t, "torn-text").await;
            let journal = id.clone();
            let log_dir = dir.path().join(MESSAGE_LOG_DIR);
            store
                .call(move |db| {
                    let f = found_of(db, t, &journal)?;
                    let blank = record::blank_ex(&db.log.read(f.at)?.body).expect("blank");
                    journal_rewrite(&db.conn, &f, &blank)?;
                    // Torn: half of the new body written, the CRC not.
                    let path = log_dir.join(format!("{:020}.seg", f.at.segment));
                    let file = std::fs::OpenOptions::new()
                        .write(true)
                        .open(path)
                        .expect("open");
                    use std::os::unix::fs::FileExt;
                    let head = segment::RECORD_HEAD as u64;
                    file.write_all_at(&blank[..blank.len() / 2], f.at.offset + head)
                        .expect("tear");
                    Ok(())
                })
                .await
                .expect("journal");
            store.close().await;
            (id, after)
        };
        let store = Store::open(dir.path(), "n1").expect("reopen");
        let (ids, _) = page(&store, t, None, None, 10).await;
        assert_eq!(ids, [id, after], "nothing cut");
        assert!(!holds(&log_bytes(dir.path()), "torn-text"));
        store.close().await;
    }

    /// Keeps `text` and then `after` in `topic`, indexed; their ids.
    async fn keep_two(store: &Store, topic: Uuid, text: &str) -> (String, String) {
        let id = keep(store, topic, text).await;
        let after = keep(store, topic, "after").await;
        let _ = page(store, topic, None, None, 1).await;
        (id, after)
    }

    /// How many rewrites the journal holds.
    async fn journaled(store: &Store) -> i64 {
        store
            .call(|db| {
                Ok(db
                    .conn
                    .query_row("SELECT COUNT(*) FROM rewrites", [], |r| r.get(0))?)
            })
            .await
            .expect("count")
    }

    /// The block entry of kept message `id` of `topic`.
    fn found_of(db: &crate::store::Db, topic: Uuid, id: &str) -> Result<Found, Error> {
        let uuid = Uuid::parse_str(id).expect("uuid");
        let (b, index) = find_id(&db.conn, topic, uuid)?.expect("block");
        let entry = b.entry(index).expect("entry");
        Ok(Found {
            key: key(Place::Block {
                rowid: b.rowid,
                index,
            }),
            topic,
            at: b.at(&entry),
            entry,
        })
    }

    /// A journaled rewrite that does not fit its record (another length:
    /// not the record journaled) is dropped at open, with an error in the
    /// log: the store opens, the record and the ones after it are kept as
    /// they were, and the journal no longer holds it.
    #[tokio::test]
    async fn a_journaled_rewrite_that_does_not_fit_is_dropped_at_open() {
        let dir = tempfile::tempdir().expect("dir");
        let t = Uuid::now_v7();
        let (id, after) = {
            let store = Store::open(dir.path(), "n1").expect("open");
            let (id, after) = keep_two(&store, t, "kept-text").await;
            let journal = id.clone();
            store
                .call(move |db| {
                    let f = found_of(db, t, &journal)?;
                    journal_rewrite(&db.conn, &f, b"{}")?;
                    Ok(())
                })
                .await
                .expect("journal");
            assert_eq!(journaled(&store).await, 1, "left for the open");
            store.close().await;
            (id, after)
        };
        let store = Store::open(dir.path(), "n1").expect("reopen");
        let (ids, _) = page(&store, t, None, None, 10).await;
        assert_eq!(ids, [id.clone(), after]);
        assert!(holds(&log_bytes(dir.path()), "kept-text"));
        assert_eq!(journaled(&store).await, 0);
        let kept = store
            .read(move |db| db.kept_message(t, &id))
            .await
            .expect("kept")
            .expect("found");
        assert_eq!(kept.ex.get(), r#"{"body":"kept-text"}"#);
        store.close().await;
    }

    /// A store whose kept messages are in blocks does not open under
    /// another node name (they would go to the mesh again under it); one
    /// without blocks does, and under its own name it opens as before.
    #[tokio::test]
    async fn a_renamed_node_with_blocks_is_refused_at_open() {
        let empty = tempfile::tempdir().expect("dir");
        Store::open(empty.path(), "n1").expect("open").close().await;
        Store::open(empty.path(), "n2")
            .expect("no blocks: renamed")
            .close()
            .await;

        let dir = tempfile::tempdir().expect("dir");
        let t = Uuid::now_v7();
        let id = {
            let store = Store::open(dir.path(), "n1").expect("open");
            let id = keep(&store, t, "kept").await;
            assert_eq!(
                page(&store, t, None, None, 10).await.0,
                std::slice::from_ref(&id)
            );
            store.close().await;
            id
        };
        match Store::open(dir.path(), "n2") {
            Err(Error::Renamed { kept, node }) => {
                assert_eq!((kept.as_str(), node.as_str()), ("n1", "n2"))
            }
            Err(e) => panic!("another error: {e}"),
            Ok(_) => panic!("a renamed node opened"),
        }
        let store = Store::open(dir.path(), "n1").expect("reopen");
        assert_eq!(page(&store, t, None, None, 10).await.0, [id]);
        store.close().await;
    }

    /// Entries as a burst's block holds them: seqs, clocks and offsets
    /// rising, ids minted in order (UUIDv7, random low halves).
    fn burst_entries(n: u64) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry {
                seq: 1_000_000 + i * 3,
                hlc: (1_764_900_000_000 << 16) + i * 40,
                offset: 4096 + i * 195,
                id: crate::proto::id::uuid_at(1_764_900_000_000 + i as i64 / 50),
            })
            .collect()
    }

    /// The fixed form of builds before the packed one.
    fn fixed(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            out.extend_from_slice(&e.seq.to_le_bytes());
            out.extend_from_slice(&e.hlc.to_le_bytes());
            out.extend_from_slice(&e.offset.to_le_bytes());
            out.extend_from_slice(e.id.as_bytes());
        }
        out
    }

    /// Packed entries read back as written, values that fall or reach the
    /// top of their range included; a burst's block takes under 16 bytes
    /// an entry (the fixed form 40); the fixed form still reads.
    #[test]
    fn packed_entries_read_back_and_the_fixed_form_still_reads() {
        let burst = burst_entries(413);
        let packed = encode_entries(&burst);
        assert_eq!(decode_entries(&packed), burst);
        assert!(packed.len() < 16 * burst.len(), "{} bytes", packed.len());
        assert_eq!(decode_entries(&fixed(&burst)), burst);
        let wild = vec![
            Entry {
                seq: u64::MAX,
                hlc: 0,
                offset: u64::MAX,
                id: Uuid::max(),
            },
            Entry {
                seq: 0,
                hlc: u64::MAX,
                offset: 0,
                id: Uuid::nil(),
            },
            Entry {
                seq: 7,
                hlc: 1 << 63,
                offset: 1 << 40,
                id: Uuid::from_u128(u128::MAX >> 1),
            },
        ];
        assert_eq!(decode_entries(&encode_entries(&wild)), wild);
        assert_eq!(decode_entries(&fixed(&wild)), wild);
        assert_eq!(decode_entries(&encode_entries(&[])), vec![]);
    }

    /// Whatever the number of entries, a packed blob's length is no
    /// multiple of 40, so it is never read as the fixed form.
    #[test]
    fn a_packed_blob_is_never_a_multiple_of_the_fixed_entry() {
        let many = burst_entries(300);
        for n in 0..=many.len() {
            let packed = encode_entries(&many[..n]);
            assert_ne!(packed.len() % ENTRY_LEN, 0, "{n} entries");
            assert_eq!(decode_entries(&packed).len(), n);
        }
    }

    /// A packed blob cut short, or with a varint that never ends, gives
    /// the entries before the damage and nothing made up.
    #[test]
    fn a_damaged_packed_blob_gives_what_precedes_the_damage() {
        let burst = burst_entries(10);
        let packed = encode_entries(&burst);
        for cut in 2..packed.len() {
            let mut short = packed[..cut].to_vec();
            if short.len() % ENTRY_LEN == 0 {
                short.push(0x80);
            }
            let got = decode_entries(&short);
            assert!(got.len() <= burst.len());
            assert_eq!(got, burst[..got.len()], "cut at {cut}");
        }
        assert_eq!(decode_entries(&[PACKED, 0xff, 0xff]), vec![]);
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
        assert_eq!(take_varint(&mut &out[..]), Some(u64::MAX));
        out[9] = 0x02;
        assert_eq!(take_varint(&mut &out[..]), None, "past 64 bits");
    }
}
