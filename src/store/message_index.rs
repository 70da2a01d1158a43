//! The message log's index in SQLite.
//!
//! Each group the message log ([`super::message_log`]) has synced becomes
//! events of this node's message origin (the node, its incarnation and
//! [`MESSAGE_SUFFIX`]), written as a group commit's kept messages are: so
//! history, search, edits and mesh catch-up read them as any message (their
//! search entries are written behind, by the search pass: `search.rs`). The
//! transaction commits without a WAL sync: the log is the truth for these
//! messages, and what a crash takes from the index is indexed again at the
//! next open ([`catch_up`]), from the log's position the index last
//! recorded. This is the first stage of the revised store plan
//! (bench/README.md, eighteenth round): rows per message, which blocks per
//! topic and group are to replace.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{OptionalExtension, params};

use super::log::{self, Arrival, Origin};
use super::message_log::{Entry, MessageLog, Synced, SyncedRecord};
use super::search::IndexQueue;
use super::segment::{self, Position};
use super::{Db, Error, blocks, record};
use crate::change::Change;
use uuid::Uuid;

/// What a node's message origin adds to its incarnation.
pub const MESSAGE_SUFFIX: &str = ".m";

/// The `node` table's key for the log position after the last record
/// indexed: `<segment>:<offset>`.
const INDEXED_END: &str = "message_log_end";

/// Records indexed in one transaction when catching up at open.
const CATCH_UP_BATCH: usize = 4096;

impl Origin {
    /// The origin of this node's kept messages, which the message log
    /// numbers apart from its other events.
    pub fn messages(&self) -> Origin {
        Origin {
            node: self.node.clone(),
            incarnation: format!("{}{MESSAGE_SUFFIX}", self.incarnation),
        }
    }
}

impl Db {
    /// The message origin's last seq the index holds, and the node's clock:
    /// the message log numbers on from no lower.
    pub fn message_floor(&self) -> Result<Entry, Error> {
        let origin = self.origin.messages();
        let tx = self.conn.unchecked_transaction()?;
        let floor = Entry {
            seq: log::seen_seq(&tx, &origin.node, &origin.incarnation)?,
            hlc: log::read_clock(&tx)?,
        };
        tx.commit()?;
        Ok(floor)
    }

    /// Indexes synced records of the message log, `end` the log's
    /// position after them, in one transaction that commits without a WAL
    /// sync. A record whose body is not a kept message (which the log
    /// never holds unless damaged past its CRC) is skipped and logged.
    pub fn index_messages<'r>(
        &mut self,
        records: impl IntoIterator<Item = SyncedRecord<'r>>,
        end: Position,
    ) -> Result<(), Error> {
        let origin = self.origin.messages();
        self.unsynced_burst(|db| db.write(|tx, _| index_records(tx, &origin, records, end)))?
    }

    /// Makes the index durable up to `end`, which it holds: a commit that
    /// syncs the WAL, and with it every unsynced commit of the index before
    /// it. The log's segments before `end` are then no longer needed.
    fn sync_index(&mut self, end: Position) -> Result<(), Error> {
        // An index burst that could not set commits back to syncing left
        // them unsynced: this one must sync, or fail.
        if !self.full {
            self.sync_commits(true)?;
        }
        self.write(|tx, _| {
            // Deleted first: an upsert of the end the index already records
            // (as it always is here) changes no byte of any page, and SQLite
            // then commits with nothing written to the WAL, so nothing
            // synced. A deleted row's page is written, and the WAL synced.
            tx.prepare_cached("DELETE FROM node WHERE key = ?1")?
                .execute(params![INDEXED_END])?;
            record_end(tx, end)
        })
    }

    /// The log position after the last record indexed, if any was.
    fn indexed_end(&self) -> Result<Option<Position>, Error> {
        let value: Option<String> = self
            .conn
            .query_row(
                "SELECT value FROM node WHERE key = ?1",
                params![INDEXED_END],
                |r| r.get(0),
            )
            .optional()?;
        Ok(value.and_then(|v| {
            let (segment, offset) = v.split_once(':')?;
            Some(Position {
                segment: segment.parse().ok()?,
                offset: offset.parse().ok()?,
            })
        }))
    }
}

