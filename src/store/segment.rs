//! The message log's files: records appended a group commit at a time,
//! each framed with its length and a CRC, in numbered segment files.
//!
//! Step 2 of the store plan (bench/README.md, "The plan for the store"):
//! kept messages' bytes are written here once per group commit, synced by
//! the sync thread before the group is answered, while SQLite keeps a
//! sparse index of them. Per message this is one copy into a buffer; the
//! per-row work of SQLite (a row, its indexes, the WAL's frames) is what
//! bounded history-on throughput.
//!
//! A segment is `<dir>/<number, 20 digits>.seg`: a 24-byte header
//! (`10bitseg`, the format version, four zero bytes, the segment's number),
//! then records:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | body length, little-endian |
//! | 4 | CRC-32 of the next 16 bytes and the body, little-endian |
//! | 8 | seq, little-endian |
//! | 8 | clock, little-endian |
//! | length | body |
//!
//! **Large groups** (version 2). A group of [`DIRECT_AT_LEAST`] bytes or
//! more is written past the page cache (`store/direct_io.rs`): it starts
//! at the next 4 KiB boundary (the one after that if fewer than a record
//! head's bytes would be left before it), and its last block is filled
//! with zeros. Where a record would start, zeros up to a boundary are that
//! padding, and zeros to the file's end within a block are the end. No
//! record's head is all zeros (its checksum covers its seq and clock).
//! Version 1 segments (builds before 2026-12-05) have no padding, are read
//! as before, and are continued without it; a build before this one
//! refuses a version 2 segment rather than take its padding for a torn
//! tail.
//!
//! **Crash safety.** A group is answered only after its segment is synced,
//! so what a crash can leave unsynced is the last segment's tail: a segment
//! is synced before the next is created ([`Writer`] rotates between groups,
//! never inside one). [`Writer::open`] checks the last segment's records
//! and cuts it at the first that is torn or fails its CRC, as Kafka
//! recovers its active segment; what lies past that point was never
//! acknowledged. A bad record anywhere else is damage, reported as
//! [`Error::Corrupt`] when it is read.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::direct_io::{self, BLOCK, DirectFile};

/// The first bytes of every segment.
const MAGIC: &[u8; 8] = b"10bitseg";
/// The format this build writes: version 1 with large groups padded to
/// 4 KiB boundaries (see the module's doc).
const VERSION: u32 = 2;
/// The format of builds before padding, still read (and continued).
const VERSION_UNPADDED: u32 = 1;
/// A block of zeros: a large group's padding when written through the
/// page cache.
static ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];

/// Groups of at least this many bytes are written directly, at a block
/// boundary: below it, the padding would cost more of the disk than the
/// page cache's copy costs of the CPU (a quiet log writes a message a
/// group), and a buffered write is as quick.
pub const DIRECT_AT_LEAST: usize = 64 << 10;
/// Bytes before a segment's first record.
pub const HEADER_LEN: u64 = 24;
/// Bytes of a record before its body.
pub const RECORD_HEAD: usize = 24;
/// The largest body a record holds: far above any message the daemon
/// accepts, and low enough that a damaged length is never allocated.
pub const MAX_BODY: usize = 16 << 20;
/// Bytes read ahead when scanning records in order.
const SCAN_BUFFER: usize = 256 << 10;
/// Segments a [`Reader`] keeps open at most.
const OPEN_SEGMENTS: usize = 64;
/// A segment's file name ends with this.
const SUFFIX: &str = ".seg";

/// Why a segment operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file system said no.
    #[error("message log {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The system's reason.
        #[source]
        source: io::Error,
    },
    /// Bytes on disk are not what this module wrote.
    #[error("message log {} is damaged at byte {offset}: {why}", path.display())]
    Corrupt {
        /// The segment.
        path: PathBuf,
        /// Where in it.
        offset: u64,
        /// What was wrong.
        why: &'static str,
    },
    /// A record's body is longer than [`MAX_BODY`].
    #[error("a record of {len} bytes is over the message log's limit of {MAX_BODY}")]
    TooLarge {
        /// The body's length.
        len: usize,
    },
    /// A rewrite's body is not the length of the body it replaces: a
    /// record's length frames the next one, so it never changes.
    #[error(
        "a record's body of {stored} bytes cannot be rewritten with {len} bytes (a rewrite keeps the length)"
    )]
    Resized {
        /// The new body's length.
        len: usize,
        /// The stored body's length.
        stored: usize,
    },
    /// Another writer holds the directory.
    #[error("message log {} is in use by another process (is another tenthbitd running on this data directory?)", path.display())]
    InUse {
        /// The directory.
        path: PathBuf,
    },
    /// An earlier write failed and could not be undone, or a segment's
    /// sync failed: the writer takes no more records (the daemon is
    /// restarted, and the open cuts the partial write).
    #[error("the message log stopped after a failed write or sync (restart the daemon to recover)")]
    Stopped,
}

impl Error {
    /// Whether a read failed for good: the record is damaged, or its
    /// segment gone. (Other errors, a disk that fails a read, may pass if
    /// tried again.)
    pub fn is_lost(&self) -> bool {
        match self {
            Error::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            Error::Corrupt { .. } | Error::TooLarge { .. } => true,
            Error::InUse { .. } | Error::Stopped | Error::Resized { .. } => false,
        }
    }
}

/// Where a record starts: its segment and its byte offset in it. Ordered
/// as the log is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    /// The segment's number.
    pub segment: u64,
    /// The record's first byte in the segment.
    pub offset: u64,
}

/// A record to append with [`Writer::append`] (tests: the daemon builds
/// its groups in place, [`Group`]).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// The event's seq.
    pub seq: u64,
    /// The event's clock.
    pub hlc: u64,
    /// The event's body, as the caller encodes it.
    pub body: &'a [u8],
}

/// Records in the log's format, built where they are written from: an
/// appender writes its body straight after its record's head, and
/// [`Writer::append_group`] fills in the checksums and writes the bytes as
/// they are. A kept message then costs no buffer of its own to allocate,
/// copy into the group and free on another thread (the message log's
/// groups: bench/README.md, twenty-first round); a cleared group keeps
/// its room for the next.
#[derive(Debug, Default)]
pub struct Group {
    bytes: Vec<u8>,
    /// Where each record starts in `bytes`.
    starts: Vec<usize>,
}

/// One record of a [`Group`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupRecord<'a> {
    /// The event's seq.
    pub seq: u64,
    /// The event's clock.
    pub hlc: u64,
    /// The body.
    pub body: &'a [u8],
}

impl Group {
    /// Adds a record of `seq` and `hlc` whose body `body` appends to the
    /// vector it is given (and does nothing else to it). A body over
    /// [`MAX_BODY`] is taken back out, and refused.
    pub fn push(
        &mut self,
        seq: u64,
        hlc: u64,
        body: impl FnOnce(&mut Vec<u8>),
    ) -> Result<(), Error> {
        let start = self.bytes.len();
        // The length and checksum, written below and by `seal`.
        self.bytes.extend_from_slice(&[0; 8]);
        self.bytes.extend_from_slice(&seq.to_le_bytes());
        self.bytes.extend_from_slice(&hlc.to_le_bytes());
        body(&mut self.bytes);
        let len = self.bytes.len().saturating_sub(start + RECORD_HEAD);
        if len > MAX_BODY {
            self.bytes.truncate(start);
            return Err(Error::TooLarge { len });
        }
        if let Some(at) = self.bytes.get_mut(start..start + 4) {
            // MAX_BODY fits.
            at.copy_from_slice(&(len as u32).to_le_bytes());
        }
        self.starts.push(start);
        Ok(())
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }

    /// Its bytes, heads included: what it writes to the log.
    pub fn byte_len(&self) -> usize {
        self.bytes.len()
    }

    /// The records, in the order pushed.
    pub fn records(&self) -> impl Iterator<Item = GroupRecord<'_>> {
        self.starts.iter().filter_map(|&start| {
            let head = self.bytes.get(start..start + RECORD_HEAD)?;
            let len = u32::from_le_bytes(head.get(..4)?.try_into().ok()?) as usize;
            Some(GroupRecord {
                seq: u64::from_le_bytes(head.get(8..16)?.try_into().ok()?),
                hlc: u64::from_le_bytes(head.get(16..24)?.try_into().ok()?),
                body: self
                    .bytes
                    .get(start + RECORD_HEAD..start + RECORD_HEAD + len)?,
            })
        })
    }

    /// The bytes it has room for without growing.
    pub fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// Empties it, keeping its room.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.starts.clear();
    }

    /// Writes each record's checksum (of its seq, clock and body, which
    /// lie together after the length and the checksum itself).
    fn seal(&mut self) {
        for (i, &start) in self.starts.iter().enumerate() {
            let end = self.starts.get(i + 1).copied().unwrap_or(self.bytes.len());
            let crc = match self.bytes.get(start + 8..end) {
                Some(covered) => crc32fast::hash(covered),
                None => continue,
            };
            if let Some(at) = self.bytes.get_mut(start + 4..start + 8) {
                at.copy_from_slice(&crc.to_le_bytes());
            }
        }
    }
}

/// A record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    /// Where it starts.
    pub at: Position,
    /// Where the record after it starts (in the same segment).
    pub next: Position,
    /// The event's seq.
    pub seq: u64,
    /// The event's clock.
    pub hlc: u64,
    /// The body as appended.
    pub body: Vec<u8>,
}

/// What [`Writer::append_group`] wrote.
#[derive(Debug)]
pub struct Appended {
    /// Each record's position, in the order given.
    pub positions: Vec<Position>,
    /// The log's end after the append: where the next record goes.
    pub end: Position,
    /// The file to sync before the group is answered: an open file of its
    /// own on the segment, not the writer's, so that a failed write-back
    /// (which Linux reports once to each open file) is reported to this
    /// sync even when the writer's rotation has seen it first.
    pub file: Arc<File>,
    /// That file's path, for an error's message.
    pub path: PathBuf,
}

/// The one writer of a log directory (the store thread's).
#[derive(Debug)]
pub struct Writer {
    dir: PathBuf,
    /// Written through, and synced by rotation.
    file: File,
    /// The same segment opened again, for [`Appended::file`].
    sync: Arc<File>,
    segment: u64,
    len: u64,
    /// Rotate before an append that would take a segment past this.
    max_bytes: u64,
    /// When this segment was created, or opened by this writer: see
    /// [`Writer::roll_if_older`].
    since: Instant,
    stopped: bool,
    /// Synced bytes kept in the page cache behind the end: see
    /// [`Writer::keep_cached`].
    cached: u64,
    /// The current segment's bytes before this are out of the page cache.
    uncached: u64,
    /// The segment is version 2: large groups go at block boundaries.
    padded: bool,
    /// The segment opened for direct writes (`None`: the file system has
    /// no direct I/O; large groups then take the same place, written
    /// through the page cache).
    direct: Option<DirectFile>,
    /// Held locked (`flock`) while the writer lives: a second writer of
    /// the directory (another daemon on the same data directory) would
    /// interleave its writes with this one's.
    _lock: File,
}

