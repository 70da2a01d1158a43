//! Login tickets (seed 001): a logged-in user asks for one, then presents it
//! to log in elsewhere. A ticket is alphanumeric: a 6-character code naming
//! the issuing node, then 24 random characters (over 142 bits).

use tracing::info;

use super::{Denied, LoggedIn, Outcome, Session};
use crate::config::valid_server_name;
use crate::proto::id::now_ms;
use crate::proto::{ErrorCode, Packet};
use crate::store::Store;
use uuid::Uuid;

const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
/// Length of the node code at the start of a ticket.
pub const NODE_CODE_CHARS: usize = 6;
const RANDOM_CHARS: usize = 24;

/// The fixed-length code naming `node` at the start of its tickets.
pub fn node_code(node: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, node.as_bytes());
    digest
        .as_ref()
        .iter()
        .take(NODE_CODE_CHARS)
        .map(|b| char::from(ALNUM[usize::from(*b) % 36 + 26].to_ascii_uppercase()))
        .collect()
}

/// A fresh ticket for `node`.
pub fn new_ticket(node: &str) -> Option<String> {
    let rng = ring::rand::SystemRandom::new();
    let mut out = node_code(node);
    let mut buf = [0u8; 64];
    while out.len() < NODE_CODE_CHARS + RANDOM_CHARS {
        ring::rand::SecureRandom::fill(&rng, &mut buf).ok()?;
        // Rejection sampling keeps every character equally likely.
        for b in buf.iter().filter(|&&b| usize::from(b) < 62 * 4) {
            if out.len() == NODE_CODE_CHARS + RANDOM_CHARS {
                break;
            }
            out.push(char::from(ALNUM[usize::from(*b) % 62]));
        }
    }
    Some(out)
}

fn invalid() -> Denied {
    Denied::new(
        ErrorCode::TicketInvalid,
        "ticket is unknown, used, expired or not for this server",
    )
}

impl Session<'_> {
    pub(super) async fn handle_ticket(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        server: Option<String>,
    ) -> Result<Outcome, Denied> {
        if let Some(s) = &server {
            if !valid_server_name(s) {
                return Err(Denied::new(
                    ErrorCode::RequestInvalid,
                    "ex.server must be a server name",
                ));
            }
        }
        let ticket = new_ticket(&self.ctx.node)
            .ok_or_else(|| Denied::new(ErrorCode::ServerInternal, "no system randomness"))?;
        let now = now_ms();
        let expires = now.saturating_add(i64::try_from(self.ctx.ticket_ttl_ms).unwrap_or(i64::MAX));
        let (t, account, bound) = (ticket.clone(), me.id, server.clone());
        self.ctx
            .store
            .call(move |db| db.store_ticket(&t, account, bound.as_deref(), expires, now))
            .await?;
        info!(account = %me.name, bound_to = server.as_deref().unwrap_or("-"), "ticket issued");
        let mut p = Packet::server("ticket")
            .with("ticket", ticket)
            .with("expires", expires);
        if let Some(s) = server {
            p = p.with("server", s);
        }
        p = p.answering(id);
        Ok(self.reply_secret(p))
    }

    /// Redeems a ticket: here when this node issued it, else at its issuer
    /// through the mesh. Any attempt consumes it.
    pub(super) async fn redeem_ticket(
        &mut self,
        ticket: &str,
        server: &str,
    ) -> Result<LoggedIn, Denied> {
        if !server.eq_ignore_ascii_case(&self.ctx.server_name) {
            // Foreign tickets need server-to-server redemption (federation).
            return Err(invalid());
        }
        let code = ticket.get(..NODE_CODE_CHARS).unwrap_or_default();
        let account = if code == node_code(&self.ctx.node) {
            redeem_here(&self.ctx.store, &self.ctx.server_name, ticket).await?
        } else {
            let relay = self.ctx.ticket_relay.get().ok_or_else(invalid)?;
            let issuer = relay.issuer(code).ok_or_else(invalid)?;
            relay
                .redeem(issuer, ticket.to_owned())
                .await
                .map_err(|Unavailable| {
                    Denied::new(
                        ErrorCode::TicketUnavailable,
                        "the node that issued this ticket cannot be reached; try again later",
                    )
                })?
        };
        let id = account.ok_or_else(invalid)?;
        let account = self.ctx.store.call(move |db| db.account(id)).await?;
        match account {
            Some(a) if !a.deleted && !a.disabled => Ok(LoggedIn::new(a.id, a.name)),
            _ => Err(invalid()),
        }
    }
}

/// Redeems a ticket this node issued, for a login on `server_name` (here
/// or at another node of this server): the account it logs in, or `None`
/// when it is unknown, used, expired or bound to another server. Any
/// attempt uses it up.
pub async fn redeem_here(
    store: &Store,
    server_name: &str,
    ticket: &str,
) -> Result<Option<Uuid>, crate::store::Error> {
    let t = ticket.to_owned();
    let Some(found) = store.call(move |db| db.take_ticket(&t)).await? else {
        return Ok(None);
    };
    if found.expires_ms <= now_ms()
        || found
            .bound_to
            .as_deref()
            .is_some_and(|b| !b.eq_ignore_ascii_case(server_name))
    {
        return Ok(None);
    }
    Ok(Some(found.account))
}

/// The issuer of a ticket could not be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// Redeems tickets at the node that issued them (the mesh implements it;
/// the session does not know links).
pub trait TicketRelay: Send + Sync {
    /// The node whose tickets begin with `code`, if it is a known node.
    fn issuer(&self, code: &str) -> Option<String>;

    /// Asks `node` to redeem `ticket`: the account, `None` for a bad
    /// ticket, or [`Unavailable`] when the node does not answer in time.
    fn redeem(
        &self,
        node: String,
        ticket: String,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<Uuid>, Unavailable>> + Send>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tickets_are_alphanumeric_and_start_with_the_node_code() {
        let a = new_ticket("node1").unwrap();
        let b = new_ticket("node1").unwrap();
        assert_eq!(a.len(), 30);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_eq!(&a[..6], &b[..6]);
        assert_eq!(&a[..6], node_code("node1"));
        assert_ne!(node_code("node1"), node_code("node2"));
        assert_ne!(a, b);
    }
}
