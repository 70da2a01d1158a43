//! `send`: relay a message to every connection of every member of a topic,
//! and `history`: page through what a topic kept.
//!
//! The relayed packet is serialized once; the sender's `ack` carries the
//! server-assigned `id` and `ts` it was relayed with. Where the topic keeps
//! history, the message is committed (group commit) before anyone sees it
//! and before the `ack`; where it does not, it never touches the store.

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{Denied, LoggedIn, Outcome, Session};
use crate::change::{Change, Message};
use crate::proto::id::{new_uuid, now_ms};
use crate::proto::packet::{encode_relay, parse_ex};
use crate::proto::request::Bound;
use crate::proto::{ErrorCode, Packet, reply};
use crate::router::acl::Flag;
use crate::store::{Event, Pending, TopicRecord};

/// Kept messages one connection may have waiting for their commit.
pub(super) const MAX_INFLIGHT: usize = 256;

/// What waits in a session's pipeline, in request order.
pub(super) enum InFlight {
    /// A kept message queued for commit, with what to do once it is durable.
    Commit {
        commit: Pending,
        relay: Packet,
        topic: std::sync::Arc<TopicRecord>,
        request_id: Option<String>,
    },
    /// A reply, encoded, that must not overtake the commits queued before it.
    Ready(Bytes),
}
use crate::store::history::Cursor;

