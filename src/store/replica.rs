//! What the mesh needs of the store: the version vector, the log read as a
//! cursor from any position, events from peers received through the same
//! [`log::apply`] as local changes, and a digest of the replicated state.
//!
//! An event from a peer carries `prev`: the seq of the event before it in
//! the sender's log for that origin. Pruned history leaves holes in a log,
//! so "gapless" means "nothing between `prev` and `seq` that the sender
//! holds": an event is taken when this store already holds `prev`.

use std::collections::BTreeMap;

use rusqlite::{TransactionBehavior, params};
use serde::{Deserialize, Serialize};

use super::log::{self, Event};
use super::search::IndexQueue;
use super::{Db, Error};

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

    /// Up to `limit` events of `origin` after `after`, in seq order.
    pub fn events_after(
        &self,
        origin: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<RawEvent>, Error> {
        let Some((node, inc)) = split_origin(origin) else {
            return Ok(Vec::new());
        };
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
        tx.commit()?;
        self.commits += 1;
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
        let mut stmt = self.conn.prepare(
            "SELECT origin, incarnation, seq FROM events WHERE topic IS NOT NULL
             ORDER BY origin, incarnation, seq",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let (o, i, s): (String, String, i64) = (r.get(0)?, r.get(1)?, r.get(2)?);
            ctx.update(format!("{o}/{i}/{s}\x1e").as_bytes());
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
}
