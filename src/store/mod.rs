//! The embedded store: SQLite (WAL) behind one module; nothing else knows SQL.
//!
//! [`Db`] is the synchronous store (used directly by the admin CLI, which may
//! run beside the daemon: SQLite's locking keeps both consistent). [`Store`]
//! is the daemon's async handle: one dedicated thread owns the connection and
//! runs jobs from a bounded queue, so async workers never block on disk. A
//! second thread owns a read-only connection for long reads (history
//! pages): WAL lets it read the last commit while the first one writes, so
//! paging never delays a commit.

pub mod accounts;
pub mod blocks;
mod cpu_room;
mod direct_io;
pub mod edit;
pub mod history;
pub mod log;
pub mod marker;
pub mod message;
pub mod message_index;
pub mod message_log;
pub mod migrate;
pub mod record;
pub mod redact;
pub mod replica;
pub mod search;
mod search_pass;
pub mod segment;
pub mod tickets;
pub mod topics;
pub(crate) mod wal;

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};

use crate::change::Change;

pub use accounts::Account;
pub use log::{Event, Origin};
pub use replica::{Incoming, RawEvent, Received, VersionVector};
pub use topics::TopicRecord;

/// File name of the database inside the data directory.
pub const DB_FILE: &str = "tenthbit.db";
/// The message log's directory inside the data directory.
pub const MESSAGE_LOG_DIR: &str = "messages";
/// Jobs waiting for the store thread before callers wait for room: this
/// bounds what piles up in memory ahead of the disk. As large as a group
/// commit.
const QUEUE: usize = MAX_BATCH;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// SQLite said no.
    #[error("database: {0}")]
    Sqlite(rusqlite::Error),
    /// The database file could not be opened.
    #[error("cannot open database {}: {cause}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// SQLite's reason.
        cause: rusqlite::Error,
    },
    /// The database was written by a newer tenthbit.
    #[error("database schema version {found} is newer than this build's {supported}")]
    TooNew {
        /// Version in the file.
        found: i64,
        /// Version this build knows.
        supported: i64,
    },
    /// Stored data does not decode.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The store's kept messages are in blocks of another node name: its
    /// blocks record no origin, so a renamed node would hand them to its
    /// mesh again under the new name.
    #[error(
        "this store's kept messages were written by node {kept:?}, and it is opened as {node:?}: \
         set the node's name back to {kept:?} (renaming a node that keeps history is not supported)"
    )]
    Renamed {
        /// The name the blocks were written under.
        kept: String,
        /// The name it is opened as.
        node: String,
    },
    /// The store thread is gone (shutting down).
    #[error("store is closed")]
    Closed,
    /// The name belongs to another account.
    #[error("name is taken")]
    NameTaken,
    /// No such account.
    #[error("no such account")]
    NotFound,
    /// The write would hold more metadata keys than allowed.
    #[error("at most {max} metadata keys")]
    TooManyKeys {
        /// The bound.
        max: usize,
    },
    /// The message log's files said no.
    #[error(transparent)]
    MessageLog(#[from] segment::Error),
}

// A plain conversion: the message carries SQLite's text already.
impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Sqlite(e)
    }
}

/// The synchronous store.
pub struct Db {
    conn: Connection,
    origin: Origin,
    /// Write transactions committed through this handle: the store thread
    /// wakes mesh links when it moves.
    commits: u64,
    /// How far this node's own events are on disk, when its group commits
    /// are synced behind (the daemon's store, [`Store`]): mesh links send
    /// them no further. `None`: every commit here is synced as it ends.
    durable: Option<wal::Durable>,
    /// `commits` as of the last commit that changed something with
    /// `synchronous = FULL` in effect, and so synced the WAL as it ended:
    /// everything written before it is on disk.
    synced_at: u64,
    /// Whether `synchronous = FULL` is in effect (everything but a group
    /// commit and a peer batch; see [`Db::sync_commits`]).
    full: bool,
    /// The message log's segments, which blocks point into (one reader,
    /// and its open files, for every handle on this store).
    log: Arc<segment::Reader>,
}

/// The current value of one of `conn`'s counters (`sqlite3_db_status`,
/// `op` one of `SQLITE_DBSTATUS_*`), if SQLite can say.
fn db_status(conn: &Connection, op: std::ffi::c_int) -> Option<i32> {
    let (mut current, mut highwater) = (0, 0);
    // SAFETY: the handle is live while `conn` is borrowed; SQLite writes
    // only the two out-parameters, and resets nothing (last argument 0).
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_status(conn.handle(), op, &mut current, &mut highwater, 0)
    };
    (rc == rusqlite::ffi::SQLITE_OK).then_some(current)
}

/// Pages `conn` has written to its WAL so far (SQLite's
/// `SQLITE_DBSTATUS_CACHE_WRITE`), or -1 if SQLite cannot say: a commit
/// that wrote none did not sync.
fn pages_written(conn: &Connection) -> i64 {
    db_status(conn, rusqlite::ffi::SQLITE_DBSTATUS_CACHE_WRITE).map_or(-1, i64::from)
}

/// Prepared statements the store's writer keeps parsed.
const STATEMENTS_CACHED: usize = 128;

impl Db {
    /// Opens (creating if needed) `data_dir/tenthbit.db` for node `node`.
    pub fn open(data_dir: &Path, node: &str) -> Result<Db, Error> {
        let path = data_dir.join(DB_FILE);
        let mut conn = Connection::open(&path).map_err(|cause| Error::Open {
            path: path.clone(),
            cause,
        })?;
        // The writer runs some seventy cached statements; at rusqlite's
        // default of 16 the index, the search pass and the rest evicted
        // each other's, and each run parsed its statements again.
        conn.set_prepared_statement_cache_capacity(STATEMENTS_CACHED);
        let found = migrate::migrate(&mut conn).map_err(|cause| Error::Open { path, cause })?;
        if found > migrate::SCHEMA_VERSION {
            return Err(Error::TooNew {
                found,
                supported: migrate::SCHEMA_VERSION,
            });
        }
        let incarnation = incarnation(&mut conn)?;
        let mut db = Db {
            conn,
            origin: Origin {
                node: node.to_owned(),
                incarnation,
            },
            commits: 0,
            durable: None,
            synced_at: 0,
            // `migrate` set it.
            full: true,
            log: Arc::new(segment::Reader::new(&data_dir.join(MESSAGE_LOG_DIR))),
        };
        seed(&mut db)?;
        blocks::check_node(&db.conn, node)?;
        let messages = db.origin.messages();
        search::start_behind(&db.conn, &messages)?;
        Ok(db)
    }

    /// Opens a read-only connection to the store `Db::open` made in
    /// `data_dir`: for reads that should not queue behind commits.
    fn open_reader(data_dir: &Path, node: &str, log: Arc<segment::Reader>) -> Result<Db, Error> {
        use rusqlite::OpenFlags;
        let path = data_dir.join(DB_FILE);
        let open = |path: &Path| -> rusqlite::Result<Connection> {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            Ok(conn)
        };
        let conn = open(&path).map_err(|cause| Error::Open { path, cause })?;
        let incarnation: String = conn.query_row(
            "SELECT value FROM node WHERE key = 'incarnation'",
            [],
            |r| r.get(0),
        )?;
        Ok(Db {
            conn,
            origin: Origin {
                node: node.to_owned(),
                incarnation,
            },
            // Never written through: a read-only connection commits nothing.
            commits: 0,
            durable: None,
            synced_at: 0,
            full: false,
            log,
        })
    }

    /// This store's origin.
    pub fn origin(&self) -> &Origin {
        &self.origin
    }

    /// Runs `f` in an immediate (write-locked) transaction and commits it.
    fn write<T>(
        &mut self,
        f: impl FnOnce(&Transaction<'_>, &Origin) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let written = pages_written(&tx);
        let out = blocks::with_log(&self.log, &self.origin.messages(), || f(&tx, &self.origin))?;
        tx.commit()?;
        // A transaction that wrote no page commits without a sync, even if
        // it changed rows: SQLite leaves a page alone when a row is written
        // over with the same bytes.
        let wrote = pages_written(&self.conn) > written;
        self.commits += 1;
        if self.full && wrote {
            self.synced_at = self.commits;
        }
        self.make_rewrites();
        Ok(out)
    }

    /// Makes the rewrites of records in the message log that a committed
    /// transaction journaled (redactions: `blocks.rs`). The transaction
    /// stands whatever happens to them; one that fails is made at the next
    /// commit or start.
    ///
    /// The journal is on disk before a record is written over: a commit
    /// that did not sync (a run of synced-later jobs, a peer's batch) is
    /// synced first. Else a crash could keep a torn rewrite and lose the
    /// journal entry that redoes it, and the log's open would cut the torn
    /// record and every acknowledged one after it from the last segment.
    fn make_rewrites(&mut self) {
        match blocks::rewrites_pending(&self.conn) {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::error!(error = %e, "message log: cannot read the redactions' journal");
                return;
            }
        }
        if self.synced_at != self.commits {
            if let Err(e) = self.sync_wal() {
                tracing::error!(error = %e, "message log: cannot erase a redacted message's text yet");
                return;
            }
            self.synced_at = self.commits;
        }
        if let Err(e) = blocks::apply_rewrites(&self.conn, &self.log) {
            tracing::error!(error = %e, "message log: cannot erase a redacted message's text yet");
        }
    }

