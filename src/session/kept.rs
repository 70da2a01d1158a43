//! A session's pipeline: its kept messages on their way to the store, and
//! the replies that must not overtake them.
//!
//! A burst's kept messages to one topic go to the store as one entry (a
//! [`Run`]): one reservation of room, one place in the store's queue, one
//! answer for all of them, instead of one of each per message. A run
//! gathers at the back of the pipeline until it is full or the session has
//! to wait; runs are queued in order, so the store commits a session's
//! messages in the order they were sent.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

use crate::change::Change;
use crate::store::{Error, Event, Guard, Pending, Slot, Store, TopicRecord, closed_outcomes};

/// Kept messages and replies one connection may have waiting for commits.
pub(super) const MAX_INFLIGHT: usize = 256;

/// Kept messages queued as one entry at most: a quarter of the pipeline, so
/// that runs keep the store busy while the next one gathers.
pub(super) const MAX_RUN: usize = MAX_INFLIGHT / 4;

/// Bytes of `ex` past which a run takes no more messages: what a session
/// holds outside the store's bounded queue ([`crate::store::QUEUED_BYTES`])
/// is at most the run it gathers and one that waits for room.
const MAX_RUN_BYTES: usize = 64 * 1024;

/// What waits in a session's pipeline, in request order.
pub(super) enum InFlight {
    /// Kept messages to one topic, queued for commit together (or not yet).
    Kept(Run),
    /// A reply, encoded, that must not overtake the commits queued before it.
    Ready(Bytes),
}

/// Where a run stands with the store.
enum Commit {
    /// Gathering messages, or waiting for room in the store's queue.
    Unqueued,
    Queued(Pending),
    /// The store is closed: nothing was queued.
    Refused,
}

/// Kept messages to one topic from one burst, with what to do once they
/// are durable.
pub(super) struct Run {
    commit: Commit,
    /// The changes, until they are queued.
    changes: Vec<Change>,
    /// What the store checks before it commits them, until they are queued.
    guard: Option<Guard>,
    /// The topic the messages were sent under: its members get the relays.
    pub topic: Arc<TopicRecord>,
    /// The sender's name as a JSON string.
    pub from_json: String,
    /// The messages' `ex` bytes.
    bytes: usize,
    /// Each message's relay id and the id of the `send` that made it.
    pub sent: Vec<(uuid::Uuid, Option<String>)>,
}

impl Run {
    fn unqueued(&self) -> bool {
        matches!(self.commit, Commit::Unqueued)
    }

    /// Not queued, and not full.
    fn gathers(&self) -> bool {
        self.unqueued() && self.sent.len() < MAX_RUN && self.bytes < MAX_RUN_BYTES
    }

    /// Queues the run if the store has room now. False when it has not.
    fn try_queue(&mut self, store: &Store) -> bool {
        if !self.unqueued() {
            return true;
        }
        match store.try_reserve(&self.changes).transpose() {
            Some(slot) => {
                self.settle(slot);
                true
            }
            None => false,
        }
    }

    /// Queued with the room reserved for it, or refused by a closed store.
    fn settle(&mut self, slot: Result<Slot<'_>, Error>) {
        self.commit = match slot {
            Ok(slot) => {
                Commit::Queued(slot.send(std::mem::take(&mut self.changes), self.guard.take()))
            }
            Err(_) => Commit::Refused,
        };
    }

    /// The commit's outcomes if they are known, without waiting: one per
    /// message, in order.
    pub fn try_committed(&mut self) -> Option<Vec<Result<Event, Error>>> {
        match &mut self.commit {
            Commit::Unqueued => None,
            Commit::Queued(p) => p.try_committed(),
            Commit::Refused => Some(self.refused()),
        }
    }

    /// Queues the run, waiting for room if need be. Cancel-safe: dropped
    /// while it waits, the run still holds its changes.
    pub async fn queue(&mut self, store: &Store) {
        if self.unqueued() {
            let slot = store.reserve(&self.changes).await;
            self.settle(slot);
        }
    }

    /// Waits for the commit of a queued run; a run not queued is refused.
    /// Cancel-safe: the run keeps the answer to come.
    pub async fn committed(&mut self) -> Vec<Result<Event, Error>> {
        match &mut self.commit {
            Commit::Queued(p) => p.committed().await,
            Commit::Unqueued | Commit::Refused => self.refused(),
        }
    }

    fn refused(&self) -> Vec<Result<Event, Error>> {
        closed_outcomes(self.sent.len())
    }
}

