//! A client session: the login state machine and the reply rule.
//!
//! Every request gets exactly one reply (`ack`, `error`, or the answer that
//! carries data), with `ex.for` set to the request's `id` when it had one,
//! queued in request order on the connection's outbound queue; but `pong`
//! and an accepted `send` without an `id` get none. Handlers live
//! in one file per family: [`auth`] (login, registration), [`meta`].

mod account;
mod admission;
mod auth;
mod edit;
mod federated;
mod find;
mod keys;
mod marker;
mod message;
mod meta;
mod presence;
mod search;
#[cfg(test)]
mod testing;
pub mod throttle;
mod ticket;
mod topic;

pub use account::end_sessions_of_ended;
pub use admission::{
    AdmissionRelay, JoinEnded, end_join_request, expire_join_requests, mirror_join_request,
};
pub use federated::{Abroad, AbroadError, RedeemedAbroad};
pub use keys::signed_message;
pub use message::EphemeralRelay;
pub use presence::announce_presence;
pub(crate) use ticket::redeem_anywhere;
pub use ticket::{Redeemer, TicketRelay, Unavailable, node_code, redeem_here};
pub(crate) use topic::{acl_value, announce_to_topic, meta_packet, topic_event, topic_names};

use std::net::IpAddr;

use bytes::Bytes;

use tracing::error;
use uuid::Uuid;

use crate::config::{Config, Registration};
use crate::password::Passwords;
use crate::proto::packet::ExText;
use crate::proto::request::Request;
use crate::proto::scan::{self, PlainSend};
use crate::proto::{ErrorCode, Packet, reply};
use crate::router::{Outbound, Presence, Topics};
use crate::store::Store;
use serde_json::Map;
use throttle::{LoginThrottle, RateLimit};

/// What the connection should do after a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Keep reading.
    Continue,
    /// Keep reading; the packet (a `pong`) got no reply and did nothing,
    /// so the connection charges its bytes as silent input.
    Silent,
    /// The final packets are queued: close the connection.
    Close(CloseReason),
}

/// Why a session ended, for the connection log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent `quit`.
    Quit,
    /// Too many protocol errors in a row.
    TooManyErrors,
    /// The outbound queue overflowed.
    SendqExceeded,
    /// The account was deleted.
    AccountDeleted,
    /// The account was disabled.
    AccountDisabled,
}

impl CloseReason {
    /// Short text for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            CloseReason::Quit => "quit",
            CloseReason::TooManyErrors => "too many protocol errors",
            CloseReason::SendqExceeded => "send queue exceeded",
            CloseReason::AccountDeleted => "account deleted",
            CloseReason::AccountDisabled => "account disabled",
        }
    }
}

