//! Typed client requests, parsed from a decoded packet.

use std::fmt;

use super::code::ErrorCode;
use super::packet::Packet;

/// A secret string (password, ticket, signature): never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: String) -> Self {
        Self(s)
    }
    /// The secret itself, for checking it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// How a client logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthRequest {
    /// `{"method":"password","username":…,"password":…}`
    Password {
        /// Account name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// `{"method":"ticket","ticket":…,"server":…}`
    Ticket {
        /// The one-shot ticket.
        ticket: Secret,
        /// The ticket's home server.
        server: String,
    },
    /// `{"method":"pubkey","username":…}` (challenge request) or with
    /// `"signature"` (answer).
    Pubkey {
        /// Account name.
        username: String,
        /// Base64 signature over the challenge, on the second step.
        signature: Option<Secret>,
    },
}

impl AuthRequest {
    /// The method name, as in `welcome`.
    pub fn method(&self) -> &'static str {
        match self {
            AuthRequest::Password { .. } => "password",
            AuthRequest::Ticket { .. } => "ticket",
            AuthRequest::Pubkey { .. } => "pubkey",
        }
    }
}

/// A client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Log in.
    Auth(AuthRequest),
    /// Which account is this session logged in as?
    Whoami,
    /// Keepalive; answered with `pong`.
    Ping,
    /// The answer to the server's `ping`; gets no reply (it is one).
    Pong,
    /// End the session cleanly; answered with `ack`, then the server closes.
    Quit,
    /// Create an account.
    Register {
        /// The new account's name.
        username: String,
        /// Its password.
        password: Secret,
    },
    /// Read (empty `ex`) or set (keys in `ex`, `null` removes) metadata:
    /// one's own without `topic`.
    Meta {
        /// The topic, when it is a topic's metadata.
        topic: Option<String>,
        /// Keys to set; empty to read.
        values: serde_json::Map<String, serde_json::Value>,
    },
    /// Ask for a one-shot login ticket, optionally bound to the server
    /// that will redeem it.
    Ticket {
        /// Name of the redeeming server.
        server: Option<String>,
    },
    /// Add an Ed25519 public key (base64) to one's account.
    KeyAdd {
        /// The key.
        key: String,
    },
    /// Remove a public key from one's account.
    KeyRemove {
        /// The key.
        key: String,
    },
    /// List one's public keys.
    KeyList,
    /// Delete one's account after re-entering the password; the answer
    /// carries the account's data.
    DeleteAccount {
        /// The account's password.
        password: Secret,
    },
    /// Create a topic named `name`; the other `ex` keys are its metadata.
    Create {
        /// The topic's name.
        name: String,
        /// Initial metadata.
        meta: serde_json::Map<String, serde_json::Value>,
    },
    /// Enter a topic (by `topic` UUID, or `ex.name`), or ask to, where
    /// its members admit newcomers.
    Join {
        /// UUID or name.
        topic: String,
        /// For the admitters, where the join becomes a request.
        note: Option<String>,
        /// Opaque key material for the admitters (end-to-end encryption).
        key: Option<String>,
    },
    /// Admit or decline a pending join request.
    Admit {
        /// UUID or name.
        topic: String,
        /// The requesting account's name.
        user: String,
        /// Admit (`true`) or decline.
        accept: bool,
        /// For the requester.
        note: Option<String>,
        /// Opaque key material for the requester (end-to-end encryption).
        key: Option<String>,
    },
    /// Leave a topic.
    Leave {
        /// UUID or name.
        topic: String,
    },
    /// Relay a message to a topic's members; `ex` travels as sent.
    Send {
        /// UUID or name.
        topic: String,
        /// The message.
        ex: serde_json::Map<String, serde_json::Value>,
    },
    /// Read a topic's ACL, or change one subject's flags.
    Acl {
        /// UUID or name.
        topic: String,
        /// The subject to change (`name`, `name@server`, `@server`, `*`).
        subject: Option<String>,
        /// Flags to grant.
        grant: Vec<String>,
        /// Flags to revoke.
        revoke: Vec<String>,
    },
    /// Page through a topic's history.
    History {
        /// UUID or name.
        topic: String,
        /// Newest messages before this id (string) or time (integer, ms).
        before: Option<Bound>,
        /// Oldest messages after this id or time.
        after: Option<Bound>,
        /// Most messages wanted.
        limit: Option<usize>,
    },
    /// Delete a topic (owner).
    Delete {
        /// UUID or name.
        topic: String,
    },
    /// Search topics (those the asker may read) or users by name.
    Find {
        /// What to search.
        kind: FindKind,
        /// Case-insensitive substring of the name.
        name: Option<String>,
        /// Topic metadata that must match exactly.
        meta: serde_json::Map<String, serde_json::Value>,
        /// Most results.
        limit: Option<usize>,
        /// Continue after this name (the previous page's `cursor`).
        cursor: Option<String>,
    },
    /// Read (no `id`) or move one's read marker in a topic.
    Mark {
        /// UUID or name.
        topic: String,
        /// The id of the last message read.
        id: Option<String>,
    },
    /// Replace the text of one's own kept message.
    Edit {
        /// UUID or name.
        topic: String,
        /// The message's id.
        id: String,
        /// The new `ex` (the request's, without `id`).
        ex: serde_json::Map<String, serde_json::Value>,
    },
    /// Redact a kept message: one's own, or any as the topic's op or owner.
    Redact {
        /// UUID or name.
        topic: String,
        /// The message's id.
        id: String,
    },
    /// Search the kept messages of the topics one may read.
    Search {
        /// Only this topic (UUID or name).
        topic: Option<String>,
        /// Words and "quoted phrases", all of which must occur.
        q: String,
        /// Only messages from this account (name).
        from: Option<String>,
        /// Only messages sent before this Unix ms.
        before: Option<i64>,
        /// Only messages sent at or after this Unix ms.
        after: Option<i64>,
        /// Most results.
        limit: Option<usize>,
        /// Continue from a previous page's `cursor`.
        cursor: Option<String>,
    },
    /// Who of the accounts one shares a topic with is online; `watch`
    /// starts (or stops) `presence` events on this connection.
    Presence {
        /// Events from now on (`true`, the default) or no more.
        watch: bool,
    },
}

