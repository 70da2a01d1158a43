//! Topics: create, join, leave, topic metadata, the ACL, delete. Every change
//! is committed to the store first, then the cached topic is reloaded from it,
//! then members are told, then the requester gets its reply.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};
use tracing::info;
use uuid::Uuid;

use super::admission::members_only;
use super::{Denied, LoggedIn, Outcome, Session};
use crate::proto::name::check_topic_name;
use crate::proto::{ErrorCode, Packet, reply};
use crate::router::Topics;
use crate::router::acl::{Acl, Actor, Flag, OwnedActor, Subject};
use crate::store::{self, Db, TopicRecord};

/// Flags a topic ACL may hold.
const TOPIC_FLAGS: [Flag; 6] = [
    Flag::Owner,
    Flag::Op,
    Flag::Read,
    Flag::Write,
    Flag::Ban,
    Flag::Admit,
];

pub(super) fn not_found() -> Denied {
    Denied::new(ErrorCode::TopicNotFound, "no such topic")
}

fn denied(what: &str) -> Denied {
    Denied::new(
        ErrorCode::AclDenied,
        format!("the topic's ACL does not let you {what}"),
    )
}

/// `members` and `acl` are the server's to say, never metadata; so are
/// the read-marker keys a topic's `meta` carries at login.
fn check_reserved(values: &Map<String, Value>) -> Result<(), Denied> {
    for reserved in ["members", "acl", "read", "unread", "unread_more"] {
        if values.contains_key(reserved) {
            return Err(Denied::new(
                ErrorCode::MetaInvalid,
                format!("{reserved:?} is kept by the server; use the acl, join and leave ops"),
            ));
        }
    }
    Ok(())
}

/// Creates a topic and caches it in the same store job. Cached after the
/// job instead, a second client's `create` of the name could be refused as
/// taken and its `join` then find no such topic, while the creator's task
/// waited to run. The creator may be a member of at most `max_topics`
/// topics, checked in the job: its other connections may be joining or
/// creating at the same moment.
pub(super) async fn create_cached(
    store: &store::Store,
    topics: &Arc<Topics>,
    name: String,
    creator: Uuid,
    meta: Map<String, Value>,
    max_topics: usize,
) -> Result<Result<TopicRecord, Denied>, store::Error> {
    let topics = topics.clone();
    store
        .call_synced(move |db| {
            if let Err(d) = enter_another(&topics, creator, max_topics) {
                return Ok(Err(d));
            }
            let record = db.create_topic(&name, creator, &meta)?;
            topics.put(record.clone());
            Ok(Ok(record))
        })
        .await
}

/// Commits `who` joining topic `id` and caches the topic, in one store job
/// that checks once more that the ACL lets it read (a ban committed while
/// the join waited keeps it out), that it need not ask to join unless it
/// was `admitted`, and the limits ([`join_one`]): the checks
/// before it read the topic table while other jobs (a ban, the account's
/// other joins, others joining the topic) were committing; the job's table
/// is the one those jobs keep. `None` if there is no such topic.
async fn join_cached(
    store: &store::Store,
    topics: &Arc<Topics>,
    id: Uuid,
    (who, admitted): (OwnedActor, bool),
    max_members: usize,
    max_topics: usize,
) -> Result<Result<Option<TopicRecord>, Denied>, store::Error> {
    let topics = topics.clone();
    store
        .call_synced(move |db| {
            let Some(t) = topics.get(id) else {
                return Ok(Ok(None));
            };
            let account = who.actor().account;
            if !t.members.contains(&account) {
                if !t.acl.allows(who.actor(), Flag::Read) {
                    return Ok(Err(denied("join it")));
                }
                if !admitted && members_only(&t) {
                    return Ok(Err(Denied::new(
                        ErrorCode::AclDenied,
                        "the topic's members now admit newcomers; ask again to join",
                    )));
                }
                if let Err(d) = join_one(&topics, &t, account, max_members, max_topics) {
                    return Ok(Err(d));
                }
                db.set_member(id, account, true)?;
            }
            recache(db, &topics, id).map(Ok)
        })
        .await
}

/// Reads topic `id` back as the job that changed it left it and puts it
/// in the table; `None` if there is no such topic (or it is deleted).
fn recache(db: &Db, topics: &Topics, id: Uuid) -> Result<Option<TopicRecord>, store::Error> {
    let record = db.topic(id)?;
    if let Some(r) = &record {
        topics.put(r.clone());
    }
    Ok(record.filter(|r| !r.deleted))
}

/// How this server judges actors named in an ACL: its own name, and whether
/// `*` includes other servers' users.
#[derive(Debug, Clone)]
struct AclView {
    server_lower: String,
    star_includes_foreign: bool,
}

impl AclView {
    fn of(ctx: &super::Context) -> Self {
        Self {
            server_lower: ctx.server_name_lower.clone(),
            star_includes_foreign: ctx.star_includes_foreign,
        }
    }

    /// The account `account`, named `name_lower` here (`user@home` for a
    /// user of another server).
    fn named<'a>(&'a self, account: Uuid, name_lower: &'a str) -> Actor<'a> {
        Actor::named(
            account,
            name_lower,
            &self.server_lower,
            self.star_includes_foreign,
        )
    }