/// What every session shares: settings, the store, the password hasher.
pub struct Context {
    /// This server's name.
    pub server_name: String,
    /// The same, lowercased, for ACL subjects.
    pub server_name_lower: String,
    /// Server rules, sent as server metadata after login.
    pub rules: String,
    /// Login methods offered.
    pub auth_methods: Vec<String>,
    /// Who may register.
    pub registration: Registration,
    /// JSON nesting limit.
    pub max_json_depth: usize,
    /// Protocol errors in a row before closing.
    pub max_protocol_errors: u32,
    /// Line limit, for messages.
    pub max_line_bytes: usize,
    /// Most messages one burst gathers: a quarter of a connection's queue,
    /// since a burst is queued whole or not at all.
    pub max_burst_packets: usize,
    /// Metadata keys per account.
    pub max_meta_keys: usize,
    /// Topics one account may be a member of.
    pub max_topics_per_account: usize,
    /// Members one topic may have.
    pub max_members_per_topic: usize,
    /// How long a join request waits for an admitter.
    pub join_request_ttl_ms: u64,
    /// Join requests pending in one topic at once.
    pub max_join_requests_per_topic: usize,
    /// Join requests one account may have pending at once.
    pub max_join_requests_per_account: usize,
    /// Join requests pending on this node (soft state).
    pub join_requests: crate::router::JoinRequests,
    /// Packet rate per connection.
    pub packets_per_second: u32,
    /// Packet burst per connection.
    pub packet_burst: u32,
    /// Largest metadata value (JSON bytes).
    pub max_meta_value_bytes: usize,
    /// This node's name (tickets name their issuing node).
    pub node: String,
    /// Ticket lifetime.
    pub ticket_ttl_ms: u64,
    /// Challenge lifetime.
    pub challenge_ttl_ms: u64,
    /// The store.
    pub store: Store,
    /// argon2id, off the async workers.
    pub passwords: Passwords,
    /// Failed-login throttle.
    pub throttle: LoginThrottle,
    /// Which connections each account has.
    pub presence: Presence,
    /// Held by [`announce_presence`] from drain to delivery: two at once
    /// (the loop's and a `presence` request's) would deliver their changes
    /// in either order, an account's going offline before its coming online.
    announcing: tokio::sync::Mutex<()>,
    /// The topic table (a cache of the store's topics). Shared with store
    /// jobs, so that a change can be cached in the job that commits it.
    pub topics: std::sync::Arc<Topics>,
    /// History settings.
    pub history: crate::config::HistoryConfig,
    /// The server's metrics.
    pub metrics: std::sync::Arc<crate::ops::Metrics>,
    /// Redeems other nodes' tickets at their issuer (set when the mesh
    /// starts; without it such tickets are invalid here).
    pub ticket_relay: std::sync::OnceLock<std::sync::Arc<dyn TicketRelay>>,
    /// Carries messages of topics without history to other nodes (set when
    /// the mesh starts).
    pub ephemeral_relay: std::sync::OnceLock<std::sync::Arc<dyn EphemeralRelay>>,
    /// Carries join requests and their ends to other nodes (set when the
    /// mesh starts).
    pub admission_relay: std::sync::OnceLock<std::sync::Arc<dyn AdmissionRelay>>,
    /// Redeems other servers' tickets at those servers (set when
    /// federation starts; without it such tickets are of an unknown server).
    pub abroad: std::sync::OnceLock<std::sync::Arc<dyn Abroad>>,
    /// Whether `*` in ACLs includes users of other servers.
    pub star_includes_foreign: bool,
    /// Federated logins one connection may attempt per minute.
    pub fed_attempts_per_minute: u32,
}

impl Context {
    /// From the configuration and the services it needs; `topics` is the
    /// store's topics, loaded at start.
    pub fn new(
        config: &Config,
        store: Store,
        passwords: Passwords,
        topics: Vec<crate::store::TopicRecord>,
    ) -> Self {
        Self {
            server_name: config.server.name.clone(),
            server_name_lower: config.server.name.to_lowercase(),
            rules: config.server.rules.clone(),
            auth_methods: config.auth.methods.clone(),
            registration: config.auth.registration,
            max_json_depth: config.limits.max_json_depth,
            max_protocol_errors: config.limits.max_protocol_errors,
            max_line_bytes: config.limits.max_line_bytes,
            max_burst_packets: (config.limits.max_sendq_packets / 4).max(1),
            max_meta_keys: config.limits.max_meta_keys,
            max_topics_per_account: config.limits.max_topics_per_account,
            max_members_per_topic: config.limits.max_members_per_topic,
            join_request_ttl_ms: config.limits.join_request_ttl_ms,
            max_join_requests_per_topic: config.limits.max_join_requests_per_topic,
            max_join_requests_per_account: config.limits.max_join_requests_per_account,
            join_requests: crate::router::JoinRequests::default(),
            packets_per_second: config.limits.packets_per_second,
            packet_burst: config.limits.packet_burst,
            max_meta_value_bytes: config.limits.max_meta_value_bytes,
            node: config.server.node.clone(),
            ticket_ttl_ms: config.auth.ticket_ttl_ms,
            challenge_ttl_ms: config.auth.challenge_ttl_ms,
            store,
            passwords,
            throttle: LoginThrottle::new(
                config.auth.max_failures_per_account,
                config.auth.max_failures_per_ip,
                std::time::Duration::from_millis(config.auth.failure_window_ms),
            ),
            presence: Presence::default(),
            announcing: tokio::sync::Mutex::new(()),
            topics: std::sync::Arc::new(Topics::load(topics)),
            history: config.history.clone(),
            metrics: std::sync::Arc::default(),
            ticket_relay: std::sync::OnceLock::new(),
            ephemeral_relay: std::sync::OnceLock::new(),
            admission_relay: std::sync::OnceLock::new(),
            abroad: std::sync::OnceLock::new(),
            star_includes_foreign: config.federation.star_includes_foreign,
            fed_attempts_per_minute: config.federation.client_attempts_per_minute,
        }
    }
}

