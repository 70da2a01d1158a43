//! What the mesh needs of the store: the version vector, the log read as a
//! cursor from any position, events from peers received through the same
//! [`log::apply`] as local changes, and a digest of the replicated state.
//!
//! This node's kept messages (its message origin) are entries of blocks
//! (`blocks.rs`), their bodies in the message log, not `events` rows: the
//! cursor and the digest read them as the rows they replace, so a peer,
//! which holds them as rows, is sent and hashes the same.
//!
//! An event from a peer carries `prev`: the seq of the event before it in
//! the sender's log for that origin. Pruned history leaves holes in a log,
//! so "gapless" means "nothing between `prev` and `seq` that the sender
//! holds": an event is taken when this store already holds `prev`.

use std::collections::{BTreeMap, HashMap};

use rusqlite::{TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::log::{self, Event};
use super::search::IndexQueue;
use super::{Db, Error, blocks, segment};
use crate::change::ExJson;

/// The highest seq held of each origin, keyed `node/incarnation`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(pub BTreeMap<String, u64>);

impl VersionVector {
    /// The entry for an origin key (0 when unknown).
    pub fn get(&self, origin: &str) -> u64 {
        self.0.get(origin).copied().unwrap_or(0)
    }

    /// Raises the entry for `origin` to `seq`.
    pub fn raise(&mut self, origin: &str, seq: u64) {
        let e = self.0.entry(origin.to_owned()).or_insert(0);
        *e = (*e).max(seq);
    }

    /// Events this vector has that `other` lacks, summed over origins.
    pub fn ahead_of(&self, other: &VersionVector) -> u64 {
        self.0
            .iter()
            .map(|(o, s)| s.saturating_sub(other.get(o)))
            .sum()
    }
}

/// The key of an origin in a version vector: `node/incarnation`.
pub fn origin_key(node: &str, incarnation: &str) -> String {
    format!("{node}/{incarnation}")
}

/// Splits an origin key back into node and incarnation.
pub fn split_origin(key: &str) -> Option<(&str, &str)> {
    key.split_once('/')
}

/// An event from a peer, with the seq before it in the sender's log.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// The event.
    pub event: Event,
    /// The seq before it in the sender's log (0: the origin's first).
    pub prev: u64,
    /// The change as it came, stored as is.
    pub body: String,
}

#[cfg(test)]
impl Incoming {
    /// `raw` as a link receives it after `prev`, its change decoded.
    pub(crate) fn decoded(raw: RawEvent, prev: u64) -> Self {
        Incoming {
            event: Event {
                node: raw.node,
                incarnation: raw.incarnation,
                seq: raw.seq,
                hlc: raw.hlc,
                change: serde_json::from_str(&raw.body).expect("a stored change decodes"),
            },
            prev,
            body: raw.body,
        }
    }
}

/// An event as the log holds it, its change still encoded: what a link
/// sends without decoding it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    /// Origin node.
    pub node: String,
    /// Origin incarnation.
    pub incarnation: String,
    /// Seq in the origin's log.
    pub seq: u64,
    /// Hybrid logical clock.
    pub hlc: u64,
    /// The change, JSON.
    pub body: String,
}

/// What became of an incoming event.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// New here: recorded and applied.
    Applied(Box<Event>),
    /// Already held (it came by another path, or twice).
    Duplicate,
    /// Its `prev` is beyond what this store holds of the origin: something
    /// between was never sent. Nothing is applied.
    Gap {
        /// The origin's key.
        origin: String,
        /// What this store holds of it.
        have: u64,
        /// What the event said precedes it.
        prev: u64,
    },
    /// It claims this store's own origin with a seq this store never
    /// wrote (one it did write, relayed back, is a duplicate).
    OwnOrigin,
}