/// What `find` searches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FindKind {
    /// Topics.
    Topics,
    /// Accounts.
    Users,
}

/// A history page bound: a message id or a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bound {
    /// A message id.
    Id(String),
    /// Unix ms.
    Time(i64),
}

/// Why a packet is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestError {
    /// The stable code.
    pub code: ErrorCode,
    /// What is wrong.
    pub message: String,
}

fn invalid(message: impl Into<String>) -> RequestError {
    RequestError {
        code: ErrorCode::RequestInvalid,
        message: message.into(),
    }
}

/// Every op a client may send, as `protocol.md` documents them.
pub const CLIENT_OPS: [&str; 26] = [
    "auth",
    "register",
    "ping",
    "pong",
    "quit",
    "ticket",
    "key-add",
    "key-remove",
    "key-list",
    "delete-account",
    "create",
    "join",
    "leave",
    "send",
    "meta",
    "acl",
    "delete",
    "history",
    "find",
    "whoami",
    "mark",
    "edit",
    "redact",
    "search",
    "admit",
    "presence",
];

/// Ops a session may send before logging in.
pub const BEFORE_LOGIN_OPS: [&str; 6] = ["auth", "register", "ping", "pong", "quit", "whoami"];

/// Whether `op` is a known op that needs a logged-in session.
pub fn needs_login(op: &str) -> bool {
    CLIENT_OPS.contains(&op) && !BEFORE_LOGIN_OPS.contains(&op)
}

/// Longest username accepted in a login request.
const MAX_USERNAME_CHARS: usize = 64;
/// Longest `note` of a join request or an admission, in bytes.
pub const MAX_NOTE_BYTES: usize = 1024;
/// Longest `key` (end-to-end key material) of a join request or an
/// admission, in bytes.
pub const MAX_KEY_BYTES: usize = 8192;
/// Longest secret accepted in a login request.
const MAX_SECRET_BYTES: usize = 1024;

