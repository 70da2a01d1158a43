//! One kept message, found by its id: for markers, edits and deletes, which
//! name a message and need to know who sent it and when.

use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::history::Cursor;
use super::{Db, Error};
use crate::change::{Change, Message};

impl Db {
    /// The kept message `id` of `topic`, with `ts` its commit millisecond;
    /// `None` when the topic holds no such message (never kept, pruned).
    pub fn kept_message(&self, topic: Uuid, id: &str) -> Result<Option<Message>, Error> {
        // This node's, in a block; else a row.
        if let Some(f) = self.kept_entry(topic, id)? {
            let change = super::blocks::read_change(&self.log, &f)?;
            return Ok(change.message.map(|mut m| {
                m.ts = i64::try_from(f.entry.hlc >> 16).unwrap_or_default();
                m
            }));
        }
        let Some((hlc, origin, incarnation, seq)) =
            self.position(topic, &Cursor::Id(id.to_owned()), false)?
        else {
            return Ok(None);
        };
        let body: Option<String> = self
            .conn
            .prepare_cached(
                "SELECT body FROM events WHERE origin = ?1 AND incarnation = ?2 AND seq = ?3",
            )?
            .query_row(params![origin, incarnation, seq], |r| r.get(0))
            .optional()?;
        let Some(body) = body else {
            return Ok(None);
        };
        let change: Change =
            serde_json::from_str(&body).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(change.message.map(|mut m| {
            m.ts = hlc >> 16;
            m
        }))
    }
}
