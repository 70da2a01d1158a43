//! What events from other nodes change on this node beyond the store: the
//! topic table the hot path reads, sessions of accounts deleted or disabled
//! elsewhere (or whose name a merge gave to an earlier claim), and kept
//! messages relayed to the members connected here.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use bytes::Bytes;
use tracing::{info, warn};
use uuid::Uuid;

use super::NOBODY;
use crate::change::{Entity, field};
use crate::proto::packet::{KeptSend, write_line};
use crate::proto::{ErrorCode, Packet};
use crate::router::Topics;
use crate::router::topics::Put;
use crate::session::{
    Context, acl_value, announce_to_topic, end_sessions_of_ended, meta_packet, topic_event,
    topic_names,
};
use crate::store::TopicRecord;
use crate::store::{self, Db, Event};

/// Topics whose copies in the topic table changed with a batch of events:
/// the copy replaced and the new one, for [`apply`] to announce.
pub type Recached = Vec<(Arc<TopicRecord>, TopicRecord)>;

/// Reads back every topic `events` wrote and puts it in `cache`. Called in
/// the store job that applied the events, as sessions cache their own
/// changes: no later job answers ahead of the cache (a local `create` of a
/// name a peer's topic just took is refused, and the `join` after it finds
/// that topic). The topics are all read before any is put, so a failed
/// read leaves the table as it was.
pub fn recache(db: &mut Db, cache: &Topics, events: &[&Event]) -> Result<Recached, store::Error> {
    let ids: BTreeSet<Uuid> = events
        .iter()
        .flat_map(|e| &e.change.writes)
        .filter_map(|w| crate::store::parse_entity("topic:", &w.entity))
        .collect();
    let records = ids
        .into_iter()
        .filter_map(|id| db.topic(id).transpose())
        .collect::<Result<Vec<_>, _>>()?;
    let mut changed = Vec::new();
    for r in records {
        // Announced against the copy it replaces, and only if newer.
        let new = r.clone();
        if let Put::Taken(Some(old)) = cache.put(r) {
            changed.push((old, new));
        }
    }
    Ok(changed)
}

/// Ends the sessions here of the accounts that now claim `name` after
/// another (a partition's merge): they logged in by the name, which is now
/// shown as the earlier claim's, and would go on speaking by it. Sessions
/// of an account already shown otherwise are ended too; they log in again
/// by the same name.
async fn end_later_claims(ctx: &Context, name: String) {
    let later = match ctx.store.call(move |db| db.later_claims(&name)).await {
        Ok(later) => later,
        Err(e) => {
            warn!(error = %e, "mesh: cannot read the claims of a name");
            return;
        }
    };
    for account in later {
        if ctx.presence.connections(account) > 0 {
            info!(%account, "a merge gave the account's name to an earlier claim; its sessions end");
            ctx.presence.close_all(
                account,
                NOBODY,
                ErrorCode::AccountRenamed,
                "another account claimed the name first; log in again (by the name shown now, or by ticket for a user of another server)",
            );
        }
    }
}

/// Brings this node's connections up to date with `events`, just applied
/// to the store, in log order; `recached` is what [`recache`] did to the
/// topic table in the same store job.
pub async fn apply(ctx: &Context, events: &[Event], recached: Recached) {
    let mut gone = BTreeSet::new();
    let mut claimed = BTreeSet::new();
    let mut senders = BTreeSet::new();
    for e in events {
        for w in &e.change.writes {
            if let Some(id) = crate::store::parse_entity("account:", &w.entity) {
                let ends = (w.field == field::DELETED || w.field == field::DISABLED)
                    && w.value == serde_json::Value::Bool(true);
                if ends {
                    gone.insert(id);
                }
                if w.field == field::NAME {
                    if let Some(name) = w.value.as_str() {
                        claimed.insert(name.to_lowercase());
                    }
                }
            }
        }
        if let Some(m) = &e.change.message {
            senders.insert(m.sender);
        }
    }
    for (old, new) in recached {
        announce(ctx, &old, &new).await;
    }
    if !gone.is_empty() {
        // The accounts may have been re-enabled since: the store says.
        end_sessions_of_ended(ctx, gone.into_iter().collect()).await;
    }
    for name in claimed {
        end_later_claims(ctx, name).await;
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

/// Tells the members connected here what changed in a topic elsewhere, as
/// its node told its own: `join`, `leave`, `acl`, the new `meta`,
/// `delete`. What the actor was is not in the change, so events that name
/// one on its node come `from` this server (`@name`) here.
async fn announce(ctx: &Context, old: &TopicRecord, new: &TopicRecord) {
    let server = format!("@{}", ctx.server_name);
    let to = |extra: &[Uuid], p: &Packet| announce_to_topic(ctx, new, extra, p, NOBODY);
    if new.deleted {
        let p = topic_event("delete", old, &server);
        announce_to_topic(ctx, old, &[], &p, NOBODY);
        return;
    }
    let added: Vec<Uuid> = new.members.difference(&old.members).copied().collect();
    let removed: Vec<Uuid> = old.members.difference(&new.members).copied().collect();
    let meta_changed = old.name != new.name || old.meta != new.meta;
    let acl_changed = old.acl != new.acl;
    if added.is_empty() && removed.is_empty() && !meta_changed && !acl_changed {
        return;
    }
    let names = match topic_names(ctx, new, &removed).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "mesh: cannot name a topic's members");
            return;
        }
    };
    let name = |a: &Uuid| {
        names
            .get(a)
            .cloned()
            .unwrap_or_else(|| Entity::Account(*a).key())
    };
    for a in &added {
        to(&[*a], &topic_event("join", new, &name(a)));
    }
    for a in &removed {
        to(&[*a], &topic_event("leave", new, &name(a)));
    }
    if acl_changed {
        to(
            &[],
            &topic_event("acl", new, &server).with("acl", acl_value(new, &names)),
        );
    }
    if meta_changed {
        to(&[], &meta_packet(new, &names, &server));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Events that write a topic put its copy as the store now has it, and
    /// name the copy each replaced.
    #[test]
    fn recache_puts_the_topics_events_wrote_and_names_what_they_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "node").unwrap();
        let topics = Topics::default();
        let t = db
            .create_topic("lobby", Uuid::now_v7(), &Default::default())
            .unwrap();
        let created = db.events().unwrap();
        let refs: Vec<&Event> = created.iter().collect();
        // New to the table: put, and nothing replaced to announce.
        assert!(recache(&mut db, &topics, &refs).unwrap().is_empty());
        assert_eq!(topics.resolve("lobby").map(|r| r.id), Some(t.id));

        db.update_topic(t.id, Some("hall"), &Default::default(), 64)
            .unwrap();
        let all = db.events().unwrap();
        let renamed: Vec<&Event> = all.iter().skip(created.len()).collect();
        let changed = recache(&mut db, &topics, &renamed).unwrap();
        assert_eq!(changed.len(), 1);
        assert_eq!(
            (changed[0].0.name.as_str(), changed[0].1.name.as_str()),
            ("lobby", "hall")
        );
        assert!(topics.resolve("lobby").is_none());
        assert_eq!(topics.resolve("hall").map(|r| r.id), Some(t.id));

        // Events that write no topic change nothing.
        assert!(recache(&mut db, &topics, &[]).unwrap().is_empty());
    }
}