/// What [`Session::begin`] leaves for the handler that may wait.
enum Next<'l> {
    /// The line is fully handled.
    Done(Outcome),
    /// A request for [`Session::run`].
    Run {
        id: Option<String>,
        request: Request,
        raw_ex: Option<ExText<'l>>,
    },
}

/// The account a session is logged in as.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    /// Account id.
    pub id: Uuid,
    /// Account name, as shown.
    pub name: String,
    /// `name` as a JSON string, quotes included: written into every relay.
    name_json: String,
    /// For a user of another server (logged in by federation, `name` is
    /// `user@home`): `home` and `name`, lowercased, for ACL subjects.
    federated: Option<Federated>,
}

/// What sets a federated user apart in ACLs.
#[derive(Debug, Clone)]
struct Federated {
    home_lower: String,
    /// Shared with the presence table, which judges who may admit by it.
    name_lower: std::sync::Arc<str>,
}

impl LoggedIn {
    /// The account `id`, named `name`. `name` is never changed afterwards:
    /// its JSON form is made here, once.
    pub fn new(id: Uuid, name: String) -> Self {
        let name_json = serde_json::Value::from(name.as_str()).to_string();
        Self {
            id,
            name,
            name_json,
            federated: None,
        }
    }

    /// The account `id` standing for a user of server `home`, named
    /// `user@home`.
    pub fn federated(id: Uuid, name: String, home: &str) -> Self {
        let federated = Some(Federated {
            home_lower: home.to_lowercase(),
            name_lower: name.to_lowercase().into(),
        });
        Self {
            federated,
            ..Self::new(id, name)
        }
    }

    /// This account as ACLs on this server see it: a local account, or a
    /// user of another server (its `user@home`, its home's `@home`, and `*`
    /// as the operator decides).
    pub(super) fn actor<'s>(&'s self, ctx: &'s Context) -> crate::router::acl::Actor<'s> {
        use crate::router::acl::Actor;
        match &self.federated {
            None => Actor::local(self.id, &ctx.server_name_lower),
            Some(f) => Actor {
                account: self.id,
                server: &f.home_lower,
                remote: Some(&f.name_lower),
                everyone: ctx.star_includes_foreign,
            },
        }
    }

    /// The home server of a federated user; `None` for a local account.
    pub fn home(&self) -> Option<&str> {
        self.federated.as_ref().map(|f| f.home_lower.as_str())
    }
}

/// One connection's session state.
pub struct Session<'a> {
    ctx: &'a Context,
    out: Outbound,
    conn_id: u64,
    peer_ip: IpAddr,
    /// Shared, so a handler holds it for one refcount, not a copy.
    account: Option<std::sync::Arc<LoggedIn>>,
    challenge: Option<keys::Challenge>,
    errors_in_row: u32,
    rate: RateLimit,
    /// Federated logins this connection may still attempt.
    fed_attempts: RateLimit,
    /// The message log's seq of the last message this session kept:
    /// requests other than `send` wait until it is synced.
    kept_seq: u64,
    /// Messages not kept, relayed from the current burst of input.
    burst: message::Burst,
    /// Clock readings for the current burst of input.
    clock: BurstClock,
    /// The topic last sent to, as resolved. Boxed: it is lent out and put
    /// back for every message, and moving the record itself (two copies of
    /// about 100 bytes) stalled the read of `may_send` that followed the move.
    last_topic: Option<Box<message::LastTopic>>,
}

/// The clocks as read for one burst of input: each at most once, when a
/// packet first needs it, and forgotten before the session waits for
/// anything. A burst is handled within a fraction of a millisecond, and
/// three clock reads per message were a tenth of the pairs profile.
#[derive(Default)]
struct BurstClock {
    instant: Option<std::time::Instant>,
    unix_ms: Option<i64>,
}

