//! `edit` and `redact`: changing what a kept message says after the fact.
//! An edit is its sender's, within `history.edit_window_ms`; a redaction is
//! its sender's or a topic op's or owner's, at any time. Both are committed
//! first, then the topic's members are told, then the requester answered.

use serde_json::{Map, Value};

use super::{Denied, LoggedIn, Outcome, Session};
use crate::proto::id::{new_uuid, now_ms};
use crate::proto::{ErrorCode, Packet, reply};
use crate::router::acl::Flag;
use crate::store::edit::{Redaction, Revision};

/// What the store said to an edit or a redaction.
enum Checked {
    /// No kept message has that id, or it is redacted.
    NotFound,
    /// The message is another account's.
    NotYours,
    /// The edit window has passed.
    TooOld,
    /// The message was edited as often as it may be.
    TooMany,
    /// Committed.
    Done,
}

fn not_found() -> Denied {
    Denied::new(
        ErrorCode::MessageNotFound,
        "the topic keeps no message with that id (or it was redacted)",
    )
}

impl Session<'_> {
    pub(super) async fn handle_edit(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        message: String,
        mut ex: Map<String, Value>,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        self.may_send(me, &t)?;
        // `for` is the server's, as in `send`; so are the marks history
        // puts on edited and redacted messages.
        for key in ["for", "edited", "redacted"] {
            ex.remove(key);
        }
        let ts = now_ms();
        let mut event = Packet {
            id: Some(new_uuid().to_string()),
            ts: Some(ts),
            topic: Some(t.id.to_string()),
            op: "edit".to_owned(),
            from: Some(me.name.clone()),
            ex: Map::new(),
        };
        event.ex.insert("id".into(), Value::from(message.as_str()));
        event.ex.extend(ex.clone());
        event.ex.insert("edited".into(), Value::from(ts));
        let line = event.to_line();
        self.check_kept_size(line.len().saturating_sub(1))?;
        let window = i64::try_from(self.ctx.history.edit_window_ms).unwrap_or(i64::MAX);
        let max_edits = self.ctx.history.max_edits_per_message;
        let (tid, account, target) = (t.id, me.id, message.clone());
        let checked = self
            .ctx
            .store
            .call_synced(move |db| {
                let Some(kept) = db.live_message(tid, &target)? else {
                    return Ok(Checked::NotFound);
                };
                if kept.sender != account {
                    return Ok(Checked::NotYours);
                }
                if window == 0 || ts.saturating_sub(kept.ts) > window {
                    return Ok(Checked::TooOld);
                }
                let edits = db.revision(tid, &target)?.map_or(0, |r| r.n);
                if edits >= max_edits {
                    return Ok(Checked::TooMany);
                }
                let revision = Revision {
                    ex,
                    ts,
                    by: account,
                    n: edits.saturating_add(1),
                };
                db.edit_message(tid, &target, &revision)?;
                Ok(Checked::Done)
            })
            .await?;
        match checked {
            Checked::NotFound => return Err(not_found()),
            Checked::NotYours => {
                return Err(Denied::new(
                    ErrorCode::AclDenied,
                    "only its sender may edit a message",
                ));
            }
            Checked::TooOld => {
                return Err(Denied::new(
                    ErrorCode::MessageTooOld,
                    format!(
                        "messages may be edited for {} ms after they are sent",
                        self.ctx.history.edit_window_ms
                    ),
                ));
            }
            Checked::TooMany => {
                return Err(Denied::new(
                    ErrorCode::MessageTooManyEdits,
                    format!(
                        "a message may be edited {} times",
                        self.ctx.history.max_edits_per_message
                    ),
                ));
            }
            Checked::Done => {}
        }
        self.ctx
            .presence
            .deliver(t.members.iter(), &line, 1, self.conn_id);
        let ack = reply::ack(id).with("id", message).with("edited", ts);
        Ok(self.reply(ack))
    }

    pub(super) async fn handle_redact(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        message: String,
    ) -> Result<Outcome, Denied> {
        let t = self.readable(me, topic)?;
        let moderator = t.acl.allows(self.actor(me), Flag::Op);
        let (tid, account, target) = (t.id, me.id, message.clone());
        let checked = self
            .ctx
            .store
            .call_synced(move |db| {
                let Some(kept) = db.live_message(tid, &target)? else {
                    return Ok(Checked::NotFound);
                };
                if kept.sender != account && !moderator {
                    return Ok(Checked::NotYours);
                }
                let redaction = Redaction {
                    ts: now_ms(),
                    by: account,
                };
                db.redact_message(tid, &target, &redaction)?;
                Ok(Checked::Done)
            })
            .await?;
        match checked {
            Checked::NotFound => return Err(not_found()),
            Checked::NotYours | Checked::TooOld | Checked::TooMany => {
                return Err(Denied::new(
                    ErrorCode::AclDenied,
                    "only its sender or the topic's ops may redact a message",
                ));
            }
            Checked::Done => {}
        }
        let mut event = Packet::server("redact").with_from(me.name.clone());
        event.topic = Some(t.id.to_string());
        event.ex.insert("id".into(), Value::from(message.as_str()));
        self.ctx
            .presence
            .deliver(t.members.iter(), &event.to_line(), 1, self.conn_id);
        Ok(self.reply(reply::ack(id).with("id", message)))
    }
}