    /// The one user `subject` names (a local account, or `user@home`), as
    /// an actor; `None` for `@server` and `*`.
    fn user<'a>(&'a self, subject: &'a Subject) -> Option<Actor<'a>> {
        match subject {
            Subject::Account(a) => Some(Actor::local(*a, &self.server_lower)),
            Subject::Remote(name) => Some(self.named(Uuid::nil(), name)),
            Subject::Server(_) | Subject::Everyone => None,
        }
    }
}

/// One `acl` request's change: who asks, whose entries, which flags.
struct AclChange {
    by: OwnedActor,
    subject: Subject,
    changes: Vec<(Flag, bool)>,
    view: AclView,
}

impl AclChange {
    /// Whether the asker may make this change to `acl`. Owners change
    /// anything; an op may only ban and unban one user (an account or
    /// `user@server`) that holds neither `owner` nor `op` through any entry,
    /// so no ban of a server or of `*` can reach another op.
    fn allowed(&self, acl: &Acl) -> Result<(), Denied> {
        let by = self.by.actor();
        if acl.allows(by, Flag::Owner) {
            return Ok(());
        }
        let only_bans = self.changes.iter().all(|(f, _)| *f == Flag::Ban);
        let target_plain = self
            .view
            .user(&self.subject)
            .is_some_and(|u| !acl.is_privileged(u));
        if acl.allows(by, Flag::Op) && only_bans && target_plain {
            Ok(())
        } else {
            Err(denied("change that"))
        }
    }
}

/// Commits an ACL change in one store job that judges it against the topic
/// as the jobs before it left it: two owners revoking each other at once
/// cannot both pass a check made before either committed. A ban ends the
/// membership of every member the new ACL bans, in the same change. The
/// topic before and after.
async fn acl_cached(
    store: &store::Store,
    topics: &Arc<Topics>,
    id: Uuid,
    req: AclChange,
) -> Result<Result<(Arc<TopicRecord>, TopicRecord), Denied>, Denied> {
    let topics = topics.clone();
    let done = store
        .call_synced(move |db| {
            let Some(t) = topics.get(id) else {
                return Ok(Err(not_found()));
            };
            if let Err(d) = req.allowed(&t.acl) {
                return Ok(Err(d));
            }
            let mut after = t.acl.clone();
            for (flag, granted) in &req.changes {
                after.set(req.subject.clone(), *flag, *granted);
            }
            // Only the change that takes the last owner entry away is
            // refused: one a partition's merge left without an owner (two
            // owners revoking each other on two nodes) still takes bans.
            let has_owner = |acl: &Acl| acl.grants().any(|(_, f)| *f == Flag::Owner);
            if has_owner(&t.acl) && !has_owner(&after) {
                return Ok(Err(Denied::new(
                    ErrorCode::RequestInvalid,
                    "a topic keeps at least one owner",
                )));
            }
            let ends = banned_members(db, &t, &after, &req.view)?;
            for (i, (flag, granted)) in req.changes.iter().enumerate() {
                let ends = if i == 0 { ends.as_slice() } else { &[] };
                db.set_topic_acl(id, &req.subject, *flag, *granted, ends)?;
            }
            Ok(match recache(db, &topics, id)? {
                Some(record) => Ok((t, record)),
                None => Err(not_found()),
            })
        })
        .await;
    done.map_err(name_error)
}

/// The members of `t` that `acl` bans, each judged as what it is (a local
/// account, or a user of another server by its name here).
fn banned_members(
    db: &Db,
    t: &TopicRecord,
    acl: &Acl,
    view: &AclView,
) -> Result<Vec<Uuid>, store::Error> {
    if !acl.grants().any(|(_, f)| *f == Flag::Ban) {
        return Ok(Vec::new());
    }
    let members: Vec<Uuid> = t.members.iter().copied().collect();
    let names = db.account_names(&members)?;
    Ok(members
        .into_iter()
        .filter(|m| {
            let name = names.get(m).map(|n| n.to_lowercase()).unwrap_or_default();
            acl.banned(view.named(*m, &name))
        })
        .collect())
}

/// Whether `account` may become a member of `t`: the topic's room, then
/// the account's ([`enter_another`]).
fn join_one(
    topics: &Topics,
    t: &TopicRecord,
    account: Uuid,
    max_members: usize,
    max_topics: usize,
) -> Result<(), Denied> {
    if t.members.len() >= max_members {
        return Err(Denied::new(
            ErrorCode::TopicFull,
            format!("the topic has {} members, its limit", t.members.len()),
        ));
    }
    enter_another(topics, account, max_topics)
}

/// Whether `account` may become a member of one more topic.
fn enter_another(topics: &Topics, account: Uuid, max_topics: usize) -> Result<(), Denied> {
    let mine = topics.member_of(account).len();
    if mine >= max_topics {
        return Err(Denied::new(
            ErrorCode::AccountTooManyTopics,
            format!("{mine} topics, the limit for one account; leave one first"),
        ));
    }
    Ok(())
}