impl BurstClock {
    /// Monotonic time, for rate limits.
    fn instant(&mut self) -> std::time::Instant {
        *self.instant.get_or_insert_with(std::time::Instant::now)
    }

    /// Unix milliseconds, for the stamps of messages and acks.
    fn unix_ms(&mut self) -> i64 {
        *self.unix_ms.get_or_insert_with(crate::proto::id::now_ms)
    }
}

impl Drop for Session<'_> {
    fn drop(&mut self) {
        if let Some(me) = &self.account {
            self.ctx.presence.remove(me.id, self.conn_id);
        }
    }
}

/// A handler's failure: becomes one `error` reply. Boxed: the message
/// path returns `Result<_, Denied>` for every message, and a pointer's
/// worth comes back in registers where the fields came back through
/// memory (written in pieces, read back whole: a stalled load per message
/// in the pairs profile). Only a failure allocates.
#[derive(Debug)]
pub(crate) struct Denied(Box<DeniedAs>);

/// What a [`Denied`] says.
#[derive(Debug)]
struct DeniedAs {
    code: ErrorCode,
    message: String,
    retry_after_ms: Option<u64>,
}

impl Denied {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self(Box::new(DeniedAs {
            code,
            message: message.into(),
            retry_after_ms: None,
        }))
    }

    fn code(&self) -> ErrorCode {
        self.0.code
    }

    fn with_retry(mut self, ms: u64) -> Self {
        self.0.retry_after_ms = Some(ms);
        self
    }

    fn into_packet(self, id: Option<&str>) -> Packet {
        let DeniedAs {
            code,
            message,
            retry_after_ms,
        } = *self.0;
        let p = reply::error(id, code, message);
        match retry_after_ms {
            Some(ms) => p.with("retry_after_ms", ms),
            None => p,
        }
    }
}

impl From<crate::store::Error> for Denied {
    fn from(e: crate::store::Error) -> Self {
        match e {
            crate::store::Error::NameTaken => {
                Denied::new(ErrorCode::AccountNameTaken, "that name is taken")
            }
            crate::store::Error::TooManyKeys { max } => Denied::new(
                ErrorCode::MetaInvalid,
                format!("at most {max} metadata keys"),
            ),
            other => {
                error!(error = %other, "store failure");
                Denied::new(
                    ErrorCode::ServerInternal,
                    "the server could not complete the request",
                )
            }
        }
    }
}

impl<'a> Session<'a> {
    /// A new, not yet logged-in session of connection `conn_id` from
    /// `peer_ip`, replying on `out`.
    pub fn new(ctx: &'a Context, out: Outbound, conn_id: u64, peer_ip: IpAddr) -> Self {
        Self {
            ctx,
            out,
            conn_id,
            peer_ip,
            account: None,
            challenge: None,
            errors_in_row: 0,
            rate: RateLimit::new(ctx.packets_per_second, ctx.packet_burst),
            fed_attempts: RateLimit::per_minute(ctx.fed_attempts_per_minute),
            kept_seq: 0,
            burst: message::Burst::default(),
            clock: BurstClock::default(),
            last_topic: None,
        }
    }

    /// The logged-in account's name, if any.
    pub fn account(&self) -> Option<&str> {
        self.account.as_ref().map(|a| a.name.as_str())
    }

    /// Handles one line from the client.
    pub async fn handle_line(&mut self, line: &[u8]) -> Outcome {
        match self.begin(line) {
            Next::Done(outcome) => outcome,
            // Boxed: the handlers' states are large, and the common packet,
            // a message the log has room for, never gets here.
            Next::Run {
                id,
                request,
                raw_ex,
            } => Box::pin(self.run(id, request, raw_ex)).await,
        }
    }

