//! `send`: relay a message to every connection of every member of a topic,
//! and `history`: page through what a topic kept.
//!
//! The relayed packet is serialized once; the sender's `ack` (for a `send`
//! with an `id`: one without is fire-and-forget) carries the
//! server-assigned `id` and `ts` it was relayed with. Where the topic keeps
//! history, the message is committed (group commit) before anyone sees it
//! and before the `ack`; where it does not, it never touches the store.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::kept::{InFlight, Run};
use super::{CloseReason, Denied, LoggedIn, Outcome, Session};
use crate::change::{Change, ExJson, Message};
use crate::proto::id::{UuidText, uuid_at, uuids_at};
use crate::proto::packet::{ExText, KeptSend, encode_line, relay_len, write_relay};
use crate::proto::reply::write_send_ack;
use crate::proto::request::Bound;
use crate::proto::{ErrorCode, Packet};
use crate::router::acl::{Actor, Flag, OwnedActor};
use crate::router::frame_pool;
use crate::store::{self, Event, TopicRecord};

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
    /// than this one took, so a steady sender's buffers are allocated once
    /// per burst and never regrown.
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

/// A burst's buffer as a shared frame. It gives back what it does not use
/// when that is much: a frame may wait in a slow reader's queue, and should
/// not hold a burst's room for one message. Otherwise the buffer goes back
/// to the pool when the last writer is done with it.
/// What a run of `me`'s kept messages to `t` is committed on: that `me`
/// may still send to it when the run's turn comes in the store, after a
/// leave, ban or delete queued before it.
fn still_may_send(ctx: &super::Context, me: &LoggedIn, t: &TopicRecord) -> store::Guard {
    let (topics, id) = (ctx.topics.clone(), t.id);
    let who = OwnedActor::from(me.actor(ctx));
    Box::new(move || {
        topics
            .get(id)
            .is_some_and(|t| may_send(&t, who.actor()).is_ok())
    })
}

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

fn trimmed(mut lines: Vec<u8>) -> Bytes {
    if lines.capacity() > 2 * lines.len() + 4096 {
        lines.shrink_to_fit();
        return Bytes::from(lines);
    }
    frame_pool::frame(lines)
}