impl Db {
    /// The version vector: every origin's highest seq held.
    pub fn version_vector(&self) -> Result<VersionVector, Error> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT origin, incarnation, seq FROM vv")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        let mut vv = VersionVector::default();
        for row in rows {
            let (node, inc, seq) = row?;
            vv.raise(&origin_key(&node, &inc), u64::try_from(seq).unwrap_or(0));
        }
        Ok(vv)
    }

    /// Up to `limit` events of `origin` after `after`, in seq order. This
    /// node's kept messages (its message origin) are entries of blocks
    /// (`blocks.rs`), their bodies in the message log; they read as the
    /// rows they replace did, merged with the origin's rows (ids no session
    /// mints) in seq order.
    pub fn events_after(
        &self,
        origin: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RawEvent>, Error> {
        let Some((node, inc)) = split_origin(origin) else {
            return Ok(Vec::new());
        };
        let rows = self.rows_after((node, inc), after, limit)?;
        let messages = self.origin.messages();
        if node != messages.node || inc != messages.incarnation {
            return Ok(rows);
        }
        let kept = blocks::after(&self.conn, (node, inc), after, limit)?;
        if kept.is_empty() {
            return Ok(rows);
        }
        // A redaction rewrites its record in the log just after it
        // commits: until then, its journal entry is there.
        let pending = blocks::rewrites_pending(&self.conn)?;
        // Merged by seq, a body read from the log only for an entry that
        // makes the cut (those read together).
        let mut rows = rows.into_iter().peekable();
        let mut kept = kept.into_iter().peekable();
        let mut merged: Vec<Result<RawEvent, blocks::Found>> =
            Vec::with_capacity(limit.min(rows.len() + kept.len()));
        while merged.len() < limit {
            let row_first = match (rows.peek(), kept.peek()) {
                (Some(r), Some(k)) => r.seq < k.entry.seq,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            let next = if row_first {
                rows.next().map(Ok)
            } else {
                kept.next().map(Err)
            };
            merged.extend(next);
        }
        let mut read =
            blocks::read_records(&self.log, merged.iter().filter_map(|e| e.as_ref().err()))
                .into_iter();
        let mut out = Vec::with_capacity(merged.len());
        for event in merged {
            out.push(match event {
                Ok(row) => row,
                Err(found) => {
                    let stored = read.next().ok_or_else(|| {
                        Error::Corrupt("a kept event's record went unread".into())
                    })??;
                    self.kept_event((node, inc), &found, stored, pending)?
                }
            });
        }
        Ok(out)
    }

    /// Up to `limit` `events` rows of `origin` (node, incarnation) after
    /// `after`, in seq order.
    fn rows_after(
        &self,
        (node, inc): (&str, &str),
        after: u64,
        limit: usize,
    ) -> Result<Vec<RawEvent>, Error> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, hlc, body FROM events WHERE origin = ?1 AND incarnation = ?2 AND seq > ?3
             ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(
            params![
                node,
                inc,
                i64::try_from(after).unwrap_or(i64::MAX),
                i64::try_from(limit).unwrap_or(i64::MAX)
            ],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )?;
        let corrupt = |e: std::num::TryFromIntError| Error::Corrupt(e.to_string());
        let mut out = Vec::new();
        for row in rows {
            let (seq, hlc, body) = row?;
            out.push(RawEvent {
                node: node.to_owned(),
                incarnation: inc.to_owned(),
                seq: u64::try_from(seq).map_err(corrupt)?,
                hlc: u64::try_from(hlc).map_err(corrupt)?,
                body,
            });
        }
        Ok(out)
    }

    /// A block's entry of the message `origin` as the event its row was:
    /// the record's text from the log (as the row's body held it). A
    /// redaction rewrites the record without its `ex`, as `edit.rs`'s
    /// `erase` rewrote the row; while a rewrite is `pending` (journaled, not
    /// yet made), a redacted message's `ex` is left out here.
    fn kept_event(
        &self,
        (node, inc): (&str, &str),
        found: &blocks::Found,
        stored: segment::Stored,
        pending: bool,
    ) -> Result<RawEvent, Error> {
        // A binary record as its text: peers get the text a row held.
        let body = super::record::text(&stored.body)?.into_owned();
        // A rewritten record's `ex` is `{`, spaces and `}`: sent as the
        // row held it, `{}`.
        let redacted = match log::split_message(&body) {
            Some(m) if m.ex != "{}" && crate::proto::packet::is_empty_ex(m.ex.as_bytes()) => true,
            Some(m) if pending => self.redaction(m.topic, m.id)?.is_some(),
            Some(_) => false,
            // Another layout, which a rewrite pads at its end.
            None => true,
        };
        let body = if redacted {
            let mut change = blocks::change(body.as_bytes())?;
            match change.message.as_mut() {
                Some(m) => {
                    m.ex = ExJson::empty();
                    serde_json::to_string(&change).map_err(|e| Error::Corrupt(e.to_string()))?
                }
                None => body,
            }
        } else {
            body
        };
        Ok(RawEvent {
            node: node.to_owned(),
            incarnation: inc.to_owned(),
            seq: found.entry.seq,
            hlc: found.entry.hlc,
            body,
        })
    }

    /// Records and applies events from peers in one transaction, each
    /// through the one apply path; the node's clock moves past every clock
    /// it sees, so a later local change wins over what it has seen.
    pub fn receive(&mut self, batch: Vec<Incoming>) -> Result<Vec<Received>, Error> {
        // Events from peers need no sync of their own: lost to a power cut,
        // they are sent again (the version vector rolls back with them), and
        // the next local commit, synced, carries them to disk in WAL order.
        self.unsynced(|db| db.receive_batch(batch))
    }

    fn receive_batch(&mut self, batch: Vec<Incoming>) -> Result<Vec<Received>, Error> {
        // This node writes two origins: its events, and its kept messages
        // (the message log's).
        let own = [self.origin.clone(), self.origin.messages()];
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        // A peer's redaction of this node's kept message erases its
        // record in the message log (`edit.rs`).
        let messages = self.origin.messages();
        let out = blocks::with_log(&self.log, &messages, || -> Result<_, Error> {
            let mut clock = log::read_clock(&tx)?;
            let mut held: BTreeMap<String, u64> = BTreeMap::new();
            let mut out = Vec::with_capacity(batch.len());
            let mut index = IndexQueue::default();
            for Incoming { event, prev, body } in batch {
                let key = origin_key(&event.node, &event.incarnation);
                let have = match held.get(&key) {
                    Some(h) => *h,
                    None => log::seen_seq(&tx, &event.node, &event.incarnation)?,
                };
                let own_origin = own
                    .iter()
                    .any(|o| event.node == o.node && event.incarnation == o.incarnation);
                if own_origin && event.seq > have {
                    // Ours, but never written here: someone is lying.
                    out.push(Received::OwnOrigin);
                    continue;
                }
                if event.seq <= have {
                    held.insert(key, have);
                    out.push(Received::Duplicate);
                    continue;
                }
                if prev > have || prev >= event.seq {
                    held.insert(key.clone(), have);
                    out.push(Received::Gap {
                        origin: key,
                        have,
                        prev,
                    });
                    continue;
                }
                let rowid = log::insert_body(&tx, &event, &body)?;
                log::apply(&tx, &mut index, rowid, &key, event.hlc, &event.change)?;
                clock = clock.max(event.hlc);
                held.insert(key, event.seq);
                out.push(Received::Applied(Box::new(event)));
            }
            for (key, seq) in &held {
                if let Some((node, inc)) = split_origin(key) {
                    log::set_seen_seq(&tx, node, inc, *seq)?;
                }
            }
            index.flush(&tx)?;
            log::write_clock(&tx, clock)?;
            Ok(out)
        })?;
        tx.commit()?;
        self.commits += 1;
        self.make_rewrites();
        Ok(out)
    }

    /// SHA-256 over the replicated state: every register (with the clock
    /// and origin that won it) and every kept message's event, in a fixed
    /// order. Nodes holding the same state print the same digest.
    pub fn state_digest(&self) -> Result<String, Error> {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut stmt = self.conn.prepare(
            "SELECT entity, field, value, hlc, origin FROM registers ORDER BY entity, field",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            for i in 0..5 {
                let text: String = match i {
                    3 => r.get::<_, i64>(i)?.to_string(),
                    _ => r.get(i)?,
                };
                ctx.update(text.as_bytes());
                ctx.update(b"\x1f");
            }
            ctx.update(b"\x1e");
        }
        // Kept messages: the rows (peers' messages, and a copy of this
        // node's on each peer) and this node's message origin's block
        // entries, merged into the rows' order, so that a peer holding the
        // same messages as rows prints the same digest.
        let messages = self.origin.messages();
        let (node, inc) = (messages.node.as_str(), messages.incarnation.as_str());
        let mut kept_stmt = self.conn.prepare(&format!(
            "SELECT {}, batch FROM blocks ORDER BY batch, rowid",
            blocks::COLUMNS
        ))?;
        let mut kept = KeptSeqs {
            rows: kept_stmt.query([])?,
            floors: blocks::floors(&self.conn)?,
            origin: (node, inc),
            ready: Vec::new(),
            next: None,
        };
        let mut stmt = self.conn.prepare(
            "SELECT origin, incarnation, seq FROM events WHERE topic IS NOT NULL
             ORDER BY origin, incarnation, seq",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (o, i, s): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            while let Some(seq) = kept.next_before((&o, &i, s))? {
                ctx.update(format!("{node}/{inc}/{seq}\x1e").as_bytes());
            }
            ctx.update(format!("{o}/{i}/{s}\x1e").as_bytes());
        }
        while let Some(seq) = kept.pop()? {
            ctx.update(format!("{node}/{inc}/{seq}\x1e").as_bytes());
        }
        Ok(ctx
            .finish()
            .as_ref()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect())
    }
}