/// Runs `change` to topic `id`, reads the topic back and caches it, all in
/// one store job, for the reason [`create_cached`] gives (a rename, too,
/// frees one name and takes another). `None` if there is no such topic.
async fn change_cached(
    store: &store::Store,
    topics: &Arc<Topics>,
    id: Uuid,
    change: impl FnOnce(&mut Db) -> Result<(), store::Error> + Send + 'static,
) -> Result<Option<TopicRecord>, store::Error> {
    let topics = topics.clone();
    store
        .call_synced(move |db| {
            change(db)?;
            recache(db, &topics, id)
        })
        .await
}

fn name_error(e: store::Error) -> Denied {
    match e {
        store::Error::NameTaken => {
            Denied::new(ErrorCode::TopicNameTaken, "another topic has that name")
        }
        // Deleted by a job that ran first.
        store::Error::NotFound => not_found(),
        other => Denied::from(other),
    }
}

impl Session<'_> {
    /// `me` as ACLs see it: a local account of this server, or a user of
    /// another server (its `user@home`, its home's `@home`, and `*` as the
    /// operator decides).
    pub(super) fn actor<'s>(&'s self, me: &'s LoggedIn) -> Actor<'s> {
        me.actor(self.ctx)
    }

    /// Whether `account` may become a member of `t`: the topic's member
    /// limit and the account's topic limit.
    pub(super) fn may_join(&self, account: Uuid, t: &TopicRecord) -> Result<(), Denied> {
        let (members, topics) = (
            self.ctx.max_members_per_topic,
            self.ctx.max_topics_per_account,
        );
        join_one(&self.ctx.topics, t, account, members, topics)
    }

    /// Whether `account` may become a member of one more topic.
    pub(super) fn may_enter_another(&self, account: Uuid) -> Result<(), Denied> {
        enter_another(&self.ctx.topics, account, self.ctx.max_topics_per_account)
    }

    /// Commits `me` joining or leaving `t`, reloads the topic, and tells its
    /// members and the account's other connections.
    pub(super) async fn set_membership(
        &self,
        me: &LoggedIn,
        t: &TopicRecord,
        member: bool,
    ) -> Result<TopicRecord, Denied> {
        let record = self
            .commit_membership(self.actor(me), t, member, false)
            .await?;
        self.announce_membership(&record, me.id, &me.name, member);
        Ok(record)
    }

    /// Commits `who` joining or leaving `t` (one replicated register) and
    /// reloads the topic.
    pub(super) async fn commit_membership(
        &self,
        who: Actor<'_>,
        t: &TopicRecord,
        member: bool,
        admitted: bool,
    ) -> Result<TopicRecord, Denied> {
        let tid = t.id;
        let account = who.account;
        if !member {
            return self
                .change_topic(tid, move |db| db.set_member(tid, account, false))
                .await;
        }
        let (members, topics) = (
            self.ctx.max_members_per_topic,
            self.ctx.max_topics_per_account,
        );
        join_cached(
            &self.ctx.store,
            &self.ctx.topics,
            tid,
            (who.into(), admitted),
            members,
            topics,
        )
        .await??
        .ok_or_else(not_found)
    }

    /// Tells the topic's members, and the account's connections, that
    /// `account` (named `name`) joined or left.
    pub(super) fn announce_membership(
        &self,
        record: &TopicRecord,
        account: Uuid,
        name: &str,
        member: bool,
    ) {
        let op = if member { "join" } else { "leave" };
        self.announce(record, &[account], &self.event(op, record, name));
    }

    pub(super) fn resolve(&self, topic: &str) -> Result<Arc<TopicRecord>, Denied> {
        self.ctx.topics.resolve(topic).ok_or_else(not_found)
    }

    /// The topic named `topic`, if `me` may read it (`acl/denied` if not).
    pub(super) fn readable(&self, me: &LoggedIn, topic: &str) -> Result<Arc<TopicRecord>, Denied> {
        let t = self.resolve(topic)?;
        self.check_read(me, &t)?;
        Ok(t)
    }

    /// Whether `me` may read `t`: the `read` flag, and membership where the
    /// topic's members admit newcomers.
    pub(super) fn check_read(&self, me: &LoggedIn, t: &TopicRecord) -> Result<(), Denied> {
        if !t.acl.allows(self.actor(me), Flag::Read) {
            return Err(denied("read it"));
        }
        if members_only(t) && !t.members.contains(&me.id) {
            return Err(Denied::new(
                ErrorCode::TopicNotMember,
                "the topic shows itself to its members only; ask to join",
            ));
        }
        Ok(())
    }

    /// Commits `change` to topic `id` and caches the topic as it then
    /// stands, in one store job ([`change_cached`]).
    pub(super) async fn change_topic(
        &self,
        id: Uuid,
        change: impl FnOnce(&mut Db) -> Result<(), store::Error> + Send + 'static,
    ) -> Result<TopicRecord, Denied> {
        change_cached(&self.ctx.store, &self.ctx.topics, id, change)
            .await
            .map_err(name_error)?
            .ok_or_else(not_found)
    }

    /// Account names for rendering members and ACL subjects.
    async fn names(&self, t: &TopicRecord) -> Result<HashMap<Uuid, String>, Denied> {
        Ok(topic_names(self.ctx, t, &[]).await?)
    }

    /// The topic's `meta`: its name, metadata, members and ACL.
    pub(super) async fn topic_meta(&self, t: &TopicRecord, from: &str) -> Result<Packet, Denied> {
        let names = self.names(t).await?;
        Ok(meta_packet(t, &names, from))
    }

    fn render_acl(&self, t: &TopicRecord, names: &HashMap<Uuid, String>) -> Value {
        acl_value(t, names)
    }

    /// Sends `packet` to every connection of the topic's members (and of
    /// `extra` accounts) except this one: serialized once, shared.
    fn announce(&self, t: &TopicRecord, extra: &[Uuid], packet: &Packet) {
        announce_to_topic(self.ctx, t, extra, packet, self.conn_id);
    }

    fn event(&self, op: &str, t: &TopicRecord, from: &str) -> Packet {
        topic_event(op, t, from)
    }

    pub(super) async fn handle_create(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        name: String,
        meta: Map<String, Value>,
    ) -> Result<Outcome, Denied> {
        let server_acl = self.ctx.store.call(|db| db.server_acl()).await?;
        let actor = self.actor(me);
        if !(server_acl.allows(actor, Flag::Create) || server_acl.allows(actor, Flag::Admin)) {
            return Err(Denied::new(
                ErrorCode::AclDenied,
                "the server's ACL does not let you create topics",
            ));
        }
        check_topic_name(&name).map_err(|m| Denied::new(ErrorCode::TopicInvalidName, m))?;
        check_reserved(&meta)?;
        // The creator becomes a member of the new (empty) topic.
        self.may_enter_another(me.id)?;
        self.check_meta(&meta)?;
        let max_topics = self.ctx.max_topics_per_account;
        let record = create_cached(
            &self.ctx.store,
            &self.ctx.topics,
            name,
            me.id,
            meta,
            max_topics,
        )
        .await
        .map_err(name_error)??;
        info!(account = %me.name, topic = %record.name, topic_id = %record.id, "topic created");
        let mut p = self.topic_meta(&record, &me.name).await?;
        p = p.answering(id);
        Ok(self.reply(p))
    }

    pub(super) async fn handle_join(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        note: Option<String>,
        key: Option<String>,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        if !t.acl.allows(self.actor(me), Flag::Read) {
            return Err(denied("join it"));
        }
        let record = if t.members.contains(&me.id) {
            (*t).clone()
        } else if members_only(&t) {
            return self.request_join(id, me, &t, note, key);
        } else {
            self.may_join(me.id, &t)?;
            self.set_membership(me, &t, true).await?
        };
        let mut p = self.topic_meta(&record, &me.name).await?;
        p = p.answering(id);
        Ok(self.reply(p))
    }

    pub(super) async fn handle_leave(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        if !t.members.contains(&me.id) {
            if self.withdraw_join(me, &t) {
                return Ok(self.reply(reply::ack(id)));
            }
            return Err(Denied::new(
                ErrorCode::TopicNotMember,
                "you are not a member of that topic",
            ));
        }
        self.set_membership(me, &t, false).await?;
        Ok(self.reply(reply::ack(id)))
    }

    pub(super) async fn handle_topic_meta(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        mut values: Map<String, Value>,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        if values.is_empty() {
            self.check_read(me, &t)?;
            let mut p = self.topic_meta(&t, &me.name).await?;
            p = p.answering(id);
            return Ok(self.reply(p));
        }
        if !t.acl.allows(self.actor(me), Flag::Op) {
            return Err(denied("change its metadata"));
        }
        check_reserved(&values)?;
        let rename = match values.remove("name") {
            None => None,
            Some(Value::String(n)) => {
                check_topic_name(&n).map_err(|m| Denied::new(ErrorCode::TopicInvalidName, m))?;
                Some(n)
            }
            Some(_) => {
                return Err(Denied::new(
                    ErrorCode::TopicInvalidName,
                    "a topic name is a string",
                ));
            }
        };
        self.check_meta(&values)?;
        let (tid, max) = (t.id, self.ctx.max_meta_keys);
        let record = self
            .change_topic(tid, move |db| {
                db.update_topic(tid, rename.as_deref(), &values, max)
            })
            .await?;
        let p = self.topic_meta(&record, &me.name).await?;
        self.announce(&record, &[], &p);
        Ok(self.reply(reply::ack(id)))
    }

    /// Resolves a subject as written on the wire.
    async fn subject(&self, text: &str) -> Result<Subject, Denied> {
        let bad = |m: &str| Denied::new(ErrorCode::RequestInvalid, m.to_owned());
        if text == "*" {
            return Ok(Subject::Everyone);
        }
        if let Some(server) = text.strip_prefix('@') {
            if !crate::config::valid_server_name(server) {
                return Err(bad("`@server` needs a server name"));
            }
            return Ok(Subject::Server(text.to_lowercase()));
        }
        let local = match text.split_once('@') {
            Some((user, server)) if server.eq_ignore_ascii_case(&self.ctx.server_name) => user,
            Some((user, server)) => {
                let named = crate::federation::wire::is_remote_user(user);
                if !named || !crate::config::valid_server_name(server) {
                    return Err(bad("a subject is name, name@server, @server or *"));
                }
                return Ok(Subject::Remote(text.to_lowercase()));
            }
            None => text,
        };
        let name = local.to_owned();
        let account = self
            .ctx
            .store
            .call(move |db| db.account_by_name(&name))
            .await?;
        match account {
            Some(a) if !a.deleted => Ok(Subject::Account(a.id)),
            _ => Err(bad("no account has that name")),
        }
    }

    pub(super) async fn handle_acl(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        subject: Option<String>,
        grant: Vec<String>,
        revoke: Vec<String>,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        let actor = self.actor(me);
        let Some(subject_text) = subject else {
            self.check_read(me, &t)?;
            let names = self.names(&t).await?;
            let mut p = self
                .event("acl", &t, &me.name)
                .with("acl", self.render_acl(&t, &names));
            p = p.answering(id);
            return Ok(self.reply(p));
        };
        let parse = |list: &[String]| -> Result<Vec<Flag>, Denied> {
            list.iter()
                .map(|f| {
                    Flag::parse(f)
                        .filter(|f| TOPIC_FLAGS.contains(f))
                        .ok_or_else(|| {
                            Denied::new(
                                ErrorCode::RequestInvalid,
                                format!("{f:?} is not a topic flag"),
                            )
                        })
                })
                .collect()
        };
        let (grant, revoke) = (parse(&grant)?, parse(&revoke)?);
        if grant.is_empty() && revoke.is_empty() {
            return Err(Denied::new(
                ErrorCode::RequestInvalid,
                "ex.grant or ex.revoke names the flags to change",
            ));
        }
        let subject = self.subject(&subject_text).await?;
        if subject == Subject::Everyone && grant.contains(&Flag::Ban) {
            return Err(Denied::new(
                ErrorCode::RequestInvalid,
                "`*` cannot be banned; revoke its read instead",
            ));
        }
        let changes: Vec<(Flag, bool)> = grant
            .iter()
            .map(|f| (*f, true))
            .chain(revoke.iter().map(|f| (*f, false)))
            .collect();
        let (before, record) = acl_cached(
            &self.ctx.store,
            &self.ctx.topics,
            t.id,
            AclChange {
                by: actor.into(),
                subject,
                changes,
                view: AclView::of(self.ctx),
            },
        )
        .await??;
        let names = self.names(&record).await?;
        let acl_event = self
            .event("acl", &record, &me.name)
            .with("acl", self.render_acl(&record, &names));
        self.announce(&record, &[], &acl_event);
        // A ban takes effect at once: the members it names are out, and
        // told (an account, or another server's users it names).
        let banned: Vec<Uuid> = before
            .members
            .iter()
            .filter(|m| !record.members.contains(m))
            .copied()
            .collect();
        if !banned.is_empty() {
            let ids = banned.clone();
            let who = self
                .ctx
                .store
                .call(move |db| db.account_names(&ids))
                .await?;
            for account in banned {
                let name = who.get(&account).cloned().unwrap_or_default();
                let leave = self
                    .event("leave", &record, &name)
                    .with("reason", "banned")
                    .with("by", me.name.as_str());
                self.announce(&record, &[account], &leave);
            }
        }
        Ok(self.reply(reply::ack(id)))
    }

    pub(super) async fn handle_delete(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        if !t.acl.allows(self.actor(me), Flag::Owner) {
            return Err(denied("delete it"));
        }
        let tid = t.id;
        // The topic is gone from the table afterwards: nothing to read back.
        change_cached(&self.ctx.store, &self.ctx.topics, tid, move |db| {
            db.delete_topic(tid)
        })
        .await
        .map_err(name_error)?;
        info!(account = %me.name, topic = %t.name, topic_id = %t.id, "topic deleted");
        self.announce(&t, &[], &self.event("delete", &t, &me.name));
        Ok(self.reply(reply::ack(id)))
    }
}

