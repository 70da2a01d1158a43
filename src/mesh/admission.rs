//! Join requests across nodes (protocol.md 11.22, 17.8): a request and how
//! it ended are soft state, flooded to every node as routed packets for
//! `*` (taken once per packet id, like every routed packet). Every node
//! mirrors the pending requests, so an admitter connected anywhere, or
//! logging in later anywhere, sees them; the node where an admitter decides
//! commits the membership (replicated by the log like any `join`) and
//! floods the outcome; each node tells its own connections. Nobody sends
//! expiry: every node ends a request at its `expires`. A node that links up
//! sends the peer what it holds pending, so a restarted or partitioned node
//! catches up; such a copy goes on only as far as it is news.
//!
//! Two decisions at once on two nodes: each node tells its connections the
//! first outcome it hears of and ignores later ones for the same request;
//! an admission, once committed, stays (the `join` that follows is the
//! truth).

use std::sync::Arc;

use tracing::{debug, warn};
use uuid::Uuid;

use super::link::Link;
use super::wire::{BROADCAST, JoinResult, Packet, RouteBody, Routed};
use super::{Inner, Mesh};
use crate::router::admission::{JoinRequest, Settled};
use crate::session::{AdmissionRelay, JoinEnded, end_join_request, mirror_join_request};

impl AdmissionRelay for Mesh {
    fn requested(&self, req: &JoinRequest) {
        if let Some(body) = request_body(req) {
            self.inner.route(BROADCAST, body);
        }
    }

    fn ended(&self, ended: &JoinEnded) {
        let req = &ended.request;
        let Some(request) = request_id(req) else {
            return;
        };
        let result = match ended.result {
            Settled::Admitted => JoinResult::Admitted,
            Settled::Declined => JoinResult::Declined,
            Settled::Withdrawn => JoinResult::Withdrawn,
            // Every node expires requests itself.
            Settled::Expired => return,
        };
        self.inner.route(
            BROADCAST,
            RouteBody::JoinEnded {
                request,
                topic: req.topic,
                account: req.account,
                expires: req.expires,
                result,
                by: ended.by.clone(),
                note: ended.note.clone(),
                key: ended.key.clone(),
            },
        );
    }
}

/// The request's id as the wire carries it (ids are minted as UUIDs here,
/// so this fails only on a bug; logged, not relayed).
fn request_id(req: &JoinRequest) -> Option<Uuid> {
    match Uuid::parse_str(&req.id) {
        Ok(id) => Some(id),
        Err(e) => {
            warn!(request = %req.id, error = %e, "mesh: a join request id is not a UUID; not relayed");
            None
        }
    }
}

fn request_body(req: &JoinRequest) -> Option<RouteBody> {
    Some(RouteBody::JoinRequest {
        request: request_id(req)?,
        topic: req.topic,
        account: req.account,
        name: req.name.clone(),
        note: req.note.clone(),
        key: req.key.clone(),
        expires: req.expires,
    })
}

/// A routed packet for every node, fresh here (the seen-cache let it
/// through): taken, then passed on over every other link unless it was
/// nothing new here (a copy of a request already pending, sent when a link
/// came up).
pub(super) fn on_broadcast(inner: &Arc<Inner>, r: Routed, came_by: u64) {
    let ctx = &inner.ctx;
    let pass_on = match &r.body {
        RouteBody::JoinRequest {
            request,
            topic,
            account,
            name,
            note,
            key,
            expires,
        } => {
            let req = JoinRequest {
                id: request.to_string(),
                topic: *topic,
                account: *account,
                name: name.clone(),
                note: note.clone(),
                key: key.clone(),
                expires: *expires,
            };
            mirror_join_request(ctx, req, crate::proto::id::now_ms())
        }
        RouteBody::JoinEnded {
            request,
            topic,
            account,
            expires,
            result,
            by,
            note,
            key,
        } => {
            let result = match result {
                JoinResult::Admitted => Settled::Admitted,
                JoinResult::Declined => Settled::Declined,
                JoinResult::Withdrawn => Settled::Withdrawn,
            };
            end_join_request(
                ctx,
                JoinEnded {
                    // Only the ids and expiry matter: the node's own copy
                    // of the request is what it tells of.
                    request: JoinRequest {
                        id: request.to_string(),
                        topic: *topic,
                        account: *account,
                        name: String::new(),
                        note: None,
                        key: None,
                        expires: *expires,
                    },
                    result,
                    by: by.clone(),
                    note: note.clone(),
                    key: key.clone(),
                },
            );
            // Always on: nodes behind this one may hold the request even if
            // this one does not.
            true
        }
        RouteBody::TicketRedeem { .. } | RouteBody::TicketAnswer { .. } => {
            debug!(from = %r.from, "mesh: a ticket packet for every node; passed on, not taken");
            true
        }
    };
    if pass_on {
        inner.forward(r, Some(came_by));
    }
}

/// A link came up: the peer gets a copy of every request pending here (it
/// may have restarted, or been cut off when they were made).
pub(super) fn on_link_up(inner: &Arc<Inner>, link: &Arc<Link>) {
    let now = crate::proto::id::now_ms();
    let pending: Vec<JoinRequest> = inner
        .ctx
        .join_requests
        .all()
        .into_iter()
        .filter(|r| r.expires > now)
        .collect();
    if pending.is_empty() {
        return;
    }
    debug!(peer = %link.peer, requests = pending.len(), "mesh: sending pending join requests to a new link");
    for req in &pending {
        let Some(body) = request_body(req) else {
            continue;
        };
        let r = Routed {
            id: Uuid::now_v7(),
            from: inner.node.clone(),
            to: BROADCAST.to_owned(),
            hops: 1,
            body,
        };
        if let Ok(mut s) = inner.seen.lock() {
            s.check(r.id, super::now_ms());
        }
        link.send(Packet::Route(r));
    }
}