/// What [`Writer::open`] found.
#[derive(Debug)]
pub struct Opened {
    /// The writer, at the log's end.
    pub writer: Writer,
    /// Bytes cut from the last segment's tail (a torn or damaged write).
    pub cut: u64,
    /// The seq and clock of the log's last record, if it has one.
    pub last: Option<(u64, u64)>,
}

impl Writer {
    /// Opens the log in `dir` (creating both if need be), checks the last
    /// segment and cuts it at its first bad record. Segments rotate at
    /// about `max_bytes` (a group is never split).
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Opened, Error> {
        fs::create_dir_all(dir).map_err(io_at(dir))?;
        let lock = lock(dir)?;
        let segments = list(dir)?;
        let Some(&segment) = segments.last() else {
            let (file, len) = create(dir, 1)?;
            let writer = Self::at(dir, lock, file, (1, VERSION), len, max_bytes)?;
            return Ok(Opened {
                writer,
                cut: 0,
                last: None,
            });
        };
        // A segment sealed before this one ends the log if this one holds
        // no record yet.
        let before = segments.iter().rev().nth(1).copied();
        let path = segment_path(dir, segment);
        let file = open_existing(dir, segment)?;
        let on_disk = file.metadata().map_err(io_at(&path))?.len();
        if on_disk < HEADER_LEN || (on_disk == HEADER_LEN && header_torn(&file, &path, segment)?) {
            // Created, and the crash came before its header was synced
            // (short, or its size kept and its bytes not): nothing was ever
            // written to it, as records follow only a synced header.
            drop(file);
            let (file, len) = create(dir, segment)?;
            let writer = Self::at(dir, lock, file, (segment, VERSION), len, max_bytes)?;
            let last = last_in(dir, before)?;
            return Ok(Opened {
                writer,
                cut: 0,
                last,
            });
        }
        let version = check_header(&file, &path, segment)?;
        let mut records = Records::new(&file, &path, (segment, version), HEADER_LEN)?;
        let mut last = None;
        let mut cut = 0;
        let end = loop {
            match records.next_record()? {
                Next::Record(r) => last = Some((r.seq, r.hlc)),
                Next::End(at) => break at,
                Next::Bad { at, why } => {
                    tracing::warn!(
                        segment = %path.display(),
                        offset = at,
                        bytes_cut = on_disk - at,
                        why,
                        "message log: cutting a torn tail (written, never acknowledged)"
                    );
                    file.set_len(at).map_err(io_at(&path))?;
                    file.sync_data().map_err(io_at(&path))?;
                    cut = on_disk - at;
                    break at;
                }
            }
        };
        // Zeros past the end (a large group's last block) are left for
        // the next group to write over: not a cut.
        let writer = Self::at(dir, lock, file, (segment, version), end, max_bytes)?;
        let last = match last {
            Some(last) => Some(last),
            None => last_in(dir, before)?,
        };
        Ok(Opened { writer, cut, last })
    }

    fn at(
        dir: &Path,
        lock: File,
        file: File,
        (segment, version): (u64, u32),
        len: u64,
        max_bytes: u64,
    ) -> Result<Self, Error> {
        let padded = version == VERSION;
        Ok(Self {
            _lock: lock,
            dir: dir.to_path_buf(),
            file,
            sync: open_for_sync(dir, segment)?,
            segment,
            len,
            max_bytes,
            since: Instant::now(),
            stopped: false,
            cached: u64::MAX,
            uncached: 0,
            padded,
            direct: padded
                .then(|| DirectFile::open(&segment_path(dir, segment)))
                .flatten(),
        })
    }

    /// Whether large groups are written directly (the file system has
    /// direct I/O, and the segment is version 2).
    #[cfg(test)]
    fn writes_directly(&self) -> bool {
        self.direct.is_some()
    }

    /// Keeps at most `bytes` of the log behind its end in the page cache
    /// once synced ([`Writer::uncache`]); by default all of it.
    pub fn keep_cached(&mut self, bytes: u64) {
        self.cached = bytes;
    }

    /// Drops the current segment's synced pages more than the kept bytes
    /// behind the end from the page cache (call it once what was appended
    /// is synced: dirty pages stay). PostgreSQL does the same with its WAL:
    /// the log is written once and read back rarely (a history page, a
    /// peer's catch-up, the search pass when far behind), and otherwise
    /// it would push the database's pages (read by every history request)
    /// out of the cache. On a virtual machine whose memory the host backs
    /// only once touched, it also spares a fresh page per 4 KiB written
    /// (bench/README.md, twenty-fourth round).
    pub fn uncache(&mut self) {
        if let Some((from, to)) = uncached_range(self.uncached, self.len, self.cached) {
            advise_dontneed(&self.file, from, to);
            self.uncached = to;
        }
    }

    /// Where the next record goes.
    pub fn end(&self) -> Position {
        Position {
            segment: self.segment,
            offset: self.len,
        }
    }

    /// [`Writer::append_group`] of `records` (tests).
    #[cfg(test)]
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = Record<'a>>,
    ) -> Result<Appended, Error> {
        let mut group = Group::default();
        for r in records {
            group.push(r.seq, r.hlc, |out| out.extend_from_slice(r.body))?;
        }
        self.append_group(&mut group)
    }

    /// Appends `group` (its checksums written here) with one write, in a
    /// new segment if this one would pass its size. Nothing is synced: the
    /// caller syncs [`Appended::file`] before it answers for the records.
    pub fn append_group(&mut self, group: &mut Group) -> Result<Appended, Error> {
        if self.stopped {
            return Err(Error::Stopped);
        }
        group.seal();
        let size = group.bytes.len() as u64;
        if self.len > HEADER_LEN && self.len.saturating_add(size) > self.max_bytes {
            self.rotate()?;
        }
        let path = segment_path(&self.dir, self.segment);
        let large = self.padded && group.bytes.len() >= DIRECT_AT_LEAST;
        let base = if large {
            block_start(self.len)
        } else {
            self.len
        };
        let written = if large {
            self.write_large(&group.bytes, base)
        } else {
            self.file.write_all_at(&group.bytes, base)
        };
        if let Err(e) = written {
            // Leave no partial group for the next one to follow.
            if self.file.set_len(self.len).is_err() {
                self.stopped = true;
            }
            return Err(Error::Io { path, source: e });
        }
        self.len = base + size;
        Ok(Appended {
            positions: group
                .starts
                .iter()
                .map(|&s| Position {
                    segment: self.segment,
                    offset: base + s as u64,
                })
                .collect(),
            end: self.end(),
            file: Arc::clone(&self.sync),
            path,
        })
    }

    /// Writes a large group's `bytes` at `base` (a block boundary), its
    /// last block filled with zeros: directly if it can, else through the
    /// page cache, the same bytes either way.
    fn write_large(&mut self, bytes: &[u8], base: u64) -> io::Result<()> {
        if let Some(direct) = &mut self.direct {
            match direct.write_blocks(bytes, base) {
                // Opened with O_DIRECT, but refused its alignment (a
                // device with larger blocks): through the page cache.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::warn!(error = %e, "message log: direct writes refused; writing through the page cache");
                    self.direct = None;
                }
                done => return done,
            }
        }
        let pad = direct_io::padded_len(bytes.len()) - bytes.len();
        self.file.write_all_at(bytes, base)?;
        self.file.write_all_at(
            ZEROS.get(..pad).unwrap_or_default(),
            base + bytes.len() as u64,
        )
    }

    /// Seals this segment (synced, never written again) and starts the
    /// next: only the last segment can then have a torn tail.
    fn rotate(&mut self) -> Result<(), Error> {
        let path = segment_path(&self.dir, self.segment);
        let Some(next) = self.segment.checked_add(1) else {
            return Err(Error::Corrupt {
                path,
                offset: 0,
                why: "the largest segment number (no segment can follow it; was the file renamed?)",
            });
        };
        if let Err(e) = self.file.sync_data() {
            // The failed write-back's pages may be marked clean, so a
            // second sync would succeed with them not on disk: a segment
            // not known to be whole is never followed by another.
            self.stopped = true;
            return Err(Error::Io { path, source: e });
        }
        let (file, len) = create(&self.dir, next)?;
        let sync = open_for_sync(&self.dir, next)?;
        if self.cached < self.max_bytes {
            // Synced above: the sealed segment's pages can all go.
            advise_dontneed(&self.file, self.uncached, self.len);
        }
        self.file = file;
        self.sync = sync;
        self.segment = next;
        self.len = len;
        self.uncached = 0;
        self.padded = true;
        self.direct = DirectFile::open(&segment_path(&self.dir, next));
        self.since = Instant::now();
        tracing::debug!(segment = self.segment, "message log: new segment");
        Ok(())
    }

    /// Starts a new segment if this one holds a record and was started (or
    /// opened) at least `age` ago; whether it did. A quiet log rolls too,
    /// so that its records leave the disk once indexed (see
    /// [`Reader::indexed_before`]) and not only when a segment fills.
    pub fn roll_if_older(&mut self, age: Duration) -> Result<bool, Error> {
        if self.stopped {
            return Err(Error::Stopped);
        }
        if self.len <= HEADER_LEN || self.since.elapsed() < age {
            return Ok(false);
        }
        self.rotate()?;
        Ok(true)
    }
}

/// Reads records by position or in order; any number of threads may
/// read while the [`Writer`] appends.
#[derive(Debug)]
pub struct Reader {
    dir: PathBuf,
    /// Open segments, so a history page is not an `open` per record; at
    /// most [`OPEN_SEGMENTS`].
    files: Mutex<HashMap<u64, Arc<File>>>,
    /// Bytes at a segment's end that [`Reader::read_once`] leaves in the
    /// page cache: the writer's ([`Writer::keep_cached`]).
    cached: AtomicU64,
}