/// The seqs of the live entries of this node's blocks (its message origin),
/// in seq order, read a batch at a time: a batch's blocks (one per topic)
/// interleave in seq, and batches do not.
struct KeptSeqs<'s> {
    /// Blocks with their batch ([`blocks::COLUMNS`], `batch`), in batch
    /// order.
    rows: rusqlite::Rows<'s>,
    /// Every topic's retention floor.
    floors: HashMap<Uuid, blocks::HistoryPos>,
    /// The message origin (node, incarnation).
    origin: (&'s str, &'s str),
    /// The rest of the batch read, highest seq first.
    ready: Vec<i64>,
    /// The first block of the next batch, read past the last.
    next: Option<(i64, blocks::Block)>,
}

impl KeptSeqs<'_> {
    /// The next seq, if there is one and it sorts before `row` (origin,
    /// incarnation, seq) as SQLite orders them: text by its bytes, as
    /// `str` does.
    fn next_before(&mut self, row: (&str, &str, i64)) -> Result<Option<i64>, Error> {
        let (node, inc) = self.origin;
        match self.peek()? {
            Some(seq) if (node, inc, seq) < row => {
                self.ready.pop();
                Ok(Some(seq))
            }
            _ => Ok(None),
        }
    }

    /// The next seq, if there is one.
    fn pop(&mut self) -> Result<Option<i64>, Error> {
        let seq = self.peek()?;
        self.ready.pop();
        Ok(seq)
    }

    /// The next seq, if there is one, left to come.
    fn peek(&mut self) -> Result<Option<i64>, Error> {
        while self.ready.is_empty() {
            let first = match self.next.take() {
                Some(b) => b,
                None => match self.block()? {
                    Some(b) => b,
                    None => return Ok(None),
                },
            };
            let batch = first.0;
            self.add(&first.1);
            loop {
                match self.block()? {
                    Some((b, block)) if b == batch => self.add(&block),
                    next => {
                        self.next = next;
                        break;
                    }
                }
            }
            self.ready.sort_unstable_by(|a, b| b.cmp(a));
        }
        Ok(self.ready.last().copied())
    }

    /// The next block and its batch.
    fn block(&mut self) -> Result<Option<(i64, blocks::Block)>, Error> {
        let Some(row) = self.rows.next()? else {
            return Ok(None);
        };
        Ok(Some((row.get(4)?, blocks::from_row(row)?)))
    }

    /// `block`'s entries that retention left, to come.
    fn add(&mut self, block: &blocks::Block) {
        let floor = self.floors.get(&block.topic);
        for (_, e) in block.entries() {
            if blocks::above(floor, self.origin, &e) {
                self.ready.push(i64::try_from(e.seq).unwrap_or(i64::MAX));
            }
        }
    }
}

