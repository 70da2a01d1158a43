//! ACL evaluation, pure: who may do what in a topic (or on the server).
//!
//! An ACL is a set of `(subject, flag)` grants. Subjects: a local account
//! (by id), `user@server`, `@server`, and `*` (every logged-in user). A ban
//! beats every grant; `owner` implies every other flag; `op` implies `read`,
//! `write` and `admit`.

use std::collections::BTreeSet;
use std::fmt;

use uuid::Uuid;

/// Who an ACL entry is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A local account, by id (survives renames).
    Account(Uuid),
    /// An account of another server: `user@server`.
    Remote(String),
    /// Every account of a server: `@server`.
    Server(String),
    /// Every logged-in user.
    Everyone,
}

impl Subject {
    /// The form stored in register fields: `account:<uuid>`, `user@server`,
    /// `@server`, `*`.
    pub fn key(&self) -> String {
        match self {
            Subject::Account(id) => format!("account:{id}"),
            Subject::Remote(s) | Subject::Server(s) => s.clone(),
            Subject::Everyone => "*".to_owned(),
        }
    }

    /// Parses the stored form.
    pub fn from_key(key: &str) -> Option<Subject> {
        if key == "*" {
            return Some(Subject::Everyone);
        }
        if let Some(id) = key.strip_prefix("account:") {
            return Uuid::parse_str(id).ok().map(Subject::Account);
        }
        if key.starts_with('@') && key.len() > 1 {
            return Some(Subject::Server(key.to_lowercase()));
        }
        match key.split_once('@') {
            Some((user, server)) if !user.is_empty() && !server.is_empty() => {
                Some(Subject::Remote(key.to_lowercase()))
            }
            _ => None,
        }
    }
}

/// A permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Flag {
    /// Everything, including the ACL and deletion.
    Owner,
    /// Metadata, kicks, and bans of non-ops.
    Op,
    /// Join and receive.
    Read,
    /// Send.
    Write,
    /// Nothing at all; beats every grant.
    Ban,
    /// Server ACL: administer the server.
    Admin,
    /// Server ACL: create topics.
    Create,
    /// Admit or decline join requests in a topic whose `admission` is
    /// `members` (owners and ops hold it too).
    Admit,
}

impl Flag {
    /// Every flag, in wire order.
    pub const ALL: [Flag; 8] = [
        Flag::Owner,
        Flag::Op,
        Flag::Read,
        Flag::Write,
        Flag::Ban,
        Flag::Admin,
        Flag::Create,
        Flag::Admit,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Flag::Owner => "owner",
            Flag::Op => "op",
            Flag::Read => "read",
            Flag::Write => "write",
            Flag::Ban => "ban",
            Flag::Admin => "admin",
            Flag::Create => "create",
            Flag::Admit => "admit",
        }
    }

    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Flag> {
        Flag::ALL.into_iter().find(|f| f.as_str() == s)
    }
}

impl fmt::Display for Flag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of flags, one bit each.
#[derive(Debug, Clone, Copy, Default)]
struct FlagSet(u8);

impl FlagSet {
    fn insert(&mut self, flag: Flag) {
        self.0 |= 1 << flag as u8;
    }

    fn contains(self, flag: Flag) -> bool {
        self.0 & (1 << flag as u8) != 0
    }
}

/// An ACL: the grants in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    grants: BTreeSet<(Subject, Flag)>,
}

/// The actor an ACL is evaluated for.
#[derive(Debug, Clone, Copy)]
pub struct Actor<'a> {
    /// The account (for a user of another server, the account standing
    /// for it here).
    pub account: Uuid,
    /// Its server's name (lowercase), for `@server` entries: this server's,
    /// or a federated user's home server's.
    pub server: &'a str,
    /// A federated user's `user@home` (lowercase), for `user@server`
    /// entries; `None` for a local account.
    pub remote: Option<&'a str>,
    /// Whether `*` entries apply (false only for a federated user when the
    /// operator keeps `*` to local accounts).
    pub everyone: bool,
}

impl<'a> Actor<'a> {
    /// A local account of the server named `server` (lowercase).
    pub fn local(account: Uuid, server: &'a str) -> Self {
        Self {
            account,
            server,
            remote: None,
            everyone: true,
        }
    }

