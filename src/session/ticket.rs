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

pub(super) fn invalid() -> Denied {
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
        super::federated::refuse_federated(me, "issuing tickets")?;
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
            .call_synced(move |db| db.store_ticket(&t, account, bound.as_deref(), expires, now))
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

    /// Redeems a ticket for a login here: this server's own at the node
    /// that issued it ([`redeem_anywhere`]); another server's at that
    /// server, by federation. Any attempt consumes it.
    pub(super) async fn redeem_ticket(
        &mut self,
        ticket: &str,
        server: &str,
    ) -> Result<LoggedIn, Denied> {
        if !server.eq_ignore_ascii_case(&self.ctx.server_name) {
            return self.redeem_abroad(ticket, server).await;
        }
        let account = redeem_anywhere(self.ctx, Redeemer::Here(&self.ctx.server_name), ticket)
            .await?
            .map_err(|Unavailable| unavailable())?;
        let account = account.ok_or_else(invalid)?;
        Ok(LoggedIn::new(account.id, account.name))
    }
}

/// `ticket/unavailable`: the ticket was not spent.
pub(super) fn unavailable() -> Denied {
    Denied::new(
        ErrorCode::TicketUnavailable,
        "the server that must redeem this ticket cannot be reached; try again later",
    )
}

/// Who a ticket is redeemed for, which decides whether its binding fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redeemer<'a> {
    /// A login on this server (`server.name`): unbound tickets and tickets
    /// bound to this server.
    Here(&'a str),
    /// A login on another server, asking by federation: only tickets bound
    /// to exactly that server (an unbound ticket is never used abroad).
    Abroad(&'a str),
}

impl Redeemer<'_> {
    /// Whether a ticket bound to `bound_to` may log in for this redeemer.
    pub fn fits(self, bound_to: Option<&str>) -> bool {
        match (self, bound_to) {
            (Redeemer::Here(_), None) => true,
            (Redeemer::Here(me), Some(b)) | (Redeemer::Abroad(me), Some(b)) => {
                b.eq_ignore_ascii_case(me)
            }
            (Redeemer::Abroad(_), None) => false,
        }
    }
}

/// Redeems a ticket of this server at the node that issued it (here, or
/// over the mesh): the live account it logs in, `None` when it is unknown,
/// used, expired, bound elsewhere or its account is gone (one answer for
/// all), [`Unavailable`] when the issuing node cannot be asked now.
pub(crate) async fn redeem_anywhere(
    ctx: &super::Context,
    redeemer: Redeemer<'_>,
    ticket: &str,
) -> Result<Result<Option<crate::store::Account>, Unavailable>, crate::store::Error> {
    let code = ticket.get(..NODE_CODE_CHARS).unwrap_or_default();
    let id = if code == node_code(&ctx.node) {
        redeem_here(&ctx.store, redeemer, ticket).await?
    } else {
        let Some(relay) = ctx.ticket_relay.get() else {
            return Ok(Ok(None));
        };
        let Some(issuer) = relay.issuer(code) else {
            return Ok(Ok(None));
        };
        let abroad = match redeemer {
            Redeemer::Here(_) => None,
            Redeemer::Abroad(s) => Some(s.to_owned()),
        };
        match relay.redeem(issuer, ticket.to_owned(), abroad).await {
            Ok(id) => id,
            Err(Unavailable) => return Ok(Err(Unavailable)),
        }
    };
    let Some(id) = id else {
        return Ok(Ok(None));
    };
    let account = ctx.store.call(move |db| db.account(id)).await?;
    Ok(Ok(account.filter(|a| !a.deleted && !a.disabled)))
}

/// Redeems a ticket this node issued, for `redeemer` (a login here, at
/// another node of this server, or at another server): the account it
/// logs in, or `None` when it is unknown, used, expired or bound to
/// another server. Any attempt uses it up.
pub async fn redeem_here(
    store: &Store,
    redeemer: Redeemer<'_>,
    ticket: &str,
) -> Result<Option<Uuid>, crate::store::Error> {
    let t = ticket.to_owned();
    let Some(found) = store.call_synced(move |db| db.take_ticket(&t)).await? else {
        return Ok(None);
    };
    if found.expires_ms <= now_ms() || !redeemer.fits(found.bound_to.as_deref()) {
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

    /// Asks `node` to redeem `ticket`, for a login on this server or, with
    /// `abroad`, on that other server: the account, `None` for a bad
    /// ticket, or [`Unavailable`] when the node does not answer in time.
    fn redeem(
        &self,
        node: String,
        ticket: String,
        abroad: Option<String>,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<Option<Uuid>, Unavailable>> + Send>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unbound_tickets_stay_home() {
        let here = Redeemer::Here("first.example");
        let abroad = Redeemer::Abroad("second.example");
        assert!(here.fits(None));
        assert!(here.fits(Some("FIRST.example")));
        assert!(!here.fits(Some("second.example")));
        assert!(!abroad.fits(None));
        assert!(abroad.fits(Some("Second.Example")));
        assert!(!abroad.fits(Some("third.example")));
        assert!(!abroad.fits(Some("first.example")));
    }

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
