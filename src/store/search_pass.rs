//! The store thread's side of search behind the message log's index
//! (`search.rs`, "behind the message log"): runs of the pass when the
//! thread has nothing else queued and the index has been quiet a moment,
//! or keeps a steady load's pace, or the pass is far behind and the
//! machine has a CPU to spare; and one before each queued message while a
//! search waits for the pass.
//!
//! Kept messages are relayed as they are kept, and a search waits for the
//! pass anyway: during a burst, the pass's tokenizing would take the CPU
//! the relays need (on one core, a third of the store's time with history
//! on), so it waits for the burst to end, or for a search. A steady load
//! is not a burst: its small transactions keep the index busy, but the
//! pass keeps pace with them ([`PACED_BELOW`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::Db;
use super::cpu_room::CpuRoom;
use super::message_index::Indexed;

/// Messages one run of the pass indexes at most: a few milliseconds, so
/// work queued meanwhile waits no longer than that.
const RUN: usize = 1024;

/// How long the index must have had nothing to do before the pass runs.
const QUIET: Duration = Duration::from_millis(50);

/// Records in one of the index's transactions below which the pass keeps
/// pace with it: it owes as many, and runs once it owes a run ([`RUN`])
/// and the store thread has nothing queued. A steady load keeps the index busy
/// (a transaction every few milliseconds, never [`QUIET`] for long) with
/// small transactions (tens to hundreds of records at 4,000 to 40,000
/// messages a second), and the pass had waited until it was
/// [`BEHIND_AT_MOST`] behind, each search then waiting for it to catch up;
/// a burst's transactions hold thousands (about 6,000 in chatbench's pairs
/// with history), and it waits them out as before.
///
/// Whole runs, not one per transaction: a run has a cost of its own (its
/// transaction, the queries that find what is behind, and FTS5's segment,
/// merged again later), and runs of a few hundred messages at a steady
/// 10,000 a second cost about three times what whole ones do per message.
/// A search then waits for at most a run.
const PACED_BELOW: usize = 1024;

/// Messages behind past which the pass runs whenever the store thread has
/// nothing queued and the machine has a CPU to spare ([`CpuRoom`]), even
/// while the index is busy: about three seconds of the pass's work (it
/// indexed 300,000–390,000 messages a second after a burst of chatbench's
/// pairs with history; bench/README.md, twenty-fifth round). On a machine
/// whose cores a burst keeps busy, the pass waits for the burst to end: on
/// one core it had taken a fifth of the server's CPU from a burst's relays
/// (bench/README.md, twenty-seventh round). It bounds nothing a search can
/// count on: a burst that keeps the store thread busy leaves the pass
/// further behind (8 M messages at about 1 M a second left it all 8 M
/// behind), and a search then waits for it to catch up (bench/README.md,
/// twenty-sixth round). A steady load's small transactions no longer leave
/// it this far behind ([`PACED_BELOW`]).
const BEHIND_AT_MOST: u64 = 1 << 20;

/// Where the pass stands, and who waits for it.
#[derive(Debug)]
pub(super) struct SearchPass {
    /// The message origin's seq through which search entries are written
    /// (or given up on, after a failure: searches must not wait for a
    /// disk to be fixed).
    searched: Arc<Indexed>,
    /// How far the message log's index has come (reached even by a failed
    /// transaction: see `message_index::Indexer::index`).
    indexed: Arc<Indexed>,
    /// The highest seq a search waits for.
    wanted: Arc<AtomicU64>,
    /// Nothing is behind (until more is indexed, or a failed run is due
    /// again).
    done: bool,
    /// The last run failed.
    failed: bool,
    /// Messages passed since the pass was last done, and when the first
    /// of those runs began: a long catch-up is logged when it ends.
    passed: usize,
    since: Option<Instant>,
    /// When messages were last indexed.
    indexed_at: Option<Instant>,
    /// Messages the pass owes small transactions of the index
    /// ([`PACED_BELOW`]).
    owed: usize,
    /// Whether a far-behind run would take a CPU others need.
    room: CpuRoom,
}

impl SearchPass {
    /// Reports progress to `searched`; searches ask for runs through
    /// `wanted`; `indexed` is the message log's index's progress.
    pub(super) fn new(
        searched: Arc<Indexed>,
        indexed: Arc<Indexed>,
        wanted: Arc<AtomicU64>,
    ) -> Self {
        Self {
            searched,
            indexed,
            wanted,
            done: false,
            failed: false,
            passed: 0,
            since: None,
            indexed_at: None,
            owed: 0,
            room: CpuRoom::new(),
        }
    }

    /// Messages were indexed: the pass may have work.
    pub(super) fn more(&mut self) {
        self.done = false;
        self.indexed_at = Some(Instant::now());
    }

    /// The index committed a transaction of `records`: the pass may have
    /// work, and owes as many when the transaction was small
    /// ([`PACED_BELOW`]).
    pub(super) fn committed(&mut self, records: usize) {
        self.more();
        if records < PACED_BELOW {
            self.owed = self.owed.saturating_add(records).min(RUN);
        }
    }

    /// A tidy tick: a failed run is due again.
    pub(super) fn retry(&mut self) {
        if self.failed {
            self.done = false;
        }
    }

    /// Whether the pass may have work.
    pub(super) fn behind(&self) -> bool {
        !self.done
    }

