//! Topic history: messages are events of kind `message`, indexed by topic
//! and read in history order `(hlc, origin, seq)`. Retention prunes only
//! message events; registers are never pruned.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

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
type Position = (i64, String, String, i64);

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
            Cursor::Id(id) => Ok(self
                .conn
                .prepare_cached(
                    "SELECT hlc, origin, incarnation, seq FROM events
                     WHERE topic = ?1 AND message_id = ?2 LIMIT 1",
                )?
                .query_row(params![topic.to_string(), id], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .optional()?),
        }
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
            "SELECT hlc, body FROM events
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
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )?;
        let mut messages = Vec::new();
        for row in rows {
            let (hlc, body) = row?;
            let change: Change =
                serde_json::from_str(&body).map_err(|e| Error::Corrupt(e.to_string()))?;
            if let Some(mut m) = change.message {
                // A kept message's time is its commit clock's millisecond,
                // the same `ts` it was relayed with.
                m.ts = hlc >> 16;
                messages.push(m);
            }
        }
        let more = messages.len() > limit;
        messages.truncate(limit);
        if !forward {
            messages.reverse();
        }
        Ok(Page { messages, more })
    }

    /// Drops a topic's messages older than `max_age_ms` (relative to
    /// `now_ms`) or beyond the newest `max_messages`, with the text their
    /// edits left. Returns how many.
    pub fn prune_history(
        &mut self,
        topic: Uuid,
        now_ms: i64,
        max_age_ms: i64,
        max_messages: usize,
    ) -> Result<usize, Error> {
        let t = topic.to_string();
        let cutoff = now_ms.saturating_sub(max_age_ms).saturating_mul(1 << 16);
        // The newest message dropped by count, by its whole position:
        // messages of other nodes may share its clock.
        let boundary: Option<(i64, String, String, i64)> = self
            .conn
            .query_row(
                "SELECT hlc, origin, incarnation, seq FROM events WHERE topic = ?1 AND kind = 'message'
                 ORDER BY hlc DESC, origin DESC, incarnation DESC, seq DESC LIMIT 1 OFFSET ?2",
                params![t, i64::try_from(max_messages).unwrap_or(i64::MAX)],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let (hlc, origin, incarnation, seq) =
            boundary.unwrap_or((i64::MIN, String::new(), String::new(), i64::MIN));
        const DOOMED: &str = "topic = ?1 AND kind = 'message'
             AND (hlc < ?2 OR (hlc, origin, incarnation, seq) <= (?3, ?4, ?5, ?6))";
        let tx = self.conn.transaction()?;
        // Edited messages among them: the edits' text goes too.
        let edited: Vec<String> = {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT message_id FROM events WHERE {DOOMED} AND message_id IS NOT NULL
                 AND EXISTS (SELECT 1 FROM registers r WHERE r.entity = 'message:' || ?1 || '/' || message_id
                             AND r.field = 'edit' AND r.value != 'null')"
            ))?;
            let rows = stmt.query_map(params![t, cutoff, hlc, origin, incarnation, seq], |r| {
                r.get::<_, String>(0)
            })?;
            rows.collect::<Result<_, _>>()?
        };
        for id in &edited {
            super::edit::erase_edits(&tx, &super::edit::entity(topic, id))?;
        }
        let removed = tx.execute(
            &format!("DELETE FROM events WHERE {DOOMED}"),
            params![t, cutoff, hlc, origin, incarnation, seq],
        )?;
        tx.commit()?;
        Ok(removed)
    }

    /// Topics that have any history.
    pub fn topics_with_history(&self) -> Result<Vec<Uuid>, Error> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT topic FROM events WHERE topic IS NOT NULL")?;
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