    /// Syncs the WAL: every commit so far is then on disk.
    fn sync_wal(&self) -> Result<(), Error> {
        let path = self
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .ok_or_else(|| Error::Corrupt("the store has no file to sync".into()))?;
        wal::open_wal(Path::new(path))
            .and_then(|wal| wal.sync_data())
            .map_err(|e| Error::Corrupt(format!("cannot sync the store: {e}")))
    }

    /// Sets whether each commit syncs the WAL as it ends
    /// (`synchronous = FULL`) or leaves it written for a later sync
    /// (`NORMAL`).
    fn sync_commits(&mut self, full: bool) -> Result<(), Error> {
        // Not FULL from the moment a change is attempted, whatever the
        // outcome: a commit only counts as synced when it surely was.
        self.full = false;
        self.conn
            .pragma_update(None, "synchronous", if full { "FULL" } else { "NORMAL" })?;
        self.full = full;
        Ok(())
    }

    /// Runs `f` with its commits written and not synced (`synchronous =
    /// NORMAL`), for writes that something else makes durable (a peer's
    /// events, sent again if lost); every other commit syncs as it ends
    /// again afterwards. [`Db::unsynced_burst`] is the same for one of a
    /// burst of large writes.
    fn unsynced<T>(&mut self, f: impl FnOnce(&mut Db) -> Result<T, Error>) -> Result<T, Error> {
        self.sync_commits(false)?;
        let out = f(self);
        self.sync_commits(true)?;
        out
    }

    /// The store thread's group commit: changes made just now (by
    /// [`Store::enqueue`]), appended in one transaction, each with its own
    /// outcome (one change failing fails only its own request); also this
    /// node's last seq after it.
    fn commit_group_at(
        &mut self,
        changes: Vec<Change>,
    ) -> Result<(Vec<Result<Event, Error>>, u64), Error> {
        self.write(|tx, origin| {
            let mut log = log::Appender::open_new(tx, origin)?;
            let results: Vec<_> = changes
                .into_iter()
                .map(|change| log.append(tx, origin, change))
                .collect();
            let seq = log.seq();
            log.close(tx, origin)?;
            Ok((results, seq))
        })
    }

    /// [`Db::commit_group_at`] with the WAL written but not synced (SQLite's
    /// `synchronous = NORMAL`): the caller syncs it ([`wal::Syncer`])
    /// before it tells anyone. Also returns this node's last seq.
    fn commit_group_behind(
        &mut self,
        changes: Vec<Change>,
    ) -> Result<(Vec<Result<Event, Error>>, u64), Error> {
        self.unsynced_burst(|db| db.commit_group_at(changes))?
    }

    /// [`Db::unsynced`] for one of a burst of large writes (a group commit,
    /// the message log's index): the checkpoint thread copies the WAL into
    /// the database meanwhile ([`wal::Checkpointer`], nudged by the
    /// caller); the writer does it itself only if the WAL outgrows
    /// [`GROUP_CHECKPOINT_PAGES`] (a checkpoint can start the WAL over only
    /// between the writer's transactions).
    fn unsynced_burst<T>(&mut self, f: impl FnOnce(&mut Db) -> T) -> Result<T, Error> {
        self.conn
            .pragma_update(None, "wal_autocheckpoint", GROUP_CHECKPOINT_PAGES)?;
        self.sync_commits(false)?;
        let out = f(self);
        // Every other commit syncs as it ends, and checkpoints as before.
        let restored = self.sync_commits(true).and_then(|()| {
            Ok(self
                .conn
                .pragma_update(None, "wal_autocheckpoint", migrate::CHECKPOINT_PAGES)?)
        });
        if let Err(e) = restored {
            // Commits are then not counted as synced (`full` stays false).
            tracing::error!(error = %e, "cannot set the store back to syncing every commit");
        }
        Ok(out)
    }

    /// The last seq of this node's own origin.
    fn own_seq(&self) -> Result<u64, Error> {
        log::seen_seq(&self.conn, &self.origin.node, &self.origin.incarnation)
    }

    /// SQLite's `data_version` of this connection: it changes when another
    /// connection (the admin CLI beside the daemon) commits.
    fn data_version(&self) -> Result<i64, Error> {
        Ok(self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))?)
    }

    /// Appends local changes in one transaction (for bulk loads: tools and
    /// benchmarks that fill a store without a server).
    pub fn append_all(&mut self, changes: Vec<Change>) -> Result<usize, Error> {
        self.write(|tx, origin| {
            let mut log = log::Appender::open(tx, origin)?;
            let n = changes.len();
            for change in changes {
                log.append(tx, origin, change)?;
            }
            log.close(tx, origin)?;
            Ok(n)
        })
    }

    /// Every event, in log order per origin (for tests and, later, catch-up).
    pub fn events(&self) -> Result<Vec<Event>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT origin, incarnation, seq, hlc, body FROM events ORDER BY origin, incarnation, seq")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, String>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (node, incarnation, seq, hlc, body) = row?;
            let change = serde_json::from_str(&body).map_err(|e| Error::Corrupt(e.to_string()))?;
            out.push(Event {
                node,
                incarnation,
                seq: u64::try_from(seq).map_err(|e| Error::Corrupt(e.to_string()))?,
                hlc: u64::try_from(hlc).map_err(|e| Error::Corrupt(e.to_string()))?,
                change,
            });
        }
        Ok(out)
    }
}

/// Every register of an entity, values decoded.
fn load_registers(
    conn: &Connection,
    entity: &str,
) -> Result<Vec<(String, serde_json::Value)>, Error> {
    let mut stmt = conn.prepare_cached("SELECT field, value FROM registers WHERE entity = ?1")?;
    let rows = stmt.query_map(params![entity], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (field, raw) = row?;
        let value = serde_json::from_str(&raw).map_err(|e| Error::Corrupt(e.to_string()))?;
        out.push((field, value));
    }
    Ok(out)
}

/// One register's value, decoded; `None` when unset or not a `T` (a null
/// is `None` unless `T` takes it).
fn register<T: for<'de> serde::Deserialize<'de>>(
    conn: &Connection,
    entity: &str,
    field: &str,
) -> Result<Option<T>, Error> {
    let raw: Option<String> = conn
        .prepare_cached("SELECT value FROM registers WHERE entity = ?1 AND field = ?2")?
        .query_row(params![entity, field], |r| r.get(0))
        .optional()?;
    Ok(raw.and_then(|r| serde_json::from_str(&r).ok()))
}

/// The entity of kind `prefix` (`account:`, `topic:`) holding a lowercased
/// name: the earliest claim by `(hlc, origin, entity)` (DESIGN.md §4a).
/// With `skip_deleted`, entities whose `deleted` register holds `true` hold
/// no name: a deleted topic's name is free even when a rename reached it
/// after its delete (an account's name stays reserved when it is deleted).
fn name_holder(
    conn: &Connection,
    prefix: &str,
    lookup: &str,
    skip_deleted: bool,
) -> Result<Option<uuid::Uuid>, Error> {
    let entity: Option<String> = conn
        .prepare_cached(
            "SELECT entity FROM registers r WHERE field = 'name' AND lookup = ?1 AND entity LIKE ?2
               AND NOT (?3 AND EXISTS (SELECT 1 FROM registers d
                    WHERE d.entity = r.entity AND d.field = ?4 AND d.value = 'true'))
             ORDER BY hlc, origin, entity LIMIT 1",
        )?
        .query_row(
            params![
                lookup,
                format!("{prefix}%"),
                skip_deleted,
                crate::change::field::DELETED
            ],
            |r| r.get(0),
        )
        .optional()?;
    Ok(entity.as_deref().and_then(|e| parse_entity(prefix, e)))
}