/// [`Db::index_messages`]'s transaction: each record as an event of the
/// message `origin`, then the origin's seq, the clock and the index's end.
fn index_records<'r>(
    tx: &rusqlite::Transaction<'_>,
    origin: &Origin,
    records: impl IntoIterator<Item = SyncedRecord<'r>>,
    end: Position,
) -> Result<(), Error> {
    let key = origin.key();
    let mut index = IndexQueue::default();
    let mut clock = log::read_clock(tx)?;
    let held = log::seen_seq(tx, &origin.node, &origin.incarnation)?;
    let mut seq = held;
    let mut insert = tx.prepare_cached(log::INSERT_EVENT)?;
    let mut blocks = blocks::Builder::default();
    let from = (origin.node.as_str(), origin.incarnation.as_str());
    // Each topic's highest id in a block. A block takes only ids above it:
    // `blocks::find_id` looks for an id in the first block whose last id
    // is at or past it. A session mints ids in seq order under the log's
    // lock, but not an older build (whose records `catch_up` indexes), nor
    // one whose clock stepped back across a restart: such a message is a
    // row of its own, found by its id as any row is.
    let mut top: foldhash::HashMap<Uuid, Uuid> = foldhash::HashMap::default();
    let mut rises = |topic: Uuid, id: Uuid| -> Result<bool, Error> {
        let max = match top.get(&topic) {
            Some(max) => *max,
            None => blocks::last_id(tx, topic)?.unwrap_or(Uuid::nil()),
        };
        top.insert(topic, max.max(id));
        Ok(id > max)
    };
    for r in records.into_iter().filter(|r| r.entry.seq > held) {
        seq = seq.max(r.entry.seq);
        let hlc = r.entry.hlc;
        // As a session wrote it: an entry of its topic's block. A kept
        // message writes no register, and its search entry comes behind:
        // there is nothing to apply.
        if let Some((topic, id)) = record::topic_and_id(r.body)
            && rises(topic, id)?
        {
            blocks.add(topic, r.at, r.entry.seq, hlc, id);
            clock = clock.max(hlc);
            continue;
        }
        let text = record::text(r.body).ok();
        let split = text.as_deref().map(|t| (t, log::split_message(t)));
        let in_block = match &split {
            Some((_, Some(m))) if m.kind == Change::MESSAGE => match Uuid::try_parse(m.id) {
                Ok(id) => rises(m.topic, id)?.then_some((m.topic, id)),
                Err(_) => None,
            },
            _ => None,
        };
        match split {
            // In that layout, with its fields escaped: the same.
            Some((_, Some(_))) if let Some((topic, id)) = in_block => {
                blocks.add(topic, r.at, r.entry.seq, hlc, id);
            }
            // Written so but with an id that is not a UUID (no session
            // mints one), or one under an id a block of its topic holds:
            // a row of its own.
            Some((text, Some(m))) => {
                let message = Some((m.topic, m.id));
                log::insert_fields(&mut insert, from, (r.entry.seq, hlc), m.kind, message, text)?;
            }
            // Any other text that is a kept message.
            Some((text, None)) if let Some(change) = other_message(text) => {
                let rowid = log::insert_row(&mut insert, from, r.entry.seq, hlc, &change, text)?;
                log::apply_as(tx, &mut index, rowid, &key, hlc, &change, Arrival::Behind)?;
            }
            _ => {
                tracing::error!(
                    seq = r.entry.seq,
                    segment = r.at.segment,
                    offset = r.at.offset,
                    "message log: a record that is not a kept message is left out of the index"
                );
                continue;
            }
        }
        clock = clock.max(hlc);
    }
    drop(insert);
    blocks.write(tx, &origin.node)?;
    index.flush(tx)?;
    log::write_clock(tx, clock)?;
    log::set_seen_seq(tx, &origin.node, &origin.incarnation, seq)?;
    record_end(tx, end)
}