impl Db {
    /// What a link's cursor sends next: up to `limit` events held here that
    /// `sent` lacks, each with the seq before it in this log, and the
    /// version vector they were read against.
    #[allow(clippy::type_complexity)]
    pub fn catch_up(
        &self,
        sent: &VersionVector,
        limit: usize,
    ) -> Result<(VersionVector, Vec<(RawEvent, u64)>), Error> {
        let mut held = self.version_vector()?;
        if let Some(durable) = &self.durable {
            // This node's own events go out only once they are on disk: a
            // power loss must not take back an event a peer holds (its seq
            // would be minted again for another event).
            let own = self.origin.key();
            let on_disk = durable.get();
            if held.get(&own) > on_disk {
                held.0.insert(own, on_disk);
            }
        }
        let mut out = Vec::new();
        for (origin, have) in &held.0 {
            let room = limit.saturating_sub(out.len());
            if room == 0 {
                break;
            }
            let mut prev = sent.get(origin);
            if *have <= prev {
                continue;
            }
            let events = self.events_after(origin, prev, room)?;
            for event in events.into_iter().take_while(|e| e.seq <= *have) {
                let seq = event.seq;
                out.push((event, prev));
                prev = seq;
            }
        }
        Ok((held, out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::{Change, Message, Write};
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// A node writes a change of its own.
        Local(usize, Vec<(u8, u8, u8)>, bool),
        /// A link from one node to another carries up to `n` events.
        Sync(usize, usize, usize),
    }

    fn arb_step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (
                0usize..3,
                proptest::collection::vec((0u8..3, 0u8..3, 0u8..4), 1..3),
                any::<bool>()
            )
                .prop_map(|(n, w, m)| Step::Local(n, w, m)),
            (0usize..3, 0usize..3, 1usize..6).prop_map(|(a, b, n)| Step::Sync(a, b, n)),
        ]
    }

    fn change(writes: &[(u8, u8, u8)], message: bool) -> Change {
        let mut c = Change::new("test");
        for (e, f, v) in writes {
            c.writes.push(Write {
                entity: format!("account:{e}"),
                field: ["name", "meta:x", "acl:*:read"][usize::from(*f)].to_owned(),
                value: if *v == 0 {
                    serde_json::Value::Null
                } else {
                    serde_json::Value::from(format!("V{v}"))
                },
            });
        }
        if message {
            c.message = Some(Message {
                topic: uuid::Uuid::nil(),
                id: uuid::Uuid::now_v7().to_string(),
                ts: 0,
                sender: uuid::Uuid::nil(),
                ex: crate::change::ExJson::empty(),
            });
        }
        c
    }