impl Session<'_> {
    /// A message, when it may have to wait: kept (its commit is queued), or
    /// behind kept messages still committing.
    pub(super) async fn handle_send(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        ex: &Map<String, Value>,
        raw_ex: Option<ExText<'_>>,
    ) -> Result<Outcome, Denied> {
        let last = self.sendable(me, topic.as_bytes())?;
        let (t, text, kept, version) = (last.record.clone(), last.text, last.kept, last.version);
        self.last_topic = Some(last);
        if !kept {
            // Relays keep request order: kept messages ahead go first.
            if let Outcome::Close(r) = self.drain().await {
                return Ok(Outcome::Close(r));
            }
            return self.send_now(id, me, (&t, version), &text, ex, raw_ex);
        }
        let (change, message_id) = self.kept_change(me, &t, ex, raw_ex)?;
        // The pipeline is full, or the store's queue has no room for a run
        // that takes no more: the oldest entries complete first (waiting for
        // room if need be), and this client is not read meanwhile. Boxed:
        // only kept messages pay for the wait.
        while self.pipeline.must_wait() {
            if let Outcome::Close(r) = Box::pin(self.complete_next()).await {
                return Ok(Outcome::Close(r));
            }
        }
        Ok(self.keep(me, &t, change, message_id, id))
    }

    /// Puts a kept message in the pipeline, where the next kept sends of
    /// the burst to the same topic join it: they go to the store as one
    /// entry. Relay and ack follow the commit, in request order.
    fn keep(
        &mut self,
        me: &LoggedIn,
        t: &Arc<TopicRecord>,
        change: Change,
        message_id: uuid::Uuid,
        id: Option<&str>,
    ) -> Outcome {
        // Relays keep request order: what the burst holds goes first. The
        // burst of input goes on, and so does its clock reading.
        if let Outcome::Close(r) = self.deliver_burst() {
            return Outcome::Close(r);
        }
        let ctx = self.ctx;
        self.pipeline
            .push_kept(t, &me.name_json, change, message_id, id, || {
                still_may_send(ctx, me, t)
            });
        // A run that can take no more goes to the store now, while the next
        // gathers.
        self.pipeline.queue_sealed(&self.ctx.store);
        Outcome::Continue
    }

    /// A kept message put in the pipeline without waiting, as most are.
    /// `None` when the pipeline is full or a run in it waits for room in
    /// the store's queue: [`Session::handle_send`] then waits for its
    /// oldest entries (and so stops reading this client).
    fn keep_now(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        t: &Arc<TopicRecord>,
        ex: &Map<String, Value>,
        raw_ex: Option<ExText<'_>>,
    ) -> Result<Option<Outcome>, Denied> {
        if self.pipeline.must_wait() {
            return Ok(None);
        }
        let (change, message_id) = self.kept_change(me, t, ex, raw_ex)?;
        Ok(Some(self.keep(me, t, change, message_id, id)))
    }

    /// The change that keeps a message to `t`, and the message's id.
    fn kept_change(
        &mut self,
        me: &LoggedIn,
        t: &TopicRecord,
        ex: &Map<String, Value>,
        raw_ex: Option<ExText<'_>>,
    ) -> Result<(Change, uuid::Uuid), Denied> {
        // A kept message is stored with its `ex` as text: as sent when it
        // could be relayed so (numbers keep every digit), else rebuilt from
        // the map without `ex.for`, which is the server's (a relayed packet
        // must not look like a reply to one of the recipients' requests).
        let stored = match raw_ex {
            Some(raw) => std::str::from_utf8(raw.get())
                .map_err(|_| ())
                .and_then(|text| ExJson::from_text(text.to_owned()).map_err(|_| ())),
            None => {
                let mut ex = ex.clone();
                ex.remove("for");
                ExJson::from_map(&ex).map_err(|_| ())
            }
        }
        .map_err(|()| {
            Denied::new(
                ErrorCode::ServerInternal,
                "the message could not be encoded",
            )
        })?;
        // Stamped again at its commit; `ts` here sizes the line, and the
        // burst's clock reading mints the id.
        let now = self.clock.unix_ms();
        let message_id = uuid_at(now);
        let line = relay_len(now, &me.name_json, stored.get().as_bytes());
        self.check_kept_size(line.saturating_sub(1))?;
        let message = Message {
            topic: t.id,
            id: message_id.to_string(),
            ts: 0,
            sender: me.id,
            ex: stored,
        };
        Ok((Change::message(message), message_id))
    }

    /// A message handled without waiting, which is most of them: one not
    /// kept, with no kept message still committing, or a kept one whose
    /// commit can be queued at once. `None` leaves it to
    /// [`Session::handle_send`].
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
            let sent = match last.kept {
                true => self.keep_now(id, &me, &last.record, ex, raw_ex),
                // Behind kept messages still committing: relays keep
                // request order, so it waits for them.
                false if self.has_inflight() => Ok(None),
                false => self
                    .send_now(
                        id,
                        &me,
                        (&last.record, last.version),
                        &last.text,
                        ex,
                        raw_ex,
                    )
                    .map(Some),
            };
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
    fn sendable(&mut self, me: &LoggedIn, topic: &[u8]) -> Result<LastTopic, Denied> {
        // Read before resolving: a change made meanwhile makes it stale.
        let version = self.ctx.topics.version();
        let mut last = match self.last_topic.take() {
            Some(last) if last.version == version && last.asked.as_bytes() == topic => last,
            _ => {
                // Exact for UTF-8, which every caller's topic is.
                let topic = String::from_utf8_lossy(topic);
                let record = self.resolve(&topic)?;
                LastTopic {
                    asked: topic.into_owned(),
                    version,
                    text: UuidText::new(record.id),
                    kept: self.keeps_history(&record),
                    may_send: None,
                    record,
                }
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

    /// Why a run was withdrawn by [`Session::still_may_send`]'s guard, as the
    /// topic table says now.
    fn withdrawn(&self, me: &LoggedIn, topic: uuid::Uuid) -> Denied {
        match self.ctx.topics.get(topic) {
            None => super::topic::not_found(),
            Some(t) => may_send(&t, self.actor(me))
                .err()
                .unwrap_or_else(|| Denied::new(ErrorCode::AclDenied, "the topic changed")),
        }
    }

    /// A message not kept, with nothing in flight: relayed with its `ex` as
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
        let built;
        let ex = match raw_ex {
            Some(raw) => raw.get(),
            None => {
                // Rare: an empty `ex`, or one with `for` (the server's).
                let mut ex = ex.clone();
                ex.remove("for");
                built = serde_json::to_string(&ex).map_err(|_| {
                    Denied::new(
                        ErrorCode::ServerInternal,
                        "the message could not be encoded",
                    )
                })?;
                built.as_bytes()
            }
        };
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
            return Outcome::Continue;
        };
        if self.ctx.topics.version() != self.burst.version {
            // A leave, ban or delete may have committed since the record
            // was read: its members now get the relays.
            topic = self.current(&topic);
        }
        let burst = std::mem::take(&mut self.burst);
        let more = |n: usize| n + n / 4;
        self.burst.hint = (more(burst.relays.len()), more(burst.acks.len()));
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
            if !self.keeps_history(&topic) {
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

    /// Whether kept messages are waiting for their commit.
    pub fn has_inflight(&self) -> bool {
        !self.pipeline.is_empty()
    }

    /// Completes the oldest in-flight entry, waiting for its commit if need
    /// be, then every following one that needs no wait: a group commit's
    /// messages are relayed as one burst. Runs not yet queued are queued
    /// first, as far as the store has room (the oldest waits for room if it
    /// has none). A kept message is relayed and acknowledged by way of the
    /// burst; a ready reply goes out at once. Cancel-safe: nothing is taken
    /// out until its commit is in.
    pub async fn complete_next(&mut self) -> Outcome {
        let ctx = self.ctx;
        self.pipeline.queue(&ctx.store);
        let mut took_one = false;
        loop {
            // `Some(None)`: a ready reply; `Some(Some(_))`: a run's outcomes;
            // `None`: a run still committing.
            let done = match self.pipeline.front_mut() {
                None => return Outcome::Continue,
                Some(InFlight::Ready(_)) => Some(None),
                Some(InFlight::Kept(run)) => run.try_committed().map(Some),
            };
            let results = match done {
                Some(results) => results,
                None if took_one => return Outcome::Continue,
                None => {
                    // About to wait: what the burst holds goes first.
                    if let Outcome::Close(r) = self.flush_burst() {
                        return Outcome::Close(r);
                    }
                    self.pipeline.front_committed(&ctx.store).await
                }
            };
            took_one = true;
            let outcome = match (self.pipeline.pop_front(), results) {
                (Some(InFlight::Ready(p)), _) => self.push_now(p),
                (Some(InFlight::Kept(run)), Some(results)) => self.committed_run(run, results),
                _ => Outcome::Continue,
            };
            if let Outcome::Close(r) = outcome {
                return Outcome::Close(r);
            }
        }
    }

    /// At the end of a session: every queued message is committed and then
    /// relayed to the other members, and every queued reply (acks, errors,
    /// a final `bye`) is still offered to this client, in order, even when
    /// it can no longer take them.
    pub async fn finish(&mut self) {
        let ctx = self.ctx;
        while let Some(entry) = self.pipeline.pop_front() {
            // Sendq overflows are ignored: everything is still offered.
            let _ = match entry {
                InFlight::Ready(line) => self.push_now(line),
                InFlight::Kept(mut run) => {
                    run.queue(&ctx.store).await;
                    let results = run.committed().await;
                    self.clock = super::BurstClock::default();
                    self.committed_run(run, results)
                }
            };
        }
        let _ = self.flush_burst();
    }

    /// A run's commit is in: each message is relayed and acknowledged (or
    /// its error replied) in order. Every relay goes out even when this
    /// client's own queue is full: the first such `Close` is returned after.
    fn committed_run(
        &mut self,
        run: Run,
        results: Vec<Result<Event, crate::store::Error>>,
    ) -> Outcome {
        let mut results = results.into_iter();
        let mut outcome = Outcome::Continue;
        // Relayed to the members as the table says now, not as when the
        // messages were read: one who left or was put out since, by a job
        // the store ran before the commit or after it, gets no more of the
        // topic; none get a message of a topic deleted meanwhile.
        let version = self.ctx.topics.version();
        let topic = self.current(&run.topic);
        for (message_id, request_id) in run.sent {
            let result = results.next().unwrap_or(Err(crate::store::Error::Closed));
            let done = self.committed(
                message_id,
                &run.from_json,
                (&topic, version),
                request_id.as_deref(),
                result,
            );
            if let (Outcome::Continue | Outcome::Silent, Outcome::Close(r)) = (&outcome, done) {
                outcome = Outcome::Close(r);
            }
        }
        outcome
    }

    /// A kept message's commit is in: its relay, stamped with the commit's
    /// clock (so paging history by time agrees with what was seen), and the
    /// sender's ack join the burst; or the error is replied if it was not
    /// stored.
    fn committed(
        &mut self,
        message_id: uuid::Uuid,
        from_json: &str,
        (topic, version): (&Arc<TopicRecord>, u64),
        request_id: Option<&str>,
        result: Result<Event, crate::store::Error>,
    ) -> Outcome {
        let event = match result {
            Ok(event) => event,
            Err(crate::store::Error::Withdrawn) => {
                let why = match self.account.clone() {
                    Some(me) => self.withdrawn(&me, topic.id),
                    None => Denied::new(ErrorCode::TopicNotMember, "not logged in"),
                };
                return self.push_now(why.into_packet(request_id).to_line());
            }
            Err(e) => return self.push_now(Denied::from(e).into_packet(request_id).to_line()),
        };
        let Some(message) = event.change.message else {
            return self.push_now(
                Denied::new(ErrorCode::ServerInternal, "the message was not stored")
                    .into_packet(request_id)
                    .to_line(),
            );
        };
        self.ctx.metrics.kept();
        let opened = self.open_burst(topic);
        let ts = i64::try_from(event.hlc >> 16).unwrap_or_default();
        let (message_id, now) = (UuidText::new(message_id), self.clock.unix_ms());
        write_relay(
            &mut self.burst.relays,
            &message_id,
            ts,
            &UuidText::new(topic.id),
            from_json,
            message.ex.get().as_bytes(),
        );
        if let Some(for_id) = request_id {
            let ack_id = UuidText::new(uuid_at(now));
            self.burst.ack(for_id, now, &ack_id, &message_id, ts);
        }
        self.close_message(topic, version, opened)
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

    /// Completes every in-flight message, in order.
    pub async fn drain(&mut self) -> Outcome {
        if !self.has_inflight() {
            return Outcome::Continue;
        }
        // Boxed: waiting for a commit is a large state that the common case
        // (nothing in flight) should not carry in every packet's future.
        Box::pin(async {
            while self.has_inflight() {
                if let Outcome::Close(r) = self.complete_next().await {
                    return Outcome::Close(r);
                }
            }
            // What the commits relayed goes out before the request that
            // waited for them acts (a `leave` must not overtake them).
            self.flush_burst()
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

    use super::super::kept::{MAX_INFLIGHT, MAX_RUN};
    use super::super::{Context, Outcome, Session, testing};
    use super::*;

    /// A session context over a new store, one account and a topic it
    /// created (which keeps history).
    async fn context() -> (tempfile::TempDir, Context, uuid::Uuid, uuid::Uuid) {
        let (dir, ctx) = testing::context_with(|config| {
            config.limits.packets_per_second = 1_000_000;
            config.limits.packet_burst = 1_000_000;
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

    fn send(topic: &str, n: usize) -> Vec<u8> {
        format!(r#"{{"op":"send","topic":"{topic}","ex":{{"message":"m{n}"}}}}"#).into_bytes()
    }

    /// A run that can take no more and finds the store's queue full stops
    /// the session reading (its next send waits) until there is room.
    #[tokio::test]
    async fn a_run_without_room_stops_the_session_reading() {
        let (_dir, ctx, me, topic) = context().await;
        let topic = topic.to_string();
        let (mut s, _rx) = session(&ctx, me);
        // All but 8 KiB of the store's queue is held: less than a full run.
        let ex = ExJson::from_map(&Map::from_iter([(
            "b".to_owned(),
            Value::from("x".repeat(store::QUEUED_BYTES - 8 * 1024)),
        )]))
        .unwrap();
        let hold = vec![Change::message(Message {
            topic: uuid::Uuid::nil(),
            id: "held".into(),
            ts: 0,
            sender: me,
            ex,
        })];
        let held = ctx.store.try_reserve(&hold).unwrap().expect("room to hold");
        for n in 0..MAX_RUN {
            let line = send(&topic, n);
            assert_eq!(s.handle_line(&line).now_or_never(), Some(Outcome::Continue));
        }
        let line = send(&topic, MAX_RUN);
        let mut next = Box::pin(s.handle_line(&line));
        assert!((&mut next).now_or_never().is_none(), "read on without room");
        drop(held);
        assert_eq!(next.await, Outcome::Continue);
        assert_eq!(s.drain().await, Outcome::Continue);
        let id = uuid::Uuid::parse_str(&topic).unwrap();
        let page = ctx
            .store
            .call(move |db| db.history(id, None, None, 100))
            .await
            .unwrap();
        assert_eq!(page.messages.len(), MAX_RUN + 1);
        ctx.store.close().await;
    }

    /// Replies queued behind kept messages still committing count toward
    /// the pipeline's bound: past it, the session is not read.
    #[tokio::test]
    async fn replies_behind_commits_count_toward_the_bound() {
        let (_dir, ctx, me, topic) = context().await;
        let topic = topic.to_string();
        let (mut s, _rx) = session(&ctx, me);
        let (release, writer) = store::hold_store_thread(&ctx.store).await;
        for n in 0..MAX_INFLIGHT - 1 {
            let line = send(&topic, n);
            assert_eq!(s.handle_line(&line).now_or_never(), Some(Outcome::Continue));
        }
        // Refused (no such topic): its error waits behind the commits.
        let refused = send("no-such-topic", 0);
        assert_eq!(
            s.handle_line(&refused).now_or_never(),
            Some(Outcome::Continue)
        );
        assert_eq!(s.pipeline.len(), MAX_INFLIGHT);
        let mut next = Box::pin(s.handle_line(&refused));
        assert!(
            (&mut next).now_or_never().is_none(),
            "read on past the bound"
        );
        release.send(()).unwrap();
        assert_eq!(next.await, Outcome::Continue);
        writer.await.unwrap().unwrap();
        assert!(s.pipeline.len() <= MAX_INFLIGHT);
        assert_eq!(s.drain().await, Outcome::Continue);
        ctx.store.close().await;
    }

    /// A run queued behind a job that takes its sender out of the topic
    /// (a leave, a ban) is not kept: the store's guard withdraws it, and
    /// the sender is told why.
    #[tokio::test]
    async fn a_run_behind_its_senders_leave_is_not_kept() {
        let (_dir, ctx, me, topic) = context().await;
        let (mut s, mut rx) = session(&ctx, me);
        let (release, writer) = store::hold_store_thread(&ctx.store).await;
        let line = format!(r#"{{"op":"send","id":"k","topic":"{topic}","ex":{{"m":1}}}}"#);
        assert_eq!(
            s.handle_line(line.as_bytes()).now_or_never(),
            Some(Outcome::Continue)
        );
        // The leave is queued first; the run goes to the store after it.
        let mut leave = Box::pin(testing::set_member(&ctx, topic, me, false));
        assert!((&mut leave).now_or_never().is_none());
        let mut drained = Box::pin(s.drain());
        assert!((&mut drained).now_or_never().is_none());
        release.send(()).unwrap();
        writer.await.unwrap().unwrap();
        leave.await.unwrap();
        assert_eq!(drained.await, Outcome::Continue);
        drop(s);
        let answer = testing::replies(&mut rx);
        assert!(answer.contains(r#""code":"topic/not-member""#), "{answer}");
        let page = ctx
            .store
            .call(move |db| db.history(topic, None, None, 10))
            .await
            .unwrap();
        assert!(page.messages.is_empty());
        ctx.store.close().await;
    }

    /// A member who leaves after a run is queued (so after it in the store)
    /// gets none of its relays, sent once the run is durable: they go to
    /// the members the table holds then.
    #[tokio::test]
    async fn relays_go_to_the_members_at_commit_not_at_read() {
        let (_dir, ctx, me, topic) = context().await;
        let bob = uuid::Uuid::now_v7();
        testing::set_member(&ctx, topic, bob, true).await.unwrap();
        let (bob_out, mut bob_rx, _closer) = crate::router::Outbound::channel(1 << 16, 1 << 30);
        ctx.presence.add(bob, 7, bob_out, None);
        let (mut s, _rx) = session(&ctx, me);
        let (release, writer) = store::hold_store_thread(&ctx.store).await;
        let line = format!(r#"{{"op":"send","id":"k","topic":"{topic}","ex":{{"m":1}}}}"#);
        assert_eq!(
            s.handle_line(line.as_bytes()).now_or_never(),
            Some(Outcome::Continue)
        );
        s.pipeline.queue(&ctx.store);
        // bob leaves after the run is queued.
        let mut leave = Box::pin(testing::set_member(&ctx, topic, bob, false));
        assert!((&mut leave).now_or_never().is_none());
        release.send(()).unwrap();
        writer.await.unwrap().unwrap();
        leave.await.unwrap();
        assert_eq!(s.drain().await, Outcome::Continue);
        assert_eq!(testing::replies(&mut bob_rx), "");
        let page = ctx
            .store
            .call(move |db| db.history(topic, None, None, 10))
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 1);
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
}