impl Reader {
    /// A reader of the log in `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            files: Mutex::new(HashMap::new()),
            cached: AtomicU64::new(u64::MAX),
        }
    }

    /// Leaves the last `bytes` of a segment in the page cache after a
    /// [`Reader::read_once`], as the writer keeps them; by default all.
    pub fn keep_cached(&self, bytes: u64) {
        self.cached.store(bytes, Ordering::Relaxed);
    }

    fn file(&self, segment: u64) -> Result<Arc<File>, Error> {
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = files.get(&segment) {
            return Ok(Arc::clone(f));
        }
        let path = segment_path(&self.dir, segment);
        let file = Arc::new(File::open(&path).map_err(io_at(&path))?);
        if files.len() >= OPEN_SEGMENTS {
            // The oldest goes: history reads are mostly of recent messages.
            if let Some(&oldest) = files.keys().min() {
                files.remove(&oldest);
            }
        }
        files.insert(segment, Arc::clone(&file));
        Ok(file)
    }

    /// The record at `at`.
    pub fn read(&self, at: Position) -> Result<Stored, Error> {
        let file = self.file(at.segment)?;
        // Made only for an error: a history page reads hundreds.
        let path = || segment_path(&self.dir, at.segment);
        let corrupt = |why| Error::Corrupt {
            path: path(),
            offset: at.offset,
            why,
        };
        if at.offset < HEADER_LEN {
            return Err(corrupt("a position inside the segment's header"));
        }
        let mut head = [0u8; RECORD_HEAD];
        file.read_exact_at(&mut head, at.offset)
            .map_err(|e| eof_is(e, &path(), corrupt("a record past the segment's end")))?;
        let len = body_len(&head).ok_or_else(|| corrupt("a record longer than the limit"))?;
        let mut body = vec![0u8; len];
        file.read_exact_at(&mut body, at.offset + RECORD_HEAD as u64)
            .map_err(|e| eof_is(e, &path(), corrupt("a record cut short")))?;
        decode(&head, body, at).ok_or_else(|| corrupt("a record whose CRC does not match"))
    }

    /// The records at `at`, each as [`Reader::read`] gives it, in the
    /// order given. Records near each other in a segment (in rising order,
    /// within [`SPAN`] of the first and [`GAP`] of each other) are read
    /// with one `pread` of the bytes that span them: the search pass reads
    /// a run of a thousand records, and the log's older pages are not in
    /// the page cache ([`Writer::uncache`]).
    pub fn read_many(&self, at: &[Position]) -> Vec<Result<Stored, Error>> {
        self.read_spans(at, false)
    }

    /// [`Reader::read_many`] for a reader that goes through the log once
    /// (the search pass): the spans' pages are then dropped from the page
    /// cache, as the writer drops what it wrote ([`Writer::uncache`]), but
    /// for a segment's last [`Reader::keep_cached`] bytes: a pass that has
    /// caught up leaves the newest messages cached for history.
    pub fn read_once(&self, at: &[Position]) -> Vec<Result<Stored, Error>> {
        self.read_spans(at, true)
    }

    fn read_spans(&self, at: &[Position], once: bool) -> Vec<Result<Stored, Error>> {
        let mut out = Vec::with_capacity(at.len());
        let mut rest = at;
        while let Some(&first) = rest.first() {
            let run = run_len(rest);
            let (these, after) = rest.split_at(run.min(rest.len()));
            rest = after;
            let span = self.read_span(first, these);
            if once
                && let (Ok(bytes), Ok(file)) = (&span, self.file(first.segment))
                && let Ok(meta) = file.metadata()
            {
                let end = first.offset + bytes.len() as u64;
                let keep = self.cached.load(Ordering::Relaxed);
                advise_dontneed(&file, first.offset, read_uncached_to(end, meta.len(), keep));
            }
            for &p in these {
                let found = span
                    .as_ref()
                    .ok()
                    .and_then(|bytes| record_in(bytes, first.offset, p));
                out.push(found.map_or_else(|| self.read(p), Ok));
            }
        }
        out
    }

    /// The bytes from `first` to the end of the last of `these`'s heads
    /// plus a typical body (short at the segment's end).
    fn read_span(&self, first: Position, these: &[Position]) -> Result<Vec<u8>, Error> {
        let last = these.last().map_or(first.offset, |p| p.offset);
        let len = usize::try_from(last - first.offset).unwrap_or(usize::MAX);
        let mut bytes = vec![0u8; len.saturating_add(RECORD_HEAD + SPAN_TAIL)];
        let file = self.file(first.segment)?;
        let mut filled = 0;
        while filled < bytes.len() {
            let Some(buf) = bytes.get_mut(filled..) else {
                break;
            };
            match file.read_at(buf, first.offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io_at(&segment_path(&self.dir, first.segment))(e)),
            }
        }
        bytes.truncate(filled);
        Ok(bytes)
    }

    /// Replaces the body of the record at `at` with `body`, of the same
    /// length, and writes its CRC anew, then syncs the segment: a
    /// redaction erases a kept message's text in the log (store/edit.rs).
    /// The record is first read and checked as [`Reader::read`] does, so a
    /// position that is not a whole record's start is [`Error::Corrupt`];
    /// a body of another length is [`Error::Resized`]. Either way nothing
    /// is written.
    ///
    /// The bytes are written in place while the [`Writer`] may be
    /// appending to the same segment: its writes lie past its end, this
    /// one's before it. Until the sync returns, a read of this record may
    /// see a mix of old and new bytes, and so a CRC that does not match;
    /// a crash of the machine in that window can leave it so on disk,
    /// which [`Writer::open`] cuts as a torn tail (with every record after
    /// it) if this is the last segment.
    pub fn rewrite(&self, at: Position, body: &[u8]) -> Result<(), Error> {
        let stored = self.read(at)?;
        if body.len() != stored.body.len() {
            return Err(Error::Resized {
                len: body.len(),
                stored: stored.body.len(),
            });
        }
        self.write_in_place(at, (stored.seq, stored.hlc), body)
    }

    /// [`Reader::rewrite`] done again, after a crash that may have torn
    /// it: the record at `at` is not checked but for its length, which a
    /// rewrite never writes, and gets seq and clock `seq_hlc` and `body`.
    /// The store journals each rewrite with these before it makes it, and
    /// redoes what its journal holds before the log is opened (whose check
    /// of its last segment would cut a torn record and all after it).
    pub fn redo(&self, at: Position, seq_hlc: (u64, u64), body: &[u8]) -> Result<(), Error> {
        let file = self.file(at.segment)?;
        let path = segment_path(&self.dir, at.segment);
        if at.offset < HEADER_LEN {
            return Err(Error::Corrupt {
                path,
                offset: at.offset,
                why: "a position inside the segment's header",
            });
        }
        let mut head = [0u8; RECORD_HEAD];
        file.read_exact_at(&mut head, at.offset)
            .map_err(io_at(&path))?;
        let stored = body_len(&head).unwrap_or(usize::MAX);
        if stored != body.len() {
            return Err(Error::Resized {
                len: body.len(),
                stored,
            });
        }
        self.write_in_place(at, seq_hlc, body)
    }

    /// Writes a record's CRC, seq, clock and body at `at` (its length
    /// stays), and syncs the segment.
    fn write_in_place(
        &self,
        at: Position,
        (seq, hlc): (u64, u64),
        body: &[u8],
    ) -> Result<(), Error> {
        let seq_hlc = [seq, hlc].map(u64::to_le_bytes);
        let seq_hlc = seq_hlc.as_flattened();
        // The CRC, seq and clock (the last two as read) and the body lie
        // together after the length: one write of them all, so that the
        // window in which a read sees half of the change is one call's.
        let mut bytes = Vec::with_capacity(RECORD_HEAD - 4 + body.len());
        bytes.extend_from_slice(&checksum(seq_hlc, body).to_le_bytes());
        bytes.extend_from_slice(seq_hlc);
        bytes.extend_from_slice(body);
        let path = segment_path(&self.dir, at.segment);
        // A file of its own, opened to write only: the cached files are
        // read-only, and an append-mode file would put every write at the
        // end, however positioned. It reads the same page cache, so the
        // cached files see the new bytes.
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(io_at(&path))?;
        file.write_all_at(&bytes, at.offset + 4)
            .and_then(|()| file.sync_data())
            .map_err(io_at(&path))
    }

    /// The records from `from` up to `upto` (not included), in log order,
    /// across segments. `upto` is an end the caller knows is whole (the
    /// writer's end after a commit): a record still being written past it
    /// is not read.
    pub fn scan(&self, from: Position, upto: Position) -> Result<Scan<'_>, Error> {
        Ok(Scan {
            reader: self,
            segments: list(&self.dir)?
                .into_iter()
                .filter(|&s| s >= from.segment && s <= upto.segment)
                .collect::<Vec<_>>()
                .into_iter(),
            from,
            upto,
            current: None,
        })
    }

    /// The segments on disk, oldest first.
    pub fn segments(&self) -> Result<Vec<u64>, Error> {
        list(&self.dir)
    }

    /// Deletes the segments numbered below `segment` (retention drops
    /// whole segments), never the last one on disk: the writer's. Returns
    /// how many it deleted.
    pub fn remove_before(&self, segment: u64) -> Result<usize, Error> {
        let mut segments = list(&self.dir)?;
        // The writer's segment is the last; unlinked, what it goes on
        // writing would be lost at the next open.
        segments.pop();
        let mut removed = 0;
        for s in segments.into_iter().filter(|&s| s < segment) {
            let path = segment_path(&self.dir, s);
            // Unlinked under the cache's lock, which `file` holds while it
            // opens: a read either opened it before (and its handle is
            // dropped here) or finds it gone, and never caches a deleted
            // file, whose space would then not be given back.
            let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
            files.remove(&s);
            fs::remove_file(&path).map_err(io_at(&path))?;
            drop(files);
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }

    /// The bound below which every segment's records lie before `end` (a
    /// position after the last record indexed), if any segment on disk is
    /// below it: [`Reader::remove_before`] it. The writer's segment
    /// (`writing`, as the writer says: a file past it may be one a failed
    /// rotation left) never is; a sealed segment that `end` reaches the end
    /// of is.
    pub fn indexed_before(&self, end: Position, writing: u64) -> Result<Option<u64>, Error> {
        let segments = list(&self.dir)?;
        let sealed = writing > end.segment;
        let whole = sealed && {
            let path = segment_path(&self.dir, end.segment);
            match fs::metadata(&path) {
                Ok(meta) => meta.len() <= end.offset,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(Error::Io { path, source: e }),
            }
        };
        let bound = if whole {
            end.segment.saturating_add(1)
        } else {
            end.segment
        };
        Ok(segments
            .first()
            .filter(|&&first| first < bound)
            .map(|_| bound))
    }
}