    /// Sends what `to` lacks from `from` (at most `limit` events), as a
    /// link's cursor does, with `sent` the link's memory of the peer.
    fn sync(dbs: &mut [Db], sent: &mut VersionVector, from: usize, to: usize, limit: usize) {
        // A link never sends the peer its own events (mesh/link.rs).
        let own = dbs[to].origin().clone();
        sent.raise(&own.key(), u64::MAX);
        sent.raise(&own.messages().key(), u64::MAX);
        let (_, batch) = dbs[from].catch_up(sent, limit).unwrap();
        for (e, _) in &batch {
            sent.raise(&origin_key(&e.node, &e.incarnation), e.seq);
        }
        let incoming = batch
            .into_iter()
            .map(|(raw, prev)| Incoming::decoded(raw, prev))
            .collect();
        for r in dbs[to].receive(incoming).unwrap() {
            assert!(
                matches!(r, Received::Applied(_) | Received::Duplicate),
                "{r:?}"
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Random changes on three nodes, carried by random partial link
        /// schedules (links that reconnect, links that lag), then links
        /// until quiet: every node holds the same state.
        #[test]
        fn random_schedules_converge(steps in proptest::collection::vec(arb_step(), 1..40)) {
            let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
            let mut dbs: Vec<Db> = dirs
                .iter()
                .enumerate()
                .map(|(i, d)| Db::open(d.path(), &format!("n{i}")).unwrap())
                .collect();
            // Each directed link's cursor, as from its last hello.
            let mut cursors: std::collections::HashMap<(usize, usize), VersionVector> =
                std::collections::HashMap::new();
            for step in steps {
                match step {
                    Step::Local(n, writes, message) => {
                        dbs[n]
                            .write(|tx, origin| log::append(tx, origin, change(&writes, message)))
                            .unwrap();
                    }
                    Step::Sync(a, b, limit) if a != b => {
                        // Sometimes the link is new: its cursor is the peer's vector.
                        let fresh = limit == 1;
                        let peer_vv = dbs[b].version_vector().unwrap();
                        let sent = cursors.entry((a, b)).or_insert_with(|| peer_vv.clone());
                        if fresh {
                            *sent = peer_vv;
                        }
                        sync(&mut dbs, sent, a, b, limit);
                    }
                    Step::Sync(..) => {}
                }
            }
            // Heal: a line of links both ways until nothing moves.
            for _ in 0..3 {
                for (a, b) in [(0, 1), (1, 2), (2, 1), (1, 0)] {
                    let mut sent = dbs[b].version_vector().unwrap();
                    sync(&mut dbs, &mut sent, a, b, usize::MAX);
                }
            }
            let digests: Vec<String> = dbs.iter().map(|d| d.state_digest().unwrap()).collect();
            let vvs: Vec<VersionVector> = dbs.iter().map(|d| d.version_vector().unwrap()).collect();
            prop_assert!(vvs.windows(2).all(|w| w[0] == w[1]), "{:?}", vvs);
            prop_assert!(digests.windows(2).all(|w| w[0] == w[1]), "{:?}", digests);
        }
    }

    /// A peer that sends this node's own kept messages (its message
    /// origin) with a seq it never wrote is lying, as for its other events.
    #[test]
    fn own_messages_never_written_here_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n0").unwrap();
        let messages = db.origin().messages();
        let forged = Event {
            node: messages.node.clone(),
            incarnation: messages.incarnation.clone(),
            seq: 1,
            hlc: 1 << 16,
            change: change(&[], true),
        };
        let raw = RawEvent {
            node: forged.node.clone(),
            incarnation: forged.incarnation.clone(),
            seq: forged.seq,
            hlc: forged.hlc,
            body: serde_json::to_string(&forged.change).unwrap(),
        };
        let received = db.receive(vec![Incoming::decoded(raw, 0)]).unwrap();
        assert!(
            matches!(received.as_slice(), [Received::OwnOrigin]),
            "{received:?}"
        );
    }

    #[test]
    fn own_events_go_out_only_once_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n0").unwrap();
        let first = db.own_seq().unwrap();
        for _ in 0..3 {
            db.write(|tx, origin| log::append(tx, origin, change(&[(0, 1, 1)], true)))
                .unwrap();
        }
        let own = db.origin().key();
        let sent = VersionVector::default();
        // Synced behind: only what the sync thread has seen to disk goes.
        let durable = crate::store::wal::Durable::new(first + 1);
        db.durable = Some(durable.clone());
        let (held, batch) = db.catch_up(&sent, 100).unwrap();
        assert_eq!(held.get(&own), first + 1);
        let seqs: Vec<u64> = batch.iter().map(|(e, _)| e.seq).collect();
        assert_eq!(seqs, (1..=first + 1).collect::<Vec<_>>());
        durable.reach(first + 3);
        let (held, batch) = db.catch_up(&sent, 100).unwrap();
        assert_eq!(held.get(&own), first + 3);
        assert_eq!(batch.len() as u64, first + 3);
        // A plain store (no sync behind) sends everything it holds.
        db.durable = None;
        assert_eq!(db.catch_up(&sent, 100).unwrap().1.len() as u64, first + 3);
    }

