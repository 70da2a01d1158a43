//! Keeping the write-ahead log's disk waits off the store thread.
//!
//! A group commit of sessions' changes is written with SQLite's
//! `synchronous = NORMAL` (the WAL is written, not synced), and the
//! [`Syncer`] thread syncs the WAL file and only then answers the group's
//! callers: an `ack` still means the change survives a power loss, but the
//! store thread builds the next group while the disk flushes this one, and
//! one sync covers every group that committed meanwhile. Jobs run with
//! [`super::Store::call_synced`] (the writes of clients' requests) are
//! answered the same way, a run of them at a time. The [`Checkpointer`]
//! thread copies the WAL into the database on a connection of its own
//! (SQLite's passive checkpoint, which never blocks the writer), so the
//! writer no longer stops for the copy and the database file's sync.
//!
//! Under chatbench's pairs with history the store thread had spent about a
//! fifth of its time waiting for those syncs (bench/README.md, "Eighth
//! round").
//!
//! What a change is visible as before its sync: committed rows are read by
//! history and search at once (so for the few milliseconds of a sync a
//! reader may see a message that a power loss would then take back, and
//! that was never acknowledged); but this node's own events reach mesh
//! peers only once synced (see [`Durable`]), so a power loss can never take
//! back an event a peer holds.
//!
//! A sync that fails is final: the disk may have dropped what it reported
//! written, and a later sync can succeed without having written it. From
//! then on no group is acknowledged and nothing more is marked durable;
//! the operator restarts the daemon once the disk is checked.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, oneshot};

use super::{Error, Event};

/// The highest seq of this node's own origin known to be on disk: mesh
/// links send this node's events up to it and no further. Shared by the
/// store thread (a change it committed with a sync of its own) and the
/// [`Syncer`]. It stops for good once a sync has failed.
#[derive(Debug, Clone, Default)]
pub struct Durable(Arc<DurableState>);

#[derive(Debug, Default)]
struct DurableState {
    seq: AtomicU64,
    failed: AtomicBool,
}

impl Durable {
    /// Starts at `seq`.
    pub fn new(seq: u64) -> Self {
        let d = Self::default();
        d.0.seq.store(seq, Ordering::Release);
        d
    }

    /// The highest own seq on disk.
    pub fn get(&self) -> u64 {
        self.0.seq.load(Ordering::Acquire)
    }

    /// Records that every own seq up to `seq` is on disk, unless a sync
    /// has failed.
    pub fn reach(&self, seq: u64) {
        if !self.failed() {
            self.0.seq.fetch_max(seq, Ordering::AcqRel);
        }
    }

    /// Records that a sync failed: nothing is marked durable from now on.
    pub fn fail(&self) {
        self.0.failed.store(true, Ordering::Release);
    }

    /// Whether a sync has failed.
    pub fn failed(&self) -> bool {
        self.0.failed.load(Ordering::Acquire)
    }
}

/// The WAL file of the database at `db` (the path SQLite resolved, so a
/// symlinked database finds its WAL beside its target).
pub fn wal_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-wal");
    PathBuf::from(name)
}

/// Opens the WAL of the database at `db`, which an open connection in WAL
/// mode keeps in place, for the life of the store: one handle sees every
/// write error since it was opened, and a sync needs no file descriptor
/// free at the time.
pub fn open_wal(db: &Path) -> std::io::Result<File> {
    File::open(wal_path(db))
}

/// The outcomes of changes queued together, with who waits for them.
pub(super) type Answer = (
    oneshot::Sender<Vec<Result<Event, Error>>>,
    Vec<Result<Event, Error>>,
);

/// A synced-later job's answer ([`super::Store::call_synced`]): given the
/// sync's outcome, it answers the job's caller.
pub(super) type Reply = Box<dyn FnOnce(Result<(), Error>) + Send>;

/// A group commit, or a run of jobs, whose callers wait for its sync.
pub(super) struct Committed {
    /// Each change's outcome, in order.
    pub answers: Vec<Answer>,
    /// Each job's answer, in order.
    pub replies: Vec<Reply>,
    /// The queue room the changes took, given back once they are synced.
    pub rooms: Vec<OwnedSemaphorePermit>,
    /// The highest own seq the group wrote.
    pub seq: u64,
}

/// The thread that syncs group commits and then answers their callers, in
/// commit order.
pub(super) struct Syncer {
    queue: mpsc::Sender<Committed>,
    thread: JoinHandle<()>,
    /// Groups handed over whose sync has not ended yet (see
    /// [`Syncer::settled`]).
    unanswered: Arc<AtomicU64>,
    durable: Durable,
}

