//! Accounts: names, password hashes, flags and own metadata, each a register
//! of the entity `account:<uuid>`.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Map, Value};
use uuid::Uuid;

use super::{Db, Error, log};
use crate::change::{Change, Entity, field};
use crate::router::acl::{Acl, Flag, Subject};

/// An account as the rest of the daemon sees it.
#[derive(Clone, PartialEq)]
pub struct Account {
    /// Server-assigned, time-ordered.
    pub id: Uuid,
    /// The name it is shown and addressed by. A later claim of a name held by
    /// an earlier account (possible only across a mesh partition) is shown
    /// as `name~<6 hex of its id>`.
    pub name: String,
    /// argon2id PHC string, if a password is set.
    pub password: Option<String>,
    /// Disabled by an admin.
    pub disabled: bool,
    /// Deleted by its owner; the name stays reserved.
    pub deleted: bool,
    /// Own metadata (full name, favourites, …).
    pub meta: Map<String, Value>,
    /// Ed25519 public keys, base64.
    pub keys: Vec<String>,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("disabled", &self.disabled)
            .field("deleted", &self.deleted)
            .finish_non_exhaustive()
    }
}

/// Most account names one `find` page examines (protocol.md 11.17).
pub const FIND_SCAN: usize = 1000;

/// A page of [`Db::find_accounts`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundAccounts {
    /// The names, as shown, in order.
    pub names: Vec<String>,
    /// Where the next page starts, when there may be more.
    pub cursor: Option<String>,
    /// How many account names the page read (for tests).
    pub examined: usize,
}

/// The entity key prefix of accounts.
const PREFIX: &str = "account:";

/// A password hashed again ([`field::REHASHED`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct Rehashed {
    of: String,
    phc: String,
}

