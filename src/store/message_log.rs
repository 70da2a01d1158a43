//! This node's kept messages on their way to disk: appended by sessions
//! as they relay them, written and synced by a thread of their own.
//!
//! The revised store plan (bench/README.md, eighteenth round): a kept
//! message costs what a plain send costs plus one append here. A session
//! appends the message's record under a mutex (its seq and clock are
//! assigned there) and relays it at once; connection writers hold what
//! they take until [`MessageLog::synced`] passes what was appended when
//! they took it ([`MessageLog::wait_synced`]), so no relay or `ack` leaves
//! before its message is on disk. The log thread swaps the pending records
//! out, writes them as one group to the segment log ([`super::segment`]),
//! syncs it, hands the group on (to be indexed) and then publishes the
//! synced seq. Bytes in hand (appended and not yet synced, or synced and
//! not yet indexed: a group's bytes count until the index drops it) are
//! bounded, so neither a slow disk nor a lagging index grows memory: an
//! append that would pass the bound is refused with [`AppendError::Full`],
//! and the session waits for
//! [`MessageLog::room`] before it reads more from its client.
//!
//! A failed write or sync is final, as for the WAL (`store::wal`): the
//! synced seq stops there, appends are refused, and waiters hear it.
//!
//! The log thread also starts a new segment when the current one is older
//! than [`Limits::roll_after`] (before the next group, or when idle): the
//! store removes segments once everything in them is indexed
//! (`message_index::Indexer::sweep`), so this bounds how long a quiet log
//! keeps what the index has since erased.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use super::log::next_hlc;
use super::segment::{self, Group, Position};

/// A record appended: its place in the log's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Gapless from 1, in append order.
    pub seq: u64,
    /// The log's clock at the append, never going backwards.
    pub hlc: u64,
}

/// Why an append was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Unsynced bytes are at their bound: wait for [`MessageLog::room`].
    #[error("the message log is full until its next sync")]
    Full,
    /// The log is closing.
    #[error("the message log is closed")]
    Closed,
    /// A write or sync failed: nothing more is kept until a restart.
    #[error("the message log stopped after a failed write or sync")]
    Failed,
    /// The record is over the log's limit ([`segment::MAX_BODY`]), far
    /// above any message a session accepts.
    #[error("the record is over the message log's limit")]
    TooLarge,
}

/// A group the log thread wrote and synced, for the index. Its bytes
/// count toward [`Limits::pending_bytes`] until it is dropped (indexed),
/// so a lagging index holds appenders back instead of growing the queue
/// of groups to index.
#[derive(Debug)]
pub struct Synced {
    /// Where each record is in the segment log, in seq order.
    positions: Vec<Position>,
    /// Where the record after them goes.
    pub end: Position,
    /// How long writing and syncing them took.
    pub took: std::time::Duration,
    /// The records; gives their bytes back to the bound when dropped.
    held: Held,
}

impl Synced {
    /// The records, in seq order, with their positions.
    pub fn records(&self) -> impl Iterator<Item = SyncedRecord<'_>> {
        self.held
            .group
            .records()
            .zip(&self.positions)
            .map(|(r, &at)| SyncedRecord {
                entry: Entry {
                    seq: r.seq,
                    hlc: r.hlc,
                },
                at,
                body: r.body,
            })
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.positions.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.positions.is_empty()
    }
}

/// A group's records and their share of the bound on bytes in hand: the
/// bytes go back to the bound, and the group's room to the log for a later
/// group, when dropped.
#[derive(Debug)]
struct Held {
    shared: Arc<Shared>,
    bytes: usize,
    group: Group,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shared
            .release(self.bytes, std::mem::take(&mut self.group));
    }
}

/// One record of a [`Synced`] group.
#[derive(Debug, Clone, Copy)]
pub struct SyncedRecord<'a> {
    /// Its seq and clock.
    pub entry: Entry,
    /// Where it is in the segment log.
    pub at: Position,
    /// Its body.
    pub body: &'a [u8],
}