    /// This node's kept messages as the daemon keeps them: records in the
    /// message log's segments, indexed into blocks.
    mod through_blocks {
        use uuid::Uuid;

        use super::*;
        use crate::store::MESSAGE_LOG_DIR;
        use crate::store::edit::Redaction;
        use crate::store::message_log::{self, SyncedRecord};
        use crate::store::segment::{self, Record};

        /// A store and the writer of its message log.
        struct Node {
            db: Db,
            log: segment::Writer,
            _dir: tempfile::TempDir,
        }

        fn node(name: &str) -> Node {
            let dir = tempfile::tempdir().unwrap();
            let db = Db::open(dir.path(), name).unwrap();
            let log = segment::Writer::open(&dir.path().join(MESSAGE_LOG_DIR), u64::MAX)
                .unwrap()
                .writer;
            Node { db, log, _dir: dir }
        }

        /// Message `id` of `topic` with text `text`, as the session writes
        /// it to the log (`session/message.rs`, `keep_now`): a binary
        /// record when `id` is a UUID (a session mints one), else the text
        /// an earlier build wrote.
        fn record(topic: Uuid, id: &str, text: &str) -> Vec<u8> {
            let ex = serde_json::json!({ "body": text }).to_string();
            let Ok(id) = Uuid::try_parse(id) else {
                return log::text_message(topic, Uuid::nil(), id, text);
            };
            crate::store::record::Kept {
                topic,
                id,
                sender: Uuid::nil(),
                ts: 0,
                ex: &ex,
            }
            .encode()
        }

        /// Keeps `messages` (topic, id, text) as one group of the log,
        /// numbered on from what the index holds, and indexes them in one
        /// transaction. Returns each as the event a row of it gave.
        fn keep(node: &mut Node, messages: &[(Uuid, &str, &str)]) -> Vec<RawEvent> {
            let floor = node.db.message_floor().unwrap();
            let base = floor.hlc.max(1_700_000_000_000 << 16);
            let bodies: Vec<Vec<u8>> = messages
                .iter()
                .map(|(topic, id, text)| record(*topic, id, text))
                .collect();
            let records: Vec<Record<'_>> = bodies
                .iter()
                .zip(1..)
                .map(|(body, i)| Record {
                    seq: floor.seq + i,
                    hlc: base + i,
                    body,
                })
                .collect();
            let appended = node.log.append(records.iter().copied()).unwrap();
            let synced = records
                .iter()
                .zip(&appended.positions)
                .map(|(r, &at)| SyncedRecord {
                    entry: message_log::Entry {
                        seq: r.seq,
                        hlc: r.hlc,
                    },
                    at,
                    body: r.body,
                });
            node.db.index_messages(synced, appended.end).unwrap();
            let origin = node.db.origin().messages();
            // A row held the change's text, whatever the record's layout.
            records
                .iter()
                .zip(messages)
                .map(|(r, (topic, id, text))| RawEvent {
                    node: origin.node.clone(),
                    incarnation: origin.incarnation.clone(),
                    seq: r.seq,
                    hlc: r.hlc,
                    body: String::from_utf8(log::text_message(*topic, Uuid::nil(), id, text))
                        .unwrap(),
                })
                .collect()
        }

        /// A message id as a session mints it: rising with seq.
        fn id() -> String {
            Uuid::now_v7().to_string()
        }

        fn messages_key(db: &Db) -> String {
            db.origin().messages().key()
        }

        /// The message origin's `events` rows' seqs, and the blocks held.
        fn stored(db: &Db) -> (Vec<i64>, i64) {
            let origin = db.origin().messages();
            let mut stmt = db
                .conn
                .prepare(
                    "SELECT seq FROM events WHERE origin = ?1 AND incarnation = ?2 ORDER BY seq",
                )
                .unwrap();
            let rows = stmt
                .query_map(params![origin.node, origin.incarnation], |r| r.get(0))
                .unwrap()
                .collect::<Result<Vec<i64>, _>>()
                .unwrap();
            let blocks = db
                .conn
                .query_row("SELECT count(*) FROM blocks", [], |r| r.get(0))
                .unwrap();
            (rows, blocks)
        }

