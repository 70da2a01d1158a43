//! Account-wide requests: `whoami`, and deleting one's account with an
//! export of its data (seed 003).

use serde_json::{Value, json};
use tracing::{info, warn};

use super::{CloseReason, Denied, LoggedIn, Outcome, Session};
use crate::proto::request::Secret;
use crate::proto::{ErrorCode, Packet, reply};
use crate::store::Account;

impl Session<'_> {
    pub(super) fn handle_whoami(&mut self, id: Option<&str>) -> Outcome {
        let account = self
            .account
            .as_ref()
            .map(|a| Value::from(a.name.as_str()))
            .unwrap_or(Value::Null);
        self.reply(
            reply::ack(id)
                .with("account", account)
                .with("server", self.ctx.server_name.as_str()),
        )
    }

    /// Deletes the account after checking its password again, answers with
    /// `export` (everything the account held), then ends every session of it.
    pub(super) async fn handle_delete_account(
        &mut self,
        id: Option<&str>,
        me: &LoggedIn,
        password: Secret,
    ) -> Result<Outcome, Denied> {
        super::federated::refuse_federated(me, "deleting the account")?;
        let account_id = me.id;
        let account = self
            .ctx
            .store
            .call(move |db| db.account(account_id))
            .await?
            .ok_or_else(|| Denied::new(ErrorCode::AccountDeleted, "the account is gone"))?;
        // A failed login's token is taken before the hash, as for `auth`.
        self.reserve_failure(Some(&me.name))?;
        if !self
            .ctx
            .passwords
            .verify(password, account.password.clone())
            .await
        {
            warn!(account = %me.name, "account deletion refused: wrong password");
            return Err(Denied::new(ErrorCode::AuthFailed, "wrong password"));
        }
        self.ctx.throttle.refund(Some(&me.name), self.peer_ip);
        let is_admin = self
            .ctx
            .store
            .call(move |db| db.is_server_admin(account_id))
            .await?;
        let me_subject = crate::router::acl::Subject::Account(account_id);
        let owned: Vec<Value> = self
            .ctx
            .topics
            .all()
            .iter()
            .filter(|t| {
                t.acl
                    .has_entry(&me_subject, crate::router::acl::Flag::Owner)
            })
            .map(|t| json!({ "id": t.id.to_string(), "name": t.name }))
            .collect();
        self.ctx
            .store
            .call_synced(move |db| db.delete_account(account_id))
            .await?;
        info!(account = %me.name, "account deleted");
        let mut export = Packet::server("export")
            .with(
                "account",
                json!({ "id": account.id.to_string(), "name": account.name, "server": self.ctx.server_name }),
            )
            .with("meta", Value::Object(account.meta))
            .with("keys", Value::from(account.keys))
            .with("server_admin", is_admin)
            .with("topics", Value::Array(owned));
        export = export.answering(id);
        let conn = self.conn_id;
        self.ctx.presence.close_all(
            account_id,
            conn,
            ErrorCode::AccountDeleted,
            "the account was deleted",
        );
        if let Outcome::Close(r) = self.reply(export) {
            return Ok(Outcome::Close(r));
        }
        // After the export, like every reply: after the burst's acks.
        let _ = self.reply(reply::bye(
            ErrorCode::AccountDeleted,
            "the account was deleted",
        ));
        Ok(Outcome::Close(CloseReason::AccountDeleted))
    }
}

/// How the sessions of an account that can no longer log in end: the
/// `bye` code, its words, and the reason the log gives. `None` for an
/// account in use.
pub(super) fn ending(a: &Account) -> Option<(ErrorCode, &'static str, CloseReason)> {
    if a.deleted {
        Some((
            ErrorCode::AccountDeleted,
            "the account was deleted",
            CloseReason::AccountDeleted,
        ))
    } else if a.disabled {
        Some((
            ErrorCode::AuthFailed,
            "the account was disabled",
            CloseReason::AccountDisabled,
        ))
    } else {
        None
    }
}

/// Ends every session here of those of `accounts` that are now deleted or
/// disabled in the store: for changes that did not go through a session
/// here (another node's, or the admin CLI writing the store beside the
/// daemon). Read on the read-only connection, which must not hold up the
/// commits of everyone's messages.
pub async fn end_sessions_of_ended(ctx: &super::Context, accounts: Vec<uuid::Uuid>) {
    let ended = ctx
        .store
        .read(move |db| {
            let mut out = Vec::new();
            for id in accounts {
                if let Some(a) = db.account(id)? {
                    if let Some((code, why, _)) = ending(&a) {
                        out.push((id, a.name, code, why));
                    }
                }
            }
            Ok(out)
        })
        .await;
    let ended = match ended {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "cannot read the accounts of the sessions here");
            return;
        }
    };
    for (id, name, code, why) in ended {
        info!(account = %name, reason = why, "its sessions end");
        ctx.presence.close_all(id, 0, code, why);
    }
}
