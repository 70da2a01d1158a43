//! `send`: relay a message to every connection of every member of a topic,
//! and `history`: page through what a topic kept.
//!
//! The relayed packet is serialized once; the sender's `ack` (for a `send`
//! with an `id`: one without is fire-and-forget) carries the
//! server-assigned `id` and `ts` it was relayed with. Where the topic keeps
//! history, the message is appended to the node's message log
//! ([`crate::store::message_log`]) as it is relayed, and stamped with the
//! log's clock; connection writers hold every relay and `ack` until the log
//! has synced it ([`crate::conn::writer`]), so nobody sees a kept message
//! before it is on disk. Where the topic keeps no history, the message
//! never touches the store.

use std::borrow::Cow;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::{CloseReason, Denied, LoggedIn, Outcome, Session};
use crate::change::Message;
use crate::proto::id::{UuidText, uuid_at, uuids_at};
use crate::proto::packet::{ExText, KeptSend, encode_line, relay_len, write_relay};
use crate::proto::reply::write_send_ack;
use crate::proto::request::Bound;
use crate::proto::{ErrorCode, Packet};
use crate::router::acl::{Actor, Flag};
use crate::router::frame_pool;
use crate::store::message_log::AppendError;
use crate::store::{self, TopicRecord};

/// Relay bytes a burst gathers at most before it is delivered.
const BURST_BYTES: usize = 64 * 1024;

use crate::store::history::Cursor;

/// The topic a session last sent to, as resolved at a version of the
/// topic table.
pub(super) struct LastTopic {
    /// The topic as the client named it.
    asked: String,
    version: u64,
    record: Arc<TopicRecord>,
    /// Its id, formatted.
    text: UuidText,
    /// Whether it keeps history.
    kept: bool,
    /// The account found to be allowed to send to it, once checked. A
    /// record never changes (a change makes a new one, at a new version),
    /// so neither does the verdict.
    may_send: Option<uuid::Uuid>,
}

/// Messages not kept that a session relayed from one burst of its client's
/// input, all to one topic, and their acks: delivered together, so each
/// recipient's queue takes one shared frame per burst, not one push per
/// message. The session delivers it before it waits for anything, replies
/// anything else or acts on another topic, so nothing overtakes it and it
/// never waits on anyone.
#[derive(Default)]
pub(super) struct Burst {
    /// The topic record the relays were sent under: its members get them.
    topic: Option<Arc<TopicRecord>>,
    /// The topic table's version when that record was read (or before):
    /// if the table has changed since, the relays go to the members the
    /// table holds when they are delivered.
    version: u64,
    relays: Vec<u8>,
    relay_count: usize,
    /// The acks, in request order, for the sender.
    acks: Vec<u8>,
    ack_count: usize,
    /// Room to reserve for the next burst's relays and acks: a little more
    /// than this one took, or than recent ones (it falls by an eighth a
    /// burst), so a steady sender's buffers are allocated once per burst
    /// and never regrown. A client's bursts alternate large and small when
    /// its writes do not fill whole TLS records (chatbench's 16 KiB writes
    /// make a full record and a small one): sized by the small one alone,
    /// the large one's buffer grew by doubling, seven copies a burst.
    hint: (usize, usize),
}

impl Burst {
    /// Appends the ack of the `send` whose `id` is `for_id`. One without an
    /// `id` has none: it is fire-and-forget (protocol.md, 9.1), so that a
    /// client that does not match replies to requests is not sent any.
    fn ack(
        &mut self,
        for_id: &str,
        now: i64,
        ack_id: &UuidText,
        message_id: &UuidText,
        message_ts: i64,
    ) {
        if self.acks.capacity() == 0 {
            self.acks = frame_pool::take(self.hint.1.max(BURST_ROOM.1));
        }
        write_send_ack(&mut self.acks, for_id, now, ack_id, message_id, message_ts);
        self.ack_count += 1;
    }
}

/// Carries relayed messages of topics that keep no history to the other
/// nodes of the mesh (the mesh implements it; sessions do not know links).
pub trait EphemeralRelay: Send + Sync {
    /// Hands relayed `send` lines (each ending in a newline) of `topic` to
    /// every link; never waits.
    fn publish(&self, topic: uuid::Uuid, lines: &Bytes);
}

/// Room a burst reserves at least, for relays and for acks.
const BURST_ROOM: (usize, usize) = (320, 160);

/// Whether `who` may send to `t`: a member, with the write flag.
fn may_send(t: &TopicRecord, who: Actor<'_>) -> Result<(), Denied> {
    if !t.members.contains(&who.account) {
        return Err(Denied::new(
            ErrorCode::TopicNotMember,
            "join the topic before sending to it",
        ));
    }
    if !t.acl.allows(who, Flag::Write) {
        return Err(Denied::new(
            ErrorCode::AclDenied,
            "the topic's ACL does not let you send to it",
        ));
    }
    Ok(())
}

