//! What events from other nodes change on this node beyond the store: the
//! topic table the hot path reads, sessions of accounts deleted or disabled
//! elsewhere, and kept messages relayed to the members connected here.

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use uuid::Uuid;

use crate::change::{Entity, field};
use crate::proto::ErrorCode;
use crate::proto::packet::{KeptSend, write_line};
use crate::session::Context;
use crate::store::Event;

/// No connection is excluded from a delivery (connection ids start at 1).
const NOBODY: u64 = 0;

/// Brings this node's caches and connections up to date with `events`,
/// just applied to the store, in log order.
pub async fn apply(ctx: &Context, events: &[Event]) {
    let mut topics = BTreeSet::new();
    let mut gone = BTreeSet::new();
    let mut senders = BTreeSet::new();
    for e in events {
        for w in &e.change.writes {
            if let Some(id) = parse(&w.entity, "topic:") {
                topics.insert(id);
            } else if let Some(id) = parse(&w.entity, "account:") {
                let ends = (w.field == field::DELETED || w.field == field::DISABLED)
                    && w.value == serde_json::Value::Bool(true);
                if ends {
                    gone.insert(id);
                }
            }
        }
        if let Some(m) = &e.change.message {
            senders.insert(m.sender);
        }
    }
    if !topics.is_empty() {
        let ids: Vec<Uuid> = topics.into_iter().collect();
        match ctx
            .store
            .call(move |db| {
                ids.iter()
                    .filter_map(|id| db.topic(*id).transpose())
                    .collect::<Result<Vec<_>, _>>()
            })
            .await
        {
            Ok(records) => {
                for r in records {
                    ctx.topics.put(r);
                }
            }
            Err(e) => tracing::warn!(error = %e, "mesh: cannot reload topics"),
        }
    }
    for account in gone {
        // The account may have been re-enabled since: ask the store.
        let still = ctx.store.call(move |db| db.account(account)).await;
        if let Ok(Some(a)) = still {
            if a.deleted || a.disabled {
                let (code, why) = if a.deleted {
                    (ErrorCode::AccountDeleted, "the account was deleted")
                } else {
                    (ErrorCode::AuthFailed, "the account was disabled")
                };
                ctx.presence.close_all(account, NOBODY, code, why);
            }
        }
    }
    if senders.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = senders.into_iter().collect();
    let names: HashMap<Uuid, String> = match ctx.store.call(move |db| db.account_names(&ids)).await
    {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "mesh: cannot name message senders");
            HashMap::new()
        }
    };
    relay_messages(ctx, events, &names);
}

/// Relays kept messages to the members of their topics connected here, in
/// log order, each run of messages to one topic as one shared frame.
fn relay_messages(ctx: &Context, events: &[Event], names: &HashMap<Uuid, String>) {
    let mut run: Option<(Uuid, Vec<u8>, usize)> = None;
    for e in events {
        let Some(m) = &e.change.message else {
            continue;
        };
        if run.as_ref().is_some_and(|(t, _, _)| *t != m.topic) {
            if let Some((t, lines, n)) = run.take() {
                deliver(ctx, t, lines, n);
            }
        }
        let (_, lines, n) = run.get_or_insert_with(|| (m.topic, Vec::new(), 0));
        let from = names
            .get(&m.sender)
            .cloned()
            .unwrap_or_else(|| Entity::Account(m.sender).key());
        let (ts, topic) = (
            i64::try_from(e.hlc >> 16).unwrap_or_default(),
            m.topic.to_string(),
        );
        // `ex` as stored: the text the sender's node checked, every digit kept.
        write_line(lines, &KeptSend::new(m, ts, &topic, &from));
        *n += 1;
    }
    if let Some((t, lines, n)) = run {
        deliver(ctx, t, lines, n);
    }
}

fn deliver(ctx: &Context, topic: Uuid, lines: Vec<u8>, count: usize) {
    if let Some(t) = ctx.topics.get(topic) {
        ctx.presence
            .deliver(t.members.iter(), &Bytes::from(lines), count, NOBODY);
    }
}

fn parse(entity: &str, prefix: &str) -> Option<Uuid> {
    entity
        .strip_prefix(prefix)
        .and_then(|s| Uuid::parse_str(s).ok())
}