    /// Everything about a line that needs no waiting: decoding, the rate
    /// limit, the login gate, parsing, and the whole of a message, unless
    /// it is kept and the message log is full. Replies made here follow the
    /// burst's relays and acks, so they keep request order.
    fn begin<'l>(&mut self, line: &'l [u8]) -> Next<'l> {
        // The usual message is read in one pass; anything else, anything
        // unusual and anything wrong goes through the full decoder.
        if let Some(send) = scan::plain_send(line, self.ctx.max_json_depth) {
            return self.begin_send(send);
        }
        let decoded = Packet::decode_lazy(line, self.ctx.max_json_depth);
        let is_send = decoded.as_ref().is_ok_and(|p| p.op() == "send");
        // Anything but a message acts after the burst is out.
        if !is_send {
            if let Outcome::Close(r) = self.flush_burst() {
                return Next::Done(Outcome::Close(r));
            }
        }
        // A message's `ex` stays text when it can be relayed as sent.
        let decoded = decoded.and_then(|d| match is_send {
            true => d.into_relayable(),
            false => d.into_packet().map(|p| (p, None)),
        });
        let (mut packet, raw_ex) = match decoded {
            Ok(d) => d,
            Err(e) => return Next::Done(self.fail(e.id.as_deref(), e.code, e.message)),
        };
        let request_id = packet.id.take();
        let id = request_id.as_deref();
        let needs_login = crate::proto::request::needs_login(&packet.op);
        if let Err(outcome) = self.admit(&packet.op, needs_login, id) {
            return Next::Done(outcome);
        }
        let request = match Request::parse(&mut packet) {
            Ok(r) => r,
            Err(e) => return Next::Done(self.fail(id, e.code, e.message)),
        };
        self.errors_in_row = 0;
        if let Request::Send { topic, ex } = &request {
            if let Some(outcome) = self.try_send_now(id, topic.as_bytes(), ex, raw_ex) {
                return Next::Done(outcome);
            }
        }
        Next::Run {
            id: request_id,
            request,
            raw_ex,
        }
    }

    /// A message read by [`scan::plain_send`]: the same steps as any
    /// request, without building a packet.
    fn begin_send<'l>(&mut self, send: PlainSend<'l>) -> Next<'l> {
        if let Err(outcome) = self.admit("send", true, send.id) {
            return Next::Done(outcome);
        }
        self.errors_in_row = 0;
        if let Some(outcome) = self.try_send_now(send.id, send.topic, &Map::new(), Some(send.ex)) {
            return Next::Done(outcome);
        }
        Next::Run {
            id: send.id.map(str::to_owned),
            request: Request::Send {
                topic: send.topic_text().into_owned(),
                ex: Map::new(),
            },
            raw_ex: Some(send.ex),
        }
    }

    /// The checks every well-formed request passes first: the rate limit,
    /// then the login gate (for an op that `needs_login`). `Err` holds the
    /// outcome of the refusal.
    fn admit(&mut self, op: &str, needs_login: bool, id: Option<&str>) -> Result<(), Outcome> {
        // `pong` gets no reply and `quit` only ends the session: neither is
        // worth refusing, and refusing `pong` would break the reply rule.
        // They take no token either (protocol.md 9.5), so checked first.
        let exempt = matches!(op, "pong" | "quit");
        if !exempt {
            if let Err(wait) = self.rate.take(self.clock.instant()) {
                let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
                let e = Denied::new(ErrorCode::RateLimited, "too many packets; slow down")
                    .with_retry(ms);
                return Err(self.reply(e.into_packet(id)));
            }
        }
        // The login gate comes before field checks: nothing is validated for
        // a session that may not use the op at all.
        if self.account.is_none() && needs_login {
            self.errors_in_row = 0;
            return Err(self.reply(reply::error(
                id,
                ErrorCode::AuthRequired,
                "log in first (op \"auth\")",
            )));
        }
        Ok(())
    }

    /// The rest of a request: for any but a `send`, after this session's
    /// kept messages are synced ([`Session::drain`]); then its handler,
    /// which may wait for the store.
    async fn run(
        &mut self,
        request_id: Option<String>,
        request: Request,
        raw_ex: Option<ExText<'_>>,
    ) -> Outcome {
        let id = request_id.as_deref();
        if !matches!(request, Request::Send { .. }) {
            if let Outcome::Close(r) = self.drain().await {
                return Outcome::Close(r);
            }
        }
        let outcome = self.handle(id, request, raw_ex).await;
        // The handler may have waited: the next packet reads the clock anew.
        self.clock = BurstClock::default();
        outcome
    }

    /// Dispatches a request to its handler. Every handler but `send`'s runs
    /// boxed, so this future (boxed once in `handle_line`) is only as large
    /// as the send path, which a kept message takes for each message.
    async fn handle(
        &mut self,
        id: Option<&str>,
        request: Request,
        raw_ex: Option<ExText<'_>>,
    ) -> Outcome {
        let result = match request {
            Request::Ping => return self.reply(reply::pong(id)),
            Request::Pong => return Outcome::Silent,
            Request::Quit => {
                return match self.reply(reply::ack(id)) {
                    Outcome::Continue => Outcome::Close(CloseReason::Quit),
                    closed => closed,
                };
            }
            Request::Auth(a) => Box::pin(self.handle_auth(id, a)).await,
            Request::Register { username, password } => {
                Box::pin(self.handle_register(id, username, password)).await
            }
            Request::Meta { topic, values } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_meta(id, &me, topic, values)).await,
                Err(d) => Err(d),
            },
            Request::Whoami => return self.handle_whoami(id),
            Request::Ticket { server } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_ticket(id, &me, server)).await,
                Err(d) => Err(d),
            },
            Request::KeyAdd { key } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_key_add(id, &me, &key)).await,
                Err(d) => Err(d),
            },
            Request::KeyRemove { key } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_key_remove(id, &me, &key)).await,
                Err(d) => Err(d),
            },
            Request::KeyList => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_key_list(id, &me)).await,
                Err(d) => Err(d),
            },
            Request::DeleteAccount { password } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_delete_account(id, &me, password)).await,
                Err(d) => Err(d),
            },
            Request::Create { name, meta } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_create(id, &me, name, meta)).await,
                Err(d) => Err(d),
            },
            Request::Join { topic, note, key } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_join(id, &me, &topic, note, key)).await,
                Err(d) => Err(d),
            },
            Request::Admit {
                topic,
                user,
                accept,
                note,
                key,
            } => match self.logged_in() {
                Ok(me) => {
                    let decision = admission::Decision { accept, note, key };
                    Box::pin(self.handle_admit(id, &me, &topic, &user, decision)).await
                }
                Err(d) => Err(d),
            },
            Request::Leave { topic } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_leave(id, &me, &topic)).await,
                Err(d) => Err(d),
            },
            Request::Send { topic, ex } => match self.logged_in() {
                Ok(me) => self.handle_send(id, &me, &topic, &ex, raw_ex).await,
                Err(d) => Err(d),
            },
            Request::Acl {
                topic,
                subject,
                grant,
                revoke,
            } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_acl(id, &me, &topic, subject, grant, revoke)).await,
                Err(d) => Err(d),
            },
            Request::History {
                topic,
                before,
                after,
                limit,
            } => match self.logged_in() {
                Ok(me) => {
                    Box::pin(self.handle_history(id, &me, &topic, before, after, limit)).await
                }
                Err(d) => Err(d),
            },
            Request::Delete { topic } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_delete(id, &me, &topic)).await,
                Err(d) => Err(d),
            },
            Request::Find {
                kind,
                name,
                meta,
                limit,
                cursor,
            } => match self.logged_in() {
                Ok(me) => {
                    Box::pin(self.handle_find(id, &me, kind, name, meta, limit, cursor)).await
                }
                Err(d) => Err(d),
            },
            Request::Mark { topic, id: message } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_mark(id, &me, &topic, message)).await,
                Err(d) => Err(d),
            },
            Request::Edit {
                topic,
                id: message,
                ex,
            } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_edit(id, &me, &topic, message, ex)).await,
                Err(d) => Err(d),
            },
            Request::Redact { topic, id: message } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_redact(id, &me, &topic, message)).await,
                Err(d) => Err(d),
            },
            Request::Search {
                topic,
                q,
                from,
                before,
                after,
                limit,
                cursor,
            } => match self.logged_in() {
                Ok(me) => {
                    let filters = search::Filters {
                        topic,
                        from,
                        before,
                        after,
                        limit,
                        cursor,
                    };
                    Box::pin(self.handle_search(id, &me, &q, filters)).await
                }
                Err(d) => Err(d),
            },
            Request::Presence { watch } => match self.logged_in() {
                Ok(me) => Box::pin(self.handle_presence(id, &me, watch)).await,
                Err(d) => Err(d),
            },
        };
        match result {
            Ok(outcome) => outcome,
            Err(d) => self.reply(d.into_packet(id)),
        }
    }

    /// Handles a line that was over the limit and discarded.
    pub async fn handle_too_long(&mut self) -> Outcome {
        let limit = self.ctx.max_line_bytes;
        let message = format!("line longer than {limit} bytes; discarded");
        self.handle_refused(ErrorCode::PacketTooLarge, message)
            .await
    }

    /// Handles input that is not a packet (an over-long line, a WebSocket
    /// binary message): one error reply, in request order.
    pub async fn handle_refused(&mut self, code: ErrorCode, message: String) -> Outcome {
        if let Outcome::Close(r) = self.drain().await {
            return Outcome::Close(r);
        }
        self.fail(None, code, message)
    }

    fn logged_in(&self) -> Result<std::sync::Arc<LoggedIn>, Denied> {
        self.account
            .clone()
            .ok_or_else(|| Denied::new(ErrorCode::AuthRequired, "log in first (op \"auth\")"))
    }

    /// Replies with an error; counts protocol errors and closes after too many.
    fn fail(&mut self, id: Option<&str>, code: ErrorCode, message: String) -> Outcome {
        if let Outcome::Close(r) = self.reply(reply::error(id, code, message)) {
            return Outcome::Close(r);
        }
        if !code.is_protocol_error() {
            self.errors_in_row = 0;
            return Outcome::Continue;
        }
        self.errors_in_row += 1;
        if self.errors_in_row >= self.ctx.max_protocol_errors {
            let max = self.ctx.max_protocol_errors;
            let _ = self.reply(reply::bye(
                ErrorCode::PacketTooManyErrors,
                format!("{max} protocol errors in a row; closing"),
            ));
            return Outcome::Close(CloseReason::TooManyErrors);
        }
        Outcome::Continue
    }

    /// Queues one packet for the client, after the burst's relays and acks
    /// (replies keep request order); a full queue ends the session.
    fn reply(&mut self, packet: Packet) -> Outcome {
        self.ctx.metrics.reply(&packet);
        self.reply_line(packet.to_line())
    }

    /// [`Session::reply`] for a packet already encoded.
    fn reply_line(&mut self, line: Bytes) -> Outcome {
        self.push_now(line)
    }

    /// Queues one encoded packet on the connection now, after the burst's
    /// acks (which answer earlier requests).
    fn push_now(&mut self, line: Bytes) -> Outcome {
        if let Outcome::Close(r) = self.flush_burst() {
            return Outcome::Close(r);
        }
        match self.out.push_bytes(line, false) {
            Ok(()) => Outcome::Continue,
            Err(_) => Outcome::Close(CloseReason::SendqExceeded),
        }
    }

    /// Queues a packet carrying a secret (isolated from gzip's window).
    fn reply_secret(&mut self, packet: Packet) -> Outcome {
        if let Outcome::Close(r) = self.flush_burst() {
            return Outcome::Close(r);
        }
        match self.out.push_secret(&packet) {
            Ok(()) => Outcome::Continue,
            Err(_) => Outcome::Close(CloseReason::SendqExceeded),
        }
    }

    /// `auth/throttled`, with how long to wait.
    fn throttled(&self, wait: std::time::Duration) -> Denied {
        let ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX).max(1);
        Denied::new(
            ErrorCode::AuthThrottled,
            format!("too many failed logins; retry in {ms} ms"),
        )
        .with_retry(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_written_as_serde_writes_it() {
        for name in ["dan", "d\"an\\\u{e9}\u{1}", "\u{540d}\u{524d}"] {
            let me = LoggedIn::new(Uuid::nil(), name.to_owned());
            assert_eq!(me.name_json, serde_json::to_string(name).unwrap());
        }
    }
}
