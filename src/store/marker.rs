//! Read markers: per account and topic, the last message the account has
//! read there. Each is one last-writer-wins register of the account
//! (`read:<topic uuid>`), so any device sets it and a mesh replicates it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::history::Cursor;
use super::{Db, Error, load_registers, log};
use crate::change::{Change, Entity, field};

/// Where an account has read up to in a topic: a kept message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    /// The message's id.
    pub id: String,
    /// The message's time, Unix ms: orders markers, and stands in for the
    /// message once retention has dropped it.
    pub ts: i64,
}

impl Marker {
    /// Whether `self` lies after `other`, judged by the markers alone: by
    /// time, then (within one millisecond) by id, which need not be history
    /// order; [`Db::marker_is_after`] orders kept messages as history does.
    pub fn is_after(&self, other: &Marker) -> bool {
        (self.ts, &self.id) > (other.ts, &other.id)
    }
}

/// Unread messages in a topic, counted up to a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unread {
    /// Messages from other accounts after the marker, at most the bound.
    pub count: usize,
    /// The bound was reached: there may be more.
    pub capped: bool,
}

fn register(topic: Uuid) -> String {
    format!("{}{topic}", field::READ_PREFIX)
}

impl Db {
    /// Sets `account`'s marker in `topic` (a register write in the log).
    pub fn set_marker(&mut self, account: Uuid, topic: Uuid, marker: &Marker) -> Result<(), Error> {
        let value = serde_json::to_value(marker).map_err(|e| Error::Corrupt(e.to_string()))?;
        let change =
            Change::new("account.read").set(Entity::Account(account), &register(topic), value);
        self.write(|tx, origin| log::append(tx, origin, change).map(|_| ()))
    }

    /// Whether `wanted` lies after `current` in `topic`'s history. Messages
    /// of one millisecond (two nodes', or two connections' committed in the
    /// other order than their ids were minted) are ordered by their places
    /// in history while both are kept; a marker whose message retention
    /// dropped is judged by [`Marker::is_after`].
    pub fn marker_is_after(
        &self,
        topic: Uuid,
        wanted: &Marker,
        current: &Marker,
    ) -> Result<bool, Error> {
        let place = |m: &Marker| self.position(topic, &Cursor::Id(m.id.clone()), false);
        Ok(match (place(wanted)?, place(current)?) {
            (Some(w), Some(c)) => w > c,
            _ => wanted.is_after(current),
        })
    }

    /// Every marker of `account`, by topic. A value that does not decode
    /// counts as no marker: a client can always set it again.
    pub fn markers(&self, account: Uuid) -> Result<Vec<(Uuid, Marker)>, Error> {
        let registers = load_registers(&self.conn, &Entity::Account(account).key())?;
        Ok(registers
            .into_iter()
            .filter_map(|(f, v)| {
                let topic = Uuid::parse_str(f.strip_prefix(field::READ_PREFIX)?).ok()?;
                Some((topic, serde_json::from_value(v).ok()?))
            })
            .collect())
    }

    /// `account`'s marker in `topic`, if it set one.
    pub fn marker(&self, account: Uuid, topic: Uuid) -> Result<Option<Marker>, Error> {
        Ok(self
            .markers(account)?
            .into_iter()
            .find_map(|(t, m)| (t == topic).then_some(m)))
    }

    /// Messages of `topic` after `marker` (all kept ones without a marker)
    /// that `account` did not send itself, counted up to `cap`.
    pub fn unread(
        &self,
        topic: Uuid,
        account: Uuid,
        marker: Option<&Marker>,
        cap: usize,
    ) -> Result<Unread, Error> {
        // Own messages are skipped, so read a little past the cap; a page
        // of one's own messages still ends the count with `capped`.
        let window = cap.saturating_mul(2).max(1);
        let mut page = match marker {
            Some(m) => self.history(topic, None, Some(&Cursor::Id(m.id.clone())), window)?,
            None => self.history(topic, None, Some(&Cursor::Time(i64::MIN)), window)?,
        };
        // An empty page after an id that retention dropped: count from the
        // millisecond after the marked message instead.
        if let (Some(m), true) = (marker, page.messages.is_empty()) {
            page = self.history(topic, None, Some(&Cursor::Time(m.ts)), window)?;
        }
        let others = page.messages.iter().filter(|m| m.sender != account).count();
        Ok(Unread {
            count: others.min(cap),
            capped: others >= cap || page.more,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::change::Message;

    fn send(db: &mut Db, topic: Uuid, sender: Uuid, n: usize) -> Marker {
        let message = Message {
            topic,
            id: format!("m{n}"),
            ts: 0,
            sender,
            ex: crate::change::ExJson::empty(),
        };
        let event = db
            .write(|tx, origin| log::append(tx, origin, Change::message(message)))
            .unwrap();
        Marker {
            id: format!("m{n}"),
            ts: i64::try_from(event.hlc >> 16).unwrap(),
        }
    }

    #[test]
    fn counts_what_others_sent_after_the_marker() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let (t, me, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
        let marks: Vec<Marker> = (0..6)
            .map(|n| send(&mut db, t, if n == 3 { me } else { other }, n))
            .collect();
        let none = db.unread(t, me, None, 100).unwrap();
        assert_eq!((none.count, none.capped), (5, false));
        // After m1: m2, m4, m5 (m3 is mine).
        let after = db.unread(t, me, Some(&marks[1]), 100).unwrap();
        assert_eq!((after.count, after.capped), (3, false));
        let capped = db.unread(t, me, Some(&marks[1]), 2).unwrap();
        assert_eq!((capped.count, capped.capped), (2, true));
        assert_eq!(db.kept_message(t, "m4").unwrap().unwrap().ts, marks[4].ts);
        assert!(db.kept_message(t, "m9").unwrap().is_none());

        assert!(db.marker(me, t).unwrap().is_none());
        db.set_marker(me, t, &marks[2]).unwrap();
        drop(db);
        let db = Db::open(dir.path(), "n1").unwrap();
        assert_eq!(db.marker(me, t).unwrap(), Some(marks[2].clone()));
        assert_eq!(db.markers(me).unwrap(), [(t, marks[2].clone())]);
        assert!(marks[3].is_after(&marks[2]) && !marks[2].is_after(&marks[2]));
    }

    #[test]
    fn deleting_an_account_clears_its_markers() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let me = db.create_account("dan", "h").unwrap().id;
        let t = Uuid::now_v7();
        let mark = send(&mut db, t, Uuid::now_v7(), 0);
        db.set_marker(me, t, &mark).unwrap();
        assert_eq!(db.markers(me).unwrap().len(), 1);
        db.delete_account(me).unwrap();
        assert!(db.markers(me).unwrap().is_empty());
    }
}