/// Records in log order: [`Reader::scan`].
pub struct Scan<'a> {
    reader: &'a Reader,
    segments: std::vec::IntoIter<u64>,
    from: Position,
    upto: Position,
    current: Option<(u64, Records<File>)>,
}

impl Iterator for Scan<'_> {
    type Item = Result<Stored, Error>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.current.is_none() {
                let segment = self.segments.next()?;
                let start = if segment == self.from.segment {
                    self.from.offset.max(HEADER_LEN)
                } else {
                    HEADER_LEN
                };
                // A file of its own: its cursor is the scan's.
                let path = segment_path(&self.reader.dir, segment);
                let opened = File::open(&path).map_err(io_at(&path)).and_then(|f| {
                    let version = check_header(&f, &path, segment)?;
                    Records::new(f, &path, (segment, version), start)
                });
                match opened {
                    Ok(records) => self.current = Some((segment, records)),
                    Err(e) => {
                        self.segments = Vec::new().into_iter();
                        return Some(Err(e));
                    }
                }
            }
            let (segment, records) = self.current.as_mut()?;
            let segment = *segment;
            let done = |at: u64| {
                Position {
                    segment,
                    offset: at,
                } >= self.upto
            };
            if done(records.at) {
                self.segments = Vec::new().into_iter();
                self.current = None;
                return None;
            }
            match records.next_record() {
                // Past padding, the next record may lie at `upto` or past.
                Ok(Next::Record(r)) if done(r.at.offset) => {
                    self.segments = Vec::new().into_iter();
                    self.current = None;
                    return None;
                }
                Ok(Next::Record(r)) => return Some(Ok(r)),
                Ok(Next::End(_)) => self.current = None,
                Ok(Next::Bad { at, why }) => {
                    self.segments = Vec::new().into_iter();
                    let path = records.path.clone();
                    self.current = None;
                    return Some(Err(Error::Corrupt {
                        path,
                        offset: at,
                        why,
                    }));
                }
                Err(e) => {
                    self.segments = Vec::new().into_iter();
                    self.current = None;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// One step of reading a segment's records in order.
enum Next {
    Record(Stored),
    /// The segment ends, at a record boundary, here.
    End(u64),
    /// The record here is torn or damaged.
    Bad {
        at: u64,
        why: &'static str,
    },
}

/// A segment's records in order, read ahead through a buffer.
struct Records<R> {
    input: BufReader<R>,
    path: PathBuf,
    segment: u64,
    /// Large groups are padded to block boundaries (version 2).
    padded: bool,
    at: u64,
}

impl<R: Read + Seek> Records<R> {
    fn new(
        mut file: R,
        path: &Path,
        (segment, version): (u64, u32),
        at: u64,
    ) -> Result<Self, Error> {
        file.seek(SeekFrom::Start(at)).map_err(io_at(path))?;
        Ok(Self {
            input: BufReader::with_capacity(SCAN_BUFFER, file),
            path: path.to_path_buf(),
            segment,
            padded: version == VERSION,
            at,
        })
    }

    fn next_record(&mut self) -> Result<Next, Error> {
        let at = self.at;
        let mut head = [0u8; RECORD_HEAD];
        let n = read_full(&mut self.input, &mut head).map_err(io_at(&self.path))?;
        if n == 0 {
            return Ok(Next::End(at));
        }
        if self.padded && head.iter().all(|&b| b == 0) {
            return self.after_zeros(at, n);
        }
        self.record(at, head, n)
    }

    /// Zeros where a record would start at `at` (`read` of them read):
    /// a large group's padding up to the next block boundary, or the
    /// zeros that fill the last block of the segment, or a torn write.
    fn after_zeros(&mut self, at: u64, read: usize) -> Result<Next, Error> {
        if read < RECORD_HEAD {
            // Zeros to the file's end.
            return Ok(Next::End(at));
        }
        let boundary = at.next_multiple_of(BLOCK);
        if at == boundary {
            // Records start at a boundary after padding: zeros there were
            // never written (a torn large group).
            return Ok(Next::Bad {
                at,
                why: "zeros where a record should start",
            });
        }
        // The rest of the padding (under a block).
        let rest_len = usize::try_from(boundary - at).unwrap_or(0);
        let mut rest = vec![0u8; rest_len.saturating_sub(RECORD_HEAD)];
        let n = read_full(&mut self.input, &mut rest).map_err(io_at(&self.path))?;
        if rest.get(..n).is_some_and(|r| r.iter().any(|&b| b != 0)) {
            return Ok(Next::Bad {
                at,
                why: "padding that is not zeros",
            });
        }
        if n < rest.len() {
            return Ok(Next::End(at));
        }
        self.at = boundary;
        let mut head = [0u8; RECORD_HEAD];
        match read_full(&mut self.input, &mut head).map_err(io_at(&self.path))? {
            // The segment ends with its padding: its end is where the
            // padding began, where the next group goes.
            0 => {
                self.at = at;
                Ok(Next::End(at))
            }
            // A torn large group: the log is cut where its padding began.
            n => match self.record(boundary, head, n)? {
                Next::Bad { why, .. } => Ok(Next::Bad { at, why }),
                next => Ok(next),
            },
        }
    }

    /// The record at `at`, whose head's first `n` bytes are read.
    fn record(&mut self, at: u64, head: [u8; RECORD_HEAD], n: usize) -> Result<Next, Error> {
        if n < RECORD_HEAD {
            return Ok(Next::Bad {
                at,
                why: "a record's head cut short",
            });
        }
        let Some(len) = body_len(&head) else {
            return Ok(Next::Bad {
                at,
                why: "a record longer than the limit",
            });
        };
        let mut body = vec![0u8; len];
        if read_full(&mut self.input, &mut body).map_err(io_at(&self.path))? < len {
            return Ok(Next::Bad {
                at,
                why: "a record cut short",
            });
        }
        let pos = Position {
            segment: self.segment,
            offset: at,
        };
        match decode(&head, body, pos) {
            Some(r) => {
                self.at = r.next.offset;
                Ok(Next::Record(r))
            }
            None => Ok(Next::Bad {
                at,
                why: "a record whose CRC does not match",
            }),
        }
    }
}

/// Where a large group written at a segment's `end` starts: the next
/// block boundary, or the one after it if fewer than a record head's
/// bytes would be left before it (padding is told by a head of zeros).
fn block_start(end: u64) -> u64 {
    let boundary = end.next_multiple_of(BLOCK);
    if boundary - end < RECORD_HEAD as u64 && boundary != end {
        boundary + BLOCK
    } else {
        boundary
    }
}

/// The seq and clock of the last record of a sealed `segment`.
fn last_in(dir: &Path, segment: Option<u64>) -> Result<Option<(u64, u64)>, Error> {
    let Some(segment) = segment else {
        return Ok(None);
    };
    let path = segment_path(dir, segment);
    let file = File::open(&path).map_err(io_at(&path))?;
    let version = check_header(&file, &path, segment)?;
    let mut records = Records::new(&file, &path, (segment, version), HEADER_LEN)?;
    let mut last = None;
    loop {
        match records.next_record()? {
            Next::Record(r) => last = Some((r.seq, r.hlc)),
            Next::End(_) => return Ok(last),
            Next::Bad { at, why } => {
                return Err(Error::Corrupt {
                    path,
                    offset: at,
                    why,
                });
            }
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(input: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match input.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The page-aligned range of a segment `len` bytes long to drop from the
/// page cache, keeping `keep` bytes behind its end, when its pages before
/// `uncached` are already out: `None` when nothing new is.
fn uncached_range(uncached: u64, len: u64, keep: u64) -> Option<(u64, u64)> {
    const PAGE: u64 = 4096;
    let to = len.saturating_sub(keep) / PAGE * PAGE;
    (to > uncached).then_some((uncached, to))
}

/// Where the pages a read-once span ending at `end` brought into the cache
/// stop being dropped, in a segment `len` bytes long whose last `keep`
/// bytes stay cached (recent history is read from there).
fn read_uncached_to(end: u64, len: u64, keep: u64) -> u64 {
    end.min(len.saturating_sub(keep))
}

/// Tells the kernel that `from..to` of `file` will not be read soon, so
/// that its clean pages leave the page cache. Advice only: a failure
/// changes nothing but the cache, and is not an error.
fn advise_dontneed(file: &File, from: u64, to: u64) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (
        libc::off_t::try_from(from),
        libc::off_t::try_from(to.saturating_sub(from)),
    ) else {
        return;
    };
    if len == 0 {
        return;
    }
    // SAFETY: posix_fadvise reads only its arguments; the descriptor is
    // open for as long as `file` is borrowed.
    let rc =
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        tracing::debug!(errno = rc, "message log: posix_fadvise refused");
    }
}

/// Most bytes between the first and last records' starts that
/// [`Reader::read_many`] reads with one call.
const SPAN: u64 = 1 << 20;

/// How many of `at`, from the first, [`Reader::read_many`] reads with one
/// call: rising offsets in one segment, within [`SPAN`] of the first and
/// [`GAP`] of each other (the last record's body may go past the read; it
/// is then read on its own). At least one.
fn run_len(at: &[Position]) -> usize {
    let Some(first) = at.first() else {
        return 0;
    };
    at.iter()
        .zip(at.iter().skip(1))
        .take_while(|(a, b)| {
            b.segment == first.segment
                && b.offset > a.offset
                && b.offset - a.offset <= GAP
                && b.offset - first.offset < SPAN
        })
        .count()
        + 1
}

/// Most bytes from one record's start to the next's that a span reads
/// through: farther apart (a history page of a quiet topic, between a busy
/// one's messages), each is read on its own rather than the bytes between.
const GAP: u64 = 64 << 10;

/// Bytes read past the last record's head in a span: a message's record
/// is a few hundred; a longer one is read on its own.
const SPAN_TAIL: usize = 4096;

/// The record at `at` from `bytes`, which hold its segment from `from`:
/// `None` when it is not wholly in them or does not check (it is then read
/// on its own, which says why).
fn record_in(bytes: &[u8], from: u64, at: Position) -> Option<Stored> {
    let start = usize::try_from(at.offset.checked_sub(from)?).ok()?;
    if at.offset < HEADER_LEN {
        return None;
    }
    let head: &[u8; RECORD_HEAD] = bytes
        .get(start..start.checked_add(RECORD_HEAD)?)?
        .try_into()
        .ok()?;
    let len = body_len(head)?;
    let body_at = start + RECORD_HEAD;
    let body = bytes.get(body_at..body_at.checked_add(len)?)?;
    decode(head, body.to_vec(), at)
}

/// The body's length from a record's head, if within the limit.
fn body_len(head: &[u8; RECORD_HEAD]) -> Option<usize> {
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
    (len <= MAX_BODY).then_some(len)
}

/// The record from its head and body, if its CRC matches.
fn decode(head: &[u8; RECORD_HEAD], body: Vec<u8>, at: Position) -> Option<Stored> {
    let [_, _, _, _, c0, c1, c2, c3, rest @ ..] = head;
    if checksum(rest, &body) != u32::from_le_bytes([*c0, *c1, *c2, *c3]) {
        return None;
    }
    let (seq, hlc) = rest.split_at(8);
    let next = Position {
        segment: at.segment,
        offset: at.offset + (RECORD_HEAD + body.len()) as u64,
    };
    Some(Stored {
        at,
        next,
        seq: u64::from_le_bytes(seq.try_into().ok()?),
        hlc: u64::from_le_bytes(hlc.try_into().ok()?),
        body,
    })
}

/// A record's CRC: of its seq and clock (`seq_hlc`, as stored) and its
/// body. ([`Group`] takes the same over the bytes as they lie together.)
fn checksum(seq_hlc: &[u8], body: &[u8]) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(seq_hlc);
    crc.update(body);
    crc.finalize()
}

/// The header this build writes for `segment`.
fn header(segment: u64) -> [u8; HEADER_LEN as usize] {
    header_of(VERSION, segment)
}

fn header_of(version: u32, segment: u64) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&version.to_le_bytes());
    h[16..].copy_from_slice(&segment.to_le_bytes());
    h
}

/// Checks a segment's header; its format version.
fn check_header(file: &File, path: &Path, segment: u64) -> Result<u32, Error> {
    let mut h = [0u8; HEADER_LEN as usize];
    let corrupt = |why| Error::Corrupt {
        path: path.to_path_buf(),
        offset: 0,
        why,
    };
    file.read_exact_at(&mut h, 0)
        .map_err(|e| eof_is(e, path, corrupt("a header cut short")))?;
    if &h[..8] != MAGIC {
        return Err(corrupt("not a tenthbit message log segment"));
    }
    let version = [VERSION, VERSION_UNPADDED]
        .into_iter()
        .find(|&v| h[8..16] == header_of(v, segment)[8..16])
        .ok_or_else(|| corrupt("a segment format this build does not read"))?;
    if h[16..] != segment.to_le_bytes() {
        return Err(corrupt("a segment whose header names another number"));
    }
    Ok(version)
}

/// Whether a segment that is exactly a header long holds a header's
/// write lost in a crash: each byte either the one [`create`] wrote or
/// zero, and not all of them written.
fn header_torn(file: &File, path: &Path, segment: u64) -> Result<bool, Error> {
    let mut h = [0u8; HEADER_LEN as usize];
    file.read_exact_at(&mut h, 0).map_err(io_at(path))?;
    // Either format's: an earlier build may have been creating it.
    Ok([VERSION, VERSION_UNPADDED].into_iter().any(|v| {
        let want = header_of(v, segment);
        h != want && h.iter().zip(&want).all(|(&b, &w)| b == 0 || b == w)
    }))
}

/// Creates segment `segment` with its header, synced along with the
/// directory entry. Returns the file and its length.
fn create(dir: &Path, segment: u64) -> Result<(File, u64), Error> {
    let path = segment_path(dir, segment);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_at(&path))?;
    file.write_all_at(&header(segment), 0)
        .and_then(|()| file.sync_data())
        .map_err(io_at(&path))?;
    sync_dir(dir)?;
    Ok((file, HEADER_LEN))
}