/// The pipeline itself: runs and replies, oldest first.
#[derive(Default)]
pub(super) struct Pipeline {
    entries: VecDeque<InFlight>,
    /// Kept messages and replies in it: what [`MAX_INFLIGHT`] bounds.
    len: usize,
    /// Runs not yet queued, which are the last ones.
    unqueued: usize,
}

impl Pipeline {
    /// Whether anything waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Kept messages and replies waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// A reply that goes out after everything queued before it.
    pub fn push_ready(&mut self, line: Bytes) {
        self.entries.push_back(InFlight::Ready(line));
        self.len += 1;
    }

    /// The run at the back, if it may still take messages: not queued and
    /// not full.
    fn gathering(&mut self) -> Option<&mut Run> {
        match self.entries.back_mut() {
            Some(InFlight::Kept(run)) if run.gathers() => Some(run),
            _ => None,
        }
    }

    /// Whether the back entry is a run that may still take messages.
    fn back_gathers(&self) -> bool {
        matches!(self.entries.back(), Some(InFlight::Kept(run)) if run.gathers())
    }

    /// Whether a run that takes no more messages waits for room in the
    /// store's queue: the session then reads nothing more until it is
    /// queued.
    pub fn waiting_for_room(&self) -> bool {
        self.unqueued > usize::from(self.back_gathers())
    }

    /// Whether the session must complete its oldest entries before it takes
    /// another kept message: the pipeline is full, or a run waits for room.
    pub fn must_wait(&self) -> bool {
        self.len >= MAX_INFLIGHT || self.waiting_for_room()
    }

    /// Adds a kept message to the run gathering at the back when it is to
    /// the same topic, else to a new run, which the store commits only if
    /// `guard` (made for it) still holds then.
    pub fn push_kept(
        &mut self,
        topic: &Arc<TopicRecord>,
        from_json: &str,
        change: Change,
        message_id: uuid::Uuid,
        request_id: Option<&str>,
        guard: impl FnOnce() -> Guard,
    ) {
        self.len += 1;
        let sent = (message_id, request_id.map(str::to_owned));
        let bytes = change.message.as_ref().map_or(0, |m| m.ex.get().len());
        if let Some(run) = self.gathering().filter(|r| Arc::ptr_eq(&r.topic, topic)) {
            run.changes.push(change);
            run.sent.push(sent);
            run.bytes += bytes;
            return;
        }
        // Grown as messages join: a client that waits for each ack makes
        // a run per message, and 64 slots would be about 10 KB each time.
        self.entries.push_back(InFlight::Kept(Run {
            commit: Commit::Unqueued,
            changes: vec![change],
            guard: Some(guard()),
            topic: topic.clone(),
            from_json: from_json.to_owned(),
            bytes,
            sent: vec![sent],
        }));
        self.unqueued += 1;
    }

    /// Queues every run not yet queued, oldest first, as far as the store
    /// has room now: a run never goes ahead of an older one, so the store
    /// commits a session's messages in the order they were sent.
    pub fn queue(&mut self, store: &Store) {
        self.queue_first(self.unqueued, store);
    }

    /// [`Pipeline::queue`] but for a run still gathering at the back: the
    /// runs that can take no more messages (full, or followed by another
    /// entry) go to the store while the next one gathers.
    pub fn queue_sealed(&mut self, store: &Store) {
        let gathering = usize::from(self.back_gathers());
        self.queue_first(self.unqueued - gathering, store);
    }

    /// Queues up to `n` of the runs not yet queued, oldest first.
    fn queue_first(&mut self, n: usize, store: &Store) {
        let mut left = n;
        for entry in &mut self.entries {
            if left == 0 {
                return;
            }
            let InFlight::Kept(run) = entry else { continue };
            if !run.unqueued() {
                continue;
            }
            if !run.try_queue(store) {
                return;
            }
            self.unqueued -= 1;
            left -= 1;
        }
    }

    /// The outcomes of the oldest entry, a run: queued first if it was not
    /// (waiting for room), then waited for. `None` if the oldest entry is
    /// not a run. Cancel-safe, as [`Run::committed`] is.
    pub async fn front_committed(&mut self, store: &Store) -> Option<Vec<Result<Event, Error>>> {
        let Some(InFlight::Kept(run)) = self.entries.front_mut() else {
            return None;
        };
        if run.unqueued() {
            run.queue(store).await;
            self.unqueued -= 1;
        }
        Some(run.committed().await)
    }