/// The entity of kind `prefix` shown as `name~<6 hex>`: a later claimant
/// of a name (DESIGN.md §4a), found by its base name and the end of its id.
fn later_claimant(
    conn: &Connection,
    prefix: &str,
    shown: &str,
) -> Result<Option<uuid::Uuid>, Error> {
    let Some((base, hex)) = shown.rsplit_once('~') else {
        return Ok(None);
    };
    if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let hex = hex.to_ascii_lowercase();
    let mut stmt = conn.prepare_cached(
        "SELECT entity FROM registers WHERE field = 'name' AND lookup = ?1 AND entity LIKE ?2",
    )?;
    let rows = stmt.query_map(params![base.to_lowercase(), format!("{prefix}%")], |r| {
        r.get::<_, String>(0)
    })?;
    for row in rows {
        if let Some(id) = parse_entity(prefix, &row?) {
            if id.simple().to_string().ends_with(&hex) {
                return Ok(Some(id));
            }
        }
    }
    Ok(None)
}

/// Every entity of kind `prefix` that has a name, in id (creation) order.
fn entities_with_name(conn: &Connection, prefix: &str) -> Result<Vec<String>, Error> {
    let mut stmt = conn.prepare(
        "SELECT entity FROM registers WHERE field = 'name' AND entity LIKE ?1 ORDER BY entity",
    )?;
    let rows = stmt.query_map(params![format!("{prefix}%")], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The id in an entity key of kind `prefix` (`topic:`, `account:`).
pub(crate) fn parse_entity(prefix: &str, entity: &str) -> Option<uuid::Uuid> {
    entity
        .strip_prefix(prefix)
        .and_then(|s| uuid::Uuid::parse_str(s).ok())
}

/// Refuses an update of metadata `current` by `update` (`null` removes a
/// key) that would leave more than `max` keys.
fn check_key_count(
    current: &serde_json::Map<String, serde_json::Value>,
    update: &serde_json::Map<String, serde_json::Value>,
    max: usize,
) -> Result<(), Error> {
    let mut keys: std::collections::BTreeSet<&str> = current.keys().map(String::as_str).collect();
    for (key, value) in update {
        if value.is_null() {
            keys.remove(key.as_str());
        } else {
            keys.insert(key);
        }
    }
    if keys.len() > max {
        return Err(Error::TooManyKeys { max });
    }
    Ok(())
}

/// How a later claimant of a taken name is shown: `name~<6 hex of its id>`.
fn clash_name(name: &str, id: uuid::Uuid) -> String {
    let hex = id.simple().to_string();
    format!(
        "{name}~{}",
        hex.get(hex.len().saturating_sub(6)..).unwrap_or_default()
    )
}

/// The store's incarnation, minted at random the first time.
fn incarnation(conn: &mut Connection) -> Result<String, Error> {
    let existing: Option<String> = conn
        .query_row(
            "SELECT value FROM node WHERE key = 'incarnation'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(i) = existing {
        return Ok(i);
    }
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| Error::Corrupt("no system randomness".into()))?;
    let minted: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    // Another process may mint at the same moment: the first insert wins.
    conn.execute(
        "INSERT INTO node (key, value) VALUES ('incarnation', ?1) ON CONFLICT (key) DO NOTHING",
        params![minted],
    )?;
    Ok(conn.query_row(
        "SELECT value FROM node WHERE key = 'incarnation'",
        [],
        |r| r.get(0),
    )?)
}

/// A new store starts with `*` allowed to create topics: a change like any
/// other, so a mesh replicates it and an admin can revoke it.
fn seed(db: &mut Db) -> Result<(), Error> {
    let change = crate::change::Change::new("server.acl.grant").set(
        crate::change::Entity::Server,
        &format!("{}*:create", crate::change::field::ACL_PREFIX),
        true,
    );
    db.write(|tx, origin| {
        let fresh = tx.execute(
            "INSERT INTO node (key, value) VALUES ('seeded', '1') ON CONFLICT (key) DO NOTHING",
            [],
        )?;
        if fresh == 1 {
            log::append(tx, origin, change)?;
        }
        Ok(())
    })
}

type Job = Box<dyn FnOnce(&mut Db) + Send>;

/// A job whose commits the sync thread syncs ([`Store::call_synced`]):
/// it runs and hands back its answer, to be given once they are on disk
/// (or with the sync's error).
type SyncedJob = Box<dyn FnOnce(&mut Db) -> wal::Reply + Send>;

/// Synced-later jobs run together at most: their answers wait for one
/// sync.
const MAX_SYNCED_RUN: usize = 1024;

enum Msg {
    Job(Job),
    /// A job answered once its commits are synced; consecutive ones share
    /// a sync.
    Synced(SyncedJob),
    /// A tick of [`Store::tidy`].
    Tidy,
    /// Changes to append; consecutive appends are committed together.
    Append(Append),
    /// A group the message log synced, to index.
    Index(message_log::Synced),
    Close(oneshot::Sender<()>),
}

/// Changes queued for a group commit as one entry, with who waits for
/// them and the room they take in the queue (given back once they are
/// committed).
struct Append {
    changes: Vec<Change>,
    reply: oneshot::Sender<Vec<Result<Event, Error>>>,
    room: tokio::sync::OwnedSemaphorePermit,
}

/// WAL pages past which a group commit checkpoints the WAL itself (8 KiB
/// pages: 320 MiB): the checkpoint thread's checkpoints copy the WAL but
/// cannot start it over while the writer commits group after group.
const GROUP_CHECKPOINT_PAGES: i64 = 40_000;
/// What the WAL file is cut back to once it starts over: more than it
/// grows to under group commits (about [`GROUP_CHECKPOINT_PAGES`]), so it
/// is reused, not cut and grown again: cut back to 64 MiB, each start-over
/// dropped most of its pages from the system's cache, and the file system
/// allocated them again as the WAL grew (bench/README.md, thirteenth round).
const WAL_KEPT_BYTES: i64 = 512 << 20;

/// Bytes of changes queued for the store at most, counted as a message's
/// `ex` plus [`CHANGE_OVERHEAD`]: 4,096 queued messages of 64 KiB would
/// otherwise hold 256 MiB. A caller of [`Store::reserve`] waits for room.
pub(crate) const QUEUED_BYTES: usize = 32 << 20;
/// What a queued change is counted as besides its message's `ex`.
const CHANGE_OVERHEAD: usize = 256;

/// The room `changes` take in the queue.
fn queued_bytes(changes: &[Change]) -> u32 {
    let bytes: usize = changes
        .iter()
        .map(|c| c.message.as_ref().map_or(0, |m| m.ex.get().len()) + CHANGE_OVERHEAD)
        .sum();
    u32::try_from(bytes.min(QUEUED_BYTES)).unwrap_or(u32::MAX)
}

/// Most changes committed in one transaction (group commit). Groups form
/// from whatever queued while the last commit ran (nothing waits to fill
/// one), so under load they are large: a kept message's share of a commit
/// (its pages, the sync) shrinks as the group grows. Each group writes a
/// page of each topic's history index whatever its size, so with many
/// topics 16,384 costs less per message than 4,096 (chatbench's pairs with
/// history, 200 topics: 5-9% more messages a second); a full group still
/// commits in a fraction of a second.
const MAX_BATCH: usize = 16_384;

/// Appends a batch of changes in one transaction and hands it to the
/// [`wal::Syncer`], which gives back the changes' room in the queue once
/// the group is on disk and then answers each caller. `observe` gets how
/// long the commit took (its sync not included).
/// Whether another connection (the admin CLI beside the daemon) has
/// committed since `version` was read. Its events are this node's: they go
/// to the sync thread as an empty group, which syncs, marks them durable
/// and wakes the mesh links, in that order, as for the daemon's own.
fn committed_outside(db: &Db, version: &mut i64, syncer: &wal::Syncer) -> bool {
    match db.data_version() {
        Ok(v) if v != *version => {
            *version = v;
            if let Ok(seq) = db.own_seq() {
                let synced = wal::Committed {
                    answers: Vec::new(),
                    replies: Vec::new(),
                    rooms: Vec::new(),
                    seq,
                };
                if syncer.send(synced).is_err() {
                    tracing::error!("the store's sync thread is gone");
                }
            }
            true
        }
        Ok(_) => false,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the store's data version");
            false
        }
    }
}