impl Syncer {
    /// Starts the thread that syncs `wal` (see [`open_wal`]). `synced` runs
    /// after each sync that made some group durable (it wakes mesh links).
    pub fn start(
        wal: File,
        durable: Durable,
        checkpoints: Checkpointer,
        synced: impl Fn() + Send + 'static,
    ) -> Result<Self, Error> {
        let (queue, rx) = mpsc::channel::<Committed>();
        let unanswered = Arc::new(AtomicU64::new(0));
        let answering = unanswered.clone();
        let state = durable.clone();
        let thread = std::thread::Builder::new()
            .name("tenthbit-sync".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    // Every group that committed while the last sync ran
                    // shares this one.
                    let groups: Vec<Committed> =
                        std::iter::once(first).chain(rx.try_iter()).collect();
                    let outcome = if durable.failed() {
                        Err("an earlier sync failed".to_owned())
                    } else {
                        wal.sync_data().map_err(|e| e.to_string())
                    };
                    match &outcome {
                        Ok(()) => {
                            durable.reach(groups.iter().map(|g| g.seq).max().unwrap_or(0));
                            // Links first: they may send what is now down.
                            synced();
                            checkpoints.nudge();
                        }
                        Err(e) => {
                            durable.fail();
                            tracing::error!(error = %e, groups = groups.len(),
                                "cannot sync the store's write-ahead log: no kept message is \
                                 acknowledged until the daemon restarts (check the disk)");
                        }
                    }
                    // Synced, or refused from now on: none of them holds
                    // back a job that wrote nothing, and their callers,
                    // answered next, find them counted out.
                    answering.fetch_sub(groups.len() as u64, Ordering::AcqRel);
                    // What each caller hears of the sync.
                    let synced = || {
                        outcome
                            .as_ref()
                            .map(|_| ())
                            .map_err(|e| Error::Corrupt(format!("not synced to disk: {e}")))
                    };
                    for group in groups {
                        // Room first: whoever hears back finds it free.
                        drop(group.rooms);
                        for (reply, results) in group.answers {
                            let _ =
                                reply.send(results.into_iter().map(|r| synced().and(r)).collect());
                        }
                        for reply in group.replies {
                            reply(synced());
                        }
                    }
                }
            })
            .map_err(|e| Error::Corrupt(format!("cannot start the store's sync thread: {e}")))?;
        Ok(Self {
            queue,
            thread,
            unanswered,
            durable: state,
        })
    }

    /// Hands a committed group over for its sync; gives it back if the
    /// thread is gone.
    pub fn send(&self, group: Committed) -> Result<(), Committed> {
        self.unanswered.fetch_add(1, Ordering::AcqRel);
        self.queue.send(group).map_err(|e| {
            self.unanswered.fetch_sub(1, Ordering::AcqRel);
            e.0
        })
    }

    /// Whether every group handed over has been synced, and no sync has
    /// failed: only then may a job that wrote nothing be
    /// answered at once, since what it read may be what an earlier job
    /// wrote (a `mark` that finds the account's other connection has just
    /// moved the marker there). Otherwise its answer waits its turn here.
    pub fn settled(&self) -> bool {
        self.unanswered.load(Ordering::Acquire) == 0 && !self.durable.failed()
    }

    /// Syncs and answers everything handed over, then ends the thread.
    pub fn finish(self) {
        drop(self.queue);
        let _ = self.thread.join();
    }
}

/// Least time between two checkpoints: each copies every page the WAL
/// changed since the last, once, however often the commits between them
/// rewrote it (as the writer's own every 10,000 pages did). Every second,
/// the thread took 0.9-1.1 s of CPU in a run of chatbench's pairs with
/// history (about 6% of the server's), copying the same index pages again
/// and again; every five, 0.2-0.4 s (bench/README.md, thirteenth round).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

/// The thread that copies the WAL into the database, on its own connection.
#[derive(Clone)]
pub(super) struct Checkpointer {
    nudge: SyncSender<()>,
}

