//! Login tickets: stored as SHA-256 hashes, consumed by any redemption
//! attempt, expiring. Tickets are not events: only the node that issued one
//! redeems it, so a partition cannot spend it twice. A change of the
//! account's password, and its deletion, end its tickets wherever the
//! change is applied: here as it commits, on every other node as it
//! arrives (`after_apply`).

use rusqlite::{OptionalExtension, Transaction, params};
use uuid::Uuid;

use super::{Db, Error};
use crate::change::{Change, field};

/// Drops the tickets of every account whose password `change` (stamped
/// `hlc` by `origin_key`) changes, or that it deletes (a deletion's own
/// password write is redacted from the event a peer gets). A password
/// write that lost to a later one changes nothing, and keeps the tickets
/// issued under the password that won. Called for every change applied to
/// the store, local or a peer's.
pub(super) fn after_apply(
    tx: &Transaction<'_>,
    origin_key: &str,
    hlc: u64,
    change: &Change,
) -> Result<(), Error> {
    for w in &change.writes {
        let ends = if w.field == field::PASSWORD {
            // The register holds this write: it won.
            tx.prepare_cached(
                "SELECT 1 FROM registers WHERE entity = ?1 AND field = ?2 AND hlc = ?3 AND origin = ?4",
            )?
            .query_row(params![w.entity, w.field, hlc as i64, origin_key], |_| Ok(()))
            .optional()?
            .is_some()
        } else {
            w.field == field::DELETED && w.value == serde_json::Value::Bool(true)
        };
        if !ends {
            continue;
        }
        if let Some(account) = super::parse_entity("account:", &w.entity) {
            tx.prepare_cached("DELETE FROM tickets WHERE account = ?1")?
                .execute(params![account.to_string()])?;
        }
    }
    Ok(())
}

/// What redeeming a ticket found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redeemed {
    /// The account the ticket logs in.
    pub account: Uuid,
    /// The server name it is bound to, if any.
    pub bound_to: Option<String>,
    /// When it expires (Unix ms).
    pub expires_ms: i64,
}

fn digest(ticket: &str) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, ticket.as_bytes())
        .as_ref()
        .to_vec()
}