fn commit_batch(
    db: &mut Db,
    syncer: &wal::Syncer,
    batch: Vec<Append>,
    observe: &dyn Fn(std::time::Duration),
) {
    let mut replies = Vec::with_capacity(batch.len());
    let mut changes = Vec::with_capacity(batch.iter().map(|a| a.changes.len()).sum());
    let mut rooms = Vec::with_capacity(batch.len());
    for a in batch {
        replies.push((a.reply, a.changes.len()));
        changes.extend(a.changes);
        rooms.push(a.room);
    }
    if changes.is_empty() {
        return;
    }
    let started = std::time::Instant::now();
    let outcome = db.commit_group_behind(changes);
    observe(started.elapsed());
    match outcome {
        Ok((results, seq)) => {
            // Each entry's outcomes, in the order its changes came.
            let mut results = results.into_iter();
            let answers = replies
                .into_iter()
                .map(|(reply, n)| (reply, results.by_ref().take(n).collect()))
                .collect();
            let group = wal::Committed {
                answers,
                replies: Vec::new(),
                rooms,
                seq,
            };
            if syncer.send(group).is_err() {
                // Its callers see the store closed, which it is.
                tracing::error!("the store's sync thread is gone: a group commit is not answered");
            }
        }
        Err(e) => {
            drop(rooms);
            for (reply, n) in replies {
                let failed = (0..n)
                    .map(|_| Err(Error::Corrupt(format!("batch not committed: {e}"))))
                    .collect();
                let _ = reply.send(failed);
            }
        }
    }
}

/// `first` and every message of its kind already queued behind it, up to
/// `max` in all by `weight` (`alike` gives back one of another kind, which
/// is kept in `next` for the store thread's loop): a group commit, or a run
/// of synced-later jobs.
fn queued_alike<T>(
    first: T,
    max: usize,
    rx: &mut mpsc::Receiver<Msg>,
    next: &mut Option<Msg>,
    weight: impl Fn(&T) -> usize,
    alike: impl Fn(Msg) -> ControlFlow<Msg, T>,
) -> Vec<T> {
    let mut taken = weight(&first);
    let mut run = vec![first];
    while taken < max {
        match rx.try_recv().map(&alike) {
            Ok(ControlFlow::Continue(item)) => {
                taken += weight(&item);
                run.push(item);
            }
            Ok(ControlFlow::Break(other)) => {
                *next = Some(other);
                break;
            }
            Err(_) => break,
        }
    }
    run
}

/// Runs synced-later jobs with their commits written but not synced, and
/// hands their answers to the [`wal::Syncer`], which gives them once one
/// sync has put every commit of the run on disk. A run that committed
/// nothing is answered at once when nothing waits for the sync thread
/// ([`wal::Syncer::settled`]), else behind what does.
fn run_synced(db: &mut Db, syncer: &wal::Syncer, run: Vec<SyncedJob>) {
    // Not every commit goes through `Db::write` (tickets have their own
    // statements): rows changed count too.
    let (commits, changes) = (db.commits, db.conn.total_changes());
    if let Err(e) = db.sync_commits(false) {
        // The commits then sync as they end; the answers still wait for
        // the sync thread, so they mean the same.
        tracing::error!(error = %e, "cannot defer the store's sync for a run of jobs");
    }
    let replies: Vec<wal::Reply> = run.into_iter().map(|job| job(db)).collect();
    if let Err(e) = db.sync_commits(true) {
        // Commits are then not counted as synced (`full` stays false).
        tracing::error!(error = %e, "cannot set the store back to syncing every commit");
    }
    let wrote = db.commits != commits || db.conn.total_changes() != changes;
    if !wrote && syncer.settled() {
        for reply in replies {
            reply(Ok(()));
        }
        return;
    }
    // A run that wrote nothing but may have read what an earlier one wrote
    // is answered behind it, and refused if a sync has failed.
    let seq = match db.own_seq() {
        Ok(seq) => seq,
        Err(e) => {
            tracing::error!(error = %e, "cannot read the log's position");
            0
        }
    };
    let group = wal::Committed {
        answers: Vec::new(),
        replies,
        rooms: Vec::new(),
        seq,
    };
    if syncer.send(group).is_err() {
        // Its callers see the store closed, which it is.
        tracing::error!("the store's sync thread is gone: a run of jobs is not answered");
    }
}

/// Changes queued together, not yet known to be committed. Each comes
/// back as its event or its error, in the order they were queued.
pub struct Pending {
    answer: oneshot::Receiver<Vec<Result<Event, Error>>>,
    changes: usize,
}

impl Pending {
    /// Waits for the commit; if the store went away unanswered, each
    /// change's outcome is [`Error::Closed`].
    pub async fn wait(self) -> Vec<Result<Event, Error>> {
        match self.answer.await {
            Ok(results) => results,
            Err(_) => (0..self.changes).map(|_| Err(Error::Closed)).collect(),
        }
    }
}

/// Room in the store's queue for changes, reserved: sending them cannot
/// fail for want of room ([`Store::reserve`]).
pub struct Slot<'a> {
    room: tokio::sync::OwnedSemaphorePermit,
    slot: mpsc::Permit<'a, Msg>,
}

impl Slot<'_> {
    /// Queues `changes`, which must be those the room was reserved for.
    pub fn send(self, changes: Vec<Change>) -> Pending {
        let (tx, rx) = oneshot::channel();
        let n = changes.len();
        self.slot.send(Msg::Append(Append {
            changes,
            reply: tx,
            room: self.room,
        }));
        Pending {
            answer: rx,
            changes: n,
        }
    }
}

type ReadJob = Box<dyn FnOnce(&Db) + Send>;

/// What the read thread is sent.
enum ReadMsg {
    Job(ReadJob),
    /// A tick of [`Store::tidy`].
    Tidy,
}

/// Gives a connection's page cache back once a tick of [`Store::tidy`]
/// passed with no work on either store thread: after a burst (a thousand
/// registrations) the caches held about 1 KiB per connection of an idle
/// server. Work that comes later reads its pages again from the system's
/// file cache. Both threads count into one tally because SQLite's page
/// caches may share their unused pages (one connection's release can free
/// another's): a busy writer must not lose its cache to an idle reader.
struct Tidy {
    work: Arc<AtomicU64>,
    seen: u64,
    released: bool,
}

impl Tidy {
    fn new(work: Arc<AtomicU64>) -> Self {
        Self {
            work,
            seen: 0,
            released: false,
        }
    }

    fn worked(&self) {
        self.work.fetch_add(1, Ordering::Relaxed);
    }

    fn tick(&mut self, conn: &Connection) {
        let work = self.work.load(Ordering::Relaxed);
        if work != self.seen {
            self.seen = work;
            self.released = false;
        } else if !self.released {
            self.released = true;
            if let Err(e) = conn.release_memory() {
                tracing::debug!(error = %e, "cannot release the store's page cache");
            }
            // SQLite allocates with the C library's malloc, not the Rust
            // allocator, and glibc keeps what is freed in the middle of its
            // heaps: without the trim, whether the pages went back depended
            // on what happened to sit at a heap's top (chatbench idle, 5,000
            // connections: 11.6-12.6 KiB each; with it, 11.3-11.4).
            #[cfg(all(target_os = "linux", target_env = "gnu"))]
            // SAFETY: no arguments to check; glibc locks its arenas itself.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    }
}

/// Starts the thread that owns the read-only connection; it runs read jobs
/// until every sender is dropped.
fn spawn_reader(
    db: Db,
    mut tidy: Tidy,
) -> Result<(mpsc::Sender<ReadMsg>, std::thread::JoinHandle<()>), Error> {
    let (reads, mut rx) = mpsc::channel::<ReadMsg>(QUEUE);
    let thread = std::thread::Builder::new()
        .name("tenthbit-store-read".into())
        .spawn(move || {
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    ReadMsg::Job(job) => {
                        job(&db);
                        tidy.worked();
                    }
                    ReadMsg::Tidy => tidy.tick(&db.conn),
                }
            }
        })
        .map_err(|e| Error::Corrupt(format!("cannot start the store's read thread: {e}")))?;
    Ok((reads, thread))
}

/// The daemon's handle on the store threads; cheap to clone.
#[derive(Clone)]
pub struct Store {
    jobs: mpsc::Sender<Msg>,
    /// The read-only connection's queue; taken (closed) by [`Store::close`].
    reads: Arc<Mutex<Option<mpsc::Sender<ReadMsg>>>>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    read_thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Bumped after every step of the store thread that may have added to
    /// the log: mesh links wake on it to send what is new.
    log_changed: Arc<tokio::sync::watch::Sender<u64>>,
    /// Bumped when a tidy tick finds a commit by another connection.
    external: Arc<tokio::sync::watch::Sender<u64>>,
    /// Room in the queue, in bytes (see [`QUEUED_BYTES`]).
    room: Arc<tokio::sync::Semaphore>,
    /// WAL syncs the sync thread has made.
    syncs: Arc<AtomicU64>,
    /// This node's kept messages on their way to disk.
    messages: message_log::MessageLog,
    /// The message log's thread; finished by [`Store::close`].
    log_thread: Arc<Mutex<Option<message_log::LogThread>>>,
    /// How far the message log's index has come.
    indexed: Arc<message_index::Indexed>,
    /// How far the search pass has come (see `search.rs`, "behind").
    searched: Arc<message_index::Indexed>,
    /// The highest seq a search waits for the pass to reach.
    search_wanted: Arc<AtomicU64>,
}