    /// The oldest entry.
    pub fn front_mut(&mut self) -> Option<&mut InFlight> {
        self.entries.front_mut()
    }

    /// Takes the oldest entry out.
    pub fn pop_front(&mut self) -> Option<InFlight> {
        let entry = self.entries.pop_front()?;
        self.len -= match &entry {
            InFlight::Kept(run) => {
                if run.unqueued() {
                    self.unqueued -= 1;
                }
                run.sent.len()
            }
            InFlight::Ready(_) => 1,
        };
        Some(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guard that always lets a run be written.
    fn allow() -> Guard {
        Box::new(|| true)
    }
    use crate::change::{ExJson, Message};

    fn topic() -> Arc<TopicRecord> {
        Arc::new(TopicRecord {
            id: uuid::Uuid::now_v7(),
            name: "t".into(),
            deleted: false,
            meta: Default::default(),
            acl: Default::default(),
            members: Default::default(),
            as_of: 0,
        })
    }

    fn message(topic: &TopicRecord, n: usize) -> Change {
        sized(topic, n, 0)
    }

    /// A message whose `ex` holds `bytes` of text (and a few more).
    fn sized(topic: &TopicRecord, n: usize, bytes: usize) -> Change {
        let ex = match bytes {
            0 => ExJson::empty(),
            _ => ExJson::from_map(&serde_json::Map::from_iter([(
                "b".to_owned(),
                serde_json::Value::from("x".repeat(bytes)),
            )]))
            .unwrap(),
        };
        Change::message(Message {
            topic: topic.id,
            id: format!("m{n}"),
            ts: 0,
            sender: uuid::Uuid::nil(),
            ex,
        })
    }

    fn runs(p: &Pipeline) -> Vec<usize> {
        p.entries
            .iter()
            .map(|e| match e {
                InFlight::Kept(run) => run.sent.len(),
                InFlight::Ready(_) => 0,
            })
            .collect()
    }

    #[test]
    fn a_burst_to_one_topic_gathers_into_runs_of_at_most_max_run() {
        let t = topic();
        let mut p = Pipeline::default();
        for n in 0..MAX_RUN + 3 {
            p.push_kept(
                &t,
                "\"a\"",
                message(&t, n),
                uuid::Uuid::now_v7(),
                None,
                allow,
            );
        }
        assert_eq!(runs(&p), [MAX_RUN, 3]);
        assert_eq!(p.len(), MAX_RUN + 3);
        assert_eq!(p.unqueued, 2);
        // Its bytes fill a run too.
        p.push_kept(
            &t,
            "\"a\"",
            sized(&t, 0, MAX_RUN_BYTES),
            uuid::Uuid::now_v7(),
            None,
            allow,
        );
        p.push_kept(
            &t,
            "\"a\"",
            message(&t, 1),
            uuid::Uuid::now_v7(),
            None,
            allow,
        );
        assert_eq!(runs(&p), [MAX_RUN, 4, 1]);
    }

    #[test]
    fn another_topic_or_a_reply_starts_a_new_run() {
        let (a, b) = (topic(), topic());
        let mut p = Pipeline::default();
        let id = uuid::Uuid::now_v7;
        p.push_kept(&a, "\"a\"", message(&a, 0), id(), Some("r0"), allow);
        p.push_kept(&a, "\"a\"", message(&a, 1), id(), None, allow);
        p.push_kept(&b, "\"a\"", message(&b, 2), id(), None, allow);
        p.push_ready(Bytes::from_static(b"{}\n"));
        p.push_kept(&b, "\"a\"", message(&b, 3), id(), None, allow);
        assert_eq!(runs(&p), [2, 1, 0, 1]);
        assert_eq!(p.len(), 5);
        let Some(InFlight::Kept(first)) = p.pop_front() else {
            panic!("a run first");
        };
        let requests: Vec<_> = first.sent.iter().map(|s| s.1.as_deref()).collect();
        assert_eq!(requests, [Some("r0"), None]);
        assert_eq!(p.len(), 3);
    }

    #[tokio::test]
    async fn sealed_runs_are_queued_and_the_gathering_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let (a, b) = (topic(), topic());
        let mut p = Pipeline::default();
        let id = uuid::Uuid::now_v7;
        p.push_kept(&a, "\"a\"", message(&a, 0), id(), None, allow);
        p.queue_sealed(&store);
        // One run, still gathering: nothing to queue yet.
        assert_eq!(p.unqueued, 1);
        p.push_kept(&b, "\"a\"", message(&b, 1), id(), None, allow);
        p.queue_sealed(&store);
        // The first can take no more: queued; the second gathers.
        assert_eq!(p.unqueued, 1);
        for n in 2..=MAX_RUN {
            p.push_kept(&b, "\"a\"", message(&b, n), id(), None, allow);
        }
        p.queue_sealed(&store);
        // Full: queued too.
        assert_eq!(p.unqueued, 0);
        assert_eq!(runs(&p), [1, MAX_RUN]);
        p.push_kept(&b, "\"a\"", message(&b, 99), id(), None, allow);
        p.queue(&store);
        assert_eq!(p.unqueued, 0);
        assert_eq!(runs(&p), [1, MAX_RUN, 1]);
        let mut answered = 0;
        while !p.is_empty() {
            answered += p.front_committed(&store).await.unwrap().len();
            p.pop_front();
        }
        assert_eq!(answered, MAX_RUN + 2);
        store.close().await;
    }

    #[tokio::test]
    async fn a_run_without_room_holds_back_the_runs_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let (a, b) = (topic(), topic());
        // Room is held for all but 80 KiB of the store's queue.
        let hold = vec![sized(&a, 99, crate::store::QUEUED_BYTES - 80 * 1024)];
        let held = store.try_reserve(&hold).unwrap().expect("room to hold");
        let mut p = Pipeline::default();
        let id = uuid::Uuid::now_v7;
        // Too large for what is left, and full by its bytes.
        p.push_kept(
            &a,
            "\"a\"",
            sized(&a, 0, MAX_RUN_BYTES * 2),
            id(),
            None,
            allow,
        );
        // Small enough for what is left, but behind the first.
        p.push_kept(&b, "\"a\"", message(&b, 1), id(), None, allow);
        p.push_kept(&a, "\"a\"", message(&a, 2), id(), None, allow);
        p.queue(&store);
        assert_eq!(p.unqueued, 3, "a run never goes ahead of an older one");
        assert!(p.waiting_for_room());
        // A wait for room dropped unfinished, as `select!` drops it,
        // changes nothing.
        let dropped = tokio::select! {
            biased;
            _ = p.front_committed(&store) => false,
            () = std::future::ready(()) => true,
        };
        assert!(dropped);
        assert_eq!((p.unqueued, p.len()), (3, 3));
        assert_eq!(runs(&p), [1, 1, 1]);
        drop(held);
        let mut committed = Vec::new();
        while let Some(outcomes) = p.front_committed(&store).await {
            for o in outcomes {
                let event = o.unwrap();
                committed.push((event.seq, event.change.message.unwrap().id));
            }
            p.pop_front();
        }
        assert!(!p.waiting_for_room());
        assert!(
            committed.windows(2).all(|w| w[0].0 < w[1].0),
            "{committed:?}"
        );
        let ids: Vec<&str> = committed.iter().map(|c| c.1.as_str()).collect();
        assert_eq!(ids, ["m0", "m1", "m2"]);
        store.close().await;
    }