        /// Two index transactions, two topics each: the blocks of one
        /// interleave in seq. A peer is sent them in seq order, each with
        /// the body the log holds, `limit` at most, from any seq.
        #[test]
        fn kept_messages_go_out_from_blocks_in_seq_order() {
            let mut n = node("n0");
            let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
            let ids: Vec<String> = (0..6).map(|_| id()).collect();
            let mut sent = keep(
                &mut n,
                &[
                    (a, &ids[0], "one"),
                    (b, &ids[1], "two"),
                    (a, &ids[2], "three"),
                    (b, &ids[3], "four"),
                ],
            );
            sent.extend(keep(&mut n, &[(b, &ids[4], "five"), (a, &ids[5], "six")]));
            assert_eq!(stored(&n.db), (vec![], 4), "all in blocks, no row");
            let key = messages_key(&n.db);
            assert_eq!(n.db.events_after(&key, 0, 100).unwrap(), sent);
            assert_eq!(n.db.events_after(&key, 0, 3).unwrap(), sent[..3]);
            assert_eq!(n.db.events_after(&key, 3, 2).unwrap(), sent[3..5]);
            assert_eq!(n.db.events_after(&key, 4, 0).unwrap(), []);
            assert_eq!(n.db.events_after(&key, 6, 10).unwrap(), []);
            // Each decodes as the message it was.
            let got: Vec<String> =
                n.db.events_after(&key, 0, 100)
                    .unwrap()
                    .into_iter()
                    .map(|raw| Incoming::decoded(raw, 0).event.change.message.unwrap().id)
                    .collect();
            assert_eq!(got, ids);
            // A link's cursor sends them, each after the one before.
            let (held, batch) = n.db.catch_up(&VersionVector::default(), 100).unwrap();
            assert_eq!(held.get(&key), 6);
            let chain: Vec<(u64, u64)> = batch
                .iter()
                .filter(|(e, _)| origin_key(&e.node, &e.incarnation) == key)
                .map(|(e, prev)| (e.seq, *prev))
                .collect();
            assert_eq!(chain, [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 5)]);
            // Fewer than a batch: the cursor's limit holds.
            let (_, batch) = n.db.catch_up(&VersionVector::default(), 2).unwrap();
            assert_eq!(batch.len(), 2);
        }

        /// Entries under their topic's retention floor are gone, as their
        /// rows were: not sent, nor counted against the limit.
        #[test]
        fn pruned_kept_messages_do_not_go_out() {
            let mut n = node("n0");
            let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
            let sent = keep(
                &mut n,
                &[
                    (a, &id(), "one"),
                    (b, &id(), "two"),
                    (a, &id(), "three"),
                    (b, &id(), "four"),
                    (a, &id(), "five"),
                ],
            );
            let origin = n.db.origin().messages();
            let floor = (
                i64::try_from(sent[2].hlc).unwrap(),
                origin.node.clone(),
                origin.incarnation.clone(),
                3,
            );
            blocks::raise_floor(&n.db.conn, a, &floor).unwrap();
            let key = origin.key();
            let out = n.db.events_after(&key, 0, 100).unwrap();
            assert_eq!(out, [sent[1].clone(), sent[3].clone(), sent[4].clone()]);
            assert_eq!(n.db.events_after(&key, 0, 2).unwrap(), out[..2]);
            assert_eq!(n.db.events_after(&key, 2, 1).unwrap(), out[1..2]);
        }

        /// A kept message whose id is not a UUID is a row of the message
        /// origin: it goes out among the blocks' entries in seq order.
        #[test]
        fn a_message_origin_row_goes_out_in_seq_order() {
            let mut n = node("n0");
            let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
            let mut sent = keep(
                &mut n,
                &[
                    (a, &id(), "one"),
                    (a, "not-a-uuid", "two"),
                    (b, &id(), "three"),
                ],
            );
            sent.extend(keep(&mut n, &[(a, &id(), "four")]));
            assert_eq!(stored(&n.db), (vec![2], 3));
            let key = messages_key(&n.db);
            assert_eq!(n.db.events_after(&key, 0, 100).unwrap(), sent);
            assert_eq!(n.db.events_after(&key, 0, 2).unwrap(), sent[..2]);
            assert_eq!(n.db.events_after(&key, 1, 1).unwrap(), sent[1..2]);
            assert_eq!(n.db.events_after(&key, 2, 1).unwrap(), sent[2..3]);
            assert_eq!(n.db.events_after(&key, 2, 100).unwrap(), sent[2..]);
        }