impl Store {
    /// Opens the database and starts its threads.
    pub fn open(data_dir: &Path, node: &str) -> Result<Store, Error> {
        Self::open_observed(data_dir, node, message_log::Limits::default(), |_| {})
    }

    /// [`Store::open`] with the message log's `limits`, calling `on_commit`
    /// with how long each group commit took: the store's, and the message
    /// log's write and sync of each group.
    pub fn open_observed(
        data_dir: &Path,
        node: &str,
        limits: message_log::Limits,
        on_commit: impl Fn(std::time::Duration) + Send + Sync + 'static,
    ) -> Result<Store, Error> {
        let mut db = Db::open(data_dir, node)?;
        db.log.keep_cached(limits.cached_bytes);
        // The path SQLite resolved: a symlinked database has its WAL beside
        // its target.
        let path = db
            .conn
            .path()
            .filter(|p| !p.is_empty())
            .map_or_else(|| data_dir.join(DB_FILE), PathBuf::from);
        // What an earlier run left written but unsynced goes to disk (with
        // the WAL's name in its directory) before any of it is sent to a
        // peer.
        let cannot_sync = |e: std::io::Error| Error::Corrupt(format!("cannot sync the store: {e}"));
        let wal_file = wal::open_wal(&path).map_err(cannot_sync)?;
        wal_file.sync_data().map_err(cannot_sync)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(cannot_sync)?;
        }
        let durable = wal::Durable::new(db.own_seq()?);
        db.durable = Some(durable.clone());
        // The WAL file is cut back only past what group commits let it
        // grow to.
        db.conn
            .pragma_update(None, "journal_size_limit", WAL_KEPT_BYTES)?;
        let work = Arc::new(AtomicU64::new(0));
        let (jobs, mut rx) = mpsc::channel::<Msg>(QUEUE);
        // The message log, and what its index lacks of it (a crash took it)
        // indexed before anything else is.
        let log_dir = data_dir.join(MESSAGE_LOG_DIR);
        // Redactions a crash left unmade or torn, before the log's open
        // checks its last segment.
        blocks::apply_rewrites(&db.conn, &db.log)?;
        let index_jobs = jobs.clone();
        let on_commit = Arc::new(on_commit);
        let observe = on_commit.clone();
        let (messages, log_thread) =
            message_log::MessageLog::open(&log_dir, limits, db.message_floor()?, move |group| {
                observe(group.took);
                // A bounded queue: a busy index holds the log back, and the
                // log its appenders.
                if index_jobs.blocking_send(Msg::Index(group)).is_err() {
                    tracing::warn!(
                        "message log: the store closed first; indexed at the next start"
                    );
                }
            })?;
        message_index::catch_up(&mut db, &log_dir, messages.opened_end())?;
        let indexed = Arc::new(message_index::Indexed::new(messages.synced()));
        let searched = Arc::new(message_index::Indexed::default());
        let search_wanted = Arc::new(AtomicU64::new(0));
        let mut search_pass =
            search_pass::SearchPass::new(searched.clone(), indexed.clone(), search_wanted.clone());
        let mut indexer = message_index::Indexer::new(indexed.clone(), &db, &messages)?;
        let reader = Db::open_reader(data_dir, node, db.log.clone())?;
        let (reads, read_thread) = spawn_reader(reader, Tidy::new(work.clone()))?;
        let log_changed = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let changed = log_changed.clone();
        let external = Arc::new(tokio::sync::watch::Sender::new(0u64));
        let outside = external.clone();
        let (checkpoints, checkpoint_thread) = wal::Checkpointer::start(path.clone())?;
        let index_checkpoints = checkpoints.clone();
        let wake = log_changed.clone();
        let syncs = Arc::new(AtomicU64::new(0));
        let counted = syncs.clone();
        let syncer = wal::Syncer::start(wal_file, durable.clone(), checkpoints, move || {
            counted.fetch_add(1, Ordering::AcqRel);
            wake.send_modify(|n| *n = n.wrapping_add(1));
        })?;
        let thread = std::thread::Builder::new()
            .name("tenthbit-store".into())
            .spawn(move || {
                let mut next = None;
                let mut published = db.commits;
                let mut tidy = Tidy::new(work);
                let mut version = db.data_version().unwrap_or_default();
                loop {
                    let msg = match next.take() {
                        Some(msg) => msg,
                        None => match rx.try_recv() {
                            Ok(msg) => msg,
                            // Nothing queued: the search pass's turn, once
                            // the index is quiet (else the next message or
                            // tidy tick looks again).
                            Err(mpsc::error::TryRecvError::Empty) if search_pass.due() => {
                                search_pass.step(&mut db);
                                continue;
                            }
                            Err(mpsc::error::TryRecvError::Empty) => match rx.blocking_recv() {
                                Some(msg) => msg,
                                None => break,
                            },
                            Err(mpsc::error::TryRecvError::Disconnected) => break,
                        },
                    };
                    // A search waits for the pass: a run before anything else.
                    if search_pass.wanted() {
                        search_pass.step(&mut db);
                    }
                    match msg {
                        Msg::Tidy => {
                            tidy.tick(&db.conn);
                            if indexer.retry(&mut db) {
                                // What it indexed is behind the pass: one
                                // run now, so that it is searchable once
                                // the tick is done.
                                search_pass.more();
                                search_pass.step(&mut db);
                            }
                            search_pass.retry();
                            indexer.sweep(&mut db);
                            if committed_outside(&db, &mut version, &syncer) {
                                outside.send_modify(|n| *n = n.wrapping_add(1));
                            }
                        }
                        Msg::Job(job) => {
                            tidy.worked();
                            job(&mut db);
                            // A job's commit (an account, an edit, an
                            // admin's change) syncs the WAL as it ends,
                            // and with it every group still waiting for
                            // the sync thread. A peer batch's does not,
                            // but holds no event of this node's own.
                            if db.commits != published && db.synced_at == db.commits {
                                match db.own_seq() {
                                    Ok(seq) => durable.reach(seq),
                                    Err(e) => tracing::error!(error = %e, "cannot read the log's position"),
                                }
                            }
                        }
                        Msg::Synced(job) => {
                            tidy.worked();
                            // Every synced-later job already queued runs
                            // now, and one sync covers them all.
                            let run = queued_alike(job, MAX_SYNCED_RUN, &mut rx, &mut next, |_| 1, |m| {
                                match m {
                                    Msg::Synced(j) => ControlFlow::Continue(j),
                                    other => ControlFlow::Break(other),
                                }
                            });
                            run_synced(&mut db, &syncer, run);
                            // Mesh links hear of it once it is synced.
                            published = db.commits;
                        }
                        Msg::Index(group) => {
                            tidy.worked();
                            // Every group already queued, in one commit.
                            let run = queued_alike(group, MAX_BATCH, &mut rx, &mut next, |g| g.len(), |m| {
                                match m {
                                    Msg::Index(g) => ControlFlow::Continue(g),
                                    other => ControlFlow::Break(other),
                                }
                            });
                            let records = run.iter().map(message_log::Synced::len).sum();
                            indexer.index(&mut db, run);
                            index_checkpoints.nudge();
                            search_pass.committed(records);
                        }
                        Msg::Append(append) => {
                            tidy.worked();
                            // Group commit: take every append already queued.
                            let batch = queued_alike(append, MAX_BATCH, &mut rx, &mut next, |a| a.changes.len(), |m| {
                                match m {
                                    Msg::Append(a) => ControlFlow::Continue(a),
                                    other => ControlFlow::Break(other),
                                }
                            });
                            commit_batch(&mut db, &syncer, batch, &*on_commit);
                            // Mesh links hear of it once it is synced.
                            published = db.commits;
                        }
                        Msg::Close(done) => {
                            rx.close();
                            // Jobs queued before the close still run.
                            while let Ok(msg) = rx.try_recv() {
                                match msg {
                                    Msg::Job(job) => job(&mut db),
                                    // Answered by the sync thread, which
                                    // ends after this loop.
                                    Msg::Synced(job) => run_synced(&mut db, &syncer, vec![job]),
                                    Msg::Append(a) => {
                                        commit_batch(&mut db, &syncer, vec![a], &*on_commit)
                                    }
                                    Msg::Index(group) => indexer.index(&mut db, vec![group]),
                                    Msg::Close(_) | Msg::Tidy => {}
                                }
                            }
                            // Every group synced and answered; then the
                            // writer is the last connection, and dropping
                            // it checkpoints the WAL. The checkpoint
                            // thread ends once its last handle is gone:
                            // this one, then the syncer's.
                            drop(index_checkpoints);
                            syncer.finish();
                            let _ = checkpoint_thread.join();
                            drop(db);
                            let _ = done.send(());
                            return;
                        }
                    }
                    // Something was committed: mesh links have news.
                    if db.commits != published {
                        published = db.commits;
                        changed.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
            })
            .map_err(|e| Error::Corrupt(format!("cannot start the store thread: {e}")))?;
        Ok(Store {
            jobs,
            reads: Arc::new(Mutex::new(Some(reads))),
            thread: Arc::new(Mutex::new(Some(thread))),
            read_thread: Arc::new(Mutex::new(Some(read_thread))),
            log_changed,
            external,
            room: Arc::new(tokio::sync::Semaphore::new(QUEUED_BYTES)),
            syncs,
            messages,
            log_thread: Arc::new(Mutex::new(Some(log_thread))),
            indexed,
            searched,
            search_wanted,
        })
    }

    /// The log this node's kept messages are appended to.
    pub fn messages(&self) -> &message_log::MessageLog {
        &self.messages
    }

    /// Runs `f` on the read-only connection's thread: a read that may be
    /// long (a history page) and must not delay commits. It sees what was
    /// committed before it started.
    pub async fn read<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, Error> + Send + 'static,
    {
        let reads = self
            .reads
            .lock()
            .ok()
            .and_then(|r| r.clone())
            .ok_or(Error::Closed)?;
        // What the message log has synced may have been told to a client
        // (an `ack`): the read sees it once it is indexed.
        self.indexed.wait(self.messages.synced()).await;
        let (tx, rx) = oneshot::channel();
        let job: ReadJob = Box::new(move |db| {
            let _ = tx.send(f(db));
        });
        reads
            .send(ReadMsg::Job(job))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// [`Store::read`] once the search pass has indexed, for search, what
    /// the message log had synced when this was called (see `search.rs`,
    /// "behind the message log"): a client finds its own messages.
    pub async fn read_searched<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, Error> + Send + 'static,
    {
        let target = self.messages.synced();
        if self.searched.seq() < target {
            // The store thread runs the pass before anything else while
            // this is above where it stands.
            self.search_wanted.fetch_max(target, Ordering::AcqRel);
            // It may be waiting on its queue with the pass behind (the pass
            // waits out a burst: `search_pass.rs`, `due`), for a message or
            // a tick that may be long in coming: anything queued wakes it.
            // A full queue is a busy thread, which looks before each one.
            let _ = self.jobs.try_send(Msg::Job(Box::new(|_| {})));
            self.searched.wait(target).await;
        }
        self.read(f).await
    }

    /// One tick of the store's tidying, for a timer to call (the server
    /// does every 250 ms): a store thread whose last tick passed with no
    /// work gives its page cache back. False once the store is closed.
    pub fn tidy(&self) -> bool {
        use mpsc::error::TrySendError;
        if let Some(reads) = self.reads.lock().ok().and_then(|r| r.clone()) {
            // A full queue is a busy thread: nothing to give back.
            let _ = reads.try_send(ReadMsg::Tidy);
        }
        !matches!(self.jobs.try_send(Msg::Tidy), Err(TrySendError::Closed(_)))
    }

    /// A receiver that sees a change whenever the log may have grown.
    pub fn watch_log(&self) -> tokio::sync::watch::Receiver<u64> {
        self.log_changed.subscribe()
    }

    /// A receiver that sees a change when another connection (the admin
    /// CLI) has committed to the store, found at a tidy tick.
    pub fn watch_external(&self) -> tokio::sync::watch::Receiver<u64> {
        self.external.subscribe()
    }

    /// Runs `f` on the store thread and returns its result.
    pub async fn call<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Result<T, Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |db| {
            let _ = tx.send(f(db));
        });
        self.jobs
            .send(Msg::Job(job))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// How many times the sync thread has synced the WAL since the store
    /// opened; each sync is counted before the answers it covers are given.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Acquire)
    }