impl Checkpointer {
    /// Starts the thread for the database at `db`. It ends when every
    /// handle on it is dropped.
    pub fn start(db: PathBuf) -> Result<(Self, JoinHandle<()>), Error> {
        let conn = rusqlite::Connection::open(&db).map_err(|cause| Error::Open {
            path: db.clone(),
            cause,
        })?;
        // A checkpoint waits for the writer's lock only in the modes that
        // need it; a passive one takes what it can and returns.
        conn.busy_timeout(Duration::from_secs(5))?;
        let (nudge, rx) = mpsc::sync_channel::<()>(1);
        let thread = std::thread::Builder::new()
            .name("tenthbit-checkpoint".into())
            .spawn(move || checkpoints(&conn, &rx))
            .map_err(|e| {
                Error::Corrupt(format!("cannot start the store's checkpoint thread: {e}"))
            })?;
        Ok((Self { nudge }, thread))
    }

    /// Says the WAL has grown; many nudges before the thread wakes are one.
    pub fn nudge(&self) {
        let _ = self.nudge.try_send(());
    }
}

fn checkpoints(conn: &rusqlite::Connection, nudges: &Receiver<()>) {
    let mut last: Option<Instant> = None;
    while nudges.recv().is_ok() {
        // Wait out the interval since the last checkpoint; nudges that come
        // meanwhile are this one.
        if let Some(due) = last.map(|t| t + CHECKPOINT_EVERY) {
            while let Some(left) = due.checked_duration_since(Instant::now()) {
                if let Err(RecvTimeoutError::Disconnected) = nudges.recv_timeout(left) {
                    return;
                }
            }
        }
        let started = Instant::now();
        let outcome: rusqlite::Result<(i64, i64, i64)> =
            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            });
        match outcome {
            Ok((busy, frames, copied)) => tracing::debug!(
                busy,
                frames,
                copied,
                took_ms = started.elapsed().as_millis() as u64,
                "checkpoint"
            ),
            // The writer's own checkpoint (past its bound) holds the lock.
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy =>
            {
                tracing::debug!("checkpoint skipped: another one is running");
            }
            Err(e) => tracing::warn!(error = %e, "checkpoint failed; the next one retries"),
        }
        last = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_only_rises_and_stops_at_a_failed_sync() {
        let d = Durable::new(5);
        d.reach(3);
        assert_eq!(d.get(), 5);
        d.reach(9);
        assert_eq!(d.clone().get(), 9);
        d.fail();
        d.reach(12);
        assert_eq!(d.get(), 9);
    }

    #[test]
    fn after_a_failed_sync_no_group_is_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        std::fs::write(wal_path(&db), b"").unwrap();
        let (checkpoints, checkpointing) = Checkpointer::start(db.clone()).unwrap();
        let durable = Durable::new(1);
        let syncer =
            Syncer::start(open_wal(&db).unwrap(), durable.clone(), checkpoints, || {}).unwrap();
        let group = |seq: u64| {
            let (tx, rx) = oneshot::channel();
            let event = Event {
                node: "n".into(),
                incarnation: "i".into(),
                seq,
                hlc: 0,
                change: crate::change::Change::new("test"),
            };
            let committed = Committed {
                answers: vec![(tx, vec![Ok(event)])],
                replies: Vec::new(),
                rooms: Vec::new(),
                seq,
            };
            (committed, rx)
        };
        let (g, answer) = group(2);
        assert!(syncer.send(g).is_ok());
        let (g, mut refused) = group(3);
        // Synced in order: the first is answered before the failure.
        let answered = answer.blocking_recv().unwrap();
        assert_eq!(answered.len(), 1);
        assert_eq!(answered[0].as_ref().unwrap().seq, 2);
        assert_eq!(durable.get(), 2);
        durable.fail();
        assert!(syncer.send(g).is_ok());
        // A run of jobs after the failure: its answer carries the error.
        let (tx, mut job_refused) = oneshot::channel();
        let reply: Reply = Box::new(move |synced| {
            let _ = tx.send(synced);
        });
        let jobs = Committed {
            answers: Vec::new(),
            replies: vec![reply],
            rooms: Vec::new(),
            seq: 4,
        };
        assert!(syncer.send(jobs).is_ok());
        syncer.finish();
        checkpointing.join().unwrap();
        let refused = refused.try_recv().unwrap();
        assert_eq!(refused.len(), 1);
        assert!(refused[0].is_err());
        assert!(job_refused.try_recv().unwrap().is_err());
        assert_eq!(durable.get(), 2);
    }

    #[test]
    fn the_wal_is_named_after_the_database() {
        assert_eq!(
            wal_path(Path::new("/d/tenthbit.db")),
            PathBuf::from("/d/tenthbit.db-wal")
        );
    }
}
