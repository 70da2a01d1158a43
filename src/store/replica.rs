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
    /// It claims this store's own origin, which only this store writes.
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
    ) -> Result<Vec<Event>, Error> {
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
        let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt(e.to_string());
        let mut out = Vec::new();
        for row in rows {
            let (seq, hlc, body) = row?;
            out.push(Event {
                node: node.to_owned(),
                incarnation: inc.to_owned(),
                seq: u64::try_from(seq).map_err(|e| corrupt(&e))?,
                hlc: u64::try_from(hlc).map_err(|e| corrupt(&e))?,
                change: serde_json::from_str(&body).map_err(|e| corrupt(&e))?,
            });
        }
        Ok(out)
    }

    /// Records and applies events from peers in one transaction, each
    /// through the one apply path; the node's clock moves past every clock
    /// it sees, so a later local change wins over what it has seen.
    pub fn receive(&mut self, batch: Vec<Incoming>) -> Result<Vec<Received>, Error> {
        let own = (self.origin.node.clone(), self.origin.incarnation.clone());
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut clock = log::read_clock(&tx)?;
        let mut held: BTreeMap<String, u64> = BTreeMap::new();
        let mut out = Vec::with_capacity(batch.len());
        for Incoming { event, prev } in batch {
            if event.node == own.0 && event.incarnation == own.1 {
                out.push(Received::OwnOrigin);
                continue;
            }
            let key = origin_key(&event.node, &event.incarnation);
            let have = match held.get(&key) {
                Some(h) => *h,
                None => log::seen_seq(&tx, &event.node, &event.incarnation)?,
            };
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
            log::insert(&tx, &event)?;
            log::apply(&tx, &key, event.hlc, &event.change)?;
            clock = clock.max(event.hlc);
            held.insert(key, event.seq);
            out.push(Received::Applied(Box::new(event)));
        }
        for (key, seq) in &held {
            if let Some((node, inc)) = split_origin(key) {
                log::set_seen_seq(&tx, node, inc, *seq)?;
            }
        }
        log::write_clock(&tx, clock)?;
        tx.commit()?;
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
    ) -> Result<(VersionVector, Vec<(Event, u64)>), Error> {
        let held = self.version_vector()?;
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
            for event in self.events_after(origin, prev, room)? {
                let seq = event.seq;
                out.push((event, prev));
                prev = seq;
            }
        }
        Ok((held, out))
    }
}
