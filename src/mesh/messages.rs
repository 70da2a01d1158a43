//! Edits, redactions and read markers made on other nodes, told to the
//! connections here as the node where they were made tells its own: the
//! topic's members get `edit` and `redact`, the account's connections get
//! `mark`. The state itself is already in the store (registers).

use std::collections::HashMap;

use bytes::Bytes;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::change::{Entity, field};
use crate::proto::Packet;
use crate::session::Context;
use crate::store::edit::{KIND_EDIT, KIND_REDACT, Redaction, Revision};
use crate::store::marker::Marker;
use crate::store::{self, Db, Event};

/// No connection is excluded from a delivery (connection ids start at 1).
const NOBODY: u64 = 0;

/// What one replicated event tells connections here.
enum Told {
    /// To a topic's members: the packet, who made the change and, for an
    /// edit, the message id and the revision it tells.
    Members(Uuid, Packet, Uuid, Option<Box<(String, Revision)>>),
    /// A marker, to its account's connections.
    Marker(Uuid, Uuid, Marker),
}

/// The topic and message id of a `message:<topic>/<id>` entity.
fn message_entity(entity: &str) -> Option<(Uuid, &str)> {
    let (topic, id) = entity.strip_prefix("message:")?.split_once('/')?;
    Some((Uuid::parse_str(topic).ok()?, id))
}

fn told(e: &Event) -> Vec<Told> {
    let mut out = Vec::new();
    for w in &e.change.writes {
        if let Some((topic, id)) = message_entity(&w.entity) {
            let mut p = Packet::server(match e.change.kind.as_str() {
                KIND_EDIT => "edit",
                KIND_REDACT => "redact",
                _ => continue,
            });
            p.topic = Some(topic.to_string());
            p.ex.insert("id".into(), Value::from(id));
            let (by, edit) = if e.change.kind == KIND_EDIT {
                let Ok(r) = serde_json::from_value::<Revision>(w.value.clone()) else {
                    continue;
                };
                p.ex.extend(r.ex.clone());
                p.ex.insert("edited".into(), Value::from(r.ts));
                (r.by, Some(Box::new((id.to_owned(), r))))
            } else {
                let Ok(r) = serde_json::from_value::<Redaction>(w.value.clone()) else {
                    continue;
                };
                (r.by, None)
            };
            out.push(Told::Members(topic, p, by, edit));
        } else if let (Some(account), Some(topic)) = (
            w.entity
                .strip_prefix("account:")
                .and_then(|a| Uuid::parse_str(a).ok()),
            w.field
                .strip_prefix(field::READ_PREFIX)
                .and_then(|t| Uuid::parse_str(t).ok()),
        ) {
            if let Ok(m) = serde_json::from_value::<Marker>(w.value.clone()) {
                out.push(Told::Marker(account, topic, m));
            }
        }
    }
    out
}

/// Whether revision `r` of message `id` of `topic` is what the message
/// says here now: not redacted (a redaction made elsewhere may have come
/// first), and not overtaken by a later edit (last writer wins).
fn is_current(db: &Db, topic: Uuid, id: &str, r: &Revision) -> Result<bool, store::Error> {
    Ok(db.redaction(topic, id)?.is_none() && db.revision(topic, id)?.as_ref() == Some(r))
}

/// Tells connections here about the edits, redactions and markers among
/// `events`, just applied to the store, in log order.
pub(super) async fn relay(ctx: &Context, events: &[Event]) {
    let told: Vec<Told> = events.iter().flat_map(told).collect();
    if told.is_empty() {
        return;
    }
    let cap = ctx.history.max_unread;
    let wanted: Vec<(Uuid, Uuid, Marker)> = told
        .iter()
        .filter_map(|t| match t {
            Told::Marker(a, topic, m) => Some((*a, *topic, m.clone())),
            Told::Members(..) => None,
        })
        .collect();
    let edits: Vec<(Uuid, String, Revision)> = told
        .iter()
        .filter_map(|t| match t {
            Told::Members(topic, _, _, Some(edit)) => {
                Some((*topic, edit.0.clone(), edit.1.clone()))
            }
            _ => None,
        })
        .collect();
    let ids: Vec<Uuid> = told
        .iter()
        .map(|t| match t {
            Told::Members(_, _, by, _) => *by,
            Told::Marker(a, _, _) => *a,
        })
        .collect();
    let looked = ctx
        .store
        .call(move |db| {
            let names = db.account_names(&ids)?;
            let mut unread = Vec::with_capacity(wanted.len());
            for (account, topic, m) in &wanted {
                unread.push(db.unread(*topic, *account, Some(m), cap)?);
            }
            let mut current = Vec::with_capacity(edits.len());
            for (topic, id, r) in &edits {
                current.push(is_current(db, *topic, id, r)?);
            }
            Ok((names, unread, current))
        })
        .await;
    let (names, unread, current): (HashMap<Uuid, String>, _, Vec<bool>) = match looked {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "mesh: cannot tell edits and markers");
            return;
        }
    };
    let name = |id: &Uuid| {
        names
            .get(id)
            .cloned()
            .unwrap_or_else(|| Entity::Account(*id).key())
    };
    let mut counts = unread.into_iter();
    let mut current = current.into_iter();
    for t in told {
        match t {
            Told::Members(topic, p, by, edit) => {
                // An edit is told only while it is the message's text here.
                if edit.is_some() && current.next() != Some(true) {
                    continue;
                }
                if let Some(record) = ctx.topics.get(topic) {
                    let line = p.with_from(name(&by)).to_line();
                    ctx.presence
                        .deliver(record.members.iter(), &line, 1, NOBODY);
                }
            }
            Told::Marker(account, topic, m) => {
                let Some(u) = counts.next() else { continue };
                let mut p = Packet::server("mark").with_from(name(&account));
                p.topic = Some(topic.to_string());
                p.ex.insert("read".into(), json!({"id": m.id, "ts": m.ts}));
                p.ex.insert("unread".into(), Value::from(u.count));
                if u.capped {
                    p.ex.insert("unread_more".into(), Value::Bool(true));
                }
                let line: Bytes = p.to_line();
                ctx.presence.deliver([&account], &line, 1, NOBODY);
            }
        }
    }
}
