//! Topic history: messages are events of kind `message`, indexed by topic
//! and read in history order `(hlc, origin, seq)`. Retention prunes only
//! message events; registers are never pruned.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::blocks::{self, Found};
use super::{Db, Error};
use crate::change::{Change, Message};

/// Where a page of history starts or ends (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    /// A message's id.
    Id(String),
    /// A time, Unix ms.
    Time(i64),
}

/// A page of history, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The messages.
    pub messages: Vec<Message>,
    /// More messages lie beyond the page in the direction asked.
    pub more: bool,
}

/// History order position: `(hlc, origin, incarnation, seq)`.
type Position = blocks::HistoryPos;

impl Db {
    /// Where a cursor lies in `topic`'s history; `None` for an id that names
    /// no kept message.
    pub(super) fn position(
        &self,
        topic: Uuid,
        cursor: &Cursor,
        upper: bool,
    ) -> Result<Option<Position>, Error> {
        match cursor {
            Cursor::Time(ms) => {
                // Every position within the millisecond sorts after (lower
                // bound) or before (upper bound) this one.
                let hlc = ms.saturating_mul(1 << 16);
                Ok(Some(if upper {
                    (hlc, String::new(), String::new(), 0)
                } else {
                    (
                        hlc.saturating_add((1 << 16) - 1),
                        "\u{10FFFF}".into(),
                        String::new(),
                        i64::MAX,
                    )
                }))
            }
            Cursor::Id(id) => {
                let row = self
                    .conn
                    .prepare_cached(
                        "SELECT hlc, origin, incarnation, seq FROM events
                         WHERE topic = ?1 AND message_id = ?2 LIMIT 1",
                    )?
                    .query_row(params![topic.to_string(), id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })
                    .optional()?;
                match row {
                    Some(p) => Ok(Some(p)),
                    None => Ok(self
                        .kept_entry(topic, id)?
                        .map(|f| self.own_position(&f.entry))),
                }
            }
        }
    }

    /// This node's kept message `id` of `topic` in a block, unless pruned.
    pub(super) fn kept_entry(&self, topic: Uuid, id: &str) -> Result<Option<Found>, Error> {
        blocks::live_id(&self.conn, topic, id, || Ok(self.origin.messages()))
    }

    /// A block entry's place in history order: this node's message origin.
    fn own_position(&self, e: &blocks::Entry) -> Position {
        let origin = self.origin.messages();
        (
            i64::try_from(e.hlc).unwrap_or(i64::MAX),
            origin.node,
            origin.incarnation,
            i64::try_from(e.seq).unwrap_or(i64::MAX),
        )
    }

    /// Up to `fetch` of `topic`'s block entries strictly between `lower`
    /// and `upper` in history order, unpruned: the oldest ones when
    /// `forward`, else the newest (newest first).
    fn own_page(
        &self,
        topic: Uuid,
        (lower, upper): (&Position, &Position),
        fetch: usize,
        forward: bool,
    ) -> Result<Vec<(Position, Found)>, Error> {
        let floor = blocks::floor(&self.conn, topic)?;
        let lower = floor
            .filter(|f| f > lower)
            .as_ref()
            .unwrap_or(lower)
            .clone();
        let mut walk = blocks::Walk::new(
            &self.conn,
            topic,
            if forward { lower.0 } else { upper.0 },
            forward,
        );
        let mut out = Vec::new();
        while out.len() < fetch {
            let Some(f) = walk.next_entry()? else {
                break;
            };
            let p = self.own_position(&f.entry);
            let (inside, past) = if forward {
                (p > lower, p >= *upper)
            } else {
                (p < *upper, p <= lower)
            };
            if past {
                break;
            }
            if inside {
                out.push((p, f));
            }
        }
        Ok(out)
    }