/// The log's settings.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Bytes of records (their heads in the log included) appended and
    /// not yet synced, or synced and not yet indexed (handed on, and not
    /// yet dropped), at most; one record is always taken, whatever its
    /// size.
    pub pending_bytes: usize,
    /// A segment's size past which the next group starts a new one.
    pub segment_bytes: u64,
    /// A segment's age past which the log starts a new one (before the
    /// next group, or when idle for as long): whole segments leave the
    /// disk once indexed, so this bounds how long a message deleted from
    /// the index (a redaction, retention) stays in the log's files.
    pub roll_after: Duration,
    /// Synced bytes behind the log's end kept in the page cache; older
    /// pages are dropped from it ([`segment::Writer::uncache`]).
    pub cached_bytes: u64,
    /// How long after a group's write began the log waits before it
    /// writes the next, when records came in meanwhile (the log is busy):
    /// groups then gather what comes in that long, and the log syncs at
    /// most so often. A log that was idle writes a record at once; a group
    /// of [`Limits::full_group_bytes`] does not wait. Zero: never waits.
    pub group_wait: Duration,
}

impl Limits {
    /// Pending bytes past which a group is written without waiting out
    /// [`Limits::group_wait`]: its write outweighs a sync's fixed cost,
    /// and waiting longer would only hold its senders back.
    pub fn full_group_bytes(&self) -> usize {
        FULL_GROUP_BYTES.min(self.pending_bytes / 2).max(1)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pending_bytes: 32 << 20,
            segment_bytes: 64 << 20,
            roll_after: Duration::from_secs(600),
            cached_bytes: 1 << 20,
            group_wait: DEFAULT_GROUP_WAIT,
        }
    }
}

/// The appending end, shared by sessions and writers.
#[derive(Debug, Clone)]
pub struct MessageLog {
    shared: Arc<Shared>,
    /// The log's end when it was opened: what the index may have to catch
    /// up with lies before it.
    opened_end: Position,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the log thread: records pending, or the close.
    work: Condvar,
    /// The last seq synced.
    synced: AtomicU64,
    /// The last seq appended (`State::last`, readable without the lock by
    /// writers, once per batch).
    appended: AtomicU64,
    failed: AtomicBool,
    /// The writer's segment: every segment below it is sealed (synced,
    /// never written again).
    writing: AtomicU64,
    /// Wakes writers waiting for a sync (and for a failure or the close).
    synced_moved: tokio::sync::Notify,
    /// Wakes sessions waiting for room (as a group is indexed, and at a
    /// failure or the close). Apart from `synced_moved`: each group indexed
    /// had woken every writer waiting for the next sync, hundreds of them
    /// under load, only to wait again.
    room_moved: tokio::sync::Notify,
    limits: Limits,
}

#[derive(Debug)]
struct State {
    /// Records appended and not yet taken by the log thread, in the log's
    /// format.
    pending: Group,
    /// Emptied groups whose room the next groups take (at most
    /// [`SPARE_GROUPS`], their room together within the bound on bytes in
    /// hand; dropped, with the pending group's room, when the log goes
    /// quiet).
    spare: Vec<Group>,
    /// The last seq and clock handed out.
    last: Entry,
    /// Bytes appended and not yet synced, or synced and not yet indexed.
    in_hand: usize,
    closed: bool,
}