/// A burst's buffer as a shared frame. It gives back what it does not use
/// when that is much: a frame may wait in a slow reader's queue, and should
/// not hold a burst's room for one message. Otherwise the buffer goes back
/// to the pool when the last writer is done with it.
fn trimmed(mut lines: Vec<u8>) -> Bytes {
    if lines.capacity() > 2 * lines.len() + 4096 {
        lines.shrink_to_fit();
        return Bytes::from(lines);
    }
    frame_pool::frame(lines)
}

/// A message's `ex` as relayed and kept: as sent when it could be relayed
/// so (numbers keep every digit; [`ExText`] is checked JSON text), else,
/// rarely (an empty `ex`, or one with `for`), rebuilt from the map without
/// `ex.for`, which is the server's (a relayed packet must not look like a
/// reply to one of the recipients' requests).
fn relayed_ex<'e>(
    ex: &Map<String, Value>,
    raw_ex: Option<ExText<'e>>,
) -> Result<Cow<'e, [u8]>, Denied> {
    match raw_ex {
        Some(raw) => Ok(Cow::Borrowed(raw.get())),
        None => {
            let mut ex = ex.clone();
            ex.remove("for");
            serde_json::to_vec(&ex).map(Cow::Owned).map_err(|_| {
                Denied::new(
                    ErrorCode::ServerInternal,
                    "the message could not be encoded",
                )
            })
        }
    }
}