/// Records `end` as the log position after the last record indexed.
fn record_end(tx: &rusqlite::Transaction<'_>, end: Position) -> Result<(), Error> {
    tx.prepare_cached(
        "INSERT INTO node (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )?
    .execute(params![
        INDEXED_END,
        format!("{}:{}", end.segment, end.offset)
    ])?;
    Ok(())
}

/// A record's text in another layout than [`log::split_message`] reads,
/// as the change it encodes, if that is a kept message.
fn other_message(text: &str) -> Option<Change> {
    serde_json::from_str::<Change>(text)
        .ok()
        .filter(|c| c.message.is_some())
}

/// Indexes what the message log in `dir` holds before `upto` (its end at
/// open) and the index does not: groups synced by an earlier run whose
/// index a crash lost. Returns how many records it indexed.
pub fn catch_up(db: &mut Db, dir: &Path, upto: Position) -> Result<usize, Error> {
    let reader = segment::Reader::new(dir);
    let Some(&first) = reader.segments()?.first() else {
        return Ok(0);
    };
    let start = Position {
        segment: first,
        offset: segment::HEADER_LEN,
    };
    // From where the index stopped, unless retention has removed that
    // segment since.
    let from = db.indexed_end()?.filter(|p| *p >= start).unwrap_or(start);
    let seen = db.message_floor()?.seq;
    let mut batch = Vec::new();
    let mut end = from;
    let mut indexed = 0;
    for stored in reader.scan(from, upto)? {
        let stored = stored?;
        end = stored.next;
        if stored.seq <= seen {
            continue;
        }
        batch.push(stored);
        if batch.len() >= CATCH_UP_BATCH {
            indexed += batch.len();
            db.index_messages(batch.iter().map(as_synced), end)?;
            batch.clear();
        }
    }
    indexed += batch.len();
    if !batch.is_empty() {
        db.index_messages(batch.iter().map(as_synced), end)?;
    }
    if indexed > 0 {
        tracing::info!(
            records = indexed,
            "message log: indexed what an earlier run wrote and did not index"
        );
    }
    Ok(indexed)
}

/// A record read back from the log, as the index takes it.
fn as_synced(stored: &segment::Stored) -> SyncedRecord<'_> {
    SyncedRecord {
        entry: Entry {
            seq: stored.seq,
            hlc: stored.hlc,
        },
        at: stored.at,
        body: &stored.body,
    }
}

/// The store thread's side of the index. Groups the message log hands on
/// are indexed, every group already queued in one transaction (one commit,
/// not one each), and dropped after, which gives their bytes back to the
/// log's bound. Groups a failed transaction left (a full disk) are kept and
/// tried again first, with the next groups or at the next tidy tick: a
/// later group indexed past them would record the index's end past them,
/// and the next start would not find them in the log. Their bytes stay
/// counted meanwhile, so senders are held back, and nothing is lost.
///
/// It also removes the log's segments the index holds ([`Indexer::sweep`]):
/// once indexed, a kept message is read from SQLite, and its copy in the
/// log would outlive a redaction and retention, and fill the disk.
#[derive(Debug)]
pub struct Indexer {
    indexed: Arc<Indexed>,
    failed: Vec<Synced>,
    /// The log's segments, to remove.
    log: Arc<segment::Reader>,
    /// The log, which says which segment its writer is in.
    messages: MessageLog,
    /// The log position after the last record indexed, if any was.
    end: Option<Position>,
}

impl Indexer {
    /// Reports its progress to `indexed`; removes segments of the log
    /// `messages` (`db`'s) once no block points into them. `db`'s index
    /// holds the log up to its [`Db::indexed_end`] (after [`catch_up`]).
    pub fn new(indexed: Arc<Indexed>, db: &Db, messages: &MessageLog) -> Result<Self, Error> {
        Ok(Self {
            indexed,
            failed: Vec::new(),
            log: Arc::clone(&db.log),
            messages: messages.clone(),
            end: db.indexed_end()?,
        })
    }

    /// Indexes what a failed transaction left, then `groups`, in one
    /// transaction. Readers are told the index has moved on even if it
    /// failed: they must not wait for a disk to be fixed, and find the
    /// messages once a retry succeeds.
    pub fn index(&mut self, db: &mut Db, mut groups: Vec<Synced>) {
        if !self.failed.is_empty() {
            self.failed.append(&mut groups);
            groups = std::mem::take(&mut self.failed);
        }
        let Some(end) = groups.last().map(|g| g.end) else {
            return;
        };
        let records = || groups.iter().flat_map(Synced::records);
        let last = records().last().map_or(0, |r| r.entry.seq);
        match db.index_messages(records(), end) {
            Ok(()) => self.end = Some(end),
            Err(e) => {
                tracing::error!(error = %e, records = records().count(),
                    "message log: cannot index synced records; trying again with the next ones \
                     (check the disk)");
                self.failed = groups;
            }
        }
        self.indexed.reach(last);
    }