/// Segment `segment` opened again, for the sync thread: see
/// [`Appended::file`].
fn open_for_sync(dir: &Path, segment: u64) -> Result<Arc<File>, Error> {
    open_existing(dir, segment).map(Arc::new)
}

/// Segment `segment`, which exists, opened to read and write.
fn open_existing(dir: &Path, segment: u64) -> Result<File, Error> {
    let path = segment_path(dir, segment);
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(io_at(&path))
}

/// The lock file's name in a log directory.
const LOCK_FILE: &str = "lock";

/// Takes the directory's writer lock (`flock`), without waiting.
fn lock(dir: &Path) -> Result<File, Error> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_at(&path))?;
    // SAFETY: flock on a descriptor this function owns and keeps open; it
    // touches no memory. (std's `File::try_lock` needs Rust 1.89.)
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(file);
    }
    let e = io::Error::last_os_error();
    Err(if e.kind() == io::ErrorKind::WouldBlock {
        Error::InUse {
            path: dir.to_path_buf(),
        }
    } else {
        Error::Io { path, source: e }
    })
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_at(dir))
}

/// The segments in `dir`, oldest first. Other files are left alone.
fn list(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_at(dir))? {
        let entry = entry.map_err(io_at(dir))?;
        let name = entry.file_name();
        let Some(number) = name
            .to_str()
            .and_then(|n| n.strip_suffix(SUFFIX))
            .filter(|n| n.len() == 20 && n.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|n| n.parse().ok())
        else {
            continue;
        };
        segments.push(number);
    }
    segments.sort_unstable();
    Ok(segments)
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SUFFIX}"))
}

