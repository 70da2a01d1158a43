//! `mark`: read markers. Where an account has read up to in a topic is one
//! register of the account, set from any of its connections; the others
//! are told at once, and every login reports it with the unread count.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Value, json};
use uuid::Uuid;

use super::{Denied, LoggedIn, Outcome, Session};
use crate::proto::{ErrorCode, Packet, reply};
use crate::store::TopicRecord;
use crate::store::marker::{Marker, Unread};

/// What an account has read of one topic.
pub(super) struct ReadState {
    marker: Option<Marker>,
    unread: Unread,
}

impl ReadState {
    /// Adds `read` (absent without a marker), `unread` and, when the count
    /// stopped at its bound, `unread_more` to a packet's `ex`.
    pub(super) fn write_into(&self, p: &mut Packet) {
        if let Some(m) = &self.marker {
            p.ex.insert("read".into(), json!({"id": m.id, "ts": m.ts}));
        }
        p.ex.insert("unread".into(), Value::from(self.unread.count));
        if self.unread.capped {
            p.ex.insert("unread_more".into(), Value::Bool(true));
        }
    }
}

/// How a `mark` request ended at the store.
enum Marked {
    /// No kept message of the topic has that id.
    Unknown,
    /// The marker now (moved, or already further on), and whether it moved.
    Now(ReadState, bool),
}

impl Session<'_> {
    pub(super) async fn handle_mark(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        message: Option<String>,
    ) -> Result<Outcome, Denied> {
        let t = self.readable(me, topic)?;
        let (tid, account, cap) = (t.id, me.id, self.ctx.history.max_unread);
        let Some(message) = message else {
            let state = self
                .ctx
                .store
                .call(move |db| {
                    let marker = db.marker(account, tid)?;
                    let unread = db.unread(tid, account, marker.as_ref(), cap)?;
                    Ok(ReadState { marker, unread })
                })
                .await?;
            let mut p = Packet::server("mark").with_from(me.name.clone());
            p.topic = Some(tid.to_string());
            state.write_into(&mut p);
            return Ok(self.reply(p.answering(id)));
        };
        let marked = self
            .ctx
            .store
            .call_synced(move |db| {
                let Some(kept) = db.kept_message(tid, &message)? else {
                    return Ok(Marked::Unknown);
                };
                let wanted = Marker {
                    id: kept.id,
                    ts: kept.ts,
                };
                // A marker only moves forward: a device that read less
                // than another must not take the account back.
                let current = db.marker(account, tid)?;
                let moves = match &current {
                    Some(c) => db.marker_is_after(tid, &wanted, c)?,
                    None => true,
                };
                let marker = match (moves, current) {
                    (false, Some(c)) => c,
                    _ => {
                        db.set_marker(account, tid, &wanted)?;
                        wanted
                    }
                };
                let unread = db.unread(tid, account, Some(&marker), cap)?;
                let state = ReadState {
                    marker: Some(marker),
                    unread,
                };
                Ok(Marked::Now(state, moves))
            })
            .await?;
        let (state, moved) = match marked {
            Marked::Unknown => {
                return Err(Denied::new(
                    ErrorCode::MessageNotFound,
                    "the topic keeps no message with that id",
                ));
            }
            Marked::Now(state, moved) => (state, moved),
        };
        if moved {
            let mut event = Packet::server("mark").with_from(me.name.clone());
            event.topic = Some(tid.to_string());
            state.write_into(&mut event);
            self.ctx
                .presence
                .deliver([&me.id], &event.to_line(), 1, self.conn_id);
        }
        let mut ack = reply::ack(id);
        state.write_into(&mut ack);
        Ok(self.reply(ack))
    }

    /// What `me` has read of each topic in `topics` that keeps history,
    /// for the login sequence.
    pub(super) async fn read_states(
        &self,
        me: &LoggedIn,
        topics: &[Arc<TopicRecord>],
    ) -> Result<HashMap<Uuid, ReadState>, Denied> {
        let kept: Vec<Uuid> = topics
            .iter()
            .filter(|t| self.keeps_history(t))
            .map(|t| t.id)
            .collect();
        if kept.is_empty() {
            return Ok(HashMap::new());
        }
        let (account, cap) = (me.id, self.ctx.history.max_unread);
        Ok(self
            .ctx
            .store
            .call(move |db| {
                let mut markers: HashMap<Uuid, Marker> = db.markers(account)?.into_iter().collect();
                let mut out = HashMap::with_capacity(kept.len());
                for tid in kept {
                    let marker = markers.remove(&tid);
                    let unread = db.unread(tid, account, marker.as_ref(), cap)?;
                    out.insert(tid, ReadState { marker, unread });
                }
                Ok(out)
            })
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, Value};
    use uuid::Uuid;

    use super::super::{Outcome, testing};
    use crate::change::{Change, ExJson, Message};
    use crate::store::log::Event;
    use crate::store::replica::Incoming;

    /// Message `id` of `topic` from `sender`, as node `node` sends it with
    /// clock `hlc` (its first event).
    fn from_peer(node: &str, hlc: u64, topic: Uuid, id: &str, sender: Uuid) -> Incoming {
        let change = Change::message(Message {
            topic,
            id: id.to_owned(),
            ts: 0,
            sender,
            ex: ExJson::empty(),
        });
        let body = serde_json::to_string(&change).unwrap();
        let event = Event {
            node: node.to_owned(),
            incarnation: "i".to_owned(),
            seq: 1,
            hlc,
            change,
        };
        Incoming {
            event,
            prev: 0,
            body,
        }
    }

    /// Two messages of one millisecond, from two nodes, lie in history in
    /// clock order, which need not be their ids' order: the marker follows
    /// history, reaching the later one and never going back to the earlier.
    #[tokio::test]
    async fn a_marker_follows_history_order_within_a_millisecond() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let (me, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let topic = super::super::topic::create_cached(
            &ctx.store,
            &ctx.topics,
            "t".into(),
            me,
            Map::new(),
            1,
        )
        .await
        .unwrap()
        .unwrap()
        .id;
        // History: "z" (clock ms.0), then "a" (clock ms.1).
        let ms = u64::try_from(crate::proto::id::now_ms()).unwrap();
        let batch = vec![
            from_peer("p", ms << 16, topic, "z", bob),
            from_peer("q", (ms << 16) + 1, topic, "a", bob),
        ];
        ctx.store
            .call_synced(move |db| db.receive(batch).map(|_| ()))
            .await
            .unwrap();
        let (mut s, mut rx) = testing::session(&ctx, me, "dan", 1);
        let mut mark = async |id: &str| {
            let line =
                format!(r#"{{"op":"mark","id":"r","topic":"{topic}","ex":{{"id":"{id}"}}}}"#);
            assert_eq!(s.handle_line(line.as_bytes()).await, Outcome::Continue);
            let answer: Value = serde_json::from_str(testing::replies(&mut rx).trim()).unwrap();
            (
                answer["ex"]["read"]["id"].as_str().unwrap().to_owned(),
                answer["ex"]["unread"].as_u64().unwrap(),
            )
        };
        assert_eq!(mark("z").await, ("z".to_owned(), 1));
        assert_eq!(mark("a").await, ("a".to_owned(), 0), "the newest message");
        assert_eq!(mark("z").await, ("a".to_owned(), 0), "never back");
        ctx.store.close().await;
    }
}
