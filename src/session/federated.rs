//! Users of other servers (federation, DESIGN.md §9): a ticket whose
//! `server` names another server is redeemed there, by this server, never
//! by the client; the user then logs in here as `user@home`, an account
//! with no password or keys that only its home server's tickets open.

use std::pin::Pin;
use std::time::Duration;

use tracing::{info, warn};

use super::{Denied, LoggedIn, Session};
use crate::proto::ErrorCode;

/// What the home server said about a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemedAbroad {
    /// The account's name on its home server (no `@`).
    pub user: String,
    /// The home server's name, as this server's configuration spells it.
    pub home: String,
}

/// Why a ticket could not be redeemed at its home server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbroadError {
    /// This server does not federate with that server.
    UnknownServer,
    /// The home server could not be asked, or could not answer, in time;
    /// the ticket is not known to be spent.
    Unavailable,
    /// The home server said the ticket is no good.
    Invalid,
    /// The home server's answer is unacceptable (another server's account).
    BadAnswer,
    /// Too many redemptions asked of that server; retry after this.
    RateLimited(Duration),
}

/// Redeems tickets at their home server (the federation module implements
/// it; the session knows no sockets).
pub trait Abroad: Send + Sync {
    /// Asks `home` to redeem `ticket` for a login on this server.
    fn redeem(
        &self,
        home: String,
        ticket: String,
    ) -> Pin<Box<dyn Future<Output = Result<RedeemedAbroad, AbroadError>> + Send>>;
}

/// `account/federated`: the op is for an account's home server.
pub(super) fn refuse_federated(me: &LoggedIn, what: &str) -> Result<(), Denied> {
    match me.home() {
        None => Ok(()),
        Some(home) => Err(Denied::new(
            ErrorCode::AccountFederated,
            format!("{what} is done at your home server, {home}"),
        )),
    }
}

impl Session<'_> {
    /// Redeems another server's ticket at that server and logs in the
    /// account standing for its user here.
    pub(super) async fn redeem_abroad(
        &mut self,
        ticket: &str,
        server: &str,
    ) -> Result<LoggedIn, Denied> {
        let Some(abroad) = self.ctx.abroad.get() else {
            return Err(unknown_server());
        };
        if let Err(wait) = self.fed_attempts.take(std::time::Instant::now()) {
            return Err(rate_limited(wait));
        }
        let answer = abroad.redeem(server.to_owned(), ticket.to_owned()).await;
        let RedeemedAbroad { user, home } = match answer {
            Ok(r) => r,
            Err(AbroadError::UnknownServer) => return Err(unknown_server()),
            Err(AbroadError::Unavailable) => return Err(super::ticket::unavailable()),
            Err(AbroadError::Invalid) => return Err(super::ticket::invalid()),
            Err(AbroadError::RateLimited(wait)) => return Err(rate_limited(wait)),
            Err(AbroadError::BadAnswer) => {
                return Err(Denied::new(
                    ErrorCode::TicketBadAnswer,
                    "the ticket's home server gave an answer this server cannot accept",
                ));
            }
        };
        let name = format!("{user}@{home}");
        let lookup = name.clone();
        let account = self
            .ctx
            .store
            .call_synced(move |db| db.federated_account(&lookup))
            .await?;
        if account.disabled || account.deleted {
            warn!(account = %name, "federated login of a disabled account refused");
            return Err(Denied::new(ErrorCode::AuthFailed, "login failed"));
        }
        info!(account = %name, home = %home, "federated login");
        Ok(LoggedIn::federated(account.id, account.name, &home))
    }
}

fn unknown_server() -> Denied {
    Denied::new(
        ErrorCode::TicketUnknownServer,
        "this server does not redeem tickets of that server",
    )
}

fn rate_limited(wait: Duration) -> Denied {
    let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
    Denied::new(
        ErrorCode::RateLimited,
        "too many federated logins; slow down",
    )
    .with_retry(ms)
}