    /// Up to `limit` messages of `topic` strictly between the cursors: the
    /// newest ones before `before` when `after` is not given, else the
    /// oldest ones after `after`. Unknown id cursors give an empty page.
    pub fn history(
        &self,
        topic: Uuid,
        before: Option<&Cursor>,
        after: Option<&Cursor>,
        limit: usize,
    ) -> Result<Page, Error> {
        let upper = match before {
            Some(c) => match self.position(topic, c, true)? {
                Some(p) => p,
                None => {
                    return Ok(Page {
                        messages: Vec::new(),
                        more: false,
                    });
                }
            },
            None => (i64::MAX, String::new(), String::new(), 0),
        };
        let lower = match after {
            Some(c) => match self.position(topic, c, false)? {
                Some(p) => p,
                None => {
                    return Ok(Page {
                        messages: Vec::new(),
                        more: false,
                    });
                }
            },
            None => (i64::MIN, String::new(), String::new(), 0),
        };
        let forward = after.is_some();
        let sql = format!(
            "SELECT hlc, body, origin, incarnation, seq FROM events
             WHERE topic = ?1 AND kind = 'message'
               AND (hlc, origin, incarnation, seq) > (?2, ?3, ?4, ?5)
               AND (hlc, origin, incarnation, seq) < (?6, ?7, ?8, ?9)
             ORDER BY hlc {dir}, origin {dir}, incarnation {dir}, seq {dir} LIMIT ?10",
            dir = if forward { "ASC" } else { "DESC" }
        );
        let mut stmt = self.conn.prepare_cached(&sql)?;
        let fetch = i64::try_from(limit.saturating_add(1)).unwrap_or(i64::MAX);
        let rows = stmt.query_map(
            params![
                topic.to_string(),
                lower.0,
                lower.1,
                lower.2,
                lower.3,
                upper.0,
                upper.1,
                upper.2,
                upper.3,
                fetch
            ],
            |r| {
                Ok((
                    (r.get::<_, i64>(0)?, r.get(2)?, r.get(3)?, r.get(4)?),
                    r.get::<_, String>(1)?,
                ))
            },
        )?;
        // The rows (other nodes' messages) and this node's block entries,
        // merged in history order; bodies read only for the page's.
        let mut merged: Vec<(Position, Result<String, Found>)> = Vec::new();
        for row in rows {
            let (p, body) = row?;
            merged.push((p, Ok(body)));
        }
        for (p, f) in self.own_page(topic, (&lower, &upper), limit.saturating_add(1), forward)? {
            merged.push((p, Err(f)));
        }
        merged.sort_by(|a, b| {
            if forward {
                a.0.cmp(&b.0)
            } else {
                b.0.cmp(&a.0)
            }
        });
        merged.truncate(limit.saturating_add(1));
        let mut read = blocks::read_records(
            &self.log,
            merged.iter().filter_map(|(_, s)| s.as_ref().err()),
        )
        .into_iter();
        let mut messages = Vec::new();
        // This node's messages whose records are damaged: left out (with
        // an error in the log), not failing the page; counted for `more`.
        let mut damaged = 0;
        for (p, source) in merged {
            let change = match source {
                Ok(body) => serde_json::from_str::<Change>(&body)
                    .map_err(|e| Error::Corrupt(e.to_string()))?,
                Err(f) => match read.next().map(|r| r.and_then(|s| blocks::change(&s.body))) {
                    Some(Ok(change)) => change,
                    Some(Err(e)) if is_damage(&e) => {
                        tracing::error!(%topic, seq = f.entry.seq, error = %e,
                            "history: a kept message's record in the message log is damaged; \
                             it is left out of history pages");
                        damaged += 1;
                        continue;
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        return Err(Error::Corrupt("a history page's record went unread".into()));
                    }
                },
            };
            if let Some(mut m) = change.message {
                // A kept message's time is its commit clock's millisecond,
                // the same `ts` it was relayed with.
                m.ts = p.0 >> 16;
                messages.push(m);
            }
        }
        let more = messages.len() + damaged > limit;
        messages.truncate(limit);
        if !forward {
            messages.reverse();
        }
        Ok(Page { messages, more })
    }