    /// Whether the pass should run now, the store thread having nothing
    /// else queued: it is behind, and a search waits, or the index has
    /// been quiet for [`QUIET`], or the pass owes small transactions of
    /// the index a run ([`PACED_BELOW`]), or it is [`BEHIND_AT_MOST`]
    /// behind and the machine has a CPU to spare. Called from the store
    /// thread only (the room is judged by its CPU clock).
    pub(super) fn due(&mut self) -> bool {
        self.due_at(Instant::now(), CpuRoom::spare)
    }

    /// [`SearchPass::due`] at `now`, with `spare` saying whether the
    /// machine has a CPU to spare (asked only of a pass far behind).
    fn due_at(&mut self, now: Instant, spare: impl FnOnce(&mut CpuRoom, Instant) -> bool) -> bool {
        self.behind()
            && (self.wanted()
                || self.owed >= RUN
                || self
                    .indexed_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= QUIET)
                || (self.indexed.seq().saturating_sub(self.searched.seq()) >= BEHIND_AT_MOST
                    && spare(&mut self.room, now)))
    }

    /// Whether a search waits for the pass.
    pub(super) fn wanted(&self) -> bool {
        !self.done && self.wanted.load(Ordering::Acquire) > self.searched.seq()
    }

    /// One run of the pass. A failed run is logged and tried again when
    /// more is indexed or at the next tidy tick; meanwhile searches go on
    /// with what is indexed.
    pub(super) fn step(&mut self, db: &mut Db) {
        let started = *self.since.get_or_insert_with(Instant::now);
        self.owed = 0;
        match db.search_behind(RUN) {
            Ok(passed) => {
                self.failed = false;
                self.passed += passed.messages;
                if let Some(seq) = passed.through {
                    self.searched.reach(seq);
                }
                if passed.done {
                    self.done = true;
                    self.reach_all(db);
                    if self.passed > RUN {
                        tracing::info!(
                            messages = self.passed,
                            seconds = started.elapsed().as_secs_f64(),
                            "search: indexed the kept messages a burst left behind"
                        );
                    }
                    self.passed = 0;
                    self.since = None;
                }
            }
            Err(e) => {
                tracing::error!(error = %e,
                    "search: cannot index kept messages for search; trying again at the next \
                     tick (check the disk)");
                self.done = true;
                self.failed = true;
                self.reach_all(db);
            }
        }
    }

    /// Nothing more to do for what is indexed: its last seq (records the
    /// index skipped count too). And what the index has given up on for
    /// now (a failed transaction, tried again at a tick): a search does not
    /// wait for a disk to be fixed, as a read does not.
    fn reach_all(&self, db: &Db) {
        self.searched.reach(self.indexed.seq());
        match db.message_floor() {
            Ok(floor) => self.searched.reach(floor.seq),
            Err(e) => tracing::warn!(error = %e, "search: cannot read the index's last seq"),
        }
    }
}

impl Drop for SearchPass {
    /// The store thread is done: no search waits for a pass that will not
    /// run (each goes on to its read, which finds the store closed).
    fn drop(&mut self) {
        self.searched.reach(u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pass() -> SearchPass {
        SearchPass::new(
            Arc::new(Indexed::new(0)),
            Arc::new(Indexed::new(0)),
            Arc::new(AtomicU64::new(0)),
        )
    }

    fn no_room(_: &mut CpuRoom, _: Instant) -> bool {
        false
    }

    /// Small transactions of the index (a steady load) make the pass keep
    /// pace, a run at a time; large ones (a burst) do not. Judged at the
    /// moment of the last commit: the index is busy, not quiet.
    #[test]
    fn the_pass_keeps_pace_with_small_transactions_only() {
        let busy = |p: &SearchPass| p.indexed_at.expect("committed");
        let mut p = pass();
        p.committed(RUN - 1);
        assert!(!p.due_at(busy(&p), no_room), "not a run's worth yet");
        p.committed(1);
        assert!(p.due_at(busy(&p), no_room));
        assert!(
            p.due_at(busy(&p) + QUIET, no_room),
            "and once quiet, as ever"
        );

        let mut p = pass();
        for _ in 0..10 {
            p.committed(PACED_BELOW);
        }
        assert!(
            !p.due_at(busy(&p), no_room),
            "a burst's transactions owe nothing"
        );
        assert!(p.due_at(busy(&p) + QUIET, no_room));
    }

    /// Far behind while the index is busy, the pass runs only when the
    /// machine has a CPU to spare, and the room is asked only then.
    #[test]
    fn far_behind_the_pass_runs_only_with_a_cpu_to_spare() {
        let mut p = pass();
        p.committed(PACED_BELOW);
        let busy = p.indexed_at.expect("committed");
        let n = std::cell::Cell::new(0);
        let asked = |answer: bool| {
            let n = &n;
            move |_: &mut CpuRoom, _: Instant| {
                n.set(n.get() + 1);
                answer
            }
        };
        assert!(!p.due_at(busy, asked(true)));
        assert_eq!(n.get(), 0, "not far behind: the room is not asked");
        p.indexed.reach(BEHIND_AT_MOST);
        assert!(!p.due_at(busy, asked(false)), "no room");
        assert!(p.due_at(busy, asked(true)), "room");
        assert_eq!(n.get(), 2);
    }
}