impl Session<'_> {
    /// A message that could not be handled at once: kept, when the message
    /// log was full. What the burst holds goes out, this client is not read
    /// until the log has room, and then the message is checked and appended
    /// anew.
    pub(super) async fn handle_send(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        ex: &Map<String, Value>,
        raw_ex: Option<ExText<'_>>,
    ) -> Result<Outcome, Denied> {
        loop {
            let last = self.sendable(me, topic.as_bytes())?;
            let sent = self.send_to(id, me, &last, ex, raw_ex);
            self.last_topic = Some(last);
            if let Some(outcome) = sent? {
                return Ok(outcome);
            }
            if let Outcome::Close(r) = self.flush_burst() {
                return Ok(Outcome::Close(r));
            }
            self.ctx.store.messages().room().await;
        }
    }

    /// A message to the topic `last` resolved: relayed, and kept if the
    /// topic keeps history. `None` when the message log is full.
    fn send_to(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        last: &LastTopic,
        ex: &Map<String, Value>,
        raw_ex: Option<ExText<'_>>,
    ) -> Result<Option<Outcome>, Denied> {
        let at = (&last.record, last.version);
        if last.kept {
            self.keep_now(id, me, at, &last.text, ex, raw_ex)
        } else {
            self.send_now(id, me, at, &last.text, ex, raw_ex).map(Some)
        }
    }

    /// A kept message: appended to the message log, then relayed and
    /// acknowledged by way of the burst as [`Session::send_now`] does, with
    /// the log's clock as its `ts`. The writers hold both until the log has
    /// synced it. `None` when the log is full until its next sync.
    fn keep_now(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        (t, version): (&Arc<TopicRecord>, u64),
        topic_text: &UuidText,
        ex: &Map<String, Value>,
        raw_ex: Option<ExText<'_>>,
    ) -> Result<Option<Outcome>, Denied> {
        let ex = relayed_ex(ex, raw_ex)?;
        // A record's `ex` is JSON text (store/record.rs).
        let ex = std::str::from_utf8(&ex).map_err(|_| {
            Denied::new(
                ErrorCode::ServerInternal,
                "the message could not be encoded",
            )
        })?;
        // The burst's clock reading mints the ids; the log's stamps `ts`.
        let now = self.clock.unix_ms();
        let line = relay_len(now, &me.name_json, ex.as_bytes());
        self.check_kept_size(line.saturating_sub(1))?;
        // Minted under the log's lock, so that kept messages' ids rise
        // with their seqs: a topic's blocks then never overlap in ids, and
        // an id is looked up in one (store/blocks.rs).
        let mut minted = None;
        let appended = self.ctx.store.messages().append(now, |_, out| {
            let (message_id, ack) = match id {
                Some(for_id) => {
                    let [message, ack] = uuids_at(now);
                    (message, Some((for_id, ack)))
                }
                None => (uuid_at(now), None),
            };
            store::record::Kept {
                topic: t.id,
                id: message_id,
                sender: me.id,
                // The event's clock is its time.
                ts: 0,
                ex,
            }
            .encode_into(out);
            minted = Some((message_id, ack));
        });
        let entry = match appended {
            Ok(entry) => entry,
            Err(AppendError::Full) => return Ok(None),
            Err(e @ (AppendError::Closed | AppendError::Failed | AppendError::TooLarge)) => {
                tracing::error!(error = %e, "a kept message was refused");
                return Err(Denied::new(
                    ErrorCode::ServerInternal,
                    "the server could not keep the message",
                ));
            }
        };
        let Some((message_id, ack)) = minted else {
            return Err(Denied::new(
                ErrorCode::ServerInternal,
                "the server could not keep the message",
            ));
        };
        let message_id = UuidText::new(message_id);
        let ack = ack.map(|(for_id, ack)| (for_id, UuidText::new(ack)));
        self.kept_seq = entry.seq;
        self.ctx.metrics.kept();
        let opened = self.open_burst(t);
        let ts = i64::try_from(entry.hlc >> 16).unwrap_or_default();
        write_relay(
            &mut self.burst.relays,
            &message_id,
            ts,
            topic_text,
            &me.name_json,
            ex.as_bytes(),
        );
        if let Some((for_id, ack_id)) = ack {
            self.burst.ack(for_id, now, &ack_id, &message_id, ts);
        }
        Ok(Some(self.close_message(t, version, opened)))
    }

    /// A message handled without waiting, which is most of them: one not
    /// kept, or a kept one the message log has room for. `None` leaves it
    /// to [`Session::handle_send`].
    pub(super) fn try_send_now(
        &mut self,
        id: Option<&str>,
        topic: &[u8],
        ex: &Map<String, Value>,
        raw_ex: Option<ExText<'_>>,
    ) -> Option<Outcome> {
        // Lent out for the message rather than cloned: nothing on this path
        // reads `self.account` or `self.last_topic`, and the atomic steps of
        // two clones and two drops per message add up.
        let me = self.account.take()?;
        let sent = self.sendable(&me, topic).and_then(|last| {
            let sent = self.send_to(id, &me, &last, ex, raw_ex);
            self.last_topic = Some(last);
            sent
        });
        self.account = Some(me);
        match sent {
            Ok(outcome) => outcome,
            Err(d) => Some(self.reply(d.into_packet(id))),
        }
    }

    /// The topic named `topic` (UTF-8), if `me` may send to it: resolved
    /// and checked once per version of the topic table (a record never
    /// changes: a change makes a new one, at a new version). Lent: taken
    /// out of `self.last_topic`, for the caller to put back once done.
    fn sendable(&mut self, me: &LoggedIn, topic: &[u8]) -> Result<Box<LastTopic>, Denied> {
        // Read before resolving: a change made meanwhile makes it stale.
        let version = self.ctx.topics.version();
        let mut last = match self.last_topic.take() {
            Some(last) if last.version == version && last.asked.as_bytes() == topic => last,
            _ => {
                // Exact for UTF-8, which every caller's topic is.
                let topic = String::from_utf8_lossy(topic);
                let record = self.resolve(&topic)?;
                Box::new(LastTopic {
                    asked: topic.into_owned(),
                    version,
                    text: UuidText::new(record.id),
                    kept: self.keeps_history(&record),
                    may_send: None,
                    record,
                })
            }
        };
        if last.may_send != Some(me.id) {
            if let Err(d) = self.may_send(me, &last.record) {
                self.last_topic = Some(last);
                return Err(d);
            }
            last.may_send = Some(me.id);
        }
        Ok(last)
    }

    /// Whether `me` may send to `t`: a member, with the write flag.
    pub(super) fn may_send(&self, me: &LoggedIn, t: &TopicRecord) -> Result<(), Denied> {
        may_send(t, self.actor(me))
    }

    /// A message not kept: relayed with its `ex` as
    /// the sender wrote it (`raw_ex`; else `ex`, without `for`) and
    /// acknowledged, both by way of the burst. `t` is as the topic table
    /// held it at `version`.
    fn send_now(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        (t, version): (&Arc<TopicRecord>, u64),
        topic_text: &UuidText,
        ex: &Map<String, Value>,
        raw_ex: Option<ExText<'_>>,
    ) -> Result<Outcome, Denied> {
        let ex = relayed_ex(ex, raw_ex)?;
        let ex: &[u8] = &ex;
        let opened = self.open_burst(t);
        // The burst's clock reading stamps the message and its ack.
        let ts = self.clock.unix_ms();
        // With an ack, its id is minted with the message's, in one step.
        let (message_id, ack) = match id {
            Some(for_id) => {
                let [message, ack] = uuids_at(ts).map(UuidText::new);
                (message, Some((for_id, ack)))
            }
            None => (UuidText::new(uuid_at(ts)), None),
        };
        let burst = &mut self.burst;
        let start = burst.relays.len();
        write_relay(
            &mut burst.relays,
            &message_id,
            ts,
            topic_text,
            &me.name_json,
            ex,
        );
        let size = burst.relays.len().saturating_sub(start + 1);
        if let Err(d) = self.check_relay_size(size) {
            self.burst.relays.truncate(start);
            if let Outcome::Close(r) = opened {
                return Ok(Outcome::Close(r));
            }
            return Err(d);
        }
        if let Some((for_id, ack_id)) = ack {
            self.burst.ack(for_id, ts, &ack_id, &message_id, ts);
        }
        Ok(self.close_message(t, version, opened))
    }

    /// Readies the burst for a message to `t`: another topic (or this one
    /// since a member came or went) starts a burst of its own. The message
    /// is relayed whatever this returns: a `Close` (this client's own queue
    /// is full or gone) only ends the session once the message is out.
    fn open_burst(&mut self, t: &Arc<TopicRecord>) -> Outcome {
        let mut outcome = Outcome::Continue;
        if self
            .burst
            .topic
            .as_ref()
            .is_some_and(|b| !Arc::ptr_eq(b, t))
        {
            outcome = self.flush_burst();
        }
        let burst = &mut self.burst;
        if burst.relays.capacity() == 0 {
            burst.relays = frame_pool::take(burst.hint.0.max(BURST_ROOM.0));
        }
        outcome
    }

    /// Counts the relay just written into the burst; a full burst
    /// (in bytes, or in packets: a frame is taken whole or not at all, so
    /// it must stay well within any connection's queue) is delivered.
    /// `opened` is what [`Session::open_burst`] said.
    fn close_message(&mut self, t: &Arc<TopicRecord>, version: u64, opened: Outcome) -> Outcome {
        let burst = &mut self.burst;
        if burst.topic.is_none() {
            burst.topic = Some(t.clone());
            burst.version = version;
        }
        burst.relay_count += 1;
        let full =
            burst.relays.len() >= BURST_BYTES || burst.relay_count >= self.ctx.max_burst_packets;
        let flushed = if full {
            self.flush_burst()
        } else {
            Outcome::Continue
        };
        match opened {
            Outcome::Close(r) => Outcome::Close(r),
            Outcome::Continue | Outcome::Silent => flushed,
        }
    }

    /// Delivers the burst: its relays to the topic's members' connections
    /// but this one, then its acks to this client.
    pub fn flush_burst(&mut self) -> Outcome {
        // The burst ends here, and with it its clock reading.
        self.clock = super::BurstClock::default();
        self.deliver_burst()
    }

    /// [`Session::flush_burst`] within a burst of input, which goes on
    /// with the same clock reading: before each kept message, two clock
    /// reads a message were a twentieth of the network thread's time.
    fn deliver_burst(&mut self) -> Outcome {
        let Some(mut topic) = self.burst.topic.take() else {
            // Nothing to deliver. A buffer taken for a message that was then
            // refused (a relay over the line limit, written before its size
            // was known) goes: kept, it stayed with the session, idle or
            // not, until its next message.
            self.burst.relays = Vec::new();
            return Outcome::Continue;
        };
        // Whether the messages were kept, as they were handled: the record
        // they were handled under says, not one a `meta` changed since.
        let kept = self.keeps_history(&topic);
        if self.ctx.topics.version() != self.burst.version {
            // A leave, ban or delete may have committed since the record
            // was read: its members now get the relays.
            topic = self.current(&topic);
        }
        let burst = std::mem::take(&mut self.burst);
        let (relays, acks) = burst.hint;
        let more = |n: usize, was: usize| (n + n / 4).max(was - was / 8);
        self.burst.hint = (
            more(burst.relays.len(), relays),
            more(burst.acks.len(), acks),
        );
        let relays = trimmed(burst.relays);
        let connections = self.ctx.presence.deliver(
            topic.members.iter(),
            &relays,
            burst.relay_count,
            self.conn_id,
        );
        self.ctx.metrics.delivered(connections * burst.relay_count);
        // Other nodes' members: kept messages go there by the log, the
        // others now, before the sender's ack.
        if let Some(mesh) = self.ctx.ephemeral_relay.get() {
            if !kept {
                mesh.publish(topic.id, &relays);
            }
        }
        if burst.ack_count == 0 {
            // Every message was sent without an `id`: nothing to answer.
            return Outcome::Continue;
        }
        match self.out.push_lines(trimmed(burst.acks), burst.ack_count) {
            Ok(()) => Outcome::Continue,
            Err(_) => Outcome::Close(CloseReason::SendqExceeded),
        }
    }

    /// A kept message (or an edit of one) must also fit one `history`
    /// answer, whose envelope takes [`ANSWER_ENVELOPE`] of the line: one
    /// that did not could never be paged past.
    pub(super) fn check_kept_size(&self, size: usize) -> Result<(), Denied> {
        let room = self.ctx.max_line_bytes.saturating_sub(ANSWER_ENVELOPE);
        if size > room {
            return Err(Denied::new(
                ErrorCode::PacketTooLarge,
                format!(
                    "relayed, this message would be {size} bytes; a topic that keeps history takes {room} (the line limit less {ANSWER_ENVELOPE} for a history answer)"
                ),
            ));
        }
        Ok(())
    }

    /// The relay adds id, ts, topic and from: it must still fit a line, or
    /// receivers that enforce the same limit would refuse it.
    pub(super) fn check_relay_size(&self, size: usize) -> Result<(), Denied> {
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

    /// At the end of a session: what the burst holds goes out (relays to
    /// the other members, acks to this client), even when this client can
    /// no longer take them.
    pub fn finish(&mut self) {
        let _ = self.flush_burst();
    }

    /// `t` as the topic table holds it now; without members if it was
    /// deleted (nobody is to get its messages).
    fn current(&self, t: &Arc<TopicRecord>) -> Arc<TopicRecord> {
        self.ctx.topics.get(t.id).unwrap_or_else(|| {
            let mut gone = TopicRecord::clone(t);
            gone.members.clear();
            Arc::new(gone)
        })
    }

    /// Waits until the message log has synced this session's kept
    /// messages, and so queued them for their index: a request after them
    /// (a `history` page, a `leave`) is handled after they are kept. What
    /// the burst holds goes out first. One atomic read when nothing waits.
    pub async fn drain(&mut self) -> Outcome {
        if self.ctx.store.messages().synced() >= self.kept_seq {
            return Outcome::Continue;
        }
        // Boxed: the common case (nothing waiting) should not carry the
        // wait's state in every packet's future.
        Box::pin(async {
            if let Outcome::Close(r) = self.flush_burst() {
                return Outcome::Close(r);
            }
            // A failed log ends this connection in its writer, which holds
            // every reply from now on.
            let _ = self.ctx.store.messages().wait_synced(self.kept_seq).await;
            Outcome::Continue
        })
        .await
    }

    pub(super) fn keeps_history(&self, t: &TopicRecord) -> bool {
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
        let t = self.readable(me, topic)?;
        let limit = limit.unwrap_or(50).min(self.ctx.history.max_page);
        let cursor = |b: Bound| match b {
            Bound::Id(s) => Cursor::Id(s),
            Bound::Time(ms) => Cursor::Time(ms),
        };
        // A page without `after` reads backwards from `before` (or now).
        let backwards = after.is_none();
        let (before, after) = (before.map(cursor), after.map(cursor));
        let tid = t.id;
        // On the read-only connection: a page never waits for, nor delays,
        // the commits on the store thread.
        let (page, names) = self
            .ctx
            .store
            .read(move |db| {
                let mut page = db.history(tid, before.as_ref(), after.as_ref(), limit)?;
                db.current_text(&mut page.messages)?;
                let senders: Vec<uuid::Uuid> = page.messages.iter().map(|m| m.sender).collect();
                let names = db.account_names(&senders)?;
                Ok((page, names))
            })
            .await?;
        // One answer within the line limit: when the page would not fit,
        // keep the messages nearest the cursor and say there is more.
        let budget = self.ctx.max_line_bytes.saturating_sub(ANSWER_ENVELOPE);
        let mut used = 0;
        let mut more = page.more;
        let mut items: Vec<&Message> = page.messages.iter().collect();
        if backwards {
            items.reverse();
        }
        let topic_text = t.id.to_string();
        let mut rendered = Vec::with_capacity(items.len());
        for m in items {
            let from = match names.get(&m.sender) {
                Some(name) => name.clone(),
                None => format!("account:{}", m.sender),
            };
            // Each message as the relay was, `ex` as stored: its text, so
            // numbers come back with every digit they were sent with.
            let kept = KeptSend::new(m, m.ts, &topic_text, &from);
            let Ok(text) = serde_json::value::to_raw_value(&kept) else {
                continue;
            };
            let size = text.get().len() + 1;
            if used + size > budget {
                more = true;
                break;
            }
            used += size;
            rendered.push(text);
        }
        if backwards {
            rendered.reverse();
        }
        let answer = Packet::server("history");
        let line = encode_line(&HistoryAnswer {
            id: answer.id.as_deref(),
            ts: answer.ts,
            topic: &topic_text,
            op: "history",
            ex: HistoryEx {
                messages: rendered,
                more,
                r#for: id,
            },
        });
        Ok(self.reply_line(line))
    }
}