    /// The account named `name_lower` (lowercase): a user of another
    /// server when the name is `user@home` (local names never hold `@`),
    /// else an account of `local_server`. `star_includes_foreign` is the
    /// operator's `federation.star_includes_foreign`.
    pub fn named(
        account: Uuid,
        name_lower: &'a str,
        local_server: &'a str,
        star_includes_foreign: bool,
    ) -> Self {
        match name_lower.split_once('@') {
            Some((_, home)) if !home.is_empty() => Self {
                account,
                server: home,
                remote: Some(name_lower),
                everyone: star_includes_foreign,
            },
            _ => Self::local(account, local_server),
        }
    }
}

/// An [`Actor`] that owns its names: for a check made later, in a store
/// job that runs after the request's own checks.
#[derive(Debug, Clone)]
pub struct OwnedActor {
    account: Uuid,
    server: String,
    remote: Option<String>,
    everyone: bool,
}

impl OwnedActor {
    /// The actor to evaluate.
    pub fn actor(&self) -> Actor<'_> {
        Actor {
            account: self.account,
            server: &self.server,
            remote: self.remote.as_deref(),
            everyone: self.everyone,
        }
    }
}

impl From<Actor<'_>> for OwnedActor {
    fn from(a: Actor<'_>) -> Self {
        Self {
            account: a.account,
            server: a.server.to_owned(),
            remote: a.remote.map(str::to_owned),
            everyone: a.everyone,
        }
    }
}

impl Acl {
    /// Records a grant or its removal.
    pub fn set(&mut self, subject: Subject, flag: Flag, granted: bool) {
        if granted {
            self.grants.insert((subject, flag));
        } else {
            self.grants.remove(&(subject, flag));
        }
    }

    /// Whether `subject` holds `flag` directly (no implication, no `*`).
    pub fn has_entry(&self, subject: &Subject, flag: Flag) -> bool {
        self.grants.contains(&(subject.clone(), flag))
    }

    /// The flags that apply to `actor`, through its own entries, its
    /// server's and `*`'s, before implications.
    /// Checked on every `send`, so it allocates nothing.
    fn raw(&self, actor: Actor<'_>) -> FlagSet {
        let mut flags = FlagSet::default();
        for (subject, flag) in &self.grants {
            let applies = match subject {
                Subject::Account(id) => *id == actor.account,
                Subject::Server(at) => at.strip_prefix('@') == Some(actor.server),
                Subject::Everyone => actor.everyone,
                Subject::Remote(name) => actor.remote == Some(name.as_str()),
            };
            if applies {
                flags.insert(*flag);
            }
        }
        flags
    }

    /// Whether `actor` is banned. Only a ban on the actor itself or its
    /// server counts; `*` banned would ban everyone and is refused when set.
    pub fn banned(&self, actor: Actor<'_>) -> bool {
        self.raw(actor).contains(Flag::Ban) && !self.is_owner(actor)
    }

    /// Whether `actor` holds `owner`, through any entry that applies to it
    /// (owners cannot be banned).
    pub fn is_owner(&self, actor: Actor<'_>) -> bool {
        self.raw(actor).contains(Flag::Owner)
    }

    /// Whether `actor` holds `owner` or `op` through any entry that applies
    /// to it, bans aside: whom an op may neither ban nor unban.
    pub fn is_privileged(&self, actor: Actor<'_>) -> bool {
        let raw = self.raw(actor);
        raw.contains(Flag::Owner) || raw.contains(Flag::Op)
    }

    /// Whether `actor` may do what `flag` allows, with implications and
    /// bans applied.
    pub fn allows(&self, actor: Actor<'_>, flag: Flag) -> bool {
        if self.banned(actor) {
            return false;
        }
        let raw = self.raw(actor);
        raw.contains(Flag::Owner)
            || raw.contains(flag)
            || (raw.contains(Flag::Op) && matches!(flag, Flag::Read | Flag::Write | Flag::Admit))
    }

