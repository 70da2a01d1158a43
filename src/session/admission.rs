//! Topics whose members admit newcomers (topic metadata `admission:
//! "members"`, seed 002): a non-member's `join` becomes a pending request
//! pushed to the members holding `admit`; one of them admits (the same
//! replicated membership change `join` makes, announced as `join`) or
//! declines, or the request expires. The request is soft state; the
//! admission is a replicated register. In a mesh, an [`AdmissionRelay`]
//! tells the other nodes of each request and of how it ended (by a decision
//! or a withdrawal; each node expires requests itself), and
//! [`mirror_join_request`] and [`end_join_request`] take theirs here.

use std::sync::Arc;

use serde_json::Value;
use tracing::{debug, info};
use uuid::Uuid;

use super::{Context, Denied, LoggedIn, Outcome, Session};
use crate::proto::{ErrorCode, Packet, reply};
use crate::router::acl::{Actor, Flag};
use crate::router::admission::{Asked, JoinRequest, Mirrored, Settled, TooMany};
use crate::store::TopicRecord;

/// Deliveries exclude no connection (connection ids start at 1).
const NOBODY: u64 = 0;

/// How a request ended on this node, for the other nodes.
#[derive(Debug, Clone)]
pub struct JoinEnded {
    /// The request.
    pub request: JoinRequest,
    /// Admitted, declined or withdrawn (each node expires requests itself).
    pub result: Settled,
    /// Who ended it: the admitter, or the requester withdrawing.
    pub by: String,
    /// The admitter's words, for the requester only.
    pub note: Option<String>,
    /// The admitter's key material, for the requester only.
    pub key: Option<String>,
}

/// Carries join requests and their ends to the other nodes of a mesh (set
/// when the mesh starts; without it requests stay on this node). Never
/// waits.
pub trait AdmissionRelay: Send + Sync {
    /// A request was made on this node.
    fn requested(&self, req: &JoinRequest);
    /// A request was decided or withdrawn on this node.
    fn ended(&self, ended: &JoinEnded);
}

fn relay(ctx: &Context) -> Option<&dyn AdmissionRelay> {
    ctx.admission_relay.get().map(|r| r.as_ref())
}

/// Bounds of the mirror of other nodes' requests: twice the protocol's,
/// since nodes asked at once each check only what they have heard of.
fn mirror_bounds(ctx: &Context) -> (usize, usize) {
    (
        ctx.max_join_requests_per_topic.saturating_mul(2),
        ctx.max_join_requests_per_account.saturating_mul(2),
    )
}

/// A request made on another node. Taken unless it ended here already,
/// expired, or its account is a member by now; when new here, the
/// admitters connected here get `join-request`. True if it was not pending
/// here before (the mesh passes it on then).
pub fn mirror_join_request(ctx: &Context, req: JoinRequest, now_ms: i64) -> bool {
    let topic = ctx.topics.get(req.topic);
    if topic
        .as_ref()
        .is_some_and(|t| t.members.contains(&req.account))
    {
        debug!(topic_id = %req.topic, account = %req.name, "join request of a member: not taken");
        return true;
    }
    let (per_topic, per_account) = mirror_bounds(ctx);
    match ctx
        .join_requests
        .mirror(req, now_ms, per_topic, per_account)
    {
        Mirrored::New(req) => {
            info!(topic_id = %req.topic, account = %req.name, request = %req.id, "join request from another node");
            if let Some(t) = topic {
                deliver(ctx, &admitters(ctx, &t), &request_event(&req), NOBODY);
            }
            true
        }
        Mirrored::Replaced | Mirrored::Dropped => true,
        Mirrored::Known => false,
    }
}