    /// [`Store::call`] for a job that writes and whose caller may wait for
    /// the disk: its commits are written without a sync and its answer
    /// given once the sync thread has synced them, with every other such
    /// job queued meanwhile (one sync for a burst of registrations,
    /// logins by ticket or topic changes, not one each). The answer means
    /// what `call`'s does: what the job committed is on disk, and so is
    /// every commit before it (a job that wrote nothing may answer with
    /// what an earlier one wrote).
    pub async fn call_synced<T, F>(&self, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(&mut Db) -> Result<T, Error> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: SyncedJob = Box::new(move |db| {
            let out = f(db);
            Box::new(move |synced: Result<(), Error>| {
                let _ = tx.send(synced.and(out));
            })
        });
        self.jobs
            .send(Msg::Synced(job))
            .await
            .map_err(|_| Error::Closed)?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Appends a change to the log, committed together with whatever
    /// other appends are waiting (group commit); returns once it is durable.
    pub async fn append(&self, change: Change) -> Result<Event, Error> {
        let mut outcomes = self.enqueue(vec![change]).await?.wait().await;
        outcomes.pop().unwrap_or(Err(Error::Closed))
    }

    /// Queues changes for the next group commit, as one entry, and returns
    /// at once; the [`Pending`] resolves when they are durable. Lets one
    /// connection have many changes in one batch. A message's id must be
    /// newly minted (no edit or redaction is looked up for it): changes
    /// from elsewhere go through the replica path.
    pub async fn enqueue(&self, changes: Vec<Change>) -> Result<Pending, Error> {
        Ok(self.reserve(&changes).await?.send(changes))
    }

    /// Waits for room in the queue for `changes` and reserves it. Cancel-safe:
    /// dropped while it waits, it holds nothing, and the caller still holds
    /// the changes.
    pub async fn reserve(&self, changes: &[Change]) -> Result<Slot<'_>, Error> {
        let room = self
            .room
            .clone()
            .acquire_many_owned(queued_bytes(changes))
            .await
            .map_err(|_| Error::Closed)?;
        let slot = self.jobs.reserve().await.map_err(|_| Error::Closed)?;
        Ok(Slot { room, slot })
    }

