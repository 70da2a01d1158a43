//! `presence`: who of the accounts one shares a topic with is online, on
//! this node or any node of the mesh this one hears from, and `presence`
//! events when that changes. Events go only to connections that asked
//! (like IRCv3's `away-notify`): presence costs a packet per watcher per
//! change, which clients that show no presence should not pay for.

use std::collections::{BTreeSet, HashMap};

use serde_json::Value;
use uuid::Uuid;

use super::{Context, Denied, LoggedIn, Outcome, Session};
use crate::proto::{Packet, reply};

impl Session<'_> {
    pub(super) async fn handle_presence(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        watch: bool,
    ) -> Result<Outcome, Denied> {
        // Watching before the list is made, and gathered changes sent
        // first: events are news relative to the last announcement, so the
        // list says who was online at that announcement, neither older nor
        // newer (a login and logout in between say nothing, so a list that
        // showed the login would be left standing).
        self.ctx.presence.watch(me.id, self.conn_id, watch);
        if !watch {
            return Ok(self.reply(reply::ack(id)));
        }
        announce_presence(self.ctx).await;
        let online = &self.ctx.presence.online;
        let peers: Vec<Uuid> = self
            .ctx
            .topics
            .member_of(me.id)
            .iter()
            .flat_map(|t| t.members.iter().copied())
            .filter(|m| *m != me.id && online.was_online_at_drain(m))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let names = self
            .ctx
            .store
            .call(move |db| db.account_names(&peers))
            .await?;
        let p = Packet::server("presence")
            .with("online", sorted_names(names.values().cloned()))
            .answering(id);
        Ok(self.reply(p))
    }
}

fn sorted_names(names: impl Iterator<Item = String>) -> Value {
    let mut v: Vec<String> = names.collect();
    v.sort_by_key(|n| n.to_lowercase());
    Value::from(v)
}