        /// A redacted kept message goes out without its text, as its row,
        /// rewritten by the redaction, did.
        #[test]
        fn a_redacted_kept_message_goes_out_without_its_text() {
            let mut n = node("n0");
            let topic = Uuid::now_v7();
            let (secret, open) = (id(), id());
            let sent = keep(
                &mut n,
                &[(topic, &secret, "secret"), (topic, &open, "open")],
            );
            let by = Uuid::nil();
            n.db.redact_message(topic, &secret, &Redaction { ts: 1, by })
                .unwrap();
            let out = n.db.events_after(&messages_key(&n.db), 0, 100).unwrap();
            // The row's body as `edit.rs` rewrote it.
            let mut change: Change = serde_json::from_str(&sent[0].body).unwrap();
            if let Some(m) = change.message.as_mut() {
                m.ex = ExJson::empty();
            }
            let redacted = RawEvent {
                body: serde_json::to_string(&change).unwrap(),
                ..sent[0].clone()
            };
            assert!(!redacted.body.contains("secret"));
            assert_eq!(out, [redacted, sent[1].clone()]);
        }

        fn digest(node: &Node) -> String {
            node.db.state_digest().unwrap()
        }

        /// Sends everything `from` holds that `to` lacks.
        fn sync_all(from: &Node, to: &mut Node) {
            let mut sent = to.db.version_vector().unwrap();
            let own = to.db.origin().clone();
            sent.raise(&own.key(), u64::MAX);
            sent.raise(&own.messages().key(), u64::MAX);
            let (_, batch) = from.db.catch_up(&sent, usize::MAX).unwrap();
            let incoming = batch
                .into_iter()
                .map(|(raw, prev)| Incoming::decoded(raw, prev))
                .collect();
            for r in to.db.receive(incoming).unwrap() {
                assert!(matches!(r, Received::Applied(_)), "{r:?}");
            }
        }

        /// A node that keeps its messages in blocks prints the digest of a
        /// peer that holds the same messages as rows: the entries are
        /// hashed where the peer's rows sort, among other origins' rows
        /// (nodes `a` and `z` on either side of `n`, or none after; `n`'s
        /// own events' incarnation before its message origin's), in seq
        /// order across a transaction's blocks (topic `a`'s block holds
        /// seqs 1 and 3), and with the row of the message origin. What
        /// retention leaves counts, on both.
        #[test]
        fn kept_messages_in_blocks_digest_as_a_peers_rows() {
            let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
            let mut n = node("n");
            let message = |node: &mut Node| {
                node.db
                    .write(|tx, origin| log::append(tx, origin, change(&[(0, 0, 1)], true)))
                    .unwrap();
            };
            let mut before = node("a");
            let mut after = node("z");
            message(&mut before);
            message(&mut after);
            message(&mut n);
            let kept = keep(
                &mut n,
                &[
                    (a, &id(), "one"),
                    (b, &id(), "two"),
                    (a, &id(), "three"),
                    (b, "not-a-uuid", "four"),
                ],
            );
            keep(&mut n, &[(b, &id(), "five"), (a, &id(), "six")]);
            message(&mut n);
            sync_all(&before, &mut n);
            assert_eq!(stored(&n.db), (vec![4], 4));
            // A peer holds them all as rows; `n` takes its events (its seed,
            // which holds no message). No row sorts after `n`'s entries.
            let mut peer = node("p");
            sync_all(&n, &mut peer);
            sync_all(&peer, &mut n);
            assert_eq!(stored(&peer.db).1, 0);
            assert_eq!(digest(&n), digest(&peer));
            // Then `z`'s message, which sorts after them.
            sync_all(&after, &mut n);
            sync_all(&n, &mut peer);
            assert_eq!(digest(&n), digest(&peer));
            // A fresh node, without them, differs.
            assert_ne!(digest(&n), digest(&node("q")));
            // Retention on both: `n` raises `a`'s floor to the first kept
            // message, the peer deletes its row.
            let origin = n.db.origin().messages();
            let floor = (
                i64::try_from(kept[0].hlc).unwrap(),
                origin.node.clone(),
                origin.incarnation.clone(),
                1,
            );
            blocks::raise_floor(&n.db.conn, a, &floor).unwrap();
            assert_ne!(digest(&n), digest(&peer));
            peer.db
                .conn
                .execute(
                    "DELETE FROM events WHERE origin = ?1 AND incarnation = ?2 AND seq = 1",
                    params![origin.node, origin.incarnation],
                )
                .unwrap();
            assert_eq!(digest(&n), digest(&peer));
        }
    }
}