    /// Drops a topic's messages older than `max_age_ms` (relative to
    /// `now_ms`) or beyond the newest `max_messages`, with the text their
    /// edits left. Returns how many. What goes is always a prefix of the
    /// topic's history: its end is recorded as the topic's floor, under
    /// which this node's block entries are no longer read, and blocks
    /// wholly under it are deleted (the message log's segments then go
    /// once no block points into them).
    pub fn prune_history(
        &mut self,
        topic: Uuid,
        now_ms: i64,
        max_age_ms: i64,
        max_messages: usize,
    ) -> Result<usize, Error> {
        let t = topic.to_string();
        let cutoff = now_ms.saturating_sub(max_age_ms).saturating_mul(1 << 16);
        // Every position of a clock under the cutoff sorts at or under it.
        let by_age: Position = (
            cutoff.saturating_sub(1),
            "\u{10FFFF}".into(),
            String::new(),
            i64::MAX,
        );
        // The newest message dropped by count, by its whole position:
        // messages of other nodes may share its clock.
        let floor = match self.nth_newest(topic, max_messages)? {
            Some(p) if p > by_age => p,
            _ => by_age,
        };
        let old = blocks::floor(&self.conn, topic)?;
        let origin = self.origin.messages();
        let own = (origin.node.as_str(), origin.incarnation.as_str());
        let (hlc, o, i, seq) = &floor;
        const DOOMED: &str = "topic = ?1 AND kind = 'message'
             AND (hlc, origin, incarnation, seq) <= (?2, ?3, ?4, ?5)";
        let log = std::sync::Arc::clone(&self.log);
        let tx = self.conn.transaction()?;
        // Edited messages among them: the edits' text goes too.
        let mut edited: Vec<String> = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT message_id FROM events WHERE {DOOMED} AND message_id IS NOT NULL
                 AND EXISTS (SELECT 1 FROM registers r WHERE r.entity = 'message:' || ?1 || '/' || message_id
                             AND r.field = 'edit' AND r.value != 'null')"
            ))?;
            let rows = stmt.query_map(params![t, hlc, o, i, seq], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<_, _>>()?
        };
        // This node's: the topic's edited messages (few) looked up.
        for id in super::edit::edited_ids(&tx, topic)? {
            let Ok(uuid) = Uuid::try_parse(&id) else {
                continue;
            };
            if let Some((b, index)) = blocks::find_id(&tx, topic, uuid)?
                && let Some(e) = b.entry(index)
                && blocks::above(old.as_ref(), own, &e)
                && !blocks::above(Some(&floor), own, &e)
            {
                edited.push(id);
            }
        }
        for id in &edited {
            super::edit::erase_edits(&tx, &super::edit::entity(topic, id))?;
        }
        let mut removed = tx.execute(
            &format!("DELETE FROM events WHERE {DOOMED}"),
            params![t, hlc, o, i, seq],
        )?;
        removed += blocks::with_log(&log, &origin, || {
            prune_blocks(&tx, topic, own, old.as_ref(), &floor)
        })?;
        blocks::raise_floor(&tx, topic, &floor)?;
        tx.commit()?;
        Ok(removed)
    }

    /// The position of `topic`'s message with `n` newer ones, if it has
    /// that many: the rows' and this node's block entries' merged.
    fn nth_newest(&self, topic: Uuid, n: usize) -> Result<Option<Position>, Error> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT hlc, origin, incarnation, seq FROM events WHERE topic = ?1 AND kind = 'message'
             ORDER BY hlc DESC, origin DESC, incarnation DESC, seq DESC",
        )?;
        let mut rows = stmt.query_map(params![topic.to_string()], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?;
        let floor = blocks::floor(&self.conn, topic)?;
        let mut walk = blocks::Walk::new(&self.conn, topic, i64::MAX, false);
        let mut own = || -> Result<Option<Position>, Error> {
            Ok(walk
                .next_entry()?
                .map(|f| self.own_position(&f.entry))
                .filter(|p| floor.as_ref().is_none_or(|f| p > f)))
        };
        let (mut row, mut entry): (Option<Position>, Option<Position>) =
            (rows.next().transpose()?, own()?);
        let mut seen = 0;
        loop {
            let newest = match (&row, &entry) {
                (None, None) => return Ok(None),
                (Some(r), Some(e)) if r > e => row.take(),
                (Some(_), None) => row.take(),
                _ => entry.take(),
            };
            if row.is_none() {
                row = rows.next().transpose()?;
            }
            if entry.is_none() {
                entry = own()?;
            }
            if seen == n {
                return Ok(newest);
            }
            seen += 1;
        }
    }

    /// Topics that have any history.
    pub fn topics_with_history(&self) -> Result<Vec<Uuid>, Error> {
        let mut stmt = self.conn.prepare(
            "SELECT DISTINCT topic FROM events WHERE topic IS NOT NULL
             UNION SELECT DISTINCT topic FROM blocks",
        )?;
        let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            if let Ok(id) = Uuid::parse_str(&row?) {
                out.push(id);
            }
        }
        Ok(out)
    }
}