impl Session<'_> {
    pub(super) async fn handle_send(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        mut ex: Map<String, Value>,
        raw_ex: Option<&RawValue>,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        if !t.members.contains(&me.id) {
            return Err(Denied::new(
                ErrorCode::TopicNotMember,
                "join the topic before sending to it",
            ));
        }
        if !t.acl.allows(self.actor(me), Flag::Write) {
            return Err(Denied::new(
                ErrorCode::AclDenied,
                "the topic's ACL does not let you send to it",
            ));
        }
        let kept = self.keeps_history(&t);
        if let Some(raw) = raw_ex {
            if !kept {
                return self.send_as_sent(id, me, &t, raw).await;
            }
            // A kept message is stored as a map.
            ex = parse_ex(raw).map_err(|e| Denied::new(e.code, e.message))?;
        }
        // `ex.for` is the server's: a relayed packet must not look like a
        // reply to one of the recipients' requests.
        ex.remove("for");
        let mut relay = Packet::server("send").with_from(me.name.as_str());
        relay.topic = Some(t.id.to_string());
        relay.ex = ex;
        let line = relay.to_line();
        self.check_relay_size(&line)?;
        if !kept {
            return self.relay_now(id, relay_stamp(&relay), &line, &t).await;
        }
        let message = Message {
            topic: t.id,
            id: relay.id.clone().unwrap_or_default(),
            ts: 0,
            sender: me.id,
            ex: relay.ex.clone(),
        };
        // Queue the commit and go on reading: the next sends join the same
        // group commit. Relay and ack follow the commit, in request order.
        let commit = self.ctx.store.enqueue(Change::message(message)).await?;
        self.inflight.push_back(InFlight::Commit {
            commit,
            relay,
            topic: t,
            request_id: id.map(str::to_owned),
        });
        if self.inflight.len() >= MAX_INFLIGHT {
            return Ok(self.complete_next().await);
        }
        Ok(Outcome::Continue)
    }

    /// A message not kept, whose `ex` (no `for` in it) is relayed as the
    /// sender wrote it: the relay is written in one pass from its parts.
    async fn send_as_sent(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        t: &TopicRecord,
        ex: &RawValue,
    ) -> Result<Outcome, Denied> {
        let mut buf = uuid::Uuid::encode_buffer();
        let message_id: &str = new_uuid().hyphenated().encode_lower(&mut buf);
        let ts = now_ms();
        let mut topic = uuid::Uuid::encode_buffer();
        let topic = t.id.hyphenated().encode_lower(&mut topic);
        let line = encode_relay(message_id, ts, topic, &me.name, ex);
        self.check_relay_size(&line)?;
        self.relay_now(id, (message_id, ts), &line, t).await
    }

    /// The relay adds id, ts, topic and from: it must still fit a line, or
    /// receivers that enforce the same limit would refuse it.
    fn check_relay_size(&self, line: &Bytes) -> Result<(), Denied> {
        let size = line.len().saturating_sub(1);
        if size > self.ctx.max_line_bytes {
            return Err(Denied::new(
                ErrorCode::PacketTooLarge,
                format!(
                    "relayed, this message would be {size} bytes; the line limit is {}",
                    self.ctx.max_line_bytes
                ),
            ));
        }
        Ok(())
    }

    /// A message never stored: relayed now, behind any kept message still
    /// committing, and acknowledged.
    async fn relay_now(
        &mut self,
        id: Option<&str>,
        (message_id, ts): (&str, i64),
        line: &Bytes,
        t: &TopicRecord,
    ) -> Result<Outcome, Denied> {
        if let Outcome::Close(r) = self.drain().await {
            return Ok(Outcome::Close(r));
        }
        let ack = self.relay(message_id, ts, line, t, id);
        Ok(self.reply_line(ack))
    }

    /// Whether kept messages are waiting for their commit.
    pub fn has_inflight(&self) -> bool {
        !self.inflight.is_empty()
    }

    /// Waits for the oldest in-flight entry: for a kept message, its commit,
    /// then relays and acknowledges it; a ready reply goes out at once.
    /// Cancel-safe: nothing is taken out until the commit is in.
    pub async fn complete_next(&mut self) -> Outcome {
        let result = match self.inflight.front_mut() {
            None => return Outcome::Continue,
            Some(InFlight::Ready(_)) => None,
            Some(InFlight::Commit { commit, .. }) => Some(commit.committed().await),
        };
        let entry = self.inflight.pop_front();
        match (entry, result) {
            (Some(InFlight::Ready(p)), _) => self.push_now(p),
            (
                Some(InFlight::Commit {
                    relay,
                    topic,
                    request_id,
                    ..
                }),
                Some(result),
            ) => {
                let answer = self.committed(relay, &topic, request_id.as_deref(), result);
                self.push_now(answer)
            }
            _ => Outcome::Continue,
        }
    }

    /// At the end of a session: every queued message is committed and then
    /// relayed to the other members, and every queued reply (acks, errors,
    /// a final `bye`) is still offered to this client, in order, even when
    /// it can no longer take them.
    pub async fn finish(&mut self) {
        while let Some(entry) = self.inflight.pop_front() {
            match entry {
                InFlight::Ready(line) => {
                    let _ = self.out.push_bytes(line, false);
                }
                InFlight::Commit {
                    commit,
                    relay,
                    topic,
                    request_id,
                } => {
                    let result = commit.wait().await;
                    let answer = self.committed(relay, &topic, request_id.as_deref(), result);
                    let _ = self.out.push_bytes(answer, false);
                }
            }
        }
    }

    /// A kept message's commit is in: relay it stamped with the commit's
    /// clock (so paging history by time agrees with what was seen) and
    /// return the sender's ack; or return the error if it was not stored.
    fn committed(
        &self,
        mut relay: Packet,
        topic: &TopicRecord,
        request_id: Option<&str>,
        result: Result<Event, crate::store::Error>,
    ) -> Bytes {
        match result {
            Ok(event) => {
                relay.ts = i64::try_from(event.hlc >> 16).ok();
                let line = relay.to_line();
                let (message_id, ts) = relay_stamp(&relay);
                self.relay(message_id, ts, &line, topic, request_id)
            }
            Err(e) => Denied::from(e).into_packet(request_id).to_line(),
        }
    }

    /// Delivers a relayed message (`line`, serialized once) to every
    /// connection of the topic's members but this one, and returns the
    /// sender's ack carrying the relay's id and ts.
    fn relay(
        &self,
        message_id: &str,
        ts: i64,
        line: &Bytes,
        topic: &TopicRecord,
        request_id: Option<&str>,
    ) -> Bytes {
        self.ctx
            .presence
            .deliver(topic.members.iter(), line, self.conn_id);
        reply::send_ack(request_id, message_id, ts)
    }

    /// Completes every in-flight message, in order.
    pub async fn drain(&mut self) -> Outcome {
        while self.has_inflight() {
            if let Outcome::Close(r) = self.complete_next().await {
                return Outcome::Close(r);
            }
        }
        Outcome::Continue
    }

    fn keeps_history(&self, t: &TopicRecord) -> bool {
        self.ctx.history.enabled && t.meta.get("history") != Some(&Value::Bool(false))
    }

    pub(super) async fn handle_history(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        before: Option<Bound>,
        after: Option<Bound>,
        limit: Option<usize>,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        if !t.acl.allows(self.actor(me), Flag::Read) {
            return Err(Denied::new(
                ErrorCode::AclDenied,
                "the topic's ACL does not let you read it",
            ));
        }
        let limit = limit.unwrap_or(50).min(self.ctx.history.max_page);
        let cursor = |b: Bound| match b {
            Bound::Id(s) => Cursor::Id(s),
            Bound::Time(ms) => Cursor::Time(ms),
        };
        // A page without `after` reads backwards from `before` (or now).
        let backwards = after.is_none();
        let (before, after) = (before.map(cursor), after.map(cursor));
        let tid = t.id;
        let (page, names) = self
            .ctx
            .store
            .call(move |db| {
                let page = db.history(tid, before.as_ref(), after.as_ref(), limit)?;
                let senders: Vec<uuid::Uuid> = page.messages.iter().map(|m| m.sender).collect();
                let names = db.account_names(&senders)?;
                Ok((page, names))
            })
            .await?;
        // One answer within the line limit: when the page would not fit,
        // keep the messages nearest the cursor and say there is more.
        let budget = self.ctx.max_line_bytes.saturating_sub(1024);
        let mut used = 0;
        let mut more = page.more;
        let mut items: Vec<&Message> = page.messages.iter().collect();
        if backwards {
            items.reverse();
        }
        let mut rendered = Vec::with_capacity(items.len());
        for m in items {
            let mut p = Packet::request("send");
            p.id = Some(m.id.clone());
            p.ts = Some(m.ts);
            p.topic = Some(t.id.to_string());
            p.from = Some(
                names
                    .get(&m.sender)
                    .cloned()
                    .unwrap_or_else(|| format!("account:{}", m.sender)),
            );
            p.ex = m.ex.clone();
            let v = serde_json::to_value(&p).unwrap_or(Value::Null);
            let size = v.to_string().len() + 1;
            if used + size > budget {
                more = true;
                break;
            }
            used += size;
            rendered.push(v);
        }
        if backwards {
            rendered.reverse();
        }
        let mut answer = Packet::server("history")
            .with("messages", Value::Array(rendered))
            .with("more", more);
        answer.topic = Some(t.id.to_string());
        answer = answer.answering(id);
        Ok(self.reply(answer))
    }
}

/// The id and ts a relay was stamped with, for its ack.
fn relay_stamp(relay: &Packet) -> (&str, i64) {
    (
        relay.id.as_deref().unwrap_or_default(),
        relay.ts.unwrap_or_default(),
    )
}