/// An end-of-file error as `short`; any other as the system's error.
fn eof_is(e: io::Error, path: &Path, short: Error) -> Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        short
    } else {
        Error::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, body: &[u8]) -> Record<'_> {
        Record {
            seq,
            hlc: seq << 16,
            body,
        }
    }

    fn bodies(reader: &Reader, from: Position, upto: Position) -> Vec<(u64, Vec<u8>)> {
        reader
            .scan(from, upto)
            .expect("scan")
            .map(|r| r.map(|r| (r.seq, r.body)))
            .collect::<Result<_, _>>()
            .expect("records")
    }

    fn start() -> Position {
        Position {
            segment: 1,
            offset: HEADER_LEN,
        }
    }

    #[test]
    fn records_read_back_by_position_and_in_order() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        assert_eq!(w.end(), start());
        let a = w
            .append([rec(1, b"one"), rec(2, b""), rec(3, b"three")])
            .expect("append");
        let b = w.append([rec(4, b"four")]).expect("append");
        assert_eq!(a.positions.first(), Some(&start()));
        assert_eq!(b.positions, vec![a.end]);
        let r = Reader::new(dir.path());
        let third = r.read(a.positions[2]).expect("read");
        assert_eq!(
            (third.seq, third.hlc, &third.body[..]),
            (3, 3 << 16, &b"three"[..])
        );
        assert_eq!(third.next, a.end);
        assert_eq!(
            bodies(&r, start(), b.end),
            vec![
                (1, b"one".to_vec()),
                (2, vec![]),
                (3, b"three".to_vec()),
                (4, b"four".to_vec())
            ]
        );
        // From the middle, and stopping short of the end.
        assert_eq!(bodies(&r, a.positions[1], a.end).len(), 2);
    }

    /// A group built in place reads back as written: its records in
    /// order, and, once appended, from the segment with their checksums.
    /// A body over the limit is taken back out, and the group is as it
    /// was; a cleared group keeps its room.
    #[test]
    fn a_group_is_written_as_built_and_refuses_a_body_over_the_limit() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let mut g = Group::default();
        g.push(1, 10, |out| out.extend_from_slice(b"one"))
            .expect("one");
        g.push(2, 20, |_| {}).expect("empty");
        let before = g.byte_len();
        let over = g.push(3, 30, |out| out.resize(out.len() + MAX_BODY + 1, b'x'));
        assert!(matches!(over, Err(Error::TooLarge { len }) if len == MAX_BODY + 1));
        assert_eq!(g.byte_len(), before, "taken back out");
        g.push(3, 30, |out| out.extend_from_slice(b"three"))
            .expect("three");
        let read: Vec<(u64, u64, Vec<u8>)> = g
            .records()
            .map(|r| (r.seq, r.hlc, r.body.to_vec()))
            .collect();
        let want = vec![
            (1, 10, b"one".to_vec()),
            (2, 20, vec![]),
            (3, 30, b"three".to_vec()),
        ];
        assert_eq!(read, want);
        assert_eq!(g.byte_len(), 3 * RECORD_HEAD + 8);

        let a = w.append_group(&mut g).expect("append");
        let r = Reader::new(dir.path());
        let stored: Vec<(u64, u64, Vec<u8>)> = a
            .positions
            .iter()
            .map(|&at| r.read(at).expect("read, checksum and all"))
            .map(|s| (s.seq, s.hlc, s.body))
            .collect();
        assert_eq!(stored, want);

        let room = g.bytes.capacity();
        g.clear();
        assert!(g.is_empty() && g.byte_len() == 0);
        assert_eq!(g.bytes.capacity(), room);
    }

    #[test]
    fn segments_rotate_between_groups_and_a_scan_crosses_them() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 200).expect("open").writer;
        let body = [7u8; 60];
        let mut ends = Vec::new();
        for seq in 1..=6 {
            // Two records of 84 bytes: a group never splits, so each
            // segment takes one group (24 + 168 bytes) and no more.
            let a = w.append([rec(seq * 2 - 1, &body), rec(seq * 2, &body)]);
            let a = a.expect("append");
            assert_eq!(a.positions[0].segment, a.positions[1].segment);
            ends.push(a.end);
        }
        let r = Reader::new(dir.path());
        assert_eq!(r.segments().expect("list"), vec![1, 2, 3, 4, 5, 6]);
        let seqs: Vec<u64> = bodies(&r, start(), w.end()).iter().map(|b| b.0).collect();
        assert_eq!(seqs, (1..=12).collect::<Vec<_>>());
        // Retention drops whole segments; what is left still scans.
        assert_eq!(r.remove_before(4).expect("remove"), 3);
        assert_eq!(r.segments().expect("list"), vec![4, 5, 6]);
        let from = Position {
            segment: 4,
            offset: HEADER_LEN,
        };
        let seqs: Vec<u64> = bodies(&r, from, w.end()).iter().map(|b| b.0).collect();
        assert_eq!(seqs, (7..=12).collect::<Vec<_>>());
        // A reopened writer carries on in the last segment.
        drop(w);
        let opened = Writer::open(dir.path(), 200).expect("reopen");
        assert_eq!((opened.writer.end(), opened.cut), (ends[5], 0));
        assert_eq!(opened.last, Some((12, 12 << 16)));
    }

    /// Cuts `bytes` off the end of the last segment, as a crash in the
    /// middle of a write would leave it.
    fn tear(dir: &Path, bytes: u64) {
        let last = *list(dir).expect("list").last().expect("a segment");
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir, last))
            .expect("open");
        let len = f.metadata().expect("len").len();
        f.set_len(len - bytes).expect("tear");
    }

    #[test]
    fn a_torn_tail_is_cut_at_open_and_the_log_goes_on_from_there() {
        for torn in [1, 10, 24, 30] {
            let dir = tempfile::tempdir().expect("dir");
            let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
            let whole = w.append([rec(1, b"kept"), rec(2, b"kept too")]).expect("a");
            w.append([rec(3, b"torn by the crash")]).expect("b");
            drop(w);
            tear(dir.path(), torn);
            let opened = Writer::open(dir.path(), 1 << 20).expect("reopen");
            assert_eq!(opened.writer.end(), whole.end, "torn {torn}");
            assert_eq!(opened.last, Some((2, 2 << 16)), "torn {torn}");
            assert_eq!(opened.cut, 24 + 17 - torn, "torn {torn}");
            let on_disk = fs::metadata(segment_path(dir.path(), 1))
                .expect("len")
                .len();
            assert_eq!(
                on_disk, whole.end.offset,
                "the tail is cut on disk, torn {torn}"
            );
            let mut w = opened.writer;
            let next = w.append([rec(3, b"written again")]).expect("c");
            assert_eq!(next.positions, vec![whole.end]);
            let r = Reader::new(dir.path());
            let seqs: Vec<u64> = bodies(&r, start(), w.end()).iter().map(|b| b.0).collect();
            assert_eq!(seqs, vec![1, 2, 3], "torn {torn}");
        }
    }

    #[test]
    fn a_damaged_record_in_the_last_segment_is_cut_with_all_after_it() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let a = w.append([rec(1, b"good")]).expect("a");
        let b = w
            .append([rec(2, b"flipped"), rec(3, b"after it")])
            .expect("b");
        drop(w);
        let path = segment_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        // One bit of the second record's body.
        let at = b.positions[0].offset + RECORD_HEAD as u64 + 2;
        f.write_all_at(b"F", at).expect("flip");
        // Read by position before the open cuts it: damage, not a panic.
        let err = Reader::new(dir.path()).read(b.positions[0]).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        let opened = Writer::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(opened.writer.end(), a.end);
        assert_eq!(opened.cut, b.end.offset - a.end.offset);
    }

    #[test]
    fn a_damaged_length_is_cut_not_allocated() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let a = w.append([rec(1, b"good")]).expect("a");
        let b = w.append([rec(2, b"huge")]).expect("b");
        drop(w);
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .expect("open");
        f.write_all_at(&u32::MAX.to_le_bytes(), b.positions[0].offset)
            .expect("damage");
        let err = Reader::new(dir.path()).read(b.positions[0]).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { why, .. } if why.contains("limit")),
            "{err}"
        );
        assert_eq!(
            Writer::open(dir.path(), 1 << 20)
                .expect("reopen")
                .writer
                .end(),
            a.end
        );
    }

    #[test]
    fn damage_outside_the_last_segment_is_reported_not_cut() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 100).expect("open").writer;
        let a = w.append([rec(1, &[1u8; 80])]).expect("a");
        w.append([rec(2, &[2u8; 80])]).expect("b");
        assert_eq!(list(dir.path()).expect("list"), vec![1, 2]);
        let f = OpenOptions::new()
            .write(true)
            .open(segment_path(dir.path(), 1))
            .expect("open");
        f.write_all_at(&[0], a.positions[0].offset + 30)
            .expect("damage");
        let end = w.end();
        drop(w);
        // The open checks the last segment only, and leaves segment 1 be.
        let opened = Writer::open(dir.path(), 100).expect("reopen");
        assert_eq!((opened.writer.end(), opened.cut), (end, 0));
        let r = Reader::new(dir.path());
        let mut scan = r.scan(start(), end).expect("scan");
        let first = scan.next().expect("an item");
        assert!(matches!(first, Err(Error::Corrupt { .. })), "{first:?}");
        assert!(scan.next().is_none(), "a scan stops at damage");
    }

    #[test]
    fn a_segment_created_but_never_written_is_started_again() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 100).expect("open").writer;
        w.append([rec(1, &[1u8; 80])]).expect("a");
        drop(w);
        // The crash came between the file's creation and its header.
        File::create(segment_path(dir.path(), 2)).expect("create");
        let opened = Writer::open(dir.path(), 100).expect("reopen");
        // The log's last record is in the segment before.
        assert_eq!(opened.last, Some((1, 1 << 16)));
        carries_on_in_segment_two(dir.path(), opened.writer);
    }

    /// The writer appends its next record at segment 2's start, and the
    /// log reads back two records.
    fn carries_on_in_segment_two(dir: &Path, mut w: Writer) -> Writer {
        let b = w.append([rec(2, b"x")]).expect("b");
        assert_eq!(
            b.positions,
            vec![Position {
                segment: 2,
                offset: HEADER_LEN
            }]
        );
        let r = Reader::new(dir);
        assert_eq!(bodies(&r, start(), w.end()).len(), 2);
        w
    }

    #[test]
    fn a_second_writer_of_the_directory_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let first = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let err = Writer::open(dir.path(), 1 << 20).unwrap_err();
        assert!(matches!(err, Error::InUse { .. }), "{err}");
        // Given back with the writer.
        drop(first);
        Writer::open(dir.path(), 1 << 20).expect("open again");
    }

    #[test]
    fn a_file_that_is_not_a_segment_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        fs::write(segment_path(dir.path(), 1), [b'x'; 64]).expect("write");
        let err = Writer::open(dir.path(), 100).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { why, .. } if why.contains("not a tenthbit")),
            "{err}"
        );
        // Another segment's header under this number.
        fs::write(segment_path(dir.path(), 1), header(7)).expect("write");
        let err = Writer::open(dir.path(), 100).unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { why, .. } if why.contains("another number")),
            "{err}"
        );
        // Unrelated files in the directory are not segments.
        let other = tempfile::tempdir().expect("dir");
        fs::write(other.path().join("notes.txt"), "x").expect("write");
        fs::write(other.path().join("1.seg"), "x").expect("write");
        let opened = Writer::open(other.path(), 100).expect("open");
        assert_eq!(opened.writer.end(), start());
    }

    #[test]
    fn a_body_over_the_limit_is_refused_and_nothing_is_written() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 30).expect("open").writer;
        let huge = vec![0u8; MAX_BODY + 1];
        let err = w.append([rec(1, b"fine"), rec(2, &huge)]).unwrap_err();
        assert!(matches!(err, Error::TooLarge { len } if len == MAX_BODY + 1));
        assert_eq!(w.end(), start());
        let at_limit = vec![0u8; MAX_BODY];
        let a = w.append([rec(1, &at_limit)]).expect("at the limit");
        let back = Reader::new(dir.path()).read(a.positions[0]).expect("read");
        assert_eq!(back.body.len(), MAX_BODY);
    }

    #[test]
    fn a_scan_stops_at_its_bound_while_the_writer_goes_on() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let a = w.append([rec(1, b"a"), rec(2, b"b")]).expect("a");
        let r = Reader::new(dir.path());
        let mut scan = r.scan(start(), a.end).expect("scan");
        assert_eq!(scan.next().expect("one").expect("ok").seq, 1);
        // Written after the scan began, past its bound.
        w.append([rec(3, b"c")]).expect("b");
        assert_eq!(scan.next().expect("two").expect("ok").seq, 2);
        assert!(scan.next().is_none());
    }

    #[test]
    fn a_segment_whose_header_was_lost_in_a_crash_is_started_again() {
        // The crash came after the header's write but before its sync: the
        // file system kept the new size and not the bytes (XFS and others
        // show zeros there). Nothing was appended to it: the header is
        // synced before the first record is written.
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 100).expect("open").writer;
        w.append([rec(1, &[1u8; 80])]).expect("a");
        drop(w);
        fs::write(segment_path(dir.path(), 2), [0u8; HEADER_LEN as usize]).expect("zeros");
        let w = Writer::open(dir.path(), 100).expect("reopen").writer;
        let w = carries_on_in_segment_two(dir.path(), w);
        // Half of it there: the same.
        drop(w);
        let mut half = header(3);
        half[12..].fill(0);
        fs::write(segment_path(dir.path(), 3), half).expect("half");
        let opened = Writer::open(dir.path(), 100).expect("reopen");
        assert_eq!(
            opened.writer.end(),
            Position {
                segment: 3,
                offset: HEADER_LEN
            }
        );
        // A header-sized file holding something else is still refused.
        drop(opened);
        fs::write(segment_path(dir.path(), 4), [b'x'; HEADER_LEN as usize]).expect("x");
        assert!(matches!(
            Writer::open(dir.path(), 100),
            Err(Error::Corrupt { .. })
        ));
    }

    #[test]
    fn retention_never_removes_the_segment_being_written() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 100).expect("open").writer;
        w.append([rec(1, &[1u8; 80])]).expect("a");
        w.append([rec(2, &[2u8; 80])]).expect("b");
        let r = Reader::new(dir.path());
        assert_eq!(r.segments().expect("list"), vec![1, 2]);
        // A bound past the writer's segment (every message is old): the
        // writer's file would be unlinked under it, and what it goes on
        // writing lost.
        assert_eq!(r.remove_before(u64::MAX).expect("remove"), 1);
        assert_eq!(r.segments().expect("list"), vec![2]);
        let end = w.end();
        drop(w);
        let opened = Writer::open(dir.path(), 100).expect("reopen");
        assert_eq!(opened.writer.end(), end);
        let from = Position {
            segment: 2,
            offset: HEADER_LEN,
        };
        assert_eq!(bodies(&r, from, end).len(), 1);
    }

    #[test]
    fn an_old_segment_rolls_only_when_it_holds_a_record() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        // Empty: nothing to roll, however old.
        assert!(!w.roll_if_older(Duration::ZERO).expect("roll"));
        let a = w.append([rec(1, b"one")]).expect("a");
        // Young enough: stays.
        assert!(!w.roll_if_older(Duration::from_secs(3600)).expect("roll"));
        assert!(w.roll_if_older(Duration::ZERO).expect("roll"));
        assert_eq!(
            w.end(),
            Position {
                segment: 2,
                offset: HEADER_LEN
            }
        );
        // The new segment is empty again, and the log reads on across both.
        assert!(!w.roll_if_older(Duration::ZERO).expect("roll"));
        let b = w.append([rec(2, b"two")]).expect("b");
        let r = Reader::new(dir.path());
        let seqs: Vec<u64> = bodies(&r, start(), b.end).iter().map(|b| b.0).collect();
        assert_eq!(seqs, [1, 2]);
        assert_eq!(a.positions[0].segment, 1);
        assert_eq!(b.positions[0].segment, 2);
    }

    #[test]
    fn only_segments_wholly_before_the_index_end_are_removed() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let a = w.append([rec(1, b"one"), rec(2, b"two")]).expect("a");
        w.roll_if_older(Duration::ZERO).expect("roll");
        let b = w.append([rec(3, b"three")]).expect("b");
        w.roll_if_older(Duration::ZERO).expect("roll");
        let r = Reader::new(dir.path());
        let writing = w.end().segment;
        let sweep = |end| match r.indexed_before(end, writing).expect("bound") {
            Some(bound) => r.remove_before(bound).expect("remove"),
            None => 0,
        };
        assert_eq!(r.segments().expect("list"), vec![1, 2, 3]);
        // Indexed up to the middle of segment 1: nothing goes.
        assert_eq!(sweep(a.positions[1]), 0);
        // Up to the end of segment 1, which the writer has left: it goes.
        assert_eq!(sweep(a.end), 1);
        assert_eq!(r.segments().expect("list"), vec![2, 3]);
        // Past all of segment 2: it goes, never the writer's (empty) one.
        assert_eq!(sweep(b.end), 1);
        assert_eq!(r.segments().expect("list"), vec![3]);
        assert_eq!(r.indexed_before(w.end(), writing).expect("bound"), None);
        // Reopened, the log carries on where it was.
        let end = w.end();
        drop(w);
        let opened = Writer::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(opened.writer.end(), end);
    }

    #[test]
    fn a_read_racing_retention_leaves_no_deleted_segment_open() {
        // A read that opened the segment between retention forgetting it
        // and unlinking it would keep the deleted file open in the cache,
        // its disk space never given back.
        for round in 0..200 {
            let dir = tempfile::tempdir().expect("dir");
            let mut w = Writer::open(dir.path(), 100).expect("open").writer;
            let a = w.append([rec(1, &[1u8; 80])]).expect("a");
            w.append([rec(2, &[2u8; 80])]).expect("b");
            let r = Reader::new(dir.path());
            let stop = std::sync::atomic::AtomicBool::new(false);
            std::thread::scope(|s| {
                s.spawn(|| {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        // Not found once it is gone: the race is the point.
                        let _ = r.read(a.positions[0]);
                    }
                });
                // Let the reader get going (and cache segment 1).
                while !r.files.lock().expect("lock").contains_key(&1) {
                    std::thread::yield_now();
                }
                assert_eq!(r.remove_before(2).expect("remove"), 1);
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            });
            let cached: Vec<u64> = r.files.lock().expect("lock").keys().copied().collect();
            assert!(!cached.contains(&1), "round {round}: {cached:?}");
        }
    }

    #[test]
    fn the_file_to_sync_is_not_the_writers_own_open_file() {
        // Linux reports a failed write-back once to each open file (not
        // each descriptor): were the sync thread's file the writer's, a
        // rotation's sync could take the error and the sync thread's then
        // succeed, answering for records that are not on disk. An open
        // file's offset is its own, which tells two apart.
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 100).expect("open").writer;
        for seq in 1..=2 {
            let a = w.append([rec(seq, &[1u8; 80])]).expect("append");
            (&*a.file).seek(SeekFrom::Start(77)).expect("seek");
            assert_eq!(
                (&w.file).stream_position().expect("offset"),
                0,
                "segment {seq}"
            );
            a.file.sync_data().expect("the sync thread's sync");
        }
    }

    #[test]
    fn the_last_segment_number_is_refused_not_overflowed() {
        // A file named with the largest number (copied in, or renamed by
        // hand): rotating past it is an error, not an overflow.
        let dir = tempfile::tempdir().expect("dir");
        let (file, _) = create(dir.path(), u64::MAX).expect("create");
        drop(file);
        let mut w = Writer::open(dir.path(), 100).expect("open").writer;
        w.append([rec(1, &[1u8; 80])]).expect("a");
        let err = w.append([rec(2, &[2u8; 80])]).unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");
        assert_eq!(list(dir.path()).expect("list"), vec![u64::MAX]);
    }

    #[test]
    fn the_readers_open_files_are_bounded() {
        // One open file per segment ever read would grow with the history
        // kept, into the descriptors the daemon's connections need.
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 30).expect("open").writer;
        let mut positions = Vec::new();
        for seq in 0..(OPEN_SEGMENTS as u64 + 10) {
            positions.push(w.append([rec(seq, b"x")]).expect("append").positions[0]);
        }
        let r = Reader::new(dir.path());
        for (seq, &at) in positions.iter().enumerate() {
            assert_eq!(r.read(at).expect("read").seq, seq as u64);
        }
        assert!(r.files.lock().expect("lock").len() <= OPEN_SEGMENTS);
        // The newest reads are the ones cached.
        assert!(r.files.lock().expect("lock").contains_key(&w.end().segment));
    }

    /// A redaction's rewrite: the record keeps its seq, clock and place,
    /// reads back with the new body through the reader's cached file (the
    /// one read before the write), and passes its CRC in a scan, in the
    /// writer's appends after it and in the open's check of the last
    /// segment, which cuts nothing.
    #[test]
    fn a_rewrite_in_the_middle_keeps_the_record_and_the_log_whole() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let a = w
            .append([rec(1, b"one"), rec(2, b"secret text"), rec(3, b"three")])
            .expect("append");
        let at = a.positions[1];
        let r = Reader::new(dir.path());
        assert_eq!(r.read(at).expect("read").body, b"secret text");
        let cached = r.files.lock().expect("lock").get(&1).map(Arc::clone);
        let cached = cached.expect("segment 1 is cached");

        r.rewrite(at, b"[redacted].").expect("rewrite");
        // Still the handle cached before the write: no reopen.
        assert!(Arc::ptr_eq(
            &cached,
            r.files.lock().expect("lock").get(&1).expect("cached")
        ));
        let back = r.read(at).expect("read again");
        assert_eq!(
            (back.seq, back.hlc, &back.body[..], back.next),
            (2, 2 << 16, &b"[redacted]."[..], a.positions[2])
        );
        let want = vec![
            (1, b"one".to_vec()),
            (2, b"[redacted].".to_vec()),
            (3, b"three".to_vec()),
        ];
        assert_eq!(bodies(&r, start(), w.end()), want);
        // A reader with nothing cached reads the same.
        assert_eq!(bodies(&Reader::new(dir.path()), start(), w.end()), want);

        let b = w.append([rec(4, b"four")]).expect("append after");
        assert_eq!(bodies(&r, start(), b.end).len(), 4);
        drop(w);
        let opened = Writer::open(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(
            (opened.writer.end(), opened.cut, opened.last),
            (b.end, 0, Some((4, 4 << 16)))
        );
        let all = bodies(&r, start(), b.end);
        assert_eq!(all.get(1), Some(&(2, b"[redacted].".to_vec())));
        assert_eq!(all.len(), 4);
    }

    #[test]
    fn a_rewrite_of_another_length_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let a = w
            .append([rec(1, b"one"), rec(2, b"secret"), rec(3, b"three")])
            .expect("append");
        let path = segment_path(dir.path(), 1);
        let before = fs::read(&path).expect("bytes");
        let r = Reader::new(dir.path());
        for body in [
            &b""[..],
            b"secre",
            b"secret!",
            b"a much longer body than that",
        ] {
            let err = r.rewrite(a.positions[1], body).unwrap_err();
            assert!(
                matches!(err, Error::Resized { len, stored: 6 } if len == body.len()),
                "{err}"
            );
            assert_eq!(fs::read(&path).expect("bytes"), before, "{body:?}");
        }
        assert_eq!(r.read(a.positions[1]).expect("read").body, b"secret");
    }

    #[test]
    fn a_rewrite_at_a_position_not_a_records_start_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let a = w
            .append([rec(1, b"one"), rec(2, b"secret"), rec(3, b"three")])
            .expect("append");
        let path = segment_path(dir.path(), 1);
        let before = fs::read(&path).expect("bytes");
        let r = Reader::new(dir.path());
        let second = a.positions[1];
        let at = |offset| Position { segment: 1, offset };
        let bad = [
            // Inside the header.
            at(0),
            at(HEADER_LEN - 4),
            // Inside a record: its head, its body.
            at(second.offset + 1),
            at(second.offset + 8),
            at(second.offset + RECORD_HEAD as u64 + 1),
            // At and past the end.
            a.end,
            at(a.end.offset + 100),
        ];
        for pos in bad {
            let err = r.rewrite(pos, b"secret").unwrap_err();
            assert!(
                matches!(&err, Error::Corrupt { offset, .. } if *offset == pos.offset),
                "{pos:?}: {err}"
            );
            assert_eq!(fs::read(&path).expect("bytes"), before, "{pos:?}");
        }
        assert_eq!(r.read(second).expect("read").body, b"secret");
    }

    #[test]
    fn many_records_read_together_read_as_each_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let long = vec![b'l'; SPAN_TAIL * 2];
        let big = vec![b'b'; 4000];
        let a = w
            .append([rec(1, b"one"), rec(2, &long), rec(3, b""), rec(4, b"four")])
            .expect("append");
        // Past one span (1 MiB), and into a second segment.
        let b = w
            .append((5..305).map(|seq| rec(seq, &big)))
            .expect("append");
        let c = w.append([rec(305, b"last")]).expect("append");
        // Records farther apart than a span reads through.
        let gap = vec![b'g'; (GAP * 2) as usize];
        let g = w
            .append([rec(306, b"before"), rec(307, &gap), rec(308, b"after")])
            .expect("append");
        let (first, last) = (b.positions[0], b.positions[b.positions.len() - 1]);
        assert!(last.offset - first.offset > SPAN);
        assert!(first.segment > a.end.segment && c.end.segment > first.segment);
        // The writer dropping its pages from the cache changes no read.
        w.keep_cached(0);
        w.uncache();
        let r = Reader::new(dir.path());
        let inside_a_body = Position {
            segment: 1,
            offset: a.positions[1].offset + RECORD_HEAD as u64 + 8,
        };
        let no_segment = Position {
            segment: 9,
            offset: HEADER_LEN,
        };
        let mut at: Vec<Position> = a.positions.clone();
        at.extend(&b.positions);
        at.extend(&c.positions);
        at.push(g.positions[0]);
        at.push(g.positions[2]);
        // Out of order, repeated, and positions with no record.
        at.push(a.positions[0]);
        at.push(a.positions[0]);
        at.push(inside_a_body);
        at.push(no_segment);
        at.push(g.end);
        at.push(a.positions[3]);
        let each: Vec<String> = at.iter().map(|&p| format!("{:?}", r.read(p))).collect();
        for got in [r.read_many(&at), r.read_once(&at)] {
            assert_eq!(got.len(), at.len());
            let got: Vec<String> = got.iter().map(|g| format!("{g:?}")).collect();
            assert_eq!(got, each);
        }
        assert!(
            each.iter().filter(|e| e.starts_with("Err")).count() == 3,
            "{each:?}"
        );
        assert_eq!(r.read_many(&[]).len(), 0);
        // A read of many finds records in the bytes it read, not by
        // falling back to reading each.
        let bytes = fs::read(segment_path(dir.path(), 1)).expect("bytes");
        for &p in &a.positions {
            assert_eq!(record_in(&bytes, 0, p), Some(r.read(p).expect("read")));
        }
        let tail = bytes.get(100..).expect("tail");
        assert_eq!(
            record_in(tail, 100, a.positions[3]),
            Some(r.read(a.positions[3]).expect("read"))
        );
        assert_eq!(record_in(tail, 100, a.positions[0]), None);
        assert_eq!(
            record_in(&bytes[..bytes.len() - 1], 0, a.positions[3]),
            None
        );
    }

    #[test]
    fn a_span_is_rising_places_in_one_segment_near_each_other() {
        let at = |segment, offset| Position { segment, offset };
        assert_eq!(run_len(&[]), 0);
        assert_eq!(run_len(&[at(1, 24)]), 1);
        assert_eq!(run_len(&[at(1, 24), at(1, 100), at(1, 100 + GAP)]), 3);
        // Too far from the one before, from the first, back, or elsewhere.
        assert_eq!(run_len(&[at(1, 24), at(1, 100), at(1, 101 + GAP)]), 2);
        let far: Vec<Position> = (0..=SPAN / GAP).map(|i| at(1, 24 + i * GAP)).collect();
        assert_eq!(run_len(&far), far.len() - 1);
        assert_eq!(run_len(&[at(1, 100), at(1, 24)]), 1);
        assert_eq!(run_len(&[at(1, 100), at(1, 100)]), 1);
        assert_eq!(run_len(&[at(1, 24), at(2, 24)]), 1);
    }

    #[test]
    fn the_page_cache_keeps_only_the_last_bytes_written() {
        let page = 4096;
        // Nothing yet behind the kept bytes, or all kept.
        assert_eq!(uncached_range(0, 100, 1 << 20), None);
        assert_eq!(uncached_range(0, 10 << 20, u64::MAX), None);
        // Whole pages only; then only what is new.
        assert_eq!(uncached_range(0, 10_000, 0), Some((0, 2 * page)));
        assert_eq!(uncached_range(2 * page, 10_000, 0), None);
        assert_eq!(
            uncached_range(2 * page, 13_000, 0),
            Some((2 * page, 3 * page))
        );
        assert_eq!(
            uncached_range(0, (3 << 20) + 5, 1 << 20),
            Some((0, 2 << 20))
        );
        // A read once keeps what the writer keeps: the segment's end.
        assert_eq!(read_uncached_to(5000, 10 << 20, 1 << 20), 5000);
        assert_eq!(read_uncached_to(10 << 20, 10 << 20, 1 << 20), 9 << 20);
        assert_eq!(read_uncached_to(5000, 6000, 1 << 20), 0);
        assert_eq!(read_uncached_to(5000, 6000, u64::MAX), 0);
        assert_eq!(read_uncached_to(5000, 6000, 0), 5000);
    }

    #[test]
    fn a_rewrite_of_a_damaged_record_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 1 << 20).expect("open").writer;
        let a = w.append([rec(1, b"one"), rec(2, b"secret")]).expect("a");
        let path = segment_path(dir.path(), 1);
        let f = OpenOptions::new().write(true).open(&path).expect("open");
        f.write_all_at(b"S", a.positions[1].offset + RECORD_HEAD as u64)
            .expect("flip");
        let before = fs::read(&path).expect("bytes");
        // Rewritten, it would pass its CRC again and hide the damage.
        let err = Reader::new(dir.path())
            .rewrite(a.positions[1], b"xxxxxx")
            .unwrap_err();
        assert!(
            matches!(err, Error::Corrupt { why, .. } if why.contains("CRC")),
            "{err}"
        );
        assert_eq!(fs::read(&path).expect("bytes"), before);
    }

    /// Records of `n` bodies of `size` bytes from seq `first`: a group of
    /// `n * (size + RECORD_HEAD)` bytes.
    fn sized(first: u64, n: u64, size: usize) -> Vec<(u64, Vec<u8>)> {
        (first..first + n)
            .map(|seq| (seq, vec![(seq % 250) as u8 + 1; size]))
            .collect()
    }

    fn append_all(w: &mut Writer, recs: &[(u64, Vec<u8>)]) -> Appended {
        w.append(recs.iter().map(|(seq, body)| rec(*seq, body)))
            .expect("append")
    }

    #[test]
    fn a_large_group_starts_past_a_record_heads_room_before_a_boundary() {
        assert_eq!(block_start(4096), 4096);
        assert_eq!(block_start(4072), 4096, "a head's room left: padding");
        assert_eq!(block_start(4073), 8192, "less: the boundary after");
        assert_eq!(block_start(4095), 8192);
        assert_eq!(block_start(HEADER_LEN), 4096);
    }

    /// Large groups start at block boundaries between small ones; every
    /// record reads back by position and in order, across the padding,
    /// before and after the log is opened again; the zeros that fill a
    /// large group's last block are not a cut.
    #[test]
    fn large_groups_are_padded_to_blocks_and_read_back_with_the_small() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 64 << 20).expect("open").writer;
        let small = sized(1, 3, 10);
        // 70 records of 1,000 bytes: over DIRECT_AT_LEAST, not a block.
        let large = sized(4, 70, 1000);
        let small2 = sized(74, 2, 7);
        let large2 = sized(76, 100, 700);
        let a = append_all(&mut w, &small);
        let b = append_all(&mut w, &large);
        let c = append_all(&mut w, &small2);
        let d = append_all(&mut w, &large2);
        assert_eq!(b.positions[0].offset, 4096, "past the padding");
        assert_eq!(c.positions[0], b.end, "a small group follows at once");
        assert_eq!(d.positions[0].offset, block_start(c.end.offset));
        assert_ne!(d.positions[0].offset, c.end.offset);
        let all: Vec<_> = [&small, &large, &small2, &large2]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        let r = Reader::new(dir.path());
        assert_eq!(bodies(&r, start(), d.end), all);
        // A scan that stops at a large group's first record, and one that
        // starts at the end of the record before its padding.
        assert_eq!(bodies(&r, start(), d.positions[0]).len(), 75);
        assert_eq!(bodies(&r, c.end, d.end).len(), 100);
        let positions: Vec<_> = [a, b, c].into_iter().flat_map(|x| x.positions).collect();
        assert_eq!(
            r.read_many(&positions)
                .into_iter()
                .map(|x| x.map(|s| (s.seq, s.body)))
                .collect::<Result<Vec<_>, _>>()
                .expect("read"),
            all[..75]
        );
        drop(w);
        let on_disk = fs::metadata(segment_path(dir.path(), 1))
            .expect("meta")
            .len();
        assert_eq!(on_disk, direct_io::padded_len(d.end.offset as usize) as u64);
        let opened = Writer::open(dir.path(), 64 << 20).expect("reopen");
        assert_eq!((opened.writer.end(), opened.cut), (d.end, 0));
        assert_eq!(opened.last, Some((175, 175 << 16)));
        let mut w = opened.writer;
        let e = append_all(&mut w, &sized(176, 1, 5));
        assert_eq!(e.positions[0], d.end, "over the zeros of the last block");
        assert_eq!(bodies(&r, start(), e.end).len(), 176);
    }

    /// A large group torn by a crash (its blocks never written: zeros)
    /// or padding that is not zeros is cut where the padding began.
    #[test]
    fn a_torn_large_group_is_cut_where_its_padding_began() {
        for damage in ["never written", "padding not zeros"] {
            let dir = tempfile::tempdir().expect("dir");
            let mut w = Writer::open(dir.path(), 64 << 20).expect("open").writer;
            let a = append_all(&mut w, &sized(1, 2, 10));
            let b = append_all(&mut w, &sized(3, 70, 1000));
            drop(w);
            let path = segment_path(dir.path(), 1);
            let file = OpenOptions::new().write(true).open(&path).expect("open");
            match damage {
                "never written" => {
                    file.set_len(a.end.offset).expect("cut");
                    file.set_len(b.end.offset).expect("zeros");
                }
                _ => file.write_all_at(&[9], a.end.offset + 100).expect("write"),
            }
            drop(file);
            let opened = Writer::open(dir.path(), 64 << 20).expect("reopen");
            assert_eq!(opened.writer.end(), a.end, "{damage}");
            assert_eq!(opened.last, Some((2, 2 << 16)), "{damage}");
            assert!(opened.cut > 0, "{damage}");
            let r = Reader::new(dir.path());
            assert_eq!(bodies(&r, start(), a.end).len(), 2, "{damage}");
        }
    }

    /// A version 1 segment (an earlier build's) is read and continued
    /// without padding; the next segment is version 2.
    #[test]
    fn a_version_one_segment_is_continued_without_padding() {
        let dir = tempfile::tempdir().expect("dir");
        let mut w = Writer::open(dir.path(), 64 << 20).expect("open").writer;
        let a = append_all(&mut w, &sized(1, 2, 10));
        drop(w);
        let path = segment_path(dir.path(), 1);
        let file = OpenOptions::new().write(true).open(&path).expect("open");
        file.write_all_at(&header_of(VERSION_UNPADDED, 1), 0)
            .expect("old header");
        drop(file);
        let mut w = Writer::open(dir.path(), 100_000).expect("reopen").writer;
        assert!(!w.writes_directly());
        let b = append_all(&mut w, &sized(3, 70, 1000));
        assert_eq!(b.positions[0], a.end, "no padding in version 1");
        // Past 100,000 bytes: the next group goes to a new segment.
        let c = append_all(&mut w, &sized(73, 70, 1000));
        assert_eq!(c.positions[0].segment, 2);
        assert_eq!(c.positions[0].offset, 4096, "padded in version 2");
        let r = Reader::new(dir.path());
        assert_eq!(bodies(&r, start(), c.end).len(), 142);
        let check = |segment| {
            let f = File::open(segment_path(dir.path(), segment)).expect("open");
            check_header(&f, &segment_path(dir.path(), segment), segment).expect("header")
        };
        assert_eq!((check(1), check(2)), (VERSION_UNPADDED, VERSION));
    }
}
