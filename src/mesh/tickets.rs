//! Tickets across nodes (DESIGN.md §4a, §8): a ticket is redeemed only by
//! the node that issued it, so a login elsewhere asks that node over the
//! mesh; an issuer that does not answer in time means `ticket/unavailable`,
//! never a second redemption.

use std::pin::Pin;
use std::sync::Arc;

use tracing::{debug, info};
use uuid::Uuid;

use super::wire::{RouteBody, Routed};
use super::{Inner, Mesh};
use crate::session::{Redeemer, TicketRelay, Unavailable, node_code, redeem_here};

impl TicketRelay for Mesh {
    fn issuer(&self, code: &str) -> Option<String> {
        let known = self.inner.known_nodes.lock().ok()?;
        known.iter().find(|n| node_code(n) == code).cloned()
    }

    fn redeem(
        &self,
        node: String,
        ticket: String,
        abroad: Option<String>,
    ) -> Pin<Box<dyn Future<Output = Result<Option<Uuid>, Unavailable>> + Send>> {
        let inner = self.inner.clone();
        Box::pin(async move {
            if inner.all_links().is_empty() {
                return Err(Unavailable);
            }
            let request = Uuid::now_v7();
            let (tx, rx) = tokio::sync::oneshot::channel();
            if let Ok(mut w) = inner.waiting.lock() {
                w.insert(request, tx);
            }
            inner.route(
                &node,
                RouteBody::TicketRedeem {
                    request,
                    ticket,
                    abroad,
                },
            );
            let answer = tokio::time::timeout(inner.cfg.ticket_timeout(), rx).await;
            if let Ok(mut w) = inner.waiting.lock() {
                w.remove(&request);
            }
            match answer {
                Ok(Ok(account)) => Ok(account),
                _ => {
                    info!(issuer = %node, "mesh: ticket issuer did not answer in time");
                    Err(Unavailable)
                }
            }
        })
    }
}

/// A routed packet for this node.
pub(super) fn on_routed(inner: &Arc<Inner>, r: Routed) {
    match r.body {
        RouteBody::TicketRedeem {
            request,
            ticket,
            abroad,
        } => {
            let inner = inner.clone();
            let from = r.from;
            inner.clone().tracker.spawn(async move {
                let redeemer = match &abroad {
                    Some(server) => Redeemer::Abroad(server),
                    None => Redeemer::Here(&inner.server),
                };
                let account = redeem_here(&inner.store, redeemer, &ticket)
                    .await
                    .unwrap_or_else(|e| {
                        debug!(error = %e, "mesh: ticket redemption failed in the store");
                        None
                    });
                info!(for_node = %from, ok = account.is_some(), "mesh: redeemed a ticket for another node");
                inner.route(&from, RouteBody::TicketAnswer { request, account });
            });
        }
        RouteBody::TicketAnswer { request, account } => {
            let waiter = inner
                .waiting
                .lock()
                .ok()
                .and_then(|mut w| w.remove(&request));
            if let Some(tx) = waiter {
                let _ = tx.send(account);
            }
        }
        RouteBody::JoinRequest { .. } | RouteBody::JoinEnded { .. } => {
            debug!(from = %r.from, "mesh: an admission packet for one node; they are for every node");
        }
    }
}