/// Names of a topic's members and ACL subjects, and of `more` accounts.
pub(crate) async fn topic_names(
    ctx: &super::Context,
    t: &TopicRecord,
    more: &[Uuid],
) -> Result<HashMap<Uuid, String>, store::Error> {
    let mut ids: Vec<Uuid> = t.members.iter().copied().collect();
    ids.extend(t.acl.grants().filter_map(|(s, _)| match s {
        Subject::Account(id) => Some(*id),
        _ => None,
    }));
    ids.extend_from_slice(more);
    ctx.store.call(move |db| db.account_names(&ids)).await
}

/// A topic's `meta` packet: its name, metadata, members and ACL.
pub(crate) fn meta_packet(t: &TopicRecord, names: &HashMap<Uuid, String>, from: &str) -> Packet {
    let mut p = Packet::server("meta").with_from(from);
    p.topic = Some(t.id.to_string());
    p.ex.insert("name".into(), Value::from(t.name.as_str()));
    for (k, v) in &t.meta {
        p.ex.insert(k.clone(), v.clone());
    }
    let members: Vec<Value> = t
        .members
        .iter()
        .filter_map(|m| names.get(m))
        .map(|n| Value::from(n.as_str()))
        .collect();
    p.ex.insert("members".into(), Value::Array(members));
    p.ex.insert("acl".into(), acl_value(t, names));
    p
}

