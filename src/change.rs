//! Changes of state as data. Every mutation the daemon makes (locally now,
//! replicated from peers later) is a [`Change`]: a kind for humans and logs,
//! and a list of last-writer-wins register writes. The store's one `apply`
//! path folds writes into state, so applying the same events in any order
//! yields the same state.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use uuid::Uuid;

/// The thing a register belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entity {
    /// An account, by id.
    Account(Uuid),
    /// A topic, by id.
    Topic(Uuid),
    /// The server itself (its ACL, its metadata).
    Server,
}

impl Entity {
    /// The key stored in the register table: `account:<uuid>`, `server`.
    pub fn key(self) -> String {
        match self {
            Entity::Account(id) => format!("account:{id}"),
            Entity::Topic(id) => format!("topic:{id}"),
            Entity::Server => "server".to_owned(),
        }
    }
}

/// Register fields of accounts, topics and the server.
pub mod field {
    /// The account's name (display case kept; unique case-insensitively).
    pub const NAME: &str = "name";
    /// argon2id PHC string. Redacted from every event when the account is
    /// deleted, with the `key:` fields (see `store::redact`).
    pub const PASSWORD: &str = "password";
    /// The password hashed again at the configured argon2 cost, bound to
    /// the `password` it replaces: `{"of": <SHA-256 of that PHC string,
    /// hex>, "phc": <new PHC string>}`. Used only while `password` still
    /// holds that string, so it never beats a change of the password (on
    /// this node or another). A secret, redacted like `password`.
    pub const REHASHED: &str = "rehashed";
    /// `true` when an admin disabled the account.
    pub const DISABLED: &str = "disabled";
    /// `true` once the account (or topic) is deleted; an account's name
    /// stays reserved.
    pub const DELETED: &str = "deleted";
    /// Prefix of ACL entries: `acl:<subject>:<flag>`, `true` while granted.
    pub const ACL_PREFIX: &str = "acl:";
    /// Prefix of topic memberships: `member:<account uuid>`, `true` while a member.
    pub const MEMBER_PREFIX: &str = "member:";
    /// Prefix of the account's own metadata keys (`meta:fullname`).
    pub const META_PREFIX: &str = "meta:";
    /// A topic's message format (metadata): `binary` ones are never
    /// inspected or indexed for search.
    pub const META_FORMAT: &str = "meta:format";
    /// Prefix of the account's Ed25519 public keys (`key:<base64>`), each
    /// its own register, `true` while present.
    pub const KEY_PREFIX: &str = "key:";
    /// Prefix of the account's read markers: `read:<topic uuid>`, the last
    /// message read there (`{"id", "ts"}`), one register per topic.
    pub const READ_PREFIX: &str = "read:";
}

/// One last-writer-wins register write. `value` null clears the register.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Write {
    /// Entity key (`account:<uuid>`).
    #[serde(rename = "e")]
    pub entity: String,
    /// Field name.
    #[serde(rename = "f")]
    pub field: String,
    /// New value.
    #[serde(rename = "v")]
    pub value: Value,
}

/// A change of state: what happened, as register writes, or an immutable
/// message kept in a topic's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// What kind of change (`account.create`, `message`), for logs and audits.
    pub kind: String,
    /// The register writes, applied together.
    #[serde(default)]
    pub writes: Vec<Write>,
    /// A message for a topic's history (kind `message`); never a register.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

/// A message as history keeps it: ids inside, names resolved when read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// The topic.
    pub topic: Uuid,
    /// The server-assigned packet id it was relayed with.
    pub id: String,
    /// Unix ms it was relayed at: for a kept message, the millisecond of
    /// its event's clock (filled in when read).
    pub ts: i64,
    /// The sending account.
    pub sender: Uuid,
    /// `ex` as relayed: the JSON text, not a map, so that numbers come
    /// back from history exactly as they were sent.
    pub ex: ExJson,
}

/// A message's `ex` as JSON text, kept as the server checked it. A map of
/// `Value`s would round an integer beyond 64 bits, or a long decimal, to
/// the nearest `f64`; the text keeps every digit. Stored inline in the
/// event body, so the log's JSON shape is the same as a map's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExJson(Box<RawValue>);

impl ExJson {
    /// JSON text already checked to be an object (by the packet decoders);
    /// checked again here only as JSON, which an object always is.
    pub fn from_text(text: String) -> Result<Self, serde_json::Error> {
        RawValue::from_string(text).map(ExJson)
    }

    /// An `ex` built as a map.
    pub fn from_map(map: &serde_json::Map<String, Value>) -> Result<Self, serde_json::Error> {
        serde_json::value::to_raw_value(map).map(ExJson)
    }

    /// `{}`.
    pub fn empty() -> Self {
        // Invariant: two bytes of valid JSON, not input.
        Self::from_text("{}".to_owned()).expect("`{}` is JSON")
    }

    /// The JSON text, to be written as it is.
    pub fn raw(&self) -> &RawValue {
        &self.0
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// Whether it is the empty object (left out of an envelope, like an
    /// empty map).
    pub fn is_empty(&self) -> bool {
        crate::proto::packet::is_empty_ex(self.0.get().as_bytes())
    }
}

impl PartialEq for ExJson {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

impl Change {
    /// A change of `kind` with no writes yet.
    pub fn new(kind: &str) -> Self {
        Self {
            kind: kind.to_owned(),
            writes: Vec::new(),
            message: None,
        }
    }

    /// The kind of a kept message's change.
    pub const MESSAGE: &'static str = "message";

    /// A history message.
    pub fn message(message: Message) -> Self {
        Self {
            kind: Self::MESSAGE.to_owned(),
            writes: Vec::new(),
            message: Some(message),
        }
    }

    /// Adds one write per metadata key (`meta:<key>`), builder style.
    pub fn set_meta(mut self, entity: Entity, values: &serde_json::Map<String, Value>) -> Self {
        for (key, value) in values {
            self = self.set(
                entity,
                &format!("{}{key}", field::META_PREFIX),
                value.clone(),
            );
        }
        self
    }

    /// Adds a write, builder style.
    pub fn set(mut self, entity: Entity, field: &str, value: impl Into<Value>) -> Self {
        self.writes.push(Write {
            entity: entity.key(),
            field: field.to_owned(),
            value: value.into(),
        });
        self
    }
}