    /// Removes the log's segments that no block points into and whose
    /// records the index holds, after a commit that makes the index
    /// durable that far (its commits do not sync: a crash before the sync
    /// would have to index them again from the log). Blocks keep their
    /// segments until retention deletes them, so this follows retention.
    /// Errors are logged; the next tick tries again.
    pub fn sweep(&mut self, db: &mut Db) {
        let Some(end) = self.end else {
            return;
        };
        match self.remove_through(db, end) {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(
                removed,
                segment = end.segment,
                "message log: removed segments no kept message is in"
            ),
            Err(e) => tracing::warn!(error = %e,
                "message log: cannot remove segments no kept message is in; trying again at the next tick"),
        }
    }

    /// [`Indexer::sweep`]'s work: how many segments it removed.
    fn remove_through(&self, db: &mut Db, end: Position) -> Result<usize, Error> {
        let writing = self.messages.writing();
        let Some(mut bound) = self.log.indexed_before(end, writing)? else {
            return Ok(0);
        };
        if let Some(oldest) = blocks::oldest_segment(&db.conn)? {
            bound = bound.min(oldest);
        }
        if self
            .log
            .segments()?
            .first()
            .is_none_or(|&first| first >= bound)
        {
            return Ok(0);
        }
        db.sync_index(end)?;
        Ok(self.log.remove_before(bound)?)
    }

    /// Tries again what a failed transaction left, if anything: whether
    /// it did, and the retry succeeded.
    pub fn retry(&mut self, db: &mut Db) -> bool {
        if self.failed.is_empty() {
            return false;
        }
        self.index(db, Vec::new());
        self.failed.is_empty()
    }
}

/// How far a stage behind the message log has come (the index, or the
/// search pass: `search_pass.rs`): the message origin's last seq it holds.
/// Reads wait on it to see what the message log has synced.
#[derive(Debug, Default)]
pub struct Indexed {
    seq: AtomicU64,
    moved: tokio::sync::Notify,
}

impl Indexed {
    /// Starts at `seq`.
    pub fn new(seq: u64) -> Self {
        let i = Self::default();
        i.seq.store(seq, Ordering::Release);
        i
    }

    /// Every record up to this seq is held.
    pub fn seq(&self) -> u64 {
        self.seq.load(Ordering::Acquire)
    }

    /// Records that the index holds every record up to `seq`.
    pub fn reach(&self, seq: u64) {
        self.seq.fetch_max(seq, Ordering::AcqRel);
        self.moved.notify_waiters();
    }