/// What a `history` or `search` answer keeps of the line for its envelope
/// (id, ts, topic, op, `more`, `for`, cursor); its messages get the rest.
pub(super) const ANSWER_ENVELOPE: usize = 1024;

/// The `history` answer, in `Packet`'s field order, with the messages as
/// text.
#[derive(serde::Serialize)]
struct HistoryAnswer<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ts: Option<i64>,
    topic: &'a str,
    op: &'static str,
    ex: HistoryEx<'a>,
}

#[derive(serde::Serialize)]
struct HistoryEx<'a> {
    messages: Vec<Box<RawValue>>,
    more: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    r#for: Option<&'a str>,
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::super::{Context, Outcome, Session, testing};
    use super::*;

    /// A session context over a new store, one account and a topic it
    /// created (which keeps history).
    async fn context() -> (tempfile::TempDir, Context, uuid::Uuid, uuid::Uuid) {
        context_with_pending(crate::config::HistoryConfig::default().pending_bytes).await
    }

    /// [`context`], with the message log's bound on unsynced bytes.
    async fn context_with_pending(
        pending_bytes: usize,
    ) -> (tempfile::TempDir, Context, uuid::Uuid, uuid::Uuid) {
        let (dir, ctx) = testing::context_with(|config| {
            config.limits.packets_per_second = 1_000_000;
            config.limits.packet_burst = 1_000_000;
            config.history.pending_bytes = pending_bytes;
        });
        let me = uuid::Uuid::now_v7();
        let topic = super::super::topic::create_cached(
            &ctx.store,
            &ctx.topics,
            "kept".into(),
            me,
            Map::new(),
            1,
        )
        .await
        .unwrap()
        .unwrap();
        (dir, ctx, me, topic.id)
    }

    /// A topic `me` created that keeps no history.
    async fn quiet_topic(ctx: &Context, me: uuid::Uuid) -> uuid::Uuid {
        super::super::topic::create_cached(
            &ctx.store,
            &ctx.topics,
            "quiet".into(),
            me,
            Map::from_iter([("history".to_owned(), Value::Bool(false))]),
            2,
        )
        .await
        .unwrap()
        .unwrap()
        .id
    }

    /// A session logged in as `me`, and the receiving end of its queue
    /// (kept, so that replies can be queued).
    fn session(ctx: &Context, me: uuid::Uuid) -> (Session<'_>, crate::router::outbound::Receiver) {
        testing::session(ctx, me, "dan", 1)
    }

    /// The `message` of each message `topic`'s history holds, oldest first.
    async fn history_texts(ctx: &Context, topic: uuid::Uuid) -> Vec<String> {
        let page = ctx
            .store
            .read(move |db| db.history(topic, None, None, 100))
            .await
            .unwrap();
        page.messages
            .iter()
            .map(|m| {
                let ex: Map<String, Value> = serde_json::from_str(m.ex.get()).unwrap();
                ex.get("message")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    fn send(topic: &str, n: usize) -> Vec<u8> {
        format!(r#"{{"op":"send","topic":"{topic}","ex":{{"message":"m{n}"}}}}"#).into_bytes()
    }

    /// A kept message the message log has no room for (its unsynced bytes
    /// are at their bound) stops the session reading until the log syncs;
    /// then it is kept, after the one before it.
    #[tokio::test]
    async fn a_full_message_log_stops_the_session_reading() {
        let (_dir, ctx, me, topic) = context_with_pending(1).await;
        let (mut s, _rx) = session(&ctx, me);
        let (release, writer) = store::hold_message_log(&ctx.store).await;
        let first = send(&topic.to_string(), 0);
        assert_eq!(
            s.handle_line(&first).now_or_never(),
            Some(Outcome::Continue)
        );
        let second = send(&topic.to_string(), 1);
        let mut next = Box::pin(s.handle_line(&second));
        assert!((&mut next).now_or_never().is_none(), "read on while full");
        release.send(()).unwrap();
        assert_eq!(next.await, Outcome::Continue);
        writer.await.unwrap().unwrap();
        assert_eq!(s.drain().await, Outcome::Continue);
        let texts = history_texts(&ctx, topic).await;
        assert_eq!(texts, ["m0", "m1"]);
        ctx.store.close().await;
    }

    /// A request after kept messages (a `history` page here) waits until
    /// the log has synced them, and so sees them.
    #[tokio::test]
    async fn a_request_after_kept_messages_waits_for_their_sync() {
        let (_dir, ctx, me, topic) = context().await;
        let (mut s, mut rx) = session(&ctx, me);
        let (release, writer) = store::hold_message_log(&ctx.store).await;
        let line = send(&topic.to_string(), 0);
        assert_eq!(s.handle_line(&line).now_or_never(), Some(Outcome::Continue));
        let page = format!(r#"{{"op":"history","id":"h","topic":"{topic}"}}"#);
        let mut answer = Box::pin(s.handle_line(page.as_bytes()));
        assert!(
            (&mut answer).now_or_never().is_none(),
            "answered before the message was synced"
        );
        release.send(()).unwrap();
        assert_eq!(answer.await, Outcome::Continue);
        writer.await.unwrap().unwrap();
        drop(s);
        let replies = testing::replies(&mut rx);
        let history = replies
            .lines()
            .find(|l| l.contains(r#""for":"h""#))
            .unwrap_or_default();
        assert!(history.contains(r#""message":"m0""#), "{replies}");
        ctx.store.close().await;
    }

    /// The right to send is checked at the append, against the topic table
    /// as it is then: a send after its sender's leave is applied is refused
    /// and not kept, though the one before it was checked at an older
    /// version of the table.
    #[tokio::test]
    async fn a_kept_send_after_its_senders_leave_is_refused() {
        let (_dir, ctx, me, topic) = context().await;
        let (mut s, mut rx) = session(&ctx, me);
        let line =
            format!(r#"{{"op":"send","id":"k1","topic":"{topic}","ex":{{"message":"m0"}}}}"#);
        assert_eq!(s.handle_line(line.as_bytes()).await, Outcome::Continue);
        testing::set_member(&ctx, topic, me, false).await.unwrap();
        let line =
            format!(r#"{{"op":"send","id":"k2","topic":"{topic}","ex":{{"message":"m1"}}}}"#);
        assert_eq!(s.handle_line(line.as_bytes()).await, Outcome::Continue);
        assert_eq!(s.drain().await, Outcome::Continue);
        drop(s);
        let replies = testing::replies(&mut rx);
        let refused = replies
            .lines()
            .find(|l| l.contains(r#""for":"k2""#))
            .unwrap_or_default();
        assert!(
            refused.contains(r#""code":"topic/not-member""#),
            "{replies}"
        );
        assert_eq!(history_texts(&ctx, topic).await, ["m0"]);
        ctx.store.close().await;
    }

    /// A member who leaves before the burst holding a kept message is
    /// delivered gets none of it: relays go to the members the table holds
    /// at delivery. The message is kept all the same.
    #[tokio::test]
    async fn kept_relays_go_to_the_members_at_delivery() {
        let (_dir, ctx, me, topic) = context().await;
        let bob = uuid::Uuid::now_v7();
        testing::set_member(&ctx, topic, bob, true).await.unwrap();
        let (bob_out, mut bob_rx, _closer) = crate::router::Outbound::channel(1 << 16, 1 << 30);
        ctx.presence.add(bob, 7, bob_out, None);
        let (mut s, _rx) = session(&ctx, me);
        let line = send(&topic.to_string(), 0);
        assert_eq!(s.handle_line(&line).now_or_never(), Some(Outcome::Continue));
        testing::set_member(&ctx, topic, bob, false).await.unwrap();
        assert_eq!(s.flush_burst(), Outcome::Continue);
        assert_eq!(testing::replies(&mut bob_rx), "");
        assert_eq!(s.drain().await, Outcome::Continue);
        assert_eq!(history_texts(&ctx, topic).await, ["m0"]);
        ctx.store.close().await;
    }

    /// A message whose `ex` is empty, or empty once the server's `for` is
    /// taken out, is relayed without `ex` (protocol.md 6), as history
    /// shows it, whether its topic keeps history or not.
    #[tokio::test]
    async fn an_empty_ex_is_left_out_of_the_relay() {
        let (_dir, ctx, me, kept) = context().await;
        let quiet = quiet_topic(&ctx, me).await;
        let bob = uuid::Uuid::now_v7();
        for t in [kept, quiet] {
            testing::set_member(&ctx, t, bob, true).await.unwrap();
        }
        let (bob_out, mut bob_rx, _closer) = crate::router::Outbound::channel(1 << 16, 1 << 30);
        ctx.presence.add(bob, 7, bob_out, None);
        let (mut s, _rx) = session(&ctx, me);
        for t in [kept, quiet] {
            for ex in [r#","ex":{"for":"x"}"#, r#","ex":{}"#, ""] {
                let line = format!(r#"{{"op":"send","topic":"{t}"{ex}}}"#);
                assert_eq!(s.handle_line(line.as_bytes()).await, Outcome::Continue);
            }
        }
        assert_eq!(s.drain().await, Outcome::Continue);
        assert_eq!(s.flush_burst(), Outcome::Continue);
        let relays = testing::replies(&mut bob_rx);
        assert_eq!(relays.lines().count(), 6, "{relays}");
        for line in relays.lines() {
            let v: Map<String, Value> = serde_json::from_str(line).unwrap();
            assert_eq!(v.get("op"), Some(&Value::from("send")), "{line}");
            assert!(!v.contains_key("ex"), "{line}");
        }
        let page = ctx
            .store
            .call(move |db| db.history(kept, None, None, 10))
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 3);
        ctx.store.close().await;
    }

    /// Counts the relays handed to the mesh as messages without history.
    #[derive(Default)]
    struct Published(std::sync::Mutex<usize>);

    impl EphemeralRelay for Published {
        fn publish(&self, _topic: uuid::Uuid, lines: &Bytes) {
            *self.0.lock().unwrap() += lines.iter().filter(|&&b| b == b'\n').count();
        }
    }

    /// A topic's `history` setting changed between a message and its
    /// burst's delivery: the mesh gets the burst as the messages were
    /// handled. Kept ones reach other nodes as events of the log, and
    /// must not go as relays too (they would arrive twice); ones not kept
    /// reach them only as relays, and must not be left out.
    #[tokio::test]
    async fn the_mesh_gets_a_burst_as_its_messages_were_handled() {
        let (_dir, ctx, me, kept) = context().await;
        let quiet = quiet_topic(&ctx, me).await;
        let mesh = Arc::new(Published::default());
        let relay: Arc<dyn EphemeralRelay> = mesh.clone();
        assert!(ctx.ephemeral_relay.set(relay).is_ok());
        let (mut s, _rx) = session(&ctx, me);
        let toggle = |t: uuid::Uuid, history: bool| {
            let mut r = TopicRecord::clone(&ctx.topics.get(t).unwrap());
            r.meta.insert("history".into(), Value::Bool(history));
            r.as_of += 1;
            ctx.topics.put(r);
        };
        let line = send(&kept.to_string(), 0);
        assert_eq!(s.handle_line(&line).now_or_never(), Some(Outcome::Continue));
        toggle(kept, false);
        assert_eq!(s.flush_burst(), Outcome::Continue);
        assert_eq!(
            *mesh.0.lock().unwrap(),
            0,
            "a kept message relayed to the mesh"
        );
        let line = send(&quiet.to_string(), 1);
        assert_eq!(s.handle_line(&line).now_or_never(), Some(Outcome::Continue));
        toggle(quiet, true);
        assert_eq!(s.flush_burst(), Outcome::Continue);
        assert_eq!(*mesh.0.lock().unwrap(), 1, "a message not kept left out");
        assert_eq!(s.drain().await, Outcome::Continue);
        ctx.store.close().await;
    }

    /// Relays of messages not kept wait in the burst until the input runs
    /// dry; a member who leaves meanwhile gets none of them.
    #[tokio::test]
    async fn a_burst_goes_to_the_members_when_it_is_delivered() {
        let (_dir, ctx, me, _) = context().await;
        let quiet = quiet_topic(&ctx, me).await;
        let bob = uuid::Uuid::now_v7();
        testing::set_member(&ctx, quiet, bob, true).await.unwrap();
        let (bob_out, mut bob_rx, _closer) = crate::router::Outbound::channel(1 << 16, 1 << 30);
        ctx.presence.add(bob, 7, bob_out, None);
        let (mut s, _rx) = session(&ctx, me);
        let line = format!(r#"{{"op":"send","topic":"{quiet}","ex":{{"m":1}}}}"#);
        assert_eq!(
            s.handle_line(line.as_bytes()).now_or_never(),
            Some(Outcome::Continue)
        );
        testing::set_member(&ctx, quiet, bob, false).await.unwrap();
        assert_eq!(s.flush_burst(), Outcome::Continue);
        assert_eq!(testing::replies(&mut bob_rx), "");
        ctx.store.close().await;
    }

    /// A send whose relay would pass the line limit, first in its burst,
    /// is refused and leaves no buffer behind: the relay was written (and
    /// the buffer grown to hold it) before its size was known, and a
    /// burst with no topic is never delivered, so what it held stayed with
    /// the session, idle or not, until its next message.
    #[tokio::test]
    async fn a_relay_refused_first_in_its_burst_leaves_no_buffer() {
        let (_dir, ctx, me, _) = context().await;
        let quiet = quiet_topic(&ctx, me).await;
        let (mut s, mut rx) = session(&ctx, me);
        // A line of the largest size read: its relay adds an id, a `ts`
        // and a `from`.
        let line = |body: &str| {
            format!(r#"{{"op":"send","id":"big","topic":"{quiet}","ex":{{"m":"{body}"}}}}"#)
        };
        let body = "x".repeat(ctx.max_line_bytes - line("").len());
        let line = line(&body);
        assert_eq!(line.len(), ctx.max_line_bytes);
        assert_eq!(s.handle_line(line.as_bytes()).await, Outcome::Continue);
        assert_eq!(s.flush_burst(), Outcome::Continue);
        let replies = testing::replies(&mut rx);
        assert!(replies.contains("packet/too-large"), "{replies}");
        assert_eq!(
            s.burst.relays.capacity(),
            0,
            "the refused relay's buffer is kept"
        );
        // The next burst is sent as usual.
        let line = send(&quiet.to_string(), 0);
        assert_eq!(s.handle_line(&line).await, Outcome::Continue);
        assert_eq!(s.flush_burst(), Outcome::Continue);
        ctx.store.close().await;
    }
}