/// Retention's work on this node's blocks of `topic`: the entries
/// between the `old` floor and the new `floor` leave the search index, and
/// blocks wholly under `floor` are deleted. Returns how many entries went.
/// Whether `e`, from reading a kept message's record, is damage (the
/// record does not check or decode, or its file is gone) rather than a
/// failure that may pass (a disk that fails a read).
fn is_damage(e: &Error) -> bool {
    match e {
        Error::Corrupt(_) => true,
        Error::MessageLog(e) => e.is_lost(),
        _ => false,
    }
}

fn prune_blocks(
    tx: &rusqlite::Transaction<'_>,
    topic: Uuid,
    own: (&str, &str),
    old: Option<&Position>,
    floor: &Position,
) -> Result<usize, Error> {
    let doomed: Vec<blocks::Block> = {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {} FROM blocks WHERE topic = ?1 AND first_hlc <= ?2 ORDER BY last_hlc",
            blocks::COLUMNS
        ))?;
        let rows = stmt.query_map(params![topic.to_string(), floor.0], blocks::from_row)?;
        rows.collect::<Result<_, _>>()?
    };
    let mut removed = 0;
    for b in doomed {
        let mut whole = true;
        for (_, e) in b.entries() {
            if blocks::above(Some(floor), own, &e) {
                whole = false;
                continue;
            }
            if blocks::above(old, own, &e) {
                removed += 1;
            }
        }
        // Their search entries go (those the pass has not reached have
        // none, and it passes pruned ones over).
        super::search::unindex_block(tx, &b, |e| !blocks::above(Some(floor), own, e))?;
        if whole {
            tx.prepare_cached("DELETE FROM blocks WHERE rowid = ?1")?
                .execute(params![b.rowid])?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::log;

    fn msg(topic: Uuid, n: i64) -> Message {
        Message {
            topic,
            id: format!("m{n}"),
            ts: n,
            sender: Uuid::nil(),
            ex: crate::change::ExJson::empty(),
        }
    }

    #[test]
    fn pages_both_ways_and_prunes() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let t = Uuid::now_v7();
        let other = Uuid::now_v7();
        for n in 0..10 {
            db.write(|tx, origin| {
                log::append(tx, origin, Change::message(msg(t, n)))?;
                log::append(tx, origin, Change::message(msg(other, 100 + n)))?;
                Ok(())
            })
            .unwrap();
        }
        let ids = |p: &Page| p.messages.iter().map(|m| m.id.clone()).collect::<Vec<_>>();
        let latest = db.history(t, None, None, 3).unwrap();
        assert_eq!(ids(&latest), ["m7", "m8", "m9"]);
        assert!(latest.more);
        let before = db
            .history(t, Some(&Cursor::Id("m7".into())), None, 3)
            .unwrap();
        assert_eq!(ids(&before), ["m4", "m5", "m6"]);
        let after = db
            .history(t, None, Some(&Cursor::Id("m7".into())), 5)
            .unwrap();
        assert_eq!(ids(&after), ["m8", "m9"]);
        assert!(!after.more);
        let between = db
            .history(
                t,
                Some(&Cursor::Id("m5".into())),
                Some(&Cursor::Id("m1".into())),
                10,
            )
            .unwrap();
        assert_eq!(ids(&between), ["m2", "m3", "m4"]);
        // An id is looked up in its own topic only, and exactly.
        for stranger in ["m100", "m%", "m_", "\"m7"] {
            assert!(
                db.history(t, Some(&Cursor::Id(stranger.into())), None, 3)
                    .unwrap()
                    .messages
                    .is_empty(),
                "{stranger}"
            );
        }
        assert!(
            db.history(t, Some(&Cursor::Id("nope".into())), None, 3)
                .unwrap()
                .messages
                .is_empty()
        );
        assert_eq!(db.prune_history(t, 0, i64::MAX / 2, 4).unwrap(), 6);
        assert_eq!(
            ids(&db.history(t, None, None, 10).unwrap()),
            ["m6", "m7", "m8", "m9"]
        );
        assert_eq!(
            db.history(other, None, None, 100).unwrap().messages.len(),
            10
        );
    }
}
