//! Login and registration.

use serde_json::Value;
use tracing::{info, warn};

use super::{CloseReason, Denied, LoggedIn, Outcome, Session};
use crate::config::Registration;
use crate::proto::name::{PASSWORD_BYTES, check_username};
use crate::proto::request::{AuthRequest, Secret};
use crate::proto::{ErrorCode, Packet, reply};
use crate::router::acl::Flag;
use crate::store::TopicRecord;

impl Session<'_> {
    pub(super) async fn handle_auth(
        &mut self,
        id: Option<&str>,
        auth: AuthRequest,
    ) -> Result<Outcome, Denied> {
        if self.account.is_some() {
            return Err(Denied::new(ErrorCode::AuthAlready, "already logged in"));
        }
        if !self.ctx.auth_methods.iter().any(|m| m == auth.method()) {
            return Err(Denied::new(
                ErrorCode::AuthUnsupportedMethod,
                format!("login method {:?} is not offered here", auth.method()),
            ));
        }
        let me = match auth {
            AuthRequest::Password { username, password } => {
                self.reserve_failure(Some(&username))?;
                let result = self.check_password(&username, password).await;
                self.note_failure(result, Some(&username), "password")?
            }
            AuthRequest::Ticket { ticket, server } => {
                self.reserve_failure(None)?;
                let result = self.redeem_ticket(ticket.expose(), &server).await;
                self.note_failure(result, None, "ticket")?
            }
            AuthRequest::Pubkey {
                username,
                signature: None,
            } => {
                check_username(&username).map_err(|m| Denied::new(ErrorCode::RequestInvalid, m))?;
                return self.issue_challenge(id, &username);
            }
            AuthRequest::Pubkey {
                username,
                signature: Some(signature),
            } => {
                // Used up whatever the outcome, a throttled answer included.
                let pending = self.challenge.take();
                self.reserve_failure(Some(&username))?;
                let result = self.check_signature(pending, &username, &signature).await;
                self.note_failure(result, Some(&username), "pubkey")?
            }
        };
        self.logged_in_as(id, me).await
    }

    /// Takes a failed login's token from the account's (if named) and the
    /// address's allowance before anything is checked, so concurrent
    /// attempts each pay; `auth/throttled` when one is used up.
    pub(super) fn reserve_failure(&self, account: Option<&str>) -> Result<(), Denied> {
        self.ctx
            .throttle
            .reserve(account, self.peer_ip)
            .map_err(|wait| self.throttled(wait))
    }

    /// Keeps the token [`Session::reserve_failure`] took for a failed login
    /// (and logs it); gives it back for any other outcome.
    fn note_failure(
        &self,
        result: Result<LoggedIn, Denied>,
        account: Option<&str>,
        method: &'static str,
    ) -> Result<LoggedIn, Denied> {
        self.ctx.metrics.login(method, result.is_ok());
        match &result {
            Err(d) if matches!(d.code(), ErrorCode::AuthFailed | ErrorCode::TicketInvalid) => {
                warn!(username = account.unwrap_or("-"), method, peer = %self.peer_ip, "login failed");
            }
            _ => self.ctx.throttle.refund(account, self.peer_ip),
        }
        result
    }

    async fn check_password(
        &mut self,
        username: &str,
        password: Secret,
    ) -> Result<LoggedIn, Denied> {
        let name = username.to_owned();
        let account = self
            .ctx
            .store
            .call(move |db| db.account_by_name(&name))
            .await?;
        let usable = account.filter(|a| !a.deleted && !a.disabled);
        let phc = usable.as_ref().and_then(|a| a.password.clone());
        // A hash made at another cost is made again once the password is
        // known to match (see `Passwords::is_current`).
        let again = match &phc {
            Some(p) if !self.ctx.passwords.is_current(p) => Some((password.clone(), p.clone())),
            _ => None,
        };
        // Unknown, disabled and deleted accounts cost the same argon2 work as
        // a wrong password, and get the same answer.
        let matched = self.ctx.passwords.verify(password, phc).await;
        match usable {
            Some(a) if matched => {
                if let Some((password, verified)) = again {
                    self.rehash(a.id, &a.name, password, verified).await;
                }
                Ok(LoggedIn::new(a.id, a.name))
            }
            _ => Err(Denied::new(ErrorCode::AuthFailed, "login failed")),
        }
    }

    /// Stores `password` hashed at the configured cost for account `id`,
    /// bound to the hash `verified` it was checked against (a change of
    /// the password meanwhile wins, here or on another node). A failure is
    /// logged, not the login's: the old hash still works.
    async fn rehash(&self, id: uuid::Uuid, name: &str, password: Secret, verified: String) {
        let phc = match self.ctx.passwords.hash(password).await {
            Ok(phc) => phc,
            Err(e) => {
                warn!(account = %name, error = %e, "cannot hash a password again at the configured cost");
                return;
            }
        };
        let stored = self
            .ctx
            .store
            .call_synced(move |db| db.set_rehashed(id, &verified, &phc))
            .await;
        match stored {
            Ok(true) => info!(account = %name, "password hashed again at the configured cost"),
            Ok(false) => info!(account = %name, "password changed meanwhile: not hashed again"),
            Err(e) => warn!(account = %name, error = %e, "cannot store a password hashed again"),
        }
    }

    /// Marks the session logged in and sends the seed's sequence: `ack`,
    /// server metadata, own metadata, then one `meta` per auto-joined topic.
    async fn logged_in_as(&mut self, id: Option<&str>, me: LoggedIn) -> Result<Outcome, Denied> {
        let account_id = me.id;
        let own = self
            .ctx
            .store
            .call(move |db| db.account(account_id))
            .await?
            .map(|a| a.meta)
            .unwrap_or_default();
        info!(account = %me.name, "logged in");
        tracing::Span::current().record("account", me.name.as_str());
        let server = Packet::server("meta")
            .with_from(format!("@{}", self.ctx.server_name))
            .with("name", self.ctx.server_name.as_str())
            .with("rules", self.ctx.rules.as_str())
            .with("software", reply::SOFTWARE);
        let favorites = own.get("favorites").cloned();
        let mut mine = Packet::server("meta").with_from(me.name.clone());
        mine.ex = own;
        let topics = self.autojoin(&me, favorites.as_ref()).await?;
        let mut packets = vec![reply::ack(id), server, mine];
        let read = self.read_states(&me, &topics).await?;
        for t in &topics {
            let mut meta = self.topic_meta(t, &me.name).await?;
            if let Some(state) = read.get(&t.id) {
                state.write_into(&mut meta);
            }
            packets.push(meta);
        }
        packets.extend(self.pending_for(&me, &topics));
        self.account = Some(std::sync::Arc::new(me));
        for p in packets {
            if let Outcome::Close(r) = self.reply(p) {
                return Ok(Outcome::Close(r));
            }
        }
        // Only now may topic traffic reach this connection: nothing overtakes
        // the login sequence.
        if let Some(me) = &self.account {
            let remote = me.federated.as_ref().map(|f| f.name_lower.clone());
            self.ctx
                .presence
                .add(me.id, self.conn_id, self.out.clone(), remote);
            // A delete or disable committed while this login went on closed
            // the connections present then, not this one: read the account
            // again now that a later one would close it too.
            let account_id = me.id;
            let now = match self.ctx.store.call(move |db| db.account(account_id)).await {
                Ok(now) => now,
                // The login stands: its answers are out.
                Err(e) => {
                    warn!(account = %me.name, error = %e, "cannot read the account again after its login");
                    return Ok(Outcome::Continue);
                }
            };
            let ended = match now {
                Some(a) => super::account::ending(&a),
                None => Some((
                    ErrorCode::AccountDeleted,
                    "the account was deleted",
                    CloseReason::AccountDeleted,
                )),
            };
            if let Some((code, why, reason)) = ended {
                info!(account = %me.name, reason = why, "logged out at once");
                self.ctx.presence.remove(account_id, self.conn_id);
                let _ = self.reply(reply::bye(code, why));
                return Ok(Outcome::Close(reason));
            }
        }
        Ok(Outcome::Continue)
    }

    /// Joins the favourites marked `autojoin` (where the ACL allows), then
    /// returns every topic the account is a member of, by name.
    async fn autojoin(
        &self,
        me: &LoggedIn,
        favorites: Option<&Value>,
    ) -> Result<Vec<std::sync::Arc<TopicRecord>>, Denied> {
        let wanted = favorites
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        for fav in wanted {
            let autojoin = fav
                .get("autojoin")
                .and_then(Value::as_bool)
                .unwrap_or(false);
            let Some(t) = fav
                .get("topic")
                .and_then(Value::as_str)
                .and_then(|t| self.ctx.topics.resolve(t))
            else {
                continue;
            };
            if !autojoin
                || t.members.contains(&me.id)
                || !t.acl.allows(self.actor(me), Flag::Read)
                || super::admission::members_only(&t)
                || self.may_join(me.id, &t).is_err()
            {
                continue;
            }
            // Refused in the join's own store job (a ban or a limit that
            // came meanwhile): the login goes on without it.
            if let Err(d) = self.set_membership(me, &t, true).await {
                if d.code() == ErrorCode::ServerInternal {
                    return Err(d);
                }
            }
        }
        Ok(self.ctx.topics.member_of(me.id))
    }

    pub(super) async fn handle_register(
        &mut self,
        id: Option<&str>,
        username: String,
        password: Secret,
    ) -> Result<Outcome, Denied> {
        match self.ctx.registration {
            Registration::Open => {}
            Registration::Closed => {
                return Err(Denied::new(
                    ErrorCode::AuthRegistrationClosed,
                    "registration is closed on this server",
                ));
            }
            Registration::Admins => {
                let me = self.account.clone().ok_or_else(|| {
                    Denied::new(
                        ErrorCode::AuthRegistrationClosed,
                        "only server admins may register accounts",
                    )
                })?;
                let is_admin = self
                    .ctx
                    .store
                    .call(move |db| db.is_server_admin(me.id))
                    .await?;
                if !is_admin {
                    return Err(Denied::new(
                        ErrorCode::AuthRegistrationClosed,
                        "only server admins may register accounts",
                    ));
                }
            }
        }
        check_username(&username).map_err(|m| Denied::new(ErrorCode::AccountInvalidName, m))?;
        if !PASSWORD_BYTES.contains(&password.expose().len()) {
            return Err(Denied::new(
                ErrorCode::AccountInvalidPassword,
                format!(
                    "a password has {} to {} bytes",
                    PASSWORD_BYTES.start(),
                    PASSWORD_BYTES.end()
                ),
            ));
        }
        let name = username.clone();
        let taken = self
            .ctx
            .store
            .call(move |db| Ok(db.account_by_name(&name)?.is_some()))
            .await?;
        if taken {
            return Err(Denied::new(
                ErrorCode::AccountNameTaken,
                "that name is taken",
            ));
        }
        let phc = self.ctx.passwords.hash(password).await.map_err(|e| {
            warn!(error = %e, "password hashing failed");
            Denied::new(
                ErrorCode::ServerInternal,
                "the server could not complete the request",
            )
        })?;
        let name = username.clone();
        let account = self
            .ctx
            .store
            .call_synced(move |db| db.create_account(&name, &phc))
            .await?;
        info!(account = %account.name, "account registered");
        Ok(self.reply(reply::ack(id).with("account", Value::String(account.name))))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::super::testing;
    use super::*;
    use crate::store;

    /// A login that read its account before a delete committed, and goes
    /// on after it (behind it in the store's queue), is closed with
    /// `account/deleted` instead of staying logged in: the delete's
    /// `close_all` ran before this connection was present.
    #[tokio::test]
    async fn a_login_overtaken_by_its_accounts_delete_is_closed() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let phc = ctx.passwords.hash_blocking("hellosecret").unwrap();
        let victim = ctx
            .store
            .call(move |db| db.create_account("victim", &phc))
            .await
            .unwrap()
            .id;
        let (out, mut rx, _closer) = crate::router::Outbound::channel(1 << 16, 1 << 30);
        let mut s = Session::new(&ctx, out, 9, std::net::Ipv4Addr::LOCALHOST.into());
        let auth = br#"{"op":"auth","id":"a","ex":{"method":"password","username":"victim","password":"hellosecret"}}"#;
        let mut login = Box::pin(s.handle_line(auth));
        // The account's read runs first; the delete queues behind it, and
        // the rest of the login behind the delete.
        let (release, held) = store::hold_store_thread(&ctx.store).await;
        assert!((&mut login).now_or_never().is_none());
        let mut delete = Box::pin(ctx.store.call_synced(move |db| db.delete_account(victim)));
        assert!((&mut delete).now_or_never().is_none());
        drop(release);
        held.await.unwrap().unwrap();
        delete.await.unwrap();
        let outcome = login.await;
        assert_eq!(outcome, Outcome::Close(CloseReason::AccountDeleted));
        drop(s);
        let lines = testing::replies(&mut rx);
        assert!(lines.contains(r#""code":"account/deleted""#), "{lines}");
        assert_eq!(ctx.presence.connections(victim), 0);
        ctx.store.close().await;
    }

    /// A login that checked a password hashed at an old cost hashes it
    /// again, unless the password changed meanwhile: then the change
    /// stands, and the old password does not come back.
    #[tokio::test]
    async fn a_password_changed_during_a_login_is_not_undone_by_its_rehash() {
        let (_dir, ctx) = testing::context_with(|_| {});
        let dearer = crate::password::Passwords::new(
            crate::password::Cost {
                memory_kib: 64,
                iterations: 2,
                parallelism: 1,
            },
            1,
        )
        .unwrap();
        let stale = dearer.hash_blocking("hellosecret").unwrap();
        assert!(!ctx.passwords.is_current(&stale));
        let changed = ctx.passwords.hash_blocking("changed-secret").unwrap();
        let id = ctx
            .store
            .call(move |db| db.create_account("dan", &stale))
            .await
            .unwrap()
            .id;
        let (out, _rx, _closer) = crate::router::Outbound::channel(1 << 16, 1 << 30);
        let mut s = Session::new(&ctx, out, 9, std::net::Ipv4Addr::LOCALHOST.into());
        let auth = br#"{"op":"auth","id":"a","ex":{"method":"password","username":"dan","password":"hellosecret"}}"#;
        let (release, held) = store::hold_store_thread(&ctx.store).await;
        let mut login = Box::pin(s.handle_line(auth));
        assert!((&mut login).now_or_never().is_none());
        // The change commits after the login read the account, before its
        // rehash.
        let new = changed.clone();
        let mut change = Box::pin(ctx.store.call_synced(move |db| db.set_password(id, &new)));
        assert!((&mut change).now_or_never().is_none());
        drop(release);
        held.await.unwrap().unwrap();
        change.await.unwrap();
        assert_eq!(login.await, Outcome::Continue);
        let now = ctx.store.call(move |db| db.account(id)).await.unwrap();
        assert_eq!(now.and_then(|a| a.password), Some(changed));
        ctx.store.close().await;
    }
}