impl Request {
    /// Parses the op and its `ex`.
    /// Parses the op and its `ex`; `ex` is moved out of the packet where the
    /// request carries it on (no copy on the message path).
    pub fn parse(p: &mut Packet) -> Result<Request, RequestError> {
        Ok(match p.op.as_str() {
            "auth" => Request::Auth(parse_auth(p)?),
            "ping" => Request::Ping,
            "pong" => Request::Pong,
            "quit" => Request::Quit,
            "create" => {
                let name = field(p, "name", 256)?.to_owned();
                let mut meta = std::mem::take(&mut p.ex);
                meta.remove("name");
                Request::Create { name, meta }
            }
            "join" => Request::Join {
                topic: match &p.topic {
                    Some(t) => t.clone(),
                    None => field(p, "name", 256)
                        .map_err(|_| invalid("`topic` (a topic's UUID) or ex.name is required"))?
                        .to_owned(),
                },
                note: optional(p, "note", MAX_NOTE_BYTES)?,
                key: optional(p, "key", MAX_KEY_BYTES)?,
            },
            "admit" => Request::Admit {
                topic: topic(p)?,
                user: field(p, "user", 320)?.to_owned(),
                accept: match p.ex.get("accept") {
                    Some(serde_json::Value::Bool(b)) => *b,
                    None => return Err(invalid("ex.accept is required")),
                    Some(_) => return Err(invalid("ex.accept must be true or false")),
                },
                note: optional(p, "note", MAX_NOTE_BYTES)?,
                key: optional(p, "key", MAX_KEY_BYTES)?,
            },
            "leave" => Request::Leave { topic: topic(p)? },
            "send" => Request::Send {
                topic: topic(p)?,
                ex: std::mem::take(&mut p.ex),
            },
            "acl" => Request::Acl {
                topic: topic(p)?,
                subject: match p.ex.get("subject") {
                    None => None,
                    Some(_) => Some(field(p, "subject", 320)?.to_owned()),
                },
                grant: flags(p, "grant")?,
                revoke: flags(p, "revoke")?,
            },
            "delete" => Request::Delete { topic: topic(p)? },
            "history" => Request::History {
                topic: topic(p)?,
                before: bound(p, "before")?,
                after: bound(p, "after")?,
                limit: limit(p)?,
            },
            "meta" => Request::Meta {
                topic: p.topic.clone(),
                values: std::mem::take(&mut p.ex),
            },
            "ticket" => Request::Ticket {
                server: match p.ex.get("server") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(_) => Some(field(p, "server", 253)?.to_owned()),
                },
            },
            "key-add" => Request::KeyAdd {
                key: field(p, "key", 128)?.to_owned(),
            },
            "key-remove" => Request::KeyRemove {
                key: field(p, "key", 128)?.to_owned(),
            },
            "key-list" => Request::KeyList,
            "delete-account" => Request::DeleteAccount {
                password: Secret::new(field(p, "password", MAX_SECRET_BYTES)?.to_owned()),
            },
            "whoami" => Request::Whoami,
            "register" => Request::Register {
                username: field(p, "username", MAX_USERNAME_CHARS * 4)?.to_owned(),
                password: Secret::new(field(p, "password", MAX_SECRET_BYTES)?.to_owned()),
            },
            "find" => Request::Find {
                kind: match p.ex.get("kind") {
                    None => FindKind::Topics,
                    Some(v) => match v.as_str() {
                        Some("topics") => FindKind::Topics,
                        Some("users") => FindKind::Users,
                        _ => return Err(invalid("ex.kind is \"topics\" or \"users\"")),
                    },
                },
                name: match p.ex.get("name") {
                    None => None,
                    Some(_) => Some(field(p, "name", 256)?.to_owned()),
                },
                meta: match p.ex.get("meta") {
                    None => serde_json::Map::new(),
                    Some(serde_json::Value::Object(m)) => m.clone(),
                    Some(_) => return Err(invalid("ex.meta is an object of metadata to match")),
                },
                limit: limit(p)?,
                cursor: match p.ex.get("cursor") {
                    None => None,
                    Some(_) => Some(field(p, "cursor", 256)?.to_owned()),
                },
            },
            "mark" => Request::Mark {
                topic: topic(p)?,
                id: match p.ex.get("id") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(_) => Some(field(p, "id", 128)?.to_owned()),
                },
            },
            "edit" => {
                let (topic, id) = (topic(p)?, field(p, "id", 128)?.to_owned());
                let mut ex = std::mem::take(&mut p.ex);
                ex.remove("id");
                Request::Edit { topic, id, ex }
            }
            "redact" => Request::Redact {
                topic: topic(p)?,
                id: field(p, "id", 128)?.to_owned(),
            },
            "search" => Request::Search {
                topic: p.topic.clone(),
                q: field(p, "q", 256)?.to_owned(),
                from: match p.ex.get("from") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(_) => Some(field(p, "from", 320)?.to_owned()),
                },
                before: time(p, "before")?,
                after: time(p, "after")?,
                limit: limit(p)?,
                cursor: match p.ex.get("cursor") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(_) => Some(field(p, "cursor", 64)?.to_owned()),
                },
            },
            "presence" => Request::Presence {
                watch: match p.ex.get("watch") {
                    None => true,
                    Some(serde_json::Value::Bool(b)) => *b,
                    Some(_) => return Err(invalid("ex.watch must be true or false")),
                },
            },
            _ => {
                return Err(RequestError {
                    code: ErrorCode::OpUnknown,
                    message: "unknown op".into(),
                });
            }
        })
    }
}