/// SHA-256 of a PHC string, hex: what a rehash is bound to.
fn phc_digest(phc: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, phc.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl Db {
    /// The account holding `name` (case-insensitive), if any.
    pub fn account_by_name(&self, name: &str) -> Result<Option<Account>, Error> {
        let holder = match name_holder(&self.conn, &name.to_lowercase())? {
            Some(id) => Some(id),
            None => super::later_claimant(&self.conn, PREFIX, name)?,
        };
        match holder {
            // A later claimant answers only to its `~` name.
            Some(id) => {
                Ok(load(&self.conn, id)?.filter(|a| a.name.to_lowercase() == name.to_lowercase()))
            }
            None => Ok(None),
        }
    }

    /// The accounts claiming `name` (case-insensitive) but its holder: the
    /// later claims, shown as `name~<hex>` (DESIGN.md §4a).
    pub fn later_claims(&self, name: &str) -> Result<Vec<Uuid>, Error> {
        let lookup = name.to_lowercase();
        let holder = name_holder(&self.conn, &lookup)?;
        let mut stmt = self.conn.prepare_cached(
            "SELECT entity FROM registers WHERE field = 'name' AND lookup = ?1 AND entity LIKE ?2",
        )?;
        let rows = stmt.query_map(rusqlite::params![lookup, format!("{PREFIX}%")], |r| {
            r.get::<_, String>(0)
        })?;
        let mut out = Vec::new();
        for entity in rows {
            if let Some(id) = super::parse_entity(PREFIX, &entity?) {
                if Some(id) != holder {
                    out.push(id);
                }
            }
        }
        Ok(out)
    }

    /// Stores `phc`, the password hashed again at another cost, for account
    /// `id`, whose password was just checked against `verified`: bound to
    /// the password register as it is ([`field::REHASHED`]), and only if
    /// the account still answers with `verified` (a change of the password
    /// committed meanwhile wins: nothing is written, `false`).
    pub fn set_rehashed(&mut self, id: Uuid, verified: &str, phc: &str) -> Result<bool, Error> {
        self.write(|tx, origin| {
            let current = load(tx, id)?;
            if !current.is_some_and(|a| !a.deleted && a.password.as_deref() == Some(verified)) {
                return Ok(false);
            }
            let key = Entity::Account(id).key();
            let Some(raw) = super::register::<String>(tx, &key, field::PASSWORD)? else {
                return Ok(false);
            };
            let value = serde_json::to_value(Rehashed {
                of: phc_digest(&raw),
                phc: phc.to_owned(),
            })
            .map_err(|e| Error::Corrupt(e.to_string()))?;
            let change =
                Change::new("account.rehash").set(Entity::Account(id), field::REHASHED, value);
            log::append(tx, origin, change)?;
            Ok(true)
        })
    }

    /// The account with `id`, if any.
    pub fn account(&self, id: Uuid) -> Result<Option<Account>, Error> {
        load(&self.conn, id)
    }

    /// Creates an account; fails with [`Error::NameTaken`] if the name is held
    /// (case-insensitively) by any account, deleted ones included.
    pub fn create_account(&mut self, name: &str, password_phc: &str) -> Result<Account, Error> {
        let id = Uuid::now_v7();
        self.write(|tx, origin| {
            if name_holder(tx, &name.to_lowercase())?.is_some() {
                return Err(Error::NameTaken);
            }
            let e = Entity::Account(id);
            let change = Change::new("account.create").set(e, field::NAME, name).set(
                e,
                field::PASSWORD,
                password_phc,
            );
            log::append(tx, origin, change)?;
            Ok(())
        })?;
        self.account(id)?.ok_or(Error::NotFound)
    }

    /// The account standing for `name@server`, a user of another server
    /// logged in here by federation, created on first use: no password,
    /// no keys, so it logs in only by its home server's tickets. Its name
    /// holds an `@`, which no local account name may, so the two never
    /// clash.
    pub fn federated_account(&mut self, name: &str) -> Result<Account, Error> {
        if let Some(a) = self.account_by_name(name)? {
            return Ok(a);
        }
        let id = Uuid::now_v7();
        self.write(|tx, origin| {
            if name_holder(tx, &name.to_lowercase())?.is_some() {
                return Err(Error::NameTaken);
            }
            let change =
                Change::new("account.federated").set(Entity::Account(id), field::NAME, name);
            log::append(tx, origin, change)?;
            Ok(())
        })?;
        self.account(id)?.ok_or(Error::NotFound)
    }

    /// Replaces an account's password hash.
    pub fn set_password(&mut self, id: Uuid, password_phc: &str) -> Result<(), Error> {
        self.change_existing(
            id,
            Change::new("account.password").set(Entity::Account(id), field::PASSWORD, password_phc),
        )
    }

    /// Disables or re-enables an account.
    pub fn set_disabled(&mut self, id: Uuid, disabled: bool) -> Result<(), Error> {
        self.change_existing(
            id,
            Change::new("account.disable").set(Entity::Account(id), field::DISABLED, disabled),
        )
    }

    /// Marks an account deleted and clears its password, metadata, keys
    /// and read markers;
    /// the name stays reserved so nobody can take over its identity. The
    /// password hash and public keys also leave every earlier event: the
    /// apply path redacts them (see [`super::redact`]), here and on every
    /// node the delete replicates to. It also removes the metadata and
    /// markers this delete did not know of, whenever they arrive.
    pub fn delete_account(&mut self, id: Uuid) -> Result<(), Error> {
        let account = self.account(id)?.ok_or(Error::NotFound)?;
        let e = Entity::Account(id);
        let mut change = Change::new("account.delete")
            .set(e, field::DELETED, true)
            .set(e, field::PASSWORD, Value::Null);
        for key in account.meta.keys() {
            change = change.set(e, &format!("{}{key}", field::META_PREFIX), Value::Null);
        }
        for (topic, _) in self.markers(id)? {
            change = change.set(e, &format!("{}{topic}", field::READ_PREFIX), Value::Null);
        }
        // Its tickets go with the password (`tickets::after_apply`).
        self.change_existing(id, change)
    }

    /// Adds (`true`) or removes (`false`) an Ed25519 public key (base64).
    pub fn set_key(&mut self, id: Uuid, key_b64: &str, present: bool) -> Result<(), Error> {
        let value = if present {
            Value::Bool(true)
        } else {
            Value::Null
        };
        self.change_existing(
            id,
            Change::new(if present {
                "account.key.add"
            } else {
                "account.key.remove"
            })
            .set(
                Entity::Account(id),
                &format!("{}{key_b64}", field::KEY_PREFIX),
                value,
            ),
        )
    }

    /// Sets (or, with `null`, removes) keys of an account's own metadata,
    /// refusing a result with more than `max_keys` keys. A deleted account
    /// is [`Error::NotFound`]: its metadata is gone for good.
    pub fn set_account_meta(
        &mut self,
        id: Uuid,
        values: &Map<String, Value>,
        max_keys: usize,
    ) -> Result<(), Error> {
        let current = self
            .account(id)?
            .filter(|a| !a.deleted)
            .ok_or(Error::NotFound)?;
        super::check_key_count(&current.meta, values, max_keys)?;
        let change = Change::new("account.meta").set_meta(Entity::Account(id), values);
        self.change_existing(id, change)
    }

    /// Names of the given accounts, as shown (unknown ids are left out).
    pub fn account_names(
        &self,
        ids: &[Uuid],
    ) -> Result<std::collections::HashMap<Uuid, String>, Error> {
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(a) = load(&self.conn, *id)? {
                out.insert(*id, a.name);
            }
        }
        Ok(out)
    }

    /// Whether the account holds the server's `admin` flag.
    pub fn is_server_admin(&self, id: Uuid) -> Result<bool, Error> {
        Ok(self
            .server_acl()?
            .has_entry(&Subject::Account(id), Flag::Admin))
    }

    /// The server's own ACL (`admin`: administers the server; `create`:
    /// may create topics), one register per `(subject, flag)`.
    pub fn server_acl(&self) -> Result<Acl, Error> {
        let mut acl = Acl::default();
        for (f, value) in super::load_registers(&self.conn, &Entity::Server.key())? {
            let Some(entry) = f.strip_prefix(field::ACL_PREFIX) else {
                continue;
            };
            let parsed = entry
                .rsplit_once(':')
                .and_then(|(s, fl)| Some((Subject::from_key(s)?, Flag::parse(fl)?)));
            if let (Some((subject, flag)), Value::Bool(true)) = (parsed, &value) {
                acl.set(subject, flag, true);
            }
        }
        Ok(acl)
    }

    /// Grants or revokes a server ACL flag.
    pub fn set_server_flag(
        &mut self,
        subject: &Subject,
        flag: Flag,
        granted: bool,
    ) -> Result<(), Error> {
        let change = Change::new(if granted {
            "server.acl.grant"
        } else {
            "server.acl.revoke"
        })
        .set(
            Entity::Server,
            &format!("{}{}:{}", field::ACL_PREFIX, subject.key(), flag.as_str()),
            if granted {
                Value::Bool(true)
            } else {
                Value::Null
            },
        );
        self.write(|tx, origin| {
            log::append(tx, origin, change)?;
            Ok(())
        })
    }

    /// Every account, oldest first.
    pub fn list_accounts(&self) -> Result<Vec<Account>, Error> {
        let entities = super::entities_with_name(&self.conn, PREFIX)?;
        let mut out = Vec::with_capacity(entities.len());
        for entity in entities {
            if let Some(account) = parse_entity(&entity)
                .map(|id| load(&self.conn, id))
                .transpose()?
                .flatten()
            {
                out.push(account);
            }
        }
        Ok(out)
    }

    /// A page of `find`'s users (protocol.md 11.17): the names of live
    /// accounts (not deleted, not disabled) holding `name` as a
    /// case-insensitive substring, ordered by name case-insensitively,
    /// after `cursor`, at most `limit`, and the cursor of the next page.
    ///
    /// It walks the name index (`registers_lookup`) from the cursor on, in
    /// name order, and stops at the result after the page's last: what it
    /// reads is what it answers, but for the names that do not hold `name`
    /// (a substring, which no index finds) or are of deleted or disabled
    /// accounts. Those it reads at most [`FIND_SCAN`] of: a page that stops
    /// there holds what it found so far, perhaps nothing, and a cursor to go
    /// on from (the last name it read).
    ///
    /// A later claimant is shown, and sorted, as `name~<hex>`: after the
    /// longer names that start with `name`, which the walk reaches first.
    /// It waits for its turn in `pending`; one whose base name is before the
    /// cursor but that sorts after it is found by the cursor's prefixes.
    pub fn find_accounts(
        &self,
        name: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<FoundAccounts, Error> {
        let mut page = FindPage {
            conn: &self.conn,
            needle: name.map(str::to_lowercase),
            after: cursor.map(str::to_lowercase),
            limit,
            names: Vec::new(),
            pending: std::collections::BTreeSet::new(),
            examined: 0,
        };
        if let Some(after) = page.after.clone() {
            // Claimants of a name that is a proper prefix of the cursor may
            // sort after it (`dan~1a2b3c` after `danny`).
            for (end, _) in after.char_indices().skip(1) {
                let base = &after[..end];
                let ids = page.accounts_named(base)?;
                if ids.len() > 1 {
                    page.group(base, &ids, true)?;
                }
            }
        }
        let (done, capped) = page.walk()?;
        let cursor = if done {
            page.names.truncate(limit);
            page.names.last().cloned()
        } else {
            capped
        };
        Ok(FoundAccounts {
            names: page.names,
            cursor,
            examined: page.examined,
        })
    }

    fn change_existing(&mut self, id: Uuid, change: Change) -> Result<(), Error> {
        self.write(|tx, origin| {
            let exists: Option<i64> = tx
                .prepare_cached("SELECT 1 FROM registers WHERE entity = ?1 AND field = ?2")?
                .query_row(params![Entity::Account(id).key(), field::NAME], |r| {
                    r.get(0)
                })
                .optional()?;
            if exists.is_none() {
                return Err(Error::NotFound);
            }
            log::append(tx, origin, change)?;
            Ok(())
        })
    }
}

fn parse_entity(entity: &str) -> Option<Uuid> {
    entity
        .strip_prefix(PREFIX)
        .and_then(|s| Uuid::parse_str(s).ok())
}

/// The index walk of `find`'s users: account names from `?1` on, in the
/// order `find` shows them (each name's claims in entity order), at most
/// `?2`.
const FIND_WALK: &str = "SELECT entity, lookup FROM registers INDEXED BY registers_lookup
     WHERE field = 'name' AND lookup >= ?1 AND entity >= 'account:' AND entity < 'account;'
     ORDER BY lookup, entity LIMIT ?2";

/// One page of [`Db::find_accounts`] being made.
struct FindPage<'c> {
    conn: &'c Connection,
    /// The lowercased `name` filter.
    needle: Option<String>,
    /// The lowercased cursor.
    after: Option<String>,
    limit: usize,
    /// The results so far, one more than `limit` once the page is done.
    names: Vec<String>,
    /// Later claimants read but not yet reached: (sort key, id).
    pending: std::collections::BTreeSet<(String, Uuid)>,
    /// Account names read.
    examined: usize,
}