/// Sends what changed since the last call to the watching connections of
/// every account that shares a topic with an account that came online or
/// went offline: one `presence` event per connection, however many
/// changed (a node of the mesh that falls silent is one event, not a
/// storm).
pub async fn announce_presence(ctx: &Context) {
    let _turn = ctx.announcing.lock().await;
    let changes = ctx.presence.online.drain();
    if changes.is_empty() {
        return;
    }
    let state: HashMap<Uuid, bool> = changes
        .online
        .iter()
        .map(|a| (*a, true))
        .chain(changes.offline.iter().map(|a| (*a, false)))
        .collect();
    // Watcher → (came online, went offline).
    let mut per: HashMap<Uuid, (BTreeSet<Uuid>, BTreeSet<Uuid>)> = HashMap::new();
    for t in ctx.topics.all() {
        let changed: Vec<(Uuid, bool)> = t
            .members
            .iter()
            .filter_map(|m| state.get(m).map(|up| (*m, *up)))
            .collect();
        if changed.is_empty() {
            continue;
        }
        for w in ctx.presence.watchers(t.members.iter()) {
            let entry = per.entry(w).or_default();
            for (m, up) in &changed {
                if *m != w {
                    if *up { &mut entry.0 } else { &mut entry.1 }.insert(*m);
                }
            }
        }
    }
    if per.is_empty() {
        return;
    }
    let ids: Vec<Uuid> = state.keys().copied().collect();
    let names = match ctx.store.call(move |db| db.account_names(&ids)).await {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "presence: cannot read account names");
            return;
        }
    };
    let named =
        |set: &BTreeSet<Uuid>| sorted_names(set.iter().filter_map(|a| names.get(a).cloned()));
    for (watcher, (up, down)) in per {
        if up.is_empty() && down.is_empty() {
            continue;
        }
        let mut p = Packet::server("presence");
        if !up.is_empty() {
            p = p.with("online", named(&up));
        }
        if !down.is_empty() {
            p = p.with("offline", named(&down));
        }
        ctx.presence.deliver_to_watchers(watcher, &p.to_line());
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::super::testing;
    use super::*;
    use crate::router::{Closer, Outbound, Receiver};
    use crate::store;

    /// A room of `owner`'s with `members`, and `owner`'s connection `conn`
    /// watching presence, told the first announcement already: what it is
    /// told next lands on the receiver.
    async fn watching_a_room(
        ctx: &Context,
        owner: Uuid,
        members: &[Uuid],
        conn: u64,
    ) -> (Receiver, std::sync::Arc<Closer>) {
        let t = super::super::topic::create_cached(
            &ctx.store,
            &ctx.topics,
            "room".into(),
            owner,
            serde_json::Map::new(),
            10,
        )
        .await
        .unwrap()
        .unwrap();
        for m in members {
            testing::set_member(ctx, t.id, *m, true).await.unwrap();
        }
        let (out, mut rx, closer) = Outbound::channel(1 << 16, 1 << 30);
        ctx.presence.add(owner, conn, out, None);
        ctx.presence.watch(owner, conn, true);
        announce_presence(ctx).await;
        let _ = testing::replies(&mut rx);
        (rx, closer)
    }

    /// Two announcements at once (the loop's and a `presence` request's)
    /// deliver in the order they drained: a watcher is told an account came
    /// online, then that it went offline, never the other way round.
    #[tokio::test]
    async fn announcements_at_once_deliver_in_drain_order() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let (w, x) = (Uuid::now_v7(), Uuid::now_v7());
        let (mut rx, _closer) = watching_a_room(&ctx, w, &[x], 1).await;
        let (release, held) = store::hold_store_thread(&ctx.store).await;
        ctx.presence.online.set_local(x, true);
        let mut first = Box::pin(announce_presence(&ctx));
        assert!((&mut first).now_or_never().is_none());
        ctx.presence.online.set_local(x, false);
        let second = Box::pin(announce_presence(&ctx));
        drop(release);
        held.await.unwrap().unwrap();
        // The later one polled first: it must still deliver second.
        tokio::join!(second, first);
        let events = testing::replies(&mut rx);
        let online = events.find(r#""online""#);
        let offline = events.find(r#""offline""#);
        assert!(
            online.is_some() && offline.is_some() && online < offline,
            "{events}"
        );
        ctx.store.close().await;
    }

    /// The answer is never contradicted by what follows: an account that
    /// logs in while the answer is being made (here, while the
    /// announcement before it waits for the store) and out again before
    /// the next announcement is either not in the answer or reported
    /// offline afterwards, never left shown online.
    #[tokio::test]
    async fn an_answer_made_during_a_flap_is_not_left_standing() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let mut ids = Vec::new();
        for name in ["w", "x", "y"] {
            let a = ctx
                .store
                .call_synced(move |db| db.create_account(name, "h"))
                .await
                .unwrap();
            ids.push(a.id);
        }
        let (w, x, y) = (ids[0], ids[1], ids[2]);
        // w's connection 2, whose events land on `events`.
        let (mut events, _closer) = watching_a_room(&ctx, w, &[x, y], 2).await;
        // A pending change, so the announcement before the answer reads
        // names from the store, which is held.
        ctx.presence.online.set_local(y, true);
        let (release, held) = store::hold_store_thread(&ctx.store).await;
        let (mut s, mut rx) = testing::session(&ctx, w, "w", 2);
        let me = crate::session::LoggedIn::new(w, "w".into());
        let mut asking = Box::pin(s.handle_presence(Some("p1"), &me, true));
        assert!((&mut asking).now_or_never().is_none());
        ctx.presence.online.set_local(x, true);
        drop(release);
        held.await.unwrap().unwrap();
        let _ = asking.await.unwrap();
        drop(s);
        let answer = testing::replies(&mut rx);
        ctx.presence.online.set_local(x, false);
        announce_presence(&ctx).await;
        let after = testing::replies(&mut events);
        let said_online = answer.contains(r#""x""#);
        let told_offline = after.contains(r#""offline":["x"]"#);
        assert!(
            !said_online || told_offline,
            "answer {answer} then only {after}"
        );
        ctx.store.close().await;
    }
}