/// A topic's ACL as the wire shows it, accounts by name.
pub(crate) fn acl_value(t: &TopicRecord, names: &HashMap<Uuid, String>) -> Value {
    t.acl.to_wire(|s| match s {
        Subject::Account(id) => names
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("account:{id}")),
        other => other.key(),
    })
}

/// An event about a topic (`join`, `leave`, `acl`, `delete`) from `from`.
pub(crate) fn topic_event(op: &str, t: &TopicRecord, from: &str) -> Packet {
    let mut p = Packet::server(op).with_from(from);
    p.topic = Some(t.id.to_string());
    p
}

/// Sends `packet` to every connection of the topic's members (and of
/// `extra` accounts) but connection `except`: serialized once, shared.
pub(crate) fn announce_to_topic(
    ctx: &super::Context,
    t: &TopicRecord,
    extra: &[Uuid],
    packet: &Packet,
    except: u64,
) {
    let bytes = packet.to_line();
    let accounts: Vec<&Uuid> = t
        .members
        .iter()
        .chain(extra.iter().filter(|a| !t.members.contains(a)))
        .collect();
    ctx.presence.deliver(accounts, &bytes, 1, except);
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::super::testing;
    use super::*;

    /// A new store in a temporary directory, and an empty topic table.
    fn store_and_table() -> (tempfile::TempDir, store::Store, Arc<Topics>) {
        let dir = tempfile::tempdir().unwrap();
        let store = store::Store::open(dir.path(), "node").unwrap();
        (dir, store, Arc::new(Topics::default()))
    }

    /// `account` as a local account of the tests' server.
    fn local(account: Uuid) -> OwnedActor {
        Actor::local(account, "localhost").into()
    }

    /// Runs `job` up to queuing its store job, lets the store thread run
    /// that job and the next, and hands `job` back unfinished: what the
    /// table holds then is what the store job did, not the caller.
    async fn queued_and_run<F: Future + Unpin>(store: &store::Store, mut job: F) -> F {
        let (release, _held) = store::hold_store_thread(store).await;
        // The store thread is held: the job is queued and cannot be done.
        assert!((&mut job).now_or_never().is_none());
        drop(release);
        // Jobs run in order: when this one has run, so has the job's.
        store.call(|_| Ok(())).await.unwrap();
        job
    }

    /// The topic is in the table once the store has run the job that
    /// created it, whether or not the creator's task has run since.
    #[tokio::test]
    async fn a_created_topic_is_cached_by_the_job_that_commits_it() {
        let (_dir, store, topics) = store_and_table();
        let create = create_cached(
            &store,
            &topics,
            "lobby".into(),
            Uuid::now_v7(),
            Map::new(),
            1,
        );
        let create = queued_and_run(&store, Box::pin(create)).await;
        let cached = topics.resolve("LOBBY").expect("cached by the create's job");
        assert_eq!(cached.name, "lobby");
        assert_eq!(create.await.unwrap().unwrap().id, cached.id);
        store.close().await;
    }

    /// Joins that all passed the check before their jobs (three at once)
    /// are held to the limits in the jobs: one account, one topic more;
    /// one topic, one member more.
    #[tokio::test]
    async fn joins_at_once_are_held_to_the_limits_in_their_jobs() {
        let (_dir, store, topics) = store_and_table();
        let owner = Uuid::now_v7();
        let mut ids = Vec::new();
        for name in ["a", "b", "c", "d"] {
            let t = create_cached(&store, &topics, name.into(), owner, Map::new(), usize::MAX)
                .await
                .unwrap()
                .unwrap();
            ids.push(t.id);
        }
        let amy = Uuid::now_v7();
        let joins = ids[..3]
            .iter()
            .map(|id| join_cached(&store, &topics, *id, (local(amy), false), usize::MAX, 1));
        let joined = futures_util::future::join_all(joins).await;
        let refused: Vec<_> = joined
            .into_iter()
            .filter_map(|r| r.unwrap().err())
            .map(|d| d.code())
            .collect();
        assert_eq!(refused, [ErrorCode::AccountTooManyTopics; 2]);
        assert_eq!(topics.member_of(amy).len(), 1);
        // A create makes its creator a member: held to the same limit.
        let created = create_cached(&store, &topics, "e".into(), amy, Map::new(), 1).await;
        assert!(matches!(created, Ok(Err(d)) if d.code() == ErrorCode::AccountTooManyTopics));
        // The owner and one more: a topic of two.
        let others = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let joins = others
            .iter()
            .map(|who| join_cached(&store, &topics, ids[3], (local(*who), false), 2, usize::MAX));
        let joined = futures_util::future::join_all(joins).await;
        let full = joined
            .into_iter()
            .filter(|r| matches!(r, Ok(Err(d)) if d.code() == ErrorCode::TopicFull))
            .count();
        assert_eq!(full, 2);
        assert_eq!(topics.get(ids[3]).map(|t| t.members.len()), Some(2));
        store.close().await;
    }

    /// A rename frees the old name and takes the new one in the table in
    /// the job that commits it.
    #[tokio::test]
    async fn a_renamed_topic_is_cached_by_the_job_that_commits_it() {
        let (_dir, store, topics) = store_and_table();
        let t = create_cached(
            &store,
            &topics,
            "lobby".into(),
            Uuid::now_v7(),
            Map::new(),
            1,
        )
        .await
        .unwrap()
        .unwrap();
        let id = t.id;
        let rename = change_cached(&store, &topics, id, move |db| {
            db.update_topic(id, Some("hall"), &Map::new(), 64)
        });
        let rename = queued_and_run(&store, Box::pin(rename)).await;
        assert_eq!(topics.resolve("hall").map(|r| r.id), Some(id));
        assert!(topics.resolve("lobby").is_none());
        assert_eq!(rename.await.unwrap().map(|r| r.name), Some("hall".into()));
        store.close().await;
    }

    /// Accounts named `names` in the store of `ctx`.
    async fn accounts(ctx: &super::super::Context, names: &[&'static str]) -> Vec<Uuid> {
        let mut out = Vec::new();
        for name in names.iter().copied() {
            let a = ctx
                .store
                .call(move |db| db.create_account(name, "x"))
                .await
                .unwrap();
            out.push(a.id);
        }
        out
    }

    /// Runs `first` and then `second` up to their store jobs while the
    /// store thread is held, so `second`'s job queues behind `first`'s, then
    /// lets the store run and finishes both (`second` polled first: it must
    /// not need `first` to go on).
    async fn both_queued<A: Future + Unpin, B: Future + Unpin>(
        store: &store::Store,
        mut first: A,
        mut second: B,
    ) -> (A::Output, B::Output) {
        let (release, held) = store::hold_store_thread(store).await;
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        drop(release);
        held.await.unwrap().unwrap();
        let b = second.await;
        (first.await, b)
    }

    /// `owner` creates topic `name` (open: `*` reads and writes).
    async fn topic(ctx: &super::super::Context, owner: Uuid, name: &str) -> Uuid {
        create_cached(&ctx.store, &ctx.topics, name.into(), owner, Map::new(), 10)
            .await
            .unwrap()
            .unwrap()
            .id
    }

    /// A ban committed while bob's `join` waits in the store's queue (it
    /// passed its check on the table as it was) keeps bob out: the join's
    /// store job judges the ACL as the ban left it.
    #[tokio::test]
    async fn a_ban_committed_while_a_join_waits_keeps_the_account_out() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let [dan, bob] = accounts(&ctx, &["dan", "bob"]).await[..] else {
            unreachable!()
        };
        let tid = topic(&ctx, dan, "club").await;
        let (mut sd, _rd) = testing::session(&ctx, dan, "dan", 1);
        let (mut sb, mut rb) = testing::session(&ctx, bob, "bob", 2);
        let ban = format!(
            r#"{{"op":"acl","id":"a","topic":"{tid}","ex":{{"subject":"bob","grant":["ban"]}}}}"#
        );
        let join = format!(r#"{{"op":"join","id":"j","topic":"{tid}"}}"#);
        // The ban looks bob up, then queues its change; bob's join, checked
        // on the table before the ban, queues behind it.
        let ban_job = queued_and_run(&ctx.store, Box::pin(sd.handle_line(ban.as_bytes()))).await;
        let join_job = Box::pin(sb.handle_line(join.as_bytes()));
        both_queued(&ctx.store, ban_job, join_job).await;
        let now = ctx.topics.get(tid).unwrap();
        assert!(!now.members.contains(&bob), "{:?}", now.members);
        let answer = testing::replies(&mut rb);
        assert!(answer.contains(r#""code":"acl/denied""#), "{answer}");
        ctx.store.close().await;
    }

    /// Two owners revoking each other's `owner` at once: the second change
    /// is judged on the ACL the first left, so one is refused and the topic
    /// keeps an owner.
    #[tokio::test]
    async fn owners_revoking_each_other_at_once_leave_one_owner() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let [dan, bob] = accounts(&ctx, &["dan", "bob"]).await[..] else {
            unreachable!()
        };
        let tid = topic(&ctx, dan, "club").await;
        let co_owner = AclChange {
            by: Actor::local(dan, "localhost").into(),
            subject: Subject::Account(bob),
            changes: vec![(Flag::Owner, true)],
            view: AclView::of(&ctx),
        };
        acl_cached(&ctx.store, &ctx.topics, tid, co_owner)
            .await
            .unwrap()
            .unwrap();
        let (mut sd, mut rd) = testing::session(&ctx, dan, "dan", 1);
        let (mut sb, mut rb) = testing::session(&ctx, bob, "bob", 2);
        let revoke = |who: &str| {
            format!(
                r#"{{"op":"acl","id":"x","topic":"{tid}","ex":{{"subject":"{who}","revoke":["owner"]}}}}"#
            )
        };
        let (of_bob, of_dan) = (revoke("bob"), revoke("dan"));
        // Both look their subject up, then queue their changes together.
        let (release, held) = store::hold_store_thread(&ctx.store).await;
        let mut by_dan = Box::pin(sd.handle_line(of_bob.as_bytes()));
        let mut by_bob = Box::pin(sb.handle_line(of_dan.as_bytes()));
        assert!((&mut by_dan).now_or_never().is_none());
        assert!((&mut by_bob).now_or_never().is_none());
        drop(release);
        held.await.unwrap().unwrap();
        tokio::join!(by_dan, by_bob);
        let (a, b) = (testing::replies(&mut rd), testing::replies(&mut rb));
        let now = ctx.topics.get(tid).unwrap();
        let owners = now.acl.grants().filter(|(_, f)| *f == Flag::Owner).count();
        assert_eq!(owners, 1, "dan: {a} bob: {b}");
        // Which one the store takes first depends on which lookup ends
        // first; one is acknowledged and the other refused either way.
        let count = |text: &str| [&a, &b].iter().filter(|r| r.contains(text)).count();
        let (acked, denied) = (count(r#""op":"ack""#), count(r#""code":"acl/denied""#));
        assert_eq!((acked, denied), (1, 1), "dan: {a} bob: {b}");
        ctx.store.close().await;
    }

    /// A rename queued behind a delete of its topic is answered
    /// `topic/not-found`, and the name it asked for stays free.
    #[tokio::test]
    async fn a_rename_behind_a_delete_is_not_found_and_takes_no_name() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let [dan] = accounts(&ctx, &["dan"]).await[..] else {
            unreachable!()
        };
        let tid = topic(&ctx, dan, "club").await;
        let (mut s1, _r1) = testing::session(&ctx, dan, "dan", 1);
        let (mut s2, mut r2) = testing::session(&ctx, dan, "dan", 2);
        let delete = format!(r#"{{"op":"delete","id":"d","topic":"{tid}"}}"#);
        let rename = format!(r#"{{"op":"meta","id":"m","topic":"{tid}","ex":{{"name":"hall"}}}}"#);
        let deleting = Box::pin(s1.handle_line(delete.as_bytes()));
        let renaming = Box::pin(s2.handle_line(rename.as_bytes()));
        both_queued(&ctx.store, deleting, renaming).await;
        let answer = testing::replies(&mut r2);
        assert!(answer.contains(r#""code":"topic/not-found""#), "{answer}");
        let created = ctx
            .store
            .call(move |db| Ok(db.create_topic("hall", dan, &Map::new()).is_ok()))
            .await
            .unwrap();
        assert!(created);
        ctx.store.close().await;
    }

    /// A topic a partition's merge left without an owner (two owners
    /// revoked each other on two nodes) still takes an op's bans: only a
    /// change that takes the last owner entry away is refused.
    #[tokio::test]
    async fn an_op_bans_in_a_topic_a_merge_left_without_owner() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let [dan, amy, bob] = accounts(&ctx, &["dan", "amy", "bob"]).await[..] else {
            unreachable!()
        };
        let tid = topic(&ctx, dan, "club").await;
        let topics = ctx.topics.clone();
        // amy an op, bob a member; then (as a merge would) dan's owner
        // entry goes.
        ctx.store
            .call_synced(move |db| {
                db.set_topic_acl(tid, &Subject::Account(amy), Flag::Op, true, &[])?;
                db.set_member(tid, bob, true)?;
                db.set_topic_acl(tid, &Subject::Account(dan), Flag::Owner, false, &[])?;
                recache(db, &topics, tid).map(|_| ())
            })
            .await
            .unwrap();
        let ban = AclChange {
            by: Actor::local(amy, "localhost").into(),
            subject: Subject::Account(bob),
            changes: vec![(Flag::Ban, true)],
            view: AclView::of(&ctx),
        };
        let (_, after) = acl_cached(&ctx.store, &ctx.topics, tid, ban)
            .await
            .unwrap()
            .unwrap();
        assert!(!after.members.contains(&bob));
        ctx.store.close().await;
    }

    /// A join queued behind the change that makes a topic's members admit
    /// newcomers does not walk in: its store job sees the change.
    #[tokio::test]
    async fn a_join_behind_a_switch_to_admission_does_not_walk_in() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let [dan, bob] = accounts(&ctx, &["dan", "bob"]).await[..] else {
            unreachable!()
        };
        let tid = topic(&ctx, dan, "club").await;
        let (mut sd, _rd) = testing::session(&ctx, dan, "dan", 1);
        let (mut sb, mut rb) = testing::session(&ctx, bob, "bob", 2);
        let meta =
            format!(r#"{{"op":"meta","id":"m","topic":"{tid}","ex":{{"admission":"members"}}}}"#);
        let join = format!(r#"{{"op":"join","id":"j","topic":"{tid}"}}"#);
        let switching = Box::pin(sd.handle_line(meta.as_bytes()));
        let joining = Box::pin(sb.handle_line(join.as_bytes()));
        both_queued(&ctx.store, switching, joining).await;
        assert!(!ctx.topics.get(tid).unwrap().members.contains(&bob));
        let answer = testing::replies(&mut rb);
        assert!(answer.contains(r#""code":"acl/denied""#), "{answer}");
        ctx.store.close().await;
    }
}