    #[tokio::test]
    async fn runs_are_queued_in_order_and_each_message_is_answered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), "n1").unwrap();
        let (a, b) = (topic(), topic());
        let mut p = Pipeline::default();
        for n in 0..3 {
            let t = if n == 1 { &b } else { &a };
            p.push_kept(t, "\"a\"", message(t, n), uuid::Uuid::now_v7(), None, allow);
        }
        p.queue(&store);
        let mut seqs = Vec::new();
        while let Some(InFlight::Kept(mut run)) = p.pop_front() {
            run.queue(&store).await;
            let outcomes = run.committed().await;
            assert_eq!(outcomes.len(), run.sent.len());
            for o in outcomes {
                let event = o.unwrap();
                assert_eq!(event.change.message.unwrap().topic, run.topic.id);
                seqs.push(event.seq);
            }
        }
        assert_eq!(seqs.len(), 3);
        assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
        assert_eq!(p.len(), 0);
        store.close().await;
        // A closed store refuses a run: each message hears so.
        let mut p = Pipeline::default();
        p.push_kept(
            &a,
            "\"a\"",
            message(&a, 9),
            uuid::Uuid::now_v7(),
            None,
            allow,
        );
        p.queue(&store);
        let Some(InFlight::Kept(mut run)) = p.pop_front() else {
            panic!("a run");
        };
        let refused = run.try_committed().expect("known at once");
        assert!(matches!(refused.as_slice(), [Err(Error::Closed)]));
    }
}