/// A request decided or withdrawn on another node: if it is pending here,
/// it ends, and the requester's and the admitters' connections here get
/// `admit` (the requester's with the admitter's `note` and `key`). The
/// first end a node hears of wins; a later one for the same request finds
/// nothing pending and changes nothing.
pub fn end_join_request(ctx: &Context, end: JoinEnded) {
    let r = &end.request;
    let Some(req) = ctx.join_requests.end(r.topic, r.account, &r.id, r.expires) else {
        debug!(topic_id = %r.topic, request = %r.id, result = end.result.as_str(), "join request ended elsewhere, not pending here");
        return;
    };
    info!(topic_id = %req.topic, account = %req.name, request = %req.id, by = %end.by, result = end.result.as_str(), "join request ended on another node");
    tell_outcome(ctx, &req, &end.by, end.result, end.note, end.key, NOBODY);
}

/// Tells the requester's connections here (with `note` and `key`) and the
/// other admitters' how `req` ended, but connection `except`.
fn tell_outcome(
    ctx: &Context,
    req: &JoinRequest,
    by: &str,
    result: Settled,
    note: Option<String>,
    key: Option<String>,
    except: u64,
) {
    let event = outcome_event(req, by, result.as_str());
    if let Some(t) = ctx.topics.get(req.topic) {
        let others: Vec<Uuid> = admitters(ctx, &t)
            .into_iter()
            .filter(|a| *a != req.account)
            .collect();
        deliver(ctx, &others, &event, except);
    }
    let mut to_requester = event;
    if let Some(note) = note {
        to_requester = to_requester.with("note", note);
    }
    if let Some(key) = key {
        to_requester = to_requester.with("key", key);
    }
    deliver(ctx, &[req.account], &to_requester, except);
}

/// What an admitter decided, with what it says to the requester.
pub(super) struct Decision {
    /// Admit (`true`) or decline.
    pub accept: bool,
    /// Words for the requester.
    pub note: Option<String>,
    /// Key material for the requester.
    pub key: Option<String>,
}

/// Whether `t`'s members admit newcomers.
pub(crate) fn members_only(t: &TopicRecord) -> bool {
    t.meta.get("admission").and_then(Value::as_str) == Some("members")
}

/// The members of `t` connected here that may admit: those holding `admit`
/// (owners and ops included), each judged as what it is: a local account,
/// or a user of another server (its `user@home`, `@home`, and `*` as the
/// operator decides).
fn admitters(ctx: &Context, t: &TopicRecord) -> Vec<Uuid> {
    ctx.presence
        .connected(t.members.iter())
        .into_iter()
        .filter(|(m, remote)| {
            let actor = match remote {
                Some(name) => {
                    Actor::named(*m, name, &ctx.server_name_lower, ctx.star_includes_foreign)
                }
                None => Actor::local(*m, &ctx.server_name_lower),
            };
            t.acl.allows(actor, Flag::Admit)
        })
        .map(|(m, _)| m)
        .collect()
}

/// The `join-request` event admitters get.
fn request_event(req: &JoinRequest) -> Packet {
    let mut p = Packet::server("join-request")
        .with_from(req.name.as_str())
        .with("request", req.id.as_str())
        .with("expires", req.expires);
    p.topic = Some(req.topic.to_string());
    if let Some(note) = &req.note {
        p = p.with("note", note.as_str());
    }
    if let Some(key) = &req.key {
        p = p.with("key", key.as_str());
    }
    p
}

/// The `admit` event that says how a request ended.
fn outcome_event(req: &JoinRequest, from: &str, result: &str) -> Packet {
    let mut p = Packet::server("admit")
        .with_from(from)
        .with("user", req.name.as_str())
        .with("request", req.id.as_str())
        .with("result", result);
    p.topic = Some(req.topic.to_string());
    p
}

/// Sends `packet` to every connection of `accounts` but `except`.
fn deliver(ctx: &Context, accounts: &[Uuid], packet: &Packet, except: u64) {
    ctx.presence
        .deliver(accounts.iter(), &packet.to_line(), 1, except);
}