impl Db {
    /// Stores a ticket (by hash) for `account`, and drops expired ones.
    pub fn store_ticket(
        &mut self,
        ticket: &str,
        account: Uuid,
        bound_to: Option<&str>,
        expires_ms: i64,
        now_ms: i64,
    ) -> Result<(), Error> {
        let tx = self.conn.transaction()?;
        tx.prepare_cached("DELETE FROM tickets WHERE expires_ms <= ?1")?
            .execute(params![now_ms])?;
        tx.prepare_cached(
            "INSERT INTO tickets (hash, account, bound_to, expires_ms) VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            digest(ticket),
            account.to_string(),
            bound_to,
            expires_ms
        ])?;
        tx.commit()?;
        Ok(())
    }

    /// Consumes a ticket: whatever the caller then decides, it is gone.
    pub fn take_ticket(&mut self, ticket: &str) -> Result<Option<Redeemed>, Error> {
        let row: Option<(String, Option<String>, i64)> = self
            .conn
            .prepare_cached(
                "DELETE FROM tickets WHERE hash = ?1 RETURNING account, bound_to, expires_ms",
            )?
            .query_row(params![digest(ticket)], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        let Some((account, bound_to, expires_ms)) = row else {
            return Ok(None);
        };
        let account = Uuid::parse_str(&account).map_err(|e| Error::Corrupt(e.to_string()))?;
        Ok(Some(Redeemed {
            account,
            bound_to,
            expires_ms,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ticket_is_taken_once_and_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = Db::open(dir.path(), "n1").unwrap();
        let id = Uuid::now_v7();
        db.store_ticket("TICKETabc123", id, Some("10b.it"), 1000, 0)
            .unwrap();
        let raw: Vec<u8> = db
            .conn
            .query_row("SELECT hash FROM tickets", [], |r| r.get(0))
            .unwrap();
        assert_ne!(raw, b"TICKETabc123");
        let got = db.take_ticket("TICKETabc123").unwrap().unwrap();
        assert_eq!(got.account, id);
        assert_eq!(got.bound_to.as_deref(), Some("10b.it"));
        assert_eq!(db.take_ticket("TICKETabc123").unwrap(), None);
    }

    /// Everything `to` lacks from `from`, applied as a mesh link applies it.
    fn ship(from: &Db, to: &mut Db) {
        ship_stamped(from, to, None);
    }

    /// [`ship`], the events stamped `hlc` if given: as if made that long ago.
    fn ship_stamped(from: &Db, to: &mut Db, hlc: Option<u64>) {
        use crate::store::replica::{Incoming, VersionVector, origin_key};
        let mut sent = VersionVector::default();
        let own = to.origin().clone();
        sent.raise(&origin_key(&own.node, &own.incarnation), u64::MAX);
        let (_, batch) = from.catch_up(&sent, 10_000).unwrap();
        let incoming = batch
            .into_iter()
            .map(|(raw, prev)| {
                let mut incoming = Incoming::decoded(raw, prev);
                incoming.event.hlc = hlc.unwrap_or(incoming.event.hlc);
                incoming
            })
            .collect();
        to.receive(incoming).unwrap();
    }

    /// A password change ends the account's unredeemed tickets, and only
    /// its own: where it is made, and on a node it reaches later (tickets
    /// are redeemed only by the node that issued them, which may not be the
    /// one where the password changed).
    #[test]
    fn a_password_change_ends_the_accounts_tickets_on_every_node() {
        let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let mut n1 = Db::open(d1.path(), "n1").unwrap();
        let mut n2 = Db::open(d2.path(), "n2").unwrap();
        let dan = n1.create_account("dan", "$old").unwrap().id;
        let eve = n1.create_account("eve", "$old").unwrap().id;
        ship(&n1, &mut n2);

        // Here.
        n1.store_ticket("HERE-dan", dan, None, i64::MAX, 0).unwrap();
        n1.store_ticket("HERE-eve", eve, None, i64::MAX, 0).unwrap();
        n1.set_password(dan, "$new").unwrap();
        assert_eq!(n1.take_ticket("HERE-dan").unwrap(), None);
        assert!(n1.take_ticket("HERE-eve").unwrap().is_some());

        // Elsewhere: n1 issued these, the password changes on n2.
        n1.store_ticket("THERE-dan", dan, None, i64::MAX, 0)
            .unwrap();
        n1.store_ticket("THERE-eve", eve, None, i64::MAX, 0)
            .unwrap();
        n2.set_password(dan, "$newer").unwrap();
        ship(&n2, &mut n1);
        assert_eq!(n1.take_ticket("THERE-dan").unwrap(), None);
        assert!(n1.take_ticket("THERE-eve").unwrap().is_some());

        // A change that loses to a later one (n2's, stamped before n1's)
        // leaves the tickets issued under the password that won.
        n1.set_password(dan, "$newest").unwrap();
        n1.store_ticket("KEPT-dan", dan, None, i64::MAX, 0).unwrap();
        n2.set_password(dan, "$stale").unwrap();
        ship_stamped(&n2, &mut n1, Some(1));
        let after = n1.account(dan).unwrap().unwrap();
        assert_eq!(after.password.as_deref(), Some("$newest"));
        assert!(n1.take_ticket("KEPT-dan").unwrap().is_some());

        // A deletion clears the password, and the tickets with it.
        n1.store_ticket("GONE-eve", eve, None, i64::MAX, 0).unwrap();
        n2.delete_account(eve).unwrap();
        ship(&n2, &mut n1);
        assert_eq!(n1.take_ticket("GONE-eve").unwrap(), None);
    }
}