    /// Waits until the index holds every record up to `seq`.
    pub async fn wait(&self, seq: u64) {
        loop {
            let moved = self.moved.notified();
            let mut moved = std::pin::pin!(moved);
            moved.as_mut().enable();
            if self.seq.load(Ordering::Acquire) >= seq {
                return;
            }
            moved.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::change::{ExJson, Message};
    use crate::store::message_log::{Limits, LogThread, MessageLog};
    use crate::store::{MESSAGE_LOG_DIR, Msg, Store, hold_store_thread};

    /// Message `id` to `topic` as the log keeps it, stamped with its clock.
    fn body(topic: Uuid, id: &str, e: Entry) -> Vec<u8> {
        let change = Change::message(Message {
            topic,
            id: id.to_owned(),
            ts: i64::try_from(e.hlc >> 16).unwrap_or(0),
            sender: Uuid::nil(),
            ex: ExJson::empty(),
        });
        log::encode(&change).expect("encode").into_bytes()
    }

    async fn history(store: &Store, topic: Uuid) -> Vec<String> {
        let page = store
            .read(move |db| db.history(topic, None, None, 100))
            .await
            .expect("history");
        page.messages.into_iter().map(|m| m.id).collect()
    }

    async fn keep(store: &Store, topic: Uuid, id: &'static str) -> Entry {
        let log = store.messages();
        let e = log.append_body(|e| body(topic, id, e)).expect("append");
        log.wait_synced(e.seq).await.expect("synced");
        e
    }

    /// A database, its message log (with `limits`, handing each synced
    /// group to `on_synced`) and an indexer, as the store thread has them.
    fn indexed_log(
        dir: &Path,
        limits: Limits,
        on_synced: impl FnMut(Synced) + Send + 'static,
    ) -> (Db, MessageLog, LogThread, Indexer) {
        let db = Db::open(dir, "n1").expect("db");
        let floor = db.message_floor().expect("floor");
        let log_dir = dir.join(MESSAGE_LOG_DIR);
        let (log, thread) = MessageLog::open(&log_dir, limits, floor, on_synced).expect("log");
        let indexer = Indexer::new(Arc::new(Indexed::new(0)), &db, &log).expect("indexer");
        (db, log, thread, indexer)
    }

    /// [`indexed_log`] whose synced groups come out of the receiver, for
    /// the test to index when it chooses.
    fn indexed_log_to(
        dir: &Path,
        limits: Limits,
    ) -> (
        Db,
        MessageLog,
        LogThread,
        Indexer,
        std::sync::mpsc::Receiver<Synced>,
    ) {
        let (to_index, groups) = std::sync::mpsc::channel();
        let (db, log, thread, indexer) = indexed_log(dir, limits, move |g| {
            let _ = to_index.send(g);
        });
        (db, log, thread, indexer, groups)
    }

    /// A failed index transaction (here: the database refuses writes, as
    /// a full or read-only disk would) keeps its groups and tries them
    /// again first: the next group is not indexed past them, and a retry
    /// on its own indexes them too.
    #[tokio::test]
    async fn a_failed_index_is_tried_again_first() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut db, log, thread, mut indexer, groups) =
            indexed_log_to(dir.path(), Limits::default());
        let topic = Uuid::now_v7();
        let kept = async |id: &'static str| {
            let e = log.append_body(|e| body(topic, id, e)).expect("append");
            log.wait_synced(e.seq).await.expect("synced");
            groups.recv().expect("handed on")
        };
        let writes = |db: &Db, refused: bool| {
            db.conn
                .pragma_update(None, "query_only", refused)
                .expect("query_only");
        };
        let ids = |db: &Db| -> Vec<String> {
            let page = db.history(topic, None, None, 10).expect("history");
            page.messages.into_iter().map(|m| m.id).collect()
        };
        writes(&db, true);
        let a = kept("a").await;
        indexer.index(&mut db, vec![a]);
        writes(&db, false);
        assert!(ids(&db).is_empty());
        let b = kept("b").await;
        indexer.index(&mut db, vec![b]);
        assert_eq!(ids(&db), ["a", "b"]);
        writes(&db, true);
        let c = kept("c").await;
        indexer.index(&mut db, vec![c]);
        writes(&db, false);
        indexer.retry(&mut db);
        assert_eq!(ids(&db), ["a", "b", "c"]);
        thread.finish();
    }

    #[tokio::test]
    async fn a_message_kept_through_the_log_reads_as_any_kept_message() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let topic = Uuid::now_v7();
        let e = keep(&store, topic, "a").await;
        assert_eq!(history(&store, topic).await, ["a"]);
        let kept = store
            .call(move |db| db.kept_message(topic, "a"))
            .await
            .expect("call")
            .expect("kept");
        assert_eq!(kept.ts, i64::try_from(e.hlc >> 16).expect("ts"));
        // Mesh peers catch up on it as on any origin's events.
        let origin = store
            .call(|db| Ok(db.origin().messages().key()))
            .await
            .expect("origin");
        let events = store
            .read(move |db| db.events_after(&origin, 0, 10))
            .await
            .expect("events");
        assert_eq!(events.len(), 1);
        store.close().await;
    }

    /// Returns once whatever a task just spawned has queued on the read
    /// thread has run: this runtime has one thread, so the task runs at the
    /// yield, and a probe queued after its job runs after it.
    async fn read_thread_drained(store: &Store) {
        tokio::task::yield_now().await;
        let reads = store
            .reads
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .expect("the read thread");
        let (ran, done) = tokio::sync::oneshot::channel();
        let probe: crate::store::ReadJob = Box::new(move |_| {
            let _ = ran.send(());
        });
        assert!(reads.send(crate::store::ReadMsg::Job(probe)).await.is_ok());
        done.await.expect("the probe ran");
        // A sender kept would keep the read thread from ending at close.
        drop(reads);
    }

    #[tokio::test]
    async fn a_read_waits_for_the_index_of_what_is_synced() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let topic = Uuid::now_v7();
        // The index's job queues behind the held one.
        let (release, held) = hold_store_thread(&store).await;
        keep(&store, topic, "a").await;
        let reading = {
            let store = store.clone();
            tokio::spawn(async move { history(&store, topic).await })
        };
        read_thread_drained(&store).await;
        release.send(()).expect("release");
        assert_eq!(reading.await.expect("read"), ["a"]);
        held.await.expect("join").expect("held job");
        store.close().await;
    }

    /// A search waits for the search pass to reach what was synced when it
    /// was asked: here the message is indexed and the pass held back (the
    /// store thread is busy), and the search finds it once the pass runs.
    #[tokio::test]
    async fn a_search_waits_for_the_search_pass() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let topic = Uuid::now_v7();
        // The index's job queues behind the held one, and a second hold
        // behind that: the pass, which runs when nothing is queued, waits.
        let (release, held) = hold_store_thread(&store).await;
        let e = keep_text(&store, topic, "a", "brown fox").await;
        let second = {
            let store = store.clone();
            tokio::spawn(async move { hold_store_thread(&store).await })
        };
        release.send(()).expect("release");
        held.await.expect("join").expect("held job");
        let (release, held) = second.await.expect("the second hold");
        store.indexed.wait(e.seq).await;
        let searching = {
            let store = store.clone();
            tokio::spawn(async move {
                let q = crate::store::search::tests::query(&["brown"], &[topic]);
                let found = store.read_searched(move |db| db.search(&q)).await;
                let found = found.expect("search");
                found.messages.into_iter().map(|m| m.id).collect::<Vec<_>>()
            })
        };
        read_thread_drained(&store).await;
        release.send(()).expect("release");
        assert_eq!(searching.await.expect("search"), ["a"]);
        held.await.expect("join").expect("held job");
        store.close().await;
    }

    /// A search that comes once the store thread has gone to sleep with
    /// the pass behind (it waits out a burst: `search_pass.rs`, `due`) wakes
    /// it: nothing else may come to (no message, no tidy tick here).
    #[tokio::test]
    async fn a_search_wakes_a_store_thread_asleep_with_the_pass_behind() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let topic = Uuid::now_v7();
        let e = keep_text(&store, topic, "a", "brown fox").await;
        store.indexed.wait(e.seq).await;
        // Queued after the index's transaction: once it returns, the
        // thread has found nothing else queued and the index just busy.
        store.call(|_| Ok(())).await.expect("after the index");
        // And a read meanwhile, on the read thread: time for the store
        // thread to look at its queue, find it empty and wait on it.
        store.read(|_| Ok(())).await.expect("a read");
        let found = searched(&store, topic, "brown").await;
        assert_eq!(
            found.expect("answered without a tick").expect("search"),
            ["a"]
        );
        store.close().await;
    }

    /// Message `id` with text `text` kept through the log.
    async fn keep_text(store: &Store, topic: Uuid, id: &str, text: &str) -> Entry {
        let log = store.messages();
        let e = log
            .append_body(|_| log::text_message(topic, Uuid::now_v7(), id, text))
            .expect("append");
        log.wait_synced(e.seq).await.expect("synced");
        e
    }

    /// The ids of `topic`'s messages with `word`, by [`Store::read_searched`],
    /// or `None` if it has not answered within five seconds.
    async fn searched(
        store: &Store,
        topic: Uuid,
        word: &str,
    ) -> Option<Result<Vec<String>, Error>> {
        let q = crate::store::search::tests::query(&[word], &[topic]);
        let found = store.read_searched(move |db| db.search(&q));
        let found = tokio::time::timeout(std::time::Duration::from_secs(5), found).await;
        found
            .ok()
            .map(|r| r.map(|f| f.messages.into_iter().map(|m| m.id).collect()))
    }

    /// A failed index transaction does not hold searches up (as it does not
    /// hold reads), and what a retry then indexes is found by search.
    #[tokio::test]
    async fn a_failed_index_holds_no_search_and_a_retry_is_searched() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let topic = Uuid::now_v7();
        let writes = |refused: bool| {
            store.call(move |db| {
                db.conn.pragma_update(None, "query_only", refused)?;
                Ok(())
            })
        };
        writes(true).await.expect("refuse writes");
        keep_text(&store, topic, "a", "brown fox").await;
        let found = searched(&store, topic, "brown").await;
        assert_eq!(
            found
                .expect("answered, not waiting for the disk")
                .expect("search"),
            Vec::<String>::new()
        );
        writes(false).await.expect("writes again");
        // The tick retries the index, and the pass runs over what it
        // indexed; a job queued after the tick returns once both have.
        assert!(store.tidy());
        store.call(|_| Ok(())).await.expect("after the tick");
        let found = searched(&store, topic, "brown").await;
        assert_eq!(found.expect("answered").expect("search"), ["a"]);
        store.close().await;
    }

    /// A search that comes once the store thread has ended (closed before
    /// the pass ran over what it indexed) does not wait for the pass.
    #[tokio::test]
    async fn a_search_after_the_store_closed_does_not_wait_for_the_pass() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let topic = Uuid::now_v7();
        // Indexed, and then the store thread closed, each queued behind the
        // held job: the pass, which runs when nothing is queued, never runs
        // over it. (`Store::close`'s steps, with the close queued first.)
        let (release, held) = hold_store_thread(&store).await;
        keep(&store, topic, "a").await;
        store.close_reader().await;
        let (closed, done) = tokio::sync::oneshot::channel();
        assert!(store.jobs.send(Msg::Close(closed)).await.is_ok());
        release.send(()).expect("release");
        held.await.expect("join").expect("held job");
        done.await.expect("closed");
        let search = store.read_searched(move |db| {
            db.search(&crate::store::search::tests::query(&["a"], &[topic]))
        });
        let found = tokio::time::timeout(std::time::Duration::from_secs(30), search).await;
        assert!(matches!(found, Ok(Err(Error::Closed))), "{found:?}");
    }

    #[tokio::test]
    async fn what_the_index_lost_is_indexed_at_the_next_start() {
        let dir = tempfile::tempdir().expect("dir");
        let topic = Uuid::now_v7();
        let store = Store::open(dir.path(), "n1").expect("open");
        keep(&store, topic, "a").await;
        keep(&store, topic, "b").await;
        store.close().await;
        // Two more synced, their index lost (as a crash would lose it).
        let floor = Db::open(dir.path(), "n1")
            .and_then(|db| db.message_floor())
            .expect("floor");
        let (log, thread) = MessageLog::open(
            &dir.path().join(MESSAGE_LOG_DIR),
            Limits::default(),
            floor,
            |_| {},
        )
        .expect("log");
        for id in ["c", "d"] {
            log.append_body(|e| body(topic, id, e)).expect("append");
        }
        thread.finish();
        let store = Store::open(dir.path(), "n1").expect("reopen");
        assert_eq!(history(&store, topic).await, ["a", "b", "c", "d"]);
        let origin = store
            .call(|db| Ok(db.origin().messages().key()))
            .await
            .expect("origin");
        let seqs: Vec<u64> = store
            .read(move |db| db.events_after(&origin, 0, 10))
            .await
            .expect("events")
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(keep(&store, topic, "e").await.seq, 5);
        store.close().await;
    }

    /// Segments on disk in the log of the store in `dir`.
    fn segments(dir: &Path) -> Vec<u64> {
        segment::Reader::new(&dir.join(MESSAGE_LOG_DIR))
            .segments()
            .expect("segments")
    }

    /// Indexed segments go once a commit has made the index durable that
    /// far (the index's own commits do not sync): the sweep's last commit
    /// synced, the writer's segment kept.
    #[tokio::test]
    async fn a_sweep_syncs_the_index_then_removes_what_it_holds() {
        let dir = tempfile::tempdir().expect("dir");
        // Each group in a segment of its own.
        let limits = Limits {
            segment_bytes: 1,
            ..Limits::default()
        };
        let (mut db, log, thread, mut indexer, groups) = indexed_log_to(dir.path(), limits);
        let topic = Uuid::now_v7();
        for id in ["a", "b", "c"] {
            let e = log.append_body(|e| body(topic, id, e)).expect("append");
            log.wait_synced(e.seq).await.expect("synced");
            let group = groups.recv().expect("handed on");
            indexer.index(&mut db, vec![group]);
        }
        assert_eq!(segments(dir.path()), [1, 2, 3]);
        assert_ne!(
            db.synced_at, db.commits,
            "the index's commits are not synced"
        );
        // A commit under `synchronous = FULL` syncs the WAL only if it
        // writes to it: one that changes no page counts as a change and
        // syncs nothing.
        let wal = crate::store::wal::wal_path(&dir.path().join(crate::store::DB_FILE));
        let wal_len = || std::fs::metadata(&wal).expect("wal").len();
        let before = wal_len();
        indexer.sweep(&mut db);
        assert_eq!(db.synced_at, db.commits, "synced before removing");
        assert!(
            wal_len() > before,
            "the sweep's commit wrote (and synced) the WAL"
        );
        assert_eq!(segments(dir.path()), [3]);
        let page = db.history(topic, None, None, 10).expect("history");
        let ids: Vec<String> = page.messages.into_iter().map(|m| m.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
        // Nothing new: no second sync.
        let commits = db.commits;
        indexer.sweep(&mut db);
        assert_eq!(db.commits, commits);
        thread.finish();
    }

    /// A quiet log's segment goes once the log rolls it, though the index
    /// has not moved since the sweep that had to leave it (the writer's).
    #[tokio::test]
    async fn a_segment_rolled_after_a_sweep_goes_at_the_next() {
        let dir = tempfile::tempdir().expect("dir");
        let (to_index, groups) = std::sync::mpsc::channel();
        // The log thread waits after each group until let go: no roll
        // before the first sweep.
        let (go, wait) = std::sync::mpsc::channel::<()>();
        // Every segment that holds a record is old enough to roll.
        let limits = Limits {
            roll_after: std::time::Duration::ZERO,
            ..Limits::default()
        };
        let (mut db, log, thread, mut indexer) = indexed_log(dir.path(), limits, move |g| {
            let _ = to_index.send(g);
            let _ = wait.recv();
        });
        // Dropped before the log thread (declared after it): a failed
        // assertion lets the thread go, and the test fails, not hangs.
        let go = go;
        let topic = Uuid::now_v7();
        let a = log.append_body(|e| body(topic, "a", e)).expect("append");
        indexer.index(&mut db, vec![groups.recv().expect("handed on")]);
        indexer.sweep(&mut db);
        assert_eq!(segments(dir.path()), [1], "the writer's segment stays");
        // Let go, the log rolls segment 1 (idle, or before the next group,
        // which lands in segment 2); the index stays where it was.
        go.send(()).expect("go");
        log.wait_synced(a.seq).await.expect("synced");
        log.append_body(|e| body(topic, "b", e)).expect("append");
        // Written, and its hand-on holds the log thread: no roll of
        // segment 2 (idle, after 10 ms) until let go.
        drop(groups.recv().expect("handed on"));
        assert_eq!(segments(dir.path()), [1, 2]);
        indexer.sweep(&mut db);
        assert_eq!(segments(dir.path()), [2]);
        // Nothing more to remove: no sync.
        let commits = db.commits;
        indexer.sweep(&mut db);
        assert_eq!(db.commits, commits);
        go.send(()).expect("go");
        thread.finish();
    }

    /// A segment file past the writer's (one a rotation that failed after
    /// creating it left behind, while the writer goes on in its segment)
    /// does not make the writer's segment look sealed: it stays.
    #[tokio::test]
    async fn a_file_past_the_writers_segment_does_not_get_it_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let (mut db, log, thread, mut indexer, groups) =
            indexed_log_to(dir.path(), Limits::default());
        let topic = Uuid::now_v7();
        let e = log.append_body(|e| body(topic, "a", e)).expect("append");
        log.wait_synced(e.seq).await.expect("synced");
        indexer.index(&mut db, vec![groups.recv().expect("handed on")]);
        std::fs::write(
            dir.path()
                .join(MESSAGE_LOG_DIR)
                .join(format!("{:020}.seg", 2)),
            b"",
        )
        .expect("stray");
        indexer.sweep(&mut db);
        assert_eq!(segments(dir.path()), [1, 2], "the writer's segment stays");
        thread.finish();
    }

    /// The store sweeps at its tidy ticks: a log of many segments (here
    /// one a group) leaves only the writer's, and after a restart history
    /// and seq carry on.
    #[tokio::test]
    async fn the_store_removes_indexed_segments_and_carries_on_after_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let limits = Limits {
            segment_bytes: 1,
            ..Limits::default()
        };
        let store = Store::open_observed(dir.path(), "n1", limits, |_| {}).expect("open");
        let topic = Uuid::now_v7();
        for id in ["a", "b", "c"] {
            keep(&store, topic, id).await;
        }
        assert_eq!(history(&store, topic).await, ["a", "b", "c"]);
        assert_eq!(segments(dir.path()), [1, 2, 3]);
        assert!(store.tidy());
        // A job queued after the tick runs after its sweep.
        store.call(|_| Ok(())).await.expect("call");
        assert_eq!(segments(dir.path()), [3]);
        store.close().await;
        let store = Store::open(dir.path(), "n1").expect("reopen");
        assert_eq!(history(&store, topic).await, ["a", "b", "c"]);
        assert_eq!(keep(&store, topic, "d").await.seq, 4);
        assert_eq!(history(&store, topic).await, ["a", "b", "c", "d"]);
        store.close().await;
    }
}