/// The log thread, joined by [`LogThread::finish`].
#[derive(Debug)]
pub struct LogThread {
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl MessageLog {
    /// Opens the log in `dir` (cutting a torn tail: see
    /// [`segment::Writer::open`]) and starts its thread, which gives each
    /// synced group to `on_synced`. Seq carries on from the log's last
    /// record, or from `floor` if that is higher (what an index already
    /// holds of it).
    pub fn open(
        dir: &Path,
        limits: Limits,
        floor: Entry,
        on_synced: impl FnMut(Synced) + Send + 'static,
    ) -> Result<(MessageLog, LogThread), segment::Error> {
        let opened = segment::Writer::open(dir, limits.segment_bytes)?;
        let opened_end = opened.writer.end();
        let (seq, hlc) = opened.last.unwrap_or((0, 0));
        let last = Entry {
            seq: seq.max(floor.seq),
            hlc: hlc.max(floor.hlc),
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                pending: Group::default(),
                spare: Vec::new(),
                last,
                in_hand: 0,
                closed: false,
            }),
            work: Condvar::new(),
            synced: AtomicU64::new(last.seq),
            appended: AtomicU64::new(last.seq),
            failed: AtomicBool::new(false),
            writing: AtomicU64::new(opened_end.segment),
            synced_moved: tokio::sync::Notify::new(),
            room_moved: tokio::sync::Notify::new(),
            limits,
        });
        let mut writer = opened.writer;
        writer.keep_cached(shared.limits.cached_bytes);
        let log = shared.clone();
        let mut on_synced = on_synced;
        let thread = std::thread::Builder::new()
            .name("tenthbit-msglog".into())
            .spawn(move || {
                let roll_after = log.limits.roll_after;
                let mut last_write = None;
                loop {
                    let mut group = match log.next_group(roll_after, last_write) {
                        Next::Done => break,
                        Next::Idle => {
                            roll(&mut writer, roll_after);
                            log.writing.store(writer.end().segment, Ordering::Release);
                            continue;
                        }
                        Next::Group(group) => group,
                    };
                    roll(&mut writer, roll_after);
                    let bytes = group.byte_len();
                    let started = std::time::Instant::now();
                    last_write = Some(started);
                    let written = write_group(&mut writer, &mut group);
                    // Rolled, or rotated by the append, once the segment
                    // before was synced.
                    log.writing.store(writer.end().segment, Ordering::Release);
                    match written {
                        Ok((positions, end)) => {
                            let last = group.records().last().map_or(0, |r| r.seq);
                            // Handed on before it counts as synced: whatever
                            // a client does once it hears of the message
                            // (an edit of it) is queued behind its index.
                            let took = started.elapsed();
                            let held = Held {
                                shared: log.clone(),
                                bytes,
                                group,
                            };
                            on_synced(Synced {
                                positions,
                                end,
                                took,
                                held,
                            });
                            log.synced.fetch_max(last, Ordering::AcqRel);
                            // Synced: writers may go on.
                            log.synced_moved.notify_waiters();
                        }
                        Err(e) => {
                            tracing::error!(error = %e, records = group.len(),
                                "cannot write the message log: no kept message is \
                                 acknowledged until the daemon restarts (check the disk)");
                            log.fail();
                        }
                    }
                }
            })
            .map_err(|e| segment::Error::Io {
                path: dir.to_path_buf(),
                source: e,
            })?;
        Ok((
            MessageLog {
                shared: shared.clone(),
                opened_end,
            },
            LogThread {
                thread: Some(thread),
                shared,
            },
        ))
    }

    /// Appends one record, its body written by `body` (appending to the
    /// vector it is given) from its seq and clock: the log's clock, taken
    /// on from `now_ms` (the caller's reading of Unix milliseconds), is
    /// the message's time, which a relay carries. The body is written
    /// under the log's lock, so records are in seq order, straight into
    /// the group the log thread writes.
    pub fn append(
        &self,
        now_ms: i64,
        body: impl FnOnce(Entry, &mut Vec<u8>),
    ) -> Result<Entry, AppendError> {
        let shared = &self.shared;
        if shared.failed.load(Ordering::Acquire) {
            return Err(AppendError::Failed);
        }
        let mut state = shared.lock();
        if state.closed {
            return Err(AppendError::Closed);
        }
        if state.in_hand >= shared.limits.pending_bytes {
            return Err(AppendError::Full);
        }
        let now = u64::try_from(now_ms).unwrap_or(0);
        let entry = Entry {
            seq: state.last.seq + 1,
            hlc: next_hlc(state.last.hlc, now),
        };
        let first = state.pending.is_empty();
        let before = state.pending.byte_len();
        if let Err(e) = state
            .pending
            .push(entry.seq, entry.hlc, |out| body(entry, out))
        {
            tracing::error!(error = %e, "message log: a record was refused");
            return Err(AppendError::TooLarge);
        }
        let after = state.pending.byte_len();
        let added = after.saturating_sub(before);
        state.in_hand = state.in_hand.saturating_add(added);
        state.last = entry;
        shared.appended.store(entry.seq, Ordering::Release);
        drop(state);
        // The log thread waits for a first record, and may wait for more
        // until a group is full (`Limits::group_wait`).
        let full = shared.limits.full_group_bytes();
        if first || (before < full && after >= full) {
            shared.work.notify_one();
        }
        Ok(entry)
    }

    /// [`MessageLog::append`] of the body `body` returns, at the clock's
    /// time: for tests.
    #[cfg(test)]
    pub(crate) fn append_body(
        &self,
        body: impl FnOnce(Entry) -> Vec<u8>,
    ) -> Result<Entry, AppendError> {
        self.append(crate::proto::id::now_ms(), |e, out| {
            out.extend_from_slice(&body(e))
        })
    }

    /// The log's end when it was opened (every record before it was
    /// written by an earlier run).
    pub fn opened_end(&self) -> Position {
        self.opened_end
    }

    /// The writer's segment: the log's segments below it are sealed, and
    /// a file past it (one a failed rotation left) is not the writer's.
    pub fn writing(&self) -> u64 {
        self.shared.writing.load(Ordering::Acquire)
    }

    /// The last seq appended.
    pub fn appended(&self) -> u64 {
        self.shared.appended.load(Ordering::Acquire)
    }

    /// The last seq synced.
    pub fn synced(&self) -> u64 {
        self.shared.synced.load(Ordering::Acquire)
    }

    /// Waits until every record up to `seq` is synced; `Err` once a write
    /// or sync has failed (they never will be).
    pub async fn wait_synced(&self, seq: u64) -> Result<(), AppendError> {
        let shared = &self.shared;
        loop {
            let moved = shared.synced_moved.notified();
            let mut moved = std::pin::pin!(moved);
            moved.as_mut().enable();
            if shared.synced.load(Ordering::Acquire) >= seq {
                return Ok(());
            }
            if shared.failed.load(Ordering::Acquire) {
                return Err(AppendError::Failed);
            }
            moved.await;
        }
    }

    /// Waits until the bytes in hand are down to half the bound (or the
    /// log is closed or failed, when an append is refused at once): the
    /// sessions held back then wake once per half of the bound, not once
    /// per group indexed, and each finds room for a run of appends.
    pub async fn room(&self) {
        let shared = &self.shared;
        loop {
            let moved = shared.room_moved.notified();
            let mut moved = std::pin::pin!(moved);
            moved.as_mut().enable();
            {
                let state = shared.lock();
                if state.closed
                    || state.in_hand <= shared.limits.pending_bytes / 2
                    || shared.failed.load(Ordering::Acquire)
                {
                    return;
                }
            }
            moved.await;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The records pending, waiting for some at most `idle` (at least
    /// [`IDLE_WAIT_MIN`]); and, when the last group's write began less
    /// than [`Limits::group_wait`] ago, for more until then.
    fn next_group(&self, idle: Duration, last_write: Option<std::time::Instant>) -> Next {
        let mut state = self.lock();
        loop {
            if self.failed.load(Ordering::Acquire) {
                return Next::Done;
            }
            if !state.pending.is_empty() {
                let gather = gather_for(
                    &self.limits,
                    last_write.map(|t| t.elapsed()),
                    state.pending.byte_len(),
                    state.closed,
                );
                if let Some(wait) = gather {
                    // An append that fills the group wakes it early.
                    state = self
                        .work
                        .wait_timeout(state, wait)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    continue;
                }
                let next = state.spare.pop().unwrap_or_default();
                return Next::Group(std::mem::replace(&mut state.pending, next));
            }
            if state.closed {
                return Next::Done;
            }
            // Room kept: the spare groups', and the empty pending group's
            // (a spare's, or what the last group grew to).
            let kept = !state.spare.is_empty() || state.pending.capacity() > 0;
            let wait = if kept { idle.min(SPARE_KEPT) } else { idle };
            let (next, waited) = self
                .work
                .wait_timeout(state, wait.max(IDLE_WAIT_MIN))
                .unwrap_or_else(|p| p.into_inner());
            state = next;
            if waited.timed_out() && state.pending.is_empty() && !state.closed {
                // Quiet: the room kept goes back first, and the segment's
                // age is looked at after the next wait.
                if !kept {
                    return Next::Idle;
                }
                state.spare = Vec::new();
                state.pending = Group::default();
            }
        }
    }

    /// A group's `bytes` are done with (indexed): room for more, and its
    /// room kept for a later group.
    fn release(&self, bytes: usize, mut group: Group) {
        let mut state = self.lock();
        state.in_hand = state.in_hand.saturating_sub(bytes);
        // The spare groups' room together stays within the bound on bytes
        // in hand: a group that grew past it (one record is always taken,
        // whatever its size) is not kept.
        let room: usize = state.spare.iter().map(Group::capacity).sum();
        let within = room.saturating_add(group.capacity()) <= self.limits.pending_bytes;
        if state.spare.len() < SPARE_GROUPS && !state.closed && within {
            group.clear();
            state.spare.push(group);
        }
        drop(state);
        self.room_moved.notify_waiters();
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
        self.synced_moved.notify_waiters();
        self.room_moved.notify_waiters();
    }
}

/// How much longer the log thread waits for more records before it
/// writes the `pending` bytes it holds, if at all: while its last write
/// began (`since_write` ago) less than [`Limits::group_wait`] ago, unless
/// the group is full or the log is closing. A log that has written nothing
/// yet does not wait.
fn gather_for(
    limits: &Limits,
    since_write: Option<Duration>,
    pending: usize,
    closed: bool,
) -> Option<Duration> {
    let left = limits.group_wait.checked_sub(since_write?)?;
    (!left.is_zero() && !closed && pending < limits.full_group_bytes()).then_some(left)
}

/// What the log thread does next.
enum Next {
    /// Write and sync these records.
    Group(Group),
    /// Nothing came for a while: see whether the segment is due to roll.
    Idle,
    /// Closed and drained, or failed.
    Done,
}

/// The shortest idle wait of the log thread, whatever `roll_after` says.
const IDLE_WAIT_MIN: Duration = Duration::from_millis(10);

/// [`Limits::group_wait`] unless configured (`history.log_group_wait_us`):
/// Kafka's producers gather a batch as long by default (`linger.ms`), for
/// the same reason. Each group has a fixed cost: under chatbench's pairs
/// with history the log wrote about 950 a second without waiting, each
/// about 190 µs of the log thread's time in the kernel (its write, ext4's
/// inode write, the flush) and three thread wake-ups; waiting 5 ms cut the
/// server's CPU for the run by a quarter (bench/README.md, twenty-fifth
/// round).
pub const DEFAULT_GROUP_WAIT: Duration = Duration::from_millis(5);

/// [`Limits::full_group_bytes`] unless `pending_bytes` is small.
const FULL_GROUP_BYTES: usize = 1 << 20;

/// Emptied groups kept for their room at most: under load, one filling,
/// one being written and a few waiting for the index.
const SPARE_GROUPS: usize = 4;

/// How long the log stays quiet before the spare groups' room is given
/// back.
const SPARE_KEPT: Duration = Duration::from_secs(1);

/// Starts a new segment if the writer's is older than `age`. A failure is
/// logged: the segment goes on taking records, and a writer that can no
/// longer write refuses the next group, which fails the log.
fn roll(writer: &mut segment::Writer, age: Duration) {
    if let Err(e) = writer.roll_if_older(age) {
        tracing::warn!(error = %e, "message log: cannot start a new segment (check the disk)");
    }
}

/// Writes a group and syncs it; the records' positions, and the log's end.
fn write_group(
    writer: &mut segment::Writer,
    group: &mut Group,
) -> Result<(Vec<Position>, Position), segment::Error> {
    let appended = writer.append_group(group)?;
    appended
        .file
        .sync_data()
        .map_err(|source| segment::Error::Io {
            path: appended.path.clone(),
            source,
        })?;
    writer.uncache();
    Ok((appended.positions, appended.end))
}

impl LogThread {
    /// Closes the log: appends are refused from now on; what was appended
    /// is written, synced and handed on before this returns.
    pub fn finish(mut self) {
        self.close_and_join();
    }

    fn close_and_join(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_one();
        self.shared.synced_moved.notify_waiters();
        self.shared.room_moved.notify_waiters();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for LogThread {
    fn drop(&mut self) {
        self.close_and_join();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use futures_util::FutureExt;

    use super::*;

    fn body(e: Entry) -> Vec<u8> {
        format!("message {}", e.seq).into_bytes()
    }

    const START: Entry = Entry { seq: 0, hlc: 0 };

    #[tokio::test]
    async fn appends_are_numbered_synced_and_handed_on() {
        let dir = tempfile::tempdir().expect("dir");
        let (tx, rx) = mpsc::channel();
        let (log, thread) = MessageLog::open(dir.path(), Limits::default(), START, move |g| {
            let _ = tx.send(g);
        })
        .expect("open");
        let entries: Vec<Entry> = (0..3)
            .map(|_| log.append_body(body).expect("append"))
            .collect();
        assert_eq!(entries.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert!(entries.windows(2).all(|w| w[0].hlc < w[1].hlc));
        assert_eq!(log.appended(), 3);
        log.wait_synced(3).await.expect("synced");
        assert!(log.synced() >= 3);
        let mut groups = Vec::new();
        while groups.iter().map(Synced::len).sum::<usize>() < 3 {
            groups.push(rx.recv().expect("a group"));
        }
        let handed: Vec<SyncedRecord> = groups.iter().flat_map(Synced::records).collect();
        let reader = segment::Reader::new(dir.path());
        for (r, e) in handed.iter().zip(&entries) {
            assert_eq!(r.entry, *e);
            assert_eq!(r.body, body(*e));
            let stored = reader.read(r.at).expect("read");
            assert_eq!(
                (stored.seq, stored.hlc, stored.body),
                (e.seq, e.hlc, body(*e))
            );
        }
        thread.finish();
        assert_eq!(log.append_body(body), Err(AppendError::Closed));
    }

    /// A segment older than `roll_after` is closed before the next group:
    /// with zero, every group starts a segment; with an hour, none does.
    #[tokio::test]
    async fn a_group_after_roll_after_starts_a_new_segment() {
        for (roll_after, rolls) in [(Duration::ZERO, true), (Duration::from_secs(3600), false)] {
            let dir = tempfile::tempdir().expect("dir");
            let (tx, rx) = mpsc::channel();
            let limits = Limits {
                roll_after,
                ..Limits::default()
            };
            let (log, thread) = MessageLog::open(dir.path(), limits, START, move |g| {
                let _ = tx.send(g);
            })
            .expect("open");
            let mut at = Vec::new();
            for _ in 0..2 {
                let e = log.append_body(body).expect("append");
                log.wait_synced(e.seq).await.expect("synced");
                let group: Synced = rx.recv().expect("a group");
                at.extend(group.records().map(|r| r.at.segment));
            }
            assert_eq!(at.len(), 2);
            assert_eq!(at[1] > at[0], rolls, "{roll_after:?}: segments {at:?}");
            thread.finish();
        }
    }

    /// The log waits for more only while its last write is recent, the
    /// group not full and the log not closing.
    #[test]
    fn a_group_waits_for_more_only_while_the_log_is_busy() {
        let limits = Limits {
            group_wait: Duration::from_millis(5),
            ..Limits::default()
        };
        let full = limits.full_group_bytes();
        let ms = Duration::from_millis;
        assert_eq!(gather_for(&limits, Some(ms(1)), 100, false), Some(ms(4)));
        // Idle before: nothing written yet, or the last write long ago.
        assert_eq!(gather_for(&limits, None, 100, false), None);
        assert_eq!(gather_for(&limits, Some(ms(5)), 100, false), None);
        assert_eq!(gather_for(&limits, Some(ms(60_000)), 100, false), None);
        // Full, or closing.
        assert_eq!(gather_for(&limits, Some(ms(1)), full, false), None);
        assert_eq!(
            gather_for(&limits, Some(ms(1)), full - 1, false),
            Some(ms(4))
        );
        assert_eq!(gather_for(&limits, Some(ms(1)), 100, true), None);
        // Zero never waits.
        let never = Limits {
            group_wait: Duration::ZERO,
            ..limits
        };
        assert_eq!(gather_for(&never, Some(Duration::ZERO), 100, false), None);
        // A small bound on bytes in hand makes a smaller full group.
        let small = Limits {
            pending_bytes: 64 * 1024,
            ..limits
        };
        assert_eq!(small.full_group_bytes(), 32 * 1024);
    }

    /// A record that comes to an idle log is written at once; records that
    /// come while the log is busy (its last write began less than
    /// `group_wait` ago) wait for more, until the group is full; closing
    /// writes what waits at once.
    #[tokio::test]
    async fn a_busy_log_gathers_a_group_until_it_is_full() {
        let dir = tempfile::tempdir().expect("dir");
        let (tx, rx) = mpsc::channel();
        let limits = Limits {
            group_wait: Duration::from_secs(3600),
            ..Limits::default()
        };
        let full = limits.full_group_bytes();
        let (log, thread) = MessageLog::open(dir.path(), limits, START, move |g: Synced| {
            let _ = tx.send(g.len());
        })
        .expect("open");
        let within = |seq| tokio::time::timeout(Duration::from_secs(30), log.wait_synced(seq));
        let e = log.append_body(body).expect("append");
        within(e.seq)
            .await
            .expect("an idle log writes at once")
            .expect("synced");
        assert_eq!(rx.recv().expect("a group"), 1);
        // Three records of a third of a full group each: the third fills it.
        let third = vec![b'x'; full / 3 + 1];
        let mut last = e;
        for _ in 0..3 {
            last = log.append_body(|_| third.clone()).expect("append");
        }
        within(last.seq)
            .await
            .expect("a full group is written")
            .expect("synced");
        assert_eq!(rx.recv().expect("a group"), 3, "gathered into one group");
        // One more waits for the group to fill, until the log closes.
        let waiting = log.append_body(body).expect("append");
        assert!(log.synced() < waiting.seq);
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            thread.finish();
            let _ = done.send(());
        });
        finished
            .recv_timeout(Duration::from_secs(30))
            .expect("closing writes what waits at once");
        assert_eq!(log.synced(), waiting.seq);
        assert_eq!(rx.recv().expect("a group"), 1);
    }

    /// With nothing to write, the log thread comes back after `roll_after`
    /// (to roll a quiet log's segment) instead of sleeping until a record.
    #[test]
    fn with_nothing_to_write_the_log_thread_comes_back_idle() {
        let dir = tempfile::tempdir().expect("dir");
        let (log, thread) =
            MessageLog::open(dir.path(), Limits::default(), START, |_| {}).expect("open");
        assert!(matches!(
            log.shared.next_group(Duration::from_millis(1), None),
            Next::Idle
        ));
        log.append_body(body).expect("append");
        thread.finish();
        assert!(matches!(
            log.shared.next_group(Duration::from_millis(1), None),
            Next::Done
        ));
    }

    #[tokio::test]
    async fn seq_and_clock_carry_on_after_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        let (log, thread) =
            MessageLog::open(dir.path(), Limits::default(), START, |_| {}).expect("open");
        let mut last = START;
        for _ in 0..5 {
            last = log.append_body(body).expect("append");
        }
        // Closing writes and syncs what was appended.
        thread.finish();
        let (log, thread) =
            MessageLog::open(dir.path(), Limits::default(), START, |_| {}).expect("reopen");
        let next = log.append_body(body).expect("append");
        assert_eq!(next.seq, last.seq + 1);
        assert!(next.hlc > last.hlc);
        thread.finish();
        // An index that holds more than the log (a log lost with its
        // disk) is not numbered under.
        let floor = Entry {
            seq: 100,
            hlc: u64::MAX >> 1,
        };
        let (log, _thread) =
            MessageLog::open(dir.path(), Limits::default(), floor, |_| {}).expect("reopen");
        let next = log.append_body(body).expect("append");
        assert_eq!(
            next,
            Entry {
                seq: 101,
                hlc: floor.hlc + 1
            }
        );
    }

    /// A log whose thread stops in its first group's hand-off until told:
    /// what is appended meanwhile stays unsynced.
    fn held(
        dir: &Path,
        limits: Limits,
    ) -> (MessageLog, LogThread, mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered, in_hand_off) = mpsc::channel();
        let (go, wait) = mpsc::channel::<()>();
        let (log, thread) = MessageLog::open(dir, limits, START, move |_| {
            let _ = entered.send(());
            let _ = wait.recv();
        })
        .expect("open");
        (log, thread, in_hand_off, go)
    }

    #[tokio::test]
    async fn a_group_counts_as_synced_once_handed_on() {
        let dir = tempfile::tempdir().expect("dir");
        let (log, thread, in_hand_off, go) = held(dir.path(), Limits::default());
        let first = log.append_body(body).expect("first");
        in_hand_off.recv().expect("the first group is written");
        // On disk, but its index has not been queued yet: not counted.
        assert_eq!(log.synced(), 0);
        let mut waiting = std::pin::pin!(log.wait_synced(first.seq));
        assert!((&mut waiting).now_or_never().is_none(), "not counted yet");
        go.send(()).expect("go");
        waiting.await.expect("synced");
        assert_eq!(log.synced(), first.seq);
        drop(go);
        thread.finish();
    }

    /// A synced group's bytes stay in hand until the index drops it: a
    /// lagging index holds appenders back instead of queueing more groups.
    #[tokio::test]
    async fn a_synced_group_holds_its_bytes_until_dropped() {
        let dir = tempfile::tempdir().expect("dir");
        let limits = Limits {
            pending_bytes: 9,
            ..Limits::default()
        };
        let (to_index, groups) = mpsc::channel();
        let (log, thread) = MessageLog::open(dir.path(), limits, START, move |g| {
            let _ = to_index.send(g);
        })
        .expect("open");
        let first = log.append_body(body).expect("first");
        log.wait_synced(first.seq).await.expect("synced");
        let group = groups.recv().expect("handed on");
        assert_eq!(
            log.append_body(body),
            Err(AppendError::Full),
            "synced, not indexed"
        );
        let mut room = std::pin::pin!(log.room());
        assert!((&mut room).now_or_never().is_none(), "no room yet");
        drop(group);
        room.await;
        assert_eq!(log.append_body(body).expect("room again").seq, 2);
        thread.finish();
    }

    /// A group the index is done with lends its room to a later group,
    /// and the log gives that room back once it is quiet.
    #[tokio::test]
    async fn a_dropped_group_lends_its_room_until_the_log_is_quiet() {
        let dir = tempfile::tempdir().expect("dir");
        let (tx, rx) = mpsc::channel();
        let (log, thread) = MessageLog::open(dir.path(), Limits::default(), START, move |g| {
            let _ = tx.send(g);
        })
        .expect("open");
        let spare = |log: &MessageLog| log.shared.lock().spare.len();
        let first = log.append_body(body).expect("first");
        log.wait_synced(first.seq).await.expect("synced");
        drop(rx.recv().expect("handed on"));
        assert_eq!(spare(&log), 1, "kept for its room");
        let second = log.append_body(body).expect("second");
        log.wait_synced(second.seq).await.expect("synced");
        let group = rx.recv().expect("handed on");
        assert_eq!(spare(&log), 0, "taken by the next group");
        drop(group);
        assert_eq!(spare(&log), 1);
        // Quiet: a wait that ends without work gives the spare room back
        // before it looks at the segment's age.
        assert!(matches!(
            log.shared.next_group(Duration::from_millis(1), None),
            Next::Idle
        ));
        assert_eq!(spare(&log), 0);
        thread.finish();
    }

    /// The room kept for later groups stays within the bound on bytes in
    /// hand: a group that grew past it (a record over the bound is taken
    /// alone) is not kept. And once the log is quiet, no room is kept at
    /// all, the pending group's (a spare's, taken by the last group) too.
    #[tokio::test]
    async fn the_room_kept_stays_within_the_bound_and_goes_when_quiet() {
        let dir = tempfile::tempdir().expect("dir");
        let (tx, rx) = mpsc::channel();
        let limits = Limits {
            pending_bytes: 4096,
            ..Limits::default()
        };
        let (log, thread) = MessageLog::open(dir.path(), limits, START, move |g| {
            let _ = tx.send(g);
        })
        .expect("open");
        let kept = |log: &MessageLog| {
            let state = log.shared.lock();
            state.spare.iter().map(Group::capacity).sum::<usize>() + state.pending.capacity()
        };
        let big = log
            .append_body(|_| vec![b'x'; 1 << 20])
            .expect("taken alone");
        log.wait_synced(big.seq).await.expect("synced");
        drop(rx.recv().expect("handed on"));
        assert!(kept(&log) <= 4096, "a megabyte kept: {}", kept(&log));
        for _ in 0..2 {
            let e = log.append_body(body).expect("small");
            log.wait_synced(e.seq).await.expect("synced");
            drop(rx.recv().expect("handed on"));
        }
        assert!(kept(&log) > 0, "small groups lend their room");
        assert!(matches!(
            log.shared.next_group(Duration::from_millis(1), None),
            Next::Idle
        ));
        assert_eq!(kept(&log), 0, "quiet: nothing kept");
        thread.finish();
    }

    #[tokio::test]
    async fn an_append_past_the_pending_bound_waits_for_room() {
        let dir = tempfile::tempdir().expect("dir");
        let limits = Limits {
            pending_bytes: 120,
            ..Limits::default()
        };
        let (log, thread, in_hand_off, go) = held(dir.path(), limits);
        log.append_body(body).expect("first");
        in_hand_off.recv().expect("the first group is written");
        // Each record is 33 bytes (its 24-byte head and a 9-byte body),
        // the first's still counted: the fourth brings it to 132, past
        // 120.
        for _ in 0..3 {
            log.append_body(body).expect("within the bound");
        }
        assert_eq!(log.append_body(body), Err(AppendError::Full));
        let mut room = std::pin::pin!(log.room());
        assert!((&mut room).now_or_never().is_none(), "no room yet");
        go.send(()).expect("go");
        // The first group is indexed (dropped) once the second is handed
        // on: 99 bytes in hand, under the bound but above its half.
        in_hand_off.recv().expect("the second group is written");
        assert!((&mut room).now_or_never().is_none(), "woken above half");
        go.send(()).expect("go");
        room.await;
        let next = log.append_body(body).expect("room again");
        assert_eq!(next.seq, 5);
        drop(go);
        thread.finish();
    }
}