    /// The ACL in the wire shape `[[subject, [flags…]], …]`, subjects
    /// rendered by `name` (accounts by name).
    pub fn to_wire(&self, name: impl Fn(&Subject) -> String) -> serde_json::Value {
        let mut out: Vec<(String, Vec<&'static str>)> = Vec::new();
        for (subject, flag) in &self.grants {
            let rendered = name(subject);
            match out.last_mut() {
                Some((s, flags)) if *s == rendered => flags.push(flag.as_str()),
                _ => out.push((rendered, vec![flag.as_str()])),
            }
        }
        serde_json::Value::Array(
            out.into_iter()
                .map(|(s, f)| serde_json::json!([s, f]))
                .collect(),
        )
    }

    /// Every grant.
    pub fn grants(&self) -> impl Iterator<Item = &(Subject, Flag)> {
        self.grants.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn actor(id: Uuid) -> Actor<'static> {
        Actor::local(id, "10b.it")
    }

    #[test]
    fn federated_users_match_their_own_entries() {
        let (owner, dan) = (Uuid::now_v7(), Uuid::now_v7());
        let fed = |everyone| Actor {
            account: dan,
            server: "first.example",
            remote: Some("dan@first.example"),
            everyone,
        };
        let mut acl = Acl::default();
        acl.set(Subject::Account(owner), Flag::Owner, true);
        acl.set(Subject::Everyone, Flag::Read, true);
        assert!(acl.allows(fed(true), Flag::Read));
        assert!(!acl.allows(fed(false), Flag::Read));
        // By name, by home server, and a ban of either.
        acl.set(
            Subject::Remote("dan@first.example".into()),
            Flag::Write,
            true,
        );
        assert!(acl.allows(fed(false), Flag::Write));
        assert!(!acl.allows(actor(dan), Flag::Write));
        acl.set(Subject::Server("@first.example".into()), Flag::Op, true);
        assert!(acl.allows(fed(false), Flag::Op));
        acl.set(Subject::Server("@first.example".into()), Flag::Ban, true);
        assert!(!acl.allows(fed(true), Flag::Read));
        acl.set(Subject::Server("@first.example".into()), Flag::Ban, false);
        // The same actor, made from the name alone.
        let named = Actor::named(dan, "dan@first.example", "10b.it", false);
        assert_eq!(
            (named.server, named.remote, named.everyone),
            ("first.example", Some("dan@first.example"), false)
        );
        assert!(acl.allows(named, Flag::Op));
        assert_eq!(Actor::named(dan, "dan", "10b.it", false).server, "10b.it");
        acl.set(Subject::Remote("dan@first.example".into()), Flag::Ban, true);
        assert!(!acl.allows(fed(true), Flag::Read));
        // A local account is not `@first.example`.
        assert!(acl.allows(actor(owner), Flag::Read));
    }

    #[test]
    fn open_topic_and_bans() {
        let (dan, bob) = (Uuid::now_v7(), Uuid::now_v7());
        let mut acl = Acl::default();
        acl.set(Subject::Account(dan), Flag::Owner, true);
        acl.set(Subject::Everyone, Flag::Read, true);
        acl.set(Subject::Everyone, Flag::Write, true);
        assert!(acl.allows(actor(bob), Flag::Write));
        assert!(!acl.allows(actor(bob), Flag::Op));
        assert!(acl.allows(actor(dan), Flag::Op));
        acl.set(Subject::Account(bob), Flag::Ban, true);
        assert!(!acl.allows(actor(bob), Flag::Read));
        // An owner cannot be banned.
        acl.set(Subject::Account(dan), Flag::Ban, true);
        assert!(acl.allows(actor(dan), Flag::Write));
        // A server-wide ban.
        let carl = Uuid::now_v7();
        acl.set(Subject::Server("@10b.it".into()), Flag::Ban, true);
        assert!(!acl.allows(actor(carl), Flag::Read));
    }

    #[test]
    fn moderated_and_invite_only() {
        let (op, user) = (Uuid::now_v7(), Uuid::now_v7());
        let mut acl = Acl::default();
        acl.set(Subject::Everyone, Flag::Read, true);
        acl.set(Subject::Account(op), Flag::Op, true);
        assert!(acl.allows(actor(user), Flag::Read));
        assert!(!acl.allows(actor(user), Flag::Write));
        assert!(acl.allows(actor(op), Flag::Write));
        acl.set(Subject::Everyone, Flag::Read, false);
        assert!(!acl.allows(actor(user), Flag::Read));
    }

    #[test]
    fn subjects_round_trip() {
        let id = Uuid::now_v7();
        for s in [
            Subject::Account(id),
            Subject::Remote("dan@10b.it".into()),
            Subject::Server("@10b.it".into()),
            Subject::Everyone,
        ] {
            assert_eq!(Subject::from_key(&s.key()), Some(s));
        }
        assert_eq!(Subject::from_key("nobody"), None);
        assert_eq!(Subject::from_key("@"), None);
    }
}