impl FindPage<'_> {
    /// Walks the names from the cursor on. `(true, _)` once the page is
    /// full; `(false, Some(last name read))` when it stopped at
    /// [`FIND_SCAN`] names; `(false, None)` at the end of the names.
    fn walk(&mut self) -> Result<(bool, Option<String>), Error> {
        let conn = self.conn;
        let mut stmt = conn.prepare_cached(FIND_WALK)?;
        let start = self.after.clone().unwrap_or_default();
        let mut rows = stmt.query(params![start, FIND_SCAN as i64])?;
        let mut read = 0;
        // The name being read, its accounts, and the last entity of it.
        let mut current: Option<(String, Vec<Uuid>, String)> = None;
        while let Some(row) = rows.next()? {
            read += 1;
            self.examined += 1;
            let entity: String = row.get(0)?;
            let lookup: String = row.get(1)?;
            let id = parse_entity(&entity);
            match &mut current {
                Some((name, ids, last)) if *name == lookup => {
                    ids.extend(id);
                    *last = entity;
                }
                _ => {
                    if let Some((name, ids, _)) = current.take() {
                        if self.group(&name, &ids, false)? {
                            return Ok((true, None));
                        }
                    }
                    current = Some((lookup, id.into_iter().collect(), entity));
                }
            }
        }
        drop(rows);
        let capped = read == FIND_SCAN;
        let Some((name, mut ids, last)) = current else {
            return Ok((self.flush(None)?, None));
        };
        if capped {
            // The limit may have cut the last name's claims short.
            let mut more = conn.prepare_cached(
                "SELECT entity FROM registers WHERE field = 'name' AND lookup = ?1 AND entity > ?2
                   AND entity >= 'account:' AND entity < 'account;' ORDER BY entity",
            )?;
            for entity in more.query_map(params![name, last], |r| r.get::<_, String>(0))? {
                self.examined += 1;
                ids.extend(parse_entity(&entity?));
            }
        }
        if self.group(&name, &ids, false)? {
            return Ok((true, None));
        }
        if !capped {
            return Ok((self.flush(None)?, None));
        }
        // Names after this one were not read: only claimants before it can
        // be placed.
        if self.flush(Some(&name))? {
            return Ok((true, None));
        }
        Ok((false, Some(name)))
    }

    /// The accounts claiming the lowercased name `lookup`.
    fn accounts_named(&mut self, lookup: &str) -> Result<Vec<Uuid>, Error> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT entity FROM registers WHERE field = 'name' AND lookup = ?1
               AND entity >= 'account:' AND entity < 'account;' ORDER BY entity",
        )?;
        let mut ids = Vec::new();
        for entity in stmt.query_map(params![lookup], |r| r.get::<_, String>(0))? {
            self.examined += 1;
            ids.extend(parse_entity(&entity?));
        }
        Ok(ids)
    }

    /// Takes the accounts claiming `lookup`, in entity order: the holder
    /// is offered (after the waiting claimants that sort before it), the
    /// others wait as `lookup~<hex>`. With `claimants_only`, the holder is
    /// not offered (a name before the cursor). True once the page is full.
    fn group(&mut self, lookup: &str, ids: &[Uuid], claimants_only: bool) -> Result<bool, Error> {
        let holder = match ids {
            [one] => Some(*one),
            _ => name_holder(self.conn, lookup)?,
        };
        for &id in ids {
            if Some(id) != holder {
                self.pending
                    .insert((format!("{lookup}~{}", id_tail(id)), id));
            }
        }
        if claimants_only {
            return Ok(false);
        }
        if self.flush(Some(lookup))? {
            return Ok(true);
        }
        match holder {
            Some(id) if ids.contains(&id) => self.offer(lookup, id, false),
            _ => Ok(false),
        }
    }

    /// Offers the waiting claimants that sort at or before `upto` (all of
    /// them without), in order. True once the page is full.
    fn flush(&mut self, upto: Option<&str>) -> Result<bool, Error> {
        while let Some((key, id)) = self.pending.first().cloned() {
            if upto.is_some_and(|u| key.as_str() > u) {
                break;
            }
            self.pending.pop_first();
            if self.offer(&key, id, true)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Adds account `id`, sorted as `key`, if it is after the cursor, holds
    /// the needle and is neither deleted nor disabled. True once the page
    /// is full.
    fn offer(&mut self, key: &str, id: Uuid, claimant: bool) -> Result<bool, Error> {
        if self.after.as_deref().is_some_and(|a| key <= a)
            || self.needle.as_deref().is_some_and(|n| !key.contains(n))
        {
            return Ok(false);
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT field, value FROM registers WHERE entity = ?1 AND field IN (?2, ?3, ?4)",
        )?;
        let rows = stmt.query_map(
            params![
                Entity::Account(id).key(),
                field::NAME,
                field::DELETED,
                field::DISABLED
            ],
            |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
        )?;
        let mut name = String::new();
        for row in rows {
            let (f, raw) = row?;
            let value: Value =
                serde_json::from_str(&raw).map_err(|e| Error::Corrupt(e.to_string()))?;
            match f.as_str() {
                field::NAME => name = value.as_str().unwrap_or_default().to_owned(),
                _ if value.as_bool() == Some(true) => return Ok(false),
                _ => {}
            }
        }
        if claimant {
            name = format!("{name}~{}", id_tail(id));
        }
        self.names.push(name);
        Ok(self.names.len() > self.limit)
    }
}

/// The end of an id that tells a later claimant apart: `name~<this>`.
fn id_tail(id: Uuid) -> String {
    let hex = id.simple().to_string();
    hex.get(hex.len() - 6..).unwrap_or_default().to_owned()
}

/// The account holding a (lowercased) name.
fn name_holder(conn: &Connection, lookup: &str) -> Result<Option<Uuid>, Error> {
    super::name_holder(conn, PREFIX, lookup, false)
}

fn load(conn: &Connection, id: Uuid) -> Result<Option<Account>, Error> {
    let rows = super::load_registers(conn, &Entity::Account(id).key())?;
    let mut account = Account {
        id,
        name: String::new(),
        password: None,
        disabled: false,
        deleted: false,
        meta: Map::new(),
        keys: Vec::new(),
    };
    let mut found = false;
    let mut rehashed = None;
    for (f, value) in rows {
        match f.as_str() {
            field::NAME => {
                found = true;
                account.name = value.as_str().unwrap_or_default().to_owned();
            }
            field::PASSWORD => account.password = value.as_str().map(str::to_owned),
            field::REHASHED => rehashed = serde_json::from_value::<Rehashed>(value).ok(),
            field::DISABLED => account.disabled = value.as_bool().unwrap_or(false),
            field::DELETED => account.deleted = value.as_bool().unwrap_or(false),
            other => {
                if let Some(key) = other.strip_prefix(field::META_PREFIX) {
                    if !value.is_null() {
                        account.meta.insert(key.to_owned(), value);
                    }
                } else if let Some(key) = other.strip_prefix(field::KEY_PREFIX) {
                    if value == Value::Bool(true) {
                        account.keys.push(key.to_owned());
                    }
                }
            }
        }
    }
    // A rehash counts only while the password is still the one it replaced.
    if let (Some(r), Some(current)) = (rehashed, &account.password) {
        if r.of == phc_digest(current) {
            account.password = Some(r.phc);
        }
    }
    if !found {
        return Ok(None);
    }
    if name_holder(conn, &account.name.to_lowercase())? != Some(id) {
        account.name = format!("{}~{}", account.name, id_tail(id));
    }
    Ok(Some(account))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), "n1").unwrap();
        (dir, db)
    }

    /// A rehash answers for the password it was bound to, and only while
    /// that is the password: a change of the password wins over it, and a
    /// rehash checked against a hash that is no longer the account's is
    /// not written. Deleting the account erases it.
    #[test]
    fn a_rehash_never_beats_a_change_of_the_password() {
        let (dir, mut db) = db();
        let a = db.create_account("dan", "$old").unwrap();
        assert!(db.set_rehashed(a.id, "$old", "$old-again").unwrap());
        assert_eq!(
            db.account(a.id).unwrap().unwrap().password.as_deref(),
            Some("$old-again")
        );
        // Checked against the first hash, now replaced: not written.
        assert!(!db.set_rehashed(a.id, "$old", "$other").unwrap());
        db.set_password(a.id, "$new").unwrap();
        assert_eq!(
            db.account(a.id).unwrap().unwrap().password.as_deref(),
            Some("$new")
        );
        // A rehash of the old password that comes later (checked before the
        // change) is not written either.
        assert!(!db.set_rehashed(a.id, "$old-again", "$old-thrice").unwrap());
        assert_eq!(
            db.account(a.id).unwrap().unwrap().password.as_deref(),
            Some("$new")
        );
        assert!(db.set_rehashed(a.id, "$new", "$new-again").unwrap());
        db.delete_account(a.id).unwrap();
        drop(db);
        let conn = rusqlite::Connection::open(dir.path().join(super::super::DB_FILE)).unwrap();
        let mut text = String::new();
        for sql in ["SELECT body FROM events", "SELECT value FROM registers"] {
            let mut stmt = conn.prepare(sql).unwrap();
            for row in stmt.query_map([], |r| r.get::<_, String>(0)).unwrap() {
                text.push_str(&row.unwrap());
            }
        }
        assert!(!text.contains("-again"), "{text}");
    }

    /// Creates accounts named `names` in one transaction, in order: a name
    /// given twice makes the second a later claimant (`name~<hex>`).
    fn bulk(db: &mut Db, names: &[&str]) -> Vec<Uuid> {
        let mut ids = Vec::new();
        let changes = names
            .iter()
            .map(|n| {
                let e = Entity::Account(Uuid::now_v7());
                if let Entity::Account(id) = e {
                    ids.push(id);
                }
                Change::new("account.create")
                    .set(e, field::NAME, *n)
                    .set(e, field::PASSWORD, "$x")
            })
            .collect();
        db.append_all(changes).unwrap();
        ids
    }

    /// `find`'s users as they were answered by reading every account:
    /// what [`Db::find_accounts`] must answer, but for its cost.
    fn every_account(
        db: &Db,
        name: Option<&str>,
        cursor: Option<&str>,
        limit: usize,
    ) -> (Vec<String>, Option<String>) {
        let needle = name.map(str::to_lowercase);
        let after = cursor.map(str::to_lowercase);
        let mut names: Vec<String> = db
            .list_accounts()
            .unwrap()
            .into_iter()
            .filter(|a| !a.deleted && !a.disabled)
            .map(|a| a.name)
            .filter(|n| {
                let key = n.to_lowercase();
                needle.as_ref().is_none_or(|s| key.contains(s.as_str()))
                    && after.as_ref().is_none_or(|a| key > *a)
            })
            .collect();
        names.sort_by_key(|n| n.to_lowercase());
        let more = names.len() > limit;
        names.truncate(limit);
        let cursor = if more { names.last().cloned() } else { None };
        (names, cursor)
    }

    /// A page of users reads the names from its cursor on, up to its
    /// last result (and the one after, to know there are more), not
    /// every account; a name few accounts hold stops after
    /// [`FIND_SCAN`] names with a cursor to go on from.
    #[test]
    fn find_reads_only_the_names_a_page_needs() {
        let (_dir, mut db) = db();
        let names: Vec<String> = (0..1050).map(|i| format!("u{i:04}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        bulk(&mut db, &names);
        let page = db.find_accounts(None, None, 5).unwrap();
        assert_eq!(page.names, ["u0000", "u0001", "u0002", "u0003", "u0004"]);
        assert_eq!(page.cursor.as_deref(), Some("u0004"));
        assert!(page.examined <= 10, "{} names read", page.examined);
        let page = db.find_accounts(Some("U05"), Some("u0520"), 3).unwrap();
        assert_eq!(page.names, ["u0521", "u0522", "u0523"]);
        assert_eq!(page.cursor.as_deref(), Some("u0523"));
        assert!(page.examined <= 10, "{} names read", page.examined);

        let page = db.find_accounts(Some("u1049"), None, 20).unwrap();
        assert!(page.names.is_empty(), "{:?}", page.names);
        assert!(page.examined <= FIND_SCAN, "{} names read", page.examined);
        let cursor = page.cursor.expect("a cursor to go on from");
        let page = db.find_accounts(Some("u1049"), Some(&cursor), 20).unwrap();
        assert_eq!(page.names, ["u1049"]);
        assert_eq!(page.cursor, None);
    }

    /// The walk is a range of the name index, in its order: no scan of
    /// the registers, no sort.
    #[test]
    fn find_walks_the_name_index() {
        let (_dir, db) = db();
        let mut stmt = db
            .conn
            .prepare(&format!("EXPLAIN QUERY PLAN {FIND_WALK}"))
            .unwrap();
        let plan: Vec<String> = stmt
            .query_map(params!["dan", 10], |r| r.get::<_, String>(3))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(
            plan.iter().any(|p| p
                .contains("SEARCH registers USING COVERING INDEX registers_lookup")
                && p.contains("lookup>?")),
            "{plan:?}"
        );
        assert!(!plan.iter().any(|p| p.contains("TEMP B-TREE")), "{plan:?}");
    }

    /// Below [`FIND_SCAN`] names, the pages are those of reading every
    /// account: deleted and disabled accounts left out, later claimants
    /// by their `~` names (which sort after longer names of the same
    /// start), topics' names never.
    #[test]
    fn find_answers_as_reading_every_account_did() {
        let (_dir, mut db) = db();
        let ids = bulk(
            &mut db,
            &[
                "dan",
                "Dan",
                "DAN",
                "dan-a",
                "danny",
                "danz",
                "dan.b",
                "Bob",
                "bob",
                "amy",
                "zed",
                "old",
                "Old",
                "carl@far.example",
                "u",
                "U",
                "dann",
            ],
        );
        db.delete_account(ids[9]).unwrap();
        db.set_disabled(ids[10], true).unwrap();
        db.delete_account(ids[11]).unwrap();
        db.set_disabled(ids[1], true).unwrap();
        let topic = Entity::Topic(Uuid::now_v7());
        db.append_all(vec![Change::new("topic.create").set(
            topic,
            field::NAME,
            "danny2",
        )])
        .unwrap();
        let shown = every_account(&db, None, None, 100).0;
        assert!(shown.iter().any(|n| n.starts_with("DAN~")), "{shown:?}");
        assert!(shown.iter().any(|n| n.starts_with("Old~")), "{shown:?}");

        let mut cursors: Vec<Option<String>> = [
            "a",
            "dan",
            "DAN-A",
            "dan~",
            "danny",
            "dan~zzzzzz",
            "old",
            "zz",
            "u",
            "u~",
            "bob~",
        ]
        .iter()
        .map(|c| Some((*c).to_owned()))
        .collect();
        cursors.push(None);
        cursors.extend(shown.iter().map(|n| Some(n.clone())));
        for name in [
            None,
            Some("d"),
            Some("DAN"),
            Some("~"),
            Some("n~"),
            Some("an-"),
        ]
        .into_iter()
        .chain([Some("b"), Some("x"), Some("@"), Some("u"), Some("o")])
        {
            for cursor in &cursors {
                for limit in [1, 2, 3, 20] {
                    let want = every_account(&db, name, cursor.as_deref(), limit);
                    let got = db.find_accounts(name, cursor.as_deref(), limit).unwrap();
                    assert_eq!(
                        (got.names, got.cursor),
                        want,
                        "name {name:?}, cursor {cursor:?}, limit {limit}"
                    );
                }
            }
        }
    }

    #[test]
    fn create_find_and_unique_names() {
        let (_dir, mut db) = db();
        let a = db.create_account("Danopia", "$argon2id$x").unwrap();
        assert_eq!(db.account_by_name("danopia").unwrap().unwrap().id, a.id);
        assert!(matches!(
            db.create_account("DANOPIA", "$x"),
            Err(Error::NameTaken)
        ));
        db.delete_account(a.id).unwrap();
        let gone = db.account(a.id).unwrap().unwrap();
        assert!(gone.deleted && gone.password.is_none());
        assert!(matches!(
            db.create_account("danopia", "$x"),
            Err(Error::NameTaken)
        ));
    }

    #[test]
    fn events_are_gapless_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let mut db = Db::open(dir.path(), "n1").unwrap();
            let a = db.create_account("a", "h1").unwrap();
            db.set_password(a.id, "h2").unwrap();
            let mut meta = Map::new();
            meta.insert("fullname".into(), Value::from("A. Person"));
            db.set_account_meta(a.id, &meta, 8).unwrap();
            a.id
        };
        let db = Db::open(dir.path(), "n1").unwrap();
        let events = db.events().unwrap();
        let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
        // The store's seed (server ACL) is event 1; ours follow, gapless.
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(events[0].change.kind, "server.acl.grant");
        assert!(events.windows(2).all(|w| w[0].hlc < w[1].hlc));
        let a = db.account(id).unwrap().unwrap();
        assert_eq!(a.password.as_deref(), Some("h2"));
        assert_eq!(a.meta.get("fullname"), Some(&Value::from("A. Person")));
    }
}