fn field<'a>(p: &'a Packet, key: &str, max: usize) -> Result<&'a str, RequestError> {
    match p.ex.get(key) {
        None => Err(invalid(format!("ex.{key} is required"))),
        Some(v) => match v.as_str() {
            Some(s) if !s.is_empty() && s.len() <= max => Ok(s),
            Some(_) => Err(invalid(format!("ex.{key} must be 1 to {max} bytes"))),
            None => Err(invalid(format!("ex.{key} must be a string"))),
        },
    }
}

/// An optional string field: absent or `null` is `None`, else as [`field`].
fn optional(p: &Packet, key: &str, max: usize) -> Result<Option<String>, RequestError> {
    match p.ex.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(_) => Ok(Some(field(p, key, max)?.to_owned())),
    }
}

fn topic(p: &Packet) -> Result<String, RequestError> {
    p.topic
        .clone()
        .ok_or_else(|| invalid("`topic` (a topic's UUID) is required"))
}

fn limit(p: &Packet) -> Result<Option<usize>, RequestError> {
    match p.ex.get("limit") {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .filter(|n| *n > 0)
            .map(Some)
            .ok_or_else(|| invalid("ex.limit is a positive integer")),
    }
}

fn bound(p: &Packet, key: &str) -> Result<Option<Bound>, RequestError> {
    match p.ex.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if !s.is_empty() && s.len() <= 128 => {
            Ok(Some(Bound::Id(s.clone())))
        }
        Some(v) => v
            .as_i64()
            .map(|t| Some(Bound::Time(t)))
            .ok_or_else(|| invalid(format!("ex.{key} is a message id or a time in Unix ms"))),
    }
}

fn time(p: &Packet, key: &str) -> Result<Option<i64>, RequestError> {
    match p.ex.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => v
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid(format!("ex.{key} is a time in Unix ms"))),
    }
}

fn flags(p: &Packet, key: &str) -> Result<Vec<String>, RequestError> {
    match p.ex.get(key) {
        None => Ok(Vec::new()),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid(format!("ex.{key} is a list of flag names")))
            })
            .collect(),
        Some(_) => Err(invalid(format!("ex.{key} is a list of flag names"))),
    }
}

fn parse_auth(p: &Packet) -> Result<AuthRequest, RequestError> {
    let method = field(p, "method", 32)?;
    Ok(match method {
        "password" => AuthRequest::Password {
            username: field(p, "username", MAX_USERNAME_CHARS * 4)?.to_owned(),
            password: Secret::new(field(p, "password", MAX_SECRET_BYTES)?.to_owned()),
        },
        "ticket" => AuthRequest::Ticket {
            ticket: Secret::new(field(p, "ticket", MAX_SECRET_BYTES)?.to_owned()),
            server: field(p, "server", 253)?.to_owned(),
        },
        "pubkey" => AuthRequest::Pubkey {
            username: field(p, "username", MAX_USERNAME_CHARS * 4)?.to_owned(),
            signature: match p.ex.get("signature") {
                None => None,
                Some(_) => Some(Secret::new(
                    field(p, "signature", MAX_SECRET_BYTES)?.to_owned(),
                )),
            },
        },
        _ => {
            return Err(RequestError {
                code: ErrorCode::AuthUnsupportedMethod,
                message: "unknown login method; see welcome's ex.auth.methods".into(),
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_in_debug() {
        let p = Packet::request("auth")
            .with("method", "password")
            .with("username", "dan")
            .with("password", "hellosecret");
        let r = Request::parse(&mut p.clone()).unwrap();
        assert!(!format!("{r:?}").contains("hellosecret"));
    }

    #[test]
    fn auth_fields_are_checked() {
        let p = Packet::request("auth")
            .with("method", "password")
            .with("username", "dan");
        assert_eq!(
            Request::parse(&mut p.clone()).unwrap_err().code,
            ErrorCode::RequestInvalid
        );
        let p = Packet::request("auth").with("method", "magic");
        assert_eq!(
            Request::parse(&mut p.clone()).unwrap_err().code,
            ErrorCode::AuthUnsupportedMethod
        );
        let p = Packet::request("auth");
        assert_eq!(
            Request::parse(&mut p.clone()).unwrap_err().code,
            ErrorCode::RequestInvalid
        );
    }
}