/// Ends the requests whose time is up: each requester and each admitter
/// connected here gets an `admit` event with `result` `expired`, from the
/// server. Called by the server's expiry loop.
pub fn expire_join_requests(ctx: &Context, now_ms: i64) {
    let server = format!("@{}", ctx.server_name);
    for req in ctx.join_requests.expire(now_ms) {
        info!(topic_id = %req.topic, account = %req.name, "join request expired");
        let event = outcome_event(&req, &server, Settled::Expired.as_str());
        let mut told = vec![req.account];
        if let Some(t) = ctx.topics.get(req.topic) {
            told.extend(admitters(ctx, &t).into_iter().filter(|a| *a != req.account));
        }
        deliver(ctx, &told, &event, NOBODY);
    }
}

impl Session<'_> {
    /// A non-member's `join` of a topic whose members admit newcomers: a
    /// pending request, answered `ack` with `pending`, pushed to the
    /// admitters connected here. Asking again while one is pending answers
    /// the same request and tells nobody again.
    pub(super) fn request_join(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        t: &TopicRecord,
        note: Option<String>,
        key: Option<String>,
    ) -> Result<Outcome, Denied> {
        self.may_join(me.id, t)?;
        let ttl = i64::try_from(self.ctx.join_request_ttl_ms).unwrap_or(i64::MAX);
        let req = JoinRequest {
            id: crate::proto::id::new_id(),
            topic: t.id,
            account: me.id,
            name: me.name.clone(),
            note,
            key,
            expires: crate::proto::id::now_ms().saturating_add(ttl),
        };
        let asked = self
            .ctx
            .join_requests
            .ask(
                req,
                self.ctx.max_join_requests_per_topic,
                self.ctx.max_join_requests_per_account,
            )
            .map_err(|e| {
                let message = match e {
                    TooMany::Topic(n) => format!("the topic has {n} join requests pending"),
                    TooMany::Account(n) => format!("you have {n} join requests pending"),
                };
                Denied::new(ErrorCode::AdmissionTooMany, message)
            })?;
        let req = match asked {
            Asked::New(req) => {
                info!(account = %me.name, topic = %t.name, topic_id = %t.id, "join requested");
                deliver(
                    self.ctx,
                    &admitters(self.ctx, t),
                    &request_event(&req),
                    self.conn_id,
                );
                if let Some(r) = relay(self.ctx) {
                    r.requested(&req);
                }
                req
            }
            Asked::Already(req) => req,
        };
        let answer = reply::ack(id)
            .with("pending", true)
            .with("request", req.id.as_str())
            .with("expires", req.expires);
        Ok(self.reply(answer))
    }

    /// `leave` of a topic where `me` is not a member but has a request
    /// pending: withdraws it and tells the admitters. False if none was.
    pub(super) fn withdraw_join(&self, me: &LoggedIn, t: &TopicRecord) -> bool {
        let Some(req) = self.ctx.join_requests.take(t.id, me.id) else {
            return false;
        };
        info!(account = %me.name, topic = %t.name, topic_id = %t.id, "join request withdrawn");
        let mut told = admitters(self.ctx, t);
        told.push(me.id);
        deliver(
            self.ctx,
            &told,
            &outcome_event(&req, &me.name, Settled::Withdrawn.as_str()),
            self.conn_id,
        );
        if let Some(r) = relay(self.ctx) {
            r.ended(&JoinEnded {
                request: req,
                result: Settled::Withdrawn,
                by: me.name.clone(),
                note: None,
                key: None,
            });
        }
        true
    }

    /// `admit`: a member holding `admit` admits or declines a pending
    /// request.
    pub(super) async fn handle_admit(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        topic: &str,
        user: &str,
        decision: Decision,
    ) -> Result<Outcome, Denied> {
        let t = self.resolve(topic)?;
        if !t.acl.allows(self.actor(me), Flag::Admit) {
            return Err(Denied::new(
                ErrorCode::AclDenied,
                "the topic's ACL does not let you admit newcomers",
            ));
        }
        if !t.members.contains(&me.id) {
            return Err(Denied::new(
                ErrorCode::TopicNotMember,
                "only members admit newcomers",
            ));
        }
        let account = self.requester(user).await?;
        let not_pending = || {
            Denied::new(
                ErrorCode::AdmissionNotPending,
                "that account has no join request pending in the topic",
            )
        };
        let pending = account
            .and_then(|a| self.ctx.join_requests.get(t.id, a))
            .ok_or_else(not_pending)?;
        if t.members.contains(&pending.account) {
            // Admitted on another node, whose word has not come yet (or
            // was lost): settled.
            self.ctx.join_requests.take(t.id, pending.account);
            return Err(not_pending());
        }
        let name = pending.name.to_lowercase();
        let requester = Actor::named(
            pending.account,
            &name,
            &self.ctx.server_name_lower,
            self.ctx.star_includes_foreign,
        );
        if decision.accept {
            // A ban since the request, or a limit reached, leaves it pending.
            if !t.acl.allows(requester, Flag::Read) {
                return Err(Denied::new(
                    ErrorCode::AclDenied,
                    "the topic's ACL does not let that account read it",
                ));
            }
            self.may_join(pending.account, &t)?;
        }
        // Taken before the commit: of two admitters answering at once, one
        // decides.
        let req = self
            .ctx
            .join_requests
            .take(t.id, pending.account)
            .filter(|r| r.id == pending.id)
            .ok_or_else(not_pending)?;
        let record = if decision.accept {
            match self.commit_membership(requester, &t, true, true).await {
                Ok(r) => r,
                Err(e) => {
                    // Put back, so another answer may still come.
                    self.ctx.join_requests.put_back(req);
                    return Err(e);
                }
            }
        } else {
            (*t).clone()
        };
        let result = if decision.accept {
            Settled::Admitted
        } else {
            Settled::Declined
        };
        info!(account = %req.name, by = %me.name, topic = %t.name, topic_id = %t.id, result = result.as_str(), "join request decided");
        // The other admitters learn it is settled (the admitters' list as
        // it was before the decision); the requester also gets the
        // admitter's note and key.
        let others: Vec<Uuid> = admitters(self.ctx, &t)
            .into_iter()
            .filter(|a| *a != req.account)
            .collect();
        let event = outcome_event(&req, &me.name, result.as_str());
        deliver(self.ctx, &others, &event, self.conn_id);
        let mut to_requester = event;
        if let Some(note) = &decision.note {
            to_requester = to_requester.with("note", note.as_str());
        }
        if let Some(key) = &decision.key {
            to_requester = to_requester.with("key", key.as_str());
        }
        deliver(self.ctx, &[req.account], &to_requester, self.conn_id);
        if let Some(r) = relay(self.ctx) {
            r.ended(&JoinEnded {
                request: req.clone(),
                result,
                by: me.name.clone(),
                note: decision.note,
                key: decision.key,
            });
        }
        if decision.accept {
            self.announce_membership(&record, req.account, &req.name, true);
        }
        Ok(self.reply(reply::ack(id)))
    }

    /// The account a `user` of `admit` names, if any: a local account (this
    /// server's `@name` suffix allowed), or the account standing here for
    /// a user of another server, named `user@home`.
    async fn requester(&self, user: &str) -> Result<Option<Uuid>, Denied> {
        let name = match user.split_once('@') {
            Some((name, server)) if server.eq_ignore_ascii_case(&self.ctx.server_name) => name,
            _ => user,
        }
        .to_owned();
        let account = self
            .ctx
            .store
            .call(move |db| db.account_by_name(&name))
            .await?;
        Ok(account.filter(|a| !a.deleted).map(|a| a.id))
    }

    /// For the login sequence: a `join-request` for each request pending
    /// here in `topics` where `me` may admit, so an admitter who connects
    /// late still sees them.
    pub(super) fn pending_for(&self, me: &LoggedIn, topics: &[Arc<TopicRecord>]) -> Vec<Packet> {
        topics
            .iter()
            .filter(|t| members_only(t) && t.acl.allows(self.actor(me), Flag::Admit))
            .flat_map(|t| {
                self.ctx
                    .join_requests
                    .in_topic(t.id)
                    .into_iter()
                    .filter(|r| !t.members.contains(&r.account))
            })
            .map(|req| request_event(&req))
            .collect()
    }
}