    /// Runs the queued jobs, closes the database and joins its thread; later
    /// calls on any clone fail with [`Error::Closed`].
    pub async fn close(&self) {
        // The log's last groups written, synced and queued for their index
        // first: the store thread indexes them before it closes.
        let log_thread = self.log_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(log_thread) = log_thread {
            let _ = tokio::task::spawn_blocking(move || log_thread.finish()).await;
        }
        self.close_reader().await;
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Msg::Close(tx)).await.is_ok() {
            let _ = rx.await;
        }
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }

    /// Closes the read-only connection: its thread ends once its queue's
    /// last sender is gone (this one, and any a read in progress holds).
    /// First, so that the writer's connection is the last one and its
    /// close checkpoints the WAL.
    async fn close_reader(&self) {
        if let Ok(mut reads) = self.reads.lock() {
            reads.take();
        }
        let handle = self.read_thread.lock().ok().and_then(|mut t| t.take());
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// For tests: keeps the store thread busy with a job until the returned
/// sender says go (or is dropped); returns once the job has started.
#[cfg(test)]
pub(crate) async fn hold_store_thread(
    store: &Store,
) -> (
    std::sync::mpsc::Sender<()>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (started, busy) = oneshot::channel();
    let store = store.clone();
    let writer = tokio::spawn(async move {
        store
            .call(move |_| {
                let _ = started.send(());
                let _ = held.recv();
                Ok(())
            })
            .await
    });
    busy.await.unwrap();
    (release, writer)
}

/// For tests: holds the store thread ([`hold_store_thread`]) and fills its
/// queue with jobs that do nothing, so that the message log's thread stops
/// at its next hand-off to the index: what it has written stays unsynced,
/// as far as appenders and writers can tell, until the sender says go.
#[cfg(test)]
pub(crate) async fn hold_message_log(
    store: &Store,
) -> (
    std::sync::mpsc::Sender<()>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let held = hold_store_thread(store).await;
    while store.jobs.try_send(Msg::Job(Box::new(|_| {}))).is_ok() {}
    held
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{ExJson, Message};

    /// Closing ends every thread of the store, the checkpoint thread too
    /// (it ends once every handle on it is dropped): `close` returns.
    #[tokio::test]
    async fn close_returns() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(dir.path(), "n1").expect("open");
        let closed = tokio::time::timeout(std::time::Duration::from_secs(30), store.close());
        assert!(closed.await.is_ok(), "the store did not close");
    }

    /// A commit counts as synced only if it wrote a page: one that writes
    /// a row over with the same bytes changes a row (SQLite's count) but
    /// writes nothing, and so syncs nothing. Counted synced, it would let
    /// the mesh send this node's events that no sync has reached.
    #[test]
    fn a_commit_that_wrote_no_page_is_not_counted_synced() {
        let dir = tempfile::tempdir().expect("dir");
        let mut db = Db::open(dir.path(), "n1").expect("db");
        let set = |db: &mut Db, value: &'static str| {
            db.write(|tx, _| {
                tx.execute(
                    "INSERT INTO node (key, value) VALUES ('test', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![value],
                )?;
                Ok(())
            })
            .expect("write");
        };
        set(&mut db, "a");
        assert_eq!(db.synced_at, db.commits);
        let synced = db.synced_at;
        set(&mut db, "a");
        assert_eq!(db.synced_at, synced, "nothing was written, nor synced");
        set(&mut db, "b");
        assert_eq!(db.synced_at, db.commits);
    }

    /// Message `m{n}` to `topic` from nobody, with `ex`, to keep.
    fn kept(topic: uuid::Uuid, n: usize, ex: ExJson) -> Change {
        Change::message(Message {
            topic,
            id: format!("m{n}"),
            ts: 0,
            sender: uuid::Uuid::nil(),
            ex,
        })
    }

    #[tokio::test]
    async fn a_symlinked_database_is_synced_beside_its_target() {
        let data = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let target = elsewhere.path().join("real.db");
        std::os::unix::fs::symlink(&target, data.path().join(DB_FILE)).unwrap();
        let store = Store::open(data.path(), "n1").unwrap();
        // SQLite keeps the WAL beside the file the link names.
        assert!(wal::wal_path(&target).exists());
        assert!(!wal::wal_path(&data.path().join(DB_FILE)).exists());
        store
            .append(kept(uuid::Uuid::nil(), 0, ExJson::empty()))
            .await
            .unwrap();
        let page = store
            .read(|db| db.history(uuid::Uuid::nil(), None, None, 10))
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 1);
        store.close().await;
    }

    #[tokio::test]
    async fn a_quiet_tick_gives_the_page_caches_back() {
        fn cache_used(conn: &Connection) -> i32 {
            db_status(conn, rusqlite::ffi::SQLITE_DBSTATUS_CACHE_USED).expect("cache used")
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        // A few megabytes of pages through the writer's cache.
        store
            .call(|db| {
                db.conn.execute_batch(
                    "CREATE TABLE filler(x);
                     WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 5000)
                     INSERT INTO filler SELECT randomblob(400) FROM n;",
                )?;
                Ok(())
            })
            .await
            .unwrap();
        let cached = |store: &Store| {
            let store = store.clone();
            async move { store.call(|db| Ok(cache_used(&db.conn))).await.unwrap() }
        };
        let warm = cached(&store).await;
        assert!(warm > 1 << 20, "{warm}");
        // Work between two ticks: the cache stays. The reader thread takes
        // its tick in its own time: this read, queued after it, makes sure
        // the tick came before the work (else the reader would see no work
        // between its two ticks and give back pages the writer shares).
        assert!(store.tidy());
        store.read(|_| Ok(())).await.unwrap();
        let still = cached(&store).await;
        assert!(store.tidy());
        let kept = cached(&store).await;
        assert!(kept * 2 > still, "{still} -> {kept}");
        // Two ticks with nothing between them: it goes.
        assert!(store.tidy());
        assert!(store.tidy());
        let after = cached(&store).await;
        assert!(after * 8 < warm, "{warm} -> {after}");
        store.close().await;
        assert!(!store.tidy());
    }

    #[tokio::test]
    async fn own_changes_reach_mesh_links_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let mut log = store.watch_log();
        let own = store.call(|db| Ok(db.origin().key())).await.unwrap();
        let sendable = |store: &Store| {
            let store = store.clone();
            async move {
                let (held, _) = store
                    .call(|db| db.catch_up(&replica::VersionVector::default(), 100))
                    .await
                    .unwrap();
                held
            }
        };
        // A group commit answers once synced, and its events are sendable
        // by then; links are told.
        store
            .append(kept(uuid::Uuid::nil(), 0, ExJson::empty()))
            .await
            .unwrap();
        assert_eq!(sendable(&store).await.get(&own), 2);
        assert!(log.has_changed().unwrap());
        log.borrow_and_update();
        // A job's change is synced by its own commit, which marks it
        // durable; links hear of it and may send it.
        store
            .call(|db| db.create_account("a", "h").map(|_| ()))
            .await
            .unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while sendable(&store).await.get(&own) < 3 {
                log.changed().await.unwrap();
            }
        })
        .await
        .expect("the account's event became sendable");
        // A synced-later job is answered once the sync thread has synced
        // its commit, which marks it durable first: sendable by the answer.
        store
            .call_synced(|db| db.create_account("b", "h").map(|_| ()))
            .await
            .unwrap();
        assert_eq!(sendable(&store).await.get(&own), 4);
        store.close().await;
    }

    /// A synced-later job that writes is answered only after a sync of the
    /// sync thread, whether its commit went through `Db::write` (an
    /// account) or not (a login ticket's own statements); one that writes
    /// nothing is answered without one.
    #[tokio::test]
    async fn a_synced_job_that_writes_is_answered_after_a_sync() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let account = store
            .call_synced(|db| db.create_account("a", "h"))
            .await
            .unwrap();
        let before = store.syncs();
        let issued = store
            .call_synced(move |db| db.store_ticket("t1", account.id, None, i64::MAX, 0))
            .await;
        assert!(issued.is_ok(), "{issued:?}");
        let after_issue = store.syncs();
        assert!(after_issue > before, "issued without a sync");
        let taken = store.call_synced(|db| db.take_ticket("t1")).await.unwrap();
        assert!(taken.is_some());
        let after_take = store.syncs();
        assert!(after_take > after_issue, "redeemed without a sync");
        store
            .call_synced(|db| db.account_by_name("a"))
            .await
            .unwrap();
        assert_eq!(store.syncs(), after_take);
        store.close().await;
    }

    /// Synced-later jobs queued together run together, each answered with
    /// its own outcome; one that commits nothing is answered too.
    #[tokio::test]
    async fn synced_jobs_queued_together_each_get_their_own_answer() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let (release, _held) = hold_store_thread(&store).await;
        let names = ["a", "b", "a", "c"];
        let mut calls: Vec<_> = names
            .iter()
            .map(|name| {
                let store = store.clone();
                let name = name.to_string();
                tokio::spawn(async move {
                    store
                        .call_synced(move |db| db.create_account(&name, "h").map(|a| a.name))
                        .await
                })
            })
            .collect();
        let read = {
            let store = store.clone();
            tokio::spawn(async move { store.call_synced(|_| Ok("read")).await })
        };
        // All five queued behind the held job before it ends.
        let queued = store.clone();
        tokio::time::timeout(std::time::Duration::from_secs(10), async move {
            while queued.jobs.capacity() > QUEUE - 5 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the jobs were queued");
        let syncs = store.syncs();
        drop(release);
        let mut outcomes = Vec::new();
        for call in calls.drain(..) {
            outcomes.push(call.await.unwrap().map_err(|e| e.to_string()));
        }
        // The two creates of `a` ran in the same run: one took the name.
        let a: Vec<_> = [&outcomes[0], &outcomes[2]].map(|o| o.as_deref()).into();
        assert!(a.contains(&Ok("a")), "{a:?}");
        assert_eq!(a.iter().filter(|o| o.is_err()).count(), 1, "{a:?}");
        assert_eq!(outcomes[1].as_deref(), Ok("b"));
        assert_eq!(outcomes[3].as_deref(), Ok("c"));
        assert_eq!(read.await.unwrap().unwrap(), "read");
        // One run, one sync.
        assert_eq!(store.syncs(), syncs + 1);
        store.close().await;
    }

    #[tokio::test]
    async fn history_is_read_on_its_own_connection_while_the_store_thread_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let topic = uuid::Uuid::now_v7();
        store.append(kept(topic, 1, ExJson::empty())).await.unwrap();
        // Hold the store thread (the writer) until the read is answered.
        let (release, writer) = hold_store_thread(&store).await;
        let page = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            store.read(move |db| db.history(topic, None, None, 10)),
        )
        .await
        .expect("a history read does not queue behind the store thread")
        .unwrap();
        assert_eq!(page.messages.len(), 1);
        assert_eq!(page.messages[0].id, "m1");
        // That connection is read-only: a write through it fails.
        let write = store
            .read(|db| Ok(db.conn.execute("DELETE FROM events", [])?))
            .await;
        assert!(matches!(write, Err(Error::Sqlite(_))), "{write:?}");
        release.send(()).unwrap();
        writer.await.unwrap().unwrap();
        store.close().await;
        assert!(matches!(store.read(|_| Ok(())).await, Err(Error::Closed)));
    }

    /// Queued messages take room by their size until they are committed:
    /// what waits for the store is bounded in bytes, not only in count.
    #[tokio::test]
    async fn queued_messages_hold_room_until_committed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let (release, writer) = hold_store_thread(&store).await;
        let body = "x".repeat(10_000);
        let ex = ExJson::from_map(&serde_json::Map::from_iter([(
            "body".to_owned(),
            serde_json::Value::from(body),
        )]))
        .unwrap();
        let size = ex.get().len() + CHANGE_OVERHEAD;
        let mut pending = Vec::new();
        for n in 0..3 {
            let change = kept(uuid::Uuid::now_v7(), n, ex.clone());
            pending.push(store.enqueue(vec![change]).await.unwrap());
        }
        assert_eq!(store.room.available_permits(), QUEUED_BYTES - 3 * size);
        release.send(()).unwrap();
        writer.await.unwrap().unwrap();
        for p in pending {
            for outcome in p.wait().await {
                outcome.unwrap();
            }
        }
        // Given back once the group is synced, before its replies.
        assert_eq!(store.room.available_permits(), QUEUED_BYTES);
        store.close().await;
    }

    #[tokio::test]
    async fn a_reservation_holds_room_until_committed_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let (release, writer) = hold_store_thread(&store).await;
        let ex = ExJson::from_map(&serde_json::Map::from_iter([(
            "body".to_owned(),
            serde_json::Value::from("x".repeat(QUEUED_BYTES / 2)),
        )]))
        .unwrap();
        let change = |n: usize| kept(uuid::Uuid::nil(), n, ex.clone());
        let one = vec![change(0)];
        let first = store.reserve(&one).await.expect("room for one");
        let first = first.send(one);
        release.send(()).unwrap();
        writer.await.unwrap().unwrap();
        assert_eq!(first.wait().await.len(), 1);
        assert_eq!(store.room.available_permits(), QUEUED_BYTES);
        // A reservation dropped unsent gives its room back.
        let again = store.reserve(&[change(2)]).await.expect("room again");
        assert!(store.room.available_permits() < QUEUED_BYTES);
        drop(again);
        assert_eq!(store.room.available_permits(), QUEUED_BYTES);
        // Changes queued as one entry are each answered, in order.
        let small = |n: usize| kept(uuid::Uuid::nil(), n, ExJson::empty());
        let run = vec![small(4), small(5), small(6)];
        let queued = store.reserve(&run).await.expect("room for a run");
        let outcomes = queued.send(run).wait().await;
        let seqs: Vec<u64> = outcomes.into_iter().map(|o| o.unwrap().seq).collect();
        assert_eq!(seqs.len(), 3);
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let kept = store
            .call(|db| db.history(uuid::Uuid::nil(), None, None, 10))
            .await
            .unwrap();
        let ids: Vec<_> = kept.messages.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["m0", "m4", "m5", "m6"]);
        store.close().await;
    }

    /// A synced-later job that writes nothing may still answer with what
    /// an earlier job wrote (a `mark` that finds the account's other
    /// connection has just moved the marker there): its answer waits for
    /// every commit handed to the sync thread before it, and after a failed
    /// sync it is refused like them.
    #[test]
    fn a_synced_job_that_writes_nothing_waits_for_the_commits_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let path = dir.path().join(DB_FILE);
        let (checkpoints, checkpointing) = wal::Checkpointer::start(path.clone()).unwrap();
        let durable = wal::Durable::new(db.own_seq().unwrap());
        // The sync thread stops after its first sync until told to go on.
        let (go, gate) = std::sync::mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let syncer = wal::Syncer::start(
            wal::open_wal(&path).unwrap(),
            durable.clone(),
            checkpoints,
            move || {
                let _ = gate.lock().unwrap().recv();
            },
        )
        .unwrap();
        let job = |f: fn(&mut Db) -> Result<bool, Error>| {
            let (tx, rx) = oneshot::channel::<Result<bool, Error>>();
            let job: SyncedJob = Box::new(move |db| {
                let out = f(db);
                Box::new(move |synced: Result<(), Error>| {
                    let _ = tx.send(synced.and(out));
                })
            });
            (job, rx)
        };
        // Something the sync thread is busy with.
        let (first, _first) = job(|db| db.create_account("a", "h").map(|_| true));
        run_synced(&mut db, &syncer, vec![first]);
        // Committed behind it: not synced yet.
        let (write, mut written) = job(|db| db.create_account("b", "h").map(|_| true));
        run_synced(&mut db, &syncer, vec![write]);
        // A job that only finds what that one wrote.
        let (read, mut found) = job(|db| Ok(db.account_by_name("b")?.is_some()));
        run_synced(&mut db, &syncer, vec![read]);
        assert!(written.try_recv().is_err(), "answered before its sync");
        assert!(
            found.try_recv().is_err(),
            "a job that wrote nothing answered before the commit it found was synced"
        );
        drop(go);
        assert!(written.blocking_recv().unwrap().unwrap());
        assert!(found.blocking_recv().unwrap().unwrap());
        // After a failed sync, such a job is refused as the others are.
        durable.fail();
        let (read, mut refused) = job(|db| Ok(db.account_by_name("b")?.is_some()));
        run_synced(&mut db, &syncer, vec![read]);
        syncer.finish();
        checkpointing.join().unwrap();
        let refused = refused.try_recv().unwrap();
        assert!(refused.is_err(), "{refused:?}");
    }

    #[test]
    fn a_group_commit_is_gapless_and_the_clock_carries_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let message = |n: usize| kept(uuid::Uuid::nil(), n, ExJson::empty());
        let room = Arc::new(tokio::sync::Semaphore::new(QUEUED_BYTES));
        // Entries of one change and of several: five changes in all.
        let (batch, waiting): (Vec<_>, Vec<_>) = [0..1, 1..4, 4..5]
            .into_iter()
            .map(|ns| {
                let (tx, rx) = oneshot::channel();
                let append = Append {
                    changes: ns.map(message).collect(),
                    reply: tx,
                    room: room.clone().try_acquire_many_owned(1).unwrap(),
                };
                (append, rx)
            })
            .unzip();
        let path = dir.path().join(DB_FILE);
        let (checkpoints, checkpointing) = wal::Checkpointer::start(path.clone()).unwrap();
        let durable = wal::Durable::new(1);
        let wal_file = wal::open_wal(&path).unwrap();
        let syncer = wal::Syncer::start(wal_file, durable.clone(), checkpoints, || {}).unwrap();
        commit_batch(&mut db, &syncer, batch, &|_| {});
        // Answered once synced: all of them when the sync thread ends.
        syncer.finish();
        checkpointing.join().unwrap();
        assert_eq!(durable.get(), 6);
        let answers: Vec<Vec<Result<Event, Error>>> = waiting
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap())
            .collect();
        // Each entry hears of its own changes.
        let sizes: Vec<usize> = answers.iter().map(Vec::len).collect();
        assert_eq!(sizes, [1, 3, 1]);
        let committed: Vec<Event> = answers.into_iter().flatten().map(Result::unwrap).collect();
        let ids: Vec<String> = committed
            .iter()
            .map(|e| e.change.message.as_ref().unwrap().id.clone())
            .collect();
        assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4"]);
        // After the seed event, one seq each, in order, clocks rising.
        let seqs: Vec<u64> = committed.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [2, 3, 4, 5, 6]);
        assert!(committed.windows(2).all(|w| w[0].hlc < w[1].hlc));
        // The next transaction starts after the batch, seq and clock.
        db.create_account("a", "h").unwrap();
        drop(db);
        let db = Db::open(dir.path(), "n1").unwrap();
        let events = db.events().unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5, 6, 7]);
        assert!(events.windows(2).all(|w| w[0].hlc < w[1].hlc));
    }
}
